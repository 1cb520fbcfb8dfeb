"""The batched-env contract on the gymnasium backend."""

import json
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from envs import make_env
from envs.base import MissingDependency
from tests.helpers import NaNAfter, robo_rl_records


def test_shapes_dtypes_and_spaces():
    env = make_env("Hopper-v5", num_envs=3)
    obs = env.reset(seed=0)
    assert obs.shape == (3, 11) and obs.dtype == torch.float32
    obs, rew, term, trunc, info = env.step(torch.zeros(3, 3))
    assert rew.shape == (3,) and rew.dtype == torch.float32
    assert term.dtype == torch.bool and trunc.dtype == torch.bool
    assert info["final_obs"].shape == (3, 11)
    assert env.action_space.shape == (3,) and np.all(np.isfinite(env.action_space.low))
    env.close()


def test_seeding_is_reproducible_and_distinct_per_env():
    a, b = make_env("Hopper-v5", 2), make_env("Hopper-v5", 2)
    oa, ob = a.reset(seed=7), b.reset(seed=7)
    assert torch.equal(oa, ob)
    assert not torch.equal(oa[0], oa[1])  # env i is seeded with seed + i


def test_truncation_hands_back_final_obs_and_resets():
    # Pendulum never terminates; a 3-step limit truncates every 3rd step
    env = make_env("Pendulum-v1", num_envs=2, max_episode_steps=3)
    ref = gym.make("Pendulum-v1", max_episode_steps=3)
    env.reset(seed=0)
    ref_obs, _ = ref.reset(seed=0)
    actions = torch.tensor([[0.5], [-0.5]])
    for t in range(3):
        obs, rew, term, trunc, info = env.step(actions)
        ref_obs, ref_rew, ref_term, ref_trunc, _ = ref.step(np.array([0.5], np.float32))
    assert trunc.tolist() == [True, True] and term.tolist() == [False, False]
    # final_obs is where env 0 ended, exactly as a plain gymnasium env reports it
    np.testing.assert_allclose(info["final_obs"][0].numpy(), ref_obs, rtol=0, atol=0)
    # and obs is already the first observation of the next episode
    assert not torch.equal(obs[0], info["final_obs"][0])
    assert info["episode"]["mask"].tolist() == [True, True]
    assert info["episode"]["length"].tolist() == [3, 3]


def test_termination_is_not_truncation():
    env = make_env("InvertedPendulum-v5", num_envs=1)
    env.reset(seed=0)
    for _ in range(200):  # a constant push topples the pole: a terminal state, not a time limit
        obs, rew, term, trunc, info = env.step(torch.ones(1, 1) * 3.0)
        if term.any():
            break
    assert bool(term[0]) and not bool(trunc[0])
    # v5 pays 1 per step the pole stays up and 0 on the terminal step
    assert info["episode"]["mask"][0] and info["episode"]["return"][0] == info["episode"]["length"][0] - 1


def test_final_obs_equals_obs_where_nothing_ended():
    env = make_env("Hopper-v5", 2)
    env.reset(seed=1)
    obs, _, term, trunc, info = env.step(torch.zeros(2, 3))
    done = term | trunc
    assert torch.equal(info["final_obs"][~done], obs[~done])


@pytest.mark.parametrize("bad, msg", [
    (torch.zeros(2, 4), "shape"),
    (torch.zeros(3, 3), "shape"),
    (torch.tensor([[0.0, float("nan"), 0.0], [0.0, 0.0, 0.0]]), "non-finite"),
    (torch.tensor([[0.0, 1e300, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64), "non-finite"),  # inf as float32
])
def test_bad_actions_are_refused(bad, msg):
    env = make_env("Hopper-v5", 2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=msg):
        env.step(bad)


@pytest.mark.parametrize("backend", ["gymnasium", "mujoco"])
def test_a_cuda_device_this_machine_lacks_is_refused_before_anything_is_built(monkeypatch, backend):
    # device=cuda:7 on a one-GPU machine passed make_env's device check: the simulators were built (gymnasium's
    # workers, MuJoCo's batch) and the first tensor failed on the ordinal. A one-GPU machine is simulated here (no
    # GPU on the test machine); nothing may be built before the check
    import envs.gymnasium_backend
    import envs.mujoco

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for module, cls in ((envs.gymnasium_backend, "GymnasiumBatchedEnv"), (envs.mujoco, "MujocoBatchedEnv")):
        monkeypatch.setattr(module, cls, None)
    with pytest.raises(ValueError, match=r"^Hopper-v5: device=cuda:7: this machine has 1 CUDA device\(s\) "
                                         r"\(cuda:0..cuda:0\)$"):
        make_env("Hopper-v5", backend=backend, device="cuda:7")


def test_unknown_task_suggests_close_ids():
    with pytest.raises(ValueError, match="did you mean Hopper-v5"):
        make_env("Hoper-v5")


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_module_colon_id_imports_the_module_that_registers_the_task(vectorization):
    # gymnasium's own convention: a user's package of tasks, imported by nothing else, works by name
    task = "robo_rl_test/RegisteredOnImport-v0"
    env = make_env(f"tests.envs.registers_on_import:{task}", num_envs=2, backend="auto", vectorization=vectorization)
    try:
        assert env.backend == "gymnasium" and task in gym.registry
        obs = env.reset(seed=0)
        assert obs.shape == (2, 2) and env.step(torch.zeros(2, 1)).reward.shape == (2,)
    finally:
        env.close()


def test_async_warns_when_it_starts_more_workers_than_cpus(monkeypatch):
    import logging

    monkeypatch.setattr("envs.gymnasium_backend.usable_cpus", lambda: 1)  # the CPUs this process may use
    # to the robo_rl logger's handlers (the console and train.log under robo-rl): its "envs.gymnasium_backend"
    # logger came bare on stderr, and not in train.log
    with robo_rl_records(logging.WARNING) as records:
        make_env("Pendulum-v1", num_envs=2, vectorization="async").close()
        make_env("Pendulum-v1", num_envs=1, vectorization="async").close()
    assert [r.getMessage() for r in records] == [
        "Pendulum-v1: env.vectorization=async starts one worker process per env, 2 on 1 CPU(s); workers beyond the "
        "CPU count only add switching. Fewer envs, env.vectorization=sync, or env.backend=mujoco (threads, for the "
        "MuJoCo tasks it covers) step faster"]


def test_module_colon_id_errors_say_what_is_missing():
    with pytest.raises(ValueError, match="cannot import 'no_such_package_xyz'.*PYTHONPATH"):
        make_env("no_such_package_xyz:Thing-v0")
    with pytest.raises(ValueError, match="env.id=tests.helpers:Hoper-v5: unknown gymnasium task id 'Hoper-v5' \\(after importing 'tests.helpers'\\); "
                                         "did you mean Hopper-v5"):
        make_env("tests.helpers:Hoper-v5")


def test_a_module_colon_id_whose_module_fails_as_it_runs_names_the_module(tmp_path, monkeypatch):
    (tmp_path / "robo_rl_test_unclosed.py").write_text("import gymnasium\nx = (\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"^env.id=robo_rl_test_unclosed:Arm-v0: importing 'robo_rl_test_unclosed', the "
                                         r"module that should register 'Arm-v0', failed: SyntaxError: '\(' was never closed"):
        make_env("robo_rl_test_unclosed:Arm-v0")


def _needs_a_missing_package(**_):
    raise gym.error.DependencyNotInstalled("FooSim is not installed, run `pip install foosim`")


gym.register("robo_rl_test/NeedsFooSim-v0", entry_point=_needs_a_missing_package)


def test_a_task_whose_dependency_is_missing_says_so():
    with pytest.raises(MissingDependency, match="NeedsFooSim-v0 needs a package that is not installed: .*pip install foosim"):
        make_env("robo_rl_test/NeedsFooSim-v0")


def _imports_a_missing_package(**_):
    import no_such_simulator_xyz  # noqa: F401  (as gymnasium's phys2d tasks import jax)


def _needs_an_older_simulator(**_):  # as gymnasium's Hopper-v3 (mujoco-py) and Pusher-v4 (mujoco<3)
    raise ImportError("`OldSim-v0` is only supported on `foosim<3`")


gym.register("robo_rl_test/ImportsAMissingPackage-v0", entry_point=_imports_a_missing_package)
gym.register("robo_rl_test/OldSim-v0", entry_point=_needs_an_older_simulator)
gym.register("robo_rl_test/OldSim-v1", entry_point=_needs_an_older_simulator)
gym.register("robo_rl_test/OldSim-v2", entry_point="gymnasium.envs.classic_control.pendulum:PendulumEnv")


@pytest.mark.parametrize("task, says", [
    ("robo_rl_test/ImportsAMissingPackage-v0", "ModuleNotFoundError: No module named 'no_such_simulator_xyz'$"),
    ("robo_rl_test/OldSim-v0", "ImportError: `OldSim-v0` is only supported on `foosim<3`; try robo_rl_test/OldSim-v2, "
                               "the task's newest version$"),
])
def test_a_task_whose_own_import_fails_is_a_missing_dependency_naming_it(task, says):
    # a plain ImportError from the task's entry point (gymnasium's v2/v3 MuJoCo ids, Pusher-v4, the jax tasks) was
    # not a MissingDependency: `robo-rl train` ended in a traceback (exit 1) naming neither the id nor a remedy
    with pytest.raises(MissingDependency, match=f"^{task} cannot be built here, it needs a package that is not installed "
                                                f"\\(or another version of one\\): {says}"):
        make_env(task)


class _DrawsWithAMissingPackage(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}

    def render(self):
        raise gym.error.DependencyNotInstalled("pygame is not installed, run `pip install pygame`")


gym.register("robo_rl_test/DrawsWithAMissingPackage-v0", entry_point=_DrawsWithAMissingPackage, max_episode_steps=5)


def test_drawing_frames_without_the_task_s_renderer_says_which_package():
    env = make_env("robo_rl_test/DrawsWithAMissingPackage-v0", render=True)
    env.reset(seed=0)
    with pytest.raises(MissingDependency, match="DrawsWithAMissingPackage-v0: drawing frames needs .*pip install pygame"):
        env.render(0)


class _CannotDraw(_DrawsWithAMissingPackage):
    metadata = {"render_modes": [], "render_fps": 30}


gym.register("robo_rl_test/CannotDraw-v0", entry_point=_CannotDraw, max_episode_steps=5)


def test_a_video_of_a_task_that_cannot_draw_is_refused_when_the_env_is_built():
    # it crashed with gymnasium's NotImplementedError at the first frame, after the episodes had started
    with pytest.raises(ValueError, match=r"CannotDraw-v0 cannot draw frames: its render modes are \[\], .*'rgb_array'"):
        make_env("robo_rl_test/CannotDraw-v0", render=True)
    make_env("robo_rl_test/CannotDraw-v0").close()  # without a video it is a task like any other


def test_bad_kwargs_name_the_task():
    with pytest.raises(ValueError, match="Hopper-v5: bad env kwargs"):
        make_env("Hopper-v5", kwargs={"no_such_option": 1})


def _checks_its_gain(gain=1.0):
    if gain <= 0:
        raise ValueError(f"gain must be > 0, got {gain}")
    return gym.make("Pendulum-v1").unwrapped


gym.register("robo_rl_test/ChecksItsGain-v0", entry_point=_checks_its_gain, max_episode_steps=5)


def test_a_task_s_own_refusal_of_its_kwargs_names_the_task_and_the_kwargs():
    # the task's ValueError came out as it was: `robo-rl train` printed "error: gain must be > 0, got -1" (gymnasium's
    # MuJoCo tasks: "Both `camera_id` and `camera_name` cannot be specified at the same time."), naming neither
    with pytest.raises(ValueError, match=r"^robo_rl_test/ChecksItsGain-v0 with env kwargs \{'gain': -1\} could not be "
                                         r"built: gain must be > 0, got -1$"):
        make_env("robo_rl_test/ChecksItsGain-v0", kwargs={"gain": -1})


def test_discrete_tasks_are_refused():
    with pytest.raises(ValueError, match="Box action space"):
        make_env("CartPole-v1")


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_snapshot_restores_simulation_exactly(vectorization):
    a = make_env("Hopper-v5", 2)
    a.reset(seed=3)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a.step(torch.rand(2, 3, generator=g) * 2 - 1)
    snap = a.state_dict()
    b = make_env("Hopper-v5", 2, vectorization=vectorization)
    b.reset(seed=99)
    b.load_state_dict(snap)
    for _ in range(60):  # through falls and resets: the reset RNG is restored too
        act = torch.rand(2, 3, generator=g) * 2 - 1
        ra, rb = a.step(act), b.step(act)
        assert torch.equal(ra.obs, rb.obs) and torch.equal(ra.reward, rb.reward)
        assert torch.equal(ra.terminated, rb.terminated)
    b.close()


@pytest.mark.parametrize("task", ["Ant-v5", "Humanoid-v5"])
def test_snapshot_restores_what_the_task_reads_before_its_step(task):
    # Ant's reward reads the torso's xpos, Humanoid's its centre of mass (xipos), before stepping: after mj_step they
    # are one substep behind the state. A restore that recomputed them at the restored state gave the first step's
    # velocity reward another displacement, so a resumed Ant or Humanoid run on this backend parted from the unbroken one
    a = make_env(task, 2)
    a.reset(seed=3)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        a.step(torch.rand(2, a.act_dim, generator=g) * 0.8 - 0.4)
    snap = a.state_dict()
    b = make_env(task, 2)
    b.load_state_dict(snap)
    for _ in range(3):
        act = torch.rand(2, a.act_dim, generator=g) * 0.8 - 0.4
        ra, rb = a.step(act), b.step(act)
        assert torch.equal(ra.obs, rb.obs) and torch.equal(ra.reward, rb.reward)
    assert not (ra.terminated | ra.truncated).any()  # (the steps compared are mid-episode)
    snap["envs"][0]["derived"]["xpos"] = np.zeros((1, 3))  # numpy would broadcast it over every body
    with pytest.raises(ValueError, match=r"the snapshot's xpos has shape \[1, 3\], this model's \[\d+, 3\]"):
        b.load_state_dict(snap)
    a.close()
    b.close()


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_step_before_the_first_reset_is_refused_and_a_loaded_snapshot_needs_none(vectorization):
    # as on every backend (envs/base.py); gymnasium's wrappers raised ResetNeeded, and an async worker quit on it
    a = make_env("Hopper-v5", 2, vectorization=vectorization)
    with pytest.raises(RuntimeError, match=r"Hopper-v5: step\(\) before the first reset\(\); call env.reset\(seed=...\)"):
        a.step(torch.zeros(2, 3))
    a.reset(seed=3)  # and the env still works
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a.step(torch.rand(2, 3, generator=g) * 2 - 1)
    snap = a.state_dict()
    b = make_env("Hopper-v5", 2, vectorization=vectorization)
    b.load_state_dict(snap)  # no reset(): a loaded state is one to continue from (gymnasium raised ResetNeeded)
    for _ in range(60):  # through falls and resets
        act = torch.rand(2, 3, generator=g) * 2 - 1
        ra, rb = a.step(act), b.step(act)
        assert torch.equal(ra.obs, rb.obs) and torch.equal(ra.reward, rb.reward)
        assert torch.equal(ra.terminated, rb.terminated) and torch.equal(ra.truncated, rb.truncated)
    a.close()
    b.close()


def test_snapshot_of_randomized_physics_is_a_copy():
    # the snapshot holds the next episodes' factors; neither env's later draws may change the other's
    spec = {"body_mass_scale": [0.7, 1.3]}
    a = make_env("Hopper-v5", 3, randomize=spec, max_episode_steps=30)
    a.reset(seed=5)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a.step(torch.rand(3, 3, generator=g) * 2 - 1)
    snap = a.state_dict()
    b = make_env("Hopper-v5", 3, randomize=spec, max_episode_steps=30)
    b.reset(seed=77)
    b.load_state_dict(snap)
    for t in range(70):  # across time-limit resets, where both draw the following episode's factors
        act = torch.rand(3, 3, generator=g) * 2 - 1
        ra, rb = a.step(act), b.step(act)
        assert torch.equal(ra.obs, rb.obs) and torch.equal(ra.reward, rb.reward), f"step {t}"
    assert torch.equal(a.physics_params()["body_mass_scale"], b.physics_params()["body_mass_scale"])


def test_observation_noise_keeps_final_obs_equal_to_obs_where_nothing_ended():
    noisy = make_env("Hopper-v5", 3, randomize={"obs_noise_std": 0.1}, max_episode_steps=3)
    clean = make_env("Hopper-v5", 3, max_episode_steps=3)
    noisy.reset(seed=0)
    clean.reset(seed=0)
    for t in range(3):
        rn, rc = noisy.step(torch.zeros(3, 3)), clean.step(torch.zeros(3, 3))
        done = rn.terminated | rn.truncated
        assert torch.equal(rn.info["final_obs"][~done], rn.obs[~done]), f"step {t}"
    assert done.all()  # the time limit: the final observations are noisy too, drawn apart from the new episode's
    assert 0.05 < float((rn.info["final_obs"] - rc.info["final_obs"]).std()) < 0.2
    assert not torch.equal(rn.info["final_obs"] - rc.info["final_obs"], rn.obs - rc.obs)


class _CompleteNaNAfter(NaNAfter):
    robo_rl_snapshot_complete = True  # (its step count is not captured: only for this test)


def test_a_user_task_is_captured_only_when_it_says_its_state_is_all_there():
    # NaNAfter keeps a `state` array like classic-control tasks, and a step count beside it: a snapshot of the array
    # alone continued a resumed run with the fresh env's count (a user task's goal, say) without a word
    env = make_env("robo_rl_test/NaNAfter-v0", 1)
    env.reset(seed=0)
    assert env.state_dict() is None  # a resume starts new episodes and says so
    env.close()
    if "robo_rl_test/CompleteNaNAfter-v0" not in gym.registry:
        gym.register("robo_rl_test/CompleteNaNAfter-v0", entry_point=_CompleteNaNAfter, max_episode_steps=100)
    env = make_env("robo_rl_test/CompleteNaNAfter-v0", 1)
    env.reset(seed=0)
    assert env.state_dict() is not None
    env.close()
    env = make_env("Pendulum-v1", 1)  # gymnasium's and robo-rl's own tasks are captured whole
    env.reset(seed=0)
    assert env.state_dict() is not None
    env.close()


def test_a_snapshot_without_randomization_round_trips():
    # a saved "no delay drawn ahead" (None) came back as the current delays, as if from an old checkpoint
    a = make_env("InvertedPendulum-v5", 2, backend="gymnasium")
    b = make_env("InvertedPendulum-v5", 2, backend="gymnasium")
    a.reset(seed=0), b.reset(seed=0)
    state = a.state_dict()
    assert state["pending_delay"] is None
    b.load_state_dict(state)
    assert b.state_dict()["pending_delay"] is None
    a.close(), b.close()


def test_a_snapshot_without_randomization_depends_on_the_seed_alone():
    # a MuJoCo task's randomizer (its physics factors are settable) drew its generators from OS entropy and a reset
    # seeded them only with randomization on: two runs of the same seed, or a resumed run and an unbroken one, saved
    # different (if unused) generator states
    a = make_env("InvertedPendulum-v5", 2, backend="gymnasium")
    b = make_env("InvertedPendulum-v5", 2, backend="gymnasium")
    a.reset(seed=0), b.reset(seed=0)
    ra, rb = a.state_dict()["randomizer"], b.state_dict()["randomizer"]
    assert ra["env_rngs"] == rb["env_rngs"] and ra["noise_rng"] == rb["noise_rng"]
    a.close(), b.close()


def test_task_info_terms_match_the_batched_backend_including_final_steps():
    """info["task"] carries the task's numeric terms on both backends, the last step of an episode included."""
    import torch

    from envs import make_env

    gym_env = make_env("InvertedPendulum-v5", 3, backend="gymnasium")
    mj_env = make_env("InvertedPendulum-v5", 3, backend="mujoco")
    gym_env.reset(seed=5)
    mj_env.reset(seed=5)
    rng = np.random.default_rng(0)
    finished = 0
    for _ in range(60):
        a = torch.as_tensor(rng.uniform(-3, 3, (3, 1)), dtype=torch.float32)
        g, m = gym_env.step(a), mj_env.step(a)
        finished += int(g.terminated.sum())
        for task in (g.info["task"], m.info["task"]):  # tensors when read, whichever way (first read: .get)
            values = [task.get(k) for k in task] + [v for _, v in task.items()] + list(task.values())
            assert values and all(isinstance(v, torch.Tensor) and v.shape == (3,) for v in values)
            assert task.get("no such term") is None
        common = set(g.info["task"]) & set(m.info["task"].keys())
        assert common, "no task info terms on the gymnasium backend"
        for key in common:
            assert torch.equal(g.info["task"][key].cpu(), m.info["task"][key].cpu()), key
    assert finished > 0
    gym_env.close()
    mj_env.close()


def test_task_terms_survive_a_step_where_every_copy_ends():
    # gymnasium moves an ended copy's step info to final_info; when all copies end together the top level
    # holds only the resets' info, and the step's cost was lost (passivity-aware training then stopped)
    costs = {}
    for backend in ("mujoco", "gymnasium"):
        env = make_env("robo_rl/ContactMaze-v0", num_envs=2, backend=backend, max_episode_steps=5)
        env.reset(seed=0)
        for _ in range(5):
            out = env.step(torch.ones(2, 2))
        assert out.truncated.all()
        costs[backend] = torch.as_tensor(out.info["task"]["cost"]).tolist()
    assert costs["gymnasium"] == costs["mujoco"] and min(costs["mujoco"]) > 0


class _ActionEcho(gym.Env):
    """Observes the action it was last given (flattened); its action space is set per registration."""

    def __init__(self, shape=(1,), dtype=np.float32, low=-1.0, high=1.0):
        self.action_space = gym.spaces.Box(low, high, shape, dtype)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (int(np.prod(shape)),), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(self.observation_space.shape, np.float32), {}

    def step(self, action):
        assert np.shape(action) == self.action_space.shape, f"action of shape {np.shape(action)}"
        return np.asarray(action, np.float32).reshape(-1), 0.0, False, False, {}


gym.register("robo_rl_test/MatrixAction-v0", entry_point=lambda: _ActionEcho(shape=(2, 2)), max_episode_steps=5)
gym.register("robo_rl_test/IntegerAction-v0", entry_point=lambda: _ActionEcho(dtype=np.int64, low=-3, high=3),
             max_episode_steps=5)
gym.register("robo_rl_test/UnboundedAction-v0", entry_point=lambda: _ActionEcho(low=-np.inf, high=np.inf),
             max_episode_steps=5)


def test_a_matrix_action_box_is_flattened_for_the_learners_and_reshaped_for_the_task():
    # the env used to receive the flat row [act_dim] instead of its (2, 2) action and fail inside its own step
    env = make_env("robo_rl_test/MatrixAction-v0", num_envs=2)
    assert env.action_space.shape == (4,) and env.act_dim == 4
    env.reset(seed=0)
    actions = torch.tensor([[0.1, 0.2, 0.3, 0.4], [-0.1, -0.2, -0.3, -0.4]])
    assert torch.equal(env.step(actions).obs, actions)  # the env echoes the action it got, flattened row-major


class _ObservesNothing(_ActionEcho):
    def __init__(self):
        super().__init__()
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (0,), np.float32)


gym.register("robo_rl_test/NoAction-v0", entry_point=lambda: _ActionEcho(shape=(0,)), max_episode_steps=5)
gym.register("robo_rl_test/ObservesNothing-v0", entry_point=_ObservesNothing, max_episode_steps=5)


def test_spaces_without_a_dimension_are_refused_naming_the_task():
    # refused only when the head was built, as "the gaussian head: ... got (0,) and (0,)", without the task
    with pytest.raises(ValueError, match=r"^robo_rl_test/NoAction-v0: action space Box\(\[\], \[\], \(0,\), float32\) "
                                         r"has no dimension to act in \(its shape holds a 0\)"):
        make_env("robo_rl_test/NoAction-v0")
    with pytest.raises(ValueError, match=r"^robo_rl_test/ObservesNothing-v0: observation space Box\(\[\], \[\], \(0,\), "
                                         r"float32\) is empty; robo-rl's policies need at least one observation dimension"):
        make_env("robo_rl_test/ObservesNothing-v0")


def test_an_integer_action_box_is_refused_not_truncated():
    # a cast to int64 turned every policy output in (-1, 1) into 0, silently
    with pytest.raises(ValueError, match="IntegerAction-v0: action space .*int64.* integer dtype.*TransformAction"):
        make_env("robo_rl_test/IntegerAction-v0")


def test_unbounded_actions_are_refused_with_a_wrapper_that_bounds_them():
    # ClipAction keeps the infinite bounds and RescaleAction refuses them: the message used to name both
    with pytest.raises(ValueError, match="UnboundedAction-v0: action space .* infinite bounds.*TransformAction") as err:
        make_env("robo_rl_test/UnboundedAction-v0")
    assert "ClipAction or" not in str(err.value) and "RescaleAction or" not in str(err.value)


class _ObservesWrongly(_ActionEcho):
    """Its second step returns ``bad`` as the observation of its (1,) float32 space."""

    def __init__(self, bad=None):
        super().__init__()
        self.bad, self.steps = bad, 0

    def step(self, action):
        obs, *rest = super().step(action)
        self.steps += 1
        return (self.bad if self.steps == 2 else obs), *rest


gym.register("robo_rl_test/ObservesWrongly-v0", entry_point=_ObservesWrongly, max_episode_steps=5)


@pytest.mark.parametrize("vectorization", ["sync", "async"])
@pytest.mark.parametrize("bad, got", [
    (np.zeros(2, np.float32), "an array of shape \\[2\\] \\(float32\\)"),
    (np.float64(0.5), "an array of shape \\[\\] \\(float64\\)"),  # async spread it over the observation, silently
    ({"x": 0.5}, "a dict"),
])
def test_an_observation_of_the_wrong_shape_from_step_names_the_task_and_its_space(vectorization, bad, got):
    # gymnasium's batching failed on it with "Output array is the wrong shape" (sync) or a numpy broadcast error
    # (async), naming neither the task nor the observation; robo-rl train reported that as its one line
    env = make_env("robo_rl_test/ObservesWrongly-v0", num_envs=2, vectorization=vectorization, kwargs={"bad": bad})
    try:
        env.reset(seed=0)
        env.step(torch.zeros(2, 1))
        with pytest.raises(ValueError, match=f"^robo_rl_test/ObservesWrongly-v0: the task's step\\(\\) returned {got} as "
                                             "its observation; its observation space Box\\(-inf, inf, \\(1,\\), float32\\) "
                                             "needs an array of shape \\[1\\] whose dtype casts to float32$"):
            env.step(torch.zeros(2, 1))
    finally:
        env.close()


class _StepsWrongly(_ActionEcho):
    """Its second step returns ``bad`` as its reward, terminated or truncated (``which``)."""

    def __init__(self, which="reward", bad=None):
        super().__init__()
        self.which, self.bad, self.steps = which, bad, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.steps += 1
        out = {"reward": reward, "terminated": terminated, "truncated": truncated}
        if self.steps == 2:
            out[self.which] = self.bad
        return obs, out["reward"], out["terminated"], out["truncated"], info


gym.register("robo_rl_test/StepsWrongly-v0", entry_point=_StepsWrongly, max_episode_steps=5)


@pytest.mark.parametrize("vectorization", ["sync", "async"])
@pytest.mark.parametrize("which, bad, got, need", [
    # async made [N, 1] flags that the batched-env contract then refused, blaming robo-rl's backend; sync took them
    ("terminated", np.array([False]), "an array of shape \\[1\\]", "a bool \\(bool\\(terminated\\)\\)"),
    ("truncated", [False], "a list of shape \\[1\\]", "a bool \\(bool\\(truncated\\)\\)"),
    # numpy's "setting an array element with a sequence" (sync) or a broadcast error (async)
    ("reward", np.array([1.0]), "an array of shape \\[1\\]", "a float \\(float\\(reward\\)\\)"),
    ("reward", None, "None", "a float \\(float\\(reward\\)\\)"),  # became a NaN, blamed on the learning rate
])
def test_a_reward_or_flag_that_is_not_one_number_names_the_task_and_the_value(vectorization, which, bad, got, need):
    env = make_env("robo_rl_test/StepsWrongly-v0", num_envs=2, vectorization=vectorization,
                   kwargs={"which": which, "bad": bad})
    try:
        env.reset(seed=0)
        env.step(torch.zeros(2, 1))
        with pytest.raises(ValueError, match=f"^robo_rl_test/StepsWrongly-v0: the task's step\\(\\) returned {got} as "
                                             f"its {which}; gymnasium's step API needs one number: {need}$"):
            env.step(torch.zeros(2, 1))
    finally:
        env.close()


@pytest.mark.parametrize("reward, flag", [(np.float64(0.5), np.bool_(True)), (np.array(0.5), np.array(True)), (1, 1),
                                          (torch.tensor(0.5), torch.tensor(True))])  # (a task computing in torch)
def test_rewards_and_flags_that_are_one_number_of_any_kind_are_taken(reward, flag):
    env = make_env("robo_rl_test/StepsWrongly-v0", num_envs=1, kwargs={"which": "reward", "bad": reward})
    env.reset(seed=0)
    env.step(torch.zeros(1, 1))
    assert env.step(torch.zeros(1, 1)).reward.tolist() == [float(reward)]
    env.close()
    env = make_env("robo_rl_test/StepsWrongly-v0", num_envs=1, kwargs={"which": "terminated", "bad": flag})
    env.reset(seed=0)
    env.step(torch.zeros(1, 1))
    assert env.step(torch.zeros(1, 1)).terminated.tolist() == [True]
    env.close()


def test_observations_of_another_real_dtype_that_casts_are_taken():
    env = make_env("robo_rl_test/ObservesWrongly-v0", num_envs=2, kwargs={"bad": np.array([3], np.int64)})
    env.reset(seed=0)
    env.step(torch.full((2, 1), 0.25))
    out = env.step(torch.full((2, 1), 0.25))
    assert out.obs.dtype == torch.float32 and out.obs.tolist() == [[3.0], [3.0]]
    env.close()


class _DiesInStep(_ActionEcho):
    def step(self, action):
        os._exit(3)  # a crash in native code, an out-of-memory kill: no Python error reaches the main process


gym.register("robo_rl_test/DiesInStep-v0", entry_point=_DiesInStep, max_episode_steps=5)


class _LinkLostInStep(_ActionEcho):
    def step(self, action):
        raise ConnectionResetError("controller link lost")  # the task's own error, forwarded by gymnasium


gym.register("robo_rl_test/LinkLostInStep-v0", entry_point=_LinkLostInStep, max_episode_steps=5)


def test_a_worker_process_that_dies_is_reported_not_a_bare_eoferror():
    from envs.base import WorkerDied

    env = make_env("robo_rl_test/DiesInStep-v0", num_envs=1, vectorization="async")
    env.reset(seed=0)
    with pytest.raises(WorkerDied, match="DiesInStep-v0: a worker process .*exited.*exit code 3.*vectorization=sync") as exc:
        env.step(torch.zeros(1, 1))
    # exit code 3 is the code it exited with, not a signal ("killed by a signal, e.g. the kernel's OOM killer")
    assert "exit code 3: the worker exited with that code" in str(exc.value) and "signal" not in str(exc.value)
    env.close()  # used to raise EOFError again
    with pytest.raises(RuntimeError, match="closed"):
        env.step(torch.zeros(1, 1))


def test_a_connection_error_of_the_task_itself_is_not_reported_as_a_dead_worker():
    env = make_env("robo_rl_test/LinkLostInStep-v0", num_envs=1, vectorization="async")
    env.reset(seed=0)
    with pytest.raises(ConnectionResetError, match="controller link lost"):  # as gymnasium forwards it
        env.step(torch.zeros(1, 1))
    env.close()


class _FailsForSeed0(_ActionEcho):
    """Copy 0 (seeded 0) raises in its first step; the other copies step on."""

    def reset(self, *, seed=None, options=None):
        self.failing = seed == 0
        return super().reset(seed=seed)

    def step(self, action):
        if self.failing:
            raise ValueError("task bug")
        return super().step(action)


gym.register("robo_rl_test/FailsForSeed0-v0", entry_point=_FailsForSeed0, max_episode_steps=5)


def test_after_a_task_error_in_a_worker_the_env_says_it_is_closed():
    # gymnasium forwards the task's error and shuts that worker down; the next step, reset or snapshot used to fail
    # with AttributeError: 'NoneType' object has no attribute 'send', and the other copies' workers kept running
    from envs.base import WorkerDied

    env = make_env("robo_rl_test/FailsForSeed0-v0", num_envs=2, vectorization="async")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="task bug"):  # the task's own error, as gymnasium forwards it
        env.step(torch.zeros(2, 1))
    assert not any(p.is_alive() for p in env._vec.processes)
    said = r"FailsForSeed0-v0: the task raised ValueError: task bug in a worker .* during step\(\).*Make a new one"
    for call in (lambda: env.step(torch.zeros(2, 1)), lambda: env.reset(seed=0), env.state_dict):
        with pytest.raises(WorkerDied, match=said):
            call()
    env.close()


class _RenderFails(_ActionEcho):
    """Draws frames (rgb_array), but its render raises."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode=None):
        super().__init__()
        self.render_mode = render_mode

    def render(self):
        raise ValueError("render bug")


gym.register("robo_rl_test/RenderFails-v0", entry_point=_RenderFails, max_episode_steps=5)


def test_after_a_render_error_in_a_worker_the_env_says_it_is_closed():
    # render() went to the workers past _vector_call: after gymnasium shut the failing worker down, the next reset
    # failed with AttributeError: 'NoneType' object has no attribute 'send'
    from envs.base import WorkerDied

    env = make_env("robo_rl_test/RenderFails-v0", num_envs=2, vectorization="async", render=True)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="render bug"):  # the task's own error, as gymnasium forwards it
        env.render(0)
    with pytest.raises(WorkerDied, match=r"RenderFails-v0: the task raised ValueError: render bug .* during call\(\)"):
        env.reset(seed=0)
    env.close()


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_render_and_snapshot_need_a_reset_and_every_method_after_close_names_the_task(vectorization):
    # as on every backend (envs/base.py): async raised gymnasium's ClosedEnvironmentError (no task named) from
    # state_dict, load_state_dict, set_physics_params and render after close, sync ran them on the closed simulators;
    # render before the first reset raised gymnasium's ResetNeeded, in an async worker that gymnasium then shut down
    env = make_env("Hopper-v5", 2, vectorization=vectorization, render=True)
    for call in ("render()", "state_dict()"):
        with pytest.raises(RuntimeError, match=rf"Hopper-v5: {call[:-2]}\(\) before the first reset\(\); call env.reset"):
            getattr(env, call[:-2])()
    env.reset(seed=0)  # the env still works (async: its workers were not shut down)
    snap, factors = env.state_dict(), env.physics_params()
    env.close()
    closed = "Hopper-v5: this env was closed; make a new one"
    for call in (lambda: env.reset(seed=0), lambda: env.step(torch.zeros(2, 3)), env.state_dict,
                 lambda: env.load_state_dict(snap), lambda: env.set_physics_params({"body_mass_scale": 1.5}), env.render):
        with pytest.raises(RuntimeError, match=closed):
            call()
    assert factors.keys() == env.physics_params().keys()  # a read of the factors the env keeps
    assert all(torch.equal(v, factors[k]) for k, v in env.physics_params().items())
    env.close()  # again: nothing to do


class _ResetInfo(gym.Env):
    """Its reset info has a key its steps never report; copy i ends at step 2 + i."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    end = 2

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {"start_height": 7.0}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), 0.0, self.t >= self.end, False, {"cost": float(self.t)}


gym.register("robo_rl_test/ResetInfo-v0", entry_point=_ResetInfo, max_episode_steps=3)


def test_a_term_only_resets_report_is_no_step_term():
    # with same-step autoreset the top-level info of an ended copy is its reset's: a reset-only key used to show up
    # in info["task"] at the steps where some copy ended, carrying the new episode's value as the ending step's
    env = make_env("robo_rl_test/ResetInfo-v0", num_envs=2)
    env.reset(seed=0)
    env._vec.envs[1].unwrapped.end = 3  # copy 1 ends one step later (by the time limit too)
    for t in range(3):
        out = env.step(torch.zeros(2, 1))
        done = (out.terminated | out.truncated).tolist()
        assert "start_height" not in out.info["task"], f"step {t}"
        assert out.info["task"]["cost"].tolist() == [[1.0, 1.0], [2.0, 2.0], [1.0, 3.0]][t]
    assert done == [False, True]


def test_render_mode_in_the_kwargs_is_the_render_flag():
    # render=True with env.kwargs.render_mode=rgb_array used to fail in gymnasium.make (render_mode given twice)
    for render in (True, False):
        env = make_env("robo_rl_test/DrawsWithAMissingPackage-v0", kwargs={"render_mode": "rgb_array"}, render=render)
        assert env.render_mode == "rgb_array"
    with pytest.raises(ValueError, match="render_mode='human'.*rgb_array"):
        make_env("robo_rl_test/DrawsWithAMissingPackage-v0", kwargs={"render_mode": "human"})


@pytest.mark.parametrize("signame, algo", [("SIGINT", "ppo"), ("SIGTERM", "ppo"), ("SIGTERM", "sac")])
def test_a_signal_to_an_async_run_s_process_group_saves_its_checkpoint_and_leaves_no_worker(tmp_path, signame, algo):
    # Ctrl-C in a terminal signals the whole process group, the async workers too: they used to quit on the
    # KeyboardInterrupt, and the run failed ("aborted by a second SIGINT", no checkpoint) instead of saving one.
    # A job scheduler's SIGTERM (Slurm, kill -TERM -<pgid>) ends the workers: the iteration they die under is
    # dropped and the checkpoint is saved without the simulator state (the run failed with WorkerDied, no checkpoint)
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "robo_rl.cli", "train", f"algo={algo}", "env=pendulum", "env.backend=gymnasium",
           "env.vectorization=async", "env.num_envs=2", "steps=10000000", "threads=1", f"run_dir={run}",
           "log.every=128", "eval.every=100000000", "checkpoint.every=100000000",
           "log.progress_seconds=1000", "log.tensorboard=false", "log.plot=false"]
    cmd += ["algo.rollout_steps=64"] if algo == "ppo" else ["algo.learning_starts=64", "algo.batch_size=32"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(cmd, cwd=root, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)  # its own group, as a terminal's job
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:  # training: the first metrics rows are written
            metrics = run / "metrics.csv"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read().decode()
        os.killpg(proc.pid, getattr(signal, signame))  # every process of the run
        out = proc.communicate(timeout=240)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + getattr(signal, signame) and f"interrupted by {signame}" in out, out
    saved = sorted((run / "checkpoints").glob("step_*"))
    assert saved, out
    for _ in range(100):  # the workers end with the run (daemon processes: reaped once the run exits)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("processes of the run are still alive after it exited")
    # the checkpoint resumes (without the workers' simulator state, new episodes start, and the log says so)
    step = int(saved[-1].name.split("_")[1])
    resumed = subprocess.run([sys.executable, "-m", "robo_rl.cli", "train", f"resume={run}", f"steps={step + 128}"],
                             cwd=root, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                             timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] >= step + 128


def test_closing_after_a_step_cut_short_stops_the_workers_instead_of_waiting_forever():
    # A KeyboardInterrupt (a second Ctrl-C aborts a run) inside an async step may land after some workers' replies
    # were read; the run's close() then waited forever for them (the workers ignore Ctrl-C, see the test above)
    import threading

    env = make_env("Pendulum-v1", num_envs=2, vectorization="async")
    env.reset(seed=0)
    vec = env._vec
    vec.step_async(np.zeros((2, 1), np.float32))
    vec.parent_pipes[0].recv()  # where the interrupt left the step: worker 0's reply read, worker 1's not
    closer = threading.Thread(target=env.close, daemon=True)
    closer.start()
    closer.join(timeout=120)  # a guard against a hang, not a timing requirement
    hung = closer.is_alive()
    if hung:  # free the test run: the blocked read ends when the workers do
        for process in vec.processes:
            process.kill()
    assert not hung, "close() waited forever for a reply already read"
    for process in vec.processes:
        process.join(timeout=30)
    assert not any(process.is_alive() for process in vec.processes)
    with pytest.raises(RuntimeError, match="closed"):
        env.step(torch.zeros(2, 1))


def test_a_worker_killed_by_a_signal_is_reported_with_the_signal_s_name():
    import signal

    from envs.base import WorkerDied

    env = make_env("Pendulum-v1", num_envs=2, vectorization="async")
    env.reset(seed=0)
    victim = env._vec.processes[1]
    os.kill(victim.pid, signal.SIGKILL)  # as the kernel's OOM killer does
    victim.join(timeout=30)
    with pytest.raises(WorkerDied, match=r"exit code -9 \(SIGKILL\).*OOM killer"):
        env.step(torch.zeros(2, 1))
    # what comes after (a checkpoint's state_dict, the next step or reset) keeps saying why the env is gone; a step
    # after a checkpoint saved without the simulator state said "this env was closed; make a new one"
    for call in (env.state_dict, lambda: env.step(torch.zeros(2, 1)), lambda: env.reset(seed=1)):
        with pytest.raises(WorkerDied, match=r"exit code -9 \(SIGKILL\)"):
            call()
    env.close()


def test_closing_after_the_workers_died_of_a_group_sigterm_reaps_them():
    # Ctrl-C, then a SIGTERM to the process group: the run saved its checkpoint and summary, the SIGTERM ended the
    # workers (they keep its default action), and close() wrote "close" into their closed pipes: BrokenPipeError, a
    # traceback and exit 1 for a run that had stopped cleanly
    import signal

    env = make_env("Pendulum-v1", num_envs=2, vectorization="async")
    env.reset(seed=0)
    processes = list(env._vec.processes)
    for process in processes:
        os.kill(process.pid, signal.SIGTERM)
        process.join(timeout=30)
    env.close()
    assert [process.exitcode for process in processes] == [-signal.SIGTERM] * 2


class _AtItsBound(gym.Env):
    """A float64 observation Box [-0.1, 0.1] whose observations sit on its bounds (0.1 is no float32: rounded up)."""

    observation_space = gym.spaces.Box(-0.1, 0.1, (2,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.array([-0.1, 0.1]), {}

    def step(self, action):
        return np.array([0.1, -0.1]), 0.0, False, False, {}


gym.register("robo_rl_test/AtItsBound-v0", entry_point=_AtItsBound, max_episode_steps=3)


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_the_declared_observation_space_is_the_float32_one_handed_out(vectorization):
    # the observations are float32 (the contract; the mujoco, mjwarp and isaac backends declare float32 too), but the
    # task's float64 space was declared: its observation on the bound 0.1, rounded up to float32, fell outside it
    env = make_env("robo_rl_test/AtItsBound-v0", num_envs=2, vectorization=vectorization)
    obs = env.reset(seed=0)
    step = env.step(torch.zeros(2, 1))
    space = env.observation_space
    assert space.dtype == np.float32 and space.shape == (2,)
    for o in (obs, step.obs, step.info["final_obs"]):
        assert o.dtype == torch.float32 and all(space.contains(row) for row in o.numpy()), o
    hopper = make_env("Hopper-v5", num_envs=1, vectorization=vectorization)
    assert hopper.observation_space.dtype == np.float32 and hopper.observation_space.contains(hopper.reset(seed=0)[0].numpy())
    env.close(), hopper.close()
