"""Guards against hostile model output: refusals, a deadline, and an isolated worker pool.

Model output is hostile input. rewards.py never calls eval(), but sympy (behind math-verify) can
still be driven into unbounded work by a short answer such as 9^{9^{9^9}}. Three layers, cheapest
first:
- `refuse_reason`: cheap rules that keep huge integer work away from sympy (one C-level big-int
  operation cannot be interrupted);
- `deadline`: a CPU-time deadline around each comparison (SIGALRM, main thread only);
- `score_in_workers`: the pool of rewards.score_batch, each item in a forkserver worker process
  capped at WORKER_MEMORY_BYTES and killed past its CPU-time limit.
The limits count CPU time, not wall clock, so that a busy machine does not turn a slow correct
answer into a 0 (docs/rewards.md: the trade-off).

Nothing here imports rewards (no import cycle): the pool takes the scoring function as an argument
(a module-level function, pickled by reference) and its forkserver preloads that function's module.
"""
from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import re
import signal
import threading
import time
from contextlib import contextmanager
from typing import Callable, Sequence

# ---------------------------------------------------------------------------------------------
# Refusals: answers too dangerous to hand to sympy
# ---------------------------------------------------------------------------------------------

MAX_ANSWER_CHARS = 1000  # longest benchmark gold is ~200 chars
MAX_DIGITS = 200  # longest digit run in a benchmark gold is 23
MAX_DEPTH = 30  # bracket nesting
MAX_EXPONENT_DIGITS = 5  # x^{12345} is still symbolic work; x^{123456} is not an answer
# Digits of all the integers an answer can make sympy build, estimated from its powers, factorials
# and binomials (`number_digits`). Integer operations that one SIGALRM cannot interrupt (gcd,
# division, both quadratic in the digits) take ~6 ms at 10,000 digits and ~0.5 s at 100,000;
# the largest benchmark gold needs 2,568 (1000!).
MAX_NUMBER_DIGITS = 10_000

_DIGITS = re.compile(r"\d+")
_EXPONENT = re.compile(r"(?:\^|\*\*)\s*(\{|\()?")
_EXPONENT_AHEAD = re.compile(r"\s*(?:\^|\*\*)")  # a chain a^b ^c, spaces allowed
_FACTORIAL_ARG = re.compile(r"\d+(?=\s*$)")
_TOKEN_AFTER_CARET = re.compile(r"\d+|\\[A-Za-z]+|.", re.DOTALL)
# LaTeX commands that keep an expression numeric (no variable in them)
_NUMERIC_COMMANDS = re.compile(r"\\(?:left|right|cdot|times|div|d?t?frac|sqrt)")
_PLAIN_INTEGER = re.compile(r"[{(]?\s*[-+]?\s*(\d+)\s*[})]?")
# an integer divisor (x / 7, \\frac{x}{7}) cannot make a value larger: left out of the bound
_INTEGER_DIVISOR = re.compile(r"/\s*\d+(?![\d.])|(\\d?t?frac\s*\{[^{}]*\})\s*\{\s*\d+\s*\}")
_BINOMIAL = re.compile(r"\\[dt]?binom\s*\{([^{}]*)\}\s*\{([^{}]*)\}|\{([^{}]*)\\choose([^{}]*)\}")


# Super- and subscript digits as LaTeX (x² is x^{2}): `normalise.unicode_normal` reads them so too.
_SCRIPTS = {"^": ("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻", "0123456789+-"), "_": ("₀₁₂₃₄₅₆₇₈₉₊₋", "0123456789+-")}
_SCRIPT_RUNS = {mark: (re.compile(f"[{chars}]+"), str.maketrans(chars, ascii))
                for mark, (chars, ascii) in _SCRIPTS.items()}
# Delimiters that bound a value as a pair of parentheses does: |x| <= x-ish, floor, ceiling, norm
_SIZING = re.compile(r"\\(?:left|right|[bB]igg?[lrm]?)(?![A-Za-z])")
_DELIMITER_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|.", re.DOTALL)
_OPENERS = {"\\lfloor", "\\lceil", "\\lvert", "\\lVert", "\\langle"}
_CLOSERS = {"\\rfloor", "\\rceil", "\\rvert", "\\rVert", "\\rangle"}
_BARS = {"|", "\\|", "\\vert", "\\Vert"}
# what a bar can follow only if it opens (a value cannot end there)
_BEFORE_OPENING = set("([{,;:=<>+-*/^_") | {"", "\\cdot", "\\times", "\\div", "\\pm", "\\mp"}


def scripts_as_latex(text: str) -> str:
    """Super- and subscript digit runs as ^{..} and _{..}: "99⁹⁹⁹" -> "99^{999}"."""
    for mark, (run, table) in _SCRIPT_RUNS.items():
        text = run.sub(lambda m: mark + "{" + m.group().translate(table) + "}", text)
    return text


def bracket_view(answer: str) -> str:
    """The answer with every pair of delimiters that bounds its value read as "(" ... ")".

    |x|, \\left|x\\right|, \\lfloor x\\rfloor, \\lceil x\\rceil, \\|x\\|, \\langle x\\rangle: a bound
    on the digits of (x) is a bound on theirs, so the power and nesting rules below see the base
    of |99999|^{99999} as they see (99999)^{99999}. Sizing commands (\\left, \\bigl, ...) go. A bar
    opens where a value cannot end (at the start, after an operator or an opening bracket) and
    closes elsewhere, so ||x|-|y|| reads ((x)-(y)).
    """
    out: list[str] = []
    forced = ""
    for token in _DELIMITER_TOKEN.findall(scripts_as_latex(answer)):
        if _SIZING.fullmatch(token):  # \\left, \\bigl: an opener follows; \\right, \\bigr: a closer
            forced = {"\\left": "(", "\\right": ")"}.get(token) or {"l": "(", "r": ")"}.get(
                token[-1], "")
            continue
        if token in _OPENERS or token in _CLOSERS or token in _BARS:
            prev = next((t for t in reversed(out) if not t.isspace()), "")
            opens = forced == "(" or token in _OPENERS or (
                token in _BARS and forced != ")" and prev in _BEFORE_OPENING)
            token = "(" if opens else ")"
        forced = ""
        out.append(token)
    return "".join(out)


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


def _number_before(text: str, end: int) -> str:
    """The number (digits and decimal points) ending just before `end`, or "" (a letter, ...)."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    j = i
    while j > 0 and (text[j - 1] in "0123456789."):
        j -= 1
    return text[j:i]


def _is_numeric_power(group: str) -> bool:
    """A power or factorial of numbers only (e.g. "{9^{9^9}}", "(100!)"): huge when evaluated."""
    has_power = "^" in group or "**" in group or "!" in group
    letters = re.sub(r"\\(?:left|right|cdot|times)", "", group)
    return has_power and not re.search(r"[A-Za-z]", letters)


def _log10_bound(text: str) -> float | None:
    """An upper bound of log10 |value| of a numeric expression (None if it holds a variable).

    A plain integer is exact; any other expression over numbers (sums, products, fractions) is
    below 10^(its number of digits, integer divisors left out: 10^{1/100} is 10^{1})."""
    if re.search(r"[A-Za-z]", _NUMERIC_COMMANDS.sub("", text)):
        return None
    if (m := _PLAIN_INTEGER.fullmatch(text.strip())) is not None:
        return math.log10(max(int(m.group(1)), 1))
    dividends = _INTEGER_DIVISOR.sub(lambda m: m.group(1) or "", text)
    return float(sum(len(d) for d in _DIGITS.findall(dividends)))


def number_digits(answer: str) -> float:
    """Estimated digits of the integers that evaluating `answer` builds: an upper bound for each
    numeric power (exponent x log10 base), factorial (log10 n!) and binomial, plus the digits
    written out. Symbolic ones (x^{99}, n!) add nothing: sympy keeps them unevaluated. Read in
    the answer's `bracket_view`, so the base of |99999|^{99999} counts as (99999)'s."""
    answer = bracket_view(answer)
    total = float(sum(len(d) for d in _DIGITS.findall(answer)))
    for m in _EXPONENT.finditer(answer):
        exponent = answer[m.end() : _group_end(answer, m.end(), m.group(1))]
        base = _base_before(answer, m.start()) or _number_before(answer, m.start())
        base_log, exponent_log = _log10_bound(base), _log10_bound(exponent)
        if base and base_log is not None and exponent_log is not None:
            total += base_log * 10 ** min(exponent_log, 30.0)
    for m in re.finditer("!", answer):
        number = _FACTORIAL_ARG.search(answer[: m.start()])  # "100" in 100!
        if number:
            total += math.lgamma(min(int(number.group(0)), 10**9) + 1) / math.log(10)
    for m in _BINOMIAL.finditer(answer):
        n_text, k_text = (m.group(1), m.group(2)) if m.group(1) is not None else m.group(3, 4)
        n_log, k_log = _log10_bound(n_text), _log10_bound(k_text)
        if n_log is not None and k_log is not None:
            total += 10 ** min(max(n_log, k_log), 30.0) * math.log10(2)  # C(n, k) <= 2^n
    return total


def refuse_reason(answer: str) -> str | None:
    """Why an answer string is too dangerous to hand to sympy, or None when it is safe.

    Refused: long strings, long digit runs, deep bracket nesting, exponents with more than
    MAX_EXPONENT_DIGITS digits, power towers of numbers (9^{9^{9^9}}, (9^{99})^{99}, 2^2^2;
    symbolic ones like e^{-x^2} pass), factorials of numbers > 1000 and nested factorials, and
    answers whose numbers would exceed MAX_NUMBER_DIGITS digits (`number_digits`:
    \\frac{99999^{99999}}{99998^{99999}}, 2^{99999 \\cdot 99999}, \\binom{10^6}{5 \\cdot 10^5}).
    The rules read the answer's `bracket_view` (|x|, floors and ceilings as parentheses,
    superscript digits as ^{..}). Each rule scans the answer (at most MAX_ANSWER_CHARS) once per
    operator it finds; no benchmark gold is refused.
    """
    if len(answer) > MAX_ANSWER_CHARS:
        return f"longer than {MAX_ANSWER_CHARS} chars"
    answer = bracket_view(answer)
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
        if _is_numeric_power(exponent) or _is_numeric_power(base) or _EXPONENT_AHEAD.match(answer, end):
            return "a power tower (a power of a power, or a chain a^b^c)"
    for m in re.finditer("!", answer):
        group = _base_before(answer, m.start())  # "(10^{10})" in (10^{10})!, "" in 100!
        number = _FACTORIAL_ARG.search(answer[: m.start()])  # "100" in 100!
        if _is_numeric_power(group) or any(int(d) > 1000 for d in _DIGITS.findall(group)) or (
            number and int(number.group(0)) > 1000
        ):
            return "a factorial of a huge number"
    if number_digits(answer) > MAX_NUMBER_DIGITS:
        return f"numbers of more than {MAX_NUMBER_DIGITS} digits (a large power or binomial)"
    return None


# ---------------------------------------------------------------------------------------------
# The deadline
# ---------------------------------------------------------------------------------------------


class Deadline(BaseException):
    """Raised by SIGALRM; a BaseException, so a library's `except Exception` cannot swallow it."""


@contextmanager
def deadline(seconds: float | None, every: float = 0.05):
    """Interrupt the block once it has used `seconds` of this thread's CPU time (SIGALRM; main
    thread only, else a no-op).

    CPU time, not wall clock: on a busy machine (other processes on the cores) the block gets
    fewer CPU seconds per wall second, and a wall-clock deadline would then cut off comparisons
    that are merely slow to be scheduled, scoring correct answers 0. A wall-clock alarm polls the
    thread's CPU time every `every` seconds and raises Deadline once the budget is spent, and at
    every poll after that: a library's bare `except:` can swallow one Deadline, and a one-shot
    alarm would then let the computation run to its end (once 1000 s). The price: on a loaded
    machine the block may take longer than `seconds` of wall clock.
    Python code (sympy, the LaTeX parser) is interrupted between bytecodes; one huge C-level
    operation is not, which is why `refuse_reason` keeps huge integers away from sympy.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    budget_end = time.thread_time() + seconds

    def on_alarm(signum, frame):
        if time.thread_time() >= budget_end:
            raise Deadline()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, min(every, seconds), every)
    try:
        yield
    finally:
        while True:  # disarm and restore; an alarm landing meanwhile raises here and we try again
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
                break
            except Deadline:
                continue


# ---------------------------------------------------------------------------------------------
# The isolated worker pool (rewards.score_batch)
# ---------------------------------------------------------------------------------------------

ITEM_TIMEOUT_S = 2.0  # CPU seconds per item in score_batch; the kernel kills the worker past it
# An item's wall-clock limit is WALL_BACKSTOP x its CPU limit: only a worker that stops running
# at all (a machine so loaded that 2 CPU seconds take 20 s) meets it.
WALL_BACKSTOP = 10
WORKER_MEMORY_BYTES = 4 * 2**30  # address-space cap of a worker: runaway big-ints -> MemoryError


def _limit(which: str, soft: int) -> None:
    """Set the soft resource limit `which` ("RLIMIT_CPU", ...) under the current hard limit."""
    import resource

    kind = getattr(resource, which)
    hard = resource.getrlimit(kind)[1]
    resource.setrlimit(kind, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _worker(conn, score: Callable[..., float], warm_up: Callable[[], object] | None,
            cpu_s: float) -> None:
    """Score (index, *args) requests with score(*args) until None; reply (index, reward, error).

    warm_up() runs first, with no limit (its inputs are fixed); then each item may use `cpu_s` of
    CPU time: RLIMIT_CPU (whole seconds, so rounded up) makes the kernel end this process with
    SIGXCPU past it, even in the middle of one long C call.
    """
    try:
        import resource

        _limit("RLIMIT_AS", WORKER_MEMORY_BYTES)
        _limit("RLIMIT_CORE", 0)  # SIGXCPU would otherwise leave a core file
    except (ImportError, ValueError, OSError):
        resource = None
    if warm_up is not None:
        warm_up()
    conn.send(None)  # ready: the parent starts an item's clock only from here on
    while (job := conn.recv()) is not None:
        index, *args = job
        if resource is not None:
            used = resource.getrusage(resource.RUSAGE_SELF)
            _limit("RLIMIT_CPU", math.ceil(used.ru_utime + used.ru_stime + cpu_s))
        try:
            conn.send((index, score(*args), None))
        except MemoryError:
            conn.send((index, 0.0, None))
        except Exception as e:  # a bad gold: reported to the caller, which raises it
            conn.send((index, 0.0, f"{type(e).__name__}: {e}"))


class _Worker:
    def __init__(self, ctx, score: Callable[..., float], warm_up: Callable[[], object] | None,
                 cpu_s: float):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, score, warm_up, cpu_s),
                                   daemon=True)
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


def score_in_workers(score: Callable[..., float], jobs: Sequence[tuple], timeout_s: float,
                     workers: int, warm_up: Callable[[], object] | None = None) -> list[float]:
    """score(*job) for every job of `jobs`, each in an isolated worker process (score_batch's pool).

    `score` and `warm_up` must be module-level functions (they are pickled by reference); the
    forkserver preloads score's module and every worker calls warm_up() once, with no time limit,
    before it takes items. Each item may use `timeout_s` of CPU time in its worker (rounded up to
    whole seconds, see `_worker`) and WALL_BACKSTOP x timeout_s of wall clock from the moment a
    worker takes it; past either its worker is killed, the item scores 0.0 and a fresh worker
    takes the remaining items, so one pathological answer never blocks or crashes the others,
    and a busy machine (less CPU per wall second) does not cut off a slow correct one. An
    exception of score (a bad gold) raises ValueError naming the item. Workers come from a
    forkserver (fork-safe next to torch threads).
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([score.__module__])
    scores = [0.0] * len(jobs)
    todo = list(range(len(jobs)))[::-1]
    wall_s = WALL_BACKSTOP * timeout_s

    def new_worker() -> _Worker:
        return _Worker(ctx, score, warm_up, timeout_s)

    pool = [new_worker() for _ in range(min(workers, len(jobs)))]
    errors: list[str] = []
    try:
        while todo or any(w.job is not None for w in pool):
            for w in pool:
                if w.ready and w.job is None and todo:
                    w.job, w.started = todo.pop(), time.monotonic()
                    w.conn.send((w.job, *jobs[w.job]))
            busy = [w for w in pool if w.job is not None]
            wait_s = min((w.started + wall_s for w in busy), default=math.inf) - time.monotonic()
            waiting = [w.conn for w in pool if w.job is not None or not w.ready]
            timeout = None if busy == [] else max(0.0, wait_s)
            ready = multiprocessing.connection.wait(waiting, timeout=timeout)
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
                        index, scores[w.job], error = w.conn.recv()
                        errors += [f"item {index}: {error}"] if error else []
                        w.job = None
                        continue
                    except (EOFError, OSError):  # died: a crash, or past its CPU limit (SIGXCPU)
                        pass
                elif time.monotonic() - w.started < wall_s:
                    continue
                w.stop(kill=True)  # stuck past the wall backstop, or dead: the item scores 0
                pool[i] = new_worker()
    finally:
        for w in pool:
            w.stop(kill=w.job is not None)
    if errors:
        raise ValueError("score_batch: " + "; ".join(errors[:5]))
    return scores
