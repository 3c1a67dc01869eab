"""The run folder of train.py: checkpoints, the metrics log and the curves.

    OUT/config.json                      the configuration of the run
    OUT/metrics.jsonl                    one JSON object per step (step 0: accuracy before RL)
    OUT/checkpoints/step-000010/model/   save_pretrained: loadable by from_pretrained and eval.py
    OUT/checkpoints/step-000010/state/   optimizer, scheduler and every process's RNG (accelerate)
    OUT/curves.png                       training reward and held-out accuracy
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from accelerate import Accelerator


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint gets its final name once fully written)."""
    return sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(accelerator: Accelerator, model, tokenizer, out: Path, step: int, keep: int
                    ) -> None:
    """model/ (save_pretrained) + state/ (optimizer, scheduler, RNG of every process), written to a
    temporary folder and renamed, so a kill never leaves a half-written checkpoint. Keeps the newest
    `keep` checkpoints. `model` is the prepared train.Policy."""
    final = out / "checkpoints" / f"step-{step:06d}"
    tmp = out / "checkpoints" / f".tmp-step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    lm = accelerator.unwrap_model(model).lm
    tied = set(getattr(lm, "all_tied_weights_keys", None) or {})  # {"lm_head.weight"} if tied

    def untied(state: dict) -> dict:
        """The state without the tied copies (lm_head.weight is embed_tokens.weight): safetensors
        stores a tensor once, and loading ties them again."""
        return {k: v for k, v in state.items()
                if k.removeprefix("module.").removeprefix("lm.") not in tied}

    def drop_tied(models, weights, output_dir) -> None:  # accelerate's save_state pre-hook
        weights[:] = [untied(w) for w in weights]

    hook = accelerator.register_save_state_pre_hook(drop_tied)
    try:
        accelerator.save_state(str(tmp / "state"))
    finally:
        hook.remove()
    state = accelerator.get_state_dict(model)  # full weights, also under FSDP / ZeRO-3
    if accelerator.is_main_process:
        lm_state = {k.removeprefix("lm."): v for k, v in untied(state).items()}
        lm.save_pretrained(tmp / "model", state_dict=lm_state)
        tokenizer.save_pretrained(tmp / "model")
        (tmp / "step.json").write_text(json.dumps({"step": step}))
        os.replace(tmp, final)
        for old in checkpoint_dirs(out)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


class MetricsLog:
    """metrics.jsonl (one JSON object per line; on resume, the lines past the checkpoint are
    dropped) and tensorboard when it is installed. Only the main process writes (enabled=False
    elsewhere)."""

    def __init__(self, out: Path, resume_step: int, enabled: bool):
        self.path, self.enabled, self.records = out / "metrics.jsonl", enabled, []
        if not enabled:
            return
        if resume_step and self.path.exists():
            lines = self.path.read_text().splitlines()
            self.records = [r for r in map(json.loads, lines) if r["step"] <= resume_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step":
                    self.tb.add_scalar(k, v, record["step"])


def peak_ema(values: list[float], alpha: float) -> list[float]:
    """The paper's peak-tracking EMA (App. C.3):
    ema_t = alpha * max(x_t, ema_{t-1}) + (1 - alpha) * ema_{t-1}."""
    out: list[float] = []
    for x in values:
        out.append(x if not out else alpha * max(x, out[-1]) + (1 - alpha) * out[-1])
    return out


def plot(records: list[dict], path: Path, ema: float | None) -> None:
    """Training reward and held-out accuracy against the step, optionally smoothed with peak_ema."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def smooth(values: list[float]) -> list[float]:
        return peak_ema(values, ema) if ema else values

    train = [r for r in records if "reward" in r]
    evals = [r for r in records if "eval_accuracy" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot([r["step"] for r in train], smooth([r["reward"] for r in train]))
    axes[0].set(title="training reward (mean over samples)", xlabel="step")
    accuracy = smooth([r["eval_accuracy"] for r in evals])
    axes[1].plot([r["step"] for r in evals], accuracy, marker="o")
    axes[1].set(title="held-out accuracy (greedy)", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(path.parent.name + (f"  (peak-tracking EMA, alpha={ema})" if ema else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
