"""`robo-rl train ...`: Hydra composes the config (checked first, with one-line errors), then one run or a sweep."""

from __future__ import annotations

import errno

import re
import shlex
import sys
from pathlib import Path
from typing import Sequence

from robo_rl.commands import sweep
from robo_rl.commands.common import (EXIT_FAILED, EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE, PATH_KEYS, error, log,
                                     override_key, quote_paths, unknown_key, unquoted)
from robo_rl.commands.sweep import (for_hydra_multirun, is_sweep, job_values, sweep_problem, sweep_values,
                                    swept_on_command_line, swept_values_by_job)

def register_resolvers() -> None:
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
        swept = swept_on_command_line()
        algo = "+".join(swept["algo"]) if "algo" in swept else algo
        env_values = swept.get("env.id") or [task_of(v) for v in swept.get("env", [])]
        env_label = "+".join(name(v) for v in env_values) if env_values else name(env_id)
        return "runs/" + sweep.fitted(f"sweep-{algo}-{env_label}", f"-{now}")  # -m algo=glob(*) env=glob(*): long

    def task_of(env_config):  # type: ignore[no-untyped-def]
        # env=pendulum -> Pendulum-v1, as a single run's directory names the task (the config name if unreadable)
        from omegaconf import OmegaConf

        from robo_rl.config import config_file

        try:  # env=hopper.yaml is Hydra's hopper too; env=my_robot may be the user's (--config-dir)
            return str(OmegaConf.load(config_file("env", str(env_config), sweep.TRAIN_ARGS)).id)
        except Exception:  # noqa: BLE001 - a name only: the sweep's own check reports a bad config
            return env_config

    def sweep_subdir(task_overrides, job_num):  # type: ignore[no-untyped-def]
        # name a multirun job by the keys that are swept (seed=0,1,2 -> "seed=1"), in one flat directory
        return sweep.job_dir_name(list(task_overrides), job_num)

    OmegaConf.register_new_resolver("robo_rl_run_dir", run_dir, replace=True)
    OmegaConf.register_new_resolver("robo_rl_sweep_dir", sweep_dir, replace=True)
    OmegaConf.register_new_resolver("robo_rl_sweep_subdir", sweep_subdir, replace=True)


def train_main(args: Sequence[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, open_dict

    from robo_rl.config import (boolean_keys, boolean_problem, integer_keys, integral_literals, register_schemas,
                                search_path, with_config_dir)
    from robo_rl.metrics import setup_console_logging
    from robo_rl.runners.stopping import StopOnSignal
    from robo_rl.validation import ConfigError

    args, problem = config_dir_flag(args)  # --config-dir DIR: config_dir=DIR
    if problem is not None:
        return error(problem, EXIT_USAGE)
    args = integral_literals(args, integer_keys())  # steps=1e6
    problem = boolean_problem(args, boolean_keys())  # compile=2
    if problem is not None:
        return error(f"{problem} (see robo-rl train --help)", EXIT_USAGE)
    if any(a in ("--help", "-h", "--hydra-help") for a in args):  # help on one config: a sweep's values dropped
        args = [a for a in args if a not in ("-m", "--multirun")
                and not ("=" in a and not a.startswith("-") and is_sweep(a.split("=", 1)[1]))]
    register_schemas()
    register_resolvers()
    from robo_rl.runs import saved_group_choices

    args = quote_paths(args)  # resume=runs/sweep/seed=1, as a sweep job's messages print it
    args = saved_group_choices(args) + list(args)  # resume=<a SAC run>: its learner's keys are the known ones
    try:
        args = with_config_dir(args)  # one absolute config_dir= (the run records it), checked before any work
    except ConfigError as exc:
        return error(str(exc), EXIT_USAGE)
    try:
        problem = composition_problem(args) or run_dir_problem(args)
    except KeyboardInterrupt:  # a large sweep's check takes a while
        return error("aborted by Ctrl-C before any job started", EXIT_SIGINT)
    if problem is not None:
        return error(problem, EXIT_USAGE)
    if any(a in ("--help", "-h") for a in args) and "--hydra-help" not in args:
        text = train_help(args)
        if text is not None:
            print(text)
            return 0
    if job_config_asked(args) and any(override_key(a) == "resume" for a in config_overrides(args)):
        return print_resume_config(args)
    config_dir = str(Path(__file__).resolve().parents[1] / "configs")
    exit_code = 0
    sweep_dirs: list[str] = []  # a multirun's directory, once per job
    failed_jobs: list[str] = []
    started: list[str] = []  # the swept values of each job this command has started
    # between a sweep's jobs (Hydra's launcher preparing the next) a signal met no handler of a job: a Ctrl-C was a
    # KeyboardInterrupt and a SIGTERM ended the sweep as stopped "outside the training loop; nothing was training",
    # both without the command that continues the sweep; it is kept here and stops the sweep before the next job
    between_jobs = StopOnSignal("stopping the sweep before its next job starts")

    @hydra.main(version_base=None, config_path=config_dir, config_name="config")
    def _run(cfg: DictConfig) -> None:
        nonlocal exit_code
        hc = HydraConfig.get()
        run_dir = Path(hc.runtime.output_dir)
        overrides = list(hc.overrides.task)
        failed_before = None
        between_jobs.__exit__()
        if between_jobs.signum is not None:  # this job does not start
            code = 128 + between_jobs.signum
            if run_dir.is_dir() and not any(run_dir.iterdir()):  # the directory Hydra made for it
                run_dir.rmdir()
            jobs = swept_values_by_job()
            unstarted = [j for j in jobs if j not in started]
            log.warning("sweep: stopped before job %d of %d; not started: %s; to continue the sweep (finished jobs are "
                        "kept, the rest start): %s", hc.job.num + 1, len(jobs), "; ".join(unstarted),
                        continue_command(hc.sweep.dir))
            raise SystemExit(code)
        if hc.mode.name == "MULTIRUN" and not cfg.resume and not cfg.run_dir and (run_dir / "config.yaml").exists():
            # a new sweep's own directory (runs/sweep-<algo>-<task>-<time>) holds a run: another sweep of that algorithm
            # and task started in the same second; continuing its job would report that sweep's run as this one's
            code = error(f"sweep: {run_dir} already holds a run of another sweep started in the same second; give each "
                         "sweep started in parallel its own run_dir=", EXIT_USAGE)
            raise SystemExit(code)
        if hc.mode.name == "MULTIRUN" and not cfg.resume and (run_dir / "config.yaml").exists():
            # the sweep was run before into this directory (run_dir=<sweep dir>): continue its job, whose config
            # must be the same (a resume refuses a changed key); a finished job is left as it is, and a failed
            # one too (resuming would replay the same updates into the same NaN)
            failed_before = earlier_failure(run_dir)
            if failed_before is None:
                log.info(f"sweep: {run_dir} holds this job's run: continuing it")
            with open_dict(cfg):
                cfg.resume = str(run_dir)
            overrides = [o for o in overrides if override_key(o) != "run_dir"] + [f"resume={run_dir}"]
        completed = False
        if failed_before is not None:
            code = error(f"sweep: {run_dir} failed before ({failed_before}); left as it is (remove the directory to "
                         "run this job again)", EXIT_FAILED)
        else:
            code = run_training(cfg, run_dir, overrides)  # (it forgets the signals of the jobs before it)
            completed = code == 0
            if not code and hc.mode.name == "MULTIRUN" and StopOnSignal.received is not None:
                # the signal came during the job's final evaluation or save, which it waited for: the job is complete,
                # and the sweep stops all the same (it started the next job, as if there had been no Ctrl-C)
                code = 128 + StopOnSignal.received
        if hc.mode.name == "MULTIRUN":
            # named by its own swept values, not by its number: a shuffle() sweep runs in an order of Hydra's own
            started.append(job_values(hc.overrides.task))
            label = started[-1] or Path(hc.runtime.output_dir).name  # the sweep's only job: its directory (its overrides)
        if code and hc.mode.name == "MULTIRUN" and code in (EXIT_SIGINT, EXIT_SIGTERM):
            jobs = swept_values_by_job()
            unstarted = [j for j in jobs if j not in started]
            log.warning("sweep: stopped in job %d of %d (%s)%s; to continue the sweep (%s, finished ones are kept, "
                        "the rest start): %s", hc.job.num + 1, len(jobs), label,
                        f"; not started: {'; '.join(unstarted)}" if unstarted else "",
                        stopped_job(run_dir, completed), continue_command(hc.sweep.dir))
        if code and (hc.mode.name == "RUN" or code in (EXIT_SIGINT, EXIT_SIGTERM)):
            raise SystemExit(code)  # an interrupted sweep stops: Ctrl-C does not start the next job
        if hc.mode.name == "MULTIRUN":
            sweep_dirs.append(str(hc.sweep.dir))
            if code:
                failed_jobs.append(label)  # the job's swept values (its whole override list is long)
        exit_code = exit_code or code  # a sweep exits with its first failed job's code
        if hc.mode.name == "MULTIRUN":
            between_jobs.__enter__()

    sweep.TRAIN_ARGS[:] = list(args)
    multirun = any(a in ("-m", "--multirun") for a in args)
    # -m first: Hydra's argument parser takes the overrides as one run of words, so `algo=sac -m seed=0,1` (or a
    # resume's algo= and policy= put before the user's words) ended in its usage text, "unrecognized arguments"
    hydra_args = ["-m", *(a for a in for_hydra_multirun(args) if a not in ("-m", "--multirun"))] if multirun else args
    at = next((i + 1 for i, a in enumerate(hydra_args) if override_key(a) == "config_dir"), len(hydra_args))
    hydra_args = [*hydra_args[:at], *search_path(args), *hydra_args[at:]]  # DIR/<group>/<name>.yaml: <group>=<name>
    sys.argv = ["robo-rl train", *hydra_args]
    setup_console_logging()  # a sweep's own lines (a job continued, the closing compare line) before any train() did
    try:
        _run()
    finally:
        between_jobs.__exit__()
    if sweep_dirs:
        where = sweep_dirs[0] if len(set(sweep_dirs)) == 1 else ",".join(dict.fromkeys(sweep_dirs))
        from robo_rl.runs import CONFIG_FILE

        if any(next(Path(d).glob(f"*/{CONFIG_FILE}"), None) is not None for d in dict.fromkeys(sweep_dirs)):
            log.info("sweep: %d job(s) in %s; side by side: robo-rl compare %s", len(sweep_dirs), where,
                     shlex.quote(f"runs={where}"))  # pasted as printed, a directory with a space too
        else:  # every job failed before writing its run (a bad env.id): the compare line printed failed on them
            log.info("sweep: %d job(s) in %s, none of which wrote a run to compare", len(sweep_dirs), where)
        if failed_jobs:
            log.error("sweep: %d of %d job(s) failed: %s", len(failed_jobs), len(sweep_dirs), "; ".join(failed_jobs))
    return exit_code


CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def config_dir_flag(args: Sequence[str]) -> tuple[list[str], str | None]:
    """``args`` with Hydra's ``--config-dir DIR`` (``-cd DIR``, ``--config-dir=DIR``) as the override ``config_dir=DIR``,
    which compose_config, the sweep's check and the run all read (``robo_rl.config.search_path``); and a problem:
    the flag without a directory."""
    out: list[str] = []
    rest = list(args)
    while rest:
        a = rest.pop(0)
        flag, eq, value = a.partition("=")
        if flag not in CONFIG_DIR_FLAGS:
            out.append(a)
            continue
        if not eq:
            if not rest or rest[0].startswith("-"):
                return out, f"{flag} needs a directory: {flag} DIR (its <group>/<name>.yaml are <group>=<name>)"
            value = rest.pop(0)
        out.append(f"config_dir={value}")
    return out, None


def earlier_failure(run_dir: Path) -> str | None:
    """The status of a run that failed (NaN/Inf, a full disk), from its summary.json; None otherwise."""
    import json

    from robo_rl.metrics import not_a_file

    path = run_dir / "summary.json"
    if not_a_file(path) is not None:  # (a named pipe there would wait for a writer: the sweep would hang)
        return None
    try:
        status = json.loads(path.read_text()).get("status", "")
    except (OSError, ValueError, AttributeError):
        return None
    return status if isinstance(status, str) and status.startswith("failed") else None


def continue_command(sweep_dir: str) -> str:
    """The command that continues this sweep: the same overrides, into its directory."""
    args = [a for a in sweep.TRAIN_ARGS if override_key(a) != "run_dir" and a not in ("-m", "--multirun")]
    args = [x for a in args for x in (["--config-dir", unquoted(a.split("=", 1)[1])] if override_key(a) == "config_dir"
                                      else [a])]  # as typed, not quoted for Hydra
    return shlex.join(["robo-rl", "train", "-m", *args, f"run_dir={sweep_dir}"])


def stopped_job(run_dir: Path, completed: bool) -> str:
    """What continuing a sweep does with the job a signal stopped (its directory ``run_dir``; ``completed``: it ended
    complete, the signal having come during its final evaluation or save)."""
    from robo_rl.checkpoint import list_checkpoints

    if completed:
        return "this job is complete"
    if list_checkpoints(run_dir / "checkpoints"):
        return "this job resumes"
    # a signal in its start-up (a few seconds: imports, building the envs) or a kill before its first save
    return "this job starts again, stopped before its first checkpoint"


def run_dir_problem(args: Sequence[str]) -> str | None:
    """A ``run_dir=`` or ``resume=`` (or the default ``runs/``) that is, or lies under, a regular file: Hydra
    would fail creating it with a traceback before any of our checks run; a ``resume=`` that does not exist."""
    given = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+~") in ("run_dir", "resume"):
            values = [unquoted(value)] if unquoted(value) != value.strip() else value.split(",")  # quoted: one path
            given += [(key.lstrip("+~"), v.strip()) for v in values if v.strip() not in ("", "null", "None")]
    from robo_rl.runs import directory_problem

    for key, value in given:
        if key == "resume" and not Path(value).exists():  # (Hydra makes it as the job's directory before train runs)
            return f"resume={value}: {value} does not exist; give the directory of the run to continue"
    for label, value in [(f"{k}={v}", v) for k, v in given] or [("runs/ (where runs go without run_dir=)", "runs")]:
        problem = directory_problem(Path(value))
        if problem is not None:
            return f"{label}: {problem}"
    return None


def composition_problem(args: Sequence[str]) -> str | None:
    """What is wrong with ``robo-rl train``'s overrides as a config, or None.

    Composes the config before Hydra's own run does, so that an unknown key, a value of the wrong
    type or a missing config-group option exits with EXIT_USAGE and a short message (Hydra would print
    its report and exit 1, the code for a failed run), and a mistyped key gets the closest valid ones.
    Under ``-m`` every job of the sweep is composed and validated too (``-m steps=1000,0`` would
    otherwise train the first job before the second one failed; ``-m algo=sac,ppo algo.tau=0.01``
    fails for ppo only). Hydra's flags and ``hydra.*`` overrides are left to Hydra.
    """
    problem = hydra_problem(args)
    if problem is not None:
        return problem
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        # --help, --cfg, --info, ...: Hydra's business, but on a config these overrides can make (`algo=foo
        # --help` would be Hydra's traceback); sweeps are not composed here
        return overrides_problem(config_overrides(args))

    plain: list[str] = []  # the overrides, each sweep at its first value
    sweeps: list[tuple[int, list[str]]] = []  # (position in plain, every value of that sweep as key=value)
    for a in args:
        if a.startswith("~") and "=" not in a:  # ~env.kwargs.<name> (hydra_problem refused the others)
            plain.append(a)
        elif "=" in a and not override_key(a).startswith("hydra"):
            values = sweep_values(a, args) if is_sweep(a.split("=", 1)[1]) else [a]
            if values is None and (problem := parse_problem(a)) is not None:  # Hydra's own would be a traceback
                return problem
            if values:  # None: a sweep expanded only by Hydra's run (glob)
                if len(values) > 1:
                    sweeps.append((len(plain), values))
                plain.append(values[0])
    problem = overrides_problem(plain)
    if not any(a in ("-m", "--multirun") for a in args):
        return problem
    if problem is not None:  # the sweep's first job (each sweep at its first value), named as sweep_problem names one
        return f"sweep job {' '.join(values[0] for _, values in sweeps)}: {problem}" if sweeps else problem
    return sweep_problem(plain, sweeps)


def job_config_asked(args: Sequence[str]) -> bool:
    """Whether ``args`` ask for the job's config (``--cfg job``, ``-c job``, ``--cfg=job``)."""
    return any((a in ("--cfg", "-c") and i + 1 < len(args) and args[i + 1] == "job") or a in ("--cfg=job", "-c=job")
               for i, a in enumerate(args))


def print_resume_config(args: Sequence[str]) -> int:
    """``robo-rl train resume=<dir> [keys] --cfg job``: the config the resume would run (the run's saved config.yaml
    with the keys a resume may change), or the refusal the resume would give. Hydra's own --cfg printed its
    composition of the defaults with the run's group choices: another task, steps null, and keys a resume refuses
    shown as taken."""
    from omegaconf import OmegaConf

    from robo_rl.config import compose_config
    from robo_rl.train import resume_config
    from robo_rl.validation import ConfigError

    overrides = config_overrides(args)
    try:
        print(OmegaConf.to_yaml(resume_config(compose_config(overrides), overrides)), end="")
    except ConfigError as exc:
        return error(str(exc), EXIT_USAGE)
    return 0


def config_overrides(args: Sequence[str]) -> list[str]:
    """The overrides among ``args`` that make the config (no flags, ``hydra.*`` keys or sweeps)."""
    return [a for a in args if ("=" in a and not a.startswith("-") and not override_key(a).startswith("hydra")
                                and not is_sweep(a.split("=", 1)[1]))
            or (a.startswith("~") and "=" not in a)]  # ~env.kwargs.<name> (hydra_problem refused the others)


def train_help(args: Sequence[str]) -> str | None:
    """``robo-rl train [overrides] --help``: the help template (configs/hydra/help) around the config the
    overrides make, as Hydra prints it, without Hydra's help path, which first lists every option of every
    config group (a second or more) for placeholders the template does not use. None, for Hydra to print
    it, when the template (or a ``hydra.*`` override) asks for more than the config."""
    import string

    from omegaconf import OmegaConf

    from robo_rl.config import CONFIG_GROUPS, compose_config, config_dir_of

    if any(override_key(a).startswith("hydra") for a in args if "=" in a):
        return None
    help_file = Path(__file__).resolve().parents[1] / "configs" / "hydra" / "help" / "robo_rl.yaml"
    template = OmegaConf.create({"hydra": {"help": OmegaConf.load(help_file)}}).hydra.help.template  # resolved
    if {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(template)} - {"CONFIG", None}:
        return None
    cfg = compose_config(config_overrides(args))
    text = string.Template(template).substitute(CONFIG=OmegaConf.to_yaml(cfg, resolve="--resolve" in args))
    config_dir = config_dir_of(args)
    if config_dir is None:
        return text
    import textwrap

    mine = [f"{group}={'|'.join(names)}" for group in CONFIG_GROUPS
            if (names := sorted(p.stem for p in (config_dir / group).glob("*.yaml")))]
    lines = textwrap.wrap(f"Your configs:    {'   '.join(mine)} (--config-dir {config_dir})", 100,
                          subsequent_indent=" " * 17, break_on_hyphens=False, break_long_words=False)
    at = text.find("\n\n== All keys")
    return text[:at] + "\n" + "\n".join(lines) + text[at:] if at >= 0 else text + "\n" + "\n".join(lines)


# Hydra's flags that would read another config than robo-rl's (or print a traceback): refused with what to use
UNSUPPORTED_FLAGS = {
    "--config-name": "-cn", "--config-path": "-cp", "--shell-completion": "-sc",
    "--experimental-rerun": None,
}
# Hydra's directory settings: robo-rl's run_dir= names them (a resume, a sweep's continuation and the checks use it)
DIRECTORY_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir")
# the Hydra flags robo-rl train passes on (any other is refused in one line, not with Hydra's usage text)
HYDRA_FLAGS = ("-m", "--multirun", "-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "--resolve", "-p",
               "--package", "-r", "--run", "-i", "--info")
# those that take the next argument as their value (None: any; --info's is optional, one of its choices)
INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
FLAG_VALUES = {"-c": None, "--cfg": None, "-p": None, "--package": None, "-i": INFO_CHOICES, "--info": INFO_CHOICES}


def hydra_problem(args: Sequence[str]) -> str | None:
    """Hydra conventions robo-rl train does not follow, as one line naming what to use instead (Hydra itself
    would print its report or a traceback and exit 1, or silently drop run_dir=); None if there is none."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType, ValueType

    multirun = any(a in ("-m", "--multirun") for a in args)
    parser = OverridesParser.create()
    helping = any(a in ("--help", "-h", "--hydra-help") for a in args)
    for i, a in enumerate(args):
        flag = a.split("=", 1)[0]
        if not a.startswith(("-", "~")) and "=" not in a:  # `steps`, `interval(0,1)`: Hydra's report, exit 1
            previous = args[i - 1] if i else ""
            if previous not in FLAG_VALUES or FLAG_VALUES[previous] is not None and a not in FLAG_VALUES[previous]:
                return f"expected key=value arguments, got {a} (see robo-rl train --help)"
        if a.startswith("-") and (
                flag in UNSUPPORTED_FLAGS or flag in UNSUPPORTED_FLAGS.values()
                or any(len(flag) > 3 and long.startswith(flag) for long in UNSUPPORTED_FLAGS)):
            if not flag.startswith(("--c", "-c")):  # --shell-completion, --experimental-rerun
                return f"{flag} is not supported by robo-rl train (see robo-rl train --help)"
            return (f"{flag} is not supported by robo-rl train: it composes its own configs (robo_rl/configs); choose "
                    "them with algo=, env=, policy=, safety=, randomize= and set any key with key=value (a task of "
                    "your own: env.id=module:Id, env.kwargs.<name>=...; configs of your own: --config-dir DIR with "
                    "DIR/<group>/<name>.yaml; see robo-rl train --help)")
        if a.startswith("-") and flag not in HYDRA_FLAGS:
            return (f"{a}: not an option of robo-rl train: settings are key=value (steps=1e5, algo=sac); its flags "
                    "are -m, --config-dir DIR, --cfg job, --info, --help and --hydra-help (see robo-rl train --help)")
        if multirun and flag in ("--cfg", "-c", "--info", "-i", "--run", "-r"):
            return (f"{flag} cannot be combined with -m (Hydra runs one or the other): show one job's config "
                    f"without -m, with one value per key (robo-rl train seed=0 {flag} ...)")
        if a.startswith("-") or "=" not in a and not a.startswith("~"):
            continue
        key = override_key(a)
        if key == "hydra.searchpath":  # (robo-rl's own, from --config-dir, is added after these checks)
            return f"{a}: robo-rl train adds a directory of your configs with --config-dir DIR (DIR/<group>/<name>.yaml)"
        if key in DIRECTORY_KEYS:
            return (f"{a}: robo-rl train names its directories with run_dir=<dir> (under -m the sweep's, its jobs in "
                    "subdirectories named by their swept values): use run_dir= instead of hydra.run.dir / hydra.sweep.*")
        if key in ("hydra/launcher", "hydra/sweeper") and a.split("=", 1)[1].strip() != "basic":
            return (f"{a}: robo-rl train runs a sweep's jobs one after another with Hydra's basic launcher and sweeper "
                    "(its jobs share the sweep's directory, its continue command and its summary); for jobs in "
                    "parallel start several robo-rl train commands, each with its own run_dir= and threads=1")
        try:
            (parsed,) = parser.parse_overrides([a])
        except Exception:  # noqa: BLE001 - a grammar error: parse_problem words it
            continue
        if parsed.type == OverrideType.DEL and not key.startswith("env.kwargs."):
            return (f"{a}: robo-rl train does not delete keys or config groups (its schema defines every key, and "
                    f"the run reads them all); leave the override out for the default, or set {key}=<value> "
                    "(~env.kwargs.<name> removes a task keyword argument)")
        if parsed.value_type == ValueType.INTERVAL_SWEEP:
            return (f"{a}: interval() needs a sampling sweeper (Optuna, Nevergrad), and robo-rl train sweeps with "
                    f"Hydra's basic sweeper: list the values (-m {key}=0.001,0.003,0.01) or use range() / choice()")
        if parsed.is_sweep_override() and not multirun and not helping and not key.startswith("hydra"):
            value = a.split("=", 1)[1]
            quote = f"for one value holding a comma quote it: {key}='{value}'"
            if key in PATH_KEYS:  # run_dir=a,b: a directory's name (a sweep of them is refused)
                return f"{a}: a comma makes a sweep in Hydra's grammar; {quote}"
            others = []  # what else a,b can mean, for a key that takes it: seed=[0,1] and seed='0,1' were refused
            if parsed.value_type == ValueType.SIMPLE_CHOICE_SWEEP:
                from robo_rl.config import list_keys, string_keys

                free = key.startswith("env.kwargs.")  # a task keyword argument: any value
                if free or key in list_keys():
                    others.append(f"for a list write {key}=[{value}]")
                if free or key in string_keys():
                    others.append(quote)
            lists = f"; {', '.join(others)}" if others else ""
            return f"{a}: a sweep (a,b / range() / choice() / glob()) needs -m: robo-rl train -m {a} ...{lists}"
    return None


def parse_problem(override: str) -> str | None:
    """Hydra's grammar error for ``override``, worded as one line; None if it parses."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        OverridesParser.create().parse_overrides([override])
        return None
    except OverrideParseException as exc:
        message = composition_message(exc, [override]) or str(exc)
        return message if override in message else f"{override}: {message}"


def overrides_problem(overrides: list[str]) -> str | None:
    """Compose ``overrides`` (no sweeps): None if they make a config, else what is wrong."""
    from robo_rl.config import compose_config
    from robo_rl.validation import ConfigError

    try:
        compose_config(overrides)
        return None
    except ConfigError as exc:  # compose_config words override problems (composition_message); others propagate
        return str(exc)


def composition_message(exc: Exception, overrides: list[str]) -> str | None:
    """One line for a failed composition of ``overrides``; None for an error that is not about them."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from robo_rl.config import PACKAGED_CONFIGS, compose_config, config_dir_of, config_dir_problem, config_file

    if isinstance(exc, OverrideParseException):  # Hydra's grammar: e.g. an unquoted = or ( inside a value
        return (f"{' '.join(str(exc).split())} (quote a value that holds =, brackets or spaces for Hydra: "
                "key='value', inside shell quotes: \"key='value'\")")
    if isinstance(exc, MissingConfigException):  # algo=dqn: Hydra lists the available options
        message = " ".join(str(exc).split("Config search path")[0].split())
        env = next((o.split("=", 1)[1] for o in overrides if o.startswith("env=")), "")
        if f"'env/{env}'" in message and ("-v" in env or ":" in env):  # a gymnasium id where a config name goes
            message += f"; for a gymnasium id use env.id={env}"
        message = re.sub(r"(Could not find '[^']*') (Available options)", r"\1. \2", message)
        missing = re.search(r"Could not find '([^/']+)/(.*?)'", message)
        options = re.search(r"Available options in '[^']+':\s*(.*)$", message)
        if missing and options:  # algo=sacc: the option meant, if one is close
            import difflib

            close = difflib.get_close_matches(missing[2], options[1].split(), n=1, cutoff=0.6)
            if close:
                message += f" (did you mean {missing[1]}={close[0]}?)"
        if missing and ("/" in missing[2] or missing[2].endswith((".yaml", ".yml"))):  # env=./my_env.yaml
            group = missing[1]
            message += (f"; {group}= takes the name of a config in robo_rl/configs/{group}/, not a file path: put "
                        f"the file in DIR/{group}/ and give --config-dir DIR {group}=<its name>, or set its keys on "
                        f"the command line ({group}.<key>=value"
                        + (", e.g. env.id=<id> env.kwargs.<name>=..." if group == "env" else "") + ")")
        from robo_rl.runs import resumed_config

        saved = resumed_config(overrides)
        if saved is not None and saved.config_dir and config_dir_of(overrides) is None:  # its directory is gone
            message += (f"; the resumed run was made with --config-dir {saved.config_dir}, and "
                        f"{config_dir_problem(Path(saved.config_dir))}: give --config-dir <where it is now>, or leave "
                        f"{missing[1] if missing else 'the group'}= out (a resume runs the run's saved config.yaml)")
        return message
    if isinstance(exc, ConfigCompositionException):
        cause = exc.__cause__
        in_file = re.match(r"In '(\w+)/([^']+)': (\w+) raised while composing config:\s*(.*?)\n.*full_key: (\S+)",
                           str(exc), re.S)
        path = config_file(in_file[1], in_file[2], overrides) if in_file else None
        if path is not None and path.parent.parent != PACKAGED_CONFIGS:  # a key of a file in the user's config dir
            group, _, kind, first, full_key = in_file.groups()
            if kind not in ("ConfigKeyError", "ConfigAttributeError"):  # a wrong type: OmegaConf's words
                return f"{path}: {full_key}: {first}"
            if group == "randomize" and full_key == "randomize":  # packaged under env.randomize, as the packaged ones
                return f"{path}: a randomize config begins with the line `# @package env.randomize`"
            try:
                root = compose_config([a for a in overrides if override_key(a) != group])
            except Exception:  # noqa: BLE001 - a second problem: report the first one plainly
                root = None
            return f"{path}: {unknown_key(full_key, root, 'train')}"
        if not isinstance(cause, OmegaConfBaseException):
            return " ".join(str(exc).split())
        first = str(cause).splitlines()[0]
        if not isinstance(cause, (ConfigKeyError, ConfigAttributeError)) or not cause.full_key:
            merging = re.search(r"Error merging override (\S+?)=(\S*)", str(exc))
            if "is not a ListConfig" in first and merging:  # policy.hidden_sizes=256
                numbers = re.fullmatch(r"[-+0-9.e]+(,[-+0-9.e]+)*", merging[2])  # (abc: [abc] is no list of numbers)
                first += (f" A list is written {merging[1]}=[{merging[2]}]." if numbers else
                          f" A list is written in brackets, e.g. {merging[1]}=[256,256].")
            said = f"{merging[1]}={merging[2]}: " if merging else ""  # the key first, as robo-rl's own checks say it
            return f"{said}{first} ({' '.join(str(exc).split())}; see robo-rl train --help)"
        full_key = str(cause.full_key)
        try:  # the keys that do exist, in the config these overrides select
            root = compose_config([a for a in overrides if override_key(a) != full_key])
        except Exception:  # noqa: BLE001 - a second problem: report the first one plainly
            root = None
        return unknown_key(full_key, root, "train")
    if isinstance(exc, OmegaConfBaseException):
        return f"{str(exc).splitlines()[0]} (see robo-rl train --help)"
    return None


def run_training(cfg, run_dir: Path, overrides: list[str]) -> int:  # type: ignore[no-untyped-def]
    """Run one training job, turning known failures into a message and an exit code."""
    from envs.base import MissingDependency, WorkerDied
    from robo_rl.checkpoint import CheckpointError
    from robo_rl.validation import ConfigError
    from robo_rl.runners.stopping import (EnvError, Interrupted, NonFiniteError, RunWriteError, StopOnSignal,
                                          Terminated, out_of_memory, raise_terminated)
    from robo_rl.evaluation import EvaluationNotFinished
    from robo_rl.runs import remove_unused_run_dir
    from robo_rl.train import train

    existed = run_dir.exists() and any(run_dir.iterdir())

    def leave_nothing() -> None:
        """A run that failed before writing its config: remove the directory Hydra (and the lock) made, unless another
        process holds its lock (a run started into the same directory a moment earlier: its directory, not ours)."""
        if not existed:
            remove_unused_run_dir(run_dir)

    import signal

    StopOnSignal.received = None  # this job's signals only: a repeat of one the job stops for is ignored
    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)  # the loop installs its own, which saves
    except ValueError:  # not the main thread: signals stay as they are
        previous = None
    try:
        train(cfg, run_dir, overrides)
        return 0
    except Interrupted as exc:  # train() logged the resume command
        return 128 + exc.signum
    except Terminated:  # before the loop (nothing trained in this process) or while writing the summary
        leave_nothing()
        resumable = (run_dir / "config.yaml").exists()
        return error("stopped by SIGTERM outside the training loop" + (
            f"; the run's checkpoints are intact: continue with robo-rl train {shlex.quote(f'resume={run_dir}')}" if resumable
            else "; nothing was written"), EXIT_SIGTERM)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the loop began: no new checkpoint
        leave_nothing()
        return error("aborted by Ctrl-C" + (f"; train.log and summary.json in {run_dir} say where it stopped"
                                            if (run_dir / "summary.json").exists() else ""), EXIT_SIGINT)
    except (NonFiniteError, RunWriteError, EvaluationNotFinished, WorkerDied, EnvError) as exc:
        return error(str(exc), EXIT_FAILED)
    except FloatingPointError as exc:  # pretraining on demonstrations diverged (before config.yaml was written)
        leave_nothing()
        return error(str(exc), EXIT_FAILED)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError, MissingDependency) as exc:
        leave_nothing()
        return error(str(exc), EXIT_USAGE)
    except OSError as exc:  # a write outside the loop failed (the lock, config.yaml, train.log on a full disk): no traceback
        try:
            leave_nothing()
        except OSError:
            pass
        if exc.errno in (errno.EMFILE, errno.ENFILE):  # (envs, async workers' pipes, run files)
            return error(f"too many open files: lower env.num_envs, or raise the limit (ulimit -n, now {open_files_limit()})",
                         EXIT_FAILED)
        where = f" ({exc.filename})" if exc.filename else ""
        return error(f"could not write the run in {run_dir}{where}: {exc.strerror or exc}", EXIT_FAILED)
    except (MemoryError, RuntimeError) as exc:
        reason = out_of_memory(exc)
        if reason is None:
            raise
        leave_nothing()
        return error(f"out of memory: {reason}; lower what the config sizes: env.num_envs, algo.batch_size, the "
                     "buffers (algo.buffer_size, algo.rollout_steps), the networks (*_hidden, hidden_sizes, "
                     "algo.num_critics) or the samples per state (algo.num_samples, algo.num_candidates, "
                     "policy.components, policy.steps)", EXIT_FAILED)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def open_files_limit() -> str:
    """This process's limit on open files, as ``ulimit -n`` shows it."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return "unknown"
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft)


