"""What every command (train.py, eval.py, analyze.py, data.py) does for its user before and
around the real work: known errors become one-line messages, and the mistakes people make in
their first hour are caught before anything heavy starts.

    guards.run("train.py", main, argv)  ValueError, OSError, ImportError -> "train.py: error: ...";
                                        Ctrl-C -> one line, exit status 130
    check_model(name)                   a mistyped local --model fails at once (no hub retries)
    check_gpu(preset, model, presets)   a GPU preset on a machine without one says what to run
    check_layers(model, layers)         --layers outside the model, named as the flag
    warn_unencodable(...)               prompts the tokenizer cannot spell (the tiny model's 64
                                        tokens) get a warning instead of silent <unk>s

FLOWTRACER_TRACEBACK=1 turns the one-line messages back into tracebacks.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from config import ROOT

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


def check_layers(model, layers: Sequence[int] | None) -> list[int]:
    """capture.resolve_layers, its error naming the flag."""
    import capture  # torch and transformers: only for the commands that have a model loaded

    try:
        return capture.resolve_layers(model, layers)
    except ValueError as e:
        raise ValueError(f"--layers {','.join(map(str, layers or []))}: {e}") from None


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
