"""The budget rule: one knob μ trades the router's confidence against each model's estimated price.

    choice = argmax_k  log p_k − μ · c_k / scale,     p = softmax(router scores)

μ = 0 is the router's own choice (the argmax of its scores); a larger μ buys cheaper models, a negative μ
spends more for likelier ones. c_k is the estimated $ of sending the request to model k and `scale` the
dearest model's mean cost, so μ carries no unit: at μ = 1, a model costing as much as the dearest one must
be e times likelier than a free one to be chosen. The chosen cost falls as μ grows (for every request),
which is what lets `calibrate` find μ for a target $/request by bisection.

Cost estimates (`budget.cost_estimate`):
  mean_cost  each model's mean $ per request on the router's training split (the same for every request;
             `calibrate` uses the same numbers, so a calibrated μ means the same thing when serving);
  tokens     prices × tokens: the request's input tokens (cl100k_base tokens of its text + 256 per image,
             the benchmark's rule) and its `max_tokens` (else `budget.output_tokens`) output tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from vlrb.errors import ConfigError

REFERENCE_INPUT_TOKENS = 1000  # the scale of a router without mean costs: a request of this size


@dataclass(frozen=True)
class CostModel:
    models: tuple[str, ...]
    mode: str  # mean_cost | tokens
    mean_cost: np.ndarray | None  # (K,) $ per request
    price_in: np.ndarray | None  # (K,) $ per 1M input tokens
    price_out: np.ndarray | None  # (K,) $ per 1M output tokens
    output_tokens: int = 256

    @classmethod
    def for_router(cls, models: Sequence[str], prices: dict | None, mean_cost: dict | None, *,
                   mode: str = "mean_cost", output_tokens: int = 256) -> "CostModel":
        """From a trained router's `.prices` and `.mean_cost` (see vlrb.artifact); a ConfigError names what is missing."""
        models = tuple(models)
        mc = pin = pout = None
        if mean_cost and all(m in mean_cost for m in models):
            mc = np.array([float(mean_cost[m]) for m in models])
        if prices and all(m in prices for m in models):
            pin = np.array([float(prices[m]["input_per_1m"]) for m in models])
            pout = np.array([float(prices[m]["output_per_1m"]) for m in models])
        if mode == "mean_cost" and mc is None:
            raise ConfigError("budget.cost_estimate=mean_cost: the router's artifact.json has no mean cost for every "
                              "model" + ("; use budget.cost_estimate=tokens (it has prices)" if pin is not None else ""))
        if mode == "tokens" and pin is None:
            raise ConfigError("budget.cost_estimate=tokens: the router's artifact.json has no prices for every model"
                              + ("; use budget.cost_estimate=mean_cost" if mc is not None else ""))
        if mode not in ("mean_cost", "tokens"):
            raise ConfigError(f"budget.cost_estimate must be mean_cost or tokens, got {mode!r}")
        return cls(models, mode, mc, pin, pout, int(output_tokens))

    @property
    def scale(self) -> float:
        """The dearest model's mean cost (μ's unit); without mean costs, the dearest price of a reference request."""
        if self.mean_cost is not None and self.mean_cost.max() > 0:
            return float(self.mean_cost.max())
        if self.price_in is not None:
            c = (REFERENCE_INPUT_TOKENS * self.price_in + self.output_tokens * self.price_out) / 1e6
            if c.max() > 0:
                return float(c.max())
        return 1.0

    def estimate(self, input_tokens: Sequence[int] | np.ndarray, output_tokens=None) -> np.ndarray:
        """(n, K) estimated $ per request. `output_tokens`: per request (None entries: the default)."""
        n = len(input_tokens)
        if self.mode == "mean_cost":
            return np.broadcast_to(self.mean_cost, (n, len(self.models))).astype(np.float64)
        tin = np.asarray(input_tokens, dtype=np.float64)
        if output_tokens is None:
            tout = np.full(n, float(self.output_tokens))
        else:
            tout = np.array([self.output_tokens if t is None else float(t) for t in output_tokens])
        return (tin[:, None] * self.price_in + tout[:, None] * self.price_out) / 1e6


def log_softmax(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    s = s - s.max(1, keepdims=True)
    return s - np.log(np.exp(s).sum(1, keepdims=True))


def utility(scores: np.ndarray, costs: np.ndarray, mu, scale: float) -> np.ndarray:
    """(n, K) log p_k − μ·c_k/scale; `mu` a number or one per row."""
    mu = np.asarray(mu, dtype=np.float64).reshape(-1, 1) if np.ndim(mu) else float(mu)
    return log_softmax(scores) - mu * np.asarray(costs, dtype=np.float64) / scale


def choose(scores: np.ndarray, costs: np.ndarray, mu, scale: float) -> np.ndarray:
    """(n,) chosen model index per row (the first maximum on ties, as the routers' own argmax)."""
    return utility(scores, costs, mu, scale).argmax(1)


@dataclass(frozen=True)
class Decision:
    """One request's routing: the models in preference order (the first is the choice, the rest the fallbacks)."""

    order: list[str]
    scores: dict[str, float]
    costs: dict[str, float]
    mu: float
    propensity: float = 1.0  # P(the policy picked order[0]) (vlrb.serve.explore; 1 under the rule alone)
    policy: str = "greedy"
    request_id: str = ""
    features: Any = field(default=None, compare=False, repr=False)  # the (D,) features the router read, if any

    @property
    def model(self) -> str:
        return self.order[0]

    @property
    def cost(self) -> float:
        return self.costs[self.model]


def decide(models: Sequence[str], scores: np.ndarray, costs: np.ndarray, mu: float, scale: float,
           allowed: Sequence[str] | None = None) -> Decision:
    """The decision for one request (`scores`, `costs`: (K,)); only `allowed` models (e.g. those with an
    upstream) are candidates, ordered by the rule's value (stable: ties keep the router's model order)."""
    u = utility(np.asarray(scores)[None], np.asarray(costs)[None], mu, scale)[0]
    keep = [j for j, m in enumerate(models) if allowed is None or m in allowed]
    order = sorted(keep, key=lambda j: -u[j])
    return Decision(order=[models[j] for j in order],
                    scores={m: float(s) for m, s in zip(models, scores)},
                    costs={m: float(c) for m, c in zip(models, costs)}, mu=float(mu))
