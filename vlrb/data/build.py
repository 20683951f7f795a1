"""Build a routing benchmark (Y, C, meta, splits, reports) from VLMEvalKit logs, a records table or a folder
of per-model result files.

Every reader (the VLMEvalKit one here, vlrb.data.records, vlrb.data.results) produces the same two tables,
and one `assemble` turns them into the upstream layout:
  records: sample_id, dataset, model_id, score, failed, output_tokens, has_prediction [, cost, input_tokens]
  samples: sample_id, dataset, prompt, image_kind, image_ref, tsv_file, tsv_row, num_images [, group]
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vlrb.errors import VlrbError
from vlrb.data.datasets import DATASETS, DEFAULT_OUTPUT_TOKEN_ESTIMATE, IMAGE_TOKENS, OUTPUT_TOKEN_ESTIMATES, DatasetSpec
from vlrb.data.families import FAMILIES
from vlrb.data.splits import random_split, stratified_split
from vlrb.data.tokens import count_many, tokenizer_name
from vlrb.data.write import Built, integrity_report, write_benchmark
from vlrb.io import (check_target_dir, file_digest, folder_lock, new_temp_dir, remove_stale_temp_dirs,
                     stat_fingerprint, swap_dir, write_json)
from vlrb.pricing import PriceTable, missing_price_message

BUILD_VERSION = 1
FORMAT_MARKER = "vlrb-benchmark"  # manifest.json["format"]: how a folder is recognised as a vlrb build
PRESERVED = ("EMBEDDINGS", "reports/features")  # derived later from the benchmark; kept across rebuilds


class BuildError(VlrbError, ValueError):
    pass


@dataclass
class Inputs:
    """What a reader hands to `assemble`, plus what it found worth reporting."""

    records: pd.DataFrame
    samples: pd.DataFrame
    files: list[str] = field(default_factory=list)  # input files, for the manifest
    report: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- configuration helpers

def dataset_specs(data_cfg) -> dict[str, DatasetSpec]:
    """The configured datasets (default: the 14), plus user-defined `data.extra_datasets`."""
    extra = {}
    for key, e in (data_cfg.get("extra_datasets") or {}).items():
        try:
            extra[key] = DatasetSpec(key, e.get("task_type", "vqa_mc"), e.get("group", "Other"), e["family"])
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", extra[key].task_type):
                raise BuildError(f"data.extra_datasets.{key}.task_type={extra[key].task_type!r}: use letters, digits, "
                                 f"'_' and '-' only (it names a folder under BENCHMARKS/)")
        except KeyError:
            raise BuildError(f"data.extra_datasets.{key} needs a `family` ({', '.join(FAMILIES)})") from None
    known = {**DATASETS, **extra}
    wanted = list(data_cfg.get("datasets") or DATASETS) + [k for k in extra if k not in (data_cfg.get("datasets") or [])]
    unknown = [d for d in wanted if d not in known]
    if unknown:
        raise BuildError(f"unknown dataset key(s) {unknown} in data.datasets; known keys: {', '.join(DATASETS)} "
                         f"(or declare one under data.extra_datasets with its family)")
    return {d: known[d] for d in dict.fromkeys(wanted)}


def model_pool(data_cfg, prices: PriceTable | None) -> tuple[list[str] | None, set[str]]:
    models = list(data_cfg.get("models") or [])
    excluded = set(data_cfg.get("exclude_models") or [])
    if prices is None:
        return (models or None), excluded
    if models:
        bad = [m for m in models if prices.canonical(m) is None]
        if bad:
            raise BuildError(missing_price_message(bad[0], prices.source))
        return sorted({prices.canonical(m) for m in models} - excluded), excluded
    return [m for m in prices.models if m not in excluded], excluded


# ----------------------------------------------------------------------------- the VLMEvalKit reader

def discover_vlmevalkit(data_cfg, prices: PriceTable, specs: dict[str, DatasetSpec]):
    """Walk the work dir, mapping model folders onto the price table's pool (aliases resolved)."""
    from vlrb.data import vlmevalkit as vk

    pool, excluded = model_pool(data_cfg, prices)

    def canonical(folder: str):
        m = prices.canonical(folder)
        return m if m in pool else None

    return vk.discover(data_cfg["raw_dir"], canonical, specs, excluded)


def read_vlmevalkit(data_cfg, prices: PriceTable, progress: bool = True, discovery=None) -> Inputs:
    from vlrb.data import vlmevalkit as vk
    from vlrb.data.tsv import find_tsv, read_tsv_index

    specs = dataset_specs(data_cfg)
    explicit = bool(data_cfg.get("models"))
    disc = discovery or discover_vlmevalkit(data_cfg, prices, specs)
    if disc.unknown_models and not explicit:
        name = sorted(disc.unknown_models)[0]
        raise BuildError(f"{data_cfg['raw_dir']}/{name}: " + missing_price_message(name, prices.source))
    tasks, missing_files = vk.plan(disc, specs)
    results = vk.read_all(tasks, workers=int(data_cfg.get("workers") or 1), progress=progress)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BuildError(errors[0] + more)

    frames, prompts, file_notes = [], {}, []
    for r in results:
        rec = r["records"]
        raw = rec["raw_id"]
        sid = np.where(raw.str.contains("/", regex=False), raw, r["dataset"] + "/" + raw)  # ids with '/' kept as is
        frames.append(pd.DataFrame({"sample_id": sid, "dataset": r["dataset"], "model_id": r["model"],
                                    "raw_id": rec["raw_id"].to_numpy(), "score": rec["score"].to_numpy(),
                                    "failed": rec["failed"].to_numpy(), "output_tokens": rec["output_tokens"].to_numpy(),
                                    "has_prediction": rec["has_prediction"].to_numpy()}))
        if r["dataset"] not in prompts or len(rec) > len(prompts[r["dataset"]]):
            prompts[r["dataset"]] = pd.Series(rec["prompt"].to_numpy(), index=sid)
        file_notes.append({k: r[k] for k in ("model", "dataset", "file", "run", "duplicates", "no_id", "nan_scores", "notes")})
    if not frames:
        raise BuildError(f"no evaluation files for the configured datasets and models under {data_cfg['raw_dir']}")
    records = pd.concat(frames, ignore_index=True)

    # samples: prompt from the evaluation files, image from the LMUData TSV
    sample_rows, image_report, tsv_files = [], {}, []
    for ds, grp in records.groupby("dataset", sort=True):
        keys = grp.drop_duplicates("sample_id")[["sample_id", "raw_id"]]
        tsv = find_tsv(data_cfg.get("tsv_dir"), ds)
        s = pd.DataFrame({"sample_id": keys["sample_id"].to_numpy(), "dataset": ds,
                          "prompt": prompts[ds].reindex(keys["sample_id"]).fillna("").to_numpy(),
                          "image_kind": "none", "image_ref": "", "tsv_file": "", "tsv_row": -1, "num_images": 0})
        rep = {"tsv": str(tsv) if tsv else None, "samples": len(s), "with_image": 0, "undecodable": [], "not_in_tsv": 0}
        if tsv is not None:
            tsv_files.append(str(tsv))
            try:
                idx = read_tsv_index(tsv).drop_duplicates("key").set_index("key")
            except ValueError as e:
                raise BuildError(str(e)) from None
            hit = idx.reindex(keys["raw_id"].to_numpy())
            found = hit["index"].notna().to_numpy()
            ok = found & (hit["image_status"] == "ok").to_numpy()
            bad = found & (hit["image_status"] == "undecodable").to_numpy()
            s.loc[ok, "image_kind"] = "tsv"
            s.loc[ok, "image_ref"] = hit["index"].to_numpy()[ok]
            s.loc[ok, "tsv_file"] = str(tsv)
            s.loc[found, "tsv_row"] = hit["row"].to_numpy()[found].astype(int)
            s.loc[ok, "num_images"] = hit["num_images"].to_numpy()[ok].astype(int)
            rep.update(with_image=int(ok.sum()), not_in_tsv=int((~found).sum()),
                       undecodable=s.loc[bad, "sample_id"].tolist())
        image_report[ds] = rep
        sample_rows.append(s)
    samples = pd.concat(sample_rows, ignore_index=True)

    report = {
        "reader": "vlmevalkit", "raw_dir": str(data_cfg["raw_dir"]), "tsv_dir": str(data_cfg.get("tsv_dir")),
        "files_seen": disc.n_seen, "duplicate_paths_skipped": disc.n_duplicates,
        "models_not_in_pool": disc.unknown_models, "models_excluded": disc.excluded_models,
        "other_datasets_ignored": disc.other_datasets, "pairs_without_evaluation_file": missing_files,
        "files_read": file_notes, "images": image_report,
        "datasets_absent": sorted(set(specs) - set(records["dataset"].unique())),
    }
    files = sorted({n["file"] for n in file_notes} | set(tsv_files))
    return Inputs(records, samples, files, report)


# ----------------------------------------------------------------------------- assembly

MAX_DROPPED_SHARE = 0.05  # default of data.max_dropped_share


def _check_drop(dropped: np.ndarray, ds_of: np.ndarray, present: np.ndarray, models: list[str], max_share: float,
                sids: np.ndarray | None = None) -> None:
    """A complete Y drops the samples some model lacks. Dropping more than `max_share` of all samples, or of one
    dataset's, is an error naming every dataset over the limit, the models that lack records (often a model that
    should be left out of the pool) and up to 10 of the samples they lack."""
    N, n = len(dropped), int(dropped.sum())
    per_ds = pd.Series(dropped).groupby(ds_of).mean()
    over = per_ds[per_ds > max_share].sort_values(ascending=False, kind="stable")
    if n <= max_share * N and over.empty:
        return
    cover = present.sum(0)
    worst = [int(j) for j in np.argsort(cover, kind="stable") if cover[j] < N][:3]
    where = ", ".join(f"{ds}: {share:.0%}" for ds, share in over.items()) or "no single dataset over the limit"
    ids = [str(i) for i in np.asarray(sids)[dropped][:10]] if sids is not None else []
    raise BuildError(
        f"keeping every model would drop {n} of {N} samples ({n / N:.0%}; {where}), more than "
        f"data.max_dropped_share={max_share:g}; models lacking records: "
        + ", ".join(f"{models[j]!r} covers {cover[j]} of {N} samples" for j in worst)
        + (f"; samples lacking a record: {', '.join(ids)}{', ...' if n > len(ids) else ''}" if ids else "")
        + f"; choose the pool with data.models=[...] or data.exclude_models=[{','.join(models[j] for j in worst)}] "
          f"(or raise data.max_dropped_share)")


def assemble(inp: Inputs, data_cfg, prices: PriceTable | None, specs: dict[str, DatasetSpec]) -> Built:
    rec, smp = inp.records, inp.samples
    if "_pool" in inp.report:
        pool = inp.report.get("_pool")  # records_inputs applied data.models / data.exclude_models
    else:
        pool, _ = model_pool(data_cfg, prices) if prices is not None or data_cfg.get("models") else (None, set())
    if pool is not None:
        rec = rec[rec["model_id"].isin(pool)]
    models = sorted(rec["model_id"].unique())  # Python sort order, as upstream's model_index.pkl
    if not models:
        raise BuildError("no records left for the configured model pool")
    absent_models = sorted(set(pool or []) - set(models))
    sids = np.asarray(sorted(rec["sample_id"].unique()), dtype=object)
    r = pd.Categorical(rec["sample_id"], categories=sids).codes
    c = pd.Categorical(rec["model_id"], categories=models).codes
    N, K = len(sids), len(models)

    def fill(values, dtype, empty):
        m = np.full((N, K), empty, dtype=dtype)
        m[r, c] = values
        return m

    S = fill(rec["score"].to_numpy(np.float64), np.float64, np.nan)
    present = fill(np.ones(len(rec), bool), bool, False)
    out_tok = fill(rec["output_tokens"].to_numpy(np.int64), np.int64, 0)
    has_pred = fill(rec["has_prediction"].to_numpy(bool), bool, False)
    failed = fill(rec["failed"].to_numpy(bool), bool, False)
    cost_given = fill(rec["cost"].to_numpy(np.float64), np.float64, np.nan) if "cost" in rec else None
    in_given = fill(rec["input_tokens"].to_numpy(np.int64), np.int64, 0) if "input_tokens" in rec else None

    # samples some model lacks are dropped (upstream crashes here), and reported per dataset and model
    ds_of = smp.drop_duplicates("sample_id").set_index("sample_id")["dataset"].reindex(sids).to_numpy()
    complete = present.all(1)
    dropped = {}
    if not complete.all():
        inc = ~complete
        for ds in sorted(set(ds_of[inc])):
            rows = inc & (ds_of == ds)
            dropped[ds] = {"samples": int(rows.sum()),
                           "missing_per_model": {m: int((~present[rows, j]).sum()) for j, m in enumerate(models)
                                                 if (~present[rows, j]).any()}}
        if data_cfg.get("strict"):
            raise BuildError(f"data.strict: {int(inc.sum())} samples lack some model's record: "
                             f"{json.dumps(dropped)[:600]}")
        _check_drop(inc, ds_of, present, models, float(data_cfg.get("max_dropped_share", MAX_DROPPED_SHARE)), sids)
    keep = complete
    sids, S, out_tok, has_pred, failed, ds_of = sids[keep], S[keep], out_tok[keep], has_pred[keep], failed[keep], ds_of[keep]
    cost_given = cost_given[keep] if cost_given is not None else None
    in_given = in_given[keep] if in_given is not None else None
    if len(sids) == 0:
        raise BuildError(f"no sample has a record for every model ({K} models); dropped: {json.dumps(dropped)[:600]}")
    unknown = np.isnan(S)
    undetermined = {m: int(unknown[:, j].sum()) for j, m in enumerate(models) if unknown[:, j].any()}
    S = np.nan_to_num(S, nan=0.0)  # a score that could not be determined counts as wrong (reported)
    thr = float(data_cfg.get("binarize_threshold", 0.5))
    Y = (S >= thr).astype(np.int8)

    smp = smp.drop_duplicates("sample_id").set_index("sample_id").reindex(sids).reset_index()
    task = np.asarray([specs[d].task_type if d in specs else "unknown" for d in ds_of], dtype=object)
    group = np.asarray([specs[d].group if d in specs else "Other" for d in ds_of], dtype=object)
    if "group" in smp.columns:  # a reader's own per-sample group wins where given
        given = smp["group"].fillna("").astype(str).str.strip().to_numpy(dtype=object)
        group = np.where(given != "", given, group)
    n_img = smp["num_images"].fillna(0).to_numpy(np.int64)
    if in_given is not None:  # per (sample, model): a text-only model is not billed for an image it never saw
        in_tok_mk = in_given
        in_tok = in_tok_mk.max(1)  # the routed request itself: what the model that reads most of it gets
        text_tok = np.maximum(in_tok - IMAGE_TOKENS * n_img, 0)  # given counts may price an image below 256
    else:
        text_tok = count_many(smp["prompt"].tolist())
        in_tok = text_tok + IMAGE_TOKENS * n_img
        in_tok_mk = np.broadcast_to(in_tok[:, None], (len(in_tok), K))
    est = np.asarray([OUTPUT_TOKEN_ESTIMATES.get(t, DEFAULT_OUTPUT_TOKEN_ESTIMATE) for t in task], np.int64)
    out_tok = np.where(has_pred, out_tok, est[:, None])

    p_in = p_out = None
    if cost_given is not None:
        C = cost_given.astype(np.float32)
    else:
        p_in = np.asarray([prices[m].input_per_1m for m in models])
        p_out = np.asarray([prices[m].output_per_1m for m in models])
        C = (in_tok_mk * p_in[None, :] / 1e6 + out_tok * p_out[None, :] / 1e6).astype(np.float32)

    if data_cfg.get("split", "random") == "stratified":
        assign = stratified_split(sids.tolist(), ds_of.tolist(), seed=int(data_cfg.get("split_seed", 42)))
    elif data_cfg.get("split", "random") == "random":
        assign = random_split(sids.tolist(), seed=int(data_cfg.get("split_seed", 42)))
    else:
        raise BuildError(f"data.split must be 'random' or 'stratified', got {data_cfg.get('split')!r}")
    sizes = Counter(assign.values())
    empty = [s for s in ("train", "dev", "test") if not sizes.get(s)]
    if empty:
        raise BuildError(f"split {'/'.join(empty)} would be empty ({len(sids)} samples: train {sizes.get('train', 0)}, "
                         f"dev {sizes.get('dev', 0)}, test {sizes.get('test', 0)}); the 70/10/20 split needs at least "
                         f"10 samples (with data.split=stratified, 10 in some dataset)")
    meta = pd.DataFrame({"sample_id": sids.astype(str), "dataset": ds_of.astype(str),
                         "split": [assign[s] for s in sids], "task": task.astype(str), "group": group.astype(str),
                         "input_tokens": in_tok, "text_tokens": text_tok, "num_images": n_img})
    smp["input_tokens"] = in_tok
    report = dict(inp.report)
    report.update({
        "models": models, "models_in_pool_without_logs": absent_models,
        "dropped_incomplete_samples": dropped, "n_dropped": int((~keep).sum()),
        "undetermined_scores": sum(undetermined.values()), "undetermined_per_model": undetermined,
        "binarize_threshold": thr,
        "fractional_scores": int(((S > 0) & (S < 1)).sum()),
        "failed_predictions": {m: int(failed[:, j].sum()) for j, m in enumerate(models) if failed[:, j].any()},
        "estimated_output_tokens": {m: int((~has_pred[:, j]).sum()) for j, m in enumerate(models) if (~has_pred[:, j]).any()},
        "tokenizer": tokenizer_name(),
    })
    return Built(Y, S.astype(np.float32), C, models, meta, smp, out_tok, has_pred, failed, report, p_in, p_out,
                 np.ascontiguousarray(in_tok_mk))


# ----------------------------------------------------------------------------- the whole build

def _fingerprint(data_cfg, prices: PriceTable | None, files: list[str]) -> str:
    cfg = dict(data_cfg)
    for k in ("workers", "root", "generate"):
        cfg.pop(k, None)
    price = {m: [p.input_per_1m, p.output_per_1m] for m, p in prices.prices.items()} if prices else None
    blob = json.dumps({"v": BUILD_VERSION, "cfg": cfg, "prices": price,
                       "files": [stat_fingerprint(f) for f in files]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def is_benchmark_dir(path: Path) -> bool:
    """True for a folder vlrb built (its manifest carries the format marker; older vlrb builds a fingerprint)."""
    try:
        m = json.loads((Path(path) / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and (m.get("format") == FORMAT_MARKER or {"fingerprint", "build_version"} <= m.keys())


def check_root(root: Path, create_parents: bool = False) -> None:
    """data.root may be new, empty or an earlier vlrb build: never a folder with someone else's files."""
    check_target_dir(root, is_ours=is_benchmark_dir, what="a vlrb benchmark (no manifest.json with "
                     f"format={FORMAT_MARKER!r})", key="data.root", create_parents=create_parents)


def build(data_cfg, prices: PriceTable | None, *, force: bool = False, progress: bool = True, log=None,
          create_parents: bool = False) -> dict:
    """Build (or confirm up to date) the benchmark at data_cfg["root"]. Returns the manifest.

    data.root must be new, empty or an earlier vlrb build (anything else is refused, never replaced); its
    parent must exist unless `create_parents`. One build per root at a time (a lock beside it); what killed
    builds left behind is removed first.
    """
    log = log or logging.getLogger("vlrb.build").info
    root = Path(data_cfg["root"])
    check_root(root, create_parents)
    root.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(root, log):
        check_root(root)  # again under the lock: another process may have written it meanwhile
        stale = remove_stale_temp_dirs(root)
        if stale:
            log(f"removed {len(stale)} unfinished build folder(s) left by an interrupted build: "
                f"{', '.join(p.name for p in stale)}")
        return _build_locked(root, data_cfg, prices, force, progress, log)


def _build_locked(root: Path, data_cfg, prices, force: bool, progress: bool, log) -> dict:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    specs = dataset_specs(data_cfg)
    reader = data_cfg.get("reader", "vlmevalkit")

    disc = None
    if reader == "vlmevalkit":
        from vlrb.data import vlmevalkit as vk
        disc = discover_vlmevalkit(data_cfg, prices, specs)
        tasks, _ = vk.plan(disc, specs)
        from vlrb.data.tsv import find_tsv
        files = sorted({str(p) for t in tasks for p in (t.eval_file, t.pred_file, t.judge_cache) if p}
                       | {str(p) for p in (find_tsv(data_cfg.get("tsv_dir"), d) for d in specs) if p})
    elif reader == "records":
        files = [str(data_cfg["records"])] if Path(str(data_cfg["records"])).exists() else []
    elif reader == "results":
        from vlrb.data.results import result_files

        folder = Path(str(data_cfg["dir"])).expanduser()
        files = ([str(folder / str(data_cfg["items"]))] + [str(p) for p in result_files(folder, str(data_cfg["results"])).values()]
                 if folder.is_dir() else [])
    else:
        raise BuildError(f"data.reader must be 'vlmevalkit', 'records' or 'results', got {reader!r}")
    fp = _fingerprint(data_cfg, prices, files)
    manifest_path = root / "manifest.json"
    if not force and manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("fingerprint") == fp and (root / "data" / "matrices" / "Y.npz").exists():
            log(f"benchmark at {root} is up to date (inputs unchanged); use force=true to rebuild")
            return {**old, "up_to_date": True}
    timings["discover"] = time.perf_counter() - t0

    t = time.perf_counter()
    if reader == "vlmevalkit":
        inp = read_vlmevalkit(data_cfg, prices, progress, disc)
    elif reader == "results":
        from vlrb.data.results import read_results

        inp = read_results(data_cfg, prices, progress)
    else:
        from vlrb.data.records import read_records

        inp = read_records(data_cfg, prices, progress)  # a full `cost` column: prices are not used
    timings["read"] = time.perf_counter() - t
    t = time.perf_counter()
    b = assemble(inp, data_cfg, prices, specs)
    timings["assemble"] = time.perf_counter() - t

    t = time.perf_counter()
    tmp = new_temp_dir(root)
    try:
        write_benchmark(b, tmp, specs)
        res, text = integrity_report(b)
        write_json(tmp / "reports" / "data_integrity" / "validation_results.json", res)
        (tmp / "reports" / "data_integrity" / "validation_report.txt").write_text(text)
        timings["write"] = time.perf_counter() - t
        t = time.perf_counter()
        manifest = {
            "format": FORMAT_MARKER, "fingerprint": fp, "build_version": BUILD_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "reader": reader, "n_samples": int(b.Y.shape[0]), "n_models": int(b.Y.shape[1]), "models": b.models,
            "inputs": [{"path": f, "bytes": os.path.getsize(f), "sha256": file_digest(f)} for f in files],
            "prices": {m: [float(i), float(o)] for m, i, o in zip(b.models, b.price_in, b.price_out)}
            if b.price_in is not None else None,
            "python": platform.python_version(),
        }
        timings["hash_inputs"] = time.perf_counter() - t
        manifest["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        write_json(tmp / "manifest.json", manifest)
        swap_dir(tmp, root, carry=PRESERVED)  # features extracted from the previous build are carried over
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    manifest["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
    manifest["up_to_date"] = False
    manifest["integrity"] = res
    return manifest
