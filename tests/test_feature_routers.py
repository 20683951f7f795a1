"""Feature-level routers (docs/routers.md#feature-level-routers): KNN, PRkNN, OVR, K-means, Linear, MLP.

Tiny planted benchmarks (a few hundred samples, 16-d features) keep every test at seconds.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vlrb.data.benchmark import Benchmark, compute_cost_bounds
from vlrb.routers import read_router
from vlrb.routers import lit, losses, mlp
from vlrb.routers.knn import copeland_scores, copeland_wins
from vlrb.routing.metrics import route_metrics
from vlrb.routing.soft_labels import hard_labels
from conftest import make_router, router_class, router_names

CONF = Path(__file__).resolve().parents[1] / "conf" / "router"
FEATURE_ROUTERS = ["kmeans", "knn", "linear", "mlp", "ovr", "prknn"]
# small networks and short budgets: every trainable fit takes well under a second
FAST = {"linear": dict(max_epochs=4), "mlp": dict(hidden_sizes=[16], max_epochs=4)}

logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available" banners per fit


def planted(n: int = 600, n_models: int = 5, dim: int = 16, seed: int = 0, noise: float = 0.5):
    """Clusters in feature space, each with one cheap expert model (acc 0.95); the dearest model is a
    generalist (acc 0.7); the rest are weak (0.1). Routing by x to the cluster's expert is both accurate
    and cheap, so a router that reads the features must beat Random and CheapestGlobal."""
    rng = np.random.default_rng(seed)
    groups = n_models - 1
    g = rng.integers(0, groups, n)
    centers = rng.normal(0, 1, (groups, dim))
    X = (centers[g] + noise * rng.normal(0, 1, (n, dim))).astype(np.float32)
    p = np.full((n, n_models), 0.1)
    p[:, -1] = 0.7
    p[np.arange(n), g] = 0.95
    Y = (rng.random((n, n_models)) < p).astype(np.int8)
    C = (np.geomspace(1e-5, 1e-3, n_models) * rng.uniform(0.8, 1.2, (n, n_models))).astype(np.float32)
    bench = Benchmark.from_arrays(Y, C)
    splits = {s: bench.split(s).with_features(X[bench.splits[s]]) for s in ("train", "dev", "test")}
    return bench, splits


@pytest.fixture(scope="module")
def data():
    return planted()


def _fit(name: str, splits, **kw):
    return make_router(name, **{**FAST.get(name, {}), **kw}).fit(splits["train"], splits["dev"])


# ------------------------------------------------------------------------------------------ registry/configs
def test_config_group_and_classes_name_the_same_routers():
    """router=<name> picks conf/router/<name>.yaml, whose `_target_` class calls itself <name>."""
    assert set(FEATURE_ROUTERS) <= set(router_names(inputs="features"))
    for name in router_names():
        assert router_class(name).name == name
    for name in FEATURE_ROUTERS:
        router = make_router(name)
        assert router.inputs == ("features",) and router.name == name
    assert set(router_names(inputs="features", trainable=True)) >= {"linear", "mlp"}


def test_config_defaults_are_the_paper_hyperparameters():
    knn = make_router("knn")
    assert (knn.k, knn.weights, knn.metric) == (5, "distance", "cosine")
    assert make_router("prknn").k == 7
    ovr = make_router("ovr")
    assert (ovr.max_iter, ovr.class_weight) == (1000, "balanced")
    lin, net = make_router("linear"), make_router("mlp")
    assert (lin.cost_scale, lin.lr, lin.l2_C, lin.batch_size, lin.max_epochs, lin.patience) == (1.0, 0.01, 1.0, None, 200, 3)
    assert (net.cost_scale, net.lr, net.weight_decay, net.batch_size, net.max_epochs) == (100.0, 1e-3, 1e-4, 1024, 300)
    assert net.hidden_sizes == [2048, 1024] and net.patience == 3 and net.scheme == "exp"
    for p in ("linear", "mlp"):  # the YAML and the constructor agree
        params = {k: v for k, v in yaml.safe_load((CONF / f"{p}.yaml").read_text()).items()
                  if not k.startswith("_") and k not in ("lam", "seed")}
        r = make_router(p)
        assert all(getattr(r, k) == (list(v) if isinstance(v, list) else v) for k, v in params.items()), p
    with pytest.raises(ValueError, match="lambda"):
        make_router("mlp", lam=-1)


# ------------------------------------------------------------------------------------------ every router
@pytest.mark.parametrize("name", [n for n in router_names(inputs="features") if "answers" not in router_class(n).inputs])
def test_every_feature_router_fits_predicts_and_round_trips(data, name, tmp_path):
    bench, splits = data
    router = _fit(name, splits)
    test = splits["test"]
    scores = router.predict_scores(test)
    assert scores.shape == (len(test), bench.n_models) and np.isfinite(scores).all()
    choice = router.route(test)
    assert choice.dtype == np.int64 and choice.min() >= 0 and choice.max() < bench.n_models
    assert isinstance(router.fit_info, dict) and router.fit_info.get("fit_seconds", 0) >= 0

    router.save(tmp_path / "r")
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert "router.json" in files and not any(f.endswith((".pkl", ".pickle")) for f in files)
    again = read_router(tmp_path / "r")
    assert type(again) is type(router) and again.get_params() == router.get_params()
    np.testing.assert_array_equal(again.predict_scores(test), scores)
    with pytest.raises(ValueError, match="features"):
        router.route(bench.split("test"))  # no features attached: a clear error


def test_routers_need_features_and_a_fit(data):
    _, splits = data
    for name in FEATURE_ROUTERS:
        with pytest.raises(RuntimeError, match="fit"):
            make_router(name).route(splits["test"])


# ------------------------------------------------------------------------------------------ behaviour
def test_feature_routers_beat_random_and_cheapest_on_a_planted_rule():
    bench, s = planted(n=1500, seed=1)
    bounds = bench.cost_bounds
    rank = {}
    routers = {"random": {}, "cheapest": {}, "knn": {}, "mlp": dict(hidden_sizes=[64], max_epochs=60, patience=5)}
    for name, kw in routers.items():
        r = make_router(name, **kw).fit(s["train"], s["dev"])
        rank[name] = route_metrics(s["test"], r.route(s["test"]), bounds)["test/rank_score"]
    floor = max(rank["random"], rank["cheapest"])
    assert rank["knn"] > floor + 0.1, rank
    assert rank["mlp"] > floor + 0.1, rank


# ------------------------------------------------------------------------------------------ labels the nets see
class Spy:
    """Wraps lit.fit_module: records the loaders a router hands it, then trains as usual."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.real = lit.fit_module

    def __call__(self, module, train_loader, val_loader, ctx, **kw):
        self.calls.append((module, train_loader, val_loader, ctx))
        return self.real(module, train_loader, val_loader, ctx, **kw)


@pytest.fixture
def spy(monkeypatch):
    s = Spy()
    monkeypatch.setattr(lit, "fit_module", s)
    return s


@pytest.mark.parametrize("lam", ["inf", 0])
def test_targets_are_hard_at_inf_and_uniform_over_correct_at_zero(data, spy, lam):
    _, splits = data
    train, dev, test = splits["train"], splits["dev"], splits["test"]
    make_router("mlp", lam=lam, hidden_sizes=[8], max_epochs=1).fit(train, dev)
    _, train_loader, val_loader, _ = spy.calls[-1]
    got = train_loader.ds.arrays
    keep = train.Y.any(1)  # rows no model answers are dropped from training
    assert len(got["targets"]) == keep.sum() < len(train)
    np.testing.assert_array_equal(got["x"].numpy(), train.X[keep])
    t = got["targets"].numpy()
    Y = train.Y[keep] > 0
    if lam == "inf":  # one-hot on the cheapest correct model
        expected = np.eye(train.Y.shape[1], dtype=np.float32)[hard_labels(train.Y[keep], train.C[keep])]
        np.testing.assert_array_equal(t, expected)
    else:  # uniform over the correct models
        np.testing.assert_allclose(t, Y / Y.sum(1, keepdims=True), atol=1e-7)

    # the validation data is dev, unfiltered; no test row reaches the module
    val = val_loader.ds.arrays
    np.testing.assert_array_equal(val["x"].numpy(), dev.X)
    np.testing.assert_array_equal(val["Y"].numpy(), dev.Y)
    np.testing.assert_array_equal(val["C"].numpy(), dev.C)
    seen = np.concatenate([got["x"].numpy(), val["x"].numpy()])
    assert not (seen[:, None, :] == test.X[None, :, :]).all(2).any()


def test_linear_loss_has_the_upstream_l2_term():
    module = mlp.LinearModule(4, 3, l2_C=2.0)
    x, t = torch.randn(5, 4), torch.softmax(torch.randn(5, 3), 1)
    batch = {"x": x, "targets": t}
    logits = module(batch)
    theta = sum(p.pow(2).sum() for p in module.parameters())
    expected = losses.soft_cross_entropy(logits, t) + theta / 4.0
    torch.testing.assert_close(module.loss(logits, batch), expected)


# ------------------------------------------------------------------------------------------ dev selects
def test_early_stopping_restores_the_epoch_that_is_best_on_dev(data, monkeypatch):
    """A scripted val/rank_score (best at epoch 1): the restored weights are epoch 1's, training stops
    `patience` epochs later, and nothing else (train loss, test) can move the choice."""
    _, splits = data
    script = [0.10, 0.50, 0.30, 0.20, 0.45, 0.90, 0.95]  # 0.90 comes after patience (3) ran out
    snapshots: dict[int, dict] = {}

    class Scripted(mlp.MLPModule):
        def on_validation_epoch_end(self):
            self._val.clear()
            e = self.current_epoch
            snapshots[e] = {k: v.detach().clone() for k, v in self.state_dict().items()}
            self.log("val/rank_score", script[e])

    router = make_router("mlp", hidden_sizes=[8], max_epochs=len(script), patience=3)
    monkeypatch.setattr(router, "make_module", lambda d, k: Scripted(d, k, **router.module_kwargs()))
    router.fit(splits["train"], splits["dev"])
    assert sorted(snapshots) == [0, 1, 2, 3, 4]  # stopped after 3 epochs without improvement
    assert router.fit_info["best_val_rank_score"] == pytest.approx(0.5)
    final = router.module_.state_dict()
    for k, v in snapshots[1].items():
        torch.testing.assert_close(final[k], v)
    assert not all(torch.equal(final[k], v) for k, v in snapshots[4].items())


def test_selected_score_is_the_dev_score_of_the_restored_weights(data):
    """The reported best val/rank_score is what the final router scores on dev (not on test or train)."""
    _, s = data
    router = make_router("mlp", hidden_sizes=[16], max_epochs=30).fit(s["train"], s["dev"])
    bounds = compute_cost_bounds(s["train"].C, s["train"].models)  # the default context's bounds
    dev_rank = route_metrics(s["dev"], router.route(s["dev"]), bounds, prefix="val/")["val/rank_score"]
    assert router.fit_info["best_val_rank_score"] == pytest.approx(dev_rank, abs=1e-6)
    assert router.fit_info["epochs"] >= 1 and "label_diagnostics" in router.fit_info


def test_fit_without_dev_trains_the_full_budget(data):
    _, s = data
    router = make_router("linear", max_epochs=3).fit(s["train"], None)
    assert router.fit_info["epochs"] == 3 and router.route(s["test"]).shape == (len(s["test"]),)


def test_fits_do_not_repeat_lightnings_own_deprecation_warnings(data, recwarn):
    """Lightning calls a torch API torch deprecates, once per fit; a user can do nothing about it."""
    _, s = data
    make_router("linear", max_epochs=1).fit(s["train"], s["dev"])
    make_router("linear", max_epochs=1).fit(s["train"], None)
    assert not [w for w in recwarn if "LeafSpec" in str(w.message)]


# ------------------------------------------------------------------------------------------ PRkNN golden values
# 3 neighbours × 3 models.  m beats b: Y_m > Y_b, or Y_m = Y_b and C_m < C_b.
#   nb 1 (w=1): Y 1 1 0, C 3 1 2 -> m1 beats m0 on cost, both beat m2: wins [1, 2, 0]
#   nb 2 (w=2): Y 0 1 1, C 1 2 2 -> m1 and m2 tie exactly (no win):    wins [0, 1, 1]
#   nb 3 (w=3): Y 1 0 1, C 1 1 5 -> m0 beats m2 on cost:              wins [2, 0, 1]
# score = 1·[1,2,0] + 2·[0,1,1] + 3·[2,0,1] = [7, 4, 5] -> model 0. Without the cost tie-break it is [4, 3, 5].
GOLD_Y = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=np.int8)
GOLD_C = np.array([[3, 1, 2], [1, 2, 2], [1, 1, 5]], dtype=np.float32)


def test_copeland_golden_value():
    np.testing.assert_array_equal(copeland_wins(GOLD_Y, GOLD_C), [[1, 2, 0], [0, 1, 1], [2, 0, 1]])
    scores = copeland_scores(np.array([[1.0, 2.0, 3.0]]), GOLD_Y[None], GOLD_C[None])
    np.testing.assert_allclose(scores, [[7, 4, 5]])


def test_prknn_router_golden_value_and_brute_force_agreement():
    # uniform weights: 3 training samples, all neighbours of any query (k=3) -> [1+0+2, 2+1+0, 0+1+1]
    bench = Benchmark.from_arrays(GOLD_Y, GOLD_C, splits=["train"] * 3)
    X = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    train = bench.split("train").with_features(X)
    router = make_router("prknn", k=3, weights="uniform").fit(train)
    np.testing.assert_allclose(router.predict_scores(train), [[3, 3, 2]] * 3)
    assert router.route(train).tolist() == [0, 0, 0]  # tie 3-3 -> the first maximum

    # distance weights on a random set equal the (n, k, K, K) brute-force definition
    rng = np.random.default_rng(0)
    Y = (rng.random((50, 4)) < 0.5).astype(np.int8)
    Y[:, 0] = 1  # every row answerable, so no row is dropped and indices line up
    C = rng.choice([1e-5, 2e-5, 1e-4], (50, 4)).astype(np.float32)  # repeated costs exercise exact ties
    b = Benchmark.from_arrays(Y, C, splits=["train"] * 40 + ["test"] * 10)
    Xr = rng.normal(size=(50, 6)).astype(np.float32)
    tr, te = b.split("train").with_features(Xr[:40]), b.split("test").with_features(Xr[40:])
    r = make_router("prknn", k=5).fit(tr)
    dist, idx = r.index_.kneighbors(te.X)
    w = 1.0 / (1e-6 + dist)
    Yn, Cn = tr.Y[idx].astype(int), tr.C[idx]
    beats = (Yn[..., :, None] > Yn[..., None, :]) | ((Yn[..., :, None] == Yn[..., None, :]) & (Cn[..., :, None] < Cn[..., None, :]))
    brute = np.einsum("nk,nkmb->nm", w, beats.astype(float))
    np.testing.assert_allclose(r.predict_scores(te), brute, rtol=1e-6)


# ------------------------------------------------------------------------------------------ small semantics
def test_knn_gives_zero_to_models_never_cheapest_correct(data):
    _, s = data
    Y = s["train"].Y.copy()
    Y[:, 1] = 0  # model 1 is never correct, so never the cheapest correct one
    r = make_router("knn").fit(dataclasses.replace(s["train"], Y=Y))
    assert 1 not in r.labels_
    p = r.predict_scores(s["test"])
    assert (p[:, 1] == 0).all()
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("weights", ["distance", "uniform"])
def test_knn_and_neighbours_match_scikit_learn(weights):
    """The cosine index + vote reproduce KNeighborsClassifier / NearestNeighbors(metric='cosine'),
    including queries that coincide with training points (sklearn gives those weight 1, others 0)."""
    from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

    rng = np.random.default_rng(3)
    n_tr, n_te, k_models = 300, 60, 6
    Y = (rng.random((n_tr + n_te, k_models)) < 0.4).astype(np.int8)
    Y[:, 0] = 1  # every row answerable: no row is dropped, so sklearn sees the same training set
    C = (rng.uniform(1e-5, 1e-3, (n_tr + n_te, k_models))).astype(np.float32)
    X = rng.normal(size=(n_tr + n_te, 12)).astype(np.float32)
    X[n_tr:n_tr + 5] = 3.0 * X[:5]  # same direction as training points: cosine distance 0
    b = Benchmark.from_arrays(Y, C, splits=["train"] * n_tr + ["test"] * n_te)
    tr, te = b.split("train").with_features(X[:n_tr]), b.split("test").with_features(X[n_tr:])

    router = make_router("knn", weights=weights).fit(tr)
    labels = hard_labels(tr.Y, tr.C)
    clf = KNeighborsClassifier(n_neighbors=5, weights=weights, metric="cosine").fit(tr.X, labels)
    expected = np.zeros((n_te, k_models))
    expected[:, clf.classes_] = clf.predict_proba(te.X)
    np.testing.assert_allclose(router.predict_scores(te), expected, rtol=1e-5, atol=1e-6)

    dist, idx = make_router("prknn", k=7).fit(tr).index_.kneighbors(te.X)
    d_ref, i_ref = NearestNeighbors(n_neighbors=7, metric="cosine").fit(tr.X).kneighbors(te.X)
    np.testing.assert_array_equal(np.sort(idx, 1), np.sort(i_ref, 1))
    np.testing.assert_allclose(dist, d_ref, atol=1e-6)


def test_ovr_constant_models_and_kmeans_prototypes():
    rng = np.random.default_rng(0)
    n = 80
    Y = np.stack([rng.random(n) < 0.5, np.zeros(n), np.ones(n)], 1).astype(np.int8)  # m1 never, m2 always correct
    C = np.tile([1e-5, 1e-4, 1e-3], (n, 1)).astype(np.float32)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    b = Benchmark.from_arrays(Y, C, splits=["train"] * n)
    tr = b.split("train").with_features(X)
    p = make_router("ovr").fit(tr).predict_scores(tr)
    assert (p[:, 1] == 0).all() and (p[:, 2] == 1).all() and ((p[:, 0] > 0) & (p[:, 0] < 1)).all()

    km = make_router("kmeans").fit(tr)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    m0 = Xn[Y[:, 0] == 1].mean(0)
    np.testing.assert_allclose(km.prototypes_[0], m0 / np.linalg.norm(m0), rtol=1e-5)
    allm = Xn.mean(0)  # a model that answers nothing gets the centroid of all samples
    np.testing.assert_allclose(km.prototypes_[1], allm / np.linalg.norm(allm), rtol=1e-5)
    np.testing.assert_allclose(km.predict_scores(tr), Xn @ km.prototypes_.T, rtol=1e-5, atol=1e-6)


def test_lambda_round_trips_through_save(data, tmp_path):
    _, s = data
    r = make_router("linear", lam=float("inf"), max_epochs=2).fit(s["train"], s["dev"])
    r.save(tmp_path / "lin")
    again = router_class("linear").load(tmp_path / "lin")
    assert again.lam == "inf" and again.fit_info["label_diagnostics"]["effective_models"] == pytest.approx(1.0)


def test_fast_inference_path_matches_the_network(data):
    _, s = data
    for name in ("linear", "mlp"):
        r = _fit(name, s)
        with torch.inference_mode():
            ref = r.module_.net(torch.from_numpy(s["test"].X)).numpy()
        np.testing.assert_allclose(r.predict_scores(s["test"]), ref, rtol=1e-5, atol=1e-5)


def test_fit_context_from_train_py_is_honoured(data, tmp_path):
    """train.py's context (debug=fast style: one epoch, few batches) overrides the router's budget; its
    callbacks config reaches the trainer; the checkpoint does not outlive the fit (weights are stored once,
    in router/); fitting without dev accepts the same preset."""
    _, s = data
    from vlrb.components import instantiate
    from vlrb.jobs.entry import compose

    cfg = compose("train", ["trainer=cpu", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
                            "+trainer.limit_val_batches=1", "+callbacks.early_stopping.min_delta=0.5",
                            "+callbacks.timer={_target_: lightning.pytorch.callbacks.Timer, _partial_: true}"])
    ctx = lit.FitContext(trainer=instantiate(cfg.trainer),
                         callbacks={k: instantiate(v) for k, v in cfg.callbacks.items()})
    stop = ctx.selection_callbacks(str(tmp_path), 3)[0][1]
    assert stop.min_delta == 0.5 and stop.patience == 3
    r = make_router("mlp", hidden_sizes=[8], batch_size=32)
    r.fit(s["train"], s["dev"], ctx)
    assert r.fit_info["epochs"] == 1 and "checkpoint" not in r.fit_info
    r.fit(s["train"], None, ctx)
    assert r.fit_info["epochs"] == 1
    bad = lit.FitContext(trainer={"accelerator": "cpu"},
                         callbacks={"early_stopping": functools.partial(lit.early_stopping_on_dev, monitor="test/accuracy")})
    with pytest.raises(ValueError, match="must monitor a val"):
        bad.selection_callbacks(str(tmp_path), 3)


def test_loader_choice_for_distributed_trainers():
    ds = lit.DictDataset(x=np.zeros((10, 2), np.float32))
    assert not mlp.is_distributed({"accelerator": "cpu", "devices": 1})
    assert isinstance(lit.make_loader(ds, 4, shuffle=True), lit.TensorBatches)
    for trainer in ({"strategy": "ddp", "devices": -1}, {"devices": 4}, {"devices": 1, "num_nodes": 2}):
        assert mlp.is_distributed(trainer)
    loader = lit.make_loader(ds, 4, shuffle=True, distributed=True)
    assert isinstance(loader, torch.utils.data.DataLoader)  # Lightning shards it per rank


def test_knn_with_another_metric_uses_sklearn_and_round_trips(data, tmp_path):
    _, s = data
    r = make_router("knn", metric="euclidean").fit(s["train"])
    r.save(tmp_path / "k")
    np.testing.assert_array_equal(read_router(tmp_path / "k").predict_scores(s["test"]), r.predict_scores(s["test"]))
