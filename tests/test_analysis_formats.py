"""analysis/formats.py: the answer form changes inside the box only, and Table 11a end to end on the
shipped tiny model."""

from pathlib import Path

import pytest
import torch

from analysis.formats import format_overlap, with_format
from eval import load_model
from tasks import ArithmeticTask

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return load_model(str(ROOT / "tiny" / "qwen3-arith"))


def test_with_format():
    r = "4*2=8\n3+8=11\n\\boxed{11}"
    assert with_format(r, "x={a}") == "4*2=8\n3+8=11\n\\boxed{x=11}"
    assert with_format(r, "{a}.") == "4*2=8\n3+8=11\n\\boxed{11.}"
    with pytest.raises(ValueError, match="no complete"):
        with_format("4*2=8", "{a}")


def test_format_overlap_end_to_end(tiny):
    model, tok = tiny
    formats = {"answer-only": "{a}", "same": "{a}", "equation": "x={a}"}
    out = format_overlap(model, tok, ArithmeticTask().examples(3, seed=5), ratios=(0.4, 1.0),
                         formats=formats, max_new_tokens=48)
    assert out["responses"] == 3 and set(out) == {"responses", "same", "equation"}
    # the unchanged answer form gives the same flow, hence the same sets
    assert out["same"][0.4] == {"overlap": 1.0, "jaccard": 1.0}
    # every shared token is in both full sets
    assert out["equation"][1.0] == {"overlap": 1.0, "jaccard": 1.0}
    assert 0 <= out["equation"][0.4]["jaccard"] <= out["equation"][0.4]["overlap"] <= 1
