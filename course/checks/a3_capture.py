"""Checks of assignment a3_capture: the head-mean attention that capture.py's AttentionInterface
function adds into the capture buffer, graded against eager attention on the shipped tiny model.

The expected maps come from transformers' eager attention (`output_attentions=True`), averaged over
the layers and heads with padding rows and columns zeroed; the direct checks of `add_head_mean`
compute softmax(Q K^T * scale) with a loop over heads.
"""

import functools
from pathlib import Path

import torch
from grade import check, expect, expect_close, fmt, fmt_pair
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = ["Compute 3+4*2-5.", "Compute 7-2*3+1*4."]


@functools.cache
def tiny(handout: Path, dtype: torch.dtype = torch.float32):
    """The shipped tiny Qwen3 (4 layers, 4 query heads over 2 KV heads) and its tokenizer."""
    folder = handout / "tiny" / "qwen3-arith"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa", dtype=dtype)
    return model.eval(), tokenizer


def encode(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                    add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def eager(model, input_ids, attention_mask, layers) -> torch.Tensor:
    """Eager output_attentions, mean over `layers` and heads, padding rows and columns zeroed."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids, attention_mask=attention_mask,
                        position_ids=position_ids, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation("sdpa")
    mean = torch.stack([out.attentions[layer].float() for layer in layers]).mean(dim=(0, 2))
    valid = attention_mask.bool()
    return mean * (valid[:, :, None] & valid[:, None, :])


def padded_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three sequences of 14: left-padded by 3, unpadded, left-padded by 1 and right-padded by 2."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (3, 14), generator=g)
    mask = torch.ones(3, 14, dtype=torch.long)
    mask[0, :3] = 0
    mask[2, :1] = 0
    mask[2, -2:] = 0
    return ids, mask


def expect_rows_sum_to_one(attn: torch.Tensor, heads: int, where: str = "") -> None:
    """Every row of a [T, T] captured map sums to 1, with a hint that depends on the sum found."""
    sums = attn.double().sum(-1)
    worst = int((sums - 1).abs().argmax())
    total = float(sums[worst])
    if abs(total - heads) < 1e-3:
        hint = f"the {heads} heads are summed, not averaged"
    elif abs(total - 1) < 1e-2:
        hint = ("close to 1 but not within float32 rounding: the softmax must run in float32, "
                "whatever the model's dtype")
    else:
        hint = "each head's row is a softmax over the keys (the last dim of Q K^T)"
    expect(abs(total - 1) < 1e-5, f"row {worst}{where} sums to {fmt_pair(total, 1)[0]}, "
           f"expected 1 (the mean over heads of softmax rows): {hint}")


# --------------------------------------------------------------------------------------------------
# visible checks
# --------------------------------------------------------------------------------------------------


@check(3)
def test_one_sequence_matches_eager(capture, handout):
    """capture_attention on one prompt equals eager attention (middle layer, mean over heads)"""
    model, tok = tiny(handout)
    ids, mask = encode(tok, PROMPTS[:1])
    got = capture.capture_attention(model, ids, mask)
    expect(got.dtype == torch.float32, f"the captured map is {got.dtype}, expected float32")
    want = eager(model, ids, mask, capture.default_layers(model.config.num_hidden_layers))
    expect_close(got, want, "captured attention vs eager attention [1, T, T]", atol=1e-5, rtol=0)


@check(2)
def test_rows_are_distributions(capture, handout):
    """the captured map is causal and every row sums to 1 (a mean of softmax rows)"""
    model, tok = tiny(handout)
    ids, mask = encode(tok, PROMPTS[:1])
    got = capture.capture_attention(model, ids, mask)[0]
    expect(bool(torch.isfinite(got).all()), "the captured map holds NaN or inf")
    upper = got.triu(1).abs().max()
    expect(float(upper) == 0, f"entry above the diagonal is {fmt(upper)}: a query never attends "
           "to a later key (row = query, column = key)")
    expect_rows_sum_to_one(got, model.config.num_attention_heads)



@check(2)
def test_two_layers_average(capture, handout):
    """layers=[1, 2]: the map is the mean over both layers (each layer adds into the buffer)"""
    model, tok = tiny(handout)
    ids, mask = encode(tok, PROMPTS[:1])
    got = capture.capture_attention(model, ids, mask, layers=[1, 2])
    expect_close(got, eager(model, ids, mask, [1, 2]),
                 "attention averaged over layers 1 and 2 vs eager", atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# hidden checks
# --------------------------------------------------------------------------------------------------


@check(3, visibility="after_due_date")
def test_padded_batch_matches_eager(capture, handout):
    """a left- and right-padded batch equals eager attention, padding rows and columns 0"""
    model, _ = tiny(handout)
    ids, mask = padded_batch(model.config.vocab_size)
    for layers in ([0, 3], [2]):
        got = capture.capture_attention(model, ids, mask, layers=layers)
        want = eager(model, ids, mask, layers)
        unpadded_ok = bool(torch.allclose(got[1], want[1], atol=1e-5, rtol=0))
        hint = ("; the unpadded sequence 1 is right, the padded ones are not: padding is where the "
                "bool mask is False (True = may attend)" if unpadded_ok else "")
        expect_close(got, want, f"padded batch, layers {layers}, vs eager{hint}", atol=1e-5, rtol=0)


@check(1, visibility="after_due_date")
def test_chunks_are_exact(capture, handout):
    """chunk_bytes=1 (one query row per chunk) gives the same map as one chunk"""
    model, _ = tiny(handout)
    ids, mask = padded_batch(model.config.vocab_size)
    one_row = capture.capture_attention(model, ids, mask, layers=[1, 2], chunk_bytes=1)
    expect_close(one_row, eager(model, ids, mask, [1, 2]), "map computed one query row at a time",
                 atol=1e-5, rtol=0)
    one_row = capture.capture_attention(model, ids[1:2], mask[1:2], layers=[1], chunk_bytes=1)
    expect_close(one_row, eager(model, ids[1:2], mask[1:2], [1]),
                 "unpadded sequence (no mask: causal rows rebuilt per chunk), one row per chunk",
                 atol=1e-5, rtol=0)


@check(3, visibility="after_due_date")
def test_generate_matches_eager(rollout, handout):
    """generate(capture=True): the map built step by step with the KV cache equals eager's"""
    model, tok = tiny(handout)
    torch.manual_seed(0)
    ro = rollout.generate(model, tok, PROMPTS, n=2, max_new_tokens=16, layers=[1, 2])
    want = eager(model, ro.input_ids, ro.attention_mask, [1, 2])
    expect_close(ro.attn, want, "attention captured during sampling (decode steps add one row "
                 "each) vs eager on the sampled sequences", atol=1e-5, rtol=0)


@check(2, visibility="after_due_date")
def test_sampling_unchanged(rollout, handout):
    """capturing changes nothing that is sampled (no in-place change of the queries or KV cache)"""
    model, tok = tiny(handout)
    torch.manual_seed(7)
    on = rollout.generate(model, tok, PROMPTS, n=2, max_new_tokens=16, capture=True)
    torch.manual_seed(7)
    off = rollout.generate(model, tok, PROMPTS, n=2, max_new_tokens=16, capture=False)
    same = on.input_ids.shape == off.input_ids.shape and torch.equal(on.input_ids, off.input_ids)
    expect(same, "the sampled tokens differ with capture on and off (same seed): the capture "
           "must only read query and key, never write to them (the key is the KV cache)")


@check(2, visibility="after_due_date")
def test_bf16_model(capture, handout):
    """the tiny model in bf16: the capture equals bf16 eager attention, softmax in float32"""
    model, _ = tiny(handout, torch.bfloat16)
    ids, mask = padded_batch(model.config.vocab_size)
    got = capture.capture_attention(model, ids, mask, layers=[0])
    expect(got.dtype == torch.float32, f"the captured map is {got.dtype}, expected float32")
    valid = mask.bool()
    for n in range(len(ids)):
        real = got[n][valid[n]][:, valid[n]]  # the rows and columns of real tokens
        expect_rows_sum_to_one(real, model.config.num_attention_heads, f" of sequence {n}")
    # eager returns its float32 softmax rounded to bf16 (2**-9 relative): the tolerance allows that
    expect_close(got, eager(model, ids, mask, [0]), "layer 0 of the bf16 model vs bf16 eager "
                 "attention (Q K^T * scale in bf16, softmax in float32)", atol=4e-3, rtol=0)


def direct_expected(query, key, mask, scale):
    """Mean over heads of softmax(Q K^T * scale) for queries at the last q of k positions, head j
    reading KV head j // (H / Hkv); rows that may attend to nothing are 0."""
    n, h, q, _ = query.shape
    hkv, k = key.shape[1], key.shape[2]
    out = torch.zeros(n, q, k, dtype=torch.float64)
    allowed = torch.ones(k, k, dtype=torch.bool).tril()[k - q :] if mask is None else mask[:, 0]
    allowed = allowed.expand(n, q, k)
    for j in range(h):
        scores = query[:, j].double() @ key[:, j // (h // hkv)].double().mT * scale  # [N, q, k]
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
        out += probs / h
    return out


def direct_inputs(seed: int, n=2, h=4, hkv=2, q=3, k=5, d=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, h, q, d, generator=g), torch.randn(n, hkv, k, d, generator=g)


@check(2, visibility="after_due_date")
def test_queries_are_the_last_positions(capture):
    """add_head_mean: q queries of k keys sit at positions k-q..k-1 (causal), rows written there"""
    query, key = direct_inputs(seed=2)
    attn = torch.zeros(2, 7, 7)
    capture.add_head_mean(attn, query, key, None, 0.7, 1 << 27)
    want = torch.zeros(2, 7, 7, dtype=torch.float64)
    want[:, 2:5, :5] = direct_expected(query, key, None, 0.7)
    expect_close(attn, want, "buffer after adding 3 queries at positions 2-4 over 5 keys (mask "
                 "None: plain causal, scale 0.7, head j reads KV head j // 2)", atol=1e-5, rtol=0)


@check(1, visibility="after_due_date")
def test_mask_and_blocked_rows(capture):
    """add_head_mean: a bool mask (True = may attend); a row that may attend nothing adds 0"""
    query, key = direct_inputs(seed=3, q=4, k=4)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool).tril()
    mask[0, :, :, :2] = False  # sequence 0 is left-padded by 2: rows 0-1 see nothing
    mask[0, :, :2, :] = False
    mask[1, :, 3, 1] = False
    attn = torch.ones(2, 4, 4)  # the buffer already holds another layer's map
    capture.add_head_mean(attn, query, key, mask, 0.35, 1 << 27)
    expect(bool(torch.isfinite(attn).all()), "the buffer holds NaN or inf after a fully masked "
           "row (a left-pad query): such a row adds 0")
    want = 1 + direct_expected(query, key, mask, 0.35)
    overwritten = bool(torch.allclose(attn.double(), want - 1, atol=1e-5, rtol=0))
    expect_close(attn, want, "buffer of ones after adding one masked layer" + (
        ": the ones are gone, the buffer was overwritten (add to it: it holds the other layers)"
        if overwritten else ""), atol=1e-5, rtol=0)
