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
from typing import Callable, Sequence

import numpy as np

from vlrb.data.benchmark import Benchmark
from vlrb.errors import ConfigError
from vlrb.pricing import manifest_prices
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
    return dataclasses.replace(data, bench=view, splits={s: dataclasses.replace(columns(sp, keep, models), source=view)
                                                         for s, sp in data.splits.items()})


def columns(split, order: Sequence[int], models: Sequence[str]):
    """`split` with only the model columns `order` (in that order), named `models`."""
    return dataclasses.replace(split, Y=split.Y[:, order], C=split.C[:, order], scores=split.scores[:, order],
                               answers=None if split.answers is None else split.answers[:, order], models=list(models))


def output_prices(prices: dict | None) -> dict[str, float]:
    """model -> $ per 1M output tokens, from {model: {"input_per_1m", "output_per_1m"}} (the newcomer's cost with no
    labelled item is set by its price against the known models')."""
    return {m: float(p["output_per_1m"]) for m, p in (prices or {}).items()}


def join(router, split, model: str, j: int, n: int, seed: int, prices: dict | None = None,
         models: Sequence[str] | None = None) -> Onboarded:
    """`router` with `model` (column j of `split`) added from n of the split's items drawn with `seed`."""
    if n > len(split):
        raise ConfigError(f"{n} labelled items of {model} asked, the {split.name} split has {len(split)}")
    rows = np.sort(np.random.RandomState(seed).choice(len(split), size=n, replace=False))
    out = output_prices(prices)
    known = [out[m] for m in router.models] if all(m in out for m in router.models) else None
    return add_model(router, model, take_rows(split, rows), correct=split.Y[rows, j], cost=split.C[rows, j],
                     price=out.get(model), known_prices=known, models=models)


def onboard(router, data, model: str, n: int, seed: int) -> Onboarded:
    """`router` (trained without `model`) with `model` added from n train items drawn with `seed`."""
    return join(router, data["train"], model, data.bench.models.index(model), n, seed,
                prices=manifest_prices(data.bench.root), models=data.bench.models)


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
