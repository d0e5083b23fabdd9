"""Copy a trained run's adapter into checkpoints/adapters/ with its dev metrics and card samples.

    .venv/bin/python scripts/ship_adapter.py \\
        --adapter checkpoints/runs/use-gemma270m-ru/final --recipe recipes/offline_use_gemma270m.yaml \\
        --eval eval/use-gemma270m-ru-dev_conversational eval/... --out checkpoints/adapters/use-gemma270m-ru

The bundle's training summary gets every greedy, reranked and corrected BLEU / chrF / cosine of the given
evaluation reports, and three dev_conversational sentences with their greedy reconstructions (the card shows them and a
slow test checks the adapter still writes exactly those). An adapter trained with `loss_vocab: corpus` by an
older lora_v2t that did not save its output vocabulary gets it here, rebuilt from the recipe's corpus.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lora_v2t.bundle.saving import PROJECTOR_DTYPES, stored_projector_state  # noqa: E402 (after the hub setting)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = [
    "Я знаю много людей, у которых нет прав.",
    "Мой начальник отпустил меня сегодня пораньше.",
    "Вы сегодня проверяли почту?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", type=Path, required=True, help="the trained bundle (a run's final/)")
    parser.add_argument("--recipe", type=Path, required=True, help="the recipe it was trained with")
    parser.add_argument("--eval", type=Path, nargs="*", default=[], help="report folders of `lora-v2t evaluate`")
    parser.add_argument("--out", type=Path, required=True, help="where the shipped bundle goes")
    parser.add_argument(
        "--corrector",
        help="a hypothesizer's corrector, as its bundle names it (a folder relative "
        "to --out, e.g. ../use-gemma270m-ru-v2-corrector, or a hub id)",
    )
    parser.add_argument(
        "--projector-dtype",
        choices=PROJECTOR_DTYPES,
        default="float32",
        help="how the projector's weight matrices are stored: bfloat16 halves them (a split corrector's are most of "
        "its bundle) and rounds them, before the card's samples are decoded; give --eval reports of the rounded "
        "weights (default float32)",
    )
    args = parser.parse_args()

    from lora_v2t import load_adapter
    from lora_v2t.config import load_config
    from lora_v2t.train.data import tokenize_corpus
    from lora_v2t.train.pairs import prepare_data

    cfg = load_config(args.recipe)
    v2t = load_adapter(args.adapter, quantization="none", device="cpu", dtype="float32")  # card samples in fp32
    v2t.projector.load_state_dict(stored_projector_state(v2t.projector, args.projector_dtype))  # rounded as shipped
    if v2t.output_vocab is None and cfg.training.loss_vocab == "corpus":
        train_texts = prepare_data(cfg, v2t.encoder, show_progress=False).train_texts
        v2t.set_output_vocab(tokenize_corpus(v2t.tokenizer, train_texts, cfg.data.max_tokens).vocab)
        print(f"output vocabulary rebuilt from the corpus: {v2t.output_vocab.numel()} tokens")
    metrics = {"val_loss": v2t.meta.training.get("metrics", {}).get("val_loss")}
    for report in args.eval:
        summary = json.loads((report / "summary.json").read_text(encoding="utf-8"))
        decoded = summary.get("output_vocab", "full")
        expected = "full" if v2t.output_vocab is None else v2t.output_vocab.numel()
        if decoded != expected:
            raise SystemExit(
                f"{report} was decoded over {decoded} tokens but the shipped adapter decodes over "
                f"{expected}: evaluate it again"
            )
        data = Path(summary.get("data") or report.name).stem
        for system, scores in summary["scores"].items():
            name = system.split()[0]  # greedy, reranked, corrected-N, reranked+corrected-N or budget-N
            for metric in ("bleu", "chrf", "cosine"):
                if metric in scores:
                    metrics[f"{data} {name} {metric} (n={summary['sentences']})"] = round(scores[metric]["value"], 4)
    v2t.meta.training["metrics"] = metrics
    # what it trained on (runs of lora_v2t before it recorded this): lets a corrector's data be checked unseen
    sample = v2t.meta.training.setdefault(
        "sample",
        {
            k: getattr(cfg.data, k)
            for k in ("train", "val", "val_size", "max_sentences", "min_chars", "max_chars", "seed")
        },
    )
    portable_paths(v2t.meta.training, sample, cfg.data)
    if cfg.data.order_seed is not None:  # its batch order (runs of lora_v2t before it recorded this)
        v2t.meta.training.setdefault("order_seed", cfg.data.order_seed)
    if args.corrector:
        v2t.meta.corrector = args.corrector
    training = {}
    if v2t.role == "hypothesizer":
        training["samples"] = [{"text": t, "generated": g} for t, g in zip(SAMPLES, v2t.invert(SAMPLES), strict=True)]
    v2t.save_adapter(args.out, training=training, projector_dtype=args.projector_dtype)
    print(json.dumps(v2t.meta.training, indent=1, ensure_ascii=False))
    print(f"shipped: {args.out}")


def portable_paths(training: dict, sample: dict, data) -> None:
    """Where the run named its data by another path to the very file the recipe names (an absolute path, say),
    record the recipe's spelling: the bundle travels, and a corrector's data is checked against it."""
    for key in ("train", "val"):
        recorded, recipe_path = sample.get(key), getattr(data, key)
        if (
            recorded
            and recipe_path
            and recorded != recipe_path
            and Path(recorded).is_file()
            and Path(recipe_path).is_file()
            and os.path.samefile(recorded, recipe_path)
        ):
            sample[key] = recipe_path
            if key == "train" and training.get("data") == recorded:
                training["data"] = recipe_path


if __name__ == "__main__":
    main()
