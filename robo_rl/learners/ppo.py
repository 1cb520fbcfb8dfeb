"""Proximal Policy Optimization with clipped surrogate, GAE and a separate value network.

Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (arXiv:1707.06347), eq. 7 and 9,
with the implementation details of SB3 / CleanRL: per-minibatch advantage normalization,
optional value clipping, global gradient-norm clipping, linear learning-rate annealing.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from policies.heads import PolicyHead, require_capabilities
from policies.heads.gaussian import GaussianHead
from policies.networks import mlp, orthogonal_init_
from robo_rl.learners.base import Learner, fused_step_fits
from robo_rl.learners.optim import FusedAdam
from robo_rl.storage.rollout import RolloutBatch


class PPO(Learner):
    kind = "on_policy"
    loss_functions = ("ppo_loss",)
    name = "ppo"
    needs = {"tractable_log_prob": "the probability ratio pi(a|s) / pi_old(a|s) needs log pi"}

    def __init__(
        self,
        policy: PolicyHead,
        lr: float = 3e-4,
        epochs: int = 10,
        minibatch_size: int = 64,
        clip_range: float = 0.2,
        clip_range_vf: float | None = None,
        vf_coef: float = 0.5,
        ent_coef: float = 0.0,
        max_grad_norm: float = 0.5,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        normalize_advantage: bool = True,
        target_kl: float | None = None,
        value_hidden: Sequence[int] = (64, 64),
        value_activation: str = "tanh",
        ortho_init: bool = True,
        fused: str = "auto",
        prior_kl_coef: float = 0.0,
    ) -> None:
        """``prior_kl_coef``: weight of a penalty KL(pi(.|s) || N(0, diag(prior_scale^2))) on the policy's
        (unsquashed Gaussian) distribution, averaged over states; GoRL keeps its latent policy near the decoder's
        prior with it (``prior_scale``: a [A] tensor GoRL sets to its latent's scale, None: 1)."""
        super().__init__()
        require_capabilities(self.name, policy, self.needs)
        if prior_kl_coef < 0:
            raise ValueError(f"prior_kl_coef must be >= 0, got {prior_kl_coef}")
        if prior_kl_coef > 0 and (not isinstance(policy, GaussianHead) or policy.squash):
            raise ValueError("a KL penalty toward N(0, I) needs an unsquashed Gaussian policy (the latent of algo=gorl)")
        self.prior_kl_coef = float(prior_kl_coef)
        self.prior_scale: torch.Tensor | None = None
        self.policy = policy
        self.value_net = mlp(policy.obs_dim, value_hidden, 1, value_activation)
        if ortho_init:
            orthogonal_init_(self.value_net, out_gain=1.0)
        self.lr = lr
        self.epochs, self.minibatch_size = epochs, minibatch_size
        self.clip_range, self.clip_range_vf = clip_range, clip_range_vf
        self.vf_coef, self.ent_coef = vf_coef, ent_coef
        self.max_grad_norm = max_grad_norm
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.normalize_advantage = normalize_advantage
        self.target_kl = target_kl
        self.opt = FusedAdam(list(policy.parameters()) + list(self.value_net.parameters()), lr, eps=1e-5)
        self._params = [p for g in self.opt.param_groups for p in g["params"]]
        # The fused CPU step (ppo_fused.py) computes the same update several times faster; "auto"
        # uses it where it applies, "on" insists (and says why not), "off" always uses autograd.
        if fused not in ("auto", "on", "off"):
            raise ValueError(f"fused must be auto, on or off, got {fused!r}")
        self.fused = fused
        self._fused_step = None
        if fused != "off":
            from robo_rl.learners.ppo_fused import FusedPPOStep, unsupported_reason

            reason = unsupported_reason(self)
            if reason is None:
                self._fused_step = FusedPPOStep(self)
            elif fused == "on":
                raise ValueError(f"algo.fused=on: the fused PPO step {reason}; use algo.fused=auto")

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value_net(self.policy.obs_norm(obs)).squeeze(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sampled actions (unclipped), their log-probabilities and the values V(s), for a rollout."""
        if self._fused:
            return self._fused_step.act(obs)
        actions, log_probs = self.policy.sample(obs)
        if getattr(self.policy, "squash", False):
            # the update recomputes log pi from the stored action, whose tanh saturates in float32 (|x| > ~7 maps
            # to the bound, and log_prob clamps it back): store that same value, so the first epoch's ratio is 1
            log_probs = self.policy.log_prob(obs, actions)
        return actions, log_probs, self.value(obs)

    def update(self, rollout: RolloutBatch) -> dict[str, torch.Tensor]:
        if self._fused:
            metrics = self._fused_step.run(rollout)
        else:
            metrics = self._autograd_update(rollout)
        var_y = rollout.returns.var()
        metrics["explained_variance"] = 1.0 - (rollout.returns - rollout.values).var() / var_y.clamp_min(1e-8)
        metrics["lr"] = torch.tensor(self.opt.param_groups[0]["lr"], device=var_y.device)
        return metrics

    def compile_update(self, **options: Any) -> str | None:
        compiled = super().compile_update(**options)
        return None if self._fused else compiled  # the fused numpy step runs: the compiled loss waits for autograd

    @property
    def _fused(self) -> bool:
        """Whether act and update take the fused CPU step: chosen at construction, and left for the autograd path when
        the learner moved off the CPU, was cast from float32 or had a parameter frozen since (``PPO(head).to("cuda")``:
        numpy cannot read a GPU tensor; ``.double()``: the step computes in float32; ``fused="on"`` refuses each, see
        ``fused_step_fits``). ``compile_update`` (compile=true) leaves it: it is numpy, which torch.compile does not
        compile, and faster on the CPU than the compiled loss, which serves the autograd path."""
        if self._fused_step is None:
            return False
        return fused_step_fits(self.value_net[0].weight, self.fused, "PPO", self._params)

    def _autograd_update(self, rollout: RolloutBatch) -> dict[str, torch.Tensor]:
        size = rollout.obs.shape[0]
        sums: dict[str, torch.Tensor] = {}
        count = applied = 0
        stop = False
        for _ in range(self.epochs):
            for idx in torch.randperm(size).split(self.minibatch_size):
                m = self._minibatch_step(RolloutBatch(*(x[idx] for x in rollout)))
                stop = "grad_norm" not in m  # stopped on KL before this minibatch's step
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                applied += not stop
                if stop:
                    break
            if stop:
                break
        metrics = {k: v / (applied if k == "grad_norm" else count) for k, v in sums.items()}
        metrics.setdefault("grad_norm", torch.zeros(()))  # no step taken: the first minibatch passed the KL limit
        metrics["minibatches"] = torch.tensor(float(applied))
        return metrics

    def ppo_loss(self, mb: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        prior_kl = None
        if self.prior_kl_coef > 0:
            policy = self.policy
            mean, log_std = policy.distribution(mb.obs)
            log_probs, entropy = policy._log_prob(mean, log_std, mb.actions), policy._entropy(mean, log_std)
            # KL(N(mean, std^2) || N(0, s^2)) per dimension: ((std^2 + mean^2) / s^2 - 1) / 2 - log std + log s
            if self.prior_scale is None:
                prior_kl = (0.5 * ((2.0 * log_std).exp() + mean.square() - 1.0) - log_std).sum(-1).mean()
            else:
                s2 = self.prior_scale.square()
                prior_kl = (0.5 * (((2.0 * log_std).exp() + mean.square()) / s2 - 1.0) - log_std
                            + self.prior_scale.log()).sum(-1).mean()
        else:
            log_probs, entropy = self.policy.evaluate_actions(mb.obs, mb.actions)
        values = self.value(mb.obs)
        adv = mb.advantages
        if self.normalize_advantage and adv.numel() > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        # Clipped surrogate objective (eq. 7)
        log_ratio = log_probs - mb.log_probs
        ratio = log_ratio.exp()
        policy_loss = -torch.min(adv * ratio, adv * ratio.clamp(1.0 - self.clip_range, 1.0 + self.clip_range)).mean()
        # Value loss, optionally clipped around the values the rollout saw
        if self.clip_range_vf is not None:
            values = mb.values + (values - mb.values).clamp(-self.clip_range_vf, self.clip_range_vf)
        value_loss = (mb.returns - values).square().mean()
        entropy_mean = entropy.mean()
        # Combined objective (eq. 9), minimized
        loss = policy_loss + self.vf_coef * value_loss - self.ent_coef * entropy_mean
        if prior_kl is not None:
            loss = loss + self.prior_kl_coef * prior_kl
        with torch.no_grad():
            stats = {
                "policy_loss": policy_loss.detach(),
                "value_loss": value_loss.detach(),
                "entropy": entropy_mean.detach(),
                "approx_kl": ((ratio - 1.0) - log_ratio).mean(),  # Schulman's low-variance KL estimator
                "clip_fraction": ((ratio - 1.0).abs() > self.clip_range).float().mean(),
            }
            if prior_kl is not None:
                stats["prior_kl"] = prior_kl.detach()
        return loss, stats

    def _minibatch_step(self, mb: RolloutBatch) -> dict[str, torch.Tensor]:
        loss, stats = self._ppo_loss(mb)
        if self.target_kl is not None and float(stats["approx_kl"]) > 1.5 * self.target_kl:
            # The KL is measured before the step (the rollout policy vs the current one): past the
            # limit, stop without taking this minibatch's step (as SB3 and Spinning Up do).
            return stats
        grads = list(torch.autograd.grad(loss, self._params))
        # Global gradient-norm clipping over policy and value parameters
        grad_norm = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))
        torch._foreach_mul_(grads, (self.max_grad_norm / (grad_norm + 1e-6)).clamp(max=1.0))
        self.opt.apply(grads)
        stats["grad_norm"] = grad_norm
        return stats
