"""docs/real_model.json from the runs on SmolLM2-135M-Instruct (docs/real_model.md says how each
ran).

    python benchmarks/real_model.py --table1 runs/table1/progress.jsonl \
        [--bands runs/bands.json] [--band-table1 BAND=PROGRESS ...] [--table1-none PROGRESS]
        [--steps NAME=RUN_DIR ...]
        [--memory runs/memory.json]

--table1: the progress file of `analyze.py intervene --progress` (finished batches only, so a run
still going or cut off gives the counts so far, marked "finished": false). Keys (fixed: outside
checks read them): table1.high / .random / .low / .recent, each {rate, lo, hi, n}: the answer-change
rate with its 95% Wilson interval over n compared responses; table1_reversal the same for
correctness reversals (over responses with a gold); table1_run: problems sampled, done, boxed,
skipped. --bands: `analyze.py bands --json`. --band-table1 BAND=PROGRESS: a band's high-flow
blocking (`intervene --layers ... --conditions high --progress`). --table1-none: the `none` control
(`intervene --conditions none --progress`, nothing blocked: truncating and resampling alone), key
table1_none {rate, lo, hi, n, done}. --steps NAME=RUN_DIR: a train.py run's time per phase
(metrics.jsonl). --memory: `benchmarks/memory_check.py --json` of the smollm2 configurations (key
memory: the memory plan against measured peaks, per configuration; a later file adds its
configurations to those already there). Keys already in --out and not given now are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.intervene import Counts, pooled, wilson  # noqa: E402

PHASES = ("generate", "capture", "reward", "credit", "update")


def rate(k: int, n: int) -> dict:
    lo, hi = wilson(k, n) if n else (None, None)
    return {"rate": k / n if n else None, "lo": lo, "hi": hi, "n": n}


def table1(progress: Path) -> dict:
    """Pooled counts of the finished batches of one intervene run."""
    lines = [json.loads(x) for x in progress.read_text().splitlines() if x.strip()]
    if not lines:
        raise SystemExit(f"{progress}: no finished batch yet")
    settings = lines[0]["settings"]
    if any(x["settings"] != settings for x in lines):
        raise SystemExit(f"{progress}: holds batches of several runs")
    parts = [{c: Counts(**v) for c, v in x["counts"].items()} for x in lines if x["counts"]]
    counts = pooled(parts)
    done = sum(min(settings["batch"], len(settings["examples"]) - x["start"]) for x in lines)
    no_box = sum(x["no_box"] for x in lines)
    return {
        "table1": {c: rate(v.changed, v.n) for c, v in counts.items()},
        "table1_reversal": {c: rate(v.reversed, v.scored) | {"broke": v.broke, "fixed": v.fixed}
                            for c, v in counts.items()},
        "table1_run": {"problems": len(settings["examples"]), "done": done,
                       "finished": done == len(settings["examples"]),
                       "boxed": rate(done - no_box, done), "skipped_no_box": no_box,
                       "skipped_too_short": sum(x["too_short"] for x in lines),
                       "seconds": sum(x["seconds"] for x in lines),
                       "settings": {k: v for k, v in settings.items() if k != "examples"}},
    }


def condition_rate(run: dict, condition: str) -> dict:
    """One condition of a table1() result, with the problems its run did: for the runs of a single
    condition (a band's high-flow blocking, the none control)."""
    return run["table1"][condition] | {"done": run["table1_run"]["done"]}


def band_table1(specs: list[str]) -> dict:
    out = {}
    for spec in specs:
        band, path = spec.split("=", 1)
        t = table1(Path(path))
        out[band] = condition_rate(t, "high") | {"layers": t["table1_run"]["settings"]["layers"]}
    return out


def step_costs(specs: list[str]) -> dict:
    """Per run: mean seconds per phase over its steps, the Table 6 share (capture + credit over the
    step; capture is part of generate) and the mean response length in tokens."""
    out = {}
    for spec in specs:
        name, folder = spec.split("=", 1)
        rows = [json.loads(x) for x in (Path(folder) / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "time_update" in r]
        mean = {p: sum(r.get(f"time_{p}", 0.0) for r in steps) / len(steps) for p in PHASES}
        total = sum(mean[p] for p in PHASES if p != "capture")  # capture is inside generate
        out[name] = {"seconds": mean, "step_seconds": total,
                     "table6_share": (mean["capture"] + mean["credit"]) / total,
                     "response_length": sum(r.get("response_len", 0) for r in steps)
                     / len(steps), "steps": len(steps)}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table1", type=Path)
    ap.add_argument("--bands", type=Path)
    ap.add_argument("--band-table1", nargs="+", default=[])
    ap.add_argument("--table1-none", type=Path)
    ap.add_argument("--steps", nargs="+", default=[])
    ap.add_argument("--memory", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "real_model.json")
    args = ap.parse_args(argv)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.table1:
        result |= table1(args.table1)
    if args.bands:
        result["bands"] = json.loads(args.bands.read_text())
    if args.band_table1:
        result["bands_table1_high"] = band_table1(args.band_table1)
    if args.table1_none:
        result["table1_none"] = condition_rate(table1(args.table1_none), "none")
    if args.steps:
        result["step_cost"] = step_costs(args.steps)
    if args.memory:
        result["memory"] = result.get("memory", {}) | json.loads(args.memory.read_text())
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("table1",) if k in result}, indent=1))


if __name__ == "__main__":
    main()
