"""Tests of the synthetic arithmetic task (tasks.py): right answers, the wrong teacher, the worked
solutions."""

import random

import data
import rewards
import tasks


def test_answers_match_an_independent_evaluator():
    task, rng = tasks.ArithmeticTask(), random.Random(0)
    for _ in range(500):
        numbers, ops = task.sample(rng)
        expression = tasks.expression(numbers, ops)
        value, literals = rewards.parse_countdown(expression)  # precedence by grammar
        assert literals == numbers
        assert task.problem(numbers, ops).answer == str(value)


def test_traces_are_verifiable_and_the_wrong_teacher_is_wrong_only_where_precedence_matters():
    task, rng = tasks.ArithmeticTask(), random.Random(1)
    differs = 0
    for _ in range(500):
        numbers, ops = task.sample(rng)
        gold = task.problem(numbers, ops).answer
        right = tasks.worked_solution(numbers, ops)
        wrong = tasks.worked_solution(numbers, ops, precedence=False)
        assert rewards.math_reward(right, gold) == 1.0
        assert right.endswith(f"\\boxed{{{gold}}}")
        if not tasks.precedence_matters(ops):
            assert wrong == right
        elif rewards.math_reward(wrong, gold) == 0.0:
            differs += 1
    assert differs > 100  # the wrong procedure really gives wrong answers on many problems


def test_hand_examples():
    numbers, ops = [3, 4, 2, 5], ["+", "*", "-"]
    assert tasks.worked_solution(numbers, ops) == "4*2=8\n3+8=11\n11-5=6\n\\boxed{6}"
    wrong = "3+4=7\n7*2=14\n14-5=9\n\\boxed{9}"
    assert tasks.worked_solution(numbers, ops, precedence=False) == wrong
    assert tasks.precedence_matters(["+", "*"]) and not tasks.precedence_matters(["*", "+", "-"])
    assert tasks.ArithmeticTask().problems(3, seed=7) == tasks.ArithmeticTask().problems(3, seed=7)


def test_examples_are_distinct_and_avoid_the_excluded_set():
    task = tasks.ArithmeticTask()
    held_out = task.examples(300, seed=1)
    train = task.examples(2000, seed=2, exclude=frozenset(e.prompt for e in held_out))
    prompts = [e.prompt for e in train]
    assert len(set(prompts)) == len(prompts) == 2000
    assert not set(prompts) & {e.prompt for e in held_out}
    assert all(rewards.math_reward(f"\\boxed{{{e.gold}}}", e.gold) == 1.0 for e in train[:50])


def test_arith_heldout_is_fixed_and_distinct():
    held = tasks.arith_heldout()
    again = tasks.ArithmeticTask().examples(500, seed=tasks.ARITH_HELDOUT_SEED)
    assert held == again == data.load_examples("arith")
    assert len({e.prompt for e in held}) == 500
    assert data.load_examples("arith", limit=7) == held[:7]
