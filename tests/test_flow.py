"""Tests of flow.py: eqs. (1)-(4), Theorem 3.1, conservation, the Doob identity, dead ends, padding,
degenerate inputs, and the top-k credit of eq. (6).

The slow reference below is written token by token from the paper's text, in plain Python floats, and
shares no code with flow.py.
"""

import math

import pytest
import torch

import flow

# --------------------------------------------------------------------------------------------------
# an obviously correct, slow implementation
# --------------------------------------------------------------------------------------------------


def slow_flow(attn, prompt, answer):
    """h, W', f, tau for one sequence, loop by loop. attn: [T][T] (row = query); prompt/answer: [T] bools."""
    T = len(attn)
    W = [[attn[k][i] if i < k else 0.0 for k in range(T)] for i in range(T)]  # eq. (1)
    h = [0.0] * T  # eq. (2), from the last token backwards
    for i in reversed(range(T)):
        h[i] = 1.0 if answer[i] else sum(W[i][k] * h[k] for k in range(i + 1, T))
    Wp = [[0.0] * T for _ in range(T)]  # eq. (3)
    for i in range(T):
        if answer[i] or h[i] <= 0:
            continue
        for k in range(i + 1, T):
            Wp[i][k] = W[i][k] * h[k] / h[i]
    n_q = sum(prompt)
    s = [1.0 / n_q if prompt[k] else 0.0 for k in range(T)]
    f = [0.0] * T  # eq. (4), from the first token forwards
    for k in range(T):
        f[k] = s[k] + sum(f[i] * Wp[i][k] for i in range(k))
    tau = [f[k] + sum(f[k] * Wp[k][j] for j in range(T)) + (f[k] if answer[k] else 0.0) for k in range(T)]
    return h, Wp, f, tau


def slow_u(attn, prompt, answer, h):
    """Forward propagation on the RAW graph with source s / h (0 where h = 0); answer tokens absorb."""
    T = len(attn)
    n_q = sum(prompt)
    u = [0.0] * T
    for k in range(T):
        src = (1.0 / n_q) / h[k] if prompt[k] and h[k] > 0 else 0.0
        u[k] = src + sum(u[i] * attn[k][i] for i in range(k) if not answer[i])
    return u


# --------------------------------------------------------------------------------------------------
# random causal attention with an attention-sink column
# --------------------------------------------------------------------------------------------------


def random_attention(T, generator, sink=3.0, temperature=1.0, dtype=torch.float64):
    """[T, T] causal softmax attention whose first column (the 'attention sink') takes a large share."""
    logits = torch.randn(T, T, generator=generator, dtype=dtype) * temperature
    logits[:, 0] += sink
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return logits.masked_fill(~causal, float("-inf")).softmax(-1)


def masks(T, n_prompt, answer):
    prompt = torch.zeros(T, dtype=torch.bool)
    prompt[:n_prompt] = True
    ans = torch.zeros(T, dtype=torch.bool)
    ans[list(answer)] = True
    return prompt, ans


# --------------------------------------------------------------------------------------------------
# a 5-token graph by hand
# --------------------------------------------------------------------------------------------------


def test_five_token_graph_by_hand():
    # Tokens 0, 1 are the prompt; 2, 3 the reasoning; 4 the answer. Attention rows (query) sum to 1:
    #   q1: [.5 .5]   q2: [.5 .25 .25]   q3: [.25 .25 0 .5]   q4: [.2 .2 .4 0 .2]
    # Eq. (1), W[i, k] = attn[k, i]:
    #   W[0,1]=.5  W[0,2]=.5  W[0,3]=.25  W[0,4]=.2
    #              W[1,2]=.25 W[1,3]=.25  W[1,4]=.2
    #                         W[2,3]=0    W[2,4]=.4
    #                                     W[3,4]=0      (nobody after 3 reads it: a dead end)
    # Eq. (2): h4 = 1; h3 = 0; h2 = .4; h1 = .25*.4 + .2 = .3; h0 = .5*.3 + .5*.4 + .2 = .55
    # Eq. (3): row 0: W'01 = .15/.55 = 3/11, W'02 = .2/.55 = 4/11, W'03 = 0, W'04 = .2/.55 = 4/11
    #          row 1: W'12 = .1/.3 = 1/3, W'13 = 0, W'14 = 2/3;  row 2: W'24 = 1;  rows 3, 4: 0
    # Eq. (4), s = 1/2 on tokens 0, 1:
    #   f0 = 1/2;  f1 = 1/2 + 1/2 * 3/11 = 7/11;  f2 = 1/2 * 4/11 + 7/11 * 1/3 = 13/33;  f3 = 0
    #   f4 = 1/2 * 4/11 + 7/11 * 2/3 + 13/33 = 1   (all injected flow reaches the answer)
    # tau = 2 f where h > 0: [1, 14/11, 26/33, 0, 2]
    attn = torch.tensor(
        [
            [1.0, 0, 0, 0, 0],
            [0.5, 0.5, 0, 0, 0],
            [0.5, 0.25, 0.25, 0, 0],
            [0.25, 0.25, 0, 0.5, 0],
            [0.2, 0.2, 0.4, 0, 0.2],
        ],
        dtype=torch.float64,
    )
    prompt, answer = masks(5, 2, [4])
    W = flow.influence_graph(attn)
    h = flow.potential(W, answer)
    torch.testing.assert_close(h, torch.tensor([0.55, 0.3, 0.4, 0.0, 1.0], dtype=torch.float64))
    Wp = flow.reweight(W, h, answer)
    expected_Wp = torch.zeros(5, 5, dtype=torch.float64)
    expected_Wp[0, 1], expected_Wp[0, 2], expected_Wp[0, 4] = 3 / 11, 4 / 11, 4 / 11
    expected_Wp[1, 2], expected_Wp[1, 4] = 1 / 3, 2 / 3
    expected_Wp[2, 4] = 1.0
    torch.testing.assert_close(Wp, expected_Wp)
    f = flow.forward_flow(Wp, prompt)
    torch.testing.assert_close(f, torch.tensor([1 / 2, 7 / 11, 13 / 33, 0, 1], dtype=torch.float64))
    tau = flow.throughput(W, prompt, answer)
    torch.testing.assert_close(tau, torch.tensor([1, 14 / 11, 26 / 33, 0, 2], dtype=torch.float64))


def test_influence_graph_orientation():
    attn = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    W = flow.influence_graph(attn)
    for i in range(4):
        for k in range(4):
            assert W[i, k] == (attn[k, i] if i < k else 0)


# --------------------------------------------------------------------------------------------------
# against the slow reference on random attention
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_slow_reference(seed):
    g = torch.Generator().manual_seed(seed)
    T, n_prompt = 24, 6
    attn = random_attention(T, g)
    answer_idx = [18, 19, 20]  # tokens 21..23 come after the answer
    prompt, answer = masks(T, n_prompt, answer_idx)
    h_ref, Wp_ref, f_ref, tau_ref = slow_flow(attn.tolist(), prompt.tolist(), answer.tolist())

    W = flow.influence_graph(attn)
    field = flow.trace(W, prompt, answer)
    torch.testing.assert_close(field.h, torch.tensor(h_ref, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(field.f, torch.tensor(f_ref, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(field.tau, torch.tensor(tau_ref, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    # the step-by-step public path (eqs. 2, 3, 4 separately) agrees too
    h = flow.potential(W, answer)
    Wp = flow.reweight(W, h, answer)
    torch.testing.assert_close(Wp, torch.tensor(Wp_ref, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(flow.forward_flow(Wp, prompt), field.f, rtol=1e-12, atol=1e-14)
    # tokens after the answer carry nothing
    assert field.tau[21:].abs().max() == 0


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
# the properties the paper claims
# --------------------------------------------------------------------------------------------------


def test_theorem_3_1_rows_of_reweighted_graph_sum_to_one():
    g = torch.Generator().manual_seed(4)
    T = 64
    attn = random_attention(T, g)
    attn[40:, 30] = 0  # token 30 is read by nobody after token 39 ...
    attn[31:40, 30] = 0  # ... nor before: a dead end with h = 0
    attn = attn / attn.sum(-1, keepdim=True)
    prompt, answer = masks(T, 10, range(55, 60))
    W = flow.influence_graph(attn)
    h = flow.potential(W, answer)
    Wp = flow.reweight(W, h, answer)
    rows = Wp.sum(-1)
    live = (h > 0) & ~answer
    assert h[30] == 0 and not live[30]
    assert live.sum() >= 50  # the theorem is tested on many rows, not vacuously
    torch.testing.assert_close(rows[live], torch.ones(int(live.sum()), dtype=torch.float64), rtol=0, atol=1e-12)
    assert rows[~live].abs().max() == 0  # answer rows, dead ends and tokens after the answer


def test_conservation_answer_receives_what_live_prompt_tokens_inject():
    g = torch.Generator().manual_seed(5)
    T, n_prompt = 80, 12
    attn = random_attention(T, g)
    attn[:, 7] = 0  # prompt token 7: nobody attends to it, so h = 0 and its share is lost
    attn[7, 7] = 1.0
    attn = attn / attn.sum(-1, keepdim=True)
    prompt, answer = masks(T, n_prompt, range(70, 75))
    field = flow.trace(flow.influence_graph(attn), prompt, answer)
    assert field.h[7] == 0
    assert field.f[7] == pytest.approx(1 / n_prompt)  # it keeps its source ...
    assert field.tau[7] == pytest.approx(1 / n_prompt)  # ... and passes nothing on
    received = field.f[answer].sum().item()
    assert received == pytest.approx((n_prompt - 1) / n_prompt, rel=1e-12)


def test_doob_identity_f_equals_h_times_u():
    g = torch.Generator().manual_seed(6)
    T = 40
    attn = random_attention(T, g, sink=1.0)
    prompt, answer = masks(T, 8, range(33, 36))
    h_ref, Wp_ref, f_ref, _ = slow_flow(attn.tolist(), prompt.tolist(), answer.tolist())
    u_ref = slow_u(attn.tolist(), prompt.tolist(), answer.tolist(), h_ref)
    for k in range(T):
        if h_ref[k] > 0:
            assert f_ref[k] == pytest.approx(h_ref[k] * u_ref[k], rel=1e-10, abs=1e-15)
    field = flow.trace(flow.influence_graph(attn), prompt, answer)
    torch.testing.assert_close(field.u[:36], torch.tensor(u_ref[:36], dtype=torch.float64), rtol=1e-10, atol=0)


def test_dead_end_branch_gets_zero_flow():
    # 0 (prompt) -> {1, 2}; 1 -> 3 (answer); 2 -> 4 -> 5, and nobody reads 4 or 5 on the way to the
    # answer. Raw attention spreads plenty of influence into the branch 2 -> 4 -> 5 ...
    T = 6
    attn = torch.zeros(T, T, dtype=torch.float64)
    attn[0, 0] = 1
    attn[1, 0] = 1  # 1 reads 0
    attn[2, 0] = 1  # 2 reads 0
    attn[3, 1] = 1  # the answer reads 1 only
    attn[4, 2] = 1  # 4 reads 2
    attn[5, 4] = 1  # 5 reads 4
    prompt, answer = masks(T, 1, [3])
    field = flow.trace(flow.influence_graph(attn), prompt, answer)
    # ... but none of it is answer-targeted: 2, 4, 5 have h = 0 and get no flow
    assert field.h.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert field.f.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    # whereas naive forward propagation on the raw graph would push flow into the branch
    naive = slow_u(attn.tolist(), prompt.tolist(), answer.tolist(), [1.0] * T)
    assert naive[2] > 0 and naive[4] > 0 and naive[5] > 0


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
        # garbage in the padding's own rows: left pads reading each other, right pads reading everything
        attn_b[b, :lp, :lp] = torch.rand(lp, lp, generator=g, dtype=torch.float64).tril()
        attn_b[b, lp + L :, : T] = torch.rand(T - lp - L, T, generator=g, dtype=torch.float64).tril(lp + L)
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
    torch.testing.assert_close(field.tau, torch.tensor(tau_ref, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    # nothing at all reaches the answer: the flow is 0 everywhere but on the (dead) prompt sources
    dead = torch.zeros(T, T, dtype=torch.float64)
    field = flow.trace(flow.influence_graph(dead), prompt, answer)
    assert field.h[~answer].abs().max() == 0
    torch.testing.assert_close(field.f, prompt.double() / 6)
    assert torch.isfinite(field.u).all()


def test_prompt_token_below_the_float_floor_is_finite():
    # chain q -> k -> answer with edges of 1e-160: h(k) = 1e-160 and h(q) = 1e-320, a subnormal float64
    # whose reciprocal overflows. q keeps its share but cannot propagate it; nothing becomes NaN or inf.
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
    attn = random_attention(T, g, sink=4.0, temperature=15.0, dtype=torch.float32)  # very peaky rows
    prompt, answer = masks(T, 300, range(4000, 4010))
    W = flow.influence_graph(attn)
    for dtype in (torch.float64, torch.float32):
        field = flow.trace(W, prompt, answer, dtype=dtype)
        for x in (field.h, field.f, field.tau, field.u):
            assert torch.isfinite(x).all()
        live = field.h[:4000] > 0
        assert field.h[:4000][live].max() / field.h[:4000][live].min() > 1e20  # many orders of magnitude
        assert field.f[answer].sum().item() == pytest.approx(1.0, rel=1e-3 if dtype == torch.float32 else 1e-9)
        assert (field.f >= 0).all()


def test_non_attention_input_is_refused_rather_than_overflowing():
    # a "graph" whose columns sum to 100 is no attention: forward propagation explodes
    T = 200
    W = torch.full((T, T), 100.0, dtype=torch.float64).triu(1)
    prompt, answer = masks(T, 1, [T - 1])
    with pytest.raises(ValueError, match="not finite"):
        flow.throughput(W, prompt, answer)


# --------------------------------------------------------------------------------------------------
# eq. (6): top-k selection and credit weights
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
    for n, ratio, k in [(10, 0.4, 4), (5, 0.5, 3), (3, 0.4, 1), (1, 0.4, 0), (7, 1.0, 7), (7, 0.0, 0)]:
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


def test_credit_weights():
    mask = torch.tensor([[True, False, True], [False, False, False]])
    torch.testing.assert_close(flow.credit_weights(mask), torch.tensor([[1.5, 1.0, 1.5], [1.0, 1.0, 1.0]]))
    torch.testing.assert_close(flow.credit_weights(mask[0], gamma=2.0), torch.tensor([2.0, 1.0, 2.0]))


def test_flow_credit_end_to_end_picks_the_backbone():
    # the response is 6 tokens; token 5 (response offset 1) is the only route from the prompt to the
    # answer, so it must be in the top 40% of the response by throughput
    T = 10
    attn = torch.zeros(T, T, dtype=torch.float64)
    for k in range(T):
        attn[k, k] = 1.0
    attn[5, :4] = 0.25  # token 5 reads the whole prompt (tokens 0-3)
    attn[5, 5] = 0.0
    for k in (4, 6, 7, 8):
        attn[k, k - 1] = 0.5  # filler: reads its neighbour
        attn[k, k] = 0.5
    attn[9, 5], attn[9, 8], attn[9, 9] = 0.6, 0.2, 0.2  # the answer reads 5 and a bit of 8
    prompt, answer = masks(T, 4, [9])
    response = torch.zeros(T, dtype=torch.bool)
    response[4:] = True
    tau = flow.throughput(flow.influence_graph(attn), prompt, answer)
    top = flow.top_k_mask(tau, response & ~answer, ratio=0.4)
    assert top[5]
    assert math.isclose(tau[answer].item(), 2.0, rel_tol=1e-12)
