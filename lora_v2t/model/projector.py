"""The prefix projector: maps a sentence vector v (d) to k prefix embeddings P (k x h) for the backbone.

Output is always at the scale of the backbone's own token embeddings (``target_rms``: the root mean square of
``get_input_embeddings()(ids)``, which includes Gemma's multiplication by sqrt(hidden) inside its embedding
layer). Kinds:

- ``zero-pad``: the original experiment: v padded with zeros to h, one slot, rescaled; no trainable weights.
- ``linear``: one linear map d -> k*h, then an RMS normalisation with a learned gain.
- ``mlp`` (default): d -> hidden -> k*h with GELU, then the same normalisation.
- ``split`` (a corrector's, :class:`SplitProjector`): reads the three vectors ``[v, e, v - e]`` of
  :func:`lora_v2t.model.correct.condition` and maps each through its own ``mlp`` into k slots (3k in all).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import PROJECTOR_KINDS
from ..util.checks import check_choice
from ..util.errors import V2TError
from .backbone import input_embedding_weight

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class Projector(nn.Module):
    """What every projector has: the fields ``v2t_config.json`` records (:meth:`describe`), the slots it fills,
    and a one-line refusal of vectors of another dimension."""

    target_rms: torch.Tensor  # a buffer: the backbone's embedding scale, kept with the weights
    kind: str

    def record(
        self, kind: str, embedding_dim: int, hidden_size: int, prefix_length: int, target_rms: float, hidden_dim
    ) -> None:
        """Set the recorded fields (``hidden_dim`` None: the backbone's hidden size)."""
        self.kind, self.embedding_dim, self.hidden_size = kind, embedding_dim, hidden_size
        self.prefix_length, self.hidden_dim = prefix_length, hidden_dim or hidden_size
        self.register_buffer("target_rms", torch.tensor(float(target_rms)))

    @property
    def slots(self) -> int:
        """Prefix positions the projector fills."""
        return self.prefix_length

    def check_input(self, vectors: torch.Tensor) -> None:
        if vectors.shape[-1] != self.embedding_dim:
            raise V2TError(
                f"vectors have dimension {vectors.shape[-1]} but this projector expects {self.embedding_dim}"
            )

    def describe(self) -> dict:
        """The fields v2t_config.json stores about this projector."""
        return {
            "kind": self.kind,
            "embedding_dim": self.embedding_dim,
            "hidden_size": self.hidden_size,
            "prefix_length": self.prefix_length,
            "hidden_dim": self.hidden_dim,
            "target_rms": float(self.target_rms),
        }


class PrefixProjector(Projector):
    """Sentence vector (B, d) -> prefix embeddings (B, k, h) at the backbone's embedding scale."""

    net: nn.Module
    MLP_OUTPUT = "net.2"  # the mlp's last linear layer (hidden_dim -> k * hidden_size), as built below

    def __init__(
        self,
        kind: str,
        embedding_dim: int,
        hidden_size: int,
        prefix_length: int = 1,
        target_rms: float = 1.0,
        hidden_dim: int | None = None,
    ):
        super().__init__()
        check_choice("projector kind", kind, PROJECTOR_KINDS)
        if kind == "zero-pad":
            if prefix_length != 1:
                raise V2TError("the zero-pad projector fills exactly one slot: set prefix_length=1")
            if embedding_dim > hidden_size:
                raise V2TError(
                    f"zero-pad needs embedding_dim <= hidden_size, got {embedding_dim} > {hidden_size}; "
                    "use the 'linear' or 'mlp' projector"
                )
        self.record(kind, embedding_dim, hidden_size, prefix_length, target_rms, hidden_dim)
        if kind == "linear":
            self.net = nn.Linear(embedding_dim, prefix_length * hidden_size)
        elif kind == "mlp":
            self.net = nn.Sequential(
                nn.Linear(embedding_dim, self.hidden_dim),
                nn.GELU(),
                nn.Linear(self.hidden_dim, prefix_length * hidden_size),
            )
        if kind != "zero-pad":
            self.norm = nn.RMSNorm(hidden_size, elementwise_affine=True)
            with torch.no_grad():
                self.norm.weight.fill_(float(target_rms))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """Map (B, d) vectors to (B, k, h) prefix embeddings."""
        self.check_input(vectors)
        if self.kind == "zero-pad":
            padded = nn.functional.pad(vectors, (0, self.hidden_size - self.embedding_dim))  # (B, h)
            rms = padded.pow(2).mean(-1, keepdim=True).clamp_min(1e-12).sqrt()
            return (padded / rms * self.target_rms).unsqueeze(1)  # (B, 1, h)
        out = self.net(vectors).view(vectors.shape[0], self.prefix_length, self.hidden_size)  # (B, k, h)
        return self.norm(out)


class SplitProjector(Projector):
    """A corrector's projector: ``[v, e, v - e]`` (B, 3d) -> (B, 3k, h), each vector through its own ``mlp``
    :class:`PrefixProjector` of k slots (``parts`` 0, 1, 2: v, e, v - e).

    One MLP over the three side by side (the first correctors' ``mlp`` of 3d inputs) mixes them before the
    backbone sees them; apart, each vector gets the slots and the scale a hypothesizer's prefix has, and the parts
    for v and e can start as a trained hypothesizer's projector (:mod:`lora_v2t.train.warmstart`).
    """

    KIND = "split"
    PARTS = ("v", "e", "v - e")

    def __init__(
        self,
        embedding_dim: int,
        hidden_size: int,
        prefix_length: int = 1,
        target_rms: float = 1.0,
        hidden_dim: int | None = None,
    ):
        super().__init__()
        if embedding_dim % len(self.PARTS):
            raise V2TError(
                f"the split projector reads a corrector's three vectors [v, e, v - e], not {embedding_dim}-d "
                "rows: use it with training.role=corrector"
            )
        self.record(self.KIND, embedding_dim, hidden_size, prefix_length, target_rms, hidden_dim)
        part_dim = embedding_dim // len(self.PARTS)
        self.parts = nn.ModuleList(
            PrefixProjector("mlp", part_dim, hidden_size, prefix_length, target_rms, hidden_dim) for _ in self.PARTS
        )

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """Map (B, 3d) rows to (B, 3k, h): the slots of v, then of e, then of v - e."""
        self.check_input(vectors)
        chunks = vectors.split(self.embedding_dim // len(self.PARTS), dim=-1)
        return torch.cat([part(chunk) for part, chunk in zip(self.parts, chunks, strict=True)], dim=1)

    @property
    def slots(self) -> int:
        """Prefix positions the projector fills: ``prefix_length`` for each of the three vectors."""
        return len(self.PARTS) * self.prefix_length


def make_projector(
    kind: str, embedding_dim: int, hidden_size: int, prefix_length: int, target_rms: float, hidden_dim: int | None
) -> Projector:
    """The projector of ``kind`` (see the module's docstring)."""
    if kind == SplitProjector.KIND:
        return SplitProjector(embedding_dim, hidden_size, prefix_length, target_rms, hidden_dim)
    return PrefixProjector(kind, embedding_dim, hidden_size, prefix_length, target_rms, hidden_dim)


@torch.no_grad()
def embedding_rms(model: PreTrainedModel, sample: int = 8192, seed: int = 0) -> float:
    """RMS of the backbone's token embeddings as its embedding layer returns them (scaling included)."""
    layer = model.get_input_embeddings()
    weight = input_embedding_weight(model)
    vocab = weight.shape[0]
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (min(sample, vocab),), generator=generator)
    ids = ids.to(weight.device)
    return float(layer(ids).float().pow(2).mean().sqrt())


def projector_input_dim(encoder_dim: int, role: str) -> int:
    """What an adapter's projector reads: the sentence vector, or for a corrector the three vectors of
    :func:`lora_v2t.model.correct.condition` side by side."""
    return 3 * encoder_dim if role == "corrector" else encoder_dim
