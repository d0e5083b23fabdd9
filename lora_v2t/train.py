"""The training loop, on accelerate: only the projector and the LoRA weights of a frozen backbone learn.

Run folder ``<output_dir>/<run_name>/``:

- ``recipe.yaml``: the resolved configuration;
- ``metrics.jsonl``: one JSON line per evaluation (and per log line, with ``"kind": "train"``);
- ``loss.png``: training and validation loss against steps, redrawn at every evaluation;
- ``step-NNNNNN/``: checkpoints: complete adapter bundles plus ``optimizer.safetensors`` and
  ``trainer_state.json`` (no pickle anywhere); the last ``keep_checkpoints`` are kept;
- ``final/``: the finished adapter bundle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .adapter import _replace_dir
from .backbone import checkpoints_dir
from .config import RunConfig
from .data import bucketed_batches, embed_corpus, read_sentences, sample_and_split, tokenize_corpus
from .errors import V2TError

logger = logging.getLogger(__name__)

# keys that may change when a run is resumed; any other difference means another recipe
RESUMABLE_CHANGES = {"training.max_steps", "training.max_minutes", "training.eval_every", "training.save_every",
                     "training.keep_checkpoints", "training.log_every", "training.num_samples",
                     "training.tensorboard", "training.output_dir", "data.cache_dir"}


def run_dir_of(cfg: RunConfig) -> Path:
    return Path(cfg.training.output_dir or checkpoints_dir() / "runs") / cfg.training.run_name


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders are ignored)."""
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.glob("step-*") if p.is_dir() and (p / "trainer_state.json").exists())


def _flatten(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_same_recipe(saved: dict, current: dict, where: Path) -> None:
    """Raise if a resume folder was made by a different recipe (beyond the keys that may change)."""
    a, b = _flatten(saved), _flatten(current)
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] == "generation" or key in RESUMABLE_CHANGES:
            continue
        if a.get(key) != b.get(key):
            raise V2TError(f"resume folder {where} was made by another recipe: {key} was {a.get(key)!r}, now "
                           f"{b.get(key)!r}; resume with the same recipe or start a new --training.run_name")


# ---------------------------------------------------------------------- cost
def describe_cost(v2t, cfg: RunConfig) -> dict:
    """Trainable and frozen parameter counts and a rough peak accelerator memory estimate for one step."""
    trainable = sum(p.numel() for p in v2t.trainable_parameters())
    base = v2t.base_model
    frozen = sum(p.numel() for p in base.parameters() if not p.requires_grad)
    weight_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    info = v2t.backbone_info
    cfg_model = base.config
    layers = getattr(cfg_model, "num_hidden_layers", None) or getattr(cfg_model, "n_layer", 12)
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


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(v2t, optimizer, scheduler, state: dict, cfg: RunConfig, run_dir: Path,
                    rng_state: torch.Tensor | None = None) -> Path:
    """Write step-NNNNNN/ atomically (bundle + optimizer + trainer state), then prune old ones."""
    from safetensors.torch import save_file

    name = f"step-{state['step']:06d}"
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        v2t.save_adapter(tmp, training=training_summary(cfg, state))
        tensors, layout = {}, {}
        for idx, param_state in optimizer.state_dict()["state"].items():
            layout[str(idx)] = sorted(param_state)
            for key, value in param_state.items():
                tensors[f"state.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        tensors["rng.torch"] = torch.get_rng_state() if rng_state is None else rng_state
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        trainer_state = {"state": state, "optimizer_layout": layout,
                         "param_groups": optimizer.state_dict()["param_groups"],
                         "scheduler": scheduler.state_dict(), "recipe": cfg.to_dict()}
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1, default=str))
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[: -cfg.training.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint saved: %s", final)
    return final


def load_checkpoint(path: Path, v2t, optimizer, scheduler) -> dict:
    """Restore LoRA, projector, optimizer, scheduler and RNG from a checkpoint; return the trainer state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from .adapter import validate_bundle

    validate_bundle(path)
    trainer_state = json.loads((path / "trainer_state.json").read_text())
    if v2t.is_peft:
        lora = load_file(str(path / "adapter_model.safetensors"), device=str(v2t.device))
        result = set_peft_model_state_dict(v2t.model, lora, adapter_name=v2t.active_adapter)
        if getattr(result, "unexpected_keys", None):
            raise V2TError(f"{path}: LoRA weights do not fit this model ({result.unexpected_keys[:2]})")
    else:  # full fine-tuning: the whole backbone was saved
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(path / "backbone", dtype=v2t.base_model.dtype)
        v2t.base_model.load_state_dict(saved.state_dict())
        del saved
    v2t.projector.load_state_dict(load_file(str(path / "projector.safetensors"), device=str(v2t.device)))
    tensors = load_file(str(path / "optimizer.safetensors"))
    opt_state = {"state": {}, "param_groups": trainer_state["param_groups"]}
    for idx, keys in trainer_state["optimizer_layout"].items():
        opt_state["state"][int(idx)] = {k: tensors[f"state.{idx}.{k}"] for k in keys}
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(trainer_state["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return trainer_state["state"]


def training_summary(cfg: RunConfig, state: dict, metrics: dict | None = None) -> dict:
    summary = {
        "steps": state["step"],
        "sentences_seen": state["sentences_seen"],
        "data": cfg.data.train,
        "batch_size": cfg.training.batch_size * cfg.training.grad_accum,
        "lr": cfg.training.lr,
        "projector_lr": cfg.training.projector_lr,
        "wall_minutes": round(state["elapsed_s"] / 60, 1),
    }
    if metrics:
        summary["metrics"] = metrics
    return summary


# ---------------------------------------------------------------------- plotting
def plot_losses(metrics_file: Path, out: Path) -> None:
    """Training and validation loss against steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train", alpha=0.7)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(out.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------- data
def prepare_data(cfg: RunConfig, encoder=None, show_progress: bool = True):
    """Read, filter, sample and split the corpus, and embed it through the cache.

    Returns (train_texts, val_texts, train_vectors (memory map), val_vectors).
    """
    from .encoders import load_encoder

    dc = cfg.data
    encoder = encoder or load_encoder(cfg.encoder.spec)
    sentences, stats = read_sentences(dc.train, dc.min_chars, dc.max_chars)
    logger.info("corpus %s", stats.summary())
    val_given = None
    if dc.val:
        val_given, val_stats = read_sentences(dc.val, dc.min_chars, dc.max_chars)
        logger.info("validation %s", val_stats.summary())
    train_texts, val_texts = sample_and_split(sentences, dc.val_size, dc.max_sentences, dc.seed, val_given)
    del sentences
    cache_dir = Path(dc.cache_dir) if dc.cache_dir else checkpoints_dir() / "cache"
    stem = Path(dc.train).stem
    train_vectors = embed_corpus(train_texts, encoder, cache_dir, f"{stem}-train", show_progress=show_progress)
    val_vectors = np.asarray(embed_corpus(val_texts, encoder, cache_dir, f"{stem}-val", show_progress=False))
    return train_texts, val_texts, train_vectors, val_vectors


# ---------------------------------------------------------------------- the loop
def train(cfg: RunConfig, resume: bool | str | Path = False, show_progress: bool = True) -> Path:
    """Train an adapter as the recipe says; returns the ``final/`` bundle folder.

    Args:
        cfg: the recipe.
        resume: False for a new run; True to continue this recipe's run folder; or a run folder to continue.
        show_progress: progress bars for embedding and training.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    from .encoders import load_encoder
    from .model import Vector2Text

    tc, dc = cfg.training, cfg.data
    run_dir = Path(resume) if isinstance(resume, (str, Path)) else run_dir_of(cfg)
    checkpoints = list_checkpoints(run_dir)
    if resume:
        if not checkpoints:
            raise V2TError(f"nothing to resume in {run_dir}: it holds no step-NNNNNN checkpoint")
        saved = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["recipe"]
        check_same_recipe(saved, cfg.to_dict(), run_dir)
    elif checkpoints or (run_dir / "final").exists():
        raise V2TError(f"run folder {run_dir} already holds a run: pass --resume to continue it, or choose "
                       "another --training.run_name")

    if tc.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise V2TError("training.tensorboard=true needs the tensorboard package: pip install tensorboard")
    mixed = tc.mixed_precision
    # accelerate places each process on its device; backbone.device=cpu forces the CPU
    cuda = torch.cuda.is_available() and (cfg.backbone.device or "cuda").startswith("cuda")
    if mixed == "auto":
        mixed = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    accelerator = Accelerator(mixed_precision=mixed, cpu=not cuda,
                              log_with="tensorboard" if tc.tensorboard else None, project_dir=str(run_dir))
    set_seed(tc.seed)

    encoder = load_encoder(cfg.encoder.spec)
    train_texts, val_texts, train_vectors, val_vectors = prepare_data(cfg, encoder, show_progress)

    # ---- model and optimiser
    v2t = Vector2Text.create(backbone=cfg.backbone.name, encoder=encoder, projector=cfg.projector.kind,
                             prefix_length=cfg.projector.prefix_length, lora_r=cfg.lora.r,
                             lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                             target_modules=cfg.lora.target_modules, lora_layers=cfg.lora.layers,
                             quantization=cfg.backbone.quantization,
                             device=str(accelerator.device), projector_hidden_dim=cfg.projector.hidden_dim,
                             seed=tc.seed, trainable=tc.trainable)
    v2t.adapter_meta[v2t.active_adapter]["generation"] = asdict(cfg.generation)
    if tc.gradient_checkpointing:
        v2t.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    projector_params = list(v2t.projector.parameters())
    lora_params = [p for p in v2t.trainable_parameters() if all(p is not q for q in projector_params)]
    for p in lora_params + projector_params:
        p.requires_grad_(True)
    groups = [{"params": lora_params, "lr": tc.lr}]
    if projector_params:
        groups.append({"params": projector_params, "lr": tc.projector_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=tc.weight_decay)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, tc.warmup_steps, tc.max_steps,
                                                            min_lr_rate=tc.min_lr_ratio)
    model, optimizer = accelerator.prepare(v2t, optimizer)

    run_dir.mkdir(parents=True, exist_ok=True)
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "sentences_seen": 0, "elapsed_s": 0.0}
    if resume:
        state = load_checkpoint(checkpoints[-1], v2t, optimizer, scheduler)
        logger.info("resumed %s at step %d", checkpoints[-1], state["step"])
    else:
        import yaml

        (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a crashed run's leftovers start over
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
    cost = describe_cost(v2t, cfg)
    logger.info("parameters: %s trainable, %s frozen; backbone weights %.2f GiB; estimated peak memory "
                "%.2f GiB for batch %d x %d tokens", f"{cost['trainable_params']:,}", f"{cost['frozen_params']:,}",
                cost["weights_gib"], cost["estimated_peak_gib"], tc.batch_size,
                dc.max_tokens + cfg.projector.prefix_length)
    logger.info("training %d sentences, validating on %d; run folder %s", len(train_texts), len(val_texts), run_dir)
    if accelerator.is_main_process and tc.tensorboard:
        accelerator.init_trackers(tc.run_name)

    lengths, corpus_vocab = tokenize_corpus(v2t.tokenizer, train_texts, dc.max_tokens)
    loss_vocab = None
    if tc.loss_vocab == "corpus":
        loss_vocab = torch.from_numpy(corpus_vocab).to(v2t.device)
        v2t.set_output_vocab(corpus_vocab)  # saved with the adapter: generation keeps to what the loss ranked
        logger.info("training loss over the %d tokens the corpus uses (of %d)", len(corpus_vocab),
                    v2t.backbone_info["vocab_size"])
    batches = bucketed_batches(lengths, tc.batch_size, dc.seed, state["epoch"])
    metrics_file = run_dir / "metrics.jsonl"

    world, rank = accelerator.num_processes, accelerator.process_index

    def next_batch() -> np.ndarray:
        """The next batch of this process: with several processes, each takes its own of every `world`."""
        nonlocal batches
        if state["batch_in_epoch"] + world > len(batches):
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            batches = bucketed_batches(lengths, tc.batch_size, dc.seed, state["epoch"])
        idx = batches[state["batch_in_epoch"] + rank]
        state["batch_in_epoch"] += world
        return idx

    def log_metrics(record: dict) -> None:
        if accelerator.is_main_process:
            with open(metrics_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            if tc.tensorboard:
                accelerator.log({k: v for k, v in record.items() if isinstance(v, float)}, step=record["step"])

    def evaluate(train_loss: float | None, ms_per_step: float | None) -> dict:
        val_loss = validation_loss(v2t, val_texts, val_vectors, tc.batch_size, dc.max_tokens)
        n = min(tc.num_samples, len(val_texts))
        samples = v2t.generate(val_vectors[:n], max_new_tokens=dc.max_tokens, do_sample=False, num_beams=1,
                               num_return_sequences=1) if n else []
        parts = [f"step {state['step']}"]
        if train_loss is not None:
            parts.append(f"loss {train_loss:.3f}")
        parts.append(f"val {val_loss:.3f}")
        if ms_per_step is not None:
            parts.append(f"{ms_per_step:.0f} ms/step")
        logger.info(" | ".join(parts))
        for original, generated in zip(val_texts[:n], samples):
            logger.info("    %s ==> %s", original, generated)
        record = {"kind": "eval", "step": state["step"], "val_loss": val_loss, "train_loss": train_loss,
                  "sentences_seen": state["sentences_seen"], "elapsed_s": round(state["elapsed_s"], 1),
                  "samples": [{"text": t, "generated": g} for t, g in zip(val_texts[:n], samples)]}
        log_metrics(record)
        if accelerator.is_main_process:
            plot_losses(metrics_file, run_dir / "loss.png")
        return record

    clock = time.perf_counter()
    base_elapsed = state["elapsed_s"]
    recent: list[float] = []
    window_start, window_steps = time.perf_counter(), 0
    last_eval: dict | None = None
    snapshot = None
    bar = tqdm(total=tc.max_steps, initial=state["step"], desc="training", unit="step",
               disable=not show_progress or not accelerator.is_main_process)
    restore_sigterm, ignore_sigterm = sigterm_as_interrupt()
    try:
        while state["step"] < tc.max_steps:
            if tc.max_minutes is not None and state["elapsed_s"] >= tc.max_minutes * 60:
                logger.info("time budget of %.1f minutes reached at step %d", tc.max_minutes, state["step"])
                break
            model.train()
            snapshot = (json.loads(json.dumps(state)), torch.get_rng_state())  # the state before this step
            step_loss = 0.0
            for micro in range(tc.grad_accum):
                idx = next_batch()
                texts = [train_texts[i] for i in idx]
                vectors = torch.from_numpy(np.asarray(train_vectors[idx]))
                batch = v2t.tokenize(texts, dc.max_tokens)
                sync = micro == tc.grad_accum - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                    with accelerator.autocast():
                        loss = model(vectors, batch["input_ids"], batch["attention_mask"], loss_vocab).loss
                    accelerator.backward(loss / tc.grad_accum)
                step_loss += loss.item() / tc.grad_accum
                state["sentences_seen"] += len(idx) * world
            if tc.max_grad_norm:
                accelerator.clip_grad_norm_(lora_params + projector_params, tc.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            snapshot = None  # the step is complete
            state["elapsed_s"] = base_elapsed + time.perf_counter() - clock
            window_steps += 1
            recent.append(step_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            if not math.isfinite(step_loss):
                raise V2TError(f"the loss became {step_loss} at step {state['step']}: lower training.lr / "
                               "training.projector_lr")
            if state["step"] % tc.log_every == 0:
                ms = (time.perf_counter() - window_start) * 1000 / window_steps
                mean = sum(recent) / len(recent)
                log_metrics({"kind": "train", "step": state["step"], "loss": mean,
                             "lr": scheduler.get_last_lr()[0], "ms_per_step": ms,
                             "elapsed_s": round(state["elapsed_s"], 1), "sentences_seen": state["sentences_seen"]})
                if state["step"] % tc.eval_every:
                    logger.debug("step %d | loss %.3f | %.0f ms/step", state["step"], mean, ms)
            if state["step"] % tc.eval_every == 0 and accelerator.is_main_process:
                ms = (time.perf_counter() - window_start) * 1000 / max(window_steps, 1)
                last_eval = evaluate(sum(recent) / len(recent), ms)
            if state["step"] % tc.log_every == 0 or state["step"] % tc.eval_every == 0:
                recent, window_start, window_steps = [], time.perf_counter(), 0
            if state["step"] % tc.save_every == 0 and accelerator.is_main_process:
                save_checkpoint(v2t, optimizer, scheduler, state, cfg, run_dir)
    except KeyboardInterrupt:
        ignore_sigterm()  # a second SIGTERM must not cut the checkpoint short
        bar.close()
        rng = None
        if snapshot is not None:  # interrupted inside a step: save the state from before it, so that
            state, rng = snapshot  # --resume redoes that step on the same batch with the same dropout
        logger.info("interrupted: saving a checkpoint at step %d before exiting", state["step"])
        if accelerator.is_main_process and state["step"] > 0 and \
                not (run_dir / f"step-{state['step']:06d}").exists():
            save_checkpoint(v2t, optimizer, scheduler, state, cfg, run_dir, rng_state=rng)
        raise
    finally:
        restore_sigterm()
    bar.close()
    if not accelerator.is_main_process:
        accelerator.end_training()
        return run_dir / "final"
    if state["step"] > 0 and not (run_dir / f"step-{state['step']:06d}").exists():
        save_checkpoint(v2t, optimizer, scheduler, state, cfg, run_dir)
    record = last_eval
    if record is None or record["step"] != state["step"]:
        record = evaluate(sum(recent) / len(recent) if recent else None, None)
    final = v2t.save_adapter(run_dir / "final", training=training_summary(
        cfg, state, {"val_loss": round(record["val_loss"], 4)}) | {"samples": record["samples"][:3]})
    accelerator.end_training()
    logger.info("final adapter: %s", final)
    return final


def sigterm_as_interrupt():
    """Treat SIGTERM (``kill``, a job scheduler's stop) like Ctrl-C while training: a checkpoint is saved and
    ``--resume`` continues exactly. Background jobs ignore SIGINT, so this is how to stop them cleanly.
    Returns two functions: one puts the previous handler back, one ignores SIGTERM (while saving)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return (lambda: None), (lambda: None)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    return (lambda: signal.signal(signal.SIGTERM, previous)), (lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))


@torch.no_grad()
def validation_loss(v2t, texts: list[str], vectors: np.ndarray, batch_size: int, max_tokens: int,
                    loss_vocab: torch.Tensor | None = None) -> float:
    """Token-weighted mean cross-entropy over a validation set, in eval mode; over the full vocabulary, or
    over ``loss_vocab`` (see :meth:`Vector2Text.forward`)."""
    was_training = v2t.training
    v2t.eval()
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        batch = v2t.tokenize(texts[start:start + batch_size], max_tokens)
        n_tokens = int(batch["attention_mask"].sum())
        loss = v2t.forward(vectors[start:start + batch_size], **batch, loss_vocab=loss_vocab).loss
        total += float(loss) * n_tokens
        count += n_tokens
    v2t.train(was_training)
    return total / max(count, 1)
