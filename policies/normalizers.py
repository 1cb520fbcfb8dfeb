"""Running mean/std statistics and the observation normalizer that travels with a policy.

The normalizer is a module of the policy (its statistics are buffers), so checkpoints save it
with the weights and an export bakes it into the graph: the robot side never re-implements it.
"""

from __future__ import annotations

import torch
from torch import nn


class RunningMeanStd(nn.Module):
    """Streaming mean and variance over a batch dimension (Chan et al.'s parallel update), float64."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def reset(self) -> None:
        """Back to no observations (mean 0, var 1, count 0)."""
        self.mean.zero_()
        self.var.fill_(1.0)
        self.count.zero_()

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch x [B, *shape] (or [*shape], or [T, B, *shape]) into the statistics."""
        shape = tuple(self.mean.shape)
        if tuple(x.shape[max(x.dim() - len(shape), 0):]) != shape:  # reshape would regroup [B, 2 D] into [2 B, D]
            raise ValueError(f"observation statistics of shape {list(shape)} cannot take a batch of shape "
                             f"{list(x.shape)}: pass observations [B, {', '.join(map(str, shape))}]")
        x = x.detach().to(torch.float64).reshape(-1, *shape)
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(0)
        batch_var = x.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean.add_(delta * (n / total))
        m2 = self.var * self.count + batch_var * n + delta.square() * (self.count * n / total)
        self.var.copy_(m2 / total)
        self.count.fill_(total)


def coarse_dimensions(stats: RunningMeanStd, steps_per_std: float = 64.0, min_magnitude: float = 1e3
                      ) -> list[tuple[int, float, float, float]]:
    """(dimension, mean, std, float32 step at the mean) of every dimension that float32, the observations' type,
    resolves in fewer than ``steps_per_std`` steps per standard deviation: a value near 1e8 steps by 8, so a
    position varying by 1 there is seen in about one float32 step, or not at all, and subtracting the mean
    afterwards cannot bring the lost digits back. Dimensions within ``min_magnitude`` of 0 are never reported
    (a constant feature such as a bias input of 1). Empty before two observations."""
    if float(stats.count) < 2:
        return []
    mean = stats.mean.abs()
    mean32 = mean.float()
    spacing = (torch.nextafter(mean32, torch.tensor(float("inf"))) - mean32).double()
    std = stats.var.clamp_min(0).sqrt()
    coarse = (mean >= min_magnitude) & (std < steps_per_std * spacing)
    return [(int(i), float(stats.mean[i]), float(std[i]), float(spacing[i])) for i in coarse.nonzero().flatten()]


class ObsNormalizer(nn.Module):
    """obs -> clip((obs - mean) / sqrt(var + eps), -clip, clip); the identity when disabled.

    Statistics only change through ``update``, which the runner calls on collected observations;
    inside a gradient step they are constants.
    """

    def __init__(self, obs_dim: int, enabled: bool = False, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.enabled = enabled
        self.clip = clip
        self.eps = eps
        self.stats = RunningMeanStd((obs_dim,))
        # float32 copies used on the hot path, refreshed after every update / load
        self.register_buffer("shift", torch.zeros(obs_dim), persistent=False)
        self.register_buffer("scale", torch.ones(obs_dim), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _keys: module._refresh())

    @torch.no_grad()
    def update(self, obs: torch.Tensor) -> None:
        if self.enabled:
            self.stats.update(obs)
            self._refresh()

    def _refresh(self) -> None:
        self.shift.copy_(self.stats.mean.float())
        self.scale.copy_(torch.rsqrt(self.stats.var + self.eps).float())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return obs
        return torch.clamp((obs - self.shift) * self.scale, -self.clip, self.clip)

    def extra_repr(self) -> str:
        return f"enabled={self.enabled}, clip={self.clip}"
