"""Reading a run directory back: its config, and its policy from a checkpoint."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Iterator

from omegaconf import DictConfig, OmegaConf, open_dict

from robo_rl.config import (ALGO_SCHEMAS, POLICY_SCHEMAS, TrainConfig, flatten_config, saved_algo_values,
                            saved_unit_actions)
from robo_rl.metrics import not_a_file
from robo_rl.validation import ConfigError

if TYPE_CHECKING:  # (torch is imported where a checkpoint is read: the CLI checks a config before importing it)
    from envs import BatchedEnv
    from policies.heads import PolicyHead

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"

log = logging.getLogger("robo_rl")


class RunDirBusy(ConfigError):
    """Another process is training in this run directory (found before anything is written)."""


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` for a training process (new or resumed): a second one
    started into the same directory, or a resume of a run still training, fails at once instead of
    interleaving metrics and checkpoints. An advisory ``flock`` on ``run_dir/.lock``, released by the
    kernel when the process ends however it ends, so a crash leaves no stale lock; the file stays."""
    try:
        import fcntl  # noqa: F401  (POSIX only: _lock_or_refuse uses it)
    except ImportError:  # not POSIX: no lock (documented)
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    _refuse_odd_lock_file(run_dir)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        unsupported = _lock_or_refuse(fd, run_dir)
        if unsupported is not None:
            log.warning(f"cannot lock {run_dir} ({unsupported}); nothing stops a second process "
                        "writing there")
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _lock_or_refuse(fd: int, run_dir: Path, key: str = "run_dir") -> OSError | None:
    """Take the exclusive lock on ``fd`` (``run_dir``'s lock file), or raise RunDirBusy naming the process that
    holds it (and ``key``, the option that named the directory); a filesystem without locks (e.g. ENOLCK) is returned,
    not raised."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return exc
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
    if key == "resume":  # (another run_dir is no way to continue this run)
        raise RunDirBusy(f"resume={run_dir} is in use by another robo-rl training process ({holder}): that run is "
                         "still training; resume it once it has stopped")
    raise RunDirBusy(f"{key}={run_dir} is in use by another robo-rl training process ({holder}); wait for it "
                     f"to end, or choose another {key}")


def refuse_busy_run_dir(run_dir: Path, key: str = "run_dir") -> None:
    """Raise RunDirBusy if a training process holds ``run_dir``'s lock now (named as ``key``= gave it). Checked
    before anything else about a run directory, so that a run still starting (no checkpoint yet) is reported as in
    use, not as a run with nothing to resume; ``run_dir_lock`` then takes the lock for real."""
    _refuse_odd_lock_file(run_dir)
    try:
        import fcntl  # noqa: F401  (POSIX only, as run_dir_lock)

        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except (ImportError, OSError):  # no lock file: no run has trained there (or no POSIX locks)
        return
    try:
        _lock_or_refuse(fd, run_dir, key)  # taken, it is released with the descriptor below
    finally:
        os.close(fd)


def remove_unused_run_dir(run_dir: Path) -> None:
    """Remove ``run_dir`` when it holds nothing but the lock file and no process holds that lock: what a run that
    failed before writing anything leaves. A directory whose lock another process holds is left as it is: it is that
    process's run, before its config.yaml (a second train refused by the lock removed the first one's directory,
    and the first then failed writing its config). So is one whose lock cannot be taken here (no POSIX locks)."""
    if not run_dir.is_dir() or {p.name for p in run_dir.iterdir()} - {LOCK_FILE}:
        return
    fd = None
    try:
        if (run_dir / LOCK_FILE).exists():
            import fcntl

            fd = os.open(run_dir / LOCK_FILE, os.O_RDWR)  # (NFS emulates flock with fcntl locks: write access)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while the two go: no process starts in between
            if {p.name for p in run_dir.iterdir()} - {LOCK_FILE}:  # a run wrote there before the lock was ours
                return
        (run_dir / LOCK_FILE).unlink(missing_ok=True)
        run_dir.rmdir()
    except (ImportError, OSError):  # locked by another process, no POSIX locks, or something appeared meanwhile
        pass
    finally:
        if fd is not None:
            os.close(fd)


def _refuse_odd_lock_file(run_dir: Path) -> None:
    """Raise ConfigError if ``run_dir/.lock`` is there but is no regular file: opening a named pipe waits for a writer
    (the command hung), and a directory or device cannot hold the lock."""
    path = run_dir / LOCK_FILE
    problem = not_a_file(path)
    if problem is not None and problem != "no such file":
        raise ConfigError(f"run_dir={run_dir}: {path} is {problem}, not the lock file training keeps there; remove it")


def saved_group_choices(overrides: list[str]) -> list[str]:
    """``algo=`` and ``policy=`` as the run in ``resume=<dir>`` chose them, for the groups ``overrides`` does
    not choose itself (and its ``config_dir=``, while that directory is there, when ``overrides`` gives none):
    composed with these, a resumed SAC run's own keys (``algo.batch_size``) are known instead of being checked
    against the default learner's, and ``env=my_robot`` is found in the run's own config dir. Empty when there is no single readable run to
    resume (its problem is reported where the run is loaded)."""
    saved = resumed_config(overrides)
    if saved is None:
        return []
    given = {k.lstrip("+~") for k, _ in (o.split("=", 1) for o in overrides if "=" in o)}
    choices = [f"{group}={saved[group].name}" for group in ("algo", "policy") if group not in given]
    from robo_rl.config import config_dir_problem

    # a run made with --config-dir: its directory too, for the command line's choices from it (env=my_robot); the
    # run continues from its saved config.yaml, so a directory since moved or removed is not needed otherwise
    if saved.get("config_dir") and "config_dir" not in given and config_dir_problem(Path(saved.config_dir)) is None:
        choices.append(f"config_dir={saved.config_dir}")
    return choices


def resumed_config(overrides: list[str]) -> DictConfig | None:
    """The saved config of the one run ``overrides`` resume (``resume=<dir>``), or None (no single readable run)."""
    from robo_rl.commands.common import unquoted

    resume = [o.split("=", 1)[1].strip() for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+~") == "resume"]
    if len(resume) != 1 or resume[0] in ("", "null", "None") or ("," in resume[0] and unquoted(resume[0]) == resume[0]):
        return None
    try:
        return load_run_config(unquoted(resume[0]))
    except (OSError, ValueError):
        return None


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config a run was started with, checked against the current schemas."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        if (Path(run_dir) / "multirun.yaml").is_file():  # a -m sweep's directory: its runs are one level down
            jobs = sorted(str(p.parent) for p in Path(run_dir).glob(f"*/{CONFIG_FILE}"))
            named = f" ({', '.join(jobs[:3])}{', ...' if len(jobs) > 3 else ''})" if jobs else ""
            raise FileNotFoundError(f"{run_dir} is a -m sweep's directory, not one run: give one of its jobs' "
                                    f"directories{named}, or continue the whole sweep by running it again with -m "
                                    f"and run_dir={run_dir}")
        if not Path(run_dir).exists():
            raise FileNotFoundError(f"{run_dir} does not exist; give a run's directory")
        if not Path(run_dir).is_dir():
            raise FileNotFoundError(f"{run_dir} is a file, not a run's directory")
        problem = not_a_file(path)  # (a directory, a device, a broken link there: not the same as no file)
        what = "missing" if problem == "no such file" else f"is {problem}, not a run's config file"
        hint = ""
        if problem == "no such file" and (Path(run_dir) / "checkpoints").is_dir():  # build_runner(...).train() wrote it
            hint = ("; a run made by robo_rl.build.build_runner writes none: load its weights with "
                    "robo_rl.runs.load_learner(cfg, env, checkpoint), cfg the config it was composed with (a learner or "
                    "head you built yourself: learner.load_training_state(robo_rl.checkpoint.load_checkpoint("
                    "checkpoint)[0]['learner']))")
        raise FileNotFoundError(f"{run_dir} is not a robo-rl run directory ({CONFIG_FILE} {what}){hint}")
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    try:
        saved = OmegaConf.load(path)
    except (yaml.YAMLError, UnicodeDecodeError, OmegaConfBaseException) as exc:
        raise ValueError(f"{path} is not valid YAML ({' '.join(str(exc).split())}); it was edited or damaged") from None
    if not isinstance(saved, DictConfig):
        raise ValueError(f"{path} holds a {type(saved).__name__}, not a run config (a mapping of keys)")
    if not saved:  # a run writes it whole (write_text_atomic): emptied since
        raise ValueError(f"{path} is empty; it was edited or damaged (a run writes its whole config there)")
    algo, head = (OmegaConf.select(saved, f"{group}.name", default=None) for group in ("algo", "policy"))
    if algo not in ALGO_SCHEMAS or head not in POLICY_SCHEMAS:
        raise ValueError(f"{path}: unknown algo.name={algo!r} or policy.name={head!r}")
    if head in ("gaussian", "mixture") and "unit_actions" not in saved.policy:
        # saved before 2026-12-05, when an unsquashed head's Gaussian was over env units: keep acting as trained
        saved.policy.unit_actions = saved_unit_actions(saved.policy)
    for key, value in saved_algo_values(saved.algo).items():  # (GoRL's refit reset before 2026-12-05)
        saved.algo[key] = value
    schema = OmegaConf.structured(TrainConfig)
    schema.algo = OmegaConf.structured(ALGO_SCHEMAS[algo])
    schema.policy = OmegaConf.structured(POLICY_SCHEMAS[head])
    try:
        cfg = OmegaConf.merge(schema, saved)
    except OmegaConfBaseException as exc:  # a key no schema has, a value of the wrong type
        key = getattr(exc, "full_key", None)
        raise ValueError(f"{path}: {f'{key}: ' if key else ''}{str(exc).splitlines()[0]} (the file was edited, or "
                         "written by a robo-rl whose config keys differ)") from None
    OmegaConf.set_struct(cfg, True)
    return cfg


def config_edits(cfg: DictConfig, saved: Any, ignore: Collection[str]) -> list[tuple[str, Any, Any]]:
    """``(key, value in cfg, value in saved)`` for each key whose value in ``cfg`` (a run's config.yaml) differs from
    ``saved`` (the config a checkpoint records it was trained with), but those in ``ignore``. Keys only one side has are
    schema keys added since the checkpoint, except under env.kwargs (the task's keyword arguments, free-form): those
    are compared as one mapping, so an added or removed one counts. Checkpoints before 2026-12-04 record no config."""
    if not isinstance(saved, dict):
        return []
    current = json.loads(json.dumps(OmegaConf.to_container(cfg, resolve=True)))
    now, then = flatten_config(current), flatten_config(saved)
    now = {k: v for k, v in now.items() if not k.startswith("env.kwargs.")}
    then = {k: v for k, v in then.items() if not k.startswith("env.kwargs.")}
    now["env.kwargs"] = (current.get("env") or {}).get("kwargs")
    then["env.kwargs"] = (saved.get("env") or {}).get("kwargs", now["env.kwargs"])
    return [(k, now[k], then[k]) for k in now if k in then and now[k] != then[k] and k not in ignore]


def describe_config_edits(edits: list[tuple[str, Any, Any]], where: str = "config.yaml") -> str:
    shown = "; ".join(f"{k} is {now!r} in {where}, {then!r} in the checkpoint" for k, now, then in edits[:3])
    return shown + (f" (and {len(edits) - 3} more)" if len(edits) > 3 else "")


def directory_problem(path: Path) -> str | None:
    """Why no run directory can be made or written at ``path`` (it is a file, or lies under one, or the nearest existing
    directory is not writable by this process or refuses a new directory), or None."""
    dangling = next((p for p in (path, *path.parents) if p.is_symlink() and not p.exists()), None)
    if dangling is not None:  # exists() is false for it, and Hydra's mkdir failed with "File exists"
        return (f"{'that' if dangling == path else str(dangling)} is a symbolic link to {os.readlink(dangling)}, which "
                "does not exist; create its target or choose another path")
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker == path:
        return "that is a file, not a directory; choose a directory"
    if blocker is not None:
        return f"{blocker} is a file, so no directory can be made under it; choose another path"
    # a directory without write permission (or on a read-only filesystem) failed with a bare PermissionError, from
    # Hydra's mkdir on the command line, from the run's lock from Python
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return None
    what = "that directory" if existing == path else str(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{what} is not writable by this user, so the run cannot be written there; choose another path"
    # root passes os.access everywhere, and some filesystems refuse what their permissions allow (/proc, sysfs): a
    # directory made and removed at once meets what the run's own mkdir would (there: a traceback from Hydra)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".robo_rl_probe_", dir=existing))
    except OSError as exc:
        return (f"{what} does not accept new directories ({exc.strerror}), so the run cannot be written there; "
                "choose another path")
    return None


def resolve_checkpoint(run_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    from robo_rl.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints

    if checkpoint is not None:
        path, own = Path(checkpoint), Path(run_dir) / "checkpoints"
        if not path.exists() and len(path.parts) == 1 and (own / path).is_dir():
            return own / path  # checkpoint=step_0000000480: a name in the run's checkpoints/
        if not path.exists():
            names = [p.name for p in list_checkpoints(own)]
            held = (f"{own} holds {', '.join(names[-5:])}" + (f" (and {len(names) - 5} older)" if len(names) > 5 else "")
                    if names else f"{own} holds no checkpoint")
            raise CheckpointError(f"checkpoint={checkpoint} does not exist; {held}")
        return path
    # names a checkpoint it skips; tidies nothing: the run may be training, its saves' PIDs from another host
    path = latest_checkpoint(Path(run_dir) / "checkpoints", warn=log.warning, tidy=False)
    if path is None:
        raise CheckpointError(f"{run_dir} holds no complete checkpoint")
    return path


def foreign_checkpoint(run_dir: str | Path, checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` is not one of ``run_dir``'s own (``<run_dir>/checkpoints/step_...``): eval and export
    refuse it, as their results would be given as this run's (its eval.json, its config with another run's weights)."""
    return Path(checkpoint).resolve().parent != (Path(run_dir) / "checkpoints").resolve()


def _shape(t) -> str:  # type: ignore[no-untyped-def]
    return str(list(getattr(t, "shape", ())))


def state_mismatch(expected: dict, given: dict) -> str | None:  # type: ignore[type-arg]
    """The first difference of each kind between a module's state_dict and a checkpoint's, in one line (None if
    the keys and shapes agree): a key the checkpoint lacks, one it has in excess, a tensor of another shape."""
    parts = []
    for what, keys in (("missing", [k for k in expected if k not in given]),
                       ("unexpected", [k for k in given if k not in expected])):
        if keys:
            parts.append(f"{what} {keys[0]}" + (f" and {len(keys) - 1} more" if len(keys) > 1 else ""))
    sized = [k for k in expected if k in given and hasattr(given[k], "shape")
             and tuple(given[k].shape) != tuple(expected[k].shape)]
    if sized:
        k = sized[0]
        parts.append(f"{k} is {_shape(given[k])} in the checkpoint, {_shape(expected[k])} here"
                     + (f", {len(sized) - 1} more of another shape" if len(sized) > 1 else ""))
    return "; ".join(parts) or None


def _saved_by(checkpoint: Path, algo: str) -> str:
    """'; it was saved by a td3 run (<dir>)' when ``checkpoint`` lies in a run of another algorithm than ``algo``."""
    run = Path(checkpoint).parent.parent
    if not_a_file(run / CONFIG_FILE) is not None:  # (a named pipe there would wait for a writer)
        return ""
    try:
        import yaml

        other = yaml.safe_load((run / CONFIG_FILE).read_text())["algo"]["name"]
    except Exception:  # noqa: BLE001 - only a hint: no readable config next to it, nothing to add
        return ""
    return f"; it was saved by a {other} run ({run})" if other != algo else ""


class ConfigEditedError(ConfigError):
    """The config a checkpoint's weights are loaded with differs from the one they were trained with (keys a resume
    may not change): config.yaml edited since, or another run's checkpoint among the run's own. ``edits``: the
    differences, as ``config_edits`` lists them."""

    def __init__(self, message: str, edits: list[tuple[str, Any, Any]]) -> None:
        super().__init__(message)
        self.edits = edits


def load_learner(cfg: DictConfig, env: BatchedEnv, checkpoint: Path, device: str = "cpu",
                 config_file: Path | None = None):  # -> Learner
    """Build the run's learner on ``device`` and load every module (policy, critics, normalizers) from ``checkpoint``.

    ``cfg``: the run's (``load_run_config``), or the one it was composed from (``compose_config``, e.g. a run made by
    ``build_runner``, which writes no config.yaml): its null keys mean the defaults the run filled in. A ``cfg`` that
    differs from the checkpoint's own is a ConfigEditedError naming ``config_file``, where ``cfg`` was read from."""
    from robo_rl.build import build_learner, build_policy
    from robo_rl.checkpoint import CheckpointError, load_checkpoint
    from robo_rl.defaults import resolve_defaults

    # unresolved, the nulls compared as edits against the checkpoint's resolved config ("policy.activation is None in
    # config.yaml, 'relu' in the checkpoint"), a refusal naming a file the caller never wrote
    cfg = resolve_defaults(cfg)

    if str(cfg.device) != str(device):  # built on the device it acts on, not the one it trained on (cfg.device): a
        cfg = cfg.copy()                # run trained on cuda loads on a machine without CUDA
        with open_dict(cfg):
            cfg.device = str(device)
    state, _ = load_checkpoint(checkpoint, load_replay=False)
    import torch

    with torch.random.fork_rng(devices=[]):  # the networks' initial draws, replaced by the checkpoint's weights, come
        # from a copy of torch's generator: load_run and export_run left a caller's seeded stream moved on
        learner = build_learner(cfg, build_policy(cfg, env), to_act=True)
    saved = state.get("learner") if isinstance(state, dict) else None
    modules = saved.get("modules") if isinstance(saved, dict) else None
    if not isinstance(modules, dict):
        raise CheckpointError(f"checkpoint {checkpoint} holds no learner modules (state.json has no learner.modules)")
    # the same wording as a resume that does not fit (runners/checkpoints.py:_load_resumable), on one line
    why = None
    try:  # (a head may fill in a key older checkpoints lack, e.g. LatentDecoderHead.latent_scale)
        learner.load_state_dict(modules, strict=True)
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        why = state_mismatch(learner.state_dict(), modules)
        if why is None:  # not a key or shape: torch's own words (its first line is a heading)
            why = " ".join(line.strip() for line in str(exc).splitlines()[:2])
            why = f"{type(exc).__name__}: {why:.300}"
    from robo_rl.train import RESUME_OVERRIDABLE

    edits = config_edits(cfg, state.get("config"), RESUME_OVERRIDABLE | {"device"})
    if why is not None:
        saved_by = _saved_by(checkpoint, cfg.algo.name)
        # networks that do not fit, and a config that differs from the one they were trained with (policy.hidden_sizes
        # edited in config.yaml): the message named the checkpoint only, never the file that changed
        differs = (f"; {config_file or 'the config'} differs from the config it was trained with "
                   f"({describe_config_edits(edits, config_file.name if config_file else 'the config')}): edited "
                   "since, or another run's checkpoint?" if edits and not saved_by else "")
        raise CheckpointError(f"checkpoint {checkpoint} does not fit this run's {cfg.algo.name} learner ({why})"
                              f"{saved_by}{differs}; give a checkpoint of this run "
                              "(checkpoint=<run_dir>/checkpoints/step_...)")
    # weights that fit, under a config.yaml edited since (env.kwargs, a learner's setting): an evaluation of another
    # task, an export whose sidecar gives deploy that task, as the run's; a resume refuses the same edit
    if edits:
        if config_file is None:  # (a config given in Python: no file to name)
            raise ConfigEditedError(f"the config differs from the one checkpoint {checkpoint} was trained with: "
                                    f"{describe_config_edits(edits, 'the config')}; load it with the run's own config",
                                    edits)
        raise ConfigEditedError(f"{config_file} was edited since checkpoint {checkpoint} was saved: "
                                f"{describe_config_edits(edits)}; the weights act with the config they were trained "
                                "with: put the file back as it was", edits)
    return learner.to(device).eval().requires_grad_(False)


def load_policy(cfg: DictConfig, env: BatchedEnv, checkpoint: Path, device: str = "cpu") -> PolicyHead:
    """The policy a run acts with (EXPO/PA-RL-style learners choose with their critic), loaded from ``checkpoint``."""
    return load_learner(cfg, env, checkpoint, device).policy


def load_run_learner(cfg: DictConfig, env: BatchedEnv, run_dir: str | Path, checkpoint: str | Path | None = None,
                     device: str = "cpu", chosen: Path | None = None):  # -> tuple[Learner, Path, dict]
    """``(learner, checkpoint path, its manifest)``: the learner of ``checkpoint`` (see ``resolve_checkpoint``), or of
    the run's newest complete checkpoint that fits it (``chosen``, when the caller has already resolved the newest).

    As a resume does, a newest checkpoint that verifies but cannot be loaded into this run's learner (another run's
    copied in, with other network sizes or keys, or trained with another config than config.yaml's while an older
    checkpoint here was trained with it) is named in a warning, with why, and the newest older one that loads is
    used; a ``checkpoint=`` is loaded or refused. A run still training saves and prunes its checkpoints meanwhile (down
    to ``checkpoint.keep``): the newest one can be deleted between being chosen and being read. Then the newest is
    chosen again, instead of stopping on a checkpoint that "does not exist" or "is incomplete" (half deleted)."""
    from robo_rl.checkpoint import (CheckpointError, checkpoint_step, latest_checkpoint, list_checkpoints,
                                    verify_checkpoint)

    own = Path(run_dir) / "checkpoints"
    path = Path(chosen if chosen is not None else resolve_checkpoint(run_dir, checkpoint))
    skipped: list[Path] = []
    edited: ConfigEditedError | None = None  # the newest checkpoint's: config.yaml edited, unless an older one fits
    while True:
        try:
            manifest = verify_checkpoint(path, replay=False)  # the weights are read, not the replay
            return load_learner(cfg, env, path, device, Path(run_dir) / CONFIG_FILE), path, manifest
        except (CheckpointError, ConfigEditedError) as exc:
            if checkpoint is not None:
                raise
            if isinstance(exc, ConfigEditedError) and edited is None:
                edited = exc
            newest = latest_checkpoint(own, tidy=False)
            if newest is not None and checkpoint_step(newest) > checkpoint_step(path) and newest not in skipped:
                path = newest  # a newer save pruned the one chosen
                continue
            older = [p for p in reversed(list_checkpoints(own)) if checkpoint_step(p) < checkpoint_step(path)
                     and p not in skipped]
            if not older:
                if edited is not None:  # no checkpoint here was trained with config.yaml's config: the file was edited
                    raise edited from None
                raise
            why = (f"it was trained with another config than {Path(run_dir) / CONFIG_FILE} holds "
                   f"({describe_config_edits(exc.edits)}): another run's checkpoint copied in?"
                   if isinstance(exc, ConfigEditedError) else str(exc))
            log.warning(f"skipping {path.name}: {why}; trying {older[0].name}")
            skipped.append(path)
            path = older[0]


def load_run_policy(cfg: DictConfig, env: BatchedEnv, run_dir: str | Path, checkpoint: str | Path | None = None,
                    device: str = "cpu", chosen: Path | None = None) -> tuple[PolicyHead, Path, dict]:
    """``(policy, checkpoint path, its manifest)``: the acting policy of ``load_run_learner``'s checkpoint."""
    learner, path, manifest = load_run_learner(cfg, env, run_dir, checkpoint, device, chosen)
    return learner.policy, path, manifest


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None, device: str = "cpu") -> tuple[PolicyHead, DictConfig]:
    """A finished (or running) run's acting policy and config, in one call: ``(policy, cfg)``.

    The policy comes from the newest complete checkpoint that fits the run (or ``checkpoint``; see
    ``load_run_learner``), verified against its manifest, in
    eval mode without gradients: ``policy.act(obs, deterministic=True)`` maps raw observations [B, obs_dim] to
    actions [B, act_dim] in env units (``policy.act(obs)`` samples). ``robo_rl.build.build_env(cfg,
    randomize=False, safety=True)`` builds the run's nominal task behind its safety filters (if it trained with any),
    e.g. for ``robo_rl.evaluation.evaluate(policy, env, 10)``, the evaluation ``robo-rl eval`` runs: the returned
    ``cfg.device`` is ``device`` (a run trained on cuda loads on a CPU), so that env is on the policy's device.
    """
    from robo_rl.build import build_env
    from robo_rl.validation import check_device

    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"load_run(run_dir) takes a run directory (a str or Path), got {run_dir!r}")
    check_device(str(device))  # before anything loads (a cuda device here without CUDA failed in torch, after loading)
    cfg = load_run_config(run_dir)
    with open_dict(cfg):  # the policy's device: build_env(cfg) then gives an env it can act in (as robo-rl eval device=)
        cfg.device = str(device)
    chosen = resolve_checkpoint(run_dir, checkpoint)  # (a missing one named before the env is built)
    env = build_env(cfg, num_envs=1, vectorization="sync", randomize=False)  # its spaces size the networks
    try:
        return load_run_policy(cfg, env, run_dir, checkpoint, device, chosen)[0], cfg
    finally:
        env.close()

