"""A fused CPU path for PPO: hand-derived gradients in numpy, policy and value evaluated together.

PPO's update is 320 tiny optimizer steps per 2048 samples (64-sample minibatches, 10 epochs, 64x64
networks). In eager PyTorch each step is ~150 dispatched ops plus the autograd engine, about 1 ms on
a 2-core CPU, while the arithmetic is a few microseconds; numpy's per-call cost is several times
lower. This module computes exactly ``PPO.ppo_loss`` + global gradient clipping + Adam for the
common case: a diagonal Gaussian MLP policy with a state-independent std and an MLP value network
of the same hidden sizes and activation (PPO's defaults). The two networks are laid out side by
side in one flat buffer, so each layer of both is one matmul: the first layer as a [2H, in] matrix
on the shared input, the hidden layers as [2, H, H] batches.

It works in place on the modules' parameters and the optimizer's state (views of the flat
buffers), so checkpoints, exports and the autograd path see the same tensors, and Adam is torch's
own fused kernel. ``tests/robo_rl/test_ppo_fused.py`` holds the result equal to the autograd step.

Gradients, per minibatch of B samples (z = (a - mu) e^{-log std}, r = exp(log pi - log pi_old)):
    d log pi / d mu      = z e^{-log std}
    d log pi / d log std = z^2 - 1
    d L_clip / d r       = -(A/B) [r A < clip(r) A  or  1 - eps <= r <= 1 + eps]   (torch.min, ties split)
    d L_V / d V          = vf_coef * 2 (V - R) / B       (times the clip mask if clip_range_vf is set)
    d (-c_ent H) / d log std = -c_ent                    (H = sum(1/2 + log sqrt(2 pi) + log std))
and, with ``prior_kl_coef`` c_kl (GoRL's latent policy), the penalty c_kl mean_s KL(N(mu, std^2) || N(0, s^2))
(s = ``prior_scale``, 1 without it):
    d / d mu = c_kl mu / (s^2 B),   d / d log std = c_kl (std^2 / s^2 - 1)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from policies.heads.gaussian import LOG_STD_MAX, LOG_STD_MIN, GaussianHead, env_actions, gaussian_variable

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
    if list(net) != [m for pair in zip(linears, acts) for m in pair] + [linears[-1]]:
        return None
    return linears, kinds.pop()


def unsupported_reason(ppo: "PPO") -> str | None:
    """Why the fused path cannot run this learner (None: it can)."""
    head = ppo.policy
    if not isinstance(head, GaussianHead) or head.squash or head.state_dependent_std:
        return "needs the unsquashed Gaussian head with a state-independent std (policy=gaussian, PPO defaults)"
    if any(p.device.type != "cpu" for p in ppo.parameters()):
        return "runs on CPU only"
    if any(p.dtype != torch.float32 for p in ppo.parameters()):
        return "needs float32 parameters"
    pi, v = _mlp_layout(head.net), _mlp_layout(ppo.value_net)
    if pi is None or v is None:
        return "needs plain MLPs with tanh or relu (no layer norm)"
    if pi[1] != v[1] or [l.out_features for l in pi[0][:-1]] != [l.out_features for l in v[0][:-1]]:
        return "needs policy and value networks with the same hidden sizes and activation"
    group = ppo.opt.param_groups[0]
    if group["amsgrad"] or group["weight_decay"] or group["maximize"]:
        return "needs plain Adam"
    return None


class FusedPPOStep:
    """PPO's rollout inference and epochs of minibatch steps, with numpy kernels."""

    def __init__(self, ppo: "PPO") -> None:
        reason = unsupported_reason(ppo)
        if reason is not None:
            raise ValueError(f"the fused PPO step {reason}")
        self.ppo = ppo
        self.pi_layers, act = _mlp_layout(ppo.policy.net)  # type: ignore[misc]
        self.v_layers, _ = _mlp_layout(ppo.value_net)  # type: ignore[misc]
        self.tanh = act == "tanh"
        self.params = [p for g in ppo.opt.param_groups for p in g["params"]]
        self.act_dim = ppo.policy.act_dim
        self.log_norm = self.act_dim * 0.5 * math.log(2 * math.pi)
        self.entropy_const = self.act_dim * (0.5 + 0.5 * math.log(2 * math.pi))
        self._attached: list[int] = []

    # -- flat buffers shared with torch ------------------------------------------------------------
    def _blocks(self) -> list[tuple[list[nn.Parameter], tuple[int, ...]]]:
        """The flat buffer's blocks: which parameters each holds, stacked, and the block's shape."""
        pi, v = self.pi_layers, self.v_layers
        first_in, h1 = pi[0].in_features, pi[0].out_features
        blocks = [([pi[0].weight, v[0].weight], (2 * h1, first_in)), ([pi[0].bias, v[0].bias], (2 * h1,))]
        for lp, lv in zip(pi[1:-1], v[1:-1]):
            blocks += [([lp.weight, lv.weight], (2, lp.out_features, lp.in_features)), ([lp.bias, lv.bias], (2, lp.out_features))]
        blocks += [([pi[-1].weight], tuple(pi[-1].weight.shape)), ([pi[-1].bias], tuple(pi[-1].bias.shape)),
                   ([v[-1].weight], tuple(v[-1].weight.shape)), ([v[-1].bias], tuple(v[-1].bias.shape)),
                   ([self.ppo.policy.log_std], tuple(self.ppo.policy.log_std.shape))]
        return blocks

    def _attach(self) -> None:
        """Make parameters, their Adam moments and a gradient buffer views of flat buffers."""
        opt = self.ppo.opt
        opt._lists = opt._init_state()  # creates the Adam state if this is the first step
        blocks = self._blocks()
        order = [p for params, _ in blocks for p in params]
        assert {id(p) for p in order} == {id(p) for p in self.params}, "every parameter sits in one block"
        self.flat = torch.cat([p.detach().reshape(-1) for p in order])
        self.m = torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in order])
        self.v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in order])
        self.g = np.zeros(self.flat.numel(), dtype=np.float32)
        self.g_t = torch.from_numpy(self.g)  # the same memory, for torch's Adam kernel
        p_np = self.flat.numpy()
        views, grads, off = [], [], 0
        for params, shape in blocks:
            n = int(np.prod(shape))
            views.append(p_np[off:off + n].reshape(shape))
            grads.append(self.g[off:off + n].reshape(shape))
            sub = 0
            for p in params:
                k = p.numel()
                p.data = self.flat[off + sub:off + sub + k].view_as(p)
                opt.state[p]["exp_avg"] = self.m[off + sub:off + sub + k].view_as(p)
                opt.state[p]["exp_avg_sq"] = self.v[off + sub:off + sub + k].view_as(p)
                sub += k
            off += n
        opt._lists = opt._init_state()
        self.step_tensor = opt.state[self.params[0]]["step"]
        # (weight, bias, weight grad, bias grad) per stacked layer, then the two heads, then log std
        n_hidden = len(self.pi_layers) - 1
        self.layers = [(views[2 * i], views[2 * i + 1], grads[2 * i], grads[2 * i + 1]) for i in range(n_hidden)]
        k = 2 * n_hidden
        self.head_pi = (views[k], views[k + 1], grads[k], grads[k + 1])
        self.head_v = (views[k + 2], views[k + 3], grads[k + 2], grads[k + 3])
        self.log_std, self.g_log_std = views[k + 4], grads[k + 4]
        self._attached = self._pointers()

    def _pointers(self) -> list[int]:
        opt = self.ppo.opt
        return [t.data_ptr() for p in self.params for t in (p, opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"])]

    def _ensure_attached(self) -> None:
        opt = self.ppo.opt
        if not self._attached or any("exp_avg" not in opt.state[p] for p in self.params) or self._pointers() != self._attached:
            self._attach()  # first use, or tensors were replaced (load_state_dict, .to())

    # -- networks ----------------------------------------------------------------------------------
    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Policy mean [B, A], value [B] and the hidden activations (each [2, B, H])."""
        w, b, _, _ = self.layers[0]
        z = x @ w.T
        z += b
        h = np.tanh(z, out=z) if self.tanh else np.maximum(z, 0.0, out=z)
        h = h.reshape(x.shape[0], 2, -1).transpose(1, 0, 2)  # [2, B, H]: policy, value
        hs = [h]
        for w, b, _, _ in self.layers[1:]:
            z = np.matmul(h, w.transpose(0, 2, 1))
            z += b[:, None, :]
            h = np.tanh(z, out=z) if self.tanh else np.maximum(z, 0.0, out=z)
            hs.append(h)
        wp, bp, _, _ = self.head_pi
        wv, bv, _, _ = self.head_v
        mean = h[0] @ wp.T
        mean += bp
        value = h[1] @ wv[0]
        value += bv[0]
        return mean, value, hs

    def _backward(self, x: np.ndarray, d_mean: np.ndarray, d_value: np.ndarray, hs: list[np.ndarray]) -> None:
        wp, _, gwp, gbp = self.head_pi
        wv, _, gwv, gbv = self.head_v
        h = hs[-1]
        np.matmul(d_mean.T, h[0], out=gwp)
        np.add.reduce(d_mean, axis=0, out=gbp)
        gwv[0] = d_value @ h[1]
        gbv[0] = np.add.reduce(d_value)
        dh = np.empty_like(h)
        np.matmul(d_mean, wp, out=dh[0])
        np.multiply.outer(d_value, wv[0], out=dh[1])
        for i in range(len(self.layers) - 1, -1, -1):
            h = hs[i]
            dz = dh * (1.0 - h * h) if self.tanh else dh * (h > 0)
            w, _, gw, gb = self.layers[i]
            if i > 0:
                np.matmul(dz.transpose(0, 2, 1), hs[i - 1], out=gw)
                np.add.reduce(dz, axis=1, out=gb)
                dh = np.matmul(dz, w)
            else:  # the first layer's [2H, in] block, seen as [2, H, in]
                np.matmul(dz.transpose(0, 2, 1), x, out=gw.reshape(2, -1, gw.shape[1]))
                np.add.reduce(dz, axis=1, out=gb.reshape(2, -1))

    # -- rollout inference -------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sampled actions, their log-probabilities and V(s), as ``PPO.act`` computes them."""
        self._ensure_attached()
        x = self.ppo.policy.obs_norm(obs).numpy()
        mean, value, _ = self._forward(x)
        log_std = np.minimum(np.maximum(self.log_std, LOG_STD_MIN), LOG_STD_MAX)
        eps = torch.randn(mean.shape).numpy()  # the same RNG draw as the head's sample()
        gauss = mean + np.exp(log_std) * eps  # the Gaussian's variable; env units follow (GaussianHead.unit_actions)
        logp = np.add.reduce(-0.5 * eps * eps - log_std, axis=1) - self.log_norm
        return env_actions(self.ppo.policy, torch.from_numpy(gauss)), torch.from_numpy(logp), torch.from_numpy(value)

    # -- the update --------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, rollout: "RolloutBatch") -> dict[str, torch.Tensor]:
        self._ensure_attached()
        ppo = self.ppo
        obs_n = ppo.policy.obs_norm(rollout.obs).numpy()
        gauss = gaussian_variable(ppo.policy, rollout.actions)  # the update's likelihoods are densities of it
        data = [np.ascontiguousarray(x) for x in (obs_n, gauss.numpy(), rollout.log_probs.numpy(),
                                                  rollout.values.numpy(), rollout.advantages.numpy(), rollout.returns.numpy())]
        size = obs_n.shape[0]
        mb = ppo.minibatch_size
        sums = np.zeros(7)
        count = applied = 0
        stop = False
        # a diverging update's losses go inf or NaN and the runner's check on the metrics reports it in one line (as on
        # the autograd path; a NaN taken for the KL stop once hid it behind losses of 0 until the next rollout), so
        # numpy's overflow warnings on the way would only add noise
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(ppo.epochs):
                perm = torch.randperm(size).numpy()  # the same RNG use as the autograd path
                shuffled = [x[perm] for x in data]  # one gather per epoch; minibatches are then slices
                for start in range(0, size, mb):
                    stats, stepped = self._minibatch(*(x[start:start + mb] for x in shuffled))
                    stop = not stepped  # stopped on KL before this minibatch's step (its grad norm 0, not counted)
                    sums += stats
                    count += 1
                    applied += not stop
                    if stop:
                        break
                if stop:
                    break
        names = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm", "prior_kl")
        counts = [count] * 7
        counts[5] = max(applied, 1)  # no step taken: the first minibatch passed the KL limit, grad_norm 0
        keep = 7 if ppo.prior_kl_coef else 6
        metrics = {k: torch.tensor(v / n) for k, v, n in zip(names[:keep], sums[:keep], counts[:keep])}
        metrics["minibatches"] = torch.tensor(float(applied))
        return metrics

    def _minibatch(self, obs, actions, old_logp, old_values, adv, returns) -> tuple[np.ndarray, bool]:
        """The minibatch's statistics (as ``PPO.ppo_loss`` names them, then grad_norm and prior_kl) and whether
        it took its step (False: stopped on the KL limit)."""
        ppo = self.ppo
        b = obs.shape[0]
        eps = ppo.clip_range
        log_std_param = self.log_std
        log_std = np.minimum(np.maximum(log_std_param, LOG_STD_MIN), LOG_STD_MAX)
        inv_std = np.exp(-log_std)

        mean, value, hs = self._forward(obs)
        z = (actions - mean) * inv_std
        logp = np.add.reduce(-0.5 * z * z - log_std, axis=1) - self.log_norm
        if ppo.normalize_advantage and b > 1:
            centered = adv - np.add.reduce(adv) / b
            adv = centered / (math.sqrt(float(np.dot(centered, centered)) / (b - 1)) + 1e-8)
        log_ratio = logp - old_logp
        ratio = np.exp(log_ratio)
        clipped = np.minimum(np.maximum(ratio, 1.0 - eps), 1.0 + eps)
        s1, s2 = adv * ratio, adv * clipped
        policy_loss = -float(np.add.reduce(np.minimum(s1, s2))) / b
        if ppo.clip_range_vf is not None:
            delta = value - old_values
            v_used = old_values + np.minimum(np.maximum(delta, -ppo.clip_range_vf), ppo.clip_range_vf)
            v_pass = np.abs(delta) <= ppo.clip_range_vf
        else:
            v_used, v_pass = value, None
        verr = returns - v_used
        value_loss = float(np.dot(verr, verr)) / b
        entropy = float(np.add.reduce(log_std)) + self.entropy_const
        approx_kl = float(np.add.reduce((ratio - 1.0) - log_ratio)) / b
        clip_fraction = float(np.count_nonzero(np.abs(ratio - 1.0) > eps)) / b
        prior_kl = 0.0
        if ppo.prior_kl_coef:
            var = np.exp(2.0 * log_std)
            if ppo.prior_scale is None:
                prior_kl = float(np.add.reduce(0.5 * (var - 1.0) - log_std)) + 0.5 * float(np.vdot(mean, mean)) / b
            else:
                prior_var = ppo.prior_scale.square().numpy()
                var = var / prior_var  # in the prior's scale: KL(N(mu, v) || N(0, s^2)) = KL(N(mu/s, v/s^2) || N(0, 1))
                prior_kl = (float(np.add.reduce(0.5 * (var - 1.0) - log_std + np.log(ppo.prior_scale.numpy())))
                            + 0.5 * float(np.add.reduce(mean * mean / prior_var, axis=None)) / b)
        if ppo.target_kl is not None and approx_kl > 1.5 * ppo.target_kl:  # as PPO._minibatch_step: no step
            return np.array([policy_loss, value_loss, entropy, approx_kl, clip_fraction, 0.0, prior_kl]), False

        # torch.min passes the gradient to r*A where r*A < clip(r)*A, and splits ties, which happen
        # exactly where 1-eps <= r <= 1+eps (clip passes its gradient there too) or A = 0: so the
        # gradient reaches r wherever r is inside the clip range or r*A is the smaller term.
        live = (s1 < s2) | ((ratio >= 1.0 - eps) & (ratio <= 1.0 + eps))
        d_logp = np.where(live, adv * ratio * np.float32(-1.0 / b), np.float32(0.0))
        d_mean = (d_logp[:, None] * z) * inv_std
        std_pass = (log_std_param >= LOG_STD_MIN) & (log_std_param <= LOG_STD_MAX)
        g_log_std = np.add.reduce(d_logp[:, None] * (z * z - 1.0), axis=0) - ppo.ent_coef
        if ppo.prior_kl_coef:
            c_kl = ppo.prior_kl_coef
            d_mean += np.float32(c_kl / b) * (mean if ppo.prior_scale is None else mean / prior_var)
            g_log_std += c_kl * (var - 1.0)  # (var in the prior's scale)
        self.g_log_std[:] = np.where(std_pass, g_log_std, 0.0)
        d_value = (-ppo.vf_coef * 2.0 / b) * verr
        if v_pass is not None:
            d_value = d_value * v_pass
        self._backward(obs, d_mean.astype(np.float32, copy=False), d_value.astype(np.float32, copy=False), hs)

        # global gradient-norm clipping, then Adam: torch's own fused kernel on the flat buffers
        g = self.g
        grad_norm = math.sqrt(float(np.dot(g, g)))
        coef = min(ppo.max_grad_norm / (grad_norm + 1e-6), 1.0)
        if coef < 1.0:
            g *= np.float32(coef)
        group = ppo.opt.param_groups[0]
        self.step_tensor += 1
        torch._fused_adam_([self.flat], [self.g_t], [self.m], [self.v], [], [self.step_tensor], amsgrad=False,
                           lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1], weight_decay=0.0,
                           eps=group["eps"], maximize=False)
        return np.array([policy_loss, value_loss, entropy, approx_kl, clip_fraction, grad_norm, prior_kl]), True
