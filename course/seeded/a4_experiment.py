"""Seeded bugs of a4_experiment: the reference solution's produced results (report.json, the run
folders, the intervention counts), corrupted the way a hurried student would get them wrong. Each
function edits a solution handout folder in place; bugs.restore undoes it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

from seeded import results


def _solution_script():
    """course/solutions/a4_experiment/report.py as a module (standard library only)."""
    path = Path(__file__).resolve().parents[1] / "solutions" / "a4_experiment" / "report.py"
    spec = importlib.util.spec_from_file_location("a4_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def _save(folder: Path, report: dict) -> None:
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def _resummarise(folder: Path, runs: list[dict] | None = None) -> None:
    """report.json written again by the reference script from (possibly changed) inputs."""
    script = _solution_script()
    report = _load(folder)
    if runs is None:
        runs = [script.run_summary(folder / r["folder"], folder) for r in report["runs"]]
    file = report["intervention"]["file"]
    counts = json.loads((folder / file).read_text())
    _save(folder, script.summarise(runs, counts, file))


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=1) + "\n")


def _stat_fix(folder: Path, change: Callable[[dict, list[float]], None]) -> None:
    """Apply change(credit entry, after values) to every strategy of report.json."""
    report = _load(folder)
    for name, part in report["credit"].items():
        change(part, [r["after"] for r in report["runs"] if r["credit"] == name])
    _save(folder, report)


def percent(folder: Path) -> None:
    report = _load(folder)
    for r in report["runs"]:
        r["before"], r["after"] = 100 * r["before"], 100 * r["after"]
    _save(folder, report)


def population_sd(folder: Path) -> None:
    def change(part, xs):
        n = len(xs)
        part["after_sd"] *= math.sqrt((n - 1) / n)
        half = _solution_script().T_975[n - 1] * part["after_sd"] / math.sqrt(n)
        part["after_ci95"] = [part["after_mean"] - half, part["after_mean"] + half]
    _stat_fix(folder, change)


def z_interval(folder: Path) -> None:
    def change(part, xs):
        half = 1.96 * part["after_sd"] / math.sqrt(len(xs))
        part["after_ci95"] = [part["after_mean"] - half, part["after_mean"] + half]
    _stat_fix(folder, change)


def sd_not_se(folder: Path) -> None:
    def change(part, xs):
        half = _solution_script().T_975[len(xs) - 1] * part["after_sd"]
        part["after_ci95"] = [part["after_mean"] - half, part["after_mean"] + half]
    _stat_fix(folder, change)


def gain_sign(folder: Path) -> None:
    def change(part, xs):
        part["gain_mean"] = -part["gain_mean"]
        part["gain_ci95"] = [-part["gain_ci95"][1], -part["gain_ci95"][0]]
    _stat_fix(folder, change)


def duplicate_seed(folder: Path) -> None:
    report = _load(folder)
    runs = [r for r in report["runs"] if r["credit"] != "flow"]
    second, last = sorted(runs, key=lambda r: r["seed"])[-2:]
    report["runs"][report["runs"].index(last)] = dict(second)
    _save(folder, report)


def two_seeds(folder: Path) -> None:
    report = _load(folder)
    last = max(r["seed"] for r in report["runs"])
    for r in report["runs"]:
        if r["seed"] == last:
            shutil.rmtree(folder / r["folder"])
    _resummarise(folder, [r for r in report["runs"] if r["seed"] != last])


def best_not_last(folder: Path) -> None:
    report = _load(folder)
    for r in report["runs"]:
        lines = (folder / r["folder"] / "metrics.jsonl").read_text().splitlines()
        r["after"] = max(m["eval_accuracy"] for m in map(json.loads, lines) if "eval_accuracy" in m)
    _resummarise(folder, report["runs"])


def forgot_credit_flag(folder: Path) -> None:
    run = next(r for r in _load(folder)["runs"] if r["credit"] != "flow")
    _edit_json(folder / run["folder"] / "config.json", lambda c: c.update(credit="flow"))


def killed_run(folder: Path) -> None:
    run = _load(folder)["runs"][1]
    path = folder / run["folder"] / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    _resummarise(folder)


def changed_hyperparameter(folder: Path) -> None:
    for run in _load(folder)["runs"]:
        if run["credit"] != "flow":
            _edit_json(folder / run["folder"] / "config.json", lambda c: c.update(lr=3e-4))


def other_model(folder: Path) -> None:
    for run in _load(folder)["runs"]:
        if run["credit"] != "flow":
            _edit_json(folder / run["folder"] / "config.json",
                       lambda c: c.update(model=str(Path(c["model"]).parent / "qwen3-base")))


def resumed_elsewhere(folder: Path) -> None:
    run = _load(folder)["runs"][-1]
    path = folder / run["folder"] / "metrics.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[0]["eval_accuracy"] = round(lines[0]["eval_accuracy"] + 0.03, 3)
    path.write_text("".join(json.dumps(m) + "\n" for m in lines))
    _resummarise(folder)


def runs_not_handed_in(folder: Path) -> None:
    report = _load(folder)
    (folder.parent / "elsewhere").mkdir(exist_ok=True)
    for r in report["runs"]:
        shutil.move(folder / r["folder"], folder.parent / "elsewhere" / Path(r["folder"]).name)
        r["folder"] = "../elsewhere/" + Path(r["folder"]).name
    _save(folder, report)


def one_seed_intervention(folder: Path) -> None:
    report = _load(folder)
    counts = json.loads((folder / report["intervention"]["file"]).read_text())
    first = next(k for k in counts if k != "pooled")
    _save(folder, _solution_script().summarise(report["runs"], {"pooled": counts[first]},
                                                report["intervention"]["file"]))


def wald_interval(folder: Path) -> None:
    report = _load(folder)
    for c in report["intervention"]["conditions"].values():
        for name in ("answer_change", "correctness_reverse"):
            p = c[name]
            half = 1.96 * math.sqrt(p * (1 - p) / c["n"])
            c[f"{name}_ci95"] = [p - half, p + half]
    _save(folder, report)


def tampered_counts(folder: Path) -> None:
    file = folder / _load(folder)["intervention"]["file"]
    def change(counts: dict) -> None:
        counts["pooled"]["high"]["changed"] += 9

    _edit_json(file, change)
    _resummarise(folder)


def unpaired_difference(folder: Path) -> None:
    report = _load(folder)
    a, b = (report["credit"][c] for c in report["difference"]["strategies"])
    n = len(a["seeds"])
    t = _solution_script().T_975[n - 1]
    half = t * math.sqrt((a["after_sd"] ** 2 + b["after_sd"] ** 2) / n)
    mean = report["difference"]["after_mean"]
    report["difference"]["ci95"] = [mean - half, mean + half]
    _save(folder, report)


def wrong_conclusion(folder: Path) -> None:
    report = _load(folder)
    report["conclusions"]["flow_better"] = not report["conclusions"]["flow_better"]
    _save(folder, report)


def no_written_report(folder: Path) -> None:
    (folder / "report.md").unlink()


BUGS = [
    results("percent", "accuracies reported in percent", percent),
    results("population-sd", "population sd (n) instead of the sample sd (n - 1)", population_sd),
    results("z-interval", "z = 1.96 instead of Student's t with n - 1 dof", z_interval),
    results("sd-not-se", "interval mean +- t * sd, without / sqrt(n)", sd_not_se),
    results("gain-sign", "gain = before - after", gain_sign),
    results("duplicate-seed", "one run listed twice, as two seeds", duplicate_seed),
    results("two-seeds", "only two seeds per strategy", two_seeds),
    results("best-not-last", "after = the best evaluation, not the last", best_not_last),
    results("forgot-credit-flag", "the 'uniform' run was trained without --credit",
            forgot_credit_flag),
    results("killed-run", "a run stopped half way, summarised anyway", killed_run),
    results("changed-hyperparameter", "the second strategy ran with another lr",
            changed_hyperparameter),
    results("other-model", "the second strategy trained another model", other_model),
    results("resumed-elsewhere", "a run did not start from the shipped model", resumed_elsewhere),
    results("runs-not-handed-in", "run folders outside the handout", runs_not_handed_in),
    results("one-seed-intervention", "intervention rates of one seed, not pooled",
            one_seed_intervention),
    results("wald-interval", "normal (Wald) interval instead of Wilson's", wald_interval),
    results("tampered-counts", "the pooled counts edited by hand", tampered_counts),
    results("unpaired-difference", "difference interval of two independent samples",
            unpaired_difference),
    results("wrong-conclusion", "flow_better contradicts the interval", wrong_conclusion),
    results("no-written-report", "report.md missing", no_written_report),
]
