"""Accuracy–cost Pareto plot: single models as labelled points, each router's λ sweep as a curve, the
Oracle as a star. Cost in $ per 10K samples on a log axis, accuracy in %."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vlrb.eval.leaderboard import PER_10K, fmt_lambda
from vlrb.io import write_with


def pareto_front(cost: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (no other point is cheaper-or-equal and more accurate), by cost."""
    order = np.lexsort((-acc, cost))
    best, keep = -np.inf, []
    for i in order:  # over a handful of points (models), not samples
        if acc[i] > best:
            keep.append(i)
            best = acc[i]
    return np.asarray(keep, dtype=int)


# one colour per router in every plot, whatever else a leaderboard holds (tab10, then Dark2); others hash in
ROUTER_ORDER = ("linear", "mlp", "knn", "prknn", "ovr", "kmeans", "routerdc", "cosinecls", "zooter", "vlc",
                "per_dataset", "random", "cheapest", "strongest", "vlrb_cal")


def router_colour(name: str):
    import zlib

    from matplotlib import colormaps

    base = name.split(" (")[0]  # "strongest (run)" keeps strongest's colour
    i = ROUTER_ORDER.index(base) if base in ROUTER_ORDER else zlib.crc32(base.encode()) % 18
    return colormaps["tab10"](i) if i < 10 else colormaps["Dark2"](i - 10)


def merged_labels(x: np.ndarray, y: np.ndarray, labels: list[str], dx: float = 0.03, dy: float = 1.0):
    """[(x, y, "label, label")]: points closer than dx in log10(cost) and dy in accuracy share one label,
    so λ values that land on the same spot do not print over each other."""
    groups: list[list[int]] = []
    for i in np.argsort(x):
        for g in groups:
            j = g[-1]
            if abs(np.log10(x[i]) - np.log10(x[j])) < dx and abs(y[i] - y[j]) < dy:
                g.append(i)
                break
        else:
            groups.append([i])
    return [(x[g[0]], y[g[0]], ", ".join(labels[i] for i in g)) for g in groups]


def pareto_plot(leaderboard: pd.DataFrame, single_models: pd.DataFrame | None, path: str | Path,
                title: str = "Accuracy vs cost (test split)") -> Path:
    """Write the PNG and return its path. `single_models` has columns model, accuracy, avg_cost."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    if single_models is not None and len(single_models):
        x = single_models["avg_cost"].to_numpy() * PER_10K
        y = single_models["accuracy"].to_numpy() * 100
        ax.scatter(x, y, s=22, c="0.55", zorder=2, label="single models")
        front = pareto_front(x, y)
        ax.plot(x[front], y[front], ls=":", c="0.55", lw=1, zorder=1, label="single-model frontier")
        for xi, yi, name in zip(x, y, single_models["model"]):
            ax.annotate(str(name), (xi, yi), xytext=(3, 3), textcoords="offset points", fontsize=6.5, color="0.35")

    if "kind" in leaderboard:  # the best single model is already a grey point among the single models
        leaderboard = leaderboard[leaderboard["kind"] != "reference"]
    routers = [r for r in dict.fromkeys(leaderboard["router"]) if r != "oracle"]
    for name in routers:
        d = leaderboard[leaderboard["router"] == name].sort_values("avg_cost")
        x, y = d["avg_cost"].to_numpy() * PER_10K, d["accuracy"].to_numpy() * 100
        color = router_colour(name)
        calls = d["calls_mean"].astype(float).to_numpy() if "calls_mean" in d else np.full(len(d), np.nan)
        if np.isfinite(calls).any():  # a cascade: dashed, triangles, its calls per request in the legend
            ax.plot(x, y, "--^", c=color, ms=7, lw=1.2, mec="black", mew=0.5, zorder=4,
                    label=f"{name} (cascade, {np.nanmean(calls):.2f} calls/req)")
            continue
        if len(d) > 1:  # a λ sweep: a curve, the dev-selected λ ringed, each point labelled with its λ
            ax.plot(x, y, "-o", c=color, ms=4, lw=1.5, label=name, zorder=3)
            lams = [fmt_lambda(lam) for lam in d["lambda"]]
            for xi, yi, text in merged_labels(x, y, lams):
                ax.annotate(f"λ={text}", (xi, yi), xytext=(3, -9), textcoords="offset points", fontsize=6,
                            color=color)
            sel = d["selected"].to_numpy() if "selected" in d else np.zeros(len(d), bool)
            ax.scatter(x[sel], y[sel], s=90, facecolors="none", edgecolors=color, linewidths=1.5, zorder=4)
        elif name.endswith(" (run)"):  # a trained copy of a baseline: a hollow square around the same spot
            ax.scatter(x, y, s=120, marker="s", facecolors="none", edgecolors=color, linewidths=1.5, label=name,
                       zorder=5)
        else:
            ax.scatter(x, y, s=55, marker="D", color=color, edgecolors="black", linewidths=0.5, label=name, zorder=4)
    oracle = leaderboard[leaderboard["router"] == "oracle"]
    if len(oracle):
        ax.scatter(oracle["avg_cost"] * PER_10K, oracle["accuracy"] * 100, s=260, marker="*", c="gold",
                   edgecolors="black", linewidths=0.8, label="oracle", zorder=5)

    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_xscale("log")
    for axis, subs in ((ax.xaxis.set_major_locator, (1.0, 2.0, 5.0)),):  # 1-2-5 ticks: costs readable
        axis(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("average cost ($ per 10K samples, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7.5, loc="lower right", framealpha=0.9)
    fig.tight_layout()
    path = Path(path)
    write_with(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return path
