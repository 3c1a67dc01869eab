"""See the flow and test its causal claim: Fig. 2, Fig. 3, Fig. 7, Table 1 and Table 11 of the
paper.

    python analyze.py view      [--prompt TEXT] [--response TEXT]  -> flow.html (+ flow.png)
    python analyze.py tokens    [--problems N]          -> most frequent high/low-flow tokens
    python analyze.py intervene [--problems N --seed S] -> Table 1: block 20% of tokens, regenerate
    python analyze.py formats   [--problems N]          -> Table 11a: top-k overlap, answer forms
    python analyze.py bands     [--problems N]          -> top-40% set per layer band (Fig. 6)

Every subcommand runs on the shipped tiny model (tiny/qwen3-arith, CPU, seconds) and on any HF
causal LM (--model PATH; --prompts SOURCE, read as train.py's --data under the same --data-dir,
--data-format and --data-fields flags, or a JSONL with a "prompt" and an optional "gold" field,
sampled with --seed; or --prompt TEXT). The flow of a sequence is always flow.trace on
flow.influence_graph of the head-mean attention of the middle layers (capture.py), with the answer
region of rewards.answer_span and the chat-templated prompt as source. This file is the command
line only: each subcommand lives in its module of analysis/ (view.py, tokens.py, intervene.py,
formats.py, bands.py; what they share in common.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import capture
import config
import dataspec
import guards
import models
from analysis.common import PROMPT_SETUPS, read_prompts
from analysis.bands import run_bands
from analysis.formats import run_formats
from analysis.intervene import CONDITIONS, run_intervene
from analysis.tokens import run_tokens
from analysis.view import run_view
from eval import load_model

TINY = Path(__file__).resolve().parent / "tiny" / "qwen3-arith"


def _common(p: argparse.ArgumentParser, problems: int) -> None:
    p.add_argument("--model", default=str(TINY),
                   help="a local model folder, a hub id, a .gguf file or smollm2 (models.py; "
                        "default: the shipped tiny model)")
    p.add_argument("--prompts",
                   help="where the prompts come from, as train.py's --data: a benchmark name "
                        "(with --data-dir), a local .jsonl, a task; or a JSONL with 'prompt' and "
                        "optional 'gold' per line (None: the tiny arithmetic task's problems)")
    dataspec.add_data_flags(p)
    p.add_argument("--prompt-setup", choices=PROMPT_SETUPS, default="user",
                   help="user: instruction in the user message (as in training); system: App. "
                        "E.1's layout, the instruction as a system message; oneshot: user after "
                        "one worked example (analysis/common.WORKED_EXAMPLE)")
    p.add_argument("--problems", type=int, default=problems,
                   help="how many prompts: a seeded random sample of --prompts, or tiny-task ones")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the prompt sample and of sampling")
    p.add_argument("--layers", type=int, nargs="+",
                   help="attention layers to average (None: the middle third)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="the longest response")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def parser() -> argparse.ArgumentParser:
    ap = config.ArgumentParser(prog="analyze.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    v = sub.add_parser("view", help="one sequence -> self-contained HTML (+ PNG heat map)",
                       formatter_class=defaults)
    _common(v, 1)
    v.add_argument("--prompt", default=None,
                   help="prompt text (default: the first tiny-task problem)")
    v.add_argument("--response",
                   help="teacher-force this response instead of generating one (greedy)")
    v.add_argument("--edges", choices=("flow", "attention"), default="flow",
                   help="draw a token's edges by flow (eqs. 3-4) or by raw attention")
    v.add_argument("--log-scale", action="store_true", help="colour throughput on a log scale")
    v.add_argument("--ratio", type=float, default=config.RATIO,
                   help="the share of response tokens marked as top flow (eq. 6)")
    v.add_argument("--out", default="flow.html", help="the HTML page to write")
    v.add_argument("--png", help="also write a PNG heat map here")
    v.add_argument("--screenshot",
                   help="also render the page in headless Chromium and save a PNG here")
    v.add_argument("--pin", type=int, help="token index to pin in the screenshot")
    v.add_argument("--window", type=int, nargs=2, default=(1000, 520), metavar=("W", "H"),
                   help="screenshot size in pixels")
    v.set_defaults(run=run_view)

    t = sub.add_parser("tokens", help="most frequent high-/low-flow tokens (Fig. 3, Table 11b)",
                       formatter_class=defaults)
    _common(t, 200)
    t.add_argument("--ratio", type=float, default=0.2,
                   help="the share of response tokens counted as high (and as low) flow")
    t.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    t.add_argument("--top", type=int, default=15, help="how many tokens to list")
    t.add_argument("--png", default="tokens.png", help="the chart to write")
    t.add_argument("--after-answer", action="store_true",
                   help="count the dead-end tokens after the answer too")
    t.set_defaults(run=run_tokens)

    i = sub.add_parser("intervene",
                       help="Table 1: block high/low/random 20%% of tokens, regenerate",
                       formatter_class=defaults)
    _common(i, 200)
    i.add_argument("--seeds", type=int, nargs="+",
                   help="several seeds: one run each, plus the pooled counts")
    i.add_argument("--ratio", type=float, default=0.2,
                   help="the share of the response prefix to block")
    i.add_argument("--temperature", type=float, default=0.7,
                   help="sampling and regeneration (0 = greedy)")
    i.add_argument("--json", help="write the counts here")
    i.add_argument("--batch", type=int, default=500, help="examples per generate call")
    i.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS),
                   help="which tokens to block (none: the truncate-and-resample control)")
    i.add_argument("--progress",
                   help="keep each finished batch here (JSON lines); the same command again "
                        "resumes from it")
    i.set_defaults(run=run_intervene)

    b = sub.add_parser("bands", help="the top-40%% set by layer band: first/middle/last third, "
                       "all (Fig. 6's question; Fig. 3's structural share per band)",
                       formatter_class=defaults)
    _common(b, 32)
    b.add_argument("--ratio", type=float, default=config.RATIO,
                   help="the top share compared between bands (eq. 6)")
    b.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    b.add_argument("--batch", type=int, default=16, help="prompts per generate call")
    b.add_argument("--json", help="write the figures here")
    b.set_defaults(run=run_bands)

    f = sub.add_parser("formats",
                       help="Table 11a: top-k overlap when only the answer's form changes",
                       formatter_class=defaults)
    _common(f, 100)
    f.set_defaults(run=run_formats)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    args.model = models.resolve(args.model)  # a .gguf / smollm2: its plain folder
    # the prompts are read once before the model loads: a bad --prompts fails in a second
    examples = read_prompts(getattr(args, "prompt", None), args.prompts, args.problems, args.seed,
                            args.data_dir, args.data_format, args.data_fields)
    model, tokenizer = load_model(args.model)
    capture.check_layers(model, args.layers)
    source = args.prompts or ("--prompt" if getattr(args, "prompt", None) else "the tiny task")
    guards.warn_unencodable("analyze.py", tokenizer, {source: examples}, args.model)
    t0 = time.time()
    args.run(args, model, tokenizer)
    print(f"[{time.time() - t0:.1f} s]", file=sys.stderr)


if __name__ == "__main__":
    guards.run("analyze.py", main, sys.argv[1:])
