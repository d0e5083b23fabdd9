"""Adapter bundles: save, validate, and load onto an already loaded base (:mod:`lora_v2t.bundle.loading` loads one
with its base).

A bundle is a folder:

| file | what |
|---|---|
| ``adapter_config.json``, ``adapter_model.safetensors`` | LoRA in peft's own format |
| ``projector.safetensors`` | projector weights |
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

from .. import __version__
from ..bundle.cards import bundle_card
from ..bundle.hub import backbone_hub_id, peft_base_name, resolve_adapter
from ..bundle.layout import BUNDLE_FILES, CORRECTOR_FORMAT_VERSION, FORMAT_VERSION, FULL_MODEL_FILES, OUTPUT_VOCAB_FILE
from ..config import BASE_QUANTIZATIONS, PRECISION_KEYS, ROLES, GenerationConfig, ProjectorConfig, role_of
from ..model.projector import projector_input_dim
from ..util.errors import V2TError, first_line
from ..util.files import atomic_folder, refuse_foreign

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SAFETENSORS_MAX_HEADER = 100 * 2**20  # safetensors refuses JSON headers above 100 MB
PICKLE_PROTOCOLS = range(2, 6)  # a binary pickle starts with 0x80 and its protocol byte (torch.save's legacy format)
REWRITE = "save or copy the adapter again"
NO_PICKLE = "lora_v2t never loads pickle; convert it with safetensors.torch.save_file"


# ---------------------------------------------------------------------- saving
def save_adapter(v2t, path: str | Path, training: dict | None = None) -> Path:
    """Write the active adapter of ``v2t`` as a bundle at ``path`` (replacing an older bundle there)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / "v2t_config.json").exists())):
        raise V2TError(f"{path} exists and is not an adapter bundle: choose a new or empty folder")
    refuse_foreign(path, BUNDLE_FILES + FULL_MODEL_FILES + (OUTPUT_VOCAB_FILE,), "an adapter bundle",
                   "move them away, or save the adapter to another folder")
    name = v2t.active_adapter
    if training:
        v2t.adapter_meta[name]["training"].update(training)
    with atomic_folder(path) as tmp:
        if not v2t.is_peft:
            v2t.base_model.save_pretrained(tmp / "backbone")
            v2t.tokenizer.save_pretrained(tmp / "backbone")
        else:
            _save_lora(v2t.model, name, tmp)
        if v2t.is_peft and name != "default":  # peft writes non-default adapters into a subfolder named after them
            for item in (tmp / name).iterdir():
                item.replace(tmp / item.name)
            (tmp / name).rmdir()
        state = {k: v.detach().to("cpu").contiguous() for k, v in v2t.projector.state_dict().items()}
        save_file(state, str(tmp / "projector.safetensors"), metadata={"format": "pt"})
        if v2t.output_vocab is not None:
            save_file({"token_ids": v2t.output_vocab.to("cpu").contiguous()}, str(tmp / OUTPUT_VOCAB_FILE),
                      metadata={"format": "pt"})
        config = bundle_config(v2t)
        (tmp / "v2t_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
        if v2t.is_peft:  # name the base by its hub id, never by a local path (peft writes where it was loaded from)
            _set_peft_base(tmp / "adapter_config.json", config["backbone"]["name"])
        bundle_card(config).save(tmp / "README.md")  # a huggingface_hub ModelCard: metadata header, then the text
        expected = (BUNDLE_FILES if v2t.is_peft else FULL_MODEL_FILES) + (OUTPUT_VOCAB_FILE,)
        for item in tmp.iterdir():
            if item.name not in expected:
                item.unlink()
    logger.debug("saved adapter %r to %s", name, path)
    return path


def _save_lora(peft_model, name: str, folder: Path) -> None:
    """peft's save of adapter ``name``, with its config naming the base by the folder it was loaded from while peft
    saves: peft's vocabulary check then reads that folder's config.json instead of asking the hub about the hub id
    a loaded bundle's adapter_config.json names (see :func:`_set_peft_base`)."""
    config = peft_model.peft_config[name]
    named = config.base_model_name_or_path
    config.base_model_name_or_path = peft_model.get_base_model().name_or_path or named
    try:
        peft_model.save_pretrained(folder, selected_adapters=[name], safe_serialization=True)
    finally:
        config.base_model_name_or_path = named


def _set_peft_base(file: Path, backbone_name: str) -> None:
    """Make peft's adapter_config.json name the base by its hub id (or its folder's name): peft records the path
    the base was loaded from, which means nothing on another machine (``AutoPeftModelForCausalLM`` reads it)."""
    config = json.loads(file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = peft_base_name(backbone_name)
    file.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def bundle_config(v2t) -> dict:
    """The content of ``v2t_config.json`` for the active adapter."""
    meta = v2t.meta
    backbone = {k: v2t.backbone_info[k] for k in ("name", "model_type", "hidden_size", "vocab_size")}
    backbone["hub_id"] = backbone_hub_id(backbone["name"])  # None for a local folder; see adapter_config.json
    # the precision the adapter was trained in, kept from its bundle; the loaded base's when it never said
    backbone |= meta.get("precision") or {k: v2t.backbone_info[k] for k in PRECISION_KEYS}
    role = role_of(meta)
    return {
        "format_version": CORRECTOR_FORMAT_VERSION if role == "corrector" else FORMAT_VERSION,
        "lora_v2t_version": __version__,
        "trainable": "lora" if v2t.is_peft else "full",
        "encoder": dict(meta["encoder"]),
        "backbone": backbone,
        "projector": v2t.projector.describe(),
        "lora": dict(meta["lora"]) if meta["lora"] else None,
        # the KV cache is a choice of the machine decoding, not of the adapter (and older readers do not know it)
        "generation": {k: v for k, v in meta["generation"].items() if k != "cache"},
        "output_vocab_size": None if v2t.output_vocab is None else int(v2t.output_vocab.numel()),
        "training": dict(meta["training"]),
        "role": role,
        "corrector": meta.get("corrector"),  # a hypothesizer's corrector: a folder relative to this one, or a hub id
        "context_tokens": meta.get("context_tokens"),  # a corrector's: how long a hypothesis it reads may be
    }


# ---------------------------------------------------------------------- validation
def validate_bundle(path: str | Path) -> dict:
    """Check a bundle folder's files and return its v2t_config; raise V2TError naming any problem.

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
        raise V2TError(f"cannot read adapter bundle {path}: permission denied on {exc.filename or path}; make it "
                       f"readable (e.g. chmod -R u+rX {path})") from exc


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
def _validated(path: Path, resolved: Path, stamp: tuple) -> dict:
    """:func:`_validate_bundle` of ``path`` (as the user spelled it, for the messages), remembered for the folder
    ``resolved`` as ``stamp`` found it; errors are not remembered."""
    return _validate_bundle(path)


def _validate_bundle(path: Path) -> dict:
    if not path.is_dir():
        raise V2TError(f"adapter folder {path} does not exist (or is not a folder)")
    if not (path / "v2t_config.json").is_file():
        if (path / "final").is_dir() or any(path.glob("step-*")):
            raise V2TError(f"{path} is a training run's folder, not an adapter: give {path / 'final'} (or one of "
                           "its step-NNNNNN checkpoints)")
        raise V2TError(f"adapter bundle {path} is missing v2t_config.json: it is incomplete or not a lora_v2t "
                       "adapter; save or copy it again")
    _refuse_pickle(path)
    config = _read_json(path / "v2t_config.json")
    full = config.get("trainable") == "full"
    required_files = ("projector.safetensors",) if full else (
        "adapter_config.json", "adapter_model.safetensors", "projector.safetensors")
    if full and not (path / "backbone" / "config.json").is_file():
        raise V2TError(f"{path} is a fully fine-tuned model but lacks backbone/config.json: copy it again")
    for required in required_files:
        if not (path / required).is_file():
            raise V2TError(f"adapter bundle {path} is missing {required}: it is incomplete; save or copy it again")
    vocab_size = config.get("output_vocab_size")
    if vocab_size is not None:
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
            raise V2TError(f"{path / 'v2t_config.json'}: output_vocab_size must be a positive integer or null, "
                           f"got {vocab_size!r}: the file is corrupt")
        if not (path / OUTPUT_VOCAB_FILE).is_file():
            raise V2TError(f"adapter bundle {path} is missing {OUTPUT_VOCAB_FILE} (its v2t_config.json names an "
                           "output vocabulary): it is incomplete; save or copy it again")
        required_files += (OUTPUT_VOCAB_FILE,)
    for name in required_files:
        if name.endswith(".safetensors"):
            _check_safetensors(path / name)
            if name != OUTPUT_VOCAB_FILE:
                _check_finite(path / name)
    if not full:
        _check_lora_shapes(path / "adapter_model.safetensors", _read_json(path / "adapter_config.json"))
    version = config.get("format_version")
    if not isinstance(version, int):
        raise V2TError(f"{path / 'v2t_config.json'} has no integer format_version: it is not a lora_v2t bundle")
    if version > CORRECTOR_FORMAT_VERSION:
        raise V2TError(f"adapter {path} uses bundle format {version}, newer than this lora_v2t reads "
                       f"({CORRECTOR_FORMAT_VERSION}): upgrade lora_v2t")
    if config.get("role", "hypothesizer") not in ROLES:
        raise V2TError(f"{path / 'v2t_config.json'}: role must be one of {', '.join(ROLES)}, got "
                       f"{config.get('role')!r}: the file is corrupt")
    if config.get("corrector") is not None and not isinstance(config["corrector"], str):
        raise V2TError(f"{path / 'v2t_config.json'}: corrector must be a folder or hub id (a string), got "
                       f"{config['corrector']!r}")
    for key in ("encoder", "backbone", "projector") + (() if full else ("lora",)):
        if not isinstance(config.get(key), dict):
            raise V2TError(f"{path / 'v2t_config.json'} lacks the '{key}' section: the file is corrupt")
    for section, key, kind in (("encoder", "spec", str), ("encoder", "dim", int), ("backbone", "name", str),
                               ("backbone", "hidden_size", int), ("backbone", "vocab_size", int)):
        if not isinstance(config[section].get(key), kind):
            raise V2TError(f"{path / 'v2t_config.json'} lacks {section}.{key} (a {kind.__name__}): "
                           "the file is corrupt")
    try:
        ProjectorConfig(kind=config["projector"]["kind"], prefix_length=config["projector"]["prefix_length"])
    except KeyError as exc:
        raise V2TError(f"{path / 'v2t_config.json'}: projector section lacks {exc}") from exc
    precision = config["backbone"]
    if precision.get("quantization") not in (None, *BASE_QUANTIZATIONS):
        raise V2TError(f"{path / 'v2t_config.json'}: backbone.quantization must be one of "
                       f"{', '.join(BASE_QUANTIZATIONS)}, got {precision['quantization']!r}: the file is corrupt")
    if precision.get("compute_dtype") not in (None, "float32", "bfloat16", "float16"):
        raise V2TError(f"{path / 'v2t_config.json'}: backbone.compute_dtype must be float32, bfloat16 or float16, "
                       f"got {precision['compute_dtype']!r}: the file is corrupt")
    try:
        GenerationConfig.of_bundle(config)
    except (V2TError, TypeError, AttributeError) as exc:  # a section that is not a mapping, unknown or bad values
        raise V2TError(f"{path / 'v2t_config.json'}: its generation defaults are not valid ({exc}); fix or remove "
                       "the 'generation' section (the defaults then apply)") from exc
    return config


def _refuse_pickle(path: Path) -> None:
    """Refuse a bundle holding any pickle-format file (``*.bin``, ``*.pt``...), in backbone/ too: lora_v2t
    loads safetensors only, and loading a pickle runs whatever code it holds."""
    pickled = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                     if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if pickled:
        raise V2TError(f"{path} holds pickle file(s) {pickled[:5]}: lora_v2t loads only safetensors; re-save the "
                       "weights with safetensors (save_pretrained(..., safe_serialization=True), "
                       "safetensors.torch.save_file) and remove the pickles")


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise V2TError(f"{file} is not valid JSON ({exc}): the bundle is corrupt; save or copy it again") from exc
    if not isinstance(data, dict):
        raise V2TError(f"{file} does not hold a JSON object: the bundle is corrupt")
    return data


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
        header = _parse_safetensors_header(handle.read(length)) if 2 <= length <= min(
            size - 8, SAFETENSORS_MAX_HEADER) else None
        start = handle.read(1) if header is None and length > size - 8 else b""
    if header is None:
        raise V2TError(f"{file} {_not_safetensors(head, size, length, start)}")
    data_size = size - 8 - length
    end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if end > data_size:
        raise V2TError(f"{file} is truncated: its header places tensor data up to byte {end} but only "
                       f"{data_size} bytes of data follow it; {REWRITE}")
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
                raise V2TError(f"{file}: tensor {key!r} holds {bad} NaN or inf value(s) (of {tensor.numel()}): the "
                               "weights are broken (training diverged, or the file was damaged); use an earlier "
                               "checkpoint or train again")


def _check_lora_shapes(file: Path, peft_config: dict) -> None:
    """Raise naming a LoRA tensor that cannot be a rank-r update: ``lora_A`` is (r, in_features) and ``lora_B``
    (out_features, r), with r from adapter_config.json. The sizes that depend on the base are checked when the
    base is there (see :func:`lora_load_errors`)."""
    from safetensors import safe_open

    rank = peft_config.get("r")
    check_rank = isinstance(rank, int) and not peft_config.get("rank_pattern")  # per-layer ranks: base load checks
    with safe_open(str(file), framework="pt") as handle:
        for key in handle.keys():
            part = "A" if ".lora_A." in key or ".lora_embedding_A" in key else \
                "B" if ".lora_B." in key or ".lora_embedding_B" in key else None
            if part is None:
                continue
            shape = list(handle.get_slice(key).get_shape())
            if len(shape) != 2 or (check_rank and shape[0 if part == "A" else 1] != rank):
                expected = "(r, in_features)" if part == "A" else "(out_features, r)"
                raise V2TError(f"{file}: tensor {key!r} has shape {shape}, but a LoRA {part} matrix is {expected} "
                               f"with r={rank} (adapter_config.json): the bundle is corrupt; {REWRITE}")


@contextmanager
def lora_load_errors(path: Path, name: str):
    """Turn peft's "size mismatch" (a LoRA tensor that does not fit the base's layer) into one line naming it."""
    try:
        yield
    except RuntimeError as exc:
        match = re.search(r"size mismatch for (\S+?): copying a param with shape torch\.Size\((\[[^\]]*\])\) from "
                          r"checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)", str(exc))
        if match is None:
            raise
        key, found, needed = match.groups()
        raise V2TError(f"{path / 'adapter_model.safetensors'}: tensor {key.replace(f'.{name}.', '.')!r} has shape "
                       f"{found} but the base's layer takes {needed}: the bundle is corrupt or was made for another "
                       f"base; {REWRITE}") from exc


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
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
                and offsets[0] <= offsets[1]):
            return None
    return entries


def _not_safetensors(head: bytes, size: int, length: int, after_length: bytes) -> str:
    """What a file without a valid safetensors header is, and the fix (the end of a one-line message)."""
    if size == 0:
        return f"is empty (0 bytes): the adapter was not written completely; {REWRITE}"
    if head[:4] == b"PK\x03\x04":
        return f"is a zip archive (torch.save's default format, pickle inside), not safetensors: {NO_PICKLE}"
    if length > size - 8 and after_length == b"{":  # before the pickle test: a header length may start 0x80 0x02
        return (f"is truncated: its header alone should take {length} bytes but only {size - 8} follow its "
                f"length; {REWRITE}")
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in PICKLE_PROTOCOLS:
        return f"is a pickle file (protocol {head[1]}, e.g. torch.save's legacy format), not safetensors: {NO_PICKLE}"
    if size < 8:
        return f"is truncated: {size} bytes, less than a safetensors header length; {REWRITE}"
    return (f"is corrupt: not a safetensors file (no valid header; it starts with bytes {head.hex(' ')}); "
            f"{REWRITE}")


def check_compatible(config: dict, backbone_info: dict, path: Path) -> None:
    """Raise if the bundle was made for a base with another hidden or vocabulary size."""
    made = config["backbone"]
    for key in ("hidden_size", "vocab_size"):
        if made.get(key) != backbone_info[key]:
            raise V2TError(
                f"adapter {path} was made for backbone {made.get('name')!r} with {key} {made.get(key)}, but "
                f"the loaded base {backbone_info['name']!r} has {key} {backbone_info[key]}: load it on its own base"
            )


def check_encoder(config: dict, encoder, path: Path) -> None:
    """Raise if a user-given encoder makes vectors of another dimension than the bundle's."""
    dim = config["encoder"].get("dim")
    if encoder.dim != dim:
        raise V2TError(f"adapter {path} expects {dim}-d vectors from {config['encoder'].get('spec')!r}, but "
                       f"encoder {encoder.spec!r} makes {encoder.dim}-d vectors: use the adapter's encoder")


# ---------------------------------------------------------------------- loading onto a loaded base
def load_into(v2t, path: str | Path, name: str, revision: str | None = None) -> None:
    """Load a bundle (a folder or hub id) as adapter ``name`` onto the base ``v2t`` already holds; the active
    adapter stays."""
    if name in v2t.adapters:
        raise V2TError(f"an adapter named {name!r} is already loaded: pick another name or delete it first")
    path = resolve_adapter(path, revision)
    config = validate_bundle(path)
    if config.get("trainable") == "full" or not v2t.is_peft:
        raise V2TError(f"{path} or the loaded model is a fully fine-tuned model, not an adapter: "
                       "load it on its own with load_adapter(path)")
    check_compatible(config, v2t.backbone_info, path)
    trained = config["backbone"].get("quantization")
    if trained is not None and trained != v2t.backbone_info["quantization"]:
        logger.warning("adapter %s was trained with quantization %s; the loaded base uses %s: its outputs may "
                       "differ from those it was measured with", path, trained, v2t.backbone_info["quantization"])
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


def attach(v2t, path: Path, name: str, config: dict) -> None:
    """Create adapter ``name``'s projector from the bundle and record its metadata (a failure may leave parts
    registered: :func:`load_into` removes them, :func:`lora_v2t.bundle.loading.load_adapter` discards the whole
    model)."""
    from safetensors.torch import load_file

    proj = config["projector"]
    cfg = ProjectorConfig(kind=proj["kind"], prefix_length=proj["prefix_length"], hidden_dim=proj.get("hidden_dim"))
    role = role_of(config)
    projector = v2t.add_projector(name, cfg, projector_input_dim(int(config["encoder"]["dim"]), role))
    state = load_file(str(path / "projector.safetensors"))
    try:
        projector.load_state_dict({k: v.to(projector.target_rms.device) for k, v in state.items()})
    except RuntimeError as exc:
        raise V2TError(f"{path / 'projector.safetensors'} does not match its v2t_config.json "
                       f"({first_line(exc, 120)}): the bundle is corrupt") from exc
    if config.get("output_vocab_size") is not None:
        ids = load_file(str(path / OUTPUT_VOCAB_FILE)).get("token_ids")
        if ids is None or ids.numel() != config["output_vocab_size"]:
            raise V2TError(f"{path / OUTPUT_VOCAB_FILE} does not hold the {config['output_vocab_size']} token ids "
                           "its v2t_config.json announces: the bundle is corrupt")
        try:
            v2t.set_output_vocab(ids, name=name)
        except V2TError as exc:
            raise V2TError(f"{path / OUTPUT_VOCAB_FILE}: {exc}") from exc
    v2t.adapter_meta[name] = {
        "encoder": dict(config["encoder"]),
        "lora": dict(config["lora"]) if config.get("lora") else None,
        "generation": dict(config.get("generation") or {}),
        "training": dict(config.get("training") or {}),
        "precision": {k: config["backbone"][k] for k in PRECISION_KEYS if k in config["backbone"]} or None,
        "role": role_of(config),
        "corrector": config.get("corrector"),
        "context_tokens": config.get("context_tokens"),
        "source": str(path),  # where it was loaded from: a corrector it names is found beside it
    }
