"""Tests of sandbox.py: refusals of hostile answers, the deadline, score_batch's worker pool."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import rewards  # noqa: E402
import sandbox  # noqa: E402
from rewards import math_reward  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Refusals and the deadline
# ---------------------------------------------------------------------------------------------


def test_refuse_reason_lets_real_answers_through():
    for answer in ["2^{1009}", "\\frac{100!}{2^{50}}", "10^{100}", "e^{-x^2}", "(2n)!",
                   "x^5 - x^4 + x^3"]:
        assert sandbox.refuse_reason(answer) is None, answer
    for answer in ["9^{9^{9^9}}", "2^2^2", "(9^{99})^{99}", "10^{123456}", "(10^{10})!", "1001!",
                   "7" * 300, "(" * 40 + "1" + ")" * 40, "x+" * 600]:
        assert sandbox.refuse_reason(answer) is not None, answer


HOSTILE = {
    "power tower": "\\boxed{9^{9^{9^9}}}",
    "python power tower": "\\boxed{9**9**9**9}",
    "power of power": "\\boxed{(99999^{99999})^{99999}}",
    "huge exponent": "\\boxed{2^{99999999999}}",
    "10,000 digits": "\\boxed{" + "7" * 10_000 + "}",
    "200 nested parentheses": "\\boxed{" + "(" * 200 + "1" + ")" * 200 + "}",
    "200 nested braces": "\\boxed{" + "{" * 200 + "1" + "}" * 200 + "}",
    "25 nested fractions": "\\boxed{" + "\\frac{1}{" * 25 + "2" + "}" * 25 + "}",
    "200 KB response": "word " * 40_000 + "\\boxed{5}",
    "200 KB box": "\\boxed{" + "x+" * 100_000 + "1}",
    "200 KB of braces": "{" * 200_000,
    "unbalanced braces": "\\boxed{5}}}}{{{\\boxed{\\frac{1}{2}",
    "python code": "\\boxed{__import__('os').system('echo pwned')}",
    "python comprehension": "\\boxed{[x for x in range(10**10)]}",
    "division by zero": "\\boxed{1/0}",
    "factorial of a power": "\\boxed{(10^{10})!}",
    "huge binomial": "\\boxed{\\binom{1000000000}{500000000}}",
    "integral": "\\boxed{\\int_0^{\\infty} e^{-x^2} \\sin(x^{99}) dx}",
    "sine of a huge number": "\\boxed{\\sin(10^{99999})}",
    "many boxes": "\\boxed{1}" * 20_000,
}


def test_deadline_survives_a_swallowed_alarm():
    """A bare `except:` may swallow the first Deadline; the repeating alarm raises it again."""
    start = time.perf_counter()
    with pytest.raises(sandbox.Deadline):
        with sandbox.deadline(0.2):
            try:
                while time.perf_counter() - start < 10:
                    pass
            except BaseException:  # swallow the first alarm, like a bare except in a dependency
                pass
            while time.perf_counter() - start < 10:
                pass
    assert time.perf_counter() - start < 2.0
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_math_reward_hostile_inputs_are_bounded():
    """Every hostile answer scores 0 against a wrong gold within 2 s (the SIGALRM deadline is
    MATH_TIMEOUT_S = 1 s; refuse_reason keeps one-shot C-level big-int work away from sympy)."""
    times = {}
    for name, response in HOSTILE.items():
        start = time.perf_counter()
        assert math_reward(response, "42") == 0.0, name
        times[name] = time.perf_counter() - start
    worst = max(times, key=times.get)
    print(f"hostile inputs: max {times[worst]:.3f} s ({worst})")
    assert times[worst] < 2.0, times


# ---------------------------------------------------------------------------------------------
# The worker pool (rewards.score_batch)
# ---------------------------------------------------------------------------------------------


def test_sandbox_does_not_import_rewards():
    """No import cycle: the pool gets its scoring function from rewards as an argument."""
    code = "import sys, sandbox; assert 'rewards' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_score_batch_matches_single_calls_and_survives_a_stuck_item():
    responses = ["\\boxed{5}", HOSTILE["integral"], "\\boxed{x+1}", "\\boxed{4}",
                 "<answer>1+2</answer>"]
    golds = ["5", "0", "1+x", "5", "3"]
    # the integral runs into math_reward's 1 s deadline; a 0.3 s item timeout kills its worker
    # first, and the items behind it are still scored by a fresh worker.
    scores = rewards.score_batch("math", responses, golds, timeout_s=0.3)
    assert scores == [1.0, 0.0, 1.0, 0.0, 0.0]
    countdown = [{"numbers": [1, 2], "target": 3}] * 2
    responses = ["<answer>1+2</answer>", "<answer>1*2</answer>"]
    assert rewards.score_batch("countdown", responses, countdown) == [1.0, 0.0]


def test_score_batch_in_process_matches_the_pool():
    responses = ["\\boxed{5}", "\\boxed{x+1}", "\\boxed{4}", "no box", "\\boxed{9^{9^{9^9}}}"]
    golds = ["5", "1+x", "5", "5", "1"]
    here = rewards.score_batch("math", responses, golds, workers=0)
    assert here == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert here == rewards.score_batch("math", responses, golds)


@pytest.mark.parametrize("workers", [0, 2])
def test_score_batch_errors(workers):
    with pytest.raises(ValueError, match="item 1"):
        rewards.score_batch("math", ["\\boxed{1}", "\\boxed{1}"], ["1", []], workers=workers)
    with pytest.raises(ValueError, match="kind"):
        rewards.score_batch("chess", ["a"], ["b"])
    with pytest.raises(ValueError, match="2 responses but 1 golds"):
        rewards.score_batch("math", ["a", "b"], ["1"])
