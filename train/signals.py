"""Stopping cleanly on SIGINT / SIGTERM: a signal becomes a request that the step loop
reads between steps (a Python bool, no device sync), and the run saves where it is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Sequence

from train.config import ConfigError


class StopRequest:
    """Set by SIGINT / SIGTERM, read by the step loop between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return "a stop request" if self.signal is None else signal.Signals(self.signal).name


@contextlib.contextmanager
def stop_on_signals(
    stop: StopRequest | None = None, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)
) -> Iterator[StopRequest]:
    """While inside, SIGINT and SIGTERM only set ``stop.signal``; the previous handlers come
    back on leaving. A second signal raises :class:`KeyboardInterrupt` at once (for a run
    that does not get to its next step), except in the middle of a checkpoint write: there
    :func:`save_atomic` holds signals back until the file is complete (see
    :func:`train.atomic.deferred_signals`), so the interrupt comes right after, with a valid
    checkpoint on disk. Outside the main thread, where Python cannot install handlers,
    signals are left alone and ``stop`` is never set by them.
    """
    stop = StopRequest() if stop is None else stop
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.signal = signum

    previous = {number: signal.signal(number, handler) for number in signals}
    try:
        yield stop
    finally:
        for number, old in previous.items():
            # None: a handler installed outside Python, which cannot be put back; the
            # default action is the closest.
            signal.signal(number, signal.SIG_DFL if old is None else old)


def watch_signals(
    stop: StopRequest | None, saving: bool
) -> contextlib.AbstractContextManager[StopRequest]:
    """SIGINT and SIGTERM become a stop request when someone watches for it (``stop``) or
    there is a checkpoint to save; otherwise they keep their usual effect."""
    if stop is None and not saving:
        return contextlib.nullcontext(StopRequest())
    return stop_on_signals(stop)


#: Test hook: ``EPOCH:STEP:SIGNAL`` (e.g. ``2:2:SIGTERM``) makes the trainer send itself
#: that signal right after that step of that epoch, so that a test of stopping mid-epoch
#: knows where the stop lands instead of racing the machine's speed with a sleep. The
#: signal then takes the same path as one from outside (handler, stop request, save).
SELF_SIGNAL_ENV = "RESNET9_SELF_SIGNAL_AT"


def self_signal_from_environment() -> tuple[int, int, int] | None:
    """``(epoch, step, signal number)`` from :data:`SELF_SIGNAL_ENV`, or None when unset.
    Raises :class:`ConfigError` for a value that does not parse."""
    text = os.environ.get(SELF_SIGNAL_ENV)
    if not text:
        return None
    try:
        epoch, step, name = text.split(":")
        return int(epoch), int(step), int(signal.Signals[name])
    except (ValueError, KeyError):
        raise ConfigError(
            f"{SELF_SIGNAL_ENV}={text!r}: expected EPOCH:STEP:SIGNAL, e.g. 2:2:SIGTERM"
        ) from None
