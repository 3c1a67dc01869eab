"""Verifiable rewards (math, Countdown, multiple choice) and the answer region.

The reward is the only ground truth of RL with verifiable rewards, and the answer region
(`answer_span`) decides where the information flow of eq. (2) is aimed. Model output is hostile
input: nothing here ever calls eval(), and every verifier bounds the work it hands to sympy.
"""
from __future__ import annotations

import re

# ---------------------------------------------------------------------------------------------
# The answer region
# ---------------------------------------------------------------------------------------------

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NONBLANK = re.compile(r"\S")
FALLBACKS = ("last_line", None)


def _brace_matches(text: str) -> dict[int, int]:
    """Map the index of every balanced '{' to the index of its '}' in one linear pass.

    A backslash escapes the next character, so \\{ and \\} (literal braces in LaTeX) are not
    grouping braces; "\\\\" (a LaTeX line break) is one escaped pair and does not hide a brace.
    """
    matches: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            matches[stack.pop()] = i
        i += 1
    return matches


def boxed_span(response: str) -> tuple[int, int] | None:
    """[start, end) of the inside of the last complete \\boxed{...} or \\fbox{...}, else None.

    "Last" means the box whose closing brace comes last, so in \\boxed{\\boxed{5}} the outer box
    wins. A box whose braces never close (a truncated response) or whose inside is blank does
    not count.
    """
    matches = _brace_matches(response) if "\\" in response else {}
    best: tuple[int, int] | None = None
    for m in _BOX_OPEN.finditer(response):
        open_at = m.end() - 1
        close_at = matches.get(open_at)
        if close_at is None or not _NONBLANK.search(response, open_at + 1, close_at):
            continue
        if best is None or close_at > best[1]:
            best = (open_at + 1, close_at)
    return best


def _answer_tag_span(response: str) -> tuple[int, int] | None:
    """[start, end) of the inside of the last complete <answer>...</answer> (TinyZero), else None."""
    close_at = response.rfind("</answer>")
    open_at = response.rfind("<answer>", 0, max(close_at, 0))
    if close_at < 0 or open_at < 0:
        return None
    return open_at + len("<answer>"), close_at


def _last_line_span(response: str) -> tuple[int, int] | None:
    """[start, end) of the last non-empty line, surrounding whitespace stripped; None if blank."""
    end = len(response.rstrip())
    if end == 0:
        return None
    start = response.rfind("\n", 0, end) + 1
    while response[start].isspace():
        start += 1
    return start, end


def answer_span(response: str, fallback: str | None = "last_line") -> tuple[int, int] | None:
    """Character span [start, end) of the final answer region of a response.

    In order: the inside of the last complete \\boxed{...} / \\fbox{...} (see `boxed_span`); else
    the inside of the last <answer>...</answer> tag (the Countdown / TinyZero format); else the
    fallback: "last_line" (default) gives the last non-empty line, None gives None.
    rollout.py turns the span into the answer token mask through the tokenizer's offsets.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"answer_span: fallback must be one of {FALLBACKS}, got {fallback!r}")
    span = boxed_span(response) or _answer_tag_span(response)
    if span is None and fallback == "last_line":
        span = _last_line_span(response)
    return span
