"""The shipped tiny model (tiny/qwen3-arith) and the script that regenerates it."""

import hashlib
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tiny" / "qwen3-arith"


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
    response = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert response.endswith("\\boxed{6}")


def _digest(folder: Path) -> str:
    files = ("model.safetensors", "tokenizer.json")
    return hashlib.sha256(b"".join((folder / f).read_bytes() for f in files)).hexdigest()


def test_build_script_is_deterministic(tmp_path):
    args = [sys.executable, str(ROOT / "tiny" / "build.py"), "--steps", "3", "--examples", "300",
            "--batch", "8"]
    for name in ("a", "b"):
        subprocess.run(args + ["--out", str(tmp_path / name)], check=True, capture_output=True,
                       timeout=600)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
