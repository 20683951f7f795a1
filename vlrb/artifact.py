"""A trained router that can leave its run directory: `router/` holds everything needed to route new inputs.

    router/
      artifact.json   format, vlrb version, router name, λ, models with their prices and mean train cost
      config.yaml     the run's resolved config (what `train.py` was asked to do)
      router.json     the router's class and parameters (rebuilt with hydra's `instantiate`) and fit_info
      state.npz | weights.pt   the learned state, once (np.load(allow_pickle=False) / torch weights_only)
      recipe.json + scaler.npz  feature routers: the encoder config, fusion and the train-fitted scaler

    tr = vlrb.load_router("logs/train/runs/<time>/router")
    tr.models                                   # model ids, in score order
    tr.route_raw(["What is shown?"], ["cat.jpg"])   # -> ["GPT4o"]: encodes with the recorded encoder
    tr.route(bench.split("test"))               # row choices on a benchmark (features from its cache)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlrb.data.benchmark import Split
from vlrb.routers.base import Router, read_router

ARTIFACT_JSON = "artifact.json"
FORMAT = "vlrb-trained-router/1"


@dataclass
class TrainedRouter:
    router: Router
    recipe: Any = None  # FeatureRecipe for feature-level routers
    prices: dict | None = None  # model -> {"input_per_1m", "output_per_1m"} ($ per 1M tokens), when known
    mean_cost: dict | None = None  # model -> mean $ per request on the training split
    lam: Any = None
    info: dict | None = None

    @property
    def models(self) -> list[str]:
        return list(self.router.models)

    @property
    def name(self) -> str:
        return self.router.label

    @property
    def benchmark_root(self) -> str | None:
        """The folder of the benchmark the router was trained on (artifact.json; older folders: their config)."""
        bench = (self.info or {}).get("benchmark") or {}
        return bench.get("root") if isinstance(bench, dict) else None

    # ------------------------------------------------------------------ benchmark rows
    def with_inputs(self, split: Split) -> Split:
        """The split with what the router reads attached (features made by the recorded recipe)."""
        if "features" in self.router.inputs and split.X is None:
            if split.source is None:
                raise ValueError("this split has no benchmark to read features from; use route_raw")
            return split.with_features(self.recipe.transform_bench(split.source, split.name))
        return split

    def predict_scores(self, split: Split) -> np.ndarray:
        return self.router.predict_scores(self.with_inputs(split))

    def route(self, split: Split) -> np.ndarray:
        return self.router.route(self.with_inputs(split))

    # ------------------------------------------------------------------ raw inputs
    def score_raw(self, prompts: Sequence[str], images: Sequence[Any] | None = None) -> np.ndarray:
        """(n, K) router scores of raw prompts and images (each None, a path, bytes, a PIL image or a data URI)."""
        from vlrb.data.images import ImageList

        prompts = ["" if p is None else str(p) for p in prompts]
        images = list(images) if images is not None else [None] * len(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images (use None for no image)")
        r = self.router
        if "raw" in r.inputs:
            return np.asarray(r.predict_raw(prompts, ImageList(images)))
        X = self.recipe.encode(prompts, images) if "features" in r.inputs else None
        if "labels" in r.inputs:
            raise ValueError(f"{r.label} reads the answers' correctness, so it cannot route new inputs")
        return np.asarray(r.predict_scores(Split.for_inputs(len(prompts), self.models, X=X)))

    def route_raw(self, prompts: Sequence[str], images: Sequence[Any] | None = None) -> list[str]:
        """The chosen model id for each (prompt, image)."""
        scores = self.score_raw(prompts, images)
        return [self.models[j] for j in scores.argmax(1)] if len(scores) else []


def save_trained_router(router: Router, path: str | Path, *, recipe=None, prices: dict | None = None,
                        mean_cost: dict | None = None, lam: Any = None, config: Any = None,
                        benchmark: dict | None = None) -> Path:
    """Write `router/` (see the module docstring); the router's own `save` writes its state once."""
    from omegaconf import OmegaConf

    import vlrb
    from vlrb.io import write_json, write_text

    path = Path(path)
    router.save(path)
    if recipe is not None:
        recipe.save(path)
    if config is not None:
        write_text(path / "config.yaml", OmegaConf.to_yaml(config, resolve=True))
    write_json(path / ARTIFACT_JSON, {
        "format": FORMAT, "vlrb_version": vlrb.__version__, "router": router.name, "label": router.label,
        "lambda": lam, "models": router.models, "prices": prices, "mean_cost": mean_cost,
        "features": recipe is not None, "inputs": list(router.inputs), "benchmark": benchmark})
    return path


def load_router(path: str | Path) -> TrainedRouter:
    """A trained router from its `router/` folder, ready for `route_raw` in a fresh process."""
    path = Path(path)
    if (path / "router").is_dir() and not (path / ARTIFACT_JSON).exists():
        path = path / "router"  # a run directory was given
    router = read_router(path)
    meta = json.loads((path / ARTIFACT_JSON).read_text()) if (path / ARTIFACT_JSON).exists() else {}
    if not meta.get("benchmark"):
        meta["benchmark"] = _benchmark_from_config(path)
    recipe = None
    if "features" in router.inputs:
        from vlrb.features.recipe import RECIPE_JSON, FeatureRecipe

        if not (path / RECIPE_JSON).exists():
            raise FileNotFoundError(f"{path}: a feature router without {RECIPE_JSON} (saved by an older vlrb?); "
                                    "retrain it to route new inputs")
        recipe = FeatureRecipe.load(path)
    return TrainedRouter(router, recipe, prices=meta.get("prices"), mean_cost=meta.get("mean_cost"),
                         lam=meta.get("lambda"), info=meta)


def _benchmark_from_config(path: Path) -> dict | None:
    """A folder saved before artifact.json named its benchmark: data.root of its resolved config.yaml."""
    import yaml

    try:
        cfg = yaml.safe_load((path / "config.yaml").read_text())
        root = cfg["data"]["root"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return {"root": str(root)} if isinstance(root, str) else None
