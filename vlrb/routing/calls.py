"""`Calls`: what a cascade did for each request: the models it called, in order, and so the answer it returned (the
last call's) and what it paid (every call's). A one-shot router's choice is one call.

Metrics take either form (`vlrb.routing.metrics`): accuracy is that of the returned answer, cost the sum of the
calls (docs/method.md#cascades).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

CHAIN_SEP = ">"  # "m1>m3": the calls of one request, as predictions.parquet and the server's headers name them


@dataclass(frozen=True)
class Calls:
    """order: (n, L) int64 model indices in call order, -1 after a request's last call (every request calls at least
    once; no model twice)."""

    order: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "order", np.atleast_2d(np.asarray(self.order, dtype=np.int64)))

    @classmethod
    def single(cls, choices) -> "Calls":
        """One call per request: a one-shot router's choices."""
        return cls(np.asarray(choices, dtype=np.int64).reshape(-1, 1))

    def __len__(self) -> int:
        return len(self.order)

    @property
    def n_calls(self) -> np.ndarray:
        return (self.order >= 0).sum(1)

    @property
    def final(self) -> np.ndarray:
        """(n,) the model whose answer each request returned: its last call."""
        return self.order[np.arange(len(self.order)), np.maximum(self.n_calls - 1, 0)]

    def called(self, k: int) -> np.ndarray:
        """(n, k) bool: which models each request called."""
        mask = np.zeros((len(self.order), k), dtype=bool)
        rows, steps = np.nonzero(self.order >= 0)
        mask[rows, self.order[rows, steps]] = True
        return mask

    def cost(self, C: np.ndarray) -> np.ndarray:
        """(n,) what each request paid: the sum of its calls' costs."""
        return (np.asarray(C, dtype=np.float64) * self.called(np.shape(C)[1])).sum(1)

    def take(self, rows) -> "Calls":
        return Calls(self.order[np.asarray(rows)])

    def validate(self, n: int, k: int, what: str = "router") -> "Calls":
        """These calls, checked against n requests and k models; a clear error otherwise."""
        o = self.order
        if o.ndim != 2 or o.shape[0] != n or o.shape[1] < 1:
            raise ValueError(f"{what} returned calls of shape {o.shape}; expected ({n}, steps >= 1)")
        if n == 0:
            return self
        if (o[:, 0] < 0).any():
            raise ValueError(f"{what}: {int((o[:, 0] < 0).sum())} request(s) called no model")
        if o.min() < -1 or o.max() >= k:
            raise IndexError(f"{what} called model index {int(o[(o < -1) | (o >= k)][0])}; valid: 0..{k - 1}")
        after_end = np.cumsum(o < 0, axis=1) > 0
        if (after_end & (o >= 0)).any():
            raise ValueError(f"{what}: a call after a request's last call (-1 must only pad the end of a row)")
        if (self.called(k).sum(1) != self.n_calls).any():
            raise ValueError(f"{what}: a request called the same model twice")
        return self

    def labels(self, models: Sequence[str]) -> list[str]:
        """'m1>m3' per request."""
        names = np.asarray(list(models), dtype=object)
        return [CHAIN_SEP.join(names[row[row >= 0]]) for row in self.order]

    @classmethod
    def from_labels(cls, labels: Sequence[str], models: Sequence[str]) -> "Calls":
        """Inverse of `labels`; an unknown model id is a KeyError naming it."""
        index = {m: j for j, m in enumerate(models)}
        chains = [str(s).split(CHAIN_SEP) for s in labels]
        order = np.full((len(chains), max((len(c) for c in chains), default=1)), -1, dtype=np.int64)
        for i, chain in enumerate(chains):
            for t, m in enumerate(chain):
                if m not in index:
                    raise KeyError(f"model {m!r} of the calls {labels[i]!r} is not one of the benchmark's models")
                order[i, t] = index[m]
        return cls(order)


def as_calls(choices) -> Calls:
    """Calls as they are; a one-shot router's (n,) choices as one call each."""
    return choices if isinstance(choices, Calls) else Calls.single(choices)
