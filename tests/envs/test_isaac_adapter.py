"""The Isaac-style adapter against environments written to the rsl_rl VecEnv conventions (and rsl_rl's own)."""

import importlib.util
import json
import warnings

import pytest
import torch

from envs import make_env
from envs.isaac import INSTALL_HINT, IsaacAdapter, make_isaac_env
from robo_rl.train import train
from tests.envs.isaac_style_env import make
from tests.helpers import FAST, compose


def _check_contract(env: IsaacAdapter) -> None:
    """8 envs, 5-step episodes: time-outs (not terminations), final_obs, episodes, the critic group."""
    assert env.action_space.shape == (2,) and env.action_space.high[0] == 1.0  # from the env's clip_actions
    obs = env.reset(seed=0)
    assert obs.shape == (8, 4) and obs.dtype == torch.float32
    kept = []
    for _ in range(5):
        before = obs
        obs, rew, term, trunc, info = env.step(torch.full((8, 2), 0.3))
        kept.append(rew)
    assert rew.shape == (8,) and rew.dtype == torch.float32 and term.dtype == torch.bool
    # the env rewrites one reward buffer in place: each step's reward must keep its value (replay, demonstrations)
    assert torch.allclose(torch.stack(kept).sum(0), info["episode"]["return"]) and not torch.equal(kept[0], kept[-1])
    assert trunc.all() and not term.any()  # a 5-step limit: time-outs, not terminations
    # the env rewrote its observation buffer in place: final_obs must still be the one before the step
    assert torch.equal(info["final_obs"], before) and not torch.equal(before, obs) and info["final_obs_is_previous"]
    assert info["episode"]["mask"].all() and (info["episode"]["length"] == 5).all()
    assert info["observations"]["critic"].shape == (8, 6)
    assert "/reach/mean_dist" in info["log"]


@pytest.mark.parametrize("api", ["rsl_rl", "isaac_lab", "rsl_rl2", "legged_gym"])
def test_contract_time_outs_and_final_obs(api):
    _check_contract(IsaacAdapter(make(num_envs=8, max_episode_length=5, api=api)))


def test_legged_gym_time_outs_count_only_on_the_step_they_are_written():
    """legged_gym writes extras["time_outs"] in reset_idx, which returns early when no env resets (LeggedRobot): on the
    steps after a time-out, extras still holds that step's mask. Only envs done on this step time out."""
    env = IsaacAdapter(make(num_envs=4, max_episode_length=5, api="legged_gym"))
    env.reset(seed=0)  # legged_gym's reset takes a zero-action step: episode_length_buf starts at 1
    for _ in range(5):
        result = env.step(torch.zeros(4, 2))
    assert result.truncated.all() and not result.terminated.any()  # 1 + 5 > max_episode_length
    result = env.step(torch.zeros(4, 2))
    assert env.env.extras["time_outs"].all()  # stale: no env reset on this step
    assert not result.truncated.any() and not result.terminated.any() and not result.info["episode"]["mask"].any()


def test_isaac_lab_wrapper_period_and_finite_horizon_tasks():
    """RslRlVecEnvWrapper has no dt (the control period is unwrapped.step_dt), and sends extras["time_outs"] only for
    infinite-horizon tasks (cfg.is_finite_horizon false): a finite-horizon task's time limit is a termination."""
    assert IsaacAdapter(make(num_envs=4, api="isaac_lab")).dt == 0.05
    finite = IsaacAdapter(make(num_envs=4, max_episode_length=3, api="isaac_lab", finite_horizon=True))
    finite.reset(seed=0)
    for _ in range(3):
        result = finite.step(torch.zeros(4, 2))
    assert result.terminated.all() and not result.truncated.any()


def test_leaving_the_arena_is_a_termination():
    env = IsaacAdapter(make(num_envs=4, max_episode_length=1000))
    env.reset(seed=0)
    for _ in range(30):
        _, _, term, trunc, _ = env.step(torch.ones(4, 2))
        if term.any():
            break
    assert term.any() and not trunc.any()


@pytest.mark.parametrize("api", ["rsl_rl", "isaac_lab", "rsl_rl2", "legged_gym"])
def test_step_before_the_first_reset_is_refused(api):
    # as on every backend (envs/base.py), though these envs start their episodes when built
    env = IsaacAdapter(make(num_envs=4, api=api), task_id="PointReach")
    with pytest.raises(RuntimeError, match=r"PointReach: step\(\) before the first reset\(\); call env.reset"):
        env.step(torch.zeros(4, 2))
    env.reset(seed=0)
    assert env.step(torch.zeros(4, 2)).obs.shape == (4, 4)


def test_every_method_after_close_names_the_task():
    # as on every backend (envs/base.py): state_dict returned None and render said the backend cannot draw, as if open
    env = IsaacAdapter(make(num_envs=4, api="rsl_rl2"), task_id="PointReach")
    env.reset(seed=0)
    env.close()
    for call in (lambda: env.reset(seed=0), lambda: env.step(torch.zeros(4, 2)), env.state_dict,
                 lambda: env.load_state_dict({}), env.render):
        with pytest.raises(RuntimeError, match="PointReach: this env was closed; make a new one"):
            call()


def test_reset_restarts_episodes_or_never_reports_partial_ones():
    # Isaac Lab's wrapper has no reset(): the adapter resets the gymnasium env it holds (with the seed)
    lab = IsaacAdapter(make(num_envs=4, max_episode_length=5, api="isaac_lab"))
    lab.reset(seed=0)
    for _ in range(2):
        lab.step(torch.zeros(4, 2))
    first = lab.reset(seed=7)
    assert (lab.env.episode_length_buf == 0).all()
    assert torch.equal(first, IsaacAdapter(make(num_envs=4, api="isaac_lab")).reset(seed=7))
    # a bare rsl_rl >= 3 VecEnv cannot restart: the episodes under way finish uncounted, later ones count in full
    bare = IsaacAdapter(make(num_envs=4, max_episode_length=5))
    bare.reset(seed=0)
    for _ in range(2):
        bare.step(torch.zeros(4, 2))
    bare.reset(seed=7)
    masks, lengths = [], []
    for _ in range(8):
        info = bare.step(torch.zeros(4, 2)).info
        masks.append(bool(info["episode"]["mask"].any()))
        lengths += info["episode"]["length"][info["episode"]["mask"]].tolist()
    assert masks == [False] * 7 + [True] and lengths == [5] * 4  # ends at step 3 unreported; at step 8 reported


def test_observation_groups():
    env = IsaacAdapter(make(num_envs=4), obs_groups=["policy", "critic"])  # rsl_rl's obs_groups["actor"]
    assert env.observation_space.shape == (10,) and env.reset(seed=0).shape == (4, 10)
    assert env.step(torch.zeros(4, 2)).obs.shape == (4, 10)
    with pytest.raises(ValueError, match=r"groups \['height_scan'\] not found; the env has \['policy', 'critic'\]"):
        IsaacAdapter(make(num_envs=4), obs_groups=["height_scan"])
    image = make(num_envs=4)
    image._groups = lambda: {"camera": torch.zeros(4, 3, 8, 8)}
    with pytest.raises(ValueError, match="include neither 'actor' nor 'policy'"):
        IsaacAdapter(image)
    with pytest.raises(ValueError, match=r"'camera' is \(4, 3, 8, 8\), not a flat \[num_envs, dim\] tensor"):
        IsaacAdapter(image, obs_groups=["camera"])


def test_bad_envs_and_missing_isaac_lab_are_explained():
    with pytest.raises(TypeError, match="does not follow the rsl_rl VecEnv API.*RslRlVecEnvWrapper"):
        IsaacAdapter(object())
    unbounded = make(num_envs=4)
    unbounded.cfg = {}
    with pytest.raises(ValueError, match="action bound is unknown.*env.kwargs.action_limit"):
        IsaacAdapter(unbounded)
    assert IsaacAdapter(unbounded, action_limit=0.5).action_space.high[0] == 0.5
    # every package Isaac Lab's start-up imports is named, before the simulator app would start
    missing = [name for name in ("isaaclab", "isaaclab_tasks", "isaaclab_rl") if importlib.util.find_spec(name) is None]
    assert missing  # Isaac Lab is not installable here
    with pytest.raises(ImportError, match=f"needs {', '.join(missing)}, not installed. Isaac Lab is not installed"):
        make_env("Isaac-Velocity-Flat-Anymal-C-v0", 4, backend="isaac")
    assert "IsaacAdapter" in INSTALL_HINT


@pytest.mark.parametrize("wrapper", ["2.0", "2.1"])
def test_isaac_lab_task_ids_start_as_documented(monkeypatch, wrapper):
    """AppLauncher, then the task registry, parse_env_cfg, gym.make and RslRlVecEnvWrapper (here stand-ins). Isaac Lab
    2.0's wrapper takes only the env (clip_actions came in 2.1): it was handed clip_actions= and raised a TypeError
    once the simulator had started. robo-rl's learners clip to env.kwargs.action_limit themselves."""
    import sys

    from tests.envs.isaac_style_env import FAKE_TASK, RslRlVecEnvWrapper20, RslRlVecEnvWrapper21, fake_isaac_lab

    launched = []
    wrapper_class = {"2.0": RslRlVecEnvWrapper20, "2.1": RslRlVecEnvWrapper21}[wrapper]
    for name, module in fake_isaac_lab(wrapper_class, launched).items():
        monkeypatch.setitem(sys.modules, name, module)
    env = make_env(FAKE_TASK, 4, backend="isaac", kwargs={"action_limit": 0.5})
    assert launched == [{"headless": True, "device": "cpu"}]
    assert env.action_space.high[0] == 0.5 and env.dt == 0.05 and env.observation_space.shape == (4,)
    assert getattr(env.env, "clip_actions", None) == {"2.0": None, "2.1": 0.5}[wrapper]
    env.reset(seed=0)
    for _ in range(5):
        result = env.step(torch.full((4, 2), 0.5))
    assert result.truncated.all() and sorted(result.info["observations"]) == ["critic", "policy"]


def test_action_limit_within_the_envs_own_clip():
    """The env clips actions itself (legged_gym: cfg.normalization.clip_actions): a wider declared bound would let
    the policy act beyond it without effect; a narrower one is the policy's own range."""
    with pytest.raises(ValueError, match=r"action_limit=2 exceeds .* \(clip_actions=1\).*at most 1"):
        IsaacAdapter(make(num_envs=4, api="legged_gym"), action_limit=2.0)
    assert IsaacAdapter(make(num_envs=4, api="legged_gym"), action_limit=0.5).action_space.high[0] == 0.5


def test_env_on_another_device_is_refused():
    """robo-rl keeps the env and the learner on one device (device=): an env a factory built elsewhere is named, not
    handed to a learner on another device (a device-mismatch traceback deep in the first forward pass)."""
    env = make(num_envs=4)  # on the CPU
    with pytest.raises(ValueError, match="the env runs on cpu, but robo-rl was asked to run on meta"):
        IsaacAdapter(env, device="meta")
    assert IsaacAdapter(env, device="cpu").device == torch.device("cpu")


def _needs_rsl_rl(major: int) -> None:
    """rsl-rl-lib >= major, a test dependency (the [test] extra): missing or older fails, it does not skip."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("rsl-rl-lib")
    except PackageNotFoundError:
        pytest.fail("rsl-rl-lib is not installed: pip install -e '.[test]'")
    assert int(installed.split(".")[0]) >= major, f"needs rsl-rl-lib >= {major}, found {installed}"


def test_rsl_rl_vec_env():
    """The adapter on rsl_rl's real VecEnv base class (rsl_rl >= 3: TensorDict observations, no reset)."""
    _needs_rsl_rl(3)
    from rsl_rl.env import VecEnv
    from tensordict import TensorDict

    vec_env = make(num_envs=8, max_episode_length=5, api="vec_env")
    assert isinstance(vec_env, VecEnv) and isinstance(vec_env.get_observations(), TensorDict)
    _check_contract(IsaacAdapter(vec_env))
    env = make_isaac_env("tests.envs.isaac_style_env:make", 8, "cpu", {"api": "vec_env", "obs_groups": ["policy", "critic"]})
    assert isinstance(env.env, VecEnv) and env.reset(seed=0).shape == (8, 10)


def test_a_time_limit_the_isaac_backend_cannot_apply_is_refused(tmp_path):
    # env.max_episode_steps was dropped on the way to the adapter: episodes kept the task's own length, silently
    with pytest.raises(ValueError, match="env.max_episode_steps=3: env.backend=isaac keeps the task's own episode length"):
        make_env("tests.envs.isaac_style_env:make", 8, backend="isaac", max_episode_steps=3)
    cfg = compose("algo=ppo", "env.backend=isaac", "env.id=tests.envs.isaac_style_env:make", "env.num_envs=8",
                  "env.max_episode_steps=3", "env.normalize_reward=false", *FAST)
    with pytest.raises(ValueError, match="env.max_episode_steps=3: env.backend=isaac"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_older_isaac_run_with_a_time_limit_in_its_config_is_evaluated_and_resumed(tmp_path, monkeypatch):
    # its config.yaml holds the env.max_episode_steps the run ignored: eval, load_run and a resume failed on it
    import robo_rl.train
    import robo_rl.validation
    from robo_rl.commands.evaluate import eval_main
    from robo_rl.runs import load_run

    run = tmp_path / "run"
    with monkeypatch.context() as m:  # a run from before validate refused the key
        for module in (robo_rl.train, robo_rl.validation):
            m.setattr(module, "validate", lambda cfg: None)
        train(compose("algo=ppo", "env.backend=isaac", "env.id=tests.envs.isaac_style_env:make", "env.num_envs=8",
                      "env.max_episode_steps=3", "env.normalize_reward=false", "steps=128", "algo.rollout_steps=8",
                      "eval.episodes=2", *FAST), run)
    assert "max_episode_steps: 3" in (run / "config.yaml").read_text()
    assert eval_main([f"run_dir={run}", "episodes=2"]) == 0
    assert json.loads((run / "eval.json").read_text())["episodes"] == 2
    load_run(run)
    summary = train(compose(f"resume={run}", "steps=256"), run, [f"resume={run}", "steps=256"])
    assert summary["steps"] == 256 and summary["status"] == "completed"


def test_the_test_env_is_one_rsl_rl_trains_on():
    """rsl_rl's own PPO runner accepts the VecEnv test env (one short iteration, no logging; rsl_rl 5's config)."""
    _needs_rsl_rl(5)
    from rsl_rl.runners import OnPolicyRunner

    cfg = {"num_steps_per_env": 6, "save_interval": 100, "obs_groups": {"actor": ["policy"], "critic": ["critic"]},
           "algorithm": {"class_name": "PPO"}, "critic": {"class_name": "MLPModel", "hidden_dims": [8]},
           "actor": {"class_name": "MLPModel", "hidden_dims": [8], "distribution_cfg": {"class_name": "GaussianDistribution"}}}
    env = make(num_envs=8, max_episode_length=5, api="vec_env")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        OnPolicyRunner(env, cfg, log_dir=None, device="cpu").learn(1)
    assert (env.episode_length_buf < 6).all()  # 6 steps of 5-step episodes: every env restarted inside step


def test_ppo_learns_through_the_adapter(tmp_path):
    # the rsl_rl >= 3 convention (no reset) and exclusive: a second instance in the process raises, as in Isaac Lab;
    # evaluations (three here, two of them mid-run) then run on the training envs, counting only whole episodes
    cfg = compose("algo=ppo", "env.backend=isaac", "env.id=tests.envs.isaac_style_env:make", "env.num_envs=64",
                  "env.kwargs.exclusive=true", "steps=60000", "eval.every=20000", "eval.episodes=8",
                  "env.normalize_reward=false", *FAST)
    summary = train(cfg, tmp_path / "run")
    # measured: ~90 (reaches the target and stays, full 100-step episodes); a random policy scores ~5
    assert summary["final_eval_return_mean"] > 60
    assert ("allows one simulator per process: evaluations run on the 64 training envs (randomized as in training, if "
            "randomized), whose episodes carry on after each") in (tmp_path / "run" / "train.log").read_text()
    assert "eval/return_mean" in (tmp_path / "run" / "metrics.csv").read_text()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["env"] == "tests.envs.isaac_style_env:make"
    assert "fewer than the 100-step episodes" not in (tmp_path / "run" / "train.log").read_text()


def test_evaluations_more_often_than_an_episode_on_shared_envs_are_warned_about(tmp_path):
    # evaluations on the training envs cut their episodes: with 32 steps per env between them and 100-step episodes
    # the training return counted only short (failed) episodes, about 4 where evaluations scored about 90
    cfg = compose("algo=ppo", "env.backend=isaac", "env.id=tests.envs.isaac_style_env:make", "env.num_envs=8",
                  "steps=512", "eval.every=256", "eval.episodes=2", "algo.rollout_steps=32", "algo.minibatch_size=64",
                  *FAST)
    train(cfg, tmp_path / "run")
    assert ("evaluations every 256 steps are 32 steps per env, fewer than the 100-step episodes" in
            (tmp_path / "run" / "train.log").read_text())


def test_off_policy_replay_leaves_out_time_outs_whose_final_state_is_unknown(tmp_path):
    # these APIs return no terminal observation: final_obs is the state before the step, and a stored time-out
    # would be a transition back to it. 4 envs, 5-step episodes, 12 steps: the 8 time-outs are not stored.
    from omegaconf import open_dict

    from robo_rl.build import build_env_checked, build_learner, build_policy, build_runner
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import validate

    cfg = resolve_defaults(compose("algo=td3", "env.backend=isaac", "env.id=tests.envs.isaac_style_env:make",
                                   "env.num_envs=4", "env.kwargs.max_episode_length=5", "algo.learning_starts=1000",
                                   "steps=2000", *FAST))
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path)
    validate(cfg)
    env = build_env_checked(cfg)
    runner = build_runner(cfg, build_learner(cfg, build_policy(cfg, env)), env, env, tmp_path)
    runner.obs = env.reset(seed=0)
    for _ in range(12):
        runner.iterate()
    replay = runner.replay
    assert len(replay) == 40 and runner.step == 48
    assert not (replay.next_obs[:40] == replay.obs[:40]).all(1).any()  # no row leads back to its own state


def test_restarting_the_training_episodes_after_an_evaluation_restarts_the_reward_traces(tmp_path, monkeypatch):
    # the evaluation on the training envs ends their episodes: the reward normalizer's running discounted
    # returns must restart with them, not carry the interrupted episodes' into the new ones
    from robo_rl.runners.on_policy import OnPolicyRunner

    seen = []
    restarted = OnPolicyRunner.episodes_restarted

    def record(self):
        before = self.reward_norm.returns.copy()
        restarted(self)
        seen.append((before, self.reward_norm.returns.copy()))

    monkeypatch.setattr(OnPolicyRunner, "episodes_restarted", record)
    cfg = compose("algo=ppo", "env.backend=isaac", "env.id=tests.envs.isaac_style_env:make", "env.num_envs=8",
                  "env.kwargs.exclusive=true", "algo.rollout_steps=16", "algo.minibatch_size=64", "steps=512",
                  "eval.every=256", "eval.episodes=2", "env.normalize_reward=true", *FAST)
    train(cfg, tmp_path / "run")
    assert len(seen) == 2 and all(before.any() and not after.any() for before, after in seen)


def test_cuda_without_an_index_is_the_current_cuda_device(monkeypatch):
    """`cuda` is where torch puts tensors, the current CUDA device: an env on cuda with robo-rl on cuda:1 agreed
    whatever the current device was (the rule was "an index-less device matches any"), and the first forward pass
    failed across two GPUs. No GPU here: CUDA's availability and current device are simulated."""
    from envs.base import same_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert same_device("cuda", "cuda:0") and same_device("cuda:0", "cuda") and same_device("cuda", "cuda")
    assert not same_device("cuda", "cuda:1") and not same_device("cuda:1", "cuda") and not same_device("cuda", "cpu")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert same_device("cuda", "cuda:1") and not same_device("cuda", "cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no CUDA: nothing to resolve it to
    assert same_device("cuda", "cuda:1") and same_device("cpu", "cpu") and not same_device("cpu", "meta")
