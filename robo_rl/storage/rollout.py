"""On-policy rollout storage and generalized advantage estimation."""

from __future__ import annotations

from typing import NamedTuple

import torch


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_values: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16), per env over T steps.

    rewards, values, dones: [T, N]; ``dones[t]`` marks that the episode ended at step t (terminated
    or truncated), so step t+1's value belongs to a new episode and is not bootstrapped from.
    Time-limit truncations are bootstrapped by the caller, who adds gamma * V(final_obs) to the
    reward of the truncated step. last_values: [N], the value of the observation after step T-1.

    Returns advantages [T, N] and returns (advantages + values) [T, N].
    """
    steps = rewards.shape[0]
    advantages = torch.empty_like(rewards)
    gae = torch.zeros_like(last_values)
    next_values = last_values
    not_done = 1.0 - dones.float()
    for t in reversed(range(steps)):
        delta = rewards[t] + gamma * next_values * not_done[t] - values[t]
        gae = delta + gamma * gae_lambda * not_done[t] * gae
        advantages[t] = gae
        next_values = values[t]
    return advantages, advantages + values


class RolloutBatch(NamedTuple):
    obs: torch.Tensor  # [B, obs_dim]
    actions: torch.Tensor  # [B, act_dim] as sampled (unclipped)
    log_probs: torch.Tensor  # [B] under the policy that collected them
    values: torch.Tensor  # [B]
    advantages: torch.Tensor  # [B]
    returns: torch.Tensor  # [B]


class RolloutStorage:
    """T steps of N envs, preallocated; filled by the on-policy runner, emptied every update."""

    def __init__(self, steps: int, num_envs: int, obs_dim: int, act_dim: int, device: torch.device) -> None:
        self.steps, self.num_envs = steps, num_envs
        shape = (steps, num_envs)
        self.obs = torch.zeros(*shape, obs_dim, device=device)
        self.actions = torch.zeros(*shape, act_dim, device=device)
        self.log_probs = torch.zeros(shape, device=device)
        self.values = torch.zeros(shape, device=device)
        self.rewards = torch.zeros(shape, device=device)
        self.dones = torch.zeros(shape, device=device)
        self.t = 0

    def add(self, obs, actions, log_probs, values, rewards, dones) -> None:
        t = self.t
        if t >= self.steps:
            raise RuntimeError("rollout storage is full; call finish() before adding more steps")
        self.obs[t] = obs
        self.actions[t] = actions
        self.log_probs[t] = log_probs
        self.values[t] = values
        self.rewards[t] = rewards
        self.dones[t] = dones
        self.t += 1

    def finish(self, last_values: torch.Tensor, gamma: float, gae_lambda: float) -> RolloutBatch:
        """Compute advantages and return the rollout flattened to [T * N]."""
        if self.t != self.steps:
            raise RuntimeError(f"rollout holds {self.t} of {self.steps} steps")
        adv, ret = compute_gae(self.rewards, self.values, self.dones, last_values, gamma, gae_lambda)
        self.t = 0
        flat = lambda x: x.reshape(self.steps * self.num_envs, *x.shape[2:])  # noqa: E731
        return RolloutBatch(flat(self.obs), flat(self.actions), flat(self.log_probs), flat(self.values), flat(adv), flat(ret))
