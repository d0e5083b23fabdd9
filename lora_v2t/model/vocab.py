"""Output vocabularies: the token ids an adapter may emit, and how decoding keeps to them.

An adapter trained with ``loss_vocab: corpus`` only ever learned to rank the tokens of its corpus; decoding keeps to
them: on a plain output layer by running over those tokens alone, elsewhere by masking every other token.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..util.errors import V2TError

if TYPE_CHECKING:
    from .vector2text import Vector2Text


def check_output_vocab(token_ids, size: int, eos_id: int) -> torch.Tensor:
    """The sorted unique ids of ``token_ids`` (a non-empty 1-D integer list or tensor, each in [0, size)) with
    ``eos_id`` added; raise V2TError naming what is wrong."""
    array = np.asarray(token_ids.cpu() if isinstance(token_ids, torch.Tensor) else token_ids)
    if array.ndim != 1 or array.size == 0 or (array.dtype.kind not in "iu"):
        raise V2TError(
            f"an output vocabulary is a non-empty 1-D list of integer token ids; got shape "
            f"{array.shape} of {array.dtype}; pass None to allow every token"
        )
    ids = torch.from_numpy(array.astype(np.int64))
    if int(ids.min()) < 0 or int(ids.max()) >= size:
        raise V2TError(
            f"output vocabulary ids must lie in [0, {size}) for this backbone; got "
            f"[{int(ids.min())}, {int(ids.max())}]: it was made for another tokenizer"
        )
    return torch.unique(torch.cat([ids, torch.tensor([eos_id])]))  # sorted, unique


class AllowedTokens:
    """A transformers logits processor that keeps only the given token ids (the others get -inf)."""

    def __init__(self, token_ids: torch.Tensor):
        self.token_ids = token_ids
        self.blocked: torch.Tensor | None = None  # (V,) built on the first call, at the logits' size and device

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.blocked is None or self.blocked.shape[0] != scores.shape[-1] or self.blocked.device != scores.device:
            self.blocked = torch.ones(scores.shape[-1], dtype=torch.bool, device=scores.device)
            self.blocked[self.token_ids.to(scores.device)] = False
        return scores.masked_fill(self.blocked, float("-inf"))


class SubsetHead(nn.Module):
    """The backbone's output layer computed only for ``token_ids``: logits (..., V') whose index i is token
    ``token_ids[i]``. With :class:`SubsetEmbedding` it makes decoding run over those indices (see
    :class:`DecodingVocab`); on Gemma's 262k-token vocabulary this removes most of a decoding step's work on a
    CPU, and every pass over the full vocabulary (mask, penalties, argmax)."""

    def __init__(self, head: nn.Linear, token_ids: torch.Tensor):
        super().__init__()
        self.original = head  # put back after decoding
        self.weight = head.weight.detach()[token_ids]  # (V', h)
        self.bias = None if head.bias is None else head.bias.detach()[token_ids]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # as rows of a 2-D matrix: on a strided 3-D view (the prefill's last position) linear would broadcast the
        # weight over the batch into a (B, h, V') copy
        rows = hidden_states.to(self.weight.dtype).reshape(-1, hidden_states.shape[-1])
        return nn.functional.linear(rows, self.weight, self.bias).view(*hidden_states.shape[:-1], -1)  # (..., V')


class SubsetEmbedding(nn.Module):
    """The backbone's input embedding read through subset indices: index i embeds token ``token_ids[i]`` (with
    whatever the real layer does, e.g. Gemma's scaling by sqrt(hidden))."""

    def __init__(self, embed: nn.Module, token_ids: torch.Tensor):
        super().__init__()
        self.original = embed  # put back after decoding
        self.token_ids = token_ids

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.original(self.token_ids[input_ids])


class DecodingVocab:
    """What one decoding keeps to: the active adapter's output vocabulary, when it has one and ``restrict``.

    Where the output layer is a plain floating-point ``nn.Linear`` (not quantised, not LoRA-adapted), decoding
    runs over the vocabulary's indices: inside :meth:`active` the output layer computes only those tokens'
    logits and the input embedding reads those indices, so nothing passes over the full vocabulary; generated ids
    are indices, which :meth:`tokens` maps back, and ``eos``/``pad`` are the indices to give ``generate``. Greedy
    text is the same as masking every other token. Elsewhere, :attr:`processors` holds that mask.
    """

    def __init__(self, v2t: Vector2Text, restrict: bool):
        self.base = v2t.base_model
        eos = v2t.tokenizer.eos_token_id
        pad = v2t.tokenizer.pad_token_id
        self.eos, self.pad = eos, eos if pad is None else pad
        self.processors: list = []
        self.token_ids: torch.Tensor | None = None  # index -> token id, when decoding runs over indices
        vocab = v2t.output_vocab if restrict else None
        if vocab is None:
            return
        head = self.base.get_output_embeddings()
        if type(head) is not nn.Linear or not head.weight.is_floating_point():
            self.processors = [AllowedTokens(vocab)]
            return
        self.token_ids = vocab.to(head.weight.device)
        self.eos = self.pad = int(torch.searchsorted(self.token_ids, eos))  # the vocabulary always holds EOS
        self.head = SubsetHead(head, self.token_ids)
        self.embed = SubsetEmbedding(self.base.get_input_embeddings(), self.token_ids)

    def tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids of generated ``ids`` (indices into the vocabulary while it is active)."""
        return ids if self.token_ids is None else self.token_ids[ids.to(self.token_ids.device)]

    @contextmanager
    def active(self):
        """Decode over the vocabulary's indices meanwhile (no change where only the mask applies)."""
        if self.token_ids is None:
            yield
            return
        head, embed = self.head.original, self.embed.original
        self.base.set_output_embeddings(self.head)
        self.base.set_input_embeddings(self.embed)
        try:
            yield
        finally:
            self.base.set_output_embeddings(head)
            self.base.set_input_embeddings(embed)
