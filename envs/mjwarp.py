"""MuJoCo Warp backend (``env.backend=mjwarp``): the same tasks on GPU-parallel physics.

For machines with a CUDA GPU: N worlds are stepped by ``mujoco_warp`` on the device, and the task
logic of ``envs.mujoco.tasks`` runs in torch on zero-copy views of Warp's arrays, so observations,
rewards and flags never leave the GPU. Resets draw gymnasium's reset noise on the host for the
worlds that ended (a few numbers), and domain randomization writes per-world model arrays.

MuJoCo Warp simulates in float32 with its own solver, so results track gymnasium's float64 MuJoCo
closely but not bit for bit (``env.backend=mujoco`` is the exact one). It also runs on Warp's CPU
device, slowly (kernels are compiled on first use, ~30 s, then cached in ~/.cache/warp): that is
how it is tested on a machine without a GPU.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch
from gymnasium.utils.seeding import np_random

from envs.base import BatchedEnv, MissingDependency, StepResult
from envs.mujoco.tasks import Sim, Task, task_for
from envs.randomization import RandomizationSpec, Randomizer, check_action_delay, env_ids, pair_friction_scale

# a child of the "robo_rl" logger (a name, not an import: envs does not import robo_rl): under robo-rl its warnings
# read "robo-rl: warning: ..." on the console and are in train.log; "envs.mjwarp" came bare, and not in the file
log = logging.getLogger("robo_rl.envs.mjwarp")

# per-world model arrays each physics factor scales
_FIELDS_OF = {
    "body_mass_scale": ("body_mass", "body_inertia"),
    "geom_friction_scale": ("geom_friction", "pair_friction"),  # explicit pairs carry their own friction
    "joint_damping_scale": ("dof_damping",),
    "actuator_gain_scale": ("actuator_gainprm", "actuator_biasprm"),
}
# what mjw.set_const derives from the masses: per world too when masses are, or every world would use the
# constants of the last world written (put_model gives them one shared row)
_MASS_CONSTANTS = ("body_subtreemass", "dof_invweight0", "body_invweight0", "actuator_acc0", "tendon_invweight0")
_STATE = ("qpos", "qvel", "act", "ctrl", "qacc_warmstart", "time")


def _import_warp() -> tuple[Any, Any]:
    try:
        import mujoco_warp as mjw
        import warp as wp
    except ImportError:
        raise MissingDependency(
            "env.backend=mjwarp needs MuJoCo Warp: pip install 'robo-rl[warp]' (mujoco-warp and warp-lang); "
            "it runs on CUDA GPUs, and slowly on the CPU"
        ) from None
    # per-world model arrays (put_model's batch_sizes, which every env here passes) first shipped in mujoco-warp 3.10:
    # with an older release each env failed in its constructor with "unexpected keyword argument 'batch_sizes'"
    if "batch_sizes" not in inspect.signature(mjw.put_model).parameters:
        raise MissingDependency(
            f"env.backend=mjwarp needs mujoco-warp >= 3.10 (per-world model arrays), found "
            f"{getattr(mjw, '__version__', 'an older release')}: pip install --upgrade 'mujoco-warp>=3.10'")
    # Warp prints a line per kernel module it loads (~45 per model, each run and evaluation env) unless told not to:
    # warp-lang >= 1.10 reads log_level (config.quiet, which older releases read, is silently ignored there)
    if hasattr(wp, "LOG_WARNING"):
        wp.config.log_level = max(int(getattr(wp.config, "log_level", 0)), wp.LOG_WARNING)
    else:
        wp.config.quiet = True
    return wp, mjw


class MjwarpBatchedEnv(BatchedEnv):
    backend = "mjwarp"
    render_mode = "rgb_array"  # render() draws any world (SB3's view and video recorder read this)

    def __init__(
        self,
        task_id: str,
        num_envs: int = 1,
        kwargs: dict[str, Any] | None = None,
        max_episode_steps: int | None = None,
        device: str | torch.device = "cuda",
        randomize: RandomizationSpec | None = None,
        nconmax: int | None = None,
        njmax: int | None = None,
    ) -> None:
        from envs.mujoco.tasks import TASKS

        if task_id not in TASKS:
            raise ValueError(f"env.backend=mjwarp has no task {task_id!r}: it runs {', '.join(TASKS)}; "
                             "any other gymnasium id runs on env.backend=gymnasium")
        wp, mjw = _import_warp()
        self._wp, self._mjw = wp, mjw
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):  # Warp's devices: its tensors could not live on e.g. mps
            raise ValueError(f"env.backend=mjwarp runs on device=cuda or device=cpu (Warp's devices), not {self.device}")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("env.backend=mjwarp on device=cuda needs a CUDA GPU; use device=cpu (slow) or env.backend=mujoco")
        self.wp_device = f"cuda:{self.device.index or 0}" if self.device.type == "cuda" else "cpu"
        self.task: Task = task_for(task_id, dict(kwargs or {}))
        self.task_id, self.num_envs = task_id, num_envs
        self.model = mujoco.MjModel.from_xml_path(self.task.xml_path())
        self.solver_note = None
        if self.model.opt.solver == mujoco.mjtSolver.mjSOL_PGS:  # Humanoid's and HumanoidStandup's models
            self.model.opt.solver = mujoco.mjtSolver.mjSOL_NEWTON
            self.solver_note = (f"{task_id}: MuJoCo Warp has no PGS solver, the one this model names; "
                                "it runs with Newton (the dynamics differ slightly from env.backend=mujoco)")
            log.warning(self.solver_note)
        self.task.setup(self.model)
        self.dt = float(self.task.dt)
        limit = max_episode_steps if max_episode_steps is not None else gym.spec(task_id).max_episode_steps
        self.max_episode_steps = int(limit) if limit else None
        check_action_delay(task_id, randomize, num_envs, self.model.nu, self.max_episode_steps)
        low, high = self.model.actuator_ctrlrange.copy().astype(np.float32).T
        self.action_space = gym.spaces.Box(low=low, high=high, dtype=np.float32)
        self.randomize = randomize if randomize is not None and randomize.enabled else None
        spec = randomize or RandomizationSpec()
        self.randomizer = Randomizer(spec, self.model, num_envs, len(low), (high - low) / 2, task_id=task_id)

        batched = {f: num_envs for name in spec.physics if name in _FIELDS_OF for f in _FIELDS_OF[name]
                   if f != "pair_friction" or self.model.npair}
        if "body_mass_scale" in spec.physics:
            batched.update({f: num_envs for f in _MASS_CONSTANTS if f != "tendon_invweight0" or self.model.ntendon})
        with wp.ScopedDevice(self.wp_device):
            try:
                self.m = mjw.put_model(self.model, batch_sizes=batched or None)
            except NotImplementedError as exc:  # a model feature MuJoCo Warp does not implement
                raise ValueError(f"env.backend=mjwarp: MuJoCo Warp cannot simulate {task_id}'s model ({exc}); "
                                 "env.backend=mujoco runs it on the CPU") from None
            if "gravity_scale" in spec.physics:  # Option.gravity is per-world capable; put_model does not batch it
                self.m.opt.gravity = wp.array(np.tile(self.model.opt.gravity, (num_envs, 1)).astype(np.float32), dtype=wp.vec3)
            self.d = mjw.make_data(self.model, nworld=num_envs, nconmax=nconmax, njmax=njmax)
        t = wp.to_torch
        self.qpos, self.qvel, self.ctrl, self.time = t(self.d.qpos), t(self.d.qvel), t(self.d.ctrl), t(self.d.time)
        self._derived = {name: t(getattr(self.d, name)) for name in self.task.derived}
        self._cfrc_ext = t(self.d.cfrc_ext) if self.task.needs_post_constraint else None
        sensors_on = not self.model.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_SENSOR
        self._forward_computes_cfrc = bool(getattr(self.m.opt, "run_rne_postconstraint", False)) or (
            sensors_on and bool(getattr(self.m, "sensor_rne_postconstraint", False)))
        body_mass = t(self.m.body_mass).expand(num_envs, -1)  # live: [1, nbody] shared, or per world when randomized
        dof_damping = t(self.m.dof_damping).expand(num_envs, -1)  # likewise
        self.sim = Sim(self.model, self.qpos, self.qvel, self.ctrl, self._derived, self._cfrc_ext, body_mass, dof_damping)
        self._model_views = {f: t(getattr(self.m, f)) for f in batched if f not in _MASS_CONSTANTS}
        self._nominal = {f: v[0].clone() for f, v in self._model_views.items()}
        if "gravity_scale" in spec.physics:
            self._model_views["gravity"] = t(self.m.opt.gravity)
            self._nominal["gravity"] = self._model_views["gravity"][0].clone()
        self.init_qpos = self.model.qpos0.copy()
        self.init_qvel = np.zeros(self.model.nv)
        self._rngs = [np_random(None)[0] for _ in range(num_envs)]
        self._noise = torch.Generator(device=self.device)
        self._noise.seed()  # until a seeded reset: fresh noise per env, as the other backends' unseeded generators
        self._elapsed = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self._ep_return = torch.zeros(num_envs, dtype=torch.float64, device=self.device)
        self._ep_length = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        delay = spec.action_delay[1] if spec.action_delay else 0
        self._action_buffer = torch.zeros(num_envs, delay + 1, len(low), device=self.device)
        self._action_scale = torch.as_tensor((high - low) / 2, device=self.device)
        self._obs = None
        self.diverged_total = 0
        self._reset_worlds(torch.ones(num_envs, dtype=torch.bool, device=self.device))  # replaced by the first reset()
        self._needs_reset = True
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self._obs.shape[1],), np.float32)

    # -- physics -----------------------------------------------------------------------------------
    def _step_physics(self) -> None:
        mjw = self._mjw
        with self._wp.ScopedDevice(self.wp_device):
            for _ in range(self.task.frame_skip):
                mjw.step(self.m, self.d)
            if self._cfrc_ext is not None:
                mjw.rne_postconstraint(self.m, self.d)  # as gymnasium after each step

    def _reset_worlds(self, mask: torch.Tensor) -> None:
        ids = mask.nonzero().flatten().cpu().numpy()
        # before _write_physics: its set_const recomputes every world's kinematics at the current state
        keep = {k: v.clone() for k, v in self._derived.items()}
        if self._cfrc_ext is not None:  # forward recomputes it in every world when an acceleration sensor asks for it
            keep_cfrc = self._cfrc_ext.clone()
        if self.randomize is not None:
            changed = self.randomizer.resample(ids)
            if len(changed):
                self._write_physics(changed)
            self._action_buffer[mask] = 0.0
        wp, mjw = self._wp, self._mjw
        with wp.ScopedDevice(self.wp_device):
            mjw.reset_data(self.m, self.d, reset=wp.from_torch(mask))
            qpos = np.empty((len(ids), self.model.nq))
            qvel = np.empty((len(ids), self.model.nv))
            for row, i in enumerate(ids):
                qpos[row], qvel[row] = self.task.reset_state(self._rngs[i], self.init_qpos, self.init_qvel)
            index = torch.as_tensor(ids, device=self.device)
            self.qpos[index] = torch.as_tensor(qpos, dtype=self.qpos.dtype, device=self.device)
            self.qvel[index] = torch.as_tensor(qvel, dtype=self.qvel.dtype, device=self.device)
            mjw.forward(self.m, self.d)
        for k, v in self._derived.items():  # worlds that did not reset keep their step's values
            v[~mask] = keep[k][~mask]
        if self._cfrc_ext is not None:
            # as gymnasium after mj_resetData + mj_forward: zero, unless an acceleration sensor (accelerometer, force,
            # torque, framelinacc/angacc, e.g. in a custom xml_file) made forward compute them
            if not self._forward_computes_cfrc:
                self._cfrc_ext[mask] = 0.0
            self._cfrc_ext[~mask] = keep_cfrc[~mask]
        self._elapsed[mask] = 0
        obs = self._noisy(self.task.observe(self.sim))
        if self._obs is None:
            self._obs = obs.clone()
        else:
            self._obs[mask] = obs[mask]

    def _write_physics(self, ids: np.ndarray) -> None:
        r, v, nom = self.randomizer, self._model_views, self._nominal
        index = torch.as_tensor(ids, device=self.device)

        def scale(name: str) -> torch.Tensor:
            return torch.as_tensor(r.params[name][ids], dtype=torch.float32, device=self.device)

        for name in r.spec.physics:
            s = scale(name)
            if name == "body_mass_scale":
                v["body_mass"][index] = nom["body_mass"] * s
                v["body_inertia"][index] = nom["body_inertia"] * s[:, :, None]
            elif name == "geom_friction_scale":
                v["geom_friction"][index, :, 0] = nom["geom_friction"][:, 0] * s
                if "pair_friction" in v:
                    pair = torch.as_tensor(pair_friction_scale(self.model, r.params[name][ids]), dtype=torch.float32,
                                           device=self.device)
                    v["pair_friction"][index, :, 0:2] = nom["pair_friction"][:, 0:2] * pair[:, :, None]
            elif name == "joint_damping_scale":
                v["dof_damping"][index] = nom["dof_damping"] * s
            elif name == "actuator_gain_scale":
                v["actuator_gainprm"][index, :, 0] = nom["actuator_gainprm"][:, 0] * s
                v["actuator_biasprm"][index, :, 1:3] = nom["actuator_biasprm"][:, 1:3] * s[:, :, None]
            elif name == "gravity_scale":
                v["gravity"][index] = nom["gravity"] * s
        if "body_mass_scale" in r.spec.physics:
            with self._wp.ScopedDevice(self.wp_device):
                self._mjw.set_const(self.m, self.d)

    def _noisy(self, obs: torch.Tensor) -> torch.Tensor:
        std = self.randomizer.spec.obs_noise_std if self.randomize is not None else 0.0
        return obs + std * torch.randn(obs.shape, generator=self._noise, device=self.device) if std > 0 else obs

    def physics_params(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v.copy()) for k, v in self.randomizer.params.items()}

    def set_physics_params(self, values: dict[str, Any], ids: Any = None) -> None:
        """Fix physics factors for worlds ``ids`` (default: all); they keep them across resets.

        Only factors this env randomizes can be set: Warp allocates per-world model arrays when the
        model is put on the device, for those fields only (a range of [1, 1] makes a factor settable
        without randomizing it)."""
        self._refuse_if_closed()
        missing = sorted(set(values) - set(self.randomizer.spec.physics))
        if missing:
            raise ValueError(f"{self.task_id} on mjwarp: {', '.join(missing)} cannot be set, only the factors this env "
                             f"randomizes ({', '.join(self.randomizer.spec.physics) or 'none'}) have per-world arrays; "
                             f"build it with e.g. randomize={{'{missing[0]}': [1.0, 1.0]}}")
        ids = env_ids(ids, self.num_envs)
        self.randomizer.set_params(values, ids)
        self._write_physics(ids)

    # -- the contract ------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> torch.Tensor:
        seed = self.check_seed(seed)
        if seed is not None:  # seed=None continues the generators, as gymnasium's reset does
            self._rngs = [np_random(seed + i)[0] for i in range(self.num_envs)]
        self.randomizer.seed(seed)
        if seed is not None:
            # torch's generators take seeds below 2**64 (numpy's, above, take any): a larger one raised "Overflow when
            # unpacking long long" after the reset noise generators were already reseeded
            self._noise.manual_seed(seed % 2**64)
        self._ep_return.zero_()
        self._ep_length.zero_()
        self._reset_worlds(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        self._needs_reset = False
        return self._obs.clone()

    def step(self, actions: torch.Tensor) -> StepResult:
        actions = self.check_actions(actions)
        spec = self.randomizer.spec if self.randomize is not None else None
        if spec is not None and spec.action_noise_std > 0:
            actions = actions + torch.randn(actions.shape, generator=self._noise, device=self.device) * (
                spec.action_noise_std * self._action_scale)
        if spec is not None and spec.action_delay:
            self._action_buffer = torch.roll(self._action_buffer, 1, dims=1)
            self._action_buffer[:, 0] = actions
            delay = torch.as_tensor(self.randomizer.delay, device=self.device)
            actions = self._action_buffer[torch.arange(self.num_envs, device=self.device), delay]
        task, sim = self.task, self.sim
        previous = self._obs
        before = task.before_step(sim)
        self.ctrl.copy_(actions)
        self._step_physics()
        obs = self._noisy(task.observe(sim))
        reward, terminated, info = task.after_step(sim, before, actions)
        diverged = ~torch.isfinite(obs).all(dim=1) | ~torch.isfinite(self.qvel).all(dim=1)
        self._elapsed += 1
        truncated = (self._elapsed >= self.max_episode_steps) if self.max_episode_steps else torch.zeros_like(diverged)
        if bool(diverged.any()):
            obs = torch.where(diverged[:, None], previous, obs)
            reward = torch.where(diverged, torch.zeros_like(reward), reward)
            terminated, truncated = terminated & ~diverged, truncated | diverged
            self.diverged_total += int(diverged.sum())
        done = terminated | truncated
        final_obs = obs.clone()
        self._obs = obs
        self._ep_return += reward
        self._ep_length += 1
        episode = {"return": torch.where(done, self._ep_return, 0.0).float(), "length": torch.where(done, self._ep_length, 0),
                   "mask": done.clone()}
        self._ep_return[done] = 0.0
        self._ep_length[done] = 0
        if bool(done.any()):
            self._reset_worlds(done)
        out = {"final_obs": final_obs, "episode": episode, "diverged": diverged, "task": info}
        return StepResult(self._obs.clone(), reward.float(), terminated, truncated, out)

    def render(self, index: int = 0, width: int | None = None, height: int | None = None) -> np.ndarray:
        from envs.mujoco.backend import make_task_renderer

        self._refuse_step("render()")
        if getattr(self, "_renderer", None) is None:
            self._renderer = make_task_renderer(self.model, self.task, width, height)
            self._render_data = mujoco.MjData(self.model)
        with self._wp.ScopedDevice(self.wp_device):
            self._mjw.get_data_into(self._render_data, self.model, self.d, world_id=index)
        mujoco.mj_forward(self.model, self._render_data)
        return self._renderer.render(self._render_data)

    def close(self) -> None:
        """Frees the worlds (MuJoCo Warp's model and data, device memory on a GPU, the tensors viewing them) and the
        renderer."""
        super().close()
        self._release("_renderer", "_render_data", "m", "d", "qpos", "qvel", "ctrl", "time", "_derived", "_cfrc_ext",
                      "sim", "_model_views", "_nominal", "_obs", "_action_buffer", "_elapsed", "_ep_return", "_ep_length")

    def state_dict(self) -> dict[str, Any]:
        import warp as wp

        self._refuse_step("state_dict()")
        state = {f"sim.{f}": wp.to_torch(getattr(self.d, f)).clone().cpu() for f in _STATE}
        state.update({f"derived.{k}": v.clone().cpu() for k, v in self._derived.items()})
        if self._cfrc_ext is not None:
            state["cfrc_ext"] = self._cfrc_ext.clone().cpu()
        state.update(obs=self._obs.cpu().clone(), elapsed=self._elapsed.cpu().clone(), diverged_total=self.diverged_total,
                     rngs=[g.bit_generator.state for g in self._rngs], randomizer=self.randomizer.state_dict(),
                     noise=self._noise.get_state().cpu(), action_buffer=self._action_buffer.cpu().clone(),
                     ep_return=self._ep_return.cpu().clone(), ep_length=self._ep_length.cpu().clone())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import warp as wp

        self._refuse_if_closed()
        if len(state["rngs"]) != self.num_envs:  # copy_ would broadcast a 1-world snapshot over every world
            raise ValueError(f"saved env state holds {len(state['rngs'])} envs, this env has {self.num_envs}")
        # factors this env has no per-world arrays for would be reported by physics_params() and simulated by no world
        saved = state["randomizer"]["params"]
        missing = [k for k in saved if k not in self.randomizer.spec.physics and np.any(np.asarray(saved[k]) != 1.0)]
        if missing:
            raise ValueError(f"{self.task_id} on mjwarp: the saved env state has physics factors {', '.join(missing)} "
                             f"that this env does not randomize ({', '.join(self.randomizer.spec.physics) or 'none'}), so "
                             f"it has no per-world arrays to restore them into; build it with the saved env's randomize "
                             f"(e.g. randomize={{'{missing[0]}': [1.0, 1.0]}})")
        self.randomizer.load_state_dict(state["randomizer"])
        if self.randomize is not None and self.randomizer.spec.physics:  # first: set_const rewrites the derived fields
            self._write_physics(np.arange(self.num_envs))
        for f in _STATE:
            wp.to_torch(getattr(self.d, f)).copy_(torch.as_tensor(state[f"sim.{f}"]))
        for k, v in self._derived.items():
            v.copy_(torch.as_tensor(state[f"derived.{k}"]))
        if self._cfrc_ext is not None:
            self._cfrc_ext.copy_(torch.as_tensor(state["cfrc_ext"]))
        # a copy of its own: a reset writes into self._obs, which must not reach the caller's snapshot (loaded
        # again, it would restore the reset observation)
        self._obs = torch.as_tensor(state["obs"]).to(self.device, copy=True)
        self._elapsed.copy_(torch.as_tensor(state["elapsed"]))
        for g, s in zip(self._rngs, state["rngs"]):
            g.bit_generator.state = s
        self._noise.set_state(torch.as_tensor(state["noise"]))
        self._action_buffer.copy_(torch.as_tensor(state["action_buffer"]))
        self._ep_return.copy_(torch.as_tensor(state["ep_return"]))
        self._ep_length.copy_(torch.as_tensor(state["ep_length"]))
        self.diverged_total = int(state.get("diverged_total", 0))  # older snapshots lack it
        self._needs_reset = False  # a state to continue from, as after a reset

