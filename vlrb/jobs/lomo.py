"""`train.py ood=lomo ood.model=<m>`: the router is fitted without model m, m joins it from n labelled train items
(vlrb.onboarding), and the run's router is the one onboarded from the most items. The table goes to lomo.csv and
metrics.json (`lomo/<variant>/<n>/<metric>`)."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from vlrb.errors import ConfigError

log = logging.getLogger("vlrb.train")


def is_lomo(cfg: DictConfig) -> bool:
    return bool(cfg.get("ood")) and cfg.ood.get("protocol") == "lomo"


def check(cfg: DictConfig) -> None:
    """What ood=lomo needs, before anything is loaded."""
    if OmegaConf.is_missing(cfg.ood, "model") or not cfg.ood.get("model"):
        raise ConfigError("ood=lomo: name the model to leave out: ood.model=<a model id of the benchmark>")
    labelled = cfg.ood.get("labelled") or []
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in labelled) or not labelled:
        raise ConfigError(f"ood.labelled must be a list of whole numbers >= 0, got {labelled!r}")
    if not (isinstance(cfg.ood.get("draws"), int) and cfg.ood.draws >= 1):
        raise ConfigError(f"ood.draws must be a whole number >= 1, got {cfg.ood.get('draws')!r}")


def fit_lomo(cfg: DictConfig, router, data, ctx, out: Path, fit) -> tuple:
    """(the onboarded router, its config, selection metrics, the lomo metrics); `fit` is train.py's fit."""
    from vlrb.jobs.common import build_router
    from vlrb.onboarding import drop_model, lomo_table, summarise

    from vlrb.routers.onboard import can_onboard

    model = str(cfg.ood.model)
    if not can_onboard(router):  # before any fit
        raise ConfigError(f"ood=lomo: {router.label} cannot take a new model; onboarding needs a router that predicts "
                          "each model's probability of being right (router=vlrb_cal or router=per_dataset)")
    minus = drop_model(data, model)
    log.info("ood=lomo: training %s without %s (%d models), then %s joins from %s labelled train items",
             router.label, model, len(minus.bench.models), model, list(cfg.ood.labelled))
    router, cfg_fit, sel = fit(cfg, router, minus, ctx, out)

    def refit(d):  # the upper bound: the same config on every model
        return fit(cfg, build_router(cfg.router), d, ctx, out)[0]

    rows, joined = lomo_table(refit, data, model, list(cfg.ood.labelled), draws=int(cfg.ood.draws),
                              seed=int(cfg.ood.seed), beta=float(cfg.scoring.beta), retrain=bool(cfg.ood.retrain),
                              router=router)
    table = pd.DataFrame(summarise(rows))
    table.to_csv(out / "lomo.csv", index=False)
    metrics = {"lomo/model": model, "lomo/n_router": int(max(cfg.ood.labelled))}
    for r in table.to_dict("records"):
        key = r["variant"] if r["variant"] != "onboard" else f"onboard/{int(r['n'])}"
        metrics.update({f"lomo/{key}/{k}": r[k] for k in ("accuracy", "avg_cost", "rank_score", "share_new")})
    for r in table.to_dict("records"):
        log.info("lomo %-8s n=%-4s rank score %.2f  accuracy %.2f%%  %s chosen for %.1f%% of test",
                 r["variant"], "" if pd.isna(r["n"]) else int(r["n"]), r["rank_score"] * 100, r["accuracy"] * 100,
                 model, r["share_new"] * 100)
    return joined, cfg_fit, sel, metrics


def mean_cost(data, router) -> dict:
    """Per model $ per request for the artifact: the train split's mean, the newcomer's from its labelled items only
    (its estimate otherwise: what the router knows of it)."""
    train = data["train"]
    out = dict(zip(data.bench.models, map(float, train.C.mean(0))))
    if getattr(router, "new_", None):
        out.update(router.newcomer_costs(train, known_mean=[out[m] for m in router.base.models]))
    return out
