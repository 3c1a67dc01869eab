"""Several processes on CPU (gloo): DDP and FSDP2 updates equal the one-process update, FSDP2 really
shards, 2 "nodes" equal 1 process, FSDP2 training equals DDP training, kill -9 and resume.

accelerate never selects FSDP on CPU by itself (distributed.make_accelerator does), so every FSDP
test checks that the parameters were DTensor shards of the expected size on each process.
"""

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

import checkpoints
import distributed
import metrics

ROOT = Path(__file__).resolve().parents[1]
UPDATE = str(ROOT / "tests" / "ddp_update.py")
# A small run: 8 prompts x 4 samples, every group kept, 8 held-out problems; 4 steps of flow credit,
# checkpoints and evaluations at steps 2 and 4.
RUN = ["--prompts-per-step", "8", "--group-size", "4", "--max-new-tokens", "40", "--eval-limit",
       "8", "--min-difficulty", "0", "--max-difficulty", "1", "--credit", "flow", "--steps", "4",
       "--save-every", "2", "--eval-every", "2"]
TIMEOUT = 600  # seconds per subprocess: a distributed deadlock fails instead of stalling CI
ENV = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1",
           HF_HUB_OFFLINE="1")


def launch(args: list[str], processes: int = 2, config: str = "ddp.yaml") -> list[str]:
    """`accelerate launch` of `args` (a script and its arguments) on CPU processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / config), "--num_processes", str(processes)]
    if "--main_process_port" not in args:
        cmd += ["--main_process_port", "0"]
    return cmd + args


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def records(out: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock times."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]


def initial_weights() -> dict[str, torch.Tensor]:
    return load_file(str(ROOT / "tiny" / "qwen3-arith" / "model.safetensors"))


def assert_sharded(path: str, processes: int) -> None:
    """Every parameter was a DTensor sharded on dim 0 over `processes`, with rank r holding rows
    [r * ceil(n / p), ...) of the full tensor (torch.chunk's split)."""
    full = {k: v.shape for k, v in initial_weights().items()}
    for rank in range(processes):
        layout = json.loads(Path(f"{path}.rank{rank}.json").read_text())
        assert set(layout) == {"lm." + k for k in full}
        for name, p in layout.items():
            shape = full[name.removeprefix("lm.")]
            rows = math.ceil(shape[0] / processes)
            expected = [max(0, min(rows, shape[0] - rank * rows)), *shape[1:]]
            assert p["type"] == "DTensor" and p["placements"] == ["Shard(dim=0)"], (name, p)
            assert p["local"] == expected, (name, rank, p["local"], expected)


def assert_same_update(got: dict, want: dict, processes: int) -> None:
    initial = initial_weights()
    moved = max((want["weights"][k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-4  # the update did something
    assert got["processes"] == processes and want["processes"] == 1
    for k in initial:
        torch.testing.assert_close(got["weights"][k], want["weights"][k], rtol=0, atol=1e-6)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    # issue 22: each statistic reduced by its own rule (metrics.STATISTICS) reads the same whatever
    # the processes; adding them made prob_ratio_max 1.25 with 2 processes at r = 1
    for k in metrics.STATISTICS:
        assert got["stats"][k] == pytest.approx(want["stats"][k], rel=1e-6), k
    assert got["stats"]["prob_ratio_max"] == 1.0 and got["stats"]["prob_ratio_mean"] == 1.0
    assert 1.0 < got["stats"]["gamma_mean"] < 1.5


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    """The reference: the update on the whole global batch in one process (seq-mean)."""
    out = tmp_path_factory.mktemp("one") / "one.pt"
    run([sys.executable, UPDATE, str(out), "seq-mean"])
    return torch.load(out)


# --------------------------------------------------------------------------------------------------
# One update: 2 processes (DDP, FSDP2), 2 nodes


@pytest.mark.parametrize("aggregation", ["seq-mean", "token-mean"])
def test_ddp_update_equals_the_one_process_update(aggregation, one_process, tmp_path):
    want = one_process
    if aggregation != "seq-mean":
        run([sys.executable, UPDATE, str(tmp_path / "one.pt"), aggregation])
        want = torch.load(tmp_path / "one.pt")
    run(launch([UPDATE, str(tmp_path / "two.pt"), aggregation, "ddp"]))
    got = torch.load(tmp_path / "two.pt")
    layout = json.loads((tmp_path / "two.pt.rank1.json").read_text())
    assert {p["type"] for p in layout.values()} == {"Parameter"}  # DDP: whole tensors
    assert_same_update(got, want, processes=2)


def test_fsdp_update_equals_the_one_process_update_and_shards(one_process, tmp_path):
    out = str(tmp_path / "fsdp.pt")
    run(launch([UPDATE, out, "seq-mean", "fsdp"]))
    assert_sharded(out, processes=2)
    assert_same_update(torch.load(out), one_process, processes=2)


def test_combine_reduces_each_statistic_by_its_rule():
    """distributed.combine in one process, by hand: a mean weighted by tokens, a max, a sum; a
    part of weight 0 (a padding pass) counts for nothing."""
    class OneProcess:
        device = "cpu"

        def reduce(self, tensor, op):
            return tensor

    parts = [({"a": 1.0, "m": 2.0, "s": 3.0}, 2), ({"a": 4.0, "m": 5.0, "s": 1.0}, 1),
             ({"a": 100.0, "m": 100.0, "s": 100.0}, 0)]
    got = distributed.combine(OneProcess(), parts, {"a": "mean", "m": "max", "s": "sum"})
    assert got == {"a": (1 * 2 + 4 * 1) / 3, "m": 5.0, "s": 4.0}


def test_mini_batches_under_fsdp_equal_ddp_and_clip(tmp_path):
    """--mini-batches 2 on the 13 + 3 rows of ddp_update.py (parts of 7, 6 and 2, 1 rows): old
    log-probs from one no-grad pass, two optimizer steps. FSDP2 (sharded, checked) makes the same
    update as DDP, and after the first SGD step (lr 1) r has moved: the clip acts."""
    ddp, fsdp = str(tmp_path / "ddp.pt"), str(tmp_path / "fsdp.pt")
    run(launch([UPDATE, ddp, "seq-mean", "ddp", "2"]))
    run(launch([UPDATE, fsdp, "seq-mean", "fsdp", "2"]))
    assert_sharded(fsdp, processes=2)
    got, want = torch.load(fsdp), torch.load(ddp)
    for k in want["weights"]:
        torch.testing.assert_close(got["weights"][k], want["weights"][k], rtol=0, atol=1e-5)
    assert got["stats"]["optimizer_steps"] == want["stats"]["optimizer_steps"] == 2
    assert want["stats"]["clip_frac"] > 0 and want["stats"]["prob_ratio_max"] > 1.0  # r moved
    for k in metrics.STATISTICS:
        assert got["stats"][k] == pytest.approx(want["stats"][k], rel=1e-4, abs=1e-6), k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_of_one_process_equal_one_process(one_process, tmp_path):
    """configs/accelerate/multinode.yaml with 2 machines of 1 process each on localhost (machine
    ranks 0 and 1, loopback rendezvous), FSDP2 sharding across the two "nodes"."""
    out, port = str(tmp_path / "nodes.pt"), str(_free_port())
    nodes = [subprocess.Popen(
        launch(["--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip",
                "127.0.0.1", "--main_process_port", port, UPDATE, out, "seq-mean", "fsdp"],
               config="multinode.yaml"),
        env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)]
    try:
        results = [node.communicate(timeout=TIMEOUT) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (_, err) in zip(nodes, results):
        assert node.returncode == 0, err[-3000:]
    assert_sharded(out, processes=2)
    assert_same_update(torch.load(out), one_process, processes=2)


# --------------------------------------------------------------------------------------------------
# Training runs: FSDP2 equals DDP, kill -9 and resume


def _train(sharding: str, out: Path) -> list[str]:
    return launch([str(ROOT / "train.py"), *RUN, "--sharding", sharding, "--out", str(out)])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """4-step 2-process runs, DDP and FSDP2: {sharding: (run folder, stdout)}."""
    base = tmp_path_factory.mktemp("uninterrupted")
    return {s: (base / s, run(_train(s, base / s)).stdout) for s in ("ddp", "fsdp")}


def test_two_process_ddp_run_trains(uninterrupted):
    out, stdout = uninterrupted["ddp"]
    assert stdout.count("held-out accuracy:") == 1  # printed by the main process only
    assert "sharding ddp" in stdout and "fits" in stdout  # the memory plan, printed at start
    assert [r["step"] for r in records(out)] == [0, 1, 2, 3, 4]
    assert (out / "checkpoints" / "step-000004" / "state").is_dir()
    # issue 22: one update per rollout makes r = 1 exactly; the max over 2 processes says so
    assert [r["prob_ratio_max"] for r in records(out)[1:]] == [1.0] * 4


def test_steps_2_then_resume_steps_4_equals_a_straight_4_step_run(uninterrupted, tmp_path):
    """issue 22: --steps is resume-safe, and a longer run begins exactly as a shorter one (the
    prompts of a step used to come from a permutation of steps x prompts problems: seed 3 saw
    other prompts at step 1 in a 2-step and a 4-step run). 2 processes, no extra flag."""
    out = tmp_path / "run"
    run(_train("ddp", out) + ["--steps", "2"])
    assert [r["step"] for r in records(out)] == [0, 1, 2]
    done = run(_train("ddp", out) + ["--resume", "--steps", "4"])
    assert "--steps changes from 2 to 4 from step 3 on" in done.stdout
    assert records(out) == records(uninterrupted["ddp"][0])


def test_fsdp_run_equals_the_ddp_run(uninterrupted):
    """Flow credit over 4 steps (3 of them after an update): the same samples, rewards, losses
    and held-out accuracy; gradient norms agree to float32 rounding (reduce-scatter vs
    all-reduce)."""
    (ddp, _), (fsdp, stdout) = uninterrupted["ddp"], uninterrupted["fsdp"]
    assert "sharding fsdp" in stdout
    state = fsdp / "checkpoints" / "step-000004" / "state"
    # accelerate's FSDP checkpoint: sharded model and optimizer, one file per process
    assert len(list((state / "pytorch_model_fsdp_0").glob("*.distcp"))) == 2
    assert len(list((state / "optimizer_0").glob("*.distcp"))) == 2
    a, b = records(ddp), records(fsdp)
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4] and a[0] == b[0]
    for x, y in zip(a[1:], b[1:]):
        assert x.keys() == y.keys()
        assert x["samples"] == y["samples"] and x["response_len"] == y["response_len"]
        assert x == pytest.approx(y, rel=1e-5, abs=1e-7)
    # the saved model folders hold the same weights
    wa, wb = (load_file(str(d / "checkpoints" / "step-000004" / "model" / "model.safetensors"))
              for d in (ddp, fsdp))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6)


def kill_9_with_workers(proc: subprocess.Popen) -> None:
    """SIGKILL to the launcher and every process below it, as a crash would. torch's launcher
    starts each worker in its own session, so killing the launcher's process group would leave the
    workers running on."""
    launcher = psutil.Process(proc.pid)
    workers = launcher.children(recursive=True)
    for p in [*workers, launcher]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(workers, timeout=60)
    proc.wait(timeout=60)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)


def _logged(out: Path, step: int) -> bool:
    """Whether metrics.jsonl holds `step` (a line being written may be incomplete: not yet)."""
    try:
        return any(r["step"] == step for r in records(out))
    except (FileNotFoundError, ValueError):
        return False


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_kill_9_then_resume_under_two_processes(sharding, uninterrupted, tmp_path):
    """SIGKILL to every process of the launch once step 3 is logged (past the step-2 checkpoint),
    then --resume: the metrics equal the uninterrupted run's, step by step. Before the fix, the
    resumed processes waited in different collectives (only the main process reads the metrics, so
    only the others re-ran the step-0 evaluation) until the timeout."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_train(sharding, out), env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    try:
        while time.time() < deadline and proc.poll() is None:
            if _logged(out, step=3):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        kill_9_with_workers(proc)
    assert [p.name for p in checkpoints.checkpoint_dirs(out)] == ["step-000002"]

    done = run(_train(sharding, out) + ["--resume"])
    assert "resumed from" in done.stdout and "held-out accuracy:" in done.stdout
    assert records(out) == records(uninterrupted[sharding][0])
