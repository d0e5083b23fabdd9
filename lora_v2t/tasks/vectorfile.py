"""Sentence vectors from a ``.npy`` file: read (or memory-mapped) without ever unpickling; any other kind of
file is named for what it is."""

from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np

from ..util.errors import V2TError
from ..util.textfile import check_file

NPY_MAGIC = b"\x93NUMPY"  # how every .npy file starts


def load_vectors_file(path: Path, mmap: bool = False):
    """Read an (N, d) real array from a .npy file, never unpickling; any other file is named for what it is.

    ``mmap``: memory-map the file (read-only) instead of reading it whole, for files larger than memory."""
    check_file(path, "vectors file", "give a .npy file written by numpy.save")
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        raise V2TError(f"cannot read vectors file {path}: {exc.strerror or exc}; check its permissions") from exc
    if not head.startswith(NPY_MAGIC):
        raise V2TError(f"vectors file {path} {_not_npy(head)}")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as exc:
        raise V2TError(
            f"{path} is not a plain numeric .npy array ({str(exc).splitlines()[0]}); "
            "save it with numpy.save(path, array)"
        ) from exc
    except (OSError, EOFError) as exc:
        raise V2TError(
            f"cannot read {path} as .npy ({str(exc).splitlines()[0] or type(exc).__name__}): it is "
            "truncated or damaged; save it again with numpy.save(path, array)"
        ) from exc
    if array.dtype.kind == "c":
        raise V2TError(
            f"{path} holds complex numbers ({array.dtype}); sentence vectors are real: save a real "
            "array (e.g. array.real, if dropping the imaginary part is what you mean)"
        )
    if array.dtype.kind not in "fiu":
        raise V2TError(f"{path} holds {array.dtype} values, not numbers: save the vectors as a float array")
    return array


def _not_npy(head: bytes) -> str:
    """What a file that is not a .npy array is, and the fix (the end of a one-line message)."""
    fix = "save the vectors with numpy.save(path, array)"
    if not head:
        return f"is empty (0 bytes): {fix}"
    if head.startswith(b"PK\x03\x04"):
        return f"is a zip archive (numpy.savez writes those), not a .npy array: {fix}"
    if head[:1] == b"\x80":
        return f"is a pickle file, not a .npy array, and lora_v2t never unpickles: {fix}"
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head)  # a cut multi-byte character is no error
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c.isspace() for c in text):
        return f"is a text file, not a .npy array: give sentences with --text (or --data when evaluating), or {fix}"
    return f"is not a .npy array (it starts with bytes {head[:8].hex(' ')}): {fix}"
