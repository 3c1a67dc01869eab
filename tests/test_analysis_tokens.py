"""analysis/tokens.py: Table 11b's split of structural from content tokens."""

import pytest

from analysis.tokens import token_class


@pytest.mark.parametrize("token, cls", [
    ("\n", "structural"), (" ", "structural"), ("=", "structural"), ("+", "structural"),
    ("*", "structural"), ("\\", "structural"), ("boxed", "structural"), ("\\boxed", "structural"),
    ("{", "structural"), ("}", "structural"), (".", "structural"), (" $", "structural"),
    ("<|im_end|>", "structural"), ("\\frac", "structural"), ("7", "content"), ("12", "content"),
    ("an", "content"), (" the", "content"), ("x", "content"), ("t\n", "content"),
    ("istan", "content"),
])
def test_token_class(token, cls):
    assert token_class(token) == cls
