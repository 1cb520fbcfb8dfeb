"""A fused CPU path for PPO's minibatch step: hand-derived gradients in numpy.

PPO's update is 320 tiny optimizer steps per 2048 samples (64-sample minibatches, 10 epochs,
64x64 networks). In eager PyTorch each step is ~150 dispatched ops plus the autograd engine,
about 1 ms on a 2-core CPU, while the arithmetic is a few microseconds; numpy's per-call cost is
several times lower. This module computes exactly ``PPO.ppo_loss`` + global gradient clipping +
Adam for the common case, a diagonal Gaussian MLP policy with a state-independent std and an MLP
value network, with the backward pass written out by hand. It works in place on the modules'
parameters and the optimizer's state (one flat buffer each), so checkpoints, exports and the
autograd path see the same tensors. ``tests/robo_rl/test_ppo_fused.py`` holds it equal to the
autograd step.

Gradients, per minibatch of B samples (z = (a - mu) e^{-log std}, r = exp(log pi - log pi_old)):
    d log pi / d mu      = z e^{-log std}
    d log pi / d log std = z^2 - 1
    d L_clip / d r       = -(A/B) [1 if r A < clip(r) A else 1/2 if equal else 0]
                           -(A/B) [the rest, where 1 - eps <= r <= 1 + eps]      (torch.min ties split)
    d L_V / d V          = vf_coef * 2 (V - R) / B       (times the clip mask if clip_range_vf is set)
    d (-c_ent H) / d log std = -c_ent                    (H = sum(1/2 + log sqrt(2 pi) + log std))
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from policies.heads.gaussian import LOG_STD_MAX, LOG_STD_MIN, GaussianHead

if TYPE_CHECKING:
    from robo_rl.learners.ppo import PPO
    from robo_rl.storage.rollout import RolloutBatch

_ACTIVATIONS = {nn.Tanh: "tanh", nn.ReLU: "relu"}


def _mlp_layout(net: nn.Module) -> tuple[list[nn.Linear], str] | None:
    """(linear layers, activation) if ``net`` is Linear, act, Linear, act, ..., Linear; else None."""
    if not isinstance(net, nn.Sequential):
        return None
    linears = [m for m in net if isinstance(m, nn.Linear)]
    acts = [m for m in net if not isinstance(m, nn.Linear)]
    if len(linears) != len(acts) + 1 or not acts:
        return None
    kinds = {_ACTIVATIONS.get(type(a)) for a in acts}
    if len(kinds) != 1 or None in kinds:
        return None
    expected = [m for pair in zip(linears, acts) for m in pair] + [linears[-1]]
    if list(net) != expected:
        return None
    return linears, kinds.pop()


def unsupported_reason(ppo: "PPO") -> str | None:
    """Why the fused step cannot run this learner (None: it can)."""
    head = ppo.policy
    if not isinstance(head, GaussianHead) or head.squash or head.state_dependent_std:
        return "needs the unsquashed Gaussian head with a state-independent std (policy=gaussian, PPO defaults)"
    if any(p.device.type != "cpu" for p in ppo.parameters()):
        return "runs on CPU only"
    if any(p.dtype != torch.float32 for p in ppo.parameters()):
        return "needs float32 parameters"
    if _mlp_layout(head.net) is None or _mlp_layout(ppo.value_net) is None:
        return "needs plain MLPs with tanh or relu (no layer norm)"
    group = ppo.opt.param_groups[0]
    if group["amsgrad"] or group["weight_decay"] or group["maximize"]:
        return "needs plain Adam"
    return None


class FusedPPOStep:
    """Runs PPO's epochs of minibatch steps for one rollout with numpy kernels."""

    def __init__(self, ppo: "PPO") -> None:
        reason = unsupported_reason(ppo)
        if reason is not None:
            raise ValueError(f"the fused PPO step {reason}")
        self.ppo = ppo
        self.pi_layers, self.pi_act = _mlp_layout(ppo.policy.net)  # type: ignore[misc]
        self.v_layers, self.v_act = _mlp_layout(ppo.value_net)  # type: ignore[misc]
        self.params = [p for g in ppo.opt.param_groups for p in g["params"]]
        self.log_norm = ppo.policy.act_dim * 0.5 * math.log(2 * math.pi)
        self.entropy_const = ppo.policy.act_dim * (0.5 + 0.5 * math.log(2 * math.pi))
        self._attached: list[int] = []

    # -- flat buffers shared with torch ------------------------------------------------------------
    def _attach(self) -> None:
        """Make parameters, their Adam moments and a gradient buffer views of three flat buffers."""
        opt, params = self.ppo.opt, self.params
        opt._lists = opt._init_state()  # creates the Adam state if this is the first step
        sizes = [p.numel() for p in params]
        self.flat = torch.cat([p.detach().reshape(-1) for p in params])
        self.m = torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in params])
        self.v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in params])
        for p, pv, mv, vv in zip(params, self.flat.split(sizes), self.m.split(sizes), self.v.split(sizes)):
            p.data = pv.view_as(p)
            opt.state[p]["exp_avg"] = mv.view_as(p)
            opt.state[p]["exp_avg_sq"] = vv.view_as(p)
        opt._lists = opt._init_state()
        self.step_tensor = opt.state[params[0]]["step"]
        self.g = np.zeros(self.flat.numel(), dtype=np.float32)
        self.p_np, self.m_np, self.v_np = self.flat.numpy(), self.m.numpy(), self.v.numpy()
        views, grads, off = {}, {}, 0
        for p, n in zip(params, sizes):
            views[id(p)] = self.p_np[off:off + n].reshape(p.shape)
            grads[id(p)] = self.g[off:off + n].reshape(p.shape)
            off += n
        # per layer: (weight, bias, weight grad, bias grad) as numpy views, looked up once
        self.pi = [(views[id(l.weight)], views[id(l.bias)], grads[id(l.weight)], grads[id(l.bias)]) for l in self.pi_layers]
        self.vn = [(views[id(l.weight)], views[id(l.bias)], grads[id(l.weight)], grads[id(l.bias)]) for l in self.v_layers]
        self.log_std, self.g_log_std = views[id(self.ppo.policy.log_std)], grads[id(self.ppo.policy.log_std)]
        self._attached = self._pointers()

    def _pointers(self) -> list[int]:
        opt = self.ppo.opt
        return [p.data_ptr() for p in self.params] + [opt.state[p]["exp_avg"].data_ptr() for p in self.params] + \
               [opt.state[p]["exp_avg_sq"].data_ptr() for p in self.params]

    def _ensure_attached(self) -> None:
        opt = self.ppo.opt
        if not self._attached or any("exp_avg" not in opt.state[p] for p in self.params) or self._pointers() != self._attached:
            self._attach()  # first use, or tensors were replaced (load_state_dict, .to())

    # -- the update --------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, rollout: "RolloutBatch") -> dict[str, torch.Tensor]:
        self._ensure_attached()
        ppo = self.ppo
        obs_n = ppo.policy.obs_norm(rollout.obs).numpy()
        data = [np.ascontiguousarray(x) for x in (obs_n, rollout.actions.numpy(), rollout.log_probs.numpy(),
                                                  rollout.values.numpy(), rollout.advantages.numpy(), rollout.returns.numpy())]
        size = obs_n.shape[0]
        sums = np.zeros(6)
        count = 0
        for _ in range(ppo.epochs):
            stop = False
            for idx in torch.randperm(size).split(ppo.minibatch_size):  # same RNG use as the autograd path
                idx = idx.numpy()
                stats = self._minibatch(*(x[idx] for x in data))
                sums += stats
                count += 1
                if ppo.target_kl is not None and stats[3] > 1.5 * ppo.target_kl:
                    stop = True
                    break
            if stop:
                break
        names = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm")
        return {k: torch.tensor(v / count) for k, v in zip(names, sums)}

    @staticmethod
    def _forward(x: np.ndarray, layers: list, tanh: bool) -> tuple[np.ndarray, list[np.ndarray]]:
        hs = [x]
        h = x
        last = len(layers) - 1
        for i, (w, b, _, _) in enumerate(layers):
            z = h @ w.T
            z += b
            if i < last:
                h = np.tanh(z, out=z) if tanh else np.maximum(z, 0.0, out=z)
                hs.append(h)
            else:
                h = z
        return h, hs

    @staticmethod
    def _backward(dz: np.ndarray, hs: list[np.ndarray], layers: list, tanh: bool) -> None:
        for i in range(len(layers) - 1, -1, -1):
            w, _, gw, gb = layers[i]
            h_in = hs[i]
            np.matmul(dz.T, h_in, out=gw)
            np.add.reduce(dz, axis=0, out=gb)
            if i > 0:
                dh = dz @ w
                dz = dh * (1.0 - h_in * h_in) if tanh else dh * (h_in > 0)

    def _minibatch(self, obs, actions, old_logp, old_values, adv, returns) -> np.ndarray:
        ppo = self.ppo
        b = obs.shape[0]
        eps = ppo.clip_range
        log_std_param = self.log_std
        log_std = np.clip(log_std_param, LOG_STD_MIN, LOG_STD_MAX)
        inv_std = np.exp(-log_std)

        # forward: policy mean, value
        mean, pi_hs = self._forward(obs, self.pi, self.pi_act == "tanh")
        value, v_hs = self._forward(obs, self.vn, self.v_act == "tanh")
        value = value[:, 0]
        z = (actions - mean) * inv_std
        logp = np.add.reduce(-0.5 * z * z - log_std, axis=1) - self.log_norm
        if ppo.normalize_advantage and b > 1:
            centered = adv - np.add.reduce(adv) / b
            adv = centered / (math.sqrt(float(np.dot(centered, centered)) / (b - 1)) + 1e-8)
        log_ratio = logp - old_logp
        ratio = np.exp(log_ratio)
        clipped = np.clip(ratio, 1.0 - eps, 1.0 + eps)
        s1, s2 = adv * ratio, adv * clipped
        policy_loss = -float(np.add.reduce(np.minimum(s1, s2))) / b
        if ppo.clip_range_vf is not None:
            delta = value - old_values
            v_used = old_values + np.clip(delta, -ppo.clip_range_vf, ppo.clip_range_vf)
            v_pass = np.abs(delta) <= ppo.clip_range_vf
        else:
            v_used, v_pass = value, None
        verr = returns - v_used
        value_loss = float(np.dot(verr, verr)) / b
        entropy = float(np.add.reduce(log_std)) + self.entropy_const

        # backward
        w1 = np.where(s1 < s2, 1.0, np.where(s1 == s2, 0.5, 0.0))  # torch.min splits ties
        in_clip = (ratio >= 1.0 - eps) & (ratio <= 1.0 + eps)
        d_ratio = -(adv / b) * (w1 + (1.0 - w1) * in_clip)
        d_logp = (d_ratio * ratio).astype(np.float32)
        d_mean = d_logp[:, None] * z * inv_std
        std_pass = (log_std_param >= LOG_STD_MIN) & (log_std_param <= LOG_STD_MAX)
        g_log_std = np.add.reduce(d_logp[:, None] * (z * z - 1.0), axis=0) - ppo.ent_coef
        self.g_log_std[:] = np.where(std_pass, g_log_std, 0.0)
        self._backward(d_mean.astype(np.float32), pi_hs, self.pi, self.pi_act == "tanh")
        d_value = (-ppo.vf_coef * 2.0 / b) * verr
        if v_pass is not None:
            d_value = d_value * v_pass
        self._backward(d_value.astype(np.float32)[:, None], v_hs, self.vn, self.v_act == "tanh")

        # global gradient-norm clipping, then Adam (torch's formula), all on the flat buffers
        g = self.g
        grad_norm = math.sqrt(float(np.dot(g, g)))
        coef = min(ppo.max_grad_norm / (grad_norm + 1e-6), 1.0)
        if coef < 1.0:
            g *= np.float32(coef)
        self._adam(g)
        approx_kl = float(np.add.reduce((ratio - 1.0) - log_ratio)) / b
        clip_fraction = float(np.count_nonzero(np.abs(ratio - 1.0) > eps)) / b
        return np.array([policy_loss, value_loss, entropy, approx_kl, clip_fraction, grad_norm])

    def _adam(self, g: np.ndarray) -> None:
        group = self.ppo.opt.param_groups[0]
        beta1, beta2 = group["betas"]
        self.step_tensor += 1
        step = float(self.step_tensor)
        m, v, p = self.m_np, self.v_np, self.p_np
        m += (g - m) * np.float32(1.0 - beta1)  # lerp, as torch's fused kernel
        v *= np.float32(beta2)
        v += np.float32(1.0 - beta2) * g * g
        step_size = group["lr"] / (1.0 - beta1 ** step)
        denom = np.sqrt(v) / np.float32(math.sqrt(1.0 - beta2 ** step))
        denom += np.float32(group["eps"])
        p -= np.float32(step_size) * (m / denom)
