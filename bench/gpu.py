"""GPU benchmark of the default recipe's shapes, with random weights and no downloads (issue 8, item 6).

Builds, in a work folder, a random GPT-2 with ruGPT-3 large's shapes (24 blocks, hidden 1536, 16 heads,
2048 positions, vocabulary 50,257 with a byte-level BPE tokenizer trained here on a few sentences and padded
up to that size) and a random LaBSE-shaped sentence-transformers encoder (BERT 12 x 768, 12 heads, LaBSE's
501,153-row embedding, CLS pooling + Dense(768 -> 768, tanh) + Normalize), then measures:

  e2e       the default recipe through the CLI, each command a child process: train, info, generate
            (--rerank, 4 beams, 4 candidates), evaluate --limit, train --resume to more steps. Exit status,
            wall time, the child's torch.cuda.max_memory_allocated (the child runs lora_v2t.cli.main in
            process and reports it) and the GPU's memory.used peak polled with nvidia-smi.
  training  one optimizer step of each training mode on the same batch (16 x 64 tokens): full fine-tuning
            fp32 (the baseline) and with bf16 autocast; LoRA + projector 8-bit with and without gradient
            checkpointing, with LoRA dropout 0, with dropout 0 and LLM.int8 threshold 0, with transformers'
            stock elementwise gelu_new put back (the code before the loader fused it); 4-bit nf4 with
            checkpointing, bf16 without. Peak allocated memory and s/step, as ratios against the fp32
            baseline measured in the same run (full fine-tuning with the stock gelu_new: the original experiment).
  decoding  greedy tokens/s at batch 32, 128, 512: lora_v2t's v2t.generate, with the dynamic and the static
            (compiled) KV cache, against transformers' own model.generate(inputs_embeds=...) on the same peft
            model and prefix, and with --older DIR an older lora_v2t's v2t.generate (child process). Each path
            is timed at its second full-length call at that batch. Tokens are counted up to and including
            each row's first EOS (the padding after it is not counted). With --profile, one more static call
            at the largest batch runs under torch.profiler: the device's busy time against the wall time, and
            the operators that take the most device and host time. --static-variants adds static rows with
            other settings: another attention (eager, or SDPA without cuDNN), autocast (the projector and
            LoRA matrices in bf16), the LoRA merged into the base, or several of these joined by + (eager+autocast).

    python bench/gpu.py                          # all sections (on one H100, about 3 minutes for decoding at
                                                 # 128 and 512 with training, 2.5 for e2e)
    python bench/older.py 0fe5359 .gpu/old && python bench/gpu.py --only decoding --older .gpu/old
    python bench/gpu.py --only training,decoding --out bench/results/gpu-b.json
    python bench/gpu.py --smoke                  # tiny shapes on the CPU: checks the code paths, no GPU

Writes the JSON (default bench/results/gpu.json) after every measurement, so a timeout keeps what was done.
Without a CUDA GPU it stops at once (exit status 2) unless --smoke is given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/gpu.py` without an installed lora_v2t
    sys.path.insert(0, str(ROOT))
from gpu_common import SECTIONS, error_record, log  # noqa: E402  (bench/, this script's folder)
from gpu_decoding import Decoding  # noqa: E402
from gpu_e2e import EndToEnd, cli_child  # noqa: E402
from gpu_models import ModelSetup  # noqa: E402
from gpu_static import STATIC_FEATURES  # noqa: E402
from gpu_training import MODES, Training  # noqa: E402


class Bench(ModelSetup, EndToEnd, Training, Decoding):
    """The sections, each from its own module, on one work folder and one results file."""

    def print_tables(self) -> None:
        r = self.results
        what = "smoke, tiny shapes" if self.smoke else "ruGPT-3 large shapes, random weights"
        log(f"\n== bench/gpu.py on {r['env'].get('gpu', r['device'])} ({what})")
        for name in SECTIONS:
            if name in r:
                getattr(self, f"table_{name}")(r[name])
        for name in SECTIONS:
            if "error" in r.get(name, {}):
                log(f"\nsection {name} stopped: {r[name]['error']}")
        log(f"\nwrote {self.out}")

    def run(self, sections: list[str]) -> int:
        start = time.perf_counter()
        try:
            log(f"[setup] device {self.device}; work folder {self.work}")
            self.save()
            self.prepare()
            for name in sections:
                t0 = time.perf_counter()
                log(f"== section {name}")
                try:
                    getattr(self, f"section_{name}")()
                except Exception as exc:  # noqa: BLE001 - keep going: the other sections still measure
                    log(f"[{name}] ERROR: {error_record(exc)}")
                    self.results.setdefault(name, {})["error"] = error_record(exc)
                    self.results[name]["traceback"] = traceback.format_exc()[-3000:]
                self.results.setdefault("section_wall_s", {})[name] = round(time.perf_counter() - t0, 1)
                self.results["sections_done"].append(name)
                self.results["total_wall_s"] = round(time.perf_counter() - start, 1)
                self.save()
            self.print_tables()
        finally:
            if not self.keep_work:
                shutil.rmtree(self.work, ignore_errors=True)
        failed = (
            any("error" in self.results.get(name, {}) for name in sections)
            or self.results.get("e2e", {}).get("ok") is False
            or any(
                "error" in x
                for x in self.results.get("training", {}).get("modes", [])
                + self.results.get("decoding", {}).get("runs", [])
            )
        )
        return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """The command line; its description is this docstring, its lists come from the section modules."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="JSON results (default bench/results/gpu.json; gpu-smoke.json with --smoke)")
    parser.add_argument("--only", help=f"comma-separated sections to run, of: {', '.join(SECTIONS)}")
    parser.add_argument("--skip-e2e", action="store_true", help="leave out the end-to-end CLI section")
    parser.add_argument("--steps", type=int, help="timed optimizer steps per training mode (default 10; smoke 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; smoke 1)")
    parser.add_argument(
        "--modes", help=f"comma-separated training modes (default all: {', '.join(m.key for m in MODES)})"
    )
    parser.add_argument("--e2e-steps", type=int, help="training steps of the CLI run (default 30; --resume adds 10)")
    parser.add_argument("--decode-batches", help="comma-separated batch sizes (default 32,128,512)")
    parser.add_argument("--new-tokens", type=int, help="new tokens per decoded sequence (default 32)")
    parser.add_argument(
        "--decode-quantization",
        default="8bit,none",
        help="backbones to decode with (default 8bit,none: the recipe's 8-bit and bf16)",
    )
    parser.add_argument(
        "--older",
        metavar="DIR",
        help="a folder holding an older lora_v2t/ (python bench/older.py REV DIR writes one): "
        "decoding adds a row for its v2t.generate, run in a child process",
    )
    parser.add_argument(
        "--static-variants",
        "--static-attention",
        metavar="LIST",
        help="comma-separated variants for more static-cache rows, each compiling again; a variant "
        "joins features with +: " + "; ".join(f"{k}: {v[1]}" for k, v in STATIC_FEATURES.items()),
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile one more static-cache call at the largest decoding batch (torch.profiler)",
    )
    parser.add_argument(
        "--encoder-vocab", type=int, help="rows of the encoder's token embedding (default LaBSE's 501153)"
    )
    parser.add_argument(
        "--work-dir",
        help="where the models and runs go (kept, and models reused); default: a temporary folder removed at the end",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every section on the CPU with tiny shapes (2 layers x 64, vocab 300, batch 2 x 8)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cli-child"]:
        return cli_child(argv[1], argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.skip_e2e:
        sections = [s for s in sections if s != "e2e"]
    args.static_variants = [v for v in (args.static_variants or "").split(",") if v]
    bad = sorted({f for v in args.static_variants for f in v.split("+")} - set(STATIC_FEATURES))
    if bad:
        parser.error(f"unknown --static-variants feature(s) {bad}; join these with +: {', '.join(STATIC_FEATURES)}")
    if args.modes:
        bad = sorted(set(args.modes.split(",")) - {m.key for m in MODES})
        if bad:
            parser.error(f"unknown mode(s) {bad}")
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print(
            "error: bench/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
            "--smoke checks its code paths on the CPU",
            file=sys.stderr,
        )
        return 2
    args.out = args.out or f"bench/results/{'gpu-smoke' if args.smoke else 'gpu'}.json"
    args.steps = args.steps or (2 if args.smoke else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "inputs will be cast to float16", every call
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    return Bench(args).run(sections)


if __name__ == "__main__":
    sys.exit(main())
