"""What the entry points share: the project root, the conf/ folder, and a job that is imported only once
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

JOBS = {"train": "train", "build": "build", "evaluate": "evaluate", "serve": "serve", "calibrate": "calibrate",
        "onboard": "onboard"}


def launch(job: str, entry_file: str | None = None) -> Any:
    """Run `vlrb.jobs.<job>.main` as a Hydra app on `<folder of entry_file>/conf/<job>.yaml` (no entry file: the
    console scripts `vlrb-<job>`, on $PROJECT_ROOT/conf, else this checkout's conf/)."""
    root = Path(entry_file).resolve().parent if entry_file else project_root()
    os.environ.setdefault("PROJECT_ROOT", str(root))  # conf/paths: data/ and logs/ live beside the entry points
    from vlrb.process import follow_first_process

    follow_first_process(sys.argv)
    import hydra

    register_resolvers()

    def task(cfg):
        return importlib.import_module(f"vlrb.jobs.{JOBS[job]}").main(cfg)

    return hydra.main(config_path=str(root / "conf"), config_name=job, version_base="1.3")(task)()


def project_root() -> Path:
    """The folder holding conf/ (and data/, logs/ by default): $PROJECT_ROOT, else this checkout."""
    return Path(os.environ.get("PROJECT_ROOT") or Path(__file__).resolve().parents[2])


# console scripts (pyproject.toml [project.scripts]): `vlrb-train router=knn` == `python train.py router=knn`
def build() -> Any:
    return launch("build")


def train() -> Any:
    return launch("train")


def evaluate() -> Any:
    return launch("evaluate")


def serve() -> Any:
    return launch("serve")


def calibrate() -> Any:
    return launch("calibrate")


def onboard() -> Any:
    return launch("onboard")


def compose(job: str = "train", overrides: list[str] | tuple[str, ...] = (), root: str | Path | None = None):
    """The config `python <job>.py <overrides>` runs with, composed without running it (scripts, notebooks, tests);
    `root` is the folder holding conf/ (default: $PROJECT_ROOT, else this checkout)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    root = Path(root) if root else project_root()
    register_resolvers()
    with initialize_config_dir(str(root / "conf"), version_base="1.3"):
        return hydra_compose(job, overrides=list(overrides))


def register_resolvers() -> None:
    """The config's own resolvers: `vlrb_job_dir` (a multirun job's folder name), `vlrb_precision` (what a trainer
    preset's precision means on this machine)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("vlrb_job_dir", job_dir_name, replace=True)
    OmegaConf.register_new_resolver("vlrb_precision", precision_for, replace=True)


def precision_for(accelerator: str = "auto") -> str:
    """bf16-mixed on a GPU with bf16 (16-mixed on an older one), 32-true on a CPU."""
    from vlrb.devices import device_precision

    return device_precision(accelerator)


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
