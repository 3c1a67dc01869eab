"""What every command (train.py, eval.py, analyze.py, data.py) does for its user before and
around the real work: known errors become one-line messages, and the mistakes people make in
their first hour are caught before anything heavy starts.

    guards.run("train.py", main, argv)  ValueError, OSError, ImportError -> "train.py: error: ...";
                                        Ctrl-C -> one line, exit status 130
    check_model(name)                   a mistyped local --model fails at once (no hub retries)
    check_gpu(preset, model, presets)   a GPU preset on a machine without one says what to run
    warn_unencodable(...)               prompts the tokenizer cannot spell (the tiny model's 64
                                        tokens) get a warning instead of silent <unk>s

FLOWTRACER_TRACEBACK=1 turns the one-line messages back into tracebacks.

The checks of the method's arguments live here too, so that flow.py and grpo.py read as the
equations (one home for each check; skip them on a first read):
    check_square, check_mask, check_dtype  flow.py's attention graph, its masks, the solve's dtype
    check_ratio, check_gamma               eq. (6)'s ratio and gamma (the rules of --ratio, --gamma)
    check_candidates                       the scores and candidates of flow.top_k_mask
    check_loss_inputs                      grpo.policy_loss's arguments
    check_logprob_inputs                   grpo.token_logprobs' arguments
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from config import AGGREGATIONS, ROOT, gamma_ok, ratio_ok

if TYPE_CHECKING:  # every command imports guards first: torch loads only where a check runs
    import torch
    from torch import Tensor

# The exceptions that mean "the input was wrong" here: bad values, files, folders or hub ids
# (OSError covers FileNotFoundError and the hub's connection errors), a missing optional package.
KNOWN_ERRORS = (ValueError, OSError, ImportError)


def run(prog: str, main: Callable, argv: Sequence[str] | None = None):
    """main(argv), with a known error printed as one line `PROG: error: MESSAGE` (exit status 1)
    and an interrupt (Ctrl-C) as one line `PROG: MESSAGE` (train.py's names how to go on; exit
    status 130, the shell's for SIGINT)."""
    try:
        return main(argv)
    except KeyboardInterrupt as e:
        if os.environ.get("FLOWTRACER_TRACEBACK"):
            raise
        if os.environ.get("RANK", "0") == "0":  # one line, from the main process
            print(f"\n{prog}: {e or 'interrupted'}", file=sys.stderr)
        raise SystemExit(130) from None
    except KNOWN_ERRORS as e:
        if os.environ.get("FLOWTRACER_TRACEBACK"):
            raise
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(1) from None


def one_line(error: BaseException) -> str:
    """The message of an exception on one line (a multi-line message's lines joined)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines) or type(error).__name__


def looks_like_path(name: str) -> bool:
    """Whether --model NAME means a local folder rather than a hub id ("org/name" or "name"):
    it exists, starts like a path (/ ./ ../ ~), has more than one "/" or a backslash, or its first
    part is a local folder here or in the repository ("tiny/qwen3-arth": tiny/ exists)."""
    if Path(name).expanduser().exists() or name.startswith(("/", ".", "~")):
        return True
    if name.count("/") > 1 or "\\" in name or name.endswith("/"):
        return True
    first = name.split("/", 1)[0]
    return "/" in name and (Path(first).is_dir() or (ROOT / first).is_dir())


def check_model(name: str, flag: str = "--model") -> None:
    """A path-like model name must be a model folder; raise ValueError (before any download)."""
    if not looks_like_path(name):
        return  # a hub id: from_pretrained reports its own errors
    path = Path(name).expanduser()
    if not path.exists():
        hint = ""
        for parent in (path.parent, ROOT / path.parent):
            if not parent.is_dir():
                continue
            close = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir()], n=1)
            if close:
                hint = f" (did you mean {parent / close[0]}?)"
                break
        raise ValueError(f"{flag} {name}: the folder does not exist{hint}")
    if not (path / "config.json").is_file():
        raise ValueError(f"{flag} {name}: not a model folder (no config.json in it; a model "
                         "folder is what save_pretrained writes)")


def check_gpu(preset: str, model: str, presets: Mapping[str, dict]) -> None:
    """A preset that trains a hub model (the paper's setups) needs CUDA: say so on a CPU machine,
    unless --model replaced the preset's model (trying a preset's settings on a small model)."""
    import torch

    if presets[preset].get("model") != model or torch.cuda.is_available():
        return
    raise ValueError(f"--preset {preset} needs a GPU (it trains {model}) and this machine has "
                     "none; on a CPU run `python train.py` (the tiny model), or keep the preset "
                     "and pass --model with a small local model")


def unencodable(tokenizer, prompts: Sequence[str]) -> tuple[list[int], list[str]]:
    """(indices of the prompts that do not survive encode -> decode, the characters that do not)."""
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    texts = tokenizer.batch_decode(ids, clean_up_tokenization_spaces=False)
    bad = [i for i, (p, t) in enumerate(zip(prompts, texts)) if p != t]
    chars = sorted({c for i in bad for c in prompts[i]})
    if not chars:
        return bad, []
    spelled = tokenizer.batch_decode(tokenizer(chars, add_special_tokens=False)["input_ids"],
                                     clean_up_tokenization_spaces=False)
    return bad, [c for c, s in zip(chars, spelled) if s != c]


def warn_unencodable(prog: str, tokenizer, sets: Mapping[str, Sequence], model: str) -> bool:
    """One warning line per set of examples (name -> [dataspec.Example]) with prompts the tokenizer
    cannot spell: their text would reach the model as <unk> or worse. Whether it warned."""
    warned = False
    for name, examples in sets.items():
        bad, chars = unencodable(tokenizer, [e.prompt for e in examples])
        if not bad:
            continue
        warned = True
        shown = " ".join(repr(c) for c in chars[:12]) + (" ..." if len(chars) > 12 else "")
        print(f"{prog}: warning: {len(bad)} of {len(examples)} prompts of {name} do not survive "
              f"the tokenizer of {model} (first: {examples[bad[0]].id}); it cannot spell "
              f"{shown}", file=sys.stderr)
    return warned


# --------------------------------------------------------------------------------------------------
# The method's arguments (flow.py, grpo.py): ValueError naming what is wrong


def check_square(W: Tensor, name: str) -> None:
    """A real [..., T, T] matrix without negative entries (attention weights, and the graphs made of
    them: a negative weight would make h, f and tau negative)."""
    if W.dim() < 2 or W.shape[-1] != W.shape[-2]:
        raise ValueError(f"{name} must be [..., T, T], got shape {tuple(W.shape)}")
    if W.is_complex() or not W.is_floating_point():
        raise ValueError(f"{name} must be a real floating tensor, got {W.dtype}")
    if W.numel() and W.amin() < 0:  # one reduction over the matrix; NaN is caught by flow.trace
        raise ValueError(f"{name} has negative entries (min {W.amin().item():.3g}): attention "
                         "weights are >= 0")


def check_mask(mask: Tensor, W: Tensor, name: str, nonempty: bool) -> None:
    """A bool [..., T] mask of the [..., T, T] graph W; with nonempty, one token per sequence."""
    import torch

    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got {mask.dtype}")
    if mask.shape != W.shape[:-1]:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(W.shape[:-1])}")
    if nonempty:
        empty = ~mask.any(-1)  # [...]
        if empty.any():
            where = "the sequence" if empty.dim() == 0 else "sequence(s) " + ", ".join(
                str(idx[0] if len(idx) == 1 else tuple(idx))
                for idx in empty.nonzero().tolist()[:10]
            )
            raise ValueError(
                f"{name} is empty for {where}: flow needs at least one such token per sequence"
            )


def check_dtype(dtype: torch.dtype) -> None:
    """The flow solve runs in float32 or float64, never in bf16 (flow.py's Numerics)."""
    import torch

    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the flow solve runs in float32 or float64, got {dtype}")


def check_ratio(ratio: float) -> None:
    """eq. (6)'s ratio must be in [0, 1] (config.ratio_ok, the rule --ratio is checked by)."""
    if not ratio_ok(ratio):
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")


def check_gamma(gamma: float) -> None:
    """eq. (6)'s gamma must be finite and > 0 (config.gamma_ok, the rule of --gamma)."""
    if not gamma_ok(float(gamma)):  # NaN fails too
        raise ValueError(f"gamma must be finite and > 0, got {gamma}")


def check_candidates(scores: Tensor, candidate_mask: Tensor) -> None:
    """flow.top_k_mask's arguments: a bool mask of the scores' shape, finite scores on it."""
    import torch

    if candidate_mask.dtype != torch.bool or candidate_mask.shape != scores.shape:
        raise ValueError(
            f"candidate_mask must be bool with the shape of scores {tuple(scores.shape)}, "
            f"got {candidate_mask.dtype} {tuple(candidate_mask.shape)}"
        )
    if not torch.isfinite(scores[candidate_mask]).all():
        raise ValueError("scores must be finite on candidate tokens")


def check_loss_inputs(logp: Tensor, old_logp: Tensor, advantages: Tensor, gamma: Tensor,
                      response_mask: Tensor, clip_eps: float, dual_clip: float | None,
                      aggregation: str) -> None:
    """grpo.policy_loss's arguments: shapes [B, L] and [B], ranges, finite advantages and gamma."""
    import torch

    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be 'seq-mean' or 'token-mean', got {aggregation!r}")
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, L], got shape {tuple(logp.shape)}")
    named = {"old_logp": old_logp, "gamma": gamma, "response_mask": response_mask}
    for name, x in named.items():
        if x.shape != logp.shape:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)} but logp has {tuple(logp.shape)}; "
                "token_logprobs returns [B, T-1], so align [B, T] masks and gamma with [:, 1:] "
                "(grpo.align)")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [B] = [{logp.shape[0]}], "
                         f"got shape {tuple(advantages.shape)}")
    if not 0 < clip_eps < 1:
        raise ValueError(f"clip_eps must be in (0, 1), got {clip_eps}")
    if dual_clip is not None and dual_clip <= 1:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    mask = response_mask.bool()                                       # [B, L]
    if not torch.isfinite(advantages).all() or not torch.isfinite(gamma[mask]).all():
        raise ValueError("advantages or gamma contain NaN or inf")


def check_logprob_inputs(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor,
                         temperature: float, chunk_size: int) -> None:
    """grpo.token_logprobs' arguments: [B, T] ids and mask with T >= 2, temperature > 0, a chunk of
    at least one position, and a model whose LM head is applied directly (no logit softcapping)."""
    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask "
                         f"{tuple(attention_mask.shape)} must both be [B, T]")
    if input_ids.shape[1] < 2:
        raise ValueError("need at least 2 positions to score a next token")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if getattr(model.config, "final_logit_softcapping", None):
        raise ValueError("models with final logit softcapping are not supported "
                         "(the LM head is applied directly)")
