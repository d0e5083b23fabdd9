"""The rebuilt corrector: a split projector (v, e and v - e apart), training pairs from several hypotheses per
sentence with and without a hypothesis, and a warm start from a trained bundle (training.init_adapter)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from lora_v2t import V2TError, load_adapter
from lora_v2t.config import DataConfig, ProjectorConfig, load_config
from lora_v2t.model.correct import condition
from lora_v2t.model.projector import SplitProjector
from lora_v2t.model.vector2text import Vector2Text
from lora_v2t.train.pairs import pair_up
from lora_v2t.train.warmstart import warm_start

from .conftest import make_v2t
from .test_correct import tiny_run
from .test_train import RECIPE


# ---------------------------------------------------------------------- the split projector
def test_each_vector_fills_its_own_slots():
    torch.manual_seed(0)
    projector = SplitProjector(3 * 8, hidden_size=16, prefix_length=2, target_rms=0.5)
    v, e = torch.randn(3, 8), torch.randn(3, 8)
    rows = torch.from_numpy(condition(v.numpy(), e.numpy()))
    out = projector(rows)
    assert out.shape == (3, 6, 16)
    other_e = torch.from_numpy(condition(v.numpy(), torch.randn(3, 8).numpy()))
    changed = (projector(other_e) - out).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [False, False, True, True, True, True]  # v's slots stay; e's and v - e's move
    assert torch.allclose(out[:, :2], projector.parts[0](v))
    assert projector.describe()["kind"] == "split" and projector.describe()["prefix_length"] == 2
    with pytest.raises(V2TError, match="expects 24"):
        projector(torch.randn(2, 8))


def test_split_is_a_correctors_projector_only(tmp_path, tiny_backbone_dir, tiny_encoder_dir):
    with pytest.raises(V2TError, match="three vectors"):
        SplitProjector(8, hidden_size=16)
    common = [f"--backbone.name={tiny_backbone_dir}", f"--encoder.spec={tiny_encoder_dir}"]
    with pytest.raises(V2TError, match="projector.kind=split .* set training.role=corrector"):
        load_config(RECIPE, common + ["--projector.kind=split"])
    with pytest.raises(V2TError, match="are a corrector's"):
        load_config(RECIPE, common + ["--data.no_hypothesis=0.2"])
    with pytest.raises(V2TError, match="data.no_hypothesis"):
        DataConfig(no_hypothesis=1.5)
    assert ProjectorConfig(kind="split", prefix_length=4).kind == "split"


def test_a_split_corrector_bundle_round_trips_and_a_hypothesizer_may_not_claim_one(
    tmp_path, tiny_backbone_dir, tiny_encoder
):
    corrector = make_v2t(tiny_backbone_dir, tiny_encoder, seed=2, role="corrector", projector="split", prefix_length=2)
    assert isinstance(corrector.projector, SplitProjector)
    rows = condition(*(np.random.default_rng(0).standard_normal((2, 2, tiny_encoder.dim)).astype(np.float32)))
    contexts = ["кот спит", "где лодка"]
    before = corrector.generate(rows, contexts=contexts, max_new_tokens=6)
    corrector.save_adapter(tmp_path / "corr")
    config = json.loads((tmp_path / "corr" / "v2t_config.json").read_text())
    assert config["projector"]["kind"] == "split" and config["projector"]["embedding_dim"] == 3 * tiny_encoder.dim
    loaded = load_adapter(tmp_path / "corr", device="cpu")
    assert loaded.generate(rows, contexts=contexts, max_new_tokens=6) == before
    claimed = tmp_path / "claimed"
    shutil.copytree(tmp_path / "corr", claimed)
    config = json.loads((claimed / "v2t_config.json").read_text())
    config["role"] = "hypothesizer"
    (claimed / "v2t_config.json").write_text(json.dumps(config))
    with pytest.raises(V2TError, match="a split projector belongs to a corrector"):
        load_adapter(claimed, device="cpu")


# ---------------------------------------------------------------------- the training pairs
def test_pairs_come_from_every_hypothesis_and_never_cross_the_split():
    targets = [f"sentence {i}" for i in range(30)]
    greedy = [f"guess {i}" if i % 5 else f"sentence {i}" for i in range(30)]  # every fifth already matches
    sampled = [f"sample {i}" if i % 3 else greedy[i] for i in range(30)]  # every third repeats the greedy one
    sampled[7] = None  # an unfinished row
    dc = DataConfig(val_size=5, seed=1)
    val, training = pair_up(targets, [greedy, sampled], dc)
    val_sentences = {t for t, _ in val}
    assert len(val) == 5 and not val_sentences & {t for t, _ in training}
    assert all(h and h != t for t, h in val + training)  # no empty and no matching hypothesis
    expected = {(t, h) for t, g, s in zip(targets, greedy, sampled, strict=True) for h in (g, s) if h and h != t}
    assert set(val + training) <= expected and len(training) == len(set(training))
    assert {t for t, _ in training} | val_sentences == {t for t, h in expected}
    kept = pair_up(targets, [greedy, sampled], DataConfig(val_size=5, seed=1, keep_matching=True))[1]
    assert any(h == t for t, h in kept)


def test_a_share_of_training_sentences_also_learns_without_a_hypothesis():
    targets = [f"sentence {i}" for i in range(40)]
    greedy = [f"guess {i}" for i in range(40)]
    val, training = pair_up(targets, [greedy], DataConfig(val_size=4, no_hypothesis=0.25, max_sentences=20))
    blank = [t for t, h in training if h == ""]
    assert len(blank) == 5 and len(training) == 25
    assert set(blank) <= {t for t, h in training if h} and all(h for _, h in val)
    again = pair_up(targets, [greedy], DataConfig(val_size=4, no_hypothesis=0.25, max_sentences=20))
    assert again == (val, training)  # seeded


def test_too_few_sentences_with_a_hypothesis_are_refused():
    targets = ["a b", "c d", "e f"]
    with pytest.raises(V2TError, match="2 sentences with a hypothesis, not more than data.val_size=2"):
        pair_up(targets, [["a b", "x", "y"]], DataConfig(val_size=2))


# ---------------------------------------------------------------------- warm start, and the whole recipe
def saved_hypothesizer(tmp_path, backbone_dir, encoder_dir):
    """A tiny 2-slot hypothesizer saved to ``tmp_path/hyp``, and the overrides that put a recipe on its base."""
    source = make_v2t(backbone_dir, encoder_dir, seed=5, prefix_length=2, lora_r=8)
    source.save_adapter(tmp_path / "hyp")
    return source, [f"--backbone.name={backbone_dir}", f"--encoder.spec={encoder_dir}"]


def test_a_warm_start_begins_exactly_where_the_bundle_ended(tmp_path, tiny_backbone_dir, tiny_encoder_dir):
    source, common = saved_hypothesizer(tmp_path, tiny_backbone_dir, tiny_encoder_dir)
    cfg = load_config(RECIPE, common + ["--projector.prefix_length=2"])
    fresh = Vector2Text.from_config(cfg, device="cpu")
    texts = ["кот спит", "где лодка"]
    vectors = fresh.encode(texts)
    warm_start(fresh, str(tmp_path / "hyp"))
    assert torch.allclose(fresh.loss(vectors, texts), source.loss(vectors, texts))
    for override, message in (
        ("--lora.r=4", "has LoRA r=8, this recipe lora.r=4"),
        ("--projector.prefix_length=3", "fills 2 slot.s. and this recipe's projector.prefix_length is 3"),
        ("--projector.hidden_dim=7", "its projector does not fit this recipe's"),
    ):
        other = Vector2Text.from_config(load_config(RECIPE, common + ["--projector.prefix_length=2", override]))
        with pytest.raises(V2TError, match=message):
            warm_start(other, str(tmp_path / "hyp"))


def test_a_hypothesizer_with_more_slots_starts_with_the_bundles_prefix_repeated(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir
):
    source, common = saved_hypothesizer(tmp_path, tiny_backbone_dir, tiny_encoder_dir)
    wider = Vector2Text.from_config(load_config(RECIPE, common + ["--projector.prefix_length=4"]), device="cpu")
    warm_start(wider, str(tmp_path / "hyp"))
    v = torch.from_numpy(source.encode(["кот спит", "где лодка"]))
    assert torch.equal(wider.projector(v), torch.cat([source.projector(v)] * 2, dim=1))  # (2, 4, h)
    assert wider.projector.slots == 4


def saved_hypothesizer_and_corrector(tmp_path, backbone_dir, encoder_dir):
    """A tiny 2-slot hypothesizer saved to ``tmp_path/hyp``, and a maker of fresh split correctors on its base
    (``--projector.*`` overrides as arguments)."""
    source, common = saved_hypothesizer(tmp_path, backbone_dir, encoder_dir)
    common += ["--projector.kind=split", "--training.role=corrector"]

    def corrector(*overrides: str):
        return Vector2Text.from_config(load_config(RECIPE, common + list(overrides)), device="cpu")

    return source, corrector


def test_a_split_corrector_starts_from_its_hypothesizer(tmp_path, tiny_backbone_dir, tiny_encoder_dir):
    source, make = saved_hypothesizer_and_corrector(tmp_path, tiny_backbone_dir, tiny_encoder_dir)
    corrector = make("--projector.prefix_length=2")
    warm_start(corrector, str(tmp_path / "hyp"))
    v = torch.from_numpy(source.encode(["кот спит"]))
    parts = corrector.projector.parts
    assert torch.equal(parts[0](v), source.projector(v)) and torch.equal(parts[1](v), source.projector(v))
    assert not torch.equal(parts[2](v), source.projector(v))  # v - e starts fresh
    with pytest.raises(
        V2TError, match="fills 2 slot.s. and this recipe's projector.prefix_length is 3: .* multiple of 2"
    ):
        warm_start(make("--projector.prefix_length=3"), str(tmp_path / "hyp"))


def test_a_corrector_with_more_slots_starts_with_its_hypothesizers_prefix_repeated(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir
):
    source, make = saved_hypothesizer_and_corrector(tmp_path, tiny_backbone_dir, tiny_encoder_dir)
    corrector = make("--projector.prefix_length=6")
    warm_start(corrector, str(tmp_path / "hyp"))
    v = torch.from_numpy(source.encode(["кот спит", "где лодка"]))
    prefix = source.projector(v)  # (2, 2, h)
    for part in corrector.projector.parts[:2]:
        assert torch.equal(part(v), torch.cat([prefix] * 3, dim=1))  # (2, 6, h): the 2 slots, three times
    assert corrector.projector.slots == 18
    with pytest.raises(V2TError, match="hidden_dim the hypothesizer's"):
        warm_start(make("--projector.prefix_length=6", "--projector.hidden_dim=7"), str(tmp_path / "hyp"))


def test_a_missing_init_adapter_is_refused_before_anything_loads(tmp_path, tiny_backbone_dir, tiny_encoder_dir):
    from lora_v2t.train.trainer import train

    _, common = tiny_run(tmp_path, tiny_backbone_dir, tiny_encoder_dir)
    cfg = load_config(RECIPE, common + [f"--training.init_adapter={tmp_path / 'nowhere'}"])
    with pytest.raises(V2TError, match="nowhere"):
        train(cfg, show_progress=False)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_a_split_corrector_trains_on_several_hypotheses_from_its_hypothesizer_and_corrects(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir
):
    from lora_v2t.cli import main
    from lora_v2t.train.trainer import train

    _, common = tiny_run(tmp_path, tiny_backbone_dir, tiny_encoder_dir)
    sample = ["--data.max_sentences=12", "--projector.prefix_length=2"]
    hypothesizer = train(load_config(RECIPE, common + sample + ["--training.run_name=hyp"]), show_progress=False)
    held = tmp_path / "held.txt"
    assert main(["heldout", str(RECIPE), "--out", str(held), *common, *sample]) == 0
    files = []
    for name, extra in (("greedy", ["--budget", "1"]), ("sampled", ["--do-sample", "--seed", "1"])):
        files.append(tmp_path / f"{name}.jsonl")
        invert = ["invert", "--adapter", str(hypothesizer), "--texts", str(held), "--out", str(files[-1])]
        assert main(invert + ["--max-new-tokens", "8", "--no-progress", *extra]) == 0
    overrides = [
        f"--data.train={held}",
        f"--data.hypotheses={files[0]}",
        f"--data.more_hypotheses=[{files[1]}]",
        "--data.no_hypothesis=0.25",
        "--training.role=corrector",
        "--projector.kind=split",
        "--projector.prefix_length=2",
        f"--training.init_adapter={hypothesizer}",
        "--training.run_name=corr",
    ]
    corrector = train(load_config(RECIPE, common + overrides), show_progress=False)
    config = json.loads((corrector / "v2t_config.json").read_text())
    assert config["projector"]["kind"] == "split" and config["role"] == "corrector"
    assert config["training"]["init_adapter"] == str(hypothesizer)
    v2t = load_adapter(hypothesizer, device="cpu")
    unseen = held.read_text(encoding="utf-8").splitlines()[:3]
    out = v2t.generate(v2t.encode(unseen), correct_steps=2, corrector=str(corrector), max_new_tokens=8)
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
