"""Lightning glue shared by every trained network router (Linear, MLP, CosineCls, RouterDC, ZOOTER, VLC).

A network router = a `RoutingModule` (forward -> (B, K) logits, `loss(logits, batch)`) + `fit_module`,
which trains it with early stopping and checkpointing on `val/rank_score` (dev selects; test is never
seen here) and reloads the best weights. Batches are dicts with at least
    "targets": (B, K) soft labels, "Y": (B, K) correctness, "C": (B, K) costs
plus whatever the module's forward reads ("x" for features; "pixel_values", "input_ids", ... for raw).
"""
from __future__ import annotations

import functools
import math
import tempfile
import warnings
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vlrb.devices import device_precision
from vlrb.process import import_lightning
from vlrb.routers.losses import soft_cross_entropy
from vlrb.routing.metrics import rank_score

L = import_lightning()


@dataclass
class FitContext:
    """What a run hands a trainable router's `fit` besides the data (train.py builds it from config).

    trainer:     a Lightning Trainer factory: conf/trainer/<preset>.yaml instantiated as it is (a partial of
                 lightning.pytorch.Trainer with the preset's accelerator, devices, precision, ...); a plain dict of
                 Trainer keyword arguments is taken as such a partial (library use)
    callbacks:   {name: factory} from conf/callbacks/ (partials); `model_checkpoint(dirpath=)` and
                 `early_stopping(patience=)` are called per fit with a temporary folder and the router's patience,
                 the others with no argument. Default: `checkpoint_on_dev` and `early_stopping_on_dev`
    loggers:     Lightning loggers, already built (conf/logger/)
    num_workers: DataLoader worker processes for routers that decode images (auto: see
                 `vlrb.backbones.data.decode_workers`)
    """

    trainer: Any = field(default_factory=lambda: {"accelerator": "cpu", "devices": 1, "max_epochs": 10})
    callbacks: dict = field(default_factory=dict)
    loggers: list = field(default_factory=list)
    cost_bounds: dict | None = None
    beta: float = 0.1
    patience: int = 3
    num_workers: int | str = "auto"
    seed: int = 42
    progress: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.trainer, dict):  # keyword arguments given by hand: the factory they describe
            kw = {k: v for k, v in self.trainer.items() if not str(k).startswith("_")}
            if str(kw.get("precision", "auto")).lower() == "auto":
                kw["precision"] = device_precision(str(kw.get("accelerator", "auto")))
            self.trainer = functools.partial(L.Trainer, **kw)
        elif isinstance(self.trainer, functools.partial):  # a plain partial (Hydra's may be a subclass)
            self.trainer = functools.partial(self.trainer.func, *self.trainer.args, **self.trainer.keywords)

    def with_trainer(self, **settings: Any) -> "FitContext":
        """This context with some Trainer settings replaced (e.g. a router's own precision)."""
        t = self.trainer
        return dataclasses.replace(self, trainer=functools.partial(t.func, *t.args, **{**t.keywords, **settings}))

    def setting(self, key: str, default: Any = None) -> Any:
        """A Trainer setting of the preset (None/missing: `default`)."""
        value = getattr(self.trainer, "keywords", {}).get(key)
        return default if value is None else value

    def make_trainer(self, callbacks: list, **overrides):
        """A Lightning Trainer from the preset's factory, the given callbacks and the run's loggers; `overrides`
        (a fit's own settings) win over the preset's."""
        kw = {"enable_progress_bar": self.progress, "enable_model_summary": False, **overrides}
        return self.trainer(callbacks=callbacks, logger=self.loggers or False, **kw)

    def selection_callbacks(self, ckpt_dir: str, patience: int) -> tuple[list, object]:
        """[checkpoint, early stopping, extra callbacks] on val/rank_score, and the checkpoint callback."""
        factories = {k: v for k, v in dict(self.callbacks).items() if v is not None}
        ckpt = factories.pop("model_checkpoint", checkpoint_on_dev)(dirpath=ckpt_dir)
        stop = factories.pop("early_stopping", early_stopping_on_dev)(patience=patience)
        for c in (ckpt, stop):  # dev selects, test reports: nothing else may steer the choice
            if not str(c.monitor).startswith("val/"):
                raise ValueError(f"callbacks: {type(c).__name__} must monitor a val/* metric, not {c.monitor!r}")
        return [ckpt, stop, *(f() for f in factories.values())], ckpt


def checkpoint_on_dev(dirpath: str, monitor: str = "val/rank_score", mode: str = "max", filename: str = "best",
                      save_top_k: int = 1, save_weights_only: bool = True, **kw: Any):
    """The best epoch on dev, kept (weights only) in a folder of the fit's own (conf/callbacks/default.yaml)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(dirpath=dirpath, monitor=monitor, mode=mode, filename=filename, save_top_k=save_top_k,
                           save_weights_only=save_weights_only, enable_version_counter=False, **kw)


def early_stopping_on_dev(patience: int, monitor: str = "val/rank_score", mode: str = "max", min_delta: float = 1e-4,
                          **kw: Any):
    """Stop when dev's rank score has not improved for `patience` epochs (the router's own patience)."""
    from lightning.pytorch.callbacks import EarlyStopping

    return EarlyStopping(patience=patience, monitor=monitor, mode=mode, min_delta=min_delta, **kw)


class RoutingModule(L.LightningModule):
    """Base: subclasses define the network in __init__, `forward(batch) -> logits` and maybe `loss`."""

    def __init__(self, lr: float = 1e-3, weight_decay: float = 0.0, optimizer: str = "adam",
                 warmup_ratio: float = 0.0, grad_clip: float | None = None,
                 cmin: float = 1e-6, cmax: float = 1e-3, beta: float = 0.1):
        super().__init__()
        self.lr, self.weight_decay, self.optimizer_name = lr, weight_decay, optimizer
        self.warmup_ratio, self.grad_clip = warmup_ratio, grad_clip
        self.cmin, self.cmax, self.beta = cmin, cmax, beta
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # ------------------------------------------------------------ to override
    def forward(self, batch: dict) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """Soft cross-entropy −Σ t·log softmax(z) (= hard CE for one-hot targets)."""
        return soft_cross_entropy(logits, batch["targets"])

    # ------------------------------------------------------------ Lightning hooks
    def training_step(self, batch, batch_idx):
        logits = self(batch)
        loss = self.loss(logits, batch)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(logits),
                 sync_dist=self._distributed())
        return loss

    def validation_step(self, batch, batch_idx):
        choice = self(batch).argmax(1)
        rows = torch.arange(len(choice), device=choice.device)
        self._val.append((batch["Y"][rows, choice].float(), batch["C"][rows, choice].double(),
                          choice))

    def on_validation_epoch_end(self):
        if not self._val:
            return
        y = torch.cat([v[0] for v in self._val]).double()
        c = torch.cat([v[1] for v in self._val])
        self._val.clear()
        totals = torch.stack([y.sum(), c.sum(), torch.tensor(float(len(y)), dtype=torch.float64, device=y.device)])
        if self._distributed():  # each process saw its shard of dev: the score is of the whole dev split
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        acc, cost = float(totals[0] / totals[2]), float(totals[1] / totals[2])
        self.log_dict({"val/accuracy": acc, "val/avg_cost": cost,
                       "val/rank_score": float(rank_score(acc, cost, self.cmin, self.cmax, self.beta))},
                      prog_bar=True, sync_dist=self._distributed())  # equal on every process already

    def _distributed(self) -> bool:
        return self._trainer is not None and self.trainer.world_size > 1

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_name == "adamw":
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return with_warmup(opt, self, self.warmup_ratio)


def with_warmup(opt, module: L.LightningModule, warmup_ratio: float):
    """Linear warm-up over the first `warmup_ratio` of all steps, then linear decay to 0 (the BERT schedule)."""
    if not warmup_ratio:
        return opt
    total = max(1, int(module.trainer.estimated_stepping_batches))  # only read when attached to a Trainer
    warm = max(1, int(warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class DictDataset(torch.utils.data.Dataset):
    """Rows of equally long arrays, served as dicts of tensors."""

    def __init__(self, **arrays):
        n = {len(v) for v in arrays.values()}
        if len(n) != 1:
            raise ValueError(f"arrays of different lengths: { {k: len(v) for k, v in arrays.items()} }")
        self.arrays = {k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()}
        self.n = n.pop()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.arrays.items()}


class TensorBatches:
    """Whole-tensor minibatches without per-item collation: ~100x faster than a DataLoader for features."""

    def __init__(self, ds: DictDataset, batch_size: int, shuffle: bool, seed: int = 0):
        self.ds, self.bs, self.shuffle = ds, batch_size, shuffle
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self):
        return math.ceil(len(self.ds) / self.bs)

    def __iter__(self):
        idx = torch.randperm(len(self.ds), generator=self.gen) if self.shuffle else torch.arange(len(self.ds))
        for s in range(0, len(idx), self.bs):
            j = idx[s:s + self.bs]
            yield {k: v[j] for k, v in self.ds.arrays.items()}


def make_loader(ds, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0, pin_memory: bool = False,
                collate_fn: Callable | None = None, distributed: bool = False):
    """Minibatches of `ds` for fitting or predicting.

    A `DictDataset` (features) is sliced as whole tensors (`TensorBatches`), unless the trainer may be
    `distributed`: Lightning then shards a DataLoader per rank with a DistributedSampler (it cannot shard
    TensorBatches, so every rank would see every sample). Anything else (raw prompts and images, with their
    `collate_fn`) goes through a DataLoader. Shuffling draws from its own generator seeded with `seed`.
    """
    if isinstance(ds, DictDataset) and not distributed:
        return TensorBatches(ds, batch_size, shuffle=shuffle, seed=seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                                       collate_fn=collate_fn, persistent_workers=num_workers > 0 and shuffle,
                                       pin_memory=pin_memory,
                                       generator=torch.Generator().manual_seed(seed) if shuffle else None)


def train_module(module: RoutingModule, train_loader, val_loader, ctx: FitContext, *, max_epochs: int,
                 patience: int | None = None) -> dict:
    """Fit `module` in place and return what to report about it: with a dev loader, early stopping on
    val/rank_score and the best epoch's weights (`fit_module`); without one, nothing to select on, so the
    full epoch budget and the last weights (`fit_without_dev`)."""
    if val_loader is None:
        return fit_without_dev(module, train_loader, ctx, max_epochs)
    fit_module(module, train_loader, val_loader, ctx, max_epochs=max_epochs, patience=patience)
    return dict(module.fit_info)


def _ignore_upstream_deprecations() -> None:
    """Lightning's own use of a torch API torch deprecates (utilities/_pytree.py): a line per fit that the user
    can do nothing about."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def fit_module(module: RoutingModule, train_loader, val_loader, ctx: FitContext, *, max_epochs: int | None = None,
               patience: int | None = None) -> RoutingModule:
    """Train with early stopping + checkpointing on val/rank_score; return the module with the best weights.

    The checkpoint lives in a temporary folder only until the best weights are reloaded: a run stores its
    weights once, in the saved router (router/weights.pt)."""

    if ctx.cost_bounds:
        module.cmin, module.cmax = float(ctx.cost_bounds["cmin"]), float(ctx.cost_bounds["cmax"])
    module.beta = ctx.beta
    kw: dict[str, Any] = {"num_sanity_val_steps": 0}
    if ctx.setting("max_epochs") is None:  # the trainer preset (e.g. debug=fast) wins over the router's own
        kw["max_epochs"] = max_epochs if max_epochs is not None else 10
    if module.grad_clip and ctx.setting("gradient_clip_val") is None:
        kw["gradient_clip_val"] = module.grad_clip
    with tempfile.TemporaryDirectory(prefix="vlrb-ckpt-") as tmp:
        callbacks, ckpt = ctx.selection_callbacks(tmp, ctx.patience if patience is None else patience)
        trainer = ctx.make_trainer(callbacks, default_root_dir=tmp, **kw)
        with warnings.catch_warnings():
            _ignore_upstream_deprecations()
            trainer.fit(module, train_loader, val_loader)
        best = ckpt.best_model_path
        state = None
        if trainer.is_global_zero and best and Path(best).exists():
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        if trainer.world_size > 1:  # DDP: rank 0 wrote the checkpoint; every process continues with its weights
            state = trainer.strategy.broadcast(state, src=0)
        if state is not None:
            module.load_state_dict(state)
    score = ckpt.best_model_score  # a tensor; 0.0 is a valid best score, so test for None explicitly
    module.fit_info = {"epochs": trainer.current_epoch,
                       "best_val_rank_score": float("nan") if score is None else float(score)}
    return module


def fit_without_dev(module: RoutingModule, train_loader, ctx: FitContext, max_epochs: int) -> dict:
    """No dev split: nothing to select on, so train the full epoch budget and keep the last weights."""

    kw: dict[str, Any] = {"limit_val_batches": 0, "enable_checkpointing": False}
    if ctx.setting("max_epochs") is None:
        kw["max_epochs"] = max_epochs
    if module.grad_clip and ctx.setting("gradient_clip_val") is None:
        kw["gradient_clip_val"] = module.grad_clip
    with tempfile.TemporaryDirectory(prefix="vlrb-fit-") as tmp:
        trainer = ctx.make_trainer([], default_root_dir=tmp, **kw)
        with warnings.catch_warnings():  # "validation_step but no val_dataloader": intended here
            warnings.filterwarnings("ignore", message=".*val_dataloader.*")
            _ignore_upstream_deprecations()
            trainer.fit(module, train_loader)
    return {"epochs": trainer.current_epoch, "best_val_rank_score": None}  # nothing was validated
