"""analysis/formats.py: Table 11a's four answer forms (the answer inside each, its grade, the
multiple-choice options), and the accuracy and overlap columns end to end on the shipped tiny
model."""

from pathlib import Path

import pytest
import torch

from analysis.formats import (FORMS, AnswerForm, choice_options, form_accuracy, form_answer,
                              form_prompt, format_overlap, formats_table, graded, with_format)
from dataspec import MATH_INSTRUCTION, Example
from eval import load_model
from tasks import ArithmeticTask

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
FORM = {f.name: f for f in FORMS}


@pytest.fixture(scope="module")
def tiny():
    return load_model(str(ROOT / "tiny" / "qwen3-arith"))


def test_the_papers_four_forms():
    assert [f.name for f in FORMS] == ["answer-only", "full line", "with explanation",
                                       "multiple-choice"]


def test_with_format():
    r = "4*2=8\n3+8=11\n\\boxed{11}"
    assert with_format(r, "x={a}") == "4*2=8\n3+8=11\n\\boxed{x=11}"
    assert with_format(r, FORM["full line"].template) == (
        "4*2=8\n3+8=11\n\\boxed{The final answer is 11.}")
    assert with_format(r, FORM["multiple-choice"].template, "C") == "4*2=8\n3+8=11\n\\boxed{(C) 11}"
    with pytest.raises(ValueError, match="no complete"):
        with_format("4*2=8", "{a}")


@pytest.mark.parametrize("form, inside, answer", [
    ("answer-only", " 11 ", "11"),
    ("full line", "The final answer is 11.", "11"),
    ("full line", "The answer is x = \\frac{1}{2}.", "\\frac{1}{2}"),
    ("full line", "11", "11"),                                  # no sentence: the whole inside
    ("with explanation", "11, since 3+8=11", "11"),
    ("with explanation", "-4 because 2-6=-4", "-4"),
    ("with explanation", "11", "11"),
])
def test_form_answer(form, inside, answer):
    assert form_answer(inside, FORM[form]) == answer


def test_graded_per_form():
    ex = Example("Compute 3+8.", "11")
    assert graded("3+8=11\n\\boxed{11}", ex, FORM["answer-only"], None)
    assert graded("\\boxed{The final answer is 11.}", ex, FORM["full line"], None)
    assert not graded("\\boxed{The final answer is 12.}", ex, FORM["full line"], None)
    assert graded("\\boxed{11, since 3+8=11}", ex, FORM["with explanation"], None)
    # the reason holds the right number, the answer does not
    assert not graded("\\boxed{12, since 3+8=11}", ex, FORM["with explanation"], None)
    assert graded("\\boxed{(B) 11}", ex, FORM["multiple-choice"], "B")
    assert graded("\\boxed{B}", ex, FORM["multiple-choice"], "B")
    assert not graded("\\boxed{(C) 11}", ex, FORM["multiple-choice"], "B")
    assert not graded("no box: 11", ex, FORM["full line"], None)


def test_choice_options():
    """Four distinct options, the gold among them at its letter, distractors from other golds."""
    examples = [Example(f"q{i}", str(g)) for i, g in enumerate([3, 5, 5, 8, 13, 21])]
    opts = choice_options(examples, seed=0)
    assert opts == choice_options(examples, seed=0)
    for e, (options, letter) in zip(examples, opts):
        assert len(set(options)) == 4 and options["ABCD".index(letter)] == e.gold
        assert set(options) <= {"3", "5", "8", "13", "21"}
    assert {letter for _, letter in opts} != {"A"}                     # the gold is not always A
    asked = Example(f"Q?\n{MATH_INSTRUCTION}", "3")
    assert form_prompt(asked, FORM["multiple-choice"], opts[0][0]) == (
        "Q?\n" + "".join(f"({x}) {o}\n" for x, o in zip("ABCD", opts[0][0]))
        + FORM["multiple-choice"].instruction)
    assert form_prompt(asked, FORM["answer-only"]) == asked.prompt     # the prompt as it is
    assert form_prompt(asked, FORM["full line"]).startswith("Q?\nPlease reason")
    with pytest.raises(ValueError, match="4 distinct golds"):
        choice_options(examples[:3], seed=0)


def test_form_accuracy_end_to_end(tiny):
    model, tok = tiny
    examples = ArithmeticTask().examples(6, seed=5)
    acc = form_accuracy(model, tok, examples, max_new_tokens=48)
    assert list(acc) == [f.name for f in FORMS]
    assert all(0.0 <= a <= 1.0 for a in acc.values())
    assert acc["answer-only"] > 0                      # the tiny model answers its own prompts
    # a form that asks for the answer-only box, graded like it, scores like answer-only
    twin = AnswerForm("full line", None, "{a}")
    again = form_accuracy(model, tok, examples, forms=(FORM["answer-only"], twin),
                          max_new_tokens=48)
    assert again["full line"] == again["answer-only"] == acc["answer-only"]


def test_format_overlap_end_to_end(tiny):
    model, tok = tiny
    forms = (FORM["answer-only"], AnswerForm("same", "", "{a}"), FORM["full line"],
             FORM["multiple-choice"])
    out = format_overlap(model, tok, ArithmeticTask().examples(3, seed=5), ratios=(0.4, 1.0),
                         forms=forms, max_new_tokens=48)
    assert out["responses"] == 3 and set(out) == {"responses", "same", "full line",
                                                  "multiple-choice"}
    # the unchanged answer form gives the same flow, hence the same sets
    assert out["same"][0.4] == {"overlap": 1.0, "jaccard": 1.0}
    for name in ("full line", "multiple-choice"):
        # every shared token is in both full sets
        assert out[name][1.0] == {"overlap": 1.0, "jaccard": 1.0}
        assert 0 <= out[name][0.4]["jaccard"] <= out[name][0.4]["overlap"] <= 1
    table = formats_table({"answer-only": 0.5, "full line": 0.25}, out)
    assert "| answer-only | 50.0 | 54.2 | - | - |" in table
    assert "| full line | 25.0 | 51.0 | " in table
