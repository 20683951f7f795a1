"""Items into batches, and batches into embeddings: the part of extraction every engine shares.

A batch is `(rows, status, errors, inputs, ok)`: the benchmark rows it holds, each row's status ("ok", "none": no
image, "decode_failed") and error, the encoder's batched inputs of the ok rows (None when there are none), and the
ok mask. `BatchEncoder` turns one into an `EncodedBatch`: the ok rows' embeddings, zero vectors for the others.
`encode_items` runs the same steps in memory, for new inputs (vlrb.features.recipe).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vlrb.devices import autocast, resolve_device, resolve_precision


class EncodeDataset(Dataset):
    """Item k -> (row, preprocessed input or None, status, error). Runs in DataLoader workers."""

    def __init__(self, modality: str, source, positions: Sequence[int], preprocess):
        self.modality, self.source, self.positions, self.preprocess = modality, source, list(positions), preprocess

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int):
        i = int(self.positions[k])
        if self.modality == "text":
            return i, self.preprocess(self.source[i]), "ok", ""
        try:
            img = self.source[i]
            if img is None:
                return i, None, "none", ""
            return i, self.preprocess(img), "ok", ""
        except Exception as e:  # ImageDecodeError and anything a broken file makes PIL/transforms raise
            return i, None, "decode_failed", f"{type(e).__name__}: {e}"


class CollateEncoded:
    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items):
        rows = np.array([it[0] for it in items], dtype=np.int64)
        status = [it[2] for it in items]
        errors = [it[3] for it in items]
        ok = np.array([s == "ok" for s in status], dtype=bool)
        inputs = self.collate([it[1] for it in items if it[2] == "ok"]) if ok.any() else None
        return rows, status, errors, inputs, ok


def to_device(inputs: dict, device: torch.device) -> dict:
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) for k, v in inputs.items()}


class Pretokenized(dict):
    """row -> token ids of the prompts to encode (what `EncodeDataset` reads for text once tokenised)."""


def pretokenize(encoder, prompts, rows) -> Pretokenized:
    return Pretokenized((i, encoder.preprocess(prompts[i])) for i in rows)


def _identity(x):
    return x


def make_dataset(encoder, mod: str, source, todo, decoder=None) -> tuple[EncodeDataset, CollateEncoded]:
    """The items to encode and how a list of them becomes a batch of (rows, status, errors, inputs, ok); with a
    `decoder` (vlrb/features/decode.py) JPEGs stay encoded, for `decoder.finish` to decode on the device."""
    preprocess, collate = (_identity if isinstance(source, Pretokenized) else encoder.preprocess), encoder.collate
    if decoder is not None:
        from vlrb.features.decode import RawImages

        source, preprocess, collate = RawImages(source), decoder.item, decoder.collate
    return EncodeDataset(mod, source, todo, preprocess), CollateEncoded(collate)


def make_loader(encoder, mod: str, source, todo, batch_size: int, num_workers: int, device: torch.device,
                decoder=None) -> DataLoader:
    """Batches of `make_dataset`, decoded ahead by `num_workers` DataLoader worker processes."""
    if num_workers and mod == "text":
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked workers + Rust threads deadlock otherwise
    dataset, collate = make_dataset(encoder, mod, source, todo, decoder)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if num_workers else None,
                      persistent_workers=False)


def decode_on_device(decoder, batch: dict, device, status: list, errors: list, ok: np.ndarray) -> dict | None:
    """Pixels of the batch's JPEGs decoded on the device; a JPEG that fails is marked like a PIL failure."""
    inputs, failed = decoder.finish(batch, device)
    at = np.flatnonzero(ok)  # the batch's inputs are its ok rows, in order
    for j, err in failed:
        r = at[j]
        status[r], errors[r], ok[r] = "decode_failed", err, False
    return inputs


@dataclass
class EncodedBatch:
    rows: np.ndarray
    status: list[str]
    errors: list[str]
    emb: np.ndarray  # (len(rows), dim) float32; zero where status is not "ok"
    n_forwarded: int  # rows that went through the forward
    forward_s: float


class BatchEncoder:
    """One batch -> its `EncodedBatch`, on `device` under `dtype` autocast (None: none; Lightning casts itself).

    decoder: a `vlrb.features.decode.DeviceDecoder` when JPEGs are decoded on the device.
    prepare: inputs -> a `vlrb.features.runtime.PreparedForward`, called once, on the first batch with inputs, by
      whichever thread has it (the forward path checked against eager); without it the encoder's own forward.
    Safe to call from several threads at once: each batch decodes and runs its own forward."""

    def __init__(self, encoder, device: torch.device, dtype: torch.dtype | None = None, *, decoder=None,
                 prepare: Callable[[dict], Any] | None = None):
        self.encoder, self.device, self.dtype, self.decoder, self._prepare = encoder, device, dtype, decoder, prepare
        self.prepared = None
        self._lock = threading.Lock()

    def _forward(self, inputs: dict):
        if self._prepare is None:
            return self.encoder
        if self.prepared is None:
            with self._lock:
                if self.prepared is None:
                    self.prepared = self._prepare(inputs)
        return self.prepared.forward

    def __call__(self, batch) -> EncodedBatch:
        rows, status, errors, inputs, ok = batch
        dim = self.encoder.dim
        emb = np.zeros((len(rows), dim), np.float32)
        if inputs is not None and self.decoder is not None:
            inputs = decode_on_device(self.decoder, inputs, self.device, status, errors, ok)
        if inputs is None:
            return EncodedBatch(rows, status, errors, emb, 0, 0.0)
        inputs = to_device(inputs, self.device)
        with torch.inference_mode():  # per thread: inference mode and autocast are thread-local
            forward = self._forward(inputs)
            tf = time.perf_counter()
            with autocast(self.device, self.dtype):
                y = forward(inputs)
        n_ok = int(ok.sum())
        if y.shape != (n_ok, dim):
            raise ValueError(f"{self.encoder.name}: forward gave {tuple(y.shape)}, expected ({n_ok}, {dim})")
        emb[ok] = y.float().cpu().numpy()
        return EncodedBatch(rows, status, errors, emb, n_ok, time.perf_counter() - tf)


def encode_items(encoder, mod: str, source, *, batch_size: int = 32, device: str | torch.device = "auto",
                 forward=None) -> np.ndarray:
    """(n, dim) float32 embeddings of `source` (prompts, or images as a Sequence giving PIL/None) in memory,
    through the same preprocessing as extraction; a missing or undecodable image gives a zero vector.
    `forward`: the encoder's forward to use (an `AutoForward` kept across calls); default the module itself."""
    device = resolve_device(device)
    if getattr(encoder, "_vlrb_device", None) != device:  # moved once: `.to` walks every module (ms per call)
        encoder.to(device).eval()
        encoder._vlrb_device = device
    forward = forward or encoder
    dataset, collate = make_dataset(encoder, mod, source, range(len(source)))
    out = np.zeros((len(source), encoder.dim), np.float32)
    dtype = resolve_precision("auto", device)
    with torch.inference_mode():
        for s in range(0, len(source), batch_size):  # in this thread, no DataLoader: a request's worth is small
            rows, status, errors, inputs, ok = collate([dataset[k] for k in range(s, min(s + batch_size, len(source)))])
            if inputs is not None:
                with autocast(device, dtype):
                    out[rows[ok]] = forward(to_device(inputs, device)).float().cpu().numpy()
    return out
