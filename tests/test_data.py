"""Tests of the benchmark loaders (data.py). Rows below are invented, shaped like the rows of each
benchmark file."""

import json
import sys
import types
from pathlib import Path

import pytest

import data
import dataspec
import rewards
from countdown_solver import solve_countdown

BENCH_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
INSTR = "\nPlease reason step by step, and put your final answer within \\boxed{}."
COUNTDOWN_PROMPT = ("A conversation between User and Assistant. ...\nUser: Using the numbers "
                    "[3, 5, 7], create an equation that equals 22. ... return the final answer in "
                    "<answer> </answer> tags.\nAssistant: Let me solve this step by step.\n<think>")
CHOICE_PROMPT = ("Answer the following single choice question. Please reason step by step, and put "
                 "the letter of the correct option inside \\boxed{}. \nWhich is even?\nA: 3\nB: 4\n"
                 "C: 5")

# format -> (file name, row, expected prompt, expected gold, a response that must score 1)
CASES = {
    "gsm8k": (
        "gsm8k_test.jsonl",
        {"question": "Tom has 2 cats and 3 dogs. How many pets?",
         "answer": "He has 2 + 3 = <<2+3=5>>5 pets.\n#### 5"},
        "Tom has 2 cats and 3 dogs. How many pets?" + INSTR, "5", "so \\boxed{5}"),
    "math500": (
        "math500_test.jsonl",
        {"problem": "Simplify $\\frac{2}{4}$.", "solution": "It is $\\boxed{\\frac{1}{2}}$.",
         "answer": "\\frac{1}{2}", "subject": "Algebra", "level": 1,
         "unique_id": "test/algebra/1.json"},
        "Simplify $\\frac{2}{4}$." + INSTR, "\\frac{1}{2}", "\\boxed{0.5}"),
    "aime24": (
        "aime24_test.jsonl",
        {"id": 1, "problem": "Find $7 \\cdot 11$.", "solution": "$\\framebox{77}$", "answer": "77",
         "url": "https://example.org/1", "question": "Find $7 \\cdot 11$."},
        "Find $7 \\cdot 11$." + INSTR, "77", "\\boxed{77}"),
    "aime25": (
        "aime25_test.jsonl",
        {"data_source": "test-math-aime25", "ability": "math",
         "prompt": [{"content": "Find $6 \\cdot 7$.", "role": "user"}],
         "reward_model": {"ground_truth": "42", "style": "rule"},
         "extra_info": {"id": 0, "split": "test"}},
        "Find $6 \\cdot 7$." + INSTR, "42", "\\boxed{42}"),
    "amc23": (
        "amc23_test.jsonl",
        {"id": 0, "problem": "Half of 54?", "answer": 27.0, "url": "https://example.org/2",
         "question": "Half of 54?"},
        "Half of 54?" + INSTR, 27.0, "\\boxed{27}"),
    "olympiadbench": (
        "olympiadbench_test.jsonl",
        {"id": 9, "subfield": "Algebra", "context": None, "question": "Solve $x^2=4$, $x>0$.",
         "solution": ["x=2"], "final_answer": ["$2$"], "is_multiple_answer": False, "unit": None,
         "answer_type": "Numerical", "error": None},
        "Solve $x^2=4$, $x>0$." + INSTR, ["$2$"], "\\boxed{2}"),
    "minerva": (
        "minerva_math_test.jsonl",
        {"problem": "What is $3 \\times 1.5$?",
         "solution": "First $\\boxed{3}$... so $\\boxed{4.5} \\mathrm{~m}$",
         "type": "Physics (8.01)", "idx": 0},
        "What is $3 \\times 1.5$?" + INSTR, "4.5", "\\boxed{4.5}"),
    "countdown": (
        "countdown_tinyzero_test.jsonl",
        {"target": 22, "nums": [3, 5, 7], "data_source": "countdown",
         "prompt": [{"content": COUNTDOWN_PROMPT, "role": "user"}], "ability": "math",
         "reward_model": {"ground_truth": {"numbers": [3, 5, 7], "target": 22}, "style": "rule"},
         "extra_info": {"index": 0, "split": "test"}},
        COUNTDOWN_PROMPT, {"numbers": [3, 5, 7], "target": 22},
        "<think>..</think><answer>3*5+7</answer>"),
    "crossthinkqa": (
        "crossthinkqa_roll_sample811.jsonl",
        {"id": "1", "source": "crossthinkqa", "difficulty": "0", "prompt": CHOICE_PROMPT,
         "messages": json.dumps([{"role": "user", "content": CHOICE_PROMPT}]),
         "ground_truth": "B: 4", "case_type": "", "test_case_function": "", "test_cases": "",
         "tag": "crossthinkqa"},
        CHOICE_PROMPT, "B: 4", "The answer is \\boxed{B}"),
    "dapo": (
        "dapo_math_17k.jsonl",
        {"data_source": "DAPO-17k", "ability": "math",
         "prompt": [{"content": "Compute $2^5$.", "role": "user"}],
         "reward_model": {"ground_truth": "32", "style": "rule"},
         "extra_info": {"answer": "", "index": 0, "split": "train"}},
        "Compute $2^5$." + INSTR, "32", "\\boxed{32}"),
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cases_cover_every_format():
    assert set(CASES) == set(dataspec.FORMATS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_format_reads_its_rows(tmp_path, name):
    file_name, row, prompt, gold, response = CASES[name]
    path = write_jsonl(tmp_path / file_name, [row, row])
    for fmt in (None, name):  # guessed from the file name, and given
        examples = data.load_examples(str(path), fmt)
        assert [e.id for e in examples] == [f"{file_name}:1", f"{file_name}:2"]
        e = examples[0]
        assert (e.prompt, e.gold, e.kind) == (prompt, gold, dataspec.FORMATS[name].kind)
        assert rewards.REWARDS[e.kind](response, e.gold) == 1.0
        assert rewards.REWARDS[e.kind]("\\boxed{1000}", e.gold) == 0.0
    own = name in ("countdown", "crossthinkqa")  # the stored prompt carries its own instruction
    assert dataspec.FORMATS[name].instruction is (None if own else dataspec.MATH_INSTRUCTION)


@pytest.mark.parametrize("name", ["gsm8k", "math500", "aime25", "olympiadbench", "minerva",
                                  "countdown", "crossthinkqa"])
def test_format_guessed_from_the_keys_of_an_unnamed_file(tmp_path, name):
    _, row, prompt, gold, _ = CASES[name]
    assert data.guess_format(tmp_path / "rows.jsonl", row) == name
    assert data.load_examples(str(write_jsonl(tmp_path / "rows.jsonl", [row])))[0].prompt == prompt


def test_rows_that_several_formats_read_alike_take_the_first_and_others_are_refused(tmp_path):
    # An AMC23 row (problem == question, answer) reads the same through gsm8k, math500, aime24 and
    # amc23.
    row = CASES["amc23"][1]
    assert data.load_examples(str(write_jsonl(tmp_path / "rows.jsonl", [row])))[0].gold == 27.0
    # A MATH500 row whose solution boxes another spelling than its answer: math500 and minerva
    # disagree.
    row = dict(CASES["math500"][1], solution="$\\boxed{0.5}$")
    with pytest.raises(ValueError, match=r"rows.jsonl: cannot guess.*"
                                         r"\['aime24', 'aime25', 'math500', 'minerva'\] read its"):
        data.guess_format(tmp_path / "rows.jsonl", row)
    with pytest.raises(ValueError) as e:
        data.guess_format(tmp_path / "rows.jsonl", {"text": "hi", "label": 1})
    assert str(e.value) == (
        "rows.jsonl: cannot guess the format (no format reads its first row, which has keys "
        "['label', 'text']); name your fields with --data-fields prompt=KEY,gold=KEY, or the "
        "format with --data-format (gsm8k, math500, aime24, aime25, amc23, olympiadbench, "
        "minerva, countdown, crossthinkqa, dapo)")


def test_each_format_reads_the_rows_of_its_hub_copy_too(tmp_path):
    """aime25, minerva and dapo rows as the hub has them (what `fetch` writes) read like ours."""
    hub_rows = {"aime25": {"problem": "Find $6 \\cdot 7$.", "answer": "42", "id": 0},
                "minerva": {"question": "What is $3 \\times 1.5$?", "answer": "4.5"},
                "dapo": {"prompt": "Compute $2^5$.", "solution": "32",
                         "reward_model": {"ground_truth": "32", "style": "rule"}}}
    for name, row in hub_rows.items():
        file, _, prompt, gold, _ = CASES[name]
        path = write_jsonl(tmp_path / file, [row])
        assert [(e.prompt, e.gold) for e in data.load_examples(str(path))] == [(prompt, gold)]


def test_instruction_is_not_appended_twice(tmp_path):
    row = {"question": "What is 1+1?" + INSTR, "answer": "#### 2"}
    e = data.load_examples(str(write_jsonl(tmp_path / "g.jsonl", [row])), "gsm8k")[0]
    assert e.prompt == row["question"] and e.prompt.count("Please reason") == 1


def test_fields_map_a_users_jsonl_and_limit(tmp_path):
    rows = [{"q": f"What is {i}+1?", "final": str(i + 1)} for i in range(5)]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    fields = {"prompt": "q", "gold": "final"}
    examples = data.load_examples(str(path), "math500", limit=3, fields=fields)
    assert [(e.prompt, e.gold, e.id) for e in examples] == [
        (f"What is {i}+1?" + INSTR, str(i + 1), f"mine.jsonl:{i + 1}") for i in range(3)]
    assert data.load_examples(str(path), fields=fields)[4].gold == "5"  # guessed: math
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['answer'\].*\['prompt', 'gold'\]"):
        data.load_examples(str(path), "math500", fields={"answer": "final"})


def test_broken_lines_and_missing_fields_name_file_line_and_field(tmp_path):
    good = CASES["gsm8k"][1]
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + '{"question": "x", "answer": \n')
    with pytest.raises(ValueError, match=r"^data.jsonl:3: invalid JSON: "):
        data.load_examples(str(path), "gsm8k")
    path.write_text(json.dumps(good) + "\n[1, 2]\n")
    with pytest.raises(ValueError, match=r"^data.jsonl:2: expected a JSON object, got list"):
        data.load_examples(str(path), "gsm8k")
    write_jsonl(path, [good, good, {"question": "no answer here"}])
    with pytest.raises(ValueError, match=r"^data.jsonl:3: missing field 'answer'"):
        data.load_examples(str(path), "gsm8k")
    write_jsonl(path, [{k: v for k, v in CASES["aime25"][1].items() if k != "reward_model"}])
    with pytest.raises(ValueError,
                       match=r"^data.jsonl:1: missing field 'reward_model.ground_truth'"):
        data.load_examples(str(path), "aime25")
    write_jsonl(path, [dict(CASES["countdown"][1], prompt=[])])
    with pytest.raises(ValueError, match=r"^data.jsonl:1: missing field 'prompt.0.content'"):
        data.load_examples(str(path), "countdown")
    write_jsonl(path, [{"problem": "p", "solution": "no box", "type": "t", "idx": 0}])
    with pytest.raises(ValueError,
                       match=r"^data.jsonl:1: field 'solution' holds no \\boxed\{\} answer"):
        data.load_examples(str(path), "minerva")
    write_jsonl(path, [{"question": "  ", "answer": "#### 1"}])
    with pytest.raises(ValueError,
                       match=r"^data.jsonl:1: field 'question' must be a non-empty string"):
        data.load_examples(str(path), "gsm8k")


def test_lines_past_pythons_json_limits_and_empty_files_name_the_file(tmp_path):
    """issue 22: a 5000-digit integer escaped as a bare ValueError, 100k-deep nesting as a 39-line
    RecursionError traceback, and an empty file gave no rows without a word."""
    path = tmp_path / "data.jsonl"
    good = json.dumps(CASES["gsm8k"][1])
    path.write_text(good + "\n" + '{"question": "q", "answer": ' + "7" * 5000 + "}\n")
    with pytest.raises(ValueError, match=r"^data.jsonl:2: invalid JSON: Exceeds the limit \(4300 "
                                         r"digits\) for integer string conversion$"):
        data.load_examples(str(path), "gsm8k")
    path.write_text(good + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ValueError, match=r"^data.jsonl:2: invalid JSON: nested too deeply"):
        data.load_examples(str(path), "gsm8k")
    for text, lines in [("", 0), ("\n  \n", 2)]:
        path.write_text(text)
        for fmt in ("gsm8k", None):  # named or guessed
            with pytest.raises(ValueError, match=rf"^data.jsonl: no rows \(the file has {lines} "
                                                 r"lines, none with a row\)$"):
                data.load_examples(str(path), fmt)


def test_messages_cut_the_offending_value(tmp_path):
    """issue 22: a message embedded the whole value (a 52 MB line took 21 s to print)."""
    path = write_jsonl(tmp_path / "data.jsonl", [{"question": " " * 10**6, "answer": "#### 1"}])
    with pytest.raises(ValueError) as error:
        data.load_examples(str(path), "gsm8k")
    assert str(error.value) == ("data.jsonl:1: field 'question' must be a non-empty string, got '"
                                + " " * 59 + "... (1000002 chars)")
    path = write_jsonl(path, [{f"key{i}": 1 for i in range(10**5)}])
    with pytest.raises(ValueError, match=r"^data.jsonl:1: missing field 'question' \(the row has "
                                         r"keys \['key0', .{150,200}\.\.\. \(\d+ chars\)\)$"):
        data.load_examples(str(path), "gsm8k")
    path = write_jsonl(path, [dict(CASES["crossthinkqa"][1], ground_truth="?" * 10**6)])
    with pytest.raises(ValueError, match=r"got '\?{59}\.\.\. \(1000002 chars\)\)$"):
        data.load_examples(str(path), "crossthinkqa")


def test_golds_the_reward_would_reject_fail_at_load_time(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl",
                       [dict(CASES["crossthinkqa"][1], ground_truth="four")])
    with pytest.raises(ValueError,
                       match=r"^data.jsonl:1: field 'ground_truth' is not a choice gold"):
        data.load_examples(str(path), "crossthinkqa")
    bad = dict(CASES["countdown"][1],
               reward_model={"ground_truth": {"numbers": [3, 5, 7]}, "style": "rule"})
    with pytest.raises(ValueError, match=r"^data.jsonl:1: field 'reward_model.ground_truth' is not "
                                         r"a countdown gold"):
        data.load_examples(str(write_jsonl(tmp_path / "data.jsonl", [bad])), "countdown")
    with pytest.raises(ValueError, match=r"^data.jsonl:1: field 'final_answer' is null"):
        path = write_jsonl(tmp_path / "data.jsonl", [{"question": "q", "final_answer": None}])
        data.load_examples(str(path), "olympiadbench")
    # issue 22: the check parses math golds and refuses hostile ones (it scored an empty
    # response, which returns before the gold is read)
    for gold, why in [("9^{9^{9^{9}}}", "is refused as an answer would be: a power tower"),
                      ("}{", "math-verify reads nothing in gold")]:
        path = write_jsonl(tmp_path / "data.jsonl", [{"problem": "p", "answer": gold}])
        with pytest.raises(ValueError, match=r"^data.jsonl:1: field 'answer' is not a math gold "
                                             rf"\(ValueError: .*{why}"):
            data.load_examples(str(path), "math500")


def test_unknown_names_list_the_valid_ones(tmp_path):
    valid = r"'arith', 'chain', 'aime24'.*'math500'"
    with pytest.raises(ValueError, match=r"unknown benchmark 'math5000'.*" + valid):
        data.load_examples("math5000")
    path = write_jsonl(tmp_path / "x.jsonl", [CASES["gsm8k"][1]])
    with pytest.raises(ValueError,
                       match=r"unknown format 'gsm8K'; valid formats: \['aime24', .*'gsm8k'"):
        data.load_examples(str(path), "gsm8K")
    with pytest.raises(ValueError,
                       match=r"unknown template 'plain'; valid templates: \['chat', 'fewshot'\]"):
        dataspec.render_prompt("x", "plain")
    with pytest.raises(FileNotFoundError, match="no such JSONL file"):
        data.load_examples(str(tmp_path / "missing.jsonl"))


# ---- benchmarks by name: the local directory, else the hub (faked here: no internet)

def test_benchmark_by_name_reads_the_local_copy(tmp_path):
    _, row, prompt, gold, _ = CASES["gsm8k"]
    write_jsonl(tmp_path / data.BENCHMARKS["gsm8k"].file, [row] * 4)
    examples = data.load_examples("gsm8k", data_dir=tmp_path, limit=2)
    assert [(e.prompt, e.gold, e.id) for e in examples] == [
        (prompt, gold, "gsm8k_test.jsonl:1"), (prompt, gold, "gsm8k_test.jsonl:2")]
    assert {b.format for b in data.BENCHMARKS.values()} == set(dataspec.FORMATS)
    assert all(b.format == k.removesuffix("-train") for k, b in data.BENCHMARKS.items())


def test_without_datasets_the_error_says_how_to_get_the_data(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match=r"'math500'.*pip install datasets.*"
                                          r"--data-dir DIR holding math500_test"):
        data.load_examples("math500")
    with pytest.raises(ImportError, match=r"math500_test.jsonl is not in .*pip install datasets"):
        data.load_examples("math500", data_dir=tmp_path)
    with pytest.raises(ImportError, match=r"'countdown'.*github.com/Jiayi-Pan/TinyZero/raw/.*"
                                          r"test.parquet needs the `datasets` library.*"
                                          r"--data-dir DIR holding countdown_tinyzero_test.jsonl "
                                          r"\(python data.py fetch --out DIR writes it\)"):
        data.load_examples("countdown")
    # the training split: the rows after the held-out 811 of the same public file
    assert data.BENCHMARKS["crossthinkqa-train"].split == "train[811:]"
    assert data.BENCHMARKS["crossthinkqa"].split == "train[:811]"
    with pytest.raises(ImportError, match=r"'crossthinkqa-train'.*general_CrossThink-QA_deal.jsonl "
                                          r"needs the `datasets` library.*"
                                          r"crossthinkqa_roll_train.jsonl"):
        data.load_examples("crossthinkqa-train", data_dir=tmp_path)


def test_without_overlap_leaves_out_held_out_prompts(capsys):
    """Same content = same prompt after NFKC, case folding, without whitespace and $."""
    train = [dataspec.Example(f"Problem {i}: what is ${i}+{i}$?", str(2 * i), id=f"t:{i}")
             for i in range(5)]
    held_out = [dataspec.Example("PROBLEM 3: What is 3 + 3?", "6", id="e:1"),
                dataspec.Example("Problem ４: what is 4+4?", "8", id="e:2"),  # fullwidth 4
                dataspec.Example("Problem 9: what is 9+9?", "18", id="e:3")]
    kept = data.without_overlap(train, held_out)
    assert [e.id for e in kept] == ["t:0", "t:1", "t:2"]
    err = capsys.readouterr().err
    assert "2 of 5 training examples" in err and "t:3 = e:1" in err and "t:4 = e:2" in err
    assert data.without_overlap(train, []) == train and capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="every one of the 5 training examples"):
        data.without_overlap(train, train)


def fake_datasets(load_dataset) -> types.ModuleType:
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    return module


def test_unreachable_hub_gives_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub")

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(offline))
    with pytest.raises(OSError, match=r"'gsm8k'.*openai/gsm8k \(config main, split test\)"
                                      r".*ConnectionError.*"
                                      r"--data-dir DIR holding gsm8k_test.jsonl"):
        data.load_examples("gsm8k")


def test_hub_rows_are_read_with_the_hub_field_names(monkeypatch):
    calls = []

    def load_dataset(path, name=None, data_files=None, split=None):
        calls.append((path, name, data_files, split))
        return [{"problem": f"Find {i}+{i}.", "answer": str(2 * i), "id": str(i)} for i in range(3)]

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(load_dataset))
    examples = data.load_examples("aime25", limit=2)
    assert calls == [("math-ai/aime25", None, None, "test")]
    assert [(e.prompt, e.gold, e.id) for e in examples] == [
        ("Find 0+0." + INSTR, "0", "math-ai/aime25:1"),
        ("Find 1+1." + INSTR, "2", "math-ai/aime25:2")]


# ---- python data.py fetch, offline: a fake `datasets` hands out rows shaped like each source's

def source_rows(path: str, name=None, data_files=None, split=None) -> list[dict]:
    """Two rows per benchmark, in the shape of its public source (the hub's, or our file's)."""
    bench = next(b for b in data.BENCHMARKS.values() if b.source in (path, data_files))
    rows = {"aime25": [{"problem": "Find $6 \\cdot 7$.", "answer": "42", "id": 0}],
            "minerva": [{"question": "What is $3 \\times 1.5$?", "answer": "4.5"}],
            "dapo": [{"prompt": "Compute $2^5$.", "solution": "32",
                      "reward_model": {"ground_truth": "32", "style": "rule"}}]}
    return rows.get(bench.format, [CASES[bench.format][1]]) * 2


def test_fetch_writes_every_benchmark_where_data_dir_reads_it(monkeypatch, tmp_path, capsys):
    calls = []

    def load_dataset(path, name=None, data_files=None, split=None):
        calls.append((path, name, data_files, split))
        return source_rows(path, name, data_files, split)

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(load_dataset))
    data.main(["fetch", "--out", str(tmp_path / "data")])
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(
        b.file for b in data.BENCHMARKS.values())
    assert ("openai/gsm8k", "main", None, "test") in calls
    assert ("parquet", None, data.BENCHMARKS["countdown"].url, "train") in calls
    assert ("json", None, data.BENCHMARKS["crossthinkqa"].url, "train[:811]") in calls
    assert data.BENCHMARKS["countdown"].url.startswith("https://github.com/Jiayi-Pan/TinyZero/raw/")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (f"wrote {tmp_path / 'data' / 'gsm8k_test.jsonl'}: 2 rows of "
                          "openai/gsm8k")
    for name, bench in data.BENCHMARKS.items():  # rows unchanged, and --data-dir reads them
        written = [row for _, row in data.read_jsonl(tmp_path / "data" / bench.file)]
        assert written == source_rows(bench.source, data_files=bench.url)
        examples = data.load_examples(name, data_dir=tmp_path / "data")
        expected = CASES[bench.format]
        assert [(e.prompt, e.gold) for e in examples] == [(expected[2], expected[3])] * 2
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(lambda *a, **k: [{"x": 1}]))
    with pytest.raises(ValueError, match=r"^openai/gsm8k:1: missing field 'question'"):
        data.fetch(["gsm8k"], tmp_path / "changed")
    assert not (tmp_path / "changed" / "gsm8k_test.jsonl").exists()
    with pytest.raises(ValueError, match=r"unknown benchmark\(s\) \['gsm8'\]"):
        data.fetch(["gsm8"], tmp_path / "data")


# ---- the real files (skipped when ../shared/benchmarks is absent)

def boxed(gold) -> str:
    return f"\\boxed{{{gold[0] if isinstance(gold, list) else gold}}}"


@pytest.mark.skipif(not BENCH_DIR.is_dir(), reason="../shared/benchmarks not present")
def test_every_benchmark_file_loads_in_full_with_its_format():
    files = sorted(BENCH_DIR.glob("*.jsonl"))
    missing = {k for k, b in data.BENCHMARKS.items() if not (BENCH_DIR / b.file).exists()}
    assert missing == {"crossthinkqa-train"}  # not shipped: data.BENCHMARKS says where to get it
    for path in files:
        rows = sum(1 for _ in data.read_jsonl(path))
        examples = data.load_examples(str(path))
        name = data.guess_format(path, next(data.read_jsonl(path))[1])
        assert len(examples) == rows > 0
        assert all(b.format == name for b in data.BENCHMARKS.values() if b.file == path.name)
        assert all(e.prompt.strip() and e.kind == dataspec.FORMATS[name].kind for e in examples)
        for e in examples:
            if e.kind == "math":
                assert rewards.math_reward(boxed(e.gold), e.gold) == 1.0, e.id
            elif e.kind == "choice":
                assert rewards.choice_reward(f"\\boxed{{{e.gold[0]}}}", e.gold) == 1.0, e.id
        if name == "countdown":  # TinyZero's train and test splits share no problem
            other = "train" if "test" in path.name else "test"
            held_out = data.load_jsonl(BENCH_DIR / f"countdown_tinyzero_{other}.jsonl")
            assert data.without_overlap(examples, held_out) == examples
            for e in examples[:50]:
                answer = solve_countdown(e.gold["numbers"], e.gold["target"])
                response = f"<answer>{answer}</answer>"
                assert rewards.REWARDS["countdown"](response, e.gold) == 1.0, e.id


# ---- prompt templates and the tiny task's held-out set

def test_chat_template_leaves_the_prompt_to_the_tokenizer():
    assert dataspec.render_prompt("Compute 3+4.", "chat") == ("Compute 3+4.", True)


def test_fewshot_prompt_holds_the_papers_two_examples_then_the_question():
    text, chat = dataspec.render_prompt("Compute 3+4." + INSTR, "fewshot")
    assert not chat
    assert text.startswith("User: Calculate $12 + 8 * 2$. Please reason step by step")
    assert text.endswith("\n\nUser: Compute 3+4." + INSTR + "\n\nAssistant:")
    turns = text.split("\n\n")
    assert [t.split(":")[0] for t in turns] == ["User", "Assistant"] * 3
    # the exemplar answers are right and boxed (12 + 8*2 = 28; 2x - 5 = 5 -> x = 5)
    assert rewards.math_reward(turns[1], "28") == 1.0 and rewards.math_reward(turns[3], "5") == 1.0
