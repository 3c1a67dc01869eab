"""Rollouts: sample responses with HF generate and capture the middle-layer attention on the way.

FlowTracer (Sec. 3.1) builds its influence graph from attention: the edge weight of eq. (1) is
W_ik = a(x_k, x_i), the attention of the later token x_k on the earlier token x_i, averaged over
the heads and over the middle layers L/3..2L/3 (App. C.2). This file produces that average, one
[N, T, T] float32 map per batch of sampled sequences (row = query k, column = key i: the map is W
transposed, and flow.influence_graph turns it around).

Why not `output_attentions=True`: it keeps every layer's [N, H, T, T] (147 GB for one 8K sequence
of Qwen3-4B) when we need one [N, T, T] mean. Instead we register one attention function,
"flowtracer", in transformers' AttentionInterface. It
  1. computes the layer output with the stock SDPA function, so the sampled tokens are exactly
     those of a run without capture, and
  2. for the selected layers only, recomputes softmax(Q K^T * scale + mask) one query chunk at a
     time (as eager attention does: scores in the model's dtype, softmax in float32), averages
     the heads (a GQA group's query heads share one K: no repeat_kv copy) and adds the result
     into a single [N, T, T] float32 buffer.
The paper extracts the maps in one extra forward pass over prompt + response after sampling
(App. C.2). With a KV cache, generate computes the rows of that same pass one by one, so it
collects the map on the way: the prefill adds the prompt's rows, each cached decode step one more
row, and one extra cached step feeds the last sampled token (generate never feeds it back) so that
its row exists too.
capture_attention is that pass for sequences that already exist; it stops right after the last
selected layer (no later layers, no LM head).

Conventions: row = query, column = key; rows and columns of padding (left pad, pad after EOS) are
0; positions are counted over non-pad tokens as HF generate does, so a left-padded sequence gets
the map of the unpadded one.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from rewards import answer_span

ATTN_NAME = "flowtracer"
CHUNK_BYTES = 1 << 27  # scratch of one query chunk (float32 scores + probabilities): 128 MiB
# model.generate kwargs for greedy decoding (evaluation)
GREEDY = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
# score modifiers we do not reproduce
_UNSUPPORTED_KWARGS = ("softcap", "position_bias", "s_aux", "sinks")


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


def default_layers(num_layers: int) -> list[int]:
    """The middle third, range(L // 3, 2 * L // 3) (App. C.2): layers 12..23 of Qwen3-4B's 36."""
    layers = list(range(num_layers // 3, 2 * num_layers // 3))
    if not layers:
        raise ValueError(f"a model with {num_layers} layers has no middle third: "
                         "pass layers explicitly")
    return layers


def resolve_layers(model, layers: Sequence[int] | None) -> list[int]:
    """The sorted layer indices to capture: `layers`, checked against the model, or the default."""
    num_layers = model.config.num_hidden_layers
    if layers is None:
        return default_layers(num_layers)
    layers = sorted(set(int(layer) for layer in layers))
    if not layers or layers[0] < 0 or layers[-1] >= num_layers:
        raise ValueError(f"layers must be a non-empty list of indices in [0, {num_layers}), "
                         f"got {layers}")
    return layers


# --------------------------------------------------------------------------------------------------
# The attention function and its capture state


class _Stopwatch:
    """Seconds spent inside `with watch():` blocks, for the capture's share of generation time.

    On CUDA through events recorded in the stream, so timing never synchronises the device in the
    middle of generation (one synchronisation when `seconds` is read); on CPU the wall clock. A
    block inside a timed block is not counted twice.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._seconds = 0.0
        self._events: list[tuple] = []
        self._depth = 0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        self._depth += 1
        try:
            if self._depth > 1:
                yield
            elif self.cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                yield
                end.record()
                self._events.append((start, end))
            else:
                start = time.perf_counter()
                yield
                self._seconds += time.perf_counter() - start
        finally:
            self._depth -= 1

    @property
    def seconds(self) -> float:
        if self._events:
            self._events[-1][1].synchronize()
            self._seconds += sum(s.elapsed_time(e) for s, e in self._events) / 1000
            self._events.clear()
        return self._seconds


@dataclass
class _Capture:
    attn: Tensor  # [N, Tmax, Tmax] float32, sum over captured layers of the head-mean attention
    layers: frozenset[int]
    chunk_bytes: int
    watch: _Stopwatch  # the time spent capturing (not the SDPA output the model needs anyway)
    stop_after: int | None = None  # raise _StopForward after this layer (capture-only passes)
    calls: Counter = field(default_factory=Counter)  # layer -> attention calls seen

    def check_calls(self, expected: int) -> None:
        """Every selected layer must have gone through the interface exactly `expected` times.

        A layer that bypasses the interface would silently leave its share of the mean at 0.
        """
        bad = {layer: self.calls[layer] for layer in sorted(self.layers)
               if self.calls[layer] != expected}
        if bad:
            raise RuntimeError(
                f"attention capture: expected {expected} attention call(s) per selected layer, "
                f"got {bad}; the model's attention does not (always) go through transformers' "
                "AttentionInterface, so it is not supported"
            )


class _StopForward(Exception):
    """Raised after the last selected layer to end a capture-only forward pass early."""


# The capture in progress, if any: transformers calls the attention function with a fixed
# signature, so the buffer reaches it through this module state (set and cleared by _capturing).
_ACTIVE: _Capture | None = None


def _flowtracer_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                          **kwargs):
    """Stock SDPA output; for the selected layers, also adds the head-mean attention to the buffer.

    The returned output is SDPA's own, so the model computes (and samples) exactly as without
    capture; the capture is a side effect.
    """
    out = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                 scaling=scaling, **kwargs)
    capture = _ACTIVE
    layer = getattr(module, "layer_idx", None)
    if capture is None or layer not in capture.layers:
        return out
    if dropout:
        raise ValueError(f"attention capture: layer {layer} runs attention dropout {dropout}; "
                         "call model.eval()")
    if kwargs.get("sliding_window") is not None:
        raise NotImplementedError(f"attention capture: layer {layer} is a sliding-window layer "
                                  "(not supported)")
    if any(kwargs.get(name) is not None for name in _UNSUPPORTED_KWARGS):
        raise NotImplementedError(f"attention capture: layer {layer} uses one of "
                                  f"{_UNSUPPORTED_KWARGS}")
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    with capture.watch():
        add_head_mean(capture.attn, query, key, attention_mask, scale, capture.chunk_bytes)
    capture.calls[layer] += 1
    if layer == capture.stop_after:
        raise _StopForward
    return out


# same boolean masks as "sdpa" (None when plain causal)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def add_head_mean(attn: Tensor, query: Tensor, key: Tensor, mask: Tensor | None, scale: float,
                  chunk_bytes: int):
    """attn[:, k-q .. k-1, :k] += mean over heads of softmax(Q K^T * scale + mask) (eq. 8).

    This is one layer's term of the layer-and-head mean a(x_k, x_i) of eq. (1), row = query,
    column = key. attn: the [N, T, T] float32 capture buffer, added to (the other layers' terms are
    already in it). query [N, H, q, d], key [N, Hkv, k, d]: all keys so far, the queries are the
    last q of the k positions (q = k in a forward pass, q = 1 in a decode step). Grouped-query
    attention: query head j reads KV head j // (H / Hkv), the order of transformers' repeat_kv.
    mask: None (plain causal: the query at position p sees keys 0..p) or bool [N or 1, 1, q, k],
    True = may attend; a query that may attend to nothing (left padding) adds a row of 0, not NaN.
    As eager attention: Q K^T * scale in the model's dtype, softmax in float32. The queries are
    processed in chunks so that the float32 scratch stays under chunk_bytes whatever T is.
    query and key are only read: key is the model's KV cache.
    """
    n, h, q, d = query.shape
    hkv, k = key.shape[1], key.shape[2]
    if attn.shape[0] != n or k > attn.shape[-1] or q > k:
        raise RuntimeError(f"attention capture: queries {tuple(query.shape)} / keys "
                           f"{tuple(key.shape)} do not fit the buffer {tuple(attn.shape)} "
                           "(a static or sliding cache is not supported)")
    if mask is not None and (mask.dtype != torch.bool or mask.shape[-2:] != (q, k)):
        raise TypeError(f"attention capture: expected a bool [.., {q}, {k}] mask, "
                        f"got {mask.dtype} {tuple(mask.shape)}")
    g = h // hkv  # query heads per KV head; head j uses KV head j // g (repeat_kv order)
    first = k - q  # absolute position of the first query
    keys_t = key.transpose(-1, -2)  # [N, Hkv, d, k]
    queries = query.view(n, hkv, g, q, d)
    # Queries per chunk: two float32 [N, H, c, k] live at once (scores and probabilities), 8 bytes.
    step = max(1, chunk_bytes // (8 * n * h * k))
    for s in range(0, q, step):
        c = min(step, q - s)
        chunk = queries[:, :, :, s : s + c].reshape(n, hkv, g * c, d)  # [N, Hkv, G * c, d]
        # As eager attention: Q K^T * scale in the model's dtype, then softmax in float32.
        scores = (chunk @ keys_t).mul_(scale).float().view(n, hkv, g, c, k)  # [N, Hkv, G, c, k]
        if mask is not None:
            blocked = ~mask[:, :, s : s + c].unsqueeze(1)  # [N|1, 1, 1, c, k]
        elif first + s < k - 1:
            rows = torch.arange(first + s, first + s + c, device=key.device)
            blocked = torch.arange(k, device=key.device) > rows[:, None]  # [c, k] causal
        else:
            blocked = None  # a single query at the last position sees every key (a decode step)
        if blocked is not None:
            # finfo.min, not -inf: a fully masked row (a left-pad query) comes out uniform, not
            # NaN; it is zeroed below.
            scores.masked_fill_(blocked, torch.finfo(torch.float32).min)
        probs = scores.softmax(-1)
        del scores  # free it before the next chunk is allocated
        head_sum = probs.sum(dim=(1, 2))  # [N, c, k]
        del probs
        if blocked is not None:
            head_sum.masked_fill_(blocked.all(-1).view(-1, c, 1), 0.0)
        attn[:, first + s : first + s + c, :k].add_(head_sum, alpha=1.0 / h)


@contextmanager
def _capturing(model, attn: Tensor, layers: list[int], chunk_bytes: int,
               watch: _Stopwatch | None = None) -> Iterator[_Capture]:
    """Switch the model to "flowtracer" attention with a fresh capture; restore "sdpa" on exit."""
    global _ACTIVE
    if _ACTIVE is not None:
        raise RuntimeError("attention capture is already running "
                           "(nested or concurrent captures are not supported)")
    if not type(model)._can_set_attn_implementation():
        raise NotImplementedError(f"{type(model).__name__} does not route attention through "
                                  "AttentionInterface")
    impl = model.config._attn_implementation
    if impl != "sdpa":
        raise ValueError("attention capture needs attn_implementation='sdpa' (its output is "
                         f"reused as is, so sampling is unchanged); the model uses {impl!r}: "
                         "call model.set_attn_implementation('sdpa')")
    _ACTIVE = _Capture(attn=attn, layers=frozenset(layers), chunk_bytes=chunk_bytes,
                       watch=watch or _Stopwatch(attn.device))
    # Registered here, not at import: the registry is global, and a second copy of this module
    # (a course handout graded in the same process) must not replace the function of this one.
    AttentionInterface.register(ATTN_NAME, _flowtracer_attention)
    model.set_attn_implementation(ATTN_NAME)
    try:
        yield _ACTIVE
    finally:
        model.set_attn_implementation(impl)
        _ACTIVE = None


def _positions(attention_mask: Tensor) -> Tensor:
    """Position ids over non-pad tokens, exactly as HF generate builds them for a left-padded batch.

    With them a left-padded sequence gets the same rotary positions, hence the same attention, as
    the unpadded one.
    """
    return (attention_mask.long().cumsum(-1) - 1).masked_fill_(attention_mask == 0, 0)


def _finalize(attn: Tensor, valid: Tensor, num_layers: int) -> Tensor:
    """Layer mean and zero rows/columns of padding, in place (no [N, T, T] temporaries).

    valid: [N, T]. The buffer holds the sum over layers of the head means; dividing by the number
    of layers makes it the layer-and-head mean of eq. (1).
    """
    v = valid.to(attn.dtype)
    return attn.mul_(v[:, :, None] / num_layers).mul_(v[:, None, :])


# --------------------------------------------------------------------------------------------------
# Public API


@torch.no_grad()
def capture_attention(model, input_ids: Tensor, attention_mask: Tensor,
                      layers: Sequence[int] | None = None,
                      chunk_bytes: int = CHUNK_BYTES) -> Tensor:
    """[N, T, T] float32 attention of given sequences, mean over `layers` and heads.

    `layers` defaults to the middle third (default_layers). This is the paper's extra forward pass
    (App. C.2) for sequences that already exist; it stops after the last selected layer. Left and
    right padding are allowed (attention_mask 0); their rows and columns are 0.
    """
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and attention_mask must both be [N, T], got "
                         f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
    if not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("attention_mask must hold only 0 and 1")
    layers = resolve_layers(model, layers)
    n, t = input_ids.shape
    attn = torch.zeros(n, t, t, dtype=torch.float32, device=input_ids.device)
    with _capturing(model, attn, layers, chunk_bytes) as capture:
        capture.stop_after = layers[-1]
        try:
            model(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=_positions(attention_mask), use_cache=False)
        except _StopForward:
            pass
        capture.check_calls(expected=1)
    return _finalize(attn, attention_mask, len(layers))


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    n: int = 8,
    temperature: float = 0.99,
    top_p: float = 1.0,
    top_k: int = 100,
    max_new_tokens: int = 1024,
    capture: bool = True,
    layers: Sequence[int] | None = None,
    chat_template: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
    answer_fallback: str | None = None,
    **generate_kwargs,
) -> Rollout:
    """Sample n responses per prompt; with capture=True also return their [N, T, T] attention.

    The defaults are the paper's sampling settings (temperature 0.99, top-p 1, top-k 100, Sec. 4.1).
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
    num, width = prompt_ids.shape
    eos = eos_ids(model, tokenizer)
    # synced_gpus=False: every process samples on its own. transformers turns it on for sharded
    # models, and its extra forward passes (after this process's sequences have ended) would break
    # the capture's call count; under FSDP, train.py gathers the whole model first.
    kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k,
                  max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=eos or None, return_dict_in_generate=True, synced_gpus=False)
    kwargs.update(generate_kwargs)

    attn, layers_used, watch = None, None, _Stopwatch(prompt_ids.device)
    if not capture:
        sequences = model.generate(prompt_ids, attention_mask=prompt_mask, **kwargs).sequences
    else:
        layers_used = resolve_layers(model, layers)
        t_max = width + max_new_tokens
        with watch():
            attn = torch.zeros(num, t_max, t_max, dtype=torch.float32, device=model.device)
        with _capturing(model, attn, layers_used, chunk_bytes, watch) as cap:
            out = model.generate(prompt_ids, attention_mask=prompt_mask, **kwargs)
            sequences = out.sequences
            if not isinstance(out.cache, DynamicCache):  # `cache`: past_key_values before 5.24
                raise NotImplementedError(f"attention capture needs a DynamicCache, "
                                          f"got {type(out.cache)}")
            # generate never feeds its last sampled token back: one more cached step adds that
            # token's row.
            # As in generate, every sampled token is attended (pad after EOS is zeroed later).
            sampled = prompt_mask.new_ones(num, sequences.shape[1] - width)  # [N, R]
            step_mask = torch.cat([prompt_mask, sampled], dim=1)  # [N, T]
            cap.stop_after = layers_used[-1]
            with watch():
                try:
                    model(input_ids=sequences[:, -1:], attention_mask=step_mask,
                          cache=out.cache,
                          position_ids=_positions(step_mask)[:, -1:], use_cache=True)
                except _StopForward:
                    pass
            cap.check_calls(expected=sequences.shape[1] - width + 1)  # prefill + one per fed token
        del out
        t = sequences.shape[1]
        if t < t_max:  # all sequences stopped early
            with watch():
                attn = attn[:, :t, :t].clone()

    masks = _sequence_masks(sequences, prompt_mask, eos)
    if attn is not None:
        with watch():
            _finalize(attn, masks["attention_mask"], len(layers_used))
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
