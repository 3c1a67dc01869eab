"""GRPO with FlowTracer credit on one node: sample, score, trace the flow, update.

    python train.py                               # the embedded default: tiny Qwen3, CPU
    python train.py --credit uniform              # the same run with plain GRPO credit
    python train.py --preset qwen3-8b-math-1k --plan --num-gpus 8   # memory per GPU; loads nothing
    accelerate launch --config_file configs/accelerate/ddp.yaml train.py --preset qwen3-4b-math-1k
                                                  # the paper's setup (Sec. 4, App. C.3), 8 GPUs
    python train.py --out runs/x --resume         # continue from the last checkpoint of runs/x

One step is one optimizer update (the paper's rollout batch is its global batch):
  1. sample   group_size responses for each of prompts_per_step prompts (rollout.generate, HF
              generate); the middle-layer attention is captured on the way (capture.py) if the
              strategy reads it (its share of time_generate is time_capture: FlowTracer's overhead
              per step is time_capture + time_credit, Table 6).
  2. score    verify each response (rewards.score_batch); group-relative advantages
              (grpo.group_advantages, eq. 10); filter: drop groups whose mean reward lies outside
              [min_difficulty, max_difficulty] (paper: 0.1-0.95) and responses cut off at
              max_new_tokens.
  3. credit   gamma [B, T] of the chosen strategy (credit.credit_gamma); for `flow`,
              flow.flow_credit: eqs. (1)-(4) and (6). Baselines: baselines.py.
  4. update   the gamma-weighted clipped surrogate of eq. (5) (grpo.policy_loss), accumulated over
              micro-batches, normalised over the whole global batch, one AdamW step.
The model has one name per role: `lm` is the causal LM (generation, saving), `policy` the
harness.Policy around it (its forward gives log-probs, grpo.token_logprobs), `wrapped` accelerate's
wrapper of the policy (DDP, FSDP; the update calls it).
With several processes, DDP or FSDP2 (--sharding; distributed.py); the memory plan (memory.py) is
printed at start, and a run predicted not to fit stops before the model is loaded.
Held-out accuracy is measured greedily before training, every eval_every steps and at the end; the
run prints `held-out accuracy: BEFORE -> AFTER` and leaves metrics.jsonl, curves.png and checkpoints
in the run folder (runs.py). The configuration and presets are in config.py; the run around the
step (harness.train), loading the model and the data, the held-out accuracy and the timer are
harness.py's (skip it on a first read).
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

import credit
import distributed
import grpo
import guards
import harness
import memory
import metrics
import models
import rewards
import rollout
import runs
from config import PRESETS, ROOT, Config, parse_args, validate  # noqa: F401
from dataspec import Example, render_prompt

# --------------------------------------------------------------------------------------------------
# One step: sample -> score and filter -> credit -> update


@dataclass
class Batch:
    """What the update needs, for this process's kept sequences."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    response_mask: torch.Tensor  # [B, T] bool
    gamma: torch.Tensor  # [B, T] float32 token credit
    advantages: torch.Tensor  # [B] eq. (10)

    def rows(self, index: torch.Tensor) -> Batch:
        """The rows `index`, without the columns that are padding in all of them."""
        used = self.attention_mask[index].any(0)  # [T]
        width = int(used.nonzero().max()) + 1 if used.any() else 1
        return Batch(input_ids=self.input_ids[index][:, :width],
                     attention_mask=self.attention_mask[index][:, :width],
                     response_mask=self.response_mask[index][:, :width],
                     gamma=self.gamma[index][:, :width], advantages=self.advantages[index])

    @staticmethod
    def cat(pieces: list[Batch], pad_id: int) -> Batch:
        """Stack batches of different lengths, right-padding the shorter ones (mask 0, gamma 1)."""
        width = max(p.input_ids.shape[1] for p in pieces)

        def stack(name: str, pad_value) -> torch.Tensor:
            padded = [torch.nn.functional.pad(getattr(p, name), (0, width - p.input_ids.shape[1]),
                                              value=pad_value) for p in pieces]
            return torch.cat(padded)

        return Batch(input_ids=stack("input_ids", pad_id),
                     attention_mask=stack("attention_mask", 0),
                     response_mask=stack("response_mask", False), gamma=stack("gamma", 1.0),
                     advantages=torch.cat([p.advantages for p in pieces]))


def sample(cfg: Config, lm, tokenizer, examples: list[Example]) -> rollout.Rollout:
    """1. group_size responses per example; the attention is captured if the strategy reads it."""
    prompts, chat = zip(*(render_prompt(e.prompt, cfg.template) for e in examples))
    lm.eval()
    ro = rollout.generate(lm, tokenizer, list(prompts), n=cfg.group_size,
                          temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                          max_new_tokens=cfg.max_new_tokens, layers=cfg.layers,
                          chat_template=chat[0], capture=cfg.credit in credit.ATTENTION_STRATEGIES,
                          answer_fallback=cfg.answer_fallback)
    lm.train()
    return ro


def score_and_filter(cfg: Config, ro: rollout.Rollout, examples: list[Example], eos: list[int]
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """2. rewards, advantages (eq. 10) and which rows to keep; also the sums behind the statistics.

    Returns advantages [B], keep [B] bool, sums."""
    golds = [e.gold for e in examples for _ in range(cfg.group_size)]
    scores = rewards.score_batch(examples[0].kind, ro.texts, golds, workers=cfg.reward_workers)
    reward = torch.tensor(scores, device=ro.input_ids.device)  # [B]
    advantages = grpo.group_advantages(reward, cfg.group_size)  # [B] eq. (10)
    group_mean = reward.view(-1, cfg.group_size).mean(-1).repeat_interleave(cfg.group_size)  # [B]
    keep = (group_mean >= cfg.min_difficulty) & (group_mean <= cfg.max_difficulty)  # [B]
    eos_ids = torch.tensor(eos, device=ro.input_ids.device)
    finished = (torch.isin(ro.input_ids, eos_ids) & ro.response_mask).any(-1)  # [B] ended with EOS
    if cfg.drop_truncated:
        keep &= finished
    sums = {"reward": float(reward.sum()), "n": len(reward), "kept": float(keep.sum()),
            "response_len": float(ro.lengths.sum()), "truncated": float((~finished).sum())}
    return advantages, keep, sums


def credit_batch(cfg: Config, ro: rollout.Rollout, keep: torch.Tensor, advantages: torch.Tensor,
                 lm, step: int, rank: int, tokenizer=None) -> Batch:
    """3. gamma [b, T] of the kept rows, micro-batch by micro-batch (the flow solve is [b, T, T]
    float64), and the Batch the update reads."""
    kept = keep.nonzero().squeeze(1)
    if len(kept) == 0:
        # Keep one row, without response tokens: it weighs nothing, but this process still has a row
        # for the update's passes (see distributed.micro_batches).
        kept = torch.zeros(1, dtype=torch.long, device=keep.device)
        ro.response_mask[0] = False
    ro = ro.rows(kept)
    # the draws of the `random` baseline: one stream per (seed, step, process)
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1009 + rank)
    gammas = [credit.credit_gamma(cfg.credit, ro.rows(idx), ratio=cfg.ratio, gamma=cfg.gamma,
                                  model=lm, temperature=cfg.temperature, generator=generator,
                                  tokenizer=tokenizer)
              for idx in torch.arange(ro.input_ids.shape[0]).split(cfg.micro_batch)]
    gamma = torch.cat(gammas).to(ro.input_ids.device)  # [b, T]
    return Batch(ro.input_ids, ro.attention_mask, ro.response_mask, gamma, advantages[kept])


def update(cfg: Config, accelerator: Accelerator, wrapped, optimizer, batch: Batch
           ) -> dict[str, float]:
    """4. The optimizer steps of one rollout batch: --ppo-epochs passes over it, each in
    --mini-batches steps (this process's kept rows in K parts; part k of every process makes the
    k-th step). One step (the default: the paper's global batch is the rollout batch) takes
    old_logp = logp, so r = 1 exactly and the clip of eq. (5) never acts; more steps read old_logp
    from one no-grad pass before the first (`old_logprobs`), so r moves and the clip acts.
    The statistics combine by metrics.STATISTICS over every micro-batch of every step and process;
    loss and grad_norm are means over the steps taken."""
    steps = cfg.mini_batches * cfg.ppo_epochs
    old_logp = None if steps == 1 else old_logprobs(cfg, accelerator, wrapped, batch)
    parts = torch.arange(batch.input_ids.shape[0]).tensor_split(cfg.mini_batches)
    taken, pieces = [], []
    for _ in range(cfg.ppo_epochs):
        for rows in parts:
            done = optimizer_step(cfg, accelerator, wrapped, optimizer, batch, rows, old_logp,
                                  pieces)
            taken += [done] if done else []
    if not taken:  # every process agrees: nothing to learn from in this step
        return {"skipped": 1.0}
    means = {k: sum(t[k] for t in taken) / len(taken) for k in ("loss", "grad_norm")}
    more = {} if steps == 1 else {"optimizer_steps": len(taken)}
    return distributed.combine(accelerator, pieces, metrics.STATISTICS) | means | more


def old_logprobs(cfg: Config, accelerator: Accelerator, wrapped, batch: Batch) -> torch.Tensor:
    """log pi_old of every token of this process's batch, [B, T-1]: one no-grad pass of the policy
    that sampled it, before its first optimizer step (r = pi / pi_old in every step after)."""
    n_rows, width = batch.input_ids.shape
    out = torch.zeros(n_rows, width - 1, device=batch.input_ids.device)  # [B, T-1]
    with torch.no_grad():
        for idx, real, _ in distributed.micro_batches(accelerator, wrapped, n_rows,
                                                      cfg.micro_batch):
            mb = batch.rows(idx)
            logp = wrapped(mb.input_ids, mb.attention_mask)  # [b, t-1]
            if real:
                out[idx, : logp.shape[1]] = logp.float()
    return out


def optimizer_step(cfg: Config, accelerator: Accelerator, wrapped, optimizer, batch: Batch,
                   rows: torch.Tensor, old_logp: torch.Tensor | None, pieces: list
                   ) -> dict[str, float] | None:
    """One AdamW step on the rows `rows` of this process's batch and the same part of every other
    process: eq. (5) summed over micro-batches and processes. None when no process has a response
    token there (no step).

    The objective is the mean over ALL the step's kept sequences (seq-mean) or response tokens
    (token-mean) over all processes. policy_loss returns the mean over its micro-batch's rows
    (tokens), so each micro-batch loss is weighted by rows_micro (tokens_micro) / total, times
    the number of processes since DDP averages the gradients over them. Rows without response
    tokens count for nothing. old_logp None: old_logp = logp (r = 1). Appends each micro-batch's
    (statistics, response tokens) to `pieces`.
    """
    token_mean = cfg.aggregation == "token-mean"
    tokens = grpo.align(batch.response_mask).sum(-1)[rows]  # [b] response tokens with a log-prob
    mine = tokens.sum() if token_mean else (tokens > 0).sum()
    total = accelerator.reduce(mine, "sum").item()
    if total == 0:
        return None
    loss_sum = 0.0
    for idx, real, in_step in distributed.micro_batches(accelerator, wrapped, len(rows),
                                                        cfg.micro_batch):
        index = rows[idx] if real else torch.zeros(1, dtype=torch.long)  # padding pass: weight 0
        n_tokens = tokens[idx].sum().item() if real else 0
        size = n_tokens if token_mean else len(idx)
        weight = size / total * accelerator.num_processes if real else 0.0
        mb = batch.rows(index)
        with in_step:
            logp = wrapped(mb.input_ids, mb.attention_mask)  # [b, T-1]
            old = logp.detach() if old_logp is None else old_logp[index, : logp.shape[1]]
            loss, stats = grpo.policy_loss(
                logp, old, mb.advantages, grpo.align(mb.gamma), grpo.align(mb.response_mask),
                clip_eps=cfg.clip_eps, dual_clip=cfg.dual_clip, adv_clip=cfg.adv_clip,
                aggregation=cfg.aggregation)
            accelerator.backward(loss * weight)
        loss_sum += loss.item() * weight / accelerator.num_processes
        pieces.append((stats, n_tokens))
    grad_norm = accelerator.clip_grad_norm_(wrapped.parameters(), cfg.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss = distributed.sum_over_processes(accelerator, {"loss": loss_sum})["loss"]
    return {"loss": loss, "grad_norm": float(grad_norm)}


def train_step(cfg: Config, accelerator: Accelerator, wrapped, optimizer, tokenizer, examples,
               step: int) -> dict:
    """One step. This process's prompts are sampled, scored and credited `generation_batch` prompts
    at a time (each piece's [N, T, T] attention is freed once it is credited), then one update on
    the kept rows of all processes."""
    lm = accelerator.unwrap_model(wrapped).lm
    eos = rollout.eos_ids(lm, tokenizer)
    timer, pieces, sums = harness.Timer(), [], Counter()
    chosen = harness.examples_for_step(examples, step, cfg.prompts_per_step, cfg.seed,
                                       harness.shuffle_pool(cfg, examples))
    with accelerator.split_between_processes(chosen) as mine, accelerator.autocast(), \
            distributed.full_parameters(accelerator, wrapped):
        size = cfg.generation_batch or len(mine)
        for start in range(0, len(mine), size):
            part = mine[start : start + size]
            with timer("generate"), torch.no_grad():
                ro = sample(cfg, lm, tokenizer, part)
            timer.add("capture", ro.capture_seconds)  # the capture's share of time_generate
            with timer("reward"):
                advantages, keep, piece_sums = score_and_filter(cfg, ro, part, eos)
            with timer("credit"):
                pieces.append(credit_batch(cfg, ro, keep, advantages, lm, step,
                                           accelerator.process_index, tokenizer))
            sums.update(piece_sums)
            del ro  # its [N, T, T] attention: not kept through the next piece or the update
    batch = Batch.cat(pieces, tokenizer.pad_token_id)
    with timer("update"):
        stats = update(cfg, accelerator, wrapped, optimizer, batch)
    totals = distributed.sum_over_processes(accelerator, sums)
    n = totals.pop("n")
    means = {k: v / n for k, v in totals.items()}
    return {"step": step + 1, "samples": int(n), **means, **stats, **timer.seconds}


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv, description=__doc__)
    out = Path(cfg.out or ROOT / "runs" / f"{cfg.preset}-{cfg.credit}-seed{cfg.seed}")
    cfg = runs.resumed_config(cfg, argv, out)  # --resume: the run's own flags under those given
    validate(cfg)  # every flag, before anything heavy
    cfg.model = models.resolve(cfg.model)  # a typo fails now; a .gguf / smollm2: its plain folder
    if cfg.plan:  # the memory plan alone: the model's config.json, no GPU, no weights
        raise SystemExit(memory.plan_command(cfg))
    guards.check_gpu(cfg.preset, cfg.model, PRESETS)
    plan = memory.check_run(cfg)  # a run predicted not to fit stops here, naming the fixes
    accelerator = distributed.make_accelerator(cfg.bf16, plan.sharding)
    # the run folder before anything loads: its lock, stale temporaries, the verified checkpoint
    # to resume; a mistake (no run to resume, a folder that holds one) stops here, and a
    # finished run prints its result
    run = runs.open_run(accelerator, out, cfg)
    if run.finished:
        result = runs.finish(accelerator, run)
        distributed.shut_down(accelerator)
        return result
    with runs.guarded(accelerator, run):  # a failed start leaves nothing; Ctrl-C: how to go on
        # load, begin the run folder, then train_step for each step; evaluate, log, save, finish
        return harness.train(cfg, accelerator, run, plan, train_step)


if __name__ == "__main__":
    guards.run("train.py", main, sys.argv[1:])
