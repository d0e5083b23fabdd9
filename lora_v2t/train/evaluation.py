"""What the trainer measures: the validation loss, and the training loss and step time between log lines."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from ..model.vector2text import Vector2Text


class LossWindow:
    """Training losses and step times since the last log line."""

    def __init__(self):
        self.start, self.losses = time.perf_counter(), []

    def add(self, loss: float) -> None:
        self.losses.append(loss)

    @property
    def mean_loss(self) -> float | None:
        return sum(self.losses) / len(self.losses) if self.losses else None

    @property
    def ms_per_step(self) -> float:
        return (time.perf_counter() - self.start) * 1000 / max(len(self.losses), 1)


@torch.no_grad()
def validation_loss(
    v2t: Vector2Text,
    texts: list[str],
    vectors: np.ndarray,
    batch_size: int,
    max_tokens: int,
    loss_vocab: torch.Tensor | None = None,
    contexts: list[str] | None = None,
) -> float:
    """Token-weighted mean cross-entropy over a validation set, in eval mode; over the full vocabulary, or
    over ``loss_vocab`` (see :meth:`Vector2Text.forward`); a corrector's given its ``contexts``."""
    was_training = v2t.training
    v2t.eval()
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        batch = v2t.tokenize(
            texts[start : start + batch_size],
            max_tokens,
            contexts=None if contexts is None else contexts[start : start + batch_size],
        )
        n_tokens = int((batch["attention_mask"] * batch.get("label_mask", 1)).sum())
        loss = v2t.forward(vectors[start : start + batch_size], **batch, loss_vocab=loss_vocab).loss
        total += float(loss) * n_tokens
        count += n_tokens
    v2t.train(was_training)
    return total / max(count, 1)
