"""Honest model selection and the once-only test report.

`select_and_refit(make, candidates, data, ctx)` chooses among candidate settings (dicts such as
{"lambda": 100, "router.k": 5}, which `make` turns into a fresh router) by k-fold cross-validation on train+dev,
refits the chosen one and leaves test to be scored once; vlrb.jobs.selection turns `selection=cv` and its grid
(`selection.grid`, `selection.per_router.<router>`) into those candidates. Why: picking λ on one small dev split fits noise (on MATH-Vision, routers chosen on its 304 dev items
beat the best single model there and lose on test); out-of-fold predictions cover every train+dev row.

The rules (README "Honest selection"):
* folds: the train+dev rows dealt at random into k folds within each dataset (seed `selection.seed`); test rows
  are never in a fold, never fitted on, never scored before the refit;
* a fold's router learns from the other folds. Routers that early-stop (`trainable`) learn from the other folds'
  train rows and early-stop on their dev rows: the same roles as in the refit; the others learn from all of them;
* a candidate's score is the rank score of its pooled out-of-fold choices (each train+dev row predicted once, by a
  router that never saw it), with the benchmark's cost bounds; the best wins, ties go to the first in grid order;
* refit: on train+dev (trainable routers: on train, early-stopping on dev);
* λ is a grid axis only for routers that use it (`uses_lambda`): the others are fitted once per fold, not once per λ.

`report_test` (every run, either selection) adds bootstrap CIs of the test metrics and a paired bootstrap against the
best single model, chosen on train+dev by rank score: is routing worth it at all on this benchmark?
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vlrb.data.benchmark import Split
from vlrb.errors import ConfigError
from vlrb.routing.calls import Calls, as_calls
from vlrb.routing.metrics import (best_single_model, bootstrap_ci, bootstrap_indices, bootstrap_weights,
                                  paired_bootstrap, route_metrics, take_rows)

log = logging.getLogger("vlrb.selection")


@dataclass
class Selection:
    """What `select_and_refit` hands back: the refitted router of the chosen candidate, its values, the metrics."""

    router: Any  # the refitted router, chosen configuration
    values: dict  # the chosen candidate (e.g. {"lambda": 100, "router.k": 5})
    metrics: dict = field(default_factory=dict)  # val/* (out-of-fold on train+dev), cv/*
    table: list = field(default_factory=list)  # one row per candidate


# ------------------------------------------------------------------------------------------ data helpers
def join_splits(a: Split, b: Split, name: str) -> Split:
    """Rows of `a` then rows of `b` as one split (every per-sample array concatenated, features too)."""
    arrays = {f.name: np.concatenate([getattr(a, f.name), getattr(b, f.name)]) for f in dataclasses.fields(Split)
              if isinstance(getattr(a, f.name), np.ndarray) and isinstance(getattr(b, f.name), np.ndarray)}
    return dataclasses.replace(a, name=name, **arrays)


def fold_ids(datasets, k: int, seed: int) -> np.ndarray:
    """Fold number (0..k-1) of every row: rows shuffled, then dealt round-robin within each dataset, so every fold
    holds about 1/k of each dataset. Deterministic for a seed."""
    datasets = np.asarray(datasets).astype(str)
    n = len(datasets)
    if not 2 <= k <= n:
        raise ConfigError(f"selection.folds={k}: need 2 <= folds <= the {n} train+dev samples")
    order = np.random.RandomState(seed).permutation(n)
    fold = np.empty(n, np.int64)
    start = 0
    for ds in np.unique(datasets):
        rows = order[datasets[order] == ds]
        fold[rows] = (start + np.arange(len(rows))) % k
        start += len(rows)  # the next dataset continues the deal, so small datasets do not all start at fold 0
    return fold


def label(values: dict) -> str:
    return ", ".join(f"{k.removeprefix('router.')}={v}" for k, v in values.items()) or "(defaults)"


# ------------------------------------------------------------------------------------------ cross-validation
def _fit(router, train: Split, dev: Split | None, ctx) -> None:
    if router.trainable:
        router.fit(train, dev, ctx)
    else:
        router.fit(train, dev)


def cross_validate(make: Callable[[dict], Any], candidates: list[dict], data, ctx, *, folds: int = 5, seed: int = 42,
                   beta: float = 0.1) -> tuple[list[dict], np.ndarray, list]:
    """(one row per candidate with its out-of-fold scores, the fold of each train+dev row, the out-of-fold choices
    of each candidate (one per candidate: (n_rows,) model indices, or a cascade's Calls)). `make(values)` builds a
    fresh router for a candidate's values."""
    probe = make(candidates[0])
    if getattr(probe, "fit_on", "train") != "train":
        raise ConfigError(f"selection=cv fits {probe.label} on folds of train+dev; router.fit_on=test is for "
                          f"reproducing upstream numbers only")
    pool = join_splits(data["train"], data["dev"], "train+dev")
    from_dev = np.r_[np.zeros(len(data["train"]), bool), np.ones(len(data["dev"]), bool)]
    fold = fold_ids(pool.datasets, int(folds), int(seed))
    quiet = dataclasses.replace(ctx, loggers=[], progress=False) if ctx is not None else None
    log.info("selection=cv: %d candidate(s) x %d folds on %d train+dev samples (test untouched)",
             len(candidates), int(folds), len(pool))
    rows, oof_all = [], []
    with _quiet_lightning():
        for values in candidates:
            row, oof = _cross_validate_one(values, make, pool, from_dev, fold, quiet, data.bench.cost_bounds, beta)
            rows.append(row)
            oof_all.append(oof)
    return rows, fold, oof_all


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's per-Trainer banner (GPU available, tips) once per fold fit would bury the CV table."""
    lg = logging.getLogger("lightning.pytorch")
    level = lg.level
    lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lg.setLevel(level)


def _cross_validate_one(values, make, pool, from_dev, fold, quiet, bounds, beta) -> tuple[dict, Calls]:
    """(its row of the table, the out-of-fold calls of one candidate: one call per row for one-shot routers)."""
    k = int(fold.max()) + 1
    t0 = time.perf_counter()
    fold_scores = []
    order, cascade = np.full((len(pool), 1), -1, np.int64), False
    for f in range(k):
        held = fold == f
        r = make(values)
        if r.trainable:
            _fit(r, take_rows(pool, ~held & ~from_dev), take_rows(pool, ~held & from_dev), quiet)
        else:
            _fit(r, take_rows(pool, ~held), None, quiet)
        part = take_rows(pool, held)
        routed = r.route(part)
        cascade |= isinstance(routed, Calls)
        calls = as_calls(routed)
        if calls.order.shape[1] > order.shape[1]:
            order = np.pad(order, ((0, 0), (0, calls.order.shape[1] - order.shape[1])), constant_values=-1)
        order[held, :calls.order.shape[1]] = calls.order
        fold_scores.append(route_metrics(part, calls, bounds, prefix="", beta=beta, breakdown=False)["rank_score"])
    oof = Calls(order) if cascade else order[:, 0]
    m = route_metrics(pool, oof, bounds, prefix="", beta=beta, breakdown=False)
    log.info("  cv %-40s rank score %.2f (folds %.2f ± %.2f)  acc %.2f%%  cost %.3f $/10K", label(values),
             m["rank_score"] * 100, np.mean(fold_scores) * 100, np.std(fold_scores) * 100, m["accuracy"] * 100,
             m["avg_cost"] * 1e4)
    return {**values, "rank_score": m["rank_score"], "accuracy": m["accuracy"], "avg_cost": m["avg_cost"],
            "fold_rank_score_mean": float(np.mean(fold_scores)), "fold_rank_score_sd": float(np.std(fold_scores)),
            "seconds": time.perf_counter() - t0}, oof


def select_and_refit(make: Callable[[dict], Any], candidates: list[dict], data, ctx, *, folds: int = 5,
                     seed: int = 42, beta: float = 0.1, out: Path | None = None) -> Selection:
    """Cross-validate `candidates` (each a dict of values that `make` turns into a fresh router) on train+dev, refit
    the best, return it with its out-of-fold metrics (as `val/*`, so sweeps and evaluate.py select on them) and the
    candidate table (also `<out>/selection.json`)."""
    from vlrb.io import write_json

    rows, fold, oof_all = cross_validate(make, candidates, data, ctx, folds=folds, seed=seed, beta=beta)
    best = int(np.argmax([r["rank_score"] for r in rows]))  # ties: the first in grid order
    chosen = dict(candidates[best])
    final = make(chosen)
    if final.trainable:
        _fit(final, data["train"], data["dev"], ctx)
    else:
        _fit(final, join_splits(data["train"], data["dev"], "train+dev"), None, ctx)
    pool = join_splits(data["train"], data["dev"], "train+dev")
    metrics = route_metrics(pool, oof_all[best], data.bench.cost_bounds, prefix="val/", beta=beta)
    metrics.update({"selection": "cv", "cv/folds": int(fold.max()) + 1, "cv/candidates": len(rows),
                    "cv/rank_score": rows[best]["rank_score"], "cv/accuracy": rows[best]["accuracy"],
                    "cv/avg_cost": rows[best]["avg_cost"], "cv/fold_rank_score_sd": rows[best]["fold_rank_score_sd"]})
    metrics.update({f"cv/chosen/{k.removeprefix('router.')}": _scalar(v) for k, v in chosen.items()})
    log.info("selection=cv chose %s (out-of-fold rank score %.2f); refitted on %s", label(chosen),
             rows[best]["rank_score"] * 100, "train (dev: early stopping)" if final.trainable else "train+dev")
    if out is not None:
        write_json(Path(out) / "selection.json", {"selection": "cv", "folds": int(fold.max()) + 1,
                                                  "chosen": chosen, "candidates": rows})
    return Selection(final, chosen, metrics, rows)


def _scalar(v):
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


# ------------------------------------------------------------------------------------------ the test report
def report_test(data, choices: np.ndarray, *, beta: float, n_bootstrap: int, seed: int, router=None) -> dict[str, Any]:
    """95% bootstrap CIs of the test metrics and a paired bootstrap (rank score) against the best single model,
    chosen on train+dev. Keys: test/{accuracy,avg_cost,rank_score}_{lo,hi}, test/best_single/*,
    test/vs_best_single/* (outcome win | tie | loss at 95%); for a router that predicts each model's chance of
    being right (`predict_correctness`), test/ece and test/brier of those predictions over every (sample, model)."""
    test, bounds = data["test"], data.bench.cost_bounds
    W = bootstrap_weights(bootstrap_indices(len(test), n_bootstrap, seed))
    out: dict[str, Any] = {f"test/{k}": v for k, v in bootstrap_ci(test, choices, bounds, beta=beta, indices=W).items()}
    k = best_single_model(join_splits(data["train"], data["dev"], "train+dev"), bounds, beta)
    single = np.full(len(test), k, np.int64)
    sm = route_metrics(test, single, bounds, prefix="", beta=beta, breakdown=False)
    out.update({"test/best_single/model": test.models[k], "test/best_single/accuracy": sm["accuracy"],
                "test/best_single/avg_cost": sm["avg_cost"], "test/best_single/rank_score": sm["rank_score"]})
    pb = paired_bootstrap(test, choices, single, bounds, beta=beta, indices=W)
    out.update({f"test/vs_best_single/{key}": pb[key] for key in
                ("delta_rank_score", "delta_rank_score_lo", "delta_rank_score_hi", "p_a_better", "outcome")})
    if router is not None and hasattr(router, "predict_correctness"):
        from vlrb.routing.metrics import expected_calibration_error

        p = router.predict_correctness(test)
        out["test/ece"] = expected_calibration_error(p, test.Y)
        out["test/brier"] = float(((p - test.Y) ** 2).mean())
    return out
