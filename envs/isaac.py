"""Isaac-style GPU environments (Isaac Gym / legged_gym, Isaac Lab) behind the batched-env contract.

These environments follow the rsl_rl ``VecEnv`` conventions: torch buffers on the device,
``num_envs`` / ``num_actions`` / ``device`` attributes, resets inside ``step``, time-outs reported in
``extras["time_outs"]``, and ``step`` returning ``(obs, rewards, dones, extras)`` (rsl_rl, Isaac Lab's
RslRlVecEnvWrapper) or ``(obs, privileged_obs, rewards, dones, extras)`` (legged_gym). Three
generations are understood:

* rsl_rl >= 3 (Isaac Lab today): ``get_observations()`` and ``step`` return a TensorDict of
  observation *groups* (``policy``, ``critic``, ...) and the ``VecEnv`` has no ``reset()``: the env
  resets itself when built. The policy observation is the ``actor`` group, else ``policy`` (rsl_rl's
  own default), or the groups named in ``obs_groups``, concatenated;
* rsl_rl 2: observations are a tensor, ``get_observations()`` / ``reset()`` return ``(obs, extras)``
  and the other groups ride in ``extras["observations"]`` (e.g. ``critic``);
* legged_gym (rsl_rl 1): tensors, ``reset() -> (obs, privileged_obs)``, a 5-tuple ``step``.

``IsaacAdapter`` maps them onto robo-rl's contract:

* ``terminated = dones & ~time_outs``, ``truncated = time_outs``;
* these environments do not return the observation a finished episode ended in, so
  ``info["final_obs"]`` holds the observation *before* the step for finished envs (flagged by
  ``info["final_obs_is_previous"] = True``); PPO bootstraps a time-out from it, the approximation
  rsl_rl's PPO makes (it adds gamma * V(s_t) to the reward of timed-out steps), and the off-policy
  runner leaves timed-out steps out of replay;
* ``info["observations"]`` holds every observation group (as a dict of tensors), ``info["log"]`` the
  env's ``extras["log"]`` (or legged_gym's ``extras["episode"]``);
* ``reset(seed)`` calls the env's ``reset()`` where it has one, else resets the gymnasium env an
  Isaac Lab-style wrapper holds at ``.env``; a bare rsl_rl >= 3 ``VecEnv`` cannot restart its
  episodes, so those running at such a reset finish uncounted (``info["episode"]`` never reports
  an episode it saw only part of);
* actions are clipped by the environment itself; the adapter exposes ``[-action_limit,
  action_limit]`` as the action space, from ``cfg.normalization.clip_actions`` (legged_gym),
  ``clip_actions`` (Isaac Lab's wrapper, from Isaac Lab 2.1) or the ``action_limit`` argument (``cfg`` may be
  a dict or an object, as ``VecEnv.cfg`` allows), which may not exceed a bound the env clips to itself;
* the rewards and observations returned are the adapter's own tensors: these simulators rewrite their
  reward and observation buffers in place every step (legged_gym's ``rew_buf``, Isaac Lab's
  ``RewardManager``), so a reward kept from one step (a recorded demonstration) would change at the next.
  ``info["observations"]`` holds the env's own group tensors, valid until the next step;
* tensors stay on the env's device, which must be the one robo-rl runs on (``device=``; rsl_rl's
  runners may differ from the env and move every tensor, robo-rl keeps both on one device): an env built
  elsewhere (a factory that ignores ``device=``) is refused with both devices named.

What was verified: envs subclassing the real ``rsl_rl.env.VecEnv`` of rsl-rl-lib 5.5.1 (TensorDict
observations, no ``reset``), and ``tests/envs/isaac_style_env.py``, a small environment written here
to the rsl_rl 2 and legged_gym conventions as read from rsl-rl-lib 2.3.3 and legged_gym's source,
including PPO training through it, and ``make_isaac_env``'s start-up against stand-ins for Isaac Lab's
modules. It has not been run against real Isaac Gym or Isaac Lab, which need an NVIDIA GPU and Isaac Sim.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs.base import BatchedEnv, MissingDependency, StepResult, same_device

# a child of the "robo_rl" logger (a name, not an import: envs does not import robo_rl): under robo-rl its warnings
# read "robo-rl: warning: ..." on the console and are in train.log; "envs.isaac" came bare, and not in the file
log = logging.getLogger("robo_rl.envs.isaac")

#: what an Isaac Lab task id needs (Isaac Lab >= 2: the isaaclab packages; 1.x's omni.isaac.lab is not supported)
ISAAC_LAB_PACKAGES = ("isaaclab", "isaaclab_tasks", "isaaclab_rl", "rsl_rl")

INSTALL_HINT = (
    "Isaac Lab is not installed here (Isaac Lab >= 2.0, which needs Isaac Sim and an NVIDIA GPU; see "
    "https://isaac-sim.github.io/IsaacLab for installation, including its rsl_rl extension: "
    "isaaclab_rl and rsl-rl-lib). With it installed, env.backend=isaac "
    "env.id=<an Isaac Lab task id, e.g. Isaac-Velocity-Flat-Anymal-C-v0> builds the task; any other "
    "rsl_rl-style environment can be wrapped with envs.isaac.IsaacAdapter(env) or named as "
    "env.id=<module>:<factory>."
)


def _unpack(value: Any) -> tuple[Any, dict[str, Any]]:
    """(observations, extra groups) of a get_observations()/reset() result of any convention."""
    if not isinstance(value, tuple):
        return value, {}
    second = value[1] if len(value) > 1 else None
    if isinstance(second, torch.Tensor):  # legged_gym's reset(): (obs, privileged_obs)
        return value[0], {"critic": second}
    if isinstance(second, Mapping):  # rsl_rl 2: (obs, extras)
        return value[0], dict(second.get("observations") or {})
    return value[0], {}


def _is_groups(value: Any) -> bool:
    """A TensorDict (rsl_rl >= 3) or a dict of observation groups, rather than one tensor."""
    return not isinstance(value, torch.Tensor) and hasattr(value, "keys")


class IsaacAdapter(BatchedEnv):
    backend = "isaac"
    # Isaac Lab raises "Simulation context already exists" on a second env in one process; Isaac Gym /
    # legged_gym scripts build one too. Treat every such env that way: sharing it is always safe.
    one_per_process = True

    def __init__(self, env: Any, action_limit: float | None = None, task_id: str | None = None,
                 obs_groups: Sequence[str] | None = None, device: str | torch.device | None = None) -> None:
        """``obs_groups``: the observation groups (rsl_rl >= 3) concatenated into the policy observation,
        as rsl_rl's ``obs_groups["actor"]``; by default the ``actor`` group, else ``policy``. ``device``: the
        device robo-rl runs on (default: the env's), which the env must be on."""
        for attr in ("num_envs", "num_actions", "device", "step", "get_observations"):
            if not hasattr(env, attr):
                raise TypeError(
                    f"{type(env).__name__} does not follow the rsl_rl VecEnv API (no {attr!r}): the isaac backend takes "
                    "rsl_rl-style envs (legged_gym, rsl_rl's VecEnv); wrap an Isaac Lab env in "
                    "isaaclab_rl.rsl_rl.RslRlVecEnvWrapper first. IsaacGymEnvs' VecTask (obs_dict['obs'], rl_games) is "
                    "not supported")
        self.env = env
        self.num_envs = int(env.num_envs)
        self.task_id = task_id or type(env).__name__
        self.device = torch.device(env.device)
        if device is not None and not same_device(self.device, device):
            raise ValueError(f"{self.task_id}: the env runs on {self.device}, but robo-rl was asked to run on "
                             f"{torch.device(device)} (device=); build the env on {torch.device(device)} (a factory "
                             f"must honour its device= argument) or set device={self.device}")
        own = _configured_clip(env)
        limit = action_limit if action_limit is not None else own
        if limit is None or not np.isfinite(limit) or limit <= 0:
            raise ValueError(f"{self.task_id}: the action bound is unknown (no clip_actions in the env or its cfg); set "
                             "env.kwargs.action_limit=<bound> (IsaacAdapter(env, action_limit=) in Python), which is "
                             "also passed to Isaac Lab's wrapper as its clip_actions")
        if own is not None and np.isfinite(own) and own > 0 and limit > own:
            raise ValueError(f"{self.task_id}: action_limit={limit:g} exceeds the bound the env clips actions to itself "
                             f"(clip_actions={own:g}): the policy's actions beyond it would be cut without its "
                             f"knowing; set env.kwargs.action_limit to at most {own:g}, or leave it unset")
        self.action_space = gym.spaces.Box(-float(limit), float(limit), (int(env.num_actions),), np.float32)
        raw, extra = _unpack(env.get_observations())
        self.obs_groups = self._resolve_groups(raw, obs_groups)
        obs = self._policy_obs(raw, extra)[0]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (int(obs.shape[1]),), np.float32)
        self.dt = float(getattr(env, "dt", 0.0) or getattr(getattr(env, "unwrapped", env), "step_dt", 0.0) or 0.0) or None
        inner = getattr(env, "env", None)
        # how reset() restarts the episodes: the env's own reset (rsl_rl <= 2, legged_gym), or the gymnasium env
        # an Isaac Lab-style wrapper keeps at .env (rsl_rl >= 3's VecEnv has no reset); else it cannot
        self._reset_via = "env" if hasattr(env, "reset") else "inner" if isinstance(inner, gym.Env) else None
        self.resets_episodes = self._reset_via is not None  # whether reset() starts new episodes
        if self._reset_via is None:
            log.warning(f"{self.task_id} has no reset() (rsl_rl >= 3 VecEnv): reset() cannot restart its running "
                        "episodes; those running at a reset finish uncounted")
        self._obs = obs
        self._ep_return = torch.zeros(self.num_envs, device=self.device)
        self._ep_length = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self._partial = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)  # began before our reset
        self._needs_reset = True  # the env starts its episodes when built, but the contract's first call is reset()

    def _resolve_groups(self, raw: Any, wanted: Sequence[str] | None) -> list[str] | None:
        if not _is_groups(raw):
            if wanted:
                raise ValueError(f"{self.task_id}: obs_groups={list(wanted)} given, but the env's observations are one "
                                 "tensor, not groups (rsl_rl >= 3)")
            return None
        available = list(raw.keys())
        if wanted:
            missing = [g for g in wanted if g not in available]
            if missing:
                raise ValueError(f"{self.task_id}: observation groups {missing} not found; the env has {available}")
            return list(wanted)
        for default in ("actor", "policy"):  # rsl_rl's own default for its actor's observations
            if default in available:
                return [default]
        raise ValueError(f"{self.task_id}: the observation groups {available} include neither 'actor' nor 'policy'; "
                         "name the policy's groups with env.kwargs.obs_groups=[...] (obs_groups= in Python)")

    def _policy_obs(self, raw: Any, extra: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The policy observation [N, obs_dim] (float32, owned: never the env's buffer) and all groups."""
        if self.obs_groups is None:
            parts, groups = [raw], extra
        else:
            groups = {k: raw[k] for k in raw.keys()}
            parts = [groups[g] for g in self.obs_groups]
        for name, part in zip(self.obs_groups or ["observation"], parts):
            if not isinstance(part, torch.Tensor) or part.dim() != 2 or part.shape[0] != self.num_envs:
                shape = tuple(part.shape) if hasattr(part, "shape") else type(part).__name__
                raise ValueError(f"{self.task_id}: {name!r} is {shape}, not a flat [num_envs, dim] tensor; robo-rl's "
                                 "policies take flat observations: choose flat groups with env.kwargs.obs_groups")
        obs = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        # a copy: GPU simulators write their observation buffers in place, and final_obs keeps this one a step
        return obs.to(device=self.device, dtype=torch.float32, copy=len(parts) == 1), groups

    def reset(self, seed: int | None = None) -> torch.Tensor:
        seed = self.check_seed(seed)
        if self._reset_via == "inner":
            self.env.env.reset(seed=seed)
        else:
            if seed is not None and hasattr(self.env, "seed"):
                self.env.seed(seed)
            if self._reset_via == "env":
                self.env.reset()
        if self._reset_via is None:  # episodes go on: the ones already under way would be reported in part
            length = getattr(self.env, "episode_length_buf", None)  # a VecEnv attribute: > 0 where one is under way
            if isinstance(length, torch.Tensor):
                self._partial = length.to(self.device) > 0
            else:
                self._partial.fill_(True)
        else:
            self._partial.zero_()
        self._obs = self._policy_obs(*_unpack(self.env.get_observations()))[0]
        self._ep_return.zero_()
        self._ep_length.zero_()
        self._needs_reset = False
        return self._obs.clone()

    def step(self, actions: torch.Tensor) -> StepResult:
        actions = self.check_actions(actions)
        out = self.env.step(actions)
        if len(out) == 5:  # legged_gym: obs, privileged_obs, rewards, dones, extras
            raw, privileged, rewards, dones, extras = out
            extras = dict(extras or {})
            extra = {"critic": privileged} if privileged is not None else {}
        else:
            raw, rewards, dones, extras = out
            extras = dict(extras or {})
            extra = dict(extras.get("observations") or {})  # rsl_rl 2 (rsl_rl >= 3: groups are in raw)
        obs, groups = self._policy_obs(raw, extra)
        dones = dones.to(torch.bool).reshape(-1)
        time_outs = extras.get("time_outs")
        time_outs = torch.zeros_like(dones) if time_outs is None else time_outs.to(torch.bool).reshape(-1) & dones
        # a copy: these simulators rewrite their reward buffer in place (legged_gym, Isaac Lab's RewardManager)
        rewards = rewards.to(device=self.device, dtype=torch.float32, copy=True).reshape(-1)
        final_obs = torch.where(dones[:, None], self._obs, obs)  # no terminal observation in these APIs
        self._ep_return += rewards
        self._ep_length += 1
        counted = dones & ~self._partial
        self._partial &= ~dones
        episode = {"return": torch.where(counted, self._ep_return, 0.0), "length": torch.where(counted, self._ep_length, 0),
                   "mask": counted}
        self._ep_return[dones] = 0.0
        self._ep_length[dones] = 0
        self._obs = obs
        info = {"final_obs": final_obs, "final_obs_is_previous": True, "episode": episode, "observations": groups,
                "log": extras.get("log", extras.get("episode", {}))}
        return StepResult(obs.clone(), rewards, dones & ~time_outs, time_outs, info)

    def close(self) -> None:
        super().close()
        if hasattr(self.env, "close"):
            self.env.close()


def _lookup(holder: Any, *path: str) -> Any:
    """holder.a.b or holder["a"]["b"] (a VecEnv's cfg is a dict or an object)."""
    for name in path:
        if holder is None:
            return None
        holder = holder.get(name) if isinstance(holder, Mapping) else getattr(holder, name, None)
    return holder


def _configured_clip(env: Any) -> float | None:
    cfg = getattr(env, "cfg", None)
    for value in (_lookup(cfg, "normalization", "clip_actions"), getattr(env, "clip_actions", None),
                  _lookup(cfg, "clip_actions")):
        if value is not None:
            return float(value)
    return None


def make_isaac_env(task_id: str, num_envs: int, device: str | torch.device, kwargs: dict[str, Any] | None = None) -> IsaacAdapter:
    """``module:factory`` (any rsl_rl-style env: factory(num_envs=, device=, **kwargs)) or an Isaac Lab task id.

    ``kwargs`` ``action_limit`` and ``obs_groups`` go to the adapter, the rest to the factory (or ``gym.make``)."""
    kwargs = dict(kwargs or {})
    action_limit = kwargs.pop("action_limit", None)
    obs_groups = kwargs.pop("obs_groups", None)
    if ":" in task_id:
        module, _, factory = task_id.partition(":")
        try:
            make = getattr(importlib.import_module(module), factory)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"env.id={task_id}: cannot import {factory!r} from {module!r} ({exc})") from None
        return IsaacAdapter(make(num_envs=num_envs, device=str(device), **kwargs), action_limit, task_id, obs_groups,
                            device)
    spec = gym.registry.get(task_id)
    if spec is not None and str(spec.entry_point).startswith(("gymnasium.", "envs.")):  # gymnasium's, robo-rl's own
        raise ValueError(f"env.id={task_id} is a gymnasium task, not an Isaac Lab one: run it with env.backend=auto "
                         "(or mujoco, gymnasium); env.backend=isaac takes an Isaac Lab task id (Isaac-...) or a "
                         "module:factory of an rsl_rl-style GPU env")
    # checked before the simulator app starts (a minute or more): every package the start-up below imports
    missing = [name for name in ISAAC_LAB_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependency(f"env.id={task_id} needs {', '.join(missing)}, not installed. {INSTALL_HINT}")
    from isaaclab.app import AppLauncher
    # Isaac Lab's documented start-up: launch the simulator app first, then import the task registry
    AppLauncher(headless=True, device=str(device))
    importlib.import_module("isaaclab_tasks")
    from isaaclab_rl.rsl_rl import RslRlVecEnvWrapper
    from isaaclab_tasks.utils import parse_env_cfg

    cfg = parse_env_cfg(task_id, device=str(device), num_envs=num_envs)
    # Isaac Lab's action spaces are unbounded: the wrapper clips to the bound we declare (its clip_actions, from Isaac
    # Lab 2.1; 2.0's wrapper takes only the env, and robo-rl's learners clip their actions to that bound themselves)
    takes_clip = "clip_actions" in inspect.signature(RslRlVecEnvWrapper).parameters
    wrapper_kwargs = {"clip_actions": float(action_limit)} if action_limit is not None and takes_clip else {}
    return IsaacAdapter(RslRlVecEnvWrapper(gym.make(task_id, cfg=cfg, **kwargs), **wrapper_kwargs), action_limit, task_id,
                        obs_groups, device)
