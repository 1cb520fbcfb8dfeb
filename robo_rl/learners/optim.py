"""Adam with a lean step for the hot path of small-network RL updates.

``FusedAdam`` is ``torch.optim.Adam`` (same hyperparameters, same ``state_dict``, so checkpoints and
user code see a stock optimizer) plus ``apply(grads)``: gradients come straight from
``torch.autograd.grad`` and go into one fused kernel. That skips ``zero_grad``, gradient
accumulation into ``.grad`` and the per-step Python bookkeeping of ``Optimizer.step``, which at
256x256 MLP sizes costs as much as the arithmetic itself.

``built_to_act()`` builds learners that will only act (eval, export) without importing torch._dynamo.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Iterable, Iterator

import torch

_acting_only: ContextVar[bool] = ContextVar("acting_only", default=False)


@contextlib.contextmanager
def built_to_act() -> Iterator[None]:
    """FusedAdams made inside belong to a learner that will only act (eval, export): they skip the
    ``torch._disable_dynamo`` guard around ``Optimizer.add_param_group``, whose first call imports
    torch._dynamo and sympy (~1 s, more than a short evaluation takes). They are whole optimizers all the
    same; training builds its own with the guard, so its imports come at the same point as before."""
    token = _acting_only.set(True)
    try:
        yield
    finally:
        _acting_only.reset(token)


class FusedAdam(torch.optim.Adam):
    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, **kwargs: Any) -> None:
        params = list(params)
        try:
            super().__init__(params, lr=lr, fused=True, **kwargs)
            self._fused = True
        except (RuntimeError, TypeError):  # no fused kernel for this device / dtype
            super().__init__(params, lr=lr, **kwargs)
            self._fused = False
        if len(self.param_groups) != 1:
            raise ValueError("FusedAdam takes one parameter group")
        self._lists: tuple[list[torch.Tensor], ...] | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not _acting_only.get():
            super().add_param_group(param_group)
            return
        guarded = torch.optim.Optimizer.add_param_group
        getattr(guarded, "__wrapped__", guarded)(self, param_group)  # the guard's own function (functools.wraps)

    def _init_state(self) -> tuple[list[torch.Tensor], ...]:
        group = self.param_groups[0]
        params, exp_avgs, exp_avg_sqs = [], [], []
        # All parameters of the group step together, so they share one step counter: one add
        # per step instead of a per-tensor loop (CPU has no fused kernel for that add).
        first = self.state[group["params"][0]]
        step = first["step"].clone() if "step" in first else torch.zeros((), dtype=torch.float32)
        step = step.to(device=group["params"][0].device, dtype=torch.float32)
        for p in group["params"]:
            state = self.state[p]
            if "exp_avg" not in state:  # the layout torch.optim.Adam creates for fused=True
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] = step
            params.append(p)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
        return params, exp_avgs, exp_avg_sqs, [step] * len(params)

    @torch.no_grad()
    def apply(self, grads: Iterable[torch.Tensor]) -> None:
        """One Adam step with ``grads`` (one per parameter, in parameter order)."""
        grads = list(grads)
        group = self.param_groups[0]
        if not self._fused or group["amsgrad"] or group["maximize"] or group["weight_decay"]:
            for p, g in zip(group["params"], grads):
                p.grad = g
            self.step()
            return
        if self._lists is None:
            self._lists = self._init_state()
        params, exp_avgs, exp_avg_sqs, steps = self._lists
        if exp_avgs[0].dtype != params[0].dtype or exp_avgs[0].device != params[0].device:
            params, exp_avgs, exp_avg_sqs, steps = self._follow_params()
        steps[0].add_(1)
        beta1, beta2 = group["betas"]
        torch._fused_adam_(
            params, grads, exp_avgs, exp_avg_sqs, [], steps,
            amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
            weight_decay=0.0, eps=group["eps"], maximize=False,
        )

    def _follow_params(self) -> tuple[list[torch.Tensor], ...]:
        """The moment estimates cast to their parameters' dtype and device, after the module was cast or moved
        (``learner.double()``, ``.to(device)``) since they were made, as ``load_state_dict`` casts them."""
        for p in self.param_groups[0]["params"]:
            state = self.state[p]
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key].to(device=p.device, dtype=p.dtype)
        self._lists = self._init_state()
        return self._lists

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._lists = None  # state tensors were replaced

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a copy (copy.deepcopy of a learner) or an unpickled optimizer: torch's pickling keeps only defaults, state
        # and param_groups, so this class's own attributes are set again (defaults say whether the fused kernel took it)
        super().__setstate__(state)
        self._fused = bool(self.defaults.get("fused"))
        self._lists = None
