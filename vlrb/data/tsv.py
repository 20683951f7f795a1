"""LMUData TSVs: find a dataset's TSV, map sample keys to rows, and check images without decoding them all."""
from __future__ import annotations

import base64
import binascii
from pathlib import Path

import numpy as np
import pandas as pd

from vlrb.data.images import BACKREF_MAX_CHARS, first_image_b64

# leading bytes of the image formats VLMEvalKit TSVs carry
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"RIFF")


def find_tsv(tsv_dir: str | Path | None, dataset: str) -> Path | None:
    """The TSV for `dataset`: `<ds>.tsv`, upper-cased, without `_`, then a case/underscore-insensitive match."""
    if not tsv_dir:
        return None
    d = Path(tsv_dir)
    if not d.is_dir():
        return None
    for name in (dataset, dataset.upper(), dataset.replace("_", ""), dataset.replace("_", "").upper()):
        p = d / f"{name}.tsv"
        if p.exists():
            return p
    want = dataset.replace("_", "").lower()
    for p in sorted(d.glob("*.tsv")):
        if p.stem.replace("_", "").lower() == want:
            return p
    return None


def looks_like_image(b64: str) -> bool:
    """Cheap check of a base64 image: decode its first bytes and compare with known magic numbers."""
    s = first_image_b64(b64)
    if len(s) < 16:
        return False
    try:
        head = base64.b64decode(s[:24], validate=False)
    except (binascii.Error, ValueError):
        return False
    return head.startswith(_MAGIC)


def read_tsv_index(path: Path) -> pd.DataFrame:
    """Per TSV row: key (the sample-id rule: id column first, else index), index, row position, image status."""
    cols = pd.read_csv(path, sep="\t", nrows=0).columns
    if "index" not in cols:
        raise ValueError(f"{path}: LMUData TSV without an 'index' column")
    use = [c for c in ("index", "id", "sample_id", "image", "image_path") if c in cols]
    df = pd.read_csv(path, sep="\t", usecols=use, dtype=str, keep_default_na=False)
    key_col = "sample_id" if "sample_id" in df else "id" if "id" in df else "index"
    index = df["index"].str.strip().to_numpy()
    out = pd.DataFrame({"key": df[key_col].str.strip().to_numpy(), "index": index,
                        "row": np.arange(len(df))})
    if "image" in df:
        cells = dict(zip(index, df["image"]))
        status, nimg = [], []
        for k in index:
            v = cells[k]
            hops = 0
            while 0 < len(v) <= BACKREF_MAX_CHARS and hops < 4:  # back-reference to another row's image
                v = cells.get(v.strip(), "")
                hops += 1
            if not v:
                status.append("missing")
                nimg.append(0)
            elif looks_like_image(v):
                status.append("ok")
                nimg.append(v.count("',") + 1 if v.lstrip().startswith("[") else 1)
            else:
                status.append("undecodable")
                nimg.append(0)
        out["image_status"] = status
        out["num_images"] = nimg
    else:
        out["image_status"] = "missing"
        out["num_images"] = 0
    return out
