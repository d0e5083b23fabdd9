"""lora_v2t: turn sentence-embedding vectors back into text with a frozen LM, a prefix projector and LoRA.

    from lora_v2t import load_adapter
    v2t = load_adapter("checkpoints/adapters/use-gemma270m-ru")
    v2t.invert(["Где лодка?"])
"""

import logging

__version__ = "0.1.0"

# bitsandbytes (imported by peft below) warns at import, on CPUs with AVX-512 BF16, that the optional `kernels`
# package for its 4-bit CPU matmul is missing; nothing here needs it, and the line alarmed every command's user
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda record: "kernels-community" not in record.msg)

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
