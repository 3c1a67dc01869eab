"""The memory plan: the bytes one GPU needs for a training run, from the model's config alone.

    python train.py --preset qwen3-8b-math-1k --plan --num-gpus 8                  # fits: exit 0
    python train.py --preset qwen3-8b-math-1k --plan --num-gpus 8 --sharding ddp   # refused: exit 1

train.py prints the plan at every start, before the model is loaded, and refuses a run that is
predicted not to fit, naming the flags that would make it fit. --plan loads nothing but the
model's config.json: a local model folder's, or for a hub id the copy shipped in configs/models/
(the hub is not needed; see configs/models/README.md).

A run goes through four phases, and the plan adds up what each holds (per GPU, N = processes):
  sample   generate a piece of the step's prompts: the training state, the whole model in the
           compute dtype (FSDP gathers it, `distributed.full_parameters`; DDP's bf16 autocast
           caches a cast of every weight), the KV cache and the [N, T, T] attention buffer;
  credit   the attention buffer, its copy for the kept rows and the flow solve of one micro-batch;
  update   forward + backward of one micro-batch: gradients, the checkpointed layer inputs, one
           layer recomputed, the log-prob chunk of grpo.token_logprobs, and under FSDP the
           gathered units in flight; with --mini-batches/--ppo-epochs > 1 the old log-probs;
  step     the AdamW step: its scratch (one float32 copy of the parameters with torch's foreach
           implementation on CUDA);
and `evaluate`, the held-out generation (harness.held_out_accuracy). Training state: float32
weights (4 bytes per parameter), gradients (4), AdamW's two moments (8), divided by N under FSDP;
DDP adds its gradient buckets (4). The model of each term is in `_rows`; docs/scaling.md checks
it against measured peaks.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState

import credit
import grpo
from capture import CHUNK_BYTES
from config import ROOT, Config

GB = 1 << 30  # "GB" in this file is 2^30 bytes; an "80 GB" GPU holds about 80 of them
MODEL_CONFIGS = ROOT / "configs" / "models"
# The plan must fit this share of the GPU: the CUDA context, NCCL's buffers and the caching
# allocator's fragmentation take the rest.
USABLE = 0.9
PLAN_GPU_GB = 80.0  # the GPU a plan is for when there is no GPU to ask (the presets' hardware)
LOGPROB_CHUNK = inspect.signature(grpo.token_logprobs).parameters["chunk_size"].default
PHASES = ("sample", "credit", "update", "step", "evaluate")


@dataclass(frozen=True)
class ModelShape:
    """What the plan reads of a decoder-only transformer."""

    name: str
    params: int  # every parameter, tied embeddings once
    layer_params: int  # one decoder layer
    largest_param: int  # elements of the largest parameter tensor
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def root_params(self) -> int:
        """The parameters outside the decoder layers: embeddings, final norm, LM head."""
        return self.params - self.layers * self.layer_params


def shape_of_config(config, name: str) -> ModelShape:
    """The ModelShape of a transformers config: the model is built on the meta device (no memory,
    no weights) and its parameters counted."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config)
    layer = lm.get_decoder().layers[0]
    heads = config.num_attention_heads
    return ModelShape(
        name=name, params=sum(p.numel() for p in lm.parameters()),
        layer_params=sum(p.numel() for p in layer.parameters()),
        largest_param=max(p.numel() for p in lm.parameters()), layers=config.num_hidden_layers,
        hidden=config.hidden_size, intermediate=config.intermediate_size,
        vocab=config.vocab_size, heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads)


def model_shape(model: str, local_only: bool = True) -> ModelShape:
    """The shape of `model`: a local folder's config.json, else configs/models/<name>.json for a
    hub id (Qwen/Qwen3-8B-Base -> Qwen3-8B-Base.json), else (local_only=False) the hub's."""
    from transformers import AutoConfig

    shipped = MODEL_CONFIGS / f"{Path(model).name}.json"
    if (Path(model) / "config.json").is_file():
        source = model
    elif shipped.is_file():
        source = str(shipped)
    elif not local_only:
        source = model
    else:
        raise SystemExit(f"memory plan: no config for {model!r}: pass a local model folder, or "
                         f"add its config.json as {shipped.relative_to(ROOT)}")
    return shape_of_config(AutoConfig.from_pretrained(source), Path(model).name)


# --------------------------------------------------------------------------------------------------
# The plan


@dataclass
class Plan:
    """Bytes per GPU of each term, and which terms each phase holds at once."""

    shape: ModelShape
    sharding: str  # "ddp" (with one process: no wrapper at all) or "fsdp"
    gpus: int
    gpu_bytes: float
    device: str  # "cuda" or "cpu"
    rows: dict[str, float]
    phases: dict[str, tuple[str, ...]]
    notes: list[str]
    problem: str | None = None  # a reason the run cannot start at all (not a matter of memory)
    # term -> the phase that holds it, but one after the other with a larger term: not in its peak
    in_turn: dict[str, str] = dataclasses.field(default_factory=dict)

    def peak(self, phase: str) -> float:
        return sum(self.rows.get(name, 0) for name in self.phases[phase])

    @property
    def worst(self) -> str:
        """The phase with the highest peak."""
        return max(PHASES, key=self.peak)

    @property
    def fits(self) -> bool:
        return self.problem is None and self.peak(self.worst) <= USABLE * self.gpu_bytes

    def table(self) -> str:
        """The plan as printed by train.py: terms x phases, in GB per GPU (per process on CPU).
        x: the phase holds the term; (x): it holds it in turn with a larger one (not added)."""
        unit = "GB/GPU" if self.device == "cuda" else "GB/proc"
        lines = [f"{'':44s}{unit:>8s}" + "".join(f"{p:>9s}" for p in PHASES)]
        for name, value in self.rows.items():
            if value == 0:
                continue
            marks = "".join(f"{self._mark(name, p):>9s}" for p in PHASES)
            lines.append(f"{name:44s}{value / GB:8.2f}{marks}")
        lines.append(f"{'peak':44s}{'':8s}" + "".join(f"{self.peak(p) / GB:9.2f}"
                                                       for p in PHASES))
        if any(self.rows.get(name) for name in self.in_turn):
            lines.append("(x): held in turn with a larger term of that phase, not added to its peak")
        return "\n".join(lines)

    def _mark(self, name: str, phase: str) -> str:
        if name in self.phases[phase]:
            return "x"
        return "(x)" if self.in_turn.get(name) == phase else ""

    def verdict(self) -> str:
        unit = "GPU" if self.device == "cuda" else "process"
        budget = f"{_gb(self.gpu_bytes)} GB per {unit}"
        if self.problem:
            return f"does not run: {self.problem}"
        peak = f"peak {self.peak(self.worst) / GB:.2f} GB ({self.worst})"
        if self.fits:
            return f"fits {budget}: {peak}, within {USABLE:.0%} of the {unit}'s memory"
        return f"does not fit {budget}: {peak} > {USABLE:.0%} of {_gb(self.gpu_bytes)} GB"


def _gb(n: float) -> str:
    """80 GB as "80", 0.05 GB as "0.05"."""
    return f"{n / GB:.0f}" if n >= 10 * GB else f"{n / GB:.2g}"


def plan(cfg: Config, gpus: int, sharding: str, gpu_bytes: float, device: str = "cuda",
         shape: ModelShape | None = None) -> Plan:
    """The memory plan of `cfg` on `gpus` processes of `gpu_bytes` each. sharding: ddp | fsdp."""
    shape = shape or model_shape(cfg.model)
    rows, notes = _rows(cfg, shape, gpus, sharding, device)
    state = ("weights", "AdamW moments", "DDP gradient buckets")
    copy = "whole model in the compute dtype (sampling)"
    # the update's backward runs the log-prob chunks, then the layers: it holds the larger of them
    backward, smaller = sorted(("one layer's activations and gradients", "log-prob chunk"),
                               key=rows.get, reverse=True)
    phases = {
        "sample": state + (copy, "KV cache (sampling)", "attention buffer [N, T, T]",
                           "prefill activations (sampling)"),
        "credit": state + (copy, "attention buffer [N, T, T]", "flow solve (one micro-batch)"),
        "update": state + ("gradients", "FSDP units gathered in the update",
                           "bf16 autocast copy of the weights (update)",
                           "checkpointed layer inputs", "saved activations of every layer",
                           backward, "old log-probs (several optimizer steps)"),
        "step": state + ("gradients", "AdamW step scratch",
                         "old log-probs (several optimizer steps)"),
        "evaluate": state + (copy, "KV cache (evaluation)", "prefill activations (evaluation)"),
    }
    problem = None
    if sharding == "fsdp" and gpus < 2:
        problem = "--sharding fsdp shards over processes and needs at least 2"
    if sharding == "fsdp" and cfg.credit == "gradient":
        problem = ("--credit gradient runs its own backward pass per micro-batch, which FSDP "
                   "would reduce across processes; use --sharding ddp")
    return Plan(shape, sharding, gpus, gpu_bytes, device, rows, phases, notes, problem,
                in_turn={smaller: "update"})


def _rows(cfg: Config, m: ModelShape, gpus: int, sharding: str, device: str
          ) -> tuple[dict[str, float], list[str]]:
    """Every term of the plan in bytes per GPU, and notes on the assumptions."""
    fsdp = sharding == "fsdp"
    shards = gpus if fsdp else 1
    c = 2 if cfg.bf16 else 4  # bytes of the compute dtype
    p = m.params / shards  # parameters held by this GPU
    seq = cfg.plan_prompt_tokens + cfg.max_new_tokens  # T, the longest sequence
    per_gpu = math.ceil(cfg.prompts_per_step / gpus)  # prompts this GPU samples per step
    generated = min(cfg.generation_batch or per_gpu, per_gpu) * cfg.group_size  # N per generate
    micro = min(cfg.micro_batch, per_gpu * cfg.group_size)  # rows per forward/backward
    evaluated = cfg.micro_batch * 4  # harness.held_out_accuracy's prompts per generate call
    capture = cfg.credit in credit.ATTENTION_STRATEGIES
    kv_per_token = 2 * m.layers * m.kv_heads * m.head_dim * c  # K and V of every layer
    q, kv = m.heads * m.head_dim, m.kv_heads * m.head_dim
    notes = [f"T = {cfg.plan_prompt_tokens} prompt (--plan-prompt-tokens) + "
             f"{cfg.max_new_tokens} new tokens; {generated} sequences per generate call, "
             f"{micro} per micro-batch, {evaluated} per evaluation call"]

    rows: dict[str, float] = {}
    rows["weights"] = 4 * p
    rows["gradients"] = 4 * p
    rows["AdamW moments"] = 8 * p
    # DDP's reducer keeps its own float32 copy of the gradients in buckets (gradient_as_bucket_view
    # is off in accelerate's default); a single process has no DDP wrapper.
    rows["DDP gradient buckets"] = 4 * m.params if (not fsdp and gpus > 1) else 0
    # foreach AdamW (CUDA) builds one float32 temporary per parameter; on CPU the single-tensor
    # implementation one of the largest parameter only.
    rows["AdamW step scratch"] = 4 * (p if device == "cuda" else m.largest_param / shards)
    # FSDP gathers the whole model for sampling; under DDP, bf16 autocast caches a bf16 cast of
    # every weight it touches until the rollout's autocast block ends.
    if fsdp or cfg.bf16:
        rows["whole model in the compute dtype (sampling)"] = (c if fsdp else 2) * m.params
    else:
        rows["whole model in the compute dtype (sampling)"] = 0
    prompt = cfg.plan_prompt_tokens
    rows["KV cache (sampling)"] = generated * seq * kv_per_token
    rows["KV cache (evaluation)"] = evaluated * seq * kv_per_token
    rows["attention buffer [N, T, T]"] = 4 * generated * seq**2 if capture else 0
    # The prefill runs one layer at a time over all prompt tokens: its intermediates (q, k, v and
    # their rotated copies, SDPA's output, the MLP's gate, up, activation and product, residual
    # and norm outputs) live next to the KV cache of the prompt; they count as far as they exceed
    # the KV cache the new tokens fill later. Plus the last position's float32 logits (sampling
    # and top-k copies) and, with the capture, one query chunk of the prefill's scores.
    prefill = c * (4 * m.intermediate + 3 * q + 2 * kv + 4 * m.hidden)  # per prompt token
    chunk = min(CHUNK_BYTES, 8 * generated * m.heads * prompt**2) if capture else 0
    rows["prefill activations (sampling)"] = (
        max(0, generated * prompt * prefill - generated * (seq - prompt) * kv_per_token)
        + 3 * 4 * generated * m.vocab + chunk)
    rows["prefill activations (evaluation)"] = (
        max(0, evaluated * prompt * prefill - evaluated * (seq - prompt) * kv_per_token)
        + 3 * 4 * evaluated * m.vocab)
    # credit_batch: the kept rows' copy of the buffer, then per micro-batch a row copy (float32),
    # W (float32) and the triangular system M (float64).
    flow_rows = min(micro, generated)
    rows["flow solve (one micro-batch)"] = (4 * generated * seq**2 + 16 * flow_rows * seq**2
                                            if capture else 0)
    gathered_units = 0.0
    if fsdp:  # the root unit stays gathered through forward and backward; two layers in flight;
        # one unit's unsharded gradient and its float32 copy for the reduce-scatter
        biggest = max(m.root_params, m.layer_params)
        gathered_units = c * (m.root_params + 2 * m.layer_params) + (c + 4) * biggest
    rows["FSDP units gathered in the update"] = gathered_units
    # accelerate wraps the forward in autocast: with float32 weights it caches a bf16 cast of each
    # weight until the forward ends (FSDP's gathered weights already are bf16).
    rows["bf16 autocast copy of the weights (update)"] = 2 * m.params if (cfg.bf16 and not fsdp) \
        else 0
    tokens = micro * seq
    residual = c if fsdp else 4  # the residual stream is float32 when the weights are
    # Saved for backward by one decoder layer, per token: the inputs of the projections and of
    # SDPA, its output, the MLP's gate, up, activation and product (compute dtype), and the
    # float32 inputs and outputs of the RMSNorms (2 x hidden, 2 x q/k heads); plus, in backward,
    # the gradients of the widest intermediates.
    saved = c * (2 * m.hidden + 3 * q + 2 * kv + 4 * m.intermediate) \
        + 4 * (4 * m.hidden + 2 * q + 2 * kv)
    backward = c * (2 * m.intermediate + m.hidden)  # the widest gradients of a layer's backward
    if cfg.gradient_checkpointing:
        rows["checkpointed layer inputs"] = (m.layers + 1) * tokens * m.hidden * residual
        rows["one layer's activations and gradients"] = tokens * (saved + backward)
    else:
        rows["saved activations of every layer"] = m.layers * tokens * saved
        rows["one layer's activations and gradients"] = tokens * backward
        notes.append("no gradient checkpointing: every layer's activations are kept")
    # One chunk of grpo.token_logprobs in backward: the recomputed log-softmax (float32), its
    # gradient, the gradient of the tempered logits and of the logits (float32), the logits
    # (compute dtype). The backward runs the chunks before any layer: the plan counts the larger
    # of this and a layer's backward.
    rows["log-prob chunk"] = (12 + c) * micro * min(LOGPROB_CHUNK, seq) * m.vocab
    # --mini-batches or --ppo-epochs above 1: the old log-probs of every row this GPU sampled
    # (float32 [rows, T]) stay through the update; the no-grad pass that makes them holds less
    # than a training forward and backward.
    several = cfg.mini_batches * cfg.ppo_epochs > 1
    rows["old log-probs (several optimizer steps)"] = 4 * per_gpu * cfg.group_size * seq \
        if several else 0
    return rows, notes


# --------------------------------------------------------------------------------------------------
# Choosing the sharding, refusing, and the command line


def choose(cfg: Config, gpus: int, gpu_bytes: float, device: str = "cuda",
           shape: ModelShape | None = None) -> Plan:
    """The plan of the run with cfg.sharding resolved: "auto" is ddp when ddp fits (or there is
    one process), else fsdp."""
    shape = shape or model_shape(cfg.model)
    if cfg.sharding != "auto":
        return plan(cfg, gpus, cfg.sharding, gpu_bytes, device, shape)
    ddp = plan(cfg, gpus, "ddp", gpu_bytes, device, shape)
    if ddp.fits or gpus < 2:
        return ddp
    return plan(cfg, gpus, "fsdp", gpu_bytes, device, shape)


def fixes(cfg: Config, p: Plan) -> list[str]:
    """Flags that would make a refused plan fit, the least disruptive of each kind first."""
    def fits(**changes) -> bool:
        gpus = changes.pop("gpus", p.gpus)
        sharding = changes.pop("sharding", p.sharding)
        changed = dataclasses.replace(cfg, **changes)
        return plan(changed, gpus, sharding, p.gpu_bytes, p.device, p.shape).fits

    found = []
    if p.sharding == "ddp" and p.gpus > 1 and fits(sharding="fsdp"):
        found.append("--sharding fsdp")
    # the same sharding first; with DDP on several GPUs, also together with FSDP
    shardings = [p.sharding] + (["fsdp"] if p.sharding == "ddp" and p.gpus > 1 else [])
    per_gpu = math.ceil(cfg.prompts_per_step / p.gpus)
    knobs = [("micro_batch", "--micro-batch", _halvings(cfg.micro_batch)),
             ("generation_batch", "--generation-batch",
              _halvings(min(cfg.generation_batch or per_gpu, per_gpu)))]
    for field, flag, values in knobs:
        for sharding in shardings:
            if found and sharding != p.sharding:
                break  # FSDP alone already fits: no need to shrink anything
            value = next((v for v in values if fits(sharding=sharding, **{field: v})), None)
            if value is not None:
                found.append(f"{flag} {value}" + _with(sharding, p))
                break
    for gpus in (2, 4, 8, 16, 32, 64):
        if not found and gpus > p.gpus and fits(gpus=gpus, sharding="fsdp"):
            found.append(f"{gpus} GPUs with --sharding fsdp (accelerate launch --num_processes "
                         f"{gpus}; beyond one node configs/accelerate/multinode.yaml)")
            break
    return found


def _halvings(n: int) -> list[int]:
    """n // 2, n // 4, ..., 1."""
    out = []
    while n > 1:
        n //= 2
        out.append(n)
    return out


def _with(sharding: str, p: Plan) -> str:
    return " --sharding fsdp" if sharding != p.sharding else ""


def report(cfg: Config, p: Plan) -> str:
    """The printed plan: what it is for, the table, the verdict and, when refused, the fixes."""
    count = f"{p.shape.params / 1e9:.2f} B"
    if p.shape.params < 1e9:
        count = f"{p.shape.params / 1e6:.1f} M"
    title = (f"memory plan: {cfg.preset}, {p.shape.name} ({count} "
             f"parameters), {p.gpus} x {'GPU' if p.device == 'cuda' else 'CPU process'}, "
             f"sharding {p.sharding}, "
             f"{'bf16' if cfg.bf16 else 'float32'}, gradient checkpointing "
             f"{'on' if cfg.gradient_checkpointing else 'off'}")
    lines = [title, *p.notes, p.table(), p.verdict()]
    if not p.fits and p.problem is None:
        found = fixes(cfg, p)
        lines.append("it would fit with: " + ("; or ".join(found) if found
                                              else "no single change (see docs/scaling.md)"))
    return "\n".join(lines)


def device_bytes(processes_here: int) -> tuple[float, str]:
    """(bytes of memory per process, "cuda" or "cpu"): the GPU's total memory, or without CUDA
    the machine's RAM shared by its processes."""
    if torch.cuda.is_available():
        return float(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory), \
            "cuda"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram / max(1, processes_here), "cpu"


def plan_command(cfg: Config) -> int | str:
    """`train.py --plan`: print the plan for --num-gpus (else the GPUs here, else 1) of
    --gpu-memory-gb (else the GPU's, else 80 GB); 0 when it fits, else the refusal."""
    gpus = cfg.num_gpus or max(1, torch.cuda.device_count())
    memory = PLAN_GPU_GB * GB
    if torch.cuda.is_available():
        memory = device_bytes(1)[0]
    if cfg.gpu_memory_gb:
        memory = cfg.gpu_memory_gb * GB
    p = choose(cfg, gpus, memory)
    text = report(cfg, p)
    if p.fits:
        print(text)
        return 0
    return text


def check_run(cfg: Config) -> Plan:
    """The plan of the run about to start (accelerate's processes, this device's memory), with the
    sharding resolved; raises SystemExit (with the plan and its fixes) when it is predicted not to
    fit. Every process computes the same plan, so all of them stop together."""
    processes = PartialState(cpu=not torch.cuda.is_available()).num_processes
    memory, device = device_bytes(int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    if cfg.gpu_memory_gb:
        memory = cfg.gpu_memory_gb * GB
    p = choose(cfg, processes, memory, device, model_shape(cfg.model, local_only=False))
    if not p.fits:
        raise SystemExit(report(cfg, p))
    return p
