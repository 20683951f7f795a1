"""vlrb_cal, vlrb's own router: priors with empirical-Bayes shrinkage, calibrated predictors, the cost-aware decision,
the fallback to the best single model, saving and loading, and its config."""
import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import REPO, make_router
from vlrb.data.benchmark import Benchmark
from vlrb.routers import read_router
from vlrb.routers.calibrated import CalibratedRouter, Priors, shrink
from vlrb.routing.metrics import expected_calibration_error
from vlrb.routing.metrics import route_metrics


def planted(n: int = 400, seed: int = 0, signal: bool = True):
    """4 models, 2 datasets; features say which half of the items model 0 (else model 1) answers. Models 2 (the
    dearest) and 3 (the cheapest) are right at random. Without `signal` every model is right at random, model 1
    slightly more often."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    side = X[:, 0] > 0
    if signal:
        p = np.stack([np.where(side, 0.9, 0.1), np.where(side, 0.1, 0.9), np.full(n, 0.3), np.full(n, 0.2)], 1)
    else:
        p = np.tile([0.30, 0.36, 0.30, 0.30], (n, 1))
    Y = (rng.random((n, 4)) < p).astype(np.int8)
    # without signal, models 0, 1, 3 cost alike: no mix of them is cheaper than model 1 alone
    C = np.tile(np.array([1e-4, 1.2e-4, 1e-3, 5e-5] if signal else [1e-4, 1e-4, 1e-3, 1e-4], np.float32), (n, 1))
    bench = Benchmark.from_arrays(Y, C, ["m0", "m1", "m2", "m3"], datasets=["A" if i % 3 else "B" for i in range(n)])
    return bench, {s: bench.split(s).with_features(X[bench.splits[s]]) for s in ("train", "dev", "test")}


def test_beats_random_and_the_best_single_model_on_a_planted_rule():
    bench, sp = planted()
    r = make_router("vlrb_cal", n_components=8, bootstrap=200).fit(sp["train"])
    rnd = make_router("random").fit(sp["train"])
    acc = {name: route_metrics(sp["test"], x.route(sp["test"]), bench.cost_bounds)["test/accuracy"] for name, x in
           (("ours", r), ("random", rnd))}
    assert not r.fallback_ and acc["ours"] > 0.8 and acc["random"] < 0.5
    assert r.fit_info["oof_ece"] < 0.1  # calibrated out of fold
    p = r.predict_correctness(sp["test"])
    side = sp["test"].X[:, 0] > 0
    assert p[side, 0].mean() > 0.7 and p[~side, 0].mean() < 0.3


def test_falls_back_to_the_best_single_model_without_signal():
    bench, sp = planted(signal=False, n=600)
    r = make_router("vlrb_cal", n_components=8, bootstrap=200).fit(sp["train"])
    assert r.fallback_ and r.fit_info["fallback"]
    assert (r.route(sp["test"]) == r.single_).all()
    assert r.models[r.single_] == r.fit_info["single_model"]


def test_saved_router_reproduces_its_choices(tmp_path):
    bench, sp = planted()
    r = make_router("vlrb_cal", n_components=8, bootstrap=200, interact="group").fit(sp["train"])
    r.save(tmp_path / "r")
    back = read_router(tmp_path / "r")
    assert isinstance(back, CalibratedRouter) and back.get_params() == r.get_params()
    np.testing.assert_allclose(back.predict_scores(sp["test"]), r.predict_scores(sp["test"]), rtol=1e-6)
    np.testing.assert_array_equal(back.route(sp["dev"]), r.route(sp["dev"]))


def test_lambda_sets_mu_only_when_asked():
    assert not make_router("vlrb_cal").uses_lambda  # mu=auto: λ unused, fitted once in sweeps and selection=cv
    p, c = np.array([[0.9, 0.5]]), np.array([[1e-3, 1e-4]])
    one = make_router("vlrb_cal", mu="lambda", lam=1, cost_scale=100.0)
    assert one.uses_lambda and one.mu == 100.0
    assert one._decide(p, c).argmax(1)[0] == 0  # 0.9 - 0.1 > 0.5 - 0.01
    assert make_router("vlrb_cal", mu="lambda", lam=10)._decide(p, c).argmax(1)[0] == 1  # 0.9 - 1.0 < 0.5 - 0.1
    assert make_router("vlrb_cal", mu="lambda", lam="inf")._decide(p, c).argmax(1)[0] == 1  # the cheapest
    with pytest.raises(ValueError, match="mu must be 'auto'"):
        make_router("vlrb_cal", mu="fast")


def test_shrinkage_follows_the_spread_across_keys():
    rng = np.random.default_rng(0)
    keys = np.repeat(["a", "b", "c", "d"], 200)
    parent = np.full((800, 1), 0.5)
    same = np.tile([0.0, 1.0], 400)[:, None]  # every key exactly at the parent's rate: shrink all the way
    _, post, m = shrink(same, keys, parent)
    assert np.isinf(m[0]) and np.allclose(post, 0.5)
    rates = np.repeat([0.1, 0.3, 0.7, 0.9], 200)[:, None]
    apart = (rng.random((800, 1)) < rates).astype(float)  # keys far apart: little shrinkage
    uniq, post, m = shrink(apart, keys, parent)
    raw = np.array([apart[keys == k].mean() for k in uniq])
    assert 0 < m[0] < 20 and np.abs(post[:, 0] - raw).max() < 0.02
    pri = Priors().fit(apart, np.full(800, "g"), keys)
    unseen = pri.rates(np.array(["g", "other"]), np.array(["zz", "zz"]))  # an unseen dataset: its group, else overall
    assert np.allclose(unseen, [[pri.group_rates[0, 0]], [pri.overall[0]]])


def test_expected_calibration_error_golden():
    p = np.array([0.1, 0.1, 0.9, 0.9])
    y = np.array([0, 1, 1, 1])
    # bins of width 1/15: {0.1: mean y 0.5, mean p 0.1}, {0.9: y 1.0, p 0.9} -> (2·0.4 + 2·0.1) / 4
    assert expected_calibration_error(p, y) == pytest.approx(0.25)
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([0, 1])) == 0.0


def test_config_builds_the_router():
    from vlrb.jobs.train import build_router

    node = OmegaConf.create({"lambda": 100, "seed": 3, "scoring": {"beta": 0.1},
                             "router": OmegaConf.load(REPO / "conf" / "router" / "vlrb_cal.yaml")})
    r = build_router(node.router)
    assert isinstance(r, CalibratedRouter) and r.name == "vlrb_cal" and r.seed == 3 and r.mu_mode == "auto"


def test_offset_logistic_matches_sklearn_and_warm_starts_reach_the_same_optimum():
    """With a zero offset each model's fit is sklearn's L2 logistic regression (intercept unpenalised); an offset
    column is a known term of the logit; a start from another strength's solution converges to the same weights."""
    from sklearn.linear_model import LogisticRegression

    from vlrb.routers.calibrated import fit_offset_logistic

    rng = np.random.default_rng(0)
    n, q, K, alpha = 600, 5, 3, 4.0
    Z = rng.normal(size=(n, q))
    Y = (rng.random((n, K)) < 1 / (1 + np.exp(-(Z @ rng.normal(size=(q, K)) + 0.3)))).astype(float)
    W, b = fit_offset_logistic(Z, Y, np.zeros((n, K)), alpha)
    for k in range(K):
        ref = LogisticRegression(C=1 / alpha, tol=1e-10, max_iter=10_000).fit(Z, Y[:, k])
        np.testing.assert_allclose(W[:, k], ref.coef_[0], atol=1e-5)
        np.testing.assert_allclose(b[k], ref.intercept_[0], atol=1e-5)
    off = rng.normal(size=(n, K))  # the offset enters the logit as is: the same data shifted by it
    W_off, b_off = fit_offset_logistic(Z, Y, off, alpha)
    assert not np.allclose(W_off, W, atol=1e-3)
    warm = fit_offset_logistic(Z, Y, off, alpha, start=fit_offset_logistic(Z, Y, off, 100 * alpha))
    np.testing.assert_allclose(warm[0], W_off, atol=1e-6)
    np.testing.assert_allclose(warm[1], b_off, atol=1e-6)
