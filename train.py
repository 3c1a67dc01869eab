"""GRPO with FlowTracer credit on one node: sample, score, trace the flow, update.

    python train.py                                   # the embedded default: tiny Qwen3 on synthetic arithmetic, CPU
    python train.py --credit uniform                  # the same run with plain GRPO credit
    python train.py --preset qwen3-4b-math-1k         # the paper's setup (Sec. 4, App. C.3) on one GPU
    accelerate launch --config_file configs/accelerate/ddp.yaml train.py --preset qwen3-4b-math-1k
    python train.py --out runs/x --resume             # continue from the last checkpoint of runs/x

One step (one optimizer update, as in the paper: the rollout batch is the global batch):
  1. rollout   sample `group_size` responses for each of `prompts_per_step` prompts with HF generate; the
               middle-layer attention is captured on the way (rollout.py) when the credit strategy needs it.
  2. reward    verify each response (rewards.py), group-relative advantages (grpo.group_advantages, eq. 10).
  3. filter    drop groups whose mean reward lies outside [min_difficulty, max_difficulty] (paper: 0.1-0.95)
               and responses cut off at max_new_tokens (the paper's response-length filter).
  4. credit    gamma [B, T] from the chosen strategy (credit.py); for `flow`, eqs. (1)-(6) via flow.py.
  5. update    the gamma-weighted clipped surrogate of eq. (5) (grpo.policy_loss), accumulated over
               micro-batches, normalised over the whole global batch, one AdamW step.
Held-out accuracy is measured greedily before training, every `eval_every` steps and at the end; the run ends
by printing `held-out accuracy: BEFORE -> AFTER` and leaves metrics.jsonl, curves.png and checkpoints in --out.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

import data
import flow
import grpo
import rewards
import rollout
import tasks
from credit import ATTENTION_STRATEGIES, CREDIT_STRATEGIES, credit_gamma
from eval import evaluate

ROOT = Path(__file__).resolve().parent
TINY_MODEL = str(ROOT / "tiny" / "qwen3-arith")


# ----------------------------------------------------------------------------------------------------------------
# Configuration: one dataclass, the defaults are the embedded tiny run; presets override fields


@dataclass
class Config:
    # model and data
    model: str = TINY_MODEL  # a hub id or a local folder (save_pretrained format)
    data: str = "arith"  # "arith" (synthetic, data.py), a benchmark name of data.BENCHMARKS, or a local .jsonl
    data_format: str | None = None  # the row format of a local .jsonl (a key of data.FORMATS); guessed if None
    data_fields: str | None = None  # map our field names onto a JSONL's, e.g. "prompt=question,gold=final"
    data_dir: str | None = None  # a folder holding the benchmark files (read instead of the hub)
    eval_data: str = "arith"  # held-out set, same kinds of source as `data`
    eval_limit: int | None = None  # evaluate on the first K held-out items only
    template: str = "chat"  # how prompts are rendered: data.TEMPLATES
    # rollout
    steps: int = 100
    prompts_per_step: int = 32  # global, over all processes
    group_size: int = 8  # responses per prompt (G of eq. 10)
    max_new_tokens: int = 40
    temperature: float = 0.99
    top_p: float = 1.0
    top_k: int = 100
    min_difficulty: float = 0.1  # keep a group when min <= mean reward <= max
    max_difficulty: float = 0.95
    drop_truncated: bool = True  # responses without EOS within max_new_tokens get no gradient
    # credit (eqs. 5-6)
    credit: str = "flow"
    ratio: float = flow.RATIO
    gamma: float = flow.GAMMA
    layers: list[int] | None = None  # attention layers averaged into the graph; None = rollout.default_layers
    # optimisation
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    micro_batch: int = 64  # sequences per forward/backward (and per flow solve) on one process
    generation_batch: int | None = None  # prompts per generate call on one process (None: all of them)
    clip_eps: float = 0.2
    dual_clip: float | None = 3.0
    adv_clip: float | None = 2.0
    aggregation: str = "seq-mean"  # eq. (5); "token-mean" for DAPO's
    # system
    bf16: bool = False  # autocast in bf16 (master weights stay float32)
    gradient_checkpointing: bool = False
    reward_workers: int = 0  # 0: score in this process (1 s deadline per call); N: rewards.score_batch pool
    eval_every: int = 10
    save_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    out: str | None = None  # run folder; default runs/<preset>-<credit>-seed<seed>
    resume: bool = False
    overwrite: bool = False
    plot_ema: float | None = None  # smooth the plotted curves with the paper's peak-tracking EMA (App. C.3)
    preset: str = "tiny"


_QWEN3_MATH = dict(
    data="dapo", eval_data="math500", eval_limit=None, template="chat", prompts_per_step=64, group_size=8,
    micro_batch=32, lr=1e-6, warmup_steps=20, bf16=True, gradient_checkpointing=True, reward_workers=4,
    eval_every=50, save_every=50, keep_checkpoints=3,
    # Qwen3-4B keeps 147 KB of KV cache per token: 4 prompts x 8 = 32 sequences of ~1.3K tokens take ~6 GB next to
    # the 64 GB of float32 weights, gradients and Adam state that DDP holds on every GPU.
    generation_batch=4,
)
# 8K responses: 8 sequences per generate call (KV ~10 GB, attention buffer 8 x 8.5K^2 x 4 B = 2.3 GB).
_LONG = dict(generation_batch=1, micro_batch=8)
_LLAMA_MATH = dict(_QWEN3_MATH, template="fewshot", eval_data="gsm8k")
PRESETS: dict[str, dict] = {
    "tiny": {},
    "qwen3-4b-math-1k": dict(_QWEN3_MATH, model="Qwen/Qwen3-4B-Base", max_new_tokens=1024, steps=500),
    "qwen3-4b-math-8k": dict(_QWEN3_MATH, model="Qwen/Qwen3-4B-Base", max_new_tokens=8192, steps=500, **_LONG),
    "qwen3-8b-math-1k": dict(_QWEN3_MATH, model="Qwen/Qwen3-8B-Base", max_new_tokens=1024, steps=600),
    "qwen3-8b-math-8k": dict(_QWEN3_MATH, model="Qwen/Qwen3-8B-Base", max_new_tokens=8192, steps=600, **_LONG),
    "llama3.1-8b-math": dict(_LLAMA_MATH, model="meta-llama/Llama-3.1-8B", max_new_tokens=1024, steps=600),
    "llama3.2-3b-math": dict(_LLAMA_MATH, model="meta-llama/Llama-3.2-3B", max_new_tokens=1024, steps=500),
    "qwen3-4b-countdown": dict(_QWEN3_MATH, model="Qwen/Qwen3-4B-Base", data="countdown", eval_data="countdown",
                               eval_limit=1000, max_new_tokens=1024, steps=500),
    "qwen3-4b-crossthinkqa": dict(_QWEN3_MATH, model="Qwen/Qwen3-4B-Base", data="crossthinkqa",
                                  eval_data="crossthinkqa", max_new_tokens=1024, steps=500),
}


def parse_args(argv: list[str] | None = None) -> Config:
    """Config from the command line: --preset sets the defaults, every field is a flag that overrides them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    known, _ = pre.parse_known_args(argv)
    defaults = dataclasses.asdict(Config()) | PRESETS[known.preset] | {"preset": known.preset}

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="a named set of defaults")
    choices = {"credit": sorted(CREDIT_STRATEGIES), "template": list(data.TEMPLATES),
               "aggregation": ["seq-mean", "token-mean"]}
    for f in dataclasses.fields(Config):
        if f.name == "preset":
            continue
        flag, default = "--" + f.name.replace("_", "-"), defaults[f.name]
        if f.type == "bool":
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif f.name == "layers":
            ap.add_argument(flag, type=_int_list, default=default, help="comma-separated layer indices")
        else:
            ap.add_argument(flag, type=_parser_of(f.type), default=default, choices=choices.get(f.name))
    return Config(**vars(ap.parse_args(argv)))


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _parser_of(type_name: str):
    base = type_name.replace(" | None", "")
    convert = {"int": int, "float": float, "str": str}[base]
    if "None" not in type_name:
        return convert
    return lambda text: None if text.lower() == "none" else convert(text)


# ----------------------------------------------------------------------------------------------------------------
# Model, data and the policy wrapper


class Policy(torch.nn.Module):
    """The causal LM behind one forward that returns per-token log-probs (grpo.token_logprobs, [B, T-1]).

    accelerate wraps THIS module (DDP, FSDP, ...), so the gradient synchronisation sees the chunked log-prob
    computation as the model's forward; generation and saving use the inner `lm`.
    """

    def __init__(self, lm: torch.nn.Module, temperature: float):
        super().__init__()
        self.lm, self.temperature = lm, temperature

    def forward(self, input_ids, attention_mask, return_entropy: bool = False):
        return grpo.token_logprobs(self.lm, input_ids, attention_mask, self.temperature,
                                   return_entropy=return_entropy)


def load_model(cfg: Config, device: torch.device):
    """Model (float32 master weights, SDPA attention) and tokenizer, with the checks a run needs up front."""
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.template == "chat" and not tokenizer.chat_template:
        raise SystemExit(f"{cfg.model}: the tokenizer has no chat template; use --template fewshot (base models "
                         "such as Llama-3.x) or a model folder whose tokenizer_config.json holds one")
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32, attn_implementation="sdpa")
    except ValueError as e:  # transformers raises ValueError for an architecture without SDPA support
        raise SystemExit(f"{cfg.model}: cannot load with attn_implementation='sdpa', which the attention "
                         f"capture of rollout.py needs ({e})") from e
    if cfg.credit in ATTENTION_STRATEGIES:
        rollout.resolve_layers(model, cfg.layers)  # a bad --layers fails now, not after the first rollout
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device), tokenizer


def load_examples(source: str, cfg: Config, held_out: bool) -> list[data.Example]:
    """Training or held-out examples. The synthetic task's training stream never repeats a held-out prompt."""
    if held_out:  # --data-format and --data-fields describe the training file
        return data.load_examples(source, limit=cfg.eval_limit, data_dir=cfg.data_dir)
    if source in tasks.TASKS:
        return tasks.TASKS[source].training(cfg.steps * cfg.prompts_per_step, cfg.seed)
    fields = None
    if cfg.data_fields:
        pairs = [kv.split("=", 1) for kv in cfg.data_fields.split(",")]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"--data-fields wants ours=theirs pairs, e.g. prompt=question,gold=final; got "
                             f"{cfg.data_fields!r}")
        fields = dict(pairs)
    return data.load_examples(source, cfg.data_format, fields=fields, data_dir=cfg.data_dir)


def examples_for_step(examples: list[data.Example], step: int, n: int, seed: int) -> list[data.Example]:
    """The n prompts of a step: epochs of seeded permutations, so the order depends only on (seed, step)."""
    out, start = [], step * n
    while len(out) < n:
        epoch, offset = divmod(start + len(out), len(examples))
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out += [examples[i] for i in order[offset: offset + n - len(out)].tolist()]
    return out


# ----------------------------------------------------------------------------------------------------------------
# One step: rollout -> reward -> filter -> credit -> update


@dataclass
class Batch:
    """What the update needs, for this process's kept sequences."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    response_mask: torch.Tensor  # [B, T] bool
    gamma: torch.Tensor  # [B, T] float32 token credit
    advantages: torch.Tensor  # [B] eq. (10)

    def rows(self, index) -> "Batch":
        """The rows `index`, without the columns that are padding in all of them."""
        width = int(self.attention_mask[index].any(0).nonzero().max()) + 1 if self.attention_mask[index].any() else 1
        return Batch(*(getattr(self, f.name)[index][..., :width] if f.name != "advantages"
                       else self.advantages[index] for f in dataclasses.fields(self)))

    @staticmethod
    def cat(pieces: list["Batch"], pad_id: int) -> "Batch":
        """Stack batches of different lengths, right-padding the shorter ones (mask 0, gamma 1)."""
        width = max(p.input_ids.shape[1] for p in pieces)
        pads = {"input_ids": pad_id, "attention_mask": 0, "response_mask": False, "gamma": 1.0}
        return Batch(*(torch.cat([torch.nn.functional.pad(getattr(p, f.name), (0, width - p.input_ids.shape[1]),
                                                          value=pads[f.name]) if f.name in pads
                                  else getattr(p, f.name) for p in pieces]) for f in dataclasses.fields(Batch)))


def sample(cfg: Config, policy: Policy, tokenizer, examples: list[data.Example]) -> rollout.Rollout:
    """group_size responses per example; the attention is captured only for strategies that read it."""
    prompts, chat = zip(*(data.render_prompt(e.prompt, cfg.template) for e in examples))
    policy.lm.eval()
    r = rollout.generate(policy.lm, tokenizer, list(prompts), n=cfg.group_size, temperature=cfg.temperature,
                         top_p=cfg.top_p, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens,
                         capture=cfg.credit in ATTENTION_STRATEGIES, layers=cfg.layers, chat_template=chat[0])
    policy.lm.train()
    return r


def credit(cfg: Config, r: rollout.Rollout, policy: Policy, step: int, rank: int) -> torch.Tensor:
    """gamma [B, T] of the kept rows, computed micro-batch by micro-batch (the flow solve is [b, T, T] float64)."""
    gammas = []
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1009 + rank)  # for --credit random
    for idx in torch.arange(r.input_ids.shape[0]).split(cfg.micro_batch):
        part = r.rows(idx)
        entropy = None
        if cfg.credit == "entropy":  # the policy's own next-token entropy, one no-grad pass
            with torch.no_grad():
                _, entropy = policy(part.input_ids, part.attention_mask, return_entropy=True)
        gammas.append(credit_gamma(cfg.credit, part, ratio=cfg.ratio, gamma=cfg.gamma, entropy=entropy,
                                   model=policy.lm, generator=generator))
    return torch.cat(gammas)


def update(cfg: Config, accelerator: Accelerator, model, optimizer, batch: Batch) -> dict[str, float]:
    """One AdamW step on the global batch: eq. (5) summed over micro-batches and processes.

    Every process holds a shard of the kept sequences (at least one row; rows without response tokens count for
    nothing). The objective is the mean over ALL kept sequences (seq-mean) or response tokens (token-mean) of the
    global batch. policy_loss returns a mean over its micro-batch's rows (or tokens), so each micro-batch loss is
    weighted by rows_micro (tokens_micro) / total * world_size; DDP then averages the gradients over processes.
    Processes run the same number of micro-batches (DDP synchronises on the backward of the last one), padding
    with zero-weight passes where a process has fewer rows.
    """
    token_mean = cfg.aggregation == "token-mean"
    tokens = batch.response_mask[:, 1:].sum(-1)  # [B] response tokens that get a log-prob
    device, world = accelerator.device, accelerator.num_processes
    total = accelerator.reduce(tokens.sum() if token_mean else (tokens > 0).sum(), "sum").item()
    if total == 0:  # every process agrees: nothing to learn from in this step
        return {"skipped": 1.0}
    n_micro = torch.tensor(math.ceil(batch.input_ids.shape[0] / cfg.micro_batch), device=device)
    splits = torch.arange(batch.input_ids.shape[0]).tensor_split(int(accelerator.reduce(n_micro, "max")))
    sums: dict[str, float] = {}
    for i, idx in enumerate(splits):
        weight = (tokens[idx].sum().item() if token_mean else len(idx)) / total * world
        if len(idx) == 0:  # this process has run out of rows: a zero-weight pass keeps DDP in step
            idx, weight = torch.tensor([0]), 0.0
        mb = batch.rows(idx)
        sync = i == len(splits) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            logp = model(mb.input_ids, mb.attention_mask)  # [b, T-1]
            # One update per rollout (the paper's global batch = rollout batch), so old_logp = logp: r = 1.
            loss, stats = grpo.policy_loss(
                logp, logp.detach(), mb.advantages, mb.gamma[:, 1:], mb.response_mask[:, 1:], clip_eps=cfg.clip_eps,
                dual_clip=cfg.dual_clip, adv_clip=cfg.adv_clip, aggregation=cfg.aggregation)
            accelerator.backward(loss * weight)
        for k, v in {**stats, "loss": loss.item()}.items():  # statistics: weighted like the loss
            sums[k] = sums.get(k, 0.0) + v * weight / world
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sums = {k: accelerator.reduce(torch.tensor(v, device=device), "sum").item() for k, v in sorted(sums.items())}
    return sums | {"grad_norm": float(grad_norm)}


def rollout_piece(cfg: Config, policy: Policy, tokenizer, examples: list[data.Example], step: int, rank: int,
                  timer: "Timer") -> tuple[Batch, dict[str, float]]:
    """Rollout -> reward -> advantages (eq. 10) -> filter -> credit for some prompts (whole groups).

    Returns the kept rows and the sums behind the step's statistics.
    """
    with timer("generate"), torch.no_grad():
        r = sample(cfg, policy, tokenizer, examples)
    device = r.input_ids.device
    with timer("reward"):
        golds = [e.gold for e in examples for _ in range(cfg.group_size)]
        reward = torch.tensor(rewards.score_batch(examples[0].kind, r.texts, golds, workers=cfg.reward_workers),
                              device=device)  # [B]
        advantages = grpo.group_advantages(reward, cfg.group_size)  # [B] eq. (10)
        group_mean = reward.view(-1, cfg.group_size).mean(-1).repeat_interleave(cfg.group_size)  # [B]
        keep = (group_mean >= cfg.min_difficulty) & (group_mean <= cfg.max_difficulty)  # [B]
        eos = torch.tensor(rollout.eos_ids(policy.lm, tokenizer), device=device)
        finished = (torch.isin(r.input_ids, eos) & r.response_mask).any(-1)  # [B] stopped with EOS
        if cfg.drop_truncated:
            keep &= finished
    with timer("credit"):
        kept = keep.nonzero().squeeze(1)
        if len(kept) == 0:  # one row without response tokens: it weighs nothing, but no process runs out of rows
            kept = torch.zeros(1, dtype=torch.long, device=device)
            r.response_mask[0] = False
        r_kept = r.rows(kept)
        gamma = credit(cfg, r_kept, policy, step, rank)  # [b, T]
    piece = Batch(r_kept.input_ids, r_kept.attention_mask, r_kept.response_mask, gamma.to(device), advantages[kept])
    sums = {"reward": float(reward.sum()), "n": len(reward), "kept": float(keep.sum()),
            "response_len": float(r.lengths.sum()), "truncated": float((~finished).sum())}
    return piece, sums


def train_step(cfg: Config, accelerator: Accelerator, model, optimizer, tokenizer, examples, step: int) -> dict:
    """One step: this process's prompts are rolled out `generation_batch` at a time (each piece's attention is
    freed once its credit is computed), then one update on all kept rows of all processes."""
    policy: Policy = accelerator.unwrap_model(model)
    timer = Timer()
    chosen = examples_for_step(examples, step, cfg.prompts_per_step, cfg.seed)
    pieces, sums = [], {}
    with accelerator.split_between_processes(chosen) as mine, accelerator.autocast():
        chunk = cfg.generation_batch or len(mine)
        for start in range(0, len(mine), chunk):
            piece, piece_sums = rollout_piece(cfg, policy, tokenizer, mine[start: start + chunk], step,
                                              accelerator.process_index, timer)
            pieces.append(piece)
            sums = {k: sums.get(k, 0.0) + v for k, v in piece_sums.items()}
    batch = Batch.cat(pieces, tokenizer.pad_token_id)
    with timer("update"):
        stats = update(cfg, accelerator, model, optimizer, batch)
    names = sorted(sums)
    totals = dict(zip(names, accelerator.reduce(torch.tensor([sums[k] for k in names], dtype=torch.float64,
                                                             device=accelerator.device), "sum").tolist()))
    n = totals.pop("n")
    return {"step": step + 1, "samples": int(n), **{k: v / n for k, v in totals.items()}, **stats, **timer.seconds}


class Timer:
    """Wall-clock seconds per named phase: `with timer("generate"): ...`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds[f"time_{name}"] = self.seconds.get(f"time_{name}", 0.0) + time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------------
# Evaluation, checkpoints, logging


def held_out_accuracy(cfg: Config, accelerator: Accelerator, model, tokenizer, examples) -> float:
    """Greedy accuracy on the held-out set, split over the processes."""
    policy: Policy = accelerator.unwrap_model(model)
    policy.lm.eval()
    with accelerator.split_between_processes(examples) as mine, torch.no_grad(), accelerator.autocast():
        result = evaluate(policy.lm, tokenizer, mine, n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens,
                          template=cfg.template, batch_size=cfg.micro_batch * 4, progress=False,
                          workers=cfg.reward_workers) if mine else {"rewards": []}
    policy.lm.train()
    scores = [x for row in gather_object(result["rewards"]) for x in row]  # [n_examples] over all processes
    return sum(scores) / len(scores)


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint only gets its final name once fully written)."""
    return sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(cfg: Config, accelerator: Accelerator, model, tokenizer, out: Path, step: int) -> None:
    """model/ (save_pretrained: loadable by from_pretrained) + state/ (optimizer, scheduler, RNG of every process),
    written to a temporary folder and renamed, so a kill never leaves a half-written checkpoint."""
    final = out / "checkpoints" / f"step-{step:06d}"
    tmp = out / "checkpoints" / f".tmp-step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "state"))
    policy: Policy = accelerator.unwrap_model(model)
    state = accelerator.get_state_dict(model)  # full weights, also under FSDP / ZeRO-3
    if accelerator.is_main_process:
        lm_state = {k.removeprefix("lm."): v for k, v in state.items()}
        policy.lm.save_pretrained(tmp / "model", state_dict=lm_state)
        tokenizer.save_pretrained(tmp / "model")
        (tmp / "step.json").write_text(json.dumps({"step": step}))
        os.replace(tmp, final)
        for old in checkpoint_dirs(out)[: -cfg.keep_checkpoints]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def peak_ema(values: list[float], alpha: float) -> list[float]:
    """The paper's peak-tracking EMA (App. C.3): ema_t = alpha * max(x_t, ema_{t-1}) + (1 - alpha) * ema_{t-1}."""
    out: list[float] = []
    for x in values:
        out.append(x if not out else alpha * max(x, out[-1]) + (1 - alpha) * out[-1])
    return out


def plot(records: list[dict], path: Path, ema: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    smooth = (lambda v: peak_ema(v, ema)) if ema else (lambda v: v)
    train = [r for r in records if "reward" in r]
    evals = [r for r in records if "eval_accuracy" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot([r["step"] for r in train], smooth([r["reward"] for r in train]))
    axes[0].set(title="training reward (mean over samples)", xlabel="step")
    axes[1].plot([r["step"] for r in evals], smooth([r["eval_accuracy"] for r in evals]), marker="o")
    axes[1].set(title="held-out accuracy (greedy)", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(path.parent.name + (f"  (peak-tracking EMA, alpha={ema})" if ema else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class MetricsLog:
    """metrics.jsonl (one JSON object per line; on resume, lines past the checkpoint are dropped) + tensorboard."""

    def __init__(self, out: Path, resume_step: int, enabled: bool):
        self.path, self.enabled, self.records = out / "metrics.jsonl", enabled, []
        if not enabled:
            return
        if resume_step and self.path.exists():
            lines = self.path.read_text().splitlines()
            self.records = [r for r in map(json.loads, lines) if r["step"] <= resume_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step":
                    self.tb.add_scalar(k, v, record["step"])


# ----------------------------------------------------------------------------------------------------------------


def shut_down(accelerator: Accelerator) -> None:
    """End a run in step: free the DDP wrapper (it holds the process group) while every process is still alive,
    then destroy the group. A gloo group whose last reference goes at interpreter exit, after a peer has already
    exited, can hang in its destructor. Call it after the last reference to the prepared model is dropped."""
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    out = Path(cfg.out or ROOT / "runs" / f"{cfg.preset}-{cfg.credit}-seed{cfg.seed}")
    # cpu=True without CUDA: several processes then run DDP over gloo (`accelerate launch --multi_gpu ...`).
    accelerator = Accelerator(mixed_precision="bf16" if cfg.bf16 else "no", cpu=not torch.cuda.is_available())
    if cfg.prompts_per_step % accelerator.num_processes:
        raise SystemExit(f"--prompts-per-step {cfg.prompts_per_step} must be divisible by the number of "
                         f"processes ({accelerator.num_processes})")
    last = checkpoint_dirs(out)[-1] if checkpoint_dirs(out) else None
    if last and not (cfg.resume or cfg.overwrite):
        raise SystemExit(f"{out} already holds checkpoints: pass --resume to continue it, --overwrite to start "
                         "over, or --out for a new run folder")
    if cfg.resume and last is None:
        raise SystemExit(f"--resume: no checkpoint in {out}/checkpoints")
    if cfg.overwrite and accelerator.is_main_process:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    set_seed(cfg.seed, device_specific=True)

    try:  # data first: a broken file fails in a second, not after the model has loaded
        train_examples = load_examples(cfg.data, cfg, held_out=False)
        eval_examples = load_examples(cfg.eval_data, cfg, held_out=True)
    except (ValueError, KeyError, FileNotFoundError, ImportError) as e:
        raise SystemExit(f"train.py: {e}") from e
    kinds = {e.kind for e in train_examples}
    if len(kinds) != 1:
        raise SystemExit(f"{cfg.data}: training examples mix reward kinds {sorted(kinds)}")
    lm, tokenizer = load_model(cfg, accelerator.device)
    policy = Policy(lm, cfg.temperature)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, cfg.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    model, optimizer = accelerator.prepare(policy, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # not prepared: accelerate would step it once per process

    start = 0
    if cfg.resume:
        accelerator.load_state(str(last / "state"))
        start = json.loads((last / "step.json").read_text())["step"]
        accelerator.print(f"resumed from {last} (step {start})")
    log = MetricsLog(out, start, accelerator.is_main_process)
    first_eval = next((r["eval_accuracy"] for r in log.records if r["step"] == 0 and "eval_accuracy" in r), None)
    if first_eval is None:
        first_eval = held_out_accuracy(cfg, accelerator, model, tokenizer, eval_examples)
        log.write({"step": 0, "eval_accuracy": first_eval})
    accuracy = first_eval
    bar = tqdm(range(start, cfg.steps), desc="train", disable=not accelerator.is_main_process, dynamic_ncols=True)
    for step in bar:
        record = train_step(cfg, accelerator, model, optimizer, tokenizer, train_examples, step)
        record["lr"] = scheduler.get_last_lr()[0]
        scheduler.step()
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            accuracy = record["eval_accuracy"] = held_out_accuracy(cfg, accelerator, model, tokenizer, eval_examples)
        log.write(record)
        bar.set_postfix(reward=f"{record['reward']:.3f}", acc=f"{accuracy:.3f}")
        if cfg.save_every and (done % cfg.save_every == 0 or done == cfg.steps):
            save_checkpoint(cfg, accelerator, model, tokenizer, out, done)
    if accelerator.is_main_process:
        plot(log.records, out / "curves.png", cfg.plot_ema)
    accelerator.print(f"run folder: {out}")
    accelerator.print(f"held-out accuracy: {first_eval:.3f} -> {accuracy:.3f}")
    del model, optimizer, policy
    shut_down(accelerator)
    return {"before": first_eval, "after": accuracy, "out": str(out)}


if __name__ == "__main__":
    main(sys.argv[1:])
