"""What the subcommands share: the prompts they read (a seeded sample), how a prompt is laid out
in the chat template, teacher forcing, sampling settings, the flow of a batch, each token's text,
and matplotlib set up for token text."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import Tensor

import data
from data import read_jsonl
from dataspec import MATH_INSTRUCTION, Example
from flow import FlowField, influence_graph, trace
from rewards import answer_span, boxed_span
from capture import capture_attention
from rollout import GREEDY, Rollout
from tasks import ArithmeticTask


def read_prompts(prompt: str | None, prompts: str | None, problems: int, seed: int,
                 data_dir: str | None = None, data_format: str | None = None,
                 data_fields: str | None = None) -> list[Example]:
    """--prompt TEXT, or --prompts SOURCE, or the tiny arithmetic task (`problems` drawn with
    `seed`).

    SOURCE is read as train.py reads --data (data.load_source, under the same --data-dir,
    --data-format and --data-fields flags): a benchmark name of data.BENCHMARKS (read from
    data_dir/<its file>, e.g. `--prompts gsm8k --data-dir data`, else from its source), a JSONL
    (dataspec.FORMATS: `data_format`, else guessed from the file name or its first row; your own field
    names through `data_fields`), or here also a JSONL with a "prompt" and an optional "gold".
    From a source, a random sample of `problems` examples drawn with `seed` (App. E.1: "we
    randomly sampled 500 instances"), in the source's order; all of them when it holds fewer.
    """
    if prompt is not None:
        return [Example(prompt=prompt, gold=None, id="cli")]
    if prompts is None:
        return ArithmeticTask().examples(problems, seed)
    if problems < 1:
        raise ValueError(f"--problems must be >= 1, got {problems}")
    examples = _load_source(prompts, data_dir, data_format, data_fields)
    keep = sorted(random.Random(seed).sample(range(len(examples)), min(problems, len(examples))))
    return [examples[i] for i in keep]


def _load_source(source: str, data_dir: str | None, data_format: str | None,
                 data_fields: str | None) -> list[Example]:
    """Every example of --prompts SOURCE (see read_prompts)."""
    path = Path(source)
    if data_format is None and data_fields is None and path.is_file():
        first = next(read_jsonl(path))  # an empty file raises ValueError: no rows
        try:
            data.guess_format(path, first[1])  # a format reads it: data.load_source below
        except ValueError:
            if not isinstance(first[1].get("prompt"), str):
                raise
            return _plain_prompts(path)
    return data.load_source(source, data_format, data_fields, data_dir)


def _plain_prompts(path: Path) -> list[Example]:
    """A JSONL file of {"prompt": ..., "gold": ...} objects (gold optional)."""
    out = []
    for line_no, row in read_jsonl(path):
        if not isinstance(row.get("prompt"), str):
            raise ValueError(f"{path}:{line_no}: each line must be a JSON object with a string "
                             "'prompt'")
        out.append(Example(prompt=row["prompt"], gold=row.get("gold"), id=f"{path}:{line_no}"))
    return out


def require_math(examples: list[Example], command: str) -> None:
    """intervene and formats compare \\boxed{} answers with math_reward: refuse other kinds."""
    kinds = sorted({e.kind for e in examples} - {"math"})
    if kinds:
        raise ValueError(f"{command} compares \\boxed{{}} math answers; these prompts are of kind "
                         f"{', '.join(kinds)}")


# How the prompt is laid out. "user" (default): the whole prompt, instruction included, is the
# user message, as train.py and eval.py send it (App. C.3). "system": App. E.1's template for the
# analysis experiments, the instruction as a system message and the question alone as the user
# message. "oneshot": "user" after one worked exchange (WORKED_EXAMPLE), for a small model that
# does not box its answer zero-shot (SmolLM2-135M-Instruct: 0 of 8 GSM8K answers boxed zero-shot,
# 5 of 8 with the example; issue 25).
PROMPT_SETUPS = ("user", "system", "oneshot")
# GSM8K's first *training* problem (never a test one), answered in the paper's format.
WORKED_EXAMPLE = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?\n" + MATH_INSTRUCTION,
    "In May Natalia sold half as many clips as in April: 48 / 2 = 24 clips.\n"
    "Altogether she sold 48 + 24 = 72 clips.\n"
    "The answer is \\boxed{72}.")
INSTRUCTION_STEM = MATH_INSTRUCTION.split(",")[0]  # "Please reason step by step"


def split_instruction(prompt: str) -> tuple[str, str | None]:
    """(question, instruction): the instruction is the prompt's last line when it starts like the
    paper's, "Please reason step by step" (data.py appends MATH_INSTRUCTION to a benchmark
    question after a newline; formats.py's answer forms word theirs the same way); a prompt
    without one is all question."""
    question, _, last = prompt.rpartition("\n")
    if question and last.startswith(INSTRUCTION_STEM):
        return question, last
    return prompt, None


def chat_text(tokenizer, prompt: str, setup: str = "user") -> str:
    """The prompt rendered with the tokenizer's chat template, ready for the assistant's turn. In
    the "system" setup the instruction (MATH_INSTRUCTION when the prompt carries none) becomes the
    system message; "oneshot" puts the WORKED_EXAMPLE exchange first."""
    if setup in ("user", "oneshot"):
        messages = [{"role": "user", "content": prompt}]
        if setup == "oneshot":
            messages = [{"role": "user", "content": WORKED_EXAMPLE[0]},
                        {"role": "assistant", "content": WORKED_EXAMPLE[1]}] + messages
    elif setup == "system":
        question, instruction = split_instruction(prompt)
        messages = [{"role": "system", "content": instruction or MATH_INSTRUCTION},
                    {"role": "user", "content": question}]
    else:
        raise ValueError(f"prompt setup must be one of {PROMPT_SETUPS}, got {setup!r}")
    if not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template (the analyses send chat prompts)")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generation_prompts(tokenizer, prompts: list[str], setup: str = "user") -> list[str]:
    """chat_text of each prompt, for rollout.generate(..., chat_template=False). That call lets the
    tokenizer add its special tokens, so a BOS the template already wrote is taken off once."""
    texts = [chat_text(tokenizer, p, setup) for p in prompts]
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    if adds_bos:
        texts = [t[len(bos):] if t.startswith(bos) else t for t in texts]
    return texts


def boxed_rows(ro: Rollout) -> Tensor:
    """bool [N]: the responses whose answer region is a complete \\boxed{} (the paper's answer
    region). A response without one, truncated or unfinished, has no answer to trace to or to
    compare, whatever answer region rollout falls back to."""
    boxed = torch.tensor([boxed_span(t) is not None for t in ro.texts])
    return ro.answer_mask.any(1).cpu() & boxed


def teacher_forced(model, tokenizer, prompts: list[str], responses: list[str],
                   layers=None, setup: str = "user", answer_fallback: str | None = None) -> Rollout:
    """A Rollout for given (prompt, response) pairs: chat-templated prompt (chat_text) + response +
    EOS, right-padded, with the attention of one forward pass (capture.capture_attention). The
    answer mask comes from the tokenizer's character offsets of
    rewards.answer_span(response, answer_fallback)."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"need as many responses as prompts (>= 1), got {len(prompts)} and "
                         f"{len(responses)}")
    if not tokenizer.is_fast:
        raise ValueError("teacher forcing needs a fast tokenizer (character offsets of the answer "
                         "span)")
    eos = tokenizer.eos_token_id
    rows = []
    for prompt, response in zip(prompts, responses):
        text = chat_text(tokenizer, prompt, setup)
        p_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
        span = answer_span(response, answer_fallback)
        answer = [span is not None and a < span[1] and b > span[0]
                  for a, b in enc["offset_mapping"]]
        rows.append((p_ids, enc["input_ids"] + [eos], answer + [False]))
    width = max(len(p) + len(r) for p, r, _ in rows)
    n = len(rows)
    ids = torch.full((n, width), tokenizer.pad_token_id, dtype=torch.long)
    prompt_mask, response_mask, answer_mask = (torch.zeros(n, width, dtype=torch.bool)
                                               for _ in range(3))
    for i, (p, r, a) in enumerate(rows):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        prompt_mask[i, : len(p)] = True
        response_mask[i, len(p) : len(p) + len(r)] = True
        answer_mask[i, len(p) : len(p) + len(r)] = torch.tensor(a)
    attention_mask = (prompt_mask | response_mask).long()
    ids, attention_mask = ids.to(model.device), attention_mask.to(model.device)
    attn = capture_attention(model, ids, attention_mask, layers)
    return Rollout(input_ids=ids, attention_mask=attention_mask, prompt_mask=prompt_mask,
                   response_mask=response_mask, answer_mask=answer_mask, texts=list(responses),
                   lengths=response_mask.sum(1), attn=attn.cpu())


def sampling(temperature: float, top_k: int = 100) -> dict:
    """generate() keyword arguments: sampling at `temperature` with top-k (top-p 1), or greedy at
    0."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if temperature == 0:
        return dict(GREEDY)
    return dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=1.0)


def flow_of(ro: Rollout) -> tuple[Tensor, FlowField]:
    """(W [N, T, T], FlowField of [N, T]) for every row of a rollout; each row needs an answer
    region."""
    if ro.attn is None:
        raise ValueError("the rollout has no attention: generate it with capture=True")
    W = influence_graph(ro.attn.cpu())  # [N, T, T]
    return W, trace(W, ro.prompt_mask.cpu(), ro.answer_mask.cpu())


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token decoded on its own (special tokens kept, so the page shows the chat template)."""
    return [tokenizer.decode([i]) for i in ids]


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, with mathtext off: tokens like "$" or
    "\\frac{" are text, not LaTeX to parse."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt
