"""`onboard.py`: a new model joins a trained router from n labelled items (vlrb.routers.onboard.add_model), and the
result is written as a router folder. When the benchmark also has every model of the router, its test split scores
the router before (the newcomer ignored) and after."""
from __future__ import annotations

import logging

import numpy as np
from omegaconf import DictConfig, OmegaConf

from vlrb.errors import ConfigError
from vlrb.io import claim_run_dir, write_json
from vlrb.jobs.common import load_router_dir, output_dir, run_job, to_plain

log = logging.getLogger("vlrb.onboard")


def main(cfg: DictConfig):
    return run_job(onboard, cfg)


def _check(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "model") or not cfg.get("model"):
        raise ConfigError("model is required: python onboard.py router_dir=<train run>/router model=<new model id>")
    n = cfg.n_labelled
    if not (n == "all" or (isinstance(n, int) and not isinstance(n, bool) and n >= 0)):
        raise ConfigError(f"n_labelled must be a whole number >= 0 or all, got {n!r}")
    if cfg.split not in ("train", "dev"):
        raise ConfigError(f"split must be train or dev (test scores the result), got {cfg.split!r}")


def onboard(cfg: DictConfig) -> dict:
    from vlrb.artifact import save_trained_router
    from vlrb.jobs.build import load_benchmark
    from vlrb.onboarding import choices_in, columns, join
    from vlrb.pricing import manifest_prices
    from vlrb.routers.onboard import can_onboard
    from vlrb.routing.metrics import route_metrics

    _check(cfg)
    tr = load_router_dir(cfg)
    model = str(cfg.model)
    if not can_onboard(tr.router):
        raise ConfigError(f"router_dir={cfg.router_dir}: {tr.name} cannot take a new model; onboarding needs a router "
                          "that predicts each model's probability of being right (vlrb_cal, per_dataset)")
    if model in tr.models:
        raise ConfigError(f"model={model!r} is already one of the router's models")
    out = output_dir()
    claim_run_dir(out)
    bench = load_benchmark(cfg, encoder=tr.recipe.encoder if tr.recipe is not None else None)
    if model not in bench.models:
        raise ConfigError(f"model={model!r}: not a model of the benchmark at {cfg.data.root}; its models: "
                          f"{', '.join(bench.models)}")
    split = tr.with_inputs(bench.split(cfg.split))
    n = len(split) if cfg.n_labelled == "all" else int(cfg.n_labelled)
    bench_prices = manifest_prices(bench.root) or {}
    prices = {**bench_prices, **(tr.prices or {})}  # the router's own prices first; the newcomer's from the benchmark
    if cfg.price is not None:
        prices[model] = {"input_per_1m": float(cfg.price), "output_per_1m": float(cfg.price)}
    joined = join(tr.router, split, model, bench.models.index(model), n, int(cfg.seed), prices=prices)
    metrics = {"model": model, "n_labelled": n, "split": cfg.split, "router": tr.name}
    if all(m in bench.models for m in tr.models):  # the benchmark can score both: before and after
        test = tr.with_inputs(bench.split("test"))
        full = [*tr.models, model]
        order = [bench.models.index(m) for m in full]
        sub = columns(test, order, full)
        for name, ch in (("before", choices_in(full, tr.router, columns(test, order[:-1], tr.models))),
                         ("after", np.asarray(joined.route(sub)))):
            m = route_metrics(sub, ch, bench.cost_bounds, prefix="", breakdown=False)
            metrics.update({f"test/{name}/{k}": m[k] for k in ("accuracy", "avg_cost", "rank_score")})
            metrics[f"test/{name}/share_new"] = float(np.mean(ch == len(full) - 1))
        log.info("test rank score %.2f -> %.2f with %s (chosen for %.1f%% of test requests)",
                 metrics["test/before/rank_score"] * 100, metrics["test/after/rank_score"] * 100, model,
                 metrics["test/after/share_new"] * 100)
    new_prices = {**(tr.prices or {}), **({model: prices[model]} if model in prices else {})}
    mean_cost = dict(tr.mean_cost or {})
    known_mean = [mean_cost[m] for m in tr.models] if all(m in mean_cost for m in tr.models) else None
    mean_cost.update(joined.newcomer_costs(split, known_mean=known_mean))
    save_trained_router(joined, out / "router", recipe=tr.recipe, prices=new_prices or None, mean_cost=mean_cost,
                        lam=tr.lam, config=to_plain(cfg), benchmark=(tr.info or {}).get("benchmark"), metrics=metrics)
    write_json(out / "onboard.json", metrics)
    log.info("router with %s: %s (serve it: python serve.py router_dir=%s)", model, out / "router", out / "router")
    return metrics

