"""Learning from a feedback log (issue 26): the off-policy estimators on a hand-computed example, the offpolicy
router on partial labels, simulated logs, and `train.py data=feedback` end to end (it beats Random from feedback
alone), with one-line errors for logs it cannot learn from."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, data_cfg, make_router
from vlrb.data.benchmark import Benchmark
from vlrb.routing.metrics import route_metrics
from vlrb.routing.offpolicy import Feedback, dr_pseudo_outcomes, dr_value, ips_value, snips_value

# ------------------------------------------------------------------------------------------ estimators (by hand)
CHOSEN, PROP, REWARD = [0, 1, 0], [0.5, 0.25, 0.5], [1.0, 0.0, 0.0]
R_HAT = np.array([[0.6, 0.4], [0.5, 0.5], [0.2, 0.8]])


def test_ips_snips_dr_on_a_hand_computed_log():
    pi = np.array([0, 0, 1])  # agrees with the log on row 0 only (weight 1 / 0.5)
    assert ips_value(pi, CHOSEN, PROP, REWARD) == pytest.approx(2 / 3)
    assert snips_value(np.eye(2)[pi], CHOSEN, PROP, REWARD) == pytest.approx(1.0)
    gamma = dr_pseudo_outcomes(R_HAT, CHOSEN, PROP, REWARD)
    np.testing.assert_allclose(gamma, [[1.4, 0.4], [0.5, -1.5], [-0.2, 0.8]])
    assert dr_value(pi, R_HAT, CHOSEN, PROP, REWARD) == pytest.approx((1.4 + 0.5 + 0.8) / 3)
    half = np.full((3, 2), 0.5)  # a stochastic policy
    assert dr_value(half, R_HAT, CHOSEN, PROP, REWARD) == pytest.approx((0.9 - 0.5 + 0.3) / 3)
    assert ips_value(half, CHOSEN, PROP, REWARD) == pytest.approx(1 / 3)
    clipped = dr_pseudo_outcomes(R_HAT, CHOSEN, PROP, REWARD, clip=0.5)  # p = 0.25 floored at 0.5
    assert clipped[1, 1] == pytest.approx(-0.5)
    # an r̂ that is exactly right: DR = the direct model's value, whatever the propensities
    assert dr_value(pi, np.array([[1.0, 0.3], [0.2, 0.0], [0.0, 0.7]]), CHOSEN, PROP, REWARD) == \
        pytest.approx((1.0 + 0.2 + 0.7) / 3)


# ------------------------------------------------------------------------------------------ the router
def planted(n=900, seed=0):
    """4 models, 3 datasets: m0 is right where feature 0 is positive, m1 where it is negative, m2 on dataset C; m3,
    the dearest, half the time."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    ds = np.array(["A", "B", "C"])[np.arange(n) % 3]
    p = np.stack([np.where(X[:, 0] > 0, 0.9, 0.1), np.where(X[:, 0] < 0, 0.9, 0.1), np.where(ds == "C", 0.95, 0.1),
                  np.full(n, 0.5)], 1)
    Y = (rng.random((n, 4)) < p).astype(np.int8)
    C = np.tile(np.array([1e-5, 2e-5, 4e-5, 8e-4], np.float32), (n, 1))
    return Benchmark.from_arrays(Y, C, ["m0", "m1", "m2", "m3"], datasets=list(ds)), X


def uniform_log(bench, X, seed=0):
    tr = bench.split("train")
    K = bench.n_models
    a = np.random.default_rng(seed).integers(0, K, len(tr))
    rows = np.arange(len(tr))
    return Feedback(idx=rows, models=bench.models, X=X[bench.splits["train"]], datasets=tr.datasets, chosen=a,
                    propensity=np.full(len(tr), 1 / K), reward=tr.Y[rows, a].astype(float), cost=tr.C[rows, a])


@pytest.mark.parametrize("estimator", ["dr", "ips"])
def test_offpolicy_router_learns_from_partial_labels_and_reloads(estimator, tmp_path):
    from vlrb.routers import read_router

    bench, X = planted()
    log = uniform_log(bench, X)
    r = make_router("offpolicy", estimator=estimator).fit(log)
    test = bench.split("test").with_features(X[bench.splits["test"]])
    ours = route_metrics(test, r.route(test), bench.cost_bounds, prefix="")
    rnd = route_metrics(test, make_router("random").fit(bench.split("train")).route(test), bench.cost_bounds, prefix="")
    assert ours["accuracy"] > 0.75 > 0.5 > rnd["accuracy"] and ours["rank_score"] > rnd["rank_score"] + 0.2
    assert r.fit_info["policy_dr"] > r.fit_info["log_mean_reward"] + 0.2  # the log says so too
    r.save(tmp_path / "r")
    back = read_router(tmp_path / "r")
    np.testing.assert_allclose(back.predict_scores(test), r.predict_scores(test), rtol=1e-6)
    assert back.mu == pytest.approx(r.mu)


def test_a_model_the_log_never_chose_gets_the_prior():
    bench, X = planted(300)
    log = uniform_log(bench, X)
    log = log.take(log.chosen != 2)  # m2 never chosen: nothing is known of it
    r = make_router("offpolicy").fit(log)
    assert r.fit_info["models_never_chosen"] == 1 and np.isfinite(r.coef_).all()
    assert r.cost_[2] == pytest.approx(float(log.cost.mean()))  # no estimate logged: the log's mean cost


def test_full_labels_are_a_log_where_every_model_was_chosen():
    bench, X = planted(300)
    tr = bench.split("train").with_features(X[bench.splits["train"]])
    log = Feedback.from_split(tr)
    assert len(log) == 4 * len(tr) and (log.propensity == 1).all()
    np.testing.assert_array_equal(log.reward.reshape(len(tr), 4), tr.Y)
    # propensity 1: the DR pseudo-outcomes are the labels themselves, whatever r̂ says
    np.testing.assert_allclose(dr_pseudo_outcomes(np.full((len(log), 4), 0.3), log.chosen, log.propensity,
                                                  log.reward)[np.arange(len(log)), log.chosen], log.reward)
    r = make_router("offpolicy").fit(tr)  # what train.py router=offpolicy does on a benchmark
    test = bench.split("test").with_features(X[bench.splits["test"]])
    assert route_metrics(test, r.route(test), bench.cost_bounds, prefix="")["accuracy"] > 0.75
    with pytest.raises(ValueError, match="learns from a feedback log"):
        make_router("offpolicy").fit(X)


# ------------------------------------------------------------------------------------------ train.py data=feedback
def run(*args, check=True):
    p = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def bench_args(tmp_path_factory):
    """The demo of this checkout when it is built with its features (data/demo), else a small records benchmark on
    the tiny encoders (the dataset decides the right model)."""
    demo = REPO / "data" / "demo"
    if (demo / "data" / "matrices" / "Y.npz").exists() and (demo / "EMBEDDINGS" / "vision").is_dir():
        return ["data=demo"], demo
    from vlrb.data.build import build

    d = tmp_path_factory.mktemp("fb_records")
    rng = np.random.default_rng(0)
    rows = [{"sample_id": f"{ds}/{i}", "dataset": ds, "model_id": m, "prompt": f"a {ds} question {i}",
             "correct": int(rng.random() < (0.9 if j == "ABC".index(ds) else 0.2)), "cost": 1e-5 * 4 ** j}
            for i in range(300) for ds in ["ABC"[i % 3]] for j, m in enumerate(["m0", "m1", "m2", "m3"])]
    pd.DataFrame(rows).to_parquet(d / "r.parquet")
    build(data_cfg(reader="records", records=str(d / "r.parquet"), root=str(d / "bench")), None, progress=False,
          log=lambda *a: None)
    return ["data=records", f"data.records={d / 'r.parquet'}", f"data.root={d / 'bench'}", "encoder=tiny"], d / "bench"


def test_train_on_a_simulated_log_beats_random(bench_args, tmp_path):
    args, root = bench_args
    db = tmp_path / "sim.sqlite"
    from vlrb.jobs.entry import compose
    from vlrb.jobs.feedback import simulate

    # scripts/simulate_feedback.py's job, in this process (the script itself runs in the README's tests)
    summary = simulate(compose("train", ["logger=none", *args], root=REPO), db, policy="uniform")
    assert (tmp_path / "sim.recipe" / "recipe.json").exists() and 0 < summary["mean_reward"] < 1
    run("train.py", "data=feedback", f"data.path={db}", f"data.benchmark={root}", "router=offpolicy", "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}")
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    bench = Benchmark.load(root)
    test = bench.split("test")
    rnd = route_metrics(test, make_router("random").fit(bench.split("train")).route(test), bench.cost_bounds)
    assert m["test/rank_score"] > rnd["test/rank_score"] + 0.05, (m["test/rank_score"], rnd["test/rank_score"])
    assert m["feedback/requests"] == len(bench.splits["train"]) and "feedback/policy_dr" in m
    # the router folder is servable: the logging recipe, mean costs, and the same test choices in a fresh process
    import vlrb

    tr = vlrb.load_router(tmp_path / "run" / "router")
    assert tr.recipe is not None and set(tr.mean_cost) == set(bench.models)
    preds = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    want = preds[preds["split"] == "test"]["model_id"].tolist()
    assert [bench.models[j] for j in tr.route(test)] == want
    # without a benchmark: the log's own off-policy estimates, no test metrics (in this process: no imports to wait for)
    from vlrb.jobs.feedback import train_on_feedback

    (tmp_path / "run2").mkdir()
    m2, preds2 = train_on_feedback(_cfg(db, "save_router=false"), tmp_path / "run2")
    assert "test/rank_score" not in m2 and preds2 is None and m2["feedback/policy_ips"] >= 0
    assert m2["fit/mu"] == pytest.approx(m["fit/mu"])  # the same fit


# ------------------------------------------------------------------------------------------ errors
def _cfg(db, *extra):
    from vlrb.jobs.entry import compose

    return compose("train", ["data=feedback", f"data.path={db}", "router=offpolicy", "logger=none", *extra], root=REPO)


def _log(path, features=True, feedback=True, n=20):
    from vlrb.feedback.store import Decision, FeedbackStore

    store = FeedbackStore(path)
    ds = [Decision(id=f"r{i}", router="x", models=["a", "b"], pool=["a", "b"], chosen="ab"[i % 2], propensity=0.5,
                   costs=[1e-5, 2e-5], features=np.ones(3, np.float32) * i if features else None) for i in range(n)]
    store.log_decisions(ds)
    if feedback:
        for d in ds:
            store.add_feedback(d.id, reward=1.0)
    store.close()
    return path


def test_bad_logs_are_one_line_errors(tmp_path):
    from vlrb.errors import VlrbError
    from vlrb.jobs.feedback import check_feedback, train_on_feedback

    p = run("train.py", "data=feedback", f"data.path={tmp_path / 'none.sqlite'}", "router=offpolicy", "logger=none",
            f"hydra.run.dir={tmp_path / 'r0'}", check=False)
    assert p.returncode == 1 and "error: data.path=" in p.stdout + p.stderr and "Traceback" not in p.stderr
    with pytest.raises(VlrbError, match="no routed request has feedback yet"):
        train_on_feedback(_cfg(_log(tmp_path / "empty.sqlite", feedback=False)), tmp_path)
    with pytest.raises(VlrbError, match="carry no features"):
        train_on_feedback(_cfg(_log(tmp_path / "nofeat.sqlite", features=False)), tmp_path)
    with pytest.raises(VlrbError, match="names no router folder"):
        train_on_feedback(_cfg(_log(tmp_path / "norecipe.sqlite")), tmp_path)
    with pytest.raises(VlrbError, match="partial labels"):
        train_on_feedback(_cfg(tmp_path / "norecipe.sqlite", "router=vlrb_cal"), tmp_path)
    with pytest.raises(VlrbError, match="selection=dev"):
        check_feedback(_cfg(tmp_path / "norecipe.sqlite", "selection=cv"))
    with pytest.raises(VlrbError, match="holds no built benchmark"):
        check_feedback(_cfg(tmp_path / "norecipe.sqlite", f"data.benchmark={tmp_path}"))


def test_simulated_epsilon_log_records_exact_propensities(tmp_path):
    from vlrb.feedback.learn import load_feedback
    from vlrb.feedback.simulate import logging_probabilities, simulate_log

    probs = logging_probabilities("epsilon", 4, np.array([2, 0]), epsilon=0.2)
    np.testing.assert_allclose(probs, [[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]])
    bench, X = planted(200)
    tr = bench.split("train")
    greedy = np.arange(len(tr)) % 4
    simulate_log(tmp_path / "eps.sqlite", bench, X[bench.splits["train"]], policy="epsilon", epsilon=0.2,
                 greedy=greedy, router_name="rule", router_dir=tmp_path, seed=3)
    rows, meta = load_feedback(tmp_path / "eps.sqlite")
    assert meta["router_dir"] == str(tmp_path.resolve()) and meta["simulated"]["policy"] == "epsilon"
    assert len(rows) == len(tr) and 0.7 < (rows.chosen == greedy).mean() < 0.95
    np.testing.assert_allclose(rows.propensity, np.where(rows.chosen == greedy, 0.85, 0.05))
    pos = {s: i for i, s in enumerate(tr.sample_ids)}
    i = np.array([pos[s.split("/", 1)[1]] for s in rows.sample_ids])
    np.testing.assert_array_equal(rows.reward, tr.Y[i, rows.chosen])
    np.testing.assert_allclose(rows.cost, tr.C[i, rows.chosen], rtol=1e-6)
    np.testing.assert_allclose(rows.X, X[bench.splits["train"]][i], rtol=1e-6)
