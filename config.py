"""The configuration of a training run: one dataclass, named presets, and the command line.

The defaults of `Config` are the embedded tiny run (`python train.py`); a preset (`--preset NAME`)
replaces some defaults with the paper's setup (Sec. 4, App. C.3); every field is also a flag that
overrides both (`lr` is `--lr`, `max_new_tokens` is `--max-new-tokens`, a bool `x` is `--x` and
`--no-x`), and its `flag(default, help)` is what --help says about it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import credit
import data
import flow
import rewards

ROOT = Path(__file__).resolve().parent
TINY_MODEL = str(ROOT / "tiny" / "qwen3-arith")


_DATA_HELP = data.DATA_FLAGS  # (inside Config, `data` is the field)


def flag(default, help: str):
    """A Config field: its default and the --help text of its flag."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class Config:
    # model and data
    model: str = flag(TINY_MODEL, "a hub id (org/name) or a local model folder (save_pretrained "
                                  "format)")
    data: str = flag("arith", "training data: a task of tasks.py (arith), a benchmark name of "
                              "data.BENCHMARKS, or a local .jsonl")
    data_format: str | None = flag(None, _DATA_HELP["data_format"])
    data_fields: str | None = flag(None, _DATA_HELP["data_fields"])
    data_dir: str | None = flag(None, _DATA_HELP["data_dir"])
    eval_data: str = flag("arith", "held-out data, the same kinds of source as --data")
    eval_limit: int | None = flag(None, "evaluate on the first K held-out items only (None: all)")
    template: str = flag("chat", "how prompts are rendered: chat (the tokenizer's chat template) "
                                 "or fewshot (the paper's few-shot prompt, for base models)")
    # rollout
    steps: int = flag(100, "optimizer steps, one rollout batch each")
    prompts_per_step: int = flag(32, "prompts per step, over all processes")
    group_size: int = flag(8, "responses per prompt (G of eq. 10)")
    max_new_tokens: int = flag(40, "the longest response, in tokens")
    temperature: float = flag(0.99, "sampling temperature")
    top_p: float = flag(1.0, "nucleus sampling: keep the tokens of the top-p probability mass")
    top_k: int = flag(100, "sample among the k most likely tokens")
    min_difficulty: float = flag(0.1, "keep a group when min <= its mean reward <= max")
    max_difficulty: float = flag(0.95, "see --min-difficulty")
    drop_truncated: bool = flag(True, "responses without EOS within --max-new-tokens get no "
                                      "gradient")
    answer_fallback: str | None = flag(None, "the flow target of a response without \\boxed{} or "
                                             "<answer>: None (the paper's: none, so gamma 1 for "
                                             "that row) or last_line")
    # credit (eqs. 5-6)
    credit: str = flag("flow", "the token credit: flow (FlowTracer, eq. 6), uniform (GRPO), or a "
                               "baseline or ablation of credit.py")
    ratio: float = flag(flow.RATIO, "the share of response tokens that get gamma (eq. 6)")
    gamma: float = flag(flow.GAMMA, "the weight of the chosen tokens (eq. 6)")
    layers: list[int] | None = flag(None, "comma-separated layers averaged into the attention "
                                          "graph (None: the middle third)")
    # optimisation
    lr: float = flag(1e-4, "AdamW learning rate")
    warmup_steps: int = flag(0, "linear learning-rate warm-up steps")
    weight_decay: float = flag(0.0, "AdamW weight decay")
    max_grad_norm: float = flag(1.0, "clip the gradient norm to this")
    micro_batch: int = flag(64, "sequences per forward/backward (and per flow solve) on one "
                                "process: memory, not the update")
    generation_batch: int | None = flag(None, "prompts per generate call per process (None: "
                                              "all): memory, not the update")
    clip_eps: float = flag(0.2, "PPO clip range epsilon (eq. 5)")
    dual_clip: float | None = flag(3.0, "dual-clip constant for negative advantages (None: off)")
    adv_clip: float | None = flag(2.0, "clip the advantages to +-this (None: off)")
    aggregation: str = flag("seq-mean", "seq-mean (eq. 5: per sequence, then per group) or "
                                        "token-mean (DAPO's)")
    # system
    bf16: bool = flag(False, "autocast in bf16 (master weights stay float32)")
    gradient_checkpointing: bool = flag(False, "recompute activations in the backward pass")
    reward_workers: int = flag(0, "0: score in this process (1 s CPU-time deadline per call); "
                                  "N: a pool of N isolated workers")
    eval_every: int = flag(10, "measure held-out accuracy every N steps (and at the end)")
    save_every: int = flag(10, "checkpoint every N steps (and at the end; 0: never)")
    keep_checkpoints: int = flag(2, "keep the newest N checkpoints")
    seed: int = flag(0, "seed of the data order, sampling and the random credit")
    out: str | None = flag(None, "the run folder (None: runs/<preset>-<credit>-seed<seed>)")
    resume: bool = flag(False, "continue from the newest checkpoint of the run folder")
    overwrite: bool = flag(False, "delete the run folder's checkpoints and start over")
    plot_ema: float | None = flag(None, "smooth curves.png with the paper's peak-tracking EMA of "
                                        "this alpha (App. C.3)")
    preset: str = flag("tiny", "a named set of defaults (config.PRESETS)")


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
    # test split. CrossThinkQA: held out, the first 811 rows of ROLL's processed file (our
    # sample); trained on, the rows after them (data.BENCHMARKS, read from --data-dir or the
    # file's public URL); train.py also drops training rows whose prompt is held out
    # (data.without_overlap).
    "qwen3-4b-countdown": dict(_QWEN3_4B, data="countdown-train", eval_data="countdown",
                               eval_limit=1000),
    "qwen3-4b-crossthinkqa": dict(_QWEN3_4B, data="crossthinkqa-train", eval_data="crossthinkqa"),
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter,
                     argparse.ArgumentDefaultsHelpFormatter):
    """The description as written; every flag's help followed by its default."""


def parse_args(argv: list[str] | None = None, description: str | None = None) -> Config:
    """Config from the command line: --preset sets the defaults, every field is a flag over them.

    --help lists the defaults of the preset given (`--preset P --help`); --show-config prints the
    resolved configuration as JSON and exits.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    known, _ = pre.parse_known_args(argv)
    defaults = dataclasses.asdict(Config()) | PRESETS[known.preset] | {"preset": known.preset}

    ap = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter,
                                 epilog=f"The defaults shown are those of --preset {known.preset}.")
    choices = {"credit": sorted(credit.CREDIT_STRATEGIES), "template": list(data.TEMPLATES),
               "aggregation": ["seq-mean", "token-mean"], "preset": sorted(PRESETS),
               "answer_fallback": list(rewards.FALLBACKS)}
    ap.add_argument("--show-config", action="store_true",
                    help="print the resolved configuration (preset, then flags) as JSON and exit")
    for f in dataclasses.fields(Config):
        flag, default, text = "--" + f.name.replace("_", "-"), defaults[f.name], f.metadata["help"]
        if f.type == "bool":
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                            help=text)
        elif f.name == "layers":
            ap.add_argument(flag, type=_int_list, default=default, help=text)
        else:
            ap.add_argument(flag, type=_parser_of(f.type), default=default,
                            choices=choices.get(f.name), help=text)
    args = vars(ap.parse_args(argv))
    show = args.pop("show_config")
    cfg = Config(**args)
    if show:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        raise SystemExit(0)
    return cfg


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
