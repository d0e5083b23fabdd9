import json

import numpy as np
import pytest

from lora_v2t import V2TError
from lora_v2t.train.data import bucketed_batches, embed_corpus, read_sentences, sample_and_split


class CountingEncoder:
    """Wraps an encoder and counts the sentences it was asked to encode."""

    def __init__(self, inner, spec=None):
        self.inner, self.dim, self.spec, self.calls = inner, inner.dim, spec or inner.spec, 0

    def encode(self, texts):
        self.calls += len(texts)
        return self.inner.encode(texts)


def test_read_skips_and_counts_bad_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(
        "Привет, мир.\n\n   \nа\n".encode()
        + b"\xff\xfe broken\n"
        + ("x" * 500 + "\n").encode()
        + "Где лодка?\n".encode()
    )
    sentences, stats = read_sentences(path, min_chars=2, max_chars=400)
    assert sentences == ["Привет, мир.", "Где лодка?"]
    assert (stats.empty, stats.too_short, stats.undecodable, stats.too_long) == (2, 1, 1, 1)
    assert "skipped 2 empty, 1 too short, 1 too long, 1 undecodable" in stats.summary()


def test_missing_empty_and_all_filtered_corpora(tmp_path):
    with pytest.raises(V2TError, match="does not exist"):
        read_sentences(tmp_path / "none.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(V2TError, match="is empty"):
        read_sentences(tmp_path / "empty.txt")
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(V2TError, match="no line of .* passes the filters"):
        read_sentences(tmp_path / "short.txt", min_chars=2)


def test_sample_and_split_is_seeded_and_disjoint():
    sentences = [f"s{i}" for i in range(100)]
    train, val = sample_and_split(sentences, val_size=10, max_sentences=30, seed=1)
    assert len(train) == 30 and len(val) == 10 and not set(train) & set(val)
    assert (train, val) == sample_and_split(sentences, val_size=10, max_sentences=30, seed=1)
    assert train != sample_and_split(sentences, val_size=10, max_sentences=30, seed=2)[0]
    with pytest.raises(V2TError, match="val_size"):
        sample_and_split(sentences[:5], val_size=10, max_sentences=None, seed=0)


def test_cache_is_reused_and_invalidated(tiny_encoder, tmp_path):
    sentences = ["Где лодка?", "Кошка спит.", "Завтра дождь.", "Мы пошли в лес."]
    enc = CountingEncoder(tiny_encoder)
    first = np.array(embed_corpus(sentences, enc, tmp_path, "corpus", chunk=3, show_progress=False))
    assert enc.calls == 4 and np.allclose(first, tiny_encoder.encode(sentences), atol=1e-6)
    again = embed_corpus(sentences, enc, tmp_path, "corpus", show_progress=False)
    assert enc.calls == 4 and np.array_equal(np.asarray(again), first)  # reused: the encoder is not called
    changed = sentences[:3] + ["Совсем другое предложение."]
    embed_corpus(changed, enc, tmp_path, "corpus", show_progress=False)
    assert enc.calls == 8  # the corpus changed: rebuilt
    other = CountingEncoder(tiny_encoder, spec="another-encoder")
    embed_corpus(changed, other, tmp_path, "corpus", show_progress=False)
    assert other.calls == 4  # another encoder: its own cache


def test_interrupted_cache_fill_resumes(tiny_encoder, tmp_path):
    sentences = [f"предложение номер {i}" for i in range(10)]

    class Failing(CountingEncoder):
        def encode(self, texts):
            if self.calls >= 4:
                raise KeyboardInterrupt
            return super().encode(texts)

    with pytest.raises(KeyboardInterrupt):
        embed_corpus(sentences, Failing(tiny_encoder), tmp_path, "c", chunk=4, show_progress=False)
    meta = json.loads(next(tmp_path.glob("*/meta.json")).read_text())
    assert meta["done"] == 4
    enc = CountingEncoder(tiny_encoder)
    out = embed_corpus(sentences, enc, tmp_path, "c", chunk=4, show_progress=False)
    assert enc.calls == 6  # only the rest
    assert np.allclose(np.asarray(out), tiny_encoder.encode(sentences), atol=1e-6)


def test_runs_that_sample_or_split_differently_never_share_a_cache_file(tiny_encoder, tmp_path):
    first = ["Где лодка?", "Кошка спит.", "Завтра дождь."]
    other_seed = ["Мы пошли в лес.", "Он открыл окно.", "Где лодка?"]  # as many sentences, another data.seed
    more = first + ["Это интересная история.", "Сегодня хорошая погода."]  # another data.max_sentences
    enc = CountingEncoder(tiny_encoder)
    mapped = embed_corpus(first, enc, tmp_path, "corpus-train", show_progress=False)  # a run is reading these
    b = embed_corpus(other_seed, enc, tmp_path, "corpus-train", show_progress=False)
    c = embed_corpus(more, enc, tmp_path, "corpus-train", show_progress=False)
    for vectors, sentences in ((mapped, first), (b, other_seed), (c, more)):
        assert np.allclose(np.asarray(vectors), tiny_encoder.encode(sentences), atol=1e-6)
    assert enc.calls == 11 and len(list(tmp_path.glob("*/vectors.npy"))) == 3
    for sentences in (first, other_seed, more):  # each entry is kept: no run rebuilds another's
        embed_corpus(sentences, enc, tmp_path, "corpus-train", show_progress=False)
    assert enc.calls == 11


def test_a_fill_in_progress_is_waited_for_then_reused(tiny_encoder, tmp_path):
    import threading
    import time

    sentences = [f"предложение номер {i}" for i in range(6)]
    started, go = threading.Event(), threading.Event()

    class Slow(CountingEncoder):
        def encode(self, texts):
            started.set()
            go.wait(20)
            return super().encode(texts)

    filler, waiter, got = Slow(tiny_encoder), CountingEncoder(tiny_encoder), {}

    def embed(key, enc):
        got[key] = np.array(embed_corpus(sentences, enc, tmp_path, "c", chunk=4, show_progress=False))

    first = threading.Thread(target=embed, args=("first", filler))
    first.start()
    assert started.wait(20)
    second = threading.Thread(target=embed, args=("second", waiter))
    second.start()
    time.sleep(0.5)
    assert second.is_alive() and not list(tmp_path.glob("*/vectors.npy"))  # waiting; nothing complete yet
    go.set()
    first.join(30)
    second.join(30)
    assert waiter.calls == 0 and filler.calls == 6  # filled once, by the first
    assert np.allclose(got["second"], tiny_encoder.encode(sentences), atol=1e-6)
    assert not list(tmp_path.glob("*/.lock")) and not list(tmp_path.glob("*/*.partial.npy"))


@pytest.mark.parametrize(
    "encoding,message",
    [
        ("utf-16", "is UTF-16LE (it starts with a UTF-16LE byte-order mark)"),
        ("utf-16-be", "holds NUL bytes on its first line: it is UTF-16, UTF-32 or binary"),
        ("utf-32", "is UTF-32LE (it starts with a UTF-32LE byte-order mark)"),
    ],
)
def test_a_corpus_in_another_encoding_is_refused_in_one_line(tmp_path, encoding, message):
    path = tmp_path / "c.txt"
    path.write_text("Привет, мир.\nГде лодка?\n" * 5, encoding=encoding)
    with pytest.raises(V2TError) as refused:
        read_sentences(path)
    text = str(refused.value)
    assert message in text and "convert it to UTF-8" in text and "\n" not in text


def test_control_characters_are_skipped_and_a_file_made_of_them_is_refused(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes("\ufeffПривет, мир.\nГде\x07 лодка?\nКошка спит.\n".encode())
    sentences, stats = read_sentences(path)
    assert sentences == ["Привет, мир.", "Кошка спит."]  # the UTF-8 byte-order mark is dropped
    assert stats.control_chars == 1 and "1 control characters" in stats.summary()
    path.write_bytes("Привет, мир.\nГде\x00 лодка?\nКошка спит.\n".encode())  # one stray NUL: one line skipped
    assert read_sentences(path)[0] == ["Привет, мир.", "Кошка спит."]
    path.write_bytes(b"\x10\x04\x1f\x04\x01\n\x12\x04\x05\x04\nok line\n")
    with pytest.raises(V2TError, match="is mostly control characters .*convert it to UTF-8"):
        read_sentences(path)


def test_bucketed_batches_cover_everything_once_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, size=1000)
    batches = bucketed_batches(lengths, batch_size=16, seed=0, epoch=0, bucket_batches=10)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    random_spread = np.mean([np.ptp(lengths[rng.permutation(1000)[:16]]) for _ in range(50)])
    assert spread < 0.3 * random_spread  # much less padding than random batches
    again = bucketed_batches(lengths, batch_size=16, seed=0, epoch=0, bucket_batches=10)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other = bucketed_batches(lengths, batch_size=16, seed=0, epoch=1, bucket_batches=10)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other, strict=True))


def test_batch_order_shares_every_batch_out_once_among_processes():
    from lora_v2t.train.data import BatchOrder
    from lora_v2t.train.trainer import TrainState

    lengths = np.random.default_rng(0).integers(1, 30, size=100)
    order = BatchOrder(lengths, batch_size=8, seed=3)
    state = TrainState()
    seen = []
    for _ in range(6):  # 13 batches per epoch: 6 turns of 2 processes, the 13th is skipped
        rank0, rank1 = order.take(state, world=2)
        assert not set(rank0) & set(rank1)  # the two processes never train on the same sentences
        seen += [*rank0, *rank1]
    first_twelve = np.concatenate(bucketed_batches(lengths, 8, 3, 0)[:12])
    assert len(seen) == len(set(seen)) and sorted(seen) == sorted(first_twelve) and state.batch_in_epoch == 12
    order.take(state, world=2)
    assert (state.epoch, state.batch_in_epoch) == (1, 2)
    again = BatchOrder(lengths, batch_size=8, seed=3)  # a resumed run, rebuilt from the saved position
    resumed = TrainState(epoch=0, batch_in_epoch=4)
    assert [b.tolist() for b in again.take(resumed, world=2)] == [
        b.tolist() for b in bucketed_batches(lengths, 8, 3, 0)[4:6]
    ]


def test_batch_order_refuses_more_processes_than_batches():
    from lora_v2t.train.data import BatchOrder
    from lora_v2t.train.trainer import TrainState

    with pytest.raises(V2TError, match="make 2 batches of 8, fewer than the 4 processes"):
        BatchOrder(np.ones(10, dtype=int), batch_size=8, seed=0).take(TrainState(), world=4)


def test_a_cache_that_cannot_fit_is_refused_before_anything_is_written(tiny_encoder, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    monkeypatch.setattr(shutil, "disk_usage", lambda path: namedtuple("Usage", "total used free")(10**6, 10**6, 500))
    enc = CountingEncoder(tiny_encoder)
    with pytest.raises(
        V2TError,
        match=r"no space left on the disk of .*corpus-[0-9a-f]{16} \(1.1 KiB needed, "
        r"500 bytes free\): .*set data.cache_dir",
    ) as full:
        embed_corpus([f"предложение {i}" for i in range(10)], enc, tmp_path / "cache", "corpus", show_progress=False)
    assert "\n" not in str(full.value) and enc.calls == 0
    assert not list((tmp_path / "cache").rglob("*.npy"))


def test_the_cache_is_given_its_disk_space_before_the_memory_map_is_written(tiny_encoder, tmp_path, monkeypatch):
    """Writing through a memory map to a full disk is a Bus error that kills the process: the space is taken
    first (here the disk has too little, which only the reservation finds out)."""
    import errno
    import os

    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_room, raising=False)
    enc = CountingEncoder(tiny_encoder)
    with pytest.raises(V2TError, match=r"no space left on the disk of .*corpus-.* \(1.1 KiB needed"):
        embed_corpus([f"предложение {i}" for i in range(10)], enc, tmp_path / "cache", "corpus", show_progress=False)
    assert enc.calls == 0 and not list((tmp_path / "cache").rglob("*.npy"))


def test_embed_meets_a_full_disk_in_one_line(tiny_encoder_dir, tmp_path, monkeypatch, capsys):
    import errno
    from pathlib import Path

    from lora_v2t.cli import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "open_memmap", full)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"предложение номер {i}" for i in range(12)) + "\n", encoding="utf-8")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny_debug.yaml"
    assert (
        main(
            [
                "embed",
                str(recipe),
                f"--encoder.spec={tiny_encoder_dir}",
                f"--data.train={corpus}",
                "--data.val_size=2",
                f"--data.cache_dir={tmp_path / 'cache'}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no space left on the disk of ")


def test_a_fill_without_a_progress_bar_says_how_far_it_got(tiny_encoder, tmp_path, caplog):
    sentences = [f"предложение номер {i}" for i in range(10)]
    with caplog.at_level("INFO", logger="lora_v2t"):
        embed_corpus(sentences, CountingEncoder(tiny_encoder), tmp_path, "corpus", chunk=4, show_progress=False)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("embedding 10 sentences of corpus into the cache ") for line in lines)
    assert [line for line in lines if line.startswith("embedded ")] == [
        "embedded 4/10 sentences of corpus (40%)",
        "embedded 8/10 sentences of corpus (80%)",
        "embedded 10/10 sentences of corpus (100%)",
    ]
