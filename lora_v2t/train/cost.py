"""What a training step costs before it runs (parameter counts, a peak memory estimate, whether gradient
checkpointing is needed), and the peak it measured afterwards."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import psutil
import torch

from ..config import RunConfig
from ..model.backbone import num_blocks

if TYPE_CHECKING:
    from ..model.vector2text import Vector2Text

# Activations a layer keeps for the backward pass, in tensors of (batch, tokens, hidden): calibrated on an H100 run
# of bench/gpu.py (ruGPT-3 large shapes, 8-bit, bf16 autocast, the MLP's GELU fused by the loader, batch 16 x 65,
# 24 layers of 1536): the step peaked at 4.62 GiB, 3.12 beyond its weights, optimizer state and logits, 43.6 such
# tensors per layer. (Before the GELU was fused the same step peaked at 6.33 GiB.)
ACTIVATIONS_PER_LAYER = 44
ACTIVATIONS_PER_LAYER_CHECKPOINTED = 2
# The share of free GPU memory a step may plan to use without gradient checkpointing: the estimate leaves out
# cuBLAS workspaces, the allocator's fragmentation and, with checkpointing, the recomputed layer (the checkpointed
# step above peaked at 3.39 GiB where this arithmetic gives 1.64). With 0.5, an 8 GB card (about 6.5 GiB free after
# the weights) checkpoints the default recipe's 16 x 65 step (3.8 GiB beyond the weights); a 10 GB one does not.
HEADROOM = 0.5


def describe_cost(
    v2t: Vector2Text, cfg: RunConfig, checkpointing: bool, loss_vocab: int | None, row_tokens: int | None = None
) -> dict:
    """Trainable and frozen parameter counts and a rough peak memory estimate for one step.

    The peak is what is loaded, the optimizer's state, a training step (activations kept for the backward pass,
    fp32 logits over the loss's vocabulary at the labelled positions, or over every position and token without
    ``loss_vocab``) and a validation batch (fp32 logits over the whole vocabulary). On a GPU, where the measure is
    torch's allocated memory, what is loaded is the weights, and the step and the validation batch take turns (the
    larger counts). On a CPU the measure is the process's peak resident memory: what is loaded is the resident
    memory when the estimate is made (the weights, the Python runtime and its libraries, the tokenizer and the
    corpus), and the two add up, because the C allocator keeps a step's freed activations for the next step (a
    corrector run of offline:gemma-3-270m rose from 1.5 to 4.1 GiB in its first step and stayed there; its
    validation batches took it to 8.2). The trainer logs the measured peak beside the estimate at the end
    (:func:`measured_peak_gib`).

    Args:
        checkpointing: whether the step recomputes activations (gradient checkpointing).
        loss_vocab: the number of tokens of the loss's softmax (``training.loss_vocab: corpus``); None: all.
        row_tokens: the longest row a batch can hold after the prefix (a corrector's context and its text, EOS
            included), known once the corpus is tokenised; None: ``data.max_tokens`` (twice that for a corrector).
            Batches are padded to their longest row, so a corpus of short sentences needs far less than the cap.
    """
    trainable = sum(p.numel() for p in v2t.trainable_parameters())
    base = v2t.base_model
    frozen = sum(p.numel() for p in base.parameters() if not p.requires_grad)
    weight_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    info = v2t.backbone_info
    layers = num_blocks(base.config) or 12
    if row_tokens is None:
        row_tokens = cfg.data.max_tokens * (2 if cfg.training.role == "corrector" else 1)
    seq = row_tokens + cfg.projector.slots
    batch = cfg.training.batch_size
    act_bytes = 2 if v2t.device.type == "cuda" else 4
    per_layer = ACTIVATIONS_PER_LAYER_CHECKPOINTED if checkpointing else ACTIVATIONS_PER_LAYER
    activations = layers * per_layer * batch * seq * info["hidden_size"] * act_bytes
    # fp32 logits, their softmax and gradient: at the labelled positions (about half) over the loss vocabulary
    train_logits = 3 * batch * seq * (loss_vocab // 2 if loss_vocab else info["vocab_size"]) * 4
    eval_logits = 3 * batch * seq * info["vocab_size"] * 4  # validation scores over the whole vocabulary
    optimizer = trainable * 4 * 4  # weights, gradients, two AdamW moments in fp32
    if v2t.device.type == "cuda":  # measured as torch's live tensors: a validation batch reuses the step's memory
        step, loaded = optimizer + max(activations + train_logits, eval_logits), weight_bytes
    else:  # measured as resident memory: the C allocator keeps the step's freed activations for the next step
        step, loaded = optimizer + activations + train_logits + eval_logits, max(weight_bytes, resident_bytes())
    return {
        "trainable_params": trainable,
        "frozen_params": frozen,
        "weights_gib": weight_bytes / 2**30,
        "loaded_gib": loaded / 2**30,
        "estimated_peak_gib": (loaded + step) / 2**30,
        "step_gib": step / 2**30,
        "tokens_per_row": seq,
    }


def resident_bytes() -> int:
    """The process's resident memory now (0 where psutil cannot tell)."""
    try:
        return int(psutil.Process().memory_info().rss)
    except psutil.Error:
        return 0


def needs_checkpointing(setting: bool | str, step_gib: float, free_gib: float | None) -> bool:
    """``training.gradient_checkpointing``: true or false as given; ``auto``: on only where a step without it
    (``step_gib`` beyond the loaded weights) would not fit in ``HEADROOM`` of the free GPU memory (``free_gib``;
    None on a CPU, where it stays off: it only trades time for memory there)."""
    if isinstance(setting, bool):
        return setting
    return free_gib is not None and step_gib > HEADROOM * free_gib


def free_gib(device: torch.device) -> float | None:
    """The free memory of a CUDA ``device`` in GiB; None on a CPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)[0] / 2**30


def measured_peak_gib(device: torch.device) -> float | None:
    """The peak memory since :func:`reset_peak` (CUDA: allocated memory), else the process's peak resident memory
    (None where the platform does not tell: Windows)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20  # bytes on macOS, KiB on Linux


def reset_peak(device: torch.device) -> None:
    """Start measuring the peak from here: on CUDA (the encoder, freed by now, is not the step's), and on a Linux
    CPU, where the kernel resets the process's peak resident memory (else an earlier model or run of the same
    Python process, a notebook's or a test session's, would stand as this run's peak)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # 5: reset the peak resident set size (proc(5))
    except OSError:
        pass  # not Linux, or not allowed: the peak counts from the process's start
