"""Energy-tank passivity filter (Ferraguti, Secchi & Fantuzzi, ICRA 2013; Ferraguti et al., IEEE T-RO 2015).

A learned torque/force policy is not passive: in contact it can pump energy into the robot-environment
loop without bound. The tank bounds it. The controller may only inject energy it has in the tank; the
tank is filled by the energy the controller absorbs and by what the damping dissipates, and is capped:

    p_t = tau_t . v_t                         (power the command injects; tau = torque_scale * action)
    T_{t+1} = min(T_max, T_t + dt * sum(damping * v_t^2) - dt * p_t)

and when a command would take T below T_min it is scaled by the largest alpha in [0, 1] that keeps it there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim2real.filters import spec
from sim2real.filters.base import FilterReport, SafetyFilter, rows

# Shrink factors tried when rounding of the scaled command (or its cast to float32) overdraws the tank by
# a few ulps; 0 (no injection) always fits, since T + dissipated >= T >= T_min in floating point too.
_SHRINK = (1.0, 1.0 - 1e-12, 1.0 - 1e-9, 1.0 - 1e-6, 1.0 - 1e-3, 0.0)


def _scale(a: np.ndarray, budget: np.ndarray, draw: np.ndarray) -> np.ndarray:
    """a * budget / draw with one rounding, at any magnitudes.

    alpha = budget / draw may be subnormal (1e-300 J left against a 1e22 J draw) and carry no precision,
    and a * budget may underflow; the command they scale to need not. Mantissas and exponents are
    combined separately, so the only rounding is the final one.
    """
    ma, ea = np.frexp(a)
    mb, eb = np.frexp(budget)
    md, ed = np.frexp(draw)
    return np.ldexp(ma * (mb / md), ea + eb - ed)


class EnergyTankFilter(SafetyFilter):
    """Scale torque/force commands so the energy they inject never exceeds what an energy tank holds.

    ``tau = torque_scale * action[action_index]`` (default: every action dimension) acts against the
    velocity ``v = obs[velocity_index]`` (same length). Each call draws ``dt * tau . v`` from the tank
    (a negative draw refills it), adds ``dt * sum(damping * v^2)`` dissipated by the viscous damping,
    and caps the level at ``max_energy`` (energy beyond it is discarded, as in Ferraguti et al.).
    If the update would leave the tank below ``min_energy``, the torque dimensions are multiplied by the
    largest alpha in [0, 1] that keeps it at ``min_energy``; other action dimensions pass through.

    Guarantee: the tank level of every row stays in [min_energy, max_energy] over any sequence of calls,
    computed with the command actually returned (after the cast to float32, if the caller uses float32);
    the returned torque entries are finite; a command the tank can pay for is returned unchanged.
    Fallback (reported): a non-finite action or velocity (or an overflowing power) gives a zero torque
    command (no injection) and leaves the tank level unchanged.
    Assumes: the velocity measured this step is the one the command acts against over the next ``dt``
    (the check that this holds well enough for a task is a simulation test, not this filter's), and
    ``damping`` under-estimates the physical damping (over-estimating it creates energy).
    State: ``energy`` [B] (tank level), ``injected_energy`` [B] (sum of dt * p applied since reset),
    ``dissipated_energy`` [B], ``last_alpha`` [B] (scale applied on the last call; 0 for fallback rows).
    """

    name = "energy_tank"
    uses_obs = True

    def __init__(self, action_dim: int, velocity_index: Any, dt: Any, initial_energy: Any, max_energy: Any,
                 min_energy: Any = 0.0, torque_scale: Any = 1.0, damping: Any = 0.0, action_index: Any = None,
                 obs_dim: int | None = None) -> None:
        super().__init__(action_dim)
        self.velocity_index = spec.indices("velocity_index", velocity_index, obs_dim, "obs_dim")
        k = len(self.velocity_index)
        if action_index is None:
            if k != self.action_dim:
                raise ValueError(f"velocity_index: {k} velocities for {self.action_dim} action dimensions; "
                                 f"give action_index (the torque dimensions) or one velocity per action dimension")
            action_index = list(range(k))
        self.action_index = spec.indices("action_index", action_index, self.action_dim, "action_dim")
        if len(self.action_index) != k:
            raise ValueError(f"action_index: {len(self.action_index)} entries, but velocity_index has {k}")
        self.dt = spec.scalar("dt", dt, low=0.0, low_open=True)
        self.min_energy = spec.scalar("min_energy", min_energy, low=0.0)
        self.max_energy = spec.scalar("max_energy", max_energy)
        if self.min_energy >= self.max_energy:
            raise ValueError(f"min_energy >= max_energy: {self.min_energy} >= {self.max_energy}; "
                             f"the tank needs room between them")
        self.initial_energy = spec.scalar("initial_energy", initial_energy)
        if not self.min_energy <= self.initial_energy <= self.max_energy:
            raise ValueError(f"initial_energy: {self.initial_energy} is outside "
                             f"[min_energy, max_energy] = [{self.min_energy}, {self.max_energy}]")
        self.torque_scale = spec.vector("torque_scale", torque_scale, k, low=0.0, low_open=True)
        self.damping = spec.vector("damping", damping, k, low=0.0)
        self.reset(1)

    def _reset_state(self, batch: int) -> None:
        self._energy = np.full(batch, self.initial_energy)
        self.injected_energy = np.zeros(batch)
        self.dissipated_energy = np.zeros(batch)
        self.last_alpha = np.ones(batch)

    @property
    def energy(self) -> np.ndarray:
        """Tank level per row, [B] (a copy)."""
        return self._energy.copy()

    def _check_obs_dim(self, obs_dim: int) -> None:
        if self.velocity_index.max() >= obs_dim:
            raise ValueError(f"energy_tank: velocity_index {self.velocity_index.tolist()} out of range of an "
                             f"observation with {obs_dim} entries")

    def _apply(self, action: np.ndarray, obs: np.ndarray | None, dtype: np.dtype) -> tuple[np.ndarray, FilterReport]:
        batch = action.shape[0]
        a = action[:, self.action_index]  # [B, k]
        v = obs[:, self.velocity_index]  # [B, k]
        with np.errstate(over="ignore", invalid="ignore"):
            power = (self.torque_scale * a * v).sum(axis=1)  # [B] W
            dissipated = (self.damping * v * v).sum(axis=1) * self.dt  # [B] J
            valid = np.isfinite(a).all(axis=1) & np.isfinite(v).all(axis=1) & np.isfinite(power) & np.isfinite(dissipated)
            dissipated = np.where(valid, dissipated, 0.0)
            v = np.where(valid[:, None], v, 0.0)
            level = self._energy + dissipated  # what the tank holds before this step's draw
            after = level - power * self.dt
            pays = valid & (after >= self.min_energy)
            short = valid & ~pays  # the draw is positive and larger than the budget above T_min
            alpha = np.where(pays, 1.0, 0.0)
            budget, draw = level[short] - self.min_energy, power[short] * self.dt  # 0 <= budget < draw
            alpha[short] = np.clip(budget / draw, 0.0, 1.0)
            scaled = _scale(a[short], budget[:, None], draw[:, None])

        out = action.copy()
        out[:, self.action_index] = np.where(valid[:, None], a, 0.0)
        new_level = np.where(pays, after, level)  # invalid rows: no injection
        rows_short = np.flatnonzero(short)
        pending = np.ones(len(rows_short), dtype=bool)  # over the short rows
        for shrink in _SHRINK:  # cast and check the numbers actually sent; shrink on a few-ulp overdraw
            if not pending.any():
                break
            idx = rows_short[pending]
            with np.errstate(under="ignore"):
                trial = (scaled[pending] * shrink).astype(dtype).astype(np.float64)
            trial_level = level[idx] - (self.torque_scale * trial * v[idx]).sum(axis=1) * self.dt
            fits = trial_level >= self.min_energy
            out[np.ix_(idx[fits], self.action_index)] = trial[fits]
            new_level[idx[fits]] = trial_level[fits]
            alpha[idx[fits]] *= shrink
            pending[np.flatnonzero(pending)[fits]] = False

        out = out.astype(dtype)
        sent = out[:, self.action_index].astype(np.float64)  # invalid rows: zero torque, zero velocity
        injected = (self.torque_scale * sent * v).sum(axis=1) * self.dt
        self._energy = np.minimum(self.max_energy, new_level)
        self.injected_energy = self.injected_energy + injected
        self.dissipated_energy = self.dissipated_energy + dissipated
        self.last_alpha = alpha

        with np.errstate(invalid="ignore"):
            changed = ~valid | (sent != a).any(axis=1)
        report = FilterReport(changed, ~valid, [])
        if short.any():
            scales = ", ".join(f"{x:.3g}" for x in alpha[short][:8])
            where = "" if batch == 1 else f" in {rows(short)}"
            report.reasons.append(f"energy_tank: scaled action{where} by {scales} (tank at minimum)")
        if not valid.all():
            report.reasons.append(f"energy_tank: non-finite action or velocity in {rows(~valid)} -> zero torque "
                                  f"(no injection)")
        return out, report

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "velocity_index": self.velocity_index.tolist(),
                "action_index": self.action_index.tolist(), "dt": self.dt, "initial_energy": self.initial_energy,
                "min_energy": self.min_energy, "max_energy": self.max_energy,
                "torque_scale": spec.floats(self.torque_scale), "damping": spec.floats(self.damping)}
