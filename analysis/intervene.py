"""intervene: Table 1 and appendix E.1. Block 20% of a response's tokens (high flow, low flow,
random, and two controls), regenerate, and count how often the final answer changes.

Blocking. A blocked token keeps its position and its KV entries, but no later token may read it,
in any layer: its column of the attention mask is 0 for every query. We pass the 2D attention_mask
with a 0 at each blocked position *and* explicit position_ids (computed from the padding alone), so
HF does not renumber the positions from the mask. transformers' generate extends explicit
position_ids by one per step and appends 1s to the mask, so the new tokens are never blocked. A
blocked token cannot read itself either (its own column is 0); that changes only its own hidden
states, which nobody reads. tests/test_analysis_intervene.py checks that with every prompt token
blocked the logits no longer depend on the prompt.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from analysis.common import (boxed_rows, flow_of, generation_prompts, read_prompts,
                             require_math, sampling)
from dataspec import Example
from flow import top_k_mask
from rewards import boxed_span, math_reward
from rollout import generate

Z95 = 1.959963984540054  # two-sided 95% normal quantile


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
               temperature: float = 0.7, top_k: int = 100, seed: int = 0,
               with_logits: bool = True) -> tuple[list[Tensor], Tensor | None]:
    """Continue each prefix (1-D token ids, no padding) while no later token may read its `blocked`
    positions.

    Left-pads the batch; attention_mask = 0 on padding and on blocked tokens; position_ids from the
    padding only, so every token keeps its position. temperature 0 = greedy. Returns the new tokens
    of each row (up to and including EOS) and the logits of every step [N, steps, V] (None when
    not `with_logits`: with a real vocabulary they are GBs nobody reads).
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
            raise ValueError(f"row {i}: blocked must be a bool mask shaped like its prefix "
                             f"{tuple(p.shape)}")
        if b[-1]:
            raise ValueError(f"row {i}: the last prefix token is fed to the model and cannot be "
                             "blocked")
        ids[i, width - len(p) :], real[i, width - len(p) :], block[i, width - len(p) :] = p, True, b
    # [N, L]: counted over real tokens, blocked included
    positions = (real.long().cumsum(-1) - 1).clamp_(min=0)
    torch.manual_seed(seed)
    dev = model.device
    out = model.generate(ids.to(dev), attention_mask=(real & ~block).long().to(dev),
                         position_ids=positions.to(dev), max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         return_dict_in_generate=True, output_logits=True,
                         **sampling(temperature, top_k))
    if not all(torch.isfinite(step).all() for step in out.logits):
        raise RuntimeError("non-finite logits under blocking: this attention backend does not "
                           "tolerate a fully masked row (a blocked token with nothing before it); "
                           "report the model and device")
    new = []
    for row in out.sequences[:, width:].cpu():
        stop = (row == tokenizer.eos_token_id).nonzero()
        new.append(row[: int(stop[0]) + 1] if len(stop) else row)
    return new, torch.stack(out.logits, dim=1).cpu() if with_logits else None  # [N, steps, V]


def extracted(text: str) -> str | None:
    """The inside of the last complete \\boxed{...}, stripped; None when extraction fails."""
    span = boxed_span(text)
    return None if span is None else text[span[0] : span[1]].strip()


def answer_changed(old: str, new: str) -> bool:
    """Answers differ: one extraction fails and the other does not, or both exist and are not equal
    (equal strings, or math-verify equality of the new response with the old answer as gold)."""
    a, b = extracted(old), extracted(new)
    if a is None or b is None:
        return (a is None) != (b is None)
    return a != b and math_reward(new, a) == 0.0


# high / low / random: Table 1. recent: the tokens right before the cut (is flow more than
# recency?); none: nothing blocked, so its change rate is what truncating and resampling alone does.
CONDITIONS = ("high", "low", "random", "recent", "none")


@dataclass
class Counts:
    n: int = 0
    changed: int = 0
    reversed: int = 0  # correctness flipped, either way (needs a gold)
    broke: int = 0  # correct -> wrong
    fixed: int = 0  # wrong -> correct
    scored: int = 0  # rows with a gold


@dataclass
class Progress:
    """A long run's record. With a path: one JSON line per finished batch of examples (its counts,
    what it skipped, the random states after it), appended as each batch ends, so a killed run
    rerun with the same path and settings skips the batches already done and ends with the same
    counts as an uninterrupted run. Either way it counts the skipped responses by reason."""
    path: Path | None = None
    no_box: int = 0  # no complete \\boxed{} answer (truncated ones included)
    too_short: int = 0  # boxed, but too few tokens before the answer to block one

    def done(self, settings: dict) -> list[dict]:
        """The finished batches of a run with these settings, in order (lines of other runs, such
        as other seeds, are left alone)."""
        if self.path is None or not self.path.is_file():
            return []
        lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [line for line in lines if line.get("settings") == settings]

    def add(self, line: dict, new: bool) -> None:
        """Count a batch's skipped responses; a new batch also goes to the file, before the next
        batch starts."""
        self.no_box, self.too_short = (self.no_box + line["no_box"],
                                       self.too_short + line["too_short"])
        if self.path is not None and new:
            with self.path.open("a") as f:
                f.write(json.dumps(line) + "\n")


def intervene(model, tokenizer, examples: list[Example], seed: int = 0, ratio: float = 0.2,
              temperature: float = 0.7, max_new_tokens: int = 128, layers=None,
              conditions=CONDITIONS, batch: int = 500, setup: str = "user",
              progress: Progress | None = None) -> tuple[dict[str, Counts], int]:
    """Table 1 / appendix E.1. Per example: sample a response (temperature), trace its flow,
    truncate it at a random point before the answer region, block `ratio` of the response tokens
    before that point (the highest tau, the lowest tau, a random set, or none as the control),
    regenerate from the point with the same sampling settings and the same random seed for every
    condition, and compare the new final answer with the original one. Returns the counts per
    condition and the number of responses skipped: no complete \\boxed{} answer (the paper's
    answer region; truncated responses included), or too short to hold one blocked token before
    it (`progress` counts each reason, and with a path keeps each batch's result so that a rerun
    resumes). `batch` examples at a time; setup: common.PROMPT_SETUPS.
    """
    require_math(examples, "intervene")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    progress = progress or Progress()
    settings = dict(model=str(model.name_or_path), examples=[e.id for e in examples], seed=seed,
                    ratio=ratio, temperature=temperature, max_new_tokens=max_new_tokens,
                    layers=layers, conditions=list(conditions), batch=batch, setup=setup)
    done = progress.done(settings)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    parts = []
    for b, s in enumerate(range(0, len(examples), batch)):
        if b < len(done):  # finished before: its counts, and the random states it left
            line = done[b]
            rng.setstate(_tuples(line["rng"]))
            torch.set_rng_state(torch.tensor(line["torch_rng"], dtype=torch.uint8))
            if "cuda_rng" in line:
                torch.cuda.set_rng_state(torch.tensor(line["cuda_rng"], dtype=torch.uint8))
        else:
            t0 = time.time()
            counts, no_box, too_short = _intervene_batch(
                model, tokenizer, examples[s : s + batch], rng, seed, ratio, temperature,
                max_new_tokens, layers, conditions, setup)
            line = dict(settings=settings, start=s, no_box=no_box, too_short=too_short,
                        counts=counts and {c: vars(x) for c, x in counts.items()},
                        rng=rng.getstate(), torch_rng=torch.get_rng_state().tolist(),
                        seconds=round(time.time() - t0, 1))
            if torch.cuda.is_available():  # generate() samples with the GPU's generator there
                line["cuda_rng"] = torch.cuda.get_rng_state().tolist()
        progress.add(line, new=b >= len(done))
        if line["counts"]:
            parts.append({c: Counts(**x) for c, x in line["counts"].items()})
    if not parts:
        raise ValueError("no response has a complete \\boxed{} answer with enough tokens before "
                         "it to intervene on (truncated? raise --max-new-tokens)")
    return pooled(parts), progress.no_box + progress.too_short


def _tuples(state):
    """random.Random.getstate() back from its JSON lists."""
    return tuple(_tuples(x) for x in state) if isinstance(state, list) else state


def _min_kept(ratio: float) -> int:
    """Fewest kept response tokens that leave one to block: top_k_mask must pick >= 1 of the
    candidates, and the last kept token is no candidate (see `truncate_and_select`)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    return 1 + next(m for m in range(1, 10_000) if math.floor(m * ratio + 0.5) >= 1)


def truncate_and_select(tau: Tensor, response_mask: Tensor, answer_mask: Tensor, ratio: float,
                        rng: random.Random,
                        gen: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """Appendix E.1's protocol on a batch whose rows all hold an answer with >= _min_kept tokens
    before it.

    Truncation: keep the first t response tokens, t uniform in [_min_kept, tokens before the
    answer region], so the whole answer is regenerated. Candidates: the kept response tokens except
    the last one (its own output gives the first regenerated token: blocking it cannot stop what it
    carries). Of those, `ratio` (top_k_mask rounding) by condition. tau, masks: [n, T]. Returns cut
    [n] (the first position not kept) and a bool [n, T] selection per condition.
    """
    n, T = tau.shape
    pos = torch.arange(T)
    start = response_mask.long().argmax(1)  # [n] first response position
    first_answer = torch.where(answer_mask, pos, T).min(1).values  # [n]
    cut = torch.tensor([int(s) + rng.randint(_min_kept(ratio), int(a - s))
                        for s, a in zip(start, first_answer)])
    before = response_mask & (pos < cut[:, None] - 1)  # [n, T] candidates
    return cut, {"high": top_k_mask(tau, before, ratio),
                 "low": top_k_mask(tau, before, ratio, largest=False),
                 "random": top_k_mask(torch.rand(n, T, generator=gen), before, ratio),
                 "recent": top_k_mask(pos.double().expand(n, T), before, ratio),
                 "none": torch.zeros(n, T, dtype=torch.bool)}


def _intervene_batch(model, tokenizer, examples, rng, seed, ratio, temperature, max_new_tokens,
                     layers, conditions, setup):
    prompts = generation_prompts(tokenizer, [e.prompt for e in examples], setup)
    ro = generate(model, tokenizer, prompts, n=1, max_new_tokens=max_new_tokens, layers=layers,
                  chat_template=False, **sampling(temperature))
    resp, answer = ro.response_mask.cpu(), ro.answer_mask.cpu()
    # [N] response tokens before the answer
    tokens_before = (resp & (answer.long().cumsum(1) == 0)).sum(1)
    boxed = boxed_rows(ro)
    ok = boxed & (tokens_before >= _min_kept(ratio))
    no_box, too_short = int((~boxed).sum()), int((boxed & ~ok).sum())
    if not ok.any():
        return None, no_box, too_short
    ro = ro.rows(ok.nonzero().flatten())
    kept_examples = [e for e, k in zip(examples, ok.tolist()) if k]
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
        new_ids, _ = regenerate(model, tokenizer, prefixes, blocked, max_new_tokens, temperature,
                                seed=seed, with_logits=False)
        c = Counts(n=n)
        for i in range(n):
            text = tokenizer.decode(torch.cat([kept_response[i], new_ids[i]]),
                                    skip_special_tokens=True)
            c.changed += answer_changed(ro.texts[i], text)
            if golds[i] is not None:
                new_ok = math_reward(text, golds[i]) > 0
                c.scored += 1
                c.reversed += new_ok != old_ok[i]
                c.broke += old_ok[i] and not new_ok
                c.fixed += new_ok and not old_ok[i]
        results[cond] = c
    return results, no_box, too_short


PAPER_TABLE1 = {"high": (45.9, 14.9), "low": (14.9, 0.5), "random": (29.5, 4.5)}


def _rate(k: int, n: int) -> str:
    if n == 0:
        return "n/a"
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def intervene_table(runs: dict[str, dict[str, Counts]]) -> str:
    """Markdown: one row per (run, condition), rates in % with 95% Wilson intervals, the paper's
    numbers."""
    lines = ["| run | blocked 20% | n | answer change % [95% CI] | correctness reverse % [95% CI] "
             "| c->w | w->c | paper: change / reverse % |", "|---|---|---|---|---|---|---|---|"]
    for run, res in runs.items():
        for cond, c in res.items():
            paper = PAPER_TABLE1.get(cond)
            lines.append(f"| {run} | {cond} | {c.n} | {_rate(c.changed, c.n)} | "
                         f"{_rate(c.reversed, c.scored)} | {c.broke} | {c.fixed} | "
                         + (f"{paper[0]} / {paper[1]}" if paper else "-") + " |")
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


def run_intervene(args, model, tokenizer) -> None:
    """`analyze.py intervene`: one run per seed (plus the pooled counts), the table on stdout, the
    counts in --json."""
    runs = {}
    for seed in args.seeds or [args.seed]:
        examples = read_prompts(None, args.prompts, args.problems, seed, args.data_dir,
                                args.data_format, args.data_fields)
        s0 = time.time()
        progress = Progress(Path(args.progress) if args.progress else None)
        res, _ = intervene(model, tokenizer, examples, seed, args.ratio, args.temperature,
                           args.max_new_tokens, args.layers, args.conditions, args.batch,
                           args.prompt_setup, progress)
        runs[f"seed {seed}"] = res
        boxed = len(examples) - progress.no_box
        print(f"seed {seed}: {len(examples)} prompts, {boxed} boxed ({_rate(boxed, len(examples))}"
              f" %), skipped {progress.no_box} without a box and {progress.too_short} too short, "
              f"{time.time() - s0:.0f} s", flush=True)
    if len(runs) > 1:
        runs["pooled"] = pooled(list(runs.values()))
    print(intervene_table(runs))
    if args.json:
        counts = {r: {c: vars(x) for c, x in res.items()} for r, res in runs.items()}
        Path(args.json).write_text(json.dumps(counts, indent=1))
