"""Peak memory of grpo.token_logprobs (chunked log_softmax + gather) against the naive full
log_softmax.

A small random Qwen3 with a big vocabulary, so the [B, T, V] logits dominate memory. Each
(variant, mode) runs in a fresh subprocess so peaks don't mix:
  naive    model(...).logits.float().log_softmax(-1).gather(...)   materialises [B, T, V] twice
  chunked  grpo.token_logprobs(..., chunk_size=C)                   [B, C, V] at a time,
                                                                    checkpointed
  modes: "no_grad" (old / reference log-probs) and "train" (forward + backward of sum(logp)).
Peak memory: on CUDA torch.cuda.max_memory_allocated; on CPU the rise of the process's peak resident
set (ru_maxrss) over its resident size just before the measured call. The CPU children run with
glibc's mmap threshold fixed at 1 MiB (MALLOC_MMAP_THRESHOLD_): with the default dynamic threshold,
freed blocks below 32 MiB stay in the heap and the RSS peak measures allocator slack (chunk 32 then
"costs" 900 MiB, not 170).

    python benchmarks/logprob_bench.py              # V=65536, T=1024, B=2 on CPU: about a minute
    python benchmarks/logprob_bench.py --vocab 151936 --seq 2048 --batch 4 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _measure(args: argparse.Namespace) -> dict:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    import grpo

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    cfg = Qwen3Config(vocab_size=args.vocab, hidden_size=args.hidden,
                      intermediate_size=2 * args.hidden, num_hidden_layers=args.layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=args.hidden // 4,
                      max_position_embeddings=args.seq, tie_word_embeddings=False)
    model = Qwen3ForCausalLM(cfg).to(args.device, dtype)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), device=args.device)
    mask = torch.ones_like(ids)

    def naive():
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        return logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)

    def chunked():
        return grpo.token_logprobs(model, ids, mask, chunk_size=args.chunk)

    fn = {"naive": naive, "chunked": chunked}[args.variant]
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mib()
    t0 = time.perf_counter()
    if args.mode == "train":
        fn().sum().backward()
    else:
        with torch.no_grad():
            fn()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mib": peak - base, "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variant", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["no_grad", "train"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:                                   # child process: one measurement, as JSON
        print(json.dumps(_measure(args)))
        return

    logits_mib = args.batch * args.seq * args.vocab * 4 / 2**20
    print(f"B={args.batch} T={args.seq} V={args.vocab} hidden={args.hidden} layers={args.layers} "
          f"chunk={args.chunk} device={args.device} dtype={args.dtype}; "
          f"one float32 [B, T, V] tensor = {logits_mib:.0f} MiB")
    print(f"{'mode':8s} {'variant':8s} {'peak MiB':>9s} {'seconds':>8s}")
    for mode in ("no_grad", "train"):
        for variant in ("naive", "chunked"):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant, "--mode", mode]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{mode:8s} {variant:8s} {r['peak_mib']:9.0f} {r['seconds']:8.2f}")


if __name__ == "__main__":
    main()
