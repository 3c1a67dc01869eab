"""Tests of rewards.py: answer region, math / Countdown / choice verifiers, hostile inputs, golds."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rewards  # noqa: E402
from rewards import answer_span  # noqa: E402

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"


def inside(response: str, **kw) -> str | None:
    span = answer_span(response, **kw)
    return None if span is None else response[span[0] : span[1]]


# ---------------------------------------------------------------------------------------------
# answer_span
# ---------------------------------------------------------------------------------------------


def test_answer_span_simple_offsets():
    # "So \boxed{42}." : the 4 of 42 is at index 10 ("So " 3 chars + "\boxed{" 7 chars).
    assert answer_span("So \\boxed{42}.") == (10, 12)


def test_answer_span_nested_braces():
    r = "x = \\boxed{\\frac{1}{2}} done"
    assert inside(r) == "\\frac{1}{2}"
    # escaped braces are literal, not grouping: the box closes at the last plain "}".
    r = "\\boxed{\\{1, 2\\}}"
    assert inside(r) == "\\{1, 2\\}"
    # a LaTeX line break "\\" right before a brace does not escape the brace.
    assert inside("\\boxed{a\\\\{b}}") == "a\\\\{b}"


def test_answer_span_several_boxes_takes_last():
    r = "first \\boxed{1}, then \\fbox{2}, finally \\boxed{3} and text"
    assert inside(r) == "3"
    # the outer box of a nested pair closes last, so it is the answer region.
    assert inside("\\boxed{\\boxed{5}}") == "\\boxed{5}"
    # a later box that never closes (truncated response) does not count.
    assert inside("\\boxed{7} then \\boxed{8") == "7"


def test_answer_span_box_inside_text():
    r = "$\\text{the answer is \\boxed{12}}$"
    assert inside(r) == "12"


def test_answer_span_answer_tag_when_no_box():
    r = "<think>try 1+2</think> <answer> (1 + 2) * 3 </answer>"
    assert inside(r) == " (1 + 2) * 3 "
    # a box wins over the tag
    assert inside("<answer>\\boxed{9}</answer>") == "9"


def test_answer_span_no_box_fallbacks():
    r = "some reasoning\nthe answer is 7  \n\n  "
    assert inside(r) == "the answer is 7"
    assert answer_span(r, fallback=None) is None
    # an empty box is no answer
    assert answer_span("\\boxed{ }", fallback=None) is None
    assert answer_span("   \n  ") is None
    assert answer_span("") is None
    with pytest.raises(ValueError, match="fallback"):
        answer_span("x", fallback="first_line")


def test_answer_span_linear_on_hostile_text():
    # 20,000 unclosed boxes and 20,000 unclosed tags: must not go quadratic (no time assert, a
    # quadratic scan here would take minutes and trip the suite's timeout).
    r = "\\boxed{" * 20_000 + "<answer>" * 20_000
    assert answer_span(r, fallback=None) is None
    r = "\\boxed{" * 20_000 + "1" + "}" * 20_000
    assert answer_span(r) == (7, len(r) - 1)
