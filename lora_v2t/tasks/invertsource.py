"""What ``invert`` reads: the vectors of a ``.npy`` file (memory-mapped, so files larger than memory do), or the
sentences of a text file, encoded batch by batch with the adapter's encoder."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..tasks.vectorfile import load_vectors_file
from ..util.errors import V2TError
from ..util.textfile import read_rows

if TYPE_CHECKING:
    from ..model.vector2text import Vector2Text

logger = logging.getLogger(__name__)

LOUD_HASH = 2**30  # a source this large is said to be hashed: it takes seconds
SOURCE_FIX = "give a .npy file of vectors or a text file of sentences"


class Source:
    """The rows to invert: vectors (memory-mapped) or texts (encoded batch by batch)."""

    def __init__(self, path: str | Path, dim: int, on_nan: str):
        self.path, self.dim = Path(path), dim
        self.vectors: np.ndarray | None = None
        self.texts: list[str] | None = None
        if self.path.suffix == ".npy":
            self.vectors = load_vectors_file(self.path, mmap=True)
            shape = tuple(self.vectors.shape)
            if self.vectors.ndim != 2:
                raise V2TError(
                    f"{self.path} holds an array of shape {shape}: it must be 2-D (rows, {dim}), one "
                    f"vector per row (one vector: save vector.reshape(1, {dim}))"
                )
            if shape[1] != dim:
                raise V2TError(
                    f"{self.path} holds an array of shape {shape}, but the adapter inverts ({dim},) "
                    f"vectors: give an (N, {dim}) array"
                )
            if shape[0] == 0:
                raise V2TError(f"{self.path} holds no vectors (shape {shape}): give at least one row")
            if on_nan == "refuse":
                self.refuse_non_finite()
        else:
            self.texts = read_texts(self.path)

    def __len__(self) -> int:
        if self.vectors is not None:
            return len(self.vectors)
        assert self.texts is not None  # a Source holds vectors or texts
        return len(self.texts)

    def fingerprint(self, chunk: int = 1 << 20) -> str:
        """The sha256 of the source file's bytes, read whole (in chunks): any change of its content changes it."""
        size = self.path.stat().st_size
        if size >= LOUD_HASH:
            logger.info("hashing all %.1f GB of %s (to tell whether it changes between runs)", size / 1e9, self.path)
        digest = hashlib.sha256()
        with open(self.path, "rb") as handle:
            for block in iter(lambda: handle.read(chunk), b""):
                digest.update(block)
        return digest.hexdigest()

    def legacy_fingerprint(self, blocks: int = 64, block: int = 65536) -> str:
        """What OUT.meta.json's ``source_sha256`` recorded before lora_v2t hashed whole files: a sha256 of the
        texts, or of a vector file's size and ``blocks`` evenly spread blocks (outputs begun then are checked
        with it)."""
        digest = hashlib.sha256()
        if self.texts is not None:
            digest.update("\n".join(self.texts).encode("utf-8"))
            return digest.hexdigest()[:16]
        size = self.path.stat().st_size
        digest.update(str(size).encode())
        with open(self.path, "rb") as handle:
            for offset in sorted({int(i * max(size - block, 0) / max(blocks - 1, 1)) for i in range(blocks)}):
                handle.seek(offset)
                digest.update(handle.read(block))
        return digest.hexdigest()[:16]

    def refuse_non_finite(self, chunk: int = 65536) -> None:
        """Name the first rows holding NaN or inf (read in chunks: the file may not fit in memory)."""
        vectors = self.vectors if self.vectors is not None else np.zeros((0, self.dim), np.float32)
        for start in range(0, len(vectors), chunk):
            bad = ~np.isfinite(np.asarray(vectors[start : start + chunk])).all(axis=1)
            if bad.any():
                rows = (np.flatnonzero(bad)[:5] + start).tolist()
                raise V2TError(
                    f"{self.path}: row(s) {rows} hold NaN or inf: fix them, or pass --on-nan skip to "
                    "skip such rows (they are counted)"
                )

    def batch(self, v2t: Vector2Text, start: int, stop: int) -> np.ndarray:
        """Vectors of rows [start, stop), float32 (N, d); texts are encoded with the adapter's encoder."""
        if self.vectors is not None:
            return np.asarray(self.vectors[start:stop], dtype=np.float32)
        assert self.texts is not None  # a Source holds vectors or texts
        return np.asarray(v2t.encode(self.texts[start:stop]), dtype=np.float32)


def read_texts(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, one sentence each; row i is line i + 1, so blank lines are refused (see
    :func:`lora_v2t.util.textfile.read_rows`)."""
    return read_rows(path, "source", fix=SOURCE_FIX)
