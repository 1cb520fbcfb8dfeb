"""Rate filter: bounded change of the action from one control step to the next."""

from __future__ import annotations

from typing import Any

import numpy as np

from sim2real.filters import spec
from sim2real.filters.base import FilterReport, SafetyFilter, representable_bounds, rows


class RateFilter(SafetyFilter):
    """Limit ``|a_t - a_{t-1}| <= max_delta`` per dimension, where ``a_{t-1}`` is this filter's previous output.

    Guarantee: every returned entry is finite and within ``max_delta`` of the previous returned value of
    the same row and dimension. After ``reset(batch, initial=command)`` the first call is limited to
    ``max_delta`` from ``command`` (the command the robot holds: the control loop passes it); after a
    plain ``reset`` the first call passes finite actions unchanged (there is nothing to compare with).
    One rounding exception: a float32 caller after a reset with a float64 command whose +-max_delta window
    holds no float32 number (max_delta below the float32 spacing there, or a command beyond float32's
    range) gets the first float32 past the command toward the input (at most +-3.4e38).

    A row with any non-finite entry holds the previous output (the reset's command, else zeros, on the
    first call) and is reported as fallback. Placed after a ``box`` filter, the output stays inside the
    box too: it lies between the (in-box) input and the (in-box) previous output or reset command.
    Assumes: the filter is called once per control period; ``max_delta`` is per period.
    """

    name = "rate"
    episode_state = ("prev",)  # what a checkpoint keeps
    command_state = ("prev",)

    def __init__(self, action_dim: int, max_delta: Any) -> None:
        super().__init__(action_dim)
        self.max_delta = spec.vector("max_delta", max_delta, self.action_dim, low=0.0, low_open=True)
        self.prev: np.ndarray | None = None

    def _reset_state(self, batch: int) -> None:
        self.prev = None

    def _reset_rows(self, idx: np.ndarray) -> None:
        if self.prev is not None:  # NaN: that row has no previous output (its next action passes unlimited)
            self.prev = self.prev.copy()
            self.prev[idx] = np.nan

    def _check_episode_state(self, values: dict[str, Any], batch: int) -> None:
        self._check_array(values, "prev", (batch, self.action_dim), optional=True, nan_rows=True)

    def _seed(self, initial: np.ndarray) -> None:
        self.prev = initial

    def _apply(self, action: np.ndarray, obs: np.ndarray | None, dtype: np.dtype) -> tuple[np.ndarray, FilterReport]:
        bad = ~np.isfinite(action).all(axis=1)
        # rows without a previous output (after reset, or cleared by reset_rows: NaN) hold zeros and pass unlimited
        fresh = np.ones(len(action), dtype=bool) if self.prev is None else np.isnan(self.prev[:, 0])
        prev = np.where(fresh[:, None], 0.0, self.prev) if self.prev is not None else None
        hold = np.zeros_like(action) if prev is None else prev
        out = np.where(bad[:, None], hold, action)
        if prev is not None:
            with np.errstate(over="ignore"):
                # around=prev: a window holding no float32 (a float64 command from reset, max_delta below its
                # float32 spacing) becomes the float32 numbers either side of it, so the step still goes no further
                # than the first one toward the input, and after a box stays between two in-box commands
                lo, hi = representable_bounds(prev - self.max_delta, prev + self.max_delta, dtype, around=prev)
            limited = np.clip(out, lo, hi)
            out = np.where(fresh[:, None], out, limited) if fresh.any() else limited
        out = out.astype(dtype)
        report = FilterReport(np.zeros(len(out), dtype=bool), bad, [])
        with np.errstate(invalid="ignore"):
            report.intervened = bad | (out != action).any(axis=1)
        if bad.any():
            source = "zeros (first step)" if fresh[bad].all() else "previous command"
            report.reasons.append(f"rate: non-finite action in {rows(bad)} -> hold {source}")
        limited = report.intervened & ~bad
        if limited.any():
            report.reasons.append(f"rate: limited the change of {rows(limited)} to max_delta")
        self.prev = out.astype(np.float64)
        return out, report

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "max_delta": spec.floats(self.max_delta)}
