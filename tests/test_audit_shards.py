"""An audit over two CPU processes through `accelerate launch` (gloo): each inverts its own rows into its own
resumable part, and the report built from both parts is the one-process report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lora_v2t.tasks.shards import Shard, bounds, parts

from .conftest import LAUNCH_ENV, SENTENCES, TWO_CPU_PROCESSES

ENV = os.environ | LAUNCH_ENV


def audit_command(vectors, bundle, out, originals) -> list[str]:
    return [
        "-m",
        "lora_v2t.cli",
        "audit",
        str(vectors),
        "--adapter",
        str(bundle),
        "--out",
        str(out),
        "--originals",
        str(originals),
        "--max-new-tokens",
        "6",
        "--batch-size",
        "1",
        "--device",
        "cpu",
        "--no-progress",
    ]


def launch(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(TWO_CPU_PROCESSES + list(command), capture_output=True, text=True, env=ENV, timeout=300)


def test_the_rows_are_split_in_contiguous_parts_of_near_equal_size():
    assert bounds(10, 2) == [(0, 5), (5, 10)] and bounds(7, 3) == [(0, 2), (2, 5), (5, 7)]
    assert bounds(1, 2) == [(0, 0), (0, 1)] and bounds(4, 1) == [(0, 4)]


def test_a_process_without_rows_inverts_nothing_and_has_no_part(v2t, tmp_path):
    from lora_v2t.bundle.adapter import validate_bundle
    from lora_v2t.tasks.audit import AuditJob, extract, invert_rows, plan_audit

    bundle = v2t.save_adapter(tmp_path / "bundle")
    np.save(tmp_path / "one.npy", v2t.encode(SENTENCES[:1]))
    config = validate_bundle(bundle)
    plan = plan_audit(AuditJob(str(tmp_path / "one.npy"), str(tmp_path / "audit")), config, bundle)
    (tmp_path / "audit").mkdir()
    extract(plan, show_progress=False)

    def load():
        raise AssertionError("the models were loaded for no rows")

    assert invert_rows(load, plan, bundle, config, Shard(0, 2), show_progress=False)["written"] == 0
    assert not (tmp_path / "audit" / "parts").exists()
    assert parts(tmp_path, "v.npy", "i.jsonl", 1, 2) == [(tmp_path / "parts" / "i-1-of-2.jsonl", 0)]


def test_two_processes_audit_their_own_parts_and_resume(v2t, tmp_path):
    if not Path(TWO_CPU_PROCESSES[0]).exists():
        pytest.skip("the accelerate command is not installed beside this Python")
    bundle = v2t.save_adapter(tmp_path / "bundle")
    np.save(tmp_path / "v.npy", v2t.encode(SENTENCES))
    (tmp_path / "o.txt").write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    single = subprocess.run(
        [sys.executable, *audit_command(tmp_path / "v.npy", bundle, tmp_path / "one", tmp_path / "o.txt")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    out = tmp_path / "two"
    command = audit_command(tmp_path / "v.npy", bundle, out, tmp_path / "o.txt")
    first = launch(*command)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("Of 10 audited vectors") == 1  # the main process reports, once
    part_rows = [
        [json.loads(line)["index"] for line in (out / "parts" / f"inverted-{r}-of-2.jsonl").open()] for r in (0, 1)
    ]
    assert part_rows == [list(range(5)), list(range(5))]  # rows 0-4 and 5-9, each part indexed from its start
    for name in ("summary.json", "rows.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "one" / name).read_bytes()

    part = out / "parts" / "inverted-1-of-2.jsonl"  # as if the second process had been killed after 3 rows
    part.write_text("".join(part.read_text(encoding="utf-8").splitlines(keepends=True)[:3]), encoding="utf-8")
    (out / "summary.json").unlink()
    again = launch(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(part.read_text(encoding="utf-8").splitlines()) == 5
    assert (out / "summary.json").read_bytes() == (tmp_path / "one" / "summary.json").read_bytes()
