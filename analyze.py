"""See the flow and test its causal claim: Fig. 2, Fig. 3, Fig. 7, Table 1 and Table 11 of the paper.

    python analyze.py view      [--prompt TEXT] [--response TEXT]   -> flow.html (+ flow.png)
    python analyze.py tokens    [--problems N]                      -> most frequent high/low-flow tokens
    python analyze.py intervene [--problems N --seed S]             -> Table 1: block 20% of tokens, regenerate
    python analyze.py formats   [--problems N]                      -> Table 11a: top-k overlap across answer forms

Every subcommand runs on the shipped tiny model (tiny/qwen3-arith, CPU, seconds) and on any HF causal LM
(--model PATH, --prompts FILE.jsonl with a "prompt" and an optional "gold" field, or --prompt TEXT).
The flow of a sequence is always flow.trace on flow.influence_graph of the head-mean attention of the middle
layers (rollout.py), with the answer region of rewards.answer_span and the chat-templated prompt as source.

Blocking (intervene). A blocked token keeps its position and its KV entries, but no later token may read it, in
any layer: its column of the attention mask is 0 for every query. We pass the 2D attention_mask with a 0 at each
blocked position *and* explicit position_ids (computed from the padding alone), so HF does not renumber the
positions from the mask. transformers' generate extends explicit position_ids by one per step and appends 1s to
the mask, so the new tokens are never blocked. A blocked token cannot read itself either (its own column is 0);
that changes only its own hidden states, which nobody reads. tests/test_analyze.py checks that with every prompt
token blocked the logits no longer depend on the prompt.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import random
import shutil
import subprocess
import sys
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer

from data import Example, read_jsonl
from tasks import ArithmeticTask
from flow import FlowField, influence_graph, reweight, top_k_mask, trace
from rewards import answer_span, boxed_span, math_reward
from eval import load_model
from rollout import GREEDY, Rollout, capture_attention, generate

TINY = Path(__file__).resolve().parent / "tiny" / "qwen3-arith"
Z95 = 1.959963984540054  # two-sided 95% normal quantile


# ----------------------------------------------------------------------------------------------------------------
# Models, data, teacher forcing and the flow of a batch


def load_examples(prompt: str | None, prompts_file: str | None, problems: int, seed: int) -> list[Example]:
    """--prompt TEXT, or --prompts FILE.jsonl ("prompt", optional "gold"), or the tiny arithmetic task."""
    if prompt is not None:
        return [Example(prompt=prompt, gold=None, id="cli")]
    if prompts_file is None:
        return ArithmeticTask().examples(problems, seed)
    out = []
    for line_no, row in read_jsonl(prompts_file):
        if not isinstance(row.get("prompt"), str):
            raise ValueError(f"{prompts_file}:{line_no}: each line must be a JSON object with a string 'prompt'")
        out.append(Example(prompt=row["prompt"], gold=row.get("gold"), id=f"{prompts_file}:{line_no}"))
    if not out:
        raise ValueError(f"{prompts_file} holds no prompts")
    return out[:problems]


def teacher_forced(model, tokenizer, prompts: list[str], responses: list[str], layers=None) -> Rollout:
    """A Rollout for given (prompt, response) pairs: chat-templated prompt + response + EOS, right-padded,
    with the attention of one forward pass (rollout.capture_attention). The answer mask comes from the
    tokenizer's character offsets of rewards.answer_span(response)."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"need as many responses as prompts (>= 1), got {len(prompts)} and {len(responses)}")
    if not tokenizer.is_fast:
        raise ValueError("teacher forcing needs a fast tokenizer (character offsets of the answer span)")
    eos = tokenizer.eos_token_id
    rows = []
    for prompt, response in zip(prompts, responses):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        p_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
        span = answer_span(response)
        answer = [span is not None and a < span[1] and b > span[0] for a, b in enc["offset_mapping"]]
        rows.append((p_ids, enc["input_ids"] + [eos], answer + [False]))
    width = max(len(p) + len(r) for p, r, _ in rows)
    n = len(rows)
    ids = torch.full((n, width), tokenizer.pad_token_id, dtype=torch.long)
    prompt_mask, response_mask, answer_mask = (torch.zeros(n, width, dtype=torch.bool) for _ in range(3))
    for i, (p, r, a) in enumerate(rows):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        prompt_mask[i, : len(p)] = True
        response_mask[i, len(p) : len(p) + len(r)] = True
        answer_mask[i, len(p) : len(p) + len(r)] = torch.tensor(a)
    attention_mask = (prompt_mask | response_mask).long()
    ids, attention_mask = ids.to(model.device), attention_mask.to(model.device)
    attn = capture_attention(model, ids, attention_mask, layers)
    return Rollout(input_ids=ids, attention_mask=attention_mask, prompt_mask=prompt_mask, response_mask=response_mask,
                   answer_mask=answer_mask, texts=list(responses), lengths=response_mask.sum(1), attn=attn.cpu())


def sampling(temperature: float, top_k: int = 100) -> dict:
    """generate() keyword arguments: sampling at `temperature` with top-k (top-p 1), or greedy at 0."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if temperature == 0:
        return dict(GREEDY)
    return dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=1.0)


def flow_of(ro: Rollout) -> tuple[Tensor, FlowField]:
    """(W [N, T, T], FlowField of [N, T]) for every row of a rollout; each row needs an answer region."""
    if ro.attn is None:
        raise ValueError("the rollout has no attention: generate it with capture=True")
    W = influence_graph(ro.attn.cpu())  # [N, T, T]
    return W, trace(W, ro.prompt_mask.cpu(), ro.answer_mask.cpu())


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token decoded on its own (special tokens kept, so the page shows the chat template)."""
    return [tokenizer.decode([i]) for i in ids]


# ----------------------------------------------------------------------------------------------------------------
# view: Fig. 2 (tokens coloured by throughput) and Fig. 7 (a token's strongest inflow and outflow edges)


@dataclass
class FlowView:
    """One sequence, ready to draw. Lists of length T (padding already removed)."""

    tokens: list[str]
    tau: list[float]
    region: list[str]  # "prompt", "response" or "answer"
    top: list[bool]  # the top-40% response tokens by tau (eq. 6's selection)
    inflow: list[list[tuple[int, float]]]  # per token k: the strongest edges i -> k, (i, weight)
    outflow: list[list[tuple[int, float]]]  # per token i: the strongest edges i -> k, (k, weight)
    edge_kind: str  # "flow": phi(i->k) = f(i) W'[i,k]; "attention": W[i,k]


def flow_view(ro: Rollout, row: int, tokenizer, ratio: float = 0.4, edges: str = "flow", n_edges: int = 6) -> FlowView:
    """The view of one row of a rollout. Edges by flow phi(i->k) = f(i) W'[i,k] (eq. 3-4) or raw attention W."""
    if edges not in ("flow", "attention"):
        raise ValueError(f"edges must be 'flow' or 'attention', got {edges!r}")
    keep = ro.attention_mask[row].bool().cpu()  # [T]
    one = lambda x: x[row].cpu()[keep][None]  # noqa: E731  [1, T'] without padding
    sub = Rollout(input_ids=one(ro.input_ids), attention_mask=one(ro.attention_mask), prompt_mask=one(ro.prompt_mask),
                  response_mask=one(ro.response_mask), answer_mask=one(ro.answer_mask), texts=[ro.texts[row]],
                  lengths=ro.lengths[row : row + 1], attn=ro.attn[row].cpu()[keep][:, keep][None])
    W, field = flow_of(sub)
    W, h, f, tau = W[0], field.h[0], field.f[0], field.tau[0]
    weights = f[:, None] * reweight(W, h, sub.answer_mask[0]) if edges == "flow" else W.double()  # [T, T]
    top = top_k_mask(tau, sub.response_mask[0], ratio)
    k = min(n_edges, weights.shape[0])

    def strongest(m: Tensor) -> list[list[tuple[int, float]]]:  # m: [T, T], row r -> its strongest entries
        val, idx = m.topk(k, dim=1)
        return [[(int(j), float(v)) for v, j in zip(vs, js) if v > 0] for vs, js in zip(val, idx)]

    region = ["prompt" if p else "answer" if a else "response"
              for p, a in zip(sub.prompt_mask[0].tolist(), sub.answer_mask[0].tolist())]
    return FlowView(tokens=token_texts(tokenizer, sub.input_ids[0].tolist()), tau=tau.tolist(), region=region,
                    top=top.tolist(), inflow=strongest(weights.T), outflow=strongest(weights), edge_kind=edges)


def _levels(view: FlowView, log_scale: bool) -> list[float]:
    """Colour level in [0, 1] per token: tau / max, or log10(tau / max) mapped from [-4, 0]. The max is taken
    outside the answer region: answer tokens carry all the flow that arrives (tau = 2 f, up to 2) and would
    wash out the rest, so they are clipped at 1."""
    rest = [t for t, r in zip(view.tau, view.region) if r != "answer"]
    top = max(rest or view.tau) or 1.0
    if not log_scale:
        return [min(1.0, max(t, 0.0) / top) for t in view.tau]
    return [min(1.0, max(0.0, 1 + math.log10(t / top) / 4)) if t > 0 else 0.0 for t in view.tau]


def _shown(token: str) -> str:
    """Token text as displayed: visible newline and tab marks; the page keeps the line break after it."""
    return token.replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>FlowTracer: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.2em; color: #222; }}
#text {{ font-family: monospace; font-size: 18px; line-height: 2.2; white-space: pre-wrap; max-width: 70em; }}
.tok {{ padding: 2px 1px; border-radius: 3px; cursor: pointer; }}
.prompt {{ border-bottom: 3px solid #7a7aff; }}
.answer {{ border-bottom: 3px solid #1a9641; }}
.top {{ outline: 2px solid #000; outline-offset: -1px; }}
.sel {{ outline: 3px solid #e6007e !important; }}
.in {{ box-shadow: inset 0 0 0 40px rgba(33, 102, 172, var(--w)); color: #fff; }}
.out {{ box-shadow: inset 0 0 0 40px rgba(230, 120, 0, var(--w)); color: #fff; }}
#panel {{ font-size: 13px; margin-top: 1em; min-height: 9em; border-top: 1px solid #ccc; padding-top: .5em; }}
.legend span {{ margin-right: 1.5em; }}
</style></head><body>
<h3>FlowTracer: {title}</h3>
<div class="legend"><span>background = throughput &tau; ({scale})</span>
<span class="top">&nbsp;top {pct}% response tokens&nbsp;</span>
<span class="prompt">prompt</span><span class="answer">answer</span>
<span style="color:#2166ac">&#9632; inflow</span><span style="color:#e67800">&#9632; outflow</span>
(edges by {edge_kind}; hover or click a token)</div>
<div id="text">{spans}</div>
<div id="panel">Hover over a token to see its strongest inflow and outflow edges; click to pin.</div>
<script type="application/json" id="flow-data">{data}</script>
<script>
(function () {{
  const data = JSON.parse(document.getElementById("flow-data").textContent);
  const toks = document.querySelectorAll(".tok");
  const panel = document.getElementById("panel");
  let pinned = -1;
  function clear() {{
    toks.forEach(t => {{ t.classList.remove("in", "out", "sel"); t.style.removeProperty("--w"); }});
  }}
  function edgeList(title, edges) {{
    const div = document.createElement("div");
    div.textContent = title + (edges.length ? "" : " none");
    edges.forEach(([j, w]) => {{
      const s = document.createElement("span");
      s.textContent = "  [" + j + "] " + JSON.stringify(toks[j].textContent) + " " + w.toExponential(2) + ";";
      div.appendChild(s);
    }});
    return div;
  }}
  function show(i) {{
    clear();
    const mark = (edges, cls) => {{
      const m = Math.max(1e-300, ...edges.map(e => e[1]));
      edges.forEach(([j, w]) => {{
        toks[j].classList.add(cls);
        toks[j].style.setProperty("--w", (0.25 + 0.75 * w / m).toFixed(3));
      }});
    }};
    mark(data.inflow[i], "in");
    mark(data.outflow[i], "out");
    toks[i].classList.add("sel");
    panel.textContent = "";
    const head = document.createElement("div");
    head.textContent = "token [" + i + "] " + JSON.stringify(toks[i].textContent) + "  region " + data.region[i] +
      "  tau " + data.tau[i].toExponential(3) + (data.top[i] ? "  (top set)" : "");
    panel.append(head, edgeList("inflow (strongest i -> this):", data.inflow[i]),
                 edgeList("outflow (strongest this -> k):", data.outflow[i]));
  }}
  toks.forEach((t, i) => {{
    t.addEventListener("mouseenter", () => {{ if (pinned < 0) show(i); }});
    t.addEventListener("click", () => {{ pinned = pinned === i ? -1 : i; show(i); }});
  }});
  const hash = /^#pin=(\\d+)$/.exec(location.hash);  // page.html#pin=12 opens with token 12 pinned
  if (hash && +hash[1] < toks.length) {{ pinned = +hash[1]; show(pinned); }}
}})();
</script></body></html>
"""


def _json_for_script(obj) -> str:
    """JSON that is safe inside <script>: no '<', '>' or '&' survives, so '</script>' cannot close the tag."""
    return json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(view: FlowView, title: str = "flow view", log_scale: bool = False, ratio: float = 0.4) -> str:
    """One self-contained page (inline CSS, JS and JSON; no external resource). Token text is HTML-escaped;
    the JSON holds numbers and region names only (the script reads a token's text from its span)."""
    spans = []
    for i, (tok, lev, reg, top) in enumerate(zip(view.tokens, _levels(view, log_scale), view.region, view.top)):
        # white -> #d7301f by level; white text on the darkest cells
        r, g, b = (round(255 + (c - 255) * lev) for c in (215, 48, 31))
        classes = f"tok {reg}" + (" top" if top else "")
        color = "#fff" if lev > 0.65 else "#111"
        spans.append(f'<span class="{classes}" data-i="{i}" style="background:rgb({r},{g},{b});color:{color}" '
                     f'title="tau={view.tau[i]:.3e}">{html.escape(_shown(tok))}</span>'
                     + ("\n" if tok.endswith("\n") else ""))
    data = dict(tau=view.tau, region=view.region, top=view.top, inflow=view.inflow, outflow=view.outflow)
    return _PAGE.format(title=html.escape(title), spans="".join(spans), data=_json_for_script(data),
                        scale="log scale, 4 decades" if log_scale else "linear, 0 .. max",
                        pct=round(100 * ratio), edge_kind="flow &phi;(i&rarr;k) = f(i) W'[i,k]"
                        if view.edge_kind == "flow" else "raw attention W[i,k]")


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, with mathtext off: tokens like "$" or "\\frac{" are
    text, not LaTeX to parse."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def render_png(view: FlowView, path: str | Path, log_scale: bool = False, width: int = 60) -> None:
    """The same colouring as a PNG heat map (matplotlib): one box per token, top set outlined in black,
    prompt text blue, answer text green; a new line after each newline token or every `width` characters."""
    plt = _pyplot()
    cells, x, y = [], 0, 0
    for tok in view.tokens:
        w = max(1, len(_shown(tok)))
        if x + w > width and x > 0:
            x, y = 0, y + 1
        cells.append((x, y, w))
        x += w + 1
        if tok.endswith("\n"):
            x, y = 0, y + 1
    lines = y + 1
    fig, ax = plt.subplots(figsize=(width * 0.13 + 1, lines * 0.32 + 0.8), dpi=110)
    cmap = plt.get_cmap("Reds")
    text_colour = {"prompt": "#2b2bd0", "answer": "#137a30", "response": "#111"}
    for (x, y, w), tok, lev, reg, top in zip(cells, view.tokens, _levels(view, log_scale), view.region, view.top):
        ax.add_patch(plt.Rectangle((x - 0.4, -y - 0.4), w + 0.3, 0.8, facecolor=cmap(0.05 + 0.9 * lev),
                                   edgecolor="black" if top else "none", linewidth=1.4))
        ax.text(x + (w - 1) / 2, -y, _shown(tok), ha="center", va="center", family="monospace", fontsize=8,
                color="#fff" if lev > 0.65 else text_colour[reg], fontweight="bold" if reg == "answer" else "normal")
    ax.set_xlim(-1, width + 1)
    ax.set_ylim(-lines + 0.3, 0.7)
    ax.axis("off")
    ax.set_title("throughput tau (" + ("log" if log_scale else "linear") + "); black box = top set; "
                 "blue = prompt, green = answer", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def screenshot(page: str | Path, png: str | Path, width: int = 1000, height: int = 520, pin: int | None = None,
               browser: str = "chromium") -> None:
    """Render a page in headless Chromium (Debian's chromium package) and save a PNG screenshot.
    pin: open with that token pinned (its inflow and outflow edges shown)."""
    exe = shutil.which(browser)
    if exe is None:
        raise FileNotFoundError(f"{browser} is not installed (Debian: apt-get install -y chromium)")
    url = Path(page).resolve().as_uri() + ("" if pin is None else f"#pin={pin}")
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--hide-scrollbars", f"--screenshot={Path(png).resolve()}", f"--window-size={width},{height}", url],
                   check=True, capture_output=True, timeout=120)


# ----------------------------------------------------------------------------------------------------------------
# tokens: Fig. 3 and the structural/content split of Table 11b

STRUCTURAL_WORDS = frozenset({"boxed", "fbox", "frac", "cdot", "times", "div", "left", "right", "text"})


def token_class(token: str) -> str:
    """"structural" or "content" (Table 11b's split of delimiters from semantic tokens).

    structural: whitespace and newlines, punctuation and operators and brackets (Unicode categories P* and
    S*: = + - * / ( ) { } . , ; \\ $ ...), special tokens like <|im_end|>, and LaTeX formatting commands
    (\\boxed, "boxed", \\frac, ...: STRUCTURAL_WORDS). content: everything holding a letter or a digit
    otherwise: numbers, words, variable names.
    """
    s = token.strip()
    if not s or (s.startswith("<|") and s.endswith("|>")):
        return "structural"
    if s.lstrip("\\").lower() in STRUCTURAL_WORDS:
        return "structural"
    if all(unicodedata.category(c)[0] in "PSZ" for c in s):
        return "structural"
    return "content"


@dataclass
class TokenStats:
    high: Counter  # token text -> times it was in a response's top `ratio` by tau
    low: Counter  # ... bottom `ratio`
    all: Counter  # every response token
    responses: int


def token_stats(model, tokenizer, examples: list[Example], ratio: float = 0.2, temperature: float = 0.7,
                max_new_tokens: int = 128, batch: int = 64, layers=None, after_answer: bool = False,
                seed: int = 0) -> TokenStats:
    """Sample one response per example (E.1: T = 0.7), trace its flow, count the top and bottom `ratio` of
    its response tokens by tau (E.1: 20% per response). The tokens after the answer region ("}", EOS) are dead
    ends with tau = 0 by construction and always land in the bottom set; they are left out unless after_answer."""
    high, low, every, used = Counter(), Counter(), Counter(), 0
    torch.manual_seed(seed)
    for s in range(0, len(examples), batch):
        ro = generate(model, tokenizer, [e.prompt for e in examples[s : s + batch]], n=1,
                      max_new_tokens=max_new_tokens, layers=layers, **sampling(temperature))
        ok = ro.answer_mask.any(1).cpu()
        if not ok.any():
            continue
        ro_ok = ro.rows(ok.nonzero().flatten())
        _, field = flow_of(ro_ok)
        cand = ro_ok.response_mask.cpu()  # [n, T]
        if not after_answer:  # drop everything after the last answer token
            cand &= ro_ok.answer_mask.cpu().flip(1).long().cumsum(1).flip(1) > 0
        hi, lo = top_k_mask(field.tau, cand, ratio), top_k_mask(field.tau, cand, ratio, largest=False)
        ids = ro_ok.input_ids.cpu()
        for r in range(ids.shape[0]):
            text = token_texts(tokenizer, ids[r].tolist())
            high.update(text[j] for j in hi[r].nonzero().flatten().tolist())
            low.update(text[j] for j in lo[r].nonzero().flatten().tolist())
            every.update(text[j] for j in cand[r].nonzero().flatten().tolist())
        used += int(ok.sum())
    return TokenStats(high=high, low=low, all=every, responses=used)


def structural_share(counts: Counter) -> float:
    total = sum(counts.values())
    return sum(c for t, c in counts.items() if token_class(t) == "structural") / total if total else float("nan")


def tokens_table(stats: TokenStats, top: int = 15) -> str:
    lines = [f"{stats.responses} responses; structural share: high-flow {structural_share(stats.high):.1%}, "
             f"low-flow {structural_share(stats.low):.1%}, all response tokens {structural_share(stats.all):.1%}", "",
             "| rank | high-flow token | count | class | low-flow token | count | class |",
             "|---|---|---|---|---|---|---|"]
    hi, lo = stats.high.most_common(top), stats.low.most_common(top)
    for i in range(max(len(hi), len(lo))):
        cells = []
        for side in (hi, lo):
            t, c = side[i] if i < len(side) else ("", "")
            cells += [f"`{t!r}`" if t else "", str(c), token_class(t) if t else ""]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tokens_chart(stats: TokenStats, path: str | Path, top: int = 15) -> None:
    """Fig. 3 as two bar charts: the most frequent high-flow and low-flow tokens, coloured by token_class."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.28 * top + 1.5), dpi=110)
    colour = {"structural": "#d7301f", "content": "#2166ac"}
    for ax, counts, name in ((axes[0], stats.high, "high-flow"), (axes[1], stats.low, "low-flow")):
        items = counts.most_common(top)[::-1]
        ax.barh([repr(t) for t, _ in items], [c for _, c in items], color=[colour[token_class(t)] for t, _ in items])
        ax.set_title(f"{name} (structural {structural_share(counts):.0%})", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle("most frequent tokens; red = structural, blue = content", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# intervene: Table 1 and appendix E.1


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for the default z)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson needs 0 <= successes <= n and n > 0, got {successes} of {n}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # the bounds are exactly 0 at 0 successes and 1 at n: say so instead of leaving a rounding error
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def regenerate(model, tokenizer, prefixes: list[Tensor], blocked: list[Tensor], max_new_tokens: int,
               temperature: float = 0.7, top_k: int = 100, seed: int = 0) -> tuple[list[Tensor], Tensor]:
    """Continue each prefix (1-D token ids, no padding) while no later token may read its `blocked` positions.

    Left-pads the batch; attention_mask = 0 on padding and on blocked tokens; position_ids from the padding
    only, so every token keeps its position. temperature 0 = greedy. Returns the new tokens of each row (up
    to and including EOS) and the logits of every step [N, steps, V].
    """
    if len(prefixes) != len(blocked) or not prefixes:
        raise ValueError("need one blocked mask per prefix (and at least one prefix)")
    width = max(len(p) for p in prefixes)
    n = len(prefixes)
    ids = torch.full((n, width), tokenizer.pad_token_id, dtype=torch.long)
    real = torch.zeros(n, width, dtype=torch.bool)
    block = torch.zeros(n, width, dtype=torch.bool)
    for i, (p, b) in enumerate(zip(prefixes, blocked)):
        if b.shape != p.shape or b.dtype != torch.bool:
            raise ValueError(f"row {i}: blocked must be a bool mask shaped like its prefix {tuple(p.shape)}")
        if b[-1]:
            raise ValueError(f"row {i}: the last prefix token is fed to the model and cannot be blocked")
        ids[i, width - len(p) :], real[i, width - len(p) :], block[i, width - len(p) :] = p, True, b
    positions = (real.long().cumsum(-1) - 1).clamp_(min=0)  # [N, L]: counted over real tokens, blocked included
    torch.manual_seed(seed)
    dev = model.device
    out = model.generate(ids.to(dev), attention_mask=(real & ~block).long().to(dev), position_ids=positions.to(dev),
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, return_dict_in_generate=True, output_logits=True,
                         **sampling(temperature, top_k))
    logits = torch.stack(out.logits, dim=1).cpu()  # [N, steps, V]
    if not torch.isfinite(logits).all():
        raise RuntimeError("non-finite logits under blocking: this attention backend does not tolerate a fully "
                           "masked row (a blocked token with nothing before it); report the model and device")
    new = []
    for row in out.sequences[:, width:].cpu():
        stop = (row == tokenizer.eos_token_id).nonzero()
        new.append(row[: int(stop[0]) + 1] if len(stop) else row)
    return new, logits


def extracted(text: str) -> str | None:
    """The inside of the last complete \\boxed{...}, stripped; None when extraction fails."""
    span = boxed_span(text)
    return None if span is None else text[span[0] : span[1]].strip()


def answer_changed(old: str, new: str) -> bool:
    """Answers differ: one extraction fails and the other does not, or both exist and are not equal (equal
    strings, or math-verify equality of the new response with the old answer as gold)."""
    a, b = extracted(old), extracted(new)
    if a is None or b is None:
        return (a is None) != (b is None)
    return a != b and math_reward(new, a) == 0.0


# high / low / random: Table 1. recent: the tokens right before the cut (is flow more than recency?); none: nothing
# blocked, so its change rate is what truncating and resampling alone does.
CONDITIONS = ("high", "low", "random", "recent", "none")


@dataclass
class Counts:
    n: int = 0
    changed: int = 0
    reversed: int = 0  # correctness flipped, either way (needs a gold)
    broke: int = 0  # correct -> wrong
    fixed: int = 0  # wrong -> correct
    scored: int = 0  # rows with a gold


def intervene(model, tokenizer, examples: list[Example], seed: int = 0, ratio: float = 0.2,
              temperature: float = 0.7, max_new_tokens: int = 128, layers=None, conditions=CONDITIONS,
              batch: int = 500) -> tuple[dict[str, Counts], int]:
    """Table 1 / appendix E.1. Per example: sample a response (temperature), trace its flow, truncate it at a
    random point before the answer region, block `ratio` of the response tokens before that point (the
    highest tau, the lowest tau, a random set, or none as the control), regenerate from the point with the
    same sampling settings and the same random seed for every condition, and compare the new final answer
    with the original one. Returns the counts per condition and the number of responses skipped (no
    answer region, or too short to hold one blocked token before it). `batch` examples at a time.
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    parts, skipped = [], 0
    for s in range(0, len(examples), batch):
        counts, skip = _intervene_batch(model, tokenizer, examples[s : s + batch], rng, seed, ratio, temperature,
                                        max_new_tokens, layers, conditions)
        parts, skipped = parts + ([counts] if counts else []), skipped + skip
    if not parts:
        raise ValueError("no response has an answer region with enough tokens before it to intervene on")
    return pooled(parts), skipped


def _min_kept(ratio: float) -> int:
    """Fewest kept response tokens that leave one to block: top_k_mask must pick >= 1 of the candidates, and
    the last kept token is no candidate (see `truncate_and_select`)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    return 1 + next(m for m in range(1, 10_000) if math.floor(m * ratio + 0.5) >= 1)


def truncate_and_select(tau: Tensor, response_mask: Tensor, answer_mask: Tensor, ratio: float, rng: random.Random,
                        gen: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """Appendix E.1's protocol on a batch whose rows all hold an answer with >= _min_kept tokens before it.

    Truncation: keep the first t response tokens, t uniform in [_min_kept, tokens before the answer region],
    so the whole answer is regenerated. Candidates: the kept response tokens except the last one (its own
    output gives the first regenerated token: blocking it cannot stop what it carries). Of those, `ratio`
    (top_k_mask rounding) by condition. tau, masks: [n, T]. Returns cut [n] (the first position not kept)
    and a bool [n, T] selection per condition.
    """
    n, T = tau.shape
    pos = torch.arange(T)
    start = response_mask.long().argmax(1)  # [n] first response position
    first_answer = torch.where(answer_mask, pos, T).min(1).values  # [n]
    cut = torch.tensor([int(s) + rng.randint(_min_kept(ratio), int(a - s)) for s, a in zip(start, first_answer)])
    before = response_mask & (pos < cut[:, None] - 1)  # [n, T] candidates
    return cut, {"high": top_k_mask(tau, before, ratio), "low": top_k_mask(tau, before, ratio, largest=False),
                 "random": top_k_mask(torch.rand(n, T, generator=gen), before, ratio),
                 "recent": top_k_mask(pos.double().expand(n, T), before, ratio),
                 "none": torch.zeros(n, T, dtype=torch.bool)}


def _intervene_batch(model, tokenizer, examples, rng, seed, ratio, temperature, max_new_tokens, layers, conditions):
    ro = generate(model, tokenizer, [e.prompt for e in examples], n=1, max_new_tokens=max_new_tokens, layers=layers,
                  **sampling(temperature))
    resp, answer = ro.response_mask.cpu(), ro.answer_mask.cpu()
    tokens_before = (resp & (answer.long().cumsum(1) == 0)).sum(1)  # [N] response tokens before the answer
    ok = answer.any(1) & (tokens_before >= _min_kept(ratio))
    skipped = int((~ok).sum())
    if not ok.any():
        return None, skipped
    ro, kept_examples = ro.rows(ok.nonzero().flatten()), [e for e, k in zip(examples, ok.tolist()) if k]
    _, field = flow_of(ro)  # [n, T]
    ids, valid, resp = ro.input_ids.cpu(), ro.attention_mask.cpu().bool(), ro.response_mask.cpu()
    n, T = ids.shape
    cut, selections = truncate_and_select(field.tau, resp, ro.answer_mask.cpu(), ratio, rng,
                                          torch.Generator().manual_seed(seed))
    kept = torch.arange(T) < cut[:, None]  # [n, T]
    prefixes = [ids[i, valid[i] & kept[i]] for i in range(n)]
    kept_response = [ids[i, resp[i] & kept[i]] for i in range(n)]
    golds = [e.gold for e in kept_examples]
    old_ok = [math_reward(t, g) > 0 if g is not None else None for t, g in zip(ro.texts, golds)]

    results = {}
    for cond in conditions:
        sel = selections[cond]
        blocked = [sel[i, valid[i] & kept[i]] for i in range(n)]
        new_ids, _ = regenerate(model, tokenizer, prefixes, blocked, max_new_tokens, temperature, seed=seed)
        c = Counts(n=n)
        for i in range(n):
            text = tokenizer.decode(torch.cat([kept_response[i], new_ids[i]]), skip_special_tokens=True)
            c.changed += answer_changed(ro.texts[i], text)
            if golds[i] is not None:
                new_ok = math_reward(text, golds[i]) > 0
                c.scored += 1
                c.reversed += new_ok != old_ok[i]
                c.broke += old_ok[i] and not new_ok
                c.fixed += new_ok and not old_ok[i]
        results[cond] = c
    return results, skipped


PAPER_TABLE1 = {"high": (45.9, 14.9), "low": (14.9, 0.5), "random": (29.5, 4.5)}


def _rate(k: int, n: int) -> str:
    if n == 0:
        return "n/a"
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def intervene_table(runs: dict[str, dict[str, Counts]]) -> str:
    """Markdown: one row per (run, condition), rates in % with 95% Wilson intervals, the paper's numbers."""
    lines = ["| run | blocked 20% | n | answer change % [95% CI] | correctness reverse % [95% CI] | c->w | w->c "
             "| paper: change / reverse % |", "|---|---|---|---|---|---|---|---|"]
    for run, res in runs.items():
        for cond, c in res.items():
            paper = PAPER_TABLE1.get(cond)
            lines.append(f"| {run} | {cond} | {c.n} | {_rate(c.changed, c.n)} | {_rate(c.reversed, c.scored)} | "
                         f"{c.broke} | {c.fixed} | " + (f"{paper[0]} / {paper[1]}" if paper else "-") + " |")
    return "\n".join(lines)


def pooled(runs: list[dict[str, Counts]]) -> dict[str, Counts]:
    out = {}
    for cond in runs[0]:
        c = Counts()
        for r in runs:
            for f in ("n", "changed", "reversed", "broke", "fixed", "scored"):
                setattr(c, f, getattr(c, f) + getattr(r[cond], f))
        out[cond] = c
    return out


# ----------------------------------------------------------------------------------------------------------------
# formats: Table 11a

FORMATS = {"answer-only": "{a}", "equation": "x={a}", "period": "{a}."}


def with_format(response: str, template: str) -> str:
    """The response with the inside of its last box replaced by template.format(a=old inside)."""
    span = boxed_span(response)
    if span is None:
        raise ValueError(f"the response has no complete \\boxed{{}}: {response[-80:]!r}")
    return response[: span[0]] + template.format(a=response[span[0] : span[1]].strip()) + response[span[1] :]


def format_overlap(model, tokenizer, examples: list[Example], ratios=(0.2, 0.4, 0.6, 0.8, 1.0),
                   formats: dict[str, str] = FORMATS, max_new_tokens: int = 128, layers=None) -> dict[str, dict]:
    """Per format and ratio: the mean overlap |S_f & S_0| / |S_0| and Jaccard of the top-ratio tokens by tau
    with those of the first (answer-only) format S_0. Candidates are the shared tokens: the response tokens
    before the box's inside, identical in every format (so top-100% is 1 by construction). Responses are the
    model's greedy ones, teacher-forced with each answer form."""
    ro = generate(model, tokenizer, [e.prompt for e in examples], n=1, max_new_tokens=max_new_tokens,
                  capture=False, **sampling(0))
    base = [t for t in ro.texts if boxed_span(t) is not None]
    if not base:
        raise ValueError("no greedy response holds a \\boxed{} answer")
    prompts = [e.prompt for e, t in zip(examples, ro.texts) if boxed_span(t) is not None]
    names, m = list(formats), len(base)
    # all formats in one teacher-forced batch, so every row has the same width: rows f*m .. f*m+m-1 = format f
    tf = teacher_forced(model, tokenizer, prompts * len(names),
                        [with_format(t, formats[name]) for name in names for t in base], layers)
    tau = flow_of(tf)[1].tau.view(len(names), m, -1)  # [F, m, T]
    response = tf.response_mask.view(len(names), m, -1)  # [F, m, T]
    ids = tf.input_ids.cpu().view(len(names), m, -1)  # [F, m, T]
    # shared: response tokens before the first answer token of the answer-only row, with the same id in every
    # format at every position up to there (the response texts differ only from the box's inside on)
    answer0 = tf.answer_mask.view(len(names), m, -1)[0]
    same = (ids == ids[0]).all(0).long().cumprod(1).bool()  # [m, T] identical prefix of all formats
    shared = response[0] & (answer0.long().cumsum(1) == 0) & same  # [m, T]
    out = {"responses": m}
    for f, name in enumerate(names[1:], 1):
        out[name] = {}
        for ratio in ratios:
            # candidates: the shared tokens only, so both sets have the same size and the answer tokens (more of
            # them in "x=6") do not take slots
            s0, s1 = top_k_mask(tau[0], shared, ratio), top_k_mask(tau[f], shared, ratio)  # [m, T]
            inter, union, size = (s0 & s1).sum(1).double(), (s0 | s1).sum(1).double(), s0.sum(1).double()
            out[name][ratio] = dict(overlap=float((inter[size > 0] / size[size > 0]).mean()),
                                    jaccard=float((inter[union > 0] / union[union > 0]).mean()))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Command line


def _common(p: argparse.ArgumentParser, problems: int) -> None:
    p.add_argument("--model", default=str(TINY), help="HF model path or name (default: the shipped tiny model)")
    p.add_argument("--prompts", help="JSONL file, one object per line with 'prompt' and optional 'gold'")
    p.add_argument("--problems", type=int, default=problems, help="how many prompts (tiny task or --prompts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, nargs="+", help="attention layers to average (default: middle third)")
    p.add_argument("--max-new-tokens", type=int, default=128)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    v = sub.add_parser("view", help="one sequence -> self-contained HTML (+ PNG heat map)")
    _common(v, 1)
    v.add_argument("--prompt", default=None, help="prompt text (default: the first tiny-task problem)")
    v.add_argument("--response", help="teacher-force this response instead of generating one (greedy)")
    v.add_argument("--edges", choices=("flow", "attention"), default="flow")
    v.add_argument("--log-scale", action="store_true")
    v.add_argument("--ratio", type=float, default=0.4)
    v.add_argument("--out", default="flow.html")
    v.add_argument("--png", help="also write a PNG heat map here")
    v.add_argument("--screenshot", help="also render the page in headless Chromium and save a PNG here")
    v.add_argument("--pin", type=int, help="token index to pin in the screenshot")
    v.add_argument("--window", type=int, nargs=2, default=(1000, 520), metavar=("W", "H"))

    t = sub.add_parser("tokens", help="most frequent high-/low-flow tokens (Fig. 3, Table 11b)")
    _common(t, 200)
    t.add_argument("--ratio", type=float, default=0.2)
    t.add_argument("--temperature", type=float, default=0.7)
    t.add_argument("--top", type=int, default=15)
    t.add_argument("--png", default="tokens.png")
    t.add_argument("--after-answer", action="store_true", help="count the dead-end tokens after the answer too")

    i = sub.add_parser("intervene", help="Table 1: block high/low/random 20%% of tokens, regenerate")
    _common(i, 200)
    i.add_argument("--seeds", type=int, nargs="+", help="several seeds: one run each, plus the pooled counts")
    i.add_argument("--ratio", type=float, default=0.2)
    i.add_argument("--temperature", type=float, default=0.7, help="sampling and regeneration (0 = greedy)")
    i.add_argument("--json", help="write the counts here")

    f = sub.add_parser("formats", help="Table 11a: top-k overlap when only the answer's form changes")
    _common(f, 100)

    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, tokenizer = load_model(args.model)
    t0 = time.time()

    if args.cmd == "view":
        examples = load_examples(args.prompt, args.prompts, 1, args.seed)
        if args.response is not None:
            ro = teacher_forced(model, tokenizer, [examples[0].prompt], [args.response], args.layers)
        else:
            ro = generate(model, tokenizer, [examples[0].prompt], n=1, max_new_tokens=args.max_new_tokens,
                          layers=args.layers, **sampling(0))
        if not ro.answer_mask.any():
            raise SystemExit("the response has no answer region (empty response?): nothing to trace to")
        view = flow_view(ro, 0, tokenizer, args.ratio, args.edges)
        Path(args.out).write_text(render_html(view, examples[0].prompt, args.log_scale, args.ratio), encoding="utf-8")
        print(f"wrote {args.out}" + (f" and {args.png}" if args.png else ""))
        if args.png:
            render_png(view, args.png, args.log_scale)
        if args.screenshot:
            screenshot(args.out, args.screenshot, *args.window, pin=args.pin)
            print(f"wrote {args.screenshot}")
    elif args.cmd == "tokens":
        examples = load_examples(None, args.prompts, args.problems, args.seed)
        stats = token_stats(model, tokenizer, examples, args.ratio, args.temperature, args.max_new_tokens,
                            layers=args.layers, after_answer=args.after_answer, seed=args.seed)
        print(tokens_table(stats, args.top))
        tokens_chart(stats, args.png, args.top)
        print(f"wrote {args.png}")
    elif args.cmd == "intervene":
        runs = {}
        for seed in args.seeds or [args.seed]:
            examples = load_examples(None, args.prompts, args.problems, seed)
            s0 = time.time()
            res, skipped = intervene(model, tokenizer, examples, seed, args.ratio, args.temperature,
                                     args.max_new_tokens, args.layers)
            runs[f"seed {seed}"] = res
            print(f"seed {seed}: {len(examples)} prompts, {skipped} skipped, {time.time() - s0:.0f} s", flush=True)
        if len(runs) > 1:
            runs["pooled"] = pooled(list(runs.values()))
        print(intervene_table(runs))
        if args.json:
            Path(args.json).write_text(json.dumps({r: {c: vars(x) for c, x in res.items()} for r, res in runs.items()},
                                                  indent=1))
    elif args.cmd == "formats":
        examples = load_examples(None, args.prompts, args.problems, args.seed)
        res = format_overlap(model, tokenizer, examples, max_new_tokens=args.max_new_tokens, layers=args.layers)
        ratios = list(next(v for k, v in res.items() if k != "responses"))
        print(f"{res['responses']} responses; overlap with the answer-only top set on the shared tokens "
              "(mean |S_f & S_0| / |S_0|; Jaccard in brackets)\n")
        print("| format | " + " | ".join(f"top-{round(100 * r)}%" for r in ratios) + " |")
        print("|---|" + "---|" * len(ratios))
        for name, per in res.items():
            if name != "responses":
                print(f"| {name} | " + " | ".join(f"{x['overlap']:.2f} ({x['jaccard']:.2f})" for x in per.values())
                      + " |")
    print(f"[{time.time() - t0:.1f} s]", file=sys.stderr)


if __name__ == "__main__":
    main()
