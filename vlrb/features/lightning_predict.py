"""Lightning pieces of multi-device extraction (imported only on that path: `import lightning` takes seconds).

Module-level classes, so `ddp_spawn` can pickle them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vlrb.features.extract import ShardWriter, _shard_prefix
from vlrb.process import import_lightning

L = import_lightning()
from lightning.pytorch.callbacks import BasePredictionWriter  # noqa: E402


class EncoderPredictModule(L.LightningModule):
    def __init__(self, encoder):
        super().__init__()
        self.enc = encoder

    def predict_step(self, batch, batch_idx):
        rows, status, errors, inputs, ok = batch
        emb = np.zeros((len(rows), self.enc.dim), np.float32)
        if inputs is not None:
            emb[ok] = self.enc(inputs).float().cpu().numpy()
        return rows, emb, status, errors


class ShardPredictionWriter(BasePredictionWriter):
    """Each rank buffers its batches and writes its own shard files (names carry the rank)."""

    def __init__(self, folder: Path, dim: int, ids: list[str], shard_every: int):
        super().__init__(write_interval="batch")
        self.folder, self.dim, self.ids, self.shard_every = Path(folder), dim, ids, shard_every
        self.w = None
        self.n_batches = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if self.w is None:
            self.w = ShardWriter(self.folder, self.dim, prefix=_shard_prefix(f"-rank{trainer.global_rank}"))
        rows, emb, status, errors = prediction
        self.w.add([self.ids[i] for i in rows], emb, status, errors)
        self.n_batches += 1
        if self.n_batches % self.shard_every == 0:
            self.w.flush()

    def on_predict_end(self, trainer, pl_module):
        if self.w is not None:
            self.w.flush()

    def on_exception(self, trainer, pl_module, exception):
        if self.w is not None:
            self.w.flush()
