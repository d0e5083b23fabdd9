"""The offline recipe's CPU training step now against the code before issue 11, on the same batches.

Three short runs of `recipes/offline_use_gemma270m.yaml` (its model, LoRA, projector, batch and loss; a seeded
sample of --sentences sentences of train.txt), each in a child process with its own accelerate state:

- before, fp32: the lora_v2t of the commit before issue 11 (bench/older.py), whose `auto` precision on a CPU was
  fp32 (the "today's code" of the issue);
- now, fp32 (`mixed_precision: no`): must give the same loss at every step, to 1e-4;
- now, as the recipe says (`mixed_precision: auto`: bf16 on CPUs with AVX-512 BF16 or AMX, else fp32).

It prints the median step time (steps after the first --skip), the ratio to before's, the largest step-loss
difference to before's, and the validation loss after the last step (within 1% of fp32 is the target for bf16).

    .venv/bin/python bench/train_step.py        # 30 steps each: about 7 minutes on a 2-core CPU
    .venv/bin/python bench/train_step.py --extra=--lora.dropout=0   # a fourth run with a recipe change
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from older import commit_id, run_at  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "offline_use_gemma270m.yaml"
TRAIN = REPO.parent / "shared" / "data" / "ru" / "train.txt"
BEFORE = "29aa133^"  # the commit before issue 11's first

RUN_CODE = """
import time
from pathlib import Path
from lora_v2t.config import load_config
from lora_v2t.train.trainer import train
cfg = load_config(ARGS["recipe"], ARGS["overrides"] + [f"--training.output_dir={ARGS['tmp']}/runs"])
start = time.perf_counter()
final = train(cfg, show_progress=False)
wall = time.perf_counter() - start
memory = json.loads((final / "v2t_config.json").read_text())["training"].get("memory")  # recorded since issue 11
lines = (Path(ARGS["tmp"]) / "runs" / cfg.training.run_name / "metrics.jsonl").read_text().splitlines()
records = [json.loads(line) for line in lines]
json.dump({"wall_s": wall, "records": records, "memory": memory}, open(ARGS["result"], "w"))
"""


def run(rev: str | None, precision: str, args, extra: tuple[str, ...] = ()) -> dict:
    """One short run of the recipe (plus ``extra`` overrides); its per-step losses and times and its final
    validation loss."""
    overrides = list(extra) + [
        f"--data.train={TRAIN}",
        f"--data.max_sentences={args.sentences}",
        "--data.val_size=200",
        f"--training.max_steps={args.steps}",
        "--training.max_minutes=null",
        "--training.log_every=1",
        f"--training.eval_every={args.steps}",
        f"--training.save_every={args.steps}",
        "--training.num_samples=1",
        f"--training.mixed_precision='{precision}'",
        "--training.run_name=bench",
    ]
    out = run_at(rev, RUN_CODE, {"recipe": str(RECIPE), "overrides": overrides})
    steps = [r for r in out["records"] if r.get("kind") == "train"]
    val = [r for r in out["records"] if r.get("kind") == "eval" or "val_loss" in r]
    return {
        "losses": [r["loss"] for r in steps],
        "ms": [r["ms_per_step"] for r in steps],
        "val_loss": val[-1]["val_loss"] if val else None,
        "wall_s": out["wall_s"],
        "memory": out["memory"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="steps per run (default 30)")
    parser.add_argument("--skip", type=int, default=3, help="first steps left out of the timing (default 3)")
    parser.add_argument("--sentences", type=int, default=3000, help="training sentences sampled (default 3000)")
    parser.add_argument("--before", default=BEFORE, help=f"the commit to compare with (default {BEFORE})")
    parser.add_argument(
        "--extra",
        nargs="+",
        metavar="OVERRIDE",
        help="also run now/auto with these recipe overrides, e.g. --extra --lora.dropout=0 (a row "
        "beside the others: what a recipe change would bring)",
    )
    parser.add_argument("--out", default="bench/results/train_step.json", help="where to write the figures")
    args = parser.parse_args()
    runs = {
        "before fp32": run(args.before, "no", args),
        "now fp32": run(None, "no", args),
        "now auto": run(None, "auto", args),
    }
    if args.extra:
        runs["now auto +extra"] = run(None, "auto", args, tuple(args.extra))
    before = runs["before fp32"]
    base_ms = statistics.median(before["ms"][args.skip :])
    rows = {}
    for name, r in runs.items():
        ms = statistics.median(r["ms"][args.skip :])
        rows[name] = {
            "median_ms_per_step": round(ms, 1),
            "speedup": round(base_ms / ms, 3),
            "max_loss_diff_to_before": max(abs(a - b) for a, b in zip(r["losses"], before["losses"], strict=True)),
            "val_loss": r["val_loss"],
            "steps": len(r["losses"]),
            "ms_per_step": r["ms"],
            "losses": r["losses"],
            "wall_s": round(r["wall_s"], 1),
            "memory": r["memory"],
        }
    fp32_val = rows["now fp32"]["val_loss"]
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "device": "cpu",
        "recipe": str(RECIPE.relative_to(REPO)),
        "sentences": args.sentences,
        "steps": args.steps,
        "before_commit": commit_id(args.before),
        "extra": args.extra,
        "runs": rows,
    }
    print(f"{RECIPE.name}, {args.steps} steps on {args.sentences} sentences; median of steps {args.skip + 1}+")
    print(f"{'run':15} {'ms/step':>8} {'speed-up':>8} {'max |dloss|':>12} {'val loss':>9}")
    for name, r in rows.items():
        print(
            f"{name:15} {r['median_ms_per_step']:>8.0f} {r['speedup']:>7.2f}x {r['max_loss_diff_to_before']:>12.2e} "
            f"{r['val_loss']:>9.4f}"
        )
    auto_val = rows["now auto"]["val_loss"]
    print(
        f"targets: >= 1.25x before's step; fp32 losses equal to 1e-4; val loss within 1% of fp32 "
        f"(now auto: {100 * (auto_val - fp32_val) / fp32_val:+.2f}%)"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
