"""Evaluate a model on math / Countdown / multiple-choice benchmarks: avg@n accuracy per
benchmark, Table 2 style.

    python eval.py --model tiny/qwen3-arith --benchmarks arith --n 1 --temperature 0
    python eval.py --model Qwen/Qwen3-4B-Base \\
        --benchmarks aime24,aime25,amc23,math500,olympiadbench \\
        --data-dir data --n 4 --temperature 0.6 --top-p 0.95 --out results.json
    python eval.py --model runs/x/checkpoints/step-000100/model --benchmarks my_test.jsonl \\
        --data-fields prompt=question,gold=final --n 1 --temperature 0

Benchmarks are named as train.py names its data, under the same flags (--data-format,
--data-fields, --data-dir; `python data.py fetch --out data` fills the folder).

For each problem n responses are sampled (rollout.generate, no attention capture) and scored with
the verifiable rewards of rewards.py. avg@n is the mean reward over all n samples of all problems;
it equals the unbiased pass@1 estimate (`pass_at_k` with k = 1 is c/n). The paper's tables report
"accuracy" without naming n; with n > 1 we also report pass@n, the share of problems solved by at
least one sample.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

import guards
import config
import data
import dataspec
import models
import rewards
import rollout

TITLES = {"aime24": "AIME24", "aime25": "AIME25", "amc23": "AMC23", "math500": "MATH500",
          "olympiadbench": "Olympiad", "minerva": "Minerva", "gsm8k": "GSM8K",
          "countdown": "Countdown", "crossthinkqa": "CrossThinkQA", "dapo": "DAPO",
          "arith": "Arith"}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al.,
    2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(
            f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}"
        )
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def check_settings(n: int, temperature: float, top_p: float, batch_size: int,
                   template: str) -> dict:
    """Raise ValueError on bad settings; return rollout.generate's sampling keyword arguments:
    greedy decoding at temperature 0, else plain temperature + top-p sampling (top-k off: rollout's
    default top_k=100 is the training setting, not an evaluation one)."""
    if n < 1 or batch_size < 1:
        raise ValueError(
            f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}"
        )
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(
            f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}"
        )
    if temperature == 0 and n > 1:
        raise ValueError(
            f"greedy decoding (temperature 0) gives {n} identical responses; use n=1"
        )
    if template not in dataspec.TEMPLATES:
        raise ValueError(
            f"unknown template {template!r}; valid templates: {list(dataspec.TEMPLATES)}"
        )
    if temperature == 0:
        return dict(rollout.GREEDY)
    return dict(temperature=temperature, top_p=top_p, top_k=0)


def check_output(path: Path) -> None:
    """Raise ValueError when `path` cannot be written, before the evaluation rather than after."""
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a file name such as {path}/results.json")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"--out {path}: no such folder {folder}")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"--out {path}: not writable")


def evaluate(model, tokenizer, examples: Sequence[dataspec.Example], *, n: int = 1,
             temperature: float = 0.0, top_p: float = 1.0,
             max_new_tokens: int = config.MAX_NEW_TOKENS,
             template: str = "chat", batch_size: int = 16, desc: str = "eval",
             progress: bool = True, workers: int = rewards.WORKERS) -> dict:
    """Sample n responses per example (greedy when temperature == 0), score them with
    rewards.score_batch.

    batch_size: prompts per generate call (batch_size * n sequences). Returns
      {"n", "num_problems", "avg" (avg@n = mean reward of all samples),
       "pass@1" (unbiased estimate; = avg), "pass@n" (share of problems with a correct sample),
       "mean_response_tokens", "rewards": [[n rewards] per example],
       "items": [{"id", "prompt", "gold", "responses", "rewards"}]}
    (rewards in [0, 1]; "avg" etc. too). progress=False: no tqdm bar. workers: rewards.score_batch's
    processes (0 = score in this process: no pool start-up, for small frequent evaluations as
    train.py's).
    """
    if not examples:
        raise ValueError("evaluate: no examples")
    sampling = check_settings(n, temperature, top_p, batch_size, template)
    if template == "chat" and not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template: use --template fewshot (the paper's "
                         "few-shot prompt for base models)")
    texts: list[str] = []
    lengths: list[int] = []
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(examples), batch_size), desc=desc, unit="batch",
                          leave=False, disable=not progress):
            batch = examples[start : start + batch_size]
            rendered = [dataspec.render_prompt(e.prompt, template) for e in batch]
            out = rollout.generate(model, tokenizer, [p for p, _ in rendered], n=n,
                                   max_new_tokens=max_new_tokens, capture=False,
                                   chat_template=rendered[0][1], **sampling)
            texts += out.texts
            lengths += out.lengths.tolist()
    finally:
        model.train(was_training)

    scores = [0.0] * len(texts)  # sample j of example i is at i * n + j
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_kind[e.kind] += range(i * n, (i + 1) * n)
    for kind, rows in by_kind.items():
        got = rewards.score_batch(kind, [texts[r] for r in rows],
                                  [examples[r // n].gold for r in rows], workers=workers)
        for r, s in zip(rows, got):
            scores[r] = s

    items = [dict(id=e.id, prompt=e.prompt, gold=e.gold, responses=texts[i * n : (i + 1) * n],
                  rewards=scores[i * n : (i + 1) * n]) for i, e in enumerate(examples)]
    correct = [sum(s == 1.0 for s in item["rewards"]) for item in items]
    return {
        "n": n,
        "num_problems": len(examples),
        "avg": sum(scores) / len(scores),
        "pass@1": sum(pass_at_k(n, c, 1) for c in correct) / len(items),
        "pass@n": sum(pass_at_k(n, c, n) for c in correct) / len(items),
        "mean_response_tokens": sum(lengths) / len(lengths),
        "rewards": [item["rewards"] for item in items],
        "items": items,
    }


def format_table(model_name: str, results: dict[str, dict]) -> str:
    """Rows = model, columns = benchmarks + Avg. (the mean over benchmarks, as the paper's Avg.),
    in percent."""
    names = [TITLES.get(b, b) for b in results] + ["Avg."]
    figures = [100 * r["avg"] for r in results.values()]
    figures.append(sum(figures) / len(figures))
    width = [max(len(x), 6) for x in names]
    label = max(len("Model"), len(model_name))
    head = "Model".ljust(label) + "".join(f"  {x:>{w}}" for x, w in zip(names, width))
    row = model_name.ljust(label) + "".join(f"  {f:>{w}.1f}" for f, w in zip(figures, width))
    return f"{head}\n{row}"


def load_model(path: str):
    """Model (sdpa attention; bf16 on CUDA, float32 on CPU) and tokenizer (pad token = EOS when it
    has none)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype,
                                                 attn_implementation="sdpa").to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parser().parse_args(argv)


def parser() -> argparse.ArgumentParser:
    p = config.ArgumentParser(prog="eval.py", description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True,
                   help="a local model folder, a hub id, a .gguf file or smollm2 (models.py)")
    p.add_argument("--benchmarks", required=True,
                   help=f"comma-separated: {', '.join(data.benchmark_names())}, "
                        "or paths of local .jsonl files")
    dataspec.add_data_flags(p)
    p.add_argument("--n", type=int, default=4, help="samples per problem")
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (needs --n 1)")
    p.add_argument("--top-p", type=float, default=0.95,
                   help="nucleus sampling: keep the tokens of the top-p probability mass")
    p.add_argument("--max-new-tokens", type=int, default=config.MAX_NEW_TOKENS,
                   help="the longest response")
    p.add_argument("--template", choices=dataspec.TEMPLATES, default="chat",
                   help="chat (the tokenizer's chat template) or fewshot (the paper's few-shot "
                        "prompt, for base models)")
    p.add_argument("--limit", type=int, default=None, help="first K problems of each benchmark")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    p.add_argument("--out", default=None,
                   help="write a JSON with the figures, the args and every response")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (set per benchmark)")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    keys = [Path(b).stem if b.endswith(".jsonl") else b for b in names]
    unknown = [b for b in names if not b.endswith(".jsonl") and b not in data.benchmark_names()]
    if unknown or not names or len(set(keys)) < len(keys):
        raise ValueError(f"unknown or repeated benchmark(s) in {names}; valid: "
                         f"{data.benchmark_names()} or .jsonl paths with distinct names")
    # settings, model path and data are checked before the model loads: a typo fails in a
    # second, not after minutes
    check_settings(args.n, args.temperature, args.top_p, args.batch_size, args.template)
    args.model = models.resolve(args.model)  # a .gguf / smollm2: its plain folder
    if args.out:
        check_output(Path(args.out))
    sets = {key: data.load_source(b, args.data_format, args.data_fields, args.data_dir,
                                  limit=args.limit)
            for key, b in zip(keys, names)}
    model, tokenizer = load_model(args.model)
    if args.template == "chat" and not tokenizer.chat_template:
        raise ValueError(f"the tokenizer of {args.model} has no chat template: use "
                         "--template fewshot (the paper's few-shot prompt for base models)")
    guards.warn_unencodable("eval.py", tokenizer, dict(zip(names, sets.values())), args.model)
    results, start = {}, time.time()
    for name, examples in sets.items():
        set_seed(args.seed)  # each benchmark's samples do not depend on which ran before
        results[name] = evaluate(model, tokenizer, examples, n=args.n,
                                 temperature=args.temperature, top_p=args.top_p,
                                 max_new_tokens=args.max_new_tokens, template=args.template,
                                 batch_size=args.batch_size, desc=name)
    sampling = "greedy" if args.temperature == 0 else f"T={args.temperature}, top-p={args.top_p}"
    print(f"avg@{args.n} accuracy (%) = unbiased pass@1; {sampling}, max {args.max_new_tokens} "
          f"new tokens, template {args.template}, {time.time() - start:.0f} s")
    print(format_table(args.model, results))
    report = {"args": vars(args), "avg": sum(r["avg"] for r in results.values()) / len(results),
              "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False))
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    guards.run("eval.py", main, sys.argv[1:])
