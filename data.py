"""Data: Example, the benchmark loaders (local JSONL or the Hugging Face hub), the prompt templates.

Every source becomes a list of `Example(prompt, gold, kind, id)`: a local .jsonl file (the format
given or guessed), a benchmark name of BENCHMARKS, or a synthetic task of tasks.py ("arith").
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rewards


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
# Benchmark files: one Format per row shape in ../shared/benchmarks (see its PROVENANCE.md)

# the paper's (App. C.3)
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Format:
    """How to read one JSONL row shape into an Example.

    prompt_field: dotted path of the question text ("prompt.0.content":
                  row["prompt"][0]["content"]).
    gold:         dotted path of the gold answer. A field named `answer` or `solution` goes
                  through rewards.gold_of, which knows GSM8K's "... #### 18" and a worked
                  solution's last \\boxed{}.
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
    Format("aime25", "math", "prompt.0.content", "reward_model.ground_truth"),  # verl-style rows
    Format("amc23", "math", "question", "answer"),  # answer is a float (27.0)
    Format("olympiadbench", "math", "question", "final_answer"),  # final_answer is a list
    Format("minerva", "math", "problem", "solution"),  # gold: the last \boxed{} of the solution
    # gold: {"numbers", "target"}
    Format("countdown", "countdown", "prompt.0.content", "reward_model.ground_truth", None),
    Format("crossthinkqa", "choice", "prompt", "ground_truth", None),  # gold: "F: option text"
    # DAPO-Math-17K, template removed
    Format("dapo", "math", "prompt.0.content", "reward_model.ground_truth"),
]}
FIELD_NAMES = ("prompt", "gold")  # the keys of load_examples(fields=...)


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number from 1, row) for every non-blank line; a line that is not UTF-8 text or not a
    JSON object raises ValueError naming the file and the line."""
    path = Path(path)
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path.name}:{number}: not UTF-8 text (byte {e.start + 1} of the "
                                 f"line: {e.reason})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path.name}:{number}: invalid JSON: {e}") from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path.name}:{number}: expected a JSON object, got {type(row).__name__}"
                )
            yield number, row


class _Missing(LookupError):
    pass


def _get(row: dict, path: str) -> Any:
    """row at a dotted path; integer parts index lists ("prompt.0.content")."""
    value = row
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise _Missing(part)
    return value


def _field(row: dict, path: str, where: str) -> Any:
    try:
        value = _get(row, path)
    except _Missing:
        raise ValueError(
            f"{where}: missing field {path!r} (the row has keys {sorted(row)})"
        ) from None
    if value is None:
        raise ValueError(f"{where}: field {path!r} is null")
    return value


def _example(row: dict, fmt: Format, where: str) -> Example:
    """One row as an Example; the gold is checked against rewards.REWARDS[fmt.kind] right away."""
    question = _field(row, fmt.prompt_field, where)
    if not isinstance(question, str) or not question.strip():
        raise ValueError(
            f"{where}: field {fmt.prompt_field!r} must be a non-empty string, got {question!r}"
        )
    if fmt.instruction is None or fmt.instruction in question:
        prompt = question
    else:
        prompt = f"{question}\n{fmt.instruction}"
    gold = _field(row, fmt.gold, where)
    leaf = fmt.gold.rsplit(".", 1)[-1]
    if leaf in ("answer", "solution"):
        try:
            gold = rewards.gold_of({leaf: gold})
        except KeyError:
            raise ValueError(f"{where}: field {fmt.gold!r} holds no \\boxed{{}} answer") from None
    try:
        rewards.REWARDS[fmt.kind]("", gold)  # an empty response: scores 0, but a bad gold raises
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{where}: field {fmt.gold!r} is not a {fmt.kind} gold ({type(e).__name__}: {e})"
        ) from None
    if fmt.kind == "countdown" and not _is_number(gold["target"]):
        # the empty response above scores 0 before the target is read: check it here
        raise ValueError(f"{where}: field {fmt.gold!r}: the target must be a finite number, got "
                         f"{gold['target']!r}")
    return Example(prompt=prompt, gold=gold, kind=fmt.kind, id=where)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _with_fields(fmt: Format, fields: dict[str, str] | None) -> Format:
    """fmt reading the user's field names: fields={"prompt": "question", "gold": "final"}."""
    if not fields:
        return fmt
    unknown = sorted(set(fields) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"fields: unknown key(s) {unknown}; valid keys: {list(FIELD_NAMES)}")
    return dataclasses.replace(fmt, prompt_field=fields.get("prompt", fmt.prompt_field),
                               gold=fields.get("gold", fmt.gold))


def _check_format(name: str) -> Format:
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; valid formats: {sorted(FORMATS)}")
    return FORMATS[name]


def guess_format(path: str | Path, row: dict, fields: dict[str, str] | None = None) -> str:
    """The format of a JSONL file: the one format name in its file name ("gsm8k_test.jsonl"), else
    the formats that can read its first row, if they all read it the same way (e.g. math500 and
    aime24 rows)."""
    stem = Path(path).name.lower()
    named = [name for name in FORMATS if name in stem]
    if len(named) == 1:
        return named[0]
    readings = {}
    for name, fmt in FORMATS.items():
        try:
            example = _example(row, _with_fields(fmt, fields), "")
        except ValueError:
            continue
        readings[name] = (example.prompt, repr(example.gold), example.kind)
    if readings and len(set(readings.values())) == 1:
        return next(iter(readings))
    if not readings:
        why = "no format reads its first row"
    else:
        why = f"formats {sorted(readings)} read it differently"
    raise ValueError(
        f"{Path(path).name}: cannot guess the format ({why}); pass one of {sorted(FORMATS)}"
    )


def _examples(rows: Iterable[tuple[str, dict]], fmt: Format, limit: int | None) -> list[Example]:
    out = []
    for where, row in rows:
        if limit is not None and len(out) >= limit:
            break
        out.append(_example(row, fmt, where))
    return out


def load_jsonl(path: str | Path, format: str | None = None, *, limit: int | None = None,
               fields: dict[str, str] | None = None) -> list[Example]:
    """Examples of a local JSONL file; Example.id is "file.jsonl:LINE"."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such JSONL file: {path}")
    if format is None:
        first = next(read_jsonl(path), None)
        if first is None:
            raise ValueError(f"{path.name}: no rows")
        format = guess_format(path, first[1], fields)
    fmt = _with_fields(_check_format(format), fields)
    rows = ((f"{path.name}:{number}", row) for number, row in read_jsonl(path))
    return _examples(rows, fmt, limit)


# ---------------------------------------------------------------------------------------------
# Benchmarks by name: a local copy (--data-dir) or the Hugging Face hub


@dataclass(frozen=True)
class Benchmark:
    """A named benchmark: where the hub keeps it and what our local copy is called.

    hub_fields maps our field names onto the hub rows where they differ from the local file's
    shape; hub_id None: no hub copy has this shape (the local file is needed).
    """

    hub_id: str | None
    config: str | None
    split: str
    format: str
    file: str
    hub_fields: dict[str, str] | None = None


# Hub ids and row fields as used by public eval loaders (not checked against the hub here: no
# internet): openai/gsm8k, HuggingFaceH4/MATH-500, HuggingFaceH4/aime_2024 (problem, answer),
# math-ai/aime25 (problem, answer), math-ai/amc23 (question, answer), math-ai/minervamath
# (question, answer), math-ai/olympiadbench (question, final_answer; 674 rows said to be text-only
# English, our file has 675 -- the exact subset is unverified). open-r1/DAPO-Math-17k-Processed
# ("en", deduplicated) keeps reward_model (its create_dataset.py); whether its `prompt` still
# carries DAPO's own "Answer: $Answer" instruction is unverified: prefer --data-dir with our file.
BENCHMARKS: dict[str, Benchmark] = {
    "gsm8k": Benchmark("openai/gsm8k", "main", "test", "gsm8k", "gsm8k_test.jsonl"),
    "math500": Benchmark("HuggingFaceH4/MATH-500", None, "test", "math500", "math500_test.jsonl"),
    "aime24": Benchmark("HuggingFaceH4/aime_2024", None, "train", "aime24", "aime24_test.jsonl"),
    "aime25": Benchmark("math-ai/aime25", None, "test", "aime25", "aime25_test.jsonl",
                        {"prompt": "problem", "gold": "answer"}),
    "amc23": Benchmark("math-ai/amc23", None, "test", "amc23", "amc23_test.jsonl"),
    "olympiadbench": Benchmark("math-ai/olympiadbench", None, "test", "olympiadbench",
                               "olympiadbench_test.jsonl"),
    "minerva": Benchmark("math-ai/minervamath", None, "test", "minerva", "minerva_math_test.jsonl",
                         {"prompt": "question", "gold": "answer"}),
    # TinyZero builds its prompts from Jiayi-Pan/Countdown-Tasks-3to4
    # (examples/data_preprocess/countdown.py); our file is that script's test split. CrossThinkQA
    # is ROLL's processed sample of nvidia/Nemotron-CrossThink.
    "countdown": Benchmark(None, None, "test", "countdown", "countdown_tinyzero_test.jsonl"),
    "crossthinkqa": Benchmark(None, None, "test", "crossthinkqa",
                              "crossthinkqa_roll_sample811.jsonl"),
    "dapo": Benchmark("open-r1/DAPO-Math-17k-Processed", "en", "train", "dapo",
                      "dapo_math_17k.jsonl",
                      {"prompt": "prompt", "gold": "reward_model.ground_truth"}),
}


def _synthetic() -> dict:
    """tasks.TASKS, imported here: tasks.py builds on Example, so importing it at the top would be
    a cycle."""
    import tasks

    return tasks.TASKS


def benchmark_names() -> list[str]:
    """The names load_examples takes besides .jsonl paths."""
    return sorted(_synthetic()) + sorted(BENCHMARKS)


def _load_hub(name: str, bench: Benchmark, limit: int | None, why_not_local: str) -> list[Example]:
    if bench.hub_id is None:
        raise FileNotFoundError(f"benchmark {name!r}: {why_not_local}, and it has no hub copy in "
                                f"this row shape: pass --data-dir DIR holding {bench.file}")
    try:
        import datasets
    except ImportError:
        raise ImportError(f"benchmark {name!r}: {why_not_local}; loading {bench.hub_id} from the "
                          "hub needs the `datasets` library: pip install datasets, or pass "
                          f"--data-dir DIR holding {bench.file} or a local JSONL path") from None
    try:
        rows = datasets.load_dataset(bench.hub_id, bench.config, split=bench.split)
    except Exception as e:  # no network, no such dataset, ...: the hub's own exception types vary
        raise RuntimeError(f"benchmark {name!r}: {why_not_local}, and loading {bench.hub_id} "
                           f"(config {bench.config}, split {bench.split}) from the hub failed: "
                           f"{type(e).__name__}: {e}. "
                           f"Offline? pass --data-dir DIR holding {bench.file}") from e
    fmt = _with_fields(FORMATS[bench.format], bench.hub_fields)
    numbered = ((f"{bench.hub_id}:{i + 1}", row) for i, row in enumerate(rows))
    return _examples(numbered, fmt, limit)


def load_examples(source: str, format: str | None = None, *, limit: int | None = None,
                  fields: dict[str, str] | None = None,
                  data_dir: str | Path | None = None) -> list[Example]:
    """Examples from a local .jsonl path, a benchmark name (a key of BENCHMARKS) or a synthetic
    task ("arith").

    A path's format is `format`, else guessed (guess_format); `fields` maps our field names
    ("prompt", "gold") onto a user's JSONL. A benchmark is read from data_dir/<its file> when that
    exists, else from the hub.
    limit: the first `limit` examples only.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if source.endswith(".jsonl") or Path(source).is_file():
        return load_jsonl(source, format, limit=limit, fields=fields)
    if format is not None or fields:
        raise ValueError(f"{source!r} is a benchmark name: format= and fields= apply to local "
                         "JSONL files only")
    if source in _synthetic():
        return _synthetic()[source].held_out()[:limit]
    if source not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {source!r} (and no such .jsonl file); valid "
                         f"benchmarks: {benchmark_names()}")
    bench = BENCHMARKS[source]
    if data_dir is not None and (Path(data_dir) / bench.file).is_file():
        return load_jsonl(Path(data_dir) / bench.file, bench.format, limit=limit)
    why = "no data_dir given" if data_dir is None else f"{bench.file} is not in {data_dir}"
    return _load_hub(source, bench, limit, why)


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
