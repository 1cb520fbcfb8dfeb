"""Any registered gymnasium task behind the batched-env contract.

Vectorized with gymnasium's own SyncVectorEnv (one process) or AsyncVectorEnv (worker
processes), in same-step autoreset mode so the final observation of an episode is handed back in
the step that ended it. Simulator state of MuJoCo and classic-control tasks can be saved and
restored exactly, so an interrupted run resumes bit-for-bit.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from envs.base import BatchedEnv, EpisodeTracker, StepResult, check_box_spaces, episode_to_torch


def check_task_id(task_id: str) -> gym.envs.registration.EnvSpec:
    """Look a gymnasium id up, failing with close matches when it does not exist."""
    try:
        return gym.spec(task_id)
    except gym.error.Error as exc:
        close = difflib.get_close_matches(task_id, list(gym.registry), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown gymnasium task id {task_id!r}{hint} ({exc})") from None


class _Snapshot(gym.Wrapper):
    """Outermost wrapper of each sub-env: exposes an exact copy of the simulator state.

    Reached through the vector env's get_attr/set_attr, so it works in worker processes too.
    Captures MuJoCo state (mjSTATE_INTEGRATION, which includes the solver warm start, so the
    continuation is bit-identical), the ``state`` array of classic-control tasks, the time-limit
    counter and the env's random generator. Other envs report None (not capturable).
    """

    @property
    def snapshot(self) -> dict[str, Any] | None:
        env = self.unwrapped
        snap: dict[str, Any] = {}
        data = getattr(env, "data", None)
        model = getattr(env, "model", None)
        if data is not None and model is not None and type(data).__name__ == "MjData":
            import mujoco

            spec = mujoco.mjtState.mjSTATE_INTEGRATION
            state = np.empty(mujoco.mj_stateSize(model, spec))
            mujoco.mj_getState(model, data, state, spec)
            snap["mujoco_state"] = state
        elif isinstance(getattr(env, "state", None), np.ndarray):
            snap["state"] = np.array(env.state, copy=True)
        else:
            return None
        if getattr(env, "_np_random", None) is not None:
            snap["np_random"] = env.np_random.bit_generator.state
        limit = self._time_limit()
        if limit is not None:
            snap["elapsed_steps"] = int(limit._elapsed_steps or 0)
        return snap

    @snapshot.setter
    def snapshot(self, snap: dict[str, Any]) -> None:
        env = self.unwrapped
        if "mujoco_state" in snap:
            import mujoco

            spec = mujoco.mjtState.mjSTATE_INTEGRATION
            mujoco.mj_setState(env.model, env.data, np.asarray(snap["mujoco_state"]), spec)
            mujoco.mj_forward(env.model, env.data)
        elif "state" in snap:
            env.state = np.array(snap["state"], copy=True)
        if "np_random" in snap:
            env.np_random.bit_generator.state = snap["np_random"]
        limit = self._time_limit()
        if limit is not None and "elapsed_steps" in snap:
            limit._elapsed_steps = snap["elapsed_steps"]

    def _time_limit(self) -> gym.wrappers.TimeLimit | None:
        env = self.env
        while isinstance(env, gym.Wrapper):
            if isinstance(env, gym.wrappers.TimeLimit):
                return env
            env = env.env
        return None


def _make_thunk(task_id: str, kwargs: dict[str, Any], max_episode_steps: int | None) -> Callable[[], gym.Env]:
    def thunk() -> gym.Env:
        return _Snapshot(gym.make(task_id, max_episode_steps=max_episode_steps, **kwargs))

    return thunk


class GymnasiumBatchedEnv(BatchedEnv):
    backend = "gymnasium"

    """``num_envs`` copies of a gymnasium task, vectorized in-process or in worker processes.

    Args:
        task_id: a registered gymnasium id, e.g. "Hopper-v5".
        num_envs: number of copies N.
        vectorization: "sync" (one process; best for cheap envs and N <= ~8) or "async"
            (N copies spread over worker processes; pays off when one env step costs more than
            the inter-process round trip).
        kwargs: keyword arguments for ``gymnasium.make`` (e.g. ``{"ctrl_cost_weight": 0.1}``).
        max_episode_steps: override the task's time limit.
        device: where the returned tensors live.
    """

    backend = "gymnasium"

    def __init__(
        self,
        task_id: str,
        num_envs: int = 1,
        vectorization: str = "sync",
        kwargs: dict[str, Any] | None = None,
        max_episode_steps: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        check_task_id(task_id)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if vectorization not in ("sync", "async"):
            raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
        kwargs = dict(kwargs or {})
        thunk = _make_thunk(task_id, kwargs, max_episode_steps)
        try:
            probe = gym.make(task_id, max_episode_steps=max_episode_steps, **kwargs)
        except TypeError as exc:  # unknown keyword argument for this task
            raise ValueError(f"{task_id}: bad env kwargs {kwargs}: {exc}") from None
        check_box_spaces(task_id, probe.observation_space, probe.action_space)
        probe.close()
        thunks = [thunk] * num_envs
        if vectorization == "sync":
            self._vec = SyncVectorEnv(thunks, autoreset_mode=AutoresetMode.SAME_STEP)
        else:
            self._vec = AsyncVectorEnv(thunks, autoreset_mode=AutoresetMode.SAME_STEP)
        self.task_id = task_id
        self.num_envs = num_envs
        self.vectorization = vectorization
        self.device = torch.device(device)
        self.observation_space = self._vec.single_observation_space
        self.action_space = self._vec.single_action_space
        self._np_act_dtype = self.action_space.dtype
        self._episodes = EpisodeTracker(num_envs)

    def reset(self, seed: int | None = None) -> torch.Tensor:
        obs, _ = self._vec.reset(seed=seed)
        self._episodes.reset()
        return self._to_tensor(obs)

    def step(self, actions: torch.Tensor) -> StepResult:
        actions = self.check_actions(actions)
        obs, reward, terminated, truncated, info = self._vec.step(
            actions.detach().cpu().numpy().astype(self._np_act_dtype, copy=False)
        )
        final_obs = np.array(obs, dtype=np.float32, copy=True)
        done = np.logical_or(terminated, truncated)
        if "_final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final_obs[i] = info["final_obs"][i]
        out_info = {
            "final_obs": self._to_tensor(final_obs),
            "episode": episode_to_torch(self._episodes.step(reward, done), self.device),
        }
        return StepResult(
            self._to_tensor(obs),
            torch.as_tensor(reward, dtype=torch.float32, device=self.device),
            torch.as_tensor(terminated, dtype=torch.bool, device=self.device),
            torch.as_tensor(truncated, dtype=torch.bool, device=self.device),
            out_info,
        )

    def state_dict(self) -> dict[str, Any] | None:
        snaps = list(self._vec.get_attr("snapshot"))
        if any(s is None for s in snaps):
            return None
        return {"envs": snaps, **self._episodes.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        snaps = state["envs"]
        if len(snaps) != self.num_envs:
            raise ValueError(f"saved env state holds {len(snaps)} envs, this env has {self.num_envs}")
        self._vec.set_attr("snapshot", list(snaps))
        self._episodes.load_state_dict(state)

    def close(self) -> None:
        self._vec.close()

    def _to_tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)
