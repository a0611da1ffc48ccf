"""A graceful stop on Ctrl-C or SIGTERM: a long loop finishes its current step, saves a
checkpoint and ends, so an interruption (or a cluster scheduler's preemption) loses no work."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signal_number: int | None) -> int:
    """The shell's code for death by the signal (130 for SIGINT, 143 for SIGTERM); 0 for None."""
    return 128 + signal_number if signal_number is not None else 0


class StopRequests:
    """`with StopRequests("iteration") as stop:` the first SIGINT or SIGTERM sets `stop.signal`,
    which the loop checks between steps; a second Ctrl-C raises KeyboardInterrupt at once.

    Repeated SIGTERMs only repeat the request (a launcher such as torchrun may forward one after
    the terminal's SIGINT). Off the main thread, where Python cannot handle signals, it does nothing."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.getsignal(number)
                signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = number
            name = signal.Signals(number).name
            again = "; Ctrl-C again stops at once, losing this " + self.unit if number == signal.SIGINT else ""
            print(f"\n{name}: stopping after this {self.unit} with a checkpoint{again}", file=sys.stderr, flush=True)
            # A second Ctrl-C goes to the handler from before (Python's: KeyboardInterrupt).
            previous = self._previous.get(signal.SIGINT)
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
