"""On-policy loop (PPO): collect T steps from N envs, compute GAE, update, repeat."""

from __future__ import annotations

import logging
from typing import Any

import torch

from robo_rl.normalization import RewardNormalizer
from robo_rl.runners.base import Runner
from robo_rl.storage.rollout import RolloutStorage

log = logging.getLogger("robo_rl")


class OnPolicyRunner(Runner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        algo, env = self.cfg.algo, self.env
        self.rollout_steps = int(algo.rollout_steps)
        self.samples_per_update = self.rollout_steps * env.num_envs
        self.total_iterations = -(-self.total_steps // self.samples_per_update)  # ceil
        self.planned_steps = self.total_iterations * self.samples_per_update
        if self.planned_steps != self.total_steps:
            # a warning when the rounding more than doubles the run (steps=384 with 64 envs x 64 steps: 4,096)
            (log.warning if self.planned_steps > 2 * self.total_steps else log.info)(
                f"steps={self.total_steps:,} rounds up to whole updates: {self.total_iterations:,} x "
                f"{self.samples_per_update:,} samples ({env.num_envs} envs x {self.rollout_steps} steps) = "
                f"{self.planned_steps:,} env steps")
        self.learner.plan(self.total_iterations)
        self.base_lr = float(algo.lr)
        self.anneal_lr = bool(algo.anneal_lr)
        self.storage = RolloutStorage(self.rollout_steps, env.num_envs, env.obs_dim, env.act_dim, self.device)
        self.reward_norm = (
            RewardNormalizer(env.num_envs, float(algo.gamma), float(self.cfg.env.reward_clip))
            if self.cfg.env.normalize_reward else None
        )

    def iterate(self) -> None:
        learner, env = self.learner, self.env
        gamma = learner.gamma
        obs = self.obs
        for _ in range(self.rollout_steps):
            actions, log_probs, values = self.policy_actions(learner.act, obs)
            next_obs, reward, terminated, truncated, info = self.step_env(self.env_actions(obs, actions))
            self.check_finite("observation", next_obs)
            self.check_finite("final observation", info["final_obs"])  # a time-out bootstraps from it
            self.check_finite("reward", reward)
            self.record_info(info)
            done = terminated | truncated
            r = self.reward_norm(reward, done) if self.reward_norm is not None else reward
            # Time-limit truncation: the episode did not end, so bootstrap with gamma * V(final obs)
            cut = truncated & ~terminated
            if bool(cut.any()):
                r = r.clone()
                r[cut] += gamma * learner.value(info["final_obs"][cut]).detach()
            self.storage.add(obs, actions, log_probs, values, r, done)
            obs = next_obs
            self.step += env.num_envs
        self.obs = obs
        with torch.no_grad():
            last_values = learner.value(obs)
        batch = self.storage.finish(last_values, gamma, learner.gae_lambda)
        if self.anneal_lr:
            learner.set_lr(self.base_lr * (1.0 - self.iteration / self.total_iterations))
        self.update_learner(batch)
        # Statistics change between updates only, so the rollout's log-probs match the update's. The rollout's
        # first observations were counted already if they are the run's reset ones (Runner.train). They are read
        # where the storage holds them ([T * N, obs_dim], time-major): a list of each step's and its torch.cat kept
        # two more copies of the rollout's observations
        seen = batch.obs
        if self.reset_obs_counted:
            seen, self.reset_obs_counted = seen[env.num_envs:], False
        self.update_obs_norm(seen)

    def episodes_restarted(self) -> None:
        if self.reward_norm is not None:  # each env's discounted-return trace ends with its episode
            self.reward_norm.returns[:] = 0.0

    def extra_state(self) -> dict[str, Any]:
        return {"reward_norm": self.reward_norm.state_dict() if self.reward_norm is not None else None}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.reward_norm is not None and state.get("reward_norm") is not None:
            self.reward_norm.load_state_dict(state["reward_norm"])
