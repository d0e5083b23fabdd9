"""Ctrl-C and SIGTERM during training: a stop that never cuts a weight update or a checkpoint short."""

from __future__ import annotations


class StopSignals:
    """Ctrl-C (SIGINT) and ``kill`` (SIGTERM) stop training as a ``KeyboardInterrupt``, so that a checkpoint is
    saved and ``--resume`` continues exactly (background jobs ignore SIGINT: SIGTERM is how to stop them).

    While ``holding()`` is true (the optimizer is updating the weights, or a checkpoint is being written) a
    signal is held and :meth:`deliver` raises it once that is over. :meth:`ignore` shuts both signals out while
    the stop's own checkpoint is written. Used as a context manager; it puts the previous handlers back.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, holding):
        self.holding, self.pending, self.previous = holding, False, {}

    def __enter__(self) -> StopSignals:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for name in self.SIGNALS:
                self.previous[name] = signal.signal(getattr(signal, name), self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        import signal

        for name, handler in self.previous.items():
            signal.signal(getattr(signal, name), handler)

    def _handle(self, signum, frame) -> None:
        if self.holding():
            self.pending = True
        else:
            raise KeyboardInterrupt

    def deliver(self) -> None:
        """Raise the stop that came while holding, if any."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def ignore(self) -> None:
        import signal

        for name in self.previous:
            signal.signal(getattr(signal, name), signal.SIG_IGN)
