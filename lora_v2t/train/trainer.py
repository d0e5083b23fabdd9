"""The training loop, on accelerate: only the projector and the LoRA weights of a frozen backbone learn.

Run folder ``<output_dir>/<run_name>/``:

- ``recipe.yaml``: the resolved configuration;
- ``metrics.jsonl``: one JSON line per evaluation (and per log line, with ``"kind": "train"``);
- ``loss.png``: training and validation loss against steps, redrawn at every evaluation;
- ``step-NNNNNN/``: checkpoints (see :mod:`lora_v2t.train.checkpoint`); the last ``keep_checkpoints`` are kept;
- ``final/``: the finished adapter bundle;
- ``.lock``: while a run trains in the folder (its main process holds it; a second run into the folder is
  refused, naming the first one's pid).

A run is a :class:`Trainer` walking through named steps: :meth:`~Trainer.prepare_data`,
:meth:`~Trainer.build_model`, :meth:`~Trainer.start_or_resume`, then :meth:`~Trainer.train_step` and
:meth:`~Trainer.after_step` (log, evaluate, checkpoint) until the budget is spent, then :meth:`~Trainer.finish`.
Whatever stops it (Ctrl-C, SIGTERM, CUDA out of memory, a failed write) is met by :meth:`~Trainer.rescue`,
which saves a checkpoint whenever the weights are in a consistent state.

Several processes (``accelerate launch --multi_gpu --num_processes N -m lora_v2t.cli train RECIPE``): the main
process fills the embedding cache first and the others then read it; each process takes its own batch of
every N; the main process evaluates, writes metrics and checkpoints (with every process's RNG state).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import broadcast_object_list

from ..config import RunConfig
from ..model.encoders import Encoder, load_encoder
from ..model.loss import SubsetLoss
from ..model.vector2text import Vector2Text
from ..train.checkpoint import (
    clean_stale_temporaries,
    data_file_digests,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from ..train.data import BatchOrder, tokenize_corpus
from ..train.evaluation import LossWindow, evaluation_record
from ..train.memory import longest_row, memory_report, plan_memory
from ..train.pairs import prepare_data
from ..train.rundir import RunDirLock, check_paths, check_run_folder, finished_run, locate_run, run_dir_of
from ..train.runlog import RunLog, progress_bar
from ..train.setup import _check_tensorboard, make_accelerator, make_optimizer, training_device
from ..train.signals import StopSignals
from ..train.state import TrainState, resume_hint, stop_hint, training_summary
from ..train.warmstart import warm_start
from ..util.errors import V2TError, first_line
from ..util.files import DiskFull, atomic_write

logger = logging.getLogger(__name__)

__all__ = ["train", "Trainer", "run_dir_of", "list_checkpoints", "TrainingStopped"]


class TrainingStopped(V2TError):
    """Training stopped on an unexpected error; the message says what was saved and how to go on."""


def train(cfg: RunConfig, resume: bool | str | Path = False, show_progress: bool = True) -> Path:
    """Train an adapter as the recipe says; returns the ``final/`` bundle folder.

    Args:
        cfg: the recipe.
        resume: False for a new run; True to continue this recipe's run folder; or a run folder to continue.
        show_progress: progress bars for embedding and training.

    Raises:
        V2TError: a bad recipe or data (before anything is trained), or :class:`TrainingStopped` when an error
            stopped training (the message says which checkpoint holds the work done).
        KeyboardInterrupt: Ctrl-C or SIGTERM, after saving a checkpoint.
    """
    return Trainer(cfg, resume, show_progress).run()


# ---------------------------------------------------------------------- the trainer
class Trainer:
    """One training run. ``Trainer(cfg).run()`` does what :func:`train` documents."""

    def __init__(self, cfg: RunConfig, resume: bool | str | Path = False, show_progress: bool = True):
        self.cfg, self.resume = cfg, resume
        self.run_dir = Path(resume) if isinstance(resume, (str, Path)) else run_dir_of(cfg)
        self.resume_from: Path | None = None  # decided by claim_run_dir()
        self.finished: Path | None = None  # final/ of a run resumed with nothing left to do, by claim_run_dir()
        self.run_lock = RunDirLock(self.run_dir)
        self.data_files: dict[str, str | None] | None = None
        check_paths(cfg, self.run_dir)
        _check_tensorboard(cfg)
        self.device = training_device(cfg.backbone.device)
        self.accelerator = make_accelerator(cfg, self.device, self.run_dir)
        self.show_progress = show_progress and self.accelerator.is_main_process
        self.log = RunLog(self.run_dir, self.accelerator, cfg.training.tensorboard)
        self.state = TrainState()
        self.phase = "setup"  # setup | step | update | after | checkpoint: what rescue() may save
        self.snapshot: tuple[TrainState, dict] | None = None  # state and RNG from before the current step
        self.last_eval: dict | None = None
        self.saved_step = -1  # the step of the last checkpoint saved or resumed from (the same on every process)

    def run(self) -> Path:
        self.claim_run_dir()
        try:
            return self.finished or self.run_claimed()
        finally:
            self.run_lock.release()

    def run_claimed(self) -> Path:
        from accelerate.utils import set_seed

        set_seed(self.cfg.training.seed)
        self.prepare_data()
        self.build_model()
        self.start_or_resume()
        self.signals = StopSignals(holding=lambda: self.phase in ("update", "checkpoint"))
        with self.signals:  # rescue() runs inside, so that it can shut the signals out while it saves
            try:
                self.loop()
                final = self.finish()
            except BaseException as exc:
                raise self.rescue(exc)  # noqa: B904 (rescue sets the cause of a TrainingStopped)
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return final

    # ------------------------------------------------------------------ setup
    def claim_run_dir(self) -> None:
        """Take the run folder: the main process locks it for the whole run (a second run into the same folder
        fails at once, naming this one's pid), tidies what killed runs left there and decides where to start (a
        new run, or the newest good checkpoint); with several processes it tells the others."""
        problem, resume_from, finished = None, None, None
        if self.accelerator.is_main_process:
            try:
                check_run_folder(self.cfg, self.run_dir, self.resume)
                self.run_lock.acquire()
                finished = finished_run(self.cfg, self.run_dir) if self.resume else None
                if finished is None:
                    clean_stale_temporaries(self.run_dir)
                    resume_from = locate_run(self.cfg, self.run_dir, self.resume)
                    self.data_files = data_file_digests(self.cfg)
            except V2TError as exc:
                problem = exc
        message, resume_from, finished = self.as_main_process_says(
            [None if problem is None else str(problem), resume_from, finished]
        )
        problem = problem or (V2TError(message) if message is not None else None)
        if problem is not None:
            self.run_lock.release()
            raise problem
        self.resume_from, self.finished = resume_from, finished

    def prepare_data(self) -> None:
        """Read and embed the corpus (the main process fills the cache, then the others read it)."""
        with self.accelerator.main_process_first():
            self.encoder: Encoder | None = load_encoder(self.cfg.encoder.spec)
            self.data = data = prepare_data(self.cfg, self.encoder, self.show_progress)
        self.train_texts, self.val_texts = data.train_texts, data.val_texts
        self.train_vectors, self.val_vectors = data.train_vectors, data.val_vectors
        self.train_contexts, self.val_contexts = data.train_contexts, data.val_contexts  # a corrector's hypotheses
        self.extra_vocab = data.extra_vocab

    def build_model(self) -> None:
        """The backbone with a fresh adapter, its loss, optimizer and schedule, prepared by accelerate."""
        cfg, tc = self.cfg, self.cfg.training
        device = self.device if self.device is not None else self.accelerator.device
        self.v2t = v2t = Vector2Text.from_config(cfg, encoder=self.encoder, device=str(device))
        self.release_encoder()
        if self.accelerator.mixed_precision in ("bf16", "fp16"):  # the precision the adapter learns in
            v2t.meta.precision = (v2t.meta.precision or {}) | {
                "compute_dtype": "bfloat16" if self.accelerator.mixed_precision == "bf16" else "float16"
            }
        v2t.meta.generation = asdict(cfg.generation)
        if tc.role == "corrector":  # it reads hypotheses cut as in training
            v2t.meta.context_tokens = cfg.data.max_tokens
        self.prepare_tokens()
        self.plan_memory()
        if tc.init_adapter and self.resume_from is None:  # a resumed run has its own weights
            warm_start(v2t, tc.init_adapter)
        self.params = v2t.trainable_parameters()
        for param in self.params:
            param.requires_grad_(True)
        optimizer, self.scheduler = make_optimizer(v2t, tc)
        self.model, self.optimizer = self.accelerator.prepare(v2t, optimizer)

    def prepare_tokens(self) -> None:
        """Tokenise the corpus once (batches are padded from its ids), and build the loss over its vocabulary."""
        cfg, v2t = self.cfg, self.v2t
        self.tokens = tokenize_corpus(v2t.tokenizer, self.train_texts, cfg.data.max_tokens)
        self.context_tokens = (
            None
            if self.train_contexts is None
            else tokenize_corpus(v2t.tokenizer, self.train_contexts, cfg.data.max_tokens)
        )
        corpus_vocab = self.tokens.vocab
        if self.extra_vocab is not None:
            corpus_vocab = np.union1d(corpus_vocab, self.extra_vocab)
        self.loss_vocab = None
        if cfg.training.loss_vocab == "corpus":
            # built from every training sentence as batches cut them: the labels need no check at each step
            self.loss_vocab = SubsetLoss(v2t.base_model, torch.from_numpy(corpus_vocab), check_labels=False)
            v2t.set_output_vocab(corpus_vocab)  # saved with the adapter: generation keeps to what the loss ranked
            logger.info(
                "training loss over the %d tokens the corpus uses (of %d)",
                len(corpus_vocab),
                v2t.backbone_info["vocab_size"],
            )

    def plan_memory(self) -> None:
        """Gradient checkpointing as the recipe says, and the cost estimate the run logs (see
        :func:`lora_v2t.train.memory.plan_memory`)."""
        val = (self.val_texts, self.val_contexts)
        longest = longest_row(self.v2t.tokenizer, self.cfg.data.max_tokens, self.tokens, self.context_tokens, *val)
        vocab = None if self.loss_vocab is None else len(self.loss_vocab.vocab)
        self.cost, self.checkpointing = plan_memory(
            self.v2t, self.cfg, vocab, longest, lambda value: self.as_main_process_says([value])[0]
        )  # the main process's choice: every GPU's free memory differs

    def release_encoder(self) -> None:
        """The embedding cache is filled: free the encoder (LaBSE alone is 1.8 GB of GPU memory in fp32)."""
        self.v2t.release_encoders()
        self.encoder = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def start_or_resume(self) -> None:
        """Load the last checkpoint, or start the run folder afresh; log what the run costs."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resume_from is not None:
            saved = load_checkpoint(
                self.resume_from,
                self.v2t,
                self.optimizer,
                self.scheduler,
                rank=self.accelerator.process_index,
                scaler=self.accelerator.scaler,
            )
            self.state = TrainState(**saved)
            self.saved_step = self.state.step
            self.log.resume_at(self.state.step)
            logger.info("resumed %s at step %d", self.resume_from, self.state.step)
        elif self.accelerator.is_main_process:
            import yaml

            self.log.start_over()
            atomic_write(
                self.run_dir / "recipe.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
            )
        cost = self.cost
        logger.info(
            "parameters: %s trainable, %s frozen; backbone weights %.2f GiB; estimated peak memory "
            "%.2f GiB (%.2f loaded + %.2f a step) for batch %d x %d tokens",
            f"{cost['trainable_params']:,}",
            f"{cost['frozen_params']:,}",
            cost["weights_gib"],
            cost["estimated_peak_gib"],
            cost["loaded_gib"],
            cost["step_gib"],
            cfg.training.batch_size,
            cost["tokens_per_row"],
        )
        logger.info(
            "training %d sentences, validating on %d; run folder %s",
            len(self.train_texts),
            len(self.val_texts),
            self.run_dir,
        )
        if self.accelerator.is_main_process and cfg.training.tensorboard:
            self.accelerator.init_trackers(cfg.training.run_name)
        self.batch_order = BatchOrder(self.tokens.lengths, cfg.training.batch_size, cfg.data.batch_seed)

    # ------------------------------------------------------------------ the loop
    def loop(self) -> None:
        tc = self.cfg.training
        self.clock, self.base_elapsed = time.perf_counter(), self.state.elapsed_s
        self.window = LossWindow()
        self.bar = progress_bar(self.cfg.training, self.state, self.show_progress)
        while self.state.step < tc.max_steps:
            if self.out_of_time():
                logger.info("time budget of %.1f minutes reached at step %d", tc.max_minutes, self.state.step)
                break
            self.after_step(self.train_step())
        self.bar.close()

    def out_of_time(self) -> bool:
        """Whether ``training.max_minutes`` is spent; with several processes the main one's clock decides for
        all, so that they all stop at the same step."""
        budget = self.cfg.training.max_minutes
        if budget is None:
            return False
        return self.as_main_process_says([self.state.elapsed_s >= budget * 60])[0]

    def as_main_process_says(self, values: list) -> list:
        """``values`` as the main process has them: with several processes, each takes the main one's decisions
        (processes that decided differently would fall out of step)."""
        return values if self.accelerator.num_processes == 1 else broadcast_object_list(values)

    def next_batch(self) -> tuple[np.ndarray, int]:
        """This process's next batch, and how many sentences all processes take together this time."""
        taken = self.batch_order.take(self.state, self.accelerator.num_processes)
        return taken[self.accelerator.process_index], sum(len(b) for b in taken)

    def train_step(self) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns its mean loss."""
        tc, acc = self.cfg.training, self.accelerator
        self.model.train()
        self.snapshot = (TrainState(**asdict(self.state)), rng_state())
        self.phase = "step"
        step_loss = 0.0
        for micro in range(tc.grad_accum):
            idx, sentences = self.next_batch()
            vectors = torch.from_numpy(np.asarray(self.train_vectors[idx]))
            batch = self.v2t.pad_rows(
                self.tokens.rows(idx),
                self.cfg.data.max_tokens,
                None if self.context_tokens is None else self.context_tokens.rows(idx),
            )
            with contextlib.nullcontext() if micro == tc.grad_accum - 1 else acc.no_sync(self.model):
                with acc.autocast():
                    loss = self.model(
                        vectors, batch["input_ids"], batch["attention_mask"], self.loss_vocab, batch.get("label_mask")
                    ).loss
                acc.backward(loss / tc.grad_accum)
            step_loss += loss.detach() / tc.grad_accum
            self.state.sentences_seen += sentences
        step_loss = float(acc.reduce(step_loss, "mean") if acc.num_processes > 1 else step_loss)  # all ranks'
        if not math.isfinite(step_loss):
            raise V2TError(
                f"the loss became {step_loss} at step {self.state.step + 1}: lower training.lr / training.projector_lr"
            )
        if tc.max_grad_norm:
            acc.clip_grad_norm_(self.params, tc.max_grad_norm)
        self.phase = "update"  # from here until the step is counted, the weights are half-updated
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.snapshot, self.phase = None, "after"
        self.signals.deliver()  # a Ctrl-C that came during the update stops the run now
        return step_loss

    def after_step(self, step_loss: float) -> None:
        """Progress, the training log, evaluation and checkpoints, each on its own schedule."""
        tc, state = self.cfg.training, self.state
        state.elapsed_s = self.base_elapsed + time.perf_counter() - self.clock
        self.window.add(step_loss)
        timed = tc.max_minutes is not None  # see progress_bar
        self.bar.update(
            1 if tc.max_minutes is None else min(round(state.elapsed_s), round(tc.max_minutes * 60)) - self.bar.n
        )
        self.bar.set_postfix_str(f"step {state.step}, loss {step_loss:.3f}" if timed else f"loss={step_loss:.3f}")
        if state.step % tc.log_every == 0:
            self.log.append(
                {
                    "kind": "train",
                    "step": state.step,
                    "loss": self.window.mean_loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "ms_per_step": self.window.ms_per_step,
                    "elapsed_s": round(state.elapsed_s, 1),
                    "sentences_seen": state.sentences_seen,
                }
            )
        if state.step % tc.eval_every == 0 and self.accelerator.is_main_process:
            self.evaluate(self.window.mean_loss, self.window.ms_per_step)
        if state.step % tc.log_every == 0 or state.step % tc.eval_every == 0:
            self.window = LossWindow()
        if state.step % tc.save_every == 0:
            self.checkpoint()

    # ------------------------------------------------------------------ evaluation and checkpoints
    def evaluate(self, train_loss: float | None, ms_per_step: float | None) -> dict:
        """Validation loss and a few greedy reconstructions: logged, recorded, plotted."""
        record = evaluation_record(self.v2t, self.cfg, self.state, self.data, train_loss, ms_per_step)
        self.log.append(record)
        self.log.plot()
        self.last_eval = record
        return record

    def checkpoint(self) -> None:
        """A regular checkpoint: every process hands its RNG states to the main process, which saves."""
        from accelerate.utils import gather_object

        self.phase = "checkpoint"
        rngs = gather_object([rng_state()]) if self.accelerator.num_processes > 1 else [rng_state()]
        if self.accelerator.is_main_process:
            self.save(self.state, rngs)
        self.saved_step, self.phase = self.state.step, "after"
        self.signals.deliver()  # a Ctrl-C that came during the write stops the run now, the checkpoint complete

    def save(self, state: TrainState, rngs: list[dict]) -> Path:
        return save_checkpoint(
            self.run_dir,
            self.v2t,
            self.optimizer,
            self.scheduler,
            asdict(state),
            self.cfg,
            rngs,
            training_summary(self.cfg, state),
            scaler=self.accelerator.scaler,
            data_files=self.data_files,
        )

    def finish(self) -> Path:
        """Last checkpoint, last evaluation, and the ``final/`` bundle."""
        state = self.state
        if state.step > 0 and self.saved_step != state.step:
            self.checkpoint()
        final = self.run_dir / "final"
        if not self.accelerator.is_main_process:
            return final
        record = self.last_eval
        if record is None or record["step"] != state.step:
            record = self.evaluate(self.window.mean_loss if self.window.losses else None, None)
        summary = training_summary(self.cfg, state, {"val_loss": round(record["val_loss"], 4)})
        summary["memory"] = self.memory_check()
        self.v2t.save_adapter(final, training=summary | {"samples": record["samples"][:3]})
        logger.info("final adapter: %s", final)
        return final

    def memory_check(self) -> dict:
        """The peak memory measured so far against the estimate logged at the start; logged and returned."""
        return memory_report(self.v2t.device, self.cost, self.checkpointing)

    # ------------------------------------------------------------------ when something stops the run
    def rescue(self, exc: BaseException) -> BaseException:
        """Save what was trained, if the weights are consistent; return the exception to raise: ``exc`` itself,
        or for an unexpected error one :class:`TrainingStopped` line that says where the work is."""
        self.signals.ignore()  # a second Ctrl-C or SIGTERM must not cut the checkpoint short
        if hasattr(self, "bar"):
            self.bar.close()
        full = isinstance(exc, DiskFull)  # a checkpoint would not fit either: the last one holds the work
        saved = self.save_on_stop(exc) if self.accelerator.is_main_process and not full else None
        if not full and (isinstance(exc, (KeyboardInterrupt, V2TError)) or not isinstance(exc, Exception)):
            return exc
        where = (
            f"checkpoint {saved} holds the work done: fix the cause, then continue with --resume"
            if saved
            else resume_hint(self.run_dir)
        )
        why = f": {exc}" if full else f" by {type(exc).__name__}: {first_line(exc, 300)}{stop_hint(exc)}"
        stopped = TrainingStopped(f"training stopped at step {self.state.step}{why}; {where}")
        stopped.__cause__ = exc
        return stopped

    def save_on_stop(self, exc: BaseException) -> Path | None:
        """The checkpoint :meth:`rescue` writes: the state from before an unfinished step (so ``--resume``
        redoes that step on the same batch with the same dropout); none when an error struck while the optimizer
        was updating the weights or a checkpoint was being written. It holds the main process's RNG states only
        (the others cannot be gathered once a process has stopped)."""
        state, rng = self.state, rng_state()
        if self.phase in ("setup", "update", "checkpoint"):
            if self.phase != "setup":
                logger.warning(
                    "not saving a checkpoint: %s",
                    "the weights were half-updated"
                    if self.phase == "update"
                    else "writing the checkpoint itself failed",
                )
            return None
        if self.snapshot is not None:
            state, rng = self.snapshot
        target = self.run_dir / f"step-{state.step:06d}"
        if state.step == 0:
            return None
        if state.step == self.saved_step and target.exists():  # this very state is saved already
            return target
        self.optimizer.zero_grad(set_to_none=True)  # free the gradients (after CUDA running out of memory)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"stopped by {type(exc).__name__}"
        logger.info("%s: saving a checkpoint at step %d before exiting", what, state.step)
        try:
            return self.save(state, [rng])
        except Exception as save_error:  # e.g. the disk is full: say so, and report the original error
            logger.error("could not save a checkpoint either: %s", first_line(save_error, 300))
            return None
