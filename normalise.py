"""How an answer is read before it is compared: the normalisations every verifier of rewards.py
applies to the answer and to the gold alike (unicode, currency, scientific notation, digit
groups, doubled brackets), on top of math-verify's own. Plain text in, plain text out: nothing
here parses or evaluates anything.
"""
from __future__ import annotations

import math
import re
import unicodedata
from fractions import Fraction

import sandbox

_TEXT_NUMBER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{\s*([-+]?[\d.,]*\d)\s*[A-Za-z ]*\}")
_NUMBER_WORDS = re.compile(r"^\s*([-+]?[\d.,]*\d)\s+(?:[A-Za-z]{2,}\s*)+$")
# One LaTeX token: a command, an escaped character (\\$, \\, and "\\\\" itself), or a character.
# Scanning by tokens never splits an escape, so no rule below can eat half of one.
_LATEX_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|.", re.DOTALL)
# Currency marks, dropped as a grader drops them: \\$18, US\\$18, 18 EUR, €5, \\pounds 3.
_CURRENCY = {"\\$", "$", "€", "£", "¥", "\\euro", "\\texteuro", "\\pounds", "\\textsterling",
             "\\textdollar", "\\yen"}
_CURRENCY_CODE = re.compile(r"\b(?:US|USD|EUR|GBP|JPY|CNY|RMB)\s*(?=\\\$|\$|\d)|\s(?:USD|EUR|GBP)$")
_TRAILING = {".", ",", ";", ":", "\\,", "\\;", "\\:", "\\ ", "\\.", "\\!", "\\\\", "\\quad",
             "\\qquad"}
# Scientific notation: 4.5e33, and 1e-07 (a float gold's repr), is 4.5 \\times 10^{33}; math-verify
# reads the e as Euler's number (4.5e33 = 4.5 * e * 33).
_SCI_NOTATION = re.compile(r"(?<![\w\\.])(\d+(?:\.\d*)?|\.\d+)[eE]\+?(-?\d+)(?![\w.])")
# A digit-group separator inside a number: 1\\,000, 1~000, 1\\;000, a thin space (U+2009, U+202F).
_GROUP_SEPARATOR = re.compile(r"(?<=\d)(?:\\[,;: ]|~|\\thinspace ?|[\u2009\u202f])(?=\d{3}(?!\d))")
_SYNONYMS = {"\\varnothing": "\\emptyset"}  # math-verify reads \\varnothing as a symbol
# \\left and \\right before round and square brackets and bars change nothing but the size
_SIZED = re.compile(r"\\(?:left|right)\s*(?=[()\[\]|])")
_PAIRS = {"(": ")", "[": "]", "{": "}"}


def unicode_normal(text: str) -> str:
    """NFKC (fullwidth ５ -> 5, Ｆ -> F, no-break space -> space), as every verifier reads its
    answer: super- and subscript digits become ^{..} and _{..} first (NFKC alone would read x²
    as x2), the fraction slash of NFKC's ½ -> 1⁄2 and the minus sign become / and -."""
    text = sandbox.scripts_as_latex(text)
    return unicodedata.normalize("NFKC", text).replace("\u2044", "/").replace("\u2212", "-")


def _without_doubled_brackets(text: str) -> str:
    """((x)) -> (x), [[x]] -> [x], {{x}} -> {x}: a pair whose whole inside is one pair of the
    same kind says nothing more, and math-verify's parser pays for every level of nesting (15
    levels of "(" took 2.5 s of CPU the first time, past the 1 s deadline). Escaped brackets
    (\\{) are not grouping; mismatched ones ([1, 2)) are left alone."""
    stack: list[int] = []
    close: dict[int, int] = {}
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] in _PAIRS:
            stack.append(i)
        elif stack and text[i] == _PAIRS[text[stack[-1]]]:
            close[stack.pop()] = i
        i += 1
    drop: set[int] = set()
    for i, j in close.items():
        if close.get(i + 1) == j - 1 and text[i + 1] == text[i]:
            drop.update((i, j))
    return "".join(c for k, c in enumerate(text) if k not in drop)


def normalise_answer(answer: str) -> str:
    """Our normalisations on top of math-verify's own (which already handles \\text units,
    "x = 5", thousands separators, \\%, ^\\circ, \\dfrac/\\tfrac, ordered tuples and intervals):
    unicode (`unicode_normal`), currency (\\$18, $18$, €18, US\\$18 and 18 USD all read 18), the
    unicode degree sign, trailing punctuation and spacing, \\text{18 dollars}, and "18 dollars";
    scientific notation (4.5e33 is 4.5 \\times 10^{33}), digit groups (1\\,000 is 1000),
    \\varnothing (\\emptyset), doubled brackets ((x)) and \\left( \\right) sizing.

    LaTeX is read token by token (`_LATEX_TOKEN`), so "\\\\" (a line break) followed by "$" or
    "," stays a line break: no rule removes half of an escape.
    """
    answer = unicode_normal(_GROUP_SEPARATOR.sub("", answer))
    answer = _CURRENCY_CODE.sub("", answer.replace("°", "^\\circ"))
    tokens = [_SYNONYMS.get(t, t) for t in _LATEX_TOKEN.findall(answer) if t not in _CURRENCY]
    while tokens and (tokens[-1].isspace() or tokens[-1] in _TRAILING):
        tokens.pop()
    answer = "".join(tokens).strip()
    answer = _TEXT_NUMBER.sub(r"\1", answer)
    answer = _NUMBER_WORDS.sub(r"\1", answer)
    answer = _SCI_NOTATION.sub(r"\1 \\times 10^{\2}", answer)
    return _without_doubled_brackets(_SIZED.sub("", answer))


def gold_strings(gold) -> tuple[str, ...]:
    """Acceptable gold answers as normalised LaTeX strings: a str, an int/float, or a list/tuple
    of them. A gold that `sandbox.refuse_reason` refuses as an answer raises ValueError."""
    if isinstance(gold, (list, tuple)):
        if not gold:
            raise ValueError("math_reward: gold is an empty list")
        return tuple(s for g in gold for s in gold_strings(g))
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float, Fraction)):
        raise TypeError(f"math_reward: gold must be str, number or list, got {type(gold).__name__}")
    if isinstance(gold, float):
        if not math.isfinite(gold):
            raise ValueError(f"math_reward: gold is not finite: {gold}")
        gold = int(gold) if gold.is_integer() else repr(gold)
    gold = normalise_answer(str(gold))
    if not gold:
        raise ValueError("math_reward: gold is empty")
    if (why := sandbox.refuse_reason(gold)) is not None:  # e.g. 9^{9^{9^{9}}}: 7 s in sympy
        raise ValueError(f"math_reward: gold {shown(gold)} is refused as an answer would be: {why}")
    return (gold,)


def shown(value, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters with the full length said: an error message names
    the offending value without printing 52 MB of it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"
