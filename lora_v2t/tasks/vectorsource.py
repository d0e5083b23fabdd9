"""What every store of sentence vectors looks like to an audit: rows read by index, each with an id, its vector
and, where the store keeps it, the original text.

The readers (``.npy`` files, FAISS indexes, Chroma collections, PostgreSQL tables with pgvector) subclass
``VectorSource``; the options a user names on the command line for them travel whole in ``SourceOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SourceOptions:
    """How to find the vectors inside a store (the command line's --table, --vector-column ... options)."""

    table: str | None = None  # PostgreSQL: the table holding the vectors
    vector_column: str | None = None  # PostgreSQL: the pgvector (or real[]) column
    text_column: str | None = None  # PostgreSQL: the column of original texts, if any
    id_column: str | None = None  # PostgreSQL: the column of row ids; also fixes the row order
    query: str | None = None  # PostgreSQL: a SELECT instead of table/columns (its columns: id, vector[, text])
    dsn: str | None = None  # PostgreSQL: a connection string or URI; None = the PG* environment variables


@dataclass
class Batch:
    """Rows read from a source, in the order asked for."""

    ids: list[str]
    vectors: np.ndarray  # (n, dim) float32
    texts: list[str | None] | None = None  # the stored originals, when the store keeps them (None: not for this row)


class VectorSource:
    """A store of N vectors of one dimension, read by row number (0 .. N-1, in an order that never changes while
    the content does not)."""

    dim: int

    def describe(self) -> str:
        """What this source is, in a few words for a report (e.g. "FAISS IndexFlatIP, 1000 vectors of dim 512")."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, indices: np.ndarray) -> Batch:
        """The rows at these row numbers, in that order."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A short string that changes when the stored content does (a restarted audit checks it)."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of files or connections (a no-op where there are none)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_indices(indices, total: int) -> np.ndarray:
    """Row numbers as an int64 array, each in [0, total)."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= total):
        raise IndexError(f"row numbers must lie in [0, {total}), got {indices.min()}..{indices.max()}")
    return indices
