"""benchmarks/credit_testbed.py: its statistics on hand cases, the deciding-token map, the positive
controls `oracle` and `oracle-only` (credit.py) on hand-made responses, and a run of 2 steps x 2
seeds end to end."""

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

import baselines
import config
import credit

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
    table = bench.compare(rows, ["uniform", "flow", "random"])
    assert list(table) == ["uniform", "flow"]  # strategies without runs are left out
    flow = table["flow"]
    assert flow["seeds"] == [0, 1] and flow["after"] == [0.6, 0.9]  # per seed, in seed order
    assert flow["diff"] == pytest.approx(0.15)  # (0.1 + 0.2) / 2
    assert flow["sd"] == pytest.approx(math.sqrt(0.005)) and flow["n"] == 2
    assert flow["lo"] < flow["diff"] < flow["hi"]
    assert flow["auc_vs_uniform"]["mean"] == pytest.approx(0.15)
    assert flow["auc_mean"] == pytest.approx(0.65)
    assert "diff" not in table["uniform"]


def test_markdown_table_puts_the_controls_on_top():
    rows = [{"credit": c, "seed": s, "after": a, "auc": a} for c, s, a in [
        ("uniform", 0, 0.6), ("uniform", 1, 0.7), ("flow", 0, 0.62), ("flow", 1, 0.69),
        ("oracle-only", 0, 0.7), ("oracle-only", 1, 0.8)]]
    lines = bench.markdown_table(bench.compare(rows, ["uniform", "flow", "oracle-only"]))
    body = lines.splitlines()[2:]
    assert [line.split(" | ")[0] for line in body] == ["| oracle-only", "| uniform", "| flow"]
    assert "| +0.100 [+0.100, +0.100] (0.000) |" in body[0]  # diffs 0.1 and 0.1: sd 0
    assert body[1].endswith("| - | - |")


def test_layer_sets_single_layers_thirds_all():
    sets = bench.layer_sets(4)
    assert sets == {"layer 0": [0], "layer 1": [1], "layer 2": [2], "layer 3": [3],
                    "first third": [0], "middle third": [1], "last third": [2, 3],
                    "all layers": [0, 1, 2, 3]}
    assert bench.layer_sets(36)["middle third"] == list(range(12, 24))  # rollout.default_layers


def test_a_run_is_reused_only_with_the_configuration_asked_for(tmp_path):
    folder = tmp_path / "oracle-seed3"
    folder.mkdir()
    argv = ["--credit", "oracle", "--seed", "3", *bench.TESTBED, "--gamma", "4"]
    cfg = bench.dataclasses.asdict(config.parse_args(argv)) | {"model": "/elsewhere/qwen3-chain"}
    (folder / "config.json").write_text(json.dumps(cfg))
    log = ['{"step": 0, "eval_accuracy": 0.6}', '{"step": 10, "eval_accuracy": 0.7}']
    (folder / "metrics.jsonl").write_text("\n".join(log))
    assert bench.finished(folder, argv)  # the model compared by its folder name
    assert not bench.finished(folder, argv[:-1] + ["5"])  # another gamma
    assert not bench.finished(folder, argv + ["--steps", "20"])  # the run stopped short of 20
    (folder / "metrics.jsonl").write_text(log[0])
    assert not bench.finished(folder, argv)  # cut before its final evaluation


def test_strategy_flags_controls_and_band():
    assert bench.strategy_flags("oracle", 4.0, None) == ("oracle", ["--gamma", "4.0"])
    assert bench.strategy_flags("oracle-only", None, None) == ("oracle-only", [])
    assert bench.strategy_flags("flow", 4.0, [0, 1]) == ("flow", [])  # gamma: controls only
    assert bench.strategy_flags("flow-band", 4.0, [0, 1]) == ("flow", ["--layers", "0,1"])


def test_deciding_tokens_map_characters_to_the_sampled_tokens():
    tok = AutoTokenizer.from_pretrained(ROOT / "tiny" / "qwen3-chain")
    # the docstring example of tasks.ChainTask: traps at characters 26-27 and 62-63
    text = tasks.ChainTask().solution([3, 4, 2, 5, 2], ["+", "*", "-", "*"])
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    prompt = 3
    input_ids = torch.tensor([[tok.pad_token_id] * prompt + ids])  # [1, T]
    response_mask = torch.arange(input_ids.shape[1])[None] >= prompt
    r = SimpleNamespace(texts=[text], input_ids=input_ids, response_mask=response_mask)
    mask = baselines.deciding_tokens(r, tok)
    picked = mask[0].nonzero().squeeze(1).tolist()
    assert [tok.decode(input_ids[0, j]) for j in picked] == ["4", "*", "5", "*"]
    before = [tok.decode(input_ids[0, prompt:j]) for j in picked]
    chars = [c for d in tasks.chain_decisions(text) for c in d.chars]
    assert [len(b) for b in before] == chars == [26, 27, 62, 63]


# --------------------------------------------------------------------------------------------------
# The positive controls: gamma on the deciding tokens of hand-made responses

HEADER = "We need 3+4*2-5*2 mod 10.\n"
RESPONSES = [  # (response, the deciding tokens as decoded, one token per character)
    (HEADER + "4*2=8, so 3+8-5*2.\n3+8=1, so 1-5*2.\n5*2=0, so 1-0.\n1-0=1, so 1.\n\\boxed{1}",
     ["4", "*", "5", "*"]),  # careful at both traps
    (HEADER + "3+4=7, so 7*2-5*2.\nlet me see.\n7*2=4, so 4-5*2.\n5*2=0, so 4-0.\n"
     "4-0=4, so 4.\n\\boxed{4}", ["3", "+", "5", "*"]),  # careless, a filler, careful
    ("We need 2+2*3-1 mod 10.\n2+2=4, so 4*3-1.\n4*3=2, so 2-1.\n2-1=1, so 1.\n\\boxed{1}",
     ["+"]),  # a == b: only the operator decides
    ("no header here\n4*2=8, so 3.\n\\boxed{3}", []),  # not a chain response: nothing decides
]


def _rollout(tok, texts, prompt=3):
    """Left-padded stand-in prompts of `prompt` tokens, the responses (+ EOS) right-padded."""
    rows = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    width = prompt + max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id)
    response_mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, ids in enumerate(rows):
        input_ids[i, prompt : prompt + len(ids)] = torch.tensor(ids)
        response_mask[i, prompt : prompt + len(ids)] = True
    return SimpleNamespace(texts=list(texts), input_ids=input_ids, response_mask=response_mask)


@pytest.fixture(scope="module")
def chain_tok():
    return AutoTokenizer.from_pretrained(ROOT / "tiny" / "qwen3-chain")


def test_oracle_only_puts_gamma_exactly_on_the_deciding_tokens(chain_tok):
    r = _rollout(chain_tok, [t for t, _ in RESPONSES])
    gam = credit.credit_gamma("oracle-only", r, gamma=2.5, tokenizer=chain_tok)
    assert gam.dtype == torch.float32 and set(gam.unique().tolist()) == {1.0, 2.5}
    for i, (_, deciding) in enumerate(RESPONSES):
        picked = (gam[i] == 2.5).nonzero().squeeze(1).tolist()
        assert [chain_tok.decode(r.input_ids[i, j]) for j in picked] == deciding
        assert r.response_mask[i, picked].all()  # never a prompt or padding position


def test_oracle_fills_the_ratio_at_random_after_the_deciding_tokens(chain_tok):
    r = _rollout(chain_tok, [t for t, _ in RESPONSES])
    decide = baselines.deciding_tokens(r, chain_tok)
    n = r.response_mask.sum(-1)  # [B]
    fills = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        gam = credit.credit_gamma("oracle", r, ratio=0.4, gamma=1.5, tokenizer=chain_tok,
                                  generator=g)
        chosen = gam == 1.5
        assert torch.equal((chosen.sum(-1)), torch.floor(n * 0.4 + 0.5).long())  # eq. (6)'s budget
        assert (chosen | ~decide).all() and not (chosen & ~r.response_mask).any()
        assert (gam[~chosen] == 1).all()
        fills.append(chosen & ~decide)
    assert not torch.equal(*fills)  # the rest of the 40% is drawn at random
    # a budget smaller than the deciding tokens: only deciding tokens, as many as the budget
    few = credit.credit_gamma("oracle", r, ratio=0.01, tokenizer=chain_tok,
                              generator=torch.Generator().manual_seed(0)) > 1
    assert (few.sum(-1) == torch.floor(n * 0.01 + 0.5)).all() and (few <= decide).all()


class _ChunkTokenizer:
    """A stand-in whose tokens cover 1, 2 or 3 characters (ids index `pieces`), so a token can hold
    two deciding characters or a deciding character and a copy; id 0 is a special token."""

    def __init__(self, text):
        self.pieces, k = ["<|eos|>"], 0
        while k < len(text):
            size = 1 + len(self.pieces) % 3
            self.pieces.append(text[k : k + size])
            k += size

    def decode(self, ids, skip_special_tokens=True):
        ids = [ids] if isinstance(ids, int) else ids
        return "".join(self.pieces[i] for i in ids if not (skip_special_tokens and i == 0))


def test_deciding_tokens_with_multi_character_tokens():
    text = RESPONSES[1][0]
    tok = _ChunkTokenizer(text)
    ids = list(range(1, len(tok.pieces))) + [0]
    input_ids = torch.tensor([[0, 0] + ids])
    r = SimpleNamespace(texts=[text], input_ids=input_ids,
                        response_mask=torch.arange(input_ids.shape[1])[None] >= 2)
    # slow and independent: the token whose characters [start, start + len) hold each character
    ends = torch.tensor([len(p) for p in tok.pieces[1:]]).cumsum(0).tolist()
    chars = [c for d in tasks.chain_decisions(text) for c in d.chars]
    want = sorted({2 + next(j for j, end in enumerate(ends) if c < end) for c in chars})
    got = baselines.deciding_tokens(r, tok)[0].nonzero().squeeze(1).tolist()
    assert got == want and len(want) < len(chars)  # two deciding characters share a token


def test_controls_are_refused_off_the_chain_task(chain_tok):
    refused = "--credit must be one of.*oracle-only.*need --data chain, got 'oracle'"
    with pytest.raises(ValueError, match=refused):
        config.validate(config.Config(credit="oracle", data="arith"))
    config.validate(config.Config(credit="oracle-only", data="chain", eval_data="chain"))
    r = _rollout(chain_tok, [RESPONSES[0][0]])
    with pytest.raises(ValueError, match="'oracle-only' needs tokenizer="):
        credit.credit_gamma("oracle-only", r)


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
    out = json.loads((tmp_path / "out.json").read_text(), parse_constant=_no_nan)
    assert sorted((r["credit"], r["seed"]) for r in out["runs"]) == [
        ("flow", 0), ("flow", 1), ("uniform", 0), ("uniform", 1)]
    assert all([s for s, _ in r["curve"]] == [0, 2] for r in out["runs"])
    assert out["state"] == "complete: 4 runs"
    assert out["flow"]["n"] == 2 and out["flow"]["auc_vs_uniform"]["n"] == 2
    assert out["flow"]["lo"] <= out["flow"]["diff"] <= out["flow"]["hi"]
    # seeds pair the strategies: the first rollout (before any update) is the same sample
    for seed in (0, 1):
        logs = [tmp_path / "runs" / f"{c}-seed{seed}" / "metrics.jsonl"
                for c in ("uniform", "flow")]
        first = [json.loads(log.read_text().splitlines()[1]) for log in logs]
        assert first[0]["reward"] == first[1]["reward"]
        assert first[0]["response_len"] == first[1]["response_len"]
    inside = out["look_inside"]
    assert inside["responses"] >= 1
    assert set(inside["sets"]) == {"flow", "flow-bottom", "random", "entropy", "oracle"}
    assert set(inside["layers"]) == set(bench.layer_sets(4))
    for s in [*inside["sets"].values(), *inside["layers"].values()]:
        assert abs(s["token_share"] - 0.4) < 0.02 and 0.0 <= s["deciding_share"] <= 1.0
    assert inside["layers"]["layer 1"] == inside["layers"]["middle third"] | {"layers": [1]}
    assert inside["sets"]["flow"]["deciding_share"] == inside["layers"]["layer 1"]["deciding_share"]
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    table = (tmp_path / "table.txt").read_text()  # rewritten after every run: the last has all 4
    assert "complete: 4 runs in" in table and "of the deciding tokens" in table
    assert not list(tmp_path.glob("*.tmp"))
    # resumed: every run reused (no training), their wall times kept, strict JSON
    again = cmd[:]
    again[again.index("--look-inside") + 1] = "0"
    done = subprocess.run(again[:2] + ["--reuse"] + again[2:], env=ENV, capture_output=True,
                          text=True, timeout=120, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    reused = json.loads((tmp_path / "out.json").read_text(), parse_constant=_no_nan)
    assert [r["wall_s"] for r in reused["runs"]] == [r["wall_s"] for r in out["runs"]]
    assert reused["flow"]["diff"] == out["flow"]["diff"] and reused["runs_wall_s"] < 60


def _no_nan(name):
    raise AssertionError(f"{name} in the JSON")


def test_without_nan_makes_strict_json():
    data = {"a": [1.0, math.nan, {"b": math.nan}], "c": (2, "x")}
    assert bench.without_nan(data) == {"a": [1.0, None, {"b": None}], "c": [2, "x"]}
