"""Honest model selection and the once-only test report.

`selection=cv` chooses λ and hyper-parameters by k-fold cross-validation on train+dev, from a grid declared in
config (`selection.grid`, `selection.per_router.<router>`), refits the chosen configuration and leaves test to be
scored once. Why: picking λ on one small dev split fits noise (on MATH-Vision, routers chosen on its 304 dev items
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
import copy
import dataclasses
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vlrb.data.benchmark import Split
from vlrb.errors import ConfigError
from vlrb.routing.metrics import (best_single_model, bootstrap_ci, bootstrap_indices, bootstrap_weights,
                                  paired_bootstrap, route_metrics, take_rows)

log = logging.getLogger("vlrb.selection")
SELECTIONS = ("dev", "cv")


@dataclass
class Selection:
    """What `select_and_refit` hands back to the train job."""

    router: Any  # the refitted router, chosen configuration
    cfg: Any  # the run config with the chosen values filled in
    metrics: dict = field(default_factory=dict)  # val/* (out-of-fold on train+dev), cv/*
    table: list = field(default_factory=list)  # one row per candidate


def selection_name(cfg) -> str:
    name = str((cfg.get("selection") or {}).get("name", "dev"))
    if name not in SELECTIONS:
        raise ConfigError(f"selection={name!r}: choose one of {', '.join(SELECTIONS)} (conf/selection/)")
    return name


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


# ------------------------------------------------------------------------------------------ the grid
def _flat(grid: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (grid or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def candidates(cfg, router) -> list[dict[str, Any]]:
    """Every combination of the grid axes that apply to this router: `lambda` (routers that use it), `router.<p>`
    from `selection.grid`, and `selection.per_router.<router name>.<p>`. [{}] when nothing applies."""
    from vlrb.jobs.common import to_plain

    sel = cfg.selection
    axes: dict[str, list] = {}
    for key, values in _flat(to_plain(sel.get("grid")) or {}).items():
        if key == "lambda":
            if router.uses_lambda:
                axes[key] = values
        elif key.startswith("router."):
            axes[key] = _check_axis(cfg, key, values, f"selection.grid.{key}")
        else:
            raise ConfigError(f"selection.grid.{key}: grid keys are `lambda` and `router.<parameter>`")
    own = (to_plain(sel.get("per_router")) or {}).get(router.name) or {}
    for key, values in own.items():
        axes[f"router.{key}"] = _check_axis(cfg, f"router.{key}", values, f"selection.per_router.{router.name}.{key}")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"selection grid axis {key}: expected a non-empty list of values, got {values!r}")
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def _check_axis(cfg, key: str, values, where: str):
    param = key.split(".", 1)[1]
    if param not in cfg.router or param == "_target_":
        params = [k for k in cfg.router if not str(k).startswith("_")]
        raise ConfigError(f"{where}: router {cfg.router.get('_target_')} has no parameter {param!r} "
                          f"(its parameters: {', '.join(map(str, params))})")
    return values


def with_values(cfg, values: dict[str, Any]):
    """A copy of the run config with grid values set (`lambda`, `router.<p>`); `router.lam: ${lambda}` follows."""
    from omegaconf import OmegaConf, open_dict

    out = copy.deepcopy(cfg)
    with open_dict(out):
        for key, v in values.items():
            OmegaConf.update(out, key, v, merge=False)
    return out


def _label(values: dict) -> str:
    return ", ".join(f"{k.removeprefix('router.')}={v}" for k, v in values.items()) or "(defaults)"


# ------------------------------------------------------------------------------------------ cross-validation
def _fit(router, train: Split, dev: Split | None, ctx) -> None:
    if router.trainable:
        router.fit(train, dev, ctx)
    else:
        router.fit(train, dev)


def cross_validate(cfg, data, ctx, build: Callable, router) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """(one row per candidate with its out-of-fold scores, the fold of each train+dev row, the out-of-fold choices
    of each candidate (n_candidates, n_rows)). `build(router_cfg)` makes a fresh router."""
    sel = cfg.selection
    if getattr(router, "fit_on", "train") != "train":
        raise ConfigError(f"selection=cv fits {router.label} on folds of train+dev; router.fit_on=test is for "
                          f"reproducing upstream numbers only")
    pool = join_splits(data["train"], data["dev"], "train+dev")
    from_dev = np.r_[np.zeros(len(data["train"]), bool), np.ones(len(data["dev"]), bool)]
    k = int(sel.get("folds", 5))
    fold = fold_ids(pool.datasets, k, int(sel.get("seed", 42)))
    quiet = dataclasses.replace(ctx, loggers=[], progress=False) if ctx is not None else None
    cands = candidates(cfg, router)
    log.info("selection=cv: %d candidate(s) x %d folds on %d train+dev samples (test untouched)",
             len(cands), k, len(pool))
    rows, oof_all = [], np.empty((len(cands), len(pool)), np.int64)
    with _quiet_lightning():
        for c, values in enumerate(cands):
            rows.append(_cross_validate_one(values, cfg, pool, from_dev, fold, build, quiet, data.bench.cost_bounds,
                                            oof_all[c]))
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


def _cross_validate_one(values, cfg, pool, from_dev, fold, build, quiet, bounds, oof) -> dict:
    """Out-of-fold choices of one candidate, written into `oof`; returns its row of the table."""
    beta, k = float(cfg.scoring.beta), int(fold.max()) + 1
    t0 = time.perf_counter()
    ccfg = with_values(cfg, values)
    fold_scores = []
    for f in range(k):
        held = fold == f
        r = build(ccfg.router)
        if r.trainable:
            _fit(r, take_rows(pool, ~held & ~from_dev), take_rows(pool, ~held & from_dev), quiet)
        else:
            _fit(r, take_rows(pool, ~held), None, quiet)
        part = take_rows(pool, held)
        oof[held] = r.route(part)
        fold_scores.append(route_metrics(part, oof[held], bounds, prefix="", beta=beta, breakdown=False)["rank_score"])
    m = route_metrics(pool, oof, bounds, prefix="", beta=beta, breakdown=False)
    log.info("  cv %-40s rank score %.2f (folds %.2f ± %.2f)  acc %.2f%%  cost %.3f $/10K", _label(values),
             m["rank_score"] * 100, np.mean(fold_scores) * 100, np.std(fold_scores) * 100, m["accuracy"] * 100,
             m["avg_cost"] * 1e4)
    return {**values, "rank_score": m["rank_score"], "accuracy": m["accuracy"], "avg_cost": m["avg_cost"],
            "fold_rank_score_mean": float(np.mean(fold_scores)), "fold_rank_score_sd": float(np.std(fold_scores)),
            "seconds": time.perf_counter() - t0}


def select_and_refit(cfg, data, ctx, build: Callable, router, out: Path | None = None) -> Selection:
    """Cross-validate the grid on train+dev, refit the best configuration, return it with its out-of-fold metrics
    (as `val/*`, so sweeps and evaluate.py select on them) and the candidate table (also `<out>/selection.json`).
    `build(router_cfg)` makes a fresh router; `router` is one made from the run's config (its name and kind)."""
    from vlrb.io import write_json

    rows, fold, oof_all = cross_validate(cfg, data, ctx, build, router)
    best = int(np.argmax([r["rank_score"] for r in rows]))  # ties: the first in grid order
    chosen = {k: v for k, v in rows[best].items() if k == "lambda" or k.startswith("router.")}
    final_cfg = with_values(cfg, chosen)
    final = build(final_cfg.router)
    if final.trainable:
        _fit(final, data["train"], data["dev"], ctx)
    else:
        _fit(final, join_splits(data["train"], data["dev"], "train+dev"), None, ctx)
    pool = join_splits(data["train"], data["dev"], "train+dev")
    bounds, beta = data.bench.cost_bounds, float(cfg.scoring.beta)
    metrics = route_metrics(pool, oof_all[best], bounds, prefix="val/", beta=beta)
    metrics.update({"selection": "cv", "cv/folds": int(fold.max()) + 1, "cv/candidates": len(rows),
                    "cv/rank_score": rows[best]["rank_score"], "cv/accuracy": rows[best]["accuracy"],
                    "cv/avg_cost": rows[best]["avg_cost"], "cv/fold_rank_score_sd": rows[best]["fold_rank_score_sd"]})
    metrics.update({f"cv/chosen/{k.removeprefix('router.')}": _scalar(v) for k, v in chosen.items()})
    log.info("selection=cv chose %s (out-of-fold rank score %.2f); refitted on %s", _label(chosen),
             rows[best]["rank_score"] * 100, "train (dev: early stopping)" if final.trainable else "train+dev")
    if out is not None:
        write_json(Path(out) / "selection.json", {"selection": "cv", "folds": int(fold.max()) + 1,
                                                  "chosen": chosen, "candidates": rows})
    return Selection(final, final_cfg, metrics, rows)


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
        from vlrb.routers.calibrated import expected_calibration_error

        p = router.predict_correctness(test)
        out["test/ece"] = expected_calibration_error(p, test.Y)
        out["test/brier"] = float(((p - test.Y) ** 2).mean())
    return out
