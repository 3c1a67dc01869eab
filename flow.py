"""Answer-targeted information flow on the attention DAG, eqs. (1)-(4), and FlowTracer's token
credit, eq. (6): flow_credit (the baselines built on the same top-k rule live in baselines.py).

Paper: "How Does Reasoning Flow? Tracing Attention-Induced Information Flow for Targeted RL in
LLMs", section 3.1 (eqs. 1-4), section 3.3 (eq. 6) and appendix C.2.

Conventions (docs/flow.md's "Conventions" section says the same with pictures in words):
- attn[k, i] is what models return: row = query token k, column = key token i (rows sum to 1).
- W[i, k] = attn[k, i] for i < k (eq. 1): an edge i -> k from an earlier to a later token.
- Answer tokens A are absorbing: each sends its whole flow to a virtual sink with weight 1 and has
  no other out-edge, so h = 1 on A (eq. 2) and the rows of A in W' are 0 (eq. 3).
- A virtual source injects s(q) = 1/|Q| into every prompt token q (eq. 4).
- throughput tau(k) = f(k) + sum_j phi(k -> j), the sink edge included.

Speed. Eqs. (2) and (4) are two triangular linear systems over the same matrix M = I - W_A (W with
the answer rows removed):
    (2)  M h = 1_A                              (back substitution, upper triangular)
    (4)  f = h * u  with  M^T u = s / h         (forward substitution on the raw W, source s / h)
The second line is the Doob identity: f(k) = sum_i f(i) W[i,k] h(k) / h(i) + s(k) divided by h(k) is
u(k) = sum_i u(i) W[i,k] + s(k) / h(k). So `throughput` builds M once (one pass over the T x T
matrix) and runs two `torch.linalg.solve_triangular` calls on it: W' is never materialised.

Numerics. The solves run in float64 by default (float32 on request), never in bf16. All entries of
M's off-diagonal have one sign, so substitution adds non-negative terms: no cancellation. For
attention (rows sum to <= 1) h <= |A| and f <= 1. h can be tiny: the source of a prompt token q is
s(q) / h(q) in the second solve, so a prompt token whose h is below the float floor
h_min = T * finfo.tiny (~1e-304 in float64) keeps its share s(q) but does not propagate it (it would
need a larger number than the float range holds); everything else is exact. Tokens with h = 0 (dead
ends) get f = s (that is, 0 outside the prompt): never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from config import GAMMA, RATIO
from guards import (check_candidates, check_dtype, check_gamma, check_mask, check_ratio,
                    check_square)

__all__ = ["influence_graph", "potential", "reweight", "forward_flow", "throughput", "trace",
           "FlowField", "RATIO", "GAMMA", "top_k_mask", "credit_weights", "flow_scores",
           "flow_credit"]


# --------------------------------------------------------------------------------------------------
# eq. (1)
# --------------------------------------------------------------------------------------------------


def influence_graph(attn: Tensor) -> Tensor:
    """Eq. (1): W[i, k] = a(x_k, x_i) for i < k, zero on and below the diagonal.

    attn: [..., T, T] attention probabilities (row = query k, column = key i), already averaged over
    the chosen layers and heads. Returns W: [..., T, T], same dtype, in the paper's orientation
    (row = the earlier token i, column = the later token k that reads it). One pass over the matrix.
    """
    check_square(attn, "attn")
    return attn.mT.triu(1)  # [..., T, T]


# --------------------------------------------------------------------------------------------------
# eqs. (2)-(4): the shared triangular system
# --------------------------------------------------------------------------------------------------


def _system(W: Tensor, answer_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """The strictly upper part of M = I - W_A, i.e. -W with the answer rows zeroed, in `dtype`.

    This is the one copy of W the solves need; negating and masking it in place costs one more pass
    over memory that is already hot (the copy itself is dominated by touching fresh memory on CPU).
    The unit diagonal is implicit: solve_triangular(unitriangular=True) never reads the diagonal.
    """
    keep = (~answer_mask).to(dtype).neg_()  # [..., T]: -1 on non-answer rows, 0 on answer rows
    M = W.to(dtype, copy=True)  # [..., T, T]
    return M.mul_(keep.unsqueeze(-1))


def _solve_potential(M: Tensor, answer_mask: Tensor) -> Tensor:
    """Eq. (2) as back substitution: (I - W_A) h = 1_A."""
    b = answer_mask.to(M.dtype).unsqueeze(-1)  # [..., T, 1]
    h = torch.linalg.solve_triangular(M, b, upper=True, unitriangular=True)  # [..., T, 1]
    return h.squeeze(-1)  # [..., T]


def _h_floor(T: int, dtype: torch.dtype) -> float:
    """Below this, s / h of a prompt token could overflow the forward solve (module docstring)."""
    return max(T, 1) * torch.finfo(dtype).tiny


def _source(prompt_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """The virtual source of eq. (4): s(q) = 1 / |Q| on prompt tokens, 0 elsewhere. [..., T]"""
    s = prompt_mask.to(dtype)
    return s / s.sum(-1, keepdim=True)


def potential(W: Tensor, answer_mask: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """Eq. (2): the answer-reachability potential h.

    h(a) = 1 on answer tokens a (each feeds the virtual sink with weight 1 and nothing else), and
    h(i) = sum_{k > i} W[i, k] h(k) for every other token: the total path weight from i to the sink.
    Solved as the upper-triangular system (I - W_A) h = 1_A, with W_A = W without its answer rows.

    W: [..., T, T]; answer_mask: [..., T] bool. Returns h: [..., T] in `dtype` (float64 or float32):
    the solve runs in `dtype` whatever W's dtype (a float32 or bf16 W is cast first). For
    attention (column sums of W <= 1), 0 <= h <= |A|: h(i) is the expected number of backward
    attention walks from the answer tokens that visit i.
    """
    check_square(W, "W")
    check_mask(answer_mask, W, "answer_mask", nonempty=True)
    check_dtype(dtype)
    return _solve_potential(_system(W, answer_mask, dtype), answer_mask)


def reweight(W: Tensor, h: Tensor, answer_mask: Tensor) -> Tensor:
    """Eq. (3): the Doob-h transform W'[i, k] = W[i, k] h(k) / h(i) where h(i) > 0, else 0.

    Answer rows are 0 (their flow goes to the sink). By Theorem 3.1 every other row with h(i) > 0
    sums to 1. Materialises W': [..., T, T] in h's dtype. `throughput` never needs it; this is for
    reading, analysis and the tests.
    """
    check_square(W, "W")
    check_mask(answer_mask, W, "answer_mask", nonempty=False)
    inv_h = torch.where(h > 0, h.reciprocal(), torch.zeros_like(h))  # [..., T]
    inv_h = inv_h.masked_fill(answer_mask, 0.0)  # answer rows -> sink only
    return W.to(h.dtype) * inv_h.unsqueeze(-1) * h.unsqueeze(-2)  # [..., T, T]


def forward_flow(W_prime: Tensor, prompt_mask: Tensor) -> Tensor:
    """Eq. (4): f(k) = s(k) + sum_{i < k} f(i) W'[i, k], with s = 1/|Q| on the prompt tokens Q.

    Solved as the lower-triangular system (I - W')^T f = s. W_prime: [..., T, T] (float32 or
    float64); prompt_mask: [..., T] bool. Returns f: [..., T] in W_prime's dtype.
    """
    check_square(W_prime, "W_prime")
    check_mask(prompt_mask, W_prime, "prompt_mask", nonempty=True)
    check_dtype(W_prime.dtype)
    s = _source(prompt_mask, W_prime.dtype).unsqueeze(-1)  # [..., T, 1]
    M = W_prime.neg().triu(1)  # [..., T, T] strictly upper part of I - W'
    return torch.linalg.solve_triangular(M.mT, s, upper=False, unitriangular=True).squeeze(-1)


# --------------------------------------------------------------------------------------------------
# the fused path used in training
# --------------------------------------------------------------------------------------------------


@dataclass
class FlowField:
    """Everything one flow solve yields, per token. All [..., T] in the solve dtype.

    h:   eq. (2) potential (answer reachability)
    f:   eq. (4) flow through the token
    tau: throughput f + outflow (sink edge included): 2 f where h > 0, f (= s) where h = 0
    u:   f / h, the flow per unit of potential (forward propagation on the raw W with source s / h);
         the flow on an edge is phi(i -> k) = f(i) W'[i, k] = u(i) W[i, k] h(k).
    """

    h: Tensor
    f: Tensor
    tau: Tensor
    u: Tensor


def trace(
    W: Tensor, prompt_mask: Tensor, answer_mask: Tensor, dtype: torch.dtype = torch.float64
) -> FlowField:
    """Eqs. (2)-(4) fused: h, f and tau from two triangular solves on the same M = I - W_A.

    W: [..., T, T]; prompt_mask, answer_mask: [..., T] bool, disjoint. Padding is whatever neither
    mask nor the attention reaches: rows and columns of padding that are 0 in W (as rollout produces
    them), or tokens after the answer, get h = f = tau = 0 and never change another token's result.
    """
    check_square(W, "W")
    check_mask(prompt_mask, W, "prompt_mask", nonempty=True)
    check_mask(answer_mask, W, "answer_mask", nonempty=True)
    check_dtype(dtype)
    if (prompt_mask & answer_mask).any():
        raise ValueError("prompt_mask and answer_mask overlap: the answer must lie in the response")

    M = _system(W, answer_mask, dtype)  # [..., T, T]: the one copy of W
    h = _solve_potential(M, answer_mask)  # [..., T] eq. (2)

    s = _source(prompt_mask, dtype)  # [..., T]
    alive = h > _h_floor(W.shape[-1], dtype)  # [..., T]
    c = torch.where(alive, s / torch.where(alive, h, 1.0), 0.0)  # [..., T] source of u: s / h
    # eq. (4) divided by h: M^T u = s / h (forward substitution on the raw W)
    u = torch.linalg.solve_triangular(M.mT, c.unsqueeze(-1), upper=False, unitriangular=True)
    u = u.squeeze(-1)  # [..., T]
    hu = h * u  # [..., T]
    f = hu + torch.where(alive, 0.0, s)  # dead-end prompt tokens keep their source, pass nothing on
    tau = f + hu  # outflow of a token is h * u: all of its flow where h > 0, none where h = 0

    if not torch.isfinite(tau).all():
        raise ValueError(
            "flow is not finite: W must be an attention graph (each token's incoming weights, a "
            "column of W, sum to at most 1) without NaN or inf"
        )
    return FlowField(h=h, f=f, tau=tau, u=u)


def throughput(
    W: Tensor, prompt_mask: Tensor, answer_mask: Tensor, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Token throughput tau(k) = f(k) + sum_j phi(k -> j) of section 3.1, the sink edge included.

    Because every row of W' with h > 0 sums to 1 (Theorem 3.1) and answer tokens pass all their flow
    to the sink, tau = 2 f on every token with h > 0; on dead ends (h = 0) tau = f, which is
    s(k) = 1/|Q| for a prompt token and 0 for any other. The ranking of response tokens by tau is
    their ranking by f.

    W: [..., T, T] from `influence_graph`; masks [..., T] bool. Returns tau: [..., T] in `dtype`.
    Cost: one copy of W and two triangular solves (see the module docstring).
    """
    return trace(W, prompt_mask, answer_mask, dtype).tau


# --------------------------------------------------------------------------------------------------
# eq. (6): which tokens get the extra credit
# --------------------------------------------------------------------------------------------------

# eq. (6)'s defaults (section 3.3) are config.RATIO = 0.4 and config.GAMMA = 1.5: the top 40% of
# the response tokens by flow get gamma_flow = 1.5.


def top_k_mask(
    scores: Tensor, candidate_mask: Tensor, ratio: float = RATIO, largest: bool = True
) -> Tensor:
    """The selection behind eq. (6): per sequence the k = round(ratio * n) candidates with the
    largest scores (smallest with largest=False: the bottom-k ablation), n = number of candidates.

    round is half-up (floor(ratio * n + 0.5)), so ratio 0.4 of 5 candidates selects 2 and of 4
    selects 2. Ties go to the earlier token (stable sort), so the result is deterministic.
    scores: [..., T] finite on candidates; candidate_mask: [..., T] bool. Returns bool [..., T].
    """
    check_ratio(ratio)
    check_candidates(scores, candidate_mask)
    fill = float("-inf") if largest else float("inf")
    key = scores.masked_fill(~candidate_mask, fill)  # [..., T]: non-candidates sort last
    order = key.sort(dim=-1, descending=largest, stable=True).indices  # [..., T]
    n = candidate_mask.sum(-1, keepdim=True)  # [..., 1]
    k = torch.floor(n * ratio + 0.5).long()  # [..., 1]
    ranks = torch.arange(scores.shape[-1], device=scores.device)  # [T]
    picked = ranks < k  # [..., T] in sorted order
    return torch.zeros_like(candidate_mask).scatter(-1, order, picked)


def credit_weights(mask: Tensor, gamma: float = GAMMA) -> Tensor:
    """gamma of eq. (6): gamma_flow on the selected tokens, 1 elsewhere; float32 [..., T]."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool, got {mask.dtype}")
    check_gamma(gamma)
    one = torch.ones((), dtype=torch.float32, device=mask.device)
    return torch.where(mask, one * gamma, one)


# --------------------------------------------------------------------------------------------------
# FlowTracer's credit: eq. (6) on the throughput of eqs. (1)-(4)
# --------------------------------------------------------------------------------------------------


def flow_scores(attn: Tensor, prompt_mask: Tensor, answer_mask: Tensor, response_mask: Tensor
                ) -> tuple[Tensor, Tensor]:
    """Throughput tau [B, T] (float64) of section 3.1 and the candidates [B, T] it ranks.

    attn: [B, T, T] captured attention (row = query); masks [B, T] bool. Candidates are the
    response tokens of sequences that have both a prompt and an answer region. A response without
    an answer span (no \\boxed{...}, truncated) has no flow target: it gets no candidates, so every
    flow strategy leaves its gamma at 1 (plain GRPO for that sequence).
    """
    ok = prompt_mask.any(-1) & answer_mask.any(-1)                     # [B] flow is defined
    tau = torch.zeros(response_mask.shape, dtype=torch.float64, device=attn.device)  # [B, T]
    if ok.all():                                                       # the usual case: no row copy
        tau = throughput(influence_graph(attn), prompt_mask, answer_mask)
    elif ok.any():
        W = influence_graph(attn[ok])                                  # [b, T, T] eq. (1)
        tau[ok] = throughput(W, prompt_mask[ok], answer_mask[ok])
    return tau, response_mask & ok[:, None]


def flow_credit(attn: Tensor, prompt_mask: Tensor, answer_mask: Tensor, response_mask: Tensor,
                ratio: float = RATIO, gamma: float = GAMMA) -> Tensor:
    """FlowTracer's token credit, eq. (6): gamma on the top `ratio` of each response's tokens by
    flow throughput tau (eqs. (1)-(4)), 1 on every other token. float32 [B, T].

    attn: [B, T, T] mean attention of the middle layers (capture.py); prompt_mask (Q),
    answer_mask (A) and response_mask: [B, T] bool, as rollout.generate returns them.
    """
    tau, candidates = flow_scores(attn, prompt_mask, answer_mask, response_mask)   # [B, T] x 2
    return credit_weights(top_k_mask(tau, candidates, ratio), gamma)
