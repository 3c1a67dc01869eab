"""A new user's first hour (issue 17): the README's install lines, license and citation, the
README's examples run as written, and the exact line each known mistake ends in."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

import analyze
import guards
import config
import data
import dataspec
import eval as ev
import harness
import train

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TINY = str(ROOT / "tiny" / "qwen3-arith")
PAPER = ROOT.parent / "shared" / "paper" / "003_247e73e782140739.txt"
ENV = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1")
TIMEOUT = 1800  # seconds for a README example: a hang fails instead of stalling CI
CPU_TORCH = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# A small run: 8 prompts x 4 samples, every group kept, 8 held-out problems.
SMALL = ["--prompts-per-step", "8", "--group-size", "4", "--max-new-tokens", "40",
         "--eval-limit", "8", "--min-difficulty", "0", "--max-difficulty", "1"]
FORMATS = ", ".join(dataspec.FORMATS)


def error_line(prog: str, main, argv: list[str], capsys) -> str:
    """What the user sees of a known error: guards.run's one line on stderr (exit status 1)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        guards.run(prog, main, argv)
    assert exit_.value.code == 1
    # besides transformers' progress bar of a model load, the message is all there is
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.strip() and not line.startswith("Loading weights")]
    assert len(err) == 1, err
    return err[0]


def my_data(folder: Path, n: int) -> None:
    """my.jsonl and my_test.jsonl of the README's own-data example: arithmetic, their own keys."""
    rows = [{"question": f"Compute {a}+{b}*2.", "final": str(a + 2 * b)}
            for a in range(1, 10) for b in range(1, 10)]
    (folder / "my.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    (folder / "my_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[-8:]))


def run_as_written(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """A README command line, word for word; only `train.py` becomes this checkout's path."""
    words = command.split()
    assert words[:2] == ["python", "train.py"], command
    done = subprocess.run([sys.executable, str(ROOT / "train.py")] + words[2:], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# --------------------------------------------------------------------------------------------------
# Install, license, citation, README


def test_the_install_lines_are_the_ones_ci_runs():
    block = re.search(r"## Quick start\n\n```bash\n(.*?)```", README, re.S).group(1)
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert commands == [
        "python3 -m venv .venv && . .venv/bin/activate && " + CPU_TORCH
        + " && pip install -r requirements.txt && python train.py",
        "python -m pytest -q"]
    ci = (ROOT / ".ci" / "run").read_text()
    cpu_torch = CPU_TORCH.replace("pip install", "python -m pip install -q")
    assert cpu_torch in ci and "python -m pip install -q -r requirements.txt" in ci
    assert ci.index(cpu_torch) < ci.index("-r requirements.txt")
    assert "python -m pytest -q" in ci
    assert "torch==2.13.0\n" in (ROOT / "requirements.txt").read_text()
    install = README[README.index("## Install"):README.index("## Your own data")]
    assert "**CPU-only machines**" in install and "**GPU machines**" in install
    assert "CUDA build" in install


def test_readme_stays_short_and_the_user_docs_never_name_the_shared_folder():
    """../shared/benchmarks is on the project's machines only: benchmarks/README.md names it, the
    pages a new user reads (README, data and training docs) do not."""
    assert len(README.splitlines()) <= 250  # the house rule (developers' guide)
    for path in [ROOT / "README.md", ROOT / "docs" / "data.md", ROOT / "docs" / "training.md"]:
        text = path.read_text()
        assert "../shared" not in text and "Developer note" not in text, path.name


def test_the_readme_core_path_line_counts_are_true():
    """The "Read the code" section (issue 21): each `file.py` (N ...) it names has N lines (as
    `wc -l` counts them), the core path's table adds up to the total it states, in as many files.
    Its counts once went stale when later merges grew train.py and grpo.py: nothing checked them."""
    section = README[README.index("## Read the code"):]
    section = section[:section.index("\n## ", 1)]
    named = re.findall(r"`([\w/]+\.py)` \((\d[\d,]*)[:)]", section)
    table = re.findall(r"^\| `([\w/]+\.py)` \((\d[\d,]*)\) \|", section, re.M)
    assert len(table) >= 5 and len(named) > len(table), (table, named)
    for name, count in named:
        lines = (ROOT / name).read_text().count("\n")
        assert int(count.replace(",", "")) == lines, f"README: {name} ({count}); wc -l: {lines}"
    total, files = re.search(r"\(([\d,]+) lines in (\d+) files\)", section).groups()
    assert int(total.replace(",", "")) == sum(int(c.replace(",", "")) for _, c in table)
    assert int(files) == len(table) <= 6  # the target: at most 6 files


def test_the_readme_says_how_many_spreads_the_gains_are():
    """`Both gain A-B times the seed-to-seed spread`: A and B are gain / sd of its own table."""
    results = README[README.index("**The embedded default**"):]
    rows = re.findall(r"^\| (flow|uniform) .*\| 0\.\d+ \+- 0\.(\d+) \| \+(\d\.\d) points \|$",
                      results, re.M)
    ratios = sorted(round(float(gain) / (int(sd) / 10)) for _, sd, gain in rows)
    low, high = map(int, re.search(r"Both gain (\d+)-(\d+) times the seed-to-seed spread",
                                   results).groups())
    assert len(rows) == 2 and ratios == [low, high]


def test_license_and_citation():
    assert (ROOT / "LICENSE").read_text().startswith(
        "MIT License\n\nCopyright (c) 2026 FlowTracer contributors\n")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    assert cff["authors"] == [{"name": "FlowTracer contributors"}]
    paper = cff["preferred-citation"]
    assert paper["type"] == "conference-paper" and paper["year"] == 2026
    assert "ICML 2026" in paper["conference"]["name"]
    names = [a.get("name") or f"{a['given-names']} {a['family-names']}" for a in paper["authors"]]
    assert len(names) == 12 and names[0] == "Zhichen Dong" and names[-1] == "Junchi Yan"
    title = ("How Does Reasoning Flow? Tracing Attention-Induced Information Flow for Targeted RL "
             "in LLMs")
    assert paper["title"] == title
    if PAPER.is_file():  # the paper text is on the project's machines only
        head = PAPER.read_text()[:600]
        assert title in head
        printed = head.split(title, 1)[1].split("\n\n")[1]  # the author lines
        assert all(name in printed for name in names), printed


# --------------------------------------------------------------------------------------------------
# The README's examples, as written


def test_the_readme_quick_check_runs_as_written(tmp_path):
    command = re.search(r"`(python train.py --steps [^`]*)`", README).group(1)
    assert command == "python train.py --steps 2 --eval-limit 100 --out runs/try"
    done = run_as_written(command, tmp_path)
    last = done.stdout.splitlines()[-2:]
    assert last[0] == "run folder: runs/try"
    assert re.fullmatch(r"held-out accuracy: 0\.7\d\d -> 0\.\d\d\d", last[1]), last
    assert (tmp_path / "runs" / "try" / "checkpoints" / "step-000002" / "model").is_dir()
    assert "Removed shared tensor" not in done.stderr
    assert "do not survive the tokenizer" not in done.stderr  # arith is in its vocabulary
    assert "deprecated" not in done.stderr  # e.g. transformers' past_key_values -> cache


def test_the_readme_own_data_example_runs_as_written(tmp_path):
    section = README[README.index("## Your own data"):README.index("## Benchmark data")]
    command = re.search(r"^    (python train.py --data .*)$", section, re.M).group(1)
    assert command == ("python train.py --data my.jsonl --data-fields prompt=question,gold=final "
                       "--eval-data my_test.jsonl")
    extra = re.search(r"\(`(--steps [^`]*)` added for a quick try, as the tests run it\)",
                      section).group(1)
    my_data(tmp_path, 40)
    done = run_as_written(f"{command} {extra}", tmp_path)
    last = done.stdout.splitlines()[-2:]
    assert last[0] == "run folder: runs/mine"
    assert re.fullmatch(r"held-out accuracy: \d\.\d\d\d -> \d\.\d\d\d", last[1]), last
    # the paper's instruction, appended to math questions, is beyond the tiny model's 64 tokens
    warnings = [line for line in done.stderr.splitlines() if "warning:" in line]
    assert warnings == [
        f"train.py: warning: 40 of 40 prompts of my.jsonl do not survive the tokenizer of {TINY} "
        "(first: my.jsonl:1); it cannot spell ',' 'P' 'f' 'h' 'l' 'w' 'y'",
        f"train.py: warning: 8 of 8 prompts of my_test.jsonl do not survive the tokenizer of "
        f"{TINY} (first: my_test.jsonl:1); it cannot spell ',' 'P' 'f' 'h' 'l' 'w' 'y'",
        # so it trains on nothing, and says so: why at the first step, and at its end
        "train.py: warning: step 1 kept 0 of 256 samples and made no update: 256 were cut off at "
        "--max-new-tokens 40 before an end-of-sequence token; the prompts the tokenizer cannot "
        "spell (warned above) reach the model garbled",
        "train.py: warning: 2 of 2 steps kept no sample and made no update: the model is the one "
        "the run started from"]
    # the same file and flags in eval.py (docs/data.md's example names the checkpoint written)
    # and analyze.py
    shown = re.search(r"python eval.py --model (runs/mine/\S+) --benchmarks my_test.jsonl",
                      (ROOT / "docs" / "data.md").read_text()).group(1)
    assert (tmp_path / shown).is_dir()
    model = str(tmp_path / shown)
    report = ev.main(["--model", model, "--benchmarks", str(tmp_path / "my_test.jsonl"),
                      "--data-fields", "prompt=question,gold=final", "--n", "1",
                      "--temperature", "0", "--max-new-tokens", "8", "--limit", "2"])
    assert [i["gold"] for i in report["results"]["my_test"]["items"]] == ["13", "15"]
    page = tmp_path / "v.html"
    analyze.main(["view", "--model", model, "--prompts", str(tmp_path / "my.jsonl"),
                  "--data-fields", "prompt=question,gold=final", "--max-new-tokens", "8",
                  "--out", str(page)])
    title = re.search(r"<title>FlowTracer: (.*?)\n", page.read_text(encoding="utf-8")).group(1)
    assert title in {json.loads(line)["question"] for line in open(tmp_path / "my.jsonl")}


# --------------------------------------------------------------------------------------------------
# Each known mistake ends in one line


def test_a_file_of_unknown_shape_names_the_flags_that_read_it(tmp_path, capsys):
    (tmp_path / "my.jsonl").write_text('{"q": "Compute 1+2.", "a": "3"}\n')
    argv = SMALL + ["--data", str(tmp_path / "my.jsonl"), "--out", str(tmp_path / "run")]
    assert error_line("train.py", train.main, argv, capsys) == (
        "train.py: error: my.jsonl: cannot guess the format (no format reads its first row, which "
        "has keys ['a', 'q']); name your fields with --data-fields prompt=KEY,gold=KEY, or the "
        f"format with --data-format ({FORMATS})")
    assert not (tmp_path / "run").exists()
    # --data-fields describes the held-out file too
    my_data(tmp_path, 4)
    cfg = train.parse_args(["--data", str(tmp_path / "my.jsonl"), "--eval-data",
                            str(tmp_path / "my_test.jsonl"), "--data-fields",
                            "prompt=question,gold=final"])
    assert [e.gold for e in harness.held_out_examples(cfg)][:2] == ["13", "15"]
    assert [e.id for e in harness.training_examples(cfg)] == [f"my.jsonl:{i}" for i in range(1, 5)]


def test_an_analyze_prompts_file_without_a_prompt_ends_in_one_line(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text('{"text": "Compute 1+2."}\n')
    argv = ["tokens", "--prompts", str(tmp_path / "p.jsonl")]
    assert error_line("analyze.py", analyze.main, argv, capsys) == (
        "analyze.py: error: p.jsonl: cannot guess the format (no format reads its first row, "
        "which has keys ['text']); name your fields with --data-fields prompt=KEY,gold=KEY, or the "
        f"format with --data-format ({FORMATS})")


def test_a_mistyped_model_folder_fails_at_once_without_the_hub(tmp_path, capsys, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("from_pretrained called")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", no_hub)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_hub)
    monkeypatch.chdir(ROOT)
    expected = ("--model tiny/qwen3-arth: the folder does not exist "
                "(did you mean tiny/qwen3-arith?)")
    argv = ["--model", "tiny/qwen3-arth", "--out", str(tmp_path / "run")]
    assert error_line("train.py", train.main, argv, capsys) == f"train.py: error: {expected}"
    assert not (tmp_path / "run").exists()
    argv = ["--model", "tiny/qwen3-arth", "--benchmarks", "arith", "--n", "1", "--temperature", "0"]
    assert error_line("eval.py", ev.main, argv, capsys) == f"eval.py: error: {expected}"
    argv = ["view", "--model", "tiny/qwen3-arth"]
    assert error_line("analyze.py", analyze.main, argv, capsys) == f"analyze.py: error: {expected}"
    assert guards.looks_like_path("./mine") and guards.looks_like_path("/abs/model")
    assert not guards.looks_like_path("Qwen/Qwen3-4B-Base") and not guards.looks_like_path("gpt2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: not a model folder \(no config.json"):
        guards.check_model(str(tmp_path / "empty"))


def test_a_mistyped_model_is_the_only_line_a_user_sees(tmp_path):
    done = subprocess.run([sys.executable, "train.py", "--model", "tiny/qwen3-arth", "--out",
                           str(tmp_path / "run")], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == ("train.py: error: --model tiny/qwen3-arth: the folder does not exist "
                           "(did you mean tiny/qwen3-arith?)\n")
    assert not (tmp_path / "run").exists()


def test_layers_outside_the_model_end_in_one_line(tmp_path, capsys):
    argv = SMALL + ["--layers", "7", "--out", str(tmp_path / "run")]
    assert error_line("train.py", train.main, argv, capsys) == (
        "train.py: error: --layers 7: layers must be a non-empty list of indices in [0, 4), got "
        "[7]")
    assert not (tmp_path / "run").exists()
    assert error_line("analyze.py", analyze.main, ["view", "--layers", "7"], capsys) == (
        "analyze.py: error: --layers 7: layers must be a non-empty list of indices in [0, 4), got "
        "[7]")


def test_a_gpu_preset_on_a_cpu_machine_says_what_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["--preset", "qwen3-4b-math-1k", "--out", str(tmp_path / "run")]
    assert error_line("train.py", train.main, argv, capsys) == (
        "train.py: error: --preset qwen3-4b-math-1k needs a GPU (it trains Qwen/Qwen3-4B-Base) and "
        "this machine has none; on a CPU run `python train.py` (the tiny model), or keep the "
        "preset and pass --model with a small local model")
    assert not (tmp_path / "run").exists()
    guards.check_gpu("qwen3-4b-math-1k", TINY, config.PRESETS)  # a small model of one's own: fine
    guards.check_gpu("tiny", TINY, config.PRESETS)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    guards.check_gpu("qwen3-4b-math-1k", "Qwen/Qwen3-4B-Base", config.PRESETS)


def test_other_known_errors_end_in_one_line(tmp_path, capsys, monkeypatch):
    assert error_line("eval.py", ev.main, ["--model", TINY, "--benchmarks", "math5000"],
                      capsys) == (
        "eval.py: error: unknown or repeated benchmark(s) in ['math5000']; valid: "
        f"{data.benchmark_names()} or .jsonl paths with distinct names")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    assert error_line("data.py", data.main, ["fetch", "--out", str(tmp_path / "d")],
                      capsys) == ("data.py: error: fetching the benchmarks needs the `datasets` "
                                  "library: pip install datasets")
    assert not (tmp_path / "d").exists()
    offline = types.ModuleType("datasets")

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub\n(offline)")

    offline.load_dataset = unreachable
    monkeypatch.setitem(sys.modules, "datasets", offline)
    argv = ["--model", TINY, "--benchmarks", "gsm8k", "--n", "1", "--temperature", "0"]
    assert error_line("eval.py", ev.main, argv, capsys) == (
        "eval.py: error: benchmark 'gsm8k': no data_dir given, and loading openai/gsm8k (config "
        "main, split test) failed: ConnectionError: Couldn't reach 'openai/gsm8k' on the Hub "
        "(offline). Offline? pass --data-dir DIR holding gsm8k_test.jsonl")
    monkeypatch.setenv("FLOWTRACER_TRACEBACK", "1")  # the traceback, for a bug report
    with pytest.raises(OSError, match="Offline"):
        guards.run("eval.py", ev.main, argv)


def test_a_model_train_py_cannot_use_ends_in_one_line(tmp_path, capsys, monkeypatch):
    """issue 23: a tokenizer without a chat template and a model without SDPA attention are
    refused as the other mistakes are, one `train.py: error:` line, leaving no run folder."""
    model_dir = tmp_path / "model"
    shutil.copytree(TINY, model_dir)
    (model_dir / "chat_template.jinja").unlink()
    argv = ["--model", str(model_dir), "--out", str(tmp_path / "run")]
    assert error_line("train.py", train.main, argv, capsys) == (
        f"train.py: error: {model_dir}: the tokenizer has no chat template; use --template "
        "fewshot (base models such as Llama-3.x) or a model folder whose tokenizer_config.json "
        "holds one")
    assert not (tmp_path / "run").exists()

    def refuse(*args, **kwargs):
        raise ValueError("XForCausalLM does not support an attention implementation through\n"
                         "torch.nn.functional.scaled_dot_product_attention yet")

    monkeypatch.setattr(harness.AutoModelForCausalLM, "from_pretrained", refuse)
    assert error_line("train.py", train.main, ["--out", str(tmp_path / "run")], capsys) == (
        f"train.py: error: {TINY}: cannot load with attn_implementation='sdpa', which the "
        "attention capture of capture.py needs (XForCausalLM does not support an attention "
        "implementation through torch.nn.functional.scaled_dot_product_attention yet)")
    assert not (tmp_path / "run").exists()


def test_prompts_the_tokenizer_cannot_spell_get_a_warning(capsys):
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    examples = [dataspec.Example("Compute 3+4.", "7", id="x:1"), dataspec.Example("What is 3+4?", "7",
                                                                           id="x:2")]
    guards.warn_unencodable("train.py", tokenizer, {"mine": examples, "arith": examples[:1]}, "tiny")
    assert capsys.readouterr().err == (
        "train.py: warning: 1 of 2 prompts of mine do not survive the tokenizer of tiny (first: "
        "x:2); it cannot spell '?' 'W' 'h'\n")


# --------------------------------------------------------------------------------------------------
# --help and --show-config


def test_every_flag_says_what_it_does_and_its_default(capsys):
    with pytest.raises(SystemExit):
        config.parse_args(["--preset", "qwen3-4b-math-1k", "--help"])
    text = capsys.readouterr().out
    options = re.split(r"\n  (?=--)", text.split("options:", 1)[1])[1:]
    flags = {option.split()[0].rstrip(",") for option in options}
    for field in config.Config.__dataclass_fields__.values():
        assert field.metadata["help"], field.name
        assert "--" + field.name.replace("_", "-") in flags, field.name
    assert all("(default:" in option for option in options if not option.startswith("--help"))
    model = next(o for o in options if o.startswith("--model"))
    assert " ".join(model.split()).endswith("(default: Qwen/Qwen3-4B-Base)")
    assert "The defaults shown are those of --preset qwen3-4b-math-1k." in text
    subcommands = next(a for a in analyze.parser()._actions if a.dest == "cmd").choices
    for parser in [ev.parser(), *subcommands.values()]:
        assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
        for action in parser._actions:
            assert action.help, (parser.prog, action.dest)
        assert "(default: 1024)" in ev.parser().format_help().replace("\n", " ")


def test_help_lists_each_choice_as_it_is_typed(capsys):
    with pytest.raises(SystemExit):
        config.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--answer-fallback {last_line,none}" in text and "None}" not in text
    assert config.parse_args(["--answer-fallback", "none"]).answer_fallback is None


@pytest.mark.parametrize("flag", ["--data", "--eval-data"])
def test_an_empty_data_file_is_refused_before_the_model_loads(flag, tmp_path, capsys):
    """issue 22: as --data it gave "0 training examples are also in the held-out set", as
    --eval-data an IndexError traceback after the model had loaded."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    argv = [flag, str(empty), "--data-format", "gsm8k", "--out", str(tmp_path / "run")]
    assert error_line("train.py", train.main, argv, capsys) == (
        "train.py: error: empty.jsonl: no rows (the file has 0 lines, none with a row)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("parse, argv, flag, message", [
    (config.parse_args, ["--steps", "x"], "--steps", "invalid int value: 'x'"),
    (config.parse_args, ["--preset", "tiny2"], "--preset", "invalid choice: 'tiny2'"),
    (lambda argv: ev.parser().parse_args(argv), ["--n", "2.5"], "--n", "invalid int value: '2.5'"),
    (lambda argv: analyze.parser().parse_args(argv), ["view", "--seed", "s"], "--seed",
     "invalid int value: 's'"),
    (lambda argv: data.main(argv), ["fetch", "--nope"], None, "unrecognized arguments: --nope"),
])
def test_a_bad_flag_value_is_one_line_without_the_usage(parse, argv, flag, message, capsys):
    """issue 22: argparse printed its 29-line usage block above the error."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    where = f"argument {flag}: " if flag else ""
    assert re.fullmatch(rf"[\w.]+( view)?: error: {where}{re.escape(message)}.* \(--help lists the "
                        r"flags\)\n", err), err


def test_show_config_prints_the_resolved_configuration(capsys):
    argv = ["--preset", "qwen3-4b-math-1k", "--lr", "2e-6"]
    with pytest.raises(SystemExit) as exit_:
        config.parse_args(argv + ["--show-config"])
    assert exit_.value.code == 0
    shown = json.loads(capsys.readouterr().out)
    resolved = config.parse_args(argv)
    assert shown == json.loads(json.dumps(resolved.__dict__))
    assert (shown["model"], shown["lr"], shown["data"], shown["preset"]) == (
        "Qwen/Qwen3-4B-Base", 2e-6, "dapo", "qwen3-4b-math-1k")


# --------------------------------------------------------------------------------------------------
# Checkpoints without noise, and a resumed run's progress bar


def test_checkpoints_store_tied_weights_once_and_resume_counts_on(tmp_path, capfd, monkeypatch):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    argv = SMALL + ["--steps", "2", "--save-every", "1", "--eval-every", "100", "--out", str(out)]
    train.main(argv)
    assert "Removed shared tensor" not in capfd.readouterr().err
    saved = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-000002" / "model")
    assert saved.lm_head.weight.data_ptr() == saved.model.embed_tokens.weight.data_ptr()
    start = AutoModelForCausalLM.from_pretrained(TINY)
    assert not torch.equal(saved.model.embed_tokens.weight, start.model.embed_tokens.weight)

    bars = []
    real_tqdm = harness.tqdm

    def spy(*args, **kwargs):
        bars.append(real_tqdm(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(harness, "tqdm", spy)
    train.main(SMALL + ["--steps", "3", "--save-every", "1", "--eval-every", "100", "--out",
                        str(out), "--resume", "--allow-config-change"])  # a longer run
    assert "Removed shared tensor" not in capfd.readouterr().err
    assert (bars[0].total, bars[0].n) == (3, 3)  # from 2, not from 0: one step was left
    resumed = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-000003" / "model")
    assert resumed.lm_head.weight.data_ptr() == resumed.model.embed_tokens.weight.data_ptr()
    assert not torch.equal(resumed.model.embed_tokens.weight, saved.model.embed_tokens.weight)
