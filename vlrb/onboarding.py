"""Leave one model out (`ood=lomo ood.model=<m>`): the router is trained without model m; then m arrives with n
labelled items (drawn from the train split only) and joins the trained router by `vlrb.routers.onboard.add_model`,
never a refit. Scored on the whole test split with every model, beside the two ends:

    ignore   the router trained without m routes among the others (m is never chosen)
    n = ...  m joined from n labelled items (each n drawn `draws` times; the mean is reported)
    retrain  the router trained on everything, m included (the upper bound)

Cost bounds stay the benchmark's, so every number compares with the in-distribution leaderboard.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vlrb.data.benchmark import Benchmark
from vlrb.errors import ConfigError
from vlrb.routers.onboard import Onboarded, add_model, can_onboard
from vlrb.routing.metrics import route_metrics, take_rows


def drop_model(data, model: str):
    """The run's data (vlrb.features.routing_data.RoutingData) without `model`'s column: the same rows, features and
    cost bounds; only the model pool shrinks."""
    bench = data.bench
    if model not in bench.models:
        raise ConfigError(f"ood.model={model!r}: not a model of {bench.root or 'the benchmark'}; its models: "
                          f"{', '.join(bench.models)}")
    if len(bench.models) < 3:
        raise ConfigError("ood=lomo needs at least 3 models (2 stay when one is left out)")
    keep = [j for j, m in enumerate(bench.models) if m != model]
    models = [bench.models[j] for j in keep]
    view = Benchmark(bench.Y[:, keep], bench.C[:, keep], models, bench.meta, scores=bench.scores[:, keep],
                     cost_bounds=bench.cost_bounds, samples=bench._samples, root=bench.root,
                     answers=None if bench._answers is None else bench._answers[:, keep])

    def cut(sp):
        return dataclasses.replace(sp, Y=sp.Y[:, keep], C=sp.C[:, keep], scores=sp.scores[:, keep], models=models,
                                   answers=None if sp.answers is None else sp.answers[:, keep], source=view)

    return dataclasses.replace(data, bench=view, splits={s: cut(sp) for s, sp in data.splits.items()})


def prices(bench: Benchmark) -> dict[str, float] | None:
    """Each model's $ per 1M output tokens from the build's manifest (the newcomer's cost with no labelled item)."""
    f = Path(bench.root) / "manifest.json" if bench.root is not None else None
    if f is None or not f.exists():
        return None
    p = json.loads(f.read_text()).get("prices") or {}
    return {m: float(v[1]) for m, v in p.items()} or None


def onboard(router, data, model: str, n: int, seed: int) -> Onboarded:
    """`router` (trained without `model`) with `model` added from n train items drawn with `seed`."""
    train = data["train"]
    if n > len(train):
        raise ConfigError(f"ood.labelled: {n} labelled items asked, the train split has {len(train)}")
    rows = np.sort(np.random.RandomState(seed).choice(len(train), size=n, replace=False))
    j = data.bench.models.index(model)
    items = take_rows(train, rows)
    price = prices(data.bench) or {}
    return add_model(router, model, items, correct=train.Y[rows, j], cost=train.C[rows, j], price=price.get(model),
                     known_prices=[price[m] for m in router.models] if all(m in price for m in router.models) else None,
                     models=data.bench.models)


def choices_in(full_models: Sequence[str], router, split) -> np.ndarray:
    """The router's choices on `split` as indices into `full_models` (a router of fewer models)."""
    ch = np.asarray(router.route(split))
    pos = np.asarray([list(full_models).index(m) for m in router.models])
    return pos[ch]


def lomo_table(fit: Callable, data, model: str, labelled: Sequence[int], *, draws: int = 3, seed: int = 0,
               beta: float = 0.1, retrain: bool = True, router=None, full=None) -> tuple[list[dict], Onboarded]:
    """Rows (variant, n, test accuracy/cost/rank score) of the leave-one-model-out protocol, and the router onboarded
    from the most labelled items (first draw). `fit(data) -> fitted router`; `router`: one trained without `model`
    already (else fitted here); `full`: one trained on every model already (the same for every held-out model)."""
    minus = drop_model(data, model)
    router = router if router is not None else fit(minus)
    if not can_onboard(router):
        raise ConfigError(f"ood=lomo: {router.label} cannot take a new model; onboarding needs a router that predicts "
                          "each model's probability of being right (router=vlrb_cal or router=per_dataset)")
    test, bounds = data["test"], data.bench.cost_bounds

    def row(variant, n, choice, draw=None):
        m = route_metrics(test, choice, bounds, prefix="", beta=beta, breakdown=False)
        share = float(np.mean(choice == data.bench.models.index(model)))
        return {"model": model, "variant": variant, "n": n, "draw": draw, "accuracy": m["accuracy"],
                "avg_cost": m["avg_cost"], "rank_score": m["rank_score"], "share_new": share}

    rows = [row("ignore", None, choices_in(data.bench.models, router, minus["test"]))]
    best = None
    for n in sorted(int(x) for x in labelled):
        for d in range(draws if n > 0 else 1):
            joined = onboard(router, data, model, n, seed + d)
            rows.append(row("onboard", n, np.asarray(joined.route(test)), d))
            if d == 0:
                best = joined
    if retrain:
        full = full if full is not None else fit(data)
        rows.append(row("retrain", None, choices_in(data.bench.models, full, test)))
    return rows, best


def summarise(rows: list[dict]) -> list[dict]:
    """One row per (model, variant, n): draws averaged."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault((r["model"], r["variant"], r["n"]), []).append(r)
    keys = ("accuracy", "avg_cost", "rank_score", "share_new")
    return [{"model": k[0], "variant": k[1], "n": k[2], "draws": len(v), **{x: float(np.mean([r[x] for r in v]))
                                                                            for x in keys}} for k, v in out.items()]


def recovered(summary: list[dict], n: int) -> dict[str, float]:
    """Per held-out model: (onboarded at n − ignore) / (retrain − ignore) in rank score (nan without retrain)."""
    out = {}
    for m in dict.fromkeys(r["model"] for r in summary):
        get = {(r["variant"], None if r["n"] is None or r["n"] != r["n"] else int(r["n"])): r["rank_score"]
               for r in summary if r["model"] == m}  # n: None, or NaN from a table
        gap = get.get(("retrain", None), np.nan) - get[("ignore", None)]
        out[m] = float((get.get(("onboard", n), np.nan) - get[("ignore", None)]) / gap) if gap else float("nan")
    return out
