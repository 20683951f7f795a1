"""The README's "Results" tables, from finished train runs (scripts/results_table.py).

`results_table`: one benchmark, one row per router (oracle, the best single model, each router's selected run),
every test metric with a 95% bootstrap CI and paired comparisons against the best single model and against the best
seed router, all on one shared resample matrix. Selection never reads test: a router with several runs keeps the one
with the best `val/rank_score` (out-of-fold under selection=cv), the best single model is chosen on train+dev, and
the best seed router is the one with the best cross-validated score (`cv/rank_score`).

`ood_table`: leave-one-out runs (ood=lodo|logo), one row per held-out part, one column per router.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vlrb.data.benchmark import Benchmark
from vlrb.eval.leaderboard import _cost, _md_table, _pct
from vlrb.eval.runs import find_runs, rescore_choices, select_runs
from vlrb.routing.metrics import (bootstrap_ci, bootstrap_indices, bootstrap_weights, paired_bootstrap,
                                  route_metrics)

OURS = "vlrb_cal"
BASELINES = ("oracle", "strongest", "cheapest", "per_dataset", "random")
CASCADE_PREFIX = "cascade_"  # conf/router/cascade_*.yaml: routers that call models one at a time


def _chosen(metrics: dict) -> str:
    """What selection chose, from the run's metrics: λ and the cv/chosen/* values."""
    parts = [f"{k.split('/', 2)[2]}={v}" for k, v in metrics.items() if k.startswith("cv/chosen/")]
    if metrics.get("selection") != "cv" and metrics.get("val/rank_score") is not None:
        parts.append("selection=dev")
    if not any(p.startswith("lambda=") for p in parts) and metrics.get("lambda") is not None:
        parts.insert(0, f"lambda={metrics['lambda']}")
    if metrics.get("fit/mu") is not None:
        parts.append(f"μ={metrics['fit/mu']:.3g}" + (" (fallback)" if metrics.get("fit/fallback") else ""))
    return ", ".join(parts) or "–"


def results_table(runs_dir: str | Path, bench: Benchmark | None = None, *, n_bootstrap: int = 1000, seed: int = 42,
                  beta: float = 0.1) -> pd.DataFrame:
    """One row per router: test accuracy / cost / rank score with 95% CIs, and paired bootstraps (rank score)
    against the best single model (chosen on train+dev) and against the best seed router (chosen on val)."""
    from vlrb.routing.metrics import reference_model

    runs = find_runs(runs_dir)
    if not runs:
        raise FileNotFoundError(f"no finished runs under {runs_dir}")
    if bench is None:  # the benchmark train.py recorded in metrics.json
        root = runs[0].metrics.get("benchmark/root")
        if not root:
            raise ValueError(f"{runs[0].path}: its metrics.json names no benchmark (a run of an older vlrb); "
                             "pass the benchmark (--bench)")
        bench = Benchmark.load(root)
    test, bounds = bench.split("test"), bench.cost_bounds
    W = bootstrap_weights(bootstrap_indices(len(test), n_bootstrap, seed))
    _, chosen = select_runs(runs)

    rows: list[dict[str, Any]] = []
    single = reference_model(bench, beta)
    entries = [("best single: " + bench.models[single], np.full(len(test), single), {}, "reference")]
    for name, run in sorted(chosen.items(), key=lambda kv: (kv[0] != "oracle", kv[0] == OURS, kv[0])):
        choices, _ = rescore_choices(run, bench, "test")
        base = name.split(" (")[0]  # "strongest (fit on test)", "cascade_chain (match)": variants of a router
        kind = ("oracle" if name == "oracle" else "ours" if name == OURS else "baseline" if base in BASELINES
                else "cascade" if name.startswith(CASCADE_PREFIX) else "seed")
        entries.insert(0 if kind == "oracle" else len(entries), (name, choices, run.metrics, kind))
    # the best seed router by its cross-validated score (runs selected on one dev split do not compete here)
    seeds = [e for e in entries if e[3] == "seed" and e[2].get("cv/rank_score") is not None]
    best_seed = max(seeds, key=lambda e: e[2]["cv/rank_score"]) if seeds else None
    # the best one-shot router (seed routers and vlrb_cal, by CV score): what cascades are compared with
    one_shot = [e for e in entries if e[3] in ("seed", "ours") and e[2].get("cv/rank_score") is not None]
    best_one_shot = max(one_shot, key=lambda e: e[2]["cv/rank_score"]) if one_shot else None
    reference = next(e for e in entries if e[3] == "reference")
    for name, choices, metrics, kind in entries:
        m = route_metrics(test, choices, bounds, prefix="", beta=beta, breakdown=False)
        ci = bootstrap_ci(test, choices, bounds, beta=beta, indices=W)
        row = {"router": name, "kind": kind, "chosen": _chosen(metrics) if metrics else "–",
               "cv_rank_score": metrics.get("cv/rank_score", math.nan) if metrics else math.nan,
               **{k: m[k] for k in ("accuracy", "avg_cost", "rank_score")}, **ci}
        row.update({k: m[k] for k in ("calls_mean", "escalated_share") if k in m})
        for ref_name, ref in (("best_single", reference), ("best_seed", best_seed), ("best_one_shot", best_one_shot)):
            if ref is None or ref[0] == name or kind == "oracle":
                continue
            pb = paired_bootstrap(test, choices, ref[1], bounds, beta=beta, indices=W)
            row.update({f"vs_{ref_name}": pb["outcome"], f"vs_{ref_name}_delta": pb["delta_rank_score"],
                        f"vs_{ref_name}_lo": pb["delta_rank_score_lo"], f"vs_{ref_name}_hi": pb["delta_rank_score_hi"]})
            if ref_name == "best_single":  # a cascade's claim: the same accuracy for less money
                row.update({f"vs_{ref_name}_{k}": pb[k] for k in ("delta_accuracy", "delta_accuracy_lo",
                                                                   "delta_accuracy_hi", "cost_ratio", "cost_ratio_lo",
                                                                   "cost_ratio_hi")})
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs.update(best_seed=best_seed[0] if best_seed else None, n_test=len(test),
                    best_one_shot=best_one_shot[0] if best_one_shot else None)
    return df


def _delta(row, key: str) -> str:
    if not isinstance(row.get(f"vs_{key}"), str):
        return "–"
    return (f"{row[f'vs_{key}_delta'] * 100:+.2f} [{row[f'vs_{key}_lo'] * 100:+.2f}, {row[f'vs_{key}_hi'] * 100:+.2f}] "
            f"{row[f'vs_{key}']}")


def results_markdown(df: pd.DataFrame) -> str:
    header = ["Router", "chosen (CV)", "CV rank score", "Acc. (%) [95% CI]", "Cost ($/10K) [95% CI]",
              "Rank score [95% CI]", "vs best single: Δ rank score", f"vs best seed ({df.attrs.get('best_seed')})"]
    out = []
    for r in df.to_dict(orient="records"):
        if r["kind"] == "cascade":  # cascades have their own table (cascades_markdown)
            continue
        out.append([f"**{r['router']}**" if r["kind"] == "ours" else r["router"], r["chosen"],
                    _pct(r["cv_rank_score"]),
                    f"{_pct(r['accuracy'])} [{_pct(r['accuracy_lo'])}, {_pct(r['accuracy_hi'])}]",
                    f"{_cost(r['avg_cost'])} [{_cost(r['avg_cost_lo'])}, {_cost(r['avg_cost_hi'])}]",
                    f"{_pct(r['rank_score'])} [{_pct(r['rank_score_lo'])}, {_pct(r['rank_score_hi'])}]",
                    _delta(r, "best_single") if r["kind"] != "reference" else "(reference)",
                    _delta(r, "best_seed") if r["router"] != df.attrs.get("best_seed") else "(reference)"])
    return _md_table(header, out, ["l", "l"] + ["r"] * 4 + ["l", "l"]) + "\n"


def cascades_markdown(df: pd.DataFrame) -> str:
    """The cascades beside the best single model and the best one-shot router: calls per request, the share that
    escalated, and paired bootstraps against both (accuracy difference and cost ratio against the best single)."""
    best = df.attrs.get("best_one_shot")
    keep = df[(df["kind"].isin(["cascade", "reference"])) | (df["router"] == best)]
    if not (keep["kind"] == "cascade").any():
        return ""
    header = ["Router", "chosen (CV)", "CV rank score", "Calls/req", "Escalated", "Acc. (%) [95% CI]",
              "Cost ($/10K) [95% CI]", "Rank score [95% CI]", "vs best single: Δ acc. (pts), cost ×",
              "vs best single: Δ rank score", f"vs best one-shot ({best}): Δ rank score"]
    out = []
    for r in keep.to_dict(orient="records"):
        calls, esc = r.get("calls_mean", math.nan), r.get("escalated_share", math.nan)
        acc_cost = "(reference)" if r["kind"] == "reference" else (
            f"{r['vs_best_single_delta_accuracy'] * 100:+.2f} [{r['vs_best_single_delta_accuracy_lo'] * 100:+.2f}, "
            f"{r['vs_best_single_delta_accuracy_hi'] * 100:+.2f}], {r['vs_best_single_cost_ratio']:.2f}x "
            f"[{r['vs_best_single_cost_ratio_lo']:.2f}, {r['vs_best_single_cost_ratio_hi']:.2f}]")
        out.append([r["router"], r["chosen"], _pct(r["cv_rank_score"]),
                    f"{calls:.2f}" if isinstance(calls, float) and math.isfinite(calls) else "1",
                    f"{esc * 100:.0f}%" if isinstance(esc, float) and math.isfinite(esc) else "–",
                    f"{_pct(r['accuracy'])} [{_pct(r['accuracy_lo'])}, {_pct(r['accuracy_hi'])}]",
                    f"{_cost(r['avg_cost'])} [{_cost(r['avg_cost_lo'])}, {_cost(r['avg_cost_hi'])}]",
                    f"{_pct(r['rank_score'])} [{_pct(r['rank_score_lo'])}, {_pct(r['rank_score_hi'])}]",
                    acc_cost, _delta(r, "best_single") if r["kind"] != "reference" else "(reference)",
                    _delta(r, "best_one_shot") if r["router"] != best else "(reference)"])
    return _md_table(header, out, ["l", "l"] + ["r"] * 6 + ["l"] * 3) + "\n"


def ood_table(runs_dir: str | Path) -> pd.DataFrame:
    """Leave-one-out runs: one row per (held-out part, router) with its test metrics and the best single model."""
    rows = []
    for m in sorted(Path(runs_dir).rglob("metrics.json")):
        metrics = json.loads(m.read_text())
        protocol, holdout = metrics.get("ood/protocol"), metrics.get("ood/holdout")
        if holdout is None:
            protocol, holdout = _older_run_ood(m.parent)
        if holdout is None:
            continue
        rows.append({"holdout": str(holdout), "protocol": protocol, "router": metrics["router"],
                     "n": metrics["test/n"], "rank_score": metrics["test/rank_score"],
                     "accuracy": metrics["test/accuracy"], "avg_cost": metrics["test/avg_cost"],
                     "best_single": metrics.get("test/best_single/model"),
                     "best_single_rank_score": metrics.get("test/best_single/rank_score", math.nan),
                     "vs_best_single": metrics.get("test/vs_best_single/outcome", "–"),
                     "oracle_accuracy": metrics.get("test/oracle_accuracy", math.nan)})
    if not rows:
        raise FileNotFoundError(f"no leave-one-out runs (ood/holdout in their metrics.json) under {runs_dir}")
    return pd.DataFrame(rows)


def _older_run_ood(run: Path) -> tuple[str | None, str | None]:
    """(protocol, holdout) of a run saved before metrics.json recorded them: the plain values of its Hydra config, read
    as YAML data (interpolations are left as text, never resolved)."""
    import yaml

    try:
        ood = (yaml.safe_load((run / ".hydra" / "config.yaml").read_text()) or {}).get("ood")
    except (OSError, yaml.YAMLError, AttributeError):
        return None, None
    if not isinstance(ood, dict) or not isinstance(ood.get("holdout"), (str, int)):
        return None, None
    return (str(ood["protocol"]) if isinstance(ood.get("protocol"), str) else None), str(ood["holdout"])


def ood_markdown(df: pd.DataFrame) -> str:
    """Held-out part x router: test rank score ×100 (w/t/l against the best single model chosen on the rest)."""
    routers = [OURS] * (OURS in set(df["router"])) + sorted(set(df["router"]) - {OURS})
    header = ["held out", "n", "best single (chosen on the rest)"] + routers
    body, mean = [], {r: [] for r in routers}
    for h, g in df.groupby("holdout", sort=True):
        g = g.drop_duplicates("router", keep="last").set_index("router")
        first = g.iloc[0]
        cells = [h, str(int(first["n"])), f"{first['best_single']} {_pct(first['best_single_rank_score'])}"]
        for r in routers:
            if r in g.index:
                cells.append(f"{_pct(g.at[r, 'rank_score'])} ({g.at[r, 'vs_best_single'][0]})")
                mean[r].append(g.at[r, "rank_score"])
            else:
                cells.append("–")
        body.append(cells)
    singles = df.drop_duplicates("holdout")["best_single_rank_score"]
    body.append(["**mean**", "", _pct(float(singles.mean()))]
                + [_pct(float(np.mean(v))) if v else "–" for v in mean.values()])
    return _md_table(header, body) + "\n"
