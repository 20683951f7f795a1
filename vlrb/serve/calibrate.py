"""Budgets: find the μ of the budget rule (vlrb.serve.decide) that spends a target average $ per request.

μ is chosen on dev (the router's dev scores, the cost estimates the server uses, and the dev requests' real
costs C); test reports what that μ achieves: its average cost next to the target, and its accuracy. A small
dev split makes the achieved cost noisy: the cost at a given μ is set by how many requests go to each model,
and on 140 dev requests (the demo) the share of one dear model alone is uncertain by ±15% or so. Calibrating
on train + dev (`calibrate_on=[train,dev]`) uses more requests, at the price of scores the router has fitted
(a k-NN router is exact on its own training rows, so keep dev-only for it).
Every request's chosen cost falls as μ grows, so the dev cost is a non-increasing step function of μ and a
bisection finds where it crosses the target.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from vlrb.serve.decide import choose

MU_LIMIT = 1e7  # |μ| beyond this changes nothing that matters (c/scale differences are >= ~1e-6)
CURVE_MUS = np.concatenate([-np.logspace(3, -2, 101), [0.0], np.logspace(-2, 3, 101)])


@dataclass(frozen=True)
class Routed:
    """One split as the budget rule sees it: router scores, estimated costs, and the real C and Y."""

    scores: np.ndarray  # (n, K)
    estimate: np.ndarray  # (n, K) $ the server would estimate
    C: np.ndarray  # (n, K) $ actually spent
    Y: np.ndarray  # (n, K) correctness

    @classmethod
    def concat(cls, parts: Sequence["Routed"]) -> "Routed":
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("scores", "estimate", "C", "Y")))

    def outcomes(self, mu: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Per request: ($ spent, correct) under the rule at μ."""
        j = choose(self.scores, self.estimate, mu, scale)
        rows = np.arange(len(j))
        return self.C[rows, j], self.Y[rows, j]

    def at(self, mu: float, scale: float) -> tuple[float, float]:
        """(average $ per request, accuracy) of the rule at μ."""
        cost, correct = self.outcomes(mu, scale)
        return float(cost.mean()), float(correct.mean())


def mean_ci(values: np.ndarray, n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of a mean over requests: how far the achieved cost may move by sampling alone."""
    from vlrb.routing.metrics import bootstrap_indices  # the resamples every other CI of vlrb uses

    values = np.asarray(values, np.float64)
    means = values[bootstrap_indices(len(values), n, seed)].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def solve_mu(calib: Routed, target: float, scale: float, iters: int = 80) -> float:
    """The μ whose cost on the calibration rows is nearest `target`: bisection at the step where that cost
    crosses it (a target out of reach gives the μ of the cheapest or dearest reachable cost)."""
    def cost(mu: float) -> float:
        return calib.at(mu, scale)[0]

    if cost(0.0) >= target:  # spend less: μ >= 0
        lo, hi = 0.0, 1.0
        while cost(hi) > target and hi < MU_LIMIT:
            lo, hi = hi, hi * 4
    else:  # spend more: μ < 0
        lo, hi = -1.0, 0.0
        while cost(lo) < target and lo > -MU_LIMIT:
            lo, hi = lo * 4, lo
    for _ in range(iters):  # invariant: cost(lo) >= target >= cost(hi), unless out of reach
        mid = (lo + hi) / 2
        if cost(mid) > target:
            lo = mid
        else:
            hi = mid
    return lo if abs(cost(lo) - target) < abs(cost(hi) - target) else hi


def calibrate(calib: Routed, test: Routed, targets: Sequence[float], scale: float,
              labels: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per target $/request: μ (from `calib`, the dev rows), its cost and accuracy there and on test,
    the test cost's relative error against the target, and the test cost's 95% bootstrap CI over test requests
    (the spread sampling alone gives the achieved cost at that μ: on a few hundred requests it is ±10% or more
    when a share of them goes to a dear model)."""
    rows = []
    lo_cost, hi_cost = reachable(calib, scale)
    for i, target in enumerate(targets):
        if not lo_cost * (1 - 1e-9) <= target <= hi_cost * (1 + 1e-9):  # no μ spends that: say so, invent nothing
            rows.append({"target": labels[i] if labels else f"{target:.6g}", "target_cost": float(target),
                         "mu": np.nan, "reachable": False, "reachable_lo": lo_cost, "reachable_hi": hi_cost})
            continue
        mu = solve_mu(calib, float(target), scale)
        calib_cost, calib_acc = calib.at(mu, scale)
        spent, correct = test.outcomes(mu, scale)
        test_cost, (lo, hi) = float(spent.mean()), mean_ci(spent)
        rows.append({"target": labels[i] if labels else f"{target:.6g}", "target_cost": float(target), "mu": mu,
                     "calib_cost": calib_cost, "calib_accuracy": calib_acc, "test_cost": test_cost,
                     "test_accuracy": float(correct.mean()),
                     "test_cost_error": test_cost / target - 1 if target else np.nan,
                     "test_cost_lo": lo, "test_cost_hi": hi, "reachable": True,
                     "reachable_lo": lo_cost, "reachable_hi": hi_cost})
    return pd.DataFrame(rows)


def reachable(calib: Routed, scale: float) -> tuple[float, float]:
    """The lowest and highest average $ per request any μ gives on the calibration rows (μ → +∞: every request's
    cheapest allowed model; μ → −∞: its dearest)."""
    return calib.at(MU_LIMIT, scale)[0], calib.at(-MU_LIMIT, scale)[0]


def budget_curve(calib: Routed, test: Routed, scale: float, mus: Sequence[float] = CURVE_MUS) -> pd.DataFrame:
    rows = []
    for mu in mus:
        dc, da = calib.at(float(mu), scale)
        tc, ta = test.at(float(mu), scale)
        rows.append({"mu": float(mu), "calib_cost": dc, "calib_accuracy": da, "test_cost": tc, "test_accuracy": ta})
    return pd.DataFrame(rows)


def plot_budget_curve(curve: pd.DataFrame, table: pd.DataFrame, path: str | Path, title: str = "",
                      calib_label: str = "dev") -> Path:
    """Accuracy (top) and average cost (bottom) against μ, calibration rows dashed and test solid; each target's
    calibrated μ marked, with its target cost as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    from vlrb.eval.leaderboard import PER_10K
    from vlrb.io import write_with

    table = table[table["reachable"]] if "reachable" in table else table  # an unreachable target has no μ to draw
    mus = pd.concat([curve["mu"], table["mu"]])
    fig, (ax_acc, ax_cost) = plt.subplots(2, 1, figsize=(8, 7), dpi=120, sharex=True)
    for split, style, label in (("calib", "--", calib_label), ("test", "-", "test")):
        ax_acc.plot(curve["mu"], curve[f"{split}_accuracy"] * 100, style, c="C0", label=label)
        ax_cost.plot(curve["mu"], curve[f"{split}_cost"] * PER_10K, style, c="C1", label=label)
    for i, r in enumerate(table.itertuples()):
        color = f"C{2 + i % 8}"
        ax_cost.axhline(r.target_cost * PER_10K, ls=":", c=color, lw=1)
        for ax, y in ((ax_acc, r.test_accuracy * 100), (ax_cost, r.test_cost * PER_10K)):
            ax.axvline(r.mu, ls=":", c=color, lw=1)
            ax.scatter([r.mu], [y], c=color, s=30, zorder=3, label=f"target {r.target}" if ax is ax_cost else None)
    lin = max(1e-3, float(np.abs(mus[mus != 0]).min()) if (mus != 0).any() else 1e-2)
    for ax in (ax_acc, ax_cost):
        ax.set_xscale("symlog", linthresh=lin)
        ax.grid(alpha=0.3)
    ax_cost.set_yscale("log")
    ax_acc.set_ylabel("accuracy (%)")
    ax_cost.set_ylabel("average cost ($ per 10K requests)")
    ax_cost.set_xlabel("μ (budget knob: argmax log p − μ·c/scale)")
    ax_acc.legend(fontsize=8)
    ax_cost.legend(fontsize=7, ncol=2)
    ax_acc.set_title(title or "Budget curve")
    fig.tight_layout()
    path = Path(path)
    write_with(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return path
