"""The original experiment's scheme, the first hypothesizer, the v2 one, and the v2 one with correction, each
trained for the same wall time on the same data and scored on the same sentences.

- original: the vector zero-padded into the first slot and the whole backbone fine-tuned (AdamW, lr 1e-5, fp32,
  loss over the whole vocabulary): the experiment lora_v2t started from;
- first hypothesizer: the offline recipe as the first shipped adapter had it (MLP projector, 1 slot, LoRA r=16,
  fp32);
- v2 hypothesizer: the offline recipe as it is (4 slots; bf16 autocast on CPUs with bf16 units);
- v2 + correction: the same v2 adapter, corrected --correct-steps times with the training-free `shift` correction
  (no training compute: its cost is decodes, reported beside it).

Each scheme trains in its own process (accelerate fixes the precision once per process) on the recipe's sample of
../shared/data/ru/train.txt for --minutes, then reports the validation loss (full vocabulary, the same held-out
sentences) and the greedy metrics on the first --dev sentences of dev_conversational.txt.

    .venv/bin/python bench/quality.py --minutes 8 --dev 100      # about 35 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from older import run_at  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "offline_use_gemma270m.yaml"
DATA = ROOT.parent / "shared" / "data" / "ru"
SCHEMES = {  # name: recipe overrides
    "original (zero-pad, full fine-tuning, lr 1e-5, fp32)": [
        "--projector.kind=zero-pad",
        "--projector.prefix_length=1",
        "--training.trainable=full",
        "--training.lr=1e-5",
        "--training.warmup_steps=0",
        "--training.min_lr_ratio=1.0",
        "--training.loss_vocab=full",
        "--training.mixed_precision='no'",
    ],
    "first hypothesizer (MLP, 1 slot, LoRA, fp32)": [
        "--projector.prefix_length=1",
        "--training.mixed_precision='no'",
        "--training.warmup_steps=50",
    ],
    "v2 hypothesizer (MLP, 4 slots, LoRA, recipe precision)": [],
}

SCHEME_CODE = """
from lora_v2t import load_adapter
from lora_v2t.config import load_config
from lora_v2t.model.correct import CorrectionConfig
from lora_v2t.tasks.evalfile import read_eval_file
from lora_v2t.tasks.evaluate import evaluate
from lora_v2t.train.trainer import train
cfg = load_config(ARGS["recipe"], ARGS["overrides"])
final = train(cfg, show_progress=False)
v2t = load_adapter(final, quantization="none")
steps = ARGS["correct_steps"]
correction = CorrectionConfig(steps=steps, corrector="shift") if steps else None
summary = evaluate(v2t, read_eval_file(ARGS["dev"], limit=ARGS["limit"]), final.parent / "eval", rerank=0,
                   resamples=200, show_progress=False, correction=correction)
training = json.loads((final / "v2t_config.json").read_text(encoding="utf-8"))["training"]
json.dump({"training": training, "scores": summary["scores"], "correction": summary.get("correction"),
           "dtype": v2t.backbone_info["compute_dtype"]}, open(ARGS["result"], "w", encoding="utf-8"))
"""


def run_scheme(index: int, overrides: list[str], args, correct_steps: int) -> dict:
    """Train one scheme in a child process and score it."""
    run = [
        f"--data.train={DATA / 'train.txt'}",
        f"--training.run_name=scheme-{index}-{int(time.time())}",
        f"--training.output_dir={args.out}",
        f"--training.max_minutes={args.minutes}",
        "--training.max_steps=100000",
        "--training.eval_every=100000",
        "--training.save_every=100000",
    ]
    return run_at(
        None,
        SCHEME_CODE,
        {
            "recipe": str(RECIPE),
            "overrides": overrides + run,
            "dev": str(DATA / "dev_conversational.txt"),
            "limit": args.dev,
            "correct_steps": correct_steps,
        },
    )


def row(name: str, out: dict, system: str, decodes: float = 1.0) -> dict:
    scores, training = out["scores"][system], out["training"]
    return {
        "scheme": name,
        "steps": training["steps"],
        "sentences_seen": training["sentences_seen"],
        "val_loss": training["metrics"]["val_loss"],
        "decoding_dtype": out["dtype"],
        "decodes": decodes,
        **{m: scores[m]["value"] for m in ("bleu", "chrf", "token_f1", "cosine")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=8.0, help="training time per scheme (default 8)")
    parser.add_argument("--dev", type=int, default=100, help="dev_conversational sentences to score (default 100)")
    parser.add_argument("--correct-steps", type=int, default=2, help="shift correction steps for v2 (default 2)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality"), help="run folders and JSON")
    args = parser.parse_args()
    rows = []
    for i, (name, overrides) in enumerate(SCHEMES.items()):
        last = i == len(SCHEMES) - 1
        out = run_scheme(i, overrides, args, args.correct_steps if last else 0)
        rows.append(row(name, out, "greedy"))
        if last and out["correction"]:  # it stops early when no cosine rises
            ran = out["correction"]["steps_run"]
            rows.append(
                row(
                    f"v2 + shift correction, {ran} steps",
                    out,
                    f"corrected-{ran}",
                    sum(out["correction"]["decodes_per_vector_per_step"]),
                )
            )
    print(
        f"\n{args.minutes:g} minutes of training each; greedy on the first {args.dev} sentences of "
        "dev_conversational.txt"
    )
    print(
        f"{'scheme':<56} {'steps':>6} {'seen':>7} {'val loss':>9} {'dec':>4} {'BLEU':>6} {'chrF':>6} {'F1':>6} "
        f"{'cos':>6}"
    )
    for r in rows:
        print(
            f"{r['scheme']:<56} {r['steps']:>6} {r['sentences_seen']:>7} {r['val_loss']:>9.3f} {r['decodes']:>4.0f} "
            f"{r['bleu']:>6.1f} {r['chrf']:>6.1f} {r['token_f1']:>6.1f} {r['cosine']:>6.3f}"
        )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "quality.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
