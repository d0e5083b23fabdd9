"""lora_v2t: turn sentence-embedding vectors back into text with a frozen LM, a prefix projector and LoRA.

from lora_v2t import load_adapter
v2t = load_adapter("checkpoints/adapters/use-gemma270m-ru")
v2t.invert(["Где лодка?"])
"""

import importlib
import logging
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lora_v2t")  # pyproject.toml's, the one place the version is written
except PackageNotFoundError:  # a source tree run without being installed
    __version__ = "0+unknown"

# On CPUs with AVX-512 BF16, bitsandbytes (imported with peft) asks the `kernels` package for an optional 4-bit
# CPU matmul, kernels-community/quantization-bitsandbytes, when it is imported. Nothing here needs it, and two
# lines about it alarmed every command's user: kernels' note that it skips the publisher trust check (with
# HF_HUB_OFFLINE=1), and bitsandbytes' note that the kernel could not be loaded. Exactly those two are dropped.
OPTIONAL_KERNEL_NOTICES = {
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' ",
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
}


def _drop_notice(notice: str):
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(notice)

    return keep


for _logger, _notice in OPTIONAL_KERNEL_NOTICES.items():
    logging.getLogger(_logger).addFilter(_drop_notice(_notice))
del _logger, _notice

from .config import (  # noqa: E402
    BackboneConfig,
    EncoderConfig,
    GenerationConfig,
    LoRAConfig,
    ProjectorConfig,
)
from .util.errors import V2TError  # noqa: E402

# What needs torch, transformers and peft (seconds to import) is imported when first used, so that the command
# line answers --help and bad arguments at once: ``from lora_v2t import load_adapter`` imports it then.
LAZY_EXPORTS = {
    "load_adapter": "lora_v2t.bundle.loading",
    "Encoder": "lora_v2t.model.encoders",
    "load_encoder": "lora_v2t.model.encoders",
    "Reranked": "lora_v2t.model.generate",
    "Vector2Text": "lora_v2t.model.vector2text",
}


def __getattr__(name: str):
    """The heavy exports (PEP 562), imported from their modules on first use."""
    if name not in LAZY_EXPORTS:
        raise AttributeError(f"module 'lora_v2t' has no attribute {name!r}")
    value = getattr(importlib.import_module(LAZY_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(LAZY_EXPORTS))


__all__ = [
    "BackboneConfig",
    "Encoder",
    "EncoderConfig",
    "GenerationConfig",
    "LoRAConfig",
    "ProjectorConfig",
    "Reranked",
    "V2TError",
    "Vector2Text",
    "__version__",
    "load_adapter",
    "load_encoder",
]
