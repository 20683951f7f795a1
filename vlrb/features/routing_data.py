"""`RoutingData`: the one object through which a run's data reaches its router.

It owns the benchmark, its train/dev/test splits with what the router reads attached (fused, train-scaled
features for feature-level routers; the benchmark's prompts and images, through `split.source`, for
end-to-end ones), the feature recipe that made the features (saved with the trained router), and the
DataLoader worker count for routers that decode images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from vlrb.data.benchmark import SPLIT_NAMES, Benchmark, Split


@dataclass
class RoutingData:
    bench: Benchmark
    splits: dict[str, Split]
    recipe: Any = None  # a vlrb.features.recipe.FeatureRecipe when the router reads features
    num_workers: int | str = "auto"

    @classmethod
    def prepare(cls, bench: Benchmark, inputs: Sequence[str], *, encoder: Any = None, fusion: str | None = None,
                scaler_fit: str = "all", num_workers: int | str = "auto") -> "RoutingData":
        """Splits for a router that reads `inputs` ("labels", "features", "raw"); features need `encoder`
        (`scaler_fit`: the train rows the feature scaler is fitted on, all | with_correct)."""
        splits = {s: bench.split(s) for s in SPLIT_NAMES}
        recipe = None
        if "features" in inputs:
            from vlrb.features.recipe import FeatureRecipe

            if encoder is None:
                raise ValueError("a feature-level router needs an encoder config")
            recipe = FeatureRecipe.from_config(encoder, fusion)
            X = recipe.fit_splits(bench, SPLIT_NAMES, scaler_fit=scaler_fit)
            splits = {s: sp.with_features(X[s]) for s, sp in splits.items()}
        return cls(bench, splits, recipe, num_workers)

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]
