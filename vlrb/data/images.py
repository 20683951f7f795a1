"""Image references and a picklable, lazy image loader.

A sample's image is one of: a row of an LMUData TSV (base64, with VLMEvalKit's back-reference rule:
a cell of at most 64 characters is the `index` of another row whose image is reused), a file path,
an inline base64 string, or nothing (text-only samples are first-class).
The loader is cheap to pickle, so DataLoader workers decode images in parallel; each process reads a
TSV at most once.
"""
from __future__ import annotations

import ast
import base64
import binascii
import io
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

BACKREF_MAX_CHARS = 64


class ImageDecodeError(ValueError):
    """An image reference exists but does not decode to an image."""


def read_tsv_images(tsv_path: str | Path) -> dict[str, str]:
    """Map `index` (as str) -> base64 image string of one LMUData TSV, with back-references resolved."""
    tsv_path = Path(tsv_path)
    try:
        df = pd.read_csv(tsv_path, sep="\t", usecols=["index", "image"], dtype=str, keep_default_na=False)
    except ValueError as e:
        raise ValueError(f"{tsv_path}: expected columns 'index' and 'image' ({e})") from None
    cells = dict(zip(df["index"].str.strip(), df["image"]))
    return {k: resolve_backref(cells, k, tsv_path) for k in cells}


def resolve_backref(cells: dict[str, str], key: str, where: str | Path = "") -> str:
    value = cells[key]
    seen = {key}
    while 0 < len(value) <= BACKREF_MAX_CHARS:  # a reference to another row's index
        ref = value.strip()
        if ref not in cells or ref in seen:
            raise ImageDecodeError(f"{where}: image of row {key!r} refers to missing or cyclic row {ref!r}")
        seen.add(ref)
        value = cells[ref]
    return value


def first_image_b64(cell: str) -> str:
    """A TSV cell may hold a Python list literal of base64 strings (multi-image): take the first."""
    s = cell.strip()
    if s.startswith("["):
        try:
            items = ast.literal_eval(s)
        except (ValueError, SyntaxError):
            return s
        return items[0] if items else ""
    return s


def decode_b64_image(b64: str):
    from PIL import Image

    try:
        raw = base64.b64decode(first_image_b64(b64), validate=False)
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (binascii.Error, OSError, ValueError) as e:
        raise ImageDecodeError(f"base64 image does not decode ({type(e).__name__}: {e})") from None
    return img.convert("RGB") if img.mode != "RGB" else img


class ImageLoader(Sequence):
    """`loader[i]` -> PIL RGB image or None (no image); raises ImageDecodeError for a broken one.

    kinds[i] in {"tsv", "path", "b64", "none"}; refs[i] is the TSV index, the file path or the base64 text.
    tsv_files[i] is the TSV path for kind "tsv".
    """

    def __init__(self, kinds: Sequence[str], refs: Sequence[str], tsv_files: Sequence[str] | None = None,
                 sample_ids: Sequence[str] | None = None):
        self.kinds = np.asarray(kinds, dtype=object)
        self.refs = np.asarray(refs, dtype=object)
        self.tsv_files = np.asarray(tsv_files if tsv_files is not None else [""] * len(self.kinds), dtype=object)
        self.sample_ids = sample_ids
        self._tsv_cache: dict[str, dict[str, str]] = {}
        self._tsv_lock = threading.Lock()  # decode threads share the cache: each TSV is read once

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tsv_cache"] = {}  # each worker process reads its own copy lazily
        del state["_tsv_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._tsv_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def has_image(self) -> np.ndarray:
        return self.kinds != "none"

    def _name(self, i: int) -> str:
        return self.sample_ids[i] if self.sample_ids is not None else f"row {i}"

    def b64(self, i: int) -> str | None:
        kind = self.kinds[i]
        if kind == "tsv":
            f = self.tsv_files[i]
            if f not in self._tsv_cache:
                with self._tsv_lock:
                    if f not in self._tsv_cache:
                        self._tsv_cache[f] = read_tsv_images(f)
            try:
                return self._tsv_cache[f][str(self.refs[i])]
            except KeyError:
                raise ImageDecodeError(f"{self._name(i)}: index {self.refs[i]!r} not found in {f}") from None
        if kind == "b64":
            return self.refs[i]
        return None

    def raw_bytes(self, i: int) -> bytes | None:
        """The encoded image file of row i, undecoded (for decoding elsewhere, e.g. on a GPU); None: no image."""
        kind = self.kinds[i]
        if kind == "none":
            return None
        try:
            if kind == "path":
                return Path(self.refs[i]).read_bytes()
            return base64.b64decode(first_image_b64(self.b64(i)), validate=False)
        except ImageDecodeError as e:
            raise ImageDecodeError(f"{self._name(i)}: {e}") from None
        except (OSError, binascii.Error, ValueError) as e:
            raise ImageDecodeError(f"{self._name(i)}: cannot read image {self.refs[i]!r} ({e})") from None

    def __getitem__(self, i: int):
        kind = self.kinds[i]
        if kind == "none":
            return None
        try:
            if kind == "path":
                from PIL import Image

                img = Image.open(self.refs[i])
                img.load()
                return img.convert("RGB") if img.mode != "RGB" else img
            return decode_b64_image(self.b64(i))
        except ImageDecodeError as e:
            raise ImageDecodeError(f"{self._name(i)}: {e}") from None
        except OSError as e:
            raise ImageDecodeError(f"{self._name(i)}: cannot read image {self.refs[i]!r} ({e})") from None


class ImageList(Sequence):
    """Images given by a caller (route_raw, a server): each a file path, raw bytes, a PIL image, a
    `data:image/...;base64,` URI or None; `images[i]` -> PIL RGB or None, ImageDecodeError when it does not decode."""

    def __init__(self, items: Sequence, max_pixels: int | None = None):
        self.items = list(items)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        x = self.items[i]
        if x is None:
            return None
        if isinstance(x, Image.Image):
            img = x
        elif isinstance(x, str) and x.startswith("data:"):
            if not x.startswith("data:image/"):
                raise ImageDecodeError(f"image {i}: a data URI that is not an image ({x[:30]!r})")
            return self._checked(decode_b64_image(x.split(",", 1)[-1]), i)
        else:
            try:
                img = Image.open(io.BytesIO(x) if isinstance(x, (bytes, bytearray)) else x)
                self._checked(img, i)  # refuse a decompression bomb before decoding it
                img.load()
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise ImageDecodeError(f"image {i}: does not decode ({type(e).__name__}: {e})") from None
        return self._checked(img.convert("RGB") if img.mode != "RGB" else img, i)

    def _checked(self, img, i: int):
        if self.max_pixels and img.width * img.height > self.max_pixels:
            raise ImageDecodeError(f"image {i}: {img.width}x{img.height} exceeds the {self.max_pixels} pixel limit")
        return img

