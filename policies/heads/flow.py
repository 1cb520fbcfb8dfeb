"""Flow-matching head: conditional flow matching / rectified flow with Euler or midpoint sampling.

Training (Lipman et al. 2023, eq. 23; Liu et al. 2023): x0 ~ N(0, I), x1 = the action in unit scale,
x_t = (1 - t) x0 + t x1 with t ~ U(0, 1), and the network regresses the velocity x1 - x0:
    L = E || v(x_t, t | s) - (x1 - x0) ||^2
Sampling integrates dx/dt = v(x, t | s) from the noise at t = 0 to t = 1 in ``steps`` Euler (or
midpoint) steps; the result is clipped to the unit box and scaled to the action bounds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from policies.heads.base import count_option
from policies.heads.generative import GenerativeHead, timestep_embedding
from policies.networks import Mish, tracing
from policies.normalizers import ObsNormalizer

SOLVERS = ("euler", "midpoint")
#: the most ``policy.steps`` (and a latent head's flow ``policy.decoder_steps``): each is a pass through the network
#: per action, and the chain's per-step terms are built up front (1e12 ran out of memory after the run had started)
MAX_STEPS = 1000


class FlowHead(GenerativeHead):
    name = "flow"

    def __init__(self, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray, obs_norm: ObsNormalizer,
                 hidden_sizes: Sequence[int] = (256, 256, 256), activation: str = "mish", steps: int = 4,
                 solver: str = "euler", chunk: int = 1, execute: int | None = None, denoiser: str = "mlp") -> None:
        steps = count_option("steps", steps, 1, "the flow head needs at least 1 integration step, a whole number "
                             "(1-10 is typical)")
        if steps > MAX_STEPS:
            raise ValueError(f"policy.steps={steps}: at most {MAX_STEPS:,} integration steps (1-10 is typical)")
        if solver not in SOLVERS:
            raise ValueError(f"policy.solver={solver!r}: choose one of {', '.join(SOLVERS)}")
        super().__init__(obs_dim, action_low, action_high, obs_norm, hidden_sizes, activation, chunk, execute,
                         denoiser=denoiser)
        self.steps, self.solver = steps, solver

    def time_scale(self) -> float:
        return 100.0  # t in [0, 1] spread over the embedding's frequencies like diffusion timesteps

    def imitation_loss(self, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor | None = None,
                       noise: torch.Tensor | None = None) -> torch.Tensor:
        """``noise``: source samples x0 [B, chunk * A] when the flow starts from another distribution than
        N(0, I) (flow matching transports any source; GoRL-SAC's squashed latent prior is one)."""
        obs, actions = self.paired(obs, actions)
        xt, t, velocity = self._regression_pairs(actions, noise)
        v = self.net(xt, t, self._cond(obs))
        return self._weighted((v - velocity).square().mean(-1), weights)

    def _regression_pairs(self, actions: torch.Tensor, noise: torch.Tensor | None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, x1 - x0) of the loss for env-unit ``actions``: the source x0 (``noise``, else drawn), then the
        times, drawn in that order (``imitation_gradients`` draws as ``imitation_loss`` does)."""
        x1 = self.to_unit_chunk(actions)
        x0 = torch.randn_like(x1) if noise is None else noise
        t = torch.rand(x1.shape[0], device=x1.device)
        return (1.0 - t[:, None]) * x0 + t[:, None] * x1, t, x1 - x0

    def imitation_gradients(self, obs: torch.Tensor, actions: torch.Tensor, noise: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(``imitation_loss(obs, actions, noise=noise)``, its gradients in ``parameters()`` order) with the backward
        written out, no autograd graph: the same loss and noise draws, gradients equal to autograd's to float rounding
        (EXPO's base step at its batch of 256 and the default 256-wide denoiser: 2.7 ms against autograd's 3.9, a
        one-off timing). Only where ``fits_imitation_gradients()``.

        With z_0 = W_x x_t + b_x + W_c c + W_t emb(t), h_i = act(z_i), z_i = W_i h_{i-1} + b_i and v = W_o h_n + b_o,
        dL/dv = 2 (v - (x1 - x0)) / (B D); dW = g^T h, db = sum_b g, g_{i-1} = act'(z_{i-1}) * (g_i W_i) per layer; the
        first layer's three weights take their rows' parts of one [x_t, c, emb] input."""
        from policies.networks import activation_grad_, mish_and_slope

        net = self.net
        with torch.no_grad():
            obs, actions = self.paired(obs, actions)
            xt, t, velocity = self._regression_pairs(actions, noise)
            inputs = torch.cat([xt, self._cond(obs), timestep_embedding(t * net.time_scale, net.time_dim)], -1)
            first = torch.cat([net.x_in.weight, net.cond_in.weight, net.time_in.weight], 1)
            layers = [(first, net.x_in.bias), *((block.weight, block.bias) for block in net.blocks)]
            kind = self._gradient_activation()
            hidden, slopes, h = [inputs], [], inputs
            for weight, bias in layers:
                z = torch.addmm(bias, h, weight.t())
                if kind == "mish":
                    h, slope = mish_and_slope(z)
                    slopes.append(slope)
                else:
                    h = z.relu_() if kind == "relu" else z.tanh_()
                hidden.append(h)
            v = torch.addmm(net.out.bias, h, net.out.weight.t())
            err = v - velocity
            loss = err.square().mean()
            g = err.mul_(2.0 / err.numel())
            grads = [g.sum(0), torch.mm(g.t(), h)]  # last layer first, (bias, weight) pairs
            for i in range(len(layers) - 1, -1, -1):
                g = torch.mm(g, (net.out.weight if i == len(layers) - 1 else layers[i + 1][0]))
                g = g.mul_(slopes[i]) if kind == "mish" else activation_grad_(g, hidden[i + 1], kind)
                grads += [g.sum(0), torch.mm(g.t(), hidden[i])]
            grads.reverse()  # (weight, bias) pairs, first layer first
            w_first = grads[0]
            x_dim, cond_dim = net.x_in.in_features, net.cond_in.in_features
            return loss, [w_first[:, :x_dim].contiguous(), grads[1], w_first[:, x_dim:x_dim + cond_dim].contiguous(),
                          w_first[:, x_dim + cond_dim:].contiguous(), *grads[2:]]

    def _gradient_activation(self) -> str | None:
        """The denoiser's activation, if ``imitation_gradients`` writes out its derivative (mish, relu, tanh)."""
        for kind, module in (("mish", Mish), ("relu", torch.nn.ReLU), ("tanh", torch.nn.Tanh)):
            if type(self.net.act) is module:
                return kind
        return None

    def fits_imitation_gradients(self) -> bool:
        """Whether ``imitation_gradients`` computes this head's: the plain-MLP denoiser (``policy.denoiser=mlp``, the
        default) with mish, relu or tanh, float32 weights on the CPU, every one of them trained (requires_grad), in
        a FlowHead itself (a subclass's loss is its own)."""
        params = list(self.parameters())
        return (type(self) is FlowHead and not self.net.residual and self._gradient_activation() is not None
                and all(p.dtype == torch.float32 and p.device.type == "cpu" and p.requires_grad for p in params)
                and [id(p) for p in params] == [id(p) for p in self._gradient_order()])

    def _gradient_order(self) -> list[torch.nn.Parameter]:
        net = self.net
        return [net.x_in.weight, net.x_in.bias, net.cond_in.weight, net.time_in.weight,
                *(p for block in net.blocks for p in (block.weight, block.bias)), net.out.weight, net.out.bias]

    def generate(self, obs: torch.Tensor, noise: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
        """The Euler (or midpoint) chain, written so that each step is four operations around the trunk.

        Every step's first layer is one ``addmm`` whose bias holds the layer's own bias and the step's time
        term, plus the condition term (computed once per chain), added in place; the velocity's output
        layer writes the step itself, x + dt * v, as one ``addmm``. With Euler, the output bias is carried
        forward instead of added: x_k = y_k + k dt b_o, so y_{k+1} = y_k + dt h W_o^T, its contribution to the
        next first layer (k dt W_x b_o) joins that layer's bias, and x = y_K + b_o at the end (K dt = 1). The same
        arithmetic as the textbook chain (tests compare them); it matters at batch 1, where the chain
        is bound by per-operation overhead rather than by the matmuls (benchmarks/export_latency.py).
        """
        net, dt = self.net, 1.0 / self.steps
        emb, emb_mid, times = self._time_embedding(noise.device)
        linear = torch.nn.functional.linear
        w_in, b_out = net.x_in.weight, net.out.bias
        w_x, w_o = w_in.t(), net.out.weight.t()
        # [B, W], added to each step's first layer in place: a [K, B, W] tensor of per-step biases (context + each
        # step's row) took ~8% of the chain at EXPO's 768 rows (one broadcast add of K x B x W numbers, slow on the
        # CPU); the K small adds instead cost ~1% of an eager act at batch 1 (paired timings, 2026-12-07)
        context = linear(self._cond(obs), net.cond_in.weight)
        trunk = net.chain_trunk(noise.shape[0], noise.device)
        if self.solver == "euler":
            # [K, W]: step k's first-layer bias b_in + W_t emb(t_k) + t_k W_x b_o (t_k = k dt), one outer product
            # (addcmul, not addr: the TorchScript-based ONNX exporter, torch's fallback, has no addr)
            steps = torch.addcmul(linear(emb, net.time_in.weight, net.x_in.bias), times[:, None], torch.mv(w_in, b_out))
            y = noise
            for bias in steps.unbind(0):
                y = torch.addmm(y, trunk(torch.addmm(bias, y, w_x).add_(context)), w_o, alpha=dt)
            return self._finish(y + b_out, straight_through)
        # midpoint: the velocity half a step ahead
        biases = linear(emb, net.time_in.weight, net.x_in.bias).unbind(0)
        biases_mid = linear(emb_mid, net.time_in.weight, net.x_in.bias).unbind(0)
        half, full = b_out * (0.5 * dt), b_out * dt
        x = noise
        for bias, bias_mid in zip(biases, biases_mid):
            x_mid = torch.addmm(x + half, trunk(torch.addmm(bias, x, w_x).add_(context)), w_o, alpha=0.5 * dt)
            x = torch.addmm(x + full, trunk(torch.addmm(bias_mid, x_mid, w_x).add_(context)), w_o, alpha=dt)
        return self._finish(x, straight_through)

    def _time_embedding(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Sinusoidal embeddings [K, time_dim] of the chain's step times (and of the midpoints), and the times
        [K]: constants of (steps, solver), independent of the weights, so eager calls keep them; a trace
        recomputes them."""
        key = (self.steps, self.solver, str(device))
        cached = self.__dict__.get("_embedding_cache")
        recording = tracing()
        if cached is not None and cached[0] == key and not recording:
            return cached[1]
        net, dt = self.net, 1.0 / self.steps
        times = torch.arange(self.steps, device=device, dtype=torch.float32) * dt
        emb = timestep_embedding(times * net.time_scale, net.time_dim)
        mid = timestep_embedding((times + 0.5 * dt) * net.time_scale, net.time_dim) if self.solver == "midpoint" else None
        if not recording:
            self.__dict__["_embedding_cache"] = (key, (emb, mid, times))
        return emb, mid, times
