"""The router interface.

Every router — a training-free baseline, a scikit-style feature router or a Lightning-trained network —
looks the same from outside:

    router = KNNRouter(k=5).fit(train, dev)          # dev: early stopping / selection only
    scores = router.predict_scores(test)             # (n, K) float, higher = better
    choice = router.route(test)                      # (n,) int model indices in [0, K)

A router is named by its class (`_target_` in `conf/router/<name>.yaml`: `router=<name>` picks the file); its
`name` class attribute is the short name shown in tables and saved in router.json.

A fitted router is saved to a directory with `router.save(path)` and read back with `read_router(path)`
(or `Cls.load(path)`): `router.json` (name, params, models, fit_info) beside `state.safetensors` or
`weights.safetensors` (folders saved before: `state.npz`, `weights.pt`). A folder is data: its class must be one of
vlrb's own routers and its parameters plain values (vlrb.components), its arrays are checked against the shapes
the router needs before they are read and for NaN after (vlrb.state_files).
"""
from __future__ import annotations

import contextvars
import functools
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vlrb.data.benchmark import Requests, Split
from vlrb.routing.metrics import validate_choices

# What a router reads from a Split besides the model list:
#   "labels"   - the routed split's own Y and C (only the Oracle: an upper bound, not a deployable router)
#   "features" - split.X, fused frozen embeddings (feature-level routers)
#   "raw"      - prompts and images through the Benchmark (end-to-end routers)
#   "answers"  - the answers of the models it calls (cascades: replayed from the benchmark, or live when served)
INPUT_KINDS = ("labels", "features", "raw", "answers")


class Router:
    """Base class. Subclasses set `inputs`/`trainable` and implement `fit` and `predict_scores`."""

    name: ClassVar[str] = "router"  # the short name in tables and router.json (each router class sets its own)
    inputs: ClassVar[tuple[str, ...]] = ()
    trainable: ClassVar[bool] = False
    uses_lambda: ClassVar[bool] = False  # True: trained on the soft labels, so its `lam` parameter matters
    saves_state: ClassVar[bool] = True  # False: nothing learned worth a router/ folder (training-free baselines)
    scaler_fit: str = "all"  # feature routers: the train rows the feature scaler is fitted on (all | with_correct)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.inputs) - set(INPUT_KINDS)
        if unknown:
            raise TypeError(f"router {cls.__qualname__} declares unknown inputs {sorted(unknown)}; known: {INPUT_KINDS}")

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

    def predict_scores(self, split: Requests) -> np.ndarray:
        """(n, K) float scores; `route` takes their argmax."""
        raise NotImplementedError

    def save(self, path: Path) -> None:
        """Write the fitted router into the directory `path`: router.json (class, parameters, models) and its fitted
        attributes (the scikit-learn convention: names ending in `_`) as arrays in state.safetensors. Routers whose
        state is not numbers override `save` and `load`."""
        state = {}
        for key, value in vars(self).items():
            if not key.endswith("_") or key.startswith("_"):
                continue
            arr = np.asarray(value) if isinstance(value, (np.ndarray, np.generic, int, float, bool, list, tuple)) else None
            if arr is None or arr.dtype.kind not in "biufUS":
                raise TypeError(f"{self.label}: save() keeps fitted attributes that are numbers or arrays; {key} is a "
                                f"{type(value).__name__} (override save() and load())")
            state[key] = arr
        save_arrays(self, path, state)

    @classmethod
    def load(cls, path: Path) -> "Router":
        """Rebuild a router written by `save` (the default: parameters from router.json, fitted attributes from
        state.safetensors, scalars back as Python numbers)."""
        meta, arrays = load_arrays(path)
        router = router_from_meta(meta, cls)
        restore_common(router, meta)
        for key, arr in arrays.items():
            if not key.endswith("_") or key.startswith("_"):
                require(False, meta, f"state holds {key!r}, not a fitted attribute (names ending in '_')")
            setattr(router, key, arr.item() if arr.ndim == 0 else arr)
        return router

    # -------------------------------------------------------------------- shared behaviour
    @property
    def label(self) -> str:
        """Display name in leaderboards and plots."""
        return self.name

    @property
    def fitted(self) -> bool:
        return self.n_models is not None

    def route(self, split: Requests) -> np.ndarray:
        """(n,) int64 model indices: argmax of `predict_scores` (the first maximum on ties), validated."""
        self._check_inputs(split)
        scores = np.asarray(self.predict_scores(split))
        n, k = len(split), self.n_models
        if scores.shape != (n, k):
            raise ValueError(f"{self.label}: predict_scores returned {scores.shape}; expected ({n}, {k})")
        if np.isnan(scores).any():
            raise ValueError(f"{self.label}: predict_scores returned NaN scores")
        return validate_choices(scores.argmax(1), n, k, what=self.label)

    def route_among(self, split: Requests, allowed) -> np.ndarray:
        """(n,) choices when only the `allowed` models ((K,) bool) can answer, e.g. while one is down: the best-scored
        allowed model. Routers whose scores rank their first choice only (Oracle, Random) choose again instead."""
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != (self.n_models,) or not allowed.any():
            raise ValueError(f"{self.label}: the allowed models must be a ({self.n_models},) mask with at least one")
        if allowed.all():
            return self.route(split)
        self._check_inputs(split)
        scores = np.where(allowed[None, :], np.asarray(self.predict_scores(split), np.float64), -np.inf)
        if np.isnan(scores).any():
            raise ValueError(f"{self.label}: predict_scores returned NaN scores")
        return validate_choices(scores.argmax(1), len(split), self.n_models, what=self.label)

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

    def _check_inputs(self, split: Requests) -> None:
        if not self.fitted:
            raise RuntimeError(f"{self.label}: call fit() before predict_scores()/route()")
        k = len(split.models) if split.models else split.Y.shape[1]
        if "labels" in self.inputs and not isinstance(split, Split):
            raise ValueError(f"{self.label} reads the answers' correctness: it routes the rows of a benchmark split, "
                             "not new requests")
        if k != self.n_models or (self.models and split.models and list(split.models) != self.models):
            raise ValueError(f"{self.label}: fitted on {self.n_models} models {self.models[:3]}..., "
                             f"asked to route among {k} {list(split.models)[:3]}...")
        if "features" in self.inputs and split.X is None:
            raise ValueError(f"{self.label} needs features: attach them with split.with_features(X)")
        if "answers" in self.inputs and getattr(split, "answers", None) is None:
            raise ValueError(f"{self.label} replays the models' answers, and these rows have none: a benchmark built "
                             "before answers were kept needs `python build_data.py` again; new requests are routed by "
                             "serving the cascade (serve.py), which sees the answers as the models give them")

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
STATE_FILE = "state.safetensors"
LEGACY_STATE_NPZ = "state.npz"  # folders saved before safetensors
WEIGHTS_FILE = "weights.safetensors"  # a network router's state_dict
LEGACY_WEIGHTS_FILE = "weights.pt"


def weights_file(path: Path) -> Path:
    """The weights of a saved network router: weights.safetensors, or weights.pt in an older folder."""
    path = Path(path)
    return path / LEGACY_WEIGHTS_FILE if not (path / WEIGHTS_FILE).exists() and (path / LEGACY_WEIGHTS_FILE).exists() \
        else path / WEIGHTS_FILE


def _jsonable(v: Any) -> Any:
    """Params/fit_info for router.json: inf -> "inf", numpy scalars -> Python, tuples -> lists, a partial
    (e.g. a backbone from `conf/backbone/`) -> its `_target_` spec, which `router_from_meta` looks up again."""
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


# whether code outside vlrb may be imported while a router folder is read (`read_router(..., trust_code=True)`)
_TRUST_CODE: contextvars.ContextVar[bool] = contextvars.ContextVar("vlrb_trust_code", default=False)


def router_from_meta(meta: dict[str, Any], cls: type | None = None) -> Router:
    """A new, unfitted router with the class (`cls`, or router.json's) and parameters recorded in router.json: the
    parameters are checked plain values (vlrb.components.rebuild), never instantiated recursively; an end-to-end
    router's backbone spec is looked up among vlrb's own backbones."""
    from vlrb.components import rebuild

    params = meta.get("params") or {}
    nested = {}
    if isinstance(params, dict) and isinstance(params.get("backbone"), dict) and "_target_" in params["backbone"]:
        from vlrb.backbones.base import Backbone

        nested["backbone"] = Backbone
    return rebuild(cls or meta.get("class"), params, Router, where=meta.get("_file", ROUTER_JSON),
                   trust_code=_TRUST_CODE.get(), nested=nested)


def read_router_meta(path: Path) -> dict[str, Any]:
    """router.json as a dict, with the checks every reader needs; errors name the file."""
    from vlrb.components import ArtifactError

    f = Path(path) / ROUTER_JSON
    if not f.exists():
        raise ArtifactError(f"{path} is not a saved router (no {ROUTER_JSON})")
    try:
        meta = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{f}: expected a JSON object, got {type(meta).__name__}")
    models = meta.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        raise ArtifactError(f"{f}: 'models' must be a list of model ids")
    if models and len(set(models)) != len(models):
        raise ArtifactError(f"{f}: 'models' names a model twice: {sorted({m for m in models if models.count(m) > 1})}")
    n = meta.get("n_models")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or (models and n != len(models)):
        raise ArtifactError(f"{f}: 'n_models' must be the number of models ({len(models or [])}), got {n!r}")
    meta["_file"] = str(f)
    return meta


def save_arrays(router: Router, path: Path, arrays: dict[str, np.ndarray], **extra: Any) -> None:
    """router.json + state.safetensors: the state of a numpy/scikit-backed router (arrays of text, which
    safetensors does not hold, go to router.json's `text_arrays`)."""
    from vlrb.state_files import save_arrays as save

    numbers = {k: v for k, v in arrays.items() if np.asarray(v).dtype.kind not in "US"}
    text = {k: np.asarray(v).astype(str).tolist() for k, v in arrays.items() if k not in numbers}
    path = write_router_meta(router, path, **extra, **({"text_arrays": text} if text else {}))
    save(path / STATE_FILE, numbers)


def load_arrays(path: Path, expect: dict | None = None,
                nan_ok: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """router.json and the state arrays (state.safetensors, or a legacy state.npz): shapes checked from the file's
    header against `expect` before anything is read, values checked finite after."""
    from vlrb.state_files import load_arrays as load

    meta = read_router_meta(path)
    f = Path(path) / STATE_FILE
    if not f.exists() and (Path(path) / LEGACY_STATE_NPZ).exists():
        f = Path(path) / LEGACY_STATE_NPZ
    if not f.exists():
        from vlrb.components import ArtifactError

        raise ArtifactError(f"{path}: no {STATE_FILE} (the router's learned state)")
    text = meta.get("text_arrays") or {}
    if not isinstance(text, dict) or not all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                                             for v in text.values()):
        from vlrb.components import ArtifactError

        raise ArtifactError(f"{meta['_file']}: 'text_arrays' must map names to lists of strings")
    arrays = load(f, expect={k: v for k, v in (expect or {}).items() if k not in text}, nan_ok=nan_ok)
    return meta, {**arrays, **{k: np.asarray(v, dtype=str) for k, v in text.items()}}


def require(ok: bool, meta: dict[str, Any], what: str) -> None:
    """A consistency check of a loaded router's state; a one-line ArtifactError naming the folder otherwise."""
    if not ok:
        from vlrb.components import ArtifactError

        raise ArtifactError(f"{Path(meta.get('_file', ROUTER_JSON)).parent}: {what}")


def meta_k(path: Path) -> int:
    """The number of models router.json declares (checked), for the expected shapes of its arrays."""
    return int(read_router_meta(path)["n_models"])


def restore_common(router: Router, meta: dict[str, Any]) -> None:
    """Model list and fit_info from router.json (what `fit` would have set besides the learned state)."""
    router.models = list(meta.get("models") or [])
    router.n_models = int(meta["n_models"])
    router.fit_info = dict(meta.get("fit_info") or {})


def read_router(path: Path, *, trust_code: bool = False) -> Router:
    """Any router written by `router.save(path)`: router.json names its class, which reads the rest. The class must be
    one of vlrb's own routers unless `trust_code` (then any importable Router subclass: code runs).

    (`vlrb.load_router` reads a whole trained-router artifact: this plus the feature recipe and prices.)"""
    from vlrb.components import ArtifactError, own_classes, resolve

    meta = read_router_meta(path)
    if "class" in meta:
        cls = resolve(meta["class"], Router, where=meta["_file"], trust_code=trust_code)
    else:  # router.json of the first vlrb releases: the router's name only
        by_name = {c.name: c for c in own_classes(Router).values() if c.__dict__.get("name")}
        if meta.get("name") not in by_name:
            raise ArtifactError(f"{meta['_file']}: names no router class and the name {meta.get('name')!r} is not one "
                                f"of vlrb's ({', '.join(sorted(by_name))})")
        cls = by_name[meta["name"]]
    token = _TRUST_CODE.set(trust_code)
    try:
        return cls.load(Path(path))
    finally:
        _TRUST_CODE.reset(token)
