"""Choosing among candidate actions with a critic: what EXPO and PA-RL act with.

Candidates for a batch of states are evaluated in one pass: [B, M, A] -> [B * M] through the critic
ensemble -> [B, M] scores (the minimum over critics, the pessimistic estimate both methods use).
"""

from __future__ import annotations

from typing import Any

import torch

from policies.heads import PolicyHead
from robo_rl.learners.critics import QEnsemble


def require_sampling_base(policy: PolicyHead, algo: str, verb: str) -> None:
    """EXPO and PA-RL sample single actions from a head they train only by its imitation loss."""
    if not policy.stochastic:
        raise ValueError(f"algo={algo} {verb}: the {policy.name!r} head is deterministic; "
                         "use policy=flow, diffusion, mixture or gaussian")
    if policy.name == "latent":  # its imitation loss fits the decoder; nothing would train the latent policy
        raise ValueError(f"algo={algo} trains its head by imitation only, which for policy=latent fits the decoder "
                         "and leaves the latent policy untrained: use policy=flow or diffusion (the latent head is "
                         "GoRL's: algo=gorl or gorl_sac)")
    if policy.action_chunk != 1:
        raise ValueError(f"algo={algo} works on single actions: set policy.chunk=1 (action chunks are for imitation)")


def sample_candidates(head: PolicyHead, obs: torch.Tensor, m: int) -> torch.Tensor:
    """m stochastic actions per state from ``head``: [B, m, A] env units, all drawn in one batch."""
    return sample_together(head, (obs, m))[0]


def sample_together(head: PolicyHead, *groups: tuple[torch.Tensor, int]) -> list[torch.Tensor]:
    """``sample_candidates`` for several batches of states, (obs [B_i, ...], m_i) each, drawn in one call of the
    head: [B_i, m_i, A] per group.

    A generative head's sampling chain costs per call as well as per row, so EXPO and PA-RL, which need the head's
    samples at s' and at s in the same update (before the head changes), draw them together: at EXPO's defaults
    (512 rows at s', 256 at s) that made its whole update ~3% faster (a paired timing; README, generative cost)."""
    rows = [obs.repeat_interleave(m, dim=0) for obs, m in groups]
    actions = head.act(torch.cat(rows) if len(rows) > 1 else rows[0], deterministic=False)
    out, start = [], 0
    for (obs, m), states in zip(groups, rows):
        out.append(actions[start:start + states.shape[0]].reshape(obs.shape[0], m, actions.shape[-1]))
        start += states.shape[0]
    return out


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


class CriticSelectPolicy(PolicyHead):
    """The policy EXPO and PA-RL act with: the best of N candidates by the critic (an exportable head).

    Candidates are N samples of the base head and, with an edit policy (EXPO), each one edited.
    Deterministic acting draws the N samples from fixed noise (the first from zeros, the others
    seeded), so the same observation always gets the same action; the export takes that noise as
    an input.
    """

    name = "critic_select"
    reparameterized = False
    tractable_log_prob = False

    def __init__(self, base: PolicyHead, critic: QEnsemble, num_samples: int, edit: Any = None) -> None:
        super().__init__(base.obs_dim, base.action_low.cpu().numpy(), base.action_high.cpu().numpy(), base.obs_norm)
        self.base, self.critic, self.n, self.edit = base, critic, num_samples, edit

    @property
    def described(self) -> str:
        # (its name stays "critic_select": the export sidecar's head field)
        learner = "EXPO" if self.edit is not None else "PA-RL"
        return f"{learner}'s acting policy (the best of {self.n} {self.base.name} candidates by the critic)"

    def noise_dim(self) -> int:
        """Noise numbers per state the deterministic path uses (0: the base has no noise input)."""
        return self.n * self.base.noise_shape(1)[1] if hasattr(self.base, "noise_shape") else 0

    def fixed_noise(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """The deterministic path's noise [batch, N * k]: zeros for the first candidate (the base head's own
        deterministic action), seeded draws for the others.

        Zeros first matters: with only seeded draws, one fixed tail draw (seed 0 gives -2.2 in one of
        Hopper's dims) decided every action, and an EXPO policy that scored 350-430 when sampling
        fell at once (return 4) when acting deterministically."""
        d = self.noise_dim()
        if d == 0:
            return None
        # drawn on the CPU whatever the device: a CUDA generator seeded alike draws other numbers, so a run trained on
        # cuda would act (and be evaluated) with another deterministic policy than the CPU's and the export's default
        noise = torch.randn(1, d, generator=torch.Generator().manual_seed(0)).to(device)
        noise[:, : d // self.n] = 0.0
        return noise.expand(batch, d)

    def candidates(self, obs: torch.Tensor, deterministic: bool = False, noise: torch.Tensor | None = None,
                   check: bool = False, base_actions: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N or 2N, A]: N base samples (and each one edited, with an edit policy).

        ``base_actions``: the N base samples [B, N, A], drawn by the caller (``sample_together``); stochastic
        candidates only.

        ``check``: a FloatingPointError naming the base head if its actions are non-finite (what ``act`` does;
        the base's own ``act`` checks the sampled ones, the chain from explicit noise is checked here, before
        the edits, so that a diverged base is not reported as a diverged edit policy). The export path
        (``forward``) does not check, as no head's does."""
        b = obs.shape[0]
        states = obs.repeat_interleave(self.n, dim=0)
        if base_actions is not None:
            if deterministic or noise is not None:
                raise ValueError("candidates: base_actions are stochastic samples; deterministic candidates draw "
                                 "their own from the fixed noise")
            base_actions = base_actions.reshape(b * self.n, base_actions.shape[-1])
        elif deterministic or noise is not None:
            noise = self.fixed_noise(b, obs.device) if noise is None else noise
            if noise is not None:  # generative base: each candidate from its own slice of the noise
                base_actions = self.base.from_unit(self.base.generate(states, noise.reshape(b * self.n, noise.shape[-1] // self.n)))[:, 0]
                if check:
                    base_actions = self.base.checked(base_actions, obs=states)
            else:
                base_actions = self.base.act(states, deterministic=True)
        else:
            base_actions = self.base.act(states, deterministic=False)
        if self.edit is None:
            return base_actions.reshape(b, self.n, base_actions.shape[-1])
        delta = self.edit.act(states, base_actions, deterministic or noise is not None)
        edited = self.clip_action(base_actions + delta)
        # (sizes spelled out, not -1: an empty batch, B = 0, has no size to infer)
        return torch.cat([base_actions.reshape(b, self.n, base_actions.shape[-1]), edited.reshape(b, self.n, edited.shape[-1])], dim=1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        # validated and cast as every head's act does (the critic and the repeat below would otherwise fail on a
        # float64, 1-D or numpy obs with a dtype or shape error from deep inside)
        obs = self.observations(obs)
        candidates = self.candidates(obs, deterministic, check=True)
        return best(candidates, score(self.critic, self.base, obs, candidates))[0]

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.act(obs), None

    def imitation_loss(self, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.base.imitation_loss(obs, actions, weights)

    @torch.no_grad()
    def tied_choice(self, obs: torch.Tensor, noise: torch.Tensor | None, actions: torch.Tensor,
                    atol: torch.Tensor) -> torch.Tensor:
        """[B] bool: ``actions`` [B, A] (e.g. an exported model's) is, within ``atol``, a candidate of its row whose
        critic score is within float32 rounding of the best: another runtime's rounding may pick it over the one
        torch picks (with a near-zero edit, EXPO's base and edited candidates score alike), a choice as good."""
        candidates = self.candidates(obs, deterministic=True, noise=noise)
        scores = score(self.critic, self.base, obs, candidates)
        top = scores.max(dim=1, keepdim=True).values
        near = (top - scores) <= 1e-5 * top.abs().clamp_min(1.0)
        same = ((candidates - actions[:, None]).abs() <= atol).all(-1)
        return (near & same).any(1)

    def forward(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The export path: the best candidate from explicit noise (the fixed seed-0 noise if None)."""
        candidates = self.candidates(obs, deterministic=True, noise=noise)
        return best(candidates, score(self.critic, self.base, obs, candidates))[0]
