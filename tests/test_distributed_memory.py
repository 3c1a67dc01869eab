"""The memory plan (memory.py, train.py --plan) and the GPU check at toy size."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import config
import memory
import harness
import train

ROOT = Path(__file__).resolve().parents[1]
GB = memory.GB


def refuse_to_load(*args, **kwargs):
    raise AssertionError("the plan must not load a model or tokenizer")


@pytest.fixture
def no_loading(monkeypatch):
    monkeypatch.setattr(harness.AutoModelForCausalLM, "from_pretrained", refuse_to_load)
    monkeypatch.setattr(harness.AutoTokenizer, "from_pretrained", refuse_to_load)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("model, params", [("Qwen/Qwen3-4B-Base", 4_022_468_096),
                                           ("Qwen/Qwen3-8B-Base", 8_190_735_360),
                                           ("meta-llama/Llama-3.1-8B", 8_030_261_248),
                                           ("meta-llama/Llama-3.2-3B", 3_212_749_824)])
def test_shipped_configs_give_the_published_parameter_counts(model, params):
    """configs/models/*.json built on the meta device: 4.02 B, 8.19 B, 8.03 B, 3.21 B."""
    shape = memory.model_shape(model)
    assert shape.params == params
    assert shape.root_params + shape.layers * shape.layer_params == params


SHAPE = memory.ModelShape(name="toy", params=1000, layer_params=200, largest_param=300, layers=4,
                          hidden=8, intermediate=16, vocab=32, heads=4, kv_heads=2, head_dim=2)


def test_plan_terms_by_hand():
    cfg = train.Config(bf16=True, prompts_per_step=8, group_size=4, generation_batch=1,
                       micro_batch=4, max_new_tokens=6, plan_prompt_tokens=10)
    fsdp = memory.plan(cfg, 4, "fsdp", 80 * GB, shape=SHAPE)
    ddp = memory.plan(cfg, 4, "ddp", 80 * GB, shape=SHAPE)
    # float32 weights, gradients and two Adam moments: 4 + 4 + 8 bytes per parameter, / 4 GPUs
    assert (fsdp.rows["weights"], fsdp.rows["gradients"], fsdp.rows["AdamW moments"]) \
        == (1000, 1000, 2000)
    assert (ddp.rows["weights"], ddp.rows["DDP gradient buckets"]) == (4000, 4000)
    assert fsdp.rows["DDP gradient buckets"] == 0
    # FSDP gathers every weight in bf16 for sampling; DDP's autocast caches a bf16 cast of each
    assert fsdp.rows["whole model in the compute dtype (sampling)"] == 2 * 1000
    # 8 prompts / 4 GPUs = 2 per GPU, 1 per generate call x 4 samples = N = 4 sequences of
    # T = 10 + 6 = 16 tokens; K and V of 4 layers x 2 KV heads x head_dim 2 in bf16
    assert fsdp.rows["KV cache (sampling)"] == 4 * 16 * (2 * 4 * 2 * 2 * 2)
    assert fsdp.rows["attention buffer [N, T, T]"] == 4 * 16 * 16 * 4  # float32 [N, T, T]
    # the evaluation generates micro_batch x 4 = 16 sequences at a time
    assert fsdp.rows["KV cache (evaluation)"] == 16 * 16 * (2 * 4 * 2 * 2 * 2)
    # (12 + 2) bytes per element of one [micro-batch, T (< chunk of 128), V] log-prob chunk
    assert fsdp.rows["log-prob chunk"] == 14 * 4 * 16 * 32
    # checkpointed inputs of 4 layers + the final hidden state, bf16 residual stream under FSDP
    cfg_ckpt = dataclasses.replace(cfg, gradient_checkpointing=True)
    assert memory.plan(cfg_ckpt, 4, "fsdp", 80 * GB, shape=SHAPE).rows[
        "checkpointed layer inputs"] == 5 * (4 * 16) * 8 * 2
    # a phase's peak is the sum of the terms it holds
    assert fsdp.peak("step") == 1000 + 1000 + 2000 + fsdp.rows["AdamW step scratch"]
    # issue 22: several optimizer steps per rollout keep the old log-probs of the 2 prompts x 4
    # samples this GPU sampled, float32 [8, T = 16], through the update and its steps
    old = "old log-probs (several optimizer steps)"
    assert fsdp.rows[old] == 0
    several = memory.plan(dataclasses.replace(cfg, mini_batches=2), 4, "fsdp", 80 * GB,
                          shape=SHAPE)
    assert several.rows[old] == 4 * 8 * 16
    assert several.peak("step") - fsdp.peak("step") == several.peak("update") - fsdp.peak(
        "update") == 4 * 8 * 16


def table_cells(table: str) -> dict[str, list[str]]:
    """Plan.table() by its fixed columns: term -> [value, mark of each phase]."""
    width = 9
    return {line[:44].strip(): [line[44:52].strip()] + [
        line[52 + width * i: 52 + width * (i + 1)].strip() for i in range(len(memory.PHASES))]
        for line in table.splitlines()[:-1]}


def test_the_table_marks_every_term_and_names_the_unit_it_is_in():
    """The update holds a layer's backward and the log-prob chunk in turn: the larger is marked x
    and counted in the peak, the smaller (x) and not; a CPU plan is per process, not per GPU."""
    cfg = train.Config(plan_prompt_tokens=10, max_new_tokens=6, micro_batch=4)
    narrow = dataclasses.replace(SHAPE, vocab=2)  # a vocabulary that makes the chunk the smaller
    layer, chunk = "one layer's activations and gradients", "log-prob chunk"
    update = 1 + memory.PHASES.index("update")
    for shape, larger, smaller in [(SHAPE, chunk, layer), (narrow, layer, chunk)]:
        p = memory.plan(cfg, 1, "ddp", 1 * GB, device="cpu", shape=shape)
        assert p.rows[larger] > p.rows[smaller]
        cells = table_cells(p.table())
        assert cells[""][0] == "GB/proc"
        assert cells[larger][update] == "x" and cells[smaller][1:] == ["", "", "(x)", "", ""]
        assert p.peak("update") == sum(p.rows[name] for name in p.rows
                                       if name in cells and cells[name][update] == "x")
        assert p.table().endswith("(x): held in turn with a larger term of that phase, not added "
                                  "to its peak")
    assert table_cells(memory.plan(cfg, 1, "ddp", GB, shape=SHAPE).table())[""][0] == "GB/GPU"


def test_auto_sharding_is_ddp_when_it_fits_else_fsdp():
    cfg = train.Config(plan_prompt_tokens=10, max_new_tokens=6)
    roomy, tight = memory.choose(cfg, 4, 1 * GB, shape=SHAPE), None
    assert roomy.sharding == "ddp" and roomy.fits
    ddp = memory.plan(cfg, 4, "ddp", 1 * GB, shape=SHAPE)
    # just below what DDP needs, so that only sharding helps
    budget = (ddp.peak(ddp.worst) - 1) / memory.USABLE
    tight = memory.choose(cfg, 4, budget, shape=SHAPE)
    assert tight.sharding == "fsdp" and tight.fits
    assert memory.choose(cfg, 1, budget, shape=SHAPE).sharding == "ddp"  # one process: no FSDP


def test_fsdp_needs_two_processes_and_no_gradient_credit():
    cfg = train.Config()
    assert "at least 2" in memory.plan(cfg, 1, "fsdp", 80 * GB, shape=SHAPE).verdict()
    gradient = dataclasses.replace(cfg, credit="gradient")
    p = memory.plan(gradient, 2, "fsdp", 80 * GB, shape=SHAPE)
    assert not p.fits and "--sharding ddp" in p.verdict()


GPU_PRESETS = sorted(set(config.PRESETS) - {"tiny"})


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_every_gpu_preset_fits_8_gpus_of_80_gb(preset):
    """The presets' stated hardware (docs/scaling.md): one node of 8 x 80 GB. The 4B and 8B models
    get FSDP (DDP does not fit), which is what --sharding auto picks there."""
    cfg = train.parse_args(["--preset", preset])
    p = memory.choose(cfg, 8, 80 * GB)
    assert p.fits, memory.report(cfg, p)
    if "4b" in preset or "8b" in preset:
        assert p.sharding == "fsdp"
        assert not memory.plan(cfg, 8, "ddp", 80 * GB).fits


def test_plan_command_fits_8b_on_8_gpus_without_loading_the_model(no_loading, capsys):
    with pytest.raises(SystemExit) as done:
        train.main(["--preset", "qwen3-8b-math-1k", "--plan", "--num-gpus", "8"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "fits 80 GB per GPU" in out and "sharding fsdp" in out
    for term in ("weights", "gradients", "AdamW moments", "whole model in the compute dtype",
                 "checkpointed layer inputs", "KV cache", "attention buffer [N, T, T]",
                 "log-prob chunk"):
        assert term in out, term


def test_plan_command_refuses_8b_under_ddp_and_names_the_fix(no_loading):
    with pytest.raises(SystemExit) as done:
        train.main(["--preset", "qwen3-8b-math-1k", "--plan", "--num-gpus", "8",
                    "--sharding", "ddp"])
    message = done.value.code
    assert isinstance(message, str)  # SystemExit(str): printed to stderr, exit status 1
    assert "does not fit 80 GB per GPU" in message and "it would fit with: --sharding fsdp" \
        in message


def test_a_run_predicted_not_to_fit_stops_before_loading(no_loading, tmp_path):
    with pytest.raises(SystemExit, match="(?s)does not fit 0.01 GB per process.*would fit"):
        train.main(["--gpu-memory-gb", "0.01", "--out", str(tmp_path)])
    assert not (tmp_path / "config.json").exists()  # stopped before the run folder was written


def test_refusal_names_the_smaller_micro_batch_that_fits():
    cfg = train.Config(plan_prompt_tokens=10, max_new_tokens=6, micro_batch=64)
    big = memory.plan(cfg, 1, "ddp", 80 * GB, shape=SHAPE)
    smaller = memory.plan(dataclasses.replace(cfg, micro_batch=8), 1, "ddp", 80 * GB, shape=SHAPE)
    assert big.worst == "update" and smaller.peak("update") < big.peak("update")
    budget = max(smaller.peak(p) for p in memory.PHASES) / memory.USABLE
    refused = memory.plan(cfg, 1, "ddp", budget, shape=SHAPE)
    assert not refused.fits
    found = memory.fixes(cfg, refused)
    assert any(f.startswith("--micro-batch ") and int(f.split()[1]) >= 8 for f in found), found


def test_gpu_check_runs_at_toy_size_on_cpu():
    """benchmarks/gpu_check.py on CPU: every section at toy shapes, so it works when a GPU comes."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error",
               CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--toy"],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.count("same tokens: True") == 2  # capture does not change the samples, 4B and 8B
    for section in ("1./2.", "3. flow", "4. credit share", "5. one optimizer step"):
        assert section in out, section
    assert "qwen3-4b-math-8k" in out and "evaluate" in out


def test_memory_check_refuses_an_fsdp_row_whose_model_is_not_sharded():
    """benchmarks/memory_check.py's FSDP configurations stop when the process holds whole
    parameters (accelerate's silent fallback to DDP) instead of measuring a DDP run as FSDP."""
    from accelerate import Accelerator

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import memory_check

    lm = torch.nn.Linear(4, 5)  # 25 parameters, all held by this one process
    with pytest.raises(RuntimeError, match="holds 25 of the model's 25 parameters"):
        memory_check.check_sharded(Accelerator(cpu=True), lm, 25)
