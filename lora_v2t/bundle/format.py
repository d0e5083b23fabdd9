"""The typed content of a bundle's ``v2t_config.json`` (:class:`BundleConfig`) and of a loaded adapter's metadata
(:class:`AdapterMeta`, ``Vector2Text.adapter_meta[name]``).

The on-disk format is the one :mod:`lora_v2t.bundle.layout` versions: same keys, same values. A key a newer minor
writer added is kept in its section's ``extra`` and written back; a known key an older writer left out is kept out
(``absent``), so reading then writing a bundle's config gives the same JSON.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..bundle.layout import CORRECTOR_FORMAT_VERSION, FORMAT_VERSION
from ..config import (
    BASE_QUANTIZATIONS,
    DEFAULT_ROLE,
    PRECISION_KEYS,
    ROLES,
    TRAINABLE,
    GenerationConfig,
    ProjectorConfig,
    ProjectorKind,
    Role,
    Trainable,
)
from ..util.errors import V2TError

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
BOOKKEEPING = ("extra", "absent")  # the fields of a Section that are not keys of the file


@dataclass(kw_only=True)
class Section:
    """A part of v2t_config.json: its known keys as fields; ``extra``: keys a newer writer added (written back as
    read); ``absent``: known keys the file left out (an older writer's; not written back)."""

    extra: dict = field(default_factory=dict, repr=False)
    absent: frozenset = field(default=frozenset(), repr=False)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name not in BOOKKEEPING)

    @classmethod
    def of(cls, data: dict, **parsed):
        """The section from its JSON object (already checked); ``parsed``: fields built from their own JSON."""
        known = cls.keys()
        values = {k: copy.deepcopy(data[k]) for k in known if k in data} | parsed
        return cls(
            **values,
            extra={k: copy.deepcopy(v) for k, v in data.items() if k not in known},
            absent=frozenset(k for k in known if k not in data),
        )

    def to_dict(self) -> dict:
        """The section as v2t_config.json holds it."""
        out = {}
        for name in self.keys():
            if name not in self.absent:
                value = getattr(self, name)
                out[name] = value.to_dict() if isinstance(value, Section) else copy.deepcopy(value)
        return out | copy.deepcopy(self.extra)


@dataclass(kw_only=True)
class EncoderInfo(Section):
    spec: str
    dim: int


@dataclass(kw_only=True)
class BackboneInfo(Section):
    """The base the adapter was made for, and the precision it trained in (:data:`PRECISION_KEYS`)."""

    name: str
    model_type: str | None = None
    hidden_size: int
    vocab_size: int
    hub_id: str | None = None  # None for a local folder; see adapter_config.json
    quantization: str | None = None
    compute_dtype: str | None = None
    int8_threshold: float | None = None

    @property
    def precision(self) -> dict:
        """The precision keys this section records (older bundles record fewer)."""
        return {k: getattr(self, k) for k in PRECISION_KEYS if k not in self.absent}


@dataclass(kw_only=True)
class ProjectorInfo(Section):
    kind: ProjectorKind  # checked when the bundle is read (validate_config builds a ProjectorConfig)
    embedding_dim: int | None = None
    hidden_size: int | None = None
    prefix_length: int
    hidden_dim: int | None = None
    target_rms: float | None = None

    def config(self) -> ProjectorConfig:
        return ProjectorConfig(kind=self.kind, prefix_length=self.prefix_length, hidden_dim=self.hidden_dim)


@dataclass(kw_only=True)
class LoraInfo(Section):
    r: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    target_modules: list[str] | None = None
    layers: list[int] | None = None


@dataclass(kw_only=True)
class BundleConfig(Section):
    """The content of ``v2t_config.json``."""

    format_version: int = FORMAT_VERSION
    lora_v2t_version: str | None = None
    trainable: Trainable = "lora"
    encoder: EncoderInfo
    backbone: BackboneInfo
    projector: ProjectorInfo
    lora: LoraInfo | None = None
    generation: dict = field(default_factory=dict)  # the bundle's decoding defaults: see generation_defaults
    output_vocab_size: int | None = None
    training: dict = field(default_factory=dict)  # free-form: steps, metrics, samples...
    role: Role = DEFAULT_ROLE
    corrector: str | None = None  # a hypothesizer's corrector: a folder relative to this one, or a hub id
    context_tokens: int | None = None  # a corrector's: how long a hypothesis it reads may be

    @property
    def full(self) -> bool:
        """A fully fine-tuned model (its backbone saved in backbone/), not an adapter."""
        return self.trainable == "full"

    def generation_defaults(self, **overrides) -> GenerationConfig:
        return GenerationConfig.of_bundle(self, **overrides)

    @classmethod
    def from_dict(cls, data: dict, file: Path) -> BundleConfig:
        """Check ``data`` (the JSON object of ``file``) and type it; raise V2TError naming the file and the key."""
        check_config(data, Path(file))
        return cls.of(
            data,
            encoder=EncoderInfo.of(data["encoder"]),
            backbone=BackboneInfo.of(data["backbone"]),
            projector=ProjectorInfo.of(data["projector"]),
            lora=LoraInfo.of(data["lora"]) if isinstance(data.get("lora"), dict) else data.get("lora"),
            generation=dict(data.get("generation") or {}),
            training=dict(data.get("training") or {}),
        )

    @classmethod
    def from_json(cls, file: str | Path) -> BundleConfig:
        file = Path(file)
        return cls.from_dict(read_json(file), file)

    def to_json(self) -> str:
        """The text of v2t_config.json."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"


def read_json(file: Path) -> dict:
    """A bundle's JSON file as a dict; one line naming the file where it is not JSON or not an object."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise V2TError(f"{file} is not valid JSON ({exc}): the bundle is corrupt; save or copy it again") from exc
    if not isinstance(data, dict):
        raise V2TError(f"{file} does not hold a JSON object: the bundle is corrupt")
    return data


def check_output_vocab_size(value, file: Path) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise V2TError(
            f"{file}: output_vocab_size must be a positive integer or null, got {value!r}: the file is corrupt"
        )


def check_config(config: dict, file: Path) -> None:
    """Raise V2TError naming ``file`` and the key unless ``config`` is a v2t_config.json this version reads."""
    path = file.parent
    full = config.get("trainable") == "full"
    check_output_vocab_size(config.get("output_vocab_size"), file)
    version = config.get("format_version")
    if not isinstance(version, int):
        raise V2TError(f"{file} has no integer format_version: it is not a lora_v2t bundle")
    if version > CORRECTOR_FORMAT_VERSION:
        raise V2TError(
            f"adapter {path} uses bundle format {version}, newer than this lora_v2t reads "
            f"({CORRECTOR_FORMAT_VERSION}): upgrade lora_v2t"
        )
    if config.get("trainable", "lora") not in TRAINABLE:
        raise V2TError(
            f"{file}: trainable must be one of {', '.join(TRAINABLE)}, got {config['trainable']!r}: the file is corrupt"
        )
    if config.get("role", DEFAULT_ROLE) not in ROLES:
        raise V2TError(
            f"{file}: role must be one of {', '.join(ROLES)}, got {config.get('role')!r}: the file is corrupt"
        )
    if config.get("corrector") is not None and not isinstance(config["corrector"], str):
        raise V2TError(f"{file}: corrector must be a folder or hub id (a string), got {config['corrector']!r}")
    for key in ("encoder", "backbone", "projector") + (() if full else ("lora",)):
        if not isinstance(config.get(key), dict):
            raise V2TError(f"{file} lacks the '{key}' section: the file is corrupt")
    if not isinstance(config.get("training") or {}, dict):
        raise V2TError(
            f"{file}: the 'training' section must be a JSON object, got {config['training']!r}: the file is corrupt"
        )
    for section, key, kind in (
        ("encoder", "spec", str),
        ("encoder", "dim", int),
        ("backbone", "name", str),
        ("backbone", "hidden_size", int),
        ("backbone", "vocab_size", int),
    ):
        if not isinstance(config[section].get(key), kind):
            raise V2TError(f"{file} lacks {section}.{key} (a {kind.__name__}): the file is corrupt")
    try:
        ProjectorConfig(kind=config["projector"]["kind"], prefix_length=config["projector"]["prefix_length"])
    except KeyError as exc:
        raise V2TError(f"{file}: projector section lacks {exc}") from exc
    if config["projector"]["kind"] == "split" and config.get("role", DEFAULT_ROLE) != "corrector":
        raise V2TError(f"{file}: a split projector belongs to a corrector, but role is not: the file is corrupt")
    _check_precision(config["backbone"], file)
    try:
        GenerationConfig.of_section(config.get("generation"))
    except (V2TError, TypeError, AttributeError) as exc:  # unknown or bad values
        raise V2TError(
            f"{file}: its generation defaults are not valid ({exc}); fix or remove the 'generation' "
            "section (the defaults then apply)"
        ) from exc


def _check_precision(backbone: dict, file: Path) -> None:
    if backbone.get("quantization") not in (None, *BASE_QUANTIZATIONS):
        raise V2TError(
            f"{file}: backbone.quantization must be one of {', '.join(BASE_QUANTIZATIONS)}, got "
            f"{backbone['quantization']!r}: the file is corrupt"
        )
    if backbone.get("compute_dtype") not in (None, *COMPUTE_DTYPES):
        raise V2TError(
            f"{file}: backbone.compute_dtype must be float32, bfloat16 or float16, got "
            f"{backbone['compute_dtype']!r}: the file is corrupt"
        )


@dataclass(kw_only=True)
class AdapterMeta:
    """What a loaded (or freshly made) adapter carries beside its weights: the parts of its BundleConfig that
    describe it rather than the loaded base, and ``source``, the folder it was loaded from (a corrector it names
    is found beside it)."""

    encoder: EncoderInfo
    lora: LoraInfo | None = None
    generation: dict = field(default_factory=dict)  # decoding defaults (a GenerationConfig's fields)
    training: dict = field(default_factory=dict)  # the training summary its bundle records
    precision: dict | None = None  # the PRECISION_KEYS it trained in; None: the loaded base's
    role: Role = DEFAULT_ROLE
    corrector: str | None = None
    context_tokens: int | None = None
    source: str | None = None
    extra: dict = field(default_factory=dict)  # its bundle's keys from a newer writer, saved again

    @classmethod
    def of_bundle(cls, config: BundleConfig, source: str | None = None) -> AdapterMeta:
        return cls(
            encoder=copy.deepcopy(config.encoder),
            lora=copy.deepcopy(config.lora),
            generation=dict(config.generation),
            training=copy.deepcopy(config.training),
            precision=config.backbone.precision or None,
            role=config.role,
            corrector=config.corrector,
            context_tokens=config.context_tokens,
            source=source,
            extra=copy.deepcopy(config.extra),
        )

    def generation_defaults(self, **overrides) -> GenerationConfig:
        return GenerationConfig.of_bundle(self, **overrides)
