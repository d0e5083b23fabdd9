"""scripts/ship_adapter.py: a run's bundle copied with its dev metrics, card samples and corrector."""

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lora_v2t import load_adapter

from .conftest import make_v2t
from .test_train import corpus_file

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ship_adapter.py"


def ship(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    runpy.run_path(str(SCRIPT), run_name="__main__")


def report(folder: Path, output_vocab="full") -> Path:
    """A `lora-v2t evaluate` report folder as ship_adapter reads it: summary.json alone."""
    folder.mkdir(parents=True)
    summary = {
        "data": "../shared/data/ru/dev_conversational.txt",
        "sentences": 10,
        "output_vocab": output_vocab,
        "scores": {
            "greedy": {"bleu": {"value": 9.87}, "chrf": {"value": 30.123456}, "cosine": {"value": 0.71234}},
            "budget-8 (greedy + 7 beams)": {"chrf": {"value": 41.0}, "exact": {"value": 3.0}},
        },
    }
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return folder


@pytest.fixture()
def run(tmp_path, tiny_backbone_dir, tiny_encoder, tiny_encoder_dir):
    """A trained-looking bundle and the recipe it came from (full-vocabulary loss: nothing to rebuild)."""
    adapter = make_v2t(tiny_backbone_dir, tiny_encoder).save_adapter(tmp_path / "final")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"encoder:\n  spec: {tiny_encoder_dir}\nbackbone:\n  name: {tiny_backbone_dir}\n  quantization: none\n"
        f"data:\n  train: {corpus_file(tmp_path)}\n  max_sentences: 20\ntraining:\n  loss_vocab: full\n",
        encoding="utf-8",
    )
    return adapter, recipe


def test_shipping_files_the_reports_scores_the_samples_and_the_corrector(tmp_path, run, monkeypatch, capsys):
    adapter, recipe = run
    out = tmp_path / "adapters" / "tiny"
    ship(
        monkeypatch,
        *("--adapter", str(adapter), "--recipe", str(recipe), "--out", str(out)),
        *("--eval", str(report(tmp_path / "eval" / "conv")), "--corrector", "../tiny-corrector"),
    )
    assert f"shipped: {out}" in capsys.readouterr().out
    shipped = load_adapter(out, device="cpu", dtype="float32")
    metrics = shipped.meta.training["metrics"]
    assert metrics["dev_conversational greedy chrf (n=10)"] == 30.1235
    assert metrics["dev_conversational greedy bleu (n=10)"] == 9.87
    assert metrics["dev_conversational greedy cosine (n=10)"] == 0.7123
    assert metrics["dev_conversational budget-8 chrf (n=10)"] == 41.0
    assert not any("exact" in key for key in metrics)  # only BLEU, chrF and cosine are filed
    assert shipped.meta.corrector == "../tiny-corrector"
    assert shipped.meta.training["sample"]["max_sentences"] == 20  # what it trained on, for heldout checks
    samples = shipped.meta.training["samples"]
    texts = [s["text"] for s in samples]
    assert len(texts) == 3 and [s["generated"] for s in samples] == shipped.invert(texts)


def test_a_report_decoded_over_another_vocabulary_is_refused_and_nothing_is_shipped(tmp_path, run, monkeypatch):
    adapter, recipe = run
    out = tmp_path / "adapters" / "tiny"
    with pytest.raises(SystemExit, match="decoded over 1234 tokens but the shipped adapter decodes over full"):
        ship(
            monkeypatch,
            *("--adapter", str(adapter), "--recipe", str(recipe), "--out", str(out)),
            *("--eval", str(report(tmp_path / "eval" / "conv", output_vocab=1234))),
        )
    assert not out.exists()


def test_a_bf16_projector_is_shipped_with_its_matrices_rounded(tmp_path, run, monkeypatch):
    adapter, recipe = run
    out = tmp_path / "adapters" / "tiny"
    ship(
        monkeypatch,
        "--adapter",
        str(adapter),
        "--recipe",
        str(recipe),
        "--out",
        str(out),
        "--projector-dtype",
        "bfloat16",
    )
    with safe_open(str(out / "projector.safetensors"), framework="pt") as handle:
        dtypes = {handle.get_slice(k).get_dtype() for k in handle.keys() if len(handle.get_slice(k).get_shape()) >= 2}
    assert dtypes == {"BF16"}
    shipped = load_adapter(out, device="cpu", dtype="float32")
    samples = shipped.meta.training["samples"]  # decoded with the rounded weights the bundle holds
    assert [s["generated"] for s in samples] == shipped.invert([s["text"] for s in samples])
    original = load_adapter(adapter, device="cpu", dtype="float32").projector
    assert all(
        torch.equal(got, want.to(torch.bfloat16).float() if want.ndim >= 2 else want)
        for got, want in zip(shipped.projector.state_dict().values(), original.state_dict().values(), strict=True)
    )
