"""The option groups and checks that several commands share: loading, decoding, correction."""

from __future__ import annotations

import argparse
import logging
import typing
from dataclasses import fields
from pathlib import Path

from ..bundle.format import BundleConfig
from ..config import DEFAULT_BUDGET, DTYPES, QUANTIZATION_MODES, SEED_LIMIT, GenerationConfig
from ..util.errors import V2TError

logger = logging.getLogger("lora_v2t")


def _add_generation_options(parser: argparse.ArgumentParser, candidates: bool = True) -> None:
    """The decoding options; ``candidates``: also --num-return-sequences and --rerank (a command that writes one
    text per vector does not offer them)."""
    g = parser.add_argument_group("decoding (unset options use the adapter's defaults)")
    names = [f.name for f in fields(GenerationConfig) if candidates or f.name != "num_return_sequences"]
    _add_decoding_options(g, names)
    if candidates:
        g.add_argument(
            "--rerank",
            nargs="?",
            type=int,
            const=True,
            default=False,
            metavar="N",
            help="re-embed the candidates and keep the one closest to the target vector (prints cosine). "
            "Alone: the candidates --num-beams and --num-return-sequences (or --do-sample) make; --rerank N, "
            "as evaluate's: N candidates (N >= 0; 0 or 1 = one), N beams (at least N with --num-beams; N "
            "samples with --do-sample)",
        )
    g.add_argument("--seed", type=seed_value, help="seed for reproducible sampling (0 to 2**63 - 1)")


def _add_decoding_options(group, names: list[str], defaults: dict | None = None) -> None:
    """One option per named field of GenerationConfig, made from the field: --field-name (or the field's own
    ``flag``), its type or choices, its help. Unset, an option is None (the adapter's default applies) unless
    ``defaults`` gives it a value."""
    hints = typing.get_type_hints(GenerationConfig)
    for f in fields(GenerationConfig):
        if f.name not in names:
            continue
        flag = f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"
        text = (f.metadata.get("flag_help") or f.metadata["help"]).replace("%", "%%")
        kind, default = hints[f.name], (defaults or {}).get(f.name)
        if default is not None:
            text += f" (default: {default})"
        if kind is bool:  # a switch: on for a False default, off for a True one
            group.add_argument(
                flag, dest=f.name, action="store_false" if f.default else "store_true", default=None, help=text
            )
        elif typing.get_origin(kind) is typing.Literal:
            group.add_argument(flag, dest=f.name, choices=typing.get_args(kind), help=text)
        else:
            group.add_argument(flag, dest=f.name, type=kind, default=default, help=text)


def _add_correction_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("correction (see lora_v2t.model.correct)")
    g.add_argument(
        "--correct-steps",
        type=int,
        default=0,
        help="correct the outputs up to N times (>= 0; default 0): re-embed, rewrite, keep the text "
        "closest to the vector; stops early when the cosine stops rising. With reranking it starts "
        "from the best of the greedy text and the beams (--rerank K, 0 to start from the greedy text; "
        "generate also takes --rerank --num-beams K --num-return-sequences K)",
    )
    g.add_argument(
        "--corrector",
        help="corrector bundle folder or hub id (default: the one the adapter names), or 'shift' for "
        "the training-free correction (decode v + a (v - e), a = 0.5, 1, 2)",
    )
    g.add_argument(
        "--correct-width", type=int, default=1, help="candidates kept per vector between steps (>= 1; default 1)"
    )


def _add_budget_options(parser: argparse.ArgumentParser, corrector: bool = False, resumable: bool = False) -> None:
    """--budget and how it is spent; ``corrector``: also --corrector (a command without correction options);
    ``resumable``: the command continues an output with the budget it was begun with."""
    g = parser.add_argument_group("budget (see lora_v2t.model.beam)")
    g.add_argument(
        "--budget",
        metavar="N",
        help="decodes per vector (an integer >= 1; 1 = the greedy text alone, the fastest), keeping the "
        "text closest to the vector. By the measured rule of lora_v2t.model.beam: with a corrector (the one "
        "the adapter names, or --corrector DIR), N = 2 to 4 is one step of N - 1 corrector beams from the "
        "greedy text, and from N = 5 the greedy text and N - 1 - K beams, then K = N // 4 (at least 2) "
        "corrector beams from the closest; without one (or with --corrector shift), N >= 3 is the greedy text "
        "and N - 1 reranked beams; --sources names what N is spent on. "
        f"Default: {DEFAULT_BUDGET}, unless options "
        "that choose the candidates themselves are given (beams, sampling, reranking N, correction steps)"
        + (" or --out was begun with another budget (it continues with that one)" if resumable else ""),
    )
    g.add_argument(
        "--sources",
        metavar="LIST",
        help="what --budget spends decodes on, comma-separated among beams, shift, corrector (default: "
        "the rule's choice); refused when N cannot pay for them all",
    )
    g.add_argument(
        "--sample-proposals",
        action="store_true",
        help="the corrector samples its proposals (with --temperature, --top-k, --top-p) instead of "
        "searching beams; give --seed to repeat a run",
    )
    if corrector:
        g.add_argument(
            "--corrector",
            help="the trained corrector that correction uses (a budget's corrector step, or --correct-steps "
            "where the command has it): bundle folder or hub id (default: the one the adapter names), or "
            "'shift' for no trained corrector",
        )


def _budget(args, config: BundleConfig):
    """The plan of the command line's --budget, checked (with the corrector's bundle) before any model loads.
    Without --budget: the default budget (:func:`_default_budget`), unless options that choose the candidates
    themselves are given (then None: the expert's own decoding); beside --budget those are refused."""
    from ..model.beam import CORRECTOR, parse_budget, plan_budget
    from ..model.correct import corrector_at_hand

    own = _own_candidates(args)
    if args.budget is None and own:
        corrector_alone = args.corrector and not hasattr(args, "correct_steps")  # invert's: only for a budget
        if args.sources is not None or args.sample_proposals or corrector_alone:
            raise V2TError(
                f"--sources, --sample-proposals and --corrector choose how a budget is spent, and {own[0]} "
                "chooses the candidates without one: drop one or the other"
            )
        return None
    if own:
        raise V2TError(
            f"--budget chooses the beams, correction steps and width itself: drop {', '.join(own)}, "
            "or drop --budget to set them yourself"
        )
    budget = _default_budget(args, config) if args.budget is None else parse_budget(args.budget)
    _check_reembedding(args, config, budget)
    plan = plan_budget(
        budget,
        args.sources,
        corrector=args.corrector,
        has_corrector=lambda: corrector_at_hand(config.corrector, args.adapter),
        sample=args.sample_proposals,
    )
    used = bool(plan.steps) and CORRECTOR in plan.proposers
    if args.corrector not in (None, "shift") and not used:
        raise V2TError(
            f"--corrector {args.corrector} would not be used: budget {budget} is spent on "
            f"{' + '.join(plan.sources) or 'the greedy text'}; name it in --sources (e.g. --budget 16 --sources "
            "beams,corrector)" + (" or give --correct-steps N" if hasattr(args, "correct_steps") else "")
        )
    if used:
        _corrector_bundle(args.adapter, config, plan.corrector)
    return plan


def _default_budget(args, config: BundleConfig) -> int:
    """:data:`~lora_v2t.config.DEFAULT_BUDGET`, or 1 for an adapter whose encoder cannot embed the candidates
    (precomputed vectors, no --encoder): there is nothing to choose between them by."""
    return 1 if _cannot_reembed(args, config) else DEFAULT_BUDGET


def _cannot_reembed(args, config: BundleConfig) -> bool:
    return args.encoder is None and config.encoder.spec.startswith("precomputed:")


def _check_reembedding(args, config: BundleConfig, budget: int) -> None:
    """A budget above 1 keeps the candidate whose re-embedding is closest: refused for an encoder that cannot
    embed text."""
    if budget > 1 and _cannot_reembed(args, config):
        raise V2TError(
            f"--budget {budget} keeps the candidate whose re-embedding is closest to the vector, and the adapter's "
            f"encoder {config.encoder.spec!r} cannot embed text: give --encoder SPEC (the encoder that made the "
            "vectors) or --budget 1"
        )


def _own_candidates(args) -> list[str]:
    """The options given that choose the candidates without a budget (beams, sampling, reranking, correction
    steps): with any of them a command decodes as they say instead of spending the default budget, and beside
    --budget they are refused."""
    rerank = getattr(args, "rerank", None)
    given = [
        ("--num-beams", getattr(args, "num_beams", None) is not None),
        ("--do-sample", bool(getattr(args, "do_sample", None))),
        ("--num-return-sequences", getattr(args, "num_return_sequences", None) is not None),
        ("--rerank", type(rerank) is int),  # --rerank N; a bare --rerank only asks generate for the cosine
        ("--correct-steps", bool(getattr(args, "correct_steps", 0))),
        ("--correct-width", getattr(args, "correct_width", 1) != 1),
    ]
    return [flag for flag, on in given if on]


def _correction(args, config: BundleConfig):
    """The correction the command line asks for, checked (with the corrector's bundle) before any model loads."""
    from ..model.correct import SHIFT, CorrectionConfig

    correction = CorrectionConfig(steps=args.correct_steps, corrector=args.corrector, width=args.correct_width)
    if correction.steps == 0 and (args.corrector is not None or args.correct_width != 1):
        raise V2TError("--corrector and --correct-width choose how to correct: give --correct-steps N (N >= 1) too")
    if correction.steps == 0 or correction.corrector == SHIFT:
        return correction
    _corrector_bundle(args.adapter, config, correction.corrector)
    return correction


def _corrector_bundle(adapter: Path, config: BundleConfig, corrector: str | None) -> None:
    """Check the corrector bundle a correction uses (``corrector``, or the one the adapter's bundle folder
    ``adapter`` names) against the adapter, before any model loads."""
    from ..bundle.adapter import validate_bundle
    from ..bundle.format import AdapterMeta
    from ..model.correct import check_pair, corrector_path

    meta = AdapterMeta.of_bundle(config, source=str(adapter))
    path = corrector_path(meta, str(adapter), corrector, None)
    check_pair(validate_bundle(path), config.encoder, config.backbone.to_dict(), path)


def _add_loading_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("loading")
    g.add_argument(
        "--adapter",
        required=True,
        help="adapter bundle folder, or hub id org/name (downloaded once into the local hub cache; "
        "a folder of the same name wins)",
    )
    g.add_argument("--revision", help="for a hub id: branch, tag or commit (default: main)")
    g.add_argument("--backbone", help="load on this base instead of the one the bundle names")
    g.add_argument("--encoder", help="use this encoder spec instead of the bundle's (same dimension)")
    g.add_argument(
        "--quantization",
        default="auto",
        choices=list(QUANTIZATION_MODES),
        help="auto = as the adapter was trained (its v2t_config.json says; bundles that do not say: "
        "8bit on CUDA, none on CPU); another choice is honoured with a warning (default: auto)",
    )
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")
    g.add_argument(
        "--dtype",
        default="auto",
        choices=list(DTYPES),
        help="what the base computes in. auto = as the adapter was trained where the device can: on "
        "CUDA bf16 (fp16 without bf16) unless it trained in fp32 or fp16; on a CPU bf16 for a "
        "bf16-trained adapter if the CPU has AVX-512 BF16 or AMX (about 1.3x faster decoding), else "
        "fp32 (default: auto)",
    )


def _load(args):
    """The adapter of a command's loading options, on its base."""
    from ..bundle.loading import load_adapter

    return load_adapter(
        args.adapter,
        backbone=args.backbone,
        encoder=args.encoder,
        quantization=args.quantization,
        device=args.device,
        dtype=args.dtype,
    )


def seed_value(text: str) -> int:
    """``--seed``: an integer torch can take (argparse names the option when this refuses)."""
    value = int(text)  # a ValueError is argparse's "invalid seed_value value"
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**63 - 1, got {text}")
    return value


DECODING_OPTIONS = tuple(f.name for f in fields(GenerationConfig) if f.name != "batch_size")  # and its own


def _decoding_options(args, *extra: str) -> dict:
    """The decoding options given on the command line (unset ones stay the adapter's), plus ``extra`` ones."""
    names = DECODING_OPTIONS + extra
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


def _rerank_options(args, config: BundleConfig, options: dict) -> bool:
    """Whether generate reranks. A bare ``--rerank`` reranks the candidates the decoding options make; ``--rerank
    N`` (as evaluate's) sets them: N candidates (``num_return_sequences``), found by N beams (``num_beams``, unless
    --num-beams gives more) or by sampling when decoding samples; refuses options that say otherwise."""
    n = args.rerank
    if isinstance(n, bool):
        return n
    if n < 0:
        raise V2TError(f"--rerank N takes N >= 0 candidates (0 or 1 = one), got {n}")
    k = max(n, 1)
    given = options.get("num_return_sequences")
    if given is not None and given != k:
        raise V2TError(
            f"--rerank {n} reranks {k} candidates, --num-return-sequences asks for {given}: drop one of them "
            "(--rerank alone reranks the --num-return-sequences candidates)"
        )
    others = {key: value for key, value in options.items() if key not in ("num_beams", "num_return_sequences")}
    options["num_return_sequences"] = k
    if not GenerationConfig.of_bundle(config, **others).do_sample:
        beams = options.setdefault("num_beams", k)
        if beams < k:
            raise V2TError(
                f"--rerank {n} reranks {k} beams, --num-beams {beams} searches fewer: give --num-beams {k} or "
                "more, or leave --num-beams out"
            )
    return True


def _check_decoding(args, config: BundleConfig, options: dict) -> None:
    """Check the device, the decoding options over the adapter's defaults and the output length against the
    base's context, all before the slow model load."""
    from ..model.backbone import peek_max_positions, pick_device
    from ..model.generate import check_length

    pick_device(args.device)
    opts = GenerationConfig.of_bundle(config, **options)
    unused = [f"--{k.replace('_', '-')}" for k in ("temperature", "top_k", "top_p") if k in options]
    if unused and not opts.do_sample:
        logger.warning(
            "%s only shape sampling: without --do-sample decoding is greedy (or beam search) and ignores them",
            ", ".join(unused),
        )
    backbone = str(Path(args.adapter) / "backbone") if config.full else args.backbone or config.backbone.name
    check_length(opts.max_new_tokens, config.projector.config().slots, peek_max_positions(backbone), backbone)


def _adapter_label(source, resolved: Path, revision: str | None) -> str:
    """What a report names: a local folder by its absolute path; a hub id with its revision and the commit that
    was read (the cache's snapshot folder), so that two revisions' reports can be told apart."""
    if Path(source).exists():
        return str(Path(source).resolve())
    return f"{source}@{revision or 'main'} (commit {Path(resolved).name})"


def _process_rank() -> int:
    """This process's rank under ``accelerate launch`` / ``torchrun`` (0 when run alone)."""
    import os

    return int(os.environ.get("RANK", "0") or 0)
