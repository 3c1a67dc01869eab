"""How close is flow.throughput to the cost floor of its two triangular solves?

For a batch of B random causal attention maps of length T, prints the best-of-N time of
  floor:     one copy of W into the solve dtype + two torch.linalg.solve_triangular calls on
             [B, T, T]
  fused:     flow.throughput (eqs. 2-4: one copy, two solves, vector work)
  stepwise:  potential -> reweight -> forward_flow, the straightforward version that materialises W'
and the ratios to the floor. Figures only, no assertions. Usage:

    python benchmarks/flow_bench.py                      # CPU: B = 4, T in 512 1024 2048
    python benchmarks/flow_bench.py --device cuda --T 1024 2048 4096 8192
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import flow  # noqa: E402


def random_attention(B: int, T: int, device: str) -> torch.Tensor:
    """[B, T, T] float32 causal softmax attention with an attention-sink column."""
    logits = torch.randn(B, T, T, device=device)
    logits[..., 0] += 3.0
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    return logits.masked_fill_(~causal, float("-inf")).softmax(-1)


def timed(fn, device: str, repeats: int) -> float:
    """Best wall time in ms over `repeats` runs after one warm-up (the minimum is the least
    disturbed by other processes sharing the machine)."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", nargs="+", default=["float64", "float32"],
                    choices=["float64", "float32"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    if args.device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}   torch {torch.__version__}   B = {args.B}")
    print(f"{'dtype':>8} {'T':>6} {'floor ms':>10} {'fused ms':>10} {'stepwise ms':>12} "
          f"{'fused/floor':>12} {'stepwise/floor':>15}")
    for dt_name in args.dtype:
        dtype = getattr(torch, dt_name)
        for T in args.T:
            torch.manual_seed(0)
            W = flow.influence_graph(random_attention(args.B, T, args.device))  # [B, T, T] float32
            prompt = torch.zeros(args.B, T, dtype=torch.bool, device=args.device)
            prompt[:, : T // 8] = True
            answer = torch.zeros_like(prompt)
            answer[:, T - 16 : T - 8] = True
            rhs = torch.rand(args.B, T, 1, device=args.device, dtype=dtype)

            def floor():
                M = W.to(dtype, copy=True)
                torch.linalg.solve_triangular(M, rhs, upper=True, unitriangular=True)
                torch.linalg.solve_triangular(M.mT, rhs, upper=False, unitriangular=True)

            def fused():
                flow.throughput(W, prompt, answer, dtype=dtype)

            def stepwise():
                h = flow.potential(W, answer, dtype=dtype)
                Wp = flow.reweight(W, h, answer)
                flow.forward_flow(Wp, prompt)

            t_floor = timed(floor, args.device, args.repeats)
            t_fused = timed(fused, args.device, args.repeats)
            t_step = timed(stepwise, args.device, args.repeats)
            print(
                f"{dt_name:>8} {T:>6} {t_floor:>10.1f} {t_fused:>10.1f} {t_step:>12.1f} "
                f"{t_fused / t_floor:>12.2f} {t_step / t_floor:>15.2f}",
                flush=True,
            )
            del W


if __name__ == "__main__":
    main()
