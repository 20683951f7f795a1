"""Writing a built benchmark: the upstream VL-RouterBench layout (docs in README "Output") and the
data-integrity report."""
from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vlrb.data.datasets import IMAGE_TOKENS, DatasetSpec
from vlrb.io import write_json


@dataclass
class Built:
    Y: np.ndarray
    scores: np.ndarray
    C: np.ndarray
    models: list[str]
    meta: pd.DataFrame
    samples: pd.DataFrame
    tokens_out: np.ndarray  # (N, K) output tokens
    tokens_actual: np.ndarray  # (N, K) bool: counted from a real prediction
    failed: np.ndarray  # (N, K) bool
    report: dict
    price_in: np.ndarray | None = None  # (K,) $ per 1M tokens; None when the records carried their own cost
    price_out: np.ndarray | None = None
    tokens_in: np.ndarray | None = None  # (N, K) input tokens per (sample, model)
    answers: np.ndarray | None = None  # (N, K) str: each model's final answer ("" none); None: the reader had none


_PLAIN_STEM = re.compile(r"[a-z0-9][a-z0-9._-]*")


def dataset_file_stems(names) -> dict[str, str]:
    """The file stem of each dataset under BENCHMARKS/ and ORACLE/score/.

    Upstream writes `<dataset lower case>`; a name that is not a plain file name (`lmms-lab/MMStar`,
    `../x`) or that two datasets share in lower case (`MMStar`, `mmstar`) gets a slug plus a short hash
    of the exact name, so no dataset can write outside its folder or over another's file.
    """
    names = list(names)
    lower = Counter(n.lower() for n in names)
    stems = {}
    for n in names:
        low = n.lower()
        if _PLAIN_STEM.fullmatch(low) and lower[low] == 1:
            stems[n] = low
        else:
            slug = re.sub(r"[^a-z0-9_-]+", "_", low).strip("_")[:60] or "dataset"
            stems[n] = f"{slug}-{hashlib.sha1(n.encode()).hexdigest()[:8]}"
    return stems


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_benchmark(b: Built, out: Path, specs: dict[str, DatasetSpec]) -> None:
    """Write the upstream-compatible layout (docs/layout.md#built-benchmark) into the folder `out`."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    mdir, rdir = out / "data" / "matrices", out / "data" / "registry"
    mdir.mkdir(parents=True)
    rdir.mkdir(parents=True)
    np.savez_compressed(mdir / "Y.npz", Y=b.Y, scores=b.scores)
    np.save(mdir / "C.npy", b.C)
    if b.answers is not None:  # one string column per model, rows in meta order (docs/layout.md#built-benchmark)
        pd.DataFrame({m: b.answers[:, j].astype(str) for j, m in enumerate(b.models)}).to_parquet(
            mdir / "answers.parquet", index=False)
    from vlrb.data.benchmark import compute_cost_bounds

    write_json(mdir / "cost_bounds.json", compute_cost_bounds(b.C, b.models))
    sids = b.meta["sample_id"].tolist()
    for name, obj in (("model_index", b.models), ("sample_index", sids)):
        (rdir / f"{name}.json").write_text(json.dumps(obj))
        with open(rdir / f"{name}.pkl", "wb") as f:  # plain lists, for the original tools
            pickle.dump(list(obj), f)
    for name, obj in (("sample_ids", sids), ("model_names", b.models)):
        with open(mdir / f"{name}.pkl", "wb") as f:
            pickle.dump(list(obj), f)
    b.meta.to_parquet(rdir / "meta.parquet", index=False)
    b.samples[["sample_id", "dataset", "prompt", "image_kind", "image_ref", "tsv_file", "tsv_row",
               "num_images", "input_tokens"]].astype({"image_ref": str, "tsv_file": str}).to_parquet(
        rdir / "samples.parquet", index=False)

    # BENCHMARKS/<task>/<dataset>_samples.jsonl and ORACLE/score/<dataset>.parquet
    smp = b.samples  # row-aligned with meta
    K = len(b.models)
    odir = out / "ORACLE" / "score"
    odir.mkdir(parents=True, exist_ok=True)
    stems = dataset_file_stems(b.meta["dataset"].unique())
    for ds, rows in b.meta.groupby("dataset", sort=True):
        spec = specs.get(ds)
        task = spec.task_type if spec else "unknown"
        idx = rows.index.to_numpy()
        s = smp.iloc[idx]
        recs = []
        for sid, prompt, kind, ref, tsv, row in zip(s["sample_id"], s["prompt"], s["image_kind"], s["image_ref"],
                                                    s["tsv_file"], s["tsv_row"]):
            if kind == "tsv":
                assets = [{"type": "image_tsv", "tsv_file": tsv, "index": int(row), "tsv_key": ref}]
            elif kind == "path":
                assets = [{"type": "image", "uri": ref}]
            elif kind == "b64":
                assets = [{"type": "image_base64", "data": ref}]
            else:
                assets = []
            recs.append({"sample_id": sid, "dataset": ds, "task_type": task,
                         "modality": ["image", "text"] if assets else ["text"], "prompt": prompt, "assets": assets})
        _jsonl(out / "BENCHMARKS" / task / f"{stems[ds]}_samples.jsonl", recs)
        pd.DataFrame({"sample_id": np.repeat(rows["sample_id"].to_numpy(), K),
                      "model_id": np.tile(np.asarray(b.models, dtype=object), len(idx)),
                      "quality_raw": b.Y[idx].reshape(-1).astype(np.int64),
                      "quality": b.scores[idx].reshape(-1).astype(np.float64)}).to_parquet(odir / f"{stems[ds]}.parquet", index=False)
    for split in ("train", "dev", "test"):
        _jsonl(out / "SPLITS" / f"{split}.jsonl",
               ({"sample_id": s} for s in b.meta.loc[b.meta["split"] == split, "sample_id"]))

    # reports/token_statistics (upstream file names and columns)
    tdir = out / "reports" / "token_statistics"
    tdir.mkdir(parents=True)
    m = b.meta
    pacsv.write_csv(pa.table({"sample_id": m["sample_id"], "dataset": m["dataset"].str.upper(), "task_type": m["task"],
                              "text_tokens": m["text_tokens"], "image_tokens": IMAGE_TOKENS * m["num_images"],
                              "total_input_tokens": m["input_tokens"], "num_images": m["num_images"]}),
                    tdir / "token_stats_per_sample.csv")
    N, K = b.Y.shape
    models_col = np.tile(np.asarray(b.models, dtype=object), N)
    sid_col = np.repeat(m["sample_id"].to_numpy(), K)
    pacsv.write_csv(pa.table({"sample_id": sid_col, "model": models_col, "output_tokens": b.tokens_out.reshape(-1),
                              "is_actual": b.tokens_actual.reshape(-1)}), tdir / "output_tokens_per_model.csv")
    in_rep = b.tokens_in.reshape(-1) if b.tokens_in is not None else np.repeat(m["input_tokens"].to_numpy(), K)
    out_flat = b.tokens_out.reshape(-1)
    if b.price_in is not None:  # costs from tokens x prices: split into their input and output parts
        in_cost = in_rep * np.tile(b.price_in, N) / 1e6
        out_cost = out_flat * np.tile(b.price_out, N) / 1e6
    else:  # the records carried a total cost only
        in_cost = out_cost = np.full(N * K, np.nan)
    cols = {"sample_id": sid_col, "model": models_col, "total_input_tokens": in_rep, "output_tokens": out_flat,
            "input_cost": in_cost, "output_cost": out_cost, "total_cost": b.C.reshape(-1).astype(np.float64)}
    pacsv.write_csv(pa.table(cols), tdir / "token_based_costs.csv")
    by_ds = m.groupby("dataset").agg(samples=("sample_id", "size"), input_tokens=("input_tokens", "sum"),
                                     mean_input_tokens=("input_tokens", "mean"))
    out_ds = pd.Series(b.tokens_out.sum(1), index=m.index).groupby(m["dataset"]).sum()
    by_ds["output_tokens"] = out_ds
    by_ds.to_csv(tdir / "token_stats_by_dataset.csv")
    by_task = m.groupby("task").agg(samples=("sample_id", "size"), input_tokens=("input_tokens", "sum"))
    by_task["output_tokens"] = pd.Series(b.tokens_out.sum(1), index=m.index).groupby(m["task"]).sum()
    by_task.to_csv(tdir / "token_stats_by_task.csv")
    total_in, total_out = int(m["input_tokens"].sum()), int(b.tokens_out.sum())
    lines = ["Token statistics", f"tokenizer: {b.report.get('tokenizer')}; images: {IMAGE_TOKENS} tokens each",
             f"samples: {N}  models: {K}  pairs: {N * K}",
             f"input tokens (counted once per sample): {total_in:,}",
             f"output tokens (all pairs): {total_out:,}  actual: {int(b.tokens_actual.sum()):,}  estimated: {int((~b.tokens_actual).sum()):,}",
             f"grand total: {total_in + total_out:,}", "", "per model: mean output tokens, mean cost $/sample"]
    for j, mod in enumerate(b.models):
        lines.append(f"  {mod:32s} {b.tokens_out[:, j].mean():9.1f}  {b.C[:, j].mean():.3e}")
    (tdir / "token_statistics_report.txt").write_text("\n".join(lines) + "\n")


SMALL_SPLIT = 30  # fewer samples than this in a split: its accuracy moves by 3+ points per sample


def integrity_report(b: Built) -> tuple[dict, str]:
    """Counts, missing pairs, splits, cost ranges, failed predictions, and anything suspicious."""
    m = b.meta
    N, K = b.Y.shape
    acc = b.Y.mean(0)
    suspicious = []
    for j, mod in enumerate(b.models):
        if acc[j] == 0:
            suspicious.append(f"{mod}: never correct (check its evaluation files)")
        if acc[j] == 1:
            suspicious.append(f"{mod}: always correct (check its evaluation files)")
        if (b.C[:, j] == 0).any():
            suspicious.append(f"{mod}: {int((b.C[:, j] == 0).sum())} samples cost $0")
    for ds, rep in (b.report.get("images") or {}).items():
        if isinstance(rep, dict) and rep.get("undecodable"):
            suspicious.append(f"{ds}: {len(rep['undecodable'])} TSV images do not decode (kept, without image)")
        if isinstance(rep, dict) and rep.get("not_in_tsv"):
            suspicious.append(f"{ds}: {rep['not_in_tsv']} samples not found in the TSV (no image)")
    if (b.report.get("images") or {}).get("n_missing_image_files"):
        suspicious.append(f"{b.report['images']['n_missing_image_files']} image files do not exist (no image features)")
    for f in b.report.get("files_read", []):
        if f.get("duplicates"):
            suspicious.append(f"{f['file']}: {f['duplicates']} duplicate indices (first row kept)")
    if b.report.get("undetermined_scores"):
        suspicious.append(f"{b.report['undetermined_scores']} (sample, model) scores could not be determined (counted wrong)")
    fails = b.report.get("failed_predictions", {})
    if fails:
        suspicious.append(f"failed API predictions (counted wrong): {fails}")
    if b.report.get("n_dropped"):
        suspicious.append(f"{b.report['n_dropped']} samples dropped because some model has no record for them")
    n_split = m["split"].value_counts().to_dict()
    small = {sp: int(n_split.get(sp, 0)) for sp in ("train", "dev", "test") if n_split.get(sp, 0) < SMALL_SPLIT}
    if small:
        suspicious.append(f"small splits {small}: fewer than {SMALL_SPLIT} samples, so their scores are mostly noise")
    res = {
        "n_samples": N, "n_models": K, "n_pairs": N * K,
        "samples_per_dataset": m["dataset"].value_counts().sort_index().to_dict(),
        "splits": {s: int(n_split.get(s, 0)) for s in ("train", "dev", "test")},
        "split_ratios": {s: round(n_split.get(s, 0) / N, 4) for s in ("train", "dev", "test")},
        "per_model": {mod: {"accuracy": float(acc[j]), "mean_cost": float(b.C[:, j].mean()),
                            "min_cost": float(b.C[:, j].min()), "max_cost": float(b.C[:, j].max()),
                            "mean_output_tokens": float(b.tokens_out[:, j].mean()),
                            "failed_predictions": int(b.failed[:, j].sum()),
                            "estimated_output_tokens": int((~b.tokens_actual[:, j]).sum())}
                      for j, mod in enumerate(b.models)},
        "oracle_accuracy": float(b.Y.max(1).mean()),
        "no_correct_model_share": float((b.Y.max(1) == 0).mean()),
        "cost_range": {"min": float(b.C.min()), "max": float(b.C.max()), "mean": float(b.C.mean())},
        "suspicious": suspicious,
        "reader": {k: v for k, v in b.report.items() if not k.startswith("_")},
    }
    lines = ["VL-RouterBench data integrity report", "=" * 40,
             f"samples {N}  models {K}  pairs {N * K}",
             f"splits: {res['splits']}  ratios: {res['split_ratios']}",
             f"oracle accuracy {res['oracle_accuracy']:.4f}; samples no model answers: {res['no_correct_model_share']:.4f}",
             "", "samples per dataset:"]
    lines += [f"  {d:22s} {n}" for d, n in res["samples_per_dataset"].items()]
    lines += ["", f"{'model':32s} {'acc':>7s} {'$/10K':>9s} {'min $':>10s} {'max $':>10s} {'out tok':>8s} {'failed':>6s}"]
    for mod, r in res["per_model"].items():
        lines.append(f"{mod:32s} {r['accuracy']:7.4f} {r['mean_cost'] * 1e4:9.3f} {r['min_cost']:10.2e} "
                     f"{r['max_cost']:10.2e} {r['mean_output_tokens']:8.1f} {r['failed_predictions']:6d}")
    rd = b.report
    lines += ["", "reader:"]
    for k in ("reader", "raw_dir", "records", "results", "files_seen", "duplicate_paths_skipped", "datasets_absent",
              "models_not_in_pool", "models_in_pool_without_logs", "other_datasets_ignored", "n_dropped",
              "binarize_threshold", "fractional_scores", "tokenizer"):
        if k in rd:
            lines.append(f"  {k}: {rd[k]}")
    if rd.get("pairs_without_evaluation_file"):
        lines.append(f"  pairs without an evaluation file: {len(rd['pairs_without_evaluation_file'])}")
        lines += [f"    {p['model']} / {p['dataset']}" for p in rd["pairs_without_evaluation_file"][:20]]
    if rd.get("dropped_incomplete_samples"):
        lines.append("  dropped samples (some model lacks them):")
        lines += [f"    {d}: {v['samples']} samples; missing per model {v['missing_per_model']}"
                  for d, v in rd["dropped_incomplete_samples"].items()]
    lines += ["", "suspicious:"] + ([f"  - {s}" for s in suspicious] or ["  (nothing)"])
    return res, "\n".join(lines) + "\n"


