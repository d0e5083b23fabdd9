"""What the backbone reads: the prefix P that the projector makes of a vector, followed by token embeddings.

A hypothesizer reads ``[P ; wte(text + EOS)]`` when it trains and ``[P]`` when it writes; a corrector reads
``[P ; wte(hypothesis + EOS)]`` before its text (see :mod:`lora_v2t.model.correct`). :class:`PrefixInputs` is the part
of :class:`~lora_v2t.model.vector2text.Vector2Text` that builds these batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..model.backbone import input_embedding_weight
from ..model.encoders import check_texts
from ..util.errors import V2TError
from ..util.vectors import to_vectors

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..model.projector import Projector


class PrefixInputs:
    """Tokenising, the prefix, and the inputs of a forward pass or of decoding (a mixin of ``Vector2Text``)."""

    if TYPE_CHECKING:  # what Vector2Text provides
        tokenizer: Any
        model: Any

        @property
        def projector(self) -> Projector: ...

        @property
        def device(self) -> torch.device: ...

        @property
        def base_model(self) -> PreTrainedModel: ...

    def tokenize(
        self, texts: list[str], max_length: int = 64, contexts: list[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Token ids of the texts + EOS, truncated to ``max_length`` tokens, right-padded.

        With ``contexts`` (a corrector's hypotheses), each row is ``context + EOS + text + EOS`` (each part
        truncated to ``max_length``), and ``label_mask`` marks the text's tokens: only those are learned.
        """
        texts = check_texts(texts)
        if contexts is not None and len(contexts) != len(texts):
            raise V2TError(f"{len(contexts)} contexts for {len(texts)} texts: give one context per text")
        return self.pad_rows(self.token_ids(texts), max_length, None if contexts is None else self.token_ids(contexts))

    def pad_rows(
        self, rows: list[list[int]], max_length: int = 64, context_rows: list[list[int]] | None = None
    ) -> dict[str, torch.Tensor]:
        """The batch of :meth:`tokenize` from texts already tokenised (without special tokens): a training
        loop's pre-tokenised corpus (:class:`lora_v2t.train.data.TokenizedCorpus`)."""
        eos = self.tokenizer.eos_token_id
        rows = [ids[: max_length - 1] + [eos] for ids in rows]
        starts = [0] * len(rows)
        if context_rows is not None:
            heads = [ids[: max_length - 1] + [eos] for ids in context_rows]
            starts = [len(h) for h in heads]
            rows = [h + r for h, r in zip(heads, rows, strict=True)]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        label_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
            label_mask[i, start : len(row)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        return batch if context_rows is None else batch | {"label_mask": label_mask}

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """The tokenizer's ids of each text, without special tokens (empty texts give empty lists)."""
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def prefix(self, vectors) -> torch.Tensor:
        """Projected prefix embeddings (B, k, h) in the backbone's compute dtype (a corrector's vectors are its
        :func:`lora_v2t.model.correct.condition` rows)."""
        vec = to_vectors(vectors, self.projector.embedding_dim).to(self.device)
        dtype = input_embedding_weight(self.base_model).dtype
        return self.projector(vec).to(dtype)

    def prompt(
        self, vectors, contexts: list[str] | None = None, max_length: int = 64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What decoding starts from: ``[P]``, or with ``contexts`` (a corrector's hypotheses, each truncated to
        ``max_length`` tokens) ``[P ; wte(context + EOS)]``, left-padded; returns (inputs_embeds, attention_mask)."""
        prefix = self.prefix(vectors)  # (b, k, h)
        batch, k, hidden = prefix.shape
        if contexts is None:
            return prefix, torch.ones((batch, k), dtype=torch.long, device=prefix.device)
        eos = self.tokenizer.eos_token_id
        rows = [ids[: max_length - 1] + [eos] for ids in self.token_ids(contexts)]
        width = max(len(r) for r in rows)
        embeds = prefix.new_zeros((batch, k + width, hidden))
        mask = torch.zeros((batch, k + width), dtype=torch.long, device=prefix.device)
        embed = self.model.get_input_embeddings()
        for i, row in enumerate(rows):
            start = width - len(row)
            embeds[i, start : start + k] = prefix[i]
            embeds[i, start + k :] = embed(torch.tensor(row, device=prefix.device)).to(prefix.dtype)
            mask[i, start:] = 1
        return embeds, mask

    def build_inputs(
        self, vectors, input_ids: torch.Tensor, attention_mask: torch.Tensor, label_mask: torch.Tensor | None = None
    ) -> dict:
        """``inputs_embeds = [P ; wte(tokens)]``, its attention mask, and labels (-100 on P, on padding and
        where ``label_mask`` is 0)."""
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        prefix = self.prefix(vectors)  # (B, k, h)
        batch, k = prefix.shape[:2]
        if batch != input_ids.shape[0]:
            raise V2TError(f"{batch} vectors but {input_ids.shape[0]} texts: give one vector per text")
        token_embeds = self.model.get_input_embeddings()(input_ids)  # (B, T, h)
        inputs_embeds = torch.cat([prefix.to(token_embeds.dtype), token_embeds], dim=1)  # (B, k+T, h)
        ones = torch.ones((batch, k), dtype=attention_mask.dtype, device=self.device)
        ignore = torch.full((batch, k), -100, dtype=torch.long, device=self.device)
        learned = attention_mask if label_mask is None else attention_mask * label_mask.to(self.device)
        labels = torch.cat([ignore, input_ids.masked_fill(learned == 0, -100)], dim=1)  # (B, k+T)
        return {
            "inputs_embeds": inputs_embeds,
            "attention_mask": torch.cat([ones, attention_mask], 1),
            "labels": labels,
        }
