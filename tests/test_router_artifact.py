"""A trained router leaves its run directory: `vlrb.load_router(<run>/router)` in a fresh process reproduces
the run's test choices exactly and routes raw prompts and images with the encoder recorded at training time."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, data_cfg, make_router
from vlrb.data.build import build
from vlrb.pricing import PriceTable

FRESH = r"""
import json, sys
import numpy as np, pandas as pd
from PIL import Image
import vlrb

run, bench_root, img = sys.argv[1], sys.argv[2], sys.argv[3]
tr = vlrb.load_router(run + "/router")
bench = vlrb.Benchmark.load(bench_root)
test = bench.split("test")
saved = pd.read_parquet(run + "/predictions.parquet").query("split == 'test'")
mine = np.asarray(tr.models, dtype=object)[tr.route(test)]
ids = dict(zip(saved["sample_id"], saved["model_id"]))
raw = tr.route_raw(["Is the square red?", "Describe the chart.", "No image here."],
                   [img, Image.open(img), None])
scores = tr.score_raw(["Is the square red?"], [open(img, "rb").read()])
print(json.dumps({"same": bool(all(ids[s] == m for s, m in zip(test.sample_ids, mine))), "n": len(mine),
                  "raw": raw, "models": tr.models, "scores_shape": list(scores.shape),
                  "features": tr.recipe is not None, "prices": tr.prices is not None}))
"""


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """90 samples x 3 models with red/blue square images; the right model follows the colour."""
    d = tmp_path_factory.mktemp("art")
    (d / "img").mkdir()
    rows = []
    for i in range(90):
        red = i % 2 == 0
        Image.new("RGB", (24, 24), (220, 30, 30) if red else (30, 30, 220)).save(d / "img" / f"{i}.png")
        for j, m in enumerate(["cheap", "mid", "dear"]):
            ok = (j == 0 and red) or (j == 1 and not red) or j == 2
            rows.append({"sample_id": f"s{i:03d}", "dataset": "Shapes", "model_id": m, "correct": int(ok),
                         "prompt": f"What colour is square {i}?", "image": f"img/{i}.png",
                         "input_tokens": 300, "output_tokens": 5 + j})
    pd.DataFrame(rows).to_parquet(d / "r.parquet")
    (d / "prices.yaml").write_text("pricing:\n" + "".join(
        f"  {m}: {{input_price_per_1m: {p}, output_price_per_1m: {p * 4}}}\n"
        for m, p in (("cheap", 0.1), ("mid", 0.5), ("dear", 5.0))))
    build(data_cfg(reader="records", records=str(d / "r.parquet"), root=str(d / "bench")),
          PriceTable.from_yaml(d / "prices.yaml"), progress=False, log=lambda *a: None)
    return d


def _train(d, run, *overrides):
    p = subprocess.run([sys.executable, "train.py", "data=records", f"data.records={d / 'r.parquet'}",
                        f"data.root={d / 'bench'}", f"pricing.path={d / 'prices.yaml'}", "logger=none",
                        f"hydra.run.dir={run}", "scoring.throughput=null", *overrides],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


@pytest.mark.parametrize("router,overrides", [
    ("mlp", ["encoder=tiny", "router.hidden_sizes=[16]", "trainer.max_epochs=3"]),
    ("vlc", ["backbone=tiny_offline", "trainer.max_epochs=1", "num_workers=0", "router.batch_size=16"]),
])
def test_load_router_in_a_fresh_process(records, tmp_path, router, overrides):
    run = tmp_path / "run"
    _train(records, run, f"router={router}", *overrides)
    files = {p.name for p in (run / "router").iterdir()}
    assert {"artifact.json", "router.json", "config.yaml"} <= files
    assert not (run / "checkpoints").exists()  # the weights are stored once, in router/
    assert "weights.safetensors" in files and "README.md" in files  # safetensors, and a model card
    if router == "mlp":
        assert {"recipe.json", "scaler.safetensors"} <= files
    card = (run / "router" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: vlrb") and "| dear |" in card and "## Test scores" in card
    art = json.loads((run / "router" / "artifact.json").read_text())
    assert art["prices"]["dear"] == {"input_per_1m": 5.0, "output_per_1m": 20.0} and art["lambda"] == 100.0

    p = subprocess.run([sys.executable, "-c", FRESH, str(run), str(records / "bench"), str(records / "img" / "0.png")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["same"] and out["n"] > 0  # the saved test choices, exactly
    assert len(out["raw"]) == 3 and set(out["raw"]) <= set(out["models"])
    assert out["scores_shape"] == [1, 3] and out["features"] == (router == "mlp") and out["prices"]


def test_baselines_cannot_route_raw_inputs():
    from vlrb.artifact import TrainedRouter
    from vlrb.routing.synthetic import synthetic_benchmark

    bm = synthetic_benchmark(100, n_models=3, n_datasets=2)
    tr = TrainedRouter(make_router("oracle").fit(bm.split("train")))
    with pytest.raises(ValueError, match="cannot route new inputs"):
        tr.route_raw(["q"], [None])
    tr = TrainedRouter(make_router("strongest").fit(bm.split("train")))
    assert tr.route_raw(["q", "r"]) == [tr.models[int(np.argmax(bm.split("train").Y.mean(0)))]] * 2


def test_load_router_takes_a_hub_style_id_from_the_local_hf_cache_only(tmp_path, monkeypatch):
    """A router folder published on a model hub and downloaded once loads by its id (`org/name`) from the local HF
    cache, routing as the folder does; an id that is not there is a one-line error: nothing is downloaded."""
    import shutil

    import vlrb
    from serve_support import BLUE, RED, build_tiny_router
    from vlrb.weights import WeightsUnavailableError

    folder = build_tiny_router(tmp_path / "router")
    repo = tmp_path / "hub" / "models--acme--tiny-router"
    shutil.copytree(folder, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # "acme/tiny-router" is no folder here
    prompts = ["What colour is square 1?", "What colour is square 2?"]
    images = [Image.new("RGB", (24, 24), RED), Image.new("RGB", (24, 24), BLUE)]
    from_hub = vlrb.load_router("acme/tiny-router")
    assert from_hub.route_raw(prompts, images) == vlrb.load_router(folder).route_raw(prompts, images)
    with pytest.raises(WeightsUnavailableError, match="Nothing is downloaded at run time") as e:
        vlrb.load_router("acme/no-such-router")
    assert "acme/no-such-router" in str(e.value) and "\n" not in str(e.value)
