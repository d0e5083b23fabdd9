"""The offline main job: what the toolkit is for, then an adapter trained here, with no internet.

1. The shipped adapter (``checkpoints/adapters/use-gemma270m-ru-v8``) writes back sentences it never saw (a
   held-out list written for this project): its greedy text beside the text at the commands' default budget
   (:data:`~lora_v2t.config.DEFAULT_BUDGET` decodes per vector), each with the cosine between its vector and
   the vector of what came back.
2. A new adapter trains for the announced minutes on Russian sentences (``../shared/data/ru/train.txt`` when it
   is there, else the small sample shipped with the package), validating on the held-out sentences and printing
   their reconstructions as they get closer. Interrupted, it resumes on the next run.
3. The new adapter is loaded beside the shipped one on the same base: switching between them costs
   milliseconds, and both write back the held-out sentences.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from .bundle.format import BundleConfig
from .config import (
    DEFAULT_BUDGET,
    OFFLINE_BACKBONE,
    OFFLINE_ENCODER,
    BackboneConfig,
    DataConfig,
    EncoderConfig,
    LoRAConfig,
    MixedPrecision,
    ProjectorConfig,
    RunConfig,
    TrainingConfig,
)
from .model.backbone import checkpoints_dir
from .train.data import read_sentences
from .train.rundir import check_paths, run_dir_of
from .util.terminal import shown
from .util.textfile import split_lines

if TYPE_CHECKING:
    from .model.vector2text import Vector2Text

logger = logging.getLogger(__name__)

DEMO_SENTENCES = files("lora_v2t") / "resources" / "demo_ru.txt"  # a small sample written for the project
HELD_OUT = files("lora_v2t") / "resources" / "heldout_ru.txt"  # in no training file, nor in the dev sets
SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "adapters" / "use-gemma270m-ru-v8"
SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ru" / "train.txt"
# the run folder's name: a new one whenever the demo's recipe changes, since an older demo's folder would be
# refused on resume (another recipe) or reused as it is
DEMO_RUN = "demo-4slots"
# what a demo user types (or can set) for the recipe keys its messages would otherwise name
DEMO_NAMES = {"data.train": "--corpus", "training.output_dir": "--output-dir", "data.cache_dir": "LORA_V2T_HOME"}


@dataclass
class DemoConfig:
    """What the demo runs on; the defaults are the offline models and the shipped adapter."""

    minutes: float = 8.0  # training time
    output_dir: str | None = None  # where the run folder goes; None = <checkpoints>/runs
    corpus: str | None = None  # training sentences; None = ../shared/data/ru/train.txt if present, else the sample
    max_sentences: int = 8000  # a sample of the corpus: more than the minutes let it read once
    shipped: str | None = str(SHIPPED)  # the adapter shown first (skipped when missing)
    backbone: str = OFFLINE_BACKBONE
    encoder: str = OFFLINE_ENCODER
    max_steps: int = 100_000  # the minutes end the run first
    eval_every: int = 50
    mixed_precision: MixedPrecision = "auto"  # training.mixed_precision: bf16 on CPUs with bf16 units
    show_progress: bool = True


def demo_recipe(cfg: DemoConfig) -> RunConfig:
    """The offline recipe's settings, boxed to the demo's minutes and validated on the held-out sentences."""
    corpus = cfg.corpus or (str(SHARED_CORPUS) if SHARED_CORPUS.is_file() else str(DEMO_SENTENCES))
    return RunConfig(
        encoder=EncoderConfig(spec=cfg.encoder),
        backbone=BackboneConfig(name=cfg.backbone, quantization="none"),
        projector=ProjectorConfig(kind="mlp", prefix_length=4),  # as the offline recipe: 4 slots learn faster
        lora=LoRAConfig(r=16, dropout=0.0),
        data=DataConfig(train=corpus, val=str(HELD_OUT), max_sentences=cfg.max_sentences, max_tokens=32),
        training=TrainingConfig(
            run_name=DEMO_RUN,
            output_dir=cfg.output_dir,
            batch_size=16,
            max_steps=cfg.max_steps,
            max_minutes=cfg.minutes,
            lr=5e-4,
            projector_lr=1e-3,
            warmup_steps=20,
            eval_every=cfg.eval_every,
            save_every=cfg.eval_every,
            log_every=10,
            num_samples=4,
            loss_vocab="corpus",
            keep_checkpoints=1,
            mixed_precision=cfg.mixed_precision,
        ),
    )


def run_demo(cfg: DemoConfig) -> Path:
    """Show the shipped adapter, train (or resume, or reuse) the demo adapter, put both on one base; returns
    the demo adapter's folder."""
    from .model.backbone import convert_offline_gemma

    recipe = demo_recipe(cfg)
    # the corpus, the backbone and the run folder, before any model loads, in the words of the demo's options
    check_paths(recipe, run_dir_of(recipe), DEMO_NAMES)
    if cfg.corpus:  # the user's corpus is read once before too: its encoding or line ends may not do
        read_sentences(cfg.corpus, recipe.data.min_chars, recipe.data.max_chars)
    held_out = [s for s in split_lines(HELD_OUT.read_text(encoding="utf-8")) if s.strip()]
    start = time.perf_counter()
    shipped = Path(cfg.shipped) if cfg.shipped and Path(cfg.shipped, "v2t_config.json").is_file() else None
    prepared = cfg.backbone != OFFLINE_BACKBONE or (checkpoints_dir() / "base" / "gemma-3-270m").is_dir()
    print(
        f"lora_v2t demo: about {cfg.minutes + 2 + (0 if prepared else 1.5):.0f} minutes on a 2-core CPU: "
        f"{'' if prepared else 'preparing the offline models (once, about 1.5 minutes), '}"
        f"1 minute showing the shipped adapter, {cfg.minutes:g} training a new one, 1 putting both on one "
        "base.\n",
        flush=True,
    )
    if cfg.backbone == OFFLINE_BACKBONE:
        convert_offline_gemma()
    v2t = show_shipped(shipped, held_out)
    trained = shipped_minutes(v2t)  # before the demo adapter becomes the active one
    final = train_demo(recipe, cfg.show_progress)
    if v2t is not None:
        show_switching(v2t, final, held_out)
    print(
        f"\nDone in {(time.perf_counter() - start) / 60:.1f} minutes. The new adapter is in {final} "
        f"({sum(p.stat().st_size for p in final.iterdir()) / 2**20:.1f} MB). Load it in a script:\n\n"
        f"    from lora_v2t import load_adapter\n"
        f"    v2t = load_adapter({str(final)!r})\n"
        f'    print(v2t.invert(["Где моя лодка?"]))\n\n'
        f'or: lora-v2t generate --adapter {final} --text "Где моя лодка?"\n'
        f"A few minutes of training make a rough adapter{trained}."
    )
    return final


def shipped_minutes(v2t: Vector2Text | None) -> str:
    """ "; the shipped one trained for N minutes", as its bundle records it, counting the runs it continued
    (``training.init_adapter``, bundles beside it: a continued adapter's own run is only its last part); nothing
    when it records no time."""
    training = {} if v2t is None else v2t.meta.training
    minutes = training.get("wall_minutes")
    if not isinstance(minutes, (int, float)):
        return ""
    runs, total, earlier = 1, minutes, training.get("init_adapter")
    seen: set[str] = set()
    while isinstance(earlier, str) and earlier not in seen:
        seen.add(earlier)
        config = SHIPPED.parent / Path(earlier).name / "v2t_config.json"
        if not config.is_file():
            break
        before = BundleConfig.from_json(config).training
        runs, total, earlier = runs + 1, total + (before.get("wall_minutes") or 0), before.get("init_adapter")
    if runs == 1:
        return f"; the shipped one trained for {minutes:.0f} minutes"
    return f"; the shipped one trained for {total:.0f} minutes in {runs} runs, the last of {minutes:.0f}"


def show_shipped(shipped: Path | None, held_out: list[str]):
    """Part 1: the shipped adapter on sentences it never saw, its greedy text beside the text at the commands'
    default budget, with cosines; returns it loaded (or None)."""
    from .bundle.adapter import validate_bundle
    from .bundle.loading import load_adapter
    from .model.beam import explain, plan_budget
    from .model.correct import correct, corrector_at_hand

    if shipped is None:
        print("(No shipped adapter in this installation: part 1 is skipped.)\n")
        return None
    plan = plan_budget(
        DEFAULT_BUDGET, has_corrector=lambda: corrector_at_hand(validate_bundle(shipped).corrector, shipped)
    )
    print(
        f"1. The shipped adapter {shipped.name} writes back sentences it never saw, from their vectors alone: "
        f"its greedy text (1 decode per vector), then the text `lora-v2t generate` gives by default (a budget "
        f"of {DEFAULT_BUDGET} decodes: {explain(plan)}, keeping the text whose vector is closest):",
        flush=True,
    )
    v2t = load_adapter(shipped, device="cpu")
    vectors = v2t.encode(held_out)
    # one search gives both: its greedy hypothesis is where the budget's beam starts
    trace = correct(v2t, vectors, plan)
    (greedy, greedy_cosines), (best, best_cosines) = trace.greedy(), trace.step()
    for row in zip(held_out, greedy, greedy_cosines, best, best_cosines, strict=True):
        original, first, first_cosine, final, final_cosine = row
        print(f"   {shown(original)}")
        print(f"      greedy    ==> {shown(first)}    [cos {first_cosine:.2f}]")
        print(f"      budget {DEFAULT_BUDGET:<2} ==> {shown(final)}    [cos {final_cosine:.2f}]")
    means = float(greedy_cosines.mean()), float(best_cosines.mean())
    print(f"   mean cosine: greedy {means[0]:.3f}, budget {DEFAULT_BUDGET} {means[1]:.3f}\n", flush=True)
    return v2t


def print_reconstructions(v2t: Vector2Text, texts: list[str]) -> None:
    from .model.generate import reembed_cosines

    vectors = v2t.encode(texts)
    outputs = v2t.generate(vectors)
    cosines = reembed_cosines(v2t, outputs, vectors, empty=0.0)
    for original, generated, cosine in zip(texts, outputs, cosines, strict=True):
        print(f"   {shown(original)} ==> {shown(generated)}    [cos {cosine:.2f}]")
    print(flush=True)


def train_demo(recipe: RunConfig, show_progress: bool) -> Path:
    """Part 2: train the demo adapter (or resume it, or reuse a finished one)."""
    from .train.trainer import list_checkpoints, train

    run_dir = run_dir_of(recipe)
    final = run_dir / "final"
    if final.exists():
        print(f"2. The demo adapter is already trained: {final} (delete {run_dir} to train it again).\n")
        return final
    checkpoints = list_checkpoints(run_dir)
    print(
        f"2. Training a new adapter for {recipe.training.max_minutes:g} minutes on sentences of "
        f"{recipe.data.train}; every {recipe.training.eval_every} steps it writes back held-out sentences "
        "(never trained on), which get closer as it learns."
        + (f" Resuming the interrupted demo from {checkpoints[-1].name}." if checkpoints else ""),
        flush=True,
    )
    return train(recipe, resume=bool(checkpoints), show_progress=show_progress)


def show_switching(v2t: Vector2Text, final: Path, held_out: list[str]) -> None:
    """Part 3: the demo adapter beside the shipped one on the same base, and the cost of switching."""
    shipped_name = v2t.active_adapter
    v2t.load_adapter(final, name="demo")
    switches = []
    for name in ("demo", shipped_name) * 5:
        begin = time.perf_counter()
        v2t.set_adapter(name)
        switches.append(time.perf_counter() - begin)
    switches.sort()
    print(
        f"\n3. Both adapters on one base: switching between them takes {1000 * switches[len(switches) // 2]:.1f} "
        f"ms (median of 10; the base is not reloaded). The new adapter on the held-out sentences:",
        flush=True,
    )
    v2t.set_adapter("demo")
    print_reconstructions(v2t, held_out)
