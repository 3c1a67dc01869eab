"""What course/make.py reads from Python sources, with ast and without importing them.

- the stub rewrite (`rewrite`): a reference module with the bodies of the assigned functions
  replaced by `raise NotImplementedError`, and (unless the whole module stays) only what the stubs
  and the listed names need;
- what a handout must carry (`dependencies`, `requirements`): the local modules a file imports,
  followed recursively, the documents their docstrings point to, and the pinned third-party
  requirements;
- the tests of a checks file (`check_infos`, `visible_checks`): the @check functions, their points
  and visibility.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALL = "*"  # keep: every top-level definition of the module

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
    signatures refer to (transitively), the imports that they or the stubs' original bodies use,
    the module docstring and `from __future__` imports; `__all__` is cut to what is left. Raises
    AssignmentError naming a listed function that is missing, is not a function, or has no
    docstring.
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
    # an import stays if anything kept uses it, the stubs' bodies included: the student writes with
    # the tools the reference used (`torch`, `math`), though no helper of the reference stays
    used = referenced_names(kept)

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


def python_files(path: Path) -> list[Path]:
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
        for py in python_files(path):
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


_DOC_FILE = re.compile(r"\b((?:[\w-]+/)+[\w.-]+\.md)\b")  # docs/credit.md, configs/models/README.md
_SECTION = re.compile(r"""\b([\w/.-]*README|[\w/.-]+\.md)'s "([^"]+)" section""")


def doc_pointers(source: str) -> list[tuple[str, str | None]]:
    """(document, section or None) for every document the docstrings of a module point to: a path
    such as `docs/credit.md`, or `the README's "Conventions" section` (README.md, Conventions)."""
    docs = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = " ".join((ast.get_docstring(node) or "").split())
            docs += [(path, None) for path in _DOC_FILE.findall(text)]
            docs += [(f"{doc}.md" if doc.endswith("README") else doc, section)
                     for doc, section in _SECTION.findall(text)]
    return sorted(set(docs), key=lambda d: (d[0], d[1] or ""))


def has_section(markdown: str, section: str) -> bool:
    """Whether a markdown text has a heading that contains `section`."""
    return any(line.startswith("#") and section in line for line in markdown.splitlines())


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
