"""analysis/intervene.py: blocking really blocks, Wilson intervals, the truncation protocol, answer
comparison, and Table 1 end to end on the shipped tiny model."""

import math
import random
from pathlib import Path

import pytest
import torch

from analysis.intervene import (_min_kept, answer_changed, intervene, regenerate,
                                truncate_and_select, wilson)
from eval import load_model
from tasks import ArithmeticTask

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return load_model(str(ROOT / "tiny" / "qwen3-arith"))


def chat_ids(tokenizer, prompt: str) -> torch.Tensor:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])


def ids_of(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------------------------------
# Blocking (Must-show 1)
# --------------------------------------------------------------------------------------------------


def test_blocking_every_prompt_token_removes_the_prompt(tiny):
    model, tok = tiny
    # same token length, different numbers and operators
    a, b = chat_ids(tok, "Compute 3+4*2-5."), chat_ids(tok, "Compute 7*1-2+9.")
    assert a.shape == b.shape and not torch.equal(a, b)
    resp = ids_of(tok, "4*2")
    prefixes = [torch.cat([a, resp]), torch.cat([b, resp])]
    prompt_blocked = torch.cat([torch.ones(len(a), dtype=torch.bool),
                                torch.zeros(len(resp), dtype=torch.bool)])

    _, blocked = regenerate(model, tok, prefixes, [prompt_blocked] * 2, max_new_tokens=6,
                            temperature=0)
    _, open_ = regenerate(model, tok, prefixes, [torch.zeros_like(prompt_blocked)] * 2,
                          max_new_tokens=6, temperature=0)
    steps = min(blocked.shape[1], open_.shape[1])
    # with the prompt blocked, both rows see only "4*2" at the same positions: identical logits at
    # every step
    torch.testing.assert_close(blocked[0], blocked[1], atol=1e-5, rtol=0)
    # without blocking the prompt matters
    assert (open_[0, :steps] - open_[1, :steps]).abs().max() > 1.0


def test_blocked_token_contents_are_unread(tiny):
    # Stronger: whatever ids sit at the blocked positions (prompt or response), the logits do not
    # move.
    model, tok = tiny
    p = chat_ids(tok, "Compute 8-3*2+1.")
    resp = ids_of(tok, "3*2=6\n8-6=2\n")
    prefix = torch.cat([p, resp])
    blocked = torch.zeros(len(prefix), dtype=torch.bool)
    blocked[[0, 5, 9, len(p) + 1, len(p) + 4, len(p) + 8]] = True
    other = prefix.clone()
    other[blocked] = ids_of(tok, "9+77-12")[:6]
    assert not torch.equal(other, prefix)
    _, la = regenerate(model, tok, [prefix, other], [blocked, blocked], max_new_tokens=5,
                       temperature=0)
    torch.testing.assert_close(la[0], la[1], atol=1e-5, rtol=0)
    _, lb = regenerate(model, tok, [prefix, other], [blocked & False] * 2, max_new_tokens=5,
                       temperature=0)
    assert (lb[0] - lb[1]).abs().max() > 0.1


def test_regenerate_matches_one_forward_with_a_hand_built_4d_mask(tiny):
    # Independent reference: one cached-free forward over prefix + continuation with a 4D boolean
    # mask built by hand (query q reads key k iff k <= q and k is not blocked, or k == q) and
    # positions 0..L-1. Blocking must not renumber positions: HF would count them from a 2D mask
    # with zeros unless position_ids are explicit.
    model, tok = tiny
    prefix = torch.cat([chat_ids(tok, "Compute 6*2+3-4."), ids_of(tok, "6*2=12\n")])
    blocked = torch.zeros(len(prefix), dtype=torch.bool)
    blocked[[3, 8, len(prefix) - 5, len(prefix) - 3]] = True
    new, logits = regenerate(model, tok, [prefix], [blocked], max_new_tokens=6, temperature=0)
    full = torch.cat([prefix, new[0]])[None]  # [1, L]
    L = full.shape[1]
    blk = torch.cat([blocked, torch.zeros(L - len(prefix), dtype=torch.bool)])
    q, k = torch.arange(L)[:, None], torch.arange(L)[None, :]
    allowed = (k <= q) & (~blk[None, :] | (k == q))  # [L, L]
    with torch.no_grad():
        ref = model(input_ids=full, attention_mask=allowed[None, None],
                    position_ids=torch.arange(L)[None]).logits
    steps = logits.shape[1]
    torch.testing.assert_close(logits[0], ref[0, len(prefix) - 1 : len(prefix) - 1 + steps],
                               atol=1e-4, rtol=0)
    # and the same forward with renumbered positions (what a bare 2D mask would give) is measurably
    # different
    with torch.no_grad():
        shifted = (~blk).long().cumsum(0) - 1
        bad = model(input_ids=full, attention_mask=allowed[None, None],
                    position_ids=shifted.clamp(min=0)[None]).logits
    assert (bad[0, len(prefix) - 1 :] - ref[0, len(prefix) - 1 :]).abs().max() > 1e-2


def test_regenerate_without_blocking_matches_plain_generate_under_left_padding(tiny):
    # positions: rows of different lengths are left-padded; each must continue exactly as generate
    # alone
    model, tok = tiny
    prefixes = [torch.cat([chat_ids(tok, q), ids_of(tok, r)])
                for q, r in (("Compute 3+4*2-5.", "4*2=8\n"), ("Compute 9*8-8.", "9"))]
    assert len(prefixes[0]) != len(prefixes[1])
    new, _ = regenerate(model, tok, prefixes,
                        [torch.zeros(len(p), dtype=torch.bool) for p in prefixes],
                        max_new_tokens=20, temperature=0)
    for p, got in zip(prefixes, new):
        ref = model.generate(p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             do_sample=False, max_new_tokens=20, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        assert torch.equal(got, ref[0, len(p):])


def test_regenerate_bad_input(tiny):
    model, tok = tiny
    p = chat_ids(tok, "Compute 1+2.")
    with pytest.raises(ValueError, match="last prefix token"):
        regenerate(model, tok, [p], [torch.ones(len(p), dtype=torch.bool)], 3)
    with pytest.raises(ValueError, match="bool mask"):
        regenerate(model, tok, [p], [torch.zeros(len(p) - 1, dtype=torch.bool)], 3)


# --------------------------------------------------------------------------------------------------
# Wilson intervals, the protocol, answers
# --------------------------------------------------------------------------------------------------


def test_wilson_known_values():
    # 5 / 10: centre (0.5 + 1.9208/10) / 1.38415 = 0.5,
    # half 1.96 * sqrt(0.025 + 0.009604) / 1.38415 = 0.2634
    lo, hi = wilson(5, 10)
    assert math.isclose(lo, 0.2366, abs_tol=1e-4) and math.isclose(hi, 0.7634, abs_tol=1e-4)
    # 0 / 10: lower 0, upper z^2 / (n + z^2) = 3.8415 / 13.8415 = 0.2775
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and math.isclose(hi, 0.2775, abs_tol=1e-4)
    # 10 / 10 mirrors 0 / 10
    lo, hi = wilson(10, 10)
    assert math.isclose(lo, 1 - 0.2775, abs_tol=1e-4) and hi == 1.0
    with pytest.raises(ValueError):
        wilson(3, 0)
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_truncate_and_select_follows_the_protocol():
    # T = 16: 3 prompt tokens, response at 3..14 (12 tokens), answer at 12..13, EOS at 14, pad at
    # 15. tau rises with position except two spikes at 4 and 6, so high / recent / low must differ.
    T, n = 16, 200
    response = torch.zeros(n, T, dtype=torch.bool)
    response[:, 3:15] = True
    answer = torch.zeros(n, T, dtype=torch.bool)
    answer[:, 12:14] = True
    tau = torch.linspace(0.1, 0.2, T).expand(n, T).clone()
    tau[:, 4], tau[:, 6] = 5.0, 4.0
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    cut, sel = truncate_and_select(tau, response, answer, 0.2, rng, gen)
    # 20%: round(0.2 m) >= 1 needs m >= 3 candidates, plus the last kept token -> keep 4..9
    # response tokens
    assert _min_kept(0.2) == 4
    assert cut.min() == 3 + 4 and cut.max() == 12  # both ends of the range are drawn in 200 rows
    for i in range(n):
        m = int(cut[i]) - 3 - 1  # candidates: response tokens 3 .. cut-2
        k = math.floor(0.2 * m + 0.5)
        cand = set(range(3, int(cut[i]) - 1))
        for name in ("high", "low", "random", "recent"):
            picked = set(sel[name][i].nonzero().flatten().tolist())
            assert len(picked) == k and picked <= cand, (name, i)
        recent = set(range(int(cut[i]) - 1 - k, int(cut[i]) - 1))
        assert set(sel["recent"][i].nonzero().flatten().tolist()) == recent
        # slow reference: sort the candidates by tau (ties cannot occur here)
        by_tau = sorted(cand, key=lambda p: float(tau[i, p]))
        assert set(sel["low"][i].nonzero().flatten().tolist()) == set(by_tau[:k])
        assert set(sel["high"][i].nonzero().flatten().tolist()) == set(by_tau[::-1][:k])
        assert k == 0 or 4 in set(by_tau[::-1][:k])  # the spike is always picked first
    assert not sel["none"].any()
    # the random sets differ between rows (not always the same positions)
    assert len({tuple(sel["random"][i].nonzero().flatten().tolist()) for i in range(n)}) > 5


def test_answer_changed_hand_cases():
    assert not answer_changed("a\n\\boxed{6}", "b\n\\boxed{6}")
    assert answer_changed("\\boxed{6}", "\\boxed{7}")
    assert answer_changed("\\boxed{6}", "no answer")  # extraction failed on one side
    assert not answer_changed("none here", "nor here")
    assert not answer_changed("\\boxed{6}", "\\boxed{6.0}")  # mathematically equal
    assert answer_changed("\\boxed{-8}", "\\boxed{8}")


# --------------------------------------------------------------------------------------------------
# End to end on the tiny model
# --------------------------------------------------------------------------------------------------


def test_intervene_end_to_end(tiny):
    model, tok = tiny
    examples = ArithmeticTask().examples(4, seed=3)
    res, skipped = intervene(model, tok, examples, seed=0, temperature=0, max_new_tokens=48)
    assert set(res) == {"high", "low", "random", "recent", "none"}
    for c in res.values():
        assert c.n == 4 - skipped > 0 and c.scored == c.n
        assert c.reversed == c.broke + c.fixed
        for k, n in ((c.changed, c.n), (c.reversed, c.scored)):
            lo, hi = wilson(k, n)
            assert 0 <= lo <= k / n <= hi <= 1
    # greedy control: truncating and regenerating with nothing blocked reproduces the greedy
    # response
    assert res["none"].changed == 0 and res["none"].reversed == 0
    # batching does not change what is measured (greedy: the truncation points come from the same
    # stream)
    res3, skipped3 = intervene(model, tok, examples, seed=0, temperature=0, max_new_tokens=48,
                               batch=3)
    assert skipped3 == skipped
    assert all(vars(res3[c]) == vars(res[c]) for c in ("high", "low", "recent", "none"))


def test_intervene_skips_responses_without_a_box(tiny):
    """A response cut off before its \\boxed{} has no answer to compare: skipped, whatever answer
    region rollout falls back to (here the truncated last line)."""
    model, tok = tiny
    examples = ArithmeticTask().examples(4, seed=3)
    # 20 new tokens: one greedy response closes its box, three stop inside "\\boxed{-..."
    res, skipped = intervene(model, tok, examples, seed=0, temperature=0, max_new_tokens=20)
    assert skipped == 3 and all(c.n == 1 for c in res.values())
    with pytest.raises(ValueError, match=r"no response has a complete \\boxed\{\} answer"):
        intervene(model, tok, examples, seed=0, temperature=0, max_new_tokens=12)
