"""MLP builders, and an ensemble MLP that evaluates E networks with one batched matmul per layer.

The ensemble is how twin / ensemble Q-functions are batched: E critics cost one ``baddbmm`` per
layer instead of E Python-level forward passes.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn


def tracing() -> bool:
    """True while torch.export / dynamo / jit.trace / the ONNX exporter records a graph: code with eager-only
    shortcuts takes its plain path then, so an export holds standard operators."""
    # torch.compiler.is_exporting is torch 2.6+ (pyproject allows 2.4); before it, is_compiling() covers torch.export
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return (torch.compiler.is_compiling() or (is_exporting is not None and is_exporting()) or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export())


def _sigmoid_and_tanh_softplus(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmoid(x), tanh(softplus(x))) from one sigmoid (see ``_SigmoidMish``)."""
    s = torch.sigmoid(x)
    v = torch.addcmul(s, s, s, value=-0.5)
    return s, v.div_(torch.rsub(v, 1.0))


def _mish_slope(x: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """d mish/dx = t + x s (1 - t^2), given s = sigmoid(x) and t = tanh(softplus(x))."""
    return torch.addcmul(t, x * s, torch.rsub(t.square(), 1.0))


class _SigmoidMish(torch.autograd.Function):
    """mish(x) = x tanh(softplus(x)) written with one sigmoid: with s = sigmoid(x), 1 + e^x = 1 / (1 - s), so
    tanh(softplus(x)) = v / (1 - v) where v = s - s^2 / 2 = (1 - (1 - s)^2) / 2 (no cancellation for x << 0,
    where v ~ s; 1 - v is in [1/2, 1]).

    On a [512, 256] batch torch's CPU kernel took ~3x as long as this here (`python
    benchmarks/export_latency.py --floor-only`), and Mish was a fifth of an EXPO update's CPU time.
    Five passes over the tensor: sigmoid, v in place (one addcmul), 1 - v, x v, / (1 - v); the earlier
    seven-pass form (u = 2v, 2 - u) took 1.37x as long at [768, 256] (paired, 2026-12-07).
    Backward: d/dx = t + x s (1 - t^2) with t = v / (1 - v)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        v = torch.sigmoid(x)
        v.addcmul_(v, v, value=-0.5)  # elementwise, so reading the buffer it writes is safe
        ctx.save_for_backward(x)
        return v.div_(torch.rsub(v, 1.0)).mul_(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * _mish_slope(x, *_sigmoid_and_tanh_softplus(x))


def activation_grad_(grad: torch.Tensor, out: torch.Tensor, kind: str) -> torch.Tensor:
    """d/d(pre-activation) of a ReLU or tanh (``kind``), given the gradient w.r.t. its output ``out``, written over
    ``grad``, which must be a fresh product of the caller's (a hand-written backward's matmul): that buffer is in
    cache, where a new one is not (paired, 2026-12-07: EXPO's critic and edit gradients 2% faster, TD3's update
    1-4%, SAC's unchanged)."""
    if kind == "relu":
        return torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=grad)
    return torch.ops.aten.tanh_backward.grad_input(grad, out, grad_input=grad)


def linear_weight_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dL/dW = grad^T x [out, in] of a linear layer y = x W^T + b, from dL/dy ``grad`` [B, out] and its input ``x``
    [B, in], for a hand-written backward.

    With few input features and a wide layer (an MLP's first layer on a small observation: Hopper's 11) the CPU
    BLAS ran grad^T x, a product with a thin right side, 1.6-2.2x slower than its transpose (x^T grad)^T, which is
    taken then (B = 256, out = 256, in = 3-14: 51-91 us against 25-41 us; from 17 inputs up grad^T x was as fast
    or faster, and at 64 outputs the two were within a few microseconds; one-off timings here, 2026-12-07)."""
    if x.shape[1] < 16 and grad.shape[1] >= 128:
        return torch.mm(x.t(), grad).t().contiguous()
    return torch.mm(grad.t(), x)


def mish_and_slope(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mish(x), d mish/dx) with one sigmoid, as ``_SigmoidMish``'s backward computes the slope: for a hand-written
    backward (``FlowHead.imitation_gradients``) that keeps the slope from the forward pass."""
    s, t = _sigmoid_and_tanh_softplus(x)
    return x * t, _mish_slope(x, s, t)


class Mish(nn.Mish):
    """nn.Mish with a faster CPU path for large tensors (same function to float rounding, see _SigmoidMish).

    Small tensors (batch-1 inference) keep torch's single kernel, which costs fewer operations; an export
    records torch's Mish operator."""

    FAST_FROM = 8192  # elements

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x.numel(), x.is_cuda)(x)

    def kernel(self, numel: int, is_cuda: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
        """The function forward uses for a tensor of ``numel`` elements (a caller that applies Mish to many
        tensors of one size, such as a sampling chain, can look it up once)."""
        # the cheap tests first; a TorchScript trace (the legacy ONNX exporter) hands over numel as a tensor, whose
        # comparison would warn that the trace may be wrong (it is not: a trace records torch's Mish either way)
        if not isinstance(numel, int) or numel < self.FAST_FROM or is_cuda or tracing():
            return torch.nn.functional.mish
        return _SigmoidMish.apply


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "mish": Mish,
}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None


def mlp(
    in_dim: int,
    hidden_sizes: Sequence[int],
    out_dim: int,
    act: str = "relu",
    layer_norm: bool = False,
) -> nn.Sequential:
    """in_dim -> hidden_sizes... -> out_dim, with ``act`` after each hidden layer (optionally LayerNorm first)."""
    layers: list[nn.Module] = []
    last = in_dim
    for size in hidden_sizes:
        layers.append(nn.Linear(last, size))
        if layer_norm:
            layers.append(nn.LayerNorm(size))
        layers.append(activation(act))
        last = size
    layers.append(nn.Linear(last, out_dim))
    return nn.Sequential(*layers)


def orthogonal_init_(net: nn.Sequential, hidden_gain: float = math.sqrt(2), out_gain: float = 1.0) -> None:
    """Orthogonal weights, zero biases (the PPO implementation detail of Engstrom et al. 2020)."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        nn.init.orthogonal_(layer.weight, gain=out_gain if i == len(linears) - 1 else hidden_gain)
        nn.init.zeros_(layer.bias)


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if autocast left it in a 16-bit type (a network's output read by a loss, a TD target or a
    log-probability: ``Learner.autocast_update``); otherwise ``x`` itself (no operation is recorded)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


class _EnsembleDot(torch.autograd.Function):
    """y[e] = x[e] @ w[e] + b[e] for a single output unit (the Q value of each ensemble member).

    ``baddbmm`` with E > 1 members and one output column takes a batched matrix-vector path in the CPU
    BLAS that ran 4-5x slower than this at 256 rows here, and its backward (a batched outer product and
    a batched x^T g) slower still: a twin critic's output layer took 0.3-0.6 ms per forward and backward
    against ~0.15 ms for this. Forward: multiply and sum over the hidden units; backward: the outer
    product as a broadcast multiply, the weight gradient as g^T x (one row per member)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, w)
        return (x * w.transpose(1, 2)).sum(-1, keepdim=True).add_(b)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, w = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * w.transpose(1, 2)
            if x.dim() == 2:  # a shared input received the gradient of every member
                grad_x = grad_x.sum(0)
        if ctx.needs_input_grad[1]:
            # (under autocast x arrives in bf16 while the float32 weights promoted the output: one dtype for the matmul)
            grad_w = torch.matmul(grad.transpose(1, 2).to(x.dtype), x).transpose(1, 2).to(w.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(1, keepdim=True)
        return grad_x, grad_w, grad_b


class EnsembleLinear(nn.Module):
    """E independent linear layers: x [E, B, in] (or shared [B, in]) -> [E, B, out]."""

    DOT_FROM = 128  # members x rows from which a single-output layer takes _EnsembleDot (below it, baddbmm is as fast)

    def __init__(self, ensemble_size: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default initialisation, member by member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, detach: bool = False, members: slice | None = None) -> torch.Tensor:
        w, b = (self.weight.detach(), self.bias.detach()) if detach else (self.weight, self.bias)
        if members is not None:
            w, b = w[members], b[members]
        if w.shape[2] == 1 and w.shape[0] > 1 and w.shape[0] * x.shape[-2] >= self.DOT_FROM and not tracing():
            return _EnsembleDot.apply(x, w, b)
        if x.dim() == 2:
            # The same input for every member, as a stride-0 view: bit-identical to matmul(x, w) + b and
            # 5-8% faster per SAC/TD3 update here (no separate bias add, no copy of the gradient in backward).
            x = x.expand(w.shape[0], -1, -1)
        return torch.baddbmm(b, x, w)


class EnsembleMLP(nn.Module):
    """E MLPs of the same shape evaluated together: [B, in] -> [E, B, out].

    ``detach=True`` uses the weights without tracking their gradient: the actor loss of SAC/TD3
    needs dQ/da but not dQ/dtheta, and skipping the weight gradients saves a third of the backward.
    ``members`` evaluates a subset (TD3's actor only needs Q_1).
    """

    def __init__(
        self,
        ensemble_size: int,
        in_dim: int,
        hidden_sizes: Sequence[int],
        out_dim: int,
        act: str = "relu",
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        sizes = [in_dim, *hidden_sizes, out_dim]
        self.layers = nn.ModuleList(EnsembleLinear(ensemble_size, a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.norms = nn.ModuleList(
            nn.LayerNorm(s, elementwise_affine=False) if layer_norm else nn.Identity() for s in hidden_sizes
        )
        self.act = activation(act)
        self.ensemble_size = ensemble_size

    def forward(self, x: torch.Tensor, detach: bool = False, members: slice | None = None) -> torch.Tensor:
        for layer, norm in zip(self.layers[:-1], self.norms):
            x = self.act(norm(layer(x, detach, members)))
        return full_precision(self.layers[-1](x, detach, members))
