"""The encoder interface: what every text and vision encoder of `vlrb.features.encoders` is.

An encoder is an `nn.Module` built from keyword arguments (the keys of its config section, `conf/encoder/*.yaml`;
the class is the section's `_target_`), with
  * `.modality` ("text" | "vision"), `.family` (its short name, kept in the embedding cache keys), `.name` (the
    file stem of its parquet), `.dim` (output size);
  * `.preprocess(item)`: one raw item (a prompt string or a PIL RGB image) -> token ids or a CHW tensor. It is a
    small picklable object (not a bound method of the module), so DataLoader workers run it without copying the
    model;
  * `.collate(list_of_preprocessed)` -> a dict of batched tensors;
  * `forward(batch) -> (B, dim)` float32, L2-normalised rows. Images arrive as the preprocessing gives them:
    uint8 (resized and cropped in the decode workers; normalised on the device by `pixels`) or float.

The keyword arguments are kept as given (`.settings`, as routers keep theirs), so the embeddings' cache identity
is computed from them and from nothing the class fills in by default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from vlrb.weights import WeightsUnavailableError, local_snapshot, offline_hint

OFFLINE_HINT = offline_hint("encoder=default")
EncoderUnavailableError = WeightsUnavailableError  # the name users of the feature encoders catch


def section_identity(section: dict, cls: type["Encoder"]) -> dict:
    """A config section as the embedding cache keys it: `_target_` stands for its family (so a cache written
    under either spelling stays valid)."""
    out = {k: v for k, v in section.items() if k != "_target_"}
    if section.get("_target_"):
        out.setdefault("family", cls.family)
    return out


def stem(name_or_path: str) -> str:
    """File stem of an HF id or a folder: the part after the last '/' (as upstream; docs/layout.md#embeddings)."""
    return str(name_or_path).rstrip("/").split("/")[-1]


def resolve_hf_path(name_or_path: str, modality: str) -> Path:
    """A local folder for an HF id: the folder itself, or its snapshot in the local HF cache. Never downloads."""
    return local_snapshot(name_or_path, f"{modality} encoder", f"Copy the model folder here and pass its path "
                          f"(encoder.{modality}.name_or_path=/path/to/folder), or {OFFLINE_HINT}.")


def default_collate(items: list) -> dict:
    return {"pixel_values": torch.stack(items)}


class Encoder(nn.Module):
    modality: ClassVar[str] = ""
    #: the short name of the class: the embedding cache keys carry it, and `family: <name>` (configs and recipe.json
    #: files written before `_target_`) finds the class whose own `family` it is
    family: ClassVar[str] = ""
    #: older spellings of `family`, still read from such files
    family_aliases: ClassVar[tuple[str, ...]] = ()
    #: keys of a config section that do not change the embeddings (left out of the cache hash)
    RUNTIME_KEYS = ("batch_size", "num_workers", "dim")
    #: a convolutional tower that runs faster in channels_last memory format (same numbers up to fp32 reordering)
    channels_last: bool = False

    def __new__(cls, *args: Any, **settings: Any):
        # Encoders are built from config (`_target_` + keyword arguments); the arguments are kept as given: the
        # name and the cache identity come from them
        if args:
            raise TypeError(f"{cls.__name__}: pass encoder settings by keyword (got {len(args)} positional)")
        self = super().__new__(cls)
        object.__setattr__(self, "settings", dict(settings))
        object.__setattr__(self, "section", None)
        return self

    def __init__(self) -> None:
        super().__init__()
        self.name: str = self.default_name(self.settings)
        self.dim: int = 0
        self.preprocess: Callable[[Any], Any] = lambda x: x
        self.collate: Callable[[list], dict] = default_collate

    @classmethod
    def default_name(cls, cfg: dict) -> str:
        """The parquet stem, computed from config alone (no weights loaded)."""
        if cfg.get("name"):
            return str(cfg["name"])
        if cfg.get("tiny"):
            return f"tiny-{cls.family}" + (f"-{cfg['tiny']}" if isinstance(cfg["tiny"], str) else "")
        if cfg.get("name_or_path"):
            return stem(cfg["name_or_path"])
        raise ValueError(f"encoder family {cls.family!r}: set `name` or `name_or_path`")

    def _check_dim(self) -> None:
        want = self.settings.get("dim")
        if want is not None and not self.settings.get("tiny") and int(want) != self.dim:
            raise ValueError(f"{self.modality} encoder {self.name}: config says dim={want} but the model gives {self.dim}")

    def identity(self) -> dict:
        """What determines the embeddings: the config section it was built from (`vlrb.features.sections` keeps
        it in `.section`; else its class and settings) without runtime knobs."""
        section = self.section if self.section is not None else {"family": self.family, **self.settings}
        return {k: v for k, v in sorted(section_identity(section, type(self)).items()) if k not in self.RUNTIME_KEYS}

    def forward(self, batch: dict) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pixels(self, batch: dict) -> torch.Tensor:
        """The batch's images as the model's float input (a uint8 batch is normalised here, on its device)."""
        px = batch["pixel_values"]
        normalize = getattr(self.preprocess, "normalize", None)
        px = normalize(px) if normalize is not None else px
        if getattr(self, "_channels_last", False):
            px = px.contiguous(memory_format=torch.channels_last)
        return px

    def set_channels_last(self, on: bool = True) -> None:
        """Weights and inputs in channels_last (on) or the default NCHW layout (off)."""
        self._channels_last = bool(on)
        self.to(memory_format=torch.channels_last if on else torch.contiguous_format)

    def extra_repr(self) -> str:
        return f"family={self.family}, name={self.name}, dim={self.dim}"
