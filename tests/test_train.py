import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lora_v2t.train.evaluation as evaluation_module
import lora_v2t.train.setup as setup
import lora_v2t.train.trainer as train_module
from lora_v2t import V2TError, load_adapter
from lora_v2t.bundle.layout import BUNDLE_FILES
from lora_v2t.cli import main
from lora_v2t.config import load_config
from lora_v2t.train import memory as memory_module
from lora_v2t.train.cost import needs_checkpointing
from lora_v2t.train.trainer import TrainingStopped, train

from .conftest import SENTENCES

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny_debug.yaml"
CORPUS = [
    "Где лодка?",
    "Я люблю читать книги.",
    "Сегодня хорошая погода.",
    "Мы пошли в лес за грибами.",
    "Он открыл окно.",
    "Кошка спит на диване.",
    "Это интересная история.",
    "Завтра будет дождь.",
]


def corpus_file(folder: Path, repeat: int = 3) -> Path:
    path = folder / "corpus.txt"
    path.write_text("\n".join(CORPUS * repeat) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def corpus(tmp_path):
    return corpus_file(tmp_path)


def recipe(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, *extra):
    overrides = [
        f"--backbone.name={tiny_backbone_dir}",
        f"--encoder.spec={tiny_encoder_dir}",
        f"--training.output_dir={tmp_path / 'runs'}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        f"--data.train={corpus}",
        f"--data.val={corpus}",
        "--data.val_size=4",
        *extra,
    ]
    return load_config(RECIPE, overrides)


def fail_in_forward(monkeypatch, call: int, error: BaseException):
    """Make the ``call``-th forward pass of training raise ``error``; returns a function that mends it."""
    from lora_v2t.model.vector2text import Vector2Text

    real_forward, calls = Vector2Text.forward, {"n": 0}

    def failing_forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise error
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(Vector2Text, "forward", failing_forward)
    return lambda: monkeypatch.setattr(Vector2Text, "forward", real_forward)


def adapter_state(folder: Path) -> dict:
    return load_file(str(folder / "adapter_model.safetensors")) | {
        f"projector.{k}": v for k, v in load_file(str(folder / "projector.safetensors")).items()
    }


def test_a_few_steps_make_the_documented_run_folder(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus):
    cfg = recipe(
        tmp_path,
        tiny_backbone_dir,
        tiny_encoder_dir,
        corpus,
        "--training.max_steps=12",
        "--training.save_every=4",
        "--training.keep_checkpoints=2",
        "--training.eval_every=6",
    )
    np.ones(2**27).sum()  # 1 GiB held and freed before the run: the process's old peak, not the run's
    final = train(cfg, show_progress=False)
    run = tmp_path / "runs" / "tiny-debug"
    assert final == run / "final"
    assert sorted(p.name for p in run.iterdir()) == [
        "final",
        "loss.png",
        "metrics.jsonl",
        "recipe.yaml",
        "step-000008",
        "step-000012",
    ]
    assert sorted(p.name for p in final.iterdir()) == sorted(BUNDLE_FILES)
    for step in ("step-000008", "step-000012"):
        assert {"optimizer.safetensors", "trainer_state.json"} | set(BUNDLE_FILES) == {
            p.name for p in (run / step).iterdir()
        }
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [6, 12]
    assert all(r["samples"] and "generated" in r["samples"][0] for r in rows if r["kind"] == "eval")
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    v2t = load_adapter(final, device="cpu")
    assert v2t.meta.training["steps"] == 12 and len(v2t.meta.training["samples"]) == 2  # num_samples
    memory = v2t.meta.training["memory"]  # the estimate checked against the measured peak (the process's, here)
    assert memory["measured"] == "process_max_rss" and memory["gradient_checkpointing"] is False
    assert 0 < memory["measured_peak_gib"] < 64
    # on a CPU the estimate counts the whole process as the measure does (the tiny model's weights alone: ~0x),
    # and the measure starts at the model's load (Linux): an earlier peak of the same process is not the run's
    if sys.platform == "linux":
        assert 0.7 < memory["estimated_peak_gib"] / memory["measured_peak_gib"] < 1.3
    assert torch.equal(
        adapter_state(final)["projector.norm.weight"], adapter_state(run / "step-000012")["projector.norm.weight"]
    )


def test_loss_falls_when_overfitting_eight_sentences(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus):
    cfg = recipe(
        tmp_path,
        tiny_backbone_dir,
        tiny_encoder_dir,
        corpus,
        "--training.max_steps=100",
        "--training.log_every=5",
        "--training.eval_every=100",
        "--training.save_every=100",
    )
    train(cfg, show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "runs/tiny-debug/metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert losses[-1] < 0.6 * losses[0]


def test_corpus_vocabulary_loss_trains_too(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus):
    cfg = recipe(
        tmp_path,
        tiny_backbone_dir,
        tiny_encoder_dir,
        corpus,
        "--training.max_steps=40",
        "--training.loss_vocab=corpus",
        "--training.log_every=5",
        "--training.eval_every=10",
        "--training.save_every=40",
    )
    train(cfg, show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "runs/tiny-debug/metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    val = [r["val_loss"] for r in rows if r["kind"] == "eval"]
    assert losses[-1] < 0.6 * losses[0]
    assert val[-1] < val[0] - 0.5  # validation loss, over the full vocabulary, falls too
    from lora_v2t import load_adapter
    from lora_v2t.train.data import read_sentences, tokenize_corpus

    adapter = load_adapter(tmp_path / "runs/tiny-debug/final", device="cpu")
    texts = read_sentences(corpus)[0]
    vocab = tokenize_corpus(adapter.tokenizer, texts, cfg.data.max_tokens).vocab
    assert adapter.output_vocab.tolist() == vocab.tolist()  # the bundle keeps the vocabulary the loss ranked


def test_resume_after_a_stop_equals_an_uninterrupted_run(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, monkeypatch
):
    common = [
        "--training.max_steps=20",
        "--training.eval_every=10",
        "--training.save_every=20",
        "--lora.dropout=0.1",
    ]  # dropout: the RNG state must be restored too
    straight = train(recipe(tmp_path / "a", tiny_backbone_dir, tiny_encoder_dir, corpus, *common), show_progress=False)

    cfg = recipe(tmp_path / "b", tiny_backbone_dir, tiny_encoder_dir, corpus, *common)
    real = evaluation_module.validation_loss

    def ctrl_c_at_step_10(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation_module, "validation_loss", ctrl_c_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, show_progress=False)
    run = tmp_path / "b" / "runs" / "tiny-debug"
    assert [p.name for p in train_module.list_checkpoints(run)] == ["step-000010"]  # Ctrl-C saved it
    monkeypatch.setattr(evaluation_module, "validation_loss", real)
    resumed = train(cfg, resume=True, show_progress=False)
    a, b = adapter_state(straight), adapter_state(resumed)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_after_ctrl_c_inside_a_step_redoes_that_step(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, monkeypatch
):
    common = ["--training.max_steps=12", "--training.eval_every=100", "--training.save_every=100", "--lora.dropout=0.1"]
    straight = train(recipe(tmp_path / "a", tiny_backbone_dir, tiny_encoder_dir, corpus, *common), show_progress=False)
    cfg = recipe(tmp_path / "b", tiny_backbone_dir, tiny_encoder_dir, corpus, *common)
    mend = fail_in_forward(monkeypatch, 7, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        train(cfg, show_progress=False)
    run = tmp_path / "b" / "runs" / "tiny-debug"
    state = json.loads((run / "step-000006" / "trainer_state.json").read_text())["state"]
    assert state["step"] == 6 and state["sentences_seen"] == 6 * 8  # the batch of step 7 is not counted
    mend()
    resumed = train(cfg, resume=True, show_progress=False)
    a, b = adapter_state(straight), adapter_state(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_sigterm_saves_a_checkpoint_like_ctrl_c(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, monkeypatch):
    import os
    import signal

    from lora_v2t.model.vector2text import Vector2Text

    cfg = recipe(
        tmp_path,
        tiny_backbone_dir,
        tiny_encoder_dir,
        corpus,
        "--training.max_steps=12",
        "--training.eval_every=100",
        "--training.save_every=100",
    )
    real_forward = Vector2Text.forward
    calls = {"n": 0}

    def killed_after_the_fourth_forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` from another shell
        return real_forward(self, *args, **kwargs)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(Vector2Text, "forward", killed_after_the_fourth_forward)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, show_progress=False)
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
    run = tmp_path / "runs" / "tiny-debug"
    # the signal landed inside step 5: the state from before it is saved, and --resume redoes that step
    assert [p.name for p in train_module.list_checkpoints(run)] == ["step-000004"]


def test_a_fresh_run_does_not_append_to_a_crashed_runs_metrics(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus):
    run = tmp_path / "runs" / "tiny-debug"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 999, "loss": 1.0}\n')
    train(recipe(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=5"), show_progress=False)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 999 not in steps and steps[-1] == 5


def test_a_failed_checkpoint_keeps_the_last_good_one(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, monkeypatch
):
    cfg = recipe(
        tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=20", "--training.save_every=10"
    )
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = {"n": 0}

    def disk_full_on_second_checkpoint(tensors, filename, *args, **kwargs):
        if filename.endswith("optimizer.safetensors"):
            calls["n"] += 1
            if calls["n"] == 2:
                Path(filename).write_bytes(b"half")
                raise OSError(28, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full_on_second_checkpoint)
    with pytest.raises(
        TrainingStopped,
        match=r"at step 20: no space left on the disk of .*step-000020 "
        r"\(.* needed, .* free\): .*; the last checkpoint is .*step-000010: continue with --resume",
    ) as stopped:
        train(cfg, show_progress=False)
    assert "\n" not in str(stopped.value)
    assert isinstance(stopped.value.__cause__.__cause__, OSError)  # no second write attempt after a failed one
    run = tmp_path / "runs" / "tiny-debug"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith((".", "step"))) == ["step-000010"]
    assert load_adapter(run / "step-000010", device="cpu").meta.training["steps"] == 10
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    train(cfg, resume=True, show_progress=False)  # and the run can go on from it
    assert (run / "final").is_dir()


def test_bad_runs(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus):
    cfg = recipe(
        tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=4", "--training.save_every=2"
    )
    with pytest.raises(V2TError, match="nothing to resume"):
        train(cfg, resume=True, show_progress=False)
    train(cfg, show_progress=False)
    with pytest.raises(V2TError, match="already holds a run: pass --resume"):
        train(cfg, show_progress=False)
    other = recipe(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=4", "--lora.r=4")
    with pytest.raises(V2TError, match="made by another recipe: lora.r was 8, now 4"):
        train(other, resume=True, show_progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    bad = recipe(tmp_path, tiny_backbone_dir, tiny_encoder_dir, empty, "--training.run_name=x")
    with pytest.raises(V2TError, match="is empty"):
        train(bad, show_progress=False)


def test_a_second_run_into_a_busy_run_folder_fails_at_once_naming_the_first(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, monkeypatch
):
    import os
    import threading

    import yaml

    cfg = recipe(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=2")
    evaluating, go, done = threading.Event(), threading.Event(), {}
    real = evaluation_module.validation_loss

    def first_run_evaluating(*args, **kwargs):
        evaluating.set()
        go.wait(60)
        return real(*args, **kwargs)

    def not_before_the_lock(*args, **kwargs):
        raise AssertionError("the second run got as far as reading its data")

    monkeypatch.setattr(evaluation_module, "validation_loss", first_run_evaluating)
    first = threading.Thread(target=lambda: done.setdefault("final", train(cfg, show_progress=False)))
    first.start()
    try:
        assert evaluating.wait(120)
        monkeypatch.setattr(train_module.Trainer, "prepare_data", not_before_the_lock)
        second = recipe(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=3")
        with pytest.raises(V2TError, match=rf"tiny-debug is in use by another training run \(pid {os.getpid()}\)"):
            train(second, show_progress=False)
    finally:
        go.set()
        first.join(120)
    run = tmp_path / "runs" / "tiny-debug"
    assert done["final"] == run / "final" and not (run / ".lock").exists()  # the lock goes with its run
    assert yaml.safe_load((run / "recipe.yaml").read_text())["training"]["max_steps"] == 2


def test_what_killed_runs_left_behind_is_tidied_when_a_run_resumes(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, caplog
):
    import subprocess
    import sys

    train(
        recipe(
            tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=4", "--training.save_every=2"
        ),
        show_progress=False,
    )
    run = tmp_path / "runs" / "tiny-debug"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (run / "step-000004").rename(run / f".step-000004.old-{dead}")  # killed between the renames of a rewrite
    for name in (f".step-000004.tmp-{dead}", f".final.tmp-{dead}", f".step-000006.tmp-{dead}", ".step-000006.tmp-1"):
        (run / name).mkdir()
        (run / name / "half-written").write_bytes(b"x")
    with caplog.at_level("INFO", logger="lora_v2t"):
        train(
            recipe(
                tmp_path,
                tiny_backbone_dir,
                tiny_encoder_dir,
                corpus,
                "--training.max_steps=6",
                "--training.save_every=2",
            ),
            resume=True,
            show_progress=False,
        )
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".step-000006.tmp-1"]  # pid 1 runs
    assert f"resumed {run / 'step-000004'} at step 4" in caplog.text  # the finished checkpoint was put back
    assert [p.name for p in train_module.list_checkpoints(run)] == ["step-000004", "step-000006"]


def test_a_copied_run_folder_resumes_where_only_its_location_changed(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus
):
    import shutil

    train(
        recipe(
            tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=4", "--training.save_every=2"
        ),
        show_progress=False,
    )
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "runs" / "tiny-debug", moved / "runs" / "copied")
    shutil.copy(corpus, moved / "corpus.txt")  # the corpus came along, to another path
    copied = recipe(
        moved,
        tiny_backbone_dir,
        tiny_encoder_dir,
        moved / "corpus.txt",
        "--training.max_steps=6",
        "--training.save_every=2",
        "--training.run_name=copied",
    )
    final = train(copied, resume=True, show_progress=False)
    assert final == moved / "runs" / "copied" / "final"
    assert load_adapter(final, device="cpu").meta.training["steps"] == 6
    (moved / "other.txt").write_text("Совсем другой корпус.\n" * 30, encoding="utf-8")
    other = recipe(
        moved,
        tiny_backbone_dir,
        tiny_encoder_dir,
        moved / "other.txt",
        "--training.max_steps=8",
        "--training.run_name=copied",
    )
    with pytest.raises(V2TError, match="made by another recipe: data.train was"):  # another corpus is refused
        train(other, resume=True, show_progress=False)


@pytest.mark.parametrize("damaged", ["optimizer.safetensors", "trainer_state.json"])
def test_resume_passes_over_a_damaged_last_checkpoint_and_says_so(
    damaged, tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, caplog
):
    train(
        recipe(
            tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=4", "--training.save_every=2"
        ),
        show_progress=False,
    )
    run = tmp_path / "runs" / "tiny-debug"

    def cut(file: Path) -> None:
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])

    cut(run / "step-000004" / damaged)
    more = recipe(
        tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=6", "--training.save_every=2"
    )
    with caplog.at_level("WARNING"):
        final = train(more, resume=True, show_progress=False)
    assert (
        "resuming from step-000002, the newest good checkpoint, not from the newer step-000004 is damaged: "
        in caplog.text
        and "(set aside as damaged-step-000004)" in caplog.text
    )
    assert load_adapter(final, device="cpu").meta.training["steps"] == 6
    from lora_v2t.train.checkpoint import check_checkpoint

    assert check_checkpoint(run / "step-000004")["state"]["step"] == 4  # rewritten whole on the way
    assert (run / "damaged-step-000004").is_dir()  # kept for a look, no longer a checkpoint
    for step in ("step-000004", "step-000006"):
        cut(run / step / damaged)
    further = recipe(
        tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=8", "--training.save_every=2"
    )  # at max_steps=6 the run is finished: final/ needs no checkpoint
    with pytest.raises(
        V2TError, match="no checkpoint in .* can be resumed \\(step-000006 is damaged: .*; step-000004 is damaged: "
    ) as refused:
        train(further, resume=True, show_progress=False)
    assert "\n" not in str(refused.value)


def test_an_unreadable_corpus_or_unwritable_output_is_refused_before_loading(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, monkeypatch
):
    import os

    def not_before_the_checks(*args, **kwargs):
        raise AssertionError("read the data before checking the paths")

    real_access, denied = os.access, set()
    monkeypatch.setattr(
        os, "access", lambda path, mode, *a, **k: str(path) not in denied and real_access(path, mode, *a, **k)
    )  # as for a user without the permission (the tests may run as root)
    monkeypatch.setattr(train_module.Trainer, "prepare_data", not_before_the_checks)
    cfg = recipe(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus)
    denied.add(str(corpus))
    with pytest.raises(V2TError, match=r"cannot read corpus .*corpus.txt \(data.train\): permission denied"):
        train(cfg, show_progress=False)
    denied.clear()
    denied.add(str(tmp_path))  # runs/ does not exist yet: the folder it would be made in decides
    with pytest.raises(V2TError, match=r"cannot write the run folder .*tiny-debug: .* is not writable"):
        train(cfg, show_progress=False)
    (tmp_path / "file").write_text("x")
    blocked = recipe(
        tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, f"--training.output_dir={tmp_path / 'file' / 'runs'}"
    )
    with pytest.raises(V2TError, match=r"cannot create the run folder .* is a file, not a folder"):
        train(blocked, show_progress=False)
    assert not (tmp_path / "runs").exists()


def test_full_fine_tuning_baseline_trains_the_backbone(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus):
    cfg = recipe(
        tmp_path,
        tiny_backbone_dir,
        tiny_encoder_dir,
        corpus,
        "--training.trainable=full",
        "--projector.kind=zero-pad",
        "--training.max_steps=4",
        "--training.save_every=4",
        "--training.lr=1e-3",
    )
    final = train(cfg, show_progress=False)
    assert {p.name for p in final.iterdir()} == {"backbone", "projector.safetensors", "v2t_config.json", "README.md"}
    v2t = load_adapter(final, device="cpu")
    assert not v2t.is_peft
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(tiny_backbone_dir).state_dict()
    after = v2t.base_model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert len(v2t.generate(v2t.encode(SENTENCES[:2]), max_new_tokens=4)) == 2


def test_cli_train_and_embed(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, capsys):
    args = [
        f"--backbone.name={tiny_backbone_dir}",
        f"--encoder.spec={tiny_encoder_dir}",
        f"--training.output_dir={tmp_path / 'runs'}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        f"--data.train={corpus}",
        "--data.val_size=4",
        "--training.max_steps=3",
    ]
    assert main(["embed", str(RECIPE), *args]) == 0
    assert "cached vectors for 20 training and 4 validation" in capsys.readouterr().out
    assert main(["train", str(RECIPE), *args, "--no-progress"]) == 0
    assert "load_adapter" in capsys.readouterr().out
    assert main(["train", str(RECIPE), *args, "--training.lrr=3"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--resume" in capsys.readouterr().out


def test_cuda_out_of_memory_inside_a_step_keeps_the_work_and_resume_redoes_that_step(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, monkeypatch
):
    common = ["--training.max_steps=10", "--training.eval_every=100", "--training.save_every=100", "--lora.dropout=0.1"]
    straight = train(recipe(tmp_path / "a", tiny_backbone_dir, tiny_encoder_dir, corpus, *common), show_progress=False)
    cfg = recipe(tmp_path / "b", tiny_backbone_dir, tiny_encoder_dir, corpus, *common)
    mend = fail_in_forward(monkeypatch, 6, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(TrainingStopped) as stopped:
        train(cfg, show_progress=False)
    message = str(stopped.value)
    run = tmp_path / "b" / "runs" / "tiny-debug"
    assert "\n" not in message and message.startswith("training stopped at step 5 by OutOfMemoryError: CUDA out")
    assert "lower training.batch_size" in message and f"checkpoint {run / 'step-000005'} holds" in message
    assert [p.name for p in train_module.list_checkpoints(run)] == ["step-000005"]
    mend()
    resumed = train(cfg, resume=True, show_progress=False)
    a, b = adapter_state(straight), adapter_state(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("failing", ["metrics", "plot", "evaluation"])
def test_a_failing_write_or_evaluation_saves_the_step_and_says_so_in_one_line(
    failing, tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, monkeypatch, capsys
):
    import lora_v2t.train.runlog as runlog

    def fail(*args, **kwargs):
        if failing == "evaluation":
            raise RuntimeError("evaluation blew up")
        raise OSError(5, "Input/output error")

    target = {
        "metrics": (runlog.RunLog, "append"),
        "plot": (runlog, "plot_losses"),
        "evaluation": (evaluation_module, "validation_loss"),
    }[failing]
    monkeypatch.setattr(*target, fail)
    args = [
        f"--backbone.name={tiny_backbone_dir}",
        f"--encoder.spec={tiny_encoder_dir}",
        f"--training.output_dir={tmp_path / 'runs'}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        f"--data.train={corpus}",
        "--data.val_size=4",
        "--training.max_steps=12",
        "--training.log_every=5",
        "--training.eval_every=5",
        "--training.save_every=100",
        "--no-progress",
    ]
    assert main(["train", str(RECIPE), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    run = tmp_path / "runs" / "tiny-debug"
    assert err[-1].startswith("error: training stopped at step 5 by ")
    assert f"checkpoint {run / 'step-000005'} holds the work done" in err[-1]
    assert [p.name for p in train_module.list_checkpoints(run)] == ["step-000005"]
    monkeypatch.undo()
    assert main(["train", str(RECIPE), *args, "--resume"]) == 0
    assert load_adapter(run / "final", device="cpu").meta.training["steps"] == 12


def test_the_encoder_is_freed_once_the_cache_is_filled(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, monkeypatch
):
    import gc
    import weakref

    import lora_v2t.model.encoders as encoders

    made, during = [], {}
    real_load, real_validation = encoders.load_encoder, evaluation_module.validation_loss

    def tracked_load(spec):
        encoder = real_load(spec)
        made.append(weakref.ref(encoder))
        return encoder

    def validation_that_looks_around(v2t, *args, **kwargs):
        gc.collect()
        during["registered"] = len(v2t.encoders)
        during["alive"] = [ref() is not None for ref in made]
        return real_validation(v2t, *args, **kwargs)

    monkeypatch.setattr(encoders, "load_encoder", tracked_load)
    monkeypatch.setattr(train_module, "load_encoder", tracked_load)  # the trainer's own reference
    monkeypatch.setattr(evaluation_module, "validation_loss", validation_that_looks_around)
    train(recipe(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=2"), show_progress=False)
    assert made and during == {"registered": 0, "alive": [False] * len(made)}


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda:1", "device 'cuda:1' requested but CUDA is not available: use --backbone.device=cpu"),
        ("foo", "unknown device 'foo': use cpu, cuda or cuda:N"),
        ("meta", "device 'meta' is not supported: use cpu, cuda or cuda:N"),
    ],
)
def test_a_training_device_that_cannot_be_honoured_is_refused_before_loading(
    device, message, tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus
):
    if torch.cuda.is_available():
        pytest.skip("checks the refusals of a machine without CUDA")
    cfg = recipe(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, f"--backbone.device={device}")
    with pytest.raises(V2TError, match=message):
        train(cfg, show_progress=False)
    assert not (tmp_path / "runs").exists()


def test_cuda_index_checks_with_fake_devices(monkeypatch):
    from lora_v2t.train.setup import training_device

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    with pytest.raises(V2TError, match="has 2 CUDA device"):
        training_device("cuda:2")
    assert training_device("cuda:1") == torch.device("cuda", 1) and chosen == [torch.device("cuda", 1)]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(V2TError, match="several processes: each process takes the GPU of its rank"):
        training_device("cuda:1")


def test_a_bundle_records_its_precision_and_loads_that_way(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, caplog
):
    pytest.importorskip("bitsandbytes")
    final = train(
        recipe(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=2"), show_progress=False
    )
    config = json.loads((final / "v2t_config.json").read_text())
    assert (config["backbone"]["quantization"], config["backbone"]["compute_dtype"]) == ("none", "float32")
    assert "trained on a `none` base computing in `float32`" in (final / "README.md").read_text()
    config["backbone"]["quantization"] = "8bit"  # as if trained on an 8-bit base
    (final / "v2t_config.json").write_text(json.dumps(config))
    assert load_adapter(final, device="cpu").backbone_info["quantization"] == "8bit"  # auto: as trained
    with caplog.at_level("WARNING"):
        assert load_adapter(final, device="cpu", quantization="none").backbone_info["quantization"] == "none"
    assert "was trained with quantization 8bit; loading it with none as asked" in caplog.text


def test_a_second_ctrl_c_during_the_save_does_not_cut_the_checkpoint_short(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, monkeypatch
):
    import os
    import signal

    cfg = recipe(
        tmp_path,
        tiny_backbone_dir,
        tiny_encoder_dir,
        corpus,
        "--training.max_steps=12",
        "--training.eval_every=3",
        "--training.save_every=100",
    )
    real_save = train_module.save_checkpoint

    def impatient_user(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C pressed again while the checkpoint is written
        os.kill(os.getpid(), signal.SIGTERM)
        return real_save(*args, **kwargs)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(evaluation_module, "validation_loss", ctrl_c)
    monkeypatch.setattr(train_module, "save_checkpoint", impatient_user)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, show_progress=False)
    assert signal.getsignal(signal.SIGINT) == before  # Ctrl-C works as usual again afterwards
    run = tmp_path / "runs" / "tiny-debug"
    assert [p.name for p in train_module.list_checkpoints(run)] == ["step-000003"]
    assert load_adapter(run / "step-000003", device="cpu").meta.training["steps"] == 3


@pytest.mark.parametrize("during", ["update", "checkpoint"])
def test_ctrl_c_while_weights_update_or_a_checkpoint_is_written_waits_for_it_then_saves(
    during, tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, monkeypatch
):
    import os
    import signal

    cfg = recipe(
        tmp_path,
        tiny_backbone_dir,
        tiny_encoder_dir,
        corpus,
        "--training.max_steps=12",
        "--training.eval_every=100",
        "--training.save_every=4",
    )
    calls = {"n": 0}
    if during == "update":
        real_step = torch.optim.AdamW.step

        def ctrl_c_in_the_third_update(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return real_step(self, *args, **kwargs)

        monkeypatch.setattr(torch.optim.AdamW, "step", ctrl_c_in_the_third_update)
        expected = "step-000003"  # the step completes, then the run stops and saves it
    else:
        real_save = train_module.save_checkpoint

        def ctrl_c_while_writing(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            return real_save(*args, **kwargs)

        monkeypatch.setattr(train_module, "save_checkpoint", ctrl_c_while_writing)
        expected = "step-000004"  # the regular checkpoint is finished, then the run stops
    with pytest.raises(KeyboardInterrupt):
        train(cfg, show_progress=False)
    run = tmp_path / "runs" / "tiny-debug"
    assert [p.name for p in train_module.list_checkpoints(run)] == [expected]
    assert json.loads((run / expected / "trainer_state.json").read_text())["state"]["step"] == int(expected[-6:])


def test_each_process_trains_on_its_own_batch_of_each_turn():
    from types import SimpleNamespace

    from lora_v2t.train.data import BatchOrder
    from lora_v2t.train.trainer import Trainer, TrainState

    lengths = np.arange(64) % 7 + 1
    taken = {}
    for rank in (0, 1):
        trainer = Trainer.__new__(Trainer)  # only what next_batch reads
        trainer.accelerator = SimpleNamespace(num_processes=2, process_index=rank)
        trainer.state, trainer.batch_order = TrainState(), BatchOrder(lengths, batch_size=8, seed=0)
        taken[rank] = [trainer.next_batch() for _ in range(3)]
    for (mine, together0), (theirs, together1) in zip(taken[0], taken[1], strict=True):
        assert not set(mine) & set(theirs) and together0 == together1 == len(mine) + len(theirs) == 16


def test_order_seed_reorders_the_batches_of_the_same_sample(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, monkeypatch
):
    orders = []

    class RecordedOrder(train_module.BatchOrder):
        def __init__(self, lengths, batch_size, seed):
            super().__init__(lengths, batch_size, seed)
            orders.append(self)

    monkeypatch.setattr(train_module, "BatchOrder", RecordedOrder)
    finals = {}
    for name, extra in (("same", []), ("other", ["--data.order_seed=7"])):
        cfg = recipe(tmp_path / name, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=1", *extra)
        finals[name] = load_adapter(train(cfg, show_progress=False), device="cpu").meta.training
    assert "order_seed" not in finals["same"] and finals["other"]["order_seed"] == 7  # the bundle says which
    same, other = orders
    assert same.seed == cfg.data.seed != 7 == other.seed
    assert np.array_equal(same.lengths, other.lengths)  # the same sample, tokenised alike
    assert [b.tolist() for b in same.batches(0)] != [b.tolist() for b in other.batches(0)]


def test_a_set_aside_damaged_checkpoint_never_makes_pruning_delete_good_ones(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus
):
    train(
        recipe(
            tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=6", "--training.save_every=3"
        ),
        show_progress=False,
    )
    run = tmp_path / "runs" / "tiny-debug"
    (run / "final").rename(tmp_path / "first-final")  # as if the run had stopped after step 6
    optimizer = run / "step-000006" / "optimizer.safetensors"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    more = recipe(
        tmp_path,
        tiny_backbone_dir,
        tiny_encoder_dir,
        corpus,
        "--training.max_steps=5",
        "--training.save_every=2",
        "--training.keep_checkpoints=1",
    )
    train(more, resume=True, show_progress=False)  # from step 3: saves 4, then 5
    assert [p.name for p in train_module.list_checkpoints(run)] == ["step-000005"]  # not pruned by step 6
    assert (run / "damaged-step-000006").is_dir()


def test_a_time_boxed_run_shows_minutes_left_not_a_step_count(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, capsys
):
    train(
        recipe(
            tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=3", "--training.max_minutes=5"
        ),
        show_progress=True,
    )
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    last = [line for line in bar if line.startswith("training:")][-1]
    assert " left" in last and "step 3, loss " in last and "/3 " not in last  # 5 minutes of time, not 3 steps
    train(
        recipe(tmp_path / "b", tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=3"),
        show_progress=True,
    )
    steps = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "training:" in line]
    assert "3/3" in steps[-1]  # without a time box, the bar counts steps


@pytest.mark.parametrize("units, expected", [(True, "bf16"), (False, "no")])
def test_auto_mixed_precision_on_the_cpu_follows_its_bf16_units(monkeypatch, units, expected):
    monkeypatch.setattr(setup, "cpu_has_bf16_units", lambda: units)
    assert setup.mixed_precision("auto", cuda=False) == expected
    assert setup.mixed_precision("no", cuda=False) == "no"


def test_a_bf16_run_on_the_cpu_records_that_its_adapter_learned_in_bf16(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus
):
    import subprocess
    import sys

    # accelerate fixes the mixed precision once per process (the other tests train in fp32): a process of its own
    overrides = [
        f"--backbone.name={tiny_backbone_dir}",
        f"--encoder.spec={tiny_encoder_dir}",
        f"--training.output_dir={tmp_path / 'runs'}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        f"--data.train={corpus}",
        f"--data.val={corpus}",
        "--data.val_size=4",
        "--training.mixed_precision=bf16",
        "--training.max_steps=4",
        "--training.eval_every=4",
        "--training.save_every=4",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "lora_v2t.cli", "train", str(RECIPE), "--no-progress", *overrides],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    final = tmp_path / "runs" / "tiny-debug" / "final"
    config = json.loads((final / "v2t_config.json").read_text())
    assert config["backbone"]["compute_dtype"] == "bfloat16"
    assert all(torch.isfinite(v).all() for v in adapter_state(final).values())


def test_yaml_booleans_for_text_settings_become_their_words(tmp_path):
    cfg = load_config(RECIPE, ["--training.mixed_precision=no"])  # YAML reads an unquoted no as false
    assert cfg.training.mixed_precision == "no"
    with pytest.raises(V2TError, match="mixed_precision"):
        load_config(RECIPE, ["--training.mixed_precision=yes"])


@pytest.mark.parametrize(
    "setting, step_gib, free, expected",
    [
        (True, 0.1, None, True),
        (False, 50.0, 8.0, False),  # as the recipe says
        ("auto", 50.0, None, False),  # on a CPU it only costs time
        ("auto", 4.05, 6.6, True),  # the default recipe's 8-bit step on an 8 GB card
        ("auto", 4.05, 8.6, False),  # on a 10 GB one (it needs about 5.9 GiB)
        ("auto", 4.05, 78.0, False),  # on an 80 GB one
    ],
)
def test_gradient_checkpointing_auto_follows_the_memory_estimate(setting, step_gib, free, expected):
    assert needs_checkpointing(setting, step_gib, free) is expected


def test_gradient_checkpointing_takes_true_false_or_auto():
    assert load_config(None, ["--training.gradient_checkpointing=true"]).training.gradient_checkpointing is True
    assert load_config(None, []).training.gradient_checkpointing == "auto"
    with pytest.raises(V2TError, match="training.gradient_checkpointing must be true, false or auto, got 'often'"):
        load_config(None, ["--training.gradient_checkpointing=often"])


def test_checkpointing_auto_turns_on_where_the_step_would_not_fit(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, monkeypatch
):
    monkeypatch.setattr(memory_module, "free_gib", lambda device: 1e-6)  # as if a GPU had almost nothing free
    enabled = []
    real = train_module.Trainer.plan_memory

    def watch(trainer):
        real(trainer)
        enabled.append(any(getattr(m, "gradient_checkpointing", False) for m in trainer.v2t.base_model.modules()))

    monkeypatch.setattr(train_module.Trainer, "plan_memory", watch)
    cfg = recipe(
        tmp_path,
        tiny_backbone_dir,
        tiny_encoder_dir,
        corpus,
        "--training.max_steps=2",
        "--training.eval_every=2",
        "--training.save_every=2",
    )
    final = train(cfg, show_progress=False)
    assert enabled == [True]
    assert load_adapter(final, device="cpu").meta.training["memory"]["gradient_checkpointing"] is True


def test_memory_estimate_sizes_rows_by_the_longest_tokenised_sentence_not_the_cap(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, monkeypatch
):
    planned = []
    real = train_module.Trainer.plan_memory

    def watch(trainer):
        real(trainer)
        vocab = None if trainer.loss_vocab is None else len(trainer.loss_vocab.vocab)
        capped = memory_module.describe_cost(trainer.v2t, trainer.cfg, checkpointing=False, loss_vocab=vocab)
        planned.append((trainer.cost, capped, int(trainer.tokens.lengths.max())))
        val = (trainer.val_texts, trainer.val_contexts)
        longest = memory_module.longest_row(trainer.v2t.tokenizer, 99, trainer.tokens, trainer.context_tokens, *val)
        assert longest >= int(trainer.tokens.lengths.max())

    monkeypatch.setattr(train_module.Trainer, "plan_memory", watch)
    cfg = recipe(
        tmp_path,
        tiny_backbone_dir,
        tiny_encoder_dir,
        corpus,
        "--training.max_steps=1",
        "--training.eval_every=1",
        "--training.save_every=1",
        "--data.max_tokens=100",
    )
    train(cfg, show_progress=False)
    ((cost, capped, longest),) = planned
    assert longest < 100  # the corpus's sentences are short: no batch comes near the cap
    assert cost["tokens_per_row"] == longest + cfg.projector.prefix_length
    assert capped["tokens_per_row"] == 100 + cfg.projector.prefix_length
    assert capped["estimated_peak_gib"] > cost["estimated_peak_gib"]


def test_the_longest_row_counts_a_correctors_hypothesis_and_the_validation_rows(tiny_backbone_dir):
    from transformers import AutoTokenizer

    from lora_v2t.train.data import tokenize_corpus

    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone_dir)
    texts, hypotheses = ["Где лодка?", "Мы идём домой."], ["Где дом моей лодки?", "Домой."]
    tokens, contexts = (tokenize_corpus(tokenizer, rows, 40) for rows in (texts, hypotheses))
    longest = memory_module.longest_row
    assert longest(tokenizer, 40, tokens, None, [], None) == tokens.lengths.max()
    assert longest(tokenizer, 40, tokens, contexts, [], None) == (tokens.lengths + contexts.lengths).max()
    val = ["Очень длинное предложение для проверки, длиннее всех прочих."]
    assert longest(tokenizer, 40, tokens, None, val, None) == tokenize_corpus(tokenizer, val, 40).lengths[0]


def files_under(folder: Path) -> dict:
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def test_resume_of_a_folder_that_is_no_run_folder_is_refused_and_touches_nothing(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, capsys
):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    ).stdout.strip()
    mine = tmp_path / "photos"
    for name in (f".album.tmp-{dead}", f".album.old-{dead}", "trip"):
        (mine / name).mkdir(parents=True)
        (mine / name / "a.jpg").write_bytes(b"jpeg")
    (mine / ".lock").write_text("my lock notes\n")
    before = files_under(mine)
    args = [
        f"--backbone.name={tiny_backbone_dir}",
        f"--encoder.spec={tiny_encoder_dir}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        f"--data.train={corpus}",
        "--data.val_size=4",
    ]
    assert main(["train", str(RECIPE), *args, "--resume", str(mine)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {mine} is not the folder of a training run")
    assert files_under(mine) == before


def test_a_new_run_refuses_a_folder_holding_files_a_run_does_not_write(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus
):
    run = tmp_path / "runs" / "tiny-debug"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"my": "own metrics"}\n')
    (run / "notes.txt").write_text("mine")
    before = files_under(run)
    with pytest.raises(V2TError, match=r"tiny-debug holds files a training run does not write \(notes.txt\)"):
        train(
            recipe(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=2"), show_progress=False
        )
    assert files_under(run) == before


def test_pruning_a_checkpoint_removes_only_the_files_a_checkpoint_holds(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus
):
    common = ["--training.save_every=2", "--training.keep_checkpoints=1"]
    train(
        recipe(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=2", *common),
        show_progress=False,
    )
    run = tmp_path / "runs" / "tiny-debug"
    (run / "step-000002" / "notes.txt").write_text("why this step matters")
    train(
        recipe(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=4", *common),
        resume=True,
        show_progress=False,
    )
    assert [p.name for p in train_module.list_checkpoints(run)] == ["step-000004"]
    assert files_under(run / "step-000002") == {"notes.txt": b"why this step matters"}


def killed_after_step_4(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus) -> Path:
    """A run folder as a kill leaves it after step 4 was logged and evaluated, but before its checkpoint."""
    train(
        recipe(
            tmp_path,
            tiny_backbone_dir,
            tiny_encoder_dir,
            corpus,
            "--training.max_steps=4",
            "--training.save_every=2",
            "--training.eval_every=2",
            "--training.log_every=1",
            "--training.keep_checkpoints=5",
        ),
        show_progress=False,
    )
    run = tmp_path / "runs" / "tiny-debug"
    import shutil

    shutil.rmtree(run / "final")
    shutil.rmtree(run / "step-000004")
    return run


def resume_to_step_6(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus) -> Path:
    return train(
        recipe(
            tmp_path,
            tiny_backbone_dir,
            tiny_encoder_dir,
            corpus,
            "--training.max_steps=6",
            "--training.save_every=2",
            "--training.eval_every=2",
            "--training.log_every=1",
            "--training.keep_checkpoints=5",
        ),
        resume=True,
        show_progress=False,
    )


def test_resume_drops_the_log_rows_a_killed_session_wrote_past_its_checkpoint(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus
):
    run = killed_after_step_4(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus)
    resume_to_step_6(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]  # steps 3-4 once, not twice
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [2, 4, 6]


def test_resume_survives_a_metrics_file_whose_last_line_was_cut(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus):
    run = killed_after_step_4(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"kind": "train", "step": 5, "lo')  # the disk filled mid-line
    final = resume_to_step_6(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus)
    assert load_adapter(final, device="cpu").meta.training["steps"] == 6
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [2, 4, 6]


def test_resume_of_a_finished_run_says_so_and_touches_nothing(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, monkeypatch, caplog
):
    cfg = recipe(
        tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, "--training.max_steps=4", "--training.save_every=2"
    )
    final = train(cfg, show_progress=False)
    run = final.parent

    def stamps():
        return {
            str(p.relative_to(run)): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*")
        }

    before = stamps()

    def not_for_a_finished_run(*args, **kwargs):
        raise AssertionError("a finished run read its data again")

    monkeypatch.setattr(train_module.Trainer, "prepare_data", not_for_a_finished_run)
    with caplog.at_level("INFO", logger="lora_v2t"):
        assert train(cfg, resume=True, show_progress=False) == final
    assert f"{run} is finished: it trained 4 of training.max_steps=4 steps" in caplog.text
    assert stamps() == before


def test_the_cli_says_a_finished_run_saved_nothing(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, capsys):
    args = [
        "train",
        str(RECIPE),
        f"--backbone.name={tiny_backbone_dir}",
        f"--encoder.spec={tiny_encoder_dir}",
        f"--training.output_dir={tmp_path / 'runs'}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        f"--data.train={corpus}",
        "--data.val_size=4",
        "--training.max_steps=2",
        "--training.save_every=2",
        "--training.eval_every=2",
        "--no-progress",
    ]
    assert main(args) == 0
    assert "adapter saved to" in capsys.readouterr().out
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "adapter saved to" not in out and f"adapter (unchanged): {tmp_path / 'runs'}" in out


@pytest.mark.parametrize("content", [None, b"\x89PNG\r\n\x1a\n\x00\x01\x02"])
def test_embed_reads_the_corpus_before_loading_the_encoder(tmp_path, tiny_backbone_dir, content, capsys, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    if content is not None:
        corpus.write_bytes(content)
    monkeypatch.setattr(
        "lora_v2t.train.pairs.load_encoder",
        lambda *a, **k: pytest.fail("the encoder was loaded before the corpus was read"),
    )
    assert (
        main(
            [
                "embed",
                str(RECIPE),
                f"--backbone.name={tiny_backbone_dir}",
                f"--data.train={corpus}",
                f"--data.cache_dir={tmp_path / 'cache'}",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.startswith(f"error: corpus {corpus} ")


def test_a_refused_run_leaves_no_folder_behind(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus, capsys):
    args = [
        f"--backbone.name={tiny_backbone_dir}",
        f"--encoder.spec={tiny_encoder_dir}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        f"--data.train={corpus}",
        "--data.val_size=4",
    ]
    assert main(["train", str(RECIPE), *args, "--resume", str(tmp_path / "a" / "b" / "c")]) == 2  # mistyped
    assert not (tmp_path / "a").exists()
    assert capsys.readouterr().err.strip().startswith(f"error: nothing to resume: {tmp_path / 'a' / 'b' / 'c'} ")
    assert main(["train", str(RECIPE), *args, f"--training.output_dir={tmp_path / 'x' / 'runs'}", "--resume"]) == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert (
        main(["train", str(RECIPE), *args, f"--training.output_dir={tmp_path / 'y' / 'runs'}", f"--data.train={empty}"])
        == 2
    )
    assert "is empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "empty.txt"]


def test_lora_v2t_home_naming_a_file_is_named_as_the_cause(tmp_path, monkeypatch):
    from lora_v2t.config import load_config
    from lora_v2t.train.rundir import check_paths, run_dir_of

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Где лодка?\n", encoding="utf-8")
    (tmp_path / "home").write_text("not a folder")
    monkeypatch.setenv("LORA_V2T_HOME", str(tmp_path / "home"))
    cfg = load_config("recipes/tiny_debug.yaml", [f"--data.train={corpus}", "--backbone.name=openai-community/gpt2"])
    with pytest.raises(
        V2TError,
        match=r"is a file, not a folder; it comes from LORA_V2T_HOME=.*home: point "
        r"LORA_V2T_HOME at a folder, or set training\.output_dir",
    ):
        check_paths(cfg, run_dir_of(cfg))
