"""A brute-force Countdown solver for the tests (rewards.py only verifies answers)."""
from __future__ import annotations

from fractions import Fraction
from typing import Sequence


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
    if found is None:
        return None
    return found[1:-1] if len(numbers) > 1 else found  # drop the outermost parentheses
