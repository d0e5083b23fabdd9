"""What the trainer measures: the validation loss with a few greedy reconstructions at each evaluation, and the
training loss and step time between log lines."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import RunConfig

if TYPE_CHECKING:
    from ..model.vector2text import Vector2Text
    from ..train.pairs import TrainingData
    from ..train.state import TrainState

logger = logging.getLogger(__name__)


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


def evaluation_record(
    v2t: Vector2Text,
    cfg: RunConfig,
    state: TrainState,
    data: TrainingData,
    train_loss: float | None,
    ms_per_step: float | None,
) -> dict:
    """The validation loss and ``training.num_samples`` greedy reconstructions of validation sentences, logged;
    returned as the record ``metrics.jsonl`` keeps."""
    texts, vectors, contexts = data.val_texts, data.val_vectors, data.val_contexts
    n, max_tokens = min(cfg.training.num_samples, len(texts)), cfg.data.max_tokens
    val_loss = validation_loss(v2t, texts, vectors, cfg.training.batch_size, max_tokens, contexts=contexts)
    greedy: dict[str, Any] = {
        "max_new_tokens": max_tokens,
        "do_sample": False,
        "num_beams": 1,
        "num_return_sequences": 1,
    }
    samples = v2t.generate(vectors[:n], contexts=None if contexts is None else contexts[:n], **greedy) if n else []
    parts = [f"step {state.step}"] + ([f"loss {train_loss:.3f}"] if train_loss is not None else [])
    parts += [f"val {val_loss:.3f}"] + ([f"{ms_per_step:.0f} ms/step"] if ms_per_step is not None else [])
    logger.info(" | ".join(parts))
    for original, generated in zip(texts[:n], samples, strict=True):
        logger.info("    %s ==> %s", original, generated)
    return {
        "kind": "eval",
        "step": state.step,
        "val_loss": val_loss,
        "train_loss": train_loss,
        "sentences_seen": state.sentences_seen,
        "elapsed_s": round(state.elapsed_s, 1),
        "samples": [{"text": t, "generated": g} for t, g in zip(texts[:n], samples, strict=True)],
    }
