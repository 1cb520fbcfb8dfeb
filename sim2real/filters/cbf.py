"""Control-barrier-function filter for linear barriers on a measured state.

Discrete-time CBF condition (Agrawal & Sreenath, RSS 2017, eq. 9): h(x_{t+1}) >= (1 - gamma) h(x_t).
With half-space barriers h_i(x) = d_i - n_i . x and the one-step model x_{t+1} = x_t + dt B u it is
linear in u:

    n_i . (dt B u) <= gamma h_i(x_t)        i.e.   G u <= g,  G = dt N B,  g = gamma (d - N x_t)

and the filter returns the closest action: argmin ||u - u_ref||^2 subject to G u <= g (and low <= u <= high).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim2real.filters import spec
from sim2real.filters.base import FilterReport, SafetyFilter, representable_bounds, rows

TOL = 1e-9  # constraint tolerance, relative to the magnitudes in the constraint row
_TINY = float(np.finfo(np.float64).tiny)  # absolute floor of the tolerance (2.2e-308: subnormals carry no precision)
_BIG = 1e20  # right-hand sides of the normalized QP are capped here: a constraint this far away is inactive


def _row_norms(G: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row without underflow (rows of 1e-200 have a norm, not 0)."""
    peak = np.abs(G).max(axis=1)
    safe = np.where(peak > 0, peak, 1.0)
    return peak * np.linalg.norm(G / safe[:, None], axis=1)


class CBFFilter(SafetyFilter):
    """Minimal change to the action so that linear barriers h_i(x) = d_i - n_i . x decay at most by (1 - gamma).

    State ``x = obs[state_index]`` (n entries); barriers from ``normals`` [m, n] and ``offsets`` [m];
    model ``x_next = x + dt * (input_matrix @ u)`` (``input_matrix`` [n, A], default identity, so n == A).
    One constraint and no action bounds: closed-form projection onto the half-space. Several constraints,
    or bounds ``low``/``high`` (which become hard bounds on the output): a QP solved by DAQP through
    qpsolvers, imported when the filter is built.

    Guarantee: every returned row is finite and, unless the row is reported as fallback, satisfies
    ``h_i(x_next) >= (1 - gamma) h_i(x)`` for every i up to a tolerance of 1e-9 relative to the row's
    magnitudes (|g_i| + sum_j |G_ij u_j|, with each barrier scaled to a unit normal), its one-step
    prediction x + dt B u is finite, and it lies inside [low, high] when they are given. A state
    already outside the safe set (h < 0) is asked to recover: h must grow at least geometrically.

    Fallback (reported): a non-finite action or state, an infeasible constraint set, a solver failure, or
    a solution that fails the check returns the ``fallback`` action (default zeros; with bounds, rounded
    inward to the caller's float width, so every returned row is inside [low, high]). The fallback is
    checked against the same constraints; if even it violates them (e.g. the state drifts out of the safe
    set on its own, or a zero action cannot satisfy a recovery condition), the filter says so in the
    report and still returns the fallback with fallback=True: there is no better action it can prove safe.
    Assumes: the one-step model is what the low-level controller does within one control period ``dt``,
    and the state is measured this step.
    """

    name = "cbf"
    uses_obs = True

    def __init__(self, action_dim: int, state_index: Any, normals: Any, offsets: Any, dt: Any, gamma: Any = 0.5,
                 input_matrix: Any = None, low: Any = None, high: Any = None, fallback: Any = 0.0,
                 obs_dim: int | None = None) -> None:
        super().__init__(action_dim)
        self.state_index = spec.indices("state_index", state_index, obs_dim, "obs_dim")
        n = len(self.state_index)
        self.normals = spec.matrix("normals", normals, None, n)
        m = self.normals.shape[0]
        self.offsets = spec.vector("offsets", offsets, m)
        if np.ndim(spec.plain(offsets)) == 0 and m != 1:
            raise ValueError(f"offsets: expected a list of {m} numbers (one per row of normals)")
        self.dt = spec.scalar("dt", dt, low=0.0, low_open=True)
        self.gamma = spec.scalar("gamma", gamma, low=0.0, low_open=True, high=1.0)
        if input_matrix is None:
            if n != self.action_dim:
                raise ValueError(f"input_matrix: required when the state has {n} entries and the action "
                                 f"{self.action_dim} (the default identity needs them equal)")
            input_matrix = np.eye(n)
        self.input_matrix = spec.matrix("input_matrix", input_matrix, n, self.action_dim)
        if (low is None) != (high is None):
            raise ValueError("low/high: give both action bounds or neither")
        self.low = self.high = None
        if low is not None:
            self.low, self.high = spec.box_bounds(low, high, self.action_dim)
        self.fallback = spec.vector("fallback", fallback, self.action_dim)
        if self.low is not None and ((self.fallback < self.low) | (self.fallback > self.high)).any():
            raise ValueError(f"fallback: {self.fallback.tolist()} is outside [low, high]")
        # h_i >= 0 and h_i(x_next) >= (1 - gamma) h_i(x) are unchanged when (n_i, d_i) is divided by |n_i|;
        # the filter works with unit normals so that the constraint numbers are well scaled whatever the config.
        norms = _row_norms(self.normals)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            ok = (norms > 0) & np.isfinite(self.offsets / norms)  # a 1e-309 normal against d = 10: keep as given
        unit = np.where(ok, norms, 1.0)
        self._normals_unit, self._offsets_unit = self.normals / unit[:, None], self.offsets / unit
        self.G = self.dt * self._normals_unit @ self.input_matrix  # [m, A]
        self.uses_qp = m > 1 or self.low is not None
        if self.uses_qp:
            try:
                import qpsolvers  # noqa: F401
                import daqp  # noqa: F401
            except ImportError as e:
                raise ValueError(f"cbf with {m} constraints{' and action bounds' if self.low is not None else ''} "
                                 f"solves a QP: pip install qpsolvers daqp ({e})") from None

    def _check_obs_dim(self, obs_dim: int) -> None:
        if self.state_index.max() >= obs_dim:
            raise ValueError(f"cbf: state_index {self.state_index.tolist()} out of range of an observation "
                             f"with {obs_dim} entries")

    # -- the constraint --------------------------------------------------------------------------------
    def barrier(self, state: np.ndarray) -> np.ndarray:
        """h(x) = d - N x, [B, m] for states [B, n], with every barrier row scaled to a unit normal."""
        return self._offsets_unit - state @ self._normals_unit.T

    def _satisfied(self, u: np.ndarray, g: np.ndarray) -> bool:
        """G u <= g within TOL relative to the row's magnitudes, and u inside the bounds."""
        with np.errstate(over="ignore", invalid="ignore"):
            lhs = self.G @ u
            tol = TOL * (np.abs(g) + np.abs(self.G) @ np.abs(u)) + _TINY
            ok = bool(np.isfinite(u).all() and np.isfinite(lhs).all() and (lhs <= g + tol).all())  # -inf: overflow
        if ok and self.low is not None:
            ok = bool(((u >= self.low) & (u <= self.high)).all())
        return ok

    def _predictable(self, state: np.ndarray, u: np.ndarray) -> bool:
        """The one-step prediction x + dt B u stays within float64 (else the barrier check means nothing)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return bool(np.isfinite(state + self.dt * (self.input_matrix @ u)).all())

    def _project_one(self, u_ref: np.ndarray, g: float) -> np.ndarray | None:
        """Closed form for one half-space: u = u_ref - max(0, G u_ref - g) / |G|^2 G^T."""
        row = self.G[0]
        norm = float(_row_norms(self.G[:1])[0])
        if norm == 0.0:
            return u_ref if g >= 0.0 else None  # the action cannot move h: feasible iff already satisfied
        unit = row / norm
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float64: non-finite, the caller falls back
            along = float(unit @ u_ref)
            if along <= g / norm:
                return u_ref
            # u_ref's part across the normal, plus exactly g / |G| along it (no cancellation in the part that matters)
            return (u_ref - along * unit) + (g / norm) * unit

    def _solve_qp(self, u_ref: np.ndarray, g: np.ndarray, lo: np.ndarray | None,
                  hi: np.ndarray | None) -> np.ndarray | None:
        """argmin ||u - u_ref||^2, G u <= g, low <= u <= high, solved for delta = u - u_ref in normalized units.

        The problem in delta is homogeneous in its right-hand sides, so dividing them by the size of the
        needed correction (and each constraint row by its norm) gives DAQP numbers near 1 whatever the
        action's magnitude; the solution is scaled back.
        """
        from qpsolvers import solve_qp

        norms = _row_norms(self.G)
        zero = norms == 0.0
        if (g[zero] < 0.0).any():  # 0 <= g_i cannot hold: infeasible whatever the action
            return None
        Gn = self.G[~zero] / norms[~zero, None]
        with np.errstate(over="ignore", invalid="ignore"):
            r = (g[~zero] - self.G[~zero] @ u_ref) / norms[~zero]  # Gn delta <= r
        lb = ub = None
        scale_terms = [np.maximum(-r, 0.0)]
        if lo is not None:
            lb, ub = lo - u_ref, hi - u_ref
            scale_terms += [np.maximum(lb, 0.0), np.maximum(-ub, 0.0)]
        scale = max(float(np.max(np.concatenate(scale_terms))), _TINY)
        if not (np.isfinite(scale) and np.isfinite(r).all()):
            return None  # magnitudes beyond float64 (e.g. 1e300 actions): no meaningful correction
        A = self.action_dim
        with np.errstate(over="ignore"):  # far-away constraints and bounds: capped, they stay inactive
            h_n = np.clip(r / scale, -_BIG, _BIG)
            lb_n = None if lb is None else np.clip(lb / scale, -_BIG, _BIG)
            ub_n = None if ub is None else np.clip(ub / scale, -_BIG, _BIG)
        try:
            delta = solve_qp(np.eye(A), np.zeros(A), Gn if len(Gn) else None, h_n if len(Gn) else None,
                             lb=lb_n, ub=ub_n, solver="daqp")
        except Exception:  # noqa: BLE001 -- any solver failure is a fallback, never a crash on the robot
            return None
        if delta is None or not np.isfinite(delta).all():
            return None
        u = u_ref + delta * scale
        if self.low is not None:
            u = np.clip(u, lo, hi)  # DAQP meets bounds within its tolerance; make them exact
        return u

    def _solve(self, u_ref: np.ndarray, g: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
        """The minimal change, as numbers of ``dtype`` that pass the check, or None.

        Rounding (and the cast to float32) can put an exact projection a hair outside the half-space;
        if the check fails, the constraints are tightened by a few ulps of their magnitude and solved again.
        """
        eps = float(np.finfo(dtype).eps)
        lo, hi = (None, None) if self.low is None else representable_bounds(self.low, self.high, dtype)
        with np.errstate(over="ignore"):
            mag = np.abs(g) + np.abs(self.G) @ np.abs(u_ref)
        for ulps in (0.0, 8.0, 512.0):
            g_tight = g - ulps * eps * mag
            if not self.uses_qp:
                u = self._project_one(u_ref, float(g_tight[0]))
            else:
                u = self._solve_qp(u_ref, g_tight, lo, hi)
                if u is not None and np.isfinite(u).all() and not self._satisfied(u, g_tight):
                    # DAQP meets its constraints to a tolerance relative to the correction, which for an action
                    # far outside (1e6 against bounds of 1) leaves the solution a visible step outside them: project
                    # that point again, a correction of that step's size, met to the same relative tolerance
                    u = self._solve_qp(u, g_tight, lo, hi)
            if u is None or not np.isfinite(u).all():
                return None
            with np.errstate(over="ignore"):
                u = u.astype(dtype).astype(np.float64)  # check the numbers the robot will receive
            if not np.isfinite(u).all():  # beyond float32's range
                return None
            if self._satisfied(u, g):
                return u
            with np.errstate(over="ignore"):
                mag = np.maximum(mag, np.abs(g) + np.abs(self.G) @ np.abs(u))
        return None

    # -- the call ----------------------------------------------------------------------------------------
    def _apply(self, action: np.ndarray, obs: np.ndarray | None, dtype: np.dtype) -> tuple[np.ndarray, FilterReport]:
        batch = action.shape[0]
        state = obs[:, self.state_index]
        with np.errstate(over="ignore", invalid="ignore"):
            g_all = self.gamma * self.barrier(state)  # [B, m]
        out = action.copy()
        report = FilterReport.clean(batch)
        fallback = self.fallback  # inside [low, high] in float64; rounded inward so it stays there in ``dtype``
        if self.low is not None:
            fallback = np.clip(fallback, *representable_bounds(self.low, self.high, dtype))
        projected, invalid, failed, unchecked, violating = [], [], [], [], []
        for b in range(batch):
            u_ref, g = action[b], g_all[b]
            if not (np.isfinite(state[b]).all() and np.isfinite(g).all()):
                out[b] = fallback
                report.fallback[b] = True
                unchecked.append(b)
                continue
            if np.isfinite(u_ref).all():
                if self._satisfied(u_ref, g) and self._predictable(state[b], u_ref):
                    continue
                u = self._solve(u_ref, g, dtype)
                if u is not None and self._predictable(state[b], u):
                    out[b] = u
                    projected.append(b)
                    continue
                failed.append(b)
            else:
                invalid.append(b)
            out[b] = fallback
            report.fallback[b] = True
            if not self._satisfied(fallback.astype(dtype).astype(np.float64), g):
                violating.append(b)
        out = out.astype(dtype)
        with np.errstate(invalid="ignore"):
            report.intervened = report.fallback | (out != action).any(axis=1)

        def mask(idx: list[int]) -> np.ndarray:
            return np.isin(np.arange(batch), idx)

        if projected:
            report.reasons.append(f"cbf: projected {rows(mask(projected))} onto the barrier constraints")
        if unchecked:
            report.reasons.append(f"cbf: non-finite state in {rows(mask(unchecked))} -> fallback action "
                                  f"(unchecked: the state is unknown)")
        if invalid:
            report.reasons.append(f"cbf: non-finite action in {rows(mask(invalid))} -> fallback action")
        if failed:
            report.reasons.append(f"cbf: no action meets the barrier constraints in {rows(mask(failed))} "
                                  f"(infeasible or solver failure) -> fallback action")
        if violating:
            report.reasons.append(f"cbf: the fallback action violates the barrier condition in "
                                  f"{rows(mask(violating))} -> returned anyway (no action is proven safe)")
        return out, report

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.name, "state_index": self.state_index.tolist(),
                             "normals": spec.floats(self.normals), "offsets": spec.floats(self.offsets),
                             "dt": self.dt, "gamma": self.gamma, "input_matrix": spec.floats(self.input_matrix),
                             "fallback": spec.floats(self.fallback)}
        if self.low is not None:
            d["low"], d["high"] = spec.floats(self.low), spec.floats(self.high)
        return d
