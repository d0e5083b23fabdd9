"""The adapter shipped in checkpoints/adapters/ loads on the offline base and does what its card says."""

from pathlib import Path

import pytest

from lora_v2t import load_adapter
from lora_v2t.adapter import BUNDLE_FILES, OUTPUT_VOCAB_FILE, validate_bundle
from lora_v2t.loading import load_precision

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "adapters" / "use-gemma270m-ru"


def test_the_shipped_adapter_is_a_complete_small_bundle():
    config = validate_bundle(SHIPPED)
    assert sorted(p.name for p in SHIPPED.iterdir()) == sorted(BUNDLE_FILES + (OUTPUT_VOCAB_FILE,))
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) < 20 * 2**20
    assert config["backbone"]["name"] == "offline:gemma-3-270m"
    assert config["encoder"] == {"spec": "offline:use-multilingual", "dim": 512}
    assert len(config["training"]["samples"]) == 3
    # trained with the corpus-vocabulary loss: decoding keeps to the corpus's tokens, a small part of Gemma's
    assert 1000 < config["output_vocab_size"] < config["backbone"]["vocab_size"] // 10
    # trained in fp32 on the CPU: `quantization="auto"` must not put it on an int8 base because a GPU is there
    assert load_precision(config, "auto", SHIPPED) == ("none", "float32")


@pytest.mark.slow
def test_the_shipped_adapter_reproduces_its_model_card():
    v2t = load_adapter(SHIPPED, device="cpu")  # as it was trained: no quantization, fp32
    samples = v2t.meta["training"]["samples"]
    card = (SHIPPED / "README.md").read_text(encoding="utf-8")
    texts = [s["text"] for s in samples]
    assert v2t.invert(texts) == [s["generated"] for s in samples]
    for s in samples:
        assert f"| {s['text']} | {s['generated']} |" in card
