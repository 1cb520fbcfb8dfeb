"""PA-RL: policy-agnostic RL (Mark et al. 2024, "Policy Agnostic RL", arXiv:2412.06685).

Any policy head works, as long as it can sample and has a supervised loss: the learner never
differentiates through the policy. Per update:

  1. critic: TD target y = r + g (1 - d) max_j min_i Q'_i(s', a_j) over ``target_candidates`` policy
     samples a_j ~ pi(.|s'). The paper's target takes the action the agent would take, the best of
     the M it acts with; robo-rl's default is one sample (no max): the max over M noisy estimates
     overestimated Q on Hopper, with returns falling while Q rose (README);
  2. action optimization (sec. 4): sample M actions at s, keep the top k by Q ("global"), then take
     G gradient-ascent steps on min_i Q_i(s, a) within the action bounds ("local");
  3. policy: distill the optimized actions with the head's own imitation loss (Gaussian NLL,
     diffusion epsilon-MSE, flow-matching MSE, ...).
It acts with the best of M samples by Q. The policy part (2-3) runs every ``policy_update_every``
updates: it is the costly part with a generative head.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from policies.heads import PolicyHead
from policies.networks import full_precision
from robo_rl.learners.base import Batch, Learner, imitation_gradients, polyak_update
from robo_rl.learners.candidates import (CriticSelectPolicy, best, require_sampling_base, sample_candidates,
                                         sample_together, score)
from robo_rl.learners.critics import QEnsemble
from robo_rl.learners.optim import FusedAdam


class PARL(Learner):
    kind = "off_policy"
    name = "parl"
    loss_functions = ("critic_loss",)

    def __init__(
        self,
        policy: PolicyHead,
        gamma: float = 0.99,
        tau: float = 0.005,
        critic_lr: float = 3e-4,
        policy_lr: float = 3e-4,
        num_candidates: int = 4,
        top_k: int = 1,
        grad_steps: int = 3,
        action_lr: float = 0.05,
        policy_update_every: int = 3,
        num_critics: int = 2,
        critic_hidden: Sequence[int] = (256, 256),
        critic_activation: str = "relu",
        critic_layer_norm: bool = False,
        target_candidates: int | None = 1,
    ) -> None:
        """``target_candidates``: policy samples at s' in the TD target, the best by the target critics
        (None: ``num_candidates``, the action the agent would take, as in the paper)."""
        super().__init__()
        require_sampling_base(policy, "parl", "chooses among sampled actions")
        if num_candidates < 1 or not 1 <= top_k <= num_candidates:
            raise ValueError(f"algo.num_candidates={num_candidates}, algo.top_k={top_k}: need 1 <= top_k <= num_candidates")
        if target_candidates is not None and target_candidates < 1:
            raise ValueError(f"algo.target_candidates={target_candidates}: need >= 1 (null: num_candidates)")
        for key, value, ok, rule in (("grad_steps", grad_steps, grad_steps >= 0, ">= 0"),
                                     ("action_lr", action_lr, action_lr >= 0, ">= 0 (0: no local optimization)"),
                                     ("policy_update_every", policy_update_every, policy_update_every >= 1, ">= 1")):
            if not ok:
                raise ValueError(f"algo.{key}={value}: must be {rule}")
        self.head = policy
        self.gamma, self.tau = gamma, tau
        self.m, self.top_k, self.grad_steps, self.action_lr = num_candidates, top_k, grad_steps, action_lr
        self.m_target = num_candidates if target_candidates is None else target_candidates
        self.policy_update_every = policy_update_every
        self.critic = QEnsemble(policy.obs_dim, policy.act_dim, num_critics, critic_hidden, critic_activation, critic_layer_norm)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.policy = CriticSelectPolicy(policy, self.critic, num_candidates)  # acts with the best sample by Q
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))
        self.critic_opt = FusedAdam(self.critic.parameters(), critic_lr)
        self.policy_opt = FusedAdam(policy.parameters(), policy_lr)
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())
        self._policy_params = list(policy.parameters())

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": self.critic_opt, "policy": self.policy_opt}

    def demo_head(self) -> PolicyHead:
        return self.head

    def critic_loss(self, batch: Batch, policy_samples: bool = False) -> tuple[torch.Tensor, ...]:
        """The TD loss and the mean Q. With ``policy_samples``, also the policy update's M candidates at each state of
        ``batch.obs`` [B, M, A], drawn in the same call of the head as the TD target's at s' (``sample_together``)."""
        policy = self.head
        with torch.no_grad():
            if policy_samples:
                candidates, drawn = sample_together(policy, (batch.next_obs, self.m_target), (batch.obs, self.m))
            else:
                candidates, drawn = sample_candidates(policy, batch.next_obs, self.m_target), None
            _, q_next = best(candidates, score(self.critic_target, policy, batch.next_obs, candidates))
            target = batch.rewards + self.gamma * (1.0 - batch.terminated) * q_next
        q = self.critic(policy.obs_norm(batch.obs), policy.to_unit(batch.actions))
        loss = 0.5 * (q - target).square().mean(1).sum(), q.detach().mean()
        return (*loss, full_precision(drawn)) if drawn is not None else loss

    def optimize_actions(self, obs: torch.Tensor, candidates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Global (top-k of M samples) then local (G gradient steps on Q) optimization: [B*k, A], states [B*k].
        ``candidates``: the M samples [B, M, A] if the caller drew them (``critic_loss``)."""
        policy = self.head
        with torch.no_grad():
            if candidates is None:
                candidates = sample_candidates(policy, obs, self.m)
            scores = score(self.critic, policy, obs, candidates)
            top = scores.topk(self.top_k, dim=1).indices  # [B, k]
            rows = torch.arange(obs.shape[0], device=obs.device)[:, None]
            unit = policy.to_unit(candidates[rows, top]).reshape(-1, policy.act_dim)
        states = obs.repeat_interleave(self.top_k, dim=0)
        return policy.from_unit(self.ascend_q(states, unit)), states

    def ascend_q(self, states: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        """G steps of gradient ascent on min_i Q_i(s, a) over unit-scale actions, kept in [-1, 1]."""
        obs_n = self.head.obs_norm(states)
        for _ in range(self.grad_steps):
            unit = unit.detach().requires_grad_(True)
            q = self.critic(obs_n, unit, detach=True).min(0).values
            (grad,) = torch.autograd.grad(q.sum(), unit)
            unit = (unit + self.action_lr * grad).clamp(-1.0, 1.0)
        return unit.detach()

    def critic_warmup(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One critic-only TD update, not counted (demos.critic_steps; see Learner.critic_warmup_step)."""
        return self.critic_warmup_step(self._critic_loss(batch)[0], self._target_params, self._critic_params)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.num_updates += 1
        policy_update = int(self.num_updates) % self.policy_update_every == 0
        critic_loss, q_mean, *drawn = self._critic_loss(batch, policy_samples=policy_update)
        self.critic_opt.apply(torch.autograd.grad(critic_loss, self._critic_params))
        metrics = {"critic_loss": critic_loss.detach(), "q_mean": q_mean}
        if policy_update:  # (its candidates drawn before the critic's step, scored after it)
            actions, states = self.optimize_actions(batch.obs, *drawn)
            # (a flow head's written-out backward, where it fits: the same loss and noise draws as autograd's)
            policy_loss, grads = imitation_gradients(self.head, states, actions, self._policy_params)
            self.policy_opt.apply(grads)
            metrics["policy_loss"] = policy_loss.detach()
        with torch.no_grad():
            polyak_update(self._target_params, self._critic_params, self.tau)
        return metrics
