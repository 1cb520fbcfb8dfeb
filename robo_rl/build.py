"""From a resolved config to objects: the env, the policy head, the learner and its runner."""

from __future__ import annotations

import errno
import inspect
import logging
import math
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from envs import BatchedEnv, make_env
from policies import build_head
from policies.heads import PolicyHead
from robo_rl.config import RUNNER_KEYS
from robo_rl.defaults import resolve_defaults
from robo_rl.validation import ConfigError, changed
from robo_rl.learners.base import Learner
from robo_rl.learners.expo import EXPO
from robo_rl.learners.gorl import GoRL, GoRLSAC
from robo_rl.learners.parl import PARL
from robo_rl.learners.ppo import PPO
from robo_rl.learners.sac import SAC
from robo_rl.learners.sac_lagrangian import LagrangianSAC
from robo_rl.learners.td3 import TD3

log = logging.getLogger("robo_rl")

LEARNERS: dict[str, type[Learner]] = {"sac": SAC, "td3": TD3, "ppo": PPO, "gorl": GoRL, "gorl_sac": GoRLSAC, "expo": EXPO,
                                      "parl": PARL}


def _plain(node: Any) -> Any:
    """OmegaConf node -> plain Python (lists become tuples for network sizes)."""
    value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return tuple(value) if isinstance(value, list) else value


def build_env(cfg: DictConfig, num_envs: int | None = None, vectorization: str | None = None,
              randomize: bool = True, render: bool = False, safety: bool = False) -> BatchedEnv:
    """The training env (``randomize=False``: the nominal task, e.g. for evaluation). ``safety=True``: behind the
    run's ``safety.filters`` (a ``SafetyLayer`` that keeps per-episode costs), as ``robo-rl eval`` and training's
    evaluations act; without them a run trained with filters is evaluated on actions it never executed."""
    cfg = resolve_defaults(cfg)  # one straight from compose_config leaves env.num_envs null: the task's default
    env = cfg.env
    built = make_env(
        env.id,
        num_envs=int(num_envs if num_envs is not None else env.num_envs),
        backend=env.backend,
        vectorization=vectorization or env.vectorization,
        kwargs=OmegaConf.to_container(env.kwargs, resolve=True),
        # an Isaac task keeps its own episode length: a limit in the config.yaml of a run from before validate refused
        # it never reached the task, and its eval, export and resume go on without it (make_env refuses it)
        max_episode_steps=None if env.backend == "isaac" else env.max_episode_steps,
        device=cfg.device,
        threads=int(env.threads),
        randomize=OmegaConf.to_container(env.randomize, resolve=True) if randomize else None,
        render=render,
    )
    if not safety:
        return built
    from robo_rl.runners.safety import SafetyLayer, safety_settings

    settings = safety_settings(cfg)
    try:
        return SafetyLayer(built, settings.filters, settings.cost_key, keep_episode_costs=True)
    except BaseException:
        built.close()
        raise


def _env_failure(cfg: DictConfig, what: str, exc: BaseException) -> ConfigError:
    kwargs = OmegaConf.to_container(cfg.env.kwargs, resolve=True)
    given = f" with env.kwargs {kwargs}" if kwargs else ""
    return ConfigError(f"env.id={cfg.env.id}{given} {what}: {type(exc).__name__}: {exc}")


def build_env_checked(cfg: DictConfig, **options: Any) -> BatchedEnv:
    """``build_env``, with a task that fails to build (a missing ``env.kwargs.xml_file``, an argument of the
    wrong type) reported as a ConfigError naming env.id and env.kwargs rather than as a traceback."""
    try:
        return build_env(cfg, **options)
    except (ValueError, ImportError, KeyboardInterrupt):  # ours already name the key (ConfigError is a ValueError)
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the task raises, named with the config that caused it
        # not the config's fault but the machine's: the CLI's exit 1, as out of memory and file limits elsewhere
        if _resource_exhausted(exc):
            raise MemoryError(f"env.id={cfg.env.id} could not be built: {type(exc).__name__}: {exc}") from exc
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            raise exc
        raise _env_failure(cfg, "could not be built", exc) from exc


def _resource_exhausted(exc: BaseException) -> bool:
    """Whether building an env failed for want of memory (MuJoCo's "Could not allocate memory" under a memory limit),
    which was reported as bad configuration (exit 2)."""
    return isinstance(exc, MemoryError) or "allocate memory" in str(exc).lower()


def check_env_runs(cfg: DictConfig, env: BatchedEnv) -> None:
    """Reset ``env`` and step it once at the middle of its action box, so a task that builds but cannot
    run (``env.kwargs.healthy_z_range=5`` is only read at the first step) fails before any run file
    exists, and passivity-aware training on a task that reports no cost under safety.cost_key fails too.
    Meant for the evaluation env: every evaluation resets it with its own seed, so the probe changes no
    result."""
    import torch

    from robo_rl.runners.safety import missing_cost, read_cost

    try:
        env.reset(seed=int(cfg.seed))
        middle = (env.action_space.low + env.action_space.high) / 2
        info = env.step(torch.as_tensor(middle, dtype=torch.float32, device=env.device).expand(env.num_envs, -1).clone()).info
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - as in build_env_checked
        raise _env_failure(cfg, "builds but cannot run a step", exc) from exc
    key = str(cfg.safety.cost_key)
    if read_cost(info, key, env.num_envs, env.device) is None:
        if cfg.safety.passivity_aware:
            raise missing_cost(key, env)  # the Lagrangian learner would fail at its first step
        if changed(cfg, "safety.cost_key"):  # only episode costs read it (a task may report it in some steps only)
            log.warning(f"safety.cost_key={key}: {env.task_id} reported no {key!r} in its first step's info (top level "
                        "or info['task']); if none of its steps does, no episode costs are logged and the key changes "
                        "nothing")


def _head_options(cfg: DictConfig) -> dict[str, Any]:
    """The head's own keyword arguments from ``policy.*``."""
    return {k: _plain(v) for k, v in cfg.policy.items() if k not in ("name", "normalize_obs", "obs_clip")}


def _learner_options(cfg: DictConfig) -> dict[str, Any]:
    """The learner's keyword arguments from ``algo.*`` (the runner's keys left out)."""
    return {k: _plain(v) for k, v in cfg.algo.items() if k not in RUNNER_KEYS}


def build_policy(cfg: DictConfig, env: BatchedEnv) -> PolicyHead:
    cfg = resolve_defaults(cfg)  # the task's and learner's defaults, as build_env and build_runner fill them
    return build_head(
        cfg.policy.name,
        env.obs_dim,
        env.action_space.low,
        env.action_space.high,
        normalize_obs=bool(cfg.policy.normalize_obs),
        obs_clip=float(cfg.policy.obs_clip),
        **_head_options(cfg),
    ).to(cfg.device)


def check_head_and_learner(cfg: DictConfig, buffers: bool = True) -> None:
    """Build the configured head and learner on a stand-in 3-D observation and 2-D action, without an env:
    a head/learner pair that cannot work or a head or learner option out of range fails here, as a
    ConfigError. A ``-m`` sweep runs this for every job before the first one starts.

    ``buffers``: first refuse buffers no machine holds, sized on the stand-in dimensions (a sweep, which has no
    env). train() passes False: it sizes them on the task's own once the envs are built (the stand-in's 2-D
    action is more than Pendulum's 1, so its sizes were not the run's, and a buffer that fit could be refused)."""
    import numpy as np
    import torch

    from robo_rl.memory import buffers_needed, check_fits

    if buffers:
        check_fits(buffers_needed(cfg, 3, 2), torch.device(cfg.device))
    try:
        head = build_head(cfg.policy.name, 3, -np.ones(2), np.ones(2), **_head_options(cfg))
        options = _learner_options(cfg)
        if options.get("target_entropy") is not None:  # its ceiling depends on |A|: checked on the real task
            options["target_entropy"] = None
        if (options.get("dataset_size") or 0) > 1:  # GoRL allocates its refit data when built: one row for the check
            options["dataset_size"] = 1
        LEARNERS[cfg.algo.name](head, **options)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_safety(cfg: DictConfig, obs_dim: int, act_dim: int, control_dt: float | None = None) -> None:
    """Build ``safety.filters`` once for these dimensions (and the env's control period, which a filter's
    ``dt`` must equal), so a bad filter spec fails before any run file exists; train() calls it.

    (``sim2real.filters.build_chain`` owns the spec; the runner builds one chain per env copy later.)
    """
    from robo_rl.runners.safety import build_filter_chain, safety_settings

    filters = safety_settings(cfg).filters
    if len(filters):
        build_filter_chain(filters, act_dim, obs_dim, control_dt)


def build_learner(cfg: DictConfig, policy: PolicyHead, to_act: bool = False,
                  notes: list[tuple[int, str]] | None = None) -> Learner:
    """The configured learner; ``safety.passivity_aware=true`` turns SAC into Lagrangian SAC (a cost critic
    and a multiplier, configured under ``safety``). ``to_act=True``: a learner that will only act (eval,
    export): built without importing torch._dynamo (~1 s), so without the update's ``compile`` and ``precision``.
    What ``compile`` and ``precision`` will do is logged, or, given a ``notes`` list, appended to it as (logging
    level, line) for the caller to log (``train`` does after its opening line)."""
    import contextlib

    from robo_rl.learners.optim import built_to_act
    from robo_rl.runners.safety import safety_settings

    cfg = resolve_defaults(cfg)
    name = cfg.algo.name
    if name not in LEARNERS:
        raise ConfigError(f"algo.name={name}: unknown algorithm; choose one of {', '.join(LEARNERS)}")
    kwargs = _learner_options(cfg)
    taken = inspect.signature(LEARNERS[name].__init__).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in taken.values())
    unknown = [] if takes_any else [f"algo.{key}" for key in kwargs if key not in taken]
    if unknown:  # cfg.algo.name edited by hand: the other algo's keys went on to the constructor, a bare TypeError
        raise ConfigError(f"algo.name={name}, but {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not "
                          f"{name}'s (a config composed for another algo, and algo.name changed since?); compose it "
                          f"with algo={name}: compose_config([\"algo={name}\", ...])")
    safety = safety_settings(cfg)
    with built_to_act() if to_act else contextlib.nullcontext():
        if safety.passivity_aware:
            if name != "sac":
                raise ConfigError(f"safety.passivity_aware=true: Lagrangian training needs algo=sac, not algo={name}")
            critic = safety.cost_critic
            learner: Learner = LagrangianSAC(
                policy, cost_budget=float(safety.cost_budget), cost_gamma=float(safety.cost_gamma),
                lagrange_lr=float(safety.lagrange_lr), lagrange_init=float(safety.lagrange_init),
                cost_num_critics=int(critic.num_critics), cost_critic_hidden=_plain(critic.hidden),
                cost_critic_lr=None if critic.lr is None else float(critic.lr), **kwargs,
            ).to(cfg.device)
        else:
            learner = LEARNERS[name](policy, **kwargs).to(cfg.device)
    if to_act:  # compile and precision=bf16 change how update() computes its losses; acting is neither
        return learner
    import torch

    def say(level: int, line: str) -> None:
        if notes is None:
            log.log(level, line)
        else:
            notes.append((level, line))

    if cfg.get("compile", False):
        if torch.device(cfg.device).type == "cpu":
            require_cpp_compiler()
        compiled = learner.compile_update()  # type: ignore[attr-defined]
        if compiled:
            say(logging.INFO, f"compile=true: the first update compiles {compiled} (tens of seconds; torch caches the "
                "result for later runs)")
        else:
            say(logging.WARNING, f"compile=true: nothing {name}'s update runs here is compiled, so it changes nothing "
                "(PPO's fused CPU update is numpy, faster than its compiled loss; GoRL and GoRL-SAC have no compiled "
                "losses); set compile=false")
    if cfg.get("precision", "fp32") == "bf16":
        if not native_bf16(cfg.device):
            say(logging.WARNING, f"precision=bf16: this {cfg.device} has no native bf16 matrix multiply (CPUs: "
                "AVX512-BF16 or AMX; GPUs: Ampere or later), so the updates will be slower than with precision=fp32")
        learner.autocast_update(torch.bfloat16, torch.device(cfg.device).type)  # type: ignore[attr-defined]
    return learner


def require_cpp_compiler() -> None:
    """compile=true on a CPU: torch.compile (inductor) writes C++ kernels and builds them at the first update, after
    algo.learning_starts; without a C++ compiler, or without Python's headers (the kernels are built as Python
    extension modules), that would end the run there, so say it before any work."""
    import sys
    import sysconfig
    import warnings
    from pathlib import Path

    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch layout: leave the checks to inductor
        return
    try:
        get_cpp_compiler()
    except Exception as exc:  # inductor's InvalidCxxCompiler: none of the compilers it looks for runs
        raise ConfigError(f"compile=true: torch.compile needs a C++ compiler on the CPU and found none it can run "
                          f"({type(exc).__name__}); install gcc or clang (or point CXX at one), or set compile=false") from exc
    try:  # where inductor will look for Python.h (a private function: another torch leaves the check to inductor)
        from torch._inductor.cpp_builder import _get_python_related_args

        with warnings.catch_warnings():  # inductor warns "Can't find Python.h" here, and fails at the build
            warnings.simplefilter("ignore")
            include_dirs = [str(d) for d in _get_python_related_args()[0]]
    except Exception:  # noqa: BLE001 - ImportError, or another signature
        return
    if not any((Path(d) / "Python.h").is_file() for d in include_dirs):
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        raise ConfigError(f"compile=true: torch.compile builds its C++ kernels against Python's headers, and "
                          f"{sysconfig.get_path('include')} has no Python.h; install them (python{version}-dev or "
                          "python3-dev, or your Python distribution's headers), or set compile=false")


def native_bf16(device: str) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware (elsewhere torch emulates them, slower than fp32)."""
    import torch

    if torch.device(device).type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def build_runner(cfg: DictConfig, learner: Learner, env: BatchedEnv, eval_env: BatchedEnv, run_dir: Any,
                 warn: bool = True):
    """The runner that trains ``learner`` on ``env`` as ``cfg`` says (``runner.train()``), evaluating on ``eval_env``,
    writing to ``run_dir``; the config is checked as ``train`` checks it. ``warn``: log the run plan's warnings
    (``robo_rl.run_plan``: a policy never updated, ignored keys, ...), as ``train`` does after its opening line."""
    from robo_rl.run_plan import plan_warnings
    from robo_rl.runners.off_policy import OffPolicyRunner
    from robo_rl.runners.on_policy import OnPolicyRunner

    from pathlib import Path

    from robo_rl.runs import directory_problem
    from robo_rl.validation import ConfigError, validate

    if not isinstance(cfg, DictConfig):
        raise TypeError(f"build_runner(cfg, ...) takes the config compose_config([...]) returns, got {type(cfg).__name__}")
    if not isinstance(run_dir, (str, os.PathLike)) or not str(run_dir).strip():
        raise ConfigError(f"build_runner(..., run_dir={run_dir!r}): run_dir must name a directory (a str or Path)")
    if (problem := directory_problem(Path(run_dir))) is not None:
        raise ConfigError(f"build_runner(..., run_dir={str(run_dir)!r}): {problem}")
    # a config straight from compose_config leaves the cadences (log.every, eval.every, ...) null, and is checked here
    # as train() checks it (steps=0 "completed", algo.batch_size=0 failed in a reshape, eval.episodes=0 at the first
    # evaluation)
    cfg = resolve_defaults(cfg)
    validate(cfg)
    # a learner built by hand may still not be the one the safety section asks for: costs are learned by Lagrangian
    # SAC alone, and filters need an off-policy learner
    learns_cost = hasattr(learner, "cost_critic")
    if bool(cfg.safety.passivity_aware) != learns_cost:
        raise ConfigError(f"safety.passivity_aware={bool(cfg.safety.passivity_aware)}, but the learner is {learner.name}, "
                          + ("which ignores the cost" if not learns_cost else "which learns from per-step costs")
                          + ": build the learner with robo_rl.build.build_learner(cfg, head) (Lagrangian SAC exactly "
                          "when passivity_aware is true)")
    if len(cfg.safety.filters) and learner.kind != "off_policy":
        raise ConfigError(f"safety.filters: filtering training actions needs an off-policy learner; {learner.name} learns "
                          "from the log-probability of its own unfiltered actions (put the chain on the export instead)")
    if LEARNERS[cfg.algo.name].kind != learner.kind:  # the runner reads the algo's keys (algo.batch_size, rollout_steps)
        same = learner.name if learner.name in LEARNERS else next(n for n, c in LEARNERS.items() if c.kind == learner.kind)
        raise ConfigError(f"algo={cfg.algo.name} configures an {LEARNERS[cfg.algo.name].kind.replace('_', '-')} learner, "
                          f"but the learner is {learner.name} ({learner.kind.replace('_', '-')}): compose the config "
                          f"with an algo= of its kind (e.g. algo={same})")
    runner_cls = OffPolicyRunner if learner.kind == "off_policy" else OnPolicyRunner
    runner = runner_cls(cfg, learner, env, eval_env, run_dir)
    lines = (plan_warnings(cfg, env, eval_env, learner) + learner_differences(cfg, learner)) if warn else []
    if lines:
        from robo_rl.metrics import console_handler

        console_handler()  # robo-rl's warning lines, as train() prints them (not Python's bare last-resort output)
    for line in lines:
        log.warning(line)
    return runner


def learner_differences(cfg: DictConfig, learner: Learner) -> list[str]:
    """A warning when a learner built by hand trains otherwise than ``cfg`` says (the ``algo.*`` settings it keeps as
    attributes, a packaged head other than ``policy=``): the run's checkpoints record ``cfg``, which then describes another run, and what loads
    them (``load_learner``) rebuilds ``cfg``'s learner."""
    differ = []
    for key, wanted in cfg.algo.items():
        have = getattr(learner, key, None)
        if wanted is None or key in RUNNER_KEYS or isinstance(have, bool) != isinstance(wanted, bool):
            continue
        same = (math.isclose(float(have), float(wanted), rel_tol=1e-9) if isinstance(have, (int, float))
                and isinstance(wanted, (int, float)) else have == wanted)
        if isinstance(have, (int, float, str)) and not same:
            differ.append(f"algo.{key}={wanted} (the learner's: {have})")
    from policies.heads import HEADS

    head = getattr(learner, "policy", None)
    head = getattr(head, "base", head)  # EXPO's and PA-RL's acting policy: the head they were given
    # (a head of one's own has no policy= to compose: README's way for it, its checkpoints loaded by hand)
    if isinstance(head, PolicyHead) and head.name in HEADS and head.name != cfg.policy.name:
        differ.append(f"policy={cfg.policy.name} (the learner's head: {head.name})")
    if not differ:
        return []
    return [f"build_runner: the learner trains otherwise than cfg says: {'; '.join(differ)}. The run's checkpoints record "
            "cfg, so they describe another run, and load_learner(cfg, ...) would rebuild cfg's learner: build the "
            "learner with build_learner(cfg, head), or compose cfg with the learner's settings"]
