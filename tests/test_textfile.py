"""One reader for sentence files: a line ends at \\n only, UTF-8 (its byte-order mark dropped), folders, empty,
binary and TSV files named for what they are, by every command that reads sentences."""

import json

import numpy as np
import pytest

from lora_v2t import V2TError
from lora_v2t.tasks.evalfile import read_eval_file
from lora_v2t.tasks.invertsource import read_texts
from lora_v2t.tasks.vectorfile import load_vectors_file
from lora_v2t.train.data import read_sentences
from lora_v2t.train.pairs import read_hypotheses
from lora_v2t.util.textfile import escape_tsv, read_lines, read_rows, split_lines, unescape_tsv

# characters str.splitlines splits at besides \n and \r: a text holding one is still one line
SEPARATORS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]

READERS = {
    "corpus": lambda path: read_sentences(path),
    "invert source": lambda path: read_texts(path),
    "evaluation file": lambda path: read_eval_file(path),
    "hypotheses": lambda path: read_hypotheses(path, 3),
}


def test_a_line_ends_at_a_newline_only():
    text = "".join(f"a{sep}b\n" for sep in SEPARATORS) + "c\r\nd"
    assert split_lines(text) == [f"a{sep}b" for sep in SEPARATORS] + ["c", "d"]
    assert split_lines("x\n\ny\n") == ["x", "", "y"]  # wc -l: 3


def test_a_file_has_as_many_rows_as_wc_counts_lines(tmp_path):
    path = tmp_path / "s.txt"
    rows = ["Где лодка?", "Кошка\u2028спит.", "Мы\x85тут.", "Это\x1dвсё.", "Завтра\u2029дождь."]
    path.write_bytes(("\r\n".join(rows) + "\r\n").encode())
    assert read_rows(path) == rows
    assert path.read_bytes().count(b"\n") == len(rows)


@pytest.mark.parametrize("text", ["a\tb\nc\\d\re", "\\t is not a tab", "\\", "a\\\\nb", "\x1d\x85\u2028", ""])
def test_tsv_fields_read_back_exactly_what_was_written(text):
    field = escape_tsv(text)
    assert not set("\t\n\r") & set(field)
    assert unescape_tsv(field) == text


def test_a_utf8_byte_order_mark_is_dropped_by_every_reader(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes("\ufeffГде лодка?\nКошка спит.\nМы тут.\n".encode())
    assert read_sentences(path)[0][0] == "Где лодка?"
    assert read_texts(path)[0] == "Где лодка?"
    assert read_eval_file(path).references[0] == "Где лодка?"
    tsv = tmp_path / "p.tsv"
    tsv.write_bytes("\ufeffenglish\trussian\nWhere is the boat?\tГде лодка?\n".encode())
    assert read_eval_file(tsv, source_column="english", target_column="russian", header=True).sources == [
        "Where is the boat?"
    ]


@pytest.mark.parametrize("reader", list(READERS))
def test_a_folder_is_called_a_folder(reader, tmp_path):
    with pytest.raises(V2TError, match=f"{tmp_path} is a folder, not a file"):
        READERS[reader](tmp_path)


@pytest.mark.parametrize("reader", list(READERS))
def test_an_empty_file_is_called_empty(reader, tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes(b"")
    with pytest.raises(V2TError, match=r"is empty \(0 bytes\)"):
        READERS[reader](path)


def test_a_folder_given_for_vectors_is_called_a_folder(tmp_path):
    with pytest.raises(V2TError, match=f"{tmp_path} is a folder, not a file"):
        load_vectors_file(tmp_path)


@pytest.mark.parametrize("reader", ["corpus", "invert source", "evaluation file"])
def test_a_tsv_read_as_sentences_is_refused(reader, tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("Where is the boat?\tГде лодка?\nThe cat sleeps.\tКошка спит.\nHi.\tПривет.\n")
    with pytest.raises(V2TError, match=r"is a TSV \(3 of 3 lines hold a tab\)"):
        READERS[reader](path)
    named = tmp_path / "plain.tsv"
    named.write_text("Где лодка?\nКошка спит.\n")
    with pytest.raises(V2TError, match="is a TSV"):
        READERS[reader](named)


@pytest.mark.parametrize("reader", ["corpus", "invert source", "evaluation file"])
def test_a_binary_file_is_refused(reader, tmp_path):
    path = tmp_path / "image.txt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(4000))
    with pytest.raises(V2TError, match="is mostly control characters or bytes that are not UTF-8 .*convert it"):
        READERS[reader](path)


def test_lines_that_are_not_utf8_are_none_and_rows_refuse_them(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes("Где лодка?\n".encode() + b"caf\xe9\n" + "Мы тут.\n".encode())  # codespell:ignore caf
    assert read_lines(path) == ["Где лодка?", None, "Мы тут."]
    with pytest.raises(V2TError, match=r"line\(s\) \[2\] are not UTF-8"):
        read_rows(path)


def test_hypotheses_holding_line_separators_are_read_by_row(tmp_path):
    path = tmp_path / "h.jsonl"
    texts = ["a\u2028b", "c\x85d", "e\x1df"]
    path.write_text(
        "".join(json.dumps({"index": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)),
        encoding="utf-8",
    )
    assert read_hypotheses(path, 3) == texts


@pytest.mark.parametrize("reader", [*READERS, "vectors"])
def test_a_fifo_or_stdin_is_called_what_it_is(reader, tmp_path):
    import os

    read = READERS.get(reader, load_vectors_file)
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(V2TError, match=r"pipe\.txt is not a regular file \(a pipe, FIFO or device\): save it"):
        read(fifo)  # no hang: a FIFO is never opened
    with pytest.raises(V2TError, match=r"- \(standard input\) is not read: save it to a file"):
        read("-")


def test_a_fifo_corpus_is_called_what_it_is_before_training(tmp_path):
    import os

    from lora_v2t.config import load_config
    from lora_v2t.train.rundir import check_paths

    os.mkfifo(tmp_path / "pipe.txt")
    cfg = load_config(
        "recipes/tiny_debug.yaml", [f"--data.train={tmp_path / 'pipe.txt'}", "--backbone.name=openai-community/gpt2"]
    )
    with pytest.raises(V2TError, match=r"corpus .*pipe\.txt \(data\.train\) is not a regular file"):
        check_paths(cfg, tmp_path / "run")


@pytest.mark.parametrize("reader", list(READERS))
def test_a_file_whose_lines_end_in_a_carriage_return_alone_is_called_so(reader, tmp_path):
    path = tmp_path / "mac.txt"
    path.write_bytes("Где лодка?\rКошка спит на диване.\rЗавтра будет дождь.\r".encode())
    with pytest.raises(V2TError, match=r"mac\.txt ends its lines with a carriage return alone .*tr '\\r' '\\n'"):
        READERS[reader](path)
