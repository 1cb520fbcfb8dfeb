"""Demonstrations: a plain ``.npz`` file of transitions that warm-starts a run.

``robo-rl train demos.path=demos.npz`` does two things before the first env step of a new run:

1. **pretrain** the policy head with its own imitation loss (a Gaussian's negative log-likelihood,
   a flow's or diffusion's denoising loss, a mixture's likelihood, TD3's squared error; for the
   latent-decoder head of GoRL, the decoder is fitted from the latent prior and the latent policy
   reset to that prior, exactly like one of GoRL's refits). EXPO trains its base policy, PA-RL its
   head.
2. **preload replay** (off-policy learners, ``demos.replay=true``): the transitions go into the
   replay buffer, so the critic starts from them too.

A resumed run does neither (its checkpoint already holds the result). The file holds arrays
``obs`` [T, obs_dim], ``actions`` [T, act_dim] (env units, within the action bounds), and for the
replay preload ``rewards`` [T], ``next_obs`` [T, obs_dim] (the observation the step ended in, also
at episode ends) and ``terminated`` [T] (bootstrapping stops there; time-limit truncations are not
terminations), plus ``costs`` [T] (each step's safety cost) where the replay keeps them
(``safety.passivity_aware=true``). It is read with ``allow_pickle=False``; ``save_demos`` writes one.
"""

from __future__ import annotations

import logging
import math
import os
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robo_rl.metrics import new_hidden_file, not_a_file

log = logging.getLogger("robo_rl")

PRETRAIN_KEYS = ("obs", "actions")
REPLAY_KEYS = ("rewards", "next_obs", "terminated")
COST_KEY = "costs"  # [T], for a replay that keeps each step's safety cost (safety.passivity_aware=true)


class DemoError(ValueError):
    """A demonstrations file that cannot be used, with the file named and what to fix."""


def save_demos(path: str | Path, obs: Any, actions: Any, rewards: Any = None, next_obs: Any = None,
               terminated: Any = None, costs: Any = None) -> Path:
    """Write a demonstrations file (atomically: a crash leaves no half-written file, a failure no temp file)."""
    if not isinstance(path, (str, os.PathLike)):  # (an empty one is refused below, as for demos_out=)
        raise TypeError(f"save_demos: path must name a .npz file (a str or Path), got {path!r}")
    given = {"obs": obs, "actions": actions, "rewards": rewards, "next_obs": next_obs, "terminated": terminated,
             COST_KEY: costs}
    arrays = {}
    for key, value in given.items():
        if value is None:
            continue
        try:
            arrays[key] = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
        except ValueError as exc:  # e.g. a ragged list of rows
            raise DemoError(f"demonstrations {path}: {key} is not an array of numbers ({exc})") from None
    _check_destination(path, f"demonstrations {path}")
    path = Path(path)
    _check_arrays(arrays, path)  # the values as given: a float64 beyond float32's range is refused, not cast to inf
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    written = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a hidden file of this save's own: two saves of one file at once (two `robo-rl eval demos_out=`) shared
        # <name>.tmp, one renamed the other's half-written file into place and the other failed
        tmp = new_hidden_file(path)
        written = True
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException as exc:
        if written:  # whatever failed (a full disk, a directory in the way, Ctrl-C), no temp file stays behind
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DemoError(f"demonstrations {path}: cannot write the file ({_os_reason(exc)})") from None
        raise
    return path


def _os_reason(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return f"{reason}: {exc.filename}" if exc.filename else reason


def _check_destination(path: str | Path, what: str) -> None:
    """Refuse a file path that cannot be written: empty, a directory, a path under a file."""
    if not str(path).strip():  # Path("") is "."
        raise DemoError(f"{what}: an empty path; give a file path such as demos.npz")
    path = Path(path)
    if path.is_dir():
        raise DemoError(f"{what}: is a directory; give a file path such as {path / 'demos.npz'}")
    existing = path.absolute().parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DemoError(f"{what}: {existing} is a file, not a directory; choose a path in a directory")


def check_demos_out(path: str | Path, key: str = "demos_out") -> Path:
    """Check, before any work, that a demonstrations file can be written at ``path`` (named as ``key``):
    not a directory, not under a file, and a place where a file can be created (probed with a temporary
    file, removed again with any directory made for it)."""
    what = f"{key}={path}"
    _check_destination(path, what)
    path = Path(path)
    parent = path.absolute().parent
    made = []
    try:
        missing = [parent, *parent.parents]
        missing = missing[:next(i for i, p in enumerate(missing) if p.exists())]
        for d in reversed(missing):
            d.mkdir()
            made.append(d)
        import tempfile

        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise DemoError(f"{what}: cannot write a file there ({_os_reason(exc)}); choose a writable path") from None
    finally:
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                pass
    return path


def _check_arrays(arrays: dict[str, np.ndarray], path: Path, obs_dim: int | None = None,
                  act_dim: int | None = None) -> None:
    missing = [k for k in PRETRAIN_KEYS if k not in arrays]
    if missing:
        raise DemoError(f"demonstrations {path}: missing array(s) {', '.join(missing)} (need obs [T, obs_dim] and "
                        f"actions [T, act_dim]; see robo_rl/demos.py)")
    obs, actions = arrays["obs"], arrays["actions"]
    if obs.ndim != 2 or actions.ndim != 2 or obs.shape[0] != actions.shape[0] or obs.shape[0] == 0:
        raise DemoError(f"demonstrations {path}: obs {obs.shape} and actions {actions.shape} must be 2-D with the "
                        "same, non-zero number of rows")
    if obs_dim is not None and obs.shape[1] != obs_dim:
        raise DemoError(f"demonstrations {path}: observations have {obs.shape[1]} dims, the env {obs_dim}")
    if act_dim is not None and actions.shape[1] != act_dim:
        raise DemoError(f"demonstrations {path}: actions have {actions.shape[1]} dims, the env {act_dim}")
    n = obs.shape[0]
    for key in (*REPLAY_KEYS, COST_KEY):
        if key in arrays:
            want = (n, obs.shape[1]) if key == "next_obs" else (n,)
            if arrays[key].shape != want:
                raise DemoError(f"demonstrations {path}: {key} has shape {arrays[key].shape}, expected {want}")
    for key, value in arrays.items():
        if np.issubdtype(value.dtype, np.complexfloating):
            raise DemoError(f"demonstrations {path}: {key} has complex dtype {value.dtype}, expected real numbers "
                            "(casting would drop the imaginary part); store the real values")
        if value.dtype.kind not in "fiu" and not (key == "terminated" and value.dtype == np.bool_):
            raise DemoError(f"demonstrations {path}: {key} has dtype {value.dtype}, expected numbers"
                            + (" (only terminated may be true/false)" if value.dtype == np.bool_ else ""))
        if not np.isfinite(value).all():
            raise DemoError(f"demonstrations {path}: {key} holds NaN or Inf values")
        with np.errstate(over="ignore"):
            as_float32 = value.astype(np.float32)  # what training uses: a finite float64 may overflow to inf here
        if not np.isfinite(as_float32).all():
            where = np.argwhere(~np.isfinite(as_float32))[0]
            at = ", ".join(str(int(i)) for i in where)
            raise DemoError(f"demonstrations {path}: {key} holds values beyond float32's range (e.g. {key}[{at}] = "
                            f"{float(value[tuple(where)]):.3g}; float32 holds up to "
                            f"{float(np.finfo(np.float32).max):.3g}), which would become Inf; rescale them")
    if "terminated" in arrays and not np.isin(arrays["terminated"], (0, 1)).all():
        bad = np.unique(arrays["terminated"][~np.isin(arrays["terminated"], (0, 1))])[:5].tolist()
        raise DemoError(f"demonstrations {path}: terminated must be 0/1 (or bool), found {bad}; a TD target "
                        "multiplies the bootstrap by (1 - terminated)")


def path_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a demonstrations file (None: a regular file, or a link to one)."""
    if not str(path).strip():  # Path("") is ".": "a directory"
        return "blank (an unset shell variable?): give the .npz file, or leave demos.path out"
    problem = not_a_file(Path(path))  # (reading a named pipe would wait for a writer)
    return "a directory, not a .npz file" if problem == "a directory" else problem


def _npy_header(f: Any, path: Path, what: str) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and shape an .npy header declares (``f`` positioned at its start), its data unread."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(f)
        read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f".npy format version {version[0]}.{version[1]}, which numpy writes only for "
                             "structured arrays")
        shape, _, dtype = read(f)
    except ValueError as exc:
        raise DemoError(f"demonstrations {path}: {what} is not a readable numpy array ({exc}); write the file with "
                        "numpy.savez(path, obs=..., actions=...) or robo_rl.demos.save_demos") from None
    return dtype, shape


def _check_npz_headers(path: Path) -> None:
    """Read every array's header before any of its data: an array of Python objects (only unpickling could read
    it), a member that is no .npy array, a declared shape its member cannot hold (numpy would allocate the
    declared size first: a damaged header asking for terabytes) or arrays beyond the memory free (a zip bomb)
    are refused, naming the array."""
    from envs.resources import gib, host_memory

    sizes = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename  # as numpy names them
            with archive.open(info) as f:
                dtype, shape = _npy_header(f, path, key)
                stored = info.file_size - f.tell()
            if dtype.hasobject:
                raise DemoError(f"demonstrations {path}: {key} holds Python objects (dtype {dtype}), which only "
                                "unpickling could read; demonstrations are never unpickled: store numeric arrays")
            size = math.prod(shape) * dtype.itemsize
            if size > stored:
                raise DemoError(f"demonstrations {path}: {key}'s header declares shape {shape} of {dtype} "
                                f"({gib(size)}), and the file holds {stored:,} bytes of it: a damaged file")
            sizes[key] = size
    available = host_memory()[1]
    if available is not None and sum(sizes.values()) > available:
        largest = max(sizes, key=sizes.get)
        raise DemoError(f"demonstrations {path}: its arrays unpack to {gib(sum(sizes.values()))} ({largest} "
                        f"{gib(sizes[largest])}), more than the {gib(available)} of memory free; use fewer "
                        "transitions")


def load_demos(path: str | Path, obs_dim: int, act_dim: int, action_low: np.ndarray, action_high: np.ndarray,
               replay: bool = False, costs: bool = False) -> dict[str, torch.Tensor]:
    """Read and check a demonstrations file against the env; float32 tensors by key. ``replay``: the file must
    hold full transitions for the replay preload; ``costs``: that replay keeps each step's safety cost too."""
    for name, dim in (("obs_dim", obs_dim), ("act_dim", act_dim)):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise TypeError(f"load_demos: {name} must be a positive integer, got {dim!r}")
    try:
        action_low = np.asarray(action_low, dtype=np.float64).reshape(-1)
        action_high = np.asarray(action_high, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"load_demos: action_low/action_high must be numbers, got {action_low!r}, {action_high!r}") from None
    if action_low.shape != (act_dim,) or action_high.shape != (act_dim,) or np.isnan(action_low).any() \
            or np.isnan(action_high).any() or (action_low > action_high).any():
        raise ValueError(f"load_demos: action_low and action_high must be {act_dim} numbers each with low <= high "
                         f"(the env's action bounds), got {action_low.tolist()} and {action_high.tolist()}")
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise DemoError(f"demonstrations {path}: {problem} (demos.path)")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
        if not head.startswith((b"PK", b"\x93NUMPY")):  # neither a zip (.npz) nor a .npy; numpy would take it
            # for a pickle, and its error suggests loading it with allow_pickle (code from the file could run)
            raise DemoError(f"demonstrations {path}: not an .npz archive ("
                            + (f"the file starts with {head!r}: a pickle, text or another format" if head
                               else "the file is empty")
                            + "); demonstrations are read only from numpy .npz files, never unpickled: write one with "
                            "numpy.savez(path, obs=..., actions=...) or robo_rl.demos.save_demos")
        if head.startswith(b"\x93NUMPY"):  # a .npy file (whatever its name): one unnamed array, described unread
            with open(path, "rb") as f:
                dtype, shape = _npy_header(f, path, "the file")
            raise DemoError(f"demonstrations {path}: a single .npy array ({dtype}, shape {shape}), not an "
                            ".npz archive of named arrays obs, actions, ...; write one with numpy.savez(path, obs=..., "
                            "actions=...) or robo_rl.demos.save_demos")
        _check_npz_headers(path)
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        # (RuntimeError: zipfile's "is encrypted, password required")
        if isinstance(exc, DemoError):
            raise
        raise DemoError(f"demonstrations {path}: not a readable .npz file ({exc})") from None
    _check_arrays(arrays, path, obs_dim, act_dim)
    if replay:
        missing = [k for k in REPLAY_KEYS if k not in arrays]
        if missing:
            raise DemoError(f"demonstrations {path}: demos.replay=true needs {', '.join(missing)} as well (full "
                            "transitions); add them, or set demos.replay=false to only pretrain the policy")
        if costs and COST_KEY not in arrays:
            raise DemoError(_no_costs(path))
        if costs and (arrays[COST_KEY] < 0).any():  # as the training env's SafetyLayer refuses one (require_cost)
            first = int(np.flatnonzero(arrays[COST_KEY] < 0)[0])
            raise DemoError(f"demonstrations {path}: {COST_KEY} holds negative values (e.g. {COST_KEY}[{first}] = "
                            f"{float(arrays[COST_KEY][first]):.3g}); safety.passivity_aware=true bounds a per-step "
                            "cost >= 0 (the positive work the controller does): store max(cost, 0), or set "
                            "demos.replay=false to only pretrain the policy")
    actions = arrays["actions"]
    tol = 1e-5 * np.maximum(1.0, np.abs(action_high - action_low))
    if (actions < action_low - tol).any() or (actions > action_high + tol).any():
        raise DemoError(f"demonstrations {path}: actions outside the env's bounds [{action_low}, {action_high}] "
                        f"(range found: {actions.min(0)} .. {actions.max(0)}); store env-unit actions")
    keys = PRETRAIN_KEYS + (REPLAY_KEYS + ((COST_KEY,) if COST_KEY in arrays else ()) if replay else ())
    return {k: torch.as_tensor(np.asarray(arrays[k], dtype=np.float32)) for k in keys}


def pretrain(learner: Any, obs: torch.Tensor, actions: torch.Tensor, steps: int, batch_size: int, lr: float,
             seed: int = 0) -> dict[str, float]:
    """Fit the learner's demonstration head with its imitation loss; returns first/last loss and time.

    The observation normalizer (if enabled) first takes the demonstrations' statistics, so the
    head sees inputs on the scale it will act on.
    """
    head = learner.demo_head()
    head.obs_norm.update(obs)
    params = [p for name, p in head.named_parameters() if not name.startswith("obs_norm")]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = obs.shape[0]
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        loss = head.imitation_loss(obs[idx], actions[idx])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining from demonstrations: the imitation loss became {loss.item()} at "
                                     f"step {step}; lower demos.lr (now {lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach().item())
    if steps > 0:  # the loop checks each step's loss before its step: the last step's result is checked here (with
        # demos.lr=1e30 and one step it left a policy that acted NaN; the run then failed online, blaming the critics)
        device = obs.device
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):  # (draws nothing the run would have drawn)
            loss = head.imitation_loss(obs[idx], actions[idx])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining from demonstrations: the imitation loss became {loss.item()} after "
                                     f"the last step (step {steps - 1}); lower demos.lr (now {lr})")
    learner.after_pretraining()
    k = max(1, min(50, steps // 10))  # average the ends: single minibatch losses are noisy
    first = float(np.mean(losses[:k])) if losses else float("nan")
    last = float(np.mean(losses[-k:])) if losses else float("nan")
    return {"steps": steps, "transitions": n, "loss_first": first, "loss_last": last,
            "seconds": time.perf_counter() - t0}


def _no_costs(path: Any) -> str:
    return (f"demonstrations {path}: safety.passivity_aware=true keeps each step's safety cost in replay, and the "
            f"file has no {COST_KEY} [T]; add them (save_demos(..., {COST_KEY}=...)), or set demos.replay=false to "
            "only pretrain the policy")


def warm_start(cfg: Any, learner: Any, replay: Any | None, demos: dict[str, torch.Tensor]) -> dict[str, float]:
    """What ``robo-rl train`` does with ``demos.path`` for a new run: pretrain, then preload replay."""
    d = cfg.demos
    preload = replay is not None and bool(d.replay)
    costs = preload and getattr(replay, "costs", None) is not None
    if costs and COST_KEY not in demos:  # checked before pretraining: the preload would fail after it
        raise DemoError(_no_costs(d.path))  # (train() has load_demos check it, before the run directory is made)
    if int(d.pretrain_steps) == 0 and not preload:  # the file was read and checked, and nothing uses it
        log.warning(f"demos.path={d.path} is not used: demos.pretrain_steps=0 pretrains nothing, and "
                    + ("demos.replay=false preloads nothing; set demos.pretrain_steps > 0 or demos.replay=true"
                       if replay is not None else f"algo={cfg.algo.name} has no replay buffer to preload them into; "
                       "set demos.pretrain_steps > 0") + ", or leave out demos.path")
    device = next(learner.parameters()).device
    obs, actions = demos["obs"].to(device), demos["actions"].to(device)
    stats: dict[str, float] = {}
    if int(d.pretrain_steps) > 0:
        stats = pretrain(learner, obs, actions, int(d.pretrain_steps), int(d.batch_size), float(d.lr), int(cfg.seed))
        frozen = bool(d.freeze_obs_norm) and learner.demo_head().obs_norm.enabled  # a head without one has none to keep
        log.info(f"demos: pretrained the {learner.demo_head().name} head on {stats['transitions']:,} transitions "
                 f"for {stats['steps']:,} steps, imitation loss {stats['loss_first']:.3f} -> {stats['loss_last']:.3f} "
                 f"({stats['seconds']:.0f} s)" + ("; its observation statistics stay those of the demonstrations "
                                                  "(demos.freeze_obs_norm=true)" if frozen else ""))
        if frozen:
            warn_narrow_dimensions(d.path, obs, float(learner.demo_head().obs_norm.clip))
    if preload:
        rows = [demos[k].to(device) for k in ("obs", "actions", "rewards", "next_obs", "terminated")
                + ((COST_KEY,) if costs else ())]
        n = rows[0].shape[0]
        kept = min(n, replay.capacity)  # a buffer smaller than the file keeps the newest rows
        for chunk in zip(*(r[n - kept:].split(replay.capacity) for r in rows)):
            replay.add(*chunk[:5], costs=chunk[5] if costs else None)
        stats["replay_preloaded"] = kept
        log.info(f"demos: preloaded {kept:,} transitions into the replay buffer"
                 + (f" (the file has {n:,}; algo.buffer_size keeps the last {kept:,})" if kept < n else ""))
        if int(d.critic_steps) > 0:
            stats.update(warm_critics(learner, replay, int(d.critic_steps), int(cfg.algo.batch_size)))
            log.info(f"demos: trained the critics on them for {stats['critic_steps']:,} updates before the first step, "
                     f"critic loss {stats['critic_loss_first']:.3g} -> {stats['critic_loss_last']:.3g} "
                     f"({stats['critic_seconds']:.0f} s)")
    return stats


NARROW_STD = 1e-2  # a frozen dimension this narrow clips at an online deviation of obs_clip x 0.01


def warn_narrow_dimensions(path: Any, obs: torch.Tensor, clip: float) -> None:
    """Frozen statistics scale each observation by 1 / its std in the demonstrations: a dimension the demonstrator
    barely moved (a noiseless controller, a constant) puts any online state off its path on the +-clip bound,
    e.g. InvertedPendulum's pole angle at std 4e-4 clipped 88% of a random policy's inputs."""
    std = obs.double().std(0) if obs.shape[0] > 1 else torch.zeros(obs.shape[1], dtype=torch.float64)
    narrow = torch.nonzero(std < NARROW_STD).flatten().tolist()
    if narrow:
        shown = ", ".join(f"{i} (std {float(std[i]):.1g})" for i in narrow[:6]) + (", ..." if len(narrow) > 6 else "")
        log.warning(f"demos: observation dimension(s) {shown} of {path} barely vary in the demonstrations; with their "
                    f"statistics frozen, online states a little off the demonstrator's path sit on the +-{clip:g} clip "
                    "there. Record demonstrations with exploration noise, or set demos.freeze_obs_norm=false")


def warm_critics(learner: Any, replay: Any, steps: int, batch_size: int) -> dict[str, float]:
    """Critic-only updates on the preloaded demonstrations: without them the first actor updates follow randomly
    initialised critics, and a pretrained policy fell to a random one's return within ~250 steps (Pendulum, TD3
    and SAC with learning_starts=0)."""
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        metrics = learner.critic_warmup(replay.sample(batch_size))
        for name, value in metrics.items():  # every critic it trains: Lagrangian SAC's cost critics as well
            if not torch.isfinite(value):
                raise FloatingPointError(f"training the critics on the demonstrations: the {name.replace('_', ' ')} "
                                         f"became {value.item()} at step {step}; check the file's "
                                         f"{'costs' if name.startswith('cost') else 'rewards'}, or set demos.critic_steps=0")
        losses.append(metrics["critic_loss"].item())
    k = max(1, min(50, steps // 10))
    return {"critic_steps": steps, "critic_loss_first": float(np.mean(losses[:k])),
            "critic_loss_last": float(np.mean(losses[-k:])), "critic_seconds": time.perf_counter() - t0}
