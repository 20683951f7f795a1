"""What the five entry points share: the project root, the conf/ folder, and a job that is imported only once
Hydra has parsed the command line (so `--help` and `--cfg job` answer at once).

    # train.py
    from vlrb.jobs.entry import launch
    if __name__ == "__main__":
        launch("train", __file__)
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

JOBS = {"train": "train", "build": "build", "evaluate": "evaluate", "serve": "serve", "calibrate": "calibrate"}


def launch(job: str, entry_file: str) -> Any:
    """Run `vlrb.jobs.<job>.main` as a Hydra app on `<folder of entry_file>/conf/<job>.yaml`."""
    root = Path(entry_file).resolve().parent
    os.environ.setdefault("PROJECT_ROOT", str(root))  # conf/paths: data/ and logs/ live beside the entry points
    from vlrb.process import follow_first_process

    follow_first_process(sys.argv)
    import hydra
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("vlrb_job_dir", job_dir_name, replace=True)

    def task(cfg):
        return importlib.import_module(f"vlrb.jobs.{JOBS[job]}").main(cfg)

    return hydra.main(config_path=str(root / "conf"), config_name=job, version_base="1.3")(task)()


def job_dir_name(num: int, task_overrides: list[str], sweeper_params=None, argv: list[str] | None = None) -> str:
    """A multirun job's folder: its number, then the values of the keys the sweep varies, on the command line or in
    an experiment's `hydra.sweeper.params` (`router=linear,knn lambda=0,100` -> `0_router-linear_lambda-0`), safe
    as one folder name."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [a for a in (sys.argv[1:] if argv is None else argv) if "=" in a and not a.startswith("-")]
    args += [f"{k}={v}" for k, v in dict(sweeper_params or {}).items()]
    parser = OverridesParser.create()
    try:
        swept = {o.key_or_group for o in parser.parse_overrides(args) if o.is_sweep_override()}
        mine = parser.parse_overrides([str(t) for t in task_overrides])
    except Exception:  # noqa: BLE001 - a name is a convenience; Hydra reports bad overrides itself
        return str(num)
    # key-value pairs, `_`-joined, of characters a Hydra override accepts unquoted: the folder (router_dir=...) can
    # be typed into the next command as it is (`=`, `,` and brackets would be parsed as overrides, sweeps, lists)
    label = "_".join(f"{o.key_or_group}-{o.value()}" for o in mine if o.key_or_group in swept)
    label = re.sub(r"_+", "_", "".join(c if c.isalnum() or c in ".-+" else "_" for c in label)).strip("_")[:120]
    return f"{num}_{label}" if label else str(num)
