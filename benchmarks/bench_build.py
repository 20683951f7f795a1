"""Build the full-scale demo (30,540 samples x 17 models, ~476 VLMEvalKit files) and report the wall time
and peak memory of each stage. Target on a 2-core machine: the whole build under 45 s and 4 GiB.

    python benchmarks/bench_build.py [--samples-per-dataset N]
"""
import argparse
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def peak_gib() -> tuple[float, float]:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return self_kb / 2**20, child_kb / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples-per-dataset", type=int, default=None, help="default: the paper's full scale")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from hydra import compose, initialize_config_dir

    name = "demo_full" if args.samples_per_dataset is None else f"demo_bench{args.samples_per_dataset}"
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("build", overrides=["data=demo_full", f"data.name={name}",
                                          f"data.generate.samples_per_dataset={args.samples_per_dataset or 'null'}",
                                          f"data.workers={args.workers}", "paths.root_dir=" + str(ROOT)], return_hydra_config=False)
    from omegaconf import OmegaConf

    from vlrb.jobs.build import generate_demo_if_missing
    from vlrb.data.build import build
    from vlrb.pricing import PriceTable

    raw = Path(cfg.data.raw_dir)
    t = time.perf_counter()
    generate_demo_if_missing(cfg.data)
    gen_s = time.perf_counter() - t
    files = sum(1 for p in raw.rglob("*") if p.is_file() and not p.is_symlink())
    size = sum(p.stat().st_size for p in raw.rglob("*") if p.is_file() and not p.is_symlink())
    print(f"work dir: {raw} ({files} files, {size / 2**20:.0f} MiB){'' if gen_s < 1 else f'; generated in {gen_s:.1f} s'}")

    t = time.perf_counter()
    data, pricing = (OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "pricing"))
    m = build(data, PriceTable.from_config(pricing), force=True, progress=False, log=print)
    wall = time.perf_counter() - t
    self_gib, child_gib = peak_gib()
    ts = m["timings_s"]
    print(f"\nbuilt {m['n_samples']} samples x {m['n_models']} models in {wall:.1f} s on {os.cpu_count()} cores")
    for k in ("discover", "read", "assemble", "write", "hash_inputs"):
        print(f"  {k:12s} {ts.get(k, 0):7.2f} s")
    print(f"peak RSS: main process {self_gib:.2f} GiB, largest reader process {child_gib:.2f} GiB")
    integ = m["integrity"]
    tot_out = sum(r["mean_output_tokens"] for r in integ["per_model"].values()) * m["n_samples"]
    print(f"output tokens counted: {tot_out / 1e6:.1f}M; oracle accuracy {integ['oracle_accuracy']:.3f}")
    print(f"target: < 45 s and < 4 GiB -> {'OK' if wall < 45 and max(self_gib, child_gib) < 4 else 'MISSED'}")


if __name__ == "__main__":
    main()
