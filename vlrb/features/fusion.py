"""Fusion of text and image embeddings into router features (docs/method.md#features-and-fusion; upstream
routers/utils/fusion.py), and the train-only scaler.

| method             | result                                             | dim     |
|--------------------|----------------------------------------------------|---------|
| concat             | [t, v]                                             | Dt+Dv   |
| normalize_concat   | [t/‖t‖, v/‖v‖] (a zero norm is replaced by 1)      | Dt+Dv   |  (default)
| average            | (t[:, :d] + v[:, :d]) / 2, d = min(Dt, Dv)         | d       |
| weighted_average   | w·t[:, :d] + (1−w)·v[:, :d], w = text_weight (0.5) | d       |
| only_text          | t                                                  | Dt      |
| only_image         | v                                                  | Dv      |
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq

from vlrb.features.sections import as_dict, encoder_name
from vlrb.routing.vectors import l2_normalize

DEFAULT_FUSION = "normalize_concat"


def _trunc(t, v):
    d = min(t.shape[1], v.shape[1])
    return t[:, :d], v[:, :d]


FUSIONS: dict[str, Callable[..., np.ndarray]] = {
    "concat": lambda t, v, w: np.concatenate([t, v], axis=1),
    "normalize_concat": lambda t, v, w: np.concatenate([l2_normalize(t), l2_normalize(v)], axis=1),
    "average": lambda t, v, w: (lambda a, b: (a + b) / 2)(*_trunc(t, v)),
    "weighted_average": lambda t, v, w: (lambda a, b: w * a + (1 - w) * b)(*_trunc(t, v)),
    "only_text": lambda t, v, w: t,
    "only_image": lambda t, v, w: v,
}


def fuse(text: np.ndarray | None, image: np.ndarray | None, method: str = DEFAULT_FUSION,
         text_weight: float = 0.5) -> np.ndarray:
    """(N, Dt) and (N, Dv) -> (N, D) float32 by one of FUSIONS."""
    if method not in FUSIONS:
        raise ValueError(f"unknown fusion {method!r}; expected one of {sorted(FUSIONS)}")
    if method != "only_image" and text is None:
        raise ValueError(f"fusion {method!r} needs text embeddings")
    if method != "only_text" and image is None:
        raise ValueError(f"fusion {method!r} needs image embeddings")
    t = None if text is None else np.asarray(text, np.float32)
    v = None if image is None else np.asarray(image, np.float32)
    if t is not None and v is not None and len(t) != len(v):
        raise ValueError(f"fusion: {len(t)} text rows but {len(v)} image rows")
    if not 0.0 <= float(text_weight) <= 1.0:
        raise ValueError(f"text_weight must be in [0, 1]; got {text_weight}")
    return np.ascontiguousarray(FUSIONS[method](t, v, float(text_weight)), dtype=np.float32)


def embeddings_path(root: str | Path, modality: str, name: str) -> Path:
    return Path(root) / "EMBEDDINGS" / modality / f"{name}.parquet"


class StaleFeaturesError(FileNotFoundError):
    """Stored embeddings were extracted from other samples (the prompts or images changed since): the
    features for the current samples do not exist yet. A FileNotFoundError, so callers that extract
    missing features re-extract stale ones too."""


def check_fresh(path: str | Path, bench, modality: str) -> None:
    """Raise StaleFeaturesError unless the embeddings at `path` were extracted from bench's current samples.

    vlrb's extraction records a hash of the sample ids and of what it encoded (prompt or image reference)
    in `<name>.meta.json`; embeddings without that file (written by other tools) can only be checked by
    their sample ids, which `load_embeddings` does.
    """
    from vlrb.features.extract import samples_hash

    path = Path(path)
    meta_path = path.with_suffix(".meta.json")
    if not path.exists() or not meta_path.exists():
        return
    try:
        stored = json.loads(meta_path.read_text()).get("samples_hash")
    except (ValueError, AttributeError):  # a damaged sidecar cannot vouch for the file
        stored = "unreadable"
    if stored is not None and stored != samples_hash(bench, modality):
        raise StaleFeaturesError(
            f"{path} was extracted from other {modality} inputs than the benchmark now holds (samples_hash in "
            f"{meta_path.name} differs: the benchmark was rebuilt); re-run `python build_data.py stage=features "
            f"encoder=...` to re-extract")


def load_embeddings(path: str | Path, sample_ids) -> np.ndarray:
    """Rows of an embeddings parquet, reordered to `sample_ids`; a clear error lists ids that are absent."""
    from vlrb.features.shards import embeddings_to_numpy

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `python build_data.py stage=features encoder=...` first")
    table = pq.read_table(path, columns=["sample_id", "embedding"])
    have = table.column("sample_id").to_pylist()
    pos = {s: i for i, s in enumerate(have)}
    want = [str(s) for s in sample_ids]
    missing = [s for s in want if s not in pos]
    if missing:
        raise KeyError(f"{path}: {len(missing)} of {len(want)} benchmark samples have no embedding (e.g. "
                       f"{missing[:10]}); re-run feature extraction for this benchmark")
    X = embeddings_to_numpy(table.column("embedding"))
    idx = np.fromiter((pos[s] for s in want), dtype=np.int64, count=len(want))
    return X[idx]


def load_features(bench, encoder_cfg: Any, fusion: str | None = None, *, root: str | Path | None = None,
                  text_weight: float | None = None) -> np.ndarray:
    """Fused (N, D) float32 features aligned to the benchmark rows.

    fusion / text_weight default to the encoder config's `fusion` and `text_weight` (normalize_concat, 0.5).
    Only the parquet files the fusion needs are read. Embeddings extracted from other prompts or images
    than the benchmark's current ones raise StaleFeaturesError (see check_fresh).
    """
    cfg = as_dict(encoder_cfg)
    method = fusion or cfg.get("fusion") or DEFAULT_FUSION
    w = float(text_weight if text_weight is not None else cfg.get("text_weight", 0.5))
    root = Path(root) if root is not None else (Path(bench.root) if getattr(bench, "root", None) else None)
    if root is None:
        raise ValueError("load_features: the benchmark has no root folder; pass root=")
    ids = bench.sample_ids
    t = v = None
    if method != "only_image":
        path = embeddings_path(root, "text", encoder_name(cfg, "text"))
        check_fresh(path, bench, "text")
        t = load_embeddings(path, ids)
    if method != "only_text":
        path = embeddings_path(root, "vision", encoder_name(cfg, "vision"))
        check_fresh(path, bench, "vision")
        v = load_embeddings(path, ids)
    return fuse(t, v, method, w)


class FeatureScaler:
    """sklearn StandardScaler fitted on the training rows only (all feature routers use it, as upstream)."""

    def __init__(self):
        from sklearn.preprocessing import StandardScaler

        self.scaler = StandardScaler()

    def fit(self, X_train: np.ndarray) -> "FeatureScaler":
        self.scaler.fit(np.asarray(X_train, np.float32))
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """(X - mean) / scale in float32: StandardScaler.transform's own arithmetic, without its input checks (1 ms
        a call, a tenth of a served request's routing)."""
        sc = self.scaler
        X = np.array(X, dtype=np.float32)  # a copy, scaled in place
        if X.ndim != 2 or X.shape[1] != len(sc.mean_):
            raise ValueError(f"features of shape {X.shape}; the scaler was fitted on {len(sc.mean_)} features")
        X -= sc.mean_.astype(np.float32)
        X /= sc.scale_.astype(np.float32)
        return X

    def fit_transform(self, X_train: np.ndarray) -> np.ndarray:
        return self.fit(X_train).transform(X_train)

    @classmethod
    def from_arrays(cls, mean: np.ndarray, scale: np.ndarray) -> "FeatureScaler":
        """A fitted scaler from its saved mean and scale (a trained router's scaler.npz)."""
        sc = cls()
        sc.scaler.mean_, sc.scaler.scale_ = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        sc.scaler.var_ = sc.scaler.scale_ ** 2
        sc.scaler.n_features_in_ = len(sc.scaler.mean_)
        return sc


SCALER_FITS = ("all", "with_correct")


def fit_transform_splits(X: np.ndarray, bench, splits=("train", "dev", "test"), *, return_scaler: bool = False,
                         scaler_fit: str = "all"):
    """Scale full-benchmark features X (N, D): fit on bench's train rows, transform every split.

    scaler_fit: "all" fits on every train row; "with_correct" only on the train rows some model answers
    correctly (the rows the original KNN/PRkNN code kept before fitting its scaler).
    Returns {split: (n_split, D) float32} (rows in the split's row order), and the fitted scaler if asked."""
    X = np.asarray(X, np.float32)
    if len(X) != bench.n_samples:
        raise ValueError(f"{len(X)} feature rows for a benchmark of {bench.n_samples} samples")
    if scaler_fit not in SCALER_FITS:
        raise ValueError(f"scaler_fit must be one of {SCALER_FITS}; got {scaler_fit!r}")
    train = bench.splits["train"]
    if scaler_fit == "with_correct":
        train = train[np.asarray(bench.Y)[train].any(1)]
    if len(train) == 0:
        raise ValueError(f"no training rows to fit the feature scaler on (scaler_fit={scaler_fit})")
    sc = FeatureScaler().fit(X[train])
    out = {}
    for s in splits:
        idx = np.arange(bench.n_samples) if s == "all" else bench.splits[s]
        out[s] = sc.transform(X[idx])
    return (out, sc) if return_scaler else out
