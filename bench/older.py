"""Run a snippet against the lora_v2t of an older commit (or of this working tree), in a child process: the
"today's code" baseline of the benchmarks that compare against the code before a change.

The commit's ``lora_v2t/`` is extracted with ``git archive`` into a temporary folder (the repository's worktrees
and index are not touched); the child reads the same checkpoints folder (``LORA_V2T_HOME``) as this process, so it
finds the converted offline base instead of converting it again.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def commit_id(rev: str) -> str:
    """The full id of ``rev`` (a commit, tag or expression such as ``29aa133^``) in this repository."""
    return subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()


def run_at(rev: str | None, code: str, args: dict) -> dict:
    """Run ``code`` in a child process with the lora_v2t of commit ``rev`` importable (None: this working tree's);
    it reads ``ARGS`` (``args``, plus ``ARGS["tmp"]``, a scratch folder) and must write a JSON object to the path
    ``ARGS["result"]``, which is returned."""
    from lora_v2t.backbone import checkpoints_dir

    with tempfile.TemporaryDirectory(prefix="older-lora-v2t-") as tmp:
        code_dir = REPO
        if rev is not None:
            code_dir = Path(tmp) / "code"
            archive = subprocess.run(["git", "archive", "--format=tar", commit_id(rev), "lora_v2t"], cwd=REPO,
                                     check=True, capture_output=True).stdout
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(code_dir, filter="data")
        result = Path(tmp) / "result.json"
        args = args | {"result": str(result), "tmp": tmp}
        script = f"import json, sys\nARGS = json.loads(sys.argv[1])\n{code}"
        env = os.environ | {"PYTHONPATH": str(code_dir), "LORA_V2T_HOME": str(checkpoints_dir()), "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-c", script, json.dumps(args)], cwd=tmp,
                       env=env, check=True)
        return json.loads(result.read_text(encoding="utf-8"))
