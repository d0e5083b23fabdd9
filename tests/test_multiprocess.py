"""A real two-process training run on the CPU through `accelerate launch` (gloo), then --resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lora_v2t import load_adapter

from .conftest import LAUNCH_ENV, TWO_CPU_PROCESSES
from .test_train import RECIPE, corpus_file


def launch(tmp_path, backbone, encoder, *extra) -> subprocess.CompletedProcess:
    command = [
        *TWO_CPU_PROCESSES,
        "-m",
        "lora_v2t.cli",
        "train",
        str(RECIPE),
        f"--backbone.name={backbone}",
        f"--encoder.spec={encoder}",
        f"--training.output_dir={tmp_path / 'runs'}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        f"--data.train={tmp_path / 'corpus.txt'}",
        "--data.val_size=8",
        "--backbone.device=cpu",
        "--training.batch_size=8",
        "--no-progress",
        *extra,
    ]
    env = os.environ | LAUNCH_ENV
    # a hang (processes out of step) fails at the timeout
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)


def test_two_processes_train_share_the_batches_and_resume(tmp_path, tiny_backbone_dir, tiny_encoder_dir):
    if not (Path(sys.executable).parent / "accelerate").exists():
        pytest.skip("the accelerate command is not installed beside this Python")
    corpus_file(tmp_path, repeat=5)  # 40 sentences: 8 validate, 32 train = 4 full batches of 8 per epoch
    first = launch(
        tmp_path,
        tiny_backbone_dir,
        tiny_encoder_dir,
        "--training.max_steps=20",
        "--training.save_every=10",
        "--training.eval_every=10",
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("adapter saved to") == 1  # the main process reports, once
    run = tmp_path / "runs" / "tiny-debug"
    config = json.loads((run / "final" / "v2t_config.json").read_text())
    assert config["training"]["sentences_seen"] == 20 * 8 * 2  # both processes' batches count
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [10, 20]  # one writer, no duplicates
    rng = load_file(str(run / "step-000020" / "optimizer.safetensors"))
    assert {"rng.torch", "rng.rank1.torch"} <= set(rng)  # every process's RNG state
    cache = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/meta.json")]
    assert sorted(m["count"] for m in cache) == [8, 32] and all(m["done"] == m["count"] for m in cache)

    # resumed, and stopped by the time budget: the main process's clock decides, so both stop at one step
    again = launch(
        tmp_path,
        tiny_backbone_dir,
        tiny_encoder_dir,
        "--training.max_steps=100000",
        "--training.max_minutes=0.15",
        "--training.save_every=50",
        "--training.eval_every=100000",
        "--resume",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    v2t = load_adapter(run / "final", device="cpu")
    steps = v2t.meta.training["steps"]
    assert 20 < steps < 100000 and v2t.meta.training["sentences_seen"] == steps * 8 * 2
    assert len(v2t.generate(v2t.encode(["Где лодка?"]), max_new_tokens=4)) == 1
