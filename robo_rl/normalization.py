"""Reward normalization for on-policy training (a runner option; its state is checkpointed).

Rewards are divided by the running standard deviation of the discounted return, as in SB3's
VecNormalize and Engstrom et al. 2020 ("Implementation Matters in Deep RL"), then clipped.
Episode statistics in logs are always computed on the raw reward.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


class RewardNormalizer:
    """Per-step reward scaling; a handful of float64 numpy operations on N numbers per step."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8) -> None:
        self.gamma, self.clip, self.eps = gamma, clip, eps
        self.returns = np.zeros(num_envs)  # discounted return of each env's running episode
        self.mean, self.var, self.count = 0.0, 1.0, 0.0  # of the discounted returns seen so far

    def __call__(self, rewards: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        """Normalize one step's rewards [N]; ``dones`` [N] ends the discounted-return trace."""
        r = rewards.detach().cpu().numpy().astype(np.float64)
        self.returns = self.returns * self.gamma + r
        self._update(self.returns)
        self.returns[dones.cpu().numpy()] = 0.0
        scale = 1.0 / math.sqrt(self.var + self.eps)
        return torch.clamp(rewards * scale, -self.clip, self.clip)

    def _update(self, x: np.ndarray) -> None:
        # Chan et al.'s parallel mean/variance update, as RunningMeanStd
        n = x.shape[0]
        batch_mean = float(np.add.reduce(x)) / n
        centered = x - batch_mean
        batch_var = float(np.dot(centered, centered)) / n
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta * delta * self.count * n / total) / total
        self.count = total

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "var": self.var, "count": self.count, "returns": self.returns.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load what ``state_dict`` wrote; a returns trace of another shape (another num_envs) is a ValueError,
        raised before anything changes."""
        mean, var, count = float(state["mean"]), float(state["var"]), float(state["count"])
        returns = np.array(state["returns"], dtype=np.float64)
        if returns.shape != self.returns.shape:
            raise ValueError(f"reward_norm.returns has shape {list(returns.shape)}, expected {list(self.returns.shape)} "
                             "(one discounted return per env)")
        self.mean, self.var, self.count, self.returns = mean, var, count, returns
