"""Sweeps fit a router that ignores λ once, not once per λ.

In a multirun such as `router=knn,mlp lambda=0,100,inf`, the KNN jobs differ only in a value KNN never reads. The
first of them trains; it leaves a marker in `<sweep dir>/.lambda_free/` keyed by its config without λ. Each later job
with the same key copies that run's results (metrics.json with `reused_from`, predictions.parquet, router/) into
its own run dir instead of training again. A marker is written only after a run finished, so jobs of a parallel
launcher that start together may each train (never wrong, only slower).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from vlrb.jobs.common import build_router, is_multirun, to_plain

log = logging.getLogger("vlrb.train")
MARKERS = ".lambda_free"
IGNORED = ("lambda", "paths", "logger", "hydra", "tags", "task_name")  # what may differ between reusable jobs


def _key(cfg: DictConfig) -> str:
    plain = OmegaConf.to_container(cfg, resolve=True)
    for k in IGNORED:
        plain.pop(k, None)
    if isinstance(plain.get("router"), dict):
        plain["router"].pop("lam", None)  # the router's copy of λ (unused by this router)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_once_per_lambda_free_config(cfg: DictConfig, out: Path, train: Callable[[DictConfig, Path], dict]) -> dict:
    """`train(cfg, out)`, unless this is a multirun job whose router ignores λ and a job of the same sweep with the
    same config (λ aside) already finished: then that run's results are copied into `out`."""
    from hydra.core.hydra_config import HydraConfig

    from vlrb.routers.mlp import is_distributed

    sweep = Path(HydraConfig.get().sweep.dir) if is_multirun() else None
    # DDP: every process must fit when the first one fits, so nothing is reused (the others cannot see its markers)
    if sweep is None or build_router(cfg.router).uses_lambda or is_distributed(to_plain(cfg.trainer)):
        return train(cfg, out)
    marker = sweep / MARKERS / _key(cfg)
    src = Path(marker.read_text().strip()) if marker.exists() else None
    if src is not None and (src / "metrics.json").exists() and (src / "predictions.parquet").exists():
        metrics = json.loads((src / "metrics.json").read_text())
        metrics["reused_from"] = str(src)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        shutil.copy2(src / "predictions.parquet", out / "predictions.parquet")
        if (src / "router").is_dir():
            shutil.copytree(src / "router", out / "router")
        log.info("%s ignores λ: reusing the fit of %s (same config, λ aside) instead of training again",
                 metrics.get("router"), src)
        return metrics
    metrics = train(cfg, out)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(out))
    return metrics
