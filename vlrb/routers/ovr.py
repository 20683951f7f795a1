"""One-vs-rest router (docs/routers.md#feature-level-routers): one logistic model per VLM predicts
P(correct_k | x); route to the argmax.

The K classifiers are scikit-learn LogisticRegression fits (upstream settings); once fitted, only their
weights are kept, so routing is a single (n, D)·(D, K) product and the saved state is plain arrays.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from vlrb.data.benchmark import Requests, Split
from vlrb.routers.base import (STATE_FILE, Router, load_arrays, meta_k, require, restore_common,
                               router_from_meta, save_arrays)


class OVRRouter(Router):
    """K independent `LogisticRegression(max_iter=1000, class_weight='balanced')` on Y[:, k].

    A model that is never correct on train scores 0 (as upstream); one that is always correct scores 1.
    """

    name = "ovr"
    inputs = ("features",)

    def __init__(self, C: float = 1.0, max_iter: int = 1000, class_weight: str | None = "balanced") -> None:
        super().__init__()
        self.C, self.max_iter, self.class_weight = float(C), int(max_iter), class_weight

    def fit(self, train: Split, dev: Split | None = None) -> "OVRRouter":
        from sklearn.exceptions import ConvergenceWarning  # imported on use: keeps `import vlrb.routers` light
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        t0 = time.perf_counter()
        self._remember_models(train)
        Y = np.asarray(train.Y) > 0
        keep = self._training_rows(train)
        X, Y = self._features(train)[keep], Y[keep]
        K, D = Y.shape[1], X.shape[1]
        W = np.zeros((K, D), dtype=np.float32)
        b = np.zeros(K, dtype=np.float32)
        const = np.full(K, np.nan, dtype=np.float32)  # NaN: a fitted model; else the constant score
        not_converged = 0
        for k in range(K):  # a loop over the K models, not over samples
            rate = Y[:, k].mean()
            if rate in (0.0, 1.0):
                const[k] = rate
                continue
            clf = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight)
            # one BLAS thread: lbfgs makes hundreds of small matrix-vector products, which threads only slow down
            # (30x on a busy 2-core machine), and the fit no longer depends on the machine's core count
            with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
                warnings.simplefilter("always", ConvergenceWarning)
                clf.fit(X, Y[:, k])
            not_converged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
            W[k], b[k] = clf.coef_[0], clf.intercept_[0]
        self._set_state(W, b, const)
        self.fit_info = {"n_train": int(keep.sum()), "n_dropped_no_correct": int((~keep).sum()),
                         "constant_models": int(np.isfinite(const).sum()), "not_converged": not_converged,
                         "fit_seconds": time.perf_counter() - t0}
        return self

    def _set_state(self, W: np.ndarray, b: np.ndarray, const: np.ndarray) -> None:
        self.coef_, self.intercept_, self.constant_ = W, b, const
        self._fixed = np.isfinite(const)

    def predict_scores(self, split: Requests) -> np.ndarray:
        self._check_inputs(split)
        z = self._features(split) @ self.coef_.T + self.intercept_
        p = 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow warnings
        p[:, self._fixed] = self.constant_[self._fixed]
        return p

    def save(self, path: Path) -> None:
        """The constant models' probabilities beside a mask of which models are constant (NaN marks them in memory,
        and in folders saved before safetensors: a saved array never holds NaN now)."""
        save_arrays(self, path, {"coef": self.coef_, "intercept": self.intercept_,
                                 "constant": np.nan_to_num(self.constant_, nan=0.0), "fixed": self._fixed.astype(np.int8)})

    @classmethod
    def load(cls, path: Path) -> "OVRRouter":
        k = meta_k(path)
        meta, a = load_arrays(path, expect={"coef": (k, -1), "intercept": (k,), "constant": (k,)},
                              nan_ok=("constant",) if not (Path(path) / STATE_FILE).exists() else ())
        router = router_from_meta(meta, cls)
        restore_common(router, meta)
        const = a["constant"].astype(np.float64)
        if "fixed" in a:
            require(a["fixed"].shape == (k,), meta, "'fixed' must hold one flag per model")
            const[a["fixed"] == 0] = np.nan
        router._set_state(a["coef"], a["intercept"], const)
        return router
