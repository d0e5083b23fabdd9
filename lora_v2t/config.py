"""Configuration dataclasses: encoder, backbone, projector, LoRA and generation.

Every field carries a one-line comment; recipes in ``recipes/`` are commented dumps of these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import V2TError

PROJECTOR_KINDS = ("zero-pad", "linear", "mlp")
QUANTIZATION_MODES = ("auto", "8bit", "4bit", "none")

DEFAULT_ENCODER = "sentence-transformers/LaBSE"
DEFAULT_BACKBONE = "ai-forever/rugpt3large_based_on_gpt2"
OFFLINE_ENCODER = "offline:use-multilingual"
OFFLINE_BACKBONE = "offline:gemma-3-270m"


@dataclass
class EncoderConfig:
    spec: str = DEFAULT_ENCODER  # hub id or folder of a sentence-transformers model, or offline:use-multilingual


@dataclass
class BackboneConfig:
    name: str = DEFAULT_BACKBONE  # hub id, local folder, .gguf file, or offline:gemma-3-270m
    quantization: str = "auto"  # auto (8bit on CUDA, none on CPU) | 8bit | 4bit | none
    device: str | None = None  # cuda / cpu / cuda:1; None picks CUDA when available

    def __post_init__(self):
        check_choice("quantization", self.quantization, QUANTIZATION_MODES)


@dataclass
class ProjectorConfig:
    kind: str = "mlp"  # zero-pad (the original experiment: pad d -> h, one slot) | linear | mlp
    prefix_length: int = 1  # k, the number of prefix slots the vector fills
    hidden_dim: int | None = None  # width of the MLP's hidden layer; None = the backbone's hidden size

    def __post_init__(self):
        check_choice("projector kind", self.kind, PROJECTOR_KINDS)
        if not isinstance(self.prefix_length, int) or self.prefix_length < 1:
            raise V2TError(f"prefix_length must be an integer >= 1, got {self.prefix_length!r}")
        if self.kind == "zero-pad" and self.prefix_length != 1:
            raise V2TError("the zero-pad projector fills exactly one slot: set prefix_length=1 or use 'mlp'")


@dataclass
class LoRAConfig:
    r: int = 16  # rank of the LoRA update matrices
    alpha: int | None = None  # LoRA scaling numerator; None = 2 * r
    dropout: float = 0.05  # dropout on the LoRA input during training
    target_modules: list[str] | None = None  # module names to adapt; None = attention projections per architecture

    def __post_init__(self):
        if not isinstance(self.r, int) or self.r < 1:
            raise V2TError(f"lora r must be an integer >= 1, got {self.r!r}")


@dataclass
class GenerationConfig:
    max_new_tokens: int = 48  # longest reconstruction, in tokens
    do_sample: bool = False  # sample instead of greedy / beam search
    temperature: float = 1.0  # sampling temperature
    top_k: int = 50  # sample among the k most likely tokens (0 = off)
    top_p: float = 1.0  # nucleus sampling mass
    num_beams: int = 1  # beam search width (1 = greedy or sampling)
    num_return_sequences: int = 1  # candidates returned (or reranked) per vector
    repetition_penalty: float = 1.0  # >1 discourages repeating tokens
    batch_size: int = 32  # vectors decoded together

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise V2TError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_return_sequences < 1 or self.num_beams < 1 or self.batch_size < 1:
            raise V2TError("num_return_sequences, num_beams and batch_size must be >= 1")
        if not self.do_sample and self.num_return_sequences > self.num_beams:
            raise V2TError(
                f"num_return_sequences={self.num_return_sequences} needs num_beams >= that many "
                "or do_sample=True"
            )

    def updated(self, **overrides) -> GenerationConfig:
        """Return a copy with the given fields replaced (unknown names are an error)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise V2TError(f"unknown generation option(s) {unknown}; known: {sorted(known)}")
        merged = asdict(self)
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return GenerationConfig(**merged)


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a one-line error unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise V2TError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


__all__ = [
    "BackboneConfig",
    "EncoderConfig",
    "GenerationConfig",
    "LoRAConfig",
    "ProjectorConfig",
]
