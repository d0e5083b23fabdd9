"""Run a snippet against the lora_v2t of an older commit (or of this working tree, or of a folder extracted
earlier), in a child process: the "today's code" baseline of the benchmarks that compare against the code before
a change.

    python bench/older.py 0fe5359 .gpu/old     # extract a commit's lora_v2t/ for a machine without the repository

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
    return subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()


def extract(rev: str, folder: Path) -> Path:
    """Write commit ``rev``'s ``lora_v2t/`` under ``folder`` (``git archive``; the worktrees and index are not
    touched) and return ``folder``: a code folder for :func:`run_in`, also on a machine without the repository."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit_id(rev), "lora_v2t"], cwd=REPO, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def run_at(rev: str | None, code: str, args: dict) -> dict:
    """Run ``code`` in a child process with the lora_v2t of commit ``rev`` importable (None: this working tree's);
    it reads ``ARGS`` (``args``, plus ``ARGS["tmp"]``, a scratch folder) and must write a JSON object to the path
    ``ARGS["result"]``, which is returned. The child reads the same checkpoints folder (``LORA_V2T_HOME``)."""
    from lora_v2t.model.backbone import checkpoints_dir

    with tempfile.TemporaryDirectory(prefix="older-lora-v2t-") as tmp:
        code_dir = REPO if rev is None else extract(rev, Path(tmp) / "code")
        return run_in(code_dir, code, args, {"LORA_V2T_HOME": str(checkpoints_dir())})


def run_in(code_dir: Path, code: str, args: dict, env: dict | None = None) -> dict:
    """:func:`run_at` with the lora_v2t found in ``code_dir`` (a folder holding a ``lora_v2t/`` package)."""
    if not (Path(code_dir) / "lora_v2t" / "__init__.py").is_file():  # else the child would import this tree's
        raise SystemExit(
            f"{code_dir} holds no lora_v2t/ package: give the folder above it "
            "(python bench/older.py REV DIR writes DIR/lora_v2t/)"
        )
    with tempfile.TemporaryDirectory(prefix="older-lora-v2t-run-") as tmp:
        result = Path(tmp) / "result.json"
        args = args | {"result": str(result), "tmp": tmp}
        script = f"import json, sys\nARGS = json.loads(sys.argv[1])\n{code}"
        path = os.pathsep.join(
            [str(Path(code_dir).resolve())] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        )  # the code first; packages installed on PYTHONPATH (a GPU machine's wheels) stay
        child_env = os.environ | {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1"} | (env or {})
        subprocess.run([sys.executable, "-c", script, json.dumps(args)], cwd=tmp, env=child_env, check=True)
        return json.loads(result.read_text(encoding="utf-8"))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/older.py REV FOLDER   (writes REV's lora_v2t/ under FOLDER)")
    print(f"{extract(sys.argv[1], Path(sys.argv[2]))}: give this folder to --older")
