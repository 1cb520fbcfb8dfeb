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
