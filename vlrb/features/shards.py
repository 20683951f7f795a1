"""The shard store of an extraction: finished batches written as parquet shards into `<name>.parquet.partial/`,
read back on a resumed run, and merged into the final `<name>.parquet` in benchmark row order.

Every extraction engine (the single-process loop, Lightning over several devices) writes through `ShardWriter`:
a shard every `shard_every` batches and on `flush` (any exception), each renamed into place, so an interrupted
run keeps every flushed batch and a resumed run repeats none of them.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlrb.io import atomic_path


def embedding_array(emb: np.ndarray) -> pa.Array:
    """(n, d) -> a list<float32> column (one list per row)."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = emb.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(emb.reshape(-1)))


def embeddings_to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float> column of equal-length rows -> (n, d) float32 (no per-row Python work)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    if arr.null_count:
        raise ValueError("embedding column has null rows")
    if isinstance(arr, pa.FixedSizeListArray):
        d = arr.type.list_size
        return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, d)
    offs = arr.offsets.to_numpy()
    lens = np.diff(offs)
    if (lens != lens[0]).any():
        raise ValueError(f"embedding rows have different lengths ({lens.min()}..{lens.max()})")
    flat = arr.values.to_numpy(zero_copy_only=False)[offs[0]:offs[-1]]
    return flat.astype(np.float32, copy=False).reshape(n, int(lens[0]))


def shard_prefix(tag: str = "") -> str:
    """Unique per writer: a resumed run in the same second and process must not overwrite earlier shards."""
    return f"shard-{time.strftime('%Y%m%d%H%M%S')}{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class ShardWriter:
    """Buffers finished batches (rows of `ids`) and writes them as atomic parquet shards into `folder`: one every
    `shard_every` batches, and whatever is buffered on `flush`. `tag` goes into the shard names (a DDP rank)."""

    def __init__(self, folder: Path, ids: Sequence[str], shard_every: int, tag: str = ""):
        self.folder, self.ids, self.shard_every = Path(folder), ids, max(1, int(shard_every))
        self.prefix = shard_prefix(tag)
        self.rows: list[np.ndarray] = []
        self.embs: list[np.ndarray] = []
        self.status: list[str] = []
        self.errors: list[str] = []
        self.n_batches = 0
        self.n_shards = 0
        self.n_written = 0

    def add(self, rows: Sequence[int], emb: np.ndarray, status: Sequence[str], errors: Sequence[str]) -> None:
        """One encoded batch: its benchmark rows, embeddings, and each row's status and error."""
        self.rows.append(np.asarray([self.ids[i] for i in rows], dtype=object))
        self.embs.append(emb)
        self.status.extend(status)
        self.errors.extend(errors)
        self.n_batches += 1
        if self.n_batches % self.shard_every == 0:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        ids = np.concatenate(self.rows)
        table = pa.table({"sample_id": pa.array(ids.tolist(), pa.string()),
                          "embedding": embedding_array(np.concatenate(self.embs)),
                          "status": pa.array(self.status, pa.string()), "error": pa.array(self.errors, pa.string())})
        path = self.folder / f"{self.prefix}-{self.n_shards:05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        self.n_shards += 1
        self.n_written += len(ids)
        self.rows, self.embs, self.status, self.errors = [], [], [], []


def done_ids(folder: Path) -> set[str]:
    """The sample ids the shards in `folder` hold (an unreadable shard is deleted: its rows are redone)."""
    done: set[str] = set()
    for f in sorted(folder.glob("*.parquet")):
        try:
            done.update(pq.read_table(f, columns=["sample_id"]).column(0).to_pylist())
        except Exception:  # an unreadable shard (should not happen: shards are renamed into place) is redone
            f.unlink()
    return done


def merge_shards(ids: list[str], part: Path, final: Path, mod: str) -> dict:
    """All shards -> one parquet in benchmark row order (atomic); its dimension, counts and failures."""
    files = sorted(part.glob("*.parquet"))
    if not files:
        raise RuntimeError(f"{part}: no finished shards to merge")
    table = pa.concat_tables([pq.read_table(f) for f in files])
    got = table.column("sample_id").to_pylist()
    first: dict[str, int] = {}
    for j, s in enumerate(got):
        first.setdefault(s, j)  # DDP padding repeats a few samples
    missing = [s for s in ids if s not in first]
    if missing:
        raise RuntimeError(f"{part}: {len(missing)} samples were not encoded (e.g. {missing[:5]}); re-run to finish")
    take = pa.array([first[s] for s in ids], pa.int64())
    table = table.take(take)
    emb = embeddings_to_numpy(table.column("embedding"))
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    errors = table.column("error").to_pylist()
    cols = {"sample_id": pa.array(ids, pa.string()), "embedding": embedding_array(emb)}
    counts = {}
    failures = []
    if mod == "vision":
        cols["has_image"] = pa.array(status == "ok", pa.bool_())
        cols["image_status"] = pa.array(status.tolist(), pa.string())
        failed = np.flatnonzero(status == "decode_failed")
        failures = [{"sample_id": ids[i], "error": errors[i]} for i in failed]
        counts = {"n_with_image": int((status == "ok").sum()), "n_without_image": int((status == "none").sum()),
                  "n_decode_failed": int(len(failed))}
    with atomic_path(final) as tmp:
        pq.write_table(pa.table(cols), tmp)
    return {"dim": int(emb.shape[1]), "counts": counts, "failures": failures}
