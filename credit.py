"""Token credit gamma_{i,t} of eq. (5): which response tokens get extra weight in the GRPO loss.

eq. (6), FlowTracer (section 3.3), in flow.flow_credit:
    gamma_t = gamma_flow  if t is among the top `ratio` of the response's tokens by flow throughput
              1           otherwise
with ratio = config.RATIO (0.4) and gamma_flow = config.GAMMA (1.5); the throughput tau comes from
eqs. (1)-(4) in the same file.

CREDIT_STRATEGIES names every strategy (train.py's --credit flag, config.CREDIT_STRATEGIES):
FlowTracer's `flow`, then the paper's baselines and ablations and the chain testbed's positive
controls (baselines.py). credit_gamma(strategy, rollout, ...) checks the arguments and runs one.
The loss reads gamma through grpo.align.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import baselines
import config
import flow
import guards
from baselines import CreditInputs


def _flow(c: CreditInputs) -> Tensor:
    """FlowTracer, eq. (6): gamma on the top `ratio` of response tokens by flow throughput tau."""
    ro = c.rollout
    return flow.flow_credit(baselines.need(c, "attn", "flow"), ro.prompt_mask, ro.answer_mask,
                            ro.response_mask, c.ratio, c.gamma)


CREDIT_STRATEGIES: dict[str, Callable[[CreditInputs], Tensor]] = {"flow": _flow,
                                                                     **baselines.BASELINES}
if sorted(CREDIT_STRATEGIES) != sorted(config.CREDIT_STRATEGIES):  # --credit's choices
    differ = sorted(set(CREDIT_STRATEGIES) ^ set(config.CREDIT_STRATEGIES))
    raise ImportError(f"credit.py and config.CREDIT_STRATEGIES name different strategies: {differ}")

# The strategies that read rollout.attn: rollout.generate must capture the attention for them.
ATTENTION_STRATEGIES = frozenset(
    baselines.ATTENTION_BASELINES | {s for s in CREDIT_STRATEGIES if s.startswith("flow")})


def credit_gamma(
    strategy: str,
    rollout: Any,
    *,
    ratio: float = config.RATIO,
    gamma: float = config.GAMMA,
    entropy: Tensor | None = None,
    model: torch.nn.Module | None = None,
    generator: torch.Generator | None = None,
    tokenizer: Any = None,
    temperature: float = 1.0,
) -> Tensor:
    """gamma_{i,t} of eq. (5)/(6) per token of a rollout: float32 [B, T], 1 outside the response.

    strategy: a key of CREDIT_STRATEGIES. ratio and gamma default to the paper's config.RATIO and
    config.GAMMA. 'entropy' needs entropy= ([B, T-1] from token_logprobs) or model= (the policy's
    entropies at `temperature`, one no-grad pass), 'gradient' and 'correlation' need model=,
    'random' takes generator=, 'flow-structural' and 'flow-content' need tokenizer=, the flow and
    attention strategies need rollout.attn, 'oracle' and 'oracle-only' (the chain testbed's
    controls, config.CHAIN_ONLY) need tokenizer= and rollout.texts.
    The loss reads gamma through grpo.align (token_logprobs' alignment).
    """
    if strategy not in CREDIT_STRATEGIES:
        raise ValueError(f"unknown credit strategy {strategy!r}; "
                         f"valid: {', '.join(CREDIT_STRATEGIES)}")
    guards.check_ratio(ratio)
    guards.check_gamma(gamma)
    mask = rollout.response_mask
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError("rollout.response_mask must be bool [B, T], "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    inputs = CreditInputs(rollout, ratio, gamma, entropy, model, generator, tokenizer,
                          temperature)
    out = CREDIT_STRATEGIES[strategy](inputs)
    return out.to(device=mask.device, dtype=torch.float32)
