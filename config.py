"""The configuration of a training run: one dataclass, named presets, and the command line.

The defaults of `Config` are the embedded tiny run (`python train.py`); a preset (`--preset NAME`)
replaces some defaults with the paper's setup (Sec. 4, App. C.3); every field is also a flag that
overrides both (`lr` is `--lr`, `max_new_tokens` is `--max-new-tokens`, a bool `x` is `--x` and
`--no-x`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import credit
import data
import flow

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
    # 0: score in this process (1 s deadline per call); N: a pool of N isolated workers
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
    # --resume may apply flags that change what the run means (--lr, --seed, ...); see runs.py
    allow_config_change: bool = False


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
    "qwen3-4b-countdown": dict(_QWEN3_4B, data="countdown", eval_data="countdown", eval_limit=1000),
    "qwen3-4b-crossthinkqa": dict(_QWEN3_4B, data="crossthinkqa", eval_data="crossthinkqa"),
}


def parse_args(argv: list[str] | None = None, description: str | None = None,
               base: dict | None = None) -> Config:
    """Config from the command line: --preset sets the defaults, every field is a flag over them.

    base: values that replace the defaults (a resumed run's own configuration, runs.resumed_config);
    the flags in argv still win."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    known, _ = pre.parse_known_args(argv)
    defaults = dataclasses.asdict(Config()) | PRESETS[known.preset] | {"preset": known.preset}
    defaults |= base or {}

    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=defaults["preset"], choices=sorted(PRESETS),
                    help="a named set of defaults")
    choices = {"credit": sorted(credit.CREDIT_STRATEGIES), "template": list(data.TEMPLATES),
               "aggregation": ["seq-mean", "token-mean"]}
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


# --------------------------------------------------------------------------------------------------
# Checking a configuration before anything heavy runs


def data_fields(text: str | None) -> dict[str, str] | None:
    """--data-fields "prompt=question,gold=final" as {"prompt": "question", "gold": "final"}."""
    if not text:
        return None
    pairs = [kv.split("=", 1) for kv in text.split(",")]
    if any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
        raise ValueError("--data-fields wants ours=theirs pairs, e.g. prompt=question,gold=final; "
                         f"got {text!r}")
    unknown = sorted({ours for ours, _ in pairs} - set(data.FIELD_NAMES))
    if unknown:
        raise ValueError(f"--data-fields: unknown key(s) {unknown}; valid keys: "
                         f"{list(data.FIELD_NAMES)}")
    return dict(pairs)


def _int(x, low: int, high: float = math.inf) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and low <= x < high


def _real(x, low: float, high: float, open_low: bool = False, open_high: bool = False) -> bool:
    """x is a finite number in [low, high] (an open end with open_low / open_high)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return False
    above = x > low if open_low else x >= low
    below = x < high if open_high else x <= high
    return above and below


def _text(x) -> bool:
    return isinstance(x, str) and x.strip() != ""


def _data_fields_ok(text) -> bool:
    try:
        data_fields(text)
    except (ValueError, AttributeError):
        return False
    return text is None or isinstance(text, str)


def _rules(c: Config) -> list[tuple[str, bool, str]]:
    """(field, holds, what it must be) for every field of Config."""
    inf = math.inf
    return [
        ("model", _text(c.model), "must name a model (a hub id or a folder)"),
        ("data", _text(c.data), "must name a task, a benchmark or a .jsonl file"),
        ("data_format", c.data_format is None or c.data_format in data.FORMATS,
         f"must be one of {sorted(data.FORMATS)}"),
        ("data_fields", _data_fields_ok(c.data_fields),
         f"must be ours=theirs pairs with ours in {list(data.FIELD_NAMES)}"),
        ("data_dir", c.data_dir is None or (_text(c.data_dir) and Path(c.data_dir).is_dir()),
         "must be an existing folder"),
        ("eval_data", _text(c.eval_data), "must name a task, a benchmark or a .jsonl file"),
        ("eval_limit", c.eval_limit is None or _int(c.eval_limit, 1), "must be >= 1 (or none)"),
        ("template", c.template in data.TEMPLATES, f"must be one of {list(data.TEMPLATES)}"),
        ("steps", _int(c.steps, 1), "must be >= 1"),
        ("prompts_per_step", _int(c.prompts_per_step, 1), "must be >= 1"),
        ("group_size", _int(c.group_size, 2),
         "must be >= 2 (eq. 10 compares the responses of a group)"),
        ("max_new_tokens", _int(c.max_new_tokens, 1), "must be >= 1"),
        ("temperature", _real(c.temperature, 0, inf, open_low=True, open_high=True),
         "must be > 0 (training samples; the log-probs divide by it)"),
        ("top_p", _real(c.top_p, 0, 1, open_low=True), "must be in (0, 1]"),
        ("top_k", _int(c.top_k, 0), "must be >= 0 (0: off)"),
        ("min_difficulty", _real(c.min_difficulty, 0, 1), "must be in [0, 1]"),
        ("max_difficulty", _real(c.max_difficulty, 0, 1)
         and (not _real(c.min_difficulty, 0, 1) or c.min_difficulty <= c.max_difficulty),
         "must be in [0, 1] and >= --min-difficulty"),
        ("drop_truncated", isinstance(c.drop_truncated, bool), "must be true or false"),
        ("credit", c.credit in credit.CREDIT_STRATEGIES,
         f"must be one of {sorted(credit.CREDIT_STRATEGIES)}"),
        ("ratio", _real(c.ratio, 0, 1), "must be in [0, 1] (eq. 6's share of tokens)"),
        ("gamma", _real(c.gamma, 0, inf, open_high=True), "must be finite and >= 0 (eq. 6)"),
        ("layers", c.layers is None or (isinstance(c.layers, list) and len(c.layers) > 0
                                        and all(_int(x, 0) for x in c.layers)),
         "must be layer indices >= 0 (or none)"),
        ("lr", _real(c.lr, 0, inf, open_low=True, open_high=True), "must be finite and > 0"),
        ("warmup_steps", _int(c.warmup_steps, 0), "must be >= 0"),
        ("weight_decay", _real(c.weight_decay, 0, inf, open_high=True), "must be finite and >= 0"),
        ("max_grad_norm", _real(c.max_grad_norm, 0, inf, open_low=True, open_high=True),
         "must be finite and > 0"),
        ("micro_batch", _int(c.micro_batch, 1), "must be >= 1"),
        ("generation_batch", c.generation_batch is None or _int(c.generation_batch, 1),
         "must be >= 1 (or none: all prompts at once)"),
        ("clip_eps", _real(c.clip_eps, 0, 1, open_low=True, open_high=True), "must be in (0, 1)"),
        ("dual_clip", c.dual_clip is None or _real(c.dual_clip, 1, inf, True, True),
         "must be finite and > 1 (or none)"),
        ("adv_clip", c.adv_clip is None or _real(c.adv_clip, 0, inf, True, True),
         "must be finite and > 0 (or none)"),
        ("aggregation", c.aggregation in ("seq-mean", "token-mean"),
         "must be seq-mean or token-mean"),
        ("bf16", isinstance(c.bf16, bool), "must be true or false"),
        ("gradient_checkpointing", isinstance(c.gradient_checkpointing, bool),
         "must be true or false"),
        ("reward_workers", _int(c.reward_workers, 0), "must be >= 0 (0: score in this process)"),
        ("eval_every", _int(c.eval_every, 1), "must be >= 1"),
        ("save_every", _int(c.save_every, 0), "must be >= 0 (0: no checkpoints)"),
        ("keep_checkpoints", _int(c.keep_checkpoints, 0),
         "must be >= 0 (0: keep every checkpoint; N: the newest N)"),
        ("seed", _int(c.seed, 0, 2**32), "must be in [0, 2**32)"),
        ("out", c.out is None or (_text(c.out) and not Path(c.out).is_file()),
         "must be a folder (or none: runs/<preset>-<credit>-seed<seed>)"),
        ("resume", isinstance(c.resume, bool) and not (c.resume and c.overwrite),
         "and --overwrite exclude each other"),
        ("overwrite", isinstance(c.overwrite, bool), "must be true or false"),
        ("plot_ema", c.plot_ema is None or _real(c.plot_ema, 0, 1, open_low=True),
         "must be in (0, 1] (or none)"),
        ("preset", c.preset in PRESETS, f"must be one of {sorted(PRESETS)}"),
        ("allow_config_change", isinstance(c.allow_config_change, bool)
         and (c.resume or not c.allow_config_change), "applies to --resume only"),
    ]


def validate(cfg: Config) -> None:
    """Raise ValueError naming every flag whose value cannot work. train.main calls it before it
    loads anything, so `--group-size 0` fails in a second, not after the model has loaded."""
    bad = [f"--{name.replace('_', '-')} {rule}, got {getattr(cfg, name)!r}"
           for name, holds, rule in _rules(cfg) if not holds]
    if bad:
        raise ValueError("bad flag value(s):\n  " + "\n  ".join(bad))
