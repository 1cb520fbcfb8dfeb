"""A small GPU-style environment written to the rsl_rl VecEnv conventions, for testing the adapter.

A 2-D point mass must reach a target: torch buffers on ``device``, resets inside ``step``, time-outs
in ``extras["time_outs"]``, a privileged "critic" observation group, ``cfg.normalization.clip_actions``.
Leaving the arena ends an episode as a real termination (and forfeits the rest of its reward).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch


class PointReach:
    _exclusive_alive = False  # exclusive=True: one live instance per process, as Isaac Lab enforces

    def __init__(self, num_envs: int = 64, device: str = "cpu", max_episode_length: int = 100, legged_gym_style: bool = False,
                 exclusive: bool = False) -> None:
        if exclusive:
            if PointReach._exclusive_alive:
                raise RuntimeError("Simulation context already exists. Cannot create a new one.")
            PointReach._exclusive_alive = True
        self.exclusive = exclusive
        self.num_envs, self.device = num_envs, torch.device(device)
        self.num_obs, self.num_privileged_obs, self.num_actions = 4, 6, 2
        self.max_episode_length = max_episode_length
        self.cfg = SimpleNamespace(normalization=SimpleNamespace(clip_actions=1.0))
        self.dt = 0.05
        self.legged_gym_style = legged_gym_style
        self.generator = torch.Generator(device=self.device).manual_seed(0)
        self.pos = torch.zeros(num_envs, 2, device=self.device)
        self.vel = torch.zeros(num_envs, 2, device=self.device)
        self.target = torch.zeros(num_envs, 2, device=self.device)
        self.episode_length_buf = torch.zeros(num_envs, dtype=torch.long, device=self.device)
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

    def _observations(self) -> tuple[torch.Tensor, torch.Tensor]:
        policy = torch.cat([self.target - self.pos, self.vel], dim=1)
        critic = torch.cat([policy, self.target], dim=1)
        return policy, critic

    def get_observations(self):
        policy, critic = self._observations()
        return policy, {"observations": {"critic": critic}}

    def reset(self):
        self._reset_idx(torch.arange(self.num_envs, device=self.device))
        return self.get_observations()

    def step(self, actions: torch.Tensor):
        actions = actions.clamp(-self.cfg.normalization.clip_actions, self.cfg.normalization.clip_actions)
        self.vel = 0.8 * self.vel + 0.2 * actions
        self.pos = self.pos + self.vel * self.dt * 10
        self.episode_length_buf += 1
        dist = (self.target - self.pos).norm(dim=1)
        rewards = torch.exp(-2.0 * dist)  # in (0, 1]: reach the target and stay there
        out_of_bounds = self.pos.abs().max(dim=1).values > 2.0
        time_outs = self.episode_length_buf >= self.max_episode_length
        dones = out_of_bounds | time_outs
        self.extras = {"time_outs": time_outs, "log": {"mean_dist": dist.mean()}}
        ids = dones.nonzero().flatten()
        if len(ids):
            self._reset_idx(ids)
        policy, critic = self._observations()
        self.extras["observations"] = {"critic": critic}
        if self.legged_gym_style:
            return policy, critic, rewards, dones.long(), self.extras
        return policy, rewards, dones.long(), self.extras


    def close(self) -> None:
        if self.exclusive:
            PointReach._exclusive_alive = False


def make(num_envs: int = 64, device: str = "cpu", **kwargs) -> PointReach:
    return PointReach(num_envs=num_envs, device=device, **kwargs)
