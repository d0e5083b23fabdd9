"""Decoding that does not stutter: transformers' anti-repetition options, measured on the dev metrics.

Decodes the first --dev sentences of dev_conversational.txt from their vectors with the shipped adapter, once per
setting (greedy; greedy + no_repeat_ngram_size n; greedy + repetition_penalty p), and reports corpus chrF and
BLEU (sacrebleu), the mean re-embedding cosine, the share of outputs that stutter (a word bigram said twice),
and the decoding time, each setting against plain greedy measured in the same run.

    .venv/bin/python bench/repetition.py --dev 300      # ~8 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "ru" / "dev_conversational.txt"
SHIPPED = ROOT / "checkpoints" / "adapters" / "use-gemma270m-ru"
SETTINGS = {
    "greedy": {},
    "no_repeat_ngram_size=3": {"no_repeat_ngram_size": 3},
    "repetition_penalty=1.1": {"repetition_penalty": 1.1},
    "repetition_penalty=1.2": {"repetition_penalty": 1.2},
}


def stutters(text: str) -> bool:
    """Whether a word bigram occurs twice ("в сарае, в сарае")."""
    words = [w.strip(".,!?;:«»\"'()").lower() for w in text.split()]
    bigrams = [(a, b) for a, b in zip(words, words[1:], strict=False) if a and b]  # strict=False: neighbours
    return len(bigrams) != len(set(bigrams))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", type=int, default=300, help="dev_conversational sentences (default 300)")
    parser.add_argument("--adapter", default=str(SHIPPED), help="adapter bundle (default: the shipped one)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "repetition.json"))
    args = parser.parse_args()
    import numpy as np
    from sacrebleu.metrics import BLEU, CHRF

    from lora_v2t import load_adapter

    references = [line.strip() for line in DEV.read_text(encoding="utf-8").splitlines() if line.strip()]
    references = references[: args.dev]
    v2t = load_adapter(args.adapter, device="cpu")
    vectors = v2t.encode(references)
    results = {}
    for name, options in SETTINGS.items():
        start = time.perf_counter()
        outputs = v2t.generate(vectors, **options)
        seconds = time.perf_counter() - start
        again = v2t.encode([o if o.strip() else "." for o in outputs])
        cosine = float(np.mean(np.sum(again * vectors, axis=1)))
        results[name] = {
            "chrf": round(CHRF().corpus_score(outputs, [references]).score, 2),
            "bleu": round(BLEU().corpus_score(outputs, [references]).score, 2),
            "cosine": round(cosine, 4),
            "stutter_share": round(sum(map(stutters, outputs)) / len(outputs), 4),
            "seconds": round(seconds, 1),
            "examples": [[r, o] for r, o in zip(references, outputs, strict=True) if stutters(o)][:3],
        }
        row = results[name]
        print(
            f"{name:26s} chrF {row['chrf']:5.1f}  BLEU {row['bleu']:5.1f}  cos {row['cosine']:.4f}  "
            f"stutter {row['stutter_share']:.1%}  {seconds:5.0f} s",
            flush=True,
        )
    base = results["greedy"]
    for row in results.values():
        row["vs_greedy"] = {k: round(row[k] - base[k], 4) for k in ("chrf", "bleu", "cosine", "stutter_share")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"dev": len(references), "adapter": args.adapter, "results": results}, ensure_ascii=False, indent=1)
    )
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
