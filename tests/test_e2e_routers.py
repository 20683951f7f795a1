"""End-to-end routers (RouterDC, CosineCls, ZOOTER, VLC) and their backbones, on tiny random backbones.

Loss golden values are worked out by hand in the comments: logits are logs of small integers, so every
softmax is a ratio of integers.
"""
import base64
import copy
import inspect
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vlrb.backbones import BackboneUnavailableError
from vlrb.backbones.base import encoder_layers
from vlrb.backbones.data import IMAGE_FAILED, IMAGE_MISSING, IMAGE_OK, Collate, ImageStats, RawDataset
from vlrb.data.benchmark import Benchmark
from vlrb.data.images import ImageLoader
from vlrb.routers import read_router
from vlrb.routers import losses
from vlrb.routers.lit import FitContext
from vlrb.routing.soft_labels import soft_labels
from conftest import backbone_names, make_backbone, make_router, router_class

REPO = Path(__file__).resolve().parents[1]
E2E = ["routerdc", "cosinecls", "zooter", "vlc"]
TINY = ["tiny_offline", "tiny_lxmert_vit", "tiny_visualbert", "tiny_uniter", "tiny_vilbert"]


# ------------------------------------------------------------------------------------------ fixtures
def jpeg_b64(rgb, size: int = 24) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def tiny_bench(n: int = 48, k: int = 4, seed: int = 0) -> Benchmark:
    """n samples, k models; every 6th sample has no image, every 10th a broken one, 2 samples no correct model."""
    rng = np.random.default_rng(seed)
    Y = rng.integers(0, 2, (n, k))
    Y[:, 0] |= rng.random(n) < 0.5
    Y[[5, 17]] = 0
    C = np.geomspace(1e-5, 1e-3, k) * rng.uniform(0.8, 1.2, (n, k))  # spread prices: rank scores above 0
    datasets = ["MMBench_DEV_EN_V11", "MathVista_MINI", "ChartQA_TEST"] * (n // 3) + ["MMBench_DEV_EN_V11"] * (n % 3)
    bench = Benchmark.from_arrays(Y, C, prompts=[f"question {i}: what is in the picture?" for i in range(n)],
                                  datasets=datasets, sample_ids=[f"{d}/{i}" for i, d in enumerate(datasets)])
    kinds, refs = [], []
    for i in range(n):
        if i % 6 == 0:
            kinds.append("none"), refs.append("")
        elif i % 10 == 3:
            kinds.append("b64"), refs.append("bm90IGFuIGltYWdl")  # "not an image"
        else:
            kinds.append("b64"), refs.append(jpeg_b64((255, 0, 0) if i % 2 else (0, 0, 255)))
    bench.images = ImageLoader(kinds, refs)  # a cached_property: assigning replaces it
    return bench


@pytest.fixture(scope="module")
def bench():
    return tiny_bench()


def ctx_for(tmp_path, **trainer) -> FitContext:
    return FitContext(trainer={"accelerator": "cpu", "devices": 1, **trainer})


# ------------------------------------------------------------------------------------------ RouterDC losses
# 3 samples, 4 models. e^z per row: [1, 2, 3, 4], [4, 1, 1, 2], [3, 1, 1, 1].
Z = torch.log(torch.tensor([[1.0, 2, 3, 4], [4, 1, 1, 2], [3, 1, 1, 1]]))
T = torch.tensor([[0.5, 0.3, 0.2, 0.0],     # top-3: m0 m1 m2        bottom-3: m3 m2 m1
                  [0.0, 0.05, 0.15, 0.8],   # top-3: m3 m2 m1        bottom-3: m0 m1 m2
                  [0.7, 0.0, 0.0, 0.3]])    # top-3: m0 m3 (m1|m2)   bottom-3: m1 m2 m3 (the tie is harmless)


def test_routerdc_sample_llm_vlrb_by_hand():
    # −log(Σ_top3 e^z / Σ_all e^z): (1+2+3)/10, (1+1+2)/8, (3+1+1)/6
    want = (math.log(10 / 6) + math.log(8 / 4) + math.log(6 / 5)) / 3  # = ln(4)/3
    got = losses.sample_llm_loss(Z, T, top_k=3, last_k=3, variant="vlrb")
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert got.item() == pytest.approx(math.log(4) / 3, rel=1e-6)


def test_routerdc_sample_llm_original_by_hand():
    # one InfoNCE per positive p vs the bottom-3 N: −log(e^z_p / (e^z_p + Σ_N e^z)), masked where t_p ≤ 0,
    # summed over the 3 positives, each averaged over the 3 samples (masked terms count as 0).
    # row 0: Σ_N = 4+3+2 = 9  -> p=m0: 1/10, m1: 2/11, m2: 3/12
    # row 1: Σ_N = 4+1+1 = 6  -> p=m3: 2/8,  m2: 1/7,  m1: 1/7
    # row 2: Σ_N = 1+1+1 = 3  -> p=m0: 3/6,  m3: 1/4,  3rd positive has t = 0: masked
    j0 = (math.log(10) + math.log(4) + math.log(2)) / 3
    j1 = (math.log(11 / 2) + math.log(7) + math.log(4)) / 3
    j2 = (math.log(4) + math.log(7) + 0.0) / 3
    got = losses.sample_llm_loss(Z, T, top_k=3, last_k=3, variant="original")
    assert got.item() == pytest.approx(j0 + j1 + j2, rel=1e-6)
    assert got.item() == pytest.approx(math.log(344960) / 3, rel=1e-6)


def test_routerdc_original_drops_negatives_above_half():
    # row 2 with last_k = 4: m0 (t = 0.7 > 0.5) is in the bottom-4 but is not pushed away, so Σ_N stays 3:
    # p=m0: 3/(3+3) -> ln 2; p=m3: 1/(1+3) -> ln 4; 3rd positive masked. Without the mask p=m0 would give ln 3.
    got = losses.sample_llm_loss(Z[2:], T[2:], top_k=3, last_k=4, variant="original")
    assert got.item() == pytest.approx(math.log(2) + math.log(4), rel=1e-6)


def test_routerdc_cluster_loss_by_hand():
    # unit logit rows r0 = [1, 0, 0, 0], r1 = [0.6, 0.8, 0, 0], r2 = [0, 1, 0, 0] (scaled rows: cosine ignores scale)
    # cos: (r0, r1) = 0.6, (r1, r2) = 0.8, (r0, r2) = 0. Clusters [0, 0, 1]: r2 has no positive and is left out.
    # i=0: −log(e^0.6 / (e^1 + e^0.6 + e^0));  i=1: −log(e^0.6 / (e^0.6 + e^1 + e^0.8))
    z = torch.tensor([[2.0, 0, 0, 0], [0.6, 0.8, 0, 0], [0, 3.0, 0, 0]])
    e = math.exp
    want = (-math.log(e(0.6) / (e(1) + e(0.6) + 1)) - math.log(e(0.6) / (e(0.6) + e(1) + e(0.8)))) / 2
    got = losses.cluster_contrastive_loss(z, torch.tensor([0, 0, 1]))
    assert got.item() == pytest.approx(want, rel=1e-6)
    # nobody shares a cluster: zero, and still differentiable
    zz = z.clone().requires_grad_(True)
    none = losses.cluster_contrastive_loss(zz, torch.tensor([0, 1, 2]))
    none.backward()
    assert none.item() == 0.0 and zz.grad is not None


def test_routerdc_total_loss_is_weighted_sum():
    clusters = torch.tensor([0, 0, 1])
    parts = losses.routerdc_loss(Z, T, clusters, top_k=3, last_k=3, variant="vlrb", cluster_weight=0.5)
    ss = losses.cluster_contrastive_loss(Z, clusters)
    assert parts["sample_llm"].item() == pytest.approx(math.log(4) / 3, rel=1e-6)
    assert parts["loss"].item() == pytest.approx(math.log(4) / 3 + 0.5 * ss.item(), rel=1e-6)
    with pytest.raises(ValueError, match="vlrb' or 'original"):
        losses.sample_llm_loss(Z, T, variant="paper")


def test_kl_and_soft_ce_differ_by_target_entropy():
    t = torch.tensor([[0.25, 0.25, 0.5, 0.0]])
    z = torch.log(torch.tensor([[1.0, 1, 2, 4]]))  # softmax = [1, 1, 2, 4] / 8
    ce = -(0.25 * math.log(1 / 8) * 2 + 0.5 * math.log(2 / 8))
    ent = -(0.25 * math.log(0.25) * 2 + 0.5 * math.log(0.5))
    assert losses.soft_cross_entropy(z, t).item() == pytest.approx(ce, rel=1e-6)
    assert losses.kl_batchmean(z, t).item() == pytest.approx(ce - ent, rel=1e-6)


# ------------------------------------------------------------------------------------------ ZOOTER tag smoothing
def test_zooter_tag_smoothing_golden():
    t = np.array([[1, 0, 0], [0, 1, 0], [0.5, 0.5, 0], [0, 0, 1]], dtype=np.float32)
    tags = ["a", "a", "b", "b"]
    # tag means: a = [.5, .5, 0], b = [.25, .25, .5];  t* = 0.3·t + 0.7·mean_tag
    want = [[0.65, 0.35, 0.0], [0.35, 0.65, 0.0], [0.325, 0.325, 0.35], [0.175, 0.175, 0.65]]
    got = losses.tag_smoothed_targets(t, tags, beta=0.3)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(losses.tag_smoothed_targets(t, tags, beta=1.0), t)  # the VL-RouterBench port
    np.testing.assert_allclose(losses.tag_smoothed_targets(t, tags, beta=0.0)[0], [0.5, 0.5, 0.0])
    with pytest.raises(ValueError):
        losses.tag_smoothed_targets(t, tags, beta=1.5)


def test_zooter_router_smooths_by_dataset_and_keeps_no_correct(bench):
    train = bench.split("train")
    r = make_router("zooter", backbone="tiny_offline", beta=0.3, tag_source="dataset", lam=0)
    t = soft_labels(train.Y, train.C, 0, cost_scale=100)
    keep = np.ones(len(train), bool)  # ZOOTER keeps samples no model answers
    got = r._train_targets(train, t, keep)["targets"]
    np.testing.assert_allclose(got, losses.tag_smoothed_targets(t, train.datasets, 0.3), atol=1e-7)
    assert not router_class("zooter").drop_no_correct and router_class("vlc").drop_no_correct


def test_cluster_targets_kmeans_on_soft_labels():
    t = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 distinct label rows
    c = losses.cluster_targets(t, n_clusters=5)  # at most as many clusters as distinct rows
    assert len(np.unique(c)) == 3 and all(len(np.unique(c[i * 4:(i + 1) * 4])) == 1 for i in range(3))


# ------------------------------------------------------------------------------------------ backbones
@pytest.mark.parametrize("name", TINY)
def test_tiny_backbones_embed_and_backprop(name):
    from PIL import Image

    bb = make_backbone(name)
    items = [bb.processor("What colour is the square?", Image.new("RGB", (40, 30), (255, 0, 0))),
             bb.processor("", None)]  # empty prompt, no image (placeholder)
    h = bb(bb.processor.collate(items))
    assert h.shape == (2, bb.hidden_size) and torch.isfinite(h).all()
    h.sum().backward()
    assert any(p.grad is not None for p in bb.parameters() if p.requires_grad)


def test_hash_tokenizer_for_random_weight_throughput_checks():
    bb = make_backbone("tiny_uniter", tokenizer="hash")  # no tokenizer files needed
    ids = bb.processor.text("Two words")
    assert ids[0] == 101 and ids[-1] == 102 and len(ids) == 4
    assert bb(bb.processor.collate([bb.processor("Two words", None)])).shape == (1, bb.hidden_size)


def test_backbone_registry_and_configs():
    names = backbone_names()
    for n in ("offline", "lxmert_vit", "visualbert", "uniter", "vilbert"):
        assert n in names and f"tiny_{n}" in names
    from hydra.utils import get_class

    for f in sorted((REPO / "conf" / "backbone").glob("*.yaml")):
        cfg = yaml.safe_load(f.read_text())
        assert cfg.pop("_partial_") is True  # the router builds it when it fits (seeded)
        cls = get_class(cfg.pop("_target_"))
        sig = inspect.signature(cls.__init__).parameters
        unknown = set(cfg) - set(sig)
        assert not unknown, f"{f.name}: {unknown} are not parameters of {cls.__name__}"
        assert cfg.get("tiny", False) == f.stem.startswith("tiny_")


def test_paper_backbones_fail_offline_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(BackboneUnavailableError, match="backbone=offline") as e:
        make_backbone("lxmert_vit")
    assert "google/vit-base-patch16-224" in str(e.value) and "Nothing is downloaded" in str(e.value)


def test_partial_freeze_keeps_towers_frozen_and_in_eval():
    bb = make_backbone("tiny_offline", freeze="partial", train_last=1)
    assert not any(p.requires_grad for p in bb.text.embeddings.parameters())
    assert all(p.requires_grad for p in encoder_layers(bb.text)[-1].parameters())
    assert all(p.requires_grad for p in bb.fusion.parameters())
    bb.train()
    assert not bb.image.conv_stem.training and bb.fusion.training
    full = make_backbone("tiny_offline", freeze="none")
    assert all(p.requires_grad for p in full.parameters())


@pytest.mark.parametrize("name", ["tiny_lxmert_vit", "tiny_visualbert", "tiny_uniter", "tiny_vilbert"])
def test_vit_backbones_freeze_the_vit_tower(name):
    towers = make_backbone(name, freeze="towers").train()
    assert not any(p.requires_grad for p in towers.vit.parameters()) and not towers.vit.embeddings.training
    assert all(p.requires_grad for m in towers.new_modules() for p in m.parameters())
    part = make_backbone(name, freeze="partial", train_last=1)
    blocks = encoder_layers(part.vit)
    assert all(p.requires_grad for p in blocks[-1].parameters())
    assert not any(p.requires_grad for p in blocks[0].parameters())


def test_frozen_prefix_cache_is_exact():
    """The offline backbone caches its frozen towers' bottom per row: same outputs, whatever the batch padding."""
    from PIL import Image

    bb = make_backbone("tiny_offline", freeze="partial").eval()
    prompts = ["short", "a much longer prompt that pads the others in its batch", "medium length prompt"]
    items = [bb.processor(p, Image.new("RGB", (20, 20), (80 * i, 10, 200))) for i, p in enumerate(prompts)]
    batch = bb.processor.collate(items)
    with torch.no_grad():
        plain = bb(batch)  # no rows: no cache
        assert bb.cache is not None and not bb.cache.store
        first = bb(dict(batch, row=torch.tensor([10, 11, 12])))
        pair = bb.processor.collate([items[0], items[2]])  # shorter padding, both rows cached now
        again = bb(dict(pair, row=torch.tensor([10, 12])))
    torch.testing.assert_close(first, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, plain[[0, 2]], atol=1e-5, rtol=1e-5)
    assert sorted(bb.cache.store) == [10, 11, 12]
    held = [x for entry in bb.cache.store.values() for x in entry]  # each entry owns its memory: counted = held
    assert bb.cache.bytes == sum(x.untyped_storage().nbytes() for x in held)
    assert make_backbone("tiny_offline", freeze="none").cache is None  # nothing frozen: nothing to cache


def test_folded_batch_norms_route_the_same_and_leave_the_trained_tower_alone():
    """Routing folds the image tower's batch norms into its convolutions (vlrb.backbones.fold): same outputs, the
    trained tower and its state_dict untouched, the folded copy rebuilt when a weight changes, none in training."""
    from PIL import Image
    from torch import nn

    bb = make_backbone("tiny_offline", freeze="partial").eval()
    g = torch.Generator().manual_seed(0)
    norms = [m for m in bb.image.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    with torch.no_grad():  # statistics and affine parameters far from the identity they start as
        for m in norms:
            m.running_mean.normal_(0, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0, 0.3, generator=g)
    items = [bb.processor(p, Image.new("RGB", (20, 20), (80 * i, 10, 200)))
             for i, p in enumerate(["a b", "c", "d e f"])]
    batch = bb.processor.collate(items)
    state = {k: v.clone() for k, v in bb.state_dict().items()}
    with torch.no_grad():
        plain = bb(batch)
        with bb.inference():
            assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.image.modules())
            folded = bb(batch)
        torch.testing.assert_close(folded, plain, atol=1e-5, rtol=1e-5)
        assert any(isinstance(m, nn.BatchNorm2d) for m in bb.image.modules())  # the trained tower is back
        assert all(torch.equal(state[k], v) for k, v in bb.state_dict().items())
        bb.image.conv_stem.weight.mul_(2.0)  # a weight changes (as in training): the folded copy must follow
        plain2 = bb(batch)
        with bb.inference():
            folded2 = bb(batch)
    assert not torch.allclose(plain2, plain, atol=1e-4)
    torch.testing.assert_close(folded2, plain2, atol=1e-5, rtol=1e-5)
    bb.train()
    with bb.inference():  # training mode: the real tower, never a folded copy
        assert any(isinstance(m, nn.BatchNorm2d) for m in bb.image.modules())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_frozen_text_prefix_runs_on_a_bf16_copy_where_the_cpu_has_native_bf16(monkeypatch):
    """prefix_precision bf16 (auto on a CPU with AMX) runs the frozen MiniLM layers on a bf16 copy: within 3% of
    fp32, returned in fp32, never a submodule or saved, remade when the weights change, not pickled; fp32 (and
    auto without AMX, or with gradients on) runs the tower itself, exactly."""
    import pickle

    from vlrb.backbones import offline

    bb = make_backbone("tiny_offline", prefix_precision="bf16").eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (3, 13), generator=g)  # 13: padded to 16 for the copy, cut back after
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    eager = bb.__dict__["_frozen_text"]
    with torch.no_grad():
        ref, got = eager(ids, mask), bb._text_prefix(ids, mask)
    assert got.dtype == torch.float32 and got.shape == ref.shape and not torch.equal(got, ref)
    assert _rel(got, ref) < 0.03
    half = bb.__dict__["_frozen_text_bf16"]._copy[1]
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert not any("frozen_text" in k for k in bb.state_dict()) and "_frozen_text" not in dict(bb.named_modules())
    assert pickle.loads(pickle.dumps(bb.__dict__["_frozen_text_bf16"]))._copy is None
    twin = copy.deepcopy(bb)  # the copy's prefix is made of the copy's own layers
    assert twin.__dict__["_frozen_text"].embeddings is twin.text.embeddings
    with torch.no_grad():
        bb.text.embeddings.word_embeddings.weight.mul_(2.0)  # new weights (a loaded checkpoint): a new copy
        ref2, got2 = eager(ids, mask), bb._text_prefix(ids, mask)
    assert bb.__dict__["_frozen_text_bf16"]._copy[1] is not half and _rel(got2, ref2) < 0.03
    assert not torch.allclose(ref2, ref, atol=1e-3)
    assert torch.equal(bb._text_prefix(ids, mask), ref2)  # gradients on: the tower itself

    monkeypatch.setattr(offline, "cpu_has_amx", lambda: False)
    auto = make_backbone("tiny_offline").eval()
    with torch.no_grad():
        assert torch.equal(auto._text_prefix(ids, mask), auto.__dict__["_frozen_text"](ids, mask))
    monkeypatch.setattr(offline, "cpu_has_amx", lambda: True)
    assert auto._bf16_prefix(torch.device("cpu")) and not auto._bf16_prefix(torch.device("cuda"))
    assert not make_backbone("tiny_offline", prefix_precision="fp32")._bf16_prefix(torch.device("cpu"))
    assert not make_backbone("tiny_offline", freeze="none")._bf16_prefix(torch.device("cpu"))  # all trains
    with pytest.raises(ValueError, match="prefix_precision"):
        make_backbone("tiny_offline", prefix_precision="fp16")


def test_bf16_mixed_on_a_cpu_when_asked_trains_and_routes_under_autocast(bench, tmp_path, monkeypatch):
    """`precision: auto` stays 32-true on every CPU; `precision=bf16-mixed` on a CPU (worth it with AMX) trains
    with gradient clipping (so a foreach, not a fused AdamW), routes under the same autocast, and keeps the frozen
    image stages on their fast path."""
    from vlrb.features import runtime as rt

    monkeypatch.setenv("VLRB_CACHE_DIR", str(tmp_path / "cache"))  # the ONNX export below stays in the test
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto = make_router("vlc", backbone="tiny_offline")
    assert auto._context(FitContext(trainer={"accelerator": "auto", "precision": "auto"})).setting("precision") \
        == "32-true"
    r = make_router("vlc", backbone="tiny_offline", batch_size=8, precision="bf16-mixed", grad_clip=1.0)
    # a fused optimizer would make Lightning refuse to clip the gradients of a mixed-precision fit
    r.fit(bench.split("train"), bench.split("dev"), ctx_for(tmp_path, max_epochs=1, limit_train_batches=2))
    assert r.fit_info["precision"] == "bf16-mixed"
    assert r._bf16(r._context(None), torch.device("cpu"))
    scores = r.predict_scores(bench.split("test"))
    assert scores.dtype == np.float32 and np.isfinite(scores).all()
    x = torch.zeros(2, 3, 32, 32)
    fast = r.module.backbone.__dict__["_fast_image_prefix"]
    if rt.onnxruntime_available():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            fast.warm_up(x)
            assert fast(x) is not None and fast(x).dtype == torch.float32  # CPU autocast: still ONNX Runtime


def test_e2e_optimizer_is_fused_on_a_cpu_with_the_same_maths():
    """Full precision on a CPU: one fused AdamW kernel; mixed precision: foreach kernels (Lightning clips no
    gradients of a fused optimizer there); both take the step torch's default loop takes."""
    torch.manual_seed(0)
    m = make_router("vlc", backbone="tiny_offline").init_module(["a", "b", "c"])
    twins = [copy.deepcopy(m) for _ in range(3)]
    opts = [twins[0].optimizer("32-true"), twins[1].optimizer("bf16-mixed"), None]
    assert opts[0].defaults["fused"] and opts[1].defaults["foreach"] and not opts[1].defaults.get("fused")
    groups = twins[2].optimizer("32-true").param_groups  # the reference: torch's default implementation
    opts[2] = torch.optim.AdamW([{"params": g["params"], "lr": g["lr"]} for g in groups], weight_decay=m.weight_decay)
    for twin, opt in zip(twins, opts):
        for p in twin.parameters():
            if p.requires_grad:
                p.grad = torch.full_like(p, 0.01) * torch.linspace(-1, 1, p.numel()).view_as(p)
        for _ in range(3):
            opt.step()
    ref = dict(twins[2].named_parameters())
    for twin in twins[:2]:
        for name, p in twin.named_parameters():
            torch.testing.assert_close(p, ref[name], atol=1e-6, rtol=1e-5)
    assert not torch.equal(ref["linear.weight"], m.linear.weight)  # the steps moved the weights


def test_head_lr_groups():
    r = make_router("vlc", backbone="tiny_offline", lr=1e-5, head_lr=1e-3, warmup_ratio=0.0)
    m = r.init_module([f"m{j}" for j in range(3)])
    opt = m.configure_optimizers()
    pre, new = opt.param_groups
    assert (pre["lr"], new["lr"]) == (1e-5, 1e-3)
    new_ids = {id(p) for p in new["params"]}
    assert all(id(p) in new_ids for p in m.linear.parameters()) and all(
        id(p) in new_ids for p in m.backbone.fusion.parameters() if p.requires_grad)
    assert all(id(p) not in new_ids for p in encoder_layers(m.backbone.text)[-1].parameters())
    one = make_router("vlc", backbone="tiny_offline", lr=1e-5, head_lr=None, warmup_ratio=0.0)
    assert [g["lr"] for g in one.init_module(["a", "b"]).configure_optimizers().param_groups] == [1e-5, 1e-5]


# ------------------------------------------------------------------------------------------ placeholder images
def test_placeholder_images_are_counted(bench):
    bb = make_backbone("tiny_lxmert_vit")
    rows = [0, 1, 3]  # no image, an image, a broken image
    ds = RawDataset(bench.prompts, bench.images, rows, bb.processor, Y=bench.Y[rows])
    items = [ds[j] for j in range(3)]
    assert [it["image_status"] for it in items] == [IMAGE_MISSING, IMAGE_OK, IMAGE_FAILED]
    grey = bb.processor.image(None)
    assert torch.equal(items[0]["pixel_values"], grey) and torch.equal(items[2]["pixel_values"], grey)
    stats = ImageStats()
    batch = Collate(bb.processor)(items)
    stats.update("train", batch)
    stats.update("train", batch)  # a second epoch over the same rows does not double-count
    assert stats.summary() == {"train": {"samples": 3, "no_image": 1, "decode_failed": 1}}


def test_a_batch_decoded_on_threads_equals_item_by_item(bench, monkeypatch):
    bb = make_backbone("tiny_lxmert_vit")
    rows = [0, 1, 3, 1, 2]  # no image, images, a broken image
    ds = RawDataset(bench.prompts, bench.images, rows, bb.processor, Y=bench.Y[rows])
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # threads even on a 1-core runner
    batch = ds.__getitems__([4, 0, 2, 1])
    one_by_one = [ds[j] for j in (4, 0, 2, 1)]
    assert [it["image_status"] for it in batch] == [IMAGE_OK, IMAGE_MISSING, IMAGE_FAILED, IMAGE_OK]
    for got, want in zip(batch, one_by_one):
        assert got.keys() == want.keys() and got["input_ids"] == want["input_ids"] and got["row"] == want["row"]
        assert torch.equal(got["pixel_values"], want["pixel_values"]) and torch.equal(got["Y"], want["Y"])
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=0, collate_fn=Collate(bb.processor))
    assert next(iter(loader))["row"].tolist() == rows  # the DataLoader fetches whole batches this way


# ------------------------------------------------------------------------------------------ fitting
@pytest.mark.parametrize("router,backbone", [("routerdc", "tiny_vilbert"), ("cosinecls", "tiny_uniter"),
                                             ("zooter", "tiny_visualbert"), ("vlc", "tiny_lxmert_vit")])
def test_each_router_fits_one_short_epoch_and_predicts(bench, tmp_path, router, backbone):
    r = make_router(router, backbone=backbone, batch_size=8)
    ctx = ctx_for(tmp_path, max_epochs=1, limit_train_batches=2)
    r.fit(bench.split("train"), bench.split("dev"), ctx)
    test = bench.split("test")
    scores = r.predict_scores(test)
    assert scores.shape == (len(test), bench.n_models) and np.isfinite(scores).all()
    assert r.route(test).shape == (len(test),)
    info = r.fit_info
    assert info["epochs"] == 1 and 0.0 <= info["best_val_rank_score"] <= 1.0
    assert info["images"]["val_samples"] == len(bench.split("dev"))
    assert info["images"]["predict_test_samples"] == len(test)
    dropped = int((~bench.split("train").Y.astype(bool).any(1)).sum())
    assert info["n_dropped_no_correct"] == (0 if router == "zooter" else dropped)


def test_fast_dev_run_with_hard_labels(bench, tmp_path):
    """λ = inf means hard one-hot labels for RouterDC too (upstream fell back to uniform-over-correct)."""
    r = make_router("routerdc", backbone="tiny_offline", lam="inf", batch_size=8)
    ctx = ctx_for(tmp_path, fast_dev_run=True)
    r.fit(bench.split("train"), bench.split("dev"), ctx)
    assert r.fit_info["label_diagnostics"]["entropy_mean"] == 0.0
    assert r.predict_scores(bench.split("dev")).shape == (len(bench.split("dev")), bench.n_models)


def test_full_epoch_counts_every_placeholder(bench, tmp_path):
    r = make_router("vlc", backbone="tiny_offline", batch_size=16, max_epochs=1)
    ctx = ctx_for(tmp_path)
    train = bench.split("train")
    r.fit(train, None, ctx)  # no dev: the full budget, last weights
    used = train.idx[train.Y.astype(bool).any(1)]
    kinds, refs = bench.images.kinds[used], bench.images.refs[used]
    want = {"train_samples": len(used), "train_no_image": int((kinds == "none").sum()),
            "train_decode_failed": int((refs == "bm90IGFuIGltYWdl").sum())}
    assert want["train_no_image"] > 0 and want["train_decode_failed"] > 0
    assert r.fit_info["images"] == want


def test_fit_without_dev_accepts_a_preset_that_limits_validation(bench, tmp_path):
    """debug=fast sets limit_val_batches; without dev the router still trains its full budget (no val loop)."""
    r = make_router("vlc", backbone="tiny_offline", batch_size=16, max_epochs=1)
    r.bench, r.ctx = bench, ctx_for(tmp_path, limit_train_batches=2, limit_val_batches=1)
    r.fit(bench.split("train"), None)
    assert r.fit_info["epochs"] == 1 and r.fit_info["best_val_rank_score"] is None


def test_save_load_roundtrip(bench, tmp_path):
    r = make_router("cosinecls", backbone="tiny_offline", batch_size=8, lam=100)
    ctx = ctx_for(tmp_path / "run", fast_dev_run=True)
    r.fit(bench.split("train"), bench.split("dev"), ctx)
    r.save(tmp_path / "router")
    assert (tmp_path / "router" / "router.json").exists() and (tmp_path / "router" / "weights.safetensors").exists()
    back = read_router(tmp_path / "router")
    from vlrb.routers.base import _jsonable

    assert type(back) is type(r) and back.models == r.models
    assert _jsonable(back.get_params()) == _jsonable(r.get_params())  # the backbone factory: the same spec
    test = bench.split("test")
    np.testing.assert_allclose(back.predict_scores(test), r.predict_scores(test), rtol=1e-5, atol=1e-5)


def test_cosinecls_and_routerdc_differ_on_the_same_batch(bench):
    batch_rows = bench.split("train").idx[:8]
    outs, embs = {}, {}
    for name in ("cosinecls", "routerdc"):
        m = make_router(name, backbone="tiny_offline", seed=7).init_module(bench.models).eval()
        ds = RawDataset(bench.prompts, bench.images, batch_rows, m.backbone.processor)
        batch = Collate(m.backbone.processor)([ds[j] for j in range(len(ds))])
        with torch.no_grad():
            embs[name], outs[name] = m.backbone(batch), m(batch)
    torch.testing.assert_close(embs["cosinecls"], embs["routerdc"])  # same backbone and seed ...
    assert not torch.allclose(outs["cosinecls"], outs["routerdc"], atol=1e-3)  # ... different heads


def test_fit_needs_the_benchmark(bench):
    r = make_router("vlc", backbone="tiny_offline")
    train = bench.split("train")
    train.source = None  # a split that does not know where its prompts and images are
    with pytest.raises(RuntimeError, match="split.source"):
        r.fit(train, bench.split("dev"))


# ------------------------------------------------------------------------------------------ behaviour (slow)
def colour_keyword_bench(n: int = 360, seed: int = 0) -> Benchmark:
    """The best (cheapest correct) model depends on the image colour and a prompt keyword:
    red -> m0 (cheap); blue + "photo" -> m1 (cheap); blue + "chart" -> only m2 (expensive) is right."""
    rng = np.random.default_rng(seed)
    red = rng.random(n) < 0.5
    chart = rng.random(n) < 0.5
    Y = np.stack([red, ~red & ~chart, chart], axis=1).astype(np.int8)
    C = np.tile([2e-5, 3e-5, 8e-4], (n, 1)) * rng.uniform(0.9, 1.1, (n, 3))
    words = ["bar", "pie", "line", "scatter"]
    prompts = [f"Look at this {'chart' if c else 'photo'} and describe the {words[i % 4]} part."
               for i, c in enumerate(chart)]
    bench = Benchmark.from_arrays(Y, C, prompts=prompts, sample_ids=[f"toy/{i:04d}" for i in range(n)])
    refs = []
    for r_ in red:
        base = np.array([220, 30, 30] if r_ else [30, 30, 220])
        refs.append(jpeg_b64(tuple(int(v) for v in np.clip(base + rng.integers(-25, 26, 3), 0, 255)), size=32))
    bench.images = ImageLoader(["b64"] * n, refs)
    return bench


@pytest.mark.slow
def test_offline_vlc_beats_random_on_image_and_keyword(tmp_path):
    from vlrb.routing.metrics import route_metrics

    bench = colour_keyword_bench()
    train, dev, test = bench.split("train"), bench.split("dev"), bench.split("test")
    r = make_router("vlc", backbone="offline", backbone_params={"image_size": 64}, lam=10000, lr=1e-3,
                      max_epochs=3, batch_size=16, patience=3)
    ctx = ctx_for(tmp_path)
    r.fit(train, dev, ctx)
    vlc = route_metrics(test, r.route(test), bench.cost_bounds)["test/rank_score"]
    rnd = route_metrics(test, make_router("random").fit(train).route(test), bench.cost_bounds)["test/rank_score"]
    assert vlc > rnd + 0.1, (vlc, rnd)


def test_decode_workers_auto_leaves_a_small_cpu_to_the_forward_and_feeds_a_gpu():
    from vlrb.backbones.data import decode_workers

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert [decode_workers("auto", cpu, cores=c) for c in (1, 2, 4, 7, 8, 16, 64)] == [0, 0, 0, 0, 1, 2, 4]
    assert [decode_workers("auto", gpu, cores=c) for c in (1, 2, 16, 64)] == [1, 1, 8, 8]
    assert decode_workers(3, cpu) == 3 and decode_workers("0", gpu) == 0  # a number is taken as it is
    with pytest.raises(ValueError, match="num_workers must be auto or a whole number"):
        decode_workers(-1, cpu)
