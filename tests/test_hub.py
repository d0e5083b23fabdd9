"""The hub, offline: adapters by hub id from a local hub cache, revisions, one-line errors, and pushes with
HfApi's network methods replaced by fakes that record what would be uploaded."""

import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import Mock

import pytest
from huggingface_hub import HfApi, ModelCard, constants

from lora_v2t import V2TError, load_adapter
from lora_v2t.bundle.adapter import validate_bundle
from lora_v2t.bundle.cards import card_metadata, model_card
from lora_v2t.bundle.hub import backbone_hub_id, peft_base_name, resolve_adapter
from lora_v2t.bundle.layout import BUNDLE_FILES
from lora_v2t.cli import main

from .conftest import make_v2t

REPO = "tiny-org/tiny-adapter"
TEXTS = ["Где лодка?", "Кошка спит."]
SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "adapters" / "use-gemma270m-ru"


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """An empty local hub cache, in offline mode.

    huggingface_hub reads HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE from the environment once, when it is imported,
    into ``huggingface_hub.constants``, and its functions (and transformers') read those attributes at each call:
    the attributes are set for this process, the environment for any child process.
    """
    home = tmp_path / "hf"
    for var, value in (("HF_HOME", str(home)), ("HF_HUB_CACHE", str(home / "hub")), ("HF_HUB_OFFLINE", True)):
        monkeypatch.setenv(var, "1" if value is True else value)
        monkeypatch.setattr(constants, var, value)
    return home / "hub"


def cache_repo(cache: Path, repo_id: str, folder: Path, refs=("main",), commit: str | None = None) -> str:
    """Store ``folder`` in the hub cache as ``repo_id`` at a commit named by ``refs``, in the layout huggingface_hub
    writes: ``models--org--name/blobs/<sha256>``, ``snapshots/<commit>/<file>`` linking to its blob, and
    ``refs/<ref>`` holding the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = commit or hashlib.sha1(f"{repo_id} {folder}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture()
def bundle(v2t, tmp_path):
    return v2t.save_adapter(tmp_path / "bundle", training={"steps": 7})


@pytest.fixture()
def cached(hub_cache, bundle):
    cache_repo(hub_cache, REPO, bundle)
    return bundle


@pytest.fixture()
def fake_hub(monkeypatch):
    """HfApi's network methods replaced by fakes that record the calls and what each commit would upload."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        calls.append(("create_branch", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        files = {}
        for op in operations:
            source = op.path_or_fileobj
            files[op.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes()
        calls.append(("create_commit", repo_id, kwargs | {"files": files}))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0123abc")

    def refuse(self, *args, **kwargs):
        raise AssertionError("an unexpected hub call")

    for name, fake in (
        ("create_repo", create_repo),
        ("create_branch", create_branch),
        ("create_commit", create_commit),
        ("upload_folder", refuse),
        ("upload_file", refuse),
        ("repo_info", refuse),
    ):
        monkeypatch.setattr(HfApi, name, fake)
    return calls


def uploaded(calls) -> dict[str, bytes]:
    commits = [c for c in calls if c[0] == "create_commit"]
    assert len(commits) == 1
    return commits[0][2]["files"]


# ---------------------------------------------------------------------- loading by hub id
def test_load_adapter_by_hub_id_from_the_offline_cache(v2t, cached, hub_cache):
    folder = resolve_adapter(REPO)
    assert hub_cache in folder.parents and folder.parent.name == "snapshots"
    loaded = load_adapter(REPO, device="cpu")
    assert loaded.meta.training == {"steps": 7}
    assert loaded.invert(TEXTS, max_new_tokens=6) == v2t.invert(TEXTS, max_new_tokens=6)


def test_a_revision_picks_a_branch_tag_or_commit(v2t, tiny_backbone_dir, tiny_encoder, hub_cache, tmp_path, capsys):
    old = v2t.save_adapter(tmp_path / "old", training={"steps": 1})
    new = v2t.save_adapter(tmp_path / "new", training={"steps": 2})
    old_commit = cache_repo(hub_cache, REPO, old, refs=("v1",))
    cache_repo(hub_cache, REPO, new, refs=("main",))
    steps = {
        rev: validate_bundle(resolve_adapter(REPO, rev)).training["steps"] for rev in (None, "main", "v1", old_commit)
    }
    assert steps == {None: 2, "main": 2, "v1": 1, old_commit: 1}
    assert main(["info", REPO, "--revision", "v1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["training"] == {"steps": 1}
    other = make_v2t(tiny_backbone_dir, tiny_encoder, seed=1)
    other.load_adapter(REPO, name="old", revision="v1")  # a second adapter on a loaded base, from the hub
    assert other.adapters == ["default", "old"] and other.adapter_meta["old"].training == {"steps": 1}
    other.set_adapter("old")
    assert other.invert(TEXTS, max_new_tokens=6) == v2t.invert(TEXTS, max_new_tokens=6)


def test_cli_info_and_generate_take_a_hub_id(v2t, cached, capsys):
    assert main(["info", REPO]) == 0
    out = capsys.readouterr().out
    assert f"adapter      {REPO} (hub, cached in " in out and "steps: 7" in out
    assert main(["generate", "--adapter", REPO, "--text", *TEXTS, "--max-new-tokens", "6", "--budget", "1"]) == 0
    expected = v2t.invert(TEXTS, max_new_tokens=6)
    assert capsys.readouterr().out.splitlines() == [f"{t} ==> {e}" for t, e in zip(TEXTS, expected, strict=True)]


def test_a_local_folder_wins_over_a_hub_id_of_the_same_spelling(v2t, cached, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    v2t.save_adapter(tmp_path / REPO, training={"steps": 5})
    assert resolve_adapter(REPO) == Path(REPO)
    assert load_adapter(REPO, device="cpu").meta.training == {"steps": 5}
    with pytest.raises(V2TError, match="is a local folder .* applies to hub ids only"):
        resolve_adapter(REPO, revision="v1")
    with pytest.raises(V2TError, match="does not exist, and it is not a hub id"):
        resolve_adapter(Path("tiny-org/other"))  # a Path is always a folder


@pytest.mark.parametrize(
    "args,message",
    [
        (["info", "tiny-org/missing"], "not in the local hub cache"),
        (["info", REPO, "--revision", "v9"], "at revision 'v9' is not in the local hub cache"),
        (["generate", "--adapter", "tiny-org/missing", "--text", "a"], "HF_HUB_OFFLINE is set"),
        (["evaluate", "--adapter", "tiny-org/missing", "--data", "x.txt"], "unset HF_HUB_OFFLINE"),
        (["info", "no/such/folder"], "adapter folder no/such/folder does not exist, and it is not a hub id"),
    ],
)
def test_a_missing_adapter_is_one_line_and_exit_2(cached, capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "error,message",
    [
        ("RepositoryNotFoundError", "the hub has no repository tiny-org/missing (or it is private"),
        ("RevisionNotFoundError", "has no revision 'v2'"),
        ("GatedRepoError", "is gated"),
        ("HfHubHTTPError", "the hub answered HTTP 404 for tiny-org/missing at revision 'v2'"),
    ],
)
def test_hub_answers_become_one_line_errors(hub_cache, monkeypatch, error, message):
    from huggingface_hub import errors

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def repo_info(self, repo_id, **kwargs):  # what the hub would answer, with no network
        raise getattr(errors, error)(f"{error} for {repo_id}", response=Mock(status_code=404, headers={}))

    monkeypatch.setattr(HfApi, "repo_info", repo_info)
    with pytest.raises(V2TError, match="no folder tiny-org/missing here") as caught:
        resolve_adapter("tiny-org/missing", revision="v2")
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1


# ---------------------------------------------------------------------- names and cards
def test_bundles_name_the_base_by_its_hub_id(hub_cache, tiny_backbone_dir, tiny_encoder, tmp_path):
    """A backbone given by hub id: adapter_config.json and the card name it, and plain peft's
    AutoPeftModelForCausalLM loads the bundle anywhere the hub id resolves (here, from the cache)."""
    import torch
    from peft import AutoPeftModelForCausalLM

    cache_repo(hub_cache, "tiny-org/tiny-gpt2", Path(tiny_backbone_dir))
    v2t = make_v2t("tiny-org/tiny-gpt2", tiny_encoder)
    bundle = v2t.save_adapter(tmp_path / "bundle")
    assert json.loads((bundle / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-org/tiny-gpt2"
    backbone = validate_bundle(bundle).backbone
    assert backbone.name == backbone.hub_id == "tiny-org/tiny-gpt2"
    card = ModelCard.load(bundle / "README.md")
    assert card.data.base_model == "tiny-org/tiny-gpt2" and card.data.library_name == "lora_v2t"
    assert card.data.tags == ["lora_v2t", "embedding-inversion", "peft", "lora"]
    assert card.text.lstrip().startswith("# lora_v2t adapter")
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(bundle))
    ours = {k: v for k, v in v2t.model.state_dict().items() if "lora_" in k}
    theirs = dict(peft_model.state_dict())
    assert ours and all(torch.equal(v, theirs[k]) for k, v in ours.items())


def test_a_local_backbone_is_never_named_by_its_absolute_path(bundle, tiny_backbone_dir, tmp_path):
    assert Path(tiny_backbone_dir).is_absolute()
    named = json.loads((bundle / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert named == Path(tiny_backbone_dir).name
    resaved = load_adapter(bundle, device="cpu").save_adapter(tmp_path / "again")
    assert json.loads((resaved / "adapter_config.json").read_text())["base_model_name_or_path"] == named
    assert validate_bundle(bundle).backbone.hub_id is None
    card = ModelCard.load(bundle / "README.md")
    assert card.data.base_model is None and card.data.library_name == "lora_v2t"


def test_hub_ids_of_offline_backbones_cache_folders_and_local_paths(tmp_path):
    assert backbone_hub_id("offline:gemma-3-270m") == "google/gemma-3-270m"
    assert backbone_hub_id("ai-forever/rugpt3large_based_on_gpt2") == "ai-forever/rugpt3large_based_on_gpt2"
    assert backbone_hub_id("gpt2") == "gpt2"
    snapshot = tmp_path / "hub" / "models--org--base-1.5b" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    assert backbone_hub_id(str(snapshot)) == "org/base-1.5b"
    assert backbone_hub_id(str(tmp_path)) is None and backbone_hub_id("/models/x.gguf") is None
    assert peft_base_name(str(tmp_path / "my-base")) == "my-base"
    assert peft_base_name("offline:gemma-3-270m") == "google/gemma-3-270m"


def test_the_shipped_adapter_names_its_base_by_hub_id():
    config = validate_bundle(SHIPPED)
    assert config.backbone.hub_id == "google/gemma-3-270m"
    assert config.backbone.name == "offline:gemma-3-270m"  # how lora_v2t loads it here, with no internet
    peft_config = json.loads((SHIPPED / "adapter_config.json").read_text())
    assert peft_config["base_model_name_or_path"] == "google/gemma-3-270m"
    card = ModelCard.load(SHIPPED / "README.md")
    assert card.data.base_model == "google/gemma-3-270m" and card.data.library_name == "lora_v2t"
    metrics = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert metrics == config.training["metrics"]


def test_card_metrics_come_from_the_training_summary(bundle):
    config = validate_bundle(bundle)
    assert "model-index" not in card_metadata(config)  # no metrics: no results
    config.training["metrics"] = {
        "val_loss": 2.5,
        "dev greedy bleu (n=10)": 12.0,
        "note": "text",
        "news reranked chrf (n=10)": 30.5,
        "dev corrected-3 cosine (n=10)": 0.8,
        "dev reranked+corrected-2 chrf (n=10)": 40.5,
        "dev budget-8 exact_match (n=10)": 10.0,
        "dev sampled bleu (n=1)": 1.0,
    }
    results = card_metadata(config)["model-index"][0]["results"]
    found = {(r["dataset"]["name"], m["type"], m["value"]) for r in results for m in r["metrics"]}
    assert found == {
        ("validation", "loss", 2.5),
        ("dev", "bleu", 12.0),
        ("news", "chrf", 30.5),
        ("dev", "cosine", 0.8),
        ("dev", "chrf", 40.5),
        ("dev", "exact_match", 10.0),
        ("validation", "dev sampled bleu (n=1)", 1.0),
    }  # not a decoding lora_v2t reports


# ---------------------------------------------------------------------- pushing
def test_push_to_hub_uploads_the_active_adapter_with_its_card(
    v2t, tiny_backbone_dir, tiny_encoder, hub_cache, fake_hub
):
    cache_repo(hub_cache, "tiny-org/tiny-gpt2", Path(tiny_backbone_dir))
    v2t = make_v2t("tiny-org/tiny-gpt2", tiny_encoder)
    url = v2t.push_to_hub("tiny-org/pushed", private=True, revision="dev", commit_message="first")
    assert url == "https://huggingface.co/tiny-org/pushed/commit/0123abc"
    assert [c[:2] for c in fake_hub] == [
        ("create_repo", "tiny-org/pushed"),
        ("create_branch", "tiny-org/pushed"),
        ("create_commit", "tiny-org/pushed"),
    ]
    assert fake_hub[0][2]["private"] is True and fake_hub[1][2]["branch"] == "dev"
    assert fake_hub[2][2]["revision"] == "dev" and fake_hub[2][2]["commit_message"] == "first"
    files = uploaded(fake_hub)
    assert sorted(files) == sorted(BUNDLE_FILES)
    card = ModelCard(files["README.md"].decode("utf-8"))
    assert card.data.base_model == "tiny-org/tiny-gpt2" and card.data.library_name == "lora_v2t"
    assert {"lora_v2t", "embedding-inversion", "peft", "lora"} <= set(card.data.tags)
    assert 'load_adapter("tiny-org/pushed", revision="dev")' in card.text
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "tiny-org/tiny-gpt2"


def test_cli_push_uploads_the_bundle_files_of_a_folder_as_they_are(bundle, fake_hub, capsys):
    (bundle / "optimizer.safetensors").write_bytes(b"not part of a bundle")  # as in a training checkpoint
    assert main(["push", str(bundle), "tiny-org/pushed", "--private", "--branch", "dev", "--commit-message", "m"]) == 0
    out = capsys.readouterr().out
    assert "https://huggingface.co/tiny-org/pushed/commit/0123abc" in out
    assert "load_adapter('tiny-org/pushed', revision='dev')" in out
    files = uploaded(fake_hub)
    assert sorted(files) == sorted(BUNDLE_FILES)
    assert all(files[name] == (bundle / name).read_bytes() for name in files)
    assert fake_hub[0][2]["private"] is True and fake_hub[2][2]["revision"] == "dev"


def test_push_fills_in_the_metadata_of_an_older_card_without_changing_the_folder(bundle, fake_hub):
    old_text = model_card(validate_bundle(bundle))  # the card text, as lora_v2t wrote it before card metadata
    (bundle / "README.md").write_text(old_text, encoding="utf-8")
    assert main(["push", str(bundle), "tiny-org/pushed"]) == 0
    card = ModelCard(uploaded(fake_hub)["README.md"].decode("utf-8"))
    assert card.data.library_name == "lora_v2t" and "peft" in card.data.tags
    assert card.text.strip() == old_text.strip()
    assert (bundle / "README.md").read_text(encoding="utf-8") == old_text
    assert [c[0] for c in fake_hub] == ["create_repo", "create_commit"]  # main: no branch to create


@pytest.mark.parametrize(
    "make_args,message",
    [
        (lambda b, t: ["push", str(t / "not-a-bundle"), "tiny-org/x"], "missing v2t_config.json"),
        (lambda b, t: ["push", str(t / "incomplete"), "tiny-org/x"], "missing projector.safetensors"),
        (lambda b, t: ["push", str(t / "nope"), "tiny-org/x"], "does not exist"),
        (lambda b, t: ["push", str(b), "not a repo id"], "is not a hub repository id"),
    ],
)
def test_push_refuses_before_any_upload(bundle, tmp_path, fake_hub, capsys, make_args, message):
    (tmp_path / "not-a-bundle").mkdir()
    (tmp_path / "not-a-bundle" / "notes.txt").write_text("hello")
    shutil.copytree(bundle, tmp_path / "incomplete")
    (tmp_path / "incomplete" / "projector.safetensors").unlink()
    assert main(make_args(bundle, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert fake_hub == []


def test_push_in_offline_mode_is_one_line(bundle, hub_cache, capsys):
    assert main(["push", str(bundle), "tiny-org/pushed"]) == 2  # the real HfApi: offline mode sends nothing
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "HF_HUB_OFFLINE is set; unset it to push" in err
    assert len(err.splitlines()) == 1
