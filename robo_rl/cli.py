"""The `robo-rl` command: `robo-rl train ...` (Hydra), `eval`, `export` and `deploy`."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

TOP_HELP = """\
usage: robo-rl <command> [key=value ...]

robo-rl: continuous-control reinforcement learning (SAC, TD3, PPO) on batched MuJoCo.
Simulator backends: env.backend=mujoco (batched, bit-identical to gymnasium), gymnasium (any id),
mjwarp (MuJoCo Warp, GPU), isaac (Isaac Lab / rsl_rl-style envs); auto picks mujoco where it can.

commands:
  train   train a policy; every option is a Hydra override
            robo-rl train                                   PPO on Hopper-v5, 1M steps (a few minutes on 2 cores)
            robo-rl train algo=ppo env=halfcheetah steps=1000000 seed=3 run_dir=runs/hc
            robo-rl train env.id=Walker2d-v5                any gymnasium task id
            robo-rl train -m seed=0,1,2                     several seeds (Hydra multirun)
            robo-rl train resume=runs/hc                    continue from the newest complete checkpoint
  eval    evaluate a trained run and write <run_dir>/eval.json
            robo-rl eval run_dir=runs/hc [episodes=10] [deterministic=true] [video=true]
  export  write the run's policy as ONNX (or TorchScript) + a JSON sidecar, checked against torch
            robo-rl export run_dir=runs/hc [format=onnx] [out_dir=runs/hc/export] [safety=passivity]
  deploy  run an export with onnxruntime (no torch) in a fixed-rate loop with safety filters and a
          watchdog, on the MuJoCo sim2sim robot (other timestep, latency, noise, physics)
            robo-rl deploy export=runs/hc/export [episodes=5] [sim2sim.action_latency=1]
  compare finished runs side by side, seeds grouped: final/best eval return mean ± std, a curve plot
            robo-rl compare runs=runs/sweep-sac-Hopper-v5-20261203-120000    (a -m sweep, or run dirs: runs=a,b,c)

Run `robo-rl <command> --help` for every option.
"""

EVAL_HELP = """\
usage: robo-rl eval run_dir=<dir> [key=value ...]

Evaluate a trained run's policy on its task and write <run_dir>/eval.json. The run's safety
filters act as in training; a task reporting a cost (info["cost"]) gets per-episode costs too.

keys:
  run_dir=<dir>          the run directory (required)
  episodes=10            number of complete episodes
  deterministic=true     act with the policy's deterministic action (false: sample)
  num_envs=10            env copies stepped together (at most episodes: one episode each)
  seed=12345             seed of the evaluation envs
  checkpoint=<dir>       a specific checkpoint directory (default: the newest complete one)
  device=cpu             cpu or cuda
  video=false            also write <run_dir>/videos/eval-step<N>.mp4 (headless: EGL or OSMesa)
  video_episodes=1       episodes of env copy 0 in the video
  demos_out=<file.npz>   also save the evaluated episodes' transitions as demonstrations, to warm-start
                         another run with `robo-rl train demos.path=<file.npz>` (e.g. a generative head)
"""

EXPORT_HELP = """\
usage: robo-rl export run_dir=<dir> [key=value ...]

Export a trained run's acting policy (any head; EXPO/PA-RL export the critic's choice among their
candidates) as one self-contained file plus <out_dir>/policy.json (spaces, bounds, control rate,
normalizer, safety filters, sha256). The graph includes observation normalization and, for
diffusion/flow heads, the configured sampling steps unrolled with the initial noise as an input.
Before anything is written the file is checked (onnx.checker) and compared with the torch policy
on real and random observations (max abs difference <= 1e-5).

keys:
  run_dir=<dir>          the run directory (required)
  format=onnx            onnx or torchscript
  out_dir=<dir>          where to write (default <run_dir>/export)
  checkpoint=<dir>       a specific checkpoint directory (default: the newest complete one)
  safety=<name|path>     filter chain stored in the sidecar: configs/safety/<name>.yaml or a YAML
                         file with a 'filters:' list (default: the run's own safety.filters)
"""

DEPLOY_HELP = """\
usage: robo-rl deploy export=<dir> [key=value ...]

Run an exported ONNX policy with onnxruntime (one CPU thread, no torch) in a fixed-rate control loop
with absolute deadlines, the sidecar's safety filters and a watchdog (stale observation, inference
overrun, non-finite values -> fallback command and a logged event). The robot is the MuJoCo
sim2sim adapter: the task simulated with another timestep, action latency, sensor noise and
randomized physics. Writes <export>/deploy.json (returns, events, latency percentiles).

keys:
  export=<dir>                     the export directory (policy.onnx + policy.json; required)
  episodes=null                    finished episodes to run (5 when steps= is not given)
  steps=null                       a fixed number of control steps (with episodes=: whichever comes first)
  realtime=false                   true: sleep to the control rate (a real robot); false: as fast as possible
  rate_hz=null                     control rate in Hz, > 0 (default: the sidecar's)
  safety=null                      filter chain: configs/safety/<name>.yaml or a YAML path (default: the sidecar's)
  task=null                        the gymnasium id to simulate (default: the sidecar's task)
  sim2sim.timestep=null            physics timestep (the control period is kept: frame_skip adapts)
  sim2sim.action_latency=0         control steps between computing and applying a command
  sim2sim.observation_noise=0.0    std of Gaussian noise added to observations
  sim2sim.physics=null             e.g. "{mass_scale:[0.8,1.2],friction_scale:[0.7,1.3],damping_scale:[0.8,1.2]}"
  sim2sim.max_episode_steps=null   episode time limit (default: the run's env.max_episode_steps, else the task's)
  sim2sim.seed=0
  watchdog.max_observation_age=null   seconds before an observation counts as stale (default 2 periods)
  watchdog.max_inference_time=null   seconds of inference before the fallback is sent instead (default
                                     half a period with realtime=true; not enforced in simulated time)
  out=null                         report path (default <export>/deploy.json); its directory must exist
"""


COMPARE_HELP = """\
usage: robo-rl compare runs=<dir>[,<dir>...] [key=value ...]

Put finished runs side by side. Each runs= entry is a run directory or a directory holding runs (a
`robo-rl train -m ...` sweep). Runs whose configs differ only in the seed form one group; for each
group the table gives the final and best evaluation return (mean ± std over seeds, and each seed's),
env steps, wall time and steps/s, and the runs' `robo-rl eval` results where eval.json exists. Reads
config.yaml, summary.json, metrics.csv and eval.json; trains nothing.
Writes compare.md (the table), compare.json (all numbers, each run's path) and compare.png (each
group's mean curve over seeds with the min-max band).

keys:
  runs=<dir>[,<dir>...]  run directories or sweep directories (required; also runs=[a,b]; patterns
                         such as 'runs=runs/sweep-*' are expanded)
  group_by=null          config keys that define a group instead, e.g. group_by=algo.name or
                         group_by=[algo.name,env.id] (runs agreeing on them are pooled)
  curve=eval             the plotted curve: eval (evaluation return) or rollout (training episodes)
  out_dir=null           where to write (default: the runs= directory when there is one, else
                         runs/compare-<date-time>)
"""


@dataclass
class CompareCommandConfig:
    runs: Any = "???"
    group_by: Any = None
    curve: str = "eval"
    out_dir: Optional[str] = None


@dataclass
class ExportCommandConfig:
    run_dir: str = "???"
    format: str = "onnx"
    out_dir: Optional[str] = None
    checkpoint: Optional[str] = None
    safety: Optional[str] = None


@dataclass
class Sim2SimOptions:
    timestep: Optional[float] = None
    action_latency: int = 0
    observation_noise: float = 0.0
    physics: Any = None  # checked by sim2real.robots (the message names the key and the accepted form)
    seed: int = 0
    max_episode_steps: Optional[int] = None  # default: the run's (sidecar), else the task's registration


@dataclass
class WatchdogOptions:
    max_observation_age: Optional[float] = None
    max_inference_time: Optional[float] = None


@dataclass
class DeployCommandConfig:
    export: str = "???"
    episodes: Optional[int] = None  # 5 unless steps= is given
    steps: Optional[int] = None
    realtime: bool = False
    rate_hz: Optional[float] = None
    safety: Optional[str] = None
    task: Optional[str] = None
    sim2sim: Sim2SimOptions = field(default_factory=Sim2SimOptions)
    watchdog: WatchdogOptions = field(default_factory=WatchdogOptions)
    out: Optional[str] = None


log = logging.getLogger("robo_rl")

# exit codes: 1 training failed (NaN), 2 bad configuration or input, 128+signal interrupted
EXIT_FAILED, EXIT_USAGE = 1, 2
EXIT_SIGINT, EXIT_SIGTERM = 128 + 2, 128 + 15  # what an interrupted run exits with (128 + the signal)


def _error(message: str, code: int) -> int:
    print(f"robo-rl: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(TOP_HELP)
        return 0
    command, rest = argv[0], argv[1:]
    from envs.mujoco_log import route_mujoco_warnings
    from envs.rendering import headless_gl_default
    from robo_rl.perf import tune_malloc

    headless_gl_default()  # before anything imports MuJoCo
    try:
        route_mujoco_warnings()  # the first import of MuJoCo
    except RuntimeError as exc:  # MuJoCo refuses to import with an unknown MUJOCO_GL
        if "MUJOCO_GL" not in str(exc):
            raise
        return _error(f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}: MuJoCo does not know this platform ({exc}); set egl or "
                      "osmesa (headless), glfw or glx (with a display), or unset it", EXIT_USAGE)
    tune_malloc()
    if command == "train":
        return train_main(rest)
    if command == "eval":
        return eval_main(rest)
    if command == "export":
        return export_main(rest)
    if command == "deploy":
        return deploy_main(rest)
    if command == "compare":
        return compare_main(rest)
    if command in ("--version", "version"):
        from importlib.metadata import version

        print(f"robo-rl {version('robo-rl')}")
        return 0
    print(TOP_HELP, file=sys.stderr)
    return _error(f"unknown command {command!r} (expected train, eval, export, deploy or compare)", EXIT_USAGE)


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    def name(env_id):  # type: ignore[no-untyped-def]
        # one directory however the id is spelled: robo_rl/TwoGoals-v0, my_robots.envs:Arm-v0
        return str(env_id).replace("/", "-").replace(":", "-")

    def run_dir(given, resume, algo, env_id, seed, now):  # type: ignore[no-untyped-def]
        if given not in (None, "", "None"):
            return str(given)
        if resume not in (None, "", "None"):
            return str(resume)
        return f"runs/{algo}-{name(env_id)}-s{seed}-{now}"

    def sweep_dir(given, algo, env_id, now):  # type: ignore[no-untyped-def]
        if given not in (None, "", "None"):
            return str(given)
        # every job of a sweep resolves this with its own config: a swept algo or task is named by all its
        # values (sac+td3), so that the jobs share one directory
        swept = _swept_on_command_line()
        algo = "+".join(swept["algo"]) if "algo" in swept else algo
        env_values = swept.get("env.id") or swept.get("env")
        env_label = "+".join(name(v) for v in env_values) if env_values else name(env_id)
        return f"runs/sweep-{algo}-{env_label}-{now}"

    def sweep_subdir(task_overrides, job_num):  # type: ignore[no-untyped-def]
        # name a multirun job by the keys that are swept (seed=0,1,2 -> "seed=1"), not by every override
        swept = _swept_on_command_line()
        parts = [o for o in task_overrides if _override_key(o) in swept]
        return ",".join(parts) if parts else f"job{job_num}"

    OmegaConf.register_new_resolver("robo_rl_run_dir", run_dir, replace=True)
    OmegaConf.register_new_resolver("robo_rl_sweep_dir", sweep_dir, replace=True)
    OmegaConf.register_new_resolver("robo_rl_sweep_subdir", sweep_subdir, replace=True)


_TRAIN_ARGS: list[str] = []  # the overrides of this `robo-rl train` command, as the user typed them
GROUPS = ("algo", "env", "policy", "safety", "randomize")  # config groups (choosing one replaces a subtree)


def _swept_on_command_line() -> dict[str, list[str]]:
    """The swept keys of this command and their values: ``algo=sac,td3`` -> {"algo": ["sac", "td3"]}."""
    out: dict[str, list[str]] = {}
    for a in _TRAIN_ARGS:
        if "=" in a and _is_sweep(a.split("=", 1)[1]):
            values = _sweep_values(a)
            out[_override_key(a)] = [v.split("=", 1)[1] for v in values] if values else [a.split("=", 1)[1]]
    return out


def _for_hydra_multirun(args: Sequence[str]) -> list[str]:
    """``-m`` overrides as Hydra can start them. Hydra composes one sweep-level config before the jobs, with
    the default of every swept config group: ``-m algo=sac,td3 algo.learning_starts=100`` fails there
    (PPO, the default, has no learning_starts) although every job has the key. An override inside a
    swept group (or in the head group, when the swept algorithms pick the head) is passed as
    ``++key=value`` (set, or add to that sweep-level config): the same value in every job, whose configs
    were all checked before (``_sweep_problem``)."""
    swept_groups = {k for k in _swept_on_command_line() if k in GROUPS}
    if "algo" in swept_groups and not any(_override_key(a) == "policy" for a in args if "=" in a):
        swept_groups.add("policy")  # each algorithm picks its own head: -m algo=expo,parl policy.steps=2
    out = []
    for a in args:
        key = _override_key(a) if "=" in a else ""
        plain = "=" in a and not a.startswith(("+", "~")) and not _is_sweep(a.split("=", 1)[1])
        out.append(f"++{a}" if plain and key.split(".", 1)[0] in swept_groups and "." in key else a)
    return out


def _swept_values_by_job() -> list[str]:
    """The swept values of each job of this command's sweep (``seed=1 algo=td3``), in the order Hydra's basic
    sweeper runs them: the product of the overrides in command-line order (a key given twice at its first
    place, with its last value)."""
    import itertools

    by_key: dict[str, list[str]] = {}
    for a in _TRAIN_ARGS:
        if "=" in a and not a.startswith("-"):
            values = _sweep_values(a) if _is_sweep(a.split("=", 1)[1]) else [a]
            by_key[a.split("=", 1)[0]] = values or [a]
    jobs = list(itertools.product(*by_key.values()))
    swept = [len(v) > 1 for v in by_key.values()]
    return [" ".join(o for o, s in zip(job, swept) if s) for job in jobs]


def _is_sweep(value: str) -> bool:
    """Whether a command-line value is a Hydra sweep (a,b / range(...) / choice(...) / glob(...))."""
    if value.startswith(("range(", "choice(", "glob(", "interval(")):
        return True
    depth = 0
    for ch in value:
        depth += ch in "[{(" and 1 or 0
        depth -= ch in "]})" and 1 or 0
        if ch == "," and depth == 0:
            return True
    return False


def train_main(args: Sequence[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from robo_rl.config import integer_keys, integral_literals, register_schemas

    args = integral_literals(args, integer_keys())  # steps=1e6
    if any(a in ("--help", "-h", "--hydra-help") for a in args):  # help on one config: a sweep's values dropped
        args = [a for a in args if a not in ("-m", "--multirun")
                and not ("=" in a and not a.startswith("-") and _is_sweep(a.split("=", 1)[1]))]
    register_schemas()
    _register_resolvers()
    problem = _composition_problem(args) or _run_dir_problem(args)
    if problem is not None:
        return _error(problem, EXIT_USAGE)
    config_dir = str(Path(__file__).resolve().parent / "configs")
    exit_code = 0
    sweep_dirs: list[str] = []  # a multirun's directory, once per job
    failed_jobs: list[str] = []

    @hydra.main(version_base=None, config_path=config_dir, config_name="config")
    def _run(cfg: DictConfig) -> None:
        nonlocal exit_code
        hc = HydraConfig.get()
        run_dir = Path(hc.runtime.output_dir)
        code = run_training(cfg, run_dir, list(hc.overrides.task))
        if code and hc.mode.name == "MULTIRUN" and code in (EXIT_SIGINT, EXIT_SIGTERM):
            jobs = _swept_values_by_job()
            unstarted = jobs[hc.job.num + 1:]
            log.warning("sweep: stopped in job %d of %d (%s)%s", hc.job.num + 1, len(jobs), jobs[hc.job.num],
                        f"; not started: {'; '.join(unstarted)}" if unstarted else "")
        if code and (hc.mode.name == "RUN" or code in (EXIT_SIGINT, EXIT_SIGTERM)):
            raise SystemExit(code)  # an interrupted sweep stops: Ctrl-C does not start the next job
        if hc.mode.name == "MULTIRUN":
            sweep_dirs.append(str(hc.sweep.dir))
            if code:
                failed_jobs.append(" ".join(hc.overrides.task))
        exit_code = exit_code or code  # a sweep exits with its first failed job's code

    _TRAIN_ARGS[:] = list(args)
    multirun = any(a in ("-m", "--multirun") for a in args)
    sys.argv = ["robo-rl train", *(_for_hydra_multirun(args) if multirun else args)]
    _run()
    if sweep_dirs:
        where = sweep_dirs[0] if len(set(sweep_dirs)) == 1 else ",".join(dict.fromkeys(sweep_dirs))
        log.info("sweep: %d job(s) in %s; side by side: robo-rl compare runs=%s", len(sweep_dirs), where, where)
        if failed_jobs:
            log.error("sweep: %d of %d job(s) failed: %s", len(failed_jobs), len(sweep_dirs), "; ".join(failed_jobs))
    return exit_code


def _run_dir_problem(args: Sequence[str]) -> str | None:
    """A ``run_dir=`` or ``resume=`` (or the default ``runs/``) that is, or lies under, a regular file: Hydra
    would fail creating it with a traceback before any of our checks run."""
    given = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+~") in ("run_dir", "resume"):
            given += [(key.lstrip("+~"), v.strip()) for v in value.split(",") if v.strip() not in ("", "null", "None")]
    for label, value in [(f"{k}={v}", v) for k, v in given] or [("runs/ (where runs go without run_dir=)", "runs")]:
        path = Path(value)
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker == path:
            return f"{label}: that is a file, not a directory; choose a directory"
        if blocker is not None:
            return f"{label}: {blocker} is a file, so no directory can be made under it; choose another path"
    return None


def _composition_problem(args: Sequence[str]) -> str | None:
    """What is wrong with ``robo-rl train``'s overrides as a config, or None.

    Composes the config before Hydra's own run does, so that an unknown key, a value of the wrong
    type or a missing config-group option exits with EXIT_USAGE and a short message (Hydra would print
    its report and exit 1, the code for a failed run), and a mistyped key gets the closest valid ones.
    Under ``-m`` every job of the sweep is composed and validated too (``-m steps=1000,0`` would
    otherwise train the first job before the second one failed; ``-m algo=sac,ppo algo.tau=0.01``
    fails for ppo only). Hydra's flags and ``hydra.*`` overrides are left to Hydra.
    """
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        # --help, --cfg, --info, ...: Hydra's business, but on a config these overrides can make (`algo=foo
        # --help` would be Hydra's traceback); sweeps are not composed here
        plain = [a for a in args if "=" in a and not a.startswith("-") and not _override_key(a).startswith("hydra")
                 and not _is_sweep(a.split("=", 1)[1])]
        return _overrides_problem(plain)

    plain: list[str] = []  # the overrides, each sweep at its first value
    sweeps: list[tuple[int, list[str]]] = []  # (position in plain, every value of that sweep as key=value)
    for a in args:
        if "=" in a and not _override_key(a).startswith("hydra"):
            values = _sweep_values(a) if _is_sweep(a.split("=", 1)[1]) else [a]
            if values:  # None: Hydra's own run reports a sweep it cannot parse
                if len(values) > 1:
                    sweeps.append((len(plain), values))
                plain.append(values[0])
    problem = _overrides_problem(plain)
    if problem is not None or not any(a in ("-m", "--multirun") for a in args):
        return problem
    return _sweep_problem(plain, sweeps)


# At most this many configs of a sweep are composed before it starts (~0.1 s each). A larger sweep is
# checked one swept value at a time (every value of every swept key once, the other sweeps at their first
# value), and if that is still too many, its first MAX_CHECKED_JOBS such configs; the rest are checked as
# each job starts.
MAX_CHECKED_JOBS = 256


def _sweep_problem(plain: list[str], sweeps: list[tuple[int, list[str]]]) -> str | None:
    """Compose and validate every job of a multirun before Hydra starts the first one."""
    import itertools
    import math

    from hydra import compose, initialize_config_dir

    from robo_rl.build import check_head_and_learner
    from robo_rl.config import ConfigError, register_schemas, resolve_defaults, validate

    positions = [i for i, _ in sweeps]
    total = math.prod(len(v) for _, v in sweeps)
    if total <= MAX_CHECKED_JOBS:
        jobs = list(itertools.product(*(v for _, v in sweeps)))
    else:
        jobs = [tuple(v[0] for _, v in sweeps)]
        for k, (_, values) in enumerate(sweeps):
            jobs += [tuple(v if j == k else w[0] for j, (_, w) in enumerate(sweeps)) for v in values[1:]]
        how = "each swept value once" if len(jobs) <= MAX_CHECKED_JOBS else "the first swept values"
        jobs = jobs[:MAX_CHECKED_JOBS]
        print(f"robo-rl: checking {len(jobs)} configs of a {total:,}-job sweep before it starts ({how}); "
              "the others are checked as each job starts", file=sys.stderr)
    register_schemas()
    _register_resolvers()
    failed: tuple[tuple[str, ...], list[str], Exception] | None = None
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent / "configs"), version_base=None):
        for job in jobs:
            overrides = list(plain)
            for i, value in zip(positions, job):
                overrides[i] = value
            try:
                cfg = compose(config_name="config", overrides=overrides)
                if not cfg.resume:  # a resumed job runs its saved config, validated when it starts
                    resolved = resolve_defaults(cfg)
                    validate(resolved)
                    check_head_and_learner(resolved)  # e.g. algo=td3 policy=gaussian, found by the learner
            except Exception as exc:  # noqa: BLE001 - described below (outside this Hydra context), or re-raised
                failed = (job, overrides, exc)
                break
    if failed is None:
        return None
    job, overrides, exc = failed
    message = f"{exc} (no job was started)" if isinstance(exc, ConfigError) else _composition_message(exc, overrides)
    if message is None:
        raise exc
    return f"sweep job {' '.join(job)}: {message}" if job else message


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _sweep_values(override: str) -> list[str] | None:
    """``seed=0,1,2`` -> ``[seed=0, seed=1, seed=2]``; None if Hydra cannot expand it here (e.g. glob)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        (parsed,) = OverridesParser.create().parse_overrides([override])
        values = list(parsed.sweep_string_iterator())
    except Exception:  # noqa: BLE001 - Hydra's own run reports a malformed sweep
        return None
    prefix = f"{override[:len(override) - len(override.lstrip('+~'))]}{_override_key(override)}="
    return [prefix + v for v in values] or None


def _overrides_problem(overrides: list[str]) -> str | None:
    """Compose ``overrides`` (no sweeps): None if they make a config, else what is wrong."""
    from robo_rl.train import compose_config

    try:
        compose_config(overrides)
        return None
    except Exception as exc:  # noqa: BLE001 - described below, or left to Hydra's own report
        message = _composition_message(exc, overrides)
        if message is None:
            raise
        return message


def _composition_message(exc: Exception, overrides: list[str]) -> str | None:
    """One line for a failed composition of ``overrides``; None for an error that is not about them."""
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from robo_rl.train import compose_config

    if isinstance(exc, MissingConfigException):  # algo=dqn: Hydra lists the available options
        message = " ".join(str(exc).split("Config search path")[0].split())
        env = next((o.split("=", 1)[1] for o in overrides if o.startswith("env=")), "")
        if f"'env/{env}'" in message and ("-v" in env or ":" in env):  # a gymnasium id where a config name goes
            message += f"; for a gymnasium id use env.id={env}"
        return message
    if isinstance(exc, ConfigCompositionException):
        cause = exc.__cause__
        if not isinstance(cause, OmegaConfBaseException):
            return " ".join(str(exc).split())
        first = str(cause).splitlines()[0]
        if not isinstance(cause, (ConfigKeyError, ConfigAttributeError)) or not cause.full_key:
            return f"{first} ({' '.join(str(exc).split())}; see robo-rl train --help)"
        full_key = str(cause.full_key)
        try:  # the keys that do exist, in the config these overrides select
            root = compose_config([a for a in overrides if _override_key(a) != full_key])
        except Exception:  # noqa: BLE001 - a second problem: report the first one plainly
            root = None
        return _unknown_key(full_key, root, "train")
    if isinstance(exc, OmegaConfBaseException):
        return f"{str(exc).splitlines()[0]} (see robo-rl train --help)"
    return None


def _unknown_key(full_key: str, root: Any, command: str) -> str:
    """The message for an unknown dotted key: the closest keys next to it in ``root`` (a DictConfig:
    "did you mean ...?"), or all of them when none is close; just the key if ``root`` is None."""
    import difflib

    from omegaconf import DictConfig, OmegaConf

    parent, _, name = full_key.rpartition(".")
    node = OmegaConf.select(root, parent) if parent and root is not None else root
    hint = ""
    if isinstance(node, DictConfig):
        keys = [str(k) for k in node.keys()]
        close = difflib.get_close_matches(name, keys, n=3, cutoff=0.6)
        prefix = f"{parent}." if parent else ""
        hint = f"; did you mean {' or '.join(prefix + c for c in close)}?" if close else f"; the keys there are {', '.join(keys)}"
    see = f"robo-rl {command} --help"
    group = full_key.split(".", 1)[0]
    chosen = OmegaConf.select(root, f"{group}.name") if isinstance(root, DictConfig) and group in ("algo", "policy") else None
    if command == "train" and chosen is not None:  # the help shows the default learner's keys: point at this one's
        see = f"robo-rl train {group}={chosen} --help"
    return f"unknown key {full_key!r}{hint} (see {see})"


def run_training(cfg, run_dir: Path, overrides: list[str]) -> int:  # type: ignore[no-untyped-def]
    """Run one training job, turning known failures into a message and an exit code."""
    from envs.base import MissingDependency
    from robo_rl.checkpoint import CheckpointError
    from robo_rl.config import ConfigError
    from robo_rl.runners.base import Interrupted, NonFiniteError, RunWriteError
    from robo_rl.runs import LOCK_FILE
    from robo_rl.train import train

    existed = run_dir.exists() and any(run_dir.iterdir())

    def leave_nothing() -> None:
        """A run that failed before writing its config: remove the directory Hydra (and the lock) made."""
        if not existed and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {LOCK_FILE}:
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
            run_dir.rmdir()

    try:
        train(cfg, run_dir, overrides)
        return 0
    except Interrupted as exc:  # train() logged the resume command
        return 128 + exc.signum
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the loop began: no new checkpoint
        leave_nothing()
        return _error("aborted by Ctrl-C" + (f"; train.log and summary.json in {run_dir} say where it stopped"
                                             if (run_dir / "summary.json").exists() else ""), EXIT_SIGINT)
    except (NonFiniteError, RunWriteError) as exc:
        return _error(str(exc), EXIT_FAILED)
    except FloatingPointError as exc:  # pretraining on demonstrations diverged (before config.yaml was written)
        leave_nothing()
        return _error(str(exc), EXIT_FAILED)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError, MissingDependency) as exc:
        leave_nothing()
        return _error(str(exc), EXIT_USAGE)
    except (MemoryError, RuntimeError) as exc:
        reason = out_of_memory(exc)
        if reason is None:
            raise
        leave_nothing()
        return _error(f"out of memory: {reason}; lower env.num_envs, algo.batch_size or the buffer sizes "
                      "(algo.buffer_size, algo.rollout_steps)", EXIT_FAILED)


def out_of_memory(exc: BaseException) -> str | None:
    """The allocator's one-line reason when ``exc`` is a failed allocation (numpy's MemoryError, torch's
    RuntimeError), else None."""
    text = str(exc).strip()
    if isinstance(exc, MemoryError):
        return text.splitlines()[0] if text else "an allocation failed"
    if "can't allocate memory" in text or "out of memory" in text.lower():
        at = text.find("you tried to allocate")
        return text[at:].split(".")[0] if at >= 0 else text.splitlines()[0]
    return None


def eval_main(args: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(EVAL_HELP)
        return 0
    from robo_rl.config import EvalCommandConfig

    try:
        opts = _parse(args, EvalCommandConfig, "eval")
    except ValueError as exc:
        return _error(str(exc), EXIT_USAGE)
    run_dir = Path(opts.run_dir)
    if opts.episodes < 1 or opts.num_envs < 1 or opts.video_episodes < 1:
        return _error("episodes, num_envs and video_episodes must be >= 1", EXIT_USAGE)
    if not opts.video and any(_override_key(a) == "video_episodes" for a in args):
        return _error(f"video_episodes={opts.video_episodes} has no effect without a video: add video=true to film "
                      "the episodes, or drop video_episodes", EXIT_USAGE)
    try:
        result = evaluate_run(run_dir, opts)
    except Exception as exc:
        from envs.base import MissingDependency
        from robo_rl.checkpoint import CheckpointError

        from envs.rendering import RenderingUnavailable

        if isinstance(exc, (CheckpointError, FileNotFoundError, ValueError, MissingDependency)):
            return _error(str(exc), EXIT_USAGE)
        if isinstance(exc, RenderingUnavailable):  # video=true on a machine without a usable OpenGL platform
            return _error(f"video=true: {exc}", EXIT_FAILED)
        if isinstance(exc, (FloatingPointError, EvalNotSaved)):  # a non-finite observation or action; a full disk
            return _error(str(exc), EXIT_FAILED)
        raise
    print(
        f"{result['algo']} on {result['env']} (checkpoint step {result['checkpoint_step']:,}): "
        f"return {result['return_mean']:.1f} ± {result['return_std']:.1f} over {result['episodes']} episode{'s' if result['episodes'] != 1 else ''} "
        f"({'deterministic' if result['deterministic'] else 'stochastic'})"
        + (f", {result['cost_key']} {result['cost_mean']:.3g} per episode" if "cost_mean" in result else "")
        + f"; wrote {run_dir / 'eval.json'}"
        + (f" and {result['video']} ({result['video_frames']} frames)" if "video" in result else "")
        + (f"; demonstrations: {result['demos_transitions']:,} transitions in {result['demos_out']}"
           if "demos_out" in result else "")
    )
    return 0


def _parse(args: Sequence[str], schema: type, command: str) -> Any:
    """key=value arguments checked against a dataclass: unknown keys and wrong types fail with the key named."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from robo_rl.config import integer_keys, integral_literals

    args = integral_literals(args, integer_keys(schema))  # episodes=1e2
    bad = [a for a in args if "=" not in a]
    if bad:
        raise ValueError(f"expected key=value arguments, got {' '.join(bad)} (see robo-rl {command} --help)")
    try:
        opts = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(list(args)))
        for key in opts.keys():
            if OmegaConf.is_missing(opts, key):
                raise ValueError(f"{key}=<dir> is required (see robo-rl {command} --help)")
        return opts
    except (ConfigKeyError, ConfigAttributeError) as exc:
        full_key = str(exc.full_key or exc.key or "")
        raise ValueError(_unknown_key(full_key, OmegaConf.structured(schema), command)) from None
    except OmegaConfBaseException as exc:
        key = f"{exc.full_key}: " if getattr(exc, "full_key", None) else ""  # steps=abc names steps
        raise ValueError(f"{key}{str(exc).splitlines()[0]} (see robo-rl {command} --help)") from None


def export_main(args: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(EXPORT_HELP)
        return 0
    from envs.base import MissingDependency
    from robo_rl.checkpoint import CheckpointError

    try:
        opts = _parse(args, ExportCommandConfig, "export")
        from robo_rl.exporting import export_run
        from sim2real.export import check_out_dir

        if opts.out_dir is not None:
            check_out_dir(opts.out_dir)  # before the run is loaded (export_policy checks the default too)
        sidecar = export_run(opts.run_dir, opts.out_dir, opts.format, opts.checkpoint, opts.safety)
    except (CheckpointError, FileNotFoundError, ValueError, RuntimeError, MissingDependency) as exc:
        return _error(str(exc), EXIT_USAGE)
    out = Path(opts.out_dir) if opts.out_dir else Path(opts.run_dir) / "export"
    noise = sidecar["noise"]
    checked = "onnx" if str(sidecar["model_file"]).endswith(".onnx") else "torchscript"
    print(f"exported {sidecar['policy']} policy of {sidecar['algo']} on {sidecar['task']} (step {sidecar['source']['step']:,}) "
          f"to {out / sidecar['model_file']} [{sidecar['exporter']}]; "
          f"inputs obs[{sidecar['observation']['dim']}]" + (f" + noise[{noise['dim']}]" if noise else "")
          + f"; max |{checked} - torch| = {sidecar['checked']['max_abs_error']:.1e} on {sidecar['checked']['observations']} "
          f"observations; {len(sidecar['safety']['filters'])} safety filter(s); sidecar {out / 'policy.json'}")
    return 0


def deploy_main(args: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(DEPLOY_HELP)
        return 0
    from omegaconf import OmegaConf

    try:
        opts = _parse(args, DeployCommandConfig, "deploy")
        safety = None
        if opts.safety is not None:
            from robo_rl.exporting import load_safety_spec

            if opts.safety in ("", "run"):  # export's "the run's own filters" would be none here, not the sidecar's
                raise ValueError(f"safety={opts.safety}: deploy has no run to take filters from; leave safety unset "
                                 "for the sidecar's chain, or give a configs/safety name or a YAML path")
            safety = load_safety_spec(opts.safety)["filters"]
        from sim2real.deploy import deploy

        sim2sim = OmegaConf.to_container(opts.sim2sim, resolve=True)
        episodes = opts.episodes if opts.episodes is not None else (None if opts.steps is not None else 5)
        out = Path(opts.out) if opts.out else Path(opts.export) / "deploy.json"
        deploy(opts.export, episodes=episodes, steps=opts.steps, realtime=bool(opts.realtime),
               rate_hz=opts.rate_hz, safety=safety, task=opts.task, sim2sim=sim2sim,
               watchdog=OmegaConf.to_container(opts.watchdog, resolve=True), out=out)  # out: checked before the run
    except (FileNotFoundError, ValueError) as exc:  # ExportError is a ValueError
        return _error(str(exc), EXIT_USAGE)
    print(f"wrote {out}")
    return 0


def _listed(value: Any) -> list[str]:
    """A key given as a,b or [a,b] (or one value) as a list of non-empty strings."""
    from omegaconf import ListConfig

    items = list(value) if isinstance(value, (list, tuple, ListConfig)) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def compare_main(args: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(COMPARE_HELP)
        return 0
    import errno
    import glob
    import time

    from robo_rl.compare import compare, table, write

    try:
        opts = _parse(args, CompareCommandConfig, "compare")
        runs = _listed(opts.runs) if opts.runs is not None else []
        if not runs:
            raise ValueError("runs= names no run: give run directories or directories holding runs, e.g. "
                             "runs=runs/sweep-sac-Hopper-v5-<time> (see robo-rl compare --help)")
        group_by = _listed(opts.group_by) if opts.group_by is not None else None
        if opts.out_dir:
            out = Path(opts.out_dir)
        elif len(runs) == 1 and not glob.has_magic(runs[0]):  # one directory (a sweep's): the outputs go in it
            out = Path(runs[0])
        elif len(runs) == 1 and len(matched := glob.glob(runs[0])) == 1 and Path(matched[0]).is_dir():
            out = Path(matched[0])  # a pattern matching one directory, not a directory named after the pattern
        else:
            out = Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
        from sim2real.export import check_out_dir

        holds = "compare writes compare.json, compare.md and compare.png into it"
        if opts.out_dir:  # before any run is read (a runs= directory is checked as a run directory)
            check_out_dir(out, holds=holds)
        elif out.is_dir() or not out.exists() and out.parent == Path("runs"):  # the default place: also checked now
            try:
                check_out_dir(out, holds=holds)
            except ValueError as exc:
                raise ValueError(f"out_dir is unset, so the outputs go to {out}, but "
                                 f"{str(exc).split(': ', 1)[-1]}".replace("choose another out_dir",
                                                                          "give out_dir=<dir>")) from None
        result = compare(runs, group_by, opts.curve)
    except (FileNotFoundError, ValueError) as exc:
        return _error(str(exc), EXIT_USAGE)
    for warning in result["warnings"]:  # read as not measured, never in silence
        print(f"robo-rl: warning: {warning}", file=sys.stderr)
    try:
        written = write(result, out)
    except ValueError as exc:
        return _error(str(exc), EXIT_FAILED)
    except OSError as exc:  # the place cannot hold the outputs (no such place, permissions), or a full disk
        where = f"out_dir={opts.out_dir}" if opts.out_dir else f"{out} (the default, out_dir unset)"
        reason = exc.strerror or str(exc)
        if isinstance(exc, (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)) \
                or exc.errno == errno.EROFS:
            return _error(f"{where}: cannot write compare.json there ({reason}); choose another out_dir", EXIT_USAGE)
        return _error(f"{where}: writing the comparison failed ({reason})", EXIT_FAILED)
    print(table(result))
    curves = [g["curve"] for g in result["groups"] if g["curve"]]
    if opts.curve == "eval" and curves and all(len(c["step"]) < 2 for c in curves):
        print("\nnote: each run has one evaluation, so the plot has one point per group; "
              "curve=rollout plots the training episodes' returns instead")
    print(f"\n{result['runs']} runs in {len(result['groups'])} group(s); wrote "
          + ", ".join(str(p) for p in written.values()))
    return 0


def evaluate_run(run_dir: Path, opts) -> dict:  # type: ignore[no-untyped-def]
    from omegaconf import open_dict

    from robo_rl.build import build_env
    from robo_rl.checkpoint import verify_checkpoint
    from robo_rl.evaluation import evaluate
    from robo_rl.runners.safety import SafetyLayer, safety_settings
    from robo_rl.config import check_device
    from robo_rl.runs import load_policy, load_run_config, resolve_checkpoint

    check_device(opts.device)  # before anything loads: train's config.validate does the same
    if opts.demos_out is not None:  # not after the whole evaluation
        from robo_rl.demos import check_demos_out

        check_demos_out(opts.demos_out)
    cfg = load_run_config(run_dir)
    _check_writable(run_dir / "eval.json")  # not after the episodes have run
    with open_dict(cfg):
        cfg.device = opts.device
    if opts.video:
        from envs.rendering import require_pyav

        require_pyav()  # before the episodes run, not after
    ckpt = resolve_checkpoint(run_dir, opts.checkpoint)
    manifest = verify_checkpoint(ckpt)
    raw = build_env(cfg, num_envs=min(int(opts.num_envs), int(opts.episodes)), vectorization="sync", randomize=False,
                    render=bool(opts.video))
    safety = safety_settings(cfg)  # the run's own filters act here as in its training-time evaluations
    env = SafetyLayer(raw, safety.filters, safety.cost_key, keep_episode_costs=True)
    try:
        policy = load_policy(cfg, env, ckpt, opts.device)
        result = evaluate(policy, env, int(opts.episodes), bool(opts.deterministic), seed=int(opts.seed),
                          record_episodes=int(opts.video_episodes) if opts.video else 0,
                          record_transitions=opts.demos_out is not None)
        costs = env.counted_costs(result["env_index"])
        if costs is not None:  # the task reports a cost (info[safety.cost_key]): per-episode sums
            result["costs"], result["cost_mean"] = costs, sum(costs) / len(costs)
            result["cost_key"] = str(safety.cost_key)
    finally:
        env.close()
    if opts.video:
        from envs.rendering import write_mp4

        path = (run_dir / "videos" / f"eval-step{int(manifest['step'])}.mp4").resolve()
        frames = result.pop("frames")
        result["video"] = str(path)
        result["video_frames"] = write_mp4(path, frames, fps=1.0 / env.dt if env.dt else 30.0)
    if opts.demos_out is not None:
        from robo_rl.demos import save_demos

        transitions = result.pop("transitions")
        result["demos_out"] = str(save_demos(opts.demos_out, **transitions))
        result["demos_transitions"] = int(transitions["obs"].shape[0])
    result.update(
        algo=cfg.algo.name, env=env.task_id, run_dir=str(run_dir), checkpoint=str(ckpt),
        checkpoint_step=int(manifest["step"]), seed=int(opts.seed),
    )
    try:
        (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    except OSError as exc:  # e.g. a full disk: the evaluation's numbers are still said
        raise EvalNotSaved(f"return {result['return_mean']:.1f} ± {result['return_std']:.1f} over "
                           f"{result['episodes']} episodes, but {run_dir / 'eval.json'} could not be written "
                           f"({exc.strerror or exc})") from None
    return result


class EvalNotSaved(OSError):
    """The evaluation ran; its eval.json could not be written."""


def _check_writable(path: Path) -> None:
    """``path`` can be (re)written: its directory takes new files and nothing but a file is in the way."""
    if path.is_dir() or (path.exists() and not path.is_file()):
        raise ValueError(f"{path} is not a file, so the result cannot be written there; move it away")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{path} cannot be written (the run directory is read-only); copy the run somewhere writable")


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
