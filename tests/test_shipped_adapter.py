"""The adapters shipped in checkpoints/adapters/ load on the offline base and do what their cards say."""

from pathlib import Path

import pytest
import torch

import lora_v2t.model.backbone as backbone
from lora_v2t import V2TError, load_adapter
from lora_v2t.bundle.adapter import BUNDLE_FILES, OUTPUT_VOCAB_FILE, validate_bundle
from lora_v2t.bundle.format import AdapterMeta
from lora_v2t.bundle.loading import load_dtype, load_precision
from lora_v2t.model.correct import check_pair, corrector_path

ADAPTERS = Path(__file__).resolve().parents[1] / "checkpoints" / "adapters"
SHIPPED = ADAPTERS / "use-gemma270m-ru"  # the first one (prefix 1, fp32); the demo shows it
V2 = ADAPTERS / "use-gemma270m-ru-v2"  # the retuned hypothesizer (prefix 4, bf16), with its corrector
CORRECTOR = ADAPTERS / "use-gemma270m-ru-v2-corrector"
V3 = ADAPTERS / "use-gemma270m-ru-v3"  # v2 continued (training.init_adapter), no corrector of its own yet
HYPOTHESIZERS = {SHIPPED: "float32", V2: "bfloat16", V3: "bfloat16"}  # each with the compute dtype it trained in


@pytest.mark.parametrize("folder", HYPOTHESIZERS, ids=lambda p: p.name)
def test_the_shipped_adapters_are_complete_small_bundles(folder):
    config = validate_bundle(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(BUNDLE_FILES + (OUTPUT_VOCAB_FILE,))
    assert sum(p.stat().st_size for p in folder.iterdir()) < 20 * 2**20
    assert config.backbone.name == "offline:gemma-3-270m"
    assert config.encoder.to_dict() == {"spec": "offline:use-multilingual", "dim": 512}
    assert len(config.training["samples"]) == 3
    # trained with the corpus-vocabulary loss: decoding keeps to the corpus's tokens, a small part of Gemma's
    assert 1000 < config.output_vocab_size < config.backbone.vocab_size // 10
    # trained on an unquantized base on the CPU: `quantization="auto"` must not put it on an int8 base because a
    # GPU is there
    assert load_precision(config, "auto", folder) == "none"
    assert config.backbone.compute_dtype == HYPOTHESIZERS[folder]


@pytest.mark.parametrize("units", [True, False], ids=["bf16-cpu", "other-cpu"])
def test_auto_dtype_is_bf16_for_a_bf16_adapter_on_a_cpu_with_bf16_units(monkeypatch, units):
    monkeypatch.setattr(backbone, "cpu_has_bf16_units", lambda: units)
    v2, first = validate_bundle(V2), validate_bundle(SHIPPED)
    assert load_dtype(v2, "auto", "cpu") == (torch.bfloat16 if units else torch.float32)
    assert load_dtype(first, "auto", "cpu") == torch.float32  # trained in fp32: decoded in fp32
    assert load_dtype(v2, "float32", "cpu") == torch.float32 and load_dtype(first, "bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(V2TError, match="unknown dtype 'fp8'; choose one of: auto, float32, bfloat16"):
        load_dtype(v2, "fp8", "cpu")


def test_the_v2_hypothesizer_names_the_corrector_shipped_beside_it():
    config = validate_bundle(V2)
    meta = AdapterMeta.of_bundle(config, source=str(V2))
    path = corrector_path(meta, "default", None, None)
    assert path == CORRECTOR.resolve()
    corrector = validate_bundle(path)
    check_pair(corrector, config.encoder, config.backbone.to_dict(), path)
    assert corrector.role == "corrector" and corrector.format_version == 3
    assert sum(p.stat().st_size for p in CORRECTOR.iterdir()) < 20 * 2**20


@pytest.mark.slow
@pytest.mark.parametrize("folder", HYPOTHESIZERS, ids=lambda p: p.name)
def test_the_shipped_adapters_reproduce_their_model_cards(folder):
    v2t = load_adapter(folder, device="cpu", dtype="float32")  # the cards' samples were decoded in fp32
    samples = v2t.meta.training["samples"]
    card = (folder / "README.md").read_text(encoding="utf-8")
    texts = [s["text"] for s in samples]
    assert v2t.invert(texts) == [s["generated"] for s in samples]
    for s in samples:
        assert f"| {s['text']} | {s['generated']} |" in card


@pytest.mark.slow
def test_the_shipped_corrector_never_lowers_the_cosine():
    v2t = load_adapter(V2, device="cpu")
    texts = [s["text"] for s in v2t.meta.training["samples"]]
    from lora_v2t.model.correct import CorrectionConfig, correct

    trace = correct(v2t, v2t.encode(texts), CorrectionConfig(steps=2))
    assert "default-corrector" in v2t.adapters
    steps = zip(trace.cosines, trace.cosines[1:], strict=False)  # strict=False: consecutive steps
    assert all((after >= before - 1e-6).all() for before, after in steps)
