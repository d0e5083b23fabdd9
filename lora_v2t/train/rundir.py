"""The run folder: where it is, what is checked before anything loads, one run at a time in it (a lock), and
where a run starts from (a new run, or the newest good checkpoint)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

from ..bundle.adapter import validate_bundle
from ..bundle.hub import resolve_adapter
from ..config import RunConfig
from ..model.backbone import check_backbone_name, checkpoints_dir
from ..train.checkpoint import RUN_FOLDER, check_same_recipe, list_checkpoints, newest_good_checkpoint
from ..util.errors import V2TError
from ..util.files import temporary_of
from ..util.locks import FileLock, LockBusy
from ..util.textfile import refuse_special

logger = logging.getLogger(__name__)

RUN_LOCK = ".lock"  # held by the main process of the run training in the folder
RUN_FILES = ("recipe.yaml", "metrics.jsonl", "loss.png", RUN_LOCK)  # beside step-NNNNNN/, final/ and temporaries
DAMAGED = re.compile(r"^damaged-step-\d{6}(-\d+)?$")  # a damaged checkpoint set aside (see newest_good_checkpoint)


def run_dir_of(cfg: RunConfig) -> Path:
    return Path(cfg.training.output_dir or checkpoints_dir() / "runs") / cfg.training.run_name


def cache_dir_of(cfg: RunConfig) -> Path:
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else checkpoints_dir() / "cache"


def check_paths(cfg: RunConfig, run_dir: Path, names: Mapping[str, str] | None = None) -> None:
    """Before anything loads: the backbone names a base that can exist, the corpus files can be read, and the run
    folder and the embedding cache can be written (or created). ``names``: what the user typed for a recipe key,
    named in the messages instead of the key (the demo's ``--corpus``, ``--output-dir``)."""

    def name(key: str) -> str:
        return (names or {}).get(key, key)

    check_backbone_name(cfg.backbone.name)
    cfg.data.check_train()
    if cfg.training.init_adapter:  # a bundle that is there and whole, before hours of embedding
        validate_bundle(resolve_adapter(cfg.training.init_adapter))
    for key, path in (("data.train", cfg.data.train), ("data.val", cfg.data.val)):
        if not path:
            continue
        key = name(key)
        if os.path.isdir(path):
            raise V2TError(
                f"corpus {path} ({key}) is a folder, not a file: give a UTF-8 text file with one sentence per line"
            )
        refuse_special(path, "corpus", f" ({key})")
        if not os.path.isfile(path):
            raise V2TError(f"corpus {path} ({key}) does not exist: give a UTF-8 text file with one sentence per line")
        if not os.access(path, os.R_OK):
            raise V2TError(
                f"cannot read corpus {path} ({key}): permission denied; make it readable "
                f"(chmod a+r {path}) or give another file"
            )
    for what, folder, key in (
        ("run folder", run_dir, name("training.output_dir")),
        ("embedding cache", cache_dir_of(cfg), name("data.cache_dir")),
    ):
        existing = Path(folder)
        while not os.path.exists(existing) and existing != existing.parent:
            existing = existing.parent
        home = os.environ.get("LORA_V2T_HOME")
        cause = (
            f"; it comes from LORA_V2T_HOME={home}: point LORA_V2T_HOME at a folder, or"
            if home and Path(folder).is_relative_to(home) and key != "LORA_V2T_HOME"
            else ";"
        )
        if not os.path.isdir(existing):
            raise V2TError(
                f"cannot create the {what} {folder}: {existing} is a file, not a folder{cause} set {key} to a folder"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise V2TError(
                f"cannot write the {what} {folder}: {existing} is not writable (permission denied)"
                f"{cause} set {key} to a writable folder or change its permissions"
            )


def check_run_folder(cfg: RunConfig, run_dir: Path, resume: bool | str | Path) -> None:
    """Before the run folder is locked or anything in it touched: ``--resume`` needs the folder of a training run
    (one holding ``recipe.yaml``, a checkpoint or ``final/``); a new run needs a new folder or one holding only
    what a run writes (what a run that stopped early left)."""
    if resume:
        if not run_dir.is_dir():
            raise V2TError(
                f"nothing to resume: {run_dir} is not a folder; give --resume the folder of a training run "
                "(<training.output_dir>/<training.run_name>)"
            )
        if not is_run_folder(run_dir):
            raise V2TError(
                f"{run_dir} is not the folder of a training run (it holds no recipe.yaml, step-NNNNNN "
                "checkpoint or final/): give --resume the folder a run wrote; nothing in it was touched"
            )
        return
    foreign = [p.name for p in sorted(run_dir.iterdir()) if not is_run_entry(p.name, cfg)] if run_dir.is_dir() else []
    if foreign:
        raise V2TError(
            f"run folder {run_dir} holds files a training run does not write ({', '.join(foreign[:5])}): "
            "choose another --training.run_name or --training.output_dir"
        )


def is_run_folder(folder: Path) -> bool:
    """Whether a folder was written by a training run."""
    return (
        (folder / "recipe.yaml").is_file()
        or (folder / "final" / "v2t_config.json").is_file()
        or any(RUN_FOLDER.match(p.name) for p in folder.glob("step-*"))
    )


def is_run_entry(name: str, cfg: RunConfig) -> bool:
    """Whether a name in a run folder is one a run writes (TensorBoard's folder is named after the run)."""
    temporary = temporary_of(name)
    return (
        name in RUN_FILES
        or name == cfg.training.run_name
        or bool(RUN_FOLDER.match(name))
        or bool(DAMAGED.match(name))
        or (temporary is not None and bool(RUN_FOLDER.match(temporary[0])))
    )


def finished_run(cfg: RunConfig, run_dir: Path) -> Path | None:
    """The ``final/`` bundle of a run with nothing left to do under ``cfg`` (None otherwise): ``final/`` was written
    at the step of the newest checkpoint, and that step reached ``training.max_steps`` (or the run spent
    ``training.max_minutes``). Refuses a run made by another recipe."""
    final, checkpoints = run_dir / "final", list_checkpoints(run_dir)
    if not checkpoints or not (final / "v2t_config.json").is_file():
        return None
    try:
        steps = json.loads((final / "v2t_config.json").read_text(encoding="utf-8"))["training"]["steps"]
        saved = json.loads((checkpoints[-1] / "trainer_state.json").read_text(encoding="utf-8"))
        state = saved["state"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # let --resume find out what is wrong
    check_same_recipe(saved["recipe"], cfg.to_dict(), run_dir, saved.get("data_files"))
    tc = cfg.training
    timed_out = tc.max_minutes is not None and state.get("elapsed_s", 0) >= tc.max_minutes * 60
    if steps != state.get("step") or not (state["step"] >= tc.max_steps or timed_out):
        return None
    logger.info(
        "%s is finished: it trained %d of training.max_steps=%d steps%s, and %s holds its adapter; nothing "
        "to do (raise training.max_steps or training.max_minutes to train it further)",
        run_dir,
        state["step"],
        tc.max_steps,
        f" in its {tc.max_minutes:g} minutes" if timed_out else "",
        final,
    )
    return final


def locate_run(cfg: RunConfig, run_dir: Path, resume: bool | str | Path) -> Path | None:
    """The checkpoint to resume from (None for a new run): the newest good one (a damaged newer one is named
    in a warning); refuses what cannot work."""
    if not resume:
        if list_checkpoints(run_dir) or (run_dir / "final").exists():
            raise V2TError(
                f"run folder {run_dir} already holds a run: pass --resume to continue it, or choose "
                "another --training.run_name"
            )
        return None
    checkpoint, trainer_state = newest_good_checkpoint(run_dir)
    check_same_recipe(trainer_state["recipe"], cfg.to_dict(), run_dir, trainer_state.get("data_files"))
    return checkpoint


class RunDirLock:
    """``<run_dir>/.lock``, held by the main process for the whole run (an exclusive lock that ends with the
    process, however it ends): a second run into the same folder fails at once, naming this one's pid."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.lock: FileLock | None = None
        self.created: list[Path] = []

    def acquire(self) -> None:
        self.created = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]  # deepest first
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.lock = FileLock(self.run_dir / RUN_LOCK).acquire()
        except LockBusy as busy:
            holder = f"pid {busy.pid}" if busy.pid else "another process"
            raise V2TError(
                f"run folder {self.run_dir} is in use by another training run ({holder}): wait for it to "
                "end (or stop it), or choose another --training.run_name"
            ) from None
        except OSError as exc:
            raise V2TError(
                f"cannot write the run folder {self.run_dir}: {exc.strerror or exc}; set "
                "training.output_dir to a writable folder"
            ) from exc

    def release(self) -> None:
        """Let go of the lock; remove the folders this run created again where it left them empty."""
        if self.lock is None:
            return
        self.lock.release()
        self.lock = None
        with contextlib.suppress(OSError):
            for folder in self.created:
                folder.rmdir()  # only succeeds when empty
