"""The correctness families: one `Family` record per rule, in one registry (`FAMILIES`).

Every dataset names its family (`DatasetSpec.family`). A family is how the VLMEvalKit files of a dataset are
read and scored: which file of a model's run holds the per-sample evaluation, which columns of it the scorer
reads, and the scorer itself (VLMEvalKit b55f788e's rules, in vlrb.data.correctness). The reader and the build's
messages read this table; the demo generator keeps its own planners and renderers under the same names
(vlrb.demo.families).

A user's own rule is one more record of the same kind, made from plain values by `user_family`
(`data.families.<name>` in a build config) and handed to the build beside this registry; nothing is
registered globally.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import inspect
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from vlrb.data.answers import extract_answer, free_form_format
from vlrb.data.correctness import (CorrectnessError, _is_missing, _options, _score_anls, _score_hit, _score_mathvision,
                                   _score_mathvista, _score_ocrbench, _score_vqa, _unit_scores, can_infer, failed_mask)
from vlrb.data.inputs import BuildError

Scorer = Callable[[pd.DataFrame, list, str], np.ndarray]  # (file, chosen columns, dataset) -> scores
# (file) -> (answer, answer_format, n_options) per row: each model's final answer as the family's rule reads it
AnswerReader = Callable[[pd.DataFrame], tuple[list, list, list]]


@dataclass(frozen=True)
class Family:
    name: str
    # the result columns the scorer reads, as groups of alternatives (first = preferred)
    columns: tuple[tuple[str, ...], ...]
    # the per-sample evaluation file: what follows "<model>_<dataset>" in its name (full match);
    # None: VLMEvalKit writes none, and the prediction file itself is scored
    eval_file: re.Pattern[str] | None
    scorer: Scorer
    # a judge's cache that stands in for a missing evaluation file (same naming rule)
    judge_cache: re.Pattern[str] | None = None
    declared_in: str | None = None  # a user's rule: the config key that declared it; None: vlrb's own
    # each row's final answer as this rule reads it (docs/method.md#answers); None: the prediction's text
    answers: AnswerReader | None = None


_JUDGE_FILE = re.compile(r"_[^_]+\.xlsx")  # the judge's file "_<judge>.xlsx" (e.g. _gpt-4o-mini.xlsx) with `res`

# ----------------------------------------------------------------------------- answers (docs/method.md#answers)

def _column(df: pd.DataFrame, name: str) -> list:
    return df[name].tolist() if name in df.columns else [None] * len(df)


def _text(value) -> str:
    """A cell as text; a whole number that the xlsx stored as a float (3.0) as that number ("3")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if _is_missing(value) else str(value).strip()


def _answers_text(df: pd.DataFrame) -> tuple[list, list, list]:
    """vqa, anls, ocrbench and a user's rule: the answer text of the prediction."""
    answers = [extract_answer(p, "text") for p in _column(df, "prediction")]
    return answers, ["text"] * len(df), [0] * len(df)


def _letter_of(read, options: dict) -> str:
    """can_infer's letter when it is one of the item's options ("" for False, or for its refusal mark Z)."""
    return read if isinstance(read, str) and read in options else ""


def mcq_answer(prediction, options: dict) -> str:
    """The option letter VLMEvalKit's can_infer reads in a prediction ("" where it reads none of `options`)."""
    return _letter_of(can_infer(_text(prediction), options), options) if options else extract_answer(prediction, "choice")


def _answers_mcq(df: pd.DataFrame) -> tuple[list, list, list]:
    """The option letter that can_infer reads in the prediction, among the row's non-empty option columns A, B, ...
    (their number is the item's n_options)."""
    letters = []
    for c in (chr(ord("A") + i) for i in range(26)):
        if c not in df.columns:
            break
        letters.append(c)
    answers, nopt = [], []
    for pred, *cells in zip(_column(df, "prediction"), *(df[c].tolist() for c in letters)):
        options = {c: _text(v) for c, v in zip(letters, cells) if _text(v)}
        answers.append(mcq_answer(pred, options))
        nopt.append(len(options))
    return answers, ["choice"] * len(df), nopt


def _answers_yorn(df: pd.DataFrame) -> tuple[list, list, list]:
    """Yes or no: the `extracted` column of the auxmatch file (VLMEvalKit's YOrN_Extraction; Unknown is none),
    else read from the prediction."""
    if "extracted" in df.columns:
        answers = [a if a in ("yes", "no") else "" for a in (_text(v).lower() for v in df["extracted"])]
    else:
        answers = [extract_answer(p, "yesno") for p in _column(df, "prediction")]
    return answers, ["yesno"] * len(df), [0] * len(df)


def judged_answer(res, choices, gold) -> tuple[str, str, int]:
    """(answer, format, n_options) of a math judge's extraction `res` (inside \\boxed{} when boxed, as the rules
    read it): the letter can_infer reads in it where the item has `choices`, else the extraction itself."""
    res = _text(res)
    boxed = re.search(r"\\boxed\{([^}]*)\}", res)
    res = boxed.group(1).strip() if boxed else res
    options = _options(choices) if not isinstance(choices, dict) else choices
    if options:
        return _letter_of(can_infer(res, options), options), "choice", len(options)
    return res, free_form_format(gold), 0


def _answers_mathvista(df: pd.DataFrame) -> tuple[list, list, list]:
    """The judge's `res`: an option letter on multi_choice items, else the number (answer types integer and float;
    text and list items are text)."""
    out = []
    for res, qtype, atype, choices in zip(_column(df, "res"), _column(df, "question_type"),
                                          _column(df, "answer_type"), _column(df, "choices")):
        if qtype == "multi_choice":
            out.append(judged_answer(res, choices, None))
        else:
            out.append((_text(res), "number" if atype in ("integer", "float") else "text", 0))
    return tuple(map(list, zip(*out))) if out else ([], [], [])


def _answers_mathvision(df: pd.DataFrame) -> tuple[list, list, list]:
    """The judge's `res`: a letter where the item has choices, else the number (text where the gold is none)."""
    out = [judged_answer(*row) for row in zip(_column(df, "res"), _column(df, "choices"), _column(df, "answer"))]
    return tuple(map(list, zip(*out))) if out else ([], [], [])


_CHOICE_LINE = re.compile(r"(?m)^\s*\(?([A-Z])\)?\s*[:.)]\s*(\S.*)$")


def mathverse_answer(text, gold, question, judged: bool = True) -> tuple[str, str, int]:
    """(answer, format, n_options) of MathVerse's judge extraction (`judged`; else a prediction to read): a letter
    where the gold is one (options listed after "Choices:" in the question, when it still shows them), else the
    number (text where the gold is none)."""
    text, gold, question = _text(text), _text(gold), _text(question)
    options = dict(_CHOICE_LINE.findall(question.split("Choices:", 1)[1])) if "Choices:" in question else {}
    if re.fullmatch(r"[A-Z]", gold):
        return (mcq_answer(text, options) if options else extract_answer(text, "choice")), "choice", len(options)
    fmt = free_form_format(gold)
    return (text if judged else extract_answer(text, fmt)), fmt, 0


def _answers_mathverse(df: pd.DataFrame) -> tuple[list, list, list]:
    """The judge's `extract` (else read from the prediction)."""
    judged = "extract" in df.columns
    out = [mathverse_answer(t, g, q, judged) for t, g, q in
           zip(_column(df, "extract" if judged else "prediction"), _column(df, "answer"), _column(df, "question"))]
    return tuple(map(list, zip(*out))) if out else ([], [], [])


def read_answers(fam: Family, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(answer, answer_format, n_options) per row of an evaluation file; a failed call has no answer ("")."""
    answers, fmt, nopt = (fam.answers or _answers_text)(df)
    answers = np.asarray(answers, dtype=object)
    if "prediction" in df.columns:
        answers[failed_mask(df["prediction"])] = ""
    return answers, np.asarray(fmt, dtype=object), np.asarray(nopt, dtype=np.int64)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("mcq", columns=(("hit",),), eval_file=re.compile(r"_.+_result\.xlsx"), scorer=_score_hit,
               judge_cache=re.compile(r"_.+_result\.pkl"), answers=_answers_mcq),  # cache: {index: {hit, log}}
        Family("yorn", columns=(("score",),), eval_file=re.compile(r"_auxmatch\.xlsx"), scorer=_score_hit,
               answers=_answers_yorn),
        Family("vqa", columns=(("eval_match", "eval_score"),), eval_file=re.compile(r"_results\.xlsx"),
               scorer=_score_vqa),
        # eval_score is a mean *distance* for ANLS datasets, so there is no fallback (the ANLS trap)
        Family("anls", columns=(("eval_match",),), eval_file=re.compile(r"_results\.xlsx"), scorer=_score_anls),
        Family("ocrbench", columns=(("prediction",), ("answer",), ("category",)), eval_file=None,
               scorer=_score_ocrbench),
        Family("mathvista", columns=(("res",), ("answer",), ("question_type",), ("answer_type",), ("choices",),
                                     ("answer_option",)), eval_file=_JUDGE_FILE, scorer=_score_mathvista,
               answers=_answers_mathvista),
        Family("mathvision", columns=(("res",), ("answer",), ("choices",)), eval_file=_JUDGE_FILE,
               scorer=_score_mathvision, answers=_answers_mathvision),
        # the judge's stage-2 file "_<judge>_score.xlsx" with `score`
        Family("mathverse", columns=(("score",),), eval_file=re.compile(r"_[^_]+_score\.xlsx"), scorer=_score_hit,
               answers=_answers_mathverse),
    ]
}


def get_family(name: str, dataset: str = "", families: Mapping[str, Family] | None = None) -> Family:
    """The family called `name` (vlrb's own, or one of `families`), or a CorrectnessError listing the known ones."""
    fam = (families or {}).get(name) or FAMILIES.get(name)
    if fam is None:
        known = [*FAMILIES, *(families or {})]
        raise CorrectnessError(f"{_label(name, dataset)}: unknown correctness family; known: {', '.join(known)}")
    return fam


# ----------------------------------------------------------------------------- a user's own rule

USER_RULE_KEYS = ("eval_file", "columns", "scorer")


def user_family(name: str, record: Mapping, where: str | None = None) -> Family:
    """A correctness rule of the user's own, from plain values (`data.families.<name>` of a build config):

    columns:   the columns of the evaluation file the scorer reads, in order; each a column name, or a list of
               alternatives (the first present one is read)
    eval_file: what follows "<model>_<dataset>" in the evaluation file's name, a glob (`*`: any text), e.g.
               "_myjudge.xlsx"; absent or None: the prediction file "<model>_<dataset>.xlsx" itself is scored
    scorer:    a function (frame, columns, dataset) -> one score per row in [0, 1] (NaN: undetermined), where
               `columns` are the chosen column names; absent or None: the first column is the score (0/1,
               true/false, or a number in [0, 1])

    The build treats the scores as it treats vlrb's own: failed predictions score 0, Y = score >=
    data.binarize_threshold, undetermined scores are counted wrong and reported.
    """
    where = where or f"data.families.{name}"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise BuildError(f"{where}: a family name is letters, digits, '_', '.' and '-' (got {name!r})")
    if name in FAMILIES:
        raise BuildError(f"{where}: {name!r} is one of vlrb's own families ({', '.join(FAMILIES)}); give your "
                         f"rule another name")
    if not isinstance(record, Mapping):
        raise BuildError(f"{where}: a rule is a mapping of {', '.join(USER_RULE_KEYS)} (got {record!r})")
    unknown = [k for k in record if k not in USER_RULE_KEYS]
    if unknown:
        raise BuildError(f"{where}: unknown key(s) {unknown}; a rule has {', '.join(USER_RULE_KEYS)}")
    columns = _user_columns(record.get("columns"), where)
    eval_file = record.get("eval_file")
    if eval_file is not None and (not isinstance(eval_file, str) or not eval_file or "/" in eval_file):
        raise BuildError(f"{where}.eval_file: what follows '<model>_<dataset>' in a file name, e.g. "
                         f"'_myjudge.xlsx' (a glob; null: the prediction file), got {eval_file!r}")
    scorer = record.get("scorer")
    if scorer is not None and not callable(scorer):
        raise BuildError(f"{where}.scorer must be a function (frame, columns, dataset) -> scores, got {scorer!r}; "
                         f"a `_target_` in a config is imported by the job (build_data.py), not by the library")
    return Family(name, columns, re.compile(fnmatch.translate(eval_file)) if eval_file else None,
                  scorer if scorer is not None else _score_column, declared_in=where)


def user_families(records: Mapping[str, Mapping] | None) -> dict[str, Family]:
    """`data.families` (name -> rule record, see `user_family`) as Family records."""
    if records is not None and not isinstance(records, Mapping):
        raise BuildError(f"data.families: a mapping of rule name -> rule (got {records!r})")
    return {name: user_family(name, rec) for name, rec in (records or {}).items()}


def _user_columns(columns, where: str) -> tuple[tuple[str, ...], ...]:
    if isinstance(columns, str):
        columns = [columns]
    groups = [[c] if isinstance(c, str) else c for c in (columns or [])]
    if not groups or not all(isinstance(g, (list, tuple)) and g and all(isinstance(c, str) and c for c in g)
                             for g in groups):
        raise BuildError(f"{where}.columns: the columns the scorer reads, e.g. [verdict] or [[score, hit]] "
                         f"(alternatives), got {columns!r}")
    return tuple(tuple(g) for g in groups)


def _score_column(df: pd.DataFrame, cols: list[str], dataset: str) -> np.ndarray:
    """A declared rule without a scorer: its first column is the score (0/1, true/false, or in [0, 1])."""
    scores = _unit_scores(df[cols[0]])
    bad = ~np.isnan(scores) & ((scores < 0) | (scores > 1))
    if bad.any():
        raise CorrectnessError(f"column {cols[0]!r} must hold 0/1, true/false or a score in [0, 1]; got "
                               f"{df[cols[0]][bad].head(3).tolist()}; a rule with a scorer can map other values")
    return scores


def rule_identity(fam: Family) -> dict:
    """What a build's fingerprint records of a rule: changing its file, its columns or its scorer's code rebuilds."""
    fn, args = fam.scorer, []
    while isinstance(fn, functools.partial):
        args.append(repr((fn.args, sorted(fn.keywords.items()))))
        fn = fn.func
    try:
        code = inspect.getsource(fn)
    except (OSError, TypeError):
        code = repr(getattr(getattr(fn, "__code__", None), "co_code", fn))
    return {"columns": fam.columns, "eval_file": fam.eval_file.pattern if fam.eval_file else None,
            "scorer": f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}",
            "arguments": args, "code_sha256": hashlib.sha256(code.encode()).hexdigest()}


# ----------------------------------------------------------------------------- scoring a file

def required_columns(family: str | Family) -> tuple[str, ...]:
    """The (preferred) columns that a family's evaluation file must have."""
    fam = family if isinstance(family, Family) else get_family(family)
    return tuple(group[0] for group in fam.columns)


def score_frame(family: str | Family, df: pd.DataFrame, dataset: str = "") -> np.ndarray:
    """Raw score in [0, 1] per row of an evaluation file; failed predictions score 0."""
    return score_frame_undetermined(family, df, dataset)[0]


def score_frame_undetermined(family: str | Family, df: pd.DataFrame, dataset: str = "") -> tuple[np.ndarray, np.ndarray]:
    """`score_frame`, plus a mask of the rows whose score could not be determined.

    Undetermined: the family's score cell is blank, unreadable, or a formula without a cached value
    (which an xlsx reader sees as blank). They score 0 as in VLMEvalKit, but the caller counts them so
    they are never silent. Failed predictions are not undetermined: they are wrong and counted apart.
    """
    fam = family if isinstance(family, Family) else get_family(family, dataset)
    cols = _resolve_columns(fam, df, dataset)
    raw = _run_scorer(fam, df, cols, dataset) if fam.declared_in else np.asarray(fam.scorer(df, cols, dataset),
                                                                               dtype=np.float64)
    undetermined = np.isnan(raw)
    scores = np.clip(np.nan_to_num(raw, nan=0.0), 0.0, 1.0)
    if "prediction" in df.columns:
        failed = failed_mask(df["prediction"])
        scores[failed] = 0.0
        undetermined &= ~failed
    return scores, undetermined


def _run_scorer(fam: Family, df: pd.DataFrame, cols: list[str], dataset: str) -> np.ndarray:
    """A user's scorer: whatever goes wrong in it becomes one CorrectnessError naming the rule."""
    label = f"{_label(fam.name, dataset)} [{fam.declared_in}]"
    try:
        raw = np.asarray(fam.scorer(df, cols, dataset), dtype=np.float64)
    except CorrectnessError as e:
        raise CorrectnessError(f"{label}: {e}") from None
    except Exception as e:  # noqa: BLE001 - the user's code: report it as the rule's error, with the file
        raise CorrectnessError(f"{label}: the scorer failed ({type(e).__name__}: {e})") from None
    if raw.shape != (len(df),):
        raise CorrectnessError(f"{label}: the scorer returned {raw.shape} values for {len(df)} rows; it must "
                               f"return one score per row")
    return raw


def _label(family: str, dataset: str) -> str:
    return f"{dataset} ({family})" if dataset else f"({family})"


def _resolve_columns(fam: Family, df: pd.DataFrame, dataset: str) -> list[str]:
    """The first present column of each alternative group, or a CorrectnessError."""
    chosen = []
    for group in fam.columns:
        present = [c for c in group if c in df.columns]
        if not present:
            raise CorrectnessError(
                f"{_label(fam.name, dataset)}: evaluation file lacks column '{group[0]}'; "
                f"expected one of {list(group)}; columns present: {list(df.columns)}"
            )
        chosen.append(present[0])
    return chosen
