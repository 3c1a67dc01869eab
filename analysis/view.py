"""view: Fig. 2 (tokens coloured by throughput) and Fig. 7 (a token's strongest inflow and outflow
edges), as one self-contained HTML page, a PNG heat map and a headless-Chromium screenshot.

The page is the template view.html next to this file (plain HTML, CSS and JS) with six
string.Template placeholders: $title, $scale, $pct, $edge_kind, $spans and $data. Its one literal
dollar sign, the end anchor of the `#pin=N` regex, is written `$$` there.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from string import Template

from torch import Tensor

from analysis.common import (flow_of, generation_prompts, pyplot, read_prompts, sampling,
                             teacher_forced, token_texts)
from flow import RATIO, reweight, top_k_mask
from rewards import answer_span
from rollout import Rollout, generate

PAGE = Template((Path(__file__).parent / "view.html").read_text(encoding="utf-8"))


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


def _region(prompt: bool, answer: bool) -> str:
    if prompt:
        return "prompt"
    if answer:
        return "answer"
    return "response"


def flow_view(ro: Rollout, row: int, tokenizer, ratio: float = RATIO, edges: str = "flow",
              n_edges: int = 6) -> FlowView:
    """The view of one row of a rollout. Edges by flow phi(i->k) = f(i) W'[i,k] (eq. 3-4) or raw
    attention W."""
    if edges not in ("flow", "attention"):
        raise ValueError(f"edges must be 'flow' or 'attention', got {edges!r}")
    keep = ro.attention_mask[row].bool().cpu()  # [T]
    one = lambda x: x[row].cpu()[keep][None]  # noqa: E731  [1, T'] without padding
    sub = Rollout(input_ids=one(ro.input_ids), attention_mask=one(ro.attention_mask),
                  prompt_mask=one(ro.prompt_mask), response_mask=one(ro.response_mask),
                  answer_mask=one(ro.answer_mask), texts=[ro.texts[row]],
                  lengths=ro.lengths[row : row + 1], attn=ro.attn[row].cpu()[keep][:, keep][None])
    W, field = flow_of(sub)
    W, h, f, tau = W[0], field.h[0], field.f[0], field.tau[0]
    if edges == "flow":
        weights = f[:, None] * reweight(W, h, sub.answer_mask[0])  # [T, T]
    else:
        weights = W.double()  # [T, T]
    top = top_k_mask(tau, sub.response_mask[0], ratio)
    k = min(n_edges, weights.shape[0])

    def strongest(m: Tensor) -> list[list[tuple[int, float]]]:  # m: [T, T], row r -> its strongest
        val, idx = m.topk(k, dim=1)
        return [[(int(j), float(v)) for v, j in zip(vs, js) if v > 0] for vs, js in zip(val, idx)]

    region = [_region(p, a)
              for p, a in zip(sub.prompt_mask[0].tolist(), sub.answer_mask[0].tolist())]
    return FlowView(tokens=token_texts(tokenizer, sub.input_ids[0].tolist()), tau=tau.tolist(),
                    region=region, top=top.tolist(), inflow=strongest(weights.T),
                    outflow=strongest(weights), edge_kind=edges)


def _levels(view: FlowView, log_scale: bool) -> list[float]:
    """Colour level in [0, 1] per token: tau / max, or log10(tau / max) mapped from [-4, 0]. The max
    is taken outside the answer region: answer tokens carry all the flow that arrives (tau = 2 f, up
    to 2) and would wash out the rest, so they are clipped at 1."""
    rest = [t for t, r in zip(view.tau, view.region) if r != "answer"]
    top = max(rest or view.tau) or 1.0
    if not log_scale:
        return [min(1.0, max(t, 0.0) / top) for t in view.tau]
    return [min(1.0, max(0.0, 1 + math.log10(t / top) / 4)) if t > 0 else 0.0 for t in view.tau]


def _shown(token: str) -> str:
    """Token text as displayed: visible newline and tab marks; the page keeps the line break after
    it."""
    return token.replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def _json_for_script(obj) -> str:
    """JSON that is safe inside <script>: no '<', '>' or '&' survives, so '</script>' cannot close
    the tag."""
    return json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(view: FlowView, title: str = "flow view", log_scale: bool = False,
                ratio: float = RATIO) -> str:
    """One self-contained page (inline CSS, JS and JSON; no external resource). Token text is
    HTML-escaped; the JSON holds numbers and region names only (the script reads a token's text from
    its span)."""
    spans = []
    levels = _levels(view, log_scale)
    for i, (tok, lev, reg, top) in enumerate(zip(view.tokens, levels, view.region, view.top)):
        # white -> #d7301f by level; white text on the darkest cells
        r, g, b = (round(255 + (c - 255) * lev) for c in (215, 48, 31))
        classes = f"tok {reg}" + (" top" if top else "")
        color = "#fff" if lev > 0.65 else "#111"
        spans.append(f'<span class="{classes}" data-i="{i}" '
                     f'style="background:rgb({r},{g},{b});color:{color}" '
                     f'title="tau={view.tau[i]:.3e}">{html.escape(_shown(tok))}</span>'
                     + ("\n" if tok.endswith("\n") else ""))
    data = dict(tau=view.tau, region=view.region, top=view.top, inflow=view.inflow,
                outflow=view.outflow)
    if view.edge_kind == "flow":
        edge_kind = "flow &phi;(i&rarr;k) = f(i) W'[i,k]"
    else:
        edge_kind = "raw attention W[i,k]"
    return PAGE.substitute(title=html.escape(title), spans="".join(spans),
                           data=_json_for_script(data),
                           scale="log scale, 4 decades" if log_scale else "linear, 0 .. max",
                           pct=round(100 * ratio), edge_kind=edge_kind)


def render_png(view: FlowView, path: str | Path, log_scale: bool = False, width: int = 60) -> None:
    """The same colouring as a PNG heat map (matplotlib): one box per token, top set outlined in
    black, prompt and answer underlined as on the page (blue, green: the answer's tokens sit at the
    colour maximum, where the text is white); a new line after each newline token or every `width`
    characters."""
    plt = pyplot()
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
    underline = {"prompt": "#7a7aff", "answer": "#1a9641"}  # view.html's .prompt and .answer
    levels = _levels(view, log_scale)
    for (x, y, w), tok, lev, reg, top in zip(cells, view.tokens, levels, view.region, view.top):
        ax.add_patch(plt.Rectangle((x - 0.4, -y - 0.4), w + 0.3, 0.8,
                                   facecolor=cmap(0.05 + 0.9 * lev),
                                   edgecolor="black" if top else "none", linewidth=1.4))
        if reg in underline:
            ax.add_patch(plt.Rectangle((x - 0.4, -y - 0.47), w + 0.3, 0.12,
                                       facecolor=underline[reg], edgecolor="none"))
        ax.text(x + (w - 1) / 2, -y, _shown(tok), ha="center", va="center", family="monospace",
                fontsize=8, color="#fff" if lev > 0.65 else "#111")
    ax.set_xlim(-1, width + 1)
    ax.set_ylim(-lines + 0.3, 0.7)
    ax.axis("off")
    ax.set_title("throughput tau (" + ("log" if log_scale else "linear") + "); "
                 "black box = top set; underlined: blue = prompt, green = answer", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def screenshot(page: str | Path, png: str | Path, width: int = 1000, height: int = 520,
               pin: int | None = None, browser: str = "chromium") -> None:
    """Render a page in headless Chromium (Debian's chromium package) and save a PNG screenshot.
    pin: open with that token pinned (its inflow and outflow edges shown)."""
    exe = shutil.which(browser)
    if exe is None:
        raise FileNotFoundError(f"{browser} is not installed (Debian: apt-get install -y chromium)")
    url = Path(page).resolve().as_uri() + ("" if pin is None else f"#pin={pin}")
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--hide-scrollbars",
                    f"--screenshot={Path(png).resolve()}", f"--window-size={width},{height}", url],
                   check=True, capture_output=True, timeout=120)


def run_view(args, model, tokenizer) -> None:
    """`analyze.py view`: one sequence (greedy, or --response teacher-forced) -> --out, --png,
    --screenshot."""
    examples = read_prompts(args.prompt, args.prompts, 1, args.seed, args.data_dir,
                            args.data_format, args.data_fields)
    # a picture of one response: without a box, trace to its last line (and say so)
    if args.response is not None:
        ro = teacher_forced(model, tokenizer, [examples[0].prompt], [args.response], args.layers,
                            args.prompt_setup, answer_fallback="last_line")
    else:
        prompts = generation_prompts(tokenizer, [examples[0].prompt], args.prompt_setup)
        ro = generate(model, tokenizer, prompts, n=1, max_new_tokens=args.max_new_tokens,
                      layers=args.layers, chat_template=False, answer_fallback="last_line",
                      **sampling(0))
    if not ro.answer_mask.any():
        raise SystemExit("the response is empty: nothing to trace to")
    if answer_span(ro.texts[0]) is None:
        print("note: the response has no \\boxed{} answer; the flow is traced to its last line "
              "(training gives such a response gamma 1 unless --answer-fallback last_line)")
    view = flow_view(ro, 0, tokenizer, args.ratio, args.edges)
    page = render_html(view, examples[0].prompt, args.log_scale, args.ratio)
    Path(args.out).write_text(page, encoding="utf-8")
    print(f"wrote {args.out}" + (f" and {args.png}" if args.png else ""))
    if args.png:
        render_png(view, args.png, args.log_scale)
    if args.screenshot:
        screenshot(args.out, args.screenshot, *args.window, pin=args.pin)
        print(f"wrote {args.screenshot}")
