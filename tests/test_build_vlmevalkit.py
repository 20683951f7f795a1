"""The VLMEvalKit reader on genuine files: the gpt-4.1 fixtures and the real MathVision work dir."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import copy_mathv, data_cfg
from vlrb.data.benchmark import Benchmark
from vlrb.data.build import build
from vlrb.data.inputs import BuildError
from vlrb.pricing import PriceTable, PricingError


def quiet(*a, **k):
    pass


def mathv_cfg(mathv, root, **kw):
    return data_cfg(raw_dir=str(mathv / "vlmeval"), tsv_dir=str(mathv / "LMUData"), root=str(root), **kw)


@pytest.fixture(scope="module")
def mathv_bench(mathv, tmp_path_factory):
    root = tmp_path_factory.mktemp("mv") / "bench"
    prices = PriceTable.from_yaml(mathv / "pricing.yaml")
    manifest = build(mathv_cfg(mathv, root, workers=2), prices, progress=False, log=quiet)
    return root, manifest, prices


def test_mathv_agrees_with_answer_key(mathv, mathv_bench):
    root, manifest, _ = mathv_bench
    bm = Benchmark.load(root)
    assert bm.Y.shape == (304, 15)
    key = pd.read_csv(mathv / "expected_correct.csv")
    expected = key.pivot(index="sample_id", columns="model_id", values="correct").reindex(
        index=bm.sample_ids, columns=bm.models)
    agree = (expected.to_numpy() == bm.Y)
    # VLMEvalKit's own MathVision rule reaches 4,526 / 4,560 here; the 34 disagreements are that rule's
    # quirks (option values, letters found inside words, the eval('a') local variable, 'dh' -> D).
    assert agree.sum() == 4526
    assert agree.mean(0).min() >= 0.98  # every model
    summary = json.loads((mathv / "expected_summary.json").read_text())
    assert bm.models == sorted(summary["models"])  # prefix keys (Gemini-Pro / Gemini-Pro-CoT) kept apart


def test_mathv_symlinks_counted_once_and_images_decode(mathv_bench):
    root, manifest, _ = mathv_bench
    rep = json.loads((root / "reports" / "data_integrity" / "validation_results.json").read_text())
    assert rep["reader"]["duplicate_paths_skipped"] == 45  # each of 45 files also found via <M>/ link
    assert rep["n_pairs"] == 4560
    bm = Benchmark.load(root)
    assert bm.images.has_image.all()
    sizes = {bm.images[i].size for i in range(0, 304, 50)}
    assert all(w > 100 and h > 100 for w, h in sizes)


def test_mathv_costs_from_tokens_and_prices(mathv_bench):
    root, _, prices = mathv_bench
    bm = Benchmark.load(root)
    toks = pd.read_csv(root / "reports" / "token_statistics" / "output_tokens_per_model.csv")
    j = bm.models.index("GPT-4_text")
    out = toks[toks["model"] == "GPT-4_text"].set_index("sample_id")["output_tokens"].reindex(bm.sample_ids)
    p = prices["GPT-4_text"]
    expect = bm.meta["input_tokens"].to_numpy() * p.input_per_1m / 1e6 + out.to_numpy() * p.output_per_1m / 1e6
    np.testing.assert_allclose(bm.C[:, j], expect, rtol=1e-6)
    assert (bm.meta["input_tokens"] > 256).all()  # prompt tokens + 256 for the image
    bounds = json.loads((root / "data" / "matrices" / "cost_bounds.json").read_text())
    assert bounds["cmax_model"] == "GPT-4_text"
    costs = pd.read_csv(root / "reports" / "token_statistics" / "token_based_costs.csv")
    np.testing.assert_allclose(costs["input_cost"] + costs["output_cost"], costs["total_cost"], rtol=1e-5)


def test_rebuild_with_unchanged_inputs_is_a_noop(mathv, mathv_bench):
    root, manifest, prices = mathv_bench
    again = build(mathv_cfg(mathv, root), prices, progress=False, log=quiet)
    assert again["up_to_date"] and again["fingerprint"] == manifest["fingerprint"]


def test_fixture_gpt41_mcq_files_and_judge_cache(shared, tmp_path):
    src = shared / "fixtures" / "vlmevalkit_gpt41"
    work = tmp_path / "work"
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("LICENSE", "README.md"))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"pricing": {"gpt-4.1-2025-04-14": {
        "type": "token_based", "input_price_per_1m": 2.0, "output_price_per_1m": 8.0}}}))
    extra = {k: {"family": "mcq"} for k in ["CV-Bench-2D", "CV-Bench-3D", "tdbench_rot0", "tdbench_rot90",
                                             "tdbench_rot180", "tdbench_rot270"]}
    cfg = data_cfg(raw_dir=str(work), root=str(tmp_path / "b"), datasets=list(extra), extra_datasets=extra)
    build(cfg, PriceTable.from_yaml(tmp_path / "p.yaml"), progress=False, log=quiet)
    bm = Benchmark.load(tmp_path / "b")
    acc = pd.Series(bm.Y[:, 0], index=bm.meta["dataset"]).groupby(level=0).mean()
    run = work / "gpt-4.1-2025-04-14"
    # tdbench: `hit` from _openai_result.xlsx; VLMEvalKit's own _acc.csv agrees
    for rot in ["rot0", "rot90", "rot180", "rot270"]:
        overall = pd.read_csv(run / "T20250429_G02e291a8" / f"gpt-4.1-2025-04-14_tdbench_{rot}_acc.csv")["Overall"].iloc[0]
        assert acc[f"tdbench_{rot}"] == pytest.approx(overall, abs=1e-9)
    # CV-Bench has no _result.xlsx: `hit` comes from the judge-cache pickle (read without executing code).
    # Its _acc.csv "Overall" is the mean of the per-source accuracies (ADE20K, COCO), so compare per source.
    pred = pd.read_excel(run / "T20250428_G1ff966c3" / "gpt-4.1-2025-04-14_CV-Bench-2D.xlsx", engine="calamine")
    rows = (bm.meta["dataset"] == "CV-Bench-2D").to_numpy()
    y = pd.Series(bm.Y[rows, 0], index=bm.meta.loc[rows, "sample_id"].to_numpy())
    src = pd.Series(pred["source"].to_numpy(), index="CV-Bench-2D/" + pred["index"].astype(str))
    per_source = y.groupby(src.reindex(y.index).to_numpy()).mean()
    ref = pd.read_csv(run / "T20250428_G1ff966c3" / "gpt-4.1-2025-04-14_CV-Bench-2D_acc.csv").iloc[0]
    for source in ["ADE20K", "COCO"]:
        assert per_source[source] == pytest.approx(float(ref[source]), abs=1e-9)
    assert (bm.meta["dataset"] == "tdbench_rot0").sum() == 1800


def test_unknown_dataset_key_is_a_clear_error(mathv, tmp_path):
    with pytest.raises(BuildError, match="unknown dataset key.*NotADataset"):
        build(mathv_cfg(mathv, tmp_path / "b", datasets=["NotADataset"]), PriceTable.from_yaml(mathv / "pricing.yaml"),
              progress=False, log=quiet)


def test_model_without_price_says_how_to_add_one(mathv, tmp_path):
    table = yaml.safe_load((mathv / "pricing.yaml").read_text())
    del table["pricing"]["SPHINX-v2"]
    with pytest.raises(BuildError, match=r"(?s)'SPHINX-v2'.*no price.*pricing.path"):
        build(mathv_cfg(mathv, tmp_path / "b"), PriceTable.from_mapping(table), progress=False, log=quiet)


def test_data_models_narrows_the_pool(mathv, tmp_path):
    cfg = mathv_cfg(mathv, tmp_path / "b", models=["Gemini-Pro", "LLaVA-v1.5-7B"])
    build(cfg, PriceTable.from_yaml(mathv / "pricing.yaml"), progress=False, log=quiet)
    assert Benchmark.load(tmp_path / "b").models == ["Gemini-Pro", "LLaVA-v1.5-7B"]


def test_bad_price_table_is_a_clear_error(tmp_path):
    (tmp_path / "p.yaml").write_text("pricing:\n  m: {input_price_per_1m: cheap, output_price_per_1m: 1}\n")
    with pytest.raises(PricingError, match="'m' needs numeric"):
        PriceTable.from_yaml(tmp_path / "p.yaml")


# ----------------------------------------------------------------------------- broken inputs

@pytest.fixture
def work(mathv, tmp_path):
    return copy_mathv(mathv, tmp_path / "w")


def _build(work, root, **kw):
    cfg = data_cfg(raw_dir=str(work / "vlmeval"), tsv_dir=str(work / "LMUData"), root=str(root), **kw)
    return build(cfg, PriceTable.from_yaml(work / "pricing.yaml"), progress=False, log=quiet)


def _judge(work, model="LLaVA-v1.5-7B"):
    return work / "vlmeval" / model / "T20260101_G" / f"{model}_MathVision_MINI_gpt-4o-mini.xlsx"


def test_corrupt_xlsx_is_an_error_and_the_previous_build_survives(work, tmp_path):
    root = tmp_path / "b"
    _build(work, root)
    before = (root / "data" / "matrices" / "Y.npz").read_bytes()
    _judge(work).write_bytes(b"PK\x03\x04 this is not a complete xlsx")
    with pytest.raises(BuildError, match="LLaVA-v1.5-7B_MathVision_MINI_gpt-4o-mini.xlsx: cannot read"):
        _build(work, root)
    assert (root / "data" / "matrices" / "Y.npz").read_bytes() == before
    assert not list(tmp_path.glob(".b.*.building"))  # no half-written build left behind (.b.lock stays: 0 bytes)


def test_missing_correctness_column_names_it(work, tmp_path):
    df = pd.read_excel(_judge(work), engine="calamine").drop(columns=["res"])
    df.to_excel(_judge(work), index=False)
    with pytest.raises(BuildError, match="lacks column 'res'"):
        _build(work, tmp_path / "b")


def test_duplicate_indices_are_reported_and_counted_once(work, tmp_path):
    df = pd.read_excel(_judge(work), engine="calamine")
    pd.concat([df, df.head(3)]).to_excel(_judge(work), index=False)
    m = _build(work, tmp_path / "b")
    assert m["n_samples"] == 304
    assert any("3 duplicate indices" in s for s in m["integrity"]["suspicious"])


def test_sample_missing_for_a_model_is_dropped_and_reported(work, tmp_path):
    df = pd.read_excel(_judge(work), engine="calamine")
    df.iloc[5:].to_excel(_judge(work), index=False)
    m = _build(work, tmp_path / "b")
    assert m["n_samples"] == 299
    dropped = m["integrity"]["reader"]["dropped_incomplete_samples"]["MathVision_MINI"]
    assert dropped == {"samples": 5, "missing_per_model": {"LLaVA-v1.5-7B": 5}}
    with pytest.raises(BuildError, match="strict: 5 samples"):
        _build(work, tmp_path / "b2", strict=True)


def test_undecodable_tsv_image_is_reported_not_fatal(work, tmp_path):
    tsv = work / "LMUData" / "MathVision_MINI.tsv"
    df = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    df.loc[0, "image"] = "bm90IGFuIGltYWdlIGF0IGFsbCwganVzdCB0ZXh0IHRoYXQgaXMgbG9uZyBlbm91Z2ggdG8gbm90IGJlIGEgcmVm"
    df.to_csv(tsv, sep="\t", index=False)
    m = _build(work, tmp_path / "b")
    bad = m["integrity"]["reader"]["images"]["MathVision_MINI"]["undecodable"]
    assert bad == [f"MathVision_MINI/{df.loc[0, 'index']}"]
    bm = Benchmark.load(tmp_path / "b")
    assert int((~bm.images.has_image).sum()) == 1 and m["n_samples"] == 304


def test_failed_api_predictions_count_as_wrong_and_are_reported(work, tmp_path):
    df = pd.read_excel(_judge(work, "Gemini-Pro"), engine="calamine")
    df.loc[:9, "prediction"] = "Failed to obtain answer via API."
    df.to_excel(_judge(work, "Gemini-Pro"), index=False)
    m = _build(work, tmp_path / "b")
    assert m["integrity"]["per_model"]["Gemini-Pro"]["failed_predictions"] == 10
    bm = Benchmark.load(tmp_path / "b")
    j = bm.models.index("Gemini-Pro")
    ids = [f"MathVision_MINI/{i}" for i in df.loc[:9, "index"]]
    assert bm.Y[bm.meta["sample_id"].isin(ids).to_numpy(), j].sum() == 0


def test_newest_run_folder_wins(work, tmp_path):
    model = "LLaVA-v1.5-7B"
    old = work / "vlmeval" / model / "T20250101_Gdeadbeef"
    shutil.copytree(work / "vlmeval" / model / "T20260101_G", old)
    df = pd.read_excel(old / f"{model}_MathVision_MINI_gpt-4o-mini.xlsx", engine="calamine")
    df["res"] = "nonsense"  # the older run would make every answer wrong
    df.to_excel(old / f"{model}_MathVision_MINI_gpt-4o-mini.xlsx", index=False)
    _build(work, tmp_path / "b")
    bm = Benchmark.load(tmp_path / "b")
    assert bm.Y[:, bm.models.index(model)].sum() > 0
