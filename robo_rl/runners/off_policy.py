"""Off-policy loop (SAC, TD3): act in N envs, store in replay, update at a fixed update-to-data ratio.

With ``safety.filters`` the env executes filtered actions, and replay stores those (what really
happened): the critic then learns the value of the action the robot took, and transitions stay
consistent with the dynamics (a raw action with the filtered action's next state would make the env
look noisy wherever the filter acts). With ``safety.passivity_aware`` replay also keeps each
step's cost for the learner's cost critic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from envs.base import unknown_next_state
from robo_rl.runners.base import Runner
from robo_rl.storage.replay import ReplayBuffer


def add_update_credit(credit: float, amount: float) -> float:
    """``credit + amount``, snapped to the whole number it is within 1e-9 of.

    The runner earns ``utd x num_envs`` updates' credit per iteration and spends 1.0 per update. In plain float
    sums a fractional earning falls just short of the whole updates it adds up to (0.3 x 2 envs: the fifth
    iteration leaves 0.9999999999999998, not 1.0), which puts an update off to the next iteration and drops the
    run's last one (29 updates in 50 iterations instead of 30)."""
    total = credit + amount
    whole = round(total)
    return float(whole) if abs(total - whole) < 1e-9 else total


class OffPolicyRunner(Runner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        algo = self.cfg.algo
        self.batch_size = int(algo.batch_size)
        self.learning_starts = int(algo.learning_starts)
        self.utd = float(algo.utd)
        self.store_costs = bool(self.safety.passivity_aware)
        self.replay = ReplayBuffer(int(algo.buffer_size), self.env.obs_dim, self.env.act_dim, self.device,
                                   seed=int(self.cfg.seed), costs=self.store_costs)
        self.random_actions = torch.Generator().manual_seed(int(self.cfg.seed) + 1)
        self.update_credit = 0.0  # fractional updates carried over when utd * num_envs is not whole
        # updates wait for this many rows in replay as well as for step >= learning_starts: the same moment in
        # a fresh run, but a run resumed without its replay buffer refills it before updating again
        self.min_replay = min(self.learning_starts, self.replay.capacity)

    def _random_actions(self) -> torch.Tensor:
        u = torch.rand(self.env.num_envs, self.env.act_dim, generator=self.random_actions)
        return self.policy.from_unit(u.to(self.device) * 2.0 - 1.0)

    def iterate(self) -> None:
        learner, n = self.learner, self.env.num_envs
        obs = self.obs
        # 1. act: uniform random before learning starts, then the learner's exploration policy
        actions = self._random_actions() if self.step < self.learning_starts else self.policy_actions(learner.explore, obs)
        # what the env receives (Learner.env_action: clipped, as from_unit's float32 rounding lands a bound's action
        # one step outside a box like [0.1, 2.7], 0.0999999)
        actions = self.env_actions(obs, actions)
        # 2. step the envs through the safety filters (finished ones reset inside step; info["final_obs"] is
        #    where they ended, info["safety"]["actions"] what they executed)
        next_obs, reward, terminated, truncated, info = self.step_env(actions)
        self.check_finite("observation", next_obs)
        self.check_finite("final observation", info["final_obs"])  # s' of finished episodes: replay stores it
        self.check_finite("reward", reward)
        safety = info["safety"]
        costs = safety["cost"] if self.store_costs else None  # finite: the SafetyLayer checked it (step_env)
        # 3. store the executed actions; bootstrapping stops only on termination, never on a time-limit truncation
        rows = (obs, safety["actions"], reward, info["final_obs"], terminated)
        drop = unknown_next_state(info, terminated, truncated)
        if drop is not None:
            # a row would teach the critic a transition back to its own state (see unknown_next_state): not stored
            keep = ~drop
            rows = tuple(x[keep] for x in rows)
            costs = costs[keep] if costs is not None else None
        self.replay.add(*rows, costs=costs)
        learner.observe(obs, safety["actions"])
        self.update_obs_norm(next_obs)
        self.record_info(info)
        self.obs = next_obs
        self.step += n
        # 4. update at the update-to-data ratio
        if self.step >= self.learning_starts and len(self.replay) >= self.min_replay:
            self.update_credit = add_update_credit(self.update_credit, self.utd * n)
            if self.step >= self.total_steps:  # the run's last updates: the learner hears the exact total
                learner.plan(self.num_updates + int(self.update_credit))
            while self.update_credit >= 1.0:
                self.update_credit -= 1.0  # (first: may_defer reads the updates still to come)
                self.update_learner(self.replay.sample(self.batch_size))

    def may_defer(self) -> bool:
        # with utd x num_envs > 1 an iteration makes several updates: a GoRL-SAC refit stopped for a signal in one but
        # the last would leave the others to run without it, and the resumed run, refitting first, to refit after them
        return self.update_credit < 1.0

    def extra_state(self) -> dict[str, Any]:
        return {"random_actions": self.random_actions.get_state(), "update_credit": self.update_credit}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.random_actions.set_state(state["random_actions"])
        self.update_credit = float(state["update_credit"])

    def replay_state(self) -> dict[str, np.ndarray]:
        return self.replay.state_dict()

    def load_replay_state(self, replay: dict[str, np.ndarray]) -> None:
        self.replay.load_state_dict(replay)
