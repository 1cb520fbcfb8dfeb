"""The batched MuJoCo backend: bit-identical to gymnasium v5, exact snapshots, divergence, bad input."""

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from envs import make_env
from envs.mujoco import TASKS, MujocoBatchedEnv
from tests.helpers import robo_rl_records

# Tasks that rarely end on their own get a short time limit so the comparison crosses resets.
LIMITS = {"HalfCheetah-v5": 120, "Swimmer-v5": 120, "Reacher-v5": None, "Pusher-v5": None, "HumanoidStandup-v5": 60}
STEPS = {"Humanoid-v5": 150, "HumanoidStandup-v5": 150, "Ant-v5": 200}


# kwargs robo-rl's own settings use (TASK_DEFAULTS): PPO on Ant observes it without contact forces; and
# InvertedDoublePendulum states where gymnasium's scalar x**2 (C pow) is 1 ULP from x*x (its penalty at step 189)
WITH_KWARGS = [("Ant-v5", {"include_cfrc_ext_in_observation": False}),
               ("InvertedDoublePendulum-v5", {"healthy_reward": 3.0, "reset_noise_scale": 0.5})]


@pytest.mark.parametrize("task_id, kwargs", [(t, {}) for t in sorted(TASKS)] + WITH_KWARGS)
def test_bit_identical_to_gymnasium(task_id, kwargs, monkeypatch, tmp_path):
    # gymnasium's HalfCheetah asset makes MuJoCo 4 warn (settotalmass): its handler appends to MUJOCO_LOG.TXT in the
    # working directory, which was the repository's
    monkeypatch.chdir(tmp_path)
    n = 3
    limit = LIMITS.get(task_id)
    ref = SyncVectorEnv([lambda: gym.make(task_id, max_episode_steps=limit, **kwargs)] * n,
                        autoreset_mode=AutoresetMode.SAME_STEP)
    ours = MujocoBatchedEnv(task_id, n, max_episode_steps=limit, kwargs=kwargs)
    ref_obs, ref_info = ref.reset(seed=11)
    obs = ours.reset_numpy(seed=11)
    assert np.array_equal(ref_obs, obs)
    rng = np.random.default_rng(0)
    low, high = ours.action_space.low, ours.action_space.high
    ends = 0
    for t in range(STEPS.get(task_id, 300)):
        a = rng.uniform(low, high, size=(n, len(low))).astype(np.float32)
        r_obs, r_rew, r_term, r_trunc, r_info = ref.step(a)
        o_obs, o_rew, o_term, o_trunc, o_info = ours.step_numpy(a)
        assert np.array_equal(r_obs, o_obs), f"obs differ at step {t}"
        assert np.array_equal(r_rew, o_rew), f"reward differs at step {t}"
        assert np.array_equal(r_term, o_term) and np.array_equal(r_trunc, o_trunc), f"flags differ at step {t}"
        if "_final_obs" in r_info:
            for i in np.flatnonzero(r_info["_final_obs"]):
                ends += 1
                assert np.array_equal(r_info["final_obs"][i], o_info["final_obs"][i]), f"final obs differs at step {t}"
                for key, value in r_info["final_info"].items():
                    if not key.startswith("_") and r_info["final_info"][f"_{key}"][i]:
                        assert np.array_equal(np.asarray(value[i]), np.asarray(o_info[key][i])), f"final info {key} at {t}"
        for key, value in r_info.items():
            if key.startswith("_") or key in ("final_obs", "final_info"):
                continue
            live = r_info[f"_{key}"] & ~(r_term | r_trunc)  # reset envs report reset info in gymnasium
            assert np.array_equal(np.asarray(value)[live], np.asarray(o_info[key])[live]), f"info {key} differs at step {t}"
    assert ends > 0, "the comparison should cross at least one reset"


def test_torch_view_is_the_float32_cast():
    env = MujocoBatchedEnv("Hopper-v5", 2)
    ref = MujocoBatchedEnv("Hopper-v5", 2)
    obs = env.reset(seed=0)
    assert torch.equal(obs, torch.from_numpy(ref.reset_numpy(seed=0).astype(np.float32)))
    a = torch.rand(2, 3) * 2 - 1
    step = env.step(a)
    r = ref.step_numpy(a.numpy())
    assert torch.equal(step.obs, torch.from_numpy(r[0].astype(np.float32)))
    assert torch.equal(step.reward, torch.from_numpy(r[1].astype(np.float32)))
    assert "x_velocity" in step.info["task"] and step.info["diverged"].dtype == torch.bool


def test_declared_spaces_are_what_step_hands_out_and_match_the_gymnasium_backend():
    # the observation space said float64 (the numpy core's dtype) while reset/step hand out float32, unlike mjwarp's
    ours, gym_backend = make_env("Hopper-v5", 2, backend="mujoco"), make_env("Hopper-v5", 2, backend="gymnasium")
    for env in (ours, gym_backend):
        obs = env.reset(seed=0)
        step = env.step(torch.zeros(2, 3))
        assert env.observation_space.dtype == np.float32 and env.action_space.dtype == np.float32, env.backend
        assert obs.dtype == step.obs.dtype == step.info["final_obs"].dtype == torch.float32
    assert ours.observation_space == gym_backend.observation_space and ours.action_space == gym_backend.action_space
    gym_backend.close()


def test_snapshots_hold_the_integration_state_of_the_installed_mujoco():
    # the fields differ between releases (MuJoCo 4 added `plastic`; binding it on 3.17 raised ValueError in every
    # snapshot): the backend keeps those the installed MjData has, which must be the batch's own state layout
    import mujoco.batch

    from envs.mujoco.backend import _STATE_FIELDS

    assert set(_STATE_FIELDS) == set(mujoco.batch._STATE_FIELDS), f"MuJoCo {mujoco.__version__}"


@pytest.mark.parametrize("task_id", ["Hopper-v5", "Ant-v5", "InvertedDoublePendulum-v5"])
def test_snapshot_continues_exactly(task_id):
    a = MujocoBatchedEnv(task_id, 2)
    a.reset(seed=4)
    g = torch.Generator().manual_seed(0)
    act_dim = a.act_dim
    for _ in range(30):
        a.step(torch.rand(2, act_dim, generator=g) * 2 - 1)
    snap = a.state_dict()
    b = MujocoBatchedEnv(task_id, 2)
    b.reset(seed=123)
    b.load_state_dict(snap)
    for _ in range(80):
        act = torch.rand(2, act_dim, generator=g) * 2 - 1
        ra, rb = a.step(act), b.step(act)
        assert torch.equal(ra.obs, rb.obs) and torch.equal(ra.reward, rb.reward) and torch.equal(ra.terminated, rb.terminated)


def test_diverged_simulation_is_reset_marked_and_finite(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # MuJoCo's warning goes to MUJOCO_LOG.TXT in the working directory
    env = MujocoBatchedEnv("Hopper-v5", 3)
    env.reset(seed=0)
    before = env.step(torch.zeros(3, 3)).obs
    env.qvel[1] = 1e12  # an exploding state: MuJoCo resets the simulation with a warning
    obs, reward, term, trunc, info = env.step(torch.zeros(3, 3))
    assert info["diverged"].tolist() == [False, True, False]
    assert bool(trunc[1]) and not bool(term[1]) and float(reward[1]) == 0.0
    assert torch.isfinite(obs).all() and torch.isfinite(info["final_obs"]).all()
    assert torch.equal(info["final_obs"][1], before[1])  # the last finite observation of the episode
    assert env.diverged_total == 1
    # its next state is unknown (a transition back to its own state, reward 0): replay and recordings leave it out
    from envs.base import unknown_next_state

    assert unknown_next_state(info, term, trunc).tolist() == [False, True, False]


def test_step_before_the_first_reset_is_refused_and_a_loaded_snapshot_needs_none():
    # as on every backend (envs/base.py): it stepped from the unseeded state the env was built in
    a = make_env("Hopper-v5", 2, backend="mujoco", threads=1)
    for step in (lambda: a.step(torch.zeros(2, 3)), lambda: a.step_numpy(np.zeros((2, 3), np.float32))):
        with pytest.raises(RuntimeError, match=r"Hopper-v5: step\(\) before the first reset\(\); call env.reset"):
            step()
    a.reset(seed=3)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a.step(torch.rand(2, 3, generator=g) * 2 - 1)
    b = make_env("Hopper-v5", 2, backend="mujoco", threads=1)
    b.load_state_dict(a.state_dict())  # no reset(): a loaded state is one to continue from
    for _ in range(60):  # through falls and resets
        act = torch.rand(2, 3, generator=g) * 2 - 1
        ra, rb = a.step(act), b.step(act)
        assert torch.equal(ra.obs, rb.obs) and torch.equal(ra.reward, rb.reward)
        assert torch.equal(ra.terminated, rb.terminated) and torch.equal(ra.truncated, rb.truncated)


def test_render_and_snapshot_need_a_reset_and_every_method_after_close_names_the_task():
    # as on every backend (envs/base.py): they drew and saved the unseeded state the env was built in, and after close
    # state_dict, load_state_dict, set_physics_params and render still ran (async gymnasium raised there)
    from tests.helpers import check_reset_first_and_closed_named

    env = make_env("Hopper-v5", 2, backend="mujoco", threads=1)
    zeros = np.zeros((2, 3), np.float32)
    check_reset_first_and_closed_named(env, (lambda: env.reset_numpy(0), lambda: env.step_numpy(zeros)),
                                       simulation=lambda e: e.batch)  # close() frees the batch and its threads


@pytest.mark.parametrize("backend", ["mujoco", "gymnasium"])
def test_a_true_false_task_argument_given_as_text_is_read_as_meant_or_refused(backend):
    # env.kwargs.terminate_when_unhealthy=no reached the task as the string 'no', which Python reads as true: the
    # episodes ended as with the default (QA, 2026-12-07)
    for text, meant in (("no", False), ("Off", False), ("0", False), ("yes", True), (0, False), (1, True)):
        env = make_env("Hopper-v5", backend=backend, kwargs={"terminate_when_unhealthy": text})
        p = env.task.p if backend == "mujoco" else env._vec.envs[0].unwrapped.__dict__
        assert p["_terminate_when_unhealthy" if backend == "gymnasium" else "terminate_when_unhealthy"] is meant
        env.close()
    for bad in ("flase", 2, 0.5):
        with pytest.raises(ValueError, match=rf"Hopper-v5: kwargs terminate_when_unhealthy={bad!r}: takes true or false"):
            make_env("Hopper-v5", backend=backend, kwargs={"terminate_when_unhealthy": bad})
    with pytest.raises(ValueError, match=r"kwargs ctrl_cost_weight='abc': takes a number \(its default is 0.001\)"):
        make_env("Hopper-v5", backend=backend, kwargs={"ctrl_cost_weight": "abc"})
    for key, value in (("width", 0), ("height", -5), ("width", 2.5)):  # failed only when a video was drawn
        with pytest.raises(ValueError, match=rf"kwargs {key}={value}: the frames' {key} in pixels, an integer >= 1"):
            make_env("Hopper-v5", backend=backend, kwargs={key: value})


def test_a_model_file_the_backend_cannot_use_is_named(tmp_path):
    # a directory was MuJoCo's "File size over 2GB is not supported", a text file a bare "XML parse error 8", a model
    # without actuators an IndexError, a negative reset_noise_scale numpy's "high - low < 0" at the first reset
    (tmp_path / "notes.py").write_text("print('not a model')\n")
    (tmp_path / "still.xml").write_text("<mujoco><worldbody><body><joint type='slide'/><geom size='0.1'/></body>"
                                        "</worldbody></mujoco>")
    for path, said in ((tmp_path, "is a directory; give a MuJoCo XML model file"),
                       (tmp_path / "notes.py", r"MuJoCo cannot load it \(XML parse error"),
                       (tmp_path / "still.xml", "the model has no actuators")):
        with pytest.raises(ValueError, match=rf"^Hopper-v5: kwargs xml_file={path}:? {said}"):
            make_env("Hopper-v5", backend="mujoco", kwargs={"xml_file": str(path)})
    with pytest.raises(ValueError, match=r"Hopper-v5: kwargs reset_noise_scale=-1: must be >= 0"):
        make_env("Hopper-v5", backend="mujoco", kwargs={"reset_noise_scale": -1})
    with pytest.raises(ValueError, match=r"unsupported keyword argument\(s\) widht \(did you mean width\?\); supported: "
                                         r".*height.*width, xml_file$"):  # the frame size is accepted, so listed
        make_env("Hopper-v5", backend="mujoco", kwargs={"widht": 100})


def test_a_frame_larger_than_opengl_draws_is_blamed_on_its_size():
    # a 20000 x 20000 frame said "install EGL (apt-get install libegl1 ...)" on a machine that has it
    from envs.rendering import RenderingUnavailable

    env = make_env("Hopper-v5", backend="mujoco", kwargs={"width": 20000, "height": 20000})
    env.reset(seed=0)
    with pytest.raises(RenderingUnavailable, match=r"cannot draw 20000 x 20000 frames here .*env.kwargs.width"):
        env.render()
    assert env.render(width=64, height=48).shape == (48, 64, 3)  # a smaller frame of the same env still draws
    env.close()


def test_make_env_backend_and_bad_input():
    env = make_env("Walker2d-v5", 2, backend="mujoco", kwargs={"ctrl_cost_weight": 0.01})
    assert env.task.p["ctrl_cost_weight"] == 0.01 and env.obs_dim == 17
    with pytest.raises(ValueError, match="did you mean Hopper-v5"):
        make_env("Hoper-v5", backend="mujoco")
    with pytest.raises(ValueError, match="no task 'Pendulum-v1'.*env.backend=gymnasium"):
        make_env("Pendulum-v1", backend="mujoco")
    with pytest.raises(ValueError, match=r"no task 'Zzzzzz-v0'\. It covers Hopper-v5"):  # no close match: still a sentence
        make_env("Zzzzzz-v0", backend="mujoco")
    with pytest.raises(ValueError, match="unsupported keyword argument.*ctrl_costweight.*supported: .*ctrl_cost_weight"):
        make_env("Hopper-v5", backend="mujoco", kwargs={"ctrl_costweight": 0.1})
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="non-finite"):
        env.step(torch.full((2, 6), float("nan")))
    with pytest.raises(ValueError, match="non-finite"):  # finite in float64, inf in the simulation's float32
        env.step(torch.full((2, 6), 1e300, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown env backend 'isaacsim'"):
        make_env("Hopper-v5", backend="isaacsim")


def test_batches_that_cannot_fit_in_memory_are_refused_before_allocation(monkeypatch):
    import envs.resources as resources

    with pytest.raises(MemoryError, match=r"Hopper-v5: num_envs=1,000,000,000 needs at least .* GiB"):
        make_env("Hopper-v5", 10**9, backend="mujoco")  # used to be MuJoCo's ValueError('std::bad_alloc')
    with pytest.raises(MemoryError, match=r"Pendulum-v1: num_envs=1,000,000,000"):
        make_env("Pendulum-v1", 10**9, backend="gymnasium")  # before building envs one by one
    # the MuJoCo backend's own floor: a persistent batch (Humanoid's contact forces) holds an MjData per env
    monkeypatch.setattr(resources, "host_memory", lambda: (2**30, 2**30))
    floor = MujocoBatchedEnv("Humanoid-v5", 1)._bytes_per_env_floor(True)
    assert floor > 20_000
    n = 2**30 // floor + 1
    with pytest.raises(MemoryError, match=rf"num_envs={n:,} needs at least .* \({floor:,} bytes per env\), more than "
                                          rf"the 1.0 GiB of memory free now; even at that floor at most {n - 1:,} envs"):
        MujocoBatchedEnv("Humanoid-v5", n)
    MujocoBatchedEnv("Humanoid-v5", 2).close()  # small batches are untouched


def test_kwargs_change_the_task_like_gymnasium():
    ref = gym.make("Hopper-v5", exclude_current_positions_from_observation=False, healthy_reward=2.0)
    ours = MujocoBatchedEnv("Hopper-v5", 1, kwargs={"exclude_current_positions_from_observation": False, "healthy_reward": 2.0})
    r, _ = ref.reset(seed=3)
    o = ours.reset_numpy(seed=3)
    assert np.array_equal(r, o[0]) and o.shape == (1, 12)
    a = np.array([[0.1, -0.2, 0.3]], np.float32)
    assert ref.step(a[0])[1] == ours.step_numpy(a)[1][0]


def test_humanoidstandup_says_gymnasium_ignores_uph_cost_weight():
    # to the robo_rl logger's handlers (the console and train.log under robo-rl), not as a Python UserWarning: that
    # printed "<file>:<line>: UserWarning: ...", was not in train.log, and was shown once per process
    import logging
    import warnings

    from envs.mujoco.tasks import task_for

    with warnings.catch_warnings(), robo_rl_records(logging.WARNING) as records:
        warnings.simplefilter("error")
        task_for("HumanoidStandup-v5", {"uph_cost_weight": 2.0})
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.WARNING, "HumanoidStandup-v5: uph_cost_weight=2.0 has no effect (gymnasium v5's reward never reads "
         "it; robo-rl's batched task matches gymnasium)")]


def _with_acceleration_sensor(tmp_path, asset):
    """gymnasium's model with a framelinacc sensor: MuJoCo's mj_forward then runs mj_rnePostConstraint itself."""
    from pathlib import Path

    xml = (Path(gym.__file__).parent / "envs/mujoco/assets" / asset).read_text()
    path = tmp_path / asset
    path.write_text(xml.replace("</mujoco>", '<sensor><framelinacc objtype="body" objname="torso"/></sensor></mujoco>'))
    return str(path)


def test_contact_forces_after_a_reset_match_gymnasium_with_an_acceleration_sensor(tmp_path):
    # used to be zeroed at every reset: with such a sensor (a custom xml_file) gymnasium's reset mj_forward computes
    # cfrc_ext, which HumanoidStandup (lying on the floor) observes from its first step on
    kwargs = {"xml_file": _with_acceleration_sensor(tmp_path, "humanoidstandup.xml")}
    ref = SyncVectorEnv([lambda: gym.make("HumanoidStandup-v5", max_episode_steps=2, **kwargs)] * 2,
                        autoreset_mode=AutoresetMode.SAME_STEP)
    ours = MujocoBatchedEnv("HumanoidStandup-v5", 2, max_episode_steps=2, kwargs=kwargs)
    r_obs, _ = ref.reset(seed=5)
    assert np.abs(r_obs[:, -78:]).max() > 1.0  # the contact forces are there in gymnasium's first observation
    assert np.array_equal(r_obs, ours.reset_numpy(seed=5))
    a = np.full((2, 17), 0.1, np.float32)
    for t in range(3):  # crosses the autoreset at step 2
        r, o = ref.step(a), ours.step_numpy(a)
        assert np.array_equal(r[0], o[0]) and np.array_equal(r[1], o[1]), f"step {t}"


def test_frame_skip_must_be_an_integer():
    with pytest.raises(ValueError, match="frame_skip must be an integer >= 1, got 2.5"):
        MujocoBatchedEnv("Hopper-v5", 1, kwargs={"frame_skip": 2.5})  # used to run with 2 (gymnasium's mj_step refuses it)
    with pytest.raises(ValueError, match="frame_skip must be an integer >= 1, got 0"):
        MujocoBatchedEnv("Hopper-v5", 1, kwargs={"frame_skip": 0})
    assert MujocoBatchedEnv("Hopper-v5", 1, kwargs={"frame_skip": np.int64(2)}).dt == pytest.approx(0.004)


def test_render_keyword_arguments_are_used_or_refused():
    # they used to be accepted and dropped: the frame was 480 x 480 with the task's default camera whatever was asked
    env = MujocoBatchedEnv("Hopper-v5", 1, kwargs={"width": 96, "height": 64, "render_mode": "rgb_array"})
    env.reset(seed=0)
    assert env.render(0).shape == (64, 96, 3)
    assert env.render(0, 96, 64).shape == (64, 96, 3)
    default = MujocoBatchedEnv("Hopper-v5", 1, kwargs={"width": 96, "height": 64})
    close = MujocoBatchedEnv("Hopper-v5", 1, kwargs={"width": 96, "height": 64, "default_camera_config": {"distance": 1.0}})
    for e in (default, close):
        e.reset(seed=0)
    assert not np.array_equal(default.render(0), close.render(0))
    for bad in ({"camera_name": "track"}, {"camera_id": 0}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))}.*not supported.*env.backend=gymnasium"):
            MujocoBatchedEnv("Hopper-v5", 1, kwargs=bad)
        make_env("Hopper-v5", 1, backend="gymnasium", kwargs=bad).close()  # as the refusal says
    # no backend draws another render_mode: env.backend=gymnasium was named here too, and refused it in turn
    for backend in ("mujoco", "gymnasium"):
        with pytest.raises(ValueError, match="render_mode='human': robo-rl draws frames with render_mode='rgb_array'.*"
                                             "leave render_mode out of the kwargs$"):
            make_env("Hopper-v5", 1, backend=backend, kwargs={"render_mode": "human"})
