"""Domain randomization: validation, reproducibility, real physics changes, noise, delay, snapshots."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from envs import make_env
from envs.randomization import RandomizationSpec


@pytest.mark.parametrize("values, message", [
    ({"body_mass_scale": [1.2, 0.8]}, "empty range"),
    ({"body_mass_scale": [0.0, 1.0]}, "must be positive"),
    ({"geom_friction_scale": [-0.1, 1.0]}, "non-negative"),
    ({"joint_damping_scale": [0.5, float("inf")]}, "finite"),
    ({"joint_damping_scale": [0.5, 1e30]}, r"needs factors between 0 and 1000; .*not the same robot"),  # diverges every step
    ({"body_mass_scale": [1e-300, 1.0]}, "needs factors between 0.001 and 1000"),
    ({"gravity_scale": [-2000.0, 1.0]}, r"needs \|factor\| at most 1000"),
    ({"obs_noise_std": -0.1}, "finite number >= 0"),
    ({"obs_noise_std": "0.1"}, r"obs_noise_std='0.1': must be a finite number >= 0"),  # was a bare TypeError later
    ({"action_noise_std": True}, r"action_noise_std=True: must be a finite number >= 0"),
    ({"action_noise_std": [0.1]}, r"action_noise_std=\(0.1,\): must be a finite number >= 0"),
    ({"action_delay": [2, 1]}, "0 <= min <= max"),
    ({"action_delay": [0.5, 1]}, "whole numbers"),
    ({"body_mass_scale": 1.1}, r"expected a range \[low, high\]"),
    ({"body_mass_scale": "12"}, r"expected a range \[low, high\] of numbers, not text"),  # not the range [1, 2]
    ({"mass_scale": [0.9, 1.1]}, "unknown randomization key"),
])
def test_bad_specs_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        RandomizationSpec.from_dict(values)


def test_physics_factors_are_drawn_per_env_per_episode_and_reproducible():
    spec = {"body_mass_scale": [0.5, 1.5], "geom_friction_scale": [0.8, 1.2]}
    a = make_env("Hopper-v5", 4, backend="mujoco", randomize=spec, max_episode_steps=5)
    b = make_env("Hopper-v5", 4, backend="mujoco", randomize=spec, max_episode_steps=5)
    a.reset(seed=3)
    b.reset(seed=3)
    first = a.physics_params()["body_mass_scale"]
    assert torch.equal(first, b.physics_params()["body_mass_scale"])
    assert first.shape == (4, a.model.nbody) and 0.5 <= first.min() and first.max() <= 1.5
    assert not torch.equal(first[0], first[1])  # independent per env
    assert torch.equal(a.physics_params()["joint_damping_scale"], torch.ones(4, a.model.nv))  # not randomized
    # the simulator really uses them: per-simulation masses
    np.testing.assert_allclose(a.batch.expand("body_mass"), a.model.body_mass * first.numpy())
    for _ in range(5):  # a 5-step limit: every env starts a new episode with new factors
        a.step(torch.zeros(4, 3))
    assert not torch.equal(a.physics_params()["body_mass_scale"], first)


def test_friction_is_one_factor_per_env_so_every_contact_scales_by_it():
    # a contact's friction is the larger of its two geoms': one factor k for all geoms gives k x nominal exactly
    env = make_env("Ant-v5", 3, backend="mujoco", randomize={"geom_friction_scale": [0.5, 1.5]})
    env.reset(seed=0)
    k = env.physics_params()["geom_friction_scale"]
    assert k.shape == (3, env.model.ngeom) and torch.equal(k, k[:, :1].expand_as(k)) and len(set(k[:, 0].tolist())) == 3
    np.testing.assert_allclose(env.batch.expand("geom_friction")[:, :, 0], env.model.geom_friction[:, 0] * k.numpy())


@pytest.mark.parametrize("backend", ["mujoco", "gymnasium"])
def test_friction_factor_reaches_explicit_contact_pairs(backend):
    # ContactMaze's finger touches the walls only through <contact><pair>s, whose own friction MuJoCo uses: scaling
    # the geoms' friction alone left its wall friction nominal (factors 0, 1 and 5 gave the same trajectory)
    import gymnasium as gym

    ends = []
    for k in (0.25, 0.5, 1.0):
        env = make_env("robo_rl/ContactMaze-v0", 1, backend=backend, randomize={"geom_friction_scale": [k, k]})
        env.reset(seed=0)
        for _ in range(14):  # up into wall A's underside and right along it: sliding, pressed against the wall
            obs = env.step(torch.tensor([[1.0, 1.0]])).obs
        assert float(obs[0, 8:10].norm()) > 2.0  # still pressed against the wall (measured: about 3 N)
        if backend == "gymnasium":
            pair = env._vec.envs[0].unwrapped.model.pair_friction
        else:
            pair = env.batch.expand("pair_friction")[0]
        nominal = gym.make("robo_rl/ContactMaze-v0").unwrapped.model.pair_friction
        np.testing.assert_allclose(pair[:, :2], nominal[:, :2] * k)
        np.testing.assert_array_equal(pair[:, 2:], nominal[:, 2:])  # torsional, rolling: not scaled
        ends.append(float(obs[0, 0]))
        env.close()
    # more friction, less sliding (measured: x = 0.10, 0.07, 0.01)
    assert ends[0] > ends[1] + 0.02 and ends[1] > ends[2] + 0.02, ends


@pytest.mark.parametrize("backend", ["mujoco", "gymnasium"])
def test_zero_gravity_changes_the_dynamics(backend):
    nominal = make_env("Hopper-v5", 2, backend=backend)
    floating = make_env("Hopper-v5", 2, backend=backend, randomize={"gravity_scale": [0.0, 0.0]})
    z0 = nominal.reset(seed=0)[:, 0]  # obs[0] is the torso height
    floating.reset(seed=0)
    for _ in range(30):
        zn = nominal.step(torch.zeros(2, 3)).obs[:, 0]
        zf = floating.step(torch.zeros(2, 3)).obs[:, 0]
    assert (zn < z0 - 0.035).all()  # settles onto its foot under gravity (measured: -0.04, -0.047)
    assert torch.allclose(zf, z0, atol=0.002)  # floats without it (measured: within 0.0007)


def test_explicit_physics_for_evaluation():
    env = make_env("Hopper-v5", 3, backend="mujoco")
    env.reset(seed=0)
    env.set_physics_params({"gravity_scale": [[0.0], [1.0], [2.0]]})
    for _ in range(3):
        obs = env.step(torch.zeros(3, 3)).obs
    vz = obs[:, 6]  # vertical velocity of the torso (obs = qpos[1:], qvel)
    assert abs(float(vz[0])) < 0.01 and float(vz[2]) < float(vz[1]) < -0.05  # more gravity, faster fall
    assert env.physics_params()["gravity_scale"].flatten().tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="body_mass_scale: factors must be positive"):
        env.set_physics_params({"body_mass_scale": 0.0})
    with pytest.raises(ValueError, match=r"joint_damping_scale: needs factors between 0 and 1000, got factors in \[1, 1e\+30\]"):
        env.set_physics_params({"joint_damping_scale": [[1.0], [1e30], [1.0]]})
    with pytest.raises(ValueError, match=r"gravity_scale: needs \|factor\| at most 1000"):
        env.set_physics_params({"gravity_scale": -1e4})
    assert env.physics_params()["gravity_scale"].flatten().tolist() == [0.0, 1.0, 2.0]  # nothing set


@pytest.mark.parametrize("backend", ["mujoco", "gymnasium"])
def test_the_env_contract_refuses_bad_arguments_with_a_message(backend):
    env = make_env("Hopper-v5", 2, backend=backend)
    try:
        for seed in ("a", -1, 1.5, True):
            with pytest.raises(ValueError, match=r"reset\(seed=.*\): the seed must be an integer >= 0"):
                env.reset(seed=seed)
        env.reset(seed=np.int64(3))  # numpy integers are integers
        for actions in (None, "x", {"a": 1}):
            with pytest.raises(TypeError, match=r"actions must be a float tensor \(or array\) of shape \[2, 3\]"):
                env.step(actions)
        env.step([[0.0] * 3] * 2)  # a nested list is an array
        env.step(torch.zeros(2, 3, dtype=torch.int64))  # integers are numbers: cast to float32
        for actions, words in ((torch.zeros(2, 3, dtype=torch.complex64), "got a tensor of torch.complex64"),
                               (torch.zeros(2, 3, dtype=torch.bool), "got a tensor of torch.bool"),
                               (np.zeros((2, 3), dtype=np.complex128), "got an array of complex128")):
            with pytest.raises(TypeError, match=words):  # a cast would drop the imaginary part, or read bools as 0/1
                env.step(actions)
        before = np.array(env.physics_params()["gravity_scale"])
        for ids in ([5], [[0, 1]], [1.7], True, -1):  # nested, fractional or bool ids were cast or half-applied
            with pytest.raises(ValueError, match=r"env ids .* out of range: give integers .* copies 0..1"):
                env.set_physics_params({"gravity_scale": 0.5}, ids=ids)
        with pytest.raises(TypeError, match="takes a mapping of factors"):
            env.set_physics_params([("gravity_scale", 0.5)])
        with pytest.raises(ValueError, match="gravity_scale: factors must be real numbers"):
            env.set_physics_params({"gravity_scale": 0.5 + 1j})
        np.testing.assert_array_equal(np.array(env.physics_params()["gravity_scale"]), before)  # nothing was set
        before = np.array(env.physics_params()["gravity_scale"])
        with pytest.raises(ValueError, match="body_mass_scale: factors must be positive"):  # nothing set, not half
            env.set_physics_params({"gravity_scale": 2.0, "body_mass_scale": 0.0})
        np.testing.assert_array_equal(np.array(env.physics_params()["gravity_scale"]), before)
    finally:
        env.close()
    env.close()  # twice is fine
    for call in (lambda: env.reset(seed=0), lambda: env.step(torch.zeros(2, 3))):
        with pytest.raises(RuntimeError, match="Hopper-v5: this env was closed; make a new one"):
            call()
    for kwargs, words in (({"num_envs": 2.5}, "num_envs=2.5 must be an integer >= 1"),
                          ({"num_envs": "4"}, "num_envs='4' must be an integer >= 1"),
                          ({"max_episode_steps": -3}, "max_episode_steps=-3 must be an integer >= 1"),
                          ({"threads": -2}, "threads=-2 must be an integer >= 0"),
                          ({"kwargs": {"ctrl_cost_weight": float("nan")}}, "kwargs ctrl_cost_weight=nan: must be a finite"),
                          ({"kwargs": {"ctrl_cost_weight": float("inf")}}, "kwargs ctrl_cost_weight=inf: must be a finite"),
                          ({"kwargs": {"healthy_z_range": (float("nan"), 2.0)}}, "NaN is no bound (inf is)"),
                          ({"device": "gpu"}, "device='gpu' is not a torch device")):
        with pytest.raises(ValueError, match=re.escape(words)):
            make_env("Hopper-v5", backend=backend, **kwargs)
    for kwargs, words in (({"task_id": None}, "task_id must be a gymnasium id such as 'Hopper-v5', got None"),
                          ({"kwargs": [1, 2]}, "kwargs takes a mapping of the task's keyword arguments"),
                          ({"randomize": "mild"}, "randomize takes a RandomizationSpec or its dict, got 'mild'")):
        with pytest.raises(TypeError, match=re.escape(words)):
            make_env(**{"task_id": "Hopper-v5", "backend": backend, **kwargs})
    make_env("Hopper-v5", backend=backend, kwargs={"healthy_z_range": (0.7, float("inf"))}).close()  # an open range


def test_observation_noise_and_action_delay():
    clean = make_env("Hopper-v5", 64, backend="mujoco")
    noisy = make_env("Hopper-v5", 64, backend="mujoco", randomize={"obs_noise_std": 0.1})
    diff = noisy.reset(seed=1) - clean.reset(seed=1)
    assert 0.08 < float(diff.std()) < 0.12
    delayed = make_env("Hopper-v5", 2, backend="mujoco", randomize={"action_delay": [1, 1]})
    plain = make_env("Hopper-v5", 2, backend="mujoco")
    delayed.reset(seed=2)
    plain.reset(seed=2)
    kick = torch.ones(2, 3)
    d1, p1 = delayed.step(kick), plain.step(torch.zeros(2, 3))  # the delayed env still applies zeros
    assert torch.equal(d1.obs, p1.obs)
    d2, p2 = delayed.step(torch.zeros(2, 3)), plain.step(kick)  # ...and the kick one step later
    assert torch.equal(d2.obs, p2.obs)


def test_randomized_env_snapshot_continues_exactly():
    spec = {"body_mass_scale": [0.7, 1.3], "obs_noise_std": 0.01, "action_delay": [0, 2]}
    a = make_env("Hopper-v5", 3, backend="mujoco", randomize=spec, max_episode_steps=40)
    a.reset(seed=5)
    g = torch.Generator().manual_seed(0)
    for _ in range(25):
        a.step(torch.rand(3, 3, generator=g) * 2 - 1)
    snap = a.state_dict()
    b = make_env("Hopper-v5", 3, backend="mujoco", randomize=spec, max_episode_steps=40)
    b.reset(seed=77)
    b.load_state_dict(snap)
    for _ in range(60):  # across time-limit resets, which draw new factors
        act = torch.rand(3, 3, generator=g) * 2 - 1
        ra, rb = a.step(act), b.step(act)
        assert torch.equal(ra.obs, rb.obs) and torch.equal(ra.reward, rb.reward)
    assert torch.equal(a.physics_params()["body_mass_scale"], b.physics_params()["body_mass_scale"])


def test_gymnasium_backend_draws_new_factors_at_autoreset_and_refuses_non_mujoco():
    env = make_env("Hopper-v5", 2, backend="gymnasium", randomize={"body_mass_scale": [0.5, 1.5]}, max_episode_steps=3)
    env.reset(seed=0)
    first = env.physics_params()["body_mass_scale"].clone()
    for _ in range(3):
        env.step(torch.zeros(2, 3))
    assert not torch.equal(env.physics_params()["body_mass_scale"], first)
    with pytest.raises(ValueError, match=r"Pendulum-v1 is not a MuJoCo task, so it has no physics for "
                                         r"env\.randomize\.body_mass_scale, env\.randomize\.gravity_scale to scale"):
        make_env("Pendulum-v1", 1, backend="gymnasium", randomize={"body_mass_scale": [0.9, 1.1], "gravity_scale": [1, 2]})
    noisy = make_env("Pendulum-v1", 16, backend="gymnasium", randomize={"obs_noise_std": 0.1})  # noise works anywhere
    clean = make_env("Pendulum-v1", 16, backend="gymnasium")
    diff = noisy.reset(seed=0) - clean.reset(seed=0)
    actions = torch.zeros(16, 1)
    diff = torch.cat([diff, noisy.step(actions).obs - clean.step(actions).obs])
    assert 0.07 < float(diff.std()) < 0.13  # 96 draws of N(0, 0.1^2)


def test_humanoid_reward_reads_each_simulation_s_masses_like_gymnasium():
    # gymnasium's Humanoid rewards the centre of mass's velocity, computed from the live model.body_mass
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    from envs.mujoco import MujocoBatchedEnv
    from envs.randomization import apply_to_model, nominal_values

    n = 2
    ours = MujocoBatchedEnv("Humanoid-v5", n)
    ours.set_physics_params({"body_mass_scale": np.random.default_rng(0).uniform(0.7, 1.3, (n, ours.model.nbody))})
    ref = SyncVectorEnv([lambda: gym.make("Humanoid-v5")] * n, autoreset_mode=AutoresetMode.SAME_STEP)
    params = {k: v.numpy() for k, v in ours.physics_params().items()}
    for i, env in enumerate(ref.envs):  # the same masses, written as the gymnasium backend writes them
        apply_to_model(env.unwrapped.model, nominal_values(env.unwrapped.model), params, i)
    assert np.array_equal(ref.reset(seed=3)[0], ours.reset_numpy(seed=3))
    rng = np.random.default_rng(1)
    for t in range(30):
        a = rng.uniform(-0.4, 0.4, (n, 17)).astype(np.float32)
        r_obs, r_rew, _, _, r_info = ref.step(a)
        o_obs, o_rew, _, _, o_info = ours.step_numpy(a)
        assert np.array_equal(r_obs, o_obs), f"obs at step {t}"
        assert np.array_equal(r_rew, o_rew), f"reward at step {t}"


@pytest.mark.parametrize("backend", ["mujoco", "gymnasium"])
def test_reset_without_a_seed_continues_the_seeded_generators(backend):
    # as gymnasium: reset(seed=0); reset(); reset() gives the same episodes every time
    spec = {"body_mass_scale": [0.5, 1.5], "obs_noise_std": 0.01}
    runs = []
    for _ in range(2):
        env = make_env("Hopper-v5", 2, backend=backend, randomize=spec)
        seen = [env.reset(seed=0), env.physics_params()["body_mass_scale"]]
        env.step(torch.zeros(2, 3))
        for _ in range(2):
            seen += [env.reset(), env.physics_params()["body_mass_scale"]]
        runs.append(seen)
    for t, (a, b) in enumerate(zip(*runs)):
        assert torch.equal(a, b), f"item {t}"
    assert not torch.equal(runs[0][1], runs[0][3])  # each reset draws anew; it does not replay the seeded one


@pytest.mark.parametrize("backend", ["mujoco", "gymnasium"])
def test_setting_one_factor_leaves_the_others_randomized(backend):
    # evaluating at half gravity must not freeze env 0's masses at whatever they were last drawn
    spec = {"body_mass_scale": [0.5, 1.5]}
    pinned = make_env("Hopper-v5", 2, backend=backend, randomize=spec, max_episode_steps=3)
    free = make_env("Hopper-v5", 2, backend=backend, randomize=spec, max_episode_steps=3)
    pinned.reset(seed=0)
    free.reset(seed=0)
    pinned.set_physics_params({"gravity_scale": 0.5}, ids=[0])
    for episode in range(3):
        assert torch.equal(pinned.physics_params()["body_mass_scale"], free.physics_params()["body_mass_scale"]), episode
        assert pinned.physics_params()["gravity_scale"].flatten().tolist() == [0.5, 1.0]
        for _ in range(3):  # the time limit: a new episode, new masses, the same gravity
            pinned.step(torch.zeros(2, 3))
            free.step(torch.zeros(2, 3))
    assert not torch.equal(pinned.physics_params()["body_mass_scale"][0], free.physics_params()["body_mass_scale"][1])
    pinned.reset(seed=1)
    assert pinned.physics_params()["gravity_scale"].flatten().tolist() == [0.5, 1.0]  # a set factor survives a reseed


def test_backends_give_an_episode_the_same_factors_and_delay():
    # the gymnasium backend draws each episode's factors ahead of its autoreset; its delay comes with them
    spec = {"body_mass_scale": [0.5, 1.5], "action_delay": [0, 3]}
    ours = make_env("Hopper-v5", 3, backend="mujoco", randomize=spec, max_episode_steps=6)
    gym_env = make_env("Hopper-v5", 3, backend="gymnasium", randomize=spec, max_episode_steps=6)
    ours.reset(seed=11)
    gym_env.reset(seed=11)
    g = torch.Generator().manual_seed(0)
    for t in range(24):  # four episodes each
        if t == 9:  # and a snapshot taken mid-episode continues with the next episodes' delays
            resumed = make_env("Hopper-v5", 3, backend="gymnasium", randomize=spec, max_episode_steps=6)
            resumed.reset(seed=5)
            resumed.load_state_dict(gym_env.state_dict())
            gym_env.close()
            gym_env = resumed
        act = torch.rand(3, 3, generator=g) * 2 - 1
        ra, rb = ours.step(act), gym_env.step(act)
        assert torch.equal(ra.obs, rb.obs) and torch.equal(ra.reward, rb.reward), f"step {t}"
    assert torch.equal(ours.physics_params()["body_mass_scale"], gym_env.physics_params()["body_mass_scale"])


def test_actuator_gain_scale_refuses_actuators_without_a_fixed_gain(tmp_path):
    # a muscle's gainprm[0] is its length range, not a gain: scaling it made forces of -628 where 0 was right
    import gymnasium

    xml = (Path(gymnasium.__file__).parent / "envs/mujoco/assets/hopper.xml").read_text()
    motor = '<motor ctrllimited="true" ctrlrange="-1.0 1.0" gear="200.0" joint="thigh_joint"/>'
    assert motor in xml
    path = tmp_path / "hopper_muscle.xml"
    path.write_text(xml.replace(motor, '<muscle name="thigh_muscle" joint="thigh_joint" lengthrange="-2.62 0"/>'))
    kwargs = {"xml_file": str(path)}
    with pytest.raises(ValueError, match="actuator_gain_scale: actuator.s. thigh_muscle have no fixed gain"):
        make_env("Hopper-v5", 2, backend="gymnasium", kwargs=kwargs, randomize={"actuator_gain_scale": [0.9, 1.1]})
    env = make_env("Hopper-v5", 2, backend="gymnasium", kwargs=kwargs, randomize={"body_mass_scale": [0.9, 1.1]})
    env.reset(seed=0)
    with pytest.raises(ValueError, match="actuator_gain_scale: actuator.s. thigh_muscle have no fixed gain"):
        env.set_physics_params({"actuator_gain_scale": 1.1})
    env.set_physics_params({"actuator_gain_scale": [1.0, 1.2, 0.8]})  # the motors' gains can be set
    assert env.physics_params()["actuator_gain_scale"][0].tolist() == [1.0, 1.2, 0.8]
    env.close()


@pytest.mark.parametrize("backend", ["mujoco", "gymnasium"])
def test_an_action_delay_no_action_outlasts_is_refused_before_the_build(backend, monkeypatch):
    # each reset empties the queue of delayed actions: a delay of the episode length or more sends only zeros
    with pytest.raises(ValueError, match=r"Hopper-v5: randomize.action_delay=\[0, 5\]: a delay of 5 steps is not "
                                         r"shorter than the episodes \(5 steps\): no action would arrive"):
        make_env("Hopper-v5", 2, backend=backend, randomize={"action_delay": [0, 5]}, max_episode_steps=5)
    make_env("Hopper-v5", 2, backend=backend, randomize={"action_delay": [0, 4]}, max_episode_steps=5).close()
    # [0, 10**9] filled memory with the queue (2 envs x 3 actions x 4 bytes each) and was killed without a message
    import envs.resources

    monkeypatch.setattr(envs.resources, "host_memory", lambda: (2**30, 2**30))
    with pytest.raises(ValueError, match=r"randomize.action_delay=\[0, 1000000000\]: the queue of delayed actions "
                                         r"needs 22.4 GiB \(1,000,000,001 actions per env\), more than the 1.0 GiB"):
        make_env("Hopper-v5", 2, backend=backend, randomize={"action_delay": [0, 10**9]}, max_episode_steps=2 * 10**9)


@pytest.mark.parametrize("backend", ["mujoco", "gymnasium"])
def test_a_snapshot_taken_before_set_physics_params_restores_the_nominal_physics(backend):
    # snapshot, evaluate at zero gravity, restore: the simulations kept zero gravity while physics_params() said 1.0
    ref = make_env("Hopper-v5", 2, backend=backend, max_episode_steps=5)
    env = make_env("Hopper-v5", 2, backend=backend, max_episode_steps=5)
    ref.reset(seed=0)
    env.reset(seed=0)
    snap = env.state_dict()
    env.set_physics_params({"gravity_scale": 0.0}, ids=[1])
    env.step(torch.zeros(2, 3))
    env.load_state_dict(snap)
    assert env.physics_params()["gravity_scale"].flatten().tolist() == [1.0, 1.0]
    for t in range(12):  # and across the time limit's resets
        ra, rb = ref.step(torch.zeros(2, 3)), env.step(torch.zeros(2, 3))
        assert torch.equal(ra.obs, rb.obs) and torch.equal(ra.reward, rb.reward), f"step {t}"


@pytest.mark.parametrize("backend", ["mujoco", "gymnasium"])
def test_a_randomized_snapshot_continues_exactly_in_an_env_without_randomization(backend):
    # the mujoco backend restored the factors into physics_params() but wrote them into no simulation: it went on
    # with the nominal damping (and ContactMaze's dissipated_energy with it) while reporting the snapshot's 0.3
    a = make_env("robo_rl/ContactMaze-v0", 2, backend=backend, randomize={"joint_damping_scale": [0.3, 0.3]})
    b = make_env("robo_rl/ContactMaze-v0", 2, backend=backend)
    a.reset(seed=0)
    b.reset(seed=1)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.physics_params()["joint_damping_scale"], torch.full((2, 2), 0.3, dtype=torch.float64))
    for t in range(5):  # within the episode (200 steps)
        ra, rb = a.step(torch.ones(2, 2)), b.step(torch.ones(2, 2))
        assert torch.equal(ra.obs, rb.obs), f"obs at step {t}"
        assert torch.equal(ra.info["task"]["dissipated_energy"], rb.info["task"]["dissipated_energy"]), f"step {t}"


@pytest.mark.parametrize("backend", ["mujoco", "gymnasium"])
def test_a_factor_that_scales_what_the_model_lacks_is_warned_of(backend, caplog):
    # Swimmer's joints have no damping and Pusher has no gravity: the factors were drawn and logged as randomized,
    # and the trajectories were bit-identical to the nominal task's
    import logging

    spec = RandomizationSpec.from_dict({"joint_damping_scale": [0.5, 1.5], "body_mass_scale": [0.9, 1.1]})
    with caplog.at_level(logging.WARNING, logger="robo_rl.envs.randomization"):
        make_env("Swimmer-v5", 2, backend=backend, randomize=spec).close()
        make_env("Pusher-v5", 1, backend=backend, randomize=RandomizationSpec.from_dict({"gravity_scale": [0.5, 1.5]})).close()
        make_env("Hopper-v5", 1, backend=backend, randomize=spec).close()  # damped joints: nothing to say
    assert [r.getMessage() for r in caplog.records] == [
        "Swimmer-v5: env.randomize.joint_damping_scale=[0.5, 1.5]: the task's model has no joint damping (all zero), so "
        "its factors are drawn and reported but change nothing",
        "Pusher-v5: env.randomize.gravity_scale=[0.5, 1.5]: the task's model has no gravity (all zero), so its factors "
        "are drawn and reported but change nothing"]
