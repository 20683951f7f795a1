"""A trained router's learned state on disk: safetensors, checked before and after it is read.

safetensors (the format of the field) holds named arrays behind a JSON header that states each one's dtype and
shape, and executes nothing when read. Every reader here refuses, with one line naming the file:
* a file whose header promises more than `MAX_STATE_BYTES` (or whose arrays are not where the header says);
* an array that is not the shape its router needs (`expect`), checked from the header before anything is read;
* NaN or infinite values.

Folders saved before safetensors hold `state.npz` / `scaler.npz` (NumPy) and `weights.pt` (torch); they still load,
with the same checks: an npz member's shape comes from its .npy header, and a member that inflates to far more than
its compressed size (a zip bomb) is refused unread.
"""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from vlrb.components import ArtifactError

MAX_STATE_BYTES = 8 << 30  # what one state file may hold: far above any router vlrb trains (full-scale k-NN: 170 MB)
MAX_INFLATION = 64  # an npz member may not inflate to more than this many times its stored size (vlrb writes 1x)

Shapes = Mapping[str, Callable[[tuple[int, ...]], bool] | tuple]


# ---------------------------------------------------------------------------------------------- write
def save_arrays(path: Path, arrays: Mapping[str, Any]) -> None:
    """NumPy arrays (or torch tensors) as one safetensors file, written atomically."""
    from vlrb.io import write_with

    plain = {k: _numpy(v) for k, v in arrays.items()}

    def write(tmp: Path) -> None:
        from safetensors.numpy import save_file

        save_file(plain, str(tmp))

    write_with(path, write)


def _numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor: bf16 has no NumPy dtype, so it is stored as float32
        v = v.detach().cpu()
        v = v.float() if str(v.dtype) == "torch.bfloat16" else v
        v = v.numpy()
    a = np.asarray(v)
    a = np.ascontiguousarray(a) if a.ndim else a  # (ascontiguousarray turns a scalar into shape (1,))
    if a.dtype == object:
        raise TypeError("an array of Python objects cannot be saved; convert it to numbers or strings first")
    return a


# ---------------------------------------------------------------------------------------------- read
def header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} of a safetensors file, from its header only (nothing else is read)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ArtifactError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        n = struct.unpack("<Q", raw)[0]
        if n > min(size - 8, 100 << 20):
            raise ArtifactError(f"{path}: not a safetensors file (header of {n} bytes in a {size}-byte file)")
        try:
            head = json.loads(f.read(n))
        except ValueError as e:
            raise ArtifactError(f"{path}: not a safetensors file ({e})") from None
    out, total = {}, 0
    for name, info in head.items():
        if name == "__metadata__":
            continue
        try:
            shape, start, end = tuple(int(d) for d in info["shape"]), *(int(x) for x in info["data_offsets"])
            dtype = str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"{path}: array {name!r} has a malformed header entry") from None
        total += max(end - start, 0)
        out[name] = (dtype, shape)
    if total > MAX_STATE_BYTES or total > size:
        raise ArtifactError(f"{path}: its header promises {total} bytes in a {size}-byte file "
                            f"(at most {MAX_STATE_BYTES} are read)")
    return out


def load_arrays(path: Path, *, expect: Shapes | None = None, nan_ok: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every array of a safetensors file (or a legacy .npz) as NumPy, shapes checked first, then values (NaN only
    where `nan_ok` names an array that used NaN as a marker in older folders)."""
    path = Path(path)
    if path.suffix == ".npz":
        shapes = npz_header(path)
    else:
        shapes = {k: s for k, (_, s) in header(path).items()}
    check_shapes(path, shapes, expect)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    else:
        from safetensors.numpy import load_file

        try:
            arrays = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
            raise ArtifactError(f"{path}: does not read as safetensors ({type(e).__name__}: {e})") from None
    for name, a in arrays.items():
        if name not in nan_ok:
            check_finite(path, name, a)
    return arrays


def load_torch_state(path: Path, *, expect: Shapes | None = None) -> dict:
    """A torch state_dict from safetensors (or a legacy weights.pt, read with weights_only=True), checked."""
    import torch

    path = Path(path)
    if path.suffix == ".pt":
        check_pt_archive(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a damaged or hostile file: one line, naming it
            raise ArtifactError(f"{path}: does not load as torch weights ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200]})") from None
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise ArtifactError(f"{path}: not a state_dict of tensors")
        check_shapes(path, {k: tuple(v.shape) for k, v in state.items()}, expect)
    else:
        check_shapes(path, {k: s for k, (_, s) in header(path).items()}, expect)
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001
            raise ArtifactError(f"{path}: does not read as safetensors ({type(e).__name__}: {e})") from None
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ArtifactError(f"{path}: weight {name!r} holds NaN or infinite values")
    return state


def save_torch_state(path: Path, state: Mapping[str, Any]) -> None:
    """A torch state_dict as safetensors (contiguous copies: safetensors refuses shared or strided storage)."""
    from vlrb.io import write_with

    plain = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}

    def write(tmp: Path) -> None:
        from safetensors.torch import save_file

        save_file(plain, str(tmp))

    write_with(path, write)


# ---------------------------------------------------------------------------------------------- checks
def check_shapes(path: Path, shapes: Mapping[str, tuple[int, ...]], expect: Shapes | None) -> None:
    """Every expected array present, each of an accepted shape (a tuple, -1 for any size, or a predicate)."""
    for name, want in (expect or {}).items():
        if name not in shapes:
            raise ArtifactError(f"{path}: array {name!r} is missing (it holds {sorted(shapes)})")
        got = tuple(shapes[name])
        ok = want(got) if callable(want) else (len(got) == len(want) and all(w in (-1, g) for w, g in zip(want, got)))
        if not ok:
            raise ArtifactError(f"{path}: array {name!r} has shape {got}, not the {_describe(want)} its router needs")


def _describe(want) -> str:
    return getattr(want, "__doc__", None) or "expected shape" if callable(want) else f"shape {tuple(want)}"


def check_finite(path: Path, name: str, a: np.ndarray) -> None:
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        raise ArtifactError(f"{path}: array {name!r} holds NaN or infinite values")


def npz_header(path: Path) -> dict[str, tuple[int, ...]]:
    """{name: shape} of a .npz from each member's .npy header; a member that would inflate beyond MAX_INFLATION
    times its stored size, or beyond MAX_STATE_BYTES, is refused before anything is decompressed."""
    out, total = {}, 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = info.filename.removesuffix(".npy")
                if info.file_size > MAX_INFLATION * max(info.compress_size, 1) + (1 << 20):
                    raise ArtifactError(f"{path}: member {name!r} would inflate from {info.compress_size} to "
                                        f"{info.file_size} bytes (a decompression bomb?); refused unread")
                total += info.file_size
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0(f))
                if dtype.hasobject:
                    raise ArtifactError(f"{path}: member {name!r} holds Python objects; refused (never unpickled)")
                out[name] = tuple(int(d) for d in shape)
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        if isinstance(e, ArtifactError):
            raise
        raise ArtifactError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from None
    if total > MAX_STATE_BYTES:
        raise ArtifactError(f"{path}: its members hold {total} bytes (at most {MAX_STATE_BYTES} are read)")
    return out


def check_pt_archive(path: Path) -> None:
    """A legacy weights.pt is a zip of tensors: refuse a member that inflates beyond MAX_INFLATION times its stored
    size, or a total beyond MAX_STATE_BYTES (shapes are checked after the weights_only load)."""
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.file_size > MAX_INFLATION * max(info.compress_size, 1) + (1 << 20):
                    raise ArtifactError(f"{path}: member {info.filename!r} would inflate from {info.compress_size} "
                                        f"to {info.file_size} bytes; refused unread")
                total += info.file_size
    except zipfile.BadZipFile:
        raise ArtifactError(f"{path}: not a torch weights file (not a zip archive)") from None
    if total > MAX_STATE_BYTES:
        raise ArtifactError(f"{path}: holds {total} bytes (at most {MAX_STATE_BYTES} are read)")
