"""Vector2Text: a frozen causal LM + peft LoRA adapters + one prefix projector per adapter.

Training input is ``inputs_embeds = [P ; wte(tokens)]`` where ``P = projector(v)`` fills the first k slots;
labels are -100 on the prefix and on padding, so the loss covers the sentence tokens and the final EOS.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from ..bundle.adapter import load_into
from ..bundle.format import AdapterMeta, EncoderInfo, LoraInfo
from ..bundle.push import push_adapter
from ..bundle.saving import save_adapter
from ..config import (
    INT8_THRESHOLD,
    PRECISION_KEYS,
    TRAINABLE,
    BackboneConfig,
    EncoderConfig,
    GenerationConfig,
    LoRAConfig,
    ProjectorConfig,
    ProjectorKind,
    Quantization,
    Role,
    RunConfig,
    Trainable,
    TrainingConfig,
    check_choice,
)
from ..model.backbone import (
    input_embedding_weight,
    load_backbone,
    output_weight,
    refuse_quantized_full,
    train_every_weight,
)
from ..model.correct import CorrectionConfig, correct, reranked_start
from ..model.encoders import Encoder, EncoderCache, load_encoder
from ..model.generate import Reranked, generate
from ..model.inputs import PrefixInputs
from ..model.lora import check_adapter_name, check_target_modules, make_lora_config, wrapping_in_peft
from ..model.loss import SubsetLoss
from ..model.projector import Projector, embedding_rms, make_projector, projector_input_dim
from ..model.vocab import DecodingVocab, check_output_vocab
from ..util.errors import V2TError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


class Vector2Text(PrefixInputs, nn.Module):
    """Backbone + LoRA adapters + projectors, with the adapter registry of DESIGN.md.

    Build one with :meth:`create` (a fresh, untrained adapter from keyword settings), :meth:`from_config` (the
    same from a recipe's :class:`lora_v2t.config.RunConfig`) or :func:`lora_v2t.load_adapter` (a saved bundle).
    """

    def __init__(self, peft_model, tokenizer, backbone_name: str):
        super().__init__()
        self.model = peft_model  # peft.PeftModel around the frozen backbone
        self.tokenizer = tokenizer
        self.projectors = nn.ModuleDict()  # adapter name -> Projector
        self.adapter_meta: dict[str, AdapterMeta] = {}  # adapter name -> encoder / generation / training metadata
        self.encoders = EncoderCache()  # encoder spec -> loaded encoder (loaded on first use)
        self.output_vocabs: dict[str, torch.Tensor] = {}  # adapter name -> sorted token ids it may emit
        self.decoding_vocabs: dict[tuple, DecodingVocab] = {}  # see decoding_vocab
        base = self.base_model
        self.backbone_info: dict[str, Any] = {
            "name": backbone_name,
            "model_type": base.config.model_type,
            "hidden_size": int(input_embedding_weight(base).shape[1]),
            "vocab_size": int(input_embedding_weight(base).shape[0]),
            "quantization": getattr(base, "v2t_quantization", "none"),
            "compute_dtype": str(getattr(base, "v2t_dtype", base.dtype)).removeprefix("torch."),
            "int8_threshold": getattr(base, "v2t_int8_threshold", None),
        }
        self._target_rms: float | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        backbone: str,
        encoder: str | Encoder,
        projector: ProjectorKind = "mlp",
        prefix_length: int = 1,
        lora_r: int = 16,
        lora_alpha: int | None = None,
        lora_dropout: float = 0.05,
        target_modules: list[str] | None = None,
        lora_layers: list[int] | None = None,
        quantization: Quantization = "auto",
        int8_threshold: float = INT8_THRESHOLD,
        device: str | None = None,
        projector_hidden_dim: int | None = None,
        adapter_name: str = "default",
        seed: int | None = 0,
        trainable: Trainable = "lora",
        role: Role = "hypothesizer",
    ) -> Vector2Text:
        """A fresh, untrained adapter on a base model and an encoder.

        Args:
            backbone: hub id, local folder, ``.gguf`` file or ``offline:gemma-3-270m``.
            encoder: encoder spec (see :mod:`lora_v2t.model.encoders`) or an Encoder object.
            projector: ``zero-pad`` | ``linear`` | ``mlp`` | ``split`` (a corrector's).
            prefix_length: number of prefix slots k.
            lora_r, lora_alpha, lora_dropout, target_modules: the LoRA settings (alpha defaults to 2r;
                target modules default to the attention projections of the architecture).
            lora_layers: indices of the transformer blocks that get LoRA (None: every block).
            quantization: ``auto`` (8bit on CUDA, none on CPU) | ``8bit`` | ``4bit`` | ``none``.
            int8_threshold: the LLM.int8 outlier threshold of an 8-bit base (see ``BackboneConfig``).
            device: where to run; None picks CUDA when available.
            projector_hidden_dim: hidden width of the MLP projector (default: the backbone's hidden size).
            adapter_name: name of this adapter in the registry.
            seed: seeds the projector and LoRA initialisation (None: leave the RNG alone).
            trainable: ``lora`` (default), or ``full``: no LoRA, every backbone weight trains (the original
                experiment's way; a baseline for benchmarks; saved as a full model, not an adapter).
            role: ``hypothesizer`` (writes text from a vector) or ``corrector`` (rewrites a hypothesis closer to
                its target vector; see :mod:`lora_v2t.model.correct`).
        """
        if encoder is None:
            raise V2TError(
                "Vector2Text.create needs an encoder: a spec such as 'sentence-transformers/LaBSE' or "
                "'offline:use-multilingual', or an Encoder object"
            )
        cfg = RunConfig(
            encoder=EncoderConfig(spec=encoder) if isinstance(encoder, str) else EncoderConfig(),
            backbone=BackboneConfig(
                name=backbone, quantization=quantization, device=device, int8_threshold=int8_threshold
            ),
            projector=ProjectorConfig(kind=projector, prefix_length=prefix_length, hidden_dim=projector_hidden_dim),
            lora=LoRAConfig(
                r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=target_modules, layers=lora_layers
            ),
            training=TrainingConfig(trainable=trainable, role=role, seed=0 if seed is None else seed),
        )
        return cls.from_config(
            cfg,
            encoder=None if isinstance(encoder, str) else encoder,
            adapter_name=adapter_name,
            reseed=seed is not None,
        )

    @classmethod
    def from_config(
        cls,
        cfg: RunConfig,
        encoder: str | Encoder | None = None,
        device: str | None = None,
        adapter_name: str = "default",
        *,
        reseed: bool = True,
    ) -> Vector2Text:
        """A fresh, untrained adapter as a recipe describes it: its encoder, backbone, quantization, projector,
        LoRA, training mode and role.

        Args:
            cfg: the recipe (its data and generation sections are not read here).
            encoder: an encoder spec or an already loaded Encoder to use instead of ``cfg.encoder.spec``.
            device: where to run (default: the recipe's ``backbone.device``).
            adapter_name: the new adapter's name in the registry.
            reseed: seed the RNG with ``training.seed`` before the projector and LoRA are initialised (False
                leaves it alone).
        """
        trainable = cfg.training.trainable
        check_choice("training.trainable", trainable, TRAINABLE)  # the dataclass checked it when built
        check_adapter_name(adapter_name)
        if trainable == "full":
            refuse_quantized_full(cfg.backbone.quantization)  # before minutes of loading; auto is known after
        enc = load_encoder(cfg.encoder.spec if encoder is None else encoder)
        # full fine-tuning keeps fp32 master weights (autocast handles the compute dtype on CUDA)
        base, tokenizer = load_backbone(
            cfg.backbone.name,
            quantization=cfg.backbone.quantization,
            device=device or cfg.backbone.device,
            dtype=torch.float32 if trainable == "full" else None,
            int8_threshold=cfg.backbone.int8_threshold,
        )
        if reseed:
            torch.manual_seed(cfg.training.seed)
        from peft import get_peft_model

        if trainable == "full":
            v2t, lora_meta = cls(train_every_weight(base), tokenizer, cfg.backbone.name), None
        else:
            peft_config = make_lora_config(cfg.lora, base.config)
            check_target_modules(base, peft_config.target_modules)
            with wrapping_in_peft():
                wrapped = get_peft_model(base, peft_config, adapter_name=adapter_name)
            v2t = cls(wrapped, tokenizer, cfg.backbone.name)
            lora_meta = LoraInfo(
                **asdict(cfg.lora)
                | {"alpha": peft_config.lora_alpha, "target_modules": sorted(peft_config.target_modules)}
            )
        v2t.encoders.put(enc.spec, enc, enc.dim)
        v2t.add_projector(adapter_name, cfg.projector, projector_input_dim(enc.dim, cfg.training.role))
        precision = {k: v2t.backbone_info[k] for k in PRECISION_KEYS}  # what the adapter will learn on
        v2t.adapter_meta[adapter_name] = AdapterMeta(
            encoder=EncoderInfo(spec=enc.spec, dim=enc.dim),
            lora=lora_meta,
            generation=asdict(GenerationConfig()),
            precision=precision,
            role=cfg.training.role,
        )
        if lora_meta:
            v2t.model.set_adapter(adapter_name)
        v2t.eval()
        return v2t

    def add_projector(self, name: str, cfg: ProjectorConfig, embedding_dim: int) -> Projector:
        """Create the projector of adapter ``name`` on the backbone's device, in fp32."""
        if self._target_rms is None:
            self._target_rms = embedding_rms(self.base_model)
        projector = make_projector(
            cfg.kind,
            embedding_dim,
            self.backbone_info["hidden_size"],
            cfg.prefix_length,
            target_rms=self._target_rms,
            hidden_dim=cfg.hidden_dim,
        )
        self.projectors[name] = projector = projector.to(self.device)
        return projector

    # ------------------------------------------------------------------ properties
    @property
    def base_model(self) -> PreTrainedModel:
        """The transformers model under the LoRA layers (frozen, unless fully fine-tuned)."""
        return self.model.get_base_model() if self.is_peft else self.model

    @property
    def is_peft(self) -> bool:
        """False for a fully fine-tuned model (no LoRA adapters)."""
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    @property
    def device(self) -> torch.device:
        return input_embedding_weight(self.base_model).device

    @property
    def adapters(self) -> list[str]:
        """Names of the adapters loaded on this base."""
        return list(self.projectors.keys())

    @property
    def active_adapter(self) -> str:
        return self.model.active_adapter if self.is_peft else next(iter(self.projectors), "default")

    @property
    def projector(self) -> Projector:
        """The active adapter's projector."""
        return cast(Projector, self.projectors[self.active_adapter])  # add_projector is what fills it

    @property
    def meta(self) -> AdapterMeta:
        """The active adapter's metadata (encoder, LoRA, generation defaults, training summary)."""
        return self.adapter_meta[self.active_adapter]

    @property
    def output_vocab(self) -> torch.Tensor | None:
        """Sorted token ids the active adapter was trained to emit (None: the whole vocabulary).

        An adapter trained with ``loss_vocab: corpus`` only ever learned to rank these tokens, so generation
        keeps to them; tokens outside were never pushed down and would otherwise leak into the output.
        """
        return self.output_vocabs.get(self.active_adapter)

    def set_output_vocab(self, token_ids, name: str | None = None) -> None:
        """Record the token ids adapter ``name`` (default: the active one) may emit; None allows every token.

        The ids must be a non-empty 1-D list of integers of this backbone's vocabulary; EOS is always added.
        """
        name = name or self.active_adapter
        self.decoding_vocabs.clear()
        if token_ids is None:
            self.output_vocabs.pop(name, None)
            return
        self.output_vocabs[name] = check_output_vocab(
            token_ids, self.backbone_info["vocab_size"], self.tokenizer.eos_token_id
        )

    def decoding_vocab(self, restrict: bool) -> DecodingVocab:
        """What the active adapter's decoding keeps to (see :class:`lora_v2t.model.vocab.DecodingVocab`). Built once per
        adapter while the output layer is frozen: its subset layers stay the same objects from call to call, so a
        compiled decoding step is not traced again, and their 13k rows are not gathered again."""
        weight = output_weight(self.base_model)
        if weight.requires_grad:  # a fully fine-tuned output layer changes between calls
            return DecodingVocab(self, restrict)
        key = (self.active_adapter, restrict, weight.dtype, weight.device, weight.data_ptr())
        if key not in self.decoding_vocabs:
            self.decoding_vocabs[key] = DecodingVocab(self, restrict)
        return self.decoding_vocabs[key]

    @property
    def embedding_dim(self) -> int:
        """The dimension of the active adapter's sentence vectors (its encoder's)."""
        return int(self.meta.encoder.dim)

    @property
    def context_tokens(self) -> int | None:
        """A corrector's hypotheses are cut to this many tokens (EOS included), as in its training."""
        return self.meta.context_tokens

    @property
    def role(self) -> Role:
        """The active adapter's role: ``hypothesizer`` or ``corrector`` (see :mod:`lora_v2t.model.correct`)."""
        return self.meta.role

    @property
    def encoder(self) -> Encoder:
        """The active adapter's encoder, loaded on first use."""
        return self.encoders.get(self.meta.encoder.spec, self.embedding_dim)

    def release_encoders(self) -> None:
        """Drop the loaded encoders (each loads again on first use): training needs none once the embedding
        cache is filled, and a GPU should not hold one through training."""
        self.encoders.clear()

    def set_encoder(self, encoder: str | Encoder) -> None:
        """Use another encoder (a spec or an Encoder object, of the same dimension) for the active adapter, e.g. a
        local copy of the one it was trained with."""
        self.encoders.put(self.meta.encoder.spec, load_encoder(encoder), self.embedding_dim)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The active adapter's LoRA and projector parameters (every backbone weight when fully fine-tuned)."""
        if not self.is_peft:
            return list(self.model.parameters()) + list(self.projector.parameters())
        name = self.active_adapter
        lora = [p for n, p in self.model.named_parameters() if "lora_" in n and f".{name}." in n + "."]
        return lora + list(self.projector.parameters())

    def forward(
        self,
        vectors,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        loss_vocab: torch.Tensor | SubsetLoss | None = None,
        label_mask: torch.Tensor | None = None,
    ):
        """Run the backbone on ``[P ; wte(tokens)]``; returns the transformers output with ``.loss``.

        Args:
            loss_vocab: optional sorted token ids that every label belongs to, or a :class:`SubsetLoss` built
                from them once (a training loop's, which keeps what it needs between steps). The loss is then a
                softmax over these tokens only, computed only at the labelled positions: on a CPU this removes
                most of the cost of a large output layer (Gemma's 262k tokens). The model and adapter are unchanged.
            label_mask: 1 where a token is learned (see :meth:`tokenize` with contexts); None: every token.
        """
        inputs = self.build_inputs(vectors, input_ids, attention_mask, label_mask)
        if loss_vocab is None:
            return self.model(**inputs, use_cache=False)  # training and scoring decode nothing: no KV cache
        if not isinstance(loss_vocab, SubsetLoss):
            loss_vocab = SubsetLoss(self.base_model, loss_vocab)
        return CausalLMOutput(loss=loss_vocab(inputs))

    def loss(self, vectors, texts: list[str], max_length: int = 64) -> torch.Tensor:
        """Mean next-token cross-entropy of ``texts`` given their vectors."""
        return self.forward(vectors, **self.tokenize(texts, max_length)).loss

    # ------------------------------------------------------------------ inference
    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        """Embed texts with the active adapter's encoder: float32 (N, d)."""
        encode: Callable[..., np.ndarray] = self.encoder.encode  # its own options beyond the protocol's texts
        if "show_progress" in inspect.signature(encode).parameters:
            return encode(texts, show_progress=show_progress)
        return encode(texts)  # a user's Encoder need only take the texts (the Encoder protocol)

    def generate(
        self,
        vectors,
        correct_steps: int = 0,
        corrector: str | None = None,
        correct_width: int = 1,
        budget: int | None = None,
        **options,
    ):
        """Decode vectors into text; see :func:`lora_v2t.model.generate.generate` for the options.

        ``budget`` N: spend at most N decodes per vector on the beam over corrections the rule of
        :mod:`lora_v2t.model.beam` chooses (1: greedy), with the ``corrector`` given or the one the adapter names
        (``"shift"``: none); ``sources``, ``sample_proposals`` and ``seed`` as in
        :func:`~lora_v2t.model.generate.generate`. The explicit knobs below are for experts, without a budget.

        ``correct_steps`` > 0 corrects the hypotheses that many times at most (see :mod:`lora_v2t.model.correct`):
        with the corrector the adapter names, or ``corrector`` (a corrector bundle folder or hub id, or
        ``"shift"`` for the training-free correction), keeping ``correct_width`` candidates per vector. With
        ``rerank=True`` and ``num_return_sequences`` K > 1 (``num_beams`` K or unset), correction starts from the
        greedy text and K beams (the best ``correct_width`` of them by cosine); the corrections decode with the
        other options.
        """
        if budget is not None:
            if correct_steps or correct_width != 1:
                raise V2TError(
                    "budget chooses the correction steps and width itself: drop correct_steps and "
                    "correct_width, or drop budget to set them yourself"
                )
            return generate(self, vectors, budget=budget, corrector=corrector, **options)
        if correct_steps == 0 and corrector is None and correct_width == 1:
            return generate(self, vectors, **options)
        rerank = options.pop("rerank", False)
        cfg = CorrectionConfig(
            steps=correct_steps, corrector=corrector, width=correct_width, rerank=reranked_start(options, rerank)
        )
        trace = correct(self, vectors, cfg, **options)
        if rerank:
            return [Reranked(t, float(c)) for t, c in zip(trace.final, trace.cosines[-1], strict=True)]
        return trace.final

    def invert(self, texts: list[str], **options):
        """Encode texts with the adapter's encoder, then generate from the vectors."""
        return self.generate(self.encode(texts), **options)

    # ------------------------------------------------------------------ adapter registry
    def load_adapter(self, path: str | Path, name: str, revision: str | None = None) -> None:
        """Load another adapter bundle (a folder, or a hub id ``org/name`` at ``revision``) onto this same base
        (the base is not reloaded)."""
        check_adapter_name(name)
        load_into(self, path, name, revision=revision)

    def set_adapter(self, name: str) -> None:
        """Make adapter ``name`` the active one."""
        check_adapter_name(name)
        if name not in self.projectors:
            raise V2TError(f"no adapter named {name!r}; loaded: {self.adapters}")
        self.model.set_adapter(name)

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name`` (not the active one) and free its weights."""
        check_adapter_name(name)
        if name not in self.projectors:
            raise V2TError(f"no adapter named {name!r}; loaded: {self.adapters}")
        if name == self.active_adapter:
            raise V2TError(f"adapter {name!r} is active: set_adapter(<another>) before deleting it")
        self.model.delete_adapter(name)
        del self.projectors[name]
        del self.adapter_meta[name]
        self.output_vocabs.pop(name, None)
        self.decoding_vocabs.clear()

    def save_adapter(self, path: str | Path, training: dict | None = None, projector_dtype: str = "float32") -> Path:
        """Save the active adapter as a bundle folder (atomically); ``training`` updates its summary;
        ``projector_dtype="bfloat16"`` stores the projector at half its size (it loads back into fp32)."""
        return save_adapter(self, path, training=training, projector_dtype=projector_dtype)

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        token: str | None = None,
    ) -> str:
        """Upload the active adapter as a bundle, with its model card, to the hub repository ``repo_id``
        (``org/name``, created if missing; ``revision``: the branch); returns the commit's URL. See
        :func:`lora_v2t.bundle.push.push_folder`."""
        return push_adapter(
            self, repo_id, private=private, revision=revision, commit_message=commit_message, token=token
        )

    def generation_defaults(self) -> GenerationConfig:
        """The active adapter's generation defaults."""
        return GenerationConfig.of_bundle(self.meta)
