import json

import pytest
import torch

from lora_v2t import V2TError
from lora_v2t.model.backbone import fuse_tanh_gelu, load_backbone, resolve_backbone, resolve_quantization

from .conftest import SENTENCES, make_v2t


def test_backbone_loads_frozen_with_a_pad_token(tiny_backbone_dir):
    model, tokenizer = load_backbone(tiny_backbone_dir, quantization="none", device="cpu")
    assert not any(p.requires_grad for p in model.parameters())
    assert tokenizer.pad_token_id is not None
    assert not model.training


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of ``fn()``."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def test_tanh_gelu_is_fused_with_the_stock_outputs_and_less_kept_for_backward(tiny_backbone_64_dir):
    from transformers import AutoModelForCausalLM
    from transformers.activations import NewGELUActivation

    stock = AutoModelForCausalLM.from_pretrained(tiny_backbone_64_dir).eval()
    assert stock.config.activation_function == "gelu_new"
    model, _ = load_backbone(tiny_backbone_64_dir, quantization="none", device="cpu")
    assert not any(isinstance(m, NewGELUActivation) for m in model.modules())
    assert sum(isinstance(m, NewGELUActivation) for m in stock.modules()) == stock.config.n_layer
    embeds = torch.randn(3, 7, stock.config.n_embd, requires_grad=True)
    with torch.no_grad():
        torch.testing.assert_close(
            model(inputs_embeds=embeds).logits, stock(inputs_embeds=embeds).logits, rtol=1e-5, atol=1e-5
        )
    for p in stock.parameters():
        p.requires_grad_(False)
    kept = {
        name: saved_bytes(lambda m=m: m(inputs_embeds=embeds).logits)
        for name, m in (("stock", stock), ("fused", model))
    }
    tokens = embeds.shape[0] * embeds.shape[1]
    mlp_inner = 4 * stock.config.n_embd  # three fewer fp32 tensors of this width per block and token
    assert kept["stock"] - kept["fused"] >= 3 * mlp_inner * embeds.element_size() * tokens * stock.config.n_layer


def test_fuse_tanh_gelu_swaps_both_elementwise_forms_and_counts_them():
    from transformers.activations import FastGELUActivation, NewGELUActivation, get_activation

    fused_type = type(get_activation("gelu_pytorch_tanh"))
    model = torch.nn.Sequential(NewGELUActivation(), torch.nn.Linear(4, 4), FastGELUActivation(), torch.nn.ReLU())
    x = torch.randn(5, 4)
    expected = model(x)
    assert fuse_tanh_gelu(model) == 2
    assert [type(m) for m in model] == [fused_type, torch.nn.Linear, fused_type, torch.nn.ReLU]
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    assert fuse_tanh_gelu(model) == 0


def test_auto_quantization_is_8bit_on_cuda_and_none_on_cpu():
    assert resolve_quantization("auto", torch.device("cuda")) == "8bit"
    assert resolve_quantization("auto", torch.device("cpu")) == "none"
    assert resolve_quantization("4bit", torch.device("cpu")) == "4bit"


def test_bad_backbone_inputs(tmp_path, tiny_backbone_dir):
    with pytest.raises(V2TError, match="unknown quantization '3bit'"):
        load_backbone(tiny_backbone_dir, quantization="3bit")
    with pytest.raises(V2TError, match="GGUF file .* does not exist"):
        resolve_backbone(str(tmp_path / "model.gguf"))
    with pytest.raises(V2TError, match="unknown offline backbone"):
        resolve_backbone("offline:llama-7b")
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(V2TError, match="is a file"):
        resolve_backbone(str(tmp_path / "weights.txt"))


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_backbones_run_forward_and_backward_on_cpu(tiny_backbone_64_dir, tiny_encoder, quantization):
    pytest.importorskip("bitsandbytes")
    # hidden 64: bitsandbytes' CPU 4-bit kernels need in_features to be a multiple of its block size (64)
    v2t = make_v2t(tiny_backbone_64_dir, tiny_encoder, quantization=quantization)
    assert v2t.backbone_info["quantization"] == quantization
    import bitsandbytes as bnb

    layer_type = bnb.nn.Linear8bitLt if quantization == "8bit" else bnb.nn.Linear4bit
    assert any(isinstance(m, layer_type) for m in v2t.base_model.modules())
    vectors = torch.randn(3, tiny_encoder.dim)
    v2t.train()
    loss = v2t.loss(vectors, SENTENCES[:3])
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in v2t.trainable_parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert len(v2t.generate(vectors, max_new_tokens=4)) == 3


def test_the_int8_threshold_reaches_the_8bit_layers_and_the_bundle(tiny_backbone_64_dir, tiny_encoder, tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from lora_v2t import load_adapter

    v2t = make_v2t(tiny_backbone_64_dir, tiny_encoder, quantization="8bit", int8_threshold=0.0)
    layers = [m for m in v2t.base_model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert layers and all(m.state.threshold == 0.0 for m in layers)
    bundle = v2t.save_adapter(tmp_path / "bundle")
    assert json.loads((bundle / "v2t_config.json").read_text())["backbone"]["int8_threshold"] == 0.0
    loaded = load_adapter(bundle, device="cpu", encoder=tiny_encoder)  # as trained: 8-bit, threshold 0
    reloaded = [m for m in loaded.base_model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert len(reloaded) == len(layers) and all(m.state.threshold == 0.0 for m in reloaded)
    assert make_v2t(tiny_backbone_64_dir, tiny_encoder).backbone_info["int8_threshold"] is None  # not 8-bit


def test_4bit_on_a_shape_the_cpu_kernels_cannot_run_is_refused_at_load(tiny_backbone_dir, tiny_encoder):
    pytest.importorskip("bitsandbytes")
    # hidden 32 < the 4-bit block size 64: bitsandbytes crashes in generate (AVX-512 BF16 CPUs) or silently
    # dequantizes with the wrong scales (other CPUs)
    with pytest.raises(
        V2TError,
        match=r"^backbone .* cannot run in 4-bit on the CPU: layer transformer\.h\.0\.attn"
        r"\.c_attn has in_features 32, not a multiple of bitsandbytes' 4-bit block size "
        r"64 .*; use quantization 8bit or none",
    ) as error:
        make_v2t(tiny_backbone_dir, tiny_encoder, quantization="4bit")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("avx512_bf16", [True, False])
def test_cpu_4bit_rules(monkeypatch, avx512_bf16):
    bnb = pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional

    from lora_v2t.model.backbone import cpu_4bit_problem

    monkeypatch.setattr(bitsandbytes.functional, "has_avx512bf16", lambda: avx512_bf16)
    assert cpu_4bit_problem(torch.nn.Sequential(bnb.nn.Linear4bit(128, 96), bnb.nn.Linear4bit(64, 64))) is None
    assert "in_features 96, not a multiple" in cpu_4bit_problem(torch.nn.Sequential(bnb.nn.Linear4bit(96, 64)))
    rows = cpu_4bit_problem(torch.nn.Sequential(bnb.nn.Linear4bit(64, 48)))  # AVX-512 BF16 packs 32 rows
    assert (rows is not None and "out_features 48, not a multiple of 32" in rows) == avx512_bf16


def test_a_quantized_base_is_refused_for_full_training_only():
    from torch import nn

    from lora_v2t import V2TError
    from lora_v2t.model.backbone import train_every_weight

    base = nn.Linear(2, 2)
    base.v2t_quantization = "8bit"  # as the loader marks a bitsandbytes base
    assert not any(p.requires_grad for p in train_every_weight(base, trainable=False).parameters())  # decoding
    with pytest.raises(V2TError, match="cannot on a 8bit base: use quantization none"):
        train_every_weight(base, trainable=True)
    base.v2t_quantization = "none"
    assert all(p.requires_grad for p in train_every_weight(base).parameters())
