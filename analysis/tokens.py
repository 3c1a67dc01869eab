"""tokens: Fig. 3 (the most frequent high- and low-flow tokens) and the structural/content split of
Table 11b (baselines.token_class: the classes the flow-structural / flow-content strategies use)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.common import (boxed_rows, flow_of, generation_prompts, pyplot, read_prompts,
                             sampling, token_texts)
from baselines import token_class  # shared with the Table 11b credit strategies
from dataspec import Example
from flow import top_k_mask
from rollout import generate


@dataclass
class TokenStats:
    high: Counter  # token text -> times it was in a response's top `ratio` by tau
    low: Counter  # ... bottom `ratio`
    all: Counter  # every response token
    responses: int


def token_stats(model, tokenizer, examples: list[Example], ratio: float = 0.2,
                temperature: float = 0.7, max_new_tokens: int = 128, batch: int = 64, layers=None,
                after_answer: bool = False, seed: int = 0, setup: str = "user") -> TokenStats:
    """Sample one response per example (E.1: T = 0.7), trace its flow, count the top and bottom
    `ratio` of its response tokens by tau (E.1: 20% per response). Responses without a complete
    \\boxed{} answer are skipped. The tokens after the answer region ("}", EOS) are dead ends with
    tau = 0 by construction and always land in the bottom set; they are left out unless
    after_answer. setup: common.PROMPT_SETUPS."""
    high, low, every, used = Counter(), Counter(), Counter(), 0
    torch.manual_seed(seed)
    for s in range(0, len(examples), batch):
        prompts = generation_prompts(tokenizer, [e.prompt for e in examples[s : s + batch]], setup)
        ro = generate(model, tokenizer, prompts, n=1, max_new_tokens=max_new_tokens, layers=layers,
                      chat_template=False, **sampling(temperature))
        ok = boxed_rows(ro)
        if not ok.any():
            continue
        ro_ok = ro.rows(ok.nonzero().flatten())
        _, field = flow_of(ro_ok)
        cand = ro_ok.response_mask.cpu()  # [n, T]
        if not after_answer:  # drop everything after the last answer token
            cand &= ro_ok.answer_mask.cpu().flip(1).long().cumsum(1).flip(1) > 0
        hi = top_k_mask(field.tau, cand, ratio)
        lo = top_k_mask(field.tau, cand, ratio, largest=False)
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
    if not total:
        return float("nan")
    return sum(c for t, c in counts.items() if token_class(t) == "structural") / total


def tokens_table(stats: TokenStats, top: int = 15) -> str:
    lines = [f"{stats.responses} responses; structural share: "
             f"high-flow {structural_share(stats.high):.1%}, "
             f"low-flow {structural_share(stats.low):.1%}, "
             f"all response tokens {structural_share(stats.all):.1%}", "",
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
    """Fig. 3 as two bar charts: the most frequent high-flow and low-flow tokens, coloured by
    token_class."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.28 * top + 1.5), dpi=110)
    colour = {"structural": "#d7301f", "content": "#2166ac"}
    for ax, counts, name in ((axes[0], stats.high, "high-flow"), (axes[1], stats.low, "low-flow")):
        items = counts.most_common(top)[::-1]
        ax.barh([repr(t) for t, _ in items], [c for _, c in items],
                color=[colour[token_class(t)] for t, _ in items])
        ax.set_title(f"{name} (structural {structural_share(counts):.0%})", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle("most frequent tokens; red = structural, blue = content", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_tokens(args, model, tokenizer) -> None:
    """`analyze.py tokens`: the table on stdout, the chart in --png."""
    examples = read_prompts(None, args.prompts, args.problems, args.seed, args.data_dir,
                            args.data_format, args.data_fields)
    stats = token_stats(model, tokenizer, examples, args.ratio, args.temperature,
                        args.max_new_tokens, layers=args.layers, after_answer=args.after_answer,
                        seed=args.seed, setup=args.prompt_setup)
    print(tokens_table(stats, args.top))
    tokens_chart(stats, args.png, args.top)
    print(f"wrote {args.png}")
