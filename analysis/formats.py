"""formats: Table 11a. How much of the top-k set by tau stays when only the answer's form inside the
box changes (\\boxed{6}, \\boxed{x=6}, \\boxed{6.})."""

from __future__ import annotations

from analysis.common import flow_of, read_prompts, sampling, teacher_forced
from data import Example
from flow import top_k_mask
from rewards import boxed_span
from rollout import generate

FORMATS = {"answer-only": "{a}", "equation": "x={a}", "period": "{a}."}


def with_format(response: str, template: str) -> str:
    """The response with the inside of its last box replaced by template.format(a=old inside)."""
    span = boxed_span(response)
    if span is None:
        raise ValueError(f"the response has no complete \\boxed{{}}: {response[-80:]!r}")
    inside = template.format(a=response[span[0] : span[1]].strip())
    return response[: span[0]] + inside + response[span[1] :]


def format_overlap(model, tokenizer, examples: list[Example], ratios=(0.2, 0.4, 0.6, 0.8, 1.0),
                   formats: dict[str, str] = FORMATS, max_new_tokens: int = 128,
                   layers=None) -> dict[str, dict]:
    """Per format and ratio: the mean overlap |S_f & S_0| / |S_0| and Jaccard of the top-ratio
    tokens by tau with those of the first (answer-only) format S_0. Candidates are the shared
    tokens: the response tokens before the box's inside, identical in every format (so top-100% is 1
    by construction). Responses are the model's greedy ones, teacher-forced with each answer
    form."""
    ro = generate(model, tokenizer, [e.prompt for e in examples], n=1,
                  max_new_tokens=max_new_tokens, capture=False, **sampling(0))
    base = [t for t in ro.texts if boxed_span(t) is not None]
    if not base:
        raise ValueError("no greedy response holds a \\boxed{} answer")
    prompts = [e.prompt for e, t in zip(examples, ro.texts) if boxed_span(t) is not None]
    names, m = list(formats), len(base)
    # all formats in one teacher-forced batch, so every row has the same width:
    # rows f*m .. f*m+m-1 = format f
    tf = teacher_forced(model, tokenizer, prompts * len(names),
                        [with_format(t, formats[name]) for name in names for t in base], layers)
    tau = flow_of(tf)[1].tau.view(len(names), m, -1)  # [F, m, T]
    response = tf.response_mask.view(len(names), m, -1)  # [F, m, T]
    ids = tf.input_ids.cpu().view(len(names), m, -1)  # [F, m, T]
    # shared: response tokens before the first answer token of the answer-only row, with the same id
    # in every format at every position up to there (the response texts differ only from the box's
    # inside on)
    answer0 = tf.answer_mask.view(len(names), m, -1)[0]
    same = (ids == ids[0]).all(0).long().cumprod(1).bool()  # [m, T] identical prefix of all formats
    shared = response[0] & (answer0.long().cumsum(1) == 0) & same  # [m, T]
    out = {"responses": m}
    for f, name in enumerate(names[1:], 1):
        out[name] = {}
        for ratio in ratios:
            # candidates: the shared tokens only, so both sets have the same size and the answer
            # tokens (more of them in "x=6") do not take slots
            s0, s1 = top_k_mask(tau[0], shared, ratio), top_k_mask(tau[f], shared, ratio)  # [m, T]
            inter, union = (s0 & s1).sum(1).double(), (s0 | s1).sum(1).double()
            size = s0.sum(1).double()
            out[name][ratio] = dict(overlap=float((inter[size > 0] / size[size > 0]).mean()),
                                    jaccard=float((inter[union > 0] / union[union > 0]).mean()))
    return out


def run_formats(args, model, tokenizer) -> None:
    """`analyze.py formats`: the overlap table on stdout."""
    examples = read_prompts(None, args.prompts, args.problems, args.seed)
    res = format_overlap(model, tokenizer, examples, max_new_tokens=args.max_new_tokens,
                         layers=args.layers)
    ratios = list(next(v for k, v in res.items() if k != "responses"))
    print(f"{res['responses']} responses; overlap with the answer-only top set on the shared "
          "tokens (mean |S_f & S_0| / |S_0|; Jaccard in brackets)\n")
    print("| format | " + " | ".join(f"top-{round(100 * r)}%" for r in ratios) + " |")
    print("|---|" + "---|" * len(ratios))
    for name, per in res.items():
        if name != "responses":
            cells = (f"{x['overlap']:.2f} ({x['jaccard']:.2f})" for x in per.values())
            print(f"| {name} | " + " | ".join(cells) + " |")
