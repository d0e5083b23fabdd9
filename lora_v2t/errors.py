"""The one exception type lora_v2t raises for bad input."""


class V2TError(ValueError):
    """A problem with what the user gave us, explained in one line that names the fix.

    The CLI prints it as ``error: <message>`` and exits with status 2, with no traceback.
    """
