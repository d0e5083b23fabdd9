"""The one exception type lora_v2t raises for bad input."""


class V2TError(ValueError):
    """A problem with what the user gave us, explained in one line that names the fix.

    The CLI prints it as ``error: <message>`` and exits with status 2, with no traceback.
    """


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type's name when it says
    nothing: what a one-line error quotes of a library's error."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
