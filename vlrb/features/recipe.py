"""How a feature-level router's inputs are made: encoder pair, fusion and the train-fitted scaler, in one object.

At training time `FeatureRecipe.fit(bench, encoder_cfg, fusion)` reads the cached embeddings, fuses them and
fits the scaler on the train rows; the trained router artifact stores the recipe (`recipe.json` +
`scaler.npz`), so a router that left its run directory turns new prompts and images into the very features
it was trained on (`recipe.encode(prompts, images)`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlrb.features.sections import as_dict
from vlrb.features.fusion import DEFAULT_FUSION, FeatureScaler, fit_transform_splits, fuse, load_features

RECIPE_JSON = "recipe.json"
SCALER_FILE = "scaler.safetensors"
LEGACY_SCALER_NPZ = "scaler.npz"  # folders saved before safetensors


@dataclass
class FeatureRecipe:
    encoder: dict  # the resolved encoder config (conf/encoder/<name>.yaml)
    fusion: str = DEFAULT_FUSION
    text_weight: float = 0.5
    scaler: FeatureScaler | None = None
    source: str | None = field(default=None, repr=False)  # the recipe.json it was read from: its encoders are data
    trust_code: bool = field(default=False, repr=False)  # ... which may name classes outside vlrb (load's trust_code)
    _encoders: dict = field(default_factory=dict, repr=False)  # built on first encode()
    _forwards: dict = field(default_factory=dict, repr=False)  # their AutoForward, kept across encode() calls

    @classmethod
    def from_config(cls, encoder_cfg: Any, fusion: str | None = None) -> "FeatureRecipe":
        enc = as_dict(encoder_cfg)
        return cls(encoder=enc, fusion=fusion or enc.get("fusion") or DEFAULT_FUSION,
                   text_weight=float(enc.get("text_weight", 0.5)))

    @property
    def modalities(self) -> tuple[str, ...]:
        return {"only_text": ("text",), "only_image": ("vision",)}.get(self.fusion, ("text", "vision"))

    # ------------------------------------------------------------------ training time
    def fit_splits(self, bench, splits: Sequence[str] = ("train", "dev", "test"), *,
                   scaler_fit: str = "all") -> dict[str, np.ndarray]:
        """Fused features of the benchmark's cached embeddings, the scaler fitted on train rows only (all of
        them, or `scaler_fit="with_correct"`: those some model answers); returns {split: (n, D) float32}."""
        X = load_features(bench, self.encoder, self.fusion, text_weight=self.text_weight)
        out, self.scaler = fit_transform_splits(X, bench, splits, return_scaler=True, scaler_fit=scaler_fit)
        return out

    def transform_bench(self, bench, split: str) -> np.ndarray:
        """Features of one split of a benchmark with cached embeddings, through the fitted scaler."""
        X = load_features(bench, self.encoder, self.fusion, text_weight=self.text_weight)
        return self._scale(X[bench.splits[split]])

    # ------------------------------------------------------------------ new inputs
    def encode(self, prompts: Sequence[str], images: Sequence[Any], *, batch_size: int = 32) -> np.ndarray:
        """(n, D) scaled features of raw prompts and images (an image: None, a path, bytes or a PIL image)."""
        from vlrb.data.images import ImageList
        from vlrb.features.batches import encode_items

        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images (use None for no image)")
        emb = {}
        sources = {"text": list(prompts), "vision": ImageList(images)}
        for mod in self.modalities:
            emb[mod] = encode_items(self._encoder(mod), mod, sources[mod], batch_size=batch_size,
                                    forward=self._forward(mod))
        X = fuse(emb.get("text"), emb.get("vision"), self.fusion, self.text_weight)
        return self._scale(X)

    def prepare(self, wait: bool = False) -> None:
        """Each encoder's fast path now (ONNX Runtime on a CPU: loaded from the cached export, else exported in the
        background; see `vlrb.features.runtime.AutoForward`) rather than after hundreds of inputs: a server
        calls it at start. `wait=True` returns once every path is ready."""
        for mod in self.modalities:
            self._forward(mod).prepare(wait=wait)

    def _encoder(self, mod: str):
        if mod not in self._encoders:
            from vlrb.features.sections import build_encoder

            where = None if self.source is None else f"{self.source} (encoder.{mod})"
            self._encoders[mod] = build_encoder(self.encoder, mod, where=where, trust_code=self.trust_code).eval()
        return self._encoders[mod]

    def _forward(self, mod: str):
        """Eager at first; ONNX Runtime for a convolutional encoder on a CPU once its export is cached or enough
        inputs went through (a server), as in extraction (vlrb/features/runtime.py)."""
        if mod not in self._forwards:
            from vlrb.devices import resolve_device, resolve_precision
            from vlrb.features.runtime import AutoForward

            device = resolve_device("auto")
            self._forwards[mod] = AutoForward(self._encoder(mod), device, resolve_precision("auto", device),
                                              runtime=str(self.encoder.get("runtime", "auto")))
        return self._forwards[mod]

    def _scale(self, X: np.ndarray) -> np.ndarray:
        if self.scaler is None:
            raise RuntimeError("the feature scaler is not fitted (FeatureRecipe.fit_splits first)")
        return self.scaler.transform(X)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        from vlrb.io import write_json
        from vlrb.state_files import save_arrays

        path = Path(path)
        write_json(path / RECIPE_JSON, {"encoder": self.encoder, "fusion": self.fusion,
                                        "text_weight": self.text_weight})
        sc = self.scaler.scaler
        save_arrays(path / SCALER_FILE, {"mean": sc.mean_, "scale": sc.scale_})

    @classmethod
    def load(cls, path: str | Path, *, trust_code: bool = False) -> "FeatureRecipe":
        """recipe.json + the scaler, as data: each encoder section's `_target_` must be one of vlrb's own encoders
        (any importable one with `trust_code`), its other values plain; the scaler's arrays one number per
        feature, finite, with positive scales; a section that names its class by `family` (files written before
        `_target_`) names one of vlrb's own; every section's settings are parameters its class takes."""
        from vlrb.components import ArtifactError, check_params, check_plain, resolve
        from vlrb.features.base import Encoder
        from vlrb.features.fusion import FUSIONS
        from vlrb.features.sections import encoder_class, encoder_settings
        from vlrb.state_files import load_arrays

        path = Path(path)
        where = path / RECIPE_JSON
        try:
            meta = json.loads(where.read_text())
            encoder, fusion, weight = dict(meta["encoder"]), meta["fusion"], float(meta["text_weight"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{where}: not a feature recipe ({type(e).__name__}: {e})") from None
        if fusion not in FUSIONS or not 0.0 <= weight <= 1.0:
            raise ArtifactError(f"{where}: fusion must be one of {sorted(FUSIONS)} and text_weight in [0, 1]")
        for mod in ("text", "vision"):
            section = encoder.get(mod)
            if not isinstance(section, dict):
                raise ArtifactError(f"{where}: encoder.{mod} must be an object")
            if "_target_" in section:
                resolve(section["_target_"], Encoder, where=f"{where} (encoder.{mod})", trust_code=trust_code)
        for mod in ("text", "vision"):  # the encoders' settings are plain values (their classes read them)
            check_plain({k: v for k, v in encoder.pop(mod).items() if k != "_target_"}, f"{where} (encoder.{mod})")
        check_plain(encoder, f"{where} (encoder)")
        encoder = dict(meta["encoder"])
        for mod in ("text", "vision"):
            at = f"{where} (encoder.{mod})"
            try:  # a `family` names one of vlrb's own classes, of this modality
                enc_cls = encoder_class(encoder[mod], mod, where=at, trust_code=trust_code)
            except (KeyError, ValueError) as e:
                raise ArtifactError(f"{at}: {e.args[0] if e.args else e}") from None
            check_params(enc_cls, encoder_settings(encoder[mod]), where=f"{at} ({enc_cls.__qualname__})")
        f = path / SCALER_FILE if (path / SCALER_FILE).exists() or not (path / LEGACY_SCALER_NPZ).exists() \
            else path / LEGACY_SCALER_NPZ
        if not f.exists():
            raise ArtifactError(f"{path}: no {SCALER_FILE} (the feature scaler fitted at training time)")
        a = load_arrays(f, expect={"mean": (-1,), "scale": (-1,)})
        if len(a["mean"]) != len(a["scale"]) or not (a["scale"] > 0).all():
            raise ArtifactError(f"{f}: the scaler needs one mean and one positive scale per feature")
        return cls(encoder=encoder, fusion=fusion, text_weight=weight,
                   scaler=FeatureScaler.from_arrays(a["mean"], a["scale"]), source=str(where), trust_code=trust_code)
