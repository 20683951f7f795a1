"""The raw-input pipeline of end-to-end routers: prompts and first images, read lazily per sample.

`RawDataset.__getitem__` reads one prompt and decodes one image (so DataLoader workers decode in parallel;
with no workers, `__getitems__` decodes a batch's images on threads),
runs the backbone's processor, and attaches per-row arrays (targets, Y, C, cluster ids, ...). Each item
carries its benchmark row and an image status (0 = image, 1 = no image, 2 = failed to decode); both of the
latter get the mid-grey placeholder. `ImageStats` counts them per split from the batches, so the counts
are right whichever worker decoded the image.
"""
from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from vlrb.backbones.base import Processor
from vlrb.data.images import ImageDecodeError

log = logging.getLogger(__name__)

IMAGE_OK, IMAGE_MISSING, IMAGE_FAILED = 0, 1, 2


def decode_workers(setting: int | str, device: torch.device, cores: int | None = None) -> int:
    """DataLoader workers for the end-to-end routers (`num_workers`: a whole number, or auto).

    auto on a CPU: none below 8 cores, then one per 8 cores (at most 4). The forward and backward use every
    core through OpenMP threads that wait for each other at every operation, so a worker process that takes a
    core stalls them all: on 2 cores, first-epoch training ran about 1.25x faster with no worker than with one
    (benchmarks/results/cpu_speed_2core.md), although decoding is then serial. auto on a GPU: the CPU only decodes
    and feeds it, so every core but one, at most 8."""
    if str(setting) != "auto":
        n = int(setting)
        if n < 0:
            raise ValueError(f"num_workers must be auto or a whole number >= 0, got {setting!r}")
        return n
    cores = cores or os.cpu_count() or 1
    if device.type == "cpu":
        return min(4, cores // 8)
    return min(8, max(1, cores - 1))


class RawDataset(Dataset):
    """Rows `rows` of a benchmark: (prompt, image) through `processor`, plus `arrays[k][j]` for item j."""

    def __init__(self, prompts: Sequence[str], images, rows: Sequence[int], processor: Processor, **arrays):
        rows = np.asarray(rows, dtype=np.int64)
        self.prompts = [prompts[i] for i in rows]  # only this split's prompts travel to the workers
        self.images, self.rows, self.processor = images, rows, processor
        for k, v in arrays.items():
            if len(v) != len(rows):
                raise ValueError(f"{k}: {len(v)} rows for {len(rows)} samples")
        self.arrays = {k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> dict:
        return self._item(j, *self._pixels(j))

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """A batch (the DataLoader asks for whole batches). In the main process, i.e. with no worker processes,
        its images are decoded and resized on one thread per core: PIL releases the GIL, and the forward that
        would use those cores waits for the batch anyway. Prompts are tokenised on the calling thread (a Hugging
        Face fast tokenizer is not safe to share between threads)."""
        threads = torch.get_num_threads() if get_worker_info() is None else 1
        if threads > 1 and len(indices) > 1:
            pixels = list(_decode_pool(threads).map(self._pixels, indices))
        else:
            pixels = [self._pixels(j) for j in indices]
        return [self._item(j, *p) for j, p in zip(indices, pixels)]

    def _pixels(self, j: int) -> tuple[torch.Tensor, int]:
        """Item j's image through the processor (the placeholder when missing or undecodable), and its status."""
        row = int(self.rows[j])
        status = IMAGE_OK
        try:
            img = self.images[row] if self.images is not None else None
            if img is None:
                status = IMAGE_MISSING
        except ImageDecodeError as e:
            log.debug("placeholder image for row %d: %s", row, e)
            img, status = None, IMAGE_FAILED
        return self.processor.image(img), status

    def _item(self, j: int, pixels: torch.Tensor, status: int) -> dict:
        item = {"input_ids": self.processor.text(self.prompts[j]), "pixel_values": pixels,
                "row": int(self.rows[j]), "image_status": status}
        for k, v in self.arrays.items():
            item[k] = v[j]
        return item


@functools.lru_cache(maxsize=None)
def _decode_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vlrb-decode")


class Collate:
    """Processor collation for the model inputs; everything else is stacked."""

    def __init__(self, processor: Processor):
        self.processor = processor

    def __call__(self, items: list[dict]) -> dict:
        batch = self.processor.collate(items)
        for k in items[0]:
            if k not in ("input_ids", "pixel_values"):
                batch[k] = torch.stack([torch.as_tensor(it[k]) for it in items])
        return batch


class ImageStats:
    """Which benchmark rows used the placeholder image, per stage ("train", "val", "predict")."""

    def __init__(self):
        self.missing: dict[str, set[int]] = {}
        self.failed: dict[str, set[int]] = {}
        self.seen: dict[str, set[int]] = {}
        self._reported: dict[str, tuple[int, int]] = {}

    def update(self, stage: str, batch: dict) -> None:
        if "image_status" not in batch:
            return
        status = batch["image_status"].detach().cpu().numpy()
        rows = batch["row"].detach().cpu().numpy()
        self.seen.setdefault(stage, set()).update(rows.tolist())
        self.missing.setdefault(stage, set()).update(rows[status == IMAGE_MISSING].tolist())
        self.failed.setdefault(stage, set()).update(rows[status == IMAGE_FAILED].tolist())

    def summary(self) -> dict[str, dict[str, int]]:
        return {s: {"samples": len(self.seen[s]), "no_image": len(self.missing.get(s, ())),
                    "decode_failed": len(self.failed.get(s, ()))} for s in sorted(self.seen)}

    def report(self, stage: str) -> None:
        """Log the stage's placeholder counts (once per change: repeated predictions do not repeat it)."""
        s = self.summary().get(stage)
        if not s or self._reported.get(stage) == (s["no_image"], s["decode_failed"]):
            return
        self._reported[stage] = (s["no_image"], s["decode_failed"])
        if s["no_image"] or s["decode_failed"]:
            log.warning("%s: %d of %d samples have no image and %d failed to decode; all use the mid-grey "
                        "placeholder image", stage, s["no_image"], s["samples"], s["decode_failed"])
