"""Reference solution of a4_experiment: report.json from the run folders and intervention counts.

    python report.py runs/flow-seed* runs/uniform-seed* --intervention runs/intervene.json

Standard library only; the intervals are the handout's: Student t over seeds, Wilson for the
intervention rates (analyze.py's own `wilson`).
"""

import argparse
import json
import math
from pathlib import Path

from analyze import wilson

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228}


def t_interval(xs: list[float]) -> tuple[float, float, list[float]]:
    """mean, sample sd and the 95% t interval of xs."""
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = T_975[n - 1] * sd / math.sqrt(n)
    return mean, sd, [mean - half, mean + half]


def run_summary(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    accuracy = [r["eval_accuracy"] for r in map(json.loads, lines) if "eval_accuracy" in r]
    return {"credit": config["credit"], "seed": config["seed"], "folder": folder.as_posix(),
            "before": accuracy[0], "after": accuracy[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--intervention", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("report.json"))
    args = ap.parse_args()

    runs = [run_summary(folder) for folder in args.runs]
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

    pooled = json.loads(args.intervention.read_text())["pooled"]
    conditions = {}
    for cond in ("high", "random", "low"):
        c = pooled[cond]
        conditions[cond] = {
            "n": c["n"],
            "answer_change": c["changed"] / c["n"],
            "answer_change_ci95": list(wilson(c["changed"], c["n"])),
            "correctness_reverse": c["reversed"] / c["scored"],
            "correctness_reverse_ci95": list(wilson(c["reversed"], c["scored"])),
        }
    change = {c: conditions[c]["answer_change_ci95"] for c in conditions}
    report = {
        "runs": runs,
        "credit": credit,
        "difference": {"strategies": ["flow", other], "after_mean": diff_mean, "ci95": diff_ci},
        "intervention": {"file": args.intervention.as_posix(), "conditions": conditions},
        "conclusions": {
            "flow_better": diff_ci[0] > 0,
            "high_above_random_above_low": (change["high"][0] > change["random"][1]
                                            and change["random"][0] > change["low"][1]),
        },
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
