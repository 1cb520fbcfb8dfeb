"""Unusual but legitimate spaces, end to end: asymmetric action bounds reach the task within [low, high] for every
learner, replay stores what the task executed, critics see unit-scale actions; spaces robo-rl cannot learn on are
refused before any run file exists, with one line that says what to do.

The tasks are registered when this module is imported, reached with gymnasium's ``module:Id`` convention as a
user's own package would be (README, Your own tasks)."""

from __future__ import annotations

from collections import defaultdict

import gymnasium as gym
import numpy as np
import pytest
import torch

from envs import make_env
from robo_rl.train import compose_config, train

MODULE = __name__  # tests.robo_rl.test_spaces


class _Recorder(gym.Env):
    """Records every action it is stepped with (per registration name); reward -(a - target)^2 if a target is set."""

    received: dict[str, list[np.ndarray]] = defaultdict(list)

    def __init__(self, name, low=(-1.0,), high=(1.0,), action_space=None, observation_space=None, target=None):
        self.name = name
        self.action_space = action_space or gym.spaces.Box(np.array(low, np.float32), np.array(high, np.float32))
        self.observation_space = observation_space or gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.target = None if target is None else np.asarray(target, np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:  # reset does not seed the space's own RNG: seed it so that a run repeats
            self.observation_space.seed(int(seed))
        return self.observation_space.sample(), {}

    def step(self, action):
        if isinstance(action, dict):  # a Dict action space: check the parts arrived with their own shapes
            assert {k: np.shape(v) for k, v in action.items()} == {k: s.shape for k, s in self.action_space.items()}
            action = np.concatenate([np.ravel(v) for v in action.values()])
        a = np.array(action, dtype=np.float64).reshape(-1)
        _Recorder.received[self.name].append(a)
        reward = 0.0 if self.target is None else -float(np.sum((a - self.target) ** 2))
        return self.observation_space.sample(), reward, False, False, {}


ASYM_LOW, ASYM_HIGH = np.array([-1.0, 0.0]), np.array([2.0, 5.0])
_TASKS = {
    "Asym-v0": dict(low=ASYM_LOW, high=ASYM_HIGH),
    "AsymLearn-v0": dict(low=ASYM_LOW, high=ASYM_HIGH, target=[1.5, 4.5]),
    "AsymOdd-v0": dict(low=[0.1, -0.3], high=[2.7, 0.7]),  # from_unit(+-1) rounds outside in float32
    "FixedDim-v0": dict(low=[-1.0, 0.5], high=[1.0, 0.5]),
    # float64 bounds float32 has no number for: float32(-0.1) is below -0.1, float32(0.3) above 0.3
    "AsymF64-v0": dict(action_space=gym.spaces.Box(np.array([-0.1, 0.0]), np.array([0.3, 3.0]), dtype=np.float64)),
    "TooWide-v0": dict(low=[-3e38], high=[3e38]),
    "DiscreteAct-v0": dict(action_space=gym.spaces.Discrete(3)),
    "MultiDiscreteAct-v0": dict(action_space=gym.spaces.MultiDiscrete([3, 4])),
    "DictAct-v0": dict(action_space=gym.spaces.Dict({"arm": gym.spaces.Box(-1, 1, (2,), np.float32),
                                                      "grip": gym.spaces.Box(0, 1, (1,), np.float32)})),
    "TupleAct-v0": dict(action_space=gym.spaces.Tuple((gym.spaces.Box(-1, 1, (2,), np.float32),))),
    "ImageObs-v0": dict(observation_space=gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)),
    "LongUnbounded-v0": dict(low=[-np.inf] + [-1.0] * 29, high=[np.inf] + [1.0] * 29),
    "HugeObs-v0": dict(observation_space=gym.spaces.Box(-1e6, 1e6, (3,), np.float32)),
}
for _name, _kwargs in _TASKS.items():
    if f"robo_rl_test/{_name}" not in gym.registry:
        gym.register(f"robo_rl_test/{_name}", entry_point=_Recorder, max_episode_steps=10,
                     kwargs={"name": _name, **_kwargs})


def _flatten_dict_action():
    env = gym.make("robo_rl_test/DictAct-v0")
    return gym.wrappers.TransformAction(env, lambda a: gym.spaces.unflatten(env.action_space, a),
                                        gym.spaces.flatten_space(env.action_space))


def _drop_fixed_dim():
    env = gym.make("robo_rl_test/FixedDim-v0")
    return gym.wrappers.TransformAction(env, lambda a: np.insert(a, 1, 0.5), gym.spaces.Box(-1.0, 1.0, (1,), np.float32))


for _entry in (_flatten_dict_action, _drop_fixed_dim):
    if f"robo_rl_test/Wrapped{_entry.__name__}-v0" not in gym.registry:
        gym.register(f"robo_rl_test/Wrapped{_entry.__name__}-v0", entry_point=_entry, max_episode_steps=10)


def _task(name: str) -> str:
    return f"{MODULE}:robo_rl_test/{name}"


@pytest.mark.parametrize("task, says", [
    ("DiscreteAct-v0", r"action space is Discrete .*need a Box action space: for discrete actions use .*TransformAction"),
    ("MultiDiscreteAct-v0", r"action space is MultiDiscrete .*for discrete actions use"),
    ("DictAct-v0", r"action space is Dict .*flatten it: gymnasium\.wrappers\.TransformAction\(env, lambda a: "
                   r"gymnasium\.spaces\.unflatten"),
    ("TupleAct-v0", r"action space is Tuple .*flatten it"),
    ("ImageObs-v0", r"observation space .*\(8, 8, 3\), uint8\) is an image; .*MLPs on a flat state vector: give the task a state observation"),
    # used to pass the env check and fail in the head with "action bounds must be finite with high > low, got
    # low=tensor([-1.0000,  0.5000]) ..." after the env was built
    ("FixedDim-v0", r".* has low == high in action dimension\(s\) \[1\] .*TransformAction\(env, lambda a: np\.insert"),
    # used to be accepted: a half-range of inf in float32 turned every action into inf/NaN, reported as diverged weights
    ("TooWide-v0", r".* is wider than float32 can hold .*dimension\(s\) \[0\]"),
])
def test_spaces_robo_rl_cannot_learn_on_are_refused_in_one_line_saying_what_to_do(task, says):
    with pytest.raises(ValueError, match=f"robo_rl_test/{task}: {says}") as err:
        make_env(f"robo_rl_test/{task}")
    assert "\n" not in str(err.value)


def test_the_unbounded_action_message_stays_on_one_line_for_a_long_box():
    # numpy wraps the bounds of a 30-dim Box over several lines; the message used to carry them
    with pytest.raises(ValueError, match="infinite bounds.*TransformAction") as err:
        make_env("robo_rl_test/LongUnbounded-v0")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("wrapped, act_dim", [("Wrapped_flatten_dict_action-v0", 3), ("Wrapped_drop_fixed_dim-v0", 1)])
def test_the_wrappers_the_refusals_suggest_make_the_task_usable(wrapped, act_dim):
    env = make_env(f"robo_rl_test/{wrapped}", num_envs=2)
    assert env.act_dim == act_dim
    env.reset(seed=0)
    env.step(torch.zeros(2, act_dim))
    env.close()


def test_training_on_a_refused_space_fails_before_writing_the_run(tmp_path):
    with pytest.raises(ValueError, match="low == high in action dimension"):
        train(compose_config(["algo=sac", f"env.id={_task('FixedDim-v0')}", "env.backend=gymnasium"]), tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def _short(algo: str, head: str, task: str, tmp_path, extra=()) -> tuple[dict, object]:
    """A few hundred steps of ``algo`` on ``task``; returns the summary and the runner (to read its replay)."""
    import robo_rl.train as T

    overrides = [f"algo={algo}", f"policy={head}", f"env.id={_task(task)}", "env.backend=gymnasium", "seed=0",
                 "eval.episodes=2", "checkpoint.every=100000", "log.plot=false", "log.tensorboard=false", "threads=1"]
    if algo in ("ppo", "gorl"):
        overrides += ["steps=200", "env.num_envs=2", "algo.rollout_steps=50", "algo.minibatch_size=50",
                      "algo.epochs=1", "eval.every=200", "policy.hidden_sizes=[16,16]"]
    else:
        overrides += ["steps=200", "algo.learning_starts=100", "algo.batch_size=16", "env.num_envs=1", "eval.every=200",
                      "algo.critic_hidden=[16,16]",
                      "policy.hidden_sizes=[16,16,16]" if head in ("flow", "diffusion") else "policy.hidden_sizes=[16,16]"]
    if head == "latent":
        overrides.append("policy.decoder_hidden=[16,16,16]")
    runners = []
    build = T.build_runner

    def keep(*args, **kwargs):
        runners.append(build(*args, **kwargs))
        return runners[-1]

    T.build_runner = keep
    try:
        summary = train(compose_config([*overrides, *extra]), tmp_path / f"{algo}-{head}")
    finally:
        T.build_runner = build
    return summary, runners[0]


@pytest.mark.parametrize("algo, head", [("sac", "gaussian"), ("td3", "deterministic"), ("ppo", "gaussian"),
                                        ("ppo", "mixture"), ("gorl", "latent"), ("gorl_sac", "latent"),
                                        ("expo", "flow"), ("parl", "diffusion")])
def test_asymmetric_bounds_every_action_the_task_gets_is_inside_them(algo, head, tmp_path):
    _Recorder.received.clear()
    summary, runner = _short(algo, head, "Asym-v0", tmp_path)
    assert summary["status"] == "completed"
    actions = np.stack(_Recorder.received["Asym-v0"])  # training, the probe step and the evaluation
    assert len(actions) >= 200
    assert (actions >= ASYM_LOW - 1e-6).all() and (actions <= ASYM_HIGH + 1e-6).all()
    replay = getattr(runner, "replay", None)
    if replay is not None:
        stored = replay.actions[:len(replay)].numpy().astype(np.float64)
        executed = actions[2:2 + len(stored)]  # after the probe step of the 2 evaluation envs (build.check_env_runs)
        # replay holds the executed actions in env units: the critics map them to [-1, 1] themselves
        np.testing.assert_allclose(stored, executed, atol=1e-6)
        warmup = stored[:100]  # uniform over the box before learning starts
        span = ASYM_HIGH - ASYM_LOW
        assert ((warmup.min(0) - ASYM_LOW) / span < 0.1).all() and ((ASYM_HIGH - warmup.max(0)) / span < 0.1).all()


@pytest.mark.parametrize("algo, head", [("sac", "gaussian"), ("td3", "deterministic")])
def test_off_policy_training_actions_are_inside_a_box_whose_bounds_float32_rounds(algo, head, tmp_path):
    # random actions at u = +-1 and saturated tanh actions map to 0.0999999 on [0.1, 2.7]: one float32 step outside
    _, runner = _short(algo, head, "AsymOdd-v0", tmp_path)
    with torch.no_grad():  # a policy saturated at the lower bound: tanh gives exactly -1
        last = [m for m in runner.policy.net if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_(), last.bias.fill_(-100.0)
    from robo_rl.runners.safety import SafetyLayer

    runner.env = SafetyLayer(make_env(_task("AsymOdd-v0"), 1, backend="gymnasium"), [], None)  # (train closed its own)
    runner.obs = runner.env.reset(seed=0)
    _Recorder.received.clear()
    runner.iterate()
    action = _Recorder.received["AsymOdd-v0"][-1]
    low, high = np.float32([0.1, -0.3]).astype(np.float64), np.float32([2.7, 0.7]).astype(np.float64)
    assert (action >= low).all() and (action <= high).all() and action[0] == low[0]
    runner.env.close()


@pytest.mark.parametrize("head", ["gaussian", "deterministic", "mixture"])
def test_evaluation_actions_are_inside_a_box_whose_bounds_float32_rounds(head):
    # the evaluation (and robo-rl eval, and demos it records) acts with the head's deterministic action, which
    # saturated at the lower bound was 0.0999999 on [0.1, 2.7]: one float32 step outside, as training's once was
    from policies import build_head
    from robo_rl.evaluation import evaluate

    low, high = np.float32([0.1, -0.3]).astype(np.float64), np.float32([2.7, 0.7]).astype(np.float64)
    env = make_env(_task("AsymOdd-v0"), 1, backend="gymnasium")
    policy = build_head(head, env.obs_dim, env.action_space.low, env.action_space.high, hidden_sizes=(8,))
    with torch.no_grad():  # saturated at the lower bound: tanh gives exactly -1
        last = [m for m in policy.net if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_(), last.bias.fill_(-100.0)
    _Recorder.received.clear()
    result = evaluate(policy, env, 1, seed=0, record_transitions=True)
    env.close()
    actions = np.stack(_Recorder.received["AsymOdd-v0"])
    assert (actions >= low).all() and (actions <= high).all() and (actions[:, 0] == low[0]).all()
    recorded = result["transitions"]["actions"].numpy().astype(np.float64)  # what a demos file would hold
    assert (recorded >= low).all() and (recorded <= high).all()


@pytest.mark.parametrize("algo, head", [("ppo", "gaussian"), ("td3", "deterministic"), ("sac", "gaussian")])
def test_actions_are_inside_a_float64_box_whose_bounds_float32_has_no_number_for(algo, head, tmp_path):
    # the head's bounds were float32's nearest numbers, 0.30000001 for 0.3: PPO's clipped Gaussian actions reached
    # the task as 0.30000001192092896, outside its own Box (a task checking action_space.contains stopped training);
    # they are now rounded into the box, and so are the export's
    _Recorder.received.clear()
    summary, runner = _short(algo, head, "AsymF64-v0", tmp_path)
    assert summary["status"] == "completed"
    low, high = np.array([-0.1, 0.0]), np.array([0.3, 3.0])
    head_low, head_high = runner.policy.action_low.double().numpy(), runner.policy.action_high.double().numpy()
    assert (head_low >= low).all() and (head_high <= high).all()
    np.testing.assert_allclose(head_low, low, atol=1e-7), np.testing.assert_allclose(head_high, high, atol=1e-7)
    actions = np.stack(_Recorder.received["AsymF64-v0"])
    assert (actions >= low).all() and (actions <= high).all()
    with torch.no_grad():  # saturated at both bounds
        assert (runner.policy.clip_action(torch.tensor([[-5.0, -5.0], [5.0, 5.0]])).double().numpy()
                == np.stack([head_low, head_high])).all()


def test_gorl_training_actions_are_inside_a_box_whose_bounds_float32_rounds():
    # GoRL's env actions are its decoder's, mapped from the unit box: saturated, 0.0999999 on [0.1, 2.7]
    from policies import build_head
    from robo_rl.learners.gorl import GoRL

    low, high = np.float32([0.1, -0.3]), np.float32([2.7, 0.7])
    head = build_head("latent", 3, low.astype(np.float64), high.astype(np.float64), hidden_sizes=(8,),
                      decoder_hidden=(8, 8, 8))
    learner = GoRL(head, refit_epochs=0, reset_latent=False)
    with torch.no_grad():  # a decoder saturated at the lower bound
        last = [m for m in head.decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_(), last.bias.fill_(-100.0)
    obs = torch.randn(16, 3)
    actions = learner.env_action(obs, learner.act(obs)[0]).numpy()
    assert (actions >= low).all() and (actions <= high).all() and (actions[:, 0] == low[0]).all()


@pytest.mark.parametrize("fused", ["off", "on"])
def test_td3_target_smoothing_and_exploration_stay_inside_asymmetric_bounds(fused, monkeypatch):
    from policies import build_head
    from robo_rl.learners.base import Batch
    from robo_rl.learners.td3 import TD3

    torch.manual_seed(0)
    head = build_head("deterministic", 3, ASYM_LOW, ASYM_HIGH, hidden_sizes=(16, 16))
    with torch.no_grad():  # the actor (and its target copy) saturate at the upper bound
        last = [m for m in head.net if isinstance(m, torch.nn.Linear)][-1]
        last.bias.fill_(20.0)
    td3 = TD3(head, target_noise=0.5, target_noise_clip=1.0, exploration_noise=1.0, critic_hidden=(16, 16),
              fused=fused)
    seen = []  # the target critics' actions
    if fused == "off":
        td3.critic_target.register_forward_hook(lambda m, args, out: seen.append(args[1].detach().clone()))
    else:  # the fused step (offpolicy_fused.py) runs the target critics' layers on [obs, action] itself
        step = td3._fused_step
        forward = step._critic_forward

        def spy(layers, x, members=None):
            if layers is step.critic_target:
                seen.append(x[:, 3:].clone())
            return forward(layers, x, members)

        monkeypatch.setattr(step, "_critic_forward", spy)
    obs = torch.randn(512, 3)
    batch = Batch(obs, head.from_unit(torch.rand(512, 2) * 2 - 1), torch.zeros(512), obs, torch.zeros(512))
    td3.update(batch)
    unit = torch.cat(seen)
    assert unit.min() >= -1.0 and unit.max() <= 1.0  # the critic sees unit scale, clipped at the box
    env_units = head.from_unit(unit)
    assert bool((env_units >= torch.tensor(ASYM_LOW, dtype=torch.float32) - 1e-5).all())
    assert bool((env_units <= torch.tensor(ASYM_HIGH, dtype=torch.float32) + 1e-5).all())
    explored = td3.explore(obs)
    assert bool((explored >= torch.tensor(ASYM_LOW, dtype=torch.float32)).all())
    assert bool((explored <= torch.tensor(ASYM_HIGH, dtype=torch.float32)).all())
    assert (explored[:, 1] > 4.99).float().mean() > 0.4  # noise clipped at the upper bound, where the actor sits


def test_sac_learns_an_optimum_near_the_upper_bound_of_an_asymmetric_box(tmp_path):
    # reward -(a0 - 1.5)^2 - (a1 - 4.5)^2 on [-1, 2] x [0, 5]: random actions score about -78 per 10-step episode
    summary, _ = _short("sac", "gaussian", "AsymLearn-v0", tmp_path,
                        ["steps=1500", "algo.learning_starts=300", "eval.every=1500", "algo.batch_size=64",
                         "algo.critic_hidden=[64,64]", "policy.hidden_sizes=[64,64]"])
    assert summary["final_eval_return_mean"] > -5.0


def test_ppo_learns_an_optimum_near_the_upper_bound_of_an_asymmetric_box(tmp_path):
    # PPO's unsquashed Gaussian over the box's unit scale starts in the box's middle; over env units (N(0, 1) at
    # a = 0, a corner of this box) the same run ended at -201, worse than random actions (about -78)
    summary, _ = _short("ppo", "gaussian", "AsymLearn-v0", tmp_path,
                        ["steps=5120", "env.num_envs=4", "algo.rollout_steps=64", "algo.minibatch_size=64",
                         "algo.epochs=10", "eval.every=5120", "policy.hidden_sizes=[64,64]"])
    assert summary["final_eval_return_mean"] > -10.0


def test_runs_saved_before_unit_actions_keep_acting_in_env_units(tmp_path):
    # a PPO run whose config.yaml predates policy.unit_actions was trained with its Gaussian over env units:
    # eval, export and resume must rebuild that head, not today's default
    import yaml

    from robo_rl.runs import load_run_config

    _short("ppo", "gaussian", "Asym-v0", tmp_path)
    run = tmp_path / "ppo-gaussian"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["policy"]["unit_actions"] is True and load_run_config(run).policy.unit_actions is True
    del saved["policy"]["unit_actions"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert load_run_config(run).policy.unit_actions is False
    # and so does the config its checkpoints record (eval and export refuse a config.yaml edited since)
    import json

    from robo_rl.checkpoint import list_checkpoints
    from tests.helpers import rewrite_consistently

    for checkpoint in list_checkpoints(run / "checkpoints"):
        state = json.loads((checkpoint / "state.json").read_text())
        del state["config"]["policy"]["unit_actions"]
        rewrite_consistently(checkpoint, "state.json", json.dumps(state))
    # the head the commands rebuild acts with a = mu (clipped), not middle + half-width * mu, and exports so
    from robo_rl.runs import load_run
    from sim2real.export import export_policy

    old, _ = load_run(run)
    obs = torch.randn(64, 3)
    mean, _ = old.distribution(obs)
    assert old.unit_actions is False
    torch.testing.assert_close(old.act(obs, deterministic=True), old.clip_action(mean))
    export_policy(old, tmp_path / "export", "torchscript")
    exported = torch.jit.load(str(tmp_path / "export" / "policy.pt"))
    torch.testing.assert_close(exported(obs), old.act(obs, deterministic=True))
    saved["policy"]["squash"] = True  # a squashed head never had an env-unit Gaussian
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert load_run_config(run).policy.unit_actions is True


@pytest.mark.parametrize("normalize", [False, True])
def test_raw_observations_of_huge_magnitude_are_warned_about(normalize, tmp_path):
    # inputs of ~1e6 overflowed EXPO's and PA-RL's optimizer moments within 300 steps, and the NaN message then
    # suggested a lower learning rate; off-policy heads do not normalize observations by default
    summary, _ = _short("sac", "gaussian", "HugeObs-v0", tmp_path, [f"policy.normalize_obs={str(normalize).lower()}"])
    warned = "set policy.normalize_obs=true" in (tmp_path / "sac-gaussian" / "train.log").read_text()
    assert summary["status"] == "completed" and warned == (not normalize)
