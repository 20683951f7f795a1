"""Leave-one-model-out onboarding tables: for each held-out model, test rank score against the number of labelled items
it joins from, beside "ignore it" and "retrain on everything" (vlrb/onboarding.py; README "When the model pool
changes").

    python scripts/onboarding_table.py --models Qwen2.5-VL-72B-Instruct,Qianfan-VL-8B,GeminiFlash2-5
    python scripts/onboarding_table.py data=demo_full --routers vlrb_cal --models ... --table lomo_full.csv

Hydra overrides (data=..., encoder=...) pick the benchmark and features as for train.py. Each router is fitted on the
train split (the same as train.py router=<name>, selection=dev); each n > 0 is drawn --draws times from train.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vlrb

import pandas as pd  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of train.py (data=..., encoder=...)")
    ap.add_argument("--models", required=True, help="comma-separated models to hold out in turn")
    ap.add_argument("--routers", default="vlrb_cal,per_dataset", help="comma-separated routers that can onboard")
    ap.add_argument("--labelled", default="0,10,30,100,300", help="comma-separated numbers of labelled items")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--table", help="also write every row as CSV")
    ap.add_argument("--from-table", help="print the markdown of a CSV written by --table (nothing is fitted)")
    a = ap.parse_intermixed_args()  # Hydra overrides may follow the options
    if a.from_table:
        from vlrb.onboarding import recovered

        frame = pd.read_csv(a.from_table)
        ns = sorted(int(n) for n in frame.n.dropna().unique())
        print(markdown(frame, ns, recovered))
        return

    from vlrb.jobs.common import make_router
    from vlrb.jobs.entry import compose, project_root, register_resolvers
    from vlrb.jobs.train import prepare_data
    from vlrb.onboarding import lomo_table, recovered, summarise

    register_resolvers()
    cfg = compose("train", ["router=vlrb_cal", "logger=none", *a.overrides], root=project_root())
    data = prepare_data(cfg, make_router("vlrb_cal", a.overrides))
    ns = [int(x) for x in a.labelled.split(",")]
    if max(ns) > len(data["train"]):
        print(f"leaving out n > {len(data['train'])}: the train split has no more items", file=sys.stderr)
        ns = [n for n in ns if n <= len(data["train"])]
    rows = []
    for name in a.routers.split(","):
        def fit(d):
            return make_router(name, a.overrides).fit(d["train"], d["dev"])

        full = fit(data)  # "retrain on everything": the same router for every held-out model
        for model in a.models.split(","):
            t0 = time.perf_counter()
            got, _ = lomo_table(fit, data, model, ns, draws=a.draws, beta=float(cfg.scoring.beta), full=full)
            rows += [{"router": name, **r} for r in summarise(got)]
            print(f"{name} without {model}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    frame = pd.DataFrame(rows)
    if a.table:
        frame.to_csv(a.table, index=False)
    print(markdown(frame, ns, recovered))


def markdown(frame: pd.DataFrame, ns: list[int], recovered) -> str:
    """Per router and held-out model: rank score (×100) ignoring it, after n labelled items, retrained; and the share
    of the gap recovered at n = 100 (when 100 is among the n)."""
    cols = ["ignore", *[f"n={n}" for n in ns], "retrain"]
    lines = [f"| router | held-out model | {' | '.join(cols)} | gap recovered at n=100 |",
             "|---|---|" + "---|" * (len(cols) + 1)]
    for (router, model), g in frame.groupby(["router", "model"], sort=False):
        get = {(r.variant, None if pd.isna(r.n) else int(r.n)): r.rank_score for r in g.itertuples()}
        cells = [get[("ignore", None)], *[get.get(("onboard", n), float("nan")) for n in ns],
                 get.get(("retrain", None), float("nan"))]
        rec = recovered(g.to_dict("records"), 100).get(model, float("nan")) if 100 in ns else float("nan")
        gap = cells[-1] - cells[0]  # retraining on it gains less than 0.1 points: nothing to recover
        said = f"{rec:.0%}" if gap >= 0.001 else f"– (retrain {gap * 100:+.2f})"
        lines.append(f"| {router} | {model} | " + " | ".join(f"{c * 100:.2f}" for c in cells) + f" | {said} |")
    for router, g in frame.groupby("router", sort=False):
        recs = [v for v in recovered(g.to_dict("records"), 100).values()] if 100 in ns else []
        if recs:
            ign = g[g.variant == "ignore"].rank_score.mean()
            on = g[(g.variant == "onboard") & (g.n == 100)].rank_score.mean()
            full = g[g.variant == "retrain"].rank_score.mean()
            lines.append(f"| {router} | **mean** | {ign * 100:.2f} | " + " | ".join(
                f"{g[(g.variant == 'onboard') & (g.n == n)].rank_score.mean() * 100:.2f}" for n in ns)
                + f" | {full * 100:.2f} | {(on - ign) / (full - ign):.0%} of the mean gap |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
