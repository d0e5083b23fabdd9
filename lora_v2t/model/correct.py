"""Iterative correction: hypothesize, re-embed, correct, keep the candidate closest to the target vector.

Step 0 is the hypothesizer's text for each vector v (with ``CorrectionConfig.rerank`` K > 1: that text and K
beam candidates, reranked by cosine). Each later step re-embeds the candidates kept so far (their vectors e) and
writes new ones, in one of two ways:

- a trained **corrector**: a second adapter on the same loaded base (switching never reloads it). It reads
  :func:`condition` (v, e and v - e, through its own projector), then the candidate's tokens and EOS, and writes
  a text closer to v;
- ``shift`` (no training): the hypothesizer decodes ``v + a (v - e)`` for each a in ``CorrectionConfig.shifts``.

Every new candidate is re-embedded; for each vector the ``width`` best distinct candidates by cosine are kept (a
beam over corrections), and correction stops early once no vector's best cosine rises by more than ``min_gain``.

The beam over corrections: each step, every kept candidate proposes texts from every source enabled
(:attr:`CorrectionConfig.proposers`): the corrector's ``proposals`` K (a beam search of width K returning K, or K
samples with ``sample``) and, with ``shift`` (or ``corrector="shift"``), the shifted decodes. Proposals are
deduplicated (a text a vector has seen is never decoded into the beam nor re-embedded twice), re-embedded in one
batch, and the ``width`` best by cosine kept: the best text seen is never lost. A vector whose kept candidates did
not change in a step stops proposing (the same candidates would propose the same texts) unless proposals are
sampled. With a ``budget`` (decodes per vector, the greedy hypothesis and the beams included), a step proposes
from a vector's best candidates only as far as its budget allows: no vector ever spends more. One decode is one
output sequence of one ``generate`` call for one vector (a beam search of width 4 returning 4 sequences: 4
decodes); :attr:`Trace.spent` counts them per vector. :mod:`lora_v2t.model.beam` chooses the knobs from a budget.

    v2t = load_adapter("checkpoints/adapters/use-gemma270m-ru-v2")  # names the corrector shipped with it
    v2t.generate(vectors, correct_steps=5)                          # or corrector="shift", or a bundle folder
    v2t.generate(vectors, correct_steps=2, rerank=True, num_beams=6, num_return_sequences=6)  # from the best of 7
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..bundle.adapter import validate_bundle
from ..bundle.format import AdapterMeta, BundleConfig, EncoderInfo
from ..bundle.hub import resolve_adapter
from ..config import Role
from ..util.errors import V2TError
from ..util.vectors import cosine_rows, to_vectors

if TYPE_CHECKING:
    from .vector2text import Vector2Text

logger = logging.getLogger(__name__)

SHIFT = "shift"  # CorrectionConfig.corrector for the training-free correction
SEVERAL_OUTPUTS = (
    "correction keeps one text per vector: leave num_return_sequences at 1, or rerank the candidates "
    "first (rerank=True, --rerank) to correct from the best of them; correct_width keeps several "
    "candidates between steps"
)


@dataclass
class CorrectionConfig:
    """How :func:`correct` corrects (``steps`` 0: the hypothesis, or the reranked candidates, alone)."""

    steps: int = 0  # correction steps after the hypothesis
    corrector: str | None = None  # None: the one the hypothesizer names; "shift": no training; else a bundle
    width: int = 1  # candidates kept per vector between steps (a beam over corrections)
    shifts: tuple[float, ...] = (0.5, 1.0, 2.0)  # "shift": decode v + a (v - e) for each a
    min_gain: float | None = 1e-4  # stop when no vector's best cosine rose by more than this (None: go on)
    rerank: int = 0  # > 1: step 0 also keeps this many beam candidates besides the greedy hypothesis
    proposals: int = 1  # a trained corrector's proposals per kept candidate and step (K beams returning K)
    sample: bool = False  # the corrector samples its proposals (temperature, top_k, top_p of the options)
    shift: bool = False  # with a trained corrector, every kept candidate also proposes shift's decodes (mixed)
    budget: int | None = None  # decodes per vector at most, step 0 included (None: no limit)

    def __post_init__(self):
        for name, value, low in (
            ("correct_steps", self.steps, 0),
            ("correct_width", self.width, 1),
            ("rerank", self.rerank, 0),
            ("proposals", self.proposals, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise V2TError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.budget is not None:
            check_budget(self.budget)
        if not self.shifts or any(not a > 0 for a in self.shifts):
            raise V2TError(f"correction shifts must be positive numbers, got {self.shifts!r}")
        if self.min_gain is not None and not self.min_gain >= 0:  # NaN too
            raise V2TError(f"min_gain must be a number >= 0, got {self.min_gain}")
        least = self.start_decodes + (self.per_candidate if self.steps else 0)
        if self.budget is not None and self.budget < least:
            raise V2TError(
                f"budget {self.budget} is too small for {' and '.join(self.sources)}: the greedy "
                f"hypothesis{', the beams' if self.rerank > 1 else ''} and one correction step cost "
                f"{least} decodes per vector; the least budget that works is {least}"
            )

    @property
    def proposers(self) -> tuple[str, ...]:
        """What proposes new candidates in a correction step: ``corrector`` (trained) and/or ``shift``."""
        if self.corrector == SHIFT:
            return (SHIFT,)
        return (SHIFT, "corrector") if self.shift else ("corrector",)

    @property
    def sources(self) -> tuple[str, ...]:
        """Every source of candidates: ``beams`` (step 0's) and the :attr:`proposers` of later steps."""
        return (("beams",) if self.rerank > 1 else ()) + (self.proposers if self.steps else ())

    @property
    def start_decodes(self) -> int:
        """Decodes per vector of step 0: the greedy hypothesis and the beams."""
        return 1 + (self.rerank if self.rerank > 1 else 0)

    @property
    def per_candidate(self) -> int:
        """Decodes one kept candidate's proposals cost in a correction step."""
        return (len(self.shifts) if SHIFT in self.proposers else 0) + (
            self.proposals if "corrector" in self.proposers else 0
        )

    @property
    def decodes_per_step(self) -> int:
        """Decodes per vector in each correction step (at most: a vector with fewer kept candidates, or short of
        budget, spends less)."""
        return self.width * self.per_candidate


def check_budget(budget) -> int:
    """Raise unless ``budget`` (decodes per vector) is an integer >= 1."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise V2TError(f"budget must be an integer >= 1 (decodes per vector; 1 = greedy), got {budget!r}")
    return int(budget)


@dataclass
class Trace:
    """The best text and cosine per vector after each step (0 = the hypothesis, reranked with ``rerank``), and
    each step's cost."""

    texts: list[list[str]] = field(default_factory=list)  # [step][vector]
    cosines: list[np.ndarray] = field(default_factory=list)  # [step] (N,)
    seconds: list[float] = field(default_factory=list)  # [step] wall time of the step
    decodes: list[int] = field(default_factory=list)  # [step] decodes per vector (the most any vector spent)
    greedy_texts: list[str] = field(default_factory=list)  # the greedy hypothesis (step 0 without reranking)
    greedy_cosines: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # (N,)
    spent: np.ndarray | None = None  # (N,) decodes each vector cost in all

    @property
    def final(self) -> list[str]:
        return self.texts[-1]

    def greedy(self) -> tuple[list[str], np.ndarray]:
        """The greedy hypothesis per vector and its cosine, as :meth:`step` scores them."""
        return self.greedy_texts, scored_cosines(self.greedy_texts, self.greedy_cosines)

    def step(self, index: int = -1) -> tuple[list[str], np.ndarray]:
        """The best text per vector after step ``index`` (default: the last) and its cosine: an empty text (no
        candidate kept) scores 0, as :func:`lora_v2t.model.generate.reembed_cosines` scores it with ``empty=0``."""
        return self.texts[index], scored_cosines(self.texts[index], self.cosines[index])


def scored_cosines(texts: list[str], cosines: np.ndarray) -> np.ndarray:
    """``cosines`` (float64) with an empty text's set to 0."""
    empty = np.array([not text for text in texts], dtype=bool)
    return np.where(empty, 0.0, cosines).astype(np.float64)


def condition(targets: np.ndarray, embedded: np.ndarray) -> np.ndarray:
    """A corrector's input vectors: ``[v, e, v - e]`` side by side, (N, 3d) float32."""
    targets = np.asarray(targets, dtype=np.float32)
    embedded = np.asarray(embedded, dtype=np.float32)
    if targets.shape != embedded.shape:
        raise V2TError(f"target vectors {targets.shape} and hypothesis vectors {embedded.shape} differ in shape")
    return np.concatenate([targets, embedded, targets - embedded], axis=1)


# ---------------------------------------------------------------------- the corrector adapter
def corrector_name(hypothesizer: str) -> str:
    """The registry name of the corrector loaded for adapter ``hypothesizer``."""
    return f"{hypothesizer}-corrector"


def use_corrector(v2t: Vector2Text, source: str | Path | None, revision: str | None = None) -> str:
    """Load the active hypothesizer's corrector onto the same base (once) and return its adapter name.

    ``source``: a bundle folder or hub id; None: the corrector the hypothesizer's bundle names (a path relative
    to the hypothesizer's folder, or a hub id).
    """
    hypothesizer = v2t.active_adapter
    check_role(v2t.meta, "hypothesizer", hypothesizer)
    name = corrector_name(hypothesizer)
    path = corrector_path(v2t.meta, hypothesizer, source, revision)
    if name in v2t.adapters and v2t.adapter_meta[name].source == str(path):
        return name  # already loaded from there
    config = validate_bundle(path)
    check_pair(config, v2t.meta.encoder, v2t.backbone_info, path)
    if name in v2t.adapters:
        v2t.delete_adapter(name)
    v2t.load_adapter(path, name)
    return name


def corrector_at_hand(named: str | None, home) -> bool:
    """Whether the budget rule may spend decodes on the corrector ``named`` by the adapter whose bundle folder is
    ``home``: named, and, where it names a folder beside the bundle, there (a hub id counts: it is fetched when
    used). A missing folder is warned about once; the rule then spends budgets as for an adapter without one."""
    if not named:
        return False
    path = named_folder(named, home)
    if path is None:
        return True  # a hub id: fetched when used
    if str(path) in _MISSING:  # missing once, missing for the process: one run never mixes two plans
        return False
    if not path.is_dir():
        _MISSING.add(str(path))
        logger.warning(
            "adapter %s names its corrector %r, but %s is not a folder: budgets are spent without it (copy the "
            "corrector there, or pass --corrector DIR)",
            home,
            named,
            path,
        )
        return False
    return True


_MISSING: set[str] = set()  # named corrector folders found missing (each warned about once)


def named_folder(named: str, home) -> Path | None:
    """The folder (resolved, maybe missing) that the corrector name ``named`` in the bundle folder ``home`` stands
    for, or None where it is a hub id: an absolute path, or beside a bundle a name beginning with "." or one that
    exists there, is a folder."""
    beside = bool(home) and (named.startswith(".") or (Path(str(home)) / named).exists())
    if named.startswith("/") or beside:
        return (Path(str(home or "")) / named).resolve()
    return None


def corrector_path(meta: AdapterMeta, hypothesizer: str, source, revision: str | None) -> Path:
    """Where the corrector lives: ``source``, else what the hypothesizer's bundle names."""
    if source is not None:
        return resolve_adapter(source, revision)
    named, home = meta.corrector, meta.source
    if not named:
        raise V2TError(
            f"adapter {hypothesizer!r} names no corrector: pass corrector=<corrector bundle folder or "
            "hub id> (--corrector DIR), or corrector='shift' for the training-free correction"
        )
    path = named_folder(named, home)
    if path is None:
        return resolve_adapter(named, revision)  # a hub id
    if not path.is_dir():
        raise V2TError(
            f"adapter {home or hypothesizer} names its corrector {named!r}, but {path} is not a folder: copy the "
            "corrector there, or pass corrector=DIR (--corrector DIR)"
        )
    return path


def check_role(meta: AdapterMeta | BundleConfig, role: Role, name: str) -> None:
    """Raise unless adapter ``name`` (its metadata or bundle config ``meta``) has ``role``."""
    has = meta.role
    if has == role:
        return
    if has == "corrector":
        raise V2TError(
            f"adapter {name!r} is a corrector: it rewrites a hypothesis, it does not write from a vector; "
            "load a hypothesizer and pass this one as its corrector (corrector=..., --corrector DIR)"
        )
    raise V2TError(
        f"adapter {name!r} is a hypothesizer, not a corrector: pass a corrector bundle (trained with "
        "training.role=corrector) or corrector='shift'"
    )


def check_pair(config: BundleConfig, encoder: EncoderInfo, base: dict, path: Path) -> None:
    """Raise unless the bundle at ``path`` (its ``config``) is a corrector for the hypothesizer's ``encoder`` and
    ``base`` (the loaded base's info, or the backbone section of the hypothesizer's bundle, as a dict)."""
    check_role(config, "corrector", str(path))
    mine, theirs = config.encoder, encoder
    if (mine.spec, mine.dim) != (theirs.spec, theirs.dim):
        raise V2TError(
            f"corrector {path} was trained for encoder {mine.spec!r} ({mine.dim}-d), but "
            f"the hypothesizer uses {theirs.spec!r} ({theirs.dim}-d): use the corrector "
            "trained with this hypothesizer"
        )
    trained = config.backbone
    for key in ("model_type", "hidden_size", "vocab_size"):
        if key in base and getattr(trained, key) != base[key]:
            raise V2TError(
                f"corrector {path} was trained on base {trained.name!r} ({key} {getattr(trained, key)}), "
                f"but the hypothesizer runs on {base.get('name')!r} ({key} {base[key]}): use the "
                "corrector trained with this hypothesizer"
            )


def reranked_start(options: dict, rerank: bool) -> int:
    """How many beam candidates correction starts from: with ``rerank``, the ``num_return_sequences`` K of the
    decoding ``options``, popped with ``num_beams`` (step 0 searches K beams; every later decode uses the rest of
    ``options``); 0 when K is 1 or without ``rerank``. Raises for options that cannot mean this."""
    if not rerank:
        if (options.get("num_return_sequences") or 1) > 1:
            raise V2TError(SEVERAL_OUTPUTS)
        return 0
    k = options.pop("num_return_sequences", None) or 1
    if k == 1:
        return 0  # nothing to rerank: every decode keeps the given num_beams
    beams = options.pop("num_beams", None)
    if options.get("do_sample"):
        raise V2TError(
            "correction from reranked candidates starts from K beams: drop do_sample, or correct without --rerank"
        )
    if beams is not None and beams != k:
        raise V2TError(
            f"correction from reranked candidates searches num_return_sequences={k} beams: give "
            f"num_beams={k} (--num-beams {k}) or leave num_beams out"
        )
    return k


# ---------------------------------------------------------------------- the loop
UNSEEDED_SAMPLING = (
    "the corrector samples its proposals without a seed: another run gives other texts; pass "
    "seed=N (--seed N) to repeat one"
)
_warned: set[str] = set()  # warnings given once per process


def warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time only (a job decoding batch after batch says it once)."""
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def correct(
    v2t: Vector2Text, vectors, cfg: CorrectionConfig, show_progress: bool = False, seed: int | None = None, **options
) -> Trace:
    """Hypothesize, then correct ``cfg.steps`` times; see the module's docstring. ``options``: decoding options
    of :func:`lora_v2t.model.generate.generate` (used for every decode); ``seed`` seeds the RNG once, first."""
    target = to_vectors(vectors, v2t.embedding_dim).numpy()
    check_role(v2t.meta, "hypothesizer", v2t.active_adapter)
    if (options.get("num_return_sequences") or 1) > 1 or options.get("rerank"):
        raise V2TError(SEVERAL_OUTPUTS)
    corrector = None if cfg.steps == 0 or "corrector" not in cfg.proposers else use_corrector(v2t, cfg.corrector)
    if corrector is not None and cfg.sample and seed is None:
        warn_once(UNSEEDED_SAMPLING)
    spent_in_all = np.zeros(len(target), dtype=np.int64)
    trace = Trace(spent=spent_in_all)
    clock = time.perf_counter()
    beam = Beam(v2t, target, cfg.width)
    beam.add(v2t.generate(target, show_progress=show_progress, seed=seed, **options), np.arange(len(target)))
    options = options | {"warn_norms": False}  # the caller's vectors were checked once, just above
    trace.greedy_texts, trace.greedy_cosines = beam.best_texts(), beam.best_cosines()
    if cfg.rerank > 1:
        groups = v2t.generate(
            target,
            show_progress=show_progress,
            **(options | {"num_beams": cfg.rerank, "num_return_sequences": cfg.rerank}),
        )
        beam.add([t for g in groups for t in g], np.repeat(np.arange(len(target)), cfg.rerank))
    spent_in_all += cfg.start_decodes
    trace_step(trace, beam, clock, cfg.start_decodes)
    settled = np.zeros(len(target), dtype=bool)  # kept candidates unchanged: they would propose the same again
    for step in range(1, cfg.steps + 1):
        clock = time.perf_counter()
        before, kept_before = beam.best_cosines(), beam.kept_texts()
        rows, texts, embedded = beam.kept(proposing(cfg, beam, spent_in_all, settled))
        if not texts:
            break  # every vector settled, or spent its budget
        proposed, owners = propose(v2t, cfg, corrector, beam.target[rows], embedded, texts, rows, options)
        beam.add(proposed, owners)
        spent = np.bincount(owners, minlength=len(target))
        spent_in_all += spent
        if not options.get("do_sample") and not (cfg.sample and corrector is not None):  # deterministic
            settled |= np.array([now == was for now, was in zip(beam.kept_texts(), kept_before, strict=False)])
        trace_step(trace, beam, clock, int(spent.max()))
        gain = float(np.max(beam.best_cosines() - before))
        logger.info(
            "correction step %d: mean cosine %.4f (best gain %.4f) in %.1f s",
            step,
            float(trace.cosines[-1].mean()),
            gain,
            trace.seconds[-1],
        )
        if cfg.min_gain is not None and gain <= cfg.min_gain:
            break
    return trace


def trace_step(trace: Trace, beam: Beam, clock: float, decodes: int) -> None:
    trace.texts.append(beam.best_texts())
    trace.cosines.append(beam.best_cosines())
    trace.seconds.append(time.perf_counter() - clock)
    trace.decodes.append(decodes)


def proposing(cfg: CorrectionConfig, beam: Beam, spent: np.ndarray, settled: np.ndarray) -> np.ndarray:
    """How many of each vector's kept candidates (best first) propose in the next step: all of them, as far as
    the vector's budget allows; none for a settled vector."""
    counts = np.array([len(kept) for kept in beam.items])
    if cfg.budget is not None:
        counts = np.minimum(counts, np.maximum(cfg.budget - spent, 0) // cfg.per_candidate)
    return np.where(settled, 0, counts)


def propose(
    v2t: Vector2Text,
    cfg: CorrectionConfig,
    corrector: str | None,
    targets: np.ndarray,
    embedded: np.ndarray,
    texts: list[str],
    rows: np.ndarray,
    options: dict,
) -> tuple[list[str], np.ndarray]:
    """New candidates from the kept ones (``texts``, their vectors ``embedded``, the rows of their ``targets``)
    by every proposer: (the texts, the row each belongs to; one per decode)."""
    proposed, owners = [], []
    if SHIFT in cfg.proposers:  # the hypothesizer decodes v + a (v - e)
        shifted = np.concatenate([targets + a * (targets - embedded) for a in cfg.shifts])
        proposed += v2t.generate(shifted, **options)
        owners.append(np.tile(rows, len(cfg.shifts)))
    if corrector is not None:
        k = cfg.proposals
        if cfg.sample:  # K samples
            options = options | {"do_sample": True, "num_beams": 1, "num_return_sequences": k}
        elif k > 1:  # a beam search of width K returning all K
            options = options | {"num_beams": k, "num_return_sequences": k}
        hypothesizer = v2t.active_adapter
        v2t.set_adapter(corrector)
        try:
            out = v2t.generate(condition(targets, embedded), contexts=texts, **options)
        finally:
            v2t.set_adapter(hypothesizer)
        proposed += [t for group in out for t in group] if k > 1 else out
        owners.append(np.repeat(rows, k))
    return proposed, np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)


class Beam:
    """Per target vector, the ``width`` distinct candidates with the highest cosine so far, with their vectors,
    and every text it has seen (scored once)."""

    def __init__(self, v2t: Vector2Text, target: np.ndarray, width: int):
        self.v2t, self.target, self.width = v2t, target, width
        self.items: list[dict[str, tuple[float, np.ndarray]]] = [{} for _ in range(len(target))]
        self.seen: list[set[str]] = [set() for _ in range(len(target))]

    def add(self, texts: list[str], rows: np.ndarray) -> None:
        """Score the new candidates (re-embedding each distinct unseen text once, all in one batch) and keep the
        best ``width`` per vector. A text seen before is skipped: it is kept already, or was dropped for
        ``width`` better ones, which it still cannot beat."""
        fresh = list(
            dict.fromkeys(
                (int(r), t) for r, t in zip(rows, texts, strict=False) if t.strip() and t not in self.seen[int(r)]
            )
        )
        if fresh:
            vecs = self.v2t.encode([t for _, t in fresh])
            cos = cosine_rows(vecs, self.target[[r for r, _ in fresh]])
            for (r, t), c, e in zip(fresh, cos, vecs, strict=False):
                self.items[r][t] = (float(c), e)
                self.seen[r].add(t)
        for r, kept in enumerate(self.items):
            if len(kept) > self.width:
                self.items[r] = dict(sorted(kept.items(), key=lambda kv: -kv[1][0])[: self.width])

    def kept(self, limits: np.ndarray | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Kept candidates, best first, at most ``limits[r]`` of vector r (None: all): their target rows, texts
        and vectors (vectors with no candidate are skipped)."""
        rows, texts, vecs = [], [], []
        for r, kept in enumerate(self.items):
            ranked = sorted(kept.items(), key=lambda kv: -kv[1][0])
            for text, (_, vec) in ranked[: None if limits is None else int(limits[r])]:
                rows.append(r)
                texts.append(text)
                vecs.append(vec)
        if not rows:
            dim = self.target.shape[1]
            return np.zeros(0, dtype=np.int64), [], np.zeros((0, dim), dtype=np.float32)
        return np.array(rows), texts, np.stack(vecs)

    def kept_texts(self) -> list[frozenset[str]]:
        return [frozenset(kept) for kept in self.items]

    def best_texts(self) -> list[str]:
        return [max(kept.items(), key=lambda kv: kv[1][0])[0] if kept else "" for kept in self.items]

    def best_cosines(self) -> np.ndarray:
        return np.array([max(c for c, _ in kept.values()) if kept else -1.0 for kept in self.items])
