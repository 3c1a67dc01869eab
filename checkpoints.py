"""A checkpoint folder's files and their checksums: which checkpoints are complete, and whether
one can be trusted (runs.py saves and resumes them; step.json lists every file's size and SHA-256).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path



class CheckpointError(Exception):
    """A checkpoint that cannot be trusted; the message names the bad file."""


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint gets its final name once fully written)."""
    return sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _sha256s(paths: list[Path]) -> list[str]:
    """SHA-256 of each file, several files at a time (hashlib releases the GIL)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(_sha256, paths))


def file_digests(folder: Path) -> dict[str, list]:
    """{path relative to folder: [size in bytes, SHA-256]} of every file below it."""
    paths = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    return {p.relative_to(folder).as_posix(): [p.stat().st_size, digest]
            for p, digest in zip(paths, _sha256s(paths))}


def verify(ckpt: Path) -> dict:
    """The record (step.json) of a checkpoint whose every file has the size and SHA-256 that
    step.json lists; CheckpointError naming the first file that does not."""
    try:
        record = json.loads((ckpt / "step.json").read_text())
        missing = [k for k in ("step", "files", "before", "eval", "changes", "config")
                   if k not in record]
        if missing:
            raise KeyError(missing[0])
        files, step = record["files"], record["step"]
        if not isinstance(files, dict) or "metrics.jsonl" not in files:
            raise ValueError("no list of files")
        if step != int(ckpt.name.split("-")[1]):
            raise ValueError(f"it says step {step}")
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt / 'step.json'}: missing") from None
    except KeyError as e:
        raise CheckpointError(f"{ckpt / 'step.json'}: no {e} (a checkpoint of an older train.py, "
                              "without checksums, or a damaged file)") from None
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{ckpt / 'step.json'}: unreadable ({e})") from None
    for name, (size, _) in files.items():
        path = ckpt / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        if path.stat().st_size != size:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes where {size} were "
                                  "written (truncated or damaged)")
    paths = [ckpt / name for name in files]
    for path, (_, digest), got in zip(paths, files.values(), _sha256s(paths)):
        if got != digest:
            raise CheckpointError(f"{path}: checksum mismatch (damaged)")
    return record


def recorded_step(ckpt: Path) -> int | None:
    """The step a checkpoint's step.json names, unverified (for a message); None if unreadable."""
    try:
        return int(json.loads((ckpt / "step.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
