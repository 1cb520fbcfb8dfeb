"""Pytest setup shared by every test module."""

import pytest
import torch

import envs  # noqa: F401  (first: it picks headless EGL before any test module imports MuJoCo, e.g. via mujoco_warp)
import tests.helpers  # noqa: F401  (registers the test-only gymnasium tasks)
from robo_rl.perf import tune_malloc

tune_malloc()
# Test networks are small: one thread is as fast, and it cannot stall on a core another process holds
# (two OpenMP threads on a busy 2-core machine can wait milliseconds per parallel region).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _no_signal_from_an_earlier_test():
    # StopOnSignal.received keeps the process's latest SIGINT/SIGTERM (a sweep reads it after each job). A test that
    # signals a run in this process left it set, and a later sweep test whose jobs were stubbed out (no run_training,
    # which resets it) read the stale signal as its own: "stopped in job 1 of 2", exit 130/143, in whichever xdist
    # worker ran the two in that order
    from robo_rl.runners.stopping import StopOnSignal

    StopOnSignal.received = None
    yield


@pytest.fixture(autouse=True)
def _robo_rl_logger_as_it_was():
    # train() (and the CLI) add robo-rl's console handler and stop the robo_rl logger propagating, for the rest of the
    # process: a later test reading robo-rl's warnings through caplog (the root logger) saw none in whichever xdist
    # worker, or serial order, ran a training test before it. Each test starts with the logger as it was before it
    import logging

    logger = logging.getLogger("robo_rl")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    logger.handlers[:] = handlers
    logger.propagate = propagate
    logger.setLevel(level)


@pytest.fixture
def robo_rl_to_caplog(monkeypatch):
    """For a test that reads a run's warnings through caplog: robo-rl's console handler is in place (train() adds it
    only when it is missing, and then stops the robo_rl logger propagating to caplog's root handler), and the logger
    propagates for this test (the autouse fixture above puts it back)."""
    import logging

    from robo_rl.metrics import console_handler

    console_handler()
    monkeypatch.setattr(logging.getLogger("robo_rl"), "propagate", True)
