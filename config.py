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
import math
from dataclasses import dataclass
from pathlib import Path

import dataspec

ROOT = Path(__file__).resolve().parent  # the repository: tiny/ lives here
TINY_MODEL = str(ROOT / "tiny" / "qwen3-arith")

# The paper's numbers, one home each: Config's defaults, and the modules' (flow, grpo, rollout,
# eval).
RATIO = 0.4  # eq. (6): the share of response tokens that get gamma (Sec. 3.3)
GAMMA = 1.5  # eq. (6): their weight gamma_flow (Sec. 3.3)
TEMPERATURE, TOP_P, TOP_K = 0.99, 1.0, 100  # sampling (Sec. 4.1)
MAX_NEW_TOKENS = 1024  # the response budget of the 1k setups (Sec. 4.1) and of eval.py
CLIP_EPS, DUAL_CLIP, ADV_CLIP = 0.2, 3.0, 2.0  # eq. (5); grpo.policy_loss says where each is from

# The choices of the flags that name things. The modules that implement them import these names
# (credit.py checks its strategies against CREDIT_STRATEGIES), so this file imports none of them.
CREDIT_STRATEGIES = (
    "flow", "uniform", "flow-bottom", "random", "entropy", "attention", "attention-mean",
    "gradient", "correlation", "flow-raw", "flow-tanh", "flow-sigmoid", "flow-mad", "flow-log1p",
    "flow-mass20", "flow-mass40", "flow-mass60", "flow-mass80", "flow-structural", "flow-content",
    "oracle", "oracle-only")
CHAIN_ONLY = ("oracle", "oracle-only")  # the testbed's controls read tasks.chain_decisions
AGGREGATIONS = ("seq-mean", "token-mean")  # grpo.policy_loss
ANSWER_FALLBACKS = ("last_line", None)  # rewards.answer_span
SHARDINGS = ("auto", "ddp", "fsdp")  # distributed.py

_DATA_HELP = dataspec.DATA_FLAGS  # (inside Config, `data` is the field)


def flag(default, help: str):
    """A Config field: its default and the --help text of its flag."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class Config:
    # model and data
    model: str = flag(TINY_MODEL, "a hub id (org/name), a local model folder (save_pretrained "
                                  "format), a .gguf file or smollm2 (models.py)")
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
    steps: int = flag(100, "steps, one rollout batch each (and --mini-batches x --ppo-epochs "
                           "optimizer steps)")
    prompts_per_step: int = flag(32, "prompts per step, over all processes")
    group_size: int = flag(8, "responses per prompt (G of eq. 10)")
    max_new_tokens: int = flag(40, "the longest response, in tokens")
    temperature: float = flag(TEMPERATURE, "sampling temperature")
    top_p: float = flag(TOP_P, "nucleus sampling: keep the tokens of the top-p probability mass")
    top_k: int = flag(TOP_K, "sample among the k most likely tokens")
    min_difficulty: float = flag(0.1, "keep a group when min <= its mean reward <= max")
    max_difficulty: float = flag(0.95, "see --min-difficulty")
    drop_truncated: bool = flag(True, "responses without EOS within --max-new-tokens get no "
                                      "gradient")
    answer_fallback: str | None = flag(None, "the flow target of a response without \\boxed{} or "
                                             "<answer>: none (the paper's: no target, so gamma 1 "
                                             "for that row) or last_line")
    # credit (eqs. 5-6)
    credit: str = flag("flow", "the token credit: flow (FlowTracer, eq. 6), uniform (GRPO), or a "
                               "baseline or ablation of credit.py")
    ratio: float = flag(RATIO, "the share of response tokens that get gamma (eq. 6)")
    gamma: float = flag(GAMMA, "the weight of the chosen tokens (eq. 6)")
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
    mini_batches: int = flag(1, "optimizer steps per pass over the rollout batch: each process's "
                                "kept rows in K parts, old log-probs from one no-grad pass before "
                                "the first (1: one step, r = 1, the clip never acts)")
    ppo_epochs: int = flag(1, "passes over the rollout batch, --mini-batches optimizer steps each")
    clip_eps: float = flag(CLIP_EPS, "PPO clip range epsilon (eq. 5)")
    dual_clip: float | None = flag(DUAL_CLIP, "dual-clip constant for negative advantages (None: "
                                              "off)")
    adv_clip: float | None = flag(ADV_CLIP, "clip the advantages to +-this (None: off)")
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
    allow_config_change: bool = flag(False, "--resume: apply flags that change what the run "
                                             "means (--lr, --seed, ...; recorded in run.json)")
    # memory and sharding (memory.py, distributed.py)
    sharding: str = flag("auto", "ddp (every process holds the whole model), fsdp (FSDP2: each "
                                 "holds 1/N of it) or auto (ddp when the memory plan says it "
                                 "fits, else fsdp)")
    plan: bool = flag(False, "print the memory plan and exit (0: it fits) without loading the "
                             "model")
    num_gpus: int | None = flag(None, "the GPUs the memory plan is for (None: this run's "
                                      "processes; with --plan, the GPUs here, else 1)")
    gpu_memory_gb: float | None = flag(None, "memory per GPU the plan checks against, in GiB "
                                             "(None: the device's; 80 with --plan and no GPU)")
    plan_prompt_tokens: int = flag(64, "the prompt length the memory plan budgets for, in tokens")


_QWEN3_MATH = dict(
    data="dapo", eval_data="math500", eval_limit=None, template="chat", prompts_per_step=64,
    group_size=8, micro_batch=32, lr=1e-6, warmup_steps=20, bf16=True, gradient_checkpointing=True,
    reward_workers=4, eval_every=50, save_every=50, keep_checkpoints=3,
    # Qwen3-4B keeps 147 KB of KV cache per token: 4 prompts x 8 = 32 sequences of ~1.3K tokens
    # take ~6 GB next to the 64 GB of float32 weights, gradients and Adam state of DDP per GPU.
    generation_batch=4,
    plan_prompt_tokens=512,  # the memory plan's budget for a DAPO / MATH prompt with its template
)
# 8K responses: 8 sequences per generate call (KV ~10 GB, attention 8 x 8.5K^2 x 4 B = 2.3 GB).
_LONG = dict(generation_batch=1, micro_batch=8)
_LLAMA_MATH = dict(_QWEN3_MATH, template="fewshot", eval_data="gsm8k")
_QWEN3_4B = dict(_QWEN3_MATH, model="Qwen/Qwen3-4B-Base", max_new_tokens=MAX_NEW_TOKENS, steps=500)
_QWEN3_8B = dict(_QWEN3_MATH, model="Qwen/Qwen3-8B-Base", max_new_tokens=MAX_NEW_TOKENS, steps=600)
PRESETS: dict[str, dict] = {
    "tiny": {},
    "qwen3-4b-math-1k": _QWEN3_4B,
    "qwen3-4b-math-8k": dict(_QWEN3_4B, max_new_tokens=8192, **_LONG),
    "qwen3-8b-math-1k": _QWEN3_8B,
    "qwen3-8b-math-8k": dict(_QWEN3_8B, max_new_tokens=8192, **_LONG),
    "llama3.1-8b-math": dict(_LLAMA_MATH, model="meta-llama/Llama-3.1-8B",
                             max_new_tokens=MAX_NEW_TOKENS, steps=600),
    "llama3.2-3b-math": dict(_LLAMA_MATH, model="meta-llama/Llama-3.2-3B",
                             max_new_tokens=MAX_NEW_TOKENS, steps=500),
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with its errors in one line, `PROG: error: MESSAGE`, instead of the usage
    block (29 lines for train.py) above it; --help still lists every flag. Every command's parser
    (train.py here, eval.py, analyze.py, data.py)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the flags)\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter,
                     argparse.ArgumentDefaultsHelpFormatter):
    """The description as written; every flag's help followed by its default."""


def parse_args(argv: list[str] | None = None, description: str | None = None,
               base: dict | None = None) -> Config:
    """Config from the command line: --preset sets the defaults, every field is a flag over them.

    base: values that replace the defaults (a resumed run's own configuration, runs.resumed_config);
    the flags in argv still win.

    --help lists the defaults of the preset given (`--preset P --help`); --show-config prints the
    resolved configuration as JSON and exits.
    """
    pre = ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    known, _ = pre.parse_known_args(argv)
    defaults = dataclasses.asdict(Config()) | PRESETS[known.preset] | {"preset": known.preset}
    defaults |= base or {}

    ap = ArgumentParser(description=description, formatter_class=_HelpFormatter,
                        epilog=f"The defaults shown are those of --preset {known.preset}.")
    choices = {"credit": sorted(CREDIT_STRATEGIES), "template": list(dataspec.TEMPLATES),
               "aggregation": list(AGGREGATIONS), "preset": sorted(PRESETS),
               "answer_fallback": list(ANSWER_FALLBACKS), "sharding": list(SHARDINGS)}
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
            names = choices.get(f.name)  # None among them is typed (and shown) as `none`
            shown = "{%s}" % ",".join(c or "none" for c in names) if names else None
            ap.add_argument(flag, type=_parser_of(f.type), default=default, choices=names,
                            metavar=shown, help=text)
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


# --------------------------------------------------------------------------------------------------
# Checking a configuration before anything heavy runs


def _int(x, low: int, high: float = math.inf) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and low <= x < high


def _real(x, low: float, high: float, open_low: bool = False, open_high: bool = False) -> bool:
    """x is a finite number in [low, high] (an open end with open_low / open_high)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return False
    above = x > low if open_low else x >= low
    below = x < high if open_high else x <= high
    return above and below


def ratio_ok(x) -> bool:
    """eq. (6)'s ratio is a share of the response tokens: a number in [0, 1] (guards.check_ratio)."""
    return _real(x, 0, 1)


def gamma_ok(x) -> bool:
    """eq. (6)'s gamma_flow is a finite weight > 0 (guards.check_gamma; grpo.policy_loss's min
    identity and credit.credit_gamma need gamma > 0)."""
    return _real(x, 0, math.inf, open_low=True, open_high=True)


def _text(x) -> bool:
    return isinstance(x, str) and x.strip() != ""


def _data_fields_ok(text) -> bool:
    if text is not None and not isinstance(text, str):
        return False
    try:
        fields = dataspec.parse_fields(text) or {}
    except ValueError:
        return False
    return set(fields) <= set(dataspec.FIELD_NAMES)


def _rules(c: Config) -> list[tuple[str, bool, str]]:
    """(field, holds, what it must be) for every field of Config."""
    inf = math.inf
    return [
        ("model", _text(c.model), "must name a model (a hub id or a folder)"),
        ("data", _text(c.data), "must name a task, a benchmark or a .jsonl file"),
        ("data_format", c.data_format is None or c.data_format in dataspec.FORMATS,
         f"must be one of {sorted(dataspec.FORMATS)}"),
        ("data_fields", _data_fields_ok(c.data_fields),
         f"must be ours=theirs pairs with ours in {list(dataspec.FIELD_NAMES)}"),
        ("data_dir", c.data_dir is None or (_text(c.data_dir) and Path(c.data_dir).is_dir()),
         "must be an existing folder"),
        ("eval_data", _text(c.eval_data), "must name a task, a benchmark or a .jsonl file"),
        ("eval_limit", c.eval_limit is None or _int(c.eval_limit, 1), "must be >= 1 (or none)"),
        ("template", c.template in dataspec.TEMPLATES,
         f"must be one of {list(dataspec.TEMPLATES)}"),
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
        ("answer_fallback", c.answer_fallback in ANSWER_FALLBACKS,
         f"must be one of {list(ANSWER_FALLBACKS)}"),
        ("credit", c.credit in CREDIT_STRATEGIES
         and (c.credit not in CHAIN_ONLY or c.data == "chain"),
         f"must be one of {sorted(CREDIT_STRATEGIES)}; oracle and oracle-only read the chain "
         "task's deciding tokens: they need --data chain"),
        ("ratio", ratio_ok(c.ratio), "must be in [0, 1] (eq. 6's share of tokens)"),
        ("gamma", gamma_ok(c.gamma), "must be finite and > 0 (eq. 6; grpo.policy_loss needs it)"),
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
        ("mini_batches", _int(c.mini_batches, 1), "must be >= 1"),
        ("ppo_epochs", _int(c.ppo_epochs, 1), "must be >= 1"),
        ("clip_eps", _real(c.clip_eps, 0, 1, open_low=True, open_high=True), "must be in (0, 1)"),
        ("dual_clip", c.dual_clip is None or _real(c.dual_clip, 1, inf, True, True),
         "must be finite and > 1 (or none)"),
        ("adv_clip", c.adv_clip is None or _real(c.adv_clip, 0, inf, True, True),
         "must be finite and > 0 (or none)"),
        ("aggregation", c.aggregation in AGGREGATIONS, f"must be one of {list(AGGREGATIONS)}"),
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
        ("sharding", c.sharding in SHARDINGS,
         f"must be one of {list(SHARDINGS)}"),
        ("plan", isinstance(c.plan, bool), "must be true or false"),
        ("num_gpus", c.num_gpus is None or _int(c.num_gpus, 1), "must be >= 1 (or none)"),
        ("gpu_memory_gb", c.gpu_memory_gb is None
         or _real(c.gpu_memory_gb, 0, inf, open_low=True, open_high=True),
         "must be finite and > 0 (or none)"),
        ("plan_prompt_tokens", _int(c.plan_prompt_tokens, 1), "must be >= 1"),
    ]


def validate(cfg: Config) -> None:
    """Raise ValueError naming every flag whose value cannot work. train.main calls it before it
    loads anything, so `--group-size 0` fails in a second, not after the model has loaded."""
    bad = [f"--{name.replace('_', '-')} {rule}, got {getattr(cfg, name)!r}"
           for name, holds, rule in _rules(cfg) if not holds]
    if bad:
        raise ValueError("bad flag value(s):\n  " + "\n  ".join(bad))
