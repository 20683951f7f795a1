"""`evaluate.py`: fit the baselines (built from conf/router/ like any trained router), score them and every
finished train run once on test, write the leaderboard, per-dataset tables, the Pareto plot and metrics."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from vlrb.errors import ConfigError
from vlrb.io import claim_run_dir
from vlrb.jobs.common import build_router, fit_router, output_dir, run_job

log = logging.getLogger("vlrb.evaluate")


def main(cfg: DictConfig) -> float:
    res = run_job(evaluate, cfg)
    real = res.leaderboard[res.leaderboard["router"] != "oracle"]
    return float(real["rank_score"].max()) if len(real) else float("nan")  # objective for sweepers


def baseline_routers(cfg: DictConfig) -> list:
    """The routers named by `baselines`, composed from conf/router/<name>.yaml as train.py composes them (this run's
    seed) and built by the same `build_router`; `fit_on` applies to those that take it."""
    from hydra import compose

    if cfg.fit_on not in ("train", "test"):
        raise ConfigError(f"fit_on must be train or test, got {cfg.fit_on!r}")
    routers = []
    for name in cfg.baselines or []:
        try:
            node = compose(config_name="train", overrides=[f"router={name}", f"seed={cfg.seed}"]).router
        except Exception as e:  # noqa: BLE001 - Hydra's "could not find router/<name>": one line
            raise ConfigError(f"baselines: no router config router/{name}.yaml ({str(e).splitlines()[0]})") from None
        if "fit_on" in node:
            with open_dict(node):
                node.fit_on = cfg.fit_on
        routers.append(build_router(node))
    return routers


def fit_baselines(routers: list, bench) -> list:
    """Each baseline fitted as train.py fits a router (`fit_router`: on the split its fit_on names)."""
    from vlrb.features.routing_data import RoutingData

    data = RoutingData.prepare(bench, ("labels",))
    for r in routers:
        fit_router(r, data)
    return routers


def evaluate(cfg: DictConfig):
    from vlrb.eval.report import evaluate_benchmark
    from vlrb.eval.runs import scan_runs
    from vlrb.eval.wandb_utils import init_wandb, log_tables_and_images
    from vlrb.jobs.build import load_benchmark
    from vlrb.jobs.train import check_data_root

    out = output_dir()
    runs_dir = _runs_dir(cfg)
    scan = scan_runs(runs_dir) if runs_dir is not None else None
    if scan is not None and cfg.runs != "auto":
        _follow_runs_benchmark(cfg, scan)
    check_data_root(cfg)
    baselines = baseline_routers(cfg)
    claim_run_dir(out)
    bench = load_benchmark(cfg)
    fit_baselines(baselines, bench)
    run = init_wandb(cfg.get("logger"), config=OmegaConf.to_container(cfg, resolve=True), job_type="evaluate",
                     save_dir=out)
    sc = cfg.scoring
    try:
        res = evaluate_benchmark(bench, out, baselines=baselines, runs=scan,
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
    if scan is not None:
        for line in _runs_report(scan, runs_dir, auto=cfg.runs == "auto"):
            log.info("%s", line)
    log.info("Leaderboard: %s", res.paths["csv"])
    if "pareto" in res.paths:
        log.info("Pareto plot: %s", res.paths["pareto"])
    return res


def _runs_dir(cfg: DictConfig) -> Path | None:
    """`runs`: auto = every train run under the log folder (none yet: baselines only); a folder; null = none."""
    runs = cfg.get("runs")
    if runs in (None, "", "none"):
        return None
    if runs == "auto":
        logs = Path(cfg.paths.log_dir)
        return logs if logs.is_dir() else None
    if not Path(runs).exists():
        raise ConfigError(f"runs={runs} does not exist (a train run or multirun directory)")
    return Path(runs)


def _follow_runs_benchmark(cfg: DictConfig, scan) -> None:
    """`evaluate.py runs=X` without `data=`: score the runs on the benchmark they were trained on (they record it),
    when they agree on one and it is not the default's."""
    from hydra.core.hydra_config import HydraConfig

    given = [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
    if any(k == "data" or k.startswith("data.") for k in given):
        return
    roots = {r.metrics.get("benchmark/root") for r in scan.runs} - {None}
    if len(roots) != 1:
        return
    root = roots.pop()
    if Path(root).resolve() != Path(cfg.data.root).resolve() and (Path(root) / "data" / "matrices" / "Y.npz").exists():
        log.info("runs=%s were trained on the benchmark at %s: scoring them there (data.root=... to choose)",
                 cfg.runs, root)
        with open_dict(cfg):
            cfg.data.root = root
            cfg.data.generate = None


def _runs_report(scan, runs_dir: Path, *, auto: bool) -> list[str]:
    """One line on what was scored, then a line per run left out (another benchmark) and per failed run."""
    where = f"under {runs_dir}" + (" (runs=auto; runs=<folder> for one sweep, runs=null for none)" if auto else "")
    lines = [f"runs: {len(scan.runs)} finished run(s) scored {where}"
             + (f"; {len(scan.skipped)} left out" if scan.skipped else "")
             + (f"; {len(scan.failed)} failed" if scan.failed else "")]
    for path, why in list(scan.skipped.items())[:20]:
        lines.append(f"  left out {path}: {why}")
    for path, why in list(scan.failed.items())[:20]:
        lines.append(f"  failed   {path}: {why}")
    if len(scan.skipped) > 20 or len(scan.failed) > 20:
        lines.append("  ...")
    return lines
