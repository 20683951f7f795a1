"""What every job shares: console/job-log logging, one-line errors, run directories, sweep summaries."""
from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vlrb.errors import ConfigError, VlrbError

log = logging.getLogger("vlrb")

# A missing file or weights we cannot load is the user's to fix too (the message names it).
USER_ERRORS: tuple[type[BaseException], ...] = (VlrbError, FileNotFoundError)


def setup_logging() -> None:
    # no 50-line W&B summary at the end of every run (our own line says where an offline run is kept)
    os.environ.setdefault("WANDB_SILENT", "true")


def route_lightning_logs() -> None:
    """Lightning adds its own console handler when imported; drop it so that each of its lines goes once
    through the root logger (Hydra's console + job-log handlers). Call after importing lightning."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True


def run_job(job: Callable[[DictConfig], Any], cfg: DictConfig, *, default: Any = None) -> Any:
    """Run `job(cfg)`; a user error becomes one logged line `error: ...` and exit status 1.

    Inside a multirun, any failure is written to `<run dir>/error.txt` and the sweep goes on (the sweep's end
    summary counts it, see `SweepSummary`)."""
    setup_logging()
    out = _output_dir()
    multirun = _is_multirun()
    try:
        return job(cfg)
    except BaseException as e:  # noqa: BLE001 - sorted below
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        if out is not None:
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


def output_dir() -> Path:
    out = _output_dir()
    if out is None:
        raise ConfigError("no Hydra run directory: run the job through its entry point (train.py, evaluate.py)")
    return out


def _output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_name() -> str | None:
    """The multirun's folder name (one W&B group per sweep), or None outside a multirun."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().sweep.dir).name if _is_multirun() else None


def to_plain(cfg: Any) -> Any:
    """A resolved plain container of a config node (what library functions receive)."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, one line per failed job and an exit status that says
    whether anything worked (every job failed: status 1)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        failed = [p for p in jobs if (p / "error.txt").exists()]
        if not jobs:
            return
        log.info("sweep %s: %d of %d jobs finished", sweep, len(jobs) - len(failed), len(jobs))
        for p in failed:
            first = (p / "error.txt").read_text().strip().splitlines()[:1] or [""]
            log.info("  job %s failed: %s", p.name, first[0][:200])
        if len(failed) == len(jobs):
            log.error("error: every job of the sweep failed (see error.txt in each job folder)")
            sys.exit(1)
