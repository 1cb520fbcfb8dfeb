"""Robot adapters for ``sim2real.loop.ControlLoop``: a MuJoCo sim2sim robot and a callback robot.

``MujocoSim2SimRobot`` is the rehearsal before hardware. It runs a gymnasium MuJoCo task, but not
the way training saw it: another physics timestep (the control period stays the export's, so
frame_skip adapts), commands that arrive ``action_latency`` control steps late, Gaussian sensor
noise, and body masses / friction / joint damping / actuator gains redrawn at every reset. A policy
that only works in its exact training simulator shows it here, cheaply.

Only numpy, gymnasium and mujoco are imported (no torch), like the runtime itself.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from sim2real.loop import Observation, Robot

# physics randomization key -> (what it scales, smallest allowed factor, whether that bound is allowed)
PHYSICS_KEYS = {
    "mass_scale": ("body masses and inertias", 0.0, False),
    "friction_scale": ("sliding friction of every geom", 0.0, True),
    "damping_scale": ("damping of every joint", 0.0, True),
    "actuator_gain_scale": ("actuator force per unit command", 0.0, True),
}
# The factors that still describe the same robot (envs.randomization's MAX_SCALE and MIN_MASS_SCALE):
# damping x 1e30 diverges at every step, mass x 1e-300 is below MuJoCo's smallest mass.
MAX_SCALE, MIN_MASS_SCALE = 1e3, 1e-3
# physics steps per command a sim2sim.timestep may make: 1e-12 made 4e10 per Hopper command, a run that never ended
MAX_FRAME_SKIP = 1_000_000


class SimulatedClock:
    """Simulated seconds: a simulator advances it by its control period on every command.

    Shared by a sim robot (observation timestamps) and a ``ControlLoop`` with ``realtime=False``
    (deadlines and observation ages), it makes a faster-than-real-time run see the timing a robot
    at the control rate would: observations fresh, deadlines met, unless something really is late.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"a clock cannot go back (advance by {seconds})")
        self.now += float(seconds)

    sleep = advance  # "sleeping" on simulated time moves it forward


PHYSICS_EXAMPLE = "{mass_scale:[0.8,1.2],friction_scale:[0.7,1.3]}"


def _is_whole(value: Any) -> bool:
    """An int, or a float with no fractional part (not a bool, NaN or inf)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return True  # (np.isfinite refuses an int beyond int64, a seed of 1e30, with a TypeError)
    return _is_real(value) and bool(np.isfinite(value)) and float(value).is_integer()


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_physics(physics: Any) -> dict[str, tuple[float, float]]:
    """{key: [low, high]} scale-factor ranges, each key one of ``PHYSICS_KEYS``; anything else is a ValueError
    naming the key and what it accepts."""
    if physics is None:
        return {}
    if not isinstance(physics, Mapping):
        raise ValueError(f"sim2sim.physics={physics!r}: expected a mapping of [low, high] scale-factor ranges, "
                         f"e.g. \"{PHYSICS_EXAMPLE}\" (keys: {', '.join(PHYSICS_KEYS)}), or null for none")
    ranges = {}
    for key, value in physics.items():
        name = str(key).split(":", 1)[0].strip()
        if value is None and ":" in str(key) and name in PHYSICS_KEYS:  # {mass_scale:2} reads as one key "mass_scale:2"
            raise ValueError(f"sim2sim.physics.{name}: got {str(key).split(':', 1)[1]!r}, expected a [low, high] range "
                             f"of scale factors, e.g. {{{name}:[0.8,1.2]}}")
        if key not in PHYSICS_KEYS:
            raise ValueError(f"sim2sim.physics.{key}: unknown; known keys: {', '.join(PHYSICS_KEYS)} "
                             f"(e.g. \"{PHYSICS_EXAMPLE}\")")
        pair = list(value) if isinstance(value, (list, tuple, np.ndarray)) else None
        if pair is None or len(pair) != 2 or not all(_is_real(v) for v in pair):
            raise ValueError(f"sim2sim.physics.{key}={value!r}: expected [low, high] scale factors (two numbers), "
                             f"e.g. {{{key}:[0.8,1.2]}}")
        lo, hi = (float(v) for v in pair)
        what, floor, inclusive = PHYSICS_KEYS[key]
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi and (lo >= floor if inclusive else lo > floor)):
            raise ValueError(f"sim2sim.physics.{key}=[{lo}, {hi}]: needs finite {'>=' if inclusive else '>'} {floor} "
                             f"factors with low <= high (it scales {what})")
        least = MIN_MASS_SCALE if key == "mass_scale" else floor
        if lo < least or hi > MAX_SCALE:
            raise ValueError(f"sim2sim.physics.{key}=[{lo}, {hi}]: needs factors between {least:g} and {MAX_SCALE:g} "
                             f"(it scales {what}; beyond that it is not the same robot)")
        ranges[key] = (lo, hi)
    return ranges


class MujocoSim2SimRobot(Robot):
    """A gymnasium task as a robot, configured differently from training (see the module docstring).

    task: gymnasium id (robo-rl's own ``robo_rl/...`` tasks are registered on demand);
    control_dt: seconds per command (default: the task's own dt); timestep: physics step in
    seconds (default: the task's); action_latency: control steps before a command is applied;
    observation_noise: Gaussian std (one number or one per dimension); physics: ranges of scale
    factors, e.g. {"mass_scale": [0.8, 1.2]}, drawn per body/joint/actuator (friction: one for all geoms) at every reset;
    clock: timestamps observations, and is advanced by control_dt per command if it is a
    ``SimulatedClock``. Finished episodes land in ``episode_returns`` / ``episode_lengths``.
    check_task: called with the made env (a Box action space) at connect, before anything else is set up, e.g. to
    refuse a task the policy was not trained on before its timing or latency is judged.
    """

    def __init__(self, task: str, control_dt: float | None = None, timestep: float | None = None,
                 action_latency: int = 0, observation_noise: float | list[float] = 0.0,
                 physics: dict[str, Any] | None = None, seed: int = 0, max_episode_steps: int | None = None,
                 clock: Callable[[], float] | None = None, env_kwargs: dict[str, Any] | None = None,
                 check_task: Callable[[Any], None] | None = None, cost_key: str = "cost") -> None:
        if not _is_whole(action_latency) or action_latency < 0:
            raise ValueError(f"sim2sim.action_latency={action_latency!r}: expected a whole number of steps >= 0")
        try:
            noise = np.asarray(observation_noise, np.float64)
        except (TypeError, ValueError):
            noise = np.asarray(np.nan)
        if isinstance(observation_noise, (bool, str)) or not (noise.ndim <= 1 and np.isfinite(noise).all() and (noise >= 0).all()):
            raise ValueError(f"sim2sim.observation_noise={observation_noise!r}: expected a finite std >= 0 "
                             "(one number, or one per observation dimension)")
        if timestep is not None and not (_is_real(timestep) and np.isfinite(timestep) and timestep > 0):
            raise ValueError(f"sim2sim.timestep={timestep!r}: expected a finite number of seconds > 0 "
                             "(or null for the task's own)")
        if control_dt is not None and not (_is_real(control_dt) and np.isfinite(control_dt) and control_dt > 0):
            raise ValueError(f"control_dt={control_dt!r}: expected a finite number of seconds > 0")
        if not _is_whole(seed) or seed < 0:
            raise ValueError(f"sim2sim.seed={seed!r}: expected a whole number >= 0")
        if not isinstance(cost_key, str) or not cost_key:
            raise ValueError(f"cost_key={cost_key!r}: expected the step info key of the task's cost")
        if max_episode_steps is not None and (not _is_whole(max_episode_steps) or max_episode_steps < 1):
            raise ValueError(f"sim2sim.max_episode_steps={max_episode_steps!r}: expected a whole number of steps >= 1 "
                             "(or null for the run's or the task's own limit)")
        if max_episode_steps is not None:  # known now: refused before the simulator is built (else at connect)
            _check_latency(int(action_latency), int(max_episode_steps), task)
        self.task, self.control_dt, self.timestep = task, control_dt, timestep
        self.action_latency, self.observation_noise = int(action_latency), noise
        self.physics_ranges = _check_physics(physics)
        self.seed, self.env_kwargs = int(seed), dict(env_kwargs or {})
        self.max_episode_steps = int(max_episode_steps) if max_episode_steps is not None else None
        self.clock = clock or time.monotonic
        self.check_task = check_task
        self.env: Any = None
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []
        # a task that reports a cost (info[cost_key], ContactMaze's energy injection): its sum per episode, as robo-rl
        # eval reports it; None for an episode without one (or with a NaN/inf cost)
        self.episode_costs: list[float | None] = []
        self.cost_key = cost_key
        self.physics_params: dict[str, np.ndarray] = {}

    # --- Robot -----------------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self.env is not None

    def connect(self) -> None:
        if self.env is not None:
            return
        self.env = _make(self.task, self.max_episode_steps, self.env_kwargs)
        try:
            self._set_up()
        except BaseException:  # a task that cannot be deployed as asked is not left half connected
            self.disconnect()
            raise

    def _set_up(self) -> None:
        space = self.env.action_space
        if not (hasattr(space, "low") and hasattr(space, "high")):  # Discrete, MultiBinary, Dict, ...
            raise ValueError(f"task={self.task}: its action space is {type(space).__name__}, not a Box; the sim2sim "
                             "robot sends continuous commands: pass the task the policy was trained on")
        if self.check_task is not None:
            self.check_task(self.env)
        spec = getattr(self.env, "spec", None)  # the time limit asked for, else the task's registered one
        _check_latency(self.action_latency, getattr(spec, "max_episode_steps", None), self.task)
        self.action_dim = int(np.prod(space.shape))
        self.action_dtype = np.dtype(space.dtype)  # what env.step gets: the loop filters at it
        self.observation_dim = int(np.prod(self.env.observation_space.shape))
        # commands are flat [action_dim], as the policy's (training flattens a Box of another shape the same way)
        self._low = np.asarray(space.low, np.float64).reshape(-1)
        self._high = np.asarray(space.high, np.float64).reshape(-1)
        if self.observation_noise.ndim and self.observation_noise.shape != (self.observation_dim,):
            raise ValueError(f"sim2sim.observation_noise has {self.observation_noise.size} values; {self.task} "
                             f"observations have {self.observation_dim}")
        self._configure_timing()
        base = self.env.unwrapped
        if "actuator_gain_scale" in self.physics_ranges:
            import mujoco

            other = np.flatnonzero(base.model.actuator_gaintype != mujoco.mjtGain.mjGAIN_FIXED)
            if other.size:  # a muscle's gainprm[0] is its length range, not a gain
                names = ", ".join(base.model.actuator(int(i)).name or f"#{i}" for i in other[:5])
                raise ValueError(f"sim2sim.physics.actuator_gain_scale: actuator(s) {names} of {self.task} have no "
                                 "fixed gain (muscle, affine or user gain type), which a gain factor cannot scale; leave it out")
        self._check_runs()
        self._nominal = _nominal(base.model) if self.physics_ranges else {}
        self._physics_rng = np.random.default_rng([self.seed, 1])
        self._noise_rng = np.random.default_rng([self.seed, 2])
        self._reset(seed=self.seed)

    def disconnect(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def get_observation(self) -> Observation:
        self._require_connected()
        values = self._obs.astype(np.float64)
        if self.observation_noise.any():
            values = values + self._noise_rng.normal(size=values.shape) * self.observation_noise
        info = {"episode_start": self._episode_start, "episode": len(self.episode_returns),
                "step": self._length, "return": self._return}
        self._episode_start = False
        return Observation(values=values, timestamp=self.clock(), info=info)

    def send_action(self, action: np.ndarray) -> None:
        """Queue the command; step the simulator with the one sent ``action_latency`` steps ago."""
        self._require_connected()
        action = np.asarray(action, np.float64)
        if action.shape != (self.action_dim,) or not np.isfinite(action).all():
            raise ValueError(f"{self.task} needs {self.action_dim} finite command values, got {action!r}")
        self._queue.append(action)
        self._current = action
        applied = self._queue.popleft()
        obs, reward, terminated, truncated, info = self._step(applied)
        self._return += float(reward)
        self._length += 1
        cost = info.get(self.cost_key) if isinstance(info, dict) else None  # (some tasks report it at some steps only)
        if cost is not None:
            try:
                cost = float(cost)
            except (TypeError, ValueError):
                cost = math.nan
            self._cost = (self._cost or 0.0) + cost
        self._obs = np.asarray(obs)
        if hasattr(self.clock, "advance"):
            self.clock.advance(self.dt)
        if terminated or truncated:
            self.episode_returns.append(self._return)
            self.episode_lengths.append(self._length)
            self.episode_costs.append(self._cost if self._cost is not None and math.isfinite(self._cost) else None)
            self._reset(seed=None)

    def fallback_action(self) -> np.ndarray:
        """Zero command (no actuator effort), moved into the action space if zero is outside it."""
        self._require_connected()
        return np.clip(np.zeros(self.action_dim), self._low, self._high)

    def current_action(self) -> np.ndarray:
        """The last command sent; after a reset the fallback (what the new episode starts with)."""
        self._require_connected()
        return self._current.copy()

    # --- simulation ------------------------------------------------------------------------------
    @property
    def dt(self) -> float:
        """Simulated seconds per command."""
        return float(self.env.unwrapped.dt) if hasattr(self.env.unwrapped, "dt") else float(self.control_dt or 0.0)

    def _require_connected(self) -> None:
        if self.env is None:
            raise RuntimeError(f"{type(self).__name__}({self.task!r}) is not connected: call connect() first")

    def _step(self, command: np.ndarray) -> tuple:
        """env.step with a flat command, in the action space's dtype and shape."""
        space = self.env.action_space
        return self.env.step(command.astype(space.dtype).reshape(space.shape))

    def _check_runs(self) -> None:
        """Reset the task and step it once with the fallback command, so keyword arguments it reads only at a reset
        or a step (``reset_noise_scale="abc"``) fail at connect, named, not on the first control tick. Every episode
        then starts with a seeded reset, so this changes no result."""
        try:
            self.env.reset(seed=self.seed)
            self._step(self.fallback_action())
        except Exception as exc:  # noqa: BLE001 - whatever the task raises, named with what it was built with
            raise ValueError(f"task={self.task!r}{_given(self.env_kwargs)} builds but cannot run a step: "
                             f"{type(exc).__name__}: {exc}") from None

    def _configure_timing(self) -> None:
        """Physics timestep as asked; frame_skip so that one command still lasts control_dt."""
        base = self.env.unwrapped
        is_mujoco = hasattr(base, "model") and hasattr(base, "frame_skip")
        if not is_mujoco:
            if self.timestep is not None or self.physics_ranges:
                raise ValueError(f"{self.task} is not a MuJoCo env: sim2sim.timestep and sim2sim.physics need one")
            native = getattr(base, "dt", None)
            if self.control_dt is not None and native is not None and abs(native - self.control_dt) > 1e-9:
                # the rate to give, in as many digits as it takes to pass this check (81.3008 Hz for 0.0123 s did not)
                rate = f"{1 / native:g}" if abs(native - 1 / float(f"{1 / native:g}")) <= 1e-9 else repr(1 / float(native))
                raise ValueError(f"{self.task} steps {native:g} s per action ({1 / native:g} Hz) and, not being a MuJoCo "
                                 f"task, cannot adapt its physics to a control period of {self.control_dt:g} s "
                                 f"({1 / self.control_dt:g} Hz): give rate_hz={rate}")
            return
        timestep = float(self.timestep or base.model.opt.timestep)
        control_dt = float(self.control_dt or base.dt)
        ratio = control_dt / timestep
        frame_skip = round(ratio)
        if frame_skip < 1 or abs(ratio - frame_skip) > 1e-6 * max(1.0, ratio):
            given = f"sim2sim.timestep={timestep}" if self.timestep is not None else \
                f"{self.task}'s physics timestep {timestep} s"  # the user never set one: do not name the option
            raise ValueError(f"{given}: the control period {control_dt} s is not a whole number of physics steps "
                             f"({ratio:.4f}); give a sim2sim.timestep that divides it (or another rate_hz)")
        if self.timestep is not None and frame_skip > MAX_FRAME_SKIP:
            raise ValueError(f"sim2sim.timestep={timestep}: {frame_skip:,} physics steps per command of {control_dt} s, "
                             f"more than {MAX_FRAME_SKIP:,}; give a sim2sim.timestep >= {control_dt / MAX_FRAME_SKIP:g} s")
        base.model.opt.timestep = timestep
        base.frame_skip = int(frame_skip)

    def _reset(self, seed: int | None) -> None:
        if self.physics_ranges:
            self.physics_params = _apply_physics(self.env.unwrapped, self._nominal, self.physics_ranges, self._physics_rng)
        obs, _ = self.env.reset(seed=seed)
        self._obs = np.asarray(obs)
        self._return, self._length, self._episode_start = 0.0, 0, True
        self._cost: float | None = None  # none reported yet this episode
        # commands in flight do not survive a reset: the new episode starts with the fallback queued
        self._queue: deque[np.ndarray] = deque(self.fallback_action() for _ in range(self.action_latency))
        self._current = self.fallback_action()


def _check_latency(latency: int, max_episode_steps: int | None, task: str) -> None:
    """Refuse a latency no command outlasts: a reset drops the commands in flight, so with a latency of at least
    the episode length the task only ever gets the fallback and the report's returns are not the policy's (training's
    ``env.randomize.action_delay`` refuses the same, envs.randomization.delay_problem; sim2real does not import envs)."""
    if max_episode_steps and latency >= max_episode_steps:
        raise ValueError(f"sim2sim.action_latency={latency}: not shorter than {task}'s episodes ({max_episode_steps} "
                         "steps): every command would arrive after its episode ended and the policy would never act; "
                         f"give a latency below {max_episode_steps} (or a longer sim2sim.max_episode_steps)")


def _make(task: str, max_episode_steps: int | None, kwargs: dict[str, Any]) -> Any:
    import gymnasium as gym

    if task not in gym.registry and task.startswith("robo_rl/"):
        import envs.tasks  # noqa: F401  registers robo-rl's own tasks (without importing torch)
    try:
        return gym.make(task, max_episode_steps=max_episode_steps, **kwargs)
    except gym.error.Error as exc:
        import difflib

        close = difflib.get_close_matches(task, list(gym.registry), n=3, cutoff=0.5) if task not in gym.registry else []
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"task={task!r}: {str(exc).rstrip('.') if hint else exc}{hint}") from exc
    except ImportError as exc:  # the task's own import (Hopper-v3: mujoco-py, Pusher-v4: mujoco<3) or a module:Id's module
        raise ValueError(f"task={task!r} cannot be built here, it needs a package that is not installed (or another "
                         f"version of one): {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the task's constructor: a missing xml_file, an unknown keyword, ...
        raise ValueError(f"task={task!r}{_given(kwargs)} could not be built: {type(exc).__name__}: {exc}") from None


def _given(kwargs: dict[str, Any]) -> str:
    """The keyword arguments a task was built with (an export's task_kwargs from training), for a message."""
    return f" with keyword arguments {kwargs}" if kwargs else ""


def _nominal(model: Any) -> dict[str, np.ndarray]:
    return {"body_mass": model.body_mass.copy(), "body_inertia": model.body_inertia.copy(),
            "friction": model.geom_friction[:, 0].copy(), "pair_friction": model.pair_friction[:, 0:2].copy(),
            "damping": model.dof_damping.copy(),
            "gain": model.actuator_gainprm[:, 0].copy(), "bias": model.actuator_biasprm[:, 1:3].copy()}


def _apply_physics(base: Any, nominal: dict[str, np.ndarray], ranges: dict[str, tuple[float, float]],
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw one factor per body / dof / actuator (friction: one for all geoms, so every contact's friction, the
    larger of its two geoms', scales by exactly that factor) and write nominal * factor into the MjModel."""
    import mujoco

    model = base.model
    draws = {key: rng.uniform(*ranges[key], size=n) for key, n in (
        ("mass_scale", model.nbody), ("friction_scale", 1), ("damping_scale", model.nv),
        ("actuator_gain_scale", model.nu)) if key in ranges}
    if "friction_scale" in draws:
        draws["friction_scale"] = np.repeat(draws["friction_scale"], model.ngeom)
    if "mass_scale" in draws:  # uniform density change: inertia scales with mass
        model.body_mass[:] = nominal["body_mass"] * draws["mass_scale"]
        model.body_inertia[:] = nominal["body_inertia"] * draws["mass_scale"][:, None]
    if "friction_scale" in draws:
        model.geom_friction[:, 0] = nominal["friction"] * draws["friction_scale"]
        # explicit contact pairs carry their own friction, which MuJoCo uses instead of their geoms'
        model.pair_friction[:, 0:2] = nominal["pair_friction"] * draws["friction_scale"][0]
    if "damping_scale" in draws:
        model.dof_damping[:] = nominal["damping"] * draws["damping_scale"]
    if "actuator_gain_scale" in draws:  # position/velocity servos carry the gain in their bias terms too
        model.actuator_gainprm[:, 0] = nominal["gain"] * draws["actuator_gain_scale"]
        model.actuator_biasprm[:, 1:3] = nominal["bias"] * draws["actuator_gain_scale"][:, None]
    mujoco.mj_setConst(model, base.data)  # derived constants (subtree masses, inverse weights) follow
    return draws


class CallbackRobot(Robot):
    """A robot made of two functions: ``get()`` -> observation array (or ``Observation``) and
    ``send(action)``. Handy to wire a ROS topic or a test fixture to the control loop. Optional:
    ``fallback`` (array or function), ``current()`` -> the command the actuators hold (or None),
    ``action_dtype`` (np.float32 when ``send`` passes the command on as float32)."""

    def __init__(self, get: Callable[[], Any], send: Callable[[np.ndarray], None], action_dim: int,
                 fallback: np.ndarray | Callable[[], np.ndarray] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_connect: Callable[[], None] | None = None, on_disconnect: Callable[[], None] | None = None,
                 current: Callable[[], np.ndarray | None] | None = None, action_dtype: Any = np.float64) -> None:
        self._get, self._send, self.action_dim = get, send, int(action_dim)
        self.action_dtype = action_dtype
        self._fallback, self.clock, self._current = fallback, clock, current
        self._on_connect, self._on_disconnect = on_connect, on_disconnect
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        if self._on_connect is not None:
            self._on_connect()
        self._connected = True

    def disconnect(self) -> None:
        if self._on_disconnect is not None:
            self._on_disconnect()
        self._connected = False

    def get_observation(self) -> Observation:
        reading = self._get()
        if isinstance(reading, Observation):
            return reading
        try:
            values = np.asarray(reading)
        except (TypeError, ValueError):  # ragged: the control loop reports it as a bad observation, not a crash
            values = reading
        return Observation(values, self.clock())

    def send_action(self, action: np.ndarray) -> None:
        self._send(np.asarray(action))

    def fallback_action(self) -> np.ndarray:
        if self._fallback is None:
            return super().fallback_action()
        return np.asarray(self._fallback() if callable(self._fallback) else self._fallback)

    def current_action(self) -> np.ndarray | None:
        return None if self._current is None else self._current()
