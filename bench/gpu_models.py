"""bench/gpu.py's setup: a corpus of simple Russian sentences, and the random backbone and encoder built from it
in the work folder (reused there when already built)."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

from gpu_common import BenchState, free_memory, gib, log

SUBJECTS = ["Я", "Мы", "Он", "Она", "Они", "Кошка", "Мой друг", "Учитель", "Сосед", "Бабушка", "Мама", "Брат"]
VERBS = ["читает", "видит", "любит", "ищет", "покупает", "рисует", "несёт", "ждёт", "строит", "чинит"]
OBJECTS = ["книгу", "лодку", "письмо", "яблоко", "машину", "картину", "собаку", "газету", "дом", "чай"]
PLACES = [
    "дома",
    "в парке",
    "на работе",
    "у реки",
    "в городе",
    "на даче",
    "в школе",
    "утром",
    "вечером",
    "зимой",
    "летом",
    "каждый день",
]


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
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size - 1, 4000), show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
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
    config = GPT2Config(
        n_layer=shapes["n_layer"],
        n_embd=shapes["n_embd"],
        n_head=shapes["n_head"],
        n_positions=shapes["n_positions"],
        vocab_size=len(tokenizer),
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
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
    config = BertConfig(
        vocab_size=max(shapes["enc_vocab"], len(words)),
        hidden_size=shapes["enc_hidden"],
        num_hidden_layers=shapes["enc_layers"],
        num_attention_heads=shapes["enc_heads"],
        intermediate_size=shapes["enc_inner"],
        max_position_embeddings=512,
    )
    with torch.device(device):
        BertModel(config).save_pretrained(bert_dir)
    transformer = Transformer(str(bert_dir), max_seq_length=shapes["enc_max_seq"])
    pooling = Pooling(shapes["enc_hidden"], pooling_mode="cls")
    dense = Dense(shapes["enc_hidden"], shapes["dim"], activation_function=torch.nn.Tanh())
    SentenceTransformer(modules=[transformer, pooling, dense, Normalize()], device="cpu").save(str(tmp / "st"))
    shutil.rmtree(bert_dir)
    tmp.rename(folder)


class ModelSetup(BenchState):
    """The corpus files and the random models in the work folder, before the sections."""

    def prepare(self) -> None:
        s = self.shapes
        self.sentences = make_corpus(s["corpus"] + 64, seed=0)
        self.corpus = self.work / "corpus.txt"
        self.dev = self.work / "dev.txt"
        self.corpus.write_text("\n".join(self.sentences[: s["corpus"]]) + "\n", encoding="utf-8")
        self.dev.write_text("\n".join(self.sentences[s["corpus"] :]) + "\n", encoding="utf-8")
        tag = "smoke" if self.smoke else "real"
        self.backbone = self.work / f"backbone-{tag}-{s['n_layer']}x{s['n_embd']}-v{s['vocab']}"
        self.encoder = self.work / f"encoder-{tag}-{s['enc_layers']}x{s['enc_hidden']}-v{s['enc_vocab']}" / "st"
        built = {}
        for name, folder, build in (
            ("backbone", self.backbone, build_backbone),
            ("encoder", self.encoder.parent, build_encoder),
        ):
            if (folder / ("config.json" if name == "backbone" else "st/modules.json")).exists():
                log(f"[setup] reusing {folder}")
                continue
            start = time.perf_counter()
            build(folder, s, self.sentences, self.device)
            built[name] = round(time.perf_counter() - start, 1)
            log(f"[setup] built the random {name} in {built[name]} s: {folder}")
        free_memory()
        size = sum(p.stat().st_size for p in self.backbone.glob("*.safetensors"))
        self.results["models"] = {
            "backbone": str(self.backbone),
            "encoder": str(self.encoder),
            "backbone_gib_on_disk": gib(size),
            "build_s": built,
        }
        self.save()
