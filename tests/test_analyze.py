"""analyze.py, the command line: every subcommand keeps its documented flags and defaults and
dispatches to its module; `view` end to end writes the page and the heat map it names."""

import pytest

import analyze
from analysis.formats import run_formats
from analysis.intervene import run_intervene
from analysis.tokens import run_tokens
from analysis.view import run_view


def test_subcommands_keep_their_flags_and_defaults():
    ap = analyze.parser()
    view = ap.parse_args(["view"])
    assert view.run is run_view and view.out == "flow.html" and view.ratio == 0.4
    assert (view.problems, view.edges, view.window, view.max_new_tokens) == (1, "flow", (1000, 520),
                                                                             128)
    tokens = ap.parse_args(["tokens"])
    assert tokens.run is run_tokens and (tokens.problems, tokens.ratio, tokens.temperature) == (
        200, 0.2, 0.7)
    assert (tokens.top, tokens.png, tokens.after_answer) == (15, "tokens.png", False)
    inter = ap.parse_args(["intervene", "--seeds", "0", "1", "--json", "c.json"])
    assert inter.run is run_intervene and (inter.problems, inter.ratio, inter.temperature) == (
        200, 0.2, 0.7)
    assert inter.seeds == [0, 1] and inter.json == "c.json"
    formats = ap.parse_args(["formats", "--layers", "1", "2"])
    assert formats.run is run_formats and formats.problems == 100 and formats.layers == [1, 2]
    assert formats.model == str(analyze.TINY) and formats.seed == 0
    assert (formats.prompts, formats.data_dir, formats.data_format, formats.prompt_setup) == (
        None, None, None, "user")
    inter = ap.parse_args(["intervene", "--prompts", "gsm8k", "--data-dir", "d", "--prompt-setup",
                           "system"])
    assert (inter.prompts, inter.data_dir, inter.prompt_setup) == ("gsm8k", "d", "system")
    with pytest.raises(SystemExit):
        ap.parse_args([])  # a subcommand is required


def test_view_command_writes_the_page_and_the_heat_map(tmp_path, capsys):
    page, png = tmp_path / "v.html", tmp_path / "v.png"
    analyze.main(["view", "--prompt", "Compute 3+4*2-5.", "--response",
                  "4*2=8\n3+8=11\n11-5=6\n\\boxed{6}", "--out", str(page), "--png", str(png)])
    assert capsys.readouterr().out == f"wrote {page} and {png}\n"
    text = page.read_text(encoding="utf-8")
    assert "<title>FlowTracer: Compute 3+4*2-5.</title>" in text and "#pin=" in text
    assert text.count('class="tok answer') == 1  # the box's inside "6" is one token
    assert png.read_bytes()[:4] == b"\x89PNG"
