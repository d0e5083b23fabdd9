"""Pushing adapter bundles to the Hugging Face hub in one commit, with their model card.

v2t.push_to_hub("org/name", private=True)         # the active adapter, with its model card
lora-v2t push checkpoints/runs/mine/final org/name
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..bundle.adapter import validate_bundle
from ..bundle.cards import LIBRARY_NAME, bundle_card, complete_card
from ..bundle.hub import LOGIN, is_hub_id, network_error, offline_mode
from ..bundle.layout import BUNDLE_FILES, OUTPUT_VOCAB_FILE
from ..bundle.saving import save_adapter
from ..util.errors import V2TError, first_line

if TYPE_CHECKING:
    from ..model.vector2text import Vector2Text

logger = logging.getLogger(__name__)


def push_adapter(
    v2t: Vector2Text,
    repo_id: str,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Upload the active adapter of ``v2t`` to the hub repository ``repo_id`` (see :func:`push_folder`): it is
    saved into a temporary folder, with a model card whose examples load it from ``repo_id``."""
    _check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="lora_v2t-push-") as tmp:
        folder = save_adapter(v2t, Path(tmp) / "bundle")
        bundle_card(validate_bundle(folder), repo_id, revision).save(folder / "README.md")
        return push_folder(
            folder, repo_id, private=private, revision=revision, commit_message=commit_message, token=token
        )


def push_folder(
    folder: str | Path,
    repo_id: str,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Upload the bundle in ``folder`` to the hub repository ``repo_id`` in one commit; return the commit's URL.

    The folder is validated first (nothing is sent for a folder that is not a complete bundle), and only the
    bundle's files go (a training checkpoint's optimizer state stays). A README.md without the card metadata
    (written before lora_v2t wrote it) is uploaded with it filled in; the folder itself is not changed.

    Args:
        folder: the bundle folder.
        repo_id: ``org/name``; created if missing.
        private: create the repository private (an existing repository keeps its visibility).
        revision: the branch to commit to (created from main if missing; default: main).
        commit_message: the commit's message.
        token: a hub token with write access (default: ``HF_TOKEN`` or the one ``hf auth login`` saved).
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    config = validate_bundle(folder)
    _check_repo_id(repo_id)
    card = complete_card(folder, config)
    if not card.data.get("base_model"):
        logger.warning(
            "the model card names no base_model: backbone %r has no hub id (a local folder); the hub "
            "will not link this adapter to its base",
            config.backbone.name,
        )
    files, left_out = _bundle_files(folder, full=config.full)
    if left_out:
        logger.info("not uploaded (not part of a bundle): %s", ", ".join(left_out))
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode("utf-8")))
    api = HfApi(token=token, library_name=LIBRARY_NAME, library_version=__version__)
    target = repo_id + (f" (branch {revision})" if revision else "")
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(
            repo_id,
            operations=operations,
            revision=revision,
            commit_message=commit_message or f"Upload lora_v2t adapter ({len(files) + 1} files)",
        )
    except HfHubHTTPError as exc:
        raise V2TError(
            f"the hub refused to push {folder} to {target} ({first_line(exc, 200)}): {LOGIN} with a token "
            "that may write to it"
        ) from exc
    except Exception as exc:
        if not network_error(exc):
            raise
        if offline_mode():
            raise V2TError(f"cannot push {folder} to {target}: HF_HUB_OFFLINE is set; unset it to push") from exc
        raise V2TError(
            f"cannot push {folder} to {target} (network error: {first_line(exc, 200)}): check the "
            "connection and try again"
        ) from exc
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("pushed %s to %s: %s", folder, target, url)
    return url


def _check_repo_id(repo_id: str) -> None:
    if not is_hub_id(repo_id):
        raise V2TError(
            f"{repo_id!r} is not a hub repository id: give org/name (a user or organisation, a slash, "
            "the repository's name)"
        )


def _bundle_files(folder: Path, full: bool) -> tuple[list[str], list[str]]:
    """The bundle's files under ``folder`` (relative POSIX paths, README.md aside) and the other files there."""
    top = set(BUNDLE_FILES + (OUTPUT_VOCAB_FILE,)) - {"README.md"}
    files, others = [], []
    for item in sorted(folder.rglob("*")):
        if not item.is_file():
            continue
        rel = item.relative_to(folder)
        name = rel.as_posix()
        if name in top or (full and rel.parts[0] == "backbone" and not any(p.startswith(".") for p in rel.parts)):
            files.append(name)
        elif name != "README.md":
            others.append(name)
    return files, others
