"""Bulk inversion to JSONL / TSV: rows as they come, restart after the last complete row, bad input refused."""

import json

import numpy as np
import pytest

from lora_v2t import V2TError
from lora_v2t.cli import main
from lora_v2t.config import DEFAULT_BUDGET
from lora_v2t.tasks.invert import InvertJob, format_rows, invert_file, prepare_job
from lora_v2t.util.textfile import split_lines, unescape_tsv

from .conftest import SENTENCES, refuse_calls


@pytest.fixture()
def bundle(v2t, tmp_path):
    return v2t.save_adapter(tmp_path / "bundle")


@pytest.fixture()
def vectors_file(v2t, tmp_path):
    path = tmp_path / "vectors.npy"
    np.save(path, v2t.encode(SENTENCES))
    return path


def rows_of(path):
    return [json.loads(line) for line in split_lines(path.read_text(encoding="utf-8"))]


def test_vectors_become_rows_equal_to_generate_with_cosines(v2t, bundle, vectors_file, tmp_path):
    out = tmp_path / "out.jsonl"
    counts = invert_file(
        v2t,
        InvertJob(str(vectors_file), str(out), cosine=True, batch_size=3, options={"max_new_tokens": 6}),
        bundle,
        show_progress=False,
    )
    rows = rows_of(out)
    expected = v2t.generate(np.load(vectors_file), max_new_tokens=6)
    assert [r["index"] for r in rows] == list(range(len(SENTENCES))) and counts["written"] == len(SENTENCES)
    assert [r["text"] for r in rows] == expected and all(-1 <= r["cosine"] <= 1 for r in rows)
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["adapter"] == str(bundle.resolve()) and meta["decoding"]["max_new_tokens"] == 6


def test_a_stopped_job_continues_after_its_last_complete_row(v2t, bundle, vectors_file, tmp_path, monkeypatch):
    import lora_v2t.tasks.invert as invert_module

    out = tmp_path / "out.tsv"
    job = InvertJob(str(vectors_file), str(out), batch_size=4, options={"max_new_tokens": 6})
    real_append, calls = invert_module.append_rows, {"n": 0}

    def ctrl_c_after_the_first_batch(path, text):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_append(path, text)

    monkeypatch.setattr(invert_module, "append_rows", ctrl_c_after_the_first_batch)
    with pytest.raises(KeyboardInterrupt):
        invert_file(v2t, job, bundle, show_progress=False)
    with open(out, "a", encoding="utf-8") as handle:
        handle.write("4\tа row cut sh")  # as if the process had died inside a write
    monkeypatch.undo()
    counts = invert_file(v2t, job, bundle, show_progress=False)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert counts["resumed_at"] == 4 and lines[0] == "index\ttext\tcosine"
    assert [int(line.split("\t")[0]) for line in lines[1:]] == list(range(len(SENTENCES)))  # each row once
    expected = v2t.generate(np.load(vectors_file), max_new_tokens=6)
    assert [line.split("\t")[1] for line in lines[1:]] == [t.replace("\t", "\\t") for t in expected]


def test_a_restart_with_another_adapter_or_options_is_refused(v2t, bundle, vectors_file, tmp_path):
    out = tmp_path / "out.jsonl"
    invert_file(v2t, InvertJob(str(vectors_file), str(out), options={"max_new_tokens": 4}), bundle, show_progress=False)
    before = out.read_bytes()
    with pytest.raises(V2TError, match=r"was written with another decoding: max_new_tokens 4, now 5: ") as refused:
        prepare_job(InvertJob(str(vectors_file), str(out), options={"max_new_tokens": 5}), bundle)
    assert "num_beams" not in str(refused.value)  # only what changed is named
    with pytest.raises(V2TError, match="was written with another dtype"):  # a restart on a bf16 CPU, say
        prepare_job(InvertJob(str(vectors_file), str(out), options={"max_new_tokens": 4}, dtype="bfloat16"), bundle)
    with pytest.raises(V2TError, match="asks for dtype bfloat16 but the base was loaded in float32"):
        invert_file(v2t, InvertJob(str(vectors_file), str(tmp_path / "new.jsonl"), dtype="bfloat16"), bundle)
    assert not (tmp_path / "new.jsonl.meta.json").exists()
    v2t.projector.norm.weight.data += 1  # other weights at the same path
    other = v2t.save_adapter(bundle)
    with pytest.raises(V2TError, match="was written with another projector_sha256"):
        prepare_job(InvertJob(str(vectors_file), str(out), options={"max_new_tokens": 4}), other)
    assert out.read_bytes() == before  # nothing appended
    (tmp_path / "foreign.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(V2TError, match="was not written by `lora-v2t invert`"):
        prepare_job(InvertJob(str(vectors_file), str(tmp_path / "foreign.jsonl")), bundle)


def test_a_restart_on_a_source_whose_content_changed_is_refused(v2t, bundle, vectors_file, tmp_path):
    texts = tmp_path / "s.txt"
    texts.write_text("\n".join(SENTENCES[:3]) + "\n", encoding="utf-8")
    for source, rewrite in [
        (vectors_file, lambda: np.save(vectors_file, np.load(vectors_file)[::-1].copy())),  # same shape and size
        (texts, lambda: texts.write_text("\n".join(SENTENCES[3:6]) + "\n", encoding="utf-8")),  # same row count
    ]:
        out = tmp_path / f"{source.stem}.jsonl"
        job = InvertJob(str(source), str(out), options={"max_new_tokens": 4})
        invert_file(v2t, job, bundle, show_progress=False)
        before = out.read_bytes()
        rewrite()
        with pytest.raises(V2TError, match=f"was written from another content of {source}"):
            invert_file(v2t, job, bundle, show_progress=False)
        assert out.read_bytes() == before


def test_a_second_job_on_the_same_output_is_refused_naming_the_first(bundle, v2t, tmp_path, capsys):
    import os

    from lora_v2t.util.locks import FileLock

    texts = tmp_path / "s.txt"
    texts.write_text("\n".join(SENTENCES[:2]) + "\n", encoding="utf-8")
    out = tmp_path / "o.jsonl"
    args = [
        "invert",
        "--adapter",
        str(bundle),
        "--texts",
        str(texts),
        "--out",
        str(out),
        "--max-new-tokens",
        "4",
        "--no-progress",
    ]
    with FileLock(str(out) + ".lock"):  # as a first job would hold it while it writes
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"is being written by process {os.getpid()}" in err[0]
    assert not out.exists() and not (tmp_path / "o.jsonl.meta.json").exists()
    assert main(args) == 0 and len(rows_of(out)) == 2 and not (tmp_path / "o.jsonl.lock").exists()


def test_an_output_folder_that_cannot_be_made_is_one_line(bundle, v2t, tmp_path, capsys):
    texts = tmp_path / "s.txt"
    texts.write_text(SENTENCES[0] + "\n", encoding="utf-8")
    (tmp_path / "a.bak").write_text("a file, not a folder")
    assert (
        main(
            [
                "invert",
                "--adapter",
                str(bundle),
                "--texts",
                str(texts),
                "--out",
                str(tmp_path / "a.bak" / "x.jsonl"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create the folder of --out" in err[0]
    assert main(["invert", "--adapter", str(bundle), "--vectors", str(texts), "--out", str(tmp_path / "v.jsonl")]) == 2
    assert (
        main(
            ["invert", "--adapter", str(bundle), "--texts", str(tmp_path / "v.npy"), "--out", str(tmp_path / "v.jsonl")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--vectors takes a .npy file" in err and "--texts takes a text file of sentences" in err
    assert not (tmp_path / "v.jsonl.meta.json").exists()
    with pytest.raises(V2TError, match=f"source {tmp_path} is a folder, not a file: give a .npy file"):
        prepare_job(InvertJob(str(tmp_path), str(tmp_path / "o.jsonl")), bundle)


def test_nan_rows_are_refused_by_row_or_skipped_and_counted(v2t, bundle, tmp_path):
    vectors = v2t.encode(SENTENCES[:5])
    vectors[3, 0] = np.nan
    path = tmp_path / "v.npy"
    np.save(path, vectors)
    with pytest.raises(V2TError, match=r"row\(s\) \[3\] hold NaN or inf: .*--on-nan skip"):
        prepare_job(InvertJob(str(path), str(tmp_path / "a.jsonl")), bundle)
    assert not (tmp_path / "a.jsonl").exists()
    counts = invert_file(
        v2t,
        InvertJob(str(path), str(tmp_path / "b.jsonl"), on_nan="skip", options={"max_new_tokens": 4}),
        bundle,
        show_progress=False,
    )
    assert counts["skipped"] == 1 and [r["index"] for r in rows_of(tmp_path / "b.jsonl")] == [0, 1, 2, 4]


def test_a_full_disk_leaves_only_complete_rows(v2t, bundle, vectors_file, tmp_path, monkeypatch):
    import os

    out = tmp_path / "out.jsonl"
    job = InvertJob(str(vectors_file), str(out), batch_size=4, options={"max_new_tokens": 4})
    real_fsync, calls = os.fsync, {"n": 0}

    def disk_full_on_the_second_batch(fd):
        calls["n"] += out.exists() and os.fstat(fd).st_ino == os.stat(out).st_ino  # OUT's, not its meta file's
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_on_the_second_batch)
    with pytest.raises(
        V2TError,
        match=r"no space left on the disk of .*out.jsonl \(.*needed.*\): the rows written "
        "so far are complete",
    ):
        invert_file(v2t, job, bundle, show_progress=False)
    assert [r["index"] for r in rows_of(out)] == [0, 1, 2, 3]  # the failed batch was cut back out
    monkeypatch.undo()
    assert invert_file(v2t, job, bundle, show_progress=False)["resumed_at"] == 4


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda t, v: np.save(t / "x.npy", v[:, :5]), r"shape \(10, 5\), but the adapter inverts \(24,\) vectors"),
        (lambda t, v: np.save(t / "x.npy", v[0]), r"holds an array of shape \(24,\): it must be 2-D \(rows, 24\)"),
        (lambda t, v: np.save(t / "x.npy", v[:0]), r"holds no vectors \(shape \(0, 24\)\)"),
        (lambda t, v: (t / "x.npy").write_text("Где лодка?\n"), "is a text file, not a .npy array"),
        (lambda t, v: np.save(t / "x.npy", v.astype(np.complex64)), "holds complex numbers"),
    ],
)
def test_bad_vector_files_are_refused_before_the_models_load(
    make, message, bundle, v2t, tmp_path, capsys, no_model_load
):
    make(tmp_path, v2t.encode(SENTENCES))
    code = main(
        [
            "invert",
            "--adapter",
            str(bundle),
            "--vectors",
            str(tmp_path / "x.npy"),
            "--out",
            str(tmp_path / "o.jsonl"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
    assert __import__("re").search(message, err)


def test_cli_inverts_a_text_file_and_refuses_a_wrong_output_name(bundle, v2t, tmp_path, capsys):
    texts = tmp_path / "s.txt"
    texts.write_text("\n".join(SENTENCES[:3]) + "\n", encoding="utf-8")
    assert (
        main(
            [
                "invert",
                "--adapter",
                str(bundle),
                "--texts",
                str(texts),
                "--out",
                str(tmp_path / "o.jsonl"),
                "--max-new-tokens",
                "4",
                "--cosine",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "3 rows written to" in capsys.readouterr().out
    # unasked, the default budget: the rows are the texts Vector2Text.generate gives at that budget
    assert [r["text"] for r in rows_of(tmp_path / "o.jsonl")] == v2t.invert(
        SENTENCES[:3], max_new_tokens=4, budget=DEFAULT_BUDGET
    )
    assert main(["invert", "--adapter", str(bundle), "--texts", str(texts), "--out", str(tmp_path / "o.csv")]) == 2
    assert "must end in .jsonl or .tsv" in capsys.readouterr().err
    texts.write_text("Где лодка?\n\nКошка спит.\n", encoding="utf-8")
    assert main(["invert", "--adapter", str(bundle), "--texts", str(texts), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "line(s) [2] are blank" in capsys.readouterr().err


def test_tsv_rows_escape_tabs_and_newlines():
    assert format_rows(".tsv", [7], ["a\tb\nc\\d"], [0.51234]) == "7\ta\\tb\\nc\\\\d\t0.5123\n"
    assert json.loads(format_rows(".jsonl", [7], ["ё"], None)) == {"index": 7, "text": "ё"}


def test_a_complete_output_is_left_as_it_is_without_loading_the_models(bundle, v2t, tmp_path, capsys, monkeypatch):
    texts = tmp_path / "s.txt"
    texts.write_text("\n".join(SENTENCES[:2]) + "\n", encoding="utf-8")
    args = [
        "invert",
        "--adapter",
        str(bundle),
        "--texts",
        str(texts),
        "--out",
        str(tmp_path / "o.jsonl"),
        "--max-new-tokens",
        "4",
        "--no-progress",
    ]
    assert main(args) == 0
    before = (tmp_path / "o.jsonl").read_bytes()
    capsys.readouterr()
    refuse_calls(monkeypatch, "lora_v2t.bundle.loading.load_adapter", "the models were loaded")
    assert main(args) == 0
    assert "is complete: it holds all 2 rows" in capsys.readouterr().out
    assert (tmp_path / "o.jsonl").read_bytes() == before


def test_an_output_from_before_dtypes_were_recorded_continues(v2t, bundle, vectors_file, tmp_path):
    out = tmp_path / "old.jsonl"
    job = InvertJob(str(vectors_file), str(out), options={"max_new_tokens": 4}, batch_size=3)
    invert_file(v2t, job, bundle, show_progress=False)
    meta = tmp_path / "old.jsonl.meta.json"
    saved = json.loads(meta.read_text())
    del saved["dtype"]
    meta.write_text(json.dumps(saved))
    assert prepare_job(
        InvertJob(str(vectors_file), str(out), options={"max_new_tokens": 4}, dtype="float32"), bundle
    ).start == len(np.load(vectors_file))  # complete: nothing refused


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl"])
def test_texts_holding_line_separators_are_one_row_and_a_rerun_reads_them_back(
    v2t, bundle, vectors_file, tmp_path, monkeypatch, suffix
):
    weird = [
        "a\x1db",
        "c\x85d",
        "e\u2028f",
        "g\u2029h",
        "i\x0bj\x0ck",
        "l\tm\nn\ro\\p",
        "q\x1cr\x1es",
        "",
        "t",
        "u\x1d\u2028",
    ]
    rows = iter(weird)
    monkeypatch.setattr(v2t, "generate", lambda vectors, **options: [next(rows) for _ in vectors])
    out = tmp_path / f"out{suffix}"
    job = InvertJob(str(vectors_file), str(out), batch_size=4, options={"max_new_tokens": 4})
    assert invert_file(v2t, job, bundle, show_progress=False)["written"] == len(SENTENCES)
    again = invert_file(v2t, job, bundle, show_progress=False)  # the last row ends with \x1d and U+2028
    assert again["written"] == 0 and again["resumed_at"] == len(SENTENCES)
    data = out.read_bytes()
    lines = split_lines(data.decode("utf-8"))
    assert data.count(b"\n") == len(lines) == len(SENTENCES) + (suffix == ".tsv")  # what wc -l counts
    if suffix == ".tsv":
        texts = [unescape_tsv(line.split("\t")[1]) for line in lines[1:]]
    else:
        texts = [json.loads(line)["text"] for line in lines]
    assert texts == weird


def test_a_text_source_has_one_row_per_line_without_its_byte_order_mark(bundle, tmp_path):
    texts = tmp_path / "s.txt"
    rows = ["Где лодка?", "Кошка\u2028спит.", "Мы\x85тут.", "Завтра\x1dдождь.", "Хорошо."]
    texts.write_bytes(("\ufeff" + "\n".join(rows) + "\n").encode())
    assert prepare_job(InvertJob(str(texts), str(tmp_path / "o.jsonl")), bundle).source.texts == rows


def test_a_changed_row_anywhere_in_a_large_vector_file_is_refused(bundle, tmp_path):
    path = tmp_path / "big.npy"
    vectors = np.random.default_rng(0).standard_normal((90_000, 24)).astype(np.float32)  # 8.6 MB
    np.save(path, vectors)
    job = InvertJob(str(path), str(tmp_path / "o.jsonl"))
    prepare_job(job, bundle)
    # a row between the first two of the 64 blocks of 64 KiB the fingerprint used to read
    size = path.stat().st_size
    row = ((2**16 + (size - 2**16) // 63) // 2 - 128) // (24 * 4)
    vectors[row] += 1
    np.save(path, vectors)
    assert path.stat().st_size == size
    with pytest.raises(V2TError, match="was written from another content of"):
        prepare_job(job, bundle)


def test_sampling_is_seeded_and_the_seed_recorded(bundle, v2t, tmp_path, capsys):
    texts = tmp_path / "s.txt"
    texts.write_text("\n".join(SENTENCES[:4]) + "\n", encoding="utf-8")

    def invert(out, seed):
        return main(
            [
                "invert",
                "--adapter",
                str(bundle),
                "--texts",
                str(texts),
                "--out",
                str(tmp_path / out),
                "--max-new-tokens",
                "8",
                "--do-sample",
                "--temperature",
                "5",
                "--seed",
                seed,
                "--batch-size",
                "2",
                "--no-progress",
            ]
        )

    assert invert("a.jsonl", "3") == 0 and invert("b.jsonl", "3") == 0 and invert("c.jsonl", "4") == 0
    assert rows_of(tmp_path / "a.jsonl") == rows_of(tmp_path / "b.jsonl") != rows_of(tmp_path / "c.jsonl")
    assert json.loads((tmp_path / "a.jsonl.meta.json").read_text())["seed"] == 3
    capsys.readouterr()
    assert invert("a.jsonl", "4") == 2
    assert "was written with another seed (3, now 4)" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--rerank"], ["--num-return-sequences", "2"]])
def test_invert_does_not_offer_what_it_refuses(bundle, tmp_path, capsys, option):
    with pytest.raises(SystemExit) as exited:
        main(["invert", "--help"])
    assert exited.value.code == 0 and option[0] not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "invert",
                "--adapter",
                str(bundle),
                "--texts",
                str(tmp_path / "s.txt"),
                "--out",
                str(tmp_path / "o.jsonl"),
                *option,
            ]
        )
    assert exited.value.code == 2 and f"unrecognized arguments: {' '.join(option)}" in capsys.readouterr().err


def test_an_output_begun_before_whole_files_were_hashed_is_checked_as_it_was(v2t, bundle, vectors_file, tmp_path):
    from lora_v2t.tasks.invertsource import Source

    out = tmp_path / "old.jsonl"
    job = InvertJob(str(vectors_file), str(out), options={"max_new_tokens": 4}, dtype="float32")
    invert_file(v2t, job, bundle, show_progress=False)
    meta = tmp_path / "old.jsonl.meta.json"
    saved = json.loads(meta.read_text())
    del saved["source_file_sha256"], saved["seed"]  # as an older lora_v2t wrote it
    saved["source_sha256"] = Source(vectors_file, v2t.embedding_dim, "refuse").legacy_fingerprint()
    meta.write_text(json.dumps(saved))
    assert prepare_job(job, bundle).start == len(SENTENCES)  # continues: the same source
    np.save(vectors_file, np.load(vectors_file)[::-1].copy())
    with pytest.raises(V2TError, match="was written from another content of"):
        prepare_job(job, bundle)


@pytest.mark.parametrize("edit", ["drop", "swap", "repeat"])
def test_an_output_with_rows_missing_out_of_order_or_repeated_is_refused(v2t, bundle, vectors_file, tmp_path, edit):
    out = tmp_path / "out.jsonl"
    job = InvertJob(str(vectors_file), str(out), options={"max_new_tokens": 4})
    invert_file(v2t, job, bundle, show_progress=False)
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    edited = "".join(
        {"drop": lines[:4] + lines[5:], "swap": [lines[1], lines[0]] + lines[2:], "repeat": lines[:5] + lines[4:]}[edit]
    )
    out.write_text(edited, encoding="utf-8")
    with pytest.raises(V2TError, match=r"out\.jsonl: its rows are not those .*(missing|out of order or repeated)"):
        invert_file(v2t, job, bundle, show_progress=False)
    assert out.read_text(encoding="utf-8") == edited  # left as it was


def test_the_rows_skipped_for_nan_are_no_gap_on_a_rerun(v2t, bundle, tmp_path):
    vectors = v2t.encode(SENTENCES[:5])
    vectors[[1, 4], 0] = np.nan
    np.save(tmp_path / "v.npy", vectors)
    job = InvertJob(str(tmp_path / "v.npy"), str(tmp_path / "o.jsonl"), on_nan="skip", options={"max_new_tokens": 4})
    invert_file(v2t, job, bundle, show_progress=False)
    counts = invert_file(v2t, job, bundle, show_progress=False)
    assert counts["written"] == 0 and [r["index"] for r in rows_of(tmp_path / "o.jsonl")] == [0, 2, 3]


def test_a_job_takes_paths_and_refuses_a_batch_size_that_is_not_an_integer(v2t, bundle, vectors_file, tmp_path):
    counts = invert_file(
        v2t, InvertJob(vectors_file, tmp_path / "o.jsonl", options={"max_new_tokens": 4}), bundle, show_progress=False
    )
    assert counts["written"] == len(SENTENCES) and (tmp_path / "o.jsonl.meta.json").is_file()
    for bad in ("8", 2.5, True):
        with pytest.raises(V2TError, match=r"--batch-size must be an integer >= 1, got"):
            InvertJob(str(vectors_file), str(tmp_path / "p.jsonl"), batch_size=bad)
    with pytest.raises(V2TError, match=r"source must be a file path"):
        InvertJob(3, str(tmp_path / "p.jsonl"))
