"""The original experiment's scheme versus ours, for the same wall time on the same data.

Original: the vector zero-padded into the first slot and the whole backbone fine-tuned (AdamW, lr 1e-5).
Ours: the MLP projector + LoRA on the frozen backbone (the offline recipe's settings). Both train on the same
sentences of ../shared/data/ru/train.txt for --minutes each, then report the validation loss (full
vocabulary, the same held-out sentences) and greedy metrics on the first --dev sentences of
dev_conversational.txt, side by side.

    .venv/bin/python bench/quality.py --minutes 20 --dev 200      # ~50 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lora_v2t.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "ru" / "dev_conversational.txt"
SCHEMES = {
    "original (zero-pad + full fine-tuning, lr 1e-5)": [
        "--projector.kind=zero-pad", "--training.trainable=full", "--training.lr=1e-5",
        "--training.warmup_steps=0", "--training.min_lr_ratio=1.0", "--training.loss_vocab=full"],
    "ours (MLP projector + LoRA r=16)": [],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="training time per scheme (default 20)")
    parser.add_argument("--dev", type=int, default=200, help="dev_conversational sentences to score (default 200)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality"), help="run folders and JSON")
    args = parser.parse_args()
    from lora_v2t import load_adapter
    from lora_v2t.evaluate import evaluate, read_eval_file
    from lora_v2t.train import train

    data = read_eval_file(DEV, limit=args.dev)
    rows = []
    for i, (name, overrides) in enumerate(SCHEMES.items()):
        cfg = load_config(ROOT / "recipes" / "offline_use_gemma270m.yaml", overrides + [
            f"--training.run_name=scheme-{i}-{int(time.time())}", f"--training.output_dir={args.out}",
            f"--training.max_minutes={args.minutes}", "--training.max_steps=100000", "--training.eval_every=100000",
            "--training.save_every=100000"])
        final = train(cfg, show_progress=False)
        v2t = load_adapter(final, quantization="none")
        summary = evaluate(v2t, data, final.parent / "eval", rerank=0, resamples=200, show_progress=False)
        val = json.loads((final / "v2t_config.json").read_text())["training"]
        scores = summary["scores"]["greedy"]
        rows.append({"scheme": name, "steps": val["steps"], "sentences_seen": val["sentences_seen"],
                     "val_loss": val["metrics"]["val_loss"],
                     **{m: scores[m]["value"] for m in ("bleu", "chrf", "token_f1", "cosine")}})
        del v2t
    print(f"\n{args.minutes:g} minutes of training each; greedy on the first {len(data.references)} sentences "
          "of dev_conversational.txt")
    print(f"{'scheme':<50} {'steps':>6} {'seen':>7} {'val loss':>9} {'BLEU':>6} {'chrF':>6} {'F1':>6} {'cos':>6}")
    for r in rows:
        print(f"{r['scheme']:<50} {r['steps']:>6} {r['sentences_seen']:>7} {r['val_loss']:>9.3f} {r['bleu']:>6.1f} "
              f"{r['chrf']:>6.1f} {r['token_f1']:>6.1f} {r['cosine']:>6.3f}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "quality.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
