"""How long can one math_reward call take? The slowest calls over hostile answers and golds.

Times math_reward (the default in-process path: refusals, then the 1 s CPU-time deadline) on
  hostile:  every answer of tests/hostile.py (power towers, huge numbers, deep nesting, 200 KB
            responses, the issue's nested powers with 5-, 6- and 7-digit bases, ...);
  budget:   answers built to sit just under sandbox.MAX_NUMBER_DIGITS, the largest integer work
            that refuse_reason lets through;
  golds:    (--golds) every math gold of ../shared/benchmarks, boxed, against the next gold of its
            file: both sides go through the parser and sympy (the string shortcut of an equal
            answer would skip them), the cost of an ordinary wrong answer.
Prints wall and CPU seconds (this thread) of the slowest calls and the one-off warm_up cost.
Figures only, no assertions. Usage:

    python benchmarks/reward_bench.py            # hostile + budget (about a minute)
    python benchmarks/reward_bench.py --golds    # + every benchmark gold (about 10 minutes)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import rewards  # noqa: E402
import sandbox  # noqa: E402
from hostile import HOSTILE  # noqa: E402

BENCH = ROOT.parent / "shared" / "benchmarks"
MATH_FILES = ["math500_test", "gsm8k_test", "amc23_test", "aime24_test", "aime25_test",
              "olympiadbench_test", "minerva_math_test", "dapo_math_17k"]
# Under the digit budget: sympy does the integer work (~10,000 digits) before the comparison.
BUDGET = {
    "fraction of powers": "\\boxed{\\frac{7^{5900}+1}{3^{10000}+1}}",
    "square root of a power": "\\boxed{\\sqrt{7^{11800}+1}}",
    "sine of a power": "\\boxed{\\sin(7^{11800})}",
    "power of two": "\\boxed{2^{33000}}",
    "factorial quotient": "\\boxed{\\frac{1000!}{998!}}",
    "binomial": "\\boxed{\\binom{33000}{16500}}",
}


def timed(response: str, gold) -> tuple[float, float, float]:
    """(wall s, CPU s of this thread, reward) of one math_reward call."""
    wall, cpu = time.perf_counter(), time.thread_time()
    reward = rewards.math_reward(response, gold)
    return time.perf_counter() - wall, time.thread_time() - cpu, reward


def report(title: str, rows: list[tuple[str, float, float, float]], top: int) -> None:
    rows = sorted(rows, key=lambda r: -r[1])
    print(f"\n{title}: {len(rows)} calls, slowest {top} (wall s, CPU s, reward)")
    for name, wall, cpu, reward in rows[:top]:
        print(f"  {wall:6.3f}  {cpu:6.3f}  {reward:.0f}  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golds", action="store_true", help="also every gold of ../shared/benchmarks")
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    wall, cpu = time.perf_counter(), time.thread_time()
    rewards.warm_up()
    print(f"warm_up (once per process, no deadline): {time.perf_counter() - wall:.2f} s wall, "
          f"{time.thread_time() - cpu:.2f} s CPU")
    for title, answers in (("hostile", HOSTILE), ("budget", BUDGET)):
        rows = [(name, *timed(response, "1")) for name, response in answers.items()]
        report(title, rows, args.top)
        if title == "budget":
            for name, response in answers.items():
                inside = response[len("\\boxed{") : -1]
                print(f"  {name}: {sandbox.number_digits(inside):.0f} estimated digits, "
                      f"refused: {sandbox.refuse_reason(inside)}")
    if args.golds:
        for name in MATH_FILES:
            path = BENCH / f"{name}.jsonl"
            if not path.exists():
                print(f"\n{path} absent")
                continue
            golds = [rewards.gold_of(json.loads(line)) for line in path.open()]
            rows = []
            for i, gold in enumerate(golds):
                first = str(gold[0] if isinstance(gold, list) else gold).strip().strip("$")
                other = golds[(i + 1) % len(golds)]
                rows.append((f"{name}:{i + 1} {first[:50]}", *timed(f"\\boxed{{{first}}}", other)))
            report(f"{name} golds vs the next gold ({sum(r[3] for r in rows):.0f} scored 1)", rows,
                   3)


if __name__ == "__main__":
    main()
