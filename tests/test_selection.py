"""selection=cv: folds, the grid, the refit, test rows never seen before the end; the once-only test report."""
import numpy as np
import pytest
from omegaconf import OmegaConf

from vlrb.data.benchmark import Benchmark
from vlrb.errors import ConfigError
from vlrb.routers.base import Router
from vlrb.features.routing_data import RoutingData
from vlrb.jobs.selection import candidates, with_values
from vlrb.selection import fold_ids, report_test, select_and_refit


class Spy(Router):
    """Routes every sample to model `pick`; records the sample ids it is fitted on and asked to route."""

    name = "spy"
    seen: list = []

    def __init__(self, lam=0.0, pick: int = 0, uses_lambda: bool = False):
        super().__init__()
        self.lam, self.pick = lam, int(pick)
        self.uses_lambda = uses_lambda

    def fit(self, train, dev=None):
        self._remember_models(train)
        Spy.seen.append(("fit", set(train.sample_ids) | (set(dev.sample_ids) if dev is not None else set())))
        return self

    def predict_scores(self, split):
        Spy.seen.append(("route", set(split.sample_ids)))
        s = np.zeros((len(split), self.n_models))
        s[:, self.pick] = 1.0
        return s


def toy(n: int = 200, seed: int = 0) -> RoutingData:
    """Three models: model 1 is right on 80%, the others on 30%, all cost alike; two datasets."""
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, 3)) < np.array([0.3, 0.8, 0.3])).astype(np.int8)
    C = np.tile(np.array([1e-4, 2e-4, 3e-4], np.float32), (n, 1))
    bench = Benchmark.from_arrays(Y, C, ["a", "b", "c"], datasets=["A" if i % 2 else "B" for i in range(n)])
    return RoutingData.prepare(bench, ("labels",))


def cfg(grid=None, per_router=None, uses_lambda=False, folds=4):
    return OmegaConf.create({"lambda": 0, "seed": 1, "scoring": {"beta": 0.1},
                             "router": {"_target_": "Spy", "lam": "${lambda}", "pick": 0, "uses_lambda": uses_lambda},
                             "selection": {"name": "cv", "folds": folds, "seed": 3, "grid": grid or {},
                                           "per_router": per_router or {}}})


def build(router_cfg):
    return Spy(lam=router_cfg.lam, pick=router_cfg.pick, uses_lambda=router_cfg.uses_lambda)


def select(c, data):
    """What the train job does with selection=cv: the config's candidates, a factory over the config, the library."""
    make = lambda values: build(with_values(c, values).router)  # noqa: E731
    return select_and_refit(make, candidates(c, build(c.router), lambda_given=False), data, None,
                            folds=c.selection.folds, seed=c.selection.seed, beta=c.scoring.beta)


def test_cv_never_sees_test_rows_and_picks_by_out_of_fold_score():
    data = toy()
    c = cfg(per_router={"spy": {"pick": [0, 1, 2]}})
    Spy.seen = []
    sel = select(c, data)
    test_ids = set(data["test"].sample_ids)
    pool = set(data["train"].sample_ids) | set(data["dev"].sample_ids)
    cv_events = Spy.seen[:3 * 4 * 2]  # 3 candidates x 4 folds x (fit, route), before the refit
    assert len(cv_events) == 24 and all(ids <= pool and not ids & test_ids for _, ids in cv_events)
    routed = [ids for kind, ids in cv_events if kind == "route"]
    assert set().union(*routed[:4]) == pool and sum(map(len, routed[:4])) == len(pool)  # each row once per candidate
    for (_, fitted), held in zip([e for e in cv_events if e[0] == "fit"][:4], routed[:4]):
        assert not fitted & held  # a fold's router never saw the rows it is scored on
    assert Spy.seen[24] == ("fit", pool)  # the refit: on train+dev
    assert sel.router.pick == 1 and sel.values == {"router.pick": 1}  # the 80% model wins out of fold
    assert sel.metrics["cv/chosen/pick"] == 1 and sel.metrics["cv/candidates"] == 3
    assert sel.metrics["val/n"] == len(pool)  # val/* are the out-of-fold scores over train+dev


def test_routers_that_ignore_lambda_are_fitted_once_per_fold():
    data = toy()
    Spy.seen = []
    select(cfg(grid={"lambda": [0, 10, "inf"]}), data)
    assert sum(kind == "fit" for kind, _ in Spy.seen) == 4 + 1  # one candidate: 4 folds + the refit
    c = cfg(grid={"lambda": [0, 10, "inf"]}, uses_lambda=True)
    assert len(candidates(c, Spy(uses_lambda=True), lambda_given=False)) == 3
    # lambda=100 typed on the command line (a `-m lambda=...` sweep axis): λ is fixed, not cross-validated, so the
    # jobs of the sweep differ
    assert candidates(c, Spy(uses_lambda=True), lambda_given=True) == [{"lambda": 0}]


def test_grid_values_reach_the_router_through_the_config():
    c = cfg(grid={"lambda": [0, 100], "router": {"pick": [0, 2]}}, uses_lambda=True)
    got = candidates(c, Spy(uses_lambda=True), lambda_given=False)
    assert got == [{"lambda": 0, "router.pick": 0}, {"lambda": 0, "router.pick": 2},
                   {"lambda": 100, "router.pick": 0}, {"lambda": 100, "router.pick": 2}]
    Spy.seen = []
    sel = select(c, toy())
    assert sel.router.lam == sel.values["lambda"]  # router.lam: ${lambda} follows the chosen λ


@pytest.mark.parametrize("bad, error", [
    ({"grid": {"router": {"nope": [1, 2]}}}, r"selection.grid.router.nope: router Spy has no parameter 'nope'"),
    ({"per_router": {"spy": {"pik": [1]}}}, r"selection.per_router.spy.pik: router Spy has no parameter 'pik'"),
    ({"grid": {"alpha": [1]}}, r"grid keys are `lambda` and `router.<parameter>`"),
    ({"per_router": {"spy": {"pick": []}}}, r"expected a non-empty list"),
])
def test_bad_grids_are_one_line_errors(bad, error):
    with pytest.raises(ConfigError, match=error):
        candidates(cfg(**bad), Spy(), lambda_given=False)


def test_folds_are_deterministic_balanced_and_within_datasets():
    ds = np.array(["A"] * 50 + ["B"] * 23 + ["C"] * 7)
    f = fold_ids(ds, 5, seed=3)
    assert (f == fold_ids(ds, 5, seed=3)).all() and not (f == fold_ids(ds, 5, seed=4)).all()
    assert sorted(np.bincount(f)) == [16] * 5
    for d in "ABC":
        counts = np.bincount(f[ds == d], minlength=5)
        assert counts.max() - counts.min() <= 1  # every fold holds about 1/5 of each dataset
    with pytest.raises(ConfigError, match="selection.folds=1"):
        fold_ids(ds, 1, 0)


def test_report_test_compares_with_the_best_single_model_chosen_on_train_and_dev():
    """Model 0 is best on train+dev, model 1 on test: the reference is model 0, never chosen by looking at test."""
    n = 300
    Y = np.zeros((n, 3), np.int8)
    C = np.tile(np.array([1e-4, 1e-4, 1e-3], np.float32), (n, 1))  # m2: never right, sets the top of the cost scale
    splits = np.array(["train"] * 200 + ["dev"] * 40 + ["test"] * 60)
    Y[splits != "test", 0] = 1
    Y[splits == "test", 1] = 1
    bench = Benchmark.from_arrays(Y, C, ["m0", "m1", "m2"], splits=list(splits))
    data = RoutingData.prepare(bench, ("labels",))
    out = report_test(data, np.ones(60, np.int64), beta=0.1, n_bootstrap=200, seed=0)
    assert out["test/best_single/model"] == "m0" and out["test/best_single/accuracy"] == 0.0
    assert out["test/vs_best_single/outcome"] == "win" and out["test/vs_best_single/delta_rank_score"] > 0.5
    assert out["test/accuracy_lo"] == out["test/accuracy_hi"] == 1.0
