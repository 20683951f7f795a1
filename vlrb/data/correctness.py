"""Per-sample correctness for every VLMEvalKit dataset family (docs/method.md#correctness-y).

Each family's scorer (vlrb.data.families) turns one evaluation file (read into a DataFrame) into a raw
score in [0, 1] per row. Families whose file carries a per-sample column (mcq `hit`, yorn and
mathverse `score`, vqa/anls `eval_match`) are read vectorised; the families without one
(ocrbench, mathvista, mathvision) are recomputed row by row with VLMEvalKit's own rules at
commit b55f788e, quirks included, because those quirks are what VL-RouterBench's labels contain.

No `eval` of file contents anywhere: list literals go through `ast.literal_eval` or a
tokenizer, and the Python `eval` that VLMEvalKit's MathVision rule applies to answers is
emulated by a small evaluator of arithmetic ASTs (`_py_eval`). That evaluator and the LaTeX one
are bounded (text length, integer size, exponent, steps): an answer beyond the bounds scores NaN,
"undetermined", which the build counts as wrong and reports.
"""
from __future__ import annotations

import ast
import math
import re
from typing import Any

import numpy as np
import pandas as pd

from vlrb.data.safe_math import EvalLimitError, _latex_value, _py_eval

FAILED_MARKERS = ("Failed to obtain answer via API.", "Failed to obtain answer")

# MathVista float answers: VLMEvalKit b55f788e compares float(res) == float(answer) exactly, and so
# do we by default (parity with the labels VL-RouterBench was built from). True rounds both to the
# item's `precision` first (MathVista's own convention).
MATHVISTA_ROUND_TO_PRECISION = False

HANDWRITTEN_MATH = "Handwritten Mathematical Expression Recognition"


class CorrectnessError(ValueError):
    """An evaluation file cannot be scored (missing column, unknown family)."""


# --------------------------------------------------------------------------- public API


def failed_mask(predictions: pd.Series) -> np.ndarray:
    """True where the prediction carries one of VLMEvalKit's failed-call markers."""
    text = pd.Series(predictions).astype("string")
    mask = np.zeros(len(text), dtype=bool)
    for marker in FAILED_MARKERS:
        mask |= text.str.contains(marker, regex=False, na=False).to_numpy(dtype=bool)
    return mask


def main_rows_mask(df: pd.DataFrame) -> np.ndarray:
    """MMBench circular: True for the main rows (the ones VLMEvalKit's result file keeps)."""
    if "index" not in df.columns:
        raise CorrectnessError("MMBench (mcq): evaluation file lacks column 'index'")
    index = pd.to_numeric(df["index"], errors="coerce")
    if "g_index" in df.columns:
        main = index == pd.to_numeric(df["g_index"], errors="coerce")
    else:
        main = index < 1_000_000  # rotated copies are index + k * 1e6
    return main.to_numpy(dtype=bool)


def binarize(scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """0/1 correctness from raw (possibly fractional) scores: score >= threshold."""
    return (np.asarray(scores, dtype=np.float64) >= threshold).astype(np.int8)


# --------------------------------------------------------------------------- vectorised families


def _unit_scores(values: pd.Series) -> np.ndarray:
    """0/1 or bool scores, also as text ("True", "false", "1"); anything else (blank too) is NaN."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    numeric = pd.to_numeric(values, errors="coerce")
    words = values.astype("string").str.strip().str.lower().map({"true": 1.0, "false": 0.0})
    return numeric.fillna(words.astype("float64")).to_numpy(dtype=np.float64, na_value=np.nan)


_NUMPY_REPR = re.compile(r"np\.(?:(True|False)_|\w+\()")  # np.float64(0.5), np.True_
_LIST_PUNCT = str.maketrans("", "", "[]()'\" \t\r\n")


def _list_stat(texts: pd.Series, how: str) -> np.ndarray:
    """Aggregate (mean/max/min) each row's number list, e.g. "[1.0, 0.5]" or "[True, False]".

    Each distinct text is parsed once (lists repeat a lot) by splitting on commas, never by
    eval; the per-row work is C-level string methods. Rows without any number give NaN.
    """
    codes, uniques = pd.factorize(pd.Series(texts).astype("string"))
    stats = _unique_list_stat(uniques.to_numpy(dtype=object).tolist(), how)
    out = np.full(len(codes), np.nan)
    known = codes >= 0  # -1: missing cell
    out[known] = stats[codes[known]]
    return out


def _unique_list_stat(texts: list[str], how: str) -> np.ndarray:
    rows = [_NUMPY_REPR.sub(r"\1", t) if "np." in t else t for t in texts]
    rows = [t.translate(_LIST_PUNCT).replace("True", "1").replace("False", "0") for t in rows]
    counts = np.fromiter((r.count(",") + 1 if r else 0 for r in rows), np.int64, len(rows))
    tokens = ",".join(r for r in rows if r).split(",")
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:  # a non-number token: it counts as missing
        values = pd.to_numeric(pd.Series(tokens), errors="coerce").to_numpy(dtype=np.float64)
    stats = np.full(len(rows), np.nan)
    has = counts > 0
    if not has.any():
        return stats
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))[has]
    with np.errstate(invalid="ignore", divide="ignore"):
        if how == "mean":
            valid = ~np.isnan(values)
            stats[has] = (np.add.reduceat(np.where(valid, values, 0.0), starts)
                          / np.add.reduceat(valid.astype(np.float64), starts))
        else:  # fmax/fmin skip NaN
            stats[has] = {"max": np.fmax, "min": np.fmin}[how].reduceat(values, starts)
    return stats


def _score_hit(df: pd.DataFrame, cols: list[str], dataset: str) -> np.ndarray:
    return _unit_scores(df[cols[0]])


def _score_vqa(df: pd.DataFrame, cols: list[str], dataset: str) -> np.ndarray:
    if cols[0] == "eval_score":  # no per-answer list: eval_score is already the mean
        scores = pd.to_numeric(df["eval_score"], errors="coerce").to_numpy(dtype=np.float64)
    else:
        # VLMEvalKit hit_calculate: relaxed accuracy takes the best gold answer for ChartQA,
        # VQA accuracy the mean over gold answers elsewhere.
        scores = _list_stat(df["eval_match"], "max" if "ChartQA" in dataset else "mean")
    return np.nan_to_num(scores, nan=0.0)  # a cell without a number scores 0


def _score_anls(df: pd.DataFrame, cols: list[str], dataset: str) -> np.ndarray:
    # eval_match holds normalised Levenshtein distances; ANLS keeps 1 - d only when >= 0.5
    best = 1.0 - _list_stat(df["eval_match"], "min")
    return np.where(np.isnan(best), np.nan, np.where(best >= 0.5, best, 0.0))  # NaN: blank cell


# --------------------------------------------------------------------------- OCRBench


def _gold_list(value: Any) -> list[str]:
    """OCRBench `answer`: a Python list literal, or a plain string."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if _is_missing(value):
        return []
    try:
        parsed = ast.literal_eval(str(value))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return [str(value)]
    if isinstance(parsed, (list, tuple, set)):
        return [str(v) for v in parsed]
    return [str(value)]


def _ocr_math_norm(text: str) -> str:
    return text.strip().replace("\n", " ").replace(" ", "")


def _ocr_text_norm(text: str) -> str:
    return text.lower().strip().replace("\n", " ")


def ocrbench_correct(prediction: Any, answers: Any, category: str) -> bool:
    """VLMEvalKit OCRBench: any gold answer is a substring of the normalised prediction."""
    # LaTeX spacing is arbitrary, so formulas drop all spaces but keep their case
    norm = _ocr_math_norm if category == HANDWRITTEN_MATH else _ocr_text_norm
    pred = norm(str(prediction))
    return any(norm(gold) in pred for gold in _gold_list(answers))


def _score_ocrbench(df: pd.DataFrame, cols: list[str], dataset: str) -> np.ndarray:
    rows = zip(df["prediction"].to_numpy(), df["answer"].to_numpy(), df["category"].to_numpy())
    return np.fromiter((ocrbench_correct(p, a, c) for p, a, c in rows), np.float64, len(df))


# --------------------------------------------------------------------------- option matching


_OPTION_PUNCT = str.maketrans({c: " " for c in ".()[],:;!*#{}"})
_REJECTIONS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)


def can_infer_option(answer: str, choices: dict[str, Any]) -> str | bool:
    """VLMEvalKit can_infer_option: exactly one option letter standing alone as a word."""
    if "Failed to obtain answer via API" in answer:
        return False
    if any(r in answer for r in _REJECTIONS):
        return "Z"
    words = answer.translate(_OPTION_PUNCT).split()
    found = [k for k in choices if k in words]
    if len(found) == 1:
        return found[0]
    if not found and "Z" in words:
        return "Z"
    return False


def can_infer_text(answer: str, choices: dict[str, Any]) -> str | bool:
    """VLMEvalKit can_infer_text: exactly one option text occurs (case-insensitively) in the answer.

    Answers longer than twice the options' total length are refused. Otherwise it is a plain
    substring search: with options drawn as bare letters, the word "none" contains "e" and so
    reads as option E (a real quirk of the rule).
    """
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return False
    found = [k for k, v in choices.items() if str(v).lower() in answer]
    return found[0] if len(found) == 1 else False


def can_infer(answer: Any, choices: dict[str, Any]) -> str | bool:
    answer = str(answer)
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)


def _options(choices: Any) -> dict[str, Any]:
    """`choices` list literal -> {"A": text, "B": text, ...}; unparsable -> {}."""
    if isinstance(choices, (list, tuple)):
        items = list(choices)
    else:
        try:
            items = ast.literal_eval(str(choices))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return {}
        if not isinstance(items, (list, tuple)):
            return {}
    return {chr(65 + i): v for i, v in enumerate(items)}


# --------------------------------------------------------------------------- MathVista


def mathvista_correct(res: Any, question_type: Any, answer_type: Any, answer: Any,
                      choices: Any, answer_option: Any, precision: Any = None) -> bool:
    """VLMEvalKit MathVista post_check(prefetch=False) on the extracted answer `res`.

    Quirk kept: answer types other than integer/float (text, list) are never correct, because
    the code compares str(None) with the answer.
    """
    res = "" if _is_missing(res) else res
    if question_type == "multi_choice":
        return can_infer(res, _options(choices)) == answer_option
    try:
        if answer_type == "integer":
            return int(res) == int(answer)
        if answer_type == "float":
            if MATHVISTA_ROUND_TO_PRECISION and not _is_missing(precision):
                digits = int(float(precision))
                return round(float(res), digits) == round(float(answer), digits)
            return float(res) == float(answer)
    except (ValueError, TypeError, OverflowError):
        return False
    return False


def _score_mathvista(df: pd.DataFrame, cols: list[str], dataset: str) -> np.ndarray:
    precision = df["precision"] if "precision" in df.columns else pd.Series([None] * len(df))
    rows = zip(df["res"].to_numpy(), df["question_type"].to_numpy(), df["answer_type"].to_numpy(),
               df["answer"].to_numpy(), df["choices"].to_numpy(), df["answer_option"].to_numpy(),
               precision.to_numpy())
    return np.fromiter((mathvista_correct(*r) for r in rows), np.float64, len(df))


# --------------------------------------------------------------------------- MathVision

_BOXED = re.compile(r"\\boxed\{([^}]*)\}")


def mathvision_correct(res: Any, answer: Any, choices: Any) -> bool | None:
    """VLMEvalKit MathVision post_check(prefetch=False) on the extracted answer `res`.

    Multiple choice: the option letter found by can_infer must equal `answer`. Free form: the
    lower-cased texts are equal, or numerically equal (is_equal). An empty `res` (VLMEvalKit
    would crash on it) is wrong. None: undetermined (the answer exceeds the evaluator's bounds).
    """
    response = "" if _is_missing(res) else str(res)
    boxed = _BOXED.search(response)
    if boxed:
        response = boxed.group(1)
    options = _options(choices)
    if options:
        return is_equal(can_infer(response, options), answer)
    return is_equal(response, answer)


def is_equal(asw: Any, gt_asw: Any) -> bool | None:
    """VLMEvalKit mathv.is_equal: same text, or |eval(gt) - eval(asw)| < 1e-6, or so via LaTeX.

    Its `eval` runs inside the function, so the answer text "a" names the local variable that
    holds the evaluated gold value and equals every numeric gold answer; `_py_eval` keeps that.
    The LaTeX step (latex2sympy2 there) is emulated by `_latex_value`: the sympy result is
    eval'd again without sympy names, so it only ever succeeds for rational arithmetic.

    None: neither step found the texts equal and one of them stopped at an evaluation bound
    (`EvalLimitError`). VLMEvalKit's 30 s timeout makes such answers wrong there; here they are
    also reported, as undetermined.
    """
    asw = str(asw).lower().strip()
    gt_asw = str(gt_asw).lower().strip()
    if gt_asw == asw:
        return True
    limited = False
    local = {"asw": asw, "gt_asw": gt_asw}
    try:
        local["a"] = _py_eval(gt_asw, local)
        if abs(local["a"] - _py_eval(asw, local)) < 1e-6:
            return True
    except EvalLimitError:
        limited = True
    except Exception:  # any failure of eval or arithmetic means "not equal" there too
        pass
    try:
        if abs(_latex_value(gt_asw) - _latex_value(asw)) < 1e-6:
            return True
    except EvalLimitError:
        limited = True
    except Exception:
        pass
    return None if limited else False


def _score_mathvision(df: pd.DataFrame, cols: list[str], dataset: str) -> np.ndarray:
    rows = zip(df["res"].to_numpy(), df["answer"].to_numpy(), df["choices"].to_numpy())
    return np.fromiter((np.nan if (ok := mathvision_correct(*r)) is None else ok for r in rows),
                       np.float64, len(df))


# --------------------------------------------------------------------------- helpers

def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)
