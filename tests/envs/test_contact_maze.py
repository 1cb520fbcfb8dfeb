"""ContactMaze-v0: the batched task equals the gymnasium env bit for bit, the maze is solvable by a
scripted controller that slides along its walls, and the energy terms mean what they say."""

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from envs import make_env
from envs.mujoco import MujocoBatchedEnv
from envs.tasks import contact_maze as maze

TASK = "robo_rl/ContactMaze-v0"
# corner points of a collision-free route through the maze (the PD controller's via points)
VIA = np.array([[0.225, -0.2], [0.225, 0.0], [-0.225, 0.0], [-0.225, 0.2], [0.2, 0.2]])


def push_to_subgoal(obs: np.ndarray, gain: float = 20.0, damping: float = 1.0) -> np.ndarray:
    """Push toward the observed sub-goal (at least gain * 0.1 of force): meets the walls and slides along them."""
    pos, vel, rel = obs[:, maze.OBS_EE_POS], obs[:, maze.OBS_EE_VEL], obs[:, maze.OBS_WAYPOINT_REL]
    dist = np.linalg.norm(rel, axis=1, keepdims=True)
    carrot = rel / np.maximum(dist, 1e-9) * np.maximum(dist, 0.1)
    return np.clip(gain * carrot - damping * vel, -1, 1).astype(np.float32)


def run_via_pd(env: MujocoBatchedEnv, kp: float, kd: float, seed: int) -> dict[str, np.ndarray]:
    """One episode per env of a PD controller through the via points; per-env totals."""
    n = env.num_envs
    obs = env.reset_numpy(seed=seed)
    k = np.zeros(n, int)
    live, success = np.ones(n, bool), np.zeros(n, bool)
    injected, steps = np.zeros(n), np.zeros(n)
    for _ in range(maze.MAX_EPISODE_STEPS):
        pos, vel = obs[:, maze.OBS_EE_POS], obs[:, maze.OBS_EE_VEL]
        k = np.minimum(k + (np.linalg.norm(VIA[k] - pos, axis=1) < 0.05), len(VIA) - 1)
        action = np.clip(kp * (VIA[k] - pos) - kd * vel, -1, 1).astype(np.float32)
        obs, _, term, trunc, info = env.step_numpy(action)
        injected += np.where(live, info["injected_energy"], 0.0)
        steps += live
        success |= live & term
        live &= ~(term | trunc)
        if not live.any():
            break
    return {"success": success, "injected": injected, "steps": steps}


def test_model_and_filter_spec_match_the_xml():
    model = mujoco.MjModel.from_xml_path(maze.XML_PATH)
    assert np.array_equal(model.actuator_gear[:, 0], [maze.GEAR] * 2)
    assert np.array_equal(model.dof_damping, [maze.DAMPING] * 2)
    assert np.array_equal(model.dof_frictionloss, [maze.FRICTIONLOSS] * 2)
    assert model.opt.timestep == maze.TIMESTEP and model.body("finger").mass[0] == pytest.approx(maze.MASS)
    assert model.geom("finger").size[0] == maze.FINGER_RADIUS
    env = gym.make(TASK)
    assert env.unwrapped.dt == pytest.approx(maze.CONTROL_DT) and env.spec.max_episode_steps == maze.MAX_EPISODE_STEPS
    assert env.observation_space.shape == (maze.OBS_DIM,) and env.action_space.shape == (2,)
    spec = maze.energy_filter_spec(initial_energy=0.5, max_energy=3.0)
    assert spec == {"type": "energy_tank", "velocity_index": [2, 3], "position_index": [0, 1], "work_bound": "damped",
                    "torque_scale": [3.0, 3.0], "damping": [4.0, 4.0], "friction": [0.5, 0.5],
                    "dt": maze.CONTROL_DT, "initial_energy": 0.5, "min_energy": 0.0, "max_energy": 3.0}
    assert list(range(20)[maze.OBS_EE_VEL]) == spec["velocity_index"]
    with pytest.raises(ValueError, match="min_energy <= initial_energy <= max_energy"):
        maze.energy_filter_spec(initial_energy=5.0, max_energy=2.0)


def test_batched_env_is_bit_identical_to_gymnasium():
    """Same seeds and actions: equal obs, rewards, flags, final obs and info, across successes and time limits."""
    n = 3
    ref = SyncVectorEnv([lambda: gym.make(TASK)] * n, autoreset_mode=AutoresetMode.SAME_STEP)
    ours = MujocoBatchedEnv(TASK, n)
    r_obs, _ = ref.reset(seed=5)
    obs = ours.reset_numpy(seed=5)
    assert np.array_equal(r_obs, obs)
    rng = np.random.default_rng(0)
    successes = truncations = 0
    for t in range(260):
        action = push_to_subgoal(obs)
        action[0] = rng.uniform(-1, 1, 2)  # env 0 wanders until the time limit
        action[1:] = np.clip(action[1:] + rng.normal(0, 0.3, (n - 1, 2)), -1, 1)
        action = action.astype(np.float32)
        r_obs, r_rew, r_term, r_trunc, r_info = ref.step(action)
        obs, rew, term, trunc, info = ours.step_numpy(action)
        assert np.array_equal(r_obs, obs), f"obs differ at step {t}"
        assert np.array_equal(r_rew, rew), f"reward differs at step {t}"
        assert np.array_equal(r_term, term) and np.array_equal(r_trunc, trunc), f"flags differ at step {t}"
        for i in np.flatnonzero(r_term | r_trunc):
            successes += int(r_term[i])
            truncations += int(r_trunc[i])
            assert np.array_equal(r_info["final_obs"][i], info["final_obs"][i])
            for key, value in r_info["final_info"].items():
                if not key.startswith("_"):
                    assert np.array_equal(value[i], info[key][i]), f"final info {key} at step {t}"
        live = ~(r_term | r_trunc)
        for key in ("power", "injected_energy", "dissipated_energy", "cost", "contact_force", "is_success"):
            assert np.array_equal(np.asarray(r_info[key])[live], np.asarray(info[key])[live]), f"info {key} at step {t}"
    assert successes >= 2 and truncations >= 1  # the comparison crossed both kinds of episode end


def test_batched_energy_terms_read_each_simulation_s_damping_and_masses():
    """Randomized physics reaches the energy terms on the batched backend as on the gymnasium env: each simulation's
    own damping and masses (they were the nominal ones on both, whatever randomization had drawn)."""
    from envs.randomization import apply_to_model, nominal_values

    n = 3
    ours = MujocoBatchedEnv(TASK, n)
    ours.set_physics_params({"joint_damping_scale": [[0.25, 0.25], [1.0, 1.0], [3.0, 0.5]],
                             "body_mass_scale": [[1.0, 0.5], [1.0, 1.0], [1.0, 2.5]]})  # bodies: world, finger
    ref = SyncVectorEnv([lambda: gym.make(TASK)] * n, autoreset_mode=AutoresetMode.SAME_STEP)
    params = {k: v.numpy() for k, v in ours.physics_params().items()}
    for i, env in enumerate(ref.envs):  # the same factors, written as the gymnasium backend writes them
        apply_to_model(env.unwrapped.model, nominal_values(env.unwrapped.model), params, i)
    damping = np.stack([env.unwrapped.model.dof_damping for env in ref.envs])
    mass = np.stack([env.unwrapped.model.dof_M0 for env in ref.envs])
    assert np.array_equal(damping, ours.batch.expanded("dof_damping")) and np.array_equal(damping[1], [4.0, 4.0])
    assert np.allclose(mass, ours.batch.expanded("dof_M0")) and np.allclose(mass[:, 0], [0.1, 0.2, 0.5])
    obs = ours.reset_numpy(seed=3)
    assert np.array_equal(ref.reset(seed=3)[0], obs)
    rng = np.random.default_rng(2)
    for t in range(30):
        action = np.clip(push_to_subgoal(obs) + rng.normal(0, 0.3, (n, 2)), -1, 1).astype(np.float32)
        r_obs, r_rew, _, _, r_info = ref.step(action)
        before = obs[:, maze.OBS_EE_POS]
        obs, rew, _, _, info = ours.step_numpy(action)
        assert np.array_equal(r_obs, obs) and np.array_equal(r_rew, rew), f"step {t}"
        for key in ("dissipated_energy", "kinetic_energy"):
            assert np.array_equal(r_info[key], info[key]), f"info {key} at step {t}"
        dq, v = obs[:, maze.OBS_EE_POS] - before, obs[:, maze.OBS_EE_VEL]
        np.testing.assert_allclose(info["dissipated_energy"], (damping * dq ** 2).sum(1) / maze.CONTROL_DT, rtol=1e-12)
        np.testing.assert_allclose(info["kinetic_energy"], 0.5 * (mass * v ** 2).sum(1), rtol=1e-12)


def test_make_env_auto_picks_the_batched_backend():
    env = make_env(TASK, 16, backend="auto")
    assert isinstance(env, MujocoBatchedEnv) and env.obs_dim == maze.OBS_DIM
    obs = env.reset(seed=0)
    start = obs[:, maze.OBS_EE_POS] - torch.as_tensor(maze.START, dtype=torch.float32)
    assert start.abs().max() <= 0.02 + 1e-6 and start.std() > 0.002  # seeded noise around the start corner
    assert torch.equal(obs[:, maze.OBS_EE_VEL], torch.zeros(16, 2))
    step = env.step(torch.ones(16, 2))
    task = step.info["task"]
    for key in ("power", "injected_energy", "dissipated_energy", "cost", "contact_force", "is_success"):
        assert task[key].shape == (16,), key
    assert bool((task["cost"] > 0).all()) and torch.equal(task["cost"], task["injected_energy"].clamp(min=0))


def test_a_wall_sliding_controller_solves_the_maze():
    env = MujocoBatchedEnv(TASK, 16)
    obs = env.reset_numpy(seed=1)
    live, success = np.ones(16, bool), np.zeros(16, bool)
    contact_steps, returns = np.zeros(16), np.zeros(16)
    for _ in range(maze.MAX_EPISODE_STEPS):
        obs, reward, term, trunc, info = env.step_numpy(push_to_subgoal(obs))
        contact_steps += live & (info["contact_force"] > 0.1)
        returns += np.where(live, reward, 0.0)
        success |= live & term & info["is_success"]
        live &= ~(term | trunc)
    assert success.all(), f"reached the goal in {success.sum()}/16 episodes"
    assert contact_steps.min() >= 10  # it got there by pressing on and sliding along walls
    assert returns.min() > 20  # ~14 for the progress through the maze, +10 on success, minus control costs


def test_pd_through_the_maze_and_high_gain_injects_more_energy():
    env = MujocoBatchedEnv(TASK, 16)
    low = run_via_pd(env, kp=5.0, kd=0.5, seed=2)
    high = run_via_pd(env, kp=50.0, kd=2.0, seed=2)
    assert low["success"].all() and high["success"].all()
    assert high["injected"].mean() > 1.3 * low["injected"].mean(), (high["injected"].mean(), low["injected"].mean())
    assert high["steps"].mean() < low["steps"].mean()  # ... and gets there faster for it


@pytest.mark.parametrize("physics", [None, {"joint_damping_scale": [[0.25, 3.0]], "body_mass_scale": [[1.0, 2.0]]}])
def test_energy_terms_are_exact_per_substep(physics):
    """injected_energy = sum over substeps of qfrc_actuator . qvel * timestep, replayed substep by substep; the
    damping and mass terms are those of the model the step ran on (randomized: they were the nominal ones, so at a
    quarter of the damping dissipated_energy was 4x a loss it claims to bound from below)."""
    from envs.randomization import apply_to_model, nominal_values, param_sizes

    env = gym.make(TASK).unwrapped
    if physics is not None:  # as the gymnasium backend and the sim2sim robot write factors into the env's model
        params = {k: np.asarray(physics.get(k, [[1.0] * n]), float) for k, n in param_sizes(env.model).items()}
        apply_to_model(env.model, nominal_values(env.model), params, 0)
    damping, mass = env.model.dof_damping.copy(), env.model.dof_M0.copy()
    assert physics is None or (np.array_equal(damping, [1.0, 12.0]) and np.allclose(mass, [2 * maze.MASS] * 2))
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    replay = mujoco.MjData(env.model)
    for _ in range(40):
        action = rng.uniform(-1, 1, 2).astype(np.float32)
        mujoco.mj_copyData(replay, env.model, env.data)
        _, _, _, _, info = env.step(action)
        replay.ctrl[:] = action
        work, viscous, before = 0.0, 0.0, replay.qpos.copy()
        for _ in range(env.frame_skip):
            mujoco.mj_step(env.model, replay)
            work += float(replay.qfrc_actuator @ replay.qvel) * env.model.opt.timestep
            viscous += float(damping @ replay.qvel ** 2) * env.model.opt.timestep
        assert info["injected_energy"] == pytest.approx(work, rel=1e-9, abs=1e-12)
        assert info["cost"] == max(info["injected_energy"], 0.0)
        dq = env.data.qpos - before
        assert info["dissipated_energy"] == pytest.approx(float(damping @ dq ** 2) / maze.CONTROL_DT, rel=1e-12)
        assert info["dissipated_energy"] <= viscous * (1 + 1e-12)  # a lower bound of the viscous loss, never above
        v = env.data.qvel
        assert info["power"] == pytest.approx(float(env.data.qfrc_actuator @ v), rel=1e-12)
        assert info["kinetic_energy"] == pytest.approx(0.5 * float(mass @ v ** 2), rel=1e-12)


def test_contact_force_is_what_the_wall_pushes_back_with():
    env = gym.make(TASK).unwrapped
    env.reset(seed=0)
    env.set_state(np.array([0.0, -0.13]), np.zeros(2))  # under wall A
    for _ in range(25):
        obs, _, _, _, info = env.step(np.array([0.0, 1.0], np.float32))  # 3 N up, into the wall
    assert obs[maze.OBS_CONTACT_FORCE] == pytest.approx([0.0, -maze.GEAR], abs=0.05)
    assert info["contact_force"] == pytest.approx(maze.GEAR, abs=0.05) and abs(obs[3]) < 1e-3


def test_progress_potential_has_no_penalty_at_the_gaps():
    # along the collision-free route, the path distance only goes down
    route = np.concatenate([np.linspace(a, b, 50) for a, b in zip(np.vstack([maze.START, VIA[:-1]]), VIA)])
    d = maze.path_distance(route)
    assert np.all(np.diff(d) <= 1e-12) and d[-1] == pytest.approx(0.0, abs=1e-12)
    # crossing into the next corridor never costs progress, anywhere in a gap
    for gap_x, y in ((np.linspace(0.175, 0.275, 11), maze.CROSSING_Y[0]), (np.linspace(-0.275, -0.175, 11), maze.CROSSING_Y[1])):
        below = maze.path_distance(np.stack([gap_x, np.full(11, y - 1e-9)], 1))
        above = maze.path_distance(np.stack([gap_x, np.full(11, y + 1e-9)], 1))
        assert np.all(above <= below + 1e-8)


def test_kwargs_reach_both_implementations():
    kwargs = {"terminate_on_success": False, "success_reward": 0.0, "energy_cost_weight": 1.0}
    ref = gym.make(TASK, **kwargs)
    ours = MujocoBatchedEnv(TASK, 1, kwargs=kwargs)
    obs, _ = ref.reset(seed=3)
    assert np.array_equal(obs, ours.reset_numpy(seed=3)[0])
    for _ in range(150):  # past the goal (~80 steps), short of the time limit
        action = push_to_subgoal(obs[None])
        obs, r_rew, r_term, _, r_info = ref.step(action[0])
        o_obs, o_rew, o_term, _, o_info = ours.step_numpy(action)
        assert np.array_equal(obs, o_obs[0]) and r_rew == o_rew[0] and not r_term and not o_term[0]
    assert r_info["is_success"] and r_rew == pytest.approx(r_info["reward_progress"] + r_info["reward_ctrl"] - r_info["cost"])
    with pytest.raises(ValueError, match="unsupported keyword argument.*goal_radi.*supported: .*goal_radius"):
        MujocoBatchedEnv(TASK, 1, kwargs={"goal_radi": 0.1})


def test_task_arithmetic_is_the_same_on_torch_tensors():
    """The array functions also serve the torch-based backends (MuJoCo Warp): the numbers of numpy.

    Up to an ulp: torch's vectorized float64 sqrt (SLEEF, 0.5001 ulp) is not always correctly rounded."""
    rng = np.random.default_rng(0)
    before = rng.uniform(-0.3, 0.3, (64, 2))
    arrays = [before, before + rng.normal(0, 0.02, (64, 2)), rng.normal(0, 0.3, (64, 2)), rng.normal(0, 2, (64, 2)),
              rng.normal(0, 1, (64, 3)), rng.uniform(-1, 1, (64, 2)).astype(np.float32)]
    env = gym.make(TASK).unwrapped
    damping, mass = rng.uniform(1, 8, (64, 2)), rng.uniform(0.1, 0.4, (64, 2))  # each env's own
    reward, terminated, info = maze.step_terms(env.p, damping, mass, env.dt, *arrays)
    t_reward, t_terminated, t_info = maze.step_terms(env.p, torch.from_numpy(damping), torch.from_numpy(mass), env.dt,
                                                     *map(torch.from_numpy, arrays))
    assert np.allclose(reward, t_reward.numpy(), rtol=1e-14, atol=1e-15)
    assert np.array_equal(terminated, t_terminated.numpy())
    for key in info:
        assert t_info[key].dtype == (torch.bool if info[key].dtype == bool else torch.float64), key
        assert np.allclose(info[key], t_info[key].numpy(), rtol=1e-14, atol=1e-15), key
    obs = maze.observation(arrays[1], arrays[2], arrays[4])
    assert np.array_equal(obs, maze.observation(*map(torch.from_numpy, (arrays[1], arrays[2], arrays[4]))).numpy())


def test_settings_that_break_the_maze_are_refused_by_both_implementations():
    # reset_noise_scale=0.15 started 12 of 64 fingers past wall A or outside the arena: episodes that skip half the
    # maze or can never finish; goal_radius=0 made success impossible
    model = mujoco.MjModel.from_xml_path(maze.XML_PATH)
    wall_a, south = model.geom("wall_a"), model.geom("wall_south")
    assert wall_a.pos[1] == maze.WALL_Y[0] and wall_a.size[1] == maze.WALL_HALF_THICKNESS
    assert south.pos[1] + south.size[1] == -maze.ARENA  # the constants START_CLEARANCE is computed from
    for kwargs, words in (({"reset_noise_scale": 0.15}, "reset_noise_scale=0.15 must be between 0 and 0.065 m"),
                          ({"reset_noise_scale": -0.01}, "reset_noise_scale=-0.01 must be between 0 and 0.065 m"),
                          ({"goal_radius": 0.0}, "goal_radius=0.0 must be a distance > 0 m")):
        with pytest.raises(ValueError, match=f"robo_rl/ContactMaze-v0: {words}"):
            gym.make(TASK, **kwargs)
        with pytest.raises(ValueError, match=f"robo_rl/ContactMaze-v0: {words}"):
            MujocoBatchedEnv(TASK, 1, kwargs=kwargs)
    # the largest noise allowed starts every finger in the bottom corridor, clear of the walls
    env = MujocoBatchedEnv(TASK, 64, kwargs={"reset_noise_scale": maze.START_CLEARANCE})
    obs = env.reset_numpy(seed=0)
    for _ in range(3):
        obs = env.step_numpy(np.zeros((64, 2), np.float32))[0]
    assert np.all(obs[:, maze.OBS_CONTACT_FORCE] == 0) and np.all(maze.corridor(obs[:, maze.OBS_EE_POS]) == 0)
    assert np.abs(obs[:, maze.OBS_EE_POS] - maze.START).max() > 0.06  # the draws do reach near the bound
    # a non-finite action is refused (MuJoCo reset the finger to the origin, in the middle corridor, and went on)
    ref = gym.make(TASK)
    ref.reset(seed=0)
    with pytest.raises(ValueError, match="robo_rl/ContactMaze-v0: non-finite action"):
        ref.step(np.array([np.nan, 0.0], np.float32))


def test_a_model_whose_joints_are_not_slides_is_refused_by_both_implementations(tmp_path):
    # the task reads qpos as the finger's x, y in metres and the moved mass of each joint as kg: a hinge made the
    # positions angles and kinetic_energy 1/2 m omega^2, silently
    xml = tmp_path / "hinged.xml"
    xml.write_text(open(maze.XML_PATH).read().replace('<joint name="x" type="slide"', '<joint name="x" type="hinge"'))
    for build in (lambda: gym.make(TASK, xml_file=str(xml)), lambda: MujocoBatchedEnv(TASK, 1, kwargs={"xml_file": str(xml)})):
        with pytest.raises(ValueError, match=r"ContactMaze xml_file .*hinged.xml: needs 2 slide joints \(the finger's x and "
                                             r"y\), has x: hinge, y: slide"):
            build()
