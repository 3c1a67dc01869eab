"""analysis/view.py: the HTML page is self-contained and escaped, the PNG heat map takes any token
text, the view of a hand-made graph matches the stepwise flow, and the page renders in Chromium."""

import json
import math
import re
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from analysis.tokens import TokenStats, tokens_chart
from analysis.view import FlowView, _json_for_script, flow_view, render_html, render_png, screenshot
from flow import forward_flow, influence_graph, potential, reweight, top_k_mask
from rollout import Rollout

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


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
                    outflow=[[(1, 0.2)], [(2, 0.3)], [(4, 0.4), (3, 0.1)], [(4, 0.1)], [], []],
                    edge_kind="flow")


def test_html_is_self_contained_escaped_and_marks_regions():
    view = hand_view()
    page = render_html(view, title=HOSTILE)
    parser = Spans()
    parser.feed(page)
    # no external resource of any kind
    assert parser.links == [] and not re.search(r"https?://", page) and "<link" not in page
    # the hostile token renders as text: the raw tag never appears, its escaped form exactly once in
    # the token spans (and once more in the escaped title/heading)
    assert "<script>alert" not in page
    assert [t for _, t in parser.spans].count(HOSTILE) == 1
    # each token once, in order, as displayed (newline shown as a mark)
    assert [t for _, t in parser.spans] == ["<|im_start|>", "Q&A", HOSTILE, "\u21b5", "7", "}"]
    classes = [c for c, _ in parser.spans]
    assert [("top" in c) for c in classes] == view.top
    regions = [next(r for r in ("prompt", "response", "answer") if r in c) for c in classes]
    assert regions == view.region
    # the inline JSON parses back to the edges (and carries no token text)
    script = re.search(r'<script type="application/json" id="flow-data">(.*?)</script>', page,
                       re.S)
    data = json.loads(script[1])
    assert data["inflow"][4] == [[2, 0.4], [3, 0.1]] and data["outflow"][2] == [[4, 0.4], [3, 0.1]]
    assert "alert" not in json.dumps(data)


def test_png_heat_map_and_token_chart_take_latex_like_tokens(tmp_path):
    view = hand_view()
    view.tokens[1] = "$\\frac{$"  # mathtext would fail to parse this
    render_png(view, tmp_path / "h.png")
    stats = TokenStats(high=Counter({"$\\frac{$": 3, "=": 2}), low=Counter({"$": 1}),
                       all=Counter(), responses=1)
    tokens_chart(stats, tmp_path / "c.png")
    for name in ("h.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_png_underlines_prompt_and_answer_as_its_title_says(tmp_path):
    """Answer tokens sit at the colour maximum (white text), so the regions are told by the page's
    underlines: blue #7a7aff under the prompt, green #1a9641 under the answer."""
    from matplotlib.image import imread

    def pixels_of(view, colour) -> int:
        render_png(view, tmp_path / "h.png")
        rgb = torch.tensor(imread(tmp_path / "h.png")[..., :3] * 255).round()  # [H, W, 3]
        return int((rgb - torch.tensor(colour)).abs().max(-1).values.le(2).sum())

    blue, green = (0x7A, 0x7A, 0xFF), (0x1A, 0x96, 0x41)
    view = hand_view()
    assert pixels_of(view, blue) > 0 and pixels_of(view, green) > 0
    view.region = ["response"] * len(view.tokens)  # positive control: no region, no underline
    assert pixels_of(view, blue) == 0 and pixels_of(view, green) == 0


def test_the_shipped_page_is_made_from_the_current_template():
    """docs/flow_view.html holds every literal piece of analysis/view.html (regenerate it with
    the command in docs/analysis.md when the template changes)."""
    template = (ROOT / "analysis" / "view.html").read_text(encoding="utf-8")
    page = (ROOT / "docs" / "flow_view.html").read_text(encoding="utf-8")
    pieces = re.split(r"\$[a-z_]+", template.replace("$$", "$"))  # $title is there twice
    assert len(pieces) == 8 and all(piece in page for piece in pieces)


def test_json_for_script_cannot_close_the_tag():
    s = _json_for_script({"x": "</script><b>&"})
    assert "<" not in s and ">" not in s and "&" not in s
    assert json.loads(s) == {"x": "</script><b>&"}


class Decoder:
    def decode(self, ids):
        return "".join(f"t{i}" for i in ids)


def test_flow_view_on_a_hand_made_graph_matches_the_stepwise_flow():
    # T = 6: pad, 2 prompt tokens, 3 response tokens, the last one the answer. Attention rows sum
    # to 1.
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
    ro = Rollout(input_ids=torch.arange(6)[None], attention_mask=(prompt | response).long(),
                 prompt_mask=prompt, response_mask=response, answer_mask=answer, texts=["x"],
                 lengths=torch.tensor([3]), attn=attn)
    view = flow_view(ro, 0, Decoder(), ratio=0.4, edges="flow", n_edges=2)
    assert view.tokens == ["t1", "t2", "t3", "t4", "t5"]  # padding dropped
    assert view.region == ["prompt", "prompt", "response", "response", "answer"]
    # independent path: potential -> reweight -> forward_flow on the unpadded graph
    W = influence_graph(attn[0, 1:, 1:].double())
    h = potential(W, answer[0, 1:])
    Wp = reweight(W, h, answer[0, 1:])
    f = forward_flow(Wp, prompt[0, 1:])
    phi = f[:, None] * Wp  # [5, 5]
    # 40% of 3 response tokens = round(1.2) = 1: the response token with the largest tau (= 2 f) is
    # outlined
    assert view.top == top_k_mask(f, response[0, 1:], 0.4).tolist() and sum(view.top) == 1
    for k in range(5):
        col = [(i, phi[i, k].item()) for i in phi[:, k].argsort(descending=True)[:2].tolist()
               if phi[i, k] > 0]
        assert [i for i, _ in view.inflow[k]] == [i for i, _ in col]
        assert all(math.isclose(a, b, rel_tol=1e-9) for (_, a), (_, b) in zip(view.inflow[k], col))
    assert view.outflow[4] == []  # the answer sends its flow to the sink only


def test_screenshot_renders_in_headless_chromium(tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed")
    page, png = tmp_path / "v.html", tmp_path / "v.png"
    page.write_text(render_html(hand_view()), encoding="utf-8")
    screenshot(page, png, 800, 400, pin=4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
