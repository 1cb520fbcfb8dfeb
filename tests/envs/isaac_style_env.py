"""A small GPU-style environment written to the rsl_rl VecEnv conventions, for testing the adapter.

A 2-D point mass must reach a target: torch buffers on ``device``, resets inside ``step``, time-outs
in ``extras["time_outs"]``, a privileged "critic" observation group, and the policy observation and
the reward written in place into one buffer each, as GPU simulators do (legged_gym's ``rew_buf[:] = 0.``,
Isaac Lab's ``RewardManager.compute``). Leaving the arena ends an episode as a real
termination (and forfeits the rest of its reward). ``make(api=...)`` picks the convention:

* ``"rsl_rl"`` (rsl_rl >= 3, Isaac Lab today): observations are groups ``{"policy", "critic"}`` (a
  dict here), there is no ``reset()`` (the env resets itself when built), ``cfg`` is a dict;
* ``"vec_env"``: the same on rsl_rl's real ``VecEnv`` base class with TensorDict observations
  (needs rsl-rl-lib);
* ``"isaac_lab"``: ``"rsl_rl"`` laid out like Isaac Lab's RslRlVecEnvWrapper: no ``reset()``, the
  gymnasium env at ``.env`` (whose ``reset(seed=)`` restarts every episode), ``clip_actions``;
* ``"rsl_rl2"``: tensor observations, ``get_observations()`` / ``reset()`` -> ``(obs, extras)``,
  the critic group in ``extras["observations"]``;
* ``"legged_gym"``: tensors, ``reset() -> (obs, privileged_obs)``, ``get_privileged_observations()``,
  a 5-tuple ``step``, ``cfg.normalization.clip_actions``.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import gymnasium as gym
import torch


class PointReach:
    """The rsl_rl >= 3 convention (observation groups, no reset)."""

    _exclusive_alive = False  # exclusive=True: one live instance per process, as Isaac Lab enforces

    def __init__(self, num_envs: int = 64, device: str = "cpu", max_episode_length: int = 100, exclusive: bool = False) -> None:
        if exclusive:
            if PointReach._exclusive_alive:
                raise RuntimeError("Simulation context already exists. Cannot create a new one.")
            PointReach._exclusive_alive = True
        self.exclusive = exclusive
        self.num_envs, self.device = num_envs, torch.device(device)
        self.num_obs, self.num_privileged_obs, self.num_actions = 4, 6, 2
        self.max_episode_length = max_episode_length
        self.cfg = {"normalization": {"clip_actions": 1.0}}
        self.dt = 0.05
        self.generator = torch.Generator(device=self.device).manual_seed(0)
        self.pos = torch.zeros(num_envs, 2, device=self.device)
        self.vel = torch.zeros(num_envs, 2, device=self.device)
        self.target = torch.zeros(num_envs, 2, device=self.device)
        self.episode_length_buf = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.obs_buf = torch.zeros(num_envs, self.num_obs, device=self.device)  # rewritten in place each step
        self.rew_buf = torch.zeros(num_envs, device=self.device)  # so is this
        self.extras: dict = {}
        self._reset_idx(torch.arange(num_envs, device=self.device))

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def _rand(self, n: int, scale: float) -> torch.Tensor:
        return (torch.rand(n, 2, generator=self.generator, device=self.device) * 2 - 1) * scale

    def _reset_idx(self, ids: torch.Tensor) -> None:
        self.pos[ids] = self._rand(len(ids), 1.0)
        self.vel[ids] = 0.0
        self.target[ids] = self._rand(len(ids), 1.0)
        self.episode_length_buf[ids] = 0

    def _groups(self) -> dict[str, torch.Tensor]:
        self.obs_buf[:, :2] = self.target - self.pos
        self.obs_buf[:, 2:] = self.vel
        return {"policy": self.obs_buf, "critic": torch.cat([self.obs_buf, self.target], dim=1)}

    def get_observations(self):
        return self._groups()

    def step(self, actions: torch.Tensor):
        actions = actions.clamp(-1.0, 1.0)
        self.vel = 0.8 * self.vel + 0.2 * actions
        self.pos = self.pos + self.vel * self.dt * 10
        self.episode_length_buf += 1
        dist = (self.target - self.pos).norm(dim=1)
        self.rew_buf[:] = torch.exp(-2.0 * dist)  # in (0, 1]: reach the target and stay there
        out_of_bounds = self.pos.abs().max(dim=1).values > 2.0
        time_outs = self.episode_length_buf >= self.max_episode_length
        dones = out_of_bounds | time_outs
        self.extras = {"time_outs": time_outs, "log": {"/reach/mean_dist": dist.mean()}}
        ids = dones.nonzero().flatten()
        if len(ids):
            self._reset_idx(ids)
        return self._groups(), self.rew_buf, dones.long(), self.extras

    def close(self) -> None:
        if self.exclusive:
            PointReach._exclusive_alive = False


class _SimulatorSide(gym.Env):
    """The gymnasium env an Isaac Lab-style wrapper holds at ``.env``."""

    def __init__(self, wrapper: PointReach) -> None:
        self.wrapper = wrapper

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.wrapper.seed(seed)
        self.wrapper._reset_idx(torch.arange(self.wrapper.num_envs, device=self.wrapper.device))
        return self.wrapper._groups(), {}


class PointReachIsaacLab(PointReach):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cfg = SimpleNamespace(is_finite_horizon=False)
        self.clip_actions = 1.0
        self.env = _SimulatorSide(self)


class PointReachRslRl2(PointReach):
    def get_observations(self):
        groups = self._groups()
        return groups["policy"], {"observations": {"critic": groups["critic"]}}

    def reset(self):
        self._reset_idx(torch.arange(self.num_envs, device=self.device))
        return self.get_observations()

    def step(self, actions: torch.Tensor):
        groups, rewards, dones, extras = super().step(actions)
        extras["observations"] = {"critic": groups["critic"]}
        return groups["policy"], rewards, dones, extras


class PointReachLeggedGym(PointReach):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cfg = SimpleNamespace(normalization=SimpleNamespace(clip_actions=1.0))

    def get_observations(self):
        return self._groups()["policy"]

    def get_privileged_observations(self):
        return self._groups()["critic"]

    def reset(self):
        self._reset_idx(torch.arange(self.num_envs, device=self.device))
        return self.get_observations(), self.get_privileged_observations()

    def step(self, actions: torch.Tensor):
        groups, rewards, dones, extras = super().step(actions)
        return groups["policy"], groups["critic"], rewards, dones, extras


@functools.cache
def vec_env_class() -> type:
    """PointReach on rsl_rl's real ``VecEnv`` base class, with TensorDict observations (imports rsl_rl)."""
    from rsl_rl.env import VecEnv
    from tensordict import TensorDict

    class PointReachVecEnv(PointReach, VecEnv):
        def get_observations(self) -> TensorDict:
            return TensorDict(self._groups(), batch_size=[self.num_envs])

        def step(self, actions: torch.Tensor):
            groups, rewards, dones, extras = super().step(actions)
            return TensorDict(groups, batch_size=[self.num_envs]), rewards, dones, extras

    return PointReachVecEnv


APIS = {"rsl_rl": PointReach, "isaac_lab": PointReachIsaacLab, "rsl_rl2": PointReachRslRl2, "legged_gym": PointReachLeggedGym}


def make(num_envs: int = 64, device: str = "cpu", api: str = "rsl_rl", **kwargs) -> PointReach:
    cls = vec_env_class() if api == "vec_env" else APIS[api]
    return cls(num_envs=num_envs, device=device, **kwargs)
