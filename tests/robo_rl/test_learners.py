"""Learner math on tiny batches with hand-set networks, and head/learner compatibility."""

import contextlib
import copy
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from policies import build_head
from robo_rl.learners.base import Batch
from robo_rl.learners.ppo import PPO
from robo_rl.learners.sac import SAC
from robo_rl.learners.td3 import TD3
from robo_rl.storage.rollout import RolloutBatch

ROOT = Path(__file__).resolve().parents[2]
OBS, ACT = 4, 2
LOW, HIGH = -np.ones(ACT), np.ones(ACT)


def batch(n=8, terminal_every=3):
    torch.manual_seed(5)
    term = torch.zeros(n)
    term[::terminal_every] = 1.0
    return Batch(torch.randn(n, OBS), torch.rand(n, ACT) * 2 - 1, torch.randn(n), torch.randn(n, OBS), term)


def constant_q(critic, values):
    """Make critic i output ``values[i]`` for every input: zero last layer, bias = value."""
    last = critic.net.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        for i, v in enumerate(values):
            last.bias[i].fill_(v)


def test_sac_critic_target_and_loss():
    head = build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(16,))
    sac = SAC(head, gamma=0.9, init_alpha=0.5, critic_hidden=(16,))
    constant_q(sac.critic_target, [3.0, 2.0])  # min over the twin targets = 2.0
    constant_q(sac.critic, [1.0, -1.0])
    b = batch()
    alpha = torch.tensor(0.5)
    torch.manual_seed(11)
    loss, q_mean = sac.critic_loss(b, alpha)
    torch.manual_seed(11)  # the same noise draws the same next actions
    _, next_logp = head.sample(b.next_obs)
    target = b.rewards + 0.9 * (1 - b.terminated) * (2.0 - 0.5 * next_logp)
    expected = 0.5 * (((1.0 - target) ** 2).mean() + ((-1.0 - target) ** 2).mean())
    torch.testing.assert_close(loss, expected)
    assert float(q_mean) == 0.0


def test_sac_actor_loss_and_temperature_step_by_hand():
    # actor (eq. 7): mean(alpha log pi(a|s) - min_i Q_i(s, a)); temperature (eq. 18, in log alpha as SB3 and CleanRL):
    # -mean(log alpha (log pi(a|s) + target entropy)), with the default target entropy -|A|
    head = build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(16,))
    sac = SAC(head, init_alpha=0.5, alpha_lr=0.01, critic_hidden=(16,))
    constant_q(sac.critic, [1.0, -1.0])  # min over the twins = -1.0
    obs = batch().obs
    torch.manual_seed(11)
    loss, logp = sac.actor_loss(obs, torch.tensor(0.5))
    torch.manual_seed(11)  # the same noise draws the same actions
    _, expected_logp = head.sample(obs)
    torch.testing.assert_close(logp, expected_logp.detach())
    torch.testing.assert_close(loss, (0.5 * expected_logp + 1.0).mean())
    metrics = {}
    sac.temperature_step(logp, metrics)
    torch.testing.assert_close(metrics["alpha_loss"], -(math.log(0.5) * (logp - ACT)).mean())
    # Adam's first step moves log alpha by lr against the sign of its gradient, -mean(log pi - |A|)
    step = math.copysign(0.01, -float((logp - ACT).mean()))
    assert float(sac.log_alpha.detach()) == pytest.approx(math.log(0.5) - step, abs=1e-6)


def test_sac_update_changes_all_parts_and_tunes_alpha_toward_target_entropy():
    head = build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(16,))
    sac = SAC(head, critic_hidden=(16,), target_entropy=-50.0)  # entropy far above target: alpha must fall
    before = copy.deepcopy(sac.state_dict())
    for _ in range(5):
        metrics = sac.update(batch())
    after = sac.state_dict()
    for key in ("policy.net.0.weight", "critic.net.layers.0.weight", "critic_target.net.layers.0.weight"):
        assert not torch.equal(before[key], after[key]), key
    assert float(metrics["alpha"]) < 1.0
    # the target critic moves by tau toward the online critic
    assert sac.target_entropy == -50.0 and SAC(head).target_entropy == -ACT


def test_sac_refuses_a_target_entropy_no_squashed_policy_reaches():
    head = build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(16,))
    ceiling = ACT * math.log(2.0)  # the uniform on [-1, 1]^2, the most a squashed density can have
    with pytest.raises(ValueError, match=r"algo.target_entropy=1\.4 cannot be reached: .* below 1\.39"):
        SAC(head, critic_hidden=(16,), target_entropy=1.4)
    assert SAC(head, critic_hidden=(16,), target_entropy=ceiling - 0.01).target_entropy == ceiling - 0.01
    SAC(head, critic_hidden=(16,), target_entropy=5.0, autotune_alpha=False)  # fixed alpha: the target is unused
    unsquashed = build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(16,), squash=False)
    with pytest.raises(ValueError, match=r"algo=sac needs a squashed policy \(policy.squash=true"):
        SAC(unsquashed, critic_hidden=(16,))  # its samples would reach the critics outside the box
    # a -m sweep's check builds on a stand-in 2-D action: 1.5 fits Hopper's 3-D one, so it is left to the real task
    from robo_rl.build import check_head_and_learner
    from robo_rl.defaults import resolve_defaults
    from tests.helpers import compose

    check_head_and_learner(resolve_defaults(compose("algo=sac", "algo.target_entropy=1.5")))


def test_sac_target_critic_moves_by_tau():
    head = build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(16,))
    sac = SAC(head, critic_hidden=(16,), tau=0.05)
    old_target = copy.deepcopy(sac.critic_target.state_dict())
    sac.update(batch())
    online, target = sac.critic.state_dict(), sac.critic_target.state_dict()
    for key, value in target.items():
        torch.testing.assert_close(value, 0.95 * old_target[key] + 0.05 * online[key])
    assert not torch.equal(target[key], online[key])


def test_td3_target_uses_min_of_twin_targets_and_no_entropy():
    head = build_head("deterministic", OBS, LOW, HIGH, hidden_sizes=(16,))
    td3 = TD3(head, gamma=0.9, critic_hidden=(16,))
    constant_q(td3.critic_target, [3.0, 2.0])
    constant_q(td3.critic, [0.0, 0.0])
    b = batch()
    loss, _ = td3.critic_loss(b)
    target = b.rewards + 0.9 * (1 - b.terminated) * 2.0
    torch.testing.assert_close(loss, 2 * (target ** 2).mean())


def test_td3_target_actions_are_smoothed_with_clipped_noise(monkeypatch):
    head = build_head("deterministic", OBS, LOW, HIGH, hidden_sizes=(16,))
    td3 = TD3(head, critic_hidden=(16,), target_noise=0.2, target_noise_clip=0.3)
    seen = []
    forward = type(td3.critic_target).forward

    def spy(self, obs, actions, *args, **kwargs):
        if self is td3.critic_target:
            seen.append(actions.clone())
        return forward(self, obs, actions, *args, **kwargs)

    monkeypatch.setattr(type(td3.critic_target), "forward", spy)
    b = batch(256)
    torch.manual_seed(3)
    td3.critic_loss(b)
    with torch.no_grad():
        clean = head.to_unit(td3.actor_target.sample(b.next_obs)[0])
    torch.manual_seed(3)  # the same draws: a' = clip(pi'(s') + clip(0.2 eps, -0.3, 0.3), -1, 1)
    noise = (torch.randn_like(clean) * 0.2).clamp(-0.3, 0.3)
    torch.testing.assert_close(seen[0], (clean + noise).clamp(-1.0, 1.0))
    moved = (seen[0] - clean).abs()
    assert moved.max() <= 0.3 + 1e-6 and float((moved > 0.25).float().mean()) > 0.05  # noise reaches its clip


def test_td3_delays_actor_and_target_updates():
    head = build_head("deterministic", OBS, LOW, HIGH, hidden_sizes=(16,))
    td3 = TD3(head, policy_delay=2, critic_hidden=(16,))
    w0 = head.net[0].weight.detach().clone()
    t0 = td3.critic_target.net.layers[0].weight.detach().clone()
    td3.update(batch())
    assert torch.equal(head.net[0].weight, w0) and torch.equal(td3.critic_target.net.layers[0].weight, t0)
    m = td3.update(batch())
    assert "actor_loss" in m and not torch.equal(head.net[0].weight, w0)
    assert not torch.equal(td3.critic_target.net.layers[0].weight, t0)


def test_td3_exploration_noise_stays_in_bounds():
    head = build_head("deterministic", OBS, LOW, HIGH, hidden_sizes=(16,))
    td3 = TD3(head, exploration_noise=5.0)
    a = td3.explore(torch.randn(500, OBS))
    assert a.abs().max() <= 1.0 and a.std() > 0.5


def ppo_setup():
    head = build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(16,), squash=False, state_dependent_std=False)
    return head, PPO(head, value_hidden=(16,), clip_range=0.2, vf_coef=0.5, ent_coef=0.0)


def test_ppo_clipped_surrogate_by_hand():
    torch.manual_seed(0)
    head, ppo = ppo_setup()
    obs, actions = torch.randn(32, OBS), torch.randn(32, ACT)
    with torch.no_grad():
        logp = head.log_prob(obs, actions)
        values = ppo.value(obs)
    adv = torch.randn(32)
    shift = torch.linspace(-0.6, 0.6, 32)  # old log-probs: ratios on both sides of the clip range
    mb = RolloutBatch(obs, actions, logp - shift, values, adv, values + 1.0)
    loss, stats = ppo.ppo_loss(mb)
    ratio = shift.exp()
    a = (adv - adv.mean()) / (adv.std() + 1e-8)
    expected_pg = -torch.min(a * ratio, a * ratio.clamp(0.8, 1.2)).mean()
    torch.testing.assert_close(stats["policy_loss"], expected_pg)
    torch.testing.assert_close(stats["value_loss"], torch.tensor(1.0))
    torch.testing.assert_close(loss, expected_pg + 0.5 * 1.0)
    # the share of ratios outside [0.8, 1.2]: 10 of the 32 below, 11 above
    assert float(stats["clip_fraction"]) == 21 / 32 == float(((ratio - 1).abs() > 0.2).float().mean())
    torch.testing.assert_close(stats["approx_kl"], ((ratio - 1) - shift).mean())  # Schulman's k3 estimator


def test_ppo_value_clipping_and_entropy_bonus_by_hand():
    torch.manual_seed(0)
    head, ppo = ppo_setup()
    obs, actions = torch.randn(32, OBS), torch.randn(32, ACT)
    with torch.no_grad():
        logp, values = head.log_prob(obs, actions), ppo.value(obs)
    old_values = values + torch.linspace(-1.0, 1.0, 32)  # the rollout's values: some beyond the 0.2 clip
    returns = values + torch.randn(32)
    mb = RolloutBatch(obs, actions, logp, old_values, torch.randn(32), returns)
    base, stats = ppo.ppo_loss(mb)
    ppo.clip_range_vf, ppo.ent_coef = 0.2, 0.3
    loss, clipped_stats = ppo.ppo_loss(mb)
    used = old_values + (values - old_values).clamp(-0.2, 0.2)
    torch.testing.assert_close(clipped_stats["value_loss"], (returns - used).square().mean())
    assert not torch.allclose(clipped_stats["value_loss"], stats["value_loss"])
    entropy = stats["entropy"]  # a Gaussian's: sum over dimensions of log std + (1 + log 2 pi) / 2
    torch.testing.assert_close(entropy, (head.log_std + 0.5 * (1.0 + math.log(2 * math.pi))).sum())
    torch.testing.assert_close(loss - base, 0.5 * (clipped_stats["value_loss"] - stats["value_loss"]) - 0.3 * entropy)


@pytest.mark.parametrize("fused", ["off", "on"])
def test_ppo_clips_the_global_gradient_norm(fused):
    torch.manual_seed(0)
    head = build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(16, 16), activation="tanh", squash=False,
                      state_dependent_std=False)
    ppo = PPO(head, value_hidden=(16, 16), max_grad_norm=1e-3, epochs=1, minibatch_size=64, fused=fused)
    assert (ppo._fused_step is not None) == (fused == "on")
    obs, actions = torch.randn(64, OBS), torch.randn(64, ACT)
    with torch.no_grad():
        logp, values = head.log_prob(obs, actions), ppo.value(obs)
    m = ppo.update(RolloutBatch(obs, actions, logp, values, torch.randn(64) * 100, values + 100))
    assert float(m["grad_norm"]) > 1.0  # the raw norm is reported
    # Adam's first moment after one step is (1 - beta1) * the gradient it was given: the clipped one
    moments = [st["exp_avg"].reshape(-1) for st in ppo.opt.state_dict()["state"].values()]
    assert float(torch.linalg.vector_norm(torch.cat(moments))) == pytest.approx(0.1 * 1e-3, rel=1e-3)


def test_ppo_first_ratio_is_one():
    head, ppo = ppo_setup()
    obs, actions = torch.randn(16, OBS), torch.randn(16, ACT)
    with torch.no_grad():
        logp, values = head.log_prob(obs, actions), ppo.value(obs)
    _, stats = ppo.ppo_loss(RolloutBatch(obs, actions, logp, values, torch.randn(16), values))
    assert float(stats["approx_kl"]) == 0.0 and float(stats["clip_fraction"]) == 0.0


@pytest.mark.parametrize("name", ["gaussian", "mixture"])
def test_ppo_first_ratio_is_one_for_squashed_heads_whose_tanh_saturates(name):
    # a wide squashed policy samples pre-tanh values whose tanh rounds to the bound in float32: the rollout must
    # store the log-prob the update recomputes from that action, not the sample's own
    torch.manual_seed(0)
    options = {"state_dependent_std": False} if name == "gaussian" else {}
    head = build_head(name, OBS, LOW, HIGH, hidden_sizes=(16,), squash=True, **options)
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(0.0)
        (head.log_std if name == "gaussian" else head.net[-1].bias).add_(2.0)  # std e^2 per dimension
    ppo = PPO(head, value_hidden=(16,))
    obs = torch.randn(512, OBS)
    actions, logp, values = ppo.act(obs)
    _, stats = ppo.ppo_loss(RolloutBatch(obs, actions, logp, values, torch.randn(512), values))
    assert float(stats["approx_kl"]) == 0.0 and float(stats["clip_fraction"]) == 0.0


@pytest.mark.parametrize("algo,head_name,match", [
    (SAC, "deterministic", "tractable_log_prob"),
    (PPO, "deterministic", "tractable_log_prob"),
    (TD3, "gaussian", "use policy=deterministic"),
])
def test_incompatible_heads_are_refused(algo, head_name, match):
    head = build_head(head_name, OBS, LOW, HIGH, hidden_sizes=(8,))
    with pytest.raises(ValueError, match=match):
        algo(head)


def test_training_state_round_trip_includes_optimizers():
    head = build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(16,))
    sac = SAC(head, critic_hidden=(16,))
    for _ in range(3):
        sac.update(batch())
    state = copy.deepcopy(sac.training_state())
    clone = SAC(build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(16,)), critic_hidden=(16,))
    clone.load_training_state(state)
    assert_same_next_update(sac, clone)


def assert_same_next_update(a, b):
    """``a`` and ``b`` make the same update from the same batch and draws, and end with the same weights."""
    torch.manual_seed(3)
    m1 = a.update(batch())
    torch.manual_seed(3)
    m2 = b.update(batch())
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _damaged(state, what):
    """A copy of a SAC training state with one part that does not fit the learner."""
    state = copy.deepcopy(state)
    opts, modules = state["optimizers"], state["modules"]
    if what == "an optimizer missing":
        del opts["alpha"]
    elif what == "an optimizer in excess":
        opts["extra"] = copy.deepcopy(opts["alpha"])
    elif what == "integer weights":  # torch would cast them: whole-number weights
        modules["policy.net.0.weight"] = (modules["policy.net.0.weight"] * 10).int()
    elif what == "a transposed moment":  # as many numbers as the parameter: torch and the fused step take it
        opts["actor"]["state"][0]["exp_avg"] = opts["actor"]["state"][0]["exp_avg"].t().contiguous()
    elif what == "a step of four numbers":
        opts["critic"]["state"][0]["step"] = torch.zeros(4)
    elif what == "state for a parameter it lacks":
        opts["actor"]["state"][99] = copy.deepcopy(opts["actor"]["state"][0])
    elif what == "weights of another width":  # torch copies every tensor that fits before it raises
        modules.update(SAC(build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(32,)), critic_hidden=(16,)).state_dict())
    return state


@pytest.mark.parametrize("what,error,match", [
    ("an optimizer missing", KeyError, "no state for the 'alpha' optimizer"),
    ("an optimizer in excess", ValueError, "optimizer state for 'extra'"),
    ("integer weights", RuntimeError, "policy.net.0.weight is torch.int32 in the state dict, torch.float32 here"),
    ("a transposed moment", ValueError, r"'actor': exp_avg of parameter 0 is torch.float32 \[4, 16\], expected torch.float32 \[16, 4\]"),
    ("a step of four numbers", ValueError, "'critic': step of parameter 0 is torch.float32 \\[4\\], expected one number"),
    ("state for a parameter it lacks", ValueError, "state for parameter 99"),
    ("weights of another width", RuntimeError, "size mismatch for policy.net.0.weight"),
])
def test_a_training_state_that_does_not_fit_is_refused_and_nothing_is_half_loaded(what, error, match):
    # load_training_state is the documented way to load a checkpoint into a learner (README, Python API): one that
    # does not fit is refused, and the learner goes on exactly as if the load had not been tried
    torch.manual_seed(0)
    source = SAC(build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(16,)), critic_hidden=(16,))
    learner = SAC(build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(16,)), critic_hidden=(16,))
    for sac in (source, learner):
        sac.update(batch())
    untouched = SAC(build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(16,)), critic_hidden=(16,))
    untouched.load_training_state(copy.deepcopy(learner.training_state()))
    with pytest.raises(error, match=match):
        learner.load_training_state(_damaged(source.training_state(), what))
    assert_same_next_update(learner, untouched)
    for name, opt in learner.optimizers().items():
        mine, theirs = opt.state_dict()["state"], untouched.optimizers()[name].state_dict()["state"]
        assert all(torch.equal(mine[i][k], theirs[i][k]) for i in theirs for k in theirs[i])


def test_sac_and_td3_targets_work_in_unit_actions_on_an_asymmetric_box():
    # On [-1, 1] env and unit actions are the same numbers; on [0, 5] x [-5, 1] the critics must still see unit
    # actions, TD3's smoothing noise (0.2, clipped at 0.5) must be in unit scale and SAC's log pi a unit-space
    # density: the losses equal references written on the raw networks (SB3's conventions)
    low, high = np.array([0.0, -5.0]), np.array([5.0, 1.0])
    scale, bias = torch.tensor([2.5, 3.0]), torch.tensor([2.5, -2.0])
    b = batch(64)
    unit = b.actions  # uniform in [-1, 1]
    b = b._replace(actions=unit * scale + bias)
    sac = SAC(build_head("gaussian", OBS, low, high, hidden_sizes=(16,)), gamma=0.9, critic_hidden=(16,))
    td3 = TD3(build_head("deterministic", OBS, low, high, hidden_sizes=(16,)), gamma=0.9, critic_hidden=(16,))
    with torch.no_grad():  # targets that differ from the online networks
        for p in [*sac.critic_target.parameters(), *td3.critic_target.parameters(), *td3.actor_target.parameters()]:
            p.add_(0.1 * torch.randn_like(p))
    alpha = torch.tensor(0.3)
    torch.manual_seed(7)
    loss, _ = sac.critic_loss(b, alpha)
    torch.manual_seed(7)
    with torch.no_grad():
        mean, log_std = sac.policy.net(b.next_obs).chunk(2, -1)
        x = mean + log_std.clamp(-20, 2).exp() * torch.randn_like(mean)
        logp = torch.distributions.Normal(mean, log_std.clamp(-20, 2).exp()).log_prob(x).sum(-1)
        logp = logp - torch.log(1 - torch.tanh(x) ** 2).sum(-1)
        y = b.rewards + 0.9 * (1 - b.terminated) * (sac.critic_target(b.next_obs, torch.tanh(x)).min(0).values - 0.3 * logp)
        expected = 0.5 * (sac.critic(b.obs, unit) - y).square().mean(1).sum()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-5)
    torch.manual_seed(9)
    loss, _ = td3.critic_loss(b)
    torch.manual_seed(9)
    with torch.no_grad():
        mu = torch.tanh(td3.actor_target.net(b.next_obs))
        a2 = (mu + (0.2 * torch.randn_like(mu)).clamp(-0.5, 0.5)).clamp(-1, 1)
        y = b.rewards + 0.9 * (1 - b.terminated) * td3.critic_target(b.next_obs, a2).min(0).values
        expected = (td3.critic(b.obs, unit) - y).square().mean(1).sum()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    # exploration noise is 0.1 in unit scale too: std 0.25 and 0.3 in env units, inside the box
    with torch.no_grad():
        td3.policy.net[-1].weight.zero_(), td3.policy.net[-1].bias.zero_()  # the box's centre
    a = td3.explore(torch.zeros(20_000, OBS))
    torch.testing.assert_close(a.std(0), 0.1 * scale, rtol=0.05, atol=0.0)
    assert bool(((a >= torch.tensor(low)) & (a <= torch.tensor(high))).all())


def test_a_learner_built_to_act_does_not_import_torch_dynamo():
    # eval and export build the run's learner only to act (runs.load_learner): torch.optim's constructor guard
    # (torch._disable_dynamo) imported torch._dynamo and sympy (~1 s) for optimizers that never step, and a
    # compile=true run's losses were compiled too
    code = textwrap.dedent("""
        import sys
        import torch
        torch.set_num_threads(1)
        from robo_rl.build import build_env, build_learner, build_policy
        from robo_rl.defaults import resolve_defaults
        from tests.helpers import compose
        env = None
        for overrides in (["algo=sac", "safety.passivity_aware=true", "precision=bf16"], ["algo=ppo"], ["algo=gorl"],
                          ["algo=expo"], ["algo=parl"]):  # (Lagrangian SAC is a SAC; GoRL holds a PPO)
            cfg = resolve_defaults(compose(*overrides, "env=pendulum", "compile=true"))
            env = env or build_env(cfg, num_envs=1, vectorization="sync", randomize=False)
            learner = build_learner(cfg, build_policy(cfg, env), to_act=True)
            assert learner.optimizers() and "_critic_loss" not in learner.__dict__, overrides  # not compiled
        print("torch._dynamo" in sys.modules, "sympy" in sys.modules)
        from robo_rl.learners.optim import FusedAdam
        FusedAdam(learner.parameters(), 1e-3)  # one to train with: torch's guard imports torch._dynamo
        print("torch._dynamo" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.stdout.split() == ["False", "False", "True"], out.stdout + out.stderr[-2000:]


def test_a_learner_cast_after_updates_keeps_training_with_its_adam_state():
    # Adam's moments are made at the first step in the parameters' dtype; a learner cast after it (learner.double())
    # stopped at its next update inside the fused kernel ("expected scalar type Double but found Float")
    torch.manual_seed(0)
    sac = SAC(build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(16,)), critic_hidden=(16,))
    for _ in range(2):
        sac.update(batch())
    sac.double()
    metrics = sac.update(Batch(*(x.double() for x in batch())))
    assert all(torch.isfinite(v) for v in metrics.values())
    for opt in (sac.critic_opt, sac.actor_opt):
        for p in opt.param_groups[0]["params"]:
            state = opt.state[p]  # cast and carried on (the third step), not started again
            assert p.dtype == state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float64
            assert float(state["step"]) == 3


def test_a_learner_built_to_act_has_whole_optimizers():
    # built without torch's guard, its FusedAdams are the same optimizers: the same updates, bit for bit
    from robo_rl.learners.optim import built_to_act

    learners = []
    for to_act in (False, True):
        torch.manual_seed(0)
        head = build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(16,))
        with built_to_act() if to_act else contextlib.nullcontext():
            learners.append(SAC(head, critic_hidden=(16,)))
    for sac in learners:
        torch.manual_seed(3)
        for _ in range(3):
            sac.update(batch())
    trained, acting = learners
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), acting.state_dict().values()))
    assert str(trained.training_state()["optimizers"]) == str(acting.training_state()["optimizers"])
