"""Read a VLMEvalKit work dir into per-(sample, model) records.

Layout (docs/layout.md#inputs): `<work>/<M>/T<date>_G<hash>/<M>_<D><suffix>`, plus symlinks in
`<work>/<M>/` to the run files. Files are de-duplicated by resolved path, the newest run folder wins
for each (model, dataset), and file names are parsed against the known model and dataset keys,
never by splitting on `_` (model keys contain `_`, `-` and `.`).
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from vlrb.errors import VlrbError
from vlrb.data import correctness
from vlrb.data.datasets import DatasetSpec
from vlrb.data.families import Family, get_family, read_answers, score_frame_undetermined
from vlrb.data.tokens import count_many

RUN_DIR = re.compile(r"^T(\d{8})_G([0-9a-fA-F]*)$")
PRED_SUFFIXES = (".xlsx", ".tsv", ".json")  # PRED_FORMAT may switch the prediction file's format
PROMPT_COLUMNS = ("question", "prompt", "Question", "Prompt", "text", "query")
ID_COLUMNS = ("sample_id", "id", "index")


class ReaderError(VlrbError, ValueError):
    """A VLMEvalKit input that cannot be read; the message names the file and what was expected."""


@dataclass
class FileRef:
    path: Path  # resolved
    model: str  # canonical model id
    dataset: str
    suffix: str  # what follows "<M>_<D>", e.g. "_openai_result.xlsx"
    run: str  # run folder name ("" when the file sits outside a run folder)

    @property
    def run_key(self) -> tuple:
        m = RUN_DIR.match(self.run)
        return (m.group(1), self.run) if m else ("", self.run)


@dataclass
class Discovery:
    files: list[FileRef] = field(default_factory=list)
    n_seen: int = 0  # files found by the walk (symlinks included)
    n_duplicates: int = 0  # found twice (symlink + target): counted once
    unknown_models: dict[str, int] = field(default_factory=dict)  # top-level folders not in the pool
    excluded_models: dict[str, int] = field(default_factory=dict)
    other_datasets: dict[str, int] = field(default_factory=dict)  # files of datasets not configured


def discover(raw_dir: str | Path, canonical, datasets: dict[str, DatasetSpec], excluded=()) -> Discovery:
    """Walk the work dir. `canonical(key) -> model id | None` maps folder names to the model pool."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise ReaderError(f"data.raw_dir {raw_dir} is not a directory (expected a VLMEvalKit work dir "
                          f"with one folder per model)")
    keys = sorted(datasets, key=len, reverse=True)  # longest first: MathVista_MINI before a shorter prefix
    out, seen = Discovery(), set()
    for model_dir in sorted(p for p in raw_dir.iterdir() if p.is_dir()):
        folder = model_dir.name
        model = canonical(folder)
        for root, _dirs, names in os.walk(model_dir, followlinks=False):
            rel = Path(root).relative_to(model_dir)
            run = rel.parts[0] if rel.parts else ""
            for name in sorted(names):
                if not name.startswith(folder + "_"):
                    continue
                out.n_seen += 1
                path = Path(root, name)
                try:
                    real = _follow_link_standin(path.resolve(strict=True))
                except (OSError, RuntimeError):
                    continue  # dangling symlink
                if real in seen:
                    out.n_duplicates += 1
                    continue
                seen.add(real)
                rest = name[len(folder) + 1:]
                ds = next((k for k in keys if rest == k or rest.startswith(k + "_") or rest.startswith(k + ".")), None)
                if ds is None:
                    other = rest.split(".")[0]
                    out.other_datasets[other] = out.other_datasets.get(other, 0) + 1
                    continue
                if folder in excluded or (model is not None and model in excluded):
                    out.excluded_models[folder] = out.excluded_models.get(folder, 0) + 1
                    continue
                if model is None:
                    out.unknown_models[folder] = out.unknown_models.get(folder, 0) + 1
                    continue
                # a symlink in <M>/ points into a run folder: take the run from where the file really is
                real_run = real.parent.name if RUN_DIR.match(real.parent.name) else run
                out.files.append(FileRef(real, model, ds, rest[len(ds):], real_run))
    return out


def _follow_link_standin(path: Path) -> Path:
    """A copy or git checkout without symlink support turns run.py's links into tiny text files holding
    the relative target path; treat such a file as the link it stands for."""
    try:
        if path.stat().st_size > 512:
            return path
        text = path.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return path
    if text and "\n" not in text and not text.startswith("/"):
        target = (path.parent / text)
        if target.is_file() and target.resolve() != path:
            return target.resolve()
    return path


# ----------------------------------------------------------------------------- file selection

def _is_eval_file(fam: Family, suffix: str) -> bool:
    if fam.eval_file is None:  # no evaluation file: the prediction file is scored
        return suffix in PRED_SUFFIXES
    return bool(fam.eval_file.fullmatch(suffix))


def _is_judge_cache(fam: Family, suffix: str) -> bool:
    """A judge's cache (MCQ: `<M>_<D>_<judge>_result.pkl`, index -> {hit, log}): a fallback source of scores."""
    return fam.judge_cache is not None and bool(fam.judge_cache.fullmatch(suffix))


def _family(name: str, dataset: str, families: Mapping[str, Family] | None = None) -> Family:
    try:
        return get_family(name, dataset, families)
    except correctness.CorrectnessError as e:
        raise ReaderError(str(e)) from None


@dataclass
class Task:
    model: str
    dataset: str
    family: Family  # the rule itself, not its name: a worker process needs no registry to score with it
    eval_file: Path | None
    pred_file: Path | None
    judge_cache: Path | None
    run: str


def plan(disc: Discovery, datasets: dict[str, DatasetSpec],
         families: Mapping[str, Family] | None = None) -> tuple[list[Task], list[dict]]:
    """One task per (model, dataset): the newest run folder that holds an evaluation source. `families`: rules
    beside vlrb's own (`vlrb.data.families.user_family`) that datasets may name."""
    by_pair: dict[tuple[str, str], list[FileRef]] = {}
    for f in disc.files:
        by_pair.setdefault((f.model, f.dataset), []).append(f)
    tasks, missing = [], []
    for (model, ds), files in sorted(by_pair.items()):
        fam = _family(datasets[ds].family, ds, families)
        runs = sorted({f.run_key for f in files}, reverse=True)
        chosen = None
        for rk in runs:
            in_run = [f for f in files if f.run_key == rk]
            ev = sorted((f for f in in_run if _is_eval_file(fam, f.suffix)), key=lambda f: f.suffix)
            pred = next((f for f in in_run if f.suffix in PRED_SUFFIXES), None)
            cache = next((f for f in in_run if _is_judge_cache(fam, f.suffix)), None)
            if ev or (cache and pred):
                if fam.eval_file is None:
                    ev = [pred] if pred else ev
                chosen = Task(model, ds, fam, ev[0].path if ev else None, pred.path if pred else None,
                              cache.path if cache else None, rk[1])
                break
        if chosen is None:
            missing.append({"model": model, "dataset": ds, "reason": "no evaluation file",
                            "files": sorted(f.path.name for f in files)})
        else:
            tasks.append(chosen)
    return tasks, missing


# ----------------------------------------------------------------------------- reading

def read_table(path: Path) -> pd.DataFrame:
    """Read an xlsx (python-calamine: ~10x faster than openpyxl), a TSV or a JSON prediction file."""
    try:
        if path.suffix == ".xlsx":
            import python_calamine

            rows = python_calamine.CalamineWorkbook.from_path(str(path)).get_sheet_by_index(0).to_python()
            if not rows:
                raise ReaderError(f"{path}: the sheet is empty")
            header = [str(c) for c in rows[0]]
            return pd.DataFrame(rows[1:], columns=header)
        if path.suffix == ".tsv":
            return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        if path.suffix == ".json":
            return pd.read_json(path)
    except ReaderError:
        raise
    except Exception as e:
        raise ReaderError(f"{path}: cannot read this file ({type(e).__name__}: {e}); "
                          f"is it a complete VLMEvalKit output?") from None
    raise ReaderError(f"{path}: unsupported file type")


def id_strings(values) -> np.ndarray:
    """VLMEvalKit indices as strings: 12.0 -> '12' (xlsx stores integers as floats), strings stripped."""
    out = []
    for v in values:
        if isinstance(v, float):
            out.append(str(int(v)) if v.is_integer() else repr(v))
        elif v is None:
            out.append("")
        else:
            out.append(str(v).strip())
    return np.asarray(out, dtype=object)


def _id_column(df: pd.DataFrame, path: Path) -> str:
    col = next((c for c in ID_COLUMNS if c in df.columns), None)
    if col is None:
        raise ReaderError(f"{path}: no sample id column (expected one of {', '.join(ID_COLUMNS)})")
    return col


def read_task(task: Task) -> dict:
    """Read one (model, dataset): raw scores, failed flags, output tokens and prompts, one row per sample."""
    df = read_table(task.eval_file) if task.eval_file else read_table(task.pred_file)
    path = task.eval_file or task.pred_file
    notes: dict = {}
    if task.eval_file is None and task.judge_cache is not None:
        df = _attach_judge_cache(df, task.judge_cache)
        notes["hit_from_judge_cache"] = str(task.judge_cache)
    if task.dataset.startswith("MMBench") or "g_index" in df.columns:
        keep = correctness.main_rows_mask(df)
        notes["circular_rows_dropped"] = int((~keep).sum())
        df = df[keep]
    if "prediction" not in df.columns and task.pred_file and task.pred_file != path:
        pred = read_table(task.pred_file)
        idc = _id_column(pred, task.pred_file)
        m = dict(zip(id_strings(pred[idc]), pred["prediction"])) if "prediction" in pred.columns else {}
        df = df.assign(prediction=[m.get(k) for k in id_strings(df[_id_column(df, path)])])
    idc = _id_column(df, path)
    ids = id_strings(df[idc])
    valid = ids != ""
    n_dup = int(pd.Series(ids[valid]).duplicated().sum())
    try:
        scores, undetermined = score_frame_undetermined(task.family, df, dataset=task.dataset)
    except correctness.CorrectnessError as e:
        raise ReaderError(f"{path}: {e}") from None
    preds = df["prediction"] if "prediction" in df.columns else pd.Series([None] * len(df))
    has_pred = preds.notna().to_numpy()
    failed = np.asarray(correctness.failed_mask(preds.fillna("").astype(str))) & has_pred
    out_tokens = count_many(p if h else None for p, h in zip(preds.tolist(), has_pred))
    pcol = next((c for c in PROMPT_COLUMNS if c in df.columns), None)
    prompts = df[pcol].astype(object).where(df[pcol].notna(), "").astype(str).to_numpy() if pcol else np.full(len(df), "", object)
    scores = np.where(undetermined, np.nan, scores)  # NaN: counted as undetermined (and wrong) by the build
    answers, fmt, nopt = read_answers(task.family, df)  # the final answer as the rule reads it
    answers[failed] = ""
    r = pd.DataFrame({"raw_id": ids, "score": scores, "failed": failed,
                      "output_tokens": out_tokens, "has_prediction": has_pred, "prompt": prompts,
                      "answer": answers, "answer_format": fmt, "n_options": nopt})[valid]
    r = r.drop_duplicates("raw_id", keep="first")  # upstream keeps the first row of a duplicated index
    return {"model": task.model, "dataset": task.dataset, "file": str(path), "run": task.run,
            "records": r, "duplicates": n_dup, "no_id": int((~valid).sum()), "notes": notes,
            "nan_scores": int(np.isnan(r["score"].to_numpy()).sum())}


def _attach_judge_cache(df: pd.DataFrame, cache: Path) -> pd.DataFrame:
    from vlrb.io import safe_pickle_load

    try:
        d = safe_pickle_load(cache)
    except Exception as e:
        raise ReaderError(f"{cache}: unreadable judge cache ({e})") from None
    hits = {str(int(k)) if not isinstance(k, str) else k: (v.get("hit") if isinstance(v, dict) else None)
            for k, v in d.items()}
    ids = id_strings(df[_id_column(df, cache)])
    return df.assign(hit=[hits.get(k) for k in ids])


def _read_task_safe(task: Task):
    try:
        return read_task(task)
    except ReaderError as e:
        return {"error": str(e), "model": task.model, "dataset": task.dataset}


def read_all(tasks: list[Task], workers: int = 2, progress: bool = True) -> list[dict]:
    """Read every task, in `workers` processes (xlsx parsing and token counting are CPU-bound)."""
    from tqdm.auto import tqdm

    jobs = list(tasks)
    bar = dict(total=len(jobs), desc="reading VLMEvalKit files", unit="file", disable=not progress)
    if workers <= 1 or len(jobs) < 4:
        return [_read_task_safe(j) for j in tqdm(jobs, **bar)]
    from vlrb.data.tokens import _encoder

    _encoder()  # load the BPE ranks once (~2-6 s) before forking, instead of once per worker
    # biggest files first keeps both processes busy to the end
    order = sorted(range(len(jobs)), key=lambda i: -(jobs[i].eval_file or jobs[i].pred_file).stat().st_size)
    results: list = [None] * len(jobs)
    with ProcessPoolExecutor(max_workers=workers) as ex:
        for i, res in tqdm(zip(order, ex.map(_read_task_safe, [jobs[i] for i in order], chunksize=1)), **bar):
            results[i] = res
    return results
