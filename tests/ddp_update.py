"""One train.update on a fixed global batch, in 1 or N processes; saves the updated weights.

Run by tests/test_train.py, as `python tests/ddp_update.py OUT AGG` and as
`accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 tests/ddp_update.py
OUT AGG`. Every process builds the same 16-sequence batch (same seed) and takes its shard: 13 rows
on process 0 and 3 on process 1, so process 1 runs zero-weight passes to keep in step. SGD with
lr 1 makes the weight change equal the (clipped) gradient, so the comparison does not go through
Adam's sign-like first step.
"""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tasks  # noqa: E402
import distributed  # noqa: E402
import rollout  # noqa: E402
import train  # noqa: E402


def main(out: str, aggregation: str) -> None:
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    cfg = train.Config(micro_batch=3, aggregation=aggregation, max_grad_norm=1e9)
    lm, tokenizer = train.load_for_training(cfg, accelerator.device)
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

    policy = train.Policy(lm, temperature=1.0)
    model, optimizer = accelerator.prepare(policy, torch.optim.SGD(policy.parameters(), lr=1.0))
    stats = train.update(cfg, accelerator, model, optimizer, shard)
    if accelerator.is_main_process:
        state = accelerator.unwrap_model(model).lm.state_dict()
        weights = {k: v.detach().cpu() for k, v in state.items()}
        torch.save({"weights": weights, "loss": stats["loss"]}, out)
    del model, optimizer
    distributed.shut_down(accelerator)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
