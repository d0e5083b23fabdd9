"""The ``lora-v2t`` command line: train, embed, generate, invert, evaluate, info, push, demo.

Every user error is printed as one line ``error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import textwrap
from pathlib import Path

from . import cli_audit
from .config import DTYPES, SEED_LIMIT, describe_keys
from .tasks.vectorfile import load_vectors_file
from .util.errors import V2TError

logger = logging.getLogger("lora_v2t")


def _add_generation_options(parser: argparse.ArgumentParser, candidates: bool = True) -> None:
    """The decoding options; ``candidates``: also --num-return-sequences and --rerank (a command that writes one
    text per vector does not offer them)."""
    g = parser.add_argument_group("decoding (unset options use the adapter's defaults)")
    g.add_argument("--max-new-tokens", type=int,
                   help="longest output, in tokens (>= 1; with the prefix, within the base model's context)")
    g.add_argument("--num-beams", type=int, help="beam search width (>= 1; 1 = greedy)")
    g.add_argument("--do-sample", action="store_true", default=None, help="sample instead of greedy/beam")
    g.add_argument("--temperature", type=float, help="sampling temperature (> 0; with --do-sample)")
    g.add_argument("--top-k", type=int, help="sample among the k most likely tokens (>= 0; 0 = off)")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass (0 < p <= 1; 1 = off)")
    g.add_argument("--repetition-penalty", type=float,
                   help="penalty on tokens already generated (> 0; 1 = off, above 1 discourages repeats; "
                        "adapters default to 1.1)")
    g.add_argument("--no-repeat-ngram-size", type=int,
                   help="never repeat an n-gram of this many tokens (>= 0; 0 = off)")
    if candidates:
        g.add_argument("--num-return-sequences", type=int,
                       help="candidates per vector, printed or reranked (>= 1; at most --num-beams unless sampling)")
        g.add_argument("--rerank", action="store_true",
                       help="re-embed the candidates and keep the one closest to the target vector (prints cosine)")
    g.add_argument("--batch-size", type=int, help="vectors decoded together (>= 1)")
    g.add_argument("--seed", type=seed_value, help="seed for reproducible sampling (0 to 2**63 - 1)")
    g.add_argument("--full-vocab", dest="restrict_vocab", action="store_false", default=None,
                   help="let every token out, not only the adapter's output vocabulary (when it has one)")
    g.add_argument("--cache", choices=["dynamic", "static"],
                   help="KV cache (default dynamic): static has a fixed size, so that on a GPU transformers compiles "
                        "the decoding step (the first batch takes seconds more, the later ones run faster); the "
                        "same greedy text in fp32; slower on a CPU")


def _add_correction_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("correction (see lora_v2t.model.correct)")
    g.add_argument("--correct-steps", type=int, default=0,
                   help="correct the outputs up to N times (>= 0; default 0): re-embed, rewrite, keep the text "
                        "closest to the vector; stops early when the cosine stops rising. With reranking it starts "
                        "from the best of the greedy text and the beams (generate: --rerank --num-beams K "
                        "--num-return-sequences K; evaluate: --rerank K, 0 to start from the greedy text)")
    g.add_argument("--corrector",
                   help="corrector bundle folder or hub id (default: the one the adapter names), or 'shift' for "
                        "the training-free correction (decode v + a (v - e), a = 0.5, 1, 2)")
    g.add_argument("--correct-width", type=int, default=1,
                   help="candidates kept per vector between steps (>= 1; default 1)")


def _correction(args, config: dict):
    """The correction the command line asks for, checked (with the corrector's bundle) before any model loads."""
    from .bundle.adapter import validate_bundle
    from .model.correct import SHIFT, CorrectionConfig, check_pair, corrector_path

    correction = CorrectionConfig(steps=args.correct_steps, corrector=args.corrector, width=args.correct_width)
    if correction.steps == 0 and (args.corrector is not None or args.correct_width != 1):
        raise V2TError("--corrector and --correct-width choose how to correct: give --correct-steps N (N >= 1) too")
    if correction.steps == 0 or correction.corrector == SHIFT:
        return correction
    meta = {"encoder": config["encoder"], "backbone": config["backbone"], "corrector": config.get("corrector"),
            "source": str(args.adapter)}
    path = corrector_path(meta, str(args.adapter), correction.corrector, None)
    check_pair(validate_bundle(path), meta, path)
    return correction


def _add_loading_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("loading")
    g.add_argument("--adapter", required=True,
                   help="adapter bundle folder, or hub id org/name (downloaded once into the local hub cache; "
                        "a folder of the same name wins)")
    g.add_argument("--revision", help="for a hub id: branch, tag or commit (default: main)")
    g.add_argument("--backbone", help="load on this base instead of the one the bundle names")
    g.add_argument("--encoder", help="use this encoder spec instead of the bundle's (same dimension)")
    g.add_argument("--quantization", default="auto", choices=["auto", "8bit", "4bit", "none"],
                   help="auto = as the adapter was trained (its v2t_config.json says; bundles that do not say: "
                        "8bit on CUDA, none on CPU); another choice is honoured with a warning (default: auto)")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")
    g.add_argument("--dtype", default="auto", choices=list(DTYPES),
                   help="what the base computes in. auto = as the adapter was trained where the device can: on "
                        "CUDA bf16 (fp16 without bf16) unless it trained in fp32 or fp16; on a CPU bf16 for a "
                        "bf16-trained adapter if the CPU has AVX-512 BF16 or AMX (about 1.3x faster decoding), else "
                        "fp32 (default: auto)")


def _load(args):
    """The adapter of a command's loading options, on its base."""
    from .bundle.loading import load_adapter

    return load_adapter(args.adapter, backbone=args.backbone, encoder=args.encoder, quantization=args.quantization,
                        device=args.device, dtype=args.dtype)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-v2t",
        description="Turn sentence-embedding vectors back into text with a frozen LM, a prefix projector "
                    "and LoRA adapters.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate_command(sub)
    _add_train_command(sub)
    _add_embed_command(sub)
    _add_heldout_command(sub)
    _add_demo_command(sub)
    _add_evaluate_command(sub)
    _add_invert_command(sub)
    _add_info_command(sub)
    _add_push_command(sub)
    cli_audit.add_parser(sub)
    return parser


def _add_generate_command(sub) -> None:
    gen = sub.add_parser("generate", help="reconstruct text from sentences or vectors",
                         description="Encode --text with the adapter's encoder (or read --vectors) and decode "
                                     "each vector back into text. Prints 'original ==> generated' for texts.")
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", nargs="+", help="sentence(s) to encode and reconstruct")
    src.add_argument("--vectors", type=Path, help=".npy file of shape (N, d) with the encoder's vectors")
    _add_loading_options(gen)
    _add_generation_options(gen)
    _add_correction_options(gen)
    gen.add_argument("--json", action="store_true", help="print one JSON object per line")
    gen.set_defaults(func=cmd_generate)


def _add_train_command(sub) -> None:
    train = sub.add_parser(
        "train", help="train an adapter from a recipe",
        description=textwrap.fill(
                    "Train the projector and LoRA weights of a frozen backbone as RECIPE.yaml says. Any recipe "
                    "value can be overridden as --section.key=value (e.g. --training.max_steps=500 "
                    "--data.train=my_corpus.txt). Sections: encoder, backbone, projector, lora, generation, data, "
                    "training; see recipes/*.yaml for every key with its meaning. Checkpoints go to "
                    "<output_dir>/<run_name>/step-NNNNNN/, the finished adapter to .../final/. Ctrl-C saves a "
                    "checkpoint first; --resume continues from the last one.", 100) + "\n\n" + textwrap.fill(
                    "Where runs go: training.output_dir, by default <checkpoints>/runs, where <checkpoints> is "
                    "$LORA_V2T_HOME when set, else the checkpoints/ folder of the source checkout lora_v2t runs from "
                    "(whichever the current folder), else ~/.cache/lora_v2t. The embedding cache "
                    "(<checkpoints>/cache) and converted base models (<checkpoints>/base) live there too.", 100),
        epilog="example: lora-v2t train recipes/offline_use_gemma270m.yaml --training.max_minutes=30\n\n"
               "recipe keys (--section.key=value; shown with their defaults):\n" + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("recipe", type=Path, help="recipe YAML (see recipes/)")
    train.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                       help="continue the recipe's run folder (or RUN_DIR) from its last checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    train.set_defaults(func=cmd_train)


def _add_embed_command(sub) -> None:
    embed = sub.add_parser(
        "embed", help="fill the embedding cache of a recipe ahead of training",
        description="Encode the recipe's training and validation sentences once and store the vectors in the "
                    "embedding cache (resumable), so that `train` starts at once. Accepts the same "
                    "--section.key=value overrides as train.")
    embed.add_argument("recipe", type=Path, help="recipe YAML (see recipes/)")
    embed.set_defaults(func=cmd_embed)


def _add_heldout_command(sub) -> None:
    held = sub.add_parser(
        "heldout", help="write sentences a recipe's adapter never trained on (a corrector's training data)",
        description="Write to --out a seeded sample of the sentences of the recipe's data.train that its run "
                    "neither trained nor validated on (same sample, split and filters as `train`). Then "
                    "`lora-v2t invert --adapter <that adapter> --texts OUT --out HYPS.jsonl` writes the "
                    "hypotheses a corrector trains on (see lora_v2t.train.pairs). Accepts the same --section.key=value "
                    "overrides as train.")
    held.add_argument("recipe", type=Path, help="the hypothesizer's recipe YAML, with the overrides it ran with")
    held.add_argument("--count", type=int, help="at most this many sentences (>= 1; default: all of them)")
    held.add_argument("--out", type=Path, required=True, help="text file to write, one sentence per line (new)")
    held.set_defaults(func=cmd_heldout)


def _add_demo_command(sub) -> None:
    demo = sub.add_parser(
        "demo", help="the offline main job: what lora_v2t does, then an adapter trained here",
        description="With no internet: the shipped adapter writes back sentences it never saw (with cosines); "
                    "then a new adapter trains for --minutes on Russian sentences (../shared/data/ru/train.txt "
                    "when present, else a sample shipped with lora_v2t), printing held-out reconstructions as "
                    "they improve; then both adapters share one base and switch in milliseconds. About "
                    "--minutes + 2 minutes on a 2-core CPU (+1.5 the first time, to prepare the models). "
                    "Re-running resumes an interrupted demo, or shows the finished one.")
    demo.add_argument("--minutes", type=float, default=8.0, help="training time, > 0 (default 8)")
    demo.add_argument("--corpus", help="training sentences, one per line (default: ../shared/data/ru/train.txt "
                                       "if present, else the shipped sample)")
    demo.add_argument("--output-dir", help="where the run folder goes (default: checkpoints/runs)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)


def _add_evaluate_command(sub) -> None:
    ev = sub.add_parser(
        "evaluate", help="reconstruct a file's sentences from their embeddings and score them",
        description="Encode every sentence of --data with the adapter's encoder (or read --vectors), decode it "
                    "greedily and with reranking (and with --correct-steps N, corrected after each step), and "
                    "report corpus BLEU and chrF, token F1, exact match and "
                    "re-embedding cosine with bootstrap 95% intervals. Writes sentences.tsv, summary.json (which "
                    "records the adapter and its configuration), summary.md and cosine_hist.png into --out, or into "
                    "a new folder eval/<adapter's parent folder>-<adapter folder>-<data file>[-N]; an existing report "
                    "is replaced only with --overwrite. Cross-lingual: --source-column 0 --target-column 1 encodes "
                    "column 0 of a TSV (e.g. English) and scores against column 1.")
    _add_loading_options(ev)
    ev.add_argument("--data", type=Path, required=True, help="text file (one sentence per line) or TSV")
    ev.add_argument("--source-column", help="TSV column to encode (0-based index >= 0, or a name with --header)")
    ev.add_argument("--target-column",
                    help="TSV column of the references, with --source-column (0-based index >= 0, or a name with "
                         "--header; default 1)")
    ev.add_argument("--header", action="store_true", help="the TSV's first line names its columns")
    ev.add_argument("--vectors", type=Path,
                    help=".npy vectors instead of encoding: one per usable line of --data (blank and over-long "
                         "lines are skipped), in order; with --limit N, the first N are used")
    ev.add_argument("--rerank", type=int, default=8,
                    help="beam candidates for the reranked column (>= 0; default 8; 0 or 1 = greedy only); with "
                         "--correct-steps, correction starts from the reranked candidates")
    ev.add_argument("--limit", type=int, help="evaluate only the first N usable lines (N >= 1; default: all)")
    ev.add_argument("--max-chars", type=int, default=1000,
                    help="skip (and count) longer lines (>= 1; default 1000)")
    ev.add_argument("--batch-size", type=int, default=32, help="vectors decoded together (>= 1; default 32)")
    ev.add_argument("--max-new-tokens", type=int,
                    help="longest output (>= 1, within the base model's context; default: the adapter's)")
    ev.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (>= 1; default 1000)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.add_argument("--full-vocab", dest="restrict_vocab", action="store_false", default=None,
                    help="let every token out, not only the adapter's output vocabulary (when it has one)")
    ev.add_argument("--out", type=Path,
                    help="report folder, new or empty (default: eval/<adapter's parent folder>-<adapter folder>-"
                         "<data file>, numbered -2, -3... when taken)")
    ev.add_argument("--overwrite", action="store_true", help="replace the report already in --out")
    _add_correction_options(ev)
    ev.set_defaults(func=cmd_evaluate)


def seed_value(text: str) -> int:
    """``--seed``: an integer torch can take (argparse names the option when this refuses)."""
    value = int(text)  # a ValueError is argparse's "invalid seed_value value"
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**63 - 1, got {text}")
    return value


def _add_invert_command(sub) -> None:
    inv = sub.add_parser(
        "invert", help="decode a whole file of vectors (or sentences) into JSONL or TSV, resumable",
        description="Decode every row of a .npy file of vectors (memory-mapped: any size) or of a text file of "
                    "sentences (encoded with the adapter's encoder) and append the texts to --out (.jsonl: one "
                    "object per row with index, text and, with --cosine, the re-embedding cosine; .tsv: index, "
                    "text, cosine) batch by batch. Stopped and run again, it continues after the last complete "
                    "row; OUT.meta.json names the adapter, decoding options and source (and fingerprints its "
                    "content), and a run with others, or after the source changed, is refused rather than "
                    "appended. A second run on the same --out while one runs is refused. With --do-sample, --seed "
                    "seeds each batch from the seed and the batch's first row (the same rows again need the same "
                    "--batch-size) and is recorded: a run with another seed is refused.")
    inv_src = inv.add_mutually_exclusive_group(required=True)
    inv_src.add_argument("--vectors", type=Path, help=".npy file of shape (N, d), read memory-mapped")
    inv_src.add_argument("--texts", type=Path, help="UTF-8 text file, one sentence per line (row i = line i+1)")
    inv.add_argument("--out", required=True, help="the .jsonl or .tsv file the rows are appended to")
    inv.add_argument("--cosine", action="store_true",
                     help="also write the cosine between each vector and its text's re-embedding")
    inv.add_argument("--on-nan", choices=["refuse", "skip"], default="refuse",
                     help="vectors with NaN or inf: refuse the job naming the rows, or skip them (counted; "
                          "default: refuse)")
    inv.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_loading_options(inv)
    _add_generation_options(inv, candidates=False)  # one text per row: no candidates, no reranking
    inv.set_defaults(func=cmd_invert, num_return_sequences=None, rerank=False)


def _add_info_command(sub) -> None:
    info = sub.add_parser("info", help="describe an adapter bundle without loading the base model",
                          description="Print what an adapter bundle holds: base, encoder, projector, LoRA, "
                                      "sizes and training summary.")
    info.add_argument("adapter", help="adapter bundle folder, or hub id org/name (a folder of that name wins)")
    info.add_argument("--revision", help="for a hub id: branch, tag or commit (default: main)")
    info.add_argument("--json", action="store_true", help="print the bundle's v2t_config.json as JSON")
    info.set_defaults(func=cmd_info)


def _add_push_command(sub) -> None:
    push = sub.add_parser(
        "push", help="upload an adapter bundle to the Hugging Face hub",
        description="Check that DIR is a complete adapter bundle, then upload its files (only the bundle's: a "
                    "training checkpoint's optimizer state stays) to the hub repository REPO_ID in one commit, "
                    "creating the repository if needed. A model card without the hub metadata (bundles written "
                    "before lora_v2t wrote it) is uploaded with base_model, library_name, tags and metrics filled "
                    "in; DIR is not changed. Log in first with `hf auth login` (or set HF_TOKEN).",
        epilog="then: lora-v2t generate --adapter REPO_ID --text ...   or   load_adapter(\"REPO_ID\")")
    push.add_argument("folder", type=Path, metavar="DIR", help="adapter bundle folder")
    push.add_argument("repo_id", metavar="REPO_ID", help="hub repository id, org/name")
    push.add_argument("--private", action="store_true", default=None,
                      help="create the repository private (an existing one keeps its visibility)")
    push.add_argument("--revision", "--branch", dest="revision",
                      help="branch to commit to, created from main if missing (default: main)")
    push.add_argument("--commit-message", help="the commit's message")
    push.set_defaults(func=cmd_push)


DECODING_OPTIONS = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
                    "no_repeat_ngram_size", "num_return_sequences", "restrict_vocab", "cache")


def _decoding_options(args, *extra: str) -> dict:
    """The decoding options given on the command line (unset ones stay the adapter's), plus ``extra`` ones."""
    names = DECODING_OPTIONS + extra
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


def _check_decoding(args, config: dict, options: dict) -> None:
    """Check the device, the decoding options over the adapter's defaults and the output length against the
    base's context, all before the slow model load."""
    from .config import GenerationConfig
    from .model.backbone import peek_max_positions, pick_device
    from .model.generate import check_length

    pick_device(args.device)
    opts = GenerationConfig.of_bundle(config, **options)
    unused = [f"--{k.replace('_', '-')}" for k in ("temperature", "top_k", "top_p") if k in options]
    if unused and not opts.do_sample:
        logger.warning("%s only shape sampling: without --do-sample decoding is greedy (or beam search) and "
                       "ignores them", ", ".join(unused))
    backbone = str(Path(args.adapter) / "backbone") if config.get("trainable") == "full" else \
        args.backbone or config["backbone"]["name"]
    check_length(opts.max_new_tokens, config["projector"]["prefix_length"], peek_max_positions(backbone), backbone)


def cmd_generate(args) -> int:
    from .bundle.adapter import validate_bundle
    from .bundle.hub import resolve_adapter
    from .model.correct import check_role, reranked_start
    from .model.encoders import check_texts
    from .util.vectors import to_vectors

    args.adapter = resolve_adapter(args.adapter, args.revision)
    config = validate_bundle(args.adapter)
    check_role(config, "hypothesizer", str(args.adapter))
    texts = check_texts(args.text) if args.text else None
    vectors = None
    if args.vectors:  # check the file before the slow base load
        vectors = to_vectors(load_vectors_file(args.vectors), int(config["encoder"]["dim"])).numpy()
    options = _decoding_options(args, "batch_size")
    _check_decoding(args, config, options)
    correction = _correction(args, config)
    if correction.steps:
        reranked_start(dict(options), args.rerank)  # the candidates correction starts from, checked
    v2t = _load(args)
    if texts is not None:
        vectors = v2t.encode(texts)
    if correction.steps:
        options |= {"correct_steps": correction.steps, "corrector": correction.corrector,
                    "correct_width": correction.width}
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
    from .train.trainer import train

    cfg = load_config(args.recipe, args.overrides)
    final = train(cfg, resume=args.resume, show_progress=not args.no_progress)
    if _process_rank() != 0:  # with several processes, the main one reports
        return 0
    print(f"adapter saved to {final}\nload it with:  from lora_v2t import load_adapter; "
          f"v2t = load_adapter({str(final)!r})")
    return 0


def cmd_embed(args) -> int:
    from .config import load_config
    from .train.pairs import prepare_data

    cfg = load_config(args.recipe, args.overrides)
    data = prepare_data(cfg, show_progress=True)
    print(f"cached vectors for {len(data.train_texts)} training and {len(data.val_texts)} validation sentences")
    return 0


def cmd_heldout(args) -> int:
    from .config import load_config
    from .train.pairs import unseen_sentences

    if args.count is not None and args.count < 1:
        raise V2TError(f"--count must be >= 1, got {args.count}")
    if args.out.exists():
        raise V2TError(f"{args.out} exists: choose a new file (it is never overwritten)")
    cfg = load_config(args.recipe, args.overrides)
    if cfg.training.role != "hypothesizer":
        raise V2TError(f"{args.recipe} trains a {cfg.training.role}: give the recipe of the hypothesizer whose unseen "
                       "sentences you want")
    sentences = unseen_sentences(cfg, args.count)
    if not sentences:
        raise V2TError(f"every sentence of {cfg.data.train} is in the recipe's training sample or validation set: "
                       "train the hypothesizer with data.max_sentences below the corpus size")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {len(sentences)} unseen sentences of {cfg.data.train} to {args.out}")
    return 0


def cmd_demo(args) -> int:
    from .demo import DemoConfig, run_demo

    if args.minutes <= 0:
        raise V2TError("--minutes must be positive")
    run_demo(DemoConfig(minutes=args.minutes, corpus=args.corpus, output_dir=args.output_dir,
                        show_progress=not args.no_progress))
    return 0


def cmd_evaluate(args) -> int:
    from .bundle.adapter import validate_bundle
    from .bundle.hub import resolve_adapter
    from .model.correct import check_role
    from .tasks.evaluate import (
        check_evaluation_options,
        check_report_dir,
        default_report_dir,
        evaluate,
        markdown_table,
        read_eval_file,
    )
    from .util.vectors import to_vectors

    source = args.adapter  # as given: a folder or a hub id (not the cache's commit folder)
    args.adapter = resolve_adapter(args.adapter, args.revision)
    config = validate_bundle(args.adapter)
    check_role(config, "hypothesizer", str(args.adapter))
    check_evaluation_options(args.rerank, args.resamples)
    if args.target_column is not None and args.source_column is None:
        raise V2TError("--target-column picks the reference column of a TSV read with --source-column: give "
                       "--source-column too (without it, every line of --data is one sentence)")
    out = check_report_dir(args.out, args.overwrite) if args.out else check_report_dir(
        default_report_dir(source, args.data))
    data = read_eval_file(args.data, source_column=args.source_column,
                          target_column=1 if args.target_column is None else args.target_column,
                          header=args.header, max_chars=args.max_chars, limit=args.limit)
    if data.skipped:
        logger.info("skipped lines: %s", data.skipped)
    if args.vectors:  # checked before the slow base load
        vectors = load_vectors_file(args.vectors)
        if args.limit is not None:  # the first N usable lines: their vectors are the first N
            vectors = vectors[:args.limit]
        data.vectors = to_vectors(vectors, int(config["encoder"]["dim"])).numpy()
        if len(data.vectors) != len(data.references):
            kept = f"the first {args.limit} " if args.limit is not None else ""
            raise V2TError(f"{args.vectors} holds {len(data.vectors)} vectors for {kept}{len(data.references)} "
                           f"usable lines of {args.data}: give one vector per usable line, in order")
    rerank = {"num_beams": args.rerank, "num_return_sequences": args.rerank} if args.rerank > 1 else {}
    _check_decoding(args, config, {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                                   "restrict_vocab": args.restrict_vocab, **rerank})
    correction = _correction(args, config)
    v2t = _load(args)
    summary = evaluate(v2t, data, out, rerank=args.rerank, batch_size=args.batch_size,
                       max_new_tokens=args.max_new_tokens, resamples=args.resamples,
                       restrict_vocab=args.restrict_vocab, show_progress=not args.no_progress,
                       adapter=_adapter_label(source, args.adapter, args.revision),
                       overwrite=args.overwrite, correction=correction)
    print(markdown_table(summary), end="")
    print(f"report: {summary['report']}/summary.md, sentences.tsv, cosine_hist.png")
    return 0


def _adapter_label(source, resolved: Path, revision: str | None) -> str:
    """What a report names: a local folder by its absolute path; a hub id with its revision and the commit that
    was read (the cache's snapshot folder), so that two revisions' reports can be told apart."""
    if Path(source).exists():
        return str(Path(source).resolve())
    return f"{source}@{revision or 'main'} (commit {Path(resolved).name})"


def cmd_invert(args) -> int:
    from .bundle.adapter import validate_bundle
    from .bundle.hub import resolve_adapter
    from .bundle.loading import load_dtype
    from .tasks.invert import InvertJob, output_lock, prepare_job, run_job

    if args.vectors is not None and args.vectors.suffix != ".npy":
        raise V2TError(f"--vectors takes a .npy file, got {args.vectors}: give sentences with --texts")
    if args.texts is not None and args.texts.suffix == ".npy":
        raise V2TError(f"--texts takes a text file of sentences, got {args.texts}: give .npy vectors with --vectors")
    source_arg = args.adapter
    args.adapter = resolve_adapter(args.adapter, args.revision)
    config = validate_bundle(args.adapter)
    options = _decoding_options(args)  # the batch size is the job's own (chosen from free memory if unset)
    job = InvertJob(source=str(args.vectors or args.texts), out=args.out, cosine=args.cosine, on_nan=args.on_nan,
                    batch_size=args.batch_size, options=options, seed=args.seed,
                    dtype=str(load_dtype(config, args.dtype, args.device)).removeprefix("torch."))
    _check_decoding(args, config, options)
    with output_lock(args.out):
        prepared = prepare_job(job, args.adapter, _adapter_label(source_arg, args.adapter, args.revision), config)
        if prepared.start >= len(prepared.source):  # nothing left: no need to load the models
            print(f"{args.out} is complete: it holds all {len(prepared.source)} rows")
            return 0
        v2t = _load(args)
        counts = run_job(v2t, job, prepared, show_progress=not args.no_progress)
    notes = [f"batch {counts['batch_size']}"]
    if counts["resumed_at"]:
        notes.append(f"continued from row {counts['resumed_at']}")
    if counts["skipped"]:
        notes.append(f"{counts['skipped']} rows skipped for NaN or inf")
    print(f"{counts['written']} rows written to {args.out} ({', '.join(notes)})")
    return 0


def cmd_info(args) -> int:
    from .bundle.adapter import validate_bundle
    from .bundle.hub import resolve_adapter

    source = args.adapter
    args.adapter = resolve_adapter(source, args.revision)
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
    shown = source if Path(source).expanduser() == args.adapter else f"{source} (hub, cached in {args.adapter})"
    hub_id = bb.get("hub_id")
    threshold = "" if bb.get("int8_threshold") is None else f", int8 threshold {bb['int8_threshold']}"
    lines = [
        f"adapter      {shown}  (bundle format {config['format_version']}, {size / 2**20:.2f} MiB)",
        f"base         {bb['name']}{f' (from {hub_id} on the hub)' if hub_id and hub_id != bb['name'] else ''}"
        f"  ({bb['model_type']}, hidden {bb['hidden_size']}, vocab {bb['vocab_size']})",
        f"trained on   quantization {bb.get('quantization', 'unrecorded')}, compute dtype "
        f"{bb.get('compute_dtype', 'unrecorded')}{threshold} (loaded that way where the device can, unless "
        "--quantization or --dtype say otherwise)",
        f"encoder      {enc['spec']}  ({enc['dim']}-d)",
        f"role         {_describe_role(config)}",
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


def _describe_role(config: dict) -> str:
    if config.get("role") == "corrector":
        return ("corrector: rewrites a hypothesis closer to its vector (reads v, e and v - e; "
                "see lora_v2t.model.correct)")
    paired = config.get("corrector")
    return "hypothesizer" + (f"; its corrector: {paired} (--correct-steps N uses it)" if paired else
                             " (no corrector named: --correct-steps N needs --corrector DIR or shift)")


def cmd_push(args) -> int:
    from .bundle.push import push_folder

    url = push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision,
                      commit_message=args.commit_message)
    at = f", revision={args.revision!r}" if args.revision else ""
    print(f"pushed {args.folder} to {args.repo_id}: {url}\nload it with:  from lora_v2t import load_adapter; "
          f"v2t = load_adapter({args.repo_id!r}{at})")
    return 0


def _quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    # bitsandbytes warns at import that an optional CPU kernel package is missing; nothing here needs it
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
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
    if args.command in ("train", "embed", "heldout"):
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
    except PermissionError as exc:  # a file or folder the checks above did not name; still the user's to fix
        print(f"error: permission denied on {exc.filename or exc}: fix its permissions or choose another path",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
