"""What a training step costs before it runs: parameter counts and a rough peak memory estimate."""

from __future__ import annotations

from .config import RunConfig


def describe_cost(v2t, cfg: RunConfig) -> dict:
    """Trainable and frozen parameter counts and a rough peak accelerator memory estimate for one step."""
    trainable = sum(p.numel() for p in v2t.trainable_parameters())
    base = v2t.base_model
    frozen = sum(p.numel() for p in base.parameters() if not p.requires_grad)
    weight_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    info = v2t.backbone_info
    layers = getattr(base.config, "num_hidden_layers", None) or getattr(base.config, "n_layer", 12)
    seq = cfg.data.max_tokens + cfg.projector.prefix_length
    batch = cfg.training.batch_size
    act_bytes = 2 if v2t.device.type == "cuda" else 4
    # activations kept for backward: ~18 tensors of (B, T, h) per layer, or 2 per layer with checkpointing
    per_layer = (2 if cfg.training.gradient_checkpointing else 18) * batch * seq * info["hidden_size"] * act_bytes
    logits = 3 * batch * seq * info["vocab_size"] * 4  # fp32 logits, their softmax and gradient
    optimizer = trainable * 4 * 4  # weights, gradients, two AdamW moments in fp32
    peak = weight_bytes + layers * per_layer + logits + optimizer
    return {"trainable_params": trainable, "frozen_params": frozen, "weights_gib": weight_bytes / 2**30,
            "estimated_peak_gib": peak / 2**30}
