"""How an encoder's forward runs during extraction: the fastest path that gives the same embeddings.

    eager        the module as it is; convolutional vision towers (timm) in channels_last memory format
    compile      torch.compile of the eager path; the first batch pays the compilation (counted in the report's
                 `prepare_s`), and torch keeps the compiled kernels in its own on-disk cache for later runs
    onnxruntime  the encoder exported once with torch.onnx (dynamic batch and sequence sizes, the uint8 image
                 normalisation inside the graph), cached on disk, and run by ONNX Runtime's CPU kernels
    auto         on a CPU in fp32, for a convolutional tower: onnxruntime when it is installed and pays off (its
                 export is already cached, or there are at least `MIN_ITEMS_FOR_EXPORT` items to encode), else
                 eager; for a Transformer (text) encoder and on a GPU: eager

Every path other than eager is checked on the first batch (its first rows) against the eager forward: the report
keeps the largest absolute difference (about 1e-6 on unit-length embeddings), and a path that differs by more
than `TOLERANCE`, or fails to build, gives way to eager with a warning. On the 2-core CPU this was tuned on,
EfficientNet-Lite0 at 224 px ran 3-3.5x faster under ONNX Runtime than the eager NCHW forward, and 1.6-2x faster
than torch.compile (see benchmarks/bench_features.py). MiniLM, with a batch per core in flight, ran 1.1-1.2x
faster eager than under ONNX Runtime, idle and under load (torch's fused attention; the exported graph's is not
fused), so Transformer encoders stay eager and need no export. bf16 is not chosen on a CPU: even with native
bf16 (AMX) it changes the embeddings by about 1e-2, and it was slower than ONNX Runtime in fp32.

`FrozenOnnx` applies the same path to the frozen part of an end-to-end backbone (the offline backbone's first
EfficientNet stages), during training and routing alike: eager until the export pays off, then ONNX Runtime.
`FrozenBf16` keeps a bf16 copy of a frozen part (the offline backbone's first MiniLM layers) for CPUs with native
bf16 matmuls: there a frozen feature extractor may trade 1e-2 of precision for 2-3x the speed, since the layers
trained on top see the same bf16 features in training and in routing.

`AutoForward` is the path for many small calls (routing raw inputs, a server): there ONNX Runtime pays off for
Transformer text encoders too (see its docstring). The export and its cache: vlrb/features/onnx_export.py.
"""
from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

from vlrb.features.onnx_export import (cache_dir, child_payload, export_in_child, onnx_path, onnxruntime_available,
                                       onnxruntime_forward)

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "eager", "compile", "onnxruntime")
TOLERANCE = 1e-4  # max |difference| accepted on unit-length embeddings (fp32 reordering noise is ~1e-6)
MIN_ITEMS_FOR_EXPORT = 512  # below this an uncached export (seconds) costs more than it saves
CHECK_ROWS = 4  # rows of the first batch compared with the eager forward


@dataclass
class PreparedForward:
    """`forward(batch) -> (B, dim)` on the chosen path, and what to report about it."""

    forward: Callable[[dict], torch.Tensor]
    runtime: str
    max_abs_diff: float | None = None  # vs the eager forward on the first batch (None: not checked)
    prepare_s: float = 0.0
    note: str = ""


def choose_runtime(runtime: str, device: torch.device, dtype: torch.dtype | None, n_items: int,
                   export_cached: bool = False, convolutional: bool = True) -> str:
    """The path `auto` stands for on this device (see the module docstring); others are returned as given."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if runtime != "auto":
        return runtime
    if convolutional and device.type == "cpu" and dtype is None and onnxruntime_available() and (
            export_cached or n_items >= MIN_ITEMS_FOR_EXPORT):
        return "onnxruntime"
    return "eager"


def prepare_forward(encoder, runtime: str, device: torch.device, dtype: torch.dtype | None, example: dict,
                    n_items: int = 0, spin: bool = True) -> PreparedForward:
    """The encoder's forward on `runtime` (auto resolved here), built and checked on `example` (a first batch).
    spin=False: ONNX Runtime's idle threads sleep (when DataLoader workers share the cores)."""
    t0 = time.perf_counter()
    encoder.to(device).eval()
    path = None
    convolutional = bool(getattr(encoder, "channels_last", False))  # timm convnets declare it (encoders.py)
    if runtime == "onnxruntime" or (runtime == "auto" and convolutional and device.type == "cpu" and dtype is None
                                    and onnxruntime_available()):
        path = onnx_path(encoder, example)
    chosen = choose_runtime(runtime, device, dtype, n_items, export_cached=bool(path and path.exists()),
                            convolutional=convolutional)
    if chosen == "onnxruntime" and (device.type != "cpu" or dtype is not None):
        raise ValueError("runtime=onnxruntime runs on the CPU in fp32: set device=cpu and precision=fp32 (or auto)")
    if chosen == "onnxruntime" and not onnxruntime_available():
        raise ValueError("runtime=onnxruntime needs the packages onnxruntime, onnx and onnxscript "
                         "(pip install onnxruntime onnx onnxscript), or use runtime=auto")
    if chosen == "eager":
        _channels_last(encoder, True)
        return PreparedForward(encoder, "eager", None, time.perf_counter() - t0)
    with torch.inference_mode():
        _channels_last(encoder, False)
        # a few rows keep the check cheap; compile checks the whole batch (a new shape would compile again)
        check = example if chosen == "compile" else {k: v[:CHECK_ROWS] for k, v in example.items()}
        reference = encoder(check).float()
        try:
            if chosen == "onnxruntime":
                fwd = onnxruntime_forward(encoder, example, path, spin)
            else:
                _channels_last(encoder, True)
                fwd = torch.compile(encoder)
            got = fwd(check).float()
            diff = float((got - reference).abs().max()) if got.shape == reference.shape else float("inf")
        except Exception as e:  # an op the exporter or compiler does not handle: eager still works
            fwd, diff, why = None, None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if fwd is None or diff is None or not diff <= TOLERANCE:
        why = why if fwd is None else f"embeddings differ from eager by {diff:.2e} (> {TOLERANCE:g})"
        log.warning("%s: runtime %s not used (%s); running eager", encoder.name, chosen, why)
        _channels_last(encoder, True)
        return PreparedForward(encoder, "eager", None, time.perf_counter() - t0, note=f"{chosen} failed: {why}")
    return PreparedForward(fwd, chosen, diff, time.perf_counter() - t0)


def _channels_last(encoder, on: bool) -> None:
    if getattr(encoder, "channels_last", False):
        encoder.set_channels_last(on)


# ---------------------------------------------------------------------------------------------- many small calls
class AutoForward:
    """An encoder's forward for many small calls (routing raw inputs, a server). Under `runtime: auto` on a CPU in
    fp32 it moves to ONNX Runtime, convolutional towers and Transformer text encoders alike: one request at a time,
    ONNX Runtime ran MiniLM 2.1x faster than eager on 2 cores (13 vs 27 ms; 1.1x at 8-32 prompts, where extraction's
    batches per core favour eager), and a session releases the GIL for its whole run, so a server's event loop and
    image decoding go on meanwhile. The move is made at once when the export is cached on disk; otherwise the export
    (seconds, once per machine) runs in a child process (`export_in_child`: its tracing never holds this process's
    GIL, and this process may exit meanwhile), started once `MIN_ITEMS_FOR_EXPORT` items went through or by
    `prepare()` (a server, at start), while calls run eagerly; the first call after it ends loads the export and
    checks it against eager like any other path (`prepare_forward`). Another `runtime` (eager, compile,
    onnxruntime) is prepared on the first call, in the calling thread."""

    def __init__(self, encoder, device: torch.device, dtype: torch.dtype | None = None, runtime: str = "auto"):
        self.encoder, self.device, self.dtype, self.runtime = encoder, device, dtype, runtime
        self.seen, self._path, self._prepared = 0, None, None
        self._lock = threading.Lock()
        self._background: threading.Thread | None = None

    @property
    def onnx(self) -> bool:
        """Whether `auto` means ONNX Runtime here once it pays off (`choose_runtime`'s rule, for any encoder)."""
        return self.runtime == "auto" and choose_runtime("auto", self.device, self.dtype, MIN_ITEMS_FOR_EXPORT) \
            == "onnxruntime"

    def __call__(self, batch: dict) -> torch.Tensor:
        prepared = self._prepared
        if prepared is not None:
            return prepared.forward(batch)
        n = len(next(iter(batch.values())))
        if not self.onnx:  # eager, compile or onnxruntime named: prepared here, once
            with self._lock:
                if self._prepared is None:
                    self._prepared = prepare_forward(self.encoder, self.runtime, self.device, self.dtype, batch,
                                                     n_items=n, spin=False)
            return self._prepared.forward(batch)
        if self._path is None:
            self._path = onnx_path(self.encoder, batch)  # weights hashed once: they do not change here
        if self._path.exists():
            return self._load(batch).forward(batch)
        self.seen += n
        if self.seen >= MIN_ITEMS_FOR_EXPORT:
            self._start(batch)
        if not getattr(self.encoder, "_channels_last", False):
            _channels_last(self.encoder, True)
        return self.encoder(batch)

    def prepare(self, wait: bool = False) -> None:
        """Move to ONNX Runtime now rather than after `MIN_ITEMS_FOR_EXPORT` items (a server expects many): from the
        cached export at once, else an export in the background (`wait=True`: this call returns when it is done)."""
        if not self.onnx or self._prepared is not None:
            return
        with torch.inference_mode():
            example = self.encoder.collate([self.encoder.preprocess(_example_input(self.encoder))])
        if self._path is None:
            self._path = onnx_path(self.encoder, example)
        if not self._path.exists():
            self._start(example)
            if not wait:
                return
            self._background.join()
        if self._path.exists():
            self._load(example)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background export; True once it is on disk (the next call uses it) or its failure is known."""
        if self._background is not None:
            self._background.join(timeout)
        return self._prepared is not None or bool(self._path and self._path.exists())

    def _load(self, example: dict) -> PreparedForward:
        """The cached export, loaded and checked against eager once (well under a second)."""
        with self._lock:
            if self._prepared is None:
                # spin=False: ONNX Runtime's threads sleep between calls; spinning, they take the cores from the
                # other encoder's forward that runs next (text forward 2x slower after an image forward, measured)
                with torch.inference_mode():
                    self._prepared = prepare_forward(self.encoder, "onnxruntime", self.device, self.dtype, example,
                                                     n_items=MIN_ITEMS_FOR_EXPORT, spin=False)
            return self._prepared

    def _start(self, example: dict) -> None:
        with self._lock:
            if self._background is not None:
                return
            payload = child_payload(self.encoder, example, self._path)  # here: torch code, not in the thread
            self._background = threading.Thread(target=self._export, args=(payload,), daemon=True,
                                                name=f"vlrb-onnx-{self.encoder.name}")
            self._background.start()

    def _export(self, payload: bytes) -> None:
        """The background thread: the export in a child process, one at a time; a failure leaves the calls eager."""
        log.info("%s: exporting to ONNX Runtime in the background (once per machine, cached under %s); eager "
                 "until it is ready", self.encoder.name, cache_dir() / "onnx")
        t0 = time.perf_counter()
        try:
            with _CHILD_EXPORT:
                if not self._path.exists():  # another forward of the same encoder may have made it meanwhile
                    export_in_child(payload, self._path)
            if self._path.exists():
                log.info("%s: exported to ONNX in %.1f s -> %s", self.encoder.name, time.perf_counter() - t0,
                         self._path.parent)
        except Exception as e:  # noqa: BLE001 - eager still works
            log.warning("%s: ONNX Runtime path not prepared (%s); staying eager", self.encoder.name, e)
            self._prepared = PreparedForward(self.encoder, "eager", None, note=f"onnxruntime failed: {e}")


_CHILD_EXPORT = threading.Lock()  # one export process at a time: each loads torch and the encoder again


def _example_input(encoder):
    """One input of the encoder's modality for an export's trace: a short prompt, or a grey image."""
    if getattr(encoder, "modality", "") == "vision":
        from PIL import Image

        return Image.new("RGB", (320, 240), (128, 128, 128))
    return "What does the chart show for 2020?"


# ---------------------------------------------------------------------------------------------- frozen sub-networks
class FrozenOnnx:
    """A frozen sub-network (one tensor in, one out) of a trainable model, run on ONNX Runtime on a CPU once that
    pays off: at once when its export is cached, else after `MIN_ITEMS_FOR_EXPORT` rows ran eagerly in this
    process (the export then costs seconds once per machine). Returns None wherever the caller must run it
    eagerly: gradients on, not a CPU fp32 input, ONNX Runtime missing, or a failed export or check. Under CPU
    autocast (bf16-mixed training) it still runs, in fp32.

    The module is checked against its eager forward when prepared (`prepare_forward`), and prepared again when its
    weights change. Never pickled or copied with its session: a copy prepares its own."""

    def __init__(self, module: torch.nn.Module, name: str, identity: dict, key: str = "pixel_values"):
        self.encoder = _NamedModule(module, name, identity, key)
        self.key, self.seen, self.failed = key, 0, False
        self._path: tuple | None = None  # (weights key, export path): the weights are hashed once per version
        self._prepared: tuple | None = None  # (weights key, forward)

    def __getstate__(self):
        return {**self.__dict__, "_prepared": None}

    def warm_up(self, x: torch.Tensor) -> bool:
        """Export (or load) and check now, on the example `x`, instead of after `MIN_ITEMS_FOR_EXPORT` rows
        (benchmarks: the steady state, with the one-off export timed apart). True if ONNX Runtime will be used."""
        self.seen = max(self.seen, MIN_ITEMS_FOR_EXPORT)
        with torch.no_grad():
            return self(x.float().cpu()) is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        if (self.failed or x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled()
                or not onnxruntime_available()):
            return None
        weights = weights_key(self.encoder)
        if self._prepared is None or self._prepared[0] != weights:
            example = {self.key: x}
            if self._path is None or self._path[0] != weights:
                self._path = (weights, onnx_path(self.encoder, example))
            n = self.seen + len(x)
            if choose_runtime("auto", x.device, None, n, export_cached=self._path[1].exists()) != "onnxruntime":
                self.seen = n
                return None
            with torch.autocast("cpu", enabled=False):  # exported and checked in fp32, under autocast too
                prepared = prepare_forward(self.encoder, "onnxruntime", x.device, None, example, spin=False)
            if prepared.runtime != "onnxruntime":
                self.failed = True  # prepare_forward said why; eager from now on
                return None
            self._prepared = (weights, prepared.forward)
        return self._prepared[1]({self.key: x})


def cpu_has_amx() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (Intel AMX: about 6x its fp32 rate in torch)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def weights_key(module: torch.nn.Module) -> tuple:
    """Changes whenever a parameter or buffer of `module` is replaced or modified in place (load_state_dict, .to)."""
    return tuple((t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))


class FrozenBf16:
    """A bf16 copy of a frozen module, made on first use and made again when the module's weights change (loaded,
    moved); called under `torch.no_grad` only. Never pickled or copied with its copy: a copy makes its own."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self._copy: tuple | None = None  # (weights key, bf16 module)

    def __getstate__(self):
        return {**self.__dict__, "_copy": None}

    def __call__(self, *args, **kwargs):
        key = weights_key(self.module)
        if self._copy is None or self._copy[0] != key:
            self._copy = (key, copy.deepcopy(self.module).to(torch.bfloat16).eval())
        return self._copy[1](*args, **kwargs)


class _NamedModule(torch.nn.Module):
    """What `prepare_forward` and `onnx_path` expect of an encoder: a name, an identity, a dict input."""

    def __init__(self, module: torch.nn.Module, name: str, identity: dict, key: str):
        super().__init__()
        self.module, self.name, self._identity, self.key = module, name, identity, key

    def identity(self) -> dict:
        return self._identity

    def forward(self, batch: dict) -> torch.Tensor:
        return self.module(batch[self.key])
