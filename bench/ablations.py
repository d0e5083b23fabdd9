"""What gives the most learning per CPU-minute: variants of the offline recipe, trained for the same wall time.

Each variant changes one thing of `recipes/offline_use_gemma270m.yaml` (USE -> Gemma-3-270M, MLP projector,
one slot, LoRA r=16 on q/k/v/o, batch 16, lr 5e-4 / projector 1e-3, corpus-vocabulary loss), trains from the
same seed on the same sentences of ../shared/data/ru/train.txt for --minutes of wall time (the training loop's
clock, data preparation and model loading excluded), and is then scored on the same 200 held-out sentences:

- validation loss over the full vocabulary (the same yardstick for every variant; it penalises the
  corpus-vocabulary variants a little, since they never learned to push non-corpus tokens down);
- validation loss over the corpus vocabulary (what decoding with the adapter's output vocabulary sees;
  held-out tokens outside the training corpus's vocabulary are left out of this one).

    .venv/bin/python bench/ablations.py --minutes 5          # about 6 minutes per variant on a 2-core CPU
    .venv/bin/python bench/ablations.py --minutes 5 --only recipe "full-vocabulary loss"

Run it on a quiet machine: the comparison is by wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "offline_use_gemma270m.yaml"
VARIANTS = {
    "recipe": [],
    "full-vocabulary loss": ["--training.loss_vocab=full"],
    "prefix of 4 slots": ["--projector.prefix_length=4"],
    "LoRA on attention + MLP": ["--lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"],
    "LoRA on the upper 9 of 18 blocks": ["--lora.layers=[9,10,11,12,13,14,15,16,17]"],
    "learning rates x2 (1e-3 / 2e-3)": ["--training.lr=1e-3", "--training.projector_lr=2e-3"],
    "learning rates /2 (2.5e-4 / 5e-4)": ["--training.lr=2.5e-4", "--training.projector_lr=5e-4"],
}


def corpus_vocab_val_loss(v2t, texts: list[str], vectors, vocab, batch_size: int, max_tokens: int) -> tuple[float, int]:
    """Validation loss with the softmax over ``vocab``; sentences with a token outside it are left out
    (returns the loss and how many sentences were kept)."""
    import numpy as np
    import torch

    from lora_v2t.train.evaluation import validation_loss

    allowed = set(vocab.tolist())
    keep = [
        i
        for i, t in enumerate(texts)
        if set(v2t.tokenizer(t, add_special_tokens=False)["input_ids"][: max_tokens - 1]) <= allowed
    ]
    loss = validation_loss(
        v2t,
        [texts[i] for i in keep],
        np.asarray(vectors[keep]),
        batch_size,
        max_tokens,
        loss_vocab=torch.as_tensor(vocab),
    )
    return loss, len(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall time per variant (default 5)")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run only these variants")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ablations"), help="run folders and JSON")
    args = parser.parse_args()

    from lora_v2t import load_adapter
    from lora_v2t.config import load_config
    from lora_v2t.train.data import tokenize_corpus
    from lora_v2t.train.pairs import prepare_data
    from lora_v2t.train.trainer import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = int(time.time())
    rows = []
    vocab = None  # the training corpus's vocabulary: the same sentences for every variant
    for i, name in enumerate(args.only or VARIANTS):
        cfg = load_config(
            RECIPE,
            VARIANTS[name]
            + [
                f"--training.run_name=variant-{i}-{stamp}",
                f"--training.output_dir={out}",
                f"--training.max_minutes={args.minutes}",
                "--training.max_steps=100000",
                "--training.eval_every=100000",
                "--training.save_every=100000",
                "--training.num_samples=0",
            ],
        )
        print(f"\n== {name}: {' '.join(VARIANTS[name]) or '(the recipe as it is)'}", flush=True)
        final = train(cfg, show_progress=False)
        summary = json.loads((final / "v2t_config.json").read_text())["training"]
        data = prepare_data(cfg, show_progress=False)
        train_texts, val_texts, val_vectors = data.train_texts, data.val_texts, data.val_vectors
        v2t = load_adapter(final, quantization="none", device="cpu")
        if vocab is None:
            vocab = tokenize_corpus(v2t.tokenizer, train_texts, cfg.data.max_tokens).vocab
        corpus_loss, kept = corpus_vocab_val_loss(v2t, val_texts, val_vectors, vocab, 16, cfg.data.max_tokens)
        rows.append(
            {
                "variant": name,
                "overrides": VARIANTS[name],
                "minutes": args.minutes,
                "steps": summary["steps"],
                "sentences_seen": summary["sentences_seen"],
                "s_per_step": round(args.minutes * 60 / max(summary["steps"], 1), 2),
                "val_loss_full_vocab": summary["metrics"]["val_loss"],
                "val_loss_corpus_vocab": round(corpus_loss, 4),
                "val_sentences_in_corpus_vocab": kept,
            }
        )
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
        (out / "ablations.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        del v2t

    base = next((r for r in rows if r["variant"] == "recipe"), None)
    print(f"\n{args.minutes:g} minutes of training each (same seed, same data); validation on 200 held-out sentences")
    print(
        f"{'variant':<36} {'steps':>6} {'s/step':>7} {'seen':>6} {'val (full)':>11} {'val (corpus)':>13}"
        f"{'  vs recipe':>11}"
    )
    for r in rows:
        delta = f"{r['val_loss_corpus_vocab'] - base['val_loss_corpus_vocab']:+.3f}" if base else ""
        print(
            f"{r['variant']:<36} {r['steps']:>6} {r['s_per_step']:>7.2f} {r['sentences_seen']:>6} "
            f"{r['val_loss_full_vocab']:>11.3f} {r['val_loss_corpus_vocab']:>13.3f} {delta:>10}"
        )


if __name__ == "__main__":
    main()
