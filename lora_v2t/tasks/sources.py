"""Where an audit's vectors come from: ``open_source(spec, options)`` opens a ``.npy`` file (here, memory-mapped), a
FAISS index file, a Chroma collection or a PostgreSQL table (the three stores are read by
:mod:`lora_v2t.tasks.stores`)."""

from __future__ import annotations

import hashlib
from dataclasses import fields
from pathlib import Path

import numpy as np

from ..util.errors import V2TError
from .vectorfile import load_vectors_file
from .vectorsource import Batch, SourceOptions, VectorSource

SPEC_FORMS = "FILE.npy, FILE.faiss, chroma:DIR:COLLECTION or postgresql://..."
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class NpySource(VectorSource):
    """The rows of an (N, d) ``.npy`` array, memory-mapped (a file larger than memory is read row by row); ids are
    the row numbers, and there are no texts."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.array = load_vectors_file(self.path, mmap=True)
        if self.array.ndim != 2:
            raise V2TError(f"{self.path} holds an array of shape {tuple(self.array.shape)}: give an (N, d) array, "
                           "one vector per row")
        if len(self.array) == 0:
            raise V2TError(f"{self.path} holds no vectors (shape {tuple(self.array.shape)}): give an (N, d) array "
                           "with N >= 1")
        self.dim = int(self.array.shape[1])

    def describe(self) -> str:
        return f"{self.path.resolve()} ({len(self)} x {self.dim} {self.array.dtype} vectors)"

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def read(self, indices: np.ndarray) -> Batch:
        indices = np.asarray(indices, dtype=np.int64)
        vectors = np.asarray(self.array[indices], dtype=np.float32)
        return Batch(ids=[str(int(i)) for i in indices], vectors=vectors, texts=None)

    def fingerprint(self, rows: int = 1024) -> str:
        """A sha256 of the shape, the dtype and ``rows`` evenly spread rows (first and last included): any file
        costs at most ``rows`` rows of reads."""
        digest = hashlib.sha256(f"{self.array.shape} {self.array.dtype}".encode())
        picked = np.unique(np.linspace(0, len(self) - 1, num=min(rows, len(self))).astype(np.int64))
        digest.update(np.ascontiguousarray(self.array[picked]).tobytes())
        return digest.hexdigest()[:16]


def open_source(spec: str, options: SourceOptions) -> VectorSource:
    """The source a command line's SOURCE names: ``FILE.npy``, ``FILE.faiss``, ``chroma:DIR:COLLECTION`` or a
    ``postgresql://`` URI; ``options`` (table, columns, query, dsn) apply to PostgreSQL only."""
    spec = str(spec)
    if spec.startswith(POSTGRES_SCHEMES):
        from . import stores

        return stores.open_postgres(spec, options)
    given = [f"--{f.name.replace('_', '-')}" for f in fields(options) if getattr(options, f.name) is not None]
    if given:
        raise V2TError(f"{', '.join(given)} name(s) what to read from a PostgreSQL table: they do not apply to "
                       f"{spec}; drop them, or give a postgresql:// SOURCE")
    if spec.startswith("chroma:"):
        folder, _, collection = spec.removeprefix("chroma:").rpartition(":")
        if not folder or not collection:
            raise V2TError(f"SOURCE {spec} must be chroma:DIR:COLLECTION (a Chroma persistent client's folder and "
                           "the name of a collection in it)")
        from . import stores

        return stores.open_chroma(folder, collection, options)
    suffix = Path(spec).suffix.lower()
    if suffix == ".npy":
        return NpySource(spec)
    if suffix == ".faiss":
        from . import stores

        return stores.open_faiss(spec, options)
    raise V2TError(f"SOURCE {spec} is not one of the sources an audit reads: give {SPEC_FORMS}")
