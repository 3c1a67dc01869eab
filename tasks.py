"""Synthetic tasks: problems we generate, so they need no download and RL has something to learn.

The arithmetic task of the embedded default (`arith`). Problems are short expressions over
one-digit numbers with + - *, e.g. "3+4*2-5". The teacher of the supervised warm start writes
step-by-step traces that end in \\boxed{}, but on a fixed share of the problems where it matters it
uses a wrong procedure: it ignores operator precedence and reduces left to right. The warm-started
model therefore holds two strategies, one right and one wrong; one reward bit per sample is enough
to tell them apart, and the tokens where the two diverge (the first reduction step) are exactly the
kind of pivots flow credit is meant to find.

    Compute 3+4*2-5.          right: 4*2=8 / 3+8=11 / 11-5=6 / \\boxed{6}
                              wrong: 3+4=7 / 7*2=14 / 14-5=9 / \\boxed{9}

The credit-assignment testbed (`chain`, docs/testbed.md): longer expressions modulo 10, solved one
reduction per line with the remaining expression restated and random filler lines in between, so
responses run to ~100-200 tokens of which a few (the operand and operator of a move at a "trap",
where a careless student reduces a+b before b*c) decide the outcome. `chain_decisions` labels them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from dataspec import Example

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


def next_reduction(ops: list[str], precedence: bool = True) -> int:
    """Index of the operator a student reduces next: the leftmost * (precedence), else the
    leftmost one."""
    return ops.index("*") if precedence and "*" in ops else 0


def solve_steps(numbers: list[int], ops: list[str],
                precedence: bool = True) -> list[tuple[int, str, int, int]]:
    """The reductions (a, op, b, a op b) that evaluate the expression, in the order a student
    writes them.

    With precedence, every * is reduced first (leftmost first), then + and - left to right; without
    it, everything is reduced left to right (the teacher's wrong procedure).
    """
    nums, ops = list(numbers), list(ops)
    steps = []
    while ops:
        i = next_reduction(ops, precedence)
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
    """True when left-to-right reduction takes another route than the right one: a * after a +
    or -."""
    seen_additive = False
    for op in ops:
        if op == "*" and seen_additive:
            return True
        seen_additive |= op != "*"
    return False


@dataclass(frozen=True)
class ArithmeticTask:
    """Problems with 3-4 one-digit operands. `sample` draws (numbers, ops); seeds make splits
    disjoint."""

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
        """n distinct problems as Examples, none of whose prompts is in `exclude` (a held-out
        set's prompts)."""
        return distinct_examples(lambda rng: self.problem(*self.sample(rng)), "arith", n, seed,
                                 exclude)


def distinct_examples(draw: Callable[[random.Random], Problem], name: str, n: int, seed: int,
                      exclude: frozenset[str] = frozenset()) -> list[Example]:
    """n problems drawn with random.Random(seed), no prompt twice and none in `exclude`, as
    Examples."""
    rng, seen, out = random.Random(seed), set(exclude), []
    while len(out) < n:
        p = draw(rng)
        if p.prompt not in seen:
            seen.add(p.prompt)
            out.append(Example(prompt=p.prompt, gold=p.answer, kind="math",
                               id=f"{name}:{seed}:{len(out)}"))
    return out


ARITH_HELDOUT_SEED = 1234


def arith_heldout(n: int = 500) -> list[Example]:
    """The tiny task's held-out set (eval.py --benchmarks arith, train.py's held-out evaluation)."""
    return ArithmeticTask().examples(n, seed=ARITH_HELDOUT_SEED)


def arith_training(n: int, seed: int) -> list[Example]:
    """n training problems drawn with `seed`, none of them in the held-out set."""
    held_out = frozenset(e.prompt for e in arith_heldout())
    return ArithmeticTask().examples(n, seed=seed, exclude=held_out)


# --------------------------------------------------------------------------------------------------
# The credit-assignment testbed (`chain`, docs/testbed.md): long responses, few deciding tokens

CHAIN_MOD = 10
CHAIN_FILLERS = ("let me see", "keep going", "so far so good", "almost there", "check the signs")
_EXPR = r"\d(?:[-+*]\d)*"
_HEADER = re.compile(rf"We need ({_EXPR}) mod {CHAIN_MOD}\.")
_MOVE = re.compile(r"\d[-+*]\d=\d, so (.*)\.")


def is_trap(ops: list[str]) -> bool:
    """A state where reducing the leftmost operator is wrong: a + or - whose right operand is a
    factor of a product (3+4*2...). Everywhere else the leftmost operator may be reduced first."""
    return len(ops) > 1 and ops[0] != "*" and ops[1] == "*"


def chain_reduction(ops: list[str], careful: bool = True) -> int:
    """Index of the operator the chain procedure reduces next: the leftmost one, except at a trap,
    where the careful procedure reduces the product first and the careless one does not."""
    return 1 if careful and is_trap(ops) else 0


def parse_expression(text: str) -> tuple[list[int], list[str]]:
    """'3+4*2' -> ([3, 4, 2], ['+', '*']): one-digit operands, no spaces."""
    if re.fullmatch(_EXPR, text) is None:
        raise ValueError(f"not an expression of one-digit operands: {text!r}")
    return [int(c) for c in text[::2]], list(text[1::2])


@dataclass(frozen=True)
class Decision:
    """One trap that a response passed through (chain_decisions)."""

    step: int  # which reduction line of the response (0 = the first)
    chars: tuple[int, ...]  # offsets in the response of the deciding characters of the move
    choice: str  # what the response wrote there: "careful", "careless" or "other"
    operator: str  # the + or - before the product: it sets the warm start's odds of carelessness


@dataclass(frozen=True)
class ChainTask:
    """Expressions of 5-7 one-digit operands with + - *, computed modulo 10, solved one reduction
    per line, each line restating the whole remaining expression:

        Compute 3+4*2-5*2 mod 10.     We need 3+4*2-5*2 mod 10.
                                      4*2=8, so 3+8-5*2.        <- a trap: 3+4 would be wrong
                                      let me see.               <- filler, decides nothing
                                      3+8=1, so 1-5*2.
                                      5*2=0, so 1-0.            <- a trap: 1-5 would be wrong
                                      1-0=1, so 1.
                                      \\boxed{1}

    The warm start's teacher (`solution` with an rng) takes the careless move at a trap with a
    probability that depends on the operator before the product (wrong_after), and writes a random
    filler line after a step with probability filler_share. Only the first two characters of each
    trap's move decide the outcome; the restated expressions are copies and the fillers noise.
    """

    min_operands: int = 5
    max_operands: int = 7
    wrong_after: tuple[tuple[str, float], ...] = (("+", 0.2), ("-", 0.7))  # careless at a trap
    filler_share: float = 0.5

    def sample(self, rng: random.Random) -> tuple[list[int], list[str]]:
        n = rng.randint(self.min_operands, self.max_operands)
        return [rng.randint(1, 9) for _ in range(n)], [rng.choice(OPS) for _ in range(n - 1)]

    def problem(self, numbers: list[int], ops: list[str]) -> Problem:
        value = solve_steps(numbers, ops)[-1][3] % CHAIN_MOD  # exact value by precedence, mod 10
        return Problem(prompt=f"Compute {expression(numbers, ops)} mod {CHAIN_MOD}.",
                       answer=str(value))

    def solution(self, numbers: list[int], ops: list[str], rng: random.Random | None = None) -> str:
        """The worked solution. rng=None: the careful procedure, no fillers. With an rng: the
        teacher of the warm start (careless at a trap with probability wrong_after[operator],
        fillers)."""
        nums, ops = list(numbers), list(ops)
        wrong_after = dict(self.wrong_after)
        lines = [f"We need {expression(nums, ops)} mod {CHAIN_MOD}."]
        while ops:
            careless = rng is not None and is_trap(ops) and rng.random() < wrong_after[ops[0]]
            i = chain_reduction(ops, careful=not careless)
            a, op, b = nums[i], ops[i], nums[i + 1]
            nums[i : i + 2] = [_apply(a, op, b) % CHAIN_MOD]
            del ops[i]
            lines.append(f"{a}{op}{b}={nums[i]}, so {expression(nums, ops)}.")
            if rng is not None and rng.random() < self.filler_share:
                lines.append(rng.choice(CHAIN_FILLERS) + ".")
        return "\n".join(lines + [f"\\boxed{{{nums[0]}}}"])

    def examples(self, n: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[Example]:
        """n distinct problems as Examples, none of whose prompts is in `exclude`."""
        return distinct_examples(lambda rng: self.problem(*self.sample(rng)), "chain", n, seed,
                                 exclude)


def chain_decisions(response: str) -> list[Decision]:
    """The task's own knowledge of what decides a response's outcome: every trap it passes.

    The state is the expression the response itself last wrote (the `We need ...` line, then each
    step's `so ...`), so a copying slip changes the state rather than the labels' positions. At a
    trap the careful move (b*c) and the careless one (a+b) are told apart by the move's first two
    characters, its first operand and its operator (the second operand is then a copy); the
    deciding characters are those of the two where the moves differ: both, or only the operator
    when a == b. (The warm start sometimes blends the two, `3-6*7` -> `6-6`: the operand and the
    operator are separate choices.) Filler and unparsable lines leave the state as it is; labelling
    stops at a `so` that does not parse. Model output is hostile input: it is only matched against
    regular expressions.
    """
    out, state, start, step = [], None, 0, 0
    for line in response.split("\n"):
        header, move = _HEADER.fullmatch(line), _MOVE.fullmatch(line)
        if header and state is None:
            state = parse_expression(header.group(1))
        elif move and state is not None:
            nums, ops = state
            if is_trap(ops):
                careful, careless = f"{nums[1]}*{nums[2]}", f"{nums[0]}{ops[0]}{nums[1]}"
                chars = tuple(start + k for k in range(2) if careful[k] != careless[k])
                choice = {careful: "careful", careless: "careless"}.get(line[:3], "other")
                out.append(Decision(step=step, chars=chars, choice=choice, operator=ops[0]))
            if re.fullmatch(_EXPR, move.group(1)) is None:
                break
            state = parse_expression(move.group(1))
            step += 1
        start += len(line) + 1
    return out


CHAIN_HELDOUT_SEED = 4321


def chain_heldout(n: int = 300) -> list[Example]:
    """The testbed's held-out set (train.py --eval-data chain)."""
    return ChainTask().examples(n, seed=CHAIN_HELDOUT_SEED)


def chain_training(n: int, seed: int) -> list[Example]:
    """n training problems drawn with `seed`, none of them in the held-out set."""
    held_out = frozenset(e.prompt for e in chain_heldout())
    return ChainTask().examples(n, seed=seed, exclude=held_out)


@dataclass(frozen=True)
class Synthetic:
    """A synthetic task as train.py and data.load_examples see it: its two disjoint splits."""

    held_out: Callable[[], list[Example]]  # the fixed evaluation set
    training: Callable[[int, int], list[Example]]  # (n, seed) -> n problems, disjoint from held_out


TASKS: dict[str, Synthetic] = {
    "arith": Synthetic(held_out=arith_heldout, training=arith_training),
    "chain": Synthetic(held_out=chain_heldout, training=chain_training),
}
