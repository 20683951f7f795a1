"""The VLMEvalKit reader's side of a build: a work dir (vlrb.data.vlmevalkit) and its LMUData TSVs
(vlrb.data.tsv) as the build's `Inputs`, one record per (sample, model)."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from vlrb.data import vlmevalkit as vk
from vlrb.data.datasets import DatasetSpec
from vlrb.data.families import Family
from vlrb.data.inputs import BuildError, Inputs
from vlrb.data.pool import dataset_specs, model_pool
from vlrb.data.tsv import find_tsv, read_tsv_index
from vlrb.pricing import PriceTable, missing_price_message


def discover_vlmevalkit(data_cfg, prices: PriceTable, specs: dict[str, DatasetSpec]) -> vk.Discovery:
    """Walk the work dir, mapping model folders onto the price table's pool (aliases resolved)."""
    pool, excluded = model_pool(data_cfg, prices)

    def canonical(folder: str):
        m = prices.canonical(folder)
        return m if m in pool else None

    return vk.discover(data_cfg["raw_dir"], canonical, specs, excluded)


def read_vlmevalkit(data_cfg, prices: PriceTable, progress: bool = True, discovery: vk.Discovery | None = None,
                    families: Mapping[str, Family] | None = None) -> Inputs:
    """The records (one per evaluation-file row) and samples (prompts; images from the LMUData TSVs) of a work dir.
    `families`: correctness rules beside vlrb's own that `data.extra_datasets` may name (`data.families`)."""
    specs = dataset_specs(data_cfg, families)
    explicit = bool(data_cfg.get("models"))
    disc = discovery or discover_vlmevalkit(data_cfg, prices, specs)
    if disc.unknown_models and not explicit:
        name = sorted(disc.unknown_models)[0]
        raise BuildError(f"{data_cfg['raw_dir']}/{name}: " + missing_price_message(name, prices.source))
    tasks, missing_files = vk.plan(disc, specs, families)
    results = vk.read_all(tasks, workers=int(data_cfg.get("workers") or 1), progress=progress)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BuildError(errors[0] + more)

    frames, items, file_notes = [], {}, []
    for r in results:
        rec = r["records"]
        raw = rec["raw_id"]
        sid = np.where(raw.str.contains("/", regex=False), raw, r["dataset"] + "/" + raw)  # ids with '/' kept as is
        frames.append(pd.DataFrame({"sample_id": sid, "dataset": r["dataset"], "model_id": r["model"],
                                    "raw_id": rec["raw_id"].to_numpy(), "score": rec["score"].to_numpy(),
                                    "failed": rec["failed"].to_numpy(), "output_tokens": rec["output_tokens"].to_numpy(),
                                    "has_prediction": rec["has_prediction"].to_numpy(),
                                    "answer": rec["answer"].to_numpy()}))
        if r["dataset"] not in items or len(rec) > len(items[r["dataset"]]):  # the fullest file of the dataset
            items[r["dataset"]] = pd.DataFrame({"prompt": rec["prompt"].to_numpy(),
                                                "answer_format": rec["answer_format"].to_numpy(),
                                                "n_options": rec["n_options"].to_numpy()}, index=sid)
        file_notes.append({k: r[k] for k in ("model", "dataset", "file", "run", "duplicates", "no_id", "nan_scores", "notes")})
    if not frames:
        raise BuildError(f"no evaluation files for the configured datasets and models under {data_cfg['raw_dir']}")
    records = pd.concat(frames, ignore_index=True)

    # samples: prompt and answer format from the evaluation files, image from the LMUData TSV
    sample_rows, image_report, tsv_files = [], {}, []
    for ds, grp in records.groupby("dataset", sort=True):
        keys = grp.drop_duplicates("sample_id")[["sample_id", "raw_id"]]
        tsv = find_tsv(data_cfg.get("tsv_dir"), ds)
        per_sample = items[ds].reindex(keys["sample_id"])
        s = pd.DataFrame({"sample_id": keys["sample_id"].to_numpy(), "dataset": ds,
                          "prompt": per_sample["prompt"].fillna("").to_numpy(),
                          "image_kind": "none", "image_ref": "", "tsv_file": "", "tsv_row": -1, "num_images": 0,
                          # each item's answer format (docs/method.md#answers): its options make it a choice item
                          "answer_format": per_sample["answer_format"].fillna("").to_numpy(),
                          "n_options": per_sample["n_options"].fillna(0).to_numpy(np.int64)})
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
