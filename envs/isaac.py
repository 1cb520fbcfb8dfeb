"""Isaac-style GPU environments (Isaac Gym / legged_gym, Isaac Lab) behind the batched-env contract.

These environments follow the rsl_rl ``VecEnv`` conventions: torch buffers on the device,
``num_envs`` / ``num_actions`` / ``device`` attributes, resets inside ``step``, time-outs reported
in ``extras["time_outs"]``, observation groups in ``extras["observations"]`` (e.g. ``critic``), and
``step`` returning ``(obs, rewards, dones, extras)`` (rsl_rl, Isaac Lab's RslRlVecEnvWrapper) or
``(obs, privileged_obs, rewards, dones, extras)`` (legged_gym). ``IsaacAdapter`` maps them onto
robo-rl's contract:

* ``terminated = dones & ~time_outs``, ``truncated = time_outs``;
* these environments do not return the observation a finished episode ended in, so
  ``info["final_obs"]`` holds the observation *before* the step for finished envs (flagged by
  ``info["final_obs_is_previous"] = True``); bootstrapping a time-out from it is the same
  approximation rsl_rl's PPO makes (it adds gamma * V(s_t) to the reward of timed-out steps);
* actions are clipped by the environment itself; the adapter exposes ``[-action_limit,
  action_limit]`` as the action space, from ``cfg.normalization.clip_actions`` (legged_gym),
  ``clip_actions`` (Isaac Lab's wrapper) or the ``action_limit`` argument.

What was verified: the adapter against ``tests/envs/isaac_style_env.py``, a small environment
written here to the documented API (not a copy of theirs), including PPO training through it.
It has not been run against real Isaac Gym or Isaac Lab, which need an NVIDIA GPU and Isaac Sim.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs.base import BatchedEnv, MissingDependency, StepResult

INSTALL_HINT = (
    "Isaac Lab is not installed here (it needs Isaac Sim and an NVIDIA GPU; see "
    "https://isaac-sim.github.io/IsaacLab for installation). With it installed, env.backend=isaac "
    "env.id=<an Isaac Lab task id, e.g. Isaac-Velocity-Flat-Anymal-C-v0> builds the task; any other "
    "rsl_rl-style environment can be wrapped with envs.isaac.IsaacAdapter(env) or named as "
    "env.id=<module>:<factory>."
)


def _obs_of(value: Any) -> torch.Tensor:
    """The policy observation from get_observations()/reset() results of either convention."""
    if isinstance(value, tuple):
        value = value[0]
    if isinstance(value, dict) or hasattr(value, "keys"):  # TensorDict / dict of groups
        return value["policy"]
    return value


class IsaacAdapter(BatchedEnv):
    backend = "isaac"
    # Isaac Lab raises "Simulation context already exists" on a second env in one process; Isaac Gym /
    # legged_gym scripts build one too. Treat every such env that way: sharing it is always safe.
    one_per_process = True

    def __init__(self, env: Any, action_limit: float | None = None, task_id: str | None = None) -> None:
        for attr in ("num_envs", "num_actions", "device", "step", "reset"):
            if not hasattr(env, attr):
                raise TypeError(f"{type(env).__name__} does not follow the rsl_rl VecEnv API (no {attr!r})")
        self.env = env
        self.num_envs = int(env.num_envs)
        self.device = torch.device(env.device)
        self.task_id = task_id or type(env).__name__
        limit = action_limit if action_limit is not None else _configured_clip(env)
        if limit is None or not np.isfinite(limit) or limit <= 0:
            raise ValueError(f"{self.task_id}: the action bound is unknown; pass action_limit= (the env's clip_actions)")
        act_dim = int(env.num_actions)
        self.action_space = gym.spaces.Box(-float(limit), float(limit), (act_dim,), np.float32)
        obs = _obs_of(env.get_observations()) if hasattr(env, "get_observations") else _obs_of(env.reset())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (int(obs.shape[1]),), np.float32)
        self.dt = float(getattr(env, "dt", 0.0) or getattr(getattr(env, "unwrapped", env), "step_dt", 0.0) or 0.0) or None
        self._obs = obs.float()
        self._ep_return = torch.zeros(self.num_envs, device=self.device)
        self._ep_length = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)

    def reset(self, seed: int | None = None) -> torch.Tensor:
        if seed is not None and hasattr(self.env, "seed"):
            self.env.seed(seed)
        self._obs = _obs_of(self.env.reset()).float()
        self._ep_return.zero_()
        self._ep_length.zero_()
        return self._obs.clone()

    def step(self, actions: torch.Tensor) -> StepResult:
        actions = self.check_actions(actions)
        out = self.env.step(actions)
        if len(out) == 5:  # legged_gym: obs, privileged_obs, rewards, dones, extras
            obs, privileged, rewards, dones, extras = out
            extras = dict(extras or {})
            extras.setdefault("observations", {"critic": privileged} if privileged is not None else {})
        else:
            obs, rewards, dones, extras = out
            extras = dict(extras or {})
        obs = _obs_of(obs).float()
        dones = dones.to(torch.bool).reshape(-1)
        time_outs = extras.get("time_outs")
        time_outs = torch.zeros_like(dones) if time_outs is None else time_outs.to(torch.bool).reshape(-1) & dones
        rewards = rewards.float().reshape(-1)
        final_obs = torch.where(dones[:, None], self._obs, obs)  # no terminal observation in these APIs
        self._ep_return += rewards
        self._ep_length += 1
        episode = {"return": torch.where(dones, self._ep_return, 0.0), "length": torch.where(dones, self._ep_length, 0),
                   "mask": dones.clone()}
        self._ep_return[dones] = 0.0
        self._ep_length[dones] = 0
        self._obs = obs
        info = {"final_obs": final_obs, "final_obs_is_previous": True, "episode": episode,
                "observations": extras.get("observations", {}), "log": extras.get("log", extras.get("episode", {}))}
        return StepResult(obs.clone(), rewards, dones & ~time_outs, time_outs, info)

    def close(self) -> None:
        if hasattr(self.env, "close"):
            self.env.close()


def _configured_clip(env: Any) -> float | None:
    cfg = getattr(env, "cfg", None)
    for holder, name in ((getattr(cfg, "normalization", None), "clip_actions"), (env, "clip_actions"), (cfg, "clip_actions")):
        value = getattr(holder, name, None) if holder is not None and not isinstance(holder, dict) else (
            holder.get(name) if isinstance(holder, dict) else None)
        if value is not None:
            return float(value)
    return None


def make_isaac_env(task_id: str, num_envs: int, device: str | torch.device, kwargs: dict[str, Any] | None = None) -> IsaacAdapter:
    """``module:factory`` (any rsl_rl-style env: factory(num_envs=, device=, **kwargs)) or an Isaac Lab task id."""
    kwargs = dict(kwargs or {})
    action_limit = kwargs.pop("action_limit", None)
    if ":" in task_id:
        module, _, factory = task_id.partition(":")
        try:
            make = getattr(importlib.import_module(module), factory)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"env.id={task_id}: cannot import {factory!r} from {module!r} ({exc})") from None
        return IsaacAdapter(make(num_envs=num_envs, device=str(device), **kwargs), action_limit, task_id)
    try:
        from isaaclab.app import AppLauncher
    except ImportError:
        raise MissingDependency(INSTALL_HINT) from None
    # Isaac Lab's documented start-up: launch the simulator app first, then import the task registry
    AppLauncher(headless=True, device=str(device))
    importlib.import_module("isaaclab_tasks")
    from isaaclab_rl.rsl_rl import RslRlVecEnvWrapper
    from isaaclab_tasks.utils import parse_env_cfg

    cfg = parse_env_cfg(task_id, device=str(device), num_envs=num_envs)
    return IsaacAdapter(RslRlVecEnvWrapper(gym.make(task_id, cfg=cfg, **kwargs)), action_limit, task_id)
