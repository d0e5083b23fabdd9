"""Corpora -> (text, vector) pairs: reading and filtering, an embedding cache on disk, length-bucketed batches.

The cache lives in ``<cache_dir>/<encoder>__<corpus>/`` as ``vectors.npy`` (a memory-mapped float32 array)
and ``meta.json``. ``meta.json`` records a key over the encoder spec and the exact sentence list; a different
key rebuilds the cache, the same key reuses it, and an interrupted fill resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import V2TError

logger = logging.getLogger(__name__)


@dataclass
class CorpusStats:
    """What reading a corpus kept and skipped."""

    path: str
    kept: int = 0
    empty: int = 0
    too_short: int = 0
    too_long: int = 0
    undecodable: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        skipped = {k: getattr(self, k) for k in ("empty", "too_short", "too_long", "undecodable") if getattr(self, k)}
        parts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items())
        return f"{self.path}: {self.kept} sentences" + (f" (skipped {parts})" if parts else "")


def read_sentences(path: str | Path, min_chars: int = 2, max_chars: int = 400) -> tuple[list[str], CorpusStats]:
    """Read a UTF-8 corpus, one sentence per line; empty, too short/long and undecodable lines are skipped
    and counted, never fatal."""
    path = Path(path)
    if not path.is_file():
        raise V2TError(f"corpus {path} does not exist: give a UTF-8 text file with one sentence per line")
    stats = CorpusStats(str(path))
    sentences = []
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                stats.undecodable += 1
                continue
            text = line.strip()
            if not text:
                stats.empty += 1
            elif len(text) < min_chars:
                stats.too_short += 1
            elif len(text) > max_chars:
                stats.too_long += 1
            else:
                sentences.append(text)
    stats.kept = len(sentences)
    if not sentences:
        if stats.empty and not (stats.too_short or stats.too_long or stats.undecodable):
            raise V2TError(f"corpus {path} is empty: it has no non-blank line")
        raise V2TError(f"no line of {path} passes the filters ({stats.summary()}): check data.min_chars / "
                       "data.max_chars and the file's encoding (UTF-8)")
    return sentences, stats


def sample_and_split(sentences: list[str], val_size: int, max_sentences: int | None, seed: int,
                     val_sentences: list[str] | None = None) -> tuple[list[str], list[str]]:
    """A seeded sample of at most ``max_sentences`` training sentences and a validation set.

    Without ``val_sentences``, ``val_size`` sentences are held out of the corpus first.
    """
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    if val_sentences is None:
        if len(order) <= val_size:
            raise V2TError(f"the corpus has {len(order)} sentences, not more than data.val_size={val_size}: "
                           "lower val_size or give data.val")
        val = [sentences[i] for i in order[:val_size]]
        order = order[val_size:]
    else:
        val = val_sentences[:val_size]
    if max_sentences is not None:
        order = order[:max_sentences]
    return [sentences[i] for i in order], val


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "x"


def corpus_key(encoder_spec: str, sentences: list[str]) -> str:
    digest = hashlib.sha256(encoder_spec.encode())
    for s in sentences:
        digest.update(s.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def embed_corpus(sentences: list[str], encoder, cache_dir: str | Path, name: str, chunk: int = 512,
                 show_progress: bool = True) -> np.ndarray:
    """Vectors of ``sentences`` (N, d), computed once and cached on disk; resumes an interrupted fill.

    Returns a read-only memory map, so a million-sentence cache is not held in memory.
    """
    folder = Path(cache_dir) / f"{_slug(encoder.spec)}__{_slug(name)}"
    folder.mkdir(parents=True, exist_ok=True)
    meta_file, vec_file = folder / "meta.json", folder / "vectors.npy"
    key = corpus_key(encoder.spec, sentences)
    n, dim = len(sentences), encoder.dim
    meta = _read_meta(meta_file)
    if meta.get("key") == key and meta.get("done") == n and vec_file.exists():
        logger.info("embedding cache hit: %s (%d vectors)", folder, n)
        return np.load(vec_file, mmap_mode="r")
    if meta.get("key") == key and vec_file.exists() and 0 <= meta.get("done", 0) < n:
        vectors = np.load(vec_file, mmap_mode="r+")
        done = int(meta["done"])
        logger.info("resuming the embedding cache %s at %d/%d", folder, done, n)
    else:
        if meta:
            logger.info("embedding cache %s is for another corpus or encoder: rebuilding it", folder)
        vectors = np.lib.format.open_memmap(vec_file, mode="w+", dtype=np.float32, shape=(n, dim))
        done = 0
        _write_meta(meta_file, {"key": key, "encoder": encoder.spec, "dim": dim, "count": n, "done": 0})
    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=done, desc=f"embedding {name}", unit="sent", disable=not show_progress)
    for start in range(done, n, chunk):
        batch = sentences[start:start + chunk]
        vectors[start:start + len(batch)] = encoder.encode(batch)
        vectors.flush()
        _write_meta(meta_file, {"key": key, "encoder": encoder.spec, "dim": dim, "count": n,
                                "done": start + len(batch)})
        bar.update(len(batch))
    bar.close()
    del vectors
    return np.load(vec_file, mmap_mode="r")


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_meta(path: Path, meta: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, path)


def tokenize_corpus(tokenizer, sentences: list[str], max_tokens: int, chunk: int = 10000):
    """Target length of each sentence in tokens (EOS included, capped at ``max_tokens``), and the sorted
    token ids the targets use (EOS included): the corpus vocabulary."""
    lengths = np.empty(len(sentences), dtype=np.int32)
    used: set[int] = {tokenizer.eos_token_id}
    for start in range(0, len(sentences), chunk):
        ids = tokenizer(sentences[start:start + chunk], add_special_tokens=False)["input_ids"]
        lengths[start:start + len(ids)] = [min(len(i) + 1, max_tokens) for i in ids]
        for row in ids:
            used.update(row[: max_tokens - 1])
    return lengths, np.array(sorted(used), dtype=np.int64)


def bucketed_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                     bucket_batches: int = 50) -> list[np.ndarray]:
    """Batches of indices with similar lengths (little padding), in a seeded random order.

    The order depends only on (seed, epoch), so a resumed run sees exactly the batches it would have seen.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class BatchOrder:
    """The run's sequence of length-bucketed batches, epoch after epoch, shared out among processes.

    Every process builds the same order from (seed, epoch); at each turn the processes together take the next
    ``world`` batches and process ``r`` trains on the ``r``-th, so no two processes see the same batch. The
    position is kept in the run's state (``epoch``, ``batch_in_epoch``), so a resumed run continues exactly.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self._epoch, self._batches = None, []

    def batches(self, epoch: int) -> list[np.ndarray]:
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, bucketed_batches(self.lengths, self.batch_size, self.seed, epoch)
        return self._batches

    def take(self, state, world: int) -> list[np.ndarray]:
        """The next ``world`` batches (one per process), moving ``state.epoch`` / ``state.batch_in_epoch`` on;
        an epoch's last batches that are too few for every process are skipped."""
        if state.batch_in_epoch + world > len(self.batches(state.epoch)):
            if world > len(self.batches(state.epoch)):
                raise V2TError(f"{len(self.lengths)} training sentences make {len(self.batches(state.epoch))} "
                               f"batches of {self.batch_size}, fewer than the {world} processes: use more "
                               "sentences or a smaller training.batch_size")
            state.epoch += 1
            state.batch_in_epoch = 0
        taken = self.batches(state.epoch)[state.batch_in_epoch:state.batch_in_epoch + world]
        state.batch_in_epoch += world
        return taken
