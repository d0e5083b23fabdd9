"""How much memory a training run plans for, and what it measured: gradient checkpointing where a step would not
fit otherwise, the estimate the run logs at the start (:mod:`lora_v2t.train.cost`), and the peak it reports at the
end beside that estimate."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..config import RunConfig
from ..train.cost import HEADROOM, describe_cost, free_gib, measured_peak_gib, needs_checkpointing, reset_peak
from ..train.data import TokenizedCorpus, tokenize_corpus

if TYPE_CHECKING:
    from ..model.vector2text import Vector2Text

logger = logging.getLogger(__name__)


def plan_memory(
    v2t: Vector2Text, cfg: RunConfig, loss_vocab: int | None, longest: int, agree: Callable[[bool], bool]
) -> tuple[dict, bool]:
    """Switch gradient checkpointing on as ``training.gradient_checkpointing`` says (``auto``: only where the
    step would not fit the free memory otherwise; ``agree`` makes every process take the main one's choice);
    return the cost estimate the run logs and whether checkpointing is on."""
    without = describe_cost(v2t, cfg, checkpointing=False, loss_vocab=loss_vocab, row_tokens=longest)
    free = free_gib(v2t.device)
    checkpointing = agree(needs_checkpointing(cfg.training.gradient_checkpointing, without["step_gib"], free))
    cost = without
    if checkpointing:
        v2t.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        cost = describe_cost(v2t, cfg, checkpointing=True, loss_vocab=loss_vocab, row_tokens=longest)
    reset_peak(v2t.device)
    if cfg.training.gradient_checkpointing == "auto" and checkpointing:
        logger.info(
            "gradient checkpointing on: a step without it needs about %.2f GiB beyond the weights, more "
            "than %.0f%% of the %.2f GiB free",
            without["step_gib"],
            100 * HEADROOM,
            free,
        )
    return cost, checkpointing


def longest_row(
    tokenizer,
    cut: int,
    tokens: TokenizedCorpus,
    contexts: TokenizedCorpus | None,
    val_texts: list[str],
    val_contexts: list[str] | None,
) -> int:
    """The most tokens a training or validation row holds after the prefix: batches are padded to their
    longest row, and a corrector's row is its hypothesis, then its text."""

    def rows(tokens: TokenizedCorpus, contexts: TokenizedCorpus | None) -> np.ndarray:
        lengths = tokens.lengths.astype(np.int64)
        return lengths if contexts is None else lengths + contexts.lengths

    longest = int(rows(tokens, contexts).max())
    if val_texts:
        val = tokenize_corpus(tokenizer, val_texts, cut)
        val_context = None if val_contexts is None else tokenize_corpus(tokenizer, val_contexts, cut)
        longest = max(longest, int(rows(val, val_context).max()))
    return longest


def memory_report(device: torch.device, cost: dict, checkpointing: bool) -> dict:
    """The peak memory measured so far against the estimate ``cost`` logged at the start; logged and returned
    (for the bundle's training record)."""
    measured, estimated = measured_peak_gib(device), cost["estimated_peak_gib"]
    what = (
        "allocated GPU memory"
        if device.type == "cuda"
        else "resident memory of the whole process (Python, the tokenizer, the corpus), from the model's load on "
        "(Linux; elsewhere over the process's life)"
    )
    if measured:
        logger.info(
            "peak memory: %.2f GiB measured, %.2f GiB estimated (%.2fx the measure); measured: %s",
            measured,
            estimated,
            estimated / measured,
            what,
        )
    return {
        "estimated_peak_gib": round(estimated, 3),
        "measured_peak_gib": measured and round(measured, 3),
        "measured": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        "gradient_checkpointing": checkpointing,
    }
