"""SIGTERM/SIGHUP → ``sys.exit``, for entry points that hold embedded servers (never installed by the library)."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

_installed = False


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    sys.exit(128 + signum)


def install_exit_signal_handlers() -> None:
    """Map SIGTERM/SIGHUP to ``sys.exit`` so atexit (and so ``release()``) runs when a holder is terminated.

    Python's default action for these signals skips atexit: a terminated last holder would leave the
    servers running until some later holder releases them. The library never installs handlers itself:
    signal handlers belong to the program, so a program's entry point calls this (from the main thread,
    before starting the event loop). Only signals still at their default action are touched; from
    another thread it is a no-op.
    """
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _exit_on_signal)
    _installed = True
