"""Energy-tank passivity filter (Ferraguti, Secchi & Fantuzzi, ICRA 2013; Ferraguti et al., IEEE T-RO 2015).

A learned torque/force policy is not passive: in contact it can pump energy into the robot-environment
loop without bound. The tank bounds it. The controller may only inject energy it has in the tank; the
tank is refilled by the energy the controller absorbs and by what the damping dissipates, and is capped.
Per control step k (command tau_k = torque_scale * action, held for dt):

    T_{k+1} = min(T_max, T_k + sum(damping * dq_k^2) / dt + sum(friction * |dq_k|) - W_k),   dq_k = q_{k+1} - q_k

where W_k is the work tau_k did over the step and the credits are lower bounds of what the joints' viscous
damping and dry friction dissipated over it, whatever the velocity did within the step: the viscous loss is
damping * integral of v^2 dt >= damping * dq^2 / dt (Cauchy-Schwarz; equal at constant velocity). The
end-of-step estimate damping * v_{k+1}^2 * dt is not a bound: a joint accelerating from rest ends the step
faster than it moved on average, and crediting it creates energy the plant never dissipated. Both credits
need the joint positions q (``position_index``); without them no dissipation is credited (the velocities
at the ends of a step bound no loss within it), so the tank only spends ``initial_energy`` (with ``"damped"``,
whose bounds are never negative, it never refills). The filter settles each step's real work when the
next observation arrives: ``tau_{k-1} . (q_k - q_{k-1})`` with the joint positions q (``position_index``),
which is exact for a command held over the step, so the filter's tank is the robot's measured energy
balance, not a prediction of it. Before sending tau_k it must know W_k will fit in T_k - T_min, so it
needs an upper bound on the work a command can do over the coming step (``work_bound``):

* ``"damped"`` (default): for a joint with viscous damping b >= ``damping`` whose other forces
  (friction, contact) only oppose its motion, the velocity a constant tau drives stays between v_k and
  tau / b for the whole step, so ``tau . dq <= dt * max(tau * v_k, tau^2 / b)`` per joint. This bound
  holds over the whole step however much the velocity changes during it (the velocity-only prediction
  below does not: with a time constant m / b shorter than dt a force command from rest does work
  within the step that ``tau * v_k`` calls zero).
* ``"velocity"``: ``dt * tau . v_k``, the classic one-step prediction; exact only if the velocity
  hardly changes within a step (fast control loops), cheaper on the tank, not conservative.

The command is scaled by the largest alpha in [0, 1] whose bound fits the tank above ``min_energy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sim2real.filters import spec
from sim2real.filters.base import FilterReport, SafetyFilter, rows, zero_ungoverned_non_finite

WORK_BOUNDS = ("damped", "velocity")
# Shrink factors tried when the cast of the scaled command to the caller's float width overdraws the tank
# by a few ulps; 0 (no torque, zero work bound) always fits a tank that is at or above its minimum.
_SHRINK = (1.0, 1.0 - 1e-12, 1.0 - 1e-9, 1.0 - 1e-6, 1.0 - 1e-3, 0.0)


def guarantee_void(spec: Any, plant: str, latency: tuple[str, Any] | None = None,
                   damping: tuple[str, Any] | None = None, gain: tuple[str, Any] | None = None,
                   obs_noise: tuple[str, Any] | None = None, other: tuple[str, ...] = ()) -> list[str]:
    """The start-up warning when the chain ``spec`` holds an energy tank and ``plant`` (training's randomized plant,
    deploy's sim2sim one) has what the tank's guarantee does not cover (README, Safety filters): actuation ``latency``
    above 0, a ``damping`` scale range reaching below 1, a ``gain`` range above 1 or observation noise (``obs_noise``,
    a std or one per dimension) above 0, each given as (key, value), and ``other`` reasons already worded; [] when
    the chain has no tank or nothing voids it."""
    entries = spec.get("filters") if isinstance(spec, Mapping) else spec
    tanks = [entry for entry in entries or [] if isinstance(entry, Mapping) and entry.get("type") == "energy_tank"]
    if not tanks:
        return []
    why = []
    if latency is not None and max(np.ravel(latency[1])) > 0:
        why.append(f"{latency[0]}={latency[1]} (the tank settles each step against a command the plant has not "
                   "applied yet)")
    why += other
    if damping is not None and min(damping[1]) < 1.0:
        why.append(f"{damping[0]}={list(damping[1])} (less damping than the filter's, whose loss it credits)")
    if gain is not None and max(gain[1]) > 1.0:
        why.append(f"{gain[0]}={list(gain[1])} (more force per unit of action than its torque_scale)")
    if obs_noise is not None:
        noise = np.ravel(np.asarray(obs_noise[1], dtype=np.float64))
        read = sorted({int(i) for tank in tanks for key in ("velocity_index", "position_index")
                       for i in np.ravel(tank.get(key) if tank.get(key) is not None else [])})
        if noise.size > 1 and read:  # one std per observation dimension: the ones the tanks read
            noise = noise[[i for i in read if i < noise.size]]
        if noise.size and noise.max() > 0:
            value = obs_noise[1].tolist() if isinstance(obs_noise[1], np.ndarray) else obs_noise[1]
            # (q - q_prev)^2 of noisy positions is 2 std^2 larger on average, and so is the viscous credit: ContactMaze's
            # tank at rest, std 0.01, went from 1 J to its 2 J cap in 50 steps on noise alone. Without positions the
            # work bound is computed from the noisy velocities instead
            why.append(f"{obs_noise[0]}={value} (" + (
                "the tank credits the dissipation it reads from noisy positions: noise alone fills it"
                if any(tank.get("position_index") is not None for tank in tanks)
                else "the tank bounds each command's work from noisy velocities, which the real work can exceed") + ")")
    if not why:
        return []
    return [f"safety: the energy_tank filter's passivity guarantee does not hold on this {plant}: {'; '.join(why)}. "
            "The filter still runs, but what it passes is not bounded by its tank; see README, Safety filters "
            "(energy_tank)"]


class EnergyTankFilter(SafetyFilter):
    """Scale torque/force commands so the energy they inject never exceeds what an energy tank holds.

    ``tau = torque_scale * action[action_index]`` (default: every action dimension) acts on the joints
    whose velocities are ``obs[velocity_index]`` and, if given, positions ``obs[position_index]`` (same
    length, same order). Each call first settles the step that just ended: the tank is debited the work
    the previous command did (measured from the position change if positions are given, else the bound
    it was sent under), credited ``sum(damping * (q - q_prev)^2) / dt`` (the least a viscous damping of that
    size dissipated over the step, whatever the velocity did within it: ``dt`` times the mean velocity's
    square, never above ``damping * integral of v^2``) plus ``sum(friction * |q - q_prev|)`` (the least a dry
    friction of that size dissipated on the way), both from the positions (without ``position_index`` nothing
    is credited), and capped at ``max_energy``. The new command passes unchanged if its work bound
    (``work_bound``, module docstring) fits in the tank above ``min_energy``; otherwise its torque
    dimensions are multiplied by the largest alpha in [0, 1] whose bound fits. Other dimensions pass.

    Guarantee: the returned torque entries are finite and their work bound, computed with the numbers
    actually returned (after the cast to float32 if the caller uses float32), never exceeds the tank
    above ``min_energy``; a command whose bound fits is returned unchanged. So on a plant that satisfies
    the bound (``"damped"``: damping at least ``damping``, other forces dissipative) the measured tank
    never goes below ``min_energy`` (and its credits are lower bounds of what the plant really dissipated, so
    the tank never lends energy the plant did not give back). With positions and ``"damped"`` the settled tank
    cannot fall below ``min_energy`` at all: a step's measured work minus its viscous credit,
    ``tau dq - b dq^2 / dt``, is at most ``tau^2 dt / (4 b)``, under the bound the command was sent with,
    whatever moved the joint; the tank is then the plant's real energy balance as long as ``damping`` does
    not over-estimate the real damping (which makes the credit real). Otherwise, if the tank goes below its
    minimum (``"velocity"``'s prediction was exceeded), the row is in deficit: the filter sends zero torque
    until the tank refills, and reports it.
    Fallback (reported): a non-finite action (any dimension), velocity or position gives zero torque for
    that step; non-finite entries of the other dimensions become 0.
    Assumes: positions are not wrapped between calls (hinge angles unwrapped), ``damping`` does not
    over-estimate the physical damping nor ``friction`` the dry friction (over-estimates create energy),
    one call per control step, and the command returned is the one the plant applies over the next step:
    with actuation latency (``sim2sim.action_latency``, ``env.randomize.action_delay``, a driver's queue) the plant applies an older command
    than the one each step's work is settled with and bounded for, and the guarantee does not hold.
    State: ``energy`` [B] (tank level with the command in flight debited by its bound),
    ``injected_energy`` [B] (work settled since reset), ``dissipated_energy`` [B], ``deficit`` [B]
    (``min_energy`` minus the settled level, > 0 for rows in deficit), ``last_alpha`` [B].
    """

    name = "energy_tank"
    episode_state = ("_level", "_pending", "_torque", "_position", "_fresh", "injected_energy",
                     "dissipated_energy", "last_alpha")  # what a checkpoint keeps
    uses_obs = True

    def __init__(self, action_dim: int, velocity_index: Any, dt: Any, initial_energy: Any, max_energy: Any,
                 min_energy: Any = 0.0, torque_scale: Any = 1.0, damping: Any = 0.0, action_index: Any = None,
                 position_index: Any = None, work_bound: Any = "damped", friction: Any = 0.0,
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
        self.position_index = None
        if position_index is not None:
            self.position_index = spec.indices("position_index", position_index, obs_dim, "obs_dim")
            if len(self.position_index) != k:
                raise ValueError(f"position_index: {len(self.position_index)} entries, but velocity_index has {k}")
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
        self.work_bound = spec.choice("work_bound", work_bound, WORK_BOUNDS)
        self.friction = spec.vector("friction", friction, k, low=0.0)
        if (self.friction > 0).any() and self.position_index is None:
            raise ValueError("friction: crediting dry friction needs the joint positions (its loss is friction * "
                             "|distance moved|); give position_index or friction: 0")
        if self.work_bound == "damped" and (self.damping <= 0).any():
            raise ValueError(f"damping: work_bound 'damped' needs damping > 0 on every torque joint (it bounds a "
                             f"joint's velocity by torque / damping), got {spec.floats(self.damping)}; give the "
                             f"joints' viscous damping or work_bound: velocity (not conservative)")
        self.reset(1)

    def _reset_state(self, batch: int) -> None:
        for name, value in self._fresh_state(batch).items():
            setattr(self, name, value)

    def _fresh_state(self, batch: int) -> dict[str, np.ndarray]:
        """The ``episode_state`` of ``batch`` rows just reset."""
        k = len(self.velocity_index)
        return {
            "_level": np.full(batch, self.initial_energy),  # settled: every finished step accounted for
            "_pending": np.zeros(batch),  # work bound of the command in flight
            "_torque": np.zeros((batch, k)),  # the command in flight, N or N m
            "_position": np.full((batch, k), np.nan),  # positions when it was sent
            "_fresh": np.ones(batch, dtype=bool),  # no step has been taken since reset
            "injected_energy": np.zeros(batch),
            "dissipated_energy": np.zeros(batch),
            "last_alpha": np.ones(batch),
        }

    def _reset_rows(self, idx: np.ndarray) -> None:
        for name, value in self._fresh_state(len(idx)).items():
            values = getattr(self, name).copy()  # (arrays a caller may hold, e.g. injected_energy, stay as they were)
            values[idx] = value
            setattr(self, name, values)

    def _check_episode_state(self, values: dict[str, Any], batch: int) -> None:
        k = len(self.velocity_index)
        for name in ("_pending", "last_alpha"):
            self._check_array(values, name, (batch,))
        # running totals and the settled level may have overflowed to +-inf on absurd inputs (a level of -inf is
        # a deficit: zero torque); NaN only comes from a damaged file
        for name in ("_level", "injected_energy", "dissipated_energy"):
            self._check_array(values, name, (batch,), finite=False)
            if np.isnan(values[name]).any():
                raise ValueError(f"{self.name}: saved filter state {name!r} holds NaN (a damaged checkpoint)")
        self._check_array(values, "_torque", (batch, k))
        self._check_array(values, "_position", (batch, k), finite=False)  # NaN before the first step
        self._check_array(values, "_fresh", (batch,), kind="b")
        if (values["_level"] > self.max_energy).any():  # a tank holds at most max_energy: more would be injected
            raise ValueError(f"{self.name}: saved filter state '_level' {values['_level'].tolist()} exceeds "
                             f"max_energy={self.max_energy} (a damaged checkpoint, or one of another filter setup)")
        if self.work_bound == "damped" and (values["_pending"] < 0).any():  # max(tau v, tau^2 / damping) dt >= 0
            raise ValueError(f"{self.name}: saved filter state '_pending' {values['_pending'].tolist()} is negative, "
                             "which no command's work bound is under work_bound 'damped' (a damaged checkpoint, or one "
                             "of another filter setup): settled, it would refill the tank")
        if ((values["last_alpha"] < 0) | (values["last_alpha"] > 1)).any():
            raise ValueError(f"{self.name}: saved filter state 'last_alpha' {values['last_alpha'].tolist()} is not in [0, 1]")

    @property
    def energy(self) -> np.ndarray:
        """Tank level per row [B]: settled level minus the bound of the command in flight, capped (a copy)."""
        return np.minimum(self.max_energy, self._level - self._pending)

    @property
    def deficit(self) -> np.ndarray:
        """How far below ``min_energy`` each row's settled level is [B] (0 when it is not)."""
        return np.maximum(0.0, self.min_energy - self._level)

    def _check_obs_dim(self, obs_dim: int) -> None:
        for key in ("velocity_index", "position_index"):
            index = getattr(self, key)
            if index is not None and index.max() >= obs_dim:
                raise ValueError(f"energy_tank: {key} {index.tolist()} out of range of an observation with "
                                 f"{obs_dim} entries")

    def _bound(self, tau: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Upper bound [B] on the work torques ``tau`` [B, k] do over one step from velocities ``v``."""
        c = tau * v
        if self.work_bound == "velocity":
            return c.sum(axis=1) * self.dt
        return np.maximum(c, tau * tau / self.damping).sum(axis=1) * self.dt

    def _settle(self, q: np.ndarray | None, q_ok: np.ndarray) -> None:
        """Account for the step that just ended (rows that took one): its work, viscous and dry-friction loss."""
        stepped = ~self._fresh
        work = self._pending.copy()  # without a measurement, the bound the command was sent under
        dissipated = np.zeros(len(stepped))  # without positions nothing: v at the step's ends bounds no loss over it
        if q is not None:
            with np.errstate(all="ignore"):
                dq = q - self._position
                measured = np.where(self._torque == 0.0, 0.0, self._torque * dq).sum(axis=1)
                # viscous loss over the step: at least damping * dq^2 / dt whatever the velocity did within it
                # (Cauchy-Schwarz: dq^2 = (integral of v)^2 <= dt * integral of v^2); damping * v_end^2 * dt is no
                # bound (a joint accelerating from rest ends faster than it moved on average)
                viscous = (self.damping * dq * dq).sum(axis=1) / self.dt
                dissipated = np.where(np.isfinite(viscous), viscous, 0.0)
                if (self.friction > 0).any():  # dry friction lost at least friction * |dq|
                    rubbed = (self.friction * np.abs(dq)).sum(axis=1)
                    dissipated = dissipated + np.where(np.isfinite(rubbed), rubbed, 0.0)
            known = q_ok & np.isfinite(measured)
            work = np.where(known, measured, work)
        dissipated = np.where(stepped, dissipated, 0.0)
        work = np.where(stepped, work, 0.0)
        self._level = np.where(stepped, np.minimum(self.max_energy, self._level + dissipated - work), self._level)
        self.injected_energy = self.injected_energy + work
        self.dissipated_energy = self.dissipated_energy + dissipated

    def _apply(self, action: np.ndarray, obs: np.ndarray | None, dtype: np.dtype) -> tuple[np.ndarray, FilterReport]:
        batch = action.shape[0]
        a = action[:, self.action_index]  # [B, k]
        v = obs[:, self.velocity_index]  # [B, k]
        q = None if self.position_index is None else obs[:, self.position_index]
        v_ok = np.isfinite(v).all(axis=1)
        q_ok = np.ones(batch, dtype=bool) if q is None else np.isfinite(q).all(axis=1)
        self._settle(q, q_ok)

        budget = self._level - self.min_energy  # < 0: deficit (the plant did more work than its bound)
        with np.errstate(all="ignore"):
            tau = self.torque_scale * a
            full = self._bound(tau, v)  # the command's bound as given
        valid = np.isfinite(action).all(axis=1) & v_ok & q_ok & np.isfinite(full)  # a NaN anywhere: untrusted
        with np.errstate(invalid="ignore"):
            pays = valid & (self._level - full >= self.min_energy)
        short = valid & ~pays
        alpha = np.where(pays, 1.0, 0.0)
        v_safe = np.where(valid[:, None], v, 0.0)
        if short.any():
            in_deficit = budget[short] < 0  # nothing fits: zero torque
            alpha[short] = np.where(in_deficit, 0.0, self._largest_alpha(tau[short], v_safe[short],
                                                                        np.maximum(budget[short], 0.0)))

        out = action.copy()
        out[:, self.action_index] = np.where(pays[:, None], a, 0.0)
        rows_short = np.flatnonzero(short)
        todo = np.ones(len(rows_short), dtype=bool)
        level, deficit_rows = self._level[rows_short], budget[rows_short] < 0
        for shrink in _SHRINK:  # check the numbers actually sent; shrink on a few-ulp overdraw
            if not todo.any():
                break
            idx = rows_short[todo]
            with np.errstate(all="ignore"):
                trial = ((alpha[idx] * shrink)[:, None] * a[idx]).astype(dtype).astype(np.float64)
                need = self._bound(self.torque_scale * trial, v_safe[idx])
                fits = np.isfinite(need) & np.where(deficit_rows[todo], need <= 0, level[todo] - need >= self.min_energy)
            out[np.ix_(idx[fits], self.action_index)] = trial[fits]
            alpha[idx[fits]] *= shrink
            todo[np.flatnonzero(todo)[fits]] = False

        zero_ungoverned_non_finite(out, self.action_index)  # reported with the rest of ~valid below
        out = out.astype(dtype)
        sent = out[:, self.action_index].astype(np.float64)
        with np.errstate(all="ignore"):
            self._pending = np.where(valid, self._bound(self.torque_scale * sent, v_safe), 0.0)
        self._torque = self.torque_scale * sent
        self._position = q.copy() if q is not None else self._position
        self._fresh = np.zeros(batch, dtype=bool)
        self.last_alpha = alpha

        with np.errstate(invalid="ignore"):
            changed = ~valid | (sent != a).any(axis=1)
        report = FilterReport(changed, ~valid, [])
        deficit = valid & (budget < 0)
        scaled = short & ~deficit
        if scaled.any():
            scales = ", ".join(f"{x:.3g}" for x in alpha[scaled][:8])
            where = "" if batch == 1 else f" in {rows(scaled)}"
            report.reasons.append(f"energy_tank: scaled action{where} by {scales} (tank at minimum)")
        if deficit.any():
            amounts = ", ".join(f"{x:.3g}" for x in -budget[deficit][:8])
            report.reasons.append(f"energy_tank: tank below its minimum by {amounts} J in {rows(deficit)} (the "
                                  f"robot did more work than the bound allowed) -> zero torque until it refills")
        if not valid.all():
            report.reasons.append(f"energy_tank: non-finite action, velocity or position in {rows(~valid)} -> "
                                  f"zero torque (no injection), non-finite other entries 0")
        return out, report

    def _largest_alpha(self, tau: np.ndarray, v: np.ndarray, room: np.ndarray) -> np.ndarray:
        """Largest alpha in [0, 1] per row with bound(alpha * tau) <= room (bound(1 * tau) > room >= 0)."""
        with np.errstate(all="ignore"):
            c = tau * v * self.dt
            if self.work_bound == "velocity":  # linear in alpha
                return np.clip(room / c.sum(axis=1), 0.0, 1.0)
            # g(alpha) = sum_j max(alpha c_j, alpha^2 d_j), d_j >= 0: joint j is linear up to its breakpoint
            # c_j / d_j and quadratic after it (from 0 if c_j <= 0). Sorted breakpoints cut [0, 1] into
            # segments on which g = A alpha^2 + B alpha; find the segment where g crosses room and solve there.
            d = tau * tau / self.damping * self.dt
            brk = np.clip(np.where(c > 0, c / d, 0.0), 0.0, 1.0)
            order = np.argsort(brk, axis=1)
            brk, c, d = (np.take_along_axis(x, order, axis=1) for x in (brk, c, d))
            n, k = brk.shape
            left = np.concatenate([np.zeros((n, 1)), brk], axis=1)  # segment i: [left_i, right_i], i = 0..k
            right = np.concatenate([brk, np.ones((n, 1))], axis=1)
            g_left = np.maximum(left[:, :, None] * c[:, None, :], left[:, :, None] ** 2 * d[:, None, :]).sum(axis=2)
            seg = (g_left <= room[:, None]).sum(axis=1) - 1  # g is nondecreasing and g(0) = 0 <= room
            zeros = np.zeros((n, 1))
            quad = np.concatenate([zeros, np.cumsum(d, axis=1)], axis=1)  # A_i: the first i joints are quadratic
            lin = np.concatenate([np.cumsum(c[:, ::-1], axis=1)[:, ::-1], zeros], axis=1)  # B_i: the rest linear
            a_, b_ = (np.take_along_axis(x, seg[:, None], axis=1)[:, 0] for x in (quad, lin))
            lo, hi = (np.take_along_axis(x, seg[:, None], axis=1)[:, 0] for x in (left, right))
            # sqrt(B^2 + 4 A room) without squaring: B^2 underflowed to 0 for B ~ 1e-170 (and A room with it), which
            # gave 2 room / B, twice the root, and the shrink loop then sent about half of what the tank held
            denominator = b_ + np.hypot(b_, 2.0 * np.sqrt(a_) * np.sqrt(room))
            root = np.where(denominator > 0, 2.0 * room / denominator, hi)  # stable root of A x^2 + B x = room
            return np.clip(np.nan_to_num(root, nan=0.0), lo, hi)

    def describe(self) -> dict[str, Any]:
        out = {"type": self.name, "velocity_index": self.velocity_index.tolist(),
               "action_index": self.action_index.tolist(), "dt": self.dt, "initial_energy": self.initial_energy,
               "min_energy": self.min_energy, "max_energy": self.max_energy,
               "torque_scale": spec.floats(self.torque_scale), "damping": spec.floats(self.damping),
               "work_bound": self.work_bound, "friction": spec.floats(self.friction)}
        if self.position_index is not None:
            out["position_index"] = self.position_index.tolist()
        return out
