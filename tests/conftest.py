import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(REPO))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
