"""Bad inputs and mistakes around features and evaluation, one table row per case.

Each row: a case id, a builder that prepares the input under tmp_path and returns the action to run, and
what must happen: a clear error (a regex on its message) or a counted outcome (the dict the action returns).
Cases: stale embeddings after a rebuild, a benchmark folder written by the original VL-RouterBench tools,
the KNN feature scaler's two fits, `${oc.env:...}` in foreign run configs, adversarial MathVision answers.
"""
import base64
import io
import json
import time

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import SHARED, copy_mathv, data_cfg, make_router
from vlrb.data.benchmark import Benchmark
from vlrb.data.build import build

TINY_ENC = {"text": {"family": "hf_text", "tiny": True}, "vision": {"family": "hf_vision", "tiny": "dinov2"},
            "batch_size": 8, "num_workers": 0, "device": "cpu", "shard_every": 100}
SECRET = "sk-test-0123456789abcdef-never-in-a-leaderboard"
N = 12


def quiet(*a, **k):
    pass


def _png_b64(seed: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (seed * 20 % 256, 40, 200)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _records(folder, prompt="question"):
    """N samples x 2 models with prompts; images: files (i % 3 == 0), data URIs (i % 3 == 1), none."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(N):
        if i % 3 == 0:
            img = folder / f"img{i}.png"
            img.write_bytes(base64.b64decode(_png_b64(i)))
            image = str(img)
        else:
            image = f"data:image/png;base64,{_png_b64(i)}" if i % 3 == 1 else None
        for j, m in enumerate(["m0", "m1"]):
            rows.append({"sample_id": f"A/{i}", "dataset": "A", "model_id": m, "correct": int((i + j) % 2 == 0),
                         "prompt": f"{prompt} {i}", "image": image, "cost": 1e-5 * (j + 1)})
    path = folder / "records.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def _build(records, root):
    build(data_cfg(reader="records", records=str(records), root=str(root)), None, progress=False, log=quiet)
    return Benchmark.load(root)


def _rebuilt_with_new_prompts(tmp_path):
    """A benchmark whose text features were extracted, then rebuilt from records with other prompts."""
    from vlrb.features.extract import extract_features

    root = tmp_path / "bench"
    bm = _build(_records(tmp_path / "rec"), root)
    extract_features(bm, TINY_ENC, root=root, progress=False, modalities=["text"])
    return _build(_records(tmp_path / "rec", prompt="another question"), root)


# ------------------------------------------------------------------------------------ stale features
def stale_features_refused(tmp_path, monkeypatch):
    from vlrb.features.fusion import load_features

    bm = _rebuilt_with_new_prompts(tmp_path)
    return lambda: load_features(bm, TINY_ENC, "only_text")


def stale_features_reextracted_by_train(tmp_path, monkeypatch):
    from vlrb.features.extract import samples_hash
    from vlrb.jobs import build as build_job
    from vlrb.features.routing_data import RoutingData

    bm = _rebuilt_with_new_prompts(tmp_path)
    said = []
    monkeypatch.setattr(build_job, "_say", said.append)
    cfg = OmegaConf.create({"data": {"root": str(bm.root), "name": "records"}})
    enc = {**TINY_ENC, "fusion": "only_text"}

    def run():  # train.py's path: the one public call for a benchmark with its features, then the run's data
        bench = build_job.load_benchmark(cfg, encoder=enc)
        data = RoutingData.prepare(bench, ("features",), encoder=enc)
        meta = json.loads((bm.root / "EMBEDDINGS" / "text" / "tiny-hf_text.meta.json").read_text())
        return {"said_stale": any("missing or stale: extracted now" in m for m in said),
                "fresh": meta["samples_hash"] == samples_hash(bm, "text"),
                "rows": sum(len(s.X) for s in data.splits.values())}
    return run


# ------------------------------------------------------------------------- the original tools' layout
def _images(bm):
    im = bm.images
    pixels = [None if im[i] is None else np.asarray(im[i]).tolist() for i in range(len(im))]
    return list(im.kinds), list(im.refs), pixels


def original_layout_reads_jsonl(tmp_path, monkeypatch):
    root = tmp_path / "bench"
    bm = _build(_records(tmp_path / "rec"), root)
    before = (bm.prompts, _images(bm))
    (root / "data" / "registry" / "samples.parquet").unlink()

    def run():
        again = Benchmark.load(root)
        return {"prompts_equal": again.prompts == before[0], "images_equal": _images(again) == before[1],
                "with_image": int(again.images.has_image.sum())}
    return run


def original_layout_tsv_rows(tmp_path, monkeypatch):
    """Upstream writes `image_tsv` assets with the TSV row position only (no tsv_key), paths relative or absolute."""
    root = tmp_path / "bench"
    bm = _build(_records(tmp_path / "rec"), root)
    (root / "data" / "registry" / "samples.parquet").unlink()
    for f in (root / "BENCHMARKS").rglob("*.jsonl"):
        f.unlink()
    (root / "LMUData").mkdir()
    pd.DataFrame({"index": [f"{100 + i}" for i in range(N)], "image": [_png_b64(i) for i in range(N)]}).to_csv(
        root / "LMUData" / "A.tsv", sep="\t", index=False)
    recs = [{"sample_id": s, "dataset": "A", "task_type": "vqa_oe", "prompt": f"q{k}",
             "assets": [{"type": "image_tsv", "tsv_file": "LMUData/A.tsv" if k % 2 else str(root / "LMUData" / "A.tsv"),
                         "index": N - 1 - k}]} for k, s in enumerate(bm.sample_ids)]
    (root / "BENCHMARKS" / "vqa_oe").mkdir(parents=True, exist_ok=True)
    (root / "BENCHMARKS" / "vqa_oe" / "a_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))

    def run():
        again = Benchmark.load(root)
        ok = [np.array_equal(np.asarray(again.images[k]), np.asarray(_decode(_png_b64(N - 1 - k)))) for k in range(N)]
        return {"prompts": again.prompts[:2], "refs": list(again.images.refs[:2]), "all_images_match": all(ok)}
    return run


def _decode(b64):
    from vlrb.data.images import decode_b64_image

    return decode_b64_image(b64)


def no_prompts_anywhere(tmp_path, monkeypatch):
    root = tmp_path / "bench"
    _build(_records(tmp_path / "rec"), root)
    (root / "data" / "registry" / "samples.parquet").unlink()
    for f in (root / "BENCHMARKS").rglob("*.jsonl"):
        f.unlink()
    return lambda: Benchmark.load(root).prompts


def jsonl_missing_a_sample(tmp_path, monkeypatch):
    root = tmp_path / "bench"
    _build(_records(tmp_path / "rec"), root)
    (root / "data" / "registry" / "samples.parquet").unlink()
    f = next((root / "BENCHMARKS").rglob("*.jsonl"))
    f.write_text("".join(f.read_text().splitlines(keepends=True)[1:]))
    return lambda: Benchmark.load(root).images


def jsonl_bad_line(tmp_path, monkeypatch):
    root = tmp_path / "bench"
    _build(_records(tmp_path / "rec"), root)
    (root / "data" / "registry" / "samples.parquet").unlink()
    f = next((root / "BENCHMARKS").rglob("*.jsonl"))
    f.write_text(f.read_text() + "{not json\n")
    return lambda: Benchmark.load(root).prompts


# ---------------------------------------------------------------------------------- the KNN scaler
def _planted():
    """6 train rows: 4 with a correct model at x = 0..3, 2 that no model answers at x = 100; dev/test at 1.5."""
    Y = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [0, 0], [0, 0], [1, 0], [0, 1]], np.int8)
    bm = Benchmark.from_arrays(Y, np.full(Y.shape, 1e-5), splits=["train"] * 6 + ["dev", "test"])
    X = np.array([[0.0], [1.0], [2.0], [3.0], [100.0], [100.0], [1.5], [1.5]], np.float32)
    return bm, X


def knn_scaler(fit):
    def builder(tmp_path, monkeypatch):
        from vlrb.features import recipe
        from vlrb.features.routing_data import RoutingData

        bm, X = _planted()
        monkeypatch.setattr(recipe, "load_features", lambda *a, **k: X)  # the scaler is what is under test

        def run():
            router = make_router("knn", **({} if fit is None else {"scaler_fit": fit}))
            out = RoutingData.prepare(bm, router.inputs, encoder=TINY_ENC, scaler_fit=router.scaler_fit)
            return {"dev_x": round(float(out["dev"].X[0, 0]), 4)}
        return run
    return builder


# all rows: mean 206/6, std over the six; with_correct: mean 1.5, so the dev row (x = 1.5) lands at 0
_ALL = np.array([0, 1, 2, 3, 100, 100], np.float64)
DEV_ALL = round(float((1.5 - _ALL.mean()) / _ALL.std()), 4)


# ------------------------------------------------------------------------------- foreign run configs
def run_config_secret(tmp_path, monkeypatch):
    from vlrb.eval.report import evaluate_benchmark
    from vlrb.routing.synthetic import synthetic_benchmark

    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    bench = synthetic_benchmark(60, n_models=3, n_datasets=2, seed=1)
    test = bench.split("test")
    for k, (cfg_file, metrics) in enumerate([(".hydra/config.yaml", {"router": "mlp", "val/rank_score": 0.5}),
                                             ("config.yaml", {"router": "knn", "val/rank_score": 0.4})]):
        run = tmp_path / "runs" / str(k)
        (run / cfg_file).parent.mkdir(parents=True, exist_ok=True)
        (run / cfg_file).write_text("router:\n  name: ${oc.env:WANDB_API_KEY}\nlambda: ${oc.env:WANDB_API_KEY}\n"
                                    "note: ${oc.env:WANDB_API_KEY,x}\n")
        (run / "metrics.json").write_text(json.dumps(metrics))
        pd.DataFrame({"sample_id": test.sample_ids, "split": "test", "model_id": bench.models[0]}).to_parquet(
            run / "predictions.parquet")
    out = tmp_path / "out"

    def run():
        res = evaluate_benchmark(bench, out, baselines=[make_router("oracle").fit(test)], runs=tmp_path / "runs",
                                 n_bootstrap=20, plot=False)
        leaked = [p.name for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
        return {"leaked": leaked, "routers": sorted(res.leaderboard["router"])}
    return run


# ------------------------------------------------------------------------------ adversarial MathVision
POW_CHAIN = "*".join(["(" + "*".join(["9**250000"] * 100) + ")"] * 28)  # ~28 KB of big-integer products
PRODUCTS = "*".join(["(" + "*".join(["7**5000"] * 100) + ")"] * 35)  # each factor under the power bound
LATEX_POWER = "(" + "9" * 4000 + ")^{9999}"  # 167 s and growing memory before the bounds


def mathvision_adversarial(res):
    def builder(tmp_path, monkeypatch):
        from vlrb.data.correctness import binarize
        from vlrb.data.families import score_frame_undetermined

        df = pd.DataFrame({"prediction": ["..."], "res": [res], "answer": ["6"], "choices": ["[]"]})

        def run():
            costs = []
            for _ in range(2):  # the better of two: a shared machine's one-off stall is not the input's cost
                t = time.thread_time()  # CPU time of this thread: what the input costs, whatever runs beside it
                s, undetermined = score_frame_undetermined("mathvision", df, "MathVision_MINI")
                costs.append(time.thread_time() - t)
            return {"undetermined": bool(undetermined[0]), "correct": int(binarize(s)[0]),
                    "under_1s": min(costs) < 1.0}
        return run
    return builder


def mathvision_adversarial_build(tmp_path, monkeypatch):
    """Through the VLMEvalKit reader: the crafted answer is counted wrong and reported as undetermined."""
    if SHARED is None:
        pytest.skip("../shared (real MathVision data) is not beside the checkout")
    from vlrb.pricing import PriceTable

    work = copy_mathv(SHARED / "realdata" / "mathv_mini", tmp_path / "w", models=["Gemini-Pro", "LLaVA-v1.5-7B"])
    judge = work / "vlmeval" / "LLaVA-v1.5-7B" / "T20260101_G" / "LLaVA-v1.5-7B_MathVision_MINI_gpt-4o-mini.xlsx"
    df = pd.read_excel(judge, engine="calamine")
    free = int(np.flatnonzero(df["choices"].astype(str).isin(["[]", ""]) & (df["answer"].astype(str) == "6"))[0])
    df.loc[free, "res"] = POW_CHAIN
    df.to_excel(judge, index=False)
    sid = f"MathVision_MINI/{df.loc[free, 'index']}"

    def run():
        cfg = data_cfg(raw_dir=str(work / "vlmeval"), tsv_dir=str(work / "LMUData"), root=str(tmp_path / "b"))
        m = build(cfg, PriceTable.from_yaml(work / "pricing.yaml"), progress=False, log=quiet)
        bm = Benchmark.load(tmp_path / "b")
        row = int(np.flatnonzero(bm.sample_ids == sid)[0])
        return {"undetermined_scores": m["integrity"]["reader"]["undetermined_scores"],
                "correct": int(bm.Y[row, bm.models.index("LLaVA-v1.5-7B")])}
    return run


# ------------------------------------------------------------------------------------------ the table
CASES = [
    # id, builder, expected: ("error", exception type, regex) or ("outcome", dict)
    ("stale-text-features-refused", stale_features_refused,
     ("error", FileNotFoundError, r"tiny-hf_text\.parquet was extracted from other text inputs.*samples_hash")),
    ("stale-features-re-extracted-by-train", stale_features_reextracted_by_train,
     ("outcome", {"said_stale": True, "fresh": True, "rows": N})),
    ("original-layout-prompts-images-from-jsonl", original_layout_reads_jsonl,
     ("outcome", {"prompts_equal": True, "images_equal": True, "with_image": 8})),
    ("original-layout-tsv-row-positions", original_layout_tsv_rows,
     ("outcome", {"prompts": ["q0", "q1"], "refs": [f"{100 + N - 1}", f"{100 + N - 2}"], "all_images_match": True})),
    ("no-samples-parquet-nor-jsonl", no_prompts_anywhere,
     ("error", FileNotFoundError, r"bench has no prompts or images: expected data/registry/samples\.parquet .*"
                                  r"BENCHMARKS/<task>/<dataset>_samples\.jsonl")),
    ("jsonl-lacks-a-benchmark-sample", jsonl_missing_a_sample,
     ("error", ValueError, r"BENCHMARKS: 1 of 12 benchmark samples have no record .*'A/0'")),
    ("jsonl-bad-line", jsonl_bad_line,
     ("error", ValueError, r"a_samples\.jsonl:13: expected a JSON object with a 'sample_id'")),
    ("knn-scaler-default-all-rows", knn_scaler(None), ("outcome", {"dev_x": DEV_ALL})),
    ("knn-scaler-all-rows", knn_scaler("all"), ("outcome", {"dev_x": DEV_ALL})),
    ("knn-scaler-with-correct-rows", knn_scaler("with_correct"), ("outcome", {"dev_x": 0.0})),
    ("knn-scaler-unknown-option", knn_scaler("most"), ("error", ValueError, r"scaler_fit must be one of .*'most'")),
    ("run-config-env-interpolation-not-resolved", run_config_secret,
     ("outcome", {"leaked": [], "routers": ["best single: Phi-3.5-Vision", "knn", "mlp", "oracle"]})),
    ("mathvision-28kb-big-integer-products", mathvision_adversarial(POW_CHAIN),
     ("outcome", {"undetermined": True, "correct": 0, "under_1s": True})),
    ("mathvision-28kb-products-of-allowed-powers", mathvision_adversarial(PRODUCTS),
     ("outcome", {"undetermined": True, "correct": 0, "under_1s": True})),
    ("mathvision-latex-huge-power", mathvision_adversarial(LATEX_POWER),
     ("outcome", {"undetermined": True, "correct": 0, "under_1s": True})),
    ("mathvision-adversarial-answer-in-a-build", mathvision_adversarial_build,
     ("outcome", {"undetermined_scores": 1, "correct": 0})),
]


@pytest.mark.parametrize("builder,expected", [pytest.param(b, e, id=i) for i, b, e in CASES])
def test_bad_input(builder, expected, tmp_path, monkeypatch):
    action = builder(tmp_path, monkeypatch)
    if expected[0] == "error":
        _, kind, pattern = expected
        with pytest.raises(kind, match=pattern) as err:
            action()
        assert "\n" not in str(err.value)  # one line a person can act on
    else:
        assert action() == expected[1]
