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
import dataclasses
import gc
import json
import math
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/gpu.py` without an installed lora_v2t
    sys.path.insert(0, str(ROOT))
from older import run_in  # noqa: E402  (bench/, this script's folder)

RECIPE = "recipes/labse_rugpt3large_8bit.yaml"
SECTIONS = ("e2e", "training", "decoding")
GIB = 2**30

# shapes: the default pair, and tiny ones for --smoke
REAL = {"n_layer": 24, "n_embd": 1536, "n_head": 16, "n_positions": 2048, "vocab": 50257,
        "enc_layers": 12, "enc_hidden": 768, "enc_heads": 12, "enc_inner": 3072, "enc_vocab": 501153,
        "enc_max_seq": 256, "dim": 768, "batch": 16, "tokens": 64, "corpus": 1000, "val_size": 32,
        "decode_batches": [32, 128, 512], "new_tokens": 32, "e2e_steps": 30, "e2e_more": 10, "eval_limit": 32}
SMOKE = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 128, "vocab": 300,
         "enc_layers": 2, "enc_hidden": 64, "enc_heads": 4, "enc_inner": 128, "enc_vocab": 500,
         "enc_max_seq": 64, "dim": 32, "batch": 2, "tokens": 8, "corpus": 60, "val_size": 4,
         "decode_batches": [2, 4], "new_tokens": 4, "e2e_steps": 2, "e2e_more": 1, "eval_limit": 4}


@dataclasses.dataclass(frozen=True)
class Mode:
    """One training mode of section (b); ``create`` holds extra ``Vector2Text.create`` arguments. ``stock_gelu``
    puts back transformers' elementwise ``gelu_new``, which lora_v2t's loader fuses (the original experiment's
    model, and this code's before the fusion)."""

    key: str
    label: str
    trainable: str
    quantization: str
    autocast: bool
    checkpointing: bool
    create: dict = dataclasses.field(default_factory=dict)
    stock_gelu: bool = False


# the first is the baseline
MODES = [
    Mode("full_fp32", "full fine-tuning, fp32 (baseline)", "full", "none", False, False, stock_gelu=True),
    Mode("full_bf16", "full fine-tuning, bf16 autocast", "full", "none", True, False, stock_gelu=True),
    Mode("lora_8bit_ckpt", "LoRA + projector, 8-bit, checkpointing", "lora", "8bit", True, True),
    Mode("lora_8bit_stock", "LoRA + projector, 8-bit, stock gelu_new (before)", "lora", "8bit", True, False,
         stock_gelu=True),
    Mode("lora_8bit", "LoRA + projector, 8-bit", "lora", "8bit", True, False),
    Mode("lora_8bit_d0", "LoRA + projector, 8-bit, LoRA dropout 0", "lora", "8bit", True, False,
         {"lora_dropout": 0.0}),
    Mode("lora_8bit_d0_t0", "LoRA + projector, 8-bit, dropout 0, int8 threshold 0", "lora", "8bit", True, False,
         {"lora_dropout": 0.0, "int8_threshold": 0.0}),
    Mode("lora_4bit_ckpt", "LoRA + projector, 4-bit nf4, checkpointing", "lora", "4bit", True, True),
    Mode("lora_bf16", "LoRA + projector, bf16", "lora", "none", True, False),
]
# from the issue's reporter: a scratch run on an H200 (not this script), torch peak allocated, batch 16 x 64
REFERENCE_H200 = {"full_fp32": (0.152, 14.39), "full_bf16": (0.089, 14.39), "lora_8bit_ckpt": (0.359, 3.45),
                  "lora_8bit_stock": (0.201, 6.68), "lora_4bit_ckpt": (0.228, 1.39), "lora_bf16": (0.080, 5.19)}

SUBJECTS = ["Я", "Мы", "Он", "Она", "Они", "Кошка", "Мой друг", "Учитель", "Сосед", "Бабушка", "Мама", "Брат"]
VERBS = ["читает", "видит", "любит", "ищет", "покупает", "рисует", "несёт", "ждёт", "строит", "чинит"]
OBJECTS = ["книгу", "лодку", "письмо", "яблоко", "машину", "картину", "собаку", "газету", "дом", "чай"]
PLACES = ["дома", "в парке", "на работе", "у реки", "в городе", "на даче", "в школе", "утром", "вечером",
          "зимой", "летом", "каждый день"]


def log(message: str) -> None:
    print(message, flush=True)


def make_corpus(n: int, seed: int) -> list[str]:
    """``n`` distinct simple Russian sentences."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n:
        words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(PLACES)]
        seen[" ".join(words) + rng.choice([".", "!", "?"])] = None
    return list(seen)


# ---------------------------------------------------------------------- models
def build_tokenizer(sentences: list[str], vocab_size: int):
    """A GPT-2-style byte-level BPE trained on ``sentences``, padded up to ``vocab_size`` tokens.

    The padding tokens (" ~0", " ~1", ...) are never produced by encoding but decode to readable text, so a
    random model's output stays printable. ``<|endoftext|>`` is the last id, as in GPT-2.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def fresh(model):
        tok = Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok

    trained = fresh(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=min(vocab_size - 1, 4000), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    trained.train_from_iterator(sentences, trainer)
    spec = json.loads(trained.to_str())["model"]
    vocab = dict(spec["vocab"])
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    i = 0
    while len(vocab) < vocab_size - 1:
        vocab.setdefault(f"Ġ~{i}", len(vocab))
        i += 1
    tok = fresh(models.BPE(vocab=vocab, merges=merges))
    tok.add_special_tokens(["<|endoftext|>"])
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, wanted {vocab_size}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def build_backbone(folder: Path, shapes: dict, sentences: list[str], device: str) -> None:
    """A random GPT-2 with ruGPT-3 large's config (or the smoke shapes), saved as a local HF folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_tokenizer(sentences, shapes["vocab"])
    config = GPT2Config(n_layer=shapes["n_layer"], n_embd=shapes["n_embd"], n_head=shapes["n_head"],
                        n_positions=shapes["n_positions"], vocab_size=len(tokenizer),
                        activation_function="gelu_new", layer_norm_epsilon=1e-5,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):  # initialising on the GPU takes seconds, not minutes
        model = GPT2LMHeadModel(config)
    if device == "cuda":
        model = model.to(torch.bfloat16)  # half the bytes to write and read; loads upcast as needed
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)


def build_encoder(folder: Path, shapes: dict, sentences: list[str], device: str) -> None:
    """A random LaBSE-shaped sentence-transformers model: BERT + CLS pooling + Dense(tanh) + Normalize."""
    import string

    import torch
    from sentence_transformers import SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Dense, Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    bert_dir = tmp / "bert"
    bert_dir.mkdir(parents=True)
    chars = sorted({c for s in sentences for c in s.lower() if not c.isspace()} | set(string.printable.strip()))
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    (bert_dir / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(bert_dir / "vocab.txt")).save_pretrained(bert_dir)
    torch.manual_seed(1)
    # the model's vocabulary keeps LaBSE's row count (its memory counts in the e2e peak); the tokenizer uses
    # only the first rows
    config = BertConfig(vocab_size=max(shapes["enc_vocab"], len(words)), hidden_size=shapes["enc_hidden"],
                        num_hidden_layers=shapes["enc_layers"], num_attention_heads=shapes["enc_heads"],
                        intermediate_size=shapes["enc_inner"], max_position_embeddings=512)
    with torch.device(device):
        BertModel(config).save_pretrained(bert_dir)
    transformer = Transformer(str(bert_dir), max_seq_length=shapes["enc_max_seq"])
    pooling = Pooling(shapes["enc_hidden"], pooling_mode="cls")
    dense = Dense(shapes["enc_hidden"], shapes["dim"], activation_function=torch.nn.Tanh())
    SentenceTransformer(modules=[transformer, pooling, dense, Normalize()], device="cpu").save(str(tmp / "st"))
    shutil.rmtree(bert_dir)
    tmp.rename(folder)


# ---------------------------------------------------------------------- helpers
def number(row: dict, key: str, width: int, decimals: int) -> str:
    """``row[key]`` right-aligned in ``width`` with ``decimals``, or "-" where the row lacks it."""
    value = row.get(key)
    return f"{'-' if value is None else f'{value:.{decimals}f}':>{width}}"


def decode_vectors(n: int, dim: int):
    """``n`` random unit vectors (seeded)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=1)


# the older code's decoding, run by bench/older.py's run_in with that code importable
OLDER_DECODING = """
import time, torch
from lora_v2t import Vector2Text
v2t = Vector2Text.create(backbone=ARGS["backbone"], encoder=f"precomputed:{ARGS['dim']}", projector="mlp",
                         quantization=ARGS["quantization"], trainable="lora", device=ARGS["device"], seed=0)
import numpy
vectors = torch.from_numpy(numpy.load(ARGS["vectors"]))  # the parent's, so that every path decodes the same rows
out = {}
for batch in ARGS["batches"]:
    vec = vectors[:batch]
    opts = {"batch_size": batch, "repetition_penalty": 1.0}
    v2t.generate(vec, max_new_tokens=ARGS["new_tokens"], **opts)  # warm-up at the full length, as for the others
    if ARGS["device"] == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    texts = v2t.generate(vec, max_new_tokens=ARGS["new_tokens"], **opts)
    if ARGS["device"] == "cuda":
        torch.cuda.synchronize()
    out[batch] = {"s": time.perf_counter() - t0, "texts": texts}
json.dump(out, open(ARGS["result"], "w", encoding="utf-8"))
"""


def stock_gelu(model) -> int:
    """Put transformers' elementwise ``gelu_new`` back where lora_v2t's loader fused it (every fused tanh-GELU: meant
    for the GPT-2 shapes here, it would also turn Gemma's own into ``gelu_new``); returns how many."""
    from transformers.activations import get_activation

    from lora_v2t.model.backbone import replace_activations

    return replace_activations(model, (type(get_activation("gelu_pytorch_tanh")),), "gelu_new")


def merged_layers(v2t) -> int:
    """How many of the model's LoRA layers hold a merged adapter (peft's ``LoraLayer.merged``)."""
    from peft.tuners.lora import LoraLayer

    return sum(m.merged for m in v2t.model.modules() if isinstance(m, LoraLayer))


@contextmanager
def attention(v2t, implementation: str):
    """The base model computes attention with transformers' ``implementation`` inside the block."""
    base = v2t.base_model
    before = base.config._attn_implementation  # transformers has no public getter (its own code reads this)
    base.set_attn_implementation(implementation)
    try:
        yield
    finally:
        base.set_attn_implementation(before)


@contextmanager
def sdpa_without_cudnn(v2t):
    """SDPA attention, choosing among its flash, memory-efficient and math backends only."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with attention(v2t, "sdpa"), sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                              SDPBackend.MATH]):
        yield


@contextmanager
def autocast_in_base_dtype(v2t):
    """Everything the call computes under torch.autocast in the base's dtype (projector and LoRA included)."""
    import torch

    with torch.autocast(v2t.device.type, dtype=v2t.base_model.v2t_dtype):
        yield


@contextmanager
def lora_merged(v2t):
    """The active LoRA update merged into the base weights inside the block (peft ``merge_adapter``), unmerged
    after it."""
    v2t.model.merge_adapter()
    try:
        if merged_layers(v2t) == 0:
            raise RuntimeError("merge_adapter merged no LoRA layer")
        yield
    finally:
        v2t.model.unmerge_adapter()


# --static-variants: a variant joins these features with "+" (e.g. eager+autocast); name: (context, help)
STATIC_FEATURES = {
    "eager": (lambda v2t: attention(v2t, "eager"), "transformers' eager attention (compiled by inductor), not SDPA"),
    "sdpa-no-cudnn": (sdpa_without_cudnn, "SDPA without its cuDNN backend"),
    "autocast": (autocast_in_base_dtype, "the call under torch.autocast in the base's dtype: the fp32 projector and "
                                         "LoRA matrices multiply in bf16"),
    "merged": (lora_merged, "the LoRA update merged into the base weights for the row (peft merge_adapter / "
                            "unmerge_adapter; the bench's untrained adapter has LoRA B = 0, so this times the "
                            "merged layers' speed and its text check cannot tell)"),
}


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def gib(n_bytes: float | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / GIB, 3)


def error_record(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip().splitlines()[-1][:500]


class SmiPoller:
    """Peak ``memory.used`` (MiB) of the GPU, polled with nvidia-smi every 200 ms while a child runs."""

    def __init__(self):
        self.peak = self.start = None
        self._proc = None
        if not shutil.which("nvidia-smi"):
            return
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
        index = visible if visible.isdigit() else "0"
        self.start = self._query(index)
        try:
            self._proc = subprocess.Popen(["nvidia-smi", "-i", index, "--query-gpu=memory.used",
                                           "--format=csv,noheader,nounits", "-lms", "200"],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    @staticmethod
    def _query(index: str) -> int | None:
        try:
            out = subprocess.run(["nvidia-smi", "-i", index, "--query-gpu=memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
            return int(out.stdout.split()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                value = int(line.strip())
            except ValueError:
                continue
            self.peak = value if self.peak is None else max(self.peak, value)

    def stop(self) -> dict:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._thread.join(timeout=5)
        return {"nvidia_smi_before_mib": self.start, "nvidia_smi_peak_mib": self.peak}


def cli_child(stats_file: str, argv: list[str]) -> int:
    """Run ``lora-v2t ARGV`` in this process and write its exit status and peak memory to ``stats_file``."""
    import torch

    from lora_v2t.cli import main as cli_main

    rc = 1
    try:
        rc = cli_main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else 2
    finally:
        stats = {"rc": rc, "peak_rss_gib": gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}
        if torch.cuda.is_available():
            stats |= {"torch_peak_allocated_gib": gib(torch.cuda.max_memory_allocated()),
                      "torch_peak_reserved_gib": gib(torch.cuda.max_memory_reserved())}
        Path(stats_file).write_text(json.dumps(stats))
    return rc


# ---------------------------------------------------------------------- bench
class Bench:
    def __init__(self, args):
        import torch

        self.args = args
        self.smoke = args.smoke
        self.shapes = dict(SMOKE if args.smoke else REAL)
        if args.encoder_vocab:
            self.shapes["enc_vocab"] = args.encoder_vocab
        self.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
        self.cuda = self.device == "cuda"
        self.out = Path(args.out)
        self.keep_work = args.work_dir is not None or args.keep_work
        self.work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="lora_v2t_gpu_"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.results: dict = {"script": "bench/gpu.py", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "smoke": self.smoke, "device": self.device, "env": self.environment(),
                              "shapes": self.shapes, "sections_done": [],
                              "reference_h200_issue": {k: {"s_per_step": s, "peak_gib": m}
                                                       for k, (s, m) in REFERENCE_H200.items()}}

    def environment(self) -> dict:
        from importlib.metadata import PackageNotFoundError, version

        import torch

        env = {"python": sys.version.split()[0], "torch_cuda": torch.version.cuda,
               "float32_matmul_precision": torch.get_float32_matmul_precision()}
        for name in ("torch", "transformers", "peft", "accelerate", "sentence-transformers", "bitsandbytes",
                     "tokenizers"):
            try:
                env[name] = version(name)
            except PackageNotFoundError:
                env[name] = None
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env |= {"gpu": props.name, "gpu_memory_gib": gib(props.total_memory),
                    "capability": f"{props.major}.{props.minor}", "bf16": torch.cuda.is_bf16_supported()}
        return env

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.results, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, self.out)

    # ------------------------------------------------------------------ setup
    def prepare(self) -> None:
        s = self.shapes
        self.sentences = make_corpus(s["corpus"] + 64, seed=0)
        self.corpus = self.work / "corpus.txt"
        self.dev = self.work / "dev.txt"
        self.corpus.write_text("\n".join(self.sentences[: s["corpus"]]) + "\n", encoding="utf-8")
        self.dev.write_text("\n".join(self.sentences[s["corpus"]:]) + "\n", encoding="utf-8")
        tag = "smoke" if self.smoke else "real"
        self.backbone = self.work / f"backbone-{tag}-{s['n_layer']}x{s['n_embd']}-v{s['vocab']}"
        self.encoder = self.work / f"encoder-{tag}-{s['enc_layers']}x{s['enc_hidden']}-v{s['enc_vocab']}" / "st"
        built = {}
        for name, folder, build in (("backbone", self.backbone, build_backbone),
                                    ("encoder", self.encoder.parent, build_encoder)):
            if (folder / ("config.json" if name == "backbone" else "st/modules.json")).exists():
                log(f"[setup] reusing {folder}")
                continue
            start = time.perf_counter()
            build(folder, s, self.sentences, self.device)
            built[name] = round(time.perf_counter() - start, 1)
            log(f"[setup] built the random {name} in {built[name]} s: {folder}")
        free_memory()
        size = sum(p.stat().st_size for p in self.backbone.glob("*.safetensors"))
        self.results["models"] = {"backbone": str(self.backbone), "encoder": str(self.encoder),
                                  "backbone_gib_on_disk": gib(size), "build_s": built}
        self.save()

    # ------------------------------------------------------------------ (a) end to end through the CLI
    def run_cli(self, name: str, argv: list[str]) -> dict:
        stats_file = self.work / f"cli-{name}.json"
        log_file = self.work / f"cli-{name}.log"
        stats_file.unlink(missing_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        poller = SmiPoller() if self.cuda else None
        start = time.perf_counter()
        with open(log_file, "w", encoding="utf-8") as handle:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--cli-child", str(stats_file),
                                   *argv], cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
        record = {"step": name, "argv": ["lora-v2t", *argv], "rc": proc.returncode, "wall_s": round(wall, 1),
                  "log": str(log_file)}
        if poller is not None:
            record |= poller.stop()
        if stats_file.exists():
            record |= {k: v for k, v in json.loads(stats_file.read_text()).items() if k != "rc"}
        output = log_file.read_text(encoding="utf-8", errors="replace")
        if proc.returncode != 0:
            record["output_tail"] = output[-3000:]
        record["_output"] = output
        found = re.search(r"peak memory: ([\d.]+) GiB measured, ([\d.]+) GiB estimated", output)
        if found:  # the trainer's own check of its estimate against its measured peak
            record["trainer_peak_measured_gib"], record["trainer_peak_estimated_gib"] = map(float, found.groups())
        peak = record.get("torch_peak_allocated_gib")
        log(f"[e2e] {name:<9} rc {proc.returncode}  {wall:6.1f} s" +
            (f"  torch peak {peak:.2f} GiB" if peak is not None else "") +
            (f"  nvidia-smi peak {record['nvidia_smi_peak_mib']} MiB" if record.get("nvidia_smi_peak_mib") else "") +
            (f"  trainer: {record['trainer_peak_estimated_gib']} GiB estimated" if found else ""))
        return record

    def section_e2e(self) -> dict:
        s = self.shapes
        steps = self.args.e2e_steps or s["e2e_steps"]
        more = steps + s["e2e_more"]
        runs = self.work / "e2e-runs"
        shutil.rmtree(runs, ignore_errors=True)
        final = runs / "e2e" / "final"
        common = [f"--backbone.name={self.backbone}", f"--encoder.spec={self.encoder}",
                  f"--data.train={self.corpus}", f"--data.val_size={s['val_size']}",
                  f"--data.cache_dir={self.work / 'e2e-cache'}", f"--training.output_dir={runs}",
                  "--training.run_name=e2e", f"--training.log_every={max(1, steps // 3)}",
                  "--training.num_samples=2", "--no-progress"]
        if self.smoke:  # tiny batches; bitsandbytes' 8-bit is a CUDA feature, so the CPU trains unquantized
            common += ["--training.batch_size=2", "--data.max_tokens=8", "--backbone.quantization=none"]
        decode = ["--max-new-tokens", "8"] if self.smoke else []
        texts = self.sentences[s["corpus"]:s["corpus"] + 4]
        section = {"recipe": RECIPE, "train_steps": steps, "resume_to": more, "overrides": common, "steps": []}
        self.results["e2e"] = section
        plan = [
            ("train", ["train", RECIPE, *common, f"--training.max_steps={steps}", f"--training.eval_every={steps}",
                       f"--training.save_every={steps}"]),
            ("info", ["info", str(final)]),
            ("generate", ["generate", "--adapter", str(final), "--text", *texts, "--rerank", "--num-beams", "4",
                          "--num-return-sequences", "4", "--json", *decode]),
            ("evaluate", ["evaluate", "--adapter", str(final), "--data", str(self.dev), "--limit",
                          str(s["eval_limit"]), "--rerank", "4", "--resamples", "100", "--no-progress",
                          "--out", str(self.work / "e2e-eval"), "--overwrite", *decode]),
            ("resume", ["train", RECIPE, *common, "--resume", f"--training.max_steps={more}",
                        f"--training.eval_every={more}", f"--training.save_every={more}"]),
        ]
        for name, argv in plan:
            record = self.run_cli(name, argv)
            output = record.pop("_output")
            record["checks"] = self.check_cli(name, record, output, final, len(texts), steps, more)
            section["steps"].append(record)
            self.save()
            if name == "train" and record["rc"] != 0:
                log("[e2e] training failed: skipping the commands that need its adapter")
                break
        done = section["steps"]
        section["ok"] = len(done) == len(plan) and all(r["rc"] == 0 and all(r["checks"].values()) for r in done)
        peaks = [r["torch_peak_allocated_gib"] for r in done if r.get("torch_peak_allocated_gib") is not None]
        smi = [r["nvidia_smi_peak_mib"] for r in done if r.get("nvidia_smi_peak_mib") is not None]
        section["peak_torch_allocated_gib"] = max(peaks) if peaks else None
        section["peak_nvidia_smi_mib"] = max(smi) if smi else None
        section["peak_memory_method"] = (
            "torch.cuda.max_memory_allocated of each child (it runs lora_v2t.cli.main in process), plus the GPU's "
            "memory.used polled by nvidia-smi every 200 ms (all processes, CUDA context included)"
            if self.cuda else "peak RSS of each child (CPU smoke run)")
        return section

    def check_cli(self, name: str, record: dict, output: str, final: Path, n_texts: int, steps: int,
                  more: int) -> dict:
        checks = {"exit_0": record["rc"] == 0}
        if record["rc"] != 0:
            return checks
        if name in ("train", "resume"):
            config = json.loads((final / "v2t_config.json").read_text())
            want = steps if name == "train" else more
            checks["final_steps"] = config.get("training", {}).get("steps") == want
            rows = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
            train_rows = [r for r in rows if r.get("kind") == "train"]
            evals = [r for r in rows if r.get("kind") == "eval"]
            if train_rows:  # the last logging window: after warm-up, before the evaluation
                record["ms_per_step_last_window"] = round(train_rows[-1]["ms_per_step"], 1)
                record["train_loss_last"] = round(train_rows[-1]["loss"], 4)
            if evals:
                record["val_loss"] = round(evals[-1]["val_loss"], 4)
        elif name == "info":
            checks["describes_base"] = str(self.shapes["vocab"]) in output and "LoRA" in output
        elif name == "generate":
            lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
            checks["one_reranked_line_per_text"] = len(lines) == n_texts and all("cosine" in r for r in lines)
            record["sample"] = lines[:2]
        elif name == "evaluate":
            summary = self.work / "e2e-eval" / "summary.json"
            checks["summary_written"] = summary.exists()
        return checks

    # ------------------------------------------------------------------ (b) training modes
    def measure_mode(self, mode: Mode) -> dict:
        import torch

        from lora_v2t import Vector2Text

        s = self.shapes
        record = {"mode": mode.key, "label": mode.label, "trainable": mode.trainable,
                  "quantization": mode.quantization, "bf16_autocast": mode.autocast,
                  "gradient_checkpointing": mode.checkpointing} | mode.create
        free_memory()
        before = torch.cuda.memory_allocated() if self.cuda else 0
        start = time.perf_counter()
        v2t = Vector2Text.create(backbone=str(self.backbone), encoder=f"precomputed:{s['dim']}", projector="mlp",
                                 quantization=mode.quantization, trainable=mode.trainable, device=self.device,
                                 seed=0, **mode.create)
        record["create_s"] = round(time.perf_counter() - start, 1)
        record["gelu"] = f"stock ({stock_gelu(v2t.base_model)} put back)" if mode.stock_gelu else "fused"
        if mode.checkpointing:
            v2t.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        params = v2t.trainable_parameters()
        for p in params:
            p.requires_grad_(True)
        record["trainable_params"] = sum(p.numel() for p in params)
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        generator = torch.Generator().manual_seed(0)
        vectors = torch.nn.functional.normalize(torch.randn(s["batch"], s["dim"], generator=generator), dim=1)
        input_ids = torch.randint(0, s["vocab"], (s["batch"], s["tokens"]), generator=generator).to(self.device)
        attention_mask = torch.ones_like(input_ids)
        if self.cuda:
            record["weights_gib"] = gib(torch.cuda.memory_allocated() - before)
            torch.cuda.reset_peak_memory_stats()
        v2t.train()
        times, losses = [], []
        warmup = self.args.warmup
        for step in range(warmup + self.args.steps):
            if self.cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(self.device, dtype=torch.bfloat16, enabled=mode.autocast):
                loss = v2t.forward(vectors, input_ids, attention_mask).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if self.cuda:
                torch.cuda.synchronize()
            if step >= warmup:
                times.append(time.perf_counter() - t0)
                losses.append(loss.detach().item())
        times.sort()
        record |= {"s_per_step": round(sum(times) / len(times), 4),
                   "s_per_step_median": round(times[len(times) // 2], 4), "loss_last": round(losses[-1], 4),
                   "loss_finite": all(math.isfinite(x) for x in losses)}
        if self.cuda:
            record["peak_allocated_gib"] = gib(torch.cuda.max_memory_allocated() - before)
            record["peak_reserved_gib"] = gib(torch.cuda.max_memory_reserved())
            record["allocated_before_gib"] = gib(before)
        del v2t, optimizer, loss, params
        return record

    def section_training(self) -> dict:
        s = self.shapes
        wanted = self.args.modes.split(",") if self.args.modes else [m.key for m in MODES]
        section = {"batch": s["batch"], "tokens": s["tokens"], "warmup_steps": self.args.warmup,
                   "timed_steps": self.args.steps, "baseline": MODES[0].key, "optimizer": "torch.optim.AdamW",
                   "peak_memory_method": "torch.cuda.max_memory_allocated after reset_peak_memory_stats once the "
                   "model is built, minus what was allocated before building it" if self.cuda else
                   "none (CPU smoke run)", "modes": []}
        self.results["training"] = section
        for mode in MODES:
            if mode.key not in wanted:
                continue
            log(f"[training] {mode.label} ...")
            try:
                record = self.measure_mode(mode)
            except Exception as exc:  # noqa: BLE001 - an OOM or a library failure is a result, not a crash
                bnb_on_cpu = self.smoke and mode.quantization in ("8bit", "4bit")
                record = {"mode": mode.key, "label": mode.label,
                          ("skipped" if bnb_on_cpu else "error"): error_record(exc)}
            free_memory()
            section["modes"].append(record)
            self.add_ratios(section)
            self.save()
            log(f"[training]   {self.format_mode(record)}")
        return section

    @staticmethod
    def add_ratios(section: dict) -> None:
        base = next((r for r in section["modes"] if r["mode"] == section["baseline"] and "s_per_step" in r), None)
        for r in section["modes"]:
            if base is None or "s_per_step" not in r:
                continue
            r["speed_vs_full_fp32"] = round(base["s_per_step"] / r["s_per_step"], 3)
            if base.get("peak_allocated_gib") and r.get("peak_allocated_gib") is not None:
                r["memory_vs_full_fp32"] = round(r["peak_allocated_gib"] / base["peak_allocated_gib"], 4)

    @staticmethod
    def format_mode(r: dict) -> str:
        if "s_per_step" not in r:
            return f"{r['label']}: {'skipped' if 'skipped' in r else 'ERROR'}: {r.get('skipped') or r.get('error')}"
        peak = r.get("peak_allocated_gib")
        text = f"{r['s_per_step']:.3f} s/step, peak {'-' if peak is None else f'{peak:.2f} GiB'}, " \
               f"{r['trainable_params']:,} trainable, loss {r['loss_last']}"
        return text

    # ------------------------------------------------------------------ (c) decoding throughput
    def measure_decoding(self, quantization: str, batches: list[int], new_tokens: int) -> list[dict]:
        import torch

        from lora_v2t import Vector2Text

        s = self.shapes
        v2t = Vector2Text.create(backbone=str(self.backbone), encoder=f"precomputed:{s['dim']}", projector="mlp",
                                 quantization=quantization, trainable="lora", device=self.device, seed=0)
        tok = v2t.tokenizer
        eos, pad = tok.eos_token_id, tok.pad_token_id
        vectors = decode_vectors(max(batches), s["dim"])

        def plain(vec, max_new_tokens):
            with torch.no_grad():
                prefix = v2t.prefix(vec)  # (B, k, h): the same prefix v2t.generate builds
                mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
                return v2t.model.generate(inputs_embeds=prefix, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad)

        older = self.older_decoding(quantization, vectors, batches, new_tokens)
        rows = []
        for batch in batches:
            vec = vectors[:batch]
            ours = {"max_new_tokens": new_tokens, "batch_size": batch, "repetition_penalty": 1.0}
            # warm-ups at the full length: a shorter one leaves the growing KV cache's allocations to the timed call
            # (on an H100 that made the first full-length call of every path 2-5x slower)
            plain(vec, new_tokens)
            v2t.generate(vec, **ours)
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            ids, plain_s = self.timed(plain, vec, new_tokens)
            texts, ours_s = self.timed(v2t.generate, vec, **ours)
            ids = ids.cpu()
            is_eos = ids == eos
            lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.tensor(ids.shape[1]))
            tokens = int(lengths.sum())  # up to and including each row's first EOS; the padding after is not counted
            plain_texts = [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
            row = {"quantization": quantization, "batch": batch, "max_new_tokens": new_tokens,
                   "generated_tokens": tokens, "rows_ended_by_eos": int(is_eos.any(1).sum()),
                   "decode_steps": int(ids.shape[1])}
            row |= self.path_row("plain", plain_s, tokens, plain_s)
            row |= self.path_row("v2t", ours_s, tokens, plain_s, texts, plain_texts)
            if older.get(batch):
                row |= self.path_row("older", older[batch]["s"], tokens, plain_s, older[batch]["texts"], plain_texts)
            row |= self.static_row(v2t, vec, ours, tokens, plain_s, plain_texts)
            if self.args.profile and batch == max(batches):
                row["static_profile"] = self.profile_static(v2t, vec, ours)
            for variant in self.args.static_variants:  # after the profile: each compiles again
                row |= self.static_variant_row(variant, v2t, vec, ours, tokens, plain_s, plain_texts)
            if older.get(batch):
                for path in ["v2t"] + [k.removesuffix("_tokens_per_s") for k in row
                                       if k.startswith("v2t_static") and k.endswith("_tokens_per_s")]:
                    if f"{path}_s" in row:
                        row[f"{path}_vs_older"] = round(row["older_s"] / row[f"{path}_s"], 3)
            row["peak_allocated_gib"] = gib(torch.cuda.max_memory_allocated()) if self.cuda else None
            rows.append(row)
            self.log_decoding(row)
        return rows  # the model is freed with this frame

    def timed(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` and its wall time, the device synchronised on both sides."""
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if self.cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    @staticmethod
    def path_row(path: str, seconds: float, tokens: int, plain_s: float, texts=None, plain_texts=None) -> dict:
        row = {f"{path}_s": round(seconds, 4), f"{path}_tokens_per_s": round(tokens / seconds, 1)}
        if path != "plain":
            row[f"{path}_vs_plain"] = round(plain_s / seconds, 3)
        if texts is not None:
            row[f"{path}_same_text"] = f"{sum(a == b for a, b in zip(texts, plain_texts))}/{len(plain_texts)}"
        return row

    def static_row(self, v2t, vec, ours: dict, tokens: int, plain_s: float, plain_texts: list[str],
                   path: str = "v2t_static") -> dict:
        """The static KV cache: the first call at a shape compiles the decoding step (CUDA), the second is timed."""
        static = ours | {"cache": "static"}
        try:
            _, first_s = self.timed(v2t.generate, vec, **static)
            texts, seconds = self.timed(v2t.generate, vec, **static)
        except Exception as exc:  # noqa: BLE001 - a compile failure is a result; the other paths still count
            log(f"[decoding]   {path}: {error_record(exc)}")
            return {f"{path}_error": error_record(exc)}
        return self.path_row(path, seconds, tokens, plain_s, texts, plain_texts) | {
            f"{path}_first_call_s": round(first_s, 2)}

    def static_variant_row(self, variant: str, v2t, vec, ours: dict, tokens: int, plain_s: float,
                           plain_texts: list[str]) -> dict:
        """:meth:`static_row` with the features of ``variant`` (``STATIC_FEATURES`` joined by ``+``) on for this row
        only. The attention features answer the profile's finding that cuDNN's SDPA kernel took half of the compiled
        step's device time at batch 1024 on an H100 (GPT-2 has no ``flex_attention``); ``autocast`` and ``merged``
        answer its fp32 FFMA GEMMs of the LoRA matrices. A feature that cannot be switched on is this row's error."""
        from contextlib import ExitStack

        import torch

        path = "v2t_static_" + variant.replace("+", "_").replace("-", "_")
        torch.compiler.reset()  # trace again: attention, backend and autocast are fixed when the step is compiled
        try:
            with ExitStack() as stack:
                for feature in variant.split("+"):
                    stack.enter_context(STATIC_FEATURES[feature][0](v2t))
                row = self.static_row(v2t, vec, ours, tokens, plain_s, plain_texts, path=path)
        except Exception as exc:  # noqa: BLE001 - e.g. a merge an 8-bit base refuses: the other rows still count
            log(f"[decoding]   {path}: {error_record(exc)}")
            return {f"{path}_error": error_record(exc)}
        finally:
            torch.compiler.reset()
        if f"{path}_s" in row:
            log(f"[decoding]   static, {variant}: {row[path + '_tokens_per_s']:.0f} tok/s "
                f"({row[path + '_vs_plain']:.2f}x plain, first call {row[path + '_first_call_s']:.1f} s), "
                f"same text {row[path + '_same_text']}")
        return row

    def profile_static(self, v2t, vec, ours: dict) -> dict:
        """One warm static-cache call under torch.profiler: where its wall time goes, device and host."""
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        try:
            with profile(activities=activities) as prof:
                _, seconds = self.timed(v2t.generate, vec, **ours, cache="static")
        except Exception as exc:  # noqa: BLE001 - a profiler failure is a result
            return {"error": error_record(exc)}
        events = prof.key_averages()

        def top(rows, attr: str) -> list[str]:
            ranked = sorted(rows, key=lambda e: getattr(e, attr), reverse=True)[:12]
            return [f"{getattr(e, attr) / 1000:.1f} ms {e.count}x {e.key[:90]}" for e in ranked]

        # kernels only: the operators' rows repeat them, and so do annotations such as "## Call CompiledFxGraph ##"
        kernels = [e for e in events if e.device_type == DeviceType.CUDA and not e.key.startswith("##")
                   and not getattr(e, "is_user_annotation", False)]
        busy_ms = sum(e.self_device_time_total for e in kernels) / 1000
        result = {"wall_s_profiled": round(seconds, 4), "device_busy_ms": round(busy_ms, 1),
                  "device_busy_share": round(busy_ms / 1000 / seconds, 3),
                  "top_device": top(kernels, "self_device_time_total"), "top_host": top(events, "self_cpu_time_total")}
        log(f"[decoding]   profile of one static call: {seconds:.3f} s wall, device busy {busy_ms:.0f} ms")
        for line in result["top_device"][:6] + result["top_host"][:6]:
            log(f"[decoding]     {line}")
        return result

    def older_decoding(self, quantization: str, vectors, batches: list[int], new_tokens: int) -> dict:
        """``v2t.generate`` of the code in ``--older`` (today's path before issue 11) on ``vectors``, in a child
        process, warm at each batch like the paths here: {batch: {"s", "texts"}}; {} without --older or when it
        fails."""
        if not self.args.older:
            return {}
        import numpy as np

        np.save(self.work / "decode_vectors.npy", vectors.numpy())
        args = {"backbone": str(self.backbone), "dim": self.shapes["dim"], "quantization": quantization,
                "device": self.device, "batches": batches, "new_tokens": new_tokens,
                "vectors": str(self.work / "decode_vectors.npy")}
        try:
            result = run_in(Path(self.args.older), OLDER_DECODING, args)
        except Exception as exc:  # noqa: BLE001
            log(f"[decoding]   older code: {error_record(exc)}")
            self.results.setdefault("decoding", {})[f"older_error_{quantization}"] = error_record(exc)
            return {}
        return {int(b): r for b, r in result.items()}

    @staticmethod
    def log_decoding(r: dict) -> None:
        def rate(path):
            return f"{r[path + '_tokens_per_s']:>9.1f} tok/s" if path + "_tokens_per_s" in r else "      - tok/s"

        log(f"[decoding]   {r['quantization']:>5} batch {r['batch']:>4}: plain {rate('plain')}, v2t.generate "
            f"{rate('v2t')} ({r['v2t_vs_plain']:.2f}x), static {rate('v2t_static')} "
            f"({number(r, 'v2t_static_vs_plain', 0, 2)}x, first call {number(r, 'v2t_static_first_call_s', 0, 1)} s), "
            f"older {rate('older')}; same text v2t {r['v2t_same_text']} static {r.get('v2t_static_same_text', '-')} "
            f"older {r.get('older_same_text', '-')}")

    def section_decoding(self) -> dict:
        s = self.shapes
        batches = [int(b) for b in self.args.decode_batches.split(",")] if self.args.decode_batches \
            else s["decode_batches"]
        new_tokens = self.args.new_tokens or s["new_tokens"]
        section = {"max_new_tokens": new_tokens, "batches": batches, "decoding": "greedy",
                   "token_count": "generated tokens up to and including each row's first EOS (padding after EOS "
                   "not counted), taken from the plain path's ids; v2t.generate returns text only, and gives the "
                   "same greedy sequences (v2t_same_text, v2t_static_same_text, older_same_text)", "runs": []}
        self.results["decoding"] = section
        for quantization in self.args.decode_quantization.split(","):
            log(f"[decoding] {quantization} backbone + LoRA, {new_tokens} new tokens ...")
            try:
                section["runs"] += self.measure_decoding(quantization, batches, new_tokens)
            except Exception as exc:  # noqa: BLE001
                bnb_on_cpu = self.smoke and quantization in ("8bit", "4bit")
                section["runs"].append({"quantization": quantization,
                                        ("skipped" if bnb_on_cpu else "error"): error_record(exc)})
                log(f"[decoding]   {quantization}: {error_record(exc)}")
            free_memory()
            self.save()
        return section

    # ------------------------------------------------------------------ report
    def print_tables(self) -> None:
        r = self.results
        what = "smoke, tiny shapes" if self.smoke else "ruGPT-3 large shapes, random weights"
        log(f"\n== bench/gpu.py on {r['env'].get('gpu', r['device'])} ({what})")
        if "e2e" in r:
            e = r["e2e"]
            log(f"\n(a) default recipe through the CLI: {'OK' if e.get('ok') else 'FAILED'}; "
                f"peak torch allocated {e.get('peak_torch_allocated_gib')} GiB, "
                f"nvidia-smi {e.get('peak_nvidia_smi_mib')} MiB")
            log(f"  {'command':<10}{'rc':>4}{'wall s':>9}{'torch peak GiB':>16}{'smi peak MiB':>14}  checks")
            for x in e.get("steps", []):
                failed = [k for k, v in x["checks"].items() if not v]
                verdict = "ok" if not failed else "FAILED " + ",".join(failed)
                log(f"  {x['step']:<10}{x['rc']:>4}{x['wall_s']:>9.1f}{str(x.get('torch_peak_allocated_gib', '-')):>16}"
                    f"{str(x.get('nvidia_smi_peak_mib', '-')):>14}  {verdict}"
                    + (f"  {x['ms_per_step_last_window']} ms/step" if "ms_per_step_last_window" in x else ""))
        if "training" in r:
            log(f"\n(b) training modes, batch {r['training']['batch']} x {r['training']['tokens']} tokens "
                f"(ratios against full fine-tuning fp32, same run; H200 reference from the issue, not this script)")
            log(f"  {'mode':<54}{'s/step':>8}{'peak GiB':>10}{'memory':>9}{'speed':>8}{'ref s':>8}{'ref GiB':>9}")
            for x in r["training"].get("modes", []):
                ref = REFERENCE_H200.get(x["mode"], (None, None))
                if "s_per_step" not in x:
                    log(f"  {x['label']:<54}  {'skipped' if 'skipped' in x else 'ERROR'}: "
                        f"{x.get('skipped') or x.get('error')}")
                    continue
                mem = x.get("memory_vs_full_fp32")
                speed = x.get("speed_vs_full_fp32")
                log(f"  {x['label']:<54}{x['s_per_step']:>8.3f}{str(x.get('peak_allocated_gib', '-')):>10}"
                    f"{'-' if mem is None else f'{mem:.0%}':>9}{'-' if speed is None else f'{speed:.2f}x':>8}"
                    f"{'-' if ref[0] is None else ref[0]:>8}{'-' if ref[1] is None else ref[1]:>9}")
        if "decoding" in r:
            log(f"\n(c) greedy decoding, {r['decoding']['max_new_tokens']} new tokens, tokens/s (each path timed at "
                f"its second full-length call at that batch; older: --older's code)")
            log(f"  {'backbone':<10}{'batch':>6}{'plain HF':>10}{'v2t':>10}{'ratio':>7}{'static':>10}{'ratio':>7}"
                f"{'older':>10}{'static/older':>13}  same text as plain (v2t / static / older)")
            for x in r["decoding"].get("runs", []):
                if "batch" not in x:
                    log(f"  {x['quantization']:<10}  {x.get('skipped') or 'ERROR: ' + x.get('error', '')}")
                    continue
                log(f"  {x['quantization']:<10}{x['batch']:>6}{x['plain_tokens_per_s']:>10.0f}"
                    f"{x['v2t_tokens_per_s']:>10.0f}{x['v2t_vs_plain']:>7.2f}"
                    f"{number(x, 'v2t_static_tokens_per_s', 10, 0)}"
                    f"{number(x, 'v2t_static_vs_plain', 7, 2)}{number(x, 'older_tokens_per_s', 10, 0)}"
                    f"{number(x, 'v2t_static_vs_older', 13, 2)}  {x['v2t_same_text']} / "
                    f"{x.get('v2t_static_same_text', '-')} / {x.get('older_same_text', '-')}")
                for key in [k for k in x if k.startswith("v2t_static_") and k.endswith("_tokens_per_s")
                            and k != "v2t_static_tokens_per_s"]:  # the --static-variants rows
                    path = key.removesuffix("_tokens_per_s")
                    log(f"    {path.removeprefix('v2t_static_'):<24}{x[key]:>10.0f} tok/s, "
                        f"{number(x, path + '_vs_plain', 0, 2)}x plain, {number(x, path + '_vs_older', 0, 2)}x older, "
                        f"same text {x[path + '_same_text']}")
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
        failed = any("error" in self.results.get(name, {}) for name in sections) or \
            self.results.get("e2e", {}).get("ok") is False or any(
            "error" in x for x in self.results.get("training", {}).get("modes", []) +
            self.results.get("decoding", {}).get("runs", []))
        return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cli-child"]:
        return cli_child(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="JSON results (default bench/results/gpu.json; gpu-smoke.json with --smoke)")
    parser.add_argument("--only", help=f"comma-separated sections to run, of: {', '.join(SECTIONS)}")
    parser.add_argument("--skip-e2e", action="store_true", help="leave out the end-to-end CLI section")
    parser.add_argument("--steps", type=int, help="timed optimizer steps per training mode (default 10; smoke 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; smoke 1)")
    parser.add_argument("--modes", help=f"comma-separated training modes (default all: "
                                        f"{', '.join(m.key for m in MODES)})")
    parser.add_argument("--e2e-steps", type=int, help="training steps of the CLI run (default 30; --resume adds 10)")
    parser.add_argument("--decode-batches", help="comma-separated batch sizes (default 32,128,512)")
    parser.add_argument("--new-tokens", type=int, help="new tokens per decoded sequence (default 32)")
    parser.add_argument("--decode-quantization", default="8bit,none",
                        help="backbones to decode with (default 8bit,none: the recipe's 8-bit and bf16)")
    parser.add_argument("--older", metavar="DIR",
                        help="a folder holding an older lora_v2t/ (python bench/older.py REV DIR writes one): "
                             "decoding adds a row for its v2t.generate, run in a child process")
    parser.add_argument("--static-variants", "--static-attention", metavar="LIST",
                        help="comma-separated variants for more static-cache rows, each compiling again; a variant "
                             "joins features with +: " + "; ".join(f"{k}: {v[1]}" for k, v in STATIC_FEATURES.items()))
    parser.add_argument("--profile", action="store_true",
                        help="profile one more static-cache call at the largest decoding batch (torch.profiler)")
    parser.add_argument("--encoder-vocab", type=int,
                        help="rows of the encoder's token embedding (default LaBSE's 501153)")
    parser.add_argument("--work-dir", help="where the models and runs go (kept, and models reused); "
                                           "default: a temporary folder removed at the end")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--smoke", action="store_true",
                        help="every section on the CPU with tiny shapes (2 layers x 64, vocab 300, batch 2 x 8)")
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
        print("error: bench/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
              "--smoke checks its code paths on the CPU", file=sys.stderr)
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
