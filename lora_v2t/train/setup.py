"""What a training run is set up with before its loop: the device, accelerate's Accelerator with the recipe's
mixed precision, and the optimizer with its schedule."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import RunConfig
from ..model.backbone import cpu_has_bf16_units, pick_device
from ..util.errors import V2TError

if TYPE_CHECKING:
    from ..model.vector2text import Vector2Text


def training_device(spec: str | None) -> torch.device | None:
    """The device ``backbone.device`` asks for (None: accelerate's choice), checked before anything loads.

    ``cuda:N`` is honoured in a single process (it becomes the current CUDA device); with several processes
    each one takes the GPU of its rank, so an explicit index is refused.
    """
    if spec is None:
        return None
    device = pick_device(spec, use_cpu="--backbone.device=cpu")  # a device this machine has
    if device.type not in ("cpu", "cuda"):
        raise V2TError(f"backbone.device {spec!r}: training runs on cpu, cuda or cuda:N")
    if device.type == "cpu" or device.index is None:
        return device
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise V2TError(
            f"backbone.device={spec} with several processes: each process takes the GPU of its rank; "
            "leave backbone.device unset and choose GPUs with `accelerate launch --gpu_ids`"
        )
    torch.cuda.set_device(device)
    return device


def make_accelerator(cfg: RunConfig, device: torch.device | None, run_dir: Path):
    """An ``Accelerator`` on ``device`` with the recipe's mixed precision (``auto``: bf16/fp16 on CUDA; bf16 on
    CPUs with bf16 matrix units, see :func:`lora_v2t.model.backbone.cpu_has_bf16_units`; else fp32)."""
    from accelerate import Accelerator

    cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    mixed = mixed_precision(cfg.training.mixed_precision, cuda)
    try:
        return Accelerator(
            mixed_precision=mixed,
            cpu=not cuda,
            log_with="tensorboard" if cfg.training.tensorboard else None,
            project_dir=str(run_dir),
        )
    except ValueError as exc:
        if "already been initialized" not in str(exc):
            raise
        raise V2TError(
            f"this Python process already trained with another mixed precision or device, and "
            f"accelerate cannot change them within a process: run this training (mixed precision "
            f"{mixed}) in a new process"
        ) from exc


def mixed_precision(setting: str, cuda: bool) -> str:
    """What ``training.mixed_precision`` means on this machine: ``auto`` is bf16 (fp16 without bf16 support) on
    CUDA, bf16 on CPUs with bf16 matrix units (:func:`lora_v2t.model.backbone.cpu_has_bf16_units`), else ``no``."""
    if setting != "auto":
        return setting
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16_units() else "no"


def _check_tensorboard(cfg: RunConfig) -> None:
    if cfg.training.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise V2TError("training.tensorboard=true needs the tensorboard package: pip install tensorboard")


def make_optimizer(v2t: Vector2Text, tc):
    """AdamW over the LoRA weights (``training.lr``) and the projector (``training.projector_lr``), with
    linear warm-up and a cosine decay to ``min_lr_ratio``."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    projector_params = list(v2t.projector.parameters())
    others = [p for p in v2t.trainable_parameters() if all(p is not q for q in projector_params)]
    groups = [{"params": others, "lr": tc.lr}]
    if projector_params:
        groups.append({"params": projector_params, "lr": tc.projector_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=tc.weight_decay)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, tc.warmup_steps, tc.max_steps, min_lr_rate=tc.min_lr_ratio
    )
    return optimizer, scheduler
