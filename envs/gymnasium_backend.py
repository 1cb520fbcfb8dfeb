"""Any registered gymnasium task behind the batched-env contract.

Vectorized with gymnasium's own SyncVectorEnv (one process) or AsyncVectorEnv (worker
processes), in same-step autoreset mode so the final observation of an episode is handed back in
the step that ended it. Simulator state of MuJoCo and classic-control tasks can be saved and
restored exactly, so an interrupted run resumes bit-for-bit.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import logging
import multiprocessing
import os
import signal
import time
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from gymnasium.vector.async_vector_env import AsyncState

from envs.base import (BatchedEnv, ContractError, EpisodeTracker, LazyTensors, MissingDependency, StepResult,
                       WorkerDied, check_box_spaces, episode_to_torch, on_device)
from envs.mujoco_log import WorkerWarnings
from envs.randomization import (RandomizationSpec, Randomizer, apply_to_model, check_action_delay, env_ids, gain_problem,
                                nominal_values)
from envs.resources import usable_cpus

# a child of the "robo_rl" logger (a name, not an import: envs does not import robo_rl): under robo-rl its warnings
# read "robo-rl: warning: ..." on the console and are in train.log; "envs.gymnasium_backend" came bare, and not in the file
log = logging.getLogger("robo_rl.envs.gymnasium_backend")


def check_task_id(task_id: str) -> gym.envs.registration.EnvSpec:
    """Look a gymnasium id up, failing with close matches when it does not exist.

    ``module:Id`` (gymnasium's own convention, as ``gymnasium.make`` reads it) imports ``module`` first, so
    a package that registers its tasks on import works from the command line:
    ``robo-rl train env.id=my_robots.envs:Arm-v0``.
    """
    module, _, name = task_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"env.id={task_id}: cannot import {module!r}, the module that should register "
                             f"{name!r} ({exc}); is it installed, or on PYTHONPATH?") from None
        except Exception as exc:  # noqa: BLE001 - the module's own code failed as it ran (a bug in it, a SyntaxError)
            raise ValueError(f"env.id={task_id}: importing {module!r}, the module that should register {name!r}, "
                             f"failed: {type(exc).__name__}: {exc}") from None
    try:
        return gym.spec(name)
    except gym.error.Error as exc:
        close = difflib.get_close_matches(name, list(gym.registry), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        where = f" (after importing {module!r})" if module else ""
        raise ValueError(f"env.id={task_id}: unknown gymnasium task id {name!r}{where}{hint} ({exc})") from None


def _newer_version(spec: gym.envs.registration.EnvSpec) -> str:
    """A hint naming the task's newest registered version, when ``spec`` is an older one ("" otherwise)."""
    if spec.version is None:
        return ""
    newest = gym.envs.registration.find_highest_version(spec.namespace, spec.name)
    if newest is None or newest <= spec.version:
        return ""
    return f"; try {gym.envs.registration.get_env_id(spec.namespace, spec.name, newest)}, the task's newest version"


class _NoModel:
    """Stands in for a model when only noise/delay are randomized on a non-MuJoCo task."""

    nbody = ngeom = nv = nu = 0


#: modules of tasks whose MuJoCo state (or ``state`` array), ``np_random`` and time-limit counter are all their state:
#: gymnasium's MuJoCo and classic-control tasks and robo-rl's own. Another task (a user's subclass of a gymnasium
#: MuJoCo env too) is captured only if its class says ``robo_rl_snapshot_complete = True``: a goal or curriculum kept
#: in Python would otherwise be lost on resume without a word, the episode going on with another goal than its
#: observation shows
_SNAPSHOT_COMPLETE = ("gymnasium.envs.mujoco.", "gymnasium.envs.classic_control.", "envs.tasks.")


#: MjData fields mj_step leaves one substep behind the state (the forward pass of its last substep computed them; the
#: rnePostConstraint gymnasium calls after it, cacc and the cfrc terms), which a task may read before its next step:
#: Ant's reward reads the torso's xpos, Humanoid's its centre of mass (xipos). The mj_forward after mj_setState
#: computes them at the restored state instead, so they are saved and put back (the next mj_step recomputes them all
#: before it uses any)
_DERIVED = ("xpos", "xquat", "xmat", "xipos", "ximat", "geom_xpos", "geom_xmat", "site_xpos", "site_xmat", "subtree_com",
            "cinert", "cvel", "cacc", "cfrc_int", "cfrc_ext", "qacc", "qfrc_bias", "qfrc_passive", "qfrc_actuator",
            "qfrc_constraint", "actuator_length", "actuator_velocity", "actuator_force", "ten_length", "ten_velocity",
            "sensordata")


def snapshot_complete(env: gym.Env) -> bool:
    """Whether ``env`` (unwrapped) is captured whole by ``_Snapshot`` (see ``_SNAPSHOT_COMPLETE``)."""
    flag = getattr(env, "robo_rl_snapshot_complete", None)
    return bool(flag) if flag is not None else type(env).__module__.startswith(_SNAPSHOT_COMPLETE)


class _Snapshot(gym.Wrapper):
    """Outermost wrapper of each sub-env: exposes an exact copy of the simulator state.

    Reached through the vector env's get_attr/set_attr, so it works in worker processes too.
    Captures MuJoCo state (mjSTATE_INTEGRATION, which includes the solver warm start, so the
    continuation is bit-identical) with the fields a task may read before its next step (``_DERIVED``),
    the ``state`` array of classic-control tasks, the time-limit
    counter and the env's random generator. Other envs, and tasks that may keep more state than that
    (``snapshot_complete``), report None (not capturable: a resume starts new episodes, with a warning).
    """

    @property
    def snapshot(self) -> dict[str, Any] | None:
        env = self.unwrapped
        if not snapshot_complete(env):
            return None
        snap: dict[str, Any] = {}
        data = getattr(env, "data", None)
        model = getattr(env, "model", None)
        if data is not None and model is not None and type(data).__name__ == "MjData":
            import mujoco

            spec = mujoco.mjtState.mjSTATE_INTEGRATION
            state = np.empty(mujoco.mj_stateSize(model, spec))
            mujoco.mj_getState(model, data, state, spec)
            snap["mujoco_state"] = state
            snap["derived"] = {name: np.array(getattr(data, name), copy=True) for name in _DERIVED}
        elif isinstance(getattr(env, "state", None), np.ndarray):
            snap["state"] = np.array(env.state, copy=True)
        else:
            return None
        if getattr(env, "_np_random", None) is not None:
            snap["np_random"] = env.np_random.bit_generator.state
        limit = self._time_limit()
        if limit is not None:
            snap["elapsed_steps"] = int(limit._elapsed_steps or 0)
        return snap

    @snapshot.setter
    def snapshot(self, snap: dict[str, Any]) -> None:
        env = self.unwrapped
        if "mujoco_state" in snap:
            import mujoco

            spec = mujoco.mjtState.mjSTATE_INTEGRATION
            mujoco.mj_setState(env.model, env.data, np.asarray(snap["mujoco_state"]), spec)
            mujoco.mj_forward(env.model, env.data)
            for name, saved in snap.get("derived", {}).items():  # (not in snapshots before 2026-12-06)
                if name not in _DERIVED:
                    raise ValueError(f"the snapshot's derived field {name!r} is not one of {_DERIVED}")
                field, saved = getattr(env.data, name), np.asarray(saved)
                if saved.shape != field.shape:
                    raise ValueError(f"the snapshot's {name} has shape {list(saved.shape)}, this model's "
                                     f"{list(field.shape)}")
                field[...] = saved
        elif "state" in snap:
            env.state = np.array(snap["state"], copy=True)
        if "np_random" in snap:
            env.np_random.bit_generator.state = snap["np_random"]
        limit = self._time_limit()
        if limit is not None and "elapsed_steps" in snap:
            limit._elapsed_steps = snap["elapsed_steps"]

    def _time_limit(self) -> gym.wrappers.TimeLimit | None:
        env = self.env
        while isinstance(env, gym.Wrapper):
            if isinstance(env, gym.wrappers.TimeLimit):
                return env
            env = env.env
        return None


class _PhysicsAtReset(gym.Wrapper):
    """Applies the physics factors the main process drew for this env's next episode, at its reset.

    Resets of a vector env happen inside its step (autoreset), so the main process draws each
    env's next-episode factors ahead of time and leaves them here (``pending_physics``).
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        model = getattr(env.unwrapped, "model", None)
        if model is None or type(model).__name__ != "MjModel":
            raise ValueError(f"{env.spec.id if env.spec else env}: physics randomization needs a MuJoCo task "
                             "(observation/action noise and delay work with any task)")
        self._nominal = nominal_values(model)
        self.pending_physics: dict[str, np.ndarray] | None = None

    @property
    def current_physics(self) -> None:
        return None

    @current_physics.setter
    def current_physics(self, params: dict[str, np.ndarray]) -> None:
        """Apply factors now (restoring a snapshot taken mid-episode)."""
        apply_to_model(self.env.unwrapped.model, self._nominal, {k: v[None] for k, v in params.items()}, 0)

    def reset(self, **kwargs: Any):
        if self.pending_physics is not None:
            apply_to_model(self.env.unwrapped.model, self._nominal, {k: v[None] for k, v in self.pending_physics.items()}, 0)
        return self.env.reset(**kwargs)


_SCALARS = (bool, int, float, np.bool_, np.integer, np.floating)


def _not_one_number(value: Any) -> str | None:
    """What ``value`` is when it is not one real number (a Python or numpy scalar, a 0-d real array or tensor, anything
    of no dimension that ``float()`` reads: gymnasium's ``SupportsFloat``), else None."""
    if isinstance(value, _SCALARS):
        return None
    if value is not None and not isinstance(value, (str, bytes)):
        try:
            if np.ndim(value) == 0 and not np.iscomplexobj(value):
                float(value)
                return None
        except (TypeError, ValueError, RuntimeError):
            pass
    if isinstance(value, (np.ndarray, list, tuple)) or hasattr(value, "shape"):
        try:
            shape = list(np.shape(value))
        except ValueError:  # ragged
            shape = None
        kind = "an array" if isinstance(value, np.ndarray) else f"a {type(value).__name__}"  # (a torch Tensor, ...)
        return kind + (f" of shape {shape}" if shape is not None else "")
    return "None" if value is None else f"a {type(value).__name__}"


class _StepCheck(gym.Wrapper):
    """Names the task when its reset() or step() returns an observation that is not a real-number array of its
    observation space's shape, or a reward, terminated or truncated that is not one number: gymnasium's vector envs
    failed on those deep in their batching ("Output array is the wrong shape", "setting an array element with a
    sequence", naming neither the task nor the value), or, in worker processes, spread a scalar over every entry of
    the observation without a word, made a [N, 1] array of 1-element flags (which the in-process vectorizer
    flattened) and a NaN of a None reward."""

    def __init__(self, env: gym.Env, task_id: str) -> None:
        super().__init__(env)
        self._task_id = task_id

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        return self._checked(obs, "reset()"), info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        for name, value in (("reward", reward), ("terminated", terminated), ("truncated", truncated)):
            got = _not_one_number(value)
            if got is not None:
                need = "a float (float(reward))" if name == "reward" else f"a bool (bool({name}))"
                raise ContractError(f"{self._task_id}: the task's step() returned {got} as its {name}; gymnasium's step "
                                     f"API needs one number: {need}")
        return self._checked(obs, "step()"), reward, terminated, truncated, info

    def _checked(self, obs: Any, call: str) -> Any:
        space = self.observation_space
        if isinstance(obs, np.ndarray) and obs.shape == space.shape and obs.dtype == space.dtype:  # a good task's step
            return obs
        try:
            array = np.asarray(obs)
        except (TypeError, ValueError):  # a ragged list
            array = None
        # (the vectorizers cast as numpy's same_kind does: a float64 array to float32, not floats to an integer space)
        if (array is not None and array.shape == space.shape and array.dtype.kind in "fiub"
                and np.can_cast(array.dtype, space.dtype, "same_kind")):
            return obs
        got = (f"an array of shape {list(array.shape)} ({array.dtype})" if array is not None and array.dtype != object
               else f"a {type(obs).__name__}")
        raise ContractError(f"{self._task_id}: the task's {call} returned {got} as its observation; its observation space "
                             f"{' '.join(str(space).split())} needs an array of shape {list(space.shape)} whose dtype "
                             f"casts to {space.dtype}")


def _make_thunk(task_id: str, kwargs: dict[str, Any], max_episode_steps: int | None, physics: bool,
                render: bool = False, worker: bool = False,
                mujoco_warnings: WorkerWarnings | None = None) -> Callable[[], gym.Env]:
    parent = os.getpid()  # AsyncVectorEnv also calls a thunk in this process, for the spaces

    def thunk() -> gym.Env:
        if worker and os.getpid() != parent:
            # An async worker process (the thunk runs first thing in it). Ctrl-C in a terminal signals the whole
            # process group: the main process turns SIGINT into a checkpoint after the current iteration (a second
            # Ctrl-C aborts), and needs its workers for that step and for the env state the checkpoint holds; a
            # worker that took the KeyboardInterrupt would quit and fail the run without its checkpoint. The main
            # process stops the workers itself (close, or SIGTERM at exit). A SIGTERM handler it had when it forked
            # the worker (the runner's) is not the worker's: SIGTERM ends a worker as a plain kill does.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if mujoco_warnings is not None:
                mujoco_warnings.forward()  # logged by the main process (the console once, and train.log)
        extra = {"render_mode": "rgb_array"} if render else {}
        env = _StepCheck(gym.make(task_id, max_episode_steps=max_episode_steps, **kwargs, **extra), task_id)
        return _Snapshot(_PhysicsAtReset(env) if physics else env)

    return thunk


def _exit_code(code: int) -> str:
    """A process's exit code as multiprocessing reports it, with the signal named when one killed it (-N)."""
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return str(code)


class GymnasiumBatchedEnv(BatchedEnv):
    backend = "gymnasium"

    """``num_envs`` copies of a gymnasium task, vectorized in-process or in worker processes.

    Args:
        task_id: a registered gymnasium id, e.g. "Hopper-v5".
        num_envs: number of copies N.
        vectorization: "sync" (one process; best for cheap envs and N <= ~8) or "async"
            (N copies spread over worker processes; pays off when one env step costs more than
            the inter-process round trip).
        kwargs: keyword arguments for ``gymnasium.make`` (e.g. ``{"ctrl_cost_weight": 0.1}``).
        max_episode_steps: override the task's time limit.
        device: where the returned tensors live.
        randomize: domain randomization; physics factors need a MuJoCo task (applied per sub-env at
            its resets, slower than the batched backend), noise and delay work with any task.
    """

    backend = "gymnasium"

    def __init__(
        self,
        task_id: str,
        num_envs: int = 1,
        vectorization: str = "sync",
        kwargs: dict[str, Any] | None = None,
        max_episode_steps: int | None = None,
        device: str | torch.device = "cpu",
        randomize: RandomizationSpec | None = None,
        render: bool = False,
    ) -> None:
        spec = check_task_id(task_id)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if vectorization not in ("sync", "async"):
            raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
        kwargs = dict(kwargs or {})
        if kwargs.get("render_mode") not in (None, "rgb_array"):
            raise ValueError(f"{task_id}: env.kwargs render_mode={kwargs['render_mode']!r}: robo-rl draws frames with "
                             "render_mode='rgb_array' (make_env(..., render=True)); leave render_mode out of the kwargs")
        render = kwargs.pop("render_mode", None) == "rgb_array" or render  # passed once, by the thunk
        self.randomize = randomize if randomize is not None and randomize.enabled else None
        wants_physics = self.randomize is not None and bool(self.randomize.physics)
        try:
            probe = gym.make(task_id, max_episode_steps=max_episode_steps, **kwargs)
        except TypeError as exc:  # unknown keyword argument for this task
            raise ValueError(f"{task_id}: bad env kwargs {kwargs}: {exc}") from None
        except ValueError as exc:  # the task's own check of its arguments (camera_id with camera_name), which names neither
            given = f" with env kwargs {kwargs}" if kwargs else ""
            raise ValueError(f"{task_id}{given} could not be built: {exc}") from None
        except gym.error.DependencyNotInstalled as exc:  # e.g. Box2D for LunarLanderContinuous
            raise MissingDependency(f"{task_id} needs a package that is not installed: {exc}") from None
        except ImportError as exc:  # the task's own import: mujoco-py (the v2/v3 MuJoCo ids), mujoco<3 (Pusher-v4), jax
            raise MissingDependency(f"{task_id} cannot be built here, it needs a package that is not installed (or "
                                    f"another version of one): {type(exc).__name__}: {exc}{_newer_version(spec)}") from None
        check_box_spaces(task_id, probe.observation_space, probe.action_space)
        if render and "rgb_array" not in (probe.metadata.get("render_modes") or ()):
            raise ValueError(f"{task_id} cannot draw frames: its render modes are "
                             f"{list(probe.metadata.get('render_modes') or [])}, and a video needs 'rgb_array'")
        probe_model = getattr(probe.unwrapped, "model", None)
        fps = probe.metadata.get("render_fps")
        self.dt = float(getattr(probe.unwrapped, "dt", 0.0) or 0.0) or (1.0 / fps if fps else None)
        physics = probe_model is not None and type(probe_model).__name__ == "MjModel"  # factors settable
        if wants_physics and not physics:  # named by its keys (randomize=mild|strong sets them too)
            probe.close()
            keys = ", ".join(f"env.randomize.{name}" for name in self.randomize.physics)
            raise ValueError(f"{task_id} is not a MuJoCo task, so it has no physics for {keys} to scale: set them to "
                             "null, or randomize=off (observation/action noise and delay work with any task)")
        if physics and self.randomize is not None and self.randomize.actuator_gain_scale is not None:
            problem = gain_problem(probe_model)  # before building the sub-envs (the Randomizer checks it too)
            if problem:
                probe.close()
                raise ValueError(f"{task_id}: randomize.actuator_gain_scale: {problem}")
        limit = probe.spec.max_episode_steps if probe.spec is not None else None
        self.max_episode_steps: int | None = max_episode_steps or limit  # None: episodes end only when the task ends them
        probe.close()
        check_action_delay(task_id, self.randomize, num_envs, int(np.prod(probe.action_space.shape)), limit)
        # (a worker started by spawn or forkserver has MuJoCo's own handler, not this process's routing: nothing to send)
        forked = vectorization == "async" and multiprocessing.get_start_method() == "fork"
        self._mujoco_warnings = WorkerWarnings() if forked else None
        thunks = [_make_thunk(task_id, kwargs, max_episode_steps, physics, render, vectorization == "async",
                              self._mujoco_warnings)] * num_envs
        self._can_render = render
        self._workers_lost: str | None = None  # why the async workers are gone (see _vector_call)
        self.render_mode = "rgb_array" if render else None  # read by SB3's VecEnv view (venv.render, VecVideoRecorder)
        if vectorization == "sync":
            self._vec = SyncVectorEnv(thunks, autoreset_mode=AutoresetMode.SAME_STEP)
        else:
            cpus = usable_cpus()
            if num_envs > cpus:
                log.warning(f"{task_id}: env.vectorization=async starts one worker process per env, {num_envs} on {cpus} "
                            f"CPU(s); workers beyond the CPU count only add switching. Fewer envs, env.vectorization=sync, "
                            f"or env.backend=mujoco (threads, for the MuJoCo tasks it covers) step faster")
            try:
                self._vec = AsyncVectorEnv(thunks, autoreset_mode=AutoresetMode.SAME_STEP)
            except BaseException:
                if self._mujoco_warnings is not None:
                    self._mujoco_warnings.close()  # (its pipe)
                raise
        self.task_id = task_id
        self.num_envs = num_envs
        self.vectorization = vectorization
        self.device = torch.device(device)
        # the observations handed out are float32 (_to_tensor), so is the space: the task's bounds rounded as they are
        space = self._vec.single_observation_space
        with np.errstate(over="ignore"):
            self.observation_space = gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32),
                                                    dtype=np.float32)
        self.action_space = self._vec.single_action_space
        self._np_act_dtype = self.action_space.dtype
        # a (2, 2) or () action Box: the learners see its flat [act_dim] Box, each copy gets its own shape back
        self._act_shape: tuple[int, ...] | None = None
        if len(self.action_space.shape) != 1:
            self._act_shape = (num_envs, *self.action_space.shape)
            space = self.action_space
            self.action_space = gym.spaces.Box(space.low.reshape(-1), space.high.reshape(-1), dtype=space.dtype)
        self._episodes = EpisodeTracker(num_envs)
        low, high = self.action_space.low, self.action_space.high
        spec = self.randomize or RandomizationSpec()
        self.randomizer: Randomizer | None = None
        if physics or self.randomize is not None:  # MuJoCo tasks always have (settable) physics factors
            self.randomizer = Randomizer(spec, probe_model if physics else _NoModel(), num_envs, len(low), (high - low) / 2,
                                         task_id=task_id)
        self._pending: dict[str, np.ndarray] | None = None
        self._pending_delay: np.ndarray | None = None  # [N] the next episode's action delay, drawn with its factors
        self._needs_reset = True  # gymnasium's sub-envs raise ResetNeeded (and an async worker quits) on a step before it

    def reset(self, seed: int | None = None) -> torch.Tensor:
        seed = self.check_seed(seed)
        if self.randomizer is not None:  # also unused (randomization off): a checkpoint's state follows the seed
            self.randomizer.seed(seed)
        if self.randomize is not None:
            self._draw_physics(np.arange(self.num_envs), current=True)
        obs, _ = self._vector_call(self._vec.reset, seed=seed)
        self._episodes.reset()
        if self.randomize is not None:
            self._draw_physics(np.arange(self.num_envs), current=False)
            obs = self.randomizer.observe(obs)
        self._needs_reset = False
        return self._to_tensor(obs)

    def render(self, index: int = 0) -> np.ndarray:
        self._refuse_if_closed()
        if not self._can_render:
            raise ValueError(f"{self.task_id}: build the env with render=True to draw frames")
        self._refuse_step("render()")  # gymnasium's ResetNeeded before it (async: in a worker, which it then shut down)
        try:
            if isinstance(self._vec, SyncVectorEnv):
                return np.asarray(self._vec.envs[index].render())
            return np.asarray(self._vector_call(self._vec.call, "render")[index])
        except gym.error.DependencyNotInstalled as exc:  # e.g. pygame for the classic-control tasks
            raise MissingDependency(f"{self.task_id}: drawing frames needs a package that is not installed: {exc}") from None
        except Exception as exc:
            if type(exc).__name__ != "FatalError":  # MuJoCo's, from gymnasium's own renderer
                raise
            from envs.rendering import RenderingUnavailable

            raise RenderingUnavailable(f"{self.task_id}: MuJoCo could not draw a frame ({exc}): a frame larger than "
                                       "this machine's OpenGL holds (lower env.kwargs.width and env.kwargs.height), or "
                                       "no usable OpenGL platform (set MUJOCO_GL=egl or osmesa)") from exc

    def physics_params(self) -> dict[str, torch.Tensor]:
        """Each env's current physics factors: name -> [N, k] (1.0 = the nominal model)."""
        if self.randomizer is None:
            raise ValueError(f"{self.task_id} is not a MuJoCo task: it has no physics factors")
        return {k: torch.from_numpy(v.copy()) for k, v in self.randomizer.params.items()}

    def set_physics_params(self, values: dict[str, Any], ids: Any = None) -> None:
        """Fix physics factors for envs ``ids`` (default: all); applied now and kept across resets."""
        self._refuse_if_closed()
        if self.randomizer is None or not self.randomizer.params.get("body_mass_scale", np.zeros((1, 0))).size:
            raise ValueError(f"{self.task_id} is not a MuJoCo task: it has no physics factors to set")
        ids = env_ids(ids, self.num_envs)
        r = self.randomizer
        r.set_params(values, ids)
        self._pending = {k: v.copy() for k, v in r.params.items()} if self._pending is None else self._pending
        for k in values:  # the factors not given keep their draw for the next episode
            self._pending[k][ids] = r.params[k][ids]
        per_env = [{k: r.params[k][i] for k in r.params} for i in range(self.num_envs)]
        self._vec.set_attr("current_physics", per_env)
        self._vec.set_attr("pending_physics", [{k: self._pending[k][i] for k in r.params} for i in range(self.num_envs)])

    def _draw_physics(self, ids: np.ndarray, current: bool) -> None:
        """Draw factors and delays for envs ``ids``: for the episode starting now, or the next one.

        An episode's delay is drawn with its factors, in the order the mujoco backend draws them, so both
        backends give an episode the same factors and delay for the same seed.
        """
        r = self.randomizer
        physics = bool(r.spec.physics) or self._pending is not None
        if current or self._pending_delay is None:
            r.resample(ids)
            self._pending_delay = r.delay.copy()
            if physics:
                self._pending = {k: v.copy() for k, v in r.params.items()}
        else:
            # the envs in ids just started the episode drawn ahead for them: its factors and delay become current
            if self._pending is not None:
                for k in r.params:
                    r.params[k][ids] = self._pending[k][ids]
            r.delay[ids] = self._pending_delay[ids]
            saved = {k: v.copy() for k, v in r.params.items()}
            saved_delay = r.delay.copy()
            r.resample(ids)  # draws the following episode's factors and delay into r.params[ids], r.delay[ids]
            self._pending_delay[ids] = r.delay[ids]
            r.delay[ids] = saved_delay[ids]
            if self._pending is not None:
                for k in r.params:
                    self._pending[k][ids] = r.params[k][ids]
                    r.params[k][ids] = saved[k][ids]
        if physics:
            self._vec.set_attr("pending_physics", [{k: self._pending[k][i] for k in r.params} for i in range(self.num_envs)])

    def step(self, actions: torch.Tensor) -> StepResult:
        applied = self.check_actions_numpy(actions).astype(self._np_act_dtype, copy=False)
        if self.randomize is not None:
            applied = self.randomizer.act(applied)
        if self._act_shape is not None:
            applied = applied.reshape(self._act_shape)
        obs, reward, terminated, truncated, info = self._vector_call(self._vec.step, applied)
        done = np.logical_or(terminated, truncated)
        if self.randomize is not None:
            obs = self.randomizer.observe(obs)
        final_obs = np.array(obs, dtype=np.float32, copy=True)  # equal to obs where nothing ended (one noise draw)
        ended = np.flatnonzero(info["_final_obs"]) if "_final_obs" in info else np.zeros(0, np.int64)
        if len(ended):
            last = np.stack([np.asarray(info["final_obs"][i]) for i in ended])
            final_obs[ended] = self.randomizer.observe(last) if self.randomize is not None else last
        if self.randomize is not None or self._pending is not None:
            if done.any():
                self._draw_physics(np.flatnonzero(done), current=False)
        out_info = {
            "final_obs": self._to_tensor(final_obs),
            "episode": episode_to_torch(self._episodes.step(reward, done), self.device),
            "task": self._task_info(info, done),
        }
        return StepResult(self._to_tensor(obs), self._to_tensor(reward), self._flags(terminated), self._flags(truncated),
                          out_info)

    def _task_info(self, info: dict[str, Any], done: np.ndarray) -> LazyTensors:
        """The task's own numeric per-env info terms (e.g. a cost), as the MuJoCo backend's info["task"].

        With same-step autoreset, a finished env's step info is in info["final_info"]; its entry is
        taken from there so the last step of an episode is not replaced by the reset's info.
        """
        terms: dict[str, np.ndarray] = {}
        for key, value in info.items():
            if key.startswith("_") or key in ("final_obs", "final_info", "episode"):
                continue
            arr = np.asarray(value)
            if arr.shape == (self.num_envs,) and arr.dtype.kind in "fiub":
                terms[key] = arr.copy()
        if done.any():
            final = info.get("final_info")
            final = final if isinstance(final, dict) else {}
            # a term only the finished envs report (every copy ended this step: the top level holds only
            # the resets' info): taken from there, zero for the others
            for key, value in final.items():
                if key in terms or key.startswith("_") or key in ("final_obs", "final_info", "episode"):
                    continue
                arr = np.asarray(value)
                if arr.shape == (self.num_envs,) and arr.dtype.kind in "fiub":
                    terms[key] = np.zeros_like(arr)
            for key in list(terms):
                arr = terms[key]
                stepped = np.zeros(self.num_envs, dtype=bool)  # the finished envs whose ending step reported the term
                if key in final:
                    stepped = done & np.asarray(final.get("_" + key, done), dtype=bool)
                    arr[stepped] = np.asarray(final[key])[stepped]
                arr[done & ~stepped] = 0  # the top level holds the reset's value there, not the step's
                reported = stepped | (~done & np.asarray(info.get("_" + key, ~done), dtype=bool))
                if not reported.any():  # only the resets report it: no step term
                    del terms[key]
        return LazyTensors(terms, self.device)

    def state_dict(self) -> dict[str, Any] | None:
        self._refuse_step("state_dict()")  # WorkerDied where the simulators went with their worker processes
        snaps = list(self._vector_call(self._vec.get_attr, "snapshot"))
        if any(s is None for s in snaps):
            return None
        state = {"envs": snaps, **self._episodes.state_dict()}
        if self.randomizer is not None:
            state["randomizer"] = self.randomizer.state_dict()
            state["pending_physics"] = copy.deepcopy(self._pending)  # a snapshot, not the live factors
            state["pending_delay"] = None if self._pending_delay is None else self._pending_delay.copy()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._refuse_if_closed()
        snaps = state["envs"]
        if len(snaps) != self.num_envs:
            raise ValueError(f"saved env state holds {len(snaps)} envs, this env has {self.num_envs}")
        if self._needs_reset:
            # gymnasium's wrappers (OrderEnforcing, the env checker) refuse a step in a sub-env never reset, where the
            # contract goes on from a loaded state as the other backends do: reset them once; the snapshot replaces
            # all the state that reset set
            self._vector_call(self._vec.reset)
        self._vec.set_attr("snapshot", list(snaps))
        self._episodes.load_state_dict(state)
        if self.randomizer is not None and "randomizer" in state:
            self.randomizer.load_state_dict(state["randomizer"])
            changed = self._pending is not None  # this env's models may hold factors the snapshot does not have
            self._pending = copy.deepcopy(state.get("pending_physics"))  # the caller keeps its snapshot
            if "pending_delay" not in state:  # snapshots before 2026-12: the current delays
                self._pending_delay = self.randomizer.delay.copy()
            else:  # None: no episode drawn ahead (randomize off)
                pending = state["pending_delay"]
                self._pending_delay = None if pending is None else np.array(pending)
            if self._pending is not None or changed:
                params = self.randomizer.params
                self._vec.set_attr("current_physics", [{k: params[k][i] for k in params} for i in range(self.num_envs)])
                self._vec.set_attr("pending_physics", [None if self._pending is None else
                                                       {k: self._pending[k][i] for k in self._pending}
                                                       for i in range(self.num_envs)])
        self._needs_reset = False  # a state to continue from, as after a reset

    def _vector_call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """reset/step of the vector env; a worker process that vanished (killed, out of memory, a crash in native
        code: no Python error to forward) is reported as such, where gymnasium raises a bare EOFError."""
        try:
            return method(*args, **kwargs)
        except (EOFError, BrokenPipeError, ConnectionResetError) as exc:
            # gymnasium forwards a worker's own exception with its type (and then stops that worker, exit code 0),
            # so these may be the task's: only a worker that exited on its own, with a nonzero code, is reported
            # as one (its pipe closes as it exits: give it a moment to be reaped)
            dead: list[int] = []
            if self.vectorization == "async":
                deadline = time.monotonic() + 2.0
                while not (dead := [p.exitcode for p in self._vec.processes if not p.is_alive() and p.exitcode]) \
                        and time.monotonic() < deadline:
                    time.sleep(0.01)
            if not dead:
                self._stop_after_task_error(method, exc)
                raise
            self._abandon_workers()
            # a negative code is the signal that killed it; a positive one the code it exited with (os._exit(3), a
            # sys.exit in the task's code, which gymnasium does not forward as an error)
            why = ("killed by a signal, e.g. the kernel's OOM killer (SIGKILL) or a job scheduler stopping every "
                   "process of the job (SIGTERM), or a crash in the simulator's native code" if any(c < 0 for c in dead)
                   else "the worker exited with that code: the task's code (or a library it calls) ended the process, "
                   "e.g. with sys.exit or os._exit")
            self._workers_lost = (
                f"{self.task_id}: a worker process of env.vectorization=async exited during {method.__name__}() "
                f"without a Python error (exit code {', '.join(map(_exit_code, dead))}: {why}); this env is now "
                "closed. Run with env.vectorization=sync to see the failure in this process")
            raise WorkerDied(self._workers_lost) from exc
        except Exception as exc:
            self._stop_after_task_error(method, exc)
            raise
        finally:
            if self._mujoco_warnings is not None:
                self._mujoco_warnings.drain()

    def _stop_after_task_error(self, method: Callable[..., Any], exc: BaseException) -> None:
        """After gymnasium forwarded a task's own error from a worker process it has shut that worker down (its pipe is
        gone): close the env, so that its next call says why instead of failing on the missing pipe (AttributeError:
        'NoneType' object has no attribute 'send'). The task's error itself is raised unchanged by the caller."""
        if self.vectorization != "async" or all(pipe is not None for pipe in self._vec.parent_pipes):
            return
        self._abandon_workers()
        self._workers_lost = (
            f"{self.task_id}: the task raised {type(exc).__name__}: {exc} in a worker process of env.vectorization=async "
            f"during {method.__name__}(), and gymnasium shut that worker down; this env is now closed. Make a new one "
            "(envs.make_env), or run with env.vectorization=sync to debug the task in this process")

    def _refuse_if_closed(self) -> None:
        # closed because a worker died: a reset or step after it (e.g. once a checkpoint was saved without the
        # simulator state, see RunnerCheckpoints.state) says why, not "this env was closed; make a new one"
        lost = getattr(self, "_workers_lost", None)
        if lost is not None:
            raise WorkerDied(lost)
        super()._refuse_if_closed()

    def _abandon_workers(self) -> None:
        """Close after a worker died: gymnasium's own close() would wait on the dead worker's pipe and raise again."""
        vec = self._vec
        for process in vec.processes:
            if process.is_alive():
                process.terminate()
        for pipe in vec.parent_pipes:
            if pipe is not None:
                pipe.close()
        for process in vec.processes:
            process.join(timeout=5)
        vec.closed = True
        super().close()

    def close(self) -> None:
        super().close()
        if isinstance(self._vec, AsyncVectorEnv) and getattr(self._vec, "_state", AsyncState.DEFAULT) != AsyncState.DEFAULT:
            # a reset/step cut short in this process (a KeyboardInterrupt: a second Ctrl-C) may have read some
            # workers' replies already, and gymnasium's close would wait for them forever: stop the workers instead
            self._vec.close(terminate=True)
        else:
            try:
                self._vec.close()
            except (BrokenPipeError, ConnectionResetError, EOFError):
                # workers already gone: a SIGTERM to the whole process group (a second Ctrl-C + kill, a scheduler's
                # group signal) reached them after the run had saved; gymnasium's close wrote to their closed pipes,
                # and the run that had stopped cleanly exited 1 with a traceback. Reap them instead
                self._vec.close(terminate=True)
        if self._mujoco_warnings is not None:
            self._mujoco_warnings.close()

    def _flags(self, x: np.ndarray) -> torch.Tensor:
        return on_device(torch.from_numpy(np.asarray(x, dtype=bool)), self.device)

    def _to_tensor(self, x: np.ndarray) -> torch.Tensor:
        return on_device(torch.from_numpy(np.asarray(x, dtype=np.float32)), self.device)
