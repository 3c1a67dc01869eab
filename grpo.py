"""GRPO with token-level credit: the gamma-weighted clipped surrogate of eq. (5)/(11).

Three pieces:
  group_advantages  eq. (10): reward standardised within each prompt group, one advantage per sequence.
  policy_loss       -J of eq. (5)/(11): clipped (and dual-clipped) ratio * advantage, times the token credit
                    gamma_{i,t}, averaged over each sequence's response tokens, then over sequences.
  token_logprobs    log pi(y_t | y_<t) of a causal LM, computed chunk by chunk over the sequence so that
                    neither the [B, T, V] logits nor their float32 log-softmax are ever materialised.

Alignment convention: token_logprobs returns [B, T-1], column t = log-prob of token t+1. Everything that
policy_loss multiplies with it (gamma, response_mask) must be sliced the same way: `x[:, 1:]`.

The credit strategies that produce gamma [B, T] from a rollout live at the bottom of this file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

import flow


# --------------------------------------------------------------------------------------------------
# eq. (10): group-relative advantages
# --------------------------------------------------------------------------------------------------

def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """eq. (10): A_i = (r_i - mean(r_group)) / (std(r_group) + eps), one advantage per sequence.

    rewards: [N] with N = n_prompts * group_size, grouped as in rollout.generate (rows i*G .. i*G+G-1
    belong to prompt i). Returns float32 [N].

    std is the POPULATION standard deviation (divide by G, not G-1): eq. (10) writes std({r_j}), the
    spread of the group's own rewards, and with it every non-constant group has mean(A^2) = 1 exactly,
    whatever G. (TRL uses the sample std; for G = 8 that only shrinks A by sqrt(7/8), about 6.5%.)
    A group whose rewards are all equal carries no learning signal and gets exactly 0 (tested directly, not
    through the numerator, which rounding can leave at 1e-8 with an equally tiny std).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide the number of rewards {rewards.numel()}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf")
    r = rewards.float().view(-1, group_size)                        # [P, G]
    centred = r - r.mean(dim=1, keepdim=True)                        # [P, G]
    std = r.std(dim=1, unbiased=False, keepdim=True)                 # [P, 1] population std
    constant = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)   # [P, 1] float mean may be off by an ulp
    return torch.where(constant, 0.0, centred / (std + eps)).view(-1)       # [N]


# --------------------------------------------------------------------------------------------------
# eq. (5)/(11): the gamma-weighted clipped surrogate
# --------------------------------------------------------------------------------------------------

def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    gamma: Tensor,
    response_mask: Tensor,
    clip_eps: float = 0.2,
    dual_clip: float | None = 3.0,
    adv_clip: float | None = 2.0,
    *,
    aggregation: str = "seq-mean",
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """-J(theta) of eq. (5)/(11); returns (scalar loss to minimise, statistics).

    Per response token (i, t), with r = exp(logp - old_logp) and A = clamp(A_i, -adv_clip, adv_clip):
        j_{i,t} = gamma_{i,t} * min(r * A, clip(r, 1 - clip_eps, 1 + clip_eps) * A)
    Dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL"; ROLL, which the paper
    trains with, uses it): for A < 0 the min is floored at dual_clip * A, so a token whose ratio has run away
    (r > dual_clip) cannot produce an unbounded negative objective. 3.0 is the constant of that paper and the
    usual default of RL libraries (verl's clip_ratio_c, ROLL's dual-clip loss); None switches it off.
    The advantage is clipped before gamma multiplies it, so gamma = 1.5 on a clipped A = 2 gives 3.
    Since gamma > 0, gamma * min(rA, clip(r)A) = min(r * gamma A, clip(r) * gamma A): weighting the term, as in
    eq. (5), and scaling the advantage, as the paper's appendix C.2 describes, are the same thing.

    aggregation:
        "seq-mean"   eq. (5): (1/G) sum_i (1/N_i) sum_t j_{i,t}; a row with no response token adds 0.
        "token-mean" DAPO: sum_{i,t} j_{i,t} / sum_i N_i.
    Optional KL (off by default, as in the paper): with ref_logp and kl_coef > 0, kl_coef * k3 is subtracted
    per token, k3 = exp(ref - logp) - (ref - logp) - 1 >= 0 (Schulman's unbiased, positive estimator).

    Shapes: logp, old_logp, gamma, response_mask, ref_logp, entropy: [B, L] token-aligned (L = T-1 when
    logp comes from token_logprobs: pass gamma[:, 1:] and response_mask[:, 1:]); advantages: [B].
    Positions outside response_mask contribute nothing, whatever logp holds there.
    """
    if aggregation not in ("seq-mean", "token-mean"):
        raise ValueError(f"aggregation must be 'seq-mean' or 'token-mean', got {aggregation!r}")
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, L], got shape {tuple(logp.shape)}")
    named = {"old_logp": old_logp, "gamma": gamma, "response_mask": response_mask}
    if ref_logp is not None:
        named["ref_logp"] = ref_logp
    if entropy is not None:
        named["entropy"] = entropy
    for name, x in named.items():
        if x.shape != logp.shape:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)} but logp has {tuple(logp.shape)}; token_logprobs returns "
                "[B, T-1], so slice [B, T] masks and gamma with [:, 1:]")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [B] = [{logp.shape[0]}], got shape {tuple(advantages.shape)}")
    if not 0 < clip_eps < 1:
        raise ValueError(f"clip_eps must be in (0, 1), got {clip_eps}")
    if dual_clip is not None and dual_clip <= 1:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    if kl_coef and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp")

    mask = response_mask.bool()                                       # [B, L]
    m = mask.float()
    n_tok = m.sum(dim=1)                                              # [B] N_i
    if not torch.isfinite(advantages).all() or not torch.isfinite(gamma[mask]).all():
        raise ValueError("advantages or gamma contain NaN or inf")

    adv = advantages.float()
    if adv_clip is not None:
        adv = adv.clamp(-adv_clip, adv_clip)
    adv = adv[:, None]                                                # [B, 1]
    # Zero the log-ratio outside the response before exp, so garbage there can't become inf * 0 = NaN.
    log_ratio = torch.where(mask, logp.float() - old_logp.float(), torch.zeros_like(m))
    ratio = log_ratio.exp()                                           # [B, L]
    surr = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)   # [B, L]
    if dual_clip is not None:
        dual = (adv < 0) & (surr < dual_clip * adv)                   # [B, L] floor active
        surr = torch.where(dual, dual_clip * adv.expand_as(surr), surr)
    else:
        dual = torch.zeros_like(mask)
    per_token = gamma.float() * surr                                  # [B, L]  j_{i,t}
    kl = None
    if ref_logp is not None:
        d = torch.where(mask, ref_logp.float() - logp.float(), torch.zeros_like(m))
        kl = d.exp() - d - 1                                          # [B, L] k3 >= 0
        per_token = per_token - kl_coef * kl
    per_token = torch.where(mask, per_token, torch.zeros_like(m))    # padding contributes nothing

    if aggregation == "seq-mean":
        objective = (per_token.sum(dim=1) / n_tok.clamp(min=1)).mean()
    else:
        objective = per_token.sum() / n_tok.sum().clamp(min=1)

    with torch.no_grad():
        total = n_tok.sum().clamp(min=1)
        # clip active (zero gradient): A > 0 with r above 1 + eps, or A < 0 with r below 1 - eps
        clipped = ((adv > 0) & (ratio > 1 + clip_eps)) | ((adv < 0) & (ratio < 1 - clip_eps))
        stats = {
            "clip_frac": float((clipped & mask).sum() / total),
            "dual_clip_frac": float((dual & mask).sum() / total),
            "ratio_mean": float((ratio * m).sum() / total),
            "ratio_max": float(ratio[mask].max()) if mask.any() else 1.0,
            "gamma_mean": float(gamma[mask].float().sum() / total),
        }
        if kl is not None:
            stats["kl"] = float((kl * m).sum() / total)
        if entropy is not None:
            stats["entropy"] = float(entropy[mask].float().sum() / total)
    return -objective, stats


# --------------------------------------------------------------------------------------------------
# per-token log-probabilities, chunked over the sequence
# --------------------------------------------------------------------------------------------------

def _chunk_logprobs(hidden: Tensor, targets: Tensor, lm_head: torch.nn.Module, temperature: float,
                    with_entropy: bool) -> tuple[Tensor, Tensor]:
    """log p(target) and entropy for one chunk: hidden [B, C, H], targets [B, C] -> ([B, C], [B, C]).

    log_softmax + gather rather than logsumexp + gather: same values, but log_softmax has one fused backward
    kernel, while logsumexp's backward plus gather's scatter build several [B, C, V] temporaries (measured on
    CPU, V = 65536, one 512-row chunk: 0.9 GiB vs 1.4 GiB peak in forward + backward).
    """
    logits = lm_head(hidden).float()                                  # [B, C, V] only this chunk
    if temperature != 1.0:
        logits = logits / temperature
    logsm = logits.log_softmax(dim=-1)                                # [B, C, V]
    logp = logsm.gather(-1, targets[..., None]).squeeze(-1)           # [B, C]
    if not with_entropy:
        return logp, torch.zeros_like(logp)
    return logp, -(logsm.exp() * logsm).sum(dim=-1)                   # H = -sum p log p


def token_logprobs(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    temperature: float = 1.0,
    *,
    chunk_size: int = 128,
    return_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """log pi(x_{t+1} | x_<=t) / temperature-scaled, for a Hugging Face causal LM: [B, T-1] float32.

    Runs the decoder once, then applies the LM head chunk_size positions at a time (logits -> log_softmax ->
    gather per chunk), so only [B, chunk, V] float32 blocks exist at once instead of the [B, T, V] logits
    and their float32 log-softmax copy. Under autograd each chunk is checkpointed (recomputed in backward),
    so the backward pass does not keep every chunk's logits either.
    With return_entropy, also the entropy of the (tempered) next-token distribution at each position,
    [B, T-1], computed in the same pass; column t is the entropy of the distribution token t+1 was drawn from.
    Position ids follow the attention mask (cumsum - 1), as in generate(), so left padding is handled.
    Values at padded positions are finite but meaningless: mask them.
    """
    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                         "must both be [B, T]")
    if input_ids.shape[1] < 2:
        raise ValueError("need at least 2 positions to score a next token")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if getattr(model.config, "final_logit_softcapping", None):
        raise ValueError("models with final logit softcapping are not supported (the LM head is applied directly)")

    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)   # [B, T]
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids).last_hidden_state     # [B, T, H]
    hidden, targets = hidden[:, :-1], input_ids[:, 1:]                 # [B, T-1, H], [B, T-1]
    lm_head = model.get_output_embeddings()
    logps, ents = [], []
    for s in range(0, targets.shape[1], chunk_size):
        args = (hidden[:, s:s + chunk_size], targets[:, s:s + chunk_size], lm_head, temperature, return_entropy)
        if torch.is_grad_enabled():
            lp, ent = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(*args)
        logps.append(lp)
        ents.append(ent)
    logp = torch.cat(logps, dim=1)                                     # [B, T-1]
    return (logp, torch.cat(ents, dim=1)) if return_entropy else logp


# --------------------------------------------------------------------------------------------------
# credit strategies: gamma [B, T] from a rollout (eq. (6) and the paper's baselines / ablations)
# --------------------------------------------------------------------------------------------------

@dataclass
class CreditInputs:
    """What a credit strategy may read. rollout: rollout.Rollout (or anything with its fields)."""

    rollout: Any
    ratio: float
    gamma: float
    entropy: Tensor | None
    model: torch.nn.Module | None
    generator: torch.Generator | None


def _top_k_credit(c: CreditInputs, scores: Tensor, candidates: Tensor, largest: bool = True) -> Tensor:
    """eq. (6): gamma on the top (or bottom) ratio of candidates by score, 1 elsewhere."""
    return flow.credit_weights(flow.top_k_mask(scores, candidates, c.ratio, largest), c.gamma)


def _need(c: CreditInputs, field: str, strategy: str) -> Tensor:
    value = getattr(c.rollout, field, None)
    if value is None:
        raise ValueError(f"credit strategy {strategy!r} needs rollout.{field}"
                         + (" (generate with capture=True)" if field == "attn" else ""))
    return value


def _flow_scores(c: CreditInputs, strategy: str) -> tuple[Tensor, Tensor]:
    """Throughput tau [B, T] (float64) of section 3.1 and the candidates [B, T] it ranks.

    Candidates are the response tokens of sequences that have both a prompt and an answer region. A
    response without an answer span (no \\boxed{...}, truncated) has no flow target: it gets no candidates,
    so every strategy below leaves its gamma at 1 (plain GRPO for that sequence).
    """
    r = c.rollout
    attn = _need(c, "attn", strategy)                                  # [B, T, T]
    ok = r.prompt_mask.any(-1) & r.answer_mask.any(-1)                 # [B] flow is defined
    tau = torch.zeros(r.response_mask.shape, dtype=torch.float64, device=attn.device)   # [B, T]
    if ok.all():                                                       # the usual case: no [B, T, T] row copy
        tau = flow.throughput(flow.influence_graph(attn), r.prompt_mask, r.answer_mask)
    elif ok.any():
        W = flow.influence_graph(attn[ok])                             # [b, T, T] eq. (1)
        tau[ok] = flow.throughput(W, r.prompt_mask[ok], r.answer_mask[ok])
    return tau, r.response_mask & ok[:, None]


def _uniform(c: CreditInputs) -> Tensor:
    """Plain GRPO: gamma = 1 everywhere."""
    return torch.ones(c.rollout.response_mask.shape)


def _flow(c: CreditInputs) -> Tensor:
    """FlowTracer, eq. (6): gamma on the top `ratio` of response tokens by flow throughput tau."""
    return _top_k_credit(c, *_flow_scores(c, "flow"))


def _flow_bottom(c: CreditInputs) -> Tensor:
    """Table 5's Bottom-k ablation: gamma on the `ratio` of response tokens with the LOWEST throughput."""
    return _top_k_credit(c, *_flow_scores(c, "flow-bottom"), largest=False)


def _random(c: CreditInputs) -> Tensor:
    """Random baseline: gamma on a uniformly random `ratio` of the response tokens (use `generator`)."""
    mask = c.rollout.response_mask
    scores = torch.rand(mask.shape, generator=c.generator).to(mask.device)   # [B, T]
    return _top_k_credit(c, scores, mask)


def _entropy(c: CreditInputs) -> Tensor:
    """High-entropy baseline (Wang et al. 2025b): gamma on the `ratio` of response tokens drawn from the
    most uncertain next-token distributions. entropy: [B, T-1] as token_logprobs(..., return_entropy=True)
    returns it (column t is the distribution of token t+1), shifted here to token positions."""
    mask = c.rollout.response_mask
    if c.entropy is None:
        raise ValueError("credit strategy 'entropy' needs entropy= (token_logprobs(..., return_entropy=True))")
    if c.entropy.shape != (mask.shape[0], mask.shape[1] - 1):
        raise ValueError(f"entropy must be [B, T-1] = {(mask.shape[0], mask.shape[1] - 1)} as token_logprobs "
                         f"returns it, got {tuple(c.entropy.shape)}")
    scores = F.pad(c.entropy.detach().float(), (1, 0))                 # [B, T] entropy of the dist. of token t
    return _top_k_credit(c, scores.to(mask.device), mask)


def attention_received(attn: Tensor, response_mask: Tensor) -> Tensor:
    """Mean attention a token receives from the LATER response tokens: [B, T].

    score(k) = sum_{q > k, q in response} attn[q, k] / #{q > k in response}   (0 if no such q)
    This is the point-wise attention baseline (Li et al. 2025d, the paper's "maximum attention scores as a
    proxy for importance": the tokens with the largest attention received are selected). The mean over
    readers, rather than the column sum, keeps early tokens from winning only because more tokens follow them.
    """
    readers = response_mask.to(attn.dtype)                            # [B, T] query rows that count
    received = (attn * readers[:, :, None]).tril(-1).sum(dim=1)        # [B, T] sum over rows q > k
    later = readers.flip(-1).cumsum(-1).flip(-1) - readers             # [B, T] #{q > k in response}
    return received / later.clamp(min=1)


def _attention(c: CreditInputs) -> Tensor:
    """Attention baseline: gamma on the `ratio` of response tokens with the largest attention_received."""
    mask = c.rollout.response_mask
    return _top_k_credit(c, attention_received(_need(c, "attn", "attention"), mask), mask)


def gradient_saliency(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor,
                      response_mask: Tensor) -> Tensor:
    """|| d log pi(response | prompt) / d e_t ||_2 for every input embedding e_t: [B, T] float32.

    The first-order gradient magnitude of the gradient baseline (Green et al. 2025): how strongly the
    sequence's own log-likelihood reacts to each token's input embedding (input-gradient saliency). One
    forward and one backward pass; parameter .grad fields are not touched.
    """
    captured = []

    def hook(module, args, out):                                        # make the embeddings a leaf
        captured.append(out.detach().requires_grad_())
        return captured[-1]

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logp = token_logprobs(model, input_ids, attention_mask)     # [B, T-1]
            total = (logp * response_mask[:, 1:]).sum()
            (grad,) = torch.autograd.grad(total, captured[0])            # [B, T, H]
    finally:
        handle.remove()
    return grad.float().norm(dim=-1)


def _gradient(c: CreditInputs) -> Tensor:
    """Gradient baseline: gamma on the `ratio` of response tokens with the largest gradient_saliency."""
    if c.model is None:
        raise ValueError("credit strategy 'gradient' needs model=")
    r = c.rollout
    scores = gradient_saliency(c.model, r.input_ids, r.attention_mask, r.response_mask)
    return _top_k_credit(c, scores, r.response_mask)


# Continuous variants (Table 7). The paper gives no formulas; ours share one map so that they differ only
# in the transform g >= 0 of the flow: the hard rule's extra credit budget, (gamma - 1) * ratio per
# response token on average, is spread over the response tokens in proportion to g:
#     w_t = 1 + (gamma - 1) * ratio * g_t / mean_response(g)
# so w >= 1 (for gamma >= 1), mean_response(w) = 1 + ratio * (gamma - 1) like eq. (6)'s, and g = the top-k
# indicator gives eq. (6) back exactly. If g is 0 on every response token, every one gets the mean weight.

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
    """Sigmoid: g = sigmoid(z), z the z-score of tau over the response; bounded, so one outlier's share
    is at most 1 / mean(g) of the budget."""
    tau, cand = _flow_scores(c, "flow-sigmoid")
    return _spread(c, torch.sigmoid(_zscore(tau, cand)), cand)


def _flow_mad(c: CreditInputs) -> Tensor:
    """MAD: g = min(tau, median + 3 * 1.4826 * MAD), tau winsorised at three robust standard deviations
    (median absolute deviation) above the median over the response; linear below the cap."""
    tau, cand = _flow_scores(c, "flow-mad")
    nan = torch.full_like(tau, float("nan"))
    med = torch.where(cand, tau, nan).nanmedian(dim=-1, keepdim=True).values               # [B, 1]
    mad = torch.where(cand, (tau - med).abs(), nan).nanmedian(dim=-1, keepdim=True).values
    return _spread(c, torch.minimum(tau, med + 3 * 1.4826 * mad), cand)


def _flow_tanh(c: CreditInputs) -> Tensor:
    """Tanh+Z-score: w = 1 + (gamma - 1) * tanh(z), z the z-score of tau over the response. The one signed
    variant: above-average flow is pushed towards gamma, below-average flow towards 2 - gamma; w is in
    (2 - gamma, gamma) and a token with exactly the mean flow keeps 1."""
    tau, cand = _flow_scores(c, "flow-tanh")
    return torch.where(cand, 1 + (c.gamma - 1) * torch.tanh(_zscore(tau, cand)), 1.0).float()


def _flow_mass(mass: float, c: CreditInputs) -> Tensor:
    """Soft cumulative-flow-mass threshold (Table 7): gamma on the fewest highest-throughput response tokens
    whose throughput sums to at least `mass` of the response's total; 1 elsewhere. The number selected varies
    per sequence with how concentrated the flow is (a response with zero total flow selects none)."""
    tau, cand = _flow_scores(c, f"flow-mass{round(mass * 100)}")
    t = tau.masked_fill(~cand, 0.0)                                    # [B, T]
    sorted_t, order = t.sort(dim=-1, descending=True, stable=True)     # [B, T]
    before = sorted_t.cumsum(-1) - sorted_t                            # mass of the strictly larger ones
    total = sorted_t.sum(-1, keepdim=True)                             # [B, 1]
    picked = (before < mass * total) & (sorted_t > 0)                  # still short of the threshold
    selected = torch.zeros_like(cand).scatter(-1, order, picked)
    return flow.credit_weights(selected & cand, c.gamma)


CREDIT_STRATEGIES: dict[str, Callable[[CreditInputs], Tensor]] = {
    "uniform": _uniform,
    "flow": _flow,
    "flow-bottom": _flow_bottom,
    "random": _random,
    "entropy": _entropy,
    "attention": _attention,
    "gradient": _gradient,
    "flow-raw": _flow_raw,
    "flow-tanh": _flow_tanh,
    "flow-sigmoid": _flow_sigmoid,
    "flow-mad": _flow_mad,
    "flow-log1p": _flow_log1p,
    **{f"flow-mass{p}": partial(_flow_mass, p / 100) for p in (20, 40, 60, 80)},
}


# The strategies that read rollout.attn: rollout.generate must capture the attention for them.
ATTENTION_STRATEGIES = frozenset({"attention"} | {s for s in CREDIT_STRATEGIES if s.startswith("flow")})


def credit_gamma(
    strategy: str,
    rollout: Any,
    *,
    ratio: float = 0.4,
    gamma: float = 1.5,
    entropy: Tensor | None = None,
    model: torch.nn.Module | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """gamma_{i,t} of eq. (5)/(6) for every token of a rollout: float32 [B, T], 1 outside the response.

    strategy: a key of CREDIT_STRATEGIES. ratio (0.4) and gamma (1.5) are the paper's defaults. 'entropy'
    needs entropy= ([B, T-1] from token_logprobs), 'gradient' needs model=, 'random' takes generator=,
    the flow and attention strategies need rollout.attn. Pass gamma[:, 1:] to policy_loss.
    """
    if strategy not in CREDIT_STRATEGIES:
        raise ValueError(f"unknown credit strategy {strategy!r}; valid: {', '.join(CREDIT_STRATEGIES)}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite positive number, got {gamma}")
    mask = rollout.response_mask
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"rollout.response_mask must be bool [B, T], got {mask.dtype} {tuple(mask.shape)}")
    out = CREDIT_STRATEGIES[strategy](CreditInputs(rollout, ratio, gamma, entropy, model, generator))
    return out.to(device=mask.device, dtype=torch.float32)
