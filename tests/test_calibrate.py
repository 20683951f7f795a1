"""Budgets: the μ of the serving rule for a target $/request (vlrb.serve.calibrate, calibrate.py)."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from conftest import REPO, data_cfg
from vlrb.errors import ConfigError
from vlrb.serve.calibrate import (Routed, budget_curve, calibrate, mean_ci, plot_budget_curve, reachable,
                                  solve_mu)


def two_requests() -> Routed:
    """Model 0 costs 1, model 1 is free; request 0 prefers model 0 by 1 (log-odds), request 1 by 0.5.
    So the average cost is 1 for μ <= 0.5, 0.5 for 0.5 < μ <= 1 and 0 beyond (scale 1)."""
    scores = np.array([[1.0, 0.0], [0.5, 0.0]])
    cost = np.array([[1.0, 0.0], [1.0, 0.0]])
    return Routed(scores, cost, cost, np.array([[1, 0], [0, 1]]))


def test_solve_mu_golden_values():
    r = two_requests()
    assert [r.at(mu, 1.0) for mu in (0.0, 0.4, 0.7, 1.5, -3.0)] == [(1.0, 0.5), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5),
                                                                    (1.0, 0.5)]
    mu = solve_mu(r, 0.5, 1.0)
    assert 0.5 < mu < 0.5 + 1e-9 and r.at(mu, 1.0)[0] == 0.5  # the step where the cost crosses the target
    mu = solve_mu(r, 0.0, 1.0)
    assert 1.0 < mu < 1.0 + 1e-9 and r.at(mu, 1.0)[0] == 0.0
    assert r.at(solve_mu(r, 5.0, 1.0), 1.0)[0] == 1.0  # out of reach: the dearest reachable cost


def test_calibration_hits_targets_and_cost_falls_with_mu():
    rng = np.random.default_rng(0)
    n, k = 4000, 4
    price = np.array([1e-5, 5e-5, 2e-4, 1e-3])
    C = price * rng.uniform(0.5, 1.5, (n, k))
    scores = rng.normal(0, 1, (n, k)) + np.linspace(0, 2, k)  # dearer models look better
    Y = (rng.random((n, k)) < np.linspace(0.5, 0.8, k)).astype(np.int8)
    rows = rng.permutation(n)
    part = lambda idx: Routed(scores[idx], np.broadcast_to(price, (len(idx), k)), C[idx], Y[idx])  # noqa: E731
    dev, test = part(rows[:2000]), part(rows[2000:])
    curve = budget_curve(dev, test, scale=price.max())
    assert (np.diff(curve["calib_cost"]) <= 1e-12).all() and (np.diff(curve["test_cost"]) <= 1e-12).all()
    targets = [1e-4, 2.5e-4, 5e-4]
    table = calibrate(dev, test, targets, scale=price.max())
    assert list(table.columns) == ["target", "target_cost", "mu", "calib_cost", "calib_accuracy", "test_cost",
                                   "test_accuracy", "test_cost_error", "test_cost_lo", "test_cost_hi", "reachable",
                                   "reachable_lo", "reachable_hi"]
    assert ((table["test_cost_lo"] <= table["test_cost"]) & (table["test_cost"] <= table["test_cost_hi"])).all()
    width = (table["test_cost_hi"] - table["test_cost_lo"]) / table["test_cost"]
    assert ((width > 0.005) & (width < 0.3)).all()  # 2,000 requests: a few percent of sampling spread
    assert (table["mu"].diff().dropna() < 0).all()  # a bigger budget, a smaller μ
    assert np.allclose(table["calib_cost"], targets, rtol=0.01)  # 2,000 requests: steps are fine
    assert (table["test_cost_error"].abs() < 0.05).all()


def test_a_target_out_of_reach_says_so_and_names_the_range():
    """No μ makes every request cheaper than the cheapest model (or dearer than the dearest): such a target gets no
    μ (it was ±1.678e7, silently), and the reachable range of $ per request is reported."""
    cost = np.array([[1.0, 0.2], [1.0, 0.2]])  # the cheaper model costs 0.2: nothing spends less
    r = Routed(np.array([[1.0, 0.0], [0.5, 0.0]]), cost, cost, np.array([[1, 0], [0, 1]]))
    lo, hi = reachable(r, 1.0)
    assert (lo, hi) == (0.2, 1.0)
    table = calibrate(r, r, [lo / 2, (lo + hi) / 2, hi * 2, float("inf")], 1.0)
    assert table["reachable"].tolist() == [False, True, False, False]
    assert table["mu"].isna().tolist() == [True, False, True, True]
    assert (table["reachable_lo"] == lo).all() and (table["reachable_hi"] == hi).all()


def test_mean_ci_golden_values():
    assert mean_ci(np.full(50, 3.0)) == (3.0, 3.0)  # no spread, no interval
    # half the requests cost 1, half 0: the mean of 400 resampled requests has sd 0.5/20 = 0.025, so the 95%
    # interval is about 0.5 ± 1.96·0.025 = [0.451, 0.549]
    lo, hi = mean_ci(np.r_[np.ones(200), np.zeros(200)], n=4000)
    assert lo == pytest.approx(0.451, abs=0.006) and hi == pytest.approx(0.549, abs=0.006)


def test_plot_writes_a_png(tmp_path):
    r = two_requests()
    table = calibrate(r, r, [0.5], 1.0)
    path = plot_budget_curve(budget_curve(r, r, 1.0), table, tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_job_refuses_bad_settings():
    from vlrb.jobs.calibrate import calibrate as job

    base = {"router_dir": "/no/such/router", "targets": [0.5], "target_unit": "strongest", "calibrate_on": ["dev"]}
    for change, msg in [({"router_dir": "???"}, "router_dir is required"),
                        ({}, "router_dir=/no/such/router does not exist"),
                        ({"router_dir": str(REPO), "targets": []}, "targets must be a non-empty list"),
                        ({"router_dir": str(REPO), "targets": [-1]}, "targets must be a non-empty list"),
                        ({"router_dir": str(REPO), "target_unit": "euro"}, "target_unit must be one of"),
                        ({"router_dir": str(REPO), "calibrate_on": ["test"]}, "never test")]:
        with pytest.raises(ConfigError, match=msg):
            job(OmegaConf.create({**base, **change}))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A k-NN router on the tiny encoders, trained by train.py on a 120-sample records benchmark."""
    from vlrb.data.build import build
    from vlrb.pricing import PriceTable

    d = tmp_path_factory.mktemp("cal")
    (d / "img").mkdir()
    rows = []
    for i in range(120):
        red = i % 2 == 0
        Image.new("RGB", (16, 16), (220, 30, 30) if red else (30, 30, 220)).save(d / "img" / f"{i}.png")
        for j, m in enumerate(["cheap", "mid", "dear"]):
            ok = (j == 0 and red) or (j == 1 and i % 3 == 0) or j == 2
            rows.append({"sample_id": f"s{i:03d}", "dataset": "Shapes", "model_id": m, "correct": int(ok),
                         "prompt": f"What colour is square {i}?", "image": f"img/{i}.png",
                         "input_tokens": 300 + i, "output_tokens": 5 + j})
    pd.DataFrame(rows).to_parquet(d / "r.parquet")
    (d / "prices.yaml").write_text("pricing:\n" + "".join(
        f"  {m}: {{input_price_per_1m: {p}, output_price_per_1m: {p * 4}}}\n"
        for m, p in (("cheap", 0.1), ("mid", 0.5), ("dear", 5.0))))
    build(data_cfg(reader="records", records=str(d / "r.parquet"), root=str(d / "bench")),
          PriceTable.from_yaml(d / "prices.yaml"), progress=False, log=lambda *a: None)
    data = ["data=records", f"data.records={d / 'r.parquet'}", f"data.root={d / 'bench'}"]
    p = subprocess.run([sys.executable, "train.py", *data, f"pricing.path={d / 'prices.yaml'}", "router=knn",
                        "encoder=tiny", "logger=none", f"hydra.run.dir={d / 'run'}", "scoring.throughput=null"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return d, data


def test_calibrate_py_end_to_end(trained):
    d, data = trained
    out = d / "calibration"
    # as typed: no data= (the router folder names the benchmark it was trained on)
    p = subprocess.run([sys.executable, "calibrate.py", f"router_dir={d / 'run' / 'router'}",
                        "targets=[0.3,0.6]", f"hydra.run.dir={out}"], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"calibrating on the benchmark the router was trained on: {(d / 'bench').resolve()}" in p.stdout + p.stderr
    res = json.loads((out / "calibration.json").read_text())
    assert res["reference"]["strongest_model"] == "dear" and res["calibrate_on"] == ["dev"]
    assert [t["target"] for t in res["targets"]] == ["0.3 x dear", "0.6 x dear"]
    ref = res["reference"]["strongest_train_cost"]
    for t, frac in zip(res["targets"], (0.3, 0.6)):
        assert t["target_cost"] == pytest.approx(frac * ref)
        assert 0 <= t["test_accuracy"] <= 1 and t["test_cost"] > 0
        assert t["test_cost_lo"] <= t["test_cost"] <= t["test_cost_hi"]
    assert (out / "budget_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 0.3 x dear |" in (out / "calibration.md").read_text() and "next: python serve.py router_dir=" in p.stdout + p.stderr
    curve = pd.read_csv(out / "budget_curve.csv")
    assert (np.diff(curve["test_cost"]) <= 1e-12).all()


@pytest.mark.parametrize("name", ["serve", "calibrate"])
def test_serve_and_calibrate_configs_compose(name):
    import yaml
    from hydra import compose, initialize_config_dir

    assert yaml.safe_load((REPO / "conf" / f"{name}.yaml").read_text())["defaults"][0] == "_self_"
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose(name, overrides=["router_dir=somewhere"])
    assert cfg.budget.mu == 0.0 and cfg.budget.cost_estimate == "mean_cost" and cfg.router_dir == "somewhere"
    if name == "serve":
        assert cfg.port == 8000 and cfg.host == "127.0.0.1" and cfg.route_only is False
        assert cfg.remote_images.allow is False and cfg.auth.api_keys_env is None
    else:
        assert list(cfg.targets) == [0.25, 0.5, 0.75] and list(cfg.calibrate_on) == ["dev"]
