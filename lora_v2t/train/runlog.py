"""What a training run records and shows as it goes: ``metrics.jsonl``, ``loss.png``, optionally TensorBoard, and
its progress bar."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..util.files import append_complete, atomic_write
from ..util.textfile import split_lines

if TYPE_CHECKING:
    from ..config import TrainingConfig
    from ..train.state import TrainState

logger = logging.getLogger(__name__)


def _row(line: str) -> dict | None:
    """A line of ``metrics.jsonl`` as a row, or None when it is not one (cut short, or blank)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step"), int) else None


class RunLog:
    """Appends one JSON line per log or evaluation and redraws the loss plot; only the main process writes.

    Args:
        run_dir: the run folder.
        accelerator: the run's accelerate ``Accelerator`` (for the main-process check and TensorBoard).
        tensorboard: also log float values to TensorBoard through accelerate's tracker.
    """

    def __init__(self, run_dir: Path, accelerator, tensorboard: bool = False):
        self.metrics_file = run_dir / "metrics.jsonl"
        self.plot_file = run_dir / "loss.png"
        self.accelerator = accelerator
        self.tensorboard = tensorboard

    @property
    def writes(self) -> bool:
        return self.accelerator.is_main_process

    def start_over(self) -> None:
        """A fresh run does not append to a crashed run's leftovers."""
        if self.writes:
            self.metrics_file.unlink(missing_ok=True)

    def resume_at(self, step: int) -> None:
        """Make the log read as one run continuing from a checkpoint of ``step``: drop the rows a killed session
        wrote past it (the resumed run writes them again) and lines cut short (a crash or a full disk mid-write)."""
        if not self.writes or not self.metrics_file.exists():
            return
        lines = split_lines(self.metrics_file.read_text(encoding="utf-8", errors="replace"))
        kept = [
            line for line, row in zip(lines, map(_row, lines), strict=True) if row is not None and row["step"] <= step
        ]
        if len(kept) < len(lines):
            atomic_write(self.metrics_file, "".join(line + "\n" for line in kept))
            logger.info(
                "%s: dropped %d line(s) past step %d or cut short; the resumed run logs from step %d on",
                self.metrics_file,
                len(lines) - len(kept),
                step,
                step + 1,
            )

    def append(self, record: dict) -> None:
        """One JSON line, written whole or not at all."""
        if not self.writes:
            return
        append_complete(self.metrics_file, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        if self.tensorboard:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, float)}, step=record["step"])

    def plot(self) -> None:
        if self.writes:
            plot_losses(self.metrics_file, self.plot_file)


def plot_losses(metrics_file: Path, out: Path) -> None:
    """Training and validation loss against steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = split_lines(metrics_file.read_text(encoding="utf-8", errors="replace"))
    rows = [row for row in map(_row, lines) if row is not None]
    train = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train", alpha=0.7)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(out.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(out, lambda path: fig.savefig(path, dpi=100, format="png"))
    plt.close(fig)


def progress_bar(tc: TrainingConfig, state: TrainState, show: bool):
    """Steps out of ``max_steps``; or, for a run boxed by ``max_minutes``, the minutes left (such a run rarely
    reaches its step count, so a step bar would show an ETA it will not keep)."""
    from tqdm.auto import tqdm

    if tc.max_minutes is None:
        return tqdm(total=tc.max_steps, initial=state.step, desc="training", unit="step", disable=not show)
    budget = round(tc.max_minutes * 60)
    return tqdm(
        total=budget,
        initial=min(round(state.elapsed_s), budget),
        desc="training",
        unit="s",
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {remaining} left{postfix}",
        disable=not show,
    )
