"""SAC, TD3 and PPO take the update of Stable-Baselines3 2.x (the reference implementation): the same weights, batch and
random draws give the same losses, gradients and parameters after the step.

Each test copies an SB3 model's weights into a robo-rl learner of the same architecture, feeds both one batch and one
set of random draws, runs the update, and compares. A comment names every setting aligned to make the two comparable;
the rest are each library's defaults. Gradients are compared besides the parameters because Adam's first steps
hide a gradient's scale (a loss off by a constant factor moves the parameters by the same lr * sign(g)).
"""

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("stable_baselines3")
from stable_baselines3 import PPO as SB3PPO  # noqa: E402
from stable_baselines3 import SAC as SB3SAC  # noqa: E402
from stable_baselines3 import TD3 as SB3TD3  # noqa: E402
from stable_baselines3.common.logger import Logger  # noqa: E402
from stable_baselines3.common.type_aliases import ReplayBufferSamples  # noqa: E402

from policies import build_head  # noqa: E402
from robo_rl.learners.base import Batch  # noqa: E402
from robo_rl.learners.ppo import PPO  # noqa: E402
from robo_rl.learners.sac import SAC  # noqa: E402
from robo_rl.learners.td3 import TD3  # noqa: E402
from robo_rl.storage.rollout import RolloutBatch, compute_gae  # noqa: E402

OBS, HIDDEN = 5, 16
# uneven bounds: SB3 keeps unit actions [-1, 1] in replay, robo-rl env actions that its critics see through to_unit
LOW, HIGH = np.array([-2.0, -1.0, 0.0], np.float32), np.array([2.0, 1.0, 3.0], np.float32)
# 64 rows x 2 critics: the critics' last layer takes the path a training batch takes (EnsembleLinear.DOT_FROM)
B = 64


class _Spaces(gym.Env):
    """The spaces SB3 builds its networks from; its train() never steps the env."""

    def __init__(self, obs_dim, low, high):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(low, high, dtype=np.float32)

    def reset(self, seed=None, options=None):
        return np.zeros(self.observation_space.shape, np.float32), {}

    def step(self, action):
        return np.zeros(self.observation_space.shape, np.float32), 0.0, False, False, {}


def sb3_model(cls, low=LOW, high=HIGH, obs_dim=OBS, **kwargs):
    model = cls("MlpPolicy", _Spaces(obs_dim, low, high), device="cpu", seed=0, **kwargs)
    model.set_logger(Logger(None, []))  # train() records its losses here (no files written)
    return model


def linears(net):
    return [m for m in net if isinstance(m, nn.Linear)]


def same_layers(ours, theirs):
    """Pairs (our parameter, view in SB3's layout, SB3's parameters) for two lists of nn.Linear."""
    return [(a.weight, lambda t: t, (b.weight,)) for a, b in zip(ours, theirs)] + \
        [(a.bias, lambda t: t, (b.bias,)) for a, b in zip(ours, theirs)]


def critic_layers(ensemble, sb_critic):
    """Pairs for a QEnsemble and SB3's ContinuousCritic: member e's weight is stored [in, out] (x @ W), nn.Linear's
    [out, in] (x @ W^T); both critics take cat(obs, unit action) in their first layer."""
    pairs = []
    for e, q in enumerate(sb_critic.q_networks):
        for ours, theirs in zip(ensemble.net.layers, linears(q)):
            pairs.append((ours.weight, lambda t, e=e: t[e].T, (theirs.weight,)))
            pairs.append((ours.bias, lambda t, e=e: t[e, 0], (theirs.bias,)))
    return pairs


def moved_targets(*nets):
    """Targets that differ from the online networks, as after training (a target used in place of another shows)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for net in nets:
            for p in net.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def copy_weights(pairs):
    with torch.no_grad():
        for ours, view, theirs in pairs:
            view(ours).copy_(torch.cat([p for p in theirs]))


def assert_pairs(pairs, ours, theirs, what):
    """``ours(p)`` / ``theirs(p)``: the tensor to compare for a parameter (itself, or its recorded gradient)."""
    for i, (p, view, sb_params) in enumerate(pairs):
        torch.testing.assert_close(view(ours(p)), torch.cat([theirs(q) for q in sb_params]), rtol=1e-5, atol=1e-6,
                                   msg=lambda m, i=i: f"{what}, pair {i}: {m}")


def record_sb3_grads(monkeypatch, optimizer, into):
    step = optimizer.step

    def recorded(*args, **kwargs):
        into.append({id(p): p.grad.clone() for g in optimizer.param_groups for p in g["params"]})
        return step(*args, **kwargs)

    monkeypatch.setattr(optimizer, "step", recorded)


def record_grads(monkeypatch, optimizer, into):
    apply, params = optimizer.apply, optimizer.param_groups[0]["params"]

    def recorded(grads):
        grads = list(grads)
        into.append({id(p): g.clone() for p, g in zip(params, grads)})
        apply(grads)

    monkeypatch.setattr(optimizer, "apply", recorded)


def draws_from(queue):
    """A stand-in for torch.randn_like that returns the queued standard-normal draws in order."""

    def randn_like(t, *args, **kwargs):
        eps = queue.pop(0)
        assert eps.shape == t.shape, (eps.shape, t.shape)
        return eps.clone()

    return randn_like


def replay_batch(g, unit):
    """One transition batch: (obs, unit actions, rewards, next_obs, terminated), a third of it terminal."""
    obs, next_obs = torch.randn(B, OBS, generator=g), torch.randn(B, OBS, generator=g)
    rewards, terminated = torch.randn(B, generator=g), (torch.rand(B, generator=g) < 0.3).float()
    return obs, unit, rewards, next_obs, terminated


def sb3_sample(batch):
    obs, unit, rewards, next_obs, terminated = batch
    # SB3 samples indices with replacement: hand it the exact batch instead
    return lambda batch_size, env=None: ReplayBufferSamples(obs, unit, next_obs, terminated[:, None], rewards[:, None])


@pytest.mark.parametrize("fused", ["off", "on"])
def test_sac_update_matches_sb3(monkeypatch, fused):
    # fused=on: the hand-derived gradients of offpolicy_fused.py. ent_coef "auto_0.5" = init_alpha 0.5: log alpha != 0, so the temperature loss is not 0; one learning rate
    # (SB3's single learning_rate, robo-rl's three defaults are equal)
    sb = sb3_model(SB3SAC, policy_kwargs=dict(net_arch=[HIDDEN, HIDDEN]), learning_rate=3e-4, ent_coef="auto_0.5",
                   buffer_size=B, learning_starts=0)
    # SB3 takes log(1 - tanh(x)^2 + 1e-6) for the squash correction, robo-rl the exact value
    # (policies/heads/gaussian.py): here 2e-5 apart in the gradients. With SB3's epsilon at 0 they are one function
    sb.actor.action_dist.epsilon = 0.0
    head = build_head("gaussian", obs_dim=OBS, action_low=LOW, action_high=HIGH, hidden_sizes=(HIDDEN, HIDDEN))
    sac = SAC(head, critic_hidden=(HIDDEN, HIDDEN), init_alpha=0.5, fused=fused)
    ours_last, actor = linears(head.net)[-1], sb.actor
    actor_pairs = same_layers(linears(head.net)[:-1], linears(actor.latent_pi)) + [  # our last layer: [mean, log std]
        (ours_last.weight, lambda t: t, (actor.mu.weight, actor.log_std.weight)),
        (ours_last.bias, lambda t: t, (actor.mu.bias, actor.log_std.bias))]
    critic_pairs = critic_layers(sac.critic, sb.critic)
    target_pairs = critic_layers(sac.critic_target, sb.critic_target)
    alpha_pairs = [(sac.log_alpha, lambda t: t.reshape(1), (sb.log_ent_coef,))]
    moved_targets(sb.critic_target)
    copy_weights(actor_pairs + critic_pairs + target_pairs)
    assert float(sac.log_alpha.detach()) == pytest.approx(float(sb.log_ent_coef.detach()))

    g = torch.Generator().manual_seed(1)
    batch = replay_batch(g, torch.rand(B, 3, generator=g) * 2 - 1)
    eps_pi, eps_next = torch.randn(B, 3, generator=g), torch.randn(B, 3, generator=g)
    sb_grads, our_grads = {}, {}
    for name, opt in (("actor", sb.actor.optimizer), ("critic", sb.critic.optimizer), ("alpha", sb.ent_coef_optimizer)):
        record_sb3_grads(monkeypatch, opt, sb_grads.setdefault(name, []))
    for name, opt in sac.optimizers().items():
        record_grads(monkeypatch, opt, our_grads.setdefault(name, []))

    # The same draws, in each library's order: SB3 samples the actor's action first, robo-rl the target's
    sb_draws = [eps_pi, eps_next]
    with monkeypatch.context() as m:
        m.setattr(torch.distributions.Normal, "rsample",
                  lambda self, sample_shape=torch.Size(): self.loc + sb_draws.pop(0) * self.scale)
        m.setattr(sb.replay_buffer, "sample", sb3_sample(batch))
        sb.train(gradient_steps=1, batch_size=B)
    our_draws = [eps_next, eps_pi]
    obs, unit, rewards, next_obs, terminated = batch
    with monkeypatch.context() as m:
        m.setattr(torch, "randn_like", draws_from(our_draws))
        metrics = sac.update(Batch(obs, head.from_unit(unit), rewards, next_obs, terminated))
    assert sb_draws == [] and our_draws == []

    logged = sb.logger.name_to_value
    for ours, theirs in (("critic_loss", "critic_loss"), ("actor_loss", "actor_loss"), ("alpha_loss", "ent_coef_loss"),
                         ("alpha", "ent_coef")):
        assert float(metrics[ours]) == pytest.approx(logged[f"train/{theirs}"], rel=1e-5), ours
    # SB3 steps alpha first, then the critics, then the actor (against the updated critics, at the old alpha); robo-rl
    # critics, actor, alpha: the gradients (and so the steps) are the same
    for name, pairs in (("critic", critic_pairs), ("actor", actor_pairs), ("alpha", alpha_pairs)):
        assert len(our_grads[name]) == len(sb_grads[name]) == 1
        assert_pairs(pairs, lambda p, n=name: our_grads[n][0][id(p)], lambda p, n=name: sb_grads[n][0][id(p)],
                     f"{name} gradient")
    assert_pairs(actor_pairs + critic_pairs + target_pairs + alpha_pairs, lambda p: p.detach(), lambda p: p.detach(),
                 "parameters after the step")


@pytest.mark.parametrize("fused", ["off", "on"])
def test_td3_updates_match_sb3(monkeypatch, fused):
    # Two updates: the second takes the delayed actor step and moves both targets (policy_delay 2 in both). The
    # learning rates are both libraries' TD3 defaults (1e-3). fused=on: the hand-derived gradients of offpolicy_fused.py
    sb = sb3_model(SB3TD3, policy_kwargs=dict(net_arch=[HIDDEN, HIDDEN]), learning_rate=1e-3, buffer_size=B,
                   learning_starts=0)
    head = build_head("deterministic", obs_dim=OBS, action_low=LOW, action_high=HIGH, hidden_sizes=(HIDDEN, HIDDEN))
    td3 = TD3(head, critic_hidden=(HIDDEN, HIDDEN), fused=fused)
    actor_pairs = same_layers(linears(head.net), linears(sb.actor.mu))  # SB3's mu ends in its Tanh, ours in the head
    actor_target_pairs = same_layers(linears(td3.actor_target.net), linears(sb.actor_target.mu))
    critic_pairs = critic_layers(td3.critic, sb.critic)
    target_pairs = critic_layers(td3.critic_target, sb.critic_target)
    everything = actor_pairs + actor_target_pairs + critic_pairs + target_pairs
    moved_targets(sb.critic_target, sb.actor_target)
    with torch.no_grad():  # target actions near the bounds, so that with the noise some leave [-1, 1] and are clamped
        linears(sb.actor_target.mu)[-1].bias.copy_(torch.tensor([1.5, -1.5, 0.0]))
    copy_weights(everything)

    sb_grads, our_grads = {}, {}
    for name, opt in (("actor", sb.actor.optimizer), ("critic", sb.critic.optimizer)):
        record_sb3_grads(monkeypatch, opt, sb_grads.setdefault(name, []))
    for name, opt in td3.optimizers().items():
        record_grads(monkeypatch, opt, our_grads.setdefault(name, []))
    g = torch.Generator().manual_seed(1)
    for update in range(2):
        batch = replay_batch(g, torch.rand(B, 3, generator=g) * 2 - 1)
        # target smoothing noise eps * 0.2 on the unit action: draws of 2 sigma and more, so the 0.5 clip binds
        eps = 2.0 * torch.randn(B, 3, generator=g)
        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "normal_", lambda self, mean=0.0, std=1.0: self.copy_(eps * std + mean))
            m.setattr(sb.replay_buffer, "sample", sb3_sample(batch))
            sb.train(gradient_steps=1, batch_size=B)
        draws = [eps]
        obs, unit, rewards, next_obs, terminated = batch
        with monkeypatch.context() as m:
            m.setattr(torch, "randn_like", draws_from(draws))
            metrics = td3.update(Batch(obs, head.from_unit(unit), rewards, next_obs, terminated))
        assert draws == []
        logged = sb.logger.name_to_value
        assert float(metrics["critic_loss"]) == pytest.approx(logged["train/critic_loss"], rel=1e-5)
        assert ("actor_loss" in metrics) == (update == 1)
    assert float(metrics["actor_loss"]) == pytest.approx(logged["train/actor_loss"], rel=1e-5)

    steps_taken = {name: (len(our_grads[name]), len(sb_grads[name])) for name in ("critic", "actor")}
    assert steps_taken == {"critic": (2, 2), "actor": (1, 1)}
    for name, pairs, steps in (("critic", critic_pairs, 2), ("actor", actor_pairs, 1)):
        for k in range(steps):
            assert_pairs(pairs, lambda p, n=name, k=k: our_grads[n][k][id(p)],
                         lambda p, n=name, k=k: sb_grads[n][k][id(p)], f"{name} gradient, step {k}")
    assert_pairs(everything, lambda p: p.detach(), lambda p: p.detach(), "parameters after two updates")


@pytest.mark.parametrize("fused", ["off", "on"])
def test_ppo_update_matches_sb3(monkeypatch, fused):
    # Action bounds [-1, 1]: robo-rl's Gaussian is over the box's unit scale, SB3's in env units (README; the same
    # numbers on [-1, 1]). Tanh MLPs for both networks, Adam eps 1e-5 in both; an entropy bonus, value clipping and a
    # gradient-norm clip that binds (the norms are ~1.6 > 0.5) put every term of the loss in play
    obs_dim, act_dim, steps, minibatch, epochs = 11, 3, 32, 8, 2
    low, high = -np.ones(act_dim, np.float32), np.ones(act_dim, np.float32)
    options = dict(clip_range=0.2, clip_range_vf=0.05, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, gamma=0.99,
                   gae_lambda=0.95)
    sb = sb3_model(SB3PPO, low, high, obs_dim, n_steps=steps, batch_size=minibatch, n_epochs=epochs, learning_rate=3e-4,
                   policy_kwargs=dict(net_arch=dict(pi=[HIDDEN, HIDDEN], vf=[HIDDEN, HIDDEN])), **options)
    head = build_head("gaussian", obs_dim=obs_dim, action_low=low, action_high=high, hidden_sizes=(HIDDEN, HIDDEN),
                      activation="tanh", squash=False, state_dependent_std=False)
    ppo = PPO(head, lr=3e-4, epochs=epochs, minibatch_size=minibatch, value_hidden=(HIDDEN, HIDDEN), fused=fused,
              **options)
    assert ppo._fused == (fused == "on")
    policy = sb.policy
    pairs = (same_layers(linears(head.net), linears(policy.mlp_extractor.policy_net) + [policy.action_net])
             + same_layers(linears(ppo.value_net), linears(policy.mlp_extractor.value_net) + [policy.value_net])
             + [(head.log_std, lambda t: t, (policy.log_std,))])
    with torch.no_grad():
        policy.log_std.fill_(0.3)
    copy_weights(pairs)

    g = torch.Generator().manual_seed(1)
    obs = torch.randn(steps, obs_dim, generator=g)
    with torch.no_grad():  # a rollout of an older policy: actions and log-probs off the current one, so the clip binds
        actions = head.sample(obs)[0] + 0.5 * torch.randn(steps, act_dim, generator=g)
        log_probs = head.log_prob(obs, actions) + 0.3 * torch.randn(steps, generator=g)
        values = ppo.value(obs) + 0.1 * torch.randn(steps, generator=g)
    rewards, dones = torch.randn(steps, generator=g), (torch.rand(steps, generator=g) < 0.15).float()
    last_values = torch.randn(1, generator=g)
    # One env: SB3 flattens its [T, N] buffer env by env, robo-rl step by step
    advantages, returns = compute_gae(rewards[:, None], values[:, None], dones[:, None], last_values, 0.99, 0.95)
    buffer = sb.rollout_buffer
    buffer.reset()
    episode_starts = torch.cat([torch.ones(1), dones[:-1]])  # SB3 marks the step after a done
    for t in range(steps):
        buffer.add(obs[t:t + 1].numpy(), actions[t:t + 1].numpy(), rewards[t:t + 1].numpy(),
                   episode_starts[t:t + 1].numpy(), values[t:t + 1], log_probs[t:t + 1])
    buffer.compute_returns_and_advantage(last_values, dones[-1:].numpy())
    np.testing.assert_allclose(buffer.advantages[:, 0], advantages[:, 0].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(buffer.returns[:, 0], returns[:, 0].numpy(), rtol=1e-6, atol=1e-6)

    # The same minibatches: one permutation per epoch for both (SB3 draws them from numpy, robo-rl from torch)
    perms = [torch.randperm(steps, generator=g) for _ in range(epochs)]
    sb_perms, our_perms = [p.numpy() for p in perms], list(perms)
    sb_grads, our_grads = [], []
    record_sb3_grads(monkeypatch, policy.optimizer, sb_grads)
    record_grads(monkeypatch, ppo.opt, our_grads)  # (the fused path steps its flat buffers with Adam's kernel itself)
    with monkeypatch.context() as m:
        m.setattr(np.random, "permutation", lambda n: sb_perms.pop(0))
        sb.train()
    with monkeypatch.context() as m:
        m.setattr(torch, "randperm", lambda n, *args, **kwargs: our_perms.pop(0))
        metrics = ppo.update(RolloutBatch(obs, actions, log_probs, values, advantages[:, 0], returns[:, 0]))
    assert sb_perms == [] and our_perms == []

    logged = sb.logger.name_to_value  # means over every minibatch step (approx_kl: SB3 logs the last epoch's only)
    assert float(metrics["minibatches"]) == len(sb_grads) == epochs * steps // minibatch
    for ours, theirs, sign in (("policy_loss", "policy_gradient_loss", 1), ("value_loss", "value_loss", 1),
                               ("entropy", "entropy_loss", -1), ("clip_fraction", "clip_fraction", 1)):
        assert float(metrics[ours]) == pytest.approx(sign * logged[f"train/{theirs}"], rel=1e-5), ours
    assert 0.0 < float(metrics["clip_fraction"]) < 1.0
    if fused == "off":
        assert len(our_grads) == len(sb_grads)
        for k in range(len(sb_grads)):
            assert_pairs(pairs, lambda p, k=k: our_grads[k][id(p)], lambda p, k=k: sb_grads[k][id(p)],
                         f"gradient, minibatch step {k}")
    assert_pairs(pairs, lambda p: p.detach(), lambda p: p.detach(), "parameters after the update")
