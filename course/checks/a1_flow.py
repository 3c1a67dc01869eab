"""Checks of assignment a1_flow: eqs. (1)-(4) and Theorem 3.1 in the student's flow.py.

Every check calls the student's functions only. The hand-computed example (HAND_*) is worked out in
the handout; the hidden checks compare with a slow implementation written loop by loop from the
paper in plain Python floats (`slow_flow`), and test properties on random attention graphs.
"""

import torch
from grade import Failure, check, expect, expect_close, fmt, fmt_pair, relative_error

# --------------------------------------------------------------------------------------------------
# the hand example (worked out in the handout): 5 tokens, prompt {0}, answer {3}, token 4 after it
# --------------------------------------------------------------------------------------------------

HAND_W = torch.tensor([  # W[i, k]: edge i -> k (token k reads token i)
    [0.0, 0.5, 0.3, 0.2, 0.0],
    [0.0, 0.0, 0.2, 0.6, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.7],
    [0.0, 0.0, 0.0, 0.0, 0.3],
    [0.0, 0.0, 0.0, 0.0, 0.0],
], dtype=torch.float64)
HAND_ANSWER = torch.tensor([False, False, False, True, False])
HAND_PROMPT = torch.tensor([True, False, False, False, False])
HAND_H = torch.tensor([0.5, 0.6, 0.0, 1.0, 0.0], dtype=torch.float64)
HAND_WP = torch.tensor([
    [0.0, 0.6, 0.0, 0.4, 0.0],
    [0.0, 0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0],
], dtype=torch.float64)
HAND_F = torch.tensor([1.0, 0.6, 0.0, 1.0, 0.0], dtype=torch.float64)


def causal_attention(T: int, seed: int, batch: int = 1, sink: float = 2.0,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[batch, T, T] random causal softmax attention (row = query, rows sum to 1), with an
    attention-sink first column as real models have."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, T, T, generator=g, dtype=torch.float64) * 1.5
    logits[..., 0] += sink
    logits = logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return logits.softmax(-1).to(dtype)


def span_mask(T: int, start: int, stop: int) -> torch.Tensor:
    m = torch.zeros(T, dtype=torch.bool)
    m[start:stop] = True
    return m


def row_sums_message(Wp: torch.Tensor, rows: torch.Tensor) -> str | None:
    """The first row of W' (among `rows`) that does not sum to 1, in Theorem 3.1's words."""
    sums = Wp.sum(-1)
    bad = rows & ((sums - 1).abs() > 1e-6)
    if not bad.any():
        return None
    idx = tuple(bad.nonzero()[0].tolist())
    row = idx[-1] if len(idx) == 1 else idx
    total = fmt_pair(sums[idx], 1)[0]
    return (f"row {row} of W' sums to {total} (relative error {relative_error(sums[idx], 1):.1e}), "
            "Theorem 3.1 says 1 (every non-answer token with h > 0 passes on all of its flow)")


# --------------------------------------------------------------------------------------------------
# visible checks
# --------------------------------------------------------------------------------------------------


@check(2)
def test_influence_graph_orientation(flow):
    """influence_graph: W[i, k] = attn[k, i] for i < k, zero on and below the diagonal (eq. 1)"""
    attn = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [0.2, 0.3, 0.5]])
    W = flow.influence_graph(attn)
    expect(tuple(W.shape) == (3, 3), f"W has shape {tuple(W.shape)}, expected (3, 3)")
    expected = torch.tensor([[0.0, 0.6, 0.2], [0.0, 0.0, 0.3], [0.0, 0.0, 0.0]])
    for i in range(3):
        for k in range(3):
            if abs(float(W[i, k]) - float(expected[i, k])) > 1e-7:
                if i < k:
                    why = (f"attn[{k}, {i}] = {fmt(attn[k, i])}: token {k} reads token {i}, so "
                           f"the edge goes {i} -> {k} (row = the earlier token)")
                else:
                    why = "0: no self loops and no edges backwards in time"
                raise Failure(f"W[{i}, {k}] is {fmt(W[i, k])}, it should be {why}")


@check(2)
def test_potential_hand_example(flow):
    """potential: the hand example of the handout (a dead end, a token after the answer)"""
    h = flow.potential(HAND_W, HAND_ANSWER)
    expect_close(h, HAND_H, "h of the hand example (handout, eq. 2)")


@check(2)
def test_reweight_hand_example(flow):
    """reweight: W' of the hand example (eq. 3), answer and dead-end rows 0"""
    Wp = flow.reweight(HAND_W, HAND_H, HAND_ANSWER)
    expect_close(Wp, HAND_WP, "W' of the hand example (eq. 3)")


@check(3)
def test_theorem_3_1(flow):
    """reweight: rows of W' sum to 1 wherever h > 0 outside the answer (Theorem 3.1)"""
    T = 12
    attn = causal_attention(T, seed=1)[0]
    answer = span_mask(T, 9, 11)
    W = flow.influence_graph(attn)
    h = flow.potential(W, answer)
    Wp = flow.reweight(W, h, answer)
    msg = row_sums_message(Wp, (h > 0) & ~answer)
    expect(msg is None, (msg or "") + " (with W and h from your influence_graph and potential)")


@check(2)
def test_forward_flow_hand_example(flow):
    """forward_flow: f of the hand example, with one and with two prompt tokens (eq. 4)"""
    expect_close(flow.forward_flow(HAND_WP, HAND_PROMPT), HAND_F, "f of the hand example (eq. 4)")
    two = torch.tensor([True, True, False, False, False])
    expected = torch.tensor([0.5, 0.8, 0.0, 1.0, 0.0], dtype=torch.float64)
    expect_close(flow.forward_flow(HAND_WP, two), expected,
                 "f of the hand example with prompt {0, 1} (each gets 1/|Q| = 0.5 from the source)")


@check(1)
def test_dead_ends_never_nan(flow):
    """dead ends (h = 0) give zero rows in W' and finite flow, never NaN"""
    h = flow.potential(HAND_W, HAND_ANSWER)
    Wp = flow.reweight(HAND_W, h, HAND_ANSWER)
    expect(bool(torch.isfinite(Wp).all()),
           "W' has NaN or inf: rows with h(i) = 0 must be 0, not 0/0")
    expect(bool((Wp[2] == 0).all()),
           f"row 2 of W' (h = 0, a dead end) is {Wp[2].tolist()}, expected 0")
    f = flow.forward_flow(Wp, HAND_PROMPT)
    expect(bool(torch.isfinite(f).all()), f"f has NaN or inf: {f.tolist()}")


# --------------------------------------------------------------------------------------------------
# hidden checks
# --------------------------------------------------------------------------------------------------


def slow_flow(attn: list[list[float]], prompt: list[bool], answer: list[bool]):
    """h, W', f of one sequence, loop by loop from the paper, in Python floats."""
    T = len(attn)
    W = [[attn[k][i] if i < k else 0.0 for k in range(T)] for i in range(T)]  # eq. (1)
    h = [0.0] * T
    for i in reversed(range(T)):  # eq. (2): answer tokens absorb, h = 1
        h[i] = 1.0 if answer[i] else sum(W[i][k] * h[k] for k in range(i + 1, T))
    Wp = [[0.0] * T for _ in range(T)]
    for i in range(T):  # eq. (3)
        if not answer[i] and h[i] > 0:
            for k in range(i + 1, T):
                Wp[i][k] = W[i][k] * h[k] / h[i]
    n_q = sum(prompt)
    f = [0.0] * T
    for k in range(T):  # eq. (4)
        f[k] = (1.0 / n_q if prompt[k] else 0.0) + sum(f[i] * Wp[i][k] for i in range(k))
    return h, Wp, f


def slow_batch(attn: torch.Tensor, prompt: torch.Tensor, answer: torch.Tensor):
    out = [slow_flow(a.tolist(), p.tolist(), m.tolist()) for a, p, m in zip(attn, prompt, answer)]
    return [torch.tensor([o[j] for o in out], dtype=torch.float64) for j in range(3)]


def random_batch(seed: int):
    """4 sequences of width 16: different prompt and answer spans, one left-padded by 3 tokens (its
    padding rows and columns 0, as rollout produces them), one with tokens after the answer."""
    T = 16
    attn = causal_attention(T, seed, batch=4)
    attn[2, :3] = 0.0
    attn[2, :, :3] = 0.0
    attn[2, 3:] /= attn[2, 3:].sum(-1, keepdim=True)
    spans = [((0, 4), (13, 16)), ((0, 6), (10, 12)), ((3, 7), (14, 16)), ((0, 2), (8, 9))]
    prompt = torch.stack([span_mask(T, *p) for p, _ in spans])
    answer = torch.stack([span_mask(T, *a) for _, a in spans])
    return attn, prompt, answer


@check(1, visibility="after_due_date")
def test_influence_graph_batched(flow):
    """influence_graph: batched input, dtype kept, the input left unchanged"""
    attn = causal_attention(7, seed=2, batch=3, dtype=torch.float32)
    before = attn.clone()
    W = flow.influence_graph(attn)
    expect(W.dtype == torch.float32,
           f"W is {W.dtype} for float32 attention: keep the input's dtype")
    expect(torch.equal(attn, before), "influence_graph changed its input attn in place")
    expected = torch.stack([a.T.triu(1) for a in before])
    expect_close(W, expected, "W of a batch [3, 7, 7] (eq. 1, per sequence)")


@check(3, visibility="after_due_date")
def test_potential_satisfies_eq_2(flow):
    """potential: h = 1 on the answer and h(i) = sum_k W[i, k] h(k) elsewhere, batched (eq. 2)"""
    attn, _, answer = random_batch(seed=3)
    W = torch.stack([a.T.triu(1) for a in attn])
    h = flow.potential(W, answer)
    expect(h.dtype == torch.float64, f"h is {h.dtype}; the default dtype is float64")
    expect(tuple(h.shape) == (4, 16), f"h has shape {tuple(h.shape)}, expected [B, T] = (4, 16)")
    rhs = (W * h[:, None, :]).sum(-1)  # [B, T]
    for b in range(4):
        for i in range(16):
            if answer[b, i] and abs(float(h[b, i]) - 1) > 1e-9:
                raise Failure(f"sequence {b}: h({i}) = {fmt(h[b, i])} on an answer token; eq. (2) "
                              "says h = 1 there (h(s) = 1 and an answer token feeds only the sink)")
            if not answer[b, i] and abs(float(h[b, i] - rhs[b, i])) > 1e-9:
                raise Failure(f"sequence {b}: h({i}) = {fmt(h[b, i])} but sum_k W[{i}, k] h(k) = "
                              f"{fmt(rhs[b, i])}: eq. (2) does not hold")
    h32 = flow.potential(W.float(), answer, dtype=torch.float32)
    expect(h32.dtype == torch.float32, f"potential(..., dtype=torch.float32) returned {h32.dtype}")


@check(2, visibility="after_due_date")
def test_tiny_potentials_are_potentials(flow):
    """reweight, forward_flow: Theorem 3.1 for every h > 0, even h = 1e-7 or 1e-30 (no threshold)"""
    for dtype in (torch.float64, torch.float32):
        for tiny in (1e-7, 1e-12, 1e-30):
            W = torch.zeros(4, 4, dtype=torch.float64)
            W[0, 1], W[1, 3], W[0, 2] = tiny, 1.0, 0.5  # 0 -> 1 -> 3 (answer); 2 is a dead end
            answer = torch.tensor([False, False, False, True])
            h = flow.potential(W, answer, dtype=dtype)
            expect(float(h[0]) > 0, f"h(0) = {fmt(h[0])} with W[0, 1] = {tiny:g}, W[1, 3] = 1 "
                   f"({dtype}): eq. (2) gives h(0) = {tiny:g}, positive")
            Wp = flow.reweight(W.to(dtype), h, answer)
            expect(abs(float(Wp[0].sum()) - 1) < 1e-5, f"row 0 of W' sums to {fmt(Wp[0].sum())} "
                   f"with h(0) = {fmt(h[0])} ({dtype}): Theorem 3.1 holds for every h(i) > 0, "
                   "however small; only h(i) = 0 gives a zero row (no threshold such as 1e-6, no "
                   "eps added to h)")
            f = flow.forward_flow(Wp, torch.tensor([True, False, False, False]))
            expect(abs(float(f[3]) - 1) < 1e-5, f"the answer receives {fmt(f[3])} of the flow with "
                   f"h(0) = {fmt(h[0])} ({dtype}): all of the source's unit must reach it")


@check(1, visibility="after_due_date")
def test_answer_tokens_absorb(flow):
    """potential: an answer token read by a later answer token still has h = 1"""
    W = torch.zeros(4, 4, dtype=torch.float64)
    W[0, 1], W[0, 2], W[1, 2], W[1, 3], W[2, 3] = 0.5, 0.5, 0.5, 0.5, 0.5
    answer = torch.tensor([False, False, True, True])
    h = flow.potential(W, answer)
    expect(abs(float(h[2]) - 1) < 1e-9,
           f"h(2) = {fmt(h[2])} for answer token 2 (token 3, also an answer token, reads it): "
           "answer tokens are absorbing, their own out-edges do not count, so h = 1")
    expect_close(h, torch.ones(4, dtype=torch.float64), "h of a two-token answer")


@check(2, visibility="after_due_date")
def test_potential_long_sequence_exact(flow):
    """potential: T = 300 of peaky float32 attention, exact in float64 (no precision lost)"""
    T = 300
    attn = causal_attention(T, seed=4, sink=6.0, dtype=torch.float32)[0]
    answer = span_mask(T, 290, 293)
    W = attn.T.triu(1)
    h = flow.potential(W, answer)
    Wd = W.double()
    expected = [0.0] * T
    for i in reversed(range(T)):  # back substitution in Python floats
        row = Wd[i].tolist()
        expected[i] = 1.0 if answer[i] else sum(row[k] * expected[k] for k in range(i + 1, T))
    expect(bool(torch.isfinite(h).all()), "h has NaN or inf on a long sequence")
    expected = torch.tensor(expected, dtype=torch.float64)
    on_answer = h[answer]
    expect(bool(((on_answer - 1).abs() < 1e-9).all()), f"h on the answer tokens 290-292 is "
           f"{[fmt(x) for x in on_answer]}: answer tokens absorb, h = 1 there (their own out-edges "
           "to the later answer tokens do not count)")
    rel = ((h.double() - expected).abs() / expected.abs().clamp(min=1e-300)).max().item()
    why = ("float32 precision: solve in the requested dtype (float64 here), whatever W's dtype, "
           "not in W's float32" if 1e-9 < rel < 1e-3 else "eq. (2) does not hold on a long "
           "sequence")
    expect_close(h, expected, f"h on T = 300 (a float32 W, dtype float64; {why})", atol=0,
                 rtol=1e-9)


@check(2, visibility="after_due_date")
def test_reweight_formula(flow):
    """reweight: W'[i, k] = W[i, k] h(k) / h(i) on random graphs, in h's dtype (eq. 3)"""
    attn, prompt, answer = random_batch(seed=5)
    W = torch.stack([a.T.triu(1) for a in attn]).float()
    h, Wp_slow, _ = slow_batch(attn, prompt, answer)
    Wp = flow.reweight(W, h, answer)
    expect(Wp.dtype == torch.float64,
           f"W' is {Wp.dtype} for float64 h: it is returned in h's dtype")
    expect_close(Wp, Wp_slow, "W' = W[i, k] h(k) / h(i) (0 on answer rows and where h(i) = 0)",
                 atol=1e-6)
    msg = row_sums_message(Wp, (h > 0) & ~answer)
    expect(msg is None, msg or "")


@check(3, visibility="after_due_date")
def test_forward_flow_conserves_mass(flow):
    """forward_flow: the answer tokens receive exactly the unit of flow the prompt injects"""
    T = 20
    attn = causal_attention(T, seed=6, batch=3)
    prompt = span_mask(T, 0, 5).expand(3, T)
    answer = span_mask(T, 15, 18).expand(3, T)
    _, Wp, _ = slow_batch(attn, prompt, answer)
    f = flow.forward_flow(Wp, prompt)
    into_answer = (f * answer).sum(-1)  # [B]
    for b in range(3):
        expect(abs(float(into_answer[b]) - 1) < 1e-9,
               f"sequence {b}: the answer tokens receive {fmt(into_answer[b])} of the flow; with "
               "every prompt token reaching the answer and rows of W' summing to 1, eq. (4) "
               "delivers exactly 1 (the source's unit)")
    expect(bool((f[:, 18:] == 0).all()), "tokens after the answer (h = 0) must get no flow")


@check(1, visibility="after_due_date")
def test_forward_flow_source(flow):
    """forward_flow: the source gives 1/|Q| to each prompt token, none elsewhere"""
    Wp = torch.zeros(2, 5, 5, dtype=torch.float64)
    prompt = torch.tensor([[True, True, True, False, False], [False, True, False, False, False]])
    f = flow.forward_flow(Wp, prompt)
    expected = torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0, 0], [0, 1, 0, 0, 0]], dtype=torch.float64)
    expect_close(f, expected, "f with no edges: the source alone (1/|Q| on each prompt token)")


@check(3, visibility="after_due_date")
def test_pipeline_matches_slow_reference(flow):
    """the whole chain, eqs. (1)-(4), on a padded batch equals a slow loop implementation"""
    attn, prompt, answer = random_batch(seed=7)
    h_slow, Wp_slow, f_slow = slow_batch(attn, prompt, answer)
    W = flow.influence_graph(attn)
    h = flow.potential(W, answer)
    expect_close(h, h_slow, "h (eq. 2) on a padded batch", atol=1e-9)
    Wp = flow.reweight(W, h, answer)
    expect_close(Wp, Wp_slow, "W' (eq. 3) on a padded batch", atol=1e-9)
    f = flow.forward_flow(Wp, prompt)
    expect_close(f, f_slow, "f (eq. 4) on a padded batch", atol=1e-9)


@check(1, visibility="after_due_date")
def test_left_padding_changes_nothing(flow):
    """a left-padded sequence gets the h and f of the unpadded one, and 0 on the padding"""
    T, pad = 10, 4
    attn = causal_attention(T, seed=8)[0]
    padded = torch.zeros(T + pad, T + pad, dtype=torch.float64)
    padded[pad:, pad:] = attn
    prompt, answer = span_mask(T, 0, 3), span_mask(T, 7, 9)
    no_pad = torch.zeros(pad, dtype=torch.bool)
    results = []
    for a, p, m in ((attn, prompt, answer), (padded, torch.cat([no_pad, prompt]),
                                             torch.cat([no_pad, answer]))):
        W = flow.influence_graph(a)
        h = flow.potential(W, m)
        results.append((h, flow.forward_flow(flow.reweight(W, h, m), p)))
    (h, f), (hp, fp) = results
    expect_close(hp[pad:], h, "h of the padded sequence (real tokens)", atol=1e-12)
    expect_close(fp[pad:], f, "f of the padded sequence (real tokens)", atol=1e-12)
    expect(bool((hp[:pad] == 0).all() and (fp[:pad] == 0).all()),
           f"padding tokens must get h = f = 0, got h {hp[:pad].tolist()}, f {fp[:pad].tolist()}")


@check(1, visibility="after_due_date")
def test_forward_flow_keeps_dtype(flow):
    """forward_flow: float32 W' gives float32 f (the solve never runs in bf16 or changes dtype)"""
    f = flow.forward_flow(HAND_WP.float(), HAND_PROMPT)
    expect(f.dtype == torch.float32, f"f is {f.dtype} for a float32 W'; return W_prime's dtype")
    expect_close(f, HAND_F.float(), "f of the hand example in float32")
