"""flow.py's numerics and contracts: float32 against float64, padding, degenerate and hostile
inputs (never NaN or inf), clear errors for bad input, and the rounding and ties of top_k_mask.

The paper's properties themselves are in tests/test_flow.py, whose slow reference this file reuses.
"""

import pytest
import torch

import flow
from test_flow import masks, random_attention, slow_flow


def test_float32_solve_agrees_with_float64():
    g = torch.Generator().manual_seed(3)
    attn = random_attention(200, g).float()
    prompt, answer = masks(200, 40, range(180, 190))
    W = flow.influence_graph(attn)
    tau64 = flow.throughput(W, prompt, answer)
    tau32 = flow.throughput(W, prompt, answer, dtype=torch.float32)
    assert tau32.dtype == torch.float32
    torch.testing.assert_close(tau32.double(), tau64, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="float32 or float64"):
        flow.throughput(W, prompt, answer, dtype=torch.bfloat16)



# --------------------------------------------------------------------------------------------------
# batches and padding
# --------------------------------------------------------------------------------------------------


def test_padding_never_changes_a_sequence():
    g = torch.Generator().manual_seed(7)
    # (left pad, prompt length, response length, answer offsets in the response)
    specs = [(0, 5, 12, [9, 10]), (3, 2, 9, [0]), (1, 4, 7, [4, 5, 6])]
    T = max(lp + p + r for lp, p, r, _ in specs) + 2
    attn_b = torch.zeros(len(specs), T, T, dtype=torch.float64)
    prompt_b = torch.zeros(len(specs), T, dtype=torch.bool)
    answer_b = torch.zeros(len(specs), T, dtype=torch.bool)
    singles = []
    for b, (lp, p, r, ans) in enumerate(specs):
        L = p + r
        a = random_attention(L, g)
        pm, am = masks(L, p, [p + x for x in ans])
        singles.append(flow.throughput(flow.influence_graph(a), pm, am))
        attn_b[b, lp : lp + L, lp : lp + L] = a
        # garbage in the padding's own rows: left pads reading each other, right pads reading all
        attn_b[b, :lp, :lp] = torch.rand(lp, lp, generator=g, dtype=torch.float64).tril()
        junk = torch.rand(T - lp - L, T, generator=g, dtype=torch.float64)
        attn_b[b, lp + L :, : T] = junk.tril(lp + L)
        prompt_b[b, lp : lp + p] = pm[:p]
        answer_b[b, lp : lp + L] = am
    tau = flow.throughput(flow.influence_graph(attn_b), prompt_b, answer_b)
    for b, (lp, p, r, _) in enumerate(specs):
        L = p + r
        torch.testing.assert_close(tau[b, lp : lp + L], singles[b], rtol=1e-12, atol=1e-15)
        assert (tau[b, :lp] == 0).all() and (tau[b, lp + L :] == 0).all()


def test_empty_masks_name_the_sequence():
    attn = torch.eye(6, dtype=torch.float64).expand(3, 6, 6).clone()
    W = flow.influence_graph(attn)
    prompt = torch.zeros(3, 6, dtype=torch.bool)
    prompt[:, 0] = True
    answer = torch.zeros(3, 6, dtype=torch.bool)
    answer[[0, 2], 4] = True
    with pytest.raises(ValueError, match=r"answer_mask is empty for sequence\(s\) 1"):
        flow.throughput(W, prompt, answer)
    answer[1, 4] = True
    prompt[2] = False
    with pytest.raises(ValueError, match=r"prompt_mask is empty for sequence\(s\) 2"):
        flow.throughput(W, prompt, answer)
    with pytest.raises(ValueError, match="answer_mask is empty"):
        flow.potential(W[0], torch.zeros(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="overlap"):
        flow.throughput(W[0], prompt[0], prompt[0])



# --------------------------------------------------------------------------------------------------
# degenerate inputs: never NaN or inf
# --------------------------------------------------------------------------------------------------


def test_answer_at_first_response_token_and_tokens_after_it():
    g = torch.Generator().manual_seed(8)
    T = 20
    attn = random_attention(T, g)
    prompt, answer = masks(T, 8, [8])
    field = flow.trace(flow.influence_graph(attn), prompt, answer)
    assert torch.isfinite(field.tau).all()
    assert field.f[8].item() == pytest.approx(1.0, rel=1e-12)  # every prompt token reads into it
    assert field.tau[9:].abs().max() == 0


def test_all_zero_attention_rows():
    g = torch.Generator().manual_seed(9)
    T = 30
    attn = random_attention(T, g)
    attn[[5, 12, 13]] = 0  # three tokens that read nothing
    attn[[25]] = 0  # an answer token that reads nothing
    prompt, answer = masks(T, 6, [24, 25])
    field = flow.trace(flow.influence_graph(attn), prompt, answer)
    assert torch.isfinite(field.tau).all() and torch.isfinite(field.h).all()
    h_ref, _, f_ref, tau_ref = slow_flow(attn.tolist(), prompt.tolist(), answer.tolist())
    tau = torch.tensor(tau_ref, dtype=torch.float64)
    torch.testing.assert_close(field.tau, tau, rtol=1e-12, atol=1e-15)
    # nothing at all reaches the answer: the flow is 0 everywhere but on the (dead) prompt sources
    dead = torch.zeros(T, T, dtype=torch.float64)
    field = flow.trace(flow.influence_graph(dead), prompt, answer)
    assert field.h[~answer].abs().max() == 0
    torch.testing.assert_close(field.f, prompt.double() / 6)
    assert torch.isfinite(field.u).all()


def test_prompt_token_below_the_float_floor_is_finite():
    # chain q -> k -> answer with edges of 1e-160: h(k) = 1e-160 and h(q) = 1e-320, a subnormal
    # float64 whose reciprocal overflows. q keeps its share but cannot propagate it; nothing becomes
    # NaN or inf.
    W = torch.zeros(4, 4, dtype=torch.float64)
    W[0, 3] = 1.0  # prompt token 0 reads straight into the answer
    W[1, 2] = 1e-160  # prompt token 1 -> 2 (response)
    W[2, 3] = 1e-160  # 2 -> answer
    prompt, answer = masks(4, 2, [3])
    field = flow.trace(W, prompt, answer)
    assert 0 < field.h[1] < 1e-300
    assert torch.isfinite(field.tau).all()
    assert field.f.tolist() == [0.5, 0.5, 0.0, 0.5]


def test_long_peaky_attention_spanning_many_orders_of_magnitude():
    g = torch.Generator().manual_seed(10)
    T = 4096
    # very peaky rows
    attn = random_attention(T, g, sink=4.0, temperature=15.0, dtype=torch.float32)
    prompt, answer = masks(T, 300, range(4000, 4010))
    W = flow.influence_graph(attn)
    for dtype in (torch.float64, torch.float32):
        field = flow.trace(W, prompt, answer, dtype=dtype)
        for x in (field.h, field.f, field.tau, field.u):
            assert torch.isfinite(x).all()
        live = field.h[:4000] > 0
        live_h = field.h[:4000][live]
        assert live_h.max() / live_h.min() > 1e20  # many orders of magnitude
        rel = 1e-3 if dtype == torch.float32 else 1e-9
        assert field.f[answer].sum().item() == pytest.approx(1.0, rel=rel)
        assert (field.f >= 0).all()


def test_non_attention_input_is_refused_rather_than_overflowing():
    # a "graph" whose columns sum to 100 is no attention: forward propagation explodes
    T = 200
    W = torch.full((T, T), 100.0, dtype=torch.float64).triu(1)
    prompt, answer = masks(T, 1, [T - 1])
    with pytest.raises(ValueError, match="not finite"):
        flow.throughput(W, prompt, answer)



# --------------------------------------------------------------------------------------------------
# top_k_mask: counts, ties, bad input
# --------------------------------------------------------------------------------------------------


def test_top_k_mask_counts_order_and_ties():
    scores = torch.tensor(
        [
            [9.0, 5.0, 1.0, 3.0, 3.0, 2.0, 7.0, 0.0],
            [0.0, 0.0, 4.0, 4.0, 4.0, 4.0, 1.0, 9.0],
        ]
    )
    cand = torch.tensor(
        [
            [False, True, True, True, True, True, False, False],  # 5 candidates -> round(2.0) = 2
            [False, False, True, True, True, True, True, False],  # 5 candidates, 4 tied
        ]
    )
    top = flow.top_k_mask(scores, cand, ratio=0.4)
    assert top[0].nonzero().flatten().tolist() == [1, 3]  # 5.0 and the earlier of the tied 3.0s
    assert top[1].nonzero().flatten().tolist() == [2, 3]  # ties -> earliest tokens
    bottom = flow.top_k_mask(scores, cand, ratio=0.4, largest=False)
    assert bottom[0].nonzero().flatten().tolist() == [2, 5]  # 1.0 and 2.0
    assert bottom[1].nonzero().flatten().tolist() == [2, 6]  # 1.0, then the earliest tied 4.0
    assert not (top & ~cand).any() and not (bottom & ~cand).any()
    # counts: round half up of ratio * n
    cases = [(10, 0.4, 4), (5, 0.5, 3), (3, 0.4, 1), (1, 0.4, 0), (7, 1.0, 7), (7, 0.0, 0)]
    for n, ratio, k in cases:
        c = torch.zeros(12, dtype=torch.bool)
        c[:n] = True
        assert flow.top_k_mask(torch.randn(12), c, ratio=ratio).sum() == k
    # one sequence or a batch: same answer
    assert torch.equal(flow.top_k_mask(scores[1], cand[1]), top[1])


def test_top_k_mask_refuses_bad_input():
    s, c = torch.zeros(4), torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="ratio"):
        flow.top_k_mask(s, c, ratio=1.5)
    with pytest.raises(ValueError, match="finite"):
        flow.top_k_mask(torch.tensor([0.0, float("nan"), 0.0, 0.0]), c)
    with pytest.raises(ValueError, match="bool"):
        flow.top_k_mask(s, c.float())

