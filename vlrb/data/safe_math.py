"""Bounded evaluation of the arithmetic in model answers (MathVision/MathVista post-checks).

VLMEvalKit evaluates extracted answers with Python's `eval` (and a LaTeX parser) under a 30 s timeout. Here
the answer is evaluated by walking its AST with only arithmetic, comparisons, literals and a few builtins,
and every operand, power and step is bounded, so a crafted answer is refused in milliseconds instead of
taking minutes and gigabytes (`EvalLimitError`).
"""
from __future__ import annotations

import ast
import operator
import re
import warnings
from fractions import Fraction
from typing import Any, Callable

# --------------------------------------------------------------------------- safe Python eval

_BIN_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow, ast.BitXor: operator.xor, ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_, ast.LShift: operator.lshift, ast.RShift: operator.rshift,
}
_UNARY_OPS: dict[type, Callable[[Any], Any]] = {
    ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_,
    ast.Invert: operator.invert,
}
_CMP_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not,
}
# builtins an extracted answer may plausibly call; other names raise NameError as in Python
_BUILTINS: dict[str, Callable[..., Any]] = {
    "abs": abs, "min": min, "max": max, "round": round, "int": int, "float": float,
    "sum": sum, "len": len,
}
# Bounds of both evaluators. VLMEvalKit stops is_equal after 30 s; a crafted answer (repeated
# big-integer products, huge powers) would take minutes and gigabytes to compute here, so it is
# refused up front instead. Genuine answers are short numbers, far inside every bound.
_MAX_TEXT_CHARS = 32_767  # an Excel cell's limit: VLMEvalKit's xlsx files cannot hold longer answers
_MAX_BITS = 16_384  # any integer, numerator or denominator (~4,900 digits; Python literals stop at 4,300)
_MAX_EXPONENT = 10_000
_MAX_STEPS = 1_000  # AST nodes evaluated, or LaTeX tokens, per expression
_MAX_ITEMS = _MAX_TEXT_CHARS  # length of a string, list or tuple built while evaluating


class EvalLimitError(ArithmeticError):
    """An expression exceeds the evaluator's bounds: its value is undetermined, not computed."""


def _check_text(text: str) -> None:
    if len(text) > _MAX_TEXT_CHARS:
        raise EvalLimitError(f"expression longer than {_MAX_TEXT_CHARS} characters")


def _py_eval(text: str, names: dict[str, Any]) -> Any:
    """Python `eval` restricted to literals, arithmetic, comparisons and a few builtins."""
    _check_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ast.parse(text, mode="eval")
    return _eval_node(tree.body, names, [_MAX_STEPS])


def _eval_node(node: ast.AST, names: dict[str, Any], budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise EvalLimitError(f"more than {_MAX_STEPS} evaluation steps")
    return _check_value(_eval_step(node, names, budget))


def _eval_step(node: ast.AST, names: dict[str, Any], budget: list[int]) -> Any:
    def ev(child: ast.AST) -> Any:
        return _eval_node(child, names, budget)

    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        if node.id in _BUILTINS:
            return _BUILTINS[node.id]
        raise NameError(node.id)
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
        left, right = ev(node.left), ev(node.right)
        _check_size(node.op, left, right)
        return _BIN_OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return _UNARY_OPS[type(node.op)](ev(node.operand))
    if isinstance(node, ast.Compare):
        left = ev(node.left)
        for op, comp in zip(node.ops, node.comparators):
            right = ev(comp)
            if not _CMP_OPS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.BoolOp):
        value = None
        for operand in node.values:
            value = ev(operand)
            if isinstance(node.op, ast.And) != bool(value):
                return value
        return value
    if isinstance(node, ast.IfExp):
        return ev(node.body) if ev(node.test) else ev(node.orelse)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [ev(e) for e in node.elts]
        return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Call) and not node.keywords:
        func = ev(node.func)
        if func in _BUILTINS.values():
            return func(*[ev(a) for a in node.args])
    raise ValueError(f"unsupported expression: {type(node).__name__}")


def _check_size(op: ast.operator, left: Any, right: Any) -> None:
    """Refuse results Python would take ages or gigabytes to build (10**10**9, "x" * 10**9)."""
    if isinstance(op, (ast.Pow, ast.LShift)) and isinstance(left, int) and isinstance(right, int):
        bits = right if isinstance(op, ast.LShift) else abs(left).bit_length() * right
        if bits > _MAX_BITS:
            raise EvalLimitError("result too large")
    sequences = (str, bytes, list, tuple)
    if isinstance(op, ast.Mult) and (isinstance(left, sequences) or isinstance(right, sequences)):
        raise OverflowError("sequence repetition")


def _check_value(value: Any) -> Any:
    """Every intermediate result stays small, so each further operation stays cheap."""
    if isinstance(value, int) and value.bit_length() > _MAX_BITS:
        raise EvalLimitError(f"integer of more than {_MAX_BITS} bits")
    if isinstance(value, Fraction) and max(value.numerator.bit_length(), value.denominator.bit_length()) > _MAX_BITS:
        raise EvalLimitError(f"fraction of more than {_MAX_BITS} bits")
    if isinstance(value, (str, bytes, list, tuple, set)) and len(value) > _MAX_ITEMS:
        raise EvalLimitError(f"sequence of more than {_MAX_ITEMS} items")
    return value


# --------------------------------------------------------------------------- LaTeX arithmetic

_LATEX_TOKEN = re.compile(r"\s*(\d+\.?\d*|\.\d+|\\[a-z]+|\\[!,]|[-+*/^(){}\[\]])\s*",
                          re.IGNORECASE)
_LATEX_FRACS = {r"\frac", r"\dfrac", r"\tfrac"}
_LATEX_MUL = {"*", r"\cdot", r"\times"}
_LATEX_DIV = {"/", r"\div"}
_LATEX_NOOP = {r"\left", r"\right", r"\!", r"\,"}
_OPEN_CLOSE = {"(": ")", "{": "}", "[": "]"}


def _latex_value(text: str) -> float:
    """Value of a LaTeX expression built only from numbers, +-*/, \\frac, ^ and brackets.

    Stands in for VLMEvalKit's `eval(str(latex2sympy(text)))`: whatever sympy keeps symbolic
    (\\sqrt, \\pi, letters) prints as a name that eval cannot resolve, so only such rational
    arithmetic can ever compare equal there. Raises ValueError otherwise.
    """
    _check_text(text)
    tokens = _tokenize_latex(text)
    if len(tokens) > _MAX_STEPS:
        raise EvalLimitError(f"more than {_MAX_STEPS} LaTeX tokens")
    parser = _LatexParser(tokens)
    value = parser.expr()
    if parser.pos != len(tokens):
        raise ValueError("trailing LaTeX")
    return float(value)


def _tokenize_latex(text: str) -> list[str]:
    tokens, pos, text = [], 0, text.strip()
    while pos < len(text):
        match = _LATEX_TOKEN.match(text, pos)
        if not match:
            raise ValueError(f"not arithmetic LaTeX at {text[pos:]!r}")
        pos = match.end()
        if match.group(1) not in _LATEX_NOOP:
            tokens.append(match.group(1))
    return tokens


class _LatexParser:
    """Recursive descent over LaTeX arithmetic with exact fractions."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.pos = tokens, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise ValueError(f"expected {expected!r}, got {token!r}")
        self.pos += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = _check_value(value + self.term() if self.take() == "+" else value - self.term())
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while True:
            token = self.peek()
            if token in _LATEX_MUL:
                self.take()
                value *= self.unary()
            elif token in _LATEX_DIV:
                self.take()
                value /= self.unary()
            elif token is not None and (token[0].isdigit() or token[0] == "."
                                        or token in _OPEN_CLOSE or token in _LATEX_FRACS):
                value *= self.power()  # implicit multiplication: 2\frac{1}{2}, 3(4)
            else:
                return value
            _check_value(value)

    def unary(self) -> Fraction:
        if self.peek() in ("+", "-"):
            return self.unary() if self.take() == "+" else -self.unary()
        return self.power()

    def power(self) -> Fraction:
        base = self.atom()
        if self.peek() == "^":
            self.take()
            exponent = self.atom()
            if exponent.denominator != 1:
                raise ValueError("non-integer power is irrational for sympy")
            bits = max(base.numerator.bit_length(), base.denominator.bit_length()) * abs(exponent)
            if abs(exponent) > _MAX_EXPONENT or bits > _MAX_BITS:
                raise EvalLimitError("power too large")
            base = base ** int(exponent)
        return base

    def atom(self) -> Fraction:
        token = self.take()
        if token[0].isdigit() or token[0] == ".":
            return _check_value(Fraction(token))
        if token in _OPEN_CLOSE:
            value = self.expr()
            self.take(_OPEN_CLOSE[token])
            return value
        if token in _LATEX_FRACS:
            return self.atom() / self.atom()
        raise ValueError(f"unsupported LaTeX token {token!r}")
