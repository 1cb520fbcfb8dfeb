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
(``r``, ``l``, ``t``) so SB3's logger reports episode returns.
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
        obs_space = gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)
        self.env = env  # before VecEnv.__init__, which reads attributes through get_attr
        super().__init__(env.num_envs, obs_space, env.action_space)
        self._actions: torch.Tensor | None = None
        self._t0 = time.time()

    def reset(self) -> np.ndarray:
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        obs = self.env.reset(seed=seed)  # env i gets seed + i, as SB3's seed() lists them
        self._reset_seeds()
        self._reset_options()
        return obs.detach().cpu().numpy()

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
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
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
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
        result = getattr(self.env, method_name)(*args, **kwargs)
        return [result] * len(self._get_indices(indices))

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        # the view reports Monitor-style episode stats itself, so it counts as Monitor-wrapped
        from stable_baselines3.common.monitor import Monitor

        return [issubclass(wrapper_class, Monitor)] * len(self._get_indices(indices))

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs

    def _get_indices(self, indices: Any) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else indices
