"""Assembly: the readers' `Inputs` (one record per (sample, model)) as a complete benchmark (`Built`): Y from the
binarised scores, C from token counts x prices (or the records' own costs), per-sample meta, splits, and what the
build dropped, estimated or could not determine, for the integrity report."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd

from vlrb.data.answers import ANSWER_FORMATS, FAMILY_FORMATS, answer_keys
from vlrb.data.datasets import DEFAULT_OUTPUT_TOKEN_ESTIMATE, IMAGE_TOKENS, OUTPUT_TOKEN_ESTIMATES, DatasetSpec
from vlrb.data.inputs import BuildError, Inputs
from vlrb.data.pool import model_pool
from vlrb.data.splits import random_split, stratified_split
from vlrb.data.tokens import count_many, tokenizer_name
from vlrb.data.write import Built
from vlrb.pricing import PriceTable

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
    answers = fill(rec["answer"].fillna("").astype(str).to_numpy(object), object, "") if "answer" in rec else None

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
    answers = answers[keep] if answers is not None else None
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
    fmt, nopt = _answer_formats(smp, ds_of, specs)
    if answers is not None or "answer_format" in smp.columns:
        meta["answer_format"], meta["n_options"] = fmt, nopt
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
    if answers is not None:
        report["answers"] = {"well_formed_share": _valid_share(answers, fmt, nopt, models)}
    return Built(Y, S.astype(np.float32), C, models, meta, smp, out_tok, has_pred, failed, report, p_in, p_out,
                 np.ascontiguousarray(in_tok_mk), answers)


def _answer_formats(smp: pd.DataFrame, ds_of: np.ndarray, specs: dict[str, DatasetSpec]):
    """(answer_format, n_options) per sample: the reader's where it gave them, else by the dataset's family."""
    by_family = np.asarray([FAMILY_FORMATS.get(specs[d].family, "text") if d in specs else "text" for d in ds_of],
                           dtype=object)
    fmt = smp["answer_format"].fillna("").astype(str).to_numpy(object) if "answer_format" in smp else by_family
    fmt = np.where(np.isin(fmt, ANSWER_FORMATS), fmt, by_family)
    nopt = smp["n_options"].fillna(0).to_numpy(np.int64) if "n_options" in smp else np.zeros(len(smp), np.int64)
    return fmt.astype(str), nopt


def _valid_share(answers: np.ndarray, fmt: np.ndarray, nopt: np.ndarray, models: list[str]) -> dict[str, float]:
    """Per model: the share of its answers that are well-formed (the integrity report)."""
    ok = answer_keys(answers, fmt, nopt) != ""
    return {m: round(float(ok[:, j].mean()), 4) for j, m in enumerate(models)}
