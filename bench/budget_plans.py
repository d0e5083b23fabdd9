"""Ways to spend one budget of decodes per vector, compared on the same vectors: which plan the rule should pick.

The budget rule (:mod:`lora_v2t.model.beam`) was chosen with it: with a corrector, part of every budget goes to
one step of corrector beams. This script puts plans of the same cost beside each other, each written as
``key=value`` pairs joined by commas:

- ``beams=N``: the greedy text and N beams of the hypothesizer, reranked by cosine (1 + N decodes);
- ``beams=N,corrector=WxK,steps=S``: then S steps of the corrector (``--corrector``, else the one the adapter
  names), each keeping the W best candidates and decoding K proposals (beam search) from each
  (1 + N + S x W x K decodes);
- ``beams=N,samples=M@T``: and M sampled texts at temperature T (seeded), all reranked (1 + N + M decodes;
  ``beams=0`` for samples alone);
- ``beams=N,partner=P``: and the greedy text and P beams of a second hypothesizer (``--partner``, loaded on the
  same base: two adapters' candidates pooled), all reranked (1 + N + 1 + P decodes; ``partner=0`` for its greedy
  text alone).

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
COUNTS = ("beams", "steps", "samples", "partner")
KEYS = ("beams", "corrector", "steps", "samples", "partner")
PARTNER = "partner"  # the second hypothesizer's adapter name on the shared base


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
    partner: int | None = None  # the second hypothesizer's beams (0: its greedy text alone; None: no partner)

    @property
    def decodes(self) -> int:
        """Decodes per vector at most: the greedy text, the beams, the samples, every corrector proposal and the
        partner's greedy text and beams."""
        partner = 0 if self.partner is None else 1 + self.partner
        return 1 + self.beams + self.samples + self.steps * self.width * self.proposals + partner


def parse_plan(spec: str) -> Plan:
    """A :class:`Plan` from ``beams=11,corrector=2x2,steps=1``; a one-line SystemExit naming what is wrong."""

    def fail(problem: str):
        examples = "beams=15, beams=11,corrector=2x2,steps=1, samples=15@0.8, beams=7,partner=7"
        raise SystemExit(f"plan {spec!r}: {problem} (e.g. {examples})")

    fields: dict = {}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        key = key.strip()
        if key in fields or key not in KEYS:
            fail(f"{key!r} is not one of {', '.join(KEYS)} (each once)")
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
    if any(fields.get(k, 0) < 0 for k in COUNTS):
        fail(f"counts ({', '.join(COUNTS)}) are >= 0")
    if 1 in (fields.get("beams"), fields.get("partner")):
        fail("beams and partner are 0 or at least 2 (one beam is the greedy text again)")
    if fields.get("steps") and (fields["width"] < 1 or fields["proposals"] < 1):
        fail("the corrector keeps at least 1 candidate and proposes at least 1 text from each")
    if fields.get("steps") and (fields.get("samples") or "partner" in fields):
        fail("the corrector with samples or a partner in one plan is not measured here")
    if not fields.get("temperature", 0.8) > 0:
        fail("a sampling temperature is > 0")
    return Plan(spec=spec, **fields)


def run_plan(v2t, vectors: np.ndarray, plan: Plan, corrector: str | None = None) -> tuple[list[str], np.ndarray, float]:
    """The best text per vector under ``plan``, its cosine, and the maximum decodes any vector spent
    (``corrector``: a corrector bundle, else the one the adapter names)."""
    from lora_v2t.model.correct import CorrectionConfig, correct

    if not plan.samples and plan.partner is None:
        cfg = CorrectionConfig(
            rerank=plan.beams,
            steps=plan.steps,
            corrector=corrector,
            width=max(plan.width, 1),
            proposals=max(plan.proposals, 1),
            min_gain=None,
            budget=plan.decodes,
        )
        trace = correct(v2t, vectors, cfg)
        return trace.final, np.asarray(trace.cosines[-1], dtype=np.float64), float(trace.spent.max())
    return reranked_pool(v2t, vectors, plan)


def reranked_pool(v2t, vectors: np.ndarray, plan: Plan) -> tuple[list[str], np.ndarray, float]:
    """The greedy text, ``plan.beams`` beams, ``plan.samples`` seeded samples and the partner's greedy text and
    beams per vector, reranked by cosine."""
    from lora_v2t.model.generate import reembed_cosines

    main = v2t.active_adapter
    pools = [[] for _ in vectors]
    try:
        for adapter, options in pool_calls(plan, main):
            v2t.set_adapter(adapter)
            for pool, texts in zip(pools, v2t.generate(vectors, **options), strict=True):
                pool.extend([texts] if isinstance(texts, str) else texts)  # one sequence comes back as a text
    finally:
        v2t.set_adapter(main)
    sizes = [len(pool) for pool in pools]
    cosines = reembed_cosines(v2t, [t for pool in pools for t in pool], np.repeat(vectors, sizes, axis=0), 0.0)
    flat, starts = [t for pool in pools for t in pool], np.cumsum([0, *sizes[:-1]])
    best = [int(start + np.argmax(cosines[start : start + size])) for start, size in zip(starts, sizes, strict=True)]
    return [flat[i] for i in best], cosines[best], float(max(sizes))


def pool_calls(plan: Plan, main: str) -> list[tuple[str, dict]]:
    """The ``generate`` calls of a pooled plan: (adapter name, options), the greedy text's first."""
    calls: list[tuple[str, dict]] = [(main, {})]
    if plan.beams:
        calls.append((main, {"num_beams": plan.beams, "num_return_sequences": plan.beams}))
    if plan.samples:
        sampling = {"do_sample": True, "temperature": plan.temperature, "seed": SAMPLE_SEED}
        calls.append((main, sampling | {"num_return_sequences": plan.samples}))
    if plan.partner is not None:
        calls.append((PARTNER, {}))
    if plan.partner:
        calls.append((PARTNER, {"num_beams": plan.partner, "num_return_sequences": plan.partner}))
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True, help="the hypothesizer")
    parser.add_argument("--corrector", help="the corrector of corrector=WxK plans (default: the one it names)")
    parser.add_argument("--partner", help="a second hypothesizer on the same base, for plans with partner=P")
    parser.add_argument("--data", type=Path, default=DEV, help="dev file, one sentence per line")
    parser.add_argument("--dev", type=int, default=150, help="sentences to decode (default 150)")
    parser.add_argument(
        "--plan", action="append", required=True, metavar="SPEC", help="a plan (repeatable; the first is the baseline)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "budget_plans.json")
    args = parser.parse_args()
    plans = [parse_plan(spec) for spec in args.plan]
    if bool(args.partner) != any(plan.partner is not None for plan in plans):
        parser.error("--partner DIR (the second hypothesizer) and plans with partner=P go together")
    if args.corrector and not any(plan.steps for plan in plans):
        parser.error("--corrector is the corrector of corrector=WxK plans: give one, or drop --corrector")
    from lora_v2t import load_adapter
    from lora_v2t.tasks.evalfile import read_eval_file
    from lora_v2t.tasks.metrics import bootstrap_interval, score_outputs

    data = read_eval_file(args.data, limit=args.dev)
    v2t = load_adapter(args.adapter, device="cpu")
    if args.partner:
        v2t.load_adapter(args.partner, name=PARTNER)
        if v2t.adapter_meta[PARTNER].encoder.spec != v2t.meta.encoder.spec:
            raise SystemExit(f"--partner {args.partner} reads another encoder's vectors: pair one encoder's")
    vectors = v2t.encode(data.sources)
    v2t.generate(vectors[:2])  # warm up (the first call builds the decoding vocabulary)
    boot = np.random.default_rng(0).integers(0, len(vectors), (200, len(vectors)))
    rows, per_sentence = [], {}
    for plan in plans:
        clock = time.perf_counter()
        texts, cosines, spent = run_plan(v2t, vectors, plan, args.corrector)
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
    extra = "".join(f"; {k} {v}" for k, v in (("corrector", args.corrector), ("partner", args.partner)) if v)
    print(f"\n{len(next(iter(per_sentence.values())))} sentences of {args.data.name}; adapter {args.adapter}{extra}\n")
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
        "corrector": args.corrector,
        "partner": args.partner,
        "data": str(args.data),
        "rows": rows,
        "per_sentence_cosines": {k: [round(float(x), 5) for x in v] for k, v in per_sentence.items()},
    }
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
