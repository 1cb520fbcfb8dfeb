"""TwoGoals-v0: reach one of two symmetric goals past an obstacle; the mean of the two good moves hits it.

A point in the plane starts at the origin and moves by ``0.1 * action`` per step (actions in
[-1, 1]^2). An obstacle (a disk of radius 0.3 at (0.45, 0)) sits between the start and two goals at
(0.9, +-0.45). Reaching a goal ends the episode with +1 (a success); touching the obstacle ends it
with -1; otherwise each step earns its progress toward the nearer goal (potential-based shaping,
which leaves the optimal policy unchanged) minus 0.01, and the episode is cut after 40 steps
(``max_steps``; the registration's time limit is the same 40, so a different ``max_steps`` also needs
``max_episode_steps``, ``env.max_episode_steps=`` on the command line).

The first step is the decision state: by symmetry, the good first moves form two modes (up-right
and down-right) and their average (straight right) leads into the obstacle. A policy that can only
represent one mode must commit to a side; one fitted to both sides at once (imitation of a
50/50 mixture, a forward-KL fit) puts its mean into the obstacle.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

OBSTACLE = (np.array([0.45, 0.0]), 0.3)
GOALS = (np.array([0.9, 0.45]), np.array([0.9, -0.45]))
GOAL_RADIUS = 0.12
STEP = 0.1


class TwoGoalsEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, max_steps: int = 40, start_noise: float = 0.0, render_mode: str | None = None) -> None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
            raise ValueError(f"robo_rl/TwoGoals-v0: max_steps={max_steps!r} must be an integer >= 1")
        clearance = float(OBSTACLE[0][0] - OBSTACLE[1])  # the obstacle's edge on the x axis, 0.15 from the start
        if not (isinstance(start_noise, (int, float, np.number)) and 0 <= start_noise <= clearance):
            raise ValueError(f"robo_rl/TwoGoals-v0: start_noise={start_noise!r} must be between 0 and {clearance:g}: "
                             "a larger one can start the point inside the obstacle")
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)  # x, y, time left
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.max_steps, self.start_noise = max_steps, start_noise
        self.render_mode = render_mode
        self.pos = np.zeros(2)
        self.t = 0

    @property
    def state(self) -> np.ndarray:
        """(x, y, steps taken): what a snapshot needs to continue the episode exactly (robo-rl's gymnasium backend
        captures envs with a ``state`` array, so a resumed TwoGoals run continues its episodes)."""
        return np.array([self.pos[0], self.pos[1], self.t], dtype=np.float64)

    @state.setter
    def state(self, value: np.ndarray) -> None:
        value = np.asarray(value, dtype=np.float64)
        self.pos, self.t = value[:2].copy(), int(value[2])

    def _obs(self) -> np.ndarray:
        return np.array([self.pos[0], self.pos[1], 1.0 - self.t / self.max_steps], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-self.start_noise, self.start_noise, 2) if self.start_noise else np.zeros(2)
        self.t = 0
        return self._obs(), {}

    @staticmethod
    def _potential(pos: np.ndarray) -> float:
        return -min(float(np.linalg.norm(pos - g)) for g in GOALS)

    def step(self, action: np.ndarray):
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (2,) or not np.all(np.isfinite(a)):  # a (1,) action broadcast over x and y; NaN stuck the point
            raise ValueError(f"robo_rl/TwoGoals-v0: the action must be 2 finite numbers, got {np.asarray(action)!r}")
        a = np.clip(a, -1.0, 1.0)
        before = self._potential(self.pos)
        self.pos = self.pos + STEP * a
        self.t += 1
        center, radius = OBSTACLE
        if np.linalg.norm(self.pos - center) < radius:
            return self._obs(), -1.0, True, False, {"success": False, "collision": True}
        if min(np.linalg.norm(self.pos - g) for g in GOALS) < GOAL_RADIUS:
            return self._obs(), 1.0, True, False, {"success": True, "collision": False}
        shaped = self._potential(self.pos) - before - 0.01
        return self._obs(), shaped, False, self.t >= self.max_steps, {"success": False, "collision": False}

    def render(self) -> np.ndarray:
        size = 160
        img = np.full((size, size, 3), 255, np.uint8)
        ys, xs = np.mgrid[0:size, 0:size]
        world = np.stack([xs / size * 1.4 - 0.2, 0.7 - ys / size * 1.4], axis=-1)
        img[np.linalg.norm(world - OBSTACLE[0], axis=-1) < OBSTACLE[1]] = (200, 60, 60)
        for g in GOALS:
            img[np.linalg.norm(world - g, axis=-1) < GOAL_RADIUS] = (60, 170, 60)
        img[np.linalg.norm(world - self.pos, axis=-1) < 0.03] = (30, 30, 200)
        return img



#: the scripted expert's detour: first to (0.2, +-0.45), clear of the obstacle, then to the goal on that side
WAYPOINT = np.array([0.2, 0.45])


def expert_demos(episodes: int, seed: int = 0, noise: float = 0.1) -> dict[str, np.ndarray]:
    """Transitions of a scripted expert, half of its episodes to each goal, as mirror-image pairs.

    Each episode detours around the obstacle toward one goal, so at the start state the
    demonstrated first moves are bimodal (about (0.44, +-1)) and their mean, (0.44, 0), heads into
    the obstacle. Episodes come in pairs with mirrored action noise (Gaussian, std ``noise``), so
    the data set is exactly symmetric about the x axis: no side is favoured by chance. Recorded
    through ``TwoGoalsEnv`` itself (rewards, next observations and terminations are the env's).
    Returns the arrays ``robo_rl.demos.save_demos`` takes.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 2 or episodes % 2:
        raise ValueError(f"episodes={episodes!r}: expert_demos makes mirror-image pairs, "
                         "so it needs an even integer >= 2")
    # noise=inf clipped every move to a corner of the action box (demonstrations of no expert), a NaN was only
    # refused by the env's step, naming an action
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.number)) or not 0 <= noise < np.inf:
        raise ValueError(f"noise={noise!r}: expert_demos's action noise is a standard deviation, a finite number >= 0 "
                         "(0: the noise-free expert)")
    rng = np.random.default_rng(seed)
    env = TwoGoalsEnv()
    rows: dict[str, list] = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "terminated")}
    for _ in range(episodes // 2):
        noise_seq = noise * rng.standard_normal((env.max_steps, 2))
        for side in (1.0, -1.0):
            obs, _ = env.reset()
            targets = [WAYPOINT * (1.0, side), GOALS[0] * (1.0, side)]
            done, t = False, 0
            while not done:
                if len(targets) > 1 and np.linalg.norm(env.pos - targets[0]) < STEP:
                    targets.pop(0)
                direction = targets[0] - env.pos
                action = direction / max(np.abs(direction).max(), 1e-8) * min(1.0, np.linalg.norm(direction) / STEP)
                action = np.clip(action + noise_seq[t] * (1.0, side), -1.0, 1.0).astype(np.float32)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                for key, value in zip(rows, (obs, action, reward, next_obs, terminated)):
                    rows[key].append(value)
                obs, done, t = next_obs, terminated or truncated, t + 1
    return {k: np.asarray(v, dtype=np.float32) for k, v in rows.items()}
