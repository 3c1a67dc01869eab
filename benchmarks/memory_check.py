"""Measured peak memory of each phase of a training step against memory.py's plan.

    python benchmarks/memory_check.py                  # CPU: the tiny configurations of CONFIGS
    python benchmarks/memory_check.py --only small-ddp2
    python benchmarks/memory_check.py --only smollm2 smollm2-bf16 smollm2-fsdp2 smollm2-fsdp2-bf16

Each configuration runs in fresh processes (2 of them, through accelerate launch, for the DDP and
FSDP rows; the table is built only when every process reported, and an FSDP process checks that
the processes' parameter shards add up to the model) with a randomly initialised Qwen3 of the
given shape, or a real model's weights loaded as train.py loads them (`model`: a --model NAME such
as smollm2, models.resolve), and prompts of exactly `prompt` tokens (a word-level tokenizer over
the model's vocabulary: token i is the word "t<i>"); generation is forced to `new` tokens, so T is
known. The phases are train.py's own functions in train.py's order:
  sample    rollout.generate with the attention capture, inside distributed.full_parameters
  credit    train.credit_batch (the flow solve), still inside the gathered block
  update    train.update: forward + backward of every micro-batch and the AdamW step (the plan's
            max of update and step)
  evaluate  greedy rollout.generate of micro_batch x 4 prompts, as harness.held_out_accuracy
after one warm-up update, so that AdamW's moments exist as they do from step 2 on; and
  gathered  the memory that entering distributed.full_parameters adds (FSDP's gathered copy).
Measured: the
peak above the process's memory before the model was built. On CPU that is the peak resident set
size (VmHWM, reset through /proc/self/clear_refs before each phase; glibc is told to return freed
blocks above 64 KiB to the system, MALLOC_MMAP_THRESHOLD_, so the peak is live memory, not heap
left over); on CUDA torch.cuda.max_memory_allocated. Prints predicted and measured MB per phase,
per process (the largest over processes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MB = 1 << 20
# shape: a Qwen3Config's fields (or model: a --model NAME, its real weights); run: train.Config
# fields; prompt/new: tokens; processes/sharding
SMALL = dict(vocab_size=32768, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=4, head_dim=64, tie_word_embeddings=True)
LONG = dict(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)
CONFIGS = {
    "small": dict(shape=SMALL, run=dict(micro_batch=8, generation_batch=2, group_size=4),
                  prompt=96, new=160, processes=1, sharding="ddp"),
    "small-ckpt-bf16": dict(shape=SMALL, run=dict(micro_batch=8, generation_batch=2,
                                                  group_size=4, bf16=True,
                                                  gradient_checkpointing=True),
                            prompt=96, new=160, processes=1, sharding="ddp"),
    "long": dict(shape=LONG, run=dict(micro_batch=4, generation_batch=16, group_size=4),
                 prompt=128, new=384, processes=1, sharding="ddp"),
    "small-ddp2": dict(shape=SMALL, run=dict(micro_batch=8, generation_batch=2, group_size=4),
                       prompt=96, new=160, processes=2, sharding="ddp"),
    "small-fsdp2": dict(shape=SMALL, run=dict(micro_batch=8, generation_batch=2, group_size=4),
                        prompt=96, new=160, processes=2, sharding="fsdp"),
}
# SmolLM2-135M-Instruct (docs/real_model.md), small enough for minutes on one loaded CPU core
SMOLLM2 = dict(model="smollm2", run=dict(micro_batch=4, generation_batch=1, group_size=4),
               prompt=64, new=64)
CONFIGS |= {
    "smollm2": SMOLLM2 | dict(processes=1, sharding="ddp"),
    "smollm2-bf16": SMOLLM2 | dict(run=SMOLLM2["run"] | dict(bf16=True), processes=1,
                                   sharding="ddp"),
    "smollm2-fsdp2": SMOLLM2 | dict(processes=2, sharding="fsdp"),
    "smollm2-fsdp2-bf16": SMOLLM2 | dict(run=SMOLLM2["run"] | dict(bf16=True), processes=2,
                                         sharding="fsdp"),
    # two micro-batches per update, as the presets run: from the second on, the gradients exist
    # during the forward (with one micro-batch they are built during the backward)
    "smollm2-accum": SMOLLM2 | dict(run=SMOLLM2["run"] | dict(generation_batch=2), processes=1,
                                    sharding="ddp"),
}
PHASES = ("gathered", "sample", "credit", "update", "evaluate")


# --------------------------------------------------------------------------------------------------
# Peak memory


class Peak:
    """Peak bytes above a baseline: CUDA's allocator statistics, or the process's VmHWM."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.baseline = self._now()

    def current(self) -> int:
        """Bytes in use now, above the baseline."""
        return self._now() - self.baseline

    def _now(self) -> int:
        if self.cuda:
            import torch

            return torch.cuda.memory_allocated()
        return _status_kb("VmRSS") * 1024

    def reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS

    def read(self) -> int:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.baseline
        return _status_kb("VmHWM") * 1024 - self.baseline


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


# --------------------------------------------------------------------------------------------------
# One process: the phases of a step


def word_tokenizer(vocab: int):
    """A tokenizer whose token i is the word "t<i>": prompts of an exact length, no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="t0", eos_token="t1",
                                   unk_token="t0")


def check_sharded(accelerator, model, params: int) -> None:
    """Raises unless this process holds part of the model's `params` parameters (DTensor shards)
    and the parts of all processes add up to them: accelerate can fall back to DDP without an
    error (docs/scaling.md), and an FSDP row measured on whole parameters would be a DDP row."""
    import torch
    from torch.distributed.tensor import DTensor

    held = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())
    total = int(accelerator.reduce(torch.tensor(held), "sum"))
    if held >= params or total != params:
        raise RuntimeError(f"FSDP: this process holds {held} of the model's {params} parameters, "
                           f"all {accelerator.num_processes} processes {total}: not sharded")


def measure(shape: dict | None, run: dict, prompt: int, new: int, sharding: str,
            pretrained: str | None = None) -> dict:
    """{phase: (predicted bytes, measured bytes)} of this process for one configuration: a random
    Qwen3 of `shape`, or the real weights of `pretrained` (a --model NAME)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen3Config

    import distributed
    import harness
    import memory
    import models
    import rollout
    import train

    cuda = torch.cuda.is_available()
    folder = models.resolve(pretrained) if pretrained else None
    if folder:
        config = AutoConfig.from_pretrained(folder)
    else:
        config = Qwen3Config(**shape, max_position_embeddings=prompt + new + 8)
        config._attn_implementation = "sdpa"
    vocab = config.vocab_size
    tokenizer = word_tokenizer(vocab)  # before the baseline: not GPU memory
    peak = Peak(cuda)
    torch.set_num_threads(1)
    accelerator = distributed.make_accelerator(run.get("bf16", False), sharding)
    n = accelerator.num_processes
    cfg = train.Config(**run, prompts_per_step=run["generation_batch"] * n,
                       max_new_tokens=new, plan_prompt_tokens=prompt, credit="flow",
                       min_difficulty=0, max_difficulty=1)
    torch.manual_seed(0)
    if folder:  # as harness.load_for_training loads it
        lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                  attn_implementation="sdpa")
    else:
        lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.generation_config.eos_token_id = 1
    if not accelerator.is_fsdp2:
        lm.to(accelerator.device)
    policy = harness.Policy(lm, cfg.temperature)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    model, optimizer = distributed.prepare(accelerator, policy, optimizer)
    plan = memory.plan(cfg, n, sharding, 1 << 40, "cuda" if cuda else "cpu",
                       memory.shape_of_config(config, pretrained or "random"))
    if sharding == "fsdp":
        check_sharded(accelerator, model, plan.shape.params)

    generator = torch.Generator().manual_seed(1 + accelerator.process_index)

    def prompts(count: int) -> list[str]:
        ids = torch.randint(2, vocab, (count, prompt), generator=generator)
        return [" ".join(f"t{i}" for i in row) for row in ids.tolist()]

    def fixed(lm, count: int, **kwargs):
        return rollout.generate(lm, tokenizer, prompts(count),
                                max_new_tokens=new, min_new_tokens=new, chat_template=False,
                                **kwargs)

    # warm-up: one update on random rows, so that AdamW's moments exist
    rows = cfg.micro_batch
    ids = torch.randint(2, vocab, (rows, prompt + new), generator=generator)
    response = torch.arange(prompt + new).expand(rows, -1) >= prompt  # [rows, T]
    warm = train.Batch(ids.to(accelerator.device), torch.ones_like(ids).to(accelerator.device),
                       response.to(accelerator.device), torch.ones(ids.shape),
                       torch.randn(rows, generator=generator))
    train.update(cfg, accelerator, model, optimizer, warm)
    del warm

    measured = {}
    before = peak.current()
    with distributed.full_parameters(accelerator, model), accelerator.autocast():
        measured["gathered"] = peak.current() - before  # FSDP's gathered copy (DDP: nothing)
        peak.reset()
        r = fixed(lm, run["generation_batch"], n=cfg.group_size, capture=True)
        measured["sample"] = peak.read()
        r.answer_mask = r.response_mask & (r.response_mask.cumsum(-1) > new - 4)  # last 4 tokens
        keep = torch.ones(len(r.texts), dtype=torch.bool)
        advantages = torch.randn(len(r.texts), generator=generator)
        peak.reset()
        batch = train.credit_batch(cfg, r, keep, advantages, policy, 0, accelerator.process_index)
        measured["credit"] = peak.read()
    del r
    peak.reset()
    train.update(cfg, accelerator, model, optimizer, batch)
    measured["update"] = peak.read()
    del batch
    with distributed.full_parameters(accelerator, model), accelerator.autocast():
        peak.reset()
        fixed(lm, cfg.micro_batch * 4, n=1, capture=False, **rollout.GREEDY)
        measured["evaluate"] = peak.read()
    predicted = {p: plan.peak(p) for p in PHASES if p != "gathered"}
    predicted["update"] = max(plan.peak("update"), plan.peak("step"))
    # the row is FSDP's gathered copy (under DDP, bf16 autocast's cache: built during sampling)
    predicted["gathered"] = 0
    if sharding == "fsdp":
        predicted["gathered"] = plan.rows["whole model in the compute dtype (sampling)"]
    result = {p: (predicted[p], measured[p]) for p in PHASES}
    del model, optimizer, policy, lm
    distributed.shut_down(accelerator)
    return result


# --------------------------------------------------------------------------------------------------
# The table


def run_config(name: str, spec: dict, timeout: int) -> dict:
    """Runs `spec` in fresh processes; {phase: (predicted, [measured on each process])}.
    Each process writes its result to its own file (lines of two processes sharing the
    launcher's stdout can interleave)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error",
               MALLOC_MMAP_THRESHOLD_="65536")
    with tempfile.TemporaryDirectory(prefix="memory_check-") as folder:
        worker = [str(Path(__file__).resolve()), "--worker", json.dumps(spec), "--results",
                  folder]
        if spec["processes"] == 1:
            cmd = [sys.executable] + worker
        else:
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "configs" / "accelerate" / "ddp.yaml"), "--num_processes",
                   str(spec["processes"]), "--main_process_port", "0"] + worker
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
        results = [json.loads(f.read_text()) for f in sorted(Path(folder).glob("*.json"))]
    if len(results) != spec["processes"]:
        raise RuntimeError(f"{name}: {len(results)} of {spec['processes']} processes reported")
    return {p: (results[0][p][0], [r[p][1] for r in results]) for p in PHASES}


def table_row(name: str, phase: str, predicted: float, measured: float) -> str:
    ratio = f"{measured / predicted:14.2f}" if predicted else f"{'-':>14s}"
    return f"{name:>18s} {phase:>9s} {predicted / MB:9.0f} {measured / MB:12.0f} {ratio}"


def main(argv: list[str] | None = None) -> list[tuple]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="configurations to run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    ap.add_argument("--json", type=Path,
                    help="add each configuration's figures to this JSON file (kept: the others "
                         "there): {config: {seconds, processes, sharding, bf16, phases: {phase: "
                         "{plan_mb, measured_mb (largest over processes), per_process_mb}}}}")
    args = ap.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        result = measure(spec.get("shape"), spec["run"], spec["prompt"], spec["new"],
                         spec["sharding"], spec.get("model"))
        (args.results / f"{os.environ.get('RANK', '0')}.json").write_text(json.dumps(result))
        return []
    rows = []
    print(f"{'config':>18s} {'phase':>9s} {'plan MB':>9s} {'measured MB':>12s} "
          f"{'measured/plan':>14s}")
    for name in args.only or CONFIGS:
        spec, start = CONFIGS[name], time.perf_counter()
        phases = {}
        for phase, (predicted, measured) in run_config(name, spec, args.timeout).items():
            rows.append((name, phase, predicted, max(measured)))
            print(table_row(name, phase, predicted, max(measured)), flush=True)
            phases[phase] = {"plan_mb": round(predicted / MB, 1),
                             "measured_mb": round(max(measured) / MB, 1),
                             "per_process_mb": [round(m / MB, 1) for m in measured]}
        seconds = time.perf_counter() - start
        print(f"{name}: {seconds:.0f} s", flush=True)
        if args.json:  # after each configuration: a later one failing loses nothing
            figures = json.loads(args.json.read_text()) if args.json.is_file() else {}
            figures[name] = {"seconds": round(seconds), "processes": spec["processes"],
                             "sharding": spec["sharding"], "bf16": spec["run"].get("bf16", False),
                             "phases": phases}
            args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
