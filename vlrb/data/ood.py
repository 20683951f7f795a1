"""Out-of-distribution protocols: hold one dataset (leave-one-dataset-out, `lodo`) or one task group
(leave-one-group-out, `logo`) out of training and test on it alone.

    python train.py router=vlrb_cal ood=lodo ood.holdout=MMStar
    python train.py experiment=lodo          # every dataset of the demo in turn

The held-out part becomes the test split, all of its rows (its train and dev rows included); nothing of it is
fitted on or selected on. The rest keeps its train and dev rows in their roles, and its test rows join train (they
are not the test any more). Cost bounds stay the benchmark's, so scores compare with the in-distribution ones.
Routers meet a dataset (or group) they never saw: a per-dataset router falls back to what it knows overall.
"""
from __future__ import annotations

import numpy as np

from vlrb.data.benchmark import Benchmark
from vlrb.errors import ConfigError

PROTOCOLS = {"lodo": "dataset", "logo": "group"}  # protocol -> the meta column it holds out by


def hold_out(bench: Benchmark, protocol: str, holdout: str) -> Benchmark:
    """A view of `bench` (same Y, C, samples, features, cost bounds) whose test split is exactly the rows whose
    dataset (lodo) or group (logo) is `holdout`."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"ood.protocol={protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    col = PROTOCOLS[protocol]
    if col == "group" and "group" not in bench.meta:
        raise ConfigError("ood=logo: this benchmark has no group column")
    values = bench.meta[col].astype(str).to_numpy()
    known = sorted(set(values))
    if holdout is None or str(holdout) not in known:
        raise ConfigError(f"ood.holdout={holdout!r}: no {col} of that name in {bench.root or 'the benchmark'}; "
                          f"its {col}s: {', '.join(known[:20])}{', ...' if len(known) > 20 else ''}")
    held = values == str(holdout)
    old = bench.meta["split"].to_numpy()
    split = np.where(held, "test", np.where(old == "dev", "dev", "train"))
    for s in ("train", "dev"):
        if not (split == s).any():
            raise ConfigError(f"ood.holdout={holdout!r} leaves no {s} rows: every other {col} is empty there")
    meta = bench.meta.assign(split=split)
    return Benchmark(bench.Y, bench.C, bench.models, meta, scores=bench.scores, cost_bounds=bench.cost_bounds,
                     samples=bench._samples, root=bench.root)
