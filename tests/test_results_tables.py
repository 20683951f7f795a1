"""The README's Results tables (vlrb/eval/results.py) from finished runs: selection never reads test."""
import json

import numpy as np
import pandas as pd

from vlrb.data.benchmark import Benchmark
from vlrb.eval.results import ood_markdown, ood_table, results_markdown, results_table


def fake_run(d, router, test, choices, **metrics):
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"router": router, "lambda": None, **metrics}))
    pd.DataFrame({"sample_id": test.sample_ids, "split": "test",
                  "model_id": np.asarray(test.models, dtype=object)[choices]}).to_parquet(d / "predictions.parquet")
    return d


def test_results_table_rows_references_and_pairs(tmp_path):
    """m0 is the best single model on train+dev; on test, m1 is right on even rows and m2 on odd ones."""
    n = 400
    splits = np.array(["train"] * 280 + ["dev"] * 40 + ["test"] * 80)
    Y = np.zeros((n, 3), np.int8)
    Y[splits != "test", 0] = 1
    t = np.flatnonzero(splits == "test")
    Y[t[::2], 1] = Y[t[1::2], 2] = 1
    bench = Benchmark.from_arrays(Y, np.tile(np.float32([1e-4, 1e-4, 1e-3]), (n, 1)), ["m0", "m1", "m2"],
                                  splits=list(splits))
    test = bench.split("test")
    half = np.where(np.arange(80) % 2 == 0, 1, 0)  # right on half the rows
    best = np.where(np.arange(80) % 2 == 0, 1, 2)  # right on every row
    fake_run(tmp_path / "0", "linear", test, half, **{"cv/rank_score": 0.6, "val/rank_score": 0.6, "selection": "cv"})
    fake_run(tmp_path / "1", "knn", test, np.zeros(80, int), **{"cv/rank_score": 0.4, "val/rank_score": 0.4,
                                                                 "selection": "cv", "cv/chosen/k": 5})
    fake_run(tmp_path / "2", "vlrb_cal", test, best, **{"cv/rank_score": 0.7, "val/rank_score": 0.7, "selection": "cv"})
    df = results_table(tmp_path, bench, n_bootstrap=200)
    assert df.attrs["best_seed"] == "linear"  # by cross-validated score, not by test
    rows = df.set_index("router")
    assert list(df["router"]) == ["best single: m0", "knn", "linear", "vlrb_cal"]
    assert rows.at["best single: m0", "accuracy"] == 0.0
    assert rows.at["vlrb_cal", "accuracy"] == 1.0 and rows.at["vlrb_cal", "vs_best_seed"] == "win"
    assert rows.at["linear", "vs_best_single"] == "win" and rows.at["knn", "chosen"] == "k=5"
    md = results_markdown(df)
    assert "| **vlrb_cal** |" in md and "vs best seed (linear)" in md


def test_ood_table_one_row_per_held_out_part(tmp_path):
    """The held-out part is read from metrics.json; a run saved before metrics.json recorded it (the last row here)
    from the plain values of its Hydra config."""
    for i, (holdout, router, rs) in enumerate([("A", "vlrb_cal", 0.7), ("A", "linear", 0.6), ("B", "vlrb_cal", 0.5)]):
        d = tmp_path / str(i)
        d.mkdir()
        ood = {"ood/protocol": "lodo", "ood/holdout": holdout}
        if i == 2:
            (d / ".hydra").mkdir()
            (d / ".hydra" / "config.yaml").write_text(f"ood:\n  protocol: lodo\n  holdout: {holdout}\n")
            ood = {}
        (d / "metrics.json").write_text(json.dumps({
            **ood, "router": router, "test/n": 10, "test/rank_score": rs, "test/accuracy": rs, "test/avg_cost": 1e-4,
            "test/best_single/model": "m0", "test/best_single/rank_score": 0.55, "test/vs_best_single/outcome": "tie"}))
    df = ood_table(tmp_path)
    assert sorted(df["holdout"]) == ["A", "A", "B"]
    md = ood_markdown(df)
    assert "| A | 10 | m0 55.00 | 70.00 (t) | 60.00 (t) |" in md and "| B | 10 | m0 55.00 | 50.00 (t) | – |" in md
    assert "| **mean** |  | 55.00 | 60.00 | 60.00 |" in md
