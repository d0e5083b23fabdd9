"""lora_v2t.util.files: temporary names renamed into place, complete appends, own files only, full disks in one line.

Full disks are faked: a write that raises ENOSPC half-way, or a disk that reports too little free space."""

import errno
import os
import shutil
from collections import namedtuple

import pytest

import lora_v2t.util.files as files
from lora_v2t.util.errors import V2TError
from lora_v2t.util.files import (
    DiskFull,
    append_complete,
    atomic_folder,
    atomic_write,
    foreign_entries,
    remove_own,
    replace_dir,
    temporary_of,
)

Usage = namedtuple("Usage", "total used free")


def write_half_then_fail(fd, payload):
    os.write(fd, bytes(payload[: len(payload) // 2]))
    raise OSError(errno.ENOSPC, "No space left on device")


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_writes_text_bytes_or_through_a_function_and_leaves_no_temporary(tmp_path):
    atomic_write(tmp_path / "a.txt", "привет\n")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    atomic_write(tmp_path / "c.txt", lambda path: path.write_text("from a function"))
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "привет\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.txt").read_text() == "from a function"
    assert leftovers(tmp_path) == []


def test_a_write_that_fails_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "meta.json"
    target.write_text("old")

    def crash(path):
        path.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_a_full_disk_mid_write_is_one_line_naming_the_place_and_the_size(tmp_path, monkeypatch):
    target = tmp_path / "meta.json"
    target.write_text("old")
    monkeypatch.setattr(files, "_write_all", write_half_then_fail)
    with pytest.raises(
        DiskFull,
        match=rf"no space left on the disk of {target} \(1.0 KiB needed, .* free\): "
        "free some space",
    ) as full:
        atomic_write(target, "x" * 1024)
    assert "\n" not in str(full.value) and isinstance(full.value, V2TError)
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_a_disk_without_room_is_refused_before_a_byte_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 100, 100))
    with pytest.raises(DiskFull, match=r"\(1.0 KiB needed, 100 bytes free\)"):
        atomic_write(tmp_path / "a.txt", "x" * 1024)
    with pytest.raises(DiskFull, match=r"\(200 bytes needed, 100 bytes free\)"):
        append_complete(tmp_path / "rows.jsonl", b"y" * 200)
    assert list(tmp_path.iterdir()) == []


def test_an_append_goes_in_whole_or_not_at_all(tmp_path, monkeypatch):
    rows = tmp_path / "rows.jsonl"
    append_complete(rows, b'{"index": 0}\n')
    monkeypatch.setattr(files, "_write_all", write_half_then_fail)
    with pytest.raises(DiskFull, match=r"rows.jsonl \(14 bytes needed"):
        append_complete(rows, b'{"index": 1}\n\n')
    assert rows.read_bytes() == b'{"index": 0}\n'  # cut back to where it ended, no half row


def test_a_folder_is_written_aside_and_replaces_the_old_one_only_when_complete(tmp_path):
    target = tmp_path / "bundle"
    with atomic_folder(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("stopped half-way")
    assert (target / "a").read_text() == "1" and leftovers(tmp_path) == []
    with atomic_folder(target) as tmp:
        (tmp / "b").write_text("3")
    assert [p.name for p in target.iterdir()] == ["b"] and leftovers(tmp_path) == []


def test_a_full_disk_while_filling_a_folder_is_one_line_and_leaves_the_old_folder(tmp_path):
    target = tmp_path / "report"
    target.mkdir()
    (target / "summary.json").write_text("{}")
    with pytest.raises(DiskFull, match=rf"disk of {target} \(2.0 MiB needed"):
        with atomic_folder(target, needed=2 * 2**20) as tmp:
            (tmp / "summary.json").write_text("{new}")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (target / "summary.json").read_text() == "{}" and leftovers(tmp_path) == []


def test_replace_dir_puts_the_old_folder_back_when_the_swap_fails(tmp_path, monkeypatch):
    old, new = tmp_path / "final", tmp_path / "new"
    old.mkdir()
    (old / "keep").write_text("x")
    real_rename = type(new).rename

    def fail_for_new(self, target):
        if self == new:
            raise OSError(errno.EIO, "Input/output error")
        return real_rename(self, target)

    monkeypatch.setattr(type(new), "rename", fail_for_new)
    with pytest.raises(OSError):
        replace_dir(new, old)
    assert (old / "keep").read_text() == "x"


def test_temporary_names_nested_or_not_say_what_they_stand_for():
    assert temporary_of(".step-000010.tmp-123") == ("step-000010", 123)
    assert temporary_of("..step-000010.tmp-123.old-123") == ("step-000010", 123)
    assert temporary_of(".final.old-7") == ("final", 7)
    assert temporary_of("notes.tmp-1") is None and temporary_of(".notes") is None


def test_only_own_entries_are_removed(tmp_path):
    folder = tmp_path / "step-000010"
    (folder / "backbone").mkdir(parents=True)
    for name in ("trainer_state.json", "notes.txt"):
        (folder / name).write_text("x")
    assert foreign_entries(folder, {"backbone", "trainer_state.json"}) == ["notes.txt"]
    assert remove_own(folder, {"backbone", "trainer_state.json", "optimizer.safetensors"}) == ["notes.txt"]
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    (folder / "notes.txt").unlink()
    (folder / "trainer_state.json").write_text("x")
    assert remove_own(folder, {"trainer_state.json"}) == [] and not folder.exists()
