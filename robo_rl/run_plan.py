"""What a run's settings mean for its plan, said before any work: keys its env or learner ignores, a run that never
updates its policy (steps before learning_starts, a utd that makes no update), networks a delay never updates, a
decoder refit smaller than one minibatch, evaluations that cut a one-simulator env's episodes.

``robo_rl.train`` logs these warnings after the run's opening line; ``build_runner`` logs them for a runner built
from Python (``warn=True``), whose ``train()`` would otherwise run such a plan without a word.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig

from robo_rl.learners.gorl import refit_updates
from robo_rl.runners.off_policy import add_update_credit
from robo_rl.validation import ignored_keys


def plan_warnings(cfg: DictConfig, env: Any, eval_env: Any, learner: Any) -> list[str]:
    """The warnings (one line each) about the run ``cfg`` (resolved: ``resolve_defaults``) plans with ``learner`` on
    ``env``, evaluated on ``eval_env`` (the same object for a one-simulator env)."""
    lines: list[str] = []
    if eval_env is env:
        # rsl_rl VecEnvs (legged_gym, Isaac Lab's wrapper) state their time limit as max_episode_length
        limit = getattr(getattr(env, "env", None), "max_episode_length", None)
        per_env = int(cfg.eval.every) // env.num_envs
        if isinstance(limit, (int, float)) and not isinstance(limit, bool) and 0 < per_env < limit:
            lines.append(f"evaluations every {int(cfg.eval.every):,} steps are {per_env} steps per env, "
                          f"fewer than the {int(limit)}-step episodes: each evaluation cuts the training episodes under "
                          f"way, so the training return counts only episodes shorter than {per_env} steps, and each "
                          f"evaluation steps all {env.num_envs} envs for up to {2 * int(limit)} steps; set eval.every >= "
                          f"{2 * env.num_envs * int(limit):,}")
    lines += ignored_keys(cfg, env.backend, learner.kind == "on_policy", None if eval_env is env else eval_env.num_envs)
    starts = cfg.algo.get("learning_starts") if learner.kind == "off_policy" else None
    # a demos warm start trains the policy before the first step (a resume of such a run has no demos to load, but
    # its policy was pretrained all the same): fewer online updates than the warnings below ask for can be meant.
    # With demos.pretrain_steps=0 the policy starts untrained, whatever the file preloads into replay.
    cold = not (cfg.demos.get("path") and int(cfg.demos.get("pretrain_steps") or 0) > 0)
    # a resume may change steps, not the algo.* keys the advice below names: on a resume it names only steps
    def advice(key: str, change: str) -> str:
        return f"raise steps (a resume keeps algo.{key})" if cfg.resume else change

    if starts is not None and int(cfg.steps) < int(starts) and cold:
        lines.append(f"steps={int(cfg.steps):,} ends before algo.learning_starts="
                     f"{int(starts):,}, so the policy is never updated (every action is uniform random); "
                     + advice("learning_starts", "lower algo.learning_starts or raise steps"))
    updates = gradient_updates(cfg, env, learner)
    utd = cfg.algo.get("utd") if starts is not None else None
    if utd is not None and cold and int(cfg.steps) > int(starts) and updates == 0:
        lines.append(f"algo.utd={float(utd):g} over the {int(cfg.steps) - int(starts):,} steps after "
                     "algo.learning_starts makes no gradient update (the policy is never trained); "
                     + advice("utd", "raise algo.utd or steps"))
    # counters of updates between two of a network's updates
    if learner.kind == "off_policy" and cold and updates:
        for key, what in (("policy_delay", "the actor and the target networks are"),
                          ("policy_update_every", "the policy is"), ("target_update_every", "the target critics are")):
            every = cfg.algo.get(key)
            if every is not None and int(every) > updates:
                plural = "s" if updates > 1 else ""
                lines.append(f"algo.{key}={int(every):,} is more than the run's {updates:,} gradient "
                             f"update{plural}, so {what} never updated; "
                             + advice(key, f"lower algo.{key} to at most {updates:,} or raise steps"))
    size, batch = cfg.algo.get("dataset_size"), cfg.algo.get("refit_batch_size")
    if (size is not None and batch is not None and int(size) < int(batch) and int(cfg.algo.refit_epochs) > 0
            and decoder_refits(cfg, updates)):
        lines.append(f"algo.dataset_size={int(size):,} is smaller than algo.refit_batch_size="
                     f"{int(batch):,}: each decoder refit trains on at most {int(size):,} (s, a) pair(s), fewer than one "
                     "minibatch; " + (f"a resume keeps it: start a new run with algo.dataset_size >= {int(batch):,}"
                                      if cfg.resume else f"raise algo.dataset_size to at least {int(batch):,}"))
    stages = cfg.algo.get("stages") if cfg.algo.get("refit_every") is None else None  # (algo=gorl)
    if stages is not None and updates:
        made = len(refit_updates(updates, None, int(stages))) + 1
        if made < int(stages):
            lines.append(f"algo.stages={int(stages):,} over the run's {updates:,} PPO update(s) makes {made} stage(s): "
                         f"a stage is a whole number of updates, {-(-updates // int(stages)):,} here (the last may be "
                         "shorter); " + advice("stages", "raise steps, or lower algo.stages"))
    lines += passivity_void(cfg)
    if cfg.safety.get("filters"):
        from sim2real.filters.chain import narrowing_boxes

        lines += narrowing_boxes(cfg.safety.filters, env.action_space.low, env.action_space.high, env.task_id)
    return lines


def passivity_void(cfg: DictConfig) -> list[str]:
    """A warning when an energy_tank filter trains on a randomized plant its guarantee does not cover (README,
    Safety filters): the filter still runs, but what it passes is no longer bounded by the tank."""
    from sim2real.filters.energy_tank import guarantee_void

    randomize = cfg.env.get("randomize")
    if not cfg.safety.get("filters") or randomize is None:
        return []

    def given(key: str) -> tuple[str, Any] | None:
        value = randomize.get(key)
        return None if value is None else (f"env.randomize.{key}", list(value))

    noise = float(randomize.get("action_noise_std") or 0.0)
    # (geom_friction_scale scales contacts' friction, which the tank does not credit)
    return guarantee_void(cfg.safety.filters, "randomized plant", latency=given("action_delay"),
                          damping=given("joint_damping_scale"), gain=given("actuator_gain_scale"),
                          obs_noise=("env.randomize.obs_noise_std", float(randomize.get("obs_noise_std") or 0.0)),
                          other=(f"env.randomize.action_noise_std={noise:g} (the plant gets another command than the "
                                 "one the tank passed)",) if noise > 0 else ())


def gradient_updates(cfg: DictConfig, env: Any, learner: Any) -> int | None:
    """The gradient updates of the whole run, counted as the runners make them; None for another kind of learner.

    Off-policy (OffPolicyRunner.iterate): iterations of ``num_envs`` env steps until ``steps``, and from the first
    that ends at or after ``learning_starts`` on, ``utd x num_envs`` updates' credit each. On-policy
    (OnPolicyRunner): one update per rollout of ``rollout_steps x num_envs`` steps, rounded up.
    The off-policy credit is summed as the runner sums it (``add_update_credit``), exactly up to 100,000 iterations,
    beyond as their product."""
    steps, n = int(cfg.steps), int(env.num_envs)
    if learner.kind == "off_policy":
        iterations = max(0, -(-steps // n) - max(1, -(-int(cfg.algo.learning_starts) // n)) + 1)
        credit_per_iteration = float(cfg.algo.utd) * n
        if iterations > 100_000:
            return int(add_update_credit(0.0, iterations * credit_per_iteration))
        updates, credit = 0, 0.0
        for _ in range(iterations):
            credit = add_update_credit(credit, credit_per_iteration)
            whole = math.floor(credit)  # the runner's `credit -= 1.0` per update: exact in floats below 2**53
            updates, credit = updates + whole, credit - whole
        return updates
    if learner.kind == "on_policy":
        return -(-steps // (int(cfg.algo.rollout_steps) * n))
    return None


def decoder_refits(cfg: DictConfig, updates: int | None) -> bool:
    """Whether GoRL's decoder is refit in this run: every ``refit_every`` updates (algo=gorl without it: after each
    of ``stages`` equal parts but the last), never after the final update."""
    if updates is None:
        return False
    every = cfg.algo.get("refit_every")
    return len(refit_updates(updates, None if every is None else int(every), cfg.algo.get("stages"))) > 0
