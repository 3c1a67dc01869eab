"""analysis/common.py: prompts from --prompt, a JSONL file (bad lines named) or a benchmark, sampled
with a seed (Table 1's protocol); the chat layouts; the masks of a teacher-forced batch on the
shipped tiny model."""

import json
import types
from pathlib import Path

import pytest
import torch

from analysis.common import (boxed_rows, chat_text, generation_prompts, read_prompts,
                             require_math, split_instruction, teacher_forced)
from dataspec import MATH_INSTRUCTION, Example
from eval import load_model

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "benchmarks"


def test_read_prompts_from_jsonl(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "What is 2+2?", "gold": "4"}\n\n{"prompt": "Name a prime."}\n')
    ex = read_prompts(None, str(f), problems=10, seed=0)
    assert [(e.prompt, e.gold) for e in ex] == [("What is 2+2?", "4"), ("Name a prime.", None)]
    assert read_prompts("Hi", None, 5, 0)[0].prompt == "Hi"
    f.write_text('{"prompt": "ok"}\n{"question": "no prompt field"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2"):
        read_prompts(None, str(f), 10, 0)


def test_read_prompts_is_a_seeded_random_sample(tmp_path):
    """App. E.1: "we randomly sampled 500 instances" -- not the first N; the same seed, the same
    sample, in file order."""
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"q{i}", "gold": str(i)}) + "\n"
                         for i in range(50)))
    a = [e.prompt for e in read_prompts(None, str(f), 5, seed=0)]
    assert a == [e.prompt for e in read_prompts(None, str(f), 5, seed=0)]
    assert a != [f"q{i}" for i in range(5)]                             # not the first five
    assert a != [e.prompt for e in read_prompts(None, str(f), 5, seed=1)]
    assert sorted(a, key=lambda p: int(p[1:])) == a                     # in file order
    assert len(read_prompts(None, str(f), 500, seed=0)) == 50           # all, when fewer
    with pytest.raises(ValueError, match="--problems"):
        read_prompts(None, str(f), 0, seed=0)


def test_read_prompts_from_a_benchmark_file(tmp_path):
    """A benchmark-format JSONL (here GSM8K's rows) is read by data.py: gold from "#### 18", the
    instruction appended."""
    f = tmp_path / "mine.jsonl"
    rows = [{"question": f"Q{i}?", "answer": f"work\n#### {i}"} for i in range(3)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ex = read_prompts(None, str(f), 10, 0, data_format="gsm8k")
    assert [(e.prompt, e.gold) for e in ex] == [(f"Q{i}?\n{MATH_INSTRUCTION}", str(i))
                                                for i in range(3)]
    (tmp_path / "gsm8k_small.jsonl").write_text(f.read_text())         # format from the file name
    assert read_prompts(None, str(tmp_path / "gsm8k_small.jsonl"), 10, 0) == [
        Example(e.prompt, e.gold, "math", e.id.replace("mine", "gsm8k_small")) for e in ex]
    with pytest.raises(ValueError, match="unknown benchmark"):
        read_prompts(None, "gsm9k", 10, 0)


def test_read_prompts_under_train_pys_data_flags(tmp_path):
    """--data-fields maps your own keys, as for train.py's --data; a file no format reads and
    without "prompt" names the flags that would read it."""
    f = tmp_path / "my.jsonl"
    f.write_text('{"question": "What is 2+2?", "final": "4"}\n{"question": "3+3?", "final": "6"}\n')
    ex = read_prompts(None, str(f), 10, 0, data_fields="prompt=question,gold=final")
    assert [(e.prompt, e.gold, e.id) for e in ex] == [
        (f"What is 2+2?\n{MATH_INSTRUCTION}", "4", "my.jsonl:1"),
        (f"3+3?\n{MATH_INSTRUCTION}", "6", "my.jsonl:2")]
    with pytest.raises(ValueError, match=r"my.jsonl: cannot guess the format .*--data-fields"):
        read_prompts(None, str(f), 10, 0)
    with pytest.raises(ValueError, match=r"my.jsonl:2: missing field 'question'"):
        f.write_text('{"question": "ok", "final": "1"}\n{"query": "no question"}\n')
        read_prompts(None, str(f), 10, 0, data_fields="prompt=question,gold=final")


@pytest.mark.skipif(not (BENCH / "gsm8k_test.jsonl").is_file(),
                    reason="needs ../shared/benchmarks")
def test_read_prompts_gsm8k_by_name():
    """--prompts gsm8k --data-dir ../shared/benchmarks: Table 1's data, sampled."""
    ex = read_prompts(None, "gsm8k", 500, seed=0, data_dir=str(BENCH))
    assert len(ex) == 500 and len({e.id for e in ex}) == 500
    assert all(e.kind == "math" and e.prompt.endswith(MATH_INSTRUCTION) for e in ex)
    assert [e.id for e in ex] != [f"gsm8k_test.jsonl:{i}" for i in range(1, 501)]


def test_require_math():
    require_math([Example("p", "1")], "intervene")
    with pytest.raises(ValueError, match="intervene.*countdown"):
        require_math([Example("p", {"numbers": [1], "target": 1}, kind="countdown")], "intervene")


def test_prompt_setups():
    """user: the prompt as the user message (training's layout); system: App. E.1's, the
    instruction as the system message and the question alone as the user's."""
    _, tok = load_model(str(ROOT / "tiny" / "qwen3-arith"))
    prompt = f"What is 2+2?\n{MATH_INSTRUCTION}"
    assert split_instruction(prompt) == ("What is 2+2?", MATH_INSTRUCTION)
    assert split_instruction("Compute 3+4.") == ("Compute 3+4.", None)
    assert split_instruction("Q?\n(A) 1\nPlease reason step by step, and put the letter") == (
        "Q?\n(A) 1", "Please reason step by step, and put the letter")
    assert chat_text(tok, prompt) == (f"<|im_start|>user\n{prompt}<|im_end|>\n"
                                      "<|im_start|>assistant\n")
    system = (f"<|im_start|>system\n{MATH_INSTRUCTION}<|im_end|>\n"
              "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert chat_text(tok, prompt, "system") == system
    # a prompt without the instruction gets the paper's one as the system message
    assert chat_text(tok, "What is 2+2?", "system") == system
    assert generation_prompts(tok, [prompt], "system") == [system]     # this tokenizer adds no BOS
    with pytest.raises(ValueError, match="prompt setup"):
        chat_text(tok, prompt, "assistant")


def test_generation_prompts_do_not_double_the_bos():
    """A template that writes the BOS, for a tokenizer that adds one itself (Llama 3): once."""
    class Tok:
        bos_token, bos_token_id, chat_template = "<s>", 1, "t"

        def __call__(self, text):
            return {"input_ids": [1, 9]}

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "<s>" + messages[-1]["content"]

    assert generation_prompts(Tok(), ["hi"]) == ["hi"]


def test_boxed_rows_ignore_a_fallback_answer_region():
    """Only responses with a complete \\boxed{} count, whatever region rollout fell back to."""
    ro = types.SimpleNamespace(texts=["1+1=2\n\\boxed{2}", "1+1=2\n\\boxed{2", "2", ""],
                               answer_mask=torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]]).bool())
    assert boxed_rows(ro).tolist() == [True, False, False, False]


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
