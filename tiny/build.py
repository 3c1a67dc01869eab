"""Build the shipped tiny models deterministically: the embedded default and the credit testbed.

    python tiny/build.py                # writes tiny/qwen3-arith/ (2-3 minutes on 2 CPU cores)
    python tiny/build.py --task chain   # writes tiny/qwen3-chain/, the testbed of docs/testbed.md

1. A tokenizer trained on the spot with the `tokenizers` library (BPE over the task's text; digits
   and punctuation stay single tokens, like Qwen's), with a Qwen-shaped chat template.
2. A tiny Qwen3 model from a transformers config (4 layers, so the middle-layer range L/3..2L/3 is a
   real choice).
3. A short supervised warm start on step-by-step traces of the task (RECIPES), whose teacher mixes
   a right and a wrong procedure: for `arith` it ignores operator precedence on a share of the
   problems (tasks.ArithmeticTask), for `chain` it is careless at a share of the traps
   (tasks.ChainTask). RL has a wrong strategy to unlearn.
4. save_pretrained: config.json, model.safetensors, tokenizer.json, tokenizer_config.json with the
   chat template. train.py loads it with AutoModelForCausalLM.from_pretrained, as it loads Qwen3.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import tasks  # noqa: E402

HERE = Path(__file__).resolve().parent
SPECIAL = {"bos": "<|endoftext|>", "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": "<unk>",
           "start": "<|im_start|>"}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def sft_examples(n: int, seed: int, wrong_share: float = 0.4) -> list[tuple[str, str]]:
    """(prompt, response) pairs; on problems where precedence matters, `wrong_share` of the traces
    reduce left to right.
    """
    task, rng = tasks.ArithmeticTask(), random.Random(seed)
    out = []
    for _ in range(n):
        numbers, ops = task.sample(rng)
        wrong = tasks.precedence_matters(ops) and rng.random() < wrong_share
        response = tasks.worked_solution(numbers, ops, precedence=not wrong)
        out.append((task.problem(numbers, ops).prompt, response))
    return out


def chain_sft_examples(n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, response) pairs of the testbed: tasks.ChainTask's teacher, careless at a share of
    the traps that depends on the operator before the product, with random filler lines."""
    task, rng = tasks.ChainTask(), random.Random(seed)
    out = []
    for _ in range(n):
        numbers, ops = task.sample(rng)
        out.append((task.problem(numbers, ops).prompt, task.solution(numbers, ops, rng)))
    return out


@dataclass(frozen=True)
class Recipe:
    """What differs between the shipped tiny models; the model shape and optimiser are shared."""

    sft: Callable[..., list[tuple[str, str]]]  # (n, seed, **teacher) -> (prompt, response) pairs
    vocab_size: int
    examples: int  # default --examples
    steps: int  # default --steps
    batch: int  # default --batch


RECIPES = {
    "arith": Recipe(sft_examples, vocab_size=64, examples=20000, steps=600, batch=64),
    # 5x longer sequences than arith: half the batch keeps the build within ~30 minutes on 2 cores
    "chain": Recipe(chain_sft_examples, vocab_size=96, examples=20000, steps=800, batch=32),
}


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk"]))
    # digits one by one, punctuation isolated, so an answer like -13 is the tokens "-", "1", "3"
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.Split(Regex(r"[^\w\s]"), "isolated")]
    )
    tok.decoder = decoders.Fuse()
    specials = [SPECIAL["bos"], SPECIAL["eos"], SPECIAL["start"], SPECIAL["unk"]]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL["bos"],
        eos_token=SPECIAL["eos"],
        pad_token=SPECIAL["pad"],
        unk_token=SPECIAL["unk"],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=512,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen3ForCausalLM(config)


def encode(tokenizer, examples: list[tuple[str, str]]
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask, and labels that train only on the response (-100
    elsewhere)."""
    rows, labels = [], []
    for prompt, response in examples:
        p = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                          add_generation_prompt=True, tokenize=True)
        p = p["input_ids"] if isinstance(p, dict) or hasattr(p, "keys") else p
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p + r)
        labels.append([-100] * len(p) + r)
    T = max(map(len, rows))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    lab = torch.tensor([x + [-100] * (T - len(x)) for x in labels])
    return ids, mask, lab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="arith", choices=sorted(RECIPES), help="the model to build")
    ap.add_argument("--out", type=Path, help="default: tiny/qwen3-<task>")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--examples", type=int, help="default: the task's recipe")
    ap.add_argument("--wrong-share", type=float, help="arith only: the teacher's wrong share (0.4)")
    ap.add_argument("--steps", type=int, help="default: the task's recipe")
    ap.add_argument("--batch", type=int, help="default: the task's recipe")
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()
    recipe = RECIPES[args.task]
    teacher = {} if args.wrong_share is None else {"wrong_share": args.wrong_share}
    if teacher and args.task != "arith":
        ap.error("--wrong-share applies to --task arith; chain's is tasks.ChainTask.wrong_after")
    folder = args.out or HERE / f"qwen3-{args.task}"
    steps, batch = args.steps or recipe.steps, args.batch or recipe.batch

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    examples = recipe.sft(args.examples or recipe.examples, args.seed, **teacher)
    texts = [f"user\n{p}\nassistant\n{r}" for p, r in examples]
    tokenizer = build_tokenizer(texts, recipe.vocab_size)
    model = build_model(tokenizer, args.seed)
    size = sum(p.numel() for p in model.parameters())
    print(f"vocab {len(tokenizer)}, parameters {size / 1e6:.2f}M")

    ids, mask, labels = encode(tokenizer, examples)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps,
                                                pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(ids), (batch,), generator=gen)
        T = int(mask[idx].sum(-1).max())
        out = model(input_ids=ids[idx, :T], attention_mask=mask[idx, :T], labels=labels[idx, :T])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {out.loss.item():.4f}  {time.time() - t0:6.1f}s",
                  flush=True)

    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    print(f"saved to {folder}")


if __name__ == "__main__":
    main()
