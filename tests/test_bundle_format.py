"""The typed v2t_config.json: shipped bundles round-trip, newer keys are kept, bad values are one line."""

import copy
import json
import re
from pathlib import Path

import pytest

from lora_v2t import V2TError
from lora_v2t.bundle.format import AdapterMeta, BundleConfig

SHIPPED = sorted(Path(__file__).resolve().parents[1].glob("checkpoints/adapters/*/v2t_config.json"))


@pytest.mark.parametrize("file", SHIPPED, ids=lambda f: f.parent.name)
def test_shipped_bundle_configs_round_trip_unchanged(file):
    config = BundleConfig.from_json(file)
    assert json.loads(config.to_json()) == json.loads(file.read_text(encoding="utf-8"))
    assert config.to_json() == file.read_text(encoding="utf-8")  # same key order and layout too


def test_shipped_bundles_are_read_as_typed_sections():
    assert len(SHIPPED) == 12
    first, v2, corrector, split, v3, v3_corrector, v4, v4_corrector, v5, v6, v6_corrector, v8 = (
        BundleConfig.from_json(f) for f in SHIPPED
    )
    assert (first.encoder.spec, first.encoder.dim, first.backbone.hidden_size) == ("offline:use-multilingual", 512, 640)
    assert first.role == "hypothesizer" and "role" in first.absent  # written before correctors existed
    assert "int8_threshold" not in first.backbone.to_dict() and first.backbone.precision == {
        "quantization": "none",
        "compute_dtype": "float32",
    }
    assert v2.corrector == "../use-gemma270m-ru-v2-corrector" and v2.lora.target_modules[0] == "k_proj"
    assert (corrector.role, corrector.context_tokens, corrector.format_version) == ("corrector", 40, 3)
    assert corrector.projector.config().prefix_length == 4
    assert v2.generation_defaults(num_beams=2).num_beams == 2 and v2.generation_defaults().restrict_vocab
    assert (split.role, split.projector.kind, split.projector.config().prefix_length) == ("corrector", "split", 4)
    assert split.training["init_adapter"] == "checkpoints/adapters/use-gemma270m-ru-v2"  # begun from its hypothesizer
    assert v3.corrector == "../use-gemma270m-ru-v2-corrector-split"
    assert v3_corrector.training["init_adapter"] == "checkpoints/adapters/use-gemma270m-ru-v2-corrector-split"
    assert (v3_corrector.role, v3_corrector.projector.kind) == ("corrector", "split")
    assert v3.training["init_adapter"] == "checkpoints/adapters/use-gemma270m-ru-v2"
    assert (v3.projector.prefix_length, v3.lora.r) == (v2.projector.prefix_length, v2.lora.r)  # a warm start's shapes
    assert v4.training["init_adapter"] == "checkpoints/adapters/use-gemma270m-ru-v3" and v4.training["order_seed"] == 4
    assert v4.training["sample"] == v3.training["sample"]  # the same sample: heldout's sentences stay unseen by both
    assert v4.corrector == "../use-gemma270m-ru-v4-corrector"
    assert v4_corrector.training["init_adapter"] == "checkpoints/adapters/use-gemma270m-ru-v3-corrector"
    assert v5.training["init_adapter"] == "checkpoints/adapters/use-gemma270m-ru-v4" and v5.training["order_seed"] == 5
    assert v5.training["sample"] == v3.training["sample"] and v5.corrector == v4.corrector  # v4's corrector serves it
    assert v6.training["init_adapter"] == "checkpoints/adapters/use-gemma270m-ru-v5" and v6.training["order_seed"] == 6
    assert v6.training["sample"] == v3.training["sample"] and v6.corrector == "../use-gemma270m-ru-v6-corrector2"
    assert (v6_corrector.projector.kind, v6_corrector.projector.prefix_length) == ("split", 8)  # 8 slots a vector
    assert v6_corrector.training["init_adapter"] == "checkpoints/runs/use-gemma270m-ru-v6-corrector/final"
    assert v8.training["init_adapter"] == "checkpoints/adapters/use-gemma270m-ru-v6" and v8.training["order_seed"] == 7
    assert v8.training["sample"] == v3.training["sample"] and v8.corrector == v6.corrector  # v6's corrector serves it
    assert (v8.projector.prefix_length, v6.projector.prefix_length, v8.lora.r) == (8, 4, v6.lora.r)  # v6's slots twice


def test_keys_of_a_newer_writer_are_kept(tmp_path):
    data = json.loads(SHIPPED[1].read_text(encoding="utf-8"))
    data["new_top"] = {"a": [1, 2]}
    data["backbone"]["new_key"] = "x"
    data["lora"]["new_lora_key"] = 3
    file = tmp_path / "v2t_config.json"
    file.write_text(json.dumps(data), encoding="utf-8")
    config = BundleConfig.from_json(file)
    assert config.extra == {"new_top": {"a": [1, 2]}} and config.backbone.extra == {"new_key": "x"}
    assert json.loads(config.to_json()) == data
    meta = AdapterMeta.of_bundle(config, source="here")
    assert meta.extra == {"new_top": {"a": [1, 2]}} and meta.source == "here" and meta.corrector == config.corrector


def test_reading_does_not_share_the_callers_data(tmp_path):
    data = json.loads(SHIPPED[0].read_text(encoding="utf-8"))
    config = BundleConfig.from_dict(copy.deepcopy(data), tmp_path / "v2t_config.json")
    config.lora.target_modules.append("changed")
    config.training["steps"] = -1
    assert BundleConfig.from_dict(data, tmp_path / "v2t_config.json").to_dict() == data


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("format_version"), "has no integer format_version"),
        (lambda d: d.update(format_version=99), "uses bundle format 99, newer than"),
        (lambda d: d.update(role="judge"), "role must be one of hypothesizer, corrector, got 'judge'"),
        (lambda d: d.update(trainable="half"), "trainable must be one of lora, full, got 'half'"),
        (lambda d: d.update(corrector=3), "corrector must be a folder or hub id"),
        (lambda d: d.pop("backbone"), "lacks the 'backbone' section"),
        (lambda d: d["encoder"].update(dim="512"), "lacks encoder.dim (a int)"),
        (lambda d: d["projector"].pop("kind"), "projector section lacks 'kind'"),
        (lambda d: d["backbone"].update(quantization="2bit"), "backbone.quantization must be one of"),
        (lambda d: d["backbone"].update(compute_dtype="int4"), "backbone.compute_dtype must be float32"),
        (lambda d: d["generation"].update(num_beams=0), "its generation defaults are not valid"),
        (lambda d: d.update(generation=[1]), "its generation defaults are not valid"),
        (lambda d: d.update(training=[1]), "the 'training' section must be a JSON object"),
        (lambda d: d.update(output_vocab_size=0), "output_vocab_size must be a positive integer or null"),
    ],
)
def test_bad_values_are_one_line_naming_the_file_and_key(tmp_path, change, message):
    data = json.loads(SHIPPED[1].read_text(encoding="utf-8"))
    change(data)
    file = tmp_path / "v2t_config.json"
    file.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(V2TError, match=re.escape(message)) as info:
        BundleConfig.from_json(file)
    assert "\n" not in str(info.value) and (str(file) in str(info.value) or str(tmp_path) in str(info.value))


def test_a_file_that_is_not_json_is_one_line(tmp_path):
    file = tmp_path / "v2t_config.json"
    file.write_text("{not json", encoding="utf-8")
    with pytest.raises(V2TError, match="is not valid JSON"):
        BundleConfig.from_json(file)


def test_a_newer_writers_keys_survive_a_load_and_a_save(v2t, tmp_path):
    from lora_v2t import load_adapter

    bundle = v2t.save_adapter(tmp_path / "bundle")
    data = json.loads((bundle / "v2t_config.json").read_text(encoding="utf-8"))
    data["from_a_newer_writer"] = {"kept": True}
    (bundle / "v2t_config.json").write_text(json.dumps(data), encoding="utf-8")
    loaded = load_adapter(bundle, device="cpu")
    assert loaded.meta.source == str(bundle) and loaded.meta.role == "hypothesizer"
    resaved = json.loads((loaded.save_adapter(tmp_path / "again") / "v2t_config.json").read_text(encoding="utf-8"))
    assert resaved["from_a_newer_writer"] == {"kept": True}
    assert {k: v for k, v in resaved.items() if k != "lora_v2t_version"} == {
        k: v for k, v in data.items() if k != "lora_v2t_version"
    }
