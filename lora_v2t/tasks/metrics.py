"""Evaluation metrics: token F1, exact match, corpus BLEU and chrF (sacrebleu) from per-sentence statistics, each
with a bootstrap 95% interval (see :func:`score_outputs`)."""

from __future__ import annotations

import copy
import logging
import re
import string
from collections import Counter

import numpy as np

logger = logging.getLogger(__name__)

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}«»—–…„“”]")


def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def exact_match(hypothesis: str, reference: str) -> float:
    """1.0 when the texts are equal after whitespace normalisation."""
    return float(normalise_whitespace(hypothesis) == normalise_whitespace(reference))


def _tokens(text: str) -> list[str]:
    return _PUNCT.sub(" ", text.lower().replace("ё", "е")).split()


def token_f1(hypothesis: str, reference: str) -> float:
    """F1 of the bags of lower-cased word tokens (punctuation removed, ё = е), as in SQuAD."""
    hyp, ref = _tokens(hypothesis), _tokens(reference)
    if not hyp or not ref:
        return float(hyp == ref)
    common = sum((Counter(hyp) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(hyp), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def percent_per_sentence(score, hypotheses: list[str], references: list[str]) -> np.ndarray:
    """``score(hypothesis, reference)`` (a fraction: :func:`token_f1`, :func:`exact_match`) of each sentence, in
    percent."""
    return np.array([score(h, r) for h, r in zip(hypotheses, references, strict=True)], dtype=np.float64) * 100


def resample_indices(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n) sentence indices drawn with replacement by numpy's ``default_rng(seed)``: every report's
    bootstrap (evaluate, compare and the audit draw them alike, so their intervals reproduce one another)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_interval(values: np.ndarray, resamples: np.ndarray, score=None) -> tuple[float, float, float]:
    """Score and 95% bootstrap interval. ``values`` (N, ...) are per-sentence values or sufficient
    statistics; ``score`` maps a column sum to a corpus score (default: the mean)."""
    if score is None:
        point = float(values.mean())
        samples = values[resamples].mean(axis=1)
    else:
        point = score(values.sum(axis=0))
        samples = np.array([score(values[idx].sum(axis=0)) for idx in resamples])
    low, high = np.percentile(samples, [2.5, 97.5])
    return point, float(low), float(high)


# Corpus BLEU and chrF are functions of sums of per-sentence statistics, so a bootstrap resample costs a sum, not
# a rescoring of its sentences. BLEU's statistics and score come from sacrebleu's public API (a BLEUScore's
# lengths, counts and totals; BLEU.compute_bleu). sacrebleu makes no chrF statistics public: they are counted
# with its public n-gram helper and scored with chrF's formula. The point value is always sacrebleu's
# corpus_score, and the statistics are used only where they reproduce it exactly; otherwise (another sacrebleu,
# other metric options) every resample is rescored with corpus_score: slower, same definition.
def bleu_statistics(metric, hypotheses: list[str], references: list[str]) -> np.ndarray:
    """(N, 2 + 2 * order) per sentence: hypothesis and reference length, then matching and total n-grams of
    each order, read from sacrebleu's sentence-level BLEUScore."""
    twin = copy.copy(metric)
    twin.effective_order = True  # silences sacrebleu's advice for sentence scores; the counts do not change
    rows = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        s = twin.sentence_score(hyp, [ref])
        rows.append([s.sys_len, s.ref_len, *s.counts, *s.totals])
    return np.asarray(rows, dtype=np.float64)


def bleu_from_statistics(metric, stats: np.ndarray) -> float:
    """Corpus BLEU of summed :func:`bleu_statistics`, with ``metric``'s smoothing."""
    order = metric.max_ngram_order
    return metric.compute_bleu(
        correct=stats[2 : 2 + order].tolist(),
        total=stats[2 + order :].tolist(),
        sys_len=int(stats[0]),
        ref_len=int(stats[1]),
        smooth_method=metric.smooth_method,
        smooth_value=metric.smooth_value,
        effective_order=metric.effective_order,
        max_ngram_order=order,
    ).score


def chrf_statistics(metric, hypotheses: list[str], references: list[str]) -> np.ndarray:
    """(N, 3 * char_order) per sentence and character n-gram order: the hypothesis's n-grams (counted only
    where the reference has n-grams of that order, as sacrebleu does), the reference's, and their clipped
    matches."""
    from sacrebleu.metrics.helpers import extract_all_char_ngrams

    rows = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        if metric.lowercase:
            hyp, ref = hyp.lower(), ref.lower()
        row = []
        for h, r in zip(
            extract_all_char_ngrams(hyp, metric.char_order, metric.whitespace),
            extract_all_char_ngrams(ref, metric.char_order, metric.whitespace),
            strict=True,
        ):
            row += [h.total() if r else 0, r.total(), (h & r).total()]
        rows.append(row)
    return np.asarray(rows, dtype=np.float64)


def chrf_from_statistics(metric, stats: np.ndarray) -> float:
    """chrF of summed :func:`chrf_statistics`: precision and recall averaged over the orders both sides have,
    then their F-beta (sacrebleu's default, ``eps_smoothing=False``)."""
    hyp, ref, match = stats[0::3], stats[1::3], stats[2::3]
    seen = (hyp > 0) & (ref > 0)
    if not seen.any():
        return 0.0
    precision, recall = float((match[seen] / hyp[seen]).mean()), float((match[seen] / ref[seen]).mean())
    if precision + recall == 0:
        return 0.0
    factor = metric.beta**2
    return 100 * (1 + factor) * precision * recall / (factor * precision + recall)


def rescore_resamples(metric, hypotheses: list[str], references: list[str], resamples: np.ndarray) -> np.ndarray:
    """sacrebleu's corpus_score of every resample (rows of sentence indices): the definition, without shortcuts."""
    return np.array(
        [metric.corpus_score([hypotheses[i] for i in idx], [[references[i] for i in idx]]).score for idx in resamples]
    )


def _statistics(metric, hypotheses: list[str], references: list[str], point: float, resamples: int):
    """Per-sentence statistics of ``metric`` and the function that scores their sum, or None where that sum does
    not reproduce sacrebleu's corpus score ``point`` (another sacrebleu, other metric options): then each of the
    ``resamples`` is rescored."""
    from sacrebleu.metrics import BLEU

    if isinstance(metric, BLEU):
        stats, from_stats = bleu_statistics(metric, hypotheses, references), bleu_from_statistics
    else:
        stats, from_stats = chrf_statistics(metric, hypotheses, references), chrf_from_statistics
    if abs(from_stats(metric, stats.sum(axis=0)) - point) > 1e-9 * max(1.0, abs(point)):
        logger.warning(
            "%s: per-sentence statistics do not reproduce sacrebleu's corpus score; rescoring each of the "
            "%d bootstrap resamples with corpus_score (slower)",
            type(metric).__name__,
            resamples,
        )
        return None
    return stats, lambda summed: from_stats(metric, summed)


def corpus_interval(
    metric, hypotheses: list[str], references: list[str], resamples: np.ndarray
) -> tuple[float, float, float]:
    """sacrebleu's corpus score of ``metric`` (a ``BLEU`` or ``CHRF``) and its 95% bootstrap interval."""
    point = float(metric.corpus_score(hypotheses, [references]).score)
    found = _statistics(metric, hypotheses, references, point, len(resamples))
    if found is not None:
        _, low, high = bootstrap_interval(found[0], resamples, found[1])
        return point, low, high
    low, high = np.percentile(rescore_resamples(metric, hypotheses, references, resamples), [2.5, 97.5])
    return point, float(low), float(high)


def paired_corpus_interval(
    metric, first: list[str], second: list[str], references: list[str], resamples: np.ndarray
) -> tuple[float, float, float, float]:
    """Both corpus scores (against the same ``references``) and a paired 95% bootstrap interval of the second's
    minus the first's: every resample scores both on the same sentences."""
    points = [float(metric.corpus_score(hyps, [references]).score) for hyps in (first, second)]
    one, two = (
        _statistics(metric, h, references, p, len(resamples)) for h, p in zip((first, second), points, strict=True)
    )
    if one is not None and two is not None:
        (stats_one, score), (stats_two, _) = one, two
        width = stats_one.shape[1]
        _, low, high = bootstrap_interval(
            np.hstack([stats_one, stats_two]), resamples, lambda summed: score(summed[width:]) - score(summed[:width])
        )
    else:
        rescored = [rescore_resamples(metric, hyps, references, resamples) for hyps in (first, second)]
        low, high = (float(x) for x in np.percentile(rescored[1] - rescored[0], [2.5, 97.5]))
    return points[0], points[1], low, high


def score_outputs(
    hypotheses: list[str], references: list[str], cosines: np.ndarray | None, resamples: np.ndarray
) -> dict:
    """Corpus BLEU and chrF, token F1, exact match and cosine, each as (value, low, high)."""
    from sacrebleu.metrics import BLEU, CHRF

    out = {
        "bleu": corpus_interval(BLEU(), hypotheses, references, resamples),
        "chrf": corpus_interval(CHRF(), hypotheses, references, resamples),
        "token_f1": bootstrap_interval(percent_per_sentence(token_f1, hypotheses, references), resamples),
        "exact_match": bootstrap_interval(percent_per_sentence(exact_match, hypotheses, references), resamples),
    }
    if cosines is not None:
        out["cosine"] = bootstrap_interval(np.asarray(cosines, dtype=np.float64), resamples)
    return out
