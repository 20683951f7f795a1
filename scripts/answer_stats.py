"""How the models' final answers of a built benchmark behave (docs/method.md#answers): the share of well-formed
answers per model, how often two models' answers agree, and how often an agreed answer is right.

    python scripts/answer_stats.py data/demo [--dataset MathVision_MINI] [--per-model]
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlrb.data.answers import answer_keys  # noqa: E402
from vlrb.data.benchmark import Benchmark  # noqa: E402


def table_keys(bm: Benchmark, rows: np.ndarray) -> np.ndarray:
    """(n, K) canonical answers of the rows ("" malformed)."""
    fmt = bm.meta["answer_format"].to_numpy()[rows] if "answer_format" in bm.meta else np.full(rows.sum(), "text")
    nopt = bm.meta["n_options"].to_numpy()[rows] if "n_options" in bm.meta else np.zeros(rows.sum(), int)
    return answer_keys(bm.answers[rows], fmt, nopt)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="a built benchmark (data.root)")
    ap.add_argument("--dataset", action="append", help="only these datasets (repeatable)")
    ap.add_argument("--per-model", action="store_true", help="also print each model's share of well-formed answers")
    args = ap.parse_args(argv)
    bm = Benchmark.load(args.root)
    if bm.answers is None:
        sys.exit(f"{args.root}: no data/matrices/answers.parquet (built before answers were kept; rebuild it)")
    rows = bm.meta["dataset"].isin(args.dataset).to_numpy() if args.dataset else np.ones(bm.n_samples, bool)
    keys, Y = table_keys(bm, rows), bm.Y[rows].astype(bool)
    valid = (keys != "").mean(0)
    pairs = []
    for a, b in itertools.combinations(range(len(bm.models)), 2):
        agree = (keys[:, a] == keys[:, b]) & (keys[:, a] != "")
        pairs.append((agree.mean(), int(agree.sum()), int((agree & Y[:, a]).sum()), bm.models[a], bm.models[b]))
    share, n_agree, n_right, *_ = zip(*pairs)
    top = max(pairs)
    print(f"{args.root}: {int(rows.sum())} items x {len(bm.models)} models"
          + (f" ({', '.join(args.dataset)})" if args.dataset else ""))
    print(f"well-formed answers per model: median {np.median(valid):.1%}, min {valid.min():.1%} "
          f"({bm.models[int(valid.argmin())]}), max {valid.max():.1%} ({bm.models[int(valid.argmax())]})")
    print(f"two models agree on: median {np.median(share):.1%} of items over {len(pairs)} pairs; "
          f"most: {top[0]:.1%} ({top[3]} + {top[4]})")
    print(f"agreed answers that are right: {sum(n_right) / max(sum(n_agree), 1):.1%} over all pairs; "
          f"{top[2] / max(top[1], 1):.1%} for the most-agreeing pair")
    fmt = bm.meta["answer_format"].to_numpy()[rows] if "answer_format" in bm.meta else np.full(len(Y), "text")
    print("per answer format: items, well-formed (median over models), two wrong well-formed answers agree "
          "(median over pairs; most)")
    for f in sorted(set(fmt)):
        sel = fmt == f
        ww = []
        for a, b in itertools.combinations(range(len(bm.models)), 2):
            both = sel & ~Y[:, a] & ~Y[:, b] & (keys[:, a] != "") & (keys[:, b] != "")
            if both.sum() >= 10:  # pairs with too few such items say nothing
                ww.append(((keys[both, a] == keys[both, b]).mean(), bm.models[a], bm.models[b]))
        agree = (f"{np.median([w[0] for w in ww]):6.1%}; {max(ww)[0]:.1%} ({max(ww)[1]} + {max(ww)[2]})" if ww
                 else "     - (too few wrong answers)")
        print(f"  {f:7s} {int(sel.sum()):6d}  {np.median((keys[sel] != '').mean(0)):6.1%}  {agree}")
    if args.per_model:
        for m, v, acc in zip(bm.models, valid, Y.mean(0)):
            print(f"  {m:40s} well-formed {v:6.1%}  accuracy {acc:6.1%}")


if __name__ == "__main__":
    main()
