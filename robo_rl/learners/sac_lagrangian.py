"""Passivity-aware SAC: Soft Actor-Critic under an expected-cost constraint, solved with a Lagrange multiplier.

    max_pi  E[sum_t gamma^t r_t]  subject to  (1 - gamma_c) E[sum_t gamma_c^t c_t] <= d

with c_t >= 0 a per-step cost the env reports (e.g. the energy a controller injects in one step, so
a passive controller has c = 0) and d the per-step budget. The Lagrangian relaxation (Altman 1999;
SAC-Lagrangian as in Ha et al. 2020, arXiv:2002.08550, and Ray et al. 2019, "Safety Gym") gives a
min-max problem over the policy and a multiplier lambda >= 0:

* a cost critic Q_c (an ensemble, like the reward critic) learns the discounted cost of the current
  policy by TD, without the entropy bonus: y_c = c + gamma_c (1 - done) max_i Q_c,i'(s', a'), a' ~ pi;
* the actor minimizes  alpha log pi(a|s) - min_i Q_i(s, a) + lambda max_i Q_c,i(s, a)  (SAC's eq. 7
  plus the multiplier's penalty); the max over the cost ensemble mirrors SAC's min over the reward
  ensemble: the learner is pessimistic about cost as it is about reward;
* lambda follows projected gradient ascent on the constraint violation, estimated on replay states:
  lambda <- max(0, lambda + lr * ((1 - gamma_c) mean_B max_i Q_c,i(s, pi(s)) - d)).
  This is the usual  lambda + lr' (J_c - d / (1 - gamma_c))  with lr' = lr (1 - gamma_c): measuring the
  violation in per-step cost units keeps ``lagrange_lr`` meaningful whatever ``cost_gamma`` is.

The defaults, gamma_c = 0 and lr = 1, are what made the constraint bind on ContactMaze (README: passivity
study). With gamma_c = 0 the cost critic learns one step's expected cost, so the estimate above is the
per-step cost at replay states, the quantity a per-step budget bounds. With gamma_c = 0.99 (the default
until 2026-12-05) two things kept lambda at 0 for whole 40k-step runs: on a task whose episodes end at a
goal after ~65 steps, (1 - gamma_c) Q_c counts the cost of the remaining episode, not 1 / (1 - gamma_c)
steps of it, and read about a third of the measured 0.07 J per step; and the bootstrapped cost critic was
still climbing at the end of the run. The multiplier's step is per unit of violation in cost units, which
for an energy in joules per step is ~0.01: at lr = 0.01 lambda reached 0.4 in 10k env steps (5k updates),
against the ~1 at which the penalty moved the policy.

It is its own file (not an option inside sac.py) so that sac.py stays the plain reference SAC; it
reuses SAC's reward critic, temperature and target steps unchanged and adds the cost critic, the
multiplier and the penalized actor. The runner selects it with ``safety.passivity_aware=true``.
"""

from __future__ import annotations

import copy
import math
from numbers import Real
from typing import Any, Sequence

import torch

from policies.heads import PolicyHead
from robo_rl.learners.base import CostBatch
from robo_rl.learners.critics import QEnsemble
from robo_rl.learners.optim import FusedAdam
from robo_rl.learners.sac import SAC


class LagrangianSAC(SAC):
    name = "sac_lagrangian"
    loss_functions = ("critic_loss", "cost_critic_loss", "actor_loss")

    def __init__(
        self,
        policy: PolicyHead,
        cost_budget: float = 0.05,
        cost_gamma: float = 0.0,
        lagrange_lr: float = 1.0,
        lagrange_init: float = 0.0,
        cost_num_critics: int = 2,
        cost_critic_hidden: Sequence[int] | None = None,
        cost_critic_lr: float | None = None,
        **sac_options: Any,
    ) -> None:
        """``sac_options`` are SAC's (gamma, critic_hidden, ...); the cost critic copies the reward critic's
        shape and learning rate where ``cost_critic_hidden`` / ``cost_critic_lr`` are None."""
        super().__init__(policy, **sac_options)
        # finite as well, as the config's validation asks: a NaN budget, step size or start (NaN < 0 is False) made
        # lambda NaN at the first update, an infinite step size or start made it inf, and the run stopped an update
        # later on a NaN actor loss (an infinite budget is no constraint: set passivity_aware=false for that)
        settings = {"cost_budget": cost_budget, "cost_gamma": cost_gamma, "lagrange_lr": lagrange_lr,
                    "lagrange_init": lagrange_init}
        if not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in settings.values()) \
                or cost_budget < 0 or not 0 <= cost_gamma < 1 or lagrange_lr <= 0 or lagrange_init < 0:
            raise ValueError("need finite numbers with cost_budget >= 0, 0 <= cost_gamma < 1, lagrange_lr > 0, "
                             "lagrange_init >= 0; got " + ", ".join(f"{k}={v!r}" for k, v in settings.items()))
        self.cost_budget, self.cost_gamma, self.lagrange_lr = float(cost_budget), float(cost_gamma), float(lagrange_lr)
        hidden = tuple(sac_options.get("critic_hidden", (256, 256)) if cost_critic_hidden is None else cost_critic_hidden)
        self.cost_critic = QEnsemble(policy.obs_dim, policy.act_dim, cost_num_critics, hidden,
                                     sac_options.get("critic_activation", "relu"), sac_options.get("critic_layer_norm", False))
        self.cost_critic_target = copy.deepcopy(self.cost_critic).requires_grad_(False)
        # lambda >= 0, a buffer: it moves by projected ascent, not by an optimizer, and is checkpointed with the weights
        self.register_buffer("lagrange", torch.tensor(float(lagrange_init)))
        self.cost_critic_opt = FusedAdam(self.cost_critic.parameters(),
                                         sac_options.get("critic_lr", 3e-4) if cost_critic_lr is None else cost_critic_lr)
        self._cost_params = list(self.cost_critic.parameters())
        self._polyak_online += self._cost_params
        self._polyak_target += list(self.cost_critic_target.parameters())

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**super().optimizers(), "cost_critic": self.cost_critic_opt}

    def cost_critic_loss(self, batch: CostBatch) -> tuple[torch.Tensor, torch.Tensor]:
        policy = self.policy
        # TD target of the policy's discounted cost (no entropy term: the cost is not softened)
        with torch.no_grad():
            next_actions, _ = policy.sample(batch.next_obs)
            qc_next = self.cost_critic_target(policy.obs_norm(batch.next_obs), policy.to_unit(next_actions)).max(0).values
            target = batch.costs + self.cost_gamma * (1.0 - batch.terminated) * qc_next
        qc = self.cost_critic(policy.obs_norm(batch.obs), policy.to_unit(batch.actions))  # [E, B]
        return 0.5 * (qc - target).square().mean(1).sum(), qc.detach().mean()

    def actor_loss(self, obs: torch.Tensor, alpha: torch.Tensor, lagrange: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Lagrangian actor loss: E[alpha log pi(a|s) - min_i Q_i(s, a) + lambda max_i Q_c,i(s, a)]
        policy = self.policy
        actions, logp = policy.sample(obs)
        obs_n, unit = policy.obs_norm(obs), policy.to_unit(actions)
        q_pi = self.critic(obs_n, unit, detach=True).min(0).values
        qc_pi = self.cost_critic(obs_n, unit, detach=True).max(0).values
        return (alpha * logp - q_pi + lagrange * qc_pi).mean(), logp.detach(), qc_pi.detach()

    def critic_warmup(self, batch: CostBatch) -> dict[str, torch.Tensor]:
        """SAC's critic-only update for the reward critics and the cost critics alike (demos.critic_steps)."""
        cost_loss, _ = self._cost_critic_loss(batch)
        self.cost_critic_opt.apply(torch.autograd.grad(cost_loss, self._cost_params))
        return {**super().critic_warmup(batch), "cost_critic_loss": cost_loss.detach()}  # its Polyak step moves both

    def update(self, batch: CostBatch) -> dict[str, torch.Tensor]:
        if not isinstance(batch, CostBatch):
            raise TypeError("LagrangianSAC learns from batches with per-step costs (CostBatch: a replay buffer built "
                            "with costs=True); got a plain Batch. A runner stores costs only with "
                            "safety.passivity_aware=true in its config (robo_rl.build.build_learner then builds this "
                            "learner itself)")
        alpha = self.log_alpha.detach().exp()
        lagrange = self.lagrange.clone()
        critic_loss, q_mean = self._critic_loss(batch, alpha)
        self.critic_opt.apply(torch.autograd.grad(critic_loss, self._critic_params))
        cost_loss, qc_mean = self._cost_critic_loss(batch)
        self.cost_critic_opt.apply(torch.autograd.grad(cost_loss, self._cost_params))
        actor_loss, logp, qc_pi = self._actor_loss(batch.obs, alpha, lagrange)
        self.actor_opt.apply(torch.autograd.grad(actor_loss, self._actor_params))
        # Dual step: projected ascent on the per-step violation (see the module docstring)
        cost_rate = (1.0 - self.cost_gamma) * qc_pi.mean()
        with torch.no_grad():
            self.lagrange.add_(self.lagrange_lr * (cost_rate - self.cost_budget)).clamp_(min=0.0)
        metrics = {
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "q_mean": q_mean,
            "entropy": -logp.mean(),
            "alpha": alpha,
            "cost_critic_loss": cost_loss.detach(),
            "cost_q_mean": qc_mean,
            "cost_rate_estimate": cost_rate,  # (1 - gamma_c) Q_c(s, pi(s)): expected cost per step, vs the budget
            "lagrange_multiplier": lagrange,
        }
        self.temperature_step(logp, metrics)
        self.target_step()
        return metrics
