"""Bandit replay: a benchmark's rows as a stream of requests, where a router sees only the outcome of the model it
picks (scripts/bandit_replay.py; README "Learning from feedback").

At step t the router picks a model a_t for request i_t and observes Y[i_t, a_t] and C[i_t, a_t], nothing else. Its
utility is u_t = Y[i_t, a_t] − μ·C[i_t, a_t] / scale (scale: the dearest model's mean cost; one μ for every
router), and its regret the cumulative utility of the full-information reference minus its own. Routers:

* `linucb`: disjoint LinUCB, a ridge regression of correctness per model on [PCA features, dataset one-hot, 1],
  picking argmax θ_kᵀz + α·sqrt(zᵀA_k⁻¹z) − μ·ĉ_k/scale, updated after every request.
* `thompson`: Bayesian linear regression per model on the same z, a posterior draw per request.
* `cal_partial`: vlrb_cal's pieces (empirical-Bayes priors, offset logistic regression on PCA features;
  vlrb/routers/calibrated.py) fitted per model on the rows where that model was chosen, refitted every B requests;
  greedy in between. `cal_eps`: the same, ε-greedy.
* `full_info` (the reference): the same pieces fitted on every request seen so far with all models' labels,
  refitted at the same points: what one would learn if every model answered every request.

Before the first refit, the refitted routers pick uniformly at random. Each router's final state is scored on the
benchmark's test split. The PCA and the per-model cost estimates ĉ (mean $ on the train split: public prices) are
known up front; no test row is ever in the stream.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlrb.routers.calibrated import Priors, _logit, _sigmoid, fit_offset_logistic

BANDITS = ("linucb", "thompson", "cal_partial", "cal_eps", "full_info")


@dataclass
class Stream:
    """What every router may read: per-row features (Z: PCA, X: fused), dataset and group hints; the costs."""

    Z: np.ndarray  # (N, q) PCA-reduced features of every row (stream and test)
    datasets: np.ndarray  # (N,) str
    groups: np.ndarray  # (N,) str
    cost_hat: np.ndarray  # (K,) per-model mean $ known up front
    scale: float  # the dearest model's mean $: μ·c/scale is in probability points
    mu: float
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, str))  # dataset one-hot columns

    def design(self, rows) -> np.ndarray:
        """[Z, dataset one-hot, 1] of rows (the linear bandits' context)."""
        onehot = (self.datasets[rows][:, None] == self.keys[None, :]).astype(np.float64)
        return np.hstack([self.Z[rows], onehot, np.ones((len(np.atleast_1d(rows)), 1))])

    @property
    def penalty(self) -> np.ndarray:
        return self.mu * self.cost_hat / self.scale


class Uniform:
    """Random choices (also every refitted router's choice before its first refit)."""

    name = "random"

    def __init__(self, K: int, rng: np.random.Generator):
        self.K, self.rng = K, rng

    def act(self, i: int) -> int:
        return int(self.rng.integers(self.K))

    def observe(self, i: int, k: int, y: float, y_all: np.ndarray) -> None:
        pass

    def refit(self, seen: np.ndarray) -> None:
        pass

    def route(self, rows: np.ndarray) -> np.ndarray:
        return self.rng.integers(self.K, size=len(rows))


class LinUCB:
    """Disjoint LinUCB (Li et al., 2010) with ridge prior `ridge` and bonus `alpha`; Thompson sampling with
    `thompson=True` (draws θ_k ~ N(θ̂_k, v²·A_k⁻¹))."""

    def __init__(self, s: Stream, K: int, rng: np.random.Generator, alpha: float = 0.5, ridge: float = 1.0,
                 thompson: bool = False, v: float = 0.3):
        self.s, self.K, self.rng, self.alpha, self.v, self.thompson = s, K, rng, alpha, v, thompson
        self.name = "thompson" if thompson else "linucb"
        d = s.design(np.arange(1)).shape[1]
        self.A_inv = np.stack([np.eye(d) / ridge] * K)
        self.b = np.zeros((K, d))
        self.theta = np.zeros((K, d))
        self.chol = np.stack([np.linalg.cholesky(a) for a in self.A_inv])

    def act(self, i: int) -> int:
        z = self.s.design(np.array([i]))[0]
        if self.thompson:
            theta = self.theta + self.v * np.einsum("kij,kj->ki", self.chol, self.rng.standard_normal(self.theta.shape))
            score = theta @ z
        else:
            score = self.theta @ z + self.alpha * np.sqrt(np.einsum("i,kij,j->k", z, self.A_inv, z))
        return int(np.argmax(score - self.s.penalty))

    def observe(self, i: int, k: int, y: float, y_all: np.ndarray) -> None:
        z = self.s.design(np.array([i]))[0]
        Az = self.A_inv[k] @ z
        self.A_inv[k] -= np.outer(Az, Az) / (1.0 + z @ Az)  # Sherman–Morrison
        self.b[k] += y * z
        self.theta[k] = self.A_inv[k] @ self.b[k]
        if self.thompson:
            self.chol[k] = np.linalg.cholesky(self.A_inv[k] + 1e-12 * np.eye(len(z)))

    def refit(self, seen: np.ndarray) -> None:
        pass

    def route(self, rows: np.ndarray) -> np.ndarray:
        return np.argmax(self.s.design(rows) @ self.theta.T - self.s.penalty, 1)


class Calibrated:
    """vlrb_cal's priors + offset logistic regressions (fixed L2 `alpha`), refitted on what was observed: per model
    on the rows where it was chosen (`full=False`), or on every seen row with all labels (`full=True`, the
    reference). ε-greedy with `epsilon` > 0; uniform before the first refit."""

    def __init__(self, s: Stream, K: int, rng: np.random.Generator, *, full: bool = False, epsilon: float = 0.0,
                 alpha: float = 100.0, name: str = "cal_partial"):
        self.s, self.K, self.rng, self.full, self.epsilon, self.alpha, self.name = s, K, rng, full, epsilon, alpha, name
        self.obs_rows: list[int] = []
        self.obs_arm: list[int] = []
        self.obs_y: list[float] = []
        self.Y_rows: dict[int, np.ndarray] = {}
        self.models: list | None = None  # per model: (priors, w, b), or None before the first refit

    def act(self, i: int) -> int:
        if self.models is None or (self.epsilon and self.rng.random() < self.epsilon):
            return int(self.rng.integers(self.K))
        return int(np.argmax(self.scores(np.array([i]))[0]))

    def observe(self, i: int, k: int, y: float, y_all: np.ndarray) -> None:
        self.obs_rows.append(i)
        self.obs_arm.append(k)
        self.obs_y.append(y)
        if self.full:
            self.Y_rows[i] = y_all

    def refit(self, seen: np.ndarray) -> None:
        s = self.s
        if self.full:
            rows = np.asarray(self.obs_rows)
            Y = np.stack([self.Y_rows[i] for i in rows]).astype(np.float64)
            pri = Priors().fit(Y, s.groups[rows], s.datasets[rows])
            off = _logit(pri.rates(s.groups[rows], s.datasets[rows]))
            w, b = fit_offset_logistic(s.Z[rows], Y, off, self.alpha)
            self.models = [("all", pri, w, b)]
            return
        rows, arm, y = np.asarray(self.obs_rows), np.asarray(self.obs_arm), np.asarray(self.obs_y, np.float64)
        overall = (y.sum() + 1.0) / (len(y) + 2.0)
        models = []
        for k in range(self.K):
            mine = rows[arm == k]
            if len(mine) < 2:  # nothing to fit yet: the pool's mean reward
                models.append(("const", overall, None, None))
                continue
            yk = y[arm == k][:, None]
            pri = Priors().fit(yk, s.groups[mine], s.datasets[mine])
            off = _logit(pri.rates(s.groups[mine], s.datasets[mine]))
            w, b = fit_offset_logistic(s.Z[mine], yk, off, self.alpha)
            models.append(("one", pri, w, b))
        self.models = models

    def correctness(self, rows: np.ndarray) -> np.ndarray:
        s = self.s
        g, d = s.groups[rows], s.datasets[rows]
        if self.models[0][0] == "all":
            _, pri, w, b = self.models[0]
            return _sigmoid(_logit(pri.rates(g, d)) + s.Z[rows] @ w + b)
        out = np.empty((len(rows), self.K))
        for k, (kind, pri, w, b) in enumerate(self.models):
            if kind == "const":
                out[:, k] = pri
            else:
                out[:, k] = _sigmoid(_logit(pri.rates(g, d))[:, 0] + (s.Z[rows] @ w)[:, 0] + b[0])
        return out

    def scores(self, rows: np.ndarray) -> np.ndarray:
        return self.correctness(rows) - self.s.penalty

    def route(self, rows: np.ndarray) -> np.ndarray:
        if self.models is None:
            return self.rng.integers(self.K, size=len(rows))
        return np.argmax(self.scores(rows), 1)


def make_routers(s: Stream, K: int, seed: int, names=BANDITS, *, epsilon: float = 0.1, alpha: float = 0.5,
                 v: float = 0.3) -> dict:
    """The routers `names` (BANDITS), each with its own seeded random stream."""
    made = {}
    for j, name in enumerate(names):
        rng = np.random.default_rng([seed, j])
        if name in ("linucb", "thompson"):
            made[name] = LinUCB(s, K, rng, alpha=alpha, thompson=name == "thompson", v=v)
        elif name == "cal_partial":
            made[name] = Calibrated(s, K, rng, name=name)
        elif name == "cal_eps":
            made[name] = Calibrated(s, K, rng, epsilon=epsilon, name=f"cal_eps (ε={epsilon:g})")
        elif name == "full_info":
            made[name] = Calibrated(s, K, rng, full=True, name="full_info")
        elif name == "random":
            made[name] = Uniform(K, rng)
        else:
            raise ValueError(f"unknown bandit router {name!r}; known: {BANDITS + ('random',)}")
    return made


def replay(routers: dict, order: np.ndarray, Y: np.ndarray, C: np.ndarray, s: Stream, every: int) -> dict:
    """Run every router over the requests `order` (row positions): act, observe its own outcome, refit every
    `every` requests. Returns {name: (T,) utilities per step}."""
    util = {name: np.empty(len(order)) for name in routers}
    for t, i in enumerate(order):
        for name, r in routers.items():
            k = r.act(int(i))
            u = float(Y[i, k]) - s.mu * float(C[i, k]) / s.scale
            util[name][t] = u
            r.observe(int(i), k, float(Y[i, k]), Y[i])
        if (t + 1) % every == 0:
            for r in routers.values():
                r.refit(order[: t + 1])
    return util


def regret_curves(util: dict, reference: str = "full_info") -> dict:
    """Cumulative regret of each router against `reference` (its utility minus theirs, summed over time)."""
    ref = util[reference]
    return {name: np.cumsum(ref - u) for name, u in util.items() if name != reference}


def pca(X: np.ndarray, fit_rows: np.ndarray, q: int, seed: int = 0) -> np.ndarray:
    """(N, q) principal components of X, fitted on `fit_rows` (unlabelled features: known before any feedback)."""
    from sklearn.utils.extmath import randomized_svd

    mean = X[fit_rows].mean(0)
    q = max(1, min(q, X.shape[1], len(fit_rows) - 1))
    _, _, vt = randomized_svd(X[fit_rows] - mean, q, n_iter=2, random_state=seed)
    Z = (X - mean) @ vt[:q].T
    return Z / max(float(Z[fit_rows].std()), 1e-12)  # unit scale: one ridge prior and bonus fit every benchmark


def stream_of(X, datasets, groups, C_train: np.ndarray, fit_rows: np.ndarray, *, mu: float, q: int = 32,
              seed: int = 0) -> Stream:
    """The shared inputs of a replay: PCA features, hints, and the per-model costs known up front."""
    cost_hat = np.asarray(C_train, np.float64).mean(0)
    ds = np.asarray(datasets).astype(str)
    return Stream(Z=pca(np.asarray(X, np.float64), fit_rows, q, seed), datasets=ds,
                  groups=np.asarray(groups).astype(str), cost_hat=cost_hat, scale=float(cost_hat.max()),
                  mu=float(mu), keys=np.unique(ds[fit_rows]))


def utility(Y: np.ndarray, C: np.ndarray, choices: np.ndarray, s: Stream) -> float:
    rows = np.arange(len(choices))
    return float((Y[rows, choices] - s.mu * C[rows, choices] / s.scale).mean())


__all__ = ["BANDITS", "Stream", "LinUCB", "Calibrated", "Uniform", "make_routers", "replay", "regret_curves",
           "stream_of", "utility"]
