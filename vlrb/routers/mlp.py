"""Linear and MLP routers (docs/routers.md#feature-level-routers): networks on frozen features, trained with
Lightning on the shared accuracy–cost soft labels (docs/method.md#soft-labels) and early-stopped on dev
`val/rank_score`.

    logits = net(x);  loss = −Σ_m t(m)·log softmax(logits)_m   (t: soft labels; one-hot at λ = ∞ → hard CE)

* `linear` — `nn.Linear(D, K)`, full-batch Adam (lr 0.01) with the penalty (1/(2C))·‖θ‖², C = 1, bias
  included; soft labels with cost scale 1.0 (upstream's Linear label builder passed none).
* `mlp`    — D → 2048 → 1024 → K with ReLU, no dropout; Adam lr 1e-3, weight decay 1e-4, batch
  min(1024, N); cost scale 100.

Training samples that no model answers are dropped (upstream); dev is never filtered. Both use K outputs,
one per model column, also with hard labels (upstream's Linear used len(unique(labels)): docs/routers.md#quirks).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

from vlrb.data.benchmark import Requests, Split, compute_cost_bounds
from vlrb.routers.base import (WEIGHTS_FILE, Router, read_router_meta, require, restore_common,
                               router_from_meta, weights_file, write_router_meta)
from vlrb.routing.soft_labels import SCHEMES, label_diagnostics, parse_lambda, soft_labels

if TYPE_CHECKING:  # torch/Lightning are imported on first fit/load, not at registry time
    from vlrb.routers.lit import FitContext, RoutingModule

VAL_BATCH = 8192  # dev scoring batch: large, it is inference only
PREDICT_CHUNK = 65536  # rows per forward pass at prediction time (bounds the MLP's activations)


# ------------------------------------------------------------------------------------------ modules
@functools.cache
def _nets() -> dict[str, type]:
    """The Lightning modules, defined on first use.

    Importing torch + Lightning costs several seconds of a cold start, which `import vlrb.routers` (the
    baselines, evaluate.py) should not pay just to fill the registry; `mlp.MLPModule` etc. still work.
    """
    from torch import nn

    from vlrb.routers.losses import soft_cross_entropy
    from vlrb.routers.lit import RoutingModule

    class FeatureNet(RoutingModule):
        """A RoutingModule whose forward is `self.net(batch["x"])`; `net` is a plain nn.Module for fast routing."""

        net: nn.Module

        def forward(self, batch: dict):
            return self.net(batch["x"])

    class LinearModule(FeatureNet):
        """Multinomial logistic regression with upstream's explicit L2 term (1/(2C))·Σ‖θ‖² (bias included)."""

        def __init__(self, in_dim: int, n_models: int, l2_C: float = 1.0, **kw: Any) -> None:
            super().__init__(**kw)
            self.net = nn.Linear(in_dim, n_models)
            self.l2_C = l2_C

        def loss(self, logits, batch: dict):
            ce = soft_cross_entropy(logits, batch["targets"])
            if not self.l2_C:
                return ce
            return ce + sum(p.pow(2).sum() for p in self.net.parameters()) / (2.0 * self.l2_C)

    class MLPModule(FeatureNet):
        """D → hidden… → K, ReLU between layers, no dropout (upstream MLPR)."""

        def __init__(self, in_dim: int, n_models: int, hidden_sizes: Sequence[int] = (2048, 1024), **kw: Any) -> None:
            super().__init__(**kw)
            layers: list[nn.Module] = []
            prev = in_dim
            for h in hidden_sizes:
                layers += [nn.Linear(prev, int(h)), nn.ReLU()]
                prev = int(h)
            layers.append(nn.Linear(prev, n_models))
            self.net = nn.Sequential(*layers)

    return {c.__name__: c for c in (FeatureNet, LinearModule, MLPModule)}


def __getattr__(name: str) -> type:  # PEP 562: `from vlrb.routers.mlp import MLPModule` builds it lazily
    if name in ("FeatureNet", "LinearModule", "MLPModule"):
        return _nets()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------------------------ routers
class NetRouter(Router):
    """Shared fit/predict/save for feature networks; subclasses say which module and its arguments."""

    inputs = ("features",)
    trainable = True
    uses_lambda = True
    module_name: ClassVar[str]  # a key of _nets()

    def __init__(self, lam: float | str = 1000.0, cost_scale: float = 100.0, scheme: str = "exp",
                 lr: float = 1e-3, weight_decay: float = 0.0, batch_size: int | None = 1024,
                 max_epochs: int = 300, patience: int | None = 3, drop_no_correct: bool = True,
                 seed: int = 42) -> None:
        super().__init__()
        parse_lambda(lam)  # fail fast on a bad λ; the value is kept as given (for logging and saving)
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        self.lam, self.cost_scale, self.scheme = lam, float(cost_scale), scheme
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.max_epochs, self.patience = int(max_epochs), None if patience is None else int(patience)
        self.drop_no_correct, self.seed = bool(drop_no_correct), int(seed)
        self.module_: RoutingModule | None = None

    # ------------------------------------------------------------ what subclasses provide
    def module_kwargs(self) -> dict[str, Any]:
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def make_module(self, in_dim: int, n_models: int) -> "RoutingModule":
        return _nets()[self.module_name](in_dim, n_models, **self.module_kwargs())

    # ------------------------------------------------------------ training
    def training_rows(self, split: Split) -> np.ndarray:
        """Boolean mask of the training rows used (those with a correct model, unless drop_no_correct=False)."""
        return self._training_rows(split, self.drop_no_correct)

    def targets(self, Y: np.ndarray, C: np.ndarray) -> np.ndarray:
        """The soft labels of rows (Y, C) (docs/method.md; one-hot on the cheapest correct model at λ = ∞)."""
        return soft_labels(Y, C, self.lam, cost_scale=self.cost_scale, scheme=self.scheme, fallback="cheapest")

    def _context(self, ctx: "FitContext | None", train: Split) -> "FitContext":
        from vlrb.routers.lit import FitContext

        if ctx is None:  # standalone use: CPU, no logger, cost bounds of the training split
            ctx = FitContext(trainer={"accelerator": "cpu", "devices": 1}, seed=self.seed)
        if ctx.cost_bounds is None:
            ctx = dataclasses.replace(ctx, cost_bounds=compute_cost_bounds(train.C, train.models or
                                                                           [str(j) for j in range(train.Y.shape[1])]))
        return ctx

    def fit(self, train: Split, dev: Split | None = None, ctx: "FitContext | None" = None) -> "NetRouter":
        import torch

        from vlrb.routers.lit import DictDataset, make_loader, train_module

        t0 = time.perf_counter()
        self._remember_models(train)
        ctx = self._context(ctx, train)
        keep = self.training_rows(train)
        X = self._features(train)[keep]
        Y, C = np.asarray(train.Y)[keep], np.asarray(train.C)[keep]
        t = self.targets(Y, C)
        diag = label_diagnostics(t, Y, C)

        with torch.random.fork_rng():  # deterministic init without touching the caller's RNG state
            torch.manual_seed(self.seed)
            module = self.make_module(X.shape[1], Y.shape[1])
        train_ds = DictDataset(x=X, targets=t)
        bs = len(train_ds) if self.batch_size is None else min(self.batch_size, len(train_ds))
        # features are tensors in memory: worker processes would only copy them (num_workers is for decoding)
        loader_kw = dict(seed=self.seed, num_workers=0, distributed=is_distributed(ctx.trainer.keywords))
        train_loader = make_loader(train_ds, bs, shuffle=True, **loader_kw)
        val_loader = None
        if dev is not None and len(dev):
            # dev only steers early stopping / checkpoint choice; it is never filtered (docs/method.md#soft-labels)
            val_ds = DictDataset(x=self._features(dev), Y=np.asarray(dev.Y), C=np.asarray(dev.C))
            val_loader = make_loader(val_ds, VAL_BATCH, shuffle=False, **loader_kw)
        # trainer.max_epochs (e.g. debug=fast) overrides the router's own budget; null keeps it
        max_epochs = ctx.setting("max_epochs") or self.max_epochs
        patience = self.patience if self.patience is not None else ctx.patience
        info = train_module(module, train_loader, val_loader, ctx, max_epochs=max_epochs, patience=patience)
        self._set_module(module)
        self.in_dim_ = int(X.shape[1])
        self.fit_info = {**info, "n_train": int(keep.sum()), "n_dropped_no_correct": int((~keep).sum()),
                         "label_diagnostics": diag, "fit_seconds": time.perf_counter() - t0}
        return self

    # ------------------------------------------------------------ routing
    def _set_module(self, module: "RoutingModule") -> None:
        """Keep the trained module and an inference copy of its layers: (W^T contiguous, b) per Linear.

        torch.addmm(b, x, W^T) with a pre-transposed weight is ~5x faster than nn.Linear's x·W^T for a
        16-row batch on CPU (the small transposed GEMM takes a slow path), and no slower at 1,024 rows.
        """
        from torch import nn

        self.module_ = module.cpu().eval()
        self._layers = [(m.weight.detach().t().contiguous(), m.bias.detach().clone())
                        for m in self.module_.net.modules() if isinstance(m, nn.Linear)]

    def _forward_fast(self, x):
        """The net's function (Linear layers with ReLU between them) through the inference layers."""
        import torch

        last = len(self._layers) - 1
        for i, (wt, b) in enumerate(self._layers):
            x = torch.addmm(b, x, wt)
            if i < last:
                x.relu_()
        return x

    def predict_scores(self, split: Requests) -> np.ndarray:
        """(n, K) float32 logits, computed on CPU in large chunks with no autograd bookkeeping."""
        import torch

        self._check_inputs(split)
        if self.module_ is None:
            raise RuntimeError(f"{self.label}: call fit() before predict_scores()")
        X = torch.from_numpy(self._features(split))  # zero-copy view of the float32 features
        with torch.inference_mode():
            if len(X) <= PREDICT_CHUNK:
                return self._forward_fast(X).numpy()
            return torch.cat([self._forward_fast(X[s:s + PREDICT_CHUNK])
                              for s in range(0, len(X), PREDICT_CHUNK)]).numpy()

    # ------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        """router.json (params, in_dim, models, fit_info) + weights.safetensors (the module's state_dict)."""
        if self.module_ is None:
            raise RuntimeError(f"{self.label}: nothing to save before fit()")
        from vlrb.state_files import save_torch_state

        path = write_router_meta(self, path, in_dim=self.in_dim_)
        save_torch_state(Path(path) / WEIGHTS_FILE, self.module_.state_dict())

    @classmethod
    def load(cls, path: Path) -> "NetRouter":
        """The network's shapes (from router.json's in_dim and parameters, computed on torch's meta device: nothing
        allocated) are checked against the weights file's header before the network is built and the weights read."""
        import torch

        from vlrb.state_files import load_torch_state

        meta = read_router_meta(path)
        router = router_from_meta(meta, cls)
        restore_common(router, meta)
        in_dim = meta.get("in_dim")
        require(isinstance(in_dim, int) and not isinstance(in_dim, bool) and in_dim > 0, meta,
                f"router.json's in_dim must be a positive whole number, got {in_dim!r}")
        router.in_dim_ = in_dim
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in router.make_module(in_dim, router.n_models).state_dict().items()}
        state = load_torch_state(weights_file(Path(path)), expect=shapes)
        require(set(state) == set(shapes), meta, f"the weights hold {sorted(state)}, the network {sorted(shapes)}")
        module = router.make_module(router.in_dim_, router.n_models)
        module.load_state_dict(state)
        router._set_module(module)
        return router


def is_distributed(trainer: dict) -> bool:
    """Whether the trainer preset may run several processes (DDP), whose data must be sharded per rank."""
    devices = trainer.get("devices", 1)
    many = devices in (-1, "-1", "auto") or (isinstance(devices, (list, tuple)) and len(devices) > 1) or (
        str(devices).isdigit() and int(devices) > 1)
    return "ddp" in str(trainer.get("strategy") or "") or int(trainer.get("num_nodes") or 1) > 1 or many


class LinearRouter(NetRouter):
    """Multinomial logistic regression on soft labels (cost scale 1.0, full-batch Adam, explicit L2)."""

    name = "linear"
    module_name = "LinearModule"

    def __init__(self, lam: float | str = 1000.0, cost_scale: float = 1.0, scheme: str = "exp", lr: float = 0.01,
                 l2_C: float = 1.0, batch_size: int | None = None, max_epochs: int = 200, patience: int | None = 3,
                 drop_no_correct: bool = True, seed: int = 42) -> None:
        super().__init__(lam=lam, cost_scale=cost_scale, scheme=scheme, lr=lr, weight_decay=0.0,
                         batch_size=batch_size, max_epochs=max_epochs, patience=patience,
                         drop_no_correct=drop_no_correct, seed=seed)
        self.l2_C = float(l2_C)

    def module_kwargs(self) -> dict[str, Any]:
        return {"lr": self.lr, "weight_decay": 0.0, "l2_C": self.l2_C}


class MLPRouter(NetRouter):
    """D → 2048 → 1024 → K ReLU network on soft labels (cost scale 100, Adam + weight decay, batch 1024)."""

    name = "mlp"
    module_name = "MLPModule"

    def __init__(self, lam: float | str = 1000.0, cost_scale: float = 100.0, scheme: str = "exp",
                 hidden_sizes: Sequence[int] = (2048, 1024), lr: float = 1e-3, weight_decay: float = 1e-4,
                 batch_size: int | None = 1024, max_epochs: int = 300, patience: int | None = 3,
                 drop_no_correct: bool = True, seed: int = 42) -> None:
        super().__init__(lam=lam, cost_scale=cost_scale, scheme=scheme, lr=lr, weight_decay=weight_decay,
                         batch_size=batch_size, max_epochs=max_epochs, patience=patience,
                         drop_no_correct=drop_no_correct, seed=seed)
        self.hidden_sizes = [int(h) for h in hidden_sizes]

    def module_kwargs(self) -> dict[str, Any]:
        return {"lr": self.lr, "weight_decay": self.weight_decay, "hidden_sizes": self.hidden_sizes}
