"""robo_rl/ContactMaze-v0 on the batched backends: the gymnasium env's step for N envs at once.

The observation, reward, termination and energy terms are the array functions of
``envs.tasks.contact_maze``, which the gymnasium env itself calls with one env; this class only
supplies them with the batch's arrays. What differs between the two is the plumbing (where qpos,
the actuator forces and the contact sensor come from after a step or a reset), and
tests/envs/test_contact_maze.py checks it is bit-identical.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.mujoco.tasks import Sim, Task, copy
from envs.tasks import contact_maze as maze


class ContactMaze(Task):
    gym_id = "robo_rl/ContactMaze-v0"
    gym_class = "envs.tasks.contact_maze:ContactMazeEnv"
    # MjData outputs the step reads (as after mj_step: computed in the last substep's forward pass)
    derived = ("qfrc_actuator", "sensordata")

    def check_kwargs(self) -> None:
        maze.check_kwargs(self.p)  # (gymnasium's ContactMaze checks the same)

    def setup(self, model: Any) -> None:
        super().setup(model)
        maze.check_model(model, str(self.p["xml_file"]))

    def observe(self, sim: Sim) -> Any:
        return maze.observation(sim.qpos, sim.qvel, sim.field("sensordata"))

    def before_step(self, sim: Sim) -> Any:
        return copy(sim.qpos)

    def after_step(self, sim: Sim, qpos_before: Any, action: Any) -> tuple[Any, Any, dict[str, Any]]:
        # each simulation's own damping and masses, as domain randomization left them (the gymnasium env reads its model's)
        return maze.step_terms(self.p, sim.dof_damping, maze.joint_mass(sim.body_mass, self.model), self.dt, qpos_before,
                               sim.qpos, sim.qvel, sim.field("qfrc_actuator"), sim.field("sensordata"), action)

    def reset_state(self, rng: np.random.Generator, init_qpos: np.ndarray, init_qvel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return maze.reset_state(rng, init_qpos, init_qvel, self.p["reset_noise_scale"])
