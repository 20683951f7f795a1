import copy
import functools
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(REPO))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlrb.jobs.entry import register_resolvers  # noqa: E402  (configs composed by tests use vlrb's resolvers)

register_resolvers()


def _shared() -> Path | None:
    p = REPO.parent / "shared"
    return p if p.is_dir() else None


SHARED = _shared()


@pytest.fixture(scope="session")
def shared() -> Path:
    if SHARED is None:
        pytest.skip("../shared (fixtures and real data) is not beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def mathv(shared) -> Path:
    return shared / "realdata" / "mathv_mini"


def copy_mathv(mathv: Path, dest: Path, models=None) -> Path:
    """A writable copy of the MathVision work dir (run folders only) for tests that break files."""
    models = models or ["Gemini-Pro", "Gemini-Pro-CoT", "LLaVA-v1.5-7B"]
    for m in models:
        shutil.copytree(mathv / "vlmeval" / m / "T20260101_G", dest / "vlmeval" / m / "T20260101_G")
    shutil.copytree(mathv / "LMUData", dest / "LMUData")
    shutil.copy(mathv / "pricing.yaml", dest / "pricing.yaml")
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


def data_cfg(**kw) -> dict:
    """A `data` config as the build layer receives it from the job (a plain dict)."""
    base = dict(name="t", reader="vlmevalkit", datasets=None, models=None, binarize_threshold=0.5,
                split="random", split_seed=42, strict=False, workers=1, tsv_dir=None)
    base.update(kw)
    return base


@functools.lru_cache(maxsize=None)
def _router_node(name: str, backbone: str | None) -> dict:
    """conf/router/<name>.yaml as train.py composes it (the run's default lambda and seed resolved)."""
    from omegaconf import OmegaConf

    from vlrb.jobs.entry import compose

    overrides = [f"router={name}"] + ([f"backbone={backbone}"] if backbone else [])
    return OmegaConf.to_container(compose("train", overrides, root=REPO).router, resolve=True)


def make_router(name: str, **params):
    """A router as train.py builds it: its conf/router YAML (through Hydra's compose API), `params` on top, built from
    its `_target_` by vlrb.components.instantiate. `backbone=<conf/backbone name>` picks an end-to-end router's
    backbone as `backbone=` does on the command line."""
    from vlrb.components import instantiate

    backbone = params.pop("backbone", None) if isinstance(params.get("backbone"), str) else None
    node = copy.deepcopy(_router_node(name, backbone))
    node.update(params)
    return instantiate(node)


def router_class(name: str) -> type:
    """The class conf/router/<name>.yaml names (its `_target_`)."""
    import yaml
    from hydra.utils import get_class

    return get_class(yaml.safe_load((REPO / "conf" / "router" / f"{name}.yaml").read_text())["_target_"])


def router_names(inputs: str | None = None, trainable: bool | None = None) -> list[str]:
    """The router choices of conf/router/ (bases `_*.yaml` aside), filtered by what their classes read or do."""
    names = sorted(p.stem for p in (REPO / "conf" / "router").glob("*.yaml") if not p.stem.startswith("_"))
    return [n for n in names if (inputs is None or inputs in router_class(n).inputs)
            and (trainable is None or router_class(n).trainable == trainable)]


def backbone_names() -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / "backbone").glob("*.yaml"))


def make_backbone(name: str, **params):
    """The backbone `backbone=<name>` gives a router: conf/backbone/<name>.yaml's factory, built with `params`."""
    import yaml

    from vlrb.backbones import build_backbone
    from vlrb.components import instantiate

    factory = instantiate(yaml.safe_load((REPO / "conf" / "backbone" / f"{name}.yaml").read_text()))
    return build_backbone(factory, **params)
