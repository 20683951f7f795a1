"""Train/dev/test splits: deterministic 70/10/20 over sorted ids (seed 42), or stratified by dataset."""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def _cut(ids: list[str], seed: int, fractions) -> dict[str, str]:
    ids = sorted(ids)  # sorted, not discovery order: the same inputs always give the same split (docs/method.md#splits)
    rng = np.random.RandomState(seed)
    order = np.arange(len(ids))
    rng.shuffle(order)
    n = len(ids)
    n_train, n_dev = int(fractions[0] * n), int(fractions[1] * n)
    out = {}
    for pos, i in enumerate(order):
        out[ids[i]] = "train" if pos < n_train else "dev" if pos < n_train + n_dev else "test"
    return out


def random_split(sample_ids: Sequence[str], seed: int = 42, fractions=DEFAULT_FRACTIONS) -> dict[str, str]:
    """The upstream rule (np.random.seed(42) shuffle, int(0.7N) train, int(0.1N) dev, rest test)."""
    _check(fractions)
    return _cut(list(sample_ids), seed, fractions)


def stratified_split(sample_ids: Sequence[str], datasets: Sequence[str], seed: int = 42,
                     fractions=DEFAULT_FRACTIONS) -> dict[str, str]:
    """The same rule applied within each dataset, so every dataset keeps the 70/10/20 proportions."""
    _check(fractions)
    by_ds: dict[str, list[str]] = {}
    for s, d in zip(sample_ids, datasets):
        by_ds.setdefault(d, []).append(s)
    out: dict[str, str] = {}
    for d in sorted(by_ds):
        out.update(_cut(by_ds[d], seed, fractions))
    return out


def _check(fractions) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
