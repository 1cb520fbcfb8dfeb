"""The gymnasium v5 MuJoCo tasks, computed for N simulations at once.

Each task reproduces its gymnasium class (``gymnasium/envs/mujoco/*_v5.py``) operation for
operation, vectorized over a leading env axis, so that observations, rewards, terminations and
info terms are bit-identical to gymnasium's for the same seeds and actions (tests/envs/
test_mujoco_backend.py drives both side by side). Where gymnasium's arithmetic has a dtype quirk
(the control cost is computed on the float32 action, so it is a float32 number), it is kept.

Keyword arguments and their defaults come from the gymnasium class signature itself, so they
stay in sync with the installed gymnasium and an unknown keyword fails with the list of valid ones.
"""

from __future__ import annotations

import abc
import difflib
import inspect
import logging
import numbers
from typing import Any, ClassVar

import numpy as np

# a child of the "robo_rl" logger (a name, not an import: envs does not import robo_rl): under robo-rl, the console and
# train.log
log = logging.getLogger("robo_rl.envs.mujoco.tasks")

# Constructor arguments of the gymnasium classes that only concern rendering; they do not change the
# simulation. The batched backends' render() uses default_camera_config, width and height as gymnasium does
# (render_mode may only name the RGB frames it draws); it draws with gymnasium's free offscreen camera, so a
# named or numbered camera and visual options are refused rather than ignored. max_geom only sizes a buffer.
RENDER_KWARGS = frozenset({"default_camera_config", "render_mode", "width", "height", "camera_id", "camera_name",
                           "max_geom", "visual_options"})
_UNSUPPORTED_RENDER_KWARGS = ("camera_id", "camera_name", "visual_options")


# -- array operations the tasks use ------------------------------------------------------------------
# Tasks run on numpy arrays (the batched CPU backend, bit-identical to gymnasium) and on torch tensors
# on the simulator's device (the MuJoCo Warp backend). Each helper makes, for numpy arrays, exactly
# the numpy call gymnasium's arithmetic needs, and the torch equivalent otherwise.

def _np(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def row_norm(v: Any) -> Any:
    """np.linalg.norm(row, ord=2) for every row, with the same dot-product kernel (bit-identical)."""
    if not _np(v):
        return v.square().sum(-1).sqrt()
    if hasattr(np, "vecdot"):
        return np.sqrt(np.vecdot(v, v))
    return np.sqrt((v[:, None, :] @ v[:, :, None])[:, 0, 0])


def clip(x: Any, low: float, high: float) -> Any:
    """np.clip without its Python wrapper's overhead (same values, NaN propagates)."""
    return np.minimum(np.maximum(x, low), high) if _np(x) else x.clamp(low, high)


def sum_sq(x: Any) -> Any:
    """np.sum(np.square(row)) for every row (numpy reduces each row exactly as for a 1-D array)."""
    if not _np(x):
        return x.reshape(x.shape[0], -1).square().sum(1)
    return np.add.reduce(np.square(x.reshape(x.shape[0], -1)), axis=1)  # np.sum's reduction, without its wrapper


def square_pow(x: Any) -> Any:
    """x ** 2 as gymnasium computes it on a numpy float64 scalar: C pow(x, 2.0), which is 1 ULP from the
    array ``x ** 2`` (an exact x * x) for about 1 value in 1,000. np.float_power calls that same pow per element."""
    return np.float_power(x, 2) if _np(x) else x.square()


def cat(parts: list[Any]) -> Any:
    """Concatenate along the feature axis."""
    if _np(parts[0]):
        return np.concatenate(parts, axis=1)
    import torch

    return torch.cat(parts, dim=1)


def copy(x: Any) -> Any:
    return x.copy() if _np(x) else x.clone()


def all_rows(x: Any) -> Any:
    return np.all(x, axis=1) if _np(x) else x.all(dim=1)


def isfinite(x: Any) -> Any:
    if _np(x):
        return np.isfinite(x)
    import torch

    return torch.isfinite(x)


def sin(x: Any) -> Any:
    return np.sin(x) if _np(x) else x.sin()


def cos(x: Any) -> Any:
    return np.cos(x) if _np(x) else x.cos()


def absolute(x: Any) -> Any:
    return np.abs(x) if _np(x) else x.abs()


def as_float(x: Any) -> Any:
    return x.astype(np.float64) if _np(x) else x.to(__import__("torch").get_default_dtype())


def as_int(x: Any) -> Any:
    return x.astype(np.int64) if _np(x) else x.long()


def falses(like: Any) -> Any:
    """An all-False [N] mask on the array's device."""
    if _np(like):
        return np.zeros(len(like), bool)
    import torch

    return torch.zeros(like.shape[0], dtype=torch.bool, device=like.device)


def center_of_mass(mass: Any, xipos: Any) -> Any:
    """Centre of mass [N, 3] of each simulation: sum_b mass[:, b] * xipos[:, b] / sum_b mass[:, b].

    mass [N, nbody] (each simulation's own), xipos [N, nbody, 3]. For numpy, per row exactly gymnasium's
    ``np.einsum("b,bj->j", model.body_mass, data.xipos) / model.body_mass.sum()`` (bit-identical)."""
    if _np(xipos):
        return np.einsum("nb,nbj->nj", mass, xipos) / np.add.reduce(mass, axis=1)[:, None]
    import torch

    mass = mass.to(xipos.dtype)
    return torch.einsum("nb,nbj->nj", mass, xipos) / mass.sum(1, keepdim=True)


class Sim:
    """What a task reads: live (N, ...) arrays of the simulator (numpy or torch), plus the model."""

    def __init__(self, model: Any, qpos: Any, qvel: Any, ctrl: Any, derived: dict[str, Any], cfrc_ext: Any | None,
                 body_mass: Any, dof_damping: Any) -> None:
        self.model = model
        self.qpos, self.qvel, self.ctrl = qpos, qvel, ctrl
        self.derived = derived  # derived fields as of the last step (one substep behind, as after mj_step)
        self.cfrc_ext = cfrc_ext  # filled by the backend after each step (post-constraint), zero after reset
        # [N, nbody] each simulation's current body masses: the backend keeps it live as randomization rewrites them
        self.body_mass = body_mass
        self.dof_damping = dof_damping  # [N, nv] each simulation's current joint damping, kept live the same way

    def field(self, name: str) -> np.ndarray:
        return self.derived[name]


class Task(abc.ABC):
    """One gymnasium v5 task, vectorized. Subclasses mirror their gymnasium class."""

    gym_id: ClassVar[str]
    gym_class: ClassVar[str]  # "module:Class" under gymnasium.envs.mujoco, or "package.module:Class" (robo-rl's own)
    #: the task reads cfrc_ext, which gymnasium computes with mj_rnePostConstraint after each step
    needs_post_constraint: ClassVar[bool] = False
    #: derived MjData fields the task reads (bound so the batch copies them out after each call)
    derived: ClassVar[tuple[str, ...]] = ()

    def __init__(self, kwargs: dict[str, Any]) -> None:
        defaults = self.gym_defaults()
        unknown = sorted(set(kwargs) - set(defaults) - RENDER_KWARGS)
        if unknown:
            supported = sorted(set(defaults) | (RENDER_KWARGS - set(_UNSUPPORTED_RENDER_KWARGS)))
            close = [m for k in unknown for m in difflib.get_close_matches(k, supported, n=1, cutoff=0.6)]
            raise ValueError(
                f"{self.gym_id}: unsupported keyword argument(s) {', '.join(unknown)}"
                f"{' (did you mean ' + ', '.join(close) + '?)' if close else ''}; supported: {', '.join(supported)}"
            )
        self.p = {**defaults, **{k: v for k, v in kwargs.items() if k not in RENDER_KWARGS}}
        self.render_kwargs = {k: v for k, v in kwargs.items() if k in RENDER_KWARGS}
        if self.render_kwargs.get("render_mode") not in (None, "rgb_array"):  # as the gymnasium backend refuses it
            raise ValueError(f"{self.gym_id}: env.kwargs render_mode={self.render_kwargs['render_mode']!r}: robo-rl draws "
                             "frames with render_mode='rgb_array' (make_env(..., render=True)); leave render_mode out of "
                             "the kwargs")
        refused = [k for k in _UNSUPPORTED_RENDER_KWARGS if self.render_kwargs.get(k) is not None]
        if refused:
            raise ValueError(f"{self.gym_id}: the batched MuJoCo backends render RGB frames with gymnasium's default "
                             f"free camera; {', '.join(refused)} is not supported (env.backend=gymnasium supports it)")
        frame_skip = self.p["frame_skip"]
        # gymnasium hands frame_skip to mj_step(nstep=...), which takes integers only: 2.5 must not become 2
        if isinstance(frame_skip, bool) or not isinstance(frame_skip, numbers.Integral) or frame_skip < 1:
            raise ValueError(f"{self.gym_id}: frame_skip must be an integer >= 1, got {frame_skip!r}")
        self.frame_skip = int(frame_skip)
        self.check_kwargs()

    def check_kwargs(self) -> None:
        """Fail at construction, naming the keyword, on a value the task would fail on later (or run wrongly with)."""
        noise = self.p.get("reset_noise_scale")
        if isinstance(noise, numbers.Real) and not noise >= 0:  # numpy's "high - low < 0" at the first reset
            raise ValueError(f"{self.gym_id}: kwargs reset_noise_scale={noise!r}: must be >= 0 (the half-width of the "
                             "uniform noise on the initial state)")

    @classmethod
    def gym_cls(cls) -> type:
        import importlib

        module, name = cls.gym_class.split(":")
        return getattr(importlib.import_module(module if "." in module else f"gymnasium.envs.mujoco.{module}"), name)

    @classmethod
    def gym_defaults(cls) -> dict[str, Any]:
        sig = inspect.signature(cls.gym_cls().__init__)
        return {k: v.default for k, v in sig.parameters.items()
                if k not in ("self", "kwargs") and k not in RENDER_KWARGS and v.default is not inspect.Parameter.empty}

    def xml_path(self) -> str:
        from gymnasium.envs.mujoco.mujoco_env import expand_model_path

        return expand_model_path(str(self.p["xml_file"]))

    def setup(self, model: Any) -> None:
        """Called once with the compiled model: resolve ids, sizes, dt."""
        self.model = model
        self.dt = model.opt.timestep * self.frame_skip
        self.nq, self.nv = model.nq, model.nv
        self.init_qpos = model.qpos0.copy()  # what gymnasium reads from a fresh MjData

    # -- the per-step pieces ---------------------------------------------------------------------
    @abc.abstractmethod
    def observe(self, sim: Sim) -> np.ndarray:
        """Observations [N, obs_dim] (float64), as gymnasium's _get_obs for every env."""

    def before_step(self, sim: Sim) -> Any:
        return None

    @abc.abstractmethod
    def after_step(self, sim: Sim, before: Any, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """reward [N] float64, terminated [N] bool and info terms, as gymnasium's step for every env."""

    def reset_state(self, rng: np.random.Generator, init_qpos: np.ndarray, init_qvel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """qpos, qvel of a new episode, drawing from ``rng`` exactly as gymnasium's reset_model does."""
        lo, hi = -self.p["reset_noise_scale"], self.p["reset_noise_scale"]
        qpos = init_qpos + rng.uniform(low=lo, high=hi, size=self.nq)
        qvel = init_qvel + rng.uniform(low=lo, high=hi, size=self.nv)
        return qpos, qvel

    def reset_info(self, sim: Sim, ids: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def observation_size(self, sim: Sim) -> int:
        return int(self.observe(sim).shape[1])


def _ctrl_cost(weight: float, action: np.ndarray) -> np.ndarray:
    # gymnasium: weight * np.sum(np.square(action)) on the float32 action -> a float32 number
    return weight * sum_sq(action)


class _Planar(Task):
    """Hopper and Walker2d: forward progress of qpos[0], alive bonus, termination when unhealthy."""

    def observe(self, sim: Sim) -> np.ndarray:
        position = sim.qpos
        velocity = clip(sim.qvel, -10, 10)
        if self.p["exclude_current_positions_from_observation"]:
            position = position[:, 1:]
        return cat([position, velocity])

    def before_step(self, sim: Sim) -> np.ndarray:
        return copy(sim.qpos[:, 0])

    @abc.abstractmethod
    def is_healthy(self, sim: Sim) -> np.ndarray:
        """Healthy mask [N]; the two tasks differ only here."""

    def after_step(self, sim, x_before, action):
        x_after = copy(sim.qpos[:, 0])
        x_velocity = (x_after - x_before) / self.dt
        healthy = self.is_healthy(sim)
        forward_reward = self.p["forward_reward_weight"] * x_velocity
        healthy_reward = healthy * self.p["healthy_reward"]
        rewards = forward_reward + healthy_reward
        ctrl_cost = _ctrl_cost(self.p["ctrl_cost_weight"], action)
        reward = rewards - ctrl_cost
        terminated = ~healthy & bool(self.p["terminate_when_unhealthy"])
        info = {
            "x_position": x_after,
            "z_distance_from_origin": sim.qpos[:, 1] - self.init_qpos[1],
            "x_velocity": x_velocity,
            "reward_forward": forward_reward,
            "reward_ctrl": -ctrl_cost,
            "reward_survive": healthy_reward,
        }
        return reward, terminated, info

    def reset_info(self, sim, ids):
        return {"x_position": sim.qpos[ids, 0], "z_distance_from_origin": sim.qpos[ids, 1] - self.init_qpos[1]}


class Hopper(_Planar):
    gym_id = "Hopper-v5"
    gym_class = "hopper_v5:HopperEnv"

    def is_healthy(self, sim):
        z, angle = sim.qpos[:, 1], sim.qpos[:, 2]
        state = cat([sim.qpos, sim.qvel])[:, 2:]
        min_state, max_state = self.p["healthy_state_range"]
        min_z, max_z = self.p["healthy_z_range"]
        min_angle, max_angle = self.p["healthy_angle_range"]
        healthy_state = all_rows((min_state < state) & (state < max_state))
        return healthy_state & (min_z < z) & (z < max_z) & (min_angle < angle) & (angle < max_angle)


class Walker2d(_Planar):
    gym_id = "Walker2d-v5"
    gym_class = "walker2d_v5:Walker2dEnv"

    def is_healthy(self, sim):
        z, angle = sim.qpos[:, 1], sim.qpos[:, 2]
        min_z, max_z = self.p["healthy_z_range"]
        min_angle, max_angle = self.p["healthy_angle_range"]
        return (min_z < z) & (z < max_z) & (min_angle < angle) & (angle < max_angle)


class HalfCheetah(Task):
    gym_id = "HalfCheetah-v5"
    gym_class = "half_cheetah_v5:HalfCheetahEnv"

    def observe(self, sim):
        position = sim.qpos[:, 1:] if self.p["exclude_current_positions_from_observation"] else sim.qpos
        return cat([position, sim.qvel])

    def before_step(self, sim):
        return copy(sim.qpos[:, 0])

    def after_step(self, sim, x_before, action):
        x_after = copy(sim.qpos[:, 0])
        x_velocity = (x_after - x_before) / self.dt
        forward_reward = self.p["forward_reward_weight"] * x_velocity
        ctrl_cost = _ctrl_cost(self.p["ctrl_cost_weight"], action)
        reward = forward_reward - ctrl_cost
        info = {"x_position": x_after, "x_velocity": x_velocity, "reward_forward": forward_reward, "reward_ctrl": -ctrl_cost}
        return reward, falses(reward), info

    def reset_state(self, rng, init_qpos, init_qvel):
        scale = self.p["reset_noise_scale"]
        qpos = init_qpos + rng.uniform(low=-scale, high=scale, size=self.nq)
        qvel = init_qvel + scale * rng.standard_normal(self.nv)
        return qpos, qvel

    def reset_info(self, sim, ids):
        return {"x_position": sim.qpos[ids, 0]}


class Swimmer(Task):
    gym_id = "Swimmer-v5"
    gym_class = "swimmer_v5:SwimmerEnv"

    def observe(self, sim):
        position = sim.qpos[:, 2:] if self.p["exclude_current_positions_from_observation"] else sim.qpos
        return cat([position, sim.qvel])

    def before_step(self, sim):
        return copy(sim.qpos[:, 0:2])

    def after_step(self, sim, xy_before, action):
        xy_after = copy(sim.qpos[:, 0:2])
        xy_velocity = (xy_after - xy_before) / self.dt
        x_velocity, y_velocity = xy_velocity[:, 0], xy_velocity[:, 1]
        forward_reward = self.p["forward_reward_weight"] * x_velocity
        ctrl_cost = _ctrl_cost(self.p["ctrl_cost_weight"], action)
        reward = forward_reward - ctrl_cost
        info = {
            "x_position": xy_after[:, 0], "y_position": xy_after[:, 1], "distance_from_origin": row_norm(xy_after),
            "x_velocity": x_velocity, "y_velocity": y_velocity, "reward_forward": forward_reward, "reward_ctrl": -ctrl_cost,
        }
        return reward, falses(reward), info

    def reset_info(self, sim, ids):
        xy = sim.qpos[ids, 0:2]
        return {"x_position": xy[:, 0], "y_position": xy[:, 1], "distance_from_origin": row_norm(xy)}


class Ant(Task):
    gym_id = "Ant-v5"
    gym_class = "ant_v5:AntEnv"
    needs_post_constraint = True
    derived = ("xpos",)

    def setup(self, model):
        super().setup(model)
        main = self.p["main_body"]
        self.main_body = model.body(main).id if isinstance(main, str) else int(main)

    def contact_forces(self, sim):
        lo, hi = self.p["contact_force_range"]
        return clip(sim.cfrc_ext, lo, hi)

    def observe(self, sim):
        position = sim.qpos[:, 2:] if self.p["exclude_current_positions_from_observation"] else sim.qpos
        parts = [position, sim.qvel]
        if self.p["include_cfrc_ext_in_observation"]:
            parts.append(self.contact_forces(sim)[:, 1:].reshape(len(position), -1))
        return cat(parts)

    def before_step(self, sim):
        return copy(sim.field("xpos")[:, self.main_body, :2])

    def after_step(self, sim, xy_before, action):
        xy_after = copy(sim.field("xpos")[:, self.main_body, :2])
        xy_velocity = (xy_after - xy_before) / self.dt
        x_velocity, y_velocity = xy_velocity[:, 0], xy_velocity[:, 1]
        state = cat([sim.qpos, sim.qvel])
        min_z, max_z = self.p["healthy_z_range"]
        healthy = all_rows(isfinite(state)) & (min_z <= state[:, 2]) & (state[:, 2] <= max_z)
        forward_reward = x_velocity * self.p["forward_reward_weight"]
        healthy_reward = healthy * self.p["healthy_reward"]
        rewards = forward_reward + healthy_reward
        ctrl_cost = _ctrl_cost(self.p["ctrl_cost_weight"], action)
        contact_cost = self.p["contact_cost_weight"] * sum_sq(self.contact_forces(sim))
        costs = ctrl_cost + contact_cost
        reward = rewards - costs
        terminated = ~healthy & bool(self.p["terminate_when_unhealthy"])
        info = {
            "x_position": copy(sim.qpos[:, 0]), "y_position": copy(sim.qpos[:, 1]),
            "distance_from_origin": row_norm(sim.qpos[:, 0:2]), "x_velocity": x_velocity, "y_velocity": y_velocity,
            "reward_forward": forward_reward, "reward_ctrl": -ctrl_cost, "reward_contact": -contact_cost,
            "reward_survive": healthy_reward,
        }
        return reward, terminated, info

    def reset_state(self, rng, init_qpos, init_qvel):
        scale = self.p["reset_noise_scale"]
        qpos = init_qpos + rng.uniform(low=-scale, high=scale, size=self.nq)
        qvel = init_qvel + scale * rng.standard_normal(self.nv)
        return qpos, qvel

    def reset_info(self, sim, ids):
        return {"x_position": sim.qpos[ids, 0], "y_position": sim.qpos[ids, 1],
                "distance_from_origin": row_norm(sim.qpos[ids, 0:2])}


class Humanoid(Task):
    gym_id = "Humanoid-v5"
    gym_class = "humanoid_v5:HumanoidEnv"
    needs_post_constraint = True
    derived = ("xipos", "cinert", "cvel", "qfrc_actuator", "ten_length", "ten_velocity")

    def mass_center(self, sim):
        # gymnasium reads the live model.body_mass: with randomized masses, each simulation's own
        return copy(center_of_mass(sim.body_mass, sim.field("xipos"))[:, 0:2])

    def observe(self, sim):
        n = sim.qpos.shape[0]
        position = sim.qpos[:, 2:] if self.p["exclude_current_positions_from_observation"] else sim.qpos
        parts = [position, sim.qvel]
        if self.p["include_cinert_in_observation"] is True:
            parts.append(sim.field("cinert")[:, 1:].reshape(n, -1))
        if self.p["include_cvel_in_observation"] is True:
            parts.append(sim.field("cvel")[:, 1:].reshape(n, -1))
        if self.p["include_qfrc_actuator_in_observation"] is True:
            parts.append(sim.field("qfrc_actuator")[:, 6:])
        if self.p["include_cfrc_ext_in_observation"] is True:
            parts.append(sim.cfrc_ext[:, 1:].reshape(n, -1))
        return cat(parts)

    def before_step(self, sim):
        return self.mass_center(sim)

    def after_step(self, sim, xy_before, action):
        xy_after = self.mass_center(sim)
        xy_velocity = (xy_after - xy_before) / self.dt
        x_velocity, y_velocity = xy_velocity[:, 0], xy_velocity[:, 1]
        min_z, max_z = self.p["healthy_z_range"]
        healthy = (min_z < sim.qpos[:, 2]) & (sim.qpos[:, 2] < max_z)
        forward_reward = self.p["forward_reward_weight"] * x_velocity
        healthy_reward = healthy * self.p["healthy_reward"]
        rewards = forward_reward + healthy_reward
        ctrl_cost = self.p["ctrl_cost_weight"] * sum_sq(sim.ctrl)  # gymnasium uses data.ctrl (float64) here
        min_cost, max_cost = self.p["contact_cost_range"]
        contact_cost = clip(self.p["contact_cost_weight"] * sum_sq(sim.cfrc_ext), min_cost, max_cost)
        costs = ctrl_cost + contact_cost
        reward = rewards - costs
        terminated = ~healthy & bool(self.p["terminate_when_unhealthy"])
        info = {
            "x_position": copy(sim.qpos[:, 0]), "y_position": copy(sim.qpos[:, 1]),
            "tendon_length": copy(sim.field("ten_length")), "tendon_velocity": copy(sim.field("ten_velocity")),
            "distance_from_origin": row_norm(sim.qpos[:, 0:2]), "x_velocity": x_velocity, "y_velocity": y_velocity,
            "reward_survive": healthy_reward, "reward_forward": forward_reward, "reward_ctrl": -ctrl_cost,
            "reward_contact": -contact_cost,
        }
        return reward, terminated, info

    def reset_info(self, sim, ids):
        return {"x_position": sim.qpos[ids, 0], "y_position": sim.qpos[ids, 1],
                "tendon_length": sim.field("ten_length")[ids], "tendon_velocity": sim.field("ten_velocity")[ids],
                "distance_from_origin": row_norm(sim.qpos[ids, 0:2])}


class HumanoidStandup(Humanoid):
    """Humanoid-v5's body and observation, lying down at the start: reward for raising the torso.

    gymnasium v5 computes the height term without ``uph_cost_weight`` (it accepts the keyword and never
    reads it); this mirrors that, so a run matches gymnasium's reward, and says so when it is set.
    """

    gym_id = "HumanoidStandup-v5"
    gym_class = "humanoidstandup_v5:HumanoidStandupEnv"
    derived = ("cinert", "cvel", "qfrc_actuator", "ten_length", "ten_velocity")

    def __init__(self, kwargs):
        super().__init__(kwargs)
        if self.p["uph_cost_weight"] != self.gym_defaults()["uph_cost_weight"]:
            # a log warning, not warnings.warn: that printed "<file>:<line>: UserWarning: ..." with a source line, was not
            # in train.log, and was shown once per process (a -m sweep's later jobs said nothing)
            log.warning(f"{self.gym_id}: uph_cost_weight={self.p['uph_cost_weight']} has no effect (gymnasium v5's "
                        "reward never reads it; robo-rl's batched task matches gymnasium)")

    def before_step(self, sim):
        return None

    def after_step(self, sim, before, action):
        uph_cost = sim.qpos[:, 2] / self.model.opt.timestep  # gymnasium: (pos_after - 0) / timestep
        ctrl_cost = self.p["ctrl_cost_weight"] * sum_sq(sim.ctrl)  # data.ctrl (float64), as gymnasium
        min_cost, max_cost = self.p["impact_cost_range"]
        impact_cost = clip(self.p["impact_cost_weight"] * sum_sq(sim.cfrc_ext), min_cost, max_cost)
        reward = uph_cost - ctrl_cost - impact_cost + 1
        info = {**self._position_info(sim, slice(None)),
                "reward_linup": uph_cost, "reward_quadctrl": -ctrl_cost, "reward_impact": -impact_cost}
        return reward, falses(reward), info

    def _position_info(self, sim, ids):
        return {"x_position": copy(sim.qpos[ids, 0]), "y_position": copy(sim.qpos[ids, 1]),
                "z_distance_from_origin": sim.qpos[ids, 2] - self.init_qpos[2],
                "tendon_length": copy(sim.field("ten_length")[ids]),
                "tendon_velocity": copy(sim.field("ten_velocity")[ids])}

    def reset_info(self, sim, ids):
        return self._position_info(sim, ids)


class InvertedPendulum(Task):
    gym_id = "InvertedPendulum-v5"
    gym_class = "inverted_pendulum_v5:InvertedPendulumEnv"

    def observe(self, sim):
        return cat([sim.qpos, sim.qvel])

    def after_step(self, sim, before, action):
        obs = self.observe(sim)
        terminated = ~all_rows(isfinite(obs)) | (absolute(obs[:, 1]) > 0.2)
        reward = as_float(~terminated)
        return reward, terminated, {"reward_survive": reward}


class InvertedDoublePendulum(Task):
    gym_id = "InvertedDoublePendulum-v5"
    gym_class = "inverted_double_pendulum_v5:InvertedDoublePendulumEnv"
    derived = ("site_xpos", "qfrc_constraint")

    def observe(self, sim):
        qpos = sim.qpos
        return cat([
            qpos[:, :1], sin(qpos[:, 1:]), cos(qpos[:, 1:]), clip(sim.qvel, -10, 10),
            clip(sim.field("qfrc_constraint"), -10, 10)[:, :1],
        ])

    def after_step(self, sim, before, action):
        tip = sim.field("site_xpos")[:, 0]
        x, y = copy(tip[:, 0]), copy(tip[:, 2])
        terminated = y <= 1
        v1, v2 = sim.qvel[:, 1], sim.qvel[:, 2]
        dist_penalty = 0.01 * square_pow(x) + square_pow(y - 2)  # gymnasium: on scalars, x**2 is pow(x, 2)
        vel_penalty = 0.001 * square_pow(v1) + 0.005 * square_pow(v2)
        alive_bonus = self.p["healthy_reward"] * as_int(~terminated)
        reward = alive_bonus - dist_penalty - vel_penalty
        info = {"reward_survive": alive_bonus, "distance_penalty": -dist_penalty, "velocity_penalty": -vel_penalty}
        return reward, terminated, info

    def reset_state(self, rng, init_qpos, init_qvel):
        scale = self.p["reset_noise_scale"]
        qpos = init_qpos + rng.uniform(low=-scale, high=scale, size=self.nq)
        qvel = init_qvel + rng.standard_normal(self.nv) * scale
        return qpos, qvel


class Reacher(Task):
    gym_id = "Reacher-v5"
    gym_class = "reacher_v5:ReacherEnv"
    derived = ("xpos",)

    def setup(self, model):
        super().setup(model)
        self.fingertip, self.target = model.body("fingertip").id, model.body("target").id

    def _vec(self, sim):
        xpos = sim.field("xpos")
        return xpos[:, self.fingertip] - xpos[:, self.target]

    def observe(self, sim):
        theta = sim.qpos[:, :2]
        return cat([cos(theta), sin(theta), sim.qpos[:, 2:], sim.qvel[:, :2], self._vec(sim)[:, :2]])

    def after_step(self, sim, before, action):
        reward_dist = -row_norm(self._vec(sim)) * self.p["reward_dist_weight"]
        reward_ctrl = -sum_sq(action) * self.p["reward_control_weight"]
        reward = reward_dist + reward_ctrl
        return reward, falses(reward), {"reward_dist": reward_dist, "reward_ctrl": reward_ctrl}

    def reset_state(self, rng, init_qpos, init_qvel):
        qpos = rng.uniform(low=-0.1, high=0.1, size=self.nq) + init_qpos
        while True:
            goal = rng.uniform(low=-0.2, high=0.2, size=2)
            if np.linalg.norm(goal) < 0.2:
                break
        qpos[-2:] = goal
        qvel = init_qvel + rng.uniform(low=-0.005, high=0.005, size=self.nv)
        qvel[-2:] = 0
        return qpos, qvel


class Pusher(Task):
    gym_id = "Pusher-v5"
    gym_class = "pusher_v5:PusherEnv"
    derived = ("xpos",)

    def setup(self, model):
        super().setup(model)
        self.tips, self.obj, self.goal = (model.body(n).id for n in ("tips_arm", "object", "goal"))

    def observe(self, sim):
        xpos = sim.field("xpos")
        return cat([sim.qpos[:, :7], sim.qvel[:, :7], xpos[:, self.tips], xpos[:, self.obj], xpos[:, self.goal]])

    def after_step(self, sim, before, action):
        xpos = sim.field("xpos")
        vec_1 = xpos[:, self.obj] - xpos[:, self.tips]
        vec_2 = xpos[:, self.obj] - xpos[:, self.goal]
        reward_near = -row_norm(vec_1) * self.p["reward_near_weight"]
        reward_dist = -row_norm(vec_2) * self.p["reward_dist_weight"]
        reward_ctrl = -sum_sq(action) * self.p["reward_control_weight"]
        reward = reward_dist + reward_ctrl + reward_near
        info = {"reward_dist": reward_dist, "reward_ctrl": reward_ctrl, "reward_near": reward_near}
        return reward, falses(reward), info

    def reset_state(self, rng, init_qpos, init_qvel):
        qpos = init_qpos.copy()
        goal_pos = np.asarray([0, 0])
        while True:
            cylinder_pos = np.concatenate([rng.uniform(low=-0.3, high=0, size=1), rng.uniform(low=-0.2, high=0.2, size=1)])
            if np.linalg.norm(cylinder_pos - goal_pos) > 0.17:
                break
        qpos[-4:-2] = cylinder_pos
        qpos[-2:] = goal_pos
        qvel = init_qvel + rng.uniform(low=-0.005, high=0.005, size=self.nv)
        qvel[-4:] = 0
        return qpos, qvel


# robo-rl's own MuJoCo tasks (gymnasium envs under envs/tasks) subclass Task in their own files
from envs.mujoco.contact_maze_task import ContactMaze  # noqa: E402  (needs Task above)

TASKS: dict[str, type[Task]] = {cls.gym_id: cls for cls in (
    Hopper, Walker2d, HalfCheetah, Swimmer, Ant, Humanoid, HumanoidStandup, InvertedPendulum, InvertedDoublePendulum, Reacher, Pusher,
    ContactMaze,
)}


def task_for(task_id: str, kwargs: dict[str, Any]) -> Task:
    try:
        cls = TASKS[task_id]
    except KeyError:
        close = difflib.get_close_matches(task_id, list(TASKS), n=2, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "."  # a sentence either way, before "It covers"
        raise ValueError(
            f"env.backend=mujoco has no task {task_id!r}{hint} It covers {', '.join(TASKS)}; "
            "any other gymnasium id runs on env.backend=gymnasium"
        ) from None
    return cls(kwargs)

