"""TwoGoals-v0: the mean of the two good moves runs into the obstacle, and bad settings or actions are refused."""

import gymnasium as gym
import numpy as np
import pytest

import envs.tasks  # noqa: F401  registers robo_rl/TwoGoals-v0
from envs.tasks.two_goals import GOALS, STEP, WAYPOINT, TwoGoalsEnv, expert_demos


def test_the_mean_of_the_expert_s_two_modes_hits_the_obstacle():
    demos = expert_demos(4, noise=0.0)
    first = demos["actions"][np.all(demos["obs"][:, :2] == 0, axis=1)]
    assert np.allclose(np.abs(first), [4 / 9, 1.0]) and {*np.sign(first[:, 1])} == {-1.0, 1.0}  # two modes
    assert demos["rewards"][demos["terminated"] > 0].tolist() == [1.0] * 4  # both sides reach their goal

    def expert(pos: np.ndarray, targets: list) -> np.ndarray:  # the scripted expert's rule, noise-free
        if len(targets) > 1 and np.linalg.norm(pos - targets[0]) < STEP:
            targets.pop(0)
        direction = targets[0] - pos
        return np.clip(direction / max(np.abs(direction).max(), 1e-8) * min(1.0, np.linalg.norm(direction) / STEP), -1, 1)

    env = TwoGoalsEnv()
    env.reset(seed=0)
    up, down = [WAYPOINT, GOALS[0]], [WAYPOINT * (1, -1), GOALS[1]]
    for _ in range(env.max_steps):  # the average of both modes: straight along the axis, into the obstacle
        _, reward, terminated, truncated, info = env.step(0.5 * (expert(env.pos, up) + expert(env.pos, down)))
        if terminated or truncated:
            break
    assert info["collision"] and reward == -1.0 and terminated and env.t < 10


def test_the_two_goals_are_mirror_images_and_so_are_the_expert_s_demonstrations():
    # the studies read "which goal" as a free choice: mirrored actions must give mirrored states and the same
    # rewards, endings and success, bit for bit (random moves through crashes, successes and time-outs)
    mirror = np.array([1.0, -1.0, 1.0], np.float32)
    rng = np.random.default_rng(0)
    ends = set()
    for _ in range(300):
        up, down = TwoGoalsEnv(), TwoGoalsEnv()
        up.reset(seed=0), down.reset(seed=0)
        bias = rng.uniform(-0.2, 1.0, 2)  # a drift to the right and to one side, so goals are reached too
        for action in np.clip(bias + rng.normal(0, 0.7, (40, 2)), -1, 1):
            a, b = up.step(action), down.step(action * (1, -1))
            assert np.array_equal(a[0] * mirror, b[0]) and a[1:] == b[1:], (a, b)
            if a[2] or a[3]:
                ends.add("success" if a[4]["success"] else "collision" if a[4]["collision"] else "time-out")
                break
    assert ends == {"success", "collision", "time-out"}
    demos = expert_demos(6, seed=3)
    starts = np.flatnonzero(demos["obs"][:, 2] == 1.0)  # episodes come in pairs, the upper one first
    episodes = np.split(np.arange(len(demos["obs"])), starts[1:])
    for upper, lower in zip(episodes[::2], episodes[1::2]):
        assert len(upper) == len(lower)
        for key, flip in (("obs", mirror), ("next_obs", mirror), ("actions", mirror[:2])):
            assert np.array_equal(demos[key][upper] * flip, demos[key][lower]), key
        for key in ("rewards", "terminated"):
            assert np.array_equal(demos[key][upper], demos[key][lower]), key


def test_bad_settings_and_actions_are_refused():
    for kwargs, words in (({"max_steps": 0}, "max_steps=0 must be an integer >= 1"),  # was a ZeroDivisionError
                          ({"start_noise": 0.2}, "start_noise=0.2 must be between 0 and 0.15")):
        with pytest.raises(ValueError, match=f"robo_rl/TwoGoals-v0: {words}"):
            gym.make("robo_rl/TwoGoals-v0", **kwargs)
    for kwargs, words in (({"episodes": 3}, "episodes=3: .* an even integer >= 2"),
                          ({"episodes": 4.0}, "episodes=4.0: .* an even integer >= 2"),  # was range()'s TypeError
                          ({"episodes": 4, "noise": float("inf")}, "noise=inf: .* a finite number >= 0"),  # was taken
                          ({"episodes": 4, "noise": float("nan")}, "noise=nan: .* a finite number >= 0"),
                          ({"episodes": 4, "noise": -0.1}, "noise=-0.1: .* a finite number >= 0")):
        with pytest.raises(ValueError, match=words):
            expert_demos(**kwargs)
    env = gym.make("robo_rl/TwoGoals-v0", disable_env_checker=True)
    env.reset(seed=0)
    for action in (np.array([0.5], np.float32), np.array([np.nan, 0.0], np.float32)):
        with pytest.raises(ValueError, match="the action must be 2 finite numbers"):
            env.step(action)


def test_a_snapshot_continues_the_episodes_exactly():
    # TwoGoals had no capturable state: a resumed run restarted its episodes
    import torch

    from envs import make_env

    a = make_env("robo_rl/TwoGoals-v0", 2, randomize={"obs_noise_std": 0.01})
    a.reset(seed=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        a.step(torch.rand(2, 2, generator=g) * 2 - 1)
    snap = a.state_dict()
    assert snap is not None
    b = make_env("robo_rl/TwoGoals-v0", 2, randomize={"obs_noise_std": 0.01})
    b.reset(seed=9)
    b.load_state_dict(snap)
    for _ in range(50):  # across the 40-step time limit
        act = torch.rand(2, 2, generator=g) * 2 - 1
        ra, rb = a.step(act), b.step(act)
        assert torch.equal(ra.obs, rb.obs) and torch.equal(ra.reward, rb.reward)
        assert torch.equal(ra.truncated, rb.truncated) and torch.equal(ra.terminated, rb.terminated)
