"""The run folder: where it is, what is checked before anything loads, one run at a time in it (a lock), and
where a run starts from (a new run, or the newest good checkpoint)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..config import RunConfig
from ..model.backbone import check_backbone_name, checkpoints_dir
from ..train.checkpoint import check_same_recipe, list_checkpoints, newest_good_checkpoint
from ..util.errors import V2TError
from ..util.locks import FileLock, LockBusy

RUN_LOCK = ".lock"  # held by the main process of the run training in the folder


def run_dir_of(cfg: RunConfig) -> Path:
    return Path(cfg.training.output_dir or checkpoints_dir() / "runs") / cfg.training.run_name


def cache_dir_of(cfg: RunConfig) -> Path:
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else checkpoints_dir() / "cache"


def check_paths(cfg: RunConfig, run_dir: Path) -> None:
    """Before anything loads: the backbone names a base that can exist, the corpus files can be read, and the run
    folder and the embedding cache can be written (or created)."""
    check_backbone_name(cfg.backbone.name)
    cfg.data.check_train()
    for key, path in (("data.train", cfg.data.train), ("data.val", cfg.data.val)):
        if not path:
            continue
        if os.path.isdir(path):
            raise V2TError(f"corpus {path} ({key}) is a folder, not a file: give a UTF-8 text file with one sentence "
                           "per line")
        if not os.path.isfile(path):
            raise V2TError(f"corpus {path} ({key}) does not exist: give a UTF-8 text file with one sentence per line")
        if not os.access(path, os.R_OK):
            raise V2TError(f"cannot read corpus {path} ({key}): permission denied; make it readable "
                           f"(chmod a+r {path}) or give another file")
    for what, folder, key in (("run folder", run_dir, "training.output_dir"),
                              ("embedding cache", cache_dir_of(cfg), "data.cache_dir")):
        existing = Path(folder)
        while not os.path.exists(existing) and existing != existing.parent:
            existing = existing.parent
        if not os.path.isdir(existing):
            raise V2TError(f"cannot create the {what} {folder}: {existing} is a file, not a folder; set {key} to "
                           "a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise V2TError(f"cannot write the {what} {folder}: {existing} is not writable (permission denied); set "
                           f"{key} to a writable folder or change its permissions")


def locate_run(cfg: RunConfig, run_dir: Path, resume: bool | str | Path) -> Path | None:
    """The checkpoint to resume from (None for a new run): the newest good one (a damaged newer one is named
    in a warning); refuses what cannot work."""
    if not resume:
        if list_checkpoints(run_dir) or (run_dir / "final").exists():
            raise V2TError(f"run folder {run_dir} already holds a run: pass --resume to continue it, or choose "
                           "another --training.run_name")
        return None
    checkpoint, trainer_state = newest_good_checkpoint(run_dir)
    check_same_recipe(trainer_state["recipe"], cfg.to_dict(), run_dir, trainer_state.get("data_files"))
    return checkpoint




class RunDirLock:
    """``<run_dir>/.lock``, held by the main process for the whole run (an exclusive lock that ends with the
    process, however it ends): a second run into the same folder fails at once, naming this one's pid."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.lock, self.created = run_dir, None, False

    def acquire(self) -> None:
        self.created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.lock = FileLock(self.run_dir / RUN_LOCK).acquire()
        except LockBusy as busy:
            holder = f"pid {busy.pid}" if busy.pid else "another process"
            raise V2TError(f"run folder {self.run_dir} is in use by another training run ({holder}): wait for it to "
                           "end (or stop it), or choose another --training.run_name") from None
        except OSError as exc:
            raise V2TError(f"cannot write the run folder {self.run_dir}: {exc.strerror or exc}; set "
                           "training.output_dir to a writable folder") from exc

    def release(self) -> None:
        """Let go of the lock; remove the folder again if this run created it and left it empty."""
        if self.lock is None:
            return
        self.lock.release()
        self.lock = None
        if self.created:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()  # only succeeds when empty
