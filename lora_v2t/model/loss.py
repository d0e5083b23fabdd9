"""The training loss over a subset of the vocabulary (``training.loss_vocab: corpus``)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..util.errors import V2TError
from .backbone import output_weight

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class SubsetLoss:
    """Next-token cross-entropy of a causal LM ``base`` with the softmax restricted to the sorted token ids
    ``vocab``, computed at the labelled positions only.

    On a CPU this removes most of the cost of a large output layer (Gemma's 262k tokens): the hidden states of the
    unlabelled positions never reach the head. Built once per run, it keeps the output layer's rows of ``vocab``
    (gathered again at each call only where that layer trains) and a token -> index table, so a step neither
    gathers 13k rows nor synchronises the device to check its labels.

    Args:
        check_labels: raise when a label is not in ``vocab`` (one device synchronisation per call). The trainer
            passes False: its vocabulary is built from every training sentence as the batches truncate them.
    """

    def __init__(self, base: PreTrainedModel, vocab: torch.Tensor, check_labels: bool = True):
        self.base, self.check_labels = base, check_labels
        weight = output_weight(base)
        self.vocab = vocab.to(weight.device)
        self.trains_head = weight.requires_grad
        self.rows: tuple[torch.Tensor, torch.Tensor | None] | None = None
        if not self.trains_head:
            rows, bias = self.head_rows()
            self.rows = rows.float(), None if bias is None else bias.float()
        self.index = torch.full((weight.shape[0],), -1, dtype=torch.long, device=self.vocab.device)
        self.index[self.vocab] = torch.arange(len(self.vocab), device=self.vocab.device)

    def head_rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The output layer's weight and bias rows of the vocabulary (with gradients where the layer trains)."""
        bias = getattr(self.base.get_output_embeddings(), "bias", None)
        return output_weight(self.base)[self.vocab], None if bias is None else bias[self.vocab]

    def __call__(self, inputs: dict) -> torch.Tensor:
        """The loss of ``inputs`` (inputs_embeds, attention_mask, labels with -100 where nothing is learned)."""
        base = self.base
        body = base.base_model  # the decoder stack, LoRA layers included
        hidden = body(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"], use_cache=False)[
            0
        ]  # no KV cache: nothing is decoded here
        labels = inputs["labels"][:, 1:]  # position t predicts token t+1
        keep = labels != -100
        states = hidden[:, :-1][keep]  # (N, h): only the positions that have a label
        weight, bias = self.rows if self.rows is not None else self.head_rows()
        # the logits in fp32 even under bf16 autocast: rounded to bf16, a logit near 20 is off by up to 0.06, noise
        # that reaches every gradient through the softmax (the full-vocabulary loss, transformers' own, does not)
        device = states.device.type
        with torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else nullcontext():
            logits = nn.functional.linear(states.float(), weight.float(), None if bias is None else bias.float())
        cap = getattr(base.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        targets = self.index[labels[keep]]
        if self.check_labels and bool((targets < 0).any()):
            raise V2TError("a label is missing from loss_vocab: build it from every training sentence")
        return nn.functional.cross_entropy(logits, targets)
