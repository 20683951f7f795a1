"""Each model's final answer in the benchmark (docs/method.md#answers): the reading rules by hand, the answers every
reader keeps (VLMEvalKit work dirs, records tables, result folders), old benchmarks without answers, and the demo's
answers, which agree with its Y and never change its Y or C."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import data_cfg
from vlrb.data.answers import answer_key, extract_answer, free_form_format, is_valid, same_answer
from vlrb.data.benchmark import Benchmark
from vlrb.data.build import build
from vlrb.data.correctness import can_infer
from vlrb.data.inputs import BuildError
from vlrb.pricing import PriceTable

PRICES = PriceTable.from_mapping({"pricing": {
    "big": {"input_price_per_1m": 2.0, "output_price_per_1m": 8.0},
    "small": {"input_price_per_1m": 0.1, "output_price_per_1m": 0.2}}})


def quiet(*a, **k):
    pass


# ----------------------------------------------------------------------------- the reading rules, by hand

@pytest.mark.parametrize("response, fmt, n, answer", [
    ("B", "choice", 4, "B"),
    ("(B)", "choice", 4, "B"),
    ("The answer is C", "choice", 4, "C"),
    ("After looking at the chart, the answer is (D).", "choice", 4, "D"),
    ("E", "choice", 4, ""),  # out of range for 4 options
    ("A or B", "choice", 4, ""),  # two letters: no single answer
    ("The answer is 1,024", "number", 0, "1,024"),
    ("so x = 3/4", "number", 0, "3/4"),
    ("$\\frac{1}{2}$", "number", 0, "\\frac{1}{2}"),
    ("The area is 12 cm", "number", 0, "12"),
    ("Yes, there is a dog.", "yesno", 0, "yes"),
    ("no", "yesno", 0, "no"),
    ("<think>maybe B, maybe C</think>\n\nThe answer is A", "choice", 4, "A"),
    ("<think>the total is 7</think>\n\n42", "number", 0, "42"),
    ("Failed to obtain answer via API.", "choice", 4, ""),
    ("Failed to obtain answer via API.", "text", 0, ""),
    ("ACME12\n\nThe sign above the door reads so.", "text", 0, "ACME12"),  # a short answer first, then why
    ("I looked at every line of the receipt.\nThe answer is Baker St", "text", 0, "Baker St"),
])
def test_extract_answer(response, fmt, n, answer):
    assert extract_answer(response, fmt, n) == answer


@pytest.mark.parametrize("answer, fmt, n, key", [
    ("b", "choice", 5, "B"), ("(C)", "choice", 3, "C"), ("D", "choice", 3, ""), ("Z", "choice", 0, "Z"),
    ("hello", "choice", 4, ""), ("", "choice", 4, ""),
    ("1,024", "number", 0, "1024"), ("1024.0", "number", 0, "1024"), ("2/4", "number", 0, "0.5"),
    ("\\frac{1}{2}", "number", 0, "0.5"), ("-\\frac{3}{4}", "number", 0, "-0.75"), ("45°", "number", 0, "45"),
    ("12 cm", "number", 0, "12"), ("3\\sqrt{2}", "number", 0, ""), ("x/0", "number", 0, ""),
    ("Yes", "yesno", 0, "yes"), ("maybe", "yesno", 0, ""),
    ("Baker St.", "text", 0, "baker st"), ("", "text", 0, ""), ("x" * 201, "text", 0, ""),
])
def test_answer_key_and_validity(answer, fmt, n, key):
    assert answer_key(answer, fmt, n) == key
    assert is_valid(answer, fmt, n) == bool(key)


def test_same_answer_and_free_form_format():
    assert same_answer("0.5", "1/2", "number") and same_answer("(b)", "B", "choice", 4)
    assert not same_answer("", "", "text") and not same_answer("E", "E", "choice", 4)  # malformed agrees with none
    assert free_form_format("60") == "number" and free_form_format("$2\\sqrt{3}$") == "text"


# ----------------------------------------------------------------------------- records tables

def _records(**cols) -> pd.DataFrame:
    rows = []
    for i in range(12):
        for m in ("big", "small"):
            rows.append({"sample_id": f"s{i:02d}", "dataset": "quiz", "model_id": m, "correct": int(m == "big"),
                         "prompt": f"Which is it?\nA. red\nB. blue\nC. green\nitem {i}"})
    df = pd.DataFrame(rows)
    return df.assign(**{k: (v(df) if callable(v) else v) for k, v in cols.items()})


def _build_records(tmp_path, df, name="r.csv"):
    df.to_csv(tmp_path / name, index=False)
    build(data_cfg(reader="records", records=str(tmp_path / name), root=str(tmp_path / "b")), PRICES,
          progress=False, log=quiet)
    return Benchmark.load(tmp_path / "b")


def test_records_answer_column_is_kept_as_is(tmp_path):
    bm = _build_records(tmp_path, _records(answer=lambda d: np.where(d["model_id"] == "big", "B", "007")))
    assert bm.answers.shape == (12, 2) and set(bm.answers[:, 0]) == {"B"}
    assert set(bm.answers[:, 1]) == {"007"}  # text, not the number 7
    assert set(bm.meta["answer_format"]) == {"choice"} and set(bm.meta["n_options"]) == {3}  # read from the prompt
    split = bm.split("test")
    assert split.answers.shape == (len(split), 2) and (split.answer_format == "choice").all()


def test_records_response_only_is_read_by_format(tmp_path):
    df = _records(response=lambda d: np.where(d["model_id"] == "big", "The answer is (B).", "I think it is D"),
                  answer_format="choice", n_options=3)
    df.loc[0, "response"] = "Failed to obtain answer via API."
    bm = _build_records(tmp_path, df)
    assert list(bm.answers[1:, 0]) == ["B"] * 11 and bm.answers[0, 0] == ""
    assert set(bm.answers[:, 1]) == {""}  # D is no option of a 3-option item
    rep = json.loads((tmp_path / "b" / "reports" / "data_integrity" / "validation_results.json").read_text())
    assert rep["reader"]["answers"]["well_formed_share"] == {"big": round(11 / 12, 4), "small": 0.0}


def test_records_without_answers_build_no_answer_matrix(tmp_path):
    bm = _build_records(tmp_path, _records())
    assert bm.answers is None and "answer_format" not in bm.meta
    assert not (tmp_path / "b" / "data" / "matrices" / "answers.parquet").exists()
    split = bm.split("train")
    assert split.answers is None and (split.answer_format == "text").all() and (split.n_options == 0).all()


@pytest.mark.parametrize("col, value, match", [
    ("answer_format", "letter", r"r\.csv: column 'answer_format' must be one of choice, number, yesno, text.*'letter'.*row 4"),
    ("n_options", "-1", r"r\.csv: column 'n_options' must be a whole number.*row 4"),
    ("n_options", "four", r"r\.csv: column 'n_options' must be a whole number.*'four'"),
])
def test_records_bad_answer_columns_are_clear_errors(tmp_path, col, value, match):
    df = _records(answer="B", answer_format="choice", n_options="3")
    df.loc[3, col] = value
    with pytest.raises(BuildError, match=match):
        _build_records(tmp_path, df)


def test_records_conflicting_formats_of_one_sample(tmp_path):
    df = _records(answer="B", answer_format="choice")
    df.loc[1, "answer_format"] = "text"
    with pytest.raises(BuildError, match="sample 's00' has conflicting 'answer_format'"):
        _build_records(tmp_path, df)


# ----------------------------------------------------------------------------- a result folder

def test_results_folder_answers(tmp_path):
    items = [{"id": "1", "question": "Which?", "options": ["3", "4", "5"], "answer": "B"},
             {"id": "2", "question": "How many?", "options": [], "answer": "12"},
             {"id": "3", "question": "Length?", "options": [], "answer": "$2\\sqrt{3}$"},
             {"id": "14", "question": "Which graph?", "options": ["<image2>", "<image3>"], "answer": "B"}]
    items += [{"id": str(i), "question": f"q{i}", "options": [], "answer": str(i)} for i in range(4, 14)]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.jsonl").write_text("\n".join(map(json.dumps, items)))
    (tmp_path / "outputs").mkdir()
    for model, extracted in (("big", True), ("small", False)):
        rows = [{"id": it["id"], "response": f"... so the answer is {it['answer']}", "correct": True,
                 **({"model_answer": it["answer"].lower()} if extracted else {})} for it in items]
        if extracted:  # an answer that names an option by its text (MATH-V: "<image3>" where options are images)
            rows[3]["model_answer"] = "<IMAGE3>"
        (tmp_path / "outputs" / f"{model}.jsonl").write_text("\n".join(map(json.dumps, rows)))
    cfg = data_cfg(reader="results", dir=str(tmp_path), items="data/test.jsonl", results="outputs/*.jsonl",
                   root=str(tmp_path / "b"), fields={"image": None}, name="mv")
    build(cfg, PRICES, progress=False, log=quiet)
    bm = Benchmark.load(tmp_path / "b")
    meta = bm.meta.set_index("sample_id")
    assert meta.loc["mv/1", ["answer_format", "n_options"]].tolist() == ["choice", 3]
    assert meta.loc["mv/2", "answer_format"] == "number" and meta.loc["mv/3", "answer_format"] == "text"
    ans = pd.DataFrame(bm.answers, index=bm.sample_ids, columns=bm.models)
    assert ans.loc["mv/1"].tolist() == ["b", "B"]  # the result's own extraction; else read from the response
    assert ans.loc["mv/2"].tolist() == ["12", "12"]
    assert ans.loc["mv/14"].tolist() == ["B", "B"]  # the option's text is its letter; the response's letter
    assert answer_key(ans.loc["mv/3", "big"], "text") == answer_key(ans.loc["mv/3", "small"], "text") == "2 sqrt 3"


# ----------------------------------------------------------------------------- genuine VLMEvalKit files

def test_vlmevalkit_mcq_fixture_answers(shared, tmp_path):
    """gpt-4.1's real tdbench files: the letter can_infer reads in each prediction, among the row's options."""
    src = shared / "fixtures" / "vlmevalkit_gpt41" / "gpt-4.1-2025-04-14" / "T20250429_G02e291a8"
    run = tmp_path / "work" / "gpt-4.1-2025-04-14" / "T20250429_G02e291a8"
    run.mkdir(parents=True)
    for suffix in (".xlsx", "_openai_result.xlsx"):
        shutil.copy(src / f"gpt-4.1-2025-04-14_tdbench_rot0{suffix}", run)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"pricing": {"gpt-4.1-2025-04-14": {
        "type": "token_based", "input_price_per_1m": 2.0, "output_price_per_1m": 8.0}}}))
    cfg = data_cfg(raw_dir=str(tmp_path / "work"), root=str(tmp_path / "b"), datasets=["tdbench_rot0"],
                   extra_datasets={"tdbench_rot0": {"family": "mcq"}})
    build(cfg, PriceTable.from_yaml(tmp_path / "p.yaml"), progress=False, log=quiet)
    bm = Benchmark.load(tmp_path / "b")
    raw = pd.read_excel(run / "gpt-4.1-2025-04-14_tdbench_rot0_openai_result.xlsx", engine="calamine")
    raw.index = "tdbench_rot0/" + raw["index"].astype(str)
    raw = raw.reindex(bm.sample_ids)
    n = raw[list("ABCD")].notna().sum(1).to_numpy()
    assert (bm.meta["n_options"].to_numpy() == n).all() and set(n) == {2, 4}
    for i in range(0, bm.n_samples, 97):
        opts = {c: raw[c].iloc[i] for c in "ABCD" if pd.notna(raw[c].iloc[i])}
        read = can_infer(raw["prediction"].iloc[i], opts)
        assert bm.answers[i, 0] == (read if read in opts else "")
    right = bm.answers[:, 0] == raw["answer"].to_numpy()
    assert (right == bm.Y[:, 0].astype(bool)).mean() > 0.99  # the letter read agrees with VLMEvalKit's hit


def test_vlmevalkit_mathvision_answers_are_the_judges(mathv, tmp_path):
    from conftest import copy_mathv

    work = copy_mathv(mathv, tmp_path / "w", models=["Gemini-Pro", "LLaVA-v1.5-7B"])
    cfg = data_cfg(raw_dir=str(work / "vlmeval"), tsv_dir=str(work / "LMUData"), root=str(tmp_path / "b"))
    build(cfg, PriceTable.from_yaml(work / "pricing.yaml"), progress=False, log=quiet)
    bm = Benchmark.load(tmp_path / "b")
    fmt = bm.meta["answer_format"].to_numpy()
    assert (fmt == "choice").sum() == 190 and set(bm.meta.loc[fmt == "choice", "n_options"]) == {5}
    assert set(fmt[fmt != "choice"]) == {"number", "text"}
    keys = np.array([[answer_key(a, f, o) for a in row] for row, f, o in
                     zip(bm.answers, fmt, bm.meta["n_options"])], dtype=object)
    assert (keys[fmt == "choice"] != "").mean() > 0.8
    # a right answer (VLMEvalKit's rule) is a well-formed one, and two right answers agree
    both = bm.Y.all(1) & (fmt == "choice")
    assert both.sum() >= 5 and (keys[both, 0] == keys[both, 1]).all()


# ----------------------------------------------------------------------------- the demo

SMALL = 12
# one dataset of each correctness family (both renderers of the vqa family)
DEMO_DATASETS = ["MMStar", "HallusionBench", "ChartQA_TEST", "TextVQA_VAL", "DocVQA_VAL", "OCRBench",
                 "MathVista_MINI", "MathVision_MINI", "MathVerse_MINI"]


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory):
    """A small demo built twice: as generated, and with every mistake revision switched off."""
    from vlrb.demo import generate_demo
    from vlrb.demo import render, render_math

    out = {}
    for name in ("mistakes", "plain"):
        base = tmp_path_factory.mktemp(name)
        patch = pytest.MonkeyPatch()
        if name == "plain":  # revise() keeps every drawn answer
            for mod in (render, render_math):
                patch.setattr(mod, "revise", lambda mk, fmt, style, values, finals, preds, *a, **k:
                              (list(values), list(finals), list(preds)))
        try:
            paths = generate_demo(base / "raw", samples_per_dataset=SMALL, seed=5, workers=1, progress=False,
                                  datasets=DEMO_DATASETS, image_size=48)
        finally:
            patch.undo()
        cfg = data_cfg(raw_dir=str(paths["raw_dir"]), tsv_dir=str(paths["tsv_dir"]), root=str(base / "b"),
                       datasets=DEMO_DATASETS)
        build(cfg, PriceTable.from_yaml(_demo_prices(base)), progress=False, log=quiet)
        out[name] = Benchmark.load(base / "b")
    return out


def _demo_prices(base):
    from vlrb.demo import DEMO_MODELS

    path = base / "prices.yaml"
    path.write_text(yaml.safe_dump({"pricing": {m: {"input_price_per_1m": i, "output_price_per_1m": o}
                                                for m, (i, o) in DEMO_MODELS.items()}}))
    return path


def test_demo_mistakes_change_neither_y_nor_c(demo_pair):
    a, b = demo_pair["mistakes"], demo_pair["plain"]
    assert a.Y.tobytes() == b.Y.tobytes() and a.C.tobytes() == b.C.tobytes()
    assert a.scores.tobytes() == b.scores.tobytes()
    assert (a.answers != b.answers).mean() > 0.05  # ... and they did change answers


def test_demo_answers_agree_with_y(demo_pair):
    bm = demo_pair["mistakes"]
    fmt, nopt = bm.meta["answer_format"].to_numpy(), bm.meta["n_options"].to_numpy()
    keys = np.array([[answer_key(a, f, o) for a in row] for row, f, o in zip(bm.answers, fmt, nopt)], dtype=object)
    Y = bm.Y.astype(bool)
    exact = np.isin(fmt, ["choice", "number", "yesno"])  # text families score by overlap, not by equality
    for i in range(bm.n_samples):
        right = {keys[i, j] for j in np.flatnonzero(Y[i])}
        if exact[i]:
            assert "" not in right and len(right) <= 1, (bm.sample_ids[i], bm.answers[i])
        wrong = {keys[i, j] for j in np.flatnonzero(~Y[i])} - {""}
        assert not wrong & right, (bm.sample_ids[i], bm.answers[i])
    malformed = (keys == "") & ~Y
    assert malformed[exact].mean() > 0.05  # some wrong answers hold no letter or number
