"""What a config's unset (``None``) keys mean: the learner's defaults, then settings measured for a task.

``resolve_defaults`` fills them before a run starts; the run directory's ``config.yaml`` shows the result.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

# What "None" means, per learner. policy.* keys apply to whichever head is chosen, if it has them.
LEARNER_DEFAULTS: dict[str, dict[str, Any]] = {
    "sac": {
        "steps": 100_000,
        "env.num_envs": 1,
        "env.normalize_reward": False,
        "policy.hidden_sizes": [256, 256],
        "policy.activation": "relu",
        "policy.squash": True,
        "policy.state_dependent_std": True,
        "policy.ortho_init": False,
        "policy.normalize_obs": False,
    },
    "td3": {
        "steps": 100_000,
        "env.num_envs": 1,
        "env.normalize_reward": False,
        "policy.hidden_sizes": [256, 256],
        "policy.activation": "relu",
        "policy.normalize_obs": False,
    },
    "gorl": {
        "steps": 1_000_000,
        "threads": 1,
        "env.num_envs": 64,
        "algo.rollout_steps": 32,
        "env.normalize_reward": True,
        "policy.hidden_sizes": [64, 64],
        "policy.activation": "tanh",
        "policy.squash": False,
        "policy.state_dependent_std": False,
        "policy.ortho_init": True,
        "policy.normalize_obs": True,
    },
    "expo": {
        "steps": 100_000,
        "env.num_envs": 1,
        "env.normalize_reward": False,
        "policy.hidden_sizes": [256, 256, 256],
        # the flow base's integration steps: 3, not the head's 4, keeps EXPO's update within 3x of SAC's time (its
        # chain is most of it) with returns level (README, generative cost and returns)
        "policy.steps": 3,
        "policy.activation": "relu",
        "policy.squash": True,
        "policy.state_dependent_std": True,
        "policy.ortho_init": False,
        "policy.normalize_obs": False,
    },
    "parl": {
        "steps": 100_000,
        "env.num_envs": 1,
        "env.normalize_reward": False,
        "policy.hidden_sizes": [256, 256],
        "policy.activation": "relu",
        "policy.squash": True,
        "policy.state_dependent_std": True,
        "policy.ortho_init": False,
        "policy.normalize_obs": False,
    },
    "ppo": {
        "steps": 1_000_000,
        "threads": 1,  # 64x64 nets gain nothing from more; spare cores go to the simulator
        "env.num_envs": 64,
        "env.normalize_reward": True,
        "algo.rollout_steps": 32,
        "policy.hidden_sizes": [64, 64],
        "policy.activation": "tanh",
        "policy.squash": False,
        "policy.state_dependent_std": False,
        "policy.ortho_init": True,
        "policy.normalize_obs": True,
    },
}
LEARNER_DEFAULTS["gorl_sac"] = dict(LEARNER_DEFAULTS["sac"])  # the latent policy is SAC's actor (squashed, state-dependent std)


#: Settings of a learner on a task, by env.id and algo.name. Like LEARNER_DEFAULTS they fill only keys the
#: config leaves unset (the command line always wins), and they come before the learner's. Only settings
#: measured here are listed (README, "The default run on every task"). Swimmer: PPO's default 32-step
#: rollouts from 64 envs settle on a slow crawl; 512-step rollouts from 4 envs (the same 2,048 samples per
#: update) find the swimming gait. Ant-v5: its observation includes 78 contact-force terms (gymnasium's
#: default since v5; v4 left them out), mostly zeros with rare spikes, and PPO learns far slower with them.
TASK_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "Swimmer-v5": {"ppo": {"env.num_envs": 4, "algo.rollout_steps": 512}},
    "Ant-v5": {"ppo": {"env.kwargs.include_cfrc_ext_in_observation": False}},
}

#: What "None" means for a head's key whatever the learner, after the task's and the learner's defaults.
HEAD_DEFAULTS: dict[str, Any] = {"policy.steps": 4}  # the flow head's integration steps


def unset(cfg: DictConfig, dotted: str) -> bool:
    """Whether ``dotted`` is left to a default: null, or (a task keyword argument under env.kwargs) not given."""
    section, _, key = dotted.rpartition(".")
    node = cfg if not section else OmegaConf.select(cfg, section)
    if not isinstance(node, DictConfig):
        return False
    if section == "env.kwargs":
        return node.get(key) is None
    return key in node and node[key] is None


def task_defaults(cfg: DictConfig) -> dict[str, Any]:
    """The TASK_DEFAULTS for this config's task and learner that it leaves unset: what ``resolve_defaults`` sets."""
    own = TASK_DEFAULTS.get(str(cfg.env.id), {}).get(str(cfg.algo.name), {})
    return {k: v for k, v in own.items() if unset(cfg, k)}


def episode_limit(cfg: DictConfig) -> int | None:
    """The task's time limit in steps: env.max_episode_steps, else gymnasium's registration of env.id, if known."""
    if cfg.env.max_episode_steps is not None:
        return int(cfg.env.max_episode_steps)
    import gymnasium as gym

    task_id = str(cfg.env.id)
    if task_id.startswith("robo_rl/"):
        import envs.tasks  # noqa: F401  registers robo-rl's own tasks, whatever was imported before
    if ":" in task_id:  # module:Id, the module registers Id (as the env build will import it)
        import importlib

        module, task_id = task_id.split(":", 1)
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - missing, or failing as it runs: the env build reports it, naming the module
            return None
    spec = gym.envs.registry.get(task_id)
    return int(spec.max_episode_steps) if spec is not None and spec.max_episode_steps else None


def resolve_defaults(cfg: DictConfig) -> DictConfig:
    """Fill every ``None`` that means "the task's or the learner's default"; returns a new config."""
    cfg = cfg.copy()
    layers = (task_defaults(cfg), LEARNER_DEFAULTS.get(cfg.algo.name, {}), HEAD_DEFAULTS)
    with open_dict(cfg):
        for defaults in layers:
            for dotted, value in defaults.items():
                if unset(cfg, dotted):
                    OmegaConf.update(cfg, dotted, value, merge=False)
        steps = int(cfg.steps)
        if cfg.eval.every is None:
            # 20 evaluations, but not more evaluation than training: a short run on a task with long episodes
            # (steps=2000 on Humanoid: 10 x 1,000-step episodes every 100 steps) would do little else
            limit = episode_limit(cfg)
            cfg.eval.every = max(steps // 20, int(cfg.eval.episodes) * limit // 2 if limit else 0, 1)
        if cfg.checkpoint.every is None:
            cfg.checkpoint.every = max(steps // 10, 1)
        if cfg.log.every is None:
            cfg.log.every = max(steps // 200, 1)
        critic = cfg.safety.cost_critic  # the cost critic is shaped like the reward critic unless told
        if critic.hidden is None and "critic_hidden" in cfg.algo:
            critic.hidden = list(cfg.algo.critic_hidden)
        if critic.lr is None and "critic_lr" in cfg.algo:
            critic.lr = cfg.algo.critic_lr
    return cfg
