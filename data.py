"""Data: reading local JSONL files and the benchmarks (local copies or the Hugging Face hub).

Every source becomes a list of `Example(prompt, gold, kind, id)`: a local .jsonl file (the format
given or guessed), a benchmark name of BENCHMARKS, or a synthetic task of tasks.py ("arith").
train.py, eval.py and analyze.py name their sources the same way and read them with load_source,
under the same flags (dataspec.DATA_FLAGS). What an Example is, the row formats and the prompt
templates are in examples.py. `python data.py fetch --out DIR` downloads every benchmark into
DIR, for `--data-dir DIR`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import config
import guards
import rewards
import tasks
from dataspec import FIELD_NAMES, FORMATS, Example, Format, parse_fields
from normalise import shown


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number from 1, row) for every non-blank line; a line that is not UTF-8 text or not a
    JSON object (broken, an integer past Python's 4300 digits, nested past its recursion limit)
    raises ValueError naming the file and the line, and so does a file with no rows."""
    path = Path(path)
    number = rows = 0
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
            except ValueError as e:  # "Exceeds the limit (4300 digits) for integer string ..."
                raise ValueError(f"{path.name}:{number}: invalid JSON: "
                                 f"{str(e).split(':')[0]}") from None
            except RecursionError:
                raise ValueError(f"{path.name}:{number}: invalid JSON: nested too deeply for "
                                 "Python's JSON reader") from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path.name}:{number}: expected a JSON object, got {type(row).__name__}"
                )
            rows += 1
            yield number, row
    if rows == 0:
        raise ValueError(f"{path.name}: no rows (the file has {number} lines, none with a row)")


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


def _field(row: dict, paths: str, where: str) -> tuple[Any, str]:
    """(value, its path) at the first of the paths "a|b" that the row has."""
    for path in paths.split("|"):
        try:
            value = _get(row, path)
        except _Missing:
            continue
        if value is None:
            raise ValueError(f"{where}: field {path!r} is null")
        return value, path
    wanted = " or ".join(repr(p) for p in paths.split("|"))
    raise ValueError(f"{where}: missing field {wanted} (the row has keys "
                     f"{shown(sorted(row), 200)})")


def _example(row: dict, fmt: Format, where: str) -> Example:
    """One row as an Example; the gold is checked against rewards.REWARDS[fmt.kind] right away."""
    question, path = _field(row, fmt.prompt_field, where)
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: field {path!r} must be a non-empty string, got "
                         f"{shown(question)}")
    if fmt.instruction is None or fmt.instruction in question:
        prompt = question
    else:
        prompt = f"{question}\n{fmt.instruction}"
    gold, path = _field(row, fmt.gold, where)
    leaf = path.rsplit(".", 1)[-1]
    if leaf in ("answer", "solution"):
        try:
            gold = rewards.gold_of({leaf: gold})
        except (KeyError, TypeError):  # TypeError: a `solution` that is not text
            raise ValueError(f"{where}: field {path!r} holds no \\boxed{{}} answer") from None
    try:
        rewards.check_gold(fmt.kind, gold)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{where}: field {path!r} is not a {fmt.kind} gold ({type(e).__name__}: {e})"
        ) from None
    if fmt.kind == "countdown" and not _is_number(gold["target"]):
        # the empty response above scores 0 before the target is read: check it here
        raise ValueError(f"{where}: field {fmt.gold!r}: the target must be a finite number, got "
                         f"{shown(gold['target'])}")
    return Example(prompt=prompt, gold=gold, kind=fmt.kind, id=where)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _with_fields(fmt: Format, fields: dict[str, str] | None) -> Format:
    """fmt reading the user's field names: fields={"prompt": "question", "gold": "final"}."""
    if not fields:
        return fmt
    unknown = sorted(set(fields) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"--data-fields: unknown key(s) {unknown}; valid keys: "
                         f"{list(FIELD_NAMES)}")
    return dataclasses.replace(fmt, prompt_field=fields.get("prompt", fmt.prompt_field),
                               gold=fields.get("gold", fmt.gold))


def _check_format(name: str) -> Format:
    if name not in FORMATS:
        raise ValueError(f"--data-format: unknown format {name!r}; valid formats: "
                         f"{sorted(FORMATS)}")
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
        why = f"no format reads its first row, which has keys {shown(sorted(row), 200)}"
    else:
        why = f"formats {sorted(readings)} read its first row differently"
    raise ValueError(f"{Path(path).name}: cannot guess the format ({why}); name your fields with "
                     "--data-fields prompt=KEY,gold=KEY, or the format with --data-format "
                     f"({', '.join(FORMATS)})")


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
        format = guess_format(path, next(read_jsonl(path))[1], fields)
    fmt = _with_fields(_check_format(format), fields)
    rows = ((f"{path.name}:{number}", row) for number, row in read_jsonl(path))
    return _examples(rows, fmt, limit)


# ---------------------------------------------------------------------------------------------
# Benchmarks by name: a local copy (--data-dir) or their public source


@dataclass(frozen=True)
class Benchmark:
    """A named benchmark: its public source and what the local copy is called.

    The source is `datasets.load_dataset(hub_id, config, split=split)`, or for a benchmark that
    lives in a GitHub repository (hub_id None) the file at `url`, read with datasets' json or
    parquet loader. `fetch` writes the source's rows unchanged to DIR/<file>; our own copies (the
    project's developer folder ../shared/benchmarks, see its PROVENANCE.md) have the same names,
    and `format` reads both shapes.
    """

    hub_id: str | None
    config: str | None
    split: str
    format: str
    file: str
    url: str | None = None

    @property
    def source(self) -> str:
        return self.hub_id or self.url


_GITHUB = "https://github.com/{}/raw/{}/{}"
_TINYZERO = ("Jiayi-Pan/TinyZero", "c5cdbbe253b9db880f3e7ff17a161cbd0d8b42b0")
_CROSSTHINK = ("Vision-CAIR/Freshness-Aware-PER", "dbb91df453bdb2f2d70e92cc23582cfac0d39b66",
               "data/general_CrossThink-QA_deal.jsonl")
# Hub ids and row fields as used by public eval loaders (not checked against the hub here: no
# internet): openai/gsm8k, HuggingFaceH4/MATH-500, HuggingFaceH4/aime_2024 (problem, answer),
# math-ai/aime25 (problem, answer), math-ai/amc23 (question, answer), math-ai/minervamath
# (question, answer), math-ai/olympiadbench (question, final_answer; 674 rows said to be text-only
# English, our file has 675 -- the exact subset is unverified). open-r1/DAPO-Math-17k-Processed
# ("en", deduplicated) keeps reward_model (its create_dataset.py); whether its `prompt` still
# carries DAPO's own "Answer: $Answer" instruction is unverified: prefer our file where you have it.
BENCHMARKS: dict[str, Benchmark] = {
    "gsm8k": Benchmark("openai/gsm8k", "main", "test", "gsm8k", "gsm8k_test.jsonl"),
    "math500": Benchmark("HuggingFaceH4/MATH-500", None, "test", "math500", "math500_test.jsonl"),
    "aime24": Benchmark("HuggingFaceH4/aime_2024", None, "train", "aime24", "aime24_test.jsonl"),
    "aime25": Benchmark("math-ai/aime25", None, "test", "aime25", "aime25_test.jsonl"),
    "amc23": Benchmark("math-ai/amc23", None, "test", "amc23", "amc23_test.jsonl"),
    "olympiadbench": Benchmark("math-ai/olympiadbench", None, "test", "olympiadbench",
                               "olympiadbench_test.jsonl"),
    "minerva": Benchmark("math-ai/minervamath", None, "test", "minerva", "minerva_math_test.jsonl"),
    # TinyZero builds its prompts from Jiayi-Pan/Countdown-Tasks-3to4
    # (examples/data_preprocess/countdown.py); the sources are that script's test (2001 rows) and
    # train (8001 rows) splits as TinyZero's unmerged PR 93 stores them. CrossThinkQA is ROLL's
    # processed sample of nvidia/Nemotron-CrossThink: the held-out set is its first 811 rows, the
    # training set the rows after them. The URLs are our copies' sources (PROVENANCE.md), not
    # downloaded from here (no internet). The parquet and json loaders call every file "train".
    "countdown": Benchmark(None, None, "train", "countdown", "countdown_tinyzero_test.jsonl",
                           _GITHUB.format(*_TINYZERO, "data/countdown/test.parquet")),
    "countdown-train": Benchmark(None, None, "train", "countdown",
                                 "countdown_tinyzero_train.jsonl",
                                 _GITHUB.format(*_TINYZERO, "data/countdown/train.parquet")),
    "crossthinkqa": Benchmark(None, None, "train[:811]", "crossthinkqa",
                              "crossthinkqa_roll_sample811.jsonl", _GITHUB.format(*_CROSSTHINK)),
    "crossthinkqa-train": Benchmark(None, None, "train[811:]", "crossthinkqa",
                                    "crossthinkqa_roll_train.jsonl", _GITHUB.format(*_CROSSTHINK)),
    "dapo": Benchmark("open-r1/DAPO-Math-17k-Processed", "en", "train", "dapo",
                      "dapo_math_17k.jsonl"),
}


def benchmark_names() -> list[str]:
    """The names load_examples takes besides .jsonl paths."""
    return sorted(tasks.TASKS) + sorted(BENCHMARKS)


def _source_rows(name: str, bench: Benchmark, why: str):
    """The rows of a benchmark's public source (an iterable of dicts), read with `datasets`."""
    try:
        import datasets
    except ImportError:
        raise ImportError(f"benchmark {name!r}: {why}; loading {bench.source} needs the "
                          "`datasets` library: pip install datasets, or pass --data-dir DIR "
                          f"holding {bench.file} (python data.py fetch --out DIR writes it) or a "
                          "local JSONL path") from None
    path = bench.hub_id
    if path is None:
        path = "parquet" if bench.url.endswith(".parquet") else "json"
    try:
        return datasets.load_dataset(path, bench.config, data_files=bench.url, split=bench.split)
    except Exception as e:  # no network, no such dataset, ...: the hub's own exception types vary
        raise OSError(f"benchmark {name!r}: {why}, and loading {bench.source} (config "
                      f"{bench.config}, split {bench.split}) failed: {type(e).__name__}: {e}. "
                      f"Offline? pass --data-dir DIR holding {bench.file}") from e


def _is_local(source: str) -> bool:
    return source.endswith(".jsonl") or Path(source).is_file()


def load_examples(source: str, format: str | None = None, *, limit: int | None = None,
                  fields: dict[str, str] | None = None,
                  data_dir: str | Path | None = None) -> list[Example]:
    """Examples from a local .jsonl path, a benchmark name (a key of BENCHMARKS) or a synthetic
    task ("arith").

    A path's format is `format`, else guessed (guess_format); `fields` maps our field names
    ("prompt", "gold") onto a user's JSONL. A benchmark is read from data_dir/<its file> when that
    exists, else from its public source.
    limit: the first `limit` examples only.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if _is_local(source):
        return load_jsonl(source, format, limit=limit, fields=fields)
    if format is not None or fields:
        raise ValueError(f"{source!r} is a benchmark name: format= and fields= apply to local "
                         "JSONL files only")
    if source in tasks.TASKS:
        return tasks.TASKS[source].held_out()[:limit]
    if source not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {source!r} (and no such .jsonl file); valid "
                         f"benchmarks: {benchmark_names()}")
    bench = BENCHMARKS[source]
    if data_dir is not None and (Path(data_dir) / bench.file).is_file():
        return load_jsonl(Path(data_dir) / bench.file, bench.format, limit=limit)
    why = "no data_dir given" if data_dir is None else f"{bench.file} is not in {data_dir}"
    rows = _source_rows(source, bench, why)
    numbered = ((f"{bench.source}:{i + 1}", row) for i, row in enumerate(rows))
    return _examples(numbered, FORMATS[bench.format], limit)


def prompt_content(prompt: str) -> str:
    """What two prompts share when they ask the same question: NFKC, case-folded, without
    whitespace or $ (so "What is $2+2$?" and "what is 2 + 2?" are the same content)."""
    return re.sub(r"[\s$]+", "", unicodedata.normalize("NFKC", prompt).casefold())


def without_overlap(train: list[Example], held_out: list[Example]) -> list[Example]:
    """The training examples whose prompt content (`prompt_content`) is not in the held-out set.

    Training on held-out problems inflates the held-out accuracy, so train.py calls this before
    the model loads, for any data: the dropped examples are reported on stderr (how many, the
    first ids), and no example left raises ValueError (train and eval data are the same set).
    Six rows of DAPO-Math-17K are MATH500 problems, for example.
    """
    seen = {prompt_content(e.prompt): e.id for e in held_out}
    twins = [seen.get(prompt_content(e.prompt)) for e in train]  # the held-out id, or None
    kept = [e for e, twin in zip(train, twins) if twin is None]
    dropped = [(e, twin) for e, twin in zip(train, twins) if twin is not None]
    if not kept:
        raise ValueError(f"every one of the {len(train)} training examples is also in the "
                         "held-out set: pass a training set disjoint from --eval-data")
    if dropped:
        pairs = ", ".join(f"{e.id} = {twin}" for e, twin in dropped[:3])
        print(f"WARNING: {len(dropped)} of {len(train)} training examples are also in the "
              f"held-out set and are left out of training ({pairs}"
              f"{', ...' if len(dropped) > 3 else ''})", file=sys.stderr)
    return kept



def load_source(source: str, data_format: str | None = None, data_fields: str | None = None,
                data_dir: str | None = None, limit: int | None = None) -> list[Example]:
    """The examples a command's source names, under the data flags: --data-format and
    --data-fields describe every local .jsonl named (training and held-out alike), --data-dir is
    where benchmark names are read from."""
    if _is_local(source):
        return load_examples(source, data_format, limit=limit, fields=parse_fields(data_fields))
    return load_examples(source, limit=limit, data_dir=data_dir)


# ---------------------------------------------------------------------------------------------
# python data.py fetch: every benchmark into a local folder


def fetch(names: Sequence[str], out: str | Path) -> list[Path]:
    """Write each benchmark's rows, as its public source has them, to out/<its file>, once every
    row has been read with its format (a source that changed shape fails here, naming the row)."""
    out = Path(out)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; valid: {sorted(BENCHMARKS)}")
    try:
        import datasets  # noqa: F401 (checked once, before any folder is made)
    except ImportError:
        raise ImportError("fetching the benchmarks needs the `datasets` library: "
                          "pip install datasets") from None
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        bench = BENCHMARKS[name]
        rows = [dict(row) for row in _source_rows(name, bench, "fetching it")]
        _examples(((f"{bench.source}:{i + 1}", r) for i, r in enumerate(rows)),
                  FORMATS[bench.format], None)
        path, tmp = out / bench.file, out / f".{bench.file}.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
        os.replace(tmp, path)  # a failed fetch never leaves half a file under the real name
        print(f"wrote {path}: {len(rows)} rows of {bench.source}")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    ap = config.ArgumentParser(prog="data.py", description="Fetch the benchmarks into a local "
                            "folder (for --data-dir), with the `datasets` library.",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download benchmarks from their public sources",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    f.add_argument("--out", default="data", help="the folder to write the .jsonl files into")
    f.add_argument("--benchmarks", default=",".join(BENCHMARKS),
                   help="comma-separated names of data.BENCHMARKS")
    args = ap.parse_args(argv)
    fetch([b.strip() for b in args.benchmarks.split(",") if b.strip()], args.out)

if __name__ == "__main__":
    import guards

    guards.run("data.py", main, sys.argv[1:])
