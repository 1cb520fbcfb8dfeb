"""Diagonal Gaussian head, optionally tanh-squashed into the action bounds.

Squashed (SAC): x ~ N(mu(s), sigma(s)^2), u = tanh(x), a = bias + scale * u, with
    log pi(u|s) = log N(x; mu, sigma) - sum_i log(1 - tanh(x_i)^2)      (Haarnoja et al. 2018, eq. 21)
and log(1 - tanh(x)^2) computed stably as 2 (log 2 - x - softplus(-2x)). Log-probabilities are
densities of the unit action u in (-1, 1); the env-unit density differs by the constant
sum_i log(scale_i), which is why SAC's target entropy -|A| is stated in unit space.

Unsquashed (PPO): u ~ N(mu(s), sigma^2) in the box's unit scale and a = bias + scale * u, so the initial
policy (mu ~ 0, sigma = exp(log_std_init)) is centred in the box and spans it whatever its bounds (in env
units, as SB3 and CleanRL do, N(0, 1) sits on a bound of [0, 5] and outside [2, 5]; ``unit_actions=False``
keeps that convention, and it is what runs saved before 2026-12-05 load with). ``act`` clips to the
bounds; the sample itself (and its log-probability, a density of u) is kept unclipped for the likelihood
ratio, as in SB3 and CleanRL. With bounds [-1, 1] both conventions are the same numbers.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policies.heads.base import PolicyHead
from policies.networks import full_precision, mlp, orthogonal_init_
from policies.normalizers import ObsNormalizer

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_LOG2 = math.log(2.0)


def tanh_log_det(x: torch.Tensor) -> torch.Tensor:
    """sum_i log(1 - tanh(x_i)^2), stable for large |x|. x: [B, A] -> [B]."""
    return (2.0 * (_LOG2 - x - F.softplus(-2.0 * x))).sum(-1)


def env_actions(head: PolicyHead, x: torch.Tensor) -> torch.Tensor:
    """Env-unit actions [B, A] of a Gaussian head's variable x [B, A] (unclipped): tanh-squashed into the box
    (``head.squash``), mapped from the box's unit scale (``head.unit_actions``), or x itself (env units)."""
    if head.squash:
        return head.from_unit(torch.tanh(x))
    return head.from_unit(x) if head.unit_actions else x


def gaussian_variable(head: PolicyHead, actions: torch.Tensor) -> torch.Tensor:
    """The inverse of ``env_actions``: the Gaussian variable x [B, A] of env-unit ``actions`` [B, A]."""
    if head.squash:
        return torch.atanh(head.to_unit(actions).clamp(-1.0 + 1e-6, 1.0 - 1e-6))
    return head.to_unit(actions) if head.unit_actions else actions


class GaussianHead(PolicyHead):
    name = "gaussian"
    reparameterized = True
    tractable_log_prob = True

    def __init__(
        self,
        obs_dim: int,
        action_low: np.ndarray,
        action_high: np.ndarray,
        obs_norm: ObsNormalizer,
        hidden_sizes: Sequence[int] = (256, 256),
        activation: str = "relu",
        squash: bool = True,
        state_dependent_std: bool = True,
        log_std_init: float = 0.0,
        ortho_init: bool = False,
        layer_norm: bool = False,
        unit_actions: bool = True,
    ) -> None:
        super().__init__(obs_dim, action_low, action_high, obs_norm)
        self.squash = squash
        self.unit_actions = unit_actions  # unsquashed: the Gaussian is over the box's unit scale, not env units
        self.state_dependent_std = state_dependent_std
        out = 2 * self.act_dim if state_dependent_std else self.act_dim
        self.net = mlp(obs_dim, hidden_sizes, out, activation, layer_norm)
        if ortho_init:
            orthogonal_init_(self.net, out_gain=0.01)
        if not state_dependent_std:
            self.log_std = nn.Parameter(torch.full((self.act_dim,), float(log_std_init)))

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mean [B, A] and log-std [B, A] of the pre-squash Gaussian."""
        h = full_precision(self.net(self.obs_norm(obs)))
        if self.state_dependent_std:
            mean, log_std = h.chunk(2, dim=-1)
            return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        return h, self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).expand_as(h)

    def _act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        mean, log_std = self.distribution(obs)
        x = mean if deterministic else mean + log_std.exp() * torch.randn_like(mean)
        actions = env_actions(self, x)
        return actions if self.squash else self.clip_action(actions)  # (tanh keeps a squashed one inside)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        obs = self.observations(obs)
        return self.checked(self._act(obs, deterministic), obs=obs)

    @torch.no_grad()
    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action, what an export computes (unchecked: see ``PolicyHead.checked``)."""
        return self._act(obs, True)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.distribution(self.observations(obs))
        eps = torch.randn_like(mean)
        x = mean + log_std.exp() * eps
        logp = (-0.5 * eps.square() - log_std).sum(-1) - self.act_dim * _HALF_LOG_2PI
        if self.squash:
            logp = logp - tanh_log_det(x)
        return env_actions(self, x), logp

    def _log_prob(self, mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = gaussian_variable(self, actions)
        z = (x - mean) * torch.exp(-log_std)
        logp = (-0.5 * z.square() - log_std).sum(-1) - self.act_dim * _HALF_LOG_2PI
        return logp - tanh_log_det(x) if self.squash else logp

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        obs, actions = self.paired(obs, actions)
        mean, log_std = self.distribution(obs)
        return self._log_prob(mean, log_std, actions)

    def _entropy(self, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        if not self.squash:  # closed form for the Gaussian
            return (0.5 + _HALF_LOG_2PI + log_std).sum(-1)
        eps = torch.randn_like(mean)
        x = mean + log_std.exp() * eps
        return -((-0.5 * eps.square() - log_std).sum(-1) - self.act_dim * _HALF_LOG_2PI - tanh_log_det(x))

    def entropy(self, obs: torch.Tensor) -> torch.Tensor:
        return self._entropy(*self.distribution(self.observations(obs)))

    def evaluate_actions(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obs, actions = self.paired(obs, actions)
        mean, log_std = self.distribution(obs)
        return self._log_prob(mean, log_std, actions), self._entropy(mean, log_std)

    def imitation_loss(self, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Gaussian negative log-likelihood of the given actions."""
        nll = -self.log_prob(obs, actions)
        return nll.mean() if weights is None else (nll * weights).sum() / weights.sum().clamp_min(1e-8)
