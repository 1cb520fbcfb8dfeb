"""Structured config schemas for Hydra.

Every YAML file in ``configs/`` is merged onto one of these dataclasses, so an unknown key or a
value of the wrong type fails at composition with a message naming the key. Fields left ``None``
mean "the learner's default" (e.g. 256x256 networks for SAC, 64x64 for PPO) and are filled in by
``robo_rl.defaults.resolve_defaults``; ``robo_rl.validation`` checks the values before any work
starts; the run directory's ``config.yaml`` shows the resolved values. ``compose_config`` composes
what a command line would (this module imports no torch, so the CLI checks a config before importing it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import decimal
import json
import math
import re
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf


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
    fused: str = "auto"  # hand-derived-gradient update on CPU where it applies (auto|on|off); same math
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
    fused: str = "auto"  # hand-derived-gradient update on CPU where it applies (auto|on|off); same math
    batch_size: int = 256
    buffer_size: int = 1_000_000
    learning_starts: int = 5_000
    utd: float = 1.0


@dataclass
class PPOConfig:
    name: str = "ppo"
    lr: float = 3e-4
    anneal_lr: bool = True  # linear decay over the run: update k of K at lr * (1 - k / K)
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
    dataset_size: int = 200_000  # (s, a) pairs kept for a refit (refit_on=policy: their states, a window across stages)
    reset_latent: bool = True  # restart the latent policy from the prior after each refit
    refit_on: str = "policy"  # refit targets: the current policy's actions at those states, or the executed ones
    latent_kl_coef: float = 0.0  # PPO loss + this * KL(latent policy || its prior): keeps the latent near the prior
    keep_latent_std: bool = True  # a refit's reset keeps the latent's std (decoder input u / std), not 1
    recenter_latent: bool = True  # the reset re-centres the decoder's input on the latent's mean; false: zeroes it
    refit_redraw: bool = True  # refit_on=policy: new targets for every refit epoch; false: drawn once (faster)
    refit_threads: int = 0  # torch threads for a decoder refit, whatever `threads` is (0: all CPUs)


@dataclass
class GoRLSACConfig(SACConfig):
    name: str = "gorl_sac"
    refit_every: int = 20_000  # gradient updates between decoder refits (the slow timescale)
    refit_epochs: int = 100  # passes over the states; 20 (until 2026-12-05) left Hopper's refit shifting the policy
    refit_batch_size: int = 256
    decoder_lr: float = 3e-4
    dataset_size: int = 20_000  # the newest executed (s, a) pairs kept for a refit (refit_on=policy uses their states only)
    reset_latent: bool = True  # restart the latent policy from the prior after each refit
    refit_on: str = "policy"  # refit targets: the current policy's actions at those states, or the executed ones
    refit_redraw: bool = True  # refit_on=policy: new targets for every refit epoch; false: drawn once (faster)
    refit_threads: int = 0  # torch threads for a decoder refit, whatever `threads` is (0: all CPUs)


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
    target_samples: Optional[int] = None  # base samples at s' in the TD target, each with its edit (null: num_samples)
    edit_scale: float = 0.2  # largest edit, as a fraction of each action's half-range
    edit_hidden: List[int] = field(default_factory=lambda: [256, 256])
    edit_activation: str = "relu"
    num_critics: int = 2
    critic_hidden: List[int] = field(default_factory=lambda: [256, 256])
    critic_activation: str = "relu"
    critic_layer_norm: bool = False
    fused: str = "auto"  # hand-derived-gradient critic, edit (and flow base) steps on CPU where they apply (auto|on|off)
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
    unit_actions: bool = True  # unsquashed: the Gaussian over the box's unit scale (false: env units, as SB3)
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
    unit_actions: bool = True  # as GaussianPolicyConfig's
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
    steps: Optional[int] = None  # integration steps (1-10); null: the learner's default (4; EXPO 3)
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
    reward_clip: float = 10.0  # with normalize_reward: scaled rewards are clipped to +-reward_clip (unused without it)
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
    cost_budget: float = 0.05  # d: limit on the expected cost PER STEP, same units as the cost
    # discount of the cost critic's TD target: 0 bounds each step's expected cost (what a per-step budget means);
    # > 0 bounds (1 - cost_gamma) times the discounted cost-to-go, which on tasks whose episodes end early
    # (a goal) reads below the per-step rate (README: passivity study)
    cost_gamma: float = 0.0
    lagrange_lr: float = 1.0  # step size of the multiplier's projected ascent per gradient update, per unit of violation
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
    # off-policy learners with demos.replay: critic-only updates on the preloaded demonstrations before the first
    # env step, so the first actor updates follow a trained critic, not a random one (0: none)
    critic_steps: int = 2000
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
    config_dir: Optional[str] = None  # --config-dir: a directory of the user's own <group>/<name>.yaml (absolute)
    device: str = "cpu"
    threads: Optional[int] = None  # torch intra-op threads; None: torch's default (all cores)
    compile: bool = False  # torch.compile the update step
    precision: str = "fp32"  # the loss computations' matmuls: fp32, or bf16 (autocast; algo=sac|td3)
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



def _fields_of(schema: type, kinds: tuple, prefix: str = "") -> set[str]:
    """The dotted keys of ``schema`` (nested dataclasses included) typed one of ``kinds`` or Optional of one."""
    out: set[str] = set()
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out |= _fields_of(kind, kinds, f"{prefix}{f.name}.")
        elif any(kind is k or kind == Optional[k] for k in kinds):
            out.add(prefix + f.name)
    return out


def _keys_of_type(kind: type, schema: type | None) -> frozenset[str]:
    if schema is not None:
        return frozenset(_fields_of(schema, (kind,)))
    keys = _fields_of(TrainConfig, (kind,))
    for group, schemas in (("algo", ALGO_SCHEMAS), ("policy", POLICY_SCHEMAS)):
        for s in schemas.values():
            keys |= _fields_of(s, (kind,), f"{group}.")
    return frozenset(keys)


def integer_keys(schema: type = None) -> frozenset[str]:  # type: ignore[assignment]
    """Every integer key of ``robo-rl train`` (any algorithm or head), or of another command's ``schema``, and
    every key holding a list of integers (``policy.hidden_sizes``)."""
    return _keys_of_type(int, schema) | _keys_of_type(List[int], schema)  # type: ignore[arg-type]


def list_keys() -> frozenset[str]:
    """Every key of ``robo-rl train`` (any algorithm or head) holding a list (``policy.hidden_sizes``,
    ``env.randomize.gravity_scale``, ``safety.filters``)."""
    return (_keys_of_type(List[int], None) | _keys_of_type(List[float], None)  # type: ignore[arg-type]
            | _keys_of_type(List[Dict[str, Any]], None))  # type: ignore[arg-type]


def string_keys() -> frozenset[str]:
    """Every text key of ``robo-rl train`` (any algorithm or head): ``env.id``, ``demos.path``, ..."""
    return _keys_of_type(str, None)


def boolean_keys(schema: type = None) -> frozenset[str]:  # type: ignore[assignment]
    """Every true/false key of ``robo-rl train`` (any algorithm or head), or of another command's ``schema``."""
    return _keys_of_type(bool, schema)


def boolean_problem(overrides: typing.Iterable[str], keys: frozenset[str]) -> str | None:
    """The message for a true/false key given a number other than 0 or 1, or None. OmegaConf reads any
    nonzero integer as true, so ``compile=2`` or ``deterministic=-1`` (a count or a typo) would run as true;
    ``1``/``0``, ``true``/``false`` and the words OmegaConf knows (yes/no/on/off) still work."""
    for o in overrides:
        key, eq, value = o.partition("=")
        if not (eq and key.lstrip("+~") in keys):
            continue
        for part in value.split(","):  # a sweep: compile=true,2
            p = part.strip()
            if len(p) >= 2 and p[0] in "'\"" and p[-1] == p[0]:
                p = p[1:-1].strip()
            if re.fullmatch(r"[+-]?\d+", p) and int(p) not in (0, 1):
                return f"{key.lstrip('+~')}: must be true or false, got {p}"
    return None


_SCIENTIFIC = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)[eE][+]?\d+|\d+\.0*)")  # 1e6, 2.5e5, 1500.0, -1e3
# one value of an override: the whole value, a sweep's (1e5,2e5) or a list's ([1e3,256]) items
_VALUE_ITEM = re.compile(r"(?:^|(?<=[\[,]))\s*([^\[\],\s]+)\s*(?=$|[\],])")


def integral_literals(overrides: typing.Iterable[str], keys: frozenset[str]) -> list[str]:
    """``steps=1e6`` as ``steps=1000000``, for the integer ``keys``: Hydra reads 1e6 as a float, which an
    integer key refuses. Only a whole number in scientific notation or with a zero fraction is rewritten
    (``steps=2.5e5`` and ``steps=1500.0`` too, a sweep ``steps=1e5,2e5`` value by value, a list
    ``policy.hidden_sizes=[1e3,256]`` item by item, ``-1e3`` to -1000 for the range check to name);
    ``steps=1.5`` or ``steps=1e-3`` still fail as before."""

    def whole(item: re.Match) -> str:
        text = item[1]
        if not _SCIENTIFIC.fullmatch(text) or not math.isfinite(float(text)):  # 1e400: inf, left for the type check
            return item[0]
        exact = decimal.Decimal(text)  # 1e30 is 10**30; int(float) made it 1000000000000000019884624838656
        return str(int(exact)) if exact == exact.to_integral_value() else item[0]

    out = []
    for o in overrides:
        key, eq, value = o.partition("=")
        if eq and key.lstrip("+~") in keys:
            o = f"{key}={_VALUE_ITEM.sub(whole, value)}"
        out.append(o)
    return out


def register_schemas() -> None:
    """Make the dataclasses available to the YAML files as /schema/<group>/<name>."""
    from hydra.core.config_store import ConfigStore  # (train only: eval, export and compare read configs without Hydra)

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


def flatten_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A resolved config (plain dicts) as {dotted key: value}: lists as their JSON text, inf/nan as the config
    spells them ("inf"), an empty mapping as no key. ``robo-rl compare`` groups runs by these; a resume compares
    a checkpoint's config with config.yaml through them."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten_config(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, float) and not math.isfinite(tree):  # e.g. env.kwargs bounds: inf as the config spells it
        return {prefix[:-1]: str(tree)}
    return {prefix[:-1]: json.dumps(tree) if isinstance(tree, list) else tree}


#: learner keys added with a default other than what runs saved before them did: the value those runs trained with
#: (GoRL before 2026-12-05: a refit reset the latent to std 1 by zeroing its output layer)
ALGO_VALUES_BEFORE_KEY = {"gorl": {"keep_latent_std": False, "recenter_latent": False}}


def saved_algo_values(algo: Any) -> dict[str, Any]:
    """The keys of ``ALGO_VALUES_BEFORE_KEY`` a saved run's ``algo`` section (a mapping) lacks, with the values it
    trained with: a resume goes on as the run was trained, not with the newer defaults. ``load_run_config`` and
    ``robo-rl compare`` read old runs through it."""
    before = ALGO_VALUES_BEFORE_KEY.get(algo.get("name"), {})
    return {key: value for key, value in before.items() if key not in algo}


def with_schema_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run's config (a plain mapping, as read from its config.yaml) with the keys added to the schemas since it
    was written filled in as the run trained: ``saved_unit_actions``, ``saved_algo_values``, else the schema's default
    (what ``load_run_config`` gives eval, export and resume). A learner or head this robo-rl does not know gets the
    run-wide keys only. ``robo-rl compare`` reads runs through it, so an old run and a new one of the same settings
    are one group, not two split by keys the old one lacks (``precision=None``)."""
    from omegaconf import OmegaConf

    policy, algo = saved.get("policy"), saved.get("algo")
    if isinstance(policy, dict) and saved_unit_actions(policy) is not None:
        policy["unit_actions"] = saved_unit_actions(policy)
    if isinstance(algo, dict):
        algo.update(saved_algo_values(algo))
    schema = OmegaConf.structured(TrainConfig)
    defaults: dict[str, Any] = OmegaConf.to_container(schema)  # type: ignore[assignment]
    for group, schemas in (("algo", ALGO_SCHEMAS), ("policy", POLICY_SCHEMAS)):
        section = saved.get(group)
        name = section.get("name") if isinstance(section, dict) else None
        defaults[group] = OmegaConf.to_container(OmegaConf.structured(schemas[name])) if name in schemas else {}

    def fill(into: dict[str, Any], default: dict[str, Any]) -> None:
        for key, value in default.items():
            if key not in into:
                if value != "???":  # (a key without a default: nothing to fill in)
                    into[key] = value
            elif isinstance(into[key], dict) and isinstance(value, dict) and key != "kwargs":
                fill(into[key], value)

    fill(saved, defaults)
    return saved


def saved_unit_actions(policy: Any) -> bool | None:
    """``policy.unit_actions`` as a saved run's ``policy`` section (a mapping) means it: its own value, else (runs
    saved before 2026-12-05) false for an unsquashed gaussian or mixture head, whose Gaussian was over env units,
    and true for a squashed one; None for heads without the option. ``load_run_config`` and ``robo-rl compare``
    read old runs through it."""
    if policy.get("name") not in ("gaussian", "mixture"):
        return None
    if policy.get("unit_actions") is not None:
        return bool(policy["unit_actions"])
    return policy.get("squash") is not False


# -- the user's config directory (robo-rl train --config-dir DIR) -------------------------------------------
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


@contextlib.contextmanager
def packaged_hydra() -> Iterator[None]:
    """Hydra initialized on the packaged configs for ``compose``, also in a process whose own Hydra is initialized (a
    caller's ``@hydra.main`` app, a notebook's ``hydra.initialize``), which Hydra refuses ("GlobalHydra is already
    initialized"): the caller's Hydra and version base are set aside meanwhile and put back afterwards."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.version import VersionBase

    theirs, their_base = GlobalHydra.instance().hydra, VersionBase.instance().version_base
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(PACKAGED_CONFIGS), version_base=None):
            yield
    finally:
        GlobalHydra.instance().hydra = theirs
        VersionBase.instance().version_base = their_base
CONFIG_GROUPS = ("algo", "env", "policy", "safety", "randomize")  # the groups a config directory may add to


def _value(override: str) -> str:
    value = override.split("=", 1)[1].strip()
    return value[1:-1] if len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0] else value


def config_dir_of(overrides: Iterable[str]) -> Path | None:
    """The user's config directory the overrides name (the last ``config_dir=``), as given; None without one."""
    given = [_value(o) for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+") == "config_dir"]
    return Path(given[-1]) if given and given[-1] not in ("", "null", "None") else None


def config_dir_problem(config_dir: Path) -> str | None:
    """Why ``config_dir`` cannot be a user config directory, or None. Hydra's search path reads robo-rl's packaged
    configs first, so a user file with a packaged config's name would never be read: it is refused, not ignored."""
    if not config_dir.exists():
        return f"config dir {config_dir} does not exist"
    if not config_dir.is_dir():
        return f"config dir {config_dir} is not a directory"
    groups = [g for g in CONFIG_GROUPS if (config_dir / g).is_dir()]
    if not groups:
        groups = ", ".join(g + "/" for g in CONFIG_GROUPS)
        return (f"config dir {config_dir} holds none of robo-rl's config groups ({groups}): "
                "put a config in <dir>/<group>/<name>.yaml, e.g. <dir>/env/my_robot.yaml for env=my_robot")
    for group in groups:
        for path in sorted((config_dir / group).glob("*.yml")):  # Hydra reads .yaml only: <group>=<name> not found
            return f"{path}: Hydra reads config files ending in .yaml, not .yml; rename it to {path.stem}.yaml"
        for path in sorted((config_dir / group).glob("*.yaml")):
            if (PACKAGED_CONFIGS / group / path.name).is_file():
                return (f"{path} has the name of a packaged config ({group}={path.stem}), which robo-rl reads first "
                        "(Hydra's search path), so this file would never be used: rename it")
    return None


def with_config_dir(overrides: Iterable[str], config_dir: str | Path | None = None) -> list[str]:
    """``overrides`` with the user's config directory (``config_dir``, else their last ``config_dir=``) checked and
    given once, as an absolute ``config_dir=`` (the run records it); unchanged without one. Raises ConfigError
    naming a directory that cannot be one (``config_dir_problem``)."""
    from robo_rl.validation import ConfigError

    overrides = list(overrides)
    given = Path(config_dir) if config_dir is not None else config_dir_of(overrides)
    if given is None:
        return overrides
    problem = config_dir_problem(given.absolute())  # (named as where it was looked for)
    if problem is not None:
        raise ConfigError(problem)
    path = str(given.resolve())
    if "'" in path and '"' in path:
        raise ConfigError(f"config dir {path}: a path holding both ' and \" cannot be given to Hydra; rename it")
    quote = '"' if "'" in path else "'"
    given_at = [i for i, o in enumerate(overrides) if "=" in o and o.split("=", 1)[0].lstrip("+") == "config_dir"]
    place = given_at[-1] if given_at and config_dir is None else len(overrides)  # (Hydra's argv keeps its order)
    out = [f"config_dir={quote}{path}{quote}" if i == place else o for i, o in enumerate(overrides)
           if i == place or i not in given_at]
    return out if place < len(overrides) else out + [f"config_dir={quote}{path}{quote}"]


def search_path(overrides: Iterable[str]) -> list[str]:
    """The Hydra override that adds the user's config directory (an absolute ``config_dir=`` among ``overrides``,
    see ``with_config_dir``) to the config search path, after robo-rl's packaged configs (as Hydra's --config-dir
    does): ``DIR/<group>/<name>.yaml`` is then ``<group>=<name>``. Empty without one. compose_config, the sweep's
    check and the run Hydra starts all compose with it."""
    config_dir = config_dir_of(overrides)
    if config_dir is None:
        return []
    quote = '"' if "'" in str(config_dir) else "'"
    return [f"hydra.searchpath=[{quote}file://{config_dir}{quote}]"]


def config_file(group: str, name: str, overrides: Iterable[str] = ()) -> Path | None:
    """The YAML file ``group=name`` selects (packaged first, then the user's config directory), or None."""
    stem = name.removesuffix(".yaml")
    config_dir = config_dir_of(overrides)
    for root in (PACKAGED_CONFIGS, config_dir):
        if root is not None and (root / group / f"{stem}.yaml").is_file():
            return root / group / f"{stem}.yaml"
    return None


def group_options(group: str, overrides: Iterable[str] = ()) -> list[str]:
    """The names ``group=`` takes: the packaged configs and the user's (config_dir= among ``overrides``), sorted."""
    config_dir = config_dir_of(overrides)
    roots = [PACKAGED_CONFIGS] + ([config_dir] if config_dir is not None else [])
    return sorted({p.stem for root in roots for p in (root / group).glob("*.yaml")})


def user_files(overrides: Iterable[str]) -> dict[str, Path]:
    """{group: file} for the groups ``overrides`` choose from the user's config directory."""
    overrides = list(overrides)
    config_dir = config_dir_of(overrides)
    if config_dir is None:
        return {}
    chosen = {o.split("=", 1)[0].lstrip("+"): _value(o) for o in overrides
              if "=" in o and o.split("=", 1)[0].lstrip("+") in CONFIG_GROUPS}
    out = {}
    for group, name in chosen.items():
        path = config_file(group, name, overrides)
        if path is not None and path.parent.parent != PACKAGED_CONFIGS:
            out[group] = path
    return out


def user_file_of(key: str, overrides: Iterable[str]) -> Path | None:
    """The user's config file (chosen by ``overrides``) that sets ``key``, when the command line does not set it too."""
    overrides = list(overrides)
    if any("=" in o and o.split("=", 1)[0].lstrip("+~") == key for o in overrides):
        return None
    for group, path in user_files(overrides).items():
        try:
            text = path.read_text()
            tree = OmegaConf.to_container(OmegaConf.create(text))
        except Exception:  # noqa: BLE001 - a file Hydra read; unreadable now: no source to name
            continue
        package = re.search(r"^#\s*@package\s+(\S+)", text, re.M)
        prefix = package[1] if package else group
        if not isinstance(tree, dict):
            continue
        tree.pop("defaults", None)
        if key in {f"{prefix}.{k}" for k in flatten_config(tree)} or any(
                key.startswith(f"{prefix}.{k}.") for k in flatten_config(tree)):
            return path
    return None


def naming_user_file(message: str, overrides: Iterable[str]) -> str:
    """``message`` (a validation error starting ``key=value:`` or ``key:``) naming the user's config file that set
    the key, when one did."""
    key = re.match(r"([A-Za-z_][\w.]*)[=:]", message)
    path = user_file_of(key[1], overrides) if key else None
    return f"{path}: {message}" if path is not None else message


def check_user_groups(overrides: Iterable[str], cfg: DictConfig | None = None) -> None:
    """Raise ConfigError when a user's algo= or policy= file has no defaults list (before composing: the keys set
    on the command line would then be reported unknown instead), or composed without a learner's or head's schema
    (``cfg``: its keys went unchecked): such a file builds on a packaged one, as ``defaults: [sac, _self_]``."""
    from robo_rl.validation import ConfigError

    files = user_files(overrides)
    for group, schemas in (("algo", ALGO_SCHEMAS), ("policy", POLICY_SCHEMAS)):
        if group not in files:
            continue
        if cfg is None:
            try:
                schemaless = "defaults" not in (OmegaConf.load(files[group]) or {})
            except Exception:  # noqa: BLE001 - unreadable: Hydra's composition reports it
                schemaless = False
        else:
            schemaless = OmegaConf.get_type(cfg, group) not in schemas.values()
        if schemaless:
            raise ConfigError(f"{files[group]}: {'an' if group == 'algo' else 'a'} {group} config builds on a "
                              f"packaged one, whose keys it checks: begin it with `defaults: [<one of "
                              f"{'|'.join(schemas)}>, _self_]`")


def compose_config(overrides: Iterable[str] = (), config_dir: str | Path | None = None) -> DictConfig:
    """The config `robo-rl train <overrides>` would run, for use from Python (tests, benchmarks); ``config_dir``:
    a directory of the user's own configs, as ``robo-rl train --config-dir DIR``."""
    from hydra import compose

    from robo_rl.commands.common import quote_paths
    from robo_rl.commands.train import register_resolvers
    from robo_rl.runs import saved_group_choices
    from robo_rl.validation import ConfigError

    if isinstance(overrides, str) or not isinstance(overrides, Iterable):
        raise TypeError(f"compose_config takes a list of key=value strings, e.g. compose_config(['algo=sac']); "
                        f"got {overrides!r}")
    overrides = list(overrides)  # a generator is read once: the check below must not use it up
    if not all(isinstance(o, str) for o in overrides):
        raise TypeError(f"compose_config takes a list of key=value strings, e.g. compose_config(['algo=sac']); "
                        f"got {overrides!r}")
    register_schemas()
    register_resolvers()
    overrides = quote_paths(overrides)  # resume=runs/sweep/seed=1
    problem = boolean_problem(overrides, boolean_keys())  # compile=2
    if problem is not None:
        raise ConfigError(problem)
    overrides = with_config_dir(saved_group_choices(overrides) + overrides, config_dir)  # resume: the run's own dir
    check_user_groups(overrides)
    with packaged_hydra():
        try:
            cfg = compose(config_name="config", overrides=integral_literals(overrides, integer_keys())
                          + search_path(overrides))
        except Exception as exc:  # noqa: BLE001 - worded below (outside this Hydra context, which the hints compose in)
            failed = exc
        else:
            check_user_groups(overrides, cfg)
            return cfg
    from robo_rl.commands.train import composition_message

    message = composition_message(failed, overrides)  # as the CLI words it: stepz -> did you mean steps?
    if message is None:
        raise failed
    raise ConfigError(message)
