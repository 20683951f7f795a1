"""The multi-device extraction engine: Lightning's `Trainer.predict` (DDP over several GPUs, or CPU processes)
drives the batches; each is encoded by the same `BatchEncoder` as the single-process loop and written through the
same `ShardWriter`, one per rank (shard names carry the rank). Imported only on this path: `import lightning` takes
seconds. Module-level classes, so `ddp_spawn` can pickle them.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from vlrb.features.batches import BatchEncoder, make_loader
from vlrb.features.options import RunOptions
from vlrb.features.shards import ShardWriter
from vlrb.process import import_lightning

L = import_lightning()
from lightning.pytorch.callbacks import BasePredictionWriter  # noqa: E402


class EncoderPredictModule(L.LightningModule):
    """The encoder as a LightningModule: Lightning moves the batch to the device and autocasts the forward."""

    def __init__(self, encoder):
        super().__init__()
        self.enc = encoder
        self._encode: BatchEncoder | None = None

    def predict_step(self, batch, batch_idx):
        if self._encode is None or self._encode.device != self.device:
            self._encode = BatchEncoder(self.enc, self.device)  # no dtype: Lightning's precision plugin casts
        b = self._encode(batch)
        return b.rows, b.emb, b.status, b.errors


class ShardPredictionWriter(BasePredictionWriter):
    """Each rank writes its batches through its own `ShardWriter`."""

    def __init__(self, folder: Path, ids: list[str], shard_every: int):
        super().__init__(write_interval="batch")
        self.folder, self.ids, self.shard_every = Path(folder), ids, shard_every
        self.w: ShardWriter | None = None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if self.w is None:
            self.w = ShardWriter(self.folder, self.ids, self.shard_every, tag=f"-rank{trainer.global_rank}")
        self.w.add(*prediction)

    def on_predict_end(self, trainer, pl_module):
        if self.w is not None:
            self.w.flush()

    def on_exception(self, trainer, pl_module, exception):
        if self.w is not None:
            self.w.flush()


def run_lightning(encoder, mod: str, source, todo: list[int], ids: list[str], part: Path, opts: RunOptions,
                  device: torch.device, dtype, progress: bool) -> dict | None:
    """Several devices (or an explicit engine=lightning): Trainer.predict; each rank writes its own shards. The
    counts and timings on rank 0, None on the other ranks (rank 0 merges)."""
    if device.type == "cuda":
        accelerator = "gpu"
        precision = {torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed", None: "32-true"}[dtype]
    else:
        accelerator, precision = "cpu", ("bf16-mixed" if dtype == torch.bfloat16 else "32-true")
    strategy = opts.strategy if opts.devices > 1 else "auto"
    writer = ShardPredictionWriter(part, ids, opts.shard_every)
    trainer = L.Trainer(accelerator=accelerator, devices=opts.devices, strategy=strategy, precision=precision,
                        callbacks=[writer], logger=False, enable_progress_bar=progress, enable_checkpointing=False,
                        enable_model_summary=False, inference_mode=True)
    t0 = time.perf_counter()
    loader = make_loader(encoder, mod, source, todo, opts.batch_size, opts.num_workers, device)
    trainer.predict(EncoderPredictModule(encoder), dataloaders=loader, return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None
    return {"n_encoded": len(todo), "n_forwarded": 0, "wall_s": time.perf_counter() - t0, "forward_s": 0.0}
