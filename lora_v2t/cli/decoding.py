"""The commands that decode vectors into text: generate, evaluate, invert."""

from __future__ import annotations

import logging
from pathlib import Path

from ..tasks.vectorfile import load_vectors_file
from ..util.errors import V2TError
from ..util.terminal import shown, shown_json
from .options import (
    _adapter_label,
    _add_budget_options,
    _add_correction_options,
    _add_decoding_options,
    _add_generation_options,
    _add_loading_options,
    _budget,
    _check_decoding,
    _correction,
    _decoding_options,
    _load,
    _own_candidates,
    _rerank_options,
)

logger = logging.getLogger("lora_v2t")


def _add_generate_command(sub) -> None:
    gen = sub.add_parser(
        "generate",
        help="reconstruct text from sentences or vectors",
        description="Encode --text with the adapter's encoder (or read --vectors) and decode "
        "each vector back into text. Prints 'original ==> generated' for texts.",
    )
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", nargs="+", help="sentence(s) to encode and reconstruct")
    src.add_argument("--vectors", type=Path, help=".npy file of shape (N, d) with the encoder's vectors")
    _add_loading_options(gen)
    _add_generation_options(gen)
    _add_correction_options(gen)
    _add_budget_options(gen)
    gen.add_argument("--json", action="store_true", help="print one JSON object per line")
    gen.set_defaults(func=cmd_generate)


def _add_evaluate_command(sub) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="reconstruct a file's sentences from their embeddings and score them",
        description="Encode every sentence of --data with the adapter's encoder (or read --vectors), decode it "
        "greedily and at the default budget of 8 decodes per vector (or as --budget, --rerank N or "
        "--correct-steps N say, corrected after each step), and "
        "report corpus BLEU and chrF, token F1, exact match and "
        "re-embedding cosine with bootstrap 95% intervals. Writes sentences.tsv, summary.json (which "
        "records the adapter and its configuration), summary.md and cosine_hist.png into --out, or into "
        "a new folder eval/<adapter's parent folder>-<adapter folder>-<data file>[-N]; an existing report "
        "is replaced only with --overwrite. Cross-lingual: --source-column 0 --target-column 1 encodes "
        "column 0 of a TSV (e.g. English) and scores against column 1.",
    )
    _add_loading_options(ev)
    ev.add_argument("--data", type=Path, required=True, help="text file (one sentence per line) or TSV")
    ev.add_argument("--source-column", help="TSV column to encode (0-based index >= 0, or a name with --header)")
    ev.add_argument(
        "--target-column",
        help="TSV column of the references, with --source-column (0-based index >= 0, or a name with "
        "--header; default 1)",
    )
    ev.add_argument("--header", action="store_true", help="the TSV's first line names its columns")
    ev.add_argument(
        "--vectors",
        type=Path,
        help=".npy vectors instead of encoding: one per usable line of --data (blank and over-long "
        "lines are skipped), in order; with --limit N, the first N are used",
    )
    ev.add_argument(
        "--rerank",
        type=int,
        help="a reranked column instead of the default budget's: greedy plus N beam candidates, the closest "
        "kept (>= 0; 0 or 1 = greedy only); with --correct-steps, correction starts from the reranked "
        "candidates (default there 8)",
    )
    ev.add_argument("--limit", type=int, help="evaluate only the first N usable lines (N >= 1; default: all)")
    ev.add_argument("--max-chars", type=int, default=1000, help="skip (and count) longer lines (>= 1; default 1000)")
    _add_decoding_options(ev, ["max_new_tokens", "batch_size", "restrict_vocab"], defaults={"batch_size": 32})
    ev.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (>= 1; default 1000)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.add_argument(
        "--out",
        type=Path,
        help="report folder, new or empty (default: eval/<adapter's parent folder>-<adapter folder>-"
        "<data file>, numbered -2, -3... when taken)",
    )
    ev.add_argument("--overwrite", action="store_true", help="replace the report already in --out")
    _add_correction_options(ev)
    _add_budget_options(ev)
    ev.set_defaults(func=cmd_evaluate)


def _add_invert_command(sub) -> None:
    inv = sub.add_parser(
        "invert",
        help="decode a whole file of vectors (or sentences) into JSONL or TSV, resumable",
        description="Decode every row of a .npy file of vectors (memory-mapped: any size) or of a text file of "
        "sentences (encoded with the adapter's encoder) and append the texts to --out (.jsonl: one "
        "object per row with index, text and, with --cosine, the re-embedding cosine; .tsv: index, "
        "text, cosine) batch by batch. Stopped and run again, it continues after the last complete "
        "row; OUT.meta.json names the adapter, decoding options and source (and fingerprints its "
        "content), and a run with others, or after the source changed, is refused rather than "
        "appended. A second run on the same --out while one runs is refused. With --do-sample, --seed "
        "seeds each batch from the seed and the batch's first row (the same rows again need the same "
        "--batch-size) and is recorded: a run with another seed is refused.",
    )
    inv_src = inv.add_mutually_exclusive_group(required=True)
    inv_src.add_argument("--vectors", type=Path, help=".npy file of shape (N, d), read memory-mapped")
    inv_src.add_argument("--texts", type=Path, help="UTF-8 text file, one sentence per line (row i = line i+1)")
    inv.add_argument("--out", required=True, help="the .jsonl or .tsv file the rows are appended to")
    inv.add_argument(
        "--cosine", action="store_true", help="also write the cosine between each vector and its text's re-embedding"
    )
    inv.add_argument(
        "--on-nan",
        choices=["refuse", "skip"],
        default="refuse",
        help="vectors with NaN or inf: refuse the job naming the rows, or skip them (counted; default: refuse)",
    )
    inv.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_loading_options(inv)
    _add_generation_options(inv, candidates=False)  # one text per row: no candidates, no reranking
    _add_budget_options(inv, corrector=True, resumable=True)
    inv.set_defaults(func=cmd_invert, num_return_sequences=None, rerank=False)


def cmd_generate(args) -> int:
    from ..bundle.adapter import validate_bundle
    from ..bundle.hub import resolve_adapter
    from ..model.correct import check_role, reranked_start
    from ..model.encoders import check_texts
    from ..util.vectors import to_vectors

    args.adapter = resolve_adapter(args.adapter, args.revision)
    config = validate_bundle(args.adapter)
    check_role(config, "hypothesizer", str(args.adapter))
    texts = check_texts(args.text) if args.text else None
    vectors = None
    if args.vectors:  # check the file before the slow base load
        vectors = to_vectors(load_vectors_file(args.vectors), config.encoder.dim).numpy()
    options = _decoding_options(args, "batch_size")
    rerank = _rerank_options(args, config, options)
    _check_decoding(args, config, options)
    plan = _budget(args, config)
    correction = plan or _correction(args, config)
    if correction.steps and plan is None:
        reranked_start(dict(options), rerank)  # the candidates correction starts from, checked
    v2t = _load(args)
    if texts is not None:
        vectors = v2t.encode(texts)
    assert vectors is not None  # argparse asks for --text or --vectors
    if plan is not None:
        options |= {
            "budget": plan.budget,
            "sources": args.sources,
            "corrector": args.corrector,
            "sample_proposals": args.sample_proposals,
        }
    elif correction.steps:
        options |= {
            "correct_steps": correction.steps,
            "corrector": correction.corrector,
            "correct_width": correction.width,
        }
    outputs = v2t.generate(vectors, rerank=rerank, seed=args.seed, show_progress=len(vectors) > 64, **options)
    for i, out in enumerate(outputs):
        original = texts[i] if texts else None
        record: dict[str, object] = {"index": i, "original": original}
        if rerank:
            record |= {"generated": out.text, "cosine": round(out.cosine, 4)}
            text = f"{shown(out.text)}    [cos {out.cosine:.3f}]"
        elif isinstance(out, list):
            record["candidates"] = out
            text = " | ".join(shown(c) for c in out)
        else:
            record["generated"] = out
            text = shown(out)
        if args.json:  # the same values, with no raw control character (see util/terminal.py)
            print(shown_json(record))
        else:
            print(f"{shown(original)} ==> {text}" if original is not None else f"[{i}] {text}")
    return 0


def cmd_evaluate(args) -> int:
    from ..bundle.adapter import validate_bundle
    from ..bundle.hub import resolve_adapter
    from ..model.correct import check_role
    from ..tasks.evaluate import (
        check_evaluation_options,
        check_report_dir,
        default_report_dir,
        evaluate,
        markdown_table,
    )

    source = args.adapter  # as given: a folder or a hub id (not the cache's commit folder)
    args.adapter = resolve_adapter(args.adapter, args.revision)
    config = validate_bundle(args.adapter)
    check_role(config, "hypothesizer", str(args.adapter))
    plan = _budget(args, config)
    rerank = 0 if plan is not None else 8 if args.rerank is None else args.rerank
    check_evaluation_options(rerank, args.resamples)
    if args.target_column is not None and args.source_column is None:
        raise V2TError(
            "--target-column picks the reference column of a TSV read with --source-column: give "
            "--source-column too (without it, every line of --data is one sentence)"
        )
    out = (
        check_report_dir(args.out, args.overwrite)
        if args.out
        else check_report_dir(default_report_dir(source, args.data))
    )
    data = _eval_data(args, config)  # the vectors are checked before the slow base load
    beams = {"num_beams": rerank, "num_return_sequences": rerank} if rerank > 1 else {}
    _check_decoding(
        args,
        config,
        {
            "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens,
            "restrict_vocab": args.restrict_vocab,
            **beams,
        },
    )
    correction = plan or _correction(args, config)
    v2t = _load(args)
    summary = evaluate(
        v2t,
        data,
        out,
        rerank=None if plan else rerank,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        resamples=args.resamples,
        restrict_vocab=args.restrict_vocab,
        show_progress=not args.no_progress,
        adapter=_adapter_label(source, args.adapter, args.revision),
        overwrite=args.overwrite,
        correction=correction,
    )
    print(shown(markdown_table(summary), lines=True), end="")
    print(f"report: {shown(summary['report'])}/summary.md, sentences.tsv, cosine_hist.png")
    return 0


def _eval_data(args, config):
    """``--data``'s references (and sources), with ``--vectors``' rows when given, one per usable line."""
    from ..tasks.evalfile import read_eval_file
    from ..util.vectors import to_vectors

    data = read_eval_file(
        args.data,
        source_column=args.source_column,
        target_column=1 if args.target_column is None else args.target_column,
        header=args.header,
        max_chars=args.max_chars,
        limit=args.limit,
    )
    if data.skipped:
        logger.info("skipped lines: %s", data.skipped)
    if args.vectors:
        vectors = load_vectors_file(args.vectors)
        if args.limit is not None:  # the first N usable lines: their vectors are the first N
            vectors = vectors[: args.limit]
        data.vectors = to_vectors(vectors, config.encoder.dim).numpy()
        if len(data.vectors) != len(data.references):
            kept = f"the first {args.limit} " if args.limit is not None else ""
            raise V2TError(
                f"{args.vectors} holds {len(data.vectors)} vectors for {kept}{len(data.references)} "
                f"usable lines of {args.data}: give one vector per usable line, in order"
            )
    return data


def cmd_invert(args) -> int:
    from ..bundle.adapter import validate_bundle
    from ..bundle.hub import resolve_adapter
    from ..bundle.loading import load_dtype
    from ..tasks.invert import InvertJob, output_lock, prepare_job, recorded_budget, run_job

    if args.vectors is not None and args.vectors.suffix != ".npy":
        raise V2TError(f"--vectors takes a .npy file, got {args.vectors}: give sentences with --texts")
    if args.texts is not None and args.texts.suffix == ".npy":
        raise V2TError(f"--texts takes a text file of sentences, got {args.texts}: give .npy vectors with --vectors")
    source_arg = args.adapter
    args.adapter = resolve_adapter(args.adapter, args.revision)
    config = validate_bundle(args.adapter)
    options = _decoding_options(args)  # the batch size is the job's own (chosen from free memory if unset)
    if args.budget is None and not _own_candidates(args):  # an output begun before continues as begun
        args.budget = recorded_budget(args.out)
    plan = _budget(args, config)  # checks the corrector a budget uses, with the explicit knobs beside it
    job = InvertJob(
        source=str(args.vectors or args.texts),
        out=args.out,
        cosine=args.cosine,
        on_nan=args.on_nan,
        batch_size=args.batch_size,
        options=options,
        seed=args.seed,
        dtype=str(load_dtype(config, args.dtype, args.device)).removeprefix("torch."),
        budget=None if plan is None else plan.budget,
        sources=args.sources,
        corrector=args.corrector,
        sample_proposals=args.sample_proposals,
    )
    _check_decoding(args, config, options)
    with output_lock(args.out):
        prepared = prepare_job(job, args.adapter, _adapter_label(source_arg, args.adapter, args.revision), config)
        if prepared.start >= len(prepared.source):  # nothing left: no need to load the models
            print(f"{shown(args.out)} is complete: it holds all {len(prepared.source)} rows")
            return 0
        v2t = _load(args)
        counts = run_job(v2t, job, prepared, show_progress=not args.no_progress)
    notes = [f"batch {counts['batch_size']}"]
    if counts["resumed_at"]:
        notes.append(f"continued from row {counts['resumed_at']}")
    if counts["skipped"]:
        notes.append(f"{counts['skipped']} rows skipped for NaN or inf")
    print(f"{counts['written']} rows written to {shown(args.out)} ({', '.join(notes)})")
    return 0
