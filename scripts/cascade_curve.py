"""Cost-accuracy curves on test: cascades against a one-shot router, each swept by its budget knob μ.

    python scripts/cascade_curve.py data=mathv data.dir=/path/to/MATH-V --out docs/img/cascades_mathv.png

Fits once on train+dev (as selection=cv refits a training-free choice; the learned parts read the training rows
only): vlrb_cal (one-shot; its decision p̂ − μ·ĉ swept over μ, without its fallback to the best single model),
cascade_chain and cascade_verify (the stop rule's per-request μ: stop when P(right) + μ·ĉ_next/ĉ_max ≥ τ),
cascade_validity (objectives auto and match) and cascade_agreement (points), and every single model. Test is read
only to draw the points. Hydra overrides (data=..., encoder=...) pick the benchmark and the features as for
train.py; --table FILE also writes the points as CSV.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vlrb

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ONE_SHOT_MU = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)  # × 1/(median model cost): vlrb_cal's μ grid, wider
CASCADE_MU = (-2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 5.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of train.py (data=..., encoder=...)")
    ap.add_argument("--out", default="cascades.png", help="the PNG to write")
    ap.add_argument("--table", help="also write the points as CSV")
    a = ap.parse_args()

    from vlrb.jobs.common import make_router
    from vlrb.jobs.entry import compose, project_root, register_resolvers
    from vlrb.jobs.train import prepare_data
    from vlrb.routing.metrics import route_metrics
    from vlrb.selection import join_splits

    register_resolvers()
    cfg = compose("train", ["router=cascade_chain", "logger=none", *a.overrides], root=project_root())
    probe = make_router("cascade_chain", [f"{o}" for o in a.overrides])
    data = prepare_data(cfg, probe)
    fit = join_splits(data["train"], data["dev"], "train+dev")
    test, bounds = data["test"], data.bench.cost_bounds
    points = []

    def add(router, kind, mu, choice):
        m = route_metrics(test, choice, bounds, prefix="", breakdown=False)
        points.append({"router": router, "kind": kind, "mu": mu, "accuracy": m["accuracy"],
                       "avg_cost": m["avg_cost"], "rank_score": m["rank_score"],
                       "calls_mean": m.get("calls_mean", 1.0)})

    for j, model in enumerate(data.bench.models):
        add(model, "single", np.nan, np.full(len(test), j))
    cal = make_router("vlrb_cal", a.overrides).fit(fit)
    p, c = cal.predict_correctness(test), cal._costs(np.asarray(test.datasets).astype(str))
    typical = float(np.median(cal.cost_overall_)) or 1.0
    for t in ONE_SHOT_MU:
        add("vlrb_cal (no fallback)", "one-shot", t, cal._decide(p, c, t / typical).argmax(1))
    for name in ("cascade_chain", "cascade_verify"):
        r = make_router(name, a.overrides).fit(fit)
        for mu in CASCADE_MU:
            add(name, "cascade", mu, r.route(test, mu=mu))
    for name, objective in (("cascade_validity", "auto"), ("cascade_validity", "match"),
                            ("cascade_agreement", "auto")):
        r = make_router(name, a.overrides, objective=objective).fit(fit)
        add(name + (" (match)" if objective == "match" else ""), "cascade", 0.0, r.route(test))
    df = pd.DataFrame(points)
    if a.table:
        df.to_csv(a.table, index=False)
    plot(df, a.out, title=f"{cfg.data.name}: test accuracy against cost ({len(test)} items)")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {a.out}")


def plot(df: pd.DataFrame, out: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    single = df[df["kind"] == "single"]
    ax.scatter(single["avg_cost"] * 1e4, single["accuracy"] * 100, c="0.6", s=18, label="single models")
    best = single.loc[single["rank_score"].idxmax()]
    ax.annotate(best["router"], (best["avg_cost"] * 1e4, best["accuracy"] * 100), fontsize=8,
                xytext=(4, 4), textcoords="offset points")
    for name, d in df[df["kind"] != "single"].groupby("router", sort=False):
        d = d.sort_values("avg_cost")
        cascade = d["kind"].iloc[0] == "cascade"
        style = dict(ls="--", marker="^") if cascade else dict(ls="-", marker="o")
        label = f"{name} ({'cascade' if cascade else 'one-shot'}, {d['calls_mean'].mean():.2f} calls/req)"
        ax.plot(d["avg_cost"] * 1e4, d["accuracy"] * 100, ms=5, label=label, **style)
    ax.set_xscale("log")
    ax.set_xlabel("average cost ($ per 10K requests, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
