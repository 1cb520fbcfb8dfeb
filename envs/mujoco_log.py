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
from collections import Counter

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


def route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings to ``handle`` for this process (and processes forked from it)."""
    import mujoco

    mujoco.set_mju_user_warning(handle)
