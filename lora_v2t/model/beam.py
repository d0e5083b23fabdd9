"""A budget of decodes per vector, turned into a beam over corrections (see :mod:`lora_v2t.model.correct`).

One decode is one output sequence of one ``generate`` call for one vector: the greedy hypothesis is 1, a beam
search of width 4 returning 4 sequences is 4, a shift step from 2 kept candidates with 3 shifts is 6.
:func:`plan_budget` turns a budget N and the sources of candidates enabled into the knobs of
:class:`~lora_v2t.model.correct.CorrectionConfig`; :func:`~lora_v2t.model.correct.correct` then never spends more
than N on any vector. The sources:

- ``beams``: step 0's beam search of the hypothesizer (B beams, reranked by cosine with the greedy text);
- ``corrector``: the trained corrector the adapter names (or the one given): one step from the closest candidate,
  a beam search of K corrector texts (or K samples);
- ``shift``: the training-free correction, decoding v + a (v - e) for a = 0.5, 1, 2 (3 decodes per candidate).

The rule (:func:`plan_budget`; its constants in :data:`RULE`) follows ``bench/budget_plans.py`` on all 1000
sentences of ``dev_conversational.txt`` with the shipped ``use-gemma270m-ru-v8`` and the corrector it names
(``use-gemma270m-ru-v6-corrector2``; bf16, two torch threads on a 2-core CPU, 2026-12-08; cosine gain over the
greedy text and N - 1 reranked beams, paired 95% interval; BENCHMARKS.md has the chrF, exact match and seconds):

    budget   greedy + N - 1 beams   the rule with a corrector                      gain over the beams
    3        0.838                  one step of 2 corrector beams from greedy       +0.0057 [+0.0017, +0.0097]
    4        0.853                  one step of 3 corrector beams from greedy       +0.0012 [-0.0029, +0.0051]
    8        0.876                  5 beams, then 2 corrector beams from the best   +0.0028 [+0.0004, +0.0052]
    16       0.894                  11 beams, then 4 corrector beams from the best  +0.0021 [+0.0003, +0.0041]
    32       0.901 (every third)    23 beams, then 8 corrector beams from the best  +0.0063 [+0.0035, +0.0093]
    64       0.910 (every third)    47 beams, then 16 corrector beams: 0.917       (unpaired: another day's run)

The other splits measured were level with these or below them: at 4, 2 beams and one corrector text (-0.0011 over
the beams); at 8, 3 beams and 4 corrector beams (+0.0018); at 16, 7 beams and 8 corrector beams (+0.0030, 1.5 times
the seconds of the rule's split, paired against it +0.0008 [-0.0013, +0.0029]). chrF stays within 0.7 of the beams'
at every budget and exact match within 1.6 points (below the beams' by 0.5 at 8 and 0.8 at 16); the corrector's
step costs 6-51% more seconds than as many beams. Budget 32 was measured on every third line (334 sentences).
Budget 2 is the corrector's one step (+0.034 over greedy).

So, with no sources named:

- N = 1: the greedy hypothesis alone, as without a budget.
- With a trained corrector (the adapter names one that is at hand, or one is given; a named folder that is
  missing is warned about and counts as none: :func:`~lora_v2t.model.correct.corrector_at_hand`): N = 2 to 4, one
  step of N - 1 corrector beams from the greedy text; N >= 5, the greedy text and B beams, then one step of K
  corrector beams from the closest of them, K = N // 4 (at least 2) and B = N - 1 - K.
- Without one: N >= 3, the greedy text and N - 1 beams, reranked by cosine (N = 2: the greedy text alone, as 2
  beams cost 3).

Named sources (``sources``) follow the same shapes: ``corrector`` alone is one step of N - 1 corrector beams from
the greedy text (measured up to 15); ``beams,corrector`` the split above, keeping at least 2 beams (so at N = 4, 2
beams and one corrector text); ``shift`` with or without the others
keeps the older rule, measured with v3 (docs/benchmarks-history.md: the mixed beam was level with the beams from 4
decodes up): the beams take half the budget (at least 2, leaving one step), the rest goes to correction steps
keeping W = 2 candidates per vector (1 when the rest pays for fewer), each proposing the 3 shift decodes and one
corrector text where the corrector is named, for as long as the budget pays and the candidates change.

The commands' default budget (:data:`lora_v2t.config.DEFAULT_BUDGET`, 8) sits at the knee of the curve: 4 to 8
decodes add about +0.025 cosine, 8 to 16 about +0.018, each doubling costing about twice the time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..util.errors import V2TError
from .correct import SHIFT, CorrectionConfig, check_budget

BEAMS, CORRECTOR = "beams", "corrector"
SOURCES = (BEAMS, SHIFT, CORRECTOR)
MIN_BEAMS = 2  # a beam search of one beam is the greedy hypothesis again


@dataclass(frozen=True)
class BudgetRule:
    """The constants of :func:`plan_budget` (see the module's docstring for the measurement behind them)."""

    beams_from: int = 5  # with a trained corrector, the least budget whose default adds beams before its step
    corrector_part: int = 4  # beside beams, the corrector's beams are budget // corrector_part (at least 2)
    beam_share: float = 0.5  # with shift: of the budget, to step 0's beams
    width: int = 2  # with shift: candidates kept per vector between steps, when the budget pays for their proposals
    proposals: int = 1  # with shift: the corrector's proposals per kept candidate and step
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
    has_corrector: bool | Callable[[], bool] = False,
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
        has_corrector: whether the adapter names a corrector at hand, or a callable that says so (called only when
            the rule chooses: no ``sources``, no ``corrector``).
        sample: the corrector samples its proposals instead of searching beams (needs the corrector).
    """
    budget = check_budget(budget)
    asked = parse_sources(sources)
    chooses = asked is None and corrector is None
    at_hand = chooses and (has_corrector() if callable(has_corrector) else has_corrector)
    trained = corrector != SHIFT and (corrector is not None or bool(at_hand))
    if asked is not None and CORRECTOR in asked and corrector == SHIFT:
        raise V2TError(
            "the sources name the corrector but corrector='shift' (--corrector shift) asks for none: drop one of them"
        )
    if asked is None:
        chosen = default_sources(budget, trained, rule)
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
        if asked is None and trained:
            raise V2TError(
                f"budget {budget} has no corrector step to sample: sampled proposals (--sample-proposals) need a "
                "budget of 2 or more"
            )
        raise V2TError(
            "sampled proposals are the corrector's: enable it (an adapter that names a corrector, "
            "--corrector DIR, --sources ...,corrector) or drop sample_proposals (--sample-proposals)"
        )
    return configure(budget, chosen, corrector, sample, rule)


def default_sources(budget: int, trained: bool, rule: BudgetRule = RULE) -> tuple[str, ...]:
    """What a budget is spent on when no sources are named (the measurement in the module's docstring): nothing
    at 1; with a ``trained`` corrector, its step from 2 on and beams before it from ``rule.beams_from``; without
    one, beams from 3."""
    if trained and budget >= 2:
        return (BEAMS, CORRECTOR) if budget >= rule.beams_from else (CORRECTOR,)
    return (BEAMS,) if budget >= 1 + MIN_BEAMS else ()


def configure(
    budget: int, sources: tuple[str, ...], corrector: str | None, sample: bool, rule: BudgetRule = RULE
) -> CorrectionConfig:
    """The :class:`CorrectionConfig` of the rule for ``sources`` that fit ``budget``."""
    proposers = tuple(n for n in sources if n != BEAMS)
    if not proposers:
        beams = budget - 1 if BEAMS in sources and budget - 1 >= MIN_BEAMS else 0
        return CorrectionConfig(rerank=beams, budget=budget)
    if SHIFT not in proposers:
        return corrector_step(budget, BEAMS in sources, corrector, sample, rule)
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


def corrector_step(
    budget: int, beams: bool, corrector: str | None, sample: bool, rule: BudgetRule = RULE
) -> CorrectionConfig:
    """One step of K corrector beams (or samples) from the closest of the greedy text and B reranked beams:
    without ``beams``, K = budget - 1 from the greedy text; with them, K = budget // ``rule.corrector_part``, at
    least 2 where 2 beams still fit (1 at budget 4), and B = budget - 1 - K."""
    k = budget - 1
    if beams:
        k = min(max(2, budget // rule.corrector_part), budget - 1 - MIN_BEAMS)
    return CorrectionConfig(
        steps=1, corrector=corrector, min_gain=None, rerank=budget - 1 - k, budget=budget, proposals=k, sample=sample
    )


def explain(cfg: CorrectionConfig) -> str:
    """A budget's plan in words, as the demo prints it: "the greedy text and 5 beams, then one step of 2
    corrector beams from the closest"."""
    start = "the greedy text" + (f" and {cfg.rerank} beams" if cfg.rerank > 1 else "")
    if not cfg.steps:
        return start
    if cfg.proposers == (CORRECTOR,) and (cfg.steps, cfg.width) == (1, 1):
        source = "the closest" if cfg.rerank > 1 else "it"
        if cfg.proposals == 1 and not cfg.sample:
            return f"{start}, then one corrector step from {source}"
        proposals = counted(cfg.proposals, "corrector sample" if cfg.sample else "corrector beam")
        return f"{start}, then one step of {proposals} from {source}"
    steps = counted(cfg.steps, "correction step")
    return f"{start}, then up to {steps} ({' and '.join(cfg.proposers)}, keeping {cfg.width})"


def counted(n: int, noun: str) -> str:
    """``3 correction steps``, ``1 correction step``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


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
