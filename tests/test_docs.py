"""The docs cannot rot: every ``lora-v2t`` command in README.md, BENCHMARKS.md and docs/*.md parses with the real
argument parser, every relative link points at a file (and a heading) that exists, the README stays short, and the
README's quickstarts run on the shipped adapter (``slow``).

docs/benchmarks-history.md is history: its links are checked, its commands are kept as they were run then.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lora_v2t.cli import build_parser
from lora_v2t.config import load_config
from lora_v2t.util.errors import V2TError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
HISTORY = ROOT / "docs" / "benchmarks-history.md"
PAGES = [README, ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 160
SHELL_BLOCKS = ("", "bash", "sh", "shell", "console")
FENCE = re.compile(r"^[ \t]*```(\w*)[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "&"}
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*(?![\w.])")  # --num-beams, not --training.lr nor --multi_gpu
OTHER_TOOLS = re.compile(r"\b(accelerate|pip|pytest|bash|git|hf|python)\b|bench/")
COMMAND_LINE = re.compile(r"^    ([a-z][a-z-]*)(?:\s|$)", re.M)  # a command as `lora-v2t --help` lists it


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (where links live)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def logical_lines(block: str) -> list[str]:
    """The block's lines, with backslash continuations joined."""
    return block.replace("\\\n", " ").splitlines()


def cli_words(line: str) -> list[str] | None:
    """The arguments after ``lora-v2t`` (or ``-m lora_v2t.cli``) in a shell line, up to a shell operator; None when
    the line runs no lora-v2t command. A lora-v2t line the shell could not split is an error."""
    if "lora-v2t" not in line and "lora_v2t.cli" not in line:
        return None
    words = shlex.split(line, comments=True)
    for i, word in enumerate(words):
        if Path(word).name == "lora-v2t":
            rest = words[i + 1 :]
        elif word == "lora_v2t.cli" and i and words[i - 1] == "-m":
            rest = words[i + 1 :]
        else:
            continue
        stop = next((j for j, w in enumerate(rest) if w in SHELL_OPERATORS), len(rest))
        return rest[:stop]
    return None


def doc_commands(path: Path) -> list[tuple[str, list[str]]]:
    """Every lora-v2t command line in the shell code blocks of ``path``, with its arguments."""
    found = []
    for language, body in code_blocks(path.read_text(encoding="utf-8")):
        if language not in SHELL_BLOCKS:
            continue
        for line in logical_lines(body):
            argv = cli_words(line)
            if argv is not None:
                found.append((line.strip(), argv))
    return found


def cli_commands() -> set[str]:
    """The commands `lora-v2t --help` lists."""
    listing = build_parser().format_help().split("positional arguments:", 1)[1].split("\noptions:", 1)[0]
    return set(COMMAND_LINE.findall(listing))


COMMANDS = [(path, line, argv) for path in PAGES if path != HISTORY for line, argv in doc_commands(path)]


def parse_command(argv: list[str]) -> str | None:
    """Parse ``argv`` as `lora-v2t` does; return what is wrong with it, or None. Recipe overrides
    (``--section.key=value`` of train, embed and heldout) are checked against the recipe's keys and types."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            args, unknown = build_parser().parse_known_args(argv)
    except SystemExit as exc:
        return None if exc.code == 0 else errors.getvalue().strip().splitlines()[-1]  # --help exits 0
    if "recipe" not in vars(args):
        return f"unrecognized arguments: {' '.join(unknown)}" if unknown else None
    recipe = ROOT / args.recipe
    try:  # a recipe the docs write first (a run's recipe.yaml, one from git) is not here: check the keys alone
        load_config(recipe if recipe.is_file() else None, unknown)
    except V2TError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize(
    ("path", "line", "argv"),
    COMMANDS,
    ids=[f"{p.relative_to(ROOT)}:{' '.join(a[:1])}:{i}" for i, (p, _, a) in enumerate(COMMANDS)],
)
def test_every_command_in_the_docs_parses(path, line, argv):
    problem = parse_command(argv)
    assert problem is None, f"{path.relative_to(ROOT)}: `{line}`: {problem}"


def test_the_docs_hold_commands_of_every_kind():
    """The extraction finds the commands (so the test above is not vacuous), and every command of the CLI is
    shown running somewhere in the docs."""
    names = {argv[0] for _, _, argv in COMMANDS if argv}
    commands = cli_commands()
    assert {"generate", "invert", "train", "demo"} <= commands  # the listing is read right
    assert len(COMMANDS) >= 30
    assert commands - {"demo"} <= names, f"commands the docs never show: {sorted(commands - names)}"
    assert any(path == README for path, _, _ in COMMANDS)


def test_the_readme_lists_every_command():
    readme = README.read_text(encoding="utf-8")
    missing = [name for name in sorted(cli_commands()) if f"| `lora-v2t {name}` |" not in readme]
    assert not missing, f"README.md's table of commands lacks {missing}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--adapter", "A", "--text", "x", "--beams", "4"], "unrecognized arguments"),
        (["invert", "--adapter", "A", "--vectors", "v.npy", "--out", "o.jsonl", "--on-nan", "drop"], "invalid choice"),
        (["train", "recipes/offline_use_gemma270m.yaml", "--training.max_step=5"], "did you mean 'max_steps'"),
        (["train", "recipes/offline_use_gemma270m.yaml", "--training.batch_size=0"], "must be >= 1"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_a_command_whose_options_no_longer_exist_is_caught(argv, message):
    problem = parse_command(argv)
    assert problem is not None and message in problem


def help_options() -> set[str]:
    """Every option that `lora-v2t --help` and `lora-v2t COMMAND --help` name."""
    texts = [build_parser().format_help()]
    for command in sorted(cli_commands()):
        shown = io.StringIO()
        with contextlib.redirect_stdout(shown), pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        texts.append(shown.getvalue())
    return set(OPTION.findall("\n".join(texts)))


def prose_options(path: Path) -> set[str]:
    """The options written in the inline code of a page's prose (not those of other tools: accelerate, pip...)."""
    spans = re.findall(r"`([^`\n]+)`", FENCE.sub("", path.read_text(encoding="utf-8")))
    return {option for span in spans if not OTHER_TOOLS.search(span) for option in OPTION.findall(span)}


@pytest.mark.parametrize("path", [p for p in PAGES if p != HISTORY], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_option_the_prose_names_exists(path):
    unknown = prose_options(path) - help_options()
    assert not unknown, f"{path.relative_to(ROOT)} names options no command has: {sorted(unknown)}"


def test_commands_are_found_in_shell_blocks_only_and_cut_at_shell_operators(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Run `lora-v2t info X` (inline code is prose).\n\n"
        "```bash\nHF_HUB_OFFLINE=1 .venv/bin/lora-v2t info org/name --json | head  # a comment\n"
        'lora-v2t generate --adapter A \\\n    --text "Где лодка?"\n'
        "accelerate launch --num_processes 2 -m lora_v2t.cli train R.yaml\npython -c 'print(1)'\n```\n\n"
        "```python\nos.system('lora-v2t info X')\n```\n",
        encoding="utf-8",
    )
    assert [argv for _, argv in doc_commands(page)] == [
        ["info", "org/name", "--json"],
        ["generate", "--adapter", "A", "--text", "Где лодка?"],
        ["train", "R.yaml"],
    ]


# ---------------------------------------------------------------------- links
def slugs(text: str) -> set[str]:
    """The anchors a Markdown renderer such as GitHub's gives the headings of ``text``."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def broken_links(path: Path) -> list[str]:
    """The relative links of ``path`` whose file, or heading, does not exist."""
    text = path.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(prose(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target} (no file {resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in slugs(resolved.read_text(encoding="utf-8")):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    return broken


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_something_that_exists(path):
    assert not broken_links(path)


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Speed: on a GPU\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md) [ok](other.md#speed-on-a-gpu) [ok](#page) [web](https://x.org/y)\n"
        "[gone](missing.md) [no heading](other.md#speed) `[in code](missing2.md)`\n\n"
        "```\n[in a block](missing3.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        f"missing.md (no file {tmp_path / 'missing.md'})",
        "other.md#speed (no heading #speed in other.md)",
    ]


def test_the_readme_stays_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"


# ---------------------------------------------------------------------- the quickstarts, run
def readme_block(heading: str, language: str) -> str:
    """The first ``language`` code block in the README section under ``## heading``."""
    section = README.read_text(encoding="utf-8").split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return next(body for lang, body in code_blocks(section) if lang == language)


def run_in_a_fresh_folder(tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """Run ``argv`` from an empty folder that sees the repository's checkpoints/ (its relative paths then work as
    from the repository root), with this interpreter's scripts (python, lora-v2t) first on the PATH and this
    checkout's lora_v2t importable; offline."""
    (tmp_path / "checkpoints").symlink_to(ROOT / "checkpoints")
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_readme_command_line_quickstart_runs(tmp_path):
    block = readme_block("Quickstart: command line", "bash")
    done = run_in_a_fresh_folder(tmp_path, ["bash", "-euo", "pipefail", "-c", block])
    assert done.returncode == 0, done.stderr[-3000:]
    adapter = re.search(r"^A=(\S+)$", block, re.MULTILINE).group(1)  # the shipped adapter the block shows
    assert f"adapter      {adapter}  " in done.stdout and "hypothesizer" in done.stdout  # info
    for text in ("Вы сегодня проверяли почту? ==> ", "Где лодка? ==> "):  # generate
        assert any(line.startswith(text) and line[len(text) :].strip() for line in done.stdout.splitlines())
    rows = [json.loads(line) for line in (tmp_path / "texts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["index"] for row in rows] == [0, 1]  # invert: one row per vector, in order
    assert all(row["text"].strip() and -1 <= row["cosine"] <= 1 for row in rows)


@pytest.mark.slow
def test_the_readme_python_quickstart_runs(tmp_path):
    done = run_in_a_fresh_folder(tmp_path, [sys.executable, "-c", readme_block("Quickstart: Python", "python")])
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout.splitlines()
    assert len(printed) == 6
    assert "Reranked(text=" in printed[3]
    # the budget's corrector step loaded v8's corrector onto the same base, beside the two adapters
    assert printed[5].startswith("['default', 'default-corrector', 'first'] first ")
