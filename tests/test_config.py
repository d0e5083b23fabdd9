from pathlib import Path

import pytest

from lora_v2t import V2TError
from lora_v2t.config import RunConfig, load_config

RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.name for p in RECIPES}
    assert {"tiny_debug.yaml", "offline_use_gemma270m.yaml", "labse_rugpt3large_8bit.yaml", "labse_rugpt3small.yaml",
            "original_experiment.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_validates(recipe):
    cfg = load_config(recipe)
    assert isinstance(cfg, RunConfig)
    assert cfg.training.run_name and cfg.training.max_steps >= 1
    text = recipe.read_text()
    assert text.count("#") >= 5  # recipes are commented


def test_overrides_apply_and_parse_types():
    cfg = load_config(RECIPES[0], ["--training.lr=1e-4", "--lora.target_modules=[q_proj, v_proj]",
                                   "--data.max_sentences=null", "--training.max_minutes=5"])
    assert cfg.training.lr == 1e-4 and cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.max_sentences is None and cfg.training.max_minutes == 5.0


@pytest.mark.parametrize("override,message", [
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
    ("training", "write --section.key=value"),
])
def test_bad_recipe_values(override, message):
    with pytest.raises(V2TError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_config(None, [override])


def test_bad_recipe_files(tmp_path):
    with pytest.raises(V2TError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("training: [1, 2\n")
    with pytest.raises(V2TError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(V2TError, match="mapping"):
        load_config(tmp_path / "list.yaml")
