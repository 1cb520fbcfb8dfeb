"""Batched MuJoCo backend: the gymnasium v5 MuJoCo tasks on ``mujoco.batch``, bit-identical."""

from envs.mujoco.backend import MujocoBatchedEnv
from envs.mujoco.tasks import TASKS

__all__ = ["MujocoBatchedEnv", "TASKS"]
