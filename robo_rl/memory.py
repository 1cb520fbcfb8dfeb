"""Will a run's buffers fit in memory? Checked before any run file is written.

The replay buffer, the rollout storage and GoRL's refit dataset are preallocated with ``torch.zeros``,
which writes every byte at once: a buffer larger than the machine fails with the allocator's
traceback, and one that fits the machine but not what is free brings in the kernel's out-of-memory
killer, which may pick another process (another run's training). So their size is worked out from the
config and compared with the memory that is free, and a run that cannot fit is refused with the keys
that size it named.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import OmegaConf

from envs.resources import gib, host_memory

GIB = 2**30
FLOAT_BYTES = 4  # both buffers store float32


def replay_bytes(capacity: int, obs_dim: int, act_dim: int, costs: bool = False) -> int:
    """Bytes a ReplayBuffer of ``capacity`` rows holds: obs, next_obs, action, reward, terminated (and cost)."""
    return FLOAT_BYTES * capacity * (2 * obs_dim + act_dim + 2 + int(costs))


def rollout_bytes(steps: int, num_envs: int, obs_dim: int, act_dim: int) -> int:
    """Bytes of a RolloutStorage of ``steps`` x ``num_envs`` plus the flattened batch an update makes of it
    (advantages and returns added), which exists next to it while the update runs."""
    return 2 * FLOAT_BYTES * steps * num_envs * (obs_dim + act_dim + 4)  # obs, action, log-prob, value, reward, done


def device_memory(device: torch.device) -> tuple[int | None, int | None]:
    """(total, available) bytes on ``device``: the host's for the CPU, the GPU's own for CUDA."""
    if device.type == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(device)
        return int(total), int(free)
    if device.type == "cpu":
        return host_memory()
    return None, None  # e.g. mps: no reliable figure


def buffers_needed(cfg: Any, obs_dim: int, act_dim: int) -> dict[str, int]:
    """{"what, with the keys that size it": bytes} for the buffers ``cfg``'s learner preallocates."""
    algo, needs = cfg.algo, {}
    if algo.get("buffer_size") is not None:
        costs = bool(OmegaConf.select(cfg, "safety.passivity_aware", default=False))
        needs[f"replay (algo.buffer_size={int(algo.buffer_size):,} rows)"] = replay_bytes(
            int(algo.buffer_size), obs_dim, act_dim, costs)
    if algo.get("rollout_steps") is not None:
        steps, n = int(algo.rollout_steps), int(cfg.env.num_envs)
        needs[f"rollout (algo.rollout_steps={steps:,} x env.num_envs={n:,})"] = rollout_bytes(steps, n, obs_dim, act_dim)
    if algo.get("dataset_size") is not None:
        needs[f"refit data (algo.dataset_size={int(algo.dataset_size):,})"] = (
            FLOAT_BYTES * int(algo.dataset_size) * (obs_dim + act_dim))
        if algo.get("refit_on") == "policy" and int(algo.get("refit_epochs", 1)) > 0:  # the drawn targets (one set at a time)
            needs[f"refit targets (algo.dataset_size={int(algo.dataset_size):,}, refit_on=policy)"] = (
                FLOAT_BYTES * int(algo.dataset_size) * 2 * act_dim)  # actions and their paired prior latents
    # EXPO's and PA-RL's candidate actions: batch_size x count rows through the head and the critics in an update
    layers = [*(algo.get("critic_hidden") or []), *(OmegaConf.select(cfg, "policy.hidden_sizes", default=None) or [])]
    width = sum(int(h) for h in layers)
    for key in ("num_samples", "target_samples", "num_candidates", "target_candidates"):
        if algo.get(key) is not None and algo.get("batch_size") is not None:
            b, n = int(algo.batch_size), int(algo[key])
            needs[f"candidate actions (algo.batch_size={b:,} x algo.{key}={n:,})"] = (
                FLOAT_BYTES * b * n * max(width, obs_dim + act_dim))
    return needs


def check_fits(needs: dict[str, int], device: torch.device) -> None:
    """Refuse (ConfigError) when the buffers in ``needs`` exceed the memory free on ``device`` (or, where
    that cannot be read, its total)."""
    from robo_rl.validation import ConfigError

    need = sum(needs.values())
    total, available = device_memory(device)
    room = available if available is not None else total
    if room is not None and need > room:
        described = ", ".join(f"{what} {gib(b)}" for what, b in needs.items())
        of = "free now" if available is not None else "in all"
        raise ConfigError(f"the run's buffers need {gib(need)} ({described}), more than the {gib(room)} of "
                          f"{device.type} memory {of}" + (f" (of {gib(total)})" if available is not None and total else "")
                          + ": lower the keys named")
