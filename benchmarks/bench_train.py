"""Training benchmark: fit every feature router at the paper's scale, and time router-only routing.

    python benchmarks/bench_train.py [--quick] [--samples 30540] [--dim 1664] [--models 17] [--threads N]

Data (made in memory, not timed): 30,540 samples × 17 models, 1,664-d features (384 text + 1,280 image,
the default encoder pair), 70/10/20 split, standardised with train statistics like train.py does. The
features carry a planted, learnable structure: 32 latent task clusters (cluster centre + noise) with
per-cluster model strengths, and a difficulty direction; correctness follows a latent-skill model and
costs are tokens × the paper's prices, so routing by x beats every fixed model.

Timed: the paper grid (upstream's sweep scripts) — KNN, PRkNN, OVR and K-means once, Linear and MLP for
λ ∈ {0, 10, 100, 1000, 10000, inf} — each = fit (with dev early stopping) + routing dev and test once,
as train.py does; then routing throughput (`router.route`, features precomputed) at batch 16 and 1,024.
Targets on the 2-core CPU: the grid under 15 min; Linear/MLP at batch 1,024 over 200,000 samples/s.
Exit code 1 when a target is missed (the MLP one cannot be met on 2 cores: see the FLOP bound printed).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlrb.data.benchmark import Benchmark  # noqa: E402
from vlrb.jobs.common import make_router  # noqa: E402
from vlrb.routing.metrics import measure_throughput, route_metrics, take_rows  # noqa: E402
from vlrb.routing.synthetic import FULL_SCALE, PAPER_PRICES  # noqa: E402

LAMBDAS = ["0", "10", "100", "1000", "10000", "inf"]
ONCE = ["knn", "prknn", "ovr", "kmeans"]
SWEPT = ["linear", "mlp"]
TEXT_DIM, IMAGE_DIM = 384, 1280  # all-MiniLM-L6-v2 + EfficientNet-Lite0 (conf/encoder/default.yaml)


def planted_features(n: int, k: int, dim: int, seed: int = 0, clusters: int = 32):
    """(X float32 n×dim, Y int8 n×k, C float32 n×k): latent clusters decide which models are strong."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, clusters, n)
    prices = PAPER_PRICES[:k] if k <= len(PAPER_PRICES) else [(f"m{j}", 0.2, 0.3) for j in range(k)]
    p_in = np.array([p for _, p, _ in prices])
    p_out = np.array([p for _, _, p in prices])
    skill = 1.5 * np.log(p_in / p_in.min()) / max(np.log(p_in.max() / p_in.min()), 1e-9)  # dearer = stronger
    strength = rng.normal(0, 1.2, (clusters, k))
    difficulty = rng.normal(0, 1.5, n)
    logit = skill + strength[g] - difficulty[:, None] + rng.normal(0, 0.7, (n, k))
    Y = (rng.random((n, k)) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    tok_in = np.round(np.exp(rng.normal(np.log(600), 0.5, n))) + 256
    tok_out = np.round(np.exp(rng.normal(np.log(40), 1.0, (n, k)))) + 1
    C = ((tok_in[:, None] * p_in + tok_out * p_out) / 1e6).astype(np.float32)

    centres = rng.normal(0, 0.35, (clusters, dim)).astype(np.float32)
    direction = rng.normal(0, 1, dim).astype(np.float32) / math.sqrt(dim)
    X = rng.standard_normal((n, dim), dtype=np.float32)
    X += centres[g]
    X += (difficulty[:, None] * 8.0 * direction).astype(np.float32)
    return X, Y, C, [m for m, _, _ in prices], tok_in.astype(np.int64)


def make_splits(n: int, k: int, dim: int):
    X, Y, C, models, tokens = planted_features(n, k, dim)
    bench = Benchmark.from_arrays(Y, C, models, input_tokens=tokens)
    tr = bench.splits["train"]
    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6  # standardised with train statistics (train.py's scaler)
    X -= mu
    X /= sd
    return bench, {s: bench.split(s).with_features(X[bench.splits[s]]) for s in ("train", "dev", "test")}


def gemm_gflops(dim: int) -> float:
    """This machine's float32 GEMM rate on the MLP's first layer shape (the bound on MLP routing)."""
    import torch

    a, b = torch.randn(1024, dim), torch.randn(dim, 2048)
    a @ b
    t0, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    return 2 * 1024 * dim * 2048 * reps / (time.perf_counter() - t0) / 1e9


def throughput(router, split, batch_size: int, budget_s: float) -> dict:
    """router.route samples/s on the first `batch_size` test rows; runs sized to ~budget_s (3..50)."""
    batch = take_rows(split, np.arange(min(batch_size, len(split))))
    router.route(batch)  # warm caches/threads before sizing
    t0 = time.perf_counter()
    router.route(batch)
    one = max(time.perf_counter() - t0, 1e-6)
    runs = int(min(50, max(3, budget_s / one)))
    return measure_throughput(router.route, batch, batch.input_tokens, warmup=2, runs=runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3,000 samples, 256-d, λ ∈ {0, inf}: a smoke run in ~1 min")
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--dim", type=int, default=None, help=f"feature dim (default {TEXT_DIM}+{IMAGE_DIM})")
    ap.add_argument("--models", type=int, default=17)
    ap.add_argument("--lambdas", default=None, help="comma list (default: the paper's 0,10,100,1000,10000,inf)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--grid-target", type=float, default=15 * 60, help="seconds for the whole grid")
    ap.add_argument("--throughput-target", type=float, default=200_000, help="Linear/MLP samples/s at batch 1,024")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    n = args.samples or (3000 if args.quick else FULL_SCALE)
    dim = args.dim or (256 if args.quick else TEXT_DIM + IMAGE_DIM)
    lambdas = args.lambdas.split(",") if args.lambdas else (["0", "inf"] if args.quick else LAMBDAS)

    import lightning  # noqa: F401  (imported first: it resets its logger's level on import)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-fit "GPU available" banners
    warnings.filterwarnings("ignore", module="lightning")

    t0 = time.perf_counter()
    bench, s = make_splits(n, args.models, dim)
    train, dev, test = s["train"], s["dev"], s["test"]
    print(f"synthetic features {n:,} × {dim} (train {len(train):,} / dev {len(dev):,} / test {len(test):,}), "
          f"{args.models} models; made in {time.perf_counter() - t0:.1f} s (not timed). "
          f"torch threads {torch.get_num_threads()}")

    runs: list[dict] = []
    fitted = {}
    grid_start = time.perf_counter()
    jobs = [(r, None) for r in ONCE] + [(r, lam) for r in SWEPT for lam in lambdas]
    for name, lam in jobs:
        router = make_router(name, **({} if lam is None else {"lam": lam}))
        t = time.perf_counter()
        router.fit(train, dev)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        router.route(dev)
        choice = router.route(test)
        route_s = time.perf_counter() - t
        m = route_metrics(test, choice, bench.cost_bounds)
        info = router.fit_info
        runs.append({"router": name, "lambda": lam, "fit_s": fit_s, "route_dev_test_s": route_s,
                     "epochs": info.get("epochs"), "test_rank_score": m["test/rank_score"],
                     "test_accuracy": m["test/accuracy"], "test_avg_cost": m["test/avg_cost"]})
        fitted[name] = router
        print(f"  {name:<7}{'' if lam is None else 'λ=' + lam:<9} fit {fit_s:7.1f} s  route dev+test {route_s:6.2f} s"
              f"  epochs {str(info.get('epochs', '-')):>3}  test acc {100 * m['test/accuracy']:5.1f}%  "
              f"$/10K {1e4 * m['test/avg_cost']:6.2f}  rank {100 * m['test/rank_score']:5.1f}", flush=True)
    grid_s = time.perf_counter() - grid_start

    for base in ("random", "cheapest", "strongest", "oracle"):
        r = make_router(base).fit(train)
        m = route_metrics(test, r.route(test), bench.cost_bounds)
        print(f"  {base:<16} (reference)                                   test acc {100 * m['test/accuracy']:5.1f}%  "
              f"$/10K {1e4 * m['test/avg_cost']:6.2f}  rank {100 * m['test/rank_score']:5.1f}")

    # routing throughput with torch's thread count and with one thread (small GEMMs often prefer one)
    default_threads = torch.get_num_threads()
    thread_counts = sorted({1, default_threads})
    print("\nrouting throughput: router.route on precomputed features, samples/s "
          f"(torch threads {' / '.join(map(str, thread_counts))})")
    print(f"{'router':<9}" + "".join(f"{f'batch {bs:,} ({t}t)':>19}" for bs in (16, 1024) for t in thread_counts))
    thr_all: dict[str, dict[str, float]] = {}
    for name, router in fitted.items():
        row = {}
        for bs in (16, 1024):
            for t in thread_counts:
                torch.set_num_threads(t)
                row[f"{bs}@{t}"] = throughput(router, test, bs, budget_s=1.5)["samples_s"]
        torch.set_num_threads(default_threads)
        thr_all[name] = row
        print(f"{name:<9}" + "".join(f"{row[f'{bs}@{t}']:>19,.0f}" for bs in (16, 1024) for t in thread_counts), flush=True)
    # the best thread setting per batch size is what a deployment would pick
    thr = {r: {bs: max(v[f"{bs}@{t}"] for t in thread_counts) for bs in (16, 1024)} for r, v in thr_all.items()}

    # what bounds the MLP: its FLOPs per sample against this machine's GEMM rate
    h = fitted["mlp"].hidden_sizes
    sizes = [dim, *h, args.models]
    mlp_flops = 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    gf = 0.0
    for t in thread_counts:  # the better of the thread settings, as for the throughput table
        torch.set_num_threads(t)
        gf = max(gf, gemm_gflops(dim))
    torch.set_num_threads(default_threads)
    print(f"\nMLP {sizes}: {mlp_flops / 1e6:.1f} MFLOP/sample; float32 GEMM here {gf:.0f} GFLOP/s "
          f"-> at most ~{gf * 1e9 / mlp_flops:,.0f} samples/s; 200,000/s would need {2e5 * mlp_flops / 1e12:.1f} TFLOP/s")
    lin_flops = 2 * dim * args.models
    print(f"Linear: {lin_flops / 1e3:.0f} kFLOP and {4 * dim / 1e3:.1f} kB of features per sample (memory-bound)")

    sweep = {r: sum(x["fit_s"] + x["route_dev_test_s"] for x in runs if x["router"] == r) for r in ONCE + SWEPT}
    print("\ngrid wall time by router: " + ", ".join(f"{r} {v:.0f} s" for r, v in sweep.items()))
    ok_grid = grid_s < args.grid_target
    ok_thr = {r: thr[r][1024] > args.throughput_target for r in SWEPT}
    print(f"{'PASS' if ok_grid else 'FAIL'}: whole grid ({len(jobs)} fits + routing) {grid_s / 60:.1f} min "
          f"(target < {args.grid_target / 60:.0f} min)")
    for r in SWEPT:
        print(f"{'PASS' if ok_thr[r] else 'FAIL'}: {r} routing at batch 1,024: {thr[r][1024]:,.0f} samples/s "
              f"(target > {args.throughput_target:,.0f})")
    if args.json:
        args.json.write_text(json.dumps({"samples": n, "dim": dim, "models": args.models, "grid_s": grid_s,
                                         "runs": runs, "throughput": thr_all, "mlp_flops": mlp_flops,
                                         "gemm_gflops": gf}, indent=2))
    return 0 if (ok_grid and all(ok_thr.values())) or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
