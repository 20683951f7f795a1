"""K-means router (docs/routers.md#feature-level-routers) — a prototype router, not a clustering: one
centroid per VLM.

The prototype of model k is the mean of the (L2-normalised) features of the training samples it answers
correctly — all samples when it answers none — itself L2-normalised. A query goes to the model whose
prototype is most cosine-similar. Upstream stores a `lambda_cost=0.0` it never reads; it is left out.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from vlrb.data.benchmark import Requests, Split
from vlrb.routers.base import Router, load_arrays, meta_k, restore_common, router_from_meta, save_arrays
from vlrb.routing.vectors import l2_normalize


class KMeansRouter(Router):
    """argmax_k cosine(x, prototype_k); scores are the cosines."""

    name = "kmeans"
    inputs = ("features",)

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = bool(normalize)

    def fit(self, train: Split, dev: Split | None = None) -> "KMeansRouter":
        t0 = time.perf_counter()
        self._remember_models(train)
        Y = np.asarray(train.Y) > 0
        keep = self._training_rows(train)
        X, Y = self._features(train)[keep], Y[keep].astype(np.float32)
        if self.normalize:
            X = l2_normalize(X)
        counts = Y.sum(0)
        sums = Y.T @ X  # (K, D): every model's centroid in one product
        # a model that answers nothing gets the centroid of all samples (upstream's fallback)
        sums[counts == 0] = X.sum(0)
        counts = np.where(counts == 0, len(X), counts)
        self.prototypes_ = l2_normalize(sums / counts[:, None]).astype(np.float32)
        self.fit_info = {"n_train": int(keep.sum()), "n_dropped_no_correct": int((~keep).sum()),
                         "fit_seconds": time.perf_counter() - t0}
        return self

    def predict_scores(self, split: Requests) -> np.ndarray:
        self._check_inputs(split)
        X = self._features(split)
        # cosine = (x·p)/‖x‖ for unit prototypes: scale the (n, K) product, not the (n, D) features
        norm = np.sqrt(np.einsum("ij,ij->i", X, X))
        return (X @ self.prototypes_.T) / np.maximum(norm, 1e-12)[:, None]

    def save(self, path: Path) -> None:
        save_arrays(self, path, {"prototypes": self.prototypes_})

    @classmethod
    def load(cls, path: Path) -> "KMeansRouter":
        meta, a = load_arrays(path, expect={"prototypes": (meta_k(path), -1)})
        router = router_from_meta(meta, cls)
        restore_common(router, meta)
        router.prototypes_ = a["prototypes"]
        return router
