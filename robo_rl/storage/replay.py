"""Circular replay buffer of torch tensors, sampled with its own seeded generator.

Rows are stored preallocated on the learner's device (no numpy on the hot path); ``state_dict``
hands out only the filled rows, as numpy arrays for a ``.npz`` file (views of the tensors on a CPU:
no copy; the checkpoint writes them out as they are). A buffer built with
``costs=True`` also keeps each transition's safety cost (passivity-aware learners); plain buffers
do not pay for the column.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robo_rl.learners.base import Batch, CostBatch

_FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated")
_LOAD_BLOCK_BYTES = 64 << 20  # rows copied per step by load_state_dict


class ReplayBuffer:
    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device | str = "cpu", seed: int = 0,
                 costs: bool = False) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.device = torch.device(device)
        self.obs = torch.zeros(capacity, obs_dim, device=self.device)
        self.actions = torch.zeros(capacity, act_dim, device=self.device)
        self.rewards = torch.zeros(capacity, device=self.device)
        self.next_obs = torch.zeros(capacity, obs_dim, device=self.device)
        self.terminated = torch.zeros(capacity, device=self.device)
        self.costs = torch.zeros(capacity, device=self.device) if costs else None
        self.fields = _FIELDS + (("costs",) if costs else ())
        self.pos = 0  # next row to write
        self.size = 0  # rows filled
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, next_obs: torch.Tensor,
            terminated: torch.Tensor, costs: torch.Tensor | None = None) -> None:
        """Append N transitions (one per env), wrapping around and overwriting the oldest rows.

        ``costs`` [N] is required by a buffer built with ``costs=True`` and refused by one without.
        """
        n = obs.shape[0]
        if (costs is None) != (self.costs is None):
            raise ValueError("this replay buffer " + ("stores" if self.costs is not None else "does not store")
                             + " per-step costs; pass costs= exactly when it was built with costs=True")
        if n > self.capacity:
            raise ValueError(f"cannot add {n} transitions to a buffer of capacity {self.capacity}")
        columns = (obs, actions, rewards, next_obs, terminated) + ((costs,) if self.costs is not None else ())
        first = min(n, self.capacity - self.pos)  # rows up to the end; the rest wrap around to the oldest
        for name, value in zip(self.fields, columns):  # slices: copies (and casts, bool -> float) faster than indexing
            rows = getattr(self, name)
            rows[self.pos: self.pos + first] = value[:first]
            if first < n:
                rows[: n - first] = value[first:]
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> Batch | CostBatch:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = torch.randint(0, self.size, (batch_size,), device=self.device, generator=self.generator)
        rows = [torch.index_select(getattr(self, name), 0, idx) for name in self.fields]  # (faster than x[idx] here)
        return CostBatch(*rows) if self.costs is not None else Batch(*rows)

    def state_dict(self) -> dict[str, Any]:
        arrays = {name: getattr(self, name)[: self.size].cpu().numpy() for name in self.fields}
        arrays["pos"] = np.array(self.pos)
        arrays["capacity"] = np.array(self.capacity)
        arrays["generator"] = self.generator.get_state().numpy()
        return arrays

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load what ``state_dict`` wrote; anything else (a missing array, another shape or kind) is a ValueError
        naming the array, raised before the buffer changes."""
        if self.costs is not None and "costs" not in state:
            # (not "resume with checkpoint.save_replay=false": a resume may not change that key, and loads the
            # checkpoint's replay whatever it says)
            raise ValueError("saved replay buffer holds no per-step costs, which this (passivity-aware) run needs: it "
                             "was saved by a run without safety.passivity_aware=true; continue that run with its own "
                             "config, or start a new run")
        missing = [k for k in (*_FIELDS, "pos", "capacity", "generator") if k not in state]
        if missing:
            raise ValueError(f"saved replay buffer lacks the array(s) {', '.join(missing)}")
        for name in ("pos", "capacity"):
            if np.shape(state[name]) != () or np.asarray(state[name]).dtype.kind not in "iu":
                raise ValueError(f"saved replay buffer's {name} is {np.asarray(state[name]).dtype} "
                                 f"{list(np.shape(state[name]))}, expected an integer scalar")
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"saved replay buffer has capacity {int(state['capacity'])}, this one {self.capacity}")
        size = int(np.shape(state["obs"])[0]) if np.ndim(state["obs"]) else -1
        for name in self.fields:
            expected = (size, *getattr(self, name).shape[1:])
            array = np.asarray(state[name])
            if array.shape != expected or array.dtype.kind not in "biuf":
                raise ValueError(f"saved replay buffer's {name} is {array.dtype} {list(array.shape)}, expected "
                                 f"numbers of shape {list(expected)}")
        if not 0 <= size <= self.capacity or not 0 <= int(state["pos"]) < self.capacity \
                or (size < self.capacity and int(state["pos"]) != size % self.capacity):
            raise ValueError(f"saved replay buffer's pos={int(state['pos'])} and {size} rows do not fit a buffer of "
                             f"capacity {self.capacity}")
        generator = np.asarray(state["generator"])
        if generator.dtype != np.uint8 or generator.shape != tuple(self.generator.get_state().shape):
            raise ValueError(f"saved replay buffer's generator state is {generator.dtype} {list(generator.shape)}, "
                             f"expected uint8 {list(self.generator.get_state().shape)}")
        # straight into the tensors, a block of rows at a time: arrays mapped from a checkpoint's replay.npz
        # (robo_rl.checkpoint.load_checkpoint) are read once and never held whole in memory a second time
        # (nor on the device: a block at a time travels to a GPU)
        for name in self.fields:
            rows, array = getattr(self, name), state[name]
            block = max(1, _LOAD_BLOCK_BYTES // max(1, rows[:1].numel() * rows.element_size()))
            for start in range(0, size, block):
                stop = min(start + block, size)
                rows[start:stop] = torch.as_tensor(np.asarray(array[start:stop]), device=self.device)
        self.size = size
        self.pos = int(state["pos"])
        self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8))
