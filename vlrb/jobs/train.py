"""`train.py`: one run = config -> benchmark (+ features) -> router built from its `_target_` -> fit with
dev-based selection -> dev and test scored once -> metrics.json, predictions.parquet and a self-contained
`router/` in the run directory -> the configured loggers."""
from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from vlrb.process import import_lightning, is_rank_zero
from vlrb.errors import ConfigError
from vlrb.io import check_run_dir, claim_run_dir, write_json
from vlrb.jobs.common import build_router, fit_router, once_per_process, output_dir, run_job, sweep_name, to_plain
from vlrb.jobs.lomo import check as check_lomo, fit_lomo, is_lomo, mean_cost as lomo_mean_cost
from vlrb.jobs.reuse import train_once_per_lambda_free_config

log = logging.getLogger("vlrb.train")


def main(cfg: DictConfig) -> float:
    """Hydra task: returns the optimised metric (NaN for a failed job of a sweep)."""
    return run_job(_run, cfg, default=float("nan"))


def _run(cfg: DictConfig) -> float:
    out = output_dir()
    if is_rank_zero():
        check_run_dir(out)  # someone's files: refused before anything else is said about the config
    validate(cfg)
    if not is_rank_zero():  # a DDP helper process: Lightning re-ran this command; it joins the fit, writes nothing
        if build_router(cfg.router).trainable:
            train(cfg, out)
        return float("nan")
    claim_run_dir(out)  # never write over another run's results
    try:
        metrics = train_once_per_lambda_free_config(cfg, out, train)  # sweeps: λ-free routers fitted once
    finally:
        _finish_wandb()
    return float(metrics.get(cfg.get("optimized_metric", "val/rank_score"), float("nan")))


def validate(cfg: DictConfig) -> None:
    """Checks that need nothing loaded: a bad value fails in a second, not after the data is read."""
    from vlrb.routing.soft_labels import parse_lambda

    try:
        parse_lambda(cfg["lambda"])
    except (ValueError, TypeError) as e:
        raise ConfigError(f"lambda={cfg['lambda']!r}: {e}") from None
    router = cfg.get("router")
    if not router or "_target_" not in router:
        raise ConfigError("router: choose one with router=<name> (conf/router/); its config needs a _target_")
    if cfg.get("backbone") is not None and "backbone" not in router:
        raise ConfigError(f"backbone={_choice('backbone')}: router={_choice('router')} takes no backbone "
                          "(only the end-to-end routers routerdc, cosinecls, zooter and vlc do)")
    workers = cfg.get("num_workers", "auto")
    if str(workers) != "auto" and not (isinstance(workers, int) and workers >= 0):
        raise ConfigError(f"num_workers must be auto or a whole number >= 0, got {workers!r}")
    if str(cfg.data.get("reader")) == "feedback":  # data=feedback: a traffic log, not a benchmark
        from vlrb.jobs.feedback import check_feedback

        return check_feedback(cfg)
    check_data_root(cfg)
    if is_lomo(cfg):
        check_lomo(cfg)


def check_data_root(cfg: DictConfig) -> None:
    """data.root holds a built benchmark, or is a place the demo may be built into (checked before any import
    of torch, so a wrong path fails in a second)."""
    from vlrb.data.build import check_root

    root = Path(cfg.data.root)
    if (root / "data" / "matrices" / "Y.npz").exists():
        return
    if cfg.data.get("generate") is None:
        raise ConfigError(f"data.root={root} holds no built benchmark; build it first: "
                          f"python build_data.py data={cfg.data.get('name', '...')} data.root={root} ...")
    from vlrb.jobs.build import may_create_parents

    check_root(root, create_parents=may_create_parents(cfg))  # the demo will be built there: never over user files


def _choice(group: str) -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get(group))
    return "?"


def build_loggers(cfg: DictConfig, out: Path, run_name: str) -> list:
    """Lightning loggers from `logger=`; W&B picks offline mode when no account is configured."""
    from vlrb.components import instantiate
    from vlrb.eval.wandb_utils import resolve_wandb_mode

    loggers = []
    for key, node in (cfg.get("logger") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        lg = OmegaConf.to_container(node, resolve=True)  # resolved in place: `${task_name}` etc. need the root
        kw = {}
        if key == "wandb":
            mode = resolve_wandb_mode(lg.pop("mode", None))
            if mode == "disabled":
                continue
            kw = {"offline": bool(lg.get("offline")) or mode == "offline", "name": lg.get("name") or run_name,
                  "save_dir": str(out)}
            if sweep_name():  # every run of one multirun shares a W&B group, so the dashboard compares them
                kw["group"] = f"{lg.get('group') or cfg.task_name}-{sweep_name()}"
        logger = instantiate(lg, **kw)
        if key == "wandb":  # Lightning passes `anonymous`, which wandb >= 0.19 ignores with a warning per run
            getattr(logger, "_wandb_init", {}).pop("anonymous", None)
        loggers.append(logger)
    return loggers


def prepare_data(cfg: DictConfig, router):
    """The benchmark (the demo is built first when missing) and the run's `RoutingData` for this router."""
    from vlrb.jobs.build import load_benchmark
    from vlrb.features.routing_data import RoutingData

    needs_features = "features" in router.inputs
    bench = load_benchmark(cfg, encoder=cfg.encoder if needs_features else None)
    if cfg.get("ood") and not is_lomo(cfg):  # leave one dataset (group) out: the held-out part is the whole test split
        from vlrb.data.ood import hold_out

        bench = hold_out(bench, cfg.ood.protocol, cfg.ood.holdout)
    data = RoutingData.prepare(bench, router.inputs, encoder=to_plain(cfg.encoder) if needs_features else None,
                               fusion=cfg.get("fusion"), scaler_fit=router.scaler_fit,
                               num_workers=cfg.get("num_workers", "auto"))
    if len(data["train"]) == 0:
        raise ConfigError(f"the benchmark at {cfg.data.root} has an empty train split: nothing to fit")
    return data


def train(cfg: DictConfig, out: Path) -> dict:
    """One run: fit (selection=dev or cv), score dev and test once, write metrics, predictions and the router."""
    L = import_lightning()

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    t0 = time.perf_counter()
    if str(cfg.data.get("reader")) == "feedback":  # data=feedback: learn from a traffic log (vlrb/jobs/feedback.py)
        from vlrb.jobs.feedback import train_on_feedback

        metrics, preds = train_on_feedback(cfg, out)
        _log_final(build_loggers(cfg, out, f"{metrics['router']}-feedback"), cfg, metrics,
                   preds if preds is not None else pd.DataFrame())
        return metrics
    router = build_router(cfg.router)
    data = prepare_data(cfg, router)
    bench = data.bench
    if bench.root is not None:  # what the build dropped or could not read, on the console of every run
        from vlrb.jobs.build import skipped_lines

        for line in skipped_lines(bench.root):
            if once_per_process(line):  # a sweep's jobs share the benchmark: its notes once
                log.info(line)
    ctx = fit_context(cfg, out, router, data)
    t_fit = time.perf_counter()
    lomo = {}
    if is_lomo(cfg):  # leave one model out: fitted without it, the run's router is the one it joined
        router, cfg, sel_metrics, lomo = fit_lomo(cfg, router, data, ctx, out, fit)
    else:
        router, cfg, sel_metrics = fit(cfg, router, data, ctx, out)
    fit_s = time.perf_counter() - t_fit
    if not is_rank_zero():  # a DDP helper process: the fit is done, rank 0 scores and writes the run
        return {}

    beta = float(cfg.scoring.beta)
    metrics = {"router": router.name, "label": router.label, "lambda": router_lambda(router),
               "cost_scale": getattr(router, "cost_scale", None) if router.uses_lambda else None,
               "benchmark/root": str(Path(bench.root).resolve()) if bench.root is not None else None,
               "benchmark/fingerprint": bench.fingerprint, "fit_seconds": fit_s}
    if cfg.get("ood"):
        metrics.update({"ood/protocol": str(cfg.ood.protocol), "ood/holdout": str(cfg.ood.get("holdout", cfg.ood.get("model")))})
    metrics.update(lomo)
    scored, predictions, test_choices = score(router, data, beta)
    metrics.update(scored)
    metrics.update(score_outage(router, data, cfg.get("outage"), beta, metrics))
    metrics.update(sel_metrics)  # selection=cv: val/* are out-of-fold scores on train+dev (dev took part in the refit)
    metrics.update(_report(cfg, data, router, test_choices, beta))
    info = dict(router.fit_info or {})
    # the labels this router was fitted to, as it computed them (its own λ, cost scale and scheme)
    metrics.update({f"labels/{k}": v for k, v in (info.pop("label_diagnostics", None) or {}).items()})
    metrics.update(_flat_fit_info(info))
    metrics["total_seconds"] = time.perf_counter() - t0

    write_json(out / "metrics.json", metrics)
    predictions.to_parquet(out / "predictions.parquet", index=False)
    if cfg.get("save_router", True) and router.saves_state:
        from vlrb.artifact import save_trained_router

        from vlrb.pricing import manifest_prices

        save_trained_router(router, out / "router", recipe=data.recipe, prices=manifest_prices(bench.root),
                            mean_cost=lomo_mean_cost(data, router),
                            lam=metrics["lambda"], config=to_plain(cfg),
                            benchmark={"root": metrics["benchmark/root"], "fingerprint": metrics["benchmark/fingerprint"]},
                            metrics=metrics)
    _log_final(ctx.loggers, cfg, metrics, predictions)
    _say_results(metrics, out)
    return metrics


def router_lambda(router):
    """The λ a router trained with, as metrics.json and the artifact record it (None: it does not use λ)."""
    from vlrb.routing.soft_labels import parse_lambda

    if not router.uses_lambda:
        return None
    lam = parse_lambda(getattr(router, "lam"))
    return lam if math.isfinite(lam) else "inf"


def fit_context(cfg: DictConfig, out: Path, router, data):
    """The trainer preset and callbacks (conf/trainer, conf/callbacks: factories, instantiated as they are), the
    run's loggers and data-loading settings, for routers that train networks."""
    from vlrb.components import instantiate
    from vlrb.routers.lit import FitContext

    callbacks = {k: instantiate(v) for k, v in (cfg.get("callbacks") or {}).items() if v is not None}
    return FitContext(trainer=instantiate(cfg.trainer), callbacks=callbacks,
                      loggers=build_loggers(cfg, out, f"{router.name}-lam{cfg['lambda']}"),
                      cost_bounds=data.bench.cost_bounds, beta=float(cfg.scoring.beta), seed=int(cfg.seed),
                      num_workers=data.num_workers, progress=sys.stderr.isatty())


def fit(cfg: DictConfig, router, data, ctx, out: Path):
    """(fitted router, the run config it was fitted with, selection metrics): selection=cv cross-validates the grid
    on train+dev and refits the best; selection=dev fits the configured router (dev steers early stopping)."""
    from vlrb.jobs.selection import candidates, maker, selection_name, with_values
    from vlrb.selection import select_and_refit

    if selection_name(cfg) == "cv":
        sel = select_and_refit(maker(cfg), candidates(cfg, router), data, ctx, folds=int(cfg.selection.get("folds", 5)),
                               seed=int(cfg.selection.get("seed", 42)), beta=float(cfg.scoring.beta), out=out)
        return sel.router, with_values(cfg, sel.values), sel.metrics
    fit_on = getattr(router, "fit_on", "train")  # baselines: fit_on=test reproduces upstream (labelled)
    log.info("training %s on %d %s samples (λ=%s)", router.label, len(data[fit_on]), fit_on,
             router_lambda(router) if router.uses_lambda else "unused")
    fit_router(router, data, ctx)
    return router, cfg, {}


def score(router, data, beta: float):
    """(dev and test metrics, predictions of both, the test choices): test is scored exactly once, after fitting.
    A cascade's predictions also name every model it called (`models_called`, "a>b"); `cost` is what it paid."""
    from vlrb.routing.calls import Calls, as_calls
    from vlrb.routing.metrics import route_metrics

    metrics, preds, test_choices = {}, [], None
    models = np.asarray(data.bench.models, dtype=object)
    for name, prefix in (("dev", "val/"), ("test", "test/")):
        sp = data[name]
        choice = router.route(sp)
        metrics.update(route_metrics(sp, choice, data.bench.cost_bounds, prefix=prefix, beta=beta))
        rows = np.arange(len(sp))
        calls = as_calls(choice)  # a one-shot choice is one call
        frame = pd.DataFrame({"sample_id": sp.sample_ids, "split": name, "model_id": models[calls.final],
                              "correct": sp.Y[rows, calls.final].astype(np.int8), "cost": calls.cost(sp.C)})
        if isinstance(choice, Calls):
            frame["models_called"] = choice.labels(models)
        preds.append(frame)
        test_choices = choice
    return metrics, pd.concat(preds, ignore_index=True), test_choices


def score_outage(router, data, down, beta: float, metrics: dict) -> dict:
    """`outage=[models]`: test scored again with those models down (the router chooses among the rest), and the
    rank score it costs (outage/test/*, outage/delta_rank_score)."""
    from vlrb.routing.metrics import route_metrics

    if not down:
        return {}
    down = [str(m) for m in (down if isinstance(down, (list, tuple)) or OmegaConf.is_list(down) else [down])]
    models = list(data.bench.models)
    unknown = [m for m in down if m not in models]
    if unknown or len(set(down)) >= len(models):
        raise ConfigError(f"outage={down}: " + (f"{unknown} not among the benchmark's models ({', '.join(models)})"
                                                if unknown else "at least one model must stay up"))
    allowed = np.asarray([m not in down for m in models])
    try:
        choice = router.route_among(data["test"], allowed)
    except ValueError as e:
        raise ConfigError(f"outage={down}: {e}") from None
    out = route_metrics(data["test"], choice, data.bench.cost_bounds, prefix="outage/test/", beta=beta, breakdown=False)
    out["outage/models"] = ",".join(down)
    out["outage/delta_rank_score"] = out["outage/test/rank_score"] - metrics["test/rank_score"]
    log.info("outage of %s: test rank score %.2f (%+.2f)", ", ".join(down), out["outage/test/rank_score"] * 100,
             out["outage/delta_rank_score"] * 100)
    return out


def _report(cfg: DictConfig, data, router, test_choices, beta: float) -> dict:
    """The test report (bootstrap CIs, paired against the best single model) and the router-only throughput."""
    from vlrb.routing.metrics import router_throughput
    from vlrb.selection import report_test

    out = report_test(data, test_choices, beta=beta, router=router, n_bootstrap=int(cfg.scoring.bootstrap),
                      seed=int(cfg.scoring.seed))
    tp = cfg.scoring.get("throughput")
    if tp:
        thr = router_throughput(router, data["test"], batch_size=int(tp.batch_size), warmup=int(tp.warmup),
                                runs=int(tp.runs))
        out.update({f"test/throughput_{k}": v for k, v in thr.items()})
    return out


def _say_results(metrics: dict, out: Path) -> None:
    log.info("val/rank_score %.2f  test/accuracy %.2f%%  test/avg_cost %.3f $/10K  test/rank_score %.2f",
             metrics["val/rank_score"] * 100, metrics["test/accuracy"] * 100, metrics["test/avg_cost"] * 1e4,
             metrics["test/rank_score"] * 100)
    log.info("vs the best single model (%s, chosen on train+dev): Δ rank score %+.2f [%+.2f, %+.2f], %s",
             metrics["test/best_single/model"], *(metrics[f"test/vs_best_single/delta_rank_score{k}"] * 100
                                                  for k in ("", "_lo", "_hi")), metrics["test/vs_best_single/outcome"])
    log.info("run dir: %s", out)
    offline = sorted(out.glob("wandb/offline-run-*"))
    if offline and not sweep_name():  # a sweep prints one command for all its jobs
        log.info("W&B: offline run kept; upload it with: wandb sync %s", offline[-1])


def _flat_fit_info(info: dict) -> dict:
    out = {}
    for k, v in (info or {}).items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[f"fit/{k}"] = v
        elif isinstance(v, dict):
            out.update({f"fit/{k}/{kk}": vv for kk, vv in v.items() if isinstance(vv, (int, float, str, bool))})
    return out


def _log_final(loggers, cfg, metrics: dict, preds: pd.DataFrame) -> None:
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for lg in loggers:
        try:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            lg.log_metrics(scalars)
            if type(lg).__name__ == "WandbLogger":
                import wandb

                lg.experiment.log({"predictions": wandb.Table(dataframe=preds.astype(
                    {"model_id": str, "sample_id": str, "split": str}))})
            lg.save()
        except Exception as e:  # logging must never lose a finished run
            log.warning("logger %s failed: %s", type(lg).__name__, e)


def _finish_wandb() -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except Exception:  # noqa: BLE001 - a logger problem must not hide the run's own outcome
        pass
