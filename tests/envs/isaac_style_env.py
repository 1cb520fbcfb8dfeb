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
* ``"isaac_lab"``: ``"rsl_rl"`` laid out like Isaac Lab's RslRlVecEnvWrapper (isaaclab_rl/rsl_rl/
  vecenv_wrapper.py, Isaac Lab 2.3): no ``reset()`` and no ``dt``, the gymnasium env at ``.env`` (whose
  ``reset(seed=)`` restarts every episode) and at ``.unwrapped`` (with ``step_dt`` and ``cfg``),
  ``clip_actions``, and ``extras["time_outs"]`` only when ``cfg.is_finite_horizon`` is false;
* ``"rsl_rl2"``: tensor observations, ``get_observations()`` / ``reset()`` -> ``(obs, extras)``,
  the critic group in ``extras["observations"]``;
* ``"legged_gym"``: as legged_gym's BaseTask / LeggedRobot (legged_gym/envs/base/): tensors,
  ``reset()`` resets every env and takes a zero-action ``step`` -> ``(obs, privileged_obs)``,
  ``get_privileged_observations()``, a 5-tuple ``step`` returning the boolean ``reset_buf``,
  ``cfg.normalization.clip_actions``, no ``seed()``, a time-out once ``episode_length_buf >
  max_episode_length``, and ``extras["time_outs"]`` / ``extras["episode"]`` written only on steps
  where some env resets (``reset_idx`` returns early otherwise), so ``time_outs`` is stale on the others.
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
        self.dt = self._period = 0.05  # the control period (legged_gym's dt; Isaac Lab's unwrapped.step_dt)
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

    def _timed_out(self) -> torch.Tensor:
        return self.episode_length_buf >= self.max_episode_length

    def step(self, actions: torch.Tensor):
        actions = actions.clamp(-1.0, 1.0)
        self.vel = 0.8 * self.vel + 0.2 * actions
        self.pos = self.pos + self.vel * self._period * 10
        self.episode_length_buf += 1
        dist = (self.target - self.pos).norm(dim=1)
        self.rew_buf[:] = torch.exp(-2.0 * dist)  # in (0, 1]: reach the target and stay there
        out_of_bounds = self.pos.abs().max(dim=1).values > 2.0
        time_outs = self._timed_out()
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
    """The gymnasium env an Isaac Lab-style wrapper holds at ``.env`` (and ``.unwrapped``): a ManagerBasedRLEnv's
    ``reset(seed=)`` seeds and resets every env, ``step_dt`` is the control period, ``cfg`` the task's config."""

    def __init__(self, wrapper: PointReach, finite_horizon: bool) -> None:
        self.wrapper = wrapper
        self.step_dt = 0.05
        self.cfg = SimpleNamespace(is_finite_horizon=finite_horizon)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.wrapper.seed(seed)
        self.wrapper._reset_idx(torch.arange(self.wrapper.num_envs, device=self.wrapper.device))
        return self.wrapper._groups(), {}


class PointReachIsaacLab(PointReach):
    def __init__(self, *args, clip_actions: float | None = 1.0, finite_horizon: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        del self.dt  # the wrapper has none: the period is unwrapped.step_dt
        self.clip_actions = clip_actions
        self.env = _SimulatorSide(self, finite_horizon)

    @property
    def unwrapped(self) -> _SimulatorSide:
        return self.env

    @property
    def cfg(self):
        return self.unwrapped.cfg

    @cfg.setter
    def cfg(self, value) -> None:  # PointReach.__init__ sets its own; the wrapper's is the env's
        pass

    def step(self, actions: torch.Tensor):
        if self.clip_actions is not None:
            actions = torch.clamp(actions, -self.clip_actions, self.clip_actions)
        groups, rewards, dones, extras = super().step(actions)
        if self.cfg.is_finite_horizon:  # the wrapper adds time-outs for infinite-horizon tasks only
            del extras["time_outs"]
        return groups, rewards, dones, extras


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
        self._extras: dict = {}  # LeggedRobot keeps one extras dict and writes it in reset_idx only
        self.reset_buf = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)

    @property
    def seed(self):
        raise AttributeError("legged_gym's tasks have no seed(): they are seeded at construction")

    def _timed_out(self) -> torch.Tensor:
        return self.episode_length_buf > self.max_episode_length  # LeggedRobot.check_termination

    def get_observations(self):
        return self._groups()["policy"]

    def get_privileged_observations(self):
        return self._groups()["critic"]

    def reset(self):  # BaseTask.reset: reset every env, then a zero-action step
        self._reset_idx(torch.arange(self.num_envs, device=self.device))
        obs, privileged, _, _, _ = self.step(torch.zeros(self.num_envs, self.num_actions, device=self.device))
        return obs, privileged

    def step(self, actions: torch.Tensor):
        groups, rewards, dones, extras = super().step(actions)
        if dones.any():  # reset_idx returns early when no env resets: the last time_outs and episode stay
            self._extras["time_outs"], self._extras["episode"] = extras["time_outs"], extras["log"]
        self.extras, self.reset_buf = self._extras, dones.bool()
        return groups["policy"], groups["critic"], rewards, self.reset_buf, self.extras


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


# -- a stand-in for an installed Isaac Lab, to run make_isaac_env's documented start-up (AppLauncher, the task
# registry, parse_env_cfg, gym.make, RslRlVecEnvWrapper) without Isaac Sim ------------------------------------------

FAKE_TASK = "Isaac-PointReach-Fake-v0"


class _LabEnv(gym.Env):
    """PointReach as an Isaac Lab ManagerBasedRLEnv: ``step`` -> ``(obs_dict, reward, terminated, truncated, extras)``,
    ``reset(seed=)`` (all envs), ``seed()``, ``step_dt``, unbounded actions (the tasks are registered with
    ``disable_env_checker=True``, as Isaac Lab's are)."""

    def __init__(self, cfg, render_mode=None) -> None:
        self.cfg, self.render_mode = cfg, render_mode
        self.sim = PointReach(num_envs=cfg.scene.num_envs, device=cfg.sim.device, max_episode_length=5)
        self.num_envs, self.device, self.max_episode_length = self.sim.num_envs, cfg.sim.device, 5
        self.step_dt = 0.05
        self.single_action_space = gym.spaces.Box(-float("inf"), float("inf"), (2,))
        self.extras: dict = {}

    @property
    def episode_length_buf(self) -> torch.Tensor:
        return self.sim.episode_length_buf

    def seed(self, seed: int = -1) -> int:
        self.sim.seed(seed)
        return seed

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.seed(seed)
        self.sim._reset_idx(torch.arange(self.num_envs, device=self.sim.device))
        return self.sim._groups(), self.extras

    def step(self, action: torch.Tensor):
        groups, rewards, dones, extras = self.sim.step(action)
        self.extras["log"] = extras["log"]
        return groups, rewards, dones.bool() & ~extras["time_outs"], extras["time_outs"], self.extras


class RslRlVecEnvWrapper20:
    """Isaac Lab 2.0's isaaclab_rl.rsl_rl.RslRlVecEnvWrapper (rsl_rl 2): ``__init__(env)`` only, tensor observations
    with every group in ``extras["observations"]``, ``reset()`` and ``seed()``, resets the env when built."""

    def __init__(self, env) -> None:
        self.env = env
        self.num_envs, self.device = self.unwrapped.num_envs, self.unwrapped.device
        self.max_episode_length = self.unwrapped.max_episode_length
        self.num_actions = gym.spaces.flatdim(self.unwrapped.single_action_space)
        self.env.reset()

    @property
    def cfg(self):
        return self.unwrapped.cfg

    @property
    def unwrapped(self):
        return self.env.unwrapped

    @property
    def episode_length_buf(self) -> torch.Tensor:
        return self.unwrapped.episode_length_buf

    def seed(self, seed: int = -1) -> int:
        return self.unwrapped.seed(seed)

    def get_observations(self):
        obs_dict = self.unwrapped.sim._groups()
        return obs_dict["policy"], {"observations": obs_dict}

    def reset(self):
        obs_dict, _ = self.env.reset()
        return obs_dict["policy"], {"observations": obs_dict}

    def _clip(self, actions: torch.Tensor) -> torch.Tensor:
        return actions

    def step(self, actions: torch.Tensor):
        obs_dict, rew, terminated, truncated, extras = self.env.step(self._clip(actions))
        extras["observations"] = obs_dict
        if not self.unwrapped.cfg.is_finite_horizon:
            extras["time_outs"] = truncated
        return obs_dict["policy"], rew, (terminated | truncated).to(dtype=torch.long), extras

    def close(self) -> None:
        self.env.close()


class RslRlVecEnvWrapper21(RslRlVecEnvWrapper20):
    """Isaac Lab 2.1's: the same with ``clip_actions`` (isaaclab_rl 0.1.1)."""

    def __init__(self, env, clip_actions: float | None = None) -> None:
        self.clip_actions = clip_actions
        super().__init__(env)

    def _clip(self, actions: torch.Tensor) -> torch.Tensor:
        return actions if self.clip_actions is None else torch.clamp(actions, -self.clip_actions, self.clip_actions)


def fake_isaac_lab(wrapper: type, launched: list) -> dict:
    """The modules make_isaac_env imports, for sys.modules: ``AppLauncher(**kwargs)`` appends its kwargs to
    ``launched``; importing isaaclab_tasks registers FAKE_TASK; isaaclab_rl.rsl_rl holds ``wrapper``."""
    import importlib.machinery
    import types

    def module(name: str, **attrs) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec reads it
        mod.__dict__.update(attrs)
        return mod

    def parse_env_cfg(task_name: str, device: str = "cuda:0", num_envs: int | None = None):
        assert launched, "parse_env_cfg before the simulator app"
        return SimpleNamespace(scene=SimpleNamespace(num_envs=num_envs), sim=SimpleNamespace(device=device),
                               is_finite_horizon=False)

    if FAKE_TASK not in gym.registry:
        gym.register(FAKE_TASK, entry_point=_LabEnv, disable_env_checker=True)
    return {"isaaclab": module("isaaclab"),
            "isaaclab.app": module("isaaclab.app", AppLauncher=lambda **kw: launched.append(kw)),
            "isaaclab_tasks": module("isaaclab_tasks"),
            "isaaclab_tasks.utils": module("isaaclab_tasks.utils", parse_env_cfg=parse_env_cfg),
            "isaaclab_rl": module("isaaclab_rl"),
            "isaaclab_rl.rsl_rl": module("isaaclab_rl.rsl_rl", RslRlVecEnvWrapper=wrapper)}
