"""A budget of decodes per vector, turned into a beam over corrections (see :mod:`lora_v2t.model.correct`).

One decode is one output sequence of one ``generate`` call for one vector: the greedy hypothesis is 1, a beam
search of width 4 returning 4 sequences is 4, a shift step from 2 kept candidates with 3 shifts is 6.
:func:`plan_budget` turns a budget N and the sources of candidates enabled into the knobs of
:class:`~lora_v2t.model.correct.CorrectionConfig`; :func:`~lora_v2t.model.correct.correct` then never spends more
than N on any vector. The sources:

- ``beams``: step 0's beam search of the hypothesizer (B beams, reranked by cosine with the greedy text);
- ``shift``: the training-free correction, decoding v + a (v - e) for a = 0.5, 1, 2 (3 decodes per candidate);
- ``corrector``: the trained corrector the adapter names (or the one given), K proposals per candidate.

The rule (:func:`plan_budget`; its constants in :data:`RULE`) follows ``bench/correction.py --budgets
1,2,4,8,16`` on the first 300 sentences of ``dev_conversational.txt`` with the shipped ``use-gemma270m-ru-v3`` and
the split corrector it names (bf16, one torch thread on a shared 2-core CPU; mean cosine / chrF / exact %, the
decodes spent per vector in brackets where fewer than the budget; the seconds and 32 and 64 are in
docs/benchmarks-history.md, v6's curve in BENCHMARKS.md):

    budget   beams alone          shift                      corrector                  beams+shift+corrector
    1        0.782 / 39.5 / 6.3 (greedy)
    2        -                    -                          0.810 / 41.5 / 7.7         -
    4        0.844 / 47.2 / 11.3  0.829 / 44.0 / 9.0         0.814 / 41.7 / 7.7 (3.7)   -
    8        0.869 / 50.5 / 13.3  0.834 / 44.7 / 9.3 (6.8)   0.814 / 41.6 / 7.7 (4.0)   0.867 / 48.6 / 12.0
    16       0.887 / 53.8 / 16.0  0.850 / 47.3 / 10.7 (12.7) 0.814 / 41.6 / 7.7 (4.0)   0.884 / 52.2 / 14.0 (13)

Reranked beams gave the most per decode from 4 up (the mixed beam is level within the intervals, about +-0.013);
the corrector's one step is the best use of 2 decodes, and both corrections stop gaining after a step or two. The
first measurement (v2, its first corrector, 40 sentences: docs/benchmarks-history.md) agreed. So:

- N = 1: the greedy hypothesis alone, as without a budget. N = 2: one step of the trained corrector from it where
  the adapter names one (else the greedy hypothesis alone: 2 beams cost 3).
- N >= 3, no sources named: the greedy text and N - 1 beams, reranked by cosine.
- Sources named (``sources``; the corrector and shift stay there until a corrector that corrects changes the
  measurement): ``beams`` take half the budget (B = N // 2, at least 2, leaving one correction step), the rest goes
  to correction steps keeping W = 2 candidates per vector (1 when the rest pays for fewer than two candidates'
  proposals), each proposing K = 1 corrector text and the 3 shift decodes, for as long as the budget pays and the
  candidates change.

With v6 and its 8-slot corrector (+0.036 cosine in one step, against v3's +0.027), ``bench/budget_plans.py`` put
plans of 16 decodes beside the 15 beams on the first 150 sentences: 11 beams and one corrector step from the best 2
(2 proposals each) gained +0.003 cosine [-0.001, +0.009] and lost 0.6 chrF; fewer beams and more correction did
worse, and sampled candidates worse still (-0.013). The corrector adds little to the best of many beams, so the rule
stays.

The commands' default budget (:data:`lora_v2t.config.DEFAULT_BUDGET`, 8) sits at the knee of the curve: 4 to 8
decodes add +0.025 cosine, 8 to 16 add +0.018, each doubling costing about twice the time.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..util.errors import V2TError
from .correct import SHIFT, CorrectionConfig, check_budget

BEAMS, CORRECTOR = "beams", "corrector"
SOURCES = (BEAMS, SHIFT, CORRECTOR)
MIN_BEAMS = 2  # a beam search of one beam is the greedy hypothesis again


@dataclass(frozen=True)
class BudgetRule:
    """The constants of :func:`plan_budget` (see the module's docstring for the measurement behind them)."""

    beam_share: float = 0.5  # of the budget, to step 0's beams when named correction sources share it
    width: int = 2  # candidates kept per vector between steps, when the budget pays for their proposals
    proposals: int = 1  # the corrector's proposals per kept candidate and step
    shifts: tuple[float, ...] = (0.5, 1.0, 2.0)


RULE = BudgetRule()


def parse_budget(value) -> int:
    """A budget from the command line's text (``"8"``) or a number: an integer >= 1, else a one-line refusal."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            pass  # refused just below, as given
    return check_budget(value)


def parse_sources(text: str | list | tuple | None) -> tuple[str, ...] | None:
    """Sources from ``"beams,shift"`` (the command line's ``--sources``) or a sequence of names; None stays None
    (the rule chooses). Raises for an unknown, repeated or missing name."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    unknown = [n for n in names if n not in SOURCES]
    if not names or unknown or len(set(names)) != len(names):
        raise V2TError(
            f"sources must be distinct names among {', '.join(SOURCES)} (e.g. --sources beams,shift), got {text!r}"
        )
    return tuple(n for n in SOURCES if n in names)  # in the canonical order


def least_budget(sources: tuple[str, ...], rule: BudgetRule = RULE) -> int:
    """The smallest budget that spends something on each of ``sources``: the greedy hypothesis, 2 beams, and one
    correction step from one candidate (3 shift decodes, K corrector proposals)."""
    return 1 + (MIN_BEAMS if BEAMS in sources else 0) + step_cost(sources, rule)


def step_cost(sources: tuple[str, ...], rule: BudgetRule = RULE) -> int:
    """Decodes one kept candidate's proposals cost in a correction step."""
    return (len(rule.shifts) if SHIFT in sources else 0) + (rule.proposals if CORRECTOR in sources else 0)


def plan_budget(
    budget: int,
    sources=None,
    *,
    corrector: str | None = None,
    has_corrector: bool = False,
    sample: bool = False,
    rule: BudgetRule = RULE,
) -> CorrectionConfig:
    """The beam over corrections that spends at most ``budget`` decodes per vector.

    Args:
        budget: decodes per vector (an integer >= 1; 1 = the greedy hypothesis).
        sources: names among :data:`SOURCES` (or ``"beams,shift"``) to use, refused when the budget cannot pay
            for them all; None: the rule's choice (:func:`default_sources`).
        corrector: a corrector bundle folder or hub id (None: the one the adapter names); ``"shift"``: no trained
            corrector.
        has_corrector: whether the adapter names a corrector (used when ``corrector`` is None).
        sample: the corrector samples its proposals instead of searching beams (needs the corrector).
    """
    budget = check_budget(budget)
    asked = parse_sources(sources)
    trained = corrector != SHIFT and (corrector is not None or has_corrector)
    if asked is not None and CORRECTOR in asked and corrector == SHIFT:
        raise V2TError(
            "the sources name the corrector but corrector='shift' (--corrector shift) asks for none: drop one of them"
        )
    if asked is None:
        chosen = default_sources(budget, trained)
    else:
        chosen, least = asked, least_budget(asked, rule)
        if budget < least:
            parts = (
                ["the greedy hypothesis"]
                + ["2 beams"] * (BEAMS in asked)
                + ["one correction step"] * (asked != (BEAMS,))
            )
            raise V2TError(
                f"budget {budget} is too small for {' + '.join(asked)}: {', '.join(parts)} cost {least} "
                f"decodes per vector; the least budget that works is {least} (--budget {least})"
            )
    if sample and CORRECTOR not in chosen:
        raise V2TError(
            "sampled proposals are the corrector's: enable it (an adapter that names a corrector, "
            "--corrector DIR, --sources ...,corrector) or drop sample_proposals (--sample-proposals)"
        )
    return configure(budget, chosen, corrector, sample, rule)


def default_sources(budget: int, trained: bool) -> tuple[str, ...]:
    """What a budget is spent on when no sources are named: nothing at 1; the corrector's one step at 2 (where
    there is a ``trained`` corrector); from 3 on, the beams (the measurement in the module's docstring)."""
    if budget >= 1 + MIN_BEAMS:
        return (BEAMS,)
    return (CORRECTOR,) if budget == 2 and trained else ()


def configure(
    budget: int, sources: tuple[str, ...], corrector: str | None, sample: bool, rule: BudgetRule = RULE
) -> CorrectionConfig:
    """The :class:`CorrectionConfig` of the rule for ``sources`` that fit ``budget``."""
    proposers = tuple(n for n in sources if n != BEAMS)
    if not proposers:
        beams = budget - 1 if BEAMS in sources and budget - 1 >= MIN_BEAMS else 0
        return CorrectionConfig(rerank=beams, budget=budget)
    cost = step_cost(sources, rule)
    beams = 0
    if BEAMS in sources:  # the rule's share, as long as one correction step still fits after it
        beams = min(max(MIN_BEAMS, int(budget * rule.beam_share)), budget - 1 - cost)
    rest = budget - 1 - beams
    width = rule.width if rest >= rule.width * cost else 1
    return CorrectionConfig(
        steps=rest // cost,
        corrector=SHIFT if proposers == (SHIFT,) else corrector,
        width=width,
        shifts=rule.shifts,
        min_gain=None,
        rerank=beams,
        budget=budget,
        proposals=rule.proposals,
        sample=sample,
        shift=SHIFT in proposers and CORRECTOR in proposers,
    )


def describe(cfg: CorrectionConfig) -> dict:
    """What a budget's plan is, as reports and OUT.meta.json record it."""
    return {
        "budget": cfg.budget,
        "sources": list(cfg.sources),
        "beams": cfg.rerank,
        "width": cfg.width,
        "steps": cfg.steps,
        "proposals": cfg.proposals if CORRECTOR in cfg.sources else 0,
        "sample": cfg.sample,
        "shifts": list(cfg.shifts) if SHIFT in cfg.sources else [],
        "corrector": cfg.corrector if CORRECTOR in cfg.sources else None,
    }
