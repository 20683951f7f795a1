"""What a model writes: each final answer dressed in the model's style (bare, after an explanation, or after
thinking tags), VLMEvalKit's message where the API call failed, and the wrong picks of a model that is wrong."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from vlrb.demo.vocab import FILLER_WORDS, SYLLABLES
from vlrb.demo.world import FAIL_MSG, PROFILES, WORLD_SEED


class _Corpus:
    """A long random word sequence; a filler of n words is one slice of it (no per-word loop)."""

    def __init__(self, n_words: int = 300_000) -> None:
        words = np.array(FILLER_WORDS)
        seq = words[np.random.default_rng(WORLD_SEED).integers(0, len(words), n_words)]
        self.text = " ".join(seq.tolist())
        lengths = np.char.str_len(seq) + 1
        self.starts = np.concatenate(([0], np.cumsum(lengths)))  # char offset of word i
        self.n = n_words

    def fillers(self, rng: np.random.Generator, n_words: np.ndarray) -> list[str]:
        n_words = np.minimum(n_words, self.n // 2)
        begin = rng.integers(0, self.n - n_words)
        a, b = self.starts[begin], self.starts[begin + n_words] - 1
        return [self.text[i:j] if j > i else "" for i, j in zip(a.tolist(), b.tolist())]


@lru_cache(maxsize=1)
def _corpus() -> _Corpus:
    return _Corpus()


def _filler_lengths(rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
    """Lognormal word counts with the given mean (0 -> no filler)."""
    if mean <= 0:
        return np.zeros(n, dtype=np.int64)
    sigma = 0.55
    return np.maximum(1, rng.lognormal(math.log(mean) - sigma ** 2 / 2, sigma, n)).astype(np.int64)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]  # str.capitalize would also lower-case the rest (slower)


def _wrap(finals: list[str], model: str, group: str, rng: np.random.Generator) -> list[str]:
    """Dress each final answer in the model's style: bare, with an explanation, or after thinking."""
    profile = PROFILES[model]
    style, mean = profile.style[group]
    if style == "plain":
        return list(finals)
    fills = _corpus().fillers(rng, _filler_lengths(rng, mean, len(finals)))
    if style == "lead":
        return [f"{a}\n\n{_sentence(f)}." for a, f in zip(finals, fills)]
    if style == "trail":
        return [f"{_sentence(f)}.\nThe answer is {a}" for a, f in zip(finals, fills)]
    open_tag, close_tag = profile.think or ("<think>", "</think>")
    return [f"{open_tag}\n{_sentence(f)}.\n{close_tag}\n\n{a}" for a, f in zip(finals, fills)]


def predictions(finals: list[str], model: str, group: str, rng: np.random.Generator,
                fail: np.ndarray) -> list[str]:
    """The prediction column: styled answers, with VLMEvalKit's message where the API call failed."""
    return [FAIL_MSG if f else p for p, f in zip(_wrap(finals, model, group, rng), fail)]


def rng_word(rng: np.random.Generator, n: int) -> str:
    return "".join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), n))


def wrong_choice(rng: np.random.Generator, options: list[str], right: str) -> str:
    others = [o for o in options if o != right]
    return others[int(rng.integers(len(others)))] if others else right + "x"
