"""Generate the course handouts from the reference modules (issues 12 and 24).

    python course/make.py hw                  # one folder per assignment under hw/
    python course/make.py hw --only a1_flow   # some assignments only
    python course/make.py hw --autograder zips  # also one Gradescope autograder zip per assignment
    python course/make.py rel --release       # after the a1-a3 deadlines: their reference modules
    python course/make.py hw --solutions      # every reference solution in place (a4's results too)

One source of truth: a student file is the reference module of the same name, rewritten with
Python's `ast` (sources.py): the bodies of the assigned functions become `raise
NotImplementedError(...)` (signature and docstring kept: the docstring is the specification), and
what would give the answer away (helpers and fused paths that compute the same thing) is dropped.
Which functions, and what else stays, is the `ASSIGNMENTS` table below; a listed function or name
that the module no longer has is an error that names it. Everything else a handout needs is copied
as it is: the local modules the reference modules import (followed recursively; one that another
assignment asks for is shipped with those functions emptied), the documents their docstrings point
to, listed data (the shipped tiny model), the grader, the visible checks.

Release order. a4 runs the whole method, so its flow.py, grpo.py and capture.py are the complete
modules with every a1-a3 function emptied (and the two helpers of the fused solve that would give
eq. (2) away): by default students run a4 on their own a1-a3 code, pasted into those stubs. After
the a1-a3 deadlines `--release` builds the handouts with the a1-a3 reference modules in place of
the stubs (a4's own results are not in it), for students who would rather run a4 on those.

A handout folder:
    README.md             the handout (course/handouts/<name>.md, generated tables filled in)
    <module>.py           student files: the reference module's name, so copying it over scores full
    ...                   the other local modules, documents and data the reference code needs
    grade.py              the grader; `python grade.py .` runs the visible checks
    checks/<name>.py      the visible checks (hidden ones only live in course/checks/)
    handout.json          assignment name, student files, what to submit
    requirements.txt      the pip requirements of all of the above, pinned as in the repository
The output depends on the sources only (sorted file lists, no dates): two runs write the same bytes.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sources import (ALL, ROOT, AssignmentError, CheckInfo, python_files, check_infos,
                     dependencies, doc_pointers, has_section, requirements, rewrite,
                     visible_checks)

COURSE = ROOT / "course"


@dataclass(frozen=True)
class Module:
    """One student file: the reference module `name`.py with `stubs` emptied.

    keep: ALL, or the other top-level names that stay (with whatever they and the stubs' signatures
    refer to); everything else is dropped, so a fused path that computes an assigned function's
    result cannot be called instead of writing it.
    """

    name: str
    stubs: tuple[str, ...]
    keep: str | tuple[str, ...] = ()


@dataclass(frozen=True)
class Assignment:
    name: str  # folder name under DIR, and course/handouts/<name>.md, course/checks/<name>.py
    title: str
    modules: tuple[Module, ...] = ()
    entry_points: tuple[str, ...] = ()  # scripts students run, copied with what they import
    data: tuple[str, ...] = ()  # files or folders (relative to the repository) copied as they are
    submit: tuple[str, ...] = ()  # what a student hands in besides the student files
    submit_modules: bool = True  # False: graded on its results, the modules are not handed in
    solution: str | None = None  # a folder of course/ that --solutions copies in (besides modules)


# what a1-a3 assign, per module; a4 empties all of them (its students paste theirs in)
A1_FLOW = ("influence_graph", "potential", "reweight", "forward_flow")
A2_FLOW = ("top_k_mask", "credit_weights")
A2_GRPO = ("group_advantages", "policy_loss")
A3_CAPTURE = ("add_head_mean",)
FUSED_SOLVE = ("_system", "_solve_potential")  # flow.trace's eq. (2): potential in two steps

ASSIGNMENTS: tuple[Assignment, ...] = (
    Assignment(
        name="a1_flow",
        title="The flow: eqs. (1)-(4) and Theorem 3.1",
        modules=(Module("flow", A1_FLOW),),
        submit=("answers.md",),
    ),
    Assignment(
        name="a2_credit",
        title="Credit and the surrogate: eqs. (6), (10), (5)/(11)",
        modules=(
            Module("flow", A2_FLOW),
            Module("grpo", A2_GRPO, keep=("_loss_stats",)),  # the statistics it returns
        ),
        submit=("answers.md",),
    ),
    Assignment(
        name="a3_capture",
        title="Attention capture through transformers' AttentionInterface",
        # rollout.py too: its checks call rollout.generate, which must use the student's capture
        modules=(Module("capture", A3_CAPTURE, keep=ALL), Module("rollout", (), keep=ALL)),
        data=("tiny/qwen3-arith",),
        submit=("answers.md",),
    ),
    Assignment(
        name="a4_experiment",
        title="An experiment: flow vs uniform credit over seeds, and the Table 1 intervention",
        modules=(Module("flow", A1_FLOW + A2_FLOW + FUSED_SOLVE, keep=ALL),
                 Module("grpo", A2_GRPO, keep=ALL), Module("capture", A3_CAPTURE, keep=ALL)),
        entry_points=("train.py", "analyze.py"),
        data=("tiny/qwen3-arith",),
        submit=("report.json", "report.md", "runs/"),
        submit_modules=False,
        solution="solutions/a4_experiment",
    ),
)
BY_NAME = {a.name: a for a in ASSIGNMENTS}
# module -> every function some assignment asks for: emptied wherever the module is shipped
ANSWERS = {m.name: tuple(sorted({f for a in ASSIGNMENTS for n in a.modules if n.name == m.name
                                 for f in n.stubs}))
           for a in ASSIGNMENTS for m in a.modules}

# --------------------------------------------------------------------------------------------------
# writing a handout
# --------------------------------------------------------------------------------------------------


def _function_table(assignment: Assignment, sources: dict[str, str]) -> str:
    rows = ["| file | function | what it is |", "|---|---|---|"]
    for mod in assignment.modules:
        tree = ast.parse(sources[mod.name])
        defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        for name in mod.stubs:
            doc = ast.get_docstring(defs[name]).split("\n\n")[0].replace("\n", " ")
            rows.append(f"| `{mod.name}.py` | `{name}` | {doc.replace('|', '&#124;')} |")
    return "\n".join(rows)


def _check_table(checks: list[CheckInfo]) -> str:
    rows = ["| points | test | visible now |", "|---|---|---|"]
    for c in checks:
        shown = "yes" if c.visibility == "visible" else "after the deadline"
        rows.append(f"| {c.points:g} | {c.doc.replace('|', '&#124;')} | {shown} |")
    total = sum(c.points for c in checks)
    hidden = sum(c.points for c in checks if c.visibility != "visible")
    note = (f"Total {total:g} points, of which {hidden:g} in tests you see after the deadline (the "
            "same functions, more cases: passing the visible tests is not enough).")
    return "\n".join(rows) + "\n\n" + textwrap.fill(note, 100)


def _fill(template: str, sections: dict[str, str], where: Path) -> str:
    for key, value in sections.items():
        template = template.replace(f"<!-- {key} -->", value)
    left = re.findall(r"<!-- ([a-z]+) -->", template)
    if left:
        raise AssignmentError(f"{where}: unknown placeholder(s) {left}")
    return template


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        for p in sorted(src.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                _copy(p, dst / p.relative_to(src))
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def _documents(py_files: list[Path], folder: Path) -> list[tuple[str, str | None]]:
    """Copy the documents the docstrings of `py_files` point to (README.md is the handout's own);
    returns every pointer (document, section or None)."""
    pointers = [p for path in py_files for p in doc_pointers(path.read_text("utf-8"))]
    for doc in sorted({doc for doc, _ in pointers} - {"README.md"}):
        if not (ROOT / doc).is_file():
            raise AssignmentError(f"a docstring points to {doc}, which the repository lacks")
        _copy(ROOT / doc, folder / doc)
    return pointers


def _check_pointers(folder: Path, pointers: list[tuple[str, str | None]]) -> None:
    """Every section a shipped docstring points to is in the handout."""
    for doc, section in pointers:
        if section and not has_section((folder / doc).read_text("utf-8"), section):
            raise AssignmentError(f"{folder.name}: a docstring points to the {section!r} section "
                                  f"of {doc}, which the handout's {doc} lacks")


def build(assignment: Assignment, out: Path, solutions: bool = False, release: bool = False,
          full_checks: bool = False) -> Path:
    """Write the handout of `assignment` into out/<name> (replaced if it exists); returns it.

    release: the reference modules in place of the stubs (after the a1-a3 deadlines).
    solutions: the same and the solution folder (a4's results).
    full_checks: ship every check, hidden ones included (the Gradescope autograder).
    """
    folder = out / assignment.name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    sources = {m.name: (ROOT / f"{m.name}.py").read_text(encoding="utf-8")
               for m in assignment.modules}
    reference = solutions or release
    for m in assignment.modules:
        text = sources[m.name] if reference else rewrite(sources[m.name], m.name, m.stubs, m.keep)
        (folder / f"{m.name}.py").write_text(text, encoding="utf-8")

    # what the reference modules and entry points need (the full reference module, so that copying
    # it over a student file works)
    start = [ROOT / f"{m.name}.py" for m in assignment.modules]
    start += [ROOT / e for e in assignment.entry_points]
    local, third = dependencies(start)
    student = {f"{m.name}.py" for m in assignment.modules}
    for path in local:
        if path.name in student:
            continue
        if ANSWERS.get(path.stem) and path.parent == ROOT and not reference:
            # a module another assignment asks for (a3's rollout.py imports grpo): answers emptied
            text = rewrite(path.read_text(encoding="utf-8"), path.stem, ANSWERS[path.stem], ALL)
            (folder / path.name).write_text(text, encoding="utf-8")
        else:
            _copy(path, folder / path.relative_to(ROOT))
    pointers = _documents([f for path in local for f in python_files(path)], folder)
    for item in assignment.data:
        if not (ROOT / item).exists():
            raise AssignmentError(f"{assignment.name}: data {item!r} is not in the repository")
        _copy(ROOT / item, folder / item)
    if solutions and assignment.solution:
        _copy(COURSE / assignment.solution, folder)

    checks_file = COURSE / "checks" / f"{assignment.name}.py"
    checks_src = checks_file.read_text(encoding="utf-8")
    infos = check_infos(checks_src)
    if not infos:
        raise AssignmentError(f"course/checks/{assignment.name}.py has no @check tests")
    shipped = checks_src if full_checks else visible_checks(checks_src)
    (folder / "checks").mkdir()
    (folder / "checks" / f"{assignment.name}.py").write_text(shipped, encoding="utf-8")
    shutil.copyfile(COURSE / "grade.py", folder / "grade.py")
    _, check_third = dependencies([COURSE / "grade.py", checks_file])
    check_third.pop("grade", None)  # the checks import the grader next to them
    reqs = requirements({**third, **check_third})
    (folder / "requirements.txt").write_text("\n".join(reqs) + "\n")

    manifest = {
        "assignment": assignment.name,
        "title": assignment.title,
        "student_files": sorted(student),
        "submit": sorted(student) * assignment.submit_modules + list(assignment.submit),
    }
    (folder / "handout.json").write_text(json.dumps(manifest, indent=2) + "\n")
    template_path = COURSE / "handouts" / f"{assignment.name}.md"
    sections = {
        "functions": _function_table(assignment, sources) if assignment.modules else "",
        "tests": _check_table(infos),
        "requirements": "\n".join(f"    {r}" for r in reqs),
        "submit": ", ".join(f"`{s}`" for s in manifest["submit"]),
    }
    readme = _fill(template_path.read_text(encoding="utf-8"), sections, template_path)
    (folder / "README.md").write_text(readme, encoding="utf-8")
    _check_pointers(folder, pointers)
    return folder


RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope entry point: the submission's files replace the handout's, then the full checks run.
set -u
cd /autograder/source
for f in {files}; do
    if [ -e "/autograder/submission/$f" ]; then
        rm -rf "handout/$f" && cp -r "/autograder/submission/$f" "handout/$f"
    fi
done
python3 handout/grade.py handout --out /autograder/results/results.json
"""

SETUP = """#!/usr/bin/env bash
# Gradescope image setup: the handout's pinned requirements (the CPU build of torch is enough).
set -eu
apt-get install -y python3 python3-pip >/dev/null
python3 -m pip install --extra-index-url https://download.pytorch.org/whl/cpu \\
    -r /autograder/source/handout/requirements.txt
"""


def _zip_folder(zf: zipfile.ZipFile, folder: Path, prefix: str) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            _zip_write(zf, f"{prefix}/{p.relative_to(folder).as_posix()}", p.read_bytes())


def _zip_write(zf: zipfile.ZipFile, name: str, data: bytes, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))  # fixed: reproducible zips
    info.external_attr = (0o755 if executable else 0o644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)


def autograder_zip(assignment: Assignment, out: Path, scratch: Path) -> Path:
    """Gradescope autograder: setup.sh, run_autograder and the handout with every check."""
    folder = build(assignment, scratch, full_checks=True)
    submit = json.loads((folder / "handout.json").read_text())["submit"]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{assignment.name}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        files = " ".join(s.rstrip("/") for s in submit)
        _zip_write(zf, "run_autograder", RUN_AUTOGRADER.format(files=files).encode(), True)
        _zip_write(zf, "setup.sh", SETUP.encode(), True)
        _zip_folder(zf, folder, "handout")
    shutil.rmtree(folder)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder to write one handout folder per assignment into")
    ap.add_argument("--only", nargs="+", choices=sorted(BY_NAME), help="these assignments only")
    ap.add_argument("--release", action="store_true",
                    help="after the a1-a3 deadlines: the reference modules in place of the stubs")
    ap.add_argument("--solutions", action="store_true",
                    help="every reference solution in place, a4's results included")
    ap.add_argument("--autograder", type=Path, help="also write Gradescope autograder zips here")
    args = ap.parse_args(argv)
    chosen = [BY_NAME[n] for n in args.only] if args.only else list(ASSIGNMENTS)
    try:
        for a in chosen:
            folder = build(a, args.out, solutions=args.solutions, release=args.release)
            print(f"wrote {folder}/ ({a.title})")
            if args.autograder:
                path = autograder_zip(a, args.autograder, args.autograder / ".build")
                print(f"wrote {path}")
        if args.autograder:
            shutil.rmtree(args.autograder / ".build", ignore_errors=True)
    except AssignmentError as e:
        raise SystemExit(f"course/make.py: {e}") from None


if __name__ == "__main__":
    main()
