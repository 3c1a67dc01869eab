"""formats: Table 11a. The paper's four answer forms inside the box: how accurate the model is when
asked for each (the Acc. column), and how much of the top-k set by tau stays when only the form of
the answer inside the box changes (the overlap columns).

    answer-only       \\boxed{6}
    full line         \\boxed{The final answer is 6.}
    with explanation  \\boxed{6, since it follows from the steps above}
    multiple-choice   \\boxed{(B) 6}, the prompt listing four options (A)-(D)

The paper names the forms only; the wording of each (its instruction, its template) is ours.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from analysis.common import (flow_of, generation_prompts, read_prompts, require_math, sampling,
                             split_instruction, teacher_forced)
from dataspec import MATH_INSTRUCTION, Example
from flow import top_k_mask
from normalise import normalise_answer
from rewards import boxed_span, choice_reward, math_reward
from rollout import generate


@dataclass(frozen=True)
class AnswerForm:
    """One answer form.

    instruction: what the prompt asks for, worded like the paper's instruction (it replaces the
                 benchmark's own; None: the example's prompt as it is, which asks for the answer
                 alone).
    template:    the inside of the box, {a} = the answer, {letter} = its option.
    answer:      where the answer sits inside the box (group "a"); None: the whole inside.
    choice:      graded by the option letter (rewards.choice_reward) instead of math_reward.
    """

    name: str
    instruction: str | None
    template: str
    answer: re.Pattern | None = None
    choice: bool = False


def _asking(what: str, example: str) -> str:
    """The paper's instruction (dataspec.MATH_INSTRUCTION) asking for `what` inside the box."""
    return (MATH_INSTRUCTION.replace("your final answer", what).rstrip(".")
            + f", e.g. \\boxed{{{example}}}.")


# a full line: after its last "is", "=" or ":"; an explanation: before its first ",", ";",
# "since" or "because"
_SENTENCE = re.compile(r"(?:\bis\b|=|:)\s*(?P<a>[^=:]*?)[\s.]*$", re.IGNORECASE)
_REASON = re.compile(r"^(?P<a>.*?)\s*(?:,|;|\bsince\b|\bbecause\b)", re.IGNORECASE)
FORMS = (
    AnswerForm("answer-only", None, "{a}"),
    AnswerForm("full line", _asking("your final answer as one full sentence",
                                    "The final answer is 5."),
               "The final answer is {a}.", answer=_SENTENCE),
    AnswerForm("with explanation", _asking("your final answer and a short reason",
                                           "5, since 2+3=5"),
               "{a}, since it follows from the steps above", answer=_REASON),
    AnswerForm("multiple-choice", _asking("the letter and the text of the correct option",
                                          "(B) 5"),
               "({letter}) {a}", choice=True),
)
LETTERS = "ABCD"


def with_format(response: str, template: str, letter: str = "A") -> str:
    """The response with the inside of its last box replaced by template.format(a=old inside,
    letter=letter)."""
    span = boxed_span(response)
    if span is None:
        raise ValueError(f"the response has no complete \\boxed{{}}: {response[-80:]!r}")
    inside = template.format(a=response[span[0] : span[1]].strip(), letter=letter)
    return response[: span[0]] + inside + response[span[1] :]


# ------------------------------------------------------------------------------------------------
# the Acc. column: ask for each form, grade what comes back
# ------------------------------------------------------------------------------------------------

def _gold_text(gold) -> str:
    """The gold as option text (the first acceptable answer of a list)."""
    return normalise_answer(str(gold[0] if isinstance(gold, (list, tuple)) else gold))


def choice_options(examples: list[Example], seed: int) -> list[tuple[list[str], str]]:
    """Four options per example, (texts in order A-D, the gold's letter): the gold and three
    distractors, the golds of other problems of the sample (distinct), in a seeded order."""
    golds = [_gold_text(e.gold) for e in examples]
    distinct = sorted(set(golds))
    if len(distinct) < len(LETTERS):
        raise ValueError(f"multiple-choice needs at least {len(LETTERS)} distinct golds in the "
                         f"sample to draw distractors from, got {len(distinct)}")
    rng, out = random.Random(seed), []
    for gold in golds:
        options = [gold, *rng.sample([g for g in distinct if g != gold], len(LETTERS) - 1)]
        rng.shuffle(options)
        out.append((options, LETTERS[options.index(gold)]))
    return out


def form_prompt(example: Example, form: AnswerForm, options: list[str] | None = None) -> str:
    """The question (without data.py's instruction), the options (multiple-choice) and the form's
    instruction; the example's own prompt for a form without one."""
    if form.instruction is None:
        return example.prompt
    question = split_instruction(example.prompt)[0]
    listed = "" if options is None else "".join(f"\n({x}) {o}" for x, o in zip(LETTERS, options))
    return f"{question}{listed}\n{form.instruction}"


def form_answer(inside: str, form: AnswerForm) -> str:
    """The answer inside a box of this form (form.answer), else the whole inside."""
    m = form.answer.search(inside) if form.answer is not None else None
    return m.group("a").strip() if m and m.group("a").strip() else inside.strip()


def graded(response: str, example: Example, form: AnswerForm, letter: str | None) -> bool:
    """Is the response's answer in this form correct? multiple-choice: the boxed option letter
    (rewards.choice_reward); the others: math_reward of the form's answer against the gold."""
    if form.choice:
        return choice_reward(response, letter) > 0
    span = boxed_span(response)
    if span is None:
        return False
    return math_reward("\\boxed{" + form_answer(response[span[0] : span[1]], form) + "}",
                       example.gold) > 0


def form_accuracy(model, tokenizer, examples: list[Example], forms=FORMS, seed: int = 0,
                  max_new_tokens: int = 128, setup: str = "user") -> dict[str, float]:
    """Per form: the fraction of examples whose greedy response, asked for that form (form_prompt),
    is correct (graded)."""
    options = choice_options(examples, seed) if any(f.choice for f in forms) else None
    out = {}
    for form in forms:
        mc = form.choice
        prompts = [form_prompt(e, form, options[i][0] if mc else None)
                   for i, e in enumerate(examples)]
        ro = generate(model, tokenizer, generation_prompts(tokenizer, prompts, setup), n=1,
                      max_new_tokens=max_new_tokens, capture=False, chat_template=False,
                      **sampling(0))
        right = [graded(t, e, form, options[i][1] if mc else None)
                 for i, (t, e) in enumerate(zip(ro.texts, examples))]
        out[form.name] = sum(right) / len(right)
    return out


# ------------------------------------------------------------------------------------------------
# the overlap columns: one response, the box's inside rewritten per form, teacher-forced
# ------------------------------------------------------------------------------------------------

def format_overlap(model, tokenizer, examples: list[Example], ratios=(0.2, 0.4, 0.6, 0.8, 1.0),
                   forms=FORMS, max_new_tokens: int = 128, layers=None,
                   setup: str = "user") -> dict[str, dict]:
    """Per form and ratio: the mean overlap |S_f & S_0| / |S_0| and Jaccard of the top-ratio
    tokens by tau with those of the first (answer-only) form S_0. Responses are the model's greedy
    ones to the examples' own prompts, teacher-forced with each form inside the box under that
    same prompt (only the answer's form changes; multiple-choice's letter is the placeholder "A",
    as this prompt lists no options). Candidates are the shared tokens: the response tokens before
    the box's inside, identical in every form (so top-100% is 1 by construction)."""
    prompts = generation_prompts(tokenizer, [e.prompt for e in examples], setup)
    ro = generate(model, tokenizer, prompts, n=1, max_new_tokens=max_new_tokens, capture=False,
                  chat_template=False, **sampling(0))
    base = [t for t in ro.texts if boxed_span(t) is not None]
    if not base:
        raise ValueError("no greedy response holds a \\boxed{} answer")
    prompts = [e.prompt for e, t in zip(examples, ro.texts) if boxed_span(t) is not None]
    names, m = [f.name for f in forms], len(base)
    # all forms in one teacher-forced batch, so every row has the same width:
    # rows f*m .. f*m+m-1 = form f
    tf = teacher_forced(model, tokenizer, prompts * len(forms),
                        [with_format(t, f.template) for f in forms for t in base], layers, setup)
    tau = flow_of(tf)[1].tau.view(len(names), m, -1)  # [F, m, T]
    response = tf.response_mask.view(len(names), m, -1)  # [F, m, T]
    ids = tf.input_ids.cpu().view(len(names), m, -1)  # [F, m, T]
    # shared: response tokens before the first answer token of the answer-only row, with the same id
    # in every form at every position up to there (the response texts differ only from the box's
    # inside on)
    answer0 = tf.answer_mask.view(len(names), m, -1)[0]
    same = (ids == ids[0]).all(0).long().cumprod(1).bool()  # [m, T] identical prefix of all forms
    shared = response[0] & (answer0.long().cumsum(1) == 0) & same  # [m, T]
    out = {"responses": m}
    for f, name in enumerate(names[1:], 1):
        out[name] = {}
        for ratio in ratios:
            # candidates: the shared tokens only, so both sets have the same size and the answer
            # tokens (more of them in a full line) do not take slots
            s0, s1 = top_k_mask(tau[0], shared, ratio), top_k_mask(tau[f], shared, ratio)  # [m, T]
            inter, union = (s0 & s1).sum(1).double(), (s0 | s1).sum(1).double()
            size = s0.sum(1).double()
            out[name][ratio] = dict(overlap=float((inter[size > 0] / size[size > 0]).mean()),
                                    jaccard=float((inter[union > 0] / union[union > 0]).mean()))
    return out


PAPER_TABLE11A = {"answer-only": 54.2, "full line": 51.0, "with explanation": 51.2,
                  "multiple-choice": 64.6}  # Acc. % on Qwen3-4B / MATH500


def formats_table(accuracy: dict[str, float], overlap: dict[str, dict]) -> str:
    """Markdown in Table 11a's layout: one row per form, its accuracy and its overlaps."""
    ratios = list(next(v for k, v in overlap.items() if k != "responses"))
    lines = [f"{overlap['responses']} responses for the overlap; accuracy of the greedy response "
             "asked for each form; overlap with the answer-only top set on the shared tokens "
             "(mean |S_f & S_0| / |S_0|; Jaccard in brackets)", "",
             "| format | acc. % | paper acc. % | "
             + " | ".join(f"top-{round(100 * r)}%" for r in ratios) + " |",
             "|---|---|---|" + "---|" * len(ratios)]
    for name, acc in accuracy.items():
        if name in overlap:
            cells = [f"{x['overlap']:.2f} ({x['jaccard']:.2f})" for x in overlap[name].values()]
        else:
            cells = ["-"] * len(ratios)
        lines.append(f"| {name} | {100 * acc:.1f} | {PAPER_TABLE11A.get(name, '-')} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_formats(args, model, tokenizer) -> None:
    """`analyze.py formats`: Table 11a on stdout."""
    examples = read_prompts(None, args.prompts, args.problems, args.seed, args.data_dir,
                            args.data_format, args.data_fields)
    require_math(examples, "formats")
    if any(e.gold is None for e in examples):
        raise ValueError("formats grades each answer form: every prompt needs a gold")
    accuracy = form_accuracy(model, tokenizer, examples, seed=args.seed,
                             max_new_tokens=args.max_new_tokens, setup=args.prompt_setup)
    overlap = format_overlap(model, tokenizer, examples, max_new_tokens=args.max_new_tokens,
                             layers=args.layers, setup=args.prompt_setup)
    print(formats_table(accuracy, overlap))
