"""Components from their names: the one place where a `_target_` mapping becomes an object.

Two doors, one per kind of input:

* `instantiate(cfg)`: a config the user wrote (conf/ and the command line). Hydra's `instantiate`: a config is
  code the user chose, it may name any class.
* `rebuild(target, params, base)`: what a file that came with an artifact asks for (router.json, recipe.json). A file
  is data, never code: its class is looked up among vlrb's own subclasses of `base`, so nothing the file names is
  imported (a `.py` shipped beside it never runs), unless the caller passes `trust_code=True` (the convention of
  `trust_remote_code` in transformers). Parameters must be plain JSON values that the constructor accepts; one level
  of nested component (`{"_target_": ..., "_partial_": true, ...}`, an end-to-end router's backbone) is looked up
  the same way, against its own base class. Nothing is instantiated recursively.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import math
from typing import Any, Mapping

from vlrb.errors import VlrbError

# the packages whose modules define vlrb's component classes (imported before a lookup, so every class exists)
COMPONENT_MODULES = ("vlrb.routers", "vlrb.backbones.offline", "vlrb.backbones.vl", "vlrb.features.encoders")
MAX_PARAM_ITEMS = 100_000  # a router's parameters are settings, not data: anything bigger is refused unread


class UntrustedCodeError(VlrbError, ValueError):
    """An artifact names code that is not vlrb's own, and the caller did not allow code outside vlrb."""


class ArtifactError(VlrbError, ValueError):
    """An artifact file that cannot be what it claims (bad JSON, unknown parameters, wrong shapes, NaN weights)."""


def instantiate(cfg: Any, **kwargs: Any) -> Any:
    """The object a (trusted) config describes: Hydra's instantiate, every container converted to plain Python. A
    constructor's ValueError or TypeError comes out as itself (naming the class), not wrapped in Hydra's exception."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(cfg, _convert_="all", **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, (ValueError, TypeError)):
            target = cfg.get("_target_", "?") if hasattr(cfg, "get") else "?"
            try:
                err = type(cause)(f"{target}: {cause}")
            except Exception:  # noqa: BLE001 - an exception class with another constructor: keep Hydra's
                raise e from None
            raise err from cause
        raise


@functools.cache
def _import_components() -> None:
    for name in COMPONENT_MODULES:
        importlib.import_module(name)


def own_classes(base: type) -> dict[str, type]:
    """vlrb's own subclasses of `base` (defined in modules under `vlrb.`), by their dotted path."""
    _import_components()
    found: dict[str, type] = {}
    todo = [base]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            todo.append(sub)
            if sub.__module__.split(".")[0] == "vlrb":
                found[f"{sub.__module__}.{sub.__qualname__}"] = sub
    if base.__module__.split(".")[0] == "vlrb":
        found[f"{base.__module__}.{base.__qualname__}"] = base
    return found


def resolve(target: Any, base: type, *, where: str, trust_code: bool = False) -> type:
    """The class `target` (a dotted path from a file) names: one of vlrb's own subclasses of `base`; any importable
    subclass of `base` only with `trust_code`."""
    if not isinstance(target, str) or not target.strip():
        raise ArtifactError(f"{where}: the class must be a dotted path, got {target!r}")
    cls = own_classes(base).get(target)
    if cls is not None:
        return cls
    if not trust_code:
        raise UntrustedCodeError(
            f"{where} names {target!r}, which is not one of vlrb's own {base.__name__} classes; a folder received from "
            f"elsewhere never runs code of its own unless you allow it: load_router(path, trust_code=True) or "
            f"trust_code=true (only for code you trust)")
    module, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ArtifactError(f"{where}: cannot import {target!r} ({type(e).__name__}: {e})") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ArtifactError(f"{where}: {target!r} is not a {base.__name__}")
    return cls


def check_params(cls: type, params: Any, *, where: str, allow: tuple[str, ...] = ()) -> dict:
    """`params` as keyword arguments of `cls`: a JSON object of plain values (no `_target_` anywhere, except under the
    keys in `allow`), every name one the constructor accepts."""
    if not isinstance(params, Mapping):
        raise ArtifactError(f"{where}: parameters must be a JSON object, got {type(params).__name__}")
    sig = inspect.signature(cls.__init__)
    names = {p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    out = {}
    budget = [MAX_PARAM_ITEMS]
    for key, value in params.items():
        if not isinstance(key, str) or (key not in names and not takes_any) or key == "self":
            raise ArtifactError(f"{where}: {cls.__name__} takes no parameter {key!r} "
                                f"(its parameters: {', '.join(sorted(names - {'self'}))})")
        if key not in allow:
            _check_plain(value, f"{where}: parameter {key!r}", budget)
        out[key] = value
    return out


def check_plain(value: Any, where: str) -> None:
    """`value` is made of JSON values only (no `_target_` anywhere), and not too many of them."""
    _check_plain(value, where, [MAX_PARAM_ITEMS])


def _check_plain(value: Any, where: str, budget: list[int]) -> None:
    """JSON values only (None, bool, int, float, str, lists, objects with string keys); no `_target_`."""
    budget[0] -= 1
    if budget[0] < 0:
        raise ArtifactError(f"{where}: more than {MAX_PARAM_ITEMS} values; parameters are settings, not data")
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if math.isnan(value):
            raise ArtifactError(f"{where} is NaN")
        return
    if isinstance(value, list):
        for v in value:
            _check_plain(v, where, budget)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or k in ("_target_", "_partial_", "_args_", "_recursive_", "_convert_"):
                raise ArtifactError(f"{where}: holds the key {k!r}; a saved parameter is a plain value, never a "
                                    "component to build")
            _check_plain(v, where, budget)
        return
    raise ArtifactError(f"{where}: {type(value).__name__} is not a JSON value")


def rebuild(target: Any, params: Any, base: type, *, where: str, trust_code: bool = False,
            nested: Mapping[str, type] | None = None) -> Any:
    """`target(**params)`, both read from an artifact file (see the module docstring); `target` is a dotted path, or
    a class the caller resolved already. `nested` names the parameters that may hold one component spec
    (`{"_target_": ..., "_partial_": true, ...plain values}`) and its base class: such a spec becomes a
    `functools.partial` of the class it names, looked up the same way."""
    cls = target if isinstance(target, type) else resolve(target, base, where=where, trust_code=trust_code)
    kwargs = check_params(cls, params, where=f"{where} ({cls.__qualname__})", allow=tuple(nested or ()))
    for key, nested_base in (nested or {}).items():
        spec = kwargs.get(key)
        if isinstance(spec, Mapping) and "_target_" in spec:
            kwargs[key] = partial_from_spec(spec, nested_base, where=f"{where}: parameter {key!r}",
                                            trust_code=trust_code)
        elif spec is not None:
            _check_plain(spec, f"{where}: parameter {key!r}", [MAX_PARAM_ITEMS])
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{where}: {cls.__name__}({', '.join(kwargs)}) refused its parameters: {e}") from None


def partial_from_spec(spec: Mapping, base: type, *, where: str, trust_code: bool = False) -> functools.partial:
    """A `{"_target_": <class>, "_partial_": true, ...}` spec from a file -> functools.partial(class, **checked)."""
    spec = dict(spec)
    target = spec.pop("_target_")
    if spec.pop("_partial_", True) is not True:
        raise ArtifactError(f"{where}: a nested component must be a `_partial_: true` spec")
    cls = resolve(target, base, where=where, trust_code=trust_code)
    return functools.partial(cls, **check_params(cls, spec, where=f"{where} ({target})"))
