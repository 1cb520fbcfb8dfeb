import numpy as np
import pytest
import torch

from policies.networks import (EnsembleLinear, EnsembleMLP, Mish, _EnsembleDot, _SigmoidMish, linear_weight_grad,
                               mish_and_slope)
from policies.normalizers import RunningMeanStd


def test_ensemble_equals_separate_networks():
    torch.manual_seed(0)
    ens = EnsembleMLP(3, 7, [16, 16], 2)
    x = torch.randn(10, 7)
    out = ens(x)
    for e in range(3):
        h = x
        for i, layer in enumerate(ens.layers):
            h = h @ layer.weight[e] + layer.bias[e, 0]
            if i < len(ens.layers) - 1:
                h = torch.relu(h)
        torch.testing.assert_close(out[e], h)
    # per-member inputs give the same result as a shared input
    torch.testing.assert_close(ens(x.expand(3, -1, -1)), out)


def test_detach_blocks_weight_gradients_but_not_input_gradients():
    ens = EnsembleMLP(2, 4, [8], 1)
    x = torch.randn(5, 4, requires_grad=True)
    ens(x, detach=True).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in ens.parameters())


def test_single_output_ensemble_layer_matches_batched_matmul_with_gradients():
    # a twin critic's output layer at a training batch takes _EnsembleDot, not baddbmm: same values and gradients
    torch.manual_seed(0)
    layer = EnsembleLinear(2, 32, 1)
    for x in (torch.randn(2, 256, 32), torch.randn(256, 32)):  # per-member and shared inputs
        assert layer.weight.shape[0] * x.shape[-2] >= layer.DOT_FROM
        x = x.requires_grad_(True)
        out = layer(x)
        ref = torch.matmul(x, layer.weight) + layer.bias
        torch.testing.assert_close(out, ref)
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, (x, layer.weight, layer.bias), g)
        want = torch.autograd.grad(ref, (x, layer.weight, layer.bias), g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # detach: input gradient only; members: a subset of one member goes back to baddbmm
    x = torch.randn(2, 256, 32, requires_grad=True)
    layer.weight.grad = None
    layer(x, detach=True).sum().backward()
    assert x.grad is not None and layer.weight.grad is None
    shared = torch.randn(256, 32)
    torch.testing.assert_close(layer(shared, members=slice(0, 1))[0], layer(shared)[0])
    small = (torch.randn(3, 50, 4, dtype=torch.float64, requires_grad=True),
             torch.randn(3, 4, 1, dtype=torch.float64, requires_grad=True),
             torch.randn(3, 1, 1, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(_EnsembleDot.apply, small)
    assert torch.autograd.gradcheck(_EnsembleDot.apply, (small[0][0].detach().requires_grad_(True), *small[1:]))


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    data = [rng.normal(3, 2, (n, 4)) for n in (1, 7, 100, 33)]
    rms = RunningMeanStd((4,))
    for batch in data:
        rms.update(torch.as_tensor(batch))
    allx = np.concatenate(data)
    np.testing.assert_allclose(rms.mean.numpy(), allx.mean(0), rtol=1e-10)
    np.testing.assert_allclose(rms.var.numpy(), allx.var(0), rtol=1e-10)
    assert float(rms.count) == len(allx)


def test_fast_mish_equals_torch_mish_with_gradients():
    # the large-tensor path (one sigmoid) must be the same function as torch's kernel, including the tails
    tails = torch.tensor([-100.0, -30.0, -20.0, -1e-4, 0.0, 1e-4, 20.0, 30.0, 100.0]).repeat(256)
    x = torch.cat([torch.randn(40 * 256) * 5, tails]).reshape(-1, 256).requires_grad_(True)
    assert x.numel() >= Mish.FAST_FROM
    fast, ref = Mish()(x), torch.nn.functional.mish(x)
    assert torch.allclose(fast, ref, rtol=1e-6, atol=1e-6)
    (g_fast,) = torch.autograd.grad(fast.sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    assert torch.isfinite(g_fast).all() and torch.allclose(g_fast, g_ref, rtol=1e-5, atol=1e-5)
    small = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_SigmoidMish.apply, (small,))
    value, slope = mish_and_slope(x.detach())  # what hand-written backwards keep from the forward pass
    assert torch.allclose(value, ref, rtol=1e-6, atol=1e-6) and torch.allclose(slope, g_ref, rtol=1e-5, atol=1e-5)


def test_running_mean_std_refuses_a_batch_of_another_shape():
    # [3, 8] for 4-dim statistics would have been regrouped as 6 observations of 4 numbers each
    rms = RunningMeanStd((4,))
    with pytest.raises(ValueError, match=r"shape \[4\] cannot take a batch of shape \[3, 8\]: pass observations \[B, 4\]"):
        rms.update(torch.randn(3, 8))
    assert float(rms.count) == 0
    rollout = torch.randn(5, 3, 4, dtype=torch.float64)  # [T, B, obs_dim] and a single observation are fine
    rms.update(rollout)
    rms.update(rollout[0, 0])
    data = torch.cat([rollout.reshape(-1, 4), rollout[0, 0][None]])
    torch.testing.assert_close(rms.mean, data.mean(0))
    torch.testing.assert_close(rms.var, data.var(0, unbiased=False))


def test_fast_paths_work_on_a_torch_without_compiler_is_exporting(monkeypatch):
    # pyproject allows torch>=2.4; torch.compiler.is_exporting arrived in 2.6, and every large Mish and every
    # ensemble critic's output layer (SAC/TD3 updates) asked it, so training failed with AttributeError there
    monkeypatch.delattr(torch.compiler, "is_exporting", raising=False)
    x = torch.randn(64, 256)
    assert torch.allclose(Mish()(x), torch.nn.functional.mish(x), rtol=1e-6, atol=1e-6)
    layer = EnsembleLinear(2, 256, 1)
    assert 2 * x.shape[0] >= layer.DOT_FROM
    assert layer(x).shape == (2, 64, 1)


@pytest.mark.parametrize("inputs, outputs", [(11, 256), (3, 128), (17, 256), (11, 64), (256, 256)])
def test_linear_weight_grad_is_the_layers_weight_gradient(inputs, outputs):
    # either orientation (thin inputs and a wide layer take (x^T g)^T): autograd's gradient of a Linear's weight, as a
    # contiguous [out, in] tensor the fused Adam step takes
    torch.manual_seed(0)
    layer, x = torch.nn.Linear(inputs, outputs), torch.randn(256, inputs)
    out = layer(x)
    g = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, layer.weight, g)
    got = linear_weight_grad(g, x)
    assert got.shape == (outputs, inputs) and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
