"""GoRL: decouple optimization from generation (a latent Gaussian policy + a generative decoder).

The policy is ``policies.heads.latent.LatentDecoderHead``: z ~ pi_latent(z|s), a = g(s, z).
Training alternates two timescales:
  * fast: PPO on the latent policy, the decoder frozen inside the "environment" (rollouts store z,
    its log-probability and V(s); the env receives g(s, z));
  * slow, every ``refit_every`` PPO updates: refit the decoder by supervision on the (s, a) pairs
    collected since the last refit, with z from the fixed prior N(0, I) (flow matching or DDPM loss),
    so that under the prior it reproduces what the latent policy learned; then reset the latent
    policy to the prior and continue (the actions it produces are, to the decoder's accuracy, the
    same as before the refit).
A flow decoder starts as the identity on [-1, 1] (its velocity output is initialized to zero), so
the first stage is plain PPO with clipped actions.
"""

from __future__ import annotations

from typing import Any

import torch

from policies.heads import LatentDecoderHead, PolicyHead
from robo_rl.learners.base import Learner
from robo_rl.learners.optim import FusedAdam
from robo_rl.learners.ppo import PPO
from robo_rl.storage.rollout import RolloutBatch


class GoRL(Learner):
    kind = "on_policy"
    name = "gorl"

    def __init__(
        self,
        policy: PolicyHead,
        refit_every: int = 50,
        refit_epochs: int = 5,
        refit_batch_size: int = 256,
        decoder_lr: float = 3e-4,
        dataset_size: int = 200_000,
        reset_latent: bool = True,
        **ppo_options: Any,
    ) -> None:
        super().__init__()
        if not isinstance(policy, LatentDecoderHead):
            raise ValueError(f"algo=gorl optimizes a latent policy and decodes it: use policy=latent (got {policy.name!r})")
        if refit_every < 1 or refit_epochs < 0 or refit_batch_size < 1 or dataset_size < 1:
            raise ValueError("algo.refit_every, refit_batch_size and dataset_size must be >= 1, refit_epochs >= 0")
        self.policy = policy
        self.ppo = PPO(policy.latent, **ppo_options)
        self.gamma, self.gae_lambda = self.ppo.gamma, self.ppo.gae_lambda
        self.refit_every, self.refit_epochs, self.refit_batch_size = refit_every, refit_epochs, refit_batch_size
        self.reset_latent = reset_latent
        self.decoder_opt = FusedAdam(policy.decoder.parameters(), decoder_lr)
        self._decoder_params = list(policy.decoder.parameters())
        if policy.decoder.name == "flow":  # identity decoder at the start: zero velocity
            with torch.no_grad():
                policy.decoder.net.out.weight.zero_()
                policy.decoder.net.out.bias.zero_()
        self.register_buffer("data_obs", torch.zeros(dataset_size, policy.obs_dim))
        self.register_buffer("data_actions", torch.zeros(dataset_size, policy.act_dim))
        self.register_buffer("data_size", torch.zeros((), dtype=torch.int64))
        self.register_buffer("data_pos", torch.zeros((), dtype=torch.int64))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))
        self.register_buffer("num_refits", torch.zeros((), dtype=torch.int64))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"ppo": self.ppo.opt, "decoder": self.decoder_opt}

    # -- what the on-policy runner calls -----------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.ppo.act(obs)  # latent z, log pi(z|s), V(s)

    def env_action(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.policy.decode(obs, actions)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.ppo.value(obs)

    def set_lr(self, lr: float) -> None:
        self.ppo.set_lr(lr)

    def update(self, rollout: RolloutBatch) -> dict[str, torch.Tensor]:
        # the decoder was frozen during the rollout, so decoding its latents gives the executed actions
        self._store(rollout.obs, self.policy.decode(rollout.obs, rollout.actions))
        metrics = self.ppo.update(rollout)
        self.num_updates += 1
        if int(self.num_updates) % self.refit_every == 0:
            metrics.update(self.refit())
        return metrics

    # -- the slow timescale ------------------------------------------------------------------------
    def _store(self, obs: torch.Tensor, actions: torch.Tensor) -> None:
        n, cap = obs.shape[0], self.data_obs.shape[0]
        idx = (torch.arange(n, device=obs.device) + self.data_pos) % cap
        self.data_obs[idx] = obs
        self.data_actions[idx] = actions
        self.data_pos.copy_((self.data_pos + n) % cap)
        self.data_size.copy_(torch.clamp(self.data_size + n, max=cap))

    def refit(self) -> dict[str, torch.Tensor]:
        """Fit the decoder to the collected (s, a) under the N(0, I) prior, then reset the latent policy."""
        size = int(self.data_size)
        losses = []
        for _ in range(self.refit_epochs):
            for idx in torch.randperm(size).split(self.refit_batch_size):
                loss = self.policy.imitation_loss(self.data_obs[idx], self.data_actions[idx])
                self.decoder_opt.apply(torch.autograd.grad(loss, self._decoder_params))
                losses.append(loss.detach())
        if self.reset_latent:
            self.policy.reset_latent_to_prior()
            for p in self.policy.latent.parameters():  # stale Adam moments for the reset parameters
                state = self.ppo.opt.state.get(p, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        state[key].zero_()
        self.data_size.zero_()
        self.data_pos.zero_()
        self.num_refits += 1
        return {"decoder_loss": torch.stack(losses).mean() if losses else torch.tensor(0.0),
                "refits": self.num_refits.float()}

