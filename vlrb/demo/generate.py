"""Generate a VLMEvalKit-style demo work dir: LMUData TSVs, per-model prediction and evaluation files.

The real VL-RouterBench archive is not available offline, so `build_data.py` with no arguments
builds its benchmark from files this package writes, through the same reader as real data.
The files follow VLMEvalKit b55f788e: dataset keys, file names, columns, quoting, run folders and
symlinks are the real ones. Correctness comes from the latent-skill model of `vlrb.demo.world`.

Work is split into a *plan* (samples, latent draws: main process, numpy) and *rendering* (images,
TSVs, prediction strings, evaluation files: worker processes, one task per dataset TSV and one per
model). Every random stream is seeded from (seed, dataset, model), so the output does not depend on
the number of workers or on which other datasets are selected.
"""
from __future__ import annotations

import random
import shutil
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vlrb.data.datasets import DATASETS
from vlrb.demo.families import DEMO_FAMILIES, DemoFamily
from vlrb.demo.samples import DatasetPlan
from vlrb.demo.world import (API_FAILURE_RATE, API_MODELS, DEMO_MODELS, FULL_SCALE_COUNTS, PROFILES, RUN_FOLDER,
                             dataset_number, p_correct)
from vlrb.demo.writers import link_run_files, write_result_files, write_tsv
from vlrb.io import check_target_dir, folder_lock, new_temp_dir, remove_stale_temp_dirs, swap_dir


def _family(key: str) -> DemoFamily:
    """The demo's planner and renderer of a dataset's correctness family."""
    return DEMO_FAMILIES[DATASETS[key].family]


def plan_dataset(key: str, n: int, seed: int, api_failure_rate: float = API_FAILURE_RATE) -> DatasetPlan:
    """Samples of one dataset plus the latent correctness and failed-call draws for all models."""
    d = dataset_number(key)
    family = _family(key)
    plan = family.plan(key, n, random.Random(seed * 1_000_003 + d * 7919 + 1))
    plan.seed = seed
    rng = np.random.default_rng([seed, d, 2])
    plan.correct = rng.random((len(plan.samples), len(DEMO_MODELS))) < p_correct(plan, family.group)
    failed = np.zeros_like(plan.correct)
    api = [list(DEMO_MODELS).index(m) for m in API_MODELS]
    draws = np.random.default_rng([seed, d, 4]).random((len(plan.samples), len(api)))
    failed[:, api] = draws < api_failure_rate
    plan.failed = failed
    plan.correct &= ~failed
    return plan


def _sample_counts(datasets: list[str], samples_per_dataset: int | None, full: bool) -> dict[str, int]:
    if full or samples_per_dataset is None:
        return {k: FULL_SCALE_COUNTS[k] for k in datasets}
    return {k: min(int(samples_per_dataset), FULL_SCALE_COUNTS[k]) for k in datasets}


def plan_demo(*, samples_per_dataset: int | None = 100, full: bool = False, seed: int = 0,
              datasets: list[str] | None = None,
              api_failure_rate: float = API_FAILURE_RATE) -> dict[str, DatasetPlan]:
    """The samples and latent draws of a demo, without writing anything."""
    keys = list(DATASETS) if datasets is None else list(datasets)
    unknown = [k for k in keys if k not in DATASETS]
    if unknown:
        raise KeyError(f"unknown dataset key(s) {unknown}; known: {', '.join(DATASETS)}")
    counts = _sample_counts(keys, samples_per_dataset, full)
    return {k: plan_dataset(k, n, seed, api_failure_rate) for k, n in counts.items() if n > 0}


TRUTH_FILE = "demo_truth.parquet"
VERSION_FILE = "demo_version.txt"
GENERATOR_VERSION = 2  # 2: realistic wrong and malformed answers (docs/method.md#answers); Y and C as version 1


def is_current_demo(path: Path) -> bool:
    """A demo folder written by this version of the generator (an older one is generated again)."""
    f = Path(path) / VERSION_FILE
    return is_demo_dir(path) and f.is_file() and f.read_text().strip() == str(GENERATOR_VERSION)


def is_demo_dir(path: Path) -> bool:
    """A folder written by `generate_demo` (it always holds the planned truth)."""
    return (Path(path) / TRUTH_FILE).is_file()


def generate_demo(out_dir: Path, *, samples_per_dataset: int | None = 100, full: bool = False,
                  seed: int = 0, datasets: list[str] | None = None, workers: int = 2,
                  progress: bool = True, image_size: int = 96,
                  api_failure_rate: float = API_FAILURE_RATE, if_missing: bool = False) -> dict:
    """Write a demo VLMEvalKit work dir, LMUData TSVs and the planned truth under `out_dir`.

    `samples_per_dataset` caps each dataset (None or `full=True`: FULL_SCALE_COUNTS).
    The folder is built under a unique temporary name and renamed at the end, under a lock, so an
    interrupted or concurrent run never leaves a half-written `out_dir`; an existing demo folder is
    replaced, any other non-empty folder is refused.
    `if_missing`: keep an existing demo folder (checked under the lock, so concurrent first runs
    generate it once). Returns {"raw_dir", "tsv_dir", "truth", "n_samples"} (paths inside `out_dir`).
    """
    out_dir = Path(out_dir)
    plans = plan_demo(samples_per_dataset=samples_per_dataset, full=full, seed=seed,
                      datasets=datasets, api_failure_rate=api_failure_rate)
    check_target_dir(out_dir, is_ours=is_demo_dir, what="a generated demo work dir (no demo_truth.parquet)",
                     key="the demo folder", create_parents=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(out_dir):
        if if_missing and is_current_demo(out_dir):  # another process generated it while we waited
            return _demo_paths(out_dir, plans)
        remove_stale_temp_dirs(out_dir)
        tmp = new_temp_dir(out_dir)  # unique per process: concurrent generations never share files
        try:
            (tmp / "LMUData").mkdir()
            (tmp / "vlmeval").mkdir()
            results = _run_tasks(plans, tmp, seed, image_size, workers, progress)
            _truth_frame(plans, results).to_parquet(tmp / TRUTH_FILE, index=False)
            (tmp / VERSION_FILE).write_text(f"{GENERATOR_VERSION}\n")
            swap_dir(tmp, out_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return _demo_paths(out_dir, plans)


def _demo_paths(out_dir: Path, plans: dict) -> dict:
    return {"raw_dir": out_dir / "vlmeval", "tsv_dir": out_dir / "LMUData", "truth": out_dir / TRUTH_FILE,
            "n_samples": sum(len(p.samples) for p in plans.values())}


def _run_tasks(plans: dict[str, DatasetPlan], root: Path, seed: int, image_size: int,
               workers: int, progress: bool) -> dict[str, dict[str, np.ndarray]]:
    """One task per model (all its files) and one per dataset TSV; returns scores[model][dataset]."""
    # heaviest first (thinking models write the longest predictions) for a balanced pool
    by_length = sorted(DEMO_MODELS, key=lambda m: -PROFILES[m].style["math"][1])
    tasks = ([("model", m) for m in by_length]
             + [("tsv", k) for k in sorted(plans, key=lambda k: -len(plans[k].samples))])
    results: dict[str, dict[str, np.ndarray]] = {}

    def collect(done) -> None:
        bar = _progress(len(tasks), progress)  # made after the fork: no tqdm thread in workers
        for _, name, scores in done:
            if scores is not None:
                results[name] = scores
            bar.update(1)
        bar.close()

    if workers and workers > 1:
        from vlrb.data.tokens import _encoder

        _encoder()  # the mistake streams count tokens (vlrb.demo.mistakes): load the BPE ranks once, before forking
        # fork shares the plan without pickling; spawn where fork does not exist
        ctx = get_context("fork" if "fork" in _start_methods() else "spawn")
        with ctx.Pool(workers, _init_worker, (plans, root, seed, image_size)) as pool:
            collect(pool.imap_unordered(_run_task, tasks))
    else:
        _init_worker(plans, root, seed, image_size)
        try:
            collect(_run_task(t) for t in tasks)
        finally:
            _STATE.clear()
    return results


_STATE: dict[str, Any] = {}


def _init_worker(plans: dict[str, DatasetPlan], root: Path, seed: int, image_size: int) -> None:
    _STATE.update(plans=plans, root=root, seed=seed, image_size=image_size)


def _run_task(task: tuple[str, str]) -> tuple[str, str, dict[str, np.ndarray] | None]:
    what, name = task
    st = _STATE
    if what == "tsv":
        write_tsv(st["plans"][name], st["root"] / "LMUData" / f"{name}.tsv", st["seed"], st["image_size"])
        return what, name, None
    return what, name, _write_model(name, st["plans"], st["root"] / "vlmeval", st["seed"])


def _write_model(model: str, plans: dict[str, DatasetPlan], work: Path, seed: int) -> dict[str, np.ndarray]:
    """All files of one model: each dataset rendered by its family's renderer, then run.py's symlinks."""
    m = list(DEMO_MODELS).index(model)
    run_dir = work / model / RUN_FOLDER
    run_dir.mkdir(parents=True, exist_ok=True)
    scores: dict[str, np.ndarray] = {}
    for key, plan in plans.items():
        rng = np.random.default_rng([seed, dataset_number(key), m, 3])
        out = _family(key).render(plan, model, plan.correct[:, m], plan.failed[:, m], rng)
        out.scores[plan.failed[:, m]] = 0.0  # a failed call is wrong, whatever the files say
        write_result_files(run_dir, f"{model}_{key}", plan, out)
        scores[key] = out.scores
    link_run_files(work / model)
    return scores


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="demo work dir", unit="file set", disable=not enabled)


def _truth_frame(plans: dict[str, DatasetPlan], results: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """Long (sample_id, model_id, score): the raw score each (sample, model) file pair encodes."""
    parts = []
    for key, plan in plans.items():
        ids = plan.sample_ids()
        for model in DEMO_MODELS:
            parts.append(pd.DataFrame({"sample_id": ids, "model_id": model,
                                       "score": results[model][key].astype(np.float64)}))
    return pd.concat(parts, ignore_index=True)
