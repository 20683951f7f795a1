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
from vlrb.jobs.common import once_per_process, output_dir, run_job, sweep_name, to_plain
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
    check_data_root(cfg)


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


def build_router(router_cfg):
    """The router its config describes (`_target_` + keyword arguments), the one path for train and evaluate."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from vlrb.routers import Router

    try:
        router = instantiate(router_cfg, _convert_="all")
    except InstantiationException as e:  # a bad parameter value: say which, without Hydra's wrapping
        cause = e.__cause__ or e
        raise ConfigError(f"router ({router_cfg.get('_target_')}): {type(cause).__name__}: {cause}") from e
    if not isinstance(router, Router):
        raise ConfigError(f"router._target_={router_cfg._target_} is not a vlrb Router")
    return router


def build_loggers(cfg: DictConfig, out: Path, run_name: str) -> list:
    """Lightning loggers from `logger=`; W&B picks offline mode when no account is configured."""
    from hydra.utils import instantiate

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
    from vlrb.routing.data import RoutingData

    needs_features = "features" in router.inputs
    bench = load_benchmark(cfg, encoder=cfg.encoder if needs_features else None)
    if cfg.get("ood"):  # leave one dataset (group) out: the held-out part is the whole test split
        from vlrb.data.ood import hold_out

        bench = hold_out(bench, cfg.ood.protocol, cfg.ood.holdout)
    data = RoutingData.prepare(bench, router.inputs, encoder=to_plain(cfg.encoder) if needs_features else None,
                               fusion=cfg.get("fusion"), scaler_fit=router.scaler_fit,
                               num_workers=cfg.get("num_workers", "auto"))
    if len(data["train"]) == 0:
        raise ConfigError(f"the benchmark at {cfg.data.root} has an empty train split: nothing to fit")
    return data


def train(cfg: DictConfig, out: Path) -> dict:
    L = import_lightning()

    from vlrb.artifact import save_trained_router
    from vlrb.routers.lit import FitContext
    from vlrb.routing.metrics import route_metrics, router_throughput
    from vlrb.routing.soft_labels import parse_lambda
    from vlrb.selection import report_test, select_and_refit, selection_name

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    lead = is_rank_zero()
    if lead:
        OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    t0 = time.perf_counter()
    router = build_router(cfg.router)
    data = prepare_data(cfg, router)
    bench, lam = data.bench, parse_lambda(cfg["lambda"])
    if bench.root is not None:  # what the build dropped or could not read, on the console of every run
        from vlrb.jobs.build import skipped_lines

        for line in skipped_lines(bench.root):
            if once_per_process(line):  # a sweep's jobs share the benchmark: its notes once
                log.info(line)
    ctx = FitContext(trainer=to_plain(cfg.trainer), callbacks=to_plain(cfg.get("callbacks") or {}),
                     loggers=build_loggers(cfg, out, f"{router.name}-lam{cfg['lambda']}"),
                     cost_bounds=bench.cost_bounds, beta=float(cfg.scoring.beta), seed=int(cfg.seed),
                     num_workers=data.num_workers, progress=sys.stderr.isatty())
    train_split = data["train"]
    t_fit = time.perf_counter()
    sel = None
    if selection_name(cfg) == "cv":  # k-fold CV on train+dev picks λ and hyper-parameters, then refits
        sel = select_and_refit(cfg, data, ctx, build_router, router, out)
        router, cfg, lam = sel.router, sel.cfg, parse_lambda(sel.cfg["lambda"])
    else:
        fit_on = getattr(router, "fit_on", "train")  # baselines: fit_on=test reproduces upstream (labelled)
        log.info("training %s on %d %s samples (λ=%s)", router.label, len(data[fit_on]), fit_on,
                 cfg["lambda"] if router.uses_lambda else "unused")
        if router.trainable:  # networks take the run's trainer, callbacks and loggers
            router.fit(data[fit_on], data["dev"], ctx)
        else:
            router.fit(data[fit_on], data["dev"])
    fit_s = time.perf_counter() - t_fit
    if not lead:  # a DDP helper process: the fit is done, rank 0 scores and writes the run
        return {}

    metrics: dict = {"router": router.name, "label": router.label,
                     "lambda": (lam if math.isfinite(lam) else "inf") if router.uses_lambda else None,
                     "cost_scale": getattr(router, "cost_scale", None) if router.uses_lambda else None,
                     "benchmark/root": str(Path(bench.root).resolve()) if bench.root is not None else None,
                     "benchmark/fingerprint": bench.fingerprint, "fit_seconds": fit_s}
    preds, routed = [], {}
    for name, prefix in (("dev", "val/"), ("test", "test/")):  # test is scored exactly once, after fitting
        sp = data[name]
        choice = routed[name] = router.route(sp)
        metrics.update(route_metrics(sp, choice, bench.cost_bounds, prefix=prefix, beta=float(cfg.scoring.beta)))
        rows = np.arange(len(sp))
        preds.append(pd.DataFrame({"sample_id": sp.sample_ids, "split": name,
                                   "model_id": np.asarray(bench.models, dtype=object)[choice],
                                   "correct": sp.Y[rows, choice].astype(np.int8),
                                   "cost": sp.C[rows, choice].astype(np.float64)}))
    if sel is not None:
        metrics.update(sel.metrics)  # val/* are out-of-fold scores on train+dev (dev took part in the refit)
    metrics.update(report_test(data, routed["test"], beta=float(cfg.scoring.beta), router=router,
                               n_bootstrap=int(cfg.scoring.bootstrap), seed=int(cfg.scoring.seed)))
    tp = cfg.scoring.get("throughput")
    if tp:
        thr = router_throughput(router, data["test"], batch_size=int(tp.batch_size), warmup=int(tp.warmup),
                                runs=int(tp.runs))
        metrics.update({f"test/throughput_{k}": v for k, v in thr.items()})
    info = dict(router.fit_info or {})
    # the labels this router was fitted to, as it computed them (its own λ, cost scale and scheme)
    metrics.update({f"labels/{k}": v for k, v in (info.pop("label_diagnostics", None) or {}).items()})
    metrics.update(_flat_fit_info(info))
    metrics["total_seconds"] = time.perf_counter() - t0

    predictions = pd.concat(preds, ignore_index=True)
    write_json(out / "metrics.json", metrics)
    predictions.to_parquet(out / "predictions.parquet", index=False)
    if cfg.get("save_router", True) and router.saves_state:
        save_trained_router(router, out / "router", recipe=data.recipe, prices=_prices(bench),
                            mean_cost=dict(zip(bench.models, map(float, train_split.C.mean(0)))),
                            lam=metrics["lambda"], config=cfg,
                            benchmark={"root": metrics["benchmark/root"], "fingerprint": metrics["benchmark/fingerprint"]},
                            metrics=metrics)
    _log_final(ctx.loggers, cfg, metrics, predictions)
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
    return metrics


def _prices(bench) -> dict | None:
    """Per-model $ per 1M tokens from the build's manifest (None when the records carried their own cost)."""
    import json

    if bench.root is None or not (Path(bench.root) / "manifest.json").exists():
        return None
    prices = json.loads((Path(bench.root) / "manifest.json").read_text()).get("prices")
    return {m: {"input_per_1m": p[0], "output_per_1m": p[1]} for m, p in prices.items()} if prices else None


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
