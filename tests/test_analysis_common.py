"""analysis/common.py: prompts from --prompt or a JSONL file (bad lines named), and the masks of a
teacher-forced batch on the shipped tiny model."""

from pathlib import Path

import pytest
import torch

from analysis.common import read_prompts, teacher_forced
from eval import load_model

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def test_read_prompts_from_jsonl(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "What is 2+2?", "gold": "4"}\n\n{"prompt": "Name a prime."}\n')
    ex = read_prompts(None, str(f), problems=10, seed=0)
    assert [(e.prompt, e.gold) for e in ex] == [("What is 2+2?", "4"), ("Name a prime.", None)]
    assert read_prompts("Hi", None, 5, 0)[0].prompt == "Hi"
    f.write_text('{"prompt": "ok"}\n{"question": "no prompt field"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2"):
        read_prompts(None, str(f), 10, 0)


def test_teacher_forced_masks():
    model, tok = load_model(str(ROOT / "tiny" / "qwen3-arith"))
    ro = teacher_forced(model, tok, ["Compute 4*2.", "Compute 3+4*2-5."],
                        ["4*2=8\n\\boxed{8}", "4*2=8\n\\boxed{x=16}"])
    ids = ro.input_ids.cpu()
    for r, inside in ((0, "8"), (1, "x=16")):
        assert tok.decode(ids[r, ro.answer_mask[r]]) == inside
        assert tok.decode(ids[r, ro.response_mask[r]], skip_special_tokens=True).endswith("}")
        assert ids[r, ro.response_mask[r]][-1] == tok.eos_token_id
    assert not (ro.prompt_mask & ro.response_mask).any()
    assert ro.attn.shape == (2, ids.shape[1], ids.shape[1])
    assert ro.attn[0, ~ro.attention_mask[0].bool()].abs().sum() == 0  # padding rows are 0
