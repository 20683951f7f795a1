"""A newcomer extends vlrb from a folder of their own, with nothing edited inside vlrb/ or conf/ (issue 24).

(a) a feature router that uses λ, one .py + one YAML found through `--config-dir`: trains, sweeps λ with `-m`, is
saved, reloads in a fresh process with `vlrb.load_router(trust_code=True)` and routes raw prompts and images.
(b) a correctness rule of one's own: tests/test_user_rule.py. (c) an endpoint of one's own: tests/test_serve_extend.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
from PIL import Image

from conftest import REPO

ROUTER_PY = '''
import numpy as np

from vlrb.routers import Router
from vlrb.routing.soft_labels import label_diagnostics, soft_labels


class RidgeRouter(Router):
    """Ridge regression from the features to the λ soft labels; routes to the highest predicted label."""
    name = "ridge"
    inputs = ("features",)
    uses_lambda = True

    def __init__(self, lam=100.0, alpha: float = 1.0):
        super().__init__()
        self.lam, self.alpha = lam, float(alpha)

    def fit(self, train, dev=None):
        self._remember_models(train)
        T = soft_labels(train.Y, train.C, self.lam)
        X = np.c_[self._features(train), np.ones(len(train))]
        self.W_ = np.linalg.solve(X.T @ X + self.alpha * np.eye(X.shape[1]), X.T @ T).astype(np.float32)
        self.fit_info = {"label_diagnostics": label_diagnostics(T, train.Y, train.C)}
        return self

    def predict_scores(self, rows):
        return np.c_[self._features(rows), np.ones(len(rows))] @ self.W_
'''

ROUTER_YAML = """\
_target_: my_routers.RidgeRouter
lam: ${lambda}
alpha: 1.0
"""


def _records(d: Path) -> list[str]:
    """Red squares: the cheap model is right; blue squares: only the dear one."""
    (d / "img").mkdir()
    rows = []
    for i in range(90):
        red = i % 2 == 0
        Image.new("RGB", (16, 16), (220, 30, 30) if red else (30, 30, 220)).save(d / "img" / f"{i}.png")
        for j, m in enumerate(["cheap", "dear"]):
            rows.append({"sample_id": f"s{i:03d}", "dataset": "Shapes", "model_id": m, "correct": int(red or j == 1),
                         "prompt": f"What colour is square {i}?", "image": f"img/{i}.png",
                         "input_tokens": 300, "output_tokens": 5})
    pd.DataFrame(rows).to_parquet(d / "r.parquet")
    (d / "prices.yaml").write_text("pricing:\n  cheap: {input_price_per_1m: 0.1, output_price_per_1m: 0.4}\n"
                                   "  dear: {input_price_per_1m: 5.0, output_price_per_1m: 20.0}\n")
    return ["data=records", f"data.records={d / 'r.parquet'}", f"data.root={d / 'bench'}",
            f"pricing.path={d / 'prices.yaml'}"]


def test_a_feature_router_of_ones_own_trains_sweeps_saves_reloads_and_routes(tmp_path):
    mine = tmp_path / "mine"
    (mine / "conf" / "router").mkdir(parents=True)
    (mine / "my_routers.py").write_text(ROUTER_PY)
    (mine / "conf" / "router" / "ridge.yaml").write_text(ROUTER_YAML)
    data = _records(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(mine), "WANDB_MODE": "disabled"}
    b = subprocess.run([sys.executable, "build_data.py", *data, "encoder=tiny", f"hydra.run.dir={tmp_path / 'build'}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    sweep = tmp_path / "sweep"
    p = subprocess.run([sys.executable, "train.py", "-m", "--config-dir", str(mine / "conf"), "router=ridge",
                        "lambda=0,10000", *data, "encoder=tiny", "logger=none", "scoring.throughput=null",
                        f"hydra.sweep.dir={sweep}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    runs = {json.loads((m).read_text())["lambda"]: m.parent for m in sweep.glob("*/metrics.json")}
    assert set(runs) == {0.0, 10000.0}, sorted(sweep.iterdir())
    for lam, run in runs.items():
        m = json.loads((run / "metrics.json").read_text())
        assert m["router"] == "ridge" and any(k.startswith("labels/") for k in m)  # its own diagnostics
        assert (run / "router" / "state.safetensors").exists() and (run / "router" / "artifact.json").exists()
    # λ = 0 ignores cost (both models are right on red: the labels split between them); a large λ sends red to cheap
    code = textwrap.dedent("""
        import json, sys
        import vlrb
        try:
            vlrb.load_router(sys.argv[1])
        except Exception as e:
            print("refused:", type(e).__name__)
        r = vlrb.load_router(sys.argv[1], trust_code=True)
        print(json.dumps(r.route_raw(["What colour is square 7?"] * 2, [sys.argv[2], sys.argv[3]])))
    """)
    q = subprocess.run([sys.executable, "-c", code, str(runs[10000.0] / "router"), str(tmp_path / "img" / "0.png"),
                        str(tmp_path / "img" / "1.png")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert q.returncode == 0, q.stderr[-3000:]
    lines = q.stdout.strip().splitlines()
    assert lines[0] == "refused: UntrustedCodeError"
    assert json.loads(lines[-1]) == ["cheap", "dear"]  # red -> the cheap model, blue -> the only right one
