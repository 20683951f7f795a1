"""Nearest-neighbour routers on frozen features (docs/routers.md#feature-level-routers): KNN and PRkNN.

Both drop the training samples that no model answers (upstream does). Upstream searched with
scikit-learn's brute-force cosine neighbours; `CosineIndex` computes the same distances
(1 − cosine, clipped to [0, 2], as sklearn's `cosine_distances`) but normalises the training matrix once
at fit time — sklearn renormalises all of it on every query, which made a 16-query batch cost ~0.5 s at
the paper's scale. The KNN vote then follows `KNeighborsClassifier.predict_proba` (tests check both
against scikit-learn). Other metrics fall back to sklearn's `NearestNeighbors`.

* `knn`   — a KNeighborsClassifier on the cheapest-correct label (implicitly λ = ∞).
* `prknn` — RouterEval-style: the neighbours vote with their full correctness rows; a model's Copeland
  score counts the pairwise duels it wins, a tie in correctness going to the cheaper model.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from vlrb.data.benchmark import Requests, Split
from vlrb.routers.base import (Router, load_arrays, meta_k, require, restore_common,
                               router_from_meta, save_arrays)
from vlrb.routing.soft_labels import hard_labels
from vlrb.routing.vectors import l2_normalize

WEIGHTS = ("distance", "uniform")
_PRKNN_EPS = 1e-6  # w = 1 / (1e-6 + d), upstream's guard against a zero distance


class CosineIndex:
    """Exact brute-force k nearest neighbours by cosine distance over a fixed float32 matrix."""

    def __init__(self, X: np.ndarray, k: int, chunk: int = 1024, normalised: bool = False) -> None:
        X = np.ascontiguousarray(X, dtype=np.float32)
        self.matrix = X if normalised else l2_normalize(X)  # normalised once, not per query (and what `save` stores)
        self.k, self.chunk = min(int(k), len(X)), chunk

    def kneighbors(self, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dist, idx), each (n, k), nearest first; chunks of queries bound the (chunk, n_train) block."""
        Qn = l2_normalize(np.ascontiguousarray(Q, dtype=np.float32))
        n, k = len(Qn), self.k
        dist, idx = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
        for s in range(0, n, self.chunk):
            d = Qn[s:s + self.chunk] @ self.matrix.T
            d *= -1
            d += 1
            np.clip(d, 0, 2, out=d)  # sklearn's cosine_distances clips rounding noise the same way
            part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < d.shape[1] else np.broadcast_to(
                np.arange(d.shape[1]), d.shape).copy()
            dp = np.take_along_axis(d, part, 1)
            order = np.argsort(dp, axis=1, kind="stable")
            idx[s:s + self.chunk] = np.take_along_axis(part, order, 1)
            dist[s:s + self.chunk] = np.take_along_axis(dp, order, 1)
        return dist, idx


def neighbour_index(X: np.ndarray, k: int, metric: str, normalised: bool = False):
    """Anything with `kneighbors(Q) -> (dist, idx)`: CosineIndex for cosine, else sklearn brute force."""
    if metric == "cosine":
        return CosineIndex(X, k, normalised=normalised)
    return SklearnIndex(X, k, metric)


class SklearnIndex:
    """sklearn's brute-force NearestNeighbors for any other metric, holding its training matrix."""

    def __init__(self, X: np.ndarray, k: int, metric: str) -> None:
        from sklearn.neighbors import NearestNeighbors  # imported on use: keeps `import vlrb.routers` light

        self.matrix = np.ascontiguousarray(X, dtype=np.float32)
        self.nn = NearestNeighbors(n_neighbors=min(int(k), len(X)), metric=metric, algorithm="brute").fit(self.matrix)

    def kneighbors(self, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.nn.kneighbors(np.ascontiguousarray(Q, dtype=np.float32))


def distance_weights(dist: np.ndarray) -> np.ndarray:
    """sklearn's weights='distance': 1/d, except that a query at distance 0 from some training points
    gives those points weight 1 and the others 0."""
    with np.errstate(divide="ignore"):
        w = 1.0 / dist.astype(np.float64)
    inf = np.isinf(w)
    rows = inf.any(1)
    w[rows] = inf[rows]
    return w


def _check_weights(weights: str) -> str:
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    return weights


def _check_scaler_fit(v: str) -> str:
    from vlrb.features.fusion import SCALER_FITS

    if v not in SCALER_FITS:
        raise ValueError(f"scaler_fit must be one of {SCALER_FITS}; got {v!r}")
    return v


class KNNRouter(Router):
    """Distance-weighted k-NN vote on the cheapest correct model; scores = class probabilities (K columns)."""

    name = "knn"
    inputs = ("features",)

    def __init__(self, k: int = 5, weights: str = "distance", metric: str = "cosine", scaler_fit: str = "all") -> None:
        super().__init__()
        self.k, self.weights, self.metric = int(k), _check_weights(weights), metric
        self.scaler_fit = _check_scaler_fit(scaler_fit)

    def fit(self, train: Split, dev: Split | None = None) -> "KNNRouter":
        t0 = time.perf_counter()
        self._remember_models(train)
        keep = self._training_rows(train)
        self._build(self._features(train)[keep], hard_labels(train.Y[keep], train.C[keep]))
        self.fit_info = {"n_train": int(keep.sum()), "n_dropped_no_correct": int((~keep).sum()),
                         "fit_seconds": time.perf_counter() - t0}
        return self

    def _build(self, X: np.ndarray, labels: np.ndarray, normalised: bool = False) -> None:
        self.labels_ = labels.astype(np.int64)
        # fewer training rows than k (tiny benchmarks): use them all rather than fail at predict time
        self.index_ = neighbour_index(X, self.k, self.metric, normalised)

    def predict_scores(self, split: Requests) -> np.ndarray:
        """KNeighborsClassifier.predict_proba over K columns (a model never the cheapest correct one gets 0)."""
        self._check_inputs(split)
        dist, idx = self.index_.kneighbors(self._features(split))
        w = distance_weights(dist) if self.weights == "distance" else np.ones(dist.shape)
        votes = self.labels_[idx]  # (n, k) model index of each neighbour
        proba = np.zeros((len(idx), self.n_models))
        for j in range(idx.shape[1]):  # k (= 5) vectorised passes, one per neighbour rank
            np.add.at(proba, (np.arange(len(idx)), votes[:, j]), w[:, j])
        total = proba.sum(1, keepdims=True)
        return (proba / np.where(total == 0, 1.0, total)).astype(np.float32)

    def save(self, path: Path) -> None:
        save_arrays(self, path, {"X": self.index_.matrix, "labels": self.labels_})

    @classmethod
    def load(cls, path: Path) -> "KNNRouter":
        meta, a = load_arrays(path, expect={"X": (-1, -1), "labels": (-1,)})
        router = router_from_meta(meta, cls)
        restore_common(router, meta)
        k = router.n_models
        require(len(a["labels"]) == len(a["X"]) and ((0 <= a["labels"]) & (a["labels"] < k)).all(), meta,
                f"the k-NN labels must be one model index in [0, {k}) per training row")
        router._build(a["X"], a["labels"], normalised=router.metric == "cosine")
        return router


def copeland_wins(Y: np.ndarray, C: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """(n, K) float32: for each sample, how many models b each model m beats.

    m beats b when Y_m > Y_b, or Y_m = Y_b and C_m < C_b (the cost tie-break); m never beats itself.
    """
    Y = np.asarray(Y, dtype=np.int8)
    C = np.asarray(C, dtype=np.float64)
    out = np.empty(Y.shape, dtype=np.float32)
    for s in range(0, len(Y), chunk):  # bounded (chunk, K, K) temporaries
        y, c = Y[s:s + chunk], C[s:s + chunk]
        ym, yb = y[:, :, None], y[:, None, :]
        beats = (ym > yb) | ((ym == yb) & (c[:, :, None] < c[:, None, :]))
        out[s:s + chunk] = beats.sum(2)
    return out


def copeland_scores(weights: np.ndarray, Y_nb: np.ndarray, C_nb: np.ndarray) -> np.ndarray:
    """Reference Copeland score over explicit neighbours (docs/routers.md#feature-level-routers), vectorised
    over queries.

    weights (n, k), Y_nb/C_nb (n, k, K):  score_m = Σ_{b≠m} Σ_i w_i · 1[Y_im > Y_ib or (Y_im = Y_ib and C_im < C_ib)].
    The router uses the equivalent Σ_i w_i · wins_i(m) with wins precomputed per training sample.
    """
    n, k, K = Y_nb.shape
    wins = copeland_wins(Y_nb.reshape(n * k, K), C_nb.reshape(n * k, K)).reshape(n, k, K)
    return np.einsum("nk,nkm->nm", np.asarray(weights, dtype=np.float64), wins.astype(np.float64))


class PRkNNRouter(Router):
    """Copeland vote of the k nearest training samples' correctness rows, cheaper model winning ties."""

    name = "prknn"
    inputs = ("features",)

    def __init__(self, k: int = 7, weights: str = "distance", metric: str = "cosine", scaler_fit: str = "all") -> None:
        super().__init__()
        self.k, self.weights, self.metric = int(k), _check_weights(weights), metric
        self.scaler_fit = _check_scaler_fit(scaler_fit)

    def fit(self, train: Split, dev: Split | None = None) -> "PRkNNRouter":
        t0 = time.perf_counter()
        self._remember_models(train)
        keep = self._training_rows(train)
        self._build(self._features(train)[keep], np.asarray(train.Y)[keep], np.asarray(train.C)[keep])
        self.fit_info = {"n_train": int(keep.sum()), "n_dropped_no_correct": int((~keep).sum()),
                         "fit_seconds": time.perf_counter() - t0}
        return self

    def _build(self, X: np.ndarray, Y: np.ndarray, C: np.ndarray, normalised: bool = False) -> None:
        self.Y_, self.C_ = Y.astype(np.int8), C.astype(np.float32)
        # Σ_{b≠m} Σ_i w_i·beats_i(m, b) = Σ_i w_i·wins_i(m): the duel counts of each stored sample do not
        # depend on the query, so they are computed once here and prediction is one (n, k)·(n, k, K) product
        self.wins_ = copeland_wins(self.Y_, self.C_)
        self.index_ = neighbour_index(X, self.k, self.metric, normalised)

    def predict_scores(self, split: Requests) -> np.ndarray:
        self._check_inputs(split)
        dist, idx = self.index_.kneighbors(self._features(split))
        w = 1.0 / (_PRKNN_EPS + dist) if self.weights == "distance" else np.ones_like(dist)
        return np.einsum("nk,nkm->nm", w, self.wins_[idx].astype(np.float64))

    def save(self, path: Path) -> None:
        save_arrays(self, path, {"X": self.index_.matrix, "Y": self.Y_, "C": self.C_})

    @classmethod
    def load(cls, path: Path) -> "PRkNNRouter":
        meta, a = load_arrays(path, expect={"X": (-1, -1), "Y": (-1, meta_k(path)), "C": (-1, meta_k(path))})
        router = router_from_meta(meta, cls)
        restore_common(router, meta)
        require(len(a["Y"]) == len(a["C"]) == len(a["X"]), meta, "X, Y and C must have one row per training sample")
        router._build(a["X"], a["Y"], a["C"], normalised=router.metric == "cosine")
        return router
