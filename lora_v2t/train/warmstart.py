"""Warm start: begin a training run from a finished adapter bundle's weights instead of fresh ones.

``training.init_adapter`` names a bundle (a folder or hub id). Its LoRA weights and its projector are copied into
the run's fresh adapter before the first step; the optimizer and the schedule start anew (the batch order is
``data.seed``'s, the first run's on the same sample, unless ``data.order_seed`` gives another). This is
how a run continues past the end of an earlier one whose run folder is gone (``--resume`` needs the run folder, and
continues its schedule too), and how a corrector starts from its hypothesizer (the hypothesizer's projector becomes
the corrector's projections of v and of e, see :class:`lora_v2t.model.projector.SplitProjector`; its projection of
v - e starts fresh). A corrector that starts so begins where the hypothesizer ends, and learns to use the hypothesis.

The bundle must fit the recipe: the same encoder and backbone, the same LoRA rank, targets and layers, and a
projector of the same kind and shape (or, for a corrector, the hypothesizer's projector as its v part). Anything
else is refused in one line naming both sides.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from ..bundle.adapter import check_compatible, validate_bundle
from ..bundle.format import BundleConfig
from ..bundle.hub import resolve_adapter
from ..model.projector import PrefixProjector, SplitProjector
from ..util.errors import V2TError, first_line

if TYPE_CHECKING:
    from ..model.vector2text import Vector2Text

logger = logging.getLogger(__name__)


def warm_start(v2t: Vector2Text, source: str) -> None:
    """Copy bundle ``source``'s LoRA and projector weights into ``v2t``'s active (fresh) adapter."""
    from safetensors.torch import load_file

    path = resolve_adapter(source)
    config = validate_bundle(path)
    where = f"training.init_adapter {source}"
    check_compatible(config, v2t.backbone_info, path)
    if config.full or not v2t.is_peft:
        raise V2TError(f"{where}: a warm start copies LoRA adapters; a fully fine-tuned model or run has none")
    if config.encoder.spec != v2t.meta.encoder.spec:
        raise V2TError(
            f"{where} was trained on vectors of {config.encoder.spec!r}, this recipe's encoder is "
            f"{v2t.meta.encoder.spec!r}: use the same encoder"
        )
    _check_lora(config, v2t, where)
    _load_lora(v2t, load_file(str(path / "adapter_model.safetensors")), where)
    _load_projector(v2t, load_file(str(path / "projector.safetensors")), where)
    logger.info("warm start from %s (%s, %s steps)", path, config.role, (config.training or {}).get("steps"))


def _check_lora(config: BundleConfig, v2t: Vector2Text, where: str) -> None:
    """Refuse a bundle whose LoRA differs from the run's in rank, targets or layers."""
    mine = v2t.model.peft_config[v2t.active_adapter]
    theirs = config.lora
    if theirs is None:
        raise V2TError(f"{where} records no LoRA section: it is not an adapter bundle this version can start from")
    pairs = {
        "r": (theirs.r, mine.r),
        "target_modules": (sorted(theirs.target_modules or []), sorted(mine.target_modules or [])),
        "layers": (theirs.layers, _layers(mine.layers_to_transform)),
    }
    for name, (a, b) in pairs.items():
        if a != b:
            raise V2TError(f"{where} has LoRA {name}={a}, this recipe lora.{name}={b}: set the recipe's to match")


def _layers(value) -> list[int] | None:
    if value is None:
        return None
    return [value] if isinstance(value, int) else sorted(value)


def _load_lora(v2t: Vector2Text, state: dict[str, torch.Tensor], where: str) -> None:
    """peft's own loader, into the active adapter; every LoRA weight of the run must come from the bundle."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(v2t.model, state, adapter_name=v2t.active_adapter)
    unexpected: list[str] = list(getattr(result, "unexpected_keys", []))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if unexpected or missing:
        extra = (unexpected or missing)[0]
        raise V2TError(f"{where}: its LoRA weights do not fit this recipe's adapter (first mismatch: {extra})")


def _load_projector(v2t: Vector2Text, state: dict[str, torch.Tensor], where: str) -> None:
    """The bundle's projector weights into the run's projector, which must have the same kind and shape, or an
    mlp projector with a multiple of the bundle's slots (its slots repeated, :func:`tile_slots`); a corrector's
    split projector may instead start from a hypothesizer's: its parts for v and e both get it."""
    projector = v2t.projector
    device = projector.target_rms.device
    state = {k: v.to(device) for k, v in state.items()}
    targets: list[torch.nn.Module] = [projector]
    from_hypothesizer = False
    if isinstance(projector, SplitProjector) and not any(k.startswith("parts.") for k in state):
        from_hypothesizer = True
        targets = [projector.parts[0], projector.parts[1]]
    state = tile_slots(state, projector.prefix_length, projector.hidden_size, where)  # as it is but for mlp states
    for target in targets:
        try:
            target.load_state_dict(state)
        except RuntimeError as exc:
            fix = (
                "the corrector's projector.prefix_length must be a multiple of the hypothesizer's, and its "
                "hidden_dim the hypothesizer's"
                if from_hypothesizer
                else "set projector.kind and hidden_dim as the bundle has them, prefix_length a multiple of its"
            )
            raise V2TError(
                f"{where}: its projector does not fit this recipe's ({first_line(exc, 160)}): {fix} "
                "(lora-v2t info shows them)"
            ) from exc


def tile_slots(state: dict[str, torch.Tensor], slots: int, hidden_size: int, where: str) -> dict[str, torch.Tensor]:
    """A hypothesizer's mlp projector ``state`` widened to ``slots`` prefix slots: its k slots repeated
    ``slots // k`` times (each group of k starts as the hypothesizer's whole prefix; training sets them apart).
    ``slots`` equal to k returns ``state`` as it is; one that is not a multiple of k is refused. A corrector's
    parts for v and e start so, and so does a hypothesizer with more slots than the bundle it continues."""
    weight = state.get(f"{PrefixProjector.MLP_OUTPUT}.weight")
    if weight is None or weight.shape[0] % hidden_size:
        return state  # not an mlp projector of this backbone: load_state_dict names the mismatch
    have = weight.shape[0] // hidden_size
    if slots == have:
        return state
    if slots % have:
        raise V2TError(
            f"{where}: its projector fills {have} slot(s) and this recipe's projector.prefix_length is {slots}: "
            f"set projector.prefix_length to a multiple of {have}"
        )
    repeats = slots // have
    tiled = dict(state)
    for name in ("weight", "bias"):
        key = f"{PrefixProjector.MLP_OUTPUT}.{name}"
        tiled[key] = state[key].repeat(repeats, *[1] * (state[key].dim() - 1))  # slot-major rows, k * hidden_size
    return tiled
