import numpy as np
import pytest
import torch

import lora_v2t.model.vocab
from lora_v2t import Reranked, V2TError
from lora_v2t.model.vocab import SubsetEmbedding, SubsetHead
from lora_v2t.util.vectors import cosine_rows

from .conftest import first_token_vocab, only_made_of
from .naive_decoding import generate_naive


def random_vectors(n, dim, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_batched_greedy_equals_the_one_at_a_time_no_cache_loop(v2t):
    vectors = random_vectors(12, v2t.embedding_dim)
    batched = v2t.generate(vectors, max_new_tokens=16, batch_size=5, repetition_penalty=1.0)  # plain greedy
    reference = generate_naive(v2t, vectors, max_new_tokens=16)
    assert batched == reference
    assert len(set(batched)) > 1  # different vectors give different text


def test_greedy_is_the_default_and_deterministic(v2t):
    vectors = random_vectors(3, v2t.embedding_dim)
    assert v2t.generate(vectors, max_new_tokens=8) == v2t.generate(vectors.numpy(), max_new_tokens=8)
    assert v2t.generate(vectors[0], max_new_tokens=8) == v2t.generate(vectors[:1], max_new_tokens=8)


def test_beam_search_returns_several_candidates_best_first(v2t):
    vectors = random_vectors(2, v2t.embedding_dim)
    out = v2t.generate(vectors, max_new_tokens=8, num_beams=4, num_return_sequences=3)
    assert len(out) == 2 and all(isinstance(c, list) and len(c) == 3 for c in out)
    best = v2t.generate(vectors, max_new_tokens=8, num_beams=4)
    assert [c[0] for c in out] == best


def test_sampling_is_reproducible_with_a_seed_and_varies_without(v2t):
    vectors = random_vectors(2, v2t.embedding_dim)
    opts = {"max_new_tokens": 10, "do_sample": True, "temperature": 1.5, "top_k": 0, "top_p": 1.0}
    a = v2t.generate(vectors, seed=3, **opts)
    assert a == v2t.generate(vectors, seed=3, **opts)
    assert a != v2t.generate(vectors, seed=4, **opts)


def test_rerank_returns_the_candidate_closest_to_the_target(v2t):
    vectors = v2t.encode(["Где лодка?", "Я люблю читать книги."])
    out = v2t.generate(vectors, max_new_tokens=8, do_sample=True, num_return_sequences=4, rerank=True, seed=0)
    candidates = v2t.generate(vectors, max_new_tokens=8, do_sample=True, num_return_sequences=4, seed=0)
    for target, best, cands in zip(vectors, out, candidates, strict=True):
        assert isinstance(best, Reranked) and best.text in cands
        cosines = [float(cosine_rows(v2t.encode([c]), target[None])[0]) if c.strip() else -1.0 for c in cands]
        assert best.cosine == pytest.approx(max(cosines), abs=1e-5)


def test_invert_encodes_then_generates(v2t):
    texts = ["Где лодка?", "Кошка спит."]
    assert v2t.invert(texts, max_new_tokens=6) == v2t.generate(v2t.encode(texts), max_new_tokens=6)


def test_cosine_rows_by_hand():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0]])
    assert np.allclose(cosine_rows(a, b), [0.0, 1.0])


@pytest.mark.parametrize(
    "options,message",
    [
        ({"num_return_sequences": 3}, "needs num_beams >= that many or do_sample"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"beam_width": 3}, r"unknown generation option\(s\) \['beam_width'\]"),
    ],
)
def test_bad_generation_options(v2t, options, message):
    with pytest.raises(V2TError, match=message):
        v2t.generate(random_vectors(1, v2t.embedding_dim), **options)


def test_bad_generation_inputs(v2t):
    with pytest.raises(V2TError, match="dimension 5"):
        v2t.generate(np.zeros((2, 5)))
    with pytest.raises(V2TError, match="NaN or inf"):
        v2t.generate(np.full((1, v2t.embedding_dim), np.nan))
    with pytest.raises(V2TError, match="empty batch"):
        v2t.generate(np.zeros((0, v2t.embedding_dim)))
    with pytest.raises(V2TError, match="text 0 is empty"):
        v2t.invert([""])
    with pytest.raises(V2TError, match="empty batch"):
        v2t.invert([])


def test_an_output_vocabulary_keeps_decoding_inside_it(v2t):
    vectors = random_vectors(6, v2t.embedding_dim)
    free = v2t.generate(vectors, max_new_tokens=10)
    letter, piece = first_token_vocab(v2t, vectors)
    v2t.set_output_vocab([letter])  # EOS is always added
    try:
        assert v2t.output_vocab.tolist() == sorted({letter, v2t.tokenizer.eos_token_id})
        head = v2t.base_model.get_output_embeddings()
        kept = v2t.generate(vectors, max_new_tokens=10, batch_size=4)
        assert v2t.base_model.get_output_embeddings() is head  # the full output layer is back after decoding
        assert v2t.base_model.get_input_embeddings().__class__.__name__ != "SubsetEmbedding"
        assert all(only_made_of(text, piece) for text in kept) and any(kept)
        beams = v2t.generate(vectors, max_new_tokens=6, num_beams=3, num_return_sequences=2)
        sampled = v2t.generate(vectors, max_new_tokens=6, do_sample=True, temperature=2.0, top_k=0, seed=0)
        assert all(only_made_of(text, piece) for text in [t for group in beams for t in group] + sampled)
        assert not all(only_made_of(text, piece) for text in free)  # without the restriction others come out
        assert kept == generate_naive(v2t, vectors, max_new_tokens=10)
        assert v2t.generate(vectors, max_new_tokens=10, restrict_vocab=False) == free
    finally:
        v2t.set_output_vocab(None)
    assert v2t.output_vocab is None and v2t.generate(vectors, max_new_tokens=10) == free


@pytest.mark.parametrize(
    "ids, message",
    [
        ([], "non-empty 1-D list"),
        ([[1, 2]], "non-empty 1-D list"),
        ([1.5], "integer token ids"),
        ([5, 10**6], "must lie in"),
        ([-1, 5], "must lie in"),
    ],
)
def test_bad_output_vocabulary(v2t, ids, message):
    with pytest.raises(V2TError, match=message):
        v2t.set_output_vocab(ids)
    assert v2t.output_vocab is None


def test_the_subset_layers_equal_the_full_ones_on_their_tokens(v2t):
    head, embed = v2t.base_model.get_output_embeddings(), v2t.base_model.get_input_embeddings()
    ids = torch.tensor([0, 5, 17, 200])
    states = torch.randn(2, 3, head.weight.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, sub = head(states), SubsetHead(head, ids)(states)
        indices = torch.tensor([[3, 0, 1]])
        assert torch.equal(SubsetEmbedding(embed, ids)(indices), embed(ids[indices]))
    assert sub.shape == (*full.shape[:-1], len(ids))
    assert torch.allclose(sub, full[..., ids], atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2}])
def test_decoding_over_the_vocabulary_gives_the_masked_decodings_text(v2t, monkeypatch, options):
    """Greedy decoding over the vocabulary's indices (plain output layer) and with every other token of the full
    layer masked (what a quantised layer gets) give the same text. (Beam search may order near-equal beams
    differently: the two log-softmaxes differ in the last bits.)"""
    vectors = random_vectors(5, v2t.embedding_dim)
    with torch.no_grad():
        logits = v2t.model(inputs_embeds=v2t.prefix(vectors)).logits[:, -1]  # (N, V)
    vocab = logits.topk(40, dim=-1).indices.flatten().unique()  # tokens these vectors are likely to emit
    v2t.set_output_vocab(vocab)
    base = v2t.base_model
    head, embed = base.get_output_embeddings(), base.get_input_embeddings()
    try:
        indexed = v2t.generate(vectors, max_new_tokens=12, batch_size=3, **options)
        assert base.get_output_embeddings() is head and base.get_input_embeddings() is embed  # put back
        vocab_class = lora_v2t.model.vocab.DecodingVocab
        monkeypatch.setattr(vocab_class, "__init__", masked_only(vocab_class.__init__))
        v2t.decoding_vocabs.clear()  # built again, as if the layer could not be cut
        masked = v2t.generate(vectors, max_new_tokens=12, batch_size=3, **options)
        assert not any(vocab.token_ids is not None for vocab in v2t.decoding_vocabs.values())
    finally:
        v2t.set_output_vocab(None)
    assert indexed == masked and any(indexed)


def masked_only(init):
    """DecodingVocab.__init__ as if the output layer could not be cut: the mask alone."""

    def wrapped(self, v2t, restrict):
        init(self, v2t, restrict)
        if self.token_ids is not None:
            self.processors, self.token_ids = [lora_v2t.model.vocab.AllowedTokens(self.token_ids)], None
            self.eos, self.pad = v2t.tokenizer.eos_token_id, v2t.tokenizer.pad_token_id

    return wrapped


def test_without_a_plain_output_layer_the_mask_alone_keeps_the_vocabulary(v2t, monkeypatch):
    from torch import nn

    class WrappedHead(nn.Linear):  # stands for a quantised or LoRA-adapted output layer
        pass

    base = v2t.base_model
    head = base.get_output_embeddings()
    wrapped = WrappedHead(head.in_features, head.out_features, bias=head.bias is not None)
    wrapped.load_state_dict(head.state_dict())
    monkeypatch.setattr(base, "lm_head", wrapped)
    vectors = random_vectors(4, v2t.embedding_dim)
    token, piece = first_token_vocab(v2t, vectors)
    v2t.set_output_vocab([token])
    try:
        kept = v2t.generate(vectors, max_new_tokens=8)
        assert base.get_output_embeddings() is wrapped  # never swapped
    finally:
        v2t.set_output_vocab(None)
    assert all(only_made_of(text, piece) for text in kept) and any(kept)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"do_sample": True, "temperature": 0.0}, r"temperature \(when sampling\) must be > 0"),
        ({"top_k": -3}, "top_k must be >= 0"),
        ({"top_p": 1.5}, r"top_p must be > 0 and <= 1"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
        # the tiny GPT-2 reads 128 positions, one of them the prefix slot
        (
            {"max_new_tokens": 128},
            r"max_new_tokens 128 does not fit backbone .* at most 128 positions, 1 of them taken "
            r"by the prefix; give max_new_tokens <= 127",
        ),
    ],
)
def test_generation_options_out_of_range_are_refused_before_decoding(v2t, options, message):
    with pytest.raises(V2TError, match=message):
        v2t.generate(random_vectors(1, v2t.embedding_dim), **options)


def test_the_longest_output_that_fits_the_context_decodes(v2t):
    out = v2t.generate(random_vectors(1, v2t.embedding_dim), max_new_tokens=127)
    assert isinstance(out[0], str)


def test_complex_vectors_are_refused_not_truncated_to_their_real_part(v2t):
    vectors = random_vectors(2, v2t.embedding_dim).numpy() + 1j
    with pytest.raises(V2TError, match=r"vectors are complex \(complex64\); sentence vectors are real"):
        v2t.generate(vectors)
    with pytest.raises(V2TError, match="vectors are complex"):
        v2t.generate(torch.from_numpy(vectors))


@pytest.mark.parametrize("vocab", [False, True], ids=["full-vocab", "output-vocab"])
def test_a_static_cache_gives_the_dynamic_caches_text(v2t, vocab):
    vectors = random_vectors(5, v2t.embedding_dim)  # batches of 4 and 1: the last one is filled up
    if vocab:
        with torch.no_grad():
            logits = v2t.model(inputs_embeds=v2t.prefix(vectors)).logits[:, -1]
        v2t.set_output_vocab(logits.topk(40, dim=-1).indices.flatten().unique())
    try:
        dynamic = v2t.generate(vectors, max_new_tokens=10, batch_size=4)
        assert v2t.generate(vectors, max_new_tokens=10, batch_size=4, cache="static") == dynamic and any(dynamic)
        beams = v2t.generate(
            vectors, max_new_tokens=6, batch_size=4, num_beams=2, num_return_sequences=2, cache="static"
        )
        assert [len(group) for group in beams] == [2] * 5
    finally:
        v2t.set_output_vocab(None)
    with pytest.raises(V2TError, match="unknown cache 'paged'; choose one of: dynamic, static"):
        v2t.generate(vectors, cache="paged")


def test_the_decoding_vocabulary_is_built_once_per_adapter(v2t):
    """Its subset layers stay the same objects from call to call (a compiled step is not traced again), until the
    output vocabulary changes."""
    v2t.set_output_vocab([5, 17, 200])
    try:
        first = v2t.decoding_vocab(True)
        assert v2t.decoding_vocab(True) is first and first.token_ids is not None
        assert v2t.decoding_vocab(False) is not first and v2t.decoding_vocab(False).token_ids is None
        v2t.set_output_vocab([5, 17, 201])
        assert v2t.decoding_vocab(True) is not first and 201 in v2t.decoding_vocab(True).token_ids.tolist()
    finally:
        v2t.set_output_vocab(None)
    head = v2t.base_model.get_output_embeddings()
    head.weight.requires_grad_(True)  # fully fine-tuned: the layer changes between calls
    try:
        assert v2t.decoding_vocab(True) is not v2t.decoding_vocab(True)
    finally:
        head.weight.requires_grad_(False)


def test_vectors_far_from_unit_length_are_warned_about(v2t, caplog):
    unit = v2t.encode(["Где лодка?", "Мама мыла раму."])
    assert np.allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-4)  # what the adapter's encoder makes
    with caplog.at_level("WARNING", logger="lora_v2t.model.generate"):
        v2t.generate(unit, max_new_tokens=2)
    assert "not unit length" not in caplog.text
    scaled = unit.copy()
    scaled[1] *= 10
    with caplog.at_level("WARNING", logger="lora_v2t.model.generate"):
        v2t.generate(scaled, max_new_tokens=2)
    assert "1 of 2 vectors are not unit length (rows [1]..., norms 1 to 10)" in caplog.text


def test_all_zero_vectors_are_named_not_told_to_divide_by_their_norm(caplog):
    """A zero row has no norm to divide by: the warning names those rows and says to drop them; the advice to
    normalise is kept for the other rows far from unit length, and their norms exclude the zero rows."""
    from lora_v2t.model.generate import warn_unless_unit_length

    vectors = torch.zeros(4, 3)
    with caplog.at_level("WARNING", logger="lora_v2t.model.generate"):
        warn_unless_unit_length(vectors, "sentence-transformers:x")
    assert "4 of 4 vectors are all zeros (rows [0, 1, 2, 3])" in caplog.text and "drop those rows" in caplog.text
    assert "divide each by its norm" not in caplog.text
    caplog.clear()
    vectors[1, 0], vectors[2, 0] = 1.0, 3.0
    with caplog.at_level("WARNING", logger="lora_v2t.model.generate"):
        warn_unless_unit_length(vectors, "sentence-transformers:x")
    assert "2 of 4 vectors are all zeros (rows [0, 3])" in caplog.text
    assert "1 of 4 vectors are not unit length (rows [2]..., norms 1 to 3)" in caplog.text
