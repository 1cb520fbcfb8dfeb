"""`robo-rl train -m ...`: what a Hydra multirun sweeps, and every job's config checked before the first starts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from robo_rl.commands.common import override_key, unquoted

TRAIN_ARGS: list[str] = []  # the overrides of this `robo-rl train` command, as the user typed them
GROUPS = ("algo", "env", "policy", "safety", "randomize")  # config groups (choosing one replaces a subtree)


def swept_on_command_line() -> dict[str, list[str]]:
    """The swept keys of this command and their values: ``algo=sac,td3`` -> {"algo": ["sac", "td3"]}."""
    out: dict[str, list[str]] = {}
    for a in TRAIN_ARGS:
        if "=" in a and is_sweep(a.split("=", 1)[1]):
            values = sweep_values(a, TRAIN_ARGS)
            out[override_key(a)] = [v.split("=", 1)[1] for v in values] if values else [a.split("=", 1)[1]]
    return out


def for_hydra_multirun(args: Sequence[str]) -> list[str]:
    """``-m`` overrides as Hydra can start them. Hydra composes one sweep-level config before the jobs, with
    the default of every swept config group: ``-m algo=sac,td3 algo.learning_starts=100`` fails there
    (PPO, the default, has no learning_starts) although every job has the key. An override inside a
    swept group (or in the head group, when the swept algorithms pick the head) is passed as
    ``++key=value`` (set, or add to that sweep-level config): the same value in every job, whose configs
    were all checked before (``sweep_problem``)."""
    swept_groups = {k for k in swept_on_command_line() if k in GROUPS}
    if "algo" in swept_groups and not any(override_key(a) == "policy" for a in args if "=" in a):
        swept_groups.add("policy")  # each algorithm picks its own head: -m algo=expo,parl policy.steps=2
    out = []
    for a in args:
        key = override_key(a) if "=" in a else ""
        plain = "=" in a and not a.startswith(("+", "~")) and not is_sweep(a.split("=", 1)[1])
        out.append(f"++{a}" if plain and key.split(".", 1)[0] in swept_groups and "." in key else a)
    return out


def swept_values_by_job() -> list[str]:
    """The swept values of each job of this command's sweep (``seed=1 algo=td3``), in the order Hydra's basic
    sweeper runs them: the product of the overrides in command-line order (a key given twice at its first
    place, with its last value)."""
    import itertools

    by_key = values_by_key()
    jobs = list(itertools.product(*by_key.values()))
    swept = [len(v) > 1 for v in by_key.values()]
    return [" ".join(o for o, s in zip(job, swept) if s) for job in jobs]


def values_by_key() -> dict[str, list[str]]:
    """Each key of this command's overrides and its values as ``key=value`` (a key given twice keeps its first
    place and its last values, as Hydra's basic sweeper does)."""
    by_key: dict[str, list[str]] = {}
    for a in TRAIN_ARGS:
        if "=" in a and not a.startswith("-"):
            values = sweep_values(a, TRAIN_ARGS) if is_sweep(a.split("=", 1)[1]) else [a]
            by_key[a.split("=", 1)[0]] = values or [a]
    return by_key


def job_values(task_overrides: Sequence[str]) -> str:
    """One job's swept values as ``swept_values_by_job`` writes them (``seed=1 algo=td3``), read from the job's own
    overrides: Hydra runs a ``shuffle()`` sweep in an order of its own, so a job's number does not say which it is.
    Empty when no key takes more than one value (the sweep's only job)."""
    swept = {k for k, v in values_by_key().items() if len(v) > 1}
    return " ".join(o for o in task_overrides if o.split("=", 1)[0] in swept)


# The longest name of one directory on the usual filesystems (ext4, APFS, NTFS: 255 bytes or characters)
NAME_MAX = 255


def job_dir_part(override: str) -> str:
    """One override as a piece of a job directory's name: without the backslashes Hydra's sweeper escapes a value's
    ``:``, ``=``, spaces, brackets with (``my.pkg\\:Arm-v0``), and with each ``/`` (or ``\\``) written ``-``, which
    would make the name a path of nested directories (``env.id=robo_rl/TwoGoals-v0``, ``demos.path=a/b.npz``)."""
    import re

    return re.sub(r"\\([\\()\[\]{}:=, \t])", r"\1", override).replace("/", "-").replace("\\", "-")


def job_dir_name(task_overrides: Sequence[str], job_num: int) -> str:
    """The directory of one job of this command's sweep, under the sweep's directory: its swept values
    (``-m seed=0,1,2`` -> ``seed=1``); a sweep of one job, whose keys take one value each (``-m seed=0``), by its
    overrides but ``run_dir=`` and those a resume may change (so another such sweep into that directory gets
    a directory of its own, and the same one with more ``steps=`` continues it); ``job<n>`` when that leaves none.
    A name longer than ``NAME_MAX`` bytes keeps its start and ends with a hash of the whole."""
    from robo_rl.train import RESUME_OVERRIDABLE

    swept = swept_on_command_line()
    parts = [o for o in task_overrides if override_key(o) in swept]
    if not parts and not any(len(v) > 1 for v in values_by_key().values()):
        parts = [o for o in task_overrides if override_key(o) not in RESUME_OVERRIDABLE]
    return fitted(",".join(job_dir_part(o) for o in parts) or f"job{job_num}")


def job_dir_name_of(job: Sequence[str]) -> str:
    """``job_dir_name`` of a sweep's job from its swept values (key=value, in command-line order), before Hydra runs it."""
    return fitted(",".join(job_dir_part(o) for o in job))


def fitted(name: str, end: str = "") -> str:
    """``name + end`` as one directory's name: over ``NAME_MAX`` bytes, ``name`` keeps its start and ends with a
    hash of the whole (``end``, e.g. a sweep's time, is kept)."""
    import hashlib

    if len((name + end).encode()) <= NAME_MAX:
        return name + end
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    head = name.encode()[:NAME_MAX - len(digest) - 1 - len(end.encode())].decode(errors="ignore")  # no half character
    return f"{head}-{digest}{end}"


def is_sweep(value: str) -> bool:
    """Whether a command-line value is a Hydra sweep (a,b / range(...) / choice(...) / glob(...) / shuffle(...) / sort(...))."""
    if value.startswith(("range(", "choice(", "glob(", "interval(", "shuffle(", "sort(")):
        return True
    depth, quote, escaped = 0, "", False
    for ch in value:  # a comma inside quotes is literal ('a,b' is one value; 'a b','c d' two)
        if quote:
            quote = "" if ch == quote and not escaped else quote
            escaped = ch == "\\" and not escaped
            continue
        if ch in "'\"":
            quote = ch
            continue
        depth += ch in "[{(" and 1 or 0
        depth -= ch in "]})" and 1 or 0
        if ch == "," and depth == 0:
            return True
    return False


def sweep_values(override: str, overrides: Sequence[str] = ()) -> list[str] | None:
    """``seed=0,1,2`` -> ``[seed=0, seed=1, seed=2]``, ``algo=glob(*,exclude=[ppo])`` -> one per matching config
    of the group (the user's too, from a config_dir= among ``overrides``); None if it cannot be expanded here
    (Hydra's own run then reports it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra.core.override_parser.types import Glob

    try:
        (parsed,) = OverridesParser.create().parse_overrides([override])
        value = parsed.value()
        if isinstance(value, Glob):  # over a config group's options: algo=glob(*,exclude=[ppo])
            from robo_rl.config import group_options

            values = value.filter(group_options(override_key(override), overrides))
        else:
            values = list(parsed.sweep_string_iterator())
    except Exception:  # noqa: BLE001 - Hydra's own run reports a malformed sweep
        return None
    prefix = f"{override[:len(override) - len(override.lstrip('+~'))]}{override_key(override)}="
    return [prefix + v for v in values] or None


# At most this many configs of a sweep are composed before it starts (~0.1 s each). A larger sweep is
# checked one swept value at a time (every value of every swept key once, the other sweeps at their first
# value), and if that is still too many, its first MAX_CHECKED_JOBS such configs; the rest are checked as
# each job starts.
MAX_CHECKED_JOBS = 256


def sweep_problem(plain: list[str], sweeps: list[tuple[int, list[str]]]) -> str | None:
    """Compose and validate every job of a multirun before Hydra starts the first one."""
    import itertools
    import math

    from hydra import compose
    from omegaconf import open_dict

    from robo_rl.build import check_head_and_learner
    from robo_rl.commands.train import composition_message, register_resolvers  # (it imports this module)
    from robo_rl.config import (check_user_groups, naming_user_file, packaged_hydra, register_schemas, search_path,
                                with_config_dir)
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import ConfigError, validate

    plain = with_config_dir(plain)  # (an absolute config_dir=, in its place: the positions of the sweeps stay)
    resumed = [o.split("=", 1)[1] for o in plain if "=" in o and override_key(o) == "resume"]
    if resumed and unquoted(resumed[-1].strip()) not in ("", "null", "None") and not any(
            override_key(v[0]) == "resume" for _, v in sweeps):
        # every job would continue that one run in turn, and the sweep's own directory would hold no run
        return (f"resume={unquoted(resumed[-1].strip())} continues one run: give it without -m; to continue a sweep, "
                "run it again with run_dir=<its directory> (its jobs resume, the unstarted ones start)")
    given = [unquoted(o.split("=", 1)[1].strip()) for o in plain if "=" in o and override_key(o) == "run_dir"]
    if given and given[-1] not in ("", "null", "None") and (Path(given[-1]) / "config.yaml").is_file():
        # its jobs would go below a run, where robo-rl compare runs=<it> sees that one run and none of them
        return (f"run_dir={given[-1]} holds a run (config.yaml): a sweep's run_dir= is the directory its jobs go "
                "under; choose a new directory (or the directory of the sweep to continue)")
    for _, values in sweeps:
        key = override_key(values[0])
        if key in ("run_dir", "resume"):
            return (f"{key} cannot be swept: jobs go into directories under run_dir= (one path), named by their "
                    "swept values; to continue a sweep, run it again with run_dir=<its directory>")
        seen = [v.split("=", 1)[1] for v in values]
        repeated = sorted({v for v in seen if seen.count(v) > 1})
        if repeated:  # two jobs with one directory: the second was refused after the first had trained
            return f"sweep {key}: {', '.join(repeated)} given more than once (each job needs its own directory)"
        named: dict[str, str] = {}
        for value in values:  # a / is written - in a job directory's name: a/b.npz and a-b.npz would share one
            other = named.setdefault(job_dir_part(value), value)
            if other != value:
                return (f"sweep {key}: {other.split('=', 1)[1]} and {value.split('=', 1)[1]} would share the job "
                        f"directory {job_dir_part(value)} (a / or \\ in a value is written -): sweep them in two commands, "
                        "each with its own run_dir=")
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
    register_resolvers()
    failed: tuple[tuple[str, ...], list[str], Exception] | None = None
    with packaged_hydra():
        for job in jobs:
            overrides = list(plain)
            for i, value in zip(positions, job):
                overrides[i] = value
            try:
                check_user_groups(overrides)
                cfg = compose(config_name="config", overrides=overrides + search_path(overrides))
                check_user_groups(overrides, cfg)
                if not cfg.resume:  # a resumed job runs its saved config, validated when it starts
                    resolved = resolve_defaults(cfg)
                    # a job of a sweep run again (run_dir=<its directory>) whose directory holds its run is resumed, as
                    # the job will be: checked as a resume (a saved key nothing reads, unread_keys, goes on)
                    if job and given and (Path(given[-1]) / job_dir_name_of(job) / "config.yaml").is_file():
                        with open_dict(resolved):
                            resolved.resume = str(Path(given[-1]) / job_dir_name_of(job))
                    validate(resolved)
                    check_head_and_learner(resolved)  # e.g. algo=td3 policy=gaussian, found by the learner
            except Exception as exc:  # noqa: BLE001 - described below (outside this Hydra context), or re-raised
                failed = (job, overrides, exc)
                break
    if failed is None:
        return None
    job, overrides, exc = failed
    message = (f"{naming_user_file(str(exc), overrides)} (no job was started)" if isinstance(exc, ConfigError)
               else composition_message(exc, overrides))
    if message is None:
        raise exc
    return f"sweep job {' '.join(job)}: {message}" if job else message
