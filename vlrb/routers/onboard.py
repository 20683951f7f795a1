"""A new model joins a trained router from a few labelled items, without refitting it (README "When the model pool
changes"; docs/routers.md "Onboarding a model").

    from vlrb.routers.onboard import add_model
    router = add_model(router, "NewVLM", labelled, correct=y, cost=c, price=(0.3, 1.2))   # y, c: (n,) of NewVLM

The router must predict each model's probability of being right (`predict_correctness`: vlrb_cal, per_dataset). Its
models stay as they are; the newcomer gets a small head on the router's own predictions, an item-response view:

    logit P(new is right | x) = a + b·z̄(x) + Σ_k β_k·(z_k(x) − z̄(x)),   z_k = logit p̂_k(x) of the known models

z̄ carries how hard the request is for an average model (its dataset, its features), `a` the newcomer's ability
relative to that average, β which known models it resembles (a family sibling, a shared vision tower). The prior
a ~ N(0, τ²), b ~ N(1, ½²), β ~ N(0, ½²) makes the newcomer an average model with 0 items (τ: the spread of the known
models' abilities), and the n labelled items move it by MAP (a few Newton-free L-BFGS steps: 18 parameters). Its cost
is the known models' typical estimated cost (geometric mean per request) scaled by the labelled items' cost ratio, or
by the price ratio with no items. Decisions then follow the router's own rule (vlrb_cal: p̂ − μ·ĉ; per_dataset: p̂).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from vlrb.data.benchmark import Requests
from vlrb.routers.base import Router, load_arrays, read_router, require, restore_common, router_from_meta, save_arrays

BASE_DIR = "base"  # the frozen router's folder inside a saved Onboarded
OTHERS_BELOW = 1e3  # a vlrb_cal that falls back to one model keeps the others' order, this far below
EPS = 1e-4


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def known(base: Router, split: Requests) -> tuple[np.ndarray, np.ndarray]:
    """(n, K) p̂ and ĉ of a router's own models on `split` (ĉ zero for a router without cost estimates)."""
    rows = dataclasses.replace(split, models=list(base.models))
    p = np.asarray(base.predict_correctness(rows), np.float64)
    costs = getattr(base, "_costs", None)
    c = costs(np.asarray(split.datasets).astype(str)) if costs is not None else np.zeros_like(p)
    return p, np.asarray(c, np.float64)


def can_onboard(router: Router) -> bool:
    return hasattr(router, "predict_correctness") or isinstance(router, Onboarded)


def design(z: np.ndarray) -> np.ndarray:
    """The head's inputs [1, z̄, z − z̄] per row, from the known models' logits z (n, K)."""
    zbar = z.mean(1)
    return np.column_stack([np.ones(len(z)), zbar, z - zbar[:, None]])


def fit_head(z: np.ndarray, y: np.ndarray, ability_sd: float, slope_sd: float = 0.5,
             similarity_sd: float = 0.5, with_cov: bool = False):
    """MAP [a, b, β_1..β_K] of logit P(y=1) = a + b·z̄ + (z − z̄)·β on the labelled rows (z: (n, K) known models'
    logits). With no rows: the prior mean [0, 1, 0...] (an average model). `with_cov`: also the Laplace covariance
    (the inverse Hessian of the negative log posterior at the MAP), how unsure the head still is."""
    from scipy.optimize import minimize

    n, K = z.shape
    theta0 = np.r_[0.0, 1.0, np.zeros(K)]
    prec = np.r_[1 / ability_sd ** 2, 1 / slope_sd ** 2, np.full(K, 1 / similarity_sd ** 2)]
    if n == 0:
        return (theta0, np.diag(1 / prec)) if with_cov else theta0
    D = design(z)
    y = np.asarray(y, np.float64)

    def loss(theta):
        eta = D @ theta
        r = _sigmoid(eta) - y
        dev = theta - theta0
        return (np.logaddexp(0.0, eta) - y * eta).sum() + 0.5 * (prec * dev ** 2).sum(), D.T @ r + prec * dev

    theta = minimize(loss, theta0, jac=True, method="L-BFGS-B").x
    if not with_cov:
        return theta
    p = _sigmoid(D @ theta)
    return theta, np.linalg.inv((D * (p * (1 - p))[:, None]).T @ D + np.diag(prec))


class Onboarded(Router):
    """A frozen router plus models that joined it later (`add_model`); scores over every model, in `models` order."""

    name = "onboarded"

    def __init__(self, ability_sd: float | None = None, slope_sd: float = 0.5, similarity_sd: float = 0.5,
                 pessimism: float = 1.0) -> None:
        super().__init__()
        self.ability_sd = None if ability_sd is None else float(ability_sd)
        self.pessimism = float(pessimism)
        if not self.pessimism >= 0:
            raise ValueError(f"pessimism must be >= 0 (standard deviations), got {pessimism}")
        self.slope_sd, self.similarity_sd = float(slope_sd), float(similarity_sd)
        self.base: Router | None = None

    def attach(self, base: Router) -> "Onboarded":
        """Sit on the frozen router `base`: read what it reads, report its λ."""
        self.base = base
        self.inputs = base.inputs
        self.uses_lambda = bool(getattr(base, "uses_lambda", False))
        self.lam = getattr(base, "lam", None)
        return self

    @property
    def label(self) -> str:
        return f"{self.base.label} +{len(self.new_)} onboarded" if self.base is not None else self.name

    # ------------------------------------------------------------ the known models, then the newcomers
    def _known(self, split: Requests) -> tuple[np.ndarray, np.ndarray]:
        return known(self.base, split)

    def newcomer_costs(self, split: Requests, known_mean: Sequence[float] | None = None) -> dict[str, float]:
        """Each newcomer's estimated mean $ per request over `split` (what the router itself assumes; a router
        without cost estimates, per_dataset, takes `known_mean`, its known models' mean $, as the reference)."""
        _, c = self._known(split)
        if not c.any() and known_mean is not None:
            c = np.broadcast_to(np.asarray(known_mean, np.float64), c.shape)
        return {m: float(v) for m, v in zip(self.new_, self._new_c(c).mean(0))}

    def predict_correctness(self, split: Requests) -> np.ndarray:
        self._check_inputs(split)
        p, _ = self._known(split)
        return self._assemble(p, self._new_p(p, 0.0))

    def _new_p(self, p: np.ndarray, pessimism: float | None = None) -> np.ndarray:
        """(n, n_new) P(right) of the newcomers; for decisions (`pessimism` k > 0) at the head's logit minus k of its
        standard deviations: an estimate from a few items is chosen only where it is sure to be good (an argmax over
        estimates favours the noisiest one otherwise)."""
        D = design(_logit(p))
        eta = D @ self.heads_.T
        k = self.pessimism if pessimism is None else pessimism
        if k:
            eta = eta - k * np.sqrt(np.maximum(np.einsum("ni,mij,nj->nm", D, self.head_cov_, D), 0.0))
        return _sigmoid(eta)

    def _new_c(self, c: np.ndarray) -> np.ndarray:
        g = np.exp(np.log(np.maximum(c, 1e-12)).mean(1)) if c.any() else np.zeros(len(c))
        return g[:, None] * self.cost_ratio_[None, :]

    def _assemble(self, known: np.ndarray, new: np.ndarray) -> np.ndarray:
        out = np.empty((len(known), self.n_models))
        out[:, self.known_pos_] = known
        out[:, self.new_pos_] = new
        return out

    def predict_scores(self, split: Requests) -> np.ndarray:
        self._check_inputs(split)
        p, c = self._known(split)
        P, C = self._assemble(p, self._new_p(p)), self._assemble(c, self._new_c(c))
        decide = getattr(self.base, "_decide", None)
        u = np.asarray(decide(P, C), np.float64) if decide is not None else P
        if getattr(self.base, "fallback_", False):  # the router trusts one known model only: it, or a newcomer
            others = np.ones(self.n_models, bool)
            others[self.known_pos_[self.base.single_]] = False
            others[self.new_pos_] = False
            u = np.where(others[None, :], u - OTHERS_BELOW, u)
        return u

    # ------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        save_arrays(self, path, {"heads": self.heads_, "head_cov": self.head_cov_, "cost_ratio": self.cost_ratio_,
                                 "known_pos": self.known_pos_,
                                 "new_pos": self.new_pos_, "new": np.asarray(self.new_, dtype=str)})
        self.base.save(Path(path) / BASE_DIR)

    @classmethod
    def load(cls, path: Path) -> "Onboarded":
        meta, a = load_arrays(path)
        router = router_from_meta(meta, cls)
        restore_common(router, meta)
        router.attach(read_router(Path(path) / BASE_DIR))
        router.heads_, router.head_cov_, router.cost_ratio_ = a["heads"], a["head_cov"], a["cost_ratio"]
        router.known_pos_, router.new_pos_ = a["known_pos"].astype(np.int64), a["new_pos"].astype(np.int64)
        router.new_ = [str(m) for m in a["new"]]
        k = router.n_models
        require(isinstance(router.base, Router) and can_onboard(router.base)
                and sorted([*router.known_pos_, *router.new_pos_]) == list(range(k))
                and router.heads_.shape == (len(router.new_pos_), len(router.known_pos_) + 2)
                and router.head_cov_.shape == router.heads_.shape + router.heads_.shape[1:]
                and len(router.base.models) == len(router.known_pos_), meta,
                "the onboarded heads, the model positions and the frozen router do not fit together")
        return router


def add_model(router: Router, name: str, labelled: Requests, correct: Sequence[float],
              cost: Sequence[float] | None = None, *, price: float | None = None, known_prices: Sequence[float] | None = None,
              models: Sequence[str] | None = None, **head) -> Onboarded:
    """`router` with `name` added from its labelled items: `labelled` rows (what the router reads: features, datasets),
    `correct` (n,) its correctness on them and `cost` (n,) its $ there. With no items, `price` (any one number per
    model, e.g. $ per 1M output tokens) against `known_prices` (the same for the router's models) sets its cost.
    `models`: the order of the result's models (default: the router's, then `name`). The router is not refitted."""
    if not can_onboard(router):
        raise ValueError(f"{router.label} cannot take a new model: onboarding needs a router that predicts each "
                         "model's probability of being right (vlrb_cal, per_dataset)")
    base = router.base if isinstance(router, Onboarded) else router
    old = Onboarded(**head) if not isinstance(router, Onboarded) else router
    if name in (old.models if isinstance(router, Onboarded) else base.models):
        raise ValueError(f"{name!r} is already one of the router's models")
    prev_new = list(old.new_) if isinstance(router, Onboarded) else []
    all_models = list(models) if models is not None else [*(router.models), name]
    if sorted(all_models) != sorted([*base.models, *prev_new, name]):
        raise ValueError(f"models={list(all_models)} must list the router's models and {name!r}, each once")
    y = np.asarray(correct, np.float64).reshape(-1)
    if len(y) != len(labelled):
        raise ValueError(f"{len(y)} correctness values for {len(labelled)} labelled items")
    if len(y) and not np.isin(y, (0.0, 1.0)).all() and not ((0 <= y) & (y <= 1)).all():
        raise ValueError("correctness values must be in [0, 1]")

    new = Onboarded(**{**old.get_params(), **head})
    new.attach(base)
    new.models, new.n_models = all_models, len(all_models)
    new.known_pos_ = np.asarray([all_models.index(m) for m in base.models], np.int64)
    new.new_ = [*prev_new, name]
    new.new_pos_ = np.asarray([all_models.index(m) for m in new.new_], np.int64)
    z = np.zeros((0, len(base.models)))
    c_known = np.zeros((0, len(base.models)))
    if len(y):
        p, c_known = known(base, labelled)
        z = _logit(p)
    sd = new.ability_sd
    if sd is None:  # the known models' spread of ability on these rows (at least 0.3 logits)
        sd = max(0.3, float(np.std((z - z.mean(1, keepdims=True)).mean(0)))) if len(y) else 1.0
    theta, cov = fit_head(z, y, sd, new.slope_sd, new.similarity_sd, with_cov=True)
    width = len(base.models) + 2
    new.heads_ = np.vstack([old.heads_ if prev_new else np.zeros((0, width)), theta[None]])
    new.head_cov_ = np.concatenate([old.head_cov_ if prev_new else np.zeros((0, width, width)), cov[None]])
    ratio = _cost_ratio(c_known, cost, price, known_prices)
    new.cost_ratio_ = np.r_[old.cost_ratio_ if prev_new else np.zeros(0), ratio]
    new.fit_info = {**dict(base.fit_info or {}), "onboarded": {m: {"n_labelled": int(len(y)) if m == name else None}
                                                                for m in new.new_}}
    return new


def _cost_ratio(c_known: np.ndarray, cost, price, known_prices) -> float:
    """The newcomer's cost as a multiple of the known models' geometric-mean estimate."""
    if cost is not None and len(c_known) and c_known.any():
        c = np.asarray(cost, np.float64).reshape(-1)
        g = np.exp(np.log(np.maximum(c_known, 1e-12)).mean(1))
        return float(c.sum() / max(g.sum(), 1e-12))
    if price is not None and known_prices is not None and len(known_prices):
        kp = np.maximum(np.asarray(known_prices, np.float64), 1e-12)
        return float(max(float(price), 1e-12) / np.exp(np.log(kp).mean()))
    return 1.0
