import numpy as np
import pytest

from lora_v2t import V2TError
from lora_v2t.model.encoders import Encoder, PrecomputedEncoder, check_texts, load_encoder

from .conftest import SENTENCES, TINY_ENCODER_DIM


def test_sentence_transformer_encoder_is_normalised_float32(tiny_encoder, tiny_encoder_dir):
    out = tiny_encoder.encode(SENTENCES[:3])
    assert out.dtype == np.float32 and out.shape == (3, TINY_ENCODER_DIM)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert tiny_encoder.spec == tiny_encoder_dir and tiny_encoder.dim == TINY_ENCODER_DIM
    assert isinstance(tiny_encoder, Encoder)


def test_precomputed_encoder_knows_its_dimension_but_cannot_encode():
    enc = load_encoder("precomputed:768")
    assert isinstance(enc, PrecomputedEncoder) and enc.dim == 768
    with pytest.raises(V2TError, match="cannot encode text"):
        enc.encode(["x"])


def test_encoder_objects_pass_through(tiny_encoder):
    assert load_encoder(tiny_encoder) is tiny_encoder


@pytest.mark.parametrize(
    "spec,message",
    [
        ("precomputed:abc", "precomputed:<dimension>"),
        ("offline:labse", "unknown offline encoder"),
        ("/no/such/folder/encoder", "cannot load sentence encoder"),
    ],
)
def test_bad_encoder_specs(spec, message):
    with pytest.raises(V2TError, match=message):
        load_encoder(spec)


@pytest.mark.parametrize(
    "texts,message",
    [
        ([], "empty batch"),
        (["ok", "   "], "text 1 is empty"),
        (["ok", 3], "text 1 is a int"),
        (["ok", b"\xff\xfe".decode("utf-8", "surrogateescape")], r"text 1 is not valid UTF-8 \(at character 0\)"),
    ],
)
def test_bad_texts(texts, message):
    with pytest.raises(V2TError, match=message):
        check_texts(texts)


def test_a_single_string_is_one_text():
    assert check_texts("Где лодка?") == ["Где лодка?"]


@pytest.mark.slow
def test_offline_use_encoder_is_multilingual():
    enc = load_encoder("offline:use-multilingual")
    out = enc.encode(["Где лодка?", "Where is the boat?", "Сегодня мы ели суп на кухне."])
    assert out.shape == (3, 512) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert out[0] @ out[1] > out[0] @ out[2]  # the translation is closer than an unrelated sentence
