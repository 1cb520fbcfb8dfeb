"""Deterministic head for TD3/DDPG: a = bias + scale * tanh(f(s)).

Exploration noise is the learner's business (TD3 adds clipped Gaussian noise when collecting),
so ``act`` returns the same action with or without ``deterministic``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from policies.heads.base import PolicyHead
from policies.networks import full_precision, mlp
from policies.normalizers import ObsNormalizer


class DeterministicHead(PolicyHead):
    name = "deterministic"
    reparameterized = True  # the action itself is differentiable w.r.t. the parameters
    tractable_log_prob = False
    stochastic = False

    def __init__(
        self,
        obs_dim: int,
        action_low: np.ndarray,
        action_high: np.ndarray,
        obs_norm: ObsNormalizer,
        hidden_sizes: Sequence[int] = (256, 256),
        activation: str = "relu",
        layer_norm: bool = False,
    ) -> None:
        super().__init__(obs_dim, action_low, action_high, obs_norm)
        self.net = mlp(obs_dim, hidden_sizes, self.act_dim, activation, layer_norm)

    def unit_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The action in the unit box, tanh(f(s)), for the network's input ``obs``."""
        return torch.tanh(full_precision(self.net(self.obs_norm(obs))))

    def mean_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.from_unit(self.unit_action(obs))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        obs = self.observations(obs)
        return self.checked(self.mean_action(obs), obs=obs)

    @torch.no_grad()
    def act_unit(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        cls = type(self)
        if cls.act is not DeterministicHead.act or cls.mean_action is not DeterministicHead.mean_action:
            return super().act_unit(obs, deterministic)  # a subclass's own act: TD3 explores around what it acts
        obs = self.observations(obs)
        return self.checked(self.unit_action(obs), obs=obs)

    @torch.no_grad()
    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The action, what an export computes (unchecked: see ``PolicyHead.checked``)."""
        return self.mean_action(obs)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.mean_action(self.observations(obs)), None

    def imitation_loss(self, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error in unit action space (so every action dimension weighs the same)."""
        obs, actions = self.paired(obs, actions)
        err = (self.to_unit(self.mean_action(obs)) - self.to_unit(actions)).square().sum(-1)
        return err.mean() if weights is None else (err * weights).sum() / weights.sum().clamp_min(1e-8)
