"""GAE against a hand-computed case; replay buffer wrap-around and round trip; what the runners store at episode ends."""

import copy

import numpy as np
import torch

from robo_rl.storage.replay import ReplayBuffer
from robo_rl.storage.rollout import RolloutStorage, compute_gae


def test_gae_hand_computed():
    # T=3, one env; the episode ends at t=1, so t=1 does not bootstrap from t=2's value.
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [1.0], [1.5]])
    dones = torch.tensor([[0.0], [1.0], [0.0]])
    adv, ret = compute_gae(rewards, values, dones, torch.tensor([2.0]), gamma=0.9, gae_lambda=0.8)
    # t=2: delta = 3 + 0.9*2.0 - 1.5 = 3.3                 -> A = 3.3
    # t=1: delta = 2 + 0 - 1.0 = 1.0 (episode ended)        -> A = 1.0
    # t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4; A = 1.4 + 0.72*1.0 = 2.12
    torch.testing.assert_close(adv.squeeze(-1), torch.tensor([2.12, 1.0, 3.3]))
    torch.testing.assert_close(ret.squeeze(-1), torch.tensor([2.62, 2.0, 4.8]))


def test_gae_lambda_one_is_discounted_return_minus_value():
    torch.manual_seed(0)
    r, v = torch.randn(5, 2), torch.randn(5, 2)
    last = torch.randn(2)
    adv, _ = compute_gae(r, v, torch.zeros(5, 2), last, gamma=0.95, gae_lambda=1.0)
    g = last.clone()
    expected = torch.empty(5, 2)
    for t in reversed(range(5)):
        g = r[t] + 0.95 * g
        expected[t] = g - v[t]
    torch.testing.assert_close(adv, expected)


def test_rollout_storage_flattens_time_major():
    s = RolloutStorage(2, 3, obs_dim=1, act_dim=1, device=torch.device("cpu"))
    for t in range(2):
        s.add(torch.full((3, 1), float(t)), torch.zeros(3, 1), torch.zeros(3), torch.zeros(3), torch.ones(3), torch.zeros(3))
    batch = s.finish(torch.zeros(3), 0.99, 0.95)
    assert batch.obs.shape == (6, 1) and batch.obs[:3].eq(0).all() and batch.obs[3:].eq(1).all()


def test_replay_wraps_around_and_overwrites_oldest():
    rb = ReplayBuffer(5, obs_dim=1, act_dim=1)
    for i in range(3):  # 3 adds of 2 transitions = 6 > capacity 5
        obs = torch.tensor([[2.0 * i], [2.0 * i + 1]])
        rb.add(obs, obs, obs.squeeze(-1), obs + 100, torch.zeros(2))
    assert len(rb) == 5 and rb.pos == 1
    # row 0 was overwritten by transition 5; rows 1..4 hold transitions 1..4
    assert rb.obs.squeeze(-1).tolist() == [5.0, 1.0, 2.0, 3.0, 4.0]
    assert rb.next_obs.squeeze(-1).tolist() == [105.0, 101.0, 102.0, 103.0, 104.0]


def test_replay_samples_only_filled_rows_and_round_trips():
    rb = ReplayBuffer(100, obs_dim=2, act_dim=1, seed=3)
    rows = torch.arange(1, 11, dtype=torch.float32)  # distinct rows: the sampled indices are visible
    rb.add(rows[:, None].repeat(1, 2), rows[:, None], rows, rows[:, None].repeat(1, 2), torch.zeros(10))
    drawn = rb.sample(256)
    assert ((drawn.obs >= 1) & (drawn.obs <= 10)).all() and len(drawn.rewards.unique()) == 10  # filled rows only
    torch.testing.assert_close(drawn.actions[:, 0], drawn.rewards)  # each sample is one row, fields together
    state = rb.state_dict()
    assert state["obs"].shape == (10, 2)
    other = ReplayBuffer(100, obs_dim=2, act_dim=1, seed=99)
    other.load_state_dict(state)
    a, b = rb.sample(16), other.sample(16)  # same rows and the same sampling RNG state
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert other.size == 10 and other.pos == 10


def test_replay_survives_a_checkpoint_file_partly_filled_wrapped_and_with_costs(tmp_path):
    # through replay.npz as a run writes and maps it: the same rows in the same places (the oldest is overwritten
    # next), terminations and costs kept, and the same samples drawn afterwards
    import pytest

    from robo_rl.checkpoint import load_checkpoint, save_checkpoint

    for label, added, costs in (("partly filled", 7, False), ("wrapped", 23, True)):
        rb = ReplayBuffer(10, obs_dim=3, act_dim=2, seed=3, costs=costs)
        for k in range(added):
            x = torch.full((1, 3), float(k))
            rb.add(x, x[:, :2] + 0.25, torch.tensor([k + 0.1]), x + 1, torch.tensor([k % 3 == 0]),
                   costs=torch.tensor([k * 0.5]) if costs else None)
        rb.sample(5)  # the sampling generator has moved on
        path = save_checkpoint(tmp_path / label, 1, {"w": torch.zeros(1)}, replay=rb.state_dict())
        _, arrays = load_checkpoint(path)
        other = ReplayBuffer(10, obs_dim=3, act_dim=2, seed=0, costs=costs)
        other.load_state_dict(arrays)
        assert (len(other), other.pos) == (min(added, 10), added % 10), label
        for name in rb.fields:
            assert torch.equal(getattr(other, name), getattr(rb, name)), (label, name)
        assert all(torch.equal(a, b) for a, b in zip(rb.sample(64), other.sample(64))), label
        newest = added - 1
        assert float(other.obs[(other.pos - 1) % 10, 0]) == newest and float(other.next_obs[(other.pos - 1) % 10, 0]) == newest + 1
        if added > 10:  # the next add overwrites the oldest row, transition added - 10
            assert float(other.obs[other.pos, 0]) == added - 10
    with pytest.raises(ValueError, match="per-step costs") as refused:  # a passivity-aware run cannot resume a plain replay
        ReplayBuffer(10, obs_dim=3, act_dim=2, costs=True).load_state_dict(load_checkpoint(tmp_path / "partly filled" / path.name)[1])
    # its advice was "resume with checkpoint.save_replay=false": a key a resume refuses to change, and one the resume
    # does not read (it loads the checkpoint's replay whatever the key says)
    from robo_rl.train import RESUME_OVERRIDABLE

    assert "checkpoint.save_replay" not in RESUME_OVERRIDABLE
    assert "checkpoint.save_replay" not in str(refused.value) and "start a new run" in str(refused.value)


def test_replay_state_refuses_other_capacity():
    rb = ReplayBuffer(10, 1, 1)
    import pytest

    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(20, 1, 1).load_state_dict(rb.state_dict())
    assert np.asarray(rb.state_dict()["capacity"]) == 10


def test_reward_normalizer_by_hand():
    from robo_rl.normalization import RewardNormalizer

    norm = RewardNormalizer(num_envs=2, gamma=0.5, clip=2.0, eps=0.0)
    steps = [([1.0, 2.0], [False, True]), ([3.0, 0.0], [False, False]), ([-40.0, 1.0], [False, False])]
    returns, seen = np.zeros(2), []
    for rewards, dones in steps:
        out = norm(torch.tensor(rewards), torch.tensor(dones))
        returns = returns * 0.5 + np.array(rewards)  # the discounted-return trace ...
        seen.extend(returns)
        returns[np.array(dones)] = 0.0  # ... restarts where an episode ended
        scale = 1.0 / np.sqrt(np.var(seen))  # the population variance of every trace value so far
        np.testing.assert_allclose(out.numpy(), np.clip(np.array(rewards) * scale, -2.0, 2.0), rtol=1e-6)
    assert out[0] == -2.0  # clipped (-2.69 before the clip)
    np.testing.assert_allclose(norm.returns, returns)


def test_reward_normalizer_refuses_a_saved_trace_of_another_shape_before_changing():
    import pytest

    from robo_rl.normalization import RewardNormalizer

    norm = RewardNormalizer(num_envs=4, gamma=0.5)
    saved = {**RewardNormalizer(num_envs=3, gamma=0.5).state_dict(), "mean": 7.0}
    with pytest.raises(ValueError, match=r"reward_norm\.returns has shape \[3\], expected \[4\]"):
        norm.load_state_dict(saved)  # it was taken, and the next step failed to broadcast (3,) with (4,)
    assert norm.mean == 0.0 and norm.returns.shape == (4,)


def runner_with_recorded_steps(tmp_path, *overrides, limit=5):
    """A runner built as `robo-rl train` builds it, on InvertedPendulum with a short time limit: random actions
    end some episodes by termination and the others by the limit, at different steps in each env copy.
    Returns the runner and the list every env step's (obs, executed actions, reward, terminated, truncated,
    final_obs) is appended to."""
    from omegaconf import open_dict

    from robo_rl.build import build_env_checked, build_learner, build_policy, build_runner
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import validate
    from tests.helpers import FAST, compose

    cfg = resolve_defaults(compose("env.id=InvertedPendulum-v5", "env.backend=mujoco", "env.num_envs=3",
                                   f"env.max_episode_steps={limit}", "policy.normalize_obs=true", *FAST, *overrides))
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path)
    validate(cfg)
    torch.manual_seed(0)
    env = build_env_checked(cfg)
    learner = build_learner(cfg, build_policy(cfg, env))
    runner = build_runner(cfg, learner, env, env, tmp_path)
    steps, env_step = [], runner.env.step

    def recorded(actions):
        obs = runner.env.obs.clone()
        out = env_step(actions)
        steps.append((obs, out.info["safety"]["actions"].clone(), out.reward.clone(), out.terminated.clone(),
                      out.truncated.clone(), out.info["final_obs"].clone()))
        return out

    runner.env.step = recorded
    runner.obs = runner.env.reset(seed=0)
    runner.update_obs_norm(runner.obs)
    return runner, steps


def test_on_policy_runner_bootstraps_time_limits_from_the_final_observation(tmp_path):
    # A time-limit truncation stores r + gamma * V(final obs): the observation the episode ended in, normalized
    # with the statistics the rollout uses, and in the scale of the normalized rewards; a termination stores r.
    gamma = 0.9
    # (a 3-step limit and 9-step rollouts: random actions end episodes by both, and at the rollouts' last step)
    runner, steps = runner_with_recorded_steps(tmp_path, "algo.rollout_steps=9", f"algo.gamma={gamma}",
                                               "env.normalize_reward=true", "algo.minibatch_size=9", "steps=27", limit=3)
    learner = runner.learner
    with torch.no_grad():
        for p in learner.value_net.parameters():  # values far from 0, so a missing or wrong bootstrap shows
            p.add_(torch.randn_like(p))
    trace, seen = np.zeros(3), []
    for _ in range(2):  # the second rollout runs with statistics the first one updated
        steps.clear()
        before = copy.deepcopy(learner)  # the value net and observation statistics the rollout acts with
        runner.iterate()
        truncated = torch.stack([s[4] & ~s[3] for s in steps])
        assert truncated[-1].any() and truncated[:-1].any() and torch.stack([s[3] for s in steps]).any()
        expected = []
        for obs, _, reward, terminated, trunc, final in steps:
            trace = trace * gamma + reward.double().numpy()  # the reward normalizer, by hand
            seen.extend(trace)
            trace[(terminated | trunc).numpy()] = 0.0
            r = torch.clamp(reward / np.sqrt(np.var(seen) + 1e-8), -10.0, 10.0)
            with torch.no_grad():
                expected.append(torch.where(trunc & ~terminated, r + gamma * before.value(final), r))
        torch.testing.assert_close(runner.storage.rewards, torch.stack(expected))
        torch.testing.assert_close(runner.storage.dones, torch.stack([(s[3] | s[4]).float() for s in steps]))


def test_on_policy_runner_counts_the_rollout_observations_where_the_storage_holds_them(tmp_path):
    # the runner kept a list of every step's observations and concatenated it for the statistics: two more copies of
    # the rollout (4096 envs x 24 steps of a 235-number humanoid observation: 190 MB on top of the storage's 95 MB)
    runner, steps = runner_with_recorded_steps(tmp_path, "algo.rollout_steps=6", "algo.minibatch_size=6", "steps=36")
    runner.reset_obs_counted = True  # as train() leaves it: the reset's observations are in the statistics already
    seen, update = [], runner.update_obs_norm
    runner.update_obs_norm = lambda obs: seen.append(obs) or update(obs)
    for _ in range(2):
        steps.clear()
        runner.iterate()
    rollout = torch.cat([s[0] for s in steps])  # the second rollout's observations, time-major
    assert torch.equal(seen[1], rollout) and seen[0].shape == (5 * 3, rollout.shape[1])  # (less the reset's)
    storage = runner.storage.obs.untyped_storage()
    assert all(obs.untyped_storage().data_ptr() == storage.data_ptr() for obs in seen)  # no copy of the rollout


def test_off_policy_runner_stores_final_observations_and_terminations_only(tmp_path):
    # s' of a finished episode is where it ended (not the next episode's first observation), and only a
    # termination stops bootstrapping; rows of 3 env copies interleave, and a full buffer overwrites the oldest.
    runner, steps = runner_with_recorded_steps(tmp_path, "algo=td3", "algo.buffer_size=16", "algo.batch_size=16",
                                               "algo.learning_starts=6", "steps=30", limit=3)
    while runner.step < 30:
        runner.iterate()
    rows = [(obs[i], act[i], rew[i], fin[i], term[i], trunc[i])
            for obs, act, rew, term, trunc, fin in steps for i in range(3)]
    assert any(r[5] and not r[4] for r in rows) and any(r[4] for r in rows)  # truncations and terminations
    replay = runner.replay
    assert len(replay) == 16 and replay.pos == len(rows) % 16
    for k, (obs, act, rew, fin, term, _) in enumerate(rows[-16:]):
        row = (len(rows) - 16 + k) % 16
        assert torch.equal(replay.obs[row], obs) and torch.equal(replay.actions[row], act)
        assert float(replay.rewards[row]) == float(rew) and float(replay.terminated[row]) == float(term)
        assert torch.equal(replay.next_obs[row], fin)
