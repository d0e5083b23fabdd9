import json
import re
from types import SimpleNamespace

import pytest

import lora_v2t.train.evaluation as evaluation_module
import lora_v2t.train.trainer as train_module
from lora_v2t import load_adapter
from lora_v2t.bundle.format import AdapterMeta, BundleConfig
from lora_v2t.bundle.layout import BUNDLE_FILES, OUTPUT_VOCAB_FILE
from lora_v2t.config import DEFAULT_BUDGET
from lora_v2t.demo import (
    DEMO_RUN,
    DEMO_SENTENCES,
    HELD_OUT,
    SHARED_CORPUS,
    SHIPPED,
    DemoConfig,
    demo_recipe,
    run_demo,
    shipped_minutes,
    show_shipped,
)

from .conftest import make_v2t
from .test_train import corpus_file


def test_the_shipped_sample_is_real_russian_text():
    lines = DEMO_SENTENCES.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 100 and len(set(lines)) == len(lines)
    assert all(line.strip() and any("а" <= c <= "я" for c in line.lower()) for line in lines)


def test_the_held_out_sentences_are_in_no_training_or_dev_file():
    held_out = set(HELD_OUT.read_text(encoding="utf-8").splitlines())
    assert len(held_out) >= 6
    others = [DEMO_SENTENCES] + (
        [SHARED_CORPUS] + sorted(SHARED_CORPUS.parent.glob("dev_*")) if SHARED_CORPUS.is_file() else []
    )
    for path in others:
        lines = {part for line in path.read_text(encoding="utf-8").splitlines() for part in line.split("\t")}
        assert not held_out & lines, path


def test_the_demo_validates_on_held_out_sentences_and_is_boxed_in_time():
    recipe = demo_recipe(DemoConfig(minutes=3, corpus="corpus.txt"))
    assert recipe.data.val == str(HELD_OUT) and recipe.data.train == "corpus.txt"
    assert recipe.training.max_minutes == 3 and recipe.training.max_steps > 10_000  # the minutes end it


def test_part_one_shows_what_generate_gives_greedily_and_at_the_default_budget(
    tmp_path, tiny_backbone_dir, tiny_encoder, capsys
):
    from lora_v2t.util.terminal import shown

    shipped = make_v2t(tiny_backbone_dir, tiny_encoder).save_adapter(tmp_path / "shipped")
    held = [s for s in HELD_OUT.read_text(encoding="utf-8").splitlines() if s.strip()][:4]
    v2t = show_shipped(shipped, held)
    out = capsys.readouterr().out
    vectors = v2t.encode(held)
    greedy, budgeted = v2t.generate(vectors, rerank=True), v2t.generate(vectors, rerank=True, budget=DEFAULT_BUDGET)
    assert [r.text for r in greedy] != [r.text for r in budgeted]  # so that swapped rows would show
    for label, results in (("greedy   ", greedy), (f"budget {DEFAULT_BUDGET:<2}", budgeted)):
        lines = [line for line in out.splitlines() if line.startswith(f"      {label} ==> ")]
        assert lines == [f"      {label} ==> {shown(r.text)}    [cos {r.cosine:.2f}]" for r in results]
        mean = sum(r.cosine for r in results) / len(results)
        assert f"{label.strip()} {mean:.3f}" in out.splitlines()[-2]  # the means line


def test_demo_code_path_on_tiny_models_and_resume(
    tmp_path, tiny_backbone_dir, tiny_encoder, tiny_encoder_dir, capsys, monkeypatch
):
    real = evaluation_module.validation_loss
    calls = {"n": 0}

    def interrupt_at_second_evaluation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    shipped = make_v2t(tiny_backbone_dir, tiny_encoder).save_adapter(tmp_path / "shipped")
    monkeypatch.setattr(evaluation_module, "validation_loss", interrupt_at_second_evaluation)
    monkeypatch.setenv("LORA_V2T_HOME", str(tmp_path / "home"))  # the embedding cache goes there
    cfg = DemoConfig(
        minutes=5.0,
        output_dir=str(tmp_path),
        corpus=str(corpus_file(tmp_path)),
        shipped=str(shipped),
        backbone=tiny_backbone_dir,
        encoder=tiny_encoder_dir,
        max_steps=12,
        eval_every=4,
        mixed_precision="no",
        show_progress=False,
    )  # fp32, as the other tests train
    with pytest.raises(KeyboardInterrupt):
        run_demo(cfg)
    assert [p.name for p in train_module.list_checkpoints(tmp_path / DEMO_RUN)] == ["step-000008"]
    out = capsys.readouterr().out
    assert out.startswith("lora_v2t demo: about 7 minutes")
    assert "1. The shipped adapter shipped writes back sentences it never saw" in out and "[cos " in out
    # each held-out sentence: the greedy text, then the text at the default budget, both with their cosines
    held = [s for s in HELD_OUT.read_text(encoding="utf-8").splitlines() if s.strip()]
    assert out.count("      greedy    ==> ") == out.count(f"      budget {DEFAULT_BUDGET:<2} ==> ") == len(held)
    assert "mean cosine: greedy " in out and f", budget {DEFAULT_BUDGET} " in out
    final = run_demo(cfg)  # picks up where it stopped
    out = capsys.readouterr().out
    assert "Resuming the interrupted demo from step-000008" in out
    rows = [json.loads(line) for line in (tmp_path / DEMO_RUN / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 12 and [r["step"] for r in rows].count(4) == 1  # nothing was redone
    held_out = set(HELD_OUT.read_text(encoding="utf-8").splitlines())
    shown = {s["text"] for r in rows if r["kind"] == "eval" for s in r["samples"]}
    assert shown and shown <= held_out  # validation and samples are held-out sentences only
    assert sorted(p.name for p in final.iterdir()) == sorted(BUNDLE_FILES + (OUTPUT_VOCAB_FILE,))  # corpus loss
    assert "3. Both adapters on one base: switching between them takes" in out and " ms (median of 10" in out
    assert "load_adapter(" in out and out.count("[cos ") == 3 * len(held_out)  # parts 1 (twice) and 3
    assert not list((tmp_path / DEMO_RUN).glob(".*"))  # nothing half-written left behind
    assert out.rstrip().endswith("make a rough adapter.")  # the tiny shipped adapter records no training
    assert shipped_minutes(load_adapter(final, device="cpu")) == "; the shipped one trained for 0 minutes"
    run_demo(cfg)
    assert "already trained" in capsys.readouterr().out


def test_a_missing_corpus_or_a_file_as_backbone_is_refused_before_anything_loads(tmp_path, monkeypatch, capsys):
    from lora_v2t.cli import main
    from lora_v2t.util.errors import V2TError

    from .conftest import refuse_calls

    for target in (
        "lora_v2t.model.backbone.convert_offline_gemma",
        "lora_v2t.bundle.loading.load_adapter",
        "lora_v2t.model.backbone.load_backbone",
    ):
        refuse_calls(monkeypatch, target, "a model was loaded")
    missing = tmp_path / "no-such-corpus.txt"
    assert main(["demo", "--corpus", str(missing), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: corpus {missing} (--corpus) does not exist: give a UTF-8 text file with one sentence per line\n"
    )
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a model folder")
    with pytest.raises(V2TError, match="backbone '.*model.safetensors' is a file; give a model folder, a .gguf file"):
        run_demo(DemoConfig(backbone=str(weights), corpus=str(corpus_file(tmp_path)), output_dir=str(tmp_path)))
    assert not (tmp_path / DEMO_RUN).exists()


def test_a_file_as_output_dir_is_refused_naming_the_demo_option(tmp_path, monkeypatch, capsys):
    """A demo user typed --output-dir (and may set LORA_V2T_HOME), never training.output_dir or data.cache_dir:
    the one line names what they can change."""
    from lora_v2t.cli import main

    from .conftest import refuse_calls

    for target in (
        "lora_v2t.model.backbone.convert_offline_gemma",
        "lora_v2t.bundle.loading.load_adapter",
        "lora_v2t.model.backbone.load_backbone",
    ):
        refuse_calls(monkeypatch, target, "a model was loaded")
    homefile = tmp_path / "homefile"
    homefile.write_text("mine\n")
    corpus = str(corpus_file(tmp_path))
    assert main(["demo", "--corpus", corpus, "--output-dir", str(homefile)]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot create the run folder {homefile / DEMO_RUN}: {homefile} is a file, not a folder; "
        "set --output-dir to a folder\n"
    )
    monkeypatch.setenv("LORA_V2T_HOME", str(homefile))  # the embedding cache goes under it
    assert main(["demo", "--corpus", corpus, "--output-dir", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot create the embedding cache {homefile / 'cache'}: {homefile} is a file, not a folder; "
        "set LORA_V2T_HOME to a folder\n"
    )
    assert homefile.read_text() == "mine\n" and not (tmp_path / "runs").exists()


def test_a_corpus_that_cannot_be_read_is_refused_before_anything_loads(tmp_path, monkeypatch, capsys):
    from lora_v2t.cli import main

    from .conftest import refuse_calls

    for target in (
        "lora_v2t.model.backbone.convert_offline_gemma",
        "lora_v2t.bundle.loading.load_adapter",
        "lora_v2t.model.backbone.load_backbone",
    ):
        refuse_calls(monkeypatch, target, "a model was loaded")
    corpus = tmp_path / "mac.txt"
    corpus.write_bytes("Где лодка?\rКошка спит.\r".encode())
    assert main(["demo", "--corpus", str(corpus), "--output-dir", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.startswith(f"error: corpus {corpus} ends its lines with a carriage return alone")


def test_the_shipped_adapters_minutes_count_the_runs_it_continued():
    """The shipped adapter continues others (training.init_adapter): its own run is only its last part, and the
    demo's closing line must not say that part made it."""
    config = BundleConfig.from_json(SHIPPED / "v2t_config.json")
    line = shipped_minutes(SimpleNamespace(meta=AdapterMeta.of_bundle(config)))
    found = re.fullmatch(r"; the shipped one trained for (\d+) minutes in (\d+) runs, the last of (\d+)", line)
    assert found, line
    total, runs, last = map(int, found.groups())
    assert last == round(config.training["wall_minutes"]) and runs >= 2 and total >= last + 240  # v2 ran 240
