"""What ``evaluate`` reads: a text file of references (one sentence per line) or a TSV with a source column to encode
and a target column to compare with, as every command reads sentence files (:mod:`lora_v2t.util.textfile`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..util.errors import V2TError
from ..util.textfile import column_index, header_names, read_lines


@dataclass
class EvalData:
    """What to reconstruct: references, and either source texts to encode or precomputed vectors."""

    references: list[str]
    sources: list[str] | None = None  # texts to encode (the references themselves unless cross-lingual)
    vectors: np.ndarray | None = None
    skipped: dict = field(default_factory=dict)
    name: str = ""  # the file's name, for reports


def read_eval_file(
    path: str | Path,
    source_column: int | str | None = None,
    target_column: int | str = 1,
    header: bool = False,
    max_chars: int = 1000,
    limit: int | None = None,
) -> EvalData:
    """Read a text file (one reference per line) or, with ``source_column``, a TSV whose source column is
    encoded and whose target column is the reference (``header``: its first line names the columns), as every
    command reads sentence files (:mod:`lora_v2t.util.textfile`). Empty, overlong and undecodable lines are skipped
    and counted. ``limit``: keep the first ``limit`` usable lines (None: all)."""
    path = Path(path)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise V2TError(
            f"limit must be an integer >= 1 (the number of usable lines to evaluate), got {limit!r}; "
            "leave it out to evaluate every line"
        )
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise V2TError(f"max_chars must be an integer >= 1, got {max_chars!r}")
    if header and source_column is None:
        raise V2TError(
            "--header names the columns of a TSV read with --source-column: give --source-column (and "
            "--target-column) too, or drop --header (without them, every line is one sentence)"
        )
    lines = read_lines(
        path,
        "evaluation file",
        columns=source_column is not None,
        tsv_fix=TSV_COLUMNS,
        fix="give a text file (one sentence per line) or a TSV",
    )
    names = header_names(lines, path, "evaluation file") if header else None
    columns = (
        None
        if source_column is None
        else (column_index(source_column, names, path, "source"), column_index(target_column, names, path, "target"))
    )
    skipped = {"empty": 0, "overlong": 0, "undecodable": 0}
    refs, srcs = [], []
    for number, line in enumerate(lines, start=2 if header else 1):
        if line is None:
            skipped["undecodable"] += 1
            continue
        source, target = _fields(line, columns, names, path, number)
        if not source or not target:
            skipped["empty"] += 1
        elif len(source) > max_chars or len(target) > max_chars:
            skipped["overlong"] += 1
        else:
            refs.append(target)
            srcs.append(source)
        if limit is not None and len(refs) >= limit:
            break
    if not refs:
        raise V2TError(f"{path} has no usable line (skipped: {skipped})")
    return EvalData(
        references=refs, sources=srcs, skipped={k: v for k, v in skipped.items() if v}, name=Path(path).name
    )


TSV_COLUMNS = "give --source-column and --target-column (0-based indices, or names with --header) to read its columns"


def _fields(
    line: str, columns: tuple[int, int] | None, names: list[str] | None, path: Path, number: int = 0
) -> tuple[str, str]:
    """The (source, target) of line ``number``: the line itself, or two of its tab-separated columns ('' for a
    blank)."""
    if columns is None or not line.strip():
        return line.strip(), line.strip()
    fields = line.split("\t")
    if max(columns) >= len(fields):
        missing = repr(names[max(columns)]) if names and max(columns) < len(names) else max(columns)
        existing = ", ".join(names[: len(fields)] if names else (str(i) for i in range(len(fields))))
        raise V2TError(
            f"{path}: line {number} has no column {missing}; it has {existing} (0-based indices unless "
            "--header names them): give every line the same columns"
        )
    return fields[columns[0]].strip(), fields[columns[1]].strip()
