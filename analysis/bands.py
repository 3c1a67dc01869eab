"""bands: Fig. 6's question without training. The flow's graph averages the attention of the middle
third of the layers (App. C.2); how much does the token selection move when the graph comes from
the first or the last third, or from all layers? And which tokens each band ranks high (the
structural share of Fig. 3 / Table 11b, per band).

Per response (one sample per prompt, kept when it has a complete \\boxed{} answer), the attention
of each band is captured on the response's own tokens (rollout.capture_attention, one forward pass
per band), its flow traced (flow.trace), and the top `ratio` of the response tokens up to the
answer taken (eq. 6's set). Overlap of a band with the middle band: |S_band & S_middle| /
|S_middle|, averaged over responses; a random set of the same size overlaps `ratio` on average
(the chance line; the middle band against itself is 1, the positive control). The Table 1
answer-change rate of each band's high-flow blocking is `analyze.py intervene --layers ...
--conditions high` (the command is printed).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from analysis.common import boxed_rows, generation_prompts, read_prompts, sampling
from baselines import structural_vocab
from capture import capture_attention, default_layers
from flow import influence_graph, top_k_mask, trace
from rollout import generate


def band_layers(num_layers: int) -> dict[str, list[int]]:
    """first / middle / last third of the layers, and all of them."""
    third = num_layers // 3
    return {"first": list(range(third)), "middle": default_layers(num_layers),
            "last": list(range(2 * num_layers // 3, num_layers)), "all": list(range(num_layers))}


def band_overlap(model, tokenizer, examples, ratio: float = 0.4, share_ratio: float = 0.2,
                 temperature: float = 0.7, max_new_tokens: int = 128, seed: int = 0,
                 setup: str = "user", batch: int = 16) -> dict:
    """{"responses": n, band: {"overlap": mean overlap with the middle band's top-`ratio` set,
    "high_structural" / "low_structural": structural share of the top / bottom `share_ratio`
    tokens by tau, "all_structural": of every candidate token}}. Candidates: the response tokens
    up to the last answer token (the dead ends after it have tau = 0 by construction)."""
    bands = band_layers(model.config.num_hidden_layers)
    structural = structural_vocab(tokenizer)  # [V] bool
    sums = {b: dict(overlap=0.0, high=0, low=0, all=0, n_high=0, n_low=0, n_all=0)
            for b in bands}
    used = 0
    torch.manual_seed(seed)
    for s in range(0, len(examples), batch):
        prompts = generation_prompts(tokenizer, [e.prompt for e in examples[s : s + batch]],
                                     setup)
        ro = generate(model, tokenizer, prompts, n=1, max_new_tokens=max_new_tokens,
                      capture=False, chat_template=False, **sampling(temperature))
        ok = boxed_rows(ro)
        if not ok.any():
            continue
        ro = ro.rows(ok.nonzero().flatten())
        ids, mask = ro.input_ids, ro.attention_mask
        answer = ro.answer_mask.cpu()
        cand = ro.response_mask.cpu() & (answer.flip(1).long().cumsum(1).flip(1) > 0)  # [n, T]
        is_structural = structural[ids.cpu()]  # [n, T]
        top = {}
        for name, layers in bands.items():
            attn = capture_attention(model, ids, mask, layers).cpu()  # [n, T, T]
            tau = trace(influence_graph(attn), ro.prompt_mask.cpu(), answer).tau  # [n, T]
            top[name] = top_k_mask(tau, cand, ratio)
            hi, lo = top_k_mask(tau, cand, share_ratio), top_k_mask(tau, cand, share_ratio,
                                                                      largest=False)
            acc = sums[name]
            for key, sel in (("high", hi), ("low", lo), ("all", cand)):
                acc[key] += int((sel & is_structural).sum())
                acc["n_" + key] += int(sel.sum())
        for name in bands:
            inter = (top[name] & top["middle"]).sum(1).double()  # [n]
            sums[name]["overlap"] += float((inter / top["middle"].sum(1).clamp(min=1)).sum())
        used += int(ok.sum())
    if not used:
        raise ValueError("no response has a complete \\boxed{} answer (raise --max-new-tokens?)")
    return {"responses": used, "ratio": ratio, "share_ratio": share_ratio, "layers": bands,
            **{b: {"overlap": v["overlap"] / used,
                   "high_structural": v["high"] / max(v["n_high"], 1),
                   "low_structural": v["low"] / max(v["n_low"], 1),
                   "all_structural": v["all"] / max(v["n_all"], 1)} for b, v in sums.items()}}


def bands_table(result: dict) -> str:
    """Markdown: one row per band."""
    r, s = result["ratio"], result["share_ratio"]
    lines = [f"{result['responses']} boxed responses; chance overlap of a random top-{r:.0%} set: "
             f"{r:.2f}", "",
             f"| band (layers) | overlap of top {r:.0%} with the middle band's | structural share "
             f"of top {s:.0%} / bottom {s:.0%} / all |", "|---|---|---|"]
    for band, layers in result["layers"].items():
        x = result[band]
        lines.append(f"| {band} ({layers[0]}-{layers[-1]}) | {x['overlap']:.3f} | "
                     f"{x['high_structural']:.1%} / {x['low_structural']:.1%} / "
                     f"{x['all_structural']:.1%} |")
    return "\n".join(lines)


def run_bands(args, model, tokenizer) -> None:
    """`analyze.py bands`: the table on stdout (and --json), the intervene commands per band."""
    examples = read_prompts(None, args.prompts, args.problems, args.seed, args.data_dir,
                            args.data_format, args.data_fields)
    result = band_overlap(model, tokenizer, examples, args.ratio, temperature=args.temperature,
                          max_new_tokens=args.max_new_tokens, seed=args.seed,
                          setup=args.prompt_setup, batch=args.batch)
    print(bands_table(result))
    print("\nTable 1 answer change of each band's high-flow blocking:")
    for band, layers in result["layers"].items():
        print(f"  {band}: python analyze.py intervene --conditions high --layers "
              f"{' '.join(map(str, layers))} ...")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
