"""Correction against reranking at equal decoding cost: what each extra decode per vector buys.

Decodes the first --dev sentences of a dev file from their vectors with a hypothesizer and compares, on the same
vectors in one run:

- greedy (1 decode per vector);
- greedy + K beams, keeping the candidate closest to the vector (reranking; counted as 1 + K decodes);
- training-free correction (``shift``: v + a (v - e), a = 0.5, 1, 2; 3 decodes per step and kept candidate),
  after each step;
- the trained corrector (1 decode per step and kept candidate), after each step, when one is given or named;
- both corrections again, starting from the greedy text and --start-beams beams (reranking, then correcting).

Every correction keeps --width candidates per vector between steps.

Every system's text is scored by corpus chrF and BLEU (sacrebleu), exact match and the re-embedding cosine, with
its decodes per vector and seconds, and its cosine gain over greedy with a paired 95% bootstrap interval (the same
resamples of the same sentences for both). Every two correctors' rows at the same step are compared the same way,
and the JSON keeps each system's per-sentence cosines for any other comparison.

    .venv/bin/python bench/correction.py --adapter checkpoints/adapters/use-gemma270m-ru-v2 --dev 300 --steps 5

With ``--budgets 1,4,8,16`` it measures instead the cost-quality curve of a budget in decodes per vector (see
:mod:`lora_v2t.model.beam`): for each budget, the plan of :func:`~lora_v2t.model.beam.plan_budget` for reranking
alone (``beams``), ``shift``, the ``corrector``, the mixed beam (all three) and the rule's own choice (``rule``,
what ``--budget N`` does), each where the budget pays for it, on the same sentences in one run: cosine, chrF,
exact match, the decodes spent per vector and seconds per sentence.

    OMP_NUM_THREADS=1 .venv/bin/python bench/correction.py --adapter checkpoints/adapters/use-gemma270m-ru-v3 \\
        --dev 40 --budgets 1,4,8,16
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "ru" / "dev_conversational.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True, help="the hypothesizer")
    parser.add_argument("--corrector", help="its corrector (default: the one it names; none: skip)")
    parser.add_argument(
        "--also-corrector",
        action="append",
        default=[],
        metavar="DIR",
        help="another corrector bundle to compare on the same vectors (repeatable; not with --budgets)",
    )
    parser.add_argument("--data", type=Path, default=DEV, help="dev file, one sentence per line")
    parser.add_argument("--dev", type=int, default=300, help="sentences to decode (default 300)")
    parser.add_argument("--steps", type=int, default=5, help="correction steps (default 5)")
    parser.add_argument("--beams", type=int, nargs="*", default=[4, 6], help="reranked beam widths (default 4 6)")
    parser.add_argument("--shift-steps", type=int, default=2, help="training-free correction steps (default 2)")
    parser.add_argument(
        "--start-beams",
        type=int,
        default=6,
        help="beams reranked before correcting, for the 'reranked + ...' rows (default 6; 0: skip)",
    )
    parser.add_argument("--width", type=int, default=1, help="candidates kept per vector between steps (default 1)")
    parser.add_argument(
        "--budgets",
        help="comma-separated budgets (decodes per vector) for the cost-quality curve "
        "instead of the comparison above, e.g. 1,4,8,16",
    )
    parser.add_argument(
        "--systems",
        default=",".join(CURVE_SYSTEMS),
        help=f"with --budgets: the systems to run, comma-separated among {', '.join(CURVE_SYSTEMS)} "
        "(default: all; budget 1 is always the greedy hypothesis)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="results (default: bench/results/correction.json, correction_budgets.json with --budgets)",
    )
    args = parser.parse_args()
    if args.systems != ",".join(CURVE_SYSTEMS) and not args.budgets:
        parser.error("--systems chooses among the systems of the cost-quality curve: give --budgets too")
    args.out = args.out or ROOT / "bench" / "results" / (
        "correction_budgets.json" if args.budgets else "correction.json"
    )
    from lora_v2t import load_adapter
    from lora_v2t.model.correct import SHIFT, CorrectionConfig, correct
    from lora_v2t.tasks.evalfile import read_eval_file
    from lora_v2t.tasks.metrics import score_outputs

    data = read_eval_file(args.data, limit=args.dev)
    v2t = load_adapter(args.adapter, device="cpu")
    vectors = v2t.encode(data.sources)
    if args.budgets:
        return budget_curve(args, v2t, vectors, data)
    rows, boot = [], np.random.default_rng(0).integers(0, len(vectors), (200, len(vectors)))
    per_sentence: dict[str, np.ndarray] = {}

    def record(name: str, texts: list[str], cosines, decodes: int, seconds: float) -> None:
        if name in per_sentence:
            raise SystemExit(f"two systems are named {name!r}: give correctors in folders of different names")
        scores = score_outputs(texts, data.references, cosines, boot)
        per_sentence[name] = np.asarray(cosines, dtype=np.float64)
        gain = paired_gain(per_sentence[name], per_sentence["greedy"], boot)  # greedy is always the first row
        rows.append(
            {
                "system": name,
                "decodes": decodes,
                "seconds": round(seconds, 1),
                **{m: round(scores[m][0], 4) for m in ("chrf", "bleu", "exact_match", "cosine")},
                "cosine_gain": gain,
            }
        )
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)

    def traced(name: str, cfg: CorrectionConfig, with_greedy: bool) -> None:
        trace = correct(v2t, vectors, cfg)
        decodes, seconds = 0, 0.0
        for step, (texts, cosines) in enumerate(zip(trace.texts, trace.cosines, strict=True)):
            decodes, seconds = decodes + trace.decodes[step], seconds + trace.seconds[step]
            if step or with_greedy:
                record(f"{name}, step {step}" if step else "greedy", texts, cosines, decodes, seconds)

    shift = CorrectionConfig(steps=args.shift_steps, corrector=SHIFT, min_gain=0.0, width=args.width)
    traced(SHIFT, shift, with_greedy=True)
    for beams in args.beams:
        clock = time.perf_counter()
        cfg = CorrectionConfig(steps=0, rerank=beams)
        trace = correct(v2t, vectors, cfg)
        record(
            f"greedy + {beams} beams reranked", trace.final, trace.cosines[-1], 1 + beams, time.perf_counter() - clock
        )
    trained = None
    for corrector in args.also_corrector:  # other correctors of the same hypothesizer, on the same vectors
        other = CorrectionConfig(steps=args.steps, corrector=corrector, min_gain=0.0, width=args.width)
        traced(f"corrector {corrector_label(corrector)}", other, with_greedy=False)
    if args.corrector != "none" and (args.corrector or v2t.meta.corrector):
        trained = CorrectionConfig(steps=args.steps, corrector=args.corrector, min_gain=0.0, width=args.width)
        traced("corrector", trained, with_greedy=False)
    if args.start_beams > 1:
        for name, cfg in ((SHIFT, shift), ("corrector", trained)):
            if cfg is not None:
                traced(
                    f"{args.start_beams} beams reranked + {name}",
                    replace(cfg, rerank=args.start_beams),
                    with_greedy=False,
                )
    report(args, len(vectors), rows, per_sentence, boot)


def report(args, sentences: int, rows: list[dict], per_sentence: dict[str, np.ndarray], boot: np.ndarray) -> None:
    """The comparison's table, its correctors compared pairwise, and the JSON of both with per-sentence cosines."""
    print(f"\n{sentences} sentences of {args.data.name}; adapter {args.adapter}\n")
    print(
        "| system | decodes per vector | seconds | chrF | BLEU | exact % | cosine | gain over greedy [95%] |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['system']} | {r['decodes']} | {r['seconds']} | {r['chrf']:.1f} | {r['bleu']:.1f} | "
            f"{r['exact_match']:.1f} | {r['cosine']:.4f} | {format_gain(r['cosine_gain'])} |"
        )
    comparisons = compare_correctors(per_sentence, boot)
    for c in comparisons:
        print(f"{c['a']} against {c['b']}: cosine {format_gain(c['cosine_gain'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "adapter": str(args.adapter),
                "data": str(args.data),
                "rows": rows,
                "corrector_comparisons": comparisons,
                "per_sentence_cosine": {k: [round(float(x), 4) for x in v] for k, v in per_sentence.items()},
            },
            indent=1,
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )


def corrector_label(path: str) -> str:
    """A bundle's folder name, with its run's name when it is a run's ``final`` (two runs' ends stay apart)."""
    where = Path(path)
    return f"{where.parent.name}/{where.name}" if where.name == "final" and where.parent.name else where.name


def paired_gain(cosines: np.ndarray, baseline: np.ndarray, boot: np.ndarray) -> list[float]:
    """Mean per-sentence cosine gain of ``cosines`` over ``baseline`` (the same sentences), with its 95% interval
    over the bootstrap resamples ``boot``: [gain, low, high]."""
    from lora_v2t.tasks.metrics import bootstrap_interval

    return [round(float(x), 4) for x in bootstrap_interval(cosines - baseline, boot)]


def format_gain(gain: list[float]) -> str:
    return f"{gain[0]:+.4f} [{gain[1]:+.4f}, {gain[2]:+.4f}]"


def compare_correctors(per_sentence: dict[str, np.ndarray], boot: np.ndarray) -> list[dict]:
    """Every two correctors' rows at the same step from the greedy text, paired on the same sentences: the first's
    cosine gain over the second, step 1's pairs first."""
    by_step: dict[int, list[str]] = {}
    for name in per_sentence:
        if name.startswith("corrector") and ", step " in name:
            by_step.setdefault(int(name.rsplit(", step ", 1)[1]), []).append(name)
    return [
        {"a": a, "b": b, "cosine_gain": paired_gain(per_sentence[a], per_sentence[b], boot)}
        for step in sorted(by_step)
        for i, a in enumerate(by_step[step])
        for b in by_step[step][i + 1 :]
    ]


CURVE_SYSTEMS = {
    "beams": "beams",
    "shift": "shift",
    "corrector": "corrector",
    "mixed": "beams,shift,corrector",
    "rule": None,
}


def budget_curve(args, v2t, vectors: np.ndarray, data) -> None:
    """Every system at every budget it fits (budget 1: greedy, once), on the same vectors; a system whose plan is
    another's at that budget is not run again but named (``= beams``)."""
    from lora_v2t.model.beam import describe, plan_budget
    from lora_v2t.model.correct import correct
    from lora_v2t.tasks.metrics import score_outputs
    from lora_v2t.util.errors import V2TError

    budgets = sorted({int(b) for b in args.budgets.split(",")})
    systems = {n.strip() for n in args.systems.split(",")}
    if not systems <= set(CURVE_SYSTEMS):
        raise SystemExit(f"--systems: names among {', '.join(CURVE_SYSTEMS)}, got {args.systems!r}")
    has_corrector = args.corrector != "none" and bool(args.corrector or v2t.meta.corrector)
    corrector = None if args.corrector in (None, "none") else args.corrector
    boot = np.random.default_rng(0).integers(0, len(vectors), (200, len(vectors)))
    v2t.generate(vectors[:2])  # warm up (the first call builds the decoding vocabulary)
    rows = []
    for budget in budgets:
        done = {}
        for name, sources in CURVE_SYSTEMS.items():
            if budget == 1 and name != "rule" or name in ("corrector", "mixed") and not has_corrector:
                continue
            if budget > 1 and name not in systems:
                continue
            try:
                plan = plan_budget(budget, sources, corrector=corrector, has_corrector=has_corrector)
            except V2TError:
                continue  # the budget does not pay for these sources
            key = json.dumps(describe(plan))
            if key in done:
                rows.append(dict(done[key], system=f"{name} (= {done[key]['system']})"))
                print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
                continue
            clock = time.perf_counter()
            trace = correct(v2t, vectors, plan)
            seconds = time.perf_counter() - clock
            scores = score_outputs(trace.final, data.references, trace.cosines[-1], boot)
            rows.append(
                {
                    "system": "greedy" if budget == 1 else name,
                    "budget": budget,
                    "sources": "+".join(plan.sources) or "greedy",
                    "beams": plan.rerank,
                    "width": plan.width,
                    "spent": round(float(trace.spent.mean()), 2),
                    "seconds_per_sentence": round(seconds / len(vectors), 3),
                    **{m: round(scores[m][0], 4) for m in ("cosine", "chrf", "exact_match")},
                    "cosine_interval": [round(x, 4) for x in scores["cosine"][1:]],
                }
            )
            done[key] = rows[-1]
            print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    print(f"\n{len(vectors)} sentences of {args.data.name}; adapter {args.adapter}\n")
    print(
        "| budget | system | sources | decodes spent | s / sentence | cosine | chrF | exact % |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['budget']} | {r['system']} | {r['sources']} | {r['spent']} | {r['seconds_per_sentence']} | "
            f"{r['cosine']:.4f} | {r['chrf']:.1f} | {r['exact_match']:.1f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "adapter": str(args.adapter),
                "data": str(args.data),
                "sentences": len(vectors),
                "budgets": budgets,
                "rows": rows,
            },
            indent=1,
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
