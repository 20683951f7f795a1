"""Small I/O helpers: atomic writes, file hashes, and a restricted unpickler for untrusted pickles."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from vlrb.errors import VlrbError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, shared_mode())  # mkstemp creates 0600; artifacts follow the umask like any file
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class UnsafeTargetError(VlrbError, ValueError):
    """A folder vlrb was asked to write is not one it may replace (it would lose someone's files)."""


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def shared_mode(dir: bool = False) -> int:
    """The permission bits a plain `open`/`mkdir` would give under the user's umask (mkstemp/mkdtemp give 0600/0700)."""
    return (0o777 if dir else 0o666) & ~_umask()


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Exclusive lock for everything that writes the folder `path` (one lock file beside it).

    Two builds of one data.root, or two first-time demo generations, run one after the other instead of
    mixing their files. The lock is released by the OS when a process dies, so it never goes stale.
    """
    import fcntl

    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, shared_mode())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log:
                log(f"waiting for another vlrb process writing {path} ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def new_temp_dir(dest: Path) -> Path:
    """A fresh, uniquely named folder beside `dest` to build it in (never shared between processes)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".building", dir=dest.parent))
    os.chmod(tmp, shared_mode(dir=True))
    return tmp


def remove_stale_temp_dirs(dest: Path) -> list[Path]:
    """Remove what killed builds of `dest` left beside it. Call only while holding `folder_lock(dest)`:
    then no live process owns such a folder."""
    stale = [p for pat in (f".{glob.escape(dest.name)}.*.building", f".{glob.escape(dest.name)}.old-*")
             for p in dest.parent.glob(pat) if p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def swap_dir(tmp: Path, dest: Path, carry: tuple[str, ...] = ()) -> None:
    """Put the finished folder `tmp` in place of `dest`; the old one goes only after the new one is there.

    `carry`: paths relative to `dest` copied into the new folder first (e.g. features extracted earlier).
    """
    old = None
    if dest.exists():
        for rel in carry:
            src = dest / rel
            if src.exists():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                if (tmp / rel).exists():
                    shutil.rmtree(tmp / rel)
                shutil.copytree(src, tmp / rel, symlinks=True)
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_target_dir(dest: Path, *, is_ours: Callable[[Path], bool], what: str, key: str,
                     create_parents: bool = False) -> None:
    """Refuse to replace a folder vlrb did not create, and refuse to invent deep new paths from a typo.

    `dest` may be missing (it will be created), empty, or a folder `is_ours` recognises; anything else is an
    error that names `key` (the config key that chose the folder). Without `create_parents`, the parent
    folder must exist already.
    """
    if dest.exists():
        if not dest.is_dir():
            raise UnsafeTargetError(f"{key}={dest} is a file, not a folder; point {key} at a new or empty folder")
        if any(dest.iterdir()) and not is_ours(dest):
            raise UnsafeTargetError(
                f"{key}={dest} is an existing folder that is not {what}; vlrb never replaces a folder it did not "
                f"create. Point {key} at a new or empty folder (or at an earlier vlrb build)")
    elif not dest.parent.is_dir() and not create_parents:
        missing = dest.parent
        while not missing.parent.is_dir():
            missing = missing.parent
        raise UnsafeTargetError(f"{key}={dest}: the folder {missing} does not exist (a typo?); "
                                f"create the parent folder first if this path is meant")


def check_run_dir(path: str | os.PathLike) -> None:
    """A run directory is new, empty or a vlrb run: Hydra's own .hydra/ and job log aside, a folder holding someone's
    files is refused, as data.root is (`claim_run_dir` then refuses a folder another run claimed)."""
    path = Path(path)
    if not path.is_dir():
        return
    theirs = sorted(p.name for p in path.iterdir() if p.name != ".hydra" and not p.name.endswith(".log"))
    if theirs and not (path / ".vlrb-run").exists():
        raise UnsafeTargetError(f"run directory {path} already holds files that are not a vlrb run ("
                                f"{', '.join(theirs[:5])}{', ...' if len(theirs) > 5 else ''}); vlrb never writes "
                                "over them: set hydra.run.dir to a new or empty folder")


def claim_run_dir(path: str | os.PathLike) -> None:
    """Mark a run directory as taken by this process; a second run that landed in the same directory
    stops here instead of overwriting the first one's results."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    check_run_dir(path)
    try:
        with open(path / ".vlrb-run", "x") as f:
            f.write(f"{os.getpid()}\n")
    except FileExistsError:
        raise UnsafeTargetError(f"run directory {path} is already used by another run; start the run again "
                                f"(or set hydra.run.dir to a new folder)") from None


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's content (resolving symlinks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stat_fingerprint(path: str | os.PathLike) -> str:
    """Cheap change detector: resolved path, size and mtime (used to skip re-hashing unchanged inputs)."""
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}:{st.st_size}:{st.st_mtime_ns}"


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits plain containers, strings and numbers (and numpy scalars, which VLMEvalKit writes as keys)."""

    _ALLOWED = {
        ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
        ("builtins", "str"), ("builtins", "int"), ("builtins", "float"), ("builtins", "bool"),
        ("collections", "OrderedDict"),
        ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only plain data is allowed")


def safe_pickle_load(path: str | os.PathLike) -> Any:
    """Load a pickle from an untrusted source without executing code."""
    with open(path, "rb") as f:
        return _RestrictedUnpickler(io.BytesIO(f.read())).load()


def write_with(path, writer: Callable[[Path], None]) -> None:
    """Atomically write `path` with `writer(tmp_path)`."""
    with atomic_path(path) as tmp:
        writer(tmp)
