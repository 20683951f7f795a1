"""One training run: compose config -> benchmark (+ features or raw inputs) -> shared soft labels ->
fit with dev-based early stopping -> score dev and test once -> metrics.json, predictions.parquet,
checkpoint and resolved config in the run dir -> the configured logger."""
from __future__ import annotations

import inspect
import json
import logging
import math
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from vlrb.io import claim_run_dir, write_json

log = logging.getLogger("vlrb.train")


def _say(msg: str) -> None:
    print(msg, flush=True)


def ensure_benchmark(cfg: DictConfig):
    """Load data.root; for the demo, generate and build it first when it is missing."""
    from vlrb.data.benchmark import Benchmark

    root = Path(cfg.data.root)
    if not (root / "data" / "matrices" / "Y.npz").exists():
        if cfg.data.get("generate") is None:
            raise FileNotFoundError(f"no built benchmark at {root}; run `python build_data.py data={cfg.data.name} ...` first")
        from vlrb.cli import generate_demo_if_missing, may_create_parents
        from vlrb.data.build import build
        from vlrb.pricing import PriceTable

        _say(f"no benchmark at {root}: building the demo first")
        generate_demo_if_missing(cfg.data)
        build(cfg.data, PriceTable.from_config(cfg.pricing), log=_say, create_parents=may_create_parents(cfg))
    return Benchmark.load(root)


def attach_features(bm, cfg: DictConfig, splits: dict):
    """Fused, standardised embeddings (scaler fitted on train only) attached to each split."""
    from vlrb.features.fusion import StaleFeaturesError, fit_transform_splits, load_features

    enc = cfg.encoder
    try:
        X = load_features(bm, enc, fusion=cfg.get("fusion"))
    except FileNotFoundError as e:  # StaleFeaturesError included: never train on another build's embeddings
        from vlrb.features.extract import extract_features

        if isinstance(e, StaleFeaturesError):
            _say("features are stale: re-extracting them (the benchmark's prompts or images changed since)")
        else:
            _say("features missing: extracting them now (cached for later runs)")
        extract_features(bm, enc, root=bm.root)
        X = load_features(bm, enc, fusion=cfg.get("fusion"))
    Xs = fit_transform_splits(X, bm, scaler_fit=cfg.router.get("scaler_fit") or "all")
    return {k: s.with_features(Xs[k]) for k, s in splits.items()}


def make_router(cfg: DictConfig):
    from vlrb.routers import get_router_class

    name = cfg.router.name
    cls = get_router_class(name)
    params = dict(OmegaConf.to_container(cfg.router.get("params") or {}, resolve=True))
    sig = inspect.signature(cls.__init__).parameters
    if "lam" in sig and "lam" not in params:
        params["lam"] = cfg["lambda"]  # `cfg.lambda` is a syntax error in Python
    if "seed" in sig and "seed" not in params:
        params["seed"] = int(cfg.seed)
    if cfg.get("patience") is not None and "patience" in sig:
        params["patience"] = int(cfg.patience)
    return cls(**params)


def make_loggers(cfg: DictConfig, output_dir: Path) -> list:
    """Lightning loggers from `logger=`; W&B picks offline mode when no account is configured."""
    import hydra

    from vlrb.eval.wandb_utils import resolve_wandb_mode

    loggers = []
    for key, lg in (cfg.get("logger") or {}).items():
        if not isinstance(lg, DictConfig) or "_target_" not in lg:
            continue
        if key == "wandb":
            kw = OmegaConf.to_container(lg, resolve=True)
            mode = resolve_wandb_mode(kw.pop("mode", None))
            if mode == "disabled":
                continue
            kw["offline"] = kw.get("offline") or mode == "offline"
            kw["name"] = kw.get("name") or f"{cfg.router.name}-lam{cfg['lambda']}"
            kw["save_dir"] = str(output_dir)
            sweep = _sweep_name()
            if sweep:  # every run of one multirun shares a W&B group, so the dashboard compares them
                kw["group"] = f"{kw.get('group') or cfg.task_name}-{sweep}"
            loggers.append(hydra.utils.instantiate(kw))
        else:
            loggers.append(hydra.utils.instantiate(lg))
    return loggers


def _sweep_name() -> str | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir).name


def train(cfg: DictConfig, output_dir: Path) -> dict:
    import lightning as L

    from vlrb.routers.lit import TrainContext
    from vlrb.routing.metrics import route_metrics, router_throughput
    from vlrb.routing.soft_labels import label_diagnostics, parse_lambda, soft_labels

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    t0 = time.perf_counter()
    bm = ensure_benchmark(cfg)
    splits = {s: bm.split(s) for s in ("train", "dev", "test")}
    router = make_router(cfg)
    if "features" in router.inputs:
        splits = attach_features(bm, cfg, splits)
    if "raw" in router.inputs:
        router.bench = bm
    loggers = make_loggers(cfg, output_dir)
    trainer_kw = OmegaConf.to_container(cfg.trainer, resolve=True)
    router.ctx = TrainContext(trainer=trainer_kw, loggers=loggers, output_dir=str(output_dir),
                              cost_bounds=bm.cost_bounds, beta=float(cfg.beta), seed=int(cfg.seed),
                              patience=int(cfg.patience) if cfg.get("patience") is not None else 3)
    lam = parse_lambda(cfg["lambda"])
    train_split = splits["train"]
    # the shared label definition, logged with every run (what the trainable routers are fitted to)
    diag = label_diagnostics(soft_labels(train_split.Y, train_split.C, lam), train_split.Y, train_split.C)
    _say(f"training {router!r} on {len(train_split)} samples (λ={cfg['lambda']})")
    t_fit = time.perf_counter()
    fit_on = getattr(router, "fit_on", "train")  # baselines: fit_on=test reproduces upstream (labelled)
    router.fit(splits[fit_on], splits["dev"])
    fit_s = time.perf_counter() - t_fit

    uses_lambda = "lam" in inspect.signature(type(router).__init__).parameters
    metrics: dict = {"router": cfg.router.name,
                     "lambda": (lam if math.isfinite(lam) else "inf") if uses_lambda else None, "fit_seconds": fit_s}
    preds = []
    for name, prefix in (("dev", "val/"), ("test", "test/")):  # test is scored exactly once, after fitting
        sp = splits[name]
        choice = router.route(sp)
        metrics.update(route_metrics(sp, choice, bm.cost_bounds, prefix=prefix, beta=float(cfg.beta)))
        preds.append(pd.DataFrame({"sample_id": sp.sample_ids, "split": name,
                                   "model_id": np.asarray(bm.models, dtype=object)[choice],
                                   "correct": sp.Y[np.arange(len(sp)), choice].astype(np.int8),
                                   "cost": sp.C[np.arange(len(sp)), choice].astype(np.float64)}))
    tp = cfg.get("throughput")
    if tp:
        thr = router_throughput(router, splits["test"], batch_size=int(tp.batch_size), warmup=int(tp.warmup), runs=int(tp.runs))
        metrics.update({f"test/throughput_{k}": v for k, v in thr.items()})
    metrics.update({f"labels/{k}": v for k, v in diag.items()})
    for k, v in (getattr(router, "fit_info", None) or {}).items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            metrics[f"fit/{k}"] = v
        elif isinstance(v, dict):
            metrics.update({f"fit/{k}/{kk}": vv for kk, vv in v.items() if isinstance(vv, (int, float, str, bool))})
    metrics["total_seconds"] = time.perf_counter() - t0

    write_json(output_dir / "metrics.json", metrics)
    pd.concat(preds, ignore_index=True).to_parquet(output_dir / "predictions.parquet", index=False)
    if cfg.get("save_checkpoint", True):
        try:
            router.save(output_dir / "router")
        except (NotImplementedError, AttributeError):
            pass  # training-free baselines have nothing to save
    _log_final(loggers, cfg, metrics, pd.concat(preds, ignore_index=True))
    _say(f"val/rank_score {metrics['val/rank_score'] * 100:.2f}  test/accuracy {metrics['test/accuracy'] * 100:.2f}%  "
         f"test/avg_cost {metrics['test/avg_cost'] * 1e4:.3f} $/10K  test/rank_score {metrics['test/rank_score'] * 100:.2f}")
    _say(f"run dir: {output_dir}")
    return metrics


def _log_final(loggers, cfg, metrics: dict, preds: pd.DataFrame) -> None:
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for lg in loggers:
        try:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            lg.log_metrics(scalars)
            if type(lg).__name__ == "WandbLogger":
                import wandb

                lg.experiment.log({"predictions": wandb.Table(dataframe=preds.astype({"model_id": str, "sample_id": str, "split": str}))})
            lg.save()
        except Exception as e:  # logging must never lose a finished run
            log.warning("logger %s failed: %s", type(lg).__name__, e)


def run_train(cfg: DictConfig) -> float:
    """Hydra task: returns the optimised metric; in a multirun a failing job is recorded, not fatal."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    output_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    claim_run_dir(output_dir)  # never write over another run's results
    try:
        metrics = train(cfg, output_dir)
        return float(metrics.get(cfg.get("optimized_metric", "val/rank_score"), float("nan")))
    except Exception as e:
        (output_dir / "error.txt").write_text("".join(traceback.format_exception(e)))
        if not multirun:
            raise
        _say(f"job {hc.job.num} failed ({type(e).__name__}: {e}); see {output_dir / 'error.txt'}; continuing the sweep")
        return float("nan")
    finally:
        try:
            import wandb

            if wandb.run is not None:
                wandb.finish()
        except Exception:
            pass
