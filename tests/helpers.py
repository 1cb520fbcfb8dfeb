"""Test helpers: composing configs like the CLI does, and a small custom gymnasium task."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal

import gymnasium as gym
import numpy as np


class NaNAfter(gym.Env):
    """A 2-D point task whose observation (or reward) turns NaN after ``after`` steps; ``where="final"``:
    the observation of that step is NaN and ends the episode (terminated), the next one starts clean;
    ``where="sigint"``: nothing turns NaN, the process gets a SIGINT (a Ctrl-C) at that step instead;
    ``where="reset"``: only the observation of the instance's first reset is NaN; ``where="raise"``: nothing turns
    NaN, its step raises a ValueError at that step instead (a task's own error)."""

    def __init__(self, after: int = 50, where: str = "obs") -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.after, self.where = after, where
        self.count = 0
        self.resets = 0
        self.state = np.zeros(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = self.np_random.uniform(-1, 1, 2)
        self.resets += 1
        if self.where == "reset" and self.resets == 1:
            return np.full(2, np.nan, np.float32), {}
        return self.state.astype(np.float32), {}

    def step(self, action):
        self.count += 1
        self.state = np.clip(self.state + 0.1 * float(action[0]), -5, 5)
        obs = self.state.astype(np.float32)
        reward = -float(np.abs(self.state).sum())
        if self.where == "raise" and self.count == self.after + 1:
            raise ValueError(f"encoder 3 returned garbage at step {self.count}")
        if self.where in ("sigint", "raise"):
            if self.count == self.after + 1:
                os.kill(os.getpid(), signal.SIGINT)
            return obs, reward, False, False, {}
        if self.where == "final" and self.count == self.after + 1:
            return np.full(2, np.nan, np.float32), reward, True, False, {}
        if self.count > self.after and self.where != "final":
            if self.where == "obs":
                obs = np.full(2, np.nan, np.float32)
            else:
                reward = float("nan")
        return obs, reward, False, False, {}


gym.register("robo_rl_test/NaNAfter-v0", entry_point=NaNAfter, max_episode_steps=100)


def compose(*overrides: str):
    from robo_rl.train import compose_config

    return compose_config(list(overrides))


# Small, fast settings for runs inside tests (each test adds what it needs).
FAST = (
    "log.progress_seconds=1000",
    "log.tensorboard=false",
    "log.plot=false",
)


def rewrite_consistently(checkpoint, name: str, data: bytes | str) -> None:
    """Replace one file of a checkpoint and make its manifest agree, as a tamperer (or a writer bug) would."""
    import hashlib
    import json

    data = data.encode() if isinstance(data, str) else data
    (checkpoint / name).write_bytes(data)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def check_reset_first_and_closed_named(env, extra_after_close=(), simulation=None) -> None:
    """The call-order rules every backend keeps (envs/base.py), on a fresh Hopper-v5 ``env`` of 2 copies: render() and
    state_dict() before the first reset() raise, and after close() every call but physics_params() (a read of the kept
    factors) raises the task-named RuntimeError; ``extra_after_close``: more calls to refuse after close.
    ``simulation(env)``: the object holding the simulations, which close() must free (nothing keeps it alive)."""
    import gc
    import weakref

    import pytest
    import torch

    for call in ("render", "state_dict"):
        with pytest.raises(RuntimeError, match=rf"Hopper-v5: {call}\(\) before the first reset\(\); call env.reset"):
            getattr(env, call)()
    env.reset(seed=0)
    snap, factors = env.state_dict(), env.physics_params()
    held = weakref.ref(simulation(env)) if simulation is not None else None
    env.close()
    gc.collect()
    assert held is None or held() is None, "close() left the simulations allocated"
    for call in (lambda: env.reset(seed=0), lambda: env.step(torch.zeros(2, 3)), env.state_dict,
                 lambda: env.load_state_dict(snap), lambda: env.set_physics_params({"body_mass_scale": 1.5}), env.render,
                 *extra_after_close):
        with pytest.raises(RuntimeError, match="Hopper-v5: this env was closed; make a new one"):
            call()
    assert all(torch.equal(v, factors[k]) for k, v in env.physics_params().items())
    env.close()


@contextlib.contextmanager
def robo_rl_records(level: int = logging.DEBUG):
    """The log records that reach the "robo_rl" logger's handlers (under robo-rl: the console and train.log), at
    ``level`` and above. (caplog reads the root logger's: it saw nothing once a train() had turned the robo_rl logger's
    propagation off, and each record twice once pytest had also put its capture handlers on that logger.)"""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("robo_rl")
    was = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(was)


def without_waiting_on(fifo, call, seconds: float = 5.0):
    """``call()``'s result, ``fifo`` being a named pipe the call must not read: a call that opens it for reading waits
    for a writer (the command hung); once the call has run ``seconds`` with the pipe open for reading, a writer opens
    and closes it, so the test fails instead of hanging with it (a call still running with no reader is slow, not
    waiting: it is waited for)."""
    import threading

    out: dict = {}

    def run():
        try:
            out["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            out["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    while worker.is_alive():
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: nothing has the pipe open for reading, so the call is slow, not waiting on it
            if exc.errno != errno.ENXIO:  # (an export took over 5 s on a loaded machine and failed the test here)
                raise
            worker.join(0.5)
            continue
        os.close(writer)  # the reader gets end-of-file
        worker.join(seconds)
        raise AssertionError(f"the call waited on the named pipe {fifo}")
    if "error" in out:
        raise out["error"]
    return out.get("value")
