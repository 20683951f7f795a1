"""`evaluate.py`: fit the baselines (built from conf/router/ like any trained router), score them and every
finished train run once on test, write the leaderboard, per-dataset tables, the Pareto plot and metrics."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vlrb.errors import ConfigError
from vlrb.io import claim_run_dir
from vlrb.jobs.common import output_dir, run_job

log = logging.getLogger("vlrb.evaluate")


def main(cfg: DictConfig) -> float:
    res = run_job(evaluate, cfg)
    real = res.leaderboard[res.leaderboard["router"] != "oracle"]
    return float(real["rank_score"].max()) if len(real) else float("nan")  # objective for sweepers


def conf_dir() -> Path:
    """The folder of the primary config (conf/), where the router configs live."""
    from hydra.core.hydra_config import HydraConfig

    for src in HydraConfig.get().runtime.config_sources:
        if src.provider == "main" and src.schema == "file":
            return Path(src.path)
    raise ConfigError("cannot find the conf/ folder of this run")


def baseline_routers(cfg: DictConfig, conf: Path | None = None) -> list:
    """The routers named by `baselines`, from conf/router/<name>.yaml through the train job's `build_router`;
    `fit_on` applies to those that take it."""
    from vlrb.jobs.train import build_router

    if cfg.fit_on not in ("train", "test"):
        raise ConfigError(f"fit_on must be train or test, got {cfg.fit_on!r}")
    routers = []
    for name in cfg.baselines or []:
        path = (conf or conf_dir()) / "router" / f"{name}.yaml"
        if not path.exists():
            raise ConfigError(f"baselines: no router config {path}")
        node = OmegaConf.create({"seed": cfg.seed, "lambda": 0, "router": OmegaConf.load(path)})
        if "fit_on" in node.router:
            node.router.fit_on = cfg.fit_on
        routers.append(build_router(node.router))
    return routers


def evaluate(cfg: DictConfig):
    from vlrb.eval.report import evaluate_benchmark
    from vlrb.eval.wandb_utils import init_wandb, log_tables_and_images
    from vlrb.jobs.build import load_benchmark

    from vlrb.jobs.train import check_data_root

    out = output_dir()
    check_data_root(cfg)
    baselines = baseline_routers(cfg)
    if cfg.get("runs") and not Path(cfg.runs).exists():
        raise ConfigError(f"runs={cfg.runs} does not exist (a train run or multirun directory)")
    claim_run_dir(out)
    bench = load_benchmark(cfg)
    run = init_wandb(cfg.get("logger"), config=OmegaConf.to_container(cfg, resolve=True), job_type="evaluate",
                     save_dir=out)
    sc = cfg.scoring
    try:
        res = evaluate_benchmark(bench, out, baselines=baselines, runs=cfg.get("runs"),
                                 n_bootstrap=int(sc.bootstrap), seed=int(sc.seed), beta=float(sc.beta),
                                 throughput=OmegaConf.to_container(sc.throughput) if sc.get("throughput") else None)
        log_tables_and_images(run, tables={"leaderboard": res.leaderboard, "per_dataset": res.per_dataset,
                                           "single_models": res.single_models},
                              images={"pareto": res.paths["pareto"]} if "pareto" in res.paths else None,
                              summary={k: v for k, v in res.metrics.items() if k.count("/") <= 2})
    finally:
        if run is not None:
            run.finish()
    log.info("%s", res.paths["md"].read_text())
    log.info("Leaderboard: %s", res.paths["csv"])
    if "pareto" in res.paths:
        log.info("Pareto plot: %s", res.paths["pareto"])
    return res
