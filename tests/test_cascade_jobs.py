"""Cascades through the jobs, as users type them: train.py with selection=cv on a records benchmark that carries
answers, the run's predictions naming every model called, evaluate.py rescoring them, and the saved router folder
replaying the same calls in a fresh process."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, data_cfg
from vlrb.data.build import build

LETTERS = list("ABCD")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """300 choice items x 4 models (dearer = better); a wrong answer is a wrong letter or no letter at all."""
    d = tmp_path_factory.mktemp("cascade_jobs")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(300):
        ds = ["A", "B", "C"][i % 3]
        gold = LETTERS[rng.integers(4)]
        for j, m in enumerate(["m0", "m1", "m2", "m3"]):
            ok = rng.random() < [0.3, 0.45, 0.6, 0.8][j]
            wrong = LETTERS[(LETTERS.index(gold) + rng.integers(1, 4)) % 4] if rng.random() < 0.5 else "unsure"
            rows.append({"sample_id": f"{ds}/{i}", "dataset": ds, "model_id": m, "correct": int(ok),
                         "prompt": f"question {i} about {ds}", "cost": 1e-5 * 3 ** j,
                         "response": f"Looking at the figure... The answer is ({gold if ok else wrong})." if
                         (ok or wrong != "unsure") else "I am not sure what the figure shows.",
                         "answer_format": "choice", "n_options": 4})
    pd.DataFrame(rows).to_parquet(d / "r.parquet")
    build(data_cfg(reader="records", records=str(d / "r.parquet"), root=str(d / "bench")), None, progress=False,
          log=lambda *a: None)
    return d


def run(script, *args):
    p = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def test_a_cascade_trains_with_cv_is_evaluated_and_reloads(bench):
    common = ["data=records", f"data.records={bench / 'r.parquet'}", f"data.root={bench / 'bench'}", "logger=none"]
    run_dir = bench / "run"
    run("train.py", *common, "router=cascade_chain", "encoder=tiny", "router.n_components=4", "router.folds=3",
        "selection=cv", "selection.folds=2", "selection.per_router.cascade_chain.max_calls=[3]", "scoring.throughput=null",
        f"hydra.run.dir={run_dir}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["selection"] == "cv" and metrics["cv/chosen/max_calls"] == 3
    assert 1.0 <= metrics["test/calls_mean"] <= metrics["cv/chosen/max_calls"]
    assert 0.0 <= metrics["test/escalated_share"] <= 1.0
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    test = preds[preds["split"] == "test"]
    assert (test["models_called"].str.split(">").str[-1] == test["model_id"]).all()
    assert test["correct"].mean() == pytest.approx(metrics["test/accuracy"])
    assert test["cost"].mean() == pytest.approx(metrics["test/avg_cost"], rel=1e-6)
    # the router folder replays the same calls in a fresh process
    code = ("import sys, vlrb; from vlrb.data.benchmark import Benchmark;"
            "r = vlrb.load_router(sys.argv[1]); b = Benchmark.load(sys.argv[2]); t = b.split('test');"
            "print('\\n'.join(f'{s}\\t{c}' for s, c in zip(t.sample_ids, r.route(t).labels(b.models))))")
    out = run("-c", code, str(run_dir / "router"), str(bench / "bench")).stdout.split()
    again = dict(zip(out[::2], out[1::2]))
    assert again == dict(zip(test["sample_id"], test["models_called"]))
    # evaluate.py rescores the run from models_called: the same accuracy and cost
    ev = run("evaluate.py", *common, f"runs={run_dir}", f"hydra.run.dir={bench / 'eval'}")
    board = pd.read_csv(bench / "eval" / "leaderboard.csv")
    row = board[board["router"] == "cascade_chain"].iloc[0]
    assert row["accuracy"] == pytest.approx(metrics["test/accuracy"])
    assert row["calls_mean"] == pytest.approx(metrics["test/calls_mean"])
    assert "Calls/req" in ev.stdout
    # the Results tables: a variant of a cascade (another objective) is a row of its own in the cascades table
    import shutil

    from vlrb.data.benchmark import Benchmark
    from vlrb.eval.results import cascades_markdown, results_markdown, results_table

    variant = bench / "runs" / "match"
    shutil.copytree(run_dir, variant)
    shutil.copytree(run_dir, bench / "runs" / "auto")
    m = json.loads((variant / "metrics.json").read_text())
    m["label"] = "cascade_chain (match)"
    (variant / "metrics.json").write_text(json.dumps(m))
    df = results_table(bench / "runs", Benchmark.load(bench / "bench"), n_bootstrap=50)
    assert set(df.loc[df["kind"] == "cascade", "router"]) == {"cascade_chain", "cascade_chain (match)"}
    table = cascades_markdown(df)
    assert "cascade_chain (match)" in table and "Calls/req" in table and "x [" in table
    assert "cascade_chain" not in results_markdown(df)  # the one-shot table leaves cascades out
