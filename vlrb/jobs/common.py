"""What every job shares: console/job-log logging, one-line errors, run directories, sweep summaries."""
from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vlrb.process import is_rank_zero, share_sweep_dir
from vlrb.errors import ConfigError, VlrbError

log = logging.getLogger("vlrb")

# A missing file or weights we cannot load is the user's to fix too (the message names it).
USER_ERRORS: tuple[type[BaseException], ...] = (VlrbError, FileNotFoundError)


def setup_logging() -> None:
    """A quiet console: what Lightning and W&B print without being asked appears once per process, or not at all
    when it never applies (advertising, TPU lines, banners), and only warnings come from DDP helper processes."""
    # no 50-line W&B summary at the end of every run (our own line says where an offline run is kept)
    os.environ.setdefault("WANDB_SILENT", "true")
    for message in UPSTREAM_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    root = logging.getLogger()
    for h in root.handlers:
        if not any(isinstance(f, OncePerProcess) for f in h.filters):
            h.addFilter(OncePerProcess())
        if not is_rank_zero():
            h.setLevel(logging.WARNING)


# Warnings from Lightning and torch about their own internals, or about settings that are right for vlrb's small
# feature batches (one batch per epoch logs nothing per step, by design).
UPSTREAM_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)",
    r".*smaller than the logging interval Trainer\(log_every_n_steps.*",
    r".*The anonymous setting has no effect.*",
)
# Lightning's info lines that say nothing a vlrb user can act on.
NEVER_SHOWN = ("💡 Tip:", "TPU available:", "HPU available:", "distributed_backend=", "All distributed processes",
               "-" * 20)


class OncePerProcess(logging.Filter):
    """Lightning's info lines once per process (a cross-validated fit starts dozens of Trainers), some never."""

    seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("lightning") or record.levelno > logging.INFO:
            return True
        msg = record.getMessage().strip()
        if not msg or msg.startswith(NEVER_SHOWN):
            return False
        if msg in OncePerProcess.seen:
            return False
        OncePerProcess.seen.add(msg)
        return True


def once_per_process(line: str) -> bool:
    """True the first time `line` is asked about in this process (notes repeated by every job of a sweep)."""
    if line in OncePerProcess.seen:
        return False
    OncePerProcess.seen.add(line)
    return True


def run_job(job: Callable[[DictConfig], Any], cfg: DictConfig, *, default: Any = None) -> Any:
    """Run `job(cfg)`; a user error becomes one logged line `error: ...` and exit status 1.

    Inside a multirun, any failure is written to `<run dir>/error.txt` and the sweep goes on (the sweep's end
    summary counts it, see `SweepSummary`)."""
    setup_logging()
    out = _output_dir()
    multirun = is_multirun()
    if multirun:
        share_sweep_dir(sweep_dir())
    try:
        return job(cfg)
    except BaseException as e:  # noqa: BLE001 - sorted below
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        if out is not None and is_rank_zero():  # a DDP helper's failure is reported by the first process
            out.mkdir(parents=True, exist_ok=True)
            first = (str(e).strip().splitlines() or [""])[0]
            (out / "error.txt").write_text(f"{type(e).__name__}: {first}\n\n" + "".join(traceback.format_exception(e)))
        user = isinstance(e, USER_ERRORS)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not (user or multirun):
            raise
        if multirun:
            log.error("job failed (%s: %s); see %s; the sweep goes on", type(e).__name__, e, out / "error.txt")
            return default
        log.error("error: %s", e)
        raise SystemExit(1) from None


def build_router(router_cfg):
    """The router its config describes (`_target_` + keyword arguments): the one path for train, evaluate and
    cross-validation; a bad value is a one-line ConfigError naming the router."""
    from vlrb.components import instantiate
    from vlrb.routers.base import Router

    try:
        router = instantiate(router_cfg)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"router ({router_cfg.get('_target_')}): {type(e).__name__}: {e}") from e
    if not isinstance(router, Router):
        raise ConfigError(f"router._target_={router_cfg.get('_target_')} is not a vlrb Router")
    return router


def make_router(name: str, overrides: list[str] | tuple[str, ...] = (), **params):
    """The router `python train.py router=<name> <overrides>` builds, `params` set on top (scripts, benchmarks)."""
    from vlrb.jobs.entry import compose

    node = to_plain(compose("train", [f"router={name}", *overrides]).router)
    node.update(params)
    return build_router(node)


def fit_router(router, data, ctx=None, *, fit_on: str | None = None):
    """Fit a router as every job does: on the split its `fit_on` names (train; test only to reproduce upstream's
    baselines), dev for early stopping; trainable networks also get the run's trainer context."""
    fit_on = fit_on or getattr(router, "fit_on", "train")
    if router.trainable:
        return router.fit(data[fit_on], data["dev"], ctx)
    return router.fit(data[fit_on], data["dev"])


def command_line_keys() -> set[str]:
    """The config keys given on this job's command line (`lambda=0` -> "lambda", `+a.b=1` -> "a.b")."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}


def load_router_dir(cfg: DictConfig):
    """The trained router of `router_dir` (a folder, a run directory, or a hub-style id in the local HF cache),
    built from vlrb's own classes only unless `trust_code=true`."""
    import vlrb

    if OmegaConf.is_missing(cfg, "router_dir") or not cfg.router_dir:
        raise ConfigError(f"router_dir is required: python {cfg.get('task_name', 'serve')}.py router_dir=<train run>/router")
    where = str(cfg.router_dir)
    hub_id = where.count("/") == 1 and not where.startswith((".", "/", "~"))
    if not Path(where).exists() and not hub_id:
        raise ConfigError(f"router_dir={where} does not exist (a train run's router/ folder, or its run directory)")
    return vlrb.load_router(where, trust_code=bool(cfg.get("trust_code", False)))


def output_dir() -> Path:
    out = _output_dir()
    if out is None:
        raise ConfigError("no Hydra run directory: run the job through its entry point (train.py, evaluate.py)")
    return out


def _output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().sweep.dir)


def sweep_name() -> str | None:
    """The multirun's folder name (one W&B group per sweep), or None outside a multirun."""
    return sweep_dir().name if is_multirun() else None


def to_plain(cfg: Any) -> Any:
    """A resolved plain container of a config node (what library functions receive)."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, a table of its jobs (the swept settings, val and test rank score,
    the best on val marked), one line per failed job, the commands to run next, and an exit status that says
    whether anything worked (every job failed: status 1)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_rank_zero():  # DDP helper processes ran the sweep in step with the first one, which reports it
            return
        sweep = Path(config.hydra.sweep.dir)
        jobs = sweep_jobs(sweep)
        say = functools.partial(print, flush=True)  # after the last job: Hydra's own log format would prefix each line
        if not jobs:
            return
        failed = [p for p in jobs if (p / "error.txt").exists()]
        say(f"sweep {sweep}: {len(jobs) - len(failed)} of {len(jobs)} jobs finished")
        for line in sweep_table(jobs):
            say(f"  {line}")
        for p in failed:
            first = (p / "error.txt").read_text().strip().splitlines()[:1] or [""]
            say(f"  job {p.name} failed: {first[0][:200]}")
        if len(failed) == len(jobs):
            log.error("error: every job of the sweep failed (see error.txt in each job folder)")
            sys.exit(1)
        if config.get("task_name") in ("train", "results", "lodo") or any((p / "router").is_dir() for p in jobs):
            say(f"next: python evaluate.py runs={_shown(sweep)}   # the leaderboard with these runs (λ chosen on val)")
        if any(sweep.glob("*/wandb/offline-run-*")):
            say(f"next: wandb sync {_shown(sweep)}/*/wandb/offline-run-*   # upload the offline W&B runs")


def sweep_jobs(sweep: Path) -> list[Path]:
    """The job folders of a multirun (`<number>` or `<number>_<swept values>`), in job order."""
    jobs = [p for p in sweep.iterdir() if p.is_dir() and p.name.split("_", 1)[0].isdigit()]
    return sorted(jobs, key=lambda p: int(p.name.split("_", 1)[0]))


def sweep_table(jobs: list[Path]) -> list[str]:
    """Lines of a fixed-width table of the finished train jobs; a note for routers whose λ is on another scale."""
    import json

    rows, scales = [], {}
    for p in jobs:
        try:
            m = json.loads((p / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        if "val/rank_score" not in m or "test/rank_score" not in m:
            continue
        lam = m.get("lambda")
        rows.append([p.name, str(m.get("label") or m.get("router") or "?"), "unused" if lam is None else f"{lam:g}"
                     if isinstance(lam, (int, float)) else str(lam),
                     m["val/rank_score"], m["test/rank_score"]])
        if m.get("cost_scale") not in (None, 100, 100.0):
            scales[rows[-1][1]] = m["cost_scale"]
    if not rows:
        return []
    best = max(range(len(rows)), key=lambda i: (rows[i][3] if rows[i][3] == rows[i][3] else -1.0))
    width = [max(len(r[c]) for r in rows + [["job", "router", "λ"]]) for c in range(3)]
    lines = [f"{'job':<{width[0]}}  {'router':<{width[1]}}  {'λ':<{width[2]}}  val rank  test rank"]
    for i, r in enumerate(rows):
        lines.append(f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]:<{width[2]}}  {r[3] * 100:8.2f}  {r[4] * 100:9.2f}"
                     + ("  <- best on val" if i == best else ""))
    for router, scale in scales.items():
        lines.append(f"note: {router} applies λ to costs scaled by {scale:g} (cost_scale), the other routers by 100: "
                     f"its λ={100 / float(scale):g}·x weighs cost as λ=x does elsewhere (docs/method.md#soft-labels)")
    return lines


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
