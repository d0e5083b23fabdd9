"""``lora-v2t audit``: what a store of sentence vectors gives away (see :mod:`lora_v2t.tasks.audit`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bundle.format import BundleConfig
from ..config import DTYPES
from ..util.errors import V2TError
from ..util.terminal import shown

DESCRIPTION = (
    "Invert the vectors of SOURCE (all rows, or a seeded --sample) and report what they give away: DIR/report.html "
    "(one self-contained page: the answer in a paragraph, the cosine histogram, a table per category, the rows "
    "that leak most), DIR/summary.json and DIR/rows.jsonl. With originals (--originals, or the documents a Chroma "
    "collection or a --text-column stores) it measures exact-sentence recovery, chrF, content-word recall and the "
    "person names, places, organisations (natasha), numbers, dates, e-mail addresses and phone numbers given "
    "back, with 95% bootstrap intervals; without, what the reconstructions hold and their cosines. SOURCE is "
    "FILE.npy, FILE.faiss, chroma:DIR:COLLECTION or postgresql://... (with --table and --vector-column, or "
    "--query). Stopped and run again with the same command, it continues where it stopped; DIR holding another "
    "audit is refused."
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``audit`` command on the CLI's subparsers."""
    audit = subparsers.add_parser(
        "audit", help="what a store of vectors gives away: invert it and report leaks", description=DESCRIPTION
    )
    audit.add_argument(
        "source", metavar="SOURCE", help="FILE.npy, FILE.faiss, chroma:DIR:COLLECTION or postgresql://..."
    )
    audit.add_argument(
        "--adapter", required=True, help="adapter bundle folder, or hub id org/name (a folder of the same name wins)"
    )
    audit.add_argument("--revision", help="for a hub id: branch, tag or commit (default: main)")
    audit.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="the audit's folder: new or empty, or this audit's (to continue it)",
    )
    audit.add_argument(
        "--originals",
        type=Path,
        metavar="FILE",
        help="UTF-8 text file, one original per row of SOURCE in its order (default: the documents "
        "the store keeps, if any)",
    )
    audit.add_argument("--sample", type=int, metavar="N", help="audit N rows drawn at random (default: every row)")
    audit.add_argument("--seed", type=int, metavar="S", help="the sample's seed (default 0; with --sample)")
    audit.add_argument(
        "--on-nan",
        choices=["refuse", "skip"],
        default="refuse",
        help="rows with NaN or inf: refuse the audit naming them, or skip them (counted; default: refuse)",
    )
    store = audit.add_argument_group("PostgreSQL (SOURCE postgresql://...)")
    store.add_argument("--table", help="the table holding the vectors")
    store.add_argument("--vector-column", help="its pgvector column")
    store.add_argument("--text-column", help="a column holding the originals (optional)")
    store.add_argument("--id-column", help="a column holding the rows' ids, unique and not NULL (optional)")
    store.add_argument("--query", help="a SQL query giving the rows instead of --table")
    store.add_argument("--dsn", help="connection string (default: SOURCE, and the usual PG* variables)")
    run_group = audit.add_argument_group("running")
    run_group.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")
    run_group.add_argument(
        "--dtype",
        default="auto",
        choices=list(DTYPES),
        help="what the base computes in (default: auto, as `invert` chooses)",
    )
    run_group.add_argument("--batch-size", type=int, help="vectors decoded together (>= 1; default: from free memory)")
    run_group.add_argument("--max-new-tokens", type=int, help="longest reconstruction (>= 1; default: the adapter's)")
    run_group.add_argument(
        "--budget",
        metavar="N",
        help="decodes per vector (an integer >= 1; default 1 = greedy), spent as `invert "
        "--budget` spends them: the closer reconstruction of more decodes",
    )
    run_group.add_argument("--no-progress", action="store_true", help="no progress bars")
    audit.set_defaults(func=run)
    return audit


def adapter_label(given: str, resolved: Path, revision: str | None) -> str:
    """How audit.json names the adapter: a folder by its absolute path, a hub id with its revision and commit."""
    if Path(given).exists():
        return str(Path(given).resolve())
    return f"{given}@{revision or 'main'} (commit {Path(resolved).name})"


def budget_value(text: str | None, adapter: Path, config: BundleConfig) -> int | None:
    """``--budget``, checked with the corrector it spends decodes on (the one the adapter names), before anything
    is read or loaded."""
    from ..model.beam import CORRECTOR, parse_budget, plan_budget
    from ..model.correct import corrector_at_hand
    from .options import _corrector_bundle

    if text is None:
        return None
    budget = parse_budget(text)
    plan = plan_budget(budget, has_corrector=lambda: corrector_at_hand(config.corrector, adapter))
    if CORRECTOR in plan.proposers and plan.steps:
        _corrector_bundle(adapter, config, None)
    return budget


def run(args) -> int:
    """Check everything that can be checked before the models load, audit, print the answer."""
    from ..bundle.adapter import validate_bundle
    from ..bundle.hub import resolve_adapter
    from ..bundle.loading import load_adapter, load_dtype
    from ..tasks.audit import AuditJob, run_audit
    from ..tasks.report import headline
    from ..tasks.shards import current_shard
    from ..tasks.vectorsource import SourceOptions

    if args.seed is not None and args.sample is None:
        raise V2TError("--seed picks the rows of a sample: give --sample N too (or leave --seed out)")
    adapter = resolve_adapter(args.adapter, args.revision)
    config = validate_bundle(adapter)
    dtype = str(load_dtype(config, args.dtype, args.device)).removeprefix("torch.")  # checks --device too
    options = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    budget = budget_value(args.budget, adapter, config)
    job = AuditJob(
        source=args.source,
        out=str(args.out),
        originals=None if args.originals is None else str(args.originals),
        sample=args.sample,
        seed=0 if args.seed is None else args.seed,
        source_options=SourceOptions(
            table=args.table,
            vector_column=args.vector_column,
            text_column=args.text_column,
            id_column=args.id_column,
            query=args.query,
            dsn=args.dsn,
        ),
        on_nan=args.on_nan,
        batch_size=args.batch_size,
        options=options,
        dtype=dtype,
        adapter_label=adapter_label(args.adapter, adapter, args.revision),
        budget=budget,
    )
    # under `accelerate launch` each process decodes on the device of its rank (its GPU), unless --device says
    summary = run_audit(
        lambda: load_adapter(adapter, device=args.device or current_shard().device, dtype=args.dtype),
        job,
        adapter,
        config=config,
        show_progress=not args.no_progress,
    )
    if not summary:  # another process than the main one: the main one reports
        return 0
    print(shown(headline(summary)))
    print(f"report: {shown(summary['report'])} (figures in summary.json, each row in rows.jsonl)")
    return 0
