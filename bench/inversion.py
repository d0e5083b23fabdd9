"""Bulk inversion on the CPU: `lora-v2t invert` now against `v2t.invert` of the code before issue 11.

The same shipped adapter, the same sentences of dev_conversational.txt, each text encoded and decoded with the
adapter's default options. Three paths, one after the other on a quiet machine:

- before: ``v2t.invert`` (encode + ``v2t.generate``, batch 32) of the commit before issue 11, in a child process
  (bench/older.py); the figure the issue quotes as "today's" (4.35 sentences/s);
- now, fp32: ``invert_file`` (batch chosen from the free memory) on a base loaded with ``dtype="float32"``;
- now, auto: the same with ``dtype="auto"`` (bf16 on CPUs with AVX-512 BF16 or AMX, for a bf16-trained adapter).

It prints sentences/s and the ratio to "before", how many texts equal before's, and chrF and the mean cosine of
each path's texts (re-embedded) to the sentences.

    .venv/bin/python bench/inversion.py             # all 1000 sentences: about 8 minutes on a 2-core CPU
    .venv/bin/python bench/inversion.py --limit 200 # about 2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import sacrebleu  # noqa: E402
import torch  # noqa: E402
from older import commit_id, run_at  # noqa: E402

from lora_v2t import load_adapter  # noqa: E402
from lora_v2t.tasks.invert import InvertJob, invert_file  # noqa: E402
from lora_v2t.util.textfile import split_lines  # noqa: E402
from lora_v2t.util.vectors import cosine_rows  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ru" / "dev_conversational.txt"
ADAPTER = REPO / "checkpoints" / "adapters" / "use-gemma270m-ru-v2"
BEFORE = "29aa133^"  # the commit before issue 11's first (lora-v2t invert)

BEFORE_CODE = """
import time
from lora_v2t import load_adapter
texts = open(ARGS["texts"], encoding="utf-8").read().splitlines()
v2t = load_adapter(ARGS["adapter"], device="cpu", quantization="none")
v2t.invert(texts[:2], max_new_tokens=2)  # warm-up
start = time.perf_counter()
out = v2t.invert(texts)
seconds = time.perf_counter() - start
json.dump({"seconds": seconds, "texts": out}, open(ARGS["result"], "w", encoding="utf-8"), ensure_ascii=False)
"""


def invert_now(adapter: str, texts_file: Path, dtype: str, batch: int | None) -> dict:
    """``invert_file`` over the texts on a base loaded in ``dtype``; seconds (load excluded) and texts."""
    v2t = load_adapter(adapter, device="cpu", dtype=dtype)
    v2t.invert(["Привет."], max_new_tokens=2)  # warm-up, as before's
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.jsonl"
        start = time.perf_counter()
        counts = invert_file(v2t, InvertJob(str(texts_file), str(out), batch_size=batch), adapter, show_progress=False)
        seconds = time.perf_counter() - start
        rows = [json.loads(line) for line in split_lines(out.read_text(encoding="utf-8"))]
    return {
        "seconds": seconds,
        "texts": [r["text"] for r in rows],
        "batch": counts["batch_size"],
        "dtype": v2t.backbone_info["compute_dtype"],
        "v2t": v2t,
    }


def quality(v2t, texts: list[str], references: list[str], targets: np.ndarray) -> dict:
    """chrF against the sentences and the mean cosine of the texts' re-embeddings (blank texts: 0)."""
    keep = [i for i, t in enumerate(texts) if t.strip()]
    cosines = np.zeros(len(texts))
    cosines[keep] = cosine_rows(v2t.encode([texts[i] for i in keep]), targets[keep])
    return {
        "chrf": round(sacrebleu.corpus_chrf(texts, [references]).score, 2),
        "cosine": round(float(cosines.mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", default=str(ADAPTER), help="the adapter bundle (default: the shipped v2)")
    parser.add_argument("--limit", type=int, default=1000, help="first N sentences of dev_conversational.txt")
    parser.add_argument("--before", default=BEFORE, help=f"the commit to compare with (default {BEFORE})")
    parser.add_argument("--batch", type=int, help="invert's batch size (default: chosen from the free memory)")
    parser.add_argument("--out", default="bench/results/inversion.json", help="where to write the figures")
    args = parser.parse_args()
    sentences = [s for s in DATA.read_text(encoding="utf-8").splitlines() if s.strip()][: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        texts_file = Path(tmp) / "sentences.txt"
        texts_file.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        before = run_at(args.before, BEFORE_CODE, {"texts": str(texts_file), "adapter": args.adapter})
        fp32 = invert_now(args.adapter, texts_file, "float32", args.batch)
        auto = invert_now(args.adapter, texts_file, "auto", args.batch)
    v2t = fp32["v2t"]
    targets = v2t.encode(sentences)
    rows = {}
    for name, run in (("before", before), ("now fp32", fp32), ("now auto", auto)):
        rate = len(sentences) / run["seconds"]
        rows[name] = {
            "sentences_per_s": round(rate, 3),
            "seconds": round(run["seconds"], 1),
            "ratio_to_before": round(rate * before["seconds"] / len(sentences), 2),
            "same_text_as_before": sum(a == b for a, b in zip(run["texts"], before["texts"], strict=True)),
            "dtype": run.get("dtype", "float32"),
            "batch": run.get("batch", 32),
            **quality(v2t, run["texts"], sentences, targets),
        }
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "adapter": args.adapter,
        "sentences": len(sentences),
        "before_commit": commit_id(args.before),
        "paths": rows,
    }
    print(f"{len(sentences)} sentences of {DATA.name}, adapter {args.adapter}, {torch.get_num_threads()} threads")
    print(f"{'path':10} {'dtype':9} {'batch':>5} {'sent/s':>7} {'ratio':>6} {'same':>5} {'chrF':>6} {'cosine':>7}")
    for name, r in rows.items():
        print(
            f"{name:10} {r['dtype']:9} {r['batch']:>5} {r['sentences_per_s']:>7.2f} {r['ratio_to_before']:>5.2f}x "
            f"{r['same_text_as_before']:>5} {r['chrf']:>6.1f} {r['cosine']:>7.4f}"
        )
    print("target: >= 2x before's sentences/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
