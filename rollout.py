"""Rollouts: sample responses with HF generate, and mark their prompt, response and answer tokens.

generate(model, tokenizer, prompts, n=...) samples n responses per prompt and returns a Rollout:
the token ids, the masks the flow and the loss read (prompt Q, response, answer set A of eq. (2)),
the decoded texts, and, with capture=True, the [N, T, T] middle-layer attention of eq. (1), which
capture.py collects during sampling.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

import capture as attention
import config
from rewards import answer_span

# model.generate kwargs for greedy decoding (evaluation)
GREEDY = dict(do_sample=False, temperature=None, top_p=None, top_k=None)


@dataclass
class Rollout:
    """N = prompts x n sampled sequences; rows i*n .. i*n + n - 1 are the samples of prompt i."""

    input_ids: Tensor  # [N, T] long: prompt (left-padded) + response (right-padded)
    attention_mask: Tensor  # [N, T] long: 1 on prompt and response tokens (up to and including EOS)
    prompt_mask: Tensor  # [N, T] bool: prompt tokens, chat template included, no padding
    response_mask: Tensor  # [N, T] bool: generated tokens up to and including the first EOS
    answer_mask: Tensor  # [N, T] bool: response tokens overlapping rewards.answer_span(text)
    texts: list[str]  # decoded responses (special tokens skipped)
    lengths: Tensor  # [N] long: response lengths in tokens
    attn: Tensor | None  # [N, T, T] float32 mean over `layers` and heads; None when capture=False
    layers: list[int] | None = None  # the layers averaged into attn
    capture_seconds: float = 0.0  # time the capture added to generate (Table 6); 0 without it

    def rows(self, index: Tensor) -> Rollout:
        """Rows `index` (1-D) of the rollout: every tensor, the texts and the attention."""
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in picked.items():
            if isinstance(value, Tensor):
                picked[name] = value[index.to(value.device)]
        picked["texts"] = [self.texts[i] for i in index.tolist()]
        return Rollout(**picked)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    n: int = 8,
    temperature: float = config.TEMPERATURE,
    top_p: float = config.TOP_P,
    top_k: int = config.TOP_K,
    max_new_tokens: int = config.MAX_NEW_TOKENS,
    capture: bool = True,
    layers: Sequence[int] | None = None,
    chat_template: bool = True,
    chunk_bytes: int = attention.CHUNK_BYTES,
    answer_fallback: str | None = None,
    **generate_kwargs,
) -> Rollout:
    """Sample n responses per prompt; with capture=True also return their [N, T, T] attention.

    The defaults are the paper's sampling settings (config.TEMPERATURE, TOP_P, TOP_K: Sec. 4.1).
    prompts are user messages wrapped in the tokenizer's chat template (chat_template=False: used
    as they are). answer_fallback: where the answer mask goes in a response without a box or
    answer tag (rewards.answer_span): None (the paper's: nowhere, so flow credit leaves the row at
    gamma 1) or "last_line". Extra keyword arguments go to model.generate (e.g. min_new_tokens).
    With capture=True, Rollout.capture_seconds is the time the capture added: the attention
    recomputation inside each step, the buffer, and the extra step for the last token.
    """
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"n and max_new_tokens must be >= 1, got n={n}, "
                         f"max_new_tokens={max_new_tokens}")
    enc = _encode_prompts(tokenizer, prompts, chat_template)
    prompt_ids = enc["input_ids"].repeat_interleave(n, dim=0).to(model.device)  # [N, P]
    prompt_mask = enc["attention_mask"].repeat_interleave(n, dim=0).to(model.device)  # [N, P]
    eos = eos_ids(model, tokenizer)
    # synced_gpus=False: every process samples on its own. transformers turns it on for sharded
    # models, and its extra forward passes (after this process's sequences have ended) would break
    # the capture's call count; under FSDP, train.py gathers the whole model first.
    kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k,
                  max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=eos or None, return_dict_in_generate=True, synced_gpus=False)
    kwargs.update(generate_kwargs)

    attn, layers_used, watch = None, None, attention.Stopwatch(prompt_ids.device)
    if not capture:
        sequences = model.generate(prompt_ids, attention_mask=prompt_mask, **kwargs).sequences
    else:
        layers_used = attention.resolve_layers(model, layers)
        sequences, attn = attention.generate_captured(model, prompt_ids, prompt_mask, layers_used,
                                                      chunk_bytes, watch, **kwargs)

    masks = _sequence_masks(sequences, prompt_mask, eos)
    if attn is not None:
        with watch():
            attention.finalize(attn, masks["attention_mask"], len(layers_used))
    texts, answer_mask = _texts_and_answers(tokenizer, sequences, masks["response_mask"],
                                            answer_fallback)
    return Rollout(input_ids=sequences, texts=texts, answer_mask=answer_mask, attn=attn,
                   layers=layers_used, lengths=masks["response_mask"].sum(1),
                   capture_seconds=watch.seconds, **masks)


# --------------------------------------------------------------------------------------------------
# Tokens, masks and texts


def _encode_prompts(tokenizer, prompts: list[str], chat_template: bool):
    """The prompts tokenized as one batch, left-padded (generate appends on the right)."""
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: set tokenizer.pad_token "
                         "(e.g. to tokenizer.eos_token)")
    if chat_template:
        if not tokenizer.chat_template:
            raise ValueError("the tokenizer has no chat template: set one or pass "
                             "chat_template=False")
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]
    # A rendered chat template already holds its special tokens (e.g. BOS).
    return tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                     add_special_tokens=not chat_template)


def eos_ids(model, tokenizer) -> list[int]:
    """The token ids that end a response: the generation config's, else the tokenizer's EOS."""
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    if eos is None:
        return []
    if isinstance(eos, int):
        return [eos]
    return list(eos)


def _sequence_masks(sequences: Tensor, prompt_mask: Tensor,
                    eos_ids: list[int]) -> dict[str, Tensor]:
    """attention/prompt/response masks [N, T]; a response runs up to and including its first EOS."""
    num, width = prompt_mask.shape
    response = sequences[:, width:]  # [N, R]
    eos = torch.tensor(eos_ids, dtype=response.dtype, device=response.device)
    is_eos = torch.isin(response, eos).long()
    in_response = (is_eos.cumsum(1) - is_eos) == 0  # [N, R]: no EOS strictly before
    no = torch.zeros_like(in_response)
    return dict(
        attention_mask=torch.cat([prompt_mask.long(), in_response.long()], dim=1),
        prompt_mask=torch.cat([prompt_mask.bool(), no], dim=1),
        response_mask=torch.cat([torch.zeros_like(prompt_mask, dtype=torch.bool), in_response],
                                dim=1),
    )


def _texts_and_answers(tokenizer, sequences: Tensor, response_mask: Tensor,
                       fallback: str | None = None) -> tuple[list[str], Tensor]:
    """Decoded responses and the answer mask [N, T].

    The answer mask marks the response tokens overlapping rewards.answer_span(text, fallback): the
    answer tokens the flow's virtual sink is connected from (the set A of eq. (2)). A response
    without an answer region has none (fallback None, the paper's).
    """
    texts, answer_mask = [], torch.zeros_like(response_mask)
    for i in range(sequences.shape[0]):
        positions = response_mask[i].nonzero().squeeze(1)  # [R_i]
        ids = sequences[i, positions].tolist()
        text = tokenizer.decode(ids, skip_special_tokens=True)
        texts.append(text)
        span = answer_span(text, fallback)
        if span is not None:
            a, b = _char_span_to_tokens(tokenizer, ids, *span)
            answer_mask[i, positions[a:b]] = True
    return texts, answer_mask


def _char_span_to_tokens(tokenizer, ids: list[int], start: int, end: int) -> tuple[int, int]:
    """Tokens [a, b) of `ids` whose decoded characters overlap the span [start, end) of decode(ids).

    Token j covers the characters [c(j), c(j + 1)) with c(j) = len(decode(ids[:j])). c is
    non-decreasing, so each end is a binary search: O(log T) decodes. These are the offsets of the
    sampled tokens themselves; offsets from re-encoding the text would belong to the canonical
    tokenization, which a sample need not follow. (A multi-byte character split across tokens can
    move an end by one token.)
    """
    if end <= start:
        return 0, 0

    def chars(j: int) -> int:
        return len(tokenizer.decode(ids[:j], skip_special_tokens=True))

    # first j with c(j + 1) > start
    a = bisect.bisect_right(range(len(ids)), start, key=lambda j: chars(j + 1))
    b = bisect.bisect_left(range(len(ids) + 1), end, key=chars)  # first j with c(j) >= end
    return a, max(a, b)
