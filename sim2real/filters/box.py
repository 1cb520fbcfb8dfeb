"""Box filter: every action entry inside fixed per-dimension limits."""

from __future__ import annotations

from typing import Any

import numpy as np

from sim2real.filters import spec
from sim2real.filters.base import FilterReport, SafetyFilter, representable_bounds, rows

FALLBACKS = ("hold", "zero", "midpoint")


class BoxFilter(SafetyFilter):
    """Clip the action into ``[low, high]``.

    Guarantee: every returned entry is finite and inside ``[low, high]`` (in the caller's float width;
    float32 callers get bounds rounded inward to float32 numbers; bounds that hold no float32, low == high
    between two or beyond float32's range, give the nearest finite one).

    A row with any non-finite entry is not trusted at all (a corrupted policy output): the whole row is
    replaced by the fallback, ``hold`` (this filter's previous output for that row; the box midpoint if
    there is none yet, or the command given to ``reset(initial=...)``), ``zero`` or ``midpoint``, clipped
    into the box, and reported as fallback.
    Assumes: the limits are the actuator's (or the task's) and the action is in the same units.
    """

    name = "box"
    episode_state = ("prev",)  # what a checkpoint keeps
    command_state = ("prev",)

    def __init__(self, action_dim: int, low: Any, high: Any, fallback: str = "hold") -> None:
        super().__init__(action_dim)
        self.low, self.high = spec.box_bounds(low, high, self.action_dim)
        self.fallback = spec.choice("fallback", fallback, FALLBACKS)
        self.midpoint = np.clip(self.low / 2 + self.high / 2, self.low, self.high)  # no overflow near 1e308
        self.prev: np.ndarray | None = None

    def _reset_state(self, batch: int) -> None:
        self.prev = None

    def _reset_rows(self, idx: np.ndarray) -> None:
        if self.prev is not None:  # NaN: that row has no previous output (hold gives the midpoint)
            self.prev = self.prev.copy()
            self.prev[idx] = np.nan

    def _check_episode_state(self, values: dict[str, Any], batch: int) -> None:
        self._check_array(values, "prev", (batch, self.action_dim), optional=True, nan_rows=True)

    def _seed(self, initial: np.ndarray) -> None:
        self.prev = np.clip(initial, self.low, self.high)  # what "hold" holds before the first output

    def admissible(self, command: np.ndarray) -> np.ndarray:
        command = np.asarray(command)
        if command.dtype != np.float32:
            return np.clip(command, self.low, self.high)
        lo, hi = representable_bounds(self.low, self.high, np.float32)  # float32(0.1) would be above 0.1
        return np.clip(command, lo, hi).astype(np.float32)

    def _fallback_rows(self, batch: int) -> np.ndarray:
        value = np.zeros(self.action_dim) if self.fallback == "zero" else self.midpoint
        if self.fallback == "hold" and self.prev is not None:
            return np.where(np.isnan(self.prev[:, :1]), value, self.prev)  # rows reset_rows cleared: the midpoint
        return np.broadcast_to(value, (batch, self.action_dim))

    def _apply(self, action: np.ndarray, obs: np.ndarray | None, dtype: np.dtype) -> tuple[np.ndarray, FilterReport]:
        batch = action.shape[0]
        lo, hi = representable_bounds(self.low, self.high, dtype)
        bad = ~np.isfinite(action).all(axis=1)
        held = self.fallback == "hold" and self.prev is not None and not np.isnan(self.prev[bad, 0]).any()
        source = "previous output" if held else ("zero" if self.fallback == "zero" else "midpoint")
        out = np.where(bad[:, None], self._fallback_rows(batch), action)
        out = np.clip(out, lo, hi).astype(dtype)
        self.prev = out.astype(np.float64)
        with np.errstate(invalid="ignore"):
            changed = bad | (out != action).any(axis=1)
        report = FilterReport(changed, bad, [])
        if bad.any():
            report.reasons.append(f"box: non-finite action in {rows(bad)} -> {self.fallback} ({source}), clipped")
        clipped = changed & ~bad
        if clipped.any():
            report.reasons.append(f"box: clipped {rows(clipped)} into [low, high]")
        return out, report

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "low": spec.floats(self.low), "high": spec.floats(self.high),
                "fallback": self.fallback}
