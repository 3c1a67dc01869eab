"""The baselines and ablations of FlowTracer's credit (Tables 2, 5, 7 and 11b): other scores for the
same top-k rule of eq. (6), and other maps from flow to weights; and the chain testbed's positive
controls (`oracle`, `oracle-only`). FlowTracer's own credit is flow.flow_credit; credit.py names
every strategy (credit.CREDIT_STRATEGIES) and runs one.

A strategy is a function CreditInputs -> gamma [B, T]: it ranks or weights the response tokens of a
rollout by some score and leaves every other token at 1. docs/credit.md lists every strategy with
its definition.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import flow
import grpo


@dataclass
class CreditInputs:
    """What a credit strategy may read. rollout: rollout.Rollout (or anything with its fields);
    entropy: [B, T-1] next-token entropies (None: the `entropy` baseline computes them with model
    at temperature); tokenizer: the one that made rollout.input_ids (Table 11b's token classes)."""

    rollout: Any
    ratio: float
    gamma: float
    entropy: Tensor | None
    model: torch.nn.Module | None
    generator: torch.Generator | None
    tokenizer: Any = None
    temperature: float = 1.0



def _top_k_credit(c: CreditInputs, scores: Tensor, candidates: Tensor,
                  largest: bool = True) -> Tensor:
    """eq. (6): gamma on the top (or bottom) ratio of candidates by score, 1 elsewhere."""
    return flow.credit_weights(flow.top_k_mask(scores, candidates, c.ratio, largest), c.gamma)


def need(c: CreditInputs, field: str, strategy: str) -> Tensor:
    value = getattr(c.rollout, field, None)
    if value is None:
        raise ValueError(f"credit strategy {strategy!r} needs rollout.{field}"
                         + (" (generate with capture=True)" if field == "attn" else ""))
    return value


# --------------------------------------------------------------------------------------------------
# the flow strategies' input, and the baselines of Table 2: the same top-k rule on other scores
# --------------------------------------------------------------------------------------------------

def _flow_scores(c: CreditInputs, strategy: str) -> tuple[Tensor, Tensor]:
    """flow.flow_scores of the rollout: throughput tau [B, T] and the candidates it ranks."""
    ro = c.rollout
    return flow.flow_scores(need(c, "attn", strategy), ro.prompt_mask, ro.answer_mask,
                            ro.response_mask)



def _uniform(c: CreditInputs) -> Tensor:
    """Plain GRPO: gamma = 1 everywhere."""
    return torch.ones(c.rollout.response_mask.shape)


def _random(c: CreditInputs) -> Tensor:
    """Random baseline: gamma on a uniformly random `ratio` of the response tokens (`generator`)."""
    mask = c.rollout.response_mask
    scores = torch.rand(mask.shape, generator=c.generator).to(mask.device)   # [B, T]
    return _top_k_credit(c, scores, mask)


def _entropy(c: CreditInputs) -> Tensor:
    """High-entropy baseline (Wang et al. 2025b): gamma on the `ratio` of response tokens drawn from
    the most uncertain next-token distributions. entropy: [B, T-1] as token_logprobs(...,
    return_entropy=True) returns it (column t is the distribution of token t+1), shifted here to
    token positions; without it, the policy's own (c.model at c.temperature), one no-grad pass."""
    ro, mask = c.rollout, c.rollout.response_mask
    if c.entropy is None and c.model is None:
        raise ValueError("credit strategy 'entropy' needs entropy= "
                         "(token_logprobs(..., return_entropy=True)) or model=")
    entropy = c.entropy
    if entropy is None:
        with torch.no_grad():
            _, entropy = grpo.token_logprobs(c.model, ro.input_ids, ro.attention_mask,
                                             c.temperature, return_entropy=True)   # [B, T-1]
    if entropy.shape != (mask.shape[0], mask.shape[1] - 1):
        raise ValueError(f"entropy must be [B, T-1] = {(mask.shape[0], mask.shape[1] - 1)} as "
                         f"token_logprobs returns it, got {tuple(entropy.shape)}")
    scores = F.pad(entropy.detach().float(), (1, 0))  # [B, T] entropy of token t's distribution
    return _top_k_credit(c, scores.to(mask.device), mask)


def attention_received(attn: Tensor, response_mask: Tensor, reduce: str = "mean") -> Tensor:
    """Attention a token receives from the LATER response tokens, max or mean over them: [B, T].

    attn: [B, T, T] head-mean attention, row q = query, column k = key (rollout.generate's).
        max:  score(k) = max_{q > k, q in response} attn[q, k]
        mean: score(k) = sum_{q > k, q in response} attn[q, k] / #{q > k in response}
    Both are 0 for a token that no later response token reads (the last one, padding).
    """
    readers = response_mask.to(attn.dtype)                            # [B, T] query rows that count
    seen = (attn * readers[:, :, None]).tril(-1)                       # [B, q, k], 0 unless q > k
    if reduce == "max":
        return seen.amax(dim=1)                                        # attn >= 0: 0 = no reader
    if reduce == "mean":
        later = readers.flip(-1).cumsum(-1).flip(-1) - readers         # [B, T] #{q > k in response}
        return seen.sum(dim=1) / later.clamp(min=1)
    raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")


_ATTENTION_REDUCE = {"attention": "max", "attention-mean": "mean"}


def _attention(strategy: str, c: CreditInputs) -> Tensor:
    """Attention baseline (Li et al. 2025d): gamma on the `ratio` of response tokens that receive
    the most attention from later response tokens.

    The paper selects by "maximum attention scores as a proxy for importance" (Sec. 4.1): strategy
    `attention` reads that literally, a token's score is the largest attention any later response
    token pays it (reduce="max"), so one strong reader is enough, as for a value copied once into
    the answer. The cited work's own statistic, Future Attention Influence, is the AVERAGE attention
    a token receives from subsequent tokens: strategy `attention-mean` (reduce="mean"). The mean
    over readers, not the column sum, keeps early tokens from winning only because more tokens
    follow them; the max needs no such care.
    """
    mask = c.rollout.response_mask
    scores = attention_received(need(c, "attn", strategy), mask, _ATTENTION_REDUCE[strategy])
    return _top_k_credit(c, scores, mask)


def gradient_saliency(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor,
                      response_mask: Tensor) -> Tensor:
    """|| d log pi(response | prompt) / d e_t ||_2 for every input embedding e_t: [B, T] float32.

    The first-order gradient magnitude of the gradient baseline (Green et al. 2025): how strongly
    the sequence's own log-likelihood reacts to each token's input embedding (input-gradient
    saliency). One forward and one backward pass; parameter .grad fields are not touched.
    """
    captured = []

    def hook(module, args, out):                                        # make the embeddings a leaf
        captured.append(out.detach().requires_grad_())
        return captured[-1]

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logp = grpo.token_logprobs(model, input_ids, attention_mask)   # [B, T-1]
            total = (logp * grpo.align(response_mask)).sum()
            (grad,) = torch.autograd.grad(total, captured[0])            # [B, T, H]
    finally:
        handle.remove()
    return grad.float().norm(dim=-1)


def _gradient(c: CreditInputs) -> Tensor:
    """Gradient baseline: gamma on the `ratio` of response tokens of largest gradient_saliency."""
    if c.model is None:
        raise ValueError("credit strategy 'gradient' needs model=")
    r = c.rollout
    scores = gradient_saliency(c.model, r.input_ids, r.attention_mask, r.response_mask)
    return _top_k_credit(c, scores, r.response_mask)


def text_token_alignment(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor,
                         response_mask: Tensor) -> Tensor:
    """How strongly each token agrees with the response as a whole: [B, T] float32.

        e_b      = mean over the response tokens t of row b of the final hidden state h_t  # [B, H]
        score_bt = lm_head(e_b)[x_bt]         the logit of token x_bt decoded from e_b

    Nie et al. (2025) show that the embedding of a text, decoded through the LM head (their
    `decoder_layer(embs)`; mean pooling is one of the embedders they cover), ranks the text's own
    key tokens first. The dot product <e, U[x]> is the correlation between the text's
    representation and the token's output embedding, so a token scores high when the whole
    response points at it: the paper's "tokens with strong mutual dependencies". One no-grad
    forward pass; the LM head is applied to B pooled vectors only (no [B, T, V] logits). Not
    included: Nie et al.'s first-principal-component adjustment, fitted on a corpus of texts.
    """
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                     position_ids=grpo.position_ids(attention_mask)
                                     ).last_hidden_state                            # [B, T, H]
        m = response_mask[:, :, None].float()                                       # [B, T, 1]
        e = (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1)                     # [B, H]
        head = model.get_output_embeddings()
        logits = head(e.to(head.weight.dtype)).float()                              # [B, V]
    return logits.gather(1, input_ids)                                              # [B, T]


def _correlation(c: CreditInputs) -> Tensor:
    """Correlation baseline (Nie et al. 2025): gamma on the `ratio` of response tokens most aligned
    with the response's pooled representation (text_token_alignment)."""
    if c.model is None:
        raise ValueError("credit strategy 'correlation' needs model=")
    r = c.rollout
    scores = text_token_alignment(c.model, r.input_ids, r.attention_mask, r.response_mask)
    return _top_k_credit(c, scores, r.response_mask)


# --------------------------------------------------------------------------------------------------
# ablations of the flow rule: bottom-k (Table 5), continuous weights and mass thresholds (Table 7)
# --------------------------------------------------------------------------------------------------

def _flow_bottom(c: CreditInputs) -> Tensor:
    """Table 5's Bottom-k ablation: gamma on the `ratio` of response tokens of LOWEST throughput."""
    return _top_k_credit(c, *_flow_scores(c, "flow-bottom"), largest=False)


# Continuous variants (Table 7). The paper gives no formulas; ours share one map so that they differ
# only in the transform g >= 0 of the flow: the hard rule's extra credit budget, (gamma - 1) * ratio
# per response token on average, is spread over the response tokens in proportion to g:
#     w_t = 1 + (gamma - 1) * ratio * g_t / mean_response(g)
# so w >= 1 (for gamma >= 1), mean_response(w) = 1 + ratio * (gamma - 1) like eq. (6)'s, and g = the
# top-k indicator gives eq. (6) back exactly. If g is 0 on every response token, every one gets the
# mean weight.

def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over mask per row: [B, 1]."""
    return (x * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)


def _zscore(x: Tensor, mask: Tensor) -> Tensor:
    """(x - mean) / population std over mask per row; 0 where the std is 0."""
    mean = _masked_mean(x, mask)
    std = _masked_mean((x - mean) ** 2, mask).sqrt()
    return torch.where(std > 0, (x - mean) / std.clamp(min=1e-300), 0.0)


def _spread(c: CreditInputs, g: Tensor, candidates: Tensor) -> Tensor:
    """w = 1 + (gamma - 1) * ratio * g / mean_candidates(g) on candidates, 1 elsewhere."""
    mean = _masked_mean(g, candidates)                                 # [B, 1]
    share = torch.where(mean > 0, g / mean.clamp(min=1e-300), 1.0)     # [B, T]
    return torch.where(candidates, 1 + (c.gamma - 1) * c.ratio * share, 1.0).float()


def _flow_raw(c: CreditInputs) -> Tensor:
    """Raw flow: g = tau. Linear in throughput, so its heavy tail goes straight into the weights."""
    tau, cand = _flow_scores(c, "flow-raw")
    return _spread(c, tau, cand)


def _flow_log1p(c: CreditInputs) -> Tensor:
    """Log1p: g = log(1 + tau / mean_response(tau)); scale-free and logarithmic in the outliers."""
    tau, cand = _flow_scores(c, "flow-log1p")
    mean = _masked_mean(tau, cand)
    return _spread(c, torch.log1p(tau / mean.clamp(min=1e-300)), cand)


def _flow_sigmoid(c: CreditInputs) -> Tensor:
    """Sigmoid: g = sigmoid(z), z the z-score of tau over the response; bounded, so one outlier's
    share is at most 1 / mean(g) of the budget."""
    tau, cand = _flow_scores(c, "flow-sigmoid")
    return _spread(c, torch.sigmoid(_zscore(tau, cand)), cand)


def _flow_mad(c: CreditInputs) -> Tensor:
    """MAD: g = min(tau, median + 3 * 1.4826 * MAD), tau winsorised at three robust standard
    deviations (median absolute deviation) above the median over the response; linear below the
    cap."""
    tau, cand = _flow_scores(c, "flow-mad")
    nan = torch.full_like(tau, float("nan"))
    med = torch.where(cand, tau, nan).nanmedian(dim=-1, keepdim=True).values          # [B, 1]
    mad = torch.where(cand, (tau - med).abs(), nan).nanmedian(dim=-1, keepdim=True).values
    return _spread(c, torch.minimum(tau, med + 3 * 1.4826 * mad), cand)


def _flow_tanh(c: CreditInputs) -> Tensor:
    """Tanh+Z-score: w = 1 + (gamma - 1) * tanh(z), z the z-score of tau over the response. The one
    signed variant: above-average flow is pushed towards gamma, below-average flow towards
    2 - gamma; w is in (2 - gamma, gamma) and a token with exactly the mean flow keeps 1."""
    tau, cand = _flow_scores(c, "flow-tanh")
    return torch.where(cand, 1 + (c.gamma - 1) * torch.tanh(_zscore(tau, cand)), 1.0).float()


def _flow_mass(mass: float, c: CreditInputs) -> Tensor:
    """Soft cumulative-flow-mass threshold (Table 7): gamma on the fewest highest-throughput
    response tokens whose throughput sums to at least `mass` of the response's total; 1 elsewhere.
    The number selected varies per sequence with how concentrated the flow is (a response with zero
    total flow selects none)."""
    tau, cand = _flow_scores(c, f"flow-mass{round(mass * 100)}")
    t = tau.masked_fill(~cand, 0.0)                                    # [B, T]
    sorted_t, order = t.sort(dim=-1, descending=True, stable=True)     # [B, T]
    before = sorted_t.cumsum(-1) - sorted_t                            # mass of the strictly larger
    total = sorted_t.sum(-1, keepdim=True)                             # [B, 1]
    picked = (before < mass * total) & (sorted_t > 0)                  # still short of the mass
    selected = torch.zeros_like(cand).scatter(-1, order, picked)
    return flow.credit_weights(selected & cand, c.gamma)


# --------------------------------------------------------------------------------------------------
# Table 11b: the top-k rule inside one token class (structural delimiters or semantic content)
# --------------------------------------------------------------------------------------------------

STRUCTURAL_WORDS = frozenset({"boxed", "fbox", "frac", "cdot", "times", "div", "left", "right",
                              "text"})


def token_class(token: str) -> str:
    """"structural" or "content" (Table 11b's split of delimiters from semantic tokens).

    structural: whitespace and newlines, punctuation and operators and brackets (Unicode
    categories P* and S*: = + - * / ( ) { } . , ; \\ $ ...), special tokens like <|im_end|>, and
    LaTeX formatting commands (\\boxed, "boxed", \\frac, ...: STRUCTURAL_WORDS). content:
    everything holding a letter or a digit otherwise: numbers, words, variable names, and the
    byte fragments of a multi-byte character (decoded alone they read U+FFFD, a symbol).
    """
    s = token.strip()
    if not s or (s.startswith("<|") and s.endswith("|>")):
        return "structural"
    if "\ufffd" in s:
        return "content"
    if s.lstrip("\\").lower() in STRUCTURAL_WORDS:
        return "structural"
    if all(unicodedata.category(ch)[0] in "PSZ" for ch in s):
        return "structural"
    return "content"


@lru_cache(maxsize=8)
def structural_vocab(tokenizer) -> Tensor:
    """bool [V]: token_class(decode([id])) == "structural" for every id of the tokenizer (special
    tokens kept), computed once per tokenizer, so that a batch's classes are one lookup."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return torch.tensor([token_class(t) == "structural" for t in texts])


def _flow_in_class(structural: bool, c: CreditInputs) -> Tensor:
    """Table 11b: FlowTracer's rule restricted to one token class. The top `ratio` of the
    structural (or of the content) response tokens by throughput get gamma; every other token,
    the other class included, keeps 1. Ids the tokenizer does not know count as structural (they
    decode to nothing)."""
    strategy = "flow-structural" if structural else "flow-content"
    if c.tokenizer is None:
        raise ValueError(f"credit strategy {strategy!r} needs tokenizer= (token classes)")
    ids = c.rollout.input_ids                                          # [B, T]
    table = structural_vocab(c.tokenizer).to(ids.device)               # [V]
    known = ids < len(table)
    is_structural = torch.where(known, table[ids.clamp(max=len(table) - 1)], True)  # [B, T]
    tau, cand = _flow_scores(c, strategy)
    in_class = is_structural if structural else ~is_structural
    return _top_k_credit(c, tau, cand & in_class.to(cand.device))



# --------------------------------------------------------------------------------------------------
# Positive controls of the chain testbed (docs/testbed.md): credit on the tokens known to decide
# --------------------------------------------------------------------------------------------------

def deciding_tokens(rollout: Any, tokenizer: Any) -> Tensor:
    """[B, T] bool: the response tokens that hold a deciding character of the chain task
    (tasks.chain_decisions(text) of each response; none in a text without a chain header).

    A character maps to the sampled token that covers it (rollout._char_span_to_tokens: token j
    covers [len(decode(ids[:j])), len(decode(ids[:j + 1])))), not to a re-encoding of the text."""
    import rollout as sampling  # here, not above: it loads transformers, only the controls need it
    import tasks

    mask = torch.zeros_like(rollout.response_mask)                      # [B, T]
    for i, text in enumerate(rollout.texts):
        positions = rollout.response_mask[i].nonzero().squeeze(1)       # [R_i]
        ids = rollout.input_ids[i, positions].tolist()
        for char in (c for d in tasks.chain_decisions(text) for c in d.chars):
            a, b = sampling._char_span_to_tokens(tokenizer, ids, char, char + 1)
            mask[i, positions[a:b]] = True
    return mask


def _oracle(fill: bool, c: CreditInputs) -> Tensor:
    """The testbed's positive controls: gamma on the deciding tokens of the chain task.

    oracle (fill=True): the deciding tokens first, the rest of the `ratio` of the response tokens
    drawn at random (`generator`), so the extra weight is eq. (6)'s, as for random and entropy
    (more deciding tokens than round(ratio * n): a random subset of them). oracle-only (fill=False):
    gamma on the deciding tokens alone, 1 on every other token."""
    name = "oracle" if fill else "oracle-only"
    if c.tokenizer is None:
        raise ValueError(f"credit strategy {name!r} needs tokenizer= (deciding characters -> "
                         "tokens)")
    if getattr(c.rollout, "texts", None) is None:
        raise ValueError(f"credit strategy {name!r} needs rollout.texts (the decoded responses)")
    mask = c.rollout.response_mask                                      # [B, T]
    decide = deciding_tokens(c.rollout, c.tokenizer) & mask             # [B, T]
    if not fill:
        return flow.credit_weights(decide, c.gamma)
    noise = torch.rand(mask.shape, generator=c.generator).to(mask.device)   # [B, T] in [0, 1)
    return _top_k_credit(c, decide.float() + noise, mask)  # deciding tokens score >= 1: first


# --------------------------------------------------------------------------------------------------
# the baselines and ablations by name (credit.CREDIT_STRATEGIES adds FlowTracer's `flow`)
# --------------------------------------------------------------------------------------------------

BASELINES: dict[str, Callable[[CreditInputs], Tensor]] = {
    "uniform": _uniform,
    "flow-bottom": _flow_bottom,
    "random": _random,
    "entropy": _entropy,
    "attention": partial(_attention, "attention"),
    "attention-mean": partial(_attention, "attention-mean"),
    "gradient": _gradient,
    "correlation": _correlation,
    "flow-raw": _flow_raw,
    "flow-tanh": _flow_tanh,
    "flow-sigmoid": _flow_sigmoid,
    "flow-mad": _flow_mad,
    "flow-log1p": _flow_log1p,
    **{f"flow-mass{p}": partial(_flow_mass, p / 100) for p in (20, 40, 60, 80)},
    "flow-structural": partial(_flow_in_class, True),
    "flow-content": partial(_flow_in_class, False),
    "oracle": partial(_oracle, True),
    "oracle-only": partial(_oracle, False),
}
ATTENTION_BASELINES = frozenset(_ATTENTION_REDUCE)  # besides the flow ones: they read rollout.attn

