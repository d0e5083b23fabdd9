"""Ways to spend one budget of decodes per vector, compared on the same vectors: which plan the rule should pick.

The budget rule (:mod:`lora_v2t.model.beam`) spends every budget from 3 up on reranked beams. This script puts
other plans of the same cost beside them, each written as ``key=value`` pairs joined by commas:

- ``beams=N``: the greedy text and N beams of the hypothesizer, reranked by cosine (1 + N decodes);
- ``beams=N,corrector=WxK,steps=S``: then S steps of the corrector the adapter names, each keeping the W best
  candidates and decoding K proposals (beam search) from each (1 + N + S x W x K decodes);
- ``beams=N,samples=M@T``: and M sampled texts at temperature T (seeded), all reranked (1 + N + M decodes;
  ``beams=0`` for samples alone).

Every plan's text is scored by corpus chrF, exact match and the re-embedding cosine, with its decodes per vector
and seconds per sentence, and its cosine gain over the first plan with a paired 95% bootstrap interval (the same
resamples of the same sentences). The JSON keeps each plan's per-sentence cosines.

    OMP_NUM_THREADS=1 .venv/bin/python bench/budget_plans.py --adapter checkpoints/adapters/use-gemma270m-ru-v6 \\
        --dev 150 --plan beams=15 --plan beams=11,corrector=2x2,steps=1 --plan beams=0,samples=15@0.8
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "ru" / "dev_conversational.txt"
SAMPLE_SEED = 0


@dataclass(frozen=True)
class Plan:
    """One way to spend a budget (see the module's docstring for the spelling)."""

    spec: str
    beams: int = 0
    width: int = 0  # candidates the corrector keeps per step
    proposals: int = 0  # the corrector's proposals per kept candidate
    steps: int = 0
    samples: int = 0
    temperature: float = 0.8

    @property
    def decodes(self) -> int:
        """Decodes per vector at most: the greedy text, the beams, the samples and every corrector proposal."""
        return 1 + self.beams + self.samples + self.steps * self.width * self.proposals


def parse_plan(spec: str) -> Plan:
    """A :class:`Plan` from ``beams=11,corrector=2x2,steps=1``; a one-line SystemExit naming what is wrong."""

    def fail(problem: str):
        raise SystemExit(f"plan {spec!r}: {problem} (e.g. beams=15, beams=11,corrector=2x2,steps=1, samples=15@0.8)")

    fields: dict = {}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        key = key.strip()
        if key in fields or key not in ("beams", "corrector", "steps", "samples"):
            fail(f"{key!r} is not one of beams, corrector, steps, samples (each once)")
        try:
            if key == "corrector":
                width, proposals = (int(x) for x in value.split("x"))
                fields |= {"corrector": True, "width": width, "proposals": proposals}
            elif key == "samples":
                count, _, temperature = value.partition("@")
                fields |= {"samples": int(count), "temperature": float(temperature or 0.8)}
            else:
                fields[key] = int(value)
        except ValueError:
            fail(f"{key}={value!r} is not a number (corrector=WxK, samples=M@T)")
    if fields.pop("corrector", False) != bool(fields.get("steps")):
        fail("corrector=WxK and steps=S go together")
    if fields.get("beams", 0) == 1 or any(fields.get(k, 0) < 0 for k in ("beams", "steps", "samples")):
        fail("beams is 0 or at least 2 (one beam is the greedy text again); counts are >= 0")
    if fields.get("steps") and (fields["width"] < 1 or fields["proposals"] < 1):
        fail("the corrector keeps at least 1 candidate and proposes at least 1 text from each")
    if fields.get("steps") and fields.get("samples"):
        fail("samples and the corrector in one plan are not measured here")
    if not fields.get("temperature", 0.8) > 0:
        fail("a sampling temperature is > 0")
    return Plan(spec=spec, **fields)


def run_plan(v2t, vectors: np.ndarray, plan: Plan) -> tuple[list[str], np.ndarray, float]:
    """The best text per vector under ``plan``, its cosine, and the maximum decodes any vector spent."""
    from lora_v2t.model.correct import CorrectionConfig, correct

    if not plan.samples:
        cfg = CorrectionConfig(
            rerank=plan.beams,
            steps=plan.steps,
            width=max(plan.width, 1),
            proposals=max(plan.proposals, 1),
            min_gain=None,
            budget=plan.decodes,
        )
        trace = correct(v2t, vectors, cfg)
        return trace.final, np.asarray(trace.cosines[-1], dtype=np.float64), float(trace.spent.max())
    return reranked_pool(v2t, vectors, plan)


def reranked_pool(v2t, vectors: np.ndarray, plan: Plan) -> tuple[list[str], np.ndarray, float]:
    """The greedy text, ``plan.beams`` beams and ``plan.samples`` seeded samples per vector, reranked by cosine."""
    from lora_v2t.model.generate import reembed_cosines

    pools = [[text] for text in v2t.generate(vectors)]
    calls = [{"num_beams": plan.beams, "num_return_sequences": plan.beams}] if plan.beams else []
    calls.append(
        {"do_sample": True, "temperature": plan.temperature, "num_return_sequences": plan.samples, "seed": SAMPLE_SEED}
    )
    for options in calls:
        for pool, texts in zip(pools, v2t.generate(vectors, **options), strict=True):
            pool.extend([texts] if isinstance(texts, str) else texts)  # one sequence comes back as a text
    sizes = [len(pool) for pool in pools]
    cosines = reembed_cosines(v2t, [t for pool in pools for t in pool], np.repeat(vectors, sizes, axis=0), 0.0)
    flat, starts = [t for pool in pools for t in pool], np.cumsum([0, *sizes[:-1]])
    best = [int(start + np.argmax(cosines[start : start + size])) for start, size in zip(starts, sizes, strict=True)]
    return [flat[i] for i in best], cosines[best], float(max(sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True, help="the hypothesizer (its corrector: the one it names)")
    parser.add_argument("--data", type=Path, default=DEV, help="dev file, one sentence per line")
    parser.add_argument("--dev", type=int, default=150, help="sentences to decode (default 150)")
    parser.add_argument(
        "--plan", action="append", required=True, metavar="SPEC", help="a plan (repeatable; the first is the baseline)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "budget_plans.json")
    args = parser.parse_args()
    plans = [parse_plan(spec) for spec in args.plan]
    from lora_v2t import load_adapter
    from lora_v2t.tasks.evalfile import read_eval_file
    from lora_v2t.tasks.metrics import bootstrap_interval, score_outputs

    data = read_eval_file(args.data, limit=args.dev)
    v2t = load_adapter(args.adapter, device="cpu")
    vectors = v2t.encode(data.sources)
    v2t.generate(vectors[:2])  # warm up (the first call builds the decoding vocabulary)
    boot = np.random.default_rng(0).integers(0, len(vectors), (200, len(vectors)))
    rows, per_sentence = [], {}
    for plan in plans:
        clock = time.perf_counter()
        texts, cosines, spent = run_plan(v2t, vectors, plan)
        seconds = time.perf_counter() - clock
        assert spent <= plan.decodes, f"{plan.spec} spent {spent} decodes, more than its {plan.decodes}"
        scores = score_outputs(texts, data.references, cosines, boot)
        per_sentence[plan.spec] = cosines
        gain = bootstrap_interval(cosines - per_sentence[plans[0].spec], boot)
        rows.append(
            {
                "plan": plan.spec,
                "decodes": plan.decodes,
                "seconds_per_sentence": round(seconds / len(vectors), 3),
                **{m: round(scores[m][0], 4) for m in ("cosine", "chrf", "exact_match")},
                "cosine_gain": [round(float(x), 4) for x in gain],
            }
        )
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    report(args, rows, per_sentence)


def report(args, rows: list[dict], per_sentence: dict[str, np.ndarray]) -> None:
    """The table, and the JSON with per-sentence cosines."""
    print(f"\n{len(next(iter(per_sentence.values())))} sentences of {args.data.name}; adapter {args.adapter}\n")
    print("| plan | decodes | s / sentence | cosine | gain over the first [95%] | chrF | exact % |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        gain = "{:+.4f} [{:+.4f}, {:+.4f}]".format(*r["cosine_gain"])
        print(
            f"| `{r['plan']}` | {r['decodes']} | {r['seconds_per_sentence']} | {r['cosine']:.4f} | {gain} | "
            f"{r['chrf']:.1f} | {r['exact_match']:.1f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "adapter": str(args.adapter),
        "data": str(args.data),
        "rows": rows,
        "per_sentence_cosines": {k: [round(float(x), 5) for x in v] for k, v in per_sentence.items()},
    }
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
