"""Verifiable rewards (math, Countdown, multiple choice) and the answer region.

The reward is the only ground truth of RL with verifiable rewards, and the answer region
(`answer_span`) decides where the information flow of eq. (2) is aimed. Model output is hostile
input: nothing here ever calls eval(), and every verifier bounds the work it hands to sympy.
"""
from __future__ import annotations

import functools
import logging
import math
import re
import signal
import threading
from contextlib import contextmanager
from fractions import Fraction

from math_verify import LatexExtractionConfig, parse, verify

# math-verify warns once that its signal timeouts are off: we run our own deadline instead.
logging.getLogger("math_verify").setLevel(logging.ERROR)

# ---------------------------------------------------------------------------------------------
# The answer region
# ---------------------------------------------------------------------------------------------

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NONBLANK = re.compile(r"\S")
FALLBACKS = ("last_line", None)


def _brace_matches(text: str) -> dict[int, int]:
    """Map the index of every balanced '{' to the index of its '}' in one linear pass.

    A backslash escapes the next character, so \\{ and \\} (literal braces in LaTeX) are not
    grouping braces; "\\\\" (a LaTeX line break) is one escaped pair and does not hide a brace.
    """
    matches: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            matches[stack.pop()] = i
        i += 1
    return matches


def boxed_span(response: str) -> tuple[int, int] | None:
    """[start, end) of the inside of the last complete \\boxed{...} or \\fbox{...}, else None.

    "Last" means the box whose closing brace comes last, so in \\boxed{\\boxed{5}} the outer box
    wins. A box whose braces never close (a truncated response) or whose inside is blank does
    not count.
    """
    matches = _brace_matches(response) if "\\" in response else {}
    best: tuple[int, int] | None = None
    for m in _BOX_OPEN.finditer(response):
        open_at = m.end() - 1
        close_at = matches.get(open_at)
        if close_at is None or not _NONBLANK.search(response, open_at + 1, close_at):
            continue
        if best is None or close_at > best[1]:
            best = (open_at + 1, close_at)
    return best


def _answer_tag_span(response: str) -> tuple[int, int] | None:
    """[start, end) of the inside of the last complete <answer>...</answer> (TinyZero), else None."""
    close_at = response.rfind("</answer>")
    open_at = response.rfind("<answer>", 0, max(close_at, 0))
    if close_at < 0 or open_at < 0:
        return None
    return open_at + len("<answer>"), close_at


def _last_line_span(response: str) -> tuple[int, int] | None:
    """[start, end) of the last non-empty line, surrounding whitespace stripped; None if blank."""
    end = len(response.rstrip())
    if end == 0:
        return None
    start = response.rfind("\n", 0, end) + 1
    while response[start].isspace():
        start += 1
    return start, end


def answer_span(response: str, fallback: str | None = "last_line") -> tuple[int, int] | None:
    """Character span [start, end) of the final answer region of a response.

    In order: the inside of the last complete \\boxed{...} / \\fbox{...} (see `boxed_span`); else
    the inside of the last <answer>...</answer> tag (the Countdown / TinyZero format); else the
    fallback: "last_line" (default) gives the last non-empty line, None gives None.
    rollout.py turns the span into the answer token mask through the tokenizer's offsets.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"answer_span: fallback must be one of {FALLBACKS}, got {fallback!r}")
    span = boxed_span(response) or _answer_tag_span(response)
    if span is None and fallback == "last_line":
        span = _last_line_span(response)
    return span


# ---------------------------------------------------------------------------------------------
# Guards and deadline: model output is hostile input
# ---------------------------------------------------------------------------------------------

MAX_ANSWER_CHARS = 1000  # longest benchmark gold is ~200 chars
MAX_DIGITS = 200  # longest digit run in a benchmark gold is 23
MAX_DEPTH = 30  # bracket nesting
MAX_EXPONENT_DIGITS = 5  # 10^{100} appears in OlympiadBench; 10^{99999} is still cheap
MATH_TIMEOUT_S = 1.0  # wall-clock budget of one math_reward call (main thread only, see below)

_DIGITS = re.compile(r"\d+")
_EXPONENT = re.compile(r"(?:\^|\*\*)\s*(\{|\()?")
_FACTORIAL_ARG = re.compile(r"\d+\s*!$")


class _Deadline(BaseException):
    """Raised by SIGALRM; a BaseException so the `except Exception` in libraries can't swallow it."""


@contextmanager
def _deadline(seconds: float | None):
    """Interrupt the block after `seconds` of wall clock (SIGALRM; main thread only, else no-op).

    Python code (sympy, the LaTeX parser) is interrupted between bytecodes; one huge C-level
    operation is not, which is why `refuse_reason` keeps huge integers away from sympy.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise _Deadline()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _group_end(text: str, start: int, opener: str | None) -> int:
    """Index just past the exponent operand that starts at `start` (after ^ or **)."""
    if opener is None:  # a single token: a digit run, a letter or a command name
        m = re.compile(r"\d+|\\[A-Za-z]+|.").match(text, start)
        return m.end() if m else start
    closer = {"{": "}", "(": ")"}[opener]
    depth = 1
    for i in range(start, len(text)):
        depth += (text[i] == opener) - (text[i] == closer)
        if depth == 0:
            return i + 1
    return len(text)


def _base_before(text: str, end: int) -> str:
    """The bracket group ending just before `end` (the base of a power), or "" for a plain token."""
    i = end - 1
    while i >= 0 and text[i].isspace():
        i -= 1
    if i < 0 or text[i] not in ")}]":
        return ""
    opener, depth = {")": "(", "}": "{", "]": "["}[text[i]], 0
    for j in range(i, -1, -1):
        depth += (text[j] == text[i]) - (text[j] == opener)
        if depth == 0:
            return text[j : i + 1]
    return text[: i + 1]


def _is_numeric_power(group: str) -> bool:
    """A power or factorial of numbers only (e.g. "{9^{9^9}}", "(100!)"): huge when evaluated."""
    has_power = "^" in group or "**" in group or "!" in group
    letters = re.sub(r"\\(?:left|right|cdot|times)", "", group)
    return has_power and not re.search(r"[A-Za-z]", letters)


def refuse_reason(answer: str) -> str | None:
    """Why an answer string is too dangerous to hand to sympy, or None when it is safe.

    Refused: long strings, long digit runs, deep bracket nesting, exponents with more than
    MAX_EXPONENT_DIGITS digits, power towers of numbers (9^{9^{9^9}}, (9^{99})^{99}, 2^2^2;
    symbolic ones like e^{-x^2} pass), factorials of numbers > 1000 and nested factorials.
    Each rule is linear in len(answer); no benchmark gold is refused.
    """
    if len(answer) > MAX_ANSWER_CHARS:
        return f"longer than {MAX_ANSWER_CHARS} chars"
    if any(len(d) > MAX_DIGITS for d in _DIGITS.findall(answer)):
        return f"a number with more than {MAX_DIGITS} digits"
    depth = 0
    for c in answer:
        depth += (c in "([{") - (c in ")]}")
        if depth > MAX_DEPTH:
            return f"brackets nested deeper than {MAX_DEPTH}"
    for m in _EXPONENT.finditer(answer):
        end = _group_end(answer, m.end(), m.group(1))
        exponent, base = answer[m.end() : end], _base_before(answer, m.start())
        if any(len(d) > MAX_EXPONENT_DIGITS for d in _DIGITS.findall(exponent)):
            return "an exponent with a huge number"
        if _is_numeric_power(exponent) or _is_numeric_power(base) or _EXPONENT.match(answer, end):
            return "a power tower (a power of a power, or a chain a^b^c)"
    for m in re.finditer("!", answer):
        arg = _base_before(answer, m.start()) or (_FACTORIAL_ARG.search(answer, 0, m.end()) or m).group(0)
        if any(int(d) > 1000 for d in _DIGITS.findall(arg)) or _is_numeric_power(arg[:-1] if arg.endswith("!") else arg):
            return "a factorial of a huge number"
    return None


# ---------------------------------------------------------------------------------------------
# Math
# ---------------------------------------------------------------------------------------------

# Only LaTeX extraction: math-verify's ExprExtractionConfig runs sympy.parse_expr, i.e. eval().
_LATEX_ONLY = [LatexExtractionConfig(boxed_match_priority=0)]
_TEXT_NUMBER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{\s*([-+]?[\d.,]*\d)\s*[A-Za-z ]*\}")
_NUMBER_WORDS = re.compile(r"^\s*([-+]?[\d.,]*\d)\s+(?:[A-Za-z]{2,}\s*)+$")


def normalise_answer(answer: str) -> str:
    """Our normalisations on top of math-verify's own (which already handles \\text units,
    "x = 5", thousands separators, \\%, ^\\circ, \\dfrac/\\tfrac, ordered tuples and intervals):
    the unicode degree sign, trailing punctuation, \\text{18 dollars}, and "18 dollars"."""
    answer = answer.replace("°", "^\\circ").replace("$", "").strip()
    answer = re.sub(r"(?:\s|[.,;:]|\\[.,;: ]|\\quad|\\qquad)+$", "", answer)
    answer = _TEXT_NUMBER.sub(r"\1", answer)
    return _NUMBER_WORDS.sub(r"\1", answer)


def _gold_strings(gold) -> tuple[str, ...]:
    """Acceptable gold answers as LaTeX strings: a str, an int/float, or a list/tuple of them."""
    if isinstance(gold, (list, tuple)):
        if not gold:
            raise ValueError("math_reward: gold is an empty list")
        return tuple(s for g in gold for s in _gold_strings(g))
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float, Fraction)):
        raise TypeError(f"math_reward: gold must be str, number or list, got {type(gold).__name__}")
    if isinstance(gold, float):
        if not math.isfinite(gold):
            raise ValueError(f"math_reward: gold is not finite: {gold}")
        gold = int(gold) if gold.is_integer() else repr(gold)
    gold = normalise_answer(str(gold))
    if not gold:
        raise ValueError("math_reward: gold is empty")
    return (gold,)


@functools.lru_cache(maxsize=4096)
def _parse(answer: str) -> tuple:
    """math-verify parse of one answer (no timeout of its own: `math_reward` sets the deadline)."""
    return tuple(parse("\\boxed{" + answer + "}", extraction_config=_LATEX_ONLY, parsing_timeout=None))


def _equivalent(pred: str, gold: str) -> bool:
    if pred == gold:
        return True
    parsed_pred, parsed_gold = _parse(pred), _parse(gold)
    if not parsed_pred or not parsed_gold:
        return False
    return verify(list(parsed_gold), list(parsed_pred), timeout_seconds=None)


def math_reward(response: str, gold, timeout_s: float | None = MATH_TIMEOUT_S) -> float:
    """1.0 when the last complete \\boxed{}/\\fbox{} of `response` is mathematically equivalent to
    `gold` (a LaTeX string, a number, or a list of acceptable answers), else 0.0.

    No complete box scores 0. Answers that `refuse_reason` flags score 0 without reaching sympy,
    and the whole comparison runs under a `timeout_s` deadline (0.0 when it runs out).
    """
    golds = _gold_strings(gold)
    span = boxed_span(response)
    if span is None:
        return 0.0
    pred = normalise_answer(response[span[0] : span[1]])
    if not pred or refuse_reason(pred) is not None:
        return 0.0
    try:
        with _deadline(timeout_s):
            return float(any(_equivalent(pred, g) for g in golds))
    except _Deadline:
        return 0.0


def gold_of(row: dict):
    """The gold answer of a benchmark row, in the form its file stores it (../shared/benchmarks):
    OlympiadBench `final_answer` (a list), DAPO/AIME25/Countdown-style `reward_model.ground_truth`,
    GSM8K `answer` ending in "#### <number>", MATH500/AIME24/AMC23 `answer` (str or float), and
    Minerva's last \\boxed{} of `solution`."""
    if "final_answer" in row:
        return row["final_answer"]
    if "reward_model" in row:
        return row["reward_model"]["ground_truth"]
    if "answer" in row:
        answer = row["answer"]
        return answer.rsplit("####", 1)[1].strip() if isinstance(answer, str) and "####" in answer else answer
    if "solution" in row and (span := boxed_span(row["solution"])):
        return row["solution"][span[0] : span[1]]
    raise KeyError(f"gold_of: no known gold field in a row with keys {sorted(row)}")
