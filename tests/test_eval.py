"""Tests of eval.py: pass@k, the aggregation of rewards, greedy decoding on the shipped tiny model
against a direct decode, the command line end to end, and the errors."""

import itertools
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import dataspec
import tasks
import eval as ev
import rewards
import rollout

TINY = Path(__file__).resolve().parents[1] / "tiny" / "qwen3-arith"


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(TINY, attn_implementation="sdpa").eval()
    return model, AutoTokenizer.from_pretrained(TINY)


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_hand_cases_and_brute_force():
    assert ev.pass_at_k(4, 1, 1) == 0.25  # c / n
    assert ev.pass_at_k(4, 1, 2) == 0.5  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert ev.pass_at_k(5, 0, 3) == 0.0 and ev.pass_at_k(5, 5, 1) == 1.0
    for n in range(1, 7):
        for c in range(n + 1):
            assert ev.pass_at_k(n, c, 1) == pytest.approx(c / n)  # pass@1 == avg@n
            for k in range(1, n + 1):
                assert ev.pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k))
    with pytest.raises(ValueError, match="0 <= c <= n"):
        ev.pass_at_k(3, 4, 1)


def test_aggregation_over_mixed_kinds_and_the_fewshot_wiring(monkeypatch, tiny):
    model, tokenizer = tiny
    examples = [dataspec.Example("Compute 1+1.", "2", "math", "m"),
                dataspec.Example("Reach 10 with [2, 5].", {"numbers": [2, 5], "target": 10},
                             "countdown", "c"),
                dataspec.Example("Pick: A: 1 B: 2", "B: 2", "choice", "q")]
    # n = 2 samples each; right answers: math both, countdown the first, choice none.
    texts = {"Compute 1+1.": ["\\boxed{2}", "so \\boxed{2.0}"],
             "Reach 10 with [2, 5].": ["<answer>2*5</answer>", "<answer>2+5</answer>"],
             "Pick: A: 1 B: 2": ["\\boxed{A}", "none"]}
    calls = []

    def fake_generate(model, tokenizer, prompts, n, max_new_tokens, capture, chat_template, **kw):
        calls.append((prompts, n, capture, chat_template, kw))
        questions = [p.rsplit("User: ", 1)[1].removesuffix("\n\nAssistant:") for p in prompts]
        out = [t for q in questions for t in texts[q]]
        return rollout.Rollout(input_ids=None, attention_mask=None, prompt_mask=None,
                               response_mask=None, answer_mask=None, attn=None, texts=out,
                               lengths=torch.tensor([3] * len(out)))

    monkeypatch.setattr(rollout, "generate", fake_generate)
    result = ev.evaluate(model, tokenizer, examples, n=2, temperature=0.6, top_p=0.95,
                         max_new_tokens=5, template="fewshot", batch_size=2)
    # batches of 2 and 1 prompts
    assert [c[0][0].startswith(dataspec.FEWSHOT) for c in calls] == [True, True]
    assert [(len(c[0]), c[1], c[2], c[3]) for c in calls] == [(2, 2, False, False),
                                                              (1, 2, False, False)]
    assert calls[0][4] == dict(temperature=0.6, top_p=0.95, top_k=0)
    assert [item["rewards"] for item in result["items"]] == [[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    assert result["rewards"] == [item["rewards"] for item in result["items"]]
    assert [item["id"] for item in result["items"]] == ["m", "c", "q"]
    assert result["avg"] == pytest.approx(3 / 6) == result["pass@1"]
    assert result["pass@n"] == pytest.approx(2 / 3)
    assert (result["n"], result["num_problems"], result["mean_response_tokens"]) == (2, 3, 3.0)


def test_greedy_evaluate_matches_a_direct_greedy_decode(tiny):
    model, tokenizer = tiny
    examples = tasks.arith_heldout(20)
    result = ev.evaluate(model, tokenizer, examples, n=1, temperature=0.0, max_new_tokens=40,
                         template="chat", batch_size=8, progress=False)
    direct = []
    for e in examples:  # one prompt at a time: no padding, plain model.generate
        ids = tokenizer.apply_chat_template([{"role": "user", "content": e.prompt}],
                                            add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        out = model.generate(**ids, do_sample=False, max_new_tokens=40,
                             pad_token_id=tokenizer.pad_token_id)
        direct.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:],
                                       skip_special_tokens=True))
    expected = [rewards.math_reward(text, e.gold) for text, e in zip(direct, examples)]
    assert [item["responses"] for item in result["items"]] == [[t] for t in direct]
    assert [item["rewards"] for item in result["items"]] == [[r] for r in expected]
    assert result["avg"] == sum(expected) / 20
    # the warm start is right on most, not all, problems (README: ~0.7)
    assert 0.4 < result["avg"] < 1.0


def test_main_on_a_local_jsonl_and_arith_writes_the_json_and_prints_the_table(tmp_path, capsys):
    rows = [{"question": f"Compute {a}+{b}.", "answer": f"It is {a + b}.\n#### {a + b}"} for a, b in
            [(1, 2), (3, 4), (2, 2)]]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "results.json"
    report = ev.main(["--model", str(TINY), "--benchmarks", f"arith,{path}",
                      "--data-format", "gsm8k", "--limit", "4", "--n", "2", "--temperature", "0.6",
                      "--max-new-tokens", "24", "--batch-size", "3", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["args"]["n"] == 2 and saved["args"]["benchmarks"] == f"arith,{path}"
    assert list(saved["results"]) == ["arith", "mine"]
    mine = saved["results"]["mine"]
    assert mine["num_problems"] == 3
    assert [i["id"] for i in mine["items"]] == ["mine.jsonl:1", "mine.jsonl:2", "mine.jsonl:3"]
    assert [i["gold"] for i in mine["items"]] == ["3", "7", "4"]
    for result in saved["results"].values():
        assert all(len(i["responses"]) == len(i["rewards"]) == 2 for i in result["items"])
        assert all(r in (0.0, 1.0) for i in result["items"] for r in i["rewards"])
        total = sum(sum(i["rewards"]) for i in result["items"])
        assert result["avg"] == pytest.approx(total / (2 * len(result["items"])))
    figures = [100 * r["avg"] for r in saved["results"].values()]
    assert saved["avg"] == pytest.approx(sum(figures) / 200)
    printed = capsys.readouterr().out.splitlines()
    head, row = next((printed[i], printed[i + 1]) for i, line in enumerate(printed)
                     if line.startswith("Model"))
    assert head.split() == ["Model", "Arith", "mine", "Avg."]
    assert row.split() == [str(TINY)] + [f"{f:.1f}" for f in figures + [sum(figures) / 2]]


def test_errors_are_clear(tiny, monkeypatch, tmp_path):
    model, tokenizer = tiny
    # settings and benchmarks are checked before the model loads ("no/such-model" is never reached)
    with pytest.raises(ValueError, match=r"unknown or repeated benchmark\(s\) in "
                                         r"\['math500', 'aime2024'\]; valid: "
                                         r"\['arith', 'chain', 'aime24'"):
        ev.main(["--model", "no/such-model", "--benchmarks", "math500,aime2024"])
    with pytest.raises(ValueError, match=r"greedy decoding \(temperature 0\) gives 4 identical "
                                         r"responses; use n=1"):  # the default n=4
        ev.main(["--model", "no/such-model", "--benchmarks", "arith", "--temperature", "0"])
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(ImportError, match=r"'gsm8k'.*pip install datasets.*"
                                         r"--data-dir DIR holding gsm8k_test.jsonl"):
        ev.main(["--model", "no/such-model", "--benchmarks", "gsm8k", "--data-dir", "/nonexistent"])
    examples = tasks.arith_heldout(2)
    with pytest.raises(ValueError, match="identical responses; use n=1"):
        ev.evaluate(model, tokenizer, examples, n=4, temperature=0.0)
    bare = AutoTokenizer.from_pretrained(TINY)
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat template: use --template fewshot"):
        ev.evaluate(model, bare, examples, n=1, temperature=0.0, template="chat")
    with pytest.raises(ValueError, match="unknown template 'plain'"):
        ev.evaluate(model, tokenizer, examples, n=1, temperature=0.0, template="plain")
    model.save_pretrained(tmp_path)
    bare.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has no chat template: use --template fewshot"):
        ev.main(["--model", str(tmp_path), "--benchmarks", "arith", "--n", "1", "--temperature",
                 "0"])
