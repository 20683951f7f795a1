"""Cascades evaluated by replay (docs/routers.md#cascades): the accounting (a cascade's cost is the sum of its
calls, its accuracy that of its last answer), the rule and learned stop policies against hand-computed replays,
persistence, the per-request budget knob, selection=cv, and clear errors without answers."""
import numpy as np
import pytest

from conftest import make_router
from vlrb.data.benchmark import Benchmark
from vlrb.routers.base import read_router
from vlrb.data.answers import answer_table
from vlrb.routers.cascade import STOP
from vlrb.routing.calls import Calls
from vlrb.routing.metrics import route_metrics

LETTERS = np.array(list("ABCD"))


def toy(n=500, seed=0, malformed=0.5):
    """4 models (dearer = better), choice items with 4 options; a wrong answer is malformed with prob. `malformed`,
    else a wrong letter; features carry each item's difficulty."""
    rng = np.random.default_rng(seed)
    skill = np.array([0.35, 0.5, 0.65, 0.8])
    price = np.array([0.1, 0.3, 1.0, 3.0]) * 1e-3
    diff = rng.normal(size=n)
    p = 1 / (1 + np.exp(-(np.log(skill / (1 - skill))[None] - 1.5 * diff[:, None])))
    Y = (rng.random((n, 4)) < p).astype(np.int8)
    C = (price[None] * rng.uniform(0.8, 1.2, (n, 4))).astype(np.float32)
    gold = rng.integers(0, 4, n)
    answers = np.empty((n, 4), object)
    for j in range(4):
        wrong = LETTERS[(gold + rng.integers(1, 4, n)) % 4]
        bad = rng.random(n) < malformed
        answers[:, j] = np.where(Y[:, j] == 1, LETTERS[gold], np.where(bad, "I cannot tell from the image", wrong))
    bench = Benchmark.from_arrays(Y, C, answers=answers, answer_format="choice", n_options=4)
    X = np.c_[diff + rng.normal(0, 0.5, n), rng.normal(size=(n, 5))].astype(np.float32)
    return bench, X


@pytest.fixture(scope="module")
def data():
    bench, X = toy()
    return bench, {s: bench.split(s).with_features(X[bench.splits[s]]) for s in ("train", "dev", "test")}


def _metrics(split, choice, bench):
    return route_metrics(split, choice, bench.cost_bounds, prefix="", breakdown=False)


# ------------------------------------------------------------------------------------------ accounting
def test_calls_accounting_by_hand():
    C = np.array([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])
    calls = Calls(np.array([[0, 2, -1], [1, -1, -1]]))
    np.testing.assert_array_equal(calls.n_calls, [2, 1])
    np.testing.assert_array_equal(calls.final, [2, 1])
    np.testing.assert_array_equal(calls.cost(C), [5.0, 2.0])
    assert calls.labels(["a", "b", "c"]) == ["a>c", "b"]
    assert (Calls.from_labels(["a>c", "b"], ["a", "b", "c"]).order == calls.order[:, :2]).all()
    with pytest.raises(ValueError, match="twice"):
        Calls(np.array([[0, 0]])).validate(1, 3)
    with pytest.raises(ValueError, match="after a request's last call"):
        Calls(np.array([[0, -1, 1]])).validate(1, 3)
    with pytest.raises(ValueError, match="called no model"):
        Calls(np.array([[-1, -1]])).validate(1, 3)
    with pytest.raises(KeyError, match="'z'"):
        Calls.from_labels(["a>z"], ["a", "b"])


def test_metrics_of_a_cascade_are_its_last_answer_and_every_call_paid(data):
    bench, s = data
    te = s["test"]
    n = len(te)
    order = np.full((n, 2), -1)
    order[:, 0] = 0
    order[::2, 1] = 3  # every other request escalates to model 3
    m = _metrics(te, Calls(order), bench)
    rows = np.arange(n)
    final = np.where(rows % 2 == 0, 3, 0)
    assert m["accuracy"] == pytest.approx(te.Y[rows, final].mean())
    assert m["avg_cost"] == pytest.approx((te.C[:, 0] + np.where(rows % 2 == 0, te.C[:, 3], 0)).mean(), rel=1e-6)
    assert m["calls_mean"] == pytest.approx(1.5, abs=0.01) and m["escalated_share"] == pytest.approx(0.5, abs=0.01)


def _forced(name, chain, data, **kw):
    bench, s = data
    r = make_router(name, **kw).fit(s["train"])
    r.chain_ = np.asarray(chain, np.int64)
    return r


def test_a_cascade_that_always_stops_at_step_one_is_that_model(data):
    bench, s = data
    te = s["test"]
    r = _forced("cascade_validity", [1, 3], data)
    all_valid = te.answers.copy()
    all_valid[:] = "B"
    calls = r.route(_with_answers(te, all_valid))
    assert (calls.n_calls == 1).all() and (calls.final == 1).all()
    single = _metrics(te, np.full(len(te), 1), bench)
    replay = _metrics(te, calls, bench)
    assert (replay["accuracy"], replay["avg_cost"]) == (single["accuracy"], pytest.approx(single["avg_cost"]))


def test_a_cascade_that_never_stops_is_the_chains_last_model_at_the_chains_cost(data):
    bench, s = data
    te = s["test"]
    r = _forced("cascade_validity", [0, 2, 3], data, max_calls=3)
    none_valid = te.answers.copy()
    none_valid[:] = "no idea"
    calls = r.route(_with_answers(te, none_valid))
    assert (calls.order == [0, 2, 3]).all()
    m = _metrics(te, calls, bench)
    assert m["accuracy"] == pytest.approx(te.Y[:, 3].mean())
    assert m["avg_cost"] == pytest.approx(te.C[:, [0, 2, 3]].sum(1).mean(), rel=1e-6)


def _with_answers(split, answers):
    import dataclasses

    return dataclasses.replace(split, answers=answers)


# ------------------------------------------------------------------------------------------ the rule cascades
def test_validity_replay_matches_a_hand_replay_and_its_chain_is_the_best_on_train(data):
    bench, s = data
    r = make_router("cascade_validity", max_calls=2).fit(s["train"])
    a, b = r.chain_
    te = s["test"]
    valid, _ = answer_table(te.answers, te.answer_format, te.n_options)
    calls = r.route(te)
    for i in range(len(te)):
        expect = [a] if valid[i, a] else [a, b]
        assert list(calls.order[i][calls.order[i] >= 0]) == expect
    # the chosen chain beats every other two-model chain and every single model on train (its own objective)
    tr = s["train"]
    V, _ = answer_table(tr.answers, tr.answer_format, tr.n_options)
    best = r.fit_info["train_objective"]
    from vlrb.routing.metrics import rank_score
    for x in range(4):
        for y in range(4):
            if x != y:
                acc = np.where(V[:, x], tr.Y[:, x], tr.Y[:, y]).mean()
                cost = (tr.C[:, x] + np.where(V[:, x], 0, tr.C[:, y])).mean()
                cb = r._bounds(tr)
                assert rank_score(acc, cost, cb["cmin"], cb["cmax"], r.beta) <= best + 1e-9


def test_agreement_replay_matches_a_hand_replay(data):
    bench, s = data
    r = make_router("cascade_agreement").fit(s["train"])
    a, b, c = r.chain_
    te = s["test"]
    calls = r.route(te)
    for i in range(len(te)):
        x, y = te.answers[i, a], te.answers[i, b]
        agree = x == y and x in "ABCD"
        assert list(calls.order[i][calls.order[i] >= 0]) == ([a, b] if agree else [a, b, c])
    with pytest.raises(ValueError, match="max_calls must be 3"):
        make_router("cascade_agreement", max_calls=2)


# ------------------------------------------------------------------------------------------ learned cascades
@pytest.mark.parametrize("name,kw", [("cascade_chain", {}), ("cascade_chain", {"max_calls": 3}),
                                     ("cascade_verify", {})])
def test_learned_cascades_fit_replay_and_round_trip(data, name, kw, tmp_path):
    bench, s = data
    r = make_router(name, n_components=4, folds=3, **kw).fit(s["train"])
    te = s["test"]
    calls = r.route(te)
    assert isinstance(calls, Calls) and calls.order.shape[1] <= r.max_calls
    m = _metrics(te, calls, bench)
    strongest = _metrics(te, np.full(len(te), 3), bench)
    cheapest = _metrics(te, np.full(len(te), 0), bench)
    assert m["rank_score"] > min(strongest["rank_score"], cheapest["rank_score"])
    r.save(tmp_path / "r")
    again = read_router(tmp_path / "r")
    assert type(again) is type(r)
    np.testing.assert_array_equal(again.route(te).order, calls.order)


def test_thresholds_are_fitted_on_training_rows_only(data):
    """Changing every test row's labels and answers changes nothing the cascade learned."""
    bench, s = data
    rng = np.random.default_rng(5)
    Y2, ans2 = bench.Y.copy(), bench.answers.copy()
    test = bench.splits["test"]
    Y2[test] = rng.integers(0, 2, Y2[test].shape)
    ans2[test] = rng.choice(np.array(["A", "B", "zzz"], dtype=object), ans2[test].shape)
    other = Benchmark.from_arrays(Y2, bench.C, bench.models, sample_ids=bench.sample_ids, splits=bench.meta["split"],
                                  answers=ans2, answer_format="choice", n_options=4)
    X = np.zeros((bench.n_samples, s["train"].X.shape[1]), np.float32)
    X[bench.splits["train"]] = s["train"].X
    for name, kw in (("cascade_validity", {}), ("cascade_chain", {"n_components": 4, "folds": 3}),
                     ("cascade_verify", {"n_components": 4, "folds": 3})):
        one = make_router(name, **kw).fit(s["train"])
        two = make_router(name, **kw).fit(other.split("train").with_features(X[other.splits["train"]]))
        assert one.fit_info == two.fit_info, name
        for key in ("chain_", "thresholds_", "calibrators_"):
            if hasattr(one, key):
                np.testing.assert_array_equal(getattr(one, key), getattr(two, key))


def test_mu_per_request_stops_earlier_as_it_grows(data):
    bench, s = data
    r = make_router("cascade_chain", n_components=4, folds=3).fit(s["train"])
    te = s["test"]
    order = r.first(te)[:, None]
    seen = te.answers[np.arange(len(te)), order[:, 0]][:, None]
    escalated = [int((r.next_call(te, order, seen, mu=mu) != STOP).sum()) for mu in (-2.0, 0.0, 0.5, 5.0)]
    assert escalated == sorted(escalated, reverse=True) and escalated[0] > escalated[-1]
    assert escalated[1] == int((r.route(te).n_calls > 1).sum())


# ------------------------------------------------------------------------------------------ errors, selection
def test_a_benchmark_without_answers_says_what_is_missing(data):
    bench, s = data
    old = Benchmark.from_arrays(bench.Y, bench.C, bench.models)
    with pytest.raises(ValueError, match="build_data.py"):
        make_router("cascade_validity").fit(old.split("train"))


def test_selection_cv_cross_validates_cascades(data):
    from vlrb.selection import select_and_refit

    bench, s = data

    class D(dict):
        pass

    d = D(train=s["train"], dev=s["dev"])
    d.bench = bench
    sel = select_and_refit(lambda v: make_router("cascade_validity", max_calls=v["router.max_calls"]),
                           [{"router.max_calls": 1}, {"router.max_calls": 2}], d, None, folds=3)
    assert [r["router.max_calls"] for r in sel.table] == [1, 2]
    best = max(sel.table, key=lambda r: r["rank_score"])
    assert sel.values == {"router.max_calls": best["router.max_calls"]}
    assert sel.metrics["val/rank_score"] == pytest.approx(best["rank_score"])
    assert sel.metrics["val/calls_mean"] >= 1.0 and sel.router.max_calls == best["router.max_calls"]


def test_a_chain_that_never_or_always_stops_saves_and_loads(data, tmp_path):
    """Thresholds beyond every score (stop always / never) are finite numbers: the folder loads."""
    from vlrb.routers.cascade_learned import ALWAYS, NEVER

    bench, s = data
    r = make_router("cascade_chain", n_components=4, folds=3).fit(s["train"])
    te = s["test"]
    for tau, calls in ((NEVER, 2), (ALWAYS, 1)):
        r.thresholds_ = np.asarray([tau])
        r.save(tmp_path / str(tau))
        again = read_router(tmp_path / str(tau))
        assert (again.route(te).n_calls == calls).all()


def test_objective_match_keeps_the_best_single_models_accuracy_for_less(data):
    """objective=match: on the training rows, at least the best single model's accuracy, at no more than its cost,
    and the cheapest chain that does so (checked against every two-model validity chain by hand)."""
    from vlrb.routing.metrics import best_single_model

    bench, s = data
    tr = s["train"]
    r = make_router("cascade_validity", objective="match", max_calls=2).fit(tr)
    ref = best_single_model(tr, r._bounds(tr), r.beta)
    info = r.fit_info
    assert info["train_accuracy"] >= tr.Y[:, ref].mean() - 1e-12
    assert info["train_avg_cost"] <= tr.C[:, ref].astype(float).mean() * (1 + 1e-6)
    V, _ = answer_table(tr.answers, tr.answer_format, tr.n_options)
    for x in range(4):
        for y in range(4):
            if x != y:
                acc = np.where(V[:, x], tr.Y[:, x], tr.Y[:, y]).mean()
                cost = (tr.C[:, x] + np.where(V[:, x], 0, tr.C[:, y])).mean()
                if acc >= tr.Y[:, ref].mean():
                    assert cost >= info["train_avg_cost"] * (1 - 1e-6)
