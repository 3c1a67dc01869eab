"""Guards against hostile model output: refusals, a deadline, and an isolated worker pool.

Model output is hostile input. rewards.py never calls eval(), but sympy (behind math-verify) can
still be driven into unbounded work by a short answer such as 9^{9^{9^9}}. Three layers, cheapest
first:
- `refuse_reason`: linear-time rules that keep huge integer work away from sympy;
- `deadline`: a SIGALRM wall-clock deadline around each comparison (main thread only);
- `score_in_workers`: the pool of rewards.score_batch, each item in a forkserver worker process
  capped at WORKER_MEMORY_BYTES and killed past its timeout.

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
MAX_EXPONENT_DIGITS = 5  # 10^{100} appears in OlympiadBench; 10^{99999} is still cheap

_DIGITS = re.compile(r"\d+")
_EXPONENT = re.compile(r"(?:\^|\*\*)\s*(\{|\()?")
_FACTORIAL_ARG = re.compile(r"\d+(?=\s*$)")
_TOKEN_AFTER_CARET = re.compile(r"\d+|\\[A-Za-z]+|.", re.DOTALL)


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
# The deadline
# ---------------------------------------------------------------------------------------------


class Deadline(BaseException):
    """Raised by SIGALRM; a BaseException, so a library's `except Exception` cannot swallow it."""


@contextmanager
def deadline(seconds: float | None, every: float = 0.05):
    """Interrupt the block after `seconds` of wall clock (SIGALRM; main thread only, else no-op).

    Python code (sympy, the LaTeX parser) is interrupted between bytecodes; one huge C-level
    operation is not, which is why `refuse_reason` keeps huge integers away from sympy. The alarm
    repeats every `every` seconds after the deadline: a library's bare `except:` can swallow one
    Deadline, and a one-shot timer would then let the computation run to its end (once 1000 s).
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise Deadline()

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
            except Deadline:
                continue


# ---------------------------------------------------------------------------------------------
# The isolated worker pool (rewards.score_batch)
# ---------------------------------------------------------------------------------------------

ITEM_TIMEOUT_S = 2.0  # hard wall-clock limit per item in score_batch; the worker is killed past it
WORKER_MEMORY_BYTES = 4 * 2**30  # address-space cap of a worker: runaway big-ints -> MemoryError


def _worker(conn, score: Callable[..., float], warm_up: tuple) -> None:
    """Score (index, *args) requests with score(*args) until None; reply (index, reward, error)."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    score(*warm_up)  # warm sympy's and the parser's lazy imports and caches
    conn.send(None)  # ready: the parent starts an item's clock only from here on
    while (job := conn.recv()) is not None:
        index, *args = job
        try:
            conn.send((index, score(*args), None))
        except MemoryError:
            conn.send((index, 0.0, None))
        except Exception as e:  # a bad gold: reported to the caller, which raises it
            conn.send((index, 0.0, f"{type(e).__name__}: {e}"))


class _Worker:
    def __init__(self, ctx, score: Callable[..., float], warm_up: tuple):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, score, warm_up), daemon=True)
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
                     workers: int, warm_up: tuple = ()) -> list[float]:
    """score(*job) for every job of `jobs`, each in an isolated worker process (score_batch's pool).

    `score` must be a module-level function (it is pickled by reference); the forkserver preloads
    its module and every worker calls score(*warm_up) once before it takes items. Each item gets
    `timeout_s` of wall clock from the moment a worker takes it; past that its worker is killed,
    the item scores 0.0 and a fresh worker takes the remaining items, so one pathological answer
    never blocks or crashes the others. An exception of score (a bad gold) raises ValueError
    naming the item. Workers come from a forkserver (fork-safe next to torch threads).
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([score.__module__])
    scores = [0.0] * len(jobs)
    todo = list(range(len(jobs)))[::-1]
    pool = [_Worker(ctx, score, warm_up) for _ in range(min(workers, len(jobs)))]
    errors: list[str] = []
    try:
        while todo or any(w.job is not None for w in pool):
            for w in pool:
                if w.ready and w.job is None and todo:
                    w.job, w.started = todo.pop(), time.monotonic()
                    w.conn.send((w.job, *jobs[w.job]))
            busy = [w for w in pool if w.job is not None]
            wait_s = min((w.started + timeout_s for w in busy), default=math.inf) - time.monotonic()
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
                    except (EOFError, OSError):  # the worker died (a crash): the item scores 0
                        pass
                elif time.monotonic() - w.started < timeout_s:
                    continue
                w.stop(kill=True)  # stuck past timeout_s, or dead: the item scores 0
                pool[i] = _Worker(ctx, score, warm_up)
    finally:
        for w in pool:
            w.stop(kill=w.job is not None)
    if errors:
        raise ValueError("score_batch: " + "; ".join(errors[:5]))
    return scores
