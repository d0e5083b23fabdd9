"""Evaluation: reconstruct every sentence of a file from its embedding and score the result.

Metrics, each as a mean with a bootstrap 95% interval: corpus BLEU and chrF (sacrebleu), token F1, exact
match after whitespace normalisation, and the cosine between the target vector and the re-embedded output.
Greedy and reranked (N candidates) side by side. Writes ``sentences.tsv``, ``summary.json``, ``summary.md``
and ``cosine_hist.png`` into the output folder.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import V2TError
from .generate import reembed_cosines

logger = logging.getLogger(__name__)

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}«»—–…„“”]")


# ---------------------------------------------------------------------- metrics
def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def exact_match(hypothesis: str, reference: str) -> float:
    """1.0 when the texts are equal after whitespace normalisation."""
    return float(normalise_whitespace(hypothesis) == normalise_whitespace(reference))


def _tokens(text: str) -> list[str]:
    return _PUNCT.sub(" ", text.lower().replace("ё", "е")).split()


def token_f1(hypothesis: str, reference: str) -> float:
    """F1 of the bags of lower-cased word tokens (punctuation removed, ё = е), as in SQuAD."""
    hyp, ref = _tokens(hypothesis), _tokens(reference)
    if not hyp or not ref:
        return float(hyp == ref)
    common = sum((Counter(hyp) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(hyp), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _corpus_stats(metric, hypotheses: list[str], references: list[str]) -> np.ndarray:
    return np.asarray(metric._extract_corpus_statistics(hypotheses, [references]), dtype=np.float64)


def bootstrap_interval(values: np.ndarray, resamples: np.ndarray, score=None) -> tuple[float, float, float]:
    """Score and 95% bootstrap interval. ``values`` (N, ...) are per-sentence values or sufficient
    statistics; ``score`` maps a column sum to a corpus score (default: the mean)."""
    if score is None:
        point = float(values.mean())
        samples = values[resamples].mean(axis=1)
    else:
        point = score(values.sum(axis=0))
        samples = np.array([score(values[idx].sum(axis=0)) for idx in resamples])
    low, high = np.percentile(samples, [2.5, 97.5])
    return point, float(low), float(high)


def score_outputs(hypotheses: list[str], references: list[str], cosines: np.ndarray | None,
                  resamples: np.ndarray) -> dict:
    """Corpus BLEU and chrF, token F1, exact match and cosine, each as (value, low, high)."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(), CHRF()
    out = {
        "bleu": bootstrap_interval(_corpus_stats(bleu, hypotheses, references), resamples,
                                   lambda s: bleu._compute_score_from_stats(s.tolist()).score),
        "chrf": bootstrap_interval(_corpus_stats(chrf, hypotheses, references), resamples,
                                   lambda s: chrf._compute_score_from_stats(s.tolist()).score),
        "token_f1": bootstrap_interval(np.array([token_f1(h, r) for h, r in zip(hypotheses, references)]) * 100,
                                       resamples),
        "exact_match": bootstrap_interval(
            np.array([exact_match(h, r) for h, r in zip(hypotheses, references)]) * 100, resamples),
    }
    if cosines is not None:
        out["cosine"] = bootstrap_interval(np.asarray(cosines, dtype=np.float64), resamples)
    return out


# ---------------------------------------------------------------------- inputs
@dataclass
class EvalData:
    """What to reconstruct: references, and either source texts to encode or precomputed vectors."""

    references: list[str]
    sources: list[str] | None = None  # texts to encode (the references themselves unless cross-lingual)
    vectors: np.ndarray | None = None
    skipped: dict = field(default_factory=dict)
    name: str = ""  # the file's name, for reports


def read_eval_file(path: str | Path, source_column: int | str | None = None, target_column: int | str = 1,
                   header: bool = False, max_chars: int = 1000, limit: int | None = None) -> EvalData:
    """Read a text file (one reference per line) or, with ``source_column``, a TSV whose source column is
    encoded and whose target column is the reference. Empty and overlong lines are skipped and counted."""
    path = Path(path)
    if not path.is_file():
        raise V2TError(f"evaluation file {path} does not exist")
    skipped = {"empty": 0, "overlong": 0, "undecodable": 0}
    refs, srcs = [], []
    with open(path, "rb") as handle:
        raw_lines = handle.read().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    names = None
    if source_column is not None and header and raw_lines:
        names = raw_lines.pop(0).decode("utf-8", errors="replace").rstrip("\r").split("\t")
    src_idx = _column(source_column, names, path) if source_column is not None else None
    tgt_idx = _column(target_column, names, path) if source_column is not None else None
    for raw in raw_lines:
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            skipped["undecodable"] += 1
            continue
        if src_idx is None:
            fields_ = [line.strip()]
            source = target = fields_[0]
        else:
            fields_ = line.split("\t")
            if not line.strip():
                skipped["empty"] += 1
                continue
            if max(src_idx, tgt_idx) >= len(fields_):
                existing = ", ".join(names) if names else ", ".join(str(i) for i in range(len(fields_)))
                raise V2TError(f"{path}: a line has no column {max(src_idx, tgt_idx)}; its columns are "
                               f"{existing} (0-based indices unless --header names them)")
            source, target = fields_[src_idx].strip(), fields_[tgt_idx].strip()
        if not source or not target:
            skipped["empty"] += 1
        elif len(source) > max_chars or len(target) > max_chars:
            skipped["overlong"] += 1
        else:
            refs.append(target)
            srcs.append(source)
        if limit and len(refs) >= limit:
            break
    if not refs:
        raise V2TError(f"{path} has no usable line (skipped: {skipped})")
    return EvalData(references=refs, sources=srcs, skipped={k: v for k, v in skipped.items() if v},
                    name=Path(path).name)


def _column(column: int | str, names: list[str] | None, path: Path) -> int:
    if isinstance(column, str) and not column.isdigit():
        if names is None:
            raise V2TError(f"column {column!r} is a name but {path} is read without --header: give a 0-based index")
        if column not in names:
            raise V2TError(f"{path} has no column {column!r}; its columns are: {', '.join(names)}")
        return names.index(column)
    index = int(column)
    if names is not None and index >= len(names):
        raise V2TError(f"{path} has no column {index}; its columns are: {', '.join(names)}")
    return index


# ---------------------------------------------------------------------- the run
def evaluate(v2t, data: EvalData, out_dir: str | Path, rerank: int = 8, batch_size: int = 32,
             max_new_tokens: int | None = None, resamples: int = 1000, seed: int = 0,
             show_progress: bool = True, restrict_vocab: bool | None = None) -> dict:
    """Reconstruct and score; write the per-sentence TSV, the summary (JSON + Markdown) and the histogram.

    Args:
        v2t: a loaded adapter.
        data: references with source texts or vectors.
        out_dir: where to write the report.
        rerank: beam candidates for the reranked column (the greedy output competes too); 0 or 1 = greedy
            only. Needs an encoder that can encode text.
        resamples: bootstrap resamples for the 95% intervals.
        restrict_vocab: decode inside the adapter's output vocabulary when it has one (False: every token;
            None: the adapter's default).
    """
    from .model import to_vectors

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(data.references)
    if data.vectors is not None:
        if len(data.vectors) != n:
            raise V2TError(f"{len(data.vectors)} vectors for {n} reference sentences: give one vector per line")
        vectors = to_vectors(data.vectors, v2t.embedding_dim).numpy()
    else:
        logger.info("encoding %d sentences with %s", n, v2t.meta["encoder"]["spec"])
        vectors = v2t.encode(data.sources, show_progress=show_progress)
    if restrict_vocab is None:
        restrict_vocab = v2t.generation_defaults().restrict_vocab
    options = {"batch_size": batch_size, "restrict_vocab": restrict_vocab}
    if max_new_tokens:
        options["max_new_tokens"] = max_new_tokens
    greedy = v2t.generate(vectors, show_progress=show_progress, **options)
    rng = np.random.default_rng(seed)
    boot = rng.integers(0, n, size=(resamples, n))
    greedy_cos = _reembed_cosines(v2t, greedy, vectors)
    systems = {"greedy": (greedy, greedy_cos)}
    if rerank and rerank > 1 and greedy_cos is not None:
        # candidates: the greedy output and the `rerank` best beams; keep the one closest to the target
        ranked = v2t.generate(vectors, show_progress=show_progress, rerank=True, num_beams=rerank,
                              num_return_sequences=rerank, **options)
        texts = [r.text if r.cosine > g_cos else g for r, g, g_cos in zip(ranked, greedy, greedy_cos)]
        cos = np.maximum(np.array([r.cosine for r in ranked]), greedy_cos)
        systems[f"reranked (greedy + {rerank} beams)"] = (texts, cos)
    scores = {name: score_outputs(hyps, data.references, cos, boot) for name, (hyps, cos) in systems.items()}
    summary = {"data": data.name, "sentences": n, "skipped": data.skipped, "encoder": v2t.meta["encoder"]["spec"],
               "backbone": v2t.backbone_info["name"], "bootstrap_resamples": resamples,
               "output_vocab": v2t.output_vocab.numel() if restrict_vocab and v2t.output_vocab is not None
               else "full",
               "scores": {name: {m: {"value": round(v, 4), "ci95": [round(lo, 4), round(hi, 4)]}
                                 for m, (v, lo, hi) in s.items()} for name, s in scores.items()}}
    _write_tsv(out_dir / "sentences.tsv", data, systems)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "summary.md").write_text(markdown_table(summary))
    plot_cosines({name: cos for name, (_, cos) in systems.items() if cos is not None}, out_dir / "cosine_hist.png")
    return summary


def _reembed_cosines(v2t, texts: list[str], vectors: np.ndarray) -> np.ndarray | None:
    from .encoders import PrecomputedEncoder

    if isinstance(v2t.encoder, PrecomputedEncoder):
        return None
    return reembed_cosines(v2t, texts, vectors, empty=0.0)  # an empty output scores 0


def _write_tsv(path: Path, data: EvalData, systems: dict) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        header = ["index", "reference"] + (["source"] if data.sources and data.sources != data.references else [])
        for name in systems:
            tag = name.split()[0]
            header += [f"{tag}_output", f"{tag}_cosine", f"{tag}_token_f1", f"{tag}_exact"]
        writer.writerow(header)
        for i, ref in enumerate(data.references):
            row = [i, ref] + ([data.sources[i]] if len(header) > 2 and header[2] == "source" else [])
            for hyps, cos in systems.values():
                row += [hyps[i], "" if cos is None else f"{cos[i]:.4f}", f"{token_f1(hyps[i], ref):.4f}",
                        int(exact_match(hyps[i], ref))]
            writer.writerow(row)


def markdown_table(summary: dict) -> str:
    names = list(summary["scores"])
    metrics = list(summary["scores"][names[0]])
    vocab = summary.get("output_vocab", "full")
    vocab = "every token" if vocab == "full" else f"the adapter's {vocab} output tokens"
    lines = [f"{summary['sentences']} sentences; encoder `{summary['encoder']}`; backbone `{summary['backbone']}`; "
             f"decoding over {vocab}; 95% bootstrap intervals over {summary['bootstrap_resamples']} resamples.",
             "",
             "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for m in metrics:
        cells = []
        for name in names:
            s = summary["scores"][name].get(m)
            fmt = "{:.3f}" if m == "cosine" else "{:.1f}"
            cells.append(f"{fmt.format(s['value'])} [{fmt.format(s['ci95'][0])}, {fmt.format(s['ci95'][1])}]"
                         if s else "")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if summary["skipped"]:
        lines += ["", f"Skipped lines: {summary['skipped']}"]
    return "\n".join(lines) + "\n"


def plot_cosines(cosines: dict, out: Path) -> None:
    """Histogram of per-sentence cosines between target vectors and re-embedded outputs."""
    if not cosines:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, cos in cosines.items():
        ax.hist(cos, bins=40, range=(min(0.0, float(np.min(cos))), 1.0), alpha=0.6,
                label=f"{name} (mean {np.mean(cos):.3f})")
    ax.set_xlabel("cosine(target vector, re-embedded output)")
    ax.set_ylabel("sentences")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
