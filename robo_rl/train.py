"""`robo-rl train`: compose -> resolve -> validate -> build -> run, all checks before any work.

Also usable from Python: ``train(cfg, run_dir)`` with a composed config (see ``compose_config``).
"""

from __future__ import annotations

import logging
import os
import random
import shlex
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from envs.mujoco_log import routed_mujoco_warnings
from envs.resources import usable_cpus
from robo_rl.config import compose_config, naming_user_file  # (here too: robo_rl.train's Python API)
from robo_rl.build import (build_env_checked, build_learner, build_policy, build_runner, check_env_runs,
                           check_head_and_learner, check_safety)
from robo_rl.defaults import resolve_defaults, task_defaults
from robo_rl.validation import ConfigError, check_device, validate
from robo_rl.metrics import AtLeast, OnceEach, RunLogFile, setup_console_logging, write_text_atomic
from robo_rl.memory import buffers_needed, check_fits
from robo_rl.checkpoint import list_checkpoints, recover
from robo_rl.runners.checkpoints import find_resume_checkpoint
from robo_rl.runners.stopping import Interrupted
from robo_rl.run_plan import plan_warnings
from robo_rl.runs import CONFIG_FILE, directory_problem, load_run_config, refuse_busy_run_dir, run_dir_lock

log = logging.getLogger("robo_rl")

#: keys a resumed run may change; everything else must stay as the run was started
RESUME_OVERRIDABLE = frozenset({
    "resume", "run_dir", "config_dir", "steps", "threads", "compile", "precision", "algo.fused",
    "log.every", "log.progress_seconds", "log.tensorboard", "log.plot",
    "checkpoint.every", "checkpoint.keep", "eval.every",
})
#: cadences resolved from the original steps (steps/10, steps/200, ...): named when a resume changes steps
CADENCES = ("eval.every", "checkpoint.every", "log.every")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(cfg: DictConfig, run_dir: Path, cli_overrides: Iterable[str] = ()) -> tuple[DictConfig, Path | None]:
    """Resolve and validate a config for ``run_dir``; for a resume, load the saved config instead.

    Returns the config to run and the checkpoint to resume from (None for a new run).
    """
    if cfg.resume:
        run_dir = Path(cfg.resume)
        refuse_busy_run_dir(run_dir, "resume")
        saved = resume_config(cfg, cli_overrides)
        # first put back a checkpoint a re-save killed between its renames left hidden: with checkpoint.keep=1 (or a
        # first checkpoint re-saved after the final evaluation) it is the run's only one, not "no checkpoint yet"
        recover(run_dir / "checkpoints", warn=log.warning)
        if not list_checkpoints(run_dir / "checkpoints"):  # stopped (killed) before its first checkpoint
            log.info(f"resume={run_dir}: the run stopped before its first checkpoint, so there is nothing to continue "
                     "from; starting it again from step 0 with its saved config")
            return saved, None  # a new run in the same directory (its metrics and events past step 0 are dropped)
        # (a steps= below the checkpoint's step is refused once the run is restored, by _run: the newest checkpoint
        # that verifies may still be skipped, another run's copied in, for an older one)
        return saved, find_resume_checkpoint(run_dir)

    refuse_busy_run_dir(run_dir)
    _refuse_existing_run(run_dir)
    cfg = resolve_defaults(cfg)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    try:
        validate(cfg)
        # the head and learner on stand-in dimensions: a pair that cannot work (algo=sac policy=flow) or a head or
        # learner option they refuse is named before the envs are built and stepped, not after (the buffers are
        # checked on the task's own dimensions, once the envs are built)
        check_head_and_learner(cfg, buffers=False)
    except ConfigError as exc:  # a value set in a file of the user's config dir (--config-dir): the file is named
        raise ConfigError(naming_user_file(str(exc), cli_overrides)) from None
    return cfg, None


def resume_config(cfg: DictConfig, cli_overrides: Iterable[str] = ()) -> DictConfig:
    """The config a resume of ``cfg.resume`` runs: the run's saved config.yaml with the keys a resume may change
    (``RESUME_OVERRIDABLE``) taken from ``cfg`` where ``cli_overrides`` gives them; a ConfigError for any other key
    given another value. Changes nothing on disk (``robo-rl train resume=<dir> --cfg job`` prints it)."""
    run_dir = Path(cfg.resume)
    try:
        saved = load_run_config(run_dir)
    except FileNotFoundError as exc:  # (eval shares the message, which names no key)
        raise ConfigError(f"resume={run_dir}: {exc}") from None
    keys = given_keys(cli_overrides)
    if "steps" in keys:
        kept = [f"{k}={OmegaConf.select(saved, k):,}" for k in CADENCES if k not in keys]
        if kept and OmegaConf.select(cfg, "steps") != saved.steps:
            log.info(f"resume with steps={OmegaConf.select(cfg, 'steps'):,} (was {saved.steps:,}): "
                     f"{', '.join(kept)} stay as resolved for the original length; set them to change")
    if "run_dir" in keys and cfg.run_dir and Path(cfg.run_dir).resolve() != run_dir.resolve():
        raise ConfigError(f"resume={run_dir} continues the run in its own directory; run_dir={cfg.run_dir} would "
                          "not be used (drop it, or copy the run there and resume that copy)")
    fixed = [k for k in keys if k not in RESUME_OVERRIDABLE and _resume_value(cfg, k) != _resume_value(saved, k)]
    if fixed:
        raise ConfigError(
            f"resume={run_dir} continues that run with its saved config; {', '.join(fixed)} cannot change "
            f"on resume (allowed: {', '.join(sorted(RESUME_OVERRIDABLE - {'resume', 'run_dir'}))}). "
            "Start a new run to change them."
        )
    with open_dict(saved):
        for key in keys:
            if key in RESUME_OVERRIDABLE - {"resume", "run_dir"}:
                OmegaConf.update(saved, key, OmegaConf.select(cfg, key), merge=False)
        saved.resume = str(run_dir)
        saved.run_dir = str(run_dir)
    # validate's advice for a device this machine lacks, "use device=cpu", is refused above: a resume keeps it
    check_device(str(saved.device), fix=f"resume={run_dir} continues the run on the device it trained on: resume it "
                 f"on a machine that has it (robo-rl eval {shlex.quote(f'run_dir={run_dir}')} device=cpu and robo-rl export read it "
                 "on this one)")
    validate(saved)
    return saved


# What a config group chosen on a resume's command line is compared by: the learner, head and task it names
# (a group also brings defaults the saved run may have changed), or the group's whole node
# (the safety configs set only the filter chain; the rest of safety.* is resolved per run)
GROUP_IDENTITY = {"algo": "algo.name", "policy": "policy.name", "env": "env.id", "randomize": "env.randomize",
                  "safety": "safety.filters"}


def _resume_value(cfg: DictConfig, key: str) -> Any:
    """``key``'s value in ``cfg`` as a resume compares it: giving a saved run's own value is no change."""
    value = OmegaConf.select(cfg, GROUP_IDENTITY.get(key, key), default=None)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _refuse_existing_run(run_dir: Path) -> None:
    if (run_dir / CONFIG_FILE).exists():
        raise ConfigError(f"run_dir={run_dir} already holds a run; continue it with resume={run_dir} or choose "
                          "another run_dir")
    if list_checkpoints(run_dir / "checkpoints"):  # a run built in Python (build_runner) writes no config.yaml
        raise ConfigError(f"run_dir={run_dir} holds checkpoints but no {CONFIG_FILE} (a run built with build_runner?), "
                          "which a new run would replace; choose another run_dir")
    if (run_dir / "multirun.yaml").exists():  # a run there hides the sweep's jobs from robo-rl compare runs=<it>
        raise ConfigError(f"run_dir={run_dir} holds a -m sweep (multirun.yaml); choose another run_dir (a sweep is "
                          f"continued by running it again with -m and run_dir={run_dir})")


def save_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """Write the run's config.yaml (atomically: a resumed run replaces it)."""
    saved = cfg.copy()
    with open_dict(saved):
        saved.resume = None  # the file describes the run; resuming is how it was continued
    write_text_atomic(run_dir / CONFIG_FILE, OmegaConf.to_yaml(saved))


def python_api_overrides(cfg: DictConfig) -> list[str]:
    """The resume-overridable keys ``cfg`` sets to something other than the defaults (``train(cfg, ...)``
    called from Python, with no command line to read them from)."""
    base = compose_config([])
    return [f"{k}={OmegaConf.select(cfg, k)}" for k in sorted(RESUME_OVERRIDABLE - {"resume", "run_dir"})
            if OmegaConf.select(cfg, k) != OmegaConf.select(base, k)]


def given_keys(cli_overrides: Iterable[str]) -> list[str]:
    """The keys of command-line overrides (``+key=v``, ``~key`` and ``key=v`` alike)."""
    return [o.split("=", 1)[0].lstrip("+~") for o in cli_overrides]


class _Held(logging.Handler):
    """Keeps the start-up's log records until train.log exists, so the file has them too."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def train(cfg: DictConfig, run_dir: str | Path | None = None, cli_overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Train according to ``cfg`` into ``run_dir``; returns the run summary.

    ``run_dir`` may be left out when ``cfg`` names it (``run_dir=``) or resumes a run (``resume=``)."""
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"train(cfg) takes the config compose_config([...]) returns, got {type(cfg).__name__}; e.g. "
                        "train(compose_config(['algo=sac', 'env=pendulum']), 'runs/x')")
    # a bare string would be read character by character: a resume then named an empty key as the one that changed
    listed = not isinstance(cli_overrides, (str, bytes)) and isinstance(cli_overrides, Iterable)
    cli_overrides = list(cli_overrides) if listed else cli_overrides  # a generator is read once
    if not listed or not all(isinstance(o, str) for o in cli_overrides):
        raise TypeError(f"train(cfg, run_dir, cli_overrides) takes a list of key=value strings, e.g. ['steps=200000']; "
                        f"got {cli_overrides!r}")
    resume = cfg.get("resume")
    if isinstance(resume, str) and not resume.strip():  # not "no resume": a new run started where one was to continue
        raise ConfigError(f"resume={resume!r} is blank (an unset shell variable?): give the directory of the run to "
                          "continue, e.g. resume=runs/hc-sac, or leave resume= out to start a new run")
    if run_dir is None:
        run_dir = cfg.resume or cfg.run_dir
        if run_dir is None:
            raise ConfigError("train(cfg) needs a run directory: pass run_dir, or set run_dir= (or resume=) in cfg")
        where = f"{'resume' if cfg.resume else 'run_dir'}={run_dir}"  # the key that named it
    else:
        if not cli_overrides:  # from Python with a composed config
            _refuse_second_run_dir(cfg, run_dir)
        where = f"train(cfg, run_dir={str(run_dir)!r})"
    if not isinstance(run_dir, (str, os.PathLike)) or not str(run_dir).strip():
        raise ConfigError(f"train(cfg, run_dir={run_dir!r}): run_dir must name a directory (a str or Path)"
                          + ("; '' would write the run into the working directory" if isinstance(run_dir, str) else ""))
    problem = directory_problem(Path(run_dir))
    if problem is not None:
        raise ConfigError(f"{where}: {problem}")
    caller_level = log.level  # the caller's own choice for the robo_rl logger (NOTSET: none), put back at the end
    setup_console_logging()  # INFO on the logger while the run lasts: train.log gets every line
    # a caller that quieted the robo_rl logger (setLevel(WARNING): no progress lines) keeps it quiet on the console and
    # in its own handlers; train.log still gets every line
    quiet = [(h, AtLeast(caller_level)) for h in log.handlers] if caller_level > logging.INFO else []
    held = _Held()
    log.addHandler(held)
    # each warning once in the run (each handler its own filter: what the console has shown, train.log must still get)
    once = [(h, OnceEach()) for h in log.handlers if getattr(h, "_robo_rl", False) or h is held]
    for handler, each in [*once, *quiet]:
        handler.addFilter(each)
    threads = torch.get_num_threads()  # threads= applies to the run, not to the caller's process afterwards
    try:
        # as the CLI does: once per message to the log, no MUJOCO_LOG.TXT in the working directory (until the run ends:
        # then the caller's handler again)
        with routed_mujoco_warnings():
            return _train(cfg, Path(run_dir), cli_overrides, held)
    finally:
        log.removeHandler(held)
        for handler, each in [*once, *quiet]:
            handler.removeFilter(each)
        log.setLevel(caller_level)
        torch.set_num_threads(threads)


def _refuse_second_run_dir(cfg: DictConfig, run_dir: str | os.PathLike[str]) -> None:
    """From Python, refuse a ``run_dir`` argument that is not the directory ``cfg`` names with run_dir= or resume=:
    one of the two was silently dropped (the argument won over run_dir=; resume= continued its run in its own
    directory). (The CLI passes its overrides and the directory it resolved, a -m sweep's job's under run_dir=.)"""
    key = "resume" if cfg.resume else "run_dir"  # (a resume's run_dir= is not used: the run's own directory is)
    named = OmegaConf.select(cfg, key, default=None)
    if named and isinstance(run_dir, (str, os.PathLike)) and Path(named).resolve() != Path(run_dir).resolve():
        why = (f"a resume continues the run in {named} itself; drop the run_dir argument" if key == "resume" else
               "give the directory once: drop the argument (train(cfg)) or run_dir= from the overrides (a run's saved "
               "config, load_run_config(...), names its own directory: set cfg.run_dir = None to train it anew elsewhere)")
        raise ConfigError(f"train(cfg, run_dir={str(run_dir)!r}): cfg has {key}={named}; {why}")


def _train(cfg: DictConfig, run_dir: Path, cli_overrides: Iterable[str], held: _Held) -> dict[str, Any]:
    for_task = {} if cfg.resume else task_defaults(cfg)  # a resumed run keeps its saved config as it is
    if cfg.resume and not cli_overrides:  # from Python: the keys the given config changes
        cli_overrides = python_api_overrides(cfg)
    cfg, resume_from = prepare(cfg, run_dir, cli_overrides)
    run_dir = Path(cfg.run_dir)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    elif torch.get_num_threads() > (cpus := usable_cpus()):
        # torch's default counts the host's cores, not a CPU binding or a container's quota
        log.info(f"robo-rl: {cpus} torch thread(s), the CPUs this process may use (torch's default was "
                 f"{torch.get_num_threads()}); threads= sets another count")
        torch.set_num_threads(cpus)
    seed_everything(int(cfg.seed))
    if cfg.get("compile", False):
        # torch keeps compiled code per function for the whole process, up to torch._dynamo.config.recompile_limit (8)
        # versions: past it (the 9th network shape, task or precision a process compiled: a -m sweep's jobs, a
        # notebook's runs) a run ran eager, with torch's warning and other float rounding than the same run alone (or
        # its resume, compiled in a new process). Each compiled run starts from torch's caches as a new process would.
        import torch._dynamo as dynamo  # (not `import torch._dynamo`: torch would be this function's local name)

        dynamo.reset()

    # Build everything before touching the run directory: bad options fail here, with nothing written.
    env = build_env_checked(cfg)
    eval_env = env  # until a separate one is built (closed once, below)
    try:
        check_safety(cfg, env.obs_dim, env.act_dim, env.dt or None)  # filters whose dt must be the control period
        if env.one_per_process:  # a second simulator cannot be built: evaluate on the training envs
            eval_env = env
        else:
            eval_env = build_env_checked(cfg, num_envs=min(int(cfg.eval.num_envs), int(cfg.eval.episodes)),
                                         vectorization="sync", randomize=False)  # evaluation measures the nominal task
            check_env_runs(cfg, eval_env)
        check_fits(buffers_needed(cfg, env.obs_dim, env.act_dim), torch.device(cfg.device))
        policy = build_policy(cfg, env)
        learner_notes: list[tuple[int, str]] = []  # what compile / precision will do, logged after the opening line
        learner = build_learner(cfg, policy, notes=learner_notes)
        demos = None
        if cfg.demos.path is not None and resume_from is None:  # a resumed run has them in its checkpoint
            from robo_rl.demos import load_demos

            demos = load_demos(cfg.demos.path, env.obs_dim, env.act_dim, env.action_space.low, env.action_space.high,
                               replay=bool(cfg.demos.replay) and learner.kind == "off_policy",
                               costs=bool(OmegaConf.select(cfg, "safety.passivity_aware", default=False)))
        with run_dir_lock(run_dir):
            if resume_from is None and not cfg.resume:  # checked again under the lock: another process may
                _refuse_existing_run(run_dir)              # have started it meanwhile (a restart reuses its own)
            steps_given = resume_from is not None and "steps" in given_keys(cli_overrides)
            return _run(cfg, run_dir, env, eval_env, learner, demos, resume_from, for_task, held, steps_given,
                        learner_notes)
    finally:
        if eval_env is not env:
            eval_env.close()
        env.close()


def head_summary(policy: DictConfig) -> str:
    """The head as the opening line names it, with its sampling chain's length where it has one (the flow head's
    steps differ by learner: EXPO 3, the others 4): "flow head (3 steps)", "diffusion head (10 of 100 steps)"."""
    name = f"{policy.name} head"
    if policy.get("steps") is not None:
        return f"{name} ({policy.steps} steps)"
    if policy.get("inference_steps") is not None and policy.get("train_steps") is not None:
        return f"{name} ({policy.inference_steps} of {policy.train_steps} steps)"
    if policy.get("decoder_steps") is not None and policy.get("decoder") is not None:
        return f"{name} ({policy.decoder} decoder, {policy.decoder_steps} steps)"
    return name


def _log_start(cfg: DictConfig, env: Any, eval_env: Any, learner: Any, demos: Any, for_task: dict[str, Any],
               planned_steps: int, learner_notes: list[tuple[int, str]] = ()) -> None:
    """The run's opening lines: what trains on what, and what differs from a plain run (``learner_notes``: what
    ``build_learner`` said of compile and precision), then the warnings about its plan (``plan_warnings``).
    ``planned_steps``: the env steps the run will take (``steps`` rounded up to whole iterations, as the runner said
    just before)."""
    n_params = sum(p.numel() for p in learner.parameters())
    # the learner the config chose when it is not algo='s own (safety.passivity_aware=true: Lagrangian SAC)
    algo = cfg.algo.name if learner.name == cfg.algo.name else f"{cfg.algo.name} ({learner.name})"
    log.info(f"robo-rl: {algo} on {env.task_id} ({env.num_envs} env(s), {env.backend} backend), "
             f"{head_summary(cfg.policy)}, {n_params:,} parameters, seed {cfg.seed}, {planned_steps:,} steps "
             f"-> {cfg.run_dir}")
    if eval_env is env:
        after = ("which start new episodes after each" if getattr(env, "resets_episodes", True) else
                 "whose episodes carry on after each (the env has no reset(): episodes under way at an "
                 "evaluation's start finish uncounted)")
        log.info(f"robo-rl: {env.task_id} allows one simulator per process: evaluations run on the {env.num_envs} "
                 f"training envs (randomized as in training, if randomized), {after}")
    randomized = {k: v for k, v in OmegaConf.to_container(cfg.env.randomize, resolve=True).items() if v}
    if randomized:
        log.info("robo-rl: domain randomization of the training envs: " + " ".join(f"{k}={v}" for k, v in randomized.items())
                 + ("" if eval_env is env else " (evaluations run the nominal task)"))
    if for_task:
        log.info(f"robo-rl: {cfg.algo.name}'s settings for {env.task_id}: " + " ".join(f"{k}={v}" for k, v in for_task.items())
                 + " (set them on the command line to choose otherwise)")
    for level, line in learner_notes:
        log.log(level, line)
    for line in plan_warnings(cfg, env, eval_env, learner):
        log.warning(line)


def _run(cfg: DictConfig, run_dir: Path, env: Any, eval_env: Any, learner: Any, demos: Any, resume_from: Path | None,
         for_task: dict[str, Any], held: _Held, shorter_steps_refused: bool = False,
         learner_notes: list[tuple[int, str]] = ()) -> dict[str, Any]:
    """Write the run (holding its directory's lock): config, train.log, the runner's loop. ``shorter_steps_refused``:
    a resume given steps=, which may not be below the step of the checkpoint it continues from. ``learner_notes``:
    for ``_log_start``."""
    runner = build_runner(cfg, learner, env, eval_env, run_dir, warn=False)  # _log_start warns after its opening line
    def refuse_shorter() -> None:
        if shorter_steps_refused and int(cfg.steps) < runner.step:  # config.yaml would then say 100 steps
            raise ConfigError(f"steps={int(cfg.steps):,}: resume={run_dir} has trained {runner.step:,} steps (the "
                              f"checkpoint it continues from, {runner._last_checkpoint.name}), and a resume cannot "
                              f"shorten a run; give steps >= {runner.step:,}, or leave steps out")

    if resume_from is not None:  # a checkpoint that cannot be resumed fails here, with config.yaml as it was
        runner.restore(resume_from, check=refuse_shorter)  # (refused before "resumed from ..." is said)
    _log_start(cfg, env, eval_env, learner, demos, for_task, runner.planned_steps,  # held until train.log exists
               learner_notes)
    if demos is not None:  # before config.yaml: a pretraining that diverges leaves no run behind
        from robo_rl.demos import warm_start

        stats = warm_start(cfg, learner, getattr(runner, "replay", None), demos)
        runner.pretrain_seconds = stats.get("seconds", 0.0) + stats.get("critic_seconds", 0.0)
    save_run_config(cfg, run_dir)  # a resume records what it changed (steps=...), so the next one keeps it
    file_handler = RunLogFile(run_dir / "train.log")
    for record in held.records:  # the start-up's lines (e.g. what a resume changed) belong in the file too
        file_handler.handle(record)
    log.removeHandler(held)
    log.addHandler(file_handler)
    try:
        return runner.train(resume_from=resume_from)
    except Interrupted as exc:  # the resume command, on the console and in train.log
        log.info(str(exc))
        raise
    except BaseException as exc:  # the CLI prints it on the console; train.log records why the run stopped
        file_handler.stopped(exc)
        raise
    finally:
        log.removeHandler(file_handler)
        file_handler.close()
