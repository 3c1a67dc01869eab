"""benchmarks/real_model.py: docs/real_model.json from hand-made intervene progress files
(no model)."""

import importlib.util
import json
import math

import pytest

from config import ROOT

spec = importlib.util.spec_from_file_location("real_model", ROOT / "benchmarks" / "real_model.py")
real_model = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real_model)

SETTINGS = {"batch": 2, "examples": ["a:1", "a:2", "a:3"], "layers": None, "seed": 0}


def counts(n, changed, broke=0, fixed=0, scored=None):
    return {"n": n, "changed": changed, "reversed": broke + fixed, "broke": broke, "fixed": fixed,
            "scored": n if scored is None else scored}


def write(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def batch(start, conds, no_box=0, seconds=10.0, settings=SETTINGS):
    return {"settings": settings, "start": start, "no_box": no_box, "too_short": 0,
            "counts": conds, "rng": None, "seconds": seconds}


def wilson(k, n, z=1.959963984540054):  # written out here, apart from analysis.intervene's
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return mid - half, mid + half


def test_table1_pools_the_batches_with_wilson_intervals(tmp_path):
    progress = write(tmp_path / "p.jsonl", [
        batch(0, {"high": counts(2, 2, broke=1, scored=1), "low": counts(2, 0)}),
        batch(2, {"high": counts(0, 0), "low": counts(0, 0)}, no_box=1, seconds=5.0)])
    out = real_model.table1(progress)
    high = out["table1"]["high"]
    assert (high["rate"], high["n"]) == (1.0, 2)
    assert (high["lo"], high["hi"]) == pytest.approx(wilson(2, 2))
    assert out["table1"]["low"]["rate"] == 0.0
    reversal = out["table1_reversal"]["high"]  # over the responses with a gold
    assert (reversal["rate"], reversal["n"], reversal["broke"]) == (1.0, 1, 1)
    run = out["table1_run"]
    assert (run["done"], run["finished"]) == (3, True)
    assert (run["skipped_no_box"], run["seconds"]) == (1, 15.0)
    assert run["boxed"]["rate"] == pytest.approx(2 / 3)


def test_a_run_cut_off_is_marked_unfinished_and_mixed_runs_are_refused(tmp_path):
    one = write(tmp_path / "one.jsonl", [batch(0, {"high": counts(2, 1)})])
    assert real_model.table1(one)["table1_run"]["finished"] is False
    other = SETTINGS | {"seed": 1}
    mixed = write(tmp_path / "mixed.jsonl", [batch(0, {"high": counts(2, 1)}),
                                             batch(2, {"high": counts(1, 1)}, settings=other)])
    with pytest.raises(SystemExit, match="several runs"):
        real_model.table1(mixed)


def test_main_adds_the_none_control_and_keeps_the_other_keys(tmp_path):
    out = tmp_path / "real_model.json"
    out.write_text(json.dumps({"memory": {"kept": True}}))
    none = write(tmp_path / "none.jsonl", [batch(0, {"none": counts(2, 1)}),
                                           batch(2, {"none": counts(1, 1)})])
    real_model.main(["--table1-none", str(none), "--out", str(out)])
    got = json.loads(out.read_text())
    assert got["memory"] == {"kept": True}
    assert got["table1_none"]["n"] == 3 and got["table1_none"]["done"] == 3
    assert got["table1_none"]["rate"] == pytest.approx(2 / 3)


def test_memory_files_add_their_configurations(tmp_path):
    out = tmp_path / "real_model.json"
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"smollm2": {"seconds": 1}, "smollm2-bf16": {"seconds": 2}}))
    second.write_text(json.dumps({"smollm2": {"seconds": 3}, "smollm2-accum": {"seconds": 4}}))
    real_model.main(["--memory", str(first), "--out", str(out)])
    real_model.main(["--memory", str(second), "--out", str(out)])
    got = json.loads(out.read_text())["memory"]
    assert got == {"smollm2": {"seconds": 3}, "smollm2-bf16": {"seconds": 2},
                   "smollm2-accum": {"seconds": 4}}
