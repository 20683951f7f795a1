"""The shared machinery of the end-to-end routers (vlrb/routers/e2e.py): fit, predict, save and load of a
multimodal backbone with a routing head over the K models.

Training (shared `vlrb.routers.lit.fit_module`): AdamW (weight decay 0.01) at `lr` for the pretrained backbone
and `head_lr` (1e-3) for the randomly initialised head, fusion and projections (upstream used one rate, 5e-5,
for everything: `head_lr: null`), linear warm-up over 10% of the steps then linear decay, gradient clipping
1.0, at most 5 epochs, batch 16, early stopping on dev `val/rank_score` (patience 2) with the best epoch's
weights restored; bf16 mixed precision on a GPU unless the trainer or router config says otherwise (on a CPU
with native bf16 matmuls, Intel AMX, `router.precision=bf16-mixed` fits about 1.1x faster than fp32); routing
runs under the autocast the router trained with. Inputs are read
lazily from the benchmark the splits come from (`split.source`): prompts, and images decoded in DataLoader
workers. `fit(train, dev, ctx)` takes the run's trainer, loggers and `num_workers` from `ctx`.
"""
from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vlrb.data.benchmark import Requests, Split
from vlrb.routers.base import (WEIGHTS_FILE, Router, read_router_meta, require, restore_common,
                               router_from_meta, weights_file, write_router_meta)
from vlrb.routing.soft_labels import label_diagnostics, parse_lambda, soft_labels

if TYPE_CHECKING:  # torch, Lightning and the backbones load on first fit/load, not at import
    import torch

    from vlrb.backbones import Backbone
    from vlrb.routers.e2e_modules import E2EModule
    from vlrb.routers.lit import FitContext


class E2ERouter(Router):
    """Shared fit / predict / save / load of the end-to-end routers; subclasses add the head and labels.

    Parameters (every router): backbone (the factory `conf/backbone/<name>.yaml` instantiates to, or a Backbone;
    None: the offline default), backbone_params (overrides), lam (λ ≥ 0 or "inf"), cost_scale (s, 100 upstream), lr (the pretrained backbone), head_lr (the randomly initialised head, fusion and projections;
    None = lr, i.e. one rate for everything as upstream — the default 1e-3 lets a new head learn within a few
    epochs of a small benchmark), weight_decay, warmup_ratio, grad_clip, max_epochs, batch_size, patience (dev epochs
    without improvement), dropout, predict_batch_size (default 4 × batch_size, as upstream), precision
    ("auto": bf16-mixed on a GPU, fp32 on CPU, unless ctx.trainer sets `precision`), seed.
    """

    inputs: ClassVar[tuple[str, ...]] = ("raw",)
    trainable: ClassVar[bool] = True
    uses_lambda: ClassVar[bool] = True
    drop_no_correct: ClassVar[bool] = True

    def __init__(self, backbone: Any = None, backbone_params: dict | None = None, lam: float | str = 10000.0,
                 cost_scale: float = 100.0, lr: float = 5e-5, head_lr: float | None = 1e-3,
                 weight_decay: float = 0.01, warmup_ratio: float = 0.1,
                 grad_clip: float | None = 1.0, max_epochs: int = 5, batch_size: int = 16, patience: int | None = 2,
                 dropout: float = 0.1, predict_batch_size: int | None = None, precision: str = "auto",
                 seed: int = 42):
        super().__init__()
        # a factory (the partial conf/backbone/<name>.yaml makes; None: the offline default) or a ready Backbone;
        # a name or {name, params} mapping in routers saved by the first versions
        if backbone is None:
            from vlrb.backbones.offline import OfflineBackbone

            backbone = functools.partial(OfflineBackbone)
        self.backbone = _plain(backbone) if _is_mapping(backbone) else backbone
        self.backbone_params = _plain(backbone_params)
        parse_lambda(lam)  # validate early
        self.lam, self.cost_scale = lam, float(cost_scale)
        self.lr, self.weight_decay, self.warmup_ratio, self.grad_clip = float(lr), float(weight_decay), \
            float(warmup_ratio), grad_clip
        self.head_lr = None if head_lr is None else float(head_lr)
        self.max_epochs, self.batch_size = int(max_epochs), int(batch_size)
        self.patience = None if patience is None else int(patience)
        self.dropout, self.predict_batch_size, self.precision, self.seed = float(dropout), predict_batch_size, \
            precision, int(seed)
        self.module: E2EModule | None = None

    # ------------------------------------------------------------------ to implement
    def _head_module(self, backbone: Backbone, n_models: int, opt: dict) -> E2EModule:  # pragma: no cover
        raise NotImplementedError

    def _train_targets(self, train: Split, targets: np.ndarray, keep: np.ndarray) -> dict[str, np.ndarray]:
        """Per-row arrays of the kept training rows; at least "targets"."""
        return {"targets": targets[keep]}

    # ------------------------------------------------------------------ fit / predict
    def fit(self, train: Split, dev: Split | None = None, ctx: FitContext | None = None) -> "E2ERouter":
        from vlrb.process import import_lightning

        L = import_lightning()

        from vlrb.backbones.data import Collate, RawDataset
        from vlrb.routers.lit import make_loader

        t0 = time.perf_counter()
        bench = self._require_bench(train, *([dev] if dev is not None else []))
        self._remember_models(train)
        L.seed_everything(self.seed, workers=True, verbose=False)

        targets = soft_labels(train.Y, train.C, self.lam, cost_scale=self.cost_scale)
        keep = self._training_rows(train, self.drop_no_correct)
        arrays = self._train_targets(train, targets, keep)
        self.module = self._build_module()
        proc = self.module.backbone.processor
        prompts, images = bench.prompts, bench.images
        train_ds = RawDataset(prompts, images, train.idx[keep], proc, Y=train.Y[keep], C=train.C[keep], **arrays)

        ctx = self._context(ctx, bench)
        loader_kw = dict(num_workers=int(ctx.num_workers), pin_memory=self._device(ctx).type == "cuda",
                         collate_fn=Collate(proc))
        train_loader = make_loader(train_ds, self.batch_size, shuffle=True, seed=self.seed, **loader_kw)
        dev_loader = None
        if dev is not None and len(dev):  # dev only steers early stopping / checkpoint choice; never filtered
            dev_ds = RawDataset(prompts, images, dev.idx, proc, Y=dev.Y, C=dev.C)
            dev_loader = make_loader(dev_ds, self._predict_bs(), shuffle=False, **loader_kw)
        with warnings.catch_warnings():  # frozen towers stay in eval mode on purpose (Backbone.train)
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
            info = self._train(train_loader, dev_loader, ctx)
        self.module.cpu().eval()
        if getattr(self.module.backbone, "cache", None) is not None:
            self.module.backbone.cache.clear()  # a training-time aid only (see predict_scores)
        stats = self.module.image_stats
        stats.report("train")
        self.fit_info = {
            **info, "n_train": int(keep.sum()), "n_dropped_no_correct": int((~keep).sum()),
            "images": _flat(stats.summary()),  # <stage>_{samples,no_image,decode_failed}: placeholder counts
            "label_diagnostics": label_diagnostics(arrays["targets"], train.Y[keep], train.C[keep]),
            "backbone": self.module.backbone.describe(), "precision": str(ctx.setting("precision")),
            **self._extra_info(),
            "fit_seconds": time.perf_counter() - t0,
        }
        return self

    def _train(self, train_loader, dev_loader, ctx: FitContext) -> dict:
        """Lightning fit: early stopping + best-epoch reload on dev, or the full budget without dev."""
        from vlrb.routers.lit import train_module

        # trainer.max_epochs (e.g. debug=fast) overrides the router's own budget; null keeps it
        max_epochs = ctx.setting("max_epochs") or self.max_epochs
        patience = self.patience if self.patience is not None else ctx.patience
        return train_module(self.module, train_loader, dev_loader, ctx, max_epochs=max_epochs, patience=patience)

    def predict_scores(self, split: Requests, ctx: FitContext | None = None) -> np.ndarray:
        """(n, K) logits (float32) of the split's rows (prompts and images of `split.source`)."""
        bench = self._require_bench(split)
        return self.predict_raw(bench.prompts, bench.images, split.idx, ctx=ctx, stage=f"predict_{split.name}")

    def predict_raw(self, prompts, images, rows=None, *, ctx: FitContext | None = None,
                    stage: str = "predict") -> np.ndarray:
        """(n, K) logits for rows `rows` (default: all) of `prompts` and `images` (anything indexable that gives a
        PIL image or None per row: a Benchmark's image loader, or `vlrb.data.images.ImageList` of raw inputs)."""
        import torch

        from vlrb.backbones.data import Collate, RawDataset
        from vlrb.routers.lit import make_loader

        if self.module is None:
            raise RuntimeError(f"{self.label}: call fit() (or load()) before predict_scores()")
        rows = np.arange(len(prompts)) if rows is None else np.asarray(rows)
        ctx = self._context(ctx)
        device = self._device(ctx)
        module = self.module.eval().to(device)
        # batches of similar prompt lengths pad little; the scores go back to the caller's order at the end
        order = np.argsort([-len(str(prompts[i] or "")) for i in rows], kind="stable")
        ds = RawDataset(prompts, images, rows[order], module.backbone.processor)
        loader = make_loader(ds, self._predict_bs(), shuffle=False, num_workers=int(ctx.num_workers),
                             pin_memory=device.type == "cuda", collate_fn=Collate(ds.processor))
        out = []
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                    enabled=self._bf16(ctx, device)), module.backbone.inference():
            for batch in loader:
                module.image_stats.update(stage, batch)
                # without its rows a batch bypasses the training-time frozen-prefix cache: routing a request
                # is always computed in full (honest throughput, no memory growth)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()
                         if k not in ("row", "image_status")}
                out.append(module(batch).float().cpu())
        module.image_stats.report(stage)
        self.fit_info.setdefault("images", {}).update(_flat({stage: module.image_stats.summary().get(stage, {})}))
        if not out:
            return np.zeros((0, self.n_models), dtype=np.float32)
        scores = np.empty((len(rows), self.n_models), dtype=np.float32)
        scores[order] = torch.cat(out).numpy()
        return scores

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """router.json (name, params, models, fit_info) + weights.safetensors (the state_dict, backbone included)."""
        from vlrb.state_files import save_torch_state

        if self.module is None:
            raise RuntimeError(f"{self.label}: nothing to save before fit()")
        if not isinstance(self.backbone, (str, dict, functools.partial)):
            raise ValueError("save(): give the backbone by name, {name, params} or its conf/backbone factory, "
                             "not as a built object")
        path = write_router_meta(self, Path(path))
        save_torch_state(path / WEIGHTS_FILE, self.module.state_dict())

    @classmethod
    def load(cls, path: str | Path) -> "E2ERouter":
        """Rebuild from `save()`: parameters checked (router_from_meta), the weights file's shapes checked against the
        built network before its values are read, NaN refused."""
        from vlrb.state_files import load_torch_state

        meta = read_router_meta(Path(path))
        router = router_from_meta(meta, cls)
        restore_common(router, meta)
        router.module = router._build_module()
        shapes = {k: tuple(v.shape) for k, v in router.module.state_dict().items()}
        state = load_torch_state(weights_file(Path(path)), expect=shapes)
        require(set(state) == set(shapes), meta, "the weights do not hold exactly the network's parameters "
                f"({len(state)} tensors for {len(shapes)})")
        router.module.load_state_dict(state)
        router.module.eval()
        return router

    def init_module(self, models: list[str]) -> E2EModule:
        """Build the untrained network for `models` (what fit starts from): throughput checks, inspection."""
        self.models, self.n_models = list(models), len(models)
        self.module = self._build_module()
        return self.module

    # ------------------------------------------------------------------ helpers
    def _build_module(self) -> E2EModule:
        import torch

        from vlrb.backbones import build_backbone

        torch.manual_seed(self.seed)
        params = dict(self.backbone_params)
        given = self.backbone.get("params") or {} if isinstance(self.backbone, dict) else {}
        if isinstance(self.backbone, (str, dict)) and "seed" not in params and "seed" not in given:
            params["seed"] = self.seed  # the router's seed also fixes the backbone's random parts
        backbone = build_backbone(self.backbone, **params)
        opt = dict(lr=self.lr, head_lr=self.head_lr, weight_decay=self.weight_decay, warmup_ratio=self.warmup_ratio,
                   grad_clip=self.grad_clip)
        return self._head_module(backbone, int(self.n_models), opt)

    def _extra_info(self) -> dict:
        return {}

    def _predict_bs(self) -> int:
        return int(self.predict_batch_size or 4 * self.batch_size)

    def _require_bench(self, *splits: Split):
        """The benchmark whose prompts and images the splits' rows index (one for all of them)."""
        sources = {id(s.source): s.source for s in splits}
        if any(b is None for b in sources.values()) or len(sources) != 1:
            raise RuntimeError(f"{self.name}: end-to-end routers read prompts and images: give splits made by "
                               "`Benchmark.split(...)` of one benchmark (split.source)")
        bench = next(iter(sources.values()))
        n = bench.n_samples
        for s in splits:
            if len(s.idx) and (s.idx.min() < 0 or s.idx.max() >= n):
                raise ValueError(f"{self.name}: split {s.name!r} indexes rows beyond the benchmark's {n}")
        return bench

    def _context(self, ctx: FitContext | None, bench=None) -> FitContext:
        """The run's ctx, or a standalone one (any GPU, no logger, the benchmark's cost bounds); the trainer's
        precision resolved (bf16-mixed on a GPU when `precision: auto` and the trainer config sets none) and
        `num_workers: auto` (`vlrb.backbones.data.decode_workers`)."""
        from vlrb.routers.lit import FitContext

        ctx = ctx or FitContext(trainer={"accelerator": "auto", "devices": 1}, seed=self.seed)
        if ctx.cost_bounds is None and bench is not None:
            ctx = dataclasses.replace(ctx, cost_bounds=bench.cost_bounds)
        if str(self.precision).lower() != "auto":  # the router's own precision wins over the preset's
            ctx = ctx.with_trainer(precision=self.precision)
        from vlrb.backbones.data import decode_workers

        return dataclasses.replace(ctx, num_workers=decode_workers(ctx.num_workers, self._device(ctx)))

    @staticmethod
    def _device(ctx: FitContext) -> torch.device:
        import torch

        acc = str(ctx.setting("accelerator", "auto")).lower()
        if acc == "cpu" or not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda")

    @staticmethod
    def _bf16(ctx: FitContext, device: torch.device) -> bool:
        """Route under bf16 autocast where training ran so: a GPU by default, a CPU when given bf16-mixed."""
        return "bf16" in str(ctx.setting("precision", "bf16" if device.type == "cuda" else "32"))


# ============================================================================================ helpers
def _flat(summary: dict[str, dict[str, int]]) -> dict[str, int]:
    """{stage: {k: n}} -> {"<stage>_<k>": n}: one level, as train.py flattens fit_info into metrics."""
    return {f"{stage}_{k}": v for stage, d in summary.items() for k, v in d.items()}


def _is_mapping(x: Any) -> bool:
    return isinstance(x, Mapping)  # configs reach routers as plain containers (the jobs convert them)


def _plain(cfg: Any) -> dict:
    from vlrb.features.sections import as_dict

    return as_dict(cfg)
