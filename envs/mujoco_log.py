"""MuJoCo's warnings through Python logging, once per distinct message.

MuJoCo's default handler prints every warning to the console and appends it to ``MUJOCO_LOG.TXT`` in
the current directory. A training run repeats the same ones many times: MuJoCo 4 deprecates the
``settotalmass`` compiler attribute that gymnasium's own HalfCheetah asset uses, so every compile of
that model warned (71 lines in one short `env.backend=gymnasium` run: one per env copy built), and
each diverging simulation warns once per episode. The `robo-rl` command routes them here instead: the first
occurrence of each message goes to the ``robo_rl.mujoco`` logger (the console and train.log), repeats
at debug level, and nothing is written to the working directory. Divergence itself is still handled
by the envs (reset, ``info["diverged"]``, the ``rollout/diverged_resets`` count).
"""

from __future__ import annotations

import logging
import os
import select
import sys
import weakref
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator

log = logging.getLogger("robo_rl.mujoco")

# Messages about files users do not write (gymnasium's assets): debug level, not a warning.
NOT_ACTIONABLE = (
    "compiler attribute 'settotalmass' is deprecated",
)

counts: Counter[str] = Counter()  # every kind of message seen in this process (its simulated time left out)


def handle(message: str) -> None:
    kind = message.split(" Time = ")[0]  # a simulation warning ends with its simulated time
    counts[kind] += 1
    first = counts[kind] == 1
    level = logging.WARNING if first and not kind.startswith(NOT_ACTIONABLE) else logging.DEBUG
    log.log(level, "MuJoCo: %s%s", message, "" if first else f" (x{counts[kind]})")


def route_mujoco_warnings() -> Any:
    """Send MuJoCo's warnings to ``handle`` for this process (and processes forked from it), each kind counted afresh:
    train() calls this for each run, whose train.log then has the first of each kind (the counts of a -m sweep's
    earlier jobs left its later jobs' at debug level, in neither their train.log nor on the console).

    Returns the handler it replaced (None: MuJoCo's own), for ``routed_mujoco_warnings`` to put back."""
    import mujoco

    previous = mujoco.get_mju_user_warning()
    counts.clear()
    mujoco.set_mju_user_warning(handle)
    return previous


@contextmanager
def routed_mujoco_warnings() -> Iterator[None]:
    """``route_mujoco_warnings`` for a run called from Python (``robo_rl.train.train``), then the caller's handler
    again: a notebook's own MuJoCo simulations after a run went on logging through robo-rl, repeats of a kind at
    debug level (unseen), with no ``MUJOCO_LOG.TXT``."""
    import mujoco

    previous = route_mujoco_warnings()
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


class WorkerWarnings:
    """MuJoCo's warnings in the worker processes of an async env (``env.vectorization=async``), logged by the main
    process: logged in each worker (a forked copy of this module, its counts and the run's handlers), one warning came
    once per worker on the console and never in train.log (the worker's copy of the run's handlers kept it).

    The workers write each message to a pipe in one write under ``PIPE_BUF`` bytes (atomic: no lock that a killed
    worker could leave held, no message cut in two), never waiting (a full pipe drops the message); the main process
    reads it after each call to its workers (``drain``), through ``handle``: once per kind, repeats at debug level."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._rest = b""
        # the pipe closes with the env that made it, also one dropped without close(): 2 fds a dropped env kept for
        # good (gymnasium's own pipes close when their env is collected)
        self._close_pipe = weakref.finalize(self, _close_fds, self._read, self._write)

    def forward(self) -> None:
        """In a worker process: send its MuJoCo warnings to the main process, if that routed them to ``handle``."""
        mujoco = sys.modules.get("mujoco")  # (not imported: nothing routed, and nothing to forward)
        if mujoco is not None and mujoco.get_mju_user_warning() is handle:
            mujoco.set_mju_user_warning(self._send)

    def _send(self, message: str) -> None:
        try:
            os.write(self._write, message.encode("utf-8", "replace")[:getattr(select, "PIPE_BUF", 512) - 1] + b"\0")
        except OSError:  # the pipe is full (the main process reads it at its next step) or closed
            pass

    def drain(self) -> None:
        """In the main process: log what the workers sent so far."""
        if self._read < 0:
            return
        while True:
            try:
                chunk = os.read(self._read, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._rest += chunk
        *messages, self._rest = self._rest.split(b"\0")
        for message in messages:
            handle(message.decode("utf-8", "replace"))

    def close(self) -> None:
        self.drain()
        self._close_pipe()  # (once: a second call does nothing)
        self._read = self._write = -1


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
