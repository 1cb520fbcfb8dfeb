"""Policy heads: log-probabilities, bounds, and the capability contract."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from policies import build_head
from policies.heads import UnsupportedByHead, require_capabilities

LOW, HIGH = np.array([-2.0, -1.0, 0.0]), np.array([2.0, 1.0, 4.0])


def gaussian(**kw):
    return build_head("gaussian", 5, LOW, HIGH, hidden_sizes=(32, 32), **kw)


def test_squashed_log_prob_matches_change_of_variables():
    torch.manual_seed(0)
    head = gaussian(squash=True)
    obs = torch.randn(64, 5)
    actions, logp = head.sample(obs)
    mean, log_std = head.distribution(obs)
    # reference: tanh-transformed Normal from torch.distributions, density of the unit action
    ref = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
    unit = head.to_unit(actions)
    expected = ref.log_prob(unit.clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1)
    torch.testing.assert_close(logp, expected, rtol=1e-4, atol=1e-3)
    # log_prob of the sampled action recovers the sample's log-probability
    torch.testing.assert_close(head.log_prob(obs, actions), logp, rtol=1e-4, atol=2e-3)


def test_squashed_density_integrates_to_one_numerically():
    # 1-D head: integrate exp(log pi(u)) over u in (-1, 1) with a fine grid
    head = build_head("gaussian", 2, np.array([-1.0]), np.array([1.0]), hidden_sizes=(8,), squash=True)
    obs = torch.randn(1, 2).expand(20001, 2)
    u = torch.linspace(-1 + 1e-5, 1 - 1e-5, 20001).unsqueeze(-1)
    with torch.no_grad():
        density = head.log_prob(obs, u).exp()
    integral = torch.trapezoid(density, u.squeeze(-1))
    assert abs(float(integral) - 1.0) < 2e-3


@pytest.mark.parametrize("unit_actions", [True, False])
def test_unsquashed_log_prob_and_entropy_are_the_gaussians(unit_actions):
    # the Gaussian is over the box's unit scale (default) or over env units (runs saved before 2026-12-05)
    head = gaussian(squash=False, state_dependent_std=False, log_std_init=-0.5, unit_actions=unit_actions)
    obs, actions = torch.randn(16, 5), torch.randn(16, 3)
    x = head.to_unit(actions) if unit_actions else actions
    mean, log_std = head.distribution(obs)
    dist = Normal(mean, log_std.exp())
    torch.testing.assert_close(head.log_prob(obs, actions), dist.log_prob(x).sum(-1))
    torch.testing.assert_close(head.entropy(obs), dist.entropy().sum(-1))
    lp, ent = head.evaluate_actions(obs, actions)
    torch.testing.assert_close(lp, dist.log_prob(x).sum(-1))
    sampled, logp = head.sample(obs)  # the sample's log-probability is the one log_prob recomputes
    torch.testing.assert_close(head.log_prob(obs, sampled), logp)


@pytest.mark.parametrize("name", ["gaussian", "mixture"])
def test_an_unsquashed_head_starts_centred_in_a_box_away_from_zero(name):
    # PPO's heads on a box [2, 5] x [0, 5]: in env units N(0, 1) sat on (or outside) the bounds and PPO's
    # deterministic action stayed at 2 for a whole run; over the box's unit scale it starts in the middle
    low, high = np.array([2.0, 0.0]), np.array([5.0, 5.0])
    kw = {"state_dependent_std": False, "ortho_init": True} if name == "gaussian" else {}
    head = build_head(name, 4, low, high, hidden_sizes=(16,), squash=False, **kw)
    torch.manual_seed(0)
    obs = torch.randn(4096, 4)
    mode = head.act(obs, deterministic=True)
    if name == "gaussian":
        assert (mode - torch.tensor([3.5, 2.5])).abs().max() < 0.1
    else:  # the heaviest component's mean: spread around the box's middle
        assert (mode.mean(0) - torch.tensor([3.5, 2.5])).abs().max() < 0.5
    a = head.act(obs)
    for d in range(2):  # random actions reach both ends of each dimension
        assert float(a[:, d].min()) == low[d] and float(a[:, d].max()) == high[d]
        assert 0.3 < float(((a[:, d] > low[d]) & (a[:, d] < high[d])).float().mean())


@pytest.mark.parametrize("name,kw", [("gaussian", {"squash": True}), ("gaussian", {"squash": False}), ("deterministic", {})])
def test_actions_stay_in_bounds(name, kw):
    head = build_head(name, 5, LOW, HIGH, hidden_sizes=(16,), **kw)
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(50)  # push the pre-activations far out
    obs = torch.randn(256, 5) * 10
    for det in (True, False):
        a = head.act(obs, deterministic=det)
        assert (a >= torch.tensor(LOW, dtype=torch.float32)).all() and (a <= torch.tensor(HIGH, dtype=torch.float32)).all()


def test_reparameterized_sample_carries_gradient():
    head = gaussian(squash=True)
    actions, logp = head.sample(torch.randn(8, 5))
    actions.sum().backward()
    assert all(p.grad is not None for p in head.net.parameters())
    # the gradient is the reparameterized one: a = low + (high - low) (tanh(mean + std * eps) + 1) / 2
    obs, params = torch.randn(8, 5), list(head.parameters())
    torch.manual_seed(4)
    grads = torch.autograd.grad(head.sample(obs)[0].sum(), params, allow_unused=True)
    torch.manual_seed(4)
    mean, log_std = head.distribution(obs)
    low, high = torch.as_tensor(LOW, dtype=torch.float32), torch.as_tensor(HIGH, dtype=torch.float32)
    manual = low + (high - low) * (torch.tanh(mean + log_std.exp() * torch.randn_like(mean)) + 1) / 2
    for got, want in zip(grads, torch.autograd.grad(manual.sum(), params, allow_unused=True)):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want)


def test_deterministic_head_has_no_log_prob_and_learners_say_so():
    head = build_head("deterministic", 5, LOW, HIGH, hidden_sizes=(16,))
    with pytest.raises(UnsupportedByHead):
        head.log_prob(torch.randn(2, 5), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="algo=sac cannot train the 'deterministic' head.*tractable_log_prob") as exc:
        require_capabilities("sac", head, {"tractable_log_prob": "needed for the entropy term"})
    # the advice names the learner that does train it (the generic advice pointed at expo/parl, which refuse it too)
    assert str(exc.value).endswith("Pick a head that has it (e.g. policy=gaussian), or train the deterministic head "
                                   "with algo=td3.")



def test_imitation_loss_fits_demonstrations():
    torch.manual_seed(1)
    for name in ("gaussian", "deterministic"):
        head = build_head(name, 5, LOW, HIGH, hidden_sizes=(64, 64))
        obs = torch.randn(512, 5)
        target = head.from_unit(torch.tanh(obs[:, :3]))  # a fixed, smooth mapping inside the bounds
        opt = torch.optim.Adam(head.parameters(), lr=3e-3)
        for _ in range(400):
            loss = head.imitation_loss(obs, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        err = (head.act(obs, deterministic=True) - target).abs().mean()
        assert err < 0.1, (name, float(err))


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="high > low"):
        build_head("gaussian", 3, np.array([1.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="unknown policy head"):
        build_head("flowz", 3, LOW, HIGH)


def test_obs_normalizer_is_part_of_the_head_state():
    head = build_head("gaussian", 5, LOW, HIGH, normalize_obs=True, hidden_sizes=(8,))
    head.obs_norm.update(torch.randn(1000, 5) * 3 + 2)
    state = head.state_dict()
    assert any(k.startswith("obs_norm.stats.") for k in state)
    other = build_head("gaussian", 5, LOW, HIGH, normalize_obs=True, hidden_sizes=(8,))
    other.load_state_dict(state)
    obs = torch.randn(4, 5)
    torch.testing.assert_close(other.obs_norm(obs), head.obs_norm(obs))
    assert math.isclose(float(other.obs_norm.shift[0]), float(head.obs_norm.stats.mean[0]), rel_tol=1e-6)


def test_actions_of_the_wrong_shape_are_refused_not_broadcast():
    # [B, 1] broadcast over every action dimension, [B, 1, A] into a [B, B] log-prob: plausible numbers of wrong pairs
    head, obs = gaussian(), torch.randn(4, 5)
    for actions in (torch.zeros(4, 1), torch.zeros(4, 1, 3), torch.zeros(4, 3, 1)):
        with pytest.raises(ValueError, match=r"takes obs \[B, 5\] with actions \[B, 3\] \(one action per observation\)"):
            head.log_prob(obs, actions)
    flow = build_head("flow", 5, LOW, HIGH, hidden_sizes=(16,), chunk=2)
    for actions in (torch.zeros(4, 1), torch.zeros(4, 2, 1), torch.zeros(4, 3, 3)):
        with pytest.raises(ValueError, match=r"actions \[B, 3\] or \[B, 2, 3\] \(one action or chunk per observation\)"):
            flow.imitation_loss(obs, actions)
    assert torch.isfinite(flow.imitation_loss(obs, torch.zeros(4, 2, 3)))


def _mixture_entropy_and_gradient(head, obs, grid):
    """The exact entropy of a 1-D mixture's unit action (quadrature over ``grid``) and its gradient w.r.t. the logits."""
    logp = head.log_prob(obs.expand(len(grid), -1), grid[:, None])
    entropy = -torch.trapezoid(logp.exp() * logp, grid)
    return entropy, torch.autograd.grad(entropy, head.net[-1].bias)[0][:head.k]


@pytest.mark.parametrize("squash", [False, True])
def test_mixture_entropy_gradient_moves_the_component_weights(squash):
    # PPO's entropy bonus on a mixture: the draw of a component is not differentiable, so -log pi(x) of one sample
    # alone gave the weights a gradient of zero on average (measured: 1e-4 against 0.1); the estimate's gradient
    # must be the entropy's, which pushes a dominant component's weight down
    torch.manual_seed(0)
    head = build_head("mixture", 2, np.array([-1.0]), np.array([1.0]), components=2, squash=squash, hidden_sizes=(8,))
    with torch.no_grad():
        head.net[-1].weight.zero_()
        head.net[-1].bias.copy_(torch.tensor([1.0, 0.0, -0.6, 0.6, -1.5, -1.5]))  # logits, means, log-stds
    obs = torch.randn(1, 2)
    grid = torch.linspace(-1 + 1e-6, 1 - 1e-6, 40001) if squash else torch.linspace(-8.0, 8.0, 40001)
    exact, exact_grad = _mixture_entropy_and_gradient(head, obs, grid)
    assert exact_grad[0] < -0.05 and exact_grad[1] > 0.05  # more entropy: less weight on the heavier component
    torch.manual_seed(1)
    estimate = head.entropy(obs.expand(200_000, -1)).mean()
    (grad,) = torch.autograd.grad(estimate, head.net[-1].bias)
    assert abs(float(estimate.detach()) - float(exact.detach())) < 0.02
    torch.testing.assert_close(grad[:2], exact_grad, rtol=0.1, atol=0.01)
    # PPO's evaluate_actions shares one forward pass: its log-prob is log_prob's, its entropy the same estimate
    actions = head.act(obs.expand(8, -1))
    logp, entropy = head.evaluate_actions(obs.expand(8, -1), actions)
    torch.testing.assert_close(logp, head.log_prob(obs.expand(8, -1), actions))
    assert entropy.shape == (8,) and torch.isfinite(entropy).all()


@pytest.mark.parametrize("squash", [True, False])
def test_a_one_component_mixture_starts_centred_in_the_box(squash):
    # the initial means are spread apart so that modes start apart; a single component has none to be apart from
    low, high = np.array([2.0, 0.0]), np.array([5.0, 5.0])
    head = build_head("mixture", 4, low, high, components=1, squash=squash, ortho_init=True, hidden_sizes=(16,))
    mode = head.act(torch.randn(64, 4), deterministic=True)
    assert (mode - torch.tensor([3.5, 2.5])).abs().max() < 0.05
