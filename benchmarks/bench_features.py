"""Feature-extraction speed (issue 13): the default path vs the plain eager forward, and the pipeline vs the bare
forward of the same path, measured in one run.

    python benchmarks/bench_features.py [BENCHMARK_ROOT]         # default data/demo
    python benchmarks/bench_features.py --synthetic 600           # no built benchmark needed
    python benchmarks/bench_features.py --stage                   # also time `build_data.py stage=features`
    python benchmarks/bench_features.py data/demo_full --floor --limit 3000   # full-scale estimate + its floor
    python benchmarks/bench_features.py data/demo_full --full-stage           # full scale measured + its floor

Per modality of the encoder pair (conf/encoder/default.yaml, or --encoder NAME) it measures, alternating
`--repeats` times and keeping the best of each:
  * eager:    the plain eager forward in NCHW fp32 on pre-decoded batches (the reference embeddings);
  * fast:     the default path's bare forward (`runtime: auto`, vlrb/features/runtime.py) on the same batches;
  * pipeline: `extract_features(..., force=True)` end to end (decode workers, tokenising, forward, shards,
              the final parquet) with the already loaded encoder;
and prints items/s of each, fast / eager (target for EfficientNet-Lite0 at 224 px: >= 2.5x), pipeline / fast
(target >= 85%), the largest |difference| of the embeddings against eager, and how long the path took to
prepare (an ONNX export is cached on disk across runs; the first run pays it: `prepare_s`, counted in the
pipeline's time). Embeddings go to a temporary folder, never into the benchmark's own EMBEDDINGS/.
`--stage` times the whole feature stage as a user runs it (a fresh process on a copy of the benchmark)
against the plain eager vision forward alone (target: at most half). `--floor` prints the encoders' FLOPs over
the dense-matmul rate measured in the same run; with `--limit N` on a larger benchmark the full-scale time is
estimated from the measured first N samples (scaled by FLOPs). `--json FILE` also writes the numbers.
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

TARGET = 0.85  # pipeline / bare forward of the same path
SPEEDUP_TARGET = 2.5  # EfficientNet-Lite0 at 224 px: default path / plain eager NCHW
STAGE_TARGET = 0.5  # whole feature stage / plain eager vision forward alone
FLOOR_TARGET = 2.5  # full-scale time / FLOPs floor


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


def default_cfg(encoder: str = "default", **overrides) -> dict:
    """conf/encoder/<encoder>.yaml with its _base defaults, plus overrides."""
    import yaml

    cfg = yaml.safe_load((REPO / "conf" / "encoder" / "_base.yaml").read_text())
    own = yaml.safe_load((REPO / "conf" / "encoder" / f"{encoder}.yaml").read_text())
    own.pop("defaults", None)
    cfg.update(own)
    for k, v in overrides.items():
        if v is not None:
            cfg[k] = v
    return cfg


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predecoded(encoder, bench, batch_size: int, device: torch.device) -> tuple[list[dict], list[int]]:
    """Every item preprocessed and batched ahead, in the pipeline's order, on the device; and their rows."""
    from vlrb.features.batches import pretokenize, to_device as _to_device

    if encoder.modality == "text":
        tok = pretokenize(encoder, bench.prompts, range(bench.n_samples))
        rows = sorted(tok, key=lambda i: -len(tok[i]))
        items = [tok[i] for i in rows]
    else:
        rows, items = [], []
        for i in range(len(bench.images)):
            try:
                img = bench.images[i]
            except Exception:
                continue
            if img is not None:
                rows.append(i)
                items.append(encoder.preprocess(img))
    batches = [encoder.collate(items[s:s + batch_size]) for s in range(0, len(items), batch_size)]
    return [_to_device(b, device) for b in batches], rows


def timed_forward(forward, batches: list[dict], device: torch.device, dtype, width: int = 1,
                  threads: int | None = None) -> tuple[float, torch.Tensor]:
    """(seconds, embeddings) of `forward` over the batches (one warm-up batch first, not timed); `width` batches
    at once on as many threads, as extraction runs them (`parallel_batches`), with `threads` torch threads."""
    from concurrent.futures import ThreadPoolExecutor

    from vlrb.devices import autocast as _autocast

    def one(b):
        with torch.inference_mode(), _autocast(device, dtype):
            return forward(b).float().cpu()

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        one(batches[0])
        _sync(device)
        t0 = time.perf_counter()
        if width > 1:
            with ThreadPoolExecutor(width) as pool:
                out = list(pool.map(one, batches))
        else:
            out = [one(b) for b in batches]
        _sync(device)
        return time.perf_counter() - t0, torch.cat(out)
    finally:
        torch.set_num_threads(before)


def pipeline(encoder, bench, cfg: dict, workdir: Path) -> dict:
    from vlrb.features.extract import extract_features
    from vlrb.features.shards import embeddings_to_numpy
    import pyarrow.parquet as pq

    if hasattr(bench.images, "_tsv_cache"):  # TSVs read while pre-decoding must not give the pipeline a head start
        bench.images._tsv_cache.clear()
    t0 = time.perf_counter()
    r = extract_features(bench, cfg, root=workdir, force=True, progress=False, modalities=[encoder.modality],
                         encoders={encoder.modality: encoder})[encoder.modality]
    dt = time.perf_counter() - t0
    n = r["n_with_image"] if encoder.modality == "vision" else r["n_samples"]  # items that needed a forward
    emb = embeddings_to_numpy(pq.read_table(r["path"]).column("embedding"))
    return {"items": n, "seconds": dt, "items_s": n / dt, "report": r, "embeddings": emb}


def run(bench, cfg: dict, modalities=("text", "vision"), repeats: int = 3) -> dict:
    """eager / fast / pipeline alternate `repeats` times; the best of each is compared (robust to a busy machine)."""
    from vlrb.features.sections import build_encoder
    from vlrb.devices import resolve_device, resolve_precision
    from vlrb.features.options import RunOptions, batches_in_flight
    from vlrb.features.runtime import onnx_path, prepare_forward

    results = {}
    with tempfile.TemporaryDirectory(prefix="vlrb-bench-features-") as tmp:
        for mod in modalities:
            t0 = time.perf_counter()
            enc = build_encoder(cfg, mod).eval()
            load_s = time.perf_counter() - t0
            opts = RunOptions.from_cfg(cfg, cfg.get(mod, {}), mod)
            device = resolve_device(opts.device)
            dtype = resolve_precision(opts.precision, device)
            batches, rows = predecoded(enc, bench, opts.batch_size, device)
            n = len(rows)
            cached = onnx_path(enc, batches[0]).exists()
            width = batches_in_flight(opts, device, dtype, device_decode=False)
            all_threads = torch.get_num_threads()
            fast_threads = max(1, all_threads // width)  # as extraction runs the path (vlrb/features/extract.py)
            t0 = time.perf_counter()
            torch.set_num_threads(fast_threads)
            fast = prepare_forward(enc, opts.runtime, device, dtype, batches[0], n_items=n,
                                   spin=opts.num_workers == 0 and width == 1)
            torch.set_num_threads(all_threads)
            prepare_s = time.perf_counter() - t0

            def eager(b, enc=enc):  # the plain path: NCHW, the module as it is
                return enc(b)

            runs = {"eager": [], "fast": [], "pipeline": []}
            ref = got = None
            for _ in range(max(1, repeats)):
                if getattr(enc, "channels_last", False):
                    enc.set_channels_last(False)
                s_, ref = timed_forward(eager, batches, device, dtype)
                runs["eager"].append(n / s_)
                if getattr(enc, "channels_last", False):
                    enc.set_channels_last(fast.runtime in ("eager", "compile"))
                s_, got = timed_forward(fast.forward, batches, device, dtype, width, fast_threads)
                runs["fast"].append(n / s_)
                runs["pipeline"].append(pipeline(enc, bench, cfg, Path(tmp)))
            pipe = max(runs["pipeline"], key=lambda r: r["items_s"])
            pipe_emb = pipe["embeddings"][rows]
            best = {k: max(v) if k != "pipeline" else pipe["items_s"] for k, v in runs.items()}
            diff_fast = float((got - ref).abs().max())
            diff_pipe = float(np.abs(pipe_emb - ref.numpy()).max())
            speedup, share = best["fast"] / best["eager"], best["pipeline"] / best["fast"]
            size = tuple(batches[0]["pixel_values"].shape[-2:]) if mod == "vision" else None
            results[mod] = {
                "encoder": enc.name, "family": enc.family, "dim": enc.dim, "device": str(device),
                "precision": str(dtype).replace("torch.", "") if dtype else "fp32", "batch_size": opts.batch_size,
                "num_workers": pipe["report"].get("num_workers"), "batches_in_flight": width, "image_size": size,
                "items": n, "load_s": load_s,
                "runtime": fast.runtime, "export_cached_before": cached, "prepare_s": prepare_s,
                "pipeline_prepare_s": pipe["report"].get("prepare_s"),
                "eager_items_s": best["eager"], "fast_items_s": best["fast"], "pipeline_items_s": best["pipeline"],
                "eager_items_s_all": runs["eager"], "fast_items_s_all": runs["fast"],
                "pipeline_items_s_all": [r["items_s"] for r in runs["pipeline"]],
                "speedup_vs_eager": speedup, "pipeline_vs_fast": share,
                "max_abs_diff_fast": diff_fast, "max_abs_diff_pipeline": diff_pipe,
                "pipeline_forward_share": (pipe["report"]["forward_s"] / pipe["seconds"]
                                           if pipe["report"].get("forward_s") else None),
                "meets_pipeline_target": share >= TARGET,
            }
            note = "export cached" if cached else "export counted"
            print(f"{mod:6s} {enc.family}:{enc.name} {'%dx%d px ' % size if size else ''}bs={opts.batch_size} "
                  f"workers={pipe['report'].get('num_workers')} in-flight={width} {device} {results[mod]['precision']} "
                  f"({n} items)\n"
                  f"       plain eager NCHW {best['eager']:8.1f} items/s | default path ({fast.runtime}) "
                  f"{best['fast']:8.1f} items/s = {speedup:4.2f}x | pipeline {best['pipeline']:8.1f} items/s = "
                  f"{share:6.1%} of the bare default path ({'OK' if share >= TARGET else 'BELOW'} "
                  f"target {TARGET:.0%})\n"
                  f"       max |diff| vs eager: default path {diff_fast:.1e}, pipeline {diff_pipe:.1e}; "
                  f"prepare {prepare_s:.1f} s" + (f" ({note})" if fast.runtime == "onnxruntime" else ""),
                  flush=True)
            del enc, batches
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


# ---------------------------------------------------------------------------------------------- the whole stage
def time_stage(root: Path, encoder: str, reports: dict | None = None) -> float:
    """Seconds of `python build_data.py stage=features force=true` in a fresh process, on a copy of `root`;
    `reports` (if given) receives each modality's extraction report of that run."""
    import shutil
    import subprocess

    with tempfile.TemporaryDirectory(prefix="vlrb-bench-stage-") as tmp:
        copy = Path(tmp) / root.name
        shutil.copytree(root, copy, ignore=shutil.ignore_patterns("EMBEDDINGS"))
        for old in (copy / "reports" / "features").glob("*.json"):
            old.unlink()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "build_data.py"), "stage=features", "force=true", "progress=false",
                        f"encoder={encoder}", f"data.root={copy}"], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        if reports is not None:
            for f in (copy / "reports" / "features").glob("*.json"):
                r = json.loads(f.read_text())
                reports[r["modality"]] = r
        return seconds


def full_stage_report(root: Path, cfg: dict, encoder: str) -> dict:
    """The whole feature stage on every sample of `root`, as a user runs it, beside its FLOPs floor: the
    encoders' FLOPs over the dense fp32 matmul rate measured right after, in the same run."""
    from vlrb.data.benchmark import Benchmark
    from vlrb.features.sections import build_encoder

    reports: dict = {}
    stage_s = time_stage(root, encoder, reports)
    rate = matmul_gflops()
    bench = Benchmark.load(root)
    out = {"stage_s": stage_s, "matmul_gflops": rate, "modalities": {}}
    floor_total = 0.0
    for mod in ("text", "vision"):
        f = encoder_flops(build_encoder(cfg, mod).eval(), bench)
        floor_s, r = f / (rate * 1e9), reports.get(mod, {})
        floor_total += floor_s
        out["modalities"][mod] = {"gflop": f / 1e9, "floor_s": floor_s, "wall_s": r.get("wall_s"),
                                  "items_s": r.get("throughput_items_s"), "runtime": r.get("runtime"),
                                  "batches_in_flight": r.get("batches_in_flight"),
                                  "ratio": r["wall_s"] / floor_s if r.get("wall_s") else None}
        print(f"full   {mod:6s} {f / 1e9:9.0f} GFLOP | extracted in {r.get('wall_s', float('nan')):7.1f} s "
              f"({r.get('throughput_items_s') or float('nan'):.1f} items/s, {r.get('runtime')}) | floor "
              f"{floor_s:6.1f} s | {(r.get('wall_s') or float('nan')) / floor_s:4.1f}x floor", flush=True)
    extract_s = sum(m["wall_s"] or 0.0 for m in out["modalities"].values())
    out.update(floor_s=floor_total, extract_s=extract_s, ratio=extract_s / floor_total)
    print(f"full   total: {bench.n_samples} samples extracted in {extract_s:.0f} s ({stage_s:.0f} s for the whole "
          f"`build_data.py stage=features`, start-up and loading included), floor {floor_total:.0f} s (dense fp32 "
          f"matmul {rate:.0f} GFLOP/s measured now) -> {extract_s / floor_total:.1f}x the floor "
          f"({'OK' if extract_s / floor_total <= FLOOR_TARGET else 'ABOVE'} target {FLOOR_TARGET}x)", flush=True)
    return out


# ---------------------------------------------------------------------------------------------- the FLOPs floor
def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Dense fp32 matmul rate of this machine (GFLOP/s, best of `repeats`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def flops(encoder, batch: dict) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        encoder(batch)
    return int(fc.get_total_flops())


def encoder_flops(encoder, bench) -> float:
    """The FLOPs of encoding every item of `bench` without padding: per image, or per prompt from its token
    count (FLOPs(t) = a*t + b*t^2 fitted on two lengths: linear layers plus attention)."""
    if encoder.modality == "vision":
        img = next(bench.images[i] for i in range(len(bench.images)) if bench.images.has_image[i])
        per = flops(encoder, encoder.collate([encoder.preprocess(img)]))
        return float(per) * int(bench.images.has_image.sum())
    lengths = np.array([len(encoder.preprocess(p)) for p in bench.prompts], dtype=np.float64)
    t1, t2 = 16, 64
    f1, f2 = (flops(encoder, encoder.collate([[101] + [1000] * (t - 2) + [102]])) for t in (t1, t2))
    b = (f2 / t2 - f1 / t1) / (t2 - t1)
    a = f1 / t1 - b * t1
    return float((a * lengths + b * lengths ** 2).sum())


def floor_report(bench, full, cfg: dict, results: dict) -> dict:
    """Measured time of the pipeline (scaled from `bench` to `full` by FLOPs) beside the FLOPs floor of `full`."""
    from vlrb.features.sections import build_encoder

    rate = matmul_gflops()
    out = {"matmul_gflops": rate, "modalities": {}}
    total_est = total_floor = 0.0
    for mod, r in results.items():
        enc = build_encoder(cfg, mod).eval()
        f_meas, f_full = encoder_flops(enc, bench), encoder_flops(enc, full)
        meas_s = r["items"] / r["pipeline_items_s"]
        est_s = meas_s * f_full / f_meas
        floor_s = f_full / (rate * 1e9)
        total_est, total_floor = total_est + est_s, total_floor + floor_s
        out["modalities"][mod] = {"gflop_full": f_full / 1e9, "measured_s": meas_s, "estimated_full_s": est_s,
                                  "floor_s": floor_s, "ratio": est_s / floor_s}
        print(f"floor  {mod:6s} {f_full / 1e9:9.0f} GFLOP at full scale | estimated {est_s:7.1f} s (from "
              f"{r['items']} items measured in {meas_s:.1f} s) | floor {floor_s:6.1f} s | "
              f"{est_s / floor_s:4.1f}x floor")
    out.update(estimated_full_s=total_est, floor_s=total_floor, ratio=total_est / total_floor)
    print(f"floor  total: estimated {total_est:.0f} s for {full.n_samples} samples, floor {total_floor:.0f} s "
          f"(dense fp32 matmul {rate:.0f} GFLOP/s measured now) -> {total_est / total_floor:.1f}x the floor "
          f"({'OK' if total_est / total_floor <= FLOOR_TARGET else 'ABOVE'} target {FLOOR_TARGET}x)", flush=True)
    return out


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", nargs="?", default=str(REPO / "data" / "demo"), help="a built benchmark (data/demo)")
    ap.add_argument("--synthetic", type=int, default=0, help="use N synthetic samples instead of a built benchmark")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N samples of the benchmark")
    ap.add_argument("--encoder", default="default", help="conf/encoder/<name>.yaml")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--num-workers", type=int)
    ap.add_argument("--device")
    ap.add_argument("--precision")
    ap.add_argument("--parallel-batches", help="auto | N: batches encoded at once (default: the config's, auto)")
    ap.add_argument("--runtime", help="auto | eager | compile | onnxruntime (default: the config's, auto)")
    ap.add_argument("--modalities", default="text,vision")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=2, help="alternate the three measurements this often")
    ap.add_argument("--stage", action="store_true", help="also time the whole `build_data.py stage=features`")
    ap.add_argument("--floor", action="store_true", help="also print the FLOPs floor (and the full-scale estimate)")
    ap.add_argument("--full-stage", action="store_true",
                    help="only time the whole feature stage on every sample (fresh process) beside its FLOPs floor")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)

    if a.threads:
        torch.set_num_threads(a.threads)
    full = None
    if a.synthetic:
        bench, src = synthetic_benchmark(a.synthetic), f"synthetic ({a.synthetic} samples)"
    else:
        from vlrb.data.benchmark import Benchmark

        if not (Path(a.root) / "data" / "registry" / "meta.parquet").exists():
            print(f"{a.root} is not a built benchmark: run `python build_data.py` (or pass --synthetic N)",
                  file=sys.stderr)
            return 2
        bench = full = Benchmark.load(a.root)
        src = a.root
        if a.limit:
            bench = _head(full, a.limit)
    cfg = default_cfg(a.encoder, batch_size=a.batch_size, num_workers=a.num_workers, device=a.device,
                      precision=a.precision, runtime=a.runtime, parallel_batches=a.parallel_batches)
    if a.num_workers is not None:  # an explicit worker count applies to both modalities
        for m in ("text", "vision"):
            cfg.get(m, {}).pop("num_workers", None)
    from vlrb.features.runtime import onnxruntime_available

    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    print(f"feature extraction benchmark on {src}: {bench.n_samples} samples, "
          f"{int(bench.images.has_image.sum())} with an image; torch threads {torch.get_num_threads()}, "
          f"CPU cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, CUDA {cuda or 'no'}, "
          f"ONNX Runtime {'installed' if onnxruntime_available() else 'not installed'}", flush=True)
    load_start = os.getloadavg()[0]
    if a.full_stage:
        out = {"source": src, "n_samples": full.n_samples, "cpu_cores": os.cpu_count(),
               "load_average_start": load_start,
               "full_stage": full_stage_report(Path(a.root), cfg, a.encoder), "load_average_end": os.getloadavg()[0]}
        print(f"load average at the end {out['load_average_end']:.1f}")
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(out, indent=2, default=str))
        return 0
    res = run(bench, cfg, [m for m in a.modalities.split(",") if m], repeats=a.repeats)
    out = {"source": src, "n_samples": bench.n_samples, "torch_threads": torch.get_num_threads(),
           "cpu_cores": os.cpu_count(), "load_average_start": load_start, "results": res}
    vision = res.get("vision")
    if vision and vision["family"] == "efficientnet_lite0" and vision["image_size"] == (224, 224):
        ok = vision["speedup_vs_eager"] >= SPEEDUP_TARGET
        print(f"EfficientNet-Lite0 at 224 px: default path {vision['speedup_vs_eager']:.2f}x plain eager NCHW "
              f"({'OK' if ok else 'BELOW'} target {SPEEDUP_TARGET}x)")
    if a.stage and vision and not a.synthetic:
        stage_s = time_stage(Path(a.root), a.encoder)
        eager_s = vision["items"] / vision["eager_items_s"]
        out["stage"] = {"stage_s": stage_s, "eager_vision_forward_s": eager_s, "ratio": stage_s / eager_s}
        print(f"whole feature stage (fresh `build_data.py stage=features`, text + vision, {bench.n_samples} samples): "
              f"{stage_s:.1f} s = {stage_s / eager_s:.2f}x the plain eager vision forward alone ({eager_s:.1f} s) "
              f"({'OK' if stage_s / eager_s <= STAGE_TARGET else 'ABOVE'} target {STAGE_TARGET}x)", flush=True)
    if a.floor and full is not None:
        out["floor"] = floor_report(bench, full, cfg, res)
    out["load_average_end"] = os.getloadavg()[0]
    print(f"load average at the end {out['load_average_end']:.1f}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2, default=str))
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
