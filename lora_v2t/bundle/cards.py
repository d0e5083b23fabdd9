"""Model cards: the README.md of a bundle, with the hub's metadata header (``huggingface_hub.ModelCard``)."""

from __future__ import annotations

import re
from pathlib import Path

from ..bundle.format import BundleConfig
from ..bundle.hub import backbone_hub_id

LIBRARY_NAME = "lora_v2t"
TAGS = ["lora_v2t", "embedding-inversion", "peft", "lora"]  # the last two only for LoRA adapters
_METRIC_KEY = re.compile(
    r"(?P<data>\S+) (?P<decoding>greedy|(?:reranked\+)?corrected-\d+|reranked|budget-\d+) "
    r"(?P<metric>\w+) \(n=\d+\)"
)


def model_card(config: BundleConfig, source: str = "path/to/this/folder", revision: str | None = None) -> str:
    """A short README for the bundle: what it is, how it was trained, its metrics, how to load it (from ``source``,
    a folder or hub id, at ``revision``). :func:`bundle_card` adds the hub's metadata header."""
    at = f', revision="{revision}"' if revision else ""
    hub_id = config.backbone.hub_id
    hub_note = f" (from `{hub_id}` on the hub)" if hub_id and hub_id != config.backbone.name else ""
    enc, bb, proj, lora, train = config.encoder, config.backbone, config.projector, config.lora, config.training
    lines = [
        "# lora_v2t adapter",
        "",
        f"Turns `{enc.spec}` sentence vectors ({enc.dim}-d) back into text with the frozen base model "
        f"`{bb.name}`{hub_note} ({bb.model_type}, hidden {bb.hidden_size}, vocab {bb.vocab_size}).",
        "",
        f"- projector: `{proj.kind}`, {proj.config().slots} prefix slot(s)",
        "- role: corrector: rewrites a hypothesis closer to its target vector (pass it as `corrector=` with its "
        "hypothesizer; see `lora_v2t.model.correct`)"
        if config.role == "corrector"
        else f"- role: hypothesizer; corrector: `{config.corrector}` (`generate(..., correct_steps=N)` uses it)"
        if config.corrector
        else "- role: hypothesizer",
        f"- LoRA: r={lora.r}, alpha={lora.alpha}, on {', '.join(lora.target_modules or ['(not recorded)'])}"
        f"{' of blocks ' + ', '.join(map(str, lora.layers)) if lora.layers else ''}"
        if lora
        else "- no LoRA: the whole backbone was fine-tuned and is saved in `backbone/` (a baseline, not an adapter)",
        f"- output vocabulary: the {config.output_vocab_size} tokens of its training corpus (generation keeps to them)"
        if config.output_vocab_size
        else "- output vocabulary: the whole tokenizer",
        f"- trained on a `{bb.precision.get('quantization', 'unrecorded')}` base computing in "
        f"`{bb.precision.get('compute_dtype', 'unrecorded')}` (`load_adapter` loads it the same way unless told "
        "otherwise)",
        f"- bundle format {config.format_version}, written by lora_v2t {config.lora_v2t_version}",
        "",
        "## Training",
        "",
    ]
    summary = {k: v for k, v in train.items() if k not in ("metrics", "samples")}
    lines += [f"- {k}: {v}" for k, v in summary.items()] or ["- untrained (fresh adapter)"]
    if train.get("metrics"):
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in train["metrics"].items()]
    if train.get("samples"):
        lines += ["", "## Greedy reconstructions", "", "| original | generated |", "|---|---|"]
        lines += [f"| {s['text']} | {s['generated']} |" for s in train["samples"]]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from lora_v2t import load_adapter",
        f'v2t = load_adapter("{source}"{at})',
        'print(v2t.invert(["Где лодка?"]))',
        "```",
        "",
        f"or `lora-v2t generate --adapter {source}{' --revision ' + revision if revision else ''} "
        '--text "Где лодка?"`.',
        "",
    ]
    return "\n".join(lines)


def card_metadata(config: BundleConfig) -> dict:
    """The model card metadata of a bundle (its v2t_config): base_model, library_name, tags and, from the training
    summary, the metrics (as the card's model-index)."""
    from huggingface_hub import EvalResult, ModelCardData

    backbone, encoder = config.backbone, config.encoder
    results = []
    for key, value in (config.training.get("metrics") or {}).items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        match = _METRIC_KEY.fullmatch(key)
        data, metric = (match["data"], match["metric"]) if match else ("validation", key.removeprefix("val_"))
        results.append(
            EvalResult(
                task_type="text-generation",
                task_name="Embedding inversion",
                dataset_type=data,
                dataset_name=data,
                metric_type=metric,
                metric_value=value,
                metric_name=key,
            )
        )
    data = ModelCardData(
        base_model=backbone.hub_id or backbone_hub_id(backbone.name),
        library_name=LIBRARY_NAME,
        tags=TAGS if config.lora else TAGS[:2],
        model_name=f"lora_v2t {encoder.spec} -> {backbone.name}" if results else None,
        eval_results=results or None,
    )
    return data.to_dict()


def bundle_card(config: BundleConfig, source: str = "path/to/this/folder", revision: str | None = None):
    """The bundle's README.md: a ``huggingface_hub.ModelCard`` with :func:`card_metadata` and the card text of
    :func:`lora_v2t.bundle.adapter.model_card` (its examples load the adapter from ``source``)."""
    from huggingface_hub import ModelCard, ModelCardData

    yaml = ModelCardData(**card_metadata(config)).to_yaml()
    return ModelCard(f"---\n{yaml}\n---\n\n{model_card(config, source, revision)}")


def complete_card(folder: Path, config: BundleConfig):
    """The folder's README.md as a ModelCard, with the metadata it lacks filled in from ``config`` (bundles
    written before lora_v2t wrote card metadata; a card's own values are kept)."""
    from huggingface_hub import ModelCard, ModelCardData

    readme = folder / "README.md"
    if not readme.is_file():
        return bundle_card(config)
    text = readme.read_text(encoding="utf-8")
    wanted = card_metadata(config)
    if not text.startswith("---"):
        return ModelCard(f"---\n{ModelCardData(**wanted).to_yaml()}\n---\n\n{text}")
    card = ModelCard(text, ignore_metadata_errors=True)
    for key, value in wanted.items():
        if key == "tags":
            card.data["tags"] = list(dict.fromkeys([*(card.data.get("tags") or []), *value]))
        elif key != "model-index" and card.data.get(key) in (None, "", []):
            card.data[key] = value
    if "model-index" in wanted and not card.data.get("eval_results"):
        filled = ModelCardData(**{"model-index": wanted["model-index"]})
        card.data["model_name"], card.data["eval_results"] = filled.model_name, filled.eval_results
    return card
