"""Pytest setup shared by every test module."""

import pytest
import torch

import tests.helpers  # noqa: F401  (registers the test-only gymnasium tasks)
from robo_rl.perf import tune_malloc

tune_malloc()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
