"""The result-folder reader (`data=results`; `data=mathv` for a clone of the MATH-Vision repository).

Many evaluation repositories publish one file of per-item results per model beside one file of items:

    <dir>/<items>                    one row per item: id, question, image path (relative to <dir>), ...
    <dir>/<results glob>             one JSONL file per model; the file's stem is the model id; one row
                                     per item: id, correctness (true/false or 0/1), response
                                     [, input_tokens, output_tokens, cost]

MATH-Vision (github.com/mathllm/MATH-V) is laid out so: `data/test.jsonl` and
`outputs/<group>/<family>/<config>.jsonl` with fields `id`, `response`, `correct`. Every field name is a
config key (`data.fields.*`), so other repositories that differ only in names read the same way.

The folder becomes a records table (one row per (item, model)) checked by the records reader
(vlrb.data.records.records_inputs): the same rules for correctness values, token counts, costs, image
paths (confined to <dir> or `data.image_roots`) and the model pool. Input tokens are counted per row:
prompt tokens, plus 256 per image for models that see it, so a text-only model (`data.text_only_models`)
is not billed for an image it never read.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from vlrb.data.answers import extract_many, free_form_format
from vlrb.data.inputs import BuildError, Inputs
from vlrb.data.datasets import IMAGE_TOKENS
from vlrb.data.tokens import count_many
from vlrb.pricing import PriceTable

OPTION_TEXTS = "_option_texts"  # a working column of the items: each option's text, lower-cased
ITEM_FORMATS = (".jsonl", ".json", ".csv", ".parquet")
PER_ROW = ("input_tokens", "output_tokens", "cost")  # optional result-file fields, used where present


def read_results(data_cfg, prices: PriceTable | None, progress: bool = True) -> Inputs:
    from vlrb.data.records import records_inputs

    root = Path(str(data_cfg["dir"])).expanduser()
    if not root.is_dir():
        raise BuildError(f"data.dir={root}: not a folder (the results folder: items file + per-model result files)")
    f = fields(data_cfg)
    items = read_items(root, data_cfg, f)
    files = result_files(root, str(data_cfg["results"]))
    text_only = {str(m) for m in data_cfg.get("text_only_models") or []}
    if text_only and not text_only & set(files):  # none matches: a typo, not a clone that lacks some files
        raise BuildError(f"data.text_only_models names {sorted(text_only)}, none of which has a result file under "
                         f"{root} (models: {', '.join(sorted(files)[:8])}{', ...' if len(files) > 8 else ''}); "
                         f"correct the names or leave data.text_only_models empty")

    frames = [read_result_file(path, model, f, items) for model, path in files.items()]
    table = pd.concat(frames, ignore_index=True)
    item = items.loc[table["item"].to_numpy()].reset_index(drop=True)
    table = pd.concat([table.drop(columns="item"), item], axis=1)
    if {"answer", "prediction"} & set(table.columns):
        table["answer"] = _answers(table)
    table = table.drop(columns=[OPTION_TEXTS], errors="ignore")
    if "input_tokens" not in table.columns or table["input_tokens"].isna().any():
        counted = _input_tokens(table, items, text_only)
        table["input_tokens"] = table["input_tokens"].fillna(pd.Series(counted)) if "input_tokens" in table else counted
    report = {"dir": str(root), "items_file": str(root / str(data_cfg["items"])), "result_files": len(files),
              "text_only_models": sorted(text_only & set(files)),
              "text_only_models_without_results": sorted(text_only - set(files))}
    return records_inputs(table, data_cfg, prices, root, base=root.resolve(), reader="results",
                          files=[str(root / str(data_cfg["items"]))] + [str(p) for p in files.values()], report=report)


def fields(data_cfg) -> dict:
    """data.fields with its defaults (MATH-V's names)."""
    f = {"id": "id", "prompt": "question", "options": "options", "image": "image", "dataset": None, "group": None,
         "correct": "correct", "response": "response", "answer": "model_answer", "gold": "answer"}
    f.update({k: v for k, v in dict(data_cfg.get("fields") or {}).items()})
    for k in ("id", "prompt", "correct"):
        if not f.get(k):
            raise BuildError(f"data.fields.{k} must name a field (got {f.get(k)!r})")
    return f


# ----------------------------------------------------------------------------- items

def read_items(root: Path, data_cfg, f: dict) -> pd.DataFrame:
    """Items indexed by their id (text): sample_id, dataset, group, prompt, image."""
    path = root / str(data_cfg["items"])
    if not path.is_file():
        raise BuildError(f"data.items: {path} does not exist (the file of items: id, question, image ...)")
    if path.suffix.lower() not in ITEM_FORMATS:
        raise BuildError(f"{path}: unsupported items format {path.suffix!r} (use {', '.join(ITEM_FORMATS)})")
    try:
        if path.suffix.lower() == ".parquet":
            df = pd.read_parquet(path)
        elif path.suffix.lower() == ".csv":
            df = pd.read_csv(path, dtype={f["id"]: str}, keep_default_na=False, na_values=[""])
        else:
            df = pd.DataFrame(_json_rows(path))
    except (OSError, ValueError) as e:
        raise BuildError(f"{path}: cannot read items ({type(e).__name__}: {e})") from None
    # options are optional (free-form items have none); every other configured field must exist
    need = [f"{f[k]!r} (data.fields.{k})" for k in ("id", "prompt", "image", "dataset", "group")
            if f.get(k) and f[k] not in df.columns]
    if need:
        raise BuildError(f"{path}: items lack the field(s) {', '.join(need)}; found {list(df.columns)[:12]} "
                         f"(set data.fields.image=null for items without images)")
    ids = df[f["id"]].astype(str).str.strip()
    if (ids == "").any() or df[f["id"]].isna().any():
        first = int(np.flatnonzero((ids == "") | df[f["id"]].isna())[0]) + 1
        raise BuildError(f"{path}: field {f['id']!r} is empty on item {first}")
    dup = ids.duplicated()
    if dup.any():
        raise BuildError(f"{path}: duplicate item id(s) {ids[dup].head(3).tolist()}; an id names one item")
    prefix = str(data_cfg.get("id_prefix") or data_cfg["name"])
    dataset = (df[f["dataset"]].astype(str) if f.get("dataset")
               else pd.Series(str(data_cfg.get("dataset") or data_cfg["name"]), index=df.index))
    prompt = df[f["prompt"]].fillna("").astype(str)
    if f.get("options") and f["options"] in df.columns:
        prompt = prompt + df[f["options"]].map(format_options)
    out = pd.DataFrame({"sample_id": (prefix + "/" + ids).to_numpy(), "dataset": dataset.to_numpy(),
                        "prompt": prompt.to_numpy(), **_item_formats(df, f)},
                       index=pd.Index(ids.to_numpy(), name="id"))
    if f.get("options") and f["options"] in df.columns:  # to read an answer that names an option by its text
        out[OPTION_TEXTS] = df[f["options"]].map(_option_texts).to_numpy()
    if f.get("image"):
        out["image"] = df[f["image"]].where(df[f["image"]].notna(), None).to_numpy()
    if f.get("group"):
        g = df[f["group"]]
        # a numeric column (MATH-V's `level`) reads better as "level 3" than as "3" in per-group tables
        g = f["group"] + " " + g.astype(str) if pd.api.types.is_numeric_dtype(g) else g.astype(str)
        out["group"] = g.to_numpy()
    return out


def format_options(options) -> str:
    """MATH-V's `options` list as the lines a model is shown: "\\nOptions: (A) 3 (B) 4 ..."; [] -> ""."""
    if options is None or (isinstance(options, float) and np.isnan(options)):
        return ""
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except ValueError:
            return "\nOptions: " + options
    opts = [str(o) for o in list(options)]
    if not opts:
        return ""
    return "\nOptions: " + " ".join(f"({chr(ord('A') + i)}) {o}" for i, o in enumerate(opts))


def _n_options(options) -> int:
    """How many options an item lists: a list (or its JSON text); other text: some, number unknown (-1)."""
    if options is None or (isinstance(options, float) and np.isnan(options)):
        return 0
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except ValueError:
            return -1 if options.strip() else 0
    return len(options) if isinstance(options, (list, tuple, np.ndarray)) else -1


def _item_formats(df: pd.DataFrame, f: dict) -> dict:
    """Each item's answer format (docs/method.md#answers): choice among its options where it lists some, else a
    number (text where the gold answer, data.fields.gold, is no number)."""
    n = (df[f["options"]].map(_n_options).to_numpy(np.int64)
         if f.get("options") and f["options"] in df.columns else np.zeros(len(df), np.int64))
    gold = df[f["gold"]].tolist() if f.get("gold") and f["gold"] in df.columns else ["0"] * len(df)
    fmt = np.where(n != 0, "choice", [free_form_format(g) for g in gold]).astype(object)
    return {"answer_format": fmt, "n_options": np.maximum(n, 0)}


def _answers(table: pd.DataFrame) -> np.ndarray:
    """The result's own extraction (data.fields.answer) where it has one, else read from the response."""
    given = table["answer"] if "answer" in table.columns else pd.Series(None, index=table.index, dtype=object)
    response = table["prediction"] if "prediction" in table.columns else pd.Series(None, index=table.index)
    missing = given.isna().to_numpy()
    out = given.where(~missing, "").astype(str).str.strip().to_numpy(dtype=object)
    if missing.any():
        rows = table[missing]
        out[missing] = extract_many(response[missing].tolist(), rows["answer_format"].tolist(),
                                    rows["n_options"].tolist())
    if OPTION_TEXTS in table.columns:  # "<image2>" on an item whose options are ["<image2>", ...] is option A
        for i in np.flatnonzero(table["answer_format"].to_numpy() == "choice"):
            texts = table[OPTION_TEXTS].iat[i]
            key = str(out[i]).strip().lower()
            if texts and key in texts and len(key) > 1:
                out[i] = chr(ord("A") + texts.index(key))
    return out


def _option_texts(options) -> list[str]:
    """An item's options, lower-cased, as a list ([] for a free-form item)."""
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except ValueError:
            return []
    if not isinstance(options, (list, tuple, np.ndarray)):
        return []
    return [str(o).strip().lower() for o in options]


# ----------------------------------------------------------------------------- per-model result files

def result_files(root: Path, pattern: str) -> dict[str, Path]:
    """model id (the file's stem) -> file, for every file the glob matches; two files with one stem are an error."""
    found = sorted(p for p in root.glob(pattern) if p.is_file())
    if not found:
        raise BuildError(f"data.results={pattern!r} matches no file under {root} (one JSONL file per model)")
    out: dict[str, Path] = {}
    for p in found:
        if p.stem in out:
            raise BuildError(f"two result files give model {p.stem!r}: {out[p.stem]} and {p}; a file's stem is its "
                             f"model id, so rename one or narrow data.results")
        out[p.stem] = p
    return out


def read_result_file(path: Path, model: str, f: dict, items: pd.DataFrame) -> pd.DataFrame:
    """One model's rows: item (id), model_id, correct, prediction [, input_tokens, output_tokens, cost]."""
    rows = _json_rows(path)
    if not rows:
        raise BuildError(f"{path}: no result rows")
    df = pd.DataFrame(rows)
    for k in ("id", "correct"):
        if f[k] not in df.columns:
            raise BuildError(f"{path}: result rows need the field {f[k]!r} (data.fields.{k}); "
                             f"found {list(df.columns)[:12]}")
    missing = df[f["correct"]].isna().to_numpy()
    if missing.any():
        raise BuildError(f"{path}:{int(np.flatnonzero(missing)[0]) + 1}: field {f['correct']!r} is empty "
                         f"({int(missing.sum())} rows); every result needs its correctness")
    ids = df[f["id"]].astype(str).str.strip()
    unknown = ~ids.isin(items.index)
    if unknown.any():
        line = int(np.flatnonzero(unknown.to_numpy())[0]) + 1
        raise BuildError(f"{path}:{line}: item id {ids[unknown].iloc[0]!r} is not in the items file "
                         f"({int(unknown.sum())} such rows); is data.items the file these results were made from?")
    dup = ids.duplicated().to_numpy()
    if dup.any():
        line = int(np.flatnonzero(dup)[0]) + 1
        raise BuildError(f"{path}:{line}: item {ids[dup].iloc[0]!r} appears twice; one result per item and model")
    out = pd.DataFrame({"item": ids.to_numpy(), "model_id": model, "correct": df[f["correct"]].to_numpy()})
    if f.get("response") and f["response"] in df.columns:
        out["prediction"] = df[f["response"]].where(df[f["response"]].notna(), None).astype(object).to_numpy()
    if f.get("answer") and f["answer"] in df.columns:  # the result's own extraction (MATH-V's model_answer)
        out["answer"] = df[f["answer"]].where(df[f["answer"]].notna(), None).astype(object).to_numpy()
    for k in PER_ROW:
        if k in df.columns:
            out[k] = df[k].to_numpy()
    return out


def _json_rows(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file (or a JSON list); bad lines are an error naming file and line."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(text)
        except ValueError as e:
            raise BuildError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(rows, list):
            raise BuildError(f"{path}: expected a JSON list of objects")
        return rows
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise BuildError(f"{path}:{n}: not a JSON object ({e})") from None
        if not isinstance(row, dict):
            raise BuildError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _input_tokens(table: pd.DataFrame, items: pd.DataFrame, text_only: set[str]) -> np.ndarray:
    """Per row: the prompt's tokens (counted once per item), plus 256 per image unless the model is text-only."""
    per_item = pd.Series(count_many(items["prompt"].tolist()), index=items["sample_id"].to_numpy())
    text = per_item.reindex(table["sample_id"].to_numpy()).to_numpy(np.int64)
    has_image = (table["image"].fillna("").astype(str).str.strip() != "").to_numpy() if "image" in table else False
    sees_image = has_image & ~table["model_id"].isin(text_only).to_numpy()
    return text + IMAGE_TOKENS * sees_image.astype(np.int64)
