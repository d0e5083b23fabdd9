"""The training loss over a subset of the vocabulary (``training.loss_vocab: corpus``)."""

from __future__ import annotations

import torch
from torch import nn

from .errors import V2TError


def subset_loss(base: nn.Module, inputs: dict, vocab: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of a causal LM ``base`` on ``inputs`` (inputs_embeds, attention_mask, labels),
    with the softmax restricted to the sorted token ids ``vocab``, computed at the labelled positions only.

    Every label must be in ``vocab``. On a CPU this removes most of the cost of a large output layer (Gemma's
    262k tokens): the hidden states of the unlabelled positions never reach the head.
    """
    body = getattr(base, base.base_model_prefix)  # the decoder stack, LoRA layers included
    hidden = body(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                  use_cache=False)[0]  # no KV cache: nothing is decoded here
    labels = inputs["labels"][:, 1:]  # position t predicts token t+1
    keep = labels != -100
    states = hidden[:, :-1][keep]  # (N, h): only the positions that have a label
    head = base.get_output_embeddings()
    logits = nn.functional.linear(states, head.weight[vocab],
                                  None if head.bias is None else head.bias[vocab]).float()  # (N, V')
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    targets = torch.searchsorted(vocab, labels[keep])
    if not torch.equal(vocab[targets.clamp(max=len(vocab) - 1)], labels[keep]):
        raise V2TError("a label is missing from loss_vocab: build it from every training sentence")
    return nn.functional.cross_entropy(logits, targets)
