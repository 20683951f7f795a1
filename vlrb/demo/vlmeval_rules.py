"""VLMEvalKit's scoring rules as the demo's renderers apply them to the cells they write (ANLS distance, ChartQA's
relaxed accuracy, OCRBench's substring match). The scores written to demo_truth are computed from the rendered
cells with these rules, so the truth is what a correct reader (vlrb.data.correctness) must recover, whatever the
latent draw said."""
from __future__ import annotations

from functools import lru_cache

from vlrb.demo.world import HANDWRITTEN_MATH


def levenshtein(a: str, b: str) -> int:
    """Edit distance, bit-parallel (Myers 1999 / Hyyro 2001): one pass of integer ops per char of b."""
    if not a:
        return len(b)
    peq: dict[str, int] = {}
    for i, ch in enumerate(a):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    mask = (1 << len(a)) - 1
    last = 1 << (len(a) - 1)
    pv, mv, score = mask, 0, len(a)
    for ch in b:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = ((((eq & pv) + pv) & mask) ^ pv) | eq
        ph = mv | (~(xh | pv) & mask)
        mh = pv & xh
        if ph & last:
            score += 1
        elif mh & last:
            score -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = mh | (~(xv | ph) & mask)
        mv = ph & xv
    return score


@lru_cache(maxsize=200_000)
def anls_distance(gt: str, pred: str) -> float:
    """VLMEvalKit anls_compute: normalised Levenshtein distance (note: lengths of the raw strings)."""
    g = " ".join(gt.strip().lower().split())
    p = " ".join(pred.strip().lower().split())
    length = max(len(gt.upper()), len(pred.upper()))
    return 0.0 if length == 0 else levenshtein(g, p) / length


def relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05) -> bool:
    """VLMEvalKit relaxed_correctness (ChartQA)."""
    def to_float(text: str) -> float | None:
        try:
            return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            return None

    p, t = to_float(prediction), to_float(target)
    if p is not None and t:
        return abs(p - t) / abs(t) <= max_relative_change
    return prediction.lower() == target.lower()


def ocrbench_hit(pred: str, golds: list[str], category: str) -> bool:
    if category == HANDWRITTEN_MATH:
        norm = lambda s: s.strip().replace("\n", " ").replace(" ", "")  # noqa: E731
    else:
        norm = lambda s: s.lower().strip().replace("\n", " ")  # noqa: E731
    p = norm(pred)
    return any(norm(g) in p for g in golds)
