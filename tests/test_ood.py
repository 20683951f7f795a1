"""Out-of-distribution protocols: leave one dataset (or group) out holds out exactly that part, and train.py runs them."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, data_cfg
from vlrb.data.benchmark import Benchmark
from vlrb.data.build import build
from vlrb.data.ood import hold_out
from vlrb.errors import ConfigError


def bench(n: int = 300) -> Benchmark:
    rng = np.random.default_rng(0)
    datasets = np.array(["A", "B", "C", "D", "E"])[np.arange(n) % 5]
    b = Benchmark.from_arrays((rng.random((n, 3)) < 0.5).astype(np.int8), np.full((n, 3), 1e-4, np.float32),
                              datasets=list(datasets))
    b.meta["group"] = np.where(np.isin(datasets, ["A", "B"]), "G1", "G2")
    return b


@pytest.mark.parametrize("protocol, col", [("lodo", "dataset"), ("logo", "group")])
def test_each_holdout_is_exactly_the_named_part(protocol, col):
    b = bench()
    for name in sorted(b.meta[col].unique()):
        v = hold_out(b, protocol, name)
        held = (b.meta[col] == name).to_numpy()
        assert (v.meta["split"].to_numpy() == "test").tolist() == held.tolist()  # all of it, and nothing else
        old = b.meta["split"].to_numpy()
        assert (v.meta["split"][~held & (old == "dev")] == "dev").all()  # the rest keeps its dev rows
        assert (v.meta["split"][~held & (old != "dev")] == "train").all()  # its train and test rows train
        assert v.Y is b.Y and v.cost_bounds == b.cost_bounds and v.sample_ids.tolist() == b.sample_ids.tolist()
        assert set(v.split("test").datasets if col == "dataset" else v.split("test").groups) == {name}


def test_unknown_holdout_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"ood.holdout='Z': no dataset of that name .* its datasets: A, B, C, D, E"):
        hold_out(bench(), "lodo", "Z")
    with pytest.raises(ConfigError, match="ood.protocol='lomo'"):
        hold_out(bench(), "lomo", "A")


def test_train_runs_leave_one_dataset_out(tmp_path):
    """train.py ood=lodo: the run's test split is the held-out dataset, with selection=cv on the others."""
    rng = np.random.default_rng(1)
    rows = [{"sample_id": f"{ds}/{i}", "dataset": ds, "model_id": m, "correct": int(rng.random() < (0.8 if j == i % 2 else 0.3)),
             "prompt": "q", "cost": 1e-5 * (j + 1)}
            for i in range(150) for ds in ("A", "B", "C") for j, m in enumerate(["m0", "m1"])]
    pd.DataFrame(rows).to_parquet(tmp_path / "r.parquet")
    build(data_cfg(reader="records", records=str(tmp_path / "r.parquet"), root=str(tmp_path / "b")), None,
          progress=False, log=lambda *a: None)
    args = ["data=records", f"data.records={tmp_path / 'r.parquet'}", f"data.root={tmp_path / 'b'}", "logger=none",
            "scoring.throughput=null", "router=per_dataset", "ood=lodo", "ood.holdout=B", "selection=cv",
            f"hydra.run.dir={tmp_path / 'run'}"]
    p = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    preds = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    test_ids = preds.loc[preds["split"] == "test", "sample_id"]
    assert len(test_ids) == 150 and test_ids.str.startswith("B/").all() and m["test/n"] == 150
    assert not preds.loc[preds["split"] == "dev", "sample_id"].str.startswith("B/").any()
    assert m["val/n"] == 300  # out-of-fold over every row of the other datasets (their test rows joined train)


def test_a_sweep_fits_a_router_that_ignores_lambda_once(tmp_path):
    """router=per_dataset,linear lambda=0,inf: per_dataset trains once and its second job reuses that fit."""
    rng = np.random.default_rng(2)
    rows = [{"sample_id": f"{ds}/{i}", "dataset": ds, "model_id": m, "correct": int(rng.random() < 0.5), "prompt": "q",
             "cost": 1e-5 * (j + 1)} for i in range(60) for ds in ("A", "B") for j, m in enumerate(["m0", "m1"])]
    pd.DataFrame(rows).to_parquet(tmp_path / "r.parquet")
    build(data_cfg(reader="records", records=str(tmp_path / "r.parquet"), root=str(tmp_path / "b")), None,
          progress=False, log=lambda *a: None)
    sweep = tmp_path / "sweep"
    args = ["-m", "data=records", f"data.records={tmp_path / 'r.parquet'}", f"data.root={tmp_path / 'b'}",
            "logger=none", "scoring.throughput=null", "router=per_dataset,random", "lambda=0,inf",
            f"hydra.sweep.dir={sweep}"]
    p = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    jobs = sorted(sweep.glob("*_router-*"))  # job folders are named by the swept values
    assert [j.name for j in jobs] == ["0_router-per_dataset_lambda-0", "1_router-per_dataset_lambda-inf",
                                      "2_router-random_lambda-0", "3_router-random_lambda-inf"]
    metrics = [json.loads((j / "metrics.json").read_text()) for j in jobs]
    reused = [m for m in metrics if "reused_from" in m]
    assert len(reused) == 2 and {m["router"] for m in reused} == {"per_dataset", "random"}
    for m in reused:  # the copy is the first job's result
        first = json.loads((Path(m["reused_from"]) / "metrics.json").read_text())
        assert first["router"] == m["router"] and first["test/rank_score"] == m["test/rank_score"]
