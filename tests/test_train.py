"""train.py end to end: single runs, lambda=inf, multirun with the basic launcher, failing jobs in a sweep."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, data_cfg
from vlrb.data.build import build


@pytest.fixture(scope="module")
def tiny_records(tmp_path_factory):
    """A records benchmark: 240 samples x 4 models; which model is right depends on the dataset."""
    d = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(240):
        ds = ["A", "B", "C"][i % 3]
        for j, m in enumerate(["m0", "m1", "m2", "m3"]):
            p = 0.9 if j == i % 3 else 0.2
            rows.append({"sample_id": f"{ds}/{i}", "dataset": ds, "model_id": m, "correct": int(rng.random() < p),
                         "prompt": f"question about {ds}", "cost": 1e-5 * (j + 1)})
    pd.DataFrame(rows).to_parquet(d / "r.parquet")
    build(data_cfg(reader="records", records=str(d / "r.parquet"), root=str(d / "bench")), None, progress=False, log=lambda *a: None)
    return d


def run_train(args, cwd=REPO, check=True):
    p = subprocess.run([sys.executable, "train.py", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(p.stdout[-3000:] + p.stderr[-3000:])
    return p


def common(d):
    return ["data=records", f"data.records={d / 'r.parquet'}", f"data.root={d / 'bench'}", "logger=none",
            "scoring.throughput.runs=2", "scoring.throughput.warmup=0"]


def test_single_run_writes_the_run_contract(tiny_records, tmp_path):
    run_train([*common(tiny_records), "router=per_dataset", f"hydra.run.dir={tmp_path}"])
    m = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test/accuracy", "test/avg_cost", "test/rank_score", "test/throughput_ktok_s", "val/rank_score",
                "test/A/accuracy", "benchmark/fingerprint"):
        assert key in m
    assert not any(k.startswith("labels/") for k in m)  # per_dataset learns from no soft labels
    preds = pd.read_parquet(tmp_path / "predictions.parquet")
    assert list(preds.columns) == ["sample_id", "split", "model_id", "correct", "cost"]
    assert set(preds["split"]) == {"dev", "test"}  # train is never scored as "test"
    assert (tmp_path / ".hydra" / "config.yaml").exists() and not (tmp_path / "config.yaml").exists()  # saved once
    assert m["test/accuracy"] > 0.8  # the per-dataset rule is learnable here


def test_multirun_two_routers_two_lambdas_and_a_failing_job(tiny_records, tmp_path):
    sweep = tmp_path / "sweep"
    p = run_train(["-m", *common(tiny_records), "router=strongest,random", "lambda=0,inf",
                   f"hydra.sweep.dir={sweep}"])
    done = sorted(sweep.glob("*/metrics.json"))
    assert len(done) == 4, p.stdout[-2000:]
    import yaml

    lams = {str(yaml.safe_load((f.parent / ".hydra" / "config.yaml").read_text())["lambda"]) for f in done}
    assert lams == {"0", "inf"}
    assert all(json.loads(f.read_text())["lambda"] is None for f in done)  # baselines ignore λ: recorded as such
    # a job with a bad parameter fails, is recorded, and the next job still runs
    sweep2 = tmp_path / "sweep2"
    run_train(["-m", *common(tiny_records), "router=random", "router.seed=not_a_number,7", f"hydra.sweep.dir={sweep2}"],
              check=False)
    assert (sweep2 / "0_router.seed-not_a_number" / "error.txt").exists()  # folders named by the swept values
    assert (sweep2 / "1_router.seed-7" / "metrics.json").exists()


def test_missing_benchmark_is_a_clear_error(tmp_path):
    p = run_train(["data=vlrb", f"data.root={tmp_path / 'nothing'}", "data.raw_dir=x", "router=random", "logger=none",
                   f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "error: data.root=" in out and "python build_data.py data=vlrb" in out
    assert "Traceback" not in out


def test_logged_labels_are_the_routers_own(tiny_records, tmp_path):
    """labels/* describe the labels the router trained on: Linear's cost scale is 1, so at λ=10000 its labels are
    nearly uniform over the correct models (costs here are 1e-5 to 4e-5 $), unlike scale-100 labels."""
    from vlrb.data.benchmark import Benchmark
    from vlrb.routing.soft_labels import label_diagnostics, soft_labels

    run_train([*common(tiny_records), "router=linear", "lambda=10000", "trainer.max_epochs=2", "encoder=tiny",
               f"hydra.run.dir={tmp_path}"])
    m = json.loads((tmp_path / "metrics.json").read_text())
    train = Benchmark.load(tiny_records / "bench").split("train")
    keep = train.Y.astype(bool).any(1)  # Linear drops the samples no model answers
    Y, C = train.Y[keep], train.C[keep]
    own = label_diagnostics(soft_labels(Y, C, 10000, cost_scale=1.0), Y, C)
    other = label_diagnostics(soft_labels(Y, C, 10000, cost_scale=100.0), Y, C)
    assert m["labels/entropy_mean"] == pytest.approx(own["entropy_mean"], rel=1e-6)
    assert abs(own["entropy_mean"] - other["entropy_mean"]) > 0.01  # the check can tell the two apart
    assert not any(k.startswith("fit/label_diagnostics") for k in m)  # logged once


def test_the_next_steps_a_sweep_prints_run_as_printed(tiny_records, tmp_path):
    """The default logger (W&B offline): the sweep's closing table, and its `next:` commands run as printed
    (`wandb sync` with --dry-run: nothing leaves the machine)."""
    import os
    import re

    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline"}
    p = subprocess.run([sys.executable, "train.py", "-m", *[a for a in common(tiny_records) if a != "logger=none"],
                        "router=per_dataset,random", f"hydra.sweep.dir={sweep}"], cwd=REPO, capture_output=True,
                       text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert re.search(r"0_router-per_dataset +per_dataset +unused +[\d.]+ +[\d.]+", p.stdout)
    hints = re.findall(r"^next: (.+?)(?:   #.*)?$", p.stdout, re.M)
    assert [h.split()[0] for h in hints] == ["python", "wandb"], p.stdout[-2000:]
    for hint in hints:
        cmd = hint + (" --dry-run" if hint.startswith("wandb") else f" hydra.run.dir={tmp_path / 'eval'}")
        q = subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, text=True, timeout=600,
                           env={**env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
        assert q.returncode == 0, cmd + "\n" + q.stdout[-2000:] + q.stderr[-2000:]
    board = pd.read_csv(tmp_path / "eval" / "leaderboard.csv")  # evaluate.py found the runs' own benchmark
    assert {"per_dataset (run)", "random (run)"} <= set(board["router"])
