"""`train.py data=feedback`: a router learned from a served router's traffic log (partial labels), and the simulated
logs of `scripts/simulate_feedback.py`.

    python train.py data=feedback data.path=logs/feedback/demo_sim.sqlite router=offpolicy [data.benchmark=data/demo]

The log's features were made by the logging router's feature recipe (`data.router_dir`, else the folder the log's
meta names): the learned router is saved with that recipe, so it is served like any router folder. With
`data.benchmark`, dev and test of that built benchmark are scored as in every run (features through the same
recipe); without one the run reports the log's own off-policy estimates of the learned policy (`feedback/*`).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from vlrb.errors import ConfigError
from vlrb.jobs.common import build_router, to_plain

log = logging.getLogger("vlrb.train")


def is_feedback(cfg: DictConfig) -> bool:
    return str((cfg.get("data") or {}).get("reader", "")) == "feedback"


def check_feedback(cfg: DictConfig) -> None:
    """What can be checked before the log is read: the database, the benchmark, the protocol."""
    from vlrb.jobs.selection import selection_name

    path = cfg.data.get("path")
    if path in (None, "", "???") or not Path(str(path)).is_file():
        raise ConfigError(f"data.path={path}: no feedback database there (serve.py writes one: feedback.path; "
                          "scripts/simulate_feedback.py simulates one)")
    bench = cfg.data.get("benchmark")
    if bench and not (Path(str(bench)) / "data" / "matrices" / "Y.npz").exists():
        raise ConfigError(f"data.benchmark={bench} holds no built benchmark to score on (build_data.py)")
    if selection_name(cfg) != "dev":
        raise ConfigError("data=feedback takes selection=dev: a log has no labelled rows to cross-validate on")
    if cfg.get("ood"):
        raise ConfigError("data=feedback takes no ood= protocol: the log is what was served")


def _recipe(cfg: DictConfig, meta: dict, dim: int):
    """The feature recipe that made the log's features: data.router_dir, else the log's meta router_dir."""
    from vlrb.features.recipe import RECIPE_JSON, FeatureRecipe

    where = cfg.data.get("router_dir") or meta.get("router_dir")
    key = "data.router_dir" if cfg.data.get("router_dir") else f"{cfg.data.path} (meta router_dir)"
    if not where:
        raise ConfigError(f"data.path={cfg.data.path}: the log names no router folder whose feature recipe made its "
                          "features; give it: data.router_dir=<the logging router's folder>")
    if not (Path(where) / RECIPE_JSON).exists():
        raise ConfigError(f"{key}={where}: no {RECIPE_JSON} there (the logging router's feature recipe)")
    recipe = FeatureRecipe.load(where)
    if len(recipe.scaler.scaler.mean_) != dim:
        raise ConfigError(f"{key}={where}: its recipe makes {len(recipe.scaler.scaler.mean_)} features, the log "
                          f"holds {dim}: not the recipe that made them")
    return recipe, Path(where)


def _prices(router_dir: Path, models: list[str], bench_root: str | None) -> dict | None:
    """The logging router's prices (its artifact.json), else the scoring benchmark's (its manifest), when known."""
    f = router_dir / "artifact.json"
    prices = (json.loads(f.read_text()).get("prices") or {}) if f.exists() else {}
    if not prices and bench_root:
        from vlrb.pricing import manifest_prices

        prices = manifest_prices(bench_root) or {}
    return {m: prices[m] for m in models if m in prices} or None


def _mean_cost(router, rows) -> dict:
    """Each model's mean $ per request, as the server's budget rule estimates it: the router's own (offpolicy: its
    mean logged cost), else the log's estimate."""
    cost = getattr(router, "cost_", None)
    if cost is None:
        cost = rows.est_costs.mean(0) if rows.est_costs is not None else np.full(len(rows.models), rows.cost.mean())
    return dict(zip(rows.models, map(float, cost)))


def train_on_feedback(cfg: DictConfig, out: Path) -> tuple[dict, pd.DataFrame | None]:
    """Fit the configured router on the log, score it (a benchmark's dev and test, else the log's own off-policy
    estimates), write metrics.json, predictions.parquet (with a benchmark) and router/. Returns (metrics, preds)."""
    from vlrb.artifact import save_trained_router
    from vlrb.feedback.learn import load_feedback, policy_value
    from vlrb.io import write_json

    t0 = time.perf_counter()
    router = build_router(cfg.router)
    if getattr(router, "learns_from", "labels") != "feedback":
        raise ConfigError(f"router={router.name} learns from full labels; a feedback log holds the chosen model's "
                          "outcome only: data=feedback needs a router that learns from partial labels "
                          "(router=offpolicy)")
    path = Path(str(cfg.data.path))
    rows, meta = load_feedback(path)
    recipe, router_dir = _recipe(cfg, meta, rows.X.shape[1])
    log.info("training %s on %d logged requests of %s (features: the recipe of %s)", router.label, len(rows), path,
             router_dir)
    t_fit = time.perf_counter()
    router.fit(rows)
    fit_s = time.perf_counter() - t_fit
    lam = _lambda(router)
    metrics = {"router": router.name, "label": router.label, "lambda": lam,
               "cost_scale": getattr(router, "cost_scale", None) if router.uses_lambda else None,
               "feedback/path": str(path.resolve()),
               "feedback/requests": len(rows), "fit_seconds": fit_s}
    choice = getattr(router, "oof_choice", None)  # decisions made out of fold, where the router keeps them
    value = policy_value(router.route(rows) if choice is None else choice, rows, getattr(router, "oof_reward", None))
    metrics.update({f"feedback/policy_{k}": v for k, v in value.items()})
    bench_info, preds = {"root": None, "fingerprint": None, "feedback": str(path.resolve())}, None
    if cfg.data.get("benchmark"):
        scored, preds, bench = _score_on_benchmark(cfg, router, recipe, rows.models)
        metrics.update(scored)
        bench_info.update(root=str(Path(bench.root).resolve()), fingerprint=bench.fingerprint)
        metrics.update({"benchmark/root": bench_info["root"], "benchmark/fingerprint": bench.fingerprint})
    metrics.update({f"fit/{k}": v for k, v in (router.fit_info or {}).items()
                    if isinstance(v, (int, float, str, bool)) or v is None})
    metrics["total_seconds"] = time.perf_counter() - t0
    write_json(out / "metrics.json", metrics)
    if preds is not None:
        preds.to_parquet(out / "predictions.parquet", index=False)
    if cfg.get("save_router", True):
        save_trained_router(router, out / "router", recipe=recipe,
                            prices=_prices(router_dir, rows.models, bench_info["root"]),
                            mean_cost=_mean_cost(router, rows), lam=lam,
                            config=to_plain(cfg), benchmark=bench_info, metrics=metrics)
    _say(metrics, out)
    return metrics, preds


def _lambda(router):
    """The λ a router trained with, as metrics.json records it (None: it does not use λ)."""
    import math

    from vlrb.routing.soft_labels import parse_lambda

    if not router.uses_lambda:
        return None
    lam = parse_lambda(router.lam)
    return lam if math.isfinite(lam) else "inf"


def _score_on_benchmark(cfg: DictConfig, router, recipe, models: list[str]):
    """dev and test of data.benchmark, features through the log's recipe: the metrics every run reports."""
    from vlrb.data.benchmark import Benchmark
    from vlrb.features.extract import extract_features
    from vlrb.features.routing_data import RoutingData
    from vlrb.routing.metrics import route_metrics
    from vlrb.selection import report_test

    bench = Benchmark.load(str(cfg.data.benchmark))
    if list(bench.models) != list(models):
        raise ConfigError(f"data.benchmark={cfg.data.benchmark}: its models {bench.models[:3]}... are not the log's "
                          f"{models[:3]}... (in order)")
    extract_features(bench, recipe.encoder, root=bench.root, progress=False)  # cached: a no-op
    splits = {"train": bench.split("train")}
    splits.update({s: bench.split(s).with_features(recipe.transform_bench(bench, s)) for s in ("dev", "test")})
    data = RoutingData(bench, splits, recipe)
    beta = float(cfg.scoring.beta)
    metrics, preds, choice = {}, [], None
    names = np.asarray(bench.models, dtype=object)
    for name, prefix in (("dev", "val/"), ("test", "test/")):
        sp = data[name]
        choice = router.route(sp)
        metrics.update(route_metrics(sp, choice, bench.cost_bounds, prefix=prefix, beta=beta))
        preds.append(pd.DataFrame({"sample_id": sp.sample_ids, "split": name, "model_id": names[choice],
                                   "correct": sp.Y[np.arange(len(sp)), choice].astype(np.int8),
                                   "cost": sp.C[np.arange(len(sp)), choice]}))
    metrics.update(report_test(data, choice, beta=beta, n_bootstrap=int(cfg.scoring.bootstrap),
                               seed=int(cfg.scoring.seed)))
    return metrics, pd.concat(preds, ignore_index=True), bench


def _say(metrics: dict, out: Path) -> None:
    if "test/rank_score" in metrics:
        log.info("val/rank_score %.2f  test/accuracy %.2f%%  test/avg_cost %.3f $/10K  test/rank_score %.2f",
                 metrics["val/rank_score"] * 100, metrics["test/accuracy"] * 100, metrics["test/avg_cost"] * 1e4,
                 metrics["test/rank_score"] * 100)
    log.info("on the log (%d requests): logged policy reward %.3f; the learned policy's off-policy value: IPS %.3f, "
             "SNIPS %.3f, DR %.3f (its decisions made out of fold)", metrics["feedback/requests"],
             metrics["feedback/policy_logged_reward"], metrics["feedback/policy_ips"],
             metrics["feedback/policy_snips"], metrics.get("feedback/policy_dr", float("nan")))
    log.info("run dir: %s", out)


def simulate(cfg: DictConfig, out: str | Path, *, policy: str = "uniform", epsilon: float = 0.1,
             router_dir: str | None = None, recipe_dir: str | None = None, split: str = "train",
             seed: int = 0) -> dict:
    """scripts/simulate_feedback.py: a log of the benchmark `cfg.data` names, its features through a recipe fitted
    as train.py fits it (uniform) or the logging router's own (epsilon, `router_dir`)."""
    from vlrb.data.benchmark import SPLIT_NAMES
    from vlrb.feedback.simulate import simulate_log
    from vlrb.jobs.build import load_benchmark

    out = Path(out)
    greedy = scores = None
    if router_dir:
        from vlrb.artifact import load_router

        tr = load_router(router_dir)
        if tr.recipe is None:
            raise ConfigError(f"--router-dir {router_dir}: a router that reads no features cannot log them")
        bench = load_benchmark(cfg, encoder=tr.recipe.encoder)
        sp = bench.split(split)
        X = tr.recipe.transform_bench(bench, split)
        scores = tr.predict_scores(sp.with_features(X))
        greedy, name, where = scores.argmax(1), tr.name, Path(router_dir)
    else:
        if policy == "epsilon":
            raise ConfigError("--policy epsilon needs --router-dir (the trained router to be greedy about)")
        from vlrb.features.recipe import FeatureRecipe

        bench = load_benchmark(cfg, encoder=cfg.encoder)
        recipe = FeatureRecipe.from_config(to_plain(cfg.encoder), cfg.get("fusion"))
        X = recipe.fit_splits(bench, SPLIT_NAMES)[split]
        where = Path(recipe_dir) if recipe_dir else out.with_suffix(".recipe")
        where.mkdir(parents=True, exist_ok=True)
        recipe.save(where)  # train.py data=feedback reads the features' recipe from here (meta router_dir)
        name = "uniform"
    return simulate_log(out, bench, X, split, policy=policy, epsilon=epsilon, greedy=greedy, scores=scores,
                        router_name=name, router_dir=where, seed=seed)
