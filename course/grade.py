"""Autograder of the course handouts: per-test points and visibility, Gradescope's results.json.

    python course/grade.py hw/a1_flow     # every check (course/checks/a1_flow.py, hidden ones too)
    python grade.py .                     # inside a handout: the visible checks it ships with

Writes HANDOUT/results.json (or --out) in Gradescope's format: top-level `score`, `execution_time`,
`output` and `tests`, each test with `name`, `number`, `score`, `max_score`, `visibility` and
`output` (what property broke). Prints the point table and the total.

The checks run against the student's files and nothing else: the handout folder goes first on
sys.path, every module of the same name already imported (the reference `flow`, say) is set aside
for the duration and put back afterwards, and a student module that was not loaded from the handout
fails every test instead of being graded. A check is a function of a checks file decorated with
@check(points, visibility=...); its parameters name what it needs: a student module (`flow`,
`grpo`, `capture`) or `handout` (the folder, a Path). Needs only the standard library; the checks
bring their own imports (torch, transformers).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")  # Gradescope's
GRADER_MODULES = ("grade", "checks")  # names in a handout that are the grader's, not the student's


@dataclass(frozen=True)
class Check:
    points: float
    visibility: str = "visible"
    timeout: float = 60.0


def check(points: float, visibility: str = "visible", timeout: float = 60.0) -> Callable:
    """Mark a function of a checks file as a test worth `points` (visibility: Gradescope's)."""
    if visibility not in VISIBILITIES:
        raise ValueError(f"visibility must be one of {VISIBILITIES}, got {visibility!r}")
    if not points > 0:
        raise ValueError(f"points must be > 0, got {points}")

    def mark(fn: Callable) -> Callable:
        fn.check = Check(float(points), visibility, float(timeout))
        return fn

    return mark


class Failure(AssertionError):
    """A property the student's code breaks; the message is what the student reads."""


def expect(ok: bool, message: str) -> None:
    """Fail with `message` (say which property broke, with numbers) unless ok."""
    if not ok:
        raise Failure(message)


def fmt(x: float) -> str:
    """A number for a failure message: 4 significant digits."""
    return f"{float(x):.4g}"


def fmt_pair(actual: float, expected: float) -> tuple[str, str]:
    """Two numbers with as many digits as it takes to tell them apart (4 to 17)."""
    a, e = float(actual), float(expected)
    for digits in (4, 6, 9, 12, 17):
        if f"{a:.{digits}g}" != f"{e:.{digits}g}":
            break
    return f"{a:.{digits}g}", f"{e:.{digits}g}"


def relative_error(actual: float, expected: float) -> float:
    """|actual - expected| / |expected| (the absolute error where expected is 0)."""
    a, e = float(actual), float(expected)
    return abs(a - e) / abs(e) if e != 0 else abs(a - e)


def expect_close(actual, expected, what: str, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Fail unless two tensors agree (shape, finiteness, values), naming the worst entry."""
    import torch  # the checks have torch; the grader itself does not need it

    expect(isinstance(actual, torch.Tensor),
           f"{what}: expected a tensor, got {type(actual).__name__}")
    expect(tuple(actual.shape) == tuple(expected.shape),
           f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    bad = ~torch.isfinite(a) & torch.isfinite(e)
    if bad.any():
        idx = tuple(bad.nonzero()[0].tolist())
        raise Failure(f"{what}: entry {idx} is {a[idx].item()} (NaN or inf), "
                      f"expected {fmt(e[idx])}")
    err = (a - e).abs() - (atol + rtol * e.abs())
    if (err > 0).any():
        idx = tuple(int(i) for i in torch.unravel_index(err.argmax(), a.shape))
        got, want = fmt_pair(a[idx], e[idx])
        rel = relative_error(a[idx], e[idx])
        raise Failure(f"{what}: entry {idx} is {got}, expected {want} (relative error {rel:.1e}; "
                      f"allowed: absolute {atol:g} + relative {rtol:g}; {int((err > 0).sum())} of "
                      f"{a.numel()} entries off)")


class _Timeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after `seconds` (SIGALRM; only in the main thread of a Unix process)."""
    main_thread = threading.current_thread() is threading.main_thread()
    if not hasattr(signal, "setitimer") or not main_thread:
        yield
        return

    def on_alarm(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------------------
# loading: the checks, and the student's modules from the handout only
# --------------------------------------------------------------------------------------------------


def read_manifest(handout: Path) -> dict:
    path = handout / "handout.json"
    if not path.is_file():
        raise SystemExit(f"{handout} is not a handout folder: it has no handout.json "
                         "(python course/make.py DIR writes one per assignment)")
    return json.loads(path.read_text())


def load_checks(path: Path) -> list[tuple[str, Callable, Check]]:
    """The @check functions of a checks file, in file order (a fresh module on every call)."""
    if not path.is_file():
        raise SystemExit(f"no checks file {path}")
    spec = importlib.util.spec_from_file_location(f"_checks_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("grade")
    sys.modules["grade"] = sys.modules[__name__]  # `from grade import check` means this module
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("grade", None)
        else:
            sys.modules["grade"] = saved
    tests = [(name, fn, fn.check) for name, fn in vars(module).items()
             if callable(fn) and isinstance(getattr(fn, "check", None), Check)]
    if not tests:
        raise SystemExit(f"{path} defines no @check tests")
    return tests


def _local_names(handout: Path, student: list[str]) -> set[str]:
    """Top-level module names the handout provides (its .py files and packages), and the
    students' (even when missing)."""
    names = {p.stem for p in handout.glob("*.py")} | {Path(s).stem for s in student}
    names |= {p.parent.name for p in handout.glob("*/__init__.py")}
    return names - set(GRADER_MODULES)


def _inside(path: str | None, folder: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(folder.resolve())


@contextmanager
def isolated(handout: Path, student: list[str], load: list[str] | None = None
             ) -> Iterator[tuple[dict[str, ModuleType], dict[str, str]]]:
    """Import the student modules `load` (default: all of `student`) from `handout` only, every
    local name of the handout set aside; restore sys.path and sys.modules afterwards.

    Yields (modules, errors): module name -> module, and module name -> why it could not be used.
    """
    names = _local_names(handout, student)

    def ours(mod_name: str) -> bool:
        return mod_name.split(".")[0] in names

    saved_modules = {k: v for k, v in sys.modules.items() if ours(k)}
    saved_path = list(sys.path)
    saved_bytecode = sys.dont_write_bytecode
    for k in saved_modules:
        del sys.modules[k]
    sys.path.insert(0, str(handout.resolve()))
    sys.dont_write_bytecode = True  # no __pycache__ in the handout, no stale bytecode between runs
    modules, errors = {}, {}
    try:
        for file in student if load is None else load:
            name = Path(file).stem
            if not (handout / file).is_file():
                errors[name] = f"{file} is missing from the handout folder"
                continue
            try:
                modules[name] = importlib.import_module(name)
            except Exception as e:  # noqa: BLE001  (a syntax error or crash: every test says so)
                errors[name] = f"importing {file} failed: {_describe(e, handout)}"
        for name, mod in modules.items():  # leak guard: a module from anywhere else is not graded
            if not _inside(getattr(mod, "__file__", None), handout):
                errors[name] = (f"{name} was imported from {mod.__file__}, not from the handout "
                                f"{handout}: refusing to grade it")
        yield {k: v for k, v in modules.items() if k not in errors}, errors
    finally:
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved_modules)
        sys.path[:] = saved_path
        sys.dont_write_bytecode = saved_bytecode


# --------------------------------------------------------------------------------------------------
# running the checks
# --------------------------------------------------------------------------------------------------


def _describe(e: BaseException, handout: Path) -> str:
    """One line: the exception and where in the student's files it was raised."""
    where = ""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if _inside(f.filename, handout)
              and Path(f.filename).parent.name != "checks"]
    if frames:
        f = frames[-1]
        where = f" (in {Path(f.filename).name} line {f.lineno}, in {f.name})"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}{where}"


def run_one(fn: Callable, spec: Check, fixtures: dict, errors: dict[str, str],
            handout: Path) -> tuple[float, str]:
    """(score, output) of one check."""
    params = list(inspect.signature(fn).parameters)
    blocked = [errors[p] for p in params if p in errors]
    if blocked:
        return 0.0, blocked[0]
    unknown = [p for p in params if p not in fixtures]
    if unknown:
        return 0.0, f"grader error: the check asks for {unknown}, which the handout lacks"
    try:
        with _time_limit(spec.timeout):
            fn(*(fixtures[p] for p in params))
    except _Timeout:
        return 0.0, f"took longer than {spec.timeout:g} s (the time limit of this test)"
    except NotImplementedError as e:
        return 0.0, f"not implemented yet: {e}" if str(e) else "not implemented yet"
    except AssertionError as e:
        return 0.0, str(e) or "a check failed: " + _describe(e, handout)
    except Exception as e:  # noqa: BLE001  (whatever the student code raises is a failed test)
        return 0.0, _describe(e, handout)
    return spec.points, "passed"


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the checks on one torch thread: their tensors are tiny, and on a busy machine idle
    threads spinning for work made the generate checks 20x slower (25 s instead of 1 s)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def grade(handout: Path, checks: Path | None = None) -> dict:
    """Run the checks of the handout's assignment on its files. Returns Gradescope's results dict.

    checks: the checks file (default: checks/<assignment>.py next to this grader).
    """
    handout = Path(handout)
    manifest = read_manifest(handout)
    tests = load_checks(checks or HERE / "checks" / f"{manifest['assignment']}.py")
    t0 = time.perf_counter()
    results = []
    asked = {p for _, fn, _ in tests for p in inspect.signature(fn).parameters}
    student = manifest["student_files"]
    load = [f for f in student if Path(f).stem in asked]  # a4's checks read results, not modules
    with isolated(handout, student, load) as (modules, errors), _one_thread():
        fixtures = {"handout": handout.resolve(), **modules}
        for number, (name, fn, spec) in enumerate(tests, 1):
            started = time.perf_counter()
            score, output = run_one(fn, spec, fixtures, errors, handout)
            doc = inspect.getdoc(fn) or name
            results.append({
                "name": doc.split("\n\n")[0].replace("\n", " "),
                "number": str(number),
                "score": score,
                "max_score": spec.points,
                "visibility": spec.visibility,
                "output": output,
                "execution_time": round(time.perf_counter() - started, 3),
            })
    total = sum(r["score"] for r in results)
    possible = sum(r["max_score"] for r in results)
    return {
        "score": total,
        "execution_time": round(time.perf_counter() - t0, 3),
        "output": f"{manifest['assignment']}: {total:g} / {possible:g} points",
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": results,
    }


def table(results: dict) -> str:
    """The point table a person reads: one line per test, the failure message under a failed one."""
    lines = []
    for r in results["tests"]:
        mark = "ok  " if r["score"] == r["max_score"] else "FAIL"
        score = f"{r['score']:4g}/{r['max_score']:<4g}"
        lines.append(f"{mark} {score} {r['visibility']:<14} {r['name']}")
        if r["score"] != r["max_score"]:
            lines.append(f"{'':>26}{r['output']}")
    possible = sum(r["max_score"] for r in results["tests"])
    hidden = sum(r["max_score"] for r in results["tests"] if r["visibility"] != "visible")
    note = f" ({hidden:g} in tests hidden from students until the deadline)" if hidden else ""
    lines.append(f"Total: {results['score']:g} / {possible:g} points{note} "
                 f"[{results['execution_time']:.1f} s]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("handout", type=Path, help="a handout folder written by course/make.py")
    ap.add_argument("--out", type=Path, help="results.json path (default: HANDOUT/results.json)")
    ap.add_argument("--checks", type=Path,
                    help="checks file (default: checks/<assignment>.py next to this grader)")
    args = ap.parse_args(argv)
    results = grade(args.handout, args.checks)
    out = args.out or args.handout / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    sys.modules.setdefault("grade", sys.modules[__name__])
    main()
