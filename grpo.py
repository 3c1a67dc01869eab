"""GRPO with token-level credit: the gamma-weighted clipped surrogate of eq. (5)/(11).

Three pieces:
  group_advantages  eq. (10): reward standardised within each prompt group, one advantage per
                    sequence.
  policy_loss       -J of eq. (5)/(11): clipped (and dual-clipped) r * advantage, times the token
                    credit gamma_{i,t}, averaged over each sequence's response tokens, then over
                    sequences.
  token_logprobs    log pi(y_t | y_<t) of a causal LM, computed chunk by chunk over the sequence so
                    that neither the [B, T, V] logits nor their float32 log-softmax are ever
                    materialised.

Alignment: token_logprobs returns [B, T-1], column t = log-prob of token t+1; `align` slices every
[B, T] per-token tensor (gamma, response_mask) the same way. `position_ids` is the one place where
positions are counted (over non-pad tokens, as HF generate counts them).

The token credit gamma [B, T] comes from credit.py (eq. (6): flow.flow_credit; baselines.py).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from config import ADV_CLIP, CLIP_EPS, DUAL_CLIP
from guards import check_logprob_inputs, check_loss_inputs


# --------------------------------------------------------------------------------------------------
# eq. (10): group-relative advantages
# --------------------------------------------------------------------------------------------------

def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """eq. (10): A_i = (r_i - mean(r_group)) / (std(r_group) + eps), one advantage per sequence.

    rewards: [N] with N = n_prompts * group_size, grouped as in rollout.generate (rows
    i*G .. i*G+G-1 belong to prompt i). Returns float32 [N].

    std is the POPULATION standard deviation (divide by G, not G-1): eq. (10) writes std({r_j}), the
    spread of the group's own rewards, and with it every non-constant group has mean(A^2) = 1
    exactly, whatever G. (TRL uses the sample std; for G = 8 that only shrinks A by sqrt(7/8), about
    6.5%.) A group whose rewards are all equal carries no learning signal and gets exactly 0: found
    by comparing the group's max and min, not through the numerator or std == 0 (in float32 the mean
    of seven rewards of 0.1 is not 0.1, so r - mean is ~1e-8 and the eps alone would give -0.007).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide the number of rewards "
                         f"{rewards.numel()}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf")
    r = rewards.float().view(-1, group_size)                        # [P, G]
    centred = r - r.mean(dim=1, keepdim=True)                        # [P, G]
    std = r.std(dim=1, unbiased=False, keepdim=True)                 # [P, 1] population std
    # [P, 1]; compared directly because the float mean may be off by an ulp
    constant = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)
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
    clip_eps: float = CLIP_EPS,
    dual_clip: float | None = DUAL_CLIP,
    adv_clip: float | None = ADV_CLIP,
    *,
    aggregation: str = "seq-mean",
) -> tuple[Tensor, dict[str, float]]:
    """-J(theta) of eq. (5)/(11); returns (scalar loss to minimise, statistics).

    Per response token (i, t), with r_{i,t} = exp(logp - old_logp) and A_i the advantage clamped to
    [-adv_clip, adv_clip]:
        j_{i,t} = gamma_{i,t} * min(r_{i,t} A_i, clip(r_{i,t}, 1 - clip_eps, 1 + clip_eps) A_i)
    Dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL"): for A < 0
    the min is floored at dual_clip * A, so a token whose r has run away (r > dual_clip) cannot
    produce an unbounded negative objective; None switches it off. The constant differs by
    library: ROLL, which the paper trains with ("a dual-clip loss strategy", App. C.3, constant
    not given), floors at (1 + 2 * pg_clip) * A, i.e. 1.4 at pg_clip 0.2 and 1.2 at the 0.1 of
    most of its example configs (roll/pipeline/rlvr/actor_worker.py, dual_clip_loss); verl's
    clip_ratio_c defaults to 3.0 (Ye et al.'s value); TRL has no dual clip, its closest option
    `delta` (two-sided GRPO, INTELLECT-2) caps r itself and is off by default. 3.0 is the default
    here because it is the published constant; in train.py it acts only with --mini-batches or
    --ppo-epochs above 1 (one update per rollout makes r = 1, where no clip is active). Pass
    --dual-clip 1 + 2 * clip_eps to match ROLL.
    The advantage is clipped before gamma multiplies it, so gamma = 1.5 on a clipped A = 2 gives 3.
    Since gamma > 0, gamma * min(rA, clip(r)A) = min(r * gamma A, clip(r) * gamma A): weighting the
    term, as in eq. (5), and scaling the advantage, as the paper's appendix C.2 describes, are the
    same thing.

    aggregation:
        "seq-mean"   eq. (5): (1/B) sum_i (1/N_i) sum_t j_{i,t} over the B rows of the batch (the
                     paper's 1/G, for one group of G); an empty row adds 0.
        "token-mean" DAPO: sum_{i,t} j_{i,t} / sum_i N_i.
    No KL term: the paper trains without one.

    Shapes: logp, old_logp, gamma, response_mask: [B, L] token-aligned (L = T-1 when logp comes from
    token_logprobs: pass align(gamma) and align(response_mask)); advantages: [B].
    Positions outside response_mask contribute nothing, whatever logp holds there.
    """
    check_loss_inputs(logp, old_logp, advantages, gamma, response_mask, clip_eps, dual_clip,
                      aggregation)
    mask = response_mask.bool()                                       # [B, L]
    m = mask.float()
    n_tok = m.sum(dim=1)                                              # [B] N_i

    adv = advantages.float()
    if adv_clip is not None:
        adv = adv.clamp(-adv_clip, adv_clip)
    adv = adv[:, None]                                                # [B, 1] A_i
    # r_{i,t} = pi_theta / pi_old. The log is zeroed outside the response before exp, so garbage
    # there cannot become inf * 0 = NaN.
    log_r = torch.where(mask, logp.float() - old_logp.float(), torch.zeros_like(m))
    r = log_r.exp()                                                   # [B, L] r_{i,t}
    surr = torch.minimum(r * adv, r.clamp(1 - clip_eps, 1 + clip_eps) * adv)   # [B, L] min(., clip)
    if dual_clip is not None:
        dual = (adv < 0) & (surr < dual_clip * adv)                   # [B, L] floor active
        surr = torch.where(dual, dual_clip * adv.expand_as(surr), surr)
    else:
        dual = torch.zeros_like(mask)
    per_token = gamma.float() * surr                                  # [B, L] j_{i,t}
    per_token = torch.where(mask, per_token, torch.zeros_like(m))    # padding contributes nothing

    if aggregation == "seq-mean":
        objective = (per_token.sum(dim=1) / n_tok.clamp(min=1)).mean()   # (1/B) sum_i (1/N_i) sum_t
    else:
        objective = per_token.sum() / n_tok.sum().clamp(min=1)
    return -objective, _loss_stats(r, adv, dual, gamma, mask, clip_eps)


@torch.no_grad()
def _loss_stats(r: Tensor, adv: Tensor, dual: Tensor, gamma: Tensor, mask: Tensor,
                clip_eps: float) -> dict[str, float]:
    """Shares of clipped and dual-clipped response tokens, mean and max of r, mean gamma (each
    combines over micro-batches and processes by its rule in metrics.STATISTICS).

    r, dual, gamma, mask: [B, L] (dual: where the dual-clip floor is active); adv: [B, 1].
    """
    m = mask.float()
    total = m.sum().clamp(min=1)
    # clip active (zero gradient): A > 0 with r above 1 + eps, or A < 0 with r below 1 - eps
    clipped = ((adv > 0) & (r > 1 + clip_eps)) | ((adv < 0) & (r < 1 - clip_eps))   # [B, L]
    return {
        "clip_frac": float((clipped & mask).sum() / total),
        "dual_clip_frac": float((dual & mask).sum() / total),
        "prob_ratio_mean": float((r * m).sum() / total),
        "prob_ratio_max": float(r[mask].max()) if mask.any() else 1.0,
        "gamma_mean": float(gamma[mask].float().sum() / total),
    }


# --------------------------------------------------------------------------------------------------
# per-token log-probabilities, chunked over the sequence, and their alignment
# --------------------------------------------------------------------------------------------------

def align(per_token: Tensor) -> Tensor:
    """A per-token [B, T] tensor (gamma, response_mask) -> [B, T-1], aligned with token_logprobs.

    Column t of token_logprobs is the log-prob of token t+1 (token 0 has no prediction), so the
    value that goes with it is x[:, t+1]: the alignment every caller of policy_loss needs.
    """
    return per_token[:, 1:]


def position_ids(attention_mask: Tensor) -> Tensor:
    """Position ids over non-pad tokens, exactly as HF generate builds them for a left-padded batch:
    [B, T] long, 0 on padding.

    With them a left-padded sequence gets the same rotary positions, hence the same attention and
    log-probs, as the unpadded one (token_logprobs, the attention capture, the baselines' passes).
    """
    return (attention_mask.long().cumsum(-1) - 1).masked_fill_(attention_mask == 0, 0)


def _chunk_logprobs(hidden: Tensor, targets: Tensor, lm_head: torch.nn.Module, temperature: float,
                    with_entropy: bool) -> tuple[Tensor, Tensor]:
    """log p(target) and entropy for one chunk: hidden [B, C, H], targets [B, C] -> two [B, C].

    log_softmax + gather rather than logsumexp + gather: same values, but log_softmax has one fused
    backward kernel, while logsumexp's backward plus gather's scatter build several [B, C, V]
    temporaries (measured on CPU, V = 65536, one 512-row chunk: 0.9 GiB vs 1.4 GiB peak in
    forward + backward).
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

    Runs the decoder once, then applies the LM head chunk_size positions at a time (logits ->
    log_softmax -> gather per chunk), so only [B, chunk, V] float32 blocks exist at once instead of
    the [B, T, V] logits and their float32 log-softmax copy. Under autograd each chunk is
    checkpointed (recomputed in backward), so the backward pass does not keep every chunk's logits
    either.
    With return_entropy, also the entropy of the (tempered) next-token distribution at each
    position, [B, T-1], computed in the same pass; column t is the entropy of the distribution token
    t+1 was drawn from.
    Position ids follow the attention mask (position_ids), as in generate(), so left padding is
    handled.
    Values at padded positions are finite but meaningless: mask them.
    """
    check_logprob_inputs(model, input_ids, attention_mask, temperature, chunk_size)
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids(attention_mask)).last_hidden_state
    # hidden: [B, T, H]
    hidden, targets = hidden[:, :-1], input_ids[:, 1:]                 # [B, T-1, H], [B, T-1]
    lm_head = model.get_output_embeddings()
    logps, ents = [], []
    for s in range(0, targets.shape[1], chunk_size):
        args = (hidden[:, s:s + chunk_size], targets[:, s:s + chunk_size], lm_head, temperature,
                return_entropy)
        if torch.is_grad_enabled():
            lp, ent = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(*args)
        logps.append(lp)
        ents.append(ent)
    logp = torch.cat(logps, dim=1)                                     # [B, T-1]
    return (logp, torch.cat(ents, dim=1)) if return_entropy else logp
