"""The GPU check in one command: speed and memory of FlowTracer's parts on Qwen3-4B/8B shapes.

    python benchmarks/gpu_check.py          # one 80 GB GPU, about 10 minutes
    python benchmarks/gpu_check.py --toy    # CPU, toy shapes and lengths (the test suite runs it)

No download: the models are built from configs/models/*.json with random weights (bf16 on CUDA).
Sections, each a table:
  1. generate      rollout.generate with and without the attention capture (same seed, forced
                   length), time ratio and peak memory, 4B and 8B;
  2. capture       capture.capture_attention against eager attention with output_attentions=True
                   (every layer's [N, H, T, T], then the middle-layer mean) at T = 1K, 4K, 8K: time
                   and peak memory; "OOM" is a result;
  3. flow          flow.throughput + the eq. (6) top-k on a micro-batch of T = 1K, 4K, 8K;
  4. credit share  capture + flow + top-k as a share of a step's generate + update at the 1k and 8k
                   presets' per-GPU settings, the paper's Table 6 (2.2% at 1K, 4.5% at 8K);
                   Qwen3-4B. A 1K step is timed whole; at 8K, generation is modelled from decode
                   steps timed at short and long context (time per step is linear in the context);
                   the update is forward + backward of the bf16 model with gradient checkpointing
                   over the step's per-GPU rows (the AdamW step itself is not timed);
  5. step          one real optimizer step (train.update with AdamW) of the Qwen3-8B shape cut to
                   its first layers, with the 1k preset's per-GPU settings, sampling and
                   evaluation included (benchmarks/memory_check.measure): peak memory per phase
                   against memory.py's plan.
Peak memory: torch.cuda.max_memory_allocated above what was allocated before (CUDA), the peak
resident set size (CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import capture  # noqa: E402
import config as config_module  # noqa: E402
import flow  # noqa: E402
import memory  # noqa: E402
import memory_check  # noqa: E402
import rollout  # noqa: E402

MB = 1 << 20
TOY_SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16)


@dataclasses.dataclass
class Sizes:
    """The lengths and batch sizes of one check (full on a GPU, toy on CPU)."""

    gen_sequences: int  # sequences per generate call in section 1
    gen_prompt: int
    gen_new: int
    lengths: tuple[int, ...]  # T of sections 2 and 3
    flow_rows: int  # micro-batch of section 3
    step_layers: int  # layers kept in section 5
    long_new: int  # the 8k preset's new tokens (section 4)
    decode_steps: int  # decode steps timed per context length (section 4, long)


FULL = Sizes(gen_sequences=16, gen_prompt=512, gen_new=512, lengths=(1024, 4096, 8192),
             flow_rows=8, step_layers=4, long_new=8192, decode_steps=32)
TOY = Sizes(gen_sequences=4, gen_prompt=16, gen_new=16, lengths=(32, 64), flow_rows=2,
            step_layers=2, long_new=64, decode_steps=4)


def model_config(name: str, toy: bool, layers: int | None = None):
    """The transformers config of configs/models/<name>.json (toy: tiny widths, same family)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(memory.MODEL_CONFIGS / f"{name}.json"))
    if toy:
        for k, v in TOY_SHAPE.items():
            setattr(cfg, k, v)
    if layers is not None:
        cfg.num_hidden_layers = layers
        cfg.layer_types = cfg.layer_types[:layers] if getattr(cfg, "layer_types", None) else None
    cfg._attn_implementation = "sdpa"
    return cfg


def build(cfg, device: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.generation_config.eos_token_id = 1
    return model.eval()


def timed(fn, device: str):
    """(seconds, peak MB above the start, result) of fn(); an out-of-memory error gives
    (None, None, "OOM")."""
    peak = memory_check.Peak(device == "cuda")
    peak.reset()
    start = time.perf_counter()
    try:
        result = fn()
    except torch.OutOfMemoryError:
        return None, None, "OOM"
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, peak.read() / MB, result


def prompts(count: int, length: int, vocab: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (count, length), generator=g)
    return [" ".join(f"t{i}" for i in row) for row in ids.tolist()]


def generate(model, tokenizer, texts: list[str], new: int, capture: bool, n: int = 1):
    torch.manual_seed(0)
    return rollout.generate(model, tokenizer, texts, n=n, max_new_tokens=new, min_new_tokens=new,
                            chat_template=False, capture=capture)


def _show(seconds, mb) -> str:
    if seconds is None:
        return f"{'OOM':>9s} {'OOM':>9s}"
    return f"{seconds:9.2f} {mb:9.0f}"


# --------------------------------------------------------------------------------------------------


def check_generate(model, tokenizer, name: str, sizes: Sizes, device: str) -> None:
    texts = prompts(sizes.gen_sequences, sizes.gen_prompt, model.config.vocab_size)
    plain = timed(lambda: generate(model, tokenizer, texts, sizes.gen_new, False), device)
    cap = timed(lambda: generate(model, tokenizer, texts, sizes.gen_new, True), device)
    same = torch.equal(plain[2].input_ids, cap[2].input_ids)
    print(f"{name:>14s} {len(texts):4d} x ({sizes.gen_prompt} + {sizes.gen_new}) "
          f"{_show(*plain[:2])} {_show(*cap[:2])} {cap[0] / plain[0]:7.3f}x  same tokens: {same}",
          flush=True)


def check_capture(model, name: str, sizes: Sizes, device: str) -> None:
    layers = capture.default_layers(model.config.num_hidden_layers)
    for t in sizes.lengths:
        ids = torch.randint(2, model.config.vocab_size, (1, t), device=device)
        mask = torch.ones_like(ids)
        cap = timed(lambda: capture.capture_attention(model, ids, mask), device)

        def eager():
            model.set_attn_implementation("eager")
            try:
                with torch.no_grad():
                    out = model(input_ids=ids, attention_mask=mask, output_attentions=True,
                                logits_to_keep=1)
                return torch.stack([out.attentions[i].float().mean(1) for i in layers]).mean(0)
            finally:
                model.set_attn_implementation("sdpa")

        ref = timed(eager, device)
        print(f"{name:>14s} {t:6d} {_show(*cap[:2])} {_show(*ref[:2])}", flush=True)
        del cap, ref
        if device == "cuda":
            torch.cuda.empty_cache()  # after an OOM, before the next length


def random_attention(rows: int, t: int, device: str) -> torch.Tensor:
    """[rows, T, T] causal softmax of random scores: an attention-like map (row = query)."""
    scores = torch.randn(rows, t, t, device=device)
    scores.masked_fill_(torch.ones(t, t, dtype=torch.bool, device=device).triu(1), float("-inf"))
    return scores.softmax(-1)


def flow_credit(attn: torch.Tensor, prompt: int, answer: int) -> torch.Tensor:
    """eqs. (1)-(6) as flow.flow_credit runs them: throughput, then the top 40%."""
    rows, t, _ = attn.shape
    positions = torch.arange(t, device=attn.device).expand(rows, t)
    prompt_mask, answer_mask = positions < prompt, positions >= t - answer
    tau = flow.throughput(flow.influence_graph(attn), prompt_mask, answer_mask)
    chosen = flow.top_k_mask(tau, ~prompt_mask)
    return flow.credit_weights(chosen)


def check_flow(sizes: Sizes, device: str) -> None:
    for t in sizes.lengths:
        attn = random_attention(sizes.flow_rows, t, device)
        seconds, mb, _ = timed(lambda a=attn, t=t: flow_credit(a, t // 8, 8), device)
        print(f"{sizes.flow_rows:6d} {t:6d} {seconds:9.3f} {mb:9.0f}", flush=True)
        del attn


def update_seconds(model, rows: int, t: int, micro: int, device: str) -> float:
    """forward + backward (chunked log-probs, gradient checkpointing) over `rows` sequences of T."""
    import grpo

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    start = time.perf_counter()
    for first in range(0, rows, micro):
        ids = torch.randint(2, model.config.vocab_size, (min(micro, rows - first), t),
                            device=device)
        grpo.token_logprobs(model, ids, torch.ones_like(ids)).mean().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing_disable()
    model.eval()
    return time.perf_counter() - start


def check_credit_share(model, tokenizer, preset: str, sizes: Sizes, device: str,
                       toy: bool) -> None:
    """Table 6: (capture + flow + top-k) / (generate + update), per GPU of an 8-GPU run."""
    cfg = config_module.parse_args(["--preset", preset])
    new = sizes.gen_new if "1k" in preset else sizes.long_new
    if toy:
        cfg = dataclasses.replace(cfg, micro_batch=2, generation_batch=1, group_size=2)
    prompt = sizes.gen_prompt
    t = prompt + new
    per_gpu = max(1, cfg.prompts_per_step // 8) * cfg.group_size  # sequences per GPU and step
    batch = min(per_gpu, (cfg.generation_batch or per_gpu) * cfg.group_size)
    calls = per_gpu // batch
    texts = prompts(batch // cfg.group_size, prompt, model.config.vocab_size)
    if "1k" in preset:
        plain = timed(lambda: generate(model, tokenizer, texts, new, False, cfg.group_size),
                      device)[0] * calls
        cap = timed(lambda: generate(model, tokenizer, texts, new, True, cfg.group_size),
                    device)[0] * calls
    else:
        plain, cap = (_modelled_generation(model, tokenizer, texts, new, c, cfg.group_size,
                                           sizes, device) * calls for c in (False, True))
    attn = random_attention(min(cfg.micro_batch, batch), t, device)
    solve = timed(lambda a=attn: flow_credit(a, prompt, 8), device)[0] * (per_gpu / len(attn))
    del attn
    update = update_seconds(model, per_gpu, t, cfg.micro_batch, device)
    credit = (cap - plain) + solve
    share = credit / (cap + solve + update)
    print(f"{preset:>20s} {per_gpu:5d} x {t:5d} {plain:9.1f} {cap - plain:9.1f} {solve:9.2f} "
          f"{update:9.1f} {share:8.1%}", flush=True)


def _modelled_generation(model, tokenizer, texts, new: int, capture: bool, n: int, sizes: Sizes,
                         device: str) -> float:
    """Seconds of a `new`-token generate: decode-step time measured at a short and at the full
    context (sizes.decode_steps each, after a prefill), extended linearly in the context."""
    steps = sizes.decode_steps
    short = texts
    long = [t + " t5" * (new - steps) for t in texts]  # a prompt that fills the context
    per_step = []
    for batch in (short, long):
        t_prefill = timed(lambda: generate(model, tokenizer, batch, 1, capture, n), device)[0]
        t_all = timed(lambda: generate(model, tokenizer, batch, steps + 1, capture, n),
                      device)[0]
        per_step.append((t_all - t_prefill) / steps)
    # step time a + b * context, summed over the `new` steps from the prompt's end
    first, last = per_step
    return new * (first + last) / 2 + timed(lambda: generate(model, tokenizer, short, 1, capture,
                                                             n), device)[0]


def check_step(sizes: Sizes, device: str, toy: bool) -> None:
    """memory_check.measure on the Qwen3-8B shape cut to its first layers: the 1k preset's
    per-GPU settings, one process."""
    cfg = config_module.parse_args(["--preset", "qwen3-8b-math-1k"])
    run = dict(micro_batch=cfg.micro_batch, generation_batch=cfg.generation_batch,
               group_size=cfg.group_size, bf16=cfg.bf16, gradient_checkpointing=True)
    prompt, new = cfg.plan_prompt_tokens, cfg.max_new_tokens
    if toy:
        run.update(micro_batch=2, generation_batch=1, group_size=2, bf16=False)
        prompt, new = sizes.gen_prompt, sizes.gen_new
    shape = model_config("Qwen3-8B-Base", toy, sizes.step_layers).to_diff_dict()
    shape = {k: v for k, v in shape.items() if k in _QWEN3_FIELDS}
    try:
        result = memory_check.measure(shape, run, prompt, new, "ddp")
    except torch.OutOfMemoryError as e:  # a result too: the plan under-predicted
        print(f"OOM: {e}", flush=True)
        return
    for phase, (predicted, measured) in result.items():
        print(memory_check.table_row("qwen3-8b-cut", phase, predicted, measured), flush=True)


_QWEN3_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings",
                 "rope_theta", "rms_norm_eps")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy", action="store_true", help="toy shapes and lengths (CPU)")
    ap.add_argument("--sections", nargs="*", default=["generate", "capture", "flow", "credit",
                                                      "step"])
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    toy = args.toy or device == "cpu"
    sizes = TOY if toy else FULL
    torch.set_num_threads(1 if toy else torch.get_num_threads())
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}; "
          f"{'toy shapes' if toy else 'Qwen3-4B/8B shapes, random weights, bf16'}", flush=True)
    start = time.perf_counter()
    tokenizers = {}
    if "generate" in args.sections or "capture" in args.sections:
        print("\n1./2. model, generate: seqs x (prompt + new), plain s / MB, capture s / MB, "
              "ratio; capture_attention s / MB vs eager s / MB at T")
        for name in ("Qwen3-4B-Base", "Qwen3-8B-Base"):
            model = build(model_config(name, toy), device)
            tokenizers.setdefault(model.config.vocab_size,
                                  memory_check.word_tokenizer(model.config.vocab_size))
            tokenizer = tokenizers[model.config.vocab_size]
            if "generate" in args.sections:
                check_generate(model, tokenizer, name, sizes, device)
            if "capture" in args.sections:
                check_capture(model, name, sizes, device)
            if name == "Qwen3-4B-Base" and "credit" in args.sections:
                print("\n4. credit share, per GPU of 8: preset, seqs x T, generate s, capture "
                      "extra s, flow + top-k s, update s, share")
                for preset in ("qwen3-4b-math-1k", "qwen3-4b-math-8k"):
                    check_credit_share(model, tokenizer, preset, sizes, device, toy)
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
    if "flow" in args.sections:
        print("\n3. flow solve + top-k: rows, T, seconds, peak MB")
        check_flow(sizes, device)
    if "step" in args.sections:
        print(f"\n5. one optimizer step, Qwen3-8B shape cut to {sizes.step_layers} layers, "
              "1k preset per-GPU settings: phase, plan MB, measured MB, measured/plan")
        check_step(sizes, device, toy)
    print(f"\ntotal {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
