"""Diffusion head: DDPM training with epsilon prediction, DDIM or DDPM sampling (diffusers' schedules).

Training (Ho et al. 2020, eq. 14): x0 = the action (chunk) in unit scale, t ~ U{0..T-1},
eps ~ N(0, I), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (``DDPMScheduler.add_noise``), and
    L = E || eps_theta(x_t, t | s) - eps ||^2
Sampling runs ``inference_steps`` steps over diffusers' timesteps: DDIM (Song et al. 2021, eq. 12,
eta = 0) is deterministic given the initial noise; DDPM also draws a fresh noise per step, which
is part of the noise input here so that sampling stays deterministic given its input. The noise
schedule (betas, abar_t, timesteps) comes from diffusers' schedulers; the per-step update is
written out with those tables so it can be unrolled in an export, and a test holds it equal to
``scheduler.step``.
"""

from __future__ import annotations

from typing import Any, Sequence

import logging

import numpy as np
import torch

from policies.heads.base import count_option
from policies.heads.generative import GenerativeHead
from policies.normalizers import ObsNormalizer

log = logging.getLogger("robo_rl")  # the run log (train.py) and the console

SCHEDULERS = ("ddim", "ddpm")
#: the most ``policy.train_steps``: 100x diffusers' 1000; the schedule's setup grows with it (1e6: over a second)
MAX_TRAIN_STEPS = 100_000


def make_scheduler(kind: str, train_steps: int, beta_schedule: str) -> Any:
    """A diffusers scheduler (imported lazily: diffusers takes seconds to import).

    Its timesteps are spaced "leading" (diffusers' default). "trailing" and "linspace" start the chain at the
    last timestep, where the default cosine schedule leaves ~2e-7 of the action's variance: recovering the
    action from the predicted noise there divides by ~5e-4, which turns float32 rounding into 1e-4-1e-3
    differences between torch and an exported graph (an export's parity check fails), so they are not offered.
    """
    if kind not in SCHEDULERS:
        raise ValueError(f"policy.scheduler={kind!r}: choose one of {', '.join(SCHEDULERS)} (diffusers' DDIMScheduler, DDPMScheduler)")
    import diffusers

    cls = diffusers.DDIMScheduler if kind == "ddim" else diffusers.DDPMScheduler
    try:
        return cls(num_train_timesteps=train_steps, beta_schedule=beta_schedule, clip_sample=True, prediction_type="epsilon")
    except NotImplementedError:
        raise ValueError(f"policy.beta_schedule={beta_schedule!r} is not a diffusers schedule "
                         "(use linear, scaled_linear or squaredcos_cap_v2)") from None


#: sampling starts from pure noise, so the chain's first timestep must be mostly noise: abar_t is the
#: fraction of the action's variance left at t. One-step sampling over diffusers' "leading" timesteps runs
#: at t = 0 (abar ~ 1) and returns its input noise; with the default cosine schedule and 100 training
#: steps, 2 steps start at abar 0.48 (87% of samples within 0.1 of a learned point action, 99% with 10).
MAX_START_SIGNAL = 0.5
#: the schedule must reach (nearly) pure noise at its last training step, or N(0, I) is not its end point
MAX_FINAL_SIGNAL = 0.05


def check_chain_starts_from_noise(abar: torch.Tensor, timesteps: torch.Tensor, beta_schedule: str, train_steps: int,
                                  inference_steps: int) -> None:
    if float(abar[-1]) > MAX_FINAL_SIGNAL:
        raise ValueError(f"policy.beta_schedule={beta_schedule} with policy.train_steps={train_steps} keeps "
                         f"{float(abar[-1]):.0%} of the action's variance at the last noise level, so sampling from "
                         "pure noise starts off the training distribution: use policy.beta_schedule=squaredcos_cap_v2, or "
                         "more policy.train_steps (diffusers' linear betas are made for 1000)")
    start = float(abar[timesteps[0]])
    if start > MAX_START_SIGNAL:
        raise ValueError(f"policy.inference_steps={inference_steps}: the sampling chain starts at timestep "
                         f"{int(timesteps[0])} of {train_steps}, where {start:.0%} of the action's variance is left, "
                         "so it cannot turn noise into an action: use inference_steps >= 2 (DDIM is usually run "
                         "with 5-10), or policy=flow for one-step sampling")


class DiffusionHead(GenerativeHead):
    name = "diffusion"

    def __init__(self, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray, obs_norm: ObsNormalizer,
                 hidden_sizes: Sequence[int] = (256, 256, 256), activation: str = "mish", train_steps: int = 100,
                 inference_steps: int = 10, scheduler: str = "ddim", beta_schedule: str = "squaredcos_cap_v2",
                 chunk: int = 1, execute: int | None = None, denoiser: str = "residual") -> None:
        train_steps = count_option("train_steps", train_steps, 1, "the diffusion head needs at least 1 diffusion "
                                   "timestep, a whole number (default 100; sampling runs policy.inference_steps of them)")
        if train_steps > MAX_TRAIN_STEPS:  # diffusers builds its betas in a Python loop: 1e12 never finishes
            raise ValueError(f"policy.train_steps={train_steps}: at most {MAX_TRAIN_STEPS:,} diffusion timesteps "
                             "(diffusers' schedules are made for 1000; default 100)")
        inference_steps = count_option("inference_steps", inference_steps, 1, "the diffusion head needs at least 1 "
                                       "sampling step, a whole number (DDIM is usually run with 5-10)")
        if train_steps < inference_steps:
            raise ValueError(f"policy.inference_steps={inference_steps} exceeds policy.train_steps={train_steps}: "
                             "sampling visits a subset of the training timesteps, so use inference_steps <= "
                             "train_steps")
        self.train_steps, self.inference_steps, self.scheduler_kind = train_steps, inference_steps, scheduler
        self.beta_schedule = beta_schedule
        super().__init__(obs_dim, action_low, action_high, obs_norm, hidden_sizes, activation, chunk, execute,
                         denoiser=denoiser)
        self.train_scheduler = make_scheduler("ddpm", self.train_steps, beta_schedule)
        self.sampler = make_scheduler(scheduler, self.train_steps, beta_schedule)
        self.sampler.set_timesteps(self.inference_steps)
        abar = self.train_scheduler.alphas_cumprod.float()
        timesteps = self.sampler.timesteps.long()
        check_chain_starts_from_noise(abar, timesteps, beta_schedule, self.train_steps, self.inference_steps)
        if timesteps[0] < self.train_steps - self.train_steps // self.inference_steps:
            log.warning(f"{self.inference_steps} sampling steps (policy.inference_steps; policy.decoder_steps of a latent "
                        f"head) of policy.train_steps={self.train_steps} with "
                        f"diffusers' leading spacing starts the sampling chain at timestep {int(timesteps[0])}, where "
                        f"{float(abar[timesteps[0]]):.0%} of the action's variance is left: use a number of steps "
                        "that divides train_steps")
        # each step lands on the chain's next timestep (-1: the clean action), as DDPMScheduler's previous_timestep;
        # with leading spacing that is DDIMScheduler.step's stride of train_steps // inference_steps too
        prev = torch.cat([timesteps[1:], timesteps.new_tensor([-1])])
        final = torch.tensor(1.0)  # set_alpha_to_one / the "one" of DDPM: abar before the first step
        abar_t = abar[timesteps]
        abar_prev = torch.where(prev >= 0, abar[prev.clamp(min=0)], final)
        self.register_buffer("abar", abar, persistent=False)
        self.register_buffer("timesteps", timesteps, persistent=False)
        self.register_buffer("abar_t", abar_t, persistent=False)
        self.register_buffer("abar_prev", abar_prev, persistent=False)
        # DDPM posterior (fixed_small variance) for the strided schedule
        alpha_t = abar_t / abar_prev
        beta_t = 1.0 - alpha_t
        self.register_buffer("c_x0", abar_prev.sqrt() * beta_t / (1.0 - abar_t), persistent=False)
        self.register_buffer("c_xt", alpha_t.sqrt() * (1.0 - abar_prev) / (1.0 - abar_t), persistent=False)
        variance = ((1.0 - abar_prev) / (1.0 - abar_t) * beta_t).clamp(min=1e-20)
        self.register_buffer("sigma", torch.where(timesteps > 0, variance.sqrt(), torch.zeros_like(variance)), persistent=False)

    def noise_shape(self, batch: int) -> tuple[int, int]:
        steps = 1 if self.scheduler_kind == "ddim" else 1 + self.inference_steps  # DDPM: a noise per step too
        return (batch, steps * self.x_dim)

    def imitation_loss(self, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        obs, actions = self.paired(obs, actions)
        x0 = self.to_unit_chunk(actions)
        eps = torch.randn_like(x0)
        t = torch.randint(0, self.train_steps, (x0.shape[0],), device=x0.device)
        xt = self.train_scheduler.add_noise(x0, eps, t)
        return self._weighted((self.net(xt, t, self._cond(obs)) - eps).square().mean(-1), weights)

    def generate(self, obs: torch.Tensor, noise: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
        net = self.net
        context = net.context(self._cond(obs))  # once per chain
        tf = net.time_features(self.timesteps)  # once per step, shared by every row
        d = self.x_dim
        x = noise[:, :d]
        for k in range(self.inference_steps):
            eps = net(x, context=context, time_features=tf[k])
            a_t, a_prev = self.abar_t[k], self.abar_prev[k]
            x0 = ((x - (1.0 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1.0, 1.0)
            if self.scheduler_kind == "ddim":  # eq. 12 with eta = 0
                x = a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * eps
            else:  # DDPM ancestral step with the step's own noise
                z = noise[:, (k + 1) * d:(k + 2) * d]
                x = self.c_x0[k] * x0 + self.c_xt[k] * x + self.sigma[k] * z
        return self._finish(x, straight_through)
