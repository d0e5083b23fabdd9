"""What bench/gpu.py's sections share: the shapes, the work folder and results file, logging and timing."""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RECIPE = "recipes/labse_rugpt3large_8bit.yaml"
SECTIONS = ("e2e", "training", "decoding")
GIB = 2**30

# shapes: the default pair, and tiny ones for --smoke
REAL = {
    "n_layer": 24,
    "n_embd": 1536,
    "n_head": 16,
    "n_positions": 2048,
    "vocab": 50257,
    "enc_layers": 12,
    "enc_hidden": 768,
    "enc_heads": 12,
    "enc_inner": 3072,
    "enc_vocab": 501153,
    "enc_max_seq": 256,
    "dim": 768,
    "batch": 16,
    "tokens": 64,
    "corpus": 1000,
    "val_size": 32,
    "decode_batches": [32, 128, 512],
    "new_tokens": 32,
    "e2e_steps": 30,
    "e2e_more": 10,
    "eval_limit": 32,
}
SMOKE = {
    "n_layer": 2,
    "n_embd": 64,
    "n_head": 4,
    "n_positions": 128,
    "vocab": 300,
    "enc_layers": 2,
    "enc_hidden": 64,
    "enc_heads": 4,
    "enc_inner": 128,
    "enc_vocab": 500,
    "enc_max_seq": 64,
    "dim": 32,
    "batch": 2,
    "tokens": 8,
    "corpus": 60,
    "val_size": 4,
    "decode_batches": [2, 4],
    "new_tokens": 4,
    "e2e_steps": 2,
    "e2e_more": 1,
    "eval_limit": 4,
}

# from the reporter: a scratch run on an H200 (not this script), torch peak allocated, batch 16 x 64
REFERENCE_H200 = {
    "full_fp32": (0.152, 14.39),
    "full_bf16": (0.089, 14.39),
    "lora_8bit_ckpt": (0.359, 3.45),
    "lora_8bit_stock": (0.201, 6.68),
    "lora_4bit_ckpt": (0.228, 1.39),
    "lora_bf16": (0.080, 5.19),
}


def log(message: str) -> None:
    print(message, flush=True)


def number(row: dict, key: str, width: int, decimals: int) -> str:
    """``row[key]`` right-aligned in ``width`` with ``decimals``, or "-" where the row lacks it."""
    value = row.get(key)
    return f"{'-' if value is None else f'{value:.{decimals}f}':>{width}}"


def path_row(path: str, seconds: float, tokens: int, plain_s: float, texts=None, plain_texts=None) -> dict:
    """One decoding path's columns: its time, tokens/s, speed against the plain path and, given ``texts``, how
    many of them match the plain path's."""
    row = {f"{path}_s": round(seconds, 4), f"{path}_tokens_per_s": round(tokens / seconds, 1)}
    if path != "plain":
        row[f"{path}_vs_plain"] = round(plain_s / seconds, 3)
    if texts is not None:
        row[f"{path}_same_text"] = f"{sum(a == b for a, b in zip(texts, plain_texts, strict=True))}/{len(plain_texts)}"
    return row


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def gib(n_bytes: float | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / GIB, 3)


def error_record(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip().splitlines()[-1][:500]


class BenchState:
    """The run's arguments, shapes, device, work folder and results (saved after every measurement); each
    section's module adds its measurements to this in a subclass, and bench/gpu.py's ``Bench`` joins them."""

    def __init__(self, args):
        import torch

        self.args = args
        self.smoke = args.smoke
        self.shapes = dict(SMOKE if args.smoke else REAL)
        if args.encoder_vocab:
            self.shapes["enc_vocab"] = args.encoder_vocab
        self.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
        self.cuda = self.device == "cuda"
        self.out = Path(args.out)
        self.keep_work = args.work_dir is not None or args.keep_work
        self.work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="lora_v2t_gpu_"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.results: dict = {
            "script": "bench/gpu.py",
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "smoke": self.smoke,
            "device": self.device,
            "env": self.environment(),
            "shapes": self.shapes,
            "sections_done": [],
            "reference_h200_issue": {k: {"s_per_step": s, "peak_gib": m} for k, (s, m) in REFERENCE_H200.items()},
        }

    def environment(self) -> dict:
        from importlib.metadata import PackageNotFoundError, version

        import torch

        env = {
            "python": sys.version.split()[0],
            "torch_cuda": torch.version.cuda,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        }
        for name in (
            "torch",
            "transformers",
            "peft",
            "accelerate",
            "sentence-transformers",
            "bitsandbytes",
            "tokenizers",
        ):
            try:
                env[name] = version(name)
            except PackageNotFoundError:
                env[name] = None
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env |= {
                "gpu": props.name,
                "gpu_memory_gib": gib(props.total_memory),
                "capability": f"{props.major}.{props.minor}",
                "bf16": torch.cuda.is_bf16_supported(),
            }
        return env

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.results, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, self.out)

    def timed(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` and its wall time, the device synchronised on both sides."""
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if self.cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0
