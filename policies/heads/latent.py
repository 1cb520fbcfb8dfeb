"""Latent-decoder head (GoRL): a Gaussian policy over a latent z, decoded to actions by a generative model.

    z ~ pi_latent(z | s)        a tractable diagonal Gaussian, optimized by PPO (or SAC)
    a = g(s, z)                 a conditional flow or DDIM decoder whose input noise is z

The decoder is fitted by supervision on (s, a) pairs with z drawn from the fixed prior N(0, I)
(its ``imitation_loss``), so under the prior it reproduces the behaviour it was fitted on; the
latent policy then moves z to where the decoder produces better actions. Decoding is deterministic
given z, which keeps exports reproducible.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from policies.heads.base import PolicyHead
from policies.heads.diffusion import DiffusionHead
from policies.heads.flow import FlowHead
from policies.heads.gaussian import GaussianHead
from policies.normalizers import ObsNormalizer

DECODERS = {"flow": FlowHead, "diffusion": DiffusionHead}


class LatentDecoderHead(PolicyHead):
    name = "latent"
    reparameterized = False
    tractable_log_prob = False  # in action space; the latent policy's log-probability is tractable

    def __init__(self, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray, obs_norm: ObsNormalizer,
                 hidden_sizes: Sequence[int] = (64, 64), activation: str = "tanh", decoder: str = "flow",
                 decoder_hidden: Sequence[int] = (256, 256, 256), decoder_steps: int = 4, latent_limit: float = 3.0,
                 log_std_init: float = 0.0, ortho_init: bool = True, **_: Any) -> None:
        super().__init__(obs_dim, action_low, action_high, obs_norm)
        if decoder not in DECODERS:
            raise ValueError(f"policy.decoder={decoder!r}: choose one of {', '.join(DECODERS)}")
        options = {"steps": decoder_steps} if decoder == "flow" else {"inference_steps": decoder_steps, "scheduler": "ddim"}
        self.decoder = DECODERS[decoder](obs_dim, action_low, action_high, obs_norm, decoder_hidden, "mish", **options)
        z_dim = self.decoder.noise_shape(1)[1]
        limit = float(latent_limit)
        # the latent policy: unsquashed Gaussian, z clipped to +-latent_limit standard deviations of the prior
        self.latent = GaussianHead(obs_dim, -np.full(z_dim, limit), np.full(z_dim, limit), obs_norm, hidden_sizes,
                                   activation, squash=False, state_dependent_std=False, log_std_init=log_std_init,
                                   ortho_init=ortho_init)
        self.z_dim = z_dim

    @torch.no_grad()
    def decode(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Env-unit actions [B, A] for latents z [B, z_dim]."""
        return self.decoder.from_unit(self.decoder.generate(obs, self.latent.clip_action(z)))[:, 0]

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return self.decode(obs, self.latent.act(obs, deterministic))

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.act(obs), None

    def imitation_loss(self, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's loss under the N(0, I) prior: GoRL's refit."""
        return self.decoder.imitation_loss(obs, actions, weights)

    def reset_latent_to_prior(self) -> None:
        """Make pi_latent(z|s) = N(0, I) for every s (after a decoder refit, GoRL starts again from the prior)."""
        with torch.no_grad():
            last = [m for m in self.latent.net if isinstance(m, torch.nn.Linear)][-1]
            last.weight.zero_()
            last.bias.zero_()
            self.latent.log_std.zero_()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.act(obs, deterministic=True)
