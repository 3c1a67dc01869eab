"""rollout.py: captured attention == eager output_attentions, same sampling, masks, clear errors.

Tiny random Qwen3 / Llama models (float32, GQA: 4 query heads over 2 KV heads) and a byte-level BPE
tokenizer trained on the spot with a ChatML-style chat template.
"""

import copy

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (LlamaConfig, LlamaForCausalLM, LogitsProcessor, LogitsProcessorList,
                          PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM)

import capture
import rollout
from capture import capture_attention, default_layers
from rollout import _char_span_to_tokens, generate

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "What is 6 times 7? The answer is \\boxed{42}.",
    "Compute 12 + 30. So the result is \\boxed{42} and we are done.",
    "Solve x + 1 = 3. Then x = 2, hence \\boxed{2}.",
    "Using the numbers 3, 5, 7 make 22: 3 * 5 + 7 = 22.",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE)


def tiny(arch: str, vocab_size: int, **extra):
    torch.manual_seed(0)
    shape = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 max_position_embeddings=256)
    if arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**shape, **extra))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape, **extra))
    model.set_attn_implementation("sdpa")
    return model.eval()


def render(tokenizer, prompt: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def prompt_length(tokenizer, prompt: str) -> int:
    return len(tokenizer(render(tokenizer, prompt), add_special_tokens=False).input_ids)


def eager_reference(model, input_ids, attention_mask, layers):
    """Independent slow path: eager output_attentions, mean over layers and heads.

    Padding rows and columns are zeroed.
    """
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    model.set_attn_implementation("eager")
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation("sdpa")
    mean = torch.stack([out.attentions[layer] for layer in layers]).mean(dim=(0, 2))  # [N, T, T]
    valid = attention_mask.bool()
    return mean * (valid[:, :, None] & valid[:, None, :])


def padded_batch(vocab_size: int):
    """Three sequences: left-padded by 3; unpadded; left-padded by 1 and right-padded by 2.

    The right padding stands for pad after EOS.
    """
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, vocab_size, (3, 12), generator=g)
    attention_mask = torch.ones(3, 12, dtype=torch.long)
    attention_mask[0, :3] = 0
    attention_mask[2, :1] = 0
    attention_mask[2, -2:] = 0
    return input_ids, attention_mask


class ForceTokens(LogitsProcessor):
    """Test-only scripted 'sampling': row r emits script[r][j] at step j, while it lasts."""

    def __init__(self, prompt_width: int, scripts: dict[int, list[int]]):
        self.width, self.scripts = prompt_width, scripts

    def __call__(self, input_ids, scores):
        j = input_ids.shape[1] - self.width
        for row, script in self.scripts.items():
            if j < len(script):
                scores[row] = float("-inf")
                scores[row, script[j]] = 0.0
        return scores


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("layers", [None, [0, 5], [3]])
def test_capture_attention_matches_eager(arch, layers):
    model = tiny(arch, vocab_size=100)
    input_ids, attention_mask = padded_batch(100)
    got = capture_attention(model, input_ids, attention_mask, layers=layers)
    want = eager_reference(model, input_ids, attention_mask, layers or default_layers(6))
    assert got.dtype == torch.float32 and got.shape == (3, 12, 12)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # Padding rows/columns are exactly 0; each valid row sums to 1 (a distribution over valid keys).
    assert (got[0, :3] == 0).all() and (got[0, :, :3] == 0).all() and (got[2, -2:] == 0).all()
    valid = attention_mask.bool()
    torch.testing.assert_close(got.sum(-1)[valid], torch.ones(int(valid.sum())), atol=1e-5, rtol=0)
    assert model.config._attn_implementation == "sdpa"  # stock path restored


def test_capture_attention_bf16_follows_eager_numerics():
    # Layer 0 sees the same bf16 inputs in both paths and scores are computed as eager does (bf16
    # Q K^T * scale, float32 softmax); eager returns its weights rounded to bf16 (up to 2**-9
    # relative), hence atol 2e-3. A wrong layer or head grouping is off by ~0.4 here.
    model = tiny("qwen3", vocab_size=100).to(torch.bfloat16)
    input_ids, attention_mask = padded_batch(100)
    got = capture_attention(model, input_ids, attention_mask, layers=[0])
    want = eager_reference(model, input_ids, attention_mask, [0]).float()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)
    # The softmax runs in float32: rows sum to 1 to float32 rounding. A softmax in bf16 passes the
    # comparison above (its rounding is eager's) but its rows are off by up to 2**-9.
    valid = attention_mask.bool()
    sums = got.sum(-1)[valid]
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)


def test_capture_attention_chunking_is_exact():
    model = tiny("qwen3", vocab_size=100)
    input_ids, attention_mask = padded_batch(100)
    # chunk_bytes=1 forces one query row per chunk.
    one_row = capture_attention(model, input_ids, attention_mask, chunk_bytes=1)
    whole = capture_attention(model, input_ids, attention_mask)
    torch.testing.assert_close(one_row, whole, atol=1e-6, rtol=0)
    # Without padding, transformers passes no mask (plain causal): the chunks rebuild the causal
    # rows themselves.
    one_row = capture_attention(model, input_ids[1:2], attention_mask[1:2], chunk_bytes=1)
    want = eager_reference(model, input_ids[1:2], attention_mask[1:2], default_layers(6))
    torch.testing.assert_close(one_row, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_generate_capture_matches_eager_on_final_sequences(arch, tokenizer):
    model = tiny(arch, vocab_size=len(tokenizer))
    prompts = ["What is 6 times 7?", "Compute 12 + 30 and explain the steps carefully, please."]
    eos = tokenizer.eos_token_id
    width = max(prompt_length(tokenizer, p) for p in prompts)
    # Row 0 ends with EOS at its 4th token (then pads), the others run to max_new_tokens=9.
    force = ForceTokens(width, {0: [5, 6, 7, eos]})
    torch.manual_seed(0)
    # suppress EOS elsewhere so that only row 0 stops early
    out = generate(model, tokenizer, prompts, n=2, max_new_tokens=9,
                   logits_processor=LogitsProcessorList([force]), suppress_tokens=[eos])
    assert out.input_ids.shape == (4, width + 9)
    assert out.lengths.tolist() == [4, 9, 9, 9]
    want = eager_reference(model, out.input_ids, out.attention_mask, default_layers(6))
    torch.testing.assert_close(out.attn, want, atol=1e-5, rtol=0)
    # The last token of every sequence has its full row (the extra cached step): it sums to 1.
    # [N] index of the last real token
    last = out.attention_mask.shape[1] - 1 - out.attention_mask.flip(1).argmax(1)
    row_sums = out.attn[torch.arange(4), last].sum(-1)  # [N]
    torch.testing.assert_close(row_sums, torch.ones(4), atol=1e-5, rtol=0)
    # Pad after EOS (row 0) and left pad (row 0/1: the shorter prompt) have zero rows and columns.
    assert (out.attn[0, width + 4 :] == 0).all() and (out.attn[0, :, width + 4 :] == 0).all()
    left = width - int(out.prompt_mask[0].sum())
    assert left > 0 and (out.attn[0, :left] == 0).all() and (out.attn[0, :, :left] == 0).all()


def test_generate_final_row_with_single_new_token(tokenizer):
    model = tiny("qwen3", vocab_size=len(tokenizer))
    out = generate(model, tokenizer, ["Solve x + 1 = 3."], n=1, max_new_tokens=1)
    want = eager_reference(model, out.input_ids, out.attention_mask, default_layers(6))
    torch.testing.assert_close(out.attn, want, atol=1e-5, rtol=0)
    assert out.attn[0, -1].sum().item() == pytest.approx(1.0, abs=1e-5)


def test_sampling_unchanged_by_capture(tokenizer):
    model = tiny("qwen3", vocab_size=len(tokenizer))
    prompts = ["What is 6 times 7?", "Solve x + 1 = 3. Then x = 2."]
    torch.manual_seed(123)
    on = generate(model, tokenizer, prompts, n=3, max_new_tokens=16, capture=True)
    torch.manual_seed(123)
    off = generate(model, tokenizer, prompts, n=3, max_new_tokens=16, capture=False)
    assert off.attn is None and on.attn is not None
    assert torch.equal(on.input_ids, off.input_ids) and on.texts == off.texts
    # Table 6: the capture's share of generation is timed (and is 0 without capture)
    assert on.capture_seconds > 0 and off.capture_seconds == 0.0
    # Samples of one prompt are grouped: rows 0..2 share prompt 0, rows 3..5 prompt 1.
    assert torch.equal(on.input_ids[0, on.prompt_mask[0]], on.input_ids[2, on.prompt_mask[2]])
    assert not torch.equal(on.prompt_mask[0], on.prompt_mask[3])


def test_prompt_and_answer_masks(tokenizer):
    model = tiny("qwen3", vocab_size=len(tokenizer))
    prompts = ["What is 6 times 7?", "Compute 12 + 30 and explain the steps."]
    rendered = [render(tokenizer, p) for p in prompts]
    width = max(prompt_length(tokenizer, p) for p in prompts)
    # Scripted responses, each piece encoded alone so the boxed answer "42" has its own tokens.
    pieces = [tokenizer.encode(s, add_special_tokens=False)
              for s in ("The answer is \\boxed{", "42", "}.")]
    script = pieces[0] + pieces[1] + pieces[2] + [tokenizer.eos_token_id]
    # response positions of "42"
    answer_at = list(range(len(pieces[0]), len(pieces[0]) + len(pieces[1])))
    force = ForceTokens(width, {0: script, 1: script})
    out = generate(model, tokenizer, prompts, n=1, max_new_tokens=len(script) + 3, capture=False,
                   logits_processor=LogitsProcessorList([force]))
    for row in range(2):
        # The prompt mask covers exactly the rendered chat template (no padding).
        prompt_ids = out.input_ids[row, out.prompt_mask[row]]
        assert tokenizer.decode(prompt_ids) == rendered[row]
        assert out.prompt_mask[row].sum() == prompt_length(tokenizer, prompts[row])
        # Response: the script through EOS; the answer mask is exactly the tokens of "42".
        assert out.input_ids[row, out.response_mask[row]].tolist() == script
        assert out.texts[row] == "The answer is \\boxed{42}."
        assert out.answer_mask[row].nonzero().squeeze(1).tolist() == [width + j for j in answer_at]
        assert tokenizer.decode(out.input_ids[row, out.answer_mask[row]]) == "42"
        assert not (out.answer_mask[row] & ~out.response_mask[row]).any()
    # the shorter prompt was left-padded
    assert out.prompt_mask[0].sum() != out.prompt_mask[1].sum()


def test_answer_mask_without_a_box(tokenizer):
    """No box: no answer mask by default (the paper's answer region; flow credit then leaves the
    row at gamma 1), the last line with answer_fallback="last_line"."""
    model = tiny("qwen3", vocab_size=len(tokenizer))
    width = prompt_length(tokenizer, "What is 6 times 7?")
    script = tokenizer.encode("The answer is 42.", add_special_tokens=False)
    script += [tokenizer.eos_token_id]
    kw = dict(n=1, max_new_tokens=len(script) + 1, capture=False)
    out = generate(model, tokenizer, ["What is 6 times 7?"], **kw,
                   logits_processor=LogitsProcessorList([ForceTokens(width, {0: script})]))
    assert out.texts == ["The answer is 42."] and not out.answer_mask.any()
    out = generate(model, tokenizer, ["What is 6 times 7?"], **kw, answer_fallback="last_line",
                   logits_processor=LogitsProcessorList([ForceTokens(width, {0: script})]))
    assert tokenizer.decode(out.input_ids[0, out.answer_mask[0]]) == "The answer is 42."


class CharTokens:
    """A stand-in tokenizer whose token ids index a list of strings (hand-checkable offsets)."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids)


def test_char_span_to_tokens_hand_cases():
    tok = CharTokens(["ab", "cd", "ef"])  # token j covers chars [2j, 2j + 2) of "abcdef"
    ids = [0, 1, 2]
    assert _char_span_to_tokens(tok, ids, 2, 4) == (1, 2)  # "cd" is exactly token 1
    assert _char_span_to_tokens(tok, ids, 3, 5) == (1, 3)  # "de" overlaps tokens 1 and 2
    assert _char_span_to_tokens(tok, ids, 0, 6) == (0, 3)
    assert _char_span_to_tokens(tok, ids, 5, 6) == (2, 3)
    assert _char_span_to_tokens(tok, ids, 4, 4) == (0, 0)  # empty span: no tokens


def test_default_layers_middle_third():
    assert default_layers(36) == list(range(12, 24))  # 12..23, end excluded
    assert default_layers(6) == [2, 3]
    assert default_layers(2) == [0]
    with pytest.raises(ValueError, match="middle third"):
        default_layers(1)  # range(0, 0)


def test_bad_inputs_raise_clear_errors(tokenizer):
    model = tiny("qwen3", vocab_size=100)
    input_ids, attention_mask = padded_batch(100)
    with pytest.raises(ValueError, match="layers must be"):
        capture_attention(model, input_ids, attention_mask, layers=[6])
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        capture_attention(model, input_ids, attention_mask * 2)
    with pytest.raises(ValueError, match="prompts must be"):
        generate(model, tokenizer, "What is 6 times 7?")
    model.set_attn_implementation("eager")
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        capture_attention(model, input_ids, attention_mask)


def test_sliding_window_layer_is_refused_and_state_restored():
    model = tiny("qwen3", vocab_size=100, use_sliding_window=True, sliding_window=4,
                 max_window_layers=0)
    assert model.config.layer_types[3] == "sliding_attention"
    input_ids, attention_mask = padded_batch(100)
    with pytest.raises(NotImplementedError, match="sliding-window"):
        capture_attention(model, input_ids, attention_mask, layers=[3])
    assert model.config._attn_implementation == "sdpa" and capture._ACTIVE is None


def test_layer_bypassing_the_interface_is_detected():
    model = tiny("qwen3", vocab_size=100)
    # Layer 3 keeps its own config copy that says "sdpa", so it never calls the capture function.
    model.model.layers[3].self_attn.config = copy.copy(model.config)
    input_ids, attention_mask = padded_batch(100)
    with pytest.raises(RuntimeError, match="does not .*go through"):
        capture_attention(model, input_ids, attention_mask, layers=[2, 3])


def test_rows_selects_every_field_of_the_same_rows():
    n, t = 3, 5
    r = rollout.Rollout(input_ids=torch.arange(n * t).view(n, t),
                        attention_mask=torch.ones(n, t, dtype=torch.long),
                        prompt_mask=torch.zeros(n, t, dtype=torch.bool),
                        response_mask=torch.eye(n, t, dtype=torch.bool),
                        answer_mask=torch.zeros(n, t, dtype=torch.bool), texts=["a", "b", "c"],
                        lengths=torch.tensor([4, 5, 6]),
                        attn=torch.arange(n * t * t, dtype=torch.float32).view(n, t, t),
                        layers=[1, 2])
    sub = r.rows(torch.tensor([2, 0]))
    assert sub.texts == ["c", "a"] and sub.lengths.tolist() == [6, 4] and sub.layers == [1, 2]
    assert torch.equal(sub.input_ids, r.input_ids[[2, 0]]) and torch.equal(sub.attn, r.attn[[2, 0]])
    assert torch.equal(sub.response_mask, r.response_mask[[2, 0]])
    assert r.rows(torch.tensor([], dtype=torch.long)).input_ids.shape == (0, t)


def test_generate_passes_the_cache_by_the_name_transformers_expects(tokenizer, capfd):
    """transformers 5.24 renamed past_key_values to cache; the old name warns on every command."""
    import warnings

    model = tiny("qwen3", vocab_size=len(tokenizer))
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = generate(model, tokenizer, ["Solve x + 1 = 3."], n=2, max_new_tokens=4)
    assert out.attn is not None  # the capture ran its extra cached step
    said = [str(w.message) for w in caught] + capfd.readouterr().err.splitlines()
    assert not [line for line in said if "past_key_values" in line], said
