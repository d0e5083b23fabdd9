"""Two evaluation reports of the same sentences, compared sentence by sentence: every metric's difference (the
second report's minus the first's) with a paired 95% bootstrap interval, where each resample scores both systems
on the same sentences, and how many sentences each system wins.

Two ``lora-v2t evaluate`` reports of one file (two adapters, two budgets, two dtypes) differ by less than their
unpaired intervals suggest: most of each interval's width is which sentences were drawn, and pairing takes it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..util.errors import V2TError
from ..util.textfile import unescape_tsv
from .metrics import (
    bootstrap_interval,
    exact_match,
    paired_corpus_interval,
    percent_per_sentence,
    resample_indices,
    token_f1,
)

# sentences.tsv's layout, which evaluate writes with these and compare reads: index, reference (and source), then
# for each system (its tag: greedy, budget-16, ...) the columns <tag>_output, <tag>_cosine, <tag>_token_f1, <tag>_exact
SENTENCES_FILE = "sentences.tsv"
SYSTEM_COLUMNS = ("output", "cosine", "token_f1", "exact")
NOT_A_REPORT = "give a report folder that `lora-v2t evaluate` wrote"


@dataclass
class Report:
    """One report's sentences.tsv: the references and, per system, its output for each sentence."""

    folder: Path
    references: list[str]
    outputs: dict[str, list[str]]
    cosines: dict[str, np.ndarray | None]


def read_report(folder: str | Path) -> Report:
    """The sentences.tsv that ``lora-v2t evaluate`` wrote into ``folder`` (or that file itself)."""
    folder = Path(folder)
    path = folder / SENTENCES_FILE if folder.is_dir() else folder
    if not folder.exists():
        raise V2TError(f"{folder} does not exist: {NOT_A_REPORT}")
    if not path.is_file():
        raise V2TError(f"{folder} holds no {SENTENCES_FILE}: {NOT_A_REPORT}")
    try:
        lines = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n").split("\n")
    except UnicodeDecodeError:
        raise V2TError(f"{path} is not UTF-8 text: {NOT_A_REPORT}") from None
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:] if line]
    systems = [name[: -len("_output")] for name in header if name.endswith("_output")]
    wanted = {f"{name}_{column}" for name in systems for column in SYSTEM_COLUMNS}
    if header[:2] != ["index", "reference"] or not systems or not wanted <= set(header):
        raise V2TError(f"{path} is not a sentences.tsv of `lora-v2t evaluate`: {NOT_A_REPORT}")
    if not rows:
        raise V2TError(f"{path} holds no sentences: compare reports of at least one sentence")
    bad = next((i for i, row in enumerate(rows, start=2) if len(row) != len(header)), None)
    if bad is not None:
        raise V2TError(f"{path}, line {bad}: not {len(header)} columns as its header says: {NOT_A_REPORT}")
    column = {name: i for i, name in enumerate(header)}
    outputs = {name: [unescape_tsv(row[column[f"{name}_output"]]) for row in rows] for name in systems}
    cosines = {name: _cosines(path, name, [row[column[f"{name}_cosine"]] for row in rows]) for name in systems}
    return Report(folder, [unescape_tsv(row[1]) for row in rows], outputs, cosines)


def _cosines(path: Path, name: str, fields: list[str]) -> np.ndarray | None:
    """A system's cosine column, or None where the report has none (a TSV scored without re-embedding)."""
    if not any(fields):
        return None
    try:
        return np.array([float(field) for field in fields], dtype=np.float64)
    except ValueError:
        raise V2TError(
            f"{path}: {name}_cosine has a value that is not a number: give a sentences.tsv as evaluate wrote it"
        ) from None


def system_pairs(first: Report, second: Report, wanted: list[str] | None) -> list[tuple[str, str]]:
    """The systems to compare: each ``NAME`` (in both reports) or ``NAME_A:NAME_B`` of ``wanted``, or by default
    every system both reports have."""
    if not wanted:
        pairs = [(name, name) for name in first.outputs if name in second.outputs]
        if not pairs:
            raise V2TError(
                f"the reports share no system ({', '.join(first.outputs)} against {', '.join(second.outputs)}): "
                "name the pair with --system FIRST:SECOND"
            )
        return pairs
    pairs = [_system_pair(spec) for spec in wanted]
    for a, b in pairs:
        _check_system(a, first)
        _check_system(b, second)
    return pairs


def _system_pair(spec: str) -> tuple[str, str]:
    names = spec.split(":")
    if len(names) > 2 or not all(names):
        raise V2TError(f"--system {spec!r} is not NAME or FIRST:SECOND (e.g. budget-16, or greedy:budget-16)")
    return names[0], names[-1]


def _check_system(name: str, report: Report) -> None:
    if name not in report.outputs:
        raise V2TError(f"{report.folder} has no system {name!r}: choose among {', '.join(report.outputs)}")


def compare_reports(
    first: Report, second: Report, wanted: list[str] | None = None, resamples: int = 1000, seed: int = 0
) -> dict:
    """Per system pair: each metric of both, the difference second - first with its paired 95% interval, and the
    sentences where the second is better and worse."""
    if resamples < 1 or seed < 0:
        raise V2TError(f"--resamples must be >= 1 and --seed >= 0 (got {resamples} and {seed})")
    if first.references != second.references:
        raise V2TError(_mismatch(first, second))
    pairs = system_pairs(first, second, wanted)
    n = len(first.references)
    boot = resample_indices(n, resamples, seed)
    return {
        "first": str(first.folder),
        "second": str(second.folder),
        "sentences": n,
        "bootstrap_resamples": resamples,
        "seed": seed,
        "systems": {a if a == b else f"{a}:{b}": _compare_pair(first, second, a, b, boot) for a, b in pairs},
    }


def _mismatch(first: Report, second: Report) -> str:
    if len(first.references) != len(second.references):
        return (
            f"{first.folder} scores {len(first.references)} sentences and {second.folder} "
            f"{len(second.references)}: compare reports of the same --data and --limit"
        )
    line = next(i for i, (a, b) in enumerate(zip(first.references, second.references, strict=True)) if a != b)
    return (
        f"{first.folder} and {second.folder} score different sentences (the first difference is at index {line}): "
        "compare reports of the same --data and --limit"
    )


def _compare_pair(first: Report, second: Report, a: str, b: str, boot: np.ndarray) -> dict:
    from sacrebleu.metrics import BLEU, CHRF

    refs, hyps = first.references, (first.outputs[a], second.outputs[b])
    per_sentence = {
        "token_f1": [percent_per_sentence(token_f1, side, refs) for side in hyps],
        "exact_match": [percent_per_sentence(exact_match, side, refs) for side in hyps],
    }
    cosines = first.cosines[a], second.cosines[b]
    if cosines[0] is not None and cosines[1] is not None:
        per_sentence = {"cosine": [cosines[0], cosines[1]], **per_sentence}
    out = {}
    for name, (x, y) in per_sentence.items():
        _, low, high = bootstrap_interval(y - x, boot)
        out[name] = _figure(float(x.mean()), float(y.mean()), low, high)
        out[name]["second_better"], out[name]["second_worse"] = int((y > x).sum()), int((y < x).sum())
    for name, metric in (("chrf", CHRF()), ("bleu", BLEU())):
        one, two, low, high = paired_corpus_interval(metric, hyps[0], hyps[1], refs, boot)
        out[name] = _figure(one, two, low, high)
    return out


def _figure(first: float, second: float, low: float, high: float) -> dict:
    return {"first": first, "second": second, "difference": second - first, "ci95": [low, high]}


METRIC_LABELS = {
    "cosine": ("cosine", 4),
    "chrf": ("chrF", 2),
    "bleu": ("BLEU", 2),
    "token_f1": ("token F1", 2),
    "exact_match": ("exact match %", 1),
}


def comparison_table(result: dict) -> str:
    """The comparison as a Markdown table, one row per system pair and metric."""
    lines = [
        f"First: `{result['first']}`; second: `{result['second']}`; {result['sentences']} sentences, paired "
        f"bootstrap over {result['bootstrap_resamples']} resamples (seed {result['seed']}).",
        "",
        "| system | metric | first | second | second - first [95%] | second better / worse |",
        "|---|---|---|---|---|---|",
    ]
    for pair, metrics in result["systems"].items():
        for key, (label, digits) in METRIC_LABELS.items():
            if key not in metrics:
                continue
            m = metrics[key]
            low, high = m["ci95"]
            wins = f"{m['second_better']} / {m['second_worse']}" if "second_better" in m else ""
            lines.append(
                f"| {pair} | {label} | {m['first']:.{digits}f} | {m['second']:.{digits}f} | "
                f"{m['difference']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] | {wins} |"
            )
    missing = [pair for pair, metrics in result["systems"].items() if "cosine" not in metrics]
    if missing:
        lines += ["", f"No cosine for {', '.join(missing)}: a report holds no re-embedding cosines for it."]
    return "\n".join(lines) + "\n"
