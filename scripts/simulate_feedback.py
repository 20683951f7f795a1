"""A feedback log simulated from a built benchmark, for `train.py data=feedback` (vlrb/feedback/simulate.py).

    python scripts/simulate_feedback.py data=demo --out logs/feedback/demo_sim.sqlite --policy uniform
    python scripts/simulate_feedback.py data=demo --out logs/feedback/demo_eps.sqlite --policy epsilon \
        --epsilon 0.2 --router-dir logs/train/runs/<time>/router

The requests are the split's rows (train by default) in row order; the logging policy picks a model (uniform, or
ε-greedy over a trained router), the reward is its correctness and the feedback's cost its $ on that row, each with
the exact propensity. Features: the router's recipe (epsilon), else the encoder's (Hydra overrides as for
train.py: data=..., encoder=...), whose recipe is saved beside the log (<out>.recipe/, named in the log's meta).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vlrb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of train.py (data=..., encoder=...)")
    ap.add_argument("--out", required=True, help="the SQLite log to write (a new file)")
    ap.add_argument("--policy", choices=("uniform", "epsilon"), default="uniform")
    ap.add_argument("--epsilon", type=float, default=0.1, help="exploration share of --policy epsilon")
    ap.add_argument("--router-dir", help="the logging router's folder (--policy epsilon)")
    ap.add_argument("--recipe-dir", help="where the features' recipe goes (uniform; default <out>.recipe/)")
    ap.add_argument("--split", default="train", choices=("train", "dev", "test"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_intermixed_args()

    from vlrb.errors import VlrbError
    from vlrb.jobs.entry import compose, project_root, register_resolvers
    from vlrb.jobs.feedback import simulate

    register_resolvers()
    cfg = compose("train", ["logger=none", *a.overrides], root=project_root())
    try:
        summary = simulate(cfg, a.out, policy=a.policy, epsilon=a.epsilon, router_dir=a.router_dir,
                           recipe_dir=a.recipe_dir, split=a.split, seed=a.seed)
    except VlrbError as e:
        sys.exit(f"error: {e}")
    share = sorted(summary.pop("share").items(), key=lambda kv: -kv[1])[:3]
    print(json.dumps(summary), "most chosen:", ", ".join(f"{m} {s:.1%}" for m, s in share))
    print(f"wrote {a.out}; train on it: python train.py data=feedback data.path={a.out} router=offpolicy")


if __name__ == "__main__":
    main()
