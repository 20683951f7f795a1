"""Rendering: what each model answered, and the evaluation files VLMEvalKit leaves, one renderer per family.

A renderer `(plan, model, ok, fail, rng) -> Rendered` turns one model's latent correctness on one
dataset into prediction strings in the model's style (vlrb.demo.answers) and the family's evaluation
columns; the demo's table of families (`vlrb.demo.families.DEMO_FAMILIES`) names the renderer of each
correctness family (the math families' in vlrb.demo.render_math). The scores are computed from the rendered cells
with VLMEvalKit's rules (vlrb.demo.vlmeval_rules), so they are what a correct reader must recover. What a wrong
model answers comes from the mistake streams of vlrb.demo.mistakes, which never change a score or a token count.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlrb.data.answers import extract_answer
from vlrb.data.families import mcq_answer
from vlrb.demo.answers import predictions, rng_word, wrong_choice
from vlrb.demo.mistakes import item_lures, mistakes_of, reads_as, revise, style_of
from vlrb.demo.samples import DatasetPlan
from vlrb.demo.vlmeval_rules import anls_distance, ocrbench_hit, relaxed_correctness
from vlrb.demo.vocab import ANSWER_WORDS, OCR_CATEGORIES
from vlrb.demo.world import FAIL_MSG, HANDWRITTEN_MATH, PROFILES


@dataclass
class Rendered:
    predictions: list[str]
    scores: np.ndarray
    # evaluation files: (suffix after "<M>_<D>", extra columns in order)
    eval_files: list[tuple[str, dict[str, list[Any]]]] = field(default_factory=list)
    json_files: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    csv_files: list[tuple[str, list[list[Any]]]] = field(default_factory=list)
    # VLMEvalKit's MCQ result file lower-cases column names, except single upper-case option letters
    lower_case_columns: bool = False


# ----------------------------------------------------------------------------- renderers

def render_mcq(plan: DatasetPlan, model: str, ok: np.ndarray, fail: np.ndarray,
               rng: np.random.Generator) -> Rendered:
    letter_only = PROFILES[model].letter_only
    finals, letters, hits = [], [], []
    for s, c in zip(plan.samples, ok):
        opts = s.gold["options"]
        letter = s.gold["answer"] if c else wrong_choice(rng, list(opts), s.gold["answer"])
        letters.append(letter)
        finals.append(letter if letter_only else f"{letter}. {opts[letter]}")
        hits.append(int(c))
    preds = predictions(finals, model, "mcq", rng, fail)
    opts = [s.gold["options"] for s in plan.samples]
    _, _, preds = revise(
        mistakes_of(plan, model), lambda i: "choice", style_of(model, "mcq"), letters, finals, preds, ~ok & ~fail,
        lambda i: [c for c in opts[i] if c != plan.samples[i].gold["answer"]],
        lambda i, c: c if letter_only else f"{c}. {opts[i][c]}",
        lambda i, v, p, bad: reads_as((mcq_answer(p, opts[i]), "choice", len(opts[i])), v, bad))
    logs = [f"Match Log: {p}. " if not f else "Failed to predict, thus randomly generate one. "
            for p, f in zip(preds, fail)]
    hits = [0 if f else h for h, f in zip(hits, fail)]
    out = Rendered(preds, np.array(hits, dtype=float),
                   [("_openai_result.xlsx", {"hit": hits, "log": logs})], lower_case_columns=True)
    out.csv_files.append(("_acc.csv", _mcq_acc_rows(plan, np.array(hits))))
    return out


def _mcq_acc_rows(plan: DatasetPlan, hits: np.ndarray) -> list[list[Any]]:
    """`<M>_<D>_acc.csv`: split, Overall, then per category (fractions, as VLMEvalKit writes)."""
    splits = [s.row.get("split", "none") for s in plan.samples]
    cats = sorted({str(s.row.get("category")) for s in plan.samples if s.row.get("category")})
    rows: list[list[Any]] = [["split", "Overall", *cats]]
    for sp in sorted(set(splits)):
        mask = np.array([x == sp for x in splits])
        per_cat = []
        for c in cats:
            m = mask & np.array([str(s.row.get("category")) == c for s in plan.samples])
            per_cat.append(float(hits[m].mean()) if m.any() else 0.0)
        rows.append([sp, float(hits[mask].mean()), *per_cat])
    return rows


def render_yorn(plan: DatasetPlan, model: str, ok: np.ndarray, fail: np.ndarray,
                rng: np.random.Generator) -> Rendered:
    finals, extracted = [], []
    for s, c in zip(plan.samples, ok):
        right = s.gold["answer"]
        if c:
            said = right
        else:  # wrong: the opposite answer, or now and then a hedge that extracts as Unknown
            said = "Unknown" if rng.random() < 0.1 else ("No" if right == "Yes" else "Yes")
        extracted.append(said)
        finals.append("I cannot tell from the image." if said == "Unknown" else said)
    preds = predictions(finals, model, "yorn", rng, fail)
    extracted = ["Unknown" if f else e for e, f in zip(extracted, fail)]
    score = [e == s.gold["answer"] for e, s in zip(extracted, plan.samples)]
    return Rendered(preds, np.array(score, dtype=float),
                    [("_auxmatch.xlsx", {"extracted": extracted, "score": score})])


def _render_textvqa(plan: DatasetPlan, model: str, ok: np.ndarray, fail: np.ndarray,
                    rng: np.random.Generator) -> Rendered:
    finals = []
    for s, c in zip(plan.samples, ok):
        if c:
            finals.append(s.gold["main"])
        elif s.gold["alts"] and rng.random() < 0.3:  # a minority human answer: partial credit
            finals.append(s.gold["alts"][int(rng.integers(len(s.gold["alts"])))])
        else:
            finals.append(rng_word(rng, 2))
    preds = predictions(finals, model, "short", rng, fail)
    golds = [s.gold["golds"] for s in plan.samples]
    own = ~ok & ~fail & np.array([f not in s.gold["alts"] for f, s in zip(finals, plan.samples)])
    _, finals, preds = _revise_text(plan, model, finals, preds, own, lambda i: item_lures(
        plan, i, lambda r: rng_word(r, 2)), lambda i, v, p: v.lower() not in golds[i])
    eval_pred = ["failed to obtain answer via api" if f else a.lower() for a, f in zip(finals, fail)]
    matches = []
    for s, p in zip(plan.samples, eval_pred):
        golds = s.gold["golds"]
        # VQA accuracy: per gold answer, how many of the other nine answers equal the prediction
        n_equal = sum(g == p for g in golds)
        matches.append([min(1.0, (n_equal - (g == p)) / 3) for g in golds])
    score = [float(np.mean(m)) for m in matches]
    cols = {"eval_gt": [repr(s.gold["golds"]) for s in plan.samples], "eval_pred": eval_pred,
            "eval_match": [repr(m) for m in matches], "eval_score": score}
    out = Rendered(preds, np.array(score), [("_results.xlsx", cols)])
    out.csv_files.append(("_acc.csv", [["Overall"], [100.0 * float(np.mean(score))]]))
    return out


def _render_chartqa(plan: DatasetPlan, model: str, ok: np.ndarray, fail: np.ndarray,
                    rng: np.random.Generator) -> Rendered:
    finals = []
    for s, c in zip(plan.samples, ok):
        gold = s.gold["golds"][0]
        try:
            value = float(gold)
        except ValueError:
            value = None
        if value is None:
            finals.append(gold if c else wrong_choice(rng, ANSWER_WORDS["chart"], gold))
        elif c:  # exact, or close enough for relaxed accuracy (within 5%)
            finals.append(gold if rng.random() < 0.85 else f"{value * (1 + rng.uniform(-0.04, 0.04)):.2f}")
        else:
            finals.append(f"{value * rng.choice([0.5, 0.7, 1.3, 1.8]):g}")
    preds = predictions(finals, model, "short", rng, fail)
    gold = [s.gold["golds"][0] for s in plan.samples]
    _, finals, preds = _revise_text(plan, model, finals, preds, ~ok & ~fail, lambda i: _chart_lures(gold[i]),
                                    lambda i, v, p: not relaxed_correctness(gold[i], v))
    eval_pred = [FAIL_MSG if f else a.strip() for a, f in zip(finals, fail)]
    matches = [[relaxed_correctness(g, p) for g in s.gold["golds"]] for s, p in zip(plan.samples, eval_pred)]
    score = [float(max(m)) for m in matches]
    cols = {"eval_gt": [repr(s.gold["golds"]) for s in plan.samples], "eval_pred": eval_pred,
            "eval_match": [repr(m) for m in matches], "eval_score": [float(np.mean(m)) for m in matches]}
    out = Rendered(preds, np.array(score), [("_results.xlsx", cols)])
    out.csv_files.append(("_acc.csv", [["Overall"], [100.0 * float(np.mean(score))]]))
    return out


def _chart_lures(gold: str) -> list[str]:
    try:
        return [f"{float(gold) * m:g}" for m in (0.5, 0.7, 1.3, 1.8)]
    except ValueError:
        return [w for w in ANSWER_WORDS["chart"] if w != gold]


def _revise_text(plan: DatasetPlan, model: str, finals: list[str], preds: list[str], rows: np.ndarray,
                 candidates, still_wrong) -> tuple:
    """Free-text answers: a model repeats its base family's wrong answer (no malformed text: any text reads)."""
    return revise(mistakes_of(plan, model), lambda i: "text", style_of(model, "short"), finals, finals, preds, rows,
                  candidates, lambda i, v: v,
                  lambda i, v, p, bad: still_wrong(i, v, p) and extract_answer(p, "text") == v, base_only=True)


def render_vqa(plan: DatasetPlan, model: str, ok: np.ndarray, fail: np.ndarray,
               rng: np.random.Generator) -> Rendered:
    """ChartQA: relaxed accuracy against one gold; TextVQA: VQA accuracy against ten human answers."""
    render = _render_chartqa if "ChartQA" in plan.key else _render_textvqa
    return render(plan, model, ok, fail, rng)


def _near_miss(text: str, rng: np.random.Generator) -> str:
    """One character substituted: a typo that ANLS still partly credits."""
    positions = [i for i, ch in enumerate(text) if ch.isalnum()]
    if not positions:
        return text
    i = positions[int(rng.integers(len(positions)))]
    repl = "7" if text[i] != "7" else "3"
    return text[:i] + repl + text[i + 1:]


def render_anls(plan: DatasetPlan, model: str, ok: np.ndarray, fail: np.ndarray,
                rng: np.random.Generator) -> Rendered:
    finals = []
    for s, c, f in zip(plan.samples, ok, fail):
        golds = s.gold["golds"]
        if f:
            answer = FAIL_MSG
        elif c:
            answer = golds[0] if rng.random() < 0.85 else _near_miss(golds[0], rng)
        else:  # a value of another shape (digits for names, a word for numbers): scores 0
            for _ in range(6):
                if any(ch.isdigit() for ch in golds[0][:3]):
                    answer = rng_word(rng, 3)
                else:
                    answer = f"{int(rng.integers(100, 99999))}"
                if 1 - min(anls_distance(g, answer) for g in golds) < 0.5:
                    break
        finals.append(answer)
    preds = predictions(finals, model, "short", rng, fail)
    golds = [s.gold["golds"] for s in plan.samples]
    _, finals, preds = _revise_text(
        plan, model, finals, preds, ~ok & ~fail,
        lambda i: item_lures(plan, i, lambda r: rng_word(r, 3) if any(ch.isdigit() for ch in golds[i][0][:3])
                              else f"{int(r.integers(100, 99999))}"),
        lambda i, v, p: 1 - min(anls_distance(g, v) for g in golds[i]) < 0.5)
    distances = [[anls_distance(g, a) for g in gs] for a, gs in zip(finals, golds)]
    best = [1.0 - min(d) for d in distances]
    score = [b if b >= 0.5 else 0.0 for b in best]
    cols = {"eval_gt": [repr(s.gold["golds"]) for s in plan.samples], "eval_pred": finals,
            "eval_match": [repr(d) for d in distances],
            "eval_score": [float(np.mean(d)) for d in distances]}  # a mean *distance*, as VLMEvalKit
    out = Rendered(preds, np.array(score), [("_results.xlsx", cols)])
    out.csv_files.append(("_acc.csv", [["Overall"], [100.0 * float(np.mean(score))]]))
    return out


def render_ocrbench(plan: DatasetPlan, model: str, ok: np.ndarray, fail: np.ndarray,
                    rng: np.random.Generator) -> Rendered:
    finals = []
    for s, c in zip(plan.samples, ok):
        gold = s.gold["golds"][0]
        if s.row["category"] == HANDWRITTEN_MATH:
            # LaTeX spacing differs from the gold; the rule removes spaces before comparing
            finals.append(" ".join(gold) if c else gold.replace("=", "-") + "1")
        else:
            finals.append(gold if c else f"{rng_word(rng, 2).upper()}{int(rng.integers(10, 99))}")
    preds = predictions(finals, model, "short", rng, fail)
    smp = plan.samples
    _, finals, preds = _revise_text(
        plan, model, finals, preds, ~ok & ~fail,
        lambda i: ([smp[i].gold["golds"][0].replace("=", "-") + k for k in "1234"]
                   if smp[i].row["category"] == HANDWRITTEN_MATH
                   else item_lures(plan, i, lambda r: f"{rng_word(r, 2).upper()}{int(r.integers(10, 99))}")),
        lambda i, v, p: not ocrbench_hit(p, smp[i].gold["golds"], smp[i].row["category"]))
    hits = [ocrbench_hit(p, s.gold["golds"], s.row["category"]) for p, s in zip(preds, plan.samples)]
    counts = {c: 0 for c in OCR_CATEGORIES}
    for h, s in zip(hits, plan.samples):
        counts[s.row["category"]] += int(h)
    recog = sum(counts[c] for c in OCR_CATEGORIES[:6])
    summary = {"Text Recognition": recog, "Scene Text-centric VQA": counts["Scene Text-centric VQA"],
               "Doc-oriented VQA": counts["Doc-oriented VQA"],
               "Key Information Extraction": counts["Key Information Extraction"],
               HANDWRITTEN_MATH: counts[HANDWRITTEN_MATH]}
    summary["Final Score"] = sum(summary.values())
    summary["Final Score Norm"] = float(summary["Final Score"]) / 10
    out = Rendered(preds, np.array(hits, dtype=float))
    out.json_files.append(("_score.json", summary))
    return out
