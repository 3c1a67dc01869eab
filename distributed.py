"""Several processes, one update: the plumbing that keeps accelerate's processes in step.

train.py's algorithm is written for one process. With N processes (`accelerate launch`), each
samples its share of the prompts and holds its share of the kept sequences; this file hides what
that takes:
- the Accelerator of a run, with DDP (every process holds the whole model) or FSDP2 (each process
  holds 1/N of every weight, gradient and Adam moment: `make_accelerator`, `prepare`);
- under FSDP, the whole model gathered on every process around sampling and evaluation
  (`full_parameters`), so that `generate` runs without any collective;
- every process runs the same number of forward/backward passes (DDP all-reduces and FSDP
  reduce-scatters the gradients in backward, and a process that skipped a pass would wait there
  forever), so a process that has run out of rows runs zero-weight passes (`micro_batches`);
- statistics are sums over all processes (`sum_over_processes`);
- what only the main process may do (take the run folder's lock, verify a checkpoint) runs there,
  and every process gets its result or its refusal (`on_main`);
- a run ends with every process still alive when the process group goes (`shut_down`).
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterator, Sequence

import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin
from accelerate.state import PartialState
from accelerate.utils import DistributedType, broadcast_object_list
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy

# --sharding (config.SHARDINGS): "auto" lets memory.py pick ddp when the plan says it fits, else
# fsdp
# FSDP frees a decoder layer's gathered weights after its forward (they are gathered again for its
# backward): the update then holds about two gathered layers at a time, not the whole model.
RESHARD_AFTER_FORWARD = True


def make_accelerator(bf16: bool, sharding: str = "ddp") -> Accelerator:
    """The Accelerator of a run. sharding: "ddp" (DDP when there are several processes, nothing
    with one) or "fsdp" (FSDP2, `torch.distributed.fsdp.fully_shard`, through accelerate).

    FSDP2 shards each decoder layer (the model's `_no_split_modules`) as one unit and the rest
    (embeddings, final norm, LM head) as the root unit; weights, gradients and Adam moments are
    float32 shards of 1/N, and with bf16 the gathered weights are bf16 while gradients are reduced
    in float32. Without CUDA, processes talk over gloo.
    """
    cpu = not torch.cuda.is_available()
    precision = "bf16" if bf16 else "no"
    if sharding == "ddp":
        return Accelerator(mixed_precision=precision, cpu=cpu)
    if sharding != "fsdp":
        raise ValueError(f"sharding must be 'ddp' or 'fsdp' here, got {sharding!r}")
    policy = None
    if bf16:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
        reshard_after_forward=RESHARD_AFTER_FORWARD, state_dict_type="SHARDED_STATE_DICT",
        mixed_precision_policy=policy)
    accelerator = Accelerator(mixed_precision=precision, cpu=cpu, fsdp_plugin=plugin)
    if accelerator.num_processes < 2:
        raise SystemExit("--sharding fsdp shards over processes: launch 2 or more, e.g. "
                         "accelerate launch --config_file configs/accelerate/ddp.yaml train.py ...")
    if accelerator.distributed_type != DistributedType.FSDP:
        # accelerate selects FSDP only for accelerator devices and silently runs DDP over gloo on
        # CPU; FSDP2 itself runs there, so select it the way accelerate does on GPUs (both states).
        accelerator.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
    return accelerator


def prepare(accelerator: Accelerator, policy: torch.nn.Module, optimizer):
    """accelerator.prepare(policy, optimizer); under FSDP also make `policy` the root unit.

    FSDP makes the first unit that runs a forward the root, which owns the per-step bookkeeping.
    Sampling enters the model below the root (policy.lm.generate), so two tokens go through the
    root here, once, before anything else runs.
    """
    model, optimizer = accelerator.prepare(policy, optimizer)
    if accelerator.is_fsdp2:
        ids = torch.zeros(1, 2, dtype=torch.long, device=accelerator.device)
        with torch.no_grad():
            model(ids, torch.ones_like(ids))
        model.reset_iter_state()  # the root keeps its weights gathered after a forward: free them
    return model, optimizer


@contextlib.contextmanager
def full_parameters(accelerator: Accelerator, model) -> Iterator[None]:
    """Every weight of the model gathered on this process inside the block (FSDP2; a no-op with
    DDP, whose processes hold the whole model anyway).

    Sampling calls the model once per new token, and the processes' responses end after different
    numbers of tokens. Gathering layer by layer in each call would need all processes in every
    call; gathered once here, the block runs no collective and each process generates on its own
    (rollout.generate passes synced_gpus=False). The cost is one copy of the whole model in the
    gathered dtype (bf16: 2 bytes per parameter) next to the shards, until the block ends.
    """
    if not accelerator.is_fsdp2:
        yield
        return
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]  # units[0]: the root
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units[1:]:
            unit.set_reshard_after_forward(RESHARD_AFTER_FORWARD, recurse=False)
        # Frees the gathered weights and the per-forward bookkeeping of the block's many forwards
        # (including a capture pass that stopped after its last selected layer).
        model.reset_iter_state()


def micro_batches(accelerator: Accelerator, model, n_rows: int, size: int
                  ) -> Iterator[tuple[torch.Tensor, bool, contextlib.AbstractContextManager]]:
    """This process's micro-batches of at most `size` rows, as many as on the busiest process.

    Yields (row indices, real, context). The caller runs forward and backward inside `context`.
    Under DDP it skips the gradient all-reduce on every micro-batch but the last. Under FSDP every
    backward reduce-scatters (no no_sync): skipping would accumulate full, unsharded float32
    gradients, the memory FSDP exists to save. When this process has run out of rows, `real` is
    False and the indices are [0]: the caller must weigh that pass by 0, so it adds nothing but
    still joins the collectives (needs n_rows >= 1).
    """
    mine = torch.tensor(math.ceil(n_rows / size), device=accelerator.device)
    count = int(accelerator.reduce(mine, "max"))
    for i, rows in enumerate(torch.arange(n_rows).tensor_split(count)):
        real = len(rows) > 0
        if not real:
            rows = torch.tensor([0])
        last = i == count - 1
        context = contextlib.nullcontext()
        if not (last or accelerator.is_fsdp2):
            context = accelerator.no_sync(model)
        yield rows, real, context


def combine(accelerator: Accelerator, parts: Sequence[tuple[dict[str, float], float]],
            rules: dict[str, str]) -> dict[str, float]:
    """Statistics of many parts (micro-batches of every process) as one value each, by its rule:
    "mean" (weighted by each part's weight, e.g. its response tokens), "max" or "sum". parts:
    (statistics, weight) pairs; a part of weight 0 (no response tokens, a padding pass) counts for
    nothing. Adding every statistic whatever it is made a 2-process prob_ratio_max 1.25 at r = 1.
    Every process must call it with the same rules; it may have no parts. A statistic no part
    of any process has weight for reads NaN."""
    names = sorted(rules)
    sums = torch.zeros(len(names) + 1, dtype=torch.float64)  # weighted sums or sums; total weight
    maxima = torch.full((len(names),), -math.inf, dtype=torch.float64)
    for stats, weight in parts:
        if weight == 0:
            continue
        for i, name in enumerate(names):
            value = stats[name]
            sums[i] += value * weight if rules[name] == "mean" else value
            maxima[i] = max(maxima[i], value)
        sums[-1] += weight
    sums = accelerator.reduce(sums.to(accelerator.device), "sum").cpu()
    maxima = accelerator.reduce(maxima.to(accelerator.device), "max").cpu()
    total = float(sums[-1])
    out = {}
    for i, name in enumerate(names):
        if rules[name] == "sum":
            out[name] = float(sums[i])
        elif total == 0:
            out[name] = math.nan
        else:
            out[name] = float(maxima[i]) if rules[name] == "max" else float(sums[i]) / total
    return out


def sum_over_processes(accelerator: Accelerator, values: dict[str, float]) -> dict[str, float]:
    """{name: its sum over all processes}, in float64. Every process must pass the same names."""
    names = sorted(values)
    local = torch.tensor([values[k] for k in names], dtype=torch.float64, device=accelerator.device)
    return dict(zip(names, accelerator.reduce(local, "sum").tolist()))


def shut_down(accelerator: Accelerator) -> None:
    """End a run in step: free the DDP/FSDP wrapper (it holds the process group) while every
    process is still alive, then destroy the group. A gloo group whose last reference goes at
    interpreter exit, after a peer has already exited, can hang in its destructor. Call it after
    the last reference to the prepared model is dropped."""
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()


def on_main(accelerator: Accelerator, fn):
    """fn() on the main process; every process returns its result, or raises its ValueError."""
    box = [(None, None)]
    if accelerator.is_main_process:
        try:
            box = [(fn(), None)]
        except ValueError as e:
            box = [(None, str(e))]
    if accelerator.num_processes > 1:
        box = broadcast_object_list(box)
    value, error = box[0]
    if error is not None:
        raise ValueError(error)
    return value
