"""Sentence vectors as lora_v2t takes them: validated (N, d) float32 tensors, and their cosines."""

from __future__ import annotations

import numpy as np
import torch

from ..util.errors import V2TError, first_line


def to_vectors(vectors, embedding_dim: int) -> torch.Tensor:
    """Validate sentence vectors and return a float32 (N, d) CPU tensor."""
    if isinstance(vectors, torch.Tensor):
        if vectors.is_complex():
            raise V2TError(f"vectors are complex ({vectors.dtype}); sentence vectors are real: pass a real array")
        tensor = vectors.detach().to("cpu", torch.float32)
    else:
        lengths = row_lengths(vectors)
        if len(lengths) > 1:
            raise V2TError(
                f"vectors are rows of different lengths ({lengths[0]} and {lengths[1]}): give N rows of "
                f"{embedding_dim} numbers, as an (N, {embedding_dim}) array"
            )
        if np.iscomplexobj(vectors):  # converting would silently drop the imaginary part
            raise V2TError(
                f"vectors are complex ({np.asarray(vectors).dtype}); sentence vectors are real: pass a real array"
            )
        try:
            array = np.asarray(vectors, dtype=np.float32)
            tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
        except (TypeError, ValueError) as exc:
            raise V2TError(f"vectors must be a numeric (N, {embedding_dim}) array: {first_line(exc)}") from exc
    if tensor.ndim == 1:
        if tensor.shape[0] == 0:  # [] would become one vector of dimension 0
            raise V2TError("empty batch: pass at least one vector")
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 2:
        raise V2TError(f"vectors must have shape (N, {embedding_dim}), got {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise V2TError("empty batch: pass at least one vector")
    if tensor.shape[1] != embedding_dim:
        raise V2TError(
            f"vectors have dimension {tensor.shape[1]} but the adapter's encoder makes "
            f"{embedding_dim}-d vectors: encode with the encoder named in the adapter"
        )
    bad = ~torch.isfinite(tensor).all(dim=1)
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise V2TError(f"vector(s) {rows[:10]} contain NaN or inf: fix or drop those rows")
    return tensor


def row_lengths(vectors) -> list[int]:
    """The distinct lengths of the rows of a list or tuple of vectors, in order (empty for anything else)."""
    if not isinstance(vectors, (list, tuple)):
        return []
    lengths = []
    for row in vectors:
        try:
            size = len(row)
        except TypeError:  # a number, or a 0-d array: not a row
            continue
        if size not in lengths and not isinstance(row, (str, bytes)):
            lengths.append(size)
    return lengths


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, d) arrays."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.shape != b.shape:
        raise V2TError(f"cannot compare vectors of shapes {a.shape} and {b.shape}")
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(denom, 1e-12)
