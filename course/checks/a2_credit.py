"""Checks of assignment a2_credit: top_k_mask and credit_weights (eq. 6) in flow.py,
group_advantages (eq. 10) and policy_loss (eqs. 5/11) in grpo.py.

Expected values are worked out by hand in the docstrings or follow from a property stated in the
message; nothing here calls reference code.
"""

import math

import torch
from grade import check, expect, expect_close, fmt


def picked(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


def loss_of(grpo, logp, old, adv, gamma=None, mask=None, **kw):
    gamma = torch.ones_like(logp) if gamma is None else gamma
    mask = torch.ones_like(logp, dtype=torch.bool) if mask is None else mask
    out = grpo.policy_loss(logp, old, adv, gamma, mask, **kw)
    expect(isinstance(out, tuple) and len(out) == 2,
           "policy_loss must return (loss, stats): a scalar tensor and a dict of floats")
    loss, stats = out
    expect(isinstance(loss, torch.Tensor) and loss.dim() == 0, "the loss must be a scalar tensor")
    return loss, stats


def one_token(grpo, ratio: float, adv: float, gamma: float = 1.0, **kw) -> float:
    """The loss of one sequence with one response token: -gamma * j(r, A)."""
    logp = torch.tensor([[math.log(ratio)]], dtype=torch.float64)
    old = torch.zeros(1, 1, dtype=torch.float64)
    loss, _ = loss_of(grpo, logp, old, torch.tensor([adv]), torch.tensor([[gamma]]), **kw)
    return float(loss)


# --------------------------------------------------------------------------------------------------
# visible checks
# --------------------------------------------------------------------------------------------------


@check(2)
def test_top_k_hand_example(flow):
    """top_k_mask: the 40% highest-scoring candidates (2 of 5 here)"""
    scores = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.2])
    got = flow.top_k_mask(scores, torch.ones(5, dtype=torch.bool))
    expect(got.dtype == torch.bool, f"top_k_mask must return a bool mask, got {got.dtype}")
    expect(picked(got) == [1, 3], f"selected tokens {picked(got)} of scores {scores.tolist()} at "
           "ratio 0.4: k = round(0.4 * 5) = 2, the largest are tokens 3 (0.9) and 1 (0.5)")


@check(2)
def test_top_k_only_candidates(flow):
    """top_k_mask: tokens outside candidate_mask are never selected, k counts candidates only"""
    scores = torch.tensor([9.0, 8.0, 0.1, 0.4, 0.3, 0.2, 7.0])
    candidates = torch.tensor([False, False, True, True, True, True, False])
    got = flow.top_k_mask(scores, candidates, ratio=0.5)
    expect(picked(got) == [3, 4], f"selected {picked(got)}: of the 4 candidates (2-5) half, the "
           "2 largest (tokens 3 and 4), and never the high-scoring prompt tokens 0, 1, 6")


@check(1)
def test_credit_weights(flow):
    """credit_weights: gamma on selected tokens, 1 elsewhere, float32 (eq. 6)"""
    mask = torch.tensor([[True, False, True], [False, False, True]])
    w = flow.credit_weights(mask)
    expect(w.dtype == torch.float32, f"credit_weights returns float32, got {w.dtype}")
    expect_close(w, torch.tensor([[1.5, 1.0, 1.5], [1.0, 1.0, 1.5]]),
                 "gamma of eq. (6) with the default gamma_flow = 1.5")


@check(2)
def test_group_advantages_hand_example(grpo):
    """group_advantages: one correct answer in a group of 4, population std (eq. 10)"""
    a = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4)
    s = math.sqrt(0.1875)  # population std of (1, 0, 0, 0): mean 0.25
    expected = torch.tensor([0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s])
    if a.shape == expected.shape and abs(float(a[0]) - 0.75 / math.sqrt(0.25)) < 1e-3:
        expect(False, f"A[0] = {fmt(a[0])} uses the sample std (divide by G - 1); eq. (10) is the "
               f"group's own spread, the population std (divide by G): {fmt(0.75 / s)}")
    expect_close(a, expected, "advantages of rewards (1, 0, 0, 0)", atol=1e-4)


@check(1)
def test_constant_group_is_zero(grpo):
    """group_advantages: a group whose rewards are all equal gets exactly 0 (no NaN)"""
    a = grpo.group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.3, 0.3, 0.3]), group_size=3)
    expect(bool(torch.isfinite(a).all()), f"advantages {a.tolist()} hold NaN or inf: a constant "
           "group has std 0")
    expect(bool((a == 0).all()), f"advantages of two constant groups are {a.tolist()}, expected 0")
    a = grpo.group_advantages(torch.full((7,), 0.1), group_size=7)
    expect(bool((a == 0).all()), f"advantages of 7 rewards of 0.1 are {fmt(a.abs().max())} at "
           "most, expected exactly 0: in float32 their mean is not exactly 0.1, so r - mean and "
           "the std are tiny but not 0; neither the eps nor a test std == 0 gives 0 (compare the "
           "rewards themselves)")


@check(2)
def test_loss_on_policy(grpo):
    """policy_loss: on-policy (r = 1), gamma = 1: the loss is -mean_i A_i (eq. 5)"""
    logp = torch.full((3, 4), -1.3)
    adv = torch.tensor([1.0, -0.5, 0.2])
    loss, _ = loss_of(grpo, logp, logp.clone(), adv)
    expect(abs(float(loss) + float(adv.mean())) < 1e-6,
           f"loss = {fmt(loss)}, expected -mean(A) = {fmt(-adv.mean())}: the loss is MINUS the "
           "objective J of eq. (5), and with r = 1 each token contributes A_i")


@check(2)
def test_loss_gamma_weights_tokens(grpo):
    """policy_loss: gamma multiplies a token's term (gamma = 1.5 on one of two tokens)"""
    logp = torch.zeros(1, 2)
    loss, _ = loss_of(grpo, logp, logp.clone(), torch.tensor([1.0]), torch.tensor([[1.5, 1.0]]))
    expect(abs(float(loss) + 1.25) < 1e-6, f"loss = {fmt(loss)}, expected -(1.5 * 1 + 1 * 1) / 2 "
           "= -1.25: each token's term is multiplied by its gamma, then averaged over the 2 tokens")


# --------------------------------------------------------------------------------------------------
# hidden checks
# --------------------------------------------------------------------------------------------------


@check(2, visibility="after_due_date")
def test_top_k_rounds_half_up(flow):
    """top_k_mask: k = floor(ratio * n + 0.5), for n = 1..9 and ratios 0.4, 0.5, 0.3"""
    for ratio in (0.4, 0.5, 0.3):
        for n in range(1, 10):
            got = int(flow.top_k_mask(torch.arange(n, dtype=torch.float32),
                                      torch.ones(n, dtype=torch.bool), ratio=ratio).sum())
            k = math.floor(ratio * n + 0.5)
            expect(got == k, f"ratio {ratio} of {n} candidates selected {got} tokens, expected "
                   f"round-half-up({fmt(ratio * n)}) = {k} (not banker's rounding, not truncation)")


@check(1, visibility="after_due_date")
def test_top_k_ties_and_extremes(flow):
    """top_k_mask: ties go to the earlier token; ratio 0 selects none, ratio 1 every candidate"""
    scores = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0])
    got = flow.top_k_mask(scores, torch.ones(5, dtype=torch.bool))
    expect(picked(got) == [1, 2], f"selected {picked(got)} of tied scores {scores.tolist()}: ties "
           "go to the earlier token, so tokens 1 and 2")
    cand = torch.tensor([True, False, True, True, False])
    expect(not flow.top_k_mask(scores, cand, ratio=0.0).any(), "ratio 0 must select nothing")
    expect(picked(flow.top_k_mask(scores, cand, ratio=1.0)) == [0, 2, 3],
           "ratio 1 must select every candidate and nothing else")


@check(2, visibility="after_due_date")
def test_bottom_k(flow):
    """top_k_mask(largest=False): the lowest-scoring candidates (Table 5's bottom-k)"""
    scores = torch.tensor([-5.0, 0.3, 0.1, 0.9, 0.2, -7.0])
    cand = torch.tensor([False, True, True, True, True, False])
    got = flow.top_k_mask(scores, cand, ratio=0.5, largest=False)
    expect(picked(got) == [2, 4], f"bottom half of the candidates 1-4 is tokens 2 and 4, got "
           f"{picked(got)} (non-candidates 0 and 5 have the lowest scores but are not candidates)")


@check(2, visibility="after_due_date")
def test_top_k_batched(flow):
    """top_k_mask: each row of a batch selects among its own candidates"""
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 10, generator=g)
    cand = torch.zeros(3, 10, dtype=torch.bool)
    cand[0, 2:7], cand[1, 5:], cand[2, :] = True, True, True
    got = flow.top_k_mask(scores, cand)
    for b in range(3):
        n = int(cand[b].sum())
        k = math.floor(0.4 * n + 0.5)
        order = sorted(picked(cand[b]), key=lambda t: -float(scores[b, t]))
        expect(picked(got[b]) == sorted(order[:k]), f"row {b}: selected {picked(got[b])}, expected "
               f"the {k} best of its {n} candidates {sorted(order[:k])}")


@check(1, visibility="after_due_date")
def test_defaults_are_the_papers(flow):
    """defaults: ratio 0.4 (top 40%) and gamma_flow 1.5, as in section 3.3"""
    got = flow.top_k_mask(torch.arange(10.0), torch.ones(10, dtype=torch.bool))
    expect(int(got.sum()) == 4, f"the default ratio selected {int(got.sum())} of 10, expected 4")
    w = flow.credit_weights(torch.tensor([True]), gamma=2.0)
    expect(abs(float(w[0]) - 2.0) < 1e-7, f"credit_weights(..., gamma=2.0) gave {fmt(w[0])}")


@check(2, visibility="after_due_date")
def test_constant_groups_not_exact_in_float(grpo):
    """group_advantages: constant groups (0.1, 1/3, 0.7, ...; G = 2..16; float32, float64) give 0"""
    for dtype in (torch.float32, torch.float64):
        for value in (0.1, 1 / 3, 0.7, 2 / 3, 0.3):
            for G in (2, 3, 5, 7, 8, 16):
                alone = torch.full((G,), value, dtype=dtype)
                rewards = torch.cat([alone, torch.linspace(0, 1, G, dtype=dtype)])  # + real group
                a = grpo.group_advantages(rewards, group_size=G)
                worst = max(float(a[:G].abs().max()),
                            float(grpo.group_advantages(alone, group_size=G).abs().max()))
                expect(worst == 0, f"G = {G} rewards of {value:.4g} ({dtype}): advantage "
                       f"{fmt(worst)}, expected exactly 0. The float mean of equal rewards need "
                       "not equal them (7 x 0.1 in float32), so r - mean and the std are tiny but "
                       "not 0: neither the eps nor a test std == 0 gives 0 (compare the rewards "
                       "themselves)")
                g = a[G:].double()
                expect(abs(float((g * g).mean()) - 1) < 1e-3, f"G = {G}: the non-constant group "
                       f"next to the constant one has mean(A^2) = {fmt((g * g).mean())}, expected "
                       "1 (population std)")


@check(2, visibility="after_due_date")
def test_groups_are_consecutive_rows(grpo):
    """group_advantages: rows i*G .. i*G+G-1 form group i; mean 0 and mean(A^2) = 1 per group"""
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.2, 0.9, 0.4])
    a = grpo.group_advantages(r, group_size=4)
    expect(tuple(a.shape) == (12,) and a.dtype == torch.float32,
           f"advantages must be float32 [N] = (12,), got {a.dtype} {tuple(a.shape)}")
    for i in range(3):
        g = a[4 * i : 4 * i + 4].double()
        expect(abs(float(g.mean())) < 1e-5, f"group {i} (rows {4 * i}-{4 * i + 3}) has mean "
               f"advantage {fmt(g.mean())}, expected 0: groups are consecutive rows")
        expect(abs(float((g * g).mean()) - 1) < 1e-4, f"group {i} has mean(A^2) = "
               f"{fmt((g * g).mean())}; with the population std it is exactly 1")


@check(2, visibility="after_due_date")
def test_clipping(grpo):
    """policy_loss: min(r A, clip(r, 1 -+ eps) A) for A > 0 and A < 0 (PPO clip of eq. 5)"""
    cases = [(1.5, 1.0, 1.2), (0.5, 1.0, 0.5), (0.5, -1.0, -0.8), (1.5, -1.0, -1.5),
             (1.1, 1.0, 1.1)]
    for r, adv, j in cases:
        got = -one_token(grpo, r, adv, dual_clip=None)
        expect(abs(got - j) < 1e-6, f"r = {r}, A = {adv}: the objective term is {fmt(got)}, "
               f"expected min(r A, clip(r, 0.8, 1.2) A) = {j}")


@check(2, visibility="after_due_date")
def test_gamma_with_clipping(grpo):
    """policy_loss: gamma scales the whole clipped term, advantage clipped to 2 before gamma"""
    cases = [(1.5, 1.0, 1.5, 1.8), (0.5, -1.0, 1.5, -1.2), (1.0, 5.0, 1.5, 3.0),
             (1.0, -5.0, 2.0, -4.0)]
    for r, adv, gamma, j in cases:
        got = -one_token(grpo, r, adv, gamma, dual_clip=None)
        expect(abs(got - j) < 1e-6, f"r = {r}, A = {adv}, gamma = {gamma}: term {fmt(got)}, "
               f"expected gamma * min(r A', clip(r) A') = {j} with A' = clamp(A, -2, 2)")


@check(2, visibility="after_due_date")
def test_dual_clip(grpo):
    """policy_loss: for A < 0 the term is floored at dual_clip * A (3 A); A > 0 is untouched"""
    got = -one_token(grpo, 5.0, -1.0)
    expect(abs(got + 3.0) < 1e-6, f"r = 5, A = -1: term {fmt(got)}, expected the dual-clip floor "
           "3 * A = -3 (min(5 A, 1.2 A) = -5 is below it)")
    got = -one_token(grpo, 5.0, 1.0)
    expect(abs(got - 1.2) < 1e-6, f"r = 5, A = 1: term {fmt(got)}, expected 1.2 (the dual clip "
           "only applies to A < 0)")
    got = -one_token(grpo, 2.0, -1.0)
    expect(abs(got + 2.0) < 1e-6, f"r = 2, A = -1: term {fmt(got)}, expected -2 (above the floor)")


@check(2, visibility="after_due_date")
def test_dual_clip_with_gamma_and_advantage_clip(grpo):
    """policy_loss: the dual-clip floor uses the clipped advantage, and gamma multiplies it too"""
    cases = [  # r, A, gamma, objective term: gamma * max(min(r A', clip(r) A'), 3 A')
        (5.0, -2.5, 1.0, -6.0, "A' = clamp(-2.5, -2, 2) = -2; min(-10, -2.4) = -10 < 3 A' = -6"),
        (5.0, -1.0, 1.5, -4.5, "min(-5, -1.2) = -5, floored at 3 A = -3, times gamma 1.5"),
        (5.0, -2.5, 1.5, -9.0, "A' = -2; floored at 3 A' = -6, times gamma 1.5"),
        (5.0, -3.0, 0.5, -3.0, "A' = -2; floored at -6, times gamma 0.5"),
        (2.0, -2.5, 1.5, -6.0, "A' = -2; min(-4, -2.4) = -4 is above the floor -6; times 1.5"),
    ]
    for r, adv, gamma, j, why in cases:
        got = -one_token(grpo, r, adv, gamma)
        if abs(got - j) < 1e-6:
            continue
        clipped = max(adv, -2.0)  # A' (all cases have A < 0)
        term = min(r * clipped, 1.2 * clipped)
        if adv < -2 and abs(got - gamma * max(term, 3 * adv)) < 1e-6:
            hint = "the floor is taken from the advantage before its clip (3 A, not 3 A')"
        elif gamma != 1 and abs(got - max(gamma * term, 3 * clipped)) < 1e-6:
            hint = "the floor is applied after gamma; gamma multiplies the floored term"
        else:
            hint = "wrong term"
        expect(False, f"r = {r}, A = {adv}, gamma = {gamma}: term {fmt(got)}, expected {j}: "
               f"{hint} (expected: {why})")


@check(2, visibility="after_due_date")
def test_aggregation(grpo):
    """policy_loss: seq-mean averages per sequence then over sequences; token-mean over tokens"""
    logp = torch.zeros(2, 4)
    mask = torch.tensor([[True, False, False, False], [True, True, True, True]])
    adv = torch.tensor([1.0, -1.0])
    gamma = torch.tensor([[1.5, 1.0, 1.0, 1.0], [1.0, 1.0, 1.5, 1.5]])
    seq, _ = loss_of(grpo, logp, logp.clone(), adv, gamma, mask)
    tok, _ = loss_of(grpo, logp, logp.clone(), adv, gamma, mask, aggregation="token-mean")
    expect(abs(float(seq) + (1.5 - 5.0 / 4) / 2) < 1e-6, f"seq-mean loss {fmt(seq)}, expected "
           "-(1.5 / 1 + (-5) / 4) / 2 = -0.125 (1/N_i per sequence, then 1/B over the B = 2 rows)")
    expect(abs(float(tok) + (1.5 - 5.0) / 5) < 1e-6, f"token-mean loss {fmt(tok)}, expected "
           "-(1.5 - 5) / 5 = 0.7 (all response tokens together)")


@check(2, visibility="after_due_date")
def test_padding_contributes_nothing(grpo):
    """policy_loss: NaN or inf outside response_mask changes neither the loss nor its gradient"""
    logp = torch.tensor([[-1.0, -0.5, float("nan"), float("inf")]], requires_grad=True)
    old = torch.tensor([[-1.1, -0.4, 0.0, float("-inf")]])
    mask = torch.tensor([[True, True, False, False]])
    loss, _ = loss_of(grpo, logp, old, torch.tensor([0.7]), None, mask)
    expect(bool(torch.isfinite(loss)), f"loss = {loss.item()} with NaN/inf in padded positions")
    loss.backward()
    expect(bool(torch.isfinite(logp.grad).all()), f"d loss / d logp = {logp.grad.tolist()} holds "
           "NaN or inf: mask padded positions BEFORE exp, not after")
    expect(bool((logp.grad[0, 2:] == 0).all()), "padded positions must get zero gradient")


@check(2, visibility="after_due_date")
def test_gradient(grpo):
    """policy_loss: d loss / d logp = -gamma A r / (N_i B) on unclipped tokens (B rows)"""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -1.0]], dtype=torch.float64,
                        requires_grad=True)
    old = logp.detach() - torch.tensor([[0.05, -0.1, 0.0], [0.1, 0.0, -0.05]], dtype=torch.float64)
    adv = torch.tensor([0.8, -1.2])
    gamma = torch.tensor([[1.5, 1.0, 1.0], [1.0, 1.5, 1.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss, _ = loss_of(grpo, logp, old, adv, gamma, mask)
    expect(loss.requires_grad, "the loss has no gradient: keep logp in the graph (no .detach(), "
           "no .item())")
    loss.backward()
    r = (logp.detach() - old).exp()
    n = mask.sum(1, keepdim=True).double()
    expected = -(gamma.double() * adv[:, None].double() * r / (n * 2)) * mask
    expect_close(logp.grad, expected, "d loss / d logp", atol=1e-6)


@check(1, visibility="after_due_date")
def test_empty_response_row(grpo):
    """policy_loss: a row without response tokens adds 0 (seq-mean), never NaN"""
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[True, True, True], [False, False, False]])
    loss, _ = loss_of(grpo, logp, logp.clone(), torch.tensor([1.0, 1.0]), None, mask)
    expect(abs(float(loss) + 0.5) < 1e-6, f"loss {fmt(loss)}, expected -(1 + 0) / 2 = -0.5: the "
           "empty row counts as a sequence with objective 0")


@check(1, visibility="after_due_date")
def test_clip_fraction(grpo):
    """policy_loss: stats['clip_frac'] is the share of response tokens where the clip is active"""
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5, 1.1]]))
    _, stats = loss_of(grpo, logp, torch.zeros(1, 4), torch.tensor([1.0]))
    expect(abs(stats.get("clip_frac", -1) - 0.25) < 1e-6, f"clip_frac = {stats.get('clip_frac')}, "
           "expected 0.25: with A > 0 only r = 1.5 > 1.2 is clipped (r = 0.5 is below 1 - eps but "
           "min() keeps r A there)")
