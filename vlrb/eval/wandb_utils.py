"""Weights & Biases helpers shared by train and evaluate: pick the mode without ever failing for lack of
a key (online only when the user configured W&B, otherwise offline), and log tables and images."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)
MODES = ("online", "offline", "disabled")


def wandb_configured() -> bool:
    """An API key in the environment, or `wandb login` credentials in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text(errors="ignore")
    except OSError:
        return False


def resolve_wandb_mode(mode: str | None = None) -> str:
    """An explicit mode wins, then $WANDB_MODE; otherwise online if configured, offline if not."""
    mode = mode or os.environ.get("WANDB_MODE") or None
    if mode is None:
        return "online" if wandb_configured() else "offline"
    if mode == "dryrun":  # wandb's old name for offline
        mode = "offline"
    if mode not in MODES:
        raise ValueError(f"wandb mode must be one of {MODES} or null, got {mode!r}")
    return mode


def wandb_section(cfg_logger: Any) -> Mapping[str, Any] | None:
    """The W&B block of a `logger` config (`logger.wandb`, or the block itself), or None for other loggers."""
    if not cfg_logger or not hasattr(cfg_logger, "get"):
        return None
    if cfg_logger.get("wandb") is not None:
        return cfg_logger["wandb"]
    return cfg_logger if "project" in cfg_logger else None


def init_wandb(cfg_logger: Any, *, config: Mapping[str, Any] | None = None, job_type: str | None = None,
               name: str | None = None, save_dir: str | Path | None = None):
    """Start a W&B run from the logger config, or return None when the logger is not wandb."""
    section = wandb_section(cfg_logger)
    if section is None:
        return None
    import wandb

    mode = resolve_wandb_mode(section.get("mode"))
    if section.get("offline"):
        mode = "offline" if mode == "online" else mode
    save_dir = Path(save_dir or section.get("save_dir") or ".")
    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=section.get("project", "vlrb"), entity=section.get("entity"),
                     group=section.get("group"), name=name or section.get("name"),
                     tags=list(section.get("tags") or []), dir=str(save_dir), mode=mode,
                     job_type=job_type, config=dict(config or {}), reinit="finish_previous")
    log.info("W&B run in %s mode%s", mode, f" (sync later: wandb sync {save_dir}/wandb)" if mode == "offline" else "")
    return run


def log_tables_and_images(run, tables: Mapping[str, Any] | None = None, images: Mapping[str, str | Path] | None = None,
                          summary: Mapping[str, Any] | None = None) -> None:
    """DataFrames as wandb.Table, PNG paths as wandb.Image, and scalar summary values."""
    if run is None:
        return
    import wandb

    payload: dict[str, Any] = {}
    for key, df in (tables or {}).items():
        payload[key] = wandb.Table(dataframe=df.astype({c: str for c in df.columns if df[c].dtype == object}))
    for key, path in (images or {}).items():
        payload[key] = wandb.Image(str(path))
    if payload:
        run.log(payload)
    for k, v in (summary or {}).items():
        if isinstance(v, (int, float, str, bool)):
            run.summary[k] = v
