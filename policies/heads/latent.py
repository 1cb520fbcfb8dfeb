"""Latent-decoder head (GoRL): a Gaussian policy over a latent z, decoded to actions by a generative model.

    z ~ pi_latent(z | s)        a tractable diagonal Gaussian, optimized by PPO (or SAC)
    a = g(s, z)                 a conditional flow or DDIM decoder whose input noise is z

The prior is the latent policy's reset distribution, and the decoder is fitted from it:
  * PPO (algo=gorl): an unsquashed Gaussian with a state-independent std, z clipped to
    +-latent_limit (default 3); prior N(0, I), decoder flow or DDIM.
  * SAC (algo=gorl_sac): a tanh-squashed Gaussian with a state-dependent std (``squash``,
    ``state_dependent_std``), so its log-probability is exact and reparameterized; z = L tanh(x),
    L = latent_limit (default 1); prior x ~ N(0, I), i.e. z = L tanh(N(0, I)); a flow decoder
    (flow matching transports this source as well as a Gaussian one; DDIM's chain assumes Gaussian
    noise). With L = 1 the initial identity decoder makes the first stage exactly SAC's tanh-Gaussian.

The decoder's input is z = u / latent_scale of the latent policy's variable u (an unsquashed latent; the
scale is 1 until a GoRL reset keeps the latent's std, see ``reset_latent_to_prior``), clipped as above.

The decoder is fitted by supervision on (s, a) pairs with z drawn from the fixed prior N(0, I)
(its ``imitation_loss``), so under the prior it reproduces the behaviour it was fitted on; the
latent policy then moves z to where the decoder produces better actions. Decoding is deterministic
given z, which keeps exports reproducible.
"""

from __future__ import annotations

import copy
import inspect
from typing import Sequence

import numpy as np
import torch

from policies.heads.base import PolicyHead
from policies.heads.diffusion import DiffusionHead
from policies.heads.flow import FlowHead
from policies.heads.gaussian import GaussianHead, env_actions
from policies.normalizers import ObsNormalizer

DECODERS = {"flow": FlowHead, "diffusion": DiffusionHead}


class LatentDecoderHead(PolicyHead):
    name = "latent"
    reparameterized = False
    tractable_log_prob = False  # in action space; the latent policy's log-probability is tractable

    def __init__(self, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray, obs_norm: ObsNormalizer,
                 hidden_sizes: Sequence[int] = (64, 64), activation: str = "tanh", decoder: str = "flow",
                 decoder_hidden: Sequence[int] = (256, 256, 256), decoder_steps: int = 4, latent_limit: float | None = None,
                 log_std_init: float = 0.0, ortho_init: bool = True, squash: bool = False,
                 state_dependent_std: bool = False) -> None:
        super().__init__(obs_dim, action_low, action_high, obs_norm)
        if decoder not in DECODERS:
            raise ValueError(f"policy.decoder={decoder!r}: choose one of {', '.join(DECODERS)}")
        options = {"steps": decoder_steps} if decoder == "flow" else {"inference_steps": decoder_steps, "scheduler": "ddim"}
        timesteps = inspect.signature(DiffusionHead.__init__).parameters["train_steps"].default  # not a key here
        if decoder == "diffusion" and isinstance(decoder_steps, int) and decoder_steps > timesteps:
            # (the diffusion head's own message named policy.train_steps, which the latent head does not have)
            raise ValueError(f"policy.decoder_steps={decoder_steps}: the diffusion decoder samples a subset of its "
                             f"{timesteps} training timesteps (a fixed number), so use decoder_steps <= {timesteps}")
        try:
            self.decoder = DECODERS[decoder](obs_dim, action_low, action_high, obs_norm, decoder_hidden, "mish", **options)
        except ValueError as exc:  # the decoder's own keys are decoder_steps and decoder_hidden here
            raise ValueError(str(exc).replace("policy.inference_steps=", "policy.decoder_steps=")
                             .replace("use inference_steps", "use decoder_steps")
                             .replace("or policy=flow", "or policy.decoder=flow")
                             .replace("policy.steps=", "policy.decoder_steps=")
                             .replace("policy.hidden_sizes=", "policy.decoder_hidden=")) from None
        z_dim = self.decoder.noise_shape(1)[1]
        if squash and decoder != "flow":
            raise ValueError("a squashed latent (algo=gorl_sac) needs policy.decoder=flow: DDIM's chain assumes "
                             "Gaussian input noise, the squashed latent prior is not")
        limit = float(latent_limit if latent_limit is not None else (1.0 if squash else 3.0))
        if not limit > 0:
            raise ValueError(f"policy.latent_limit={latent_limit} must be > 0 (prior standard deviations)")
        # the latent policy over z in +-latent_limit standard deviations of the prior (clipped, or squashed)
        self.latent = GaussianHead(obs_dim, -np.full(z_dim, limit), np.full(z_dim, limit), obs_norm, hidden_sizes,
                                   activation, squash=squash, state_dependent_std=state_dependent_std,
                                   log_std_init=log_std_init, ortho_init=ortho_init,
                                   unit_actions=False)  # z is in the prior's standard deviations already
        self.latent.check_actions = False  # decode() checks the action, and a NaN z decodes to a NaN action
        self.z_dim, self.latent_limit = z_dim, limit
        # the decoder reads z = u / latent_scale of the latent policy's variable u (see reset_latent_to_prior), or
        # z = (u - anchor mean(s)) / latent_scale after a ``recenter``: a frozen copy of the latent's mean network
        self.register_buffer("latent_scale", torch.ones(z_dim))
        # (GoRL-SAC's squashed latent, with a state-dependent std, is never recentred and has no anchor)
        recenterable = not (squash or state_dependent_std)
        self.anchor = copy.deepcopy(self.latent.net).requires_grad_(False) if recenterable else None
        self.register_buffer("anchored", torch.zeros((), dtype=torch.bool))
        # read in Python, not from the buffer: an export traces one branch, with no data-dependent condition
        self._anchored = False
        self.register_load_state_dict_post_hook(lambda module, _keys: setattr(module, "_anchored", bool(module.anchored)))

    @torch.no_grad()
    def decode(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Env-unit actions [B, A] for latents z [B, z_dim] (GoRL's env actions), checked as the generative
        heads' are: a FloatingPointError if the latent policy or the decoder has diverged."""
        return self.checked(self.decoder.from_unit(self.decoder.generate(obs, self.decoder_input(z, obs)))[:, 0], obs=obs)

    def decoder_input(self, u: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """The decoder's input noise [B, z_dim] for the latent policy's variable u at ``obs``: u / latent_scale, or
        (u - anchor mean(obs)) / latent_scale after a ``recenter``, clipped to +-latent_limit (a squashed latent
        is inside already)."""
        if self._anchored:
            u = u - self.anchor(self.latent.obs_norm(obs))
        return self.latent.clip_action(u / self.latent_scale)

    def decode_unit(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Unit-scale actions [B, A] for latents z, differentiable in z (the clip to the unit box passes
        gradients straight through; see ``GenerativeHead.generate``). For learners that train the latent
        policy through the decoder (SAC); the decoder's own weights are not what they optimize."""
        return self.decoder.generate(obs, self.decoder_input(z, obs), straight_through=True)[:, 0]

    def latent_variable(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The latent policy's variable u [B, z_dim] at ``obs``, its mean or a sample, unclipped as GoRL's rollouts
        draw it (``decoder_input`` clips the decoder's input z after the anchor and the scale). ``latent.act`` would
        clip u itself to +-latent_limit: after a recentring the latent's mean may pass that limit while z stays
        inside, and the clipped u decoded to another action than the one the policy was trained with."""
        mean, log_std = self.latent.distribution(obs)
        return env_actions(self.latent, mean if deterministic else mean + log_std.exp() * torch.randn_like(mean))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        obs = self.observations(obs)
        return self.decode(obs, self.latent_variable(obs, deterministic))

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.act(obs), None

    def prior_sample(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        """n latents [n, z_dim] from the prior (what ``reset_latent_to_prior`` makes the latent policy)."""
        x = torch.randn(n, self.z_dim, device=device)
        return self.latent_limit * torch.tanh(x) if self.latent.squash else x

    def imitation_loss(self, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor | None = None,
                       noise: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's loss with its input noise drawn from the prior: GoRL's refit. ``noise``: the prior
        latents paired with ``actions`` [B, z_dim] (``coupled_sample``; flow decoders only), instead of
        latents drawn independently of them."""
        obs, actions = self.paired(obs, actions)
        noise = self._decoder_noise(obs, noise)
        if noise is None:
            return self.decoder.imitation_loss(obs, actions, weights)
        return self.decoder.imitation_loss(obs, actions, weights, noise=noise)

    def _decoder_noise(self, obs: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor | None:
        """The decoder's source noise for a refit minibatch: the paired prior latents given, a squashed prior's
        draws, or None (the decoder draws its own Gaussian noise)."""
        if noise is not None:
            if self.decoder.name != "flow":
                raise ValueError("paired prior latents need a flow decoder (DDPM's loss draws its own noise)")
            return noise
        return self.prior_sample(obs.shape[0], obs.device) if self.latent.squash else None

    def fits_imitation_gradients(self) -> bool:
        """Whether ``imitation_gradients`` computes the decoder's (a flow decoder that writes its gradients out:
        ``FlowHead.fits_imitation_gradients``)."""
        fits = getattr(self.decoder, "fits_imitation_gradients", None)
        return fits is not None and fits()

    def imitation_gradients(self, obs: torch.Tensor, actions: torch.Tensor, noise: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(``imitation_loss(obs, actions, noise=noise)``, its gradients in ``decoder.parameters()`` order), written
        out by the flow decoder (``FlowHead.imitation_gradients``): GoRL's refit minibatches. Only where
        ``fits_imitation_gradients()``."""
        obs, actions = self.paired(obs, actions)
        return self.decoder.imitation_gradients(obs, actions, noise=self._decoder_noise(obs, noise))

    @torch.no_grad()
    def coupled_sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The policy's actions [B, A] at ``obs`` and, for a flow decoder, the prior latents [B, z_dim] drawn
        with the same noise: for x ~ N(0, I), a = g(s, z(s, x)) with z(s, x) the latent policy's sample
        (mean + std x, squashed or clipped) and the prior latent prior(x) (L tanh(x), or x clipped).

        A flow decoder fitted on these pairs learns the map prior(x) -> a, not only the distribution of a
        (flow matching on a given coupling, as rectified flow's reflow): after the latent's reset to the
        prior, each noise draw gives the action the policy gave it before, the deterministic action (x = 0)
        included, and the pairs' straight paths keep a few-step Euler chain accurate. With independent
        draws the decoder learns only the distribution, through a curved flow: on Pendulum (GoRL-SAC,
        2 decoder steps) the deterministic action moved by 0.2-0.5 of the [-2, 2] range at a refit.
        DDIM (noise None): its loss's noise is the forward process's, so the pairs carry no meaning there."""
        obs = self.observations(obs)
        mean, log_std = self.latent.distribution(obs)
        x = torch.randn_like(mean)
        actions = self.decode(obs, env_actions(self.latent, mean + log_std.exp() * x))
        if self.decoder.name != "flow":
            return actions, None
        return actions, self.latent.clip_action(self.latent_limit * torch.tanh(x) if self.latent.squash else x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # checkpoints saved before 2026-12-05 hold no latent_scale: their latent was always reset to std 1; and
        # none before the recentering reset (2026-12-05): not anchored, so the anchor's weights are not read
        state_dict.setdefault(prefix + "latent_scale", torch.ones_like(self.latent_scale))
        state_dict.setdefault(prefix + "anchored", torch.zeros_like(self.anchored))
        for key, value in ({} if self.anchor is None else self.anchor.state_dict()).items():
            state_dict.setdefault(f"{prefix}anchor.{key}", value.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_latent_to_prior(self, scale: torch.Tensor | None = None) -> None:
        """Make pi_latent(u|s) the prior for every s: mean 0, std 1 before the (optional) squash (after a decoder
        refit, GoRL starts again from it).

        ``scale`` [z_dim] (unsquashed latents): the prior N(0, diag(scale^2)) instead, read by the decoder as
        z = u / scale ~ N(0, I), the same decoded policy. PPO's step in u then has the size relative to the
        policy's spread it had before the reset (pass the latent's std there): after a reset to std 1 every
        step is that many times smaller in the policy's own terms (Hopper: approx KL 0.006 against PPO's 0.011
        in GoRL's second stage, 0.002 against 0.007 in the third)."""
        if scale is not None and self.latent.squash:
            raise ValueError("a squashed latent's prior is L tanh(N(0, I)): it takes no scale")
        scale = torch.ones(self.z_dim) if scale is None else scale.detach().to(self.latent_scale)
        if scale.shape != (self.z_dim,) or not bool(torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError(f"latent scale must be {self.z_dim} positive finite numbers, got {scale.tolist()}")
        with torch.no_grad():
            self.latent_scale.copy_(scale)
            self.anchored.fill_(False)
            self._anchored = False
            last = [m for m in self.latent.net if isinstance(m, torch.nn.Linear)][-1]
            last.weight.zero_()
            last.bias.zero_()
            log_scale = scale.log().to(last.bias)
            if self.latent.state_dependent_std:
                last.bias[self.z_dim:] = log_scale  # [mean, log std] outputs
            else:
                self.latent.log_std.copy_(log_scale)

    @torch.no_grad()
    def recenter(self, scale: torch.Tensor | None = None) -> None:
        """Make the decoder's input z ~ N(0, I), the prior, at every s without touching the latent policy: the
        decoder reads z = (u - m(s)) / scale, with m a frozen copy of the latent's mean network as it is now and
        ``scale`` its std [z_dim] (the latent's std is left as it is; None: std 1, which the latent is set to).
        GoRL's reset to the prior that keeps the latent policy's network (and its optimizer's state): PPO goes on
        from where it was, through the refit decoder. (``reset_latent_to_prior`` restarts it instead, from a
        zero output layer.) An unsquashed latent with a state-independent std (GoRL with PPO) only."""
        if self.anchor is None:
            raise ValueError("recentering needs an unsquashed latent with a state-independent std (algo=gorl's); "
                             "use reset_latent_to_prior")
        if scale is None:
            scale = torch.ones(self.z_dim)
            self.latent.log_std.zero_()
        scale = scale.detach().to(self.latent_scale)
        if scale.shape != (self.z_dim,) or not bool(torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError(f"latent scale must be {self.z_dim} positive finite numbers, got {scale.tolist()}")
        self.anchor.load_state_dict(self.latent.net.state_dict())
        self.anchored.fill_(True)
        self._anchored = True
        self.latent_scale.copy_(scale)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.act(obs, deterministic=True)
