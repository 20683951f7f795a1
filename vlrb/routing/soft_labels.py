"""Accuracy–cost-aware soft labels (docs/method.md#soft-labels; upstream routers/utils/soft_targets.py):
the one label definition every trainable router uses.

    t_i(m) = Y_im · g(C_im) / Σ_{j: Y_ij=1} g(C_ij)
    exp:   g(c) = exp(-λ·s·c)          power: g(c) = (s·c + 1e-12)^(-λ)

λ = 0 is uniform over the correct models, λ = ∞ a one-hot on the cheapest correct one. Samples that
no model answers get the `fallback` target. The cost scale s is a per-router setting: 100 for MLP,
RouterDC, CosineCls, ZOOTER and VLC upstream, 1.0 for the Linear router (its label builder passed none).
"""
from __future__ import annotations

import math

import numpy as np

SCHEMES = ("exp", "power")
FALLBACKS = ("cheapest", "cost_soft")
_POWER_EPS = 1e-12


def parse_lambda(lam: float | int | str) -> float:
    """λ from config or CLI: a float ≥ 0, or inf given as float('inf'), "inf", ".inf" (YAML) or "infinity"."""
    if isinstance(lam, str):
        s = lam.strip().lower().lstrip("+")
        if s in ("inf", ".inf", "infinity", "∞"):
            return math.inf
        try:
            value = float(s)
        except ValueError:
            raise ValueError(f"lambda must be a number >= 0 or 'inf', got {lam!r}") from None
    elif isinstance(lam, (int, float, np.integer, np.floating)) and not isinstance(lam, bool):
        value = float(lam)
    else:
        raise TypeError(f"lambda must be a number >= 0 or 'inf', got {lam!r} ({type(lam).__name__})")
    if math.isnan(value) or value < 0:
        raise ValueError(f"lambda must be >= 0 (or inf), got {lam!r}")
    return value


def _check(Y, C) -> tuple[np.ndarray, np.ndarray]:
    Y = np.asarray(Y)
    C = np.asarray(C, dtype=np.float64)
    if Y.ndim != 2 or Y.shape != C.shape:
        raise ValueError(f"Y and C must be N×K matrices of one shape; got Y {Y.shape} and C {C.shape}")
    if Y.shape[1] == 0:
        raise ValueError("Y and C have no model columns")
    if not np.isfinite(C).all() or (C < 0).any():
        raise ValueError("C must hold finite, non-negative costs ($ per sample)")
    return Y > 0, C


def hard_labels(Y, C) -> np.ndarray:
    """(N,) int64: the cheapest correct model per sample (ties → lowest index); argmin C when none is correct."""
    correct, C = _check(Y, C)
    idx = np.where(correct, C, np.inf).argmin(1)  # argmin returns the first minimum: lowest index wins ties
    none = ~correct.any(1)
    idx[none] = C[none].argmin(1)
    return idx.astype(np.int64)


def one_hot(idx: np.ndarray, k: int) -> np.ndarray:
    """(n, k) float32 rows with a 1 at column idx[i]."""
    out = np.zeros((len(idx), k), dtype=np.float32)
    out[np.arange(len(idx)), idx] = 1.0
    return out


def _shifted_softmax(cost_term: np.ndarray, mask: np.ndarray, factor: float) -> np.ndarray:
    """Row softmax of -factor·cost_term over `mask`, computed in log space.

    The row minimum is subtracted *before* multiplying by λ·s: the best entry's logit is then exactly 0,
    so exp never overflows and the normaliser is ≥ 1 for any λ, however extreme the costs (no NaN/inf).
    """
    masked = np.where(mask, cost_term, np.inf)
    shift = masked.min(1, keepdims=True)
    with np.errstate(over="ignore", invalid="ignore"):
        logits = np.where(mask, -factor * (cost_term - shift), -np.inf)
    logits[np.isnan(logits)] = -np.inf  # 0·∞ cannot occur after the shift, but never let a NaN through
    w = np.exp(logits)
    return w / w.sum(1, keepdims=True)


def soft_labels(Y, C, lam: float | str, cost_scale: float = 100.0, scheme: str = "exp",
                fallback: str = "cheapest") -> np.ndarray:
    """(N, K) float32 targets, each row summing to 1 (docs/method.md#soft-labels)."""
    lam = parse_lambda(lam)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if not (cost_scale > 0 and math.isfinite(cost_scale)):
        raise ValueError(f"cost_scale must be a positive number, got {cost_scale!r}")
    correct, C = _check(Y, C)
    n, k = C.shape
    factor = lam * (cost_scale if scheme == "exp" else 1.0)
    if not math.isfinite(factor):  # λ = ∞ (or a λ·s that overflows): the hard limit, exactly
        return one_hot(hard_labels(correct, C), k)

    # log g(c) = -λ·s·c (exp) or -λ·log(s·c + ε) (power); `factor` carries λ (and s for exp)
    cost_term = C if scheme == "exp" else np.log(cost_scale * C + _POWER_EPS)
    out = np.empty((n, k), dtype=np.float64)
    has = correct.any(1)
    out[has] = _shifted_softmax(cost_term[has], correct[has], factor)
    none = ~has
    if none.any():
        if fallback == "cheapest":
            out[none] = one_hot(C[none].argmin(1), k)
        else:  # 'cost_soft': softmax of -λ·s·C over all models (unused upstream, kept for completeness)
            out[none] = _shifted_softmax(cost_term[none], np.ones((int(none.sum()), k), bool), factor)
    return out.astype(np.float32)


def label_diagnostics(targets, Y, C) -> dict[str, float]:
    """How peaked the labels are (after upstream's `analyze_soft_targets`); logged with every training run.

    Entropy in nats; `effective_models` = mean of exp(entropy); the cheapest-correct mass is averaged over
    samples that have a correct model; `models_above_1pct` counts models with t > 0.01 per sample.
    """
    t = np.asarray(targets, dtype=np.float64)
    correct, C = _check(Y, C)
    if t.shape != C.shape:
        raise ValueError(f"targets {t.shape} do not match Y/C {C.shape}")
    if len(t) == 0:
        raise ValueError("label diagnostics of an empty set of samples")
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(t > 0, t * np.log(t), 0.0).sum(1)
    has = correct.any(1)
    mass = t[np.arange(len(t)), hard_labels(correct, C)][has]
    return {
        "entropy_mean": float(ent.mean()),
        "entropy_std": float(ent.std()),
        "effective_models": float(np.exp(ent).mean()),
        "cheapest_correct_mass_mean": float(mass.mean()) if len(mass) else float("nan"),
        "cheapest_correct_mass_median": float(np.median(mass)) if len(mass) else float("nan"),
        "no_correct_share": float((~has).mean()),
        "models_above_1pct": float((t > 0.01).sum(1).mean()),
        "n_samples": int(len(t)),
    }
