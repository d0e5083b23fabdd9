"""Text shown on a terminal: control characters escaped.

A sentence, a decoded text, a file name or a bundle's field may hold terminal escape sequences (``ESC [31m``
recolours the terminal, others move the cursor, retitle the window or rewrite what was printed before). The command
line prints such text through :func:`shown`, which writes every control character as ``\\xNN`` (the tab excepted);
what goes to files (JSONL, TSV, reports) is written exact and never passes through here.
"""

from __future__ import annotations

import json
import re

# C0 controls but the tab, DEL and the C1 controls (U+0080..U+009F: U+009B is a one-character ESC [)
CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
CONTROLS_BUT_NEWLINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
JSON_RAW = re.compile(r"[\x7f-\x9f]")  # what json.dumps(ensure_ascii=False) leaves raw among the controls


def shown(text: object, lines: bool = False) -> str:
    """``str(text)`` with its control characters written ``\\xNN`` (``\\n`` as ``\\n``, ``\\r`` as ``\\r``);
    ``lines``: keep the line breaks of a text of several lines."""
    pattern = CONTROLS_BUT_NEWLINES if lines else CONTROLS
    return pattern.sub(_escape, str(text))


def shown_json(record: object, indent: int | None = None) -> str:
    """JSON (UTF-8 text kept as it is) with no raw control character in it: json.dumps escapes the C0 ones; DEL and
    the C1 ones are written ``\\u00NN`` too. It decodes to the same values."""
    return JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(record, ensure_ascii=False, indent=indent))


def _escape(match: re.Match) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r"}.get(char, f"\\x{ord(char):02x}")
