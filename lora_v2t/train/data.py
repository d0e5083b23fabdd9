"""Corpora -> (text, vector) pairs: reading and filtering, an embedding cache on disk, length-bucketed batches.

The cache keeps one entry per encoder and exact sentence list: ``<cache_dir>/<encoder>__<corpus>-<key>/`` (the
key is the start of a hash over the encoder spec and the sentences, so two runs that sample or split a corpus
differently never share an entry) holding ``vectors.npy`` (a memory-mapped float32 array) and ``meta.json``. An
entry is filled into ``vectors.partial.npy`` under a lock (``.lock``: a second process wanting the same entry
waits, then reuses it) and renamed to ``vectors.npy`` once complete; a complete ``vectors.npy`` is never written
again, so a process that has it mapped keeps valid vectors. An interrupted fill resumes where it stopped.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..util.errors import V2TError
from ..util.files import NO_SPACE, atomic_write, check_free_space, disk_full, no_space_is_one_line
from ..util.locks import FileLock
from ..util.textfile import CONTROL_CHARS, read_lines

logger = logging.getLogger(__name__)

CACHE_ADVICE = "free some space there, or set data.cache_dir to a folder on another disk"


@dataclass
class CorpusStats:
    """What reading a corpus kept and skipped."""

    path: str
    kept: int = 0
    empty: int = 0
    too_short: int = 0
    too_long: int = 0
    undecodable: int = 0
    control_chars: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        skipped = {
            k: getattr(self, k)
            for k in ("empty", "too_short", "too_long", "undecodable", "control_chars")
            if getattr(self, k)
        }
        parts = ", ".join(f"{v} {k.replace('_', ' ').replace('chars', 'characters')}" for k, v in skipped.items())
        return f"{self.path}: {self.kept} sentences" + (f" (skipped {parts})" if parts else "")


def read_sentences(path: str | Path, min_chars: int = 2, max_chars: int = 400) -> tuple[list[str], CorpusStats]:
    """Read a UTF-8 corpus, one sentence per line (see :mod:`lora_v2t.util.textfile`); empty, too short/long,
    undecodable lines and lines with control characters are skipped and counted, never fatal. A file in another
    encoding, a binary file or a TSV is refused; a UTF-8 byte-order mark is dropped."""
    path = Path(path)
    stats = CorpusStats(str(path))
    sentences = []
    for line in read_lines(path, "corpus"):
        text = None if line is None else line.strip()
        if text is None:
            stats.undecodable += 1
        elif not text:
            stats.empty += 1
        elif CONTROL_CHARS.search(text):
            stats.control_chars += 1
        elif len(text) < min_chars:
            stats.too_short += 1
        elif len(text) > max_chars:
            stats.too_long += 1
        else:
            sentences.append(text)
    stats.kept = len(sentences)
    if not sentences:
        if stats.empty and not (stats.too_short or stats.too_long or stats.undecodable or stats.control_chars):
            raise V2TError(f"corpus {path} is empty: it has no non-blank line")
        raise V2TError(
            f"no line of {path} passes the filters ({stats.summary()}): check data.min_chars / "
            "data.max_chars and the file's encoding (UTF-8)"
        )
    return sentences, stats


def sample_and_split(
    sentences: list[str], val_size: int, max_sentences: int | None, seed: int, val_sentences: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """A seeded sample of at most ``max_sentences`` training sentences and a validation set.

    Without ``val_sentences``, ``val_size`` sentences are held out of the corpus first.
    """
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    if val_sentences is None:
        if len(order) <= val_size:
            raise V2TError(
                f"the corpus has {len(order)} sentences, not more than data.val_size={val_size}: "
                "lower val_size or give data.val"
            )
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


def embed_corpus(
    sentences: list[str], encoder, cache_dir: str | Path, name: str, chunk: int = 512, show_progress: bool = True
) -> np.ndarray:
    """Vectors of ``sentences`` (N, d), computed once and cached on disk; resumes an interrupted fill.

    Returns a read-only memory map, so a million-sentence cache is not held in memory. The entry is the one of
    this exact sentence list (see the module's docstring); another process filling it is waited for.
    """
    key = corpus_key(encoder.spec, sentences)
    n, dim = len(sentences), encoder.dim
    folder = Path(cache_dir) / f"{_slug(encoder.spec)}__{_slug(name)}-{key[:16]}"
    vec_file, meta_file = folder / "vectors.npy", folder / "meta.json"
    cached = _complete_entry(vec_file, meta_file, key, n, dim)
    if cached is not None:
        logger.info("embedding cache hit: %s (%d vectors)", folder, n)
        return cached
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise V2TError(
            f"cannot create the embedding cache {folder}: {exc.strerror or exc}; set data.cache_dir to "
            "a writable folder"
        ) from exc

    def waiting(pid):
        logger.info(
            "waiting for %s to finish filling the embedding cache %s",
            f"process {pid}" if pid else "another process",
            folder,
        )

    with FileLock(folder / ".lock", wait=True, on_wait=waiting):
        cached = _complete_entry(vec_file, meta_file, key, n, dim)  # filled by the process we waited for
        if cached is None:
            _fill(sentences, encoder, folder, key, chunk, show_progress, name)
            cached = np.load(vec_file, mmap_mode="r")
    return cached


def _complete_entry(vec_file: Path, meta_file: Path, key: str, n: int, dim: int) -> np.ndarray | None:
    """The finished vectors of a cache entry as a read-only memory map, or None when they are not there.

    ``vectors.npy`` only ever appears by a rename of a complete fill, so its presence (with the right key and
    shape) means it is complete."""
    if not vec_file.exists() or _read_meta(meta_file).get("key") != key:
        return None
    try:
        vectors = np.load(vec_file, mmap_mode="r")
    except (OSError, ValueError):
        return None
    return vectors if vectors.shape == (n, dim) and vectors.dtype == np.float32 else None


def _fill(sentences: list[str], encoder, folder: Path, key: str, chunk: int, show_progress: bool, name: str) -> None:
    """Encode into ``vectors.partial.npy`` (continuing an interrupted fill), then rename it ``vectors.npy``.

    Only the holder of the entry's lock calls this, so no other process has the partial file open."""
    n, dim = len(sentences), encoder.dim
    partial, meta_file = folder / "vectors.partial.npy", folder / "meta.json"
    meta = {"key": key, "encoder": encoder.spec, "dim": dim, "count": n, "done": 0}
    saved, vectors = _read_meta(meta_file), None
    if saved.get("key") == key and partial.exists():
        try:
            vectors = np.load(partial, mmap_mode="r+")
        except (OSError, ValueError):
            vectors = None
        if vectors is not None and vectors.shape == (n, dim) and vectors.dtype == np.float32:
            meta["done"] = min(max(int(saved.get("done", 0)), 0), n)
            logger.info("resuming the embedding cache %s at %d/%d", folder, meta["done"], n)
            _reserve(partial)
        else:
            vectors = None
    if vectors is None:
        vectors = _new_partial(partial, n, dim)
        _write_meta(meta_file, meta)
    from tqdm.auto import tqdm

    logger.info("embedding %d sentences of %s into the cache %s", n - meta["done"], name, folder)
    bar = tqdm(total=n, initial=meta["done"], desc=f"embedding {name}", unit="sent", disable=not show_progress)
    lines = None if show_progress else ProgressLines(n, meta["done"])  # without the bar, a line now and then
    for start in range(meta["done"], n, chunk):
        batch = sentences[start : start + chunk]
        vectors[start : start + len(batch)] = encoder.encode(batch)
        vectors.flush()
        done = start + len(batch)
        _write_meta(meta_file, meta | {"done": done})
        bar.update(len(batch))
        if lines is not None and lines.due(done):
            logger.info("embedded %d/%d sentences of %s (%d%%)", done, n, name, 100 * done // n)
    bar.close()
    vectors.flush()
    del vectors
    os.replace(partial, folder / "vectors.npy")
    _write_meta(meta_file, meta | {"done": n})


class ProgressLines:
    """When to log progress without a bar: at every tenth of the way, and at least every ``every_s`` seconds
    (a long fill must not look hung)."""

    def __init__(self, total: int, done: int = 0, every_s: float = 60.0):
        self.total, self.every_s = max(total, 1), every_s
        self.next_tenth, self.last = done * 10 // self.total + 1, time.monotonic()

    def due(self, done: int) -> bool:
        now = time.monotonic()
        if done * 10 < self.next_tenth * self.total and now - self.last < self.every_s:
            return False
        self.next_tenth, self.last = done * 10 // self.total + 1, now
        return True


def _new_partial(partial: Path, n: int, dim: int) -> np.memmap:
    """A new ``vectors.partial.npy`` for (n, dim) float32 vectors, its disk space taken (see :func:`_reserve`);
    :class:`~lora_v2t.util.files.DiskFull`, with no file left, where the disk has too little."""
    needed = n * dim * 4 + 128  # the vectors and the .npy header
    check_free_space(partial.parent, needed, CACHE_ADVICE)
    try:
        with no_space_is_one_line(partial.parent, needed, CACHE_ADVICE):
            vectors = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, dim))
            _reserve(partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return vectors


def _reserve(path: Path) -> None:
    """Take the disk space of the whole file now. numpy makes a memory-mapped file sparse, so its blocks are
    only taken as the map writes them, and a write through a memory map that finds the disk full is a Bus error
    (SIGBUS) that kills the process without a word; taken first, a full disk is a DiskFull line here instead."""
    stat = path.stat()
    check_free_space(path.parent, max(stat.st_size - stat.st_blocks * 512, 0), CACHE_ADVICE)
    if not hasattr(os, "posix_fallocate"):  # not on every system: the check above has to do
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, stat.st_size)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise disk_full(path.parent, stat.st_size, CACHE_ADVICE) from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # a file system that cannot reserve
            raise
    finally:
        os.close(fd)


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_meta(path: Path, meta: dict) -> None:
    atomic_write(path, json.dumps(meta), advice=CACHE_ADVICE)


class TokenizedCorpus:
    """Every sentence's token ids, cut to ``max_tokens - 1`` as batches cut them (EOS goes after), in one flat
    array: a training loop builds each batch from these instead of tokenising its sentences again."""

    def __init__(self, rows: list[list[int]], max_tokens: int, eos_id: int):
        cut = [row[: max_tokens - 1] for row in rows]
        self.offsets = np.zeros(len(cut) + 1, dtype=np.int64)
        self.offsets[1:] = np.cumsum([len(row) for row in cut])
        self.ids = np.fromiter((t for row in cut for t in row), dtype=np.int64, count=int(self.offsets[-1]))
        self.lengths = (np.diff(self.offsets) + 1).astype(np.int32)  # EOS included
        self.vocab = np.union1d(np.unique(self.ids), [eos_id])  # sorted token ids the targets use

    def rows(self, indices) -> list[list[int]]:
        """The token ids of the sentences at ``indices``."""
        return [self.ids[self.offsets[i] : self.offsets[i + 1]].tolist() for i in indices]


def tokenize_corpus(tokenizer, sentences: list[str], max_tokens: int, chunk: int = 10000) -> TokenizedCorpus:
    """Tokenise a corpus once (in chunks): its sentences' ids, lengths in tokens (EOS included, capped at
    ``max_tokens``) and the sorted token ids the targets use (EOS included): the corpus vocabulary."""
    rows: list[list[int]] = []
    for start in range(0, len(sentences), chunk):
        rows += tokenizer(sentences[start : start + chunk], add_special_tokens=False)["input_ids"]
    return TokenizedCorpus(rows, max_tokens, tokenizer.eos_token_id)


def bucketed_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, bucket_batches: int = 50
) -> list[np.ndarray]:
    """Batches of indices with similar lengths (little padding), in a seeded random order.

    The order depends only on (seed, epoch), so a resumed run sees exactly the batches it would have seen.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
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
        self._epoch: int | None = None
        self._batches: list[np.ndarray] = []

    def batches(self, epoch: int) -> list[np.ndarray]:
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, bucketed_batches(self.lengths, self.batch_size, self.seed, epoch)
        return self._batches

    def take(self, state, world: int) -> list[np.ndarray]:
        """The next ``world`` batches (one per process), moving ``state.epoch`` / ``state.batch_in_epoch`` on;
        an epoch's last batches that are too few for every process are skipped."""
        if state.batch_in_epoch + world > len(self.batches(state.epoch)):
            if world > len(self.batches(state.epoch)):
                raise V2TError(
                    f"{len(self.lengths)} training sentences make {len(self.batches(state.epoch))} "
                    f"batches of {self.batch_size}, fewer than the {world} processes: use more "
                    "sentences or a smaller training.batch_size"
                )
            state.epoch += 1
            state.batch_in_epoch = 0
        taken = self.batches(state.epoch)[state.batch_in_epoch : state.batch_in_epoch + world]
        state.batch_in_epoch += world
        return taken
