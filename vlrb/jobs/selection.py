"""`selection=cv` from config: the candidate settings of conf/selection/cv.yaml for the run's router, and the
function that turns one candidate into a fresh router (the library's `vlrb.selection.select_and_refit` does the
cross-validation).

The grid: `selection.grid.lambda` (for routers that use λ) and `selection.grid.router.<parameter>`, plus
`selection.per_router.<router name>.<parameter>`. A `lambda=` given on the command line fixes λ instead of the grid's
axis (a sweep `lambda=0,100 selection=cv` cross-validates the other settings at each λ: no two jobs are the same).
"""
from __future__ import annotations

import copy
import itertools
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from vlrb.errors import ConfigError
from vlrb.jobs.common import build_router, command_line_keys, to_plain

SELECTIONS = ("dev", "cv")


def selection_name(cfg) -> str:
    name = str((cfg.get("selection") or {}).get("name", "dev"))
    if name not in SELECTIONS:
        raise ConfigError(f"selection={name!r}: choose one of {', '.join(SELECTIONS)} (conf/selection/)")
    return name


def _flat(grid: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (grid or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def candidates(cfg, router, *, lambda_given: bool | None = None) -> list[dict[str, Any]]:
    """Every combination of the grid axes that apply to this router: `lambda` (routers that use it; the command
    line's `lambda=` instead of the grid when given), `router.<p>` from `selection.grid`, and
    `selection.per_router.<router name>.<p>`. [{}] when nothing applies."""
    sel = cfg.selection
    if lambda_given is None:
        lambda_given = "lambda" in command_line_keys()
    axes: dict[str, list] = {}
    for key, values in _flat(to_plain(sel.get("grid")) or {}).items():
        if key == "lambda":
            if router.uses_lambda:
                axes[key] = [to_plain(cfg["lambda"])] if lambda_given else values
        elif key.startswith("router."):
            axes[key] = _check_axis(cfg, key, values, f"selection.grid.{key}")
        else:
            raise ConfigError(f"selection.grid.{key}: grid keys are `lambda` and `router.<parameter>`")
    own = (to_plain(sel.get("per_router")) or {}).get(router.name) or {}
    for key, values in own.items():
        axes[f"router.{key}"] = _check_axis(cfg, f"router.{key}", values, f"selection.per_router.{router.name}.{key}")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"selection grid axis {key}: expected a non-empty list of values, got {values!r}")
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def _check_axis(cfg, key: str, values, where: str):
    param = key.split(".", 1)[1]
    if param not in cfg.router or param == "_target_":
        params = [k for k in cfg.router if not str(k).startswith("_")]
        raise ConfigError(f"{where}: router {cfg.router.get('_target_')} has no parameter {param!r} "
                          f"(its parameters: {', '.join(map(str, params))})")
    return values


def with_values(cfg: DictConfig, values: dict[str, Any]) -> DictConfig:
    """A copy of the run config with a candidate's values set (`lambda`, `router.<p>`); `router.lam: ${lambda}`
    follows."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        for key, v in values.items():
            OmegaConf.update(out, key, v, merge=False)
    return out


def maker(cfg: DictConfig):
    """candidate values -> a fresh router built from the run config with those values."""
    return lambda values: build_router(with_values(cfg, values).router)
