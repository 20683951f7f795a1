"""The router interface and its registry (timm-style: `@register_router`, `create_router`, `list_routers`).

Every router — a training-free baseline, a scikit-style feature router or a Lightning-trained network —
looks the same from outside:

    router = create_router("knn", k=5).fit(train, dev)   # dev: early stopping / selection only
    scores = router.predict_scores(test)                 # (n, K) float, higher = better
    choice = router.route(test)                          # (n,) int model indices in [0, K)

The registry name is also the config name: `router=<name>` loads `conf/router/<name>.yaml`.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable, ClassVar, TypeVar

import numpy as np

from vlrb.data.benchmark import Split
from vlrb.routing.metrics import validate_choices

# What a router reads from a Split besides the model list:
#   "labels"   - the routed split's own Y and C (only the Oracle: an upper bound, not a deployable router)
#   "features" - split.X, fused frozen embeddings (feature-level routers)
#   "raw"      - prompts and images through the Benchmark (end-to-end routers)
INPUT_KINDS = ("labels", "features", "raw")


class Router:
    """Base class. Subclasses set `inputs`/`trainable` and implement `fit` and `predict_scores`."""

    name: ClassVar[str] = "router"  # set by @register_router
    inputs: ClassVar[tuple[str, ...]] = ()
    trainable: ClassVar[bool] = False

    def __init__(self) -> None:
        self.n_models: int | None = None
        self.models: list[str] = []

    # -------------------------------------------------------------------- to implement
    def fit(self, train: Split, dev: Split | None = None) -> "Router":
        """Learn from `train`; `dev` may only steer early stopping or checkpoint choice. Returns self."""
        self._remember_models(train)
        return self

    def predict_scores(self, split: Split) -> np.ndarray:
        """(n, K) float scores; `route` takes their argmax."""
        raise NotImplementedError

    # -------------------------------------------------------------------- shared behaviour
    @property
    def label(self) -> str:
        """Display name in leaderboards and plots."""
        return self.name

    @property
    def fitted(self) -> bool:
        return self.n_models is not None

    def route(self, split: Split) -> np.ndarray:
        """(n,) int64 model indices: argmax of `predict_scores` (the first maximum on ties), validated."""
        self._check_inputs(split)
        scores = np.asarray(self.predict_scores(split))
        n, k = len(split), len(split.models) if split.models else split.Y.shape[1]
        if scores.shape != (n, k):
            raise ValueError(f"{self.label}: predict_scores returned {scores.shape}; expected ({n}, {k})")
        if np.isnan(scores).any():
            raise ValueError(f"{self.label}: predict_scores returned NaN scores")
        return validate_choices(scores.argmax(1), n, k, what=self.label)

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters, for logging (sklearn convention: stored under the same attribute name)."""
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p not in ("self", "args", "kwargs")]
        return {p: getattr(self, p) for p in names if hasattr(self, p)}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # -------------------------------------------------------------------- helpers for subclasses
    def _remember_models(self, split: Split) -> None:
        self.models = list(split.models)
        self.n_models = split.Y.shape[1]

    def _check_inputs(self, split: Split) -> None:
        if not self.fitted:
            raise RuntimeError(f"{self.label}: call fit() before predict_scores()/route()")
        k = split.Y.shape[1]
        if k != self.n_models or (self.models and split.models and list(split.models) != self.models):
            raise ValueError(f"{self.label}: fitted on {self.n_models} models {self.models[:3]}..., "
                             f"asked to route among {k} {list(split.models)[:3]}...")
        if "features" in self.inputs and split.X is None:
            raise ValueError(f"{self.label} needs features: attach them with split.with_features(X)")


# ------------------------------------------------------------------------------------------ registry
_REGISTRY: dict[str, type[Router]] = {}
R = TypeVar("R", bound=type[Router])


def register_router(name: str) -> Callable[[R], R]:
    """Class decorator: make a router available as `create_router(name)` and `router=<name>`."""

    def wrap(cls: R) -> R:
        if not (isinstance(cls, type) and issubclass(cls, Router)):
            raise TypeError(f"@register_router({name!r}) must decorate a Router subclass")
        prev = _REGISTRY.get(name)
        if prev is not None and prev.__qualname__ != cls.__qualname__:  # same class re-imported is fine
            raise ValueError(f"router name {name!r} is already registered by {prev.__module__}.{prev.__qualname__}")
        unknown = set(cls.inputs) - set(INPUT_KINDS)
        if unknown:
            raise ValueError(f"router {name!r} declares unknown inputs {sorted(unknown)}; known: {INPUT_KINDS}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def list_routers(pattern: str | None = None, *, inputs: str | None = None,
                 trainable: bool | None = None) -> list[str]:
    """Registered names, sorted; filter by glob pattern, by an input kind, or by trainability."""
    names = sorted(_REGISTRY)
    if pattern:
        names = fnmatch.filter(names, pattern)
    if inputs is not None:
        names = [n for n in names if inputs in _REGISTRY[n].inputs]
    if trainable is not None:
        names = [n for n in names if _REGISTRY[n].trainable == trainable]
    return names


def get_router_class(name: str) -> type[Router]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown router {name!r}; registered: {', '.join(sorted(_REGISTRY)) or '(none)'}") from None


def create_router(name: str, **kwargs: Any) -> Router:
    """Instantiate a registered router; unknown parameters are a clear error, not silently ignored."""
    cls = get_router_class(name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise TypeError(f"router {name!r}: {e}") from e
