"""GoRL, EXPO and PA-RL: they run with the heads they can use, refuse the ones they cannot, resume exactly."""

import copy
import json
import math
import signal

import numpy as np
import pytest
import torch

from policies import build_head
from robo_rl.validation import ConfigError
from robo_rl.learners.base import Batch
from robo_rl.learners.expo import EXPO
from robo_rl.learners.gorl import GoRL, GoRLSAC
from robo_rl.learners.parl import PARL
from robo_rl.learners.ppo import PPO
from robo_rl.learners.sac import SAC
from robo_rl.runners.stopping import Interrupted
from robo_rl.runs import load_run_config
from robo_rl.storage.rollout import RolloutBatch
from robo_rl.train import train
from tests.helpers import FAST
from tests.helpers import compose
from tests.robo_rl.test_training import (assert_same_weights, final_weights, interrupt_at_update, logged_metrics,
                                        resumed_at)

LOW, HIGH = -np.ones(2), np.ones(2)
TINY_FLOW = ("policy.hidden_sizes=[64,64]", "policy.steps=2")
OFF = ("env=pendulum", "algo.learning_starts=200", "algo.batch_size=64", "algo.critic_hidden=[64,64]",
       "eval.episodes=2", "eval.num_envs=2", *FAST)


def batch(n=32):
    return Batch(torch.randn(n, 3), torch.rand(n, 2) * 2 - 1, torch.randn(n), torch.randn(n, 3), torch.zeros(n))


@pytest.mark.parametrize("head, options", [
    ("flow", {"steps": 2}), ("diffusion", {"inference_steps": 2, "train_steps": 20}), ("mixture", {}), ("gaussian", {}),
])
def test_parl_and_expo_update_every_head(head, options):
    for cls in (PARL, EXPO):
        policy = build_head(head, 3, LOW, HIGH, hidden_sizes=(32, 32), **options)
        learner = cls(policy, critic_hidden=(32, 32))
        before = {k: v.clone() for k, v in learner.state_dict().items()}
        for _ in range(4):
            metrics = learner.update(batch())
        assert all(torch.isfinite(v).all() for v in metrics.values())
        changed = [k for k, v in learner.state_dict().items() if v.is_floating_point() and not torch.equal(before[k], v)]
        assert any(k.startswith("critic.") for k in changed)
        assert any(k.startswith("base.") or k.startswith("policy.") for k in changed), (cls.name, head)
        actions = learner.explore(torch.randn(5, 3))
        assert actions.shape == (5, 2) and (actions.abs() <= 1).all()


@pytest.mark.parametrize("head, options", [("flow", {"steps": 2}), ("diffusion", {"inference_steps": 2, "train_steps": 20})])
def test_the_acting_policy_takes_an_empty_batch_and_names_a_nan_observation(head, options):
    # EXPO's and PA-RL's acting policy failed on B = 0 with torch's "cannot reshape tensor of 0 elements" (the heads
    # return [0, A]); and a NaN observation was reported as the base head's diverged weights
    for cls in (PARL, EXPO):
        policy = cls(build_head(head, 3, LOW, HIGH, hidden_sizes=(32, 32), **options), critic_hidden=(32, 32)).policy
        obs = torch.zeros(4, 3)
        obs[2, 0] = float("nan")
        for deterministic in (False, True):
            assert policy.act(torch.zeros(0, 3), deterministic=deterministic).shape == (0, 2)
            with pytest.raises(FloatingPointError, match=r"from non-finite observations \(NaN/Inf in row\(s\) [0-9, ]+ of obs"):
                policy.act(obs, deterministic=deterministic)
        assert policy(torch.zeros(0, 3)).shape == (0, 2)  # the export path
        # messages name the learner's policy, not the class's internal name ("the critic_select head acts on ...")
        with pytest.raises(ValueError, match=rf"^{cls.name.upper().replace('PARL', 'PA-RL')}'s acting policy \(the best "
                                             rf"of {policy.n} {head} candidates by the critic\) acts on obs \[B, 3\]"):
            policy.act(torch.zeros(4, 5))


@pytest.mark.parametrize("target_candidates, expected", [(1, 1), (3, 3), (None, 6)])
def test_parl_td_target_takes_the_best_of_target_candidates(monkeypatch, target_candidates, expected):
    # y = r + g (1 - d) max_j min_i Q'(s', a_j) over target_candidates samples (None: the 6 the agent acts with)
    import robo_rl.learners.parl as parl_module
    from robo_rl.learners.candidates import score

    torch.manual_seed(0)
    policy = build_head("flow", 3, LOW, HIGH, hidden_sizes=(32, 32), steps=2)
    learner = PARL(policy, critic_hidden=(32, 32), num_candidates=6, target_candidates=target_candidates)
    drawn = []
    sample = parl_module.sample_candidates

    def recorded_sample(head, obs, m):
        drawn.append(sample(head, obs, m))
        return drawn[-1]

    monkeypatch.setattr(parl_module, "sample_candidates", recorded_sample)
    b = batch()
    loss, _ = learner.critic_loss(b)
    (candidates,) = drawn
    assert candidates.shape == (32, expected, 2)
    with torch.no_grad():
        q_next = score(learner.critic_target, policy, b.next_obs, candidates).max(1).values
        target = b.rewards + learner.gamma * (1.0 - b.terminated) * q_next
        q = learner.critic(policy.obs_norm(b.obs), policy.to_unit(b.actions))
    torch.testing.assert_close(loss.detach(), 0.5 * (q - target).square().mean(1).sum())


@pytest.mark.parametrize("target_samples, m", [(None, 3), (2, 2), (1, 1)])
def test_expo_td_target_edits_and_base_update(target_samples, m):
    # y = r + g (1 - d) max_j min_i Q'(s', c_j) over m base samples at s' (algo.target_samples; None: the N the agent
    # acts with) and their m edits, chosen and scored by the target critics; an edit moves each action by at most
    # edit_scale of its half-range; the base moves by its imitation loss alone (no other optimizer reaches it)
    from robo_rl.learners.candidates import score

    torch.manual_seed(0)
    low, high = np.array([-2.0, -0.5]), np.array([2.0, 1.5])
    policy = build_head("flow", 3, low, high, hidden_sizes=(32, 32), steps=2)
    learner = EXPO(policy, critic_hidden=(32, 32), num_samples=3, target_samples=target_samples, edit_scale=0.2)
    assert learner.policy.n == 3 and learner.target_policy.n == m
    with torch.no_grad():  # target critics unlike the online ones, so choosing by the wrong ones shows
        for p in learner.critic_target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    b = batch()
    torch.manual_seed(1)
    loss, _ = learner.critic_loss(b)
    torch.manual_seed(1)
    with torch.no_grad():
        candidates = learner.target_policy.candidates(b.next_obs)
        q_next = score(learner.critic_target, policy, b.next_obs, candidates).max(1).values
        target = b.rewards + learner.gamma * (1.0 - b.terminated) * q_next
        q = learner.critic(policy.obs_norm(b.obs), policy.to_unit(b.actions))
    torch.testing.assert_close(loss.detach(), 0.5 * (q - target).square().mean(1).sum())
    assert candidates.shape == (32, 2 * m, 2)
    span = torch.as_tensor(0.2 * (high - low) / 2, dtype=torch.float32)
    assert ((candidates[:, m:] - candidates[:, :m]).abs() <= span + 1e-6).all()
    for group in learner.base_opt.param_groups:
        group["lr"] = 0.0
    base = [p.clone() for p in policy.parameters()]
    others = {k: v.clone() for k, v in learner.state_dict().items() if k.startswith(("critic.", "edit."))}
    learner.update(b)
    assert all(torch.equal(p, q) for p, q in zip(base, policy.parameters()))
    assert all(not torch.equal(v, learner.state_dict()[k]) for k, v in others.items() if k.endswith("weight"))


def _state_coded_base(monkeypatch, policy):
    """Make ``policy.act`` a function of the states alone (each action readable as its state's), and record the rows
    of each call."""
    rows = []

    def act(obs, deterministic=False):
        rows.append(obs.shape[0])
        return policy.from_unit(torch.tanh(obs[:, :2]))

    monkeypatch.setattr(policy, "act", act)
    return rows, lambda obs, m: policy.from_unit(torch.tanh(obs[:, :2])).repeat_interleave(m, dim=0)


@pytest.mark.parametrize("fused", ["off", "on"])
def test_expo_update_draws_the_target_and_edit_samples_in_one_call(monkeypatch, fused):
    # one call of the base for its samples at each s' (the TD target's candidates) and one at each s (the edit
    # loss's): two chains cost ~20% more of an update at the defaults; each set must reach the rows of its own states
    torch.manual_seed(0)
    policy = build_head("flow", 3, LOW, HIGH, hidden_sizes=(32, 32), steps=2)
    learner = EXPO(policy, critic_hidden=(32, 32), num_samples=3, target_samples=2, fused=fused)
    rows, coded = _state_coded_base(monkeypatch, policy)
    seen = {}
    candidates, sample = learner.target_policy.candidates, learner.edit.sample

    def target_candidates(obs, **kw):
        seen["target"] = kw["base_actions"]
        return candidates(obs, **kw)

    def edit_sample(obs, actions):
        seen["edit"] = actions
        return sample(obs, actions)

    monkeypatch.setattr(learner.target_policy, "candidates", target_candidates)
    if fused == "on":  # the fused step samples the edits itself
        gradients = learner._fused_step.actor_gradients

        def edit_gradients(obs_n, actions, alpha):
            seen["edit"] = actions
            return gradients(obs_n, actions, alpha)

        monkeypatch.setattr(learner._fused_step, "actor_gradients", edit_gradients)
    else:
        monkeypatch.setattr(learner.edit, "sample", edit_sample)
    b = batch()
    metrics = learner.update(b)
    assert rows == [32 * 2 + 32]
    torch.testing.assert_close(seen["target"].reshape(-1, 2), coded(b.next_obs, 2))
    torch.testing.assert_close(seen["edit"], coded(b.obs, 1))
    assert torch.isfinite(metrics["edit_loss"])


def test_parl_update_draws_the_target_and_policy_candidates_in_one_call(monkeypatch):
    torch.manual_seed(0)
    policy = build_head("flow", 3, LOW, HIGH, hidden_sizes=(32, 32), steps=2)
    learner = PARL(policy, critic_hidden=(32, 32), num_candidates=4, target_candidates=2, policy_update_every=2)
    rows, coded = _state_coded_base(monkeypatch, policy)
    seen = []
    optimize = learner.optimize_actions

    def optimize_actions(obs, *drawn):
        seen.extend(drawn)
        return optimize(obs, *drawn)

    monkeypatch.setattr(learner, "optimize_actions", optimize_actions)
    b = batch()
    learner.update(b)  # update 1: no policy update, the target's samples alone
    learner.update(b)  # update 2: the policy's candidates too, in the same call
    assert rows == [32 * 2, 32 * 2 + 32 * 4]
    (drawn,) = seen
    torch.testing.assert_close(drawn.reshape(-1, 2), coded(b.obs, 4))


def test_parl_distills_a_flow_head_with_its_written_out_backward_as_autograd_would(monkeypatch):
    # PA-RL's policy step trains a flow head with FlowHead.imitation_gradients where it fits (EXPO's base and GoRL's
    # decoder do too): the same loss, noise draws and step as autograd's, to float rounding
    def trained(written_out):
        torch.manual_seed(0)
        policy = build_head("flow", 3, LOW, HIGH, hidden_sizes=(32, 32), steps=2)
        learner = PARL(policy, critic_hidden=(32, 32), num_candidates=4)
        calls = []
        gradients = policy.imitation_gradients
        monkeypatch.setattr(policy, "imitation_gradients", lambda *a: calls.append(1) or gradients(*a))
        if not written_out:
            monkeypatch.setattr(policy, "fits_imitation_gradients", lambda: False)
        metrics = [learner.update(batch()) for _ in range(4)]
        monkeypatch.undo()
        policy_steps = sum("policy_loss" in m for m in metrics)
        assert policy_steps > 0 and len(calls) == (policy_steps if written_out else 0)
        return learner, metrics

    (auto, m_auto), (written, m_written) = trained(False), trained(True)
    for a, w in zip(m_auto, m_written):
        if "policy_loss" in a:
            assert float(w["policy_loss"]) == pytest.approx(float(a["policy_loss"]), rel=1e-5)
    for (name, a), w in zip(auto.state_dict().items(), written.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(w, a, rtol=1e-4, atol=1e-5, msg=name)


def test_parl_target_candidates_must_be_positive():
    policy = build_head("flow", 3, LOW, HIGH, hidden_sizes=(16,), steps=2)
    with pytest.raises(ValueError, match="algo.target_candidates=0"):
        PARL(policy, target_candidates=0)


def test_expo_target_samples_default_to_the_acting_samples_and_must_be_positive():
    # the TD target draws as many base samples (and edits) per next state as the agent acts with unless told otherwise
    policy = build_head("flow", 3, LOW, HIGH, hidden_sizes=(16,), steps=2)
    learner = EXPO(policy, critic_hidden=(16,))
    assert (learner.policy.n, learner.target_policy.n) == (2, 2)
    assert EXPO(policy, critic_hidden=(16,), num_samples=3, target_samples=1).target_policy.n == 1
    with pytest.raises(ValueError, match="algo.target_samples=0"):
        EXPO(policy, target_samples=0)


def test_parl_action_optimization_climbs_q():
    torch.manual_seed(0)
    policy = build_head("flow", 3, LOW, HIGH, hidden_sizes=(32, 32), steps=2)
    learner = PARL(policy, critic_hidden=(32, 32), grad_steps=10, action_lr=0.05, num_candidates=6)
    states = torch.randn(64, 3)
    unit = torch.rand(64, 2) * 1.6 - 0.8
    with torch.no_grad():
        q = lambda u: learner.critic(policy.obs_norm(states), u).min(0).values  # noqa: E731
        before = q(unit)
    after_unit = learner.ascend_q(states, unit)
    with torch.no_grad():
        after = q(after_unit)
    assert (after >= before - 1e-5).float().mean() > 0.95 and after.mean() > before.mean()  # local: uphill
    assert after_unit.abs().max() <= 1.0  # within the bounds
    learner.grad_steps = 0  # global step alone: the kept action is the best of its M candidates
    torch.manual_seed(1)
    optimized, kept_states = learner.optimize_actions(states[:8])
    torch.manual_seed(1)
    from robo_rl.learners.candidates import sample_candidates, score

    with torch.no_grad():
        candidates = sample_candidates(policy, states[:8], 6)
        best_scores = score(learner.critic, policy, states[:8], candidates).max(1).values
        kept = learner.critic(policy.obs_norm(kept_states), policy.to_unit(optimized)).min(0).values
    torch.testing.assert_close(kept, best_scores)


@pytest.mark.parametrize("algo, head, message", [
    (SAC, "flow", "reparameterized"),
    (PPO, "diffusion", "tractable_log_prob"),
    (PARL, "deterministic", "deterministic"),
    (EXPO, "deterministic", "deterministic"),
    (EXPO, "latent", "leaves the latent policy untrained"),  # nothing but GoRL trains a latent policy
    (PARL, "latent", "leaves the latent policy untrained"),
    (GoRL, "gaussian", "policy=latent"),
    (GoRLSAC, "flow", "policy=latent"),
])
def test_combinations_that_cannot_work_say_what_to_change(algo, head, message):
    policy = build_head(head, 3, LOW, HIGH, hidden_sizes=(16,))
    with pytest.raises(ValueError, match=message):
        algo(policy)


def test_chunked_heads_are_for_imitation():
    policy = build_head("flow", 3, LOW, HIGH, hidden_sizes=(16,), chunk=4)
    for cls in (PARL, EXPO):
        with pytest.raises(ValueError, match="chunk=1"):
            cls(policy)


TINY_LATENT_SAC = ("policy.hidden_sizes=[64,64]", "policy.decoder_hidden=[64,64]", "policy.decoder_steps=2",
                   "algo.refit_every=150", "algo.dataset_size=100", "algo.refit_epochs=2")


@pytest.mark.parametrize("algo", ["expo", "parl", "gorl_sac"])
def test_offpolicy_generative_run_evaluates_and_resumes_exactly(tmp_path, monkeypatch, algo):
    # gorl_sac: refits at updates 150 and 300 fall on both sides of the interruption, so the resumed
    # run must also restore the decoder, its optimizer and the (s, a) pairs collected for the next refit
    cls = {"expo": EXPO, "parl": PARL, "gorl_sac": GoRLSAC}[algo]
    options = TINY_LATENT_SAC if algo == "gorl_sac" else TINY_FLOW
    common = (f"algo={algo}", *OFF, *options, "steps=400", "checkpoint.every=200", "eval.every=200")
    train(compose(*common), tmp_path / "full")
    restore = interrupt_at_update(monkeypatch, cls, 57)
    with pytest.raises(Interrupted):
        train(compose(*common), tmp_path / "cut")
    restore()
    cut_at = json.loads((tmp_path / "cut" / "summary.json").read_text())["steps"]
    train(compose(f"resume={tmp_path / 'cut'}"), tmp_path / "unused", [f"resume={tmp_path / 'cut'}"])
    assert 0 < cut_at and resumed_at(tmp_path / "cut") == cut_at  # continued from the checkpoint
    assert_same_weights(final_weights(tmp_path / "full")[0], final_weights(tmp_path / "cut")[0])
    assert logged_metrics(tmp_path / "cut") == logged_metrics(tmp_path / "full")  # timings aside
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert np.isfinite(summary["final_eval_return_mean"])


def test_gorl_sac_makes_no_refit_after_its_final_update(tmp_path, monkeypatch):
    # 300 updates (steps 200..499), a refit every 150: one after update 150, none after the last one, which
    # would only reset the latent policy the final evaluation and checkpoint then hold
    refits = []
    original = GoRLSAC.refit
    monkeypatch.setattr(GoRLSAC, "refit", lambda self: refits.append(int(self.num_updates)) or original(self))
    train(compose("algo=gorl_sac", *OFF, *TINY_LATENT_SAC, "steps=499", "eval.every=499"), tmp_path / "run")
    assert refits == [150]


def test_gorl_refits_the_decoder_and_resets_the_latent(tmp_path, monkeypatch):
    # 8 updates in 4 stages (the runner announces the run's length): refits after updates 2, 4 and 6,
    # none after the last one
    refits = []
    refit = GoRL.refit

    def recorded_refit(self):
        refits.append(int(self.num_updates))
        return refit(self)

    monkeypatch.setattr(GoRL, "refit", recorded_refit)
    cfg = compose("algo=gorl", "env=pendulum", "env.num_envs=8", "algo.rollout_steps=16", "algo.minibatch_size=32",
                  "algo.epochs=2", "algo.stages=4", "algo.refit_epochs=2", "policy.decoder_hidden=[64,64]",
                  "steps=1024", "eval.episodes=2", "eval.num_envs=2", *FAST)
    summary = train(cfg, tmp_path / "run")
    assert summary["updates"] == 8 and refits == [2, 4, 6]
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "train/decoder_loss" in header
    assert load_run_config(tmp_path / "run").policy.name == "latent"


def test_gorl_run_resumes_exactly_across_stage_refits(tmp_path, monkeypatch):
    # 12 updates in 4 stages: refits after updates 3, 6 and 9; checkpoints every 4 updates, the run
    # interrupted in update 7, so the resumed run re-plans its stages and refits after 9 again from the
    # restored decoder, (s, a) pairs and counters
    common = ("algo=gorl", "env=pendulum", "env.num_envs=8", "algo.rollout_steps=16", "algo.minibatch_size=32",
              "algo.epochs=2", "algo.stages=4", "algo.refit_epochs=2", "algo.dataset_size=300",
              "policy.decoder_hidden=[32,32]", "policy.decoder_steps=2", "steps=1536", "checkpoint.every=512",
              "eval.every=1536", "eval.episodes=2", "eval.num_envs=2", *FAST)
    train(compose(*common), tmp_path / "full")
    restore = interrupt_at_update(monkeypatch, GoRL, 7)
    with pytest.raises(Interrupted):
        train(compose(*common), tmp_path / "cut")
    restore()
    cut_at = json.loads((tmp_path / "cut" / "summary.json").read_text())["steps"]
    assert 0 < cut_at < 1536
    train(compose(f"resume={tmp_path / 'cut'}"), tmp_path / "unused", [f"resume={tmp_path / 'cut'}"])
    assert resumed_at(tmp_path / "cut") == cut_at
    full, cut = final_weights(tmp_path / "full")[0], final_weights(tmp_path / "cut")[0]
    assert int(full["num_refits"]) == 3
    assert_same_weights(full, cut)
    assert logged_metrics(tmp_path / "cut") == logged_metrics(tmp_path / "full")  # timings aside


@pytest.mark.parametrize("algo", ["gorl", "gorl_sac"])
def test_a_signal_during_a_refit_stops_it_at_once_and_the_resumed_run_refits_first(tmp_path, monkeypatch, algo):
    # gorl: the setting above; a SIGTERM arrives in the third minibatch of the second refit (after update 6, 8
    # minibatches a refit). gorl_sac: in the first of refit 1's two minibatches (after update 150, at step 349).
    # The refit gives way at the next minibatch instead of running to its end (seconds to minutes at the
    # defaults), the checkpoint keeps the decoder from before it, and the resumed run refits first, with the
    # observation statistics of the refit's start: the run ends bit-identical to an uninterrupted one
    if algo == "gorl":
        common = ("algo=gorl", "env=pendulum", "env.num_envs=8", "algo.rollout_steps=16", "algo.minibatch_size=32",
                  "algo.epochs=2", "algo.stages=4", "algo.refit_epochs=4", "algo.dataset_size=300",
                  "policy.decoder_hidden=[32,32]", "policy.decoder_steps=2", "steps=1536", "checkpoint.every=512",
                  "eval.every=1536", "eval.episodes=2", "eval.num_envs=2", *FAST)
        signal_in, done_before, refit, cut_step, refits = 8 + 3, 3, 2, 6 * 128, 3
    else:
        common = ("algo=gorl_sac", *OFF, *TINY_LATENT_SAC, "steps=400", "checkpoint.every=200", "eval.every=400")
        signal_in, done_before, refit, cut_step, refits = 1, 1, 1, 349, 1  # (update 1 at step 200)
    train(compose(*common), tmp_path / "full")
    exc, calls = train_with_a_sigterm_in_refit(monkeypatch, signal_in, common, tmp_path / "cut")
    assert exc.signum == signal.SIGTERM and calls == signal_in  # none after the one the signal came in
    log_text = (tmp_path / "cut" / "train.log").read_text()
    assert f"{algo}: decoder refit {refit} stopped for the signal after {done_before} minibatch(es)" in log_text
    cut_at = json.loads((tmp_path / "cut" / "summary.json").read_text())["steps"]
    assert cut_at == cut_step  # the checkpoint is the interrupted iteration's, saved right away
    saved = final_weights(tmp_path / "cut")[0]
    assert int(saved["num_refits"]) == refit - 1 and bool(saved["refit_pending"])

    train(compose(f"resume={tmp_path / 'cut'}"), tmp_path / "unused", [f"resume={tmp_path / 'cut'}"])
    assert resumed_at(tmp_path / "cut") == cut_at
    resumed_log = (tmp_path / "cut" / "train.log").read_text()[len(log_text):]
    assert f"{algo}: decoder refit {refit} took" in resumed_log
    full, cut = final_weights(tmp_path / "full")[0], final_weights(tmp_path / "cut")[0]
    assert int(cut["num_refits"]) == refits and not bool(cut["refit_pending"])
    assert_same_weights(full, cut)
    # so is the log, timings aside: the interrupted update's metrics and its row wait for the refit, which the
    # resumed run records with them as one update (its metrics went into the row after the resume, and the row's
    # averages differed in float32 rounding: QA, 2026-12-07)
    assert logged_metrics(tmp_path / "cut") == logged_metrics(tmp_path / "full")
    assert max(float(r["train/refits"] or 0) for r in logged_metrics(tmp_path / "cut")) == refits


def train_with_a_sigterm_in_refit(monkeypatch, minibatch: int, overrides, run_dir):
    """Train ``overrides`` into ``run_dir`` with a SIGTERM raised in the decoder refits' ``minibatch``-th minibatch
    (counted over all refits); the Interrupted it ends with and the refit minibatches begun."""
    from policies.heads import LatentDecoderHead

    calls = []

    def counted(original):  # a minibatch's loss, by autograd or written out (a flow decoder's, the default)
        def minibatch_step(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == minibatch:
                signal.raise_signal(signal.SIGTERM)
            return original(self, *args, **kwargs)
        return minibatch_step

    with monkeypatch.context() as patch:
        for name in ("imitation_loss", "imitation_gradients"):
            patch.setattr(LatentDecoderHead, name, counted(getattr(LatentDecoderHead, name)))
        with pytest.raises(Interrupted) as exc:
            train(compose(*overrides), run_dir)
    return exc.value, len(calls)


def test_a_signal_during_a_refit_with_updates_of_its_iteration_to_follow_lets_it_finish(tmp_path, monkeypatch):
    # gorl_sac on 3 envs makes 3 updates an iteration: the refit after update 31 is followed by updates 32 and 33.
    # It gave way to a SIGTERM in its first minibatch, those two updates ran without it, and the resumed run
    # refitted after them: its weights differed from an unbroken run's. The refit now finishes (only one that is
    # its iteration's last update gives way), and the run resumes bit-identical
    common = ("algo=gorl_sac", *OFF, *TINY_LATENT_SAC, "env.num_envs=3", "algo.learning_starts=60",
              "algo.refit_every=31", "steps=120", "checkpoint.every=120", "eval.every=120", "log.every=30")
    train(compose(*common), tmp_path / "full")
    exc, _ = train_with_a_sigterm_in_refit(monkeypatch, 1, common, tmp_path / "cut")
    assert exc.signum == signal.SIGTERM
    assert "gorl_sac: decoder refit 1 took" in (tmp_path / "cut" / "train.log").read_text()
    saved = final_weights(tmp_path / "cut")[0]
    assert int(saved["num_updates"]) == 33 and int(saved["num_refits"]) == 1 and not bool(saved["refit_pending"])
    train(compose(f"resume={tmp_path / 'cut'}"), tmp_path / "unused", [f"resume={tmp_path / 'cut'}"])
    full, cut = final_weights(tmp_path / "full")[0], final_weights(tmp_path / "cut")[0]
    assert int(full["num_refits"]) == 2
    assert_same_weights(full, cut)
    assert logged_metrics(tmp_path / "cut") == logged_metrics(tmp_path / "full")


def test_a_stopped_refit_leaves_the_decoder_its_optimizer_and_the_random_state_as_they_were(monkeypatch):
    from policies.heads import LatentDecoderHead

    torch.manual_seed(0)
    head = build_head("latent", 3, LOW, HIGH, hidden_sizes=(16,), decoder_hidden=(32, 32), decoder_steps=2)
    learner = GoRL(head, refit_every=1, refit_epochs=3, dataset_size=512)
    learner._store(torch.randn(512, 3), None)
    learner.refit()  # the decoder's optimizer has moments from here on
    decoder, latent = copy.deepcopy(head.decoder.state_dict()), copy.deepcopy(head.latent.state_dict())
    moments = copy.deepcopy(learner.decoder_opt.state_dict())
    rng = torch.get_rng_state()
    # per epoch, one check before drawing the targets (512 states: one block) and one per minibatch (2): the 4th
    # check is before the second epoch's targets, which are not drawn then (4 s per 100k states on Hopper)
    checks, draws, coupled_sample = [], [], LatentDecoderHead.coupled_sample
    monkeypatch.setattr(LatentDecoderHead, "coupled_sample", lambda self, obs: draws.append(1) or coupled_sample(self, obs))
    learner.stop_requested = lambda: checks.append(1) or len(checks) >= 4
    assert learner.refit() == {} and len(checks) == 4 and len(draws) == 1
    assert_same_weights(decoder, head.decoder.state_dict())
    assert_same_weights(latent, head.latent.state_dict())  # not reset to the prior either
    after = learner.decoder_opt.state_dict()
    for key in moments["state"]:
        assert_same_weights(moments["state"][key], after["state"][key])
    assert torch.equal(rng, torch.get_rng_state())
    assert bool(learner.refit_pending) and int(learner.num_refits) == 1
    # an older checkpoint has no refit_pending (nor the statistics kept for it): it loads with none pending
    state = {k: v for k, v in learner.state_dict().items() if not k.startswith("refit_")}
    GoRL(build_head("latent", 3, LOW, HIGH, hidden_sizes=(16,), decoder_hidden=(32, 32), decoder_steps=2),
         refit_every=1, refit_epochs=3, dataset_size=512).load_state_dict(state)
    del learner.stop_requested
    metrics = learner.before_iteration()  # the pending refit, now to its end
    assert float(metrics["refits"]) == 2 and not bool(learner.refit_pending)
    assert learner.before_iteration() == {}  # nothing pending


@pytest.mark.parametrize("options, total, expected", [
    ({}, 489, [163, 326]),  # the default 3 stages of a 1M-step Hopper run
    ({"stages": 4}, 10, [3, 6, 9]),  # ceil(10 / 4) = 3: the last stage is the shortest
    ({"stages": 1}, 10, []),  # 1 stage: PPO on the latent through the initial identity decoder
    ({"refit_every": 5}, 10, [5]),  # a fixed interval, never after the final update
    ({"refit_every": 4}, None, [4, 8]),  # without a plan (Python API), every interval
])
def test_gorl_stage_schedule(monkeypatch, options, total, expected):
    head = build_head("latent", 3, LOW, HIGH, hidden_sizes=(16,), decoder_hidden=(32, 32))
    learner = GoRL(head, **options)
    if total is not None:
        learner.plan(total)
    monkeypatch.setattr(learner.ppo, "update", lambda rollout: {})
    monkeypatch.setattr(learner, "refit", lambda: {"refits": torch.tensor(float(learner.num_updates))})
    obs = torch.randn(4, 3)
    batch = RolloutBatch(obs, torch.zeros(4, 2), torch.zeros(4), torch.zeros(4), torch.zeros(4), torch.zeros(4))
    refits = []
    for _ in range(total or 10):
        metrics = learner.update(batch)
        if "refits" in metrics:
            refits.append(int(metrics["refits"]))
    assert refits == expected


def test_gorl_stages_need_the_run_length_and_one_stage_at_least():
    head = build_head("latent", 3, LOW, HIGH, hidden_sizes=(16,), decoder_hidden=(32, 32))
    with pytest.raises(ValueError, match="algo.stages=0"):
        GoRL(head, stages=0)
    batch = RolloutBatch(*(torch.zeros(4, *shape) for shape in ((3,), (2,), (), (), (), ())))
    with pytest.raises(RuntimeError, match=r"learner.plan\(total_updates\)"):
        GoRL(head).update(batch)


def test_gorl_identity_decoder_at_start():
    head = build_head("latent", 3, LOW, HIGH, hidden_sizes=(16,), decoder_hidden=(32, 32), decoder_steps=3)
    GoRL(head)  # zero-initializes the flow decoder's velocity
    z = torch.tensor([[0.5, -0.25], [2.0, -3.0]])
    torch.testing.assert_close(head.decode(torch.zeros(2, 3), z), z.clamp(-1, 1))


@pytest.mark.parametrize("fused", ["auto", "off"])
def test_gorl_first_stage_is_ppo_given_the_same_weights(fused):
    # through the identity decoder GoRL acts, executes and updates exactly as PPO does (on a [-1, 1] box, as
    # Hopper's, where PPO's unit-scale actions are env actions), so a return gap between GoRL without refits
    # and PPO is their initializations' draw
    torch.manual_seed(0)
    ppo = PPO(build_head("gaussian", 3, LOW, HIGH, hidden_sizes=(16, 16), activation="tanh", squash=False,
                         state_dependent_std=False), value_hidden=(16, 16), minibatch_size=32, fused=fused)
    gorl = GoRL(build_head("latent", 3, LOW, HIGH, hidden_sizes=(16, 16), decoder_hidden=(32,), decoder_steps=2),
                stages=1, value_hidden=(16, 16), minibatch_size=32, fused=fused)
    gorl.policy.latent.load_state_dict(ppo.policy.state_dict())
    gorl.ppo.value_net.load_state_dict(ppo.value_net.state_dict())
    gorl.plan(4)
    obs = torch.randn(128, 3) * 2
    torch.manual_seed(1)
    acted = ppo.act(obs)
    torch.manual_seed(1)
    for x, y in zip(acted, gorl.act(obs)):  # action (latent), log-probability, value
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    executed = ppo.env_action(obs, acted[0])
    assert float(executed.abs().max()) == 1.0  # some clipped
    torch.testing.assert_close(gorl.env_action(obs, acted[0]), executed, rtol=0, atol=0)
    batch = RolloutBatch(obs, acted[0], acted[1], acted[2], torch.randn(128), acted[2] + torch.randn(128))
    torch.manual_seed(2)
    ppo.update(batch)
    torch.manual_seed(2)
    gorl.update(batch)
    for x, y in zip([*ppo.policy.parameters(), *ppo.value_net.parameters()],
                    [*gorl.policy.latent.parameters(), *gorl.ppo.value_net.parameters()]):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_gorl_without_refits_trains_as_ppo_from_the_same_start(tmp_path, monkeypatch):
    # the whole run, not one update: given PPO's initial weights and generator state, a GoRL run with one
    # stage logs exactly PPO's metrics (returns, losses, KL, evaluations). On Hopper at the defaults the same
    # holds for 1M steps (README, GoRL results), so GoRL's stages=1 row differs from PPO's by the draw alone.
    import copy

    import robo_rl.train as training

    start, build = {}, training.build_learner

    def same_start(cfg, policy, **kwargs):
        learner = build(cfg, policy, **kwargs)
        if cfg.algo.name == "ppo":  # copies: the run trains these tensors in place
            start.update(policy=copy.deepcopy(learner.policy.state_dict()),
                         value=copy.deepcopy(learner.value_net.state_dict()), generator=torch.get_rng_state())
        else:
            learner.policy.latent.load_state_dict(start["policy"])
            learner.ppo.value_net.load_state_dict(start["value"])
            torch.set_rng_state(start["generator"])
        return learner

    monkeypatch.setattr(training, "build_learner", same_start)
    common = ("env=hopper", "env.num_envs=4", "algo.rollout_steps=32", "algo.minibatch_size=64", "algo.epochs=2",
              "steps=1024", "eval.every=512", "eval.episodes=2", "eval.num_envs=2", "seed=3", *FAST)
    train(compose("algo=ppo", *common), tmp_path / "ppo")
    train(compose("algo=gorl", "algo.stages=1", "policy.decoder_hidden=[32]", *common), tmp_path / "gorl")
    ppo, gorl = logged_metrics(tmp_path / "ppo"), logged_metrics(tmp_path / "gorl")
    assert len(ppo) == len(gorl) >= 8 and any(row.get("eval/return_mean") for row in ppo)
    assert ppo == gorl


@pytest.mark.parametrize("refit_on, recenter", [("policy", True), ("executed", True), ("policy", False)])
def test_gorl_refit_targets(refit_on, recenter, caplog):
    # The stage's executed actions (uniform noise here) lag behind the latent policy, which ends narrow
    # around z = (0.6, -0.4): refit_on=policy keeps that policy through the latent's reset to the prior,
    # refit_on=executed makes the policy reproduce the executed actions.
    torch.manual_seed(0)
    head = build_head("latent", 3, LOW, HIGH, hidden_sizes=(32,), decoder_hidden=(32, 32), decoder_steps=2)
    learner = GoRL(head, refit_every=1, refit_epochs=60, dataset_size=512, decoder_lr=3e-3, refit_on=refit_on,
                   recenter_latent=recenter)
    last = [m for m in head.latent.net if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.6, -0.4]))
        head.latent.log_std.fill_(-3.0)
    obs = torch.randn(512, 3)
    before = head.act(obs[:256])
    torch.testing.assert_close(before.mean(0), torch.tensor([0.6, -0.4]), atol=0.02, rtol=0)
    executed = torch.stack([obs[:, 0].tanh() * 0.8, torch.full((512,), -0.5)], dim=1)
    learner._store(obs, executed)
    with caplog.at_level("INFO", logger="robo_rl"):
        metrics = learner.refit()
    # the log says a refit is under way (training's progress line pauses through it), then what it did
    target = "the current policy" if refit_on == "policy" else "the executed actions"
    assert f"gorl: refitting the decoder (refit 1): 60 epoch(s) over 512 states, targets from {target}" in caplog.text
    assert f"it moved the deterministic action by {float(metrics['refit_action_shift']):.3f}" in caplog.text
    # refit_on=executed starts a new stage's pairs; refit_on=policy keeps the states (fresh targets each refit)
    assert float(metrics["refits"]) == 1.0 and int(learner.data_size) == (512 if refit_on == "policy" else 0)
    mean, log_std = head.latent.distribution(obs[:16])
    if recenter:  # the latent policy goes on as it was, and the decoder reads its mean as z = 0
        torch.testing.assert_close(mean, torch.tensor([[0.6, -0.4]]).expand_as(mean))
        torch.testing.assert_close(head.decoder_input(mean, obs[:16]), torch.zeros_like(mean))
        # so does a head loaded from its weights (a checkpoint, an export)
        loaded = build_head("latent", 3, LOW, HIGH, hidden_sizes=(32,), decoder_hidden=(32, 32), decoder_steps=2)
        loaded.load_state_dict(head.state_dict())
        torch.testing.assert_close(loaded.act(obs[:64], deterministic=True), head.act(obs[:64], deterministic=True))
    else:  # algo.recenter_latent=false: the latent's mean restarts at 0
        torch.testing.assert_close(mean, torch.zeros_like(mean))
    # the reset keeps the latent's std (algo.keep_latent_std), and the decoder reads its u / std ~ N(0, I)
    torch.testing.assert_close(log_std.expand_as(mean), torch.full_like(mean, -3.0))
    torch.testing.assert_close(head.latent_scale, torch.full((2,), math.exp(-3.0)))
    after = head.act(obs[:256])
    target = before if refit_on == "policy" else executed[:256]
    assert float((after - target).abs().mean()) < 0.1


def test_gorl_latent_scale_must_be_positive_and_finite():
    head = build_head("latent", 3, LOW, HIGH, hidden_sizes=(16,), decoder_hidden=(16,), decoder_steps=2)
    for bad in (torch.tensor([0.0, 1.0]), torch.tensor([float("nan"), 1.0]), torch.ones(3)):
        with pytest.raises(ValueError, match="latent scale must be 2 positive finite numbers"):
            head.reset_latent_to_prior(bad)
        with pytest.raises(ValueError, match="latent scale must be 2 positive finite numbers"):
            head.recenter(bad)
    with torch.no_grad():
        head.latent.log_std.fill_(-1.0)
    head.recenter()  # no scale: the latent's std is set to 1, and the decoder reads u - m(s)
    assert float(head.latent.log_std.abs().max()) == 0.0 and bool((head.latent_scale == 1.0).all())
    with pytest.raises(ValueError, match="recentering needs an unsquashed latent"):
        latent_sac_head().recenter()


def test_a_gorl_run_saved_before_the_latent_scale_loads_for_eval_and_resume(tmp_path):
    # a run of 2 refits (the latent's std kept at each), its newest checkpoint rewritten as one saved before
    # 2026-12-05 would be: no policy.latent_scale, no recentering anchor, no pending-refit state; it loads (eval,
    # export, resume) with scale 1 and no anchor
    import json as jsonlib

    from safetensors.numpy import load_file, save_file

    from robo_rl.checkpoint import latest_checkpoint
    from robo_rl.runs import load_run
    from tests.helpers import rewrite_consistently

    cfg = compose("algo=gorl", "env=pendulum", "env.num_envs=8", "algo.rollout_steps=16", "algo.minibatch_size=32",
                  "algo.epochs=1", "algo.refit_epochs=1", "policy.decoder_hidden=[32]", "steps=384",
                  "eval.episodes=2", "eval.num_envs=2", *FAST)
    train(cfg, tmp_path / "run")
    policy, _ = load_run(tmp_path / "run")
    assert not bool((policy.latent_scale == 1.0).all())  # kept std: a scale was saved
    checkpoint = latest_checkpoint(tmp_path / "run" / "checkpoints")
    state = jsonlib.loads((checkpoint / "state.json").read_text())
    new = ("policy.latent_scale", "policy.anchor", "refit_pending", "refit_obs_stats")
    modules = state["learner"]["modules"]
    assert all(any(k.startswith(n) for k in modules) for n in new)
    state["learner"]["modules"] = {k: v for k, v in modules.items() if not k.startswith(new)}
    tensors = {k: v for k, v in load_file(str(checkpoint / "state.safetensors")).items()
               if not k.startswith(tuple(f"learner.modules.{n}" for n in new))}
    save_file(tensors, str(tmp_path / "old.safetensors"))
    rewrite_consistently(checkpoint, "state.safetensors", (tmp_path / "old.safetensors").read_bytes())
    rewrite_consistently(checkpoint, "state.json", jsonlib.dumps(state))
    policy, _ = load_run(tmp_path / "run")
    torch.testing.assert_close(policy.latent_scale, torch.ones_like(policy.latent_scale))
    assert not bool(policy.anchored) and not policy._anchored
    summary = train(compose(f"resume={tmp_path / 'run'}", "steps=512", *FAST), tmp_path / "run")
    assert summary["steps"] == 512


def test_a_gorl_run_saved_before_the_kept_std_resumes_with_the_reset_it_trained_with(tmp_path):
    # config.yaml files written before 2026-12-05 have no algo.keep_latent_std / algo.recenter_latent: their refits
    # reset the latent to std 1 by zeroing it. A resume goes on that way; the newer defaults (true, true) would switch
    # the run to a kept std and a re-centred decoder input at its next refit
    import yaml

    from robo_rl.checkpoint import latest_checkpoint
    from robo_rl.runs import load_run
    from tests.helpers import rewrite_consistently

    cfg = compose("algo=gorl", "env=pendulum", "env.num_envs=8", "algo.rollout_steps=16", "algo.minibatch_size=32",
                  "algo.epochs=1", "algo.refit_epochs=1", "algo.refit_every=1", "policy.decoder_hidden=[32]",
                  "steps=128", "eval.episodes=2", "eval.num_envs=2", *FAST)
    train(cfg, tmp_path / "run")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    del saved["algo"]["keep_latent_std"], saved["algo"]["recenter_latent"]
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(saved))
    checkpoint = latest_checkpoint(tmp_path / "run" / "checkpoints")  # (its recorded config, from 2026-12-04, too)
    state = json.loads((checkpoint / "state.json").read_text())
    del state["config"]["algo"]["keep_latent_std"], state["config"]["algo"]["recenter_latent"]
    rewrite_consistently(checkpoint, "state.json", json.dumps(state))
    cfg = load_run_config(tmp_path / "run")
    assert cfg.algo.keep_latent_std is False and cfg.algo.recenter_latent is False
    train(compose(f"resume={tmp_path / 'run'}", "steps=384", *FAST), tmp_path / "run")
    refits = [float(row["train/refits"]) for row in logged_metrics(tmp_path / "run") if row["train/refits"]]
    assert sum(refits) >= 1  # a refit since the resume (the first 128 steps made none)
    policy, cfg = load_run(tmp_path / "run")
    assert not bool(policy.anchored)  # its refits since the resume zeroed the latent, as before
    torch.testing.assert_close(policy.latent_scale, torch.ones_like(policy.latent_scale))
    assert cfg.algo.keep_latent_std is False and cfg.algo.recenter_latent is False  # written back to config.yaml


@pytest.mark.parametrize("redraw", [False, True])
def test_gorl_refit_on_the_policy_keeps_its_spread(redraw, monkeypatch):
    # PPO's unsquashed latent (z = mean + std x, clipped; prior x): the pairing holds there too (see the GoRL-SAC
    # twin below). Measured with new targets each epoch: spread 0.92, deterministic action moved 0.012 (unpaired
    # 0.22 and 0.042); drawn once for all 150 epochs (algo.refit_redraw=false): 0.94 and 0.011.
    torch.manual_seed(0)
    head = build_head("latent", 3, LOW, HIGH, hidden_sizes=(32,), decoder_hidden=(32, 32), decoder_steps=2)
    learner = GoRL(head, refit_every=1, refit_epochs=150, dataset_size=512, decoder_lr=3e-3, refit_on="policy",
                   refit_redraw=redraw)
    draws, draw = [], learner.refit_targets
    monkeypatch.setattr(learner, "refit_targets", lambda size, teacher: draws.append(size) or draw(size, teacher))
    last = [m for m in head.latent.net if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # mean (0.8 h_0(s), -0.3) with h_0 the first hidden unit, std e^-1.5
        last.weight.zero_()
        last.weight[0, 0] = 0.8
        last.bias.copy_(torch.tensor([0.0, -0.3]))
        head.latent.log_std.fill_(-1.5)
    obs = torch.randn(512, 3)
    test_obs = obs[:64]
    before = torch.stack([head.act(test_obs) for _ in range(256)])
    det_before = head.act(test_obs, deterministic=True)
    learner._store(obs, None)
    metrics = learner.refit()
    assert draws == [512] * (150 if redraw else 1)
    after = torch.stack([head.act(test_obs) for _ in range(256)])
    spread = float((after.std(0) / before.std(0)).mean())
    assert 0.85 < spread < 1.15
    assert float((head.act(test_obs, deterministic=True) - det_before).abs().mean()) < 0.035


@pytest.mark.parametrize("recenter", [True, False])
def test_gorl_refit_clears_the_latent_moments_and_keeps_the_step_count(recenter):
    # recentering (the default) keeps the latent policy and its optimizer's state as they were; the zero reset's
    # warm restart (measured better than a fresh optimizer on Hopper) clears the reset latent policy's moments and
    # keeps the value net's; the shared step count goes on either way
    torch.manual_seed(0)
    head = build_head("latent", 3, LOW, HIGH, hidden_sizes=(16,), decoder_hidden=(32, 32), decoder_steps=2)
    learner = GoRL(head, refit_every=1, refit_epochs=1, dataset_size=64, recenter_latent=recenter)
    opt, params = learner.ppo.opt, list(learner.ppo.opt.param_groups[0]["params"])
    for _ in range(50):
        opt.apply([torch.randn_like(p) for p in params])
    learner._store(torch.randn(64, 3), torch.rand(64, 2) * 2 - 1)
    learner.refit()
    latent = {id(p) for p in head.latent.parameters()}
    for p in params:
        state = opt.state[p]
        cleared = float(state["exp_avg"].abs().sum()) == 0.0 and float(state["exp_avg_sq"].abs().sum()) == 0.0
        assert cleared == (id(p) in latent and not recenter) and float(state["step"]) == 50.0


def test_a_refit_runs_on_its_own_threads_and_gives_the_run_its_count_back(monkeypatch, caplog):
    # GoRL trains on one thread, but nothing else runs during a refit: it takes algo.refit_threads (0: all the CPUs
    # the process may use), and the run's count is back afterwards, also when a signal stops the refit
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        head = build_head("latent", 3, LOW, HIGH, hidden_sizes=(16,), decoder_hidden=(32, 32), decoder_steps=2)
        learner = GoRL(head, refit_every=1, refit_epochs=2, dataset_size=64, refit_threads=2)
        seen, loss = [], head.imitation_gradients  # (the flow decoder's minibatch step, written out)
        monkeypatch.setattr(head, "imitation_gradients",
                            lambda *a, **k: seen.append(torch.get_num_threads()) or loss(*a, **k))
        learner._store(torch.randn(64, 3), None)
        with caplog.at_level("INFO", logger="robo_rl"):
            assert float(learner.refit()["refits"]) == 1.0
        assert seen and set(seen) == {2} and torch.get_num_threads() == 1
        assert "targets from the current policy (2 torch threads)" in caplog.text
        learner.refit_threads, seen[:] = 0, []
        monkeypatch.setattr("robo_rl.learners.gorl.usable_cpus", lambda: 3)  # e.g. a container's CPU quota
        learner.refit()
        assert set(seen) == {3} and torch.get_num_threads() == 1
        learner.stop_requested = lambda: True
        assert learner.refit() == {} and bool(learner.refit_pending) and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match=r"algo.refit_threads=-1: must be >= 0 \(0: all CPUs\)"):
            GoRL(head, refit_threads=-1)
    finally:
        torch.set_num_threads(before)


def test_gorl_refuses_resets_without_refits():
    head = build_head("latent", 3, LOW, HIGH, hidden_sizes=(16,), decoder_hidden=(32, 32))
    with pytest.raises(ValueError, match="refit_epochs=0 with algo.reset_latent=true"):
        GoRL(head, refit_epochs=0)
    GoRL(head, refit_epochs=0, reset_latent=False)  # a fixed decoder: allowed


def test_gorl_refit_on_must_be_known_and_the_latent_kl_reaches_ppo():
    head = build_head("latent", 3, LOW, HIGH, hidden_sizes=(16,), decoder_hidden=(32, 32))
    with pytest.raises(ValueError, match="algo.refit_on='latest'"):
        GoRL(head, refit_on="latest")
    assert GoRL(head, latent_kl_coef=0.05, recenter_latent=False).ppo.prior_kl_coef == 0.05
    with pytest.raises(ValueError, match="set algo.recenter_latent=false to use the penalty"):
        GoRL(head, latent_kl_coef=0.05)  # its prior is centred at 0, the recentred latent's is not


@pytest.mark.parametrize("key", ["state_dependent_std", "squash"])
def test_gorl_refuses_a_latent_it_cannot_recenter_before_training(key):
    # the recentring reset (the default) keeps a state-independent std: with another latent the run trained a whole
    # stage, then failed at its first refit naming no config key
    head = build_head("latent", 3, LOW, HIGH, hidden_sizes=(16,), decoder_hidden=(32, 32), **{key: True})
    with pytest.raises(ValueError, match=f"policy.{key}=true: algo.recenter_latent=true"):
        GoRL(head)
    GoRL(head, recenter_latent=False)  # the zero reset takes any latent
    GoRL(head, reset_latent=False)  # no reset: nothing to recentre


@pytest.mark.parametrize("fused", ["auto", "off"])
def test_gorl_latent_kl_is_toward_the_prior_the_latent_was_reset_to(fused):
    # a reset that keeps the latent's std (e^-1.5) makes N(0, e^-3) the prior: the penalty starts at 0 there
    # (toward N(0, I) it would be 2 x (e^-3 / 2 - 1 / 2 + 1.5) = 2.05 at once)
    torch.manual_seed(0)
    head = build_head("latent", 3, LOW, HIGH, hidden_sizes=(16,), decoder_hidden=(32, 32), decoder_steps=2)
    learner = GoRL(head, refit_every=100, refit_epochs=1, dataset_size=64, latent_kl_coef=0.1, epochs=1,
                   minibatch_size=64, value_hidden=(16,), fused=fused, recenter_latent=False)
    assert (learner.ppo._fused_step is not None) == (fused == "auto")
    with torch.no_grad():
        head.latent.log_std.fill_(-1.5)
    obs = torch.randn(64, 3)
    learner._store(obs, torch.rand(64, 2) * 2 - 1)
    learner.refit()
    with torch.no_grad():
        u = head.latent.act(obs)
        batch = RolloutBatch(obs, u, head.latent.log_prob(obs, u), learner.value(obs), torch.randn(64), torch.randn(64))
    assert float(learner.update(batch)["prior_kl"]) < 1e-3


def latent_sac_head(**options):
    return build_head("latent", 3, LOW, HIGH, hidden_sizes=(32,), decoder_hidden=(32, 32), decoder_steps=2,
                      squash=True, state_dependent_std=True, **options)


def test_gorl_sac_needs_a_squashed_latent_and_a_flow_decoder():
    head = build_head("latent", 3, LOW, HIGH, hidden_sizes=(16,), decoder_hidden=(32, 32))  # the PPO latent
    with pytest.raises(ValueError, match="policy.squash=true"):
        GoRLSAC(head)
    with pytest.raises(ValueError, match="policy.decoder=flow"):
        latent_sac_head(decoder="diffusion")


def test_gorl_sac_needs_a_refit_interval():
    # GoRL-PPO's refit_every=None means "from the stages"; GoRL-SAC has none, and used to fail at its first
    # update with a TypeError about the modulo of None
    with pytest.raises(ValueError, match="algo.refit_every=None: algo=gorl_sac"):
        GoRLSAC(latent_sac_head(), refit_every=None)


def test_gorl_sac_first_stage_is_sacs_tanh_gaussian():
    # latent_limit 1 and the identity decoder: the env action is exactly tanh(x), x ~ N(mu(s), sigma(s))
    head = latent_sac_head()
    GoRLSAC(head, critic_hidden=(32,))
    obs = torch.randn(8, 3)
    torch.manual_seed(3)
    z, _ = head.latent.sample(obs)
    assert float(z.abs().max()) < 1.0
    torch.testing.assert_close(head.decode(obs, z), z)


def test_gorl_sac_actor_gradient_reaches_the_latent_through_the_decoder():
    torch.manual_seed(0)
    learner = GoRLSAC(latent_sac_head(), critic_hidden=(32,))
    loss, _ = learner.actor_loss(torch.randn(64, 3), torch.tensor(0.1))
    grads = torch.autograd.grad(loss, learner._actor_params)
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(float(g.abs().sum()) > 0 for g in grads)  # every latent-policy weight moves
    assert {id(p) for p in learner._actor_params} == {id(p) for p in learner.policy.latent.parameters()}
    # with latents wider than the action box, the identity decoder clips z to the unit box, and the
    # gradient passes straight through that clip
    wide = latent_sac_head(latent_limit=3.0)
    GoRLSAC(wide, critic_hidden=(32,))
    z = torch.tensor([[2.5, -2.0], [0.3, 0.1]], requires_grad=True)
    unit = wide.decode_unit(torch.zeros(2, 3), z)
    torch.testing.assert_close(unit.detach(), z.detach().clamp(-1, 1))
    (grad,) = torch.autograd.grad(unit.sum(), z)
    torch.testing.assert_close(grad, torch.ones_like(z))


def refit_once(learner, obs, executed):
    for o, a in zip(obs.split(128), executed.split(128)):
        learner.observe(o, a)
    assert int(learner.data_size) == len(obs)
    for _ in range(learner.refit_every):
        metrics = learner.update(batch())
    assert float(metrics["refits"]) == 1.0  # refit at update 3; executed pairs cleared, policy states kept
    assert int(learner.data_size) == (0 if learner.refit_on == "executed" else len(obs))
    # the latent is the prior for every state: mean 0, std 1 before the squash
    mean, log_std = learner.policy.latent.distribution(torch.randn(16, 3))
    torch.testing.assert_close(mean, torch.zeros_like(mean))
    torch.testing.assert_close(log_std, torch.zeros_like(log_std))
    return metrics


REFIT = dict(critic_hidden=(32,), refit_every=3, refit_epochs=60, dataset_size=512, decoder_lr=3e-3)


def test_gorl_sac_refit_on_executed_actions_reproduces_them_from_the_prior():
    torch.manual_seed(0)
    learner = GoRLSAC(latent_sac_head(), refit_on="executed", **REFIT)
    obs = torch.randn(512, 3)
    refit_once(learner, obs, torch.stack([obs[:, 0].tanh() * 0.8, torch.full((512,), -0.5)], dim=1))
    test_obs = torch.randn(256, 3)
    target = torch.stack([test_obs[:, 0].tanh() * 0.8, torch.full((256,), -0.5)], dim=1)
    assert float((learner.policy.act(test_obs) - target).abs().mean()) < 0.1


def test_gorl_sac_refit_on_the_policy_keeps_the_policy_through_the_latent_reset():
    torch.manual_seed(0)
    learner = GoRLSAC(latent_sac_head(), **REFIT)  # refit_on=policy, the default
    head = learner.policy
    last = [m for m in head.latent.net if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # a narrow latent policy around z = tanh(1, -0.5)
        last.weight.zero_()
        last.bias.copy_(torch.tensor([1.0, -0.5, -3.0, -3.0]))
    obs = torch.randn(512, 3)
    before = head.act(obs[:256])
    refit_once(learner, obs, torch.rand(512, 2) * 2 - 1)  # executed actions: uniform noise, not the policy
    after = head.act(obs[:256])  # latents now drawn from the broad prior
    torch.testing.assert_close(before.mean(0), torch.tanh(torch.tensor([1.0, -0.5])), atol=0.02, rtol=0)
    assert float((after - before).abs().mean()) < 0.1


def test_gorl_sac_refit_keeps_the_policys_spread_and_its_noise_to_action_map():
    # A latent policy of moderate width whose mean follows the state: refit_on=policy pairs each policy sample
    # with the prior latent drawn from the same noise, so after the reset the decoder gives every noise draw the
    # action it gave before (the deterministic action, x = 0, included) and the spread survives. Without the
    # pairing (independent prior draws) the 2-step flow learned only the marginal, through a curved flow, and
    # the per-state spread shrank to ~0.4 of the policy's here (on Pendulum, an action std of 0.25 -> 0.04).
    torch.manual_seed(0)
    learner = GoRLSAC(latent_sac_head(), **{**REFIT, "refit_epochs": 150})
    head = learner.policy
    last = [m for m in head.latent.net if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # pre-squash mean (0.8 h_0(s), -0.3) with h_0 the first hidden unit, std e^-1
        last.weight.zero_()
        last.weight[0, 0] = 0.8
        last.bias.copy_(torch.tensor([0.0, -0.3, -1.0, -1.0]))
    obs = torch.randn(512, 3)
    test_obs = obs[:64]

    def draws(o):
        return torch.stack([head.act(o) for _ in range(256)])  # [draws, B, A]

    before, det_before = draws(test_obs), head.act(test_obs, deterministic=True)
    assert float(before.std(0).mean()) > 0.2
    metrics = refit_once(learner, obs, torch.rand(512, 2) * 2 - 1)
    after, det_after = draws(test_obs), head.act(test_obs, deterministic=True)
    spread = after.std(0) / before.std(0)
    # measured: spread 0.95, mean moved 0.027, deterministic action 0.019 (without the pairing: 0.42, 0.047, 0.050)
    assert 0.85 < float(spread.mean()) < 1.15, spread.mean()
    assert float((after.mean(0) - before.mean(0)).abs().mean()) < 0.04
    assert float((det_after - det_before).abs().mean()) < 0.035
    # the reported shift is that of the deterministic action, in the box's unit scale (here the box is [-1, 1]^2)
    torch.testing.assert_close(metrics["refit_action_shift"], (det_after - det_before).abs().mean(), atol=0.01, rtol=0)


def test_gorl_sac_run_uses_the_latent_head_and_refits(tmp_path):
    summary = train(compose("algo=gorl_sac", *OFF, *TINY_LATENT_SAC, "steps=500", "eval.every=500"), tmp_path / "run")
    cfg = load_run_config(tmp_path / "run")
    assert cfg.policy.name == "latent" and cfg.policy.squash and cfg.policy.state_dependent_std
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "train/decoder_loss" in header and "train/alpha" in header
    assert np.isfinite(summary["final_eval_return_mean"])


def test_bad_learner_options_fail_before_work(tmp_path):
    with pytest.raises(ConfigError, match="algo.top_k"):
        train(compose("algo=parl", "algo.top_k=20", *OFF), tmp_path / "a")
    with pytest.raises(ValueError, match="at least 1 integration step"):
        train(compose("algo=expo", "policy.steps=0", *OFF), tmp_path / "b")


def test_deterministic_acting_includes_the_base_heads_own_deterministic_action():
    # the first candidate comes from zero noise (a single fixed tail draw used to decide every action)
    from robo_rl.learners.candidates import CriticSelectPolicy
    from robo_rl.learners.critics import QEnsemble

    base = build_head("flow", 3, LOW, HIGH, hidden_sizes=(16, 16), steps=2)
    select = CriticSelectPolicy(base, QEnsemble(3, 2, 2, (16,)), num_samples=3)
    obs = torch.randn(5, 3)
    with torch.no_grad():
        candidates = select.candidates(obs, deterministic=True)
        torch.testing.assert_close(candidates[:, 0], base.act(obs, deterministic=True))
        assert not torch.allclose(candidates[:, 1], candidates[:, 0])  # the others are seeded draws
        torch.testing.assert_close(select.act(obs, deterministic=True), select.act(obs, deterministic=True))


def test_the_fixed_noise_of_deterministic_acting_is_the_same_on_every_device():
    # it came from a generator on the acting device: on cuda a Philox stream, not the CPU's, so a run trained on a GPU
    # evaluated another deterministic policy than the one robo-rl eval device=cpu and the export's default noise act
    # with. The meta device (no generator of its own, as none but the CPU's is used now) stands in for cuda here.
    from robo_rl.learners.candidates import CriticSelectPolicy
    from robo_rl.learners.critics import QEnsemble
    from sim2real.export import default_noise

    base = build_head("flow", 3, LOW, HIGH, hidden_sizes=(16, 16), steps=2)
    select = CriticSelectPolicy(base, QEnsemble(3, 2, 2, (16,)), num_samples=3)
    cpu = select.fixed_noise(4, torch.device("cpu"))
    elsewhere = select.fixed_noise(4, torch.device("meta"))
    assert elsewhere.device.type == "meta" and elsewhere.shape == cpu.shape == (4, 6)
    assert cpu[0].tolist() == default_noise(select)  # what the export feeds by default
    expected = torch.randn(1, 6, generator=torch.Generator().manual_seed(0))
    expected[:, :2] = 0.0  # the base head's own deterministic action first
    torch.testing.assert_close(cpu, expected.expand(4, 6), rtol=0, atol=0)


@pytest.mark.parametrize("cls", [PARL, EXPO])
@pytest.mark.parametrize("head, options", [("flow", {"steps": 2}), ("diffusion", {"inference_steps": 2, "train_steps": 20})])
def test_acting_refuses_a_diverged_base_in_either_mode_naming_it(cls, head, options):
    # deterministic acting (evaluation, robo-rl eval) draws the base's candidates from fixed noise through its
    # chain, not through its checked act: a NaN base must not reach the env there either, and is named (not
    # reported as EXPO's edit policy, a Gaussian)
    policy = build_head(head, 3, LOW, HIGH, hidden_sizes=(16, 16), **options)
    learner = cls(policy, critic_hidden=(16,))
    with torch.no_grad():
        policy.net.out.bias.fill_(float("nan"))
    for deterministic in (False, True):
        with pytest.raises(FloatingPointError, match=f"the {head} head produced non-finite actions"):
            learner.policy.act(torch.randn(4, 3), deterministic=deterministic)



def test_a_diverged_expo_edit_policy_is_named_apart_from_a_gaussian_base():
    # the edit policy is a Gaussian head too: with policy=gaussian a NaN in either read "the gaussian head produced
    # non-finite actions", so the run's message could not say which network diverged
    for diverged in ("edit", "base"):
        policy = build_head("gaussian", 3, LOW, HIGH, hidden_sizes=(16,))
        learner = EXPO(policy, critic_hidden=(16,), edit_hidden=(16,))
        net = learner.edit.head if diverged == "edit" else policy
        with torch.no_grad():
            next(net.parameters()).fill_(float("nan"))
        name = "EXPO edit policy's gaussian" if diverged == "edit" else "gaussian"
        for deterministic in (False, True):
            with pytest.raises(FloatingPointError, match=f"^the {name} head produced non-finite actions"):
                learner.policy.act(torch.randn(4, 3), deterministic=deterministic)


@pytest.mark.parametrize("cls", [PARL, EXPO])
def test_acting_takes_observations_as_every_head_does(cls):
    policy = build_head("flow", 3, LOW, HIGH, hidden_sizes=(16, 16), steps=2)
    select = cls(policy, critic_hidden=(16,)).policy
    obs = torch.randn(4, 3)
    torch.testing.assert_close(select.act(obs.double(), deterministic=True), select.act(obs, deterministic=True))
    for deterministic in (False, True):
        with pytest.raises(ValueError, match=r"obs \[B, 3\], got shape \[3\] \(obs\[None\] for one observation\)"):
            select.act(obs[0], deterministic=deterministic)
        with pytest.raises(TypeError, match="float tensor"):
            select.act(obs.numpy(), deterministic=deterministic)


@pytest.mark.parametrize("refit_on", ["policy", "executed"])
def test_a_refit_with_the_flow_decoders_written_out_backward_equals_autograds(monkeypatch, refit_on):
    # a refit trains the flow decoder with FlowHead.imitation_gradients where it fits: the same minibatches, noise and
    # steps as autograd's (refit_on=policy pairs the targets with their prior latents; executed lets the decoder draw)
    def refitted(written_out):
        torch.manual_seed(0)
        head = build_head("latent", 3, LOW, HIGH, hidden_sizes=(16,), decoder_hidden=(32, 32), decoder_steps=2)
        learner = GoRL(head, refit_every=1, refit_epochs=3, dataset_size=256, refit_on=refit_on)
        assert head.fits_imitation_gradients()
        if not written_out:
            monkeypatch.setattr(head, "fits_imitation_gradients", lambda: False)
        learner._store(torch.randn(256, 3), torch.rand(256, 2) * 2 - 1)
        metrics = learner.refit()
        monkeypatch.undo()
        return head, metrics

    (auto, m_auto), (written, m_written) = refitted(False), refitted(True)
    assert float(m_written["decoder_loss"]) == pytest.approx(float(m_auto["decoder_loss"]), rel=1e-5)
    for a, w in zip(auto.decoder.parameters(), written.decoder.parameters()):
        torch.testing.assert_close(w, a, rtol=1e-4, atol=1e-6)


def test_a_squashed_latents_written_out_decoder_gradients_draw_its_prior_as_its_loss_does():
    # GoRL-SAC's squashed latent: the decoder's source noise is the prior's tanh-squashed draws, drawn before the times
    torch.manual_seed(0)
    head = build_head("latent", 3, LOW, HIGH, hidden_sizes=(16,), decoder_hidden=(32, 32), decoder_steps=2, squash=True)
    obs, actions = torch.randn(64, 3), torch.rand(64, 2) * 2 - 1
    torch.manual_seed(1)
    loss = head.imitation_loss(obs, actions)
    expected = torch.autograd.grad(loss, list(head.decoder.parameters()))
    torch.manual_seed(1)
    got_loss, got = head.imitation_gradients(obs, actions)
    assert float(got_loss) == pytest.approx(float(loss), rel=1e-6)
    for want, have in zip(expected, got):
        assert float((want - have).abs().max() / want.abs().max()) < 1e-5


@pytest.mark.parametrize("stages, warned", [(3, "makes 2 stage(s): a stage is a whole number of updates, 2 here"),
                                             (2, None), (4, None), (9, "makes 4 stage(s)")])
def test_algo_stages_that_the_run_cannot_make_are_warned_of(tmp_path, stages, warned):
    # 4 PPO updates in algo.stages=3 made 2 stages (a stride of ceil(4/3) = 2) without a word (QA, 2026-12-07)
    import logging

    from tests.helpers import robo_rl_records

    with robo_rl_records(logging.INFO) as records:
        train(compose("algo=gorl", "env=pendulum", "env.num_envs=2", "algo.rollout_steps=32", "steps=256",
                      "algo.epochs=1", "policy.decoder_hidden=[16]", f"algo.stages={stages}", *FAST), tmp_path / "r")
    lines = [r.getMessage() for r in records if r.levelno == logging.WARNING and "algo.stages" in r.getMessage()]
    if warned is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith(f"algo.stages={stages} over the run's 4 PPO update(s) {warned}")
        assert lines[0].endswith("raise steps, or lower algo.stages")
