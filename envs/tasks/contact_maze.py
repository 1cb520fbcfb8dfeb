"""ContactMaze-v0: push a force-controlled finger through an S-shaped maze, in contact with its walls.

The task the passivity / energy studies run on: the controller commands forces, so the energy it
injects into the robot is measurable, and the walls make the finger touch, press and slide.

Physics (``assets/contact_maze.xml``): a sphere "finger" (radius 0.025 m, 0.2 kg) on two slide
joints x and y above a table, each driven by a ``motor`` with gear ``GEAR`` = 3 N (action in
[-1, 1]^2, force = 3 N * action), each with viscous damping ``DAMPING`` = 4 N s/m and a dry
(Coulomb) friction of 0.5 N that models the table (joint ``frictionloss``). Timestep 0.004 s,
``FRAME_SKIP`` = 10 substeps: one control step is ``CONTROL_DT`` = 0.04 s (25 Hz); episodes are cut
after 200 steps (8 s). Top speed at full force is about 0.6 m/s along an axis.

Maze: the arena's inside is [-0.3, 0.3]^2. Wall A at y = -0.1 leaves a gap on the right
(x in [0.15, 0.3]), wall B at y = +0.1 one on the left (x in [-0.3, -0.15]). The finger starts near
(-0.2, -0.2) (bottom-left, +-``reset_noise_scale`` per axis, at most ``START_CLEARANCE`` = 0.065 m so
that it starts clear of the walls, at rest) and must reach the goal disk
(centre (0.2, 0.2), radius ``goal_radius`` = 0.05): right through the bottom corridor, up through
gap A, left through the middle corridor, up through gap B, right to the goal. Walls and finger have
friction 0.4, so pressing into a wall while sliding along it costs force and dissipates energy (the
finger meets the walls through explicit ``<contact><pair>``s, which carry that friction themselves;
domain randomization's ``geom_friction_scale`` scales it there).

Observation (float64, ``OBS_DIM`` = 10):

=====  =====================  ==================================================================
index  constant               what
=====  =====================  ==================================================================
0:2    ``OBS_EE_POS``         finger position x, y [m] (= qpos)
2:4    ``OBS_EE_VEL``         finger velocity [m/s] (= qvel, the velocities the motors act on)
4:6    ``OBS_GOAL_REL``       goal centre minus finger position [m]
6:8    ``OBS_WAYPOINT_REL``   current sub-goal minus finger position [m] (gap A, gap B, the goal)
8:10   ``OBS_CONTACT_FORCE``  net contact force the walls exert on the finger, world x, y [N]
=====  =====================  ==================================================================

The contact force comes from a MuJoCo ``contact`` sensor; like every MjData output after
``mj_step`` it describes the last substep's contacts (it lags the position by one substep, 4 ms).

Reward per step::

    progress_reward_weight * (d(p_before) - d(p_after))   # progress along the maze, in metres
  + success_reward * is_success
  - ctrl_cost_weight * |action|^2
  - energy_cost_weight * cost                              # 0 by default: passivity-aware learners
                                                           # read info["cost"] instead

where d(p) = |p - sub-goal(p)| + path length from that sub-goal to the goal, and the sub-goal is
chosen by the corridor the finger is in: in the bottom corridor (and inside gap A) it is the point
just past gap A (0.225, -0.065), where the finger clears wall A; in the middle corridor the point
just past gap B (-0.225, 0.135); in the top corridor the goal. d is continuous at each sub-goal and
only drops when the finger crosses into the next corridor (triangle inequality), so crossing is
never penalised. The progress term is potential-based shaping, so it does not change the optimal
policy; and it has no local optimum against a wall: each sub-goal lies past the end of the wall in
the way, so sliding along that wall still makes progress. Pushing straight at a sub-goal makes the
finger meet the walls (e.g. the underside of wall A on the way to gap A) and slide along them.
Success: the finger centre is within ``goal_radius`` of the goal; the episode then terminates
(``terminate_on_success=True``, default) with ``success_reward`` once. With
``terminate_on_success=False`` it runs to the time limit and every step in the goal disk earns the
bonus (for studies of holding a position against the walls' and table's friction).

"Potential-based" above holds for an undiscounted return; with gamma < 1 the shaping favours
reaching the goal sooner, which is the point. The route through the maze is about 1.4 m long, so a
solving episode returns about 14 in progress plus the success bonus (about 22.5 in all).

Energy terms (info, per control step; q = (x, y), tau = qfrc_actuator = force on each joint [N]):

* ``injected_energy`` = tau . (q_after - q_before) [J]: the work the motors did during the step.
  Exact: tau is constant over the step (the control is held) and the semi-implicit Euler
  integrator moves q by timestep * qvel_new each substep, so this equals the substep sum
  sum_k tau . qvel_k * timestep. Positive when the controller pushes energy in, negative when it
  brakes.
* ``power`` = tau . qvel [W] at the end of the step (what a robot's controller sees).
* ``dissipated_energy`` = sum_j damping_j * (q_after_j - q_before_j)^2 / dt [J], with the damping the
  step ran with (the model's current ``dof_damping``: domain randomization's, ``set_physics_params``'s or
  sim2sim's; ``energy_filter_spec`` gives the filter the nominal 4 N s/m): a lower bound of the viscous
  loss (the loss is damping * the sum of qvel_k^2 * timestep over the substeps, at least
  damping * dq^2 / dt by Cauchy-Schwarz, equal at constant velocity; the end-of-step
  damping * qvel^2 * dt over-states it whenever the finger accelerates within the step).
  Dry friction and wall friction dissipate more than this.
* ``cost`` = max(injected_energy, 0): the energy-injection cost of passivity-aware training.
* ``kinetic_energy`` = 1/2 * sum_j mass_j * qvel_j^2 [J] at the end of the step, mass_j the current mass
  joint j moves (its body's subtree, plus armature: the model's ``dof_M0`` for a slide joint).
* ``contact_force`` = norm of the finger's net contact force [N]; ``is_success`` (bool).

``energy_filter_spec`` gives the ``energy_tank`` filter settings (velocity indices in the
observation, torque scale, damping, dt) that sim2real's passivity filter needs for this task.

The step arithmetic lives in the array functions below (``observation``, ``step_terms``, ...), which
work on [N, ...] numpy arrays and torch tensors; this gymnasium env calls them with N = 1 and the
batched task (``envs.mujoco.contact_maze_task``) with all N envs, so both compute the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mujoco
import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from gymnasium.spaces import Box

XML_PATH = str(Path(__file__).resolve().parent / "assets" / "contact_maze.xml")

# -- the model's numbers (tests/envs/test_contact_maze.py checks they match the XML) ---------------
GEAR = 3.0  # N per unit of action
DAMPING = 4.0  # N s/m, each joint
FRICTIONLOSS = 0.5  # N, each joint (the table's dry friction)
MASS = 0.2  # kg
TIMESTEP = 0.004  # s
FRAME_SKIP = 10
CONTROL_DT = TIMESTEP * FRAME_SKIP  # 0.04 s
MAX_EPISODE_STEPS = 200

# -- the maze ------------------------------------------------------------------------------------------
START = np.array([-0.2, -0.2])
GOAL = np.array([0.2, 0.2])
GOAL_RADIUS = 0.05
FINGER_RADIUS = 0.025
ARENA = 0.3  # the arena's inside is [-ARENA, ARENA]^2
WALL_Y = (-0.1, 0.1)  # centre lines of wall A and wall B (0.02 m thick)
WALL_HALF_THICKNESS = 0.01
# how far the start may move along each axis with the finger still clear of every wall: 0.065 m, up to wall A's
# underside (a larger reset noise starts it inside wall A or beyond it, or inside the arena's wall or outside it)
START_CLEARANCE = float(min(START[0] - (-ARENA + FINGER_RADIUS), START[1] - (-ARENA + FINGER_RADIUS),
                            (WALL_Y[0] - WALL_HALF_THICKNESS - FINGER_RADIUS) - START[1]))
# A finger has passed a wall once its centre is above the wall's top face by its radius: these
# lines split the plane into the three corridors (bottom, middle, top), the gaps counting as below.
CROSSING_Y = (-0.065, 0.135)
# sub-goal of each corridor: where the finger has just cleared gap A, gap B, and then the goal
WAYPOINTS = np.array([[0.225, CROSSING_Y[0]], [-0.225, CROSSING_Y[1]], [GOAL[0], GOAL[1]]])
# path length from each sub-goal to the goal through the later ones
REMAINING = np.array([
    float(np.linalg.norm(WAYPOINTS[1] - WAYPOINTS[0]) + np.linalg.norm(WAYPOINTS[2] - WAYPOINTS[1])),
    float(np.linalg.norm(WAYPOINTS[2] - WAYPOINTS[1])),
    0.0,
])

# -- observation layout ----------------------------------------------------------------------------------
OBS_EE_POS = slice(0, 2)
OBS_EE_VEL = slice(2, 4)
OBS_GOAL_REL = slice(4, 6)
OBS_WAYPOINT_REL = slice(6, 8)
OBS_CONTACT_FORCE = slice(8, 10)
OBS_DIM = 10
VELOCITY_INDEX = (2, 3)  # the joint velocities in the observation, in actuator order
POSITION_INDEX = (0, 1)  # the joint positions, same order

DEFAULT_CAMERA_CONFIG = {"distance": 1.1, "elevation": -90.0, "azimuth": 90.0, "lookat": np.array([0.0, 0.0, 0.0])}


def energy_filter_spec(initial_energy: float = 1.0, min_energy: float = 0.0, max_energy: float = 2.0,
                       dt: float = CONTROL_DT) -> dict[str, Any]:
    """The ``energy_tank`` passivity-filter settings for this task (energies in J, dt in s).

    The filter reads the joint positions and velocities at ``position_index`` and ``velocity_index``
    of the observation, turns an action into joint forces with ``torque_scale`` (N per unit of
    action), settles each step's real work ``tau . (q - q_prev)``, and credits the tank with the
    viscous loss's lower bound ``damping * (q - q_prev)^2 / dt`` and the table's dry-friction loss ``friction * |q - q_prev|``
    (wall friction is not credited: it depends on contact forces). A full-force push at top speed
    injects about 1.9 W, most of which the damping and the table's friction take back: trained SAC
    policies inject about 4 J per successful episode and dip about 0.2 J below the tank's starting
    level, so the default 1 J tank (2 J cap) is generous; tanks of 0.25 J and less bind
    (benchmarks/passivity.py).

    The damping, gear and friction are the built-in model's nominal values: on a plant with less damping or
    more gain (domain randomization, ``sim2sim.physics``, a custom ``xml_file``) the filter over-credits the
    viscous loss or under-counts the work, and its guarantee does not hold.
    """
    if not min_energy <= initial_energy <= max_energy:
        raise ValueError(f"energy_filter_spec: need min_energy <= initial_energy <= max_energy, got "
                         f"{min_energy}, {initial_energy}, {max_energy}")
    if dt <= 0:
        raise ValueError(f"energy_filter_spec: dt must be > 0, got {dt}")
    return {
        "type": "energy_tank",
        "velocity_index": list(VELOCITY_INDEX),
        "position_index": list(POSITION_INDEX),
        "work_bound": "damped",
        "torque_scale": [GEAR, GEAR],
        "damping": [DAMPING, DAMPING],
        "friction": [FRICTIONLOSS, FRICTIONLOSS],
        "dt": float(dt),
        "initial_energy": float(initial_energy),
        "min_energy": float(min_energy),
        "max_energy": float(max_energy),
    }


# -- array functions: [N, ...] numpy arrays or torch tensors ------------------------------------------
def _is_np(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def _sqrt(x: Any) -> Any:
    return np.sqrt(x) if _is_np(x) else x.sqrt()


def _where(cond: Any, a: Any, b: Any) -> Any:
    if _is_np(cond):
        return np.where(cond, a, b)
    import torch

    return torch.where(cond, a, b)


def _stack(cols: list[Any]) -> Any:
    if _is_np(cols[0]):
        return np.stack(cols, axis=1)
    import torch

    return torch.stack(cols, dim=1)


def _cat(parts: list[Any]) -> Any:
    if _is_np(parts[0]):
        return np.concatenate(parts, axis=1)
    import torch

    return torch.cat(parts, dim=1)


def _norm2(x: Any, y: Any) -> Any:
    """sqrt(x^2 + y^2) elementwise: each env's number is computed alone, so N does not change it."""
    return _sqrt(x * x + y * y)


def corridor(pos: Any) -> Any:
    """Which corridor each finger is in [N] (0 bottom, 1 middle, 2 top): the walls it has passed."""
    y = pos[:, 1]
    return (y > CROSSING_Y[0]) * 1 + (y > CROSSING_Y[1]) * 1


def _per_corridor(c: Any, values: np.ndarray, like: Any) -> Any:
    """values[c] for every env [N], in ``like``'s dtype and device."""
    if not _is_np(like):
        import torch

        values = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return _where(c == 0, values[0], _where(c == 1, values[1], values[2]))


def subgoal(pos: Any) -> tuple[Any, Any]:
    """The sub-goal [N, 2] of each finger's corridor and the path length [N] from it to the goal."""
    c = corridor(pos)
    target = _stack([_per_corridor(c, WAYPOINTS[:, 0], pos), _per_corridor(c, WAYPOINTS[:, 1], pos)])
    return target, _per_corridor(c, REMAINING, pos)


def path_distance(pos: Any) -> Any:
    """Distance [N] to the goal through the maze's gaps: |p - sub-goal| + the rest of the path."""
    target, rest = subgoal(pos)
    return _norm2(target[:, 0] - pos[:, 0], target[:, 1] - pos[:, 1]) + rest


def goal_distance(pos: Any) -> Any:
    return _norm2(GOAL[0] - pos[:, 0], GOAL[1] - pos[:, 1])


def wall_force(sensordata: Any) -> Any:
    """Force [N, 3] the walls exert on the finger (the sensor reports the finger's force on them)."""
    return -sensordata[:, 0:3]


def observation(qpos: Any, qvel: Any, sensordata: Any) -> Any:
    """Observations [N, OBS_DIM] (layout in the module docstring)."""
    target, _ = subgoal(qpos)
    goal_rel = _stack([GOAL[0] - qpos[:, 0], GOAL[1] - qpos[:, 1]])
    return _cat([qpos[:, 0:2], qvel[:, 0:2], goal_rel, target - qpos[:, 0:2], wall_force(sensordata)[:, 0:2]])


def joint_mass(body_mass: Any, model: Any) -> Any:
    """The mass [N, nv] each joint moves, from each simulation's current body masses [N, nbody]: the mass of the
    joint's body and all bodies below it, plus the joint's armature (what ``mj_setConst`` puts in ``dof_M0`` for a
    slide joint). Domain randomization rewrites the masses, so this is computed from them at every step."""
    subtree = body_mass.copy() if _is_np(body_mass) else body_mass.clone()
    for b in range(model.nbody - 1, 0, -1):  # children come after their parents
        subtree[:, model.body_parentid[b]] += subtree[:, b]
    armature = model.dof_armature if _is_np(subtree) else __import__("torch").as_tensor(
        model.dof_armature, dtype=subtree.dtype, device=subtree.device)
    return subtree[:, model.dof_bodyid] + armature


def step_terms(p: dict[str, Any], damping: Any, mass: Any, dt: float, qpos_before: Any, qpos: Any,
               qvel: Any, qfrc_actuator: Any, sensordata: Any, action: Any) -> tuple[Any, Any, dict[str, Any]]:
    """reward [N], terminated [N] and info terms [N] of one control step (see the module docstring).

    ``p`` holds the env's keyword arguments (reward weights, goal radius, terminate_on_success),
    ``damping`` and ``mass`` each env's current joint damping and moved mass [N, 2] (the model's ``dof_damping`` and
    ``joint_mass``, as randomization left them for this episode), ``action`` the commanded action [N, 2].
    """
    progress = path_distance(qpos_before) - path_distance(qpos)
    distance = goal_distance(qpos)
    success = distance < p["goal_radius"]
    dq0, dq1 = qpos[:, 0] - qpos_before[:, 0], qpos[:, 1] - qpos_before[:, 1]
    injected = qfrc_actuator[:, 0] * dq0 + qfrc_actuator[:, 1] * dq1
    power = qfrc_actuator[:, 0] * qvel[:, 0] + qfrc_actuator[:, 1] * qvel[:, 1]
    v0, v1 = qvel[:, 0], qvel[:, 1]
    dissipated = (damping[:, 0] * dq0 * dq0 + damping[:, 1] * dq1 * dq1) / dt  # a lower bound of the viscous loss
    kinetic = 0.5 * (mass[:, 0] * v0 * v0 + mass[:, 1] * v1 * v1)
    cost = _where(injected > 0, injected, 0.0)
    force = wall_force(sensordata)
    contact = _sqrt(force[:, 0] * force[:, 0] + force[:, 1] * force[:, 1] + force[:, 2] * force[:, 2])
    a = action.astype(np.float64) if _is_np(action) else action.to(qpos.dtype)  # float32 actions, float64 sums
    ctrl = a[:, 0] * a[:, 0] + a[:, 1] * a[:, 1]
    reward_progress = p["progress_reward_weight"] * progress
    reward_success = p["success_reward"] * (success * 1.0 if _is_np(success) else success.to(qpos.dtype))
    reward_ctrl = -p["ctrl_cost_weight"] * ctrl
    reward_energy = -p["energy_cost_weight"] * cost
    reward = reward_progress + reward_success + reward_ctrl + reward_energy
    terminated = success & bool(p["terminate_on_success"])
    info = {
        "is_success": success, "distance": distance, "path_distance": path_distance(qpos),
        "power": power, "injected_energy": injected, "dissipated_energy": dissipated, "cost": cost,
        "kinetic_energy": kinetic, "contact_force": contact,
        "reward_progress": reward_progress, "reward_success": reward_success, "reward_ctrl": reward_ctrl,
        "reward_energy": reward_energy,
    }
    return reward, terminated, info


def reset_state(rng: np.random.Generator, init_qpos: np.ndarray, init_qvel: np.ndarray,
                noise: float) -> tuple[np.ndarray, np.ndarray]:
    """A new episode's qpos, qvel: near START, at rest (the one draw from the env's generator)."""
    qpos = init_qpos + START + rng.uniform(low=-noise, high=noise, size=2)
    return qpos, init_qvel.copy()


class ContactMazeEnv(MujocoEnv, utils.EzPickle):
    """The gymnasium env ``robo_rl/ContactMaze-v0`` (see the module docstring).

    Args:
        xml_file: the MJCF model; another file must keep the finger's two slide joints, two motors
            and the contact sensor (the energy terms read the model's own damping and masses).
        frame_skip: physics substeps per control step.
        progress_reward_weight: reward per metre of progress along the maze.
        success_reward: one-off reward on reaching the goal.
        ctrl_cost_weight: weight of |action|^2.
        energy_cost_weight: weight of the injected-energy cost in the reward (0: reward ignores it).
        goal_radius: success when the finger centre is this close to the goal [m].
        terminate_on_success: end the episode on success (else it runs to the time limit).
        reset_noise_scale: start position noise, uniform +- this per axis [m].
    """

    metadata = {"render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"]}

    def __init__(
        self,
        xml_file: str = XML_PATH,
        frame_skip: int = FRAME_SKIP,
        default_camera_config: dict[str, Any] = DEFAULT_CAMERA_CONFIG,
        progress_reward_weight: float = 10.0,
        success_reward: float = 10.0,
        ctrl_cost_weight: float = 0.01,
        energy_cost_weight: float = 0.0,
        goal_radius: float = GOAL_RADIUS,
        terminate_on_success: bool = True,
        reset_noise_scale: float = 0.02,
        **kwargs: Any,
    ) -> None:
        utils.EzPickle.__init__(self, xml_file, frame_skip, default_camera_config, progress_reward_weight,
                                success_reward, ctrl_cost_weight, energy_cost_weight, goal_radius,
                                terminate_on_success, reset_noise_scale, **kwargs)
        self.p = {
            "progress_reward_weight": progress_reward_weight, "success_reward": success_reward,
            "ctrl_cost_weight": ctrl_cost_weight, "energy_cost_weight": energy_cost_weight,
            "goal_radius": goal_radius, "terminate_on_success": terminate_on_success,
        }
        self._reset_noise_scale = reset_noise_scale
        check_kwargs({**self.p, "reset_noise_scale": reset_noise_scale})
        observation_space = Box(low=-np.inf, high=np.inf, shape=(OBS_DIM,), dtype=np.float64)
        MujocoEnv.__init__(self, xml_file, frame_skip, observation_space=observation_space,
                           default_camera_config=default_camera_config, **kwargs)
        check_model(self.model, xml_file)
        self.metadata = {**type(self).metadata, "render_fps": int(np.round(1.0 / self.dt))}

    def _get_obs(self) -> np.ndarray:
        return observation(self.data.qpos[None], self.data.qvel[None], self.data.sensordata[None])[0]

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not np.all(np.isfinite(action)):  # MuJoCo would reset the finger to qpos0, in the middle corridor, and go on
            raise ValueError(f"robo_rl/ContactMaze-v0: non-finite action {np.asarray(action)!r}; check the policy")
        qpos_before = self.data.qpos.copy()
        self.do_simulation(action, self.frame_skip)
        d = self.data
        # the model's current damping and masses: domain randomization and sim2sim rewrite them between episodes
        m = self.model
        reward, terminated, info = step_terms(self.p, m.dof_damping[None], joint_mass(m.body_mass[None], m), self.dt,
                                              qpos_before[None], d.qpos[None], d.qvel[None], d.qfrc_actuator[None],
                                              d.sensordata[None], np.asarray(action)[None])
        obs = self._get_obs()
        if self.render_mode == "human":
            self.render()
        info = {k: (bool(v[0]) if v.dtype == bool else float(v[0])) for k, v in info.items()}
        return obs, float(reward[0]), bool(terminated[0]), False, info

    def reset_model(self) -> np.ndarray:
        qpos, qvel = reset_state(self.np_random, self.init_qpos, self.init_qvel, self._reset_noise_scale)
        self.set_state(qpos, qvel)
        return self._get_obs()


def check_kwargs(p: dict[str, Any]) -> None:
    """Fail early, naming the keyword, on settings that silently break the task (both implementations call it)."""
    problems = []
    noise, radius = p["reset_noise_scale"], p["goal_radius"]
    if not (isinstance(noise, (int, float, np.number)) and 0 <= noise <= START_CLEARANCE):
        problems.append(f"reset_noise_scale={noise!r} must be between 0 and {START_CLEARANCE:g} m (the start's clearance "
                        "to wall A): a larger noise starts the finger inside a wall, past wall A or outside the arena")
    if not (isinstance(radius, (int, float, np.number)) and 0 < radius < np.inf):
        problems.append(f"goal_radius={radius!r} must be a distance > 0 m (at 0 no episode can succeed)")
    if problems:
        raise ValueError("robo_rl/ContactMaze-v0: " + "; ".join(problems))


def check_model(model: Any, source: str) -> None:
    """Fail early, naming the file, if a model lacks what the task reads."""
    problems = []
    if model.nq != 2 or model.nv != 2:
        problems.append(f"needs 2 slide joints (nq=nv=2), has nq={model.nq}, nv={model.nv}")
    elif any(t != mujoco.mjtJoint.mjJNT_SLIDE for t in model.jnt_type):  # qpos is read as metres, joint_mass as kg
        kinds = ", ".join(f"{model.joint(j).name or j}: {mujoco.mjtJoint(t).name[6:].lower()}"
                          for j, t in enumerate(model.jnt_type))
        problems.append(f"needs 2 slide joints (the finger's x and y), has {kinds}")
    if model.nu != 2:
        problems.append(f"needs 2 motors, has {model.nu}")
    if model.nsensordata < 3:
        problems.append("needs the finger's contact sensor (3 numbers of sensordata)")
    if problems:
        raise ValueError(f"ContactMaze xml_file {source}: " + "; ".join(problems))
