"""The README "Results" tables from finished train runs.

    python scripts/results_table.py logs/results/multiruns/<time>            # one benchmark: a row per router
    python scripts/results_table.py --ood logs/lodo/multiruns/<time>         # leave-one-out: a row per held-out part

The benchmark is the runs' `data.root` (or --bench ROOT). Markdown goes to stdout; --csv FILE keeps the numbers.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vlrb

from vlrb.data.benchmark import Benchmark  # noqa: E402
from vlrb.eval.results import (cascades_markdown, ood_markdown, ood_table, results_markdown,  # noqa: E402
                               results_table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", help="a train run or multirun folder")
    ap.add_argument("--ood", action="store_true", help="the runs are leave-one-out runs (ood=lodo|logo)")
    ap.add_argument("--bench", help="the benchmark root (default: the runs' data.root)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--csv", help="also write the table's numbers to this CSV file")
    a = ap.parse_args()
    if a.ood:
        df = ood_table(a.runs)
        print(ood_markdown(df))
    else:
        df = results_table(a.runs, Benchmark.load(a.bench) if a.bench else None, n_bootstrap=a.bootstrap)
        print(f"test samples: {df.attrs['n_test']}; best seed router (by CV score): {df.attrs['best_seed']}\n")
        print(results_markdown(df))
        cascades = cascades_markdown(df)
        if cascades:
            print(f"cascades (best one-shot router by CV score: {df.attrs['best_one_shot']}):\n")
            print(cascades)
    if a.csv:
        df.to_csv(a.csv, index=False)


if __name__ == "__main__":
    main()
