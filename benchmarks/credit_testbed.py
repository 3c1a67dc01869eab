"""The credit-assignment testbed (docs/testbed.md): FlowTracer vs GRPO where token credit has work.

    python benchmarks/credit_testbed.py --jobs 1 --plot docs/testbed_curves.png \
        --json docs/testbed.json --table docs/testbed_table.txt

Each run is `python train.py --credit C --seed S` on the chain task (tasks.ChainTask) from the warm
start tiny/qwen3-chain, with the budget of TESTBED (train.py flags; flags after `--` override them).
The runs of one seed share their first rollout (same model, prompts and sampling RNG), so seeds pair
the strategies. The positive controls `oracle` and `oracle-only` (credit.py: gamma on the tokens the
task knows to decide) show whether the budget can see a credit effect at all; --control-gamma gives
them their own gamma. `flow-band` is flow from the layers of --band (train.py --layers).

Prints, per run, the held-out accuracy before and after and the area under the held-out curve (AUC:
the mean held-out accuracy over the budget, trapezoids between evaluations); per strategy the mean
and sample sd over seeds; against uniform the paired difference with its 95% t-interval and the
smallest difference these seeds can detect (two-sided 5%, power 80%). Then the look inside: on
responses sampled from the warm start, the share of the deciding tokens (tasks.chain_decisions) that
fall in each strategy's 40% set, and in flow's when its graph comes from each single layer, each
third of the layers or all of them (computed first; --inside-only: nothing else). The tables, JSON
and plot are rewritten after every run, so a stopped comparison keeps what it finished; --reuse
keeps the finished runs found in --out whose configuration is the one asked for, with the wall
times --json recorded for them (to redo the statistics, or to finish an interrupted comparison).
The JSON is strict: NaN (an sd of one seed) is written as null.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mpmath
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from credit_seeds import run, summarise

import baselines
import capture
import config
import credit
import grpo
import rollout
import tasks

MODEL = "tiny/qwen3-chain"  # relative to ROOT, where the runs start
RANDOM_DRAWS = 10  # the look inside averages the random set's shares over this many draws
BAND = "flow-band"  # flow from the layers of --band
CREDITS = ["uniform", "flow", "flow-bottom", "random", "entropy", "oracle", "oracle-only"]
# The budget of one run: lr as the embedded default, steps by the time 25 runs take on the shared
# CPU (no result chose them; docs/testbed.md lists the budgets tried since); --ratio and --gamma
# (the paper's config.RATIO 0.4 and config.GAMMA 1.5) are this script's flags.
TESTBED = ["--data", "chain", "--eval-data", "chain", "--model", MODEL,
           "--max-new-tokens", "256", "--prompts-per-step", "8", "--group-size", "8",
           "--steps", "10", "--eval-every", "5", "--lr", "1e-4"]


# --------------------------------------------------------------------------------------------------
# Statistics over seeds


def area_under_curve(curve: list[tuple[int, float]]) -> float:
    """Mean held-out accuracy over the budget: the trapezoid area under (step, accuracy) / steps."""
    if len(curve) < 2:
        return curve[0][1]
    area = sum((s1 - s0) * (a0 + a1) / 2 for (s0, a0), (s1, a1) in itertools.pairwise(curve))
    return area / (curve[-1][0] - curve[0][0])


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with df degrees of freedom: the root of
    F(t) = 1 - I_{df / (df + t^2)}(df / 2, 1 / 2) / 2 = p (mpmath, which sympy brings)."""
    def cdf(t):
        return 1 - mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True) / 2

    return float(mpmath.findroot(lambda t: cdf(t) - p, 1.0))


def paired(diffs: list[float], alpha: float = 0.05, power: float = 0.8) -> dict:
    """Mean paired difference, its sd, the (1 - alpha) t-interval, and the smallest true difference
    a paired t-test on this many seeds detects with `power`:
        detectable = (t_{1 - alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)."""
    n = len(diffs)
    mean = statistics.mean(diffs)
    if n < 2:
        nan = math.nan
        return {"n": n, "mean": mean, "sd": nan, "lo": nan, "hi": nan, "detectable": nan}
    sd = statistics.stdev(diffs)
    t = t_quantile(1 - alpha / 2, n - 1)
    half = t * sd / math.sqrt(n)
    detectable = (t + t_quantile(power, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half,
            "detectable": detectable}


def spread(values: list[float]) -> tuple[float, float]:
    """(mean, sample sd); sd is nan for one value."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def compare(rows: list[dict], credits: list[str], baseline: str = "uniform") -> dict[str, dict]:
    """Per strategy of `credits` that has runs: its seeds and per-seed `after` and `auc` (same
    order), their means and sds, and, paired by seed with the baseline, the difference in final
    accuracy (`diff` with its 95% interval `lo`, `hi`; `sd`, `n`, `detectable` as `paired`) and in
    AUC (`auc_vs_<baseline>`, a `paired` dict)."""
    by = {(r["credit"], r["seed"]): r for r in rows}
    out = {}
    for strategy in credits:
        mine = sorted((r for r in rows if r["credit"] == strategy), key=lambda r: r["seed"])
        if not mine:
            continue
        entry = {"seeds": [r["seed"] for r in mine]}
        for metric in ("after", "auc"):
            entry[metric] = [r[metric] for r in mine]
            entry[f"{metric}_mean"], entry[f"{metric}_sd"] = spread(entry[metric])
        common = [s for s in entry["seeds"] if (baseline, s) in by]
        if strategy != baseline and common:
            def diffs(metric: str) -> list[float]:
                return [by[(strategy, s)][metric] - by[(baseline, s)][metric] for s in common]

            after = paired(diffs("after"))
            entry |= {"diff": after.pop("mean")} | after
            entry[f"auc_vs_{baseline}"] = paired(diffs("auc"))
        out[strategy] = entry
    return out


def plot(rows: list[dict], credits: list[str], path: Path) -> None:
    """Held-out accuracy against step: the mean over seeds with a +-1 sd band per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for strategy in credits:
        curves = [r["curve"] for r in rows if r["credit"] == strategy]
        steps = [s for s, _ in curves[0]]
        acc = torch.tensor([[a for _, a in c] for c in curves])  # [seeds, evaluations]
        mean = acc.mean(0)
        sd = acc.std(0) if len(curves) > 1 else torch.zeros_like(mean)
        ax.plot(steps, mean, label=f"{strategy} ({len(curves)} seeds)")
        ax.fill_between(steps, mean - sd, mean + sd, alpha=0.15)
    ax.set(xlabel="RL step", ylabel="held-out accuracy (greedy)",
           title="chain testbed: mean over seeds, band = +-1 sd")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Look inside: do the strategies' 40% sets hold the deciding tokens? Layer by layer for flow


def layer_sets(num_layers: int) -> dict[str, list[int]]:
    """The attention graphs of the layer table: each single layer, each third of the layers
    (range(k L // 3, (k + 1) L // 3), the middle one is capture.default_layers), all layers."""
    sets = {f"layer {i}": [i] for i in range(num_layers)}
    for k, third in enumerate(("first", "middle", "last")):
        band = list(range(k * num_layers // 3, (k + 1) * num_layers // 3))
        if band:
            sets[f"{third} third"] = band
    return sets | {"all layers": list(range(num_layers))}


def look_inside(model_path: Path, prompts: int, samples: int, seed: int, ratio: float, gamma: float,
                max_new_tokens: int) -> dict:
    """Sample `samples` responses to each of `prompts` held-out problems from the warm start
    (T 0.99, top-k 100, as train.py) and count, over the responses that have an answer (flow's
    target), the share of deciding tokens that each strategy's selected set holds, next to the
    share of all response tokens it holds (random: the mean over RANDOM_DRAWS draws). `sets`: the
    strategies as trained (flow from the default layers); `layers`: flow's top set with its graph
    from each of layer_sets."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="sdpa").eval()
    examples = tasks.chain_heldout()[:prompts]
    with torch.no_grad():
        r = rollout.generate(model, tokenizer, [e.prompt for e in examples], n=samples,
                             temperature=config.TEMPERATURE, top_k=config.TOP_K,
                             max_new_tokens=max_new_tokens,
                             capture=False)
        _, entropy = grpo.token_logprobs(model, r.input_ids, r.attention_mask,
                                         config.TEMPERATURE, return_entropy=True)
    rows = r.answer_mask.any(-1)  # [B] responses with a flow target
    decide = baselines.deciding_tokens(r, tokenizer) & rows[:, None]  # [B, T]
    response = r.response_mask & rows[:, None]  # [B, T]
    generator = torch.Generator().manual_seed(seed)

    def shares(strategy: str) -> dict:
        draws = RANDOM_DRAWS if strategy in ("random", "oracle") else 1
        got = torch.zeros(draws, 2)  # [draws, (deciding, all response tokens)]
        for k in range(draws):
            g = credit.credit_gamma(strategy, r, ratio=ratio, gamma=gamma, entropy=entropy,
                                    generator=generator, tokenizer=tokenizer)
            chosen = g > 1  # [B, T] the strategy's selected set (eq. 6 puts gamma > 1 on it)
            got[k, 0] = (chosen & decide).sum() / decide.sum().clamp(min=1)
            got[k, 1] = (chosen & response).sum() / response.sum().clamp(min=1)
        mean = got.mean(0).tolist()
        return {"deciding_share": mean[0], "token_share": mean[1]}

    out = {"responses": int(rows.sum()), "response_tokens": int(response.sum()),
           "deciding_tokens": int(decide.sum()), "sets": {}, "layers": {}}
    default = capture.default_layers(model.config.num_hidden_layers)
    for name, layers in layer_sets(model.config.num_hidden_layers).items():
        with torch.no_grad():  # the graph of eq. (1) from these layers' attention
            r.attn = capture.capture_attention(model, r.input_ids, r.attention_mask, layers)
        out["layers"][name] = {"layers": layers} | shares("flow")
        if layers == default and "flow" not in out["sets"]:
            out["sets"] |= {s: shares(s) for s in ("flow", "flow-bottom")}
    out["sets"] |= {s: shares(s) for s in ("random", "entropy", "oracle")}
    return out


# --------------------------------------------------------------------------------------------------

# a run's configuration that says where it went, not what it did (`finished` ignores these)
NOT_COMPARED = ("out", "overwrite", "resume", "allow_config_change", "save_every")


def finished(folder: Path, argv: list[str]) -> bool:
    """A run folder whose metrics.jsonl ends with the final evaluation, made with the configuration
    that train.py's flags `argv` give (the model compared by its folder name; a field that the run's
    config.json lacks, one added to train.py since, is not compared)."""
    path = folder / "metrics.jsonl"
    if not path.exists() or not (folder / "config.json").exists():
        return False
    have = json.loads((folder / "config.json").read_text())
    want = dataclasses.asdict(config.parse_args(argv))
    for cfg in (have, want):
        cfg["model"] = Path(cfg["model"]).name
    if any(have[k] != v for k, v in want.items() if k in have and k not in NOT_COMPARED):
        return False
    last = json.loads(path.read_text().splitlines()[-1])
    return last["step"] == want["steps"] and "eval_accuracy" in last


def strategy_flags(strategy: str, control_gamma: float | None,
                   band: list[int] | None) -> tuple[str, list[str]]:
    """(train.py --credit, its own flags) of a strategy of --credits: the controls' gamma, the
    band's layers."""
    if strategy == BAND:
        return "flow", ["--layers", ",".join(map(str, band))]
    if strategy in config.CHAIN_ONLY and control_gamma is not None:
        return strategy, ["--gamma", str(control_gamma)]
    return strategy, []


def table_text(rows: list[dict], credits: list[str], flags: list[str]) -> tuple[str, dict]:
    """The per-run rows and the per-strategy statistics as printed (and written to --table)."""
    lines = [f"train.py {' '.join(flags)}",
             f"{'credit':>12} {'seed':>4} {'before':>7} {'after':>7} {'AUC':>7} {'wall s':>7}"]
    for r in rows:
        lines.append(f"{r['credit']:>12} {r['seed']:>4} {r['before']:7.3f} {r['after']:7.3f} "
                     f"{r['auc']:7.3f} {r['wall_s']:7.0f}")
    table = compare(rows, credits)
    lines.append(f"\n{'credit':>12} {'after':>15} {'AUC':>15}   "
                 "paired vs uniform: mean [95% CI] (detectable)")
    for name, e in table.items():
        line = (f"{name:>12} {e['after_mean']:7.3f} +-{e['after_sd']:.3f} "
                f"{e['auc_mean']:7.3f} +-{e['auc_sd']:.3f}")
        if "diff" in e:
            auc = e["auc_vs_uniform"]
            line += (f"   after {e['diff']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}] "
                     f"({e['detectable']:.3f})   auc {auc['mean']:+.3f} "
                     f"[{auc['lo']:+.3f}, {auc['hi']:+.3f}] ({auc['detectable']:.3f})")
        lines.append(line)
    return "\n".join(lines), table


def markdown_table(table: dict[str, dict]) -> str:
    """The per-strategy statistics as a markdown table (docs/testbed.md, README), controls first."""
    lines = ["| credit | seeds | final (mean +- sd) | AUC (mean +- sd) | final - uniform, paired "
             "[95% CI] (detectable) | AUC - uniform [95% CI] |", "|---" * 6 + "|"]
    order = [c for c in table if c in config.CHAIN_ONLY] + [c for c in table
                                                           if c not in config.CHAIN_ONLY]
    for name in order:
        e = table[name]
        row = (f"| {name} | {len(e['seeds'])} | {e['after_mean']:.3f} +- {e['after_sd']:.3f} | "
               f"{e['auc_mean']:.3f} +- {e['auc_sd']:.3f} |")
        if "diff" in e:
            auc = e["auc_vs_uniform"]
            row += (f" {e['diff']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}] ({e['detectable']:.3f}) |"
                    f" {auc['mean']:+.3f} [{auc['lo']:+.3f}, {auc['hi']:+.3f}] |")
        else:
            row += " - | - |"
        lines.append(row)
    return "\n".join(lines)


def inside_text(inside: dict) -> str:
    """The look inside as printed."""
    head = (f"look inside: {inside['responses']} warm-start responses with an answer, "
            f"{inside['deciding_tokens']} deciding tokens among {inside['response_tokens']} "
            "response tokens")
    lines = [head]
    for strategy, s in inside["sets"].items():
        lines.append(f"{strategy:>12}: {s['deciding_share']:.3f} of the deciding tokens, "
                     f"{s['token_share']:.3f} of all response tokens")
    lines.append("flow's top set by the layers of its graph:")
    for name, s in inside["layers"].items():
        lines.append(f"{name:>12} {str(s['layers']):>12}: {s['deciding_share']:.3f} of the "
                     f"deciding tokens, {s['token_share']:.3f} of all response tokens")
    return "\n".join(lines)


def without_nan(x):
    """x with every float NaN (an sd of one seed, an unknown wall time) as None: strict JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: without_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [without_nan(v) for v in x]
    return x


def earlier_walls(path: Path | None) -> dict[tuple[str, int], float]:
    """(strategy, seed) -> wall_s of the runs an earlier write of --json recorded (a resumed
    comparison keeps the wall times of the runs it reuses)."""
    if path is None or not path.exists():
        return {}
    runs = json.loads(path.read_text()).get("runs", [])
    return {(r["credit"], r["seed"]): r["wall_s"] for r in runs if r.get("wall_s") is not None}


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so a cut never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--credits", nargs="+", default=CREDITS,
                    help=f"strategies of credit.py, or {BAND} (with --band)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (0: torch's)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "credit_testbed")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs found in --out")
    ap.add_argument("--look-inside", type=int, default=64, metavar="PROMPTS", help="0: skip")
    ap.add_argument("--inside-only", action="store_true", help="the look inside, no runs")
    ap.add_argument("--samples", type=int, default=4, help="responses per look-inside prompt")
    ap.add_argument("--ratio", type=float, default=config.RATIO,
                    help="train.py --ratio, look inside")
    ap.add_argument("--gamma", type=float, default=config.GAMMA,
                    help="train.py --gamma, look inside")
    ap.add_argument("--control-gamma", type=float,
                    help="train.py --gamma of oracle and oracle-only (default: --gamma)")
    ap.add_argument("--band", type=int, nargs="+", metavar="LAYER", help=f"{BAND}'s layers")
    ap.add_argument("--plot", type=Path, help="write the curves with +-1 sd bands here (PNG)")
    ap.add_argument("--json", type=Path, help="write every run and the statistics here")
    ap.add_argument("--table", type=Path, help="write the printed tables here (text)")
    ap.add_argument("extra", nargs="*", help="train.py flags after --, overriding TESTBED")
    args = ap.parse_args()
    if "uniform" not in args.credits:
        ap.error("--credits must include uniform, the baseline of the paired comparison")
    if (BAND in args.credits) != (args.band is not None):
        ap.error(f"--band and {BAND} in --credits go together")
    flags = TESTBED + ["--ratio", str(args.ratio), "--gamma", str(args.gamma)] + args.extra
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)  # the look inside runs in this process

    inside = None
    if args.look_inside or args.inside_only:  # first: it is quick, and a cut comparison keeps it
        inside = look_inside(ROOT / MODEL, args.look_inside or 64, args.samples, seed=0,
                             ratio=args.ratio, gamma=args.gamma, max_new_tokens=256)
        print(inside_text(inside) + "\n", flush=True)
    jobs = [] if args.inside_only else [(c, s) for s in args.seeds for c in args.credits]
    own = {c: strategy_flags(c, args.control_gamma, args.band) for c in args.credits}
    walls = earlier_walls(args.json) if args.reuse else {}

    def one(job: tuple[str, int]) -> dict:
        strategy, seed = job
        name, extra = own[strategy]
        folder = args.out / f"{strategy}-seed{seed}"
        if args.reuse and finished(folder, ["--credit", name, "--seed", str(seed)] + flags + extra):
            row = summarise(folder, strategy, seed) | {"wall_s": walls.get(job, math.nan)}
        else:
            row = run(name, seed, args.out, args.threads or None, flags + extra, label=strategy)
        return row | {"auc": area_under_curve(row["curve"])}

    def write(rows: list[dict]) -> str:
        """The tables, JSON and plot of the runs finished so far (after every run)."""
        text, table = table_text(rows, args.credits, flags)
        minutes = (time.perf_counter() - start) / 60
        state = ("no runs (--inside-only)" if not jobs else f"complete: {len(rows)} runs"
                 if len(rows) == len(jobs) else f"partial: {len(rows)} of {len(jobs)} runs")
        text += (f"\n{state} in {minutes:.1f} min wall ({args.jobs} at a time, "
                 f"{args.threads or 'all'} thread(s) each)")
        if rows:
            text += "\n\n" + markdown_table(table)
        if inside:
            text += "\n\n" + inside_text(inside)
        if args.table:
            write_atomic(args.table, text + "\n")
        if args.json:
            write_atomic(args.json, json.dumps(without_nan(
                {"state": state, "flags": flags,
                 "strategy_flags": {c: ["--credit", n, *e] for c, (n, e) in own.items()},
                 "runs": rows} | table
                | {"look_inside": inside, "runs_wall_s": time.perf_counter() - start}), indent=1))
        if args.plot and rows:
            plot(rows, [c for c in args.credits if any(r["credit"] == c for r in rows)],
                 args.plot)
        return text

    rows = []
    text = write(rows)
    with ThreadPoolExecutor(args.jobs) as pool:  # seed-major: a stopped comparison leaves pairs
        for row in pool.map(one, jobs):
            rows.append(row)
            text = write(rows)
    print(text)


if __name__ == "__main__":
    main()
