"""What the subcommands share: the prompts they read, teacher forcing, sampling settings, the flow
of a batch, each token's text, and matplotlib set up for token text."""

from __future__ import annotations

import torch
from torch import Tensor

from data import Example, read_jsonl
from flow import FlowField, influence_graph, trace
from rewards import answer_span
from rollout import GREEDY, Rollout, capture_attention
from tasks import ArithmeticTask


def read_prompts(prompt: str | None, prompts_file: str | None, problems: int,
                 seed: int) -> list[Example]:
    """--prompt TEXT, or --prompts FILE.jsonl ("prompt", optional "gold"), or the tiny arithmetic
    task."""
    if prompt is not None:
        return [Example(prompt=prompt, gold=None, id="cli")]
    if prompts_file is None:
        return ArithmeticTask().examples(problems, seed)
    out = []
    for line_no, row in read_jsonl(prompts_file):
        if not isinstance(row.get("prompt"), str):
            raise ValueError(f"{prompts_file}:{line_no}: each line must be a JSON object with a "
                             "string 'prompt'")
        out.append(Example(prompt=row["prompt"], gold=row.get("gold"),
                           id=f"{prompts_file}:{line_no}"))
    if not out:
        raise ValueError(f"{prompts_file} holds no prompts")
    return out[:problems]


def teacher_forced(model, tokenizer, prompts: list[str], responses: list[str],
                   layers=None) -> Rollout:
    """A Rollout for given (prompt, response) pairs: chat-templated prompt + response + EOS,
    right-padded, with the attention of one forward pass (rollout.capture_attention). The answer
    mask comes from the tokenizer's character offsets of rewards.answer_span(response)."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"need as many responses as prompts (>= 1), got {len(prompts)} and "
                         f"{len(responses)}")
    if not tokenizer.is_fast:
        raise ValueError("teacher forcing needs a fast tokenizer (character offsets of the answer "
                         "span)")
    eos = tokenizer.eos_token_id
    rows = []
    for prompt, response in zip(prompts, responses):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        p_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
        span = answer_span(response)
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
