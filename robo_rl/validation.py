"""The checks a config passes before any work starts: unknown keys, non-finite numbers, values that cannot work."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from robo_rl.config import ALGO_SCHEMAS, POLICY_SCHEMAS, TrainConfig
from robo_rl.defaults import episode_limit


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
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max
#: seeds go to numpy's legacy global generator, which takes 0 <= seed < 2**32
MAX_SEED = 2**32 - 1
#: robo-rl eval's seed= goes to torch.manual_seed, which takes at most 2**64 - 1 (its env copies take seed + i)
MAX_EVAL_SEED = 2**64 - 1
#: gradient updates per env step: far above any published setting (REDQ: 20), below a hang
MAX_UTD = 1000
#: ``precision=`` values, and the learners bf16 is built for (their numerics: see Learner.autocast_update)
PRECISIONS = ("fp32", "bf16")
BF16_LEARNERS = ("sac", "td3")
#: torch intra-op threads: more than any machine's cores (torch itself fails past 2**31 with "Overflow when unpacking long")
MAX_THREADS = 4096
#: counts whose absurd value (a typo, 1e12) would hang the run, its work per update or per evaluation growing with
#: it, or stop it with an out-of-memory error while the networks are built: key -> (least, most, what it counts).
#: The most is far above any published setting and below a hang; steps, seed and the threads have their own
#: bounds, and the buffers are checked against the memory free once the task's dimensions are known
COUNT_RANGES = {
    "algo.epochs": (1, 1000, "passes over each rollout per update; the PPO paper's: 10 on MuJoCo"),
    "algo.refit_epochs": (0, 10_000, "passes over the refit data per decoder refit"),
    "algo.refit_batch_size": (1, 10_000_000, "(s, a) pairs per decoder gradient step in a refit; default 256"),
    "algo.grad_steps": (0, 1000, "gradient-ascent steps on Q per kept action; default 3"),
    "algo.num_critics": (1, 1000, "Q-networks in the ensemble; REDQ's: 10"),
    "safety.cost_critic.num_critics": (1, 1000, "cost Q-networks in the ensemble"),
    "policy.components": (1, 1000, "Gaussians in the mixture"),
    "policy.chunk": (1, 1000, "actions predicted per query; Diffusion Policy's: 16"),
    "eval.episodes": (1, 100_000, "episodes per evaluation"),
    "demos.pretrain_steps": (0, 10_000_000, "gradient steps on the head before the first env step; 0: none"),
    "demos.critic_steps": (0, 10_000_000, "critic updates on the demonstrations before the first env step; 0: none"),
}


def check_device(device: str, key: str = "device", fix: str | None = None) -> None:
    """Refuse a device this machine cannot use (train's validate, and eval before it loads anything); ``fix`` replaces
    the advice to use another device where the device cannot change (a resume keeps the run's)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ConfigError(f"{key}={device}: must be cpu or cuda[:N]")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={device}: CUDA is not available on this machine; {fix or f'use {key}=cpu'}")
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"{key}={device}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
                              + (f"; {fix}" if fix else ""))


def float_keys(cfg: DictConfig, bad: Callable[[float, str], bool]) -> list[str]:
    """Dotted keys of the float values ``bad(value, key)`` flags; ``safety.filters`` is checked by its own builder."""
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
        elif isinstance(node, float) and bad(node, path):
            found.append(path)

    walk(cfg, "")
    return found


def non_finite_keys(cfg: DictConfig) -> list[str]:
    """Dotted keys holding NaN or +-inf (NaN only under ``env.kwargs``, where inf can bound a range, e.g.
    ``healthy_z_range=[0.8,inf]``)."""
    return float_keys(cfg, lambda v, key: math.isnan(v) or (math.isinf(v) and not key.startswith("env.kwargs.")))


def beyond_float32_keys(cfg: DictConfig) -> list[str]:
    """Dotted keys holding a finite number too large for float32 (training computes in float32: a clip bound or step
    size of 1e300 reaches torch as a Python float and stops the run with "value cannot be converted to type float
    without overflow"); not under ``env.kwargs`` (gymnasium's float64)."""
    return float_keys(cfg, lambda v, key: math.isfinite(v) and abs(v) > FLOAT32_MAX and not key.startswith("env.kwargs."))


#: the widest hidden layer, and the most weights between two hidden layers: far above any published network (BRO's
#: 4096 x 4096 critics: 2**24 weights), below what the allocator refuses (1e9 wide: a 4 GB bias, a traceback while the
#: networks were built) or a network whose every update takes minutes
MAX_LAYER_WIDTH = 2**16
MAX_LAYER_WEIGHTS = 2**26
LAYER_SIZES_RULE = (f"needs at least one layer, all sizes whole numbers between 1 and {MAX_LAYER_WIDTH:,}, and at most "
                    f"{MAX_LAYER_WEIGHTS:,} weights between two layers (e.g. [256,256])")


def layer_sizes_ok(sizes: Any) -> bool:
    """Whether ``sizes`` (a hidden-layer list) holds at least one whole number, all between 1 and MAX_LAYER_WIDTH (not
    [[256]] or [true]), no two neighbours more than MAX_LAYER_WEIGHTS weights apart."""
    return (len(sizes) >= 1 and all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= MAX_LAYER_WIDTH
                                    for h in sizes)
            and all(a * b <= MAX_LAYER_WEIGHTS for a, b in zip(sizes, list(sizes)[1:])))


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
        hint = "; for no clipping give a large bound, e.g. 1e6" if bad[0].endswith("_clip") else ""
        raise ConfigError(f"{bad[0]}={OmegaConf.select(cfg, bad[0])}: must be a finite "
                          f"number{' (also: ' + ', '.join(bad[1:]) + ')' if len(bad) > 1 else ''}{hint}")
    big = beyond_float32_keys(cfg)
    if big:
        hint = "; for no clipping give a large bound, e.g. 1e6" if big[0].endswith("_clip") else ""
        raise ConfigError(f"{big[0]}={OmegaConf.select(cfg, big[0])}: beyond float32's range (at most 3.4e38 in "
                          f"magnitude; training computes in float32)"
                          f"{' (also: ' + ', '.join(big[1:]) + ')' if len(big) > 1 else ''}{hint}")
    need(0 < cfg.steps <= MAX_STEPS, "steps", "must be > 0 and at most 1e15 (e.g. steps=1e6)")
    need(0 <= cfg.seed <= MAX_SEED, "seed", "must be between 0 and 2**32 - 1")
    for key, (least, most, what) in COUNT_RANGES.items():
        value = OmegaConf.select(cfg, key, default=None)
        need(value is None or least <= value <= most, key, f"must be between {least} and {most:,} ({what})")
    need(cfg.env.max_episode_steps is None or cfg.env.max_episode_steps >= 1, "env.max_episode_steps",
         "must be >= 1 (or null: the task's own time limit)")
    need(cfg.env.backend != "isaac" or cfg.env.max_episode_steps is None or bool(cfg.resume), "env.max_episode_steps",
         "env.backend=isaac keeps the task's own episode length (set it in the Isaac task's config, or through "
         "env.kwargs where its factory takes it); leave env.max_episode_steps unset")
    kwargs = cfg.env.kwargs
    need(kwargs is None or "max_episode_steps" not in kwargs, "env.kwargs.max_episode_steps",
         "the time limit is not one of the task's keyword arguments: give env.max_episode_steps=<n>")
    need(cfg.env.reward_clip > 0, "env.reward_clip", "must be > 0 (rewards are clipped to +-reward_clip after scaling)")
    need(cfg.policy.obs_clip > 0, "policy.obs_clip", "must be > 0 (normalized observations are clipped to +-obs_clip)")
    if "log_std_init" in cfg.policy:
        from policies.heads.gaussian import LOG_STD_MAX, LOG_STD_MIN  # what the heads clamp log std to

        need(LOG_STD_MIN <= cfg.policy.log_std_init <= LOG_STD_MAX, "policy.log_std_init",
             f"must be within the heads' log-std clamp [{LOG_STD_MIN:g}, {LOG_STD_MAX:g}] (0: std 1)")
        # a state-dependent std is an output of the network: log_std_init is never read (a resumed run keeps its config)
        need(cfg.policy.log_std_init == 0 or not cfg.policy.state_dependent_std or bool(cfg.resume),
             "policy.log_std_init", "sets the initial std only with policy.state_dependent_std=false (with true, "
             "the network outputs the log std and ignores it); set policy.state_dependent_std=false or leave it at 0")
    # a squashed head maps tanh's (-1, 1) onto the box: it has no env-unit Gaussian to keep
    need(cfg.policy.get("unit_actions", True) or not cfg.policy.squash, "policy.unit_actions",
         "false keeps an unsquashed head's Gaussian in the env's units; with policy.squash=true the head always "
         "works in the box's unit scale: leave it at true, or set policy.squash=false")
    from envs.randomization import RandomizationSpec, delay_problem

    try:  # its shape first: the delay check below takes the largest of a well-formed [min, max]
        RandomizationSpec.from_dict(OmegaConf.to_container(cfg.env.randomize, resolve=True))
    except ValueError as exc:
        raise ConfigError(f"env.{exc}") from None
    delay = cfg.env.randomize.action_delay
    limit = episode_limit(cfg)
    problem = None if delay is None else delay_problem(max(delay), limit)
    need(problem is None, "env.randomize.action_delay", str(problem))
    for key in cfg.algo.keys():
        if (str(key) == "lr" or str(key).endswith("_lr")) and not isinstance(cfg.algo[key], bool):  # not anneal_lr
            floor = 0 if key == "action_lr" else None  # parl's action_lr=0: no gradient steps on the actions
            need(cfg.algo[key] >= 0 if floor == 0 else cfg.algo[key] > 0, f"algo.{key}",
                 "must be >= 0 (0: no local optimization)" if floor == 0 else "must be > 0")
    need(cfg.env.num_envs >= 1, "env.num_envs", "must be >= 1")
    need(cfg.env.vectorization in ("sync", "async"), "env.vectorization", "must be sync or async")
    need(cfg.env.backend in ("auto", "gymnasium", "mujoco", "mjwarp", "isaac"), "env.backend",
         "must be auto, gymnasium, mujoco, mjwarp or isaac")
    need(cfg.env.threads >= 0, "env.threads", "must be >= 0 (0: all CPUs)")
    need(cfg.threads is None or 1 <= cfg.threads <= MAX_THREADS, "threads",
         f"must be between 1 and {MAX_THREADS} (torch threads; null: torch's default, all cores)")
    if "refit_threads" in cfg.algo:  # GoRL's and GoRL-SAC's decoder refits set them mid-run: torch overflows past 2**31
        need(0 <= cfg.algo.refit_threads <= MAX_THREADS, "algo.refit_threads",
             f"must be between 0 and {MAX_THREADS} (torch threads of a decoder refit; 0: all CPUs)")
    need(cfg.get("precision", "fp32") in PRECISIONS, "precision", "must be fp32 or bf16")
    need(cfg.get("precision", "fp32") == "fp32" or cfg.algo.name in BF16_LEARNERS, "precision",
         f"bf16 is built for algo=sac and algo=td3 (their 256-wide critics), not algo={cfg.algo.name}: PPO's and "
         "GoRL's 64-wide update runs in numpy, and EXPO's and PA-RL's sampling chains would accumulate in bf16; "
         "use precision=fp32")
    need(cfg.eval.num_envs >= 1, "eval.num_envs", "must be >= 1")
    need(cfg.eval.every >= 1, "eval.every", "must be >= 1")
    need(cfg.checkpoint.every >= 1, "checkpoint.every", "must be >= 1")
    need(cfg.checkpoint.keep >= 1, "checkpoint.keep", "must be >= 1")
    need(cfg.log.every >= 1, "log.every", "must be >= 1")
    need(cfg.log.progress_seconds > 0, "log.progress_seconds", "must be > 0 (seconds between progress lines)")
    need(cfg.demos.batch_size >= 1, "demos.batch_size", "must be >= 1")
    need(cfg.demos.lr > 0, "demos.lr", "must be > 0")
    if cfg.demos.path is not None and not cfg.resume:
        from robo_rl.demos import path_problem

        problem = path_problem(cfg.demos.path)
        need(problem is None, "demos.path", str(problem))
    check_device(str(cfg.device))
    for key in ("policy.activation", "algo.critic_activation", "algo.value_activation", "algo.edit_activation"):
        value = OmegaConf.select(cfg, key)
        if value is not None:
            need(value in ACTIVATIONS, key, f"unknown activation; choose one of {', '.join(ACTIVATIONS)}")
    for key in ("policy.hidden_sizes", "policy.decoder_hidden", "algo.critic_hidden", "algo.value_hidden",
                "algo.edit_hidden"):
        value = OmegaConf.select(cfg, key)
        if value is not None:
            need(layer_sizes_ok(value), key, LAYER_SIZES_RULE)
    if algo in ("sac", "td3", "gorl_sac", "expo", "parl"):
        need(not cfg.env.normalize_reward, "env.normalize_reward",
             "not supported for off-policy learners (the replay buffer would mix rewards scaled by different "
             "statistics); leave it off for off-policy learners")
        need(cfg.algo.batch_size >= 1, "algo.batch_size", "must be >= 1")
        need(cfg.algo.buffer_size >= cfg.env.num_envs, "algo.buffer_size",
             f"must hold at least one step of every env (env.num_envs={cfg.env.num_envs:,})")
        need(cfg.algo.learning_starts >= 0, "algo.learning_starts", "must be >= 0")
        need(0 < cfg.algo.utd <= MAX_UTD, "algo.utd", f"gradient updates per env step must be > 0 and at most {MAX_UTD}")
        if "target_update_every" in cfg.algo:
            need(cfg.algo.target_update_every >= 1, "algo.target_update_every", "must be >= 1 (gradient updates "
                 "between target-network updates)")
        need(0 < cfg.algo.tau <= 1, "algo.tau", "must be in (0, 1]")
        need(cfg.algo.buffer_size >= cfg.algo.batch_size, "algo.buffer_size",
             f"must hold at least one batch (algo.batch_size={cfg.algo.batch_size})")
        if "init_alpha" in cfg.algo:
            need(0 < cfg.algo.init_alpha <= FLOAT32_MAX, "algo.init_alpha", "the entropy temperature must start > 0 "
                 "and be a float32 number (at most 3.4e38)")
        if "fused" in cfg.algo:
            need(cfg.algo.fused in ("auto", "on", "off"), "algo.fused", "must be auto, on or off")
        if algo == "td3":
            need(cfg.algo.policy_delay >= 1, "algo.policy_delay", "must be >= 1 (critic updates per actor update)")
            for key in ("target_noise", "target_noise_clip", "exploration_noise"):
                need(cfg.algo[key] >= 0, f"algo.{key}", "must be >= 0 (a standard deviation or bound, unit action scale)")
        if algo == "parl":
            need(cfg.algo.num_candidates >= 1, "algo.num_candidates", "must be >= 1")
            need(1 <= cfg.algo.top_k <= cfg.algo.num_candidates, "algo.top_k", "must be between 1 and algo.num_candidates")
            need(cfg.algo.target_candidates is None or cfg.algo.target_candidates >= 1, "algo.target_candidates",
                 "must be >= 1 (null: algo.num_candidates)")
        if algo == "expo":
            need(cfg.algo.num_samples >= 1, "algo.num_samples", "must be >= 1")
            need(cfg.algo.target_samples is None or cfg.algo.target_samples >= 1, "algo.target_samples",
                 "must be >= 1 (null: algo.num_samples)")
    if algo in ("ppo", "gorl"):
        samples = cfg.algo.rollout_steps * cfg.env.num_envs
        need(cfg.algo.rollout_steps >= 1, "algo.rollout_steps", "must be >= 1")
        need(samples >= 2, "algo.rollout_steps", f"rollout_steps * num_envs = {samples}: an update needs at least 2 "
             "samples (the value loss's explained variance is undefined for one); raise algo.rollout_steps or env.num_envs")
        need(
            1 <= cfg.algo.minibatch_size <= samples,
            "algo.minibatch_size",
            f"must be between 1 and the samples per update (rollout_steps * num_envs = {samples})",
        )
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
            need(not (cfg.algo.latent_kl_coef > 0 and cfg.algo.recenter_latent and cfg.algo.reset_latent),
                 "algo.latent_kl_coef", "the penalty pulls the latent toward a prior centred at 0, but with "
                 "algo.recenter_latent=true (the default) the prior is centred on the latent's mean at the last refit: "
                 "set algo.recenter_latent=false to use the penalty")
        need(cfg.algo.target_kl is None or cfg.algo.target_kl > 0, "algo.target_kl",
             "must be > 0 (or null for no early stop); an update stops before a minibatch whose KL to the "
             "rollout policy exceeds 1.5 * target_kl")
    need(0 <= OmegaConf.select(cfg, "algo.gamma") <= 1, "algo.gamma", "must be in [0, 1]")
    validate_safety(cfg)
    if not cfg.resume:  # a resumed run continues its saved config as it is
        refuse_unread(cfg)


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
    need(hidden is None or layer_sizes_ok(hidden), "safety.cost_critic.hidden", LAYER_SIZES_RULE)
    need(safety.cost_critic.lr is None or safety.cost_critic.lr > 0, "safety.cost_critic.lr", "must be > 0")
    if len(safety.filters):
        need(algo in FILTERABLE_ALGOS, "safety.filters",
             f"filtering training actions needs an off-policy learner ({', '.join(FILTERABLE_ALGOS)}): algo={algo} "
             "learns from the log-probability of its own unfiltered actions. Train without filters "
             "(safety=none) and put the chain on the exported policy instead")


def schema_default(cfg: DictConfig, key: str) -> Any:
    """``key``'s default in its schema: the chosen learner's (``algo.*``) or head's (``policy.*``), else TrainConfig's."""
    first, _, rest = key.partition(".")
    schemas = {"algo": ALGO_SCHEMAS, "policy": POLICY_SCHEMAS}.get(first)
    schema, parts = (schemas[str(cfg[first].name)], rest) if schemas else (TrainConfig, key)
    for part in parts.split("."):
        f = next(f for f in dataclasses.fields(schema) if f.name == part)
        schema = typing.get_type_hints(schema)[part]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def changed(cfg: DictConfig, key: str) -> bool:
    """Whether ``cfg`` has ``key`` and sets it to something other than its schema default."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig) or leaf not in node:
        return False
    value = node[leaf]
    return (OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value) != \
        schema_default(cfg, key)


def unread_keys(cfg: DictConfig) -> list[tuple[str, str]]:
    """(key, why) for each key this config sets away from its default that nothing in the run would read: the
    user would believe a setting is in force that is not. (Keys Hydra fills in at their defaults never count.)"""
    found: list[tuple[str, str]] = []

    def unread(keys: typing.Iterable[str], why: str) -> None:
        found.extend((k, why) for k in keys if changed(cfg, k))

    safety, demos, algo = cfg.safety, cfg.demos, cfg.algo
    if not safety.passivity_aware:
        why = ("only passivity-aware training reads it (Lagrangian SAC: safety.passivity_aware=true with algo=sac); "
               "set safety.passivity_aware=true, or leave it out")
        unread(["safety.cost_budget", "safety.cost_gamma", "safety.lagrange_lr", "safety.lagrange_init",
                "safety.cost_critic.num_critics"], why)
        # resolve_defaults makes these the reward critic's: only another value was set
        for key, follows in (("safety.cost_critic.hidden", "critic_hidden"), ("safety.cost_critic.lr", "critic_lr")):
            value = OmegaConf.select(cfg, key)
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            reward = algo.get(follows)
            if value is not None and value != (OmegaConf.to_container(reward) if OmegaConf.is_config(reward) else reward):
                found.append((key, why))
    if demos.path is None:
        unread([f"demos.{k}" for k in ("pretrain_steps", "batch_size", "lr", "replay", "critic_steps",
                                       "freeze_obs_norm")],
               "no demonstrations are given (demos.path is not set), so nothing reads it; set "
               "demos.path=<file.npz>, or leave it out")
    else:
        if int(demos.pretrain_steps) == 0:
            unread(["demos.batch_size", "demos.lr"], "it sets the pretraining on the demonstrations, and "
                   "demos.pretrain_steps=0 pretrains nothing; set demos.pretrain_steps > 0, or leave it out")
        off_policy = algo.name in FILTERABLE_ALGOS
        if int(demos.critic_steps) > 0 and not (off_policy and demos.replay):
            unread(["demos.critic_steps"], "the critic warm-up trains on the demonstrations preloaded into replay, and "
                   + ("demos.replay=false preloads none; set demos.replay=true" if off_policy else
                      f"algo={algo.name} (on-policy) has no replay buffer; leave it out") + ", or set demos.critic_steps=0")
    if "autotune_alpha" in algo and not algo.autotune_alpha:
        unread(["algo.target_entropy", "algo.alpha_lr"], "the temperature is tuned toward the target entropy only with "
               "algo.autotune_alpha=true; with false it stays at algo.init_alpha. Set algo.autotune_alpha=true, or "
               "leave it out")
    # (a key set to the value that turns the same thing off, e.g. both at 0, is read as meaning what the other says)
    if algo.name == "td3" and algo.target_noise == 0 and algo.target_noise_clip != 0:
        unread(["algo.target_noise_clip"], "it bounds the target policy's smoothing noise, and algo.target_noise=0 "
               "adds none; set algo.target_noise > 0, or leave it out")
    if algo.name == "parl":
        if algo.action_lr == 0 and algo.grad_steps != 0:
            unread(["algo.grad_steps"], "gradient steps on the actions of size algo.action_lr=0 leave them where they "
                   "are; set algo.action_lr > 0, or algo.grad_steps=0 for no local optimization")
        if algo.grad_steps == 0 and algo.action_lr != 0:
            unread(["algo.action_lr"], "it is the step size of the gradient steps on the actions, and "
                   "algo.grad_steps=0 takes none; set algo.grad_steps > 0, or leave it out")
    if not cfg.env.normalize_reward:
        unread(["env.reward_clip"], "it clips normalized rewards, and env.normalize_reward=false leaves them as the "
               "task gives them; set env.normalize_reward=true (algo=ppo or gorl), or leave it out")
    if not cfg.policy.normalize_obs:
        unread(["policy.obs_clip"], "it clips normalized observations, and policy.normalize_obs=false leaves them as "
               "the task gives them; set policy.normalize_obs=true, or leave it out")
    return found


def refuse_unread(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first of ``unread_keys`` (and the others), what to change, before any work."""
    found = unread_keys(cfg)
    if found:
        (key, why), others = found[0], [k for k, _ in found[1:]]
        also = f" (also: {', '.join(others)})" if others else ""
        raise ConfigError(f"{key}={OmegaConf.select(cfg, key)}: {why}{also}")


def ignored_keys(cfg: DictConfig, backend: str, on_policy: bool, eval_envs: int | None) -> list[str]:
    """A start-up warning per key set away from its default that this run ignores, harmlessly: how the envs are
    stepped or evaluated, what a checkpoint keeps, options of a decoder refit that never happens. ``backend``: the
    training envs' (``env.backend=auto`` resolved); ``eval_envs``: the evaluation env's copies, None when evaluations
    run on the training envs. (Keys whose being ignored changes what the run learns are refused: ``unread_keys``.)"""
    out: list[str] = []
    env, algo, task = cfg.env, cfg.algo, cfg.env.id
    if backend != "gymnasium" and changed(cfg, "env.vectorization"):
        out.append(f"env.vectorization={env.vectorization}: only the gymnasium backend reads it, and {task} runs on the "
                   f"{backend} backend, so it changes nothing"
                   + ("" if cfg.resume else " (env.backend=gymnasium to use it)"))  # (a resume keeps env.backend)
    if backend != "mujoco" and changed(cfg, "env.threads"):
        out.append(f"env.threads={env.threads}: only the batched MuJoCo backend reads it (physics threads), and {task} "
                   f"runs on the {backend} backend, so it changes nothing")
    if on_policy and changed(cfg, "checkpoint.save_replay"):
        out.append(f"checkpoint.save_replay={cfg.checkpoint.save_replay}: algo={algo.name} is on-policy and keeps no "
                   "replay buffer, so it changes nothing")
    if changed(cfg, "eval.num_envs"):
        if eval_envs is None:
            out.append(f"eval.num_envs={cfg.eval.num_envs}: {task} allows one simulator per process, so evaluations run "
                       "on the training envs and it changes nothing")
        elif int(cfg.eval.num_envs) > eval_envs:
            out.append(f"eval.num_envs={cfg.eval.num_envs}: an evaluation steps at most one copy per episode, so "
                       f"eval.episodes={cfg.eval.episodes} builds {eval_envs}")
    if cfg.policy.name == "deterministic" and changed(cfg, "eval.deterministic"):
        out.append(f"eval.deterministic={cfg.eval.deterministic}: the deterministic head has no distribution to sample, "
                   "so evaluations act deterministically whatever it says")
    if algo.get("refit_epochs") == 0:  # (with reset_latent=false: refused otherwise) a fixed decoder
        for key in ("refit_every", "stages", "refit_batch_size", "decoder_lr", "dataset_size", "refit_on", "refit_redraw",
                    "refit_threads", "keep_latent_std", "recenter_latent"):
            if changed(cfg, f"algo.{key}"):
                # the dataset is still collected and checkpointed (its size is the one thing the key still changes)
                effect = ("changes only the memory set aside for a dataset no refit reads" if key == "dataset_size"
                          else "changes nothing")
                out.append(f"algo.{key}={algo[key]}: algo.refit_epochs=0 keeps the decoder fixed (a refit fits "
                           f"nothing and, with algo.reset_latent=false, resets nothing), so it {effect}")
        return out
    if algo.name == "gorl" and algo.refit_every is not None and changed(cfg, "algo.stages"):
        out.append(f"algo.stages={algo.stages}: algo.refit_every={algo.refit_every} sets when the decoder is refit "
                   "instead, so it changes nothing")
    if algo.get("refit_on") == "executed" and changed(cfg, "algo.refit_redraw"):
        out.append(f"algo.refit_redraw={algo.refit_redraw}: with algo.refit_on=executed a refit fits the executed "
                   "actions, not draws of the policy, so it changes nothing")
    if algo.get("reset_latent") is False:
        for key in ("keep_latent_std", "recenter_latent"):
            if changed(cfg, f"algo.{key}"):
                out.append(f"algo.{key}={algo[key]}: it shapes the latent policy's reset after a decoder refit, and "
                           "algo.reset_latent=false makes none, so it changes nothing")
    return out
