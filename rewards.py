"""Verifiable rewards (math, Countdown, multiple choice) and the answer region.

The reward is the only ground truth of RL with verifiable rewards, and the answer region
(`answer_span`) decides where the information flow of eq. (2) is aimed. Model output is hostile
input: nothing here ever calls eval(), and every verifier bounds the work it hands to sympy.
"""
from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import multiprocessing.connection
import re
import signal
import threading
import time
from contextlib import contextmanager
from fractions import Fraction
from typing import Sequence

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

    The inside of the last complete \\boxed{...} / \\fbox{...} (see `boxed_span`) or of the last
    <answer>...</answer> tag (the Countdown / TinyZero format), whichever comes last; a box inside
    the tag wins over the tag. Without either, the fallback: "last_line" (default) gives the last
    non-empty line, None gives None. rollout.py turns the span into the answer token mask
    through the tokenizer's offsets.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"answer_span: fallback must be one of {FALLBACKS}, got {fallback!r}")
    box, tag = boxed_span(response), _answer_tag_span(response)
    span = tag if box is None or (tag is not None and box[1] < tag[0]) else box
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
_FACTORIAL_ARG = re.compile(r"\d+(?=\s*$)")
_TOKEN_AFTER_CARET = re.compile(r"\d+|\\[A-Za-z]+|.", re.DOTALL)


class _Deadline(BaseException):
    """Raised by SIGALRM; a BaseException so the `except Exception` in libraries can't swallow it."""


@contextmanager
def _deadline(seconds: float | None, every: float = 0.05):
    """Interrupt the block after `seconds` of wall clock (SIGALRM; main thread only, else no-op).

    Python code (sympy, the LaTeX parser) is interrupted between bytecodes; one huge C-level
    operation is not, which is why `refuse_reason` keeps huge integers away from sympy. The alarm
    repeats every `every` seconds after the deadline: a library's bare `except:` can swallow one
    _Deadline, and a one-shot timer would then let the computation run to its end (once 1000 s).
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise _Deadline()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, every)
    try:
        yield
    finally:
        while True:  # disarm and restore; an alarm landing meanwhile raises here and we try again
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
                break
            except _Deadline:
                continue


def _group_end(text: str, start: int, opener: str | None) -> int:
    """Index just past the exponent operand that starts at `start` (after ^ or **)."""
    if opener is None:  # a single token: a digit run, a letter or a command name
        m = _TOKEN_AFTER_CARET.match(text, start)
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
        group = _base_before(answer, m.start())  # "(10^{10})" in (10^{10})!, "" in 100!
        number = _FACTORIAL_ARG.search(answer[: m.start()])  # "100" in 100!
        if _is_numeric_power(group) or any(int(d) > 1000 for d in _DIGITS.findall(group)) or (
            number and int(number.group(0)) > 1000
        ):
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



# ---------------------------------------------------------------------------------------------
# Countdown (TinyZero protocol)
# ---------------------------------------------------------------------------------------------

MAX_EXPRESSION_CHARS = 200
_TOKEN = re.compile(r"\s*(?:(\d+)|([-+*/()]))")
_OPERATOR_SPELLINGS = {"\\times": "*", "\\cdot": "*", "×": "*", "·": "*", "\\div": "/", "÷": "/",
                       "\\left": "", "\\right": "", "−": "-"}


class ExpressionError(ValueError):
    """A Countdown answer that is not an arithmetic expression over integers with + - * / ( )."""


def parse_arithmetic(text: str) -> tuple[Fraction, list[int]]:
    """Exact value and integer literals of an expression with + - * / and parentheses.

    Recursive descent, never eval: expr := term (('+'|'-') term)*, term := factor (('*'|'/')
    factor)*, factor := INT | '(' expr ')'. No unary minus, no decimals (Countdown numbers are
    positive integers). Raises ExpressionError on anything else, including division by zero.
    """
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
        raise TypeError(f"countdown_reward: numbers must be a non-empty list of ints, got {numbers!r}")
    span = answer_span(response, fallback=None)
    if span is None:
        return 0.0
    try:
        value, literals = parse_arithmetic(response[span[0] : span[1]])
    except ExpressionError:
        return 0.0
    if sorted(literals) != sorted(numbers):
        return 0.0
    return float(abs(value - Fraction(target)) < Fraction(1, 10**6))


def solve_countdown(numbers: Sequence[int], target: int) -> str | None:
    """A fully parenthesised expression over all `numbers` equal to `target`, or None.

    Brute force: repeatedly replace two of the remaining values by a+b, a-b, b-a, a*b, a/b, b/a
    (exact fractions); that reaches every binary expression tree over the numbers.
    """
    def search(items: list[tuple[Fraction, str]]) -> str | None:
        if len(items) == 1:
            return items[0][1] if items[0][0] == target else None
        for a in range(len(items)):
            for b in range(a + 1, len(items)):
                (x, ex), (y, ey) = items[a], items[b]
                rest = [items[k] for k in range(len(items)) if k not in (a, b)]
                options = [(x + y, f"({ex} + {ey})"), (x * y, f"({ex} * {ey})"),
                           (x - y, f"({ex} - {ey})"), (y - x, f"({ey} - {ex})")]
                options += [(x / y, f"({ex} / {ey})")] if y else []
                options += [(y / x, f"({ey} / {ex})")] if x else []
                for option in options:
                    if (found := search(rest + [option])) is not None:
                        return found
        return None

    found = search([(Fraction(n), str(n)) for n in numbers])
    return None if found is None else (found[1:-1] if len(numbers) > 1 else found)


# ---------------------------------------------------------------------------------------------
# Multiple choice (CrossThinkQA)
# ---------------------------------------------------------------------------------------------

_GOLD_LETTER = re.compile(r"\s*\(?([A-Z])\)?(?:\s*[:.)]|\s*$)")
_PRED_LETTER = re.compile(r"\s*(?:\\text(?:bf)?\s*\{)?\s*\(?([A-Za-z])\)?\s*(?:[:.)}]|$)")


def choice_reward(response: str, gold: str) -> float:
    """1.0 when the final answer (`answer_span`, no fallback) names the gold option letter.

    gold is a letter ("F") or a CrossThinkQA ground truth "F: option text". The answer may read
    "F", "(F)", "\\text{F}", "F: option text" or "f"; anything else scores 0.
    """
    m = _GOLD_LETTER.match(gold) if isinstance(gold, str) else None
    if m is None:
        raise ValueError(f"choice_reward: gold must start with an option letter, got {gold!r}")
    span = answer_span(response, fallback=None)
    pred = _PRED_LETTER.match(response, span[0], span[1]) if span else None
    return float(pred is not None and pred.group(1).upper() == m.group(1))


# ---------------------------------------------------------------------------------------------
# Batched scoring in a process pool
# ---------------------------------------------------------------------------------------------

ITEM_TIMEOUT_S = 2.0  # hard wall-clock limit per item in score_batch; the worker is killed past it
WORKER_MEMORY_BYTES = 4 * 2**30  # address-space cap of a worker: runaway big-int work -> MemoryError


def _countdown_from_gold(response: str, gold: dict) -> float:
    return countdown_reward(response, gold["numbers"], gold["target"])


# kind -> reward(response, gold); Countdown's gold is the TinyZero ground truth {"numbers", "target"}.
REWARDS = {"math": math_reward, "countdown": _countdown_from_gold, "choice": choice_reward}


def _worker(conn) -> None:
    """Score (index, kind, response, gold) requests until None; reply (index, reward, error)."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    math_reward("\\boxed{x+1}", "1+x")  # warm sympy's and the parser's lazy imports and caches
    conn.send(None)  # ready: the parent starts an item's clock only from here on
    while (job := conn.recv()) is not None:
        index, kind, response, gold = job
        try:
            conn.send((index, REWARDS[kind](response, gold), None))
        except MemoryError:
            conn.send((index, 0.0, None))
        except Exception as e:  # a bad gold: reported to the caller, which raises it
            conn.send((index, 0.0, f"{type(e).__name__}: {e}"))


class _Worker:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.ready = False  # warmed up (see _worker)
        self.job: int | None = None  # index of the item it is scoring
        self.started = 0.0

    def stop(self, kill: bool = False) -> None:
        if not kill:
            try:
                self.conn.send(None)
            except OSError:  # it died already (BrokenPipeError): make sure, then reap it
                kill = True
        if kill:
            self.process.kill()
        self.process.join()
        self.conn.close()


def _score_here(index: int, reward, response: str, gold) -> float:
    try:
        return reward(response, gold)
    except Exception as e:  # a bad gold, as the pool reports it
        raise ValueError(f"score_batch: item {index}: {type(e).__name__}: {e}") from e


def score_batch(kind: str, responses: Sequence[str], golds: Sequence, timeout_s: float = ITEM_TIMEOUT_S,
                workers: int = 2) -> list[float]:
    """Rewards of `responses` against `golds` with REWARDS[kind], scored in `workers` processes.

    Each item gets `timeout_s` of wall clock from the moment a worker takes it; past that its
    worker is killed, the item scores 0.0 and a fresh worker takes the remaining items, so one
    pathological answer never blocks or crashes the others. A bad gold raises ValueError naming
    the item. Workers come from a forkserver (fork-safe next to torch threads).
    workers=0 scores in this process instead: no process start-up (about 4 s for a pool on 2 cores), and
    math_reward's own 1 s deadline still bounds each item (main thread only), but a crash is not isolated.
    """
    if kind not in REWARDS:
        raise ValueError(f"score_batch: kind must be one of {sorted(REWARDS)}, got {kind!r}")
    if len(responses) != len(golds):
        raise ValueError(f"score_batch: {len(responses)} responses but {len(golds)} golds")
    if timeout_s <= 0 or workers < 0:
        raise ValueError(f"score_batch: need timeout_s > 0 and workers >= 0, got {timeout_s}, {workers}")
    if workers == 0:
        return [_score_here(i, REWARDS[kind], response, gold) for i, (response, gold) in enumerate(zip(responses, golds))]
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    rewards = [0.0] * len(responses)
    todo = list(range(len(responses)))[::-1]
    pool = [_Worker(ctx) for _ in range(min(workers, len(responses)))]
    errors: list[str] = []
    try:
        while todo or any(w.job is not None for w in pool):
            for w in pool:
                if w.ready and w.job is None and todo:
                    w.job, w.started = todo.pop(), time.monotonic()
                    w.conn.send((w.job, kind, responses[w.job], golds[w.job]))
            busy = [w for w in pool if w.job is not None]
            wait_s = min((w.started + timeout_s for w in busy), default=math.inf) - time.monotonic()
            waiting = [w.conn for w in pool if w.job is not None or not w.ready]
            ready = multiprocessing.connection.wait(waiting, timeout=None if busy == [] else max(0.0, wait_s))
            for i, w in enumerate(pool):
                if not w.ready and w.conn in ready:
                    try:
                        w.ready = w.conn.recv() is None
                    except (EOFError, OSError) as e:
                        raise RuntimeError("score_batch: a worker died while starting") from e
                    continue
                if w.job is None:
                    continue
                if w.conn in ready:
                    try:
                        index, rewards[w.job], error = w.conn.recv()
                        errors += [f"item {index}: {error}"] if error else []
                        w.job = None
                        continue
                    except (EOFError, OSError):  # the worker died (a crash): the item scores 0
                        pass
                elif time.monotonic() - w.started < timeout_s:
                    continue
                w.stop(kill=True)  # stuck past timeout_s, or dead: the item scores 0
                pool[i] = _Worker(ctx)
    finally:
        for w in pool:
            w.stop(kill=w.job is not None)
    if errors:
        raise ValueError("score_batch: " + "; ".join(errors[:5]))
    return rewards
