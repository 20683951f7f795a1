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

from vlrb.data.correctness import (CorrectnessError, _score_anls, _score_hit, _score_mathvision, _score_mathvista,
                                   _score_ocrbench, _score_vqa, _unit_scores, failed_mask)
from vlrb.data.inputs import BuildError

Scorer = Callable[[pd.DataFrame, list, str], np.ndarray]  # (file, chosen columns, dataset) -> scores


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


_JUDGE_FILE = re.compile(r"_[^_]+\.xlsx")  # the judge's file "_<judge>.xlsx" (e.g. _gpt-4o-mini.xlsx) with `res`

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("mcq", columns=(("hit",),), eval_file=re.compile(r"_.+_result\.xlsx"), scorer=_score_hit,
               judge_cache=re.compile(r"_.+_result\.pkl")),  # {index: {hit, log}}
        Family("yorn", columns=(("score",),), eval_file=re.compile(r"_auxmatch\.xlsx"), scorer=_score_hit),
        Family("vqa", columns=(("eval_match", "eval_score"),), eval_file=re.compile(r"_results\.xlsx"),
               scorer=_score_vqa),
        # eval_score is a mean *distance* for ANLS datasets, so there is no fallback (the ANLS trap)
        Family("anls", columns=(("eval_match",),), eval_file=re.compile(r"_results\.xlsx"), scorer=_score_anls),
        Family("ocrbench", columns=(("prediction",), ("answer",), ("category",)), eval_file=None,
               scorer=_score_ocrbench),
        Family("mathvista", columns=(("res",), ("answer",), ("question_type",), ("answer_type",), ("choices",),
                                     ("answer_option",)), eval_file=_JUDGE_FILE, scorer=_score_mathvista),
        Family("mathvision", columns=(("res",), ("answer",), ("choices",)), eval_file=_JUDGE_FILE,
               scorer=_score_mathvision),
        # the judge's stage-2 file "_<judge>_score.xlsx" with `score`
        Family("mathverse", columns=(("score",),), eval_file=re.compile(r"_[^_]+_score\.xlsx"), scorer=_score_hit),
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
