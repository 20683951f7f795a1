"""The generic records reader, splits, and the Benchmark API on hand-made inputs."""
import base64
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import data_cfg
from vlrb.data.benchmark import Benchmark
from vlrb.data.build import build
from vlrb.data.images import ImageDecodeError, ImageLoader, read_tsv_images
from vlrb.data.inputs import BuildError
from vlrb.data.splits import random_split, stratified_split
from vlrb.pricing import PriceTable

PRICES = PriceTable.from_mapping({"pricing": {
    "big": {"input_price_per_1m": 2.0, "output_price_per_1m": 8.0},
    "small": {"input_price_per_1m": 0.1, "output_price_per_1m": 0.2, "aliases": ["tiny"]}}})


def quiet(*a, **k):
    pass


def _records():
    rows = []
    for i in range(20):
        for m in ("big", "tiny"):
            rows.append({"sample_id": f"s{i:02d}", "dataset": "A" if i < 10 else "B", "model_id": m,
                         "correct": int(m == "big" or i % 2 == 0), "prompt": "what is two plus two?",
                         "prediction": "four" if m == "big" else "The answer is four."})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_records_formats_tokens_and_prices(tmp_path, fmt):
    df = _records()
    path = tmp_path / f"r.{fmt}"
    {"parquet": lambda: df.to_parquet(path), "csv": lambda: df.to_csv(path, index=False),
     "jsonl": lambda: df.to_json(path, orient="records", lines=True)}[fmt]()
    cfg = data_cfg(reader="records", records=str(path), root=str(tmp_path / "b"))
    build(cfg, PRICES, progress=False, log=quiet)
    bm = Benchmark.load(tmp_path / "b")
    assert bm.models == ["big", "small"]  # the alias "tiny" maps to its canonical id
    assert bm.Y.shape == (20, 2) and bm.Y[:, 0].all() and bm.Y[:, 1].sum() == 10
    # "what is two plus two?" = 6 cl100k tokens, no image; "four" = 1 token, "The answer is four." = 5
    assert (bm.meta["input_tokens"] == 6).all()
    assert bm.C[0, 0] == pytest.approx(6 * 2.0 / 1e6 + 1 * 8.0 / 1e6)
    assert bm.C[0, 1] == pytest.approx(6 * 0.1 / 1e6 + 5 * 0.2 / 1e6)
    assert not bm.images.has_image.any()  # text-only samples are first-class


def test_records_with_cost_need_no_price_table(tmp_path):
    df = _records().assign(cost=lambda d: np.where(d["model_id"] == "big", 0.01, 0.001), model_id=lambda d: d["model_id"].str.upper())
    df.to_parquet(tmp_path / "r.parquet")
    build(data_cfg(reader="records", records=str(tmp_path / "r.parquet"), root=str(tmp_path / "b")), None, progress=False, log=quiet)
    bm = Benchmark.load(tmp_path / "b")
    assert bm.models == ["BIG", "TINY"]
    np.testing.assert_allclose(bm.C[:, 0], 0.01)
    assert bm.cost_bounds["cmin"] == pytest.approx(0.001)


def test_records_fractional_scores_and_threshold(tmp_path):
    df = _records().drop(columns="correct").assign(score=lambda d: np.where(d["model_id"] == "big", 0.6, 0.4))
    df.to_parquet(tmp_path / "r.parquet")
    build(data_cfg(reader="records", records=str(tmp_path / "r.parquet"), root=str(tmp_path / "b")), PRICES, progress=False, log=quiet)
    bm = Benchmark.load(tmp_path / "b")
    assert bm.Y[:, 0].all() and not bm.Y[:, 1].any()
    assert bm.scores[0, 0] == pytest.approx(0.6)  # the raw fraction is kept beside the binary Y
    build(data_cfg(reader="records", records=str(tmp_path / "r.parquet"), root=str(tmp_path / "c"), binarize_threshold=1.0),
          PRICES, progress=False, log=quiet)
    assert not Benchmark.load(tmp_path / "c").Y.any()  # upstream's int() truncation


def test_records_images_path_and_base64(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, format="JPEG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    df = _records()
    df["image"] = np.where(df["sample_id"] == "s00", "red.png", np.where(df["sample_id"] == "s01", "data:image/jpeg;base64," + b64, None))
    df.to_parquet(tmp_path / "r.parquet")
    build(data_cfg(reader="records", records=str(tmp_path / "r.parquet"), root=str(tmp_path / "b")), PRICES, progress=False, log=quiet)
    bm = Benchmark.load(tmp_path / "b")
    assert bm.images[0].getpixel((0, 0)) == (255, 0, 0)
    assert bm.images[1].getpixel((4, 4))[2] > 200
    assert bm.images[2] is None
    assert bm.meta["input_tokens"].iloc[0] == 6 + 256


@pytest.mark.parametrize("change,match", [
    (lambda d: d.drop(columns="model_id"), "need columns.*missing \\['model_id'\\]"),
    (lambda d: d.drop(columns="correct"), "missing \\['correct/score'\\]"),
    (lambda d: pd.concat([d, d.head(1)]), "1 duplicate \\(sample_id, model_id\\)"),
    (lambda d: d.assign(correct=2), "must be a number in \\[0, 1\\]"),
    (lambda d: d.assign(model_id=d["model_id"].replace("tiny", "nobody")), "'nobody'.*no price"),
])
def test_records_bad_inputs(tmp_path, change, match):
    change(_records()).to_parquet(tmp_path / "r.parquet")
    with pytest.raises(BuildError, match=match):
        build(data_cfg(reader="records", records=str(tmp_path / "r.parquet"), root=str(tmp_path / "b")), PRICES, progress=False, log=quiet)
    assert not (tmp_path / "b").exists()


def test_split_sizes_match_upstream_arithmetic():
    ids = [f"d/{i}" for i in range(30540)]
    s = random_split(ids)
    counts = pd.Series(s).value_counts().to_dict()
    assert counts == {"train": 21378, "dev": 3054, "test": 6108}
    assert random_split(list(reversed(ids))) == s  # sorted ids: discovery order does not matter


def test_stratified_split_keeps_proportions_per_dataset():
    ids = [f"{d}/{i}" for d in "ABC" for i in range(100)]
    s = stratified_split(ids, [i.split("/")[0] for i in ids])
    for d in "ABC":
        c = pd.Series([v for k, v in s.items() if k.startswith(d)]).value_counts()
        assert (c["train"], c["dev"], c["test"]) == (70, 10, 20)
    with pytest.raises(ValueError, match="summing to 1"):
        random_split(ids, fractions=(0.5, 0.1, 0.1))


def test_tsv_back_references(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "green").save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    pd.DataFrame({"index": [1, 2, 3], "image": [b64, "1", "not-base64-and-long-enough-to-not-be-a-reference-" * 3],
                  "question": ["a", "b", "c"]}).to_csv(tmp_path / "X.tsv", sep="\t", index=False)
    cells = read_tsv_images(tmp_path / "X.tsv")
    assert cells["2"] == b64  # a cell of <= 64 characters is another row's index
    loader = ImageLoader(["tsv"] * 3, ["1", "2", "3"], [str(tmp_path / "X.tsv")] * 3, sample_ids=["x/1", "x/2", "x/3"])
    assert loader[1].getpixel((0, 0)) == (0, 128, 0)
    with pytest.raises(ImageDecodeError, match="x/3"):
        loader[2]


def test_benchmark_shape_errors_and_summary():
    with pytest.raises(ValueError, match="one shape"):
        Benchmark.from_arrays(np.ones((4, 2)), np.ones((4, 3)))
    bm = Benchmark.from_arrays(np.array([[1, 0], [0, 1], [0, 0], [1, 1]] * 5), np.full((20, 2), 1e-4))
    s = bm.summary()
    assert s["oracle_accuracy"] == pytest.approx(0.75) and s["most_accurate_accuracy"] == pytest.approx(0.5)
    with pytest.raises(KeyError, match="unknown split"):
        bm.split("validation")
