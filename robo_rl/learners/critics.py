"""Q-function ensembles: E critics evaluated with one batched matmul per layer."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from policies.networks import EnsembleMLP


class QEnsemble(nn.Module):
    """Q_1..Q_E(s, a): obs [B, obs_dim], actions [B, act_dim] -> [E, B]."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        num_critics: int = 2,
        hidden_sizes: Sequence[int] = (256, 256),
        activation: str = "relu",
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.net = EnsembleMLP(num_critics, obs_dim + act_dim, hidden_sizes, 1, activation, layer_norm)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, detach: bool = False, members: slice | None = None) -> torch.Tensor:
        return self.net(torch.cat([obs, actions], dim=-1), detach, members).squeeze(-1)
