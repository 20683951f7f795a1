"""Evaluation benchmark: all five baselines + metrics + 1,000 bootstrap resamples at the paper's scale.

    python benchmarks/bench_eval.py [--samples 30540] [--models 17] [--bootstrap 1000] [--target 3.0]

A synthetic benchmark of 30,540 × 17 (realistic Y and C, 6,108 test samples) is made in memory; the
timed part is what `evaluate.py` does per benchmark: fit every baseline, route the test split, compute
route_metrics (with the per-dataset/group breakdown), bootstrap CIs on one shared index matrix, and the
paired comparison against the strongest model. Target: under 3 s on a 2-core CPU. Exit code 1 if slower.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlrb.jobs.common import make_router  # noqa: E402
from vlrb.routing.metrics import (bootstrap_ci, bootstrap_indices, bootstrap_weights, paired_bootstrap,  # noqa: E402
                                  route_metrics)
from vlrb.routing.synthetic import FULL_SCALE, synthetic_benchmark  # noqa: E402

BASELINES = ["oracle", "strongest", "cheapest", "per_dataset", "random"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=FULL_SCALE)
    ap.add_argument("--models", type=int, default=17)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--target", type=float, default=3.0, help="seconds; exit 1 when the timed part is slower")
    args = ap.parse_args()

    t0 = time.perf_counter()
    bench = synthetic_benchmark(args.samples, n_models=args.models, seed=0)
    train, dev, test = bench.split("train"), bench.split("dev"), bench.split("test")
    setup = time.perf_counter() - t0
    print(f"synthetic benchmark {bench.n_samples:,} × {bench.n_models} (test {len(test):,}) made in {setup:.2f} s "
          "(not timed)")

    times: dict[str, float] = defaultdict(float)

    @contextmanager
    def timed(stage: str):
        t = time.perf_counter()
        yield
        times[stage] += time.perf_counter() - t

    start = time.perf_counter()
    with timed("bootstrap resamples (n×N indices → counts)"):
        idx = bootstrap_weights(bootstrap_indices(len(test), args.bootstrap, seed=42))
    choices, results = {}, {}
    for name in BASELINES:
        with timed("fit + route"):
            router = make_router(name).fit(train, dev)
            choices[name] = router.route(test)
        with timed("route_metrics (+ per-dataset/group)"):
            results[name] = route_metrics(test, choices[name], bench.cost_bounds)
        with timed(f"bootstrap CIs ({args.bootstrap} resamples)"):
            results[name].update(bootstrap_ci(test, choices[name], bench.cost_bounds, indices=idx))
    with timed("paired bootstrap vs strongest"):
        for name in BASELINES:
            if name != "strongest":
                paired_bootstrap(test, choices[name], choices["strongest"], bench.cost_bounds, indices=idx)
    total = time.perf_counter() - start

    print(f"\n{'stage':<42}{'seconds':>9}")
    for stage, sec in times.items():
        print(f"{stage:<42}{sec:>9.3f}")
    print(f"{'total':<42}{total:>9.3f}   (target < {args.target:.1f} s)")
    print(f"\n{'router':<14}{'acc %':>8}{'$/10K':>9}{'rank':>8}   rank 95% CI")
    for name in BASELINES:
        r = results[name]
        print(f"{name:<14}{100 * r['test/accuracy']:>8.2f}{1e4 * r['test/avg_cost']:>9.2f}{100 * r['test/rank_score']:>8.2f}"
              f"   [{100 * r['rank_score_lo']:.2f}, {100 * r['rank_score_hi']:.2f}]")
    ok = total < args.target
    print(f"\n{'PASS' if ok else 'FAIL'}: {total:.2f} s for all baselines + metrics + {args.bootstrap} bootstrap resamples")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
