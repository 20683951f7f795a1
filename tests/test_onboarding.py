"""When the model pool changes: a model joins a trained router from labelled items without a refit (add_model,
ood=lomo, onboard.py), and the outage replay (outage=[...]) routes among the models still up."""
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, data_cfg, make_router
from vlrb.data.benchmark import Benchmark
from vlrb.data.build import build
from vlrb.errors import ConfigError
from vlrb.features.routing_data import RoutingData
from vlrb.onboarding import drop_model, lomo_table, recovered, summarise
from vlrb.routers import read_router
from vlrb.routers.onboard import Onboarded, _sigmoid, add_model, fit_head
from vlrb.routing.metrics import take_rows


def planted(n: int = 600, seed: int = 0):
    """5 models; features say which half of the items m0 (else m1) answers; m2 dear and m3 cheap are right at random;
    `twin` answers exactly as m0 does at half its price."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    side = X[:, 0] > 0
    p = np.stack([np.where(side, 0.9, 0.1), np.where(side, 0.1, 0.9), np.full(n, 0.3), np.full(n, 0.2)], 1)
    Y = (rng.random((n, 4)) < p).astype(np.int8)
    Y = np.column_stack([Y, Y[:, 0]])
    C = np.tile(np.array([1e-4, 1.2e-4, 1e-3, 5e-5, 5e-5], np.float32), (n, 1))
    bench = Benchmark.from_arrays(Y, C, ["m0", "m1", "m2", "m3", "twin"],
                                  datasets=["A" if i % 3 else "B" for i in range(n)])
    splits = {s: bench.split(s).with_features(X[bench.splits[s]]) for s in ("train", "dev", "test")}
    return RoutingData(bench, splits)


def test_head_prior_and_golden_values():
    z = np.array([[0.0, 2.0], [1.0, -1.0]])
    np.testing.assert_array_equal(fit_head(np.zeros((0, 2)), np.zeros(0), 1.0), [0, 1, 0, 0])  # no item: average
    # one item, answered: the MAP moves a, b and β up along that item's design row [1, z̄, z − z̄] = [1, 1, -1, 1]
    th = fit_head(z[:1], np.ones(1), ability_sd=1.0, slope_sd=1.0, similarity_sd=1.0)
    d = np.array([1.0, 1.0, -1.0, 1.0])
    # stationarity by hand: (σ(η) − 1)·d + (θ − θ0) = 0 with θ0 = [0, 1, 0, 0]: θ = θ0 + t·d, t = 1 − σ(1 + 4t)
    t = th[0]
    assert abs(t - (1 - _sigmoid(1 + 4 * t))) < 1e-5 and np.allclose(th, [0, 1, 0, 0] + t * d, atol=1e-5)


def test_a_cheaper_twin_joins_and_takes_over_without_a_refit():
    data = planted()
    minus = drop_model(data, "twin")
    router = make_router("vlrb_cal", n_components=4, bootstrap=100, folds=3).fit(minus["train"])
    frozen = router.coef_.copy()
    train, test = data["train"], data["test"]
    cold = add_model(router, "twin", take_rows(train, np.arange(0)), correct=[], cost=[], price=0.5, known_prices=[1, 1, 1, 1])
    warm = add_model(router, "twin", train, correct=train.Y[:, 4], cost=train.C[:, 4])
    assert isinstance(warm, Onboarded) and warm.models == ["m0", "m1", "m2", "m3", "twin"]
    np.testing.assert_array_equal(router.coef_, frozen)  # the router is not refitted
    p = warm.predict_correctness(test)
    assert np.corrcoef(p[:, 0], p[:, 4])[0, 1] > 0.9  # it learned that it answers like m0
    ch_old, ch_cold, ch_warm = router.route(minus["test"]), cold.route(test), warm.route(test)
    side = test.X[:, 0] > 0
    assert (ch_old[side] == 0).mean() > 0.8  # m0 on its side before
    assert (ch_warm[side] == 4).mean() > 0.8  # the twin, as good for half the price, after
    assert (ch_cold == 4).mean() < (ch_warm == 4).mean()  # an average model with no item is chosen less
    # its cost: the labelled items' $ over the known models' geometric mean there; with no item, the price ratio
    assert warm.cost_ratio_[0] == pytest.approx(5e-5 / np.exp(np.log([1e-4, 1.2e-4, 1e-3, 5e-5]).mean()), rel=1e-5)
    assert cold.cost_ratio_[0] == pytest.approx(0.5)


def test_onboarded_router_saves_loads_and_refuses_a_bad_state(tmp_path):
    data = planted(300)
    minus = drop_model(data, "twin")
    router = make_router("per_dataset").fit(minus["train"])
    train = data["train"]
    joined = add_model(router, "twin", take_rows(train, np.arange(50)), correct=train.Y[:50, 4], cost=train.C[:50, 4],
                       models=data.bench.models)
    joined.save(tmp_path / "r")
    back = read_router(tmp_path / "r")
    assert isinstance(back, Onboarded) and back.models == joined.models and back.label == joined.label
    np.testing.assert_allclose(back.predict_scores(data["test"]), joined.predict_scores(data["test"]))
    # a second newcomer joins the same frozen router
    two = add_model(back, "m9", take_rows(train, np.arange(0)), correct=[], cost=[])
    assert two.models[-1] == "m9" and two.heads_.shape == (2, 6) and two.new_ == ["twin", "m9"]
    with pytest.raises(ValueError, match="already one of the router's models"):
        add_model(joined, "m0", take_rows(train, np.arange(0)), correct=[], cost=[])
    with pytest.raises(ValueError, match="cannot take a new model"):
        add_model(make_router("random").fit(minus["train"]), "twin", take_rows(train, np.arange(0)), correct=[], cost=[])
    state = json.loads((tmp_path / "r" / "router.json").read_text())
    state["n_models"], state["models"] = 6, [*state["models"], "ghost"]
    (tmp_path / "r" / "router.json").write_text(json.dumps(state))
    with pytest.raises(Exception, match="do not fit together"):
        read_router(tmp_path / "r")


def test_leave_one_model_out_table_has_both_ends():
    data = planted()
    rows, best = lomo_table(lambda d: make_router("vlrb_cal", n_components=8, bootstrap=100, folds=3).fit(d["train"]),
                            data, "twin", [0, 20, 200], draws=2, seed=0)
    s = summarise(rows)
    get = {(r["variant"], r["n"]): r for r in s}
    assert get[("ignore", None)]["share_new"] == 0 and get[("onboard", 200)]["draws"] == 2
    assert get[("onboard", 0)]["draws"] == 1 and isinstance(best, Onboarded) and best.new_ == ["twin"]
    # the twin is worth having (retraining on it helps); joined from 200 items it never costs much
    ignore, joined, full = (get[k]["rank_score"] for k in (("ignore", None), ("onboard", 200), ("retrain", None)))
    assert full > ignore and joined > ignore - 0.005
    assert recovered(s, 200)["twin"] == pytest.approx((joined - ignore) / (full - ignore))


def test_pessimism_holds_back_a_newcomer_known_from_few_items():
    data = planted()
    minus = drop_model(data, "twin")
    router = make_router("vlrb_cal", n_components=8, bootstrap=100, folds=3).fit(minus["train"])
    train, test = data["train"], data["test"]
    share = {}
    for n in (10, 300):
        items = take_rows(train, np.arange(n))
        for k in (0.0, 1.0):
            r = add_model(router, "twin", items, correct=train.Y[:n, 4], cost=train.C[:n, 4], pessimism=k)
            share[n, k] = float(np.mean(r.route(test) == 4))
            if k == 0.0:  # no pessimism: the decisions use the head's own estimate, as predict_correctness says
                p = r.predict_correctness(test)
                np.testing.assert_allclose(r._new_p(r._known(test)[0])[:, 0], p[:, 4])
        spread = np.trace(r.head_cov_[0])
        share[n, "spread"] = spread
    assert share[300, "spread"] < share[10, "spread"]  # more items, a surer head
    assert share[300, 0.0] > 0.2  # a cheaper twin known from 300 items takes over much of m0's side
    assert share[10, 1.0] <= share[10, 0.0] and share[300, 1.0] <= share[300, 0.0]
    with pytest.raises(ConfigError, match="ood.model='nope': not a model"):
        drop_model(data, "nope")


def _records(tmp_path, n=240):
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        ds = "AB"[i % 2]
        for j, m in enumerate(["m0", "m1", "m2", "new"]):
            p = {"m0": 0.7 if ds == "A" else 0.1, "m1": 0.7 if ds == "B" else 0.1, "m2": 0.3, "new": 0.95}[m]
            rows.append({"sample_id": f"{ds}/{i}", "dataset": ds, "model_id": m, "correct": int(rng.random() < p),
                         "prompt": f"question {i} about {ds}", "cost": 5e-6 if m == "new" else 1e-5 * (j + 1)})
    pd.DataFrame(rows).to_parquet(tmp_path / "r.parquet")
    build(data_cfg(reader="records", records=str(tmp_path / "r.parquet"), root=str(tmp_path / "b")), None,
          progress=False, log=lambda *a: None)
    return ["data=records", f"data.records={tmp_path / 'r.parquet'}", f"data.root={tmp_path / 'b'}", "logger=none",
            "scoring.throughput=null"]


def test_train_leave_one_model_out_and_outage_as_typed(tmp_path):
    """train.py router=per_dataset ood=lomo ood.model=new: the table, the onboarded router/ (loads and routes),
    and outage=[...] scored on the same run."""
    data = _records(tmp_path)
    args = [*data, "router=per_dataset", "ood=lomo", "ood.model=new", "ood.labelled=[0,120]", "ood.draws=2",
            "outage=[m0]", f"hydra.run.dir={tmp_path / 'run'}"]
    p = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    run = tmp_path / "run"
    m = json.loads((run / "metrics.json").read_text())
    table = pd.read_csv(run / "lomo.csv")
    assert table["variant"].tolist() == ["ignore", "onboard", "onboard", "retrain"]
    assert m["lomo/onboard/120/rank_score"] > m["lomo/ignore/rank_score"] and m["lomo/model"] == "new"
    assert m["test/rank_score"] > m["lomo/ignore/rank_score"]  # the run's router: the first draw of n = 120
    assert m["outage/models"] == "m0" and "outage/test/rank_score" in m
    import vlrb

    tr = vlrb.load_router(run / "router")
    assert tr.models == ["m0", "m1", "m2", "new"] and tr.mean_cost["new"] > 0
    assert len(tr.route(Benchmark.load(tmp_path / "b").split("test"))) == m["test/n"]


@pytest.mark.parametrize("extra, message", [
    (["ood=lomo"], "error: ood=lomo: name the model to leave out"),
    (["ood=lomo", "ood.model=new", "ood.labelled=[-1]"], "ood.labelled must be a list of whole numbers"),
])  # a model the benchmark lacks: test_leave_one_model_out_table_has_both_ends (no process to start)
def test_pool_options_refuse_bad_values_in_one_line(small_records, tmp_path, extra, message):
    args = [*small_records, "router=per_dataset", *extra, f"hydra.run.dir={tmp_path / 'run'}"]
    p = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    said = p.stdout + p.stderr
    assert p.returncode != 0 and "Traceback" not in said and re.search(message, said), said[-1500:]


@pytest.fixture(scope="module")
def small_records(tmp_path_factory):
    return _records(tmp_path_factory.mktemp("records"), n=60)


def test_bad_pool_options_in_process():
    from vlrb.jobs.train import score_outage

    data = planted(300)
    knn = make_router("knn").fit(data["train"])
    with pytest.raises(ConfigError, match=r"outage=\['ghost'\]: \['ghost'\] not among the benchmark's models"):
        score_outage(knn, data, ["ghost"], 0.1, {})
    with pytest.raises(ConfigError, match="at least one model must stay up"):
        score_outage(knn, data, list(data.bench.models), 0.1, {})
    with pytest.raises(ConfigError, match="knn cannot take a new model"):
        lomo_table(lambda d: make_router("knn").fit(d["train"]), data, "twin", [0], retrain=False)


def test_outage_replay_chooses_among_the_models_still_up():
    data = planted(300)
    test = data["test"]
    up = np.array([False, True, True, True, True])
    oracle = make_router("oracle").fit(data["train"])
    ch = oracle.route_among(test, up)
    Y, C = test.Y[:, 1:], test.C[:, 1:]
    by_hand = [1 + (int(np.argmin(np.where(Y[i] == 1, C[i], np.inf))) if Y[i].any() else int(np.argmin(C[i])))
               for i in range(len(test))]
    assert ch.tolist() == by_hand
    rnd = make_router("random", seed=3).fit(data["train"]).route_among(test, up)
    assert (rnd != 0).all() and len(set(rnd.tolist())) == 4
    strongest = make_router("strongest").fit(data["train"])
    acc = data["train"].Y.mean(0)
    assert (strongest.route_among(test, up) == 1 + int(np.argmax(acc[1:]))).all()
    assert (strongest.route_among(test, np.ones(5, bool)) == strongest.route(test)).all()
    # vlrb_cal falling back to one model: under its outage, the next by its own rule, not model 0
    rng = np.random.default_rng(5)
    n = 400
    b = Benchmark.from_arrays((rng.random((n, 5)) < [0.3, 0.36, 0.3, 0.3, 0.3]).astype(np.int8),
                              np.full((n, 5), 1e-4, np.float32), datasets=["A"] * n)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    flat = {s: b.split(s).with_features(X[b.splits[s]]) for s in ("train", "test")}
    cal = make_router("vlrb_cal", n_components=4, bootstrap=100, folds=3).fit(flat["train"])
    assert cal.fallback_ and (cal.route(flat["test"]) == cal.single_).all()
    down = np.ones(5, bool)
    down[cal.single_] = False
    alt = cal.route_among(flat["test"], down)
    u = cal._decide(cal.predict_correctness(flat["test"]), cal._costs(flat["test"].datasets))
    u[:, cal.single_] = -np.inf
    assert (alt != cal.single_).all() and alt.tolist() == u.argmax(1).tolist()  # its own rule, not model 0


def test_an_onboarded_router_folder_is_served(tmp_path):
    """The folder add_model's router is saved to loads with vlrb.load_router and serve.py's app routes to the newcomer."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    import vlrb
    from vlrb.artifact import save_trained_router
    from vlrb.serve.app import create_app
    from vlrb.serve.settings import ServeSettings

    data = planted(300)
    minus = drop_model(data, "twin")
    router = make_router("per_dataset").fit(minus["train"])
    train = data["train"]
    # a newcomer right far more often than every known model: per_dataset's table sends every request to it
    joined = add_model(router, "twin", take_rows(train, np.arange(80)), correct=np.ones(80), cost=train.C[:80, 4])
    mean_cost = {m: 1e-4 for m in joined.models}
    save_trained_router(joined, tmp_path / "router", mean_cost=mean_cost)
    tr = vlrb.load_router(tmp_path / "router")
    assert tr.route_raw(["any question"]) == ["twin"]
    with TestClient(create_app(tr, ServeSettings(model_name="vlrb-test", route_only=True))) as c:
        body = {"model": "vlrb-test", "messages": [{"role": "user", "content": "a question"}]}
        r = c.post("/v1/route", json=body)
        assert r.status_code == 200 and r.json()["model"] == "twin"
        r = c.post("/v1/route", json={**body, "vlrb": {"models": ["m0", "m1"]}})  # the newcomer excluded
        assert r.status_code == 200 and r.json()["model"] in ("m0", "m1")
