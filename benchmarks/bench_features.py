"""Feature-extraction throughput: the full pipeline vs the bare encoder forward (issue 4 acceptance).

    python benchmarks/bench_features.py [BENCHMARK_ROOT]         # default data/demo
    python benchmarks/bench_features.py --synthetic 600           # no built benchmark needed

For each modality of the default encoder pair (conf/encoder/default.yaml) it measures
  * bare:     the encoder's forward alone on pre-decoded, pre-batched tensors (same batch size, same order),
  * pipeline: `extract_features(..., force=True)` end to end (DataLoader workers decoding images, tokenising,
              forward, resumable shards, the final atomic parquet), with the already loaded encoder,
and prints items/s for both and their ratio (target: pipeline >= 85% of bare). Embeddings go to a temporary
folder, never into the benchmark's own EMBEDDINGS/.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

TARGET = 0.85


def synthetic_benchmark(n: int, image_size: int = 96, seed: int = 0, no_image_every: int = 0):
    """An in-memory benchmark of n samples with drawn JPEG images (base64) and short prompts."""
    from PIL import Image, ImageDraw

    from vlrb.data.benchmark import Benchmark
    from vlrb.data.images import ImageLoader

    rng = np.random.default_rng(seed)
    words = ("what colour is the largest shape in the chart what is the value of the bar labelled how many "
             "objects are there read the text in the image which option A B C D best answers").split()
    prompts, refs, kinds = [], [], []
    for i in range(n):
        prompts.append(" ".join(rng.choice(words, size=int(rng.integers(6, 40)))) + "?")
        if no_image_every and i % no_image_every == 0:
            kinds.append("none"), refs.append("")
            continue
        img = Image.new("RGB", (image_size, image_size), tuple(int(c) for c in rng.integers(0, 256, 3)))
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = (int(v) for v in rng.integers(0, image_size - 8, 2))
            x1, y1 = x0 + int(rng.integers(6, image_size // 2)), y0 + int(rng.integers(6, image_size // 2))
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=fill)
        d.text((4, 4), f"{i}", fill=(0, 0, 0))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        kinds.append("b64"), refs.append(base64.b64encode(buf.getvalue()).decode())
    ids = [f"SYN/{i}" for i in range(n)]
    bench = Benchmark.from_arrays(np.zeros((n, 2), np.int8), np.full((n, 2), 1e-5, np.float32), sample_ids=ids,
                                  prompts=prompts)
    bench.images = ImageLoader(kinds, refs, sample_ids=ids)  # cached_property: an instance attribute overrides it
    return bench


def default_cfg(**overrides) -> dict:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "encoder" / "default.yaml"))
    for k, v in overrides.items():
        if v is not None:
            cfg[k] = v
    return cfg


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(encoder, bench, batch_size: int, device: torch.device, dtype, repeats: int = 1) -> dict:
    """Items/s of the encoder's forward alone on pre-decoded batches (the same order as the pipeline)."""
    from vlrb.features.extract import _autocast, _to_device

    if encoder.modality == "text":
        prompts = bench.prompts
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        items = [encoder.preprocess(prompts[i]) for i in order]
    else:
        items = []
        for i in range(len(bench.images)):
            try:
                img = bench.images[i]
            except Exception:
                continue
            if img is not None:
                items.append(encoder.preprocess(img))
    batches = [encoder.collate(items[s:s + batch_size]) for s in range(0, len(items), batch_size)]
    batches = [_to_device(b, device) for b in batches]
    encoder.to(device).eval()
    with torch.inference_mode(), _autocast(device, dtype):
        encoder(batches[0])  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            for b in batches:
                encoder(b)
        _sync(device)
        dt = time.perf_counter() - t0
    return {"items": len(items) * repeats, "seconds": dt, "items_s": len(items) * repeats / dt}


def pipeline(encoder, bench, cfg: dict, workdir: Path) -> dict:
    from vlrb.features.extract import extract_features

    t0 = time.perf_counter()
    r = extract_features(bench, cfg, root=workdir, force=True, progress=False, modalities=[encoder.modality],
                         encoders={encoder.modality: encoder})[encoder.modality]
    dt = time.perf_counter() - t0
    n = r["n_with_image"] if encoder.modality == "vision" else r["n_samples"]  # items that needed a forward
    return {"items": n, "seconds": dt, "items_s": n / dt, "loop_items_s": r["throughput_items_s"],
            "report": r}


def run(bench, cfg: dict, modalities=("text", "vision"), label: str = "") -> dict:
    from vlrb.features.encoders import build_encoder
    from vlrb.features.extract import RunOptions, resolve_device, resolve_precision

    results = {}
    with tempfile.TemporaryDirectory(prefix="vlrb-bench-features-") as tmp:
        for mod in modalities:
            t0 = time.perf_counter()
            enc = build_encoder(cfg, mod)
            load_s = time.perf_counter() - t0
            opts = RunOptions.from_cfg(cfg, cfg.get(mod, {}))
            device = resolve_device(opts.device)
            dtype = resolve_precision(opts.precision, device)
            bare = bare_forward(enc, bench, opts.batch_size, device, dtype)
            pipe = pipeline(enc, bench, cfg, Path(tmp))
            ratio = pipe["items_s"] / bare["items_s"]
            results[mod] = {"encoder": enc.name, "dim": enc.dim, "device": str(device),
                            "precision": pipe["report"]["precision"], "batch_size": opts.batch_size,
                            "num_workers": opts.num_workers, "load_s": load_s, "bare_items_s": bare["items_s"],
                            "pipeline_items_s": pipe["items_s"], "pipeline_loop_items_s": pipe["loop_items_s"],
                            "items": pipe["items"], "ratio": ratio, "meets_target": ratio >= TARGET}
            print(f"{label}{mod:6s} {enc.name:22s} bs={opts.batch_size:<4d} workers={opts.num_workers} "
                  f"{str(device):6s} {results[mod]['precision']:5s} | bare {bare['items_s']:9.1f} items/s | "
                  f"pipeline {pipe['items_s']:9.1f} items/s ({pipe['items']} items, {pipe['seconds']:.1f} s) | "
                  f"ratio {ratio:6.1%} {'OK' if ratio >= TARGET else 'BELOW TARGET'} (target {TARGET:.0%})",
                  flush=True)
            del enc
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", nargs="?", default=str(REPO / "data" / "demo"), help="a built benchmark (data/demo)")
    ap.add_argument("--synthetic", type=int, default=0, help="use N synthetic samples instead of a built benchmark")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N samples of the benchmark")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--num-workers", type=int)
    ap.add_argument("--device")
    ap.add_argument("--precision")
    ap.add_argument("--modalities", default="text,vision")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)

    if a.synthetic:
        bench, src = synthetic_benchmark(a.synthetic), f"synthetic ({a.synthetic} samples)"
    else:
        from vlrb.data.benchmark import Benchmark

        if not (Path(a.root) / "data" / "registry" / "meta.parquet").exists():
            print(f"{a.root} is not a built benchmark: run `python build_data.py` (or pass --synthetic N)",
                  file=sys.stderr)
            return 2
        bench, src = Benchmark.load(a.root), a.root
        if a.limit:
            bench = _head(bench, a.limit)
    cfg = default_cfg(batch_size=a.batch_size, num_workers=a.num_workers, device=a.device, precision=a.precision)
    if a.num_workers is not None:  # an explicit worker count applies to both modalities
        for m in ("text", "vision"):
            cfg.get(m, {}).pop("num_workers", None)
    print(f"feature extraction benchmark on {src}: {bench.n_samples} samples, "
          f"{int(bench.images.has_image.sum())} with an image; torch threads {torch.get_num_threads()}, "
          f"CPU cores {os.cpu_count()}, CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}",
          flush=True)
    res = run(bench, cfg, [m for m in a.modalities.split(",") if m])
    if a.json:
        Path(a.json).write_text(json.dumps({"source": src, "n_samples": bench.n_samples, "results": res}, indent=2))
    return 0


def _head(bench, n: int):
    """The first n rows of a loaded benchmark as an in-memory benchmark (prompts and images kept)."""
    from vlrb.data.benchmark import Benchmark
    from vlrb.data.images import ImageLoader

    n = min(n, bench.n_samples)
    s = bench.samples.iloc[:n]
    sub = Benchmark.from_arrays(bench.Y[:n], bench.C[:n], bench.models, sample_ids=list(bench.sample_ids[:n]),
                                datasets=list(bench.meta["dataset"][:n]), splits=list(bench.meta["split"][:n]),
                                prompts=s["prompt"].tolist())
    im = bench.images
    sub.images = ImageLoader(im.kinds[:n], im.refs[:n], im.tsv_files[:n], sample_ids=list(bench.sample_ids[:n]))
    return sub


if __name__ == "__main__":
    raise SystemExit(main())
