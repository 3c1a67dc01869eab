"""analyze.py: blocking really blocks, the HTML page is self-contained and escaped, Wilson intervals, the token
classes, answer comparison, and the subcommands end to end on the shipped tiny model."""

import json
import math
import re
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import analyze
from analyze import (FlowView, answer_changed, flow_view, format_overlap, intervene, regenerate, render_html,
                     teacher_forced, token_class, wilson, with_format)
from tasks import ArithmeticTask
from flow import forward_flow, influence_graph, potential, reweight, top_k_mask
from rollout import Rollout

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return analyze.load_model(str(ROOT / "tiny" / "qwen3-arith"))


def chat_ids(tokenizer, prompt: str) -> torch.Tensor:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------------------------------
# Blocking (Must-show 1)
# --------------------------------------------------------------------------------------------------


def test_blocking_every_prompt_token_removes_the_prompt(tiny):
    model, tok = tiny
    # same token length, different numbers and operators
    a, b = chat_ids(tok, "Compute 3+4*2-5."), chat_ids(tok, "Compute 7*1-2+9.")
    assert a.shape == b.shape and not torch.equal(a, b)
    resp = torch.tensor(tok("4*2", add_special_tokens=False)["input_ids"])
    prefixes = [torch.cat([a, resp]), torch.cat([b, resp])]
    prompt_blocked = torch.cat([torch.ones(len(a), dtype=torch.bool), torch.zeros(len(resp), dtype=torch.bool)])

    _, blocked = regenerate(model, tok, prefixes, [prompt_blocked] * 2, max_new_tokens=6, temperature=0)
    _, open_ = regenerate(model, tok, prefixes, [torch.zeros_like(prompt_blocked)] * 2, max_new_tokens=6,
                          temperature=0)
    steps = min(blocked.shape[1], open_.shape[1])
    # with the prompt blocked, both rows see only "4*2" at the same positions: identical logits at every step
    torch.testing.assert_close(blocked[0], blocked[1], atol=1e-5, rtol=0)
    # without blocking the prompt matters
    assert (open_[0, :steps] - open_[1, :steps]).abs().max() > 1.0


def test_blocked_token_contents_are_unread(tiny):
    # Stronger: whatever ids sit at the blocked positions (prompt or response), the logits do not move.
    model, tok = tiny
    p = chat_ids(tok, "Compute 8-3*2+1.")
    resp = torch.tensor(tok("3*2=6\n8-6=2\n", add_special_tokens=False)["input_ids"])
    prefix = torch.cat([p, resp])
    blocked = torch.zeros(len(prefix), dtype=torch.bool)
    blocked[[0, 5, 9, len(p) + 1, len(p) + 4, len(p) + 8]] = True
    other = prefix.clone()
    other[blocked] = torch.tensor(tok("9+77-12", add_special_tokens=False)["input_ids"][:6])
    assert not torch.equal(other, prefix)
    _, la = regenerate(model, tok, [prefix, other], [blocked, blocked], max_new_tokens=5, temperature=0)
    torch.testing.assert_close(la[0], la[1], atol=1e-5, rtol=0)
    _, lb = regenerate(model, tok, [prefix, other], [blocked & False] * 2, max_new_tokens=5, temperature=0)
    assert (lb[0] - lb[1]).abs().max() > 0.1


def test_regenerate_matches_one_forward_with_a_hand_built_4d_mask(tiny):
    # Independent reference: one cached-free forward over prefix + continuation with a 4D boolean mask built by
    # hand (query q reads key k iff k <= q and k is not blocked, or k == q) and positions 0..L-1. Blocking must
    # not renumber positions: HF would count them from a 2D mask with zeros unless position_ids are explicit.
    model, tok = tiny
    prefix = torch.cat([chat_ids(tok, "Compute 6*2+3-4."), torch.tensor(tok("6*2=12\n", add_special_tokens=False)
                                                                        ["input_ids"])])
    blocked = torch.zeros(len(prefix), dtype=torch.bool)
    blocked[[3, 8, len(prefix) - 5, len(prefix) - 3]] = True
    new, logits = regenerate(model, tok, [prefix], [blocked], max_new_tokens=6, temperature=0)
    full = torch.cat([prefix, new[0]])[None]  # [1, L]
    L = full.shape[1]
    blk = torch.cat([blocked, torch.zeros(L - len(prefix), dtype=torch.bool)])
    q, k = torch.arange(L)[:, None], torch.arange(L)[None, :]
    allowed = (k <= q) & (~blk[None, :] | (k == q))  # [L, L]
    with torch.no_grad():
        ref = model(input_ids=full, attention_mask=allowed[None, None], position_ids=torch.arange(L)[None]).logits
    steps = logits.shape[1]
    torch.testing.assert_close(logits[0], ref[0, len(prefix) - 1 : len(prefix) - 1 + steps], atol=1e-4, rtol=0)
    # and the same forward with renumbered positions (what a bare 2D mask would give) is measurably different
    with torch.no_grad():
        shifted = (~blk).long().cumsum(0) - 1
        bad = model(input_ids=full, attention_mask=allowed[None, None], position_ids=shifted.clamp(min=0)[None]).logits
    assert (bad[0, len(prefix) - 1 :] - ref[0, len(prefix) - 1 :]).abs().max() > 1e-2


def test_regenerate_without_blocking_matches_plain_generate_under_left_padding(tiny):
    # positions: rows of different lengths are left-padded; each must continue exactly as generate alone
    model, tok = tiny
    prefixes = [torch.cat([chat_ids(tok, q), torch.tensor(tok(r, add_special_tokens=False)["input_ids"])])
                for q, r in (("Compute 3+4*2-5.", "4*2=8\n"), ("Compute 9*8-8.", "9"))]
    assert len(prefixes[0]) != len(prefixes[1])
    new, _ = regenerate(model, tok, prefixes, [torch.zeros(len(p), dtype=torch.bool) for p in prefixes],
                        max_new_tokens=20, temperature=0)
    for p, got in zip(prefixes, new):
        ref = model.generate(p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long), do_sample=False,
                             max_new_tokens=20, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        assert torch.equal(got, ref[0, len(p):])


def test_regenerate_bad_input(tiny):
    model, tok = tiny
    p = chat_ids(tok, "Compute 1+2.")
    with pytest.raises(ValueError, match="last prefix token"):
        regenerate(model, tok, [p], [torch.ones(len(p), dtype=torch.bool)], 3)
    with pytest.raises(ValueError, match="bool mask"):
        regenerate(model, tok, [p], [torch.zeros(len(p) - 1, dtype=torch.bool)], 3)


# --------------------------------------------------------------------------------------------------
# HTML (Must-show 2 without a browser)
# --------------------------------------------------------------------------------------------------


class Spans(HTMLParser):
    """Collects (class, text) of every <span class="tok ...">, and every src/href attribute."""

    def __init__(self):
        super().__init__()
        self.spans, self.links, self._open = [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [v for k, v in attrs.items() if k in ("src", "href")]
        if tag == "span" and "tok" in (attrs.get("class") or "").split():
            self._open = [attrs["class"].split(), ""]

    def handle_data(self, data):
        if self._open is not None:
            self._open[1] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.spans.append(tuple(self._open))
            self._open = None


HOSTILE = "<script>alert(1)</script>"


def hand_view():
    tokens = ["<|im_start|>", "Q&A", HOSTILE, "\n", "7", "}"]
    return FlowView(tokens=tokens, tau=[0.5, 0.5, 0.3, 0.1, 1.0, 0.0],
                    region=["prompt", "prompt", "response", "response", "answer", "response"],
                    top=[False, False, True, False, True, False],
                    inflow=[[], [(0, 0.2)], [(1, 0.3)], [(2, 0.1)], [(2, 0.4), (3, 0.1)], []],
                    outflow=[[(1, 0.2)], [(2, 0.3)], [(4, 0.4), (3, 0.1)], [(4, 0.1)], [], []], edge_kind="flow")


def test_html_is_self_contained_escaped_and_marks_regions():
    view = hand_view()
    page = render_html(view, title=HOSTILE)
    parser = Spans()
    parser.feed(page)
    # no external resource of any kind
    assert parser.links == [] and not re.search(r"https?://", page) and "<link" not in page
    # the hostile token renders as text: the raw tag never appears, its escaped form exactly once in the
    # token spans (and once more in the escaped title/heading)
    assert "<script>alert" not in page
    assert [t for _, t in parser.spans].count(HOSTILE) == 1
    # each token once, in order, as displayed (newline shown as a mark)
    assert [t for _, t in parser.spans] == ["<|im_start|>", "Q&A", HOSTILE, "\u21b5", "7", "}"]
    classes = [c for c, _ in parser.spans]
    assert [("top" in c) for c in classes] == view.top
    assert [next(r for r in ("prompt", "response", "answer") if r in c) for c in classes] == view.region
    # the inline JSON parses back to the edges (and carries no token text)
    data = json.loads(re.search(r'<script type="application/json" id="flow-data">(.*?)</script>', page, re.S)[1])
    assert data["inflow"][4] == [[2, 0.4], [3, 0.1]] and data["outflow"][2] == [[4, 0.4], [3, 0.1]]
    assert "alert" not in json.dumps(data)


def test_png_heat_map_and_token_chart_take_latex_like_tokens(tmp_path):
    view = hand_view()
    view.tokens[1] = "$\\frac{$"  # mathtext would fail to parse this
    analyze.render_png(view, tmp_path / "h.png")
    stats = analyze.TokenStats(high=Counter({"$\\frac{$": 3, "=": 2}), low=Counter({"$": 1}), all=Counter(),
                               responses=1)
    analyze.tokens_chart(stats, tmp_path / "c.png")
    for name in ("h.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_json_for_script_cannot_close_the_tag():
    s = analyze._json_for_script({"x": "</script><b>&"})
    assert "<" not in s and ">" not in s and "&" not in s
    assert json.loads(s) == {"x": "</script><b>&"}


class Decoder:
    def decode(self, ids):
        return "".join(f"t{i}" for i in ids)


def test_flow_view_on_a_hand_made_graph_matches_the_stepwise_flow():
    # T = 6: pad, 2 prompt tokens, 3 response tokens, the last one the answer. Attention rows sum to 1.
    attn = torch.tensor([
        [0, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0],
        [0, .5, .5, 0, 0, 0],
        [0, .2, .6, .2, 0, 0],
        [0, .1, .1, .7, .1, 0],
        [0, .3, .1, .1, .5, 0],
    ])[None]
    prompt = torch.tensor([[0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    response = torch.tensor([[0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    answer = torch.tensor([[0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    ro = Rollout(input_ids=torch.arange(6)[None], attention_mask=(prompt | response).long(), prompt_mask=prompt,
                 response_mask=response, answer_mask=answer, texts=["x"], lengths=torch.tensor([3]), attn=attn)
    view = flow_view(ro, 0, Decoder(), ratio=0.4, edges="flow", n_edges=2)
    assert view.tokens == ["t1", "t2", "t3", "t4", "t5"]  # padding dropped
    assert view.region == ["prompt", "prompt", "response", "response", "answer"]
    # independent path: potential -> reweight -> forward_flow on the unpadded graph
    W = influence_graph(attn[0, 1:, 1:].double())
    h = potential(W, answer[0, 1:])
    Wp = reweight(W, h, answer[0, 1:])
    f = forward_flow(Wp, prompt[0, 1:])
    phi = f[:, None] * Wp  # [5, 5]
    # 40% of 3 response tokens = round(1.2) = 1: the response token with the largest tau (= 2 f) is outlined
    assert view.top == top_k_mask(f, response[0, 1:], 0.4).tolist() and sum(view.top) == 1
    for k in range(5):
        col = [(i, phi[i, k].item()) for i in phi[:, k].argsort(descending=True)[:2].tolist() if phi[i, k] > 0]
        assert [i for i, _ in view.inflow[k]] == [i for i, _ in col]
        assert all(math.isclose(a, b, rel_tol=1e-9) for (_, a), (_, b) in zip(view.inflow[k], col))
    assert view.outflow[4] == []  # the answer sends its flow to the sink only


# --------------------------------------------------------------------------------------------------
# Wilson intervals, token classes, answers
# --------------------------------------------------------------------------------------------------


def test_wilson_known_values():
    # 5 / 10: centre (0.5 + 1.9208/10) / 1.38415 = 0.5, half 1.96 * sqrt(0.025 + 0.009604) / 1.38415 = 0.2634
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


@pytest.mark.parametrize("token, cls", [
    ("\n", "structural"), (" ", "structural"), ("=", "structural"), ("+", "structural"), ("*", "structural"),
    ("\\", "structural"), ("boxed", "structural"), ("\\boxed", "structural"), ("{", "structural"),
    ("}", "structural"), (".", "structural"), (" $", "structural"), ("<|im_end|>", "structural"),
    ("\\frac", "structural"), ("7", "content"), ("12", "content"), ("an", "content"), (" the", "content"),
    ("x", "content"), ("t\n", "content"), ("istan", "content"),
])
def test_token_class(token, cls):
    assert token_class(token) == cls


def test_truncate_and_select_follows_the_protocol():
    # T = 16: 3 prompt tokens, response at 3..14 (12 tokens), answer at 12..13, EOS at 14, pad at 15.
    # tau rises with position except two spikes at 4 and 6, so high / recent / low must differ.
    T, n = 16, 200
    response = torch.zeros(n, T, dtype=torch.bool)
    response[:, 3:15] = True
    answer = torch.zeros(n, T, dtype=torch.bool)
    answer[:, 12:14] = True
    tau = torch.linspace(0.1, 0.2, T).expand(n, T).clone()
    tau[:, 4], tau[:, 6] = 5.0, 4.0
    rng, gen = __import__("random").Random(0), torch.Generator().manual_seed(0)
    cut, sel = analyze.truncate_and_select(tau, response, answer, 0.2, rng, gen)
    # 20%: round(0.2 m) >= 1 needs m >= 3 candidates, plus the last kept token -> keep 4..9 response tokens
    assert analyze._min_kept(0.2) == 4
    assert cut.min() == 3 + 4 and cut.max() == 12  # both ends of the range are drawn in 200 rows
    for i in range(n):
        m = int(cut[i]) - 3 - 1  # candidates: response tokens 3 .. cut-2
        k = math.floor(0.2 * m + 0.5)
        cand = set(range(3, int(cut[i]) - 1))
        for name in ("high", "low", "random", "recent"):
            picked = set(sel[name][i].nonzero().flatten().tolist())
            assert len(picked) == k and picked <= cand, (name, i)
        assert set(sel["recent"][i].nonzero().flatten().tolist()) == set(range(int(cut[i]) - 1 - k, int(cut[i]) - 1))
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


def test_load_examples_from_jsonl(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "What is 2+2?", "gold": "4"}\n\n{"prompt": "Name a prime."}\n')
    ex = analyze.load_examples(None, str(f), problems=10, seed=0)
    assert [(e.prompt, e.gold) for e in ex] == [("What is 2+2?", "4"), ("Name a prime.", None)]
    assert analyze.load_examples("Hi", None, 5, 0)[0].prompt == "Hi"
    f.write_text('{"prompt": "ok"}\n{"question": "no prompt field"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2"):
        analyze.load_examples(None, str(f), 10, 0)


def test_with_format():
    r = "4*2=8\n3+8=11\n\\boxed{11}"
    assert with_format(r, "x={a}") == "4*2=8\n3+8=11\n\\boxed{x=11}"
    assert with_format(r, "{a}.") == "4*2=8\n3+8=11\n\\boxed{11.}"
    with pytest.raises(ValueError, match="no complete"):
        with_format("4*2=8", "{a}")


# --------------------------------------------------------------------------------------------------
# End to end on the tiny model
# --------------------------------------------------------------------------------------------------


def test_teacher_forced_masks(tiny):
    model, tok = tiny
    ro = teacher_forced(model, tok, ["Compute 4*2.", "Compute 3+4*2-5."], ["4*2=8\n\\boxed{8}", "4*2=8\n\\boxed{x=16}"])
    ids = ro.input_ids.cpu()
    for r, inside in ((0, "8"), (1, "x=16")):
        assert tok.decode(ids[r, ro.answer_mask[r]]) == inside
        assert tok.decode(ids[r, ro.response_mask[r]], skip_special_tokens=True).endswith("}")
        assert ids[r, ro.response_mask[r]][-1] == tok.eos_token_id
    assert not (ro.prompt_mask & ro.response_mask).any()
    assert ro.attn.shape == (2, ids.shape[1], ids.shape[1])
    assert ro.attn[0, ~ro.attention_mask[0].bool()].abs().sum() == 0  # padding rows are 0


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
    # greedy control: truncating and regenerating with nothing blocked reproduces the greedy response
    assert res["none"].changed == 0 and res["none"].reversed == 0
    # batching does not change what is measured (greedy: the truncation points come from the same stream)
    res3, skipped3 = intervene(model, tok, examples, seed=0, temperature=0, max_new_tokens=48, batch=3)
    assert skipped3 == skipped and all(vars(res3[c]) == vars(res[c]) for c in ("high", "low", "recent", "none"))


def test_format_overlap_end_to_end(tiny):
    model, tok = tiny
    formats = {"answer-only": "{a}", "same": "{a}", "equation": "x={a}"}
    out = format_overlap(model, tok, ArithmeticTask().examples(3, seed=5), ratios=(0.4, 1.0), formats=formats,
                         max_new_tokens=48)
    assert out["responses"] == 3 and set(out) == {"responses", "same", "equation"}
    # the unchanged answer form gives the same flow, hence the same sets
    assert out["same"][0.4] == {"overlap": 1.0, "jaccard": 1.0}
    assert out["equation"][1.0] == {"overlap": 1.0, "jaccard": 1.0}  # every shared token is in both full sets
    assert 0 <= out["equation"][0.4]["jaccard"] <= out["equation"][0.4]["overlap"] <= 1


def test_screenshot_renders_in_headless_chromium(tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed")
    page, png = tmp_path / "v.html", tmp_path / "v.png"
    page.write_text(render_html(hand_view()), encoding="utf-8")
    analyze.screenshot(page, png, 800, 400, pin=4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
