"""Several processes, one update: the plumbing that keeps accelerate's processes in step.

train.py's algorithm is written for one process. With N processes (`accelerate launch`), each
samples its share of the prompts and holds its share of the kept sequences; this file hides what
that takes:
- every process runs the same number of forward/backward passes (DDP all-reduces the gradients in
  the backward of the last micro-batch, and a process that skipped a pass would wait there forever),
  so a process that has run out of rows runs zero-weight passes (`micro_batches`);
- statistics are sums over all processes (`sum_over_processes`);
- a run ends with every process still alive when the process group goes (`shut_down`).
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterator

import torch
from accelerate import Accelerator


def make_accelerator(bf16: bool) -> Accelerator:
    """The Accelerator of a run. cpu=True without CUDA: several processes then run DDP over gloo."""
    return Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not torch.cuda.is_available())


def micro_batches(accelerator: Accelerator, model, n_rows: int, size: int
                  ) -> Iterator[tuple[torch.Tensor, bool, contextlib.AbstractContextManager]]:
    """This process's micro-batches of at most `size` rows, as many as on the busiest process.

    Yields (row indices, real, context). The caller runs forward and backward inside `context`: it
    skips the gradient all-reduce on every micro-batch but the last. When this process has run out
    of rows, `real` is False and the indices are [0]: the caller must weigh that pass by 0, so it
    adds nothing but still joins the all-reduce (needs n_rows >= 1).
    """
    mine = torch.tensor(math.ceil(n_rows / size), device=accelerator.device)
    count = int(accelerator.reduce(mine, "max"))
    for i, rows in enumerate(torch.arange(n_rows).tensor_split(count)):
        real = len(rows) > 0
        if not real:
            rows = torch.tensor([0])
        last = i == count - 1
        yield rows, real, contextlib.nullcontext() if last else accelerator.no_sync(model)


def sum_over_processes(accelerator: Accelerator, values: dict[str, float]) -> dict[str, float]:
    """{name: its sum over all processes}, in float64. Every process must pass the same names."""
    names = sorted(values)
    local = torch.tensor([values[k] for k in names], dtype=torch.float64, device=accelerator.device)
    return dict(zip(names, accelerator.reduce(local, "sum").tolist()))


def shut_down(accelerator: Accelerator) -> None:
    """End a run in step: free the DDP wrapper (it holds the process group) while every process is
    still alive, then destroy the group. A gloo group whose last reference goes at interpreter exit,
    after a peer has already exited, can hang in its destructor. Call it after the last reference to
    the prepared model is dropped."""
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()
