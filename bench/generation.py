"""Generation speed, adapter size and adapter-switch time on the offline Gemma-3-270M backbone.

Compares, on the same backbone and adapter, our batched KV-cache greedy generation with the one-vector-at-a-time
no-cache loop of the original experiment (which recomputes the whole sequence at every step), checks that both
give the same text, and prints the ratios. Also: adapter size on disk as a fraction of the base model's, and
the time to switch (and to load) an adapter as a fraction of the time to load the base.

    .venv/bin/python bench/generation.py            # batch 64, 32 new tokens; about 2 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the reference decoding lives with the tests
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lora_v2t import Vector2Text, load_adapter  # noqa: E402
from lora_v2t.model.backbone import convert_offline_gemma, load_backbone  # noqa: E402
from tests.naive_decoding import generate_naive  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ru" / "dev_conversational.txt"


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--batch", type=int, default=64, help="vectors decoded together (default 64, what `invert` picks on a CPU)"
    )
    parser.add_argument("--new-tokens", type=int, default=32, help="new tokens per sequence (default 32)")
    parser.add_argument(
        "--naive-count",
        type=int,
        default=8,
        help="how many of the vectors the slow baseline decodes (its rate is per sequence)",
    )
    parser.add_argument("--adapter", help="a trained adapter bundle to use (default: a fresh, seeded one)")
    parser.add_argument("--out", default="bench/results/generation.json", help="where to write the figures")
    args = parser.parse_args()
    torch.manual_seed(0)

    base_dir = convert_offline_gemma()
    start = time.perf_counter()
    load_backbone("offline:gemma-3-270m", quantization="none", device="cpu")
    base_load_s = time.perf_counter() - start

    sentences = [s for s in DATA.read_text(encoding="utf-8").splitlines() if s.strip()][: args.batch]
    with tempfile.TemporaryDirectory() as tmp:
        if args.adapter:
            v2t = load_adapter(args.adapter, device="cpu", quantization="none", name="one")
        else:
            v2t = Vector2Text.create(
                backbone="offline:gemma-3-270m",
                encoder="offline:use-multilingual",
                device="cpu",
                quantization="none",
                adapter_name="one",
                seed=0,
            )
            with torch.no_grad():  # give LoRA B non-zero values so the adapter changes the model
                for name, p in v2t.model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.02)
        bundle_a = v2t.save_adapter(Path(tmp) / "one")
        adapter_bytes = folder_size(bundle_a)
        base_bytes = sum(p.stat().st_size for p in base_dir.glob("*.safetensors"))

        start = time.perf_counter()
        v2t.load_adapter(bundle_a, name="two")
        adapter_load_s = time.perf_counter() - start
        switches = 50
        start = time.perf_counter()
        for i in range(switches):
            v2t.set_adapter("two" if i % 2 == 0 else "one")
        switch_s = (time.perf_counter() - start) / switches
        v2t.set_adapter("one")

        vectors = v2t.encode(sentences)
        v2t.generate(vectors[:2], max_new_tokens=2)  # warm-up
        start = time.perf_counter()
        batched = v2t.generate(
            vectors, max_new_tokens=args.new_tokens, batch_size=args.batch, repetition_penalty=1.0
        )  # plain greedy, as the reference loop
        batched_s = time.perf_counter() - start
        n_naive = min(args.naive_count, len(vectors))
        start = time.perf_counter()
        naive = generate_naive(v2t, vectors[:n_naive], max_new_tokens=args.new_tokens)
        naive_s = time.perf_counter() - start
        full_s = None
        if v2t.output_vocab is not None:  # the same batched decoding with the whole 262k-token output layer
            start = time.perf_counter()
            full = v2t.generate(
                vectors,
                max_new_tokens=args.new_tokens,
                batch_size=args.batch,
                restrict_vocab=False,
                repetition_penalty=1.0,
            )
            full_s = time.perf_counter() - start
            full_tokens = sum(len(v2t.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in full)

    same = sum(a == b for a, b in zip(batched[:n_naive], naive, strict=True))
    mean_tokens = sum(len(v2t.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in batched) / len(batched)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "backbone": "offline:gemma-3-270m (fp32)",
        "batch": len(vectors),
        "max_new_tokens": args.new_tokens,
        "adapter": args.adapter or "fresh seeded adapter",
        "output_vocab": None if v2t.output_vocab is None else int(v2t.output_vocab.numel()),
        "mean_generated_tokens": round(mean_tokens, 1),
        "batched_kv_cache_seq_per_s": round(len(vectors) / batched_s, 3),
        "naive_no_cache_seq_per_s": round(n_naive / naive_s, 4),
        "speedup": round((len(vectors) / batched_s) / (n_naive / naive_s), 1),
        "same_text": f"{same}/{n_naive}",
        "batched_full_vocab_seq_per_s": None if full_s is None else round(len(vectors) / full_s, 3),
        "batched_full_vocab_mean_generated_tokens": None if full_s is None else round(full_tokens / len(full), 1),
        "adapter_mib": round(adapter_bytes / 2**20, 2),
        "base_mib": round(base_bytes / 2**20, 1),
        "adapter_fraction_of_base": round(adapter_bytes / base_bytes, 4),
        "base_load_s": round(base_load_s, 2),
        "adapter_load_s": round(adapter_load_s, 3),
        "switch_ms": round(switch_s * 1000, 3),
        "switch_fraction_of_base_load": round(switch_s / base_load_s, 6),
        "adapter_load_fraction_of_base_load": round(adapter_load_s / base_load_s, 4),
    }
    print(
        f"batched KV-cache greedy : {results['batched_kv_cache_seq_per_s']:.3f} seq/s "
        f"({len(vectors)} vectors in {batched_s:.1f} s)"
    )
    print(
        f"one-at-a-time, no cache : {results['naive_no_cache_seq_per_s']:.4f} seq/s "
        f"({n_naive} vectors in {naive_s:.1f} s)"
    )
    print(f"speed-up                : {results['speedup']}x   (target >= 20x); same text: {results['same_text']}")
    if full_s is not None:
        print(
            f"batched, whole vocabulary: {results['batched_full_vocab_seq_per_s']:.3f} seq/s: the output layer "
            f"over the adapter's {results['output_vocab']} tokens is {full_s / batched_s:.2f}x faster "
            f"(mean generated tokens {results['mean_generated_tokens']} vs "
            f"{results['batched_full_vocab_mean_generated_tokens']} over the whole vocabulary)"
        )
    print(
        f"adapter size            : {results['adapter_mib']} MiB = {results['adapter_fraction_of_base']:.2%} "
        f"of the base's {results['base_mib']} MiB (target < 1%)"
    )
    print(
        f"switch adapters         : {results['switch_ms']} ms = {results['switch_fraction_of_base_load']:.4%} "
        f"of a base load ({base_load_s:.2f} s) (target < 1%)"
    )
    print(
        f"load a second adapter   : {adapter_load_s:.3f} s = {results['adapter_load_fraction_of_base_load']:.2%} "
        "of a base load"
    )
    # strict=False: naive decodes only the first n_naive sentences
    for original, a, b in list(zip(sentences, batched, naive, strict=False))[:3]:
        print(f"  {original} ==> {a!r} | naive {b!r}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
