"""The metrics of a run: OUT/metrics.jsonl (and tensorboard when installed) and OUT/curves.png;
how the step's statistics combine (STATISTICS)."""

from __future__ import annotations

import json
from pathlib import Path

from runs import atomic_write, note

# How each statistic of grpo.policy_loss combines over micro-batches, optimizer steps and processes
# (distributed.combine): a mean over response tokens, weighted by each part's tokens, or a max.
STATISTICS = {"clip_frac": "mean", "dual_clip_frac": "mean", "prob_ratio_mean": "mean",
              "prob_ratio_max": "max", "gamma_mean": "mean"}


class MetricsLog:
    """metrics.jsonl (one JSON object per line) and tensorboard when it is installed. It starts from
    `records` (the resumed checkpoint's log; [] for a new run), rewritten atomically: the lines a
    killed run wrote past its checkpoint are dropped, and a missing, truncated or damaged file is
    restored. Only the main process writes (enabled=False elsewhere)."""

    def __init__(self, out: Path, records: list[dict], enabled: bool):
        self.path, self.enabled, self.records = out / "metrics.jsonl", enabled, list(records)
        if not enabled:
            return
        if records and _readable_lines(self.path, records[-1]["step"]) != records:
            note(f"{self.path} was missing, truncated or damaged: steps 0..{records[-1]['step']} "
                  "restored from the checkpoint")
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
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


def _readable_lines(path: Path, last_step: int) -> list[dict]:
    """The records of metrics.jsonl up to last_step, read up to the first line that is not one."""
    records = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, ValueError):
        return records
    for line in lines:
        try:
            record = json.loads(line)
            if record["step"] <= last_step:
                records.append(record)
        except (ValueError, KeyError, TypeError):
            break
    return records


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
