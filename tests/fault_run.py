"""train.main in forked children of one process that imported train.py once, killed on request.

tests/test_faults.py kills runs with SIGKILL at chosen points. A fresh interpreter per run would
spend ~10 s of CPU importing torch and transformers; this server imports them once and forks a child
per job (it never runs torch itself, so forking is safe, as in a forkserver).

    python tests/fault_run.py     # one JSON job per line on stdin, one JSON result per line out

A job: {"argv": [...], "log": PATH, "kill": KILL or null, "timeout": seconds, "background": bool}.
The child runs train.main(argv) as train.py does (guards.run: one-line errors), its stdout and
stderr going to PATH, and SIGKILLs itself where KILL says:
    {"at": "write", "file": NAME}       halfway through its first write of a file whose name holds
                                        NAME (half the text is written and flushed, then the kill)
    {"at": "rename", "to": NAME}        just before an os.replace onto a path named NAME
    {"at": "rmtree", "name": NAME}      after removing one file of a folder whose name holds NAME
    {"at": "metrics", "step": S}        halfway through appending step S's line to metrics.jsonl
The result is {"rc": the exit status, -9 when killed, null past the timeout}; a background job
answers {"pid": PID} at once, and {"wait": PID, "timeout": seconds} waits for it.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import guards
import metrics
import train


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _HalfWrite:
    """A file whose first write stops halfway, as a kill -9 in the middle of it would."""

    def __init__(self, f):
        self._f = f

    def write(self, text):
        self._f.write(text[: len(text) // 2])
        self._f.flush()
        _die()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def install(kill: dict) -> None:
    """Patch the call that KILL names (in this child only)."""
    if kill["at"] == "write":
        real_open = io.open

        def open_(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if any(m in mode for m in "wa") and kill["file"] in Path(str(file)).name:
                return _HalfWrite(f)
            return f

        io.open = builtins.open = open_
    elif kill["at"] == "rename":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if Path(dst).name == kill["to"]:
                _die()
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    elif kill["at"] == "rmtree":
        real_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            if kill["name"] in Path(path).name:
                next(p for p in Path(path).rglob("*") if p.is_file()).unlink()
                _die()
            return real_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree
    elif kill["at"] == "metrics":
        real_write = metrics.MetricsLog.write

        def write(self, record):
            if record["step"] == kill["step"]:
                with open(self.path, "a") as f:
                    line = json.dumps(record) + "\n"
                    f.write(line[: len(line) // 2])
                _die()
            return real_write(self, record)

        metrics.MetricsLog.write = write
    else:
        raise ValueError(f"unknown kill point {kill}")


def child(job: dict) -> None:
    """The forked child: train.main(argv) with its output in job["log"]; never returns."""
    code = 0
    try:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True)
        if job.get("kill"):
            install(job["kill"])
        guards.run("train.py", train.main, job["argv"])  # what a user sees: one-line errors
    except SystemExit as e:  # as the interpreter: a message is printed, a number is the status
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    except BaseException:  # noqa: BLE001 (any crash: its traceback goes to the log)
        traceback.print_exc()
        code = 2
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def wait(pid: int, timeout: float) -> int | None:
    """The exit status of child pid (negative: killed by that signal); None after SIGKILLing it
    past `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.05)


def serve() -> None:
    for line in sys.stdin:
        job = json.loads(line)
        if "wait" in job:
            answer = {"rc": wait(job["wait"], job["timeout"])}
        else:
            pid = os.fork()
            if pid == 0:
                child(job)
            if job.get("background"):
                answer = {"pid": pid}
            else:
                answer = {"rc": wait(pid, job["timeout"])}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve()
