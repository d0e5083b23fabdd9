"""The commands about adapter bundles themselves: info, push."""

from __future__ import annotations

import math
from pathlib import Path

from ..bundle.format import BundleConfig
from ..util.terminal import shown, shown_json


def _add_info_command(sub) -> None:
    info = sub.add_parser(
        "info",
        help="describe an adapter bundle without loading the base model",
        description="Print what an adapter bundle holds: base, encoder, projector, LoRA, sizes and training summary.",
    )
    info.add_argument("adapter", help="adapter bundle folder, or hub id org/name (a folder of that name wins)")
    info.add_argument("--revision", help="for a hub id: branch, tag or commit (default: main)")
    info.add_argument("--json", action="store_true", help="print the bundle's v2t_config.json as JSON")
    info.set_defaults(func=cmd_info)


def _add_push_command(sub) -> None:
    push = sub.add_parser(
        "push",
        help="upload an adapter bundle to the Hugging Face hub",
        description="Check that DIR is a complete adapter bundle, then upload its files (only the bundle's: a "
        "training checkpoint's optimizer state stays) to the hub repository REPO_ID in one commit, "
        "creating the repository if needed. A model card without the hub metadata (bundles written "
        "before lora_v2t wrote it) is uploaded with base_model, library_name, tags and metrics filled "
        "in; DIR is not changed. Log in first with `hf auth login` (or set HF_TOKEN).",
        epilog='then: lora-v2t generate --adapter REPO_ID --text ...   or   load_adapter("REPO_ID")',
    )
    push.add_argument("folder", type=Path, metavar="DIR", help="adapter bundle folder")
    push.add_argument("repo_id", metavar="REPO_ID", help="hub repository id, org/name")
    push.add_argument(
        "--private",
        action="store_true",
        default=None,
        help="create the repository private (an existing one keeps its visibility)",
    )
    push.add_argument(
        "--revision",
        "--branch",
        dest="revision",
        help="branch to commit to, created from main if missing (default: main)",
    )
    push.add_argument("--commit-message", help="the commit's message")
    push.set_defaults(func=cmd_push)


def cmd_info(args) -> int:
    from ..bundle.adapter import validate_bundle
    from ..bundle.hub import resolve_adapter

    source = args.adapter
    args.adapter = resolve_adapter(source, args.revision)
    config = validate_bundle(args.adapter)
    if args.json:
        print(shown_json(config.to_dict(), indent=2))
        return 0
    from safetensors import safe_open

    def count(file: str) -> str:
        """The file's parameter count, and the dtypes it stores other than fp32 (a bf16 projector's)."""
        with safe_open(str(args.adapter / file), framework="pt") as handle:
            slices = [handle.get_slice(k) for k in handle.keys()]
            params = sum(math.prod(s.get_shape()) for s in slices)
            other = sorted({s.get_dtype().lower() for s in slices} - {"f32"})
        return f"{params:,} params" + (f" ({', '.join(other)} weights, loaded into fp32)" if other else "")

    enc, bb, proj, lora = config.encoder, config.backbone, config.projector, config.lora
    size = sum(p.stat().st_size for p in args.adapter.rglob("*") if p.is_file())
    named = source if Path(source).expanduser() == args.adapter else f"{source} (hub, cached in {args.adapter})"
    hub_id = bb.hub_id
    threshold = "" if bb.int8_threshold is None else f", int8 threshold {bb.int8_threshold}"
    lines = [
        f"adapter      {named}  (bundle format {config.format_version}, {size / 2**20:.2f} MiB)",
        f"base         {bb.name}{f' (from {hub_id} on the hub)' if hub_id and hub_id != bb.name else ''}"
        f"  ({bb.model_type}, hidden {bb.hidden_size}, vocab {bb.vocab_size})",
        f"trained on   quantization {bb.precision.get('quantization', 'unrecorded')}, compute dtype "
        f"{bb.precision.get('compute_dtype', 'unrecorded')}{threshold} (loaded that way where the device can, "
        "unless --quantization or --dtype say otherwise)",
        f"encoder      {enc.spec}  ({enc.dim}-d)",
        f"role         {_describe_role(config)}",
        f"projector    {proj.kind}, {proj.config().slots} slot(s), {count('projector.safetensors')}",
    ]
    if lora:
        targets = ", ".join(lora.target_modules or ["(not recorded)"])
        lines.append(f"LoRA         r={lora.r} alpha={lora.alpha} on {targets}, {count('adapter_model.safetensors')}")
    else:
        lines.append("LoRA         none: a fully fine-tuned backbone is saved in backbone/ (a baseline)")
    training = config.training
    if not training:
        lines.append("training     none (a fresh, untrained adapter)")
    for key, value in training.items():
        if key != "samples":
            lines.append(f"training     {key}: {value}")
    print("\n".join(shown(line) for line in lines))
    return 0


def _describe_role(config: BundleConfig) -> str:
    if config.role == "corrector":
        return (
            "corrector: rewrites a hypothesis closer to its vector (reads v, e and v - e; see lora_v2t.model.correct)"
        )
    paired = config.corrector
    return "hypothesizer" + (
        f"; its corrector: {paired} (--correct-steps N uses it)"
        if paired
        else " (no corrector named: --correct-steps N needs --corrector DIR or shift)"
    )


def cmd_push(args) -> int:
    from ..bundle.push import push_folder

    url = push_folder(
        args.folder, args.repo_id, private=args.private, revision=args.revision, commit_message=args.commit_message
    )
    at = f", revision={args.revision!r}" if args.revision else ""
    print(
        shown(
            f"pushed {args.folder} to {args.repo_id}: {url}\nload it with:  from lora_v2t import load_adapter; "
            f"v2t = load_adapter({args.repo_id!r}{at})",
            lines=True,
        )
    )
    return 0
