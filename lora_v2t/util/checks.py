"""One-line checks of settings: a number in its range, a word among its choices."""

from __future__ import annotations

from .errors import V2TError


def check_range(
    key: str, value, low: float | None = None, high: float | None = None, *, above: bool = False, below: bool = False
) -> None:
    """Raise a one-line error naming ``key`` and its valid range unless ``low <= value <= high`` (``above`` /
    ``below``: strictly); NaN and infinities never pass."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    bad = not number or value != value or value in (float("inf"), float("-inf"))
    if not bad and low is not None:
        bad = value <= low if above else value < low
    if not bad and high is not None:
        bad = value >= high if below else value > high
    if bad:
        limits = ([f"{'>' if above else '>='} {_number(low)}"] if low is not None else []) + (
            [f"{'<' if below else '<='} {_number(high)}"] if high is not None else []
        )
        raise V2TError(f"{key} must be {' and '.join(limits)}, got {value!r}")


def _number(limit: float) -> str:
    return str(limit) if isinstance(limit, int) else f"{limit:g}"


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a one-line error unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise V2TError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
