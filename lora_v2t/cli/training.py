"""The commands that train or prepare training: train, embed, heldout, demo."""

from __future__ import annotations

import argparse
import math
import os
import textwrap
from pathlib import Path

from ..config import describe_keys
from ..util.errors import V2TError
from ..util.terminal import shown
from .options import _process_rank


def _add_train_command(sub) -> None:
    train = sub.add_parser(
        "train",
        help="train an adapter from a recipe",
        description=textwrap.fill(
            "Train the projector and LoRA weights of a frozen backbone as RECIPE.yaml says. Any recipe "
            "value can be overridden as --section.key=value (e.g. --training.max_steps=500 "
            "--data.train=my_corpus.txt). Sections: encoder, backbone, projector, lora, generation, data, "
            "training; see recipes/*.yaml for every key with its meaning. Checkpoints go to "
            "<output_dir>/<run_name>/step-NNNNNN/, the finished adapter to .../final/. Ctrl-C saves a "
            "checkpoint first; --resume continues from the last one.",
            100,
        )
        + "\n\n"
        + textwrap.fill(
            "Where runs go: training.output_dir, by default <checkpoints>/runs, where <checkpoints> is "
            "$LORA_V2T_HOME when set, else the checkpoints/ folder of the source checkout lora_v2t runs from "
            "(whichever the current folder), else ~/.cache/lora_v2t. The embedding cache "
            "(<checkpoints>/cache) and converted base models (<checkpoints>/base) live there too.",
            100,
        ),
        epilog="example: lora-v2t train recipes/offline_use_gemma270m.yaml --training.max_minutes=30\n\n"
        "recipe keys (--section.key=value; shown with their defaults):\n" + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("recipe", type=Path, help="recipe YAML (see recipes/)")
    train.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_DIR",
        help="continue the recipe's run folder (or RUN_DIR) from its last checkpoint",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    train.set_defaults(func=cmd_train)


def _add_embed_command(sub) -> None:
    embed = sub.add_parser(
        "embed",
        help="fill the embedding cache of a recipe ahead of training",
        description="Encode the recipe's training and validation sentences once and store the vectors in the "
        "embedding cache (resumable), so that `train` starts at once. Accepts the same "
        "--section.key=value overrides as train.",
    )
    embed.add_argument("recipe", type=Path, help="recipe YAML (see recipes/)")
    embed.set_defaults(func=cmd_embed)


def _add_heldout_command(sub) -> None:
    held = sub.add_parser(
        "heldout",
        help="write sentences a recipe's adapter never trained on (a corrector's training data)",
        description="Write to --out a seeded sample of the sentences of the recipe's data.train that its run "
        "neither trained nor validated on (same sample, split and filters as `train`). Then "
        "`lora-v2t invert --adapter <that adapter> --texts OUT --out HYPS.jsonl` writes the "
        "hypotheses a corrector trains on (see lora_v2t.train.pairs). Accepts the same --section.key=value "
        "overrides as train.",
    )
    held.add_argument("recipe", type=Path, help="the hypothesizer's recipe YAML, with the overrides it ran with")
    held.add_argument("--count", type=int, help="at most this many sentences (>= 1; default: all of them)")
    held.add_argument("--out", required=True, help="text file to write, one sentence per line (new)")
    held.set_defaults(func=cmd_heldout)


def _add_demo_command(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="the offline main job: what lora_v2t does, then an adapter trained here",
        description="With no internet: the shipped adapter writes back sentences it never saw (with cosines); "
        "then a new adapter trains for --minutes on Russian sentences (../shared/data/ru/train.txt "
        "when present, else a sample shipped with lora_v2t), printing held-out reconstructions as "
        "they improve; then both adapters share one base and switch in milliseconds. About "
        "--minutes + 2 minutes on a 2-core CPU (+1.5 the first time, to prepare the models). "
        "Re-running resumes an interrupted demo, or shows the finished one.",
    )
    demo.add_argument("--minutes", type=float, default=8.0, help="training time, > 0 (default 8)")
    demo.add_argument(
        "--corpus",
        help="training sentences, one per line (default: ../shared/data/ru/train.txt "
        "if present, else the shipped sample)",
    )
    demo.add_argument("--output-dir", help="where the run folder goes (default: checkpoints/runs)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)


def cmd_train(args) -> int:
    from ..config import load_config
    from ..train.trainer import train

    cfg = load_config(args.recipe, args.overrides)
    before = _bundle_stamp(Path(args.resume) / "final" if isinstance(args.resume, str) else None, cfg)
    final = train(cfg, resume=args.resume, show_progress=not args.no_progress)
    if _process_rank() != 0:  # with several processes, the main one reports
        return 0
    saved = "adapter (unchanged):" if before is not None and _bundle_stamp(final) == before else "adapter saved to"
    print(
        f"{saved} {shown(final)}\nload it with:  from lora_v2t import load_adapter; v2t = load_adapter({str(final)!r})"
    )
    return 0


def _bundle_stamp(final: Path | None, cfg=None):
    """Inode and mtime of ``final``'s (or the recipe's run's final/) v2t_config.json (None: none): a bundle is written
    anew and renamed into place, so an unchanged stamp means a finished run saved nothing."""
    from ..train.rundir import run_dir_of

    path = (final or run_dir_of(cfg) / "final") / "v2t_config.json"
    try:
        return path.stat().st_ino, path.stat().st_mtime_ns
    except OSError:
        return None


def cmd_embed(args) -> int:
    from ..config import load_config
    from ..train.pairs import prepare_data

    cfg = load_config(args.recipe, args.overrides)
    data = prepare_data(cfg, show_progress=True)
    print(f"cached vectors for {len(data.train_texts)} training and {len(data.val_texts)} validation sentences")
    return 0


def cmd_heldout(args) -> int:
    from ..config import load_config
    from ..train.pairs import unseen_sentences
    from ..util.files import atomic_write

    if args.count is not None and args.count < 1:
        raise V2TError(f"--count must be >= 1, got {args.count}")
    if args.out.endswith(("/", os.sep)) or os.path.isdir(args.out):
        raise V2TError(
            f"--out {args.out} names a folder: give the text file to write (e.g. {args.out.rstrip('/')}/heldout.txt)"
        )
    if os.path.exists(args.out):
        raise V2TError(f"{args.out} exists: choose a new file (it is never overwritten)")
    cfg = load_config(args.recipe, args.overrides)
    if cfg.training.role != "hypothesizer":
        raise V2TError(
            f"{args.recipe} trains a {cfg.training.role}: give the recipe of the hypothesizer whose unseen "
            "sentences you want"
        )
    sentences = unseen_sentences(cfg, args.count)
    if not sentences:
        raise V2TError(
            f"every sentence of {cfg.data.train} is in the recipe's training sample or validation set: "
            "train the hypothesizer with data.max_sentences below the corpus size"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(args.out), "\n".join(sentences) + "\n")
    print(f"wrote {len(sentences)} unseen sentences of {shown(cfg.data.train)} to {shown(args.out)}")
    return 0


def cmd_demo(args) -> int:
    from ..demo import DemoConfig, run_demo

    if not math.isfinite(args.minutes) or args.minutes <= 0:  # nan and inf reached the recipe's max_minutes
        raise V2TError(f"--minutes must be a positive number of minutes, got {args.minutes}")
    run_demo(
        DemoConfig(
            minutes=args.minutes, corpus=args.corpus, output_dir=args.output_dir, show_progress=not args.no_progress
        )
    )
    return 0
