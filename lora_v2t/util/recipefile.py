"""Reading a recipe file, and checking a recipe's values against the types its dataclasses declare.

:func:`lora_v2t.config.load_config` builds a :class:`~lora_v2t.config.RunConfig` with these: :func:`read_recipe`
gives the YAML's content (a file that is not UTF-8 text, or not YAML, is one line naming where), and
:func:`coerce` checks each value against its field's type hint (naming the key and the type it must have).
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Literal, get_args

from .errors import V2TError


def coerce(value, hint, where: str):
    """Check ``value`` against a field's type hint; ints are accepted for floats."""
    args = typing.get_args(hint)
    if hint is type(None) or value is None:
        if value is None and (hint is type(None) or type(None) in args):
            return None
        raise V2TError(f"{where} must be {_type_name(hint)}, got nothing (an empty value)")
    if type(None) in args:  # X | None with a value
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], where)
    origin = typing.get_origin(hint)
    if origin is Literal:
        return _choice(value, get_args(hint), where)
    if origin is list:
        if not isinstance(value, list):
            raise V2TError(f"{where} must be a list, got {value!r}")
        return [coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and value is False:  # YAML 1.1 reads an unquoted no (or off) as false: mixed_precision: no
        return "no"
    if (hint is int and isinstance(value, bool)) or not isinstance(value, hint):
        raise V2TError(f"{where} must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")
    return value


def _choice(value, choices: tuple, where: str):
    """A recipe's word for a choice: YAML 1.1 reads an unquoted no as false (mixed_precision: no); other words are
    checked by the dataclass, which names the choices."""
    if value is False and "no" in choices:
        return "no"
    if not isinstance(value, str):
        raise V2TError(f"{where} must be one of {', '.join(choices)}, got {value!r} ({type(value).__name__})")
    return value


def _type_name(hint) -> str:
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(sorted(known))}"


def read_recipe(path: Path):
    """A recipe file's YAML content; a file that is not UTF-8 text, or not YAML, is one line naming where."""
    import yaml

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise V2TError(
            f"recipe {path} is not UTF-8 text (byte {exc.start} is 0x{raw[exc.start]:02x}): a recipe is "
            "a YAML text file (see recipes/)"
        ) from exc
    try:
        return yaml.safe_load(text) or {}
    except yaml.reader.ReaderError as exc:  # a control character: a binary file
        raise V2TError(
            f"recipe {path} is not a text file: it holds the control character #x{exc.character:x} at "
            f"character {exc.position}; a recipe is a YAML text file (see recipes/)"
        ) from exc
    except yaml.YAMLError as exc:
        raise V2TError(f"recipe {path} is not valid YAML: {yaml_problem(exc)}{not_a_recipe(path)}") from exc


def not_a_recipe(path: Path) -> str:
    """Where a file that is no recipe, and not named like one (a corpus, say), goes instead."""
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        return ""
    return f"; a recipe is a YAML file of sections (see recipes/); a corpus goes in --data.train={path}"


def yaml_problem(exc) -> str:
    """One line for a YAML error: where (line and column, from 1) and what, with what it was parsing."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or problem is None:
        return str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and start is not None:
        where += f" ({context} from line {start.line + 1}, column {start.column + 1})"
    return where
