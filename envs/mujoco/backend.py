"""Batched MuJoCo backend (``env.backend=mujoco``): N simulations stepped by ``mujoco.batch``.

The physics is MuJoCo's own, stepped on a thread pool and bit-identical to ``mj_step``; the task
logic (observations, rewards, terminations, time limit, reset noise, info terms) is computed for
all envs at once in numpy by ``envs.mujoco.tasks``. Nothing runs per env in Python except the
resets of envs whose episode just ended (their reset noise is drawn from each env's own
generator, in the order gymnasium draws it).

Two details keep it identical to gymnasium:
  * gymnasium calls ``mj_rnePostConstraint`` after every step; only Ant, Humanoid and HumanoidStandup
    read what it computes (``cfrc_ext``), so only they use a persistent batch and call it per env afterwards;
  * derived fields (``xpos``, ``site_xpos``, ...) are, as after ``mj_step``, one substep behind
    the state; the backend keeps its own copies so that a restored snapshot continues exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import mujoco.batch
import numpy as np
import torch
from gymnasium.utils.seeding import np_random

from envs.base import BatchedEnv, EpisodeTracker, LazyTensors, StepResult, episode_to_torch, on_device
from envs.mujoco.tasks import Sim, Task, task_for
from envs.randomization import (PHYSICS_PARAMS, RandomizationSpec, Randomizer, check_action_delay, env_ids,
                                pair_friction_scale)
from envs.resources import MIN_BYTES_PER_ENV, check_envs_fit, usable_cpus

# the model fields each physics factor scales (expanded to per-simulation values on first use)
_FIELDS_OF = {
    "body_mass_scale": ("body_mass", "body_inertia"),
    "geom_friction_scale": ("geom_friction", "pair_friction"),  # explicit pairs carry their own friction
    "joint_damping_scale": ("dof_damping",),
    "actuator_gain_scale": ("actuator_gainprm", "actuator_biasprm"),
    "gravity_scale": ("opt.gravity",),
}

# MjData fields that make up a simulation's integration state (mjSTATE_INTEGRATION), as bound by the batch; those
# this MuJoCo has (``plastic`` came with MuJoCo 4: 3.17, the first release with mujoco.batch, lacks it)
_STATE_FIELDS = tuple(f for f in ("time", "qpos", "qvel", "act", "history", "qacc_warmstart", "ctrl", "qfrc_applied",
                                  "xfrc_applied", "eq_active", "mocap_pos", "mocap_quat", "userdata", "plugin_state",
                                  "plastic") if hasattr(mujoco.MjData, f))


def make_task_renderer(model: Any, task: Task, width: int | None, height: int | None) -> Any:
    """A renderer for ``task`` with its render keyword arguments, as gymnasium's MujocoEnv applies them: the size
    (480 x 480 by default; the model's offscreen buffer grows to it, never shrinks) and ``default_camera_config``."""
    from envs.rendering import MujocoRenderer, gym_camera_config

    kw = task.render_kwargs
    width = int(width if width is not None else kw.get("width", 480))
    height = int(height if height is not None else kw.get("height", 480))
    size = model.vis.global_.offwidth, model.vis.global_.offheight
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)  # visual only: the physics is unchanged
    model.vis.global_.offheight = max(model.vis.global_.offheight, height)
    camera = kw["default_camera_config"] if "default_camera_config" in kw else gym_camera_config(task.gym_cls())
    try:
        return MujocoRenderer(model, camera, width, height)
    except Exception:
        model.vis.global_.offwidth, model.vis.global_.offheight = size  # (a buffer too large for OpenGL: none drew)
        raise


def _load_model(task_id: str, path: str) -> Any:
    """The task's compiled model; a file MuJoCo cannot read, or one without actuators, named as env.kwargs.xml_file."""
    where = f"{task_id}: kwargs xml_file={path}"
    if not Path(path).is_file():  # a directory: MuJoCo's "File size over 2GB is not supported"
        raise ValueError(f"{where} is {'a directory' if Path(path).is_dir() else 'not a file'}; give a MuJoCo XML model file")
    try:
        model = mujoco.MjModel.from_xml_path(path)
    except ValueError as exc:  # MuJoCo's parser or compiler ("XML parse error 8")
        raise ValueError(f"{where}: MuJoCo cannot load it ({' '.join(str(exc).split())})") from None
    if model.nu < 1:
        raise ValueError(f"{where}: the model has no actuators, so no action reaches it (the task acts through "
                         "its <actuator> elements)")
    return model


class MujocoBatchedEnv(BatchedEnv):
    """``num_envs`` copies of a gymnasium v5 MuJoCo task on one ``mujoco.batch.Batch``.

    Args:
        task_id: one of ``envs.mujoco.TASKS`` (e.g. "Hopper-v5").
        num_envs: number of simulations N.
        kwargs: the gymnasium task's keyword arguments (``ctrl_cost_weight``, ``frame_skip``, ...).
        max_episode_steps: time limit; default: the gymnasium registry's.
        threads: physics threads (0: all CPUs).
        device: where the returned tensors live.
        randomize: domain randomization (``envs.randomization.RandomizationSpec``), off by default.
    """

    backend = "mujoco"
    render_mode = "rgb_array"  # render() draws any simulation (SB3's view and video recorder read this)

    def __init__(
        self,
        task_id: str,
        num_envs: int = 1,
        kwargs: dict[str, Any] | None = None,
        max_episode_steps: int | None = None,
        threads: int = 0,
        device: str | torch.device = "cpu",
        randomize: RandomizationSpec | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.task: Task = task_for(task_id, dict(kwargs or {}))
        self.task_id = task_id
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.model = _load_model(task_id, self.task.xml_path())
        self.task.setup(self.model)
        self.dt = float(self.task.dt)
        self._min_advance = (self.task.frame_skip - 0.5) * self.model.opt.timestep  # a step moves time by frame_skip dt
        limit = max_episode_steps if max_episode_steps is not None else gym.spec(task_id).max_episode_steps
        self.max_episode_steps = int(limit) if limit else None
        check_action_delay(task_id, randomize, num_envs, self.model.nu, self.max_episode_steps)
        # more threads than simulations only adds hand-off latency (one env: step on the caller's thread)
        nthread = min(threads or usable_cpus(), num_envs)
        persistent = self.task.needs_post_constraint
        check_envs_fit(task_id, num_envs, self._bytes_per_env_floor(persistent))
        try:
            self.batch = mujoco.batch.Batch(self.model, num_envs, nthread=nthread, persistent=persistent)
        except ValueError as exc:  # MuJoCo's C++ allocation failure arrives as ValueError("std::bad_alloc")
            if "bad_alloc" not in str(exc):
                raise
            raise MemoryError(f"{task_id}: MuJoCo could not allocate {num_envs:,} simulations; lower num_envs") from exc
        self.qpos, self.qvel, self.ctrl, self.time = (self.batch.bind(f) for f in ("qpos", "qvel", "ctrl", "time"))
        self._derived = {name: np.zeros_like(self.batch.bind(name)) for name in self.task.derived}
        self._cfrc_ext = np.zeros((num_envs, self.model.nbody, 6)) if self.task.needs_post_constraint else None
        # cfrc_ext as mj_forward leaves it at a reset: zero, unless the model has an acceleration sensor
        # (accelerometer, force, torque, framelinacc/angacc, e.g. in a custom xml_file) that makes it compute them
        self._cfrc_ext_forward = self.batch.bind("cfrc_ext") if self.task.needs_post_constraint else None
        self._scratch = mujoco.MjData(self.model) if self.task.needs_post_constraint else None
        # the masses every simulation shares until randomization gives each its own (_write_physics)
        body_mass = np.broadcast_to(self.model.body_mass, (num_envs, self.model.nbody))
        dof_damping = np.broadcast_to(self.model.dof_damping, (num_envs, self.model.nv))
        self.sim = Sim(self.model, self.qpos, self.qvel, self.ctrl, self._derived, self._cfrc_ext, body_mass, dof_damping)
        self.init_qpos = self.model.qpos0.copy()  # what gymnasium reads from a fresh MjData
        self.init_qvel = np.zeros(self.model.nv)
        self._rngs = [np_random(None)[0] for _ in range(num_envs)]
        self._elapsed = np.zeros(num_envs, dtype=np.int64)
        self._episodes = EpisodeTracker(num_envs)
        self._obs = np.zeros((num_envs, 0))
        self.diverged_total = 0  # simulations reset because MuJoCo diverged (NaN / huge accelerations)

        low, high = self.model.actuator_ctrlrange.copy().astype(np.float32).T
        self.action_space = gym.spaces.Box(low=low, high=high, dtype=np.float32)
        self.randomize = randomize if randomize is not None and randomize.enabled else None
        self.randomizer = Randomizer(randomize or RandomizationSpec(), self.model, num_envs, len(low), (high - low) / 2,
                                     task_id=task_id)
        self._nominal: dict[str, np.ndarray] = {}
        self._reset_ids(np.arange(num_envs))  # the state the first reset() replaces (it sizes the observation)
        self._needs_reset = True
        obs_dim = self._obs.shape[1]
        # what reset() and step() hand out: float32 (the numpy core, reset_numpy/step_numpy, is float64 as gymnasium)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)

    # -- numpy core (float64, as gymnasium) -----------------------------------------------------------
    def reset_numpy(self, seed: int | None = None) -> np.ndarray:
        seed = self.check_seed(seed)
        if seed is not None:  # seed=None continues the generators, as gymnasium's reset does
            self._rngs = [np_random(seed + i)[0] for i in range(self.num_envs)]
        self.randomizer.seed(seed)
        self._episodes.reset()
        self._reset_ids(np.arange(self.num_envs))
        self._needs_reset = False
        return self._obs.copy()

    def step_numpy(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One step of every env with float32 actions [N, A]; float64 obs as gymnasium returns them."""
        self._refuse_step()
        obs, reward, terminated, truncated, info = self._step(actions)
        info["final_obs"] = info["final_obs"].copy()
        return obs.copy(), reward, terminated, truncated, info

    def _step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """step_numpy without defensive copies: obs is the env's own buffer, final_obs may be obs."""
        task, sim = self.task, self.sim
        previous_obs = self._obs
        before = task.before_step(sim)
        # MuJoCo resets a diverging simulation itself (time restarts at 0, then the remaining
        # substeps run) or raises: detect both by the clock falling behind, and by non-finite values
        expected = self.time + self._min_advance
        applied = self.randomizer.act(actions) if self.randomize is not None else actions
        self.ctrl[:] = applied
        failed = self._physics_step()
        obs = task.observe(sim)
        reward, terminated, info = task.after_step(sim, before, applied)
        if self.randomize is not None:
            obs = self.randomizer.observe(obs)
        diverged = failed | (self.time < expected)
        if not np.isfinite(np.add.reduce(obs, axis=1)).all():  # a row's sum is finite unless an element is not
            diverged |= ~np.isfinite(obs).all(axis=1)  # (or the sum overflows: the exact test decides)
        self._elapsed += 1
        truncated = (self._elapsed >= self.max_episode_steps) if self.max_episode_steps else np.zeros(self.num_envs, bool)
        if diverged.any():
            obs[diverged] = previous_obs[diverged]  # the last finite observation of that episode
            reward = np.where(diverged, 0.0, reward)
            terminated = terminated & ~diverged
            truncated = truncated | diverged
            self.diverged_total += int(diverged.sum())
        done = terminated | truncated
        self._obs = obs
        any_done = bool(done.any())
        final_obs = obs.copy() if any_done else obs  # where nothing ended, final_obs is obs
        if any_done:
            self._reset_ids(np.flatnonzero(done))
        info["diverged"] = diverged
        info["final_obs"] = final_obs
        info["episode"] = self._episodes.step(reward, done)
        return self._obs, reward, terminated, truncated, info

    def _physics_step(self) -> np.ndarray:
        failed = np.zeros(self.num_envs, bool)
        try:
            self.batch.step(nstep=self.task.frame_skip)
        except mujoco.batch.SimulationError as exc:  # those simulations kept their previous state
            failed[exc.ids] = True
        self._refresh_derived()
        if self._cfrc_ext is not None:
            # gymnasium: mj_rnePostConstraint after mj_step, on each env's complete MjData
            scratch = self._scratch
            for i in range(self.num_envs):
                self.batch.get_data(i, scratch)
                mujoco.mj_rnePostConstraint(self.model, scratch)
                self._cfrc_ext[i] = scratch.cfrc_ext
        return failed

    def _refresh_derived(self) -> None:
        for name, copy in self._derived.items():
            np.copyto(copy, self.batch.bind(name))

    def _bytes_per_env_floor(self, persistent: bool) -> int:
        """Bytes every simulation needs at least: its physics state in the batch, its random generator and
        (a persistent batch) a whole MjData's buffer. Measured use is several times this (Hopper ~7 KiB,
        Humanoid ~210 KiB per env), so a batch refused on it could never have fit."""
        state = 8 * mujoco.mj_stateSize(self.model, mujoco.mjtState.mjSTATE_FULLPHYSICS)
        return MIN_BYTES_PER_ENV + state + (mujoco.MjData(self.model).nbuffer if persistent else 0)

    def _reset_ids(self, ids: np.ndarray) -> None:
        """mj_resetData + reset_model + mj_forward for the given envs, as gymnasium's reset."""
        if self.randomize is not None:
            changed = self.randomizer.resample(ids)  # this episode's physics, before the reset state
            if len(changed):
                self._write_physics(changed)
        self.batch.reset(ids, stage=mujoco.mjtStage.mjSTAGE_NONE)
        for i in ids:
            qpos, qvel = self.task.reset_state(self._rngs[i], self.init_qpos, self.init_qvel)
            self.qpos[i] = qpos
            self.qvel[i] = qvel
        self.batch.forward(ids)
        self._refresh_derived()
        if self._cfrc_ext is not None:
            # gymnasium reads what mj_resetData + mj_forward leave: zero, or a sensor-triggered mj_rnePostConstraint's
            self._cfrc_ext[ids] = self._cfrc_ext_forward[ids]
        self._elapsed[ids] = 0
        obs = self.task.observe(self.sim)
        if self.randomize is not None:
            obs = self.randomizer.observe(obs)
        if self._obs.shape != obs.shape:
            self._obs = obs
        else:
            self._obs[ids] = obs[ids]

    # -- physics parameters (domain randomization) ---------------------------------------------------
    def physics_params(self) -> dict[str, torch.Tensor]:
        """Each env's current physics factors: name -> [N, k] (1.0 = the nominal model)."""
        return {k: torch.from_numpy(v.copy()) for k, v in self.randomizer.params.items()}

    def set_physics_params(self, values: dict[str, Any], ids: Any = None) -> None:
        """Fix physics factors for envs ``ids`` (default: all), e.g. to evaluate on a chosen model.

        The given factors are kept across resets (the others keep being drawn); takes effect immediately (the next step).
        """
        self._refuse_if_closed()
        ids = env_ids(ids, self.num_envs)
        self.randomizer.set_params(values, ids)
        self._write_physics(ids)

    def _write_physics(self, ids: np.ndarray) -> None:
        r = self.randomizer
        for name in PHYSICS_PARAMS:
            if name in r.spec.physics or np.any(r.params[name][ids] != 1.0) or any(f in self._nominal for f in _FIELDS_OF[name]):
                for field in _FIELDS_OF[name]:
                    if field not in self._nominal:
                        self._nominal[field] = self.batch.expand(field)[0].copy()
                scale = r.params[name][ids]
                if name == "body_mass_scale":
                    self.batch.expand("body_mass")[ids] = self._nominal["body_mass"] * scale
                    self.batch.expand("body_inertia")[ids] = self._nominal["body_inertia"] * scale[:, :, None]
                elif name == "geom_friction_scale":
                    self.batch.expand("geom_friction")[ids, :, 0] = self._nominal["geom_friction"][:, 0] * scale
                    self.batch.expand("pair_friction")[ids, :, 0:2] = (
                        self._nominal["pair_friction"][:, 0:2] * pair_friction_scale(self.model, scale)[:, :, None])
                elif name == "joint_damping_scale":
                    self.batch.expand("dof_damping")[ids] = self._nominal["dof_damping"] * scale
                elif name == "actuator_gain_scale":
                    self.batch.expand("actuator_gainprm")[ids, :, 0] = self._nominal["actuator_gainprm"][:, 0] * scale
                    self.batch.expand("actuator_biasprm")[ids, :, 1:3] = self._nominal["actuator_biasprm"][:, 1:3] * scale[:, :, None]
                else:
                    self.batch.expand("opt.gravity")[ids] = self._nominal["opt.gravity"] * scale
        if "body_mass" in self._nominal:
            self.sim.body_mass = self.batch.expand("body_mass")  # live per-simulation masses, read by Humanoid's reward
        if "dof_damping" in self._nominal:
            self.sim.dof_damping = self.batch.expand("dof_damping")  # read by ContactMaze's dissipated energy
        self.batch.set_const(ids)

    # -- rendering ------------------------------------------------------------------------------------
    def render(self, index: int = 0, width: int | None = None, height: int | None = None) -> np.ndarray:
        """An RGB frame of simulation ``index``, with the camera gymnasium uses for this task.

        The size defaults to the task's ``width``/``height`` keyword arguments (gymnasium's 480 x 480), the camera
        to its ``default_camera_config`` (else the gymnasium task's DEFAULT_CAMERA_CONFIG). After reset() only."""
        self._refuse_step("render()")
        if getattr(self, "_renderer", None) is None:
            self._renderer = make_task_renderer(self.model, self.task, width, height)
            self._render_data = mujoco.MjData(self.model)
        self.batch.get_data(index, self._render_data)
        mujoco.mj_forward(self.model, self._render_data)  # positions of this state (a copy: the batch is untouched)
        return self._renderer.render(self._render_data)

    def close(self) -> None:
        """Frees the simulations (MuJoCo's batch, its threads and the arrays bound to it) and the renderer."""
        super().close()
        self._release("_renderer", "_render_data", "batch", "qpos", "qvel", "ctrl", "time", "_derived", "_cfrc_ext",
                      "_cfrc_ext_forward", "_scratch", "sim", "_obs")

    # -- the torch contract ---------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> torch.Tensor:
        return self._tensor(self.reset_numpy(seed))

    def step(self, actions: torch.Tensor) -> StepResult:
        obs, reward, terminated, truncated, info = self._step(self.check_actions_numpy(actions))
        final, episode = info.pop("final_obs"), info.pop("episode")
        obs_t = self._tensor(obs)
        out = {
            "final_obs": obs_t if final is obs else self._tensor(final),
            "episode": episode_to_torch(episode, self.device),
            "diverged": self._move(torch.from_numpy(info.pop("diverged"))),
            "task": LazyTensors(info, self.device),
        }
        return StepResult(obs_t, self._tensor(reward), self._move(torch.from_numpy(terminated)),
                          self._move(torch.from_numpy(truncated)), out)

    def _move(self, t: torch.Tensor) -> torch.Tensor:
        return on_device(t, self.device)

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return self._move(torch.from_numpy(x.astype(np.float32)))

    # -- exact snapshots ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self._refuse_step("state_dict()")
        state = {f"sim.{f}": self.batch.bind(f).copy() for f in _STATE_FIELDS if self.batch.bind(f).size}
        state.update({f"derived.{k}": v.copy() for k, v in self._derived.items()})
        if self._cfrc_ext is not None:
            state["cfrc_ext"] = self._cfrc_ext.copy()
        state.update(
            obs=self._obs.copy(), elapsed=self._elapsed.copy(), rngs=[g.bit_generator.state for g in self._rngs],
            diverged_total=self.diverged_total, randomizer=self.randomizer.state_dict(), **self._episodes.state_dict(),
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._refuse_if_closed()
        if len(state["rngs"]) != self.num_envs:
            raise ValueError(f"saved env state holds {len(state['rngs'])} envs, this env has {self.num_envs}")
        for f in _STATE_FIELDS:
            if f"sim.{f}" in state:
                self.batch.bind(f)[:] = state[f"sim.{f}"]
        for k in self._derived:
            self._derived[k][:] = state[f"derived.{k}"]
        if self._cfrc_ext is not None:
            self._cfrc_ext[:] = state["cfrc_ext"]
        self._obs = np.array(state["obs"], copy=True)
        self._elapsed[:] = state["elapsed"]
        for g, s in zip(self._rngs, state["rngs"]):
            g.bit_generator.state = s
        self.diverged_total = int(state["diverged_total"])
        self._episodes.load_state_dict(state)
        self.randomizer.load_state_dict(state["randomizer"])
        # also when only this env's simulations were changed (set_physics_params before a nominal snapshot is loaded):
        # they would keep those factors while physics_params() reports the snapshot's; and when only the snapshot's
        # were (a randomized env's, loaded into one without randomization: it ran on with the nominal model)
        if (self.randomize is not None or self.randomizer.fixed.any() or self._nominal
                or any(np.any(v != 1.0) for v in self.randomizer.params.values())):
            self._write_physics(np.arange(self.num_envs))
        self._needs_reset = False  # a state to continue from, as after a reset
