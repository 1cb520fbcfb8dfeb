"""A Stable-Baselines3 ``VecEnv`` view of any robo-rl batched env.

Lets SB3 (and anything built on its VecEnv API) train on robo-rl's batched simulators:

    from stable_baselines3 import PPO
    from envs import make_env
    from envs.sb3 import SB3VecEnv

    venv = SB3VecEnv(make_env("Hopper-v5", num_envs=16, backend="mujoco"))
    PPO("MlpPolicy", venv).learn(100_000)

SB3's conventions are kept: numpy in and out, ``dones = terminated | truncated``, the final
observation of a finished episode in ``infos[i]["terminal_observation"]``,
``infos[i]["TimeLimit.truncated"]`` for time limits, and Monitor-style ``infos[i]["episode"]``
(``r``, ``l``, ``t``) so SB3's logger reports episode returns. The task's own numeric info terms
(``info["task"]``, e.g. ``is_success``, which SB3 logs as ``rollout/success_rate``) are in every
``infos[i]``, from the ending step where an episode ended, as a DummyVecEnv hands them on.

A batched env is one object: ``set_attr`` and ``env_method`` act on all copies and refuse ``indices`` naming only
some; reset options (``set_options``) are refused, robo-rl's envs take none. ``render()`` tiles the copies' frames
when the env draws them (``make_env(..., render=True)`` on the gymnasium backend).
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

import gymnasium as gym
import numpy as np
import torch

from envs.base import BatchedEnv

try:
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv
except ImportError as exc:  # pragma: no cover - exercised only without the optional dependency
    raise ImportError("envs.sb3 needs stable-baselines3: pip install 'robo-rl[bench]' or pip install stable-baselines3") from exc


class SB3VecEnv(VecEnv):
    def __init__(self, env: BatchedEnv) -> None:
        space = env.observation_space  # its bounds as the task declares them (Pendulum's [-1, 1] cos and sin), in float32
        obs_space = space if space.dtype == np.float32 else gym.spaces.Box(
            space.low.astype(np.float32), space.high.astype(np.float32), space.shape, np.float32)
        self.env = env  # before VecEnv.__init__, which reads attributes through get_attr
        super().__init__(env.num_envs, obs_space, env.action_space)
        self._actions: torch.Tensor | None = None
        self._t0 = time.time()

    def reset(self) -> np.ndarray:
        if any(self._options):
            options, self._options = self._options, [{} for _ in range(self.num_envs)]
            raise ValueError(f"{self.env.task_id}: robo-rl's batched envs take no reset options, got {options[0]!r} "
                             "(set with set_options); set the task's keyword arguments when making the env instead")
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        obs = self.env.reset(seed=seed)  # env i gets seed + i, as SB3's seed() lists them
        self._reset_seeds()
        self._reset_options()
        return obs.detach().cpu().numpy()

    def set_options(self, options: list[dict] | dict | None = None) -> None:
        """Refused when it holds any option (robo-rl's envs take none), here rather than at the next reset."""
        given = options if isinstance(options, list) else [options]
        if any(given):
            raise ValueError(f"{self.env.task_id}: robo-rl's batched envs take no reset options, got {options!r}; set "
                             "the task's keyword arguments when making the env instead")
        super().set_options(options)

    def step_async(self, actions: np.ndarray) -> None:
        array = np.asarray(actions)
        expected = (self.num_envs, self.env.act_dim)
        if array.shape != expected:  # a reshape would scramble a transposed or flat batch into place
            raise ValueError(f"{self.env.task_id}: actions have shape {array.shape}, expected {expected} "
                             f"(num_envs={self.num_envs}, action dim={self.env.act_dim})")
        self._actions = array  # the env's step checks the values and dtype (complex and bool are refused)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async()")
        actions, self._actions = self._actions, None  # a refused step is not retried by the next step_wait()
        obs, reward, terminated, truncated, info = self.env.step(actions)
        obs_np = obs.detach().cpu().numpy()
        term, trunc = terminated.cpu().numpy(), truncated.cpu().numpy()
        dones = term | trunc
        task = info.get("task")
        if task:  # the task's own terms, as a DummyVecEnv passes each env's info on (is_success -> success rate)
            columns = {k: v.detach().cpu().numpy().tolist() for k, v in task.items() if v.shape == (self.num_envs,)}
            infos: list[dict[str, Any]] = [{k: c[i] for k, c in columns.items()} for i in range(self.num_envs)]
        else:
            infos = [{} for _ in range(self.num_envs)]
        if dones.any():
            final = info["final_obs"].detach().cpu().numpy()
            ep = info["episode"]
            returns, lengths = ep["return"].cpu().numpy(), ep["length"].cpu().numpy()
            elapsed = round(time.time() - self._t0, 6)
            for i in np.flatnonzero(dones):
                infos[i]["terminal_observation"] = final[i]
                infos[i]["TimeLimit.truncated"] = bool(trunc[i] and not term[i])
                infos[i]["episode"] = {"r": float(returns[i]), "l": int(lengths[i]), "t": elapsed}
        return obs_np, reward.detach().cpu().numpy(), dones, infos

    def close(self) -> None:
        self.env.close()

    # -- the rest of the VecEnv API: a batched env is one object, not N -------------------------------
    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self.env, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        self._refuse_some(f"set_attr({attr_name!r})", indices)
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
        self._refuse_some(f"env_method({method_name!r})", indices)
        result = getattr(self.env, method_name)(*args, **kwargs)
        return [result] * len(self._get_indices(indices))

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        # the view reports Monitor-style episode stats itself, so it counts as Monitor-wrapped
        from stable_baselines3.common.monitor import Monitor

        return [issubclass(Monitor, wrapper_class)] * len(self._get_indices(indices))

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            return [None] * self.num_envs
        return [np.asarray(self.env.render(i)) for i in range(self.num_envs)]

    def _refuse_some(self, call: str, indices: Any) -> None:
        """set_attr/env_method reach the one batched env, so they cannot act on some copies only."""
        if indices is not None and sorted(set(self._get_indices(indices))) != list(range(self.num_envs)):
            raise ValueError(f"{self.env.task_id}: {call} with indices={indices!r}: the batched env is one object for "
                             f"all {self.num_envs} copies, so it cannot act on some of them; pass indices=None")

    def _get_indices(self, indices: Any) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else indices
