"""EXPO: expressive base policy + light edit policy, acting with the best action by Q.

Dong et al. 2025, "EXPO: Stable Reinforcement Learning with Expressive Policies" (arXiv:2507.07986).
  * base policy pi_b (any head, typically diffusion or flow): trained only with its imitation loss on
    replay actions (it never sees a Q-gradient, which is what keeps expressive policies stable);
  * edit policy pi_e(delta | s, a): a small tanh-Gaussian that shifts a base action by at most
    ``edit_scale`` of the action half-range toward higher Q, trained SAC-style
        L_e = E[ alpha log pi_e(delta|s,a) - min_i Q_i(s, clip(a + delta)) ],  a ~ pi_b(s)
    with its temperature tuned to a target entropy of -|A|;
  * on-the-fly policy: draw N base actions and their N edits, act (and compute TD targets) with the
    candidate of highest min_i Q_i among those 2N. The TD target draws ``target_samples`` base actions at s'
    (default None: N, the paper's rule; 1: the better of one sample and its edit, faster), see ``__init__``.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from policies.heads import PolicyHead
from policies.heads.gaussian import GaussianHead
from policies.networks import full_precision
from robo_rl.learners.base import Batch, Learner, imitation_gradients, polyak_update
from robo_rl.learners.candidates import CriticSelectPolicy, best, require_sampling_base, sample_together, score
from robo_rl.learners.critics import QEnsemble
from robo_rl.learners.offpolicy_fused import FusedEXPOStep, FusedUpdate, expo_unsupported_reason
from robo_rl.learners.optim import FusedAdam


class EditPolicy(nn.Module):
    """pi_e(delta | s, a): a tanh-Gaussian over edits within +-edit_scale of each action's half-range."""

    def __init__(self, base: PolicyHead, edit_scale: float, hidden: Sequence[int], activation: str) -> None:
        super().__init__()
        span = base.action_scale.cpu().numpy() * edit_scale
        # its input is [normalized obs, unit action]; the base's normalizer is applied before
        from policies.normalizers import ObsNormalizer

        self.head = GaussianHead(base.obs_dim + base.act_dim, -span, span, ObsNormalizer(base.obs_dim + base.act_dim),
                                 hidden, activation, squash=True, state_dependent_std=True)
        # what its errors call it ("the EXPO edit policy's gaussian head produced non-finite actions"): a gaussian
        # base (policy=gaussian) would otherwise be reported in the same words
        self.head.name = "EXPO edit policy's gaussian"
        self.base = [base]  # not a submodule: the base's weights belong to the base

    def _input(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        base = self.base[0]
        return torch.cat([base.obs_norm(obs), base.to_unit(actions)], dim=-1)

    def sample(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head.sample(self._input(obs, actions))

    def act(self, obs: torch.Tensor, actions: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return self.head.act(self._input(obs, actions), deterministic)


class EXPO(FusedUpdate, Learner):
    kind = "off_policy"
    name = "expo"
    loss_functions = ("critic_loss", "td_target")
    _fused_losses = ("td_target",)

    def __init__(
        self,
        policy: PolicyHead,
        gamma: float = 0.99,
        tau: float = 0.005,
        critic_lr: float = 3e-4,
        base_lr: float = 3e-4,
        edit_lr: float = 3e-4,
        alpha_lr: float = 3e-4,
        init_alpha: float = 0.1,
        num_samples: int = 2,
        target_samples: int | None = None,
        edit_scale: float = 0.2,
        edit_hidden: Sequence[int] = (256, 256),
        edit_activation: str = "relu",
        num_critics: int = 2,
        critic_hidden: Sequence[int] = (256, 256),
        critic_activation: str = "relu",
        critic_layer_norm: bool = False,
        fused: str = "auto",
    ) -> None:
        """``fused``: the critic, edit-policy and temperature steps with hand-derived gradients (offpolicy_fused.py;
        auto: where the networks fit it; on: insist; off: autograd), and on that path the base's imitation step too
        where its head writes its gradients out (the flow head's ``imitation_gradients``; other heads: autograd).

        ``target_samples``: base samples per next state in the TD target, each with its edit, the best of them by the
        target critics (None: ``num_samples``, as the agent acts: the paper's rule). One runs the update's flow chain
        on 512 rows instead of 768 at the default two and halves the candidates the target critics score (an update
        ~1.27x faster), but on Hopper it scored lower (README, generative returns), so it is not the default."""
        super().__init__()
        require_sampling_base(policy, "expo", "draws several base actions")
        if num_samples < 1:
            raise ValueError(f"algo.num_samples={num_samples}: must be >= 1 (base samples per state)")
        if target_samples is not None and target_samples < 1:
            raise ValueError(f"algo.target_samples={target_samples}: must be >= 1 (base samples per next state in the "
                             "TD target; null: algo.num_samples)")
        if not 0 < edit_scale <= 2:
            raise ValueError(f"algo.edit_scale={edit_scale}: must be in (0, 2] (the largest edit, as a fraction of "
                             "each action's half-range)")
        self.base = policy
        self.gamma, self.tau = gamma, tau
        self.critic = QEnsemble(policy.obs_dim, policy.act_dim, num_critics, critic_hidden, critic_activation, critic_layer_norm)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.edit = EditPolicy(policy, edit_scale, edit_hidden, edit_activation)
        self.policy = CriticSelectPolicy(policy, self.critic, num_samples, self.edit)
        self.target_policy = CriticSelectPolicy(policy, self.critic_target,
                                                num_samples if target_samples is None else target_samples, self.edit)
        self.log_alpha = nn.Parameter(torch.tensor(float(init_alpha)).log())
        self.target_entropy = float(-policy.act_dim)
        self.critic_opt = FusedAdam(self.critic.parameters(), critic_lr)
        self.base_opt = FusedAdam(policy.parameters(), base_lr)
        self.edit_opt = FusedAdam(self.edit.parameters(), edit_lr)
        self.alpha_opt = FusedAdam([self.log_alpha], alpha_lr)
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())
        self._base_params = list(policy.parameters())
        self._edit_params = list(self.edit.parameters())
        self._choose_fused_step("EXPO", fused, lambda: expo_unsupported_reason(self), lambda: FusedEXPOStep(self),
                                trained=[*self._critic_params, *self._edit_params, self.log_alpha])

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": self.critic_opt, "base": self.base_opt, "edit": self.edit_opt, "alpha": self.alpha_opt}

    def demo_head(self) -> PolicyHead:
        return self.base  # the expressive base imitates; the edit policy starts from scratch

    @torch.no_grad()
    def explore(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy.act(obs, deterministic=False)

    @torch.no_grad()
    def td_target(self, batch: Batch, edit_samples: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The TD target [B] with the on-the-fly policy at s', scored by the target critics, and with
        ``edit_samples`` the edit loss's base samples, one per state of ``batch.obs`` [B, A], drawn in the same
        call of the base as the target's at s' (``sample_together``); else None."""
        base = self.base
        drawn = sample_together(base, (batch.next_obs, self.target_policy.n), (batch.obs, 1)) if edit_samples else None
        candidates = self.target_policy.candidates(batch.next_obs, base_actions=drawn[0] if drawn else None)
        _, q_next = best(candidates, score(self.critic_target, base, batch.next_obs, candidates))
        target = batch.rewards + self.gamma * (1.0 - batch.terminated) * q_next
        return target, full_precision(drawn[1][:, 0]) if drawn else None

    def critic_loss(self, batch: Batch, edit_samples: bool = False) -> tuple[torch.Tensor, ...]:
        """The TD loss and the mean Q; with ``edit_samples``, also the edit loss's base samples (``td_target``)."""
        base = self.base
        target, base_actions = self.td_target(batch, edit_samples)
        q = self.critic(base.obs_norm(batch.obs), base.to_unit(batch.actions))
        loss = 0.5 * (q - target).square().mean(1).sum(), q.detach().mean()
        return (*loss, base_actions) if edit_samples else loss

    def edit_loss(self, obs: torch.Tensor, base_actions: torch.Tensor, alpha: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """The edit policy's SAC-style loss on base samples [B, A] (the base is not differentiated) and the sampled
        edits' log-probabilities."""
        base = self.base
        delta, logp = self.edit.sample(obs, base_actions)
        edited = torch.maximum(torch.minimum(base_actions + delta, base.action_high), base.action_low)
        q_edit = self.critic(base.obs_norm(obs), base.to_unit(edited), detach=True).min(0).values
        return (alpha * logp - q_edit).mean(), logp

    def critic_warmup(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One critic-only TD update, not counted (demos.critic_steps; see Learner.critic_warmup_step)."""
        return self.critic_warmup_step(self._critic_loss(batch)[0], self._target_params, self._critic_params)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        fused = self._fused
        if fused:
            metrics = self._fused_step.update(batch)
        else:
            critic_loss, q_mean, base_actions = self._critic_loss(batch, edit_samples=True)
            self.critic_opt.apply(torch.autograd.grad(critic_loss, self._critic_params))

            alpha = self.log_alpha.detach().exp()
            edit_loss, logp = self.edit_loss(batch.obs, base_actions, alpha)
            self.edit_opt.apply(torch.autograd.grad(edit_loss, self._edit_params))
            alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
            self.alpha_opt.apply(torch.autograd.grad(alpha_loss, [self.log_alpha]))
            metrics = {"critic_loss": critic_loss.detach(), "q_mean": q_mean, "edit_loss": edit_loss.detach(),
                       "alpha": alpha, "edit_entropy": -logp.detach().mean()}

        # base policy: its own supervised loss on replay actions (on the fused path, a flow head's written-out backward)
        base_loss, grads = imitation_gradients(self.base, batch.obs, batch.actions, self._base_params, written_out=fused)
        self.base_opt.apply(grads)
        with torch.no_grad():
            polyak_update(self._target_params, self._critic_params, self.tau)
        return {"critic_loss": metrics["critic_loss"], "q_mean": metrics["q_mean"], "edit_loss": metrics["edit_loss"],
                "base_loss": base_loss.detach(), "alpha": metrics["alpha"], "edit_entropy": metrics["edit_entropy"]}
