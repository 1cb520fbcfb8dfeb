"""The fused numpy PPO step computes the same update as the autograd path."""

import copy
import math

import numpy as np
import pytest
import torch

from policies import build_head
from robo_rl.learners.ppo import PPO
from robo_rl.storage.rollout import RolloutBatch

OBS, ACT = 11, 3


def learner(fused, activation="tanh", **kw):
    torch.manual_seed(0)
    head = build_head("gaussian", OBS, -np.ones(ACT), np.ones(ACT), normalize_obs=True, hidden_sizes=(64, 64),
                      activation=activation, squash=False, state_dependent_std=False, ortho_init=True)
    head.obs_norm.update(torch.randn(500, OBS) * 2 + 1)
    return PPO(head, fused=fused, value_activation=activation, minibatch_size=64, **kw)


def rollout(size=256):
    torch.manual_seed(1)
    ref = learner("off")
    obs, actions = torch.randn(size, OBS), torch.randn(size, ACT)
    with torch.no_grad():
        logp = ref.policy.log_prob(obs, actions) - torch.linspace(-0.5, 0.5, size)  # ratios on both sides of the clip
        values = ref.value(obs)
    return RolloutBatch(obs, actions, logp, values, torch.randn(size), values + torch.randn(size))


def run(ppo, batch, seed=5):
    torch.manual_seed(seed)
    return ppo.update(batch)


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values()) if x.is_floating_point())


@pytest.mark.parametrize("options", [{}, {"clip_range_vf": 0.2, "ent_coef": 0.01}, {"max_grad_norm": 1e-3},
                                     {"prior_kl_coef": 0.5}, {"prior_kl_coef": 0.5, "prior_scale": [0.3, 1.0, 2.0]},
                                     {"target_kl": 0.03}])
def test_fused_equals_autograd_over_a_full_update(options):
    options = dict(options)
    scale = options.pop("prior_scale", None)  # GoRL sets it on its PPO (the latent's reset scale)
    auto, fused = learner("off", **options), learner("on", **options)
    for ppo in (auto, fused):
        ppo.prior_scale = None if scale is None else torch.tensor(scale)
    assert fused._fused_step is not None and auto._fused_step is None
    batch = rollout()
    m_auto, m_fused = run(auto, batch), run(fused, batch)  # 10 epochs x 4 minibatches = 40 Adam steps
    assert max_diff(auto, fused) < 1e-6
    assert set(m_auto) == set(m_fused) and ("prior_kl" in m_auto) == ("prior_kl_coef" in options)
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm", "prior_kl",
                "minibatches"):
        if key not in m_auto:
            continue
        assert abs(float(m_auto[key]) - float(m_fused[key])) < 1e-4 * max(1.0, abs(float(m_auto[key]))), key
    sa, sf = auto.opt.state_dict(), fused.opt.state_dict()
    for i in sa["state"]:
        torch.testing.assert_close(sa["state"][i]["exp_avg_sq"], sf["state"][i]["exp_avg_sq"], rtol=1e-5, atol=1e-10)
        assert float(sa["state"][i]["step"]) == float(sf["state"][i]["step"]) == float(m_auto["minibatches"])
    assert float(m_auto["minibatches"]) == (3 if "target_kl" in options else 40)  # 0.03: stops at the 4th


@pytest.mark.parametrize("fused", ["off", "on"])
def test_target_kl_stops_before_the_minibatch_that_passes_it(fused):
    # the rollout's log-probs sit off the policy's (ratios e^-0.5..e^0.5): the KL is 0.042 before any
    # step, over 1.5 * 0.01, so no step is taken; SB3 and Spinning Up also skip the step that would pass
    ppo, batch = learner(fused, target_kl=0.01), rollout()
    before = copy.deepcopy(ppo.state_dict())
    m = run(ppo, batch)
    assert float(m["minibatches"]) == 0 and float(m["grad_norm"]) == 0.0
    assert float(m["approx_kl"]) == pytest.approx(0.042, abs=1e-3)
    assert all(torch.equal(before[k], v) for k, v in ppo.state_dict().items())
    assert all(float(st["step"]) == 0 for st in ppo.opt.state_dict()["state"].values())
    ppo = learner(fused, target_kl=0.03)
    m = run(ppo, batch)  # minibatches 1-3 are stepped, the 4th measures 0.0453 > 0.045 and stops the update
    assert float(m["minibatches"]) == 3
    assert all(float(st["step"]) == 3 for st in ppo.opt.state_dict()["state"].values())


def test_fused_rollout_inference_equals_the_heads():
    auto, fused = learner("off"), learner("on")
    batch = rollout()
    run(auto, batch)
    run(fused, batch)  # after an update, so the flat buffers are in use
    obs = torch.randn(64, OBS)
    torch.manual_seed(3)
    a1, lp1, v1 = auto.act(obs)
    torch.manual_seed(3)
    a2, lp2, v2 = fused.act(obs)
    for x, y in ((a1, a2), (lp1, lp2), (v1, v2)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_policy_and_value_of_different_shapes_use_autograd():
    torch.manual_seed(0)
    head = build_head("gaussian", OBS, -np.ones(ACT), np.ones(ACT), hidden_sizes=(64, 64), activation="tanh",
                      squash=False, state_dependent_std=False)
    assert PPO(head, value_hidden=(128, 128))._fused_step is None
    with pytest.raises(ValueError, match="same hidden sizes"):
        PPO(head, value_hidden=(128,), fused="on")


def test_fused_relu_matches_over_a_few_steps():
    # ReLU's kink lets float rounding flip a unit eventually; over a few steps the paths agree
    auto, fused = learner("off", "relu", epochs=1), learner("on", "relu", epochs=1)
    batch = rollout()
    run(auto, batch)
    run(fused, batch)
    assert max_diff(auto, fused) < 1e-6


def test_fused_state_survives_checkpoint_round_trip():
    batch = rollout()
    a = learner("on")
    run(a, batch)
    state = copy.deepcopy(a.training_state())
    b = learner("on")
    b.load_training_state(state)  # replaces parameter data and optimizer tensors: the step re-attaches
    run(a, batch, seed=9)
    run(b, batch, seed=9)
    assert max_diff(a, b) == 0.0
    c = learner("off")
    c.load_training_state(state)
    run(c, batch, seed=9)
    assert max_diff(a, c) < 1e-6


def test_unsupported_heads_fall_back_or_explain():
    head = build_head("gaussian", OBS, -np.ones(ACT), np.ones(ACT), squash=True, hidden_sizes=(16,))
    assert PPO(head, fused="auto")._fused_step is None  # silently the autograd path
    with pytest.raises(ValueError, match="fused=on: the fused PPO step needs the unsquashed Gaussian head"):
        PPO(head, fused="on")
    with pytest.raises(ValueError, match="auto, on or off"):
        PPO(head, fused="yes")


def test_prior_kl_penalty_is_the_closed_form_kl_to_the_standard_normal():
    ppo = learner("off", prior_kl_coef=0.5)
    last = [m for m in ppo.policy.net if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # mean (0.5, -1, 0) at every state, std e^-0.5
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.5, -1.0, 0.0]))
        ppo.policy.log_std.fill_(-0.5)
    mean, log_std = torch.tensor([0.5, -1.0, 0.0]), torch.full((3,), -0.5)
    expected = float((0.5 * ((2 * log_std).exp() + mean**2 - 1) - log_std).sum())
    _, stats = ppo.ppo_loss(rollout())
    assert abs(float(stats["prior_kl"]) - expected) < 1e-5
    assert "prior_kl" not in learner("off").ppo_loss(rollout())[1]
    # toward N(0, diag(s^2)) (GoRL after a reset that kept the latent's std): torch's own KL of the two Gaussians
    ppo.prior_scale = torch.tensor([0.3, 1.0, 2.0])
    expected = float(torch.distributions.kl_divergence(torch.distributions.Normal(mean, log_std.exp()),
                                                       torch.distributions.Normal(0.0, ppo.prior_scale)).sum())
    assert abs(float(ppo.ppo_loss(rollout())[1]["prior_kl"]) - expected) < 1e-5


def test_prior_kl_penalty_needs_an_unsquashed_gaussian():
    head = build_head("gaussian", OBS, -np.ones(ACT), np.ones(ACT), squash=True)
    with pytest.raises(ValueError, match="unsquashed Gaussian"):
        PPO(head, prior_kl_coef=0.1)
    with pytest.raises(ValueError, match="prior_kl_coef must be >= 0"):
        learner("off", prior_kl_coef=-1.0)


@pytest.mark.parametrize("fused", ["off", "on"])
def test_an_update_that_diverges_reports_it_in_its_metrics(fused):
    # lr 1e37 blows the weights up within the update, from a finite rollout: the losses go NaN/Inf, which the
    # runner stops on at once. The fused step took a NaN gradient norm for a KL stop: it ended the update and
    # reported a value loss of 0 and fewer minibatches than it had stepped, over NaN weights
    ppo, batch = learner(fused, lr=1e37), rollout()
    with np.errstate(all="ignore"):
        m = run(ppo, batch)
    assert not math.isfinite(float(m["value_loss"])) and not math.isfinite(float(m["grad_norm"]))
    assert float(m["minibatches"]) == 40  # every minibatch was stepped (no KL limit is set)
    assert all(float(st["step"]) == 40 for st in ppo.opt.state_dict()["state"].values())


def test_fused_equals_autograd_on_an_asymmetric_box_with_a_ragged_last_minibatch():
    # unit_actions maps the Gaussian into [0, 5] x [-5, 1] x [2, 2.5]; 250 samples make minibatches of 64, 64,
    # 64 and 58; the rollout comes from the learner's own act (env-unit actions, as the runner stores them)
    low, high = np.array([0.0, -5.0, 2.0]), np.array([5.0, 1.0, 2.5])

    def make(fused):
        torch.manual_seed(0)
        head = build_head("gaussian", OBS, low, high, normalize_obs=True, hidden_sizes=(32, 32), activation="tanh",
                          squash=False, state_dependent_std=False, ortho_init=True)
        head.obs_norm.update(torch.randn(500, OBS) * 3 + 2)
        return PPO(head, fused=fused, value_hidden=(32, 32), minibatch_size=64, clip_range_vf=0.2, ent_coef=0.01)

    auto, fused = make("off"), make("on")
    torch.manual_seed(1)
    obs = torch.randn(250, OBS) * 3 + 2
    actions, logp, values = auto.act(obs)
    assert bool(((actions < torch.tensor(low)) | (actions > torch.tensor(high))).any())  # unclipped samples too
    batch = RolloutBatch(obs, actions, logp - torch.linspace(-0.3, 0.3, 250), values, torch.randn(250) * 3,
                         values + torch.randn(250))
    m_auto, m_fused = run(auto, batch), run(fused, batch)
    assert max_diff(auto, fused) < 1e-6
    assert float(m_auto["minibatches"]) == float(m_fused["minibatches"]) == 40
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm"):
        assert abs(float(m_auto[key]) - float(m_fused[key])) < 1e-4 * max(1.0, abs(float(m_auto[key]))), key


def test_a_learner_cast_from_float32_leaves_the_fused_step():
    # ppo.double() after construction: the fused step computes in float32, so its update failed on the float64
    # weights ("expected scalar type Double but found Float"); fused=auto leaves it to autograd, fused=on says why
    batch = RolloutBatch(*(t.double() for t in rollout()))
    auto, off = learner("auto").double(), learner("off").double()
    assert not auto._fused
    run(auto, batch)
    run(off, batch)
    assert max_diff(auto, off) == 0.0
    with pytest.raises(ValueError, match="algo.fused=on: the fused PPO step needs float32 parameters, and this learner "
                                         "was cast to torch.float64; use algo.fused=auto"):
        learner("on").double().act(batch.obs[:2])


def test_compile_keeps_the_fused_step():
    # compile=true compiles the autograd path's loss; the fused numpy step, faster on the CPU than that compiled loss
    # (benchmarks: throughput_compile), must go on running, as it did not before 2026-12-06
    compiled, eager = learner("auto"), learner("auto")
    compiled.compile_update(backend="eager")  # dynamo's wrapping without inductor's C++ build
    assert compiled._fused and "_ppo_loss" in compiled.__dict__
    batch = rollout()
    run(compiled, batch), run(eager, batch)
    assert max_diff(compiled, eager) == 0.0 and max_diff(compiled, learner("auto")) > 0.0


def test_a_learner_moved_off_the_cpu_leaves_the_fused_step():
    # the fused step is chosen at construction, on CPU parameters; PPO(head).to("cuda") then made the rollout's act
    # read the GPU tensors with numpy (TypeError). The meta device stands in for cuda (no GPU here): the learner acts
    # through the autograd path there, and fused="on" refuses the move as it refuses such a learner when built.
    for fused in ("auto", "on"):
        ppo = learner(fused)
        assert ppo._fused_step is not None
        ppo.to("meta")
        obs = torch.zeros(4, OBS, device="meta")
        if fused == "auto":
            assert {x.device.type for x in ppo.act(obs)} == {"meta"}
        else:
            with pytest.raises(ValueError, match="algo.fused=on: the fused PPO step runs on CPU only, and this learner "
                                                 "was moved to meta; use algo.fused=auto"):
                ppo.act(obs)


def test_a_frozen_parameter_leaves_the_fused_step():
    # the fused step computes every gradient itself: a parameter frozen after construction (requires_grad_(False)) was
    # trained on as if it were not. Under fused=auto the update goes to autograd, which refuses it as with fused=off;
    # fused=on says why
    outcomes = []
    for fused in ("auto", "off"):
        ppo = learner(fused)
        frozen = ppo.value_net[0].weight.requires_grad_(False)
        before = frozen.clone()
        assert not ppo._fused
        with pytest.raises(RuntimeError, match="does not require grad") as err:
            run(ppo, rollout())
        outcomes.append(str(err.value))
        assert torch.equal(frozen, before)
    assert outcomes[0] == outcomes[1]
    ppo = learner("on")
    ppo.value_net[0].bias.requires_grad_(False)
    with pytest.raises(ValueError, match=r"algo.fused=on: the fused PPO step trains every parameter of its networks, "
                                         r"and 1 of this learner's were frozen \(requires_grad=False\)"):
        ppo.act(torch.zeros(2, OBS))
