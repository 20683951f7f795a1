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

Exports live under `cache_dir()/onnx/<encoder name>-<hash>/` where the hash covers the weights, the encoder
config, the input signature and the torch / ONNX Runtime versions, so a changed model never reuses a stale graph.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

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


def cache_dir() -> Path:
    """vlrb's own cache folder: $VLRB_CACHE_DIR, else $XDG_CACHE_HOME/vlrb, else ~/.cache/vlrb."""
    if os.environ.get("VLRB_CACHE_DIR"):
        return Path(os.environ["VLRB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vlrb"


def onnxruntime_available() -> bool:
    """ONNX Runtime to run, and torch.onnx's exporter dependencies (onnx, onnxscript) to export."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx", "onnxscript"))


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
                fwd = _onnxruntime_forward(encoder, example, path, spin)
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


# ---------------------------------------------------------------------------------------------- ONNX Runtime
def _dynamic_dims(example: dict) -> list[dict[int, str]]:
    """Batch size is dynamic everywhere; token sequences (2-D integer inputs) also in length."""
    return [{0: "batch", 1: "seq"} if v.dim() == 2 and not v.is_floating_point() else {0: "batch"}
            for v in example.values()]


def onnx_path(encoder, example: dict) -> Path:
    """Where this encoder's export is cached: its name plus a hash of weights, config, inputs and versions."""
    h = hashlib.sha256()
    sig = [(k, str(v.dtype), [None if d in dims else int(n) for d, n in enumerate(v.shape)])
           for (k, v), dims in zip(example.items(), _dynamic_dims(example))]
    versions = {"torch": torch.__version__, "onnxruntime": _version("onnxruntime"), "onnx": _version("onnx")}
    h.update(json.dumps({"class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
                         "identity": encoder.identity(), "inputs": sig, "versions": versions},
                        sort_keys=True, default=str).encode())
    for k, v in encoder.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return cache_dir() / "onnx" / f"{encoder.name}-{h.hexdigest()[:20]}" / "model.onnx"


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


class _Positional(torch.nn.Module):
    """The encoder with positional tensor inputs (what the exporter traces)."""

    def __init__(self, encoder, keys: list[str]):
        super().__init__()
        self.encoder, self.keys = encoder, keys

    def forward(self, *tensors):
        return self.encoder(dict(zip(self.keys, tensors)))


def export_onnx(encoder, example: dict, path: Path) -> Path:
    """Export `encoder` (inputs like `example`) to `path` through a temporary folder renamed into place."""
    keys = list(example)
    ex = {k: (torch.cat([v, v]) if v.shape[0] < 2 else v) for k, v in example.items()}  # batch 1 would specialise
    dims = _dynamic_dims(ex)
    shared = {name: torch.export.Dim(name, min=1) for name in ("batch", "seq")}
    dynamic = tuple({d: shared[n] for d, n in dd.items()} for dd in dims)
    path.parent.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.parent.name}-", dir=path.parent.parent))
    t0 = time.perf_counter()
    try:
        import warnings

        with warnings.catch_warnings(), _quiet_exporter():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(_Positional(encoder, keys).eval(), tuple(ex[k] for k in keys), dynamo=True,
                                        input_names=keys, output_names=["vlrb_embedding"], dynamic_shapes=(dynamic,),
                                        verbose=False)
            program.save(str(tmp / path.name))
        if path.parent.exists():  # another process finished the same export first
            shutil.rmtree(tmp)
        else:
            tmp.rename(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("%s: exported to ONNX in %.1f s -> %s", encoder.name, time.perf_counter() - t0, path.parent)
    return path


class _quiet_exporter:
    """torch.onnx prints progress lines to stdout, and its optimiser logs one INFO line per merged weight (which
    Hydra's INFO root logger would show by the hundred); keep both out of the job's output."""

    LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx")

    def __enter__(self):
        import contextlib
        import io

        self._levels = {name: logging.getLogger(name).level for name in self.LOGGERS}
        for name in self.LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        self._redirect = contextlib.redirect_stdout(io.StringIO())
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc):
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        return self._redirect.__exit__(*exc)


def _onnxruntime_forward(encoder, example: dict, path: Path, spin: bool = True) -> Callable[[dict], torch.Tensor]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not spin:  # idle threads sleep instead of spinning: the decode workers need those cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = None
    if path.exists():
        try:
            session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # a damaged or incompatible cached export: export it again
            log.warning("%s: cached ONNX export %s does not load (%s); exporting again", encoder.name, path.parent,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            shutil.rmtree(path.parent, ignore_errors=True)
    if session is None:
        with torch.inference_mode(False), torch.no_grad():
            export_onnx(encoder, example, path)
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    keys = list(example)
    if sorted(names) != sorted(keys):
        raise ValueError(f"{path}: graph inputs {names} do not match the batch keys {keys}")

    def forward(batch: dict) -> torch.Tensor:
        feeds = {k: batch[k].detach().cpu().contiguous().numpy() for k in names}
        return torch.from_numpy(session.run(None, feeds)[0])

    return forward


# ---------------------------------------------------------------------------------------------- many small calls
class AutoForward:
    """An encoder's forward for many small calls (routing raw inputs, a server): eager (channels_last for a
    convolutional tower) until ONNX Runtime pays off under `runtime: auto`, i.e. at once when the export is
    cached, else once `MIN_ITEMS_FOR_EXPORT` items went through eagerly; then the prepared path, checked
    against eager like any other (`prepare_forward`)."""

    def __init__(self, encoder, device: torch.device, dtype: torch.dtype | None = None, runtime: str = "auto"):
        self.encoder, self.device, self.dtype, self.runtime = encoder, device, dtype, runtime
        self.seen, self._path, self._prepared = 0, None, None

    def __call__(self, batch: dict) -> torch.Tensor:
        if self._prepared is None:
            n = len(next(iter(batch.values())))
            convolutional = bool(getattr(self.encoder, "channels_last", False))
            if self._path is None and self.runtime == "auto" and convolutional and onnxruntime_available():
                self._path = onnx_path(self.encoder, batch)  # weights hashed once: they do not change here
            chosen = choose_runtime(self.runtime, self.device, self.dtype, self.seen + n,
                                    export_cached=bool(self._path and self._path.exists()), convolutional=convolutional)
            if chosen == "eager" and self.runtime == "auto" and self.seen + n < MIN_ITEMS_FOR_EXPORT:
                self.seen += n
                if not getattr(self.encoder, "_channels_last", False):
                    _channels_last(self.encoder, True)
                return self.encoder(batch)
            # spin=False: ONNX Runtime's threads sleep between calls; spinning, they take the cores from the
            # other encoder's forward that runs next (text forward 2x slower after an image forward, measured)
            self._prepared = prepare_forward(self.encoder, self.runtime, self.device, self.dtype, batch,
                                             n_items=self.seen + n, spin=False)
        return self._prepared.forward(batch)


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
