"""The ``lora-v2t`` command line: train, embed, generate, evaluate, info, demo.

Every user error is printed as one line ``error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from .config import describe_keys
from .errors import V2TError

logger = logging.getLogger("lora_v2t")


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("decoding (unset options use the adapter's defaults)")
    g.add_argument("--max-new-tokens", type=int, help="longest output, in tokens")
    g.add_argument("--num-beams", type=int, help="beam search width (1 = greedy)")
    g.add_argument("--do-sample", action="store_true", default=None, help="sample instead of greedy/beam")
    g.add_argument("--temperature", type=float, help="sampling temperature")
    g.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass")
    g.add_argument("--num-return-sequences", type=int, help="candidates per vector (printed, or reranked)")
    g.add_argument("--rerank", action="store_true",
                   help="re-embed the candidates and keep the one closest to the target vector (prints cosine)")
    g.add_argument("--batch-size", type=int, help="vectors decoded together")
    g.add_argument("--seed", type=int, help="seed for reproducible sampling")
    g.add_argument("--full-vocab", dest="restrict_vocab", action="store_false", default=None,
                   help="let every token out, not only the adapter's output vocabulary (when it has one)")


def _add_loading_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("loading")
    g.add_argument("--adapter", type=Path, required=True, help="adapter bundle folder")
    g.add_argument("--backbone", help="load on this base instead of the one the bundle names")
    g.add_argument("--encoder", help="use this encoder spec instead of the bundle's (same dimension)")
    g.add_argument("--quantization", default="auto", choices=["auto", "8bit", "4bit", "none"],
                   help="auto = as the adapter was trained (its v2t_config.json says; bundles that do not say: "
                        "8bit on CUDA, none on CPU); another choice is honoured with a warning (default: auto)")
    g.add_argument("--device", help="cuda, cpu, cuda:1 ... (default: CUDA when available)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-v2t",
        description="Turn sentence-embedding vectors back into text with a frozen LM, a prefix projector "
                    "and LoRA adapters.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="reconstruct text from sentences or vectors",
                         description="Encode --text with the adapter's encoder (or read --vectors) and decode "
                                     "each vector back into text. Prints 'original ==> generated' for texts.")
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", nargs="+", help="sentence(s) to encode and reconstruct")
    src.add_argument("--vectors", type=Path, help=".npy file of shape (N, d) with the encoder's vectors")
    _add_loading_options(gen)
    _add_generation_options(gen)
    gen.add_argument("--json", action="store_true", help="print one JSON object per line")
    gen.set_defaults(func=cmd_generate)

    train = sub.add_parser(
        "train", help="train an adapter from a recipe",
        description="Train the projector and LoRA weights of a frozen backbone as RECIPE.yaml says. Any recipe "
                    "value can be overridden as --section.key=value (e.g. --training.max_steps=500 "
                    "--data.train=my_corpus.txt). Sections: encoder, backbone, projector, lora, generation, data, "
                    "training; see recipes/*.yaml for every key with its meaning. Checkpoints go to "
                    "<output_dir>/<run_name>/step-NNNNNN/, the finished adapter to .../final/. Ctrl-C saves a "
                    "checkpoint first; --resume continues from the last one.",
        epilog="example: lora-v2t train recipes/offline_use_gemma270m.yaml --training.max_minutes=30\n\n"
               "recipe keys (--section.key=value; shown with their defaults):\n" + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("recipe", type=Path, help="recipe YAML (see recipes/)")
    train.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                       help="continue the recipe's run folder (or RUN_DIR) from its last checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    train.set_defaults(func=cmd_train)

    embed = sub.add_parser(
        "embed", help="fill the embedding cache of a recipe ahead of training",
        description="Encode the recipe's training and validation sentences once and store the vectors in the "
                    "embedding cache (resumable), so that `train` starts at once. Accepts the same "
                    "--section.key=value overrides as train.")
    embed.add_argument("recipe", type=Path, help="recipe YAML (see recipes/)")
    embed.set_defaults(func=cmd_embed)

    demo = sub.add_parser(
        "demo", help="the offline main job: train a small adapter here, show it learning, save it",
        description="Prepare the offline default models (Gemma-3-270M + multilingual USE, no internet needed), "
                    "train an adapter for --minutes on a sample of Russian sentences shipped with lora_v2t, "
                    "print reconstructions as it learns, save it and show how to load it. Re-running resumes "
                    "an interrupted demo, or shows the finished one.")
    demo.add_argument("--minutes", type=float, default=9.0, help="training time budget (default 9)")
    demo.add_argument("--output-dir", help="where the run folder goes (default: checkpoints/runs)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser(
        "evaluate", help="reconstruct a file's sentences from their embeddings and score them",
        description="Encode every sentence of --data with the adapter's encoder (or read --vectors), decode it "
                    "greedily and with reranking, and report corpus BLEU and chrF, token F1, exact match and "
                    "re-embedding cosine with bootstrap 95%% intervals. Writes sentences.tsv, summary.json, "
                    "summary.md and cosine_hist.png into --out. Cross-lingual: --source-column 0 "
                    "--target-column 1 encodes column 0 of a TSV (e.g. English) and scores against column 1.")
    _add_loading_options(ev)
    ev.add_argument("--data", type=Path, required=True, help="text file (one sentence per line) or TSV")
    ev.add_argument("--source-column", help="TSV column to encode (0-based index, or a name with --header)")
    ev.add_argument("--target-column", default="1", help="TSV column of the references (default 1)")
    ev.add_argument("--header", action="store_true", help="the TSV's first line names its columns")
    ev.add_argument("--vectors", type=Path, help=".npy vectors, one per reference line, instead of encoding")
    ev.add_argument("--rerank", type=int, default=8,
                    help="beam candidates for the reranked column (default 8; 0 = greedy only)")
    ev.add_argument("--limit", type=int, help="evaluate only the first N usable lines")
    ev.add_argument("--max-chars", type=int, default=1000, help="skip (and count) longer lines (default 1000)")
    ev.add_argument("--batch-size", type=int, default=32, help="vectors decoded together")
    ev.add_argument("--max-new-tokens", type=int, help="longest output (default: the adapter's)")
    ev.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.add_argument("--full-vocab", dest="restrict_vocab", action="store_false", default=None,
                    help="let every token out, not only the adapter's output vocabulary (when it has one)")
    ev.add_argument("--out", type=Path, help="report folder (default: eval/<adapter name>-<data file name>)")
    ev.set_defaults(func=cmd_evaluate)

    info = sub.add_parser("info", help="describe an adapter bundle without loading the base model",
                          description="Print what an adapter bundle holds: base, encoder, projector, LoRA, "
                                      "sizes and training summary.")
    info.add_argument("adapter", type=Path, help="adapter bundle folder")
    info.add_argument("--json", action="store_true", help="print the bundle's v2t_config.json as JSON")
    info.set_defaults(func=cmd_info)
    return parser


def load_vectors_file(path: Path):
    """Read an (N, d) float array from a .npy file, never unpickling."""
    import numpy as np

    if not path.is_file():
        raise V2TError(f"vectors file {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise V2TError(f"{path} is not a plain numeric .npy array ({str(exc).splitlines()[0]}); "
                       "save it with numpy.save(path, array)") from exc
    except OSError as exc:
        raise V2TError(f"cannot read {path} as .npy: {exc}") from exc


def cmd_generate(args) -> int:
    from .adapter import load_adapter, validate_bundle
    from .encoders import check_texts
    from .model import to_vectors

    config = validate_bundle(args.adapter)
    texts = check_texts(args.text) if args.text else None
    vectors = None
    if args.vectors:  # check the file before the slow base load
        vectors = to_vectors(load_vectors_file(args.vectors), int(config["encoder"]["dim"])).numpy()
    v2t = load_adapter(args.adapter, backbone=args.backbone, encoder=args.encoder,
                       quantization=args.quantization, device=args.device)
    if texts is not None:
        vectors = v2t.encode(texts)
    options = {k: getattr(args, k) for k in ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_k",
                                             "top_p", "num_return_sequences", "batch_size", "restrict_vocab")}
    options = {k: v for k, v in options.items() if v is not None}
    outputs = v2t.generate(vectors, rerank=args.rerank, seed=args.seed, show_progress=len(vectors) > 64,
                           **options)
    for i, out in enumerate(outputs):
        original = texts[i] if texts else None
        record = {"index": i, "original": original}
        if args.rerank:
            record |= {"generated": out.text, "cosine": round(out.cosine, 4)}
            shown = f"{out.text}    [cos {out.cosine:.3f}]"
        elif isinstance(out, list):
            record["candidates"] = out
            shown = " | ".join(out)
        else:
            record["generated"] = out
            shown = out
        if args.json:
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(f"{original} ==> {shown}" if original is not None else f"[{i}] {shown}")
    return 0


def cmd_train(args) -> int:
    from .config import load_config
    from .train import train

    cfg = load_config(args.recipe, args.overrides)
    final = train(cfg, resume=args.resume, show_progress=not args.no_progress)
    if _process_rank() != 0:  # with several processes, the main one reports
        return 0
    print(f"adapter saved to {final}\nload it with:  from lora_v2t import load_adapter; "
          f"v2t = load_adapter({str(final)!r})")
    return 0


def cmd_embed(args) -> int:
    from .config import load_config
    from .train import prepare_data

    cfg = load_config(args.recipe, args.overrides)
    train_texts, val_texts, _, _ = prepare_data(cfg, show_progress=True)
    print(f"cached vectors for {len(train_texts)} training and {len(val_texts)} validation sentences")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    if args.minutes <= 0:
        raise V2TError("--minutes must be positive")
    run_demo(minutes=args.minutes, output_dir=args.output_dir, show_progress=not args.no_progress)
    return 0


def cmd_evaluate(args) -> int:
    from .adapter import load_adapter, validate_bundle
    from .evaluate import evaluate, markdown_table, read_eval_file
    from .model import to_vectors

    config = validate_bundle(args.adapter)
    data = read_eval_file(args.data, source_column=args.source_column, target_column=args.target_column,
                          header=args.header, max_chars=args.max_chars, limit=args.limit)
    if data.skipped:
        logger.info("skipped lines: %s", data.skipped)
    if args.vectors:  # checked before the slow base load
        vectors = load_vectors_file(args.vectors)
        data.vectors = to_vectors(vectors, int(config["encoder"]["dim"])).numpy()
        if len(data.vectors) != len(data.references):
            raise V2TError(f"{args.vectors} holds {len(data.vectors)} vectors but {args.data} has "
                           f"{len(data.references)} usable lines: give one vector per line")
    v2t = load_adapter(args.adapter, backbone=args.backbone, encoder=args.encoder,
                       quantization=args.quantization, device=args.device)
    out = args.out or Path("eval") / f"{args.adapter.name}-{args.data.stem}"
    summary = evaluate(v2t, data, out, rerank=args.rerank, batch_size=args.batch_size,
                       max_new_tokens=args.max_new_tokens, resamples=args.resamples,
                       restrict_vocab=args.restrict_vocab, show_progress=not args.no_progress)
    print(markdown_table(summary), end="")
    print(f"report: {out}/summary.md, sentences.tsv, cosine_hist.png")
    return 0


def cmd_info(args) -> int:
    from .adapter import validate_bundle

    config = validate_bundle(args.adapter)
    if args.json:
        print(json.dumps(config, indent=2, ensure_ascii=False))
        return 0
    from safetensors import safe_open

    def count(file: str) -> int:
        with safe_open(str(args.adapter / file), framework="pt") as handle:
            return sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())

    enc, bb, proj, lora = (config[k] for k in ("encoder", "backbone", "projector", "lora"))
    size = sum(p.stat().st_size for p in args.adapter.rglob("*") if p.is_file())
    lines = [
        f"adapter      {args.adapter}  (bundle format {config['format_version']}, {size / 2**20:.2f} MiB)",
        f"base         {bb['name']}  ({bb['model_type']}, hidden {bb['hidden_size']}, vocab {bb['vocab_size']})",
        f"trained on   quantization {bb.get('quantization', 'unrecorded')}, compute dtype "
        f"{bb.get('compute_dtype', 'unrecorded')} (loaded that way unless --quantization says otherwise)",
        f"encoder      {enc['spec']}  ({enc['dim']}-d)",
        f"projector    {proj['kind']}, {proj['prefix_length']} slot(s), {count('projector.safetensors'):,} params",
    ]
    if lora:
        lines.append(f"LoRA         r={lora['r']} alpha={lora['alpha']} on {', '.join(lora['target_modules'])}, "
                     f"{count('adapter_model.safetensors'):,} params")
    else:
        lines.append("LoRA         none: a fully fine-tuned backbone is saved in backbone/ (a baseline)")
    training = config.get("training") or {}
    if not training:
        lines.append("training     none (a fresh, untrained adapter)")
    for key, value in training.items():
        if key != "samples":
            lines.append(f"training     {key}: {value}")
    print("\n".join(lines))
    return 0


def _quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _process_rank() -> int:
    """This process's rank under ``accelerate launch`` / ``torchrun`` (0 when run alone)."""
    import os

    return int(os.environ.get("RANK", "0") or 0)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command in ("train", "embed"):
        args.overrides = unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    level = logging.DEBUG if args.verbose else logging.INFO if _process_rank() == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s")  # with several processes the main one logs
    _quiet_libraries()
    try:
        return args.func(args)
    except V2TError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
