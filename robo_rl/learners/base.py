"""The learner contract (README, "Design").

A learner owns its networks, optimizers and losses; the runner owns the loop. A learner is an
``nn.Module`` so its weights (policy, critics, targets, temperature) travel in one state dict;
optimizer states are added by ``training_state``.
"""

from __future__ import annotations

import copy
import types
from typing import Any, ClassVar, Mapping, NamedTuple

import torch
from torch import nn

from policies.heads import PolicyHead


class Batch(NamedTuple):
    """A minibatch of transitions for off-policy learners."""

    obs: torch.Tensor  # [B, obs_dim] raw observations
    actions: torch.Tensor  # [B, act_dim] env units
    rewards: torch.Tensor  # [B]
    next_obs: torch.Tensor  # [B, obs_dim] the observation the transition ended in (final obs on reset)
    terminated: torch.Tensor  # [B] float, 1.0 where next_obs is terminal (no bootstrap)


class CostBatch(NamedTuple):
    """A ``Batch`` plus each transition's safety cost, for constrained learners (replay built with costs=True)."""

    obs: torch.Tensor  # [B, obs_dim]
    actions: torch.Tensor  # [B, act_dim]
    rewards: torch.Tensor  # [B]
    next_obs: torch.Tensor  # [B, obs_dim]
    terminated: torch.Tensor  # [B]
    costs: torch.Tensor  # [B] the cost the env reported for the step (e.g. energy injected), >= 0


class Learner(nn.Module):
    """A learner (README, "Design"): ``Learner(policy: PolicyHead, **options)`` owns critics, optimizers
    and losses around ``policy`` (the head that acts). ``update(batch) -> {name: scalar tensor}`` takes a replay
    ``Batch`` (off-policy) or a ``RolloutBatch`` (on-policy); ``explore(obs [B, obs_dim]) -> actions [B, act_dim]``
    collects experience; ``training_state()`` adds optimizer states to ``state_dict()``."""

    #: "off_policy" learners take replay minibatches, "on_policy" ones a rollout
    kind: ClassVar[str]
    name: ClassVar[str]
    policy: PolicyHead

    #: names of the methods that compute losses (forward graphs); ``compile_update`` compiles them
    loss_functions: ClassVar[tuple[str, ...]] = ()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def __getattr__(self, name: str) -> Any:
        # ``self._critic_loss`` etc. resolve to the (possibly compiled) loss method
        if name.startswith("_") and name[1:] in type(self).loss_functions:
            return getattr(self, name[1:])
        return super().__getattr__(name)

    def compile_update(self, **options: Any) -> str | None:
        """torch.compile the loss computations (forward + backward graphs) of ``update``; returns what the update
        will run compiled, in words for the start-up log, or None when nothing it runs is compiled (no
        ``loss_functions``: GoRL; GoRL-SAC has SAC's, its own critic and actor losses).

        The optimizer step is already one fused kernel and stays eager. The first updates pay the
        compile time (tens of seconds on a CPU); see benchmarks/ for what it buys. Inductor (the default backend) keeps
        torch's generator (``fallback_random``): the losses draw the same noise (target smoothing, sampled actions) as
        eager ones, not inductor's own, so compile=true changes the update by float rounding only.
        """
        if options.get("backend", "inductor") == "inductor" and "mode" not in options:
            options = {**options, "options": {"fallback_random": True, **options.get("options", {})}}
        for name in self.loss_functions:  # bound as methods, so copy.deepcopy binds them to the copy (see bound_loss)
            object.__setattr__(self, f"_{name}", bound_loss(torch.compile(getattr(type(self), name), **options), self))
        return f"the loss computations ({', '.join(self.loss_functions)})" if self.loss_functions else None

    def autocast_update(self, dtype: torch.dtype = torch.bfloat16, device_type: str = "cpu") -> None:
        """Run the loss computations of ``update`` (their forward graphs; backward follows in the same dtypes)
        under ``torch.autocast``: matmuls in ``dtype`` with float32 accumulation, on CPUs with native bf16
        (AVX512-BF16, AMX) ~3x faster than float32 at 256-wide layers. Parameters, gradients, optimizer states
        and the acting policy stay float32; the networks' outputs are cast back to float32 where the losses read
        them (``policies.networks.full_precision``: Q values, the Gaussian's mean and log-std, the deterministic
        actor's action), so TD targets, log-probabilities and the losses are computed in float32."""
        for name in self.loss_functions:
            loss = getattr(self, f"_{name}").__func__  # compiled, if compile_update ran first

            def autocast_loss(learner: Learner, *args: Any, _loss: Any = loss, **kwargs: Any) -> Any:
                with torch.autocast(device_type, dtype=dtype):
                    return _loss(learner, *args, **kwargs)

            object.__setattr__(self, f"_{name}", bound_loss(autocast_loss, self))

    def explore(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions used to collect experience; the policy's own sampling unless a learner adds noise."""
        return self.policy.act(obs, deterministic=False)

    def observe(self, obs: torch.Tensor, actions: torch.Tensor) -> None:
        """Off-policy runners call this with every step's observations and executed env actions (after any
        safety filter), besides storing them in replay. Learners that keep their own record of recent
        behaviour (GoRL-SAC refits its decoder on it) override it; the default keeps nothing."""

    def critic_warmup_step(self, critic_loss: torch.Tensor, target: list[torch.Tensor],
                           online: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The shared tail of the off-policy learners' ``critic_warmup`` (one critic-only update, not counted as an
        update, that demonstrations run before the first actor update follows the critic; demos.critic_steps):
        the critic's optimizer step on ``critic_loss``, then the Polyak step of ``target`` toward ``online``."""
        self.critic_opt.apply(torch.autograd.grad(critic_loss, self._critic_params))
        with torch.no_grad():
            polyak_update(target, online, self.tau)
        return {"critic_loss": critic_loss.detach()}

    def stop_requested(self) -> bool:
        """True once a SIGINT/SIGTERM asked the run to stop (the runner replaces this while it trains). Long work
        inside ``update`` (GoRL's decoder refit) checks it and gives way, so the checkpoint is not held up by it."""
        return False

    def before_iteration(self) -> dict[str, torch.Tensor]:
        """Runners call this before each iteration (a rollout, or env steps and their updates): work the learner
        put off, e.g. a GoRL refit that a signal interrupted, which the resumed run does first. Its metrics go into
        the next log row (not counted as an update); the default has none."""
        return {}

    def work_deferred(self) -> bool:
        """Whether work of the last update gave way to a signal and waits for ``before_iteration`` (a GoRL refit)."""
        return False

    def plan(self, total_updates: int) -> None:
        """Runners announce how many updates the run will make: the on-policy runner before the first one (and
        again when a run resumes), the off-policy runner on its last iteration, before that iteration's updates
        (exact then, also after a resume without replay). Learners whose schedule follows the run's length
        (GoRL's stages, no refit after GoRL-SAC's final update) override it; the default ignores it."""

    def demo_head(self) -> PolicyHead:
        """The head that demonstrations pretrain with its imitation loss (``demos.path``): the acting head,
        unless the learner acts through a wrapper around it (EXPO's base, PA-RL's head)."""
        return self.policy

    def after_pretraining(self) -> None:
        """Called once the demonstration head is pretrained: re-derive what was copied from it (TD3's target
        actor) or restart what sits on top of it (GoRL's latent policy returns to the prior)."""

    def env_action(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """What the env receives for the learner's actions (GoRL decodes latents; others clip to the bounds)."""
        return self.policy.clip_action(actions)

    def training_state(self) -> dict[str, Any]:
        return {
            "modules": self.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers().items()},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, all or nothing. A tensor of another kind than the one it replaces (integers
        for float weights, which torch would cast to whole numbers; floats for an integer counter) is refused before
        anything is copied, and when torch refuses the rest (a missing or unexpected key, another shape: it raises
        after copying every tensor that fits) the learner's own state is put back."""
        before = self._checked_kinds(state_dict)
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except BaseException:
            super().load_state_dict(before, strict=False)
            raise

    def _checked_kinds(self, state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """A copy of this learner's state (to put back if a load fails), once ``state_dict`` is known to hold no
        tensor of another kind of number than the one it would replace."""
        own = self.state_dict()
        for key, value in state_dict.items():
            mine = own.get(key)
            if isinstance(mine, torch.Tensor) and isinstance(value, torch.Tensor) and (
                    value.is_floating_point() != mine.is_floating_point() or value.is_complex()):
                raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t{key} is {value.dtype} "
                                   f"in the state dict, {mine.dtype} here (another kind of number: a cast would change "
                                   "its values)")
        return {key: value.clone() for key, value in own.items()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Load what ``training_state`` wrote, all or nothing: the weights (``load_state_dict``) and every optimizer's
        state. An optimizer missing or in excess, or a moment of another shape than its parameter (which torch would
        take, and a fused Adam step then reads wrongly or fails on), is refused before anything changes, and whatever
        fails, this learner keeps the weights and optimizer states it had."""
        optimizers, saved = self.optimizers(), state["optimizers"]
        if not isinstance(saved, Mapping):
            raise TypeError(f"optimizers is {type(saved).__name__}, expected a mapping of optimizer states")
        extra = sorted(str(name) for name in saved.keys() - optimizers.keys())
        if extra:
            raise ValueError(f"optimizer state for {extra[0]!r}, which this {type(self).__name__} does not have "
                             f"(it has {', '.join(sorted(optimizers)) or 'none'})")
        for name, opt in optimizers.items():
            if name not in saved:
                raise KeyError(f"no state for the {name!r} optimizer")
            _check_optimizer_state(name, opt, saved[name])
        modules = self._checked_kinds(state["modules"])  # (one copy of the weights, not one here and one per load)
        before = {name: copy.deepcopy(opt.state_dict()) for name, opt in optimizers.items()}
        try:
            super().load_state_dict(state["modules"])
            for name, opt in optimizers.items():
                opt.load_state_dict(saved[name])
        except BaseException:
            super().load_state_dict(modules, strict=False)
            for name, opt in optimizers.items():
                opt.load_state_dict(before[name])
            raise


def _check_optimizer_state(name: str, opt: torch.optim.Optimizer, saved: Any) -> None:
    """Raise if ``saved`` is not a state ``opt.state_dict()`` could have written: per-parameter state for parameters
    it has, each tensor shaped as its parameter (``step``: one number). (torch checks the groups' sizes itself.)"""
    groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
    if not isinstance(saved, Mapping) or not isinstance(saved.get("state"), Mapping) or not isinstance(groups, list) \
            or not all(isinstance(g, Mapping) for g in groups):
        raise TypeError(f"optimizer {name!r}: the saved state is not an optimizer's state_dict (state, param_groups)")
    params = [p for group in opt.param_groups for p in group["params"]]
    ids = [i for group in saved["param_groups"] for i in group.get("params", [])]
    if len(ids) != len(params):
        raise ValueError(f"optimizer {name!r}: the saved state is for {len(ids)} parameters, this one has {len(params)}")
    by_id = dict(zip(ids, params))
    for i, moments in saved["state"].items():
        param = by_id.get(i)
        if param is None:
            raise ValueError(f"optimizer {name!r}: state for parameter {i!r}, which its param_groups do not list")
        if not isinstance(moments, Mapping):
            raise TypeError(f"optimizer {name!r}: the state of parameter {i} is {type(moments).__name__}, "
                            "expected a mapping")
        for key, value in moments.items():
            if not isinstance(value, torch.Tensor):
                continue
            fits = value.numel() == 1 if key == "step" else (
                value.shape == param.shape and value.is_floating_point() == param.is_floating_point())
            if not fits:
                raise ValueError(f"optimizer {name!r}: {key} of parameter {i} is {value.dtype} {list(value.shape)}, "
                                 f"expected {'one number' if key == 'step' else f'{param.dtype} {list(param.shape)}'}")


def bound_loss(loss: Any, owner: Any) -> types.MethodType:
    """``loss(owner, ...)`` (a class's function, compiled or wrapped) as ``owner``'s method. A function that closes
    over ``owner`` (``torch.compile(owner.critic_loss)``) survives ``copy.deepcopy(owner)`` as it is, so the copy
    would compute its losses with the original's networks; a bound method is copied bound to the copy."""
    return types.MethodType(loss, owner)


def imitation_gradients(head: PolicyHead, obs: torch.Tensor, actions: torch.Tensor, params: list[torch.Tensor],
                        written_out: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(``head.imitation_loss(obs, actions)``, its gradients in ``params``, the head's parameters in order): with
    ``written_out``, through the head's own written-out backward where it has one that fits (the flow head's
    ``imitation_gradients``: the same loss and noise draws, no autograd graph), else autograd's."""
    fits = getattr(head, "fits_imitation_gradients", None)
    if written_out and fits is not None and fits():
        return head.imitation_gradients(obs, actions)  # type: ignore[attr-defined]
    loss = head.imitation_loss(obs, actions)
    return loss, list(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True))


def polyak_update(target: list[torch.Tensor], online: list[torch.Tensor], tau: float) -> None:
    """target <- (1 - tau) target + tau online, for all tensors in one fused call."""
    torch._foreach_lerp_(target, online, tau)


def fused_step_fits(weight: torch.Tensor, fused: str, label: str, params: list[torch.Tensor]) -> bool:
    """Whether a fused CPU step (PPO's, SAC's or TD3's, chosen at construction on float32 CPU weights) still fits a
    learner whose weights are now like ``weight`` and whose trained ``params`` all still require gradients. A move off
    the CPU (``.to("cuda")``), a cast (``.double()``) or a parameter frozen since (``requires_grad_(False)``, which the
    fused step, computing every gradient itself, would go on training) leaves the update to autograd; ``fused="on"``
    refuses each, as it refuses such a learner when built."""
    on_cpu = weight.device.type == "cpu" and weight.dtype == torch.float32
    if on_cpu and all(p.requires_grad for p in params):
        return True
    if fused == "on":
        if on_cpu:
            frozen = sum(not p.requires_grad for p in params)
            raise ValueError(f"algo.fused=on: the fused {label} step trains every parameter of its networks, and "
                             f"{frozen} of this learner's were frozen (requires_grad=False); use algo.fused=auto")
        why, done = (("runs on CPU only", f"moved to {weight.device}") if weight.device.type != "cpu" else
                     ("needs float32 parameters", f"cast to {weight.dtype}"))
        raise ValueError(f"algo.fused=on: the fused {label} step {why}, and this learner was {done}; use algo.fused=auto")
    return False
