"""Sentence vectors from PostgreSQL: a pgvector (``vector``/``halfvec``) or ``real[]`` column of a table, or the
rows of a SELECT, read in batches through one server-side (named, scrollable) cursor.

The reader holds one read-only REPEATABLE READ transaction for its life: every batch (and the fingerprint) sees
the same snapshot of the table, whatever is written to it meanwhile. Rows are numbered in the order of the id
column (``--id-column``; its values are the row ids, which must be unique and not NULL) or, without one, of the
table's ``ctid`` (the ids are then the row numbers). A NULL vector is read as a row of NaN, which the audit's
NaN policy then skips or refuses. Identifiers are quoted with ``psycopg.sql``, never pasted into the SQL.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from ..util.errors import V2TError, first_line
from .vectorsource import Batch, SourceOptions, VectorSource, check_indices

CURSOR = "lora_v2t_vectors"
VECTOR_TYPES = ("vector", "halfvec", "real[]", "double precision[]")
CONNECT_TIMEOUT_S = 10


class PostgresSource(VectorSource):
    """Rows of ``relation`` (a composed SQL table name, or a parenthesised SELECT) through a named cursor."""

    def __init__(self, conn, where: str, relation, columns: dict, label: str, is_table: bool):
        from psycopg import sql

        self.conn, self.where, self.relation, self.columns, self.label = conn, where, relation, columns, label
        pick = [sql.Identifier(columns[k]) if columns.get(k) else sql.NULL for k in ("id", "vector", "text")]
        self.picked = sql.SQL(", ").join(pick)
        # the row order: the id column (ties broken by ctid in a table), else the table's ctid
        keys = ([sql.Identifier(columns["id"])] if columns.get("id") else []) + ([sql.SQL("t.ctid")] * is_table)
        ids = (
            sql.SQL("count(*) - count({0}), count({0}) - count(DISTINCT {0})").format(sql.Identifier(columns["id"]))
            if columns.get("id")
            else sql.SQL("0, 0")
        )
        self.total, null_ids, repeats = self._row(sql.SQL("SELECT count(*), {} FROM {} AS t").format(ids, relation))
        if null_ids:
            raise V2TError(
                f"--id-column {columns['id']} of PostgreSQL {label} holds {null_ids} NULL value(s): ids "
                "name and order the rows; give a column without NULLs, or leave --id-column out (rows are "
                "then numbered)"
            )
        if repeats:
            self._refuse_repeated_ids(repeats, is_table)
        self.dim = self._first_dim()
        self.cursor = conn.cursor(name=CURSOR, scrollable=True, binary=True)
        self._execute(
            self.cursor,
            sql.SQL("SELECT {} FROM {} AS t ORDER BY {}").format(self.picked, relation, sql.SQL(", ").join(keys)),
        )
        self.position = 0  # the row the cursor's next fetch returns

    def _refuse_repeated_ids(self, repeats: int, is_table: bool) -> None:
        """Ids name the audited rows (rows.jsonl, the report) and order them: a repeated one would leave a leaking
        row ambiguous, and the order among its rows to the server (a query has no ctid to break the tie)."""
        from psycopg import sql

        column = self.columns["id"]
        example, count = self._row(
            sql.SQL(
                "SELECT {0}, count(*) FROM {1} AS t GROUP BY {0} HAVING count(*) > 1 ORDER BY 2 DESC, 1 LIMIT 1"
            ).format(sql.Identifier(column), self.relation)
        )
        fix = (
            "give a column of unique ids, or leave --id-column out (rows are then numbered)"
            if is_table
            else "give a column of unique ids (a primary key, say)"
        )
        raise V2TError(
            f"--id-column {column} of PostgreSQL {self.label} repeats ids ({repeats} row(s) share another's id; "
            f"e.g. {str(example)!r} names {count} rows): ids name and order the audited rows; {fix}"
        )

    def describe(self) -> str:
        order = f"ordered by {self.columns['id']}" if self.columns.get("id") else "ordered by ctid"
        return (
            f"PostgreSQL {self.label} at {self.where} (column {self.columns['vector']}, {order}), "
            f"{len(self)} vectors of dim {self.dim}"
        )

    def __len__(self) -> int:
        return self.total

    def read(self, indices) -> Batch:
        indices = check_indices(indices, len(self))
        rows = {}
        wanted = np.unique(indices)
        for run in np.split(wanted, np.flatnonzero(np.diff(wanted) != 1) + 1) if wanted.size else []:
            for row, record in zip(run.tolist(), self._fetch(int(run[0]), len(run)), strict=True):
                rows[row] = record
        records = [rows[row] for row in indices.tolist()]
        ids = [
            str(r[0]) if self.columns.get("id") else str(row) for r, row in zip(records, indices.tolist(), strict=True)
        ]
        vectors = np.full((len(records), self.dim), np.nan, dtype=np.float32)
        for out, (key, record) in enumerate(zip(ids, records, strict=True)):
            vectors[out] = self._vector(key, record[1])
        texts = [r[2] for r in records] if self.columns.get("text") else None  # a NULL: the row has no original
        return Batch(ids=ids, vectors=vectors, texts=texts)

    def fingerprint(self) -> str:
        """Count and an order-free sum of each read row's md5 (as the server computes them; with its ctid where
        the ctid orders the rows), with the names of what is read."""
        from psycopg import sql

        ctid = sql.SQL("") if self.columns.get("id") else sql.SQL(", t.ctid")
        rows = sql.SQL("SELECT {}{} FROM {} AS t").format(self.picked, ctid, self.relation)
        count, total = self._row(
            sql.SQL(
                "SELECT count(*), coalesce(sum(('x' || left(md5(u::text), 15))::bit(60)::bigint), 0) FROM ({}) AS u"
            ).format(rows)
        )
        digest = hashlib.sha256(f"{self.label}|{sorted(self.columns.items())}|{count}|{total}".encode())
        return digest.hexdigest()[:16]

    def close(self) -> None:
        if not self.conn.closed:
            self.conn.close()  # the read-only transaction is rolled back: nothing was written

    def _fetch(self, start: int, count: int) -> list:
        """``count`` rows from row ``start`` on, moving the cursor only where it is not there already."""
        import psycopg

        try:
            if start != self.position:
                self.cursor.scroll(start, mode="absolute")
            records = self.cursor.fetchmany(count)
        except psycopg.OperationalError as exc:
            raise V2TError(
                f"lost the connection to PostgreSQL at {self.where} ({first_line(exc, 200)}): rerun "
                "(an audit continues where it stopped)"
            ) from exc
        self.position = start + len(records)
        if len(records) != count:
            raise V2TError(
                f"PostgreSQL {self.label} at {self.where} ended at row {start + len(records)}, before "
                f"the {len(self)} rows counted: rerun"
            )
        return records

    def _vector(self, key: str, value) -> np.ndarray:
        if value is None:
            return np.full(self.dim, np.nan, dtype=np.float32)
        vector = np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)
        if vector.shape != (self.dim,):
            raise V2TError(
                f"row {key} of PostgreSQL {self.label} has a vector of {vector.size} values, the first "
                f"has {self.dim}: give a column of one dimension (e.g. vector({self.dim}))"
            )
        return vector

    def _first_dim(self) -> int:
        from psycopg import sql

        query = sql.SQL("SELECT {} FROM {} AS t WHERE {} IS NOT NULL LIMIT 1").format(
            sql.Identifier(self.columns["vector"]), self.relation, sql.Identifier(self.columns["vector"])
        )
        cursor = self.conn.cursor(binary=True)
        self._execute(cursor, query)
        first = cursor.fetchone()
        if first is None:
            raise V2TError(
                f"PostgreSQL {self.label} at {self.where} has no vectors in column "
                f"{self.columns['vector']} (no rows, or all NULL): there is nothing to audit"
            )
        value = first[0]
        return int(np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value).size)

    def _row(self, query):
        cursor = self.conn.cursor()
        self._execute(cursor, query)
        return cursor.fetchone()

    def _execute(self, cursor, query) -> None:
        import psycopg

        try:
            cursor.execute(query)
        except psycopg.OperationalError as exc:
            raise V2TError(
                f"lost the connection to PostgreSQL at {self.where} ({first_line(exc, 200)}): rerun "
                "(an audit continues where it stopped)"
            ) from exc
        except psycopg.Error as exc:
            raise V2TError(
                f"PostgreSQL {self.label} at {self.where} could not be read: {first_line(exc, 300)}"
            ) from exc


def open_postgres(dsn: str | None, options: SourceOptions) -> PostgresSource:
    """Vectors from PostgreSQL: ``options.table`` and ``options.vector_column`` (with ``text_column`` and
    ``id_column`` when given), or the SELECT in ``options.query`` (which needs ``vector_column`` and ``id_column``
    among its columns). The connection: ``dsn`` (a URI or key=value string), else ``options.dsn``, else the usual
    PG* environment variables. Nothing is ever written to the database."""
    if dsn and options.dsn and dsn != options.dsn:
        raise V2TError("two PostgreSQL connections given (the source's URI and --dsn): give one")
    if bool(options.table) == bool(options.query):
        raise V2TError(
            "name the vectors in PostgreSQL with --table T --vector-column C, or give --query SQL (one of the two)"
        )
    if not options.vector_column:
        raise V2TError("PostgreSQL vectors need --vector-column: the column that holds them")
    if options.query and not options.id_column:
        raise V2TError("--query needs --id-column: a column of the query that orders its rows and names them")
    conn, where = connect(dsn or options.dsn)
    try:
        relation, label, plain = _relation(conn, where, options)
        columns = {"id": options.id_column, "vector": options.vector_column, "text": options.text_column}
        return PostgresSource(conn, where, relation, columns, label, plain)
    except BaseException:
        conn.close()
        raise


def connect(dsn: str | None):
    """A read-only REPEATABLE READ connection (and "host:port" for messages), from ``dsn`` or the PG* variables;
    a server that does not answer is one line naming host and port."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(dsn or "")
    except psycopg.ProgrammingError as exc:
        raise V2TError(
            f"the PostgreSQL connection string is not valid ({first_line(exc, 200)}): give a URI "
            "postgresql://USER@HOST:PORT/DB or key=value pairs"
        ) from exc
    where = _where(params)
    if "connect_timeout" not in params and "PGCONNECT_TIMEOUT" not in os.environ:
        params["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        conn = psycopg.connect(make_conninfo("", **params))
    except psycopg.OperationalError as exc:
        raise V2TError(
            f"cannot connect to PostgreSQL at {where} ({first_line(exc, 200)}): start the server, or "
            "give its host and port in the URI, --dsn or PGHOST/PGPORT"
        ) from exc
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    _register_vector(conn)
    return conn, where


def _where(params: dict) -> str:
    """ "host:port" as libpq will use them (the unix-socket folder stands for the host where there is no host)."""
    host = str(params.get("host") or os.environ.get("PGHOST") or "the default unix socket")
    port = str(params.get("port") or os.environ.get("PGPORT") or 5432)
    return f"{host}:{port}"


def _register_vector(conn) -> None:
    """pgvector's types as numpy arrays, where the database has the extension (``real[]`` needs nothing)."""
    import psycopg
    from pgvector.psycopg import register_vector

    try:
        register_vector(conn)
    except psycopg.ProgrammingError:  # no vector type in this database
        pass


def _relation(conn, where: str, options: SourceOptions):
    """The composed relation to read from, its label and whether it is a plain table (which has a ctid); the
    named table and columns checked to exist."""
    from psycopg import sql

    relation: sql.Composable
    if options.query:
        relation = sql.SQL("({})").format(sql.SQL(options.query.strip().rstrip(";")))
        names, plain = _query_columns(conn, where, relation), False
        label = "query"
    elif not options.table:
        raise V2TError("a PostgreSQL source needs --table or --query: name what to read")
    else:
        parts = options.table.split(".", 1)
        relation = sql.Identifier(*parts)
        names, plain = _table_columns(conn, where, relation, options.table)
        label = f"table {options.table}"
        if not plain and not options.id_column:
            raise V2TError(
                f"--table {options.table} is a view or a partitioned table, whose rows have no ctid to "
                "order them by: give --id-column"
            )
    for flag, column in (
        ("--vector-column", options.vector_column),
        ("--id-column", options.id_column),
        ("--text-column", options.text_column),
    ):
        if column and column not in names:
            listed = ", ".join(f"{n} ({t})" if t else n for n, t in names.items())
            raise V2TError(f"{flag} {column}: PostgreSQL {label} has no such column; its columns: {listed}")
    kind = names[options.vector_column]
    if kind and not kind.startswith(VECTOR_TYPES):
        raise V2TError(
            f"--vector-column {options.vector_column} of PostgreSQL {label} is of type {kind}, not a "
            "vector: name a vector, halfvec or real[] column"
        )
    return relation, label, plain


def _table_columns(conn, where: str, relation, table: str) -> tuple[dict, bool]:
    """{column: type} of ``table`` and whether it is a plain table or materialised view (rows with a ctid); a
    table that does not exist is named with the tables that do."""
    probe = conn.cursor()
    probe.execute(
        "SELECT c.oid, c.relkind FROM pg_class AS c WHERE c.oid = to_regclass(%s)", [relation.as_string(conn)]
    )
    oid, kind = probe.fetchone() or (None, None)
    if oid is None:
        probe.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables WHERE table_schema "
            "NOT IN ('pg_catalog', 'information_schema') ORDER BY 1 LIMIT 30"
        )
        tables = [r[0] for r in probe.fetchall()]
        raise V2TError(
            f"--table {table}: no such table in PostgreSQL at {where}; tables there: {', '.join(tables) or 'none'}"
        )
    probe.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s AND "
        "attnum > 0 AND NOT attisdropped ORDER BY attnum",
        [oid],
    )
    return dict(probe.fetchall()), kind in ("r", "m")


def _query_columns(conn, where: str, relation) -> dict:
    """{column: None} of a SELECT, which is run with LIMIT 0 to check it."""
    import psycopg
    from psycopg import sql

    probe = conn.cursor()
    try:
        probe.execute(sql.SQL("SELECT * FROM {} AS t LIMIT 0").format(relation))
    except psycopg.Error as exc:
        raise V2TError(f"--query does not run on PostgreSQL at {where}: {first_line(exc, 300)}") from exc
    return {column.name: None for column in probe.description}
