"""The fast extraction paths (issue 13): uint8 image preprocessing, the runtime choice and its check against
eager, ONNX Runtime (when installed), JPEG decoding on the device (tested here on the CPU), text batched by
token count, and the trainer's per-device precision."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from test_features import CORRUPT, NO_IMAGE, TINY_CFG, make_bench, read_emb, tiny_text, tiny_vision  # noqa: F401
from vlrb.data.benchmark import Benchmark
from vlrb.features import onnx_export, runtime as rt
from vlrb.features.extract import extract_features
from conftest import make_backbone

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLRB_CACHE_DIR", str(tmp_path / "cache"))


def test_uint8_preprocessing_gives_the_float_pipelines_numbers():
    """Resize + crop in the worker (uint8), x / 255 - mean / std on the device: bit for bit timm's transform."""
    import timm
    from PIL import Image

    from vlrb.preprocess import ImagePreprocess

    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model), is_training=False)
    p = ImagePreprocess(tf)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    u8 = p(img)
    assert p.gives_uint8 and u8.dtype == torch.uint8
    assert torch.equal(p.normalize(u8[None])[0], tf(img))


def test_auto_runtime_choice(monkeypatch):
    monkeypatch.setattr(rt, "onnxruntime_available", lambda: True)
    assert rt.choose_runtime("auto", CPU, None, n_items=10_000) == "onnxruntime"
    assert rt.choose_runtime("auto", CPU, None, n_items=10) == "eager"  # the export would cost more than it saves
    assert rt.choose_runtime("auto", CPU, None, n_items=10, export_cached=True) == "onnxruntime"
    assert rt.choose_runtime("auto", CPU, None, n_items=10_000, convolutional=False) == "eager"  # Transformers
    assert rt.choose_runtime("auto", CPU, torch.bfloat16, n_items=10_000) == "eager"
    assert rt.choose_runtime("auto", torch.device("cuda"), torch.bfloat16, n_items=10_000) == "eager"
    monkeypatch.setattr(rt, "onnxruntime_available", lambda: False)
    assert rt.choose_runtime("auto", CPU, None, n_items=10_000) == "eager"
    with pytest.raises(ValueError, match="runtime must be one of"):
        rt.choose_runtime("tensorrt", CPU, None, 1)


def test_a_path_that_fails_gives_way_to_eager(monkeypatch, tiny_vision):
    monkeypatch.setattr(rt, "onnxruntime_available", lambda: True)

    def broken(*a, **k):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(rt, "onnxruntime_forward", broken)
    batch = {"pixel_values": torch.zeros(2, 3, 32, 32, dtype=torch.uint8)}
    p = rt.prepare_forward(tiny_vision, "onnxruntime", CPU, None, batch)
    assert p.runtime == "eager" and "unsupported operator" in p.note and p.forward is tiny_vision


def test_runtime_is_checked_against_eager(monkeypatch, tiny_vision):
    """A path whose embeddings drift beyond the tolerance is not used."""
    monkeypatch.setattr(rt, "onnxruntime_available", lambda: True)
    monkeypatch.setattr(rt, "onnxruntime_forward", lambda enc, ex, path, spin=True: (lambda b: enc(b) + 1e-2))
    batch = {"pixel_values": torch.zeros(2, 3, 32, 32, dtype=torch.uint8)}
    p = rt.prepare_forward(tiny_vision, "onnxruntime", CPU, None, batch)
    assert p.runtime == "eager" and "differ from eager" in p.note


def test_onnxruntime_matches_eager_and_caches_its_export(tiny_text, tmp_path, monkeypatch, caplog):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.setenv("VLRB_CACHE_DIR", str(tmp_path))  # a fresh cache: the export really runs
    enc = tiny_text
    long = enc.collate([enc.preprocess("what is the value of the largest bar " * 3), enc.preprocess("hi")])
    with caplog.at_level(logging.INFO):  # as under Hydra: INFO on the root logger
        p = rt.prepare_forward(enc, "onnxruntime", CPU, None, long)
    assert p.runtime == "onnxruntime" and p.max_abs_diff < 1e-5
    assert rt.onnx_path(enc, long).is_relative_to(tmp_path)
    chatter = [r for r in caplog.records if r.name.startswith(onnx_export._quiet_exporter.LOGGERS)]
    assert not chatter, f"the exporter's INFO lines reached the job log: {chatter[:2]}"
    assert any("exported to ONNX" in r.getMessage() for r in caplog.records)  # our own one line remains
    path = rt.onnx_path(enc, long)
    assert path.exists()
    stamp = path.stat().st_mtime_ns
    for texts in (["one"], ["a b c d e f g h i j k l m n o p", "x", "y z"]):  # other batch sizes and lengths
        b = enc.collate([enc.preprocess(t) for t in texts])
        with torch.inference_mode():
            np.testing.assert_allclose(p.forward(b).numpy(), enc(b).numpy(), atol=1e-5)
    again = rt.prepare_forward(enc, "onnxruntime", CPU, None, long)
    assert again.runtime == "onnxruntime" and path.stat().st_mtime_ns == stamp  # reused, not exported again


def test_extraction_on_onnxruntime_equals_eager(tmp_path, tiny_vision):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    bench = make_bench()
    encs = {"vision": tiny_vision}
    extract_features(bench, dict(TINY_CFG, runtime="eager"), root=tmp_path / "eager", progress=False,
                     encoders=encs, modalities=["vision"])
    r = extract_features(bench, dict(TINY_CFG, runtime="onnxruntime"), root=tmp_path / "ort", progress=False,
                         encoders=encs, modalities=["vision"])["vision"]
    assert r["runtime"] == "onnxruntime" and r["max_abs_diff_vs_eager"] < 1e-5 and r["n_decode_failed"] == 1
    a = read_emb(tmp_path / "eager" / "EMBEDDINGS" / "vision" / "tiny-hf_vision-dinov2.parquet")[1]
    b = read_emb(tmp_path / "ort" / "EMBEDDINGS" / "vision" / "tiny-hf_vision-dinov2.parquet")[1]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_device_jpeg_decoding_path_on_the_cpu(tmp_path, tiny_vision):
    """decode=torchvision (the GPU path, here on the CPU): same statuses, embeddings close to PIL's."""
    bench = make_bench()
    encs = {"vision": tiny_vision}
    cfg = dict(TINY_CFG, num_workers=2)
    pil = extract_features(bench, dict(cfg, decode="pil"), root=tmp_path / "pil", progress=False, encoders=encs,
                           modalities=["vision"])["vision"]
    tv = extract_features(bench, dict(cfg, decode="torchvision"), root=tmp_path / "tv", progress=False,
                          encoders=encs, modalities=["vision"])["vision"]
    assert (tv["n_with_image"], tv["n_without_image"], tv["n_decode_failed"]) == \
        (pil["n_with_image"], pil["n_without_image"], pil["n_decode_failed"]) == (20, 1, 1)
    _, a, ta = read_emb(tmp_path / "pil" / "EMBEDDINGS" / "vision" / "tiny-hf_vision-dinov2.parquet")
    _, b, tb = read_emb(tmp_path / "tv" / "EMBEDDINGS" / "vision" / "tiny-hf_vision-dinov2.parquet")
    assert ta.column("image_status").to_pylist() == tb.column("image_status").to_pylist()
    assert not b[NO_IMAGE].any() and not b[CORRUPT].any()
    cos = (a * b).sum(1)[np.linalg.norm(a, axis=1) > 0]
    assert cos.min() > 0.98  # another JPEG decoder and resampler: close, not identical


def test_device_decoding_needs_a_resize_crop_preprocessing():
    from vlrb.features.decode import choose_decode

    class Processor:  # an HF image processor: not splittable into resize + normalise
        gives_uint8 = False

    assert choose_decode("auto", torch.device("cuda"), Processor()) == "pil"
    with pytest.raises(ValueError, match="decode=torchvision needs"):
        choose_decode("torchvision", CPU, Processor())
    with pytest.raises(ValueError, match="decode must be one of"):
        choose_decode("nvjpeg", CPU, Processor())


def test_text_is_batched_by_token_count(tmp_path, monkeypatch, tiny_text):
    """Prompts sorted by token count: each batch is as long as its longest prompt and no longer."""
    n = 40
    prompts = [("word " * int(k)).strip() for k in np.random.default_rng(0).integers(1, 60, n)]
    bench = Benchmark.from_arrays(np.zeros((n, 2), np.int8), np.full((n, 2), 1e-5), prompts=prompts,
                                  sample_ids=[f"t/{i}" for i in range(n)])
    widths: list[int] = []
    orig = type(tiny_text).forward

    def fwd(batch):
        widths.append(int(batch["input_ids"].shape[1]))
        return orig(tiny_text, batch)

    monkeypatch.setattr(tiny_text, "forward", fwd)
    extract_features(bench, dict(TINY_CFG, batch_size=8), root=tmp_path, progress=False,
                     encoders={"text": tiny_text}, modalities=["text"])
    lengths = sorted((len(tiny_text.preprocess(p)) for p in bench.prompts), reverse=True)
    assert sorted(widths, reverse=True) == [lengths[s] for s in range(0, n, 8)]  # batches may run on threads


@pytest.mark.parametrize("accelerator,cuda,bf16,expected", [
    ("auto", False, False, "32-true"), ("auto", True, True, "bf16-mixed"), ("auto", True, False, "16-mixed"),
    ("cpu", True, True, "32-true"), ("gpu", True, True, "bf16-mixed")])
def test_trainer_precision_auto_per_device(monkeypatch, accelerator, cuda, bf16, expected):
    """What `${vlrb_precision:${.accelerator}}` in conf/trainer/auto.yaml and ddp.yaml resolves to."""
    from vlrb import devices
    from vlrb.routers.lit import FitContext

    monkeypatch.setattr(devices, "cuda_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert devices.device_precision(accelerator) == expected
    assert FitContext(trainer={"accelerator": accelerator, "precision": "auto"}).setting("precision") == expected
    assert FitContext(trainer={"accelerator": accelerator, "precision": "16-mixed"}).setting("precision") == "16-mixed"


def test_train_config_defaults_to_the_auto_trainer():
    """The default preset: a Trainer factory on any accelerator, its precision stated for this machine."""
    from vlrb.devices import device_precision
    from vlrb.jobs.entry import compose

    cfg = compose("train")
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer" and cfg.trainer._partial_
    assert cfg.trainer.accelerator == "auto" and cfg.trainer.precision == device_precision("auto")
    cpu = compose("train", overrides=["trainer=cpu"]).trainer
    assert cpu.accelerator == "cpu" and cpu.precision == "32-true"


def test_auto_workers_leave_the_forward_its_cores():
    from vlrb.features.options import RunOptions, auto_workers

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert [auto_workers(cpu, c) for c in (1, 2, 4, 16)] == [1, 1, 2, 4]
    assert [auto_workers(gpu, c) for c in (1, 2, 16)] == [1, 1, 8]
    assert RunOptions.from_cfg({"num_workers": "auto", "device": "cpu"}, {}).num_workers == auto_workers(cpu)
    assert RunOptions.from_cfg({"num_workers": "auto"}, {"num_workers": 0}).num_workers == 0  # a section wins
    with pytest.raises(ValueError, match="num_workers must be auto or a whole number"):
        RunOptions.from_cfg({"num_workers": "many"}, {})


def test_auto_batch_size_is_smaller_for_images_on_a_cpu():
    from vlrb.features.options import RunOptions, auto_batch_size

    assert RunOptions.from_cfg({"batch_size": "auto", "device": "cpu"}, {}, "vision").batch_size == 16
    assert RunOptions.from_cfg({"batch_size": "auto", "device": "cpu"}, {}, "text").batch_size == 32
    assert auto_batch_size(torch.device("cuda"), "vision") == 32
    assert RunOptions.from_cfg({"batch_size": "auto"}, {"batch_size": 8}, "vision").batch_size == 8  # section wins
    with pytest.raises(ValueError, match="batch_size must be auto or a whole number >= 1"):
        RunOptions.from_cfg({"batch_size": 0}, {}, "vision")


def test_batches_in_flight_on_a_multi_core_cpu_only(monkeypatch):
    from vlrb.features.options import RunOptions, batches_in_flight

    opts = RunOptions.from_cfg({"device": "cpu"}, {})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert batches_in_flight(opts, CPU, None, device_decode=False) == 4  # one per core, each single-threaded
    assert batches_in_flight(opts, CPU, torch.bfloat16, device_decode=False) == 1  # autocast: one at a time
    assert batches_in_flight(opts, torch.device("cuda"), None, device_decode=False) == 1
    assert batches_in_flight(opts, CPU, None, device_decode=True) == 1
    assert batches_in_flight(RunOptions.from_cfg({"runtime": "compile"}, {}), CPU, None, False) == 1
    assert batches_in_flight(RunOptions.from_cfg({"parallel_batches": 3}, {}), torch.device("cuda"), None, False) == 3
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert batches_in_flight(opts, CPU, None, device_decode=False) == 1
    with pytest.raises(ValueError, match="parallel_batches must be auto or a whole number >= 1"):
        RunOptions.from_cfg({"parallel_batches": 0}, {})


@pytest.mark.parametrize("runtime", ["eager", "onnxruntime"])
def test_batches_in_flight_give_the_embeddings_of_one_batch_at_a_time(tmp_path, tiny_text, tiny_vision, runtime):
    """Several batches on threads (each decoding its own images) write the same rows, statuses and embeddings as
    one batch at a time with DataLoader workers; the report says how it ran."""
    if runtime == "onnxruntime" and not rt.onnxruntime_available():
        pytest.skip("onnxruntime / onnxscript not installed")
    bench = make_bench()
    encs = {"text": tiny_text, "vision": tiny_vision}
    one = extract_features(bench, dict(TINY_CFG, runtime=runtime, parallel_batches=1, num_workers=1),
                           root=tmp_path / "one", progress=False, encoders=encs)
    many = extract_features(bench, dict(TINY_CFG, runtime=runtime, parallel_batches=3), root=tmp_path / "many",
                            progress=False, encoders=encs)
    for mod, name in (("text", "tiny-hf_text"), ("vision", "tiny-hf_vision-dinov2")):
        assert (one[mod]["batches_in_flight"], many[mod]["batches_in_flight"]) == (1, 3)
        assert many[mod]["runtime"] == runtime and many[mod]["num_workers"] == 0
        ids_a, a, ta = read_emb(tmp_path / "one" / "EMBEDDINGS" / mod / f"{name}.parquet")
        ids_b, b, tb = read_emb(tmp_path / "many" / "EMBEDDINGS" / mod / f"{name}.parquet")
        assert ids_a == ids_b == [str(s) for s in bench.sample_ids] and ta.schema == tb.schema
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert many["vision"]["n_decode_failed"] == 1 and many["vision"]["n_without_image"] == 1
    assert tb.column("image_status").to_pylist() == ta.column("image_status").to_pylist()


def test_frozen_image_prefix_of_the_offline_backbone_on_onnxruntime(monkeypatch):
    """The offline backbone's frozen image stages run on ONNX Runtime once an export pays off (here after 8
    images), with eager's numbers; never with gradients on; a copy or pickle drops the session, not the rule."""
    import copy
    import pickle

    if not rt.onnxruntime_available():
        pytest.skip("onnxruntime / onnxscript not installed")

    monkeypatch.setattr(rt, "MIN_ITEMS_FOR_EXPORT", 8)
    bb = make_backbone("tiny_offline").eval()
    fast = bb.__dict__["_fast_image_prefix"]
    assert fast is not None and "_fast_image_prefix" not in dict(bb.named_modules())  # not a submodule, not saved
    assert not any(k.startswith("_fast") for k in bb.state_dict())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (4, 7), generator=g)
    mask, px = torch.ones(4, 7, dtype=torch.long), torch.randn(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        bb.__dict__["_fast_image_prefix"] = None
        text_ref, fmap_ref = bb._prefix(ids, mask, px)
        bb.__dict__["_fast_image_prefix"] = fast
        assert fast(px) is None and fast.seen == 4  # eager until 8 images went through
        text, fmap = bb._prefix(ids, mask, px)  # the 8th: exported and checked now
        assert fast._prepared is not None and rt.onnx_path(fast.encoder, {"pixel_values": px}).exists()
    assert torch.equal(text, text_ref) and fmap.shape == fmap_ref.shape
    assert float((fmap - fmap_ref).abs().max()) < 1e-4
    assert fast(px) is None  # gradients on (training a tower that is not frozen would need them): eager
    twin = copy.deepcopy(bb)
    assert twin.__dict__["_fast_image_prefix"]._prepared is None and pickle.loads(pickle.dumps(fast))._prepared is None
    with torch.no_grad():
        assert float((twin._prefix(ids, mask, px)[1] - fmap_ref).abs().max()) < 1e-4  # the export is cached on disk
        for p in bb.image.conv_stem.parameters():
            p.mul_(1.5)  # new weights: a new export, checked again
        bb.__dict__["_fast_image_prefix"] = None
        moved = bb._prefix(ids, mask, px)[1]
        bb.__dict__["_fast_image_prefix"] = fast
        assert float((bb._prefix(ids, mask, px)[1] - moved).abs().max()) < 1e-4
    warm = copy.deepcopy(bb).__dict__["_fast_image_prefix"]
    warm.seen = 0
    assert warm.warm_up(px) and warm._prepared is not None  # benchmarks: ready before the clock starts
    assert make_backbone("tiny_offline", freeze="none").__dict__["_fast_image_prefix"] is None


def test_auto_forward_for_many_small_calls_moves_to_onnxruntime_once_it_pays_off(monkeypatch, tmp_path):
    """Routing raw inputs (a server): a convolutional encoder runs eager until 8 images went through (here); then
    its export runs in the background while calls stay eager, and once it is ready they run on ONNX Runtime with
    eager's numbers; a new forward finds the export cached and uses it at once."""
    if not rt.onnxruntime_available():
        pytest.skip("onnxruntime / onnxscript not installed")
    from vlrb.features.batches import encode_items
    from vlrb.features.sections import build_vision_encoder
    from vlrb.data.images import ImageList
    from PIL import Image

    monkeypatch.setenv("VLRB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(rt, "MIN_ITEMS_FOR_EXPORT", 8)
    enc = build_vision_encoder({"family": "timm", "tiny": True}).eval()
    rng = np.random.default_rng(0)
    images = ImageList([Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(5)])
    reference = encode_items(enc, "vision", images, device="cpu")
    fast = rt.AutoForward(enc, CPU)
    first = encode_items(enc, "vision", images, device="cpu", forward=fast)
    assert fast._prepared is None and fast.seen == 5 and fast._background is None  # eager, nothing started
    second = encode_items(enc, "vision", images, device="cpu", forward=fast)  # 10 seen: the export starts
    assert fast._background is not None
    assert fast.wait(120) and fast._prepared is None  # on disk; the next call loads it
    third = encode_items(enc, "vision", images, device="cpu", forward=fast)
    assert fast._prepared.runtime == "onnxruntime"
    for got in (first, second, third):
        np.testing.assert_allclose(got, reference, atol=1e-5)
    again = rt.AutoForward(enc, CPU)
    encode_items(enc, "vision", ImageList(list(images)[:1]), device="cpu", forward=again)
    assert again._prepared is not None and again._prepared.runtime == "onnxruntime"  # cached export: at once
    assert again._background is None


def test_auto_forward_prepares_text_encoders_too_when_asked(monkeypatch, tmp_path, tiny_text):
    """A server asks at start (`prepare`): a Transformer text encoder is exported in a child process while calls
    run eagerly, used once ready with eager's numbers; `prepare(wait=True)` returns with the path in use; an
    explicit runtime=eager never exports."""
    if not rt.onnxruntime_available():
        pytest.skip("onnxruntime / onnxscript not installed")
    monkeypatch.setenv("VLRB_CACHE_DIR", str(tmp_path))
    batch = tiny_text.collate([tiny_text.preprocess(p) for p in ("a chart", "what is shown in the table", "read it")])
    with torch.inference_mode():
        reference = tiny_text(batch)
    fast = rt.AutoForward(tiny_text, CPU)
    fast.prepare()
    with torch.inference_mode():
        during = fast(batch)
    assert fast.wait(120)
    with torch.inference_mode():
        after = fast(batch)
    assert fast._prepared.runtime == "onnxruntime" and fast._prepared.max_abs_diff < 1e-4
    torch.testing.assert_close(during, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(after, reference, atol=1e-5, rtol=0)
    ready = rt.AutoForward(tiny_text, CPU)
    ready.prepare(wait=True)  # the export is on disk now: loaded at once
    assert ready._prepared.runtime == "onnxruntime" and ready._background is None
    eager = rt.AutoForward(tiny_text, CPU, runtime="eager")
    eager.prepare()
    with torch.inference_mode():
        eager(batch)
    assert eager._prepared.runtime == "eager" and eager._background is None


def test_a_process_exits_cleanly_while_its_encoder_is_being_exported(tmp_path):
    """A script that routes a few inputs and ends while the export runs in the background exits with status 0 (a
    thread inside torch at interpreter exit aborted the process: 'terminate called without an active
    exception'), and leaves no export process behind."""
    import subprocess
    import sys

    if not rt.onnxruntime_available():
        pytest.skip("onnxruntime / onnxscript not installed")
    script = (
        "import os, torch\n"
        "from vlrb.features.sections import build_vision_encoder\n"
        "from vlrb.features import runtime as rt\n"
        "enc = build_vision_encoder({'family': 'timm', 'tiny': True}).eval()\n"
        "fast = rt.AutoForward(enc, torch.device('cpu'))\n"
        "fast.prepare()\n"
        "assert fast._background is not None and fast._background.is_alive()\n"
        "print('leaving', os.getpid(), flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "VLRB_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "terminate called" not in done.stderr and "leaving" in done.stdout
    assert _exporters_of(tmp_path, wait_s=10) == []


def _exporters_of(cache, wait_s: float) -> list[str]:
    """Export processes (python -m vlrb.features.onnx_export) still running with VLRB_CACHE_DIR=cache, after up to
    wait_s seconds (a killed child may take a moment to go); other tests' exporters are not counted."""
    import subprocess
    import time

    deadline = time.monotonic() + wait_s
    while True:
        found = []
        pids = subprocess.run(["pgrep", "-f", "vlrb.features.onnx_export"], capture_output=True, text=True).stdout
        for pid in pids.split():
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if f"VLRB_CACHE_DIR={cache}".encode() in f.read():
                        found.append(pid)
            except OSError:  # gone meanwhile
                pass
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
