"""grpo.py against the paper: eq. (10)'s group advantages and eq. (5)/(11)'s gamma-weighted clipped
surrogate on hand-computed cases, an independent slow surrogate, and their defining properties.

Each test's docstring is the property in the paper's words. Numerics, padding, bad input and the
chunked token_logprobs: tests/test_grpo_numerics.py; the credit strategies: tests/test_credit.py.
"""

import math

import pytest
import torch

import grpo

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------
# group_advantages (eq. (10))
# --------------------------------------------------------------------------------------------------

def test_group_advantages_hand_computed_population_std():
    """Eq. (10): A_i = (r_i - mean({r_j})) / std({r_j}) over the group's own rewards."""
    # group 0: r = [1, 0, 0, 0]; mean 0.25; population std sqrt(0.25 * 0.75) = 0.4330127
    #   A = [0.75, -0.25, -0.25, -0.25] / 0.4330127 = [1.7320508, -0.5773503, ...]
    # group 1: all rewards equal -> exactly 0
    r = torch.tensor([1.0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5])
    a = grpo.group_advantages(r, group_size=4)
    third = -1 / math.sqrt(3)
    expect = torch.tensor([math.sqrt(3), third, third, third, 0, 0, 0, 0])
    torch.testing.assert_close(a, expect, atol=1e-5, rtol=1e-5)
    assert torch.equal(a[4:], torch.zeros(4))
    # equal rewards whose float mean is not exact (7 * 0.1) still give exactly 0
    assert torch.equal(grpo.group_advantages(torch.full((7,), 0.1), 7), torch.zeros(7))
    # population std: every non-constant group has mean(A^2) = 1 (up to eps)
    rewards = torch.rand(5 * 8, generator=torch.Generator().manual_seed(0))
    g = grpo.group_advantages(rewards, 8).view(5, 8)
    torch.testing.assert_close((g ** 2).mean(1), torch.ones(5), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_groups_get_exactly_zero_whatever_the_rounding(dtype):
    """A group whose rewards are all equal carries no signal: exactly 0, even where the float mean
    of the rewards is not the reward (7 x 0.1 in float32: the eps alone would give -0.007)."""
    for value in (0.1, 1 / 3, 0.7, 2 / 3, 0.3, 1e-3):
        for G in (2, 3, 5, 7, 8, 16, 64):
            constant = torch.full((G,), value, dtype=dtype)
            assert torch.equal(grpo.group_advantages(constant, G), torch.zeros(G)), (value, G)
            real = torch.linspace(0, 1, G, dtype=dtype)  # with a non-constant group next to it
            a = grpo.group_advantages(torch.cat([constant, real]), G)
            assert torch.equal(a[:G], torch.zeros(G)), (value, G, dtype)
            assert (a[G:] ** 2).mean().item() == pytest.approx(1, abs=1e-4)


# --------------------------------------------------------------------------------------------------
# policy_loss (eq. (5)/(11))
# --------------------------------------------------------------------------------------------------

def _log(x):
    return torch.tensor(x, dtype=torch.float32).log()


def test_policy_loss_two_groups_three_tokens_hand_computed():
    """Eq. (11): (1/G) sum_i (1/N_i) sum_t gamma_it min(r A, clip(r, 1-eps, 1+eps) A), by hand."""
    # Two prompts, G = 2 samples each, L = 3 token positions. rewards [1, 0 | 0, 0]:
    #   group 0 -> A = [+1, -1] (times 0.5 / (0.5 + 1e-6)), group 1 -> A = [0, 0].
    # clip_eps 0.2, dual_clip 3, adv_clip 2.
    # seq 0, A = +1, r = [1.0, 1.5, 0.5], gamma = [1.5, 1, 1], 3 response tokens:
    #   t0: min(1*1, 1*1) = 1, x1.5 = 1.5            d/dlogp = gamma * r * A = 1.5
    #   t1: min(1.5, clip(1.5)=1.2) = 1.2  (clipped)  d/dlogp = 0
    #   t2: min(0.5, clip(0.5)=0.8) = 0.5             d/dlogp = 0.5
    #   mean over 3 tokens = 3.2 / 3
    # seq 1, A = -1, r = [0.5, 4.0, 100 (padding)], gamma = [1, 1.5, 7 (padding)], 2 response
    # tokens:
    #   t0: min(-0.5, -0.8) = -0.8 (clipped)          d/dlogp = 0
    #   t1: min(-4, -1.2) = -4, dual floor 3 * -1 = -3 -> -3, x1.5 = -4.5   d/dlogp = 0
    #   t2: padding, nothing
    #   mean over 2 tokens = -5.3 / 2 = -2.65
    # seqs 2, 3: A = 0 -> 0 (they still count in 1/G).
    # J = (3.2/3 - 2.65 + 0 + 0) / 4 = -0.39583333; loss = -J = +0.39583333
    # d loss / d logp = -(1/4) * (1/3) * [1.5, 0, 0.5] on seq 0 = [-0.125, 0, -1/24]; 0 elsewhere.
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    adv = grpo.group_advantages(rewards, group_size=2)
    old = torch.full((4, 3), -1.0)
    prob_ratios = [[1.0, 1.5, 0.5], [0.5, 4.0, 100.0], [1.3, 0.7, 1.0], [2.0, 1.0, 1.0]]
    logp = (old + _log(prob_ratios)).requires_grad_()
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


def test_prob_ratio_one_gives_minus_mean_gamma_times_advantage():
    """With pi_theta = pi_old each min() is A_i: -J = -(1/G) sum_i (1/N_i) sum_t gamma_it A_i."""
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
    assert stats["prob_ratio_mean"] == pytest.approx(1.0)
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
    """Eq. (11)'s min(r A, clip(r, 1 - eps, 1 + eps) A) for both signs of A, against slow cases."""
    prob_ratios = [0.1, 0.5, 0.79, 0.81, 1.0, 1.19, 1.21, 2.0, 2.9, 3.1, 10.0]
    n = len(prob_ratios)
    old = torch.zeros(1, n)
    logp = _log([prob_ratios]).requires_grad_()
    mask = torch.ones(1, n, dtype=torch.bool)
    loss, _ = grpo.policy_loss(logp, old, torch.tensor([a]), torch.ones(1, n), mask, dual_clip=dual)
    expect = -sum(_slow_token_objective(r, a, 0.2, dual) for r in prob_ratios) / n
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    loss.backward()
    # gradient flows exactly where the slow case returns r * a (no clip active)
    for j, r in enumerate(prob_ratios):
        active = _slow_token_objective(r, a, 0.2, dual) == pytest.approx(r * a)
        assert (logp.grad[0, j].abs() > 0).item() == active, (r, a, dual)


def test_dual_clip_floor_value():
    """The dual clip of ROLL's surrogate floors a negative-advantage term at dual_clip * A."""
    # A = -1, r = 10: plain clipped PPO gives min(-10, -1.2) = -10; dual clip floors at 3 * -1 = -3.
    # A = +1, r = 10: min(10, 1.2) = 1.2, dual clip does not apply to positive advantages.
    logp, old = _log([[10.0]]), torch.zeros(1, 1)
    one, mask = torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool)
    def loss(a, **kw):
        return grpo.policy_loss(logp, old, torch.tensor([a]), one, mask, **kw)[0].item()

    assert loss(-1.0) == pytest.approx(3.0)
    assert loss(-1.0, dual_clip=None) == pytest.approx(10.0)
    assert loss(1.0) == pytest.approx(-1.2)


@pytest.mark.parametrize(("r", "a", "gamma", "term"), [
    (5.0, -2.5, 1.0, -6.0),   # A' = clamp(A, -2, 2) = -2: min(-10, -2.4) = -10, floor 3 A' = -6
    (5.0, -1.0, 1.5, -4.5),   # floor 3 A = -3, then gamma: -4.5 (not max(1.5 * -5, -3) = -3)
    (5.0, -2.5, 1.5, -9.0),   # both: 1.5 * max(-10, 3 * -2)
    (5.0, -3.0, 0.5, -3.0),   # 0.5 * max(-10, -6)
    (2.0, -2.5, 1.5, -6.0),   # min(-4, -2.4) = -4 above the floor -6: 1.5 * -4
    (5.0, 2.5, 1.5, 1.5 * 1.2 * 2),  # A > 0: no floor, clip at 1 + eps of the clipped A
])
def test_dual_clip_floor_with_gamma_and_advantage_clip(r, a, gamma, term):
    """The floor is dual_clip * A' of the clipped advantage A', inside gamma's product:
    j = gamma * max(min(r A', clip(r) A'), 3 A') for A' < 0."""
    logp, old = _log([[r]]), torch.zeros(1, 1)
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, _ = grpo.policy_loss(logp, old, torch.tensor([a]), torch.tensor([[gamma]]), mask)
    assert -loss.item() == pytest.approx(term, rel=1e-6)


def _plain_grpo(logp, old, adv, mask, eps=0.2):
    """Textbook GRPO (no gamma, no dual clip): -(1/G) sum_i (1/N_i) sum_t min(rA, clip(r)A)."""
    r = (logp - old).exp()
    a = adv.clamp(-2, 2)[:, None]
    term = torch.minimum(r * a, r.clamp(1 - eps, 1 + eps) * a)
    return -torch.stack([term[i][mask[i]].sum() / mask[i].sum() for i in range(len(adv))]).mean()


def test_gamma_one_equals_plain_grpo_exactly():
    """In standard GRPO the importance coefficient is set uniformly as gamma_it = 1."""
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


def test_token_mean_hand_computed():
    """Eq. (11)'s 1/N_i per sequence (seq-mean) against DAPO's one mean over all tokens."""
    # r = 1, A = [1, -1], gamma = 1; seq 0 has 1 token, seq 1 has 3 tokens.
    #   seq-mean   = -((1/1) * 1 + (1/3) * 3 * -1) / 2 = 0
    #   token-mean = -(1 - 3) / 4 = +0.5
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    adv, one = torch.tensor([1.0, -1.0]), torch.ones(2, 3)
    assert grpo.policy_loss(logp, logp, adv, one, mask)[0].item() == pytest.approx(0.0, abs=1e-7)
    token_mean = grpo.policy_loss(logp, logp, adv, one, mask, aggregation="token-mean")[0]
    assert token_mean.item() == pytest.approx(0.5)

