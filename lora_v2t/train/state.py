"""Where a training run stands (saved in every checkpoint's trainer_state.json) and the training summary its
bundles record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig
from ..train.checkpoint import list_checkpoints


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint's trainer_state.json."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # passes over the training sentences begun
    batch_in_epoch: int = 0  # batches of this epoch taken (by all processes together)
    sentences_seen: int = 0  # training sentences read, by all processes together
    elapsed_s: float = 0.0  # training wall time, over every session of the run


def training_summary(cfg: RunConfig, state: TrainState, metrics: dict | None = None) -> dict:
    summary = {
        "steps": state.step,
        "sentences_seen": state.sentences_seen,
        "data": cfg.data.train,
        "batch_size": cfg.training.batch_size * cfg.training.grad_accum,
        "lr": cfg.training.lr,
        "projector_lr": cfg.training.projector_lr,
        "wall_minutes": round(state.elapsed_s / 60, 1),
        # what it trained on, so that a corrector's data can be checked to be unseen (see lora_v2t.train.pairs)
        "sample": {
            k: getattr(cfg.data, k)
            for k in ("train", "val", "val_size", "max_sentences", "min_chars", "max_chars", "seed")
        },
    }
    if cfg.data.order_seed is not None:  # the batch order, when not data.seed's (outside "sample": not what it saw)
        summary["order_seed"] = cfg.data.order_seed
    if cfg.training.init_adapter:  # the weights it started from (steps and minutes above are this run's)
        summary["init_adapter"] = cfg.training.init_adapter
    if metrics:
        summary["metrics"] = metrics
    return summary


def stop_hint(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        return " (lower training.batch_size, or set training.gradient_checkpointing=true)"
    return ""


def resume_hint(run_dir: Path) -> str:
    checkpoints = list_checkpoints(run_dir)
    if checkpoints:
        return f"the last checkpoint is {checkpoints[-1]}: continue with --resume"
    return "no checkpoint was saved"
