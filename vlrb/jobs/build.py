"""`build_data.py`: build a benchmark (stage=data) and extract its features (stage=features); and the one
public call through which train and evaluate get a benchmark (`load_benchmark`)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from vlrb.process import is_rank_zero
from vlrb.errors import ConfigError
from vlrb.jobs.common import run_job, to_plain

log = logging.getLogger("vlrb.build")


def _say(msg: str) -> None:
    log.info(msg)


def main(cfg: DictConfig) -> None:
    """Hydra task of build_data.py."""
    run_job(run_build, cfg)


def generate_demo_if_missing(data_cfg, progress: bool = True) -> None:
    """data=demo: generate the VLMEvalKit-style work dir once (it is an input, like real logs)."""
    gen = data_cfg.get("generate")
    if gen is None:
        return
    raw = Path(data_cfg.raw_dir)
    out = raw.parent
    from vlrb.demo import generate_demo, is_current_demo, is_demo_dir

    if is_current_demo(out) and raw.is_dir() and Path(data_cfg.tsv_dir).is_dir():
        return
    if is_demo_dir(out):
        _say(f"the demo work dir in {out} was written by an older generator: generating it again")

    n = gen.get("samples_per_dataset")
    _say(f"generating the demo work dir in {out} ({'full scale' if n is None else f'{n} samples per dataset'}) ...")
    generate_demo(out, samples_per_dataset=n, full=n is None, seed=int(gen.get("seed", 0)),
                  datasets=list(data_cfg.datasets) if data_cfg.get("datasets") else None,
                  workers=int(data_cfg.get("workers") or 2), progress=progress,
                  image_size=int(gen.get("image_size", 96)), if_missing=True)


def may_create_parents(cfg) -> bool:
    """A data.root under the project's data folder may create missing parents; anywhere else the parent
    must exist, so a typo does not silently create a deep new path."""
    root, home = Path(cfg.data.root).resolve(), Path(cfg.paths.data_dir).resolve()
    return root.is_relative_to(home)


def print_summary(root) -> None:
    from vlrb.data.benchmark import Benchmark
    from vlrb.routing.metrics import reference_model

    bm = Benchmark.load(root)
    s = bm.summary()
    _say(f"\nbenchmark: {Path(root).resolve()}")
    _say(f"samples {s['n_samples']}  models {s['n_models']}  splits {s['splits']}")
    _say(f"{'model':32s} {'accuracy':>9s} {'$/10K':>9s}")
    for m, r in s["per_model"].items():
        _say(f"{m:32s} {r['accuracy'] * 100:8.2f}% {r['avg_cost'] * 1e4:9.3f}")
    ref = bm.models[reference_model(bm)]
    r = s["per_model"][ref]
    _say(f"best single model: {ref} ({r['accuracy'] * 100:.2f}%, {r['avg_cost'] * 1e4:.3f} $/10K; the best rank score "
         f"on train+dev: the reference every router is compared with)")
    _say(f"oracle accuracy:   {s['oracle_accuracy'] * 100:.2f}%")
    for line in skipped_lines(root):
        _say(line)
    _say(f"report: {Path(root) / 'reports' / 'data_integrity' / 'validation_report.txt'}")


def skipped_lines(root) -> list[str]:
    """What the build dropped, could not find or could not score, from its integrity report: one console line
    per non-zero count, so nothing is only in the JSON."""
    import json

    try:
        res = json.loads((Path(root) / "reports" / "data_integrity" / "validation_results.json").read_text())
        rd = res["reader"]
    except (OSError, ValueError, KeyError, TypeError):
        return []

    def per(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in list(d.items())[:8]) + (", ..." if len(d) > 8 else "")

    out = []
    if rd.get("n_dropped"):
        ds = {d: v["samples"] for d, v in (rd.get("dropped_incomplete_samples") or {}).items()}
        out.append(f"dropped samples (some model has no record): {rd['n_dropped']} ({per(ds)})")
    images = rd.get("images") or {}
    if images.get("n_missing_image_files"):
        out.append(f"missing image files (those samples get no image features): {images['n_missing_image_files']}")
    undecodable = {d: len(r["undecodable"]) for d, r in images.items() if isinstance(r, dict) and r.get("undecodable")}
    if undecodable:
        out.append(f"TSV images that do not decode (samples kept without image): {sum(undecodable.values())} ({per(undecodable)})")
    if rd.get("failed_predictions"):
        f = rd["failed_predictions"]
        out.append(f"failed predictions (counted wrong): {sum(f.values())} ({per(f)})")
    if rd.get("undetermined_scores"):
        out.append(f"undetermined scores (blank or formula cells, counted wrong): {rd['undetermined_scores']} "
                   f"({per(rd.get('undetermined_per_model') or {})})")
    for col, near in (rd.get("unknown_columns") or {}).items():
        out.append(f"column {col!r} of the records is not read" + (f" (did you mean {near!r}?)" if near else
                                                                     " (README: Records tables lists the columns)"))
    if rd.get("models_in_pool_without_logs"):
        m = rd["models_in_pool_without_logs"]
        out.append(f"pool models with no records (left out): {len(m)} ({', '.join(m[:8])}{', ...' if len(m) > 8 else ''})")
    from vlrb.data.write import SMALL_SPLIT

    small = {sp: n for sp, n in (res.get("splits") or {}).items() if isinstance(n, int) and n < SMALL_SPLIT}
    if small:
        out.append("small splits (" + ", ".join(f"{sp} {n}" for sp, n in small.items()) + f"): under {SMALL_SPLIT} "
                   "samples a split's scores are mostly noise (one sample moves accuracy by 3+ points); "
                   "compare routers with selection=cv or on a larger benchmark")
    return [f"note: {line}" for line in out]


def run_build(cfg: DictConfig) -> None:
    from vlrb.data.benchmark import Benchmark
    from vlrb.features.extract import extract_features

    stage = cfg.get("stage", "data")
    if str(cfg.data.get("reader")) == "feedback":
        raise ConfigError("data=feedback is a traffic log, not a benchmark to build: learn from it with "
                          "python train.py data=feedback data.path=<log> router=offpolicy")
    if stage not in ("data", "features", "all"):
        raise ConfigError(f"stage must be data, features or all (got {stage!r})")
    progress = bool(cfg.get("progress", True))
    if stage in ("data", "all") and is_rank_zero():  # a multi-device extraction's other processes: built already
        manifest = build_benchmark(cfg, force=bool(cfg.get("force")), progress=progress)
        if not manifest.get("up_to_date"):
            _say(f"built in {manifest['timings_s']['total']:.1f} s ({manifest['timings_s']})")
        print_summary(cfg.data.root)
    if stage in ("features", "all"):
        bm = Benchmark.load(cfg.data.root)
        stats = extract_features(bm, to_plain(cfg.encoder), root=cfg.data.root, force=bool(cfg.get("force")),
                                 progress=progress)
        for mod, st in stats.items():
            if is_rank_zero():
                _log_features(mod, st)


def build_benchmark(cfg: DictConfig, *, force: bool = False, progress: bool = True) -> dict:
    """Generate the demo's raw files when missing (data=demo), then build data.root (a no-op when up to date)."""
    from vlrb.data.build import build
    from vlrb.pricing import PriceTable

    generate_demo_if_missing(cfg.data, progress=progress)
    pricing = to_plain(cfg.get("pricing"))
    own_costs = cfg.data.get("reader") in ("records", "results")  # their rows may carry a cost: prices optional
    prices = PriceTable.from_config(pricing) if not own_costs or pricing else None
    return build(to_plain(cfg.data), prices, families=correctness_rules(cfg.data), force=force, progress=progress,
                 log=_say, create_parents=may_create_parents(cfg))


def correctness_rules(data_cfg) -> dict:
    """`data.families`, the user's own correctness rules, as the library's records (vlrb.data.families.user_family):
    a `scorer` named by `_target_` (or a dotted path) becomes the function here, where config becomes code."""
    from vlrb.components import instantiate
    from vlrb.data.families import user_families

    rules = to_plain(data_cfg.get("families")) or {}
    for name, rule in rules.items() if isinstance(rules, dict) else ():
        scorer = rule.get("scorer") if isinstance(rule, dict) else None
        if isinstance(scorer, (str, dict)):
            spec = {"_target_": scorer} if isinstance(scorer, str) else scorer
            try:  # a function is taken as it is (_partial_), its other keys are bound as keyword arguments
                rule["scorer"] = instantiate({"_partial_": True, **spec})
            except Exception as e:  # noqa: BLE001 - the user's module: one line naming the key
                while e.__cause__ is not None:  # Hydra's wrappers: the error underneath says what went wrong
                    e = e.__cause__
                raise ConfigError(f"data.families.{name}.scorer: cannot make {spec.get('_target_')!r} a function "
                                  f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                                  f"is its module importable (on PYTHONPATH)?") from None
    return user_families(rules)


def load_benchmark(cfg: DictConfig, *, encoder=None):
    """The benchmark at data.root for train/evaluate. The demo is generated and built first when missing;
    with `encoder`, its features are extracted when missing or stale (both logged as such)."""
    from vlrb.data.benchmark import Benchmark
    from vlrb.data.build import is_benchmark_dir

    root = Path(cfg.data.root)
    if not (root / "data" / "matrices" / "Y.npz").exists():
        if cfg.data.get("generate") is None:
            raise ConfigError(f"data.root={root} holds no built benchmark; build it first: "
                              f"python build_data.py data={cfg.data.get('name', '...')} data.root={root} ...")
        _say(f"no benchmark at {root}: building the demo first")
        build_benchmark(cfg, progress=sys.stderr.isatty())
    elif not is_benchmark_dir(root):
        log.debug("%s was not built by vlrb (no manifest); reading it as an original VL-RouterBench folder", root)
    bench = Benchmark.load(root)
    if encoder is not None:
        from vlrb.features.extract import extract_features

        for mod, st in extract_features(bench, to_plain(encoder), root=root, progress=sys.stderr.isatty()).items():
            if isinstance(st, dict) and st.get("status") != "cached":
                _log_features(mod, st, why="missing or stale: extracted now, cached for later runs")
    return bench


def _log_features(mod: str, st, why: str = "") -> None:
    if isinstance(st, dict):
        if st.get("status") == "cached":  # nothing ran: no dimension, rate or device to report
            detail = f"{st.get('n_samples')} samples, cached: up to date, nothing extracted"
        else:
            detail = (f"{st.get('dim')}-d, {st.get('n_samples')} samples, {st.get('status')}; "
                      f"{st.get('throughput_items_s') or 0:.1f} items/s on {st.get('device')}")
        _say(f"{mod} features: {st.get('name')} ({detail}) -> {st.get('path')}" + (f" [{why}]" if why else ""))
