"""Peak memory and time of attention capture vs eager output_attentions, plain forward, generate.

Rows per sequence length T (batch N, second sequence left-padded by T/8):
  eager   : eager forward with output_attentions=True (every layer's [N, H, T, T]), then the
            middle-layer mean
  capture : capture.capture_attention (one float32 [N, T, T] buffer; it stops after the last
            selected layer)
  forward : plain SDPA forward of the whole model (use_cache=False, last position's logits only)
  gen     : rollout.generate, prompt T/2 tokens + T/2 new tokens, capture=False
  gen+cap : the same with capture=True (same seed)
  gen-ab  : time ratio gen+cap / gen, best of --repeats alternating runs in one process (the fair
            comparison on a shared machine; the gen and gen+cap rows are single runs, for memory)
Each row runs in a fresh subprocess. Memory on CPU: peak RSS of the subprocess minus its RSS peak
after setup (model + inputs built); on CUDA: torch.cuda.max_memory_allocated minus the allocation
after setup. Time: the best of --repeats runs after one untimed warm-up (gen, gen+cap: one run); on
CPU it is the process's CPU time (one thread), which the other jobs of a shared machine disturb far
less than wall time; on CUDA wall time.

    python benchmarks/attention_bench.py                   # CPU: small Qwen3, T in 512 1024 2048
    python benchmarks/attention_bench.py --model qwen3-4b  # GPU: Qwen3-4B shape, bf16, T 1024 8192

The device is auto-detected (override with --device).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    # a small Qwen3 that finishes on a shared CPU in minutes
    "small": dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=32),
    # Qwen3-4B's shape with random weights
    "qwen3-4b": dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728,
                     num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, tie_word_embeddings=True, rope_theta=1_000_000.0),
}
OPS = ["eager", "capture", "forward", "gen", "gen+cap", "gen-ab"]


def build(model_name: str, dtype: torch.dtype, device: str, max_len: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**SHAPES[model_name], max_position_embeddings=max(max_len, 4096))
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.set_attn_implementation("sdpa")
    return model.eval()


def word_tokenizer(vocab_size: int):
    """Word-level tokenizer 'w0 w1 ...' so that a prompt of P words is exactly P tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def worker(op: str, model_name: str, t: int, n: int, dtype: torch.dtype, device: str,
           repeats: int) -> dict:
    """Run one op in this (fresh) process; return its time and extra peak memory."""
    from capture import capture_attention, default_layers
    from rollout import generate

    model = build(model_name, dtype, device, t)
    layers = default_layers(model.config.num_hidden_layers)
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, model.config.vocab_size, (n, t), generator=g).to(device)
    attention_mask = torch.ones(n, t, dtype=torch.long, device=device)
    attention_mask[1:, : t // 8] = 0  # left padding
    tokenizer = word_tokenizer(model.config.vocab_size)
    prompt = " ".join(f"w{i}" for i in input_ids[0, : t // 2].tolist())

    def run(capture: bool):  # capture: for the generate ops
        with torch.no_grad():
            if op == "eager":
                model.set_attn_implementation("eager")
                out = model(input_ids=input_ids, attention_mask=attention_mask,
                            output_attentions=True, use_cache=False, logits_to_keep=1)
                torch.stack([out.attentions[layer] for layer in layers]).float().mean(dim=(0, 2))
                model.set_attn_implementation("sdpa")
            elif op == "capture":
                capture_attention(model, input_ids, attention_mask)
            elif op == "forward":
                model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                      logits_to_keep=1)
            else:
                torch.manual_seed(0)
                generate(model, tokenizer, [prompt], n=n, max_new_tokens=t // 2,
                         min_new_tokens=t // 2, capture=capture, chat_template=False)

    clock = time.perf_counter if device == "cuda" else time.process_time

    # time only: capture off and on alternately in one process (fair on a shared machine)
    if op == "gen-ab":
        best = {}
        for _ in range(repeats):
            for capture in (False, True):
                start = clock()
                run(capture)
                if device == "cuda":
                    torch.cuda.synchronize()
                best[capture] = min(best.get(capture, float("inf")), clock() - start)
        ratio = best[True] / best[False]
        return dict(op=op, t=t, seconds=None, extra_mib=None, ratio=ratio,
                    note=f"gen+cap/gen = {ratio:.3f}x")
    capture = op == "gen+cap"

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = peak_bytes(device)
    times = []
    try:
        if not op.startswith("gen"):
            run(capture)  # warm-up, not timed (its memory peak counts: the same as a timed run's)
        for _ in range(1 if op.startswith("gen") else repeats):
            start = clock()
            run(capture)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(clock() - start)
    except torch.OutOfMemoryError:
        return dict(op=op, t=t, seconds=None, extra_mib=None, note="OOM")
    extra_mib = (peak_bytes(device) - base) / 2**20
    return dict(op=op, t=t, seconds=min(times), extra_mib=extra_mib, note="")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=sorted(SHAPES), default=None,
                        help="default: small on CPU, qwen3-4b on CUDA")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="default: 512 1024 2048 (CPU), 1024 8192")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: float32 CPU, bf16 GPU")
    parser.add_argument("--ops", nargs="+", choices=OPS, default=OPS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("OP", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    gpu = args.device == "cuda"
    model_name = args.model or ("qwen3-4b" if gpu else "small")
    dtype_name = args.dtype or ("bfloat16" if gpu else "float32")
    dtype = getattr(torch, dtype_name)

    if args.worker:
        if not gpu:
            torch.set_num_threads(1)  # a shared CPU
        op, t = args.worker[0], int(args.worker[1])
        print(json.dumps(worker(op, model_name, t, args.batch, dtype, args.device, args.repeats)))
        return

    lengths = args.lengths or ([1024, 8192] if gpu else [512, 1024, 2048])
    shape = SHAPES[model_name]
    print(f"model={model_name} {shape} dtype={dtype_name} device={args.device} "
          f"batch N={args.batch} torch={torch.__version__} threads={1 if not gpu else 'n/a'}")
    print(f"{'T':>6} {'op':>8} {'time s':>9} {'extra MiB':>10} {'N*T*T*4 MiB':>12}  note")
    for t in lengths:
        rows = {}
        for op in args.ops:
            cmd = [sys.executable, __file__, "--worker", op, str(t), "--device", args.device,
                   "--model", model_name, "--dtype", dtype_name, "--batch", str(args.batch),
                   "--repeats", str(args.repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                row = dict(op=op, t=t, seconds=None, extra_mib=None,
                           note=f"failed: {proc.stderr.strip()[-200:]}")
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows[op] = row
            buffer_mib = args.batch * t * t * 4 / 2**20
            seconds = "-" if row["seconds"] is None else f"{row['seconds']:.3f}"
            extra = "-" if row["extra_mib"] is None else f"{row['extra_mib']:.0f}"
            print(f"{t:>6} {op:>8} {seconds:>9} {extra:>10} {buffer_mib:>12.0f}  {row['note']}",
                  flush=True)
        ratios = []
        for a, b in (("capture", "forward"), ("eager", "capture")):
            if rows.get(a, {}).get("seconds") and rows.get(b, {}).get("seconds"):
                ratios.append(f"{a}/{b} time {rows[a]['seconds'] / rows[b]['seconds']:.2f}x")
        if rows.get("gen-ab", {}).get("ratio"):
            ratios.append(f"gen+cap/gen time {rows['gen-ab']['ratio']:.3f}x (interleaved)")
        print(f"{t:>6}   ratios: " + ", ".join(ratios), flush=True)


if __name__ == "__main__":
    main()
