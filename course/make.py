"""Generate the course handouts from the reference modules (issue 12).

    python course/make.py hw                  # one folder per assignment under hw/
    python course/make.py hw --solutions      # the same with the reference solutions in place
    python course/make.py hw --only a1_flow   # some assignments only
    python course/make.py hw --autograder zips  # also one Gradescope autograder zip per assignment

One source of truth: a student file is the reference module of the same name, rewritten with
Python's `ast`: the bodies of the assigned functions become `raise NotImplementedError(...)`
(signature and docstring kept: the docstring is the specification), and what would give the answer
away (helpers and fused paths that compute the same thing) is dropped. Which functions, and what
else stays, is the `ASSIGNMENTS` table below; a listed function or name that the module no longer
has is an error that names it. Everything else a handout needs is copied as it is: the local
modules the reference modules import (followed recursively), listed data (the shipped tiny model),
the grader, the visible checks.

A handout folder:
    README.md             the handout (course/handouts/<name>.md, generated tables filled in)
    <module>.py           student files: the reference module's name, so copying it over scores full
    ...                   the other local modules and data the reference code imports or reads
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
import sys
import textwrap
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "course"
ALL = "*"  # keep: every top-level definition of the module


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
    solution: str | None = None  # a folder of course/ that --solutions copies in (besides modules)


ASSIGNMENTS: tuple[Assignment, ...] = (
    Assignment(
        name="a1_flow",
        title="The flow: eqs. (1)-(4), throughput, Theorem 3.1",
        modules=(Module("flow", ("influence_graph", "potential", "reweight", "forward_flow")),),
        submit=("answers.md",),
    ),
    Assignment(
        name="a2_credit",
        title="Credit and the surrogate: eqs. (6), (10), (5)/(11)",
        modules=(
            Module("flow", ("top_k_mask", "credit_weights")),
            Module("grpo", ("group_advantages", "policy_loss"),
                   keep=("_check_loss_inputs", "_loss_stats")),  # validation and statistics
        ),
        submit=("answers.md",),
    ),
    Assignment(
        name="a3_capture",
        title="Attention capture through transformers' AttentionInterface",
        modules=(Module("capture", ("add_head_mean",), keep=ALL), Module("rollout", (), keep=ALL)),
        data=("tiny/qwen3-arith",),
        submit=("answers.md",),
    ),
    Assignment(
        name="a4_experiment",
        title="An experiment: flow vs uniform credit over seeds, and the Table 1 intervention",
        entry_points=("train.py", "analyze.py"),
        data=("tiny/qwen3-arith",),
        submit=("report.json", "report.md", "runs/"),
        solution="solutions/a4_experiment",
    ),
)
BY_NAME = {a.name: a for a in ASSIGNMENTS}

STUB = ('raise NotImplementedError("{module}.{function}: write it '
        '(its docstring is the specification)")')


class AssignmentError(Exception):
    """The reference code no longer has what an assignment lists (or a handout cannot be built)."""


# --------------------------------------------------------------------------------------------------
# rewriting one module with ast
# --------------------------------------------------------------------------------------------------


def bound_names(node: ast.stmt) -> list[str]:
    """The module-level names a top-level statement defines (imports excluded)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _signature_parts(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.AST]:
    """What of a stubbed function survives: decorators, defaults, annotations (not the body)."""
    a = node.args
    parts: list[ast.AST] = [*node.decorator_list, *a.defaults, *(d for d in a.kw_defaults if d)]
    for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
        if arg is not None and arg.annotation is not None:
            parts.append(arg.annotation)
    if node.returns is not None:
        parts.append(node.returns)
    return parts


def referenced_names(nodes: Iterable[ast.AST]) -> set[str]:
    """Every identifier read in the nodes (an over-approximation of the globals they use)."""
    names = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                names.add(sub.id)
            annotations = [getattr(sub, "annotation", None), getattr(sub, "returns", None)]
            for ann in annotations:  # a string annotation ("Rollout") names a global too
                if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
                    names |= referenced_names([ast.parse(ann.value, mode="eval")])
    return names


def _docstring_end(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int | None:
    first = node.body[0]
    is_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    return first.end_lineno if is_doc and isinstance(first.value.value, str) else None


def _start(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno, *(d.lineno for d in decorators)])


def _comment_block_above(lines: list[str], start: int) -> int:
    """First line (1-based) of the comment paragraph that belongs to the statement at line `start`:
    the comment lines directly above it, or above one blank line unless they are a banner."""
    def is_comment(i: int) -> bool:  # 1-based
        return i >= 1 and lines[i - 1].startswith("#")

    above = start - 1
    if not is_comment(above) and not lines[above - 1].strip() and is_comment(above - 1):
        above -= 1
    first = above + 1
    while is_comment(first - 1):
        first -= 1
    block = lines[first - 1 : above]
    if not block or (above < start - 1 and any(line.startswith("# ---") for line in block)):
        return start
    return first


def _import_text(node: ast.Import | ast.ImportFrom, keep: list[ast.alias]) -> str:
    if isinstance(node, ast.Import):
        return ast.unparse(ast.Import(names=keep))
    return ast.unparse(ast.ImportFrom(module=node.module, names=keep, level=node.level))


def _all_text(names: list[str]) -> str:
    return "__all__ = [\n" + "".join(f'    "{n}",\n' for n in names) + "]"


def rewrite(source: str, module: str, stubs: Sequence[str], keep: str | Sequence[str] = ALL,
            message: str = STUB) -> str:
    """The source of `module` with the bodies of `stubs` replaced by `raise NotImplementedError`.

    Signatures, decorators, docstrings and comments above a function stay. keep=ALL keeps every
    other top-level statement; a sequence of names keeps those names, whatever they and the stubs'
    signatures refer to (transitively), the imports still used, the module docstring and
    `from __future__` imports; `__all__` is cut to what is left. Raises AssignmentError naming a
    listed function that is missing, is not a function, or has no docstring.
    """
    tree = ast.parse(source)
    lines = source.splitlines()
    top: dict[str, ast.stmt] = {}
    for node in tree.body:
        for name in bound_names(node):
            top[name] = node
    problems = []
    for name in stubs:
        node = top.get(name)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            problems.append(f"no top-level function {name!r}")
        elif _docstring_end(node) is None:
            problems.append(f"{name!r} has no docstring (it is the students' specification)")
    if keep != ALL:
        problems += [f"no top-level name {n!r} (listed in keep)" for n in keep if n not in top]
    if problems:
        raise AssignmentError(f"{module}.py: " + "; ".join(problems))

    if keep == ALL:
        kept = set(tree.body)
    else:
        kept, todo, seen = set(), [*stubs, *keep], set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            node = top[name]
            kept.add(node)
            parts = _signature_parts(node) if name in stubs else [node]
            todo += [n for n in referenced_names(parts) if n in top and n not in seen]
    stub_nodes = {top[name] for name in stubs}
    used = referenced_names(
        part for node in kept for part in (_signature_parts(node) if node in stub_nodes else [node])
    )

    # edits: (first line, last line, replacement lines), 1-based inclusive, applied bottom-up
    edits: list[tuple[int, int, list[str]]] = []
    for i, node in enumerate(tree.body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if keep == ALL:
                continue
            names = [a for a in node.names if (a.asname or a.name).split(".")[0] in used]
            if len(names) == len(node.names):
                continue
            new = [_import_text(node, names)] if names else []
            edits.append((node.lineno, node.end_lineno, new))
        elif node in stub_nodes:
            body_indent = " " * node.body[0].col_offset
            raise_line = body_indent + message.format(module=module, function=node.name)
            edits.append((_docstring_end(node) + 1, node.end_lineno, [raise_line]))
        elif bound_names(node) == ["__all__"] and keep != ALL:
            names = [n for n in ast.literal_eval(node.value) if n in top and top[n] in kept]
            edits.append((node.lineno, node.end_lineno, [_all_text(names)]))
        elif node not in kept:
            edits.append((_comment_block_above(lines, _start(node)), node.end_lineno, []))
    for first, last, new in sorted(edits, reverse=True):
        blank_around = 1 < first and last < len(lines) and not lines[first - 2].strip()
        if not new and blank_around and not lines[last].strip():
            last += 1  # a deleted statement takes one of the blank lines around it along
        lines[first - 1 : last] = new
    text = re.sub(r"\n{3,}(?=\S)", "\n\n\n", "\n".join(lines).rstrip("\n") + "\n")
    text = _drop_empty_banners(text)
    compile(text, f"{module}.py", "exec")  # the rewrite must stay valid Python
    return text


_BANNER = re.compile(r"^# -{20,}\n(?:# .*\n)*# -{20,}\n", re.MULTILINE)


def _drop_empty_banners(text: str) -> str:
    """Remove a section banner (# ---- / # title / # ----) with nothing under it."""
    while True:
        matches = list(_BANNER.finditer(text))
        for m, nxt in zip(matches, [*matches[1:], None]):
            end = nxt.start() if nxt else len(text)
            if not text[m.end() : end].strip():
                text = (text[: m.start()] + text[end:]).rstrip("\n") + "\n"
                text = re.sub(r"\n{3,}(?=\S)", "\n\n\n", text)
                break
        else:
            return text


# --------------------------------------------------------------------------------------------------
# what a handout must carry: local imports, third-party requirements
# --------------------------------------------------------------------------------------------------


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module name, imported at module level outside try) for every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for n in ast.walk(t)}
    at_top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        required = id(node) in at_top and id(node) not in guarded
        found += [(name.split(".")[0], required) for name in names]
    return found


def _local(name: str, root: Path) -> Path | None:
    """The file or package folder of `root` that a top-level import name refers to, if any."""
    if (root / f"{name}.py").is_file():
        return root / f"{name}.py"
    if (root / name / "__init__.py").is_file():
        return root / name
    return None


def _python_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)


def dependencies(start: Iterable[Path], root: Path = ROOT) -> tuple[list[Path], dict[str, bool]]:
    """Files/packages of `root` reachable by imports from `start` (themselves included), and the
    other non-standard top-level names they import, mapped to whether some import is required."""
    todo, local, third = list(start), set(), {}
    while todo:
        path = todo.pop()
        if path in local:
            continue
        local.add(path)
        for py in _python_files(path):
            for name, required in _imports(py):
                target = _local(name, root)
                if target is not None:
                    todo.append(target)
                elif name not in sys.stdlib_module_names:
                    third[name] = third.get(name, False) or required
    return sorted(local), third


def _pinned() -> dict[str, str]:
    """import name -> the requirement line of the repository's requirements.txt."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            pip_name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]
            pins[pip_name.lower().replace("-", "_")] = line
    return pins


PROVIDED_BY = {"tokenizers": "transformers", "safetensors": "transformers"}  # installed with it


def requirements(third: dict[str, bool]) -> list[str]:
    """Requirement lines (as pinned in requirements.txt) for the imported third-party modules.

    An optional import (inside a function or try) that requirements.txt does not list is left out
    (e.g. tensorboard, datasets); a required one that it does not list is an error.
    """
    pins, lines, missing = _pinned(), set(), []
    for name, required in sorted(third.items()):
        name = PROVIDED_BY.get(name, name)
        if name in pins:
            lines.add(pins[name])
        elif required:
            missing.append(name)
    if missing:
        raise AssignmentError(f"imported but not in requirements.txt: {', '.join(missing)}")
    return sorted(lines, key=str.lower)


# --------------------------------------------------------------------------------------------------
# the checks: tests and points, read with ast (no import, no torch)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckInfo:
    name: str
    points: float
    visibility: str
    doc: str


def check_infos(source: str) -> list[CheckInfo]:
    """The tests of a checks file in order: the functions decorated with @check(points, ...)."""
    infos = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            if isinstance(dec, ast.Call) and getattr(dec.func, "id", None) == "check":
                kw = {k.arg: ast.literal_eval(k.value) for k in dec.keywords}
                points = ast.literal_eval(dec.args[0]) if dec.args else kw["points"]
                doc = (ast.get_docstring(node) or node.name).split("\n\n")[0].replace("\n", " ")
                infos.append(CheckInfo(node.name, points, kw.get("visibility", "visible"), doc))
    return infos


def visible_checks(source: str) -> str:
    """The checks file students get: the visible tests and what they use, nothing else."""
    visible = [c.name for c in check_infos(source) if c.visibility == "visible"]
    return rewrite(source, "checks", stubs=(), keep=visible)


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


def build(assignment: Assignment, out: Path, solutions: bool = False,
          full_checks: bool = False) -> Path:
    """Write the handout of `assignment` into out/<name> (replaced if it exists); returns it.

    solutions: the reference modules (and the solution folder) in place of the stubs.
    full_checks: ship every check, hidden ones included (the Gradescope autograder).
    """
    folder = out / assignment.name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    sources = {m.name: (ROOT / f"{m.name}.py").read_text(encoding="utf-8")
               for m in assignment.modules}
    for m in assignment.modules:
        text = sources[m.name] if solutions else rewrite(sources[m.name], m.name, m.stubs, m.keep)
        (folder / f"{m.name}.py").write_text(text, encoding="utf-8")

    # what the reference modules and entry points need (the full reference module, so that copying
    # it over a student file works)
    start = [ROOT / f"{m.name}.py" for m in assignment.modules]
    start += [ROOT / e for e in assignment.entry_points]
    local, third = dependencies(start)
    student = {f"{m.name}.py" for m in assignment.modules}
    for path in local:
        if path.name not in student:
            _copy(path, folder / path.relative_to(ROOT))
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
        "submit": sorted(student) + list(assignment.submit),
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
    ap.add_argument("--solutions", action="store_true", help="the reference solutions, no stubs")
    ap.add_argument("--autograder", type=Path, help="also write Gradescope autograder zips here")
    args = ap.parse_args(argv)
    chosen = [BY_NAME[n] for n in args.only] if args.only else list(ASSIGNMENTS)
    try:
        for a in chosen:
            folder = build(a, args.out, solutions=args.solutions)
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
