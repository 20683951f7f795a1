"""`vlrb_cal`: vlrb's own router, designed from how the seed routers fail on real data.

What the failures on MATH-Vision teach (README "Results"): accuracies are near chance, a third of the items no model
answers, and correctness is only weakly correlated across models, so (1) a router must not overfit a small dev
split, (2) probabilities of "model k is right" must be calibrated before they are traded against cost (a
class-balanced classifier, as OVR's, inflates rare successes), (3) what is known about a dataset is a strong,
cheap signal but per-dataset estimates from a few items are noisy, and (4) when the inputs carry no usable signal
the honest answer is the best single model, not a worse guess. So:

1. **Priors with empirical-Bayes shrinkage.** Per model, its accuracy on each task group and dataset of the
   training rows, shrunk toward the level above (dataset -> group -> the model's overall accuracy) by a
   beta-binomial prior whose strength is estimated from the spread across datasets (method of moments). An unseen
   dataset gets its group's estimate, an unseen group the overall one.
2. **Correctness predictors.** Per model, a logistic regression on the fused features (reduced by PCA fitted on
   the training rows) with the prior's logit as offset: it learns what the features add to the prior. With
   `interact` (default: per dataset) the 16 leading components also get per-dataset weights, shrunk toward the
   shared ones by the same penalty: what an image or question says about a model's chances differs by task. One L2
   strength for all models, chosen by internal k-fold cross-validation (log-loss) on the training rows.
3. **Calibration.** Platt scaling per model on the out-of-fold logits, so p̂ means what it says; the expected
   calibration error (ECE) of the out-of-fold predictions is in `fit_info` and the run's metrics.
4. **Cost-aware decision.** argmax_k p̂_k(x) − μ·ĉ_k(x), with ĉ the model's mean cost on the training rows of the
   sample's dataset. `mu=auto` (default) takes the μ whose out-of-fold decisions have the best rank score on the
   training rows (λ is then unused); `mu=lambda` sets μ = λ·cost_scale from the run's `lambda` (λ = inf: the
   cheapest model, p̂ breaking ties), for sweeps over λ like every other router.
5. **Fallback.** On the training rows, out of fold, the routed choices are compared with the best single model
   (by rank score) in a paired bootstrap; unless routing wins with probability `fallback_confidence`, the router
   sends everything to that model. Decided on training rows only; test is never read.

Fitting is numpy/scipy (no Lightning): about 5 s on the demo (980 samples x 17 models) on a 2-core CPU.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from vlrb.data.benchmark import Requests, Split, compute_cost_bounds
from vlrb.routers.base import (Router, load_arrays, meta_k, require, restore_common,
                               router_from_meta, save_arrays)
from vlrb.routing.metrics import (_group_means, best_single_model, expected_calibration_error, paired_bootstrap,
                                  route_metrics)
from vlrb.routing.soft_labels import parse_lambda

INTERACT_COMPONENTS = 16  # leading components that get per-group (or per-dataset) weights with `interact`
EPS = 1e-4  # probabilities are clipped to [EPS, 1 - EPS] before taking logits


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


# ------------------------------------------------------------------------------------------ priors
def shrink(Y: np.ndarray, keys: np.ndarray, parent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical-Bayes rates of Y (n, K) per key, shrunk toward each row's `parent` rates (n, K).

    Per model, the prior Beta(m·a, m·(1−a)) around the parent rate a has its strength m from the method of
    moments: the spread of the keys' raw rates beyond binomial noise. No spread: m = inf (every key gets its
    parent's rate). Returns (unique keys, (n_keys, K) posterior rates, (K,) strengths m)."""
    uniq, inv = np.unique(keys.astype(str), return_inverse=True)
    n_key = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    hits = np.stack([np.bincount(inv, weights=Y[:, k], minlength=len(uniq)) for k in range(Y.shape[1])], 1)
    base = np.stack([np.bincount(inv, weights=parent[:, k], minlength=len(uniq)) for k in range(Y.shape[1])], 1)
    base = base / n_key[:, None]  # each key's parent rate (one value when keys nest in the parent's keys)
    raw = hits / n_key[:, None]
    w = n_key / n_key.sum()
    a = np.clip(base, EPS, 1 - EPS)
    noise = (w[:, None] * a * (1 - a) / n_key[:, None]).sum(0)
    between = (w[:, None] * (raw - base) ** 2).sum(0) - noise  # variance of the true rates around the parent
    mean_var = (w[:, None] * a * (1 - a)).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(between > 1e-12, np.maximum(mean_var / np.maximum(between, 1e-12) - 1.0, 0.0), np.inf)
    m = np.where(len(uniq) < 2, np.inf, m)  # one key: nothing to estimate the spread from
    m_f = np.where(np.isinf(m), 0.0, m)[None, :]
    post = np.where(np.isinf(m)[None, :], base, (hits + m_f * base) / (n_key[:, None] + m_f))
    return uniq, post, m


class Priors:
    """Per-model correctness priors: overall -> task group -> dataset, each level shrunk toward the one above."""

    def fit(self, Y: np.ndarray, groups: np.ndarray, datasets: np.ndarray) -> "Priors":
        n, K = Y.shape
        self.overall = (Y.sum(0) + 1.0) / (n + 2.0)  # +1/+2: never exactly 0 or 1
        top = np.broadcast_to(self.overall, (n, K))
        self.groups, self.group_rates, self.group_m = shrink(Y, groups, top)
        g = self._lookup(self.groups, self.group_rates, groups, self.overall)
        self.datasets, self.dataset_rates, self.dataset_m = shrink(Y, datasets, g)
        return self

    @staticmethod
    def _lookup(keys: np.ndarray, rates: np.ndarray, query: np.ndarray, default: np.ndarray) -> np.ndarray:
        q = np.asarray(query).astype(str)
        pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
        seen = keys[pos] == q
        return np.where(seen[:, None], rates[pos], default[None, :])

    def rates(self, groups: np.ndarray, datasets: np.ndarray) -> np.ndarray:
        """(n, K) prior rates: the dataset's when it was seen in training, else its group's, else overall."""
        g = self._lookup(self.groups, self.group_rates, groups, self.overall)
        q = np.asarray(datasets).astype(str)
        pos = np.minimum(np.searchsorted(self.datasets, q), len(self.datasets) - 1)
        seen = self.datasets[pos] == q
        return np.where(seen[:, None], self.dataset_rates[pos], g)

    def state(self) -> dict:
        return {"overall": self.overall, "groups": self.groups.astype(str), "group_rates": self.group_rates,
                "datasets": self.datasets.astype(str), "dataset_rates": self.dataset_rates}

    @classmethod
    def from_state(cls, a: dict) -> "Priors":
        p = cls()
        p.overall, p.groups, p.group_rates = a["overall"], a["groups"], a["group_rates"]
        p.datasets, p.dataset_rates = a["datasets"], a["dataset_rates"]
        return p


# ------------------------------------------------------------------------------------------ predictors
def fit_offset_logistic(Z: np.ndarray, Y: np.ndarray, offset: np.ndarray, alpha: float,
                        max_iter: int = 50, tol: float = 1e-8,
                        start: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """K independent L2-penalised logistic regressions sharing the inputs Z (n, q), each with its own offset
    column: logit P(Y_k = 1) = offset_k + Z·w_k + b_k. Penalty (alpha/2)·‖w_k‖² (b unpenalised). Newton's method
    for all K at once (batched (q+1)x(q+1) solves), halving a step that would raise a model's loss. `start`:
    (w, b) to start from, e.g. the solution for a neighbouring alpha (the same optimum, fewer steps)."""
    n, q = Z.shape
    K = Y.shape[1]
    Z1 = np.hstack([Z, np.ones((n, 1))])
    reg = np.full(q + 1, alpha)
    reg[q] = 1e-8  # the intercept is (almost) free

    def losses(W):
        eta = offset + Z1 @ W
        return (np.logaddexp(0.0, eta) - Y * eta).sum(0) + 0.5 * (reg[:, None] * W ** 2).sum(0)

    W = np.zeros((q + 1, K)) if start is None else np.vstack([start[0], start[1][None]]).astype(np.float64)
    cur = losses(W)
    with threadpool_limits(1, user_api="blas"):  # K small products: threads cost more than they save (30x here)
        W = _newton(Z1, Y, offset, reg, W, cur, losses, max_iter, tol)
    return W[:q], W[q]


def _newton(Z1, Y, offset, reg, W, cur, losses, max_iter, tol):
    K = Y.shape[1]
    Z1f = Z1.astype(np.float32)
    for _ in range(max_iter):
        p = _sigmoid(offset + Z1 @ W)
        grad = Z1.T @ (p - Y) + reg[:, None] * W  # (q+1, K)
        # The Hessians in float32 (2.5x faster, relative error ~1e-6): they only steer the steps; the gradient,
        # the losses and so the optimum stay float64.
        weighted = Z1f[:, None, :] * (p * (1 - p)).astype(np.float32)[:, :, None]  # (n, K, q+1)
        H = np.matmul(weighted.transpose(1, 2, 0), Z1f).astype(np.float64) + np.diag(reg)[None]  # (K, q+1, q+1)
        step = np.linalg.solve(H, grad.T[:, :, None])[:, :, 0].T  # (q+1, K)
        t = np.ones(K)
        for _ in range(20):  # backtracking, per model
            new = losses(W - t * step)
            worse = new > cur + 1e-12
            if not worse.any():
                break
            t = np.where(worse, t / 2, t)
        W = W - t * step
        done = np.abs(cur - new) <= tol * np.maximum(1.0, np.abs(new))
        cur = new
        if done.all():
            break
    return W


def fit_platt(z: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per model k, P(Y_k = 1) = σ(a_k·z_k + c_k) on out-of-fold logits z (n, K): 2 parameters per model, a_k >= 0."""
    from scipy.optimize import minimize

    K = Y.shape[1]

    def loss(theta):
        a, c = theta[:K], theta[K:]
        eta = a * z + c
        val = np.logaddexp(0.0, eta).sum() - (Y * eta).sum() + 1e-3 * ((a - 1) ** 2).sum()
        r = _sigmoid(eta) - Y
        return val, np.concatenate([(r * z).sum(0) + 2e-3 * (a - 1), r.sum(0)])

    # a_k >= 0: out-of-fold estimates are slightly anti-correlated with the held-out rows (each fold's rate is
    # estimated without them), and a negative slope would invert that into a leak of the held-out labels
    res = minimize(loss, np.r_[np.ones(K), np.zeros(K)], jac=True, method="L-BFGS-B",
                   bounds=[(0.0, None)] * K + [(None, None)] * K)
    return res.x[:K], res.x[K:]


def _folds(n: int, k: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).permutation(n) % k


# ------------------------------------------------------------------------------------------ the router
class CalibratedRouter(Router):
    """vlrb's calibrated, cost-aware router with empirical-Bayes priors and a best-single-model fallback."""

    name = "vlrb_cal"
    inputs = ("features",)
    uses_lambda = True

    MU_GRID = (0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # mu=auto: probability points per typical model cost

    def __init__(self, lam: float | str = 0.0, mu: str = "auto", cost_scale: float = 100.0, n_components: int = 64,
                 alphas=(10.0, 100.0, 1000.0), folds: int = 5, use_features: bool = True,
                 interact: str | None = "dataset",
                 fallback_confidence: float = 0.9, bootstrap: int = 1000, beta: float = 0.1, seed: int = 42) -> None:
        super().__init__()
        if mu not in ("auto", "lambda"):
            raise ValueError(f"mu must be 'auto' (chosen out of fold on the training rows) or 'lambda' "
                             f"(λ·cost_scale), got {mu!r}")
        self.lam, self.mu_mode = lam, mu
        self.uses_lambda = mu == "lambda"  # mu=auto ignores λ: sweeps and selection=cv fit it once, not per λ
        self.mu = parse_lambda(lam) * float(cost_scale)  # $ -> probability points; inf at λ = inf
        self.cost_scale, self.n_components = float(cost_scale), int(n_components)
        self.alphas = [float(a) for a in alphas]
        if not self.alphas or min(self.alphas) <= 0:
            raise ValueError(f"alphas must be positive L2 strengths, got {list(alphas)}")
        self.folds, self.use_features = int(folds), bool(use_features)
        if interact not in (None, "group", "dataset"):
            raise ValueError(f"interact must be null, 'group' or 'dataset', got {interact!r}")
        self.interact = interact
        if not 0.5 <= float(fallback_confidence) <= 1.0:
            raise ValueError(f"fallback_confidence must be in [0.5, 1], got {fallback_confidence}")
        self.fallback_confidence, self.bootstrap = float(fallback_confidence), int(bootstrap)
        self.beta, self.seed = float(beta), int(seed)

    # ------------------------------------------------------------ pieces
    def _project(self, X: np.ndarray) -> np.ndarray:
        return (X - self.pca_mean_) @ self.pca_components_.T

    def _fit_pca(self, X: np.ndarray) -> None:
        q = max(0, min(self.n_components, X.shape[1], X.shape[0] - 1)) if self.use_features else 0
        self.pca_mean_ = X.mean(0).astype(np.float32)
        if q == 0:
            self.pca_components_ = np.zeros((0, X.shape[1]), np.float32)
            return
        from sklearn.utils.extmath import randomized_svd  # the top q of a (n, D) matrix, not its full SVD

        _, s, vt = randomized_svd(X - self.pca_mean_, q, n_iter=2, random_state=self.seed)
        # not whitened: the L2 penalty then shrinks low-variance directions hardest, like ridge on the features
        self.pca_components_ = vt[:q].astype(np.float32)

    def _design(self, Z: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """The shared components, then (with `interact`) a copy of them per group or dataset seen in training, so
        a model's feature weights can differ by group (shrunk toward the shared ones by the same L2)."""
        if not len(self.interact_keys_) or not Z.shape[1]:
            return Z
        onehot = (np.asarray(keys).astype(str)[:, None] == self.interact_keys_[None, :]).astype(Z.dtype)
        top = Z[:, :INTERACT_COMPONENTS]  # the leading components only: the design stays small
        return np.hstack([Z, (onehot[:, :, None] * top[:, None, :]).reshape(len(Z), -1)])

    def _costs(self, datasets: np.ndarray) -> np.ndarray:
        """(n, K) expected cost: the model's mean cost on the training rows of the sample's dataset (else overall)."""
        return Priors._lookup(self.cost_keys_, self.cost_table_, datasets, self.cost_overall_)

    def _decide(self, p: np.ndarray, c: np.ndarray, mu: float | None = None) -> np.ndarray:
        mu = self.mu if mu is None else mu
        if math.isinf(mu):
            return -c + 1e-9 * p  # λ = inf: the cheapest model; p̂ breaks exact ties
        return p - mu * c

    def _cv_logits(self, Z, Y, groups, datasets, alphas) -> dict[float, np.ndarray]:
        """Out-of-fold logits for each L2 strength (priors and predictors refitted on each fold's training part).
        Within a fold the strengths are fitted strongest first, each starting from the previous solution."""
        out = {a: np.empty(Y.shape, np.float64) for a in alphas}
        fold = _folds(len(Y), self.folds, self.seed)
        for f in range(self.folds):
            tr, te = fold != f, fold == f
            pri = Priors().fit(Y[tr], groups[tr], datasets[tr])
            off_tr, off_te = _logit(pri.rates(groups[tr], datasets[tr])), _logit(pri.rates(groups[te], datasets[te]))
            start = None
            for alpha in sorted(alphas, reverse=True):
                if Z.shape[1]:
                    start = fit_offset_logistic(Z[tr], Y[tr], off_tr, alpha, start=start)
                    out[alpha][te] = off_te + Z[te] @ start[0] + start[1]
                else:
                    out[alpha][te] = off_te
        return out

    # ------------------------------------------------------------ fit / predict
    def fit(self, train: Split, dev: Split | None = None) -> "CalibratedRouter":
        """Learn from `train` only (internal cross-validation stands in for a dev split; `dev` is not read)."""
        t0 = time.perf_counter()
        self._remember_models(train)
        X = self._features(train).astype(np.float64)
        Y = np.asarray(train.Y, np.float64)
        C = np.asarray(train.C, np.float64)
        groups, datasets = np.asarray(train.groups).astype(str), np.asarray(train.datasets).astype(str)
        if len(Y) < 2 * self.folds:
            raise ValueError(f"{self.label}: {len(Y)} training samples are too few for {self.folds}-fold calibration")

        self.cost_keys_, _, self.cost_table_ = _group_means(datasets, C)
        self.cost_overall_ = C.mean(0)
        self._fit_pca(X)
        keys = groups if self.interact == "group" else datasets
        self.interact_keys_ = np.unique(keys) if self.interact else np.zeros(0, str)
        Z = self._design(self._project(X), keys)

        # the L2 strength by out-of-fold log-loss (only when there are features to weigh)
        alphas = self.alphas if Z.shape[1] else [self.alphas[0]]
        best = None
        oof = self._cv_logits(Z, Y, groups, datasets, alphas)
        for alpha in alphas:  # in the configured order: ties go to the first
            z = oof[alpha]
            ll = float((np.logaddexp(0.0, z) - Y * z).mean())
            if best is None or ll < best[1]:
                best = (alpha, ll, z)
        self.alpha_, oof_ll, z_oof = best
        self.platt_a_, self.platt_c_ = fit_platt(z_oof, Y)
        p_oof = _sigmoid(self.platt_a_ * z_oof + self.platt_c_)
        self.oof_correctness = p_oof  # (n, K) out of fold on the training rows, for the cascades (not saved)

        # the final predictors on every training row
        self.priors_ = Priors().fit(Y, groups, datasets)
        off = _logit(self.priors_.rates(groups, datasets))
        if Z.shape[1]:
            self.coef_, self.intercept_ = fit_offset_logistic(Z, Y, off, self.alpha_)
        else:
            self.coef_, self.intercept_ = np.zeros((0, Y.shape[1])), np.zeros(Y.shape[1])

        # fallback: do the out-of-fold routed choices beat the best single model on these rows (paired bootstrap)?
        src = getattr(train, "source", None)  # the benchmark's cost bounds, as every metric uses
        bounds = src.cost_bounds if src is not None else compute_cost_bounds(C, self.models or list(range(C.shape[1])))
        self.single_ = best_single_model(train, bounds, self.beta)
        c_hat = self._costs(datasets)
        if self.mu_mode == "auto":  # the trade-off with the best out-of-fold rank score on these rows
            typical = float(np.median(self.cost_overall_)) or 1.0
            tried = [(route_metrics(train, self._decide(p_oof, c_hat, t / typical).argmax(1), bounds, prefix="",
                                    beta=self.beta, breakdown=False)["rank_score"], t / typical) for t in self.MU_GRID]
            self.mu = max(tried, key=lambda x: x[0])[1]  # ties: the smaller μ (listed first)
        routed = self._decide(p_oof, c_hat).argmax(1)
        single = np.full(len(Y), self.single_)
        pb = paired_bootstrap(train, routed, single, bounds, n=self.bootstrap, seed=self.seed, beta=self.beta)
        self.fallback_ = bool(pb["p_a_better"] < self.fallback_confidence)
        score = {name: route_metrics(train, ch, bounds, prefix="", beta=self.beta, breakdown=False)["rank_score"]
                 for name, ch in (("routed", routed), ("single", single))}
        self.fit_info = {"n_train": len(Y), "components": int(Z.shape[1]), "alpha": self.alpha_,
                         "oof_log_loss": oof_ll, "oof_ece_uncalibrated": expected_calibration_error(_sigmoid(z_oof), Y),
                         "oof_ece": expected_calibration_error(p_oof, Y),
                         "oof_rank_score_routed": score["routed"], "oof_rank_score_single": score["single"],
                         "mu": self.mu, "p_routing_better": pb["p_a_better"], "fallback": self.fallback_,
                         "single_model": self.models[self.single_] if self.models else self.single_,
                         "fit_seconds": time.perf_counter() - t0}
        return self

    def predict_correctness(self, split: Split) -> np.ndarray:
        """(n, K) calibrated P(model k answers sample i correctly)."""
        self._check_inputs(split)
        X = self._features(split).astype(np.float64)
        off = _logit(self.priors_.rates(np.asarray(split.groups).astype(str), np.asarray(split.datasets).astype(str)))
        keys = split.groups if self.interact == "group" else split.datasets
        z = off + self._design(self._project(X), np.asarray(keys).astype(str)) @ self.coef_ + self.intercept_
        return _sigmoid(self.platt_a_ * z + self.platt_c_)

    def predict_scores(self, split: Requests) -> np.ndarray:
        self._check_inputs(split)
        u = self._decide(self.predict_correctness(split), self._costs(np.asarray(split.datasets).astype(str)))
        if self.fallback_:  # the best single model first; the rest keep their order behind it (for a model that is down)
            u[:, self.single_] = u.max(1) + 1.0
        return u

    # ------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        save_arrays(self, path, {
            "pca_mean": self.pca_mean_, "pca_components": self.pca_components_, "coef": self.coef_,
            "intercept": self.intercept_, "platt_a": self.platt_a_, "platt_c": self.platt_c_,
            "cost_keys": self.cost_keys_.astype(str), "cost_table": self.cost_table_,
            "cost_overall": self.cost_overall_,
            "fallback": np.asarray([self.fallback_, self.single_], np.int64), "alpha": np.asarray(self.alpha_),
            "mu": np.asarray(self.mu), "interact_keys": self.interact_keys_.astype(str),
            **{f"prior_{k}": v for k, v in self.priors_.state().items()}})

    @classmethod
    def load(cls, path: Path) -> "CalibratedRouter":
        k = meta_k(path)
        meta, a = load_arrays(path, expect={"pca_mean": (-1,), "pca_components": (-1, -1), "coef": (-1, k),
                                            "intercept": (k,), "platt_a": (k,), "platt_c": (k,), "fallback": (2,)})
        require(a["pca_components"].shape[1] == len(a["pca_mean"]) and 0 <= a["fallback"][1] < k, meta,
                "the PCA components, the PCA mean and the fallback model do not fit together")
        router = router_from_meta(meta, cls)
        restore_common(router, meta)
        router.pca_mean_, router.pca_components_ = a["pca_mean"], a["pca_components"]
        router.coef_, router.intercept_ = a["coef"], a["intercept"]
        router.platt_a_, router.platt_c_ = a["platt_a"], a["platt_c"]
        router.cost_keys_, router.cost_table_, router.cost_overall_ = a["cost_keys"], a["cost_table"], a["cost_overall"]
        router.fallback_, router.single_ = bool(a["fallback"][0]), int(a["fallback"][1])
        router.alpha_, router.mu = float(np.ravel(a["alpha"])[0]), float(np.ravel(a["mu"])[0])  # 0-d (npz) or (1,)
        router.interact_keys_ = a["interact_keys"]
        router.priors_ = Priors.from_state({k[len("prior_"):]: v for k, v in a.items() if k.startswith("prior_")})
        return router


