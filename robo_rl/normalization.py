"""Reward normalization for on-policy training (a runner option; its state is checkpointed).

Rewards are divided by the running standard deviation of the discounted return, as in SB3's
VecNormalize and Engstrom et al. 2020 ("Implementation Matters in Deep RL"), then clipped.
Episode statistics in logs are always computed on the raw reward.
"""

from __future__ import annotations

from typing import Any

import torch

from policies.normalizers import RunningMeanStd


class RewardNormalizer:
    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8, device: str | torch.device = "cpu") -> None:
        self.gamma, self.clip, self.eps = gamma, clip, eps
        self.stats = RunningMeanStd(()).to(device)
        self.returns = torch.zeros(num_envs, dtype=torch.float64, device=device)

    def __call__(self, rewards: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        """Normalize one step's rewards [N]; ``dones`` [N] ends the discounted-return trace."""
        self.returns = self.returns * self.gamma + rewards.to(torch.float64)
        self.stats.update(self.returns)
        self.returns = torch.where(dones, torch.zeros_like(self.returns), self.returns)
        scale = torch.rsqrt(self.stats.var + self.eps).float()
        return torch.clamp(rewards * scale, -self.clip, self.clip)

    def state_dict(self) -> dict[str, Any]:
        return {"stats": self.stats.state_dict(), "returns": self.returns.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state["stats"])
        self.returns = state["returns"].to(self.returns)
