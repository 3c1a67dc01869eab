"""The shipped tiny models (tiny/qwen3-arith, tiny/qwen3-chain) and the script that regenerates
them."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import rewards
import tasks

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tiny" / "qwen3-arith"
CHAIN = ROOT / "tiny" / "qwen3-chain"
# sha256 of model.safetensors + tokenizer.json as `python tiny/build.py [--task chain]` wrote them
SHIPPED = {"qwen3-arith": "5301ddbbfda4c6710252494f5ff2bc22a90a4182aa836cdaef0ee46b025f7786",
           "qwen3-chain": "e74a39644b36a17dff16a4e41bccc4bd68e66a09ce9271ddc23481d53a8853a6"}


def test_shipped_model_loads_like_a_hub_model():
    tok = AutoTokenizer.from_pretrained(TINY)
    model = AutoModelForCausalLM.from_pretrained(TINY, attn_implementation="sdpa")
    assert type(model).__name__ == "Qwen3ForCausalLM" and model.config.num_hidden_layers == 4
    assert 4e5 <= sum(p.numel() for p in model.parameters()) <= 2e6
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    rendered = tok.apply_chat_template([{"role": "user", "content": "Compute 3+4*2-5."}],
                                       tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nCompute 3+4*2-5.<|im_end|>\n<|im_start|>assistant\n"
    ids = tok("-13", add_special_tokens=False)["input_ids"]
    assert [tok.decode([i]) for i in ids] == ["-", "1", "3"]  # digits one by one
    # it learned the task: greedy decoding of a hand example gives a verifiable trace
    enc = tok(rendered, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=40, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.endswith("\\boxed{6}")


def test_shipped_chain_model_writes_the_testbed_format():
    tok = AutoTokenizer.from_pretrained(CHAIN)
    model = AutoModelForCausalLM.from_pretrained(CHAIN, attn_implementation="sdpa")
    assert type(model).__name__ == "Qwen3ForCausalLM" and model.config.num_hidden_layers == 4
    ids = tok("-13", add_special_tokens=False)["input_ids"]
    assert [tok.decode([i]) for i in ids] == ["-", "1", "3"]
    example = tasks.chain_heldout(1)[0]
    rendered = tok.apply_chat_template([{"role": "user", "content": example.prompt}],
                                       tokenize=False, add_generation_prompt=True)
    enc = tok(rendered, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=256, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.startswith(f"We need {example.prompt[len('Compute '):-len(' mod 10.')]} mod 10.\n")
    assert rewards.boxed_span(text) is not None and len(out[0]) - enc["input_ids"].shape[1] > 60


def _digest(folder: Path) -> str:
    files = ("model.safetensors", "tokenizer.json")
    return hashlib.sha256(b"".join((folder / f).read_bytes() for f in files)).hexdigest()


def test_shipped_models_are_the_recorded_builds():
    """A rebuild that changes a shipped model (or its tokenizer) must update SHIPPED on purpose."""
    assert {name: _digest(ROOT / "tiny" / name) for name in SHIPPED} == SHIPPED


@pytest.mark.parametrize("task", ["arith", "chain"])
def test_build_script_is_deterministic(tmp_path, task):
    args = [sys.executable, str(ROOT / "tiny" / "build.py"), "--task", task, "--steps", "2",
            "--examples", "200", "--batch", "4"]
    for name in ("a", "b"):
        subprocess.run(args + ["--out", str(tmp_path / name)], check=True, capture_output=True,
                       timeout=600)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
