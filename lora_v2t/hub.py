"""The Hugging Face hub: adapters by hub id, and pushing bundles with a model card.

    v2t = load_adapter("org/name")                    # downloaded once, then read from the local hub cache
    v2t = load_adapter("org/name", revision="v1")     # a branch, tag or commit
    v2t.push_to_hub("org/name", private=True)         # the active adapter, with its model card
    lora-v2t push checkpoints/runs/mine/final org/name

A local folder always wins over a hub id of the same spelling. Downloads go through ``huggingface_hub`` (its cache,
``HF_HUB_OFFLINE``, ``HF_TOKEN`` and ``hf auth login`` apply); every failure is one :class:`V2TError` line.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

from . import __version__
from .adapter import BUNDLE_FILES, OUTPUT_VOCAB_FILE, model_card, save_adapter, validate_bundle
from .config import OFFLINE_BACKBONE
from .errors import V2TError, first_line

logger = logging.getLogger(__name__)

LIBRARY_NAME = "lora_v2t"
TAGS = ["lora_v2t", "embedding-inversion", "peft", "lora"]  # the last two only for LoRA adapters
# the hub model an offline backbone was converted from (the offline Gemma is the Q4_K_M GGUF of this one)
OFFLINE_HUB_IDS = {OFFLINE_BACKBONE: "google/gemma-3-270m"}
# what a bundle holds on the hub (a fully fine-tuned baseline adds backbone/): downloads and pushes keep to these
BUNDLE_PATTERNS = [*BUNDLE_FILES, OUTPUT_VOCAB_FILE, "backbone/*"]
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"{_PART}/{_PART}")
_MODEL_ID = re.compile(rf"(?:{_PART}/)?{_PART}")  # backbones may also be legacy ids without a namespace (gpt2)
_METRIC_KEY = re.compile(r"(?P<data>\S+) (?P<decoding>greedy|reranked) (?P<metric>\w+) \(n=\d+\)")
_LOGIN = "log in with `hf auth login` or set HF_TOKEN"


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
    path = Path(source).expanduser()
    if path.exists():
        if revision is not None:
            raise V2TError(f"{source} is a local folder (a folder wins over a hub id of the same spelling), but "
                           f"revision {revision!r} applies to hub ids only: drop the revision, or run from "
                           "another directory to load the hub repository")
        return path
    if isinstance(source, Path) or not is_hub_id(str(source)):
        raise V2TError(f"adapter folder {source} does not exist, and it is not a hub id (org/name): give a bundle "
                       "folder or a hub repository id")
    return Path(_download(str(source), revision))


def _download(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hub_errors

    where = repo_id + (f" at revision {revision!r}" if revision else "")
    nothing = f"no folder {repo_id} here"
    incomplete = getattr(hub_errors, "IncompleteSnapshotError", ())
    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=BUNDLE_PATTERNS,
                                 library_name=LIBRARY_NAME, library_version=__version__)
    except hub_errors.RevisionNotFoundError as exc:
        raise V2TError(f"{nothing}, and the hub repository {repo_id} has no revision {revision!r}: give one of "
                       "its branches, tags or commits") from exc
    except hub_errors.GatedRepoError as exc:
        raise V2TError(f"{nothing}, and the hub repository {repo_id} is gated: accept its terms on "
                       f"huggingface.co/{repo_id}, then {_LOGIN}") from exc
    except hub_errors.RepositoryNotFoundError as exc:
        raise V2TError(f"{nothing}, and the hub has no repository {repo_id} (or it is private: {_LOGIN}): "
                       "check the id, or give the bundle's folder") from exc
    except incomplete as exc:
        raise V2TError(f"{nothing}, and the local hub cache holds an incomplete copy of {where}: connect to the "
                       "internet (HF_HUB_OFFLINE unset) once to complete it") from exc
    except hub_errors.LocalEntryNotFoundError as exc:
        if offline_mode():
            raise V2TError(f"{nothing}, and hub id {where} is not in the local hub cache ({constants.HF_HUB_CACHE}) "
                           "while HF_HUB_OFFLINE is set: unset HF_HUB_OFFLINE and connect once to download it, "
                           "or give the bundle's folder") from exc
        cause = exc.__cause__ or exc
        if isinstance(cause, hub_errors.HfHubHTTPError):  # the hub answered, with an error status
            status = getattr(getattr(cause, "response", None), "status_code", None)
            raise V2TError(f"{nothing}, and the hub answered HTTP {status or '?'} for {where} "
                           f"({first_line(cause, 200)}): {_HTTP_HINTS.get(status, 'try again later')}") from exc
        raise V2TError(f"{nothing}, and the hub could not be reached to download {where} (network error: "
                       f"{first_line(cause, 200)}) nor is it in the local hub cache: check the connection (or "
                       "HF_ENDPOINT) and try again, or give the bundle's folder") from exc
    except hub_errors.HfHubHTTPError as exc:
        raise V2TError(f"{nothing}, and the hub refused to send {where} ({first_line(exc, 200)}): {_LOGIN} with "
                       "an account that may read it") from exc
    except ValueError as exc:  # an id the hub's own validation refuses
        raise V2TError(f"adapter folder {repo_id} does not exist, and it is not a valid hub id "
                       f"({first_line(exc, 200)}): give a bundle folder or a hub repository id") from exc
    except Exception as exc:
        if not _network_error(exc):
            raise
        raise V2TError(f"{nothing}, and downloading {where} from the hub failed (network error: "
                       f"{first_line(exc, 200)}): check the connection and try again") from exc


_HTTP_HINTS = {403: f"{_LOGIN} with an account that may read it", 429: "too many requests: wait, then try again"}


def _network_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a transport failure: an OSError, or an error of the HTTP client huggingface_hub uses
    (httpx or its fork httpx2 and their httpcore; requests and urllib3 in huggingface_hub < 1.0)."""
    package = type(exc).__module__.split(".")[0].rstrip("0123456789")
    return isinstance(exc, OSError) or package in ("httpx", "httpcore", "requests", "urllib3")


# ---------------------------------------------------------------------- names and model cards
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


def card_metadata(config: dict) -> dict:
    """The model card metadata of a bundle (its v2t_config): base_model, library_name, tags and, from the training
    summary, the metrics (as the card's model-index)."""
    from huggingface_hub import EvalResult, ModelCardData

    backbone, encoder = config["backbone"], config["encoder"]
    results = []
    for key, value in ((config.get("training") or {}).get("metrics") or {}).items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        match = _METRIC_KEY.fullmatch(key)
        data, metric = (match["data"], match["metric"]) if match else ("validation", key.removeprefix("val_"))
        results.append(EvalResult(task_type="text-generation", task_name="Embedding inversion", dataset_type=data,
                                  dataset_name=data, metric_type=metric, metric_value=value, metric_name=key))
    data = ModelCardData(
        base_model=backbone.get("hub_id") or backbone_hub_id(backbone["name"]),
        library_name=LIBRARY_NAME,
        tags=TAGS if config.get("lora") else TAGS[:2],
        model_name=f"lora_v2t {encoder['spec']} -> {backbone['name']}" if results else None,
        eval_results=results or None,
    )
    return data.to_dict()


def bundle_card(config: dict, source: str = "path/to/this/folder", revision: str | None = None):
    """The bundle's README.md: a ``huggingface_hub.ModelCard`` with :func:`card_metadata` and the card text of
    :func:`lora_v2t.adapter.model_card` (its examples load the adapter from ``source``)."""
    from huggingface_hub import ModelCard, ModelCardData

    yaml = ModelCardData(**card_metadata(config)).to_yaml()
    return ModelCard(f"---\n{yaml}\n---\n\n{model_card(config, source, revision)}")


def complete_card(folder: Path, config: dict):
    """The folder's README.md as a ModelCard, with the metadata it lacks filled in from ``config`` (bundles
    written before lora_v2t wrote card metadata; a card's own values are kept)."""
    from huggingface_hub import ModelCard, ModelCardData

    readme = folder / "README.md"
    if not readme.is_file():
        return bundle_card(config)
    text = readme.read_text(encoding="utf-8")
    wanted = card_metadata(config)
    if not text.startswith("---"):
        return ModelCard(f"---\n{ModelCardData(**wanted).to_yaml()}\n---\n\n{text}")
    card = ModelCard(text, ignore_metadata_errors=True)
    for key, value in wanted.items():
        if key == "tags":
            card.data.tags = list(dict.fromkeys([*(card.data.get("tags") or []), *value]))
        elif key != "model-index" and card.data.get(key) in (None, "", []):
            card.data[key] = value
    if "model-index" in wanted and not card.data.get("eval_results"):
        filled = ModelCardData(**{"model-index": wanted["model-index"]})
        card.data.model_name, card.data.eval_results = filled.model_name, filled.eval_results
    return card


# ---------------------------------------------------------------------- pushing
def push_adapter(v2t, repo_id: str, private: bool | None = None, revision: str | None = None,
                 commit_message: str | None = None, token: str | None = None) -> str:
    """Upload the active adapter of ``v2t`` to the hub repository ``repo_id`` (see :func:`push_folder`): it is
    saved into a temporary folder, with a model card whose examples load it from ``repo_id``."""
    _check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="lora_v2t-push-") as tmp:
        folder = save_adapter(v2t, Path(tmp) / "bundle")
        bundle_card(validate_bundle(folder), repo_id, revision).save(folder / "README.md")
        return push_folder(folder, repo_id, private=private, revision=revision, commit_message=commit_message,
                           token=token)


def push_folder(folder: str | Path, repo_id: str, private: bool | None = None, revision: str | None = None,
                commit_message: str | None = None, token: str | None = None) -> str:
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
        logger.warning("the model card names no base_model: backbone %r has no hub id (a local folder); the hub "
                       "will not link this adapter to its base", config["backbone"]["name"])
    files, left_out = _bundle_files(folder, full=config.get("trainable") == "full")
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
        info = api.create_commit(repo_id, operations=operations, revision=revision,
                                 commit_message=commit_message or f"Upload lora_v2t adapter ({len(files) + 1} files)")
    except HfHubHTTPError as exc:
        raise V2TError(f"the hub refused to push {folder} to {target} ({first_line(exc, 200)}): {_LOGIN} with a token "
                       "that may write to it") from exc
    except Exception as exc:
        if not _network_error(exc):
            raise
        if offline_mode():
            raise V2TError(f"cannot push {folder} to {target}: HF_HUB_OFFLINE is set; unset it to push") from exc
        raise V2TError(f"cannot push {folder} to {target} (network error: {first_line(exc, 200)}): check the "
                       "connection and try again") from exc
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("pushed %s to %s: %s", folder, target, url)
    return url


def _check_repo_id(repo_id: str) -> None:
    if not is_hub_id(repo_id):
        raise V2TError(f"{repo_id!r} is not a hub repository id: give org/name (a user or organisation, a slash, "
                       "the repository's name)")


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
