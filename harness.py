"""What train.py's main needs around the step: the run (`train`: load, begin the run folder, step,
evaluate, log, save, finish), the Policy the update calls, the model and the data, loaded and
checked; the prompts of each step; held-out accuracy; the phase timer; the optimizer flags of a
resumed run; why a step kept no sample.

Nothing here is the method: skip it on a first read of train.py.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

import capture
import credit
import data
import distributed
import grpo
import guards
import memory
import metrics
import runs
import tasks
from config import Config
from dataspec import Example
from eval import evaluate


def train(cfg: Config, accelerator: Accelerator, run: runs.Run, plan: memory.Plan,
          train_step: Callable[..., dict]) -> dict:
    """The run train.main has opened: load data and model, begin the run folder, then
    train_step(cfg, accelerator, wrapped, optimizer, tokenizer, examples, step) for each step,
    with the held-out accuracy, metrics.jsonl, the progress bar and the checkpoints; finish."""
    out = run.out
    accelerator.print(memory.report(cfg, plan))
    if cfg.prompts_per_step % accelerator.num_processes:
        raise ValueError(f"--prompts-per-step {cfg.prompts_per_step} must be divisible by the "
                         f"number of processes ({accelerator.num_processes})")
    set_seed(cfg.seed, device_specific=True)

    # data first: a broken file fails in a second, before the model loads
    eval_examples = held_out_examples(cfg)
    train_examples = data.without_overlap(training_examples(cfg), eval_examples)
    kinds = {e.kind for e in train_examples}
    if len(kinds) != 1:
        raise ValueError(f"{cfg.data}: training examples mix reward kinds {sorted(kinds)}")
    # FSDP moves each process's shards to its device itself: the whole model never lands there
    lm, tokenizer = load_for_training(cfg, torch.device("cpu") if accelerator.is_fsdp2
                                      else accelerator.device)
    unspellable = accelerator.is_main_process and guards.warn_unencodable(
        "train.py", tokenizer, {cfg.data: train_examples, cfg.eval_data: eval_examples}, cfg.model)
    runs.begin(accelerator, run)  # config.json, run.json: the folder is this run's now
    policy = Policy(lm, cfg.temperature)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, cfg.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    wrapped, optimizer = distributed.prepare(accelerator, policy, optimizer)
    # not prepared: accelerate would step it once per process
    accelerator.register_for_checkpointing(scheduler)

    if run.checkpoint is not None:
        runs.load_checkpoint(accelerator, run)
        # a --lr accepted on --resume applies
        set_optimizer_flags(cfg, optimizer, scheduler)
    log = metrics.MetricsLog(out, run.metrics, accelerator.is_main_process)
    if run.before is None:  # a new run: the held-out accuracy before RL, kept with the run
        run.measured(0, held_out_accuracy(cfg, accelerator, wrapped, tokenizer, eval_examples))
        log.write({"step": 0, "eval_accuracy": run.before})
    bar = tqdm(range(run.start, cfg.steps), desc="train", disable=not accelerator.is_main_process,
               dynamic_ncols=True, initial=run.start, total=cfg.steps)  # a resumed run counts on
    said_why = False
    for step in bar:
        record = train_step(cfg, accelerator, wrapped, optimizer, tokenizer, train_examples, step)
        record["lr"] = optimizer.param_groups[0]["lr"]  # the step's learning rate
        if not record.get("skipped"):  # the schedule counts updates
            scheduler.step()
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            accuracy = held_out_accuracy(cfg, accelerator, wrapped, tokenizer, eval_examples)
            record["eval_accuracy"] = run.measured(done, accuracy)
        log.write(record)
        skipped = sum(1 for r in log.records if r.get("skipped"))
        if record.get("skipped") and not said_why and accelerator.is_main_process:
            said_why = True  # the first step that trains on nothing says why
            tqdm.write(f"train.py: warning: step {done} kept 0 of {record['samples']} samples and "
                       f"made no update: {why_nothing_kept(cfg, record, unspellable)}",
                       file=sys.stderr)
        bar.set_postfix(reward=f"{record['reward']:.3f}", acc=f"{run.accuracy:.3f}",
                        **({"skipped": skipped} if skipped else {}))
        if cfg.save_every and (done % cfg.save_every == 0 or done == cfg.steps):
            runs.save_checkpoint(accelerator, wrapped, tokenizer, run, log.records, done,
                                 cfg.keep_checkpoints)
    bar.close()
    if accelerator.is_main_process:
        metrics.plot(log.records, out / "curves.png", cfg.plot_ema)
        skipped = sum(1 for r in log.records if r.get("skipped"))
        if 2 * skipped > cfg.steps:  # all or most of the steps: the run trained on nothing
            print(f"train.py: warning: {skipped} of {cfg.steps} steps kept no sample and made no "
                  "update" + (": the model is the one the run started from" if skipped == cfg.steps
                              else ""), file=sys.stderr)
    result = runs.finish(accelerator, run)  # run.json: finished; the closing lines; the lock goes
    del wrapped, optimizer, policy
    distributed.shut_down(accelerator)
    return result


def why_nothing_kept(cfg: Config, record: dict, unspellable: bool = False) -> str:
    """Why a step kept no sample (train.score_and_filter's filters), from its record's shares."""
    n, why = record["samples"], []
    cut = round(record["truncated"] * n) if cfg.drop_truncated else 0
    if cut:
        why.append(f"{cut} were cut off at --max-new-tokens {cfg.max_new_tokens} before an "
                   "end-of-sequence token")
    if cut < n:
        band = f"[--min-difficulty {cfg.min_difficulty}, --max-difficulty {cfg.max_difficulty}]"
        if record["reward"] in (0.0, 1.0):
            why.append(f"every response scored {record['reward']:g}, so no group's rewards vary "
                       f"(its mean reward is outside {band})")
        else:
            why.append(f"no group's mean reward lies within {band}: each is too hard or too "
                       "easy")
    if unspellable:
        why.append("the prompts the tokenizer cannot spell (warned above) reach the model garbled")
    return "; ".join(why)


class Policy(torch.nn.Module):
    """The causal LM behind one forward that returns per-token log-probs ([B, T-1]).

    accelerate wraps THIS module (DDP, FSDP, ...), so the gradient synchronisation sees the chunked
    log-prob computation (grpo.token_logprobs) as the model's forward; generation and saving use
    `lm`.
    """

    def __init__(self, lm: torch.nn.Module, temperature: float):
        super().__init__()
        self.lm, self.temperature = lm, temperature
        self._no_split_modules = lm._no_split_modules  # FSDP's units: one per decoder layer

    def forward(self, input_ids, attention_mask):
        return grpo.token_logprobs(self.lm, input_ids, attention_mask, self.temperature)


def load_for_training(cfg: Config, device: torch.device):
    """The causal LM (float32 master weights, SDPA attention) and its tokenizer, checked for a
    run's needs: (lm, tokenizer)."""
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.template == "chat" and not tokenizer.chat_template:
        raise ValueError(f"{cfg.model}: the tokenizer has no chat template; use --template fewshot "
                         "(base models such as Llama-3.x) or a model folder whose "
                         "tokenizer_config.json holds one")
    try:
        lm = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32,
                                                  attn_implementation="sdpa")
    except ValueError as e:  # transformers' error for an architecture without SDPA support
        raise ValueError(f"{cfg.model}: cannot load with attn_implementation='sdpa', which the "
                         f"attention capture of capture.py needs ({e})") from e
    if cfg.credit in credit.ATTENTION_STRATEGIES:
        capture.check_layers(lm, cfg.layers)  # a bad --layers fails now, not after a rollout
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return lm.to(device), tokenizer


# A synthetic task's problems are drawn and shuffled CHUNK_STEPS steps' prompts at a time, so
# that the prompts of a step do not depend on --steps: a longer run draws more chunks after the
# same first ones. The embedded default (100 steps) draws one chunk: the problems and the order it
# drew when the list was --steps x --prompts-per-step long, so its figures stand.
CHUNK_STEPS = 100


def training_examples(cfg: Config) -> list[Example]:
    """The training set. A synthetic task (tasks.TASKS) draws problems outside its held-out set,
    in whole chunks (`shuffle_pool`): a longer run's list begins with a shorter run's."""
    if cfg.data in tasks.TASKS:
        chunks = math.ceil(cfg.steps / CHUNK_STEPS)
        return tasks.TASKS[cfg.data].training(chunks * shuffle_pool(cfg, []), cfg.seed)
    return data.load_source(cfg.data, cfg.data_format, cfg.data_fields, cfg.data_dir)


def shuffle_pool(cfg: Config, examples: list) -> int:
    """How many examples one seeded permutation of `examples_for_step` covers: a synthetic task's
    chunk (CHUNK_STEPS x --prompts-per-step), else the whole list (an epoch)."""
    return CHUNK_STEPS * cfg.prompts_per_step if cfg.data in tasks.TASKS else len(examples)


def held_out_examples(cfg: Config) -> list[Example]:
    """The held-out set (--data-format and --data-fields describe every local file named)."""
    return data.load_source(cfg.eval_data, cfg.data_format, cfg.data_fields, cfg.data_dir,
                            limit=cfg.eval_limit)


def examples_for_step(examples: list, step: int, n: int, seed: int, pool: int | None = None
                      ) -> list:
    """The n prompts of a step: positions step*n ... of a stream that reads the list in pools of
    `pool` consecutive examples (default: all of them, an epoch), each pool in the order of a
    seeded permutation of its own (seed, pool number), pool after pool and around the list again.
    The order depends only on (seed, step) and the pools, so a resumed run sees the same prompts,
    and a run whose list only grows by whole pools (a synthetic task's, `training_examples`)
    begins as a shorter one."""
    pool = min(pool or len(examples), len(examples))
    starts = range(0, len(examples), pool)  # pool k reads examples[starts[k % len]:][:pool]
    out: list = []
    k = begin = 0  # pool k begins at position `begin` of the stream
    while len(out) < n:
        first = starts[k % len(starts)]
        size = min(pool, len(examples) - first)
        at = step * n + len(out) - begin  # the next position wanted, within pool k
        if at >= size:
            k, begin = k + 1, begin + size
            continue
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + k))
        out += [examples[first + i] for i in order[at : at + n - len(out)].tolist()]
    return out


def held_out_accuracy(cfg: Config, accelerator: Accelerator, wrapped, tokenizer,
                      examples) -> float:
    """Greedy accuracy on the held-out set, split over the processes. wrapped: accelerate's
    wrapper of the Policy."""
    lm = accelerator.unwrap_model(wrapped).lm
    lm.eval()
    with accelerator.split_between_processes(examples) as mine, torch.no_grad(), \
            accelerator.autocast(), distributed.full_parameters(accelerator, wrapped):
        scores = []
        if mine:
            result = evaluate(lm, tokenizer, mine, n=1, temperature=0.0,
                              max_new_tokens=cfg.max_new_tokens, template=cfg.template,
                              batch_size=cfg.micro_batch * 4, progress=False,
                              workers=cfg.reward_workers)
            scores = result["rewards"]
    lm.train()
    every = [x for row in gather_object(scores) for x in row]  # [n_examples] over all processes
    return sum(every) / len(every)


class Timer:
    """Wall-clock seconds per named phase: `with timer("generate"): ...` adds to time_generate."""

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
        self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        """Add seconds measured elsewhere to time_{name}."""
        self.seconds[f"time_{name}"] = self.seconds.get(f"time_{name}", 0.0) + seconds


def set_optimizer_flags(cfg: Config, optimizer, scheduler) -> None:
    """--lr and --weight-decay over a loaded optimizer state, which holds the values it was saved
    with: the next step's learning rate is again lr times the warm-up factor of the schedule."""
    scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        group.update(initial_lr=cfg.lr, lr=cfg.lr * factor, weight_decay=cfg.weight_decay)
