"""Rendering of the math families (MathVista, MathVision, MathVerse): each model's answer in its style, the
judge's extraction (`res`, `extract`) and the judge's summary files, as VLMEvalKit leaves them. A wrong model's
answer is a wrong option letter or a number near the right one, or none at all (vlrb.demo.mistakes)."""
from __future__ import annotations

from typing import Any

import numpy as np

from vlrb.data.correctness import mathvision_correct, mathvista_correct
from vlrb.data.families import judged_answer, mathverse_answer
from vlrb.demo.answers import predictions, wrong_choice
from vlrb.demo.mistakes import mistakes_of, reads_as, revise, style_of
from vlrb.demo.render import Rendered
from vlrb.demo.samples import DatasetPlan
from vlrb.demo.world import FAIL_MSG, JUDGE, PROFILES

_DELTAS = (-10, -6, -4, -3, -2, -1, 1, 2, 3, 4, 6, 10)  # a wrong number is mostly near the right one
_FLOAT_DELTAS = (-1.5, -1.0, -0.5, -0.3, 0.3, 0.5, 0.7, 1.0, 2.2, 3.0)


def _wrong_numbers(gold: str, precision=None) -> list[str]:
    """The wrong numbers a model may give for `gold`, in a fixed order (at the item's precision for a float)."""
    if precision is None:
        v = int(gold)
        out = [str(v + d) for d in _DELTAS] + [str(2 * v)] + ([str(v // 2)] if v % 2 == 0 else [])
    else:
        out = [f"{float(gold) + d:.{int(precision)}f}" for d in _FLOAT_DELTAS]
    return [o for o in dict.fromkeys(out) if o != gold]


def _math_final(letter_or_value: str, is_mc: bool, model: str) -> str:
    return f"({letter_or_value})" if is_mc and not PROFILES[model].letter_only else letter_or_value


def _math_logs(model: str, fail: np.ndarray) -> list[str]:
    """'Prefetch succeed' when VLMEvalKit's rules could read the bare answer, else the judge ran."""
    plain = PROFILES[model].style["math"][0] == "plain"
    failed = f"Try 0: output is {FAIL_MSG}, failed to parse.\nAll 5 retries failed.\n"
    return [failed if f else ("Prefetch succeed" if plain else "Succeed") for f in fail]


def _revise_math(plan: DatasetPlan, model: str, values: list[str], finals: list[str], preds: list[str],
                 wrong: np.ndarray, is_mc: list[bool], choice_letters: str, read) -> tuple:
    """A math answer: a wrong option letter or a number near the right one (the mistake streams pick which), or
    none; `read(i, value)`: (answer, format, n_options) as the reader reads the judge's extraction `value`, or
    None where the rule would score it right."""
    gold = [s.gold for s in plan.samples]

    def candidates(i: int) -> list[str]:
        g = gold[i]
        if is_mc[i]:
            return [c for c in choice_letters if c != (g.get("answer_option") or g["answer"])]
        return _wrong_numbers(g["answer"], g.get("precision") if g.get("answer_type") == "float" else None)

    def meant(i: int, v: str, p: str, bad: bool) -> bool:
        r = read(i, v)
        return r is not None and reads_as(r, v, bad)

    return revise(mistakes_of(plan, model), lambda i: "choice" if is_mc[i] else "number", style_of(model, "math"),
                  values, finals, preds, wrong, candidates,
                  lambda i, v: _math_final(v, is_mc[i], model), meant)


def render_mathvista(plan: DatasetPlan, model: str, ok: np.ndarray, fail: np.ndarray,
                     rng: np.random.Generator) -> Rendered:
    res = []
    for s, c in zip(plan.samples, ok):
        g = s.gold
        if g["question_type"] == "multi_choice":
            right = g["answer_option"]
            res.append(right if c else wrong_choice(rng, list("ABCD"), right))
        elif g["answer_type"] == "integer":
            res.append(g["answer"] if c else str(int(g["answer"]) + int(rng.choice([-3, -1, 1, 5]))))
        else:  # a float off by a visible margin, at the item's precision
            wrong = float(g["answer"]) + float(rng.choice([-1.5, 0.7, 2.2]))
            res.append(g["answer"] if c else f"{wrong:.{int(g['precision'])}f}")
    is_mc = [s.gold["question_type"] == "multi_choice" for s in plan.samples]
    finals = [_math_final(r, mc, model) for r, mc in zip(res, is_mc)]
    preds = predictions(finals, model, "math", rng, fail)
    g = [s.gold for s in plan.samples]

    def read(i: int, v: str):
        if mathvista_correct(v, *(g[i][k] for k in ("question_type", "answer_type", "answer", "choices",
                                                     "answer_option", "precision"))):
            return None
        return judged_answer(v, g[i]["choices"], None) if is_mc[i] else (v, "number", 0)

    res, _, preds = _revise_math(plan, model, res, finals, preds, ~ok & ~fail, is_mc, "ABCD", read)
    return _judged(plan, model, preds, res, ok, fail, ("Task&Skill", "task"))


def render_mathvision(plan: DatasetPlan, model: str, ok: np.ndarray, fail: np.ndarray,
                      rng: np.random.Generator) -> Rendered:
    res = []
    for s, c in zip(plan.samples, ok):
        answer, choices = s.gold["answer"], s.gold["choices"]
        if c:
            res.append(answer)
        elif choices:
            res.append(wrong_choice(rng, list("ABCDE"), answer))
        else:
            res.append(str(int(answer) + int(rng.choice([-4, -1, 1, 3, 10]))))
    is_mc = [bool(s.gold["choices"]) for s in plan.samples]
    finals = [_math_final(r, mc, model) for r, mc in zip(res, is_mc)]
    preds = predictions(finals, model, "math", rng, fail)
    g = [s.gold for s in plan.samples]

    def read(i: int, v: str):
        if mathvision_correct(v, g[i]["answer"], g[i]["choices"]) is not False:
            return None  # right, or beyond the evaluator's bounds
        return judged_answer(v, g[i]["choices"], g[i]["answer"])

    res, _, preds = _revise_math(plan, model, res, finals, preds, ~ok & ~fail, is_mc, "ABCDE", read)
    return _judged(plan, model, preds, res, ok, fail, ("Subject", "category"))


def _judged(plan: DatasetPlan, model: str, preds: list[str], res: list[str], ok: np.ndarray, fail: np.ndarray,
            summary_by: tuple[str, str]) -> Rendered:
    """A judged math dataset's files: the predictions, the judge's file (its extraction `res`, empty where the call
    failed) and the judge's per-group score summary."""
    res = ["" if f else r for r, f in zip(res, fail)]
    score = np.array([(not f) and bool(c) for c, f in zip(ok, fail)], dtype=float)
    out = Rendered(preds, score, [(f"_{JUDGE}.xlsx", {"res": res, "log": _math_logs(model, fail)})])
    first, by = summary_by
    out.csv_files.append((f"_{JUDGE}_score.csv", _math_score_rows(first, plan, by, score)))
    return out


def _math_score_rows(first: str, plan: DatasetPlan, by: str, hits: np.ndarray) -> list[list[Any]]:
    """The judge summary: name, tot, prefetch, hit, prefetch_rate, acc (percent)."""
    rows: list[list[Any]] = [[first, "tot", "prefetch", "hit", "prefetch_rate", "acc"]]
    groups = [str(s.row[by]) for s in plan.samples]
    for name in ["Overall", *sorted(set(groups))]:
        mask = np.ones(len(groups), bool) if name == "Overall" else np.array([g == name for g in groups])
        tot, hit = int(mask.sum()), int(hits[mask].sum())
        rows.append([name, tot, 0, hit, 0.0, 100.0 * hit / max(tot, 1)])
    return rows


def render_mathverse(plan: DatasetPlan, model: str, ok: np.ndarray, fail: np.ndarray,
                     rng: np.random.Generator) -> Rendered:
    extract = []
    for s, c in zip(plan.samples, ok):
        answer = s.gold["answer"]
        if c:
            extract.append(answer)
        elif s.gold["mc"]:
            extract.append(wrong_choice(rng, list("ABCD"), answer))
        else:
            extract.append(str(int(answer) + int(rng.choice([-5, -2, 1, 4]))))
    is_mc = [s.gold["mc"] for s in plan.samples]
    finals = [_math_final(e, mc, model) for e, mc in zip(extract, is_mc)]
    preds = predictions(finals, model, "math", rng, fail)
    smp = plan.samples
    extract, _, preds = _revise_math(plan, model, extract, finals, preds, ~ok & ~fail, is_mc, "ABCD",
                                     lambda i, v: mathverse_answer(v, smp[i].gold["answer"], smp[i].row["question"]))
    extract = ["" if f else e for e, f in zip(extract, fail)]
    log_extract = _math_logs(model, fail)
    score = [(not f) and bool(c) for c, f in zip(ok, fail)]
    log_score = ["Prefetch succeed" if e else "Succeed" for e in extract]
    stage1 = {"extract": extract, "log_extract": log_extract}
    stage2 = {**stage1, "score": score, "log_score": log_score}
    return Rendered(preds, np.array(score, dtype=float),
                    [(f"_{JUDGE}_extract.xlsx", stage1), (f"_{JUDGE}_score.xlsx", stage2)])
