"""Seeded student bugs: plausible wrong solutions that the autograder must fail (issues 12, 24).

    python course/bugs.py            # grade every bug, print which tests caught it
    python course/bugs.py a2_credit  # one assignment

The bugs live in course/seeded/<assignment>.py. A code bug is a small edit of one function of a
reference module (the edit must match exactly once inside that function, so a bug that no longer
applies to the moved or rewritten code is an error, not a silent pass). The bugs of a4_experiment
corrupt the produced results (report.json, the run folders) of the reference solution instead.
tests/test_course.py grades every bug and asserts that each one loses points.
"""

from __future__ import annotations

import ast
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "course"))

# course/ is not a package: its scripts import each other from this folder
import grade
import make
from seeded import Bug, a1_flow, a2_credit, a3_capture, a4_experiment

BUGS: list[Bug] = [*a1_flow.BUGS, *a2_credit.BUGS, *a3_capture.BUGS, *a4_experiment.BUGS]


def patched_source(bug: Bug) -> str:
    """The reference module with the bug's edits applied inside bug.function."""
    source = (ROOT / f"{bug.module}.py").read_text(encoding="utf-8")
    nodes = [n for n in ast.parse(source).body
             if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == bug.function]
    if not nodes:
        raise make.AssignmentError(f"bug {bug.name}: {bug.module}.py has no function "
                                   f"{bug.function}")
    lines = source.splitlines(keepends=True)
    start, end = nodes[0].lineno - 1, nodes[0].end_lineno
    body = "".join(lines[start:end])
    for old, new in bug.edits:
        if body.count(old) != 1:
            raise make.AssignmentError(f"bug {bug.name}: {old!r} occurs {body.count(old)} times in "
                                       f"{bug.module}.{bug.function}, expected once")
        body = body.replace(old, new)
    return "".join(lines[:start]) + body + "".join(lines[end:])


# --------------------------------------------------------------------------------------------------
# grading the bugs
# --------------------------------------------------------------------------------------------------


@dataclass
class Caught:
    bug: Bug
    score: float
    max_score: float
    failed: list[str]  # test names that failed


def solution_handout(assignment: str, out: Path) -> Path:
    """The handout of `assignment` with the reference solutions in place, every check shipped."""
    return make.build(make.BY_NAME[assignment], out, solutions=True, full_checks=True)


def restore(assignment: make.Assignment, folder: Path) -> None:
    """Put the reference solution back into a solution handout after a bug changed it."""
    for m in assignment.modules:
        shutil.copyfile(ROOT / f"{m.name}.py", folder / f"{m.name}.py")
    if assignment.solution:
        solution = make.COURSE / assignment.solution
        for item in solution.iterdir():
            target = folder / item.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        make._copy(solution, folder)


def grade_bugs(assignment: str, scratch: Path) -> tuple[dict, list[Caught]]:
    """Grade the reference solution, then every bug of `assignment`, in this process."""
    a = make.BY_NAME[assignment]
    folder = solution_handout(assignment, scratch)
    reference = grade.grade(folder)
    caught = []
    for bug in (b for b in BUGS if b.assignment == assignment):
        if bug.corrupt is not None:
            bug.corrupt(folder)
        else:
            (folder / f"{bug.module}.py").write_text(patched_source(bug), encoding="utf-8")
        res = grade.grade(folder)
        failed = [t["name"] for t in res["tests"] if t["score"] < t["max_score"]]
        caught.append(Caught(bug, res["score"], sum(t["max_score"] for t in res["tests"]), failed))
        restore(a, folder)
    return reference, caught


def main(argv: list[str] | None = None) -> None:
    names = (argv if argv is not None else sys.argv[1:]) or [a.name for a in make.ASSIGNMENTS]
    total = missed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            reference, caught = grade_bugs(name, Path(tmp))
            print(f"{name}: reference {reference['score']:g} points")
            for c in caught:
                status = "caught" if c.score < c.max_score else "MISSED"
                print(f"  {status} {c.bug.name:<26} {c.score:g}/{c.max_score:g}  {c.bug.why}")
                for test in c.failed[:3]:
                    print(f"{'':>10}- {test}")
            total += len(caught)
            missed += sum(c.score >= c.max_score for c in caught)
    print(f"{total - missed} of {total} seeded bugs caught")
    if missed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
