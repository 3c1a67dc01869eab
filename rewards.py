"""Verifiable rewards (math, Countdown, multiple choice) and the answer region.

The reward is the only ground truth of RL with verifiable rewards, and the answer region
(`answer_span`) decides where the information flow of eq. (2) is aimed. Model output is hostile
input: nothing here ever calls eval(), and every verifier bounds the work it hands to sympy
(sandbox.py: refusals, the deadline, the worker pool of `score_batch`).
"""
from __future__ import annotations

import functools
import logging
import math
import re
from fractions import Fraction
from typing import Sequence

import sympy
from math_verify import LatexExtractionConfig, parse, verify

import sandbox
from config import ANSWER_FALLBACKS
from normalise import gold_strings, normalise_answer, shown, unicode_normal

# math-verify warns once that its signal timeouts are off: we run our own deadline instead.
logging.getLogger("math_verify").setLevel(logging.ERROR)

# ---------------------------------------------------------------------------------------------
# The answer region
# ---------------------------------------------------------------------------------------------

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NONBLANK = re.compile(r"\S")


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
    """[start, end) of the inside of the last complete <answer>...</answer> (TinyZero), or None."""
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


def answer_span(response: str, fallback: str | None = None) -> tuple[int, int] | None:
    """Character span [start, end) of the final answer region of a response.

    The inside of the last complete \\boxed{...} / \\fbox{...} (see `boxed_span`) or of the last
    <answer>...</answer> tag (the Countdown / TinyZero format), whichever comes last; a box inside
    the tag wins over the tag. Without either: None (the default, the paper's answer region: no
    box, no flow target, so flow credit leaves that response at gamma 1), or, with
    fallback="last_line", the last non-empty line. rollout.py turns the span into the answer
    token mask through the tokenizer's offsets.
    """
    if fallback not in ANSWER_FALLBACKS:
        raise ValueError(f"answer_span: fallback must be one of {ANSWER_FALLBACKS}, "
                         f"got {fallback!r}")
    box, tag = boxed_span(response), _answer_tag_span(response)
    span = tag if box is None or (tag is not None and box[1] < tag[0]) else box
    if span is None and fallback == "last_line":
        span = _last_line_span(response)
    return span


# ---------------------------------------------------------------------------------------------
# Math
# ---------------------------------------------------------------------------------------------

MATH_TIMEOUT_S = 1.0  # CPU-time budget of one math_reward call (sandbox.deadline: main thread)

# Only LaTeX extraction: math-verify's ExprExtractionConfig runs sympy.parse_expr, i.e. eval().
_LATEX_ONLY = [LatexExtractionConfig(boxed_match_priority=0)]
_PERCENT = re.compile(r"(.+?)\s*\\?%", re.DOTALL)


@functools.lru_cache(maxsize=4096)
def _parse(answer: str) -> tuple:
    """math-verify parse of one answer (no timeout of its own: `math_reward` sets the deadline)."""
    boxed = "\\boxed{" + answer + "}"
    return tuple(parse(boxed, extraction_config=_LATEX_ONLY, parsing_timeout=None))


# math-verify's absolute tolerances: Floats rounded to 6 places, differences chopped at 15 digits
FLOAT_ROUNDING, NUMERIC_PRECISION = 6, 15


def _tolerance(gold) -> tuple[int, int]:
    """verify's (float_rounding, numeric_precision) for a gold: relative to its magnitude.

    At math-verify's defaults all small values are equal (1.6e-19 = 3.2e-19, 0.0000004 =
    0.0000001). A numeric gold of size 10^m with m < 0 moves both by -m - 1 places: a comparison
    keeps the 6 significant digits it keeps at size 0.1 to 1. Larger golds keep the defaults.
    """
    try:
        size = abs(complex(gold.evalf())) if isinstance(gold, sympy.Expr) and gold.is_number else 1
    except (TypeError, ValueError, OverflowError):
        size = 1
    shift = -math.floor(math.log10(size)) - 1 if 0 < size < 1 else 0
    return FLOAT_ROUNDING + shift, NUMERIC_PRECISION + shift


def _verify(pred: str, gold: str) -> bool:
    """math-verify's equivalence of two normalised answers, its tolerances relative (`_tolerance`)."""
    if pred == gold:
        return True
    parsed_pred, parsed_gold = _parse(pred), _parse(gold)
    if not parsed_pred or not parsed_gold:
        return False
    rounding, precision = _tolerance(parsed_gold[0])
    return verify(list(parsed_gold), list(parsed_pred), float_rounding=rounding,
                  numeric_precision=precision, timeout_seconds=None)


def _equivalent(pred: str, gold: str) -> bool:
    """`_verify`, and a percentage on one side only also without its sign: math-verify equates
    50\\% with 50 (integers) but not 12.5\\% with 12.5."""
    if _verify(pred, gold):
        return True
    percent_pred, percent_gold = _PERCENT.fullmatch(pred), _PERCENT.fullmatch(gold)
    if (percent_pred is None) == (percent_gold is None):
        return False
    return _verify(percent_pred[1] if percent_pred else pred,
                   percent_gold[1] if percent_gold else gold)


# What a process pays once: sympy's and the LaTeX parser's lazy imports and caches (about 1 s of
# CPU, several times that in wall clock on a busy machine). Fixed inputs, so the cost is bounded.
_WARM_UP = [("x+1", "1+x"), ("\\frac{1}{2}", "0.5"), ("[1, 2)", "[1,2)"),
            ("(3, \\pi/2)", "\\left(3, \\frac{\\pi}{2}\\right)"), ("2\\sqrt{2}", "\\sqrt{8}"),
            ("50\\%", "50")]


@functools.cache
def warm_up() -> None:
    """Pay the one-off cost of the first comparisons in this process, outside any deadline.

    `math_reward` calls it before it arms its deadline, and every worker of `score_batch` calls
    it before it takes items: a cold first parse must not run out a deadline meant for one
    answer, which would score a correct answer 0 (and, in a worker, leave the caches cold).
    """
    for pred, gold in _WARM_UP:
        _equivalent(pred, gold)


def math_reward(response: str, gold, timeout_s: float | None = MATH_TIMEOUT_S) -> float:
    """1.0 when the last complete \\boxed{}/\\fbox{} of `response` is mathematically equivalent to
    `gold` (a LaTeX string, a number, or a list of acceptable answers), else 0.0.

    No complete box scores 0. Answers that `sandbox.refuse_reason` flags score 0 without reaching
    sympy, and the comparison runs under a deadline of `timeout_s` seconds of this thread's CPU
    time (0.0 when it runs out; see sandbox.deadline: a busy machine does not run it out). The
    first call of a process runs `warm_up` first, outside the deadline.
    """
    golds = gold_strings(gold)
    span = boxed_span(response)
    if span is None:
        return 0.0
    pred = normalise_answer(response[span[0] : span[1]])
    if not pred or sandbox.refuse_reason(pred) is not None:
        return 0.0
    warm_up()
    try:
        with sandbox.deadline(timeout_s):
            return float(any(_equivalent(pred, g) for g in golds))
    except sandbox.Deadline:
        return 0.0


def check_gold(kind: str, gold) -> None:
    """Raise ValueError or TypeError if `gold` is not a gold of REWARDS[kind] (the loaders' check).
    A math gold is refused as an answer would be (`gold_strings`) and parsed, after `warm_up`,
    within the deadline: a gold math-verify reads as nothing, or only past MATH_TIMEOUT_S of CPU,
    would score every answer 0."""
    if kind != "math":
        REWARDS[kind]("", gold)  # an empty response: scores 0, but a bad gold raises
        return
    warm_up()
    for text in gold_strings(gold):
        try:
            with sandbox.deadline(MATH_TIMEOUT_S):
                parsed = _parse(text)
        except sandbox.Deadline:
            raise ValueError(f"math-verify takes more than {MATH_TIMEOUT_S} s of CPU to read "
                             f"gold {shown(text)}") from None
        if not parsed:
            raise ValueError(f"math-verify reads nothing in gold {shown(text)}")


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
        if isinstance(answer, str) and "####" in answer:
            return answer.rsplit("####", 1)[1].strip()
        return answer
    if "solution" in row and (span := boxed_span(row["solution"])):
        return row["solution"][span[0] : span[1]]
    raise KeyError(f"gold_of: no known gold field in a row with keys {sorted(row)}")


# ---------------------------------------------------------------------------------------------
# Countdown (TinyZero protocol)
# ---------------------------------------------------------------------------------------------

MAX_EXPRESSION_CHARS = 200
_TOKEN = re.compile(r"\s*(?:([0-9]+)|([-+*/()]))")
_OPERATOR_SPELLINGS = {"\\times": "*", "\\cdot": "*", "×": "*", "·": "*", "\\div": "/", "÷": "/",
                       "\\left": "", "\\right": ""}


class ExpressionError(ValueError):
    """A Countdown answer that is not an arithmetic expression over integers with + - * / ( )."""


def parse_countdown(text: str) -> tuple[Fraction, list[int]]:
    """Exact value and integer literals of an expression with + - * / and parentheses.

    Recursive descent, never eval: expr := term (('+'|'-') term)*, term := factor (('*'|'/')
    factor)*, factor := INT | '(' expr ')'. No unary minus, no decimals (Countdown numbers are
    positive integers). The text is read after `unicode_normal` (fullwidth digits and operators
    are ASCII). Raises ExpressionError on anything else, including division by zero.
    """
    text = unicode_normal(text)
    for spelled, op in _OPERATOR_SPELLINGS.items():
        text = text.replace(spelled, op)
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"longer than {MAX_EXPRESSION_CHARS} chars")
    tokens, pos = [], 0
    for m in _TOKEN.finditer(text):
        if m.start() != pos:
            break
        tokens.append(m.group(1) or m.group(2))
        pos = m.end()
    if text[pos:].strip():
        raise ExpressionError(f"unexpected text at {text[pos:pos + 20]!r}")
    literals: list[int] = []
    i = 0

    def peek() -> str | None:
        return tokens[i] if i < len(tokens) else None

    def factor(depth: int) -> Fraction:
        nonlocal i
        tok = peek()
        if depth > 50:
            raise ExpressionError("parentheses nested too deeply")
        if tok is not None and tok.isdigit():
            i += 1
            literals.append(int(tok))
            return Fraction(int(tok))
        if tok == "(":
            i += 1
            value = expr(depth + 1)
            if peek() != ")":
                raise ExpressionError("unbalanced parentheses")
            i += 1
            return value
        raise ExpressionError(f"expected a number or '(', got {tok!r}")

    def term(depth: int) -> Fraction:
        nonlocal i
        value = factor(depth)
        while peek() in ("*", "/"):
            op = tokens[i]
            i += 1
            rhs = factor(depth)
            if op == "/" and rhs == 0:
                raise ExpressionError("division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def expr(depth: int) -> Fraction:
        nonlocal i
        value = term(depth)
        while peek() in ("+", "-"):
            op = tokens[i]
            i += 1
            rhs = term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    value = expr(0)
    if i != len(tokens):
        raise ExpressionError(f"unexpected {tokens[i]!r}")
    return value, literals


def countdown_reward(response: str, numbers: Sequence[int], target: int | float) -> float:
    """1.0 when the final answer (see `answer_span`: the last <answer>...</answer> as TinyZero asks,
    or a \\boxed{} inside or after it) is an expression using every number of `numbers` exactly
    once with + - * / and parentheses whose exact value is within 1e-6 of `target`, else 0.0."""
    if not numbers or any(isinstance(n, bool) or not isinstance(n, int) for n in numbers):
        raise TypeError(
            f"countdown_reward: numbers must be a non-empty list of ints, got {shown(numbers)}"
        )
    span = answer_span(response, fallback=None)
    if span is None:
        return 0.0
    try:
        value, literals = parse_countdown(response[span[0] : span[1]])
    except ExpressionError:
        return 0.0
    if sorted(literals) != sorted(numbers):
        return 0.0
    return float(abs(value - Fraction(target)) < Fraction(1, 10**6))


# ---------------------------------------------------------------------------------------------
# Multiple choice (CrossThinkQA)
# ---------------------------------------------------------------------------------------------

_GOLD_LETTER = re.compile(r"\s*\(?([A-Z])\)?(?:\s*[:.)]|\s*$)")
_PRED_LETTER = re.compile(r"\s*(?:\\text(?:bf)?\s*\{)?\s*\(?([A-Za-z])\)?\s*(?:[:.)}]|$)")
# a second option after the first: "(A) or (C)", "A, C", "A/C", "A and C", "(A)(C)" (hedging)
_SECOND_OPTION = re.compile(
    r"[\s)}]*(?:(?:,|;|/|&|\\lor|\\vee|\bor\b|\band\b|\\text\s*\{\s*(?:or|and)\s*\})\s*"
    r"(?:\\text(?:bf)?\s*\{)?\s*\(?[A-Za-z]\b|\([A-Za-z]\))", re.IGNORECASE)


def choice_reward(response: str, gold: str) -> float:
    """1.0 when the final answer (`answer_span`, no fallback) names the gold option letter.

    gold is a letter ("F") or a CrossThinkQA ground truth "F: option text". The answer may read
    "F", "(F)", "\\text{F}", "F: option text" or "f", also in fullwidth (`unicode_normal`);
    anything else scores 0, and so does a hedge that names a second option ("(A) or (C)").
    """
    m = _GOLD_LETTER.match(unicode_normal(gold)) if isinstance(gold, str) else None
    if m is None:
        raise ValueError(f"choice_reward: gold must start with an option letter, got {shown(gold)}")
    span = answer_span(response, fallback=None)
    answer = unicode_normal(response[span[0] : span[1]]) if span else ""
    pred = _PRED_LETTER.match(answer)
    if pred is None or _SECOND_OPTION.match(answer, pred.end(1)):
        return 0.0
    return float(pred.group(1).upper() == m.group(1))


# ---------------------------------------------------------------------------------------------
# Scoring a batch: the public entry point
# ---------------------------------------------------------------------------------------------


def _countdown_from_gold(response: str, gold: dict) -> float:
    return countdown_reward(response, gold["numbers"], gold["target"])


# kind -> reward(response, gold); Countdown's gold is the TinyZero ground truth
# {"numbers", "target"}.
REWARDS = {"math": math_reward, "countdown": _countdown_from_gold, "choice": choice_reward}


def score_one(kind: str, response: str, gold) -> float:
    """REWARDS[kind](response, gold); module-level, so score_batch's workers get it by reference."""
    return REWARDS[kind](response, gold)


def _score_here(index: int, kind: str, response: str, gold) -> float:
    try:
        return score_one(kind, response, gold)
    except Exception as e:  # a bad gold, as the pool reports it
        raise ValueError(f"score_batch: item {index}: {type(e).__name__}: {e}") from e


WORKERS = 2  # score_batch's pool of isolated workers, unless a caller says otherwise


def score_batch(kind: str, responses: Sequence[str], golds: Sequence,
                timeout_s: float = sandbox.ITEM_TIMEOUT_S, workers: int = WORKERS) -> list[float]:
    """Rewards of `responses` against `golds` with REWARDS[kind], scored in `workers` processes.

    Each item may use `timeout_s` of CPU time in its worker (and sandbox.WALL_BACKSTOP times that
    in wall clock); past that its worker is killed, the item scores 0.0 and a fresh worker takes
    the remaining items, so one pathological answer never blocks or crashes the others
    (`sandbox.score_in_workers`). Every worker runs `warm_up` before its first item, outside any
    limit. A bad gold raises ValueError naming the item. Workers come from a forkserver
    (fork-safe next to torch threads). workers=0 scores in this process instead: no process
    start-up (about 4 s for a pool on 2 cores), and math_reward's own 1 s CPU-time deadline still
    bounds each item (main thread only), but a crash is not isolated.
    """
    if kind not in REWARDS:
        raise ValueError(f"score_batch: kind must be one of {sorted(REWARDS)}, got {kind!r}")
    if len(responses) != len(golds):
        raise ValueError(f"score_batch: {len(responses)} responses but {len(golds)} golds")
    if not 0 < timeout_s < math.inf or workers < 0:  # NaN fails the first test
        raise ValueError(
            f"score_batch: need a finite timeout_s > 0 and workers >= 0, got {timeout_s}, {workers}"
        )
    pairs = list(zip(responses, golds))
    if workers == 0:
        return [_score_here(i, kind, response, gold) for i, (response, gold) in enumerate(pairs)]
    jobs = [(kind, response, gold) for response, gold in pairs]
    return sandbox.score_in_workers(score_one, jobs, timeout_s, workers, warm_up)
