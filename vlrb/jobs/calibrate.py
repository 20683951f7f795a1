"""`calibrate.py`: the budget knob μ for target average costs, chosen on dev and reported on test."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from vlrb.errors import ConfigError
from vlrb.io import claim_run_dir, write_json, write_text
from vlrb.jobs.common import load_router_dir, output_dir, run_job

log = logging.getLogger("vlrb.calibrate")
TARGET_UNITS = ("strongest", "usd")


def main(cfg: DictConfig):
    return run_job(calibrate, cfg)


def _targets(cfg: DictConfig) -> list[float]:
    unit = cfg.target_unit
    if unit not in TARGET_UNITS:
        raise ConfigError(f"target_unit must be one of {TARGET_UNITS}, got {unit!r}")
    targets = list(cfg.targets or [])
    if not targets or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < math.inf
                              for t in targets):
        raise ConfigError(f"targets must be a non-empty list of positive finite numbers, got {targets}")
    return [float(t) for t in targets]


def _calibrate_on(cfg: DictConfig) -> list[str]:
    names = list(cfg.calibrate_on) if OmegaConf.is_list(cfg.calibrate_on) else [cfg.calibrate_on]
    if not names or any(n not in ("train", "dev") for n in names):
        raise ConfigError(f"calibrate_on must list splits among train and dev (never test), got {names}")
    return names


def calibrate(cfg: DictConfig):
    from vlrb.jobs.build import load_benchmark
    from vlrb.serve.calibrate import Routed, budget_curve, calibrate as solve, plot_budget_curve
    from vlrb.serve.decide import CostModel

    targets = _targets(cfg)
    _calibrate_on(cfg)
    tr = load_router_dir(cfg)
    out = output_dir()
    costs = CostModel.for_router(tr.models, tr.prices, tr.mean_cost, mode=cfg.budget.cost_estimate,
                                 output_tokens=int(cfg.budget.output_tokens))
    _follow_router_benchmark(cfg, tr)
    claim_run_dir(out)
    bench = load_benchmark(cfg, encoder=tr.recipe.encoder if tr.recipe is not None else None)
    from vlrb.jobs.build import skipped_lines

    for line in skipped_lines(bench.root):  # small splits above all: calibrating μ on 2 dev requests is noise
        log.info(line)
    if list(bench.models) != tr.models:
        raise ConfigError(f"data={cfg.data.root}: its models {bench.models[:3]}... are not the router's "
                          f"{tr.models[:3]}...; calibrate on the benchmark the router was trained on")

    def routed(name: str) -> Routed:
        split = bench.split(name)
        return Routed(np.asarray(tr.predict_scores(split), np.float64), costs.estimate(split.input_tokens),
                      split.C.astype(np.float64), split.Y)

    on = "+".join(_calibrate_on(cfg))
    calib = Routed.concat([routed(name) for name in _calibrate_on(cfg)])
    test = routed("test")
    train = bench.split("train")
    strongest = int(np.argmax(train.Y.mean(0)))  # as the Strongest baseline: first most accurate on train
    ref_cost = float(train.C[:, strongest].mean())
    if cfg.target_unit == "strongest":
        labels = [f"{t:g} x {tr.models[strongest]}" for t in targets]
        targets = [t * ref_cost for t in targets]
    else:
        labels = [f"${t:g}" for t in targets]
    table = solve(calib, test, targets, costs.scale, labels=labels)
    log.info("mu chosen on %s (%d requests), reported on test (%d)", on, len(calib.C), len(test.C))
    curve = budget_curve(calib, test, costs.scale)
    plot = plot_budget_curve(curve, table, out / "budget_curve.png", calib_label=on,
                             title=f"Budget curve: {tr.name} ({costs.mode} cost estimate)")
    table.to_csv(out / "calibration.csv", index=False)
    curve.to_csv(out / "budget_curve.csv", index=False)
    ref = {"strongest_model": tr.models[strongest], "strongest_train_cost": ref_cost,
           "strongest_test_cost": float(test.C[:, strongest].mean()),
           "strongest_test_accuracy": float(test.Y[:, strongest].mean()),
           "router_mu0_test_cost": test.at(0.0, costs.scale)[0], "router_mu0_test_accuracy": test.at(0.0, costs.scale)[1]}
    write_json(out / "calibration.json", {"router_dir": str(cfg.router_dir), "cost_estimate": costs.mode,
                                          "calibrate_on": _calibrate_on(cfg),
                                          "scale": costs.scale, "reference": ref, "targets": table.to_dict("records")})
    md = _markdown(table, ref, on)
    write_text(out / "calibration.md", md)
    log.info("%s", md)
    log.info("budget curve: %s", plot)
    for r in table.itertuples():
        if not r.reachable:
            log.warning("target %s (%.4g $/10K) is out of reach: on %s, this router's requests cost from %.4g (the "
                        "cheapest allowed model each, mu -> +inf) to %.4g $/10K (the dearest, mu -> -inf); no mu "
                        "spends that", r.target, r.target_cost * 1e4, on, r.reachable_lo * 1e4, r.reachable_hi * 1e4)
            continue
        log.info("next: python serve.py router_dir=%s budget.mu=%.6g   # serve at the %s target", cfg.router_dir,
                 r.mu, r.target)
    return table


def _markdown(table, ref: dict, on: str) -> str:
    lines = [f"Strongest model {ref['strongest_model']}: test cost {ref['strongest_test_cost'] * 1e4:.3f} $/10K, "
             f"accuracy {ref['strongest_test_accuracy']:.2%}; router at mu=0: {ref['router_mu0_test_cost'] * 1e4:.3f} "
             f"$/10K, {ref['router_mu0_test_accuracy']:.2%}", "",
             f"| target | target $/10K | mu | {on} $/10K | test $/10K [95% CI] | test vs target | test accuracy |",
             "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        if not r.reachable:
            lines.append(f"| {r.target} | {r.target_cost * 1e4:.3f} | out of reach: {r.reachable_lo * 1e4:.3f} to "
                         f"{r.reachable_hi * 1e4:.3f} $/10K | – | – | – | – |")
            continue
        lines.append(f"| {r.target} | {r.target_cost * 1e4:.3f} | {r.mu:.4g} | {r.calib_cost * 1e4:.3f} | "
                     f"{r.test_cost * 1e4:.3f} [{r.test_cost_lo * 1e4:.3f}, {r.test_cost_hi * 1e4:.3f}] | "
                     f"{r.test_cost_error:+.1%} | {r.test_accuracy:.2%} |")
    return "\n".join(lines) + "\n\nThe CI is the test cost's spread from sampling the test requests alone, at that mu.\n"


def _follow_router_benchmark(cfg: DictConfig, tr) -> None:
    """Without `data=` on the command line, calibrate on the benchmark the router was trained on (the router folder
    records it)."""
    from hydra.core.hydra_config import HydraConfig

    given = [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
    root = tr.benchmark_root
    if any(k == "data" or k.startswith("data.") for k in given) or not root:
        return
    if not (Path(root) / "data" / "matrices" / "Y.npz").exists():
        raise ConfigError(f"router_dir={cfg.router_dir} was trained on the benchmark at {root}, which is not there "
                          f"any more; rebuild it, or name one with data=<name> data.root=<folder>")
    if Path(root).resolve() != Path(cfg.data.root).resolve():
        log.info("calibrating on the benchmark the router was trained on: %s", root)
    with open_dict(cfg):
        cfg.data.root = root
        cfg.data.generate = None
