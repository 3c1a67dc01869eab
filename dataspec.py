"""What an example is, and how every command names its data: Example, the row formats of the
benchmark files, the data flags, the prompt templates.

Light on purpose (no torch, no math-verify): config.py checks --data-format, --data-fields and
--template against the tables here before anything heavy is imported. Reading the files is
data.py's; the synthetic tasks (tasks.py) make Examples too.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Example:
    """One training or evaluation item, whatever file or task it came from.

    prompt: the user message (instruction included), before the chat template.
    gold:   what rewards.REWARDS[kind] takes as the gold answer.
    kind:   "math", "countdown" or "choice" (a key of rewards.REWARDS).
    id:     where it came from, e.g. "gsm8k_test.jsonl:17" or "arith:3".
    """

    prompt: str
    gold: Any
    kind: str = "math"
    id: str = ""


# ---------------------------------------------------------------------------------------------
# Benchmark files: one Format per row shape of a benchmark's file (ours, or as the hub has it)

# the paper's (App. C.3)
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Format:
    """How to read one JSONL row shape into an Example.

    prompt_field: dotted path of the question text ("prompt.0.content":
                  row["prompt"][0]["content"]); "a|b": path a, else path b (the same benchmark
                  in the shape of our file | of its hub copy, which `fetch` writes).
    gold:         dotted path(s) of the gold answer, the same way. A field named `answer` or
                  `solution` goes through rewards.gold_of, which knows GSM8K's "... #### 18" and
                  a worked solution's last \\boxed{}.
    instruction:  appended to the question after a newline; None when the stored prompt carries
                  its own (Countdown's TinyZero prompt, CrossThinkQA's).
    """

    name: str
    kind: str  # a key of rewards.REWARDS
    prompt_field: str
    gold: str
    instruction: str | None = MATH_INSTRUCTION


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("gsm8k", "math", "question", "answer"),  # answer: "...\n#### 18"
    Format("math500", "math", "problem", "answer"),
    Format("aime24", "math", "problem", "answer"),
    # verl-style rows | math-ai/aime25's
    Format("aime25", "math", "prompt.0.content|problem", "reward_model.ground_truth|answer"),
    Format("amc23", "math", "question", "answer"),  # answer is a float (27.0)
    Format("olympiadbench", "math", "question", "final_answer"),  # final_answer is a list
    # gold: the last \boxed{} of the solution | math-ai/minervamath's question and answer
    Format("minerva", "math", "problem|question", "solution|answer"),
    # gold: {"numbers", "target"}
    Format("countdown", "countdown", "prompt.0.content", "reward_model.ground_truth", None),
    Format("crossthinkqa", "choice", "prompt", "ground_truth", None),  # gold: "F: option text"
    # DAPO-Math-17K, template removed | open-r1's processed copy (the prompt a string)
    Format("dapo", "math", "prompt.0.content|prompt", "reward_model.ground_truth"),
]}
FIELD_NAMES = ("prompt", "gold")  # the keys of load_examples(fields=...)

# ---------------------------------------------------------------------------------------------
# The data flags of every command (train.py, eval.py, analyze.py): one convention

DATA_FLAGS = {
    "data_format": "the row format of the local .jsonl files named (" + ", ".join(FORMATS)
                   + "); default: the format named in the file name, else guessed from the first "
                   "row",
    "data_fields": "where our fields are in your .jsonl rows: prompt=KEY,gold=KEY (dotted paths; "
                   "e.g. prompt=question,gold=final)",
    "data_dir": "a folder holding benchmark files (python data.py fetch --out DIR writes one); a "
                "benchmark name is read from there, else from its public source",
}


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """--data-format, --data-fields and --data-dir, as train.py's Config has them."""
    for name, text in DATA_FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), default=None, help=text)


def parse_fields(text: str | None) -> dict[str, str] | None:
    """--data-fields "prompt=question,gold=final" -> {"prompt": "question", "gold": "final"}."""
    if not text:
        return None
    pairs = [kv.split("=", 1) for kv in text.split(",")]
    if any(len(p) != 2 or not all(p) for p in pairs):
        raise ValueError("--data-fields wants ours=theirs pairs, e.g. prompt=question,gold=final; "
                         f"got {text!r}")
    return dict(pairs)


# ---------------------------------------------------------------------------------------------
# Prompt templates

TEMPLATES = ("chat", "fewshot")

# The paper's two few-shot examples for Llama base models (App. C.3), words as printed; the PDF
# text lost the line breaks inside the second answer, which are laid out here like the first's.
FEWSHOT = (
    "User: Calculate $12 + 8 * 2$. Please reason step by step, and put your final answer within "
    "\\boxed{}.\n\n"
    "Assistant: According to the order of operations, we first perform multiplication, then "
    "addition.\n"
    "Step 1. $8 * 2 = 16$.\n"
    "Step 2. $12 + 16 = 28$.\n"
    "The final answer is \\boxed{28}.\n\n"
    "User: Solve the equation: $2x - 5 = 5$. Please reason step by step, and put your final "
    "answer within \\boxed{}.\n\n"
    "Assistant: To find the value of x, we need to isolate the variable.\n"
    "Step 1: Add 5 to both sides of the equation: $2x = 10$\n"
    "Step 2: Divide both sides by 2: $x = 5$\n"
    "The final answer is \\boxed{5}.\n\n"
)


def render_prompt(example_prompt: str, template: str) -> tuple[str, bool]:
    """(text, chat_template) for rollout.generate: "chat" leaves the user message to the
    tokenizer's chat template; "fewshot" is plain text (User:/Assistant: turns after the paper's
    two examples) for base models without one."""
    if template == "chat":
        return example_prompt, True
    if template == "fewshot":
        return f"{FEWSHOT}User: {example_prompt}\n\nAssistant:", False
    raise ValueError(f"unknown template {template!r}; valid templates: {list(TEMPLATES)}")
