import json
import os
import re
import shutil

import pytest
import torch
from safetensors import safe_open

from lora_v2t import V2TError, load_adapter
from lora_v2t.bundle.adapter import validate_bundle
from lora_v2t.bundle.layout import BUNDLE_FILES, CORRECTOR_FORMAT_VERSION, FORMAT_VERSION, OUTPUT_VOCAB_FILE

from .conftest import make_v2t


def vectors_for(v2t, n=4, seed=0):
    return torch.randn(n, v2t.embedding_dim, generator=torch.Generator().manual_seed(seed))


def logits_of(v2t, vectors):
    with torch.no_grad():
        return v2t.forward(vectors, **v2t.tokenize(["Где лодка?", "Кошка спит.", "Завтра дождь.", "Мы тут."])).logits


@pytest.fixture()
def bundle(v2t, tmp_path):
    return v2t.save_adapter(tmp_path / "bundle", training={"steps": 3, "data": "unit test"})


def test_bundle_has_exactly_the_documented_files_and_no_base_weights(v2t, bundle):
    assert sorted(p.name for p in bundle.iterdir()) == sorted(BUNDLE_FILES)
    with safe_open(str(bundle / "adapter_model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)
    with safe_open(str(bundle / "projector.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == set(v2t.projector.state_dict())
    config = json.loads((bundle / "v2t_config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION
    assert config["encoder"] == {"spec": v2t.meta.encoder.spec, "dim": v2t.embedding_dim}
    assert config["backbone"]["hidden_size"] == 32 and config["backbone"]["vocab_size"] == 300
    assert config["training"] == {"steps": 3, "data": "unit test"}
    assert "load_adapter" in (bundle / "README.md").read_text()
    assert not list(bundle.parent.glob(".bundle*"))  # no temporary folder left behind


def test_every_file_of_a_bundle_has_the_permissions_of_its_config(bundle):
    mode = (bundle / "v2t_config.json").stat().st_mode
    assert {p.name: p.stat().st_mode for p in bundle.iterdir()} == {p.name: mode for p in bundle.iterdir()}


def test_save_then_load_gives_identical_logits_and_greedy_text(v2t, bundle):
    vectors = vectors_for(v2t)
    loaded = load_adapter(bundle, device="cpu")
    assert torch.equal(logits_of(v2t, vectors), logits_of(loaded, vectors))
    assert v2t.generate(vectors, max_new_tokens=10) == loaded.generate(vectors, max_new_tokens=10)
    assert loaded.meta.training["steps"] == 3


def test_creating_and_loading_from_python_show_no_notice_meant_for_peft(bundle, tiny_backbone_dir, tiny_encoder):
    """peft asks every model it wraps for transformers' deprecated ``is_gradient_checkpointing``: the FutureWarning
    is transformers' notice to peft, hidden where lora_v2t wraps a model; a script calling load_adapter saw it."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_v2t(tiny_backbone_dir, tiny_encoder, perturb=False)
        load_adapter(bundle, device="cpu").load_adapter(bundle, name="second")  # a second one onto its base
    assert [str(w.message) for w in caught if "is_gradient_checkpointing" in str(w.message)] == []


def test_only_the_notice_to_peft_is_hidden_while_wrapping():
    import warnings

    from lora_v2t.model.lora import wrapping_in_peft

    notice = "`is_gradient_checkpointing` is deprecated and will be removed in v6."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with wrapping_in_peft():
            for message, category in (
                (notice, FutureWarning),
                ("`torch_dtype` is deprecated! Use `dtype` instead!", FutureWarning),
                ("`is_gradient_checkpointing` is deprecated, said as a UserWarning", UserWarning),
            ):
                warnings.warn(message, category, stacklevel=1)
        warnings.warn(notice, FutureWarning, stacklevel=1)
    assert [(type(w.message), str(w.message)[:12]) for w in caught] == [
        (FutureWarning, "`torch_dtype"),
        (UserWarning, "`is_gradient"),
        (FutureWarning, "`is_gradient"),
    ]


def test_a_bf16_projector_stores_its_matrices_at_half_size_and_loads_them_back_rounded(v2t, bundle, tmp_path):
    small = v2t.save_adapter(tmp_path / "small", projector_dtype="bfloat16")
    state = v2t.projector.state_dict()
    with safe_open(str(small / "projector.safetensors"), framework="pt") as handle:
        stored = {k: handle.get_tensor(k) for k in handle.keys()}
    assert {k: t.dtype for k, t in stored.items()} == {
        k: torch.bfloat16 if t.ndim >= 2 else torch.float32 for k, t in state.items()
    }
    matrices = sum(t.numel() for t in state.values() if t.ndim >= 2)
    saved = (bundle / "projector.safetensors").stat().st_size - (small / "projector.safetensors").stat().st_size
    assert saved >= 2 * matrices - 64  # 2 bytes a matrix entry, less what the longer dtype names add to the header
    loaded = load_adapter(small, device="cpu").projector.state_dict()
    for key, value in state.items():
        assert loaded[key].dtype == torch.float32
        expected = value.to(torch.bfloat16).float() if value.ndim >= 2 else value
        assert torch.equal(loaded[key], expected), key


@pytest.mark.parametrize("dtype", ["float16", "fp32", "int8"])
def test_a_projector_dtype_not_offered_is_refused_before_anything_is_written(v2t, tmp_path, dtype):
    with pytest.raises(V2TError, match=f"projector_dtype must be one of float32, bfloat16, got '{dtype}'"):
        v2t.save_adapter(tmp_path / "bundle", projector_dtype=dtype)
    assert not (tmp_path / "bundle").exists()


def test_plain_peft_loads_the_lora_part(v2t, bundle, tiny_backbone_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_backbone_dir)
    peft_model = PeftModel.from_pretrained(base, str(bundle))
    ours = {k.replace(".default", ""): v for k, v in v2t.model.state_dict().items() if "lora_" in k}
    theirs = {k.replace(".default", ""): v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert ours.keys() == theirs.keys() and ours
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_two_adapters_on_one_base_switch_back_and_forth(tiny_backbone_dir, tiny_encoder, tmp_path):
    first = make_v2t(tiny_backbone_dir, tiny_encoder, seed=1)
    second = make_v2t(tiny_backbone_dir, tiny_encoder, seed=2, projector="linear", prefix_length=2)
    first.save_adapter(tmp_path / "a")
    second.save_adapter(tmp_path / "b")
    vectors = vectors_for(first)
    expected_a, expected_b = logits_of(first, vectors), logits_of(second, vectors)
    assert not torch.allclose(expected_a[:, -4:], expected_b[:, -4:])

    v2t = load_adapter(tmp_path / "a", device="cpu", name="a")
    base_id = id(v2t.base_model)
    v2t.load_adapter(tmp_path / "b", name="b")
    assert v2t.adapters == ["a", "b"] and v2t.active_adapter == "a"
    for _ in range(2):
        v2t.set_adapter("b")
        assert v2t.active_adapter == "b" and torch.equal(logits_of(v2t, vectors), expected_b)
        v2t.set_adapter("a")
        assert torch.equal(logits_of(v2t, vectors), expected_a)
    assert id(v2t.base_model) == base_id  # switching never reloads the base
    with pytest.raises(V2TError, match="is active"):
        v2t.delete_adapter("a")
    with pytest.raises(V2TError, match="already loaded"):
        v2t.load_adapter(tmp_path / "b", name="b")
    v2t.delete_adapter("b")
    assert v2t.adapters == ["a"] and not any(".b." in n for n, _ in v2t.model.named_parameters())
    with pytest.raises(V2TError, match="no adapter named 'b'"):
        v2t.set_adapter("b")
    assert torch.equal(logits_of(v2t, vectors), expected_a)


def test_saving_a_named_adapter_writes_a_flat_bundle(tiny_backbone_dir, tiny_encoder, tmp_path, bundle):
    v2t = load_adapter(bundle, device="cpu", name="news")
    out = v2t.save_adapter(tmp_path / "news")
    assert sorted(p.name for p in out.iterdir()) == sorted(BUNDLE_FILES)
    vectors = vectors_for(v2t)
    assert torch.equal(logits_of(load_adapter(out, device="cpu"), vectors), logits_of(v2t, vectors))


def test_resaving_replaces_the_old_bundle_and_a_crash_keeps_it(v2t, bundle, monkeypatch):
    before = (bundle / "projector.safetensors").read_bytes()
    import safetensors.torch

    def crash(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="No space left"):
        v2t.save_adapter(bundle)
    assert (bundle / "projector.safetensors").read_bytes() == before
    assert sorted(p.name for p in bundle.iterdir()) == sorted(BUNDLE_FILES)
    assert not list(bundle.parent.glob(".bundle*"))
    monkeypatch.undo()
    with torch.no_grad():
        v2t.projector.norm.weight.add_(1.0)
    v2t.save_adapter(bundle)
    assert (bundle / "projector.safetensors").read_bytes() != before


def test_a_failed_final_rename_puts_the_old_bundle_back(v2t, bundle, monkeypatch):
    import pathlib

    before = (bundle / "projector.safetensors").read_bytes()
    real_rename = pathlib.Path.rename

    def fail_moving_the_new_bundle(self, target):
        if self.name.startswith(".bundle.tmp"):
            raise OSError("rename failed")
        return real_rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", fail_moving_the_new_bundle)
    with pytest.raises(OSError, match="rename failed"):
        v2t.save_adapter(bundle)
    monkeypatch.undo()
    assert (bundle / "projector.safetensors").read_bytes() == before
    assert not list(bundle.parent.glob(".bundle*"))


def test_refuses_to_overwrite_a_folder_that_is_not_a_bundle(v2t, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("important")
    with pytest.raises(V2TError, match="not an adapter bundle"):
        v2t.save_adapter(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "important"


# ---------------------------------------------------------------- bad bundles
def copy_bundle(bundle, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def edit_config(path, **changes):
    config = json.loads((path / "v2t_config.json").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__") if "__" in dotted else (None, dotted)
        (config[section] if section else config)[key] = value
    (path / "v2t_config.json").write_text(json.dumps(config))


def test_missing_folder_and_missing_file(bundle, tmp_path):
    with pytest.raises(V2TError, match="does not exist"):
        load_adapter(tmp_path / "nothing-here")
    for nothing in (None, "", "  "):
        with pytest.raises(V2TError, match="an adapter is a bundle folder or a hub id"):
            load_adapter(nothing)
    run = tmp_path / "runs" / "r"
    shutil.copytree(bundle, run / "final")
    with pytest.raises(V2TError, match=r"is a training run's folder, not an adapter: give .*final"):
        load_adapter(run)
    broken = copy_bundle(bundle, tmp_path)
    (broken / "projector.safetensors").unlink()
    with pytest.raises(V2TError, match="missing projector.safetensors"):
        load_adapter(broken)


@pytest.mark.parametrize("file", ["adapter_model.safetensors", "projector.safetensors"])
def test_truncated_weights(bundle, tmp_path, file):
    broken = copy_bundle(bundle, tmp_path)
    data = (broken / file).read_bytes()
    (broken / file).write_bytes(data[: len(data) // 2])
    with pytest.raises(V2TError, match=f"{file} is truncated: "):
        load_adapter(broken)


def test_corrupt_json(bundle, tmp_path):
    broken = copy_bundle(bundle, tmp_path)
    (broken / "v2t_config.json").write_text('{"format_version": 1, "encoder": ')
    with pytest.raises(V2TError, match="not valid JSON"):
        load_adapter(broken)


def test_newer_format_version(bundle, tmp_path):
    broken = copy_bundle(bundle, tmp_path)
    edit_config(broken, format_version=CORRECTOR_FORMAT_VERSION + 1)  # newer than any this version writes
    with pytest.raises(V2TError, match="upgrade lora_v2t"):
        load_adapter(broken)


@pytest.mark.parametrize("key,value", [("backbone__hidden_size", 64), ("backbone__vocab_size", 50257)])
def test_bundle_for_another_backbone(bundle, tmp_path, key, value):
    broken = copy_bundle(bundle, tmp_path)
    edit_config(broken, **{key: value})
    with pytest.raises(V2TError, match=f"made for backbone .* {key.split('__')[1]} {value}"):
        load_adapter(broken, device="cpu")


def test_bundle_for_another_backbone_onto_a_loaded_base(bundle, tmp_path, v2t):
    broken = copy_bundle(bundle, tmp_path)
    edit_config(broken, backbone__hidden_size=1536)
    with pytest.raises(V2TError, match="hidden_size 1536"):
        v2t.load_adapter(broken, name="other")
    assert v2t.adapters == ["default"]


def test_encoder_of_another_dimension(bundle):
    with pytest.raises(V2TError, match="expects 24-d vectors .* makes 768-d"):
        load_adapter(bundle, encoder="precomputed:768", device="cpu")


@pytest.mark.parametrize("key", ["encoder__dim", "encoder__spec", "backbone__name"])
def test_bundle_config_missing_a_key(bundle, tmp_path, key):
    broken = copy_bundle(bundle, tmp_path)
    config = json.loads((broken / "v2t_config.json").read_text())
    section, name = key.split("__")
    del config[section][name]
    (broken / "v2t_config.json").write_text(json.dumps(config))
    with pytest.raises(V2TError, match=f"lacks {section}.{name}"):
        load_adapter(broken)


def test_a_failed_load_onto_a_base_leaves_nothing_half_loaded(bundle, tmp_path, v2t):
    broken = copy_bundle(bundle, tmp_path)
    edit_config(broken, projector__prefix_length=2)
    with pytest.raises(V2TError, match="does not match"):
        v2t.load_adapter(broken, name="other")
    assert v2t.adapters == ["default"] and "other" not in v2t.model.peft_config


def test_unknown_projector_kind_in_bundle(bundle, tmp_path):
    broken = copy_bundle(bundle, tmp_path)
    edit_config(broken, projector__kind="transformer")
    with pytest.raises(V2TError, match="unknown projector kind 'transformer'"):
        load_adapter(broken)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"backbone__quantization": "3bit"}, "backbone.quantization must be one of 8bit, 4bit, none, got '3bit'"),
        ({"backbone__compute_dtype": "float8"}, "backbone.compute_dtype must be float32, bfloat16 or float16"),
    ],
)
def test_bad_precision_in_bundle_is_refused_at_load(bundle, tmp_path, change, message):
    broken = copy_bundle(bundle, tmp_path)
    edit_config(broken, **change)
    with pytest.raises(V2TError, match=message):
        validate_bundle(broken)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"generation__beam_width": 4}, r"unknown generation option\(s\) \['beam_width'\]"),
        ({"generation__num_beams": 0}, "num_beams must be >= 1"),
        ({"generation": ["greedy"]}, "generation defaults are not valid"),
    ],
)
def test_bad_generation_defaults_in_bundle_are_refused_at_load(bundle, tmp_path, change, message):
    broken = copy_bundle(bundle, tmp_path)
    edit_config(broken, **change)
    with pytest.raises(V2TError, match=message) as caught:
        load_adapter(broken)
    assert "fix or remove the 'generation' section" in str(caught.value)


def test_pickle_offered_as_weights(bundle, tmp_path):
    broken = copy_bundle(bundle, tmp_path)
    torch.save({"w": torch.zeros(2)}, broken / "projector.safetensors")
    with pytest.raises(V2TError, match="pickle"):
        load_adapter(broken)
    (broken / "projector.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, broken / "projector.bin")
    with pytest.raises(V2TError, match=r"pickle file\(s\) \['projector.bin'\]"):
        load_adapter(broken)


@pytest.fixture()
def full_bundle(tiny_backbone_dir, tiny_encoder, tmp_path):
    """A fully fine-tuned model's bundle: no LoRA, its whole backbone in backbone/ (as safetensors)."""
    v2t = make_v2t(tiny_backbone_dir, tiny_encoder, perturb=False, trainable="full")
    return v2t.save_adapter(tmp_path / "full")


def pickle_the_backbone(bundle):
    """Swap backbone/model.safetensors for the pickle transformers also reads, pytorch_model.bin."""
    from safetensors.torch import load_file

    weights = bundle / "backbone" / "model.safetensors"
    torch.save(load_file(str(weights)), bundle / "backbone" / "pytorch_model.bin")
    weights.unlink()


def test_a_pickled_backbone_in_a_bundle_is_refused_by_every_command(full_bundle, capsys, no_base_load):
    assert validate_bundle(full_bundle).trainable == "full"
    pickle_the_backbone(full_bundle)
    with pytest.raises(V2TError, match=r"holds pickle file\(s\) \['backbone/pytorch_model.bin'\]: lora_v2t loads only"):
        validate_bundle(full_bundle)
    with pytest.raises(V2TError, match="holds pickle file"):
        load_adapter(full_bundle, device="cpu")
    from lora_v2t.cli import main

    for argv in (["info", str(full_bundle)], ["generate", "--adapter", str(full_bundle), "--text", "Где лодка?"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "holds pickle file(s) ['backbone/pytorch_model.bin']" in err


@pytest.mark.parametrize("name", ["training_args.bin", "extra.pt", "EMA.PTH", "state.pkl", "last.ckpt"])
def test_any_pickle_beside_the_weights_is_refused(bundle, tmp_path, name):
    broken = copy_bundle(bundle, tmp_path)
    torch.save({"w": torch.zeros(2)}, broken / name)
    with pytest.raises(V2TError, match=rf"holds pickle file\(s\) \[{re.escape(repr(name))}\]"):
        validate_bundle(broken)


def test_a_pickle_added_to_a_validated_backbone_is_still_caught(full_bundle, monkeypatch):
    import lora_v2t.bundle.adapter as adapter_module

    monkeypatch.setattr(adapter_module, "SETTLED_NS", 0)  # as if the files had been written long ago
    validate_bundle(full_bundle)
    validate_bundle(full_bundle)  # remembered
    pickle_the_backbone(full_bundle)
    with pytest.raises(V2TError, match="holds pickle file"):
        validate_bundle(full_bundle)


def test_a_backbone_loaded_from_a_bundle_loads_only_safetensors(tiny_backbone_dir, tmp_path):
    from lora_v2t.model.backbone import load_backbone

    folder = tmp_path / "backbone"
    shutil.copytree(tiny_backbone_dir, folder)
    pickle_the_backbone(tmp_path)
    with pytest.raises(V2TError, match="cannot load backbone"):
        load_backbone(str(folder), quantization="none", device="cpu", use_safetensors=True)


def safetensors_starting_with(tensors: dict, first: int, second: range) -> bytes:
    """``tensors`` in safetensors whose header length's low byte is ``first`` and next byte lies in ``second``
    (padding a metadata string), so the file opens like a pickle of protocol 2..5 would."""
    from safetensors.torch import save

    for pad in range(4096):
        data = save(tensors, metadata={"format": "pt", "pad": "x" * pad})
        if data[0] == first and data[1] in second:
            return data
    raise AssertionError("no padding gives that header length")


def test_a_safetensors_file_that_starts_like_a_pickle_loads(v2t, bundle, tmp_path):
    # the default recipe's LoRA header is 12,416 = 0x3080 bytes: its first byte is 0x80, like a pickle's
    copy = copy_bundle(bundle, tmp_path)
    state = {k: v.contiguous() for k, v in v2t.projector.state_dict().items()}
    data = safetensors_starting_with(state, 0x80, range(2, 6))
    assert data[0] == 0x80 and 2 <= data[1] <= 5  # 0x80 + a pickle protocol byte
    (copy / "projector.safetensors").write_bytes(data)
    vectors = vectors_for(v2t)
    assert torch.equal(logits_of(load_adapter(copy, device="cpu"), vectors), logits_of(v2t, vectors))
    (copy / "projector.safetensors").write_bytes(data[:40])  # the same file cut inside its header
    with pytest.raises(V2TError, match="projector.safetensors is truncated: its header alone should take"):
        load_adapter(copy, device="cpu")


@pytest.mark.parametrize(
    "write,message",
    [
        pytest.param(
            lambda f: torch.save({"w": torch.zeros(2)}, f, _use_new_zipfile_serialization=False),
            "is a pickle file .*never loads pickle; convert it with safetensors.torch.save_file",
            id="pickle",
        ),
        pytest.param(
            lambda f: torch.save({"w": torch.zeros(2)}, f),
            r"is a zip archive \(torch.save's default format.*never loads pickle; convert it",
            id="zip",
        ),
        pytest.param(lambda f: f.write_bytes(b""), r"is empty \(0 bytes\).*save or copy the adapter again", id="empty"),
        pytest.param(
            lambda f: f.write_bytes(f.read_bytes()[:-10]),
            r"is truncated: its header places tensor data up to byte \d+ but only \d+ bytes.*save or copy",
            id="truncated-data",
        ),
        pytest.param(
            lambda f: f.write_bytes(f.read_bytes()[:40]),
            r"is truncated: its header alone should take \d+ bytes but only 32 follow.*save or copy",
            id="truncated-header",
        ),
        pytest.param(lambda f: f.write_bytes(f.read_bytes()[:5]), "is truncated: 5 bytes", id="truncated-length"),
        pytest.param(
            lambda f: f.write_bytes(b"\x93NUMPY" + bytes(200)), "is corrupt: not a safetensors file", id="corrupt"
        ),
        pytest.param(
            lambda f: f.write_bytes(f.read_bytes()[:8] + b"[" + f.read_bytes()[9:]),
            "is corrupt: not a safetensors file",
            id="corrupt-header",
        ),
    ],
)
def test_weights_that_are_not_safetensors_are_named(bundle, tmp_path, write, message):
    broken = copy_bundle(bundle, tmp_path)
    file = broken / "adapter_model.safetensors"
    write(file)
    with pytest.raises(V2TError, match=f"^{re.escape(str(file))} {message}") as error:
        load_adapter(broken)
    assert "\n" not in str(error.value)


def test_projector_weights_that_do_not_match_the_config(bundle, tmp_path):
    broken = copy_bundle(bundle, tmp_path)
    edit_config(broken, projector__prefix_length=3)
    with pytest.raises(V2TError, match="does not match its v2t_config.json"):
        load_adapter(broken, device="cpu")


@pytest.fixture()
def vocab_bundle(v2t, tmp_path):
    v2t.set_output_vocab([7, 3, 40, 7])
    try:
        yield v2t.save_adapter(tmp_path / "vocab-bundle")
    finally:
        v2t.set_output_vocab(None)


def test_an_output_vocabulary_travels_with_the_bundle(v2t, vocab_bundle):
    assert sorted(p.name for p in vocab_bundle.iterdir()) == sorted(BUNDLE_FILES + (OUTPUT_VOCAB_FILE,))
    eos = v2t.tokenizer.eos_token_id
    config = json.loads((vocab_bundle / "v2t_config.json").read_text())
    assert config["output_vocab_size"] == len({3, 7, 40, eos})
    assert f"the {config['output_vocab_size']} tokens" in (vocab_bundle / "README.md").read_text()
    loaded = load_adapter(vocab_bundle, device="cpu")
    assert loaded.output_vocab.tolist() == sorted({3, 7, 40, eos})
    v2t.set_output_vocab(None)
    loaded.load_adapter(v2t.save_adapter(vocab_bundle.parent / "plain"), name="plain")
    loaded.set_adapter("plain")
    assert loaded.output_vocab is None  # each adapter keeps its own
    loaded.set_adapter("default")
    loaded.delete_adapter("plain")
    assert loaded.output_vocab.tolist() == sorted({3, 7, 40, eos})


def test_a_bundle_whose_output_vocabulary_is_missing_or_wrong(vocab_bundle, tmp_path, v2t):
    broken = copy_bundle(vocab_bundle, tmp_path)
    edit_config(broken, output_vocab_size=99)
    with pytest.raises(V2TError, match="does not hold the 99 token ids"):
        v2t.load_adapter(broken, name="other")
    assert v2t.adapters == ["default"] and "other" not in v2t.model.peft_config
    assert "other" not in v2t.output_vocabs and "other" not in v2t.adapter_meta
    for bad in ("12", -3, 0, True, 4.0):
        edit_config(broken, output_vocab_size=bad)
        with pytest.raises(V2TError, match="output_vocab_size must be a positive integer or null"):
            load_adapter(broken)
    from safetensors.torch import save_file

    save_file({"token_ids": torch.tensor([3, 10**6, 7, 0])}, str(broken / OUTPUT_VOCAB_FILE))
    edit_config(broken, output_vocab_size=4)
    with pytest.raises(V2TError, match=r"output_vocab.safetensors: output vocabulary ids must lie in \[0, 300\)"):
        v2t.load_adapter(broken, name="other")
    assert v2t.adapters == ["default"] and "other" not in v2t.output_vocabs
    (broken / OUTPUT_VOCAB_FILE).unlink()
    with pytest.raises(V2TError, match=f"missing {OUTPUT_VOCAB_FILE}"):
        load_adapter(broken)


def test_an_adapter_keeps_the_precision_it_was_trained_in_through_loads_and_saves(bundle, tmp_path, v2t, caplog):
    pytest.importorskip("bitsandbytes")
    assert json.loads((bundle / "v2t_config.json").read_text())["backbone"]["quantization"] == "none"
    on_int8 = load_adapter(bundle, device="cpu", quantization="8bit")  # forced: a warning, not a new record
    assert "was trained with quantization none; loading it with 8bit as asked" in caplog.text
    resaved = on_int8.save_adapter(tmp_path / "resaved")
    backbone = json.loads((resaved / "v2t_config.json").read_text())["backbone"]
    assert (backbone["quantization"], backbone["compute_dtype"]) == ("none", "float32")
    other = copy_bundle(bundle, tmp_path)
    edit_config(other, backbone__quantization="8bit")
    caplog.clear()
    v2t.load_adapter(other, name="int8-trained")  # onto a base that computes in fp32
    assert "trained with quantization 8bit; the loaded base uses none" in caplog.text
    v2t.set_adapter("int8-trained")
    saved = v2t.save_adapter(tmp_path / "second")
    assert json.loads((saved / "v2t_config.json").read_text())["backbone"]["quantization"] == "8bit"


def rewrite_tensor(file, change):
    """Rewrite one safetensors file of a bundle, applying ``change(tensors)`` to its dict of tensors."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


@pytest.mark.parametrize(
    "file,pick,value",
    [
        ("projector.safetensors", lambda keys: keys[0], float("nan")),
        ("adapter_model.safetensors", lambda keys: [k for k in keys if "lora_B" in k][-1], float("inf")),
    ],
)
def test_nan_or_inf_weights_are_refused_at_load_naming_file_and_tensor(
    bundle, tmp_path, v2t, file, pick, value, capsys, no_base_load
):
    from lora_v2t.cli import main

    broken = copy_bundle(bundle, tmp_path)
    with safe_open(str(broken / file), framework="pt") as handle:
        key = pick(sorted(handle.keys()))

    def poison(tensors):
        tensors[key].view(-1)[3] = value

    rewrite_tensor(broken / file, poison)
    message = f"{broken / file}: tensor {key!r} holds 1 NaN or inf value(s)"
    with pytest.raises(V2TError, match=re.escape(message)):
        load_adapter(broken, device="cpu")
    with pytest.raises(V2TError, match=re.escape(message)):
        v2t.load_adapter(broken, name="other")
    assert v2t.adapters == ["default"]
    assert main(["generate", "--adapter", str(broken), "--text", "Где лодка?"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and len(err.splitlines()) == 1


def test_a_lora_tensor_of_another_rank_is_refused_before_the_base_loads(bundle, tmp_path, no_base_load):
    broken = copy_bundle(bundle, tmp_path)
    file = broken / "adapter_model.safetensors"
    with safe_open(str(file), framework="pt") as handle:
        key = sorted(k for k in handle.keys() if "lora_A" in k)[0]
    rewrite_tensor(file, lambda tensors: tensors.update({key: torch.zeros(12, tensors[key].shape[1])}))
    with pytest.raises(
        V2TError,
        match=re.escape(
            f"{file}: tensor {key!r} has shape [12, 32], but a LoRA A matrix "
            "is (r, in_features) with r=16 (adapter_config.json)"
        ),
    ):
        load_adapter(broken, device="cpu")


def test_a_lora_tensor_that_does_not_fit_the_base_is_one_line_and_loads_nothing(bundle, tmp_path, v2t):
    broken = copy_bundle(bundle, tmp_path)
    file = broken / "adapter_model.safetensors"
    with safe_open(str(file), framework="pt") as handle:
        key = sorted(k for k in handle.keys() if "lora_A" in k)[0]
    rewrite_tensor(file, lambda tensors: tensors.update({key: torch.zeros(16, 35)}))  # the layer takes 32 inputs
    message = f"{file}: tensor {key!r} has shape [16, 35] but the base's layer takes [16, 32]"
    with pytest.raises(V2TError, match=re.escape(message)) as error:
        load_adapter(broken, device="cpu")
    assert "\n" not in str(error.value)
    with pytest.raises(V2TError, match=re.escape(message)):
        v2t.load_adapter(broken, name="other")
    assert v2t.adapters == ["default"] and "other" not in v2t.model.peft_config
    vectors = vectors_for(v2t)
    assert v2t.generate(vectors, max_new_tokens=4) == load_adapter(bundle, device="cpu").generate(
        vectors, max_new_tokens=4
    )  # the loaded adapter still works as before


def test_a_bundle_that_cannot_be_read_is_one_line(bundle, tmp_path, monkeypatch, capsys):
    import pathlib

    from lora_v2t.cli import main

    real_read_text = pathlib.Path.read_text

    def denied(self, *args, **kwargs):
        if self.name == "v2t_config.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", denied)
    message = f"cannot read adapter bundle {bundle}: permission denied on {bundle / 'v2t_config.json'}"
    with pytest.raises(V2TError, match=re.escape(message)):
        load_adapter(bundle)
    assert main(["info", str(bundle)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and len(err.splitlines()) == 1


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads every file")
def test_a_bundle_file_without_read_permission_is_one_line(bundle, tmp_path):
    broken = copy_bundle(bundle, tmp_path)
    (broken / "projector.safetensors").chmod(0)
    with pytest.raises(V2TError, match="permission denied on .*projector.safetensors"):
        load_adapter(broken)


def test_an_unchanged_bundle_is_read_once_and_a_change_after_that_is_still_caught(bundle, tmp_path, monkeypatch):
    import lora_v2t.bundle.adapter as adapter_module

    checked = []
    real_check = adapter_module._check_finite
    monkeypatch.setattr(adapter_module, "_check_finite", lambda file: checked.append(file.name) or real_check(file))
    copied = copy_bundle(bundle, tmp_path)
    validate_bundle(copied)
    validate_bundle(copied)
    assert len(checked) == 4  # just written: read every time (a rewrite within a clock tick keeps the time)
    checked.clear()
    monkeypatch.setattr(adapter_module, "SETTLED_NS", 0)  # as if the files had been written long ago
    first = validate_bundle(copied)
    first.encoder.spec = "changed by the caller"  # each caller gets its own copy
    assert validate_bundle(copied).encoder.spec != "changed by the caller"
    assert sorted(checked) == ["adapter_model.safetensors", "projector.safetensors"]  # the weights read once

    def poison(tensors):
        next(iter(tensors.values())).view(-1)[0] = float("nan")

    rewrite_tensor(copied / "projector.safetensors", poison)
    monkeypatch.setattr(adapter_module, "SETTLED_NS", 5 * 10**9)  # the rewrite is seconds old, at most
    with pytest.raises(V2TError, match="holds 1 NaN or inf value"):
        validate_bundle(copied)
