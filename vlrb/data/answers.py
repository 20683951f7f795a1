"""A model's final answer: what it is (`extract_answer` from a free-text response), whether it is well-formed for its
item (`is_valid`), and when two answers agree (`answer_key`, `same_answer`). One module, so that the build, the
cascades' replay and the server's live cascade read an answer the same way (docs/method.md#answers).

Every item has an answer format:
    choice   a single option letter among the item's `n_options` (A.., 0: any letter A-Z)
    number   a number, a fraction or a simple LaTeX number (\\frac{1}{2}, 3\\sqrt{2} is *not* a number)
    yesno    yes or no
    text     text with a letter or digit in it (an OCR string, a word, a phrase)
"""
from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pandas as pd

ANSWER_FORMATS = ("choice", "number", "yesno", "text")
FAILED = "Failed to obtain answer via API."  # VLMEvalKit's message where the call failed (never an answer)
MAX_ANSWER_CHARS = 200  # a longer "answer" is a response that gave none
_SHORT_LINE = 100  # a first line this short, set apart by a blank line, states a text answer

# the answer format of an item of each correctness family where the reader does not say (a math item with options
# is a choice item: the reader says so)
FAMILY_FORMATS = {"mcq": "choice", "yorn": "yesno", "mathvista": "number", "mathvision": "number",
                  "mathverse": "number", "vqa": "text", "anls": "text", "ocrbench": "text"}

_LETTER = re.compile(r"^\(?([A-Za-z])[\).:]?$")
_NUMBER = re.compile(r"^[-+]?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")
_FRACTION = re.compile(r"^([-+]?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)$")
_LATEX_FRAC = re.compile(r"^(-?)\\[dt]?frac\{\s*(-?\d+(?:\.\d+)?)\s*\}\{\s*(\d+(?:\.\d+)?)\s*\}$")
_UNIT_TAIL = re.compile(r"\s*(?:\^?\\circ|°|%|degrees?|cm\^?2?|m\^?2?|units?|meters?|km|kg|g)\s*$", re.I)
_ANSWER_IS = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*[:\s]*(.+)", re.I)
_NUM_IN_TEXT = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?")
_YES_NO = re.compile(r"\b(yes|no)\b", re.I)
_OPTION_LINE = re.compile(r"(?m)^\s*\(?([A-Z])[\).:]\s+\S")
_YESNO_PROMPT = re.compile(r"\b(?:yes or no|yes/no|\(yes/no\))\b", re.I)


def _clean(answer) -> str:
    if answer is None or (isinstance(answer, float) and math.isnan(answer)):
        return ""
    text = str(answer).strip()
    return "" if text == FAILED else text


def _strip_wrappers(text: str) -> str:
    """$...$, \\boxed{...}, trailing full stop, surrounding quotes."""
    text = text.strip().strip("$").strip()
    m = re.fullmatch(r"\\boxed\{(.*)\}", text)
    if m:
        text = m.group(1).strip()
    return text.rstrip(".").strip().strip("\"'`").strip()


def number_value(answer) -> float | None:
    """The value of a number answer ("1,024", "-3.5", "2/3", "\\frac{2}{3}", "45°"), or None."""
    text = _UNIT_TAIL.sub("", _strip_wrappers(_clean(answer)))
    if not text or len(text) > 40:
        return None
    try:
        if _NUMBER.match(text):
            return float(text.replace(",", ""))
        m = _FRACTION.match(text)
        if m and float(m.group(2)) != 0:
            return float(Fraction(m.group(1)) / Fraction(m.group(2)))
        m = _LATEX_FRAC.match(text)
        if m and float(m.group(3)) != 0:
            value = float(Fraction(m.group(2)) / Fraction(m.group(3)))
            return -value if m.group(1) else value
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def _letter(answer, n_options: int) -> str | None:
    m = _LETTER.match(_strip_wrappers(_clean(answer)))
    if not m:
        return None
    letter = m.group(1).upper()
    if n_options and not 0 <= ord(letter) - ord("A") < n_options:
        return None
    return letter


def _yesno(answer) -> str | None:
    text = _strip_wrappers(_clean(answer)).lower()
    return text if text in ("yes", "no") else None


def is_valid(answer, fmt: str, n_options: int = 0) -> bool:
    """Whether `answer` is well-formed for an item of format `fmt`: a single option letter within the item's options,
    a number, yes/no, or text of at most 200 characters with a letter or digit (so a well-formed answer has a
    non-empty key)."""
    if fmt == "choice":
        return _letter(answer, int(n_options or 0)) is not None
    if fmt == "number":
        return number_value(answer) is not None
    if fmt == "yesno":
        return _yesno(answer) is not None
    text = _clean(answer)
    return len(text) <= MAX_ANSWER_CHARS and re.search(r"[^\W_]", text) is not None  # a letter or digit in it


def answer_key(answer, fmt: str, n_options: int = 0) -> str:
    """The canonical form of a well-formed answer ("" for a malformed one): two answers agree when their keys are
    equal and not empty. Numbers compare by value (6 significant digits), text by its lower-case words."""
    if not is_valid(answer, fmt, n_options):
        return ""
    if fmt == "choice":
        return _letter(answer, int(n_options or 0)) or ""
    if fmt == "number":
        value = number_value(answer)
        return f"{value:.6g}" if value is not None else ""
    if fmt == "yesno":
        return _yesno(answer) or ""
    return " ".join(re.sub(r"[^\w\s]", " ", _strip_wrappers(_clean(answer)).lower()).split())


def same_answer(a, b, fmt: str, n_options: int = 0) -> bool:
    """Two well-formed answers that agree (a malformed answer agrees with nothing)."""
    ka = answer_key(a, fmt, n_options)
    return bool(ka) and ka == answer_key(b, fmt, n_options)


def extract_answer(response, fmt: str, n_options: int = 0) -> str:
    """The final answer of a free-text response, read as the benchmark's rules read one: the option letter, the
    number, yes/no or the text, in the line that states it (after the last "answer is"; else a short first line set
    apart by a blank line; else the last non-empty line); "" where none is found."""
    text = _clean(response)
    if not text:
        return ""
    text = re.sub(r"(?s)(?:<think>|◁think▷).*?(?:</think>|◁/think▷)", "", text).strip()  # thoughts are no answer
    tail = _ANSWER_IS.findall(text)
    last = tail[-1].strip() if tail else _text_line(text)  # the line that states the answer
    if fmt == "choice":
        first = last.split()[0] if last.split() else ""
        # a leading letter counts when marked as one ("B." "(B)" "B:"): a bare "I" or "A" starts a sentence
        for cand in (text, last, first if re.fullmatch(r"\(?[A-Za-z][\).:]", first) else ""):
            letter = _letter(cand, n_options)
            if letter:
                return letter
        options = "".join(chr(ord("A") + i) for i in range(n_options or 26))
        found = re.findall(rf"(?<![A-Za-z])\(?([{options}])\)?(?![A-Za-z])", last) or \
            re.findall(rf"(?<![A-Za-z])\(([{options}])\)", text)
        return found[-1] if len(set(found)) == 1 else ""
    if fmt == "number":
        for cand in (text, last):
            if number_value(cand) is not None:
                return _strip_wrappers(cand)
        boxed = re.findall(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}", text)
        if boxed and number_value(boxed[-1]) is not None:
            return boxed[-1].strip()
        fracs = re.findall(r"-?\\[dt]?frac\{[^{}]*\}\{[^{}]*\}", last)
        if fracs and number_value(fracs[-1]) is not None:
            return fracs[-1]
        nums = _NUM_IN_TEXT.findall(last) or _NUM_IN_TEXT.findall(text)
        return nums[-1].replace(" ", "") if nums else ""
    if fmt == "yesno":
        words = _YES_NO.findall(last) or _YES_NO.findall(text[:80])
        return words[0].lower() if words else ""
    answer = _strip_wrappers(last)
    return answer if len(answer) <= MAX_ANSWER_CHARS else ""


def _text_line(text: str) -> str:
    """The line of a free-text response that holds its answer: a short first line followed by a blank line and
    more (the answer stated first, an explanation after it), else the last non-empty line."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    if len(paragraphs) > 1 and "\n" not in paragraphs[0] and len(paragraphs[0]) <= _SHORT_LINE:
        return paragraphs[0]
    return (text.splitlines() or [""])[-1].strip() if text.strip() else ""


def free_form_format(gold) -> str:
    """The format of an item without options, from its gold answer: number when the gold is one, else text (a
    MATH-V gold such as 2\\sqrt{3} is no number, and a correct answer to it should still be well-formed)."""
    return "number" if number_value(gold) is not None else "text"


def infer_format(prompt: str) -> tuple[str, int]:
    """A live request's answer format from its prompt (the server's cascade, when the request does not say):
    lettered option lines make a choice item, "yes or no" a yes/no item, anything else free text."""
    letters = _OPTION_LINE.findall(prompt or "")
    if len(letters) >= 2 and letters[0] == "A":
        n = 0
        for i, letter in enumerate(letters):  # A, B, C, ... in order
            if letter != chr(ord("A") + i):
                break
            n = i + 1
        return "choice", n
    if _YESNO_PROMPT.search(prompt or ""):
        return "yesno", 0
    return "text", 0


def answer_keys(answers, formats, n_options) -> np.ndarray:
    """(n, m) object: the key of every answer of a table (a row per item, whose format and options are
    `formats[i]`, `n_options[i]`); "" where malformed. Each distinct (answer, format, n_options) is read once:
    answers repeat a lot (letters, yes/no, small numbers, "")."""
    answers = np.asarray(answers, dtype=object)
    memo: dict = {}
    out = np.empty(answers.shape, dtype=object)
    for i, (row, f, n) in enumerate(zip(answers, formats, n_options)):
        n = int(n or 0)
        for j, a in enumerate(row):
            k = (a, f, n)
            if k not in memo:
                memo[k] = answer_key(a, f, n)
            out[i, j] = memo[k]
    return out


def answer_table(answers, formats, n_options) -> tuple[np.ndarray, np.ndarray]:
    """(valid (n, m) bool, codes (n, m) int64) of a table of answers: whether each is well-formed, and a code that
    two answers of one row share exactly when they agree (-1: malformed, which agrees with nothing)."""
    keys = answer_keys(answers, formats, n_options)
    codes, _ = pd.factorize(pd.Series(keys.ravel()).where(keys.ravel() != "", None))
    codes = codes.astype(np.int64).reshape(keys.shape)
    return codes >= 0, codes


def extract_many(responses, formats, n_options) -> list[str]:
    """`extract_answer` over many rows, each distinct (response, format, n_options) read once."""
    memo: dict = {}
    out = []
    for r, f, n in zip(responses, formats, n_options):
        key = (r if isinstance(r, str) else _clean(r), f, int(n or 0))
        if key not in memo:
            memo[key] = extract_answer(key[0], f, key[2])
        out.append(memo[key])
    return out
