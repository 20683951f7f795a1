"""Multi-process jobs as users type them: `trainer=ddp` and `encoder.devices=2`, two CPU processes over gloo.

Lightning starts the second process by running the same command again; only the first one claims the run
directory, takes the data.root lock and writes results (vlrb.process)."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import REPO, data_cfg
from vlrb.data.build import build



@pytest.fixture(scope="module")
def bench_with_images(tmp_path_factory):
    """A records benchmark: 120 samples x 3 models, a PNG per sample (a coloured square) and a prompt."""
    from PIL import Image

    d = tmp_path_factory.mktemp("mp")
    (d / "img").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        ds = ["A", "B", "C"][i % 3]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        Image.new("RGB", (20 + i % 7, 16), colour).save(d / "img" / f"{i}.png")
        for j, m in enumerate(["m0", "m1", "m2"]):
            rows.append({"sample_id": f"{ds}/{i}", "dataset": ds, "model_id": m, "prompt": f"question {i} on {ds}",
                         "image": f"img/{i}.png", "correct": int(rng.random() < (0.85 if j == i % 3 else 0.25)),
                         "cost": 1e-5 * (j + 1)})
    pd.DataFrame(rows).to_parquet(d / "r.parquet")
    build(data_cfg(reader="records", records=str(d / "r.parquet"), root=str(d / "bench")), None, progress=False,
          log=lambda *a: None)
    return d


def run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "Traceback" not in out and "already used by another run" not in out, out[-4000:]
    return p


def embeddings(root, modality: str, name: str) -> pd.DataFrame:
    return pq.read_table(root / "EMBEDDINGS" / modality / f"{name}.parquet").to_pandas()


def test_feature_extraction_on_two_processes_equals_one(bench_with_images, tmp_path):
    """`build_data.py stage=features encoder.devices=2` (Lightning's predict over two processes) writes the same
    embeddings as one process, within 1e-5; it used to hang on the data.root lock the first process held."""
    import shutil

    one, two = tmp_path / "one", tmp_path / "two"
    for root in (one, two):
        shutil.copytree(bench_with_images / "bench", root)
    common = ["stage=features", "encoder=tiny", "encoder.device=cpu", "progress=false"]
    run("build_data.py", *common, f"data.root={one}", f"hydra.run.dir={tmp_path / 'run1'}")
    p = run("build_data.py", *common, "encoder.devices=2", f"data.root={two}", f"hydra.run.dir={tmp_path / 'run2'}",
            timeout=300)
    assert "on 2x cpu" in p.stdout + p.stderr  # the Lightning engine ran, on two processes
    for modality, name in (("text", "tiny-hf_text"), ("vision", "tiny-hf_vision-dinov2")):
        a, b = embeddings(one, modality, name), embeddings(two, modality, name)
        assert list(a["sample_id"]) == list(b["sample_id"])
        np.testing.assert_allclose(np.stack(a["embedding"]), np.stack(b["embedding"]), atol=1e-5)
    assert embeddings(two, "vision", "tiny-hf_vision-dinov2")["has_image"].all()
    assert not list((two / "EMBEDDINGS").rglob("*.partial"))  # the shards of both processes were merged


def test_ddp_training_on_two_cpu_processes(bench_with_images, tmp_path):
    """`train.py router=mlp trainer=ddp trainer.accelerator=cpu trainer.devices=2`: one run folder, written once, and a
    router that loads and routes in a fresh process."""
    out = tmp_path / "run"
    p = run("train.py", "router=mlp", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "encoder=tiny",
            "data=records", f"data.records={bench_with_images / 'r.parquet'}", f"data.root={bench_with_images / 'bench'}",
            "router.max_epochs=3", "logger=csv", "scoring.throughput=null", f"hydra.run.dir={out}")
    said = p.stdout + p.stderr
    assert said.count("Initializing distributed: GLOBAL_RANK: 0") == 1 and "GLOBAL_RANK: 1" not in said  # quiet helper
    m = json.loads((out / "metrics.json").read_text())
    assert 0 <= m["test/rank_score"] <= 1 and m["router"] == "mlp" and not (out / "error.txt").exists()
    preds = pd.read_parquet(out / "predictions.parquet")
    assert set(preds["split"]) == {"dev", "test"} and preds["sample_id"].is_unique  # each row once, by rank 0 only
    import vlrb

    tr = vlrb.load_router(out / "router")
    assert tr.route_raw(["question 1 on B"], [bench_with_images / "img" / "1.png"])[0] in ("m0", "m1", "m2")


@pytest.mark.slow
def test_ddp_inside_a_sweep(bench_with_images, tmp_path):
    """`-m ... trainer=ddp`: the helper process runs the sweep in step with the first one, in the same sweep folder,
    and writes nothing of its own (a λ-free router is fitted in every job: nothing is reused under DDP)."""
    sweep = tmp_path / "sweep"
    p = run("train.py", "-m", "router=linear,knn", "lambda=0,100", "trainer=ddp", "trainer.accelerator=cpu",
            "trainer.devices=2", "encoder=tiny", "data=records", f"data.records={bench_with_images / 'r.parquet'}",
            f"data.root={bench_with_images / 'bench'}", "logger=none", "scoring.throughput=null",
            f"hydra.sweep.dir={sweep}")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_router-linear_lambda-0", "1_router-linear_lambda-100", "2_router-knn_lambda-0",
                    "3_router-knn_lambda-100"]
    assert all((sweep / j / "metrics.json").exists() and not (sweep / j / "error.txt").exists() for j in jobs)
    assert "4 of 4 jobs finished" in p.stdout and "<- best on val" in p.stdout
