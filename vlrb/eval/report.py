"""The evaluation pipeline behind `evaluate.py`: fit the baselines, score them and any finished train runs
once on the test split, and write the leaderboard, per-dataset tables, the Pareto plot and metrics.

Every router is scored by the same code (route_metrics + one shared bootstrap index matrix, so the CIs
and the paired win/tie/loss comparisons use identical resamples).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from vlrb.data.benchmark import Benchmark, Split
from vlrb.eval.leaderboard import leaderboard_row, make_leaderboard, write_leaderboard, write_per_dataset
from vlrb.eval.pareto import pareto_plot
from vlrb.eval.runs import RunScan, rescore_choices, scan_runs, select_runs
from vlrb.io import write_json, write_with
from vlrb.routers import Router
from vlrb.routing.calls import as_calls
from vlrb.routing.metrics import (DEFAULT_BETA, bootstrap_ci, bootstrap_indices, bootstrap_weights,
                                  paired_bootstrap, per_dataset_metrics, rank_score, reference_model, route_metrics,
                                  router_throughput)

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """One router (at one λ) scored on the test split."""

    label: str
    choices: np.ndarray
    metrics: dict[str, Any]
    ci: dict[str, float]
    lam: float | None = None
    throughput: dict[str, Any] | None = None
    selected: bool = True
    kind: str = "baseline"
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalResult:
    leaderboard: pd.DataFrame
    per_dataset: pd.DataFrame
    single_models: pd.DataFrame
    metrics: dict[str, Any]
    paths: dict[str, Path]


def single_model_table(test: Split, cost_bounds: Mapping[str, Any], beta: float = DEFAULT_BETA) -> pd.DataFrame:
    """Each model alone on the test split: the points of the Pareto plot."""
    acc = np.asarray(test.Y, np.float64).mean(0)
    cost = np.asarray(test.C, np.float64).mean(0)
    return pd.DataFrame({"model": test.models, "accuracy": acc, "avg_cost": cost,
                         "rank_score": rank_score(acc, cost, cost_bounds["cmin"], cost_bounds["cmax"], beta)})


def score_baselines(bench: Benchmark, routers: Sequence[Router], *, indices: np.ndarray, beta: float = DEFAULT_BETA,
                    throughput: Mapping[str, Any] | None = None) -> list[Scored]:
    """Score each fitted (training-free) router on test."""
    test = bench.split("test")
    out = []
    for router in routers:
        fit_on = getattr(router, "fit_on", "train")
        choices = router.route(test)
        tp = router_throughput(router, test, **throughput) if throughput else None
        out.append(Scored(router.label, choices, route_metrics(test, choices, bench.cost_bounds, beta=beta),
                          bootstrap_ci(test, choices, bench.cost_bounds, beta=beta, indices=indices),
                          throughput=tp, kind="baseline",
                          source=f"fit on {fit_on}" if getattr(router, "fits_data", False) else ""))
    return out


def score_runs(bench: Benchmark, runs: "str | Path | RunScan", *, indices: np.ndarray,
               beta: float = DEFAULT_BETA) -> list[Scored]:
    """Every (router, λ) found under a runs folder (best run per λ on val), the per-router λ chosen on val. Runs
    of another benchmark, or whose predictions do not cover this test split, are moved to `scan.skipped`."""
    test = bench.split("test")
    scan = runs if isinstance(runs, RunScan) else scan_runs(runs)
    fingerprint = bench.fingerprint
    for run in list(scan.runs):
        theirs = run.metrics.get("benchmark/fingerprint")
        if fingerprint and theirs and theirs != fingerprint:
            scan.drop(run, f"made on another benchmark ({run.metrics.get('benchmark/root') or 'unknown root'})")
    choices: dict[Path, tuple] = {}
    for run in list(scan.runs):
        try:
            choices[run.path] = rescore_choices(run, bench, "test")
        except (ValueError, OSError, KeyError) as e:  # another benchmark, a hand-edited file: say which, go on
            scan.drop(run, str(e).removeprefix(f"{run.path}: "))
    if not scan.runs:
        return []
    per_lambda, chosen = select_runs(scan.runs)
    out = []
    for run in per_lambda:
        ch, info = choices[run.path]
        tp = run.metrics.get("test/throughput_ktok_s")
        out.append(Scored(run.router, ch, route_metrics(test, ch, bench.cost_bounds, beta=beta),
                          bootstrap_ci(test, ch, bench.cost_bounds, beta=beta, indices=indices), lam=run.lam,
                          throughput={"ktok_s": float(tp)} if tp is not None else None,
                          selected=chosen.get(run.router) is run, kind="trained", source=str(run.path),
                          extra={"val_rank_score": run.val_score, **info}))
    return out


def score_best_single(bench: Benchmark, *, indices: np.ndarray, beta: float = DEFAULT_BETA) -> Scored:
    """The reference of every comparison: the single model with the best rank score on train+dev (chosen without
    looking at test, as in every run's metrics.json), answering every test sample."""
    test = bench.split("test")
    k = reference_model(bench, beta)
    choices = np.full(len(test), k, np.int64)
    return Scored(f"best single: {test.models[k]}", choices,
                  route_metrics(test, choices, bench.cost_bounds, beta=beta),
                  bootstrap_ci(test, choices, bench.cost_bounds, beta=beta, indices=indices), kind="reference",
                  source="best rank score on train+dev", extra={"vs_best_single": "(reference)"})


def _compare_to(scored: list[Scored], ref: Scored, test: Split, cost_bounds, indices, beta) -> None:
    for s in scored:
        if s is not ref:
            pb = paired_bootstrap(test, s.choices, ref.choices, cost_bounds, beta=beta, indices=indices)
            s.extra["vs_best_single"] = (f"{pb['delta_rank_score'] * 100:+.2f} [{pb['delta_rank_score_lo'] * 100:+.2f}, "
                                         f"{pb['delta_rank_score_hi'] * 100:+.2f}] {pb['outcome']}")


def evaluate_benchmark(bench: Benchmark, out_dir: str | Path, *, baselines: Sequence[Router] = (),
                       runs: "str | Path | RunScan | None" = None, n_bootstrap: int = 1000,
                       seed: int = 42, beta: float = DEFAULT_BETA,
                       throughput: Mapping[str, Any] | None = None, plot: bool = True) -> EvalResult:
    """Score the (fitted) baseline routers and the runs found under `runs` on test once, and write every
    artifact into out_dir."""
    out_dir = Path(out_dir)
    test = bench.split("test")
    if len(test) == 0:
        raise ValueError("the benchmark's test split is empty: nothing to evaluate")
    # one resample matrix shared by every router: the CIs and the comparisons are paired
    indices = bootstrap_weights(bootstrap_indices(len(test), n_bootstrap, seed))
    scored = score_baselines(bench, baselines, indices=indices, beta=beta, throughput=throughput)
    if runs:
        taken = {s.label for s in scored}
        for s in score_runs(bench, runs, indices=indices, beta=beta):
            if s.label in taken:  # e.g. train.py router=random: keep it apart from the baseline of that name
                s.label += " (run)"
            scored.append(s)
    if not scored:
        raise ValueError("nothing to evaluate: no baselines listed and no finished runs found")
    reference = score_best_single(bench, indices=indices, beta=beta)
    scored.append(reference)
    _compare_to(scored, reference, test, bench.cost_bounds, indices, beta)

    board = make_leaderboard(
        leaderboard_row(s.label, s.metrics, s.ci, lam=s.lam, throughput=s.throughput, selected=s.selected,
                        kind=s.kind, source=s.source, **s.extra) for s in scored)
    per_ds = pd.concat([per_dataset_metrics(test, s.choices, bench.cost_bounds, beta=beta)
                        .assign(router=s.label, **{"lambda": np.nan if s.lam is None else s.lam}) for s in scored],
                       ignore_index=True) if scored else pd.DataFrame()
    if len(per_ds):
        per_ds = per_ds[["router", "lambda"] + [c for c in per_ds.columns if c not in ("router", "lambda")]]
    singles = single_model_table(test, bench.cost_bounds, beta)

    # metrics.json: flat keys per reported router, "<router>/test/accuracy" etc. (one run, many routers)
    metrics: dict[str, Any] = {"test/n": len(test), "test/oracle_accuracy": float(test.Y.max(1).mean()),
                               "cost_bounds/cmin": bench.cost_bounds["cmin"], "cost_bounds/cmax": bench.cost_bounds["cmax"],
                               "bootstrap": n_bootstrap, "beta": beta}
    for s in scored:
        if s.selected:
            metrics.update({f"{s.label}/{k}": v for k, v in s.metrics.items()})
            metrics.update({f"{s.label}/test/{k}": v for k, v in s.ci.items()})
            if s.throughput:
                metrics[f"{s.label}/test/throughput_ktok_s"] = s.throughput["ktok_s"]

    paths = write_leaderboard(board, out_dir)
    paths.update({f"per_dataset_{k}": v for k, v in write_per_dataset(per_ds, out_dir).items()})
    paths["single_models"] = out_dir / "single_models.csv"
    write_with(paths["single_models"], lambda p: singles.to_csv(p, index=False))
    paths["metrics"] = out_dir / "metrics.json"
    write_json(paths["metrics"], metrics)
    paths["predictions"] = out_dir / "predictions.parquet"
    write_with(paths["predictions"], lambda p: _predictions(test, scored).to_parquet(p, index=False))
    if plot:
        paths["pareto"] = pareto_plot(board, singles, out_dir / "pareto.png")
    return EvalResult(board, per_ds, singles, metrics, paths)


def _predictions(test: Split, scored: list[Scored]) -> pd.DataFrame:
    """predictions.parquet of this run: every scored router's test choices, rescored from Y and C (a cascade's
    returned model, what its calls cost, and every model it called)."""
    rows = np.arange(len(test))
    models = np.asarray(test.models, dtype=object)
    frames = []
    for s in scored:
        calls = as_calls(s.choices)
        final = calls.final
        frames.append(pd.DataFrame({
            "sample_id": test.sample_ids, "split": test.name, "router": s.label,
            "lambda": np.nan if s.lam is None else s.lam, "model_id": models[final],
            "correct": test.Y[rows, final].astype(np.int8), "cost": calls.cost(test.C),
            "models_called": calls.labels(models)}))
    return pd.concat(frames, ignore_index=True)
