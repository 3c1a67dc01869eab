"""Held-out accuracy of the embedded default over seeds, per credit strategy (the README's table).

    python benchmarks/credit_seeds.py --credits flow uniform --seeds 0 1 2 --jobs 2

Each run is `python train.py --credit C --seed S` (the default tiny run) in its own process, with
one torch thread when --jobs > 1 so that parallel runs do not fight over the cores. Prints one row
per run and, per strategy, the mean and sample standard deviation of the final held-out accuracy
over seeds.
benchmarks/credit_testbed.py runs the same way on the credit testbed.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(credit: str, seed: int, out: Path, threads: int | None, extra: list[str],
        label: str | None = None) -> dict:
    """`python train.py --credit C --seed S --out OUT/L-seedS ...extra` in its own process, then
    summarise; L is `label` (a name for the strategy and its extra flags) or C; wall_s is the run's
    wall-clock time."""
    env = dict(os.environ, TQDM_DISABLE="1", TRANSFORMERS_VERBOSITY="error")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    label = label or credit
    folder = out / f"{label}-seed{seed}"
    cmd = [sys.executable, str(ROOT / "train.py"), "--credit", credit, "--seed", str(seed),
           "--out", str(folder), "--overwrite", "--save-every", "0", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, cwd=ROOT)
    return summarise(folder, label, seed) | {"wall_s": time.perf_counter() - start}


def summarise(folder: Path, credit: str, seed: int) -> dict:
    """One run's numbers from its metrics.jsonl: the held-out curve [(step, accuracy)],
    before/after/best, and the training time (the sum of the step phases, evaluation excluded)."""
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["eval_accuracy"]) for r in records if "eval_accuracy" in r]
    evals = [acc for _, acc in curve]
    steps = [r for r in records if "reward" in r]
    seconds = sum(v for r in steps for k, v in r.items() if k.startswith("time_"))
    return {"credit": credit, "seed": seed, "before": evals[0], "after": evals[-1],
            "best": max(evals), "curve": curve, "train_s": seconds,
            "s_per_step": seconds / max(1, len(steps))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--credits", nargs="+", default=["flow", "uniform"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "credit_seeds")
    ap.add_argument("extra", nargs="*", help="more train.py flags, after --")
    args = ap.parse_args()
    jobs = [(c, s) for c in args.credits for s in args.seeds]
    threads = 1 if args.jobs > 1 else None
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: run(*job, args.out, threads, args.extra), jobs))
    print(f"{'credit':>10} {'seed':>4} {'before':>7} {'after':>7} {'best':>7} {'s/step':>7}")
    for r in rows:
        print(f"{r['credit']:>10} {r['seed']:>4} {r['before']:7.3f} {r['after']:7.3f} "
              f"{r['best']:7.3f} {r['s_per_step']:7.2f}")
    for credit in args.credits:
        after = [r["after"] for r in rows if r["credit"] == credit]
        gain = [r["after"] - r["before"] for r in rows if r["credit"] == credit]
        sd = statistics.stdev(after) if len(after) > 1 else float("nan")
        print(f"{credit:>10}: after {statistics.mean(after):.3f} +- {sd:.3f} (sd over {len(after)} "
              f"seeds), gain {statistics.mean(gain):+.3f}")


if __name__ == "__main__":
    main()
