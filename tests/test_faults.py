"""Runs under faults: kill -9 at each write, truncated and damaged files, changed flags, two runs on
one folder, bad flags and bad input (issue 14).

A kill or a damaged file must lose nothing that was saved before it, and the resumed run must end
with the uninterrupted run's numbers (metrics, final weights, `before -> after`), or stop with a
message that names the bad file. Runs are tiny (4 prompts x 4 samples, 3 steps) and go through
tests/fault_run.py, which forks each from one process that imported train.py once.
"""

import dataclasses
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import checkpoints
import config
import data
import distributed
import eval as eval_py
import flow
import rewards
import runs
import train

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1")
TIMEOUT = 300  # seconds for one run: a hang fails instead of stalling CI
# 4 prompts x 4 samples, every group kept, 8 held-out problems; lr 1e-3 moves the tiny model enough
# that held-out accuracy differs between steps 0, 2 and 3, so a wrong "before" cannot pass.
TINY = ["--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "40",
        "--eval-limit", "8", "--min-difficulty", "0", "--max-difficulty", "1", "--lr", "1e-3",
        "--steps", "3", "--save-every", "1", "--eval-every", "2", "--seed", "1"]
# seed 1: held-out accuracy 0.625 -> 0.375 -> 0.25 at steps 0, 2, 3, so a wrong "before" shows
# (seed 0 stays at 0.625 since the synthetic data is drawn in chunks of 100 steps)


@dataclass
class Done:
    rc: int | None  # -9: killed; None: past the timeout
    output: str


class Runner:
    """Jobs for tests/fault_run.py: train.main(argv) in a forked child, killed where asked."""

    def __init__(self, logs: Path):
        self.logs, self.count = logs, 0
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fault_run.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=ENV, cwd=ROOT)

    def _ask(self, job: dict, timeout: float) -> dict:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout + 60)
        assert ready, "tests/fault_run.py did not answer"
        return json.loads(self.proc.stdout.readline())

    def _log(self) -> Path:
        self.count += 1
        return self.logs / f"run-{self.count}.log"

    def run(self, out: Path, *args: str, kill: dict | None = None) -> Done:
        log = self._log()
        answer = self._ask({"argv": [*args, "--out", str(out)], "log": str(log), "kill": kill,
                            "timeout": TIMEOUT}, TIMEOUT)
        return Done(answer["rc"], log.read_text())

    def start(self, out: Path, *args: str) -> tuple[int, Path]:
        log = self._log()
        answer = self._ask({"argv": [*args, "--out", str(out)], "log": str(log),
                            "background": True}, 10)
        return answer["pid"], log

    def wait(self, pid: int) -> int | None:
        return self._ask({"wait": pid, "timeout": TIMEOUT}, TIMEOUT)["rc"]

    def close(self):
        self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    r = Runner(tmp_path_factory.mktemp("logs"))
    yield r
    r.close()


def records(out: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock times."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time_")}
            for line in lines]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / "step-000003" / "model" / "model.safetensors"))


def result_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("held-out accuracy:"))


def names(out: Path) -> list[str]:
    return [p.name for p in checkpoints.checkpoint_dirs(out)]


def files_of(out: Path, *names_: str) -> dict[str, bytes | None]:
    return {n: (out / n).read_bytes() if (out / n).exists() else None for n in names_}


@dataclass
class Reference:
    out: Path
    output: str
    records: list[dict]
    weights: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def reference(runner, tmp_path_factory) -> Reference:
    """The uninterrupted run every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = runner.run(out, *TINY)
    assert done.rc == 0, done.output[-3000:]
    return Reference(out, done.output, records(out), final_weights(out))


@pytest.fixture(scope="module")
def killed(runner, tmp_path_factory) -> Path:
    """The same run, killed -9 just before checkpoint step-000003 gets its final name."""
    out = tmp_path_factory.mktemp("killed") / "run"
    done = runner.run(out, *TINY, kill={"at": "rename", "to": "step-000003"})
    assert done.rc == -signal.SIGKILL, done.output[-3000:]
    assert names(out) == ["step-000001", "step-000002"]
    assert (out / "checkpoints" / ".tmp-step-000003").is_dir()
    assert [r["step"] for r in records(out)] == [0, 1, 2, 3]
    return out


@pytest.fixture
def partial(killed, tmp_path) -> Path:
    """A copy of the killed run, for one test to resume, damage or refuse."""
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    return out


def assert_like_reference(out: Path, done: Done, reference: Reference) -> None:
    assert done.rc == 0, done.output[-3000:]
    assert records(out) == reference.records
    assert result_line(done.output) == result_line(reference.output)
    weights = final_weights(out)
    assert all(torch.equal(weights[k], reference.weights[k]) for k in reference.weights)


def resume(runner, out: Path, *args: str, **kw) -> Done:
    """The run's command again, with --resume (and `args`)."""
    return runner.run(out, *TINY, "--resume", *args, **kw)


# --------------------------------------------------------------------------------------------------
# The uninterrupted run


def test_reference_run_keeps_the_newest_checkpoints_and_its_record(reference):
    out = reference.out
    assert names(out) == ["step-000002", "step-000003"]  # --keep-checkpoints 2 (the default)
    for ckpt in checkpoints.checkpoint_dirs(out):
        assert checkpoints.verify(ckpt)["step"] == int(ckpt.name.split("-")[1])
    evals = {r["step"]: r["eval_accuracy"] for r in reference.records if "eval_accuracy" in r}
    # the tests below can tell a wrong "before" from the right one
    assert evals[0] != evals[2] and evals[0] != evals[3], evals
    record = json.loads((out / "run.json").read_text())
    assert record["before"] == evals[0] and record["eval"] == {"step": 3, "accuracy": evals[3]}
    assert record["finished"] and record["changes"] == []
    assert result_line(reference.output) == f"held-out accuracy: {evals[0]:.3f} -> {evals[3]:.3f}"
    assert (out / ".lock").read_text() == ""  # released


# --------------------------------------------------------------------------------------------------
# kill -9 at each write


def test_kill_before_a_checkpoint_is_complete(runner, partial, reference):
    done = resume(runner, partial)
    assert_like_reference(partial, done, reference)
    assert "checkpoints/.tmp-step-000003" in done.output  # the stale temporary, named and removed
    assert not list((partial / "checkpoints").glob(".tmp-*"))


def test_resume_takes_the_runs_own_flags(runner, partial, reference):
    done = runner.run(partial, "--resume")  # no TINY: config.json supplies them
    assert_like_reference(partial, done, reference)


def test_kill_halfway_through_a_metrics_line(runner, tmp_path, reference):
    out = tmp_path / "run"
    done = runner.run(out, *TINY, kill={"at": "metrics", "step": 3})
    assert done.rc == -signal.SIGKILL
    last = (out / "metrics.jsonl").read_text().splitlines()[-1]
    with pytest.raises(json.JSONDecodeError):
        json.loads(last)  # the torn line
    assert_like_reference(out, resume(runner, out), reference)


def test_kill_while_metrics_jsonl_is_rewritten_on_resume(runner, partial, reference):
    before = files_of(partial, "metrics.jsonl")
    done = resume(runner, partial, kill={"at": "write", "file": "metrics.jsonl"})
    assert done.rc == -signal.SIGKILL
    assert files_of(partial, "metrics.jsonl") == before  # the history survives the kill
    assert_like_reference(partial, resume(runner, partial), reference)


def test_kill_while_config_json_is_written_on_resume(runner, partial, reference):
    before = files_of(partial, "config.json")
    done = resume(runner, partial, kill={"at": "write", "file": "config.json"})
    assert done.rc == -signal.SIGKILL
    assert files_of(partial, "config.json") == before
    assert_like_reference(partial, resume(runner, partial), reference)


def test_kill_while_an_old_checkpoint_is_deleted(runner, partial, reference):
    # step 3's checkpoint is complete; the kill comes while step 1's is being deleted
    done = resume(runner, partial, kill={"at": "rmtree", "name": "step-000001"})
    assert done.rc == -signal.SIGKILL
    assert names(partial) == ["step-000002", "step-000003"]  # no half-deleted checkpoint is listed
    for ckpt in checkpoints.checkpoint_dirs(partial):
        checkpoints.verify(ckpt)
    done = resume(runner, partial)
    assert done.rc == 0 and "nothing to do" in done.output
    assert result_line(done.output) == result_line(reference.output)
    assert not list((partial / "checkpoints").glob(".tmp-*"))


def test_resuming_a_finished_run_reports_its_result_without_training(runner, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference.out, out)
    kept = files_of(out, "metrics.jsonl", "config.json", "run.json")
    done = resume(runner, out)
    assert done.rc == 0, done.output[-3000:]
    assert "nothing to do" in done.output and "resumed from" not in done.output
    assert result_line(done.output) == result_line(reference.output)
    assert files_of(out, "metrics.jsonl", "config.json", "run.json") == kept


# --------------------------------------------------------------------------------------------------
# Truncated and damaged files


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


DAMAGE = {"state/model.safetensors": _truncate, "state/optimizer.bin": _empty,
          "state/random_states_0.pkl": _zero, "model/model.safetensors": _truncate,
          "step.json": _truncate}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_checkpoint_falls_back_to_the_one_before(name, runner, partial, reference):
    bad = partial / "checkpoints" / "step-000002" / name
    DAMAGE[name](bad)
    done = resume(runner, partial)
    assert_like_reference(partial, done, reference)
    assert str(bad) in done.output  # the message names the file
    assert "falling back to" in done.output and "step-000001" in done.output
    assert (partial / "checkpoints" / "damaged-step-000002").is_dir()  # set aside, not deleted


def test_no_intact_checkpoint_stops_naming_the_files_and_changes_nothing(runner, partial):
    first = partial / "checkpoints" / "step-000001" / "state" / "optimizer.bin"
    second = partial / "checkpoints" / "step-000002" / "step.json"
    _empty(first)
    _truncate(second)
    kept = files_of(partial, "metrics.jsonl", "config.json", "run.json")
    done = resume(runner, partial)
    assert done.rc == 1
    assert str(first) in done.output and str(second) in done.output
    assert files_of(partial, "metrics.jsonl", "config.json", "run.json") == kept
    assert names(partial) == ["step-000001", "step-000002"]


@pytest.mark.parametrize("how", ["missing", "truncated", "torn in the middle"])
def test_lost_metrics_are_restored_and_before_stays_the_runs(how, runner, partial, reference):
    path = partial / "metrics.jsonl"
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        _truncate(path)
    else:
        lines = path.read_text().splitlines()
        lines[1] = lines[1][:20]
        path.write_text("\n".join(lines) + "\n")
    done = resume(runner, partial)
    assert_like_reference(partial, done, reference)  # `before` too: it is in the result line
    assert "restored from the checkpoint" in done.output


# --------------------------------------------------------------------------------------------------
# Changed flags on --resume


def test_a_changed_flag_is_refused_and_config_json_kept(runner, partial):
    kept = files_of(partial, "metrics.jsonl", "config.json", "run.json")
    done = resume(runner, partial, "--lr", "0.01")
    assert done.rc == 1
    assert "--lr: 0.001 -> 0.01" in done.output and "--allow-config-change" in done.output
    # issue 22: the message says which flags --resume may change
    assert "flags that --resume may change: --steps --eval-every --save-every" in done.output
    assert files_of(partial, "metrics.jsonl", "config.json", "run.json") == kept
    assert names(partial) == ["step-000001", "step-000002"]  # nothing trained


def test_an_allowed_change_applies_and_is_recorded_with_its_step(runner, partial, reference):
    done = resume(runner, partial, "--lr", "0.01", "--allow-config-change")
    assert done.rc == 0, done.output[-3000:]
    change = {"step": 3, "flag": "--lr", "from": 0.001, "to": 0.01}
    assert json.loads((partial / "run.json").read_text())["changes"] == [change]
    step_json = json.loads((partial / "checkpoints" / "step-000003" / "step.json").read_text())
    assert step_json["changes"] == [change] and step_json["config"]["lr"] == 0.01
    assert json.loads((partial / "config.json").read_text())["lr"] == 0.01
    got = records(partial)
    assert got[:3] == reference.records[:3] and got[3]["lr"] == 0.01
    weights = final_weights(partial)  # the new lr took effect in the update
    assert any(not torch.equal(weights[k], reference.weights[k]) for k in weights)


def test_a_flag_that_keeps_the_runs_meaning_changes_without_asking(runner, partial, reference):
    done = resume(runner, partial, "--eval-every", "1")
    assert_like_reference(partial, done, reference)  # step 3 is evaluated either way
    change = {"step": 3, "flag": "--eval-every", "from": 2, "to": 1}
    assert json.loads((partial / "run.json").read_text())["changes"] == [change]


# --------------------------------------------------------------------------------------------------
# Two runs on one folder


def test_a_second_run_is_refused_and_a_dead_runs_lock_taken_over(runner, tmp_path):
    out = tmp_path / "run"
    pid, _ = runner.start(out, *TINY, "--steps", "100", "--save-every", "0")
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and not (out / "config.json").exists():  # the run has begun
        time.sleep(0.05)
    second = runner.run(out, *TINY)
    assert second.rc == 1 and f"pid {pid}" in second.output  # who holds the folder
    assert f'"pid": {pid}' in _read(out / ".lock")
    os.kill(pid, signal.SIGKILL)
    assert runner.wait(pid) == -signal.SIGKILL
    (out / "checkpoints" / ".tmp-step-000009").mkdir(parents=True)  # a dead run's temporaries
    (out / ".metrics.jsonl.tmp").write_text('{"step": 0')
    third = runner.run(out, *TINY, "--steps", "1", "--save-every", "0")
    assert third.rc == 0, third.output[-3000:]
    assert "took over the stale lock" in third.output and f"pid {pid}" in third.output
    assert ".tmp-step-000009" in third.output and ".metrics.jsonl.tmp" in third.output
    assert not (out / "checkpoints" / ".tmp-step-000009").exists()
    assert not (out / ".metrics.jsonl.tmp").exists()
    assert [r["step"] for r in records(out)] == [0, 1]
    assert _read(out / ".lock") == ""


# --------------------------------------------------------------------------------------------------
# The first minutes: run-folder mistakes before anything loads, Ctrl-C


@pytest.fixture(scope="module")
def loud(tmp_path_factory) -> str:
    """A model folder whose loading fails loudly (tiny's config.json, so the memory plan can be
    made; no tokenizer files, so no chat template; weights that are no safetensors file): a run
    that loads it before refusing ends in another error."""
    folder = tmp_path_factory.mktemp("loud")
    shutil.copy(ROOT / "tiny" / "qwen3-arith" / "config.json", folder)
    (folder / "model.safetensors").write_text("not a model")
    return str(folder)


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder below `folder` with its content (None: a folder)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def test_run_folder_mistakes_are_refused_before_anything_loads(runner, reference, loud, tmp_path):
    """Each is the one line a user sees (no memory plan before it) and leaves the files as they
    were; a finished run resumed prints its result without loading the model."""
    missing, finished = tmp_path / "runs" / "does-not-exist", tmp_path / "finished"
    shutil.copytree(reference.out, finished)
    cases = [(missing, ["--resume"], f"--resume: {missing} does not exist, so there is no run "
                                     "to resume"),
             (finished, [], f"{finished} holds a finished run (step 3 of --steps 3): --resume "
                            "prints its result, --overwrite starts it over, or use another --out"),
             (finished, ["--steps", "5"], f"{finished} already holds checkpoints: pass --resume "
                                          "to continue it, --overwrite to start over, or --out "
                                          "for a new run folder")]
    for out, extra, message in cases:
        before = tree(tmp_path)
        done = runner.run(out, *TINY, *extra, "--model", loud)
        assert (done.rc, done.output.splitlines()) == (1, [f"train.py: error: {message}"])
        assert tree(tmp_path) == before
    done = runner.run(finished, *TINY, "--resume", "--model", loud)
    assert done.rc == 0, done.output[-3000:]
    assert done.output.splitlines() == [
        f"note: {finished}/checkpoints/step-000003 is at step 3 of --steps 3: the run is "
        "finished, nothing to do", f"run folder: {finished}", result_line(reference.output)]
    # positive control: the loud model fails a run that does load it
    done = runner.run(tmp_path / "new", *TINY, "--model", loud)
    assert done.rc == 1 and "memory plan" in done.output, done.output[-3000:]
    assert not (tmp_path / "new").exists()  # a failed start leaves nothing behind


def test_ctrl_c_ends_in_one_line_naming_the_checkpoint_and_the_command(tmp_path):
    """SIGINT to the process group of a real train.py, as Ctrl-C in a terminal sends it."""
    out, script = tmp_path / "run", str(ROOT / "train.py")
    proc = subprocess.Popen([sys.executable, script, *TINY, "--steps", "1000", "--out", str(out)],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and not runs.checkpoint_dirs(out) and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT)
    newest = runs.checkpoint_dirs(out)[-1]
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert err.splitlines()[-1] == (f"train.py: interrupted; the newest checkpoint is {newest}: "
                                    f"go on with `python {script} --out {out} --resume`")
    runs.verify(newest)  # complete and intact
    assert (out / ".lock").read_text() == ""  # released: the next run takes it without a note


ONE_PROCESS = types.SimpleNamespace(is_main_process=True, num_processes=1)  # for runs.open_run


def test_a_refused_resume_leaves_no_lock_and_no_folder_behind(tmp_path):
    """--resume on a folder that does not exist, and on one without an intact checkpoint: the
    refusal leaves the file tree as it was (no .lock, no new folder)."""
    cfg = config.Config(resume=True)
    missing = tmp_path / "runs" / "does-not-exist"
    with pytest.raises(ValueError, match=r"^--resume: .*/does-not-exist does not exist"):
        runs.open_run(ONE_PROCESS, missing, cfg)
    assert list(tmp_path.iterdir()) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"^--resume: no checkpoint in .*/empty/checkpoints$"):
        runs.open_run(ONE_PROCESS, empty, cfg)
    assert list(empty.iterdir()) == []
    damaged = tmp_path / "damaged"
    (damaged / "checkpoints" / "step-000001").mkdir(parents=True)  # no step.json
    with pytest.raises(ValueError, match="no intact checkpoint"):
        runs.open_run(ONE_PROCESS, damaged, cfg)
    assert sorted(p.relative_to(damaged).as_posix() for p in damaged.rglob("*")) == [
        "checkpoints", "checkpoints/step-000001"]
    # positive control: an accepted start keeps its lock (released, not removed, at the end)
    run = runs.open_run(ONE_PROCESS, missing, config.Config())
    assert (missing / ".lock").is_file()
    runs.unlock_run(run.out)
    shutil.rmtree(tmp_path / "runs")


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


# --------------------------------------------------------------------------------------------------
# Flags checked before any heavy work


BAD_FLAGS = [
    (["--group-size", "0"], "--group-size"), (["--group-size", "1"], "--group-size"),
    (["--ratio", "2"], "--ratio"), (["--gamma", "nan"], "--gamma"), (["--gamma", "-1"], "--gamma"),
    (["--gamma", "0"], "--gamma"),  # issue 22: it failed only at the first credit step
    (["--mini-batches", "0"], "--mini-batches"), (["--ppo-epochs", "0"], "--ppo-epochs"),
    (["--max-new-tokens", "0"], "--max-new-tokens"), (["--micro-batch", "0"], "--micro-batch"),
    (["--steps", "0"], "--steps"), (["--keep-checkpoints", "-1"], "--keep-checkpoints"),
    (["--eval-every", "0"], "--eval-every"), (["--save-every", "-1"], "--save-every"),
    (["--lr", "-1"], "--lr"), (["--lr", "inf"], "--lr"), (["--temperature", "0"], "--temperature"),
    (["--top-p", "1.5"], "--top-p"), (["--top-k", "-1"], "--top-k"), (["--seed", "-1"], "--seed"),
    (["--eval-limit", "0"], "--eval-limit"), (["--prompts-per-step", "0"], "--prompts-per-step"),
    (["--min-difficulty", "0.9", "--max-difficulty", "0.5"], "--max-difficulty"),
    (["--min-difficulty", "-0.1"], "--min-difficulty"), (["--layers", "-1"], "--layers"),
    (["--warmup-steps", "-1"], "--warmup-steps"), (["--weight-decay", "nan"], "--weight-decay"),
    (["--max-grad-norm", "0"], "--max-grad-norm"), (["--generation-batch", "0"],
                                                     "--generation-batch"),
    (["--clip-eps", "0"], "--clip-eps"), (["--dual-clip", "0.5"], "--dual-clip"),
    (["--adv-clip", "-1"], "--adv-clip"), (["--reward-workers", "-1"], "--reward-workers"),
    (["--plot-ema", "0"], "--plot-ema"), (["--data-format", "nope"], "--data-format"),
    (["--data-fields", "prompt"], "--data-fields"), (["--data-fields", "x=y"], "--data-fields"),
    (["--data-dir", "/nonexistent"], "--data-dir"), (["--model", ""], "--model"),
    (["--data", " "], "--data"), (["--eval-data", ""], "--eval-data"),
    (["--resume", "--overwrite"], "--resume"), (["--allow-config-change"], "--allow-config-change"),
]


@pytest.mark.parametrize("argv, flag", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_a_bad_flag_stops_before_any_heavy_work(argv, flag, tmp_path, monkeypatch):
    def too_late(*args, **kwargs):
        raise AssertionError("the flags were checked after the accelerator was made")

    monkeypatch.setattr(distributed, "make_accelerator", too_late)
    with pytest.raises(ValueError) as e:  # guards.run prints it as one line
        train.main(argv + ["--out", str(tmp_path / "run")])
    assert str(e.value).count(flag + " ") == 1, e.value


def test_every_bad_flag_is_named_at_once():
    with pytest.raises(ValueError) as e:
        config.validate(train.parse_args(["--group-size", "0", "--ratio", "2", "--steps", "0"]))
    assert all(f in str(e.value) for f in ["--group-size", "--ratio", "--steps"])


def test_every_field_has_a_check_and_every_preset_passes():
    rules = [name for name, _, _ in config._rules(config.Config())]
    assert sorted(rules) == sorted(f.name for f in dataclasses.fields(config.Config))
    for preset in config.PRESETS:
        config.validate(train.parse_args(["--preset", preset]))


@pytest.mark.parametrize("field, value", [("steps", "3"), ("bf16", "yes"), ("ratio", None),
                                          ("layers", [1.5]), ("seed", 2**32)])
def test_a_config_built_in_python_is_checked_too(field, value):
    with pytest.raises(ValueError, match="--" + field.replace("_", "-")):
        config.validate(config.Config(**{field: value}))


# --------------------------------------------------------------------------------------------------
# Bad input elsewhere


@pytest.mark.parametrize("timeout", [math.nan, math.inf, 0.0])
def test_score_batch_rejects_a_timeout_that_is_not_a_positive_number(timeout):
    with pytest.raises(ValueError, match="timeout_s"):
        rewards.score_batch("math", ["\\boxed{2}"], ["2"], timeout_s=timeout, workers=0)


def test_bad_utf8_names_the_file_and_the_line(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_bytes(b'{"question": "1+1?", "answer": "#### 2"}\n{"question": "\xff", '
                    b'"answer": "#### 4"}\n')
    with pytest.raises(ValueError, match=r"train\.jsonl:2: not UTF-8"):
        data.load_examples(str(bad), "gsm8k")


@pytest.mark.parametrize("target", ['"abc"', "null", "NaN", "true", "Infinity"])
def test_countdown_golds_are_checked_when_loaded(target, tmp_path):
    row = ('{"prompt": [{"content": "Use [1, 2] to make 3.", "role": "user"}], '
           '"reward_model": {"ground_truth": {"numbers": [1, 2], "target": %s}}}')
    path = tmp_path / "cd.jsonl"
    path.write_text(row % "3" + "\n" + row % target + "\n")
    with pytest.raises(ValueError, match=r"cd\.jsonl:2: .*target"):
        data.load_examples(str(path), "countdown")


@pytest.mark.parametrize("where", ["/nonexistent/x.json", "FOLDER"])
def test_eval_out_is_checked_before_the_evaluation(where, tmp_path, monkeypatch):
    def too_late(path):
        raise AssertionError("--out was checked after the model loaded")

    monkeypatch.setattr(eval_py, "load_model", too_late)
    out = str(tmp_path) if where == "FOLDER" else where
    with pytest.raises(ValueError, match="--out"):
        eval_py.main(["--model", "x", "--benchmarks", "arith", "--n", "1", "--temperature", "0",
                      "--limit", "2", "--out", out])


def test_flow_rejects_negative_attention():
    attn = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [-0.2, 0.7, 0.5]])
    prompt, answer = torch.tensor([True, False, False]), torch.tensor([False, False, True])
    with pytest.raises(ValueError, match="negative"):
        flow.influence_graph(attn)
    with pytest.raises(ValueError, match="negative"):
        flow.throughput(attn.mT.triu(1), prompt, answer)


@pytest.mark.parametrize("gamma", [math.nan, -0.5, math.inf, 0.0])
def test_credit_weights_rejects_a_bad_gamma(gamma):
    with pytest.raises(ValueError, match="gamma"):
        flow.credit_weights(torch.tensor([True, False]), gamma)
