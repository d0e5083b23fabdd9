"""Training cost: LoRA + projector (fp32 and 8-bit) versus full fine-tuning, on the same batches.

On the offline Gemma-3-270M backbone, runs a few optimizer steps of each mode on identical batches of real
Russian sentences and prints seconds per step and peak memory, with ratios against full fine-tuning (the
baseline, measured in the same run). On CUDA, peak memory is torch.cuda.max_memory_allocated in this
process; on a CPU each mode runs in a child process and its peak resident memory (ru_maxrss) is reported.

    .venv/bin/python bench/training.py             # ~10 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ru" / "train.txt"
MODES = {  # name: (trainable, quantization, loss_vocab)
    "full fine-tuning (fp32)": ("full", "none", "full"),
    "LoRA + projector (fp32)": ("lora", "none", "full"),
    "LoRA + projector (8-bit)": ("lora", "8bit", "full"),
    "LoRA + projector (fp32, corpus-vocabulary loss)": ("lora", "none", "corpus"),
}


def run_mode(name: str, steps: int, batch_size: int, max_tokens: int) -> dict:
    """Time ``steps`` optimizer steps of one mode (after one warm-up step) in this process."""
    import numpy as np
    import torch

    from lora_v2t import Vector2Text
    from lora_v2t.train.data import tokenize_corpus

    trainable, quantization, loss_vocab = MODES[name]
    torch.manual_seed(0)
    lines = [s for s in DATA.read_text(encoding="utf-8").splitlines()[: 4 * batch_size * (steps + 1)] if s.strip()]
    v2t = Vector2Text.create(
        backbone="offline:gemma-3-270m",
        encoder="precomputed:512",
        quantization=quantization,
        trainable=trainable,
        seed=0,
    )
    params = v2t.trainable_parameters()
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    corpus = tokenize_corpus(v2t.tokenizer, lines, max_tokens)
    vocab = torch.from_numpy(corpus.vocab) if loss_vocab == "corpus" else None
    rng = np.random.default_rng(0)
    vectors = torch.from_numpy(rng.standard_normal((len(lines), 512)).astype("float32"))
    cuda = v2t.device.type == "cuda"
    v2t.train()
    times = []
    for step in range(steps + 1):
        texts = lines[step * batch_size : (step + 1) * batch_size]
        batch = v2t.tokenize(texts, max_tokens)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = v2t.forward(vectors[step * batch_size : (step + 1) * batch_size], **batch, loss_vocab=vocab).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step:  # the first step is a warm-up
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "mode": name,
        "s_per_step": sum(times) / len(times),
        "peak_gib": peak / 2**30,
        "peak_kind": "cuda max_memory_allocated" if cuda else "peak RSS of the process",
        "trainable_params": sum(p.numel() for p in params),
        "device": str(v2t.device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per mode (default 3)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="bench/results/training.json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_mode(args.child, args.steps, args.batch_size, args.max_tokens)))
        return
    import torch

    results = []
    for name in MODES:
        if torch.cuda.is_available():  # one process: reset the CUDA peak between modes
            torch.cuda.reset_peak_memory_stats()
            results.append(run_mode(name, args.steps, args.batch_size, args.max_tokens))
            torch.cuda.empty_cache()
        else:  # a child process per mode, so each peak RSS is its own
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    "--steps",
                    str(args.steps),
                    "--batch-size",
                    str(args.batch_size),
                    "--max-tokens",
                    str(args.max_tokens),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(
            f"{r['mode']:<50} {r['s_per_step']:7.2f} s/step   peak {r['peak_gib']:5.2f} GiB   "
            f"{r['trainable_params']:>12,} trainable",
            flush=True,
        )
    base = results[0]
    print(
        f"\nratios against {base['mode']} (batch {args.batch_size}, {args.steps} timed steps, {base['device']}; "
        f"{base['peak_kind']}):"
    )
    for r in results[1:]:
        print(
            f"  {r['mode']:<50} memory {r['peak_gib'] / base['peak_gib']:.0%}   "
            f"speed {base['s_per_step'] / r['s_per_step']:.2f}x"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"date": time.strftime("%Y-%m-%d"), "batch_size": args.batch_size, "steps": args.steps, "results": results},
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
