"""A feedback log simulated from a built benchmark: what serving a logging policy on its rows would have recorded.

    simulate_log("logs/feedback/demo_sim.sqlite", bench, X_train, "train", policy="uniform", router_dir=recipe_folder)

The requests are one split's rows (train by default) in row order, one second apart. The logging policy picks a
model: `uniform` (each model with probability 1/K) or `epsilon` (a trained router's choice with probability 1 − ε,
else a model drawn uniformly: propensity 1 − ε + ε/K for the router's choice, ε/K for any other). The reward
is that model's correctness Y[i, a] and the feedback's cost C[i, a]; the logged per-model cost estimates are each
model's mean train cost (what a server estimates with `budget.cost_estimate=mean_cost`). Every decision carries its
exact propensity and the features the logging side read, so `train.py data=feedback` can learn from the log alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlrb.feedback.store import Decision, FeedbackError, FeedbackStore

POLICY_NAMES = ("uniform", "epsilon")


def logging_probabilities(policy: str, K: int, greedy: np.ndarray | None = None, epsilon: float = 0.1) -> np.ndarray:
    """(n, K) the logging policy's probabilities: uniform, or ε-greedy around the router's choices `greedy`."""
    if policy == "uniform":
        n = 1 if greedy is None else len(greedy)
        return np.full((n, K), 1.0 / K)
    if policy != "epsilon":
        raise FeedbackError(f"policy must be one of {POLICY_NAMES}, got {policy!r}")
    if greedy is None:
        raise FeedbackError("policy=epsilon needs a trained router to be greedy about (--router-dir)")
    if not 0.0 < epsilon <= 1.0:
        raise FeedbackError(f"epsilon must be in (0, 1], got {epsilon}")
    probs = np.full((len(greedy), K), epsilon / K)
    probs[np.arange(len(greedy)), greedy] += 1.0 - epsilon
    return probs


def simulate_log(path: str | Path, bench, X: np.ndarray, split: str = "train", *, policy: str = "uniform",
                 epsilon: float = 0.1, greedy: np.ndarray | None = None, scores: np.ndarray | None = None,
                 router_name: str = "uniform", router_dir: str | Path | None = None, seed: int = 0,
                 start_time: float = 1.8e9, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a simulated log of `bench`'s `split` rows to a new SQLite file at `path`; X: the rows' features (as
    the logging router's recipe makes them), `greedy`/`scores`: the logging router's choices and scores (epsilon).
    Returns a summary (requests, mean reward and cost, the share of each model)."""
    path = Path(path)
    if path.exists():
        raise FeedbackError(f"{path} exists: a simulated log is written to a new file (remove it, or choose --out)")
    sp = bench.split(split)
    n, K = sp.Y.shape
    if len(X) != n:
        raise FeedbackError(f"{len(X)} feature rows for the {n} rows of split {split!r}")
    probs = logging_probabilities(policy, K, greedy, epsilon)
    probs = np.broadcast_to(probs, (n, K))
    rng = np.random.default_rng(seed)
    chosen = (rng.random(n)[:, None] > np.cumsum(probs, 1)).sum(1).clip(0, K - 1)
    train = bench.split("train")
    est = train.C.astype(np.float64).mean(0)  # the server's mean_cost estimate of each model
    models = list(bench.models)
    zero = np.zeros(K)
    decisions = [Decision(id=f"sim/{sp.sample_ids[i]}", router=router_name, models=models, pool=models,
                          chosen=models[chosen[i]], answered_by=models[chosen[i]],
                          propensity=float(probs[i, chosen[i]]),
                          policy="epsilon_greedy",  # uniform = ε-greedy with ε = 1
                          scores=(zero if scores is None else scores[i]).tolist(), costs=est.tolist(), mu=0.0,
                          dataset=str(sp.datasets[i]), features=np.asarray(X[i], np.float32),
                          time=start_time + i) for i in range(n)]
    store = FeedbackStore(path)
    try:
        store.log_decisions(decisions)
        for i, d in enumerate(decisions):
            store.add_feedback(d.id, reward=float(sp.Y[i, chosen[i]]), cost=float(sp.C[i, chosen[i]]))
        store.set_meta(router_dir=None if router_dir is None else str(Path(router_dir).resolve()),
                       simulated={"benchmark": None if bench.root is None else str(Path(bench.root).resolve()),
                                  "split": split, "policy": policy, "epsilon": epsilon if policy == "epsilon" else 1.0,
                                  "seed": seed, **(meta or {})})
    finally:
        store.close()
    rows = np.arange(n)
    return {"requests": n, "mean_reward": float(sp.Y[rows, chosen].mean()),
            "mean_cost": float(sp.C[rows, chosen].mean()),
            "share": {m: float(s) for m, s in zip(models, np.bincount(chosen, minlength=K) / n)}}
