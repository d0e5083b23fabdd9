"""Evaluation: reconstruct every sentence of a file from its embedding and score the result.

Metrics, each as a mean with a bootstrap 95% interval: corpus BLEU and chrF (sacrebleu), token F1, exact
match after whitespace normalisation, and the cosine between the target vector and the re-embedded output.
Greedy, reranked (N candidates) and each correction step side by side. Writes ``sentences.tsv``,
``summary.json``, ``summary.md`` and ``cosine_hist.png`` into the output folder.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..bundle.saving import bundle_config
from ..model.beam import describe
from ..model.correct import CorrectionConfig, Trace, correct
from ..model.encoders import PrecomputedEncoder
from ..model.generate import reembed_cosines
from ..util.errors import V2TError
from ..util.files import atomic_folder, refuse_foreign, try_writing_in
from ..util.textfile import escape_tsv
from ..util.vectors import to_vectors
from .compare import SENTENCES_FILE, SYSTEM_COLUMNS
from .evalfile import EvalData
from .metrics import exact_match, resample_indices, score_outputs, token_f1

if TYPE_CHECKING:
    from ..model.vector2text import Vector2Text

logger = logging.getLogger(__name__)

REPORT_FILES = (SENTENCES_FILE, "summary.json", "summary.md", "cosine_hist.png")  # what --overwrite replaces


# ---------------------------------------------------------------------- the run


def default_report_dir(adapter: str | Path, data: str | Path, root: str | Path = "eval") -> Path:
    """``eval/<adapter's parent folder>-<adapter folder>-<data file>``: the parent tells apart the ``final/``
    folders of different runs (a hub id ``org/name`` gives ``org-name``); numbered ``-2``, ``-3``... past
    folders that exist already, so a second evaluation never overwrites the first."""
    path = Path(str(adapter))
    if path.exists():
        path = path.resolve()
    names = [part for part in path.parts[-2:] if part not in (path.anchor, "", ".", "..")]
    base = Path(root) / "-".join([*names, Path(data).stem])
    return _unused(base)


def _unused(path: Path) -> Path:
    """``path``, or the first of ``path-2``, ``path-3``... that does not exist."""
    candidate, number = path, 2
    while candidate.exists():
        candidate, number = path.with_name(f"{path.name}-{number}"), number + 1
    return candidate


def check_report_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Raise (before any decoding) unless a report can go to ``out_dir``: a new or empty folder, or an older
    report when ``overwrite``; its nearest existing parent must be writable."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise V2TError(f"report folder {out_dir} is an existing file: give --out a new folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / "summary.json").is_file():
            raise V2TError(
                f"report folder {out_dir} exists and holds other files than a report: give --out a new or empty folder"
            )
        if not overwrite:
            raise V2TError(
                f"report folder {out_dir} holds a report already: pass --overwrite to replace it, or "
                "give --out another folder"
            )
        refuse_foreign(out_dir, REPORT_FILES, "a report", "move them away, or give --out another folder")
    parent = out_dir.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise V2TError(
            f"cannot write the report {out_dir}: {parent} is not a writable folder; give --out another folder"
        )
    try:
        try_writing_in(parent)  # a special or read-only filesystem passes the permission check
    except OSError as exc:
        raise V2TError(
            f"cannot write the report {out_dir}: nothing can be written in {parent} ({exc.strerror or exc}); "
            "give --out a folder on a writable disk"
        ) from None
    return out_dir


def evaluate(
    v2t: Vector2Text,
    data: EvalData,
    out_dir: str | Path,
    rerank: int | None = None,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    resamples: int = 1000,
    seed: int = 0,
    show_progress: bool = True,
    restrict_vocab: bool | None = None,
    adapter: str | Path | None = None,
    overwrite: bool = False,
    correction: CorrectionConfig | None = None,
) -> dict:
    """Reconstruct and score; write the per-sentence TSV, the summary (JSON + Markdown) and the histogram.

    The report is written to a temporary folder and renamed into place at the end: an interrupted evaluation
    leaves no half-written report, and an older report is replaced only with ``overwrite``.

    Args:
        v2t: a loaded adapter.
        data: references with source texts or vectors.
        out_dir: where to write the report: a new or empty folder (or an older report, with ``overwrite``).
        rerank: beam candidates for the reranked column (the greedy output competes too); 0 or 1 = greedy
            only; None: 8 (0 with a budget). Needs an encoder that can encode text.
        resamples: bootstrap resamples for the 95% intervals (>= 1).
        restrict_vocab: decode inside the adapter's output vocabulary when it has one (False: every token;
            None: the adapter's default).
        adapter: the adapter's folder or hub id, recorded in the summary with its configuration.
        overwrite: replace a report already in ``out_dir``.
        correction: with ``steps`` > 0, correct the outputs (see :mod:`lora_v2t.model.correct`) and report every
            step, with the seconds and decodes per vector it cost. With ``rerank`` > 1 correction starts from
            the reranked candidates (columns ``reranked+corrected-N``), else from the greedy output
            (``corrected-N``); ``rerank`` replaces the ``CorrectionConfig``'s own. A budget's plan
            (:func:`lora_v2t.model.beam.plan_budget`, ``correction.budget`` set) is reported as one column
            ``budget-N`` beside greedy (none for a budget of 1), with the decodes it spent; it chooses its own
            beams (leave ``rerank`` unset) and samples (``sample``) from ``seed``.
        seed: seeds the bootstrap resamples, and a budget's sampled proposals.
    """
    plan = correction if correction is not None and correction.budget is not None else None
    if plan is not None and rerank is not None:
        raise V2TError(
            "a budget chooses its own beams: leave rerank unset (drop --rerank), or evaluate without a budget"
        )
    rerank = (0 if plan is not None else 8) if rerank is None else rerank
    check_evaluation_options(rerank, resamples)
    n = len(data.references)
    if n == 0:
        raise V2TError("nothing to evaluate: no reference sentences")
    out_dir = check_report_dir(out_dir, overwrite)
    if restrict_vocab is None:
        restrict_vocab = v2t.generation_defaults().restrict_vocab
    options = {"batch_size": batch_size, "restrict_vocab": restrict_vocab}
    if max_new_tokens is not None:
        options["max_new_tokens"] = max_new_tokens
    v2t.generation_defaults().updated(**options)  # bad options fail here, before any encoding or decoding
    vectors = _target_vectors(v2t, data, show_progress)
    trace: Trace | None
    if plan is not None:
        systems, trace = _decode_budget(v2t, vectors, plan, options, show_progress, seed)
    else:
        systems, trace = _decode_systems(v2t, vectors, rerank, correction, options, show_progress)
    boot = resample_indices(n, resamples, seed)
    scores = {name: score_outputs(hyps, data.references, cos, boot) for name, (hyps, cos) in systems.items()}
    summary = _summary(v2t, data, adapter, restrict_vocab, resamples, scores)
    if plan is not None and trace is not None:
        summary["budget"] = _budget_summary(v2t, plan, trace)
    elif trace is not None and correction is not None:  # a trace comes only from a correction
        summary["correction"] = _correction_summary(v2t, correction, rerank, trace)
    written = _write_report(out_dir, overwrite, data, systems, summary)
    if written != out_dir:
        logger.warning("%s was taken while evaluating; the report went to %s", out_dir, written)
    summary["report"] = str(written)
    return summary


def _target_vectors(v2t: Vector2Text, data: EvalData, show_progress: bool) -> np.ndarray:
    """The vectors to invert: the data's own (one per reference), else its sources (or references) encoded."""
    n = len(data.references)
    if data.vectors is not None:
        if len(data.vectors) != n:
            raise V2TError(f"{len(data.vectors)} vectors for {n} reference sentences: give one vector per line")
        return to_vectors(data.vectors, v2t.embedding_dim).numpy()
    logger.info("encoding %d sentences with %s", n, v2t.meta.encoder.spec)
    sources = data.references if data.sources is None else data.sources  # see EvalData.sources
    return v2t.encode(sources, show_progress=show_progress)


def _summary(v2t: Vector2Text, data: EvalData, adapter, restrict_vocab: bool, resamples: int, scores: dict) -> dict:
    """The report's summary: what was evaluated, how, and each system's scores with their 95% intervals."""
    return {
        "adapter": None if adapter is None else str(adapter),
        "adapter_config": adapter_summary(v2t),
        "data": data.name,
        "sentences": len(data.references),
        "skipped": data.skipped,
        "encoder": v2t.meta.encoder.spec,
        "backbone": v2t.backbone_info["name"],
        "compute_dtype": v2t.backbone_info["compute_dtype"],
        "bootstrap_resamples": resamples,
        "output_vocab": v2t.output_vocab.numel() if restrict_vocab and v2t.output_vocab is not None else "full",
        "scores": {
            name: {m: {"value": round(v, 4), "ci95": [round(lo, 4), round(hi, 4)]} for m, (v, lo, hi) in s.items()}
            for name, s in scores.items()
        },
    }


def _correction_summary(v2t: Vector2Text, correction: CorrectionConfig, rerank: int, trace: Trace) -> dict:
    """What a correction asked for and what it ran: steps, seconds and decodes per vector per step."""
    return {
        "corrector": correction.corrector or v2t.meta.corrector,
        "starts_from": "reranked" if rerank > 1 else "greedy",
        "width": correction.width,
        "steps_asked": correction.steps,
        "steps_run": len(trace.texts) - 1,
        "seconds_per_step": [round(s, 2) for s in trace.seconds],
        "decodes_per_vector_per_step": trace.decodes,
    }


def check_evaluation_options(rerank: int, resamples: int) -> None:
    """Raise unless ``rerank`` (beam candidates, >= 0) and ``resamples`` (bootstrap, >= 1) are valid."""
    for name, value, low, what in (
        ("rerank", rerank, 0, "beam candidates; 0 or 1 = greedy only"),
        ("resamples", resamples, 1, "bootstrap resamples for the 95% intervals"),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise V2TError(f"{name} must be an integer >= {low} ({what}), got {value!r}")


def adapter_summary(v2t: Vector2Text) -> dict:
    """The active adapter's v2t_config (encoder, backbone, projector, LoRA, generation defaults, training
    summary without its sample reconstructions), as recorded in an evaluation summary."""
    config = bundle_config(v2t).to_dict()
    config["training"] = {k: v for k, v in config["training"].items() if k != "samples"}
    return config


def _write_report(out_dir: Path, overwrite: bool, data: EvalData, systems: dict, summary: dict) -> Path:
    """Write the report into a temporary sibling folder, then rename it to ``out_dir`` (replacing an older
    report only when ``overwrite``; if another report took ``out_dir`` meanwhile, the next free ``-N`` name)."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if overwrite:
            check_report_dir(out_dir, overwrite)  # still a report and nothing else
        else:
            out_dir = _unused(out_dir)
    try:
        with atomic_folder(out_dir, advice="free some space there, or give --out a folder on another disk") as tmp:
            _write_tsv(tmp / SENTENCES_FILE, data, systems)
            (tmp / "summary.json").write_text(
                json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            (tmp / "summary.md").write_text(markdown_table(summary), encoding="utf-8")
            plot_cosines({name: cos for name, (_, cos) in systems.items() if cos is not None}, tmp / "cosine_hist.png")
    except OSError as exc:
        raise V2TError(f"cannot write the report {out_dir}: {exc.strerror or exc}; give --out another folder") from exc
    return out_dir


def _reembed_cosines(v2t: Vector2Text, texts: list[str], vectors: np.ndarray) -> np.ndarray | None:
    if isinstance(v2t.encoder, PrecomputedEncoder):
        return None
    return reembed_cosines(v2t, texts, vectors, empty=0.0)  # an empty output scores 0


def _decode_systems(
    v2t: Vector2Text,
    vectors: np.ndarray,
    rerank: int,
    correction: CorrectionConfig | None,
    options: dict,
    show_progress: bool,
) -> tuple[dict, Trace | None]:
    """Every system's texts and cosines by name (greedy, reranked, each correction step) and the correction's
    trace (None without correction). With reranking, correction starts from the reranked candidates."""
    if correction is None or correction.steps == 0:
        greedy = v2t.generate(vectors, show_progress=show_progress, **options)
        greedy_cos = _reembed_cosines(v2t, greedy, vectors)
        systems = {"greedy": (greedy, greedy_cos)}
        if rerank > 1 and greedy_cos is not None:
            # candidates: the greedy output and the `rerank` best beams; keep the one closest to the target
            ranked = v2t.generate(
                vectors,
                show_progress=show_progress,
                rerank=True,
                num_beams=rerank,
                num_return_sequences=rerank,
                **options,
            )
            texts = [r.text if r.cosine > g_cos else g for r, g, g_cos in zip(ranked, greedy, greedy_cos, strict=True)]
            cos = np.maximum(np.array([r.cosine for r in ranked]), greedy_cos)
            systems[f"reranked (greedy + {rerank} beams)"] = (texts, cos)
        return systems, None
    reranked = rerank > 1
    trace = correct(
        v2t, vectors, replace(correction, rerank=rerank if reranked else 0), show_progress=show_progress, **options
    )
    # correction re-embedded every step's texts already
    systems = {"greedy": trace.greedy()}
    if reranked:
        systems[f"reranked (greedy + {rerank} beams)"] = trace.step(0)
    for step in range(1, len(trace.texts)):
        systems[f"reranked+corrected-{step}" if reranked else f"corrected-{step}"] = trace.step(step)
    return systems, trace


def _decode_budget(
    v2t: Vector2Text, vectors: np.ndarray, plan: CorrectionConfig, options: dict, show_progress: bool, seed: int
) -> tuple[dict, Trace]:
    """The greedy texts and the best of a budget's beam over corrections (``plan``), with their cosines; a budget
    of 1 is the greedy column alone."""
    trace = correct(v2t, vectors, plan, show_progress=show_progress, seed=seed, **options)
    systems = {"greedy": trace.greedy()}
    if plan.budget is not None and plan.budget > 1:
        systems[f"budget-{plan.budget}"] = trace.step()
    return systems, trace


def _budget_summary(v2t: Vector2Text, plan: CorrectionConfig, trace: Trace) -> dict:
    """What a budget's run spent its decodes on, and how many (summary.json's ``budget``)."""
    spent = trace.spent if trace.spent is not None else np.zeros(1)
    corrector = plan.corrector or v2t.meta.corrector if "corrector" in plan.sources else None
    return describe(plan) | {
        "corrector": corrector,
        "decodes_spent_mean": round(float(spent.mean()), 3),
        "decodes_spent_max": int(spent.max()),
        "steps_run": len(trace.texts) - 1,
        "seconds": round(sum(trace.seconds), 2),
    }


def _write_tsv(path: Path, data: EvalData, systems: dict) -> None:
    """One line per sentence; texts escaped as :func:`lora_v2t.util.textfile.escape_tsv` does (no quoting)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:

        def writerow(row):
            handle.write("\t".join(escape_tsv(str(field)) for field in row) + "\n")

        header = ["index", "reference"] + (["source"] if data.sources and data.sources != data.references else [])
        for name in systems:
            tag = name.split()[0]
            header += [f"{tag}_{column}" for column in SYSTEM_COLUMNS]
        writerow(header)
        for i, ref in enumerate(data.references):
            row = [i, ref] + ([data.sources[i]] if data.sources and header[2:3] == ["source"] else [])
            for hyps, cos in systems.values():
                row += [
                    hyps[i],
                    "" if cos is None else f"{cos[i]:.4f}",
                    f"{token_f1(hyps[i], ref):.4f}",
                    int(exact_match(hyps[i], ref)),
                ]
            writerow(row)


def markdown_table(summary: dict) -> str:
    names = list(summary["scores"])
    metrics = list(summary["scores"][names[0]])
    vocab = summary.get("output_vocab", "full")
    vocab = "every token" if vocab == "full" else f"the adapter's {vocab} output tokens"
    adapter = f"Adapter `{summary['adapter']}`; " if summary.get("adapter") else ""
    lines = [
        f"{adapter}{summary['sentences']} sentences; encoder `{summary['encoder']}`; "
        f"backbone `{summary['backbone']}`; "
        f"decoding over {vocab}; 95% bootstrap intervals over {summary['bootstrap_resamples']} resamples.",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for m in metrics:
        cells = []
        for name in names:
            s = summary["scores"][name].get(m)
            fmt = "{:.3f}" if m == "cosine" else "{:.1f}"
            cells.append(
                f"{fmt.format(s['value'])} [{fmt.format(s['ci95'][0])}, {fmt.format(s['ci95'][1])}]" if s else ""
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if summary.get("budget"):
        b = summary["budget"]
        lines += [
            "",
            f"Budget {b['budget']} decodes per vector on {' + '.join(b['sources']) or 'greedy'} (beams "
            f"{b['beams']}, width {b['width']}, up to {b['steps']} correction steps, {b['steps_run']} run): "
            f"{b['decodes_spent_mean']} decodes per vector spent on average, {b['decodes_spent_max']} at "
            f"most, in {b['seconds']} s.",
        ]
    if summary.get("correction"):
        c = summary["correction"]
        cost = ", ".join(
            f"step {i}: {s} s, {d} decode(s)/vector"
            for i, (s, d) in enumerate(zip(c["seconds_per_step"], c["decodes_per_vector_per_step"], strict=True))
        )
        start = "the reranked candidates" if c.get("starts_from") == "reranked" else "the greedy hypothesis"
        lines += [
            "",
            f"Correction with `{c['corrector']}` (width {c['width']}) from {start}: {c['steps_run']} of "
            f"{c['steps_asked']} steps run (it stops when the cosine stops rising); {cost}.",
        ]
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
        ax.hist(
            cos,
            bins=40,
            range=(min(0.0, float(np.min(cos))), 1.0),
            alpha=0.6,
            label=f"{name} (mean {np.mean(cos):.3f})",
        )
    ax.set_xlabel("cosine(target vector, re-embedded output)")
    ax.set_ylabel("sentences")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
