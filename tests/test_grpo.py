"""Tests for grpo.py: hand-computed losses and gradients, an independent slow surrogate, token_logprobs
against the naive log_softmax on a tiny random Qwen3, and the defining property of each credit strategy."""

import math

import pytest
import torch

import grpo

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------
# group_advantages (eq. (10))
# --------------------------------------------------------------------------------------------------

def test_group_advantages_hand_computed_population_std():
    # group 0: r = [1, 0, 0, 0]; mean 0.25; population std sqrt(0.25 * 0.75) = 0.4330127
    #   A = [0.75, -0.25, -0.25, -0.25] / 0.4330127 = [1.7320508, -0.5773503, ...]
    # group 1: all rewards equal -> exactly 0
    r = torch.tensor([1.0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5])
    a = grpo.group_advantages(r, group_size=4)
    expect = torch.tensor([math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3), 0, 0, 0, 0])
    torch.testing.assert_close(a, expect, atol=1e-5, rtol=1e-5)
    assert torch.equal(a[4:], torch.zeros(4))
    # equal rewards whose float mean is not exact (7 * 0.1) still give exactly 0
    assert torch.equal(grpo.group_advantages(torch.full((7,), 0.1), 7), torch.zeros(7))
    # population std: every non-constant group has mean(A^2) = 1 (up to eps)
    g = grpo.group_advantages(torch.rand(5 * 8, generator=torch.Generator().manual_seed(0)), 8).view(5, 8)
    torch.testing.assert_close((g ** 2).mean(1), torch.ones(5), atol=1e-4, rtol=0)


def test_group_advantages_bad_input():
    with pytest.raises(ValueError, match="divide"):
        grpo.group_advantages(torch.zeros(7), group_size=4)
    with pytest.raises(ValueError, match="1-D"):
        grpo.group_advantages(torch.zeros(2, 4), group_size=4)
    with pytest.raises(ValueError, match="NaN"):
        grpo.group_advantages(torch.tensor([0.0, float("nan")]), group_size=2)


# --------------------------------------------------------------------------------------------------
# policy_loss (eq. (5)/(11))
# --------------------------------------------------------------------------------------------------

def _log(x):
    return torch.tensor(x, dtype=torch.float32).log()


def test_policy_loss_two_groups_three_tokens_hand_computed():
    # Two prompts, G = 2 samples each, L = 3 token positions. rewards [1, 0 | 0, 0]:
    #   group 0 -> A = [+1, -1] (times 0.5 / (0.5 + 1e-6)), group 1 -> A = [0, 0].
    # clip_eps 0.2, dual_clip 3, adv_clip 2.
    # seq 0, A = +1, r = [1.0, 1.5, 0.5], gamma = [1.5, 1, 1], 3 response tokens:
    #   t0: min(1*1, 1*1) = 1, x1.5 = 1.5            d/dlogp = gamma * r * A = 1.5
    #   t1: min(1.5, clip(1.5)=1.2) = 1.2  (clipped)  d/dlogp = 0
    #   t2: min(0.5, clip(0.5)=0.8) = 0.5             d/dlogp = 0.5
    #   mean over 3 tokens = 3.2 / 3
    # seq 1, A = -1, r = [0.5, 4.0, 100 (padding)], gamma = [1, 1.5, 7 (padding)], 2 response tokens:
    #   t0: min(-0.5, -0.8) = -0.8 (clipped)          d/dlogp = 0
    #   t1: min(-4, -1.2) = -4, dual floor 3 * -1 = -3 -> -3, x1.5 = -4.5   d/dlogp = 0
    #   t2: padding, nothing
    #   mean over 2 tokens = -5.3 / 2 = -2.65
    # seqs 2, 3: A = 0 -> 0 (they still count in 1/G).
    # J = (3.2/3 - 2.65 + 0 + 0) / 4 = -0.39583333; loss = -J = +0.39583333
    # d loss / d logp = -(1/4) * (1/3) * [1.5, 0, 0.5] on seq 0 = [-0.125, 0, -1/24]; zero elsewhere.
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    adv = grpo.group_advantages(rewards, group_size=2)
    old = torch.full((4, 3), -1.0)
    ratios = [[1.0, 1.5, 0.5], [0.5, 4.0, 100.0], [1.3, 0.7, 1.0], [2.0, 1.0, 1.0]]
    logp = (old + _log(ratios)).requires_grad_()
    gamma = torch.tensor([[1.5, 1, 1], [1, 1.5, 7], [1, 1, 1], [1.5, 1, 1]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    loss, stats = grpo.policy_loss(logp, old, adv, gamma, mask)
    torch.testing.assert_close(loss, torch.tensor(0.39583333), atol=1e-5, rtol=0)
    loss.backward()
    expect = torch.zeros(4, 3)
    expect[0] = torch.tensor([-0.125, 0.0, -1 / 24])
    torch.testing.assert_close(logp.grad, expect, atol=1e-6, rtol=1e-5)
    # 9 response tokens: clipped = seq0 t1, seq1 t0; dual-clipped = seq1 t1
    assert stats["clip_frac"] == pytest.approx(2 / 9)
    assert stats["dual_clip_frac"] == pytest.approx(1 / 9)


def test_ratio_one_gives_minus_mean_gamma_times_advantage():
    # r = 1: every min() term is A, so -J = -(1/G) sum_i (1/N_i) sum_t gamma_it * clip(A_i)
    g = torch.Generator().manual_seed(1)
    logp = torch.randn(6, 5, generator=g)
    adv = torch.tensor([3.0, -0.5, 1.0, -2.5, 0.0, 0.7])          # 3.0 and -2.5 get clipped to +-2
    gamma = 1 + torch.rand(6, 5, generator=g)
    mask = torch.rand(6, 5, generator=g) < 0.7
    mask[:, 0] = True
    loss, stats = grpo.policy_loss(logp, logp.clone(), adv, gamma, mask)
    a = adv.clamp(-2, 2)[:, None]
    expect = -torch.stack([(gamma[i] * a[i])[mask[i]].mean() for i in range(6)]).mean()
    torch.testing.assert_close(loss, expect)
    assert stats["ratio_mean"] == pytest.approx(1.0)
    assert stats["clip_frac"] == 0.0


def _slow_token_objective(r: float, a: float, eps: float, dual: float | None) -> float:
    """Independent scalar version of the clipped / dual-clipped PPO term, by cases."""
    if a >= 0:
        return min(r, 1 + eps) * a                # upside capped at 1 + eps; downside follows r
    # a < 0: the min picks the larger |.|: max(r, 1 - eps) * a; dual clip floors it at dual * a
    value = max(r, 1 - eps) * a
    return max(value, dual * a) if dual is not None else value


@pytest.mark.parametrize("a", [1.5, -1.5])
@pytest.mark.parametrize("dual", [3.0, None])
def test_clipping_and_dual_clip_both_signs_against_slow_cases(a, dual):
    ratios = [0.1, 0.5, 0.79, 0.81, 1.0, 1.19, 1.21, 2.0, 2.9, 3.1, 10.0]
    old = torch.zeros(1, len(ratios))
    logp = _log([ratios]).requires_grad_()
    mask = torch.ones(1, len(ratios), dtype=torch.bool)
    loss, _ = grpo.policy_loss(logp, old, torch.tensor([a]), torch.ones(1, len(ratios)), mask, dual_clip=dual)
    expect = -sum(_slow_token_objective(r, a, 0.2, dual) for r in ratios) / len(ratios)
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    loss.backward()
    # gradient flows exactly where the slow case returns r * a (no clip active)
    for j, r in enumerate(ratios):
        active = _slow_token_objective(r, a, 0.2, dual) == pytest.approx(r * a)
        assert (logp.grad[0, j].abs() > 0).item() == active, (r, a, dual)


def test_dual_clip_floor_value():
    # A = -1, r = 10: plain clipped PPO gives min(-10, -1.2) = -10; dual clip floors at 3 * -1 = -3.
    # A = +1, r = 10: min(10, 1.2) = 1.2, dual clip does not apply to positive advantages.
    logp, old = _log([[10.0]]), torch.zeros(1, 1)
    one, mask = torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool)
    assert grpo.policy_loss(logp, old, torch.tensor([-1.0]), one, mask)[0].item() == pytest.approx(3.0)
    assert grpo.policy_loss(logp, old, torch.tensor([-1.0]), one, mask, dual_clip=None)[0].item() == pytest.approx(10.0)
    assert grpo.policy_loss(logp, old, torch.tensor([1.0]), one, mask)[0].item() == pytest.approx(-1.2)


def test_padding_contributes_nothing():
    g = torch.Generator().manual_seed(2)
    logp, old = torch.randn(3, 4, generator=g) * 0.3, torch.randn(3, 4, generator=g) * 0.3
    adv, gamma = torch.tensor([1.0, -1.0, 0.5]), 1 + torch.rand(3, 4, generator=g)
    mask = torch.ones(3, 4, dtype=torch.bool)
    ref, _ = grpo.policy_loss(logp, old, adv, gamma, mask, ref_logp=old, kl_coef=0.1)
    # append 3 padded columns full of garbage: huge log-ratios, NaN gamma, NaN logp
    junk = torch.tensor([[1e4, -1e4, float("nan")]] * 3)
    logp2 = torch.cat([logp, junk], 1).requires_grad_()
    old2, ref2 = torch.cat([old, -junk], 1), torch.cat([old, junk], 1)
    gamma2 = torch.cat([gamma, torch.full((3, 3), float("nan"))], 1)
    mask2 = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], 1)
    for agg in ("seq-mean", "token-mean"):
        padded, stats = grpo.policy_loss(logp2, old2, adv, gamma2, mask2, ref_logp=ref2, kl_coef=0.1,
                                         aggregation=agg)
        unpadded, _ = grpo.policy_loss(logp, old, adv, gamma, mask, ref_logp=old, kl_coef=0.1, aggregation=agg)
        torch.testing.assert_close(padded, unpadded)
        assert all(math.isfinite(v) for v in stats.values())
    padded.backward()
    assert torch.equal(logp2.grad[:, 4:], torch.zeros(3, 3))
    torch.testing.assert_close(ref, grpo.policy_loss(logp, old, adv, gamma, mask, ref_logp=old, kl_coef=0.1)[0])


def _plain_grpo(logp, old, adv, mask, eps=0.2):
    """Textbook GRPO (no gamma, no dual clip): -(1/G) sum_i (1/N_i) sum_t min(rA, clip(r)A)."""
    r = (logp - old).exp()
    a = adv.clamp(-2, 2)[:, None]
    term = torch.minimum(r * a, r.clamp(1 - eps, 1 + eps) * a)
    return -torch.stack([term[i][mask[i]].sum() / mask[i].sum() for i in range(len(adv))]).mean()


def test_gamma_one_equals_plain_grpo_exactly():
    g = torch.Generator().manual_seed(3)
    logp, old = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    adv = torch.randn(8, generator=g)
    mask = torch.rand(8, 6, generator=g) < 0.8
    mask[:, 0] = True
    loss, _ = grpo.policy_loss(logp, old, adv, torch.ones(8, 6), mask, dual_clip=None)
    torch.testing.assert_close(loss, _plain_grpo(logp, old, adv, mask), atol=0, rtol=1e-6)
    # and gamma = c everywhere scales the loss by c exactly
    loss_c, _ = grpo.policy_loss(logp, old, adv, torch.full((8, 6), 1.5), mask, dual_clip=None)
    torch.testing.assert_close(loss_c, 1.5 * loss)


def test_token_mean_and_kl_hand_computed():
    # r = 1, A = [1, -1], gamma = 1; seq 0 has 1 token, seq 1 has 3 tokens.
    #   seq-mean   = -((1/1) * 1 + (1/3) * 3 * -1) / 2 = 0
    #   token-mean = -(1 - 3) / 4 = +0.5
    # KL with ref - logp = log 2 on every token: k3 = 2 - log 2 - 1 = 0.3068528, coef 0.1 adds +0.03068528
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    adv, one = torch.tensor([1.0, -1.0]), torch.ones(2, 3)
    assert grpo.policy_loss(logp, logp, adv, one, mask)[0].item() == pytest.approx(0.0, abs=1e-7)
    assert grpo.policy_loss(logp, logp, adv, one, mask, aggregation="token-mean")[0].item() == pytest.approx(0.5)
    ref = torch.full((2, 3), math.log(2))
    loss, stats = grpo.policy_loss(logp, logp, adv, one, mask, ref_logp=ref, kl_coef=0.1)
    assert loss.item() == pytest.approx(0.1 * (1 - math.log(2)))
    assert stats["kl"] == pytest.approx(1 - math.log(2))


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
    with pytest.raises(ValueError, match="ref_logp"):
        grpo.policy_loss(x, x, a, x, m, kl_coef=0.1)
    with pytest.raises(ValueError, match="NaN"):
        grpo.policy_loss(x, x, torch.tensor([float("nan"), 0.0]), x, m)


# --------------------------------------------------------------------------------------------------
# token_logprobs against the naive full log_softmax, tiny random Qwen3
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_qwen():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64)
    return Qwen3ForCausalLM(cfg).eval()


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
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float() / temperature
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
    for fn in (lambda: grpo.token_logprobs(tiny_qwen, ids, attn, chunk_size=3), lambda: _naive(tiny_qwen, ids, attn)[0]):
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


# --------------------------------------------------------------------------------------------------
# credit strategies
# --------------------------------------------------------------------------------------------------

import types  # noqa: E402

import flow  # noqa: E402

P = 4                                           # prompt area width (left padded)


def _fake_rollout(prompt_lens=(4, 3, 4, 2), resp_lens=(8, 10, 5, 9), answer=(True, True, True, False), seed=0,
                  vocab=101):
    """A stand-in for rollout.Rollout: the fixed field names, random causal head-mean attention.
    Columns [0, P) hold the left-padded prompt, [P, T) the right-padded response; the answer region is the
    2 response tokens before the last (EOS) one; rows with answer=False have no answer span."""
    B, T = len(prompt_lens), P + max(resp_lens)
    cols = torch.arange(T)
    prompt = torch.stack([(cols < P) & (cols >= P - n) for n in prompt_lens])          # [B, T]
    resp = torch.stack([(cols >= P) & (cols < P + n) for n in resp_lens])               # [B, T]
    ans = torch.stack([(cols >= P + n - 3) & (cols < P + n - 1) & a for n, a in zip(resp_lens, answer)])
    real = prompt | resp
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, T, generator=g) * 2
    allowed = torch.ones(T, T, dtype=torch.bool).tril() & real[:, None, :] & real[:, :, None]   # [B, q, k]
    attn = logits.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)              # [B, T, T]
    ids = torch.randint(1, vocab, (B, T), generator=g).masked_fill(~real, 0)
    return types.SimpleNamespace(input_ids=ids, attention_mask=real.long(), prompt_mask=prompt,
                                 response_mask=resp, answer_mask=ans, attn=attn,
                                 lengths=torch.tensor(resp_lens))


def _k(n, ratio=0.4):
    return math.floor(n * ratio + 0.5)


def _assert_top_k(gam, scores, resp, gamma=1.5, ratio=0.4, largest=True):
    """gamma on exactly round(ratio * n) response tokens, 1 elsewhere, and every selected score is >= (or
    <= for bottom-k) every unselected response score."""
    for b in range(resp.shape[0]):
        sel, rest = (gam[b] == gamma) & resp[b], resp[b] & (gam[b] != gamma)
        assert torch.equal(gam[b][~sel], torch.ones(int((~sel).sum())))
        assert int(sel.sum()) == _k(int(resp[b].sum()), ratio)
        if sel.any() and rest.any():
            if largest:
                assert scores[b][sel].min() >= scores[b][rest].max()
            else:
                assert scores[b][sel].max() <= scores[b][rest].min()


def _tau(r):
    return flow.throughput(flow.influence_graph(r.attn), r.prompt_mask, r.answer_mask)


def test_credit_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError, match="unknown credit strategy 'flow-top'.*flow-bottom.*entropy"):
        grpo.credit_gamma("flow-top", _fake_rollout())


def test_credit_uniform_is_plain_grpo():
    r = _fake_rollout()
    assert torch.equal(grpo.credit_gamma("uniform", r), torch.ones(r.response_mask.shape))


@pytest.mark.parametrize("largest", [True, False])
def test_credit_flow_top_and_bottom_k(largest):
    r = _fake_rollout(answer=(True,) * 4)
    gam = grpo.credit_gamma("flow" if largest else "flow-bottom", r)
    assert gam.dtype == torch.float32 and gam.shape == r.response_mask.shape
    _assert_top_k(gam, _tau(r), r.response_mask, largest=largest)
    gam2 = grpo.credit_gamma("flow", r, ratio=0.2, gamma=1.2)
    _assert_top_k(gam2, _tau(r), r.response_mask, gamma=1.2, ratio=0.2)


def test_credit_flow_without_answer_span_is_uniform():
    r = _fake_rollout()                                                    # row 3 has no answer span
    for name in ("flow", "flow-bottom", "flow-raw", "flow-tanh", "flow-mass40"):
        gam = grpo.credit_gamma(name, r)
        assert torch.equal(gam[3], torch.ones(r.response_mask.shape[1])), name
        assert (gam[:3] != 1).any(), name
    with pytest.raises(ValueError, match="rollout.attn"):
        grpo.credit_gamma("flow", types.SimpleNamespace(**{**vars(r), "attn": None}))


def test_credit_random_count_and_seed():
    r = _fake_rollout()
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = grpo.credit_gamma("random", r, generator=gen(0))
    _assert_top_k(a, torch.zeros(r.response_mask.shape), r.response_mask)   # right count, only in response
    assert torch.equal(a, grpo.credit_gamma("random", r, generator=gen(0)))
    picks = {tuple(grpo.credit_gamma("random", r, generator=gen(s))[1].tolist()) for s in range(5)}
    assert len(picks) > 1                                                   # it does vary with the seed


def test_credit_entropy_picks_the_most_uncertain_position():
    # Crafted next-token distributions: peaked (entropy ~0) everywhere except a uniform one (entropy log V)
    # at column t = 6 of row 0 and t = 9 of row 1, i.e. the distributions of tokens 7 and 10.
    r = _fake_rollout(prompt_lens=(4, 4), resp_lens=(8, 10), answer=(True, True))
    B, T, V = 2, r.response_mask.shape[1], 50
    logits = torch.zeros(B, T - 1, V)
    logits[..., 0] = 20.0
    logits[0, 6] = 0.0
    logits[1, 9] = 0.0
    logits[1, 5, :2] = 20.0                                                # two-way tie: log 2, second
    ent = torch.distributions.Categorical(logits=logits).entropy()         # [B, T-1]
    gam = grpo.credit_gamma("entropy", r, entropy=ent, ratio=0.1)          # k = 1 of 8 and of 10
    assert gam[0, 7] == 1.5 and (gam[0] == 1.5).sum() == 1
    assert gam[1, 10] == 1.5 and (gam[1] == 1.5).sum() == 1
    gam2 = grpo.credit_gamma("entropy", r, entropy=ent, ratio=0.2)         # k = 2 of 10: the log 2 one too
    assert gam2[1, 6] == 1.5 and (gam2[1] == 1.5).sum() == 2
    with pytest.raises(ValueError, match=r"\[B, T-1\]"):
        grpo.credit_gamma("entropy", r, entropy=torch.zeros(B, T))


def test_attention_received_against_slow_loop_and_selection():
    r = _fake_rollout()
    got = grpo.attention_received(r.attn, r.response_mask)
    B, T = r.response_mask.shape
    slow = torch.zeros(B, T)
    for b in range(B):
        for k in range(T):
            readers = [q for q in range(k + 1, T) if r.response_mask[b, q]]
            if readers:
                slow[b, k] = sum(r.attn[b, q, k] for q in readers) / len(readers)
    torch.testing.assert_close(got, slow)
    # a token that every later response token attends to strongly is selected
    attn = r.attn.clone()
    attn[0, P + 4:, P + 2] += 5.0
    gam = grpo.credit_gamma("attention", types.SimpleNamespace(**{**vars(r), "attn": attn}), ratio=0.1)
    assert gam[0, P + 2] == 1.5 and (gam[0] == 1.5).sum() == 1
    _assert_top_k(grpo.credit_gamma("attention", r), got, r.response_mask)


def test_gradient_saliency_against_inputs_embeds_and_selection(tiny_qwen):
    r = _fake_rollout()
    got = grpo.gradient_saliency(tiny_qwen, r.input_ids, r.attention_mask, r.response_mask)
    assert all(p.grad is None for p in tiny_qwen.parameters())             # parameters untouched
    # slow reference: differentiate through inputs_embeds with the naive full log_softmax
    emb = tiny_qwen.get_input_embeddings()(r.input_ids).detach().requires_grad_()
    pos = (r.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = tiny_qwen(inputs_embeds=emb, attention_mask=r.attention_mask, position_ids=pos).logits
    logp = logits[:, :-1].log_softmax(-1).gather(-1, r.input_ids[:, 1:, None]).squeeze(-1)
    (logp * r.response_mask[:, 1:]).sum().backward()
    torch.testing.assert_close(got, emb.grad.norm(dim=-1), atol=1e-5, rtol=1e-4)
    _assert_top_k(grpo.credit_gamma("gradient", r, model=tiny_qwen), got, r.response_mask)
    with pytest.raises(ValueError, match="model="):
        grpo.credit_gamma("gradient", r)


CONTINUOUS = ["flow-raw", "flow-log1p", "flow-sigmoid", "flow-mad"]


@pytest.mark.parametrize("name", CONTINUOUS)
def test_continuous_variants_budget_floor_and_monotone(name):
    r = _fake_rollout(answer=(True,) * 4, seed=1)
    tau, resp = _tau(r), r.response_mask
    gam = grpo.credit_gamma(name, r)
    assert torch.equal(gam[~resp], torch.ones(int((~resp).sum())))
    for b in range(4):
        w, t = gam[b][resp[b]].double(), tau[b][resp[b]]
        assert w.mean().item() == pytest.approx(1 + 0.4 * 0.5, abs=1e-5)  # the hard rule's mean weight
        assert (w >= 1 - 1e-6).all()
        w_sorted = w[t.argsort()]
        assert (w_sorted.diff() >= -1e-6).all()                           # monotone in flow
        assert w.max() > w.min()


def test_continuous_variants_formulas():
    # w - 1 is proportional to g: tau (raw), log1p(tau / mean) (log1p), sigmoid(z) (sigmoid)
    r = _fake_rollout(answer=(True,) * 4, seed=2)
    tau, resp = _tau(r), r.response_mask
    for b in range(4):
        t = tau[b][resp[b]]
        z = (t - t.mean()) / t.std(unbiased=False)
        for name, g in (("flow-raw", t), ("flow-log1p", torch.log1p(t / t.mean())), ("flow-sigmoid", z.sigmoid())):
            w = grpo.credit_gamma(name, r)[b][resp[b]].double()
            torch.testing.assert_close(w - 1, 0.2 * g / g.mean(), atol=1e-6, rtol=1e-5)
        # MAD: tokens above median + 3 * 1.4826 * MAD all share the top weight, the rest are linear in tau
        med = t.median()
        cap = med + 3 * 1.4826 * (t - med).abs().median()
        w = grpo.credit_gamma("flow-mad", r)[b][resp[b]].double()
        torch.testing.assert_close(w - 1, 0.2 * t.clamp(max=cap) / t.clamp(max=cap).mean(), atol=1e-6, rtol=1e-5)
        # tanh + z-score: 1 + 0.5 tanh(z), inside (0.5, 1.5), above 1 exactly where tau is above the mean
        w = grpo.credit_gamma("flow-tanh", r)[b][resp[b]].double()
        torch.testing.assert_close(w, 1 + 0.5 * z.tanh(), atol=1e-6, rtol=1e-5)
        assert ((w > 0.5) & (w < 1.5)).all() and torch.equal(w > 1, t > t.mean())


def test_continuous_map_with_indicator_flow_is_the_hard_rule(monkeypatch):
    # If the flow were the 0/1 indicator of the top-40% set, raw-flow weighting gives eq. (6) back exactly
    # (10 and 5 response tokens: k / n = 0.4 exactly).
    r = _fake_rollout(prompt_lens=(4, 3), resp_lens=(10, 5), answer=(True, True))
    hard = grpo.credit_gamma("flow", r)
    indicator = (hard == 1.5).double()
    monkeypatch.setattr(flow, "throughput", lambda W, pm, am: indicator)
    torch.testing.assert_close(grpo.credit_gamma("flow-raw", r), hard)


def test_flow_mass_thresholds_hand_computed(monkeypatch):
    # response throughputs (shuffled) 0.15 0.5 0.05 0.2 0.1 (total 1):
    #   20% -> {0.5};  40% -> {0.5};  60% -> {0.5, 0.2} (0.7);  80% -> {0.5, 0.2, 0.15} (0.85)
    r = _fake_rollout(prompt_lens=(4,), resp_lens=(5,), answer=(True,))
    tau = torch.zeros(1, 9, dtype=torch.float64)
    tau[0, P:] = torch.tensor([0.15, 0.5, 0.05, 0.2, 0.1])
    tau[0, :P] = 9.0                                                       # prompt flow is not a candidate
    monkeypatch.setattr(flow, "throughput", lambda W, pm, am: tau)
    expect = {20: [1], 40: [1], 60: [1, 3], 80: [0, 1, 3]}
    for p, idx in expect.items():
        gam = grpo.credit_gamma(f"flow-mass{p}", r)
        assert (gam[0] == 1.5).nonzero().flatten().tolist() == [P + i for i in idx], p
    # exact boundary: throughputs 1 2 0 2 0 (total 5); the first 2 alone is exactly 40%, so it suffices
    tau[0, P:] = torch.tensor([1.0, 2.0, 0.0, 2.0, 0.0])
    assert (grpo.credit_gamma("flow-mass40", r)[0] == 1.5).nonzero().flatten().tolist() == [P + 1]


@pytest.mark.parametrize("mass", [20, 40, 60, 80])
def test_flow_mass_covers_minimal_top_set(mass):
    r = _fake_rollout(answer=(True,) * 4, seed=3)
    tau, resp = _tau(r), r.response_mask
    gam = grpo.credit_gamma(f"flow-mass{mass}", r)
    for b in range(4):
        sel, rest = (gam[b] == 1.5) & resp[b], resp[b] & (gam[b] == 1)
        total = tau[b][resp[b]].sum()
        assert tau[b][sel].sum() >= mass / 100 * total                     # covers the threshold
        assert tau[b][sel].sum() - tau[b][sel].min() < mass / 100 * total  # and no token could be dropped
        if rest.any():
            assert tau[b][sel].min() >= tau[b][rest].max()                 # with the highest-flow tokens


def test_credit_bad_arguments():
    r = _fake_rollout()
    with pytest.raises(ValueError, match="ratio"):
        grpo.credit_gamma("flow", r, ratio=1.5)
    with pytest.raises(ValueError, match="gamma"):
        grpo.credit_gamma("flow", r, gamma=float("nan"))
    with pytest.raises(ValueError, match="entropy="):
        grpo.credit_gamma("entropy", r)
