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
terminations). It is read with ``allow_pickle=False``; ``save_demos`` writes one.
"""

from __future__ import annotations

import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("robo_rl")

PRETRAIN_KEYS = ("obs", "actions")
REPLAY_KEYS = ("rewards", "next_obs", "terminated")


class DemoError(ValueError):
    """A demonstrations file that cannot be used, with the file named and what to fix."""


def save_demos(path: str | Path, obs: Any, actions: Any, rewards: Any = None, next_obs: Any = None,
               terminated: Any = None) -> Path:
    """Write a demonstrations file (atomically: a crash leaves no half-written file)."""
    arrays = {"obs": obs, "actions": actions, "rewards": rewards, "next_obs": next_obs, "terminated": terminated}
    arrays = {k: np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in arrays.items() if v is not None}
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    _check_arrays(arrays, Path(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
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
    for key in REPLAY_KEYS:
        if key in arrays:
            want = (n, obs.shape[1]) if key == "next_obs" else (n,)
            if arrays[key].shape != want:
                raise DemoError(f"demonstrations {path}: {key} has shape {arrays[key].shape}, expected {want}")
    for key, value in arrays.items():
        if not np.issubdtype(value.dtype, np.number) and value.dtype != np.bool_:
            raise DemoError(f"demonstrations {path}: {key} has dtype {value.dtype}, expected numbers")
        if not np.isfinite(value.astype(np.float64)).all():
            raise DemoError(f"demonstrations {path}: {key} holds NaN or Inf values")
    if "terminated" in arrays and not np.isin(arrays["terminated"], (0, 1)).all():
        bad = np.unique(arrays["terminated"][~np.isin(arrays["terminated"], (0, 1))])[:5].tolist()
        raise DemoError(f"demonstrations {path}: terminated must be 0/1 (or bool), found {bad}; a TD target "
                        "multiplies the bootstrap by (1 - terminated)")


def load_demos(path: str | Path, obs_dim: int, act_dim: int, action_low: np.ndarray, action_high: np.ndarray,
               replay: bool = False) -> dict[str, torch.Tensor]:
    """Read and check a demonstrations file against the env; float32 tensors by key."""
    path = Path(path)
    if not path.is_file():
        raise DemoError(f"demonstrations {path}: no such file (demos.path)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DemoError(f"demonstrations {path}: not a readable .npz file ({exc})") from None
    _check_arrays(arrays, path, obs_dim, act_dim)
    if replay:
        missing = [k for k in REPLAY_KEYS if k not in arrays]
        if missing:
            raise DemoError(f"demonstrations {path}: demos.replay=true needs {', '.join(missing)} as well (full "
                            "transitions); add them, or set demos.replay=false to only pretrain the policy")
    actions = arrays["actions"]
    tol = 1e-5 * np.maximum(1.0, np.abs(action_high - action_low))
    if (actions < action_low - tol).any() or (actions > action_high + tol).any():
        raise DemoError(f"demonstrations {path}: actions outside the env's bounds [{action_low}, {action_high}] "
                        f"(range found: {actions.min(0)} .. {actions.max(0)}); store env-unit actions")
    keys = PRETRAIN_KEYS + (REPLAY_KEYS if replay else ())
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
    learner.after_pretraining()
    k = max(1, min(50, steps // 10))  # average the ends: single minibatch losses are noisy
    first = float(np.mean(losses[:k])) if losses else float("nan")
    last = float(np.mean(losses[-k:])) if losses else float("nan")
    return {"steps": steps, "transitions": n, "loss_first": first, "loss_last": last,
            "seconds": time.perf_counter() - t0}


def warm_start(cfg: Any, learner: Any, replay: Any | None, demos: dict[str, torch.Tensor]) -> dict[str, float]:
    """What ``robo-rl train`` does with ``demos.path`` for a new run: pretrain, then preload replay."""
    d = cfg.demos
    device = next(learner.parameters()).device
    obs, actions = demos["obs"].to(device), demos["actions"].to(device)
    stats: dict[str, float] = {}
    if int(d.pretrain_steps) > 0:
        stats = pretrain(learner, obs, actions, int(d.pretrain_steps), int(d.batch_size), float(d.lr), int(cfg.seed))
        log.info(f"demos: pretrained the {learner.demo_head().name} head on {stats['transitions']:,} transitions "
                 f"for {stats['steps']:,} steps, imitation loss {stats['loss_first']:.3f} -> {stats['loss_last']:.3f} "
                 f"({stats['seconds']:.0f} s)")
    if replay is not None and bool(d.replay):
        rows = [demos[k].to(device) for k in ("obs", "actions", "rewards", "next_obs", "terminated")]
        n = rows[0].shape[0]
        kept = min(n, replay.capacity)  # a buffer smaller than the file keeps the newest rows
        for chunk in zip(*(r[n - kept:].split(replay.capacity) for r in rows)):
            replay.add(*chunk)
        stats["replay_preloaded"] = kept
        log.info(f"demos: preloaded {kept:,} transitions into the replay buffer"
                 + (f" (the file has {n:,}; algo.buffer_size keeps the last {kept:,})" if kept < n else ""))
    return stats
