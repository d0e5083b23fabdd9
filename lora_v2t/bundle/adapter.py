"""Adapter bundles: validate, and load onto an already loaded base (:mod:`lora_v2t.bundle.loading` loads one with
its base; :mod:`lora_v2t.bundle.saving` writes one).

A bundle is a folder:

| file | what |
|---|---|
| ``adapter_config.json``, ``adapter_model.safetensors`` | LoRA in peft's own format |
| ``projector.safetensors`` | projector weights (fp32, or its weight matrices in bf16) |
| ``v2t_config.json`` | format version, encoder, backbone, projector, LoRA, generation defaults, training |
| ``README.md`` | model card |
| ``output_vocab.safetensors`` | optional: the token ids the adapter may emit (trained with ``loss_vocab: corpus``) |

Never base weights, never pickle. Written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..bundle.format import (
    AdapterMeta,
    BundleConfig,
    check_output_vocab_size,
    read_json,
)
from ..bundle.hub import resolve_adapter
from ..bundle.layout import OUTPUT_VOCAB_FILE
from ..model.projector import projector_input_dim
from ..util.errors import V2TError, first_line

if TYPE_CHECKING:
    from ..model.vector2text import Vector2Text

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SAFETENSORS_MAX_HEADER = 100 * 2**20  # safetensors refuses JSON headers above 100 MB
PICKLE_PROTOCOLS = range(2, 6)  # a binary pickle starts with 0x80 and its protocol byte (torch.save's legacy format)
REWRITE = "save or copy the adapter again"
NO_PICKLE = "lora_v2t never loads pickle; convert it with safetensors.torch.save_file"


# ---------------------------------------------------------------------- validation
def validate_bundle(path: str | Path) -> BundleConfig:
    """Check a bundle folder's files and return its v2t_config.json, typed; raise V2TError naming any problem.

    A folder whose files are unchanged since it last passed (same names, inodes, sizes, modification and change
    times) is not read again: the command line checks a bundle before loading it, and loading checks it too.
    Files changed in the last few seconds are always read, since a rewrite within the file system's clock tick
    keeps the times (the change time, which no copy tool sets back, decides).
    """
    path = Path(path)
    try:
        stamp = _bundle_stamp(path)
        if stamp and all(time.time_ns() - changed > SETTLED_NS for *_, changed in stamp):
            return copy.deepcopy(_validated(path, path.resolve(), stamp))
        return _validate_bundle(path)
    except PermissionError as exc:
        raise V2TError(
            f"cannot read adapter bundle {path}: permission denied on {exc.filename or path}; make it "
            f"readable (e.g. chmod -R u+rX {path})"
        ) from exc


SETTLED_NS = 5 * 10**9  # files older than this are remembered once validated


def _bundle_stamp(path: Path) -> tuple:
    """What changes when any file of the bundle folder changes (or its permissions do): each file's name, inode,
    size, modification and change time; () where the folder is missing or changes while it is read."""
    try:
        if not path.is_dir():
            return ()
        files = sorted(p for p in path.rglob("*") if p.is_file())  # backbone/ too: a fully fine-tuned base
        stats = [(p.relative_to(path).as_posix(), p.stat()) for p in files]
        return tuple((name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for name, st in stats)
    except FileNotFoundError:
        return ()


@functools.lru_cache(maxsize=16)
def _validated(path: Path, resolved: Path, stamp: tuple) -> BundleConfig:
    """:func:`_validate_bundle` of ``path`` (as the user spelled it, for the messages), remembered for the folder
    ``resolved`` as ``stamp`` found it; errors are not remembered."""
    return _validate_bundle(path)


def _validate_bundle(path: Path) -> BundleConfig:
    if not path.is_dir():
        raise V2TError(f"adapter folder {path} does not exist (or is not a folder)")
    if not (path / "v2t_config.json").is_file():
        if (path / "final").is_dir() or any(path.glob("step-*")):
            raise V2TError(
                f"{path} is a training run's folder, not an adapter: give {path / 'final'} (or one of "
                "its step-NNNNNN checkpoints)"
            )
        raise V2TError(
            f"adapter bundle {path} is missing v2t_config.json: it is incomplete or not a lora_v2t "
            "adapter; save or copy it again"
        )
    _refuse_pickle(path)
    config = read_json(path / "v2t_config.json")
    full = config.get("trainable") == "full"
    required_files: tuple[str, ...] = (
        ("projector.safetensors",)
        if full
        else ("adapter_config.json", "adapter_model.safetensors", "projector.safetensors")
    )
    if full and not (path / "backbone" / "config.json").is_file():
        raise V2TError(f"{path} is a fully fine-tuned model but lacks backbone/config.json: copy it again")
    for required in required_files:
        if not (path / required).is_file():
            raise V2TError(f"adapter bundle {path} is missing {required}: it is incomplete; save or copy it again")
    check_output_vocab_size(config.get("output_vocab_size"), path / "v2t_config.json")
    if config.get("output_vocab_size") is not None:
        if not (path / OUTPUT_VOCAB_FILE).is_file():
            raise V2TError(
                f"adapter bundle {path} is missing {OUTPUT_VOCAB_FILE} (its v2t_config.json names an "
                "output vocabulary): it is incomplete; save or copy it again"
            )
        required_files += (OUTPUT_VOCAB_FILE,)
    for name in required_files:
        if name.endswith(".safetensors"):
            _check_safetensors(path / name)
            if name != OUTPUT_VOCAB_FILE:
                _check_finite(path / name)
    if not full:
        _check_lora_shapes(path / "adapter_model.safetensors", read_json(path / "adapter_config.json"))
    return BundleConfig.from_dict(config, path / "v2t_config.json")


def _refuse_pickle(path: Path) -> None:
    """Refuse a bundle holding any pickle-format file (``*.bin``, ``*.pt``...), in backbone/ too: lora_v2t
    loads safetensors only, and loading a pickle runs whatever code it holds."""
    pickled = sorted(
        p.relative_to(path).as_posix() for p in path.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file()
    )
    if pickled:
        raise V2TError(
            f"{path} holds pickle file(s) {pickled[:5]}: lora_v2t loads only safetensors; re-save the "
            "weights with safetensors (save_pretrained(..., safe_serialization=True), "
            "safetensors.torch.save_file) and remove the pickles"
        )


def _check_safetensors(file: Path) -> None:
    """Raise V2TError unless ``file`` is a complete safetensors file; the message says what it is instead.

    A safetensors file is an 8-byte little-endian header length, a JSON header, then the tensor data. Its first
    byte is the header length's low byte and may be anything (0x80 included), so the header is parsed first and
    only a file without a valid header is classified (empty, pickle, zip, truncated, corrupt).
    """
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = (
            _parse_safetensors_header(handle.read(length))
            if 2 <= length <= min(size - 8, SAFETENSORS_MAX_HEADER)
            else None
        )
        start = handle.read(1) if header is None and length > size - 8 else b""
    if header is None:
        raise V2TError(f"{file} {_not_safetensors(head, size, length, start)}")
    data_size = size - 8 - length
    end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if end > data_size:
        raise V2TError(
            f"{file} is truncated: its header places tensor data up to byte {end} but only "
            f"{data_size} bytes of data follow it; {REWRITE}"
        )
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            keys = list(handle.keys())
            if keys:
                handle.get_tensor(keys[-1])
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise V2TError(f"{file} is a corrupt safetensors file ({first_line(exc, 120)}): {REWRITE}") from exc


def _check_finite(file: Path) -> None:
    """Raise naming the first tensor of ``file`` that holds NaN or inf: such weights decode to empty or wrong
    text with no error at all."""
    import torch
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        for key in handle.keys():
            tensor = handle.get_tensor(key)
            bad = int((~torch.isfinite(tensor)).sum()) if tensor.is_floating_point() else 0
            if bad:
                raise V2TError(
                    f"{file}: tensor {key!r} holds {bad} NaN or inf value(s) (of {tensor.numel()}): the "
                    "weights are broken (training diverged, or the file was damaged); use an earlier "
                    "checkpoint or train again"
                )


def _check_lora_shapes(file: Path, peft_config: dict) -> None:
    """Raise naming a LoRA tensor that cannot be a rank-r update: ``lora_A`` is (r, in_features) and ``lora_B``
    (out_features, r), with r from adapter_config.json. The sizes that depend on the base are checked when the
    base is there (see :func:`lora_load_errors`)."""
    from safetensors import safe_open

    rank = peft_config.get("r")
    check_rank = isinstance(rank, int) and not peft_config.get("rank_pattern")  # per-layer ranks: base load checks
    with safe_open(str(file), framework="pt") as handle:
        for key in handle.keys():
            part = (
                "A"
                if ".lora_A." in key or ".lora_embedding_A" in key
                else "B"
                if ".lora_B." in key or ".lora_embedding_B" in key
                else None
            )
            if part is None:
                continue
            shape = list(handle.get_slice(key).get_shape())
            if len(shape) != 2 or (check_rank and shape[0 if part == "A" else 1] != rank):
                expected = "(r, in_features)" if part == "A" else "(out_features, r)"
                raise V2TError(
                    f"{file}: tensor {key!r} has shape {shape}, but a LoRA {part} matrix is {expected} "
                    f"with r={rank} (adapter_config.json): the bundle is corrupt; {REWRITE}"
                )


@contextmanager
def lora_load_errors(path: Path, name: str):
    """Turn peft's "size mismatch" (a LoRA tensor that does not fit the base's layer) into one line naming it."""
    try:
        yield
    except RuntimeError as exc:
        match = re.search(
            r"size mismatch for (\S+?): copying a param with shape torch\.Size\((\[[^\]]*\])\) from "
            r"checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)",
            str(exc),
        )
        if match is None:
            raise
        key, found, needed = match.groups()
        raise V2TError(
            f"{path / 'adapter_model.safetensors'}: tensor {key.replace(f'.{name}.', '.')!r} has shape "
            f"{found} but the base's layer takes {needed}: the bundle is corrupt or was made for another "
            f"base; {REWRITE}"
        ) from exc


def _parse_safetensors_header(raw: bytes) -> dict | None:
    """The tensor entries of a safetensors JSON header, or None when ``raw`` is not such a header."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(header, dict) or not raw.lstrip().startswith(b"{"):
        return None
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    for entry in entries.values():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]
        ):
            return None
    return entries


def _not_safetensors(head: bytes, size: int, length: int, after_length: bytes) -> str:
    """What a file without a valid safetensors header is, and the fix (the end of a one-line message)."""
    if size == 0:
        return f"is empty (0 bytes): the adapter was not written completely; {REWRITE}"
    if head[:4] == b"PK\x03\x04":
        return f"is a zip archive (torch.save's default format, pickle inside), not safetensors: {NO_PICKLE}"
    if length > size - 8 and after_length == b"{":  # before the pickle test: a header length may start 0x80 0x02
        return (
            f"is truncated: its header alone should take {length} bytes but only {size - 8} follow its "
            f"length; {REWRITE}"
        )
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in PICKLE_PROTOCOLS:
        return f"is a pickle file (protocol {head[1]}, e.g. torch.save's legacy format), not safetensors: {NO_PICKLE}"
    if size < 8:
        return f"is truncated: {size} bytes, less than a safetensors header length; {REWRITE}"
    return f"is corrupt: not a safetensors file (no valid header; it starts with bytes {head.hex(' ')}); {REWRITE}"


def check_compatible(config: BundleConfig, backbone_info: dict, path: Path) -> None:
    """Raise if the bundle was made for a base with another hidden or vocabulary size."""
    made = config.backbone
    for key in ("hidden_size", "vocab_size"):
        if getattr(made, key) != backbone_info[key]:
            raise V2TError(
                f"adapter {path} was made for backbone {made.name!r} with {key} {getattr(made, key)}, but "
                f"the loaded base {backbone_info['name']!r} has {key} {backbone_info[key]}: load it on its own base"
            )


def check_encoder(config: BundleConfig, encoder, path: Path) -> None:
    """Raise if a user-given encoder makes vectors of another dimension than the bundle's."""
    dim = config.encoder.dim
    if encoder.dim != dim:
        raise V2TError(
            f"adapter {path} expects {dim}-d vectors from {config.encoder.spec!r}, but "
            f"encoder {encoder.spec!r} makes {encoder.dim}-d vectors: use the adapter's encoder"
        )


# ---------------------------------------------------------------------- loading onto a loaded base
def load_into(v2t: Vector2Text, path: str | Path, name: str, revision: str | None = None) -> None:
    """Load a bundle (a folder or hub id) as adapter ``name`` onto the base ``v2t`` already holds; the active
    adapter stays."""
    if name in v2t.adapters:
        raise V2TError(f"an adapter named {name!r} is already loaded: pick another name or delete it first")
    path = resolve_adapter(path, revision)
    config = validate_bundle(path)
    if config.full or not v2t.is_peft:
        raise V2TError(
            f"{path} or the loaded model is a fully fine-tuned model, not an adapter: "
            "load it on its own with load_adapter(path)"
        )
    check_compatible(config, v2t.backbone_info, path)
    trained = config.backbone.quantization
    if trained is not None and trained != v2t.backbone_info["quantization"]:
        logger.warning(
            "adapter %s was trained with quantization %s; the loaded base uses %s: its outputs may "
            "differ from those it was measured with",
            path,
            trained,
            v2t.backbone_info["quantization"],
        )
    try:
        with lora_load_errors(path, name):
            v2t.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        attach(v2t, path, name, config)
    except BaseException:  # leave no half-loaded adapter behind
        if name in v2t.model.peft_config:
            v2t.model.delete_adapter(name)
        for registry in (v2t.projectors, v2t.output_vocabs, v2t.adapter_meta):
            if name in registry:
                del registry[name]
        raise


def attach(v2t: Vector2Text, path: Path, name: str, config: BundleConfig) -> None:
    """Create adapter ``name``'s projector from the bundle and record its metadata (a failure may leave parts
    registered: :func:`load_into` removes them, :func:`lora_v2t.bundle.loading.load_adapter` discards the whole
    model)."""
    from safetensors.torch import load_file

    projector = v2t.add_projector(name, config.projector.config(), projector_input_dim(config.encoder.dim, config.role))
    state = load_file(str(path / "projector.safetensors"))
    try:
        projector.load_state_dict({k: v.to(projector.target_rms.device) for k, v in state.items()})
    except RuntimeError as exc:
        raise V2TError(
            f"{path / 'projector.safetensors'} does not match its v2t_config.json "
            f"({first_line(exc, 120)}): the bundle is corrupt"
        ) from exc
    if config.output_vocab_size is not None:
        ids = load_file(str(path / OUTPUT_VOCAB_FILE)).get("token_ids")
        if ids is None or ids.numel() != config.output_vocab_size:
            raise V2TError(
                f"{path / OUTPUT_VOCAB_FILE} does not hold the {config.output_vocab_size} token ids "
                "its v2t_config.json announces: the bundle is corrupt"
            )
        try:
            v2t.set_output_vocab(ids, name=name)
        except V2TError as exc:
            raise V2TError(f"{path / OUTPUT_VOCAB_FILE}: {exc}") from exc
    v2t.adapter_meta[name] = AdapterMeta.of_bundle(config, source=str(path))  # a corrector it names is beside it
