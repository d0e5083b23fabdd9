"""Saving an adapter bundle: the active adapter of a loaded model written as a folder, atomically, never with base
weights or pickle (:mod:`lora_v2t.bundle.adapter` says what the folder holds, and validates and loads one)."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..bundle.cards import bundle_card
from ..bundle.format import BackboneInfo, BundleConfig, ProjectorInfo
from ..bundle.hub import backbone_hub_id, peft_base_name
from ..bundle.layout import BUNDLE_FILES, CORRECTOR_FORMAT_VERSION, FORMAT_VERSION, FULL_MODEL_FILES, OUTPUT_VOCAB_FILE
from ..config import PRECISION_KEYS
from ..util.errors import V2TError
from ..util.files import atomic_folder, refuse_foreign

if TYPE_CHECKING:
    import torch

    from ..model.vector2text import Vector2Text

logger = logging.getLogger(__name__)

PROJECTOR_DTYPES = ("float32", "bfloat16")  # how save_adapter may store a projector


def save_adapter(
    v2t: Vector2Text, path: str | Path, training: dict | None = None, projector_dtype: str = "float32"
) -> Path:
    """Write the active adapter of ``v2t`` as a bundle at ``path`` (replacing an older bundle there).
    ``projector_dtype`` ``bfloat16`` stores the projector's weight matrices at half their size (a split corrector's
    are most of its bundle); loading puts them back in fp32, rounded to bf16's 8 significant bits."""
    from safetensors.torch import save_file

    state = stored_projector_state(v2t.projector, projector_dtype)
    path = Path(path)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / "v2t_config.json").exists())):
        raise V2TError(f"{path} exists and is not an adapter bundle: choose a new or empty folder")
    refuse_foreign(
        path,
        BUNDLE_FILES + FULL_MODEL_FILES + (OUTPUT_VOCAB_FILE,),
        "an adapter bundle",
        "move them away, or save the adapter to another folder",
    )
    name = v2t.active_adapter
    if training:
        v2t.adapter_meta[name].training.update(training)
    with atomic_folder(path) as tmp:
        if not v2t.is_peft:
            v2t.base_model.save_pretrained(tmp / "backbone")
            v2t.tokenizer.save_pretrained(tmp / "backbone")
        else:
            _save_lora(v2t.model, name, tmp)
        if v2t.is_peft and name != "default":  # peft writes non-default adapters into a subfolder named after them
            for item in (tmp / name).iterdir():
                item.replace(tmp / item.name)
            (tmp / name).rmdir()
        save_file(state, str(tmp / "projector.safetensors"), metadata={"format": "pt"})
        if v2t.output_vocab is not None:
            save_file(
                {"token_ids": v2t.output_vocab.to("cpu").contiguous()},
                str(tmp / OUTPUT_VOCAB_FILE),
                metadata={"format": "pt"},
            )
        config = bundle_config(v2t)
        (tmp / "v2t_config.json").write_text(config.to_json(), encoding="utf-8")
        if v2t.is_peft:  # name the base by its hub id, never by a local path (peft writes where it was loaded from)
            _set_peft_base(tmp / "adapter_config.json", config.backbone.name)
        bundle_card(config).save(tmp / "README.md")  # a huggingface_hub ModelCard: metadata header, then the text
        expected = (BUNDLE_FILES if v2t.is_peft else FULL_MODEL_FILES) + (OUTPUT_VOCAB_FILE,)
        for item in tmp.iterdir():
            if item.name not in expected:
                item.unlink()
            elif item.suffix == ".safetensors":  # safetensors writes 0600: readable as the other files are (umask)
                shutil.copymode(tmp / "v2t_config.json", item)
    logger.debug("saved adapter %r to %s", name, path)
    return path


def stored_projector_state(projector: torch.nn.Module, projector_dtype: str = "float32") -> dict[str, torch.Tensor]:
    """``projector``'s state as a bundle stores it, on the CPU: with ``projector_dtype`` ``bfloat16`` its floating
    weight matrices in bf16, every other tensor (biases, norms, the embedding scale) as it is. Loading it into the
    projector rounds the matrices in place, so what is decoded before saving is what the bundle will decode."""
    import torch

    if projector_dtype not in PROJECTOR_DTYPES:
        raise V2TError(f"projector_dtype must be one of {', '.join(PROJECTOR_DTYPES)}, got {projector_dtype!r}")
    dtype = getattr(torch, projector_dtype)
    return {
        key: tensor.detach().to("cpu", dtype if tensor.ndim >= 2 and tensor.is_floating_point() else None).contiguous()
        for key, tensor in projector.state_dict().items()
    }


def _save_lora(peft_model, name: str, folder: Path) -> None:
    """peft's save of adapter ``name``, with its config naming the base by the folder it was loaded from while peft
    saves: peft's vocabulary check then reads that folder's config.json instead of asking the hub about the hub id
    a loaded bundle's adapter_config.json names (see :func:`_set_peft_base`)."""
    config = peft_model.peft_config[name]
    named = config.base_model_name_or_path
    config.base_model_name_or_path = peft_model.get_base_model().name_or_path or named
    try:
        peft_model.save_pretrained(folder, selected_adapters=[name], safe_serialization=True)
    finally:
        config.base_model_name_or_path = named


def _set_peft_base(file: Path, backbone_name: str) -> None:
    """Make peft's adapter_config.json name the base by its hub id (or its folder's name): peft records the path
    the base was loaded from, which means nothing on another machine (``AutoPeftModelForCausalLM`` reads it)."""
    config = json.loads(file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = peft_base_name(backbone_name)
    file.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def bundle_config(v2t: Vector2Text) -> BundleConfig:
    """The content of ``v2t_config.json`` for the active adapter."""
    meta, info = v2t.meta, v2t.backbone_info
    # the precision the adapter was trained in, kept from its bundle; the loaded base's when it never said
    precision = meta.precision or {k: info[k] for k in PRECISION_KEYS}
    backbone = BackboneInfo(
        name=info["name"],
        model_type=info["model_type"],
        hidden_size=info["hidden_size"],
        vocab_size=info["vocab_size"],
        hub_id=backbone_hub_id(info["name"]),
        **precision,
        absent=frozenset(PRECISION_KEYS) - set(precision),
    )
    return BundleConfig(
        format_version=CORRECTOR_FORMAT_VERSION if meta.role == "corrector" else FORMAT_VERSION,
        lora_v2t_version=__version__,
        trainable="lora" if v2t.is_peft else "full",
        encoder=copy.deepcopy(meta.encoder),
        backbone=backbone,
        projector=ProjectorInfo(**v2t.projector.describe()),
        lora=copy.deepcopy(meta.lora),
        # the KV cache is a choice of the machine decoding, not of the adapter (and older readers do not know it)
        generation={k: v for k, v in meta.generation.items() if k != "cache"},
        output_vocab_size=None if v2t.output_vocab is None else int(v2t.output_vocab.numel()),
        training=copy.deepcopy(meta.training),
        role=meta.role,
        corrector=meta.corrector,
        context_tokens=meta.context_tokens,
        extra=copy.deepcopy(meta.extra),
    )
