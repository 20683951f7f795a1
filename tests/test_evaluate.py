"""evaluate.py end to end on a tiny benchmark on disk, plus run discovery, selection and the writers."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from vlrb.eval.leaderboard import leaderboard_markdown, leaderboard_row, make_leaderboard, write_leaderboard
from vlrb.eval.runs import find_runs, read_run, rescore_choices, select_runs
from vlrb.eval.wandb_utils import init_wandb, resolve_wandb_mode
from vlrb.routing.soft_labels import hard_labels
from vlrb.routing.synthetic import synthetic_benchmark

REPO = Path(__file__).resolve().parents[1]


def save_benchmark(bench, root: Path) -> Path:
    """The on-disk layout Benchmark.load reads (docs/layout.md#built-benchmark)."""
    m, r = root / "data" / "matrices", root / "data" / "registry"
    m.mkdir(parents=True)
    r.mkdir(parents=True)
    np.savez_compressed(m / "Y.npz", Y=bench.Y, scores=bench.scores)
    np.save(m / "C.npy", bench.C)
    (m / "cost_bounds.json").write_text(json.dumps(bench.cost_bounds))
    bench.meta.to_parquet(r / "meta.parquet")
    (r / "model_index.json").write_text(json.dumps(bench.models))
    return root


def fake_run(run_dir: Path, bench, router: str, lam, choices, val_rank_score=None, config_name=".hydra/config.yaml"):
    """A finished train run as train.py writes it: metrics.json, predictions.parquet, the Hydra config."""
    test = bench.split("test")
    rows = np.arange(len(test))
    (run_dir / Path(config_name).parent).mkdir(parents=True, exist_ok=True)
    (run_dir / config_name).write_text(
        f"router:\n  name: {router}\n  params: {{}}\nlambda: {lam}\npaths:\n  output_dir: ${{hydra:runtime.output_dir}}\n")
    metrics = {"router": router, "lambda": lam,  # what the readers read (the config above is never read)
               "test/accuracy": 0.0, "test/throughput_ktok_s": 123.0}  # test numbers must never drive selection
    if val_rank_score is not None:
        metrics["val/rank_score"] = val_rank_score
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame({"sample_id": test.sample_ids, "split": "test", "model_id": np.asarray(bench.models)[choices],
                  "correct": test.Y[rows, choices], "cost": test.C[rows, choices]}).to_parquet(run_dir / "predictions.parquet")


@pytest.fixture(scope="module")
def bench():
    return synthetic_benchmark(400, n_models=5, n_datasets=3, seed=2)


@pytest.fixture(scope="module")
def bench_dir(bench, tmp_path_factory):
    return save_benchmark(bench, tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def runs_dir(bench, tmp_path_factory):
    """A fake λ sweep of 'mlp': λ=0 is best on test (oracle choices) but λ=100 is best on val."""
    root = tmp_path_factory.mktemp("multirun")
    test = bench.split("test")
    fake_run(root / "0", bench, "mlp", 0, hard_labels(test.Y, test.C), val_rank_score=0.40)
    fake_run(root / "1", bench, "mlp", 100, np.zeros(len(test), int), val_rank_score=0.55)
    fake_run(root / "2", bench, "mlp", "inf", np.ones(len(test), int), val_rank_score=0.50, config_name="config.yaml")
    return root


def test_evaluate_end_to_end(bench_dir, runs_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "MPLBACKEND": "Agg", "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "evaluate.py", f"data.root={bench_dir}", f"hydra.run.dir={out}", f"runs={runs_dir}",
         "scoring.bootstrap=200", "scoring.throughput.runs=3", "scoring.throughput.warmup=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for f in ("leaderboard.csv", "leaderboard.md", "leaderboard.json", "per_dataset.csv", "metrics.json",
              "predictions.parquet", "pareto.png"):
        assert (out / f).exists(), f
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Pareto plot:" in proc.stdout and "| oracle |" in proc.stdout

    board = pd.read_csv(out / "leaderboard.csv")
    assert {"oracle", "strongest", "cheapest", "per_dataset", "random", "mlp"} <= set(board["router"])
    for c in ("router", "lambda", "accuracy", "avg_cost", "rank_score", "accuracy_lo", "rank_score_hi",
              "throughput_ktok_s", "oracle_gap", "selection_entropy"):
        assert c in board.columns
    oracle = board[board["router"] == "oracle"].iloc[0]
    others = board[board["router"] != "oracle"]
    assert (oracle["accuracy"] > others.loc[others["lambda"] != 0, "accuracy"]).all()
    # dev selects: λ=100 has the best val/rank_score although λ=0 is far better on test
    mlp = board[board["router"] == "mlp"].set_index("lambda")
    assert len(mlp) == 3 and bool(mlp.loc[100.0, "selected"]) and not bool(mlp.loc[0.0, "selected"])
    assert mlp.loc[0.0, "rank_score"] > mlp.loc[100.0, "rank_score"]
    assert np.isinf(mlp.index).any()

    records = json.loads((out / "leaderboard.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert len(records) == len(board)
    metrics = json.loads((out / "metrics.json").read_text())
    assert "oracle/test/accuracy" in metrics and "mlp/test/rank_score_lo" in metrics
    per_ds = pd.read_csv(out / "per_dataset.csv")
    assert set(per_ds["dataset"]) == set(bench_dir_datasets(bench_dir))


def test_evaluate_as_typed_scores_the_runs_under_logs_and_says_what_it_left_out(bench, bench_dir, tmp_path):
    """`python evaluate.py` with no `runs=`: every finished train run under logs/ of this benchmark is on the
    leaderboard beside the best single model; a run of another benchmark and a failed run are each named on a line."""
    from vlrb.routing.synthetic import synthetic_benchmark

    logs = tmp_path / "logs"
    test = bench.split("test")
    fake_run(logs / "train" / "runs" / "a", bench, "mlp", 100, np.zeros(len(test), int), val_rank_score=0.5)
    other = synthetic_benchmark(50, n_models=5, n_datasets=2, seed=9)  # other sample ids
    fake_run(logs / "train" / "runs" / "b", other, "knn", 0, np.zeros(len(other.split("test")), int),
             val_rank_score=0.9)
    (logs / "train" / "runs" / "c").mkdir(parents=True)
    (logs / "train" / "runs" / "c" / "error.txt").write_text("ConfigError: router: bad k\n\ntraceback")
    out = tmp_path / "out"
    env = {**os.environ, "MPLBACKEND": "Agg", "WANDB_MODE": "disabled", "PROJECT_ROOT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "evaluate.py", f"data.root={bench_dir}", f"hydra.run.dir={out}",
                           "scoring.bootstrap=50", "scoring.throughput=null"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in said, said[-3000:]
    board = pd.read_csv(out / "leaderboard.csv")
    assert "mlp" in set(board["router"]) and "knn" not in set(board["router"])
    ref = board[board["kind"] == "reference"]
    assert len(ref) == 1 and ref["router"].iloc[0].startswith("best single: ")
    assert "runs: 1 finished run(s) scored under" in said and "1 left out; 1 failed" in said
    assert re.search(r"left out .*runs/b: .*samples have no prediction", said)
    assert re.search(r"failed +.*runs/c: ConfigError: router: bad k", said)
    md = (out / "leaderboard.md").read_text()
    assert "vs best single: Δ rank score" in md and "chosen without looking at test" in md and "strongest single" not in md


def bench_dir_datasets(root):
    return pd.read_parquet(root / "data" / "registry" / "meta.parquet")["dataset"].unique()


def test_missing_benchmark_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "evaluate.py", "data=vlrb", f"data.root={tmp_path / 'nothing'}",
                           "data.raw_dir=x", "logger=none", f"hydra.run.dir={tmp_path / 'out'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "error: data.root=" in out and "python build_data.py data=vlrb" in out
    assert "Traceback" not in out


def test_find_select_and_rescore(bench, runs_dir, tmp_path):
    runs = find_runs(runs_dir)
    assert [(r.router, r.lam) for r in runs] == [("mlp", 0.0), ("mlp", 100.0), ("mlp", float("inf"))]
    per_lambda, chosen = select_runs(runs)
    assert len(per_lambda) == 3 and chosen["mlp"].lam == 100.0
    choices, info = rescore_choices(runs[0], bench)
    test = bench.split("test")
    np.testing.assert_array_equal(choices, hard_labels(test.Y, test.C))
    assert info["n_correct_mismatch"] == 0
    # several runs without val/rank_score: nothing is selected (no fallback to test)
    no_val = [read_run(runs_dir / "0"), read_run(runs_dir / "1")]
    for r in no_val:
        r.metrics.pop("val/rank_score")
    assert select_runs(no_val)[1] == {}
    # a run made on another benchmark fails loudly
    other = tmp_path / "other"
    fake_run(other, bench, "knn", 0, np.zeros(len(test), int))
    preds = pd.read_parquet(other / "predictions.parquet").iloc[1:]
    preds.to_parquet(other / "predictions.parquet")
    with pytest.raises(ValueError, match="no prediction"):
        rescore_choices(read_run(other), bench)


def test_leaderboard_markdown_units(tmp_path):
    m = {"test/accuracy": 0.7911, "test/avg_cost": 0.98e-4, "test/rank_score": 0.7618, "test/oracle_gap": 0.1,
         "test/selection_entropy": 1.0, "test/top_model_share": 0.5, "test/n": 10}
    df = make_leaderboard([leaderboard_row("x", m, {"accuracy_lo": 0.78, "accuracy_hi": 0.80}, lam=float("inf"))])
    md = leaderboard_markdown(df)
    assert "| x | ∞ | 79.11 | [78.00, 80.00] | 0.98 |" in md and "76.18" in md
    paths = write_leaderboard(df, tmp_path)
    assert json.loads(paths["json"].read_text())[0]["lambda"] == "inf"


def test_wandb_mode_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_wandb_mode(None) == "offline"  # no key configured: never fail, stay offline
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password x\n")
    assert resolve_wandb_mode(None) == "online"
    assert resolve_wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode(None) == "offline"
    with pytest.raises(ValueError):
        resolve_wandb_mode("sometimes")
    assert init_wandb(None) is None and init_wandb(OmegaConf.create({"csv": {"save_dir": "."}})) is None


def test_pareto_labels_merge_and_colours_stay_put():
    from vlrb.eval.pareto import merged_labels, router_colour

    x, y = np.array([1.0, 1.02, 3.0]), np.array([75.0, 75.3, 60.0])
    assert merged_labels(x, y, ["100", "10000", "inf"]) == [(1.0, 75.0, "100, 10000"), (3.0, 60.0, "inf")]
    assert router_colour("strongest (run)") == router_colour("strongest")  # the trained copy keeps its colour
    assert len({router_colour(r) for r in ("linear", "mlp", "knn", "ovr", "kmeans", "prknn")}) == 6
