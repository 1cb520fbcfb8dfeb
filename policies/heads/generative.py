"""Shared pieces of the generative heads: the conditional denoiser network and the head base.

A generative head turns noise into an action (or a chunk of H actions) conditioned on the
observation, deterministically given that noise: ``generate(obs, noise)``. The noise is an
explicit input so an export can take it as one (the sim2real issue) and a learner can choose it
(GoRL decodes a latent; EXPO/PA-RL draw several candidates). ``act(deterministic=True)`` uses zero
noise; for a multimodal action distribution that sample can fall between modes, which is why the
learners built for these heads choose among sampled candidates with a critic.
"""

from __future__ import annotations

import abc
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from policies.heads.base import PolicyHead, count_option
from policies.networks import ACTIVATIONS, Mish, activation
from policies.normalizers import ObsNormalizer


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) times t [B] -> [B, dim] (Ho et al. 2020)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


class ResidualBlock(nn.Module):
    def __init__(self, width: int, act: str) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.act(self.norm(x)))))


class ConditionalDenoiser(nn.Module):
    """f(x [B, D], t [B], cond [B, C]) -> [B, D], the network behind every generative head.

    The first layer acts on [x, cond, emb(t)], written as W_x x + W_c cond + W_t emb(t) + b (the same
    linear map) so that a sampling chain computes the condition term once per call and the time term
    once per step, not per row: the chain then costs one small matmul per step before the hidden
    layers. Hidden layers are residual blocks (LayerNorm, act, linear, act, linear) or, with
    ``residual=False``, a plain MLP.
    """

    def __init__(self, x_dim: int, cond_dim: int, width: int = 256, blocks: int = 3, act: str = "mish",
                 time_dim: int = 32, time_scale: float = 1.0, residual: bool = True) -> None:
        super().__init__()
        self.time_dim, self.time_scale, self.residual = time_dim, time_scale, residual
        self.x_in = nn.Linear(x_dim, width)
        self.cond_in = nn.Linear(cond_dim, width, bias=False)
        self.time_in = nn.Linear(time_dim, width, bias=False)
        if residual:
            self.blocks = nn.ModuleList(ResidualBlock(width, act) for _ in range(blocks))
            self.out_norm = nn.LayerNorm(width)
        else:
            self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(max(blocks - 1, 0)))
        self.out = nn.Linear(width, x_dim)
        self.act = activation(act)

    def context(self, cond: torch.Tensor) -> torch.Tensor:
        """The condition's contribution to the first layer, [B, W]: compute once per sampling chain."""
        return self.cond_in(cond)

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """The time's contribution to the first layer, [len(t), W]."""
        return self.time_in(timestep_embedding(t * self.time_scale, self.time_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                context: torch.Tensor | None = None, time_features: torch.Tensor | None = None) -> torch.Tensor:
        h = self.x_in(x)
        h = h + (context if context is not None else self.context(cond))
        h = h + (time_features if time_features is not None else self.time_features(t))
        return self.out(self.trunk(h))

    def chain_trunk(self, rows: int, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """``trunk`` for the steps of one sampling chain over ``rows`` rows: the plain MLP's layer tensors and
        its activation's kernel are looked up once per chain rather than once per step (at batch 1 these
        lookups cost about as much as the matmuls). Same operations, same results."""
        if self.residual:
            return self.trunk
        act = self.act.kernel(rows * self.out.in_features, device.type == "cuda") if isinstance(self.act, Mish) \
            else self.act.forward
        layers = [(layer.weight, layer.bias) for layer in self.blocks]
        linear = torch.nn.functional.linear

        def trunk(h: torch.Tensor) -> torch.Tensor:
            h = act(h)
            for weight, bias in layers:
                h = act(linear(h, weight, bias))
            return h

        return trunk

    def trunk(self, h: torch.Tensor) -> torch.Tensor:
        """From the first layer's output (before its activation) to the features the output layer reads.

        Split out so that a sampling chain can fold its own bias terms into the first and last layers
        (the flow head does); functional calls, because at batch 1 each module call's overhead is
        comparable to a 256-wide matmul."""
        if self.residual:
            for block in self.blocks:
                h = block(h)
            return self.act(self.out_norm(h))
        return self.chain_trunk(h.numel() // h.shape[-1], h.device)(h)  # rows of any leading shape


class GenerativeHead(PolicyHead):
    """Base of the diffusion and flow heads: actions in unit scale, chunks of H actions."""

    reparameterized = False  # gradients do not flow back through the sampling chain
    tractable_log_prob = False

    def __init__(self, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray, obs_norm: ObsNormalizer,
                 hidden_sizes: Sequence[int] = (256, 256, 256), activation: str = "mish", chunk: int = 1,
                 execute: int | None = None, time_dim: int = 32, denoiser: str = "residual") -> None:
        super().__init__(obs_dim, action_low, action_high, obs_norm)
        chunk = count_option("chunk", chunk, 1, "a head predicts at least 1 action per query (a whole number)")
        between = f"must be a whole number between 1 and policy.chunk={chunk} (actions run per query; null: all of them)"
        execute = chunk if execute is None else count_option("execute", execute, 1, between)
        if execute > chunk:
            raise ValueError(f"policy.execute={execute}: {between}")
        if denoiser not in ("residual", "mlp"):
            raise ValueError(f"policy.denoiser={denoiser!r}: choose residual or mlp")
        if activation not in ACTIVATIONS:
            raise ValueError(f"policy.activation={activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        widths = set(hidden_sizes)
        if len(widths) != 1:
            raise ValueError(f"policy.hidden_sizes={list(hidden_sizes)}: the denoiser needs equal hidden sizes "
                             "(one width, e.g. [256, 256, 256])")
        self.action_chunk, self.execute = chunk, execute
        self.x_dim = chunk * self.act_dim
        self.net = ConditionalDenoiser(self.x_dim, obs_dim, widths.pop(), max(len(hidden_sizes), 1), activation,
                                       time_dim, time_scale=self.time_scale(), residual=denoiser == "residual")

    def time_scale(self) -> float:
        return 1.0

    def action_layouts(self) -> tuple[tuple[int, ...], ...]:
        # single actions [B, A] (a chunk head refuses them in to_unit_chunk, saying it needs chunks) or chunks
        return ((self.act_dim,), (self.action_chunk, self.act_dim))

    def noise_shape(self, batch: int) -> tuple[int, int]:
        return (batch, self.x_dim)

    @abc.abstractmethod
    def generate(self, obs: torch.Tensor, noise: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
        """Unit-scale actions [B, chunk, A] from noise [B, chunk * A], deterministic given the noise.

        The result is clipped to the unit box; ``straight_through=True`` keeps the clipped value but
        passes gradients as if unclipped (for a learner that differentiates through the chain, such
        as GoRL with SAC, so that the noise is not stranded where the clip has zero gradient).
        """

    def _finish(self, x: torch.Tensor, straight_through: bool) -> torch.Tensor:
        """Clip the chain's result to the unit box and shape it [B, chunk, A]."""
        clipped = x.clamp(-1.0, 1.0)
        if straight_through:
            clipped = x + (clipped - x).detach()
        return clipped.reshape(x.shape[0], self.action_chunk, self.act_dim)

    def to_unit_chunk(self, actions: torch.Tensor) -> torch.Tensor:
        """Env-unit actions [B, A] or chunks [B, chunk, A] -> unit scale [B, chunk * A]."""
        if actions.dim() == 2:
            if self.action_chunk != 1:
                raise ValueError(f"a chunk head (chunk={self.action_chunk}) needs actions [B, {self.action_chunk}, "
                                 f"{self.act_dim}], got {tuple(actions.shape)}")
            actions = actions[:, None]
        return self.to_unit(actions).clamp(-1.0, 1.0).reshape(actions.shape[0], actions.shape[1] * actions.shape[2])

    @torch.no_grad()
    def act_chunk(self, obs: torch.Tensor, deterministic: bool = False, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Env-unit chunks [B, chunk, A] (what ChunkExecutor acts with), checked as ``act`` checks."""
        obs = self.observations(obs)
        return self.checked(self._chunks(obs, deterministic, noise), obs=obs)

    def _chunks(self, obs: torch.Tensor, deterministic: bool, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            shape = self.noise_shape(obs.shape[0])
            noise = torch.zeros(shape, device=obs.device) if deterministic else torch.randn(shape, device=obs.device)
        return self.from_unit(self.generate(obs, noise))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        # a chunk's first action (see ChunkExecutor); one reduction tells a NaN (see PolicyHead.checked)
        obs = self.observations(obs)
        return self.checked(self._chunks(obs, deterministic)[:, 0], obs=obs)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, None]:
        with torch.no_grad():
            return self.act(obs), None

    def forward(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The export path: env-unit first actions [B, A] from obs and explicit noise (zeros if None)."""
        if noise is None:
            noise = torch.zeros(self.noise_shape(obs.shape[0]), device=obs.device)
        return self.from_unit(self.generate(obs, noise))[:, 0]

    def _cond(self, obs: torch.Tensor) -> torch.Tensor:
        return self.obs_norm(obs)

    @staticmethod
    def _weighted(per_sample: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        return per_sample.mean() if weights is None else (per_sample * weights).sum() / weights.sum().clamp_min(1e-8)

    def forward_chunk(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The export path of a chunk head: env-unit chunks [B, chunk, A] from obs and explicit noise; the
        runtime runs ``execute`` of them per query, as ChunkExecutor does. (Last in the class: a traced graph
        records its source lines, and the other heads' exports keep theirs.)"""
        return self.from_unit(self.generate(obs, noise))


class ChunkExecutor:
    """Runs ``execute`` actions of each predicted chunk before querying the head again, per env.

    After each env step, ``reset(terminated | truncated)``: an env that started a new episode must not
    run the rest of its last episode's chunk. A change between stochastic and deterministic acting
    re-plans every env (an evaluation does not finish a sampled chunk)."""

    def __init__(self, head: GenerativeHead, num_envs: int) -> None:
        self.head, self.num_envs = head, num_envs
        self.queue: torch.Tensor | None = None
        self.left = torch.zeros(num_envs, dtype=torch.long)
        self.deterministic: bool | None = None  # the mode the queued chunks were planned in

    def reset(self, mask: torch.Tensor | None = None) -> None:
        """Drop the queued actions of envs that started a new episode (all if mask is None)."""
        if mask is None:
            self.left.zero_()
        else:
            self.left[mask.cpu()] = 0

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        obs = self.head.observations(obs)
        if obs.shape[0] != self.num_envs:
            raise ValueError(f"a ChunkExecutor for {self.num_envs} envs got obs for {obs.shape[0]}: make one per "
                             "batched env, ChunkExecutor(head, num_envs=env.num_envs)")
        need = self.left == 0
        if self.queue is None or deterministic != self.deterministic:
            self.queue = torch.zeros(self.num_envs, self.head.action_chunk, self.head.act_dim, device=obs.device)
            self.deterministic = deterministic
            need[:] = True
        if bool(need.any()):
            idx = need.nonzero().flatten().to(obs.device)
            self.queue[idx] = self.head.act_chunk(obs[idx], deterministic)
            self.left[need] = self.head.execute
        position = (self.head.execute - self.left).to(obs.device)
        actions = self.queue[torch.arange(self.num_envs, device=obs.device), position]
        self.left -= 1
        return actions
