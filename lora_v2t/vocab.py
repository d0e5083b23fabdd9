"""Output vocabularies: the token ids an adapter may emit, and how decoding keeps to them.

An adapter trained with ``loss_vocab: corpus`` only ever learned to rank the tokens of its corpus; decoding masks
every other token, and (on a plain output layer) computes only the allowed tokens' logits.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .errors import V2TError


def check_output_vocab(token_ids, size: int, eos_id: int) -> torch.Tensor:
    """The sorted unique ids of ``token_ids`` (a non-empty 1-D integer list or tensor, each in [0, size)) with
    ``eos_id`` added; raise V2TError naming what is wrong."""
    array = np.asarray(token_ids.cpu() if isinstance(token_ids, torch.Tensor) else token_ids)
    if array.ndim != 1 or array.size == 0 or (array.dtype.kind not in "iu"):
        raise V2TError(f"an output vocabulary is a non-empty 1-D list of integer token ids; got shape "
                       f"{array.shape} of {array.dtype}; pass None to allow every token")
    ids = torch.from_numpy(array.astype(np.int64))
    if int(ids.min()) < 0 or int(ids.max()) >= size:
        raise V2TError(f"output vocabulary ids must lie in [0, {size}) for this backbone; got "
                       f"[{int(ids.min())}, {int(ids.max())}]: it was made for another tokenizer")
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
    """The backbone's output layer computed only for ``token_ids``; every other logit gets the dtype's lowest
    value. On Gemma's 262k-token vocabulary this removes most of a decoding step's work on a CPU."""

    def __init__(self, head: nn.Linear, token_ids: torch.Tensor):
        super().__init__()
        self.original = head  # put back after decoding
        self.vocab_size = head.weight.shape[0]
        ids = token_ids.to(head.weight.device)
        self.token_ids = ids
        self.weight = head.weight.detach()[ids]  # (V', h)
        self.bias = None if head.bias is None else head.bias.detach()[ids]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = nn.functional.linear(hidden_states.to(self.weight.dtype), self.weight, self.bias)  # (..., V')
        full = logits.new_full((*logits.shape[:-1], self.vocab_size), torch.finfo(logits.dtype).min)
        return full.index_copy_(-1, self.token_ids, logits)  # (..., V)


@contextmanager
def decoding_vocab(v2t, restrict_vocab: bool):
    """While decoding, keep to the active adapter's output vocabulary, if it has one and ``restrict_vocab``.

    Yields the logits processors to pass to ``generate``: a mask, which alone decides what may come out.
    Meanwhile, when the output layer is a plain floating-point ``nn.Linear`` (not quantised, not LoRA-adapted),
    it is swapped for a :class:`SubsetHead` that computes only the allowed tokens' logits, for speed.
    """
    if not restrict_vocab or v2t.output_vocab is None:
        yield []
        return
    base = v2t.base_model
    head = base.get_output_embeddings()
    head = getattr(head, "original", head)  # another decoding's SubsetHead: start from the real layer
    vocab = v2t.output_vocab
    processors = [AllowedTokens(vocab)]
    if type(head) is not nn.Linear or not head.weight.is_floating_point():
        yield processors
        return
    base.set_output_embeddings(SubsetHead(head, vocab))
    try:
        yield processors
    finally:
        base.set_output_embeddings(head)
