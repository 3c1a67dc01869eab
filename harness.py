"""What train.py's main needs around the step: the model and the data, loaded and checked; the
prompts of each step; held-out accuracy; the phase timer; the optimizer flags of a resumed run.

Nothing here is the method: skip it on a first read of train.py.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import AutoModelForCausalLM, AutoTokenizer

import credit
import data
import distributed
import guards
import tasks
from config import Config
from dataspec import Example
from eval import evaluate


def load_for_training(cfg: Config, device: torch.device):
    """The causal LM (float32 master weights, SDPA attention) and its tokenizer, checked for a
    run's needs: (lm, tokenizer)."""
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.template == "chat" and not tokenizer.chat_template:
        raise SystemExit(f"{cfg.model}: the tokenizer has no chat template; use --template fewshot "
                         "(base models such as Llama-3.x) or a model folder whose "
                         "tokenizer_config.json holds one")
    try:
        lm = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32,
                                                  attn_implementation="sdpa")
    except ValueError as e:  # transformers' error for an architecture without SDPA support
        raise SystemExit(f"{cfg.model}: cannot load with attn_implementation='sdpa', which the "
                         f"attention capture of capture.py needs ({e})") from e
    if cfg.credit in credit.ATTENTION_STRATEGIES:
        guards.check_layers(lm, cfg.layers)  # a bad --layers fails now, not after a rollout
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
    wrapper of the train.Policy."""
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
