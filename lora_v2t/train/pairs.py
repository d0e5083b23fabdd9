"""What a run trains on: sentences and their vectors, and for a corrector also the hypotheses it corrects.

A hypothesizer learns ``vector -> sentence`` from ``data.train``. A corrector learns ``(v, e, v - e, hypothesis)
-> sentence`` (see :mod:`lora_v2t.model.correct`), from files that must line up:

1. ``lora-v2t heldout RECIPE --out held.txt``: sentences of the corpus that the hypothesizer's recipe never trained
   or validated on (a corrector trained on hypotheses of seen sentences learns to expect better ones);
2. ``lora-v2t invert --adapter HYPOTHESIZER --texts held.txt --out hyps.jsonl``: its hypotheses (resumable);
3. a corrector recipe with ``data.train: held.txt``, ``data.hypotheses: hyps.jsonl`` and
   ``training.role: corrector``.

More hypotheses of the same sentences (``invert --do-sample --seed N``, or a corrector's own outputs) go in
``data.more_hypotheses``: each file gives every sentence one more pair (:func:`pair_up`).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from ..bundle.format import BundleConfig
from ..bundle.layout import OUTPUT_VOCAB_FILE
from ..config import DataConfig, RunConfig
from ..model.correct import condition
from ..model.encoders import load_encoder
from ..train.data import embed_corpus, read_sentences, sample_and_split
from ..train.rundir import cache_dir_of
from ..util.errors import V2TError
from ..util.textfile import read_lines, read_rows

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Training and validation sentences with their vectors (a corrector's: :func:`condition` rows) and, for a
    corrector, the hypothesis each one corrects."""

    train_texts: list[str]
    val_texts: list[str]
    train_vectors: np.ndarray
    val_vectors: np.ndarray
    train_contexts: list[str] | None = None
    val_contexts: list[str] | None = None
    extra_vocab: np.ndarray | None = None  # token ids the loss ranks besides the corpus's (a corrector: its
    # hypothesizer's output vocabulary, so that it may write every word its hypothesizer may)


def prepare_data(cfg: RunConfig, encoder=None, show_progress: bool = True) -> TrainingData:
    """Read, filter, sample and split the corpus, and embed it through the cache (a corrector's: its pairs)
    with ``encoder`` (default: the recipe's)."""
    train = cfg.data.check_train()
    if cfg.training.role == "corrector":
        return corrector_data(cfg, encoder or load_encoder(cfg.encoder.spec), show_progress)
    dc = cfg.data
    sentences, stats = read_sentences(train, dc.min_chars, dc.max_chars)  # read before the encoder loads
    logger.info("corpus %s", stats.summary())
    val_given = None
    if dc.val:
        val_given, val_stats = read_sentences(dc.val, dc.min_chars, dc.max_chars)
        logger.info("validation %s", val_stats.summary())
    train_texts, val_texts = sample_and_split(sentences, dc.val_size, dc.max_sentences, dc.seed, val_given)
    del sentences
    encoder = encoder or load_encoder(cfg.encoder.spec)
    cache_dir = cache_dir_of(cfg)
    stem = Path(train).stem
    train_vectors = embed_corpus(train_texts, encoder, cache_dir, f"{stem}-train", show_progress=show_progress)
    val_vectors = np.asarray(embed_corpus(val_texts, encoder, cache_dir, f"{stem}-val", show_progress=False))
    return TrainingData(train_texts, val_texts, train_vectors, val_vectors)


def corrector_data(cfg: RunConfig, encoder, show_progress: bool = True) -> TrainingData:
    """The (sentence, hypothesis) pairs of ``data.train`` and its hypotheses files, split by sentence and
    embedded (see :func:`pair_up` for which pairs)."""
    dc = cfg.data
    train = dc.check_train()
    if not dc.hypotheses:
        raise V2TError(
            "training.role=corrector needs data.hypotheses: the `lora-v2t invert --texts DATA.TRAIN` "
            "JSONL of its hypothesizer (see lora_v2t.train.pairs)"
        )
    targets = read_rows(train, "corpus (data.train)")
    columns, hypothesizers = [], []
    for file in [dc.hypotheses, *(dc.more_hypotheses or [])]:
        hypothesizers.append(check_hypotheses_source(Path(file), Path(train), len(targets)))
        columns.append(read_hypotheses(Path(file), len(targets)))
    for folder in dict.fromkeys(h for h in hypothesizers if h is not None):
        check_unseen(targets, folder)
    val, training = pair_up(targets, columns, dc)
    cache_dir, stem = cache_dir_of(cfg), Path(train).stem
    parts = {}
    for split, chunk in (("val", val), ("train", training)):
        texts, contexts = [t for t, _ in chunk], [h for _, h in chunk]
        v = embed_corpus(texts, encoder, cache_dir, f"{stem}-{split}", show_progress=show_progress)
        e = hypothesis_vectors(contexts, encoder, cache_dir, f"{stem}-{split}-hypotheses", show_progress)
        parts[split] = (texts, condition(v, e), contexts)
    (train_texts, train_vectors, train_contexts), (val_texts, val_vectors, val_contexts) = parts["train"], parts["val"]
    extra = None
    hypothesizer = hypothesizers[0]
    if hypothesizer is not None and (hypothesizer / OUTPUT_VOCAB_FILE).is_file():
        extra = load_file(str(hypothesizer / OUTPUT_VOCAB_FILE))["token_ids"].numpy()
    return TrainingData(train_texts, val_texts, train_vectors, val_vectors, train_contexts, val_contexts, extra)


Pair = tuple[str, str]  # (sentence, hypothesis); an empty hypothesis: none (the corrector reads v alone)


def pair_up(targets: list[str], columns: list[list[str | None]], dc: DataConfig) -> tuple[list[Pair], list[Pair]]:
    """Validation and training pairs, split by sentence (no sentence is in both), seeded by ``data.seed``.

    Each hypotheses file (a column) gives a sentence one pair; a hypothesis it already had, an empty one, and
    (unless ``data.keep_matching``) one that is the sentence itself are skipped. A validation sentence keeps the
    pair of the first column that has one. ``data.no_hypothesis`` of the training sentences also get a pair
    without a hypothesis; ``data.max_sentences`` limits the training sentences.
    """
    by_sentence, matching = [], 0
    for row, target in enumerate(targets):
        texts = [c[row] for c in columns]
        matching += texts.count(target)
        kept = [h for h in dict.fromkeys(t for t in texts if t and t.strip()) if dc.keep_matching or h != target]
        if kept:
            by_sentence.append((target, kept))
    logger.info(
        "corrector pairs: %d of %d sentences have a hypothesis to correct (%d hypotheses equal to their sentence %s)",
        len(by_sentence),
        len(targets),
        matching,
        "kept" if dc.keep_matching else "dropped",
    )
    if len(by_sentence) <= dc.val_size:
        raise V2TError(
            f"{len(by_sentence)} sentences with a hypothesis, not more than data.val_size={dc.val_size}: invert "
            f"more of {dc.train} (`lora-v2t invert` resumes) or lower data.val_size"
        )
    rng = random.Random(dc.seed)
    rng.shuffle(by_sentence)
    val = [(t, kept[0]) for t, kept in by_sentence[: dc.val_size]]
    chosen = by_sentence[dc.val_size :][: dc.max_sentences]
    training = [(t, h) for t, kept in chosen for h in kept]
    blank = round(dc.no_hypothesis * len(chosen))
    training += [(t, "") for t, _ in rng.sample(chosen, blank)]
    rng.shuffle(training)
    return val, training


def hypothesis_vectors(contexts: list[str], encoder, cache_dir: Path, name: str, show_progress: bool) -> np.ndarray:
    """The vectors e of the hypotheses (through the cache); zeros where there is none."""
    present = [i for i, h in enumerate(contexts) if h]
    vectors = np.zeros((len(contexts), encoder.dim), dtype=np.float32)
    if present:
        texts = [contexts[i] for i in present]
        vectors[present] = embed_corpus(texts, encoder, cache_dir, name, show_progress=show_progress)
    return vectors


def check_hypotheses_source(path: Path, train: Path, rows: int) -> Path | None:
    """Check with ``path``'s ``.meta.json`` (written by ``invert``) that the hypotheses were written for the
    sentences of ``train``; return the hypothesizer's bundle folder when it is on this machine."""
    meta_file = path.with_name(path.name + ".meta.json")
    if not meta_file.is_file():
        raise V2TError(
            f"{path} has no {meta_file.name}: write the hypotheses with `lora-v2t invert --texts {train} --out {path}`"
        )
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if Path(meta.get("source", "")).resolve() != train.resolve() or meta.get("rows") != rows:
        raise V2TError(
            f"{path} holds hypotheses for {meta.get('source')} ({meta.get('rows')} rows), not for "
            f"data.train {train} ({rows} rows): invert data.train into a new file"
        )
    folder = Path(str(meta.get("adapter", "")))
    return folder if (folder / "v2t_config.json").is_file() else None


def check_unseen(targets: list[str], hypothesizer: Path) -> None:
    """Raise if the hypothesizer trained or validated on any of ``targets`` (when its bundle records its sample):
    a corrector trained on hypotheses of seen sentences learns to expect better hypotheses than it will get."""
    sample = BundleConfig.from_json(hypothesizer / "v2t_config.json").training.get("sample")
    if not sample or not Path(sample["train"]).is_file():
        logger.warning(
            "hypothesizer %s does not record the sentences it trained on (or its corpus is not here): "
            "cannot check that the corrector's sentences are unseen",
            hypothesizer,
        )
        return
    data = DataConfig(**sample)
    seen = seen_sentences(data, read_sentences(sample["train"], data.min_chars, data.max_chars)[0])
    leaked = [t for t in targets if t in seen]
    if leaked:
        raise V2TError(
            f"{len(leaked)} of the corrector's sentences were in hypothesizer {hypothesizer}'s training "
            f"or validation set (e.g. {leaked[0]!r}): write them with `lora-v2t heldout` and the "
            "hypothesizer's recipe"
        )


def read_hypotheses(path: Path, rows: int) -> list[str | None]:
    """The texts of an ``invert`` JSONL by row (None where a row is missing: an unfinished inversion)."""
    out: list[str | None] = [None] * rows
    lines = read_lines(
        path, "hypotheses file", columns=True, fix=f"write it with `lora-v2t invert --texts ... --out {path}`"
    )
    for number, line in enumerate(lines, 1):
        if line is None:
            raise V2TError(
                f"{path}:{number} is not UTF-8 text: write the hypotheses with `lora-v2t invert --out FILE.jsonl`"
            )
        try:
            row = json.loads(line)
            index, text = int(row["index"]), str(row["text"])
        except (ValueError, KeyError, TypeError) as exc:
            raise V2TError(
                f"{path}:{number} is not an `invert` JSONL row ({exc}): write the hypotheses with "
                "`lora-v2t invert --out FILE.jsonl`"
            ) from exc
        if not 0 <= index < rows:
            raise V2TError(
                f"{path}:{number} names row {index}, but data.train has {rows} lines: the "
                "hypotheses were written for another file"
            )
        out[index] = text
    return out


def unseen_sentences(cfg: RunConfig, count: int | None = None) -> list[str]:
    """Sentences of ``data.train`` that a hypothesizer trained with ``cfg`` never saw: neither in its training
    sample nor in its validation set (nor equal to a sentence that is); a seeded sample of ``count`` of them."""
    dc = cfg.data
    sentences, _ = read_sentences(dc.check_train(), dc.min_chars, dc.max_chars)
    seen = seen_sentences(cfg.data, sentences)
    unseen = list(dict.fromkeys(s for s in sentences if s not in seen))
    random.Random(dc.seed + 1).shuffle(unseen)
    return unseen[:count] if count is not None else unseen


def seen_sentences(data: DataConfig, sentences: list[str]) -> set[str]:
    """The training sample and validation set a run with ``data`` draws from the corpus ``sentences``."""
    val_given = read_sentences(data.val, data.min_chars, data.max_chars)[0] if data.val else None
    train, val = sample_and_split(sentences, data.val_size, data.max_sentences, data.seed, val_given)
    return set(train) | set(val)
