"""``load_adapter``: a bundle (a folder or a hub id) on its base model, as a :class:`lora_v2t.Vector2Text`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import PeftModel

from ..bundle.adapter import attach, check_compatible, check_encoder, lora_load_errors, validate_bundle
from ..bundle.format import BundleConfig
from ..bundle.hub import resolve_adapter
from ..config import DTYPES, INT8_THRESHOLD, QUANTIZATION_MODES, DType, Quantization
from ..model.backbone import compute_dtype, input_embedding_weight, load_backbone, pick_device, train_every_weight
from ..model.encoders import load_encoder
from ..model.lora import check_adapter_name, wrapping_in_peft
from ..model.vector2text import Vector2Text
from ..util.checks import check_choice

logger = logging.getLogger(__name__)


def load_adapter(
    path: str | Path,
    backbone: str | None = None,
    encoder=None,
    quantization: Quantization = "auto",
    device: str | None = None,
    name: str = "default",
    trainable: bool = False,
    revision: str | None = None,
    dtype: DType = "auto",
):
    """Load a bundle on its base model: ``load_adapter("checkpoints/.../final")`` or ``load_adapter("org/name")``.

    Args:
        path: the bundle folder, or a hub id ``org/name`` (a folder of that spelling wins; see
            :func:`lora_v2t.bundle.hub.resolve_adapter`).
        backbone: load on this base instead of the one named in the bundle (same hidden and vocab size).
        encoder: an encoder spec or object to use instead of the bundle's (same dimension).
        quantization: ``auto`` (as the bundle was trained, see :func:`load_precision`) | ``8bit`` | ``4bit`` |
            ``none``.
        device: where to run; None picks CUDA when available.
        name: the adapter's name in the registry.
        trainable: load the LoRA and projector weights as trainable (to resume training).
        revision: for a hub id, a branch, tag or commit (default: main).
        dtype: what the base computes in: ``auto`` (see :func:`load_dtype`) | ``float32`` | ``bfloat16``.

    Returns:
        a :class:`lora_v2t.Vector2Text` with this adapter active.
    """
    check_adapter_name(name)
    check_choice("quantization", quantization, QUANTIZATION_MODES)
    path = resolve_adapter(path, revision)
    config = validate_bundle(path)
    compute = load_dtype(config, dtype, device)  # the dtype and the device checked before any warning
    enc = load_encoder(encoder) if encoder is not None else None
    if enc is not None:
        check_encoder(config, enc, path)
    full = config.full
    backbone_name = str(path / "backbone") if full else backbone or config.backbone.name
    precision = load_precision(config, quantization, path)
    threshold = config.backbone.int8_threshold  # as trained (bundles that do not say: the default)
    base, tokenizer = load_backbone(
        backbone_name,
        quantization=precision,
        device=device,
        dtype=compute,
        int8_threshold=INT8_THRESHOLD if threshold is None else threshold,
        use_safetensors=full,
    )  # a bundle's backbone/: never a pickle
    table = input_embedding_weight(base)
    info = {"name": backbone_name, "hidden_size": int(table.shape[1]), "vocab_size": int(table.shape[0])}
    check_compatible(config, info, path)
    if full:
        v2t = Vector2Text(train_every_weight(base, trainable), tokenizer, config.backbone.name)
    else:
        with lora_load_errors(path, name), wrapping_in_peft():
            peft_model = PeftModel.from_pretrained(base, str(path), adapter_name=name, is_trainable=trainable)
        v2t = Vector2Text(peft_model, tokenizer, backbone_name)
    attach(v2t, path, name, config)
    if enc is not None:
        v2t.set_encoder(enc)
    v2t.eval()
    return v2t


def load_dtype(config: BundleConfig, dtype: str, device: str | None) -> torch.dtype:
    """The dtype a bundle's base computes in on ``device``: ``dtype`` when not ``auto``; else as the adapter was
    trained where the device can (:func:`lora_v2t.model.backbone.compute_dtype`). Known before anything loads, so that
    ``invert`` can name it in its output's meta file."""
    check_choice("dtype", dtype, DTYPES)
    if dtype != "auto":
        return getattr(torch, dtype)
    return compute_dtype(pick_device(device), config.backbone.compute_dtype)


def load_precision(config: BundleConfig, quantization: str, path: Path) -> str:
    """The quantization to load a bundle with (its compute dtype is :func:`load_dtype`'s).

    ``auto`` means as the bundle was trained (an fp32-trained adapter is not put on an int8 base because a GPU
    is there); another choice is honoured, with a warning when it differs from training. Bundles that do not
    record their precision (written before lora_v2t did) keep ``auto``: 8-bit on CUDA, none on the CPU.
    """
    trained = config.backbone.quantization
    if trained is None:
        return quantization
    if quantization == "auto":
        logger.info(
            "loading adapter %s as it was trained: quantization %s, compute dtype %s",
            path,
            trained,
            config.backbone.compute_dtype,
        )
        return trained
    if quantization != trained:
        logger.warning(
            "adapter %s was trained with quantization %s; loading it with %s as asked: its outputs "
            "may differ from those it was measured with",
            path,
            trained,
            quantization,
        )
    return quantization
