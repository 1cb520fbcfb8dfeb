"""Demonstrations warm start (robo_rl/demos.py): file checks, pretraining every learner's head, replay preload."""

import numpy as np
import pytest
import torch

from envs import make_env
from envs.tasks.two_goals import expert_demos
from robo_rl.build import build_env, build_learner, build_policy
from robo_rl.checkpoint import latest_checkpoint, load_checkpoint
from robo_rl.defaults import resolve_defaults
from robo_rl.validation import ConfigError
from robo_rl.demos import DemoError, load_demos, pretrain, save_demos, warm_critics
from robo_rl.train import prepare, train
from tests.helpers import FAST, compose

LOW, HIGH = np.array([-1.0, -1.0], np.float32), np.array([1.0, 1.0], np.float32)


@pytest.fixture(scope="module")
def two_goals_demos(tmp_path_factory):
    return save_demos(tmp_path_factory.mktemp("demos") / "two_goals.npz", **expert_demos(100, seed=0))


def pendulum_demos(path, n=150, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, 3)).astype(np.float32)
    return save_demos(path, obs=obs, actions=rng.uniform(-2, 2, (n, 1)), rewards=-rng.random(n),
                      next_obs=obs + 0.1, terminated=np.zeros(n))


def test_expert_demos_are_symmetric_successes_and_round_trip(tmp_path, two_goals_demos):
    d = load_demos(two_goals_demos, 3, 2, LOW, HIGH, replay=True)
    ends = d["terminated"] > 0
    assert int(ends.sum()) == 100 and bool((d["rewards"][ends] == 1.0).all())  # every episode reaches a goal
    first = d["actions"][d["obs"][:, 2] == 1.0]
    assert first.shape[0] == 100
    assert abs(float(first[:, 1].mean())) < 1e-6 and float(first[:, 1].abs().min()) > 0.5  # two modes, mean 0
    assert set(d) == {"obs", "actions", "rewards", "next_obs", "terminated"}


@pytest.mark.parametrize("case, match", [
    ("missing", "no such file"),
    ("corrupt", "not a readable .npz"),
    ("no_actions", "missing array"),
    ("wrong_obs_dim", "observations have 4 dims"),
    ("nan", "NaN or Inf"),
    ("out_of_bounds", "outside the env's bounds"),
    ("no_rewards", "demos.replay=true needs rewards"),
    ("terminated_7", r"terminated must be 0/1 \(or bool\), found \[7.0\]"),
])
def test_bad_demonstration_files_are_named_and_explained(tmp_path, two_goals_demos, case, match):
    good = dict(np.load(two_goals_demos))
    path = tmp_path / "demos.npz"
    if case == "corrupt":
        path.write_bytes(two_goals_demos.read_bytes()[:200])
    elif case != "missing":
        arrays = dict(good)
        if case == "no_actions":
            del arrays["actions"]
        elif case == "wrong_obs_dim":
            arrays["obs"] = np.zeros((len(good["obs"]), 4), np.float32)
        elif case == "nan":
            arrays["rewards"][3] = np.nan
        elif case == "out_of_bounds":
            arrays["actions"][0] = 1.5
        elif case == "no_rewards":
            del arrays["rewards"]
        elif case == "terminated_7":  # (1 - terminated) would flip the sign of the bootstrap
            arrays["terminated"] = arrays["terminated"].astype(np.float32)
            arrays["terminated"][5] = 7.0
        np.savez(path, **arrays)
    with pytest.raises(DemoError, match=match) as exc:
        load_demos(path, 3, 2, LOW, HIGH, replay=True)
    assert str(path) in str(exc.value)


def _learner(*overrides):
    cfg = resolve_defaults(compose("env=two_goals", *overrides))
    env = build_env(cfg)
    learner = build_learner(cfg, build_policy(cfg, env))
    env.close()
    return learner


@pytest.mark.parametrize("overrides", [
    ("algo=sac",), ("algo=td3", "policy=deterministic"), ("algo=ppo", "policy=mixture"), ("algo=gorl",),
    ("algo=gorl_sac",), ("algo=expo", "policy=flow"), ("algo=parl", "policy=diffusion", "policy.train_steps=20"),
], ids=lambda o: "-".join(x.split("=")[1] for x in o))
def test_pretraining_fits_the_head_each_learner_imitates_with(two_goals_demos, overrides):
    learner = _learner(*overrides)
    d = load_demos(two_goals_demos, 3, 2, LOW, HIGH)
    others = {k: v.clone() for k, v in learner.state_dict().items()
              if not k.startswith(tuple(n for n, m in learner.named_children() if m is learner.demo_head()))}
    stats = pretrain(learner, d["obs"], d["actions"], steps=150, batch_size=128, lr=1e-3, seed=0)
    assert stats["loss_last"] < stats["loss_first"] - 0.05, stats
    algo = overrides[0].split("=")[1]
    if algo == "td3":  # the target actor starts as the pretrained actor
        for t, p in zip(learner.actor_target.parameters(), learner.policy.parameters()):
            assert torch.equal(t, p)
    if algo.startswith("gorl"):  # the latent policy restarts at the prior; only the decoder learned
        last = [m for m in learner.policy.latent.net if isinstance(m, torch.nn.Linear)][-1]
        assert not last.weight.any() and not last.bias.any()
    if algo == "expo":  # the edit policy and the critics are untouched
        for k, v in learner.state_dict().items():
            if k.startswith(("edit.", "critic.")):
                assert torch.equal(v, others[k]), k


def _success_from_start(head, episodes=50):
    env = make_env("robo_rl/TwoGoals-v0", num_envs=episodes)
    obs = env.reset(seed=1)
    success, done = torch.zeros(episodes, dtype=torch.bool), torch.zeros(episodes, dtype=torch.bool)
    with torch.no_grad():
        while not bool(done.all()):
            obs, reward, term, trunc, _ = env.step(head.act(obs, deterministic=True))
            new = (term | trunc) & ~done
            success |= new & (reward == 1.0)
            done |= new
    env.close()
    return float(success.float().mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_a_gaussian_fitted_to_bimodal_demonstrations_heads_into_the_obstacle_a_mixture_does_not(
        two_goals_demos, seed):
    """The multimodal task's premise, checked at the decision state: the demonstrations go around the
    obstacle on both sides; a Gaussian's mean averages the two first moves into the obstacle, a mixture's
    deterministic action is one of the modes (and it then reaches a goal). Closed loop, the Gaussian may
    still get away: once off the axis, the state tells it which side to take (see README)."""
    from envs.tasks.two_goals import OBSTACLE

    d = load_demos(two_goals_demos, 3, 2, LOW, HIGH)
    blocked = np.degrees(np.arcsin(OBSTACLE[1] / np.linalg.norm(OBSTACLE[0])))  # headings into the obstacle
    start = torch.tensor([[0.0, 0.0, 1.0]])
    heading = {}
    for head in ("gaussian", "mixture"):
        torch.manual_seed(seed)
        learner = _learner("algo=ppo", f"policy={head}", f"seed={seed}")
        pretrain(learner, d["obs"], d["actions"], steps=1500, batch_size=256, lr=1e-3, seed=seed)
        x, y = learner.policy.act(start, deterministic=True)[0].tolist()
        heading[head] = abs(np.degrees(np.arctan2(y, x)))
    assert heading["gaussian"] < blocked - 20 and heading["mixture"] > blocked + 10, (heading, blocked)
    assert _success_from_start(learner.policy) >= 0.9


SMALL_SAC = ("algo=sac", "env=pendulum", "algo.batch_size=64", "algo.critic_hidden=[32,32]",
             "policy.hidden_sizes=[32,32]", "eval.episodes=2", "eval.num_envs=2", *FAST)


def test_train_pretrains_preloads_replay_and_a_resume_does_neither(tmp_path):
    demos = pendulum_demos(tmp_path / "demos.npz")
    run = tmp_path / "run"
    summary = train(compose(*SMALL_SAC, f"demos.path={demos}", "demos.pretrain_steps=50", "steps=300",
                            "demos.critic_steps=30", "algo.learning_starts=100", "checkpoint.every=300",
                            "eval.every=300"), run)
    assert summary["steps"] == 300
    log_text = (run / "train.log").read_text()
    assert "demos: pretrained the gaussian head on 150 transitions for 50 steps" in log_text
    # SAC's head normalizes no observations here, so there are no statistics to keep (the log said there were)
    assert "observation statistics" not in log_text
    assert "demos: preloaded 150 transitions into the replay buffer" in log_text
    assert "demos: trained the critics on them for 30 updates before the first step" in log_text
    _, replay = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert replay["obs"].shape[0] == 150 + 300
    np.testing.assert_array_equal(replay["obs"][:150], np.load(demos)["obs"])
    demos.unlink()  # a resume takes everything from its checkpoint, the file is no longer needed
    train(compose(f"resume={run}", "steps=400"), tmp_path / "unused", [f"resume={run}", "steps=400"])
    assert (run / "train.log").read_text().count("demos: pretrained") == 1


@pytest.mark.parametrize("algo", ["sac", "td3", "expo", "parl", "gorl_sac"])
def test_critic_warmup_trains_only_the_critics(tmp_path, algo):
    # demos.critic_steps: TD updates of the critics on the preloaded demonstrations, before the first actor update
    # follows them; the policy, the update count (GoRL-SAC's refit schedule) and the temperature stay as they were
    from robo_rl.storage.replay import ReplayBuffer

    cfg, _ = prepare(compose(f"algo={algo}", "env=pendulum", "algo.critic_hidden=[16,16]", "algo.batch_size=32"),
                     tmp_path / "run")
    env = build_env(cfg)
    learner = build_learner(cfg, build_policy(cfg, env))
    replay = ReplayBuffer(300, env.obs_dim, env.act_dim, torch.device("cpu"))
    demos = np.load(pendulum_demos(tmp_path / "d.npz"))
    replay.add(*(torch.as_tensor(demos[k]) for k in ("obs", "actions", "rewards", "next_obs", "terminated")))
    state = {k: v.clone() for k, v in learner.state_dict().items()}
    stats = warm_critics(learner, replay, 20, 32)
    changed = {k for k, v in learner.state_dict().items() if not torch.equal(v, state[k])}
    assert stats["critic_steps"] == 20 and np.isfinite(stats["critic_loss_last"])
    # (EXPO's and PA-RL's acting policies hold the same critics: policy.critic.*)
    assert changed and all({"critic", "critic_target"} & set(k.split(".")) for k in changed), sorted(changed)
    assert any(k.startswith("critic_target.") for k in changed)  # the Polyak step


def test_bad_demos_settings_fail_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="demos.path"):
        train(compose(*SMALL_SAC, f"demos.path={tmp_path / 'nope.npz'}", "steps=100"), tmp_path / "a")
    # a blank one (an unset shell variable) was "a directory, not a .npz file": Path("") is "."
    with pytest.raises(ConfigError, match=r"demos.path=: blank \(an unset shell variable\?\)"):
        train(compose(*SMALL_SAC, "demos.path=", "steps=100"), tmp_path / "a")
    with pytest.raises(ConfigError, match="demos.pretrain_steps"):
        train(compose(*SMALL_SAC, f"demos.path={pendulum_demos(tmp_path / 'd.npz')}", "demos.pretrain_steps=-1",
                      "steps=100"), tmp_path / "a")
    wrong = save_demos(tmp_path / "w.npz", obs=np.zeros((5, 4)), actions=np.zeros((5, 1)))
    with pytest.raises(DemoError, match="observations have 4 dims"):
        train(compose(*SMALL_SAC, f"demos.path={wrong}", "steps=100"), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    # on-policy learners only pretrain: obs and actions suffice
    only = save_demos(tmp_path / "o.npz", obs=np.zeros((5, 3)), actions=np.zeros((5, 1)))
    train(compose("algo=ppo", "env=pendulum", "env.num_envs=2", "algo.rollout_steps=32", "algo.minibatch_size=32",
                  "algo.epochs=1", "eval.episodes=1", "eval.num_envs=1", *FAST, f"demos.path={only}",
                  "demos.pretrain_steps=5", "steps=64"), tmp_path / "b")


@pytest.mark.parametrize("overrides, why", [
    (("algo=ppo",), "algo=ppo has no replay buffer to preload them into; set demos.pretrain_steps > 0"),
    (("algo=sac", "demos.replay=false"),
     "demos.replay=false preloads nothing; set demos.pretrain_steps > 0 or demos.replay=true"),
])
def test_demonstrations_nothing_uses_are_said_to_be_unused(tmp_path, overrides, why):
    # demos.pretrain_steps=0 without a replay preload read and checked the file, then ran a plain run, saying nothing
    import logging

    from robo_rl.demos import warm_start
    from robo_rl.metrics import LogFormatter

    demos_path = pendulum_demos(tmp_path / "d.npz")
    cfg, _ = prepare(compose(*overrides, "env=pendulum", f"demos.path={demos_path}", "demos.pretrain_steps=0"),
                     tmp_path / "run")
    env = build_env(cfg)
    learner = build_learner(cfg, build_policy(cfg, env))
    replay = None if learner.kind == "on_policy" else object()  # unused either way: nothing is preloaded
    demos = load_demos(demos_path, 3, 1, [-2.0], [2.0])
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("robo_rl").addHandler(handler)
    try:
        assert warm_start(cfg, learner, replay, demos) == {}
    finally:
        logging.getLogger("robo_rl").removeHandler(handler)
    said = (f"demos.path={demos_path} is not used: demos.pretrain_steps=0 pretrains nothing, and {why}, "
            "or leave out demos.path")
    assert [LogFormatter("%(message)s").format(r) for r in records] == [f"robo-rl: warning: {said}"]  # the console's line
    # the prefix is the formatter's alone: written into the message too, a user's own handler on the robo_rl logger
    # ("%(levelname)s: %(message)s") read "WARNING: robo-rl: warning: demos.path=..."
    assert [(r.levelno, r.getMessage()) for r in records] == [(logging.WARNING, said)]


@pytest.mark.parametrize("case, problem", [
    ("directory", "a directory, not a .npz file"),
    ("fifo", r"not a regular file \(a device, pipe or socket\)"),  # reading it would wait for a writer
    ("broken_link", r"a broken symbolic link \(to .*gone.npz\)"),
    ("missing", "no such file"),
])
def test_a_demos_path_that_is_no_file_is_named_for_what_it_is(tmp_path, case, problem):
    # each was "no such file" (a directory too: load_demos' own message for one came after the config check)
    import os

    path = tmp_path / "demos.npz"
    if case == "directory":
        path.mkdir()
    elif case == "fifo":
        os.mkfifo(path)
    elif case == "broken_link":
        path.symlink_to(tmp_path / "gone.npz")
    with pytest.raises(ConfigError, match=rf"demos.path={path}: {problem}$"):
        train(compose(*SMALL_SAC, f"demos.path={path}", "steps=100"), tmp_path / "run")
    with pytest.raises(DemoError, match=rf"demonstrations {path}: {problem} \(demos.path\)$"):
        load_demos(path, 3, 1, [-2.0], [2.0])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("pretrain_steps", [0, 5])
def test_a_policy_no_demonstrations_pretrained_is_warned_about_as_any_untrained_one(tmp_path, pretrain_steps):
    # demos.pretrain_steps=0 only preloads replay: the policy is as untrained as without demos.path, and a run
    # ending before algo.learning_starts never updates it; the warning was left out for any demos.path
    run = tmp_path / "run"
    train(compose(*SMALL_SAC, f"demos.path={pendulum_demos(tmp_path / 'd.npz')}", f"demos.pretrain_steps={pretrain_steps}",
                  "demos.critic_steps=0", "steps=20", "algo.learning_starts=100", "eval.episodes=1", "eval.num_envs=1",
                  "env.max_episode_steps=10"), run)
    warned = "steps=20 ends before algo.learning_starts=100, so the policy is never updated" in (run / "train.log").read_text()
    assert warned == (pretrain_steps == 0)


@pytest.mark.parametrize("freeze, pretrain_steps", [(True, 1), (False, 1), (True, 0)])
def test_a_warm_started_run_keeps_the_demonstrations_observation_statistics(tmp_path, two_goals_demos, freeze,
                                                                             pretrain_steps):
    """Updating the normalizer online shifts every input under the pretrained weights. Measured on
    TwoGoals: GoRL warm-started at ~0.97 episode return fell to -0.9 (crashing) within 16k steps with a
    learning rate of 1e-12, from the statistics' drift alone; frozen, it stays above 1."""
    run = tmp_path / "run"
    train(compose("algo=ppo", "env=two_goals", "env.num_envs=4", "algo.rollout_steps=32", "algo.minibatch_size=32",
                  "algo.epochs=1", "eval.episodes=1", "eval.num_envs=1", *FAST, "policy.normalize_obs=true",
                  f"demos.path={two_goals_demos}", f"demos.pretrain_steps={pretrain_steps}",
                  f"demos.freeze_obs_norm={freeze}",
                  "steps=256", "checkpoint.every=256"), run)
    kept = "its observation statistics stay those of the demonstrations (demos.freeze_obs_norm=true)"
    assert (kept in (run / "train.log").read_text()) == bool(freeze and pretrain_steps)
    state, _ = load_checkpoint(latest_checkpoint(run / "checkpoints"), load_replay=False)
    count = float(state["learner"]["modules"]["policy.obs_norm.stats.count"])
    demos_rows = len(np.load(two_goals_demos)["obs"])
    if freeze and pretrain_steps:
        assert count == pytest.approx(demos_rows, abs=1)  # only the demonstrations (plus the initial epsilon count)
    elif pretrain_steps:
        assert count > demos_rows + 200
    else:  # nothing was pretrained, so nothing is frozen: the statistics follow the run's own observations
        assert 200 < count < demos_rows


def test_frozen_statistics_of_a_dimension_the_demonstrations_never_moved_are_named(tmp_path, two_goals_demos):
    # a noiseless demonstrator (or a constant feature) leaves a dimension with ~0 std: frozen, it clips online inputs
    arrays = dict(np.load(two_goals_demos))
    arrays["obs"][:, 2] = 0.5
    arrays["next_obs"][:, 2] = 0.5
    demos = save_demos(tmp_path / "narrow.npz", **arrays)
    run = tmp_path / "run"
    train(compose("algo=ppo", "env=two_goals", "env.num_envs=4", "algo.rollout_steps=32", "algo.minibatch_size=32",
                  "algo.epochs=1", "eval.episodes=1", "eval.num_envs=1", *FAST, "policy.normalize_obs=true",
                  f"demos.path={demos}", "demos.pretrain_steps=5", "steps=128"), run)
    log_text = (run / "train.log").read_text()
    assert "demos: observation dimension(s) 2 (std 0) of" in log_text and "demos.freeze_obs_norm=false" in log_text


@pytest.mark.parametrize("key, value, match", [
    ("obs", 1e300, r"obs holds values beyond float32's range \(e.g. obs\[0, 1\] = 1e\+300"),
    ("rewards", 1e39, r"rewards holds values beyond float32's range \(e.g. rewards\[0\] = 1e\+39"),
    ("obs", 1 + 2j, "obs has complex dtype complex128, expected real numbers"),
])
def test_values_float32_cannot_hold_and_complex_arrays_are_refused(tmp_path, two_goals_demos, key, value, match):
    # finite in float64, so a NaN/Inf check in float64 passed them; as float32 they became inf (or lost a part)
    arrays = {k: v.astype(np.float64) for k, v in np.load(two_goals_demos).items()}
    arrays[key] = arrays[key].astype(type(value))
    arrays[key][(0, 1) if key == "obs" else 0] = value
    path = tmp_path / "demos.npz"
    np.savez(path, **arrays)
    with pytest.raises(DemoError, match=match) as exc:
        load_demos(path, 3, 2, LOW, HIGH, replay=True)
    assert str(path) in str(exc.value)
    with pytest.raises(DemoError, match=match):  # save_demos checks the values as given, before its own cast
        save_demos(tmp_path / "out.npz", **arrays)
    assert not (tmp_path / "out.npz").exists()


def test_a_plain_npy_file_is_named_even_renamed_to_npz(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros((5, 3), np.float32))
    (tmp_path / "plain.npy").rename(renamed := tmp_path / "plain_as.npz")
    np.save(tmp_path / "plain.npy", np.zeros((5, 3), np.float32))
    for path in (tmp_path / "plain.npy", renamed):
        with pytest.raises(DemoError, match=r"a single \.npy array \(float32, shape \(5, 3\)\), not an \.npz archive"):
            load_demos(path, 3, 1, LOW[:1], HIGH[:1])



def test_load_demos_checks_its_own_arguments(tmp_path, two_goals_demos):
    path = two_goals_demos
    with np.load(path) as data:
        obs_dim, act_dim = data["obs"].shape[1], data["actions"].shape[1]
    low, high = [-1.0] * act_dim, [1.0] * act_dim
    assert load_demos(path, obs_dim, act_dim, low, high)["actions"].shape[1] == act_dim  # plain lists work
    with pytest.raises(ValueError, match=rf"action_low and action_high must be {act_dim} numbers each"):
        load_demos(path, obs_dim, act_dim, low + [-1.0], high + [1.0])
    with pytest.raises(ValueError, match="with low <= high"):
        load_demos(path, obs_dim, act_dim, [float("nan")] * act_dim, high)  # NaN bounds skipped the bounds check
    with pytest.raises(TypeError, match="obs_dim must be a positive integer, got '4'"):
        load_demos(path, "4", act_dim, low, high)
    with pytest.raises(DemoError, match="a directory, not a .npz file"):
        load_demos(tmp_path, obs_dim, act_dim, low, high)

@pytest.fixture
def console(monkeypatch, capsys):
    """capsys for run_training's stderr; the console log handler train() adds writes to this test's stream and
    is dropped afterwards (a handler left bound to a closed capture stream would garble later tests' stderr)."""
    import logging

    logger = logging.getLogger("robo_rl")
    monkeypatch.setattr(logger, "handlers", [h for h in logger.handlers if not getattr(h, "_robo_rl", False)])
    return capsys


def test_bad_demo_files_fail_the_cli_before_the_run_dir_is_kept(tmp_path, console):
    from robo_rl.commands.train import run_training

    np.save(tmp_path / "plain.npy", np.zeros((5, 3), np.float32))
    big = save_demos(tmp_path / "big.npz", obs=np.zeros((5, 3)), actions=np.zeros((5, 1)), rewards=np.zeros(5),
                     next_obs=np.zeros((5, 3)), terminated=np.zeros(5))
    arrays = dict(np.load(big))
    arrays["rewards"] = np.full(5, 1e39)  # float64: fine there, inf in float32 replay
    np.savez(big, **arrays)
    for demos in (tmp_path / "plain.npy", big):
        run = tmp_path / "run"
        run.mkdir()  # as Hydra makes it before the job starts
        assert run_training(compose(*SMALL_SAC, f"demos.path={demos}", "steps=100"), run, []) == 2
        err = console.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"robo-rl: error: demonstrations {demos}: ") and not run.exists(), err


def test_a_pretraining_nan_is_one_line_with_exit_1(tmp_path, console):
    from robo_rl.commands.train import run_training

    run = tmp_path / "run"
    run.mkdir()  # as Hydra makes it before the job starts
    overrides = (*SMALL_SAC, f"demos.path={pendulum_demos(tmp_path / 'd.npz')}", "demos.pretrain_steps=20", "steps=100")
    code = run_training(compose(*overrides, "demos.lr=1e30"), run, [])
    err = console.readouterr().err
    assert code == 1 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("robo-rl: error: pretraining from demonstrations: the imitation loss became nan"), last
    assert "lower demos.lr (now 1e+30)" in last
    assert not run.exists()  # pretraining comes before config.yaml: nothing is left, the same run_dir can be used again
    assert run_training(compose(*overrides), run, []) == 0


def test_recording_demonstrations_keeps_each_step_s_batch_not_a_python_object_per_transition():
    # evaluate(record_transitions=True) (robo-rl eval demos_out=) kept a tuple of tensor views per env copy and step:
    # ~3.6 KB per Hopper transition (33x its numbers), 3.6 GB for a million; each step's batch is kept whole instead
    import tracemalloc

    from policies.heads.gaussian import GaussianHead
    from policies.normalizers import ObsNormalizer
    from robo_rl.evaluation import evaluate

    env = make_env("Pendulum-v1", num_envs=16, max_episode_steps=100)
    head = GaussianHead(env.obs_dim, env.action_space.low, env.action_space.high, ObsNormalizer(env.obs_dim), (8,))
    evaluate(head, env, 16, record_transitions=True, seed=0)  # (first-use allocations out of the count)
    tracemalloc.start()
    try:
        transitions = evaluate(head, env, 64, record_transitions=True, seed=0)["transitions"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert transitions["obs"].shape == (64 * 100, 3) and transitions["terminated"].shape == (64 * 100,)
    assert peak / (64 * 100) < 250  # Python bytes per transition at the peak: ~100 (a tuple of 5 views each: ~570)


def test_two_saves_of_one_demonstrations_file_at_once_leave_it_whole(tmp_path, monkeypatch):
    # two `robo-rl eval demos_out=d.npz` at once shared d.npz.tmp: one renamed the other's half-written file into
    # place (not a readable .npz) and the other failed, its temporary file renamed away
    real = np.savez
    first, second = np.full((200, 3), 1.0), np.full((2, 3), 2.0)

    def savez(f, **arrays):  # the second save runs while the first is half written
        if len(arrays["obs"]) != len(first):
            return real(f, **arrays)
        real(f, **arrays)
        size = f.tell()
        f.seek(size // 2)
        f.truncate()
        f.flush()
        save_demos(tmp_path / "d.npz", obs=second, actions=second[:, :1])
        f.seek(0)
        real(f, **arrays)

    monkeypatch.setattr(np, "savez", savez)
    save_demos(tmp_path / "d.npz", obs=first, actions=first[:, :1])
    monkeypatch.undo()
    with np.load(tmp_path / "d.npz") as saved:
        assert (saved["obs"] == first).all()  # the save that ended last, whole
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]  # no temporary file left


def test_save_demos_refuses_paths_it_cannot_write_and_leaves_no_temp_file(tmp_path, monkeypatch):
    obs, actions = np.zeros((5, 3)), np.zeros((5, 1))
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    for path, match in ((tmp_path / "adir", "is a directory"), (tmp_path / "afile" / "x.npz", "afile is a file"),
                        ("", "an empty path")):
        with pytest.raises(DemoError, match=match):
            save_demos(path, obs=obs, actions=actions)
    import os

    def full_disk(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", full_disk)  # a failure after the temp file is written
    with pytest.raises(DemoError, match=r"demonstrations .*d\.npz: cannot write the file \(No space left on device"):
        save_demos(tmp_path / "d.npz", obs=obs, actions=actions)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]  # no d.npz.tmp, nothing in adir
    assert not any((tmp_path / "adir").iterdir())


def test_save_demos_names_what_it_cannot_store(tmp_path):
    obs, actions = np.zeros((4, 3)), np.zeros((4, 1))
    with pytest.raises(TypeError, match="save_demos: path must name a .npz file"):
        save_demos(None, obs=obs, actions=actions)
    with pytest.raises(DemoError, match="obs is not an array of numbers"):
        save_demos(tmp_path / "d.npz", obs=[[0.0, 1.0], [0.0]], actions=actions)  # ragged rows
    with pytest.raises(DemoError, match=r"actions has dtype bool, expected numbers \(only terminated may be true/false\)"):
        save_demos(tmp_path / "d.npz", obs=obs, actions=np.zeros((4, 1), bool))
    save_demos(tmp_path / "d.npz", obs=obs, actions=actions, rewards=np.zeros(4), next_obs=obs,
               terminated=np.zeros(4, bool))  # a bool terminated flag is what it is
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


def test_a_pretraining_whose_last_step_diverges_stops_before_the_run_starts(tmp_path, console):
    # the loop checks each loss before its step, so the last step's result went unchecked: with one step at
    # demos.lr=1e30 the run started with a policy that acts NaN, wrote config.yaml and checkpoints of it (finite,
    # huge weights), and failed online on the critic loss of update 1 (or in the critic warm-up, blaming the rewards)
    from robo_rl.commands.train import run_training

    run = tmp_path / "run"
    run.mkdir()  # as Hydra makes it before the job starts
    overrides = (*SMALL_SAC, f"demos.path={pendulum_demos(tmp_path / 'd.npz')}", "demos.pretrain_steps=1",
                 "demos.critic_steps=0", "steps=300", "checkpoint.every=100")
    assert run_training(compose(*overrides, "demos.lr=1e30"), run, []) == 1
    last = console.readouterr().err.strip().splitlines()[-1]
    assert last == ("robo-rl: error: pretraining from demonstrations: the imitation loss became nan after the last "
                    "step (step 0); lower demos.lr (now 1e+30)"), last
    assert not run.exists()


def test_the_check_after_pretraining_draws_no_random_numbers(tmp_path):
    # the final loss is computed under a forked RNG: runs warm-started from demonstrations train as they did before it
    from policies import build_head

    rng = np.random.default_rng(0)
    obs = torch.as_tensor(rng.standard_normal((40, 3)), dtype=torch.float32)
    actions = torch.as_tensor(rng.uniform(-2, 2, (40, 1)), dtype=torch.float32)

    class Learner(torch.nn.Module):  # the parts of a learner pretrain() uses
        def __init__(self):
            super().__init__()
            self.head = build_head("flow", 3, np.full(1, -2.0), np.full(1, 2.0), hidden_sizes=(8,))  # draws in its loss

        def demo_head(self):
            return self.head

        def after_pretraining(self):
            pass

    learner = Learner()
    torch.manual_seed(0)
    pretrain(learner, obs, actions, steps=2, batch_size=16, lr=1e-3)
    after = torch.get_rng_state()
    torch.manual_seed(0)
    for _ in range(2):  # the loop's own draws: two losses on minibatches of 16
        learner.head.imitation_loss(obs[:16], actions[:16])
    assert torch.equal(after, torch.get_rng_state())


def test_a_diverging_cost_critic_stops_the_critic_warm_up(tmp_path, console):
    # Lagrangian SAC warms up its cost critics beside the reward critics, but only the reward critics' loss was
    # checked: costs of 1e20 gave an infinite cost critic loss, the log said the warm-up went well, and the run
    # wrote config.yaml and a checkpoint before failing online on the cost critic loss of update 1
    from robo_rl.commands.train import run_training

    rng = np.random.default_rng(0)
    n, obs = 40, rng.standard_normal((40, 10))
    demos = save_demos(tmp_path / "c.npz", obs=obs, actions=rng.uniform(-1, 1, (n, 2)), rewards=rng.random(n),
                       next_obs=obs + 0.1, terminated=np.zeros(n), costs=np.full(n, 1e20))
    run = tmp_path / "run"
    run.mkdir()
    overrides = ("algo=sac", "env=contact_maze", "safety.passivity_aware=true", "algo.batch_size=16",
                 "algo.critic_hidden=[16,16]", "policy.hidden_sizes=[16,16]", "algo.learning_starts=30",
                 "eval.episodes=1", "eval.num_envs=1", *FAST, "demos.pretrain_steps=5", "demos.critic_steps=5",
                 "steps=60", "checkpoint.every=20", f"demos.path={demos}")
    assert run_training(compose(*overrides), run, []) == 1
    last = console.readouterr().err.strip().splitlines()[-1]
    assert last == ("robo-rl: error: training the critics on the demonstrations: the cost critic loss became inf at "
                    "step 0; check the file's costs, or set demos.critic_steps=0"), last
    assert not run.exists()


def test_a_passivity_aware_run_preloads_the_demonstrations_costs_or_asks_for_them(tmp_path):
    """Lagrangian SAC's replay keeps each step's safety cost for its cost critic: a file without costs is refused
    before pretraining, naming the file and the fix (it failed after pretraining, with the replay buffer's own
    message); with them, they are preloaded beside the transitions."""
    rng = np.random.default_rng(0)
    n, obs = 40, rng.standard_normal((40, 10))
    arrays = dict(obs=obs, actions=rng.uniform(-1, 1, (n, 2)), rewards=rng.random(n), next_obs=obs + 0.1,
                  terminated=np.zeros(n))
    overrides = ("algo=sac", "env=contact_maze", "safety=passivity", "safety.passivity_aware=true",
                 "algo.batch_size=16", "algo.critic_hidden=[16,16]", "policy.hidden_sizes=[16,16]",
                 "algo.learning_starts=0", "eval.episodes=1", "eval.num_envs=1", *FAST, "demos.pretrain_steps=5",
                 "steps=20", "eval.every=20", "checkpoint.every=20")
    without = save_demos(tmp_path / "no_costs.npz", **arrays)
    with pytest.raises(DemoError, match=r"safety.passivity_aware=true keeps each step's safety cost in replay, and "
                                        r"the file has no costs \[T\]; .* or set demos.replay=false") as exc:
        train(compose(*overrides, f"demos.path={without}"), tmp_path / "a")
    # refused while the file is read, as a missing array is: no run directory (it held the lock file)
    assert str(without) in str(exc.value) and not (tmp_path / "a").exists()
    costs = rng.random(n)
    demos = save_demos(tmp_path / "costs.npz", **arrays, costs=costs)
    train(compose(*overrides, f"demos.path={demos}"), tmp_path / "b")
    _, replay = load_checkpoint(latest_checkpoint(tmp_path / "b" / "checkpoints"))
    np.testing.assert_allclose(replay["costs"][:n], costs.astype(np.float32))
    np.testing.assert_array_equal(replay["obs"][:n], obs.astype(np.float32))
    # `robo-rl eval demos_out=` of such a run records the costs too, so its file warm-starts the same kind of run
    from robo_rl.commands.evaluate import eval_main

    assert eval_main([f"run_dir={tmp_path / 'b'}", "episodes=1", "num_envs=1", f"demos_out={tmp_path / 'rec.npz'}"]) == 0
    recorded = np.load(tmp_path / "rec.npz")
    assert recorded["costs"].shape == recorded["rewards"].shape and np.isfinite(recorded["costs"]).all()
    train(compose(*overrides, f"demos.path={tmp_path / 'rec.npz'}"), tmp_path / "c")


@pytest.mark.parametrize("content", [b"\x80\x04\x95pickled", b"obs,actions\n0,0\n", b""],
                         ids=["pickle", "text", "empty"])
def test_a_file_that_is_no_npz_is_refused_without_advice_to_unpickle_it(tmp_path, content):
    # numpy takes any file that is neither a zip nor a .npy for a pickle, and its error suggests allow_pickle
    import pickle

    path = tmp_path / "demos.npz"
    path.write_bytes(pickle.dumps({"obs": np.zeros((3, 3))}) if content.startswith(b"\x80") else content)
    with pytest.raises(DemoError) as exc:
        load_demos(path, 3, 1, [-2.0], [2.0])
    message = str(exc.value)
    assert message.startswith(f"demonstrations {path}: not an .npz archive (")
    assert "never unpickled" in message and "allow_pickle" not in message and "pickle.load" not in message


def _npz_member(array, shape=None):
    """An .npy member's bytes; ``shape`` overrides the shape its header declares (the data stays ``array``'s)."""
    import io

    from numpy.lib import format as npy

    out = io.BytesIO()
    header = {"descr": npy.dtype_to_descr(array.dtype), "fortran_order": False, "shape": shape or array.shape}
    npy.write_array_header_1_0(out, header)
    out.write(array.tobytes())
    return out.getvalue()


@pytest.mark.parametrize("case, match", [
    # numpy allocates the declared size before reading: MemoryError (out of the run's "lower the buffers" advice)
    ("huge_header", r"obs's header declares shape \(1000000000000, 3\) of float32 \(11,175.9 GiB\), and the file "
                    r"holds 60 bytes of it: a damaged file"),
    # numpy's message named no array and suggested allow_pickle
    ("object_array", r"actions holds Python objects \(dtype object\), which only unpickling could read; "
                     "demonstrations are never unpickled"),
    # numpy hands a member that is no .npy back as bytes: an AttributeError ('bytes' object has no attribute 'ndim')
    ("not_npy", r"obs is not a readable numpy array \(EOF: reading magic string"),
])
def test_each_array_header_is_checked_before_its_data_is_read(tmp_path, case, match):
    import zipfile

    path = tmp_path / "demos.npz"
    obs, actions = np.zeros((5, 3), np.float32), np.zeros((5, 1), np.float32)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("obs.npy", {"huge_header": _npz_member(obs, (10**12, 3)), "not_npy": b"hello"}.get(
            case, _npz_member(obs)))
        if case == "object_array":
            np.save(member := tmp_path / "actions.npy", actions.astype(object), allow_pickle=True)
            archive.write(member, "actions.npy")
        else:
            archive.writestr("actions.npy", _npz_member(actions))
    with pytest.raises(DemoError, match=match) as exc:
        load_demos(path, 3, 1, [-2.0], [2.0])
    assert str(exc.value).startswith(f"demonstrations {path}: ") and "allow_pickle" not in str(exc.value)


def test_an_encrypted_archive_is_named(tmp_path):
    # zipfile raises RuntimeError ("password required"), which escaped as a traceback
    path = tmp_path / "demos.npz"
    np.savez(path, obs=np.zeros((5, 3), np.float32), actions=np.zeros((5, 1), np.float32))
    data = bytearray(path.read_bytes())
    for signature, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers' flag bit 0
        at = data.find(signature)
        while at >= 0:
            data[at + flags] |= 1
            at = data.find(signature, at + 4)
    path.write_bytes(data)
    with pytest.raises(DemoError, match=rf"demonstrations {path}: not a readable .npz file \(File .* is encrypted"):
        load_demos(path, 3, 1, [-2.0], [2.0])


def test_a_file_that_unpacks_beyond_the_memory_free_is_refused_unread(tmp_path, monkeypatch):
    # a zip bomb: 20 MB of zeros compress to ~20 kB; unpacked, the arrays would have to fit in memory
    import envs.resources

    path = tmp_path / "demos.npz"
    rows = 1_250_000
    np.savez_compressed(path, obs=np.zeros((rows, 3), np.float32), actions=np.zeros((rows, 1), np.float32))
    assert path.stat().st_size < 100_000
    monkeypatch.setattr(envs.resources, "host_memory", lambda: (2**30, 16 * 2**20))  # 16 MiB free
    with pytest.raises(DemoError, match=rf"demonstrations {path}: its arrays unpack to 19.1 MiB \(obs 14.3 MiB\), "
                                        r"more than the 16.0 MiB of memory free; use fewer transitions"):
        load_demos(path, 3, 1, [-2.0], [2.0])


@pytest.mark.parametrize("overrides", [("algo=td3",), ("algo=sac",), ("algo=ppo",)], ids=lambda o: o[0][5:])
def test_pretraining_reaches_actions_of_bounds_wider_than_one(tmp_path, overrides):
    # Pendulum's torque is in [-2, 2]: demonstrations in env units up to 1.6 are imitated there, not clipped to 1
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((1000, 3)).astype(np.float32)
    actions = 1.6 * np.tanh(obs[:, :1] + 0.5 * obs[:, 2:])
    path = save_demos(tmp_path / "d.npz", obs=obs, actions=actions)
    cfg = resolve_defaults(compose("env=pendulum", *overrides))
    env = build_env(cfg)
    learner = build_learner(cfg, build_policy(cfg, env))
    demos = load_demos(path, 3, 1, env.action_space.low, env.action_space.high)
    env.close()
    pretrain(learner, demos["obs"], demos["actions"], steps=800, batch_size=256, lr=1e-3)
    with torch.no_grad():
        act = learner.policy.act(demos["obs"][:300], deterministic=True).numpy()
    assert np.abs(act - actions[:300]).mean() < 0.1
    assert act.max() > 1.3 and act.min() < -1.3


def test_negative_costs_are_refused_for_a_passivity_aware_replay_only(tmp_path):
    # the Lagrangian learner bounds a cost >= 0, as the training env's SafetyLayer checks; a file's signed costs (an
    # injected_energy) went into its replay unchecked. A file read for anything else keeps them.
    rng = np.random.default_rng(0)
    n, obs = 6, rng.standard_normal((6, 3))
    costs = np.array([0.1, 0.0, -0.25, 0.3, 0.2, 0.0])
    path = save_demos(tmp_path / "signed.npz", obs=obs, actions=rng.uniform(-1, 1, (n, 2)), rewards=rng.random(n),
                      next_obs=obs + 0.1, terminated=np.zeros(n), costs=costs)
    low, high = -np.ones(2), np.ones(2)
    with pytest.raises(DemoError, match=r"signed.npz: costs holds negative values \(e.g. costs\[2\] = -0.25\); "
                                        r"safety.passivity_aware=true bounds a per-step cost >= 0"):
        load_demos(path, 3, 2, low, high, replay=True, costs=True)
    loaded = load_demos(path, 3, 2, low, high, replay=True)
    np.testing.assert_array_equal(loaded["costs"].numpy(), costs.astype(np.float32))


@pytest.mark.parametrize("algo", ["td3", "parl-diffusion", "ppo-mixture"])
def test_a_run_warm_started_from_demos_resumes_exactly_after_an_interrupt(tmp_path, monkeypatch, algo):
    # pretraining (and the off-policy learners' replay preload and critic warm-up) happen once, before the first
    # step; the interrupted run's checkpoint holds their result, so the resumed run (the file gone) ends
    # bit-identical to one never interrupted: TD3's target actor copied from the pretrained actor, a diffusion
    # head's denoiser, PPO's mixture with the demonstrations' frozen observation statistics
    from robo_rl.runners.stopping import Interrupted
    from tests.robo_rl.test_training import final_weights, interrupt_at_update, logged_metrics, resumed_at

    if algo == "ppo-mixture":
        from robo_rl.learners.ppo import PPO as cls

        common = ("algo=ppo", "policy=mixture", "env=pendulum", "env.num_envs=4", "algo.rollout_steps=32",
                  "algo.minibatch_size=32", "algo.epochs=2", "steps=512", "checkpoint.every=256", "log.every=64")
        stop_at = 3
    else:
        from robo_rl.learners.parl import PARL
        from robo_rl.learners.td3 import TD3

        cls = TD3 if algo == "td3" else PARL
        head = () if algo == "td3" else ("policy=diffusion", "policy.inference_steps=2", "policy.train_steps=20")
        common = (f"algo={algo.split('-')[0]}", *head, "env=pendulum", "algo.batch_size=64",
                  "algo.critic_hidden=[32,32]", "policy.hidden_sizes=[32,32]", "algo.learning_starts=100", "steps=300",
                  "demos.critic_steps=20", "checkpoint.every=150", "log.every=50")
        stop_at = 77
    common = (*common, f"demos.path={pendulum_demos(tmp_path / 'demos.npz')}", "demos.pretrain_steps=30",
              "eval.every=300", "eval.episodes=1", "eval.num_envs=1", *FAST)
    train(compose(*common), tmp_path / "full")
    restore = interrupt_at_update(monkeypatch, cls, stop_at)
    with pytest.raises(Interrupted):
        train(compose(*common), tmp_path / "cut")
    restore()
    (tmp_path / "demos.npz").unlink()
    cut = tmp_path / "cut"
    train(compose(f"resume={cut}"), tmp_path / "unused", [f"resume={cut}"])
    assert resumed_at(cut) > 0 and (cut / "train.log").read_text().count("demos: pretrained") == 1
    (full_w, full_opt), (cut_w, cut_opt) = final_weights(tmp_path / "full"), final_weights(cut)
    assert full_w.keys() == cut_w.keys()
    for k in full_w:
        assert torch.equal(full_w[k], cut_w[k]), f"{k} differs"
    for name, opt in full_opt.items():  # the Adam moments too
        for p, state in opt["state"].items():
            for key, value in state.items():
                assert torch.equal(value, cut_opt[name]["state"][p][key]), f"{name} {p} {key} differs"
    assert logged_metrics(cut) == logged_metrics(tmp_path / "full")
