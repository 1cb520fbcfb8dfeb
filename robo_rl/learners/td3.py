"""Twin Delayed DDPG: clipped double Q, target policy smoothing, delayed actor updates.

Fujimoto et al. 2018, "Addressing Function Approximation Error in Actor-Critic Methods"
(arXiv:1802.09477), Algorithm 1. Noise scales are in unit action space [-1, 1].
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from policies.heads import PolicyHead, require_capabilities
from policies.heads.base import TRAINED_BY, suited_learners
from robo_rl.learners.base import Batch, Learner, polyak_update
from robo_rl.learners.optim import FusedAdam
from robo_rl.learners.critics import QEnsemble
from robo_rl.learners.offpolicy_fused import FusedTD3Step, FusedUpdate, td3_unsupported_reason


class TD3(FusedUpdate, Learner):
    kind = "off_policy"
    loss_functions = ("critic_loss", "actor_loss")
    name = "td3"
    needs = {
        "reparameterized": "the actor loss differentiates Q(s, pi(s)) through the action",
    }

    def __init__(
        self,
        policy: PolicyHead,
        gamma: float = 0.99,
        tau: float = 0.005,
        actor_lr: float = 1e-3,
        critic_lr: float = 1e-3,
        policy_delay: int = 2,
        target_noise: float = 0.2,
        target_noise_clip: float = 0.5,
        exploration_noise: float = 0.1,
        num_critics: int = 2,
        critic_hidden: Sequence[int] = (256, 256),
        critic_activation: str = "relu",
        critic_layer_norm: bool = False,
        fused: str = "auto",
    ) -> None:
        super().__init__()
        if policy.stochastic:  # checked first: whatever else the head lacks, the advice is the same
            other = TRAINED_BY.get(policy.name) or suited_learners(policy, but="td3")
            raise ValueError(
                f"algo=td3 trains a deterministic actor, got the stochastic {policy.name!r} head; "
                f"use policy=deterministic (or {other} for the {policy.name} head)"
            )
        require_capabilities(self.name, policy, self.needs)
        self.policy = policy
        self.gamma, self.tau = gamma, tau
        self.policy_delay = policy_delay
        self.target_noise, self.target_noise_clip = target_noise, target_noise_clip
        self.exploration_noise = exploration_noise
        self.critic = QEnsemble(policy.obs_dim, policy.act_dim, num_critics, critic_hidden, critic_activation, critic_layer_norm)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_target = copy.deepcopy(policy).requires_grad_(False)
        self.actor_target.obs_norm = policy.obs_norm  # one set of normalizer statistics
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))
        self.actor_opt = FusedAdam(policy.parameters(), actor_lr)
        self.critic_opt = FusedAdam(self.critic.parameters(), critic_lr)
        self._actor_params = list(policy.parameters())
        self._critic_params = list(self.critic.parameters())
        self._online = list(self.critic.parameters()) + list(policy.parameters())
        self._target = list(self.critic_target.parameters()) + list(self.actor_target.parameters())
        self._choose_fused_step("TD3", fused, lambda: td3_unsupported_reason(self), lambda: FusedTD3Step(self))

    @torch.no_grad()
    def after_pretraining(self) -> None:
        for target, online in zip(self.actor_target.parameters(), self.policy.parameters()):
            target.copy_(online)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_opt, "critic": self.critic_opt}

    @torch.no_grad()
    def explore(self, obs: torch.Tensor) -> torch.Tensor:
        unit = self.policy.act_unit(obs)
        unit = unit + self.exploration_noise * torch.randn_like(unit)
        return self.policy.from_unit(unit.clamp_(-1.0, 1.0))

    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        policy = self.policy
        # Target with policy smoothing (Alg. 1): a' = clip(pi'(s') + clip(eps, -c, c)), y = r + g min_i Q'_i(s', a')
        with torch.no_grad():
            next_unit = policy.to_unit(self.actor_target.sample(batch.next_obs)[0])
            noise = (torch.randn_like(next_unit) * self.target_noise).clamp(-self.target_noise_clip, self.target_noise_clip)
            next_unit = (next_unit + noise).clamp(-1.0, 1.0)
            q_next = self.critic_target(policy.obs_norm(batch.next_obs), next_unit).min(0).values
            target = batch.rewards + self.gamma * (1.0 - batch.terminated) * q_next
        q = self.critic(policy.obs_norm(batch.obs), policy.to_unit(batch.actions))  # [E, B]
        return (q - target).square().mean(1).sum(), q.detach().mean()

    def actor_loss(self, obs: torch.Tensor) -> torch.Tensor:
        # Deterministic policy gradient: maximize Q_1(s, pi(s)); gradient reaches only the actor
        actions, _ = self.policy.sample(obs)
        q1 = self.critic(self.policy.obs_norm(obs), self.policy.to_unit(actions), detach=True, members=slice(0, 1))
        return -q1.mean()

    def critic_warmup(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One critic-only TD update, not counted (demos.critic_steps; see Learner.critic_warmup_step). The actor
        target equals the pretrained actor, so of the targets only the critics' move."""
        return self.critic_warmup_step(self._critic_loss(batch)[0], self._target, self._online)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self._fused:
            return self._fused_step.update(batch)
        self.num_updates += 1
        critic_loss, q_mean = self._critic_loss(batch)
        self.critic_opt.apply(torch.autograd.grad(critic_loss, self._critic_params))
        metrics = {"critic_loss": critic_loss.detach(), "q_mean": q_mean}
        if int(self.num_updates) % self.policy_delay == 0:  # delayed actor and target updates
            actor_loss = self._actor_loss(batch.obs)
            self.actor_opt.apply(torch.autograd.grad(actor_loss, self._actor_params))
            with torch.no_grad():
                polyak_update(self._target, self._online, self.tau)
            metrics["actor_loss"] = actor_loss.detach()
        return metrics
