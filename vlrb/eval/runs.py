"""Finished train runs: find them under a run or multirun directory, pick the λ per router on
`val/rank_score` (dev selects, test reports: test numbers are never read for selection), and rescore
their test predictions against the benchmark, so every router is scored by the same code.

A run directory holds `metrics.json` (naming the router, its λ and the benchmark it ran on) and
`predictions.parquet` (sample_id, split, model_id, correct, cost): what the readers read. A run's config is
never read (a folder from elsewhere could hold `${oc.env:...}` interpolations meant to copy secrets).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vlrb.data.benchmark import Benchmark
from vlrb.routing.calls import Calls
from vlrb.routing.soft_labels import parse_lambda

log = logging.getLogger(__name__)
SELECT_METRIC = "val/rank_score"


@dataclass
class RunRecord:
    path: Path
    router: str
    lam: float | None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def val_score(self) -> float | None:
        v = self.metrics.get(SELECT_METRIC)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def read_run(run_dir: str | Path) -> RunRecord:
    run_dir = Path(run_dir)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except json.JSONDecodeError as e:
        raise OSError(f"metrics.json is not JSON: {e}") from None
    if not isinstance(metrics, dict):
        raise OSError("metrics.json is not a JSON object")
    router = metrics.get("router")
    if not router:  # e.g. an evaluate.py run dir: it writes metrics.json too, for many routers
        raise ValueError(f"{run_dir}: not a train run (its metrics.json names no router)")
    label = str(metrics.get("label") or "")
    if label.startswith(f"{router} ("):  # a variant reported apart: "strongest (fit on test)", "cascade_chain (match)"
        router = label
    lam = metrics.get("lambda")  # train.py records null for routers that ignore λ (KNN, OVR, baselines, ...)
    return RunRecord(run_dir, str(router), None if lam is None else parse_lambda(lam), metrics)


def find_runs(root: str | Path) -> list[RunRecord]:
    """Every finished run (metrics.json + predictions.parquet) at or below `root`, sorted by path."""
    return scan_runs(root).runs


@dataclass
class RunScan:
    """What a folder of runs holds: the finished train runs, and what was left out with the reason."""

    runs: list[RunRecord] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)  # run dir -> why it is not scored
    failed: dict[Path, str] = field(default_factory=dict)  # run dir -> the first line of its error.txt

    def drop(self, run: RunRecord, why: str) -> None:
        self.runs.remove(run)
        self.skipped[run.path] = why


def scan_runs(root: str | Path) -> RunScan:
    """Every finished train run at or below `root` (sorted by path), the failed ones (error.txt) and the
    unfinished ones. Folders of other jobs (evaluate.py writes metrics.json too) are not runs and not listed."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"runs directory {root} does not exist")
    scan = RunScan()
    for m in sorted(root.rglob("metrics.json")):
        if not (m.parent / "predictions.parquet").exists():
            scan.skipped[m.parent] = "metrics.json without predictions.parquet (an unfinished run?)"
            continue
        try:
            scan.runs.append(read_run(m.parent))
        except ValueError:  # e.g. an evaluate.py run dir: it writes the same two files, names no router
            continue
        except OSError as e:
            scan.skipped[m.parent] = f"unreadable ({e})"
    for e in sorted(root.rglob("error.txt")):
        if not (e.parent / "metrics.json").exists():
            first = (e.read_text(errors="replace").strip().splitlines() or [""])[0]
            scan.failed[e.parent] = first[:200]
    return scan


def select_runs(runs: list[RunRecord]) -> tuple[list[RunRecord], dict[str, RunRecord]]:
    """(one run per (router, λ): the best on val/rank_score, the selected run per router).

    A router with several runs but no val/rank_score in any cannot be selected honestly: its runs still
    appear on the sweep curve, but none is reported as its result (and a warning says why).
    """
    def key(r: RunRecord) -> float:
        return r.val_score if r.val_score is not None else -math.inf

    per_lambda: dict[tuple[str, float | None], RunRecord] = {}
    for r in runs:  # sorted by path: ties keep the first, deterministically
        k = (r.router, r.lam)
        if k not in per_lambda or key(r) > key(per_lambda[k]):
            per_lambda[k] = r
    chosen: dict[str, RunRecord] = {}
    for router in dict.fromkeys(r.router for r in per_lambda.values()):
        cands = [r for r in per_lambda.values() if r.router == router]
        scored = [r for r in cands if r.val_score is not None]
        if scored:
            chosen[router] = max(scored, key=key)
        elif len(cands) == 1:
            chosen[router] = cands[0]
        else:
            log.warning("router %s: %d runs but none reports %s; not selecting any", router, len(cands), SELECT_METRIC)
    return list(per_lambda.values()), chosen


def rescore_choices(run: RunRecord, bench: Benchmark, split: str = "test") -> tuple[np.ndarray | Calls, dict[str, int]]:
    """The run's chosen model index for every sample of `split`, in split order, from predictions.parquet (a
    cascade's run: its `Calls`, from the `models_called` column).

    Errors when a split sample was not predicted, a sample is predicted twice, or a model is unknown.
    Reports (does not fail on) disagreements between the stored `correct` and the benchmark's Y.
    """
    preds = pd.read_parquet(run.path / "predictions.parquet")
    missing_cols = {"sample_id", "model_id"} - set(preds.columns)
    if missing_cols:
        raise ValueError(f"{run.path}/predictions.parquet lacks columns {sorted(missing_cols)}")
    if "split" in preds.columns:
        preds = preds[preds["split"] == split]
    sp = bench.split(split)
    if preds["sample_id"].duplicated().any():
        raise ValueError(f"{run.path}: {int(preds['sample_id'].duplicated().sum())} duplicated {split} sample ids")
    model_pos = {m: j for j, m in enumerate(bench.models)}
    unknown = sorted(set(preds["model_id"].astype(str)) - set(model_pos))
    if unknown:
        raise ValueError(f"{run.path}: predictions name models not in the benchmark: {unknown[:5]}")
    by_id = pd.Series(preds["model_id"].astype(str).map(model_pos).to_numpy(), index=preds["sample_id"].astype(str))
    choices = by_id.reindex(pd.Index(sp.sample_ids).astype(str))
    if choices.isna().any():
        raise ValueError(f"{run.path}: {int(choices.isna().sum())} of {len(sp)} {split} samples have no prediction "
                         f"(was the run made on another benchmark? e.g. {choices.index[choices.isna()][0]})")
    choices = choices.to_numpy().astype(np.int64)
    calls = None
    if "models_called" in preds.columns:
        chains = pd.Series(preds["models_called"].astype(str).to_numpy(), index=preds["sample_id"].astype(str))
        try:
            calls = Calls.from_labels(chains.reindex(pd.Index(sp.sample_ids).astype(str)).tolist(), bench.models)
        except KeyError as e:
            raise ValueError(f"{run.path}/predictions.parquet: {e.args[0]}") from None
        if (calls.final != choices).any():
            raise ValueError(f"{run.path}/predictions.parquet: model_id is not the last of models_called")
    info = {"n_predictions": int(len(preds)), "n_correct_mismatch": 0}
    if "correct" in preds.columns:
        stored = pd.Series(preds["correct"].to_numpy(), index=preds["sample_id"].astype(str)).reindex(sp.sample_ids.astype(str))
        truth = sp.Y[np.arange(len(sp)), choices]
        info["n_correct_mismatch"] = int((stored.to_numpy().astype(int) != truth.astype(int)).sum())
        if info["n_correct_mismatch"]:
            log.warning("%s: %d stored `correct` values disagree with the benchmark (rescored from Y)",
                        run.path, info["n_correct_mismatch"])
    return (calls if calls is not None else choices), info
