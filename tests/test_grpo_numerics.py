"""grpo.py's numerics and contracts: padding that holds garbage, clear errors for bad input, and
token_logprobs (chunked, checkpointed) against the naive full log_softmax on a tiny random Qwen3.

The equations themselves are tested in tests/test_grpo.py.
"""

import math

import pytest
import torch

import grpo

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------
# group_advantages and policy_loss: padding and bad input
# --------------------------------------------------------------------------------------------------

def test_group_advantages_bad_input():
    with pytest.raises(ValueError, match="divide"):
        grpo.group_advantages(torch.zeros(7), group_size=4)
    with pytest.raises(ValueError, match="1-D"):
        grpo.group_advantages(torch.zeros(2, 4), group_size=4)
    with pytest.raises(ValueError, match="NaN"):
        grpo.group_advantages(torch.tensor([0.0, float("nan")]), group_size=2)


def test_padding_contributes_nothing():
    g = torch.Generator().manual_seed(2)
    logp, old = torch.randn(3, 4, generator=g) * 0.3, torch.randn(3, 4, generator=g) * 0.3
    adv, gamma = torch.tensor([1.0, -1.0, 0.5]), 1 + torch.rand(3, 4, generator=g)
    mask = torch.ones(3, 4, dtype=torch.bool)
    # append 3 padded columns full of garbage: huge log-ratios, NaN gamma, NaN logp
    junk = torch.tensor([[1e4, -1e4, float("nan")]] * 3)
    logp2 = torch.cat([logp, junk], 1).requires_grad_()
    old2 = torch.cat([old, -junk], 1)
    gamma2 = torch.cat([gamma, torch.full((3, 3), float("nan"))], 1)
    mask2 = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], 1)
    for agg in ("seq-mean", "token-mean"):
        padded, stats = grpo.policy_loss(logp2, old2, adv, gamma2, mask2, aggregation=agg)
        unpadded, _ = grpo.policy_loss(logp, old, adv, gamma, mask, aggregation=agg)
        torch.testing.assert_close(padded, unpadded)
        assert all(math.isfinite(v) for v in stats.values())
    padded.backward()
    assert torch.equal(logp2.grad[:, 4:], torch.zeros(3, 3))


def test_policy_loss_bad_input():
    x, m, a = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2)
    with pytest.raises(ValueError, match=r"\[:, 1:\]"):
        grpo.policy_loss(x, x, a, torch.ones(2, 4), m)
    with pytest.raises(ValueError, match="advantages"):
        grpo.policy_loss(x, x, torch.zeros(3), x, m)
    with pytest.raises(ValueError, match="aggregation"):
        grpo.policy_loss(x, x, a, x, m, aggregation="sum")
    with pytest.raises(ValueError, match="dual_clip"):
        grpo.policy_loss(x, x, a, x, m, dual_clip=0.5)
    with pytest.raises(ValueError, match="NaN"):
        grpo.policy_loss(x, x, torch.tensor([float("nan"), 0.0]), x, m)


# --------------------------------------------------------------------------------------------------
# token_logprobs against the naive full log_softmax, tiny random Qwen3
# --------------------------------------------------------------------------------------------------

def _left_padded_batch():
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(1, 101, (3, 11), generator=g)
    attn = torch.ones(3, 11, dtype=torch.long)
    attn[1, :3] = 0          # left padding: 3 pads
    attn[2, :1] = 0          # 1 pad
    attn[2, -2:] = 0         # and right padding after the response
    ids[attn == 0] = 0       # pad id
    return ids, attn


def _naive(model, ids, attn, temperature=1.0):
    """The memory-hungry reference: full [B, T, V] float32 log_softmax, then gather."""
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float()
    logits = logits / temperature
    logsm = logits[:, :-1].log_softmax(-1)                               # [B, T-1, V]
    logp = logsm.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return logp, -(logsm.exp() * logsm).sum(-1)


@pytest.mark.parametrize("chunk_size", [3, 256])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_equals_log_softmax_gather(tiny_qwen, chunk_size, temperature):
    ids, attn = _left_padded_batch()
    valid = (attn[:, :-1] * attn[:, 1:]).bool()                          # both positions real
    with torch.no_grad():
        logp, ent = grpo.token_logprobs(tiny_qwen, ids, attn, temperature, chunk_size=chunk_size,
                                        return_entropy=True)
        ref_logp, ref_ent = _naive(tiny_qwen, ids, attn, temperature)
    assert logp.shape == ent.shape == (3, 10) and logp.dtype == torch.float32
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()
    torch.testing.assert_close(logp[valid], ref_logp[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent[valid], ref_ent[valid], atol=1e-5, rtol=0)


def test_token_logprobs_left_padding_matches_unpadded_row(tiny_qwen):
    ids, attn = _left_padded_batch()
    with torch.no_grad():
        batch = grpo.token_logprobs(tiny_qwen, ids, attn, chunk_size=4)
        alone = grpo.token_logprobs(tiny_qwen, ids[1:2, 3:], attn[1:2, 3:], chunk_size=4)
    torch.testing.assert_close(batch[1, 3:], alone[0], atol=1e-5, rtol=0)


def test_token_logprobs_gradient_matches_naive(tiny_qwen):
    # the checkpointed chunks must give the same gradient as the naive graph
    ids, attn = _left_padded_batch()
    valid = (attn[:, :-1] * attn[:, 1:]).float()
    w = tiny_qwen.model.layers[0].self_attn.q_proj.weight
    grads = []
    for fn in (lambda: grpo.token_logprobs(tiny_qwen, ids, attn, chunk_size=3),
               lambda: _naive(tiny_qwen, ids, attn)[0]):
        tiny_qwen.zero_grad()
        (fn() * valid).sum().backward()
        grads.append((w.grad.clone(), tiny_qwen.lm_head.weight.grad.clone()))
    tiny_qwen.zero_grad()
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_token_logprobs_bad_input(tiny_qwen):
    ids, attn = _left_padded_batch()
    with pytest.raises(ValueError, match="temperature"):
        grpo.token_logprobs(tiny_qwen, ids, attn, temperature=0.0)
    with pytest.raises(ValueError, match="attention_mask"):
        grpo.token_logprobs(tiny_qwen, ids, attn[:, 1:])

