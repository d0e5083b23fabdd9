"""The original experiment's greedy decoding, kept as the reference that the library's batched KV-cache
decoding is checked against (tests/test_generate.py) and timed against (bench/generation.py)."""

from __future__ import annotations

import torch

from lora_v2t.model.vocab import DecodingVocab
from lora_v2t.util.vectors import to_vectors


@torch.no_grad()
def generate_naive(v2t, vectors, max_new_tokens: int = 48, restrict_vocab: bool = True) -> list[str]:
    """Reference greedy decoding, the original experiment's way: one vector at a time, no KV cache, the
    whole sequence recomputed at every step. Used by the tests and the benchmark as the baseline."""
    target = to_vectors(vectors, v2t.embedding_dim)
    vocab = v2t.decoding_vocab(restrict_vocab)
    was_training = v2t.training
    v2t.eval()
    try:
        texts = []
        for row in target:
            prefix = v2t.prefix(row[None])  # (1, k, h)
            with vocab.active():
                ids = _naive_one(v2t, prefix, max_new_tokens, vocab)
            texts.append(v2t.tokenizer.decode(vocab.tokens(ids), skip_special_tokens=True).strip())
    finally:
        v2t.train(was_training)
    return texts


def _naive_one(v2t, embeds: torch.Tensor, max_new_tokens: int, vocab: DecodingVocab) -> torch.Tensor:
    """Greedy decoding from prefix ``embeds``, recomputing the whole sequence at every step; returns the ids."""
    embed = v2t.model.get_input_embeddings()
    ids: list[int] = []
    for _ in range(max_new_tokens):
        logits = v2t.model(inputs_embeds=embeds, use_cache=False).logits[:, -1]  # (1, V)
        for process in vocab.processors:
            logits = process(None, logits)
        next_id = int(logits[0].argmax())
        if next_id == vocab.eos:
            break
        ids.append(next_id)
        next_embed = embed(torch.tensor([[next_id]], device=embeds.device)).to(embeds.dtype)
        embeds = torch.cat([embeds, next_embed], dim=1)
    return torch.tensor(ids, dtype=torch.long)
