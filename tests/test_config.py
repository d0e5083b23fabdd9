import re
from pathlib import Path

import pytest

from lora_v2t import V2TError
from lora_v2t.config import RunConfig, load_config

RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.name for p in RECIPES}
    assert {
        "tiny_debug.yaml",
        "offline_use_gemma270m.yaml",
        "labse_rugpt3large_8bit.yaml",
        "labse_rugpt3small.yaml",
        "original_experiment.yaml",
    } <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_validates(recipe):
    cfg = load_config(recipe)
    assert isinstance(cfg, RunConfig)
    assert cfg.training.run_name and cfg.training.max_steps >= 1
    text = recipe.read_text()
    assert text.count("#") >= 5  # recipes are commented


def test_overrides_apply_and_parse_types():
    cfg = load_config(
        RECIPES[0],
        [
            "--training.lr=1e-4",
            "--lora.target_modules=[q_proj, v_proj]",
            "--data.max_sentences=null",
            "--training.max_minutes=5",
        ],
    )
    assert cfg.training.lr == 1e-4 and cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.max_sentences is None and cfg.training.max_minutes == 5.0


@pytest.mark.parametrize(
    "override,message",
    [
        ("--trainig.lr=1", "unknown section 'trainig' (did you mean 'training'?)"),
        ("--training.projektor_lr=1", "unknown key training.projektor_lr (did you mean 'projector_lr'?)"),
        ("--training.xyzzy=1", "unknown key training.xyzzy; known: batch_size"),
        ("--training.max_steps=1.5", "training.max_steps must be int, got 1.5"),
        ("--training.max_steps=yes", "training.max_steps must be int, got True"),
        ("--training.lr=fast", "training.lr must be float, got 'fast'"),
        ("--data.train=3", "data.train must be str"),
        ("--projector.kind=conv", "unknown projector kind 'conv'"),
        ("--training.loss_vocab=some", "unknown training.loss_vocab 'some'"),
        ("--lora.layers=[-1]", "lora layers must be a non-empty list of block indices"),
        ("--lora.layers=3", "lora.layers must be a list, got 3"),
        ("--backbone.int8_threshold=-1", "backbone.int8_threshold must be >= 0, got -1"),
        ("--backbone.int8_threshold=high", "backbone.int8_threshold must be float, got 'high'"),
        ("--generation.cache=paged", "unknown cache 'paged'; choose one of: dynamic, static"),
        ("training", "write --section.key=value"),
    ],
)
def test_bad_recipe_values(override, message):
    with pytest.raises(V2TError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override,message",
    [
        ("--data.val_size=-1", "data.val_size must be >= 1, got -1"),
        ("--data.val_size=0", "data.val_size must be >= 1, got 0"),
        ("--data.max_sentences=0", "data.max_sentences must be >= 1, got 0"),
        ("--data.min_chars=0", "data.min_chars must be >= 1, got 0"),
        ("--data.max_chars=1", "data.max_chars must be >= data.min_chars (2), got 1"),
        ("--training.lr=-1", "training.lr must be > 0, got -1.0"),
        ("--training.lr=.nan", "training.lr must be > 0, got nan"),
        ("--training.projector_lr=0", "training.projector_lr must be > 0, got 0.0"),
        ("--training.weight_decay=-0.1", "training.weight_decay must be >= 0, got -0.1"),
        ("--training.warmup_steps=-5", "training.warmup_steps must be >= 0, got -5"),
        ("--training.min_lr_ratio=1.5", "training.min_lr_ratio must be >= 0 and <= 1, got 1.5"),
        ("--training.max_grad_norm=-1", "training.max_grad_norm must be >= 0, got -1.0"),
        ("--training.max_minutes=-1", "training.max_minutes must be > 0, got -1.0"),
        ("--training.max_minutes=0", "training.max_minutes must be > 0, got 0.0"),
        (
            "--training.run_name=../../x",
            "training.run_name must be a plain folder name (no '/', '\\' or '..'), got '../../x'",
        ),
        ("--training.run_name=..", "training.run_name must be a plain folder name"),
        ("--training.run_name=''", "training.run_name must be a plain folder name"),
        ("--lora.dropout=1", "lora.dropout must be >= 0 and < 1, got 1.0"),
        ("--lora.dropout=-0.1", "lora.dropout must be >= 0 and < 1, got -0.1"),
        ("--lora.alpha=0", "lora.alpha must be > 0, got 0"),
        ("--projector.hidden_dim=-3", "projector.hidden_dim must be >= 1, got -3"),
        ("--projector.hidden_dim=0", "projector.hidden_dim must be >= 1, got 0"),
        ("--training.seed=-1", "training.seed must be >= 0 and <= 4294967295, got -1"),
        ("--training.seed=4294967296", "training.seed must be >= 0 and <= 4294967295, got 4294967296"),
        ("--data.seed=-1", "data.seed must be >= 0 and <= 4294967295, got -1"),
        ("--data.order_seed=-1", "data.order_seed must be >= 0 and <= 4294967295, got -1"),
        ("--training.num_samples=-1", "training.num_samples must be >= 0, got -1"),
    ],
)
def test_values_out_of_range_name_the_key_and_the_range(override, message):
    with pytest.raises(V2TError, match=re.escape(message)) as refused:
        load_config(None, [override])
    assert "\n" not in str(refused.value)


def test_seeds_accept_their_edges():
    cfg = load_config(None, ["--training.seed=4294967295", "--data.seed=0", "--projector.hidden_dim=1"])
    assert cfg.training.seed == 2**32 - 1 and cfg.projector.hidden_dim == 1


def test_the_batch_order_follows_data_seed_unless_order_seed_is_given():
    assert load_config(None, ["--data.seed=3"]).data.batch_seed == 3
    both = load_config(None, ["--data.seed=3", "--data.order_seed=0"]).data
    assert (both.seed, both.batch_seed) == (3, 0)


@pytest.mark.parametrize(
    "content,message",
    [
        (
            b"training: [1, 2\n",
            "bad.yaml is not valid YAML: line 2, column 1: expected ',' or ']', but got "
            "'<stream end>' (while parsing a flow sequence from line 1, column 11)",
        ),
        (
            b"training:\n  lr: 1\n   max_steps: 2\n",
            "bad.yaml is not valid YAML: line 3, column 13: mapping values are not allowed here",
        ),
        (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            "bad.yaml is not UTF-8 text (byte 0 is 0x89): a recipe is a YAML text file (see recipes/)",
        ),
        (
            b"training:\n  lr: 1\x00\x01",
            "bad.yaml is not a text file: it holds the control character #x0 at "
            "character 17; a recipe is a YAML text file (see recipes/)",
        ),
    ],
)
def test_unreadable_recipes_are_one_line_naming_where(tmp_path, content, message):
    (tmp_path / "bad.yaml").write_bytes(content)
    with pytest.raises(V2TError) as refused:
        load_config(tmp_path / "bad.yaml")
    assert str(refused.value) == f"recipe {tmp_path / message}"


def test_a_bad_override_value_is_one_line():
    with pytest.raises(V2TError) as refused:
        load_config(None, ["--lora.target_modules=[q_proj"])
    assert str(refused.value) == (
        "bad value in override '--lora.target_modules=[q_proj': line 1, column 8: expected "
        "',' or ']', but got '<stream end>' (while parsing a flow sequence from line 1, "
        "column 1)"
    )


def test_bad_recipe_files(tmp_path):
    with pytest.raises(V2TError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("training: [1, 2\n")
    with pytest.raises(V2TError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(V2TError, match="mapping"):
        load_config(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    "options,message",
    [
        ({"do_sample": True, "temperature": 0.0}, "temperature (when sampling) must be > 0, got 0.0"),
        ({"do_sample": True, "temperature": float("nan")}, "temperature (when sampling) must be > 0, got nan"),
        ({"temperature": -1.0}, "temperature must be >= 0, got -1.0"),
        ({"top_k": -3}, "top_k must be >= 0, got -3"),
        ({"top_k": 2.5}, "top_k must be an integer, got 2.5"),
        ({"top_p": 1.5}, "top_p must be > 0 and <= 1, got 1.5"),
        ({"top_p": 0.0}, "top_p must be > 0 and <= 1, got 0.0"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0, got 0.0"),
        ({"repetition_penalty": -1.0}, "repetition_penalty must be > 0, got -1.0"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size must be >= 0, got -1"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1, got 0"),
        ({"num_beams": 0}, "num_beams must be >= 1, got 0"),
        ({"batch_size": -2}, "batch_size must be >= 1, got -2"),
    ],
)
def test_generation_options_out_of_range(options, message):
    from lora_v2t.config import GenerationConfig

    with pytest.raises(V2TError, match=re.escape(message)):
        GenerationConfig(**options)
    with pytest.raises(V2TError, match=re.escape(message)):
        GenerationConfig().updated(**options)


def test_generation_ranges_accept_their_edges():
    from lora_v2t.config import GenerationConfig

    GenerationConfig(do_sample=True, temperature=0.01, top_k=0, top_p=1.0, repetition_penalty=0.5)
    GenerationConfig(temperature=0.0)  # unused without sampling


def test_every_recipe_key_has_its_help_in_the_field_metadata():
    import dataclasses

    from lora_v2t.config import describe_keys

    text = describe_keys()
    for section in dataclasses.fields(RunConfig):
        for f in dataclasses.fields(section.default_factory):
            assert f.metadata.get("help"), f"{section.name}.{f.name} has no help"
            assert f"  {section.name}.{f.name}=" in text and f.metadata["help"] in text
    assert "generation.top_p=1.0  nucleus sampling mass (0 < top_p <= 1; 1 = off)" in text


def test_recipe_help_needs_no_source_files(tmp_path):
    """An installation without .py files (compiled .pyc only) lists the same recipe keys and help: train --help
    reads the fields' metadata, never the source (its comments)."""
    import compileall
    import os
    import shutil
    import subprocess
    import sys

    import lora_v2t
    from lora_v2t.config import describe_keys

    copy = tmp_path / "lora_v2t"
    shutil.copytree(Path(lora_v2t.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert compileall.compile_dir(copy, legacy=True, quiet=1)
    for source in copy.rglob("*.py"):
        source.unlink()
    script = (
        "import lora_v2t.config as config\nassert config.__file__.endswith('.pyc'), config.__file__\n"
        "print(config.describe_keys())"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"PYTHONPATH": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.rstrip("\n") == describe_keys()


def test_the_library_names_no_default_corpus():
    """A corpus is the recipe's to name: the library's default points at nothing (recipes keep their paths)."""
    from lora_v2t.config import DataConfig

    assert DataConfig().train is None and load_config(None).data.train is None
    assert all(load_config(recipe).data.train for recipe in RECIPES)
    with pytest.raises(
        V2TError,
        match=re.escape(
            "data.train is not set: name the training corpus in the recipe "
            "(data: train: FILE) or with --data.train=FILE"
        ),
    ):
        DataConfig().check_train()


def test_the_version_is_the_installed_package_metadata():
    """pyproject.toml is the one place the version is written: lora_v2t reads it from the package metadata."""
    import os
    import subprocess
    import sys

    script = (
        "import importlib.metadata as metadata\nreal = metadata.version\n"
        "metadata.version = lambda name: '9.8.7' if name == 'lora_v2t' else real(name)\n"
        "import lora_v2t\nprint(lora_v2t.__version__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0 and done.stdout.strip() == "9.8.7", done.stderr[-2000:]


@pytest.mark.parametrize(
    "cls,key,choices",
    [
        ("ProjectorConfig", "kind", "PROJECTOR_KINDS"),
        ("BackboneConfig", "quantization", "QUANTIZATION_MODES"),
        ("GenerationConfig", "cache", "CACHE_KINDS"),
        ("TrainingConfig", "role", "ROLES"),
        ("TrainingConfig", "trainable", "TRAINABLE"),
        ("TrainingConfig", "loss_vocab", "LOSS_VOCABS"),
        ("TrainingConfig", "mixed_precision", "MIXED_PRECISIONS"),
    ],
)
def test_each_choice_is_one_literal_type_that_fields_and_checks_share(cls, key, choices):
    import typing

    import lora_v2t.config as config

    allowed = typing.get_args(typing.get_type_hints(getattr(config, cls))[key])
    assert allowed and allowed == getattr(config, choices)


def test_the_choices_of_the_command_line_and_load_adapter_are_the_literal_types(capsys):
    import typing

    import lora_v2t.bundle.loading as loading
    import lora_v2t.config as config
    from lora_v2t.cli import main

    hints = typing.get_type_hints(loading.load_adapter)
    assert typing.get_args(hints["quantization"]) == config.QUANTIZATION_MODES
    assert typing.get_args(hints["dtype"]) == config.DTYPES
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    for option, choices in (
        ("--quantization", config.QUANTIZATION_MODES),
        ("--dtype", config.DTYPES),
        ("--cache", config.CACHE_KINDS),
    ):
        assert f"{option} {{{','.join(choices)}}}" in out


@pytest.mark.parametrize(
    "override,message",
    [
        ("--projector.kind=3", "projector.kind must be one of zero-pad, linear, mlp, split, got 3 (int)"),
        ("--training.mixed_precision=no", None),
    ],
)
def test_a_choice_from_yaml(override, message):
    if message is None:
        assert load_config(None, [override]).training.mixed_precision == "no"
        return
    with pytest.raises(V2TError, match=re.escape(message)):
        load_config(None, [override])


def test_an_adapters_role_is_a_hypothesizer_unless_it_says_otherwise():
    import json

    from lora_v2t.bundle.format import BundleConfig
    from lora_v2t.config import DEFAULT_ROLE

    file = Path(__file__).resolve().parents[1] / "checkpoints" / "adapters" / "use-gemma270m-ru-v2" / "v2t_config.json"
    data = json.loads(file.read_text(encoding="utf-8"))
    data.pop("role", None)
    assert DEFAULT_ROLE == "hypothesizer" and BundleConfig.from_dict(data, file).role == "hypothesizer"
    assert BundleConfig.from_dict(data | {"role": "corrector"}, file).role == "corrector"


@pytest.mark.parametrize("content", ["Эй, Макси: что ты скажешь!\nГде: лодка: здесь?\n", "Где лодка?\nКошка спит.\n"])
def test_a_corpus_given_as_the_recipe_is_told_where_it_goes(tmp_path, content):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(content, encoding="utf-8")
    with pytest.raises(
        V2TError,
        match=rf"a recipe is a YAML file of sections \(see recipes/\); a corpus goes in "
        rf"--data\.train={corpus}$",
    ):
        load_config(corpus)


def test_an_empty_override_value_is_called_empty():
    with pytest.raises(V2TError, match=r"training\.run_name must be str, got nothing \(an empty value\)"):
        load_config(None, ["--training.run_name="])
