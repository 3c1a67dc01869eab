"""The configuration of a training run: one dataclass, named presets, and the command line.

The defaults of `Config` are the embedded tiny run (`python train.py`); a preset (`--preset NAME`)
replaces some defaults with the paper's setup (Sec. 4, App. C.3); every field is also a flag that
overrides both (`lr` is `--lr`, `max_new_tokens` is `--max-new-tokens`, a bool `x` is `--x` and
`--no-x`).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import credit
import data
import flow
import rewards

ROOT = Path(__file__).resolve().parent
TINY_MODEL = str(ROOT / "tiny" / "qwen3-arith")


@dataclass
class Config:
    # model and data
    model: str = TINY_MODEL  # a hub id or a local folder (save_pretrained format)
    # "arith" (a task of tasks.py), a benchmark name of data.BENCHMARKS, or a local .jsonl
    data: str = "arith"
    data_format: str | None = None  # a local .jsonl's row format (data.FORMATS); None: guess
    data_fields: str | None = None  # our field names onto a JSONL's: "prompt=question,gold=final"
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
    # the flow target of a response without \boxed{} or <answer>: None (the paper's: none, so
    # gamma 1 for that row) or "last_line" (rewards.answer_span)
    answer_fallback: str | None = None
    # credit (eqs. 5-6)
    credit: str = "flow"
    ratio: float = flow.RATIO
    gamma: float = flow.GAMMA
    layers: list[int] | None = None  # layers averaged into the graph; None: rollout.default_layers
    # optimisation
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    micro_batch: int = 64  # sequences per forward/backward (and per flow solve) on one process
    generation_batch: int | None = None  # prompts per generate call per process (None: all)
    clip_eps: float = 0.2
    dual_clip: float | None = 3.0
    adv_clip: float | None = 2.0
    aggregation: str = "seq-mean"  # eq. (5); "token-mean" for DAPO's
    # system
    bf16: bool = False  # autocast in bf16 (master weights stay float32)
    gradient_checkpointing: bool = False
    # 0: score in this process (1 s CPU-time deadline per call); N: a pool of N isolated workers
    reward_workers: int = 0
    eval_every: int = 10
    save_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    out: str | None = None  # run folder; default runs/<preset>-<credit>-seed<seed>
    resume: bool = False
    overwrite: bool = False
    plot_ema: float | None = None  # smooth the curves with the paper's peak-tracking EMA (App. C.3)
    preset: str = "tiny"


_QWEN3_MATH = dict(
    data="dapo", eval_data="math500", eval_limit=None, template="chat", prompts_per_step=64,
    group_size=8, micro_batch=32, lr=1e-6, warmup_steps=20, bf16=True, gradient_checkpointing=True,
    reward_workers=4, eval_every=50, save_every=50, keep_checkpoints=3,
    # Qwen3-4B keeps 147 KB of KV cache per token: 4 prompts x 8 = 32 sequences of ~1.3K tokens
    # take ~6 GB next to the 64 GB of float32 weights, gradients and Adam state of DDP per GPU.
    generation_batch=4,
)
# 8K responses: 8 sequences per generate call (KV ~10 GB, attention 8 x 8.5K^2 x 4 B = 2.3 GB).
_LONG = dict(generation_batch=1, micro_batch=8)
_LLAMA_MATH = dict(_QWEN3_MATH, template="fewshot", eval_data="gsm8k")
_QWEN3_4B = dict(_QWEN3_MATH, model="Qwen/Qwen3-4B-Base", max_new_tokens=1024, steps=500)
_QWEN3_8B = dict(_QWEN3_MATH, model="Qwen/Qwen3-8B-Base", max_new_tokens=1024, steps=600)
PRESETS: dict[str, dict] = {
    "tiny": {},
    "qwen3-4b-math-1k": _QWEN3_4B,
    "qwen3-4b-math-8k": dict(_QWEN3_4B, max_new_tokens=8192, **_LONG),
    "qwen3-8b-math-1k": _QWEN3_8B,
    "qwen3-8b-math-8k": dict(_QWEN3_8B, max_new_tokens=8192, **_LONG),
    "llama3.1-8b-math": dict(_LLAMA_MATH, model="meta-llama/Llama-3.1-8B", max_new_tokens=1024,
                             steps=600),
    "llama3.2-3b-math": dict(_LLAMA_MATH, model="meta-llama/Llama-3.2-3B", max_new_tokens=1024,
                             steps=500),
    # Train and held-out sets are disjoint (App. C.3: TinyZero's train/test protocol, CrossThinkQA's
    # official partition). Countdown: TinyZero's train split; held out: the first 1000 rows of its
    # test split (both shipped in ../shared/benchmarks). CrossThinkQA: ROLL's training file, which
    # is not shipped (data.BENCHMARKS["crossthinkqa-train"] says where to get it; without it the
    # run refuses to start); held out: the shipped 811-row sample, whose rows train.py drops from
    # the training file (data.without_overlap).
    "qwen3-4b-countdown": dict(_QWEN3_4B, data="countdown-train", eval_data="countdown",
                               eval_limit=1000),
    "qwen3-4b-crossthinkqa": dict(_QWEN3_4B, data="crossthinkqa-train", eval_data="crossthinkqa"),
}


def parse_args(argv: list[str] | None = None, description: str | None = None) -> Config:
    """Config from the command line: --preset sets the defaults, every field is a flag over them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    known, _ = pre.parse_known_args(argv)
    defaults = dataclasses.asdict(Config()) | PRESETS[known.preset] | {"preset": known.preset}

    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                    help="a named set of defaults")
    choices = {"credit": sorted(credit.CREDIT_STRATEGIES), "template": list(data.TEMPLATES),
               "aggregation": ["seq-mean", "token-mean"],
               "answer_fallback": list(rewards.FALLBACKS)}
    for f in dataclasses.fields(Config):
        if f.name == "preset":
            continue
        flag, default = "--" + f.name.replace("_", "-"), defaults[f.name]
        if f.type == "bool":
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif f.name == "layers":
            ap.add_argument(flag, type=_int_list, default=default,
                            help="comma-separated layer indices")
        else:
            ap.add_argument(flag, type=_parser_of(f.type), default=default,
                            choices=choices.get(f.name))
    return Config(**vars(ap.parse_args(argv)))


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        message = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _parser_of(type_name: str):
    """The argparse type of a Config field annotated `type_name` ("int", "float | None", ...)."""
    convert = {"int": int, "float": float, "str": str}[type_name.replace(" | None", "")]
    if "None" not in type_name:
        return convert

    def convert_or_none(text: str):
        if text.lower() == "none":
            return None
        return convert(text)

    return convert_or_none
