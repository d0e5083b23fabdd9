"""The command that compares two evaluation reports: compare."""

from __future__ import annotations

from pathlib import Path

from ..util.terminal import shown, shown_json


def _add_compare_command(sub) -> None:
    compare = sub.add_parser(
        "compare",
        help="compare two evaluation reports of the same sentences, sentence by sentence",
        description="Read the sentences.tsv of two `lora-v2t evaluate` reports of the same sentences (two "
        "adapters, two budgets, two dtypes) and print, for each system both hold (greedy, budget-16, ...), "
        "cosine, chrF, BLEU, token F1 and exact match of each, SECOND's minus FIRST's with a paired 95% "
        "bootstrap interval (every resample scores both on the same sentences, so the interval is the "
        "difference's, much narrower than the two reports' own), and on how many sentences SECOND is "
        "better and worse. Nothing is decoded: it takes seconds.",
        epilog="e.g. lora-v2t compare eval/v6-conv-b16 eval/v8-conv-b16 --system budget-16",
    )
    compare.add_argument("first", type=Path, metavar="FIRST", help="report folder of `lora-v2t evaluate`: the baseline")
    compare.add_argument("second", type=Path, metavar="SECOND", help="report folder of the same sentences to compare")
    compare.add_argument(
        "--system",
        action="append",
        metavar="NAME[:NAME]",
        help="compare this system of both reports, or FIRST's NAME with SECOND's (e.g. greedy:budget-16 with "
        "one report given twice); repeatable (default: every system both reports hold)",
    )
    compare.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (>= 1; default 1000)")
    compare.add_argument("--seed", type=int, default=0, help="the resamples' seed (default 0, as evaluate's)")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")
    compare.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from ..tasks.compare import compare_reports, comparison_table, read_report

    result = compare_reports(
        read_report(args.first), read_report(args.second), args.system, resamples=args.resamples, seed=args.seed
    )
    print(
        shown_json(result, indent=2) if args.json else shown(comparison_table(result), lines=True),
        end="\n" if args.json else "",
    )
    return 0
