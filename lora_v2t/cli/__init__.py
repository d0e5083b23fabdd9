"""The ``lora-v2t`` command line: train, embed, heldout, generate, invert, evaluate, compare, info, push, demo, audit.

Every user error is printed as one line ``error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..util.errors import V2TError
from ..util.files import NO_SPACE, disk_full
from ..util.terminal import shown
from . import audit
from .bundles import _add_info_command, _add_push_command
from .compare import _add_compare_command
from .decoding import _add_evaluate_command, _add_generate_command, _add_invert_command
from .options import _process_rank
from .training import _add_demo_command, _add_embed_command, _add_heldout_command, _add_train_command

__all__ = ["build_parser", "main"]


class Parser(argparse.ArgumentParser):
    """argparse's parser (every subcommand's too), whose error line shows the user's text with its control
    characters escaped."""

    def error(self, message: str):
        super().error(shown(message))


class ShownFormatter(logging.Formatter):
    """Log lines as ``%(message)s``, control characters escaped (a logged sentence may hold terminal escapes)."""

    def format(self, record: logging.LogRecord) -> str:
        return shown(super().format(record), lines=True)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lora-v2t",
        description="Turn sentence-embedding vectors back into text with a frozen LM, a prefix projector "
        "and LoRA adapters.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate_command(sub)
    _add_train_command(sub)
    _add_embed_command(sub)
    _add_heldout_command(sub)
    _add_demo_command(sub)
    _add_evaluate_command(sub)
    _add_compare_command(sub)
    _add_invert_command(sub)
    _add_info_command(sub)
    _add_push_command(sub)
    audit.add_parser(sub)
    return parser


# Library warnings that every command would print and that ask nothing of its user: (category, message regex,
# module regex). Every other warning is shown. (bitsandbytes' and kernels' notices about an optional CPU kernel
# are dropped by lora_v2t/__init__.py; transformers' notice to peft by lora_v2t.model.lora.wrapping_in_peft.)
NOISY_WARNINGS = [
    # the prompt is the vector's prefix, which has no tokens to constrain: only the generated ones are meant
    (
        UserWarning,
        r"Passing `no_repeat_ngram_size` with `inputs_embeds` and without `input_ids`",
        r"transformers\.generation\.utils",
    ),
    # bf16 autocast on a CPU hands Gemma's RMSNorm bf16 input and its fp32 weight: torch runs the unfused kernel
    # (the measured step speeds include it) and says so on every training run
    (UserWarning, r"Mismatch dtype between input and weight", r"torch\.nn\.functional"),
]


def _quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for chatty in ("faiss", "sentence_transformers"):  # which CPU build, which device: INFO that asks nothing
        logging.getLogger(chatty).setLevel(logging.WARNING)
    for category, message, module in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command in ("train", "embed", "heldout"):
        args.overrides = unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    level = logging.DEBUG if args.verbose else logging.INFO if _process_rank() == 0 else logging.WARNING
    handler = logging.StreamHandler()
    handler.setFormatter(ShownFormatter("%(message)s"))
    logging.basicConfig(level=level, handlers=[handler])  # with several processes the main one logs
    _quiet_libraries()
    try:
        return args.func(args)
    except V2TError as exc:
        print(f"error: {shown(exc)}", file=sys.stderr)
        return 2
    except PermissionError as exc:  # a file or folder the checks above did not name; still the user's to fix
        print(
            f"error: permission denied on {shown(exc.filename or exc)}: fix its permissions or choose another path",
            file=sys.stderr,
        )
        return 2
    except BrokenPipeError:  # the reader went away (`lora-v2t info ... | head`): no traceback, nothing more to print
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush would raise again
        return 141  # as a process that SIGPIPE ended
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        # a write the checks did not cover
        print(f"error: {shown(disk_full(exc.filename or Path.cwd()))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
