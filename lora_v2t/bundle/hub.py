"""The Hugging Face hub: adapters by hub id, and the hub ids of base models (:mod:`lora_v2t.bundle.push` uploads).

    v2t = load_adapter("org/name")                    # downloaded once, then read from the local hub cache
    v2t = load_adapter("org/name", revision="v1")     # a branch, tag or commit

A local folder always wins over a hub id of the same spelling. Downloads go through ``huggingface_hub`` (its cache,
``HF_HUB_OFFLINE``, ``HF_TOKEN`` and ``hf auth login`` apply); every failure is one :class:`V2TError` line.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .. import __version__
from ..bundle.layout import BUNDLE_FILES, OUTPUT_VOCAB_FILE
from ..config import OFFLINE_BACKBONE
from ..util.errors import V2TError, first_line

logger = logging.getLogger(__name__)

# the hub model an offline backbone was converted from (the offline Gemma is the Q4_K_M GGUF of this one)
OFFLINE_HUB_IDS = {OFFLINE_BACKBONE: "google/gemma-3-270m"}
# what a bundle holds on the hub (a fully fine-tuned baseline adds backbone/): downloads and pushes keep to these
BUNDLE_PATTERNS = [*BUNDLE_FILES, OUTPUT_VOCAB_FILE, "backbone/*"]
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"{_PART}/{_PART}")
_MODEL_ID = re.compile(rf"(?:{_PART}/)?{_PART}")  # backbones may also be legacy ids without a namespace (gpt2)
LOGIN = "log in with `hf auth login` or set HF_TOKEN"


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is spelled like a hub repository id ``org/name`` (it may still not exist)."""
    return bool(_REPO_ID.fullmatch(name)) and "--" not in name and ".." not in name


def offline_mode() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE=1``, read when it was imported)."""
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(check()) if check is not None else bool(constants.HF_HUB_OFFLINE)


# ---------------------------------------------------------------------- loading by hub id
def resolve_adapter(source: str | Path, revision: str | None = None) -> Path:
    """The local folder of an adapter bundle given as a folder or a hub id ``org/name``.

    An existing folder wins over a hub id of the same spelling, and a :class:`~pathlib.Path` is always a folder.
    A hub id is downloaded (only the bundle's files) into the local hub cache, or read from it when it is there
    already or the hub cannot be reached (``HF_HUB_OFFLINE=1`` never tries the network).

    Args:
        source: a bundle folder, or a hub repository id.
        revision: for a hub id, a branch, tag or commit (default: main).

    Raises:
        V2TError: one line saying which: no such folder, not in the local cache while offline, no such repository
            or revision on the hub, or a network error; and how to fix it.
    """
    if not isinstance(source, (str, Path)) or not str(source).strip():
        raise V2TError(f"an adapter is a bundle folder or a hub id 'org/name', got {source!r}")
    path = Path(source).expanduser()
    if path.exists():
        if revision is not None:
            raise V2TError(
                f"{source} is a local folder (a folder wins over a hub id of the same spelling), but "
                f"revision {revision!r} applies to hub ids only: drop the revision, or run from "
                "another directory to load the hub repository"
            )
        return path
    if isinstance(source, Path) or not is_hub_id(str(source)):
        raise V2TError(
            f"adapter folder {source} does not exist, and it is not a hub id (org/name): give a bundle "
            "folder or a hub repository id"
        )
    return Path(_download(str(source), revision))


def _download(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hub_errors

    where = repo_id + (f" at revision {revision!r}" if revision else "")
    nothing = f"no folder {repo_id} here"
    incomplete = getattr(hub_errors, "IncompleteSnapshotError", ())
    try:
        return snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=BUNDLE_PATTERNS,
            library_name="lora_v2t",
            library_version=__version__,
        )
    except hub_errors.RevisionNotFoundError as exc:
        raise V2TError(
            f"{nothing}, and the hub repository {repo_id} has no revision {revision!r}: give one of "
            "its branches, tags or commits"
        ) from exc
    except hub_errors.GatedRepoError as exc:
        raise V2TError(
            f"{nothing}, and the hub repository {repo_id} is gated: accept its terms on "
            f"huggingface.co/{repo_id}, then {LOGIN}"
        ) from exc
    except hub_errors.RepositoryNotFoundError as exc:
        raise V2TError(
            f"{nothing}, and the hub has no repository {repo_id} (or it is private: {LOGIN}): "
            "check the id, or give the bundle's folder"
        ) from exc
    except incomplete as exc:
        raise V2TError(
            f"{nothing}, and the local hub cache holds an incomplete copy of {where}: connect to the "
            "internet (HF_HUB_OFFLINE unset) once to complete it"
        ) from exc
    except hub_errors.LocalEntryNotFoundError as exc:
        if offline_mode():
            raise V2TError(
                f"{nothing}, and hub id {where} is not in the local hub cache ({constants.HF_HUB_CACHE}) "
                "while HF_HUB_OFFLINE is set: unset HF_HUB_OFFLINE and connect once to download it, "
                "or give the bundle's folder"
            ) from exc
        cause = exc.__cause__ or exc
        if isinstance(cause, hub_errors.HfHubHTTPError):  # the hub answered, with an error status
            status = getattr(getattr(cause, "response", None), "status_code", None)
            raise V2TError(
                f"{nothing}, and the hub answered HTTP {status or '?'} for {where} "
                f"({first_line(cause, 200)}): {_HTTP_HINTS.get(status or 0, 'try again later')}"
            ) from exc
        raise V2TError(
            f"{nothing}, and the hub could not be reached to download {where} (network error: "
            f"{first_line(cause, 200)}) nor is it in the local hub cache: check the connection (or "
            "HF_ENDPOINT) and try again, or give the bundle's folder"
        ) from exc
    except hub_errors.HfHubHTTPError as exc:
        raise V2TError(
            f"{nothing}, and the hub refused to send {where} ({first_line(exc, 200)}): {LOGIN} with "
            "an account that may read it"
        ) from exc
    except ValueError as exc:  # an id the hub's own validation refuses
        raise V2TError(
            f"adapter folder {repo_id} does not exist, and it is not a valid hub id "
            f"({first_line(exc, 200)}): give a bundle folder or a hub repository id"
        ) from exc
    except Exception as exc:
        if not network_error(exc):
            raise
        raise V2TError(
            f"{nothing}, and downloading {where} from the hub failed (network error: "
            f"{first_line(exc, 200)}): check the connection and try again"
        ) from exc


_HTTP_HINTS = {403: f"{LOGIN} with an account that may read it", 429: "too many requests: wait, then try again"}


def network_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a transport failure: an OSError, or an error of the HTTP client huggingface_hub uses
    (httpx or its fork httpx2 and their httpcore; requests and urllib3 in huggingface_hub < 1.0)."""
    package = type(exc).__module__.split(".")[0].rstrip("0123456789")
    return isinstance(exc, OSError) or package in ("httpx", "httpcore", "requests", "urllib3")


# ---------------------------------------------------------------------- names
def backbone_hub_id(name: str) -> str | None:
    """The hub id a backbone is known by outside this machine, or None when it has none.

    A hub id is itself; an offline backbone is the hub model it was converted from; a folder inside a hub cache
    (``.../models--org--name/snapshots/<commit>``) is that repository; other local folders and files have none.
    """
    if name in OFFLINE_HUB_IDS:
        return OFFLINE_HUB_IDS[name]
    path = Path(name).expanduser()
    if path.exists() or path.is_absolute() or name.startswith((".", "~")) or path.suffix == ".gguf":
        for part in reversed(path.parts):
            if part.startswith("models--") and len(part) > len("models--"):
                return part.removeprefix("models--").replace("--", "/")
        return None
    return name if _MODEL_ID.fullmatch(name) and not name.startswith("offline:") else None


def peft_base_name(name: str) -> str:
    """What ``adapter_config.json`` names the base by: its hub id, else the local folder's or file's name (never
    an absolute path, which means nothing on another machine)."""
    return backbone_hub_id(name) or Path(name).name or name
