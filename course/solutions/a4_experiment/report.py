"""Reference solution of a4_experiment: report.json from the run folders and intervention counts.

    python report.py runs/flow-seed0 runs/flow-seed1 ... --intervention runs/intervene.json

Standard library only. The intervals are the handout's: Student's t over seeds (sample sd), and
Wilson's interval for the pooled intervention rates.
"""

import argparse
import json
import math
from pathlib import Path

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228}
Z_975 = 1.959964


def t_interval(xs: list[float]) -> tuple[float, float, list[float]]:
    """Mean, sample sd and the 95% t interval of xs."""
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = T_975[n - 1] * sd / math.sqrt(n)
    return mean, sd, [mean - half, mean + half]


def wilson(k: int, n: int) -> list[float]:
    """95% Wilson score interval of k successes in n."""
    p, z2 = k / n, Z_975**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z_975 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [centre - half, centre + half]


def run_summary(folder: Path, root: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    accuracy = [r["eval_accuracy"] for r in map(json.loads, lines) if "eval_accuracy" in r]
    return {"credit": config["credit"], "seed": config["seed"],
            "folder": folder.resolve().relative_to(root.resolve()).as_posix(),
            "before": accuracy[0], "after": accuracy[-1]}


def summarise(runs: list[dict], intervention: dict, intervention_file: str) -> dict:
    """report.json from the per-run summaries and the counts of analyze.py intervene --json."""
    credit = {}
    for name in sorted({r["credit"] for r in runs}):
        mine = [r for r in runs if r["credit"] == name]
        mean, sd, ci = t_interval([r["after"] for r in mine])
        gain, _, gain_ci = t_interval([r["after"] - r["before"] for r in mine])
        credit[name] = {"seeds": sorted(r["seed"] for r in mine), "after_mean": mean,
                        "after_sd": sd, "after_ci95": ci, "gain_mean": gain, "gain_ci95": gain_ci}
    other = next(c for c in credit if c != "flow")
    after = {(r["credit"], r["seed"]): r["after"] for r in runs}
    diffs = [after["flow", s] - after[other, s] for s in credit["flow"]["seeds"]]
    diff_mean, _, diff_ci = t_interval(diffs)

    conditions = {}
    for cond in ("high", "random", "low"):
        c = intervention["pooled"][cond]
        conditions[cond] = {
            "n": c["n"],
            "answer_change": c["changed"] / c["n"],
            "answer_change_ci95": wilson(c["changed"], c["n"]),
            "correctness_reverse": c["reversed"] / c["scored"],
            "correctness_reverse_ci95": wilson(c["reversed"], c["scored"]),
        }
    change = {c: conditions[c]["answer_change_ci95"] for c in conditions}
    return {
        "runs": runs,
        "credit": credit,
        "difference": {"strategies": ["flow", other], "after_mean": diff_mean, "ci95": diff_ci},
        "intervention": {"file": intervention_file, "conditions": conditions},
        "conclusions": {
            "flow_better": diff_ci[0] > 0,
            "high_above_random_above_low": (change["high"][0] > change["random"][1]
                                            and change["random"][0] > change["low"][1]),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (train.py --out)")
    ap.add_argument("--intervention", type=Path, required=True, help="analyze.py intervene --json")
    ap.add_argument("--out", type=Path, default=Path("report.json"))
    args = ap.parse_args()
    root = args.out.parent
    runs = [run_summary(folder, root) for folder in args.runs]
    counts = json.loads(args.intervention.read_text())
    file = args.intervention.resolve().relative_to(root.resolve()).as_posix()
    args.out.write_text(json.dumps(summarise(runs, counts, file), indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
