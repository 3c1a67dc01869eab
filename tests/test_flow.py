"""flow.py against the paper: eqs. (1)-(4) on a five-token graph by hand and against a slow
reference, Theorem 3.1, conservation, the Doob identity f = h * u, dead ends, eq. (6)'s credit.

Each test's docstring is the property in the paper's words. The slow reference below is written
token by token from the paper's text, in plain Python floats, and shares no code with flow.py.
Numerics, padding, dtypes and bad input: tests/test_flow_numerics.py.
"""

import math

import pytest
import torch

import flow

# --------------------------------------------------------------------------------------------------
# an obviously correct, slow implementation
# --------------------------------------------------------------------------------------------------


def slow_flow(attn, prompt, answer):
    """h, W', f, tau for one sequence, loop by loop.

    attn: [T][T] (row = query); prompt/answer: [T] bools.
    """
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
    tau = [f[k] + sum(f[k] * Wp[k][j] for j in range(T)) + (f[k] if answer[k] else 0.0)
           for k in range(T)]
    return h, Wp, f, tau


def slow_u(attn, prompt, answer, h):
    """Forward propagation on the RAW graph, source s / h (0 where h = 0); answer tokens absorb."""
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
    """[T, T] causal softmax attention whose first column (the 'attention sink') takes much."""
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
# eqs. (1)-(4) on a 5-token graph by hand and against the slow reference
# --------------------------------------------------------------------------------------------------


def test_five_token_graph_by_hand():
    """Eqs. (1)-(4) and tau(k) = f(k) + sum_{j > k} phi(k -> j), computed by hand on five tokens."""
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
    """Eq. (1): W_ik := a(x_k, x_i), an edge for all i < k of the time-ordered DAG."""
    attn = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    W = flow.influence_graph(attn)
    for i in range(4):
        for k in range(4):
            assert W[i, k] == (attn[k, i] if i < k else 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_slow_reference(seed):
    """Eqs. (2)-(4) agree with a token-by-token reading of the paper's definitions."""
    g = torch.Generator().manual_seed(seed)
    T, n_prompt = 24, 6
    attn = random_attention(T, g)
    answer_idx = [18, 19, 20]  # tokens 21..23 come after the answer
    prompt, answer = masks(T, n_prompt, answer_idx)
    h_ref, Wp_ref, f_ref, tau_ref = slow_flow(attn.tolist(), prompt.tolist(), answer.tolist())

    W = flow.influence_graph(attn)
    field = flow.trace(W, prompt, answer)
    close = dict(rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(field.h, torch.tensor(h_ref, dtype=torch.float64), **close)
    torch.testing.assert_close(field.f, torch.tensor(f_ref, dtype=torch.float64), **close)
    torch.testing.assert_close(field.tau, torch.tensor(tau_ref, dtype=torch.float64), **close)
    # the step-by-step public path (eqs. 2, 3, 4 separately) agrees too
    h = flow.potential(W, answer)
    Wp = flow.reweight(W, h, answer)
    torch.testing.assert_close(Wp, torch.tensor(Wp_ref, dtype=torch.float64), **close)
    torch.testing.assert_close(flow.forward_flow(Wp, prompt), field.f, **close)
    # tokens after the answer carry nothing
    assert field.tau[21:].abs().max() == 0



# --------------------------------------------------------------------------------------------------
# the properties the paper claims
# --------------------------------------------------------------------------------------------------


def test_theorem_3_1_rows_of_reweighted_graph_sum_to_one():
    """Theorem 3.1: for any node i with h(i) > 0, the reweighted outflow sums to unity."""
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
    ones = torch.ones(int(live.sum()), dtype=torch.float64)
    torch.testing.assert_close(rows[live], ones, rtol=0, atol=1e-12)
    assert rows[~live].abs().max() == 0  # answer rows, dead ends and tokens after the answer


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("tiny", [1e-7, 1e-12, 1e-30])
def test_theorem_3_1_holds_for_potentials_far_below_any_threshold(tiny, dtype):
    """Theorem 3.1 holds for any node with h(i) > 0: a potential of 1e-7 or 1e-30 is no dead end."""
    # 0 (prompt) -> 1 -> 3 (answer) with W[0, 1] = tiny: h = [tiny, 1, 0, 1], and W'[0, 1] = 1, so
    # the whole unit of flow reaches the answer. A guard h > 1e-6 (or 1 / (h + eps)) loses it.
    W = torch.zeros(4, 4, dtype=torch.float64)
    W[0, 1], W[1, 3], W[0, 2] = tiny, 1.0, 0.5  # token 2 is a dead end
    prompt, answer = masks(4, 1, [3])
    h = flow.potential(W, answer, dtype=dtype)
    assert h.tolist() == pytest.approx([tiny, 1.0, 0.0, 1.0], rel=1e-6, abs=0)
    Wp = flow.reweight(W.to(dtype), h, answer)
    assert Wp[0, 1].item() == pytest.approx(1.0, rel=1e-6) and Wp[0, 2] == 0  # row 0 sums to 1
    f = flow.forward_flow(Wp, prompt)
    assert f[3].item() == pytest.approx(1.0, rel=1e-6)
    field = flow.trace(W, prompt, answer, dtype=dtype)  # the fused path agrees
    torch.testing.assert_close(field.f, f, rtol=1e-6, atol=0)


def test_conservation_answer_receives_what_live_prompt_tokens_inject():
    """Influence is neither created nor destroyed: the answer gets what the live prompt injects."""
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
    """Doob-h-like reweighting: f = h * u, u forward propagation on the raw W with source s / h."""
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
    u = torch.tensor(u_ref[:36], dtype=torch.float64)
    torch.testing.assert_close(field.u[:36], u, rtol=1e-10, atol=0)


def test_dead_end_branch_gets_zero_flow():
    """The reweighting suppresses flow into dead-end branches (where h(k) = 0)."""
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
# eq. (6): gamma_flow on the high-flow tokens
# --------------------------------------------------------------------------------------------------


def test_credit_weights():
    """Eq. (6): gamma_t = gamma_flow if t is in T_high_flow, 1 otherwise."""
    mask = torch.tensor([[True, False, True], [False, False, False]])
    expect = torch.tensor([[1.5, 1.0, 1.5], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(flow.credit_weights(mask), expect)
    torch.testing.assert_close(flow.credit_weights(mask[0], gamma=2.0), torch.tensor([2.0, 1, 2]))


def test_flow_credit_end_to_end_picks_the_backbone():
    """The token on the flow backbone from the question to the answer is among the top 40%."""
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

