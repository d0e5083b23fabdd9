"""LoRA settings per architecture: which modules get adapters, as a peft ``LoraConfig``."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from ..config import LoRAConfig
from ..model.backbone import num_blocks
from ..util.errors import V2TError


def check_adapter_name(name) -> None:
    """Refuse an adapter name that peft and torch cannot register (they take it as a module name): not a string,
    empty, or with a '.'."""
    if not isinstance(name, str) or not name or "." in name:
        raise V2TError(f"adapter name must be a non-empty string without '.', got {name!r}: e.g. name='demo'")


# attention projections per architecture (the q/k/v/o of each attention block)
LORA_TARGETS = {
    "gpt2": ["c_attn", "attn.c_proj"],
    "gpt_neox": ["query_key_value", "attention.dense"],
    "bloom": ["query_key_value", "self_attention.dense"],
    "falcon": ["query_key_value", "self_attention.dense"],
}
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
for _arch in (
    "llama",
    "mistral",
    "mixtral",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "qwen2",
    "qwen3",
    "phi3",
    "olmo",
    "olmo2",
    "granite",
    "smollm3",
):
    LORA_TARGETS[_arch] = QKVO


def default_target_modules(model_type: str) -> list[str]:
    """The LoRA target modules for a model type: attention q/k/v/o, or peft's own default."""
    if model_type in LORA_TARGETS:
        return list(LORA_TARGETS[model_type])
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    if model_type in PEFT_DEFAULTS:
        return list(PEFT_DEFAULTS[model_type])
    raise V2TError(
        f"no default LoRA target modules for model type {model_type!r}: "
        "pass target_modules=[...] (names of the attention projection layers)"
    )


def make_lora_config(cfg: LoRAConfig, model_config):
    """A peft LoraConfig for a causal LM with transformers config ``model_config`` (its model type picks the
    default target modules; its number of blocks bounds ``cfg.layers``)."""
    from peft import LoraConfig, TaskType

    model_type, blocks = model_config.model_type, num_blocks(model_config)
    if cfg.layers and blocks and max(cfg.layers) >= blocks:
        raise V2TError(
            f"lora layers {cfg.layers} name a block beyond the backbone's {blocks} (indices 0..{blocks - 1})"
        )

    targets = cfg.target_modules or default_target_modules(model_type)
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.r,
        lora_alpha=cfg.alpha or 2 * cfg.r,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        layers_to_transform=cfg.layers,
        fan_in_fan_out=model_type == "gpt2",
        bias="none",
    )


# peft asks every model it wraps whether it checkpoints activations through transformers' deprecated property: a
# notice to peft, not to our user, printed on every load from the Python API as well as the CLI
PEFT_ASKS_DEPRECATED = r"`is_gradient_checkpointing` is deprecated"


@contextmanager
def wrapping_in_peft() -> Iterator[None]:
    """Wrap a model in peft (``get_peft_model``, ``PeftModel.from_pretrained``) without transformers' notice to
    peft (:data:`PEFT_ASKS_DEPRECATED`); every other warning still reaches the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_ASKS_DEPRECATED, category=FutureWarning)
        yield


def check_target_modules(model, targets) -> None:
    """Refuse target module names that match no module of ``model`` (peft's rule: the whole name, or its end after
    a dot), naming the layer names it does have."""
    names = [name for name, _ in model.named_modules()]
    missing = sorted(t for t in targets if not any(n == t or n.endswith("." + t) for n in names))
    if missing:
        layers = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if type(module).__name__ in ("Linear", "Conv1D", "Linear8bitLt", "Linear4bit")
            }
        )
        raise V2TError(f"lora target_modules {missing} match no layer of the backbone; its layers are named {layers}")
