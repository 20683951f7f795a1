"""GPU feature-extraction throughput on synthetic data (no built benchmark, no internet, default encoders only).

    python benchmarks/gpu_features.py                      # 4096 samples, cuda, bf16, batch 256
    python benchmarks/gpu_features.py --n 20000 --batch-size 512 --num-workers 14
    python benchmarks/gpu_features.py --device cpu --precision fp32 --n 256 --batch-size 32   # a dry run here

Builds N drawn JPEG images (base64, as in LMUData TSVs) and N prompts in memory, then for the default pair
(all-MiniLM-L6-v2 + EfficientNet-Lite0, conf/encoder/default.yaml) prints items/s of the bare encoder forward on
pre-decoded batches and of the full pipeline (`extract_features`: DataLoader decoding workers, bf16 autocast,
resumable shards, the final parquet), and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench_features import default_cfg, run, synthetic_benchmark  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096, help="synthetic samples")
    ap.add_argument("--image-size", type=int, default=336, help="side of the drawn images (px)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--num-workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--text-workers", type=int, default=4, help="workers tokenising prompts")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modalities", default="text,vision")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available here; pass --device cpu for a dry run", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    bench = synthetic_benchmark(a.n, image_size=a.image_size)
    gen_s = time.perf_counter() - t0
    cfg = default_cfg(batch_size=a.batch_size, num_workers=a.num_workers, device=a.device, precision=a.precision)
    cfg["vision"].pop("num_workers", None)
    cfg["text"]["num_workers"] = a.text_workers
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"synthetic set: {a.n} samples, {a.image_size}px JPEGs (made in {gen_s:.1f} s); GPU: {gpu}; "
          f"torch {torch.__version__}; CPU cores {os.cpu_count()}; vision workers {a.num_workers}", flush=True)
    res = run(bench, cfg, [m for m in a.modalities.split(",") if m], repeats=a.repeats)
    if a.json:
        Path(a.json).write_text(json.dumps({"gpu": gpu, "n": a.n, "args": vars(a), "results": res}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
