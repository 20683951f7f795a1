"""Bandit replay: routers that learn online from partial labels against one that sees every model's answer.

    python scripts/bandit_replay.py --out docs/img/bandit_regret_demo.png --table bandit_demo.md
    python scripts/bandit_replay.py data=demo_full --every 500 --max-steps 8000 \
        --out docs/img/bandit_regret_demo_full.png

The train + dev rows of a built benchmark arrive in a seeded random order; at each request a router picks a model and
sees only that model's correctness and cost (vlrb/feedback/online.py). Utility u = Y − μ·C/scale (scale: the dearest
model's mean train cost; --mu, one for all routers); regret = the full-information router's cumulative utility minus
each router's. The table adds each router's final state scored on the test split, beside vlrb_cal trained offline on
the train split's full labels and Random. Hydra overrides (data=..., encoder=...) pick the benchmark and features as
for train.py.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vlrb

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of train.py (data=..., encoder=...)")
    ap.add_argument("--out", default="bandit_regret.png", help="the PNG of the regret curves")
    ap.add_argument("--table", help="also write the table as markdown")
    ap.add_argument("--mu", type=float, default=0.5, help="utility Y − μ·C/scale, one μ for every router")
    ap.add_argument("--every", type=int, default=50, help="refit every B requests (the calibrated routers)")
    ap.add_argument("--components", type=int, default=32, help="PCA components of the features")
    ap.add_argument("--epsilon", type=float, default=0.1, help="exploration of cal_eps")
    ap.add_argument("--alpha", type=float, default=0.5, help="LinUCB's bonus")
    ap.add_argument("--max-steps", type=int, help="a random subsample of the stream (large benchmarks)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_intermixed_args()

    from vlrb.feedback import online
    from vlrb.jobs.common import make_router
    from vlrb.jobs.entry import compose, project_root, register_resolvers
    from vlrb.jobs.train import prepare_data
    from vlrb.routing.metrics import route_metrics

    register_resolvers()
    cfg = compose("train", ["router=vlrb_cal", "logger=none", *a.overrides], root=project_root())
    data = prepare_data(cfg, make_router("vlrb_cal", a.overrides))
    parts = [data[s] for s in ("train", "dev", "test")]
    X = np.vstack([p.X for p in parts])
    Y = np.vstack([p.Y for p in parts]).astype(np.float64)
    C = np.vstack([p.C for p in parts]).astype(np.float64)
    ds = np.concatenate([p.datasets for p in parts])
    groups = np.concatenate([p.groups for p in parts])
    n_stream = len(parts[0]) + len(parts[1])
    rng = np.random.default_rng(a.seed)
    order = rng.permutation(n_stream)
    if a.max_steps and a.max_steps < n_stream:
        order = order[: a.max_steps]
    test_rows = np.arange(n_stream, len(Y))
    s = online.stream_of(X, ds, groups, parts[0].C, order, mu=a.mu, q=a.components, seed=a.seed)
    routers = online.make_routers(s, Y.shape[1], a.seed, online.BANDITS + ("random",), epsilon=a.epsilon,
                                  alpha=a.alpha)
    t0 = time.perf_counter()
    util = online.replay(routers, order, Y, C, s, a.every)
    replay_s = time.perf_counter() - t0
    regret = online.regret_curves(util)

    test, bounds = data["test"], data.bench.cost_bounds
    rows = []

    def add(name, choice, final_regret=np.nan, stream_u=np.nan):
        m = route_metrics(test, choice, bounds, prefix="", breakdown=False)
        rows.append({"router": name, "final regret": final_regret, "stream utility/request": stream_u,
                     "test accuracy %": 100 * m["accuracy"], "test $/10K": 1e4 * m["avg_cost"],
                     "test rank score": 100 * m["rank_score"],
                     "test utility/request": online.utility(test.Y, test.C, np.asarray(choice), s)})

    for name, r in routers.items():
        add(getattr(r, "name", name), r.route(test_rows), regret[name][-1] if name in regret else 0.0,
            util[name].mean())
    offline = make_router("vlrb_cal", a.overrides).fit(data["train"])
    add("vlrb_cal offline (train, full labels)", offline.route(test))
    add("Random (train.py router=random)", make_router("random", a.overrides).fit(data["train"]).route(test))
    df = pd.DataFrame(rows)
    title = (f"{cfg.data.name}: {len(order)} requests (train+dev, seed {a.seed}), μ = {a.mu:g}, refit every "
             f"{a.every}; test: {len(test)} requests")
    plot(regret, a.out, title)
    table = markdown(df)
    if a.table:
        Path(a.table).write_text(f"{title}\n\n{table}\n")
    print(title)
    print(table)
    print(f"replay: {replay_s:.1f} s; wrote {a.out}")


def markdown(df: pd.DataFrame) -> str:
    cell = lambda v: "–" if isinstance(v, float) and np.isnan(v) else (f"{v:.2f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def plot(regret: dict, out: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, curve in regret.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, label=name, lw=1.6, ls="--" if name == "random" else "-")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("requests")
    ax.set_ylabel("cumulative regret vs full information (utility)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
