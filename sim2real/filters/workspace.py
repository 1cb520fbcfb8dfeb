"""Workspace filter: an end-effector target never leaves a safety box (the SERL pattern)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sim2real.filters import spec
from sim2real.filters.base import FilterReport, SafetyFilter, rows, zero_ungoverned_non_finite

MODES = ("absolute", "delta")
_FLOOR = 1e-300  # absolute slack of the target check: subnormal positions carry no precision to check


class WorkspaceFilter(SafetyFilter):
    """Clip the end-effector target an action commands into the box ``[low, high]``.

    Some action dimensions (``action_index``, default the first k, k = len(ee_index)) command an
    end-effector position target: ``target = action_scale * a`` in ``absolute`` mode, or
    ``target = ee + action_scale * a`` in ``delta`` mode, with the current end-effector position
    ``ee = obs[ee_index]``. The target is clipped into the box and the action that commands the clipped
    target is returned; the other action dimensions pass through untouched.

    Guarantee: for every row whose end-effector reading is finite, the commanded target
    ``offset + action_scale * returned`` is inside ``[low, high]``, up to rounding: a few float64 ulps
    of the terms, and one ulp of the returned command in the caller's float width (a float32 delta
    cannot hit a box 1e-5 wide from 300 m away; it lands within 2e-5). A row where even that fails (a
    delta beyond float32's range) gets a zero delta (hold in place) and is reported as fallback. In
    absolute mode the target is inside the box for every row. The workspace dimensions of the output
    are always finite.

    Fallback (reported): a non-finite action (in any dimension) or end-effector reading means the policy
    output or the state estimate is not trusted, so the robot holds in place: target = ee clipped into
    the box; non-finite entries of the other dimensions become 0 (a ``box`` with ``hold`` before this
    filter holds them instead).
    If the reading itself is non-finite, delta mode commands a zero delta (no motion; the target is
    then unknown) and absolute mode holds the previous returned target (the target of the command given
    to ``reset(initial=...)``, clipped into the box, before the first call; else the box midpoint).
    Assumes: ``ee`` and the target are in the same frame and units, measured this control step.
    """

    name = "workspace"
    episode_state = ("prev_target",)  # what a checkpoint keeps
    uses_obs = True

    def __init__(self, action_dim: int, ee_index: Any, low: Any, high: Any, mode: str = "delta",
                 action_index: Any = None, action_scale: Any = 1.0, obs_dim: int | None = None) -> None:
        super().__init__(action_dim)
        self.ee_index = spec.indices("ee_index", ee_index, obs_dim, "obs_dim")
        k = len(self.ee_index)
        if action_index is None:
            if k > self.action_dim:
                raise ValueError(f"ee_index: {k} end-effector coordinates but action_dim={self.action_dim}; "
                                 f"give action_index")
            action_index = list(range(k))
        self.action_index = spec.indices("action_index", action_index, self.action_dim, "action_dim")
        if len(self.action_index) != k:
            raise ValueError(f"action_index: {len(self.action_index)} entries, but ee_index has {k}")
        self.low, self.high = spec.box_bounds(low, high, k)
        self.mode = spec.choice("mode", mode, MODES)
        self.action_scale = spec.vector("action_scale", action_scale, k, low=0.0, low_open=True)
        self.midpoint = np.clip(self.low / 2 + self.high / 2, self.low, self.high)  # no overflow near 1e308
        self.prev_target: np.ndarray | None = None

    def _reset_state(self, batch: int) -> None:
        self.prev_target = None

    def _reset_rows(self, idx: np.ndarray) -> None:
        if self.prev_target is not None:  # NaN: that row has no previous target (a blind step holds the midpoint)
            self.prev_target = self.prev_target.copy()
            self.prev_target[idx] = np.nan

    def _check_episode_state(self, values: dict[str, Any], batch: int) -> None:
        self._check_array(values, "prev_target", (batch, len(self.ee_index)), optional=True, nan_rows=True)
        held = values["prev_target"]
        if held is not None:
            held = held[~np.isnan(held).all(axis=1)]
            if ((held < self.low) | (held > self.high)).any():  # every target it holds was clipped into the box
                raise ValueError(f"{self.name}: saved filter state 'prev_target' holds a target outside the box (low "
                                 f"{spec.floats(self.low)}, high {spec.floats(self.high)}): a damaged checkpoint, or one "
                                 "of another filter setup")

    def _seed(self, initial: np.ndarray) -> None:
        if self.mode == "absolute":
            self.prev_target = np.clip(self.action_scale * initial[:, self.action_index], self.low, self.high)

    def _check_obs_dim(self, obs_dim: int) -> None:
        if self.ee_index.max() >= obs_dim:
            raise ValueError(f"workspace: ee_index {self.ee_index.tolist()} out of range of an observation "
                             f"with {obs_dim} entries")

    def _action_for(self, target: np.ndarray, offset: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """The action (in ``dtype``) commanding ``target`` from ``offset``, nudged by ulps into the box."""
        with np.errstate(over="ignore"):  # a delta beyond float32: inf here, reported by the caller's check
            a = ((target - offset) / self.action_scale).astype(dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(4):  # the division and the cast round; step the ulp back until the target is in
                t = offset + self.action_scale * a.astype(np.float64)
                over, under = t > self.high, t < self.low
                if not (over.any() or under.any()):
                    break
                a = np.where(over, np.nextafter(a, dtype.type(-np.inf)), a)
                a = np.where(under, np.nextafter(a, dtype.type(np.inf)), a)
        return a.astype(np.float64)

    def _apply(self, action: np.ndarray, obs: np.ndarray | None, dtype: np.dtype) -> tuple[np.ndarray, FilterReport]:
        batch = action.shape[0]
        ee = obs[:, self.ee_index]  # [B, k]
        a = action[:, self.action_index]  # [B, k]
        ee_ok = np.isfinite(ee).all(axis=1)
        a_ok = np.isfinite(action).all(axis=1)  # a NaN anywhere in the row: the policy output is not trusted
        offset = ee if self.mode == "delta" else np.zeros_like(ee)
        with np.errstate(invalid="ignore", over="ignore"):
            target = offset + self.action_scale * a
        out_k = a.copy()
        report = FilterReport.clean(batch)

        # Trusted rows whose target leaves the box: command the clipped target.
        with np.errstate(invalid="ignore"):
            outside = ee_ok & a_ok & ((target < self.low) | (target > self.high)).any(axis=1)
        if outside.any():
            clipped = np.clip(target[outside], self.low, self.high)
            out_k[outside] = self._action_for(clipped, offset[outside], dtype)
            report.reasons.append(f"workspace: target of {rows(outside)} clipped into the box")

        # Untrusted action, trusted reading: hold in place (ee clipped into the box).
        hold = ee_ok & ~a_ok
        if hold.any():
            out_k[hold] = self._action_for(np.clip(ee[hold], self.low, self.high), offset[hold], dtype)
            report.reasons.append(f"workspace: non-finite action in {rows(hold)} -> hold the end effector in place")

        # Untrusted reading: no target can be computed from it.
        blind = ~ee_ok
        if blind.any():
            if self.mode == "delta":
                out_k[blind] = 0.0
                report.reasons.append(f"workspace: non-finite end-effector reading in {rows(blind)} -> zero delta "
                                      f"(no motion; target unverified)")
            else:
                held = (np.where(np.isnan(self.prev_target[blind][:, :1]), self.midpoint, self.prev_target[blind])
                        if self.prev_target is not None
                        else np.broadcast_to(self.midpoint, (int(blind.sum()), len(self.low))))
                out_k[blind] = self._action_for(held, np.zeros_like(held), dtype)
                report.reasons.append(f"workspace: non-finite end-effector reading in {rows(blind)} -> hold the "
                                      f"previous target")
        report.fallback = ~(ee_ok & a_ok)

        out = action.copy()
        out[:, self.action_index] = out_k
        if zero_ungoverned_non_finite(out, self.action_index).any():
            report.reasons.append(f"workspace: non-finite entries outside action_index in {rows(~a_ok)} -> 0")
        out = out.astype(dtype)
        with np.errstate(invalid="ignore"):
            report.intervened = report.fallback | (out[:, self.action_index] != a).any(axis=1)
        # The commanded targets, as the robot will compute them from the returned numbers. A target far
        # from the end effector may need a delta beyond float32's range: then no returned action can
        # command a target inside the box; the row holds in place (zero delta) and is reported as fallback.
        sent = out[:, self.action_index].astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            t = offset + self.action_scale * sent
            slack = (4 * np.finfo(np.float64).eps * (np.abs(offset) + np.abs(t) + np.abs(self.low) + np.abs(self.high))
                     + 2 * self.action_scale * np.abs(np.spacing(out[:, self.action_index]))  # one ulp of the command
                     + _FLOOR)
            missed = ee_ok & ~((t >= self.low - slack) & (t <= self.high + slack)).all(axis=1)
        if missed.any():
            held = out[:, self.action_index]
            held[missed] = 0.0 if self.mode == "delta" else (self.midpoint / self.action_scale).astype(dtype)
            out[:, self.action_index] = held
            report.fallback |= missed
            report.intervened |= missed
            report.reasons.append(f"workspace: no {dtype.name} action commands a target inside the box from the "
                                  f"end-effector position of {rows(missed)} (delta out of range) -> hold in place")
        if self.mode == "absolute":  # the target is the action itself: keep it for a blind step
            self.prev_target = self.action_scale * out[:, self.action_index].astype(np.float64)
        return out, report

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "ee_index": self.ee_index.tolist(), "low": spec.floats(self.low),
                "high": spec.floats(self.high), "mode": self.mode, "action_index": self.action_index.tolist(),
                "action_scale": spec.floats(self.action_scale)}
