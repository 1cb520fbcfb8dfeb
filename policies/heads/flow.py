"""Flow-matching head: conditional flow matching / rectified flow with Euler or midpoint sampling.

Training (Lipman et al. 2023, eq. 23; Liu et al. 2023): x0 ~ N(0, I), x1 = the action in unit scale,
x_t = (1 - t) x0 + t x1 with t ~ U(0, 1), and the network regresses the velocity x1 - x0:
    L = E || v(x_t, t | s) - (x1 - x0) ||^2
Sampling integrates dx/dt = v(x, t | s) from the noise at t = 0 to t = 1 in ``steps`` Euler (or
midpoint) steps; the result is clipped to the unit box and scaled to the action bounds.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from policies.heads.generative import GenerativeHead
from policies.normalizers import ObsNormalizer

SOLVERS = ("euler", "midpoint")


class FlowHead(GenerativeHead):
    name = "flow"

    def __init__(self, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray, obs_norm: ObsNormalizer,
                 hidden_sizes: Sequence[int] = (256, 256, 256), activation: str = "mish", steps: int = 4,
                 solver: str = "euler", chunk: int = 1, execute: int | None = None, denoiser: str = "mlp",
                 **_: Any) -> None:
        if int(steps) < 1:
            raise ValueError(f"policy.steps={steps}: the flow head needs at least 1 integration step (1-10 is typical)")
        if solver not in SOLVERS:
            raise ValueError(f"policy.solver={solver!r}: choose one of {', '.join(SOLVERS)}")
        super().__init__(obs_dim, action_low, action_high, obs_norm, hidden_sizes, activation, chunk, execute,
                         denoiser=denoiser)
        self.steps, self.solver = int(steps), solver

    def time_scale(self) -> float:
        return 100.0  # t in [0, 1] spread over the embedding's frequencies like diffusion timesteps

    def imitation_loss(self, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor | None = None,
                       noise: torch.Tensor | None = None) -> torch.Tensor:
        """``noise``: source samples x0 [B, chunk * A] when the flow starts from another distribution than
        N(0, I) (flow matching transports any source; GoRL-SAC's squashed latent prior is one)."""
        x1 = self.to_unit_chunk(actions)
        x0 = torch.randn_like(x1) if noise is None else noise
        t = torch.rand(x1.shape[0], device=x1.device)
        xt = (1.0 - t[:, None]) * x0 + t[:, None] * x1
        v = self.net(xt, t, self._cond(obs))
        return self._weighted((v - (x1 - x0)).square().mean(-1), weights)

    def generate(self, obs: torch.Tensor, noise: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
        net = self.net
        context = net.context(self._cond(obs))  # once per chain
        x = noise
        dt = 1.0 / self.steps
        times = torch.arange(self.steps, device=x.device, dtype=torch.float32) * dt
        tf = net.time_features(times)  # once per step, shared by every row
        tf_mid = net.time_features(times + 0.5 * dt) if self.solver == "midpoint" else None
        for i in range(self.steps):
            if self.solver == "euler":
                x = x + dt * net(x, context=context, time_features=tf[i])
            else:  # midpoint: evaluate the velocity half a step ahead
                x_mid = x + (0.5 * dt) * net(x, context=context, time_features=tf[i])
                x = x + dt * net(x_mid, context=context, time_features=tf_mid[i])
        return self._finish(x, straight_through)
