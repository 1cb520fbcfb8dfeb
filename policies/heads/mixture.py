"""Gaussian mixture head: K diagonal Gaussians with state-dependent weights, exact log-probability.

    log pi(x|s) = logsumexp_k [ log w_k(s) + log N(x; mu_k(s), sigma_k(s)^2) ]
and, squashed into the bounds with a = tanh(x) (as the Gaussian head), minus sum_i log(1 - tanh(x_i)^2),
a term the components share; unsquashed, the mixture is over the box's unit scale (``unit_actions``, as the
Gaussian head). Sampling picks a component, then samples it: the draw is not
differentiable through the choice, so the head is not reparameterized (PPO uses its log-probability;
EXPO and PA-RL its imitation loss, which is the negative log-likelihood).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from policies.heads.base import PolicyHead, count_option
from policies.heads.gaussian import LOG_STD_MAX, LOG_STD_MIN, env_actions, gaussian_variable, tanh_log_det
from policies.networks import mlp, orthogonal_init_
from policies.normalizers import ObsNormalizer

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class MixtureHead(PolicyHead):
    name = "mixture"
    tractable_log_prob = True
    reparameterized = False

    def __init__(self, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray, obs_norm: ObsNormalizer,
                 hidden_sizes: Sequence[int] = (256, 256), activation: str = "relu", components: int = 5,
                 squash: bool = True, ortho_init: bool = False, unit_actions: bool = True) -> None:
        super().__init__(obs_dim, action_low, action_high, obs_norm)
        self.k = count_option("components", components, 1, "a mixture needs at least one component (a whole number)")
        self.squash = squash
        self.unit_actions = unit_actions  # unsquashed: over the box's unit scale, not env units (see GaussianHead)
        self.net = mlp(obs_dim, hidden_sizes, self.k * (1 + 2 * self.act_dim), activation)
        if ortho_init:
            orthogonal_init_(self.net, out_gain=0.01)
        with torch.no_grad():  # spread the initial component means so the modes start apart
            last = [m for m in self.net if isinstance(m, torch.nn.Linear)][-1]
            means = last.bias[self.k:self.k + self.k * self.act_dim].view(self.k, self.act_dim)
            spread = torch.linspace(-0.5, 0.5, self.k) if self.k > 1 else torch.zeros(1)  # one component: centred
            means.copy_(spread[:, None].expand(self.k, self.act_dim))

    def components(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log-weights [B, K], means [B, K, A], log-stds [B, K, A]."""
        h = self.net(self.obs_norm(obs))
        b, k, a = h.shape[0], self.k, self.act_dim
        logits, means, log_stds = h[:, :k], h[:, k:k + k * a], h[:, k + k * a:]
        return (torch.log_softmax(logits, dim=-1), means.reshape(b, k, a),
                log_stds.reshape(b, k, a).clamp(LOG_STD_MIN, LOG_STD_MAX))

    def _log_prob_x(self, log_w: torch.Tensor, means: torch.Tensor, log_stds: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        z = (x[:, None, :] - means) * torch.exp(-log_stds)
        per_component = (-0.5 * z.square() - log_stds).sum(-1) - self.act_dim * _HALF_LOG_2PI
        logp = torch.logsumexp(log_w + per_component, dim=-1)
        return logp - tanh_log_det(x) if self.squash else logp

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return env_actions(self, x) if self.squash else self.clip_action(env_actions(self, x))

    def _pick(self, log_w: torch.Tensor) -> torch.Tensor:
        """A component per row [B], drawn by weight."""
        try:  # multinomial reads the weights back to validate them (one sync) and refuses NaN/Inf
            return torch.multinomial(log_w.exp(), 1).squeeze(-1)
        except RuntimeError:
            if bool(torch.isfinite(log_w).all()):
                raise
            raise FloatingPointError(f"{self.described} produced non-finite mixture weights "
                                     "(diverged weights?)") from None

    def _draw(self, log_w: torch.Tensor, means: torch.Tensor, log_stds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, A] drawn from the mixture (differentiable given the component) and the drawn component's log-weight [B]."""
        pick = self._pick(log_w)
        rows = torch.arange(log_w.shape[0], device=log_w.device)
        return means[rows, pick] + log_stds[rows, pick].exp() * torch.randn_like(means[:, 0]), log_w[rows, pick]

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_w, means, log_stds = self.components(self.observations(obs))
        x, _ = self._draw(log_w, means, log_stds)
        return env_actions(self, x), self._log_prob_x(log_w, means, log_stds, x)

    def _entropy(self, log_w: torch.Tensor, means: torch.Tensor, log_stds: torch.Tensor) -> torch.Tensor:
        """A one-sample estimate of the entropy [B], -log pi(x|s) (a mixture has no closed form), whose gradient is
        the entropy's in expectation: the component draw is not differentiable, so the weights' share of the
        gradient, -E[log pi(x|s) grad log w_k], enters as a score-function term (zero in value), with the other
        rows' mean log-probability as its baseline. Without it the bonus's gradient w.r.t. the weights averaged to
        zero: PPO's ent_coef could not keep the components from collapsing onto one."""
        x, chosen = self._draw(log_w, means, log_stds)
        logp = self._log_prob_x(log_w, means, log_stds, x)
        n, held = logp.shape[0], logp.detach()
        baseline = (held.sum() - held) / (n - 1) if n > 1 else torch.zeros_like(held)  # leave-one-out: unbiased
        return -logp - (held - baseline) * (chosen - chosen.detach())

    def entropy(self, obs: torch.Tensor) -> torch.Tensor:
        return self._entropy(*self.components(self.observations(obs)))

    def evaluate_actions(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obs, actions = self.paired(obs, actions)
        parts = self.components(obs)  # one forward pass for both
        return self._log_prob_x(*parts, gaussian_variable(self, actions)), self._entropy(*parts)

    def _mode(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean of the heaviest component (a mode) as an action [B, A], and that component's log-weight [B]."""
        log_w, means, _ = self.components(obs)
        top, pick = log_w.max(-1)
        return self._out(means[torch.arange(obs.shape[0], device=obs.device), pick]), top

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        obs = self.observations(obs)
        if not deterministic:  # (a non-finite weight already failed the draw)
            try:
                actions = self.sample(obs)[0]
            except FloatingPointError:
                raise self.non_finite_error("mixture weights", obs) from None
            return self.checked(actions if self.squash else self.clip_action(actions), obs=obs)
        actions, top = self._mode(obs)
        # the weight too: NaN logits alone would still pick a finite mean, and argmax would not say so
        return self.checked(actions, also=top, what="actions or mixture weights", obs=obs)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        obs, actions = self.paired(obs, actions)
        return self._log_prob_x(*self.components(obs), gaussian_variable(self, actions))

    def imitation_loss(self, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        nll = -self.log_prob(obs, actions)
        return nll.mean() if weights is None else (nll * weights).sum() / weights.sum().clamp_min(1e-8)

    @torch.no_grad()
    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action, what an export computes (unchecked: see ``PolicyHead.checked``)."""
        return self._mode(obs)[0]
