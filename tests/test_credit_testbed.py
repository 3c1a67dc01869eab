"""benchmarks/credit_testbed.py: its statistics on hand cases, the deciding-token map, and a run of
2 steps x 2 seeds end to end."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

import tasks

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import credit_testbed as bench

ENV = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1")


def test_area_under_curve_is_the_mean_accuracy_over_the_budget():
    assert bench.area_under_curve([(0, 0.5), (10, 0.5)]) == 0.5
    # trapezoids: 5 * (0.2 + 0.4) / 2 + 15 * (0.4 + 0.8) / 2 = 1.5 + 9 = 10.5 over 20 steps
    assert bench.area_under_curve([(0, 0.2), (5, 0.4), (20, 0.8)]) == pytest.approx(10.5 / 20)
    assert bench.area_under_curve([(0, 0.3)]) == 0.3


def test_t_quantiles_match_the_table():
    # Student's t table: t_{0.975} for 1, 4, 30 degrees of freedom, t_{0.8} for 4
    assert bench.t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
    assert bench.t_quantile(0.975, 4) == pytest.approx(2.776, abs=1e-3)
    assert bench.t_quantile(0.975, 30) == pytest.approx(2.042, abs=1e-3)
    assert bench.t_quantile(0.8, 4) == pytest.approx(0.941, abs=1e-3)


def test_paired_interval_and_detectable_difference_by_hand():
    diffs = [0.01, 0.03, -0.02, 0.04, 0.02]  # mean 0.016, sd 0.02302
    p = bench.paired(diffs)
    assert p["mean"] == pytest.approx(0.016) and p["sd"] == pytest.approx(0.0230217, rel=1e-5)
    half = 2.7764 * 0.0230217 / math.sqrt(5)  # t_{0.975, 4} * sd / sqrt(n)
    assert p["lo"] == pytest.approx(0.016 - half, rel=1e-3)
    assert p["hi"] == pytest.approx(0.016 + half, rel=1e-3)
    assert p["detectable"] == pytest.approx((2.7764 + 0.9410) * 0.0230217 / math.sqrt(5), rel=1e-3)
    assert math.isnan(bench.paired([0.1])["detectable"])


def test_compare_pairs_by_seed_not_by_order():
    rows = [{"credit": "uniform", "seed": 0, "after": 0.5, "auc": 0.4},
            {"credit": "flow", "seed": 1, "after": 0.9, "auc": 0.8},
            {"credit": "uniform", "seed": 1, "after": 0.7, "auc": 0.6},
            {"credit": "flow", "seed": 0, "after": 0.6, "auc": 0.5}]
    flow = bench.compare(rows, ["uniform", "flow"])[1]
    assert flow["after_vs_uniform"]["mean"] == pytest.approx(0.15)  # (0.1 + 0.2) / 2
    assert flow["after_vs_uniform"]["sd"] == pytest.approx(math.sqrt(0.005))
    assert flow["auc"][0] == pytest.approx(0.65)


def test_deciding_tokens_map_characters_to_the_sampled_tokens():
    tok = AutoTokenizer.from_pretrained(ROOT / "tiny" / "qwen3-chain")
    # the docstring example of tasks.ChainTask: traps at characters 26-27 and 62-63
    text = tasks.ChainTask().solution([3, 4, 2, 5, 2], ["+", "*", "-", "*"])
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    prompt = 3
    input_ids = torch.tensor([[tok.pad_token_id] * prompt + ids])  # [1, T]
    response_mask = torch.arange(input_ids.shape[1])[None] >= prompt
    r = SimpleNamespace(texts=[text], input_ids=input_ids, response_mask=response_mask)
    mask = bench.deciding_tokens(r, tok)
    picked = mask[0].nonzero().squeeze(1).tolist()
    assert [tok.decode(input_ids[0, j]) for j in picked] == ["4", "*", "5", "*"]
    before = [tok.decode(input_ids[0, prompt:j]) for j in picked]
    chars = [c for d in tasks.chain_decisions(text) for c in d.chars]
    assert [len(b) for b in before] == chars == [26, 27, 62, 63]


def test_two_steps_two_seeds_end_to_end(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "credit_testbed.py"),
           "--credits", "uniform", "flow", "--seeds", "0", "1", "--out", str(tmp_path / "runs"),
           "--look-inside", "1", "--samples", "2", "--plot", str(tmp_path / "curves.png"),
           "--json", str(tmp_path / "out.json"), "--table", str(tmp_path / "table.txt"),
           "--", "--steps", "2", "--eval-every", "2", "--eval-limit", "2",
           "--max-new-tokens", "160", "--prompts-per-step", "2", "--group-size", "4",
           "--min-difficulty", "0", "--max-difficulty", "1"]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "paired vs uniform" in done.stdout and "of the deciding tokens" in done.stdout
    out = json.loads((tmp_path / "out.json").read_text())
    assert sorted((r["credit"], r["seed"]) for r in out["runs"]) == [
        ("flow", 0), ("flow", 1), ("uniform", 0), ("uniform", 1)]
    assert all([s for s, _ in r["curve"]] == [0, 2] for r in out["runs"])
    flow = next(e for e in out["statistics"] if e["credit"] == "flow")
    assert flow["after_vs_uniform"]["n"] == 2 and flow["auc_vs_uniform"]["n"] == 2
    # seeds pair the strategies: the first rollout (before any update) is the same sample
    for seed in (0, 1):
        logs = [tmp_path / "runs" / f"{c}-seed{seed}" / "metrics.jsonl"
                for c in ("uniform", "flow")]
        first = [json.loads(log.read_text().splitlines()[1]) for log in logs]
        assert first[0]["reward"] == first[1]["reward"]
        assert first[0]["response_len"] == first[1]["response_len"]
    inside = out["look_inside"]
    assert inside["responses"] >= 1
    assert set(inside["sets"]) == {"flow", "flow-bottom", "random", "entropy"}
    for s in inside["sets"].values():
        assert abs(s["token_share"] - 0.4) < 0.02 and 0.0 <= s["deciding_share"] <= 1.0
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    table = (tmp_path / "table.txt").read_text()  # rewritten after every run: the last has all 4
    assert "runs: 4 in" in table and "of the deciding tokens" in table
    assert not list(tmp_path.glob("*.tmp"))
