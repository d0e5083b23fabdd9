"""bench/gpu.py: refuses to run without a GPU, and its --smoke run goes through every section on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.py"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_without_cuda_it_stops_at_once_with_one_line(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--work-dir", str(tmp_path / "w")],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "CUDA GPU" in err[0]
    assert proc.stdout == ""
    assert not out.exists() and not (tmp_path / "w").exists()  # nothing was built


@pytest.mark.slow  # about 50-90 s on a 2-core CPU: five CLI child processes plus a dozen tiny models
def test_smoke_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "gpu-smoke.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--smoke",
            "--out",
            str(out),
            "--work-dir",
            str(tmp_path / "work"),
            "--static-variants",
            "eager+merged,sdpa-no-cudnn+autocast",
            "--older",
            str(ROOT),
        ],  # this tree stands in for the older code
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["smoke"] and results["device"] == "cpu"
    assert results["sections_done"] == ["e2e", "training", "decoding"]

    e2e = results["e2e"]
    assert e2e["ok"] and [s["step"] for s in e2e["steps"]] == ["train", "info", "generate", "evaluate", "resume"]
    assert all(s["rc"] == 0 and all(s["checks"].values()) for s in e2e["steps"])
    assert e2e["steps"][4]["checks"]["final_steps"]  # --resume trained on to the higher max_steps

    modes = {m["mode"]: m for m in results["training"]["modes"]}
    assert list(modes) == [
        "full_fp32",
        "full_bf16",
        "lora_8bit_ckpt",
        "lora_8bit_stock",
        "lora_8bit",
        "lora_8bit_d0",
        "lora_8bit_d0_t0",
        "lora_4bit_ckpt",
        "lora_bf16",
    ]
    assert modes["full_fp32"]["gelu"].startswith("stock") and modes["lora_bf16"]["gelu"] == "fused"
    assert modes["lora_8bit_d0_t0"]["lora_dropout"] == 0.0 and modes["lora_8bit_d0_t0"]["int8_threshold"] == 0.0
    assert not [m for m in modes.values() if "error" in m]
    measured = [m for m in modes.values() if "s_per_step" in m]
    assert {"full_fp32", "full_bf16", "lora_bf16"} <= {m["mode"] for m in measured}
    assert all(m["s_per_step"] > 0 and m["loss_finite"] and "speed_vs_full_fp32" in m for m in measured)
    assert modes["full_fp32"]["trainable_params"] > 5 * modes["lora_bf16"]["trainable_params"]

    runs = results["decoding"]["runs"]
    assert not [r for r in runs if "error" in r]
    decoded = [r for r in runs if "batch" in r]
    assert {r["batch"] for r in decoded if r["quantization"] == "none"} == {2, 4}
    for r in decoded:
        assert 0 < r["generated_tokens"] <= r["batch"] * r["max_new_tokens"]
        assert r["plain_tokens_per_s"] > 0 and r["v2t_tokens_per_s"] > 0
        assert "v2t_static_error" not in r and r["v2t_static_tokens_per_s"] > 0
        variants = ("v2t_static_eager_merged", "v2t_static_sdpa_no_cudnn_autocast")
        assert not [k for k in r if k.endswith("_error")]
        for path in ("v2t", "v2t_static", "older") + variants:  # plain generate's greedy sequences (fp32, CPU)
            assert r[f"{path}_same_text"] == f"{r['batch']}/{r['batch']}", path
        assert {f"{p}_vs_older" for p in ("v2t", "v2t_static") + variants} == {k for k in r if k.endswith("_vs_older")}
    assert "(a) default recipe through the CLI: OK" in proc.stdout and "(c) greedy decoding" in proc.stdout
