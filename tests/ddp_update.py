"""One train.update on a fixed global batch, in 1 or N processes; saves the updated weights.

Run by tests/test_train.py and tests/test_distributed.py, as `python tests/ddp_update.py OUT AGG`
and as `accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2
tests/ddp_update.py OUT AGG [SHARDING [MINI_BATCHES]]` (SHARDING: ddp, the default, or fsdp;
MINI_BATCHES: train.update's optimizer steps, 1 by default). Every process
builds the same 16-sequence batch (same seed) and takes its shard: 13 rows on process 0 and 3 on
process 1, so process 1 runs zero-weight passes to keep in step. SGD with lr 1 makes the weight
change equal the (clipped) gradient, so the comparison does not go through Adam's sign-like first
step. Each process also writes OUT.rank<i>.json: the type, placements and local shape of every
parameter as the update saw it (under FSDP, this process's shard of it).
"""

import json
import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import distributed  # noqa: E402
import rollout  # noqa: E402
import tasks  # noqa: E402
import harness  # noqa: E402
import train  # noqa: E402


def main(out: str, aggregation: str, sharding: str, mini_batches: int) -> None:
    torch.set_num_threads(1)
    accelerator = distributed.make_accelerator(bf16=False, sharding=sharding)
    cfg = train.Config(micro_batch=3, aggregation=aggregation, max_grad_norm=1e9,
                       mini_batches=mini_batches)
    lm, tokenizer = harness.load_for_training(cfg, accelerator.device)
    torch.manual_seed(0)
    prompts = [e.prompt for e in tasks.ArithmeticTask().examples(4, seed=3)]
    r = rollout.generate(lm, tokenizer, prompts, n=4, max_new_tokens=40, capture=False)  # [16, T]
    g = torch.Generator().manual_seed(1)
    gamma = 1 + 0.5 * (torch.rand(r.input_ids.shape, generator=g) < 0.4)  # [16, T]
    advantages = torch.randn(16, generator=g)  # [16]
    batch = train.Batch(r.input_ids, r.attention_mask, r.response_mask, gamma, advantages)
    shards = {1: [torch.arange(16)],
              2: [torch.arange(13), torch.arange(13, 16)]}[accelerator.num_processes]
    shard = batch.rows(shards[accelerator.process_index])

    policy = harness.Policy(lm, temperature=1.0)
    model, optimizer = distributed.prepare(accelerator, policy,
                                           torch.optim.SGD(policy.parameters(), lr=1.0))
    stats = train.update(cfg, accelerator, model, optimizer, shard)
    layout = {name: {"type": type(p).__name__, "local": list(_local(p).shape),
                     "placements": [repr(x) for x in getattr(p, "placements", [])]}
              for name, p in model.named_parameters()}
    Path(f"{out}.rank{accelerator.process_index}.json").write_text(json.dumps(layout))
    state = accelerator.get_state_dict(model)  # full weights on the main process, also under FSDP
    if accelerator.is_main_process:
        weights = {k.removeprefix("lm."): v.detach().cpu() for k, v in state.items()}
        torch.save({"weights": weights, "loss": stats["loss"], "stats": stats,
                    "processes": accelerator.num_processes}, out)
    del model, optimizer
    distributed.shut_down(accelerator)


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if isinstance(p, DTensor) else p


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "ddp",
         int(sys.argv[4]) if len(sys.argv) > 4 else 1)
