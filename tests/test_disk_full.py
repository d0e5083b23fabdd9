"""A full disk is one line that says where and how much, with nothing half-written: the disk is faked (a
``shutil.disk_usage`` that reports the space left, or a write that raises ENOSPC), never filled."""

import errno
import json
import shutil
from collections import namedtuple

import numpy as np

from lora_v2t.cli import main

from .conftest import SENTENCES

Usage = namedtuple("Usage", "total used free")


def test_invert_stops_in_one_line_when_the_disk_fills_and_keeps_only_complete_rows(v2t, tmp_path, capsys, monkeypatch):
    bundle = v2t.save_adapter(tmp_path / "bundle")
    vectors, out = tmp_path / "vectors.npy", tmp_path / "out.jsonl"
    np.save(vectors, v2t.encode(SENTENCES))

    def full_after_the_first_batch(path):  # room for the meta file and one batch of rows, then no more
        return Usage(10**9, 10**9, 10 if out.exists() and out.stat().st_size else 10**9)

    monkeypatch.setattr(shutil, "disk_usage", full_after_the_first_batch)
    argv = [
        "invert",
        "--adapter",
        str(bundle),
        "--vectors",
        str(vectors),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--max-new-tokens",
        "4",
        "--no-progress",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: no space left on the disk of {out} (")
    assert "bytes needed, 10 bytes free): the rows written so far are complete" in err[0]
    assert [json.loads(line)["index"] for line in out.read_text(encoding="utf-8").splitlines()] == [0, 1, 2, 3]
    monkeypatch.undo()
    assert main(argv) == 0 and "continued from row 4" in capsys.readouterr().out


def test_any_command_that_meets_a_full_disk_says_so_in_one_line(monkeypatch, capsys):
    import lora_v2t.cli.bundles as bundles

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/file.bin")

    monkeypatch.setattr(bundles, "cmd_info", full)
    assert main(["info", "some-adapter"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no space left on the disk of /data/out/file.bin")
    assert err[0].endswith(": free some space there, or choose a folder on another disk")
