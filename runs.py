"""The run folder of train.py: a lock, checkpoints that verify (checkpoints.py), resume; the metrics
log and the curves are metrics.py's.

    OUT/.lock                            who uses the folder now: pid, host, start time (flock)
    OUT/config.json                      the configuration the run goes on with
    OUT/run.json                         the run's record: held-out accuracy before RL, the latest
                                         one, the flags changed on --resume (and the step from
                                         which they apply), finished or not
    OUT/metrics.jsonl                    one JSON object per step (step 0: accuracy before RL)
    OUT/checkpoints/step-000010/model/   save_pretrained: loadable by from_pretrained and eval.py
    OUT/checkpoints/step-000010/state/   optimizer, scheduler and every process's RNG (accelerate)
    OUT/checkpoints/step-000010/metrics.jsonl   the log up to this step
    OUT/checkpoints/step-000010/step.json       the record above as of this step, the config it was
                                         trained with, and the size and SHA-256 of every file
    OUT/curves.png                       training reward and held-out accuracy

What --resume guarantees: it continues from the newest checkpoint whose files all match their
checksums (a damaged one is named, moved to checkpoints/damaged-step-N and the one before it is
used), with the run's own configuration, the log and the held-out "before" accuracy of that
checkpoint, so that every number equals an uninterrupted run's. It refuses a changed flag that
alters what the run means (anything outside RESUME_SAFE) unless --allow-config-change is given, and
then records the change in run.json. Every file is written to a temporary name and renamed, and a
checkpoint gets its final name once complete: a kill at any point leaves the previous state whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import Accelerator

import config
import distributed
from checkpoints import CheckpointError, checkpoint_dirs, file_digests, recorded_step, verify

# Fields that say how this process runs, not what the run is: never taken from a saved config.
PER_INVOCATION = ("out", "resume", "overwrite", "allow_config_change")
# Fields --resume may change without --allow-config-change: they change when the run evaluates or
# saves, where it reads its files, or its memory, not the updates it makes (micro-batches and
# generation batches change float rounding and the order of random draws, not the algorithm);
# and how long it runs: a longer run begins exactly as a shorter one (the prompts of a step do not
# depend on --steps, harness.training_examples; the learning rate is constant after warm-up), so
# `--resume --steps 4` on a finished 2-step run trains on as a 4-step run would have.
RESUME_SAFE = ("steps", "eval_every", "save_every", "keep_checkpoints", "reward_workers",
               "micro_batch", "generation_batch", "gradient_checkpointing", "plot_ema", "data_dir",
               "num_gpus", "gpu_memory_gb", "plan_prompt_tokens")  # the last three: memory.py


def note(message: str) -> None:
    """A message of the main process (RANK is set by accelerate launch, before any Accelerator)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"note: {message}", flush=True)


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path` and rename it: a kill leaves the old file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# The lock: one run per folder


_held: dict[Path, object] = {}  # run folder -> the open lock file this process holds


def lock_run(out: Path) -> None:
    """Take OUT/.lock (flock, released by the kernel when the holder dies) and write who holds it.

    A folder in use by a live process stops this one with the holder's pid, host and start time.
    A lock file that still names a holder but is not locked was left by a process that died: it is
    taken over, with a note. A process may take a lock it already holds."""
    out = out.resolve()
    if out in _held:
        return
    path = out / ".lock"
    f = open(path, "a+")  # noqa: SIM115 (held open while the run lasts)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = _holder(f.read())
        f.close()
        raise ValueError(f"{out} is in use by another train.py ({holder}); wait for it to end, or "
                         "use another --out") from None
    f.seek(0)
    previous = f.read()
    if previous.strip():
        note(f"took over the stale lock {path} of a run that is gone ({_holder(previous)})")
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
    f.flush()
    _held[out] = f


def unlock_run(out: Path) -> None:
    """Empty OUT/.lock (a clean release) and let it go."""
    f = _held.pop(out.resolve(), None)
    if f is not None:
        f.seek(0)
        f.truncate()
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _holder(text: str) -> str:
    try:
        who = json.loads(text)
        return f"pid {who['pid']} on {who['host']}, started {who['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def clean_temporaries(out: Path) -> list[Path]:
    """Remove what an interrupted run left half-written: checkpoints/.tmp-* and OUT/.*.tmp. Call it
    with the lock held (then no live process is writing them)."""
    stale = sorted((out / "checkpoints").glob(".tmp-*")) + sorted(out.glob(".*.tmp"))
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return stale


# --------------------------------------------------------------------------------------------------
# Checkpoints (their checksums: checkpoints.py)


def _set_aside(ckpt: Path, prefix: str) -> Path:
    """Rename a checkpoint out of checkpoint_dirs' sight (an atomic step before deleting it)."""
    target = ckpt.with_name(f"{prefix}{ckpt.name}")
    if target.exists():
        shutil.rmtree(target)
    os.replace(ckpt, target)
    return target


# --------------------------------------------------------------------------------------------------
# The run: what train.main needs from its folder


@dataclass
class Run:
    """A run folder opened by open_run. `before` (held-out accuracy before RL) belongs to the run:
    it comes from the checkpoint on resume, never from a new measurement."""

    out: Path
    config: dict  # dataclasses.asdict of the Config the run goes on with
    start: int = 0  # steps already done (the step of `checkpoint`)
    checkpoint: Path | None = None  # to resume from; None: a new run
    before: float | None = None  # None: not measured yet
    eval_step: int | None = None  # the latest held-out measurement: its step and accuracy
    accuracy: float | None = None
    changes: list[dict] = field(default_factory=list)  # flags changed on --resume
    metrics: list[dict] = field(default_factory=list)  # the log up to `start`
    finished: bool = False  # a finished run resumed: nothing to do
    made: list[Path] = field(default_factory=list)  # what open_run created: the lock, folders
    begun: bool = False  # begin() has written config.json: the folder is the run's now

    def measured(self, step: int, accuracy: float) -> float:
        """Record a held-out accuracy (step 0: the one before RL); returns it."""
        if step == 0:
            self.before = accuracy
        self.eval_step, self.accuracy = step, accuracy
        return accuracy

    def record(self, step: int) -> dict:
        """run.json as of `step` (step.json holds the same, plus the config and the checksums)."""
        return {"step": step, "before": self.before,
                "eval": {"step": self.eval_step, "accuracy": self.accuracy},
                "changes": self.changes, "finished": step >= self.config["steps"]}


def resumed_config(cfg: config.Config, argv: list[str] | None, out: Path) -> config.Config:
    """On --resume, the run's own configuration (OUT/config.json; the newest checkpoint's if that is
    unreadable) under the flags given now, so `--out DIR --resume` goes on as the run started.
    Without --resume: cfg."""
    if not cfg.resume:
        return cfg
    saved = _saved_config(out)
    if saved is None:
        return cfg
    names = {f.name for f in dataclasses.fields(config.Config)}
    base = {k: v for k, v in saved.items() if k in names and k not in PER_INVOCATION}
    return config.parse_args(argv, base=base)


def _saved_config(out: Path) -> dict | None:
    path = out / "config.json"
    try:
        saved = json.loads(path.read_text())
        if isinstance(saved, dict):
            return saved
        note(f"{path} holds no configuration; using the newest checkpoint's")
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        note(f"{path} is unreadable ({e}); using the newest checkpoint's configuration")
    for ckpt in reversed(checkpoint_dirs(out)):
        try:
            return json.loads((ckpt / "step.json").read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def open_run(accelerator: Accelerator, out: Path, cfg: config.Config) -> Run:
    """The run folder, before anything loads: take its lock, accept a new run (refusing a folder
    that holds checkpoints unless --overwrite) or pick the checkpoint to resume (`_resume`), then
    remove stale temporaries. A mistake is a ValueError that leaves no file or folder behind and
    changes none. Writes nothing else (`begin` does, once the run has loaded). Runs on the main
    process; every process gets the same Run."""
    def main_process() -> Run:
        if cfg.resume and not out.is_dir():
            raise ValueError(f"--resume: {out} does not exist, so there is no run to resume")
        # what this start makes: the lock file, the folders up to `out` (deepest first)
        made = [p for p in (out / ".lock", out, *out.parents) if not p.exists()]
        out.mkdir(parents=True, exist_ok=True)
        lock_run(out)
        try:
            run = _resume(out, cfg) if cfg.resume else _start(out, cfg)
        except BaseException:
            unlock_run(out)
            _remove_made(made)
            raise
        stale = clean_temporaries(out)  # once accepted: a refused start changes nothing
        if stale:
            note(f"removed what an interrupted run left half-written: "
                 f"{', '.join(str(p.relative_to(out)) for p in stale)}")
        run.made = made
        return run

    return distributed.on_main(accelerator, main_process)


def begin(accelerator: Accelerator, run: Run) -> None:
    """The run has loaded: the folder becomes the run's (--overwrite clears the old checkpoints;
    config.json and run.json are written)."""
    if accelerator.is_main_process:
        if run.config["overwrite"] and run.checkpoint is None:
            shutil.rmtree(run.out / "checkpoints", ignore_errors=True)
        atomic_write(run.out / "config.json", json.dumps(run.config, indent=2))
        atomic_write(run.out / "run.json", json.dumps(run.record(run.start), indent=2))
    run.begun = True


@contextlib.contextmanager
def guarded(accelerator: Accelerator, run: Run) -> Iterator[None]:
    """The run after open_run. A start that fails before `begin` leaves nothing open_run made; an
    interrupt (Ctrl-C) releases the lock and becomes one KeyboardInterrupt naming the newest
    checkpoint and the command that goes on from it (guards.run prints it; exit status 130)."""
    try:
        yield
    except BaseException as e:
        stop = isinstance(e, KeyboardInterrupt)
        if accelerator.is_main_process and (stop or not run.begun):
            unlock_run(run.out)
            if not run.begun:
                _remove_made(run.made)
        if stop:
            raise KeyboardInterrupt(interrupted(run, accelerator.num_processes)) from None
        raise


def interrupted(run: Run, processes: int) -> str:
    """What an interrupted run tells its user: where it stands and the exact command to go on."""
    if not run.begun:
        return "interrupted before the run began; nothing was written"
    saved = checkpoint_dirs(run.out)
    if not saved:
        return ("interrupted before the first checkpoint (--save-every "
                f"{run.config['save_every']}), so there is nothing to resume; the same command "
                "starts the run again")
    script = sys.argv[0] if sys.argv[0].endswith("train.py") else "train.py"
    launch = "python" if processes == 1 else "accelerate launch [your launch flags]"
    return (f"interrupted; the newest checkpoint is {saved[-1]}: go on with `{launch} "
            f"{shlex.quote(script)} --out {shlex.quote(str(run.out))} --resume`")


def _remove_made(made: list[Path]) -> None:
    """Remove what a refused start made: the lock file, then the empty folders it created."""
    for path in made:
        try:
            path.rmdir() if path.is_dir() else path.unlink()
        except OSError:  # a folder something else has put files into meanwhile: kept
            break


def _start(out: Path, cfg: config.Config) -> Run:
    """A new run; its folder's old checkpoints go in `begin` (--overwrite), once it has loaded."""
    saved = checkpoint_dirs(out)
    if saved and not cfg.overwrite:
        step = recorded_step(saved[-1])
        if step is not None and step >= cfg.steps:
            raise ValueError(f"{out} holds a finished run (step {step} of --steps {cfg.steps}): "
                             "--resume prints its result, --overwrite starts it over, or use "
                             "another --out")
        raise ValueError(f"{out} already holds checkpoints: pass --resume to continue it, "
                         "--overwrite to start over, or --out for a new run folder")
    return Run(out=out, config=dataclasses.asdict(cfg))


def _resume(out: Path, cfg: config.Config) -> Run:
    """The newest intact checkpoint (verify), checked against the flags given now."""
    dirs = checkpoint_dirs(out)
    if not dirs:
        raise ValueError(f"--resume: no checkpoint in {out}/checkpoints")
    damaged: list[tuple[Path, str]] = []
    for ckpt in reversed(dirs):
        try:
            record = verify(ckpt)
            break
        except CheckpointError as e:
            damaged.append((ckpt, str(e)))
    else:
        raise ValueError(f"--resume: no intact checkpoint in {out}/checkpoints: "
                         + "; ".join(why for _, why in damaged))
    log = (ckpt / "metrics.jsonl").read_text().splitlines()
    run = Run(out=out, config=dataclasses.asdict(cfg), start=record["step"], checkpoint=ckpt,
              before=record["before"], eval_step=record["eval"]["step"],
              accuracy=record["eval"]["accuracy"], changes=record["changes"],
              metrics=[json.loads(line) for line in log])
    if run.start >= cfg.steps:
        note(f"{ckpt} is at step {run.start} of --steps {cfg.steps}: the run is finished, "
              "nothing to do")
        run.finished = True
        return run
    changed = {k: (v, run.config[k]) for k, v in record["config"].items()
               if k in run.config and k not in PER_INVOCATION and run.config[k] != v}
    refused = [k for k in changed if k not in RESUME_SAFE]
    if refused and not cfg.allow_config_change:
        flags = "; ".join(f"{_flag(k)}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused)
        safe = " ".join(_flag(k) for k in RESUME_SAFE)
        raise ValueError(f"--resume: {ckpt} was trained with other values of flags that change "
                         f"what the run means ({flags}); leave them out to go on as the run "
                         f"started, or add --allow-config-change to apply them from step "
                         f"{run.start + 1} on (recorded in {out / 'run.json'}); flags that "
                         f"--resume may change: {safe}")
    for bad, why in damaged:
        moved = _set_aside(bad, "damaged-")
        note(f"{why}: not resuming from it (moved to {moved}); falling back to {ckpt}")
    for k, (old, new) in changed.items():
        run.changes.append({"step": run.start + 1, "flag": _flag(k), "from": old, "to": new})
        note(f"{_flag(k)} changes from {old!r} to {new!r} from step {run.start + 1} on")
    return run


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def load_checkpoint(accelerator: Accelerator, run: Run) -> None:
    """The optimizer, scheduler and RNG state of run.checkpoint (its checksums verified)."""
    state = run.checkpoint / "state"
    try:
        accelerator.load_state(str(state))
    except Exception as e:  # torch and accelerate raise many types; the checksums matched
        raise SystemExit(f"--resume: cannot load {state} ({type(e).__name__}: {e}); was a flag "
                         "such as --model changed with --allow-config-change?") from e
    saved_by = len(list(state.glob("random_states_*.pkl")))
    if saved_by != accelerator.num_processes:
        accelerator.print(f"note: {run.checkpoint} was saved by {saved_by} process(es), resumed "
                          f"by {accelerator.num_processes}: the samples will differ from the "
                          "uninterrupted run's")
    accelerator.print(f"resumed from {run.checkpoint} (step {run.start})")


def save_checkpoint(accelerator: Accelerator, model, tokenizer, run: Run, records: list[dict],
                    step: int, keep: int) -> None:
    """model/ (save_pretrained) + state/ (optimizer, scheduler, RNG of every process) + the log
    `records` + step.json (run.record, the config and the checksums of the other files), written to
    a temporary folder and renamed, so a kill never leaves a half-written checkpoint. Keeps the
    newest `keep` checkpoints (0: all), never the one just written. `model` is the prepared
    harness.Policy."""
    out = run.out
    final = out / "checkpoints" / f"step-{step:06d}"
    tmp = out / "checkpoints" / f".tmp-step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    lm = accelerator.unwrap_model(model).lm
    tied = set(getattr(lm, "all_tied_weights_keys", None) or {})  # {"lm_head.weight"} if tied

    def untied(state: dict) -> dict:
        """The state without the tied copies (lm_head.weight is embed_tokens.weight): safetensors
        stores a tensor once, and loading ties them again."""
        return {k: v for k, v in state.items()
                if k.removeprefix("module.").removeprefix("lm.") not in tied}

    def drop_tied(models, weights, output_dir) -> None:  # accelerate's save_state pre-hook
        weights[:] = [untied(w) for w in weights]

    hook = accelerator.register_save_state_pre_hook(drop_tied)
    try:
        accelerator.save_state(str(tmp / "state"))
    finally:
        hook.remove()
    state = accelerator.get_state_dict(model)  # full weights, also under FSDP / ZeRO-3
    accelerator.wait_for_everyone()  # every process's RNG file is written before the checksums
    if accelerator.is_main_process:
        lm_state = {k.removeprefix("lm."): v for k, v in untied(state).items()}
        lm.save_pretrained(tmp / "model", state_dict=lm_state)
        tokenizer.save_pretrained(tmp / "model")
        (tmp / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        record = run.record(step) | {"config": run.config, "files": file_digests(tmp)}
        (tmp / "step.json").write_text(json.dumps(record, indent=1))
        os.replace(tmp, final)
        atomic_write(out / "run.json", json.dumps(run.record(step), indent=2))
        if keep > 0:
            for old in checkpoint_dirs(out)[:-keep]:
                if old != final:
                    shutil.rmtree(_set_aside(old, ".tmp-old-"))
    accelerator.wait_for_everyone()


def finish(accelerator: Accelerator, run: Run) -> dict:
    """The end of train.main: run.json says finished, the two closing lines, the lock goes.
    Returns {"before", "after", "out"}."""
    if accelerator.is_main_process:
        if not run.finished:
            record = run.record(run.config["steps"])
            atomic_write(run.out / "run.json", json.dumps(record, indent=2))
        unlock_run(run.out)
    accelerator.print(f"run folder: {run.out}")
    accelerator.print(f"held-out accuracy: {run.before:.3f} -> {run.accuracy:.3f}")
    return {"before": run.before, "after": run.accuracy, "out": str(run.out)}
