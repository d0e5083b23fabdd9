"""Sentence files, read one way by every command: what a line is, the encoding, columns and a header.

A line ends at ``\\n`` (a ``\\r`` before it is dropped), as ``wc -l`` and every other tool count them; no other
character ends one (``str.splitlines`` also splits on ``\\x1c``-``\\x1e``, ``\\x85``, U+2028...: a text holding
one would become two rows). A file is UTF-8: a UTF-8 byte-order mark is dropped; a UTF-16/UTF-32 byte-order mark,
NUL bytes on the first line, or more lines with control characters or bytes that are not UTF-8 than without are
refused as another encoding or binary. A file whose lines hold tabs is a TSV: read without columns it is refused
rather than taken for whole sentences.

What each command does with blank, undecodable or overlong lines is its own (training skips and counts them,
``invert`` refuses them because its rows are numbered by line); this module reads and splits.
"""

from __future__ import annotations

import os
import re
from itertools import chain
from pathlib import Path

from .errors import V2TError

# byte-order marks of the encodings a text editor may save instead of UTF-8 (UTF-32 first: it starts like UTF-16)
FOREIGN_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32LE"),
    (b"\x00\x00\xfe\xff", "UTF-32BE"),
    (b"\xff\xfe", "UTF-16LE"),
    (b"\xfe\xff", "UTF-16BE"),
)
UTF8_BOM = b"\xef\xbb\xbf"
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0/C1 controls, not tab (nor newlines)
SENTENCES = "give a UTF-8 text file with one sentence per line"
TSV_FIX = "give a text file with one sentence per line (e.g. cut -f 2 FILE.tsv > sentences.txt)"
TSV_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)
TSV_UNESCAPED = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}


def split_lines(text: str) -> list[str]:
    """The lines of ``text`` as a file holds them: split at ``\\n`` only, a ``\\r`` before it dropped, no empty
    line after a final newline (``str.splitlines`` splits at a dozen other characters too)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def check_file(path: str | Path, what: str = "file", fix: str = SENTENCES) -> Path:
    """``path`` when it is a file; one line saying it is missing, a folder, standard input or a pipe otherwise
    (``what`` names it)."""
    path = Path(path)
    if path.is_dir():
        raise V2TError(f"{what} {path} is a folder, not a file: {fix}")
    refuse_special(path, what)
    if not path.is_file():
        raise V2TError(f"{what} {path} does not exist: {fix}")
    return path


def refuse_special(path: str | Path, what: str = "file", note: str = "") -> None:
    """Refuse ``-`` and what exists but is no regular file (a pipe, a FIFO, a device) in one line: files are
    read more than once (hashed, counted, memory-mapped), which a stream cannot be; a FIFO is never opened."""
    if str(path) == "-":
        raise V2TError(
            f"{what} -{note} (standard input) is not read: save it to a file first (e.g. cat > FILE) and give that file"
        )
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        raise V2TError(
            f"{what} {path}{note} is not a regular file (a pipe, FIFO or device): save it to a file first "
            "and give that file"
        )


def not_utf8(path: Path, what: str, problem: str, encoding: str = "UTF-16") -> V2TError:
    return V2TError(
        f"{what} {path} {problem}, not UTF-8 text: convert it to UTF-8, e.g. "
        f"iconv -f {encoding} -t UTF-8 {path} > {path.stem}.utf8.txt"
    )


def read_lines(
    path: str | Path, what: str = "file", columns: bool = False, tsv_fix: str = TSV_FIX, fix: str = SENTENCES
) -> list[str | None]:
    """Every line of a UTF-8 text file (line ``n`` at index ``n - 1``), without its line end; None for a line
    that is not UTF-8. Refused in one line: a missing file, a folder, an empty (0-byte) file (with ``fix`` as the
    fix), another encoding or a binary file, and (unless ``columns``, when the caller splits the lines at tabs) a
    TSV, with ``tsv_fix`` as the fix."""
    path = check_file(path, what, fix)
    try:
        with open(path, "rb") as handle:
            first = handle.readline()  # a file opened in binary splits at b"\n" only
            _check_encoding(path, what, first)
            lines = [_decode(raw) for raw in chain([first.removeprefix(UTF8_BOM)], handle)] if first else []
    except OSError as exc:
        raise V2TError(
            f"cannot read {what} {path}: {exc.strerror or exc}; make it readable (chmod a+r {path}) or "
            "give another file"
        ) from exc
    if not lines:
        raise V2TError(f"{what} {path} is empty (0 bytes): {fix}")
    _refuse_binary(path, what, lines)
    if not columns:
        _refuse_tsv(path, what, lines, tsv_fix)
    return lines


def _check_encoding(path: Path, what: str, first: bytes) -> None:
    """Refuse a file whose first line shows another encoding than UTF-8 (a byte-order mark, NUL bytes) or whose
    lines end in ``\\r`` alone (no ``\\n`` in the whole file, which ``first`` then is)."""
    for bom, encoding in FOREIGN_BOMS:
        if first.startswith(bom):
            raise not_utf8(path, what, f"is {encoding} (it starts with a {encoding} byte-order mark)", encoding)
    if b"\x00" in first:  # later lines with NUL are counted with the control characters
        raise not_utf8(path, what, "holds NUL bytes on its first line: it is UTF-16, UTF-32 or binary")
    if b"\n" not in first and b"\r" in first.rstrip(b"\r"):
        raise V2TError(
            f"{what} {path} ends its lines with a carriage return alone (\\r, old Mac line ends; it holds "
            f"no \\n), so it reads as one line: convert them, e.g. tr '\\r' '\\n' < {path} > "
            f"{path.stem}.unix.txt"
        )


def _decode(raw: bytes) -> str | None:
    """A line without its line end (``\\n`` or ``\\r\\n``), or None when it is not UTF-8."""
    try:
        return raw.removesuffix(b"\n").removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        return None


def _refuse_binary(path: Path, what: str, lines: list[str | None]) -> None:
    """Refuse a file with more lines holding control characters or bytes that are not UTF-8 than clean ones."""
    bad = good = 0
    for line in lines:
        if line is None or CONTROL_CHARS.search(line):
            bad += 1
        elif line.strip():
            good += 1
    if bad > good:
        raise not_utf8(
            path,
            what,
            f"is mostly control characters or bytes that are not UTF-8 ({bad} lines with "
            f"them, {good} without): it is in another encoding or binary",
        )


def _refuse_tsv(path: Path, what: str, lines: list[str | None], fix: str) -> None:
    """Refuse a TSV (a .tsv file, or one where most non-blank lines hold a tab) where sentences are expected."""
    filled = sum(1 for line in lines if line is not None and line.strip())
    tabbed = sum(1 for line in lines if line is not None and "\t" in line and line.strip())
    if path.suffix.lower() == ".tsv" or (tabbed and tabbed * 2 > filled):
        raise V2TError(
            f"{what} {path} is a TSV ({tabbed} of {filled} lines hold a tab), read here as one sentence per line: {fix}"
        )


def read_rows(path: str | Path, what: str = "file", fix: str = SENTENCES) -> list[str]:
    """The lines of a UTF-8 text file where line ``n`` is row ``n - 1``: a blank line or one that is not UTF-8
    is refused (naming them), since skipping it would shift every row after it."""
    lines = read_lines(path, what, fix=fix)
    undecodable = [i + 1 for i, line in enumerate(lines) if line is None]
    if undecodable:
        raise V2TError(
            f"{what} {path}: line(s) {undecodable[:5]} are not UTF-8: convert the file to UTF-8 (rows "
            "are numbered by line)"
        )
    rows = [line for line in lines if line is not None]  # all of them: none is undecodable
    blank = [i + 1 for i, line in enumerate(rows) if not line.strip()]
    if len(blank) == len(lines):
        raise V2TError(f"{what} {path} is empty: it has no non-blank line; give one sentence per line")
    if blank:
        raise V2TError(
            f"{what} {path}: line(s) {blank[:5]} are blank: every line must be a sentence (rows are "
            "numbered by line), remove them"
        )
    return rows


def header_names(lines: list[str | None], path: Path, what: str = "file") -> list[str]:
    """The column names on the first line of a TSV (removed from ``lines``)."""
    first = lines.pop(0) if lines else None
    if first is None:
        raise V2TError(
            f"{what} {path} has no header line that is UTF-8 text: convert it to UTF-8, or drop the header option"
        )
    return first.split("\t")


def column_index(column: int | str, names: list[str] | None, path: Path, role: str) -> int:
    """The 0-based index of the ``role`` (source/target) column: an index, or a name from the header line."""
    if isinstance(column, str) and not column.strip().lstrip("-").isdigit():
        if names is None:
            raise V2TError(f"column {column!r} is a name but {path} is read without --header: give a 0-based index")
        if column not in names:
            raise V2TError(f"{path} has no column {column!r}; its columns are: {', '.join(names)}")
        return names.index(column)
    index = int(column)
    if index < 0:
        raise V2TError(
            f"{role} column {index}: columns are counted from 0 (the first column is 0), so give an "
            "index >= 0 (or, with --header, a column name)"
        )
    if names is not None and index >= len(names):
        raise V2TError(f"{path} has no column {index}; its columns are: {', '.join(names)}")
    return index


def escape_tsv(text: str) -> str:
    """``text`` as one TSV field: backslash, tab, newline and carriage return written ``\\\\``, ``\\t``, ``\\n``,
    ``\\r`` (so that a row stays one line); :func:`unescape_tsv` reads it back."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def unescape_tsv(field: str) -> str:
    """The text :func:`escape_tsv` wrote as ``field``."""
    return TSV_UNESCAPE.sub(lambda m: TSV_UNESCAPED.get(m.group(1), m.group(0)), field)
