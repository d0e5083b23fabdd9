"""Configuration dataclasses: encoder, backbone, projector, LoRA and generation.

Every field carries its one-line help as field metadata (see :func:`setting`), which ``lora-v2t train
--help`` lists; recipes in ``recipes/`` are commented dumps of these.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal, get_args

from .util.checks import check_choice, check_range
from .util.errors import V2TError
from .util.recipefile import coerce, not_a_recipe, read_recipe, suggest, yaml_problem

# Each choice is one Literal type: fields and signatures are annotated with it, and its tuple of allowed values
# (for checks and the command line's choices) is read from it.
ProjectorKind = Literal["zero-pad", "linear", "mlp", "split"]
Quantization = Literal["auto", "8bit", "4bit", "none"]
BaseQuantization = Literal["8bit", "4bit", "none"]  # what a loaded base is (auto resolved), as bundles record it
CacheKind = Literal["dynamic", "static"]
Role = Literal["hypothesizer", "corrector"]  # see lora_v2t.model.correct
DEFAULT_ROLE: Role = "hypothesizer"  # what an adapter is unless it says (bundles from before correctors say nothing)
DType = Literal["auto", "float32", "bfloat16"]  # what a user may ask a loaded base to compute in
Trainable = Literal["lora", "full"]
LossVocab = Literal["full", "corpus"]
MixedPrecision = Literal["auto", "no", "bf16", "fp16"]
PROJECTOR_KINDS = get_args(ProjectorKind)
QUANTIZATION_MODES = get_args(Quantization)
BASE_QUANTIZATIONS = get_args(BaseQuantization)
CACHE_KINDS = get_args(CacheKind)
ROLES = get_args(Role)
DTYPES = get_args(DType)
TRAINABLE = get_args(Trainable)
LOSS_VOCABS = get_args(LossVocab)
MIXED_PRECISIONS = get_args(MixedPrecision)
# decodes per vector the commands generate, invert and evaluate spend when no option chooses the candidates
# (the measured curve behind it: lora_v2t.model.beam)
DEFAULT_BUDGET = 8
SEED_LIMIT = 2**63  # torch.manual_seed takes 0 .. SEED_LIMIT - 1
RECIPE_SEED_LIMIT = 2**32  # a recipe's seeds also seed numpy, which takes 0 .. 2**32 - 1
INT8_THRESHOLD = 6.0  # bitsandbytes' own LLM.int8 outlier threshold
# how a base computes; each adapter records its training's
PRECISION_KEYS = ("quantization", "compute_dtype", "int8_threshold")

DEFAULT_ENCODER = "sentence-transformers/LaBSE"
DEFAULT_BACKBONE = "ai-forever/rugpt3large_based_on_gpt2"
OFFLINE_ENCODER = "offline:use-multilingual"
OFFLINE_BACKBONE = "offline:gemma-3-270m"


def setting(default, doc: str, flag: str | None = None, flag_help: str | None = None):
    """A dataclass field with a default and its one-line help (field metadata), which ``lora-v2t train --help``
    lists through :func:`describe_keys` (and the command line's decoding options, for GenerationConfig's fields).
    ``flag`` and ``flag_help``: a command-line option that does not read as the field (a switch that turns a
    True default off)."""
    extra = {"flag": flag, "flag_help": flag_help} if flag else {}
    return field(default=default, metadata={"help": doc} | extra)


@dataclass
class EncoderConfig:
    spec: str = setting(
        DEFAULT_ENCODER, "hub id or folder of a sentence-transformers model, or offline:use-multilingual"
    )


@dataclass
class BackboneConfig:
    name: str = setting(DEFAULT_BACKBONE, "hub id, local folder, .gguf file, or offline:gemma-3-270m")
    quantization: Quantization = setting("auto", "auto (8bit on CUDA, none on CPU) | 8bit | 4bit | none")
    device: str | None = setting(
        None, "cpu / cuda / cuda:N (training: cuda:N in a single process only); None = CUDA if any"
    )
    int8_threshold: float = setting(
        INT8_THRESHOLD,
        "LLM.int8 outlier threshold (quantization 8bit): activations above it stay in fp16 "
        "(bitsandbytes' default 6.0); 0 quantises every feature, a faster step at some accuracy cost",
    )

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise V2TError(
                f"backbone.name must be a hub id, a folder, a .gguf file or {OFFLINE_BACKBONE}, got {self.name!r}"
            )
        check_choice("quantization", self.quantization, QUANTIZATION_MODES)
        check_range("backbone.int8_threshold", self.int8_threshold, low=0)


@dataclass
class ProjectorConfig:
    kind: ProjectorKind = setting(
        "mlp",
        "zero-pad (the original experiment: pad d -> h, one slot) | linear | mlp | split (a corrector's: v, e "
        "and v - e each through its own mlp into prefix_length slots)",
    )
    prefix_length: int = setting(1, "k, the number of prefix slots the vector fills")
    hidden_dim: int | None = setting(None, "width of the MLP's hidden layer; None = the backbone's hidden size")

    def __post_init__(self):
        check_choice("projector kind", self.kind, PROJECTOR_KINDS)
        if not isinstance(self.prefix_length, int) or self.prefix_length < 1:
            raise V2TError(f"prefix_length must be an integer >= 1, got {self.prefix_length!r}")
        if self.kind == "zero-pad" and self.prefix_length != 1:
            raise V2TError("the zero-pad projector fills exactly one slot: set prefix_length=1 or use 'mlp'")
        if self.hidden_dim is not None:
            check_range("projector.hidden_dim", self.hidden_dim, low=1)

    @property
    def slots(self) -> int:
        """Prefix positions: ``prefix_length``, for each of a split projector's three vectors."""
        return 3 * self.prefix_length if self.kind == "split" else self.prefix_length


@dataclass
class LoRAConfig:
    r: int = setting(16, "rank of the LoRA update matrices")
    alpha: int | None = setting(None, "LoRA scaling numerator; None = 2 * r")
    dropout: float = setting(0.05, "dropout on the LoRA input during training")
    target_modules: list[str] | None = setting(
        None, "module names to adapt; None = attention projections per architecture"
    )
    layers: list[int] | None = setting(None, "indices of the transformer blocks that get LoRA; None = every block")

    def __post_init__(self):
        if not isinstance(self.r, int) or self.r < 1:
            raise V2TError(f"lora r must be an integer >= 1, got {self.r!r}")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise V2TError(f"lora layers must be a non-empty list of block indices >= 0, got {self.layers!r}")
        if self.alpha is not None:
            check_range("lora.alpha", self.alpha, low=0, above=True)
        check_range("lora.dropout", self.dropout, low=0, high=1, below=True)


@dataclass
class GenerationConfig:
    max_new_tokens: int = setting(
        48, "longest reconstruction, in tokens (>= 1; with the prefix, within the backbone's context)"
    )
    do_sample: bool = setting(False, "sample instead of greedy / beam search")
    temperature: float = setting(1.0, "sampling temperature (> 0; used when do_sample)")
    top_k: int = setting(50, "sample among the k most likely tokens (>= 0; 0 = off)")
    top_p: float = setting(1.0, "nucleus sampling mass (0 < top_p <= 1; 1 = off)")
    num_beams: int = setting(1, "beam search width (>= 1; 1 = greedy or sampling)")
    num_return_sequences: int = setting(
        1, "candidates returned (or reranked) per vector (>= 1; at most num_beams unless sampling)"
    )
    repetition_penalty: float = setting(
        1.1, "penalty on tokens already generated (> 0; 1 = off; 1.1 stops most stutter, see bench/repetition.py)"
    )
    no_repeat_ngram_size: int = setting(0, "never repeat an n-gram of this many tokens (>= 0; 0 = off)")
    batch_size: int = setting(32, "vectors decoded together (>= 1)")
    restrict_vocab: bool = setting(
        True,
        "decode only the adapter's output vocabulary when it has one (loss_vocab=corpus)",
        flag="--full-vocab",
        flag_help="let every token out, not only the adapter's output vocabulary (when it has one)",
    )
    cache: CacheKind = setting(
        "dynamic",
        "KV cache: dynamic | static (fixed size, so that transformers compiles the decoding step with "
        "torch.compile on a GPU: the first batch is slow, the later ones fast; the same greedy text in "
        "fp32; slower on a CPU, where nothing compiles it)",
    )

    def __post_init__(self):
        check_choice("cache", self.cache, CACHE_KINDS)
        counts = ("max_new_tokens", "num_beams", "num_return_sequences", "batch_size", "top_k", "no_repeat_ngram_size")
        for name in counts:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise V2TError(f"{name} must be an integer, got {value!r}")
            check_range(name, value, low=0 if name in ("top_k", "no_repeat_ngram_size") else 1)
        check_range("top_p", self.top_p, low=0, high=1, above=True)
        check_range("repetition_penalty", self.repetition_penalty, low=0, above=True)
        if self.do_sample:
            check_range("temperature (when sampling)", self.temperature, low=0, above=True)
        else:
            check_range("temperature", self.temperature, low=0)  # unused without sampling (0: greedy), not < 0
        if not self.do_sample and self.num_return_sequences > self.num_beams:
            raise V2TError(
                f"num_return_sequences={self.num_return_sequences} needs num_beams >= that many or do_sample=True"
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

    @classmethod
    def of_section(cls, generation: dict | None, **overrides) -> GenerationConfig:
        """The defaults updated with a bundle's ``generation`` section, then ``overrides``."""
        return cls().updated(**(generation or {})).updated(**overrides)

    @classmethod
    def of_bundle(cls, bundle, **overrides) -> GenerationConfig:
        """A bundle's decoding defaults (``bundle``: its BundleConfig, read without loading it, or a loaded
        adapter's AdapterMeta: anything with a ``generation`` mapping), then ``overrides``."""
        return cls.of_section(bundle.generation, **overrides)


@dataclass
class DataConfig:
    train: str | None = setting(None, "training corpus: UTF-8 text, one sentence per line (required to train)")
    val: str | None = setting(None, "validation corpus; None = hold out val_size sentences of the training corpus")
    val_size: int = setting(200, "sentences held out for validation when val is None")
    max_sentences: int | None = setting(None, "use at most this many training sentences (a seeded random sample)")
    min_chars: int = setting(2, "skip shorter lines (counted)")
    max_chars: int = setting(400, "skip longer lines (counted)")
    max_tokens: int = setting(48, "truncate target sentences to this many tokens (EOS included)")
    hypotheses: str | None = setting(
        None,
        "a corrector's training data: the `lora-v2t invert --texts` JSONL of its hypothesizer on data.train "
        "(sentences the hypothesizer never trained on: `lora-v2t heldout`)",
    )
    more_hypotheses: list[str] | None = setting(
        None,
        "a corrector's: further `lora-v2t invert` JSONLs of data.train (sampled decodes, a corrector's own "
        "outputs); each adds one training pair per sentence",
    )
    no_hypothesis: float = setting(
        0.0,
        "a corrector's: for this share of its training sentences, also a pair with no hypothesis (e = 0, empty "
        "text), so that it keeps writing from v alone",
    )
    keep_matching: bool = setting(
        False, "a corrector's: keep pairs whose hypothesis already is the sentence (dropped by default)"
    )
    cache_dir: str | None = setting(None, "embedding cache; None = <checkpoints>/cache")
    seed: int = setting(0, "seeds the sample, the split and the batch order (unless data.order_seed)")
    order_seed: int | None = setting(
        None,
        "seeds the batch order alone; None = data.seed. A run going on from another's bundle "
        "(training.init_adapter) on the same sample gives another, or it goes over the first run's batches again",
    )

    def __post_init__(self):
        if self.max_tokens < 2:
            raise V2TError(f"data.max_tokens must be >= 2, got {self.max_tokens}")
        check_range("data.val_size", self.val_size, low=1)
        if self.max_sentences is not None:
            check_range("data.max_sentences", self.max_sentences, low=1)
        check_range("data.min_chars", self.min_chars, low=1)
        if self.max_chars < self.min_chars:
            raise V2TError(f"data.max_chars must be >= data.min_chars ({self.min_chars}), got {self.max_chars}")
        check_range("data.seed", self.seed, low=0, high=RECIPE_SEED_LIMIT - 1)
        if self.order_seed is not None:
            check_range("data.order_seed", self.order_seed, low=0, high=RECIPE_SEED_LIMIT - 1)
        check_range("data.no_hypothesis", self.no_hypothesis, low=0, high=1)

    @property
    def batch_seed(self) -> int:
        """The seed of the batch order: ``order_seed``, or ``seed`` when that is None."""
        return self.seed if self.order_seed is None else self.order_seed

    def check_train(self) -> str:
        """``data.train``; raise unless a training corpus is named: training, embedding and heldout need one (the
        library names none; recipes do)."""
        if not self.train:
            raise V2TError(
                "data.train is not set: name the training corpus in the recipe (data: train: FILE) or "
                "with --data.train=FILE"
            )
        return self.train


@dataclass
class TrainingConfig:
    run_name: str = setting("run", "run folder: <output_dir>/<run_name>/")
    role: Role = setting(
        DEFAULT_ROLE, "hypothesizer (vector -> text) | corrector (needs data.hypotheses; see lora_v2t.model.correct)"
    )
    output_dir: str | None = setting(
        None, "folder of the run folders; None = <checkpoints>/runs (see lora-v2t train --help for <checkpoints>)"
    )
    init_adapter: str | None = setting(
        None,
        "start from this adapter bundle's LoRA and projector weights (folder or hub id) instead of fresh ones; "
        "the optimizer, schedule and data order start anew (see lora_v2t.train.warmstart)",
    )
    trainable: Trainable = setting(
        "lora", "lora (LoRA + projector) | full (whole backbone + projector, no LoRA: a baseline)"
    )
    loss_vocab: LossVocab = setting(
        "full", "full | corpus: softmax over the tokens the corpus uses only (much faster on CPU)"
    )
    batch_size: int = setting(16, "sentences per micro-batch")
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    max_steps: int = setting(1000, "optimizer steps")
    max_minutes: float | None = setting(None, "stop (and save final/) after this much wall time")
    lr: float = setting(2e-4, "learning rate of the LoRA weights (or of the backbone in full mode)")
    projector_lr: float = setting(1e-3, "learning rate of the projector")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    warmup_steps: int = setting(50, "linear warm-up, then cosine decay")
    min_lr_ratio: float = setting(0.1, "the cosine decays to this fraction of the peak rate")
    max_grad_norm: float = setting(1.0, "gradient clipping (0 = off)")
    mixed_precision: MixedPrecision = setting(
        "auto", "auto (bf16/fp16 on CUDA; bf16 on CPUs with AVX-512 BF16 or AMX, else off) | no | bf16 | fp16"
    )
    gradient_checkpointing: bool | str = setting(
        "auto",
        "recompute activations in the backward pass, trading time for memory: true | false | auto (on "
        "only where the memory estimate says a step would not fit the free GPU memory; off on a CPU)",
    )
    eval_every: int = setting(100, "steps between validation + printed reconstructions")
    save_every: int = setting(200, "steps between checkpoints")
    keep_checkpoints: int = setting(2, "keep only the last K step-NNNNNN/ folders")
    log_every: int = setting(10, "steps between training-loss log lines")
    num_samples: int = setting(4, "reconstructions printed at each evaluation")
    tensorboard: bool = setting(False, "also log to TensorBoard (needs the tensorboard package)")
    seed: int = setting(0, "seeds the initialisation and dropout")

    def __post_init__(self):
        check_choice("training.trainable", self.trainable, TRAINABLE)
        check_choice("training.role", self.role, ROLES)
        check_choice("training.loss_vocab", self.loss_vocab, LOSS_VOCABS)
        check_choice("training.mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        if isinstance(self.gradient_checkpointing, str) and self.gradient_checkpointing != "auto":
            raise V2TError(
                f"training.gradient_checkpointing must be true, false or auto, got {self.gradient_checkpointing!r}"
            )
        for name in (
            "batch_size",
            "grad_accum",
            "max_steps",
            "eval_every",
            "save_every",
            "keep_checkpoints",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise V2TError(f"training.{name} must be >= 1, got {getattr(self, name)}")
        check_range("training.lr", self.lr, low=0, above=True)
        check_range("training.projector_lr", self.projector_lr, low=0, above=True)
        check_range("training.weight_decay", self.weight_decay, low=0)
        check_range("training.warmup_steps", self.warmup_steps, low=0)
        check_range("training.min_lr_ratio", self.min_lr_ratio, low=0, high=1)
        check_range("training.max_grad_norm", self.max_grad_norm, low=0)
        check_range("training.num_samples", self.num_samples, low=0)
        check_range("training.seed", self.seed, low=0, high=RECIPE_SEED_LIMIT - 1)
        if self.max_minutes is not None:
            check_range("training.max_minutes", self.max_minutes, low=0, above=True)
        name = self.run_name
        if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise V2TError(
                f"training.run_name must be a plain folder name (no '/', '\\' or '..'), got {name!r}: "
                "it names the run's folder inside training.output_dir; set output_dir to write elsewhere"
            )


@dataclass
class RunConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self):
        corrector = self.training.role == "corrector"
        if self.projector.kind == "split" and not corrector:
            raise V2TError(
                "projector.kind=split reads a corrector's three vectors [v, e, v - e]: set training.role=corrector, "
                "or use the mlp projector"
            )
        if not corrector and (self.data.more_hypotheses or self.data.no_hypothesis):
            raise V2TError("data.more_hypotheses and data.no_hypothesis are a corrector's: set training.role=corrector")

    def to_dict(self) -> dict:
        return asdict(self)


def config_from_dict(data: dict, source: str = "config") -> RunConfig:
    """Build a RunConfig from nested dicts, naming unknown keys (with the nearest known) and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise V2TError(f"{source} must be a mapping of sections, got {type(data).__name__}")
    sections = {f.name: f for f in fields(RunConfig)}
    defaults = RunConfig()
    built = {}
    for section, values in data.items():
        if section not in sections:
            raise V2TError(f"{source}: unknown section {section!r}{suggest(section, sections)}")
        cls = type(getattr(defaults, section))
        hints = typing.get_type_hints(cls)
        values = values or {}
        if not isinstance(values, dict):
            raise V2TError(f"{source}: section {section!r} must be a mapping, got {values!r}")
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise V2TError(f"{source}: unknown key {section}.{key}{suggest(key, hints)}")
            kwargs[key] = coerce(value, hints[key], f"{section}.{key}")
        built[section] = cls(**kwargs)
    return RunConfig(**built)


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ``["--training.lr=1e-4", "data.train=x.txt"]`` into nested dicts (values parsed as YAML)."""
    import yaml

    nested: dict = {}
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text or "." not in text.split("=", 1)[0]:
            raise V2TError(f"bad override {item!r}: write --section.key=value, e.g. --training.lr=1e-4")
        dotted, raw = text.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise V2TError(f"bad value in override {item!r}: {yaml_problem(exc)}") from exc
        nested.setdefault(section, {})[key] = value
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a recipe YAML and apply ``--section.key=value`` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise V2TError(f"recipe {path} is a folder, not a file: give a recipe YAML (see recipes/)")
        if not path.is_file():
            raise V2TError(f"recipe {path} does not exist")
        data = read_recipe(path)
        if not isinstance(data, dict):
            raise V2TError(f"recipe {path} must be a mapping of sections{not_a_recipe(path)}")
    for section, values in parse_overrides(overrides or []).items():
        if isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    return config_from_dict(data, source=str(path) if path else "overrides")


def describe_keys() -> str:
    """Every recipe key with its default and its one-line help (the field's ``help`` metadata), for ``--help``."""
    lines = []
    defaults = RunConfig()
    for section in fields(RunConfig):
        lines.append(f"{section.name}:")
        for f in fields(getattr(defaults, section.name)):
            default = f.default if f.default is not dataclasses.MISSING else None
            lines.append(f"  {section.name}.{f.name}={default}  {f.metadata.get('help', '')}".rstrip())
    return "\n".join(lines)


__all__ = [
    "BackboneConfig",
    "DataConfig",
    "RunConfig",
    "TrainingConfig",
    "config_from_dict",
    "load_config",
    "EncoderConfig",
    "GenerationConfig",
    "LoRAConfig",
    "ProjectorConfig",
]
