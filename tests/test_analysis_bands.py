"""analysis/bands.py: the top-40% set by layer band, against a slow recount from generate's own
capture of each band."""

from pathlib import Path

import pytest

from analysis.bands import band_layers, band_overlap
from analysis.common import boxed_rows, flow_of, generation_prompts, sampling
from baselines import token_class
from eval import load_model
from rollout import generate
from tasks import ArithmeticTask

ROOT = Path(__file__).resolve().parents[1]


def test_band_layers_split_into_thirds():
    bands = band_layers(30)
    assert bands["first"] == list(range(10)) and bands["middle"] == list(range(10, 20))
    assert bands["last"] == list(range(20, 30)) and bands["all"] == list(range(30))
    assert band_layers(4) == {"first": [0], "middle": [1], "last": [2, 3], "all": [0, 1, 2, 3]}


def _slow_sets(model, tok, prompts, layers, ratio):
    """Per boxed response: the positions of its top-`ratio` tokens by tau up to the last answer
    token, and each of those tokens' class; from a greedy generate that captures `layers`."""
    ro = generate(model, tok, prompts, n=1, max_new_tokens=48, layers=layers, chat_template=False,
                  **sampling(0))
    ro = ro.rows(boxed_rows(ro).nonzero().flatten())
    _, field = flow_of(ro)
    out = []
    for i in range(ro.input_ids.shape[0]):
        last = int(ro.answer_mask[i].nonzero().max())
        cand = [j for j in ro.response_mask[i].nonzero().flatten().tolist() if j <= last]
        order = sorted(cand, key=lambda j: -float(field.tau[i, j]))  # stable: earlier first
        k = int(len(cand) * ratio + 0.5)
        classes = {j: token_class(tok.decode([int(ro.input_ids[i, j])])) for j in cand}
        out.append((set(order[:k]), classes))
    return out


def test_band_overlap_matches_a_slow_recount():
    model, tok = load_model(str(ROOT / "tiny" / "qwen3-arith"))
    examples = ArithmeticTask().examples(6, seed=3)
    got = band_overlap(model, tok, examples, temperature=0, max_new_tokens=48, batch=4)
    prompts = generation_prompts(tok, [e.prompt for e in examples])
    sets = {name: [s for s, _ in _slow_sets(model, tok, prompts, layers, 0.4)]
            for name, layers in band_layers(4).items()}
    n = len(sets["middle"])
    assert got["responses"] == n >= 4
    for name, per_response in sets.items():
        want = sum(len(s & m) / len(m) for s, m in zip(per_response, sets["middle"])) / n
        assert got[name]["overlap"] == pytest.approx(want, abs=1e-12), name
    assert got["middle"]["overlap"] == 1.0  # the positive control
    assert got["last"]["overlap"] < 1.0  # the bands do pick different tokens here
    # Fig. 3's structural share of the middle band's top 20%, and of all candidate tokens
    top20 = _slow_sets(model, tok, prompts, band_layers(4)["middle"], 0.2)
    high = [c[j] for s, c in top20 for j in s]
    every = [cls for _, c in top20 for cls in c.values()]
    assert got["middle"]["high_structural"] == pytest.approx(high.count("structural") / len(high))
    assert got["middle"]["all_structural"] == pytest.approx(every.count("structural") / len(every))
