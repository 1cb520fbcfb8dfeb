"""The Isaac-style adapter against an environment written to the rsl_rl VecEnv conventions."""

import json

import pytest
import torch

from envs import make_env
from envs.isaac import INSTALL_HINT, IsaacAdapter
from robo_rl.train import train
from tests.envs.isaac_style_env import PointReach
from tests.helpers import FAST, compose


@pytest.mark.parametrize("legged_gym_style", [False, True])
def test_contract_time_outs_and_final_obs(legged_gym_style):
    env = IsaacAdapter(PointReach(num_envs=8, max_episode_length=5, legged_gym_style=legged_gym_style))
    assert env.action_space.shape == (2,) and env.action_space.high[0] == 1.0  # from cfg.normalization.clip_actions
    obs = env.reset(seed=0)
    assert obs.shape == (8, 4)
    for _ in range(5):
        before = obs
        obs, rew, term, trunc, info = env.step(torch.zeros(8, 2))
    assert trunc.all() and not term.any()  # a 5-step limit: time-outs, not terminations
    assert torch.equal(info["final_obs"], before) and info["final_obs_is_previous"]
    assert info["episode"]["mask"].all() and (info["episode"]["length"] == 5).all()
    assert info["observations"]["critic"].shape == (8, 6)


def test_leaving_the_arena_is_a_termination():
    env = IsaacAdapter(PointReach(num_envs=4, max_episode_length=1000))
    env.reset(seed=0)
    for _ in range(30):
        _, _, term, trunc, _ = env.step(torch.ones(4, 2))
        if term.any():
            break
    assert term.any() and not trunc.any()


def test_bad_envs_and_missing_isaac_lab_are_explained():
    with pytest.raises(TypeError, match="does not follow the rsl_rl VecEnv API"):
        IsaacAdapter(object())
    with pytest.raises(ImportError, match="Isaac Lab is not installed"):
        make_env("Isaac-Velocity-Flat-Anymal-C-v0", 4, backend="isaac")
    assert "IsaacAdapter" in INSTALL_HINT


def test_ppo_learns_through_the_adapter(tmp_path):
    # exclusive: a second instance in the process raises, as in Isaac Lab; evaluations (three here, two of
    # them mid-run) then run on the training envs, which restart their episodes after each
    cfg = compose("algo=ppo", "env.backend=isaac", "env.id=tests.envs.isaac_style_env:make", "env.num_envs=64",
                  "env.kwargs.exclusive=true", "steps=60000", "eval.every=20000", "eval.episodes=8",
                  "env.normalize_reward=false", *FAST)
    summary = train(cfg, tmp_path / "run")
    # measured: ~90 (reaches the target and stays, full 100-step episodes); a random policy scores ~5
    assert summary["final_eval_return_mean"] > 60
    assert "allows one simulator per process: evaluations run on the 64 training envs" in (tmp_path / "run" / "train.log").read_text()
    assert "eval/return_mean" in (tmp_path / "run" / "metrics.csv").read_text()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["env"] == "tests.envs.isaac_style_env:make"
