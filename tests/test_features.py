"""Encoders, extraction (cache, resume, failures) and fusion: vlrb.features (issue 4).

Everything runs offline: tiny randomly initialised models, plus the two packaged real encoders.
"""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlrb.data.benchmark import Benchmark  # noqa: E402
from vlrb.data.images import ImageLoader  # noqa: E402
from vlrb.features import fusion as fu  # noqa: E402
from vlrb.features.base import EncoderUnavailableError  # noqa: E402
from vlrb.features.extract import extract_features  # noqa: E402
from vlrb.features.sections import (build_encoder, build_text_encoder, build_vision_encoder,  # noqa: E402
                                    encoder_class, encoder_name)
from vlrb.features.shards import embeddings_to_numpy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_CFG = {"text": {"family": "hf_text", "tiny": True}, "vision": {"family": "hf_vision", "tiny": "dinov2"},
            "batch_size": 4, "num_workers": 0, "device": "cpu", "shard_every": 100}


def _photo() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def _jpeg_b64(seed: int, size=(40, 32)) -> str:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    ImageDraw.Draw(img).rectangle([4, 4, 20, 20], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return base64.b64encode(buf.getvalue()).decode()


NO_IMAGE, CORRUPT = 3, 7


def make_bench(n: int = 22, seed: int = 0) -> Benchmark:
    """n samples with b64 JPEGs; row NO_IMAGE has no image, row CORRUPT a broken one."""
    ids = [f"toy/{i:04d}" for i in range(n)]
    prompts = [f"question {i}: " + "what is shown here " * (i % 4 + 1) for i in range(n)]
    bench = Benchmark.from_arrays(np.zeros((n, 2), np.int8), np.full((n, 2), 1e-5), sample_ids=ids, prompts=prompts,
                                  seed=seed)
    kinds, refs = ["b64"] * n, [_jpeg_b64(i) for i in range(n)]
    kinds[NO_IMAGE], refs[NO_IMAGE] = "none", ""
    refs[CORRUPT] = base64.b64encode(b"\xff\xd8\xff\xe0 definitely not a jpeg").decode()
    bench.images = ImageLoader(kinds, refs, sample_ids=ids)
    return bench


@pytest.fixture(scope="module")
def tiny_text():
    return build_text_encoder(TINY_CFG)


@pytest.fixture(scope="module")
def tiny_vision():
    return build_vision_encoder(TINY_CFG)


def count_forward(monkeypatch, enc, fail_after: int | None = None) -> list[int]:
    """Record the batch size of every forward call; raise after `fail_after` calls (a simulated crash)."""
    calls: list[int] = []
    orig = type(enc).forward

    lock = threading.Lock()  # batches may run on several threads

    def fwd(batch):
        with lock:
            if fail_after is not None and len(calls) >= fail_after:
                raise RuntimeError("injected interruption")
            calls.append(int(next(iter(batch.values())).shape[0]))
        return orig(enc, batch)

    monkeypatch.setattr(enc, "forward", fwd)
    return calls


def read_emb(path: Path) -> tuple[list[str], np.ndarray, pq.Table]:
    t = pq.read_table(path)
    return t.column("sample_id").to_pylist(), embeddings_to_numpy(t.column("embedding")), t


# ============================================================================================ encoders
def test_a_family_name_finds_its_class_by_attribute():
    """Configs and recipe.json files written before `_target_` name an encoder by its class's `family` (or an
    older spelling of it); `_target_` and `family` give the same class."""
    from vlrb.features import encoders as E

    for cls in (E.PackagedMiniLM, E.HFTextEncoder, E.PackagedEfficientNetLite0, E.TimmEncoder, E.HFVisionEncoder):
        for fam in (cls.family, *cls.family_aliases):
            assert encoder_class({"family": fam}, cls.modality) is cls
        assert encoder_class({"_target_": f"{cls.__module__}.{cls.__qualname__}"}, cls.modality) is cls
    assert encoder_class({}, "text") is E.PackagedMiniLM and encoder_class({}, "vision") is E.PackagedEfficientNetLite0
    with pytest.raises(KeyError, match="unknown text encoder family"):
        build_encoder({"family": "nope"}, "text")
    with pytest.raises(ValueError, match="vision encoder"):
        build_encoder({"family": "timm", "tiny": True}, "text")


def test_names_come_from_config_without_loading():
    import yaml

    default = yaml.safe_load((REPO / "conf" / "encoder" / "default.yaml").read_text())
    assert (encoder_name(default, "text"), encoder_name(default, "vision")) == ("all-MiniLM-L6-v2", "efficientnet_lite0")
    best = yaml.safe_load((REPO / "conf" / "encoder" / "bge_m3_siglip.yaml").read_text())
    assert (encoder_name(best, "text"), encoder_name(best, "vision")) == ("bge-m3", "siglip-large-patch16-384")
    for f in sorted((REPO / "conf" / "encoder").glob("*.yaml")):  # every shipped config names both encoders
        c = yaml.safe_load(f.read_text())
        assert encoder_name(c, "text") and encoder_name(c, "vision"), f.name


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_tiny_hf_text_forward(pooling):
    enc = build_text_encoder({"family": "hf_text", "tiny": True, "pooling": pooling})
    batch = enc.collate([enc.preprocess(s) for s in ["a short one", "a rather longer sentence with more words", ""]])
    assert batch["input_ids"].shape[0] == 3 and batch["attention_mask"][2].sum() == 2  # [CLS] [SEP]
    with torch.inference_mode():
        y = enc(batch)
    assert y.shape == (3, 32) and y.dtype == torch.float32
    assert torch.allclose(y.norm(dim=1), torch.ones(3), atol=1e-5)


def test_hf_text_loads_from_a_local_folder(tmp_path, tiny_text):
    """The non-tiny path (AutoModel + AutoTokenizer from a folder), pooling read from 1_Pooling/config.json."""
    tiny_text.model.save_pretrained(tmp_path)
    tiny_text.tokenizer.save_pretrained(tmp_path)
    enc = build_text_encoder({"family": "hf_text", "name_or_path": str(tmp_path), "dim": 32})
    assert enc.name == tmp_path.name and enc.dim == 32 and enc.pooling == "mean"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    enc_cls = build_text_encoder({"family": "hf_text", "name_or_path": str(tmp_path)})
    assert enc_cls.pooling == "cls"
    b = enc.collate([enc.preprocess("hello there")])
    with torch.inference_mode():
        assert torch.allclose(enc(b), tiny_text(b), atol=1e-5)  # same weights, same mean pooling
    with pytest.raises(ValueError, match="dim=64"):
        build_text_encoder({"family": "hf_text", "name_or_path": str(tmp_path), "dim": 64})


@pytest.mark.parametrize("arch,dim", [("dinov2", 32), ("vit", 32), ("siglip", 32), ("clip", 24)])
def test_tiny_hf_vision_forward(arch, dim):
    from PIL import Image

    enc = build_vision_encoder({"family": "hf_vision", "tiny": arch})
    assert enc.dim == dim and enc.use_image_features == (arch in ("siglip", "clip"))
    x = enc.preprocess(Image.new("RGB", (50, 30), (10, 200, 30)))
    assert x.shape == (3, 32, 32)
    with torch.inference_mode():
        y = enc(enc.collate([x, x.flip(-1)]))
    assert y.shape == (2, dim)
    assert torch.allclose(y.norm(dim=1), torch.ones(2), atol=1e-5)


def test_hf_vision_loads_from_a_local_folder(tmp_path, tiny_vision):
    import pickle

    from PIL import Image
    from transformers import BitImageProcessor

    tiny_vision.model.save_pretrained(tmp_path)
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    enc = build_vision_encoder({"family": "hf_vision", "name_or_path": str(tmp_path)})
    x = enc.preprocess(Image.new("RGB", (60, 40), (200, 10, 10)))
    assert x.shape == (3, 32, 32)
    pickle.dumps(enc.preprocess)  # DataLoader workers get the preprocessor, never the model
    with torch.inference_mode():
        assert enc(enc.collate([x])).shape == (1, 32)


@pytest.mark.parametrize("cfg,dim", [({"family": "timm", "tiny": True}, 256),
                                     ({"family": "timm", "model": "test_vit", "pretrained": False}, 64),
                                     ({"family": "efficientnet_lite0", "tiny": True}, 1280)])
def test_timm_families_forward(cfg, dim):
    from PIL import Image

    enc = build_vision_encoder(cfg)
    assert enc.dim == dim
    x = enc.preprocess(Image.new("RGB", (64, 48), (120, 120, 30)))
    with torch.inference_mode():
        y = enc(enc.collate([x, x]))
    assert y.shape == (2, dim) and torch.allclose(y.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("cfg,mod", [({"family": "hf_text", "name_or_path": "vlrb-test/no-such-model"}, "text"),
                                     ({"family": "hf_vision", "name_or_path": "vlrb-test/no-such-model"}, "vision"),
                                     ({"family": "timm", "model": "convnext_tiny"}, "vision")])
def test_missing_weights_name_the_offline_default(cfg, mod):
    with pytest.raises(EncoderUnavailableError, match="encoder=default"):
        build_encoder(cfg, mod)


@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder({"family": "minilm", "dim": 384})


def test_packaged_minilm_gives_real_embeddings(minilm):
    s = ["A man is playing a guitar.", "Someone plays an acoustic guitar.", "The stock market fell sharply today.",
         "What is the area of the triangle in the figure?", "Find the area of the triangle shown."]
    with torch.inference_mode():
        y = minilm(minilm.collate([minilm.preprocess(x) for x in s]))
    assert minilm.name == "all-MiniLM-L6-v2" and y.shape == (5, 384) and minilm.pooling == "mean"
    sim = (y @ y.T).numpy()
    assert sim[0, 1] > 0.6 > sim[0, 2] + 0.3
    assert sim[3, 4] > max(sim[3, 0], sim[3, 2]) + 0.3


@pytest.fixture(scope="module")
def effnet():
    return build_vision_encoder({"family": "efficientnet_lite0", "dim": 1280})


def test_packaged_efficientnet_lite0_stable_on_a_real_photo(effnet):
    from PIL import Image

    photo = Image.open(_photo()).convert("RGB")
    with torch.inference_mode():
        a = effnet(effnet.collate([effnet.preprocess(photo)]))[0]
        b = effnet(effnet.collate([effnet.preprocess(Image.open(_photo()))]))[0]
        blank = effnet(effnet.collate([effnet.preprocess(Image.new("RGB", photo.size, (255, 255, 255)))]))[0]
    assert a.shape == (1280,) and torch.isfinite(a).all()
    assert torch.allclose(a, b, atol=1e-6)  # same vector twice
    assert float(a @ blank) < 0.8  # a photo is not a blank page


# ============================================================================================ fusion
T = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]], np.float32)  # a zero row: its norm is replaced by 1
V = np.array([[0.0, 2.0], [1.0, 1.0]], np.float32)


@pytest.mark.parametrize("method,expected", [
    ("concat", [[3, 4, 0, 0, 2], [0, 0, 0, 1, 1]]),
    ("normalize_concat", [[0.6, 0.8, 0, 0, 1], [0, 0, 0, 2 ** -0.5, 2 ** -0.5]]),
    ("average", [[1.5, 3.0], [0.5, 0.5]]),
    ("weighted_average", [[0.75 * 3, 0.75 * 4 + 0.25 * 2], [0.25, 0.25]]),
    ("only_text", T.tolist()),
    ("only_image", V.tolist()),
])
def test_fusion_golden_values(method, expected):
    w = 0.75 if method == "weighted_average" else 0.5
    X = fu.fuse(T if method != "only_image" else None, V if method != "only_text" else None, method, w)
    assert X.dtype == np.float32
    np.testing.assert_allclose(X, np.array(expected, np.float32), atol=1e-6)


def test_shared_preprocessing_golden_values():
    """The pieces the encoders and the end-to-end backbones share: right-padding ids, greyscale -> RGB -> tensor."""
    from PIL import Image

    from vlrb.preprocess import ImagePreprocess, PadIds, image_transform

    batch = PadIds(0)([[101, 7, 102], [101, 102]])
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    p = ImagePreprocess(image_transform(8, [0.5] * 3, [0.5] * 3))
    u8 = p(Image.new("L", (20, 10), 255))  # resized and cropped in the worker, still uint8
    assert u8.dtype == torch.uint8 and u8.shape == (3, 8, 8) and int(u8.min()) == 255
    x = p.normalize(u8[None])[0]
    assert x.shape == (3, 8, 8) and torch.allclose(x, torch.ones_like(x))  # white: (1 - 0.5) / 0.5


def test_fusion_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown fusion"):
        fu.fuse(T, V, "sum")
    with pytest.raises(ValueError, match="rows"):
        fu.fuse(T, V[:1])
    np.testing.assert_allclose(fu.fuse(T, V, "weighted_average", 0.5), fu.fuse(T, V, "average"))


def test_scaler_fits_on_train_only():
    bench = make_bench(40)
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(40, 5)).astype(np.float32)
    X[bench.splits["test"]] += 100.0  # test rows far away must not move the scaler
    out, sc = fu.fit_transform_splits(X, bench, return_scaler=True)
    assert {k: v.shape[0] for k, v in out.items()} == {k: len(v) for k, v in bench.splits.items()}
    np.testing.assert_allclose(out["train"].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(out["train"].std(0), 1, atol=1e-4)
    assert (out["test"].mean(0) > 10).all()
    np.testing.assert_allclose(sc.scaler.mean_, X[bench.splits["train"]].mean(0), rtol=1e-5)


def test_scaler_fit_with_correct_skips_unanswered_train_rows():
    bench = make_bench(40)
    train = bench.splits["train"]
    bench.Y[train[::2], 0] = 1  # every other train row has a correct model; the rest none
    X = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
    X[train[1::2]] += 50.0  # unanswered rows far away: they move only the all-rows scaler
    _, all_rows = fu.fit_transform_splits(X, bench, return_scaler=True)
    _, answered = fu.fit_transform_splits(X, bench, return_scaler=True, scaler_fit="with_correct")
    np.testing.assert_allclose(all_rows.scaler.mean_, X[train].mean(0), rtol=1e-5)
    np.testing.assert_allclose(answered.scaler.mean_, X[train[::2]].mean(0), rtol=1e-5)
    with pytest.raises(ValueError, match="scaler_fit must be one of"):
        fu.fit_transform_splits(X, bench, scaler_fit="train")


# ============================================================================================ extraction
def test_extract_writes_the_upstream_layout(tmp_path, tiny_text, tiny_vision):
    bench = make_bench()
    cfg = dict(TINY_CFG, num_workers=2)  # vision decoded in DataLoader workers
    res = extract_features(bench, cfg, root=tmp_path, progress=False,
                           encoders={"text": tiny_text, "vision": tiny_vision})
    ids = [str(s) for s in bench.sample_ids]
    t_ids, T_, t_tab = read_emb(tmp_path / "EMBEDDINGS" / "text" / "tiny-hf_text.parquet")
    v_ids, V_, v_tab = read_emb(tmp_path / "EMBEDDINGS" / "vision" / "tiny-hf_vision-dinov2.parquet")
    assert t_ids == ids and v_ids == ids and T_.shape == (22, 32) and V_.shape == (22, 32)
    import pyarrow as pa

    etype = t_tab.schema.field("embedding").type
    assert pa.types.is_list(etype) and etype.value_type == pa.float32()
    assert t_tab.column_names == ["sample_id", "embedding"]
    assert v_tab.column_names == ["sample_id", "embedding", "has_image", "image_status"]
    has = np.array(v_tab.column("has_image").to_pylist())
    status = v_tab.column("image_status").to_pylist()
    # no image: zero vector + has_image False; a corrupt image: zero vector, counted, listed, not fatal
    assert not has[NO_IMAGE] and status[NO_IMAGE] == "none" and not V_[NO_IMAGE].any()
    assert not has[CORRUPT] and status[CORRUPT] == "decode_failed" and not V_[CORRUPT].any()
    assert has.sum() == 20 and np.allclose(np.linalg.norm(V_[has], axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(T_, axis=1), 1, atol=1e-5)
    rep = json.loads((tmp_path / "reports" / "features" / "tiny-hf_vision-dinov2.json").read_text())
    assert rep["n_decode_failed"] == 1 and rep["failures"][0]["sample_id"] == ids[CORRUPT]
    assert rep["n_without_image"] == 1 and rep["n_with_image"] == 20 and rep["throughput_items_s"] > 0
    assert rep["device"] == "cpu" and rep["batch_size"] == 4 and rep == res["vision"]
    assert not list((tmp_path / "EMBEDDINGS").rglob("*.partial"))
    # rows equal a direct forward of the same inputs
    with torch.inference_mode():
        direct = tiny_vision(tiny_vision.collate([tiny_vision.preprocess(bench.images[0])]))[0].numpy()
    np.testing.assert_allclose(V_[0], direct, atol=1e-5)
    # features for routers
    X = fu.load_features(bench, cfg, root=tmp_path)
    assert X.shape == (22, 64)
    np.testing.assert_allclose(X[:, 32:][NO_IMAGE], 0)
    assert fu.load_features(bench, cfg, "only_text", root=tmp_path).shape == (22, 32)


def test_rerun_is_a_noop_and_changes_are_noticed(tmp_path, monkeypatch, tiny_text, tiny_vision):
    bench = make_bench()
    encs = {"text": tiny_text, "vision": tiny_vision}
    extract_features(bench, TINY_CFG, root=tmp_path, progress=False, encoders=encs)
    path = tmp_path / "EMBEDDINGS" / "vision" / "tiny-hf_vision-dinov2.parquet"
    mtime = path.stat().st_mtime_ns
    calls = count_forward(monkeypatch, tiny_vision)
    tcalls = count_forward(monkeypatch, tiny_text)
    r = extract_features(bench, TINY_CFG, root=tmp_path, progress=False, encoders=encs)
    assert r["text"]["status"] == r["vision"]["status"] == "cached" and calls == [] and tcalls == []
    assert path.stat().st_mtime_ns == mtime
    # the cache check needs no model: config alone
    r = extract_features(bench, TINY_CFG, root=tmp_path, progress=False)
    assert r["vision"]["status"] == "cached"
    # a runtime knob (batch size, workers) does not invalidate the cache; force does
    r = extract_features(bench, dict(TINY_CFG, batch_size=8), root=tmp_path, progress=False, encoders=encs)
    assert r["vision"]["status"] == "cached"
    r = extract_features(bench, TINY_CFG, root=tmp_path, progress=False, encoders=encs, force=True,
                         modalities=["vision"])
    assert r["vision"]["status"] == "extracted" and sum(calls) == 20
    # other samples -> recomputed
    calls.clear()
    r = extract_features(make_bench(10), TINY_CFG, root=tmp_path, progress=False, encoders=encs,
                         modalities=["vision"])
    assert r["vision"]["status"] == "extracted" and sum(calls) == 8
    # the 22-sample benchmark's features are now stale (extracted for 10 samples): refused, not used
    with pytest.raises(fu.StaleFeaturesError, match="samples_hash"):
        fu.load_features(bench, TINY_CFG, "only_image", root=tmp_path)
    # without vlrb's sidecar (embeddings from other tools) only the ids can be checked: the missing are named
    path.with_suffix(".meta.json").unlink()
    with pytest.raises(KeyError, match="toy/0010"):
        fu.load_features(bench, TINY_CFG, "only_image", root=tmp_path)


@pytest.mark.parametrize("parallel", [1, 3])
def test_resume_after_interruption_loses_nothing_and_repeats_nothing(tmp_path, monkeypatch, tiny_vision, parallel):
    """One batch at a time, or several in flight (a batch that fails lets those already encoded be written)."""
    bench = make_bench()
    encs = {"vision": tiny_vision}
    cfg = dict(TINY_CFG, parallel_batches=parallel)
    ref_root = tmp_path / "ref"
    extract_features(bench, TINY_CFG, root=ref_root, progress=False, encoders=encs, modalities=["vision"])
    _, ref, _ = read_emb(ref_root / "EMBEDDINGS" / "vision" / "tiny-hf_vision-dinov2.parquet")

    root = tmp_path / "run"
    calls = count_forward(monkeypatch, tiny_vision, fail_after=3)
    with pytest.raises(RuntimeError, match="injected"):
        extract_features(bench, cfg, root=root, progress=False, encoders=encs, modalities=["vision"])
    part = root / "EMBEDDINGS" / "vision" / "tiny-hf_vision-dinov2.parquet.partial"
    assert part.is_dir() and not (root / "EMBEDDINGS" / "vision" / "tiny-hf_vision-dinov2.parquet").exists()
    done_first = sum(calls)
    assert len(calls) == 3 and 0 < done_first < 20
    monkeypatch.undo()
    calls2 = count_forward(monkeypatch, tiny_vision)
    r = extract_features(bench, cfg, root=root, progress=False, encoders=encs, modalities=["vision"])["vision"]
    assert done_first + sum(calls2) == 20  # every image forwarded exactly once over both runs
    assert r["status"] == "resumed" and r["n_resumed"] + r["n_encoded"] == 22 and r["n_decode_failed"] == 1
    ids, got, _ = read_emb(root / "EMBEDDINGS" / "vision" / "tiny-hf_vision-dinov2.parquet")
    assert ids == [str(s) for s in bench.sample_ids]
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert not part.exists()


def test_stale_partial_from_another_encoder_is_discarded(tmp_path, monkeypatch, tiny_vision):
    bench = make_bench()
    encs = {"vision": tiny_vision}
    calls = count_forward(monkeypatch, tiny_vision, fail_after=2)
    with pytest.raises(RuntimeError):
        extract_features(bench, TINY_CFG, root=tmp_path, progress=False, encoders=encs, modalities=["vision"])
    part = tmp_path / "EMBEDDINGS" / "vision" / "tiny-hf_vision-dinov2.parquet.partial"
    state = json.loads((part / "state.json").read_text())
    (part / "state.json").write_text(json.dumps(dict(state, config_hash="something else")))
    monkeypatch.undo()
    calls = count_forward(monkeypatch, tiny_vision)
    extract_features(bench, TINY_CFG, root=tmp_path, progress=False, encoders=encs, modalities=["vision"])
    assert sum(calls) == 20


def test_images_from_a_tsv_with_back_references(tmp_path, tiny_vision):
    import pandas as pd

    rows = pd.DataFrame({"index": ["0", "1", "2"], "image": [_jpeg_b64(1), "0", _jpeg_b64(2)]})
    tsv = tmp_path / "TOY.tsv"
    rows.to_csv(tsv, sep="\t", index=False)
    ids = ["TOY/0", "TOY/1", "TOY/2"]
    bench = Benchmark.from_arrays(np.zeros((3, 2)), np.ones((3, 2)), sample_ids=ids, prompts=["a", "b", "c"])
    bench.images = ImageLoader(["tsv"] * 3, ["0", "1", "2"], [str(tsv)] * 3, sample_ids=ids)
    r = extract_features(bench, dict(TINY_CFG, num_workers=1), root=tmp_path, progress=False,
                         encoders={"vision": tiny_vision}, modalities=["vision"])["vision"]
    assert r["n_with_image"] == 3 and r["n_decode_failed"] == 0
    _, V_, _ = read_emb(tmp_path / "EMBEDDINGS" / "vision" / "tiny-hf_vision-dinov2.parquet")
    np.testing.assert_allclose(V_[0], V_[1], atol=1e-6)  # row 1 reuses row 0's image
    assert not np.allclose(V_[0], V_[2])


@pytest.mark.slow
def test_default_pair_end_to_end(tmp_path):
    """The shipped default config, real packaged weights, through the pipeline."""
    from omegaconf import OmegaConf

    bench = make_bench(12)
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "encoder" / "default.yaml"))  # as a job passes it
    res = extract_features(bench, cfg, root=tmp_path, progress=False)
    assert res["text"]["dim"] == 384 and res["vision"]["dim"] == 1280
    assert res["vision"]["n_decode_failed"] == 1
    X = fu.load_features(bench, cfg, root=tmp_path)
    assert X.shape == (12, 384 + 1280)
    assert extract_features(bench, cfg, root=tmp_path, progress=False)["vision"]["status"] == "cached"


@pytest.mark.slow
def test_lightning_engine_matches_the_loop(tmp_path, tiny_vision):
    bench = make_bench()
    encs = {"vision": tiny_vision}
    extract_features(bench, TINY_CFG, root=tmp_path / "loop", progress=False, encoders=encs, modalities=["vision"])
    r = extract_features(bench, dict(TINY_CFG, engine="lightning"), root=tmp_path / "pl", progress=False,
                         encoders=encs, modalities=["vision"])["vision"]
    assert r["engine"] == "lightning" and r["n_decode_failed"] == 1
    a = read_emb(tmp_path / "loop" / "EMBEDDINGS" / "vision" / "tiny-hf_vision-dinov2.parquet")[1]
    b = read_emb(tmp_path / "pl" / "EMBEDDINGS" / "vision" / "tiny-hf_vision-dinov2.parquet")[1]
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_hard_kill_keeps_finished_shards(tmp_path):
    """A process killed mid-run (no cleanup at all) keeps every flushed shard; the re-run does only the rest."""
    script = textwrap.dedent(f"""
        import os, sys, json
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_features import make_bench, TINY_CFG
        from vlrb.features.extract import extract_features
        from vlrb.features.sections import build_vision_encoder
        enc = build_vision_encoder(TINY_CFG)
        orig, calls = type(enc).forward, []
        kill = int(sys.argv[1])
        def fwd(batch):
            if kill and len(calls) == kill:
                os._exit(9)  # like SIGKILL: no finally, no flush
            calls.append(batch["pixel_values"].shape[0])
            return orig(enc, batch)
        enc.forward = fwd
        # one batch at a time: the count below follows the batch order (in flight, threads may run ahead)
        extract_features(make_bench(), dict(TINY_CFG, shard_every=2, parallel_batches=1), root={str(tmp_path)!r},
                         progress=False,
                         encoders={{"vision": enc}}, modalities=["vision"])
        print(json.dumps(sum(calls)))
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-c", script, "5"], env=env, capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 9, p.stderr[-2000:]
    p = subprocess.run([sys.executable, "-c", script, "0"], env=env, capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:]
    # 5 batches of 4 ran before the kill; 2 shards of 2 batches (rows 0-15, 14 images) had been written:
    # the re-run forwards the other 6 images (the unflushed 5th batch again, at most shard_every batches)
    assert int(p.stdout.strip().splitlines()[-1]) == 20 - 14


def test_build_reports_cached_features_without_made_up_numbers(capsys, caplog):
    """Features already up to date: the build names them as cached, with no dimension, rate or device of a run
    that did not happen (it used to print "None-d ... 0.0 items/s on None")."""
    from vlrb.jobs.build import _log_features

    with caplog.at_level("INFO"):
        _log_features("text", {"name": "minilm", "status": "cached", "n_samples": 12, "path": "/x/minilm.parquet"})
        _log_features("vision", {"name": "lite0", "status": "extracted", "n_samples": 12, "dim": 1280,
                                 "throughput_items_s": 50.0, "device": "cpu", "path": "/x/lite0.parquet"})
    out = capsys.readouterr()
    said = out.out + out.err + caplog.text
    assert "text features: minilm (12 samples, cached: up to date, nothing extracted)" in said
    assert "vision features: lite0 (1280-d, 12 samples, extracted; 50.0 items/s on cpu)" in said
    assert "None" not in said


def test_feature_scaler_transform_is_standard_scalers_arithmetic_bit_for_bit():
    """The scaler's transform skips StandardScaler's input checks (1 ms per routed request) but not its numbers:
    float32 (X - mean) / scale exactly as sklearn computes it, for float32 and float64 inputs; a wrong width is a
    clear error."""
    from vlrb.features.fusion import FeatureScaler

    rng = np.random.default_rng(0)
    for n, d in [(100, 50), (3, 1664), (1000, 7)]:
        X = (rng.normal(size=(n, d)) * rng.uniform(0.01, 100, size=d) + rng.normal(size=d) * 5).astype(np.float32)
        sc = FeatureScaler().fit(X)
        for Z in (X, rng.normal(size=(n, d)) * 3):
            before = Z.copy()
            got = sc.transform(Z)
            assert np.array_equal(Z, before)  # the input is not scaled in place
            assert got.dtype == np.float32
            assert np.array_equal(got, sc.scaler.transform(np.asarray(Z, np.float32)).astype(np.float32))
    with pytest.raises(ValueError, match="fitted on 7 features"):
        sc.transform(np.zeros((2, 8), np.float32))
