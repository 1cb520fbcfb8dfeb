"""Structured config schemas for Hydra, and the checks that run before any work starts.

Every YAML file in ``configs/`` is merged onto one of these dataclasses, so an unknown key or a
value of the wrong type fails at composition with a message naming the key. Fields left ``None``
mean "the learner's default" (e.g. 256x256 networks for SAC, 64x64 for PPO) and are filled in by
``resolve_defaults``; the run directory's ``config.yaml`` shows the resolved values.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict


# -- algorithms ----------------------------------------------------------------------------------
@dataclass
class SACConfig:
    name: str = "sac"
    gamma: float = 0.99
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 1.0
    autotune_alpha: bool = True
    target_entropy: Optional[float] = None  # None: -|A|; below |A| log 2 (the uniform on the unit action box)
    num_critics: int = 2
    critic_hidden: List[int] = field(default_factory=lambda: [256, 256])
    critic_activation: str = "relu"
    critic_layer_norm: bool = False
    target_update_every: int = 1
    # off-policy runner
    batch_size: int = 256
    buffer_size: int = 1_000_000
    learning_starts: int = 5_000  # uniform random actions before the first update
    utd: float = 1.0  # gradient updates per environment step (update-to-data ratio)


@dataclass
class TD3Config:
    name: str = "td3"
    gamma: float = 0.99
    tau: float = 0.005
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    policy_delay: int = 2
    target_noise: float = 0.2  # in unit action scale
    target_noise_clip: float = 0.5
    exploration_noise: float = 0.1
    num_critics: int = 2
    critic_hidden: List[int] = field(default_factory=lambda: [256, 256])
    critic_activation: str = "relu"
    critic_layer_norm: bool = False
    batch_size: int = 256
    buffer_size: int = 1_000_000
    learning_starts: int = 5_000
    utd: float = 1.0


@dataclass
class PPOConfig:
    name: str = "ppo"
    lr: float = 3e-4
    anneal_lr: bool = True  # linear decay to 0 over the run
    rollout_steps: Optional[int] = None  # steps per env per update (None: 32, or the task's); samples = rollout_steps * num_envs
    epochs: int = 10
    minibatch_size: int = 64
    clip_range: float = 0.2
    clip_range_vf: Optional[float] = None
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    normalize_advantage: bool = True
    target_kl: Optional[float] = None
    value_hidden: List[int] = field(default_factory=lambda: [64, 64])
    value_activation: str = "tanh"
    ortho_init: bool = True
    fused: str = "auto"  # fused numpy minibatch step on CPU where it applies (auto|on|off); same math


@dataclass
class GoRLConfig(PPOConfig):
    name: str = "gorl"
    refit_every: Optional[int] = None  # PPO updates between decoder refits; null: from `stages`
    stages: int = 3  # the run in this many equal stages, a decoder refit (the slow timescale) between two
    refit_epochs: int = 5
    refit_batch_size: int = 256
    decoder_lr: float = 3e-4
    dataset_size: int = 200_000  # (s, a) pairs kept for a refit
    reset_latent: bool = True  # restart the latent policy from the prior after each refit
    refit_on: str = "executed"  # refit targets: the executed actions, or the current policy's at those states
    latent_kl_coef: float = 0.0  # PPO loss + this * KL(latent policy || N(0, I)): keeps the latent near the prior


@dataclass
class GoRLSACConfig(SACConfig):
    name: str = "gorl_sac"
    refit_every: int = 20_000  # gradient updates between decoder refits (the slow timescale)
    refit_epochs: int = 20
    refit_batch_size: int = 256
    decoder_lr: float = 3e-4
    dataset_size: int = 20_000  # the newest executed (s, a) pairs kept for a refit (refit_on=policy uses their states only)
    reset_latent: bool = True  # restart the latent policy from the prior after each refit
    refit_on: str = "policy"  # refit targets: the current policy's actions at those states, or the executed ones


@dataclass
class EXPOConfig:
    name: str = "expo"
    gamma: float = 0.99
    tau: float = 0.005
    critic_lr: float = 3e-4
    base_lr: float = 3e-4
    edit_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 0.1
    num_samples: int = 2  # base samples per state; with their edits, 2N candidates
    edit_scale: float = 0.2  # largest edit, as a fraction of each action's half-range
    edit_hidden: List[int] = field(default_factory=lambda: [256, 256])
    edit_activation: str = "relu"
    num_critics: int = 2
    critic_hidden: List[int] = field(default_factory=lambda: [256, 256])
    critic_activation: str = "relu"
    critic_layer_norm: bool = False
    batch_size: int = 256
    buffer_size: int = 1_000_000
    learning_starts: int = 5_000
    utd: float = 1.0


@dataclass
class PARLConfig:
    name: str = "parl"
    gamma: float = 0.99
    tau: float = 0.005
    critic_lr: float = 3e-4
    policy_lr: float = 3e-4
    num_candidates: int = 4  # policy samples per state (acting, TD target, global optimization)
    top_k: int = 1
    grad_steps: int = 3  # gradient-ascent steps on Q per kept action (local optimization)
    action_lr: float = 0.05  # step size in unit action scale
    policy_update_every: int = 3  # critic updates per policy (action optimization + distillation) update
    num_critics: int = 2
    critic_hidden: List[int] = field(default_factory=lambda: [256, 256])
    critic_activation: str = "relu"
    critic_layer_norm: bool = False
    target_candidates: Optional[int] = 1  # samples at s' in the TD target, best by Q (null: num_candidates)
    batch_size: int = 256
    buffer_size: int = 1_000_000
    learning_starts: int = 5_000
    utd: float = 1.0


#: algo keys read by the runner rather than passed to the learner's constructor
RUNNER_KEYS = frozenset({"name", "batch_size", "buffer_size", "learning_starts", "utd", "rollout_steps", "anneal_lr"})


# -- policies ------------------------------------------------------------------------------------
@dataclass
class GaussianPolicyConfig:
    name: str = "gaussian"
    hidden_sizes: Optional[List[int]] = None
    activation: Optional[str] = None
    squash: Optional[bool] = None  # tanh into the action bounds (SAC) or clip (PPO)
    state_dependent_std: Optional[bool] = None
    log_std_init: float = 0.0
    ortho_init: Optional[bool] = None
    layer_norm: bool = False
    normalize_obs: Optional[bool] = None
    obs_clip: float = 10.0


@dataclass
class DeterministicPolicyConfig:
    name: str = "deterministic"
    hidden_sizes: Optional[List[int]] = None
    activation: Optional[str] = None
    layer_norm: bool = False
    normalize_obs: Optional[bool] = None
    obs_clip: float = 10.0


@dataclass
class MixturePolicyConfig:
    name: str = "mixture"
    hidden_sizes: Optional[List[int]] = None
    activation: Optional[str] = None
    components: int = 5
    squash: Optional[bool] = None
    ortho_init: Optional[bool] = None
    normalize_obs: Optional[bool] = None
    obs_clip: float = 10.0


@dataclass
class DiffusionPolicyConfig:
    name: str = "diffusion"
    hidden_sizes: List[int] = field(default_factory=lambda: [256, 256, 256])  # residual denoiser: width x blocks
    activation: str = "mish"
    train_steps: int = 100  # diffusion timesteps T
    inference_steps: int = 10  # sampling steps
    scheduler: str = "ddim"  # ddim (deterministic given the noise) or ddpm
    beta_schedule: str = "squaredcos_cap_v2"  # a diffusers schedule: linear, scaled_linear, squaredcos_cap_v2
    chunk: int = 1  # actions predicted per query (H)
    execute: Optional[int] = None  # actions executed per query (k <= H); None: all H
    denoiser: str = "residual"  # residual blocks or a plain mlp
    normalize_obs: Optional[bool] = None
    obs_clip: float = 10.0


@dataclass
class FlowPolicyConfig:
    name: str = "flow"
    hidden_sizes: List[int] = field(default_factory=lambda: [256, 256, 256])
    activation: str = "mish"
    steps: int = 4  # integration steps (1-10)
    solver: str = "euler"  # euler or midpoint
    chunk: int = 1
    execute: Optional[int] = None
    denoiser: str = "mlp"  # a plain mlp (fast sampling) or residual blocks
    normalize_obs: Optional[bool] = None
    obs_clip: float = 10.0


@dataclass
class LatentPolicyConfig:
    name: str = "latent"
    hidden_sizes: Optional[List[int]] = None  # the latent Gaussian policy
    activation: Optional[str] = None
    decoder: str = "flow"  # flow or diffusion (DDIM)
    decoder_hidden: List[int] = field(default_factory=lambda: [256, 256, 256])
    decoder_steps: int = 4
    latent_limit: Optional[float] = None  # z clipped (gorl; default 3) or tanh-squashed (gorl_sac; default 1) to +-this
    squash: Optional[bool] = None  # tanh-squash the latent Gaussian (gorl_sac) or clip it (gorl)
    state_dependent_std: Optional[bool] = None
    log_std_init: float = 0.0
    ortho_init: Optional[bool] = None
    normalize_obs: Optional[bool] = None
    obs_clip: float = 10.0


# -- environment, run ----------------------------------------------------------------------------
@dataclass
class RandomizationConfig:
    """Domain randomization (see envs/randomization.py); ranges are [low, high] scale factors."""

    body_mass_scale: Optional[List[float]] = None
    geom_friction_scale: Optional[List[float]] = None
    joint_damping_scale: Optional[List[float]] = None
    actuator_gain_scale: Optional[List[float]] = None
    gravity_scale: Optional[List[float]] = None
    obs_noise_std: float = 0.0  # Gaussian, observation units
    action_noise_std: float = 0.0  # Gaussian, fraction of each action's half-range
    action_delay: Optional[List[int]] = None  # [min, max] steps, drawn per episode


@dataclass
class EnvConfig:
    id: str = "Hopper-v5"  # any registered gymnasium id
    # mujoco (batched, exact), gymnasium (any id), mjwarp (MuJoCo Warp, GPU), isaac (an Isaac-style env),
    # auto: mujoco where it covers the id, else gymnasium
    backend: str = "auto"
    num_envs: Optional[int] = None  # None: the learner's default
    vectorization: str = "sync"  # gymnasium backend: sync (one process) or async (worker processes)
    threads: int = 0  # mujoco backend: physics threads (0: all CPUs)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # passed to gymnasium.make
    max_episode_steps: Optional[int] = None
    normalize_reward: Optional[bool] = None  # scale by the running std of the discounted return
    reward_clip: float = 10.0
    randomize: RandomizationConfig = field(default_factory=RandomizationConfig)  # training envs only


@dataclass
class CostCriticConfig:
    """The cost critic of passivity-aware (Lagrangian) SAC; None: the same as the reward critic's."""

    num_critics: int = 2  # twin by default; the cost target and the actor use the max (pessimistic about cost)
    hidden: Optional[List[int]] = None  # None: algo.critic_hidden
    lr: Optional[float] = None  # None: algo.critic_lr


@dataclass
class SafetyConfig:
    """Safety filters applied while training, and passivity-aware (constrained) learning.

    ``filters`` is a chain of filter specs (``sim2real.filters.build_chain``; configs/safety/*.yaml)
    every action passes through before it reaches the env, in training and in evaluation (as on the
    robot); the replay buffer stores the filtered action (what the env really executed). Off-policy
    learners only. ``passivity_aware=true`` trains Lagrangian SAC (robo_rl/learners/sac_lagrangian.py):
    maximize return subject to an expected cost per step (``info[cost_key]``, e.g. the energy the
    controller injects) of at most ``cost_budget``. Episode costs are logged whenever the task
    reports them.
    """

    filters: List[Dict[str, Any]] = field(default_factory=list)
    passivity_aware: bool = False
    cost_key: str = "cost"  # the step info key (top level, or in info["task"]) holding the cost [N]
    cost_budget: float = 0.05  # d: limit on the expected cost PER STEP (discounted average), same units as the cost
    cost_gamma: float = 0.99  # discount of the cost critic's TD target
    lagrange_lr: float = 0.01  # step size of the multiplier's projected ascent, per gradient update
    lagrange_init: float = 0.0  # lambda at the start (>= 0)
    cost_critic: CostCriticConfig = field(default_factory=CostCriticConfig)


@dataclass
class EvalConfig:
    every: Optional[int] = None  # env steps between evaluations; None: steps // 20, at least episodes x time limit / 2
    episodes: int = 10
    num_envs: int = 10  # env copies stepped together (at most `episodes`); one episode each by default
    deterministic: bool = True


@dataclass
class CheckpointConfig:
    every: Optional[int] = None  # env steps between checkpoints; None: steps // 10
    keep: int = 3  # newest checkpoints kept on disk
    save_replay: bool = True  # off-policy: store the replay buffer so a resume continues exactly


@dataclass
class LogConfig:
    every: Optional[int] = None  # env steps between metric rows; None: steps // 200
    progress_seconds: float = 10.0  # seconds between progress lines on the console
    tensorboard: bool = True
    plot: bool = True  # learning-curve PNG at the end


@dataclass
class DemosConfig:
    """Warm start from demonstrations (robo_rl/demos.py): pretrain the head, preload replay."""

    path: Optional[str] = None  # an .npz of transitions; None: no demonstrations
    pretrain_steps: int = 2000  # imitation-loss gradient steps on the head before the first env step (0: none)
    batch_size: int = 256
    lr: float = 1e-3
    replay: bool = True  # off-policy learners: put the transitions into the replay buffer too
    freeze_obs_norm: bool = True  # after pretraining, keep the demonstrations' observation statistics


@dataclass
class TrainConfig:
    algo: Any = MISSING
    policy: Any = MISSING
    env: EnvConfig = field(default_factory=EnvConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    steps: Optional[int] = None  # total env steps; None: the learner's default
    seed: int = 0
    run_dir: Optional[str] = None  # None: runs/<algo>-<env id>-s<seed>-<time>
    resume: Optional[str] = None  # a run directory to continue
    device: str = "cpu"
    threads: Optional[int] = None  # torch intra-op threads; None: torch's default (all cores)
    compile: bool = False  # torch.compile the update step
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    demos: DemosConfig = field(default_factory=DemosConfig)


@dataclass
class EvalCommandConfig:
    """``robo-rl eval`` options."""

    run_dir: str = MISSING
    episodes: int = 10
    deterministic: bool = True
    num_envs: int = 10  # at most `episodes` are built
    seed: int = 12_345
    checkpoint: Optional[str] = None  # a checkpoint directory; None: the run's newest valid one
    device: str = "cpu"
    video: bool = False  # write <run_dir>/videos/eval-step<N>.mp4 of env copy 0's first episodes
    video_episodes: int = 1
    demos_out: Optional[str] = None  # also write the evaluated episodes as a demonstrations file (.npz)


ALGO_SCHEMAS = {"sac": SACConfig, "td3": TD3Config, "ppo": PPOConfig, "gorl": GoRLConfig, "gorl_sac": GoRLSACConfig,
                "expo": EXPOConfig,
                "parl": PARLConfig}
POLICY_SCHEMAS = {
    "gaussian": GaussianPolicyConfig, "deterministic": DeterministicPolicyConfig, "mixture": MixturePolicyConfig,
    "diffusion": DiffusionPolicyConfig, "flow": FlowPolicyConfig, "latent": LatentPolicyConfig,
}

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


def _integer_fields(schema: type, prefix: str = "") -> set[str]:
    """The dotted keys of ``schema`` (nested dataclasses included) typed ``int`` or ``Optional[int]``."""
    out: set[str] = set()
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out |= _integer_fields(kind, f"{prefix}{f.name}.")
        elif kind is int or kind == Optional[int]:
            out.add(prefix + f.name)
    return out


def integer_keys(schema: type = None) -> frozenset[str]:  # type: ignore[assignment]
    """Every integer key of ``robo-rl train`` (any algorithm or head), or of another command's ``schema``."""
    if schema is not None:
        return frozenset(_integer_fields(schema))
    keys = _integer_fields(TrainConfig)
    for group, schemas in (("algo", ALGO_SCHEMAS), ("policy", POLICY_SCHEMAS)):
        for s in schemas.values():
            keys |= _integer_fields(s, f"{group}.")
    return frozenset(keys)


_SCIENTIFIC = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)[eE][+]?\d+|\d+\.0*)")  # 1e6, 2.5e5, 1500.0, -1e3


def integral_literals(overrides: typing.Iterable[str], keys: frozenset[str]) -> list[str]:
    """``steps=1e6`` as ``steps=1000000``, for the integer ``keys``: Hydra reads 1e6 as a float, which an
    integer key refuses. Only a whole number in scientific notation or with a zero fraction is rewritten
    (``steps=2.5e5`` and ``steps=1500.0`` too, a sweep ``steps=1e5,2e5`` value by value, ``-1e3`` to -1000
    for the range check to name); ``steps=1.5`` or ``steps=1e-3`` still fail as before."""
    out = []
    for o in overrides:
        key, eq, value = o.partition("=")
        if eq and key.lstrip("+~") in keys:
            parts = value.split(",")
            if any(_SCIENTIFIC.fullmatch(p.strip()) for p in parts):
                whole = [p.strip() if not _SCIENTIFIC.fullmatch(p.strip()) or float(p) != int(float(p))
                         else str(int(float(p))) for p in parts]
                o = f"{key}={','.join(whole)}"
        out.append(o)
    return out


def register_schemas() -> None:
    """Make the dataclasses available to the YAML files as /schema/<group>/<name>."""
    cs = ConfigStore.instance()
    root = OmegaConf.structured(TrainConfig)
    # env.kwargs is free-form (it goes to gymnasium.make): `env.kwargs.ctrl_cost_weight=0.1` must
    # work without a `+`, while every other key stays strict.
    OmegaConf.set_struct(root.env.kwargs, False)
    cs.store(name="train_schema", node=root)
    for name, node in ALGO_SCHEMAS.items():
        cs.store(group="schema/algo", name=name, node=node)
    for name, node in POLICY_SCHEMAS.items():
        cs.store(group="schema/policy", name=name, node=node)


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


def _episode_limit(cfg: DictConfig) -> int | None:
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
        except ImportError:
            return None  # the env build reports it
    spec = gym.envs.registry.get(task_id)
    return int(spec.max_episode_steps) if spec is not None and spec.max_episode_steps else None


def resolve_defaults(cfg: DictConfig) -> DictConfig:
    """Fill every ``None`` that means "the task's or the learner's default"; returns a new config."""
    cfg = cfg.copy()
    layers = (task_defaults(cfg), LEARNER_DEFAULTS.get(cfg.algo.name, {}))
    with open_dict(cfg):
        for defaults in layers:
            for dotted, value in defaults.items():
                if unset(cfg, dotted):
                    OmegaConf.update(cfg, dotted, value, merge=False)
        steps = int(cfg.steps)
        if cfg.eval.every is None:
            # 20 evaluations, but not more evaluation than training: a short run on a task with long episodes
            # (steps=2000 on Humanoid: 10 x 1,000-step episodes every 100 steps) would do little else
            limit = _episode_limit(cfg)
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


class ConfigError(ValueError):
    """A config value that is well-typed but cannot work; raised before any training."""


def _require(cfg: DictConfig, ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={OmegaConf.select(cfg, key)}: {msg}")


def unknown_keys(cfg: DictConfig) -> list[str]:
    """Dotted keys the schemas do not define: what Hydra's ``+key=value`` adds past the struct check.

    Nothing reads them (or a learner's constructor fails on them), so a run would silently differ from
    what its command line says. Free-form fields (``env.kwargs``, ``safety.filters``) are not entered.
    """
    found: list[str] = []

    def walk(node: DictConfig, schema: type, prefix: str) -> None:
        hints = typing.get_type_hints(schema)
        names = {f.name for f in dataclasses.fields(schema)}
        for key in node.keys():
            path = f"{prefix}{key}"
            if key not in names:
                found.append(path)
                continue
            sub = {"algo": ALGO_SCHEMAS, "policy": POLICY_SCHEMAS}.get(path)
            child = node[key]
            if sub is not None and isinstance(child, DictConfig):
                sub_schema = sub.get(child.get("name"))
                if sub_schema is not None:
                    walk(child, sub_schema, f"{path}.")
            elif dataclasses.is_dataclass(hints.get(key)) and isinstance(child, DictConfig):
                walk(child, hints[key], f"{path}.")

    walk(cfg, TrainConfig, "")
    return found


#: the largest ``steps``: over 300 years at 100,000 steps/s, so a larger value is a typo
MAX_STEPS = 10**15
#: seeds go to numpy's legacy global generator, which takes 0 <= seed < 2**32
MAX_SEED = 2**32 - 1
#: gradient updates per env step: far above any published setting (REDQ: 20), below a hang
MAX_UTD = 1000


def check_device(device: str, key: str = "device") -> None:
    """Refuse a device this machine cannot use (train's validate, and eval before it loads anything)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ConfigError(f"{key}={device}: must be cpu or cuda[:N]")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={device}: CUDA is not available on this machine; use {key}=cpu")
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"{key}={device}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")


def non_finite_keys(cfg: DictConfig) -> list[str]:
    """Dotted keys holding NaN or +-inf (NaN only under ``env.kwargs``, where inf can bound a range, e.g.
    ``healthy_z_range=[0.8,inf]``); ``safety.filters`` is checked by its own builder."""
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if path == "safety.filters":
            return
        if isinstance(node, DictConfig):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif OmegaConf.is_list(node):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")
        elif isinstance(node, float) and (math.isnan(node) or (math.isinf(node) and not path.startswith("env.kwargs."))):
            found.append(path)

    walk(cfg, "")
    return found


def validate(cfg: DictConfig) -> None:
    """Semantic checks on a resolved config; each message names the key and what to change."""
    from policies.networks import ACTIVATIONS

    def need(ok: bool, key: str, msg: str) -> None:
        _require(cfg, ok, key, msg)

    algo = cfg.algo.name
    need(algo in ALGO_SCHEMAS, "algo.name", f"unknown algorithm; choose one of {', '.join(ALGO_SCHEMAS)}")
    need(cfg.policy.name in POLICY_SCHEMAS, "policy.name", f"unknown head; choose one of {', '.join(POLICY_SCHEMAS)}")
    extra = unknown_keys(cfg)
    if extra:
        raise ConfigError(f"unknown key{'s' if len(extra) > 1 else ''} {', '.join(repr(k) for k in extra)}: no schema "
                          f"defines {'them' if len(extra) > 1 else 'it'} and nothing would read "
                          f"{'them' if len(extra) > 1 else 'it'} (added with +key=...? gymnasium keyword "
                          "arguments go in env.kwargs.<name>=...; see robo-rl train --help)")
    bad = non_finite_keys(cfg)
    if bad:
        raise ConfigError(f"{bad[0]}={OmegaConf.select(cfg, bad[0])}: must be a finite "
                          f"number{' (also: ' + ', '.join(bad[1:]) + ')' if len(bad) > 1 else ''}")
    need(0 < cfg.steps <= MAX_STEPS, "steps", "must be > 0 and at most 1e15 (e.g. steps=1e6)")
    need(0 <= cfg.seed <= MAX_SEED, "seed", "must be between 0 and 2**32 - 1")
    need(cfg.env.max_episode_steps is None or cfg.env.max_episode_steps >= 1, "env.max_episode_steps",
         "must be >= 1 (or null: the task's own time limit)")
    need(cfg.env.reward_clip > 0, "env.reward_clip", "must be > 0 (rewards are clipped to +-reward_clip after scaling)")
    need(cfg.policy.obs_clip > 0, "policy.obs_clip", "must be > 0 (normalized observations are clipped to +-obs_clip)")
    if "log_std_init" in cfg.policy:
        from policies.heads.gaussian import LOG_STD_MAX, LOG_STD_MIN  # what the heads clamp log std to

        need(LOG_STD_MIN <= cfg.policy.log_std_init <= LOG_STD_MAX, "policy.log_std_init",
             f"must be within the heads' log-std clamp [{LOG_STD_MIN:g}, {LOG_STD_MAX:g}] (0: std 1)")
    delay = cfg.env.randomize.action_delay
    limit = _episode_limit(cfg)
    if delay is not None and limit:
        need(max(delay) < limit, "env.randomize.action_delay",
             f"a delay of {max(delay)} steps is not shorter than the episodes ({limit} steps): no action would arrive")
    for key in cfg.algo.keys():
        if str(key) == "lr" or str(key).endswith("_lr"):
            floor = 0 if key == "action_lr" else None  # parl's action_lr=0: no gradient steps on the actions
            need(cfg.algo[key] >= 0 if floor == 0 else cfg.algo[key] > 0, f"algo.{key}",
                 "must be >= 0 (0: no local optimization)" if floor == 0 else "must be > 0")
    need(cfg.env.num_envs >= 1, "env.num_envs", "must be >= 1")
    need(cfg.env.vectorization in ("sync", "async"), "env.vectorization", "must be sync or async")
    need(cfg.env.backend in ("auto", "gymnasium", "mujoco", "mjwarp", "isaac"), "env.backend",
         "must be auto, gymnasium, mujoco, mjwarp or isaac")
    need(cfg.env.threads >= 0, "env.threads", "must be >= 0 (0: all CPUs)")
    from envs.randomization import RandomizationSpec

    try:
        RandomizationSpec.from_dict(OmegaConf.to_container(cfg.env.randomize, resolve=True))
    except ValueError as exc:
        raise ConfigError(f"env.{exc}") from None
    need(cfg.threads is None or cfg.threads >= 1, "threads", "must be >= 1")
    need(cfg.eval.episodes >= 1, "eval.episodes", "must be >= 1")
    need(cfg.eval.num_envs >= 1, "eval.num_envs", "must be >= 1")
    need(cfg.eval.every >= 1, "eval.every", "must be >= 1")
    need(cfg.checkpoint.every >= 1, "checkpoint.every", "must be >= 1")
    need(cfg.checkpoint.keep >= 1, "checkpoint.keep", "must be >= 1")
    need(cfg.log.every >= 1, "log.every", "must be >= 1")
    need(cfg.log.progress_seconds > 0, "log.progress_seconds", "must be > 0 (seconds between progress lines)")
    need(cfg.demos.pretrain_steps >= 0, "demos.pretrain_steps", "must be >= 0")
    need(cfg.demos.batch_size >= 1, "demos.batch_size", "must be >= 1")
    need(cfg.demos.lr > 0, "demos.lr", "must be > 0")
    if cfg.demos.path is not None and not cfg.resume:
        from pathlib import Path

        need(Path(cfg.demos.path).is_file(), "demos.path", f"no such file: {cfg.demos.path}")
    check_device(str(cfg.device))
    for key in ("policy.activation", "algo.critic_activation", "algo.value_activation"):
        value = OmegaConf.select(cfg, key)
        if value is not None:
            need(value in ACTIVATIONS, key, f"unknown activation; choose one of {', '.join(ACTIVATIONS)}")
    for key in ("policy.hidden_sizes", "policy.decoder_hidden", "algo.critic_hidden", "algo.value_hidden",
                "algo.edit_hidden"):
        value = OmegaConf.select(cfg, key)
        if value is not None:
            need(len(value) >= 1 and all(h >= 1 for h in value), key, "needs at least one layer, all sizes >= 1")
    if algo in ("sac", "td3", "gorl_sac", "expo", "parl"):
        need(not cfg.env.normalize_reward, "env.normalize_reward",
             "not supported for off-policy learners (the replay buffer would mix rewards scaled by different "
             "statistics); leave it off for off-policy learners")
        need(cfg.algo.batch_size >= 1, "algo.batch_size", "must be >= 1")
        need(cfg.algo.buffer_size >= cfg.env.num_envs, "algo.buffer_size", "must hold at least one step of every env")
        need(cfg.algo.learning_starts >= 0, "algo.learning_starts", "must be >= 0")
        need(0 < cfg.algo.utd <= MAX_UTD, "algo.utd", f"gradient updates per env step must be > 0 and at most {MAX_UTD}")
        if "target_update_every" in cfg.algo:
            need(cfg.algo.target_update_every >= 1, "algo.target_update_every", "must be >= 1 (gradient updates "
                 "between target-network updates)")
        need(0 < cfg.algo.tau <= 1, "algo.tau", "must be in (0, 1]")
        need(cfg.algo.num_critics >= 1, "algo.num_critics", "must be >= 1")
        need(cfg.algo.buffer_size >= cfg.algo.batch_size, "algo.buffer_size",
             f"must hold at least one batch (algo.batch_size={cfg.algo.batch_size})")
        if "init_alpha" in cfg.algo:
            need(cfg.algo.init_alpha > 0, "algo.init_alpha", "the entropy temperature must start > 0")
        if algo == "td3":
            need(cfg.algo.policy_delay >= 1, "algo.policy_delay", "must be >= 1 (critic updates per actor update)")
            for key in ("target_noise", "target_noise_clip", "exploration_noise"):
                need(cfg.algo[key] >= 0, f"algo.{key}", "must be >= 0 (a standard deviation or bound, unit action scale)")
        if algo == "parl":
            need(cfg.algo.num_candidates >= 1, "algo.num_candidates", "must be >= 1")
            need(1 <= cfg.algo.top_k <= cfg.algo.num_candidates, "algo.top_k", "must be between 1 and algo.num_candidates")
        if algo == "expo":
            need(cfg.algo.num_samples >= 1, "algo.num_samples", "must be >= 1")
    if algo in ("ppo", "gorl"):
        samples = cfg.algo.rollout_steps * cfg.env.num_envs
        need(cfg.algo.rollout_steps >= 1, "algo.rollout_steps", "must be >= 1")
        need(
            1 <= cfg.algo.minibatch_size <= samples,
            "algo.minibatch_size",
            f"must be between 1 and the samples per update (rollout_steps * num_envs = {samples})",
        )
        need(cfg.algo.epochs >= 1, "algo.epochs", "must be >= 1")
        need(cfg.algo.clip_range > 0, "algo.clip_range", "must be > 0 (the policy ratio is clipped to 1 +- clip_range)")
        need(cfg.algo.clip_range_vf is None or cfg.algo.clip_range_vf > 0, "algo.clip_range_vf",
             "must be > 0 (or null: the value loss unclipped)")
        need(cfg.algo.vf_coef >= 0, "algo.vf_coef", "must be >= 0")
        need(cfg.algo.ent_coef >= 0, "algo.ent_coef", "must be >= 0 (a negative one would reward collapsing the policy)")
        need(cfg.algo.max_grad_norm > 0, "algo.max_grad_norm", "must be > 0")
        need(0 <= cfg.algo.gae_lambda <= 1, "algo.gae_lambda", "must be in [0, 1]")
        need(cfg.algo.fused in ("auto", "on", "off"), "algo.fused", "must be auto, on or off")
        if "latent_kl_coef" in cfg.algo:
            need(cfg.algo.latent_kl_coef >= 0, "algo.latent_kl_coef", "must be >= 0 (0: no KL toward the prior)")
        need(cfg.algo.target_kl is None or cfg.algo.target_kl > 0, "algo.target_kl",
             "must be > 0 (or null for no early stop); an update stops before a minibatch whose KL to the "
             "rollout policy exceeds 1.5 * target_kl")
    need(0 <= OmegaConf.select(cfg, "algo.gamma") <= 1, "algo.gamma", "must be in [0, 1]")
    validate_safety(cfg)


#: learners whose runner (off-policy) can pass training actions through safety filters
FILTERABLE_ALGOS = ("sac", "td3", "gorl_sac", "expo", "parl")


def validate_safety(cfg: DictConfig) -> None:
    """The ``safety`` section: passivity-aware training needs SAC; filters need an off-policy runner.

    The filter specs themselves are checked by ``sim2real.filters.build_chain`` once the env's
    dimensions are known (``robo_rl.build.check_safety``), still before any run file is written.
    """
    safety, algo = cfg.safety, cfg.algo.name

    def need(ok: bool, key: str, msg: str) -> None:
        _require(cfg, ok, key, msg)

    if safety.passivity_aware:
        need(algo == "sac", "safety.passivity_aware",
             f"passivity-aware training is Lagrangian SAC (a cost critic and a multiplier on off-policy replay); "
             f"algo={algo} has no cost critic, use algo=sac (with a reparameterized head such as policy=gaussian)")
    need(bool(safety.cost_key), "safety.cost_key", "must name the step info key holding the per-step cost")
    need(safety.cost_budget >= 0, "safety.cost_budget", "the per-step cost limit must be >= 0")
    need(0 <= safety.cost_gamma < 1, "safety.cost_gamma", "must be in [0, 1) (the budget is per step: d / (1 - cost_gamma))")
    need(safety.lagrange_lr > 0, "safety.lagrange_lr", "must be > 0")
    need(safety.lagrange_init >= 0, "safety.lagrange_init", "the Lagrange multiplier must start >= 0")
    need(safety.cost_critic.num_critics >= 1, "safety.cost_critic.num_critics", "must be >= 1")
    hidden = safety.cost_critic.hidden
    need(hidden is None or (len(hidden) >= 1 and all(h >= 1 for h in hidden)), "safety.cost_critic.hidden",
         "needs at least one layer, all sizes >= 1")
    need(safety.cost_critic.lr is None or safety.cost_critic.lr > 0, "safety.cost_critic.lr", "must be > 0")
    if len(safety.filters):
        need(algo in FILTERABLE_ALGOS, "safety.filters",
             f"filtering training actions needs an off-policy learner ({', '.join(FILTERABLE_ALGOS)}): algo={algo} "
             "learns from the log-probability of its own unfiltered actions. Train without filters "
             "(safety=none) and put the chain on the exported policy instead")
