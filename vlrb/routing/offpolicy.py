"""Learning and evaluating from logged traffic: partial labels and the off-policy corrections (docs/method.md).

A served router's log holds, per request, the model its policy chose (a_i), the probability the policy had of
choosing it (p_i, the propensity) and the reward that model's answer got (r_i): only the chosen model's outcome is
known. `Feedback` carries such rows to a router (`Router.learns_from == "feedback"`); the estimators below value a
new policy π on them without bias where the logging policy could have chosen what π chooses:

    IPS   V̂ = 1/n Σ_i π(a_i | x_i) / p_i · r_i
    SNIPS the same, divided by 1/n Σ_i π(a_i | x_i) / p_i (less variance, a small bias)
    DR    V̂ = 1/n Σ_i [ Σ_k π(k | x_i) r̂_k(x_i) + π(a_i | x_i) / p_i · (r_i − r̂_{a_i}(x_i)) ]

with r̂ a direct model of the reward (unbiased when either r̂ or the propensities are right). The doubly robust
pseudo-outcomes Γ_ik = r̂_k(x_i) + 1[a_i = k] / p_i · (r_i − r̂_k(x_i)) have E[Γ_ik | x_i] = E[r_k | x_i]: a full
(n, K) label matrix to regress on, one column per model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlrb.data.benchmark import Requests


@dataclass(kw_only=True)
class Feedback(Requests):
    """Logged requests with partial labels: row i's features (X), the chosen model, its propensity, reward and cost.
    Routers that learn from it declare `learns_from = "feedback"` (train.py data=feedback)."""

    chosen: np.ndarray  # (n,) int index into `models`
    propensity: np.ndarray  # (n,) in (0, 1]: P(the logging policy chose `chosen`)
    reward: np.ndarray  # (n,) in [0, 1]
    cost: np.ndarray  # (n,) $ of the chosen call
    est_costs: np.ndarray | None = None  # (n, K) the logging side's cost estimate of every model, when logged
    name: str = "feedback"

    def __post_init__(self):
        super().__post_init__()
        n, k = len(self.idx), len(self.models)
        self.chosen = np.asarray(self.chosen, np.int64)
        self.propensity = np.asarray(self.propensity, np.float64)
        self.reward = np.asarray(self.reward, np.float64)
        self.cost = np.asarray(self.cost, np.float64)
        for key in ("chosen", "propensity", "reward", "cost"):
            if len(getattr(self, key)) != n:
                raise ValueError(f"feedback: {key} has {len(getattr(self, key))} rows for {n} requests")
        if n and (self.chosen.min() < 0 or self.chosen.max() >= k):
            raise ValueError(f"feedback: chosen model indices must be in [0, {k})")
        if n and not ((self.propensity > 0) & (self.propensity <= 1)).all():
            raise ValueError("feedback: propensities must be in (0, 1]")
        if n and not ((self.reward >= 0) & (self.reward <= 1)).all():
            raise ValueError("feedback: rewards must be in [0, 1]")

    @classmethod
    def from_split(cls, split, features: bool = True) -> "Feedback":
        """A labelled split as a log in which every model was chosen, with certainty, for every row (full
        information: each (row, model) pair is one logged request with propensity 1); `features=False` leaves X
        out (K copies of it are large)."""
        n, K = np.shape(split.Y)
        rows, arms = np.repeat(np.arange(n), K), np.tile(np.arange(K), n)
        return cls(idx=np.asarray(split.idx)[rows], models=list(split.models), X=None if split.X is None or not features
                   else split.X[rows], sample_ids=np.asarray(split.sample_ids)[rows],
                   datasets=np.asarray(split.datasets)[rows], groups=np.asarray(split.groups)[rows], chosen=arms,
                   propensity=np.ones(n * K), reward=np.asarray(split.Y, np.float64)[rows, arms],
                   cost=np.asarray(split.C, np.float64)[rows, arms], name=split.name)

    def take(self, rows: np.ndarray) -> "Feedback":
        """The rows `rows` (positions or a mask), every per-row field cut alike."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        cut = {k: getattr(self, k)[rows] for k in ("idx", "sample_ids", "datasets", "groups", "input_tokens",
                                                    "answer_format", "n_options", "chosen", "propensity", "reward",
                                                    "cost")}
        return Feedback(**cut, models=self.models, X=None if self.X is None else self.X[rows],
                        est_costs=None if self.est_costs is None else self.est_costs[rows], name=self.name)


def as_policy(choices_or_probs, n: int, k: int) -> np.ndarray:
    """(n, K) action probabilities from (n,) chosen indices (a deterministic policy) or (n, K) probabilities."""
    a = np.asarray(choices_or_probs)
    if a.ndim == 1:
        if len(a) != n:
            raise ValueError(f"{len(a)} choices for {n} logged requests")
        out = np.zeros((n, k))
        out[np.arange(n), a.astype(np.int64)] = 1.0
        return out
    if a.shape != (n, k) or not np.allclose(a.sum(1), 1.0, atol=1e-6) or (a < 0).any():
        raise ValueError(f"a stochastic policy is an ({n}, {k}) table of probabilities summing to 1 per row")
    return a.astype(np.float64)


def _weights(policy: np.ndarray, chosen: np.ndarray, propensity: np.ndarray, clip: float | None) -> np.ndarray:
    """π(a_i | x_i) / p_i, with p_i floored at `clip` (bounded variance, a small bias where p_i is below it)."""
    p = np.maximum(propensity, clip) if clip else propensity
    return policy[np.arange(len(chosen)), chosen] / p


def ips_value(policy, chosen, propensity, reward, *, clip: float | None = None) -> float:
    """Inverse propensity scoring: the mean reward `policy` would have got on the logged requests."""
    chosen = np.asarray(chosen, np.int64)
    pi = as_policy(policy, len(chosen), int(np.max(chosen)) + 1 if np.ndim(policy) == 1 else np.shape(policy)[1])
    return float(np.mean(_weights(pi, chosen, np.asarray(propensity, float), clip) * np.asarray(reward, float)))


def snips_value(policy, chosen, propensity, reward, *, clip: float | None = None) -> float:
    """Self-normalised IPS: IPS divided by the mean importance weight (NaN when the policy never agrees)."""
    chosen = np.asarray(chosen, np.int64)
    pi = as_policy(policy, len(chosen), int(np.max(chosen)) + 1 if np.ndim(policy) == 1 else np.shape(policy)[1])
    w = _weights(pi, chosen, np.asarray(propensity, float), clip)
    return float((w * np.asarray(reward, float)).sum() / w.sum()) if w.sum() > 0 else float("nan")


def dr_pseudo_outcomes(r_hat: np.ndarray, chosen, propensity, reward, *, clip: float | None = None) -> np.ndarray:
    """(n, K) Γ_ik = r̂_ik + 1[a_i = k] / p_i · (r_i − r̂_ik): an unbiased estimate of every model's reward."""
    r_hat = np.asarray(r_hat, np.float64)
    n = len(r_hat)
    chosen = np.asarray(chosen, np.int64)
    p = np.asarray(propensity, np.float64)
    p = np.maximum(p, clip) if clip else p
    gamma = r_hat.copy()
    rows = np.arange(n)
    gamma[rows, chosen] += (np.asarray(reward, np.float64) - r_hat[rows, chosen]) / p
    return gamma


def dr_value(policy, r_hat: np.ndarray, chosen, propensity, reward, *, clip: float | None = None) -> float:
    """Doubly robust value of `policy` (choices or probabilities) with the direct model r̂ (n, K)."""
    r_hat = np.asarray(r_hat, np.float64)
    pi = as_policy(policy, *r_hat.shape)
    gamma = dr_pseudo_outcomes(r_hat, chosen, propensity, reward, clip=clip)
    return float((pi * gamma).sum(1).mean())
