"""Synthetic tasks: problems we generate, so they need no download and RL has something to learn.

The arithmetic task of the embedded default (`arith`). Problems are short expressions over
one-digit numbers with + - *, e.g. "3+4*2-5". The teacher of the supervised warm start writes
step-by-step traces that end in \\boxed{}, but on a fixed share of the problems where it matters it
uses a wrong procedure: it ignores operator precedence and reduces left to right. The warm-started
model therefore holds two strategies, one right and one wrong; one reward bit per sample is enough
to tell them apart, and the tokens where the two diverge (the first reduction step) are exactly
the kind of pivots flow credit is meant to find.

    Compute 3+4*2-5.          right: 4*2=8 / 3+8=11 / 11-5=6 / \\boxed{6}
                              wrong: 3+4=7 / 7*2=14 / 14-5=9 / \\boxed{9}
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from data import Example

OPS = "+-*"


@dataclass(frozen=True)
class Problem:
    prompt: str  # the user message, before the chat template
    answer: str  # the gold answer as text


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    return a * b


def solve_steps(numbers: list[int], ops: list[str],
                precedence: bool = True) -> list[tuple[int, str, int, int]]:
    """The reductions (a, op, b, a op b) that evaluate the expression, in the order a student
    writes them.

    With precedence, every * is reduced first (leftmost first), then + and - left to right;
    without it, everything is reduced left to right (the teacher's wrong procedure).
    """
    nums, ops = list(numbers), list(ops)
    steps = []
    while ops:
        i = ops.index("*") if precedence and "*" in ops else 0
        a, op, b = nums[i], ops[i], nums[i + 1]
        c = _apply(a, op, b)
        steps.append((a, op, b, c))
        nums[i : i + 2] = [c]
        del ops[i]
    return steps


def worked_solution(numbers: list[int], ops: list[str], precedence: bool = True) -> str:
    """A step-by-step response: one reduction per line, then the boxed result."""
    steps = solve_steps(numbers, ops, precedence)
    lines = [f"{a}{op}{b}={c}" for a, op, b, c in steps]
    return "\n".join(lines + [f"\\boxed{{{steps[-1][3]}}}"])


def expression(numbers: list[int], ops: list[str]) -> str:
    return "".join(f"{n}{op}" for n, op in zip(numbers, ops)) + str(numbers[-1])


def precedence_matters(ops: list[str]) -> bool:
    """True when left-to-right reduction goes another way than the right one: a * after a + or -."""
    seen_additive = False
    for op in ops:
        if op == "*" and seen_additive:
            return True
        seen_additive |= op != "*"
    return False


@dataclass(frozen=True)
class ArithmeticTask:
    """Problems with 3-4 one-digit operands; `sample` draws (numbers, ops), seeds split them."""

    min_operands: int = 3
    max_operands: int = 4

    def sample(self, rng: random.Random) -> tuple[list[int], list[str]]:
        n = rng.randint(self.min_operands, self.max_operands)
        return [rng.randint(1, 9) for _ in range(n)], [rng.choice(OPS) for _ in range(n - 1)]

    def problem(self, numbers: list[int], ops: list[str]) -> Problem:
        value = solve_steps(numbers, ops)[-1][3]
        return Problem(prompt=f"Compute {expression(numbers, ops)}.", answer=str(value))

    def problems(self, n: int, seed: int) -> list[Problem]:
        rng = random.Random(seed)
        return [self.problem(*self.sample(rng)) for _ in range(n)]

    def examples(self, n: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[Example]:
        """n distinct problems as Examples, none of whose prompts is in `exclude` (a held-out set's
        prompts)."""
        rng, seen, out = random.Random(seed), set(exclude), []
        while len(out) < n:
            p = self.problem(*self.sample(rng))
            if p.prompt not in seen:
                seen.add(p.prompt)
                out.append(Example(prompt=p.prompt, gold=p.answer, kind="math",
                                   id=f"arith:{seed}:{len(out)}"))
        return out


ARITH_HELDOUT_SEED = 1234


def arith_heldout(n: int = 500) -> list[Example]:
    """The tiny task's held-out set (eval.py --benchmarks arith, train.py's held-out evaluation)."""
    return ArithmeticTask().examples(n, seed=ARITH_HELDOUT_SEED)


def arith_training(n: int, seed: int) -> list[Example]:
    """n training problems drawn with `seed`, none of them in the held-out set."""
    held_out = frozenset(e.prompt for e in arith_heldout())
    return ArithmeticTask().examples(n, seed=seed, exclude=held_out)


@dataclass(frozen=True)
class Synthetic:
    """A synthetic task as train.py and data.load_examples see it: its two disjoint splits."""

    held_out: Callable[[], list[Example]]  # the fixed evaluation set
    training: Callable[[int, int], list[Example]]  # (n, seed) -> n problems, disjoint from held_out


TASKS: dict[str, Synthetic] = {"arith": Synthetic(held_out=arith_heldout, training=arith_training)}
