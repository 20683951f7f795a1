"""Bad records tables (and blank VLMEvalKit score cells): each case is a clear one-line error, or a build whose
console summary states what was skipped or could not be determined. One row per case (issue 10)."""
import os
import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, data_cfg
from vlrb.jobs.build import print_summary
from vlrb.data.benchmark import Benchmark
from vlrb.data.build import build
from vlrb.data.inputs import BuildError
from vlrb.pricing import PriceTable

DEFAULT_PRICES = REPO / "conf" / "pricing" / "vlrb_2025.yaml"  # what build_data.py composes by default
TINY_PRICES = {"pricing": {"a": {"input_price_per_1m": 1.0, "output_price_per_1m": 2.0},
                           "b": {"input_price_per_1m": 0.1, "output_price_per_1m": 0.2}}}


def quiet(*a, **k):
    pass


def table(n: int = 60, models=("a", "b"), cost: bool = True) -> pd.DataFrame:
    """n samples (datasets A and B, half each) x models, with token counts (no tokenizer needed) and a cost."""
    rows = [{"sample_id": f"s{i:03d}", "dataset": "A" if i < n // 2 else "B", "model_id": m,
             "correct": int((i + j) % 3 == 0), "prompt": f"question {i}", "input_tokens": 20, "output_tokens": 5,
             **({"cost": 0.001 * (j + 1)} if cost else {})}
            for i in range(n) for j, m in enumerate(models)]
    return pd.DataFrame(rows)


def write(df: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lower()
    if fmt == ".parquet":
        df.to_parquet(path)
    elif fmt == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_csv(path, index=False, sep=";" if path.stem.startswith("semi") else ",")
    return path


@dataclass
class Case:
    """`make(tmp)` writes the input and returns (records path, data.* overrides, prices: 'default' | 'tiny' | None)."""
    make: Callable
    error: str | None = None  # regex of the BuildError, or
    console: str | None = None  # regex the build's console summary must contain
    check: Callable | None = None  # check(tmp, Benchmark) after a build


def rec(change=lambda d: d, name="r.csv", prices="default", base=table, **cfg):
    """A case input: the base table, changed, written as `name`."""
    return lambda tmp: (write(change(base()), tmp / name), cfg, prices)


def at(col, row, value):
    """Set one cell (row = position in the table)."""
    def f(d):
        d = d.astype({col: object})
        d.loc[row, col] = value
        return d
    return f


def stray_row(d):
    return pd.concat([d, d.head(1).assign(model_id="extra")], ignore_index=True)


def with_image(value, sample="s000"):
    return lambda d: d.assign(image=np.where(d["sample_id"] == sample, value, None))


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), "red").save(path)
    return path


def image_case(image: Callable, **cfg):
    """`image(tmp)` creates the image file(s) and returns the cell value for sample s000."""
    def make(tmp):
        return write(with_image(image(tmp))(table()), tmp / "recs" / "r.csv"), cfg, "default"
    return make


def symlink_out(tmp):
    png(tmp / "elsewhere" / "x.png")
    (tmp / "recs").mkdir(parents=True, exist_ok=True)
    os.symlink(tmp / "elsewhere", tmp / "recs" / "linked")
    return "linked/x.png"


def relative_image(tmp):
    png(tmp / "recs" / "img" / "red.png")
    (tmp / "elsewhere").mkdir()
    return "img/../img/red.png"


def allowed_root(tmp):
    """An image outside the records folder, in a folder data.image_roots allows."""
    return image_case(lambda t: str(png(t / "elsewhere" / "x.png")), image_roots=[str(tmp / "elsewhere")])(tmp)


def image_stored_absolute(tmp, bm):
    want = str((tmp / "recs" / "img" / "red.png").resolve())
    assert bm.samples["image_ref"].iloc[0] == want
    os.chdir(tmp / "elsewhere")  # a later run from another directory still finds it (chdir undone by the test)
    assert bm.images[0].getpixel((0, 0)) == (255, 0, 0)


def ids_kept(*ids):
    def check(tmp, bm):
        assert set(ids) <= set(bm.meta["sample_id"])
    return check


def same_as_without_prices(tmp, bm):
    """data=records with full cost builds exactly as with ~pricing, models the price table lacks included."""
    build(data_cfg(reader="records", records=str(tmp / "r.csv"), root=str(tmp / "ref")), None, progress=False, log=quiet)
    ref = Benchmark.load(tmp / "ref")
    assert bm.models == ref.models == ["mine-1", "mine-2"]
    np.testing.assert_array_equal(bm.Y, ref.Y)
    np.testing.assert_array_equal(bm.C, ref.C)


def rename(d):
    return d.assign(model_id=d["model_id"].map({"a": "mine-1", "b": "mine-2"}))


def leading_zeros(d):
    return d.assign(sample_id=d["sample_id"].str.replace("s", "0000"))


ROW3 = r"1 row: row 3 \(sample 's001', model 'a'\)"
CASES = {
    # 7: relative image paths stored resolved and absolute; missing files counted on the console
    "image-relative-stored-absolute": Case(image_case(relative_image), console=r"samples 60 ", check=image_stored_absolute),
    "image-file-missing": Case(rec(with_image("nope.png")), console=r"note: missing image files .*: 1\b"),
    # 15: image paths confined to the records folder (+ data.image_roots)
    "image-etc-shadow": Case(rec(with_image("/etc/shadow")),
                             error=r"sample 's000': image '/etc/shadow' resolves to /etc/shadow, outside the records "
                                   r"folder .*data\.image_roots=\[/etc\]"),
    "image-dotdot": Case(image_case(lambda t: png(t / "out.png") and "../out.png"), error=r"'../out.png' resolves to .*outside"),
    "image-symlink-out": Case(image_case(symlink_out), error=r"'linked/x.png' resolves to .*elsewhere/x.png, outside"),
    "image-roots-allow": Case(allowed_root, console=r"samples 60 ",
                              check=lambda tmp, bm: bm.images[0].getpixel((0, 0)) == (255, 0, 0) or pytest.fail("image")),
    # 8: a stray model must not silently drop almost every sample; empty splits are errors
    "stray-model-row": Case(rec(stray_row), error=r"drop 59 of 60 samples \(98%.*'extra' covers 1 of 60 samples.*"
                                                  r"data\.models=\[\.\.\.\] or data\.exclude_models=\[extra\]"),
    "stray-model-excluded": Case(rec(stray_row, exclude_models=["extra"]), console=r"samples 60 "),
    "one-dataset-emptied": Case(rec(lambda d: pd.concat([d, table(2).assign(dataset="C", sample_id=["c0", "c0", "c1", "c1"])
                                                         .query("model_id == 'a'")], ignore_index=True)),
                                error=r"drop 2 of 62 samples \(3%; C: 100%\).*'b' covers 60 of 62"),
    "small-drop-reported": Case(rec(lambda d: d.drop(index=[1])), console=r"note: dropped samples .*: 1 \(A 1\)"),
    "split-empty": Case(rec(base=lambda: table(6)), error=r"split dev would be empty \(6 samples: train 4, dev 0, test 2\)"),
    "pool-model-absent": Case(rec(models=["a", "b", "ghost"]), console=r"note: pool models with no records .*: 1 \(ghost\)"),
    # 9: validation of every column
    "cost-nan-some-rows": Case(rec(at("cost", 2, None)), error=r"column 'cost' is empty on " + ROW3 + "; give a cost on every row"),
    "cost-inf": Case(rec(at("cost", 2, np.inf), name="r.parquet"), error=r"column 'cost' must be finite; got \[inf\] on " + ROW3),
    "cost-negative": Case(rec(at("cost", 2, -0.5)), error=r"column 'cost' must not be negative; got \[-0.5\]"),
    "cost-text": Case(rec(at("cost", 2, "abc")), error=r"column 'cost' must hold numbers, not text; got \['abc'\] on " + ROW3),
    "output-tokens-text": Case(rec(at("output_tokens", 2, "many")), error=r"'output_tokens' must hold numbers, not text; got \['many'\]"),
    "output-tokens-negative": Case(rec(at("output_tokens", 2, -3)), error=r"'output_tokens' must not be negative"),
    "output-tokens-fractional": Case(rec(at("output_tokens", 2, 2.5)), error=r"'output_tokens' must be whole numbers"),
    "input-tokens-negative": Case(rec(at("input_tokens", 2, -246)), error=r"'input_tokens' must not be negative"),
    "input-tokens-fractional": Case(rec(at("input_tokens", 2, 0.5), name="r.jsonl"), error=r"'input_tokens' must be whole"),
    "csv-ids-keep-leading-zeros": Case(rec(leading_zeros), check=ids_kept("0000000", "0000001", "0000059")),
    "jsonl-ids-keep-leading-zeros": Case(rec(leading_zeros, name="r.jsonl"), check=ids_kept("0000000", "0000059")),
    "correct-and-score": Case(rec(lambda d: d.assign(score=d["correct"])), error=r"both `correct` and `score` given; drop one"),
    "conflicting-dataset": Case(rec(at("dataset", 3, "B")), error=r"sample 's001' has conflicting 'dataset' values .*\['A', 'B'\]"),
    "conflicting-prompt": Case(rec(at("prompt", 3, "another")), error=r"sample 's001' has conflicting 'prompt' values"),
    "upper-case-csv": Case(rec(name="r.CSV"), console=r"samples 60 "),
    "upper-case-jsonl": Case(rec(name="r.JSONL"), console=r"samples 60 "),
    "upper-case-parquet": Case(rec(name="r.PARQUET"), console=r"samples 60 "),
    "semicolon-csv": Case(rec(name="semi.csv"), error=r"looks semicolon-separated; pass data\.sep=';'"),
    "semicolon-csv-with-sep": Case(rec(name="semi.csv", sep=";"), console=r"samples 60 "),
    "text-in-correct": Case(rec(at("correct", 2, "yes")), error=r"column 'correct' must be a number in \[0, 1\].*\['yes'\] on " + ROW3),
    "correct-as-words": Case(rec(lambda d: d.assign(correct=np.where(d["correct"] == 1, "True", "false"))), console=r"samples 60 "),
    # 10: a full cost column needs no price table (models the default table does not know are fine)
    "cost-without-prices": Case(rec(rename), check=same_as_without_prices),
    "no-cost-unknown-model": Case(rec(lambda d: rename(d).drop(columns="cost")), error=r"model 'mine-1' .* has no price"),
    "no-cost-no-price-table": Case(rec(lambda d: d.drop(columns="cost"), prices=None), error=r"without a `cost` column need a price table"),
    "no-cost-priced": Case(rec(lambda d: d.drop(columns="cost"), prices="tiny"), console=r"samples 60 ",
                           check=lambda tmp, bm: np.testing.assert_allclose(bm.C[0], [(20 + 5 * 2) / 1e6, (2 + 0.2 * 5) / 1e6], rtol=1e-6)),
    # 11: an empty correctness cell in a records table is an error
    "empty-correct-cell": Case(rec(at("correct", 2, None)), error=r"column 'correct' is empty on " + ROW3 + "; an empty cell is not a score"),
    # issue 22: a misspelt optional column is named (with a did-you-mean), never silently dropped
    "misspelt-prompt-column": Case(rec(lambda d: d.rename(columns={"prompt": "promt"})),
                                   console=r"note: column 'promt' of the records is not read \(did you mean 'prompt'\?\)"),
    "misspelt-cost-column": Case(rec(lambda d: rename(d).rename(columns={"cost": "costs"})),
                                 error=r"model 'mine-1' .* has no price.*column 'costs' is not read \(did you mean 'cost'\?\)"),
    "unknown-column": Case(rec(lambda d: d.assign(notes="x")), console=r"note: column 'notes' of the records is not read"),
    # issue 22: a drop over the limit names every dataset over it and the samples lacking a record
    "drop-names-datasets-and-ids": Case(rec(lambda d: d[~((d["model_id"] == "b") & d["sample_id"].isin(
        [f"s{i:03d}" for i in (1, 2, 3, 40, 41)]))]),
        error=r"drop 5 of 60 samples \(8%; A: 10%, B: 7%\).*samples lacking a record: s001, s002, s003, s040, s041;"),
    # issue 22: splits too small to tell routers apart get a note at build (and train, calibrate)
    "small-splits-noted": Case(rec(base=lambda: table(20)),
                               console=r"note: small splits \(train 14, dev 2, test 4\): under 30 samples"),
    # 20: failed predictions on the console
    "failed-prediction": Case(rec(lambda d: d.assign(prediction=np.where(d.index == 2, "Failed to obtain answer via API.", "x"))),
                              console=r"note: failed predictions \(counted wrong\): 1 \(a 1\)"),
}


def _run(tmp: Path, make):
    path, cfg, prices = make(tmp)
    table_ = {"default": lambda: PriceTable.from_yaml(DEFAULT_PRICES), "tiny": lambda: PriceTable.from_mapping(TINY_PRICES),
              None: lambda: None}[prices]()
    build(data_cfg(reader="records", records=str(path), root=str(tmp / "bench"), **cfg), table_, progress=False, log=quiet)


def summary(root, caplog) -> str:
    """What the build summary shows on the console (it goes through logging, like the job log)."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vlrb"):
        print_summary(root)
    return "\n".join(r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_records(case: Case, tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if case.error:
        with pytest.raises(BuildError, match=case.error) as e:
            _run(tmp_path, case.make)
        assert "\n" not in str(e.value)
        assert not (tmp_path / "bench").exists()
        return
    _run(tmp_path, case.make)
    out = summary(tmp_path / "bench", caplog)
    if case.console:
        assert re.search(case.console, out), out
    if case.check:
        case.check(tmp_path, Benchmark.load(tmp_path / "bench"))


# ----------------------------------------------------------------------------- 11: blank VLMEvalKit score cells

def test_blank_and_formula_hit_cells_are_undetermined_and_printed(tmp_path, caplog):
    """A blank `hit` or a formula without a cached value scores 0 as upstream, but is counted and printed."""
    n = 30
    for model in ("a", "b"):
        hit = [int(i % 2 == 0) for i in range(n)]
        if model == "b":
            hit[0], hit[1] = None, "=1+1"  # blank; a formula an xlsx reader sees without its value
        df = pd.DataFrame({"index": range(n), "question": [f"q{i}" for i in range(n)], "prediction": ["A"] * n, "hit": hit})
        run = tmp_path / "work" / model / "T20260101_G"
        run.mkdir(parents=True)
        df.to_excel(run / f"{model}_MMStar_gpt-4o-mini_result.xlsx", index=False, engine="openpyxl")  # no cached values
    cfg = data_cfg(raw_dir=str(tmp_path / "work"), root=str(tmp_path / "bench"), datasets=["MMStar"])
    m = build(cfg, PriceTable.from_mapping(TINY_PRICES), progress=False, log=quiet)
    assert m["integrity"]["reader"]["undetermined_scores"] == 2
    assert m["integrity"]["reader"]["undetermined_per_model"] == {"b": 2}
    bm = Benchmark.load(tmp_path / "bench")
    assert bm.Y[:2, 1].tolist() == [0, 0] and bm.Y[:2, 0].tolist() == [1, 0]  # counted wrong, as upstream
    out = summary(tmp_path / "bench", caplog)
    assert "note: undetermined scores (blank or formula cells, counted wrong): 2 (b 2)" in out


# ----------------------------------------------------------------------------- through the command line

def _cli(tmp: Path, records: Path, *extra: str):
    return subprocess.run([sys.executable, "build_data.py", "data=records", f"data.records={records}",
                           f"data.root={tmp / 'bench'}", f"hydra.run.dir={tmp / 'hydra'}", "progress=false", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name,change,error", [
    ("r.csv", at("cost", 2, "abc"), r"^error: .*r\.csv: column 'cost' must hold numbers, not text; got \['abc'\]"),
    ("semi.csv", lambda d: d, r"^error: .*semi\.csv: .*semicolon-separated; pass data\.sep=';'"),
], ids=["cost-text", "semicolon-csv"])
def test_cli_bad_records_one_line_error(tmp_path, name, change, error):
    r = _cli(tmp_path, write(change(table()), tmp_path / name))
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stdout + r.stderr
    assert re.match(error, lines[0]), lines[0]
    assert not (tmp_path / "bench").exists()


def test_cli_cost_column_ignores_the_default_price_table(tmp_path):
    """build_data.py composes pricing=vlrb_2025 by default; a full cost column builds with models it lacks."""
    r = _cli(tmp_path, write(rename(table()), tmp_path / "r.csv"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert Benchmark.load(tmp_path / "bench").models == ["mine-1", "mine-2"]
