"""Training checkpoints: ``step-NNNNNN/`` folders that ``--resume`` continues from exactly.

A checkpoint is a complete adapter bundle (see :mod:`lora_v2t.bundle.adapter`) plus

- ``optimizer.safetensors``: the AdamW moments, and the random-number-generator states: the CPU's and those of
  every CUDA device, for every process of the run (``rng.torch``, ``rng.cuda.0`` ... for the main process,
  ``rng.rank1.torch`` ... for the others);
- ``trainer_state.json``: step, epoch, position in the epoch, sentences seen, wall time, the optimizer's layout
  and parameter groups, the scheduler, the fp16 loss scaler (when training in fp16), and the resolved recipe.

No pickle anywhere. A checkpoint is written to a temporary folder and renamed into place; only the last
``training.keep_checkpoints`` are kept. ``trainer_state.json`` also records a digest of the corpus files, so that a
run resumes where the corpus path is spelled differently (a copied run folder, another working folder) as long as
the files hold the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..bundle.adapter import _check_safetensors, validate_bundle
from ..bundle.layout import BUNDLE_FILES, FULL_MODEL_FILES, OUTPUT_VOCAB_FILE
from ..config import RunConfig
from ..util.errors import V2TError, first_line
from ..util.files import atomic_folder, folder_size, refuse_foreign, remove_own, temporary_of
from ..util.locks import pid_alive

if TYPE_CHECKING:
    from ..model.vector2text import Vector2Text

logger = logging.getLogger(__name__)

# recipe keys that may change when a run is resumed; any other difference means another recipe (output_dir,
# run_name and cache_dir only say where things are: a copied or moved run folder resumes under new ones)
RESUMABLE_CHANGES = {
    "training.max_steps",
    "training.max_minutes",
    "training.eval_every",
    "training.save_every",
    "training.keep_checkpoints",
    "training.log_every",
    "training.num_samples",
    "training.tensorboard",
    "training.output_dir",
    "training.run_name",
    "data.cache_dir",
    "training.gradient_checkpointing",
}  # recomputing activations does not change the maths
DATA_FILE_KEYS = ("data.train", "data.val")  # compared by content when their paths differ
TRAINER_STATE_KEYS = ("state", "optimizer_layout", "param_groups", "scheduler", "recipe")
# the folders a run writes under temporary names (.step-000200.tmp-PID, .final.old-PID ...: see util.files)
RUN_FOLDER = re.compile(r"^(final|step-\d{6})$")
OPTIMIZER_FILE, STATE_FILE = "optimizer.safetensors", "trainer_state.json"
CHECKPOINT_FILES = frozenset(BUNDLE_FILES + FULL_MODEL_FILES + (OUTPUT_VOCAB_FILE, OPTIMIZER_FILE, STATE_FILE))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders are ignored)."""
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.glob("step-*") if p.is_dir() and (p / "trainer_state.json").exists())


def check_same_recipe(saved: dict, current: dict, where: Path, data_files: dict | None = None) -> None:
    """Raise if a resume folder was made by a different recipe (beyond the keys that may change).

    Args:
        data_files: the checkpoint's digests of its corpus files (see :func:`data_file_digests`): a corpus path
            spelled differently is the same corpus when the file now there has the same digest.
    """
    a, b = _flatten(saved), _flatten(current)
    defaults = _flatten(RunConfig().to_dict())  # a setting added since the run was saved had its default then
    a = {**{k: v for k, v in defaults.items() if k not in a}, **a}
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] == "generation" or key in RESUMABLE_CHANGES:
            continue
        digests = data_files or {}
        if (
            key in DATA_FILE_KEYS
            and digests.get(key)
            and isinstance(b.get(key), str)
            and file_digest(b[key]) == digests[key]
        ):
            continue
        if a.get(key) != b.get(key):
            raise V2TError(
                f"resume folder {where} was made by another recipe: {key} was {a.get(key)!r}, now "
                f"{b.get(key)!r}; resume with the same recipe or start a new --training.run_name"
            )


def file_digest(path: str | Path) -> str | None:
    """SHA-256 of a file's bytes (None when it cannot be read)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def data_file_digests(cfg: RunConfig) -> dict[str, str | None]:
    """The digests of a recipe's corpus files, by recipe key, as checkpoints record them."""
    return {
        key: file_digest(path) for key, path in (("data.train", cfg.data.train), ("data.val", cfg.data.val)) if path
    }


def check_checkpoint(path: Path) -> dict:
    """The trainer state of a complete checkpoint; V2TError naming what is missing, truncated or corrupt.

    Reads the optimizer's header and sizes, and the adapter's small weight files (checked for NaN by
    :func:`~lora_v2t.bundle.adapter.validate_bundle`; under a second for the offline recipe), so that ``--resume`` can
    pick a good checkpoint before the models load."""
    config = validate_bundle(path)
    if config.full:
        for weights in sorted((path / "backbone").glob("*.safetensors")):
            _check_safetensors(weights)
    state_file, optimizer_file = path / "trainer_state.json", path / "optimizer.safetensors"
    try:
        trainer_state = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise V2TError(f"{state_file} is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise V2TError(f"{state_file} is not valid JSON ({first_line(exc)})") from exc
    if not isinstance(trainer_state, dict) or any(k not in trainer_state for k in TRAINER_STATE_KEYS):
        raise V2TError(f"{state_file} lacks some of {', '.join(TRAINER_STATE_KEYS)}")
    if not optimizer_file.is_file():
        raise V2TError(f"{optimizer_file} is missing")
    _check_safetensors(optimizer_file)
    from safetensors import safe_open

    with safe_open(str(optimizer_file), framework="pt") as handle:
        stored = set(handle.keys())
    try:
        wanted = {f"state.{idx}.{k}" for idx, keys in trainer_state["optimizer_layout"].items() for k in keys}
    except (AttributeError, TypeError):
        wanted = {""}  # not the layout save_checkpoint writes
    if not wanted <= stored:
        raise V2TError(f"{optimizer_file} lacks optimizer state that {state_file.name} lists")
    return trainer_state


def newest_good_checkpoint(run_dir: Path) -> tuple[Path, dict]:
    """The newest checkpoint of a run that :func:`check_checkpoint` accepts, and its trainer state.

    Damaged newer ones (a copy cut short, a disk error) are named in a warning and renamed ``damaged-step-NNNNNN``
    (kept for a look, but no longer checkpoints: pruning and rescue saves must not count them). Raises V2TError
    when none is good. Only call this while holding the run folder's lock."""
    damaged, found = [], list_checkpoints(run_dir)
    for path in reversed(found):
        try:
            trainer_state = check_checkpoint(path)
        except (V2TError, OSError) as exc:
            damaged.append((path, f"{path.name} is damaged: {first_line(exc)}"))
            continue
        if damaged:
            moved = [_set_aside(bad) for bad, _ in damaged]
            logger.warning(
                "resuming from %s, the newest good checkpoint, not from the newer %s (set aside as %s)",
                path.name,
                "; ".join(why for _, why in damaged),
                ", ".join(p.name for p in moved),
            )
        return path, trainer_state
    if not damaged:
        raise V2TError(f"nothing to resume in {run_dir}: it holds no step-NNNNNN checkpoint")
    raise V2TError(
        f"no checkpoint in {run_dir} can be resumed ({'; '.join(why for _, why in damaged)}): start a "
        "new run (another --training.run_name)"
    )


def _set_aside(checkpoint: Path) -> Path:
    """Rename a damaged checkpoint out of the ``step-*`` pattern (``damaged-step-NNNNNN``, numbered if taken)."""
    target, n = checkpoint.with_name(f"damaged-{checkpoint.name}"), 1
    while target.exists():
        n += 1
        target = checkpoint.with_name(f"damaged-{checkpoint.name}-{n}")
    checkpoint.rename(target)
    return target


def clean_stale_temporaries(run_dir: Path) -> None:
    """Tidy what processes killed while writing left in a run folder: the temporary ``.NAME.tmp-PID`` and
    ``.NAME.old-PID`` folders of the run's own folders (``step-NNNNNN``, ``final``) whose process no longer runs.

    A ``.NAME.tmp-PID`` is an unfinished write (the step is redone from the checkpoint before it) and is
    removed; a ``.NAME.old-PID`` is a folder that was being replaced: removed when ``NAME`` exists, put back as
    ``NAME`` when the kill fell between the two renames of the replacement, so nothing finished is lost. Any
    other name is left alone. Only call this while holding the run folder's lock."""
    for item in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        temporary = temporary_of(item.name)
        if temporary is None or not RUN_FOLDER.match(temporary[0]) or not item.is_dir() or pid_alive(temporary[1]):
            continue
        target = run_dir / temporary[0]
        if item.name == f".{target.name}.old-{temporary[1]}" and not target.exists():
            item.rename(target)
            logger.warning("put back %s, which a killed process (pid %s) was replacing", target, temporary[1])
        else:
            shutil.rmtree(item, ignore_errors=True)
            logger.info("removed %s, left by a killed process (pid %s)", item, temporary[1])


def _flatten(cfg: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


# ---------------------------------------------------------------------- random number generators
def rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states: the CPU generator and the generator of every CUDA device."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda.{index}"] = cuda_state
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`rng_state` returned (CUDA devices beyond this machine's count are skipped)."""
    torch.set_rng_state(state["torch"])
    if not torch.cuda.is_available():
        return
    if "cuda" in state:  # checkpoints written before every device was saved: the current device only
        torch.cuda.set_rng_state(state["cuda"])
    for index in range(torch.cuda.device_count()):
        if f"cuda.{index}" in state:
            torch.cuda.set_rng_state(state[f"cuda.{index}"], index)


def _rng_prefix(rank: int) -> str:
    return "rng." if rank == 0 else f"rng.rank{rank}."


def _rng_of_rank(tensors: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """The RNG states saved for process ``rank`` (the main process's when that rank's were not saved)."""
    prefix = _rng_prefix(rank)
    if f"{prefix}torch" not in tensors:
        logger.warning(
            "the checkpoint holds no RNG state of process %d (it was written when the run stopped): "
            "that process resumes from the main process's, so dropout will not repeat exactly",
            rank,
        )
        prefix = _rng_prefix(0)
    picked = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return {k: v for k, v in picked.items() if not k.startswith("rank")}  # not the other ranks' states


# ---------------------------------------------------------------------- save and load
def save_checkpoint(
    run_dir: Path,
    v2t: Vector2Text,
    optimizer,
    scheduler,
    state: dict,
    cfg: RunConfig,
    rng_states: list[dict[str, torch.Tensor]],
    summary: dict,
    scaler=None,
    data_files: dict | None = None,
) -> Path:
    """Write ``step-NNNNNN/`` atomically (bundle + optimizer + RNG + trainer state), then prune old ones.

    Args:
        rng_states: the RNG states of every process, in rank order (see :func:`rng_state`); a checkpoint
            written when a run stops holds the main process's only, and the others then resume from it.
        summary: the training summary recorded in the bundle's v2t_config.json.
        scaler: the fp16 ``GradScaler`` (None otherwise): its scale and growth tracker are saved.
        data_files: the digests of the corpus files (:func:`data_file_digests`), recorded for ``--resume``.
    """
    from safetensors.torch import save_file

    name = f"step-{state['step']:06d}"
    final = run_dir / name
    refuse_foreign(final, CHECKPOINT_FILES, "a checkpoint", "move them out of it, then continue with --resume")
    previous = list_checkpoints(run_dir)
    with atomic_folder(final, needed=folder_size(previous[-1]) if previous else None) as tmp:
        v2t.save_adapter(tmp, training=summary)
        tensors, layout = {}, {}
        for idx, param_state in optimizer.state_dict()["state"].items():
            layout[str(idx)] = sorted(param_state)
            for key, value in param_state.items():
                tensors[f"state.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        for rank, rng in enumerate(rng_states):
            tensors |= {f"{_rng_prefix(rank)}{key}": value.cpu().contiguous() for key, value in rng.items()}
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        trainer_state = {
            "state": state,
            "optimizer_layout": layout,
            "param_groups": optimizer.state_dict()["param_groups"],
            "scheduler": scheduler.state_dict(),
            "recipe": cfg.to_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "data_files": data_files,
        }
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1, default=str))
    for old in list_checkpoints(run_dir)[: -cfg.training.keep_checkpoints]:
        try:
            left = remove_own(old, CHECKPOINT_FILES, first=(STATE_FILE,))  # no longer a checkpoint from the first
        except OSError as exc:
            logger.warning("could not remove the old checkpoint %s: %s", old, first_line(exc))
            continue
        if left:
            logger.warning("pruned checkpoint %s, keeping what else it holds: %s", old, ", ".join(left))
    logger.info("checkpoint saved: %s", final)
    return final


def load_checkpoint(path: Path, v2t: Vector2Text, optimizer, scheduler, rank: int = 0, scaler=None) -> dict:
    """Restore LoRA (or the whole backbone), projector, optimizer, scheduler, the fp16 loss scaler and this
    process's RNG states from a checkpoint; return the trainer state."""
    from safetensors.torch import load_file

    validate_bundle(path)
    trainer_state = json.loads((path / "trainer_state.json").read_text())
    _load_weights(path, v2t)
    tensors = load_file(str(path / "optimizer.safetensors"))
    opt_state = {"state": {}, "param_groups": trainer_state["param_groups"]}
    for idx, keys in trainer_state["optimizer_layout"].items():
        opt_state["state"][int(idx)] = {k: tensors[f"state.{idx}.{k}"] for k in keys}
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(trainer_state["scheduler"])
    if scaler is not None and trainer_state.get("scaler"):
        scaler.load_state_dict(trainer_state["scaler"])
    set_rng_state(_rng_of_rank(tensors, rank))
    return trainer_state["state"]


def _load_weights(path: Path, v2t: Vector2Text) -> None:
    """Put a checkpoint's trained weights into the model being trained."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if v2t.is_peft:
        lora = load_file(str(path / "adapter_model.safetensors"), device=str(v2t.device))
        result = set_peft_model_state_dict(v2t.model, lora, adapter_name=v2t.active_adapter)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise V2TError(f"{path}: LoRA weights do not fit this model ({unexpected[:2]})")
    else:  # full fine-tuning: the whole backbone was saved
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(
            path / "backbone", dtype=v2t.base_model.dtype, use_safetensors=True
        )  # never a pickle
        v2t.base_model.load_state_dict(saved.state_dict())
        del saved
    v2t.projector.load_state_dict(load_file(str(path / "projector.safetensors"), device=str(v2t.device)))
