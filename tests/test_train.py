"""train.py end to end on the shipped tiny model.

Every credit strategy, resume after kill -9, bad input. Several processes (DDP, FSDP2, two nodes):
tests/test_distributed.py.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import checkpoints
import config
import credit
import harness
import metrics
import tasks
import train

ROOT = Path(__file__).resolve().parents[1]
# A small run: 8 prompts x 4 samples, every group kept, 8 held-out problems.
SMALL = ["--prompts-per-step", "8", "--group-size", "4", "--max-new-tokens", "40",
         "--eval-limit", "8", "--min-difficulty", "0", "--max-difficulty", "1",
         "--eval-every", "100"]
# seconds for a subprocess run: a hang (e.g. a distributed deadlock) fails instead of stalling CI
TIMEOUT = 600
ENV = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1")


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def initial_weights(model: str = "qwen3-arith") -> dict[str, torch.Tensor]:
    return load_file(str(ROOT / "tiny" / model / "model.safetensors"))


# the chain testbed's controls (config.CHAIN_ONLY) read its deciding tokens: they run on that task
CHAIN = ["--data", "chain", "--eval-data", "chain", "--model", str(ROOT / "tiny" / "qwen3-chain"),
         "--max-new-tokens", "200"]
TOP_K = {"flow", "flow-bottom", "random", "entropy", "attention", "attention-mean", "gradient",
         "correlation", "oracle"}
# Table 11b: the top 40% of one token class only, so fewer than 40% of all tokens
IN_CLASS = {"flow-structural", "flow-content"}
# mean weight 1 + ratio * (gamma - 1) by design
SPREAD = {"flow-raw", "flow-log1p", "flow-sigmoid", "flow-mad"}


@pytest.mark.parametrize("strategy", sorted(credit.CREDIT_STRATEGIES))
def test_two_steps_of_every_credit_strategy(strategy, tmp_path):
    torch.set_num_threads(1)
    chain = strategy in config.CHAIN_ONLY
    result = train.main(SMALL + (CHAIN if chain else []) + [
        "--steps", "2", "--save-every", "2", "--credit", strategy, "--out", str(tmp_path)])
    steps = [r for r in records(tmp_path) if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert all(torch.isfinite(torch.tensor(float(v))) for v in r.values())
        # Table 6: the capture's share of generation, on for the strategies that read attention
        captures = strategy in credit.ATTENTION_STRATEGIES
        assert 0 < r["time_capture"] < r["time_generate"] if captures else r["time_capture"] == 0
        g = r["gamma_mean"]
        if strategy == "uniform":
            assert g == 1.0
        elif strategy in TOP_K:  # 40% of the tokens at 1.5: 1.2, up to per-sequence rounding
            assert abs(g - 1.2) < 0.05, g
        elif strategy in SPREAD:
            assert abs(g - 1.2) < 0.01, g
        elif strategy.startswith("flow-mass"):
            assert 1.0 < g <= 1.5
        elif strategy in IN_CLASS:
            assert 1.0 < g < 1.2, g
        elif strategy == "oracle-only":  # ~1.8 deciding tokens of ~120 at 1.5: ~1.008
            assert 1.0 <= g < 1.05, g
        else:  # flow-tanh: 1 + 0.5 tanh(z), z-scores average to 0
            assert 0.5 < g < 1.5
    # the policy moved, and the checkpoint is a model folder from_pretrained can read
    saved = load_file(str(tmp_path / "checkpoints" / "step-000002" / "model" / "model.safetensors"))
    before = initial_weights("qwen3-chain" if chain else "qwen3-arith")
    assert max((saved[k] - before[k]).abs().max().item() for k in before) > 0
    assert 0.0 <= result["before"] <= 1.0 and 0.0 <= result["after"] <= 1.0


def _strip_times(rs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rs]


def test_kill_9_then_resume_gives_the_uninterrupted_metrics(tmp_path):
    args = SMALL + ["--steps", "4", "--save-every", "2", "--eval-every", "2", "--credit", "flow"]
    cmd = [sys.executable, str(ROOT / "train.py")] + args
    subprocess.run(cmd + ["--out", str(tmp_path / "a")], check=True, env=ENV, capture_output=True,
                   cwd=ROOT, timeout=TIMEOUT)

    b = tmp_path / "b"
    proc = subprocess.Popen(cmd + ["--out", str(b)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 300
    # kill once step 3 is logged: past the step-2 checkpoint
    while time.time() < deadline and proc.poll() is None:
        if (b / "metrics.jsonl").exists() and any(r["step"] == 3 for r in records(b)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name for p in checkpoints.checkpoint_dirs(b)] == ["step-000002"]

    done = subprocess.run(cmd + ["--out", str(b), "--resume"], env=ENV, capture_output=True,
                          text=True, cwd=ROOT, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout and "held-out accuracy:" in done.stdout
    assert _strip_times(records(b)) == _strip_times(records(tmp_path / "a"))


# --------------------------------------------------------------------------------------------------
# Configuration, data order, smoothing, bad input


def test_presets_and_flags():
    cfg = train.parse_args(["--preset", "qwen3-4b-math-1k", "--lr", "2e-6", "--layers", "12,13"])
    assert ((cfg.model, cfg.prompts_per_step, cfg.group_size, cfg.micro_batch)
            == ("Qwen/Qwen3-4B-Base", 64, 8, 32))
    assert ((cfg.temperature, cfg.top_p, cfg.top_k, cfg.adv_clip, cfg.dual_clip)
            == (0.99, 1.0, 100, 2.0, 3.0))
    assert ((cfg.min_difficulty, cfg.max_difficulty, cfg.warmup_steps, cfg.bf16)
            == (0.1, 0.95, 20, True))
    assert cfg.lr == 2e-6 and cfg.layers == [12, 13]  # flags override the preset
    assert train.parse_args([]) == train.Config()
    assert train.parse_args(["--no-drop-truncated", "--dual-clip", "none"]).dual_clip is None
    assert train.parse_args([]).answer_fallback is None  # the paper's answer region: the box
    assert train.parse_args(["--answer-fallback", "last_line"]).answer_fallback == "last_line"


def test_presets_train_and_evaluate_on_disjoint_splits():
    """No preset trains on its held-out data (issue 13: qwen3-4b-countdown trained on TinyZero's
    test file, qwen3-4b-crossthinkqa on its 811 held-out rows)."""
    import data

    for name in train.PRESETS:
        cfg = train.parse_args(["--preset", name])
        if cfg.data in data.BENCHMARKS:
            split = data.BENCHMARKS[cfg.data]
            assert split.split.startswith("train"), name  # "train" or "train[811:]"
            assert split.file != data.BENCHMARKS[cfg.eval_data].file, name
    countdown = train.parse_args(["--preset", "qwen3-4b-countdown"])
    assert data.BENCHMARKS[countdown.data].file == "countdown_tinyzero_train.jsonl"


@pytest.mark.parametrize("argv, listed", [(["--preset", "nope"], "qwen3-4b-math-1k"),
                                          (["--credit", "nope"], "flow-bottom"),
                                          (["--template", "nope"], "fewshot")])
def test_unknown_names_list_the_valid_ones(argv, listed, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    err = capsys.readouterr().err
    assert "invalid choice" in err and listed in err


def test_data_order_depends_only_on_seed_and_step():
    examples = list(range(10))
    # 20 draws = 2 epochs
    steps = [harness.examples_for_step(examples, s, 4, seed=7) for s in range(5)]
    assert steps == [harness.examples_for_step(examples, s, 4, seed=7) for s in range(5)]
    flat = [x for s in steps for x in s]
    # each epoch a permutation
    assert sorted(flat[:10]) == examples and sorted(flat[10:]) == examples
    assert flat[:10] != flat[10:]
    assert harness.examples_for_step(examples, 0, 4, seed=8) != steps[0]


def test_pools_of_the_data_order_by_hand():
    """pool 3 over 6 examples: positions 0-2 are a permutation of examples 0-2, 3-5 of 3-5, then
    around again with the next seed (pool number 2)."""
    examples = list(range(6))
    flat = [x for s in range(4) for x in harness.examples_for_step(examples, s, 3, 7, pool=3)]
    assert sorted(flat[:3]) == [0, 1, 2] and sorted(flat[3:6]) == [3, 4, 5]
    assert sorted(flat[6:9]) == [0, 1, 2] and sorted(flat[9:]) == [3, 4, 5]
    seeded = [torch.randperm(3, generator=torch.Generator().manual_seed(7 * 100_003 + k)).tolist()
              for k in range(4)]
    assert flat == [i + 3 * (k % 2) for k in range(4) for i in seeded[k]]


def _old_order(examples: list, step: int, n: int, seed: int) -> list:
    """The order before issue 22, written again: one permutation of the whole list per epoch."""
    out, start = [], step * n
    while len(out) < n:
        epoch, offset = divmod(start + len(out), len(examples))
        order = torch.randperm(len(examples),
                               generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out += [examples[i] for i in order[offset : offset + n - len(out)].tolist()]
    return out


def _prompts(argv: list[str], steps: int) -> list[list[str]]:
    cfg = train.parse_args(argv)
    examples = harness.training_examples(cfg)
    pool = harness.shuffle_pool(cfg, examples)
    return [[e.prompt for e in harness.examples_for_step(examples, s, cfg.prompts_per_step,
                                                         cfg.seed, pool)] for s in range(steps)]


def test_a_longer_run_begins_as_a_shorter_one():
    """issue 22: the prompts of a step depended on --steps (a permutation of steps x prompts
    problems); now a synthetic task is drawn in chunks of 100 steps. The embedded default (100
    steps, one chunk) keeps the order it had, so its figures stand."""
    small = ["--prompts-per-step", "8", "--seed", "3"]
    two, four, long = (_prompts(small + ["--steps", str(n)], 2) for n in (2, 4, 250))
    assert two == four == long
    old = [[e.prompt for e in _old_order(tasks.TASKS["arith"].training(n * 8, 3), 1, 8, 3)]
           for n in (2, 4)]
    assert old[0] != old[1]  # the positive control: the old order changed with --steps
    examples = tasks.TASKS["arith"].training(100 * 32, 0)
    default = [[e.prompt for e in _old_order(examples, s, 32, 0)] for s in range(100)]
    assert _prompts([], 100) == default


def test_mini_batches_make_the_clip_act(tmp_path):
    """issue 22: --mini-batches 4 with a learning rate that moves the policy: r leaves 1 after the
    first optimizer step and clip_frac > 0 in metrics.jsonl (with one step per rollout it was
    always 0)."""
    torch.set_num_threads(1)
    train.main(SMALL + ["--steps", "1", "--save-every", "0", "--mini-batches", "4", "--lr", "1e-2",
                        "--out", str(tmp_path)])
    step = records(tmp_path)[1]
    assert step["optimizer_steps"] == 4
    assert step["clip_frac"] > 0 and step["prob_ratio_max"] > 1 + 0.2


def test_peak_tracking_ema_by_hand():
    # ema_1 = 1; ema_2 = .5 * max(0, 1) + .5 * 1 = 1; ema_3 = .5 * max(2, 1) + .5 * 1 = 1.5;
    # ema_4 = .5 * max(1, 1.5) + .5 * 1.5 = 1.5
    assert metrics.peak_ema([1.0, 0.0, 2.0, 1.0], alpha=0.5) == [1.0, 1.0, 1.5, 1.5]


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    (tmp_path / "checkpoints" / "step-000002").mkdir(parents=True)
    with pytest.raises(ValueError, match="already holds checkpoints: pass --resume"):
        train.main(SMALL + ["--out", str(tmp_path)])
    with pytest.raises(ValueError, match="fresh does not exist, so there is no run to resume"):
        train.main(SMALL + ["--out", str(tmp_path / "fresh"), "--resume"])


def test_model_without_chat_template_gets_a_clear_message(tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(ROOT / "tiny" / "qwen3-arith", model_dir)
    (model_dir / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="no chat template.*--template fewshot"):
        train.main(SMALL + ["--model", str(model_dir), "--out", str(tmp_path / "run")])


def test_model_without_sdpa_gets_a_clear_message(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("XForCausalLM does not support an attention implementation through "
                         "torch.nn.functional.scaled_dot_product_attention yet")

    monkeypatch.setattr(harness.AutoModelForCausalLM, "from_pretrained", refuse)
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        train.main(SMALL + ["--out", str(tmp_path)])


def test_layers_out_of_range_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"--layers 2,9: layers must be .* \[0, 4\)"):
        train.main(SMALL + ["--layers", "2,9", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()  # the run folder appears once the run can start


def test_broken_training_file_names_file_line_and_field(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?"\n')
    with pytest.raises(ValueError, match=r"train.jsonl:2"):
        train.main(SMALL + ["--data", str(bad), "--data-format", "gsm8k",
                            "--out", str(tmp_path / "run")])
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\n'
                   '{"query": "2+2?", "answer": "#### 4"}\n')
    with pytest.raises(ValueError, match=r"train.jsonl:2.*question"):
        train.main(SMALL + ["--data", str(bad), "--data-format", "gsm8k",
                            "--out", str(tmp_path / "run")])
    with pytest.raises(ValueError, match="ours=theirs"):
        train.main(SMALL + ["--data", str(bad), "--data-fields", "prompt",
                            "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_train_and_eval_overlap_is_checked_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """data.without_overlap runs in train.main before the model loads: the same file for training
    and evaluation is refused, a partial overlap is left out of training with a warning."""
    class Loaded(Exception):
        pass

    def load(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(harness, "load_for_training", load)
    rows = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(4)]
    both = tmp_path / "both_gsm8k.jsonl"
    both.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = SMALL + ["--data", str(both), "--out", str(tmp_path / "run")]
    with pytest.raises(ValueError, match="also in the held-out set"):  # one line via guards.run
        train.main(argv + ["--eval-data", str(both)])
    part = tmp_path / "part_gsm8k.jsonl"
    part.write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(Loaded):  # as far as loading the model
        train.main(argv + ["--eval-data", str(part)])
    assert "1 of 4 training examples are also in the held-out set" in capsys.readouterr().err


def test_a_run_that_keeps_no_sample_says_why_and_says_so_at_its_end(tmp_path, capsys):
    """--max-new-tokens 1: every response is cut off before its EOS, so every step keeps nothing;
    the first says why, the end says the model did not move, and no PyTorch warning about the
    scheduler stepping without the optimizer appears."""
    torch.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train.main(SMALL + ["--steps", "2", "--max-new-tokens", "1", "--out", str(tmp_path)])
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]
    said = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert said == [
        "train.py: warning: step 1 kept 0 of 32 samples and made no update: 32 were cut off at "
        "--max-new-tokens 1 before an end-of-sequence token",
        "train.py: warning: 2 of 2 steps kept no sample and made no update: the model is the one "
        "the run started from"]
    assert [r.get("skipped") for r in records(tmp_path) if "reward" in r] == [1.0, 1.0]
    saved = load_file(str(tmp_path / "checkpoints" / "step-000002" / "model" / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in initial_weights().items())


def test_why_nothing_was_kept_by_hand():
    cfg = train.Config()  # --min-difficulty 0.1, --max-difficulty 0.95, drop truncated
    band = "[--min-difficulty 0.1, --max-difficulty 0.95]"
    wrong = {"samples": 16, "reward": 0.0, "truncated": 0.0}
    assert harness.why_nothing_kept(cfg, wrong) == (
        f"every response scored 0, so no group's rewards vary (its mean reward is outside {band})")
    mixed = {"samples": 16, "reward": 0.5, "truncated": 0.25}  # e.g. groups all 0 and all 1
    assert harness.why_nothing_kept(cfg, mixed, unspellable=True) == (
        "4 were cut off at --max-new-tokens 40 before an end-of-sequence token; no group's mean "
        f"reward lies within {band}: each is too hard or too easy; the prompts the tokenizer "
        "cannot spell (warned above) reach the model garbled")
    kept_cut = dataclasses.replace(cfg, drop_truncated=False)  # truncation is then no reason
    assert harness.why_nothing_kept(kept_cut, mixed).startswith("no group's mean reward")


def test_batch_cat_pads_and_rows_trims():
    def piece(width, n):
        mask = torch.ones(n, width, dtype=torch.long)
        return train.Batch(torch.full((n, width), 5), mask, mask.bool(),
                           torch.full((n, width), 1.5), torch.ones(n))

    both = train.Batch.cat([piece(3, 2), piece(5, 1)], pad_id=0)
    assert both.input_ids.tolist() == [[5, 5, 5, 0, 0], [5, 5, 5, 0, 0], [5] * 5]
    assert both.attention_mask.sum().item() == 11 and both.response_mask.sum().item() == 11
    assert both.gamma[0].tolist() == [1.5, 1.5, 1.5, 1.0, 1.0]  # padding gets gamma 1 (and mask 0)
    short = both.rows(torch.tensor([0, 1]))
    # all-padding columns dropped
    assert short.input_ids.shape == (2, 3) and short.advantages.shape == (2,)


def test_generation_in_chunks_covers_every_prompt(tmp_path):
    torch.set_num_threads(1)
    train.main(SMALL + ["--steps", "1", "--save-every", "0", "--generation-batch", "3",
                        "--out", str(tmp_path)])
    step = records(tmp_path)[1]
    assert step["step"] == 1 and step["samples"] == 8 * 4 and 0 < step["response_len"] <= 40
    assert step["gamma_mean"] == pytest.approx(1.2, abs=0.05)
