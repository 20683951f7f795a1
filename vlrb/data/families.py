"""The correctness families: one `Family` record per VLMEvalKit rule, in one registry (`FAMILIES`).

Every dataset names its family (`DatasetSpec.family`). The family says which file of a model's run
holds the per-sample evaluation, which columns of it the scorer reads, the scorer itself (the rules
of VLMEvalKit b55f788e, in vlrb.data.correctness), and how the demo generator plans and renders a
dataset of that family (vlrb.demo). The reader, the demo and the build's messages all read this table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from vlrb.data.correctness import (CorrectnessError, _score_anls, _score_hit, _score_mathvision, _score_mathvista,
                                   _score_ocrbench, _score_vqa, failed_mask)
from vlrb.demo.plan import (plan_anls, plan_mathverse, plan_mathvision, plan_mathvista, plan_mcq, plan_ocrbench,
                            plan_vqa, plan_yorn)
from vlrb.demo.render import (render_anls, render_mathverse, render_mathvision, render_mathvista, render_mcq,
                              render_ocrbench, render_vqa, render_yorn)


@dataclass(frozen=True)
class Family:
    name: str
    # the result columns the scorer reads, as groups of alternatives (first = preferred)
    columns: tuple[tuple[str, ...], ...]
    # the per-sample evaluation file: what follows "<model>_<dataset>" in its name (full match);
    # None: VLMEvalKit writes none, and the prediction file itself is scored
    eval_file: re.Pattern[str] | None
    scorer: Callable[[pd.DataFrame, list[str], str], np.ndarray]  # (file, chosen columns, dataset) -> scores
    demo_plan: Callable  # (dataset key, n, random.Random) -> vlrb.demo.plan.DatasetPlan
    demo_render: Callable  # (plan, model, ok, fail, rng) -> vlrb.demo.render.Rendered
    demo_group: str  # the task group of the demo's latent-skill model (vlrb.demo.world.GROUPS)
    # a judge's cache that stands in for a missing evaluation file (same naming rule)
    judge_cache: re.Pattern[str] | None = None


_JUDGE_FILE = re.compile(r"_[^_]+\.xlsx")  # the judge's file "_<judge>.xlsx" (e.g. _gpt-4o-mini.xlsx) with `res`

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("mcq", columns=(("hit",),), eval_file=re.compile(r"_.+_result\.xlsx"), scorer=_score_hit,
               demo_plan=plan_mcq, demo_render=render_mcq, demo_group="general",
               judge_cache=re.compile(r"_.+_result\.pkl")),  # {index: {hit, log}}
        Family("yorn", columns=(("score",),), eval_file=re.compile(r"_auxmatch\.xlsx"), scorer=_score_hit,
               demo_plan=plan_yorn, demo_render=render_yorn, demo_group="general"),
        Family("vqa", columns=(("eval_match", "eval_score"),), eval_file=re.compile(r"_results\.xlsx"),
               scorer=_score_vqa, demo_plan=plan_vqa, demo_render=render_vqa, demo_group="ocr"),
        # eval_score is a mean *distance* for ANLS datasets, so there is no fallback (the ANLS trap)
        Family("anls", columns=(("eval_match",),), eval_file=re.compile(r"_results\.xlsx"),
               scorer=_score_anls, demo_plan=plan_anls, demo_render=render_anls, demo_group="ocr"),
        Family("ocrbench", columns=(("prediction",), ("answer",), ("category",)), eval_file=None,
               scorer=_score_ocrbench, demo_plan=plan_ocrbench, demo_render=render_ocrbench, demo_group="ocr"),
        Family("mathvista", columns=(("res",), ("answer",), ("question_type",), ("answer_type",), ("choices",),
                                     ("answer_option",)),
               eval_file=_JUDGE_FILE, scorer=_score_mathvista, demo_plan=plan_mathvista,
               demo_render=render_mathvista, demo_group="math"),
        Family("mathvision", columns=(("res",), ("answer",), ("choices",)), eval_file=_JUDGE_FILE,
               scorer=_score_mathvision, demo_plan=plan_mathvision, demo_render=render_mathvision,
               demo_group="math"),
        # the judge's stage-2 file "_<judge>_score.xlsx" with `score`
        Family("mathverse", columns=(("score",),), eval_file=re.compile(r"_[^_]+_score\.xlsx"),
               scorer=_score_hit, demo_plan=plan_mathverse, demo_render=render_mathverse, demo_group="math"),
    ]
}


def get_family(name: str, dataset: str = "") -> Family:
    """The family called `name`, or a CorrectnessError that lists the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise CorrectnessError(
            f"{_label(name, dataset)}: unknown correctness family; known: {', '.join(FAMILIES)}"
        ) from None


def required_columns(family: str) -> tuple[str, ...]:
    """The (preferred) columns that a family's evaluation file must have."""
    return tuple(group[0] for group in get_family(family).columns)


def score_frame(family: str, df: pd.DataFrame, dataset: str = "") -> np.ndarray:
    """Raw score in [0, 1] per row of an evaluation file; failed predictions score 0."""
    return score_frame_undetermined(family, df, dataset)[0]


def score_frame_undetermined(family: str, df: pd.DataFrame, dataset: str = "") -> tuple[np.ndarray, np.ndarray]:
    """`score_frame`, plus a mask of the rows whose score could not be determined.

    Undetermined: the family's score cell is blank, unreadable, or a formula without a cached value
    (which an xlsx reader sees as blank). They score 0 as in VLMEvalKit, but the caller counts them so
    they are never silent. Failed predictions are not undetermined: they are wrong and counted apart.
    """
    fam = get_family(family, dataset)
    cols = _resolve_columns(fam, df, dataset)
    raw = np.asarray(fam.scorer(df, cols, dataset), dtype=np.float64)
    undetermined = np.isnan(raw)
    scores = np.clip(np.nan_to_num(raw, nan=0.0), 0.0, 1.0)
    if "prediction" in df.columns:
        failed = failed_mask(df["prediction"])
        scores[failed] = 0.0
        undetermined &= ~failed
    return scores, undetermined


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
