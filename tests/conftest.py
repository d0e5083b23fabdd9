"""Tiny random models built inside the tests: a 2-layer GPT-2 backbone and a LaBSE-shaped encoder.

Nothing here touches the network.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

SENTENCES = [
    "Где лодка?",
    "Я люблю читать книги.",
    "Сегодня хорошая погода.",
    "Мы пошли в лес за грибами.",
    "Он открыл окно и посмотрел на улицу.",
    "Кошка спит на диване.",
    "Это очень интересная история.",
    "Завтра будет дождь.",
    "Where is the boat?",
    "The cat sleeps on the sofa.",
]
TINY_VOCAB = 300
TINY_ENCODER_DIM = 24


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory) -> str:
    """A 2-layer random GPT-2 with a byte-level BPE tokenizer, saved as a local HF folder."""
    return save_random_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), n_layer=2, n_embd=32, n_head=2, n_positions=128)


@pytest.fixture(scope="session")
def tiny_backbone_64_dir(tmp_path_factory) -> str:
    """Like ``tiny_backbone_dir`` with hidden size 64: every layer's in_features is a multiple of bitsandbytes'
    4-bit block size (64), which its CPU 4-bit kernels need (hidden 32 crashes or computes wrong weights)."""
    return save_random_gpt2(tmp_path_factory.mktemp("tiny-gpt2-64"), n_layer=2, n_embd=64, n_head=2, n_positions=128)


def save_random_gpt2(path, seed: int = 0, **shape) -> str:
    """A random GPT-2 of the given shape (GPT2Config keywords) with the tiny tokenizer, saved as an HF folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _train_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        initializer_range=0.2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **shape,
    )
    model = GPT2LMHeadModel(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    return str(path)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> str:
    """A LaBSE-shaped sentence-transformers model (BERT + CLS pooling + Dense + Normalize), random weights."""
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Dense, Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-labse")
    bert_dir = path / "bert"
    bert_dir.mkdir()
    chars = sorted({c for s in SENTENCES for c in s.lower() if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    (bert_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(bert_dir / "vocab.txt")).save_pretrained(bert_dir)
    torch.manual_seed(1)
    BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            initializer_range=0.5,
        )
    ).save_pretrained(bert_dir)  # distinct vectors per sentence
    transformer = Transformer(str(bert_dir), max_seq_length=64)
    pooling = Pooling(32, pooling_mode="cls")
    dense = Dense(32, TINY_ENCODER_DIM, activation_function=torch.nn.Tanh())
    model = SentenceTransformer(modules=[transformer, pooling, dense, Normalize()], device="cpu")
    model.save(str(path / "st"))
    return str(path / "st")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_dir):
    from lora_v2t.model.encoders import load_encoder

    return load_encoder(tiny_encoder_dir)


def make_v2t(backbone_dir, encoder, seed=0, perturb=True, **kwargs):
    """A fresh Vector2Text on the tiny models; ``perturb`` randomises LoRA B so the adapter matters."""
    from lora_v2t import Vector2Text

    kwargs.setdefault("quantization", "none")
    v2t = Vector2Text.create(backbone=backbone_dir, encoder=encoder, device="cpu", seed=seed, **kwargs)
    if perturb:
        perturb_lora(v2t, seed)
    return v2t


def perturb_lora(v2t, seed):
    """peft initialises LoRA B to zero (a no-op adapter); give it random values so adapters differ."""
    generator = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, param in v2t.model.named_parameters():
            if "lora_B" in name and f".{v2t.active_adapter}." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


@pytest.fixture()
def v2t(tiny_backbone_dir, tiny_encoder):
    return make_v2t(tiny_backbone_dir, tiny_encoder)


def first_token_vocab(v2t, vectors) -> tuple[int, str]:
    """A token that greedy decoding emits first for one of ``vectors`` (not EOS) and its text: an output
    vocabulary of it (+ EOS) gives non-empty outputs made only of that text."""
    from lora_v2t.util.vectors import to_vectors

    with torch.no_grad():
        logits = v2t.model(inputs_embeds=v2t.prefix(to_vectors(vectors, v2t.embedding_dim))).logits[:, -1]  # (N, V)
    eos = v2t.tokenizer.eos_token_id
    for token in logits.argmax(dim=-1).tolist():
        piece = v2t.tokenizer.decode([token]).strip()
        if token != eos and piece:
            return token, piece
    raise AssertionError("every vector starts with EOS or a blank token: pick other vectors")


def only_made_of(text: str, piece: str) -> bool:
    return text.replace(piece, "").strip() == ""


def refuse_calls(monkeypatch, target: str, what: str) -> None:
    """Make ``target`` (a dotted path) fail the test if called: ``what`` must not happen before the check."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} before the input was checked")

    monkeypatch.setattr(target, refuse)


@pytest.fixture()
def no_model_load(monkeypatch):
    """Fail the test if the CLI starts loading the models: it must check its input first."""
    refuse_calls(monkeypatch, "lora_v2t.bundle.loading.load_adapter", "the models were loaded")


@pytest.fixture()
def no_base_load(monkeypatch):
    """Fail the test if the base model starts loading: the bundle check must come first."""
    refuse_calls(monkeypatch, "lora_v2t.model.backbone.load_backbone", "the base model was loaded")


# two processes on this CPU through `accelerate launch`: `--cpu --num_processes 2` starts one process (accelerate's
# simple launcher, unless MPI is set up); `--multi_gpu` goes through torch.distributed, which on a CPU-only machine
# means gloo
TWO_CPU_PROCESSES = [
    str(Path(sys.executable).parent / "accelerate"),
    "launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
    "--main_process_port",
    "0",
]
LAUNCH_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
