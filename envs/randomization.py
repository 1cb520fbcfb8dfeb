"""Domain randomization: per-env, per-episode physics parameters, observation/action noise, delay.

Physics parameters are scale factors on the model's nominal values, drawn independently per env
(and per body / joint / actuator) at every reset of that env:

    body_mass_scale      body masses and inertias (uniform density change), then mj_setConst
    geom_friction_scale  sliding friction of every geom and of every explicit contact pair (one factor per
                         env: every contact scales by it)
    joint_damping_scale  damping of every degree of freedom
    actuator_gain_scale  actuator force per unit control (gain, and the matching bias terms of servos)
    gravity_scale        the gravity vector (one factor per env)

and, every step: Gaussian observation noise (std in observation units), Gaussian action noise
(std as a fraction of each action's half-range) and an action delay of k steps (k drawn per
episode from [min, max]). Draws come from generators seeded from the env seed and kept apart from
the task's own reset-noise generators, so a run is reproducible and turning randomization off
gives back the exact gymnasium task. ``params`` holds the current factors of every env, and
``set_params`` fixes them (to evaluate a policy on a chosen model).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from collections.abc import Mapping
from typing import Any

import numpy as np

log = logging.getLogger("robo_rl.envs.randomization")

PHYSICS_PARAMS = ("body_mass_scale", "geom_friction_scale", "joint_damping_scale", "actuator_gain_scale", "gravity_scale")
# One draw per env, the same for all its geoms: a contact's friction is the larger of its two geoms', so independent
# per-geom draws would skew every contact toward the range's top (measured on Ant, [0.5, 1.5]: mean 1.18, a quarter
# of contacts below nominal); one factor scales every contact's friction by exactly that factor.
PER_ENV = ("geom_friction_scale",)

# Factors beyond these are not a variation of the same robot, and make a simulation that diverges at every
# step (joint damping x 1e30) or sits below MuJoCo's smallest mass (mass x 1e-300): refused as non-physical.
# (sim2real.robots keeps the same limits for sim2sim; it does not import envs, which imports torch.)
MAX_SCALE = 1e3
MIN_MASS_SCALE = 1e-3


def scale_problem(name: str, low: float, high: float) -> str | None:
    """Why factors in [low, high] for physics parameter ``name`` are not physical, or None when they are."""
    if name == "gravity_scale":
        return None if max(abs(low), abs(high)) <= MAX_SCALE else f"|factor| at most {MAX_SCALE:g}"
    floor = MIN_MASS_SCALE if name == "body_mass_scale" else 0.0
    if low < floor or high > MAX_SCALE:
        return f"factors between {floor:g} and {MAX_SCALE:g}"
    return None


@dataclass
class RandomizationSpec:
    body_mass_scale: tuple[float, float] | None = None
    geom_friction_scale: tuple[float, float] | None = None
    joint_damping_scale: tuple[float, float] | None = None
    actuator_gain_scale: tuple[float, float] | None = None
    gravity_scale: tuple[float, float] | None = None
    obs_noise_std: float = 0.0
    action_noise_std: float = 0.0
    action_delay: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        # a range must be [low, high] with low <= high, finite, and give physical values
        lower_bounds = {"body_mass_scale": (0.0, False), "geom_friction_scale": (0.0, True),
                        "joint_damping_scale": (0.0, True), "actuator_gain_scale": (0.0, True),
                        "gravity_scale": (-math.inf, True)}
        for name, (floor, inclusive) in lower_bounds.items():
            value = getattr(self, name)
            if value is None:
                continue
            lo, hi = _pair(name, value)
            if lo > hi:
                raise ValueError(f"randomize.{name}=[{lo}, {hi}]: empty range (low > high)")
            if (lo < floor) if inclusive else (lo <= floor):
                what = "positive" if not inclusive else "non-negative"
                raise ValueError(f"randomize.{name}=[{lo}, {hi}]: scales must be {what} (a {name.split('_scale')[0].replace('_', ' ')} "
                                 f"below zero is not physical)")
            problem = scale_problem(name, lo, hi)
            if problem:
                raise ValueError(f"randomize.{name}=[{lo}, {hi}]: needs {problem}; a factor beyond that is not the "
                                 f"same robot and leaves MuJoCo diverging or below its smallest mass")
            setattr(self, name, (lo, hi))
        for name in ("obs_noise_std", "action_noise_std"):
            raw = getattr(self, name)
            # text ("0.1") passed the check and then broke `enabled` with a bare TypeError; a bool is no std
            if isinstance(raw, (bool, np.bool_)) or not isinstance(raw, (int, float, np.integer, np.floating)):
                raise ValueError(f"randomize.{name}={raw!r}: must be a finite number >= 0")
            value = float(raw)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"randomize.{name}={value}: must be a finite number >= 0")
            setattr(self, name, value)
        if self.action_delay is not None:
            lo, hi = _pair("action_delay", self.action_delay)
            if lo != int(lo) or hi != int(hi) or lo < 0 or lo > hi:
                raise ValueError(f"randomize.action_delay=[{lo}, {hi}]: needs whole numbers 0 <= min <= max")
            self.action_delay = (int(lo), int(hi))

    @property
    def physics(self) -> list[str]:
        return [name for name in PHYSICS_PARAMS if getattr(self, name) is not None]

    @property
    def enabled(self) -> bool:
        return bool(self.physics) or self.obs_noise_std > 0 or self.action_noise_std > 0 or self.action_delay is not None

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "RandomizationSpec":
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown randomization key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in values.items() if v is not None})


def _pair(name: str, value: Any) -> tuple[float, float]:
    if isinstance(value, (str, bytes)):  # "12" would iterate as the range [1, 2]
        raise ValueError(f"randomize.{name}={value!r}: expected a range [low, high] of numbers, not text")
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"randomize.{name}={value!r}: expected a range [low, high]") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"randomize.{name}=[{lo}, {hi}]: bounds must be finite")
    return lo, hi


def delay_problem(delay: int, max_episode_steps: int | None) -> str | None:
    """Why an action delay of up to ``delay`` steps cannot work with episodes of ``max_episode_steps``, or None: each
    reset empties the queue of delayed actions, so a delay of at least the episode length sends only zeros."""
    if max_episode_steps and delay >= max_episode_steps:
        return (f"a delay of {delay} steps is not shorter than the episodes ({max_episode_steps} steps): no action would "
                "arrive")
    return None


def check_action_delay(task_id: str, spec: RandomizationSpec | None, num_envs: int, act_dim: int,
                       max_episode_steps: int | None) -> None:
    """Refuse, before the env is built, an action delay no action would outlast (``delay_problem``) or whose queue
    (max + 1 actions per env) cannot fit in memory: [0, 10**9] was killed by the kernel, with no message, at the
    first reset."""
    if spec is None or not spec.action_delay:
        return
    from envs.resources import gib, host_memory

    lo, hi = spec.action_delay
    problem = delay_problem(hi, max_episode_steps)
    if problem:
        raise ValueError(f"{task_id}: randomize.action_delay=[{lo}, {hi}]: {problem}")
    need = num_envs * (hi + 1) * max(act_dim, 1) * 4  # float32 actions
    total, available = host_memory()
    room = available if available is not None else total
    if room is not None and need > room:
        raise ValueError(f"{task_id}: randomize.action_delay=[{lo}, {hi}]: the queue of delayed actions needs "
                         f"{gib(need)} ({hi + 1:,} actions per env), more than the {gib(room)} of memory free")


def gain_problem(model: Any) -> str | None:
    """Why actuator_gain_scale cannot scale this model's actuators, or None. It scales gainprm[0] and the servo
    terms biasprm[1:3], which is the gain only of fixed-gain actuators (motors, position/velocity servos); a
    muscle's gainprm[0] is its length range."""
    gaintype = getattr(model, "actuator_gaintype", None)
    if gaintype is None:
        return None
    import mujoco

    other = [i for i in range(model.nu) if gaintype[i] != mujoco.mjtGain.mjGAIN_FIXED]
    if not other:
        return None
    names = ", ".join(model.actuator(i).name or f"#{i}" for i in other[:5]) + (", ..." if len(other) > 5 else "")
    return (f"actuator(s) {names} have no fixed gain (muscle, affine or user gain type), which actuator_gain_scale "
            "cannot scale; randomize the other factors")


_NOMINAL = {  # what each physics factor scales, read from a model (and its name in a message)
    "body_mass_scale": (lambda m: m.body_mass, "body mass"),
    "geom_friction_scale": (lambda m: np.concatenate([m.geom_friction[:, 0], np.ravel(m.pair_friction[:, 0:2])]),
                            "friction"),
    "joint_damping_scale": (lambda m: m.dof_damping, "joint damping"),
    "actuator_gain_scale": (lambda m: m.actuator_gainprm[:, 0], "actuator gain"),
    "gravity_scale": (lambda m: m.opt.gravity, "gravity"),
}


def inert_factors(spec: RandomizationSpec, model: Any) -> list[str]:
    """A line for each physics factor ``spec`` randomizes that scales what ``model`` does not have (all zero:
    Swimmer's joints have no damping, Pusher no gravity): drawn and reported, it changes nothing."""
    out = []
    for name in spec.physics:
        read, what = _NOMINAL[name]
        try:
            nominal = np.asarray(read(model), dtype=np.float64)
        except AttributeError:  # not a MuJoCo model (the caller refuses physics factors there)
            continue
        if not np.any(nominal):
            out.append(f"env.randomize.{name}={list(getattr(spec, name))}: the task's model has no {what} (all zero), "
                       "so its factors are drawn and reported but change nothing")
    return out


def param_sizes(model: Any) -> dict[str, int]:
    """How many factors each physics parameter has for this model."""
    return {"body_mass_scale": model.nbody, "geom_friction_scale": model.ngeom, "joint_damping_scale": model.nv,
            "actuator_gain_scale": model.nu, "gravity_scale": 1}


class Randomizer:
    """Draws and holds the randomization state of N envs (physics factors, noise, delays)."""

    def __init__(self, spec: RandomizationSpec, model: Any, num_envs: int, act_dim: int, action_half_range: np.ndarray,
                 task_id: str = "") -> None:
        self.spec = spec
        for line in inert_factors(spec, model):  # (a task without a MuJoCo model is refused physics factors earlier)
            log.warning(f"{task_id}: {line}" if task_id else line)
        self.num_envs = num_envs
        self.sizes = param_sizes(model)
        self.gain_problem = gain_problem(model)
        self.no_fixed_gain = np.array([t != 0 for t in getattr(model, "actuator_gaintype", [])], bool)  # mjGAIN_FIXED is 0
        if spec.actuator_gain_scale is not None and self.gain_problem:
            raise ValueError(f"randomize.actuator_gain_scale: {self.gain_problem}")
        self.params = {name: np.ones((num_envs, n)) for name, n in self.sizes.items()}
        # [N, len(PHYSICS_PARAMS)] factors set explicitly: not resampled (the env's other factors still are)
        self.fixed = np.zeros((num_envs, len(PHYSICS_PARAMS)), bool)
        self.action_scale = np.asarray(action_half_range, dtype=np.float64)
        max_delay = spec.action_delay[1] if spec.action_delay else 0
        self.delay = np.zeros(num_envs, dtype=np.int64)
        self.action_buffer = np.zeros((num_envs, max_delay + 1, act_dim), dtype=np.float32)
        self.env_rngs: list[np.random.Generator] = []
        self.seed(None)

    def seed(self, seed: int | None) -> None:
        """Seed the generators; None keeps the current ones (as gymnasium's reset(seed=None)), or makes fresh ones."""
        if seed is None and self.env_rngs:
            return
        # physics draws per env (reproducible whatever the order of resets); noise draws batched
        base = np.random.SeedSequence(seed)
        self.env_rngs = [np.random.default_rng(s) for s in base.spawn(self.num_envs)]
        self.noise_rng = np.random.default_rng(base.spawn(1)[0].generate_state(4))

    def resample(self, ids: np.ndarray) -> np.ndarray:
        """New factors (except the fixed ones) and delays for envs ``ids``; returns the ids whose physics changed."""
        changed = []
        for i in ids:
            rng = self.env_rngs[i]
            drawn = False
            for name in self.spec.physics:
                lo, hi = getattr(self.spec, name)
                # drawn even when fixed: the others' draws stay put
                values = rng.uniform(lo, hi, size=1 if name in PER_ENV else self.sizes[name])
                if not self.fixed[i, PHYSICS_PARAMS.index(name)]:
                    self.params[name][i] = values
                    drawn = True
            if drawn:
                changed.append(i)
            if self.spec.action_delay:
                self.delay[i] = rng.integers(self.spec.action_delay[0], self.spec.action_delay[1] + 1)
        self.action_buffer[ids] = 0.0
        return np.asarray(changed, dtype=np.int64)

    def set_params(self, values: dict[str, Any], ids: Any = None) -> None:
        """Fix the given factors for env copies ``ids`` (None: all); the factors not given keep being drawn at each
        reset. Everything is checked before anything is set."""
        n = len(self.fixed)
        ids = env_ids(ids, n)
        if not isinstance(values, Mapping):
            raise TypeError(f"set_physics_params takes a mapping of factors, e.g. {{'body_mass_scale': 1.2}}; got "
                            f"{type(values).__name__}")
        checked = {}
        for name, value in values.items():
            if name not in self.params:
                raise ValueError(f"unknown physics parameter {name!r}; known: {', '.join(self.params)}")
            if np.asarray(value).dtype.kind not in "fiu":  # complex (imaginary part dropped), bool, text
                raise ValueError(f"{name}: factors must be real numbers, got {value!r}")
            try:
                value = np.broadcast_to(np.asarray(value, dtype=np.float64), (len(ids), self.sizes[name]))
            except ValueError:
                raise ValueError(f"{name}: {np.shape(value)} factors do not fit {len(ids)} env(s) x "
                                 f"{self.sizes[name]} value(s) each") from None
            if not np.all(np.isfinite(value)) or (name != "gravity_scale" and np.any(value < 0)):
                raise ValueError(f"{name}: factors must be finite and (except gravity) non-negative")
            if name == "body_mass_scale" and np.any(value <= 0):
                raise ValueError("body_mass_scale: factors must be positive")
            if name == "actuator_gain_scale" and np.any(value[:, self.no_fixed_gain] != 1.0):
                raise ValueError(f"actuator_gain_scale: {self.gain_problem}")
            problem = scale_problem(name, float(value.min()), float(value.max()))
            if problem:
                raise ValueError(f"{name}: needs {problem}, got factors in [{value.min():g}, {value.max():g}]; "
                                 "beyond that the simulation is not the same robot (it diverges or drops below "
                                 "MuJoCo's smallest mass)")
            checked[name] = value
        for name, value in checked.items():
            self.params[name][ids] = value
            self.fixed[ids, PHYSICS_PARAMS.index(name)] = True

    # -- per step ----------------------------------------------------------------------------------
    def act(self, actions: np.ndarray) -> np.ndarray:
        """The actions the simulator receives: noisy and/or delayed versions of the commanded ones."""
        spec = self.spec
        if spec.action_noise_std > 0:
            noise = self.noise_rng.standard_normal(actions.shape) * (spec.action_noise_std * self.action_scale)
            actions = (actions + noise).astype(np.float32)
        if spec.action_delay:
            self.action_buffer[:, 1:] = self.action_buffer[:, :-1]
            self.action_buffer[:, 0] = actions
            actions = self.action_buffer[np.arange(self.num_envs), self.delay]
        return actions

    def observe(self, obs: np.ndarray) -> np.ndarray:
        if self.spec.obs_noise_std > 0:
            return obs + self.noise_rng.standard_normal(obs.shape) * self.spec.obs_noise_std
        return obs

    # -- snapshots ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "params": {k: v.copy() for k, v in self.params.items()}, "fixed": self.fixed.copy(),
            "delay": self.delay.copy(), "action_buffer": self.action_buffer.copy(),
            "env_rngs": [g.bit_generator.state for g in self.env_rngs], "noise_rng": self.noise_rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.params:
            self.params[k][:] = state["params"][k]
        fixed = np.asarray(state["fixed"], bool)
        self.fixed[:] = fixed[:, None] if fixed.ndim == 1 else fixed  # 1-D: a snapshot from when set_params fixed whole envs
        self.delay[:] = state["delay"]
        self.action_buffer[:] = state["action_buffer"]
        for g, s in zip(self.env_rngs, state["env_rngs"]):
            g.bit_generator.state = s
        self.noise_rng.bit_generator.state = state["noise_rng"]


def pair_friction_scale(model: Any, geom_scale: np.ndarray) -> np.ndarray:
    """Sliding-friction factors [..., npair] of the model's explicit contact pairs (``<contact><pair>``), from the
    geoms' factors [..., ngeom].

    A pair carries its own friction (``pair_friction``), which MuJoCo uses instead of its geoms': scaling
    ``geom_friction`` alone leaves such contacts (all of ContactMaze's) at their nominal friction. A pair scales by
    the larger of its two geoms' factors (MuJoCo's default pair friction is the larger of the geoms' frictions), which
    is the env's one friction factor whenever it was drawn (every geom gets the same one).
    """
    geom_scale = np.asarray(geom_scale, dtype=np.float64)
    return np.maximum(geom_scale[..., model.pair_geom1], geom_scale[..., model.pair_geom2])


def apply_to_model(model: Any, nominal: dict[str, np.ndarray], params: dict[str, np.ndarray], i: int) -> None:
    """Write env i's factors into a plain MjModel (the gymnasium backend's way), then mj_setConst."""
    import mujoco

    model.body_mass[:] = nominal["body_mass"] * params["body_mass_scale"][i]
    model.body_inertia[:] = nominal["body_inertia"] * params["body_mass_scale"][i][:, None]
    model.geom_friction[:, 0] = nominal["geom_friction"][:, 0] * params["geom_friction_scale"][i]
    # both tangential (sliding) coefficients of explicit pairs: MuJoCo uses them, not the geoms', for those contacts
    model.pair_friction[:, 0:2] = nominal["pair_friction"][:, 0:2] * pair_friction_scale(
        model, params["geom_friction_scale"][i])[:, None]
    model.dof_damping[:] = nominal["dof_damping"] * params["joint_damping_scale"][i]
    gain = params["actuator_gain_scale"][i]
    model.actuator_gainprm[:, 0] = nominal["actuator_gainprm"][:, 0] * gain
    model.actuator_biasprm[:, 1:3] = nominal["actuator_biasprm"][:, 1:3] * gain[:, None]
    model.opt.gravity[:] = nominal["gravity"] * params["gravity_scale"][i][0]
    data = mujoco.MjData(model)
    mujoco.mj_setConst(model, data)


def nominal_values(model: Any) -> dict[str, np.ndarray]:
    return {"body_mass": model.body_mass.copy(), "body_inertia": model.body_inertia.copy(),
            "geom_friction": model.geom_friction.copy(), "pair_friction": model.pair_friction.copy(),
            "dof_damping": model.dof_damping.copy(),
            "actuator_gainprm": model.actuator_gainprm.copy(), "actuator_biasprm": model.actuator_biasprm.copy(),
            "gravity": model.opt.gravity.copy()}


def env_ids(ids: Any, num_envs: int) -> np.ndarray:
    """``ids`` of ``set_physics_params`` as a 1-D int array: None (all copies), an integer or a list of them,
    each in 0..num_envs-1. A float (1.7), a bool or a nested list is refused, not cast."""
    if ids is None:
        return np.arange(num_envs)
    array = np.atleast_1d(np.asarray(ids))
    if array.ndim != 1 or array.dtype.kind not in "iu" or np.any(array < 0) or np.any(array >= num_envs):
        raise ValueError(f"env ids {ids!r:.80} out of range: give integers (or a list of them) among this env's "
                         f"copies 0..{num_envs - 1}")
    return array.astype(np.int64)
