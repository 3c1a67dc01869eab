"""credit.py: the defining property of each credit strategy (eq. (6) and the paper's baselines and
ablations), on a stand-in rollout with random causal attention.
"""

import math
import types
from pathlib import Path

import pytest
import torch

import baselines
import credit
import flow

torch.set_num_threads(1)

P = 4                                           # prompt area width (left padded)
ROOT = Path(__file__).resolve().parents[1]


def _fake_rollout(prompt_lens=(4, 3, 4, 2), resp_lens=(8, 10, 5, 9),
                  answer=(True, True, True, False), seed=0, vocab=101):
    """A stand-in for rollout.Rollout: the fixed field names, random causal head-mean attention.
    Columns [0, P) hold the left-padded prompt, [P, T) the right-padded response; the answer region
    is the 2 response tokens before the last (EOS) one; rows with answer=False have no answer
    span."""
    B, T = len(prompt_lens), P + max(resp_lens)
    cols = torch.arange(T)
    prompt = torch.stack([(cols < P) & (cols >= P - n) for n in prompt_lens])          # [B, T]
    resp = torch.stack([(cols >= P) & (cols < P + n) for n in resp_lens])               # [B, T]
    ans = torch.stack([(cols >= P + n - 3) & (cols < P + n - 1) & a
                       for n, a in zip(resp_lens, answer)])                              # [B, T]
    real = prompt | resp
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, T, generator=g) * 2
    # [B, q, k]
    allowed = torch.ones(T, T, dtype=torch.bool).tril() & real[:, None, :] & real[:, :, None]
    attn = logits.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)   # [B, T, T]
    ids = torch.randint(1, vocab, (B, T), generator=g).masked_fill(~real, 0)
    return types.SimpleNamespace(input_ids=ids, attention_mask=real.long(), prompt_mask=prompt,
                                 response_mask=resp, answer_mask=ans, attn=attn,
                                 lengths=torch.tensor(resp_lens))


def _k(n, ratio=0.4):
    return math.floor(n * ratio + 0.5)


def _assert_top_k(gam, scores, resp, gamma=1.5, ratio=0.4, largest=True):
    """gamma on exactly round(ratio * n) response tokens, 1 elsewhere, and every selected score is
    >= (or <= for bottom-k) every unselected response score."""
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


# --------------------------------------------------------------------------------------------------
# FlowTracer (eq. (6)) and plain GRPO
# --------------------------------------------------------------------------------------------------

def test_credit_unknown_strategy_lists_valid_names():
    """An unknown --credit name is refused with the list of valid ones."""
    valid = "unknown credit strategy 'flow-top'.*flow-bottom.*entropy"
    with pytest.raises(ValueError, match=valid):
        credit.credit_gamma("flow-top", _fake_rollout())


def test_credit_uniform_is_plain_grpo():
    """In standard GRPO gamma_it = 1 for every token."""
    r = _fake_rollout()
    assert torch.equal(credit.credit_gamma("uniform", r), torch.ones(r.response_mask.shape))


@pytest.mark.parametrize("largest", [True, False])
def test_credit_flow_top_and_bottom_k(largest):
    """Eq. (6): gamma_flow on the top (Table 5: bottom) k of the response tokens by throughput."""
    r = _fake_rollout(answer=(True,) * 4)
    gam = credit.credit_gamma("flow" if largest else "flow-bottom", r)
    assert gam.dtype == torch.float32 and gam.shape == r.response_mask.shape
    _assert_top_k(gam, _tau(r), r.response_mask, largest=largest)
    gam2 = credit.credit_gamma("flow", r, ratio=0.2, gamma=1.2)
    _assert_top_k(gam2, _tau(r), r.response_mask, gamma=1.2, ratio=0.2)


def test_credit_flow_without_answer_span_is_uniform():
    """A response without an answer region has no flow target: its gamma stays 1."""
    r = _fake_rollout()                                                 # row 3 has no answer span
    for name in ("flow", "flow-bottom", "flow-raw", "flow-tanh", "flow-mass40"):
        gam = credit.credit_gamma(name, r)
        assert torch.equal(gam[3], torch.ones(r.response_mask.shape[1])), name
        assert (gam[:3] != 1).any(), name
    with pytest.raises(ValueError, match="rollout.attn"):
        credit.credit_gamma("flow", types.SimpleNamespace(**{**vars(r), "attn": None}))


# --------------------------------------------------------------------------------------------------
# baselines: random, entropy, attention, gradient
# --------------------------------------------------------------------------------------------------

def test_credit_random_count_and_seed():
    """Random, a neutral lower bound: the same count of tokens, drawn by the seed."""
    r = _fake_rollout()
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = credit.credit_gamma("random", r, generator=gen(0))
    # right count, only in the response
    _assert_top_k(a, torch.zeros(r.response_mask.shape), r.response_mask)
    assert torch.equal(a, credit.credit_gamma("random", r, generator=gen(0)))
    picks = {tuple(credit.credit_gamma("random", r, generator=gen(s))[1].tolist())
             for s in range(5)}
    assert len(picks) > 1                                              # it does vary with the seed


def test_credit_entropy_picks_the_most_uncertain_position():
    """Entropy (Wang et al., 2025b) selects tokens with high entropy."""
    # Crafted next-token distributions: peaked (entropy ~0) everywhere except a uniform one (entropy
    # log V) at column t = 6 of row 0 and t = 9 of row 1, i.e. the distributions of tokens 7 and 10.
    r = _fake_rollout(prompt_lens=(4, 4), resp_lens=(8, 10), answer=(True, True))
    B, T, V = 2, r.response_mask.shape[1], 50
    logits = torch.zeros(B, T - 1, V)
    logits[..., 0] = 20.0
    logits[0, 6] = 0.0
    logits[1, 9] = 0.0
    logits[1, 5, :2] = 20.0                                            # two-way tie: log 2, second
    ent = torch.distributions.Categorical(logits=logits).entropy()         # [B, T-1]
    gam = credit.credit_gamma("entropy", r, entropy=ent, ratio=0.1)        # k = 1 of 8 and of 10
    assert gam[0, 7] == 1.5 and (gam[0] == 1.5).sum() == 1
    assert gam[1, 10] == 1.5 and (gam[1] == 1.5).sum() == 1
    # k = 2 of 10: the log 2 one too
    gam2 = credit.credit_gamma("entropy", r, entropy=ent, ratio=0.2)
    assert gam2[1, 6] == 1.5 and (gam2[1] == 1.5).sum() == 2
    with pytest.raises(ValueError, match=r"\[B, T-1\]"):
        credit.credit_gamma("entropy", r, entropy=torch.zeros(B, T))


def test_attention_received_against_slow_loop_and_selection():
    """Attention (Li et al., 2025d): attention scores as a proxy for importance."""
    r = _fake_rollout()
    B, T = r.response_mask.shape
    slow_mean, slow_max = torch.zeros(B, T), torch.zeros(B, T)
    for b in range(B):
        for k in range(T):
            readers = [q for q in range(k + 1, T) if r.response_mask[b, q]]
            if readers:
                slow_mean[b, k] = sum(r.attn[b, q, k] for q in readers) / len(readers)
                slow_max[b, k] = max(r.attn[b, q, k] for q in readers)
    torch.testing.assert_close(baselines.attention_received(r.attn, r.response_mask), slow_mean)
    torch.testing.assert_close(baselines.attention_received(r.attn, r.response_mask, "max"), slow_max)
    # a token that every later response token attends to strongly is selected by both
    attn = r.attn.clone()
    attn[0, P + 4:, P + 2] += 5.0
    peaked = types.SimpleNamespace(**{**vars(r), "attn": attn})
    for name in ("attention", "attention-mean"):
        gam = credit.credit_gamma(name, peaked, ratio=0.1)
        assert gam[0, P + 2] == 1.5 and (gam[0] == 1.5).sum() == 1, name
    _assert_top_k(credit.credit_gamma("attention", r), slow_max, r.response_mask)
    _assert_top_k(credit.credit_gamma("attention-mean", r), slow_mean, r.response_mask)
    with pytest.raises(ValueError, match="reduce"):
        baselines.attention_received(r.attn, r.response_mask, "sum")


def test_attention_max_and_mean_hand_computed():
    """The paper's "maximum attention scores" (attention) vs the mean received (attention-mean)."""
    # one sequence: prompt token 0, response tokens 1..4; row q = query, column k = key
    attn = torch.tensor([[[1.00, 0.00, 0.0, 0.0, 0.0],
                          [0.50, 0.50, 0.0, 0.0, 0.0],
                          [0.20, 0.60, 0.2, 0.0, 0.0],
                          [0.10, 0.10, 0.7, 0.1, 0.0],
                          [0.25, 0.05, 0.1, 0.3, 0.3]]])
    resp = torch.tensor([[False, True, True, True, True]])
    # token 1 is read by 2, 3, 4 (0.6, 0.1, 0.05); token 2 by 3, 4 (0.7, 0.1); token 3 by 4 (0.3);
    # token 4 by nobody
    torch.testing.assert_close(baselines.attention_received(attn, resp, "max")[0, 1:],
                               torch.tensor([0.6, 0.7, 0.3, 0.0]))
    torch.testing.assert_close(baselines.attention_received(attn, resp, "mean")[0, 1:],
                               torch.tensor([0.25, 0.4, 0.3, 0.0]))
    r = types.SimpleNamespace(response_mask=resp, attn=attn)
    # top half of the 4 response tokens: max -> tokens 1 and 2, mean -> tokens 2 and 3
    assert credit.credit_gamma("attention", r, ratio=0.5).tolist() == [[1, 1.5, 1.5, 1, 1]]
    assert credit.credit_gamma("attention-mean", r, ratio=0.5).tolist() == [[1, 1, 1.5, 1.5, 1]]


def test_gradient_saliency_against_inputs_embeds_and_selection(tiny_qwen):
    """Gradient (Green et al., 2025): tokens by first-order gradient magnitude."""
    r = _fake_rollout()
    got = baselines.gradient_saliency(tiny_qwen, r.input_ids, r.attention_mask, r.response_mask)
    assert all(p.grad is None for p in tiny_qwen.parameters())             # parameters untouched
    # slow reference: differentiate through inputs_embeds with the naive full log_softmax
    emb = tiny_qwen.get_input_embeddings()(r.input_ids).detach().requires_grad_()
    pos = (r.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = tiny_qwen(inputs_embeds=emb, attention_mask=r.attention_mask, position_ids=pos).logits
    logp = logits[:, :-1].log_softmax(-1).gather(-1, r.input_ids[:, 1:, None]).squeeze(-1)
    (logp * r.response_mask[:, 1:]).sum().backward()
    torch.testing.assert_close(got, emb.grad.norm(dim=-1), atol=1e-5, rtol=1e-4)
    _assert_top_k(credit.credit_gamma("gradient", r, model=tiny_qwen), got, r.response_mask)
    with pytest.raises(ValueError, match="model="):
        credit.credit_gamma("gradient", r)


class _LookupLM(torch.nn.Module):
    """A stand-in causal LM whose final hidden state of token x is E[x] and whose LM head is U."""

    def __init__(self, E, U):
        super().__init__()
        self.decoder = torch.nn.Embedding.from_pretrained(E)
        self.head = torch.nn.Linear(E.shape[1], U.shape[0], bias=False)
        self.head.weight.data = U

    def get_decoder(self):
        return lambda input_ids, **kw: types.SimpleNamespace(
            last_hidden_state=self.decoder(input_ids))

    def get_output_embeddings(self):
        return self.head


def test_correlation_hand_computed():
    """Correlation (Nie et al., 2025): tokens aligned with the response's pooled representation."""
    # tied embeddings: token 0 = [1, 0], 1 = [0, 1], 2 = [1, 1]. Prompt token 1, response 2 0 0 1.
    E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    lm = _LookupLM(E, E.clone())
    ids = torch.tensor([[1, 2, 0, 0, 1]])
    resp = torch.tensor([[False, True, True, True, True]])
    # e = mean of the response's states = ([1,1] + [1,0] + [1,0] + [0,1]) / 4 = [0.75, 0.5]
    # (the prompt is left out); scores: token 2 -> 1.25, token 0 -> 0.75, token 1 -> 0.5
    got = baselines.text_token_alignment(lm, ids, torch.ones_like(ids), resp)
    torch.testing.assert_close(got[0, 1:], torch.tensor([1.25, 0.75, 0.75, 0.5]))
    r = types.SimpleNamespace(input_ids=ids, attention_mask=torch.ones_like(ids),
                              response_mask=resp)
    # top 3 of 4: every response token but the last (token 1, the least aligned)
    assert credit.credit_gamma("correlation", r, model=lm, ratio=0.75).tolist() == [
        [1, 1.5, 1.5, 1.5, 1]]
    with pytest.raises(ValueError, match="model="):
        credit.credit_gamma("correlation", r)


def test_correlation_against_hidden_states(tiny_qwen):
    """Correlation on a real model: the logit of each token decoded from the mean final state."""
    r = _fake_rollout()
    got = baselines.text_token_alignment(tiny_qwen, r.input_ids, r.attention_mask, r.response_mask)
    pos = (r.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        h = tiny_qwen(r.input_ids, attention_mask=r.attention_mask, position_ids=pos,
                      output_hidden_states=True).hidden_states[-1]              # [B, T, H]
        slow = torch.zeros(r.input_ids.shape)
        for b in range(h.shape[0]):
            e = h[b][r.response_mask[b]].mean(0)
            logits = tiny_qwen.lm_head(e)
            slow[b] = logits[r.input_ids[b]]
    torch.testing.assert_close(got, slow, atol=1e-5, rtol=1e-4)
    _assert_top_k(credit.credit_gamma("correlation", r, model=tiny_qwen), got, r.response_mask)


# --------------------------------------------------------------------------------------------------
# Table 11b: flow credit inside one token class
# --------------------------------------------------------------------------------------------------

class _Tokenizer:
    """A stand-in tokenizer: even ids decode to "+" (structural), odd ids to "ab" (content)."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def batch_decode(self, ids):
        return ["+" if i % 2 == 0 else "ab" for (i,) in ids]


@pytest.mark.parametrize("name", ["flow-structural", "flow-content"])
def test_flow_within_a_token_class(name):
    """Table 11b: the top-40% high-flow tokens within the structural (content) subset."""
    r = _fake_rollout(answer=(True, True, True, False), vocab=101)
    tok = _Tokenizer(80)                                   # ids 80..100 are unknown: structural
    structural = (r.input_ids % 2 == 0) | (r.input_ids >= 80)
    in_class = structural if name == "flow-structural" else ~structural
    gam = credit.credit_gamma(name, r, tokenizer=tok)
    tau = flow.throughput(flow.influence_graph(r.attn[:3]), r.prompt_mask[:3], r.answer_mask[:3])
    cand = r.response_mask & in_class
    _assert_top_k(gam[:3], tau, cand[:3])                  # the rule, inside the class
    assert all(0 < int(cand[b].sum()) < int(r.response_mask[b].sum()) for b in range(3))
    assert (gam[~cand] == 1).all()                         # the other class keeps 1
    assert torch.equal(gam[3], torch.ones(r.response_mask.shape[1]))  # no answer span: 1
    with pytest.raises(ValueError, match="tokenizer="):
        credit.credit_gamma(name, r)


def test_structural_vocab_of_the_tiny_tokenizer():
    """token_class over a real vocabulary: newline and operators structural, digits content."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ROOT / "tiny" / "qwen3-arith"))
    table = baselines.structural_vocab(tok)
    assert table.dtype == torch.bool and table.shape == (len(tok),)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("=", "+", "7", "<|im_end|>")}
    assert table[ids["="]] and table[ids["+"]] and table[ids["<|im_end|>"]]
    assert not table[ids["7"]]
    assert baselines.structural_vocab(tok) is table                      # computed once


# --------------------------------------------------------------------------------------------------
# ablations: continuous variants and flow-mass thresholds (Table 7)
# --------------------------------------------------------------------------------------------------

CONTINUOUS = ["flow-raw", "flow-log1p", "flow-sigmoid", "flow-mad"]


@pytest.mark.parametrize("name", CONTINUOUS)
def test_continuous_variants_budget_floor_and_monotone(name):
    """Table 7's continuous weights: the hard rule's mean weight, w >= 1, monotone in flow."""
    r = _fake_rollout(answer=(True,) * 4, seed=1)
    tau, resp = _tau(r), r.response_mask
    gam = credit.credit_gamma(name, r)
    assert torch.equal(gam[~resp], torch.ones(int((~resp).sum())))
    for b in range(4):
        w, t = gam[b][resp[b]].double(), tau[b][resp[b]]
        # the hard rule's mean weight
        assert w.mean().item() == pytest.approx(1 + 0.4 * 0.5, abs=1e-5)
        assert (w >= 1 - 1e-6).all()
        w_sorted = w[t.argsort()]
        assert (w_sorted.diff() >= -1e-6).all()                           # monotone in flow
        assert w.max() > w.min()


def test_continuous_variants_formulas():
    """Table 7's raw, log1p, sigmoid, MAD and tanh transforms of the flow, formula by formula."""
    # w - 1 is proportional to g: tau (raw), log1p(tau / mean) (log1p), sigmoid(z) (sigmoid)
    r = _fake_rollout(answer=(True,) * 4, seed=2)
    tau, resp = _tau(r), r.response_mask
    for b in range(4):
        t = tau[b][resp[b]]
        z = (t - t.mean()) / t.std(unbiased=False)
        transforms = (("flow-raw", t), ("flow-log1p", torch.log1p(t / t.mean())),
                      ("flow-sigmoid", z.sigmoid()))
        for name, g in transforms:
            w = credit.credit_gamma(name, r)[b][resp[b]].double()
            torch.testing.assert_close(w - 1, 0.2 * g / g.mean(), atol=1e-6, rtol=1e-5)
        # MAD: tokens above median + 3 * 1.4826 * MAD all share the top weight, the rest are linear
        # in tau
        med = t.median()
        cap = med + 3 * 1.4826 * (t - med).abs().median()
        w = credit.credit_gamma("flow-mad", r)[b][resp[b]].double()
        capped = t.clamp(max=cap)
        torch.testing.assert_close(w - 1, 0.2 * capped / capped.mean(), atol=1e-6, rtol=1e-5)
        # tanh + z-score: 1 + 0.5 tanh(z), inside (0.5, 1.5), above 1 exactly where tau is above the
        # mean
        w = credit.credit_gamma("flow-tanh", r)[b][resp[b]].double()
        torch.testing.assert_close(w, 1 + 0.5 * z.tanh(), atol=1e-6, rtol=1e-5)
        assert ((w > 0.5) & (w < 1.5)).all() and torch.equal(w > 1, t > t.mean())


def test_continuous_map_with_indicator_flow_is_the_hard_rule(monkeypatch):
    """Continuous weighting of the top-k indicator is eq. (6)'s hard mask."""
    # If the flow were the 0/1 indicator of the top-40% set, raw-flow weighting gives eq. (6) back
    # exactly (10 and 5 response tokens: k / n = 0.4 exactly).
    r = _fake_rollout(prompt_lens=(4, 3), resp_lens=(10, 5), answer=(True, True))
    hard = credit.credit_gamma("flow", r)
    indicator = (hard == 1.5).double()
    monkeypatch.setattr(flow, "throughput", lambda W, pm, am: indicator)
    torch.testing.assert_close(credit.credit_gamma("flow-raw", r), hard)


def test_flow_mass_thresholds_hand_computed(monkeypatch):
    """Table 7: select tokens until their cumulative flow mass reaches the threshold."""
    # response throughputs (shuffled) 0.15 0.5 0.05 0.2 0.1 (total 1):
    #   20% -> {0.5};  40% -> {0.5};  60% -> {0.5, 0.2} (0.7);  80% -> {0.5, 0.2, 0.15} (0.85)
    r = _fake_rollout(prompt_lens=(4,), resp_lens=(5,), answer=(True,))
    tau = torch.zeros(1, 9, dtype=torch.float64)
    tau[0, P:] = torch.tensor([0.15, 0.5, 0.05, 0.2, 0.1])
    tau[0, :P] = 9.0                                                # prompt flow is not a candidate
    monkeypatch.setattr(flow, "throughput", lambda W, pm, am: tau)
    expect = {20: [1], 40: [1], 60: [1, 3], 80: [0, 1, 3]}
    for p, idx in expect.items():
        gam = credit.credit_gamma(f"flow-mass{p}", r)
        assert (gam[0] == 1.5).nonzero().flatten().tolist() == [P + i for i in idx], p
    # exact boundary: throughputs 1 2 0 2 0 (total 5); the first 2 alone is exactly 40%, so it
    # suffices
    tau[0, P:] = torch.tensor([1.0, 2.0, 0.0, 2.0, 0.0])
    gam = credit.credit_gamma("flow-mass40", r)
    assert (gam[0] == 1.5).nonzero().flatten().tolist() == [P + 1]


@pytest.mark.parametrize("mass", [20, 40, 60, 80])
def test_flow_mass_covers_minimal_top_set(mass):
    """The flow-mass selection is the fewest highest-flow tokens reaching the threshold."""
    r = _fake_rollout(answer=(True,) * 4, seed=3)
    tau, resp = _tau(r), r.response_mask
    gam = credit.credit_gamma(f"flow-mass{mass}", r)
    for b in range(4):
        sel, rest = (gam[b] == 1.5) & resp[b], resp[b] & (gam[b] == 1)
        total = tau[b][resp[b]].sum()
        # covers the threshold, and no token could be dropped
        assert tau[b][sel].sum() >= mass / 100 * total
        assert tau[b][sel].sum() - tau[b][sel].min() < mass / 100 * total
        if rest.any():
            assert tau[b][sel].min() >= tau[b][rest].max()            # with the highest-flow tokens


# --------------------------------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------------------------------

def test_credit_bad_arguments():
    """Bad ratio, gamma or a missing entropy= are refused with a clear error."""
    r = _fake_rollout()
    with pytest.raises(ValueError, match="ratio"):
        credit.credit_gamma("flow", r, ratio=1.5)
    with pytest.raises(ValueError, match="gamma"):
        credit.credit_gamma("flow", r, gamma=float("nan"))
    with pytest.raises(ValueError, match="entropy="):
        credit.credit_gamma("entropy", r)

