"""Every recipe's adapter at its real model's shapes: built with the recipe's own settings, saved, loaded back.

The GPT-2 backbones are random, with the real block shapes (ruGPT-3 large: 24 x 1536, 16 heads; small:
12 x 768, 12 heads) and the tiny tokenizer of conftest: LoRA and projector shapes do not depend on the vocabulary.
The offline recipe runs on the real offline Gemma-3-270M. Encoders are ``precomputed:<dim>`` of the recipe's
dimension (LaBSE 768, USE 512): the projector's shape depends on the dimension only.
"""

from __future__ import annotations

import gc
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lora_v2t import Vector2Text, load_adapter
from lora_v2t.bundle.adapter import validate_bundle
from lora_v2t.config import load_config
from lora_v2t.model.lora import default_target_modules

from .conftest import SENTENCES, perturb_lora, save_random_gpt2

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
RUGPT3_LARGE = {"n_layer": 24, "n_embd": 1536, "n_head": 16, "n_positions": 2048}  # ~680M parameters
RUGPT3_SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 2048}
LABSE = "precomputed:768"
# recipe -> (the fixture giving its backbone, or None for the recipe's own; encoder spec, or None for the recipe's)
SHAPES = {
    "labse_rugpt3large_8bit.yaml": ("rugpt3large_dir", LABSE),
    "original_experiment.yaml": ("rugpt3large_dir", LABSE),
    "labse_rugpt3small.yaml": ("rugpt3small_dir", LABSE),
    "offline_use_gemma270m.yaml": (None, "precomputed:512"),  # offline:gemma-3-270m, the real one
    "offline_use_gemma270m_corrector.yaml": (None, "precomputed:512"),
    "offline_use_gemma270m_corrector_split.yaml": (None, "precomputed:512"),
    "offline_use_gemma270m_v3.yaml": (None, "precomputed:512"),
    "offline_use_gemma270m_v3_corrector.yaml": (None, "precomputed:512"),
    "offline_use_gemma270m_v4.yaml": (None, "precomputed:512"),
    "offline_use_gemma270m_v4_corrector.yaml": (None, "precomputed:512"),
    "offline_use_gemma270m_v5.yaml": (None, "precomputed:512"),
    "offline_use_gemma270m_v5_corrector.yaml": (None, "precomputed:512"),
    "offline_use_gemma270m_v6.yaml": (None, "precomputed:512"),
    "offline_use_gemma270m_v6_corrector.yaml": (None, "precomputed:512"),
    "offline_use_gemma270m_v6_corrector16.yaml": (None, "precomputed:512"),
    "offline_use_gemma270m_v6_corrector2.yaml": (None, "precomputed:512"),
    "offline_use_gemma270m_v6_corrector3.yaml": (None, "precomputed:512"),
    "offline_use_gemma270m_v7.yaml": (None, "precomputed:512"),
    "offline_use_gemma270m_v8.yaml": (None, "precomputed:512"),
    "offline_use_gemma270m_v8_corrector.yaml": (None, "precomputed:512"),
    "tiny_debug.yaml": ("tiny_backbone_dir", None),
}
TOLERANCE = {"none": 1e-5, "8bit": 1e-4}  # atol = rtol on logits, per quantization


@pytest.fixture(scope="module")
def rugpt3large_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("rugpt3large-shaped")
    yield save_random_gpt2(path, **RUGPT3_LARGE)
    shutil.rmtree(path, ignore_errors=True)  # 2.7 GB: pytest would keep it for three sessions


@pytest.fixture(scope="module")
def rugpt3small_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("rugpt3small-shaped")
    yield save_random_gpt2(path, **RUGPT3_SMALL)
    shutil.rmtree(path, ignore_errors=True)


def test_every_recipe_has_a_shape_test():
    assert sorted(p.name for p in RECIPES_DIR.glob("*.yaml")) == sorted(SHAPES)


def create_from_recipe(cfg) -> Vector2Text:
    """The adapter ``lora-v2t train`` starts from: ``Vector2Text.from_config``, as the trainer builds it."""
    v2t = Vector2Text.from_config(cfg, device="cpu")
    v2t.meta.generation = asdict(cfg.generation)
    return v2t


def logits_of(v2t, vectors) -> torch.Tensor:
    with torch.no_grad():
        return v2t.forward(vectors, **v2t.tokenize(SENTENCES[:3], max_length=12)).logits.float()


def perturb_last_block(v2t) -> None:
    """Full fine-tuning: change some backbone weights, so only a bundle holding the trained weights matches."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in [p for p in v2t.base_model.parameters() if p.ndim == 2][-4:]:
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)


@pytest.mark.parametrize(
    "recipe", [pytest.param(name, marks=[] if name == "tiny_debug.yaml" else pytest.mark.slow) for name in SHAPES]
)
def test_recipe_adapter_saves_and_loads_at_the_real_shapes(recipe, request, tmp_path):
    backbone_fixture, encoder = SHAPES[recipe]
    overrides = [f"--backbone.name={request.getfixturevalue(backbone_fixture)}"] if backbone_fixture else []
    overrides += [f"--encoder.spec={encoder}"] if encoder else []
    cfg = load_config(RECIPES_DIR / recipe, overrides)
    full = cfg.training.trainable == "full"
    if cfg.backbone.quantization in ("8bit", "4bit"):
        pytest.importorskip("bitsandbytes")
    v2t = create_from_recipe(cfg)
    quantization = v2t.backbone_info["quantization"]  # auto is none on the CPU
    assert quantization == (cfg.backbone.quantization if cfg.backbone.quantization != "auto" else "none")
    vectors = torch.randn(3, v2t.projector.embedding_dim, generator=torch.Generator().manual_seed(0))  # 3d: corrector
    if full:
        before = logits_of(v2t, vectors)
        perturb_last_block(v2t)
    else:
        perturb_lora(v2t, 0)
        with v2t.model.disable_adapter():
            before = logits_of(v2t, vectors)
    expected = logits_of(v2t, vectors)
    assert not torch.allclose(before, expected, atol=1e-3)  # the adapter (or the fine-tuned weights) matters

    bundle = v2t.save_adapter(tmp_path / "bundle", training={"steps": 0, "data": "shape test"})
    config = validate_bundle(bundle).to_dict()
    assert config["trainable"] == cfg.training.trainable
    assert config["role"] == cfg.training.role
    assert config["projector"]["kind"] == cfg.projector.kind
    assert config["projector"]["prefix_length"] == cfg.projector.prefix_length
    # the KV cache is the decoding machine's choice, not the adapter's: bundles leave it out
    assert config["generation"] == {k: v for k, v in asdict(cfg.generation).items() if k != "cache"}
    if full:
        assert config["lora"] is None and (bundle / "backbone" / "config.json").is_file()
    else:
        assert config["lora"]["r"] == cfg.lora.r and config["lora"]["alpha"] == (cfg.lora.alpha or 2 * cfg.lora.r)
        assert config["lora"]["layers"] == cfg.lora.layers
        targets = cfg.lora.target_modules or default_target_modules(config["backbone"]["model_type"])
        assert config["lora"]["target_modules"] == sorted(targets)
        with safe_open(str(bundle / "adapter_model.safetensors"), framework="pt") as handle:
            keys = list(handle.keys())
            blocks = len(cfg.lora.layers or range(v2t.base_model.config.num_hidden_layers))
            assert len(keys) == 2 * len(targets) * blocks  # A and B of every target in every block
            first_a = handle.get_slice(next(k for k in keys if "lora_A" in k)).get_shape()
        assert first_a == [cfg.lora.r, v2t.backbone_info["hidden_size"]]
    if recipe == "labse_rugpt3large_8bit.yaml":
        # the default recipe's LoRA header is 12,416 = 0x3080 bytes: its first byte is a pickle's 0x80
        assert (bundle / "adapter_model.safetensors").read_bytes()[:1] == b"\x80"
    del v2t
    gc.collect()  # one model in memory at a time

    assert (config["backbone"]["quantization"], config["backbone"]["compute_dtype"]) == (quantization, "float32")
    loaded = load_adapter(bundle, device="cpu")  # quantization auto: as the bundle was made
    assert loaded.backbone_info["quantization"] == quantization
    tolerance = TOLERANCE[quantization]
    got = logits_of(loaded, vectors)
    assert torch.allclose(got, expected, atol=tolerance, rtol=tolerance), (got - expected).abs().max()
    del loaded
    gc.collect()
    shutil.rmtree(bundle, ignore_errors=True)  # a fully fine-tuned bundle holds the whole backbone


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe",
    [
        "offline_use_gemma270m_v3.yaml",
        "offline_use_gemma270m_corrector_split.yaml",
        "offline_use_gemma270m_v6_corrector.yaml",
        "offline_use_gemma270m_v6_corrector16.yaml",
        "offline_use_gemma270m_v8.yaml",
    ],
)
def test_a_recipe_starting_from_a_shipped_hypothesizer_begins_as_it(recipe, monkeypatch):
    """A hypothesizer that continues one with as many slots begins with its loss exactly; one with more slots
    (v8: 8 from v6's 4), and a split corrector's v and e parts, begin as its projector with its slots repeated
    (v6_corrector: 8 slots from v6's 4; v6_corrector16: 16)."""
    from lora_v2t.train.warmstart import warm_start

    monkeypatch.chdir(RECIPES_DIR.parent)  # the recipes' paths are relative to the repository root
    cfg = load_config(RECIPES_DIR / recipe)
    shipped = load_adapter(cfg.training.init_adapter, device="cpu", dtype="float32")
    assert shipped.meta.role == "hypothesizer"
    vectors = shipped.encode(SENTENCES[:3])
    expected = shipped.loss(vectors, SENTENCES[:3])
    source = torch.from_numpy(vectors)
    prefix = shipped.projector(source)
    del shipped
    gc.collect()
    v2t = Vector2Text.from_config(cfg, device="cpu")
    warm_start(v2t, cfg.training.init_adapter)
    repeats = cfg.projector.prefix_length // prefix.shape[1]
    assert repeats * prefix.shape[1] == cfg.projector.prefix_length
    if cfg.training.role == "hypothesizer" and repeats == 1:
        assert torch.allclose(v2t.loss(vectors, SENTENCES[:3]), expected, atol=1e-5)
        return
    parts = v2t.projector.parts[:2] if cfg.training.role == "corrector" else [v2t.projector]
    for part in parts:
        assert torch.allclose(part(source), torch.cat([prefix] * repeats, dim=1))


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe",
    [
        "offline_use_gemma270m_v3_corrector.yaml",
        "offline_use_gemma270m_v4.yaml",
        "offline_use_gemma270m_v4_corrector.yaml",
        "offline_use_gemma270m_v5.yaml",
        "offline_use_gemma270m_v5_corrector.yaml",
        "offline_use_gemma270m_v6.yaml",
        "offline_use_gemma270m_v7.yaml",
        "offline_use_gemma270m_v8_corrector.yaml",
    ],
)
def test_a_recipe_continuing_a_shipped_adapter_starts_where_it_ended(recipe, monkeypatch):
    """A recipe whose training.init_adapter is a shipped bundle of its own kind begins as that bundle: a
    hypothesizer with its loss, a corrector with its projector's map of (v, e, v - e) (a fresh one's differs)."""
    from lora_v2t.model.correct import condition
    from lora_v2t.train.warmstart import warm_start

    monkeypatch.chdir(RECIPES_DIR.parent)
    cfg = load_config(RECIPES_DIR / recipe)
    shipped = load_adapter(cfg.training.init_adapter, device="cpu", dtype="float32")
    assert shipped.meta.role == cfg.training.role
    targets = shipped.encode(SENTENCES[:3])
    corrector = cfg.training.role == "corrector"
    source = torch.from_numpy(condition(targets, shipped.encode(SENTENCES[1:4])) if corrector else targets)
    expected = shipped.projector(source) if corrector else shipped.loss(targets, SENTENCES[:3])
    del shipped
    gc.collect()
    v2t = Vector2Text.from_config(cfg, device="cpu")
    before = v2t.projector(source) if corrector else v2t.loss(targets, SENTENCES[:3])
    warm_start(v2t, cfg.training.init_adapter)
    after = v2t.projector(source) if corrector else v2t.loss(targets, SENTENCES[:3])
    assert torch.allclose(after, expected, atol=1e-5) and not torch.allclose(before, expected, atol=1e-3)
