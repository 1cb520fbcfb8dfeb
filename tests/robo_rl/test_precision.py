"""precision=bf16: SAC's and TD3's loss computations under autocast, everything the losses read in float32."""

import numpy as np
import pytest
import torch

from policies import build_head
from policies.networks import EnsembleMLP, full_precision
from robo_rl.learners.base import Batch
from robo_rl.learners.sac import SAC
from robo_rl.learners.td3 import TD3
from robo_rl.train import train
from robo_rl.validation import ConfigError
from tests.helpers import FAST, compose

OBS, ACT = 11, 3
LOW, HIGH = -np.ones(ACT), np.ones(ACT)


def batches(n=4, rows=256):
    g = torch.Generator().manual_seed(0)
    return [Batch(torch.randn(rows, OBS, generator=g), torch.rand(rows, ACT, generator=g) * 2 - 1,
                  torch.randn(rows, generator=g), torch.randn(rows, OBS, generator=g), torch.zeros(rows))
            for _ in range(n)]


def learner(algo, bf16):
    torch.manual_seed(0)
    if algo == "sac":
        made = SAC(build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(256, 256)), critic_hidden=(256, 256))
    else:
        made = TD3(build_head("deterministic", OBS, LOW, HIGH, hidden_sizes=(256, 256)), critic_hidden=(256, 256))
    if bf16:
        made.autocast_update(torch.bfloat16)
    return made


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_bf16_updates_keep_float32_state_and_stay_close_to_float32(algo):
    plain, mixed = learner(algo, False), learner(algo, True)
    for b in batches():
        torch.manual_seed(1)  # the same sampling noise in both
        expected = plain.update(b)
        torch.manual_seed(1)
        got = mixed.update(b)
        assert set(got) == set(expected)
        for key, value in got.items():  # the losses, Q, entropy, alpha: computed in float32
            assert value.dtype == torch.float32 and bool(torch.isfinite(value)), key
            assert float(value) == pytest.approx(float(expected[key]), rel=0.05, abs=0.02), key
    for (name, p), (_, q) in zip(mixed.named_parameters(), plain.named_parameters()):
        assert p.dtype == torch.float32, name  # the weights (and so checkpoints and exports) stay float32
        assert not torch.equal(p, q) or p.numel() == 1 or "target" in name, name  # bf16 rounding: not the same run
    for state in mixed.actor_opt.state.values():
        assert state["exp_avg"].dtype == torch.float32
    # acting is not autocast: the policy's actions are float32 whatever the update ran in
    assert mixed.policy.act(torch.randn(2, OBS)).dtype == torch.float32


def test_under_autocast_the_critics_values_and_the_heads_outputs_come_out_in_float32():
    critic = EnsembleMLP(2, OBS + ACT, (256, 256), 1)
    head = build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(256, 256))
    x = torch.randn(256, OBS + ACT)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = critic.act(critic.layers[0](x))
        assert hidden.dtype == torch.bfloat16  # the matmuls did run in bf16
        q = critic(x)
        mean, log_std = head.distribution(x[:, :OBS])
        one = critic(x, members=slice(0, 1))  # TD3's actor loss: one member, baddbmm's bf16 output cast back
    assert q.dtype == mean.dtype == log_std.dtype == one.dtype == torch.float32
    # the float32 Q values sit within bf16's rounding of the float32 network's
    torch.testing.assert_close(q, critic(x), rtol=0.05, atol=0.02)
    assert full_precision(x) is x  # nothing to do (and nothing recorded) in float32


def test_the_ensemble_dot_gradient_under_autocast_matches_float32():
    # the single-output layer's custom backward receives bf16 inputs and a float32 gradient
    critic = EnsembleMLP(2, OBS + ACT, (256,), 1)
    x = torch.randn(256, OBS + ACT)
    critic(x).sum().backward()
    expected = critic.layers[-1].weight.grad.clone()
    critic.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = critic(x)
    q.sum().backward()
    grad = critic.layers[-1].weight.grad
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad, expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("overrides, message", [
    (["algo=sac", "precision=fp16"], "precision=fp16: must be fp32 or bf16"),
    (["algo=ppo", "precision=bf16"], "precision=bf16: bf16 is built for algo=sac and algo=td3"),
    (["algo=expo", "policy=flow", "precision=bf16"], "precision=bf16: bf16 is built for algo=sac and algo=td3"),
])
def test_a_precision_that_cannot_work_fails_before_the_run(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(compose(*overrides, "env=pendulum", "steps=100", *FAST), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_bf16_run_trains_and_says_so_in_its_config(tmp_path, monkeypatch, caplog, robo_rl_to_caplog):
    monkeypatch.setattr("robo_rl.build.native_bf16", lambda device: False)  # a CPU without AVX512-BF16 or AMX
    with caplog.at_level("WARNING", logger="robo_rl"):
        summary = train(compose("algo=td3", "env=pendulum", "steps=300", "algo.learning_starts=100", "precision=bf16",
                                "eval.episodes=1", "eval.every=300", *FAST), tmp_path / "run")
    assert summary["updates"] == 201
    assert "precision: bf16" in (tmp_path / "run" / "config.yaml").read_text()
    assert "precision=bf16: this cpu has no native bf16 matrix multiply" in caplog.text


def test_a_float32_run_may_resume_in_bf16(tmp_path):
    # precision is a speed setting a resumed run may change, as threads and compile are (RESUME_OVERRIDABLE)
    common = ("algo=td3", "env=pendulum", "algo.learning_starts=100", "eval.episodes=1", *FAST)
    train(compose(*common, "steps=300", "eval.every=300"), tmp_path / "run")
    summary = train(compose(f"resume={tmp_path / 'run'}", "steps=400", "precision=bf16"), tmp_path / "run")
    assert summary["steps"] == 400 and summary["updates"] == 301
    assert "precision: bf16" in (tmp_path / "run" / "config.yaml").read_text()
