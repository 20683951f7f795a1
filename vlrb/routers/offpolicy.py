"""`offpolicy`: a router learned from a served router's traffic log, where only the chosen model's outcome is known.

    python train.py data=feedback data.path=logs/feedback.sqlite router=offpolicy

Per model, the expected reward (correctness) of a request, learned with a doubly robust off-policy correction:

1. **Direct model, cross-fitted.** Per model k, a ridge regression of the reward on the rows where k was chosen,
   weighted by 1/p (features: the fused features reduced by PCA fitted on the log, plus a one-hot of the request's
   dataset hint), its intercept shrunk toward the models' mean reward by `prior_strength` pseudo-rows. Out of fold
   (`folds`), so a row's r̂ never saw its own reward.
2. **DR pseudo-outcomes.** Γ_ik = r̂_k(x_i) + 1[a_i = k] / p_i · (r_i − r̂_k(x_i)) (vlrb/routing/offpolicy.py): an
   unbiased (n, K) label matrix whether r̂ or the logged propensities p are right. `estimator=ips` drops r̂
   (Γ_ik = 1[a_i = k] / p_i · r_i), `estimator=dm` keeps r̂ alone (biased where the logging policy avoided a model).
   Propensities are floored at `clip` (bounded variance).
3. **Reward model.** One ridge regression of each Γ column on the same design (`reward_alpha`: Γ is noisy, 1/p
   times a residual): Γ̂_k(x).
4. **Decision.** argmax_k Γ̂_k(x) − μ·ĉ_k, ĉ_k the mean $ of model k's logged calls (never chosen: the log's own
   estimate). `mu=auto` takes the μ whose decisions have the best rank score on the log, with accuracy estimated
   doubly robustly and the decisions made out of fold (a reward model that never saw the rows it is valued on);
   `mu=lambda` sets μ = λ·cost_scale from the run's `lambda`, as vlrb_cal.

Numpy only: a second on a log of a thousand requests.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from vlrb.data.benchmark import Requests, Split
from vlrb.routers.base import Router
from vlrb.routing.metrics import rank_score
from vlrb.routing.offpolicy import Feedback, dr_pseudo_outcomes, dr_value, ips_value, snips_value
from vlrb.routing.soft_labels import parse_lambda

MU_GRID = (0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # mu=auto: probability points per typical model cost


def ridge(Z: np.ndarray, y: np.ndarray, alpha: float, w=None, prior: np.ndarray | float = 0.0,
          strength: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression of y (n,) or (n, M) on Z (n, q) with an unpenalised intercept, rows weighted by `w`; the
    intercept's mean is shrunk toward `prior` by `strength` pseudo-rows. Returns (coef (q, M), intercept (M,))."""
    y2 = np.asarray(y, np.float64)
    y2 = y2[:, None] if y2.ndim == 1 else y2  # (n, M); n may be 0: a model never chosen gets its prior
    w = np.ones(len(Z)) if w is None else np.asarray(w, np.float64)
    tot = w.sum() + strength
    zm = (w[:, None] * Z).sum(0) / max(tot, 1e-12)
    ym = ((w[:, None] * y2).sum(0) + strength * np.asarray(prior, np.float64)) / max(tot, 1e-12)
    Zc, yc = Z - zm, y2 - ym
    A = (Zc * w[:, None]).T @ Zc + alpha * np.eye(Z.shape[1])
    coef = np.linalg.solve(A, (Zc * w[:, None]).T @ yc) if Z.shape[1] else np.zeros((0, y2.shape[1]))
    return coef, ym - zm @ coef


class OffPolicyRouter(Router):
    """Per-model expected reward from partial labels (doubly robust), traded against each model's mean cost."""

    name = "offpolicy"
    inputs = ("features",)
    learns_from = "feedback"  # fits on vlrb.routing.offpolicy.Feedback rows (a traffic log), not on a labelled Split
    uses_lambda = True

    def __init__(self, lam: float | str = 0.0, mu: str = "auto", cost_scale: float = 100.0, estimator: str = "dr",
                 n_components: int = 16, alpha: float = 10.0, reward_alpha: float = 300.0,
                 prior_strength: float = 2.0, folds: int = 5,
                 clip: float = 0.01, use_datasets: bool = True, beta: float = 0.1, seed: int = 42) -> None:
        super().__init__()
        if mu not in ("auto", "lambda"):
            raise ValueError(f"mu must be 'auto' (best doubly robust rank score on the log) or 'lambda' "
                             f"(λ·cost_scale), got {mu!r}")
        if estimator not in ("dr", "ips", "dm"):
            raise ValueError(f"estimator must be dr, ips or dm, got {estimator!r}")
        if min(float(alpha), float(reward_alpha)) <= 0 or int(folds) < 2 or not 0.0 <= float(clip) < 1.0:
            raise ValueError(f"alpha must be > 0, folds >= 2 and clip in [0, 1); got {alpha}, {folds}, {clip}")
        self.lam, self.mu_mode, self.estimator = lam, mu, estimator
        self.uses_lambda = mu == "lambda"  # mu=auto ignores λ: sweeps fit it once
        self.cost_scale = float(cost_scale)
        self.n_components, self.alpha, self.prior_strength = int(n_components), float(alpha), float(prior_strength)
        self.reward_alpha = float(reward_alpha)
        self.folds, self.clip, self.use_datasets = int(folds), float(clip), bool(use_datasets)
        self.beta, self.seed = float(beta), int(seed)
        self.mu = parse_lambda(lam) * self.cost_scale

    # ------------------------------------------------------------ design
    def _design(self, X: np.ndarray, datasets) -> np.ndarray:
        Z = (np.asarray(X, np.float64) - self.pca_mean_) @ self.pca_components_.T
        if len(self.dataset_keys_):
            onehot = (np.asarray(datasets).astype(str)[:, None] == self.dataset_keys_[None, :]).astype(np.float64)
            Z = np.hstack([Z, onehot])
        return Z

    def _fit_design(self, rows: Feedback) -> np.ndarray:
        X = self._features(rows).astype(np.float64)
        q = max(0, min(self.n_components, X.shape[1], X.shape[0] - 1))
        self.pca_mean_ = X.mean(0)
        if q:
            from sklearn.utils.extmath import randomized_svd

            _, _, vt = randomized_svd(X - self.pca_mean_, q, n_iter=2, random_state=self.seed)
            self.pca_components_ = vt[:q]
        else:
            self.pca_components_ = np.zeros((0, X.shape[1]))
        ds = np.asarray(rows.datasets).astype(str)
        self.dataset_keys_ = np.unique(ds[ds != ""]) if self.use_datasets else np.zeros(0, str)
        return self._design(X, ds)

    def _direct(self, Z, rows: Feedback, fit: np.ndarray, K: int) -> np.ndarray:
        """(n, K) r̂ of every row from per-model ridge fits on the rows `fit` (a mask) where each model was chosen,
        each row weighted by 1/p (normalised per model): a model's rows then stand for all requests, not for those
        the logging policy sent it (a near-greedy log sends each model the requests it is good at)."""
        inv = 1.0 / np.maximum(rows.propensity, self.clip) if self.clip else 1.0 / rows.propensity
        means = []  # each model's self-normalised IPS mean reward: the prior its intercept is shrunk toward
        for k in range(K):
            mine = fit & (rows.chosen == k)
            if mine.any():
                means.append(float((inv[mine] * rows.reward[mine]).sum() / inv[mine].sum()))
        overall = float(np.mean(means)) if means else 0.5
        out = np.empty((len(Z), K))
        for k in range(K):
            mine = fit & (rows.chosen == k)
            w = inv[mine] / inv[mine].mean() if mine.any() else None
            coef, b = ridge(Z[mine], rows.reward[mine], self.alpha, w=w, prior=overall, strength=self.prior_strength)
            out[:, k] = (Z @ coef + b)[:, 0]
        return np.clip(out, 0.0, 1.0)

    # ------------------------------------------------------------ fit / predict
    def fit(self, train: Feedback, dev=None) -> "OffPolicyRouter":
        """Learn from logged traffic (`train`: vlrb.routing.offpolicy.Feedback); a labelled Split is read as a log in
        which every model was chosen for every row (Feedback.from_split). `dev` is not read."""
        t0 = time.perf_counter()
        Z = None
        if isinstance(train, Split):  # the design once per row, then repeated: not K copies of the features
            Z = np.repeat(self._fit_design(train), len(train.models), axis=0)
            train = Feedback.from_split(train, features=False)
        if not isinstance(train, Feedback):
            raise ValueError(f"{self.label} learns from a feedback log (train.py data=feedback data.path=...) or a "
                             f"labelled split, not from {type(train).__name__}")
        if len(train) < 2 * self.folds:
            raise ValueError(f"{self.label}: {len(train)} logged requests are too few for {self.folds}-fold fitting")
        self.models, K = list(train.models), len(train.models)
        self.n_models = K
        Z = self._fit_design(train) if Z is None else Z
        n = len(train)
        fold = np.random.RandomState(self.seed).permutation(n) % self.folds
        r_oof = np.empty((n, K))
        for f in range(self.folds):  # cross-fitting: a row's r̂ never saw its own reward
            r_oof[fold == f] = self._direct(Z, train, fold != f, K)[fold == f]
        self.oof_reward = r_oof  # (n, K), for the log's own off-policy estimates (not saved)
        if self.estimator == "dm":
            gamma = self._direct(Z, train, np.ones(n, bool), K)
        else:
            base = r_oof if self.estimator == "dr" else np.zeros((n, K))
            gamma = dr_pseudo_outcomes(base, train.chosen, train.propensity, train.reward, clip=self.clip)
        # the reward model out of fold too: μ is chosen on decisions that never saw the rows they are valued on
        p_oof = np.empty((n, K))
        for f in range(self.folds):
            coef, b = ridge(Z[fold != f], gamma[fold != f], self.reward_alpha)
            p_oof[fold == f] = Z[fold == f] @ coef + b
        self.coef_, self.intercept_ = ridge(Z, gamma, self.reward_alpha)
        self.cost_ = self._model_costs(train, K)
        gamma_dr = dr_pseudo_outcomes(r_oof, train.chosen, train.propensity, train.reward, clip=self.clip)
        if self.mu_mode == "auto":
            self.mu = self._choose_mu(p_oof, gamma_dr)
        self.mu_ = 0.0 if math.isinf(self.mu) else float(self.mu)
        choice = self._decide(p_oof).argmax(1)  # out of fold: the log's estimates below are honest
        self.oof_choice = choice  # (n,) not saved
        counts = np.bincount(train.chosen, minlength=K)
        self.fit_info = {
            "n_log": n, "components": int(self.pca_components_.shape[0]), "datasets": int(len(self.dataset_keys_)),
            "estimator": self.estimator, "mu": self.mu, "models_never_chosen": int((counts == 0).sum()),
            "log_mean_reward": float(train.reward.mean()), "log_mean_cost": float(train.cost.mean()),
            # the learned policy's value on the log, its decisions made out of fold
            "policy_ips": ips_value(choice, train.chosen, train.propensity, train.reward, clip=self.clip),
            "policy_snips": snips_value(np.eye(K)[choice], train.chosen, train.propensity, train.reward,
                                        clip=self.clip),
            "policy_dr": dr_value(choice, r_oof, train.chosen, train.propensity, train.reward, clip=self.clip),
            "policy_cost": float(self.cost_[choice].mean()), "fit_seconds": time.perf_counter() - t0}
        return self

    def _model_costs(self, rows: Feedback, K: int) -> np.ndarray:
        """Each model's mean logged $ per call; a model never chosen: the log's estimate, else the log's mean."""
        counts = np.bincount(rows.chosen, minlength=K)
        mean = np.bincount(rows.chosen, weights=rows.cost, minlength=K) / np.maximum(counts, 1)
        fallback = np.full(K, float(rows.cost.mean()))
        if rows.est_costs is not None and rows.est_costs.shape == (len(rows), K):
            fallback = rows.est_costs.mean(0)
        return np.where(counts > 0, mean, fallback)

    def _choose_mu(self, p_hat: np.ndarray, gamma: np.ndarray) -> float:
        """The μ whose decisions have the best rank score on the log: accuracy = the DR value of the choices, cost =
        their mean model cost, bounds = the cheapest and dearest model's mean cost (ties: the smaller μ)."""
        pos = self.cost_[self.cost_ > 0]
        if not len(pos):
            return 0.0
        typical = float(np.median(pos))
        best = None
        for t in MU_GRID:
            choice = self._decide(p_hat, t / typical).argmax(1)
            acc = float(gamma[np.arange(len(choice)), choice].mean())
            s = rank_score(acc, float(self.cost_[choice].mean()), float(pos.min()), float(pos.max()), self.beta)
            if best is None or s > best[0] + 1e-12:
                best = (s, t / typical)
        return best[1]

    def _decide(self, p: np.ndarray, mu: float | None = None) -> np.ndarray:
        mu = self.mu if mu is None else mu
        if math.isinf(mu):
            return -self.cost_[None, :] + 1e-9 * p  # λ = inf: the cheapest model, the reward breaking ties
        return p - mu * self.cost_[None, :]

    def predict_reward(self, rows: Requests) -> np.ndarray:
        """(n, K) the expected reward of each model on these requests."""
        self._check_inputs(rows)
        return self._design(self._features(rows), rows.datasets) @ self.coef_ + self.intercept_

    def predict_scores(self, rows: Requests) -> np.ndarray:
        return self._decide(self.predict_reward(rows))

    # ------------------------------------------------------------ persistence
    @classmethod
    def load(cls, path: Path) -> "OffPolicyRouter":
        router = super().load(path)
        router.mu = float(router.mu_) if router.mu_mode == "auto" or math.isfinite(router.mu) else router.mu
        router.dataset_keys_ = np.asarray(router.dataset_keys_).astype(str).reshape(-1)
        return router
