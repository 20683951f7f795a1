"""The router interface and its registry (timm-style: `@register_router`, `create_router`, `list_routers`).

Every router — a training-free baseline, a scikit-style feature router or a Lightning-trained network —
looks the same from outside:

    router = create_router("knn", k=5).fit(train, dev)   # dev: early stopping / selection only
    scores = router.predict_scores(test)                 # (n, K) float, higher = better
    choice = router.route(test)                          # (n,) int model indices in [0, K)

The registry name is also the config name: `router=<name>` loads `conf/router/<name>.yaml`.

A fitted router is saved to a directory with `router.save(path)` and read back with `read_router(path)`
(or `Cls.load(path)`): `router.json` (name, params, models, fit_info) beside `state.npz` or `weights.pt`.
Safe formats only — np.load(allow_pickle=False), torch.load(weights_only=True), never pickle.
"""
from __future__ import annotations

import fnmatch
import functools
import json
import math
from pathlib import Path
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
    uses_lambda: ClassVar[bool] = False  # True: trained on the soft labels, so its `lam` parameter matters
    saves_state: ClassVar[bool] = True  # False: nothing learned worth a router/ folder (training-free baselines)
    scaler_fit: str = "all"  # feature routers: the train rows the feature scaler is fitted on (all | with_correct)

    def __new__(cls, *args: Any, **kwargs: Any):
        # Routers are built from config (`_target_` + keyword arguments); the arguments are kept as given, so a
        # saved router can be rebuilt exactly (router.json) and logged, with no signature inspection.
        if args:
            raise TypeError(f"{cls.__name__}: pass router parameters by keyword (got {len(args)} positional)")
        self = super().__new__(cls)
        self._params = dict(kwargs)
        return self

    def __init__(self) -> None:
        self.n_models: int | None = None
        self.models: list[str] = []
        self.fit_info: dict[str, Any] = {}  # what fit() wants logged: epochs, best val score, seconds, ...

    # -------------------------------------------------------------------- to implement
    def fit(self, train: Split, dev: Split | None = None) -> "Router":
        """Learn from `train`; `dev` may only steer early stopping or checkpoint choice. Returns self.

        Trainable routers (`trainable = True`) take a third argument, `ctx` (vlrb.routers.lit.FitContext): the
        run's trainer, callbacks, loggers and data-loading settings."""
        self._remember_models(train)
        return self

    def predict_scores(self, split: Split) -> np.ndarray:
        """(n, K) float scores; `route` takes their argmax."""
        raise NotImplementedError

    def save(self, path: Path) -> None:
        """Write the fitted router into the directory `path` (safe formats only; see the module doc)."""
        raise NotImplementedError(f"{self.label}: save() is not implemented")

    @classmethod
    def load(cls, path: Path) -> "Router":
        """Rebuild a router written by `save`."""
        raise NotImplementedError(f"{cls.__name__}: load() is not implemented")

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
        """The keyword arguments the router was built with (its defaults fill in the rest)."""
        return dict(self._params)

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

    def _training_rows(self, train: Split, drop_no_correct: bool = True) -> np.ndarray:
        """Rows a router learns from: upstream drops samples no model answers (dev and test never are)."""
        keep = np.asarray(train.Y).astype(bool).any(1) if drop_no_correct else np.ones(len(train), dtype=bool)
        if not keep.any():
            raise ValueError(f"{self.label}: no training sample has a correct model")
        return keep

    @staticmethod
    def _features(split: Split) -> np.ndarray:
        """split.X as a C-contiguous float32 matrix (no copy when it already is one)."""
        if split.X is None:
            raise ValueError(f"split {split.name!r} has no features: attach them with split.with_features(X)")
        return np.ascontiguousarray(split.X, dtype=np.float32)


# ------------------------------------------------------------------------------------------ persistence
ROUTER_JSON = "router.json"
STATE_NPZ = "state.npz"


def _jsonable(v: Any) -> Any:
    """Params/fit_info for router.json: inf -> "inf", numpy scalars -> Python, tuples -> lists, a partial
    (e.g. a backbone from `conf/backbone/`) -> its `_target_` config, so `instantiate` rebuilds it."""
    if isinstance(v, functools.partial) and isinstance(v.func, type):
        return {"_target_": f"{v.func.__module__}.{v.func.__qualname__}", "_partial_": True, **_jsonable(v.keywords)}
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else None)
    return v


def write_router_meta(router: Router, path: Path, **extra: Any) -> Path:
    """Create the directory `path` and write router.json; returns the directory."""
    from vlrb.io import write_json

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {"format": "vlrb-router/1", "name": router.name, "class": f"{type(router).__module__}.{type(router).__qualname__}",
            "params": router.get_params(), "models": router.models, "n_models": router.n_models,
            "fit_info": router.fit_info, **extra}
    write_json(path / ROUTER_JSON, _jsonable(meta))
    return path


def router_from_meta(meta: dict[str, Any]) -> Router:
    """A new, unfitted router with the class and parameters recorded in router.json."""
    from hydra.utils import instantiate

    return instantiate({"_target_": meta["class"], **meta.get("params", {})}, _convert_="all")


def read_router_meta(path: Path) -> dict[str, Any]:
    f = Path(path) / ROUTER_JSON
    if not f.exists():
        raise FileNotFoundError(f"{path} is not a saved router (no {ROUTER_JSON})")
    return json.loads(f.read_text())


def save_arrays(router: Router, path: Path, arrays: dict[str, np.ndarray], **extra: Any) -> None:
    """router.json + state.npz: the state of a numpy/scikit-backed router."""
    path = write_router_meta(router, path, **extra)
    np.savez(path / STATE_NPZ, **arrays)


def load_arrays(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    meta = read_router_meta(path)
    with np.load(Path(path) / STATE_NPZ, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return meta, arrays


def restore_common(router: Router, meta: dict[str, Any]) -> None:
    """Model list and fit_info from router.json (what `fit` would have set besides the learned state)."""
    router.models = list(meta.get("models") or [])
    router.n_models = int(meta["n_models"])
    router.fit_info = dict(meta.get("fit_info") or {})


def read_router(path: Path) -> Router:
    """Any router written by `router.save(path)`: router.json names its class, which reads the rest.

    (`vlrb.load_router` reads a whole trained-router artifact: this plus the feature recipe and prices.)"""
    from hydra.utils import get_class

    meta = read_router_meta(path)
    cls = get_class(meta["class"]) if "class" in meta else get_router_class(meta["name"])
    if not (isinstance(cls, type) and issubclass(cls, Router)):
        raise ValueError(f"{path}: router.json names {meta.get('class')!r}, which is not a vlrb Router")
    return cls.load(Path(path))


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
