"""Stable-Baselines3 trains on robo-rl's batched envs through the VecEnv view."""

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402

from envs import make_env  # noqa: E402
from envs.sb3 import SB3VecEnv  # noqa: E402


def test_vecenv_conventions():
    venv = SB3VecEnv(make_env("Pendulum-v1", num_envs=3, max_episode_steps=5))
    venv.seed(7)
    obs = venv.reset()
    assert obs.shape == (3, 3) and obs.dtype == np.float32
    for episode in range(2):  # the second episode's stats are its own, nothing carried over from the first
        returns = np.zeros(3)
        for t in range(5):
            obs, rewards, dones, infos = venv.step(np.full((3, 1), 0.5 * episode, np.float32))
            returns += rewards
        assert dones.all() and rewards.shape == (3,)
        assert all(info["TimeLimit.truncated"] for info in infos)
        assert [info["episode"]["l"] for info in infos] == [5, 5, 5] and infos[0]["terminal_observation"].shape == (3,)
        # Monitor's "r": the sum of the rewards the view handed out (float32 rewards, a float64 sum: rel 1e-6)
        assert [info["episode"]["r"] for info in infos] == pytest.approx(returns.tolist(), rel=1e-6, abs=0)
        assert not np.array_equal(infos[0]["terminal_observation"], obs[0])  # obs already starts the next episode
    # the task's observation bounds reach SB3 (Pendulum: cos, sin in [-1, 1], angular velocity in [-8, 8])
    assert venv.observation_space == gym.spaces.Box(np.float32([-1, -1, -8]), np.float32([1, 1, 8]), dtype=np.float32)



def test_actions_of_the_wrong_shape_or_type_are_refused_not_reshaped():
    venv = SB3VecEnv(make_env("Hopper-v5", num_envs=2, backend="mujoco"))
    venv.reset()
    for actions in (np.zeros((3, 2)), np.zeros(6), None):  # a transposed batch used to be reshaped into place
        with pytest.raises(ValueError, match=r"actions have shape .*, expected \(2, 3\)"):
            venv.step_async(actions)
    for actions in (np.zeros((2, 3), np.complex64), np.zeros((2, 3), bool)):
        venv.step_async(actions)
        with pytest.raises(TypeError, match="actions must be a float tensor"):
            venv.step_wait()
    with pytest.raises(RuntimeError, match="without step_async"):  # the refused actions are not retried
        venv.step_wait()
    obs, rewards, dones, infos = venv.step(np.zeros((2, 3)))  # float64 is fine
    assert obs.shape == (2, 11) and rewards.shape == (2,)

def forward_reward_per_episode(model, episodes=8):
    """Mean over episodes of Hopper's forward-progress reward, acting with the model's deterministic policy."""
    env = make_env("Hopper-v5", num_envs=4, backend="mujoco")
    obs, running, finished = env.reset(seed=123), torch.zeros(4), []
    while len(finished) < episodes:
        actions, _ = model.predict(obs.numpy(), deterministic=True)
        result = env.step(torch.as_tensor(actions))
        running += result.info["task"]["reward_forward"]
        for i in torch.nonzero(result.terminated | result.truncated).flatten().tolist():
            finished.append(float(running[i]))
            running[i] = 0.0
        obs = result.obs
    return float(np.mean(finished[:episodes]))


def test_sb3_ppo_learns_on_batched_hopper():
    torch.set_num_threads(1)
    venv = SB3VecEnv(make_env("Hopper-v5", num_envs=16, backend="mujoco"))
    venv.seed(0)
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=256, n_epochs=5, seed=0, verbose=0, device="cpu")
    before = forward_reward_per_episode(model)
    model.learn(60_000)
    assert len(model.ep_info_buffer) > 0  # SB3's logger sees the episodes
    evaluation = SB3VecEnv(make_env("Hopper-v5", num_envs=4, backend="mujoco"))
    evaluation.seed(123)
    assert evaluate_policy(model, evaluation, n_eval_episodes=4)[0] > 0  # SB3's own evaluation runs on the view
    # Learning measured as forward progress, not return: Hopper's alive bonus pays an untrained policy that
    # stands still up to ~200. Measured before / after, seeds 0-4: 0.3 / 94.7, -2.0 / 85.5, -21.4 / 94.8,
    # 0.4 / 99.0, -4.0 / 110.3 (this code with venv.seed(s) and PPO(seed=s))
    after = forward_reward_per_episode(model)
    assert before < 10 and after > 50


def test_seed_then_resets_are_reproducible():
    # SB3's evaluate_policy and repeated learn() call reset() without a seed after venv.seed(0)
    def resets():
        venv = SB3VecEnv(make_env("Hopper-v5", num_envs=2, backend="mujoco"))
        venv.seed(0)
        return [venv.reset(), venv.reset(), venv.reset()]

    first, second = resets(), resets()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], first[2])


class _Reaches(gym.Env):
    """Succeeds (terminates, is_success) at step 3 when pushed right, times out at 5 otherwise; draws a 4x4 frame."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    observation_space = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        success = self.t >= 3 and float(action[0]) > 0
        return np.full(1, self.t, np.float32), 1.0, success, False, {"is_success": success, "progress": float(self.t)}

    def render(self):
        return np.full((4, 4, 3), self.t, np.uint8)


gym.register("robo_rl_test/Reaches-v0", entry_point=_Reaches, max_episode_steps=5)


def test_the_task_s_info_terms_reach_sb3_so_its_success_rate_is_logged():
    # the view used to hand SB3 only its own keys: rollout/success_rate (from info["is_success"]) silently vanished
    venv = SB3VecEnv(make_env("robo_rl_test/Reaches-v0", num_envs=2))
    venv.seed(0)
    venv.reset()
    for _ in range(3):
        _, _, dones, infos = venv.step(np.array([[1.0], [-1.0]], np.float32))
    assert dones.tolist() == [True, False]
    assert infos[0]["is_success"] is True and infos[0]["progress"] == 3.0  # the ending step's, not the reset's
    assert infos[1]["is_success"] is False and infos[1]["progress"] == 3.0
    assert "terminal_observation" in infos[0] and "terminal_observation" not in infos[1]


def test_same_seeds_and_actions_as_sb3_s_dummyvecenv():
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    ours = SB3VecEnv(make_env("InvertedPendulum-v5", num_envs=3, backend="gymnasium"))
    ref = DummyVecEnv([lambda: Monitor(gym.make("InvertedPendulum-v5")) for _ in range(3)])
    ours.seed(11)
    ref.seed(11)
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731  (the view's observations are float32, the task's float64)
    np.testing.assert_array_equal(ours.reset(), f32(ref.reset()))
    rng, ended = np.random.default_rng(0), 0
    for _ in range(40):
        actions = rng.uniform(-3, 3, (3, 1)).astype(np.float32)
        (o1, r1, d1, i1), (o2, r2, d2, i2) = ours.step(actions), ref.step(actions)
        np.testing.assert_array_equal(o1, f32(o2))
        assert r1.tolist() == r2.tolist() and d1.tolist() == d2.tolist()
        for i in np.flatnonzero(d2):
            ended += 1
            np.testing.assert_array_equal(i1[i]["terminal_observation"], f32(i2[i]["terminal_observation"]))
            assert i1[i]["TimeLimit.truncated"] == i2[i]["TimeLimit.truncated"]
            assert (i1[i]["episode"]["l"], i1[i]["episode"]["r"]) == (i2[i]["episode"]["l"], i2[i]["episode"]["r"])
        sb3_keys = ("episode", "terminal_observation", "TimeLimit.truncated")
        for a, b in zip(i1, i2):  # the task's own info terms (InvertedPendulum's reward_survive) as DummyVecEnv's
            assert {k: v for k, v in a.items() if k not in sb3_keys} == {k: v for k, v in b.items() if k not in sb3_keys}
    assert ended > 3


def test_render_through_the_view():
    # render_mode was None whatever the env, so venv.render() returned None and VecVideoRecorder refused the view
    venv = SB3VecEnv(make_env("robo_rl_test/Reaches-v0", num_envs=2, render=True))
    venv.reset()
    venv.step(np.zeros((2, 1), np.float32))
    assert venv.render_mode == "rgb_array"
    frame = venv.render()
    assert frame.shape == (8, 4, 3) and frame.max() == 1  # SB3 tiles the two 4x4 frames
    assert SB3VecEnv(make_env("robo_rl_test/Reaches-v0", num_envs=1)).render_mode is None
    # the batched MuJoCo backend draws any simulation: no render=True needed
    hopper = SB3VecEnv(make_env("Hopper-v5", num_envs=2, backend="mujoco", kwargs={"width": 32, "height": 24}))
    hopper.reset()
    assert hopper.render_mode == "rgb_array" and hopper.render().shape == (48, 32, 3)  # two rows of 24 x 32


def test_per_copy_calls_and_reset_options_are_refused_not_applied_to_all():
    venv = SB3VecEnv(make_env("Pendulum-v1", num_envs=3))
    assert venv.get_attr("task_id", indices=[1]) == ["Pendulum-v1"]
    venv.set_attr("foo", 1)  # every copy: fine
    assert venv.env.foo == 1
    with pytest.raises(ValueError, match="one object.*indices"):
        venv.set_attr("foo", 2, indices=[0])  # used to set it for all three
    assert venv.env.foo == 1
    with pytest.raises(ValueError, match="one object.*indices"):
        venv.env_method("reset", indices=1)  # used to reset all three
    with pytest.raises(ValueError, match="reset options"):
        venv.set_options({"x_init": 0.1})  # the options used to be dropped without a word at the next reset
    venv._options = [{"x_init": 0.1}] * 3  # set around set_options: the reset refuses them
    with pytest.raises(ValueError, match="reset options"):
        venv.reset()
    venv.set_options(None)
    assert venv.reset().shape == (3, 3)


def test_env_is_wrapped_answers_as_for_a_monitor_wrapped_env():
    from stable_baselines3.common.monitor import Monitor

    class MyMonitor(Monitor):
        pass

    venv = SB3VecEnv(make_env("Pendulum-v1", num_envs=2))
    assert venv.env_is_wrapped(Monitor) == [True, True]
    assert venv.env_is_wrapped(gym.Wrapper) == [True, True]  # a Monitor is a gymnasium Wrapper
    assert venv.env_is_wrapped(MyMonitor) == [False, False]  # a subclass of Monitor is not there


def test_sb3_sac_trains_on_the_view_behind_vecnormalize():
    # off-policy SB3 through the view: replay stores terminal_observation rows, VecNormalize wraps it
    from stable_baselines3 import SAC
    from stable_baselines3.common.vec_env import VecNormalize

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        venv = VecNormalize(SB3VecEnv(make_env("Pendulum-v1", num_envs=2)), norm_reward=True)
        model = SAC("MlpPolicy", venv, learning_starts=100, batch_size=32, seed=0,
                    policy_kwargs={"net_arch": [16, 16]}).learn(400)
    finally:
        torch.set_num_threads(threads)
    assert model.num_timesteps == 400 and model.replay_buffer.size() == 200  # 2 envs x 200 steps
    assert venv.obs_rms.count > 400 and np.isfinite(venv.obs_rms.mean).all()
