"""Soft Actor-Critic with twin (ensemble) Q, target critics and automatic temperature.

Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications" (arXiv:1812.05905).
Critics see normalized observations and actions in unit scale [-1, 1].
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn

from policies.heads import PolicyHead, require_capabilities
from robo_rl.learners.base import Batch, Learner, polyak_update
from robo_rl.learners.optim import FusedAdam
from robo_rl.learners.critics import QEnsemble
from robo_rl.learners.offpolicy_fused import FusedSACStep, FusedUpdate, sac_unsupported_reason


class SAC(FusedUpdate, Learner):
    kind = "off_policy"
    loss_functions = ("critic_loss", "actor_loss")
    name = "sac"
    needs = {
        "reparameterized": "the actor loss differentiates Q(s, a) through the sampled action",
        "tractable_log_prob": "the soft value needs log pi(a|s)",
    }

    def __init__(
        self,
        policy: PolicyHead,
        gamma: float = 0.99,
        tau: float = 0.005,
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        alpha_lr: float = 3e-4,
        init_alpha: float = 1.0,
        autotune_alpha: bool = True,
        target_entropy: float | None = None,
        num_critics: int = 2,
        critic_hidden: Sequence[int] = (256, 256),
        critic_activation: str = "relu",
        critic_layer_norm: bool = False,
        target_update_every: int = 1,
        actor: PolicyHead | None = None,
        fused: str = "auto",
    ) -> None:
        """``actor``: the head whose log-probability and parameters the actor loss uses, when it is not
        ``policy`` itself (GoRL-SAC trains its latent Gaussian; the critic still sees env actions). ``fused``: the
        hand-derived-gradient update of offpolicy_fused.py (auto: where it applies; on: insist; off: autograd)."""
        super().__init__()
        actor = policy if actor is None else actor
        require_capabilities(self.name, actor, self.needs)
        if not getattr(actor, "squash", True):
            # its samples leave the box: the env clips them and the replay holds clipped actions, but the actor loss
            # and the targets would ask the critics about the unclipped ones, outside every action they were fit on
            raise ValueError("algo=sac needs a squashed policy (policy.squash=true, its default): an unsquashed "
                             "Gaussian samples actions outside the action box, where the critics have no data and "
                             "the actor would chase their extrapolation")
        self.policy = policy
        self.gamma, self.tau = gamma, tau
        self.autotune_alpha = autotune_alpha
        self.target_update_every = target_update_every
        # target entropy -|A| in unit action space (the head's log-probs are unit-space densities)
        self.target_entropy = float(-actor.act_dim if target_entropy is None else target_entropy)
        ceiling = actor.act_dim * math.log(2.0)  # the uniform density on the unit box [-1, 1]^|A|
        if autotune_alpha and getattr(actor, "squash", False) and self.target_entropy >= ceiling:
            raise ValueError(f"algo.target_entropy={self.target_entropy:g} cannot be reached: a squashed policy's "
                             f"entropy (unit action space) is below {ceiling:.3g} (|A| log 2, the uniform on the box), "
                             "so alpha would grow without end; use a value below it (default -|A|), or unset it")
        self.critic = QEnsemble(policy.obs_dim, policy.act_dim, num_critics, critic_hidden, critic_activation, critic_layer_norm)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(float(init_alpha)).log(), requires_grad=autotune_alpha)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))
        self.actor_opt = FusedAdam(actor.parameters(), actor_lr)
        self.critic_opt = FusedAdam(self.critic.parameters(), critic_lr)
        self.alpha_opt = FusedAdam([self.log_alpha], alpha_lr) if autotune_alpha else None
        self._actor_params = list(actor.parameters())
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())
        # what the Polyak step moves (subclasses with more critics extend both lists, in the same order)
        self._polyak_online, self._polyak_target = list(self._critic_params), list(self._target_params)
        self._choose_fused_step("SAC", fused, lambda: sac_unsupported_reason(self), lambda: FusedSACStep(self))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"actor": self.actor_opt, "critic": self.critic_opt}
        if self.alpha_opt is not None:
            opts["alpha"] = self.alpha_opt
        return opts

    def critic_loss(self, batch: Batch, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        policy = self.policy
        # Soft Bellman target (eq. 3, with the clipped double-Q minimum of Fujimoto et al. 2018)
        with torch.no_grad():
            next_actions, next_logp = policy.sample(batch.next_obs)
            q_next = self.critic_target(policy.obs_norm(batch.next_obs), policy.to_unit(next_actions)).min(0).values
            target = batch.rewards + self.gamma * (1.0 - batch.terminated) * (q_next - alpha * next_logp)
        # Critic loss (eq. 5): 1/2 (Q_i(s, a) - target)^2, summed over the critics
        q = self.critic(policy.obs_norm(batch.obs), policy.to_unit(batch.actions))  # [E, B]
        return 0.5 * (q - target).square().mean(1).sum(), q.detach().mean()

    def actor_loss(self, obs: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Actor loss (eq. 7): E[alpha log pi(a|s) - min_i Q_i(s, a)]; gradient reaches only the policy
        policy = self.policy
        actions, logp = policy.sample(obs)
        q_pi = self.critic(policy.obs_norm(obs), policy.to_unit(actions), detach=True).min(0).values
        return (alpha * logp - q_pi).mean(), logp.detach()

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self._fused:
            return self._fused_step.update(batch)
        alpha = self.log_alpha.detach().exp()
        critic_loss, q_mean = self._critic_loss(batch, alpha)
        self.critic_opt.apply(torch.autograd.grad(critic_loss, self._critic_params))
        actor_loss, logp = self._actor_loss(batch.obs, alpha)
        self.actor_opt.apply(torch.autograd.grad(actor_loss, self._actor_params))
        metrics = {
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "q_mean": q_mean,
            "entropy": -logp.mean(),
            "alpha": alpha,
        }
        self.temperature_step(logp, metrics)
        self.target_step()
        return metrics

    def critic_warmup(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One critic-only soft TD update, not counted (demos.critic_steps; see Learner.critic_warmup_step)."""
        critic_loss, _ = self._critic_loss(batch, self.log_alpha.detach().exp())
        return self.critic_warmup_step(critic_loss, self._polyak_target, self._polyak_online)

    def temperature_step(self, logp: torch.Tensor, metrics: dict[str, torch.Tensor]) -> None:
        """Tune alpha toward the target entropy (when autotuned), adding ``alpha_loss`` to ``metrics``."""
        if self.alpha_opt is not None:
            # Temperature loss (eq. 18), in log alpha as SB3 and CleanRL take it: -log alpha (log pi(a|s) + target entropy)
            alpha_loss = -(self.log_alpha * (logp + self.target_entropy)).mean()
            self.alpha_opt.apply(torch.autograd.grad(alpha_loss, [self.log_alpha]))
            metrics["alpha_loss"] = alpha_loss.detach()

    def target_step(self) -> None:
        """Count the update; every ``target_update_every`` updates, move the target critics by tau."""
        self.num_updates += 1
        if int(self.num_updates) % self.target_update_every == 0:
            with torch.no_grad():
                polyak_update(self._polyak_target, self._polyak_online, self.tau)
