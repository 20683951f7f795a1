"""Every config composes (Hydra compose API), and the README's router example works as written."""
import re
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from conftest import REPO

CONF = str(REPO / "conf")


def _compose(name, overrides=(), hydra_cfg=False):
    with initialize_config_dir(CONF, version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra_cfg)


@pytest.mark.parametrize("router", sorted(p.stem for p in (REPO / "conf" / "router").glob("*.yaml")))
def test_every_router_config_composes(router):
    cfg = _compose("train", [f"router={router}", "lambda=inf"])
    assert cfg.router.name == router and cfg["lambda"] == float("inf")


@pytest.mark.parametrize("exp", sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_composes_as_a_multirun(exp):
    cfg = _compose("train", [f"experiment={exp}"], hydra_cfg=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and cfg.hydra.sweeper.params


@pytest.mark.parametrize("name,overrides", [
    ("build", ["data=demo_full"]), ("build", ["data=records", "data.records=x.parquet"]),
    ("train", ["debug=fast"]), ("train", ["trainer=ddp"]), ("train", ["logger=csv"]),
    ("evaluate", []), ("build", ["stage=features", "encoder=bge_m3_siglip"]),
])
def test_entry_configs_compose(name, overrides):
    assert _compose(name, overrides)


def test_submitit_launcher_config_composes():
    cfg = _compose("train", ["hydra/launcher=submitit_slurm_vlrb"], hydra_cfg=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.gpus_per_node == 1


def test_debug_fast_limits_the_trainer_and_drops_the_logger():
    cfg = _compose("train", ["debug=fast"])
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.limit_train_batches == 3 and not cfg.get("logger")


def test_readme_router_example_runs(tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Adding a router", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    yaml_text = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    import yaml

    from vlrb.routers import base

    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # registers the example router
    try:
        _run_example(yaml_text)
    finally:
        base._REGISTRY.pop("cheapest_accurate", None)  # keep the registry equal to conf/router/


def _run_example(yaml_text):
    import yaml

    from vlrb.data.benchmark import Benchmark
    from vlrb.routers import create_router

    conf = yaml.safe_load(yaml_text)
    Y = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 0]] * 10)
    C = np.tile([3e-4, 1e-4, 1e-5], (40, 1))
    bm = Benchmark.from_arrays(Y, C)
    router = create_router(conf["name"], **conf["params"]).fit(bm.split("train"))
    assert set(router.route(bm.split("test"))) == {0}  # m0 (acc .75) vs m1 (.5): only m0 is within 0.05
