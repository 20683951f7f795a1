"""From an encoder config to its encoders: which class a section names, its parquet name and cache identity
without loading anything, and the encoder itself.

An encoder config (`conf/encoder/*.yaml`, a plain dict: jobs convert their configs before calling the library) has
a `text` and a `vision` section. A section names its class by `_target_`, or (configs and recipe.json files
written before) by the class's `family`; its other keys are the class's keyword arguments, plus runtime settings
(`vlrb.features.options.RUN_KEYS`, read by extraction, never passed to the class).

Two doors, as for routers (vlrb.components): a config the user wrote is built by `vlrb.components.instantiate`;
a section read from a recipe.json file (`where=` its path) by `vlrb.components.rebuild`, as data.
"""
from __future__ import annotations

from typing import Any, Mapping

from vlrb.components import instantiate, own_classes, rebuild, resolve
from vlrb.features.base import Encoder, section_identity
from vlrb.features.options import RUN_KEYS

DEFAULT_FAMILY = {"text": "minilm", "vision": "efficientnet_lite0"}
NOT_SETTINGS = ("_target_", "family", *RUN_KEYS)  # section keys that are not the encoder's keyword arguments


def as_dict(cfg: Any) -> dict:
    """A plain dict from a mapping (nested mappings too) or None."""
    if cfg is None:
        return {}
    if isinstance(cfg, Mapping):
        return {k: (as_dict(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}
    raise TypeError(f"expected a mapping for an encoder config, got {type(cfg).__name__}")


def section(cfg: Any, modality: str) -> dict:
    """The `modality` section of a full encoder config, or the section itself."""
    d = as_dict(cfg)
    if modality in d and isinstance(d[modality], Mapping):  # the full encoder config
        d = as_dict(d[modality])
    return d


def family_class(family: str, modality: str) -> type[Encoder]:
    """The one of vlrb's own encoder classes whose `family` (or an older spelling of it) is `family`."""
    found = {cls for cls in own_classes(Encoder).values()
             if family in (vars(cls).get("family"), *vars(cls).get("family_aliases", ()))}
    if not found:
        known = sorted(f for cls in own_classes(Encoder).values() for f in (vars(cls).get("family"),) if f)
        raise KeyError(f"unknown {modality} encoder family {family!r}; known: {known}")
    if len(found) > 1:
        raise KeyError(f"encoder family {family!r} names several classes: {sorted(c.__qualname__ for c in found)}")
    return found.pop()


def encoder_class(sec: dict, modality: str, *, where: str | None = None, trust_code: bool = True) -> type[Encoder]:
    """The class a section names: its `_target_` (conf/encoder/*.yaml), or its `family`. A section read from a file
    (`where`) names one of vlrb's own encoders unless `trust_code` (vlrb.components.resolve)."""
    if sec.get("_target_"):
        cls = resolve(sec["_target_"], Encoder, where=where or f"encoder.{modality}", trust_code=trust_code)
        fam = cls.family
    else:
        fam = sec.get("family") or DEFAULT_FAMILY[modality]
        cls = family_class(fam, modality)
    if cls.modality != modality:
        raise ValueError(f"encoder family {fam!r} is a {cls.modality} encoder, configured as {modality}")
    return cls


def encoder_settings(sec: dict) -> dict:
    """The section's keyword arguments for its class (without `_target_`, `family` and runtime settings)."""
    return {k: v for k, v in sec.items() if k not in NOT_SETTINGS}


def build_encoder(cfg: Any, modality: str, *, where: str | None = None, trust_code: bool = True) -> Encoder:
    """The `modality` ("text"/"vision") encoder of a full encoder config or of its section. A config is built by
    `instantiate`; a section read from a file (`where`: the file, for messages) by `rebuild`, as data."""
    sec = section(cfg, modality)
    cls = encoder_class(sec, modality, where=where, trust_code=trust_code)
    if where is None:
        try:
            enc = instantiate({"_target_": f"{cls.__module__}.{cls.__qualname__}", **encoder_settings(sec)})
        except Exception as e:  # what the constructor raised, if instantiate wrapped it: the encoder's own error
            if e.__cause__ is None or isinstance(e, (ValueError, TypeError)):  # (e.g. EncoderUnavailableError,
                raise  # which names encoder=default)
            raise e.__cause__ from None
    else:
        enc = rebuild(cls, encoder_settings(sec), Encoder, where=where)
    enc.section = sec  # its cache identity is the section's (vlrb.features.base.section_identity)
    return enc


def build_text_encoder(cfg: Any) -> Encoder:
    return build_encoder(cfg, "text")


def build_vision_encoder(cfg: Any) -> Encoder:
    return build_encoder(cfg, "vision")


def encoder_name(cfg: Any, modality: str) -> str:
    """The parquet stem of the configured encoder, without loading it."""
    sec = section(cfg, modality)
    return encoder_class(sec, modality).default_name(sec)


def encoder_identity(cfg: Any, modality: str) -> tuple[str, str, dict]:
    """(parquet stem, family, cache identity) of the configured encoder, without loading it."""
    sec = section(cfg, modality)
    cls = encoder_class(sec, modality)
    return cls.default_name(sec), cls.family, section_identity(sec, cls)
