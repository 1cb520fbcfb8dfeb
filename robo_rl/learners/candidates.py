"""Choosing among candidate actions with a critic: what EXPO and PA-RL act with.

Candidates for a batch of states are evaluated in one pass: [B, M, A] -> [B * M] through the critic
ensemble -> [B, M] scores (the minimum over critics, the pessimistic estimate both methods use).
"""

from __future__ import annotations

import torch

from policies.heads import PolicyHead
from robo_rl.learners.critics import QEnsemble


def sample_candidates(head: PolicyHead, obs: torch.Tensor, m: int) -> torch.Tensor:
    """m stochastic actions per state from ``head``: [B, m, A] env units, all drawn in one batch."""
    b = obs.shape[0]
    return head.act(obs.repeat_interleave(m, dim=0), deterministic=False).reshape(b, m, -1)


def score(critic: QEnsemble, head: PolicyHead, obs: torch.Tensor, candidates: torch.Tensor, detach: bool = True) -> torch.Tensor:
    """min_i Q_i(s, a_j) for every candidate: [B, M]."""
    b, m, a = candidates.shape
    obs_n = head.obs_norm(obs).repeat_interleave(m, dim=0)
    q = critic(obs_n, head.to_unit(candidates.reshape(b * m, a)), detach=detach)  # [E, B*M]
    return q.min(0).values.reshape(b, m)


def best(candidates: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The highest-scoring candidate per state: actions [B, A] and their scores [B]."""
    top, idx = scores.max(dim=1)
    return candidates[torch.arange(candidates.shape[0], device=candidates.device), idx], top
