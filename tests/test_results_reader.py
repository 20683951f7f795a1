"""The result-folder reader (data=results / data=mathv) on a slice of the real MATH-Vision folder, per-row input
tokens in records tables, and bad result folders as one-line errors."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import REPO, data_cfg
from vlrb.data.benchmark import Benchmark
from vlrb.data.build import build
from vlrb.data.inputs import BuildError
from vlrb.data.tokens import count_tokens
from vlrb.pricing import PriceTable

MATHV_PRICES = PriceTable.from_yaml(REPO / "conf" / "pricing" / "mathv.yaml")
TEXT_ONLY = "GPT4-CoT (Text Only)"
SLICE_MODELS = {"closed-source/Gemini": ["Gemini-Pro"], "closed-source/GPT": [TEXT_ONLY],
                "open-source/LLavA": ["LLaVA-v1.5-7B"]}
N_ITEMS = 40


def quiet(*a, **k):
    pass


def mathv_cfg(folder: Path, root: Path, **kw):
    """conf/data/mathv.yaml as build_data.py composes it (base keys + results + mathv), pointed at `folder`."""
    base = OmegaConf.load(REPO / "conf" / "data" / "_base.yaml")
    cfg = OmegaConf.merge(base, OmegaConf.load(REPO / "conf" / "data" / "results.yaml"),
                          OmegaConf.load(REPO / "conf" / "data" / "mathv.yaml"))
    cfg.pop("defaults", None)
    cfg.root, cfg.dir, cfg.workers = str(root), str(folder), 1
    for k, v in kw.items():
        OmegaConf.update(cfg, k, v, merge=False)
    return cfg


@pytest.fixture(scope="module")
def mathv_slice(shared, tmp_path_factory) -> Path:
    """The first 40 items of the full MATH-V folder with three configurations (one text-only), in MATH-V's layout."""
    src = shared / "realdata" / "mathv_full"
    if not (src / "data" / "test.jsonl").exists():
        pytest.skip("the full MATH-Vision folder is not in ../shared/realdata")
    dst = tmp_path_factory.mktemp("mathv") / "MATH-V"
    lines = (src / "data" / "test.jsonl").read_text().splitlines()[:N_ITEMS]
    (dst / "data").mkdir(parents=True)
    (dst / "data" / "test.jsonl").write_text("\n".join(lines) + "\n")
    (dst / "images").mkdir()
    for item in map(json.loads, lines):
        shutil.copy(src / item["image"], dst / item["image"])
    for fam, models in SLICE_MODELS.items():
        (dst / "outputs" / fam).mkdir(parents=True)
        for m in models:
            rows = (src / "outputs" / fam / f"{m}.jsonl").read_text().splitlines()[:N_ITEMS]
            (dst / "outputs" / fam / f"{m}.jsonl").write_text("\n".join(rows) + "\n")
            shutil.copy(src / "outputs" / fam / f"{m}_result.json", dst / "outputs" / fam)  # ignored: not .jsonl
    # a real clone also holds MATH-V's random-answer baseline, which data=mathv leaves out (it has no price)
    rows = [{"id": json.loads(l)["id"], "model": "random", "response": "A", "correct": False} for l in lines]
    (dst / "outputs" / "Random-Chance.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    return dst


@pytest.fixture(scope="module")
def built(mathv_slice, tmp_path_factory):
    root = tmp_path_factory.mktemp("built") / "b"
    build(mathv_cfg(mathv_slice, root), MATHV_PRICES, progress=False, log=quiet)
    return Benchmark.load(root)


def test_mathv_slice_correctness_is_the_files_own(built, mathv_slice):
    assert built.models == sorted(m for ms in SLICE_MODELS.values() for m in ms)
    assert built.n_samples == N_ITEMS
    for fam, models in SLICE_MODELS.items():
        for m in models:
            rows = [json.loads(l) for l in (mathv_slice / "outputs" / fam / f"{m}.jsonl").read_text().splitlines()]
            truth = pd.Series({f"MathVision/{r['id']}": int(r["correct"]) for r in rows})
            got = pd.Series(built.Y[:, built.models.index(m)], index=built.sample_ids)
            assert (got.reindex(truth.index) == truth).all(), m
            assert truth.sum() > 0  # the slice holds some correct answers, so the check can fail


def test_mathv_slice_prompts_images_datasets_groups(built, mathv_slice):
    items = {f"MathVision/{r['id']}": r for r in map(json.loads, (mathv_slice / "data" / "test.jsonl").read_text().splitlines())}
    s = built.samples.set_index("sample_id")
    # item 2 is multiple choice with options A-E drawn in the image; item 1 is free-form
    assert s.at["MathVision/1", "prompt"] == items["MathVision/1"]["question"]
    assert s.at["MathVision/2", "prompt"] == items["MathVision/2"]["question"] + "\nOptions: (A) A (B) B (C) C (D) D (E) E"
    assert s.at["MathVision/3", "image_ref"] == str((mathv_slice / "images" / "3.jpg").resolve())
    assert built.images.has_image.all()
    assert built.images[0].size[0] <= 224  # a real (downscaled) MATH-V image decodes
    meta = built.meta.set_index("sample_id")
    assert meta.at["MathVision/3", "dataset"] == "metric geometry - length"
    assert meta.at["MathVision/3", "group"] == "level 1" and meta.at["MathVision/1", "group"] == "level 2"


def test_mathv_slice_per_row_input_tokens(built):
    """The text-only configuration is billed for the question's tokens, the VLMs for question + 256 image tokens."""
    tc = pd.read_csv(built.root / "reports" / "token_statistics" / "token_based_costs.csv")
    row = tc[tc["sample_id"] == "MathVision/1"].set_index("model")
    text = count_tokens("Which number should be written in place of the question mark?\n<image1>")
    assert row.at[TEXT_ONLY, "total_input_tokens"] == text
    assert row.at["Gemini-Pro", "total_input_tokens"] == text + 256
    p = MATHV_PRICES[TEXT_ONLY]
    j, i = built.models.index(TEXT_ONLY), list(built.sample_ids).index("MathVision/1")
    assert built.C[i, j] == pytest.approx(text * p.input_per_1m / 1e6 + row.at[TEXT_ONLY, "output_tokens"] * p.output_per_1m / 1e6, rel=1e-5)
    assert built.meta.set_index("sample_id").at["MathVision/1", "input_tokens"] == text + 256  # the routed request


def test_records_input_tokens_are_per_row(tmp_path):
    """A records table may give one sample different input tokens per model; costs use each row's own count."""
    prices = PriceTable.from_mapping({"pricing": {"vlm": {"input_price_per_1m": 1.0, "output_price_per_1m": 0.0},
                                                  "llm": {"input_price_per_1m": 1.0, "output_price_per_1m": 0.0}}})
    rows = [{"sample_id": f"s{i:02d}", "dataset": "A", "model_id": m, "correct": i % 2, "prompt": "q",
             "input_tokens": 300 if m == "vlm" else 44, "output_tokens": 0} for i in range(20) for m in ("vlm", "llm")]
    pd.DataFrame(rows).to_parquet(tmp_path / "r.parquet")
    build(data_cfg(reader="records", records=str(tmp_path / "r.parquet"), root=str(tmp_path / "b")), prices,
          progress=False, log=quiet)
    bm = Benchmark.load(tmp_path / "b")
    assert bm.models == ["llm", "vlm"]
    np.testing.assert_allclose(bm.C[:, 0], 44 / 1e6)
    np.testing.assert_allclose(bm.C[:, 1], 300 / 1e6)
    assert (bm.meta["input_tokens"] == 300).all()


def _break(folder: Path, how: str) -> dict:
    """Damage a copy of the slice; returns data.* overrides."""
    gem = folder / "outputs" / "closed-source" / "Gemini" / "Gemini-Pro.jsonl"
    if how == "unknown-id":
        gem.write_text(gem.read_text() + json.dumps({"id": "99999", "response": "1", "correct": True}) + "\n")
    elif how == "no-correct":
        gem.write_text("\n".join(json.dumps({k: v for k, v in json.loads(l).items() if k != "correct"})
                                 for l in gem.read_text().splitlines()) + "\n")
    elif how == "duplicate-stem":
        (folder / "outputs" / "other").mkdir()
        shutil.copy(gem, folder / "outputs" / "other" / "Gemini-Pro.jsonl")
    elif how == "bad-json":
        gem.write_text(gem.read_text() + "{not json\n")
    elif how == "image-outside":
        items = folder / "data" / "test.jsonl"
        rows = [json.loads(l) for l in items.read_text().splitlines()]
        rows[0]["image"] = "../../outside.jpg"
        items.write_text("\n".join(map(json.dumps, rows)) + "\n")
    elif how == "text-only-typo":
        return {"text_only_models": ["GPT4 (Text Only)", "GPT4 (Text+Caption)"]}
    elif how == "no-image-field":
        return {"fields.image": "picture"}
    return {}


@pytest.mark.parametrize("how, error", [
    ("unknown-id", r"Gemini-Pro.jsonl:41: item id '99999' is not in the items file"),
    ("no-correct", r"Gemini-Pro.jsonl: result rows need the field 'correct' \(data.fields.correct\)"),
    ("duplicate-stem", r"two result files give model 'Gemini-Pro'"),
    ("bad-json", r"Gemini-Pro.jsonl:41: not a JSON object"),
    ("image-outside", r"image '../../outside.jpg' resolves to .*, outside the results folder"),
    ("text-only-typo", r"data.text_only_models names \['GPT4 \(Text Only\)', 'GPT4 \(Text\+Caption\)'\], none of which"),
    ("no-image-field", r"items lack the field\(s\) 'picture' \(data.fields.image\)"),
])
def test_bad_result_folders(mathv_slice, tmp_path, how, error):
    folder = tmp_path / "MATH-V"
    shutil.copytree(mathv_slice, folder)
    over = _break(folder, how)
    with pytest.raises(BuildError, match=error):
        build(mathv_cfg(folder, tmp_path / "b", **over), MATHV_PRICES, progress=False, log=quiet)


def test_build_never_writes_into_the_results_folder(mathv_slice, tmp_path):
    """data.root is the only folder a build writes: the results folder is read, never replaced."""
    folder = tmp_path / "MATH-V"
    shutil.copytree(mathv_slice, folder)
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    build(mathv_cfg(folder, tmp_path / "b"), MATHV_PRICES, progress=False, log=quiet)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before
    assert (tmp_path / "b" / "data" / "matrices" / "Y.npz").exists()


def test_a_clone_without_some_text_only_files_is_reported_not_refused(built):
    """mathv.yaml names three text-only configurations; the slice has one: the others are listed, not an error."""
    rep = json.loads((built.root / "reports" / "data_integrity" / "validation_results.json").read_text())["reader"]
    assert rep["text_only_models"] == [TEXT_ONLY]
    assert rep["text_only_models_without_results"] == ["ChatGPT3.5-CoT (Text+Image Caption)", "GPT4-CoT (Text+Image Caption)"]
