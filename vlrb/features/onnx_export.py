"""Encoders exported to ONNX and run by ONNX Runtime on a CPU (the fast path of vlrb/features/runtime.py).

Exports live under `cache_dir()/onnx/<encoder name>-<hash>/` where the hash covers the weights, the encoder
config, the input signature and the torch / ONNX Runtime versions, so a changed model never reuses a stale graph.
An export is written to a temporary folder renamed into place, so a crash never leaves half a graph in the cache.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """vlrb's own cache folder: $VLRB_CACHE_DIR, else $XDG_CACHE_HOME/vlrb, else ~/.cache/vlrb."""
    if os.environ.get("VLRB_CACHE_DIR"):
        return Path(os.environ["VLRB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vlrb"


def onnxruntime_available() -> bool:
    """ONNX Runtime to run, and torch.onnx's exporter dependencies (onnx, onnxscript) to export."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx", "onnxscript"))


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
    _remove_stale(path)
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


STALE_S = 3600  # an unfinished export's folder older than this was left by a process that died


def _remove_stale(path: Path) -> None:
    """Temporary folders of this export left by a process killed mid-export (a live one is minutes old at most)."""
    for old in path.parent.parent.glob(f".{path.parent.name}-*"):
        try:
            if time.time() - old.stat().st_mtime > STALE_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def child_payload(encoder, example: dict, path: Path, nice: int = 10) -> bytes:
    """What `export_in_child` sends its child: the parent's sys.path (an encoder of the caller's own code unpickles
    too), then the encoder, its example batch, the export path and the child's niceness, pickled. Made in the
    calling thread: torch's serialisation must not run in a thread still going when the interpreter exits."""
    import pickle
    import sys

    return pickle.dumps(list(sys.path)) + pickle.dumps((encoder, example, str(path), nice))


def export_in_child(payload: bytes, path: Path) -> None:
    """`export_onnx` in a child Python process at a lower priority (`child_payload` says what): tracing holds the
    GIL for seconds, which a server's event loop must not wait for, and a process can stop while its child exports
    (a thread inside torch at interpreter exit aborts the process). The child is stopped if this process exits
    first. Raises RuntimeError with the child's last error lines when the export fails."""
    import atexit
    import subprocess
    import sys

    # the parent's import path, so that the child finds vlrb however the parent did (installed or not)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-m", "vlrb.features.onnx_export"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    stopped = []

    def stop():  # this process is exiting: the export is abandoned (its folder is removed by a later export)
        stopped.append(True)
        proc.kill()

    atexit.register(stop)
    try:
        _, err = proc.communicate(payload)
    finally:
        atexit.unregister(stop)
    if stopped:
        return
    if proc.returncode != 0 or not path.exists():
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"the export process ended with exit code {proc.returncode}: {' | '.join(tail)}")


def _child() -> None:
    """python -m vlrb.features.onnx_export: one export, its inputs pickled on stdin (see export_in_child)."""
    import pickle
    import sys

    stream = sys.stdin.buffer
    sys.path[:] = pickle.load(stream)
    encoder, example, path, nice = pickle.load(stream)
    if getattr(encoder, "channels_last", False):
        encoder.set_channels_last(False)  # exported in the default layout, as prepare_forward does
    os.nice(nice)
    torch.set_num_threads(1)  # beside the parent's work, not over it
    export_onnx(encoder, example, Path(path))


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


def onnxruntime_forward(encoder, example: dict, path: Path, spin: bool = True) -> Callable[[dict], torch.Tensor]:
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


if __name__ == "__main__":
    _child()
