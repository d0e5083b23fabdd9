"""lora_v2t: turn sentence-embedding vectors back into text with a frozen LM, a prefix projector and LoRA.

    from lora_v2t import load_adapter
    v2t = load_adapter("checkpoints/adapters/use-gemma270m-ru")
    v2t.invert(["Где лодка?"])
"""

import logging

__version__ = "0.1.0"

# On CPUs with AVX-512 BF16, bitsandbytes (imported with peft) asks the `kernels` package for an optional 4-bit
# CPU matmul, kernels-community/quantization-bitsandbytes, when it is imported. Nothing here needs it, and two
# lines about it alarmed every command's user: kernels' note that it skips the publisher trust check (with
# HF_HUB_OFFLINE=1), and bitsandbytes' note that the kernel could not be loaded. Exactly those two are dropped.
OPTIONAL_KERNEL_NOTICES = {
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' ",
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
}
for _logger, _notice in OPTIONAL_KERNEL_NOTICES.items():
    logging.getLogger(_logger).addFilter(lambda record, notice=_notice: not record.getMessage().startswith(notice))
del _logger, _notice

from .bundle.loading import load_adapter  # noqa: E402
from .config import (  # noqa: E402
    BackboneConfig,
    EncoderConfig,
    GenerationConfig,
    LoRAConfig,
    ProjectorConfig,
)
from .model.encoders import Encoder, load_encoder  # noqa: E402
from .model.generate import Reranked  # noqa: E402
from .model.vector2text import Vector2Text  # noqa: E402
from .util.errors import V2TError  # noqa: E402

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
