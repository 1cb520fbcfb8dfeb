"""Fused paths for SAC's, TD3's and EXPO's updates: hand-derived gradients, no autograd graph.

At the benchmark's sizes (batch 256, 256x256 actor and twin critics) an update is a few dozen matmuls
and little else, yet in eager PyTorch a fifth to a third of it went to the autograd engine and
per-operation bookkeeping: graph nodes, saved tensors, gradient buffers, a backward pass that also
visits what needs no gradient. The steps here compute ``SAC.update`` and ``TD3.update`` directly: the
forward passes keep the activations the backward needs, the backward is written out layer by layer,
and only the gradients an optimizer reads are formed (the actor losses take dQ/da through the critics,
never the critics' weight gradients). They work in place on the learner's own parameters and
optimizers, so checkpoints, exports, resume and the autograd path see the same tensors.

Supported: SAC and TD3 themselves (a subclass's losses are its own), with their own heads (SAC: the
tanh-squashed Gaussian, state-dependent std or not; TD3: the deterministic head) and critic ensembles,
plain MLPs with ReLU or tanh (no layer norm), float32 parameters on the CPU. EXPO likewise, for its critic,
edit-policy and temperature steps (its edit policy is SAC's actor on [observation, base action]); its base
head's imitation step is the head's own (``FusedEXPOStep``). Under ``precision=bf16`` (SAC, TD3) the
matmuls run in bfloat16 where autocast runs them, except the critics' one-unit output layer, kept in float32
(autocast also multiplies it in float32 for a twin critic, in bf16 for TD3's actor loss on Q_1 alone);
parameters, optimizer state, TD targets, log-probabilities and losses stay float32.
``tests/robo_rl/test_offpolicy_fused.py`` holds the gradients equal to autograd's. Under ``compile=true`` the
gradient computations run as torch.compile'd C++ graphs (``_FusedOffPolicyStep.compile``); the optimizer steps
stay eager (each is already one fused kernel).

Each layer h_i = act(h_{i-1} W_i + b_i) back-propagates g_i = dL/d(pre-activation) as
    dW_i = h_{i-1}^T g_i,   db_i = sum_b g_i,   g_{i-1} = act'(h_{i-1}) * (g_i W_i^T)
The critics' loss is c sum_e mean_b (Q_e - y)^2 (c = 1 for TD3, 1/2 for SAC): dL/dQ_e = 2c (Q_e - y) / B.
TD3's actor loss -mean_b Q_1(s, tanh z): dL/dz = -(1/B) dQ_1/da (1 - a^2). SAC's actor loss
mean_b (alpha log pi(a|s) - min_e Q_e(s, a)), with x = mu + e^sigma eps, a = tanh x and
log pi = sum(-eps^2/2 - sigma) - |A| log sqrt(2 pi) - sum log(1 - tanh(x)^2):
    dL/dx = (alpha/B) 2a - (1/B) dQ_min/da (1 - a^2),  dL/dmu = dL/dx,
    dL/dsigma = dL/dx e^sigma eps - alpha/B   (zero where sigma's clamp to [LOG_STD_MIN, LOG_STD_MAX] binds)
and the temperature's loss -mean_b log alpha (log pi + target entropy): d/d log alpha = -mean_b (log pi + H).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from policies.heads.deterministic import DeterministicHead
from policies.heads.gaussian import _HALF_LOG_2PI, LOG_STD_MAX, LOG_STD_MIN, GaussianHead, tanh_log_det
from policies.networks import activation_grad_, linear_weight_grad
from robo_rl.learners.base import Batch, bound_loss, fused_step_fits, polyak_update
from robo_rl.learners.ppo_fused import _ACTIVATIONS, _mlp_layout

if TYPE_CHECKING:
    from robo_rl.learners.expo import EXPO
    from robo_rl.learners.sac import SAC
    from robo_rl.learners.td3 import TD3

_tanh_backward = torch.ops.aten.tanh_backward


def _activation_kind(module: nn.Module) -> str | None:
    return _ACTIVATIONS.get(type(module))


def _actor_layers(head: nn.Module) -> tuple[list[nn.Linear], str] | None:
    """(linear layers, activation) of the head's MLP if it is Linear, act, ..., Linear; else None."""
    return _mlp_layout(head.net)


def _common_reason(learner: nn.Module, head: nn.Module, extra_params: list[nn.Parameter],
                   actor: str = "actor") -> str | None:
    """Why the networks of ``learner`` (actor ``head``, critics ``learner.critic``) rule the fused step out, or None.
    ``extra_params``: the head's own parameters, which come before its MLP's (the Gaussian's state-independent log-std).
    ``actor``: what the messages call the head (EXPO's is its edit policy)."""
    layout = _actor_layers(head)
    if layout is None:
        return f"needs a plain {actor} MLP with relu or tanh (no layer norm)"
    linears, _ = layout
    expected = extra_params + [p for layer in linears for p in (layer.weight, layer.bias)]
    if [id(p) for p in head.parameters()] != [id(p) for p in expected]:
        return f"needs an {actor} whose only parameters are its MLP's"
    net = learner.critic.net
    if len(net.layers) < 2:
        return "needs critics with at least one hidden layer (critic_hidden)"
    if not all(isinstance(norm, nn.Identity) for norm in net.norms) or _activation_kind(net.act) is None:
        return "needs plain critic MLPs with relu or tanh (algo.critic_layer_norm=false)"
    params = list(learner.parameters())
    if any(p.device.type != "cpu" for p in params):
        return "runs on CPU only"
    if any(p.dtype != torch.float32 for p in params):
        return "needs float32 parameters"
    return None


def td3_unsupported_reason(td3: "TD3") -> str | None:
    """Why the fused step cannot run this TD3 learner (None: it can)."""
    from robo_rl.learners.td3 import TD3

    if type(td3) is not TD3:  # a subclass may change the losses, which the fused step does not call
        return f"computes plain TD3's update, not {type(td3).__name__}'s"
    if type(td3.policy) is not DeterministicHead:
        return "needs the deterministic head (policy=deterministic)"
    return _common_reason(td3, td3.policy, [])


def sac_unsupported_reason(sac: "SAC") -> str | None:
    """Why the fused step cannot run this SAC learner (None: it can)."""
    from robo_rl.learners.sac import SAC

    head = sac.policy
    if type(sac) is not SAC:
        return f"computes plain SAC's update, not {type(sac).__name__}'s ({sac.name})"
    if type(head) is not GaussianHead or not head.squash:
        return "needs the squashed Gaussian head (policy=gaussian)"
    if [id(p) for p in sac._actor_params] != [id(p) for p in head.parameters()]:
        return "needs the acting head to be the trained one"
    return _common_reason(sac, head, [] if head.state_dependent_std else [head.log_std])


def expo_unsupported_reason(expo: "EXPO") -> str | None:
    """Why the fused step cannot run this EXPO learner (None: it can). Its edit policy is always a squashed Gaussian
    with a state-dependent std (``EditPolicy``); the base head can be any (its imitation step is its own)."""
    from robo_rl.learners.expo import EXPO

    if type(expo) is not EXPO:
        return f"computes plain EXPO's update, not {type(expo).__name__}'s"
    return _common_reason(expo, expo.edit.head, [], actor="edit policy")


def _activate_(h: torch.Tensor, kind: str) -> torch.Tensor:
    return h.relu_() if kind == "relu" else h.tanh_()


class _FusedOffPolicyStep:
    """The networks' forward and backward passes the steps share."""

    autocasts = True  # whether it can run autocast's dtype (else an autocast learner leaves its update to autograd)

    def __init__(self, learner: nn.Module, head: nn.Module) -> None:
        self.actor, self.actor_act = _actor_layers(head)  # type: ignore[misc]
        self.critic = list(learner.critic.net.layers)
        self.critic_target = list(learner.critic_target.net.layers)
        self.critic_act = _activation_kind(learner.critic.net.act)
        self.dtype = torch.float32  # the matmuls' dtype: bfloat16 under precision=bf16 (Learner.autocast_update)
        self._casts: dict[int, torch.Tensor] | None = None  # inside ``update``: parameters cast since they last changed

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.dtype)  # the tensor itself in float32

    def _param(self, p: torch.Tensor) -> torch.Tensor:
        """Parameter ``p`` in the matmuls' dtype; inside ``update`` cast once until ``_forget`` (an optimizer step
        changes parameters in place without bumping their version, so the update says when)."""
        if self.dtype == torch.float32:
            return p
        if self._casts is None or torch.compiler.is_compiling():  # a compiled graph casts once by itself
            return p.to(self.dtype)
        cast = self._casts.get(id(p))
        if cast is None:
            cast = self._casts[id(p)] = p.to(self.dtype)
        return cast

    def _forget(self, params: list[torch.Tensor]) -> None:
        """Drop the casts of ``params``: they are about to change."""
        for p in params if self._casts is not None else ():
            self._casts.pop(id(p), None)

    def compile(self) -> None:
        """torch.compile the gradient computations (inductor with its C++ wrapper: each runs as one C++ graph, the
        element-wise work between its matmuls fused into loops, without a Python call per operation).
        ``fallback_random`` keeps torch's own generator, so a compiled step draws the same noise as the eager one."""
        options = {"cpp_wrapper": True, "fallback_random": True}
        for name in ("critic_gradients", "actor_gradients"):  # bound: a deep copy of the learner computes its own
            # the function under its no_grad decorator: dynamo keeps compiled code per code object, and the decorator's
            # wrapper is one for all, so every step's gradients in a process shared its 8 entries (recompile_limit):
            # a multirun's fifth network shape ran eager, with torch's warning on the console
            gradients = torch.compile(inspect.unwrap(getattr(type(self), name)), dynamic=False, options=options)
            setattr(self, name, bound_loss(torch.no_grad()(gradients), self))

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The learner's update, with each parameter cast to the matmuls' dtype once while it holds still."""
        self._casts = {}
        try:
            return self._update(batch)
        finally:
            self._casts = None

    def _actor_forward(self, layers: list[nn.Linear], obs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The MLP's output [B, out] in float32 and its hidden activations."""
        h, hidden = self._cast(obs), []
        for layer in layers[:-1]:
            h = _activate_(torch.addmm(self._param(layer.bias), h, self._param(layer.weight).t()), self.actor_act)
            hidden.append(h)
        last = layers[-1]
        return torch.addmm(self._param(last.bias), h, self._param(last.weight).t()).float(), hidden

    def _actor_grads(self, g: torch.Tensor, obs: torch.Tensor, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """The actor MLP's parameter gradients (weight, bias per layer, first layer first) from dL/d(output) ``g``."""
        grads: list[torch.Tensor] = []  # last layer first, (bias, weight) pairs; reversed at the end
        g = self._cast(g)
        inputs = [self._cast(obs), *hidden]
        for i in range(len(self.actor) - 1, -1, -1):
            grads += [g.sum(0, dtype=torch.float32), linear_weight_grad(g, inputs[i]).float()]
            if i > 0:
                g = activation_grad_(torch.mm(g, self._param(self.actor[i].weight)), hidden[i - 1], self.actor_act)
        grads.reverse()
        return grads

    def _squashed_sample(self, head: GaussianHead, obs_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """(tanh x [B, A], log pi [B], what the backward needs: hidden activations, raw log-std, std * eps) of the
        squashed Gaussian ``head``, whose MLP is ``self.actor``, at its network input ``obs_n``; draws eps as
        ``GaussianHead.sample`` does (SAC's actor, EXPO's edit policy)."""
        out, hidden = self._actor_forward(self.actor, obs_n)
        if head.state_dependent_std:
            mean, raw_log_std = out.chunk(2, dim=-1)
        else:
            mean, raw_log_std = out, head.log_std.expand_as(out)
        log_std = raw_log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        eps = torch.randn_like(mean)
        std = log_std.exp()
        x = mean + std * eps
        logp = (-0.5 * eps.square() - log_std).sum(-1) - head.act_dim * _HALF_LOG_2PI - tanh_log_det(x)
        return torch.tanh(x), logp, (hidden, raw_log_std, std * eps)

    @staticmethod
    def _squashed_sample_grads(d_tanh: torch.Tensor, tanh_x: torch.Tensor, raw_log_std: torch.Tensor,
                               noise: torch.Tensor, alpha: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(dL/dx, dL/d raw log-std) of L = mean_b (alpha log pi - f(tanh x)) over ``size`` rows, given ``d_tanh``,
        the gradient of -mean_b f in tanh x (``noise``: std * eps, from ``_squashed_sample``)."""
        d_x = _tanh_backward(d_tanh, tanh_x) + (2.0 / size) * alpha * tanh_x  # -log(1 - tanh^2)' = 2 tanh
        in_range = (raw_log_std >= LOG_STD_MIN) & (raw_log_std <= LOG_STD_MAX)  # where the clamp passes gradient
        return d_x, (d_x * noise - alpha / size) * in_range

    def _critic_forward(self, layers: list[nn.Module], x: torch.Tensor, members: int | None = None
                        ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Q of every member (or of the first ``members``) [E, B] in float32, the hidden activations, and the
        (cast) weights used."""
        chosen = slice(None) if members is None else slice(0, members)
        # the output layer stays float32, as under autocast
        weights = [self._param(layer.weight)[chosen] for layer in layers[:-1]] + [layers[-1].weight[chosen]]
        biases = [self._param(layer.bias)[chosen] for layer in layers[:-1]] + [layers[-1].bias[chosen]]
        h, hidden = self._cast(x).expand(weights[0].shape[0], -1, -1), []
        for w, b in zip(weights[:-1], biases[:-1]):
            h = _activate_(torch.baddbmm(b, h, w), self.critic_act)
            hidden.append(h)
        # one output unit: a multiply and a sum (the batched matrix-vector product is slow here: _EnsembleDot)
        q = (h * weights[-1].transpose(1, 2)).sum(-1) + biases[-1].view(-1, 1)
        return q, hidden, weights

    def _critic_grads(self, dq: torch.Tensor, x: torch.Tensor, hidden: list[torch.Tensor],
                      weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """The critics' parameter gradients (weight, bias per layer, first layer first) from dL/dQ [E, B]."""
        members, width = weights[-1].shape[0], weights[-1].shape[1]
        grads = [dq.sum(1).view(members, 1, 1),  # last layer first, (bias, weight) pairs; reversed at the end
                 torch.bmm(self._cast(dq).unsqueeze(1), hidden[-1]).float().view(members, width, 1)]
        g = activation_grad_(self._cast(dq.unsqueeze(-1) * weights[-1].transpose(1, 2)), hidden[-1], self.critic_act)
        inputs = [self._cast(x).expand(members, -1, -1), *hidden]
        for i in range(len(hidden) - 1, -1, -1):
            grads += [g.sum(1, keepdim=True, dtype=torch.float32), torch.bmm(inputs[i].transpose(1, 2), g).float()]
            if i > 0:
                g = activation_grad_(torch.bmm(g, weights[i].transpose(1, 2)), hidden[i - 1], self.critic_act)
        grads.reverse()
        return grads

    def _critic_action_grad(self, dq: torch.Tensor, hidden: list[torch.Tensor], weights: list[torch.Tensor],
                            act_dim: int) -> torch.Tensor:
        """dL/da [B, A] (float32) from dL/dQ [E, B], summed over the members, the critics' weights held fixed."""
        g = activation_grad_(self._cast(dq.unsqueeze(-1) * weights[-1].transpose(1, 2)), hidden[-1], self.critic_act)
        for i in range(len(hidden) - 1, 0, -1):
            g = activation_grad_(torch.bmm(g, weights[i].transpose(1, 2)), hidden[i - 1], self.critic_act)
        # the first layer's action rows only: [E, B, H] x [E, H, A], summed over members
        return torch.bmm(g, weights[0][:, -act_dim:].transpose(1, 2)).float().sum(0)


class FusedTD3Step(_FusedOffPolicyStep):
    """TD3's update (critic step, delayed actor step and Polyak averaging) with hand-derived gradients."""

    def __init__(self, td3: "TD3") -> None:
        super().__init__(td3, td3.policy)
        self.td3 = td3
        self.actor_target, _ = _actor_layers(td3.actor_target)  # type: ignore[misc]

    @torch.no_grad()
    def critic_gradients(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(critic loss, mean Q, gradients in ``td3.critic.parameters()`` order), as ``TD3.critic_loss`` and autograd
        give them; draws the target-smoothing noise as that does."""
        td3, policy = self.td3, self.td3.policy
        next_obs = policy.obs_norm(batch.next_obs)
        next_unit = self._actor_forward(self.actor_target, next_obs)[0].tanh_()
        noise = (torch.randn_like(next_unit) * td3.target_noise).clamp_(-td3.target_noise_clip, td3.target_noise_clip)
        next_unit = (next_unit + noise).clamp_(-1.0, 1.0)
        q_next, _, _ = self._critic_forward(self.critic_target, torch.cat([next_obs, next_unit], -1))
        target = batch.rewards + td3.gamma * (1.0 - batch.terminated) * q_next.min(0).values

        x = torch.cat([policy.obs_norm(batch.obs), policy.to_unit(batch.actions)], -1)
        q, hidden, weights = self._critic_forward(self.critic, x)
        err = q - target
        dq = err * (2.0 / err.shape[1])  # [E, B]
        return err.square().mean(1).sum(), q.mean(), self._critic_grads(dq, x, hidden, weights)

    @torch.no_grad()
    def actor_gradients(self, obs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(actor loss, gradients in ``td3.policy.parameters()`` order), as ``TD3.actor_loss`` and autograd give them."""
        obs_n = self.td3.policy.obs_norm(obs)
        z, hidden = self._actor_forward(self.actor, obs_n)
        unit = z.tanh_()
        q1, critic_hidden, weights = self._critic_forward(self.critic, torch.cat([obs_n, unit], -1), members=1)
        d_unit = self._critic_action_grad(torch.full_like(q1, -1.0 / q1.shape[1]), critic_hidden, weights, unit.shape[1])
        return -q1.mean(), self._actor_grads(_tanh_backward(d_unit, unit), obs_n, hidden)

    def _update(self, batch: Batch) -> dict[str, torch.Tensor]:
        td3 = self.td3
        td3.num_updates += 1
        critic_loss, q_mean, grads = self.critic_gradients(batch)
        self._forget(td3._critic_params)
        td3.critic_opt.apply(grads)
        metrics = {"critic_loss": critic_loss, "q_mean": q_mean}
        if int(td3.num_updates) % td3.policy_delay == 0:  # delayed actor and target updates
            actor_loss, grads = self.actor_gradients(batch.obs)
            td3.actor_opt.apply(grads)
            with torch.no_grad():
                polyak_update(td3._target, td3._online, td3.tau)
            metrics["actor_loss"] = actor_loss
        return metrics


class FusedSACStep(_FusedOffPolicyStep):
    """SAC's update (critic step, actor step, temperature step, Polyak averaging) with hand-derived gradients."""

    def __init__(self, sac: "SAC") -> None:
        super().__init__(sac, sac.policy)
        self.sac = sac
        self.head: GaussianHead = sac.policy  # type: ignore[assignment]

    def _sample(self, obs_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """(tanh-squashed unit action a [B, A], log pi(a|s) [B], what the backward needs) for normalized ``obs_n``."""
        head = self.head
        tanh_x, logp, (hidden, raw_log_std, noise) = self._squashed_sample(head, obs_n)
        # the action as the head hands it over (env units) and the critics read it back (unit scale)
        return head.to_unit(head.from_unit(tanh_x)), logp, (hidden, raw_log_std, noise, tanh_x)

    @torch.no_grad()
    def critic_gradients(self, batch: Batch, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(critic loss, mean Q, gradients in ``sac.critic.parameters()`` order), as ``SAC.critic_loss`` and autograd
        give them; draws the next actions' noise as that does."""
        sac, head = self.sac, self.head
        next_obs = head.obs_norm(batch.next_obs)
        next_unit, next_logp, _ = self._sample(next_obs)
        q_next, _, _ = self._critic_forward(self.critic_target, torch.cat([next_obs, next_unit], -1))
        target = batch.rewards + sac.gamma * (1.0 - batch.terminated) * (q_next.min(0).values - alpha * next_logp)

        x = torch.cat([head.obs_norm(batch.obs), head.to_unit(batch.actions)], -1)
        q, hidden, weights = self._critic_forward(self.critic, x)
        err = q - target
        dq = err * (1.0 / err.shape[1])  # [E, B]: the loss is half the squared error
        return 0.5 * err.square().mean(1).sum(), q.mean(), self._critic_grads(dq, x, hidden, weights)

    @torch.no_grad()
    def actor_gradients(self, obs: torch.Tensor, alpha: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(actor loss, log pi of the sampled actions, gradients in ``sac.policy.parameters()`` order), as
        ``SAC.actor_loss`` and autograd give them."""
        head = self.head
        obs_n = head.obs_norm(obs)
        unit, logp, (hidden, raw_log_std, noise, tanh_x) = self._sample(obs_n)
        q, critic_hidden, weights = self._critic_forward(self.critic, torch.cat([obs_n, unit], -1))
        q_min, argmin = q.min(0)
        size = q.shape[1]
        dq = torch.zeros_like(q).scatter_(0, argmin.unsqueeze(0), -1.0 / size)  # d(-mean min_e Q_e)/dQ_e
        d_unit = self._critic_action_grad(dq, critic_hidden, weights, unit.shape[1])
        d_x, d_log_std = self._squashed_sample_grads(d_unit, tanh_x, raw_log_std, noise, alpha, size)
        loss = (alpha * logp - q_min).mean()
        if not head.state_dependent_std:
            return loss, logp, [d_log_std.sum(0), *self._actor_grads(d_x, obs_n, hidden)]  # the head's order
        return loss, logp, self._actor_grads(torch.cat([d_x, d_log_std], -1), obs_n, hidden)

    def _update(self, batch: Batch) -> dict[str, torch.Tensor]:
        sac = self.sac
        alpha = sac.log_alpha.detach().exp()
        critic_loss, q_mean, grads = self.critic_gradients(batch, alpha)
        self._forget(sac._critic_params)
        sac.critic_opt.apply(grads)
        actor_loss, logp, grads = self.actor_gradients(batch.obs, alpha)
        sac.actor_opt.apply(grads)
        metrics = {"critic_loss": critic_loss, "actor_loss": actor_loss, "q_mean": q_mean, "entropy": -logp.mean(),
                   "alpha": alpha}
        if sac.alpha_opt is not None:
            with torch.no_grad():
                shifted = logp + sac.target_entropy
                metrics["alpha_loss"] = -(sac.log_alpha * shifted).mean()
                sac.alpha_opt.apply([-shifted.mean()])
        sac.target_step()
        return metrics


def _bound_grad(grad: torch.Tensor, x: torch.Tensor, bound: torch.Tensor, passes: torch.Tensor) -> torch.Tensor:
    """The gradient through ``torch.minimum(x, bound)`` (``passes``: x < bound) or ``torch.maximum`` (x > bound) to x,
    as autograd gives it: all of it where x passes, half where x equals the bound, none where the bound is taken."""
    return torch.where(passes, grad, torch.where(x == bound, grad * 0.5, torch.zeros_like(grad)))


class FusedEXPOStep(_FusedOffPolicyStep):
    """EXPO's critic step, edit-policy step and temperature step with hand-derived gradients. The TD target (the base's
    samples, their edits, the target critics' scores) needs no gradient and is ``EXPO.td_target`` itself. The base's
    imitation step, which ``EXPO.update`` runs after this step, is its head's: a flow head's written-out gradients
    (``FlowHead.imitation_gradients``), other heads' autograd.

    The edit loss mean_b (alpha log pi_e(d|s,a) - min_e Q_e(s, clip(a + d))), with d = span tanh x and x as in SAC's
    actor (``FusedSACStep``): dL/dd = -(1/B) dQ_min/du / scale * [the clip passes] (u: the edited action's unit scale,
    ``scale``: the base's action half-range; the clip's bounds pass gradient as torch.minimum / maximum do), then
    dL/dx = span dL/dd (1 - tanh(x)^2) + (alpha/B) 2 tanh x, and the log-std's as in SAC."""

    # EXPO autocasts its critic loss only (and precision=bf16 is refused for it at start-up): an autocast EXPO takes
    # the autograd path rather than a step whose edit loss would multiply in bf16
    autocasts = False

    def __init__(self, expo: "EXPO") -> None:
        super().__init__(expo, expo.edit.head)
        self.expo = expo

    @torch.no_grad()
    def critic_gradients(self, x: torch.Tensor, target: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(critic loss, mean Q, gradients in ``expo.critic.parameters()`` order) for critic inputs ``x`` [B, obs + A]
        (normalized observations, unit actions) and TD targets [B], as ``EXPO.critic_loss`` and autograd give them."""
        q, hidden, weights = self._critic_forward(self.critic, x)
        err = q - target
        dq = err * (1.0 / err.shape[1])  # [E, B]: the loss is half the squared error
        return 0.5 * err.square().mean(1).sum(), q.mean(), self._critic_grads(dq, x, hidden, weights)

    @torch.no_grad()
    def actor_gradients(self, obs_n: torch.Tensor, base_actions: torch.Tensor, alpha: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(edit loss, log pi_e of the sampled edits, gradients in ``expo.edit.parameters()`` order) for normalized
        observations ``obs_n`` and base actions [B, A] (env units), as EXPO's autograd update gives them; draws the
        edits' noise as ``EditPolicy.sample`` does."""
        base, head = self.expo.base, self.expo.edit.head
        unit_base = base.to_unit(base_actions)
        edit_in = head.obs_norm(torch.cat([obs_n, unit_base], -1))
        tanh_x, logp, (hidden, raw_log_std, noise) = self._squashed_sample(head, edit_in)
        shifted = base_actions + head.from_unit(tanh_x)
        below = torch.minimum(shifted, base.action_high)
        edited = torch.maximum(below, base.action_low)
        q, critic_hidden, weights = self._critic_forward(self.critic, torch.cat([obs_n, base.to_unit(edited)], -1))
        q_min, argmin = q.min(0)
        size = q.shape[1]
        dq = torch.zeros_like(q).scatter_(0, argmin.unsqueeze(0), -1.0 / size)  # d(-mean min_e Q_e)/dQ_e
        d_edited = self._critic_action_grad(dq, critic_hidden, weights, tanh_x.shape[1]) / base.action_scale
        d_below = _bound_grad(d_edited, below, base.action_low, below > base.action_low)
        d_shift = _bound_grad(d_below, shifted, base.action_high, shifted < base.action_high)
        d_x, d_log_std = self._squashed_sample_grads(d_shift * head.action_scale, tanh_x, raw_log_std, noise, alpha, size)
        loss = (alpha * logp - q_min).mean()
        return loss, logp, self._actor_grads(torch.cat([d_x, d_log_std], -1), edit_in, hidden)

    def _update(self, batch: Batch) -> dict[str, torch.Tensor]:
        expo, base = self.expo, self.expo.base
        target, base_actions = expo._td_target(batch, edit_samples=True)
        obs_n = base.obs_norm(batch.obs)
        critic_loss, q_mean, grads = self.critic_gradients(torch.cat([obs_n, base.to_unit(batch.actions)], -1), target)
        self._forget(expo._critic_params)
        expo.critic_opt.apply(grads)
        alpha = expo.log_alpha.detach().exp()
        edit_loss, logp, grads = self.actor_gradients(obs_n, base_actions, alpha)
        expo.edit_opt.apply(grads)
        expo.alpha_opt.apply([-(logp + expo.target_entropy).mean()])  # d/d log alpha of -mean(log alpha (log pi + H))
        return {"critic_loss": critic_loss, "q_mean": q_mean, "edit_loss": edit_loss, "alpha": alpha,
                "edit_entropy": -logp.mean()}


class FusedUpdate:
    """Mixed into SAC, TD3 and EXPO (before ``Learner``): ``fused="auto"`` takes the fused step where the learner fits
    it, ``"on"`` insists (and says why not), ``"off"`` always uses autograd. The step is chosen at construction and left
    for the autograd path when the learner moved off the CPU, was cast from float32 or had a parameter frozen, since.
    ``compile_update`` (compile=true) compiles the fused step's gradient computations, and the losses the autograd
    path would run."""

    _fused_step: _FusedOffPolicyStep | None = None
    #: loss functions (``loss_functions``) the fused step calls too (EXPO's TD target), compiled with it
    _fused_losses: tuple[str, ...] = ()

    def _choose_fused_step(self, label: str, fused: str, reason: Callable[[], str | None],
                           make_step: Callable[[], _FusedOffPolicyStep], trained: list[nn.Parameter] | None = None
                           ) -> None:
        """``label``: the step's name in messages (SAC, TD3, EXPO); ``reason()``: why the fused step cannot run this learner,
        or None; ``make_step()`` builds it. ``trained``: the parameters the step trains (default: the critics' and the
        actor's, ``_critic_params`` and ``_actor_params``)."""
        if fused not in ("auto", "on", "off"):
            raise ValueError(f"fused must be auto, on or off, got {fused!r}")
        self.fused, self._fused_label = fused, label
        self._fused_step = None
        self._fused_trained = trained if trained is not None else [*self._critic_params, *self._actor_params]  # type: ignore[attr-defined]
        if fused == "off":
            return
        why = reason()
        if why is None:
            self._fused_step = make_step()
        elif fused == "on":
            raise ValueError(f"algo.fused=on: the fused {label} step {why}; use algo.fused=auto")

    def compile_update(self, **options) -> str | None:
        compiled = super().compile_update(**options)  # type: ignore[misc]
        if self._fused_step is None:
            return compiled
        self._fused_step.compile()
        also = f" and {', '.join(self._fused_losses)}" if self._fused_losses else ""
        return f"the fused step's gradient computations{also}"

    def autocast_update(self, dtype: torch.dtype = torch.bfloat16, device_type: str = "cpu") -> None:
        super().autocast_update(dtype, device_type)  # type: ignore[misc]
        if self._fused_step is None:
            return
        if self._fused_step.autocasts:
            self._fused_step.dtype = dtype  # the fused step's matmuls in ``dtype``, where autocast runs the losses'
        elif self.fused == "on":
            raise ValueError(f"algo.fused=on: the fused {self._fused_label} step computes in float32 only; use "
                             "algo.fused=auto")
        else:  # the losses autocast, as asked
            self._fused_step = None

    @property
    def _fused(self) -> bool:
        """Whether ``update`` takes the fused step now (``fused="on"`` refuses a move off the CPU, a cast to another
        dtype, ``learner.double()``: the step computes in float32, or a frozen parameter: see ``fused_step_fits``)."""
        if self._fused_step is None:
            return False
        return fused_step_fits(self.critic.net.layers[0].weight, self.fused, self._fused_label,  # type: ignore[attr-defined]
                               self._fused_trained)
