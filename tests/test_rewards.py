"""Tests of rewards.py: answer region, math / Countdown / choice verifiers, benchmark golds.

Refusals, the deadline and score_batch's worker pool are tested in test_sandbox.py.
"""
from __future__ import annotations

import itertools
import json
import random
import re
import sys
from fractions import Fraction
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import normalise  # noqa: E402
import rewards  # noqa: E402
from countdown_solver import solve_countdown  # noqa: E402
from rewards import answer_span, choice_reward, countdown_reward, math_reward  # noqa: E402

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
    # The paper's answer region is the box: without one there is none by default (the flow has
    # no target and flow credit leaves the row at gamma 1); the last line is an explicit option.
    r = "some reasoning\nthe answer is 7  \n\n  "
    assert answer_span(r) is None
    assert inside(r, fallback="last_line") == "the answer is 7"
    # an empty box is no answer
    assert answer_span("\\boxed{ }") is None
    assert answer_span("\\boxed{ }", fallback="last_line") == (0, 9)
    assert answer_span("   \n  ", fallback="last_line") is None
    assert answer_span("", fallback="last_line") is None
    with pytest.raises(ValueError, match="fallback"):
        answer_span("x", fallback="first_line")


def test_answer_span_linear_on_hostile_text():
    # 20,000 unclosed boxes and 20,000 unclosed tags: must not go quadratic (no time assert, a
    # quadratic scan here would take minutes and trip the suite's timeout).
    r = "\\boxed{" * 20_000 + "<answer>" * 20_000
    assert answer_span(r, fallback=None) is None
    r = "\\boxed{" * 20_000 + "1" + "}" * 20_000
    assert answer_span(r) == (7, len(r) - 1)


def test_answer_span_tag_versus_box_order():
    # a box in the reasoning, then the TinyZero answer tag: the tag comes last and wins.
    r = "<think>maybe \\boxed{3}</think><answer>1 + 2</answer>"
    assert inside(r) == "1 + 2"
    # a tag followed by a later box: the box wins.
    assert inside("<answer>1</answer> so \\boxed{2}") == "2"


# ---------------------------------------------------------------------------------------------
# math_reward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("\\frac{1}{2}", "0.5"),
        ("\\dfrac12", "\\frac{1}{2}"),
        ("x = 5", "5"),
        ("5 \\text{ cm}", "5"),
        ("\\text{18 dollars}", "18"),
        ("18 dollars", "18"),
        ("1,000", "1000"),
        ("10080", "10,\\!080"),
        ("50\\%", "50"),
        ("336", "336^\\circ"),
        ("336°", "336"),
        ("5.", "5"),
        ("2\\sqrt{2}", "\\sqrt{8}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("[1, 2)", "[1,2)"),
        ("\\{3, 1\\}", "1,3"),
        ("27", 27.0),  # AMC23 golds are floats
        ("25", "025"),  # AIME24 gold strings keep leading zeros
        ("69, 84", ["$69$,$84$"]),  # OlympiadBench: a list holding "$..$"-wrapped answers
        ("7", ["3", "7"]),  # a list is a set of acceptable answers
        # currency, as a grader reads it (issue 13: "\\$18" used to become "\\18" and score 0)
        ("\\$18", "18"),
        ("18", "\\$18"),
        ("36", "\\$36"),  # MATH500 golds
        ("18.90", "\\$18.90"),
        ("32348", "\\$32,\\!348"),
        ("\\$32,\\!348", "32348"),
        ("US\\$18", "18"),
        ("18 USD", "18"),
        ("€18", "18"),
        ("\\pounds 18", "18"),
        ("\\text{\\$}18", "18"),
        ("\\$\\frac{1}{2}", "0.5"),
        ("5 \\quad", "5"),
        # unicode, NFKC (issue 13: fullwidth digits scored 0)
        ("５", "5"),
        ("１２.５", "12.5"),
        ("x²+1", "x^2+1"),
        ("½", "0.5"),
        ("−3", "-3"),
        # issue 22: scientific notation (math-verify read 4.5e33 as 4.5 * e * 33)
        ("4.5 \\times 10^{33}", "4.5e33"),
        ("4.5e33", "4.5 \\times 10^{33}"),
        ("10^{-7}", 1e-7),  # a float gold's repr is 1e-07
        ("0.0000001", 1e-7),
        ("16 \\times 10^{-20}", "1.6e-19"),  # relative tolerance: equal values still equal
        ("0.00000010", "10^{-7}"),
        ("1\\,000", "1000"),  # digit groups
        ("1\\,000\\,000", "10^6"),
        ("1\u2009000", "1000"),  # a thin space
        ("12.5\\%", "12.5"),  # a percentage on one side only, as math-verify's 50\\% = 50
        ("12.5", "12.5\\%"),
        ("12.5\\%", "0.125"),
        ("\\emptyset", "\\varnothing"),
        ("\\varnothing", "\\{\\}"),
        ("(" * 15 + "1" + ")" * 15, "1"),  # used to run out the 1 s deadline
        ("\\left(" * 15 + "1" + "\\right)" * 15, "1"),
    ],
)
def test_math_reward_equivalent(pred, gold):
    assert math_reward(f"so the answer is \\boxed{{{pred}}}.", gold) == 1.0


@pytest.mark.parametrize(
    "response, gold",
    [
        ("\\boxed{6}", "5"),
        ("\\boxed{(2, 1)}", "(1, 2)"),  # ordered tuples
        ("\\boxed{[1, 2]}", "[1,2)"),  # interval ends matter
        ("\\boxed{x+1}", "x+2"),
        ("the answer is 5", "5"),  # no box
        ("\\boxed{5", "5"),  # box never closes
        ("\\boxed{5} wait, no: \\boxed{6}", "5"),  # the last box counts
        ("\\boxed{}", "5"),
        ("\\boxed{1/0}", "1"),
        ("\\boxed{\\frac{1}{0}}", "0"),
        ("\\boxed{\\$19}", "18"),  # the dollar sign goes, the number still counts
        ("\\boxed{x₂}", "x2"),  # a subscript is not a digit: x_{2}, not x2
        ("\\boxed{x²}", "x2"),  # nor is a superscript
        ("\\boxed{６}", "5"),
        # issue 22: e-5 is Euler's e minus 5, not 1e-5; small values are compared relatively
        ("\\boxed{e-5}", "1e-5"),
        ("\\boxed{1.6 \\times 10^{-19}}", "3.2 \\times 10^{-19}"),
        ("\\boxed{0.0000004}", "0.0000001"),
        ("\\boxed{2 \\times 10^{-7}}", 1e-7),
        ("\\boxed{1.600001e-19}", "1.6e-19"),  # 7 significant digits: past the tolerance
        ("\\boxed{4.6e33}", "4.5 \\times 10^{33}"),
        ("\\boxed{12.5\\%}", "13"),
        ("\\boxed{0.125}", "12.5"),
    ],
)
def test_math_reward_wrong(response, gold):
    assert math_reward(response, gold) == 0.0


def test_normalise_answer_keeps_escapes_whole():
    """Token by token: no rule removes half of an escape such as the line break "\\\\"."""
    norm = normalise.normalise_answer
    assert norm("\\$18") == "18"
    assert norm("\\$32,\\!348") == "32,\\!348"
    assert norm("a \\\\ b$") == "a \\\\ b"  # "\\\\" then "$": the line break stays
    assert norm("\\{1, 2\\}.") == "\\{1, 2\\}"  # the escaped brace stays
    assert norm("5\\,") == "5"
    assert norm("\\quadrant") == "\\quadrant"  # a command that starts like \\quad is no space
    assert norm("x²") == "x^{2}" and norm("a₁₂") == "a_{12}"


def test_normalise_answer_issue_22_forms():
    norm = normalise.normalise_answer
    assert norm("4.5e33") == norm("4.5E+33") == "4.5 \\times 10^{33}"
    assert norm("1e-07") == "1 \\times 10^{-07}"
    assert norm("2e") == "2e" and norm("x1e5") == "x1e5" and norm("e-5") == "e-5"
    assert norm("1\\,000") == "1000" and norm("1\\,00") == "1\\,00"  # groups of three only
    assert norm("((x))") == "(x)" and norm("{{{1}}}") == "{1}" and norm("((1), 2)") == "((1), 2)"
    assert norm("[1, 2)") == "[1, 2)" and norm("\\{\\{1\\}\\}") == "\\{\\{1\\}\\}"
    assert norm("\\left(\\left(1\\right)\\right)") == "(1)"
    assert norm("\\left\\{1\\right\\}") == "\\left\\{1\\right\\}"


def test_minerva_scientific_golds():
    """Minerva writes 58 of its 272 golds as 4.5e33: the answer 4.5 \\times 10^{33} scores 1 (it
    scored 0: math-verify read e as Euler's number), and twice the value scores 0."""
    golds = [rewards.gold_of(row) for row in _rows("minerva_math_test")]
    scientific = [g for g in golds if normalise._SCI_NOTATION.fullmatch(g)]
    assert len(scientific) == 58
    for gold in scientific:
        mantissa, exponent = gold.lower().split("e")
        written = f"{mantissa} \\times 10^{{{int(exponent)}}}"
        assert math_reward(f"\\boxed{{{written}}}", gold) == 1.0, gold
        assert math_reward(f"\\boxed{{{2 * float(mantissa)}e{exponent}}}", gold) == 0.0, gold


def test_math_reward_refuses_hostile_golds():
    """A gold is refused as an answer would be (a 9^{9^{9^{9}}} gold took 6.9 s in sympy), and the
    loaders' check parses the gold (the old one scored an empty response, which returns before
    the gold is read)."""
    with pytest.raises(ValueError, match=r"gold '9\^\{9\^\{9\^\{9\}\}\}' is refused .*tower"):
        math_reward("\\boxed{1}", "9^{9^{9^{9}}}")
    with pytest.raises(ValueError, match=r"^math_reward: gold '7777777777.*\(1002 chars\) is "
                                         r"refused as an answer would be: a number with more"):
        math_reward("\\boxed{1}", "7" * 1000)
    with pytest.raises(ValueError, match=r"^math-verify reads nothing in gold '\}\{'"):
        rewards.check_gold("math", "}{")
    assert math_reward("\\boxed{1}", "}{") == 0.0  # what the old check saw: no error
    rewards.check_gold("math", ["1", "\\frac{1}{2}"])
    with pytest.raises(ValueError, match="letter"):
        rewards.check_gold("choice", "four")


def test_math_reward_bad_gold_is_an_error():
    with pytest.raises(TypeError, match="gold"):
        math_reward("\\boxed{1}", None)
    with pytest.raises(ValueError, match="empty"):
        math_reward("\\boxed{1}", [])
    with pytest.raises(ValueError, match="finite"):
        math_reward("\\boxed{1}", float("nan"))


# ---------------------------------------------------------------------------------------------
# Countdown
# ---------------------------------------------------------------------------------------------


def test_parse_countdown_exact():
    # (96 - 74) * 7 / 2 = 22 * 7 / 2 = 77, with left-to-right * and /
    assert rewards.parse_countdown("(96 - 74) * 7 / 2") == (Fraction(77), [96, 74, 7, 2])
    # 1 / 3 * 3 is exactly 1 in rationals (floats give 1.0 too, but 1/3 + 1/3 + 1/3 shows exactness)
    assert rewards.parse_countdown("1 / 3 + 1 / 3 + 1 / 3")[0] == 1
    assert rewards.parse_countdown("8 - 2 - 1")[0] == 5  # left associative
    assert rewards.parse_countdown("2 \\times 3 \\div 4")[0] == Fraction(3, 2)
    for bad in ["1 / (2 - 2)", "2 ** 3", "-1 + 2", "1.5 + 2", "(1 + 2", "1 + 2)", "abs(1)", "1 2",
                "", "__import__('os')", "(" * 60 + "1" + ")" * 60]:
        with pytest.raises(rewards.ExpressionError):
            rewards.parse_countdown(bad)


@pytest.mark.parametrize(
    "answer, reward",
    [
        ("<answer>(96 - 74) * 7 / 2 - 22</answer>", 0.0),  # 22 uses a number not given
        ("<answer>74 - (96 + 37) / 7</answer>", 1.0),  # 74 - 133/7 = 74 - 19 = 55
        ("<answer>74 - (96 + 37) / 7 + 0</answer>", 0.0),  # 0 not given
        ("<answer>74 - (96 + 37 + 37) / 7</answer>", 0.0),  # 37 twice and 7... not all used once
        ("<answer>96 - 37 - 74 + 7</answer>", 0.0),  # all used once, but -8
        ("<answer>74 - (96 + 37) / 7 = 55</answer>", 0.0),  # TinyZero: the expression only
        ("<answer>seventy-four</answer>", 0.0),
        ("74 - (96 + 37) / 7", 0.0),  # no answer tag or box
        ("\\boxed{74 - (96 + 37) / 7}", 1.0),
        ("<answer>\\boxed{74 - (96 + 37) / 7}</answer>", 1.0),
        ("<answer>74 - (96 + 37) / (7 - 7)</answer>", 0.0),  # division by zero
    ],
)
def test_countdown_reward(answer, reward):
    assert countdown_reward(answer, [96, 7, 37, 74], 55) == reward


def test_countdown_reward_unicode():
    # NFKC, as in math_reward: fullwidth digits and operators are ASCII; superscripts are no digit
    fullwidth = "<answer>７４ － （９６ ＋ ３７） ／ ７</answer>"
    assert countdown_reward(fullwidth, [96, 7, 37, 74], 55) == 1.0
    assert countdown_reward("<answer>7² + 6</answer>", [7, 2, 6], 55) == 0.0  # 7^{2}: no **


def test_countdown_reward_bad_numbers_is_an_error():
    with pytest.raises(TypeError, match="numbers"):
        countdown_reward("<answer>1</answer>", [1.5], 1)


def _all_values(numbers: list[int]) -> set[Fraction]:
    """Independent slow enumeration: every permutation, every operator triple, and every
    parenthesisation of 3 or 4 numbers, written out as text and evaluated by parse_countdown."""
    shapes = {3: ["(a o b) o c", "a o (b o c)"],
              4: ["((a o b) o c) o d", "(a o (b o c)) o d", "(a o b) o (c o d)",
                  "a o ((b o c) o d)", "a o (b o (c o d))"]}[len(numbers)]
    values = set()
    for perm in itertools.permutations(numbers):
        for ops in itertools.product("+-*/", repeat=len(numbers) - 1):
            for shape in shapes:
                text = shape
                for name, n in zip("abcd", perm):
                    text = text.replace(name, str(n))
                for op in ops:
                    text = text.replace("o", op, 1)
                try:
                    values.add(rewards.parse_countdown(text)[0])
                except rewards.ExpressionError:
                    pass
    return values


def test_solve_countdown_is_complete_against_enumeration():
    rng = random.Random(0)
    for _ in range(20):
        numbers = [rng.randint(1, 20) for _ in range(rng.choice([3, 4]))]
        reachable = _all_values(numbers)
        for target in range(1, 60):
            expression = solve_countdown(numbers, target)
            assert (expression is not None) == (Fraction(target) in reachable), (numbers, target)
            if expression is not None:
                assert countdown_reward(f"<answer>{expression}</answer>", numbers, target) == 1.0


# ---------------------------------------------------------------------------------------------
# choice_reward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response, reward",
    [
        ("so \\boxed{F}", 1.0),
        ("\\boxed{(F)}", 1.0),
        ("\\boxed{\\text{F}}", 1.0),
        ("\\boxed{f}", 1.0),
        ("\\boxed{F: Kantian ethics focus on the categorical imperative}", 1.0),
        ("\\boxed{B}", 0.0),
        ("\\boxed{F} no wait \\boxed{B}", 0.0),
        ("\\boxed{Fish}", 0.0),
        ("the answer is F", 0.0),  # no box: no fallback for rewards
        ("\\boxed{Ｆ}", 1.0),  # fullwidth, NFKC (issue 13)
        ("\\boxed{（Ｆ）}", 1.0),
        ("\\boxed{(F) Kantian ethics}", 1.0),
        # issue 22: a hedge naming a second option scores 0 (it scored 1)
        ("\\boxed{(F) or (B)}", 0.0),
        ("\\boxed{(B) or (F)}", 0.0),
        ("\\boxed{F, B}", 0.0),
        ("\\boxed{F/B}", 0.0),
        ("\\boxed{F and B}", 0.0),
        ("\\boxed{(F)(B)}", 0.0),
        ("\\boxed{\\text{F} or \\text{B}}", 0.0),
    ],
)
def test_choice_reward(response, reward):
    gold = "F: Kantian ethics focus on the categorical imperative."
    assert choice_reward(response, gold) == reward
    assert choice_reward(response, "F") == reward


def test_choice_reward_bad_gold():
    with pytest.raises(ValueError, match="letter"):
        choice_reward("\\boxed{A}", "Kantian")


# ---------------------------------------------------------------------------------------------
# Benchmark golds (../shared/benchmarks; skipped when absent)
# ---------------------------------------------------------------------------------------------

MATH_SETS = ["math500_test", "gsm8k_test", "amc23_test", "aime24_test", "aime25_test",
             "olympiadbench_test", "minerva_math_test"]
_NUMBER = re.compile(r"-?[\d,]*\d(?:\.\d+)?")


def _rows(name: str) -> list[dict]:
    path = BENCH / f"{name}.jsonl"
    if not path.exists():
        pytest.skip(f"benchmark file {path} absent")
    return [json.loads(line) for line in path.open()]


def _first(gold) -> str:
    return str(gold[0] if isinstance(gold, list) else gold).strip().strip("$")


def _wrong_answer(golds: list, i: int) -> str:
    """A clearly wrong answer for item i: a plain number plus one, else the next different gold."""
    s = _first(golds[i])
    if re.fullmatch(r"-?\d+(?:\.0+)?", s):
        return str(int(float(s)) + 1)
    j = (i + 1) % len(golds)
    while _first(golds[j]) == s:
        j = (j + 1) % len(golds)
    return _first(golds[j])


def _gold_failures(golds: list) -> list[tuple]:
    """Every way each gold of a set should score 1 (or 0) and does not.

    Right: \\boxed{gold}; for integer golds also \\frac{2g}{2} (forces the sympy path instead of the
    string shortcut); for numeric golds (and MATH500's \\$ golds) a dollar sign on either side:
    \\boxed{\\$g} against the gold and \\boxed{g} against the gold \\$g (issue 13). Wrong: a clearly
    wrong answer scores 0."""
    failures = []
    for i, gold in enumerate(golds):
        s = _first(gold)
        right = [(s, gold)]
        if re.fullmatch(r"-?\d+(?:\.0+)?", s):
            right.append((f"\\frac{{{2 * int(float(s))}}}{{2}}", gold))
        bare = s.removeprefix("\\$")
        if _NUMBER.fullmatch(bare):
            right += [(f"\\${bare}", gold), (bare, f"\\${bare}")]
        failures += [("right", i, g, r) for r, g in right
                     if math_reward(f"So \\boxed{{{r}}}.", g) != 1.0]
        wrong = _wrong_answer(golds, i)
        if math_reward(f"So \\boxed{{{wrong}}}.", gold) != 0.0:
            failures.append(("wrong", i, s, wrong))
    return failures


@pytest.mark.parametrize("name", MATH_SETS)
def test_benchmark_golds(name):
    """Every gold of each math set: see `_gold_failures`."""
    golds = [rewards.gold_of(row) for row in _rows(name)]
    failures = _gold_failures(golds)
    print(f"{name}: {len(golds)} golds, failures: {failures}")
    assert failures == []


def test_dapo_golds():
    """The DAPO-Math-17K training golds (17,917): a seeded sample of 1,000, to keep the suite
    fast (benchmarks/reward_bench.py --golds checks all of them)."""
    golds = [rewards.gold_of(row) for row in _rows("dapo_math_17k")]
    sample = random.Random(0).sample(golds, 1000)
    assert _gold_failures(sample) == []


def test_countdown_test_set_solver_and_reward():
    """For every item of countdown_tinyzero_test.jsonl the solver's expression scores 1 whenever it
    finds one (completeness is checked against enumeration above); corrupting it scores 0."""
    rows = _rows("countdown_tinyzero_test")
    unsolved = 0
    for row in rows:
        truth = row["reward_model"]["ground_truth"]
        numbers, target = truth["numbers"], truth["target"]
        expression = solve_countdown(numbers, target)
        if expression is None:
            unsolved += 1
            continue
        response = f"<think>...</think>\n<answer>{expression}</answer>"
        assert countdown_reward(response, numbers, target) == 1.0
        # use the first number twice instead of the last one: wrong numbers
        twice = expression[::-1].replace(str(numbers[-1])[::-1], str(numbers[0])[::-1], 1)[::-1]
        if numbers[-1] != numbers[0]:
            assert countdown_reward(f"<answer>{twice}</answer>", numbers, target) == 0.0, twice
    print(f"countdown test set: {len(rows)} items, {len(rows) - unsolved} solved, "
          f"{unsolved} without a solution")
    assert unsolved < len(rows)


def test_crossthinkqa_golds():
    rows = _rows("crossthinkqa_roll_sample811")
    for row in rows:
        letter = row["ground_truth"][0]
        other = "A" if letter != "A" else "B"
        gold = row["ground_truth"]
        assert choice_reward(f"... \\boxed{{{letter}}}", gold) == 1.0, gold
        assert choice_reward(f"... \\boxed{{{other}}}", gold) == 0.0, gold
