"""Routing metrics (docs/method.md#metrics): accuracy, average cost, Rank Score, oracle gap, selection entropy,
per-dataset / per-group breakdowns, bootstrap confidence intervals and throughput.

Every function is vectorised over samples (and over bootstrap resamples): no per-sample Python loops,
so 1,000 resamples of the full test split take milliseconds.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from vlrb.data.benchmark import Split
from vlrb.routing.calls import Calls

DEFAULT_BETA = 0.1
_EPS = 1e-12  # the upstream guards in both denominators (routers/utils/rank_score.py)


# ---------------------------------------------------------------------------------------------- rank score
def rank_score(acc, cost, cmin: float, cmax: float, beta: float = DEFAULT_BETA):
    """RouterArena-style Rank Score in [0, 1], exactly as upstream routers/utils/rank_score.py
    (docs/method.md#rank-score); vectorised over acc/cost.

    Ĉ = (log2 cmax − log2 clip(cost, cmin, cmax)) / (log2 cmax − log2 cmin + 1e-12), clipped to [0, 1];
    S = (1+β)·A·Ĉ / (β·A + Ĉ + 1e-12), clipped to [0, 1], with A = clip(acc, 0, 1).
    Returns a float for scalar inputs, an array otherwise.
    """
    if not (0 < cmin <= cmax):
        raise ValueError(f"rank score needs 0 < cmin <= cmax, got cmin={cmin!r}, cmax={cmax!r}")
    acc_a = np.asarray(acc, dtype=np.float64)
    cost_a = np.asarray(cost, dtype=np.float64)
    c = np.clip(cost_a, cmin, cmax)
    c_hat = np.clip((np.log2(cmax) - np.log2(c)) / (np.log2(cmax) - np.log2(cmin) + _EPS), 0.0, 1.0)
    a = np.clip(acc_a, 0.0, 1.0)
    s = np.clip((1 + beta) * a * c_hat / (beta * a + c_hat + _EPS), 0.0, 1.0)
    return float(s) if s.ndim == 0 else s


def best_single_model(split: Split, cost_bounds: Mapping[str, Any], beta: float = DEFAULT_BETA) -> int:
    """The model with the highest rank score when it answers every row of `split` (ties: the first)."""
    return _best_column(split.Y, split.C, cost_bounds, beta)


def reference_model(bench, beta: float = DEFAULT_BETA) -> int:
    """The one reference of every comparison vlrb reports (runs, leaderboard, build summary, README): the best
    single model, i.e. the best rank score on train+dev, chosen without looking at test."""
    rows = bench.meta["split"].isin(["train", "dev"]).to_numpy()
    return _best_column(bench.Y[rows], bench.C[rows], bench.cost_bounds, beta)


def _best_column(Y, C, cost_bounds: Mapping[str, Any], beta: float) -> int:
    acc = np.asarray(Y, np.float64).mean(0)
    cost = np.asarray(C, np.float64).mean(0)
    return int(np.argmax(rank_score(acc, cost, cost_bounds["cmin"], cost_bounds["cmax"], beta)))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE over every (sample, model) pair: Σ_b (n_b/N)·|mean y − mean p| in `bins` equal-width bins of p."""
    p, y = np.asarray(p, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    b = np.minimum((p * bins).astype(np.int64), bins - 1)
    n = np.bincount(b, minlength=bins)
    gap = np.abs(np.bincount(b, weights=y, minlength=bins) - np.bincount(b, weights=p, minlength=bins))
    return float(gap.sum() / max(len(p), 1)) if n.sum() else float("nan")


def _bounds(cost_bounds: Mapping[str, Any]) -> tuple[float, float]:
    try:
        return float(cost_bounds["cmin"]), float(cost_bounds["cmax"])
    except (KeyError, TypeError):
        raise ValueError(f"cost_bounds must be a mapping with 'cmin' and 'cmax', got {cost_bounds!r}") from None


# ---------------------------------------------------------------------------------------------- validation
def validate_choices(choices, n: int, k: int, what: str = "router") -> np.ndarray:
    """(n,) int64 model indices in [0, k), or a clear error."""
    ch = np.asarray(choices)
    if ch.shape != (n,):
        raise ValueError(f"{what} returned choices of shape {ch.shape}; expected ({n},), one model index per sample")
    if ch.dtype.kind not in "iu":
        if ch.dtype.kind == "f" and n and np.isfinite(ch).all() and (ch == np.round(ch)).all():
            ch = ch.astype(np.int64)
        else:
            raise TypeError(f"{what} returned {ch.dtype} choices; expected integer model indices")
    if n and (ch.min() < 0 or ch.max() >= k):
        bad = ch[(ch < 0) | (ch >= k)]
        raise IndexError(f"{what} chose model index {int(bad[0])} ({len(bad)} out-of-range choices); "
                         f"valid indices are 0..{k - 1} for the {k} models")
    return ch.astype(np.int64, copy=False)


def _outcomes(split: Split, choices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(returned model (n,), correct (n,), cost (n,)) of a routing decision, after every sanity check: one-shot
    choices (n,), or a cascade's `Calls` (the last call's answer, every call paid)."""
    Y, C = np.asarray(split.Y), np.asarray(split.C)
    if Y.ndim != 2 or Y.shape != C.shape:
        raise ValueError(f"split {split.name!r}: Y {Y.shape} and C {C.shape} must be N×K matrices of one shape")
    n, k = Y.shape
    if n == 0:
        raise ValueError(f"split {split.name!r} is empty: no samples to score")
    rows = np.arange(n)
    if isinstance(choices, Calls):
        calls = choices.validate(n, k)
        ch = calls.final
        return ch, Y[rows, ch].astype(np.float64), calls.cost(C)
    ch = validate_choices(choices, n, k)
    return ch, Y[rows, ch].astype(np.float64), C[rows, ch].astype(np.float64)


def take_rows(split: Split, rows) -> Split:
    """A sub-split (e.g. the first 16 test samples for throughput): every per-sample array indexed by `rows`."""
    rows = np.asarray(rows)
    n = len(split)
    changes = {f.name: getattr(split, f.name)[rows] for f in dataclasses.fields(split)
               if isinstance(getattr(split, f.name), np.ndarray) and len(getattr(split, f.name)) == n}
    return dataclasses.replace(split, **changes)


# ---------------------------------------------------------------------------------------------- point metrics
def _group_means(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique keys, counts, per-key means of each column of `values`) with one bincount per column."""
    uniq, inv = np.unique(keys.astype(str), return_inverse=True)
    counts = np.bincount(inv, minlength=len(uniq))
    means = np.stack([np.bincount(inv, weights=v, minlength=len(uniq)) for v in values.T], 1) / counts[:, None]
    return uniq, counts, means


def per_dataset_metrics(split: Split, choices, cost_bounds: Mapping[str, Any], by: str = "dataset",
                        beta: float = DEFAULT_BETA) -> pd.DataFrame:
    """One row per dataset (or task group with by='group'): n, accuracy, avg_cost, rank_score, oracle_accuracy.

    The global cost bounds serve every dataset, as upstream.
    """
    cmin, cmax = _bounds(cost_bounds)
    _, correct, cost = _outcomes(split, choices)
    keys = np.asarray(split.datasets if by == "dataset" else split.groups)
    oracle = np.asarray(split.Y).max(1).astype(np.float64)
    uniq, counts, means = _group_means(keys, np.stack([correct, cost, oracle], 1))
    return pd.DataFrame({
        by: uniq, "n": counts, "accuracy": means[:, 0], "avg_cost": means[:, 1],
        "rank_score": rank_score(means[:, 0], means[:, 1], cmin, cmax, beta), "oracle_accuracy": means[:, 2],
    })


def selection_stats(choices: np.ndarray, k: int) -> dict[str, float]:
    """Entropy (nats) of the model-selection distribution and the top model's share: a collapse check."""
    p = np.bincount(choices, minlength=k) / len(choices)
    nz = p[p > 0]
    return {"selection_entropy": float(-(nz * np.log(nz)).sum()) + 0.0,  # + 0.0: no "-0.0"
            "top_model_share": float(p.max()),
            "models_used": int((p > 0).sum())}


def route_metrics(split: Split, choices, cost_bounds: Mapping[str, Any], prefix: str = "test/",
                  beta: float = DEFAULT_BETA, breakdown: bool = True) -> dict[str, float]:
    """Flat metrics of one routing decision, keys like `test/accuracy`, `test/<dataset>/rank_score`,
    `test/group/<group>/accuracy`. avg_cost is $ per sample, rank_score in [0, 1]."""
    cmin, cmax = _bounds(cost_bounds)
    ch, correct, cost = _outcomes(split, choices)
    acc, avg_cost = float(correct.mean()), float(cost.mean())
    oracle_acc = float(np.asarray(split.Y).max(1).mean())
    out: dict[str, float] = {
        f"{prefix}accuracy": acc,
        f"{prefix}avg_cost": avg_cost,
        f"{prefix}rank_score": rank_score(acc, avg_cost, cmin, cmax, beta),
        f"{prefix}oracle_accuracy": oracle_acc,
        f"{prefix}oracle_gap": oracle_acc - acc,
        f"{prefix}n": int(len(ch)),
        f"{prefix}num_correct": int(correct.sum()),
    }
    out.update({f"{prefix}{k}": v for k, v in selection_stats(ch, split.Y.shape[1]).items()})
    if isinstance(choices, Calls):  # a cascade: how many calls a request made, how many went past the first
        out.update({f"{prefix}calls_mean": float(choices.n_calls.mean()),
                    f"{prefix}escalated_share": float((choices.n_calls > 1).mean())})
    if breakdown:
        for by, tag in (("dataset", ""), ("group", "group/")):
            table = per_dataset_metrics(split, choices, cost_bounds, by=by, beta=beta)
            for row in table.itertuples(index=False):  # one iteration per dataset, not per sample
                key = f"{prefix}{tag}{getattr(row, by)}/"
                out.update({key + "accuracy": float(row.accuracy), key + "avg_cost": float(row.avg_cost),
                            key + "rank_score": float(row.rank_score), key + "n": int(row.n)})
    return out


# ---------------------------------------------------------------------------------------------- bootstrap
def bootstrap_indices(n_samples: int, n: int = 1000, seed: int = 0) -> np.ndarray:
    """(n, n_samples) int32 resample indices; share one matrix between routers to make comparisons paired."""
    if n_samples <= 0:
        raise ValueError("bootstrap of an empty split")
    if n <= 0:
        raise ValueError(f"number of bootstrap resamples must be positive, got {n}")
    return np.random.default_rng(seed).integers(0, n_samples, size=(n, n_samples), dtype=np.int32)


def bootstrap_weights(indices: np.ndarray) -> np.ndarray:
    """The same resamples as an (n, N) float64 count matrix W (W[b, i] = times sample i is drawn in b).

    The mean of x over resample b is then W[b] @ x / N, so every metric of every router costs one
    matrix-vector product instead of an n×N gather: build W once and pass it wherever `indices` is taken.
    """
    n, m = indices.shape
    flat = (np.arange(n, dtype=np.int64)[:, None] * m + indices).ravel()
    return np.bincount(flat, minlength=n * m).reshape(n, m).astype(np.float64)


def _as_weights(indices: np.ndarray, n_samples: int) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.ndim != 2 or indices.shape[1] != n_samples:
        raise ValueError(f"bootstrap resamples of shape {indices.shape} do not fit a split of {n_samples} samples")
    return indices if indices.dtype.kind == "f" else bootstrap_weights(indices)


def _resampled(split: Split, choices, cost_bounds, indices: np.ndarray, beta: float) -> dict[str, np.ndarray]:
    cmin, cmax = _bounds(cost_bounds)
    _, correct, cost = _outcomes(split, choices)
    n = len(correct)
    W = _as_weights(indices, n)
    acc, avg = (W @ np.stack([correct, cost], 1) / n).T  # one BLAS product for both metrics
    return {"accuracy": acc, "avg_cost": avg, "rank_score": rank_score(acc, avg, cmin, cmax, beta)}


def bootstrap_ci(split: Split, choices, cost_bounds: Mapping[str, Any], n: int = 1000, seed: int = 0,
                 beta: float = DEFAULT_BETA, level: float = 0.95, indices: np.ndarray | None = None) -> dict[str, float]:
    """Percentile bootstrap CIs over test samples: `{accuracy,avg_cost,rank_score}_{lo,hi}`.

    One (n × N) index matrix (`bootstrap_indices`), turned into a count matrix so each metric is a single
    matrix-vector product. Pass `indices` (that index matrix, or `bootstrap_weights(indices)`, which saves the
    conversion) to reuse the same resamples for several routers.
    """
    if indices is None:
        indices = bootstrap_indices(len(split), n, seed)
    q = [(1 - level) / 2, 1 - (1 - level) / 2]
    out: dict[str, float] = {}
    for name, values in _resampled(split, choices, cost_bounds, indices, beta).items():
        lo, hi = np.quantile(values, q)
        out[f"{name}_lo"], out[f"{name}_hi"] = float(lo), float(hi)
    return out


def paired_bootstrap(split: Split, choices_a, choices_b, cost_bounds: Mapping[str, Any], n: int = 1000,
                     seed: int = 0, beta: float = DEFAULT_BETA, level: float = 0.95,
                     indices: np.ndarray | None = None) -> dict[str, Any]:
    """Is router A better than B on rank score? The same resamples score both (paired).

    outcome: 'win' when the CI of S_A − S_B lies above 0, 'loss' when below, 'tie' otherwise.
    """
    if indices is None:
        indices = bootstrap_indices(len(split), n, seed)
    indices = _as_weights(indices, len(split))  # convert once for both routers
    a = _resampled(split, choices_a, cost_bounds, indices, beta)
    b = _resampled(split, choices_b, cost_bounds, indices, beta)
    q = [(1 - level) / 2, 1 - (1 - level) / 2]
    out: dict[str, Any] = {}
    for name in ("rank_score", "accuracy", "avg_cost"):
        d = a[name] - b[name]
        lo, hi = np.quantile(d, q)
        out[f"delta_{name}"], out[f"delta_{name}_lo"], out[f"delta_{name}_hi"] = float(d.mean()), float(lo), float(hi)
    ratio = a["avg_cost"] / np.maximum(b["avg_cost"], _EPS)  # what A pays per $ that B pays
    lo, hi = np.quantile(ratio, q)
    out["cost_ratio"], out["cost_ratio_lo"], out["cost_ratio_hi"] = float(np.mean(ratio)), float(lo), float(hi)
    d = a["rank_score"] - b["rank_score"]
    out["p_a_better"] = float((d > 0).mean())
    lo, hi = out["delta_rank_score_lo"], out["delta_rank_score_hi"]
    out["outcome"] = "win" if lo > 0 else "loss" if hi < 0 else "tie"
    return out


# ---------------------------------------------------------------------------------------------- throughput
def _device_str(device: Any) -> str:
    return str(device) if device is not None else "cpu"


def measure_throughput(fn: Callable[[Any], Any], batch: Any, input_tokens, warmup: int = 5, runs: int = 50,
                       device: Any = "cpu") -> dict[str, Any]:
    """Time `fn(batch)` (the router's decision only, or decision + encoder for the end-to-end number).

    K tokens/s = Σ input tokens of the batch / mean wall time / 1000 (docs/method.md#throughput). On CUDA the device is
    synchronised around every timed run, so asynchronous kernels are counted.
    """
    tokens = np.asarray(input_tokens, dtype=np.float64)
    if tokens.ndim != 1 or len(tokens) == 0:
        raise ValueError("measure_throughput needs the input-token count of each sample in the batch")
    if runs <= 0:
        raise ValueError(f"runs must be positive, got {runs}")
    dev = _device_str(device)
    sync: Callable[[], None] = lambda: None  # noqa: E731
    if dev.startswith("cuda"):
        import torch

        sync = lambda: torch.cuda.synchronize(dev)  # noqa: E731
    for _ in range(warmup):
        fn(batch)
    sync()
    times = np.empty(runs)
    for r in range(runs):  # timed runs (a loop over repetitions, not samples)
        t0 = time.perf_counter()
        fn(batch)
        sync()
        times[r] = time.perf_counter() - t0
    mean_s = max(float(times.mean()), 1e-12)
    n = len(tokens)
    return {"ktok_s": float(tokens.sum() / mean_s / 1000), "samples_s": n / mean_s,
            "ms_per_sample": mean_s * 1000 / n, "ms_per_token": mean_s * 1000 / max(tokens.sum(), 1.0),
            "batch_size": n, "device": dev}


def router_throughput(router, split: Split, batch_size: int = 16, warmup: int = 5, runs: int = 50,
                      device: Any = "cpu") -> dict[str, Any]:
    """Throughput of `router.route` on the first `batch_size` samples of `split` (upstream: batch 16, 5 + 50)."""
    if len(split) == 0:
        raise ValueError("throughput of an empty split")
    batch = take_rows(split, np.arange(min(batch_size, len(split))))
    return measure_throughput(router.route, batch, batch.input_tokens, warmup=warmup, runs=runs, device=device)
