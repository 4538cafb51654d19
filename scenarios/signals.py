"""Signals during a run: SIGTERM unwinds like Ctrl-C so every cleanup runs, and a signal's exception that
something caught or turned into another error on the way out still leaves as that exception.

`terminate_as_exception` wraps a run (scenarios.runner.run_scenario); `raise_if_signalled` is the tick loop's check;
`host_handles_signals` tells an agent's own sys.exit() (scenarios.agent.agent_exit) from a host application's handler.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

SIGNALLED: list[int] = []  # the signals terminate_as_exception's handler took during this run (the loop checks)
OUR_HANDLERS: list = []  # the handler terminate_as_exception installs while a run goes on (host_handles_signals)


def early_sigterm(signum, _frame):
    """The CLI's SIGTERM handler from its first moment until a run's own (`terminate_as_exception`) takes over: a
    container's PID 1 gets no default action for SIGTERM from the kernel, so a `docker stop` in the first second
    (before a run's handler) was dropped and the run went on to its end, exit 0 (a new user's finding)."""
    raise SystemExit(128 + signum)


def install_early_sigterm() -> None:
    """`early_sigterm` as SIGTERM's handler where it has its default action (the main thread only)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, early_sigterm)


def remove_early_sigterm() -> None:
    """SIGTERM's default action back where `install_early_sigterm` put `early_sigterm`."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is early_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def signal_exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)


def raise_if_signalled() -> None:
    """Leave the run with the first signal's exception if one was taken and caught on the way (once a tick)."""
    if SIGNALLED:
        raise signal_exception(SIGNALLED[0])


@contextmanager
def terminate_as_exception():
    """While running, SIGTERM unwinds like Ctrl-C (as SystemExit 143), so every cleanup runs; and a signal's exception
    (SystemExit 143, or Ctrl-C's KeyboardInterrupt) that something turned into another error, or caught, on the way
    out still leaves as that exception.

    Only in the main thread, and for each signal only while it has its default action (SIGTERM: SIG_DFL; SIGINT:
    Python's default_int_handler); a host application's own handler is left alone. A signal that lands inside an
    extension's call (numba's dispatcher loading a kernel from its cache) comes out of that call as a SystemError
    wrapping the handler's exception, which a caller may even catch: whatever unwinds, or returns, after such a
    signal leaves with the first one's exception, and the tick loop leaves with it at the next tick
    (`raise_if_signalled`). A run started with SIGINT ignored (by a non-interactive shell's `&`) keeps ignoring it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = SIGNALLED
    received.clear()

    def _raise(signum, _frame):
        received.append(signum)
        raise signal_exception(signum)

    OUR_HANDLERS[:] = [_raise]

    defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
    if signal.getsignal(signal.SIGTERM) is early_sigterm:  # (the CLI's, until now: put back after the run)
        defaults[signal.SIGTERM] = early_sigterm
    installed = [sig for sig, default in defaults.items() if signal.getsignal(sig) is default]
    for sig in installed:
        signal.signal(sig, _raise)
    try:
        yield
    except BaseException as err:
        if received:
            expected = signal_exception(received[0])
            if not (type(err) is type(expected) and getattr(err, "code", None) == getattr(expected, "code", None)):
                raise expected from err
        raise
    else:  # a handler's exception that something caught on the way (a tick delivered raw after it): still leave
        raise_if_signalled()
    finally:
        for sig in installed:
            signal.signal(sig, defaults[sig])
        received.clear()


def host_handles_signals() -> bool:
    """Has the host application its own SIGTERM or SIGINT handler in place (neither ours nor a default)?"""
    if threading.current_thread() is not threading.main_thread():
        return False  # Python runs signal handlers in the main thread only: a SystemExit here is the agent's
    ours = (signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler, None, early_sigterm, *OUR_HANDLERS)
    return any(signal.getsignal(sig) not in ours for sig in (signal.SIGTERM, signal.SIGINT))
