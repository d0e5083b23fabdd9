"""Where an audit's vectors come from: ``open_source(spec, options)`` opens a ``.npy`` file (here, memory-mapped), a
FAISS index file, a Chroma collection or a PostgreSQL table (the three stores are read by
:mod:`lora_v2t.tasks.stores`, which imports their libraries only when one is opened)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np

from ..util.errors import V2TError
from . import stores
from .vectorfile import load_vectors_file
from .vectorsource import Batch, SourceOptions, VectorSource, check_indices

SPEC_FORMS = "FILE.npy, FILE.faiss, chroma:DIR:COLLECTION or postgresql://..."
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class NpySource(VectorSource):
    """The rows of an (N, d) ``.npy`` array, memory-mapped (a file larger than memory is read row by row); ids are
    the row numbers, and there are no texts."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.array = load_vectors_file(self.path, mmap=True)
        if self.array.ndim != 2:
            raise V2TError(
                f"{self.path} holds an array of shape {tuple(self.array.shape)}: give an (N, d) array, "
                "one vector per row"
            )
        if len(self.array) == 0:
            raise V2TError(
                f"{self.path} holds no vectors (shape {tuple(self.array.shape)}): give an (N, d) array with N >= 1"
            )
        self.dim = int(self.array.shape[1])

    def describe(self) -> str:
        return f"{self.path.resolve()} ({len(self)} x {self.dim} {self.array.dtype} vectors)"

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def read(self, indices: np.ndarray) -> Batch:
        indices = check_indices(indices, len(self))
        vectors = np.asarray(self.array[indices], dtype=np.float32)
        return Batch(ids=[str(int(i)) for i in indices], vectors=vectors, texts=None)

    def fingerprint(self) -> str:
        """The sha256 of the whole file (as ``invert`` and the stores' readers hash theirs): any change shows."""
        return stores.file_digest(self.path)


def open_source(spec: str, options: SourceOptions) -> VectorSource:
    """The source a command line's SOURCE names: ``FILE.npy``, ``FILE.faiss``, ``chroma:DIR:COLLECTION`` or a
    ``postgresql://`` URI; ``options`` (table, columns, query, dsn) apply to PostgreSQL only."""
    spec = str(spec)
    if spec.startswith(POSTGRES_SCHEMES):  # the bare scheme: the connection from --dsn or the PG* variables
        return stores.open_postgres(None if spec in POSTGRES_SCHEMES else spec, options)
    given = [f"--{f.name.replace('_', '-')}" for f in fields(options) if getattr(options, f.name) is not None]
    if given:
        raise V2TError(
            f"{', '.join(given)} name(s) what to read from a PostgreSQL table: they do not apply to "
            f"{spec}; drop them, or give a postgresql:// SOURCE"
        )
    if spec.startswith("chroma:"):
        folder, _, collection = spec.removeprefix("chroma:").rpartition(":")
        if not folder or not collection:
            raise V2TError(
                f"SOURCE {spec} must be chroma:DIR:COLLECTION (a Chroma persistent client's folder and "
                "the name of a collection in it)"
            )
        return stores.open_chroma(Path(folder), collection, options)
    suffix = Path(spec).suffix.lower()
    if suffix == ".npy":
        return NpySource(spec)
    if suffix == ".faiss":
        return stores.open_faiss(Path(spec), options)
    raise V2TError(f"SOURCE {spec} is not one of the sources an audit reads: give {SPEC_FORMS}")
