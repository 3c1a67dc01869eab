"""Checks of assignment a4_experiment: the produced results (report.json and the run folders and
intervention counts it points to) are present, consistent with each other, and summarised with the
confidence intervals the handout specifies. The written report is graded by hand.

Standard library only. Numbers are compared to ABS_TOL: the handout asks for 4 decimals or more.
"""

import json
import math
from pathlib import Path

from grade import Failure, check, expect, fmt

ABS_TOL = 1e-4
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228}  # two-sided 95% Student t quantiles by degrees of freedom
Z_975 = 1.959964
CONDITIONS = ("high", "random", "low")
RUN_KEYS = ("credit", "seed", "folder", "before", "after")
SAME_CONFIG_EXCEPT = {"credit", "seed", "out", "resume", "overwrite", "save_every",
                      "keep_checkpoints", "allow_config_change", "plot_ema",
                      "reward_workers"}  # the rest decides what is trained


def report(handout: Path) -> dict:
    path = handout / "report.json"
    expect(path.is_file(), "report.json is missing from the handout folder")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise Failure(f"report.json is not valid JSON: {e}") from None
    expect(isinstance(data, dict), "report.json must hold one JSON object")
    return data


def at(data: dict, *path: str):
    """data[path[0]][path[1]]..., failing with the dotted path when report.json lacks it."""
    for key in path:
        expect(isinstance(data, dict) and key in data, f"report.json has no {'.'.join(path)}")
        data = data[key]
    return data


def runs_of(handout: Path) -> list[dict]:
    runs = report(handout).get("runs")
    expect(isinstance(runs, list) and runs, "report.json has no non-empty list 'runs'")
    for i, r in enumerate(runs):
        missing = [k for k in RUN_KEYS if k not in r]
        expect(not missing, f"runs[{i}] lacks {missing}")
    return runs


def by_credit(runs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in runs:
        out.setdefault(r["credit"], []).append(r)
    return out


def run_folder(handout: Path, run: dict) -> Path:
    folder = (handout / run["folder"]).resolve()
    expect(folder.is_relative_to(handout.resolve()),
           f"run folder {run['folder']!r} is outside the handout folder: put the runs in runs/ "
           "and hand them in with the report")
    for name in ("config.json", "metrics.jsonl"):
        expect((folder / name).is_file(), f"run folder {run['folder']} has no {name}")
    return folder


def metrics(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line]


def evals(folder: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["eval_accuracy"]) for m in metrics(folder) if "eval_accuracy" in m]


def mean_sd(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def t_interval(xs: list[float]) -> list[float]:
    m, sd = mean_sd(xs)
    half = T_975[len(xs) - 1] * sd / math.sqrt(len(xs))
    return [m - half, m + half]


def wilson(k: int, n: int) -> list[float]:
    p, z2 = k / n, Z_975**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z_975 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [centre - half, centre + half]


def near(a, b) -> bool:
    if isinstance(b, list):
        return isinstance(a, list) and len(a) == len(b) and all(near(x, y) for x, y in zip(a, b))
    return isinstance(a, (int, float)) and not isinstance(a, bool) and abs(a - b) <= ABS_TOL


def expect_near(got, want, what: str) -> None:
    shown = [fmt(w) for w in want] if isinstance(want, list) else fmt(want)
    expect(near(got, want), f"{what} is {got}, expected {shown}")


def intervention(handout: Path) -> tuple[dict, dict]:
    """(report['intervention'], the counts file it names)."""
    part = report(handout).get("intervention")
    expect(isinstance(part, dict) and "file" in part and "conditions" in part,
           "report.json needs 'intervention' with 'file' and 'conditions'")
    path = (handout / part["file"]).resolve()
    expect(path.is_relative_to(handout.resolve()) and path.is_file(),
           f"intervention file {part['file']!r} (analyze.py intervene --json) is not in the "
           "handout folder")
    return part, json.loads(path.read_text())


# --------------------------------------------------------------------------------------------------
# visible checks
# --------------------------------------------------------------------------------------------------


@check(1)
def test_report_has_every_section(handout):
    """report.json exists and has runs, credit, difference, intervention and conclusions"""
    data = report(handout)
    missing = [k for k in ("runs", "credit", "difference", "intervention", "conclusions")
               if k not in data]
    expect(not missing, f"report.json lacks {missing} (the handout lists its sections)")


@check(2)
def test_two_strategies_same_seeds(handout):
    """two credit strategies (flow and another), each run on the same >= 3 seeds"""
    groups = by_credit(runs_of(handout))
    expect("flow" in groups and len(groups) >= 2,
           f"runs cover credit strategies {sorted(groups)}: need 'flow' and at least one other")
    seeds = {c: [r["seed"] for r in rs] for c, rs in groups.items()}
    for c, s in seeds.items():
        expect(len(set(s)) == len(s), f"credit {c!r} lists seeds {s}: a seed appears twice")
        expect(len(s) >= 3, f"credit {c!r} has {len(s)} seed(s), the handout asks for at least 3")
        expect(len(s) <= 11, f"credit {c!r} has {len(s)} seeds: the t table stops at 11")
    first = sorted(seeds["flow"])
    for c, s in seeds.items():
        expect(sorted(s) == first, f"credit {c!r} ran seeds {sorted(s)}, flow ran {first}: use "
               "the same seeds (the comparison is paired by seed)")


@check(2)
def test_run_folders_are_those_runs(handout):
    """every run folder is in the handout, used once, and its config.json has its credit and seed"""
    runs = runs_of(handout)
    folders = [str(run_folder(handout, r)) for r in runs]
    expect(len(set(folders)) == len(folders), "two runs in report.json point to the same folder")
    for r in runs:
        config = json.loads((run_folder(handout, r) / "config.json").read_text())
        for key in ("credit", "seed"):
            expect(config.get(key) == r[key], f"run {r['folder']}: report.json says {key} "
                   f"{r[key]!r}, its config.json says {config.get(key)!r}")


@check(2)
def test_runs_are_complete_and_comparable(handout):
    """every run finished all its steps, and the runs differ only in credit and seed"""
    runs = runs_of(handout)
    configs = []
    for r in runs:
        folder = run_folder(handout, r)
        config = json.loads((folder / "config.json").read_text())
        steps = [m["step"] for m in metrics(folder) if "reward" in m]
        expect(steps == list(range(1, config["steps"] + 1)), f"run {r['folder']} logged training "
               f"steps up to {max(steps, default=0)} of {config['steps']}: it did not finish (or "
               "was resumed badly): run it again")
        state = folder / "run.json"  # train.py's own record: "finished" once the last step ran
        if state.is_file():
            finished = json.loads(state.read_text()).get("finished")
            expect(finished is True, f"run {r['folder']}: its run.json says finished = "
                   f"{finished}: the run stopped before its last step (--resume it)")
        at = [s for s, _ in evals(folder)]
        expect(at and at[0] == 0 and at[-1] == config["steps"], f"run {r['folder']} has held-out "
               f"evaluations at steps {at}: need one before training (0) and one at the end")
        kept = {k: v for k, v in config.items() if k not in SAME_CONFIG_EXCEPT}
        if isinstance(kept.get("model"), str):  # the shipped model wherever the handout sat
            kept["model"] = Path(kept["model"]).parts[-2:]
        configs.append(kept)
    for r, c in zip(runs, configs):
        diff = sorted(k for k in set(c) | set(configs[0]) if c.get(k) != configs[0].get(k))
        expect(not diff, f"run {r['folder']} differs from {runs[0]['folder']} in {diff}: the "
               "experiment changes the credit strategy and the seed only")


@check(1)
def test_accuracies_are_fractions(handout):
    """accuracies are fractions in [0, 1] (not percent)"""
    for r in runs_of(handout):
        for key in ("before", "after"):
            v = r[key]
            expect(isinstance(v, (int, float)) and 0 <= v <= 1, f"run {r['folder']}: {key} = {v} "
                   "is not a fraction in [0, 1] (report accuracies as fractions, not percent)")


@check(1)
def test_written_report(handout):
    """report.md exists with at least 250 words (it is graded by hand)"""
    path = handout / "report.md"
    expect(path.is_file(), "report.md (the written report) is missing")
    words = len(path.read_text(encoding="utf-8").split())
    expect(words >= 250, f"report.md has {words} words; the handout asks for 250 to 1000")


# --------------------------------------------------------------------------------------------------
# hidden checks
# --------------------------------------------------------------------------------------------------


@check(2, visibility="after_due_date")
def test_before_after_are_the_logged_ones(handout):
    """before / after are the first and the last held-out accuracy of each run's metrics.jsonl"""
    for r in runs_of(handout):
        logged = evals(run_folder(handout, r))
        expect(logged, f"run {r['folder']} logged no eval_accuracy")
        expect_near(r["before"], logged[0][1], f"run {r['folder']}: before (step {logged[0][0]})")
        expect_near(r["after"], logged[-1][1], f"run {r['folder']}: after, the LAST evaluation "
                    f"(step {logged[-1][0]}, not the best one)")


@check(1, visibility="after_due_date")
def test_same_starting_point(handout):
    """all runs start from the same accuracy (same warm start, greedy evaluation)"""
    firsts = {r["folder"]: evals(run_folder(handout, r))[0][1] for r in runs_of(handout)}
    expect(len(set(firsts.values())) == 1, f"the step-0 accuracies differ: {firsts}; every run "
           "must start from the shipped model (a leftover --resume?)")


@check(2, visibility="after_due_date")
def test_means_and_sample_sds(handout):
    """per strategy: mean and sample standard deviation (n - 1) of after, and the mean gain"""
    data = report(handout)
    for c, rs in by_credit(runs_of(handout)).items():
        part = at(data, "credit", c)
        m, sd = mean_sd([r["after"] for r in rs])
        expect_near(part.get("after_mean"), m, f"credit {c}: after_mean")
        if near(part.get("after_sd"), sd * math.sqrt((len(rs) - 1) / len(rs))):
            raise Failure(f"credit {c}: after_sd = {part['after_sd']} is the population sd "
                          f"(divide by n); the handout asks for the sample sd (n - 1): {fmt(sd)}")
        expect_near(part.get("after_sd"), sd, f"credit {c}: after_sd (sample sd)")
        expect_near(part.get("gain_mean"), sum(r["after"] - r["before"] for r in rs) / len(rs),
                    f"credit {c}: gain_mean (after - before)")


@check(2, visibility="after_due_date")
def test_t_intervals(handout):
    """per strategy: 95% t intervals of after and of the gain (mean +- t * sd / sqrt(n))"""
    data = report(handout)
    for c, rs in by_credit(runs_of(handout)).items():
        part = at(data, "credit", c)
        want = t_interval([r["after"] for r in rs])
        m = (want[0] + want[1]) / 2
        got = part.get("after_ci95")
        if isinstance(got, list) and len(got) == 2 and near(got[1] - m, Z_975 * (want[1] - m)
                                                            / T_975[len(rs) - 1]):
            raise Failure(f"credit {c}: after_ci95 {got} uses z = 1.96; with {len(rs)} seeds the "
                          f"95% interval needs Student's t with {len(rs) - 1} degrees of freedom "
                          f"({T_975[len(rs) - 1]}): {[fmt(w) for w in want]}")
        expect_near(got, want, f"credit {c}: after_ci95")
        expect_near(part.get("gain_ci95"), t_interval([r["after"] - r["before"] for r in rs]),
                    f"credit {c}: gain_ci95")


@check(2, visibility="after_due_date")
def test_paired_difference(handout):
    """difference: flow minus the other strategy, paired by seed, with its 95% t interval"""
    data = report(handout)
    part = at(data, "difference")
    strategies = part.get("strategies")
    groups = by_credit(runs_of(handout))
    expect(isinstance(strategies, list) and len(strategies) == 2 and strategies[0] == "flow"
           and strategies[1] in groups, f"difference.strategies is {strategies}, expected "
           "['flow', <the other strategy>]")
    after = {c: {r["seed"]: r["after"] for r in groups[c]} for c in strategies}
    diffs = [after["flow"][s] - after[strategies[1]][s] for s in sorted(after["flow"])]
    expect_near(part.get("after_mean"), sum(diffs) / len(diffs), "difference.after_mean")
    expect_near(part.get("ci95"), t_interval(diffs), "difference.ci95 (t interval of the "
                "per-seed differences, not of two independent samples)")


@check(2, visibility="after_due_date")
def test_intervention_counts_are_consistent(handout):
    """the intervention file: >= 3 seeds, counts within range, pooled = the sum of the seeds"""
    _, counts = intervention(handout)
    seeds = [k for k in counts if k != "pooled"]
    expect(len(seeds) >= 3 and "pooled" in counts, f"the intervention file has runs {list(counts)}"
           ": run analyze.py intervene with --seeds (at least 3), which also writes 'pooled'")
    fields = ("n", "changed", "reversed", "broke", "fixed", "scored")
    for run in counts:
        for cond in CONDITIONS:
            c = counts[run].get(cond)
            expect(isinstance(c, dict) and all(isinstance(c.get(f), int) for f in fields),
                   f"intervention file: {run!r} has no counts for condition {cond!r}")
            ok = (0 <= c["changed"] <= c["n"] and 0 <= c["reversed"] <= c["scored"] <= c["n"]
                  and c["broke"] + c["fixed"] == c["reversed"])
            expect(ok, f"intervention file: {run!r} / {cond!r} counts {c} are impossible "
                   "(changed <= n, reversed = broke + fixed <= scored <= n)")
    for cond in CONDITIONS:
        for f in fields:
            total = sum(counts[s][cond][f] for s in seeds)
            expect(counts["pooled"][cond][f] == total, f"intervention file: pooled {cond} {f} = "
                   f"{counts['pooled'][cond][f]}, but the seeds add up to {total}")


@check(2, visibility="after_due_date")
def test_intervention_rates_and_wilson(handout):
    """per condition: pooled answer-change and correctness-reverse rates, 95% Wilson intervals"""
    part, counts = intervention(handout)
    for cond in CONDITIONS:
        got = at(part, "conditions", cond)
        c = counts["pooled"][cond]
        expect(got.get("n") == c["n"], f"{cond}: n = {got.get('n')}, the pooled count is {c['n']}"
               " (pool the seeds)")
        for name, k, n in (("answer_change", c["changed"], c["n"]),
                           ("correctness_reverse", c["reversed"], c["scored"])):
            expect_near(got.get(name), k / n, f"{cond}: {name} (pooled rate {k} / {n})")
            p, half = k / n, Z_975 * math.sqrt(k / n * (1 - k / n) / n)
            ci = got.get(f"{name}_ci95")
            if near(ci, [p - half, p + half]) and not near(ci, wilson(k, n)):
                raise Failure(f"{cond}: {name}_ci95 {ci} is the normal (Wald) interval; the "
                              f"handout asks for Wilson's: {[fmt(w) for w in wilson(k, n)]}")
            expect_near(ci, wilson(k, n), f"{cond}: {name}_ci95 (Wilson, z = 1.96)")


@check(1, visibility="after_due_date")
def test_conclusions_follow_from_the_intervals(handout):
    """conclusions: true exactly when the intervals say so (the handout's two rules)"""
    data = report(handout)
    got = at(data, "conclusions")
    lo, hi = at(data, "difference", "ci95")
    want = lo > 0
    expect(got.get("flow_better") is want, "conclusions.flow_better "
           f"is {got.get('flow_better')}, but the difference interval "
           f"[{fmt(lo)}, {fmt(hi)}] {'lies above' if want else 'does not lie above'} 0")
    ci = {c: at(data, "intervention", "conditions", c, "answer_change_ci95") for c in CONDITIONS}
    ordered = ci["high"][0] > ci["random"][1] and ci["random"][0] > ci["low"][1]
    expect(got.get("high_above_random_above_low") is ordered, "conclusions."
           f"high_above_random_above_low is {got.get('high_above_random_above_low')}, but the "
           f"answer-change intervals {ci} say {ordered}")
