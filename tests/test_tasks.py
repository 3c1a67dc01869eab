"""Tests of the synthetic tasks (tasks.py): right answers, the wrong teachers, the worked solutions,
the splits, and the chain testbed's deciding-token labels."""

import random

import data
import rewards
import tasks


def test_answers_match_an_independent_evaluator():
    task, rng = tasks.ArithmeticTask(), random.Random(0)
    for _ in range(500):
        numbers, ops = task.sample(rng)
        # precedence by grammar
        value, literals = rewards.parse_countdown(tasks.expression(numbers, ops))
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
    assert (tasks.worked_solution(numbers, ops, precedence=False)
            == "3+4=7\n7*2=14\n14-5=9\n\\boxed{9}")
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
    assert held == tasks.ArithmeticTask().examples(500, seed=tasks.ARITH_HELDOUT_SEED)
    assert held == data.load_examples("arith")
    assert len({e.prompt for e in held}) == 500
    assert data.load_examples("arith", limit=7) == held[:7]


# --------------------------------------------------------------------------------------------------
# The credit-assignment testbed (`chain`)

DOC = ("We need 3+4*2-5*2 mod 10.\n4*2=8, so 3+8-5*2.\n3+8=1, so 1-5*2.\n5*2=0, so 1-0.\n"
       "1-0=1, so 1.\n\\boxed{1}")


def test_chain_hand_example_and_its_deciding_characters():
    task = tasks.ChainTask()
    numbers, ops = [3, 4, 2, 5, 2], ["+", "*", "-", "*"]
    assert task.problem(numbers, ops) == tasks.Problem("Compute 3+4*2-5*2 mod 10.", "1")
    assert task.solution(numbers, ops) == DOC
    # two traps: 3+4*2 (line 1, offsets 26-27) and 1-5*2 (line 3, offsets 62-63); 3+8-5*2 is none:
    # 3+8 may go first
    assert tasks.chain_decisions(DOC) == [tasks.Decision(0, (26, 27), "careful", "+"),
                                          tasks.Decision(2, (62, 63), "careful", "-")]
    assert DOC[26:28] == "4*" and DOC[62:64] == "5*"
    careless = ("We need 3+4*2-5*2 mod 10.\n3+4=7, so 7*2-5*2.\n7*2=4, so 4-5*2.\n4-5=9, so 9*2.\n"
                "9*2=8, so 8.\n\\boxed{8}")
    assert tasks.chain_decisions(careless) == [tasks.Decision(0, (26, 27), "careless", "+"),
                                               tasks.Decision(2, (62, 63), "careless", "-")]
    assert careless[26:28] == "3+" and careless[62:64] == "4-"
    assert rewards.math_reward(DOC, "1") == 1.0 and rewards.math_reward(careless, "1") == 0.0


def test_chain_decisions_equal_operands_fillers_slips_and_garbage():
    # 2+2*3: the careful 2*3 and the careless 2+2 differ only in the operator
    text = "We need 2+2*3 mod 10.\n2*3=6, so 2+6.\n2+6=8, so 8.\n\\boxed{8}"
    assert tasks.chain_decisions(text) == [tasks.Decision(0, (23,), "careful", "+")]
    assert text[23] == "*"
    # fillers and unparsable lines leave the state; offsets count them
    text = "We need 2+2*3 mod 10.\nlet me see.\n2+2=4, so 4*3.\n4*3=2, so 2.\n\\boxed{2}"
    assert tasks.chain_decisions(text) == [tasks.Decision(0, (35,), "careless", "+")]
    assert text[34:37] == "2+2"
    # a move that is neither, here a blend of the two (3-6*7 -> 6-6); the state then follows what
    # the response wrote (0*7: no trap)
    text = "We need 3-6*7 mod 10.\n6-6=0, so 0*7.\n0*7=0, so 0.\n\\boxed{0}"
    assert tasks.chain_decisions(text) == [tasks.Decision(0, (22, 23), "other", "-")]
    # the state is the response's own last expression: a copying slip moves the trap
    text = "We need 3+2*2 mod 10.\n2*2=4, so 3-4*1.\n4*1=4, so 3-4.\n3-4=9, so 9.\n\\boxed{9}"
    assert [d.choice for d in tasks.chain_decisions(text)] == ["careful", "careful"]
    assert tasks.chain_decisions("\\boxed{3}") == [] and tasks.chain_decisions("") == []
    assert tasks.chain_decisions("We need 3+4*2 mod 10.\n3+4*2=8, so 8.") == []  # not a move
    # labelling stops at a `so` that does not parse
    assert tasks.chain_decisions("We need 3+4*2 mod 10.\n4*2=8, so 3+8+.\n1+1=2, so 2.") == [
        tasks.Decision(0, (22, 23), "careful", "+")]


def test_chain_answers_match_an_independent_evaluator_and_the_careful_trace():
    task, rng = tasks.ChainTask(), random.Random(0)
    for _ in range(300):
        numbers, ops = task.sample(rng)
        assert task.min_operands <= len(numbers) <= task.max_operands
        value, _ = rewards.parse_countdown(tasks.expression(numbers, ops))  # precedence by grammar
        gold = task.problem(numbers, ops).answer
        assert gold == str(int(value) % 10)
        careful = task.solution(numbers, ops)
        assert rewards.math_reward(careful, gold) == 1.0
        for line in careful.split("\n")[1:-1]:  # every restated expression keeps the value mod 10
            restated = line.split("so ")[1].rstrip(".")
            assert int(rewards.parse_countdown(restated)[0]) % 10 == int(gold)


def test_chain_teacher_deciding_steps_decide_and_nothing_else_does():
    """A teacher trace is right whenever every trap got the careful move (whatever the fillers), and
    mostly wrong otherwise: the labelled characters are what decides the outcome."""
    task, rng = tasks.ChainTask(), random.Random(1)
    counts = {"all careful": [0, 0], "some careless": [0, 0]}
    fillers = 0
    for _ in range(1000):
        numbers, ops = task.sample(rng)
        trace = task.solution(numbers, ops, rng)
        decisions = tasks.chain_decisions(trace)
        assert all(d.choice in ("careful", "careless") for d in decisions)
        assert all(trace[c] in "0123456789+-*" for d in decisions for c in d.chars)
        key = "all careful" if all(d.choice == "careful" for d in decisions) else "some careless"
        counts[key][0] += 1
        counts[key][1] += rewards.math_reward(trace, task.problem(numbers, ops).answer) == 1.0
        fillers += sum(line.rstrip(".") in tasks.CHAIN_FILLERS for line in trace.split("\n"))
    assert counts["all careful"][1] == counts["all careful"][0]
    tried, right = counts["some careless"]
    assert tried > 200 and right < 0.25 * tried
    assert fillers > 1000  # about one filler line every second step


def test_chain_teacher_is_careless_by_the_operator_before_the_product():
    task, rng = tasks.ChainTask(), random.Random(2)
    seen = {"+": [0, 0], "-": [0, 0]}
    for _ in range(2000):
        trace = task.solution(*task.sample(rng), rng)
        for d in tasks.chain_decisions(trace):
            seen[d.operator][0] += 1
            seen[d.operator][1] += d.choice == "careless"
    assert abs(seen["+"][1] / seen["+"][0] - 0.2) < 0.05
    assert abs(seen["-"][1] / seen["-"][0] - 0.7) < 0.05


def test_chain_splits_are_deterministic_distinct_and_disjoint():
    held = tasks.chain_heldout()
    assert held == tasks.chain_heldout() == data.load_examples("chain") and len(held) == 300
    assert len({e.prompt for e in held}) == 300
    train = tasks.TASKS["chain"].training(2000, 5)
    assert train == tasks.chain_training(2000, 5) != tasks.chain_training(2000, 6)
    prompts = {e.prompt for e in train}
    assert len(prompts) == 2000 and not prompts & {e.prompt for e in held}
    assert all(e.kind == "math" for e in train)
    assert all(rewards.math_reward(f"\\boxed{{{e.gold}}}", e.gold) == 1.0 for e in train)
