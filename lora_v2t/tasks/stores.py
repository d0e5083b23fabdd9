"""Readers of the stores people keep sentence vectors in: a FAISS index file, a Chroma persistent collection and
(in ``pgstore``) a PostgreSQL table with pgvector.

Each ``open_*`` checks what it is given and answers bad input with one ``V2TError`` line; the heavy libraries
(faiss, chromadb, psycopg) are imported only there, so importing lora_v2t stays light. Rows are numbered
0 .. N-1 in an order that stays the same while the stored content does:
- FAISS: the index's own order (row numbers are the ids), an IDMap's order (its ids), an IVF index's ids ascending;
- Chroma: the collection's own order (as ``collection.get`` pages it).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

import numpy as np

from ..util.errors import V2TError, first_line
from .pgstore import open_postgres  # noqa: F401  (the PostgreSQL reader, re-exported beside the others)
from .vectorsource import Batch, SourceOptions, VectorSource, check_indices

PAGE = 1000  # rows a Chroma request carries at most
FINGERPRINT_ROWS = 64  # Chroma rows (evenly spread) whose vectors and documents the fingerprint reads

# FAISS index types that keep the vectors themselves (IVFFlat once given a direct map), and the lossy ones named
_KEEPS_VECTORS = ("IndexFlat", "IndexIVFFlat", "IndexHNSWFlat")
_LOSSY = {
    "IndexPQ": "product-quantisation codes",
    "IndexIVFPQ": "product-quantisation codes",
    "IndexIVFPQR": "product-quantisation codes",
    "IndexPQFastScan": "product-quantisation codes",
    "IndexIVFPQFastScan": "product-quantisation codes",
    "IndexLSH": "sign bits of random projections (LSH)",
    "IndexScalarQuantizer": "scalar-quantised codes",
    "IndexIVFScalarQuantizer": "scalar-quantised codes",
    "IndexResidualQuantizer": "residual-quantisation codes",
    "IndexLocalSearchQuantizer": "additive codes",
    "IndexHNSWPQ": "product-quantisation codes",
    "IndexHNSWSQ": "scalar-quantised codes",
    "IndexPreTransform": "vectors after a transform (PCA, OPQ ...)",
}


def file_digest(path: Path, block: int = 1 << 20) -> str:
    """sha256 of a whole file (the first 16 hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()[:16]


class FaissSource(VectorSource):
    """Vectors reconstructed from a FAISS index that keeps them: ``keys`` are what ``reconstruct_batch`` of
    ``reader`` takes for each row, ``ids`` the row ids the index knows them by."""

    def __init__(self, path: Path, kind: str, reader, keys: np.ndarray, ids: np.ndarray, owner=None):
        self.path, self.kind, self.reader, self.keys, self.ids = path, kind, reader, keys, ids
        self.owner = owner  # an IDMap whose inner index is ``reader``: freeing it would free the reader too
        self.dim = int(reader.d)

    def describe(self) -> str:
        return f"FAISS {self.kind} {self.path}, {len(self)} vectors of dim {self.dim}"

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, indices) -> Batch:
        indices = check_indices(indices, len(self))
        vectors = self.reader.reconstruct_batch(self.keys[indices]) if indices.size else np.zeros((0, self.dim))
        return Batch(ids=[str(i) for i in self.ids[indices]], vectors=np.asarray(vectors, dtype=np.float32))

    def fingerprint(self) -> str:
        return file_digest(self.path)


def open_faiss(path: Path, options: SourceOptions) -> FaissSource:
    """A FAISS index file (``faiss.write_index``) whose type keeps the vectors: Flat, IVFFlat, HNSWFlat, or an
    IDMap/IDMap2 around one of them. Index types that keep only compressed codes are refused, by name."""
    import faiss

    path = Path(path)
    if not path.is_file():
        raise V2TError(
            f"FAISS index {path} {'is not a file' if path.exists() else 'does not exist'}: give a file "
            "written by faiss.write_index"
        )
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise V2TError(
            f"cannot read {path} as a FAISS index ({_faiss_reason(exc)}): give a file written by "
            "faiss.write_index (binary indexes keep bits, not vectors)"
        ) from exc
    outer, owner, ids = type(index).__name__, None, None
    if isinstance(index, faiss.IndexIDMap):
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        owner, index = index, faiss.downcast_index(index.index)
    kind = outer if outer == type(index).__name__ else f"{outer} of {type(index).__name__}"
    _refuse_lossy(path, kind, index, faiss)
    if isinstance(index, faiss.IndexIVFFlat):
        keys = _ivf_keys(index, faiss)
        ids = keys if ids is None else ids
    else:
        keys = np.arange(index.ntotal, dtype=np.int64)  # IDMap: its inner index holds the rows in id_map's order
        ids = keys if ids is None else ids
    if not len(keys):
        raise V2TError(f"FAISS index {path} ({kind}) holds no vectors: give an index with vectors added")
    return FaissSource(path, kind, index, keys, ids, owner)


def _refuse_lossy(path: Path, kind: str, index, faiss) -> None:
    """Refuse, naming the type, an index that does not keep the vectors themselves."""
    name = type(index).__name__
    if isinstance(index, tuple(getattr(faiss, n) for n in _KEEPS_VECTORS)):
        return
    what = _LOSSY.get(name, "compressed codes or a structure this reader does not know")
    raise V2TError(
        f"FAISS index {path} is a {kind}, which keeps only {what}, not the vectors: they cannot be "
        "read back from it; audit the vectors it was built from (a .npy) or a Flat, IVFFlat or "
        "HNSWFlat index"
    )


def _ivf_keys(index, faiss) -> np.ndarray:
    """An IVF index's ids, ascending, with a direct map made (in memory only) so that each can be reconstructed."""
    lists = index.invlists
    parts = [
        faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
        for i in range(index.nlist)
        if lists.list_size(i)
    ]
    keys = np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)
    if len(keys):
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
    return keys


def _faiss_reason(exc: BaseException) -> str:
    """A FAISS error without its C++ location prefix ("Error in ... at file.cpp:12: ")."""
    return re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", first_line(exc))


class ChromaSource(VectorSource):
    """A Chroma collection read page by page: ``ids`` (listed once, in the collection's order) fix the rows."""

    def __init__(self, folder: Path, collection, ids: list[str]):
        self.folder, self.collection, self.ids = folder, collection, ids
        self.position = {key: row for row, key in enumerate(ids)}
        first = collection.get(ids=ids[:1], include=["embeddings"])["embeddings"]
        self.dim = int(np.asarray(first).shape[-1])
        self.sample = self._fetch(_spread(len(ids), FINGERPRINT_ROWS))
        self.has_texts = any(doc is not None for doc in self.sample[1])  # documents stored (seen in the sample)

    def describe(self) -> str:
        return f"Chroma collection {self.collection.name!r} in {self.folder}, {len(self)} vectors of dim {self.dim}"

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, indices) -> Batch:
        indices = check_indices(indices, len(self))
        vectors, docs = self._fetch(indices)
        texts = list(docs) if self.has_texts else None  # None: a row stored without its document
        return Batch(ids=[self.ids[row] for row in indices.tolist()], vectors=vectors, texts=texts)

    def fingerprint(self) -> str:
        """The collection's id, its ids in order and the vectors and documents of 64 evenly spread rows."""
        digest = hashlib.sha256(str(self.collection.id).encode())
        digest.update("\n".join(self.ids).encode("utf-8"))
        digest.update(self.sample[0].tobytes())
        digest.update("\n".join(doc or "" for doc in self.sample[1]).encode("utf-8"))
        return digest.hexdigest()[:16]

    def _fetch(self, indices: np.ndarray) -> tuple[np.ndarray, list]:
        """Vectors (float32) and documents (None where none is stored) of these rows, asked for by id, a page at
        a time, in the order given."""
        found: dict = {}
        wanted = [self.ids[row] for row in np.unique(indices).tolist()]
        for start in range(0, len(wanted), PAGE):
            page = wanted[start : start + PAGE]
            got = self.collection.get(ids=page, include=["embeddings", "documents"])
            if len(got["ids"]) != len(page):
                gone = sorted(set(page) - set(got["ids"]))[:3]
                raise V2TError(
                    f"Chroma collection {self.collection.name!r} changed while being read (ids {gone} "
                    "are gone): rerun once nothing writes to it"
                )
            docs = got["documents"] or [None] * len(got["ids"])
            found.update(zip(got["ids"], zip(got["embeddings"], docs, strict=True), strict=True))
        vectors = np.zeros((len(indices), self.dim), dtype=np.float32)
        docs = []
        for out, row in enumerate(indices.tolist()):
            vectors[out], doc = found[self.ids[row]]
            docs.append(doc)
        return vectors, docs


def _spread(total: int, count: int) -> np.ndarray:
    """Up to ``count`` row numbers spread evenly over [0, total), first and last included."""
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(np.int64))


def open_chroma(folder: Path, collection: str, options: SourceOptions) -> ChromaSource:
    """A collection of a Chroma persistent client's folder (``chromadb.PersistentClient(path=folder)``); its
    stored documents are the originals. Nothing is created: a folder without a Chroma database is refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise V2TError(
            f"Chroma folder {folder} {'is not a folder' if folder.exists() else 'does not exist'}: give "
            "the folder chromadb.PersistentClient(path=...) was opened on"
        )
    if not (folder / "chroma.sqlite3").is_file():
        raise V2TError(
            f"{folder} holds no Chroma database (no chroma.sqlite3 in it): give the folder "
            "chromadb.PersistentClient(path=...) was opened on"
        )
    import chromadb
    from chromadb.config import Settings
    from chromadb.errors import ChromaError

    try:
        client = chromadb.PersistentClient(path=str(folder), settings=Settings(anonymized_telemetry=False))
        names = sorted(c.name for c in client.list_collections())
        found = client.get_collection(collection) if collection in names else None
        ids = _list_ids(found) if found is not None else []
    except (ChromaError, sqlite3.Error, ValueError) as exc:  # ValueError: a client of other settings is open
        raise V2TError(
            f"cannot read Chroma folder {folder} ({first_line(exc, 200)}): give a folder written by "
            f"chromadb.PersistentClient (chromadb {chromadb.__version__} or older)"
        ) from exc
    if found is None:
        raise V2TError(
            f"Chroma folder {folder} has no collection {collection!r}; it has {names or 'none'}: "
            f"write chroma:{folder}:NAME with one of those"
        )
    if not ids:
        raise V2TError(f"Chroma collection {collection!r} in {folder} is empty: there is nothing to audit")
    return ChromaSource(folder, found, ids)


def _list_ids(collection) -> list[str]:
    """Every id of the collection, in its own order, read page by page (no vectors)."""
    ids: list[str] = []
    total = collection.count()
    while len(ids) < total:
        page = collection.get(include=[], limit=PAGE * 10, offset=len(ids))["ids"]
        if not page:
            break
        ids.extend(page)
    return ids
