"""The package's layers: imports run down the floors (util, config, model, bundle, tasks, train, then demo and
cli), except that the model saves and loads its own bundles (model -> bundle), as peft's PeftModel does."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lora_v2t"
FLOORS = {
    "util": 0,
    "config": 1,
    "model": 2,
    "bundle": 3,
    "tasks": 4,
    "train": 5,
    "demo": 6,
    "cli": 6,
    "__init__": 7,
    "__main__": 7,
}
ALLOWED_UPWARD = {("model", "bundle")}


def modules():
    return sorted(PACKAGE.rglob("*.py"))


def relative_imports(path: Path, root: Path):
    """(line, the imported module's parts within the package at ``root``) for each relative import in ``path``."""
    package = list(path.relative_to(root).parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            if target:
                yield node.lineno, target


def floor(parts) -> int:
    return FLOORS[parts[0]]


def upward_imports(path: Path, root: Path = PACKAGE) -> list[str]:
    here = path.relative_to(root).with_suffix("").parts
    found = []
    for line, target in relative_imports(path, root):
        if floor(target) > floor(here) and (here[0], target[0]) not in ALLOWED_UPWARD:
            found.append(f"{'/'.join(here)}.py:{line} imports {'.'.join(target)}")
    return found


def test_every_module_sits_on_a_known_floor():
    unknown = [
        str(p.relative_to(PACKAGE))
        for p in modules()
        if p.relative_to(PACKAGE).parts[0].removesuffix(".py") not in FLOORS
    ]
    assert not unknown, f"modules outside the layers of tests/test_layers.py: {unknown}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_down_the_floors(path):
    assert not upward_imports(path)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check itself can fail: a util module importing the model, or a package's __init__ importing the
    trainer, is caught; the model importing a bundle module is the one allowed exception."""
    for name, source in {
        "util/bad.py": "from ..model.vector2text import Vector2Text\n",
        "bundle/__init__.py": "from ..train import trainer\n",
        "model/ok.py": "from ..bundle.adapter import save_adapter\n",
    }.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(source)
    assert upward_imports(tmp_path / "util" / "bad.py", tmp_path) == ["util/bad.py:1 imports model.vector2text"]
    assert upward_imports(tmp_path / "bundle" / "__init__.py", tmp_path) == ["bundle/__init__.py:1 imports train"]
    assert upward_imports(tmp_path / "model" / "ok.py", tmp_path) == []


# one concept per module: a longer one is split by what it does
MAX_LINES = 500


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_the_line_bound(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines: split it by what it does"
