"""Seeded student bugs: plausible wrong solutions that the autograder must fail (issue 12).

    python course/bugs.py            # grade every bug, print which tests caught it
    python course/bugs.py a2_credit  # one assignment

A code bug is a small edit of one function of a reference module (the edit must match exactly once
inside that function, so a bug that no longer applies to the moved or rewritten code is an error,
not a silent pass). The bugs of a4_experiment corrupt the produced results (report.json, the run
folders) of the reference solution instead. tests/test_course.py grades every bug and asserts that
each one loses points.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "course"))

# course/ is not a package: its scripts import each other from this folder
import grade
import make


@dataclass(frozen=True)
class Bug:
    assignment: str
    name: str
    why: str  # the student's mistake, in words
    module: str = ""  # code bug: the reference module ...
    function: str = ""  # ... and the top-level function (or helper) edited
    edits: tuple[tuple[str, str], ...] = ()  # (old, new) text replacements inside that function
    corrupt: Callable[[Path], None] | None = None  # results bug: edits the handout folder


def patched_source(bug: Bug) -> str:
    """The reference module with the bug's edits applied inside bug.function."""
    source = (ROOT / f"{bug.module}.py").read_text(encoding="utf-8")
    nodes = [n for n in ast.parse(source).body
             if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == bug.function]
    if not nodes:
        raise make.AssignmentError(f"bug {bug.name}: {bug.module}.py has no function "
                                   f"{bug.function}")
    lines = source.splitlines(keepends=True)
    start, end = nodes[0].lineno - 1, nodes[0].end_lineno
    body = "".join(lines[start:end])
    for old, new in bug.edits:
        if body.count(old) != 1:
            raise make.AssignmentError(f"bug {bug.name}: {old!r} occurs {body.count(old)} times in "
                                       f"{bug.module}.{bug.function}, expected once")
        body = body.replace(old, new)
    return "".join(lines[:start]) + body + "".join(lines[end:])


def code(assignment: str, name: str, why: str, module: str, function: str, *edits) -> Bug:
    return Bug(assignment, name, why, module, function, tuple(edits))


BUGS: list[Bug] = [
    # ---------------------------------------------------------------------------------- a1_flow
    code("a1_flow", "W-not-transposed", "W = attn (row = query), not its transpose",
         "flow", "influence_graph", ("attn.mT.triu(1)", "attn.triu(1)")),
    code("a1_flow", "self-loops", "the diagonal of W kept (triu(0))",
         "flow", "influence_graph", ("attn.mT.triu(1)", "attn.mT.triu(0)")),
    code("a1_flow", "W-in-place", "triu_ on the transposed view: the caller's attn is overwritten",
         "flow", "influence_graph", ("attn.mT.triu(1)", "attn.mT.triu_(1)")),
    code("a1_flow", "answer-not-absorbing", "answer rows kept in the system: h(a) = 1 + sum W h",
         "flow", "_system", ("keep = (~answer_mask).to(dtype).neg_()",
                             "keep = torch.ones_like(answer_mask, dtype=dtype).neg_()")),
    code("a1_flow", "solve-in-W-dtype", "potential solved in W's dtype, cast to float64 at the end",
         "flow", "potential", ("_system(W, answer_mask, dtype), answer_mask)",
                               "_system(W, answer_mask, W.dtype), answer_mask).to(dtype)")),
    code("a1_flow", "lower-solve", "eq. (2) solved as a lower-triangular system",
         "flow", "_solve_potential", ("upper=True", "upper=False")),
    code("a1_flow", "direct-paths-only", "h from one step only: h = W 1_A + 1_A (no longer paths)",
         "flow", "_solve_potential",
         ("h = torch.linalg.solve_triangular(M, b, upper=True, unitriangular=True)",
          "h = b - M @ b")),
    code("a1_flow", "h-ratio-upside-down", "W' = W h(i) / h(k) instead of W h(k) / h(i)",
         "flow", "reweight", ("* inv_h.unsqueeze(-1) * h.unsqueeze(-2)",
                              "* h.unsqueeze(-1) * inv_h.unsqueeze(-2)")),
    code("a1_flow", "dead-end-nan", "1 / h without guarding h = 0: dead-end rows are 0/0",
         "flow", "reweight",
         ("torch.where(h > 0, h.reciprocal(), torch.zeros_like(h))", "h.reciprocal()")),
    code("a1_flow", "answer-rows-kept", "answer rows of W' not zeroed",
         "flow", "reweight", ("inv_h = inv_h.masked_fill(answer_mask, 0.0)", "pass")),
    code("a1_flow", "source-one-per-token", "every prompt token gets source 1, not 1/|Q|",
         "flow", "forward_flow", ("s = _source(prompt_mask, W_prime.dtype).unsqueeze(-1)",
                                  "s = prompt_mask.to(W_prime.dtype).unsqueeze(-1)")),
    code("a1_flow", "source-over-T", "source 1/T on prompt tokens instead of 1/|Q|",
         "flow", "forward_flow",
         ("s = _source(prompt_mask, W_prime.dtype).unsqueeze(-1)",
          "s = (prompt_mask.to(W_prime.dtype) / prompt_mask.shape[-1]).unsqueeze(-1)")),
    code("a1_flow", "flow-backwards", "eq. (4) solved on W' instead of its transpose",
         "flow", "forward_flow", ("solve_triangular(M.mT, s, upper=False,",
                                  "solve_triangular(M, s, upper=True,")),
    code("a1_flow", "flow-float64", "forward_flow always returns float64",
         "flow", "forward_flow",
         ("M = W_prime.neg().triu(1)", "M = W_prime.double().neg().triu(1)"),
         ("s = _source(prompt_mask, W_prime.dtype)", "s = _source(prompt_mask, torch.float64)")),
    # -------------------------------------------------------------------------------- a2_credit
    code("a2_credit", "bankers-rounding", "k = torch.round(ratio * n): half to even, 2.5 -> 2",
         "flow", "top_k_mask",
         ("torch.floor(n * ratio + 0.5).long()", "torch.round(n * ratio).long()")),
    code("a2_credit", "k-truncated", "k = int(ratio * n): 1.6 -> 1",
         "flow", "top_k_mask", ("torch.floor(n * ratio + 0.5).long()", "(n * ratio).long()")),
    code("a2_credit", "non-candidates-ranked", "scores sorted without masking the non-candidates",
         "flow", "top_k_mask", ("key = scores.masked_fill(~candidate_mask, fill)", "key = scores")),
    code("a2_credit", "k-of-T", "k counted over all T tokens, not over the candidates",
         "flow", "top_k_mask", ("n = candidate_mask.sum(-1, keepdim=True)",
                                "n = torch.full_like(scores[..., :1], scores.shape[-1])")),
    code("a2_credit", "bottom-k-fill", "non-candidates filled with -inf for bottom-k too",
         "flow", "top_k_mask", ('fill = float("-inf") if largest else float("inf")',
                                'fill = float("-inf")')),
    code("a2_credit", "min-max-sort", "sorted ascending for top-k (descending=not largest)",
         "flow", "top_k_mask", ("descending=largest", "descending=not largest")),
    code("a2_credit", "gamma-swapped", "gamma on the unselected tokens, 1 on the selected",
         "flow", "credit_weights", ("torch.where(mask, one * gamma, one)",
                                    "torch.where(mask, one, one * gamma)")),
    code("a2_credit", "weights-float64", "weights built in float64",
         "flow", "credit_weights", ("dtype=torch.float32", "dtype=torch.float64")),
    code("a2_credit", "sample-std", "sample std (divide by G - 1) instead of the population std",
         "grpo", "group_advantages", ("unbiased=False", "unbiased=True")),
    code("a2_credit", "strided-groups", "groups taken as every P-th row instead of G consecutive",
         "grpo", "group_advantages",
         ("r = rewards.float().view(-1, group_size)", "r = rewards.float().view(group_size, -1).T"),
         ("centred / (std + eps)).view(-1)", "centred / (std + eps)).T.reshape(-1)")),
    code("a2_credit", "constant-group-nan", "0 / 0 for a constant group (no eps, no special case)",
         "grpo", "group_advantages", ("torch.where(constant, 0.0, centred / (std + eps))",
                                      "(centred / std)")),
    code("a2_credit", "no-std", "advantage r - mean only (not divided by the std)",
         "grpo", "group_advantages", ("centred / (std + eps)", "centred")),
    code("a2_credit", "max-not-min", "max instead of min in the clipped surrogate",
         "grpo", "policy_loss", ("surr = torch.minimum(", "surr = torch.maximum(")),
    code("a2_credit", "gamma-in-one-term", "gamma multiplies only the unclipped term of the min",
         "grpo", "policy_loss",
         ("surr = torch.minimum(r * adv,", "surr = torch.minimum(gamma.float() * r * adv,"),
         ("per_token = gamma.float() * surr", "per_token = surr")),
    code("a2_credit", "no-adv-clip", "advantage clip ignored",
         "grpo", "policy_loss", ("adv = adv.clamp(-adv_clip, adv_clip)", "pass")),
    code("a2_credit", "dual-clip-both-signs", "dual clip floor applied for A > 0 too",
         "grpo", "policy_loss", ("dual = (adv < 0) & (surr < dual_clip * adv)",
                                 "dual = surr < dual_clip * adv")),
    code("a2_credit", "token-mean-always", "seq-mean computed as token-mean",
         "grpo", "policy_loss", ("objective = (per_token.sum(dim=1) / n_tok.clamp(min=1)).mean()",
                                 "objective = per_token.sum() / n_tok.sum().clamp(min=1)")),
    code("a2_credit", "mask-after-exp", "padding masked after exp: NaN gradients from padding",
         "grpo", "policy_loss",
         ("log_r = torch.where(mask, logp.float() - old_logp.float(), torch.zeros_like(m))",
          "log_r = logp.float() - old_logp.float()")),
    code("a2_credit", "loss-sign", "returns J instead of -J",
         "grpo", "policy_loss", ("return -objective,", "return objective,")),
    code("a2_credit", "ratio-detached", "logp detached: the loss has no gradient",
         "grpo", "policy_loss", ("torch.where(mask, logp.float() - old_logp.float()",
                                 "torch.where(mask, logp.detach().float() - old_logp.float()")),
    code("a2_credit", "empty-row-nan", "1/N_i with N_i = 0 for a row without response tokens",
         "grpo", "policy_loss", ("per_token.sum(dim=1) / n_tok.clamp(min=1)",
                                 "per_token.sum(dim=1) / n_tok")),
    # ------------------------------------------------------------------------------- a3_capture
    code("a3_capture", "gqa-modulo", "query head j reads KV head j % Hkv instead of j // G",
         "capture", "add_head_mean", ("queries = query.view(n, hkv, g, q, d)",
                                       "queries = query.view(n, g, hkv, q, d).transpose(1, 2)")),
    code("a3_capture", "no-scale", "scores Q K^T without the scale",
         "capture", "add_head_mean", ("(chunk @ keys_t).mul_(scale)", "(chunk @ keys_t)")),
    code("a3_capture", "sum-heads", "heads summed, not averaged",
         "capture", "add_head_mean", ("add_(head_sum, alpha=1.0 / h)", "add_(head_sum)")),
    code("a3_capture", "overwrite-buffer", "the buffer is assigned, not added to (layers lost)",
         "capture", "add_head_mean",
         ("attn[:, first + s : first + s + c, :k].add_(head_sum, alpha=1.0 / h)",
          "attn[:, first + s : first + s + c, :k] = head_sum / h")),
    code("a3_capture", "mask-polarity", "bool mask read as True = blocked",
         "capture", "add_head_mean", ("blocked = ~mask[:, :, s : s + c]",
                                       "blocked = mask[:, :, s : s + c]")),
    code("a3_capture", "causal-offset", "causal rows counted from 0, not from the first query",
         "capture", "add_head_mean",
         ("rows = torch.arange(first + s, first + s + c", "rows = torch.arange(s, s + c"),
         ("elif first + s < k - 1:", "elif s < k - 1:")),
    code("a3_capture", "mask-first-rows", "every chunk reads the mask of the first rows",
         "capture", "add_head_mean", ("~mask[:, :, s : s + c]", "~mask[:, :, :c]")),
    code("a3_capture", "rows-from-zero", "rows written at s instead of first + s (decode: row 0)",
         "capture", "add_head_mean", ("attn[:, first + s : first + s + c, :k]",
                                       "attn[:, s : s + c, :k]")),
    code("a3_capture", "keys-in-place", "key scaled in place (it is the KV cache)",
         "capture", "add_head_mean", ("keys_t = key.transpose(-1, -2)",
                                       "keys_t = key.mul_(scale).transpose(-1, -2)"),
         ("(chunk @ keys_t).mul_(scale)", "(chunk @ keys_t)")),
    code("a3_capture", "last-columns", "columns written from the right end of the buffer",
         "capture", "add_head_mean", ("first + s + c, :k].add_", "first + s + c, -k:].add_")),
    code("a3_capture", "no-blocked-zeroing", "fully masked rows left uniform, not zeroed",
         "capture", "add_head_mean", ("head_sum.masked_fill_(blocked.all(-1).view(-1, c, 1), 0.0)",
                                       "pass")),
]


# ---------------------------------------------------------------------------- a4_experiment
# The reference solution's produced results, corrupted the way a hurried student would get them
# wrong. Each function edits a solution handout folder in place; `restore` undoes it.


def _solution_script():
    """course/solutions/a4_experiment/report.py as a module (standard library only)."""
    path = make.COURSE / "solutions" / "a4_experiment" / "report.py"
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


def results(name: str, why: str, corrupt: Callable[[Path], None]) -> Bug:
    return Bug("a4_experiment", name, why, corrupt=corrupt)


BUGS += [
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


# --------------------------------------------------------------------------------------------------
# grading the bugs
# --------------------------------------------------------------------------------------------------


@dataclass
class Caught:
    bug: Bug
    score: float
    max_score: float
    failed: list[str]  # test names that failed


def solution_handout(assignment: str, out: Path) -> Path:
    """The handout of `assignment` with the reference solutions in place, every check shipped."""
    return make.build(make.BY_NAME[assignment], out, solutions=True, full_checks=True)


def restore(assignment: make.Assignment, folder: Path) -> None:
    """Put the reference solution back into a solution handout after a bug changed it."""
    for m in assignment.modules:
        shutil.copyfile(ROOT / f"{m.name}.py", folder / f"{m.name}.py")
    if assignment.solution:
        solution = make.COURSE / assignment.solution
        for item in solution.iterdir():
            target = folder / item.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        make._copy(solution, folder)


def grade_bugs(assignment: str, scratch: Path) -> tuple[dict, list[Caught]]:
    """Grade the reference solution, then every bug of `assignment`, in this process."""
    a = make.BY_NAME[assignment]
    folder = solution_handout(assignment, scratch)
    reference = grade.grade(folder)
    caught = []
    for bug in (b for b in BUGS if b.assignment == assignment):
        if bug.corrupt is not None:
            bug.corrupt(folder)
        else:
            (folder / f"{bug.module}.py").write_text(patched_source(bug), encoding="utf-8")
        res = grade.grade(folder)
        failed = [t["name"] for t in res["tests"] if t["score"] < t["max_score"]]
        caught.append(Caught(bug, res["score"], sum(t["max_score"] for t in res["tests"]), failed))
        restore(a, folder)
    return reference, caught


def main(argv: list[str] | None = None) -> None:
    names = (argv if argv is not None else sys.argv[1:]) or [a.name for a in make.ASSIGNMENTS]
    total = missed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            reference, caught = grade_bugs(name, Path(tmp))
            print(f"{name}: reference {reference['score']:g} points")
            for c in caught:
                status = "caught" if c.score < c.max_score else "MISSED"
                print(f"  {status} {c.bug.name:<22} {c.score:g}/{c.max_score:g}  {c.bug.why}")
                for test in c.failed[:3]:
                    print(f"{'':>10}- {test}")
            total += len(caught)
            missed += sum(c.score >= c.max_score for c in caught)
    print(f"{total - missed} of {total} seeded bugs caught")
    if missed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
