"""Training-free baselines (docs/routers.md#training-free-baselines), the Router interface and the registry."""
from pathlib import Path

import numpy as np
import pytest

from vlrb.routers import Router
from vlrb.routers.baselines import Baseline
from vlrb.routing.metrics import route_metrics, take_rows
from vlrb.routing.synthetic import synthetic_benchmark
from conftest import make_router, router_class, router_names

BASELINES = ["oracle", "strongest", "cheapest", "per_dataset", "random"]
CONF = Path(__file__).resolve().parents[1] / "conf" / "router"


@pytest.fixture(scope="module")
def bench():
    return synthetic_benchmark(2000, n_models=8, n_datasets=5, seed=0)


def test_config_names_and_class_names_agree():
    """router=<name> picks conf/router/<name>.yaml, whose `_target_` class calls itself <name>."""
    assert set(BASELINES) <= set(router_names(trainable=False))
    for name in BASELINES:
        router = make_router(name)
        assert isinstance(router, Baseline) and router.name == name == router_class(name).name
        assert not router.trainable


def test_bad_router_parameters_are_clear_errors():
    with pytest.raises(Exception, match="no_such_router"):
        make_router("no_such_router")
    with pytest.raises(TypeError, match="StrongestGlobal.*unexpected keyword argument 'k'"):
        make_router("strongest", k=5)
    with pytest.raises(ValueError, match="fit_on"):
        make_router("strongest", fit_on="dev")
    with pytest.raises(TypeError, match="unknown inputs"):
        class Bad(Router):
            inputs = ("telepathy",)


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_route_in_range_and_deterministically(bench, name):
    train, test = bench.split("train"), bench.split("test")
    router = make_router(name).fit(train, bench.split("dev"))
    choices = router.route(test)
    assert choices.dtype == np.int64 and choices.shape == (len(test),)
    assert choices.min() >= 0 and choices.max() < bench.n_models
    assert np.array_equal(choices, make_router(name).fit(train).route(test))
    assert router.predict_scores(test).shape == (len(test), bench.n_models)


def test_oracle_is_best_and_cheapest_at_its_accuracy(bench):
    train, test = bench.split("train"), bench.split("test")
    results = {n: route_metrics(test, make_router(n).fit(train).route(test), bench.cost_bounds) for n in BASELINES}
    oracle = results.pop("oracle")
    assert oracle["test/accuracy"] == pytest.approx(test.Y.max(1).mean())
    for name, m in results.items():
        assert oracle["test/accuracy"] > m["test/accuracy"], name
    singles = test.Y.mean(0)
    assert oracle["test/accuracy"] > singles.max()
    # cheapest at that accuracy: per sample, no correct model (or, with none correct, no model) costs less
    ch = make_router("oracle").fit(train).route(test)
    chosen = test.C[np.arange(len(test)), ch]
    correct = test.Y > 0
    floor = np.where(correct.any(1), np.where(correct, test.C, np.inf).min(1), test.C.min(1))
    np.testing.assert_array_equal(chosen, floor)
    assert test.Y[np.arange(len(test)), ch].astype(bool).tolist() == correct.any(1).tolist()


def test_fixed_baselines_fit_on_the_split_they_get(bench):
    train, test = bench.split("train"), bench.split("test")
    s = make_router("strongest").fit(train)
    assert (s.route(test) == int(train.Y.mean(0).argmax())).all()
    c = make_router("cheapest").fit(train)
    assert (c.route(test) == int(train.C.mean(0).argmin())).all()
    s_test = make_router("strongest", fit_on="test").fit(test)
    assert (s_test.route(test) == int(test.Y.mean(0).argmax())).all()
    assert s_test.label == "strongest (fit on test)" and s.label == "strongest"
    # Oracle and Random read nothing at fit time: fit_on does not relabel them
    assert make_router("oracle", fit_on="test").label == "oracle"
    assert make_router("random", fit_on="test").label == "random"


def test_per_dataset_picks_each_datasets_best_and_falls_back(bench):
    train, test = bench.split("train"), bench.split("test")
    r = make_router("per_dataset").fit(train)
    ch = r.route(test)
    for d in np.unique(test.datasets):  # a loop over datasets, not samples
        best = int(train.Y[train.datasets == d].mean(0).argmax())
        assert (ch[test.datasets == d] == best).all()
    test.datasets = np.array(["Unseen"] * len(test), dtype=object)
    assert (r.route(test) == int(train.Y.mean(0).argmax())).all()


def test_random_matches_upstream(bench):
    test = bench.split("test")
    ch = make_router("random").fit(bench.split("train")).route(test)
    np.testing.assert_array_equal(ch, np.random.RandomState(42).randint(0, bench.n_models, len(test)))
    other = make_router("random", seed=7).fit(bench.split("train")).route(test)
    assert not np.array_equal(ch, other)


def test_router_interface_guards(bench):
    test = bench.split("test")
    with pytest.raises(RuntimeError, match="fit"):
        make_router("strongest").route(test)
    small = synthetic_benchmark(200, n_models=3, n_datasets=2)
    with pytest.raises(ValueError, match="models"):
        make_router("strongest").fit(small.split("train")).route(test)
    with pytest.raises(ValueError, match="empty"):
        make_router("strongest").fit(take_rows(test, np.arange(0)))

    class Broken(Router):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def predict_scores(self, split):
            return self.out

    n, k = len(test), bench.n_models
    with pytest.raises(ValueError, match="expected"):
        Broken(out=np.zeros((n, k + 1))).fit(test).route(test)
    with pytest.raises(ValueError, match="NaN"):
        Broken(out=np.full((n, k), np.nan)).fit(test).route(test)
    with pytest.raises(TypeError, match="by keyword"):
        Broken(np.zeros((n, k)))
    assert router_class("oracle").inputs == ("labels",)
    assert "fit_on='test'" in repr(make_router("strongest", fit_on="test"))
