import pytest
import torch
from torch import nn

from lora_v2t import V2TError
from lora_v2t.model.projector import PrefixProjector, embedding_rms


@pytest.mark.parametrize("kind,k", [("zero-pad", 1), ("linear", 1), ("linear", 3), ("mlp", 1), ("mlp", 4)])
def test_shapes_and_embedding_scale(kind, k):
    proj = PrefixProjector(kind, embedding_dim=24, hidden_size=32, prefix_length=k, target_rms=7.5)
    vectors = torch.randn(5, 24)
    out = proj(vectors)
    assert out.shape == (5, k, 32)
    rms = out.pow(2).mean(-1).sqrt()  # per slot
    assert torch.allclose(rms, torch.full_like(rms, 7.5), rtol=1e-3)


def test_zero_pad_keeps_the_vector_direction_and_has_no_weights():
    proj = PrefixProjector("zero-pad", embedding_dim=3, hidden_size=6, target_rms=2.0)
    out = proj(torch.tensor([[1.0, 2.0, 2.0]]))[0, 0]
    assert torch.all(out[3:] == 0)
    assert torch.allclose(out[:3] / out[0], torch.tensor([1.0, 2.0, 2.0]))
    assert list(proj.parameters()) == []


def test_mlp_is_trainable_and_learns_distinct_prefixes():
    proj = PrefixProjector("mlp", embedding_dim=8, hidden_size=16, prefix_length=2)
    out = proj(torch.eye(8)[:2])
    assert not torch.allclose(out[0], out[1])
    out.sum().backward()
    assert all(p.grad is not None for p in proj.parameters())


def test_bad_projector_settings():
    with pytest.raises(V2TError, match="unknown projector kind 'conv'"):
        PrefixProjector("conv", 8, 16)
    with pytest.raises(V2TError, match="exactly one slot"):
        PrefixProjector("zero-pad", 8, 16, prefix_length=2)
    with pytest.raises(V2TError, match="embedding_dim <= hidden_size"):
        PrefixProjector("zero-pad", 32, 16)
    with pytest.raises(V2TError, match="dimension 5 but this projector expects 8"):
        PrefixProjector("mlp", 8, 16)(torch.randn(2, 5))


class ScaledEmbedding(nn.Embedding):
    """Like Gemma's: multiplies by sqrt(hidden) inside forward."""

    def forward(self, ids):
        return super().forward(ids) * self.embedding_dim**0.5


def test_embedding_rms_includes_scaling_inside_the_embedding_layer():
    class Holder(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def get_input_embeddings(self):
            return self.layer

    torch.manual_seed(0)
    plain = nn.Embedding(500, 64)
    scaled = ScaledEmbedding(500, 64)
    scaled.weight.data.copy_(plain.weight.data)
    assert embedding_rms(Holder(scaled)) == pytest.approx(embedding_rms(Holder(plain)) * 8.0, rel=1e-4)
    assert embedding_rms(Holder(plain)) == pytest.approx(1.0, rel=0.05)  # N(0, 1) init
