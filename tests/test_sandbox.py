"""Tests of sandbox.py: refusals of hostile answers, the deadline, score_batch's worker pool."""
from __future__ import annotations

import json
import math
import os
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
from hostile import HOSTILE, NESTED_POWERS  # noqa: E402
from rewards import math_reward  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Refusals and the deadline
# ---------------------------------------------------------------------------------------------


def test_refuse_reason_lets_real_answers_through():
    for answer in ["2^{1009}", "\\frac{100!}{2^{50}}", "10^{100}", "e^{-x^2}", "(2n)!",
                   "x^5 - x^4 + x^3", "10^{100},10^{1 / 100}", "1000!", "\\binom{100}{50}",
                   "x^{99999}", "2^{9999}", "\\left(\\frac{1}{2}\\right)^{30}", "|x|^{2}",
                   "\\left|\\frac{1}{2}\\right|^{2}", "\\lfloor 2.5 \\rfloor^{3}", "\\|v\\|^2",
                   "x² + y²"]:
        assert sandbox.refuse_reason(answer) is None, answer
    for answer in ["9^{9^{9^9}}", "2^2^2", "(9^{99})^{99}", "10^{123456}", "(10^{10})!", "1001!",
                   "7" * 300, "(" * 40 + "1" + ")" * 40, "x+" * 600]:
        assert sandbox.refuse_reason(answer) is not None, answer


def test_bracket_view_reads_bounding_delimiters_as_parentheses():
    view = sandbox.bracket_view
    assert view("||x|-|y||^{2}") == "((x)-(y))^{2}"
    assert view("\\left|x\\right| + \\lfloor y\\rfloor \\cdot |z|") == "(x) + ( y) \\cdot (z)"
    assert view("\\lceil 2.5\\rceil⁹⁹") == "( 2.5)^{99}"
    assert view("\\left\\{1\\right\\}") == "\\{1\\}"  # a set is no bound: left as it is


def test_refuse_reason_nested_powers():
    """Every one is refused before sympy sees it, so math_reward returns at once even with a 30 s
    deadline (the old code spent 4-14 s in one gcd there, past any SIGALRM deadline); and each
    digit estimate is at least the true number of digits."""
    for name, answer in NESTED_POWERS.items():
        assert sandbox.refuse_reason(answer) is not None, name
        start = time.process_time()
        assert math_reward(f"\\boxed{{{answer}}}", "1", timeout_s=30) == 0.0
        assert time.process_time() - start < 0.5, name
    assert sandbox.number_digits("2^{1009}") >= 1009 * math.log10(2)
    assert sandbox.number_digits("\\binom{100}{50}") >= math.log10(math.comb(100, 50))
    assert sandbox.number_digits("1000!") >= math.log10(math.factorial(1000))
    assert sandbox.number_digits("x^{99999} + n!") < 20  # symbolic: sympy keeps them unevaluated




def test_deadline_survives_a_swallowed_alarm():
    """A bare `except:` may swallow the first Deadline; the repeating alarm raises it again."""
    start = time.thread_time()
    with pytest.raises(sandbox.Deadline):
        with sandbox.deadline(0.2):
            try:
                while time.thread_time() - start < 10:
                    pass
            except BaseException:  # swallow the first alarm, like a bare except in a dependency
                pass
            while time.thread_time() - start < 10:
                pass
    assert time.thread_time() - start < 1.0  # CPU seconds: the test's wall clock depends on load
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_deadline_counts_cpu_time_not_wall_clock():
    """A block that waits (as on a machine too busy to run it) is not cut off: the budget is the
    thread's CPU time. A wall-clock deadline (the old one) raised here after 0.2 s."""
    start = time.perf_counter()
    with sandbox.deadline(0.2):
        time.sleep(0.6)
    assert time.perf_counter() - start >= 0.6


def test_math_reward_hostile_inputs_are_bounded():
    """Every hostile answer scores 0 against a wrong gold within 2 s of CPU time (MATH_TIMEOUT_S
    = 1 s of CPU time for the deadline; refuse_reason keeps one-shot C-level big-int work away
    from sympy). CPU time, because the wall clock of a test depends on the machine's load:
    benchmarks/reward_bench.py reports both."""
    math_reward("\\boxed{x+1}", "1+x", timeout_s=None)  # warm (rewards.warm_up)
    times = {}
    for name, response in HOSTILE.items():
        start = time.process_time()
        assert math_reward(response, "42") == 0.0, name
        times[name] = time.process_time() - start
    worst = max(times, key=times.get)
    print(f"hostile inputs: max {times[worst]:.3f} s CPU ({worst})")
    assert times[worst] < 2.0, times


def test_math_reward_is_not_cut_off_by_a_busy_machine(monkeypatch):
    """A correct answer whose comparison waits 1.2 s (descheduled, not computing) still scores 1:
    the old 1 s wall-clock deadline scored it 0."""
    rewards.warm_up()
    parse = rewards._parse

    def slow_parse(answer):
        time.sleep(0.6)
        return parse(answer)

    monkeypatch.setattr(rewards, "_parse", slow_parse)
    assert math_reward("\\boxed{x+1}", "1+x") == 1.0


def _score_slowly(env: dict[str, str], workers: int) -> list[float]:
    """score_batch in a fresh Python process whose math-verify is slowed by tests/slow_parse."""
    responses = ["\\boxed{x+1}", "\\boxed{\\frac12}", "\\boxed{2}"]
    code = (f"import json, rewards; print(json.dumps(rewards.score_batch('math', {responses!r}, "
            f"['1+x', '0.5', '3'], workers={workers})))")
    env = os.environ | env | {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "slow_parse"),
                                                              str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("workers", [0, 2])
def test_slow_parses_do_not_score_0(workers):
    """Two ways a machine's load used to turn correct answers into 0s, in process and in the pool:
    - the first parse of a process is slow (sympy's lazy imports: 1.2 s of CPU here). It runs in
      rewards.warm_up, outside any deadline; under math_reward's 1 s deadline (the old pool's
      warm-up call, the old first in-process call) it was cut off, the caches stayed cold and
      every item scored 0;
    - every parse under a deadline waits 1.2 s (a machine too busy to run it): the CPU-time
      limits let it finish, the old 1 s wall-clock deadline did not."""
    env = {"SLOW_PARSE_COLD_CPU_S": "1.2", "SLOW_PARSE_SLEEP_S": "1.2"}
    assert _score_slowly(env, workers) == [1.0, 1.0, 0.0]


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
    # the integral runs into math_reward's 1 s deadline; the items behind it are still scored.
    scores = rewards.score_batch("math", responses, golds, timeout_s=0.3)
    assert scores == [1.0, 0.0, 1.0, 0.0, 0.0]
    countdown = [{"numbers": [1, 2], "target": 3}] * 2
    responses = ["<answer>1+2</answer>", "<answer>1*2</answer>"]
    assert rewards.score_batch("countdown", responses, countdown) == [1.0, 0.0]


def test_pool_kills_a_worker_stuck_in_one_c_call():
    """math.factorial(10**7) is one C call that no signal handler interrupts: the kernel's CPU
    limit (RLIMIT_CPU) ends its worker, and a fresh worker scores the items after it."""
    start = time.perf_counter()
    scores = sandbox.score_in_workers(math.factorial, [(3,), (10**7,), (4,)], 0.5, workers=1)
    assert scores == [6, 0.0, 24]
    print(f"stuck C call: {time.perf_counter() - start:.1f} s wall")


def test_pool_wall_backstop():
    """A worker that does not run at all (here: sleeps) is killed at WALL_BACKSTOP x timeout_s;
    one that waits less than that is not (the old pool killed it at timeout_s)."""
    assert sandbox.score_in_workers(time.sleep, [(0.5,), (60,)], 0.1, workers=1) == [None, 0.0]


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
