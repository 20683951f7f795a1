"""What a wrong model says: wrong answers that coincide as real models' do, and answers with nothing to read.

The latent world decides *whether* a model is right (vlrb.demo.world); this module decides *what* a wrong model
answers, so that the final answers the reader keeps (docs/method.md#answers) behave like real ones: two unrelated
models rarely give the same wrong answer, models that share a base model often do, every item has a tempting wrong
answer, and some answers hold no option letter or number at all. Measured on MATH-V's real results (15 models,
scripts/answer_stats.py), two wrong well-formed answers agree on a median 31% of choice items (4 wrong options) and
10% of number items, about 60-85% for models that share a base model, and a median 17% of answers are malformed.

Everything here draws from its own random streams (MISTAKE_SEED), never from the renderers' `rng`, and a revised
answer is kept only where the prediction keeps its token count and the rule still scores it wrong: the demo's Y
and C (tokens x prices) are the same as without this module, byte for byte.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

from vlrb.data.answers import answer_key
from vlrb.data.tokens import count_tokens
from vlrb.demo.samples import DatasetPlan
from vlrb.demo.world import DEMO_MODELS, PROFILES, WORLD_SEED, dataset_number

MISTAKE_SEED = WORLD_SEED + 25  # issue 25: a stream of its own, so that Y and C never depend on it

# models built on one base model repeat each other's mistakes (MATH-V: LLaVA-1.5 and ShareGPT4V, 55-65% of items)
BASE_MODEL = {"Qwen2.5-VL-32B-Instruct": "qwen2.5-vl", "Qwen2.5-VL-72B-Instruct": "qwen2.5-vl",
              "Janus-Pro-1B": "janus-pro", "Janus-Pro-7B": "janus-pro",
              "deepseek_vl2": "deepseek-vl2", "deepseek_vl2_tiny": "deepseek-vl2",
              "MiMo-VL-7B-RL": "qwen2.5-vl-7b", "Qianfan-VL-8B": "qwen2.5-vl-7b"}
_BASES = sorted(set(BASE_MODEL.values()))
P_BASE = 0.8  # a wrong model of a base family gives the family's wrong answer
P_LURE = 0.25  # else the item's tempting wrong answer (else a wrong answer of its own)

# share of a model's wrong answers in which the rule reads no answer (MATH-V: 2-63% of all answers per model);
# small and thinking models most, API models least
MALFORMED = {"GPT4o": 0.08, "GeminiFlash2-5": 0.1, "InternVL2_5-78B": 0.12, "Qwen2.5-VL-72B-Instruct": 0.12,
             "Qwen2.5-VL-32B-Instruct": 0.18, "Gemma3-27B": 0.25, "Pixtral-12B": 0.3, "Qianfan-VL-8B": 0.25,
             "MiMo-VL-7B-RL": 0.4, "Kimi-VL-A3B-Thinking-2506": 0.45, "deepseek_vl2": 0.35, "Phi-3.5-Vision": 0.4,
             "llava_next_vicuna_7b": 0.45, "Janus-Pro-7B": 0.4, "Janus-Pro-1B": 0.6, "SmolVLM2": 0.55,
             "deepseek_vl2_tiny": 0.5}
# answers without an option letter or a number, of many token lengths (a revision must keep the token count)
NO_ANSWER = ("unclear", "none", "unknown", "undefined", "neither", "not sure", "cannot determine",
             "no answer", "see above", "not enough information", "cannot be determined", "impossible to tell",
             "the figure is unclear", "it is not possible to tell", "none of the given values",
             "the image does not show enough detail", "more information is needed to answer")

Check = Callable[[int, str, str, bool], bool]  # (row, answer, prediction, malformed) -> the rule reads it as meant


def splice(pred: str, old: str, new: str, style: str) -> str:
    """The prediction with its final answer `old` replaced by `new`: the answer leads (lead), or ends it."""
    if style == "lead":
        return new + pred[len(old):]
    return pred[:len(pred) - len(old)] + new


class Mistakes:
    """The mistake streams of one (dataset, model) over its `n` rows: the items' shared orders of wrong answers
    (the same for every model of the dataset) and the model's own draws."""

    def __init__(self, key_number: int, seed: int, model: str, n: int) -> None:
        shared = np.random.default_rng([MISTAKE_SEED, seed, key_number])
        self.lure = shared.random((n, _WIDTH))  # per item: an order of its wrong answers, the tempting one first
        self.base = shared.random((n, len(_BASES), _WIDTH))  # per item and base model
        own = np.random.default_rng([MISTAKE_SEED, seed, key_number, list(DEMO_MODELS).index(model) + 1])
        self.u = own.random((n, 2))  # malformed?, whose order
        self.own = own.random((n, _WIDTH))
        self.phrases = own.random((n, len(NO_ANSWER)))
        self.model = model
        self.base_index = _BASES.index(BASE_MODEL[model]) if model in BASE_MODEL else None

    def order(self, i: int, n_wrong: int) -> np.ndarray:
        """Row i's wrong answers (0..n_wrong-1) in the order this model tries them: its base family's order, the
        item's (the tempting answer first) or its own."""
        u = self.u[i, 1]
        if self.base_index is not None:
            if u < P_BASE:
                return np.argsort(self.base[i, self.base_index, :n_wrong])
            u = (u - P_BASE) / (1 - P_BASE)
        return np.argsort((self.lure if u < P_LURE else self.own)[i, :n_wrong])

    def takes_base(self, i: int) -> bool:
        return self.base_index is not None and self.u[i, 1] < P_BASE

    def malformed(self, i: int, fmt: str) -> bool:
        return self.u[i, 0] < MALFORMED.get(self.model, 0.0) * _MALFORMED_BY_FORMAT.get(fmt, 0.0)


# MATH-V: a median 27% of the answers to its choice items hold no option letter, 4% of the number answers no number
_MALFORMED_BY_FORMAT = {"choice": 1.0, "number": 0.3}
_WIDTH = 16  # the most wrong answers an item offers


def local_part(pred: str, len_final: int, style: str) -> str:
    """The part of a prediction whose tokens its final answer (the last `len_final` characters, or the first for
    `lead`) can change: from the last line break before the answer, or up to the first after it. A line break
    followed by text always ends a cl100k pre-token, and pre-tokens are encoded one by one, so the tokens of the
    rest stay as they are: two predictions that differ in their answer alone have equal token counts exactly when
    their local parts do."""
    if style == "lead":
        m = _BREAK.search(pred, len_final)
        return pred[:m.end()] if m else pred
    start = len(pred) - len_final
    cut = max((m.end() for m in _BREAK.finditer(pred, 0, start + 1)), default=0)
    return pred[cut:]


_BREAK = re.compile(r"\n+(?=\S)")


def revise(mk: Mistakes, fmt: Callable[[int], str], style: str, values: list, finals: list[str], preds: list[str],
           wrong_rows: np.ndarray, candidates: Callable[[int], Sequence], render: Callable[[int, str], str],
           reads_as_meant: Check, base_only: bool = False) -> tuple[list, list[str], list[str]]:
    """Each wrong row's answer as this model's mistake streams pick it: malformed (an answer from NO_ANSWER, at the
    model's rate for the row's format `fmt(i)`) or one of `candidates(i)` (the wrong answers, in an order every
    model shares) in the model's order. A pick is kept where the prediction keeps its token count and
    `reads_as_meant`; else the row keeps its drawn answer. `base_only`: only the rows where the model repeats its
    base family (free text: the other wrong answers stay the model's own). Returns (values, finals, predictions)."""
    values, finals, preds = list(values), list(finals), list(preds)
    for i in np.flatnonzero(wrong_rows):
        if base_only and not mk.takes_base(i):
            continue
        n_old = None
        if mk.malformed(i, fmt(i)):
            tries = [(p, p, True) for p in np.asarray(NO_ANSWER)[np.argsort(mk.phrases[i])]]
        else:
            cands = list(candidates(i))
            tries = [(cands[j], render(i, cands[j]), False) for j in mk.order(i, len(cands))]
        for value, final, bad in tries:
            pred = splice(preds[i], finals[i], final, style)
            n_old = count_tokens(local_part(preds[i], len(finals[i]), style)) if n_old is None else n_old
            if count_tokens(local_part(pred, len(final), style)) == n_old and reads_as_meant(i, value, pred, bad):
                values[i], finals[i], preds[i] = value, final, pred
                break
    return values, finals, preds


def style_of(model: str, group: str) -> str:
    return PROFILES[model].style[group][0]


def mistakes_of(plan: DatasetPlan, model: str) -> Mistakes:
    return Mistakes(dataset_number(plan.key), plan.seed, model, len(plan.samples))


def item_lures(plan: DatasetPlan, i: int, make: Callable[[np.random.Generator], str], n: int = 4) -> list[str]:
    """n wrong answers of item i drawn by `make(rng)` from the item's own mistake stream (the same for all models)."""
    r = np.random.default_rng([MISTAKE_SEED, plan.seed, dataset_number(plan.key), i, 7])
    return [make(r) for _ in range(n)]


def reads_as(read: tuple[str, str, int], value: str, bad: bool) -> bool:
    """The reader's (answer, format, n_options) is `value`, or no answer at all for a malformed one (`bad`)."""
    key = answer_key(*read)
    return key == "" if bad else key != "" and key == answer_key(value, read[1], read[2])
