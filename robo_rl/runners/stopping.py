"""How a run stops other than by finishing: the errors a runner raises (NaN, a failed write, a signal) and the
SIGINT/SIGTERM handling that turns a signal into a checkpoint at the end of the current iteration.
"""

from __future__ import annotations

import errno
import logging
import signal
from typing import Any

log = logging.getLogger("robo_rl")


class NonFiniteError(FloatingPointError):
    """NaN/Inf in observations, rewards or losses; training stopped, last good checkpoint kept."""


class RunWriteError(RuntimeError):
    """A run file (checkpoint, metrics, summary) could not be written mid-run, e.g. on a full disk; training
    stopped, the checkpoints before it kept. The message says how to continue."""


class EnvError(RuntimeError):
    """The envs raised an error of their own mid-run (the task's code or its simulator, in a step or an evaluation);
    training stopped, the checkpoints before it kept. The message names the error and says how to continue; the
    error's traceback (``__cause__``) goes to train.log."""

    log_cause_traceback = True


def out_of_memory(exc: BaseException) -> str | None:
    """The allocator's one-line reason when ``exc`` is a failed allocation (numpy's MemoryError, torch's
    RuntimeError), else None."""
    text = str(exc).strip()
    if isinstance(exc, MemoryError):
        return text.splitlines()[0] if text else "an allocation failed"
    if "can't allocate memory" in text or "out of memory" in text.lower():
        at = text.find("you tried to allocate")
        return text[at:].split(".")[0] if at >= 0 else text.splitlines()[0]
    return None


def is_write_failure(exc: OSError) -> bool:
    """A file could not be written: no space or quota, a read-only or failing disk, access lost, a path too long."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM,
                         errno.ENAMETOOLONG)


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved. ``signum`` says which."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class Terminated(BaseException):
    """SIGTERM outside the training loop (while the run starts, or writes its summary); not an Exception, so
    that no broad handler on the way mistakes it for a failure."""


def raise_terminated(signum: int, _frame: Any) -> None:
    """A SIGTERM handler for the time around the loop (the loop's own handler saves a checkpoint instead). A repeat
    of a signal the run already stops for is ignored: it would cut short the summary and the resume command, and
    report a run that saved its checkpoint as stopped outside the loop."""
    if StopOnSignal.received is not None:
        return
    raise Terminated(signum)


class StopOnSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks between iterations (a second SIGINT aborts).

    ``StopOnSignal.received`` keeps the latest such signal of the process (``None`` until one comes; a caller may reset
    it): a run that gets one during its final evaluation or save ends complete, and a sweep must still stop there."""

    received: int | None = None

    def __init__(self, waiting: str = "saving a checkpoint after this iteration (Ctrl-C again to abort)") -> None:
        self.signum: int | None = None
        self.waiting = waiting  # what the process does before it stops, for the log line a signal gets
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = StopOnSignal.received = signum
        # (the abort hint only where it holds: a second SIGINT aborts, a SIGTERM is waited out like the first)
        waiting = self.waiting if signum == signal.SIGINT else self.waiting.replace(" (Ctrl-C again to abort)", "")
        log.info(f"received {signal.Signals(signum).name}: {waiting}")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()  # (exited twice, it would put back handlers replaced since)


