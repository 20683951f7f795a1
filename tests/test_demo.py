"""The demo generator: VLMEvalKit layout and names, decodable TSVs, truth that the files encode,
determinism, and a latent-skill model that a router can learn."""
from __future__ import annotations

import ast
import base64
import csv
import io
import os
import random
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlrb.data.datasets import DATASETS
from vlrb.demo import generate_demo, plan_demo
from vlrb.demo.images import draw_image_b64
from vlrb.demo.vlmeval_rules import levenshtein
from vlrb.demo.vocab import CLAUSES, TOPICS
from vlrb.demo.world import API_MODELS, DEMO_MODELS, FAIL_MSG, FULL_SCALE_COUNTS, HANDWRITTEN_MATH, KINDS, RUN_FOLDER

RUN = RUN_FOLDER
SMALL = 20  # samples per dataset in the shared small generation
# models of every answer style: API, thinking, bare-letter, verbose, tiny
STYLES = ["GPT4o", "GeminiFlash2-5", "Kimi-VL-A3B-Thinking-2506", "InternVL2_5-78B",
          "llava_next_vicuna_7b", "SmolVLM2"]

# per family: the evaluation-file suffix after "<M>_<D>" that carries (or lets us recompute) correctness
EVAL_SUFFIX = {"mcq": "_openai_result.xlsx", "yorn": "_auxmatch.xlsx", "vqa": "_results.xlsx",
               "anls": "_results.xlsx", "ocrbench": ".xlsx", "mathvista": "_gpt-4o-mini.xlsx",
               "mathvision": "_gpt-4o-mini.xlsx", "mathverse": "_gpt-4o-mini_score.xlsx"}
# every file VLMEvalKit leaves per (model, dataset) in the run folder, beyond the prediction file
EXTRA_FILES = {"mcq": ["_openai_result.xlsx", "_acc.csv"], "yorn": ["_auxmatch.xlsx"],
               "vqa": ["_results.xlsx", "_acc.csv"], "anls": ["_results.xlsx", "_acc.csv"],
               "ocrbench": ["_score.json"],
               "mathvista": ["_gpt-4o-mini.xlsx", "_gpt-4o-mini_score.csv"],
               "mathvision": ["_gpt-4o-mini.xlsx", "_gpt-4o-mini_score.csv"],
               "mathverse": ["_gpt-4o-mini_extract.xlsx", "_gpt-4o-mini_score.xlsx"]}
NOMINAL = {"MMBench_DEV_EN_V11": 4876, "MMStar": 1500, "MMMU_DEV_VAL": 1050, "RealWorldQA": 765,
           "InfoVQA_VAL": 2801, "HallusionBench": 951, "MathVista_MINI": 1000,
           "MathVision_MINI": 304, "MathVerse_MINI": 3940, "AI2D_TEST": 3088,
           "ChartQA_TEST": 2500, "DocVQA_VAL": 5349, "TextVQA_VAL": 5000, "OCRBench": 1000}


def read_xlsx(path: Path) -> pd.DataFrame:
    return pd.read_excel(path, engine="calamine")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("demo") / "work"
    return generate_demo(out, samples_per_dataset=SMALL, seed=3, workers=2, progress=False)


def tsv_rows(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


# --------------------------------------------------------------------------- constants


def test_models_and_full_scale_counts():
    assert len(DEMO_MODELS) == 17
    assert DEMO_MODELS["GPT4o"] == (2.50, 10.00)
    assert DEMO_MODELS["GeminiFlash2-5"] == (0.30, 2.40)
    assert DEMO_MODELS["Janus-Pro-1B"] == (0.05, 0.05)
    assert DEMO_MODELS["InternVL2_5-78B"] == (1.00, 1.50)
    assert set(FULL_SCALE_COUNTS) == set(DATASETS)
    assert sum(FULL_SCALE_COUNTS.values()) == 30_540
    assert all(FULL_SCALE_COUNTS[k] <= NOMINAL[k] for k in NOMINAL)


# --------------------------------------------------------------------------- layout


def test_layout_run_folder_and_symlinks(small):
    raw, tsv = small["raw_dir"], small["tsv_dir"]
    assert small["n_samples"] == SMALL * len(DATASETS)
    assert sorted(p.stem for p in tsv.glob("*.tsv")) == sorted(DATASETS)
    assert sorted(p.name for p in raw.iterdir()) == sorted(DEMO_MODELS)
    assert not raw.parent.with_name(raw.parent.name + ".tmp").exists()
    for m in DEMO_MODELS:
        run = raw / m / RUN
        expected = set()
        for d, spec in DATASETS.items():
            stem = f"{m}_{d}"
            expected.add(f"{stem}.xlsx")
            expected.update(stem + sfx for sfx in EXTRA_FILES[spec.family])
        assert {p.name for p in run.iterdir()} == expected
        for name in expected:  # run.py's relative symlinks, one per run-folder file
            link = raw / m / name
            assert link.is_symlink() and not os.path.isabs(os.readlink(link))
            assert link.resolve() == (run / name).resolve()
    # a recursive glob finds every file twice, as in a real work dir
    real = [p for p in raw.rglob("*.xlsx") if not p.is_symlink()]
    assert len(list(raw.rglob("*.xlsx"))) == 2 * len(real)


def test_tsvs_quoted_columns_and_images(small):
    tsv = small["tsv_dir"]
    backrefs = defaultdict(int)
    for d in DATASETS:
        path = tsv / f"{d}.tsv"
        with open(path, newline="", encoding="utf-8") as fh:
            text = fh.read()
        # every field quoted, as VLMEvalKit writes: re-quoting all fields reproduces the file
        requoted = io.StringIO()
        writer = csv.writer(requoted, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerows(csv.reader(io.StringIO(text), delimiter="\t"))
        assert requoted.getvalue() == text, d
        df = tsv_rows(path)
        assert list(df.columns[:2]) == ["index", "image"] and {"question", "answer"} <= set(df.columns)
        cells = dict(zip(df["index"], df["image"]))
        for key, cell in cells.items():
            if len(cell) <= 64:  # a back-reference to another row's index
                backrefs[d] += 1
                cell = cells[cell]
            img = Image.open(io.BytesIO(base64.b64decode(cell)))
            img.load()
            assert img.format == "JPEG" and img.size == (96, 96)
    assert backrefs["HallusionBench"] > 0 and backrefs["MathVerse_MINI"] > 0


def test_dataset_specific_columns(small):
    tsv = small["tsv_dir"]
    cols = {d: set(tsv_rows(tsv / f"{d}.tsv").columns) for d in DATASETS}
    for d in ["MMBench_DEV_EN_V11", "AI2D_TEST", "MMMU_DEV_VAL", "RealWorldQA", "MMStar"]:
        assert set("ABCD") <= cols[d]
    assert {"hint", "category", "l2-category", "split"} <= cols["MMBench_DEV_EN_V11"]
    assert "l2_category" in cols["MMStar"]
    assert {"choices", "answer_option", "question_type", "answer_type", "precision", "unit"} <= cols["MathVista_MINI"]
    assert {"choices", "category", "level"} <= cols["MathVision_MINI"]
    assert {"question_for_eval", "problem_version", "metadata"} <= cols["MathVerse_MINI"]
    mmmu = tsv_rows(tsv / "MMMU_DEV_VAL.tsv")
    assert all(re.fullmatch(r"(dev|validation)_[A-Za-z]+_\d+", i) for i in mmmu["id"])
    hall = tsv_rows(tsv / "HallusionBench.tsv")
    assert all(len(i.split("_")) == 6 and not i.isdigit() for i in hall["index"])
    assert set(hall["answer"]) <= {"Yes", "No"}
    for d in ["TextVQA_VAL", "DocVQA_VAL", "InfoVQA_VAL", "OCRBench"]:
        answers = [ast.literal_eval(a) for a in tsv_rows(tsv / f"{d}.tsv")["answer"]]
        assert all(isinstance(a, list) and a for a in answers)
    assert all(len(ast.literal_eval(a)) == 10 for a in tsv_rows(tsv / "TextVQA_VAL.tsv")["answer"])


def test_prediction_files_follow_the_tsv(small):
    raw, tsv = small["raw_dir"], small["tsv_dir"]
    m = "Qwen2.5-VL-72B-Instruct"
    for d in DATASETS:
        src = tsv_rows(tsv / f"{d}.tsv")
        pred = read_xlsx(raw / m / RUN / f"{m}_{d}.xlsx")
        assert list(pred.columns) == [c for c in src.columns if c != "image"] + ["prediction"]
        assert [str(i) for i in pred["index"]] == list(src["index"])
        assert pred["prediction"].notna().all()
    hall = read_xlsx(raw / m / RUN / f"{m}_HallusionBench_auxmatch.xlsx")
    assert hall["score"].dtype == bool and pd.api.types.is_string_dtype(hall["index"])
    mcq = read_xlsx(raw / m / RUN / f"{m}_MMStar_openai_result.xlsx")
    assert mcq["hit"].dtype.kind == "i" and "l2_category" in mcq.columns


# --------------------------------------------------------------------------- the truth the files encode


def _ids(d: str, df: pd.DataFrame) -> list[str]:
    col = "id" if d == "MMMU_DEV_VAL" else "index"
    return [f"{d}/{x}" for x in df[col].astype(str)]


def test_files_encode_the_truth_under_the_correctness_rules(small):
    """Every (sample, model) score in demo_truth is what VLMEvalKit's rules give on the files."""
    from vlrb.data.families import score_frame

    truth = pd.read_parquet(small["truth"]).set_index(["sample_id", "model_id"])["score"]
    assert len(truth) == small["n_samples"] * 17
    for m in STYLES:
        for d, spec in DATASETS.items():
            df = read_xlsx(small["raw_dir"] / m / f"{m}_{d}{EVAL_SUFFIX[spec.family]}")
            expected = truth.loc[[(i, m) for i in _ids(d, df)]].to_numpy()
            np.testing.assert_allclose(score_frame(spec.family, df, d), expected, err_msg=f"{m} {d}")


def test_fractional_scores_follow_vqa_and_anls_rules(tmp_path):
    """Independent of the project's rules: TextVQA = mean(match), ANLS = 1 - min(distance) if >= 0.5."""
    res = generate_demo(tmp_path / "w", samples_per_dataset=60, seed=5, workers=1,
                        progress=False, datasets=["TextVQA_VAL", "DocVQA_VAL"])
    truth = pd.read_parquet(res["truth"]).set_index(["sample_id", "model_id"])["score"]
    fractions = set()
    for m in DEMO_MODELS:
        for d in ["TextVQA_VAL", "DocVQA_VAL"]:
            df = read_xlsx(res["raw_dir"] / m / f"{m}_{d}_results.xlsx")
            match = [ast.literal_eval(x) for x in df["eval_match"]]
            if d == "TextVQA_VAL":
                got = [float(np.mean(x)) for x in match]
            else:
                got = [1 - min(x) if 1 - min(x) >= 0.5 else 0.0 for x in match]
                np.testing.assert_allclose(df["eval_score"], [np.mean(x) for x in match])
            exp = truth.loc[[(i, m) for i in _ids(d, df)]].to_numpy()
            np.testing.assert_allclose(got, exp)
            fractions.update(round(v, 3) for v in got if 0 < v < 1)
    assert fractions, "expected some fractional VQA/ANLS scores"


def test_ocrbench_truth_is_the_substring_rule(small):
    truth = pd.read_parquet(small["truth"]).set_index(["sample_id", "model_id"])["score"]
    for m in DEMO_MODELS:
        df = read_xlsx(small["raw_dir"] / m / f"{m}_OCRBench.xlsx")
        for sid, pred, answers, cat in zip(_ids("OCRBench", df), df["prediction"], df["answer"], df["category"]):
            if cat == HANDWRITTEN_MATH:
                norm = lambda s: s.strip().replace("\n", " ").replace(" ", "")  # noqa: E731
            else:
                norm = lambda s: s.lower().strip().replace("\n", " ")  # noqa: E731
            hit = any(norm(a) in norm(pred) for a in ast.literal_eval(answers))
            assert float(hit) == truth[(sid, m)]


# --------------------------------------------------------------------------- determinism


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.suffix != ".parquet"}


def test_deterministic_for_a_seed_whatever_the_workers(tmp_path):
    kw = dict(samples_per_dataset=2, seed=11, progress=False)
    a = generate_demo(tmp_path / "a", workers=1, **kw)
    b = generate_demo(tmp_path / "b", workers=2, **kw)
    assert _file_bytes(tmp_path / "a") == _file_bytes(tmp_path / "b")
    pd.testing.assert_frame_equal(pd.read_parquet(a["truth"]), pd.read_parquet(b["truth"]))
    c = generate_demo(tmp_path / "c", workers=1, **{**kw, "seed": 12}, datasets=["MMStar"])
    assert (a["tsv_dir"] / "MMStar.tsv").read_bytes() != (c["tsv_dir"] / "MMStar.tsv").read_bytes()


def test_a_dataset_does_not_depend_on_the_others_selected(tmp_path, small):
    only = generate_demo(tmp_path / "o", samples_per_dataset=SMALL, seed=3, workers=1,
                         progress=False, datasets=["OCRBench"])
    assert [p.name for p in only["tsv_dir"].iterdir()] == ["OCRBench.tsv"]
    assert (only["tsv_dir"] / "OCRBench.tsv").read_bytes() == (small["tsv_dir"] / "OCRBench.tsv").read_bytes()


def test_atomic_replace_and_no_half_written_dir(tmp_path, monkeypatch):
    out = tmp_path / "w"
    generate_demo(out, samples_per_dataset=2, workers=1, progress=False, datasets=["MMStar"])
    before = _file_bytes(out)

    def crash(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr("vlrb.demo.generate._truth_frame", crash)
    with pytest.raises(RuntimeError):
        generate_demo(out, samples_per_dataset=2, seed=9, workers=1, progress=False,
                      datasets=["MMStar"])
    assert _file_bytes(out) == before  # the previous good folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [".w.lock", "w"]  # no temp folder left (the lock is 0 bytes)


# --------------------------------------------------------------------------- the latent-skill model


def test_oracle_far_above_the_best_single_model(small):
    t = pd.read_parquet(small["truth"])
    y = (t.pivot(index="sample_id", columns="model_id", values="score") >= 0.5)
    acc = y.mean()
    assert 0.55 <= acc.max() <= 0.8
    assert y.any(axis=1).mean() - acc.max() >= 0.15
    # the expensive models lead on average
    assert set(acc.sort_values(ascending=False).index[:4]) <= {
        "GPT4o", "GeminiFlash2-5", "InternVL2_5-78B", "Qwen2.5-VL-72B-Instruct", "Qwen2.5-VL-32B-Instruct"}


def test_a_router_that_reads_the_question_beats_every_single_model():
    """Choose a model per (dataset, topic word in the question, number of clauses), fitted on half."""
    plans = plan_demo(samples_per_dataset=300, seed=1)
    topic_kind = {t: k for k, ts in TOPICS.items() for t in ts}
    keys, y = [], []
    for d, plan in plans.items():
        for s, row in zip(plan.samples, plan.correct):
            q = s.row["question"]
            kind = next((k for t, k in topic_kind.items() if t in q), "?")
            keys.append((d, kind, sum(c in q for c in CLAUSES) >= 2))
            y.append(row)
    y = np.array(y)
    train = np.arange(len(y)) % 2 == 0
    best = y[train].mean(0).argmax()
    groups = defaultdict(list)
    for i in np.flatnonzero(train):
        groups[keys[i]].append(i)
    choice = {k: y[v].mean(0).argmax() for k, v in groups.items()}
    test = np.flatnonzero(~train)
    routed = np.mean([y[i, choice.get(keys[i], best)] for i in test])
    assert routed >= y[test, best].mean() + 0.02


def test_image_kinds_are_visually_distinct():
    """Colour, edge and 4x4 layout statistics already separate the five kinds (nearest centroid)."""
    def features(b64: str) -> np.ndarray:
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        arr = np.asarray(img, dtype=float)
        gray = arr.mean(2)
        edges = np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean()
        layout = np.asarray(img.resize((4, 4), Image.BILINEAR), dtype=float).ravel() / 4
        return np.concatenate([arr.mean((0, 1)), arr.std((0, 1)), [edges], layout])

    feats = defaultdict(list)
    for kind in range(len(KINDS)):
        for i in range(12):
            topic = TOPICS[KINDS[kind]][i % 8]
            feats[kind].append(features(draw_image_b64(kind, random.Random(i).random(), topic, i)))
    centroids = {k: np.mean(v, 0) for k, v in feats.items()}
    hits = sum(min(centroids, key=lambda c: np.linalg.norm(f - centroids[c])) == k
               for k, v in feats.items() for f in v)
    assert hits / (12 * len(KINDS)) >= 0.9


# --------------------------------------------------------------------------- predictions


def test_failed_api_calls(tmp_path):
    res = generate_demo(tmp_path / "w", samples_per_dataset=20, seed=2, workers=1,
                        progress=False, api_failure_rate=0.2, datasets=["MMStar", "DocVQA_VAL"])
    truth = pd.read_parquet(res["truth"]).set_index(["sample_id", "model_id"])["score"]
    for m in DEMO_MODELS:
        for d in ["MMStar", "DocVQA_VAL"]:
            df = read_xlsx(res["raw_dir"] / m / f"{m}_{d}.xlsx")
            failed = df["prediction"] == FAIL_MSG
            if m in API_MODELS:
                assert failed.any()
                assert (truth.loc[[(i, m) for i in _ids(d, df[failed])]] == 0).all()
            else:
                assert not failed.any()
    # at the default rate: about 0.3% of the API models' predictions at full scale
    plans = plan_demo(full=True)
    api = [list(DEMO_MODELS).index(m) for m in API_MODELS]
    rate = np.concatenate([p.failed[:, api] for p in plans.values()]).mean()
    assert 0.0015 <= rate <= 0.0045


def test_prediction_lengths_by_model_and_task(small):
    raw = small["raw_dir"]

    def words(m: str, d: str) -> float:
        preds = read_xlsx(raw / m / f"{m}_{d}.xlsx")["prediction"].astype(str)
        return float(np.mean([len(p.split()) for p in preds]))

    assert words("InternVL2_5-78B", "MMBench_DEV_EN_V11") <= 2  # a bare letter
    assert words("Kimi-VL-A3B-Thinking-2506", "MMBench_DEV_EN_V11") > 50  # thinks first
    assert words("MiMo-VL-7B-RL", "MathVerse_MINI") > words("MiMo-VL-7B-RL", "MMStar")
    assert words("GPT4o", "OCRBench") <= 3 < 30 < words("GPT4o", "MathVista_MINI")  # math is long


def test_levenshtein_matches_the_textbook_dp():
    def dp(a: str, b: str) -> int:
        prev = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            cur = [i]
            for j, cb in enumerate(b, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
            prev = cur
        return prev[-1]

    rnd = random.Random(0)
    for _ in range(2000):
        a = "".join(rnd.choice("ab c$.1") for _ in range(rnd.randint(0, 25)))
        b = "".join(rnd.choice("ab c$.1") for _ in range(rnd.randint(0, 25)))
        assert levenshtein(a, b) == dp(a, b)


def test_the_reader_recovers_the_planned_truth(small, tmp_path):
    """End to end: build_data's VLMEvalKit reader on the generated work dir gives back demo_truth exactly,
    images included (every sample keeps its TSV image, back-references resolved)."""
    from omegaconf import OmegaConf

    from vlrb.data.benchmark import Benchmark
    from vlrb.data.build import build
    from vlrb.pricing import PriceTable

    cfg = OmegaConf.create(dict(name="t", reader="vlmevalkit", raw_dir=str(small["raw_dir"]),
                                tsv_dir=str(small["tsv_dir"]), root=str(tmp_path / "b"), datasets=None, models=None,
                                binarize_threshold=0.5, split="random", split_seed=42, strict=False, workers=1))
    prices = PriceTable.from_mapping({"pricing": {m: {"input_price_per_1m": i, "output_price_per_1m": o}
                                                  for m, (i, o) in DEMO_MODELS.items()}})
    build(cfg, prices, progress=False, log=lambda *a: None)
    bm = Benchmark.load(tmp_path / "b")
    truth = pd.read_parquet(small["truth"]).pivot(index="sample_id", columns="model_id", values="score")
    truth = truth.reindex(index=bm.sample_ids, columns=bm.models)
    assert bm.n_samples == small["n_samples"] and bm.models == sorted(DEMO_MODELS)
    np.testing.assert_allclose(bm.scores, truth.to_numpy(), atol=1e-6)
    assert bm.images.has_image.all() and bm.images[0].size[0] > 0
