"""The course kit (course/, issues 12 and 24): generated handouts, the autograder, the seeded bugs.

For every assignment: the untouched stubs score 0 of N, the reference solutions N of N, every
seeded bug loses points, the handout runs from a copy far from the repository, and two builds are
byte-identical. The grader grades the handout's files only: a reference module already imported or
on sys.path cannot stand in for a student's. No handout holds an answer of a1-a3 before --release,
every module of a handout imports, and every section its docstrings point to is there.
"""

import ast
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "course"))

# course/ holds scripts, not a package: import them from their folder
import bugs
import grade
import make
import sources

NAMES = [a.name for a in make.ASSIGNMENTS]


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> Path:
    """Every handout as students get it."""
    out = tmp_path_factory.mktemp("hw")
    for a in make.ASSIGNMENTS:
        make.build(a, out)
    return out


def max_score(results: dict) -> float:
    return sum(t["max_score"] for t in results["tests"])


def test_make_and_grade_commands(tmp_path, capsys):
    """The README's commands: make writes one folder per assignment, grade writes results.json in
    Gradescope's format and prints the total: 0 points on the stubs, full points on the reference.
    """
    hw = tmp_path / "hw"
    def run(*args: str) -> str:
        return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, check=True).stdout

    run("course/make.py", str(hw))
    assert sorted(p.name for p in hw.iterdir()) == sorted(NAMES)
    out = run("course/grade.py", str(hw / "a1_flow"))
    results = json.loads((hw / "a1_flow" / "results.json").read_text())
    assert results["score"] == 0 and f"Total: 0 / {max_score(results):g} points" in out
    for t in results["tests"]:
        assert t["score"] == 0 and t["max_score"] > 0 and t["visibility"] in grade.VISIBILITIES
        assert {"name", "number", "output"} <= set(t) and "not implemented" in t["output"]
    shutil.copyfile(ROOT / "flow.py", hw / "a1_flow" / "flow.py")
    grade.main([str(hw / "a1_flow")])  # the same command in this process (one torch import less)
    out = capsys.readouterr().out
    results = json.loads((hw / "a1_flow" / "results.json").read_text())
    assert results["score"] == max_score(results) > 0
    assert f"Total: {results['score']:g} / {results['score']:g} points" in out


@pytest.mark.parametrize("name", NAMES)
def test_stubs_score_zero(stubs, name):
    results = grade.grade(stubs / name)
    failing = [t["name"] for t in results["tests"] if t["score"] > 0]
    assert results["score"] == 0, f"tests passed by the untouched handout: {failing}"
    assert len(results["tests"]) >= 6


@pytest.mark.parametrize("name", NAMES)
def test_reference_scores_full_and_every_seeded_bug_is_caught(tmp_path, name):
    reference, caught = bugs.grade_bugs(name, tmp_path)
    unpassed = [t["name"] + ": " + t["output"] for t in reference["tests"]
                if t["score"] < t["max_score"]]
    assert reference["score"] == max_score(reference), unpassed
    assert len(caught) >= 10
    missed = [c.bug.name for c in caught if c.score >= c.max_score]
    assert not missed, f"seeded bugs that get full marks: {missed}"


def test_failure_messages_name_the_property(tmp_path):
    """A wrong W' fails with Theorem 3.1 in words, not two tensors."""
    folder = bugs.solution_handout("a1_flow", tmp_path)
    bug = next(b for b in bugs.BUGS if b.name == "h-ratio-upside-down")
    (folder / "flow.py").write_text(bugs.patched_source(bug))
    results = grade.grade(folder)
    theorem = next(t for t in results["tests"] if "Theorem 3.1" in t["name"])
    assert theorem["score"] == 0
    assert "of W' sums to" in theorem["output"] and "Theorem 3.1 says 1" in theorem["output"]


def test_reference_module_cannot_leak_in(stubs, tmp_path):
    import flow  # the reference module: imported and on sys.path, as in this test process

    results = grade.grade(stubs / "a1_flow")
    assert results["score"] == 0  # graded the handout's stubs, not the reference
    assert sys.modules["flow"] is flow  # and put the reference back afterwards
    folder = tmp_path / "a1_flow"
    shutil.copytree(stubs / "a1_flow", folder)
    (folder / "flow.py").unlink()
    results = grade.grade(folder)
    assert results["score"] == 0
    assert all("flow.py is missing" in t["output"] for t in results["tests"])
    (folder / "flow.py").write_text("def influence_graph(attn:\n")
    results = grade.grade(folder)
    assert all("importing flow.py failed: SyntaxError" in t["output"] for t in results["tests"])
    assert sys.modules["flow"] is flow


def test_grading_leaves_the_reference_rollout_working(stubs):
    """Grading a3 imports a second rollout.py whose stub registers in transformers' global
    AttentionInterface: the reference capture must still use its own function afterwards."""
    from transformers import AutoModelForCausalLM

    import capture

    grade.grade(stubs / "a3_capture")
    model = AutoModelForCausalLM.from_pretrained(ROOT / "tiny" / "qwen3-arith",
                                                 attn_implementation="sdpa").eval()
    ids = torch.tensor([[5, 9, 12, 7, 30]])
    attn = capture.capture_attention(model, ids, torch.ones_like(ids))
    assert torch.allclose(attn.sum(-1), torch.ones(1, 5))


def test_timeouts_and_crashes_are_reported(stubs, tmp_path):
    checks = tmp_path / "checks.py"
    checks.write_text(
        "from grade import check\n\n"
        "@check(1, timeout=0.5)\ndef test_loops(flow):\n    while True:\n        pass\n\n"
        "@check(1)\ndef test_crashes(flow):\n    flow.top_level_name_that_is_not_there\n"
    )
    results = grade.grade(stubs / "a1_flow", checks)
    loops, crashes = results["tests"]
    assert loops["score"] == 0 and "longer than 0.5 s" in loops["output"]
    assert crashes["score"] == 0 and crashes["output"].startswith("AttributeError")


def test_handout_files(stubs):
    """Stubs keep signatures and docstrings; what gives an answer away is not there; the students'
    checks hold no hidden test; requirements are the repository's pins."""
    for a in make.ASSIGNMENTS:
        folder = stubs / a.name
        manifest = json.loads((folder / "handout.json").read_text())
        assert manifest["student_files"] == sorted(f"{m.name}.py" for m in a.modules)
        for m in a.modules:
            ref = {n.name: n for n in ast.parse((ROOT / f"{m.name}.py").read_text()).body
                   if isinstance(n, ast.FunctionDef)}
            student = {n.name: n for n in ast.parse((folder / f"{m.name}.py").read_text()).body
                       if isinstance(n, ast.FunctionDef)}
            for name in m.stubs:
                s, r = student[name], ref[name]
                assert ast.dump(s.args) == ast.dump(r.args)
                none = ast.Constant(None)
                assert ast.unparse(s.returns or none) == ast.unparse(r.returns or none)
                assert ast.get_docstring(s) == ast.get_docstring(r)
                assert len(s.body) == 2 and isinstance(s.body[1], ast.Raise)
            if m.keep != sources.ALL:
                # no fused path, no helper that solves it
                assert set(student) == set(m.stubs) | set(m.keep)
        shipped = (folder / "checks" / f"{a.name}.py").read_text()
        full = (ROOT / "course" / "checks" / f"{a.name}.py").read_text()
        assert all(c.visibility == "visible" for c in sources.check_infos(shipped))
        assert len(sources.check_infos(shipped)) < len(sources.check_infos(full))
        pins = set((ROOT / "requirements.txt").read_text().splitlines())
        assert set((folder / "requirements.txt").read_text().splitlines()) <= pins
    assert "def slow_flow" not in (stubs / "a1_flow" / "checks" / "a1_flow.py").read_text()
    assert (stubs / "a1_flow" / "requirements.txt").read_text() == "torch==2.13.0\n"


def test_missing_functions_fail_loudly():
    source = (ROOT / "flow.py").read_text()
    with pytest.raises(sources.AssignmentError, match="flow.py: no top-level function 'potentail'"):
        sources.rewrite(source, "flow", ("influence_graph", "potentail"), ())
    with pytest.raises(sources.AssignmentError, match="no top-level name 'gone'"):
        sources.rewrite(source, "flow", ("influence_graph",), ("gone",))
    with pytest.raises(sources.AssignmentError, match="'f' has no docstring"):
        sources.rewrite("def f(x):\n    return x\n", "m", ("f",), ())
    bug = bugs.Bug("a1_flow", "x", "x", "flow", "potential", (("no such text", ""),))
    with pytest.raises(sources.AssignmentError, match="occurs 0 times in flow.potential"):
        bugs.patched_source(bug)


def test_rewrite_keeps_what_is_used():
    source = (
        '"""Doc."""\n\nimport math\nimport os\n\nLIMIT = 3\n\n\n'
        "def helper(x):\n    return math.sqrt(x)\n\n\n"
        '# about f\ndef f(x: int, n: int = LIMIT) -> float:\n    """Spec of f."""\n'
        "    return helper(x) * n\n\n\n"
        "def unrelated():\n    return os.getcwd()\n"
    )
    out = sources.rewrite(source, "m", ("f",), ())
    assert out == (
        '"""Doc."""\n\nLIMIT = 3\n\n\n'
        '# about f\ndef f(x: int, n: int = LIMIT) -> float:\n    """Spec of f."""\n'
        '    raise NotImplementedError("m.f: write it (its docstring is the specification)")\n'
    )
    kept = sources.rewrite(source, "m", ("f",), ("helper",))
    assert "def helper" in kept and "import math" in kept and "import os" not in kept


def test_make_is_deterministic(stubs, tmp_path):
    again = tmp_path / "again"
    for a in make.ASSIGNMENTS:
        make.build(a, again)

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes()
                for p in sorted(root.rglob("*")) if p.is_file() and p.name != "results.json"}

    assert files(again) == files(stubs)
    zips = [make.autograder_zip(make.BY_NAME["a1_flow"], tmp_path / z, tmp_path / f"b{z}")
            for z in ("z1", "z2")]
    assert zips[0].read_bytes() == zips[1].read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_handout_runs_without_the_repository(tmp_path, name):
    """A solution handout copied far from the repository passes its own visible checks with
    `python grade.py .` (isolated mode: no PYTHONPATH, no current directory on sys.path), and
    what its files import is in it or in its requirements.txt."""
    built = bugs.solution_handout(name, tmp_path / "build")
    folder = shutil.copytree(built, tmp_path / "far" / name)
    files = [*folder.glob("*.py"), *folder.glob("checks/*.py")]
    _, third = sources.dependencies(files, root=folder)
    listed = set((folder / "requirements.txt").read_text().splitlines())
    assert set(sources.requirements(third)) <= listed  # a missing local module would show up here
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-I", *args], cwd=folder, capture_output=True,
                              text=True, timeout=300, env=env, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    done = run("grade.py", ".")
    results = json.loads((folder / "results.json").read_text())
    assert results["score"] == max_score(results) > 0, done.stdout
    scripts = [Path(s).stem for s in make.BY_NAME[name].entry_points]
    if scripts:  # what students run imports (`python -I` puts no folder on sys.path for -c)
        run("-c", f"import sys; sys.path.insert(0, '.'); import {', '.join(scripts)}")


def _body(source: str, function: str) -> str:
    """The body of a top-level function (after its docstring), as written."""
    node = next(n for n in ast.parse(source).body
                if isinstance(n, ast.FunctionDef) and n.name == function)
    return "\n".join(source.splitlines()[node.body[1].lineno - 1 : node.end_lineno])


def test_no_answer_before_release(stubs, tmp_path):
    """No handout ships the body of a function that a1-a3 assign (nor of the helpers a4 empties),
    in any file; `--release` puts the reference modules in, without a4's results."""
    assigned = {(m.name, f) for a in make.ASSIGNMENTS for m in a.modules for f in m.stubs}
    bodies = {(mod, f): _body((ROOT / f"{mod}.py").read_text(), f) for mod, f in assigned}
    for a in make.ASSIGNMENTS:
        for py in (stubs / a.name).rglob("*.py"):
            text = py.read_text()
            leaked = [f"{mod}.{f}" for (mod, f), body in bodies.items() if body in text]
            assert not leaked, f"{a.name}/{py.relative_to(stubs / a.name)} holds {leaked}"
    a4 = make.BY_NAME["a4_experiment"]
    released = make.build(a4, tmp_path, release=True)
    for m in a4.modules:
        assert (released / f"{m.name}.py").read_text() == (ROOT / f"{m.name}.py").read_text()
    assert not (released / "report.json").exists() and not (released / "runs").exists()
    a4_stubs = {m.name: set(m.stubs) for m in a4.modules}
    for a in make.ASSIGNMENTS[:3]:  # a4 empties every function a1-a3 assign ...
        for m in a.modules:
            assert set(m.stubs) <= a4_stubs.get(m.name, set())
    for m in a4.modules:  # ... and nothing else: pasting their bodies back gives the reference
        text = (stubs / a4.name / f"{m.name}.py").read_text()
        for f in m.stubs:
            stub = sources.STUB.format(module=m.name, function=f)
            line = next(x for x in text.splitlines() if x.strip() == stub)
            text = text.replace(line + "\n", bodies[m.name, f] + "\n")
        assert text == (ROOT / f"{m.name}.py").read_text()


def test_handout_modules_import_and_hold_the_tools_of_the_reference(stubs):
    """Every module of every untouched handout imports; a stub module binds every imported name
    the reference body of its stubs uses (a2's flow.py once lacked `import torch`)."""
    for a in make.ASSIGNMENTS:
        folder = stubs / a.name
        files = sorted(p.name for p in folder.glob("*.py") if p.stem not in grade.GRADER_MODULES)
        with grade.isolated(folder, files) as (modules, errors):
            assert not errors, errors
            for package in folder.glob("*/__init__.py"):  # analysis/ in a4
                imported = importlib.import_module(package.parent.name)
                assert Path(imported.__file__).parent == package.parent
            for m in a.modules:
                ref = ast.parse((ROOT / f"{m.name}.py").read_text())
                imported = {(x.asname or x.name).split(".")[0] for node in ref.body
                            if isinstance(node, (ast.Import, ast.ImportFrom)) for x in node.names}
                for f in m.stubs:
                    node = next(n for n in ref.body if getattr(n, "name", None) == f)
                    needed = sources.referenced_names([node]) & imported
                    missing = sorted(n for n in needed if not hasattr(modules[m.name], n))
                    assert not missing, f"{a.name}/{m.name}.py lacks {missing} (used by {f})"


def test_docstring_pointers_resolve(stubs):
    """Every document and section that a docstring of a handout's files points to is in it
    (the a1 handout has the "Conventions" section flow.py's docstring names)."""
    seen = 0
    for a in make.ASSIGNMENTS:
        folder = stubs / a.name
        for py in folder.rglob("*.py"):
            for doc, section in sources.doc_pointers(py.read_text()):
                seen += 1
                assert (folder / doc).is_file(), f"{a.name}/{py.name} points to missing {doc}"
                if section:
                    assert sources.has_section((folder / doc).read_text(), section), (doc, section)
    assert seen >= 4  # flow.py's Conventions in a1, a2 and a4, docs/credit.md in a4, ...
    assert "## Conventions" in (stubs / "a1_flow" / "README.md").read_text()
