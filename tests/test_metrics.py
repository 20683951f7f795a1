"""Golden values for the routing metrics (docs/method.md#metrics), bootstrap CIs, paired comparisons and throughput."""
import math

import numpy as np
import pytest

from vlrb.data.benchmark import Split
from vlrb.routing.metrics import (bootstrap_ci, bootstrap_indices, bootstrap_weights, measure_throughput, paired_bootstrap,
                                  per_dataset_metrics, rank_score, route_metrics, take_rows)
from vlrb.routing.soft_labels import hard_labels
from vlrb.routing.synthetic import synthetic_benchmark

CMIN, CMAX = 1e-5, 1e-3
BOUNDS = {"cmin": CMIN, "cmax": CMAX}


def make_split(Y, C, datasets=None, groups=None, name="test"):
    Y, C = np.asarray(Y, np.int8), np.asarray(C, np.float32)
    n = len(Y)
    datasets = np.asarray(datasets if datasets is not None else ["A"] * n, dtype=object)
    groups = np.asarray(groups if groups is not None else ["G"] * n, dtype=object)
    return Split(name=name, idx=np.arange(n), Y=Y, C=C, scores=Y.astype(np.float32),
                 sample_ids=np.array([f"{d}/{i}" for i, d in enumerate(datasets)], dtype=object),
                 datasets=datasets, groups=groups, input_tokens=np.full(n, 100, np.int64),
                 models=[f"m{j}" for j in range(Y.shape[1] if Y.ndim == 2 else 0)])


# ---------------------------------------------------------------------------------------------- rank score
def test_rank_score_at_the_bounds():
    # cost = cmin → Ĉ = 1, so S = (1+β)·A / (β·A + 1); with A = 1 that is 1
    assert rank_score(1.0, CMIN, CMIN, CMAX) == pytest.approx(1.0, abs=1e-9)
    assert rank_score(0.6, CMIN, CMIN, CMAX) == pytest.approx(1.1 * 0.6 / (0.06 + 1), abs=1e-9)
    # cost = cmax → Ĉ = 0 → S = 0, whatever the accuracy
    assert rank_score(1.0, CMAX, CMIN, CMAX) == 0.0


def test_rank_score_inside():
    # the geometric midpoint of the bounds is Ĉ = 0.5 on the log2 scale
    c = math.sqrt(CMIN * CMAX)
    assert rank_score(0.8, c, CMIN, CMAX) == pytest.approx(1.1 * 0.8 * 0.5 / (0.08 + 0.5), abs=1e-9)  # 0.758620...
    # a quarter of the way from cmax down to cmin on the log scale: Ĉ = 0.25
    c = CMAX * (CMIN / CMAX) ** 0.25
    assert rank_score(0.5, c, CMIN, CMAX) == pytest.approx(1.1 * 0.5 * 0.25 / (0.05 + 0.25), abs=1e-9)


def test_rank_score_clips_outside():
    assert rank_score(0.7, CMIN / 100, CMIN, CMAX) == rank_score(0.7, CMIN, CMIN, CMAX)  # cheaper than cmin
    assert rank_score(0.7, CMAX * 100, CMIN, CMAX) == 0.0  # dearer than cmax
    assert rank_score(1.5, CMIN, CMIN, CMAX) == rank_score(1.0, CMIN, CMIN, CMAX)  # accuracy clipped to 1
    assert rank_score(-0.1, CMIN, CMIN, CMAX) == 0.0
    assert rank_score(0.0, CMIN, CMIN, CMAX) == 0.0


def test_rank_score_is_vectorised():
    acc = np.array([1.0, 0.8, 0.7])
    cost = np.array([CMIN, math.sqrt(CMIN * CMAX), CMAX])
    out = rank_score(acc, cost, CMIN, CMAX)
    assert isinstance(out, np.ndarray) and out.shape == (3,)
    np.testing.assert_allclose(out, [rank_score(a, c, CMIN, CMAX) for a, c in zip(acc, cost)])
    assert isinstance(rank_score(0.5, CMIN, CMIN, CMAX), float)
    with pytest.raises(ValueError):
        rank_score(0.5, 1e-4, 0.0, CMAX)


def test_spec_worked_example():
    # upstream tools/compute_rank_score.py: accuracy 79.11 %, cost 0.98 $/10K → 76.18, which implies Ĉ ≈ 0.556.
    # Choose bounds giving exactly Ĉ = 0.556: log2 cmax − log2 c = 0.556·(log2 cmax − log2 cmin), e.g. 5.56
    # and 10 octaves.
    c = 0.98 / 1e4
    cmax, cmin = c * 2 ** 5.56, c * 2 ** -4.44
    s = rank_score(0.7911, c, cmin, cmax, beta=0.1)
    assert 100 * s == pytest.approx(76.18, abs=0.01)
    # and Ĉ = S·β·A / ((1+β)·A − S) recovers the implied 0.556
    assert 0.7618 * 0.1 * 0.7911 / (1.1 * 0.7911 - 0.7618) == pytest.approx(0.556, abs=1e-3)


# ---------------------------------------------------------------------------------------------- route metrics
def test_route_metrics_by_hand():
    Y = [[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]]
    C = [[1e-4, 1e-5, 1e-3], [1e-4, 1e-5, 1e-3], [1e-4, 1e-5, 1e-3], [1e-4, 1e-5, 1e-3]]
    split = make_split(Y, C, datasets=["A", "A", "B", "B"], groups=["G1", "G1", "G2", "G2"])
    m = route_metrics(split, [0, 1, 2, 0], BOUNDS)
    # correct: 1, 1, 0, 1 → 0.75; cost: (1e-4 + 1e-5 + 1e-3 + 1e-4) / 4
    assert m["test/accuracy"] == pytest.approx(0.75)
    assert m["test/avg_cost"] == pytest.approx((1e-4 + 1e-5 + 1e-3 + 1e-4) / 4)
    assert m["test/rank_score"] == pytest.approx(rank_score(0.75, m["test/avg_cost"], CMIN, CMAX))
    assert m["test/oracle_accuracy"] == pytest.approx(0.75) and m["test/oracle_gap"] == pytest.approx(0.0)
    # choice counts 2, 1, 1 of 4 → H = −(½ ln ½ + 2·¼ ln ¼); top share ½
    assert m["test/selection_entropy"] == pytest.approx(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)))
    assert m["test/top_model_share"] == 0.5 and m["test/n"] == 4
    assert m["test/A/accuracy"] == 1.0 and m["test/B/accuracy"] == 0.5
    assert m["test/A/avg_cost"] == pytest.approx((1e-4 + 1e-5) / 2) and m["test/B/n"] == 2
    assert m["test/group/G2/accuracy"] == 0.5
    assert route_metrics(split, [0, 1, 2, 0], BOUNDS, prefix="val/")["val/accuracy"] == 0.75


def test_per_dataset_table():
    split = make_split([[1, 0], [0, 1], [1, 1]], [[1e-4, 2e-4]] * 3, datasets=["B", "A", "A"])
    t = per_dataset_metrics(split, np.array([0, 0, 1]), BOUNDS)
    assert t["dataset"].tolist() == ["A", "B"]
    assert t["accuracy"].tolist() == [0.5, 1.0] and t["n"].tolist() == [2, 1]
    assert t["oracle_accuracy"].tolist() == [1.0, 1.0]


def test_clear_errors():
    split = make_split([[1, 0], [0, 1]], [[1e-4, 2e-4]] * 2)
    with pytest.raises(ValueError, match="empty"):
        route_metrics(make_split(np.zeros((0, 2)), np.zeros((0, 2))), np.zeros(0, int), BOUNDS)
    with pytest.raises(IndexError, match="out-of-range"):
        route_metrics(split, [0, 2], BOUNDS)
    with pytest.raises(IndexError, match="out-of-range"):
        route_metrics(split, [-1, 0], BOUNDS)
    with pytest.raises(ValueError, match="shape"):
        route_metrics(split, [0, 1, 0], BOUNDS)
    with pytest.raises(TypeError):
        route_metrics(split, [0.5, 1.0], BOUNDS)
    bad = make_split([[1, 0], [0, 1]], [[1e-4, 2e-4]] * 2)
    bad.C = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="one shape"):
        route_metrics(bad, [0, 1], BOUNDS)
    with pytest.raises(ValueError, match="cmin"):
        route_metrics(split, [0, 1], {"cmax": 1.0})
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci(make_split(np.zeros((0, 2)), np.zeros((0, 2))), np.zeros(0, int), BOUNDS)


# ---------------------------------------------------------------------------------------------- bootstrap
@pytest.fixture(scope="module")
def bench():
    return synthetic_benchmark(3000, n_models=6, n_datasets=4, seed=1)


def test_bootstrap_ci_contains_point_and_narrows(bench):
    test = bench.split("all")
    choices = np.random.RandomState(0).randint(0, 6, len(test))
    point = route_metrics(test, choices, bench.cost_bounds)
    ci = bootstrap_ci(test, choices, bench.cost_bounds, n=500, seed=0)
    for m in ("accuracy", "avg_cost", "rank_score"):
        assert ci[f"{m}_lo"] <= point[f"test/{m}"] <= ci[f"{m}_hi"]
    small = take_rows(test, np.arange(300))
    ci_small = bootstrap_ci(small, choices[:300], bench.cost_bounds, n=500, seed=0)
    for m in ("accuracy", "avg_cost", "rank_score"):
        assert ci[f"{m}_hi"] - ci[f"{m}_lo"] < ci_small[f"{m}_hi"] - ci_small[f"{m}_lo"]
    assert bootstrap_ci(test, choices, bench.cost_bounds, n=500, seed=0) == ci  # deterministic


def test_shared_indices_and_paired_outcomes(bench):
    test = bench.split("test")
    idx = bootstrap_indices(len(test), 400, seed=3)
    assert idx.shape == (400, len(test)) and idx.min() >= 0 and idx.max() < len(test)
    oracle = hard_labels(test.Y, test.C)
    rand = np.random.RandomState(42).randint(0, 6, len(test))
    assert paired_bootstrap(test, oracle, rand, bench.cost_bounds, indices=idx)["outcome"] == "win"
    assert paired_bootstrap(test, rand, oracle, bench.cost_bounds, indices=idx)["outcome"] == "loss"
    same = paired_bootstrap(test, rand, rand, bench.cost_bounds, indices=idx)
    assert same["outcome"] == "tie" and same["delta_rank_score"] == 0.0
    # the count-matrix form of the same resamples gives the same numbers as the index matrix
    by_idx = bootstrap_ci(test, rand, bench.cost_bounds, indices=idx)
    by_w = bootstrap_ci(test, rand, bench.cost_bounds, indices=bootstrap_weights(idx))
    assert by_w == pytest.approx(by_idx, rel=1e-9)
    rows = idx[0]  # resample 0 by hand
    assert bootstrap_weights(idx)[0] @ test.Y[np.arange(len(test)), rand] / len(test) == pytest.approx(
        test.Y[rows, rand[rows]].mean())
    with pytest.raises(ValueError, match="do not fit"):
        bootstrap_ci(test, rand, bench.cost_bounds, indices=idx[:, :10])


# ---------------------------------------------------------------------------------------------- throughput
def test_measure_throughput_counts_and_units():
    calls = []
    out = measure_throughput(lambda b: calls.append(len(b)), list(range(16)), np.full(16, 100), warmup=2, runs=7)
    assert len(calls) == 9
    assert set(out) >= {"ktok_s", "samples_s", "ms_per_sample", "batch_size", "device"}
    assert out["batch_size"] == 16 and out["device"] == "cpu"
    # 1600 tokens per batch: K tok/s = 1.6 · batches/s = 1.6 · samples/s / 16
    assert out["ktok_s"] == pytest.approx(out["samples_s"] * 100 / 1000)
    assert out["ms_per_sample"] == pytest.approx(1000 / out["samples_s"])
    with pytest.raises(ValueError):
        measure_throughput(lambda b: None, [], [], runs=1)


def test_take_rows(bench):
    test = bench.split("test")
    sub = take_rows(test, np.arange(5))
    assert len(sub) == 5 and sub.Y.shape == (5, 6) and sub.sample_ids.tolist() == test.sample_ids[:5].tolist()
    assert sub.models == test.models
