"""Training-free baselines (docs/routers.md#training-free-baselines) behind the common Router interface.

Upstream fitted StrongestGlobal, CheapestGlobal and StrongestPerDataset on the *test* split itself. Here
they fit on `train` by default (`fit_on=train`); `fit_on=test` reproduces the upstream numbers and is
labelled "(fit on test)" in every table. The caller passes the split named by `router.fit_on` to `fit`.
Oracle and Random read nothing at fit time, so `fit_on` does not change them.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from vlrb.data.benchmark import Requests, Split
from vlrb.routers.base import Router
from vlrb.routing.metrics import _group_means
from vlrb.routing.soft_labels import hard_labels, one_hot

FIT_ON = ("train", "test")


class Baseline(Router):
    """A training-free router; `fit_on` says which split `fit` should receive (train by default)."""

    fits_data: ClassVar[bool] = True  # False: fitting reads nothing, so fit_on is irrelevant
    saves_state: ClassVar[bool] = False

    def __init__(self, fit_on: str = "train") -> None:
        super().__init__()
        if fit_on not in FIT_ON:
            raise ValueError(f"fit_on must be one of {FIT_ON}, got {fit_on!r}")
        self.fit_on = fit_on

    @property
    def label(self) -> str:
        return f"{self.name} (fit on test)" if self.fit_on == "test" and self.fits_data else self.name

    def fit(self, train: Split, dev: Split | None = None) -> "Baseline":
        if self.fits_data and len(train) == 0:
            raise ValueError(f"{self.label}: cannot fit on the empty split {train.name!r}")
        self._remember_models(train)
        self._fit(train)
        return self

    def _fit(self, train: Split) -> None:
        pass


class Oracle(Baseline):
    """The cheapest correct model of each sample (argmin C among Y=1; argmin C when none is correct).

    Reads the routed split's own labels: an upper bound, not a deployable router.
    """

    name = "oracle"
    inputs = ("labels",)
    fits_data = False

    def predict_scores(self, split: Requests) -> np.ndarray:
        return one_hot(hard_labels(split.Y, split.C), split.Y.shape[1])

    def route_among(self, split: Requests, allowed) -> np.ndarray:
        allowed = np.asarray(allowed, dtype=bool)
        pos = np.flatnonzero(allowed)
        return pos[hard_labels(split.Y[:, pos], split.C[:, pos])] if not allowed.all() else self.route(split)


class StrongestGlobal(Baseline):
    """One fixed model: the most accurate on the fit split (ties → lowest index, as np.argmax upstream)."""

    name = "strongest"

    def _fit(self, train: Split) -> None:
        self.model_accuracy_ = np.asarray(train.Y, dtype=np.float64).mean(0)

    def predict_scores(self, split: Requests) -> np.ndarray:
        return np.broadcast_to(self.model_accuracy_, (len(split), self.n_models))


class CheapestGlobal(Baseline):
    """One fixed model: the lowest mean cost on the fit split."""

    name = "cheapest"

    def _fit(self, train: Split) -> None:
        self.model_cost_ = np.asarray(train.C, dtype=np.float64).mean(0)

    def predict_scores(self, split: Requests) -> np.ndarray:
        return np.broadcast_to(-self.model_cost_, (len(split), self.n_models))


class StrongestPerDataset(Baseline):
    """Per dataset, the most accurate model on the fit split.

    A dataset absent from the fit split gets the globally strongest model (upstream took "the first
    mapping"; with fit_on=test no dataset is ever unseen, so the upstream numbers are unchanged).
    """

    name = "per_dataset"

    def _fit(self, train: Split) -> None:
        Y = np.asarray(train.Y, dtype=np.float64)
        self.datasets_, _, self.dataset_accuracy_ = _group_means(np.asarray(train.datasets), Y)
        self.model_accuracy_ = Y.mean(0)

    def predict_scores(self, split: Requests) -> np.ndarray:
        ds = np.asarray(split.datasets).astype(str)
        pos = np.searchsorted(self.datasets_, ds)
        pos_c = np.minimum(pos, len(self.datasets_) - 1)
        seen = self.datasets_[pos_c] == ds
        return np.where(seen[:, None], self.dataset_accuracy_[pos_c], self.model_accuracy_[None, :])

    def predict_correctness(self, split: Requests) -> np.ndarray:
        """(n, K) P(right): the same table, kept off 0 and 1 (a model can join it: vlrb.routers.onboard)."""
        return np.clip(self.predict_scores(split), 0.01, 0.99)


class RandomRouter(Baseline):
    """A uniformly random model per sample: `np.random.RandomState(seed).randint(0, K, N)` as upstream."""

    name = "random"
    fits_data = False

    def __init__(self, fit_on: str = "train", seed: int = 42) -> None:
        super().__init__(fit_on)
        self.seed = int(seed)

    def predict_scores(self, split: Requests) -> np.ndarray:
        k = self.n_models
        return one_hot(np.random.RandomState(self.seed).randint(0, k, len(split)), k)

    def route_among(self, split: Requests, allowed) -> np.ndarray:
        pos = np.flatnonzero(np.asarray(allowed, dtype=bool))
        return pos[np.random.RandomState(self.seed).randint(0, len(pos), len(split))]
