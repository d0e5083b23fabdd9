"""Batched decoding of sentence vectors through transformers' ``generate`` with the KV cache.

Greedy (default), sampling (temperature / top-k / top-p), beam search, several candidates per vector,
and reranking: re-embed the candidates with the adapter's encoder and keep the one whose vector is closest
(cosine) to the target.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from ..config import SEED_LIMIT
from ..model.backbone import max_positions
from ..model.beam import plan_budget
from ..model.correct import check_role, correct, corrector_at_hand
from ..model.vocab import DecodingVocab
from ..util.errors import V2TError
from ..util.vectors import cosine_rows, to_vectors

if TYPE_CHECKING:
    from .vector2text import Vector2Text

logger = logging.getLogger(__name__)


class Reranked(NamedTuple):
    """The candidate whose re-embedding is closest to the target vector, and that cosine."""

    text: str
    cosine: float


def generate(
    v2t: Vector2Text,
    vectors,
    *,
    rerank: bool = False,
    show_progress: bool = False,
    seed: int | None = None,
    contexts: list[str] | None = None,
    warn_norms: bool = True,
    budget: int | None = None,
    sources=None,
    corrector: str | None = None,
    sample_proposals: bool = False,
    **options,
):
    """Decode (N, d) vectors into text.

    Args:
        v2t: a :class:`lora_v2t.Vector2Text`.
        vectors: array or tensor of shape (N, d) (or (d,) for one vector).
        rerank: re-embed the candidates and keep the closest one; returns :class:`Reranked` items.
        show_progress: show a progress bar over batches.
        seed: seed the RNG first (for reproducible sampling).
        contexts: for a corrector (the active adapter), the hypothesis each row corrects; its ``vectors`` are then
            :func:`lora_v2t.model.correct.condition` rows. See :mod:`lora_v2t.model.correct`.
        warn_norms: warn about rows far from unit length (:func:`warn_unless_unit_length`); correction turns it
            off for the vectors it builds itself (shifted ones are not meant to be unit length).
        budget: decodes per vector (an integer >= 1; None or 1: one greedy decode): spent on the beam over
            corrections that :func:`lora_v2t.model.beam.plan_budget` chooses, keeping the text closest to the
            vector. ``sources`` (e.g. ``("beams", "shift")``), ``corrector`` (a corrector bundle, or ``"shift"``
            for none) and ``sample_proposals`` (the corrector samples its proposals: give ``seed``) shape it.
        **options: any field of :class:`lora_v2t.config.GenerationConfig`: ``max_new_tokens``,
            ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``num_beams``, ``num_return_sequences``,
            ``repetition_penalty``, ``no_repeat_ngram_size``, ``batch_size``, ``restrict_vocab``, ``cache``. Unset
            ones come from the adapter's defaults.

    Returns:
        ``list[str]`` (one text per vector); ``list[list[str]]`` when ``num_return_sequences > 1``
        without reranking; ``list[Reranked]`` with ``rerank=True``.
    """
    check_role(v2t.meta, "hypothesizer" if contexts is None else "corrector", v2t.active_adapter)
    plan = spending_plan(v2t, budget, sources, corrector, sample_proposals)
    if plan is not None:
        return budgeted(v2t, vectors, plan, rerank, show_progress, seed, options)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT):
        raise V2TError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
    opts = v2t.generation_defaults().updated(**options)
    context = 0 if contexts is None else v2t.context_tokens or opts.max_new_tokens  # a corrector's hypothesis
    check_length(
        opts.max_new_tokens,
        v2t.projector.slots + context,
        max_positions(v2t.base_model.config),
        v2t.backbone_info["name"],
    )
    target = to_vectors(vectors, v2t.projector.embedding_dim)
    if contexts is None and warn_norms:
        warn_unless_unit_length(target, v2t.meta.encoder.spec)
    if contexts is not None and (rerank or len(contexts) != target.shape[0]):
        raise V2TError(
            f"a corrector takes one context per vector ({len(contexts)} for {target.shape[0]}) and does not rerank"
        )
    texts = decode_batches(v2t, target, contexts, context, opts, show_progress, seed)
    n = opts.num_return_sequences
    groups = [texts[i * n : (i + 1) * n] for i in range(target.shape[0])]
    if rerank:
        return rerank_candidates(v2t, target.numpy(), groups)
    return [g[0] for g in groups] if n == 1 else groups


def spending_plan(v2t: Vector2Text, budget, sources, corrector, sample_proposals: bool):
    """The beam over corrections a ``budget`` pays for (:func:`lora_v2t.model.beam.plan_budget`), or None where
    there is nothing to spend beyond one greedy decode; refuses the budget's knobs without a budget."""
    if budget is None:
        if sources is not None or sample_proposals:
            raise V2TError("sources and sample_proposals shape how a budget is spent: give budget=N (--budget N) too")
        if corrector is not None:
            raise V2TError(
                "corrector= is used by correction: give budget=N (or correct_steps=N to Vector2Text.generate) too"
            )
        return None
    plan = plan_budget(
        budget,
        sources,
        corrector=corrector,
        has_corrector=lambda: corrector_at_hand(v2t.meta.corrector, v2t.meta.source),
        sample=sample_proposals,
    )
    return plan if plan.steps or plan.rerank else None


def decode_batches(
    v2t: Vector2Text, target: torch.Tensor, contexts, context: int, opts, show_progress: bool, seed: int | None
) -> list[str]:
    """The decoded texts of ``target``'s rows (``opts.num_return_sequences`` per row, each row's together), in
    batches of ``opts.batch_size`` through transformers' ``generate`` from the prefix (and a corrector's
    ``contexts``, ``context`` tokens each)."""
    from tqdm.auto import tqdm
    from transformers import LogitsProcessorList

    tok = v2t.tokenizer
    vocab = v2t.decoding_vocab(opts.restrict_vocab)
    gen_config = hf_generation_config(opts, vocab)
    processors = LogitsProcessorList(vocab.processors + penalties(opts))
    if seed is not None:
        torch.manual_seed(seed)
    starts = range(0, target.shape[0], opts.batch_size)
    if show_progress:
        starts = tqdm(starts, desc="generating", unit="batch")
    texts: list[str] = []
    was_training = v2t.training
    v2t.eval()
    try:
        with torch.no_grad():
            for start in starts:
                stop = start + opts.batch_size
                prompt, mask = v2t.prompt(
                    target[start:stop], None if contexts is None else contexts[start:stop], context
                )
                rows = prompt.shape[0]
                if opts.cache == "static" and len(target) > opts.batch_size:  # one shape: the last batch is filled
                    prompt, mask = fill_batch(prompt, opts.batch_size), fill_batch(mask, opts.batch_size)
                with vocab.active():
                    out = v2t.model.generate(
                        inputs_embeds=prompt,
                        attention_mask=mask,
                        generation_config=gen_config,
                        logits_processor=processors,
                    )
                out = out[: rows * opts.num_return_sequences]  # each row's candidates come together
                texts += [t.strip() for t in tok.batch_decode(vocab.tokens(out), skip_special_tokens=True)]
    finally:
        v2t.train(was_training)
    return texts


def budgeted(v2t, vectors, plan, rerank: bool, show_progress: bool, seed: int | None, options: dict):
    """The best text of each vector after the beam over corrections ``plan`` (a budget's); with ``rerank``,
    :class:`Reranked` items (their cosines come with the search)."""
    if (options.get("num_return_sequences") or 1) > 1:
        raise V2TError("a budget keeps one text per vector (the closest): leave num_return_sequences at 1")
    trace = correct(v2t, vectors, plan, show_progress=show_progress, seed=seed, **options)
    if rerank:
        return [Reranked(t, float(c)) for t, c in zip(trace.final, trace.cosines[-1], strict=False)]
    return trace.final


def warn_unless_unit_length(target: torch.Tensor, encoder_spec: str, tolerance: float = 0.05) -> None:
    """Log a warning when rows are far from unit length: every encoder lora_v2t loads L2-normalises its vectors,
    so an adapter trained on one has seen only unit vectors, and a scaled one decodes into nonsense. (An adapter
    trained on precomputed vectors is left alone: those may have any length.) All-zero rows get their own
    warning: they have no direction, so no norm can fix them and nothing can be read from them."""
    if encoder_spec.startswith("precomputed:"):
        return
    norms = target.float().norm(dim=1)
    zero = norms == 0
    if bool(zero.any()):
        logger.warning(
            "%d of %d vectors are all zeros (rows %s%s): a zero vector has no direction and cannot be "
            "inverted; drop those rows",
            int(zero.sum()),
            len(norms),
            torch.nonzero(zero).flatten()[:5].tolist(),
            "..." if int(zero.sum()) > 5 else "",
        )
    off = ((norms - 1).abs() > tolerance) & ~zero
    if bool(off.any()):
        rows = torch.nonzero(off).flatten()[:5].tolist()
        logger.warning(
            "%d of %d vectors are not unit length (rows %s..., norms %.3g to %.3g): the adapter was "
            "trained on its encoder's L2-normalised vectors; divide each by its norm first",
            int(off.sum()),
            len(norms),
            rows,
            float(norms[~zero].min()),
            float(norms[~zero].max()),
        )


def hf_generation_config(opts, vocab: DecodingVocab):
    """transformers' GenerationConfig for our options, with the end and padding ids of ``vocab``'s id space."""
    from transformers import GenerationConfig as HFGenerationConfig

    hf_kwargs = {
        "max_new_tokens": opts.max_new_tokens,
        "num_beams": opts.num_beams,
        "num_return_sequences": opts.num_return_sequences,
        "do_sample": opts.do_sample,
        "no_repeat_ngram_size": opts.no_repeat_ngram_size,
        "eos_token_id": vocab.eos,
        "pad_token_id": vocab.pad,
    }
    if opts.cache == "static":  # transformers compiles the decoding step on a GPU
        hf_kwargs["cache_implementation"] = "static"
    if opts.do_sample:
        hf_kwargs |= {"temperature": opts.temperature, "top_k": opts.top_k, "top_p": opts.top_p}
    else:
        hf_kwargs |= {"temperature": None, "top_k": None, "top_p": None}
    return HFGenerationConfig(**hf_kwargs)


def fill_batch(rows: torch.Tensor, size: int) -> torch.Tensor:
    """``rows`` with copies of its last row appended up to ``size`` rows (a compiled step keeps one shape)."""
    missing = size - rows.shape[0]
    return rows if missing <= 0 else torch.cat([rows, rows[-1:].expand(missing, *rows.shape[1:])])


def penalties(opts) -> list:
    """The repetition penalty as a logits processor that sees the generated tokens only.

    Given ``repetition_penalty``, transformers' ``generate`` skips as many tokens of each row as the row has left
    padding, which with ``inputs_embeds`` (no prompt tokens) skips *generated* tokens of the padded rows of a
    corrector's batch; its processor built without that offset penalises exactly what each row generated.
    """
    from transformers import RepetitionPenaltyLogitsProcessor

    return [] if opts.repetition_penalty == 1.0 else [RepetitionPenaltyLogitsProcessor(float(opts.repetition_penalty))]


def check_length(max_new_tokens: int, slots: int, positions: int | None, backbone: str) -> None:
    """Raise unless the prefix slots and ``max_new_tokens`` fit the ``positions`` the backbone can read."""
    if positions is not None and slots + max_new_tokens > positions:
        raise V2TError(
            f"max_new_tokens {max_new_tokens} does not fit backbone {backbone!r}: it reads at most "
            f"{positions} positions, {slots} of them taken by the prefix; give max_new_tokens "
            f"<= {positions - slots}"
        )


def rerank_candidates(v2t: Vector2Text, target: np.ndarray, groups: list[list[str]]) -> list[Reranked]:
    """For each vector, the candidate whose re-embedding has the highest cosine with it."""
    flat = [t for g in groups for t in g]
    rows = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    cosines = reembed_cosines(v2t, flat, target[rows], empty=-1.0)  # an empty candidate can never win
    out, pos = [], 0
    for g in groups:
        best = pos + int(np.argmax(cosines[pos : pos + len(g)]))
        out.append(Reranked(flat[best], float(cosines[best])))
        pos += len(g)
    return out


def reembed_cosines(v2t: Vector2Text, texts: list[str], targets: np.ndarray, empty: float) -> np.ndarray:
    """Cosine between each text's re-embedding (adapter's encoder) and its target row; ``empty`` for blank
    texts, which the encoder refuses."""
    cosines = np.full(len(texts), empty, dtype=np.float64)
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if keep:
        cosines[keep] = cosine_rows(v2t.encode([texts[i] for i in keep]), targets[keep])
    return cosines
