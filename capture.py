"""Attention capture: the middle-layer attention of eq. (1), collected while the model runs.

FlowTracer (Sec. 3.1) builds its influence graph from attention: the edge weight of eq. (1) is
W_ik = a(x_k, x_i), the attention of the later token x_k on the earlier token x_i, averaged over
the heads and over the middle layers L/3..2L/3 (App. C.2). This file produces that average, one
[N, T, T] float32 map per batch of sequences (row = query k, column = key i: the map is W
transposed, and flow.influence_graph turns it around). rollout.generate calls
`generate_captured` when the credit strategy reads attention.

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
selected layer (no later layers, no LM head). Stopwatch times the capture's share (Table 6).

Conventions: row = query, column = key; rows and columns of padding (left pad, pad after EOS) are
0; positions are counted over non-pad tokens as HF generate does (grpo.position_ids), so a
left-padded sequence gets the map of the unpadded one.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from grpo import position_ids

ATTN_NAME = "flowtracer"
CHUNK_BYTES = 1 << 27  # scratch of one query chunk (float32 scores + probabilities): 128 MiB
# score modifiers we do not reproduce
_UNSUPPORTED_KWARGS = ("softcap", "position_bias", "s_aux", "sinks")


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


def check_layers(model, layers: Sequence[int] | None) -> list[int]:
    """resolve_layers for a command's --layers (train.py, analyze.py): its error names the flag."""
    try:
        return resolve_layers(model, layers)
    except ValueError as e:
        raise ValueError(f"--layers {','.join(map(str, layers or []))}: {e}") from None


# --------------------------------------------------------------------------------------------------
# The attention function and its capture state


class Stopwatch:
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
    watch: Stopwatch  # the time spent capturing (not the SDPA output the model needs anyway)
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
    As eager attention: Q K^T * scale in the model's dtype, softmax in float32 (also for a bf16
    model). The queries are processed in chunks of c rows so that the float32 scratch, the scores
    and probabilities of one chunk (two [N, H, c, k], 8 N H c k bytes), stays under chunk_bytes
    whatever T is: c = max(1, chunk_bytes // (8 N H k)), one query row at least.
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
               watch: Stopwatch | None = None) -> Iterator[_Capture]:
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
                       watch=watch or Stopwatch(attn.device))
    # Registered here, not at import: the registry is global, and a second copy of this module
    # (a course handout graded in the same process) must not replace the function of this one.
    AttentionInterface.register(ATTN_NAME, _flowtracer_attention)
    model.set_attn_implementation(ATTN_NAME)
    try:
        yield _ACTIVE
    finally:
        model.set_attn_implementation(impl)
        _ACTIVE = None


def finalize(attn: Tensor, valid: Tensor, num_layers: int) -> Tensor:
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
                  position_ids=position_ids(attention_mask), use_cache=False)
        except _StopForward:
            pass
        capture.check_calls(expected=1)
    return finalize(attn, attention_mask, len(layers))


@torch.no_grad()
def generate_captured(model, prompt_ids: Tensor, prompt_mask: Tensor, layers: list[int],
                      chunk_bytes: int, watch: Stopwatch, **generate_kwargs
                      ) -> tuple[Tensor, Tensor]:
    """model.generate with the attention captured on the way: (sequences [N, T], attn [N, T, T]).

    attn is the SUM over `layers` of the head-mean attention, padding not yet zeroed: `finalize`
    it with the sequences' attention mask (rollout.generate knows where each response ends).
    watch: the time the capture adds (the recomputation inside each step, the buffer, the extra
    step for the last token).
    """
    num, width = prompt_ids.shape
    t_max = width + generate_kwargs["max_new_tokens"]
    with watch():
        attn = torch.zeros(num, t_max, t_max, dtype=torch.float32, device=model.device)
    with _capturing(model, attn, layers, chunk_bytes, watch) as cap:
        out = model.generate(prompt_ids, attention_mask=prompt_mask, **generate_kwargs)
        sequences = out.sequences
        if not isinstance(out.cache, DynamicCache):  # `cache`: past_key_values before 5.24
            raise NotImplementedError(f"attention capture needs a DynamicCache, "
                                      f"got {type(out.cache)}")
        # generate never feeds its last sampled token back: one more cached step adds that
        # token's row.
        # As in generate, every sampled token is attended (pad after EOS is zeroed later).
        sampled = prompt_mask.new_ones(num, sequences.shape[1] - width)  # [N, R]
        step_mask = torch.cat([prompt_mask, sampled], dim=1)  # [N, T]
        cap.stop_after = layers[-1]
        with watch():
            try:
                model(input_ids=sequences[:, -1:], attention_mask=step_mask,
                      cache=out.cache,
                      position_ids=position_ids(step_mask)[:, -1:], use_cache=True)
            except _StopForward:
                pass
        cap.check_calls(expected=sequences.shape[1] - width + 1)  # prefill + one per fed token
    del out
    t = sequences.shape[1]
    if t < t_max:  # all sequences stopped early
        with watch():
            attn = attn[:, :t, :t].clone()
    return sequences, attn
