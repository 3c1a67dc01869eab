"""Seeded student bugs, one file per assignment: plausible wrong solutions the autograder must fail.

A code bug (`code`) is a small edit of one function of a reference module: (old, new) text
replacements that must each match exactly once inside that function (bugs.py applies them), so a
bug that no longer applies to moved or rewritten code is an error, not a silent pass. A results bug
(`results`, a4_experiment) corrupts a copy of the reference solution's produced results instead.
course/bugs.py grades them; tests/test_course.py asserts that each one loses points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Bug:
    assignment: str
    name: str
    why: str  # the student's mistake, in words
    module: str = ""  # code bug: the reference module ...
    function: str = ""  # ... and the top-level function (or helper) edited
    edits: tuple[tuple[str, str], ...] = ()  # (old, new) text replacements inside that function
    corrupt: Callable[[Path], None] | None = None  # results bug: edits the handout folder


def code(assignment: str, name: str, why: str, module: str, function: str, *edits) -> Bug:
    return Bug(assignment, name, why, module, function, tuple(edits))


def results(name: str, why: str, corrupt: Callable[[Path], None]) -> Bug:
    return Bug("a4_experiment", name, why, corrupt=corrupt)
