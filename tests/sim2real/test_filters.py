"""Safety and passivity filters: the guarantee of each filter holds for any input, checked by hypothesis.

Inputs include the values a broken policy or sensor produces (NaN, +-inf, +-1e30, exact zeros), float32
and float64 callers, batches of 1..8 rows and sequences of calls. Each property is checked against the
filter's definition computed here, independently of the filter's own arithmetic.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sim2real.filters import (
    BoxFilter,
    CBFFilter,
    EnergyTankFilter,
    FilterChain,
    RateFilter,
    WorkspaceFilter,
    build_chain,
)

# derandomize: the same examples on every run (a seeded test), so CI cannot fail on a draw the developer never saw
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
EPS = np.finfo(np.float64).eps
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 1e-300]

moderate = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
wide = st.floats(-1e30, 1e30, allow_nan=False, allow_infinity=False)
anything = st.one_of(moderate, wide, st.sampled_from(SPECIAL))
dtypes = st.sampled_from([np.float32, np.float64])


def draw_array(data: st.DataObject, rows: int, cols: int, elements: st.SearchStrategy = anything) -> np.ndarray:
    return data.draw(hnp.arrays(np.float64, (rows, cols), elements=elements))


def draw_bounds(data: st.DataObject, dim: int, elements: st.SearchStrategy = st.one_of(moderate, wide)) -> tuple[np.ndarray, np.ndarray]:
    a, b = draw_array(data, 1, dim, elements)[0], draw_array(data, 1, dim, elements)[0]
    return np.minimum(a, b), np.maximum(a, b)


def holds_a_float32(low: np.ndarray, high: np.ndarray) -> bool:
    """Every interval [low_i, high_i] contains a float32 number (else no float32 output can be inside)."""
    lo = low.astype(np.float32)
    lo = np.where(lo.astype(np.float64) < low, np.nextafter(lo, np.float32(np.inf)), lo)
    return bool((lo.astype(np.float64) <= high).all())


# --------------------------------------------------------------------------------------------- box
@SETTINGS
@given(data=st.data(), dim=st.integers(1, 4), batch=st.integers(1, 8), steps=st.integers(1, 4), dtype=dtypes,
       fallback=st.sampled_from(["hold", "zero", "midpoint"]))
def test_box_output_is_finite_and_inside_the_bounds(data, dim, batch, steps, dtype, fallback):
    low, high = draw_bounds(data, dim)
    assume(dtype is np.float64 or holds_a_float32(low, high))
    f = BoxFilter(dim, low.tolist(), high.tolist(), fallback=fallback)
    for _ in range(steps):
        action = draw_array(data, batch, dim).astype(dtype)
        out, report = f(action)
        assert out.shape == action.shape and out.dtype == dtype
        assert np.isfinite(out).all()
        assert (out >= low).all() and (out <= high).all()
        finite = np.isfinite(action.astype(np.float64)).all(axis=1)
        assert (report.fallback == ~finite).all()
        inside = finite & ((action >= low) & (action <= high)).all(axis=1)
        assert (out[inside] == action[inside]).all() and not report.intervened[inside].any()
        assert report.intervened[~inside].all()


def test_box_hold_repeats_the_previous_output_and_single_rows_keep_their_shape():
    f = BoxFilter(2, [-1, 0], [1, 2], fallback="hold")
    first, _ = f(np.array([0.5, 5.0]))
    assert first.shape == (2,) and first.tolist() == [0.5, 2.0]
    held, report = f(np.array([np.nan, 0.1]))
    assert held.tolist() == [0.5, 2.0] and report.fallback.tolist() == [True]
    assert "non-finite" in report.reasons[0]
    f.reset()
    fresh, _ = f(np.array([np.inf, 0.0]))
    assert fresh.tolist() == [0.0, 1.0]  # nothing to hold after reset: the midpoint


# -------------------------------------------------------------------------------------------- rate
@SETTINGS
@given(data=st.data(), dim=st.integers(1, 4), batch=st.integers(1, 8), steps=st.integers(2, 4), dtype=dtypes)
def test_rate_output_stays_within_max_delta_of_the_previous_output(data, dim, batch, steps, dtype):
    max_delta = draw_array(data, 1, dim, st.one_of(st.floats(1e-9, 1e3), st.sampled_from([1e-300, 1e30])))[0]
    f = RateFilter(dim, max_delta.tolist())
    prev = None
    for _ in range(steps):
        action = draw_array(data, batch, dim).astype(dtype)
        out, report = f(action)
        assert out.dtype == dtype and np.isfinite(out).all()
        out64 = out.astype(np.float64)
        finite = np.isfinite(action.astype(np.float64)).all(axis=1)
        assert (report.fallback == ~finite).all()
        if prev is None:  # first step: finite rows pass unchanged
            assert (out[finite] == action[finite]).all()
        else:
            slack = 4 * EPS * (np.abs(prev) + max_delta)
            assert (np.abs(out64 - prev) <= max_delta + slack).all()
            assert (out64[~finite] == prev[~finite]).all()  # hold
        prev = out64


@SETTINGS
@given(data=st.data(), dim=st.integers(1, 4), batch=st.integers(1, 8), dtype=dtypes, per_row=st.booleans())
def test_rate_after_a_reset_with_the_current_command_the_first_step_is_limited_too(data, dim, batch, dtype, per_row):
    """The control loop resets the chain at each run and episode start, passing the robot's command:
    the first output after the reset is within max_delta of that command, not a free jump."""
    max_delta = draw_array(data, 1, dim, st.floats(1e-6, 10))[0]
    seed = draw_array(data, batch if per_row else 1, dim, st.one_of(moderate, wide))
    f = RateFilter(dim, max_delta.tolist())
    f(np.zeros((batch, dim)))  # an earlier episode, anywhere
    f.reset(batch, initial=seed if per_row else seed[0])
    action = draw_array(data, batch, dim).astype(dtype)
    out, report = f(action)
    out64, seed64 = out.astype(np.float64), np.broadcast_to(seed, (batch, dim))
    slack = 4 * EPS * (np.abs(seed64) + max_delta)
    if dtype is np.float32:  # a float64 command's window may hold no float32: the nearest one (representable_bounds)
        with np.errstate(over="ignore"):
            slack = slack + np.spacing(np.abs(seed64).astype(np.float32)).astype(np.float64)
    assert np.isfinite(out).all() and (np.abs(out64 - seed64) <= max_delta + slack).all()
    finite = np.isfinite(action.astype(np.float64)).all(axis=1)
    assert (report.fallback == ~finite).all()


def test_reset_with_a_command_seeds_rate_box_hold_and_absolute_workspace_and_is_checked():
    chain = build_chain([{"type": "box", "low": -1, "high": 1, "fallback": "hold"}, {"type": "rate", "max_delta": 0.2},
                         {"type": "workspace", "ee_index": [0], "low": -0.5, "high": 0.5, "mode": "absolute"},
                         {"type": "energy_tank", "velocity_index": [1], "dt": 0.1, "initial_energy": 1,
                          "max_energy": 2, "damping": 1.0}], action_dim=1, obs_dim=2)
    chain.reset(1, initial=[-0.4])
    out, _ = chain(np.array([1.0]), np.array([0.0, 0.0]))
    assert out[0] == pytest.approx(-0.2)  # rate: 0.2 from the robot's command, not a jump to 1
    chain.reset(1, initial=[0.45])
    out, report = chain(np.array([np.nan]), np.array([np.nan, 0.0]))
    assert out[0] == pytest.approx(0.45) and report.fallback[0]  # box and workspace hold the command in force
    chain.reset(1, initial=[0.3])
    out, _ = chain(np.full((3, 1), -1.0), np.zeros((3, 2)))  # a first call with another batch keeps the seed
    assert out[:, 0] == pytest.approx([0.1, 0.1, 0.1])
    chain.reset(1)
    assert chain(np.array([1.0]), np.array([0.0, 0.0]))[0][0] == pytest.approx(0.5)  # no command given: free first step
    for bad in ([np.nan], [1.0, 2.0], "x", [[0.0], [0.0]]):
        with pytest.raises(ValueError, match="initial"):
            chain.reset(1, initial=bad)


# --------------------------------------------------------------------------------------- workspace
@SETTINGS
@given(data=st.data(), extra=st.integers(0, 2), k=st.integers(1, 3), batch=st.integers(1, 8), steps=st.integers(1, 3),
       dtype=dtypes, mode=st.sampled_from(["absolute", "delta"]))
def test_workspace_target_is_always_inside_the_box(data, extra, k, batch, steps, dtype, mode):
    action_dim, obs_dim = k + extra, k + 3
    ee_index = data.draw(st.permutations(range(obs_dim)))[:k]
    action_index = data.draw(st.permutations(range(action_dim)))[:k]
    low, high = draw_bounds(data, k, st.floats(-10, 10))
    scale = draw_array(data, 1, k, st.floats(1e-3, 1e3))[0]
    f = WorkspaceFilter(action_dim, ee_index, low.tolist(), high.tolist(), mode=mode, action_index=action_index,
                        action_scale=scale.tolist(), obs_dim=obs_dim)
    for _ in range(steps):
        action = draw_array(data, batch, action_dim).astype(dtype)
        obs = draw_array(data, batch, obs_dim).astype(dtype)
        out, report = f(action, obs)
        assert out.dtype == dtype and out.shape == action.shape
        sent = out[:, action_index].astype(np.float64)
        assert np.isfinite(sent).all()
        ee = obs[:, ee_index].astype(np.float64)
        offset = ee if mode == "delta" else np.zeros_like(ee)
        with np.errstate(invalid="ignore", over="ignore"):
            target = offset + scale * sent
        slack = (8 * EPS * (np.abs(offset) + np.abs(target) + np.abs(low) + np.abs(high))
                 + 2 * scale * np.abs(np.spacing(out[:, action_index]).astype(np.float64))  # one ulp of the returned float
                 + 1e-300)  # subnormal positions carry no precision
        known = np.isfinite(ee).all(axis=1) if mode == "delta" else np.ones(batch, dtype=bool)
        inside = (target >= low - slack) & (target <= high + slack)
        assert inside[known].all()
        # other dimensions are not this filter's business: passed through bit for bit, but never a NaN/Inf (-> 0)
        others = [j for j in range(action_dim) if j not in action_index]
        np.testing.assert_array_equal(out[:, others], np.where(np.isfinite(action[:, others]), action[:, others], 0))
        # a trusted target (a finite row) already inside the box is left alone
        a = action[:, action_index].astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            t_in = offset + scale * a
            untouched = (np.isfinite(ee).all(axis=1) & np.isfinite(action).all(axis=1)
                         & ((t_in >= low) & (t_in <= high)).all(axis=1))
        assert (sent[untouched] == a[untouched]).all() and not report.intervened[untouched].any()


def test_workspace_holds_in_place_on_a_nan_action():
    f = WorkspaceFilter(2, ee_index=[0, 1], low=[-0.5, -0.5], high=[0.5, 0.5], mode="delta", obs_dim=4)
    out, report = f(np.array([np.nan, 0.0]), np.array([0.7, 0.1, 0.0, 0.0]))
    np.testing.assert_allclose(out, [-0.2, 0.0], atol=1e-15)  # back onto the box face, no motion inside
    assert report.fallback.tolist() == [True]
    # a delta float32 cannot express (1e30 m back at 1e-9 m per unit): hold in place, finite, reported
    far = WorkspaceFilter(1, ee_index=[0], low=-1, high=1, mode="delta", action_scale=1e-9, obs_dim=1)
    out, report = far(np.array([5.0], dtype=np.float32), np.array([1e30], dtype=np.float32))
    assert out.tolist() == [0.0] and report.fallback.tolist() == [True] and "out of range" in report.reasons[-1]


# --------------------------------------------------------------------------------------------- cbf
def draw_cbf(data: st.DataObject, qp_ok: bool = True, normal: st.SearchStrategy = st.floats(-10, 10)) -> tuple[CBFFilter, int, dict]:
    n, action_dim, m = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3 if qp_ok else 1))
    obs_dim = n + data.draw(st.integers(0, 2))
    params = {
        "state_index": data.draw(st.permutations(range(obs_dim)))[:n],
        "normals": draw_array(data, m, n, normal).tolist(),
        "offsets": draw_array(data, 1, m, st.floats(-10, 10))[0].tolist(),
        "dt": data.draw(st.one_of(st.floats(1e-6, 10.0), st.sampled_from([1e-9, 1e-12, 1e3]))),
        "gamma": data.draw(st.one_of(st.floats(1e-6, 1.0), st.just(1.0))),
    }
    if n != action_dim or data.draw(st.booleans()):
        params["input_matrix"] = draw_array(data, n, action_dim, normal).tolist()
    if qp_ok and data.draw(st.booleans()):
        low, high = draw_bounds(data, action_dim, st.floats(-100, 100))
        params["low"], params["high"] = (np.minimum(low, 0.0)).tolist(), (np.maximum(high, 0.0)).tolist()
    return CBFFilter(action_dim, obs_dim=obs_dim, **params), obs_dim, params


def cbf_margin(params: dict, state: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(h(x_next) - (1 - gamma) h(x), tolerance) from the definition, per barrier."""
    N, d = np.array(params["normals"]), np.array(params["offsets"])
    B = np.array(params.get("input_matrix", np.eye(len(state))))
    with np.errstate(over="ignore", invalid="ignore"):  # a fallback may be checked against a 1e308 state
        x_next = state + params["dt"] * (B @ u)
        h, h_next = d - N @ state, d - N @ x_next
        tol = 1e-8 * (np.abs(d) + np.abs(N) @ np.abs(state) + params["dt"] * np.abs(N) @ np.abs(B) @ np.abs(u)) + 1e-300
        return h_next - (1 - params["gamma"]) * h, tol


@SETTINGS
@given(data=st.data(), batch=st.integers(1, 8), steps=st.integers(1, 3), dtype=dtypes)
def test_cbf_output_meets_the_barrier_condition_unless_it_reports_fallback(data, batch, steps, dtype):
    f, obs_dim, params = draw_cbf(data)
    for _ in range(steps):
        action = draw_array(data, batch, f.action_dim).astype(dtype)
        obs = draw_array(data, batch, obs_dim).astype(dtype)
        out, report = f(action, obs)
        assert out.dtype == dtype and np.isfinite(out).all()
        for b in range(batch):
            if report.fallback[b]:
                continue
            state = obs[b, params["state_index"]].astype(np.float64)
            margin, tol = cbf_margin(params, state, out[b].astype(np.float64))
            assert (margin >= -tol).all(), (margin, tol)
            if "low" in params:
                assert (out[b] >= np.array(params["low"])).all() and (out[b] <= np.array(params["high"])).all()
            if not report.intervened[b]:
                assert (out[b] == action[b]).all()
        bad_input = ~np.isfinite(action.astype(np.float64)).all(axis=1)
        assert report.fallback[bad_input].all()


@SETTINGS
@given(data=st.data(), batch=st.integers(1, 8))
def test_cbf_closed_form_never_falls_back_on_ordinary_inputs_and_leaves_safe_actions_alone(data, batch):
    # ordinary: normals of 0 or 1e-3..10 (a normal of 1e-308 asks for actions of 1e308; that is a fallback)
    ordinary = st.one_of(st.just(0.0), st.floats(1e-3, 10), st.floats(-10, -1e-3))
    f, obs_dim, params = draw_cbf(data, qp_ok=False, normal=ordinary)
    G = params["dt"] * np.array(params["normals"]) @ np.array(params.get("input_matrix", np.eye(len(params["state_index"]))))
    action = draw_array(data, batch, f.action_dim, moderate)
    obs = draw_array(data, batch, obs_dim, moderate)
    out, report = f(action, obs)
    for b in range(batch):
        margin, tol = cbf_margin(params, obs[b, params["state_index"]], action[b])
        if (margin > tol).all():
            assert (out[b] == action[b]).all() and not report.intervened[b]
        elif not G.any():  # the action cannot move the barrier: infeasible only if the state asks to recover
            assert not report.fallback[b] or (margin < 0).any()
        else:  # the projection lands on the constraint plane: minimal change
            assert not report.fallback[b]
            m_out, tol_out = cbf_margin(params, obs[b, params["state_index"]], out[b])
            N, B = np.abs(np.array(params["normals"])), np.abs(np.array(params.get("input_matrix", np.eye(len(params["state_index"])))))
            rounding = 1e3 * EPS * params["dt"] * (N @ B @ np.abs(action[b]))[0]  # the projection's cancellation
            assert abs(m_out[0]) <= 1e3 * tol_out[0] + rounding


def test_cbf_closed_form_and_qp_agree_on_one_constraint():
    qpsolvers = pytest.importorskip("qpsolvers")
    rng = np.random.default_rng(0)
    for _ in range(50):
        normal, offset = rng.normal(size=(1, 3)), rng.normal(size=1)
        B = rng.normal(size=(3, 3))
        common = dict(state_index=[0, 1, 2], normals=normal.tolist(), offsets=offset.tolist(), dt=0.1, gamma=0.3,
                      input_matrix=B.tolist(), obs_dim=3)
        closed = CBFFilter(3, **common)
        qp = CBFFilter(3, low=-1e6, high=1e6, **common)  # bounds never active: the same problem, solved by DAQP
        assert not closed.uses_qp and qp.uses_qp
        x, u_ref = rng.normal(size=3), 10 * rng.normal(size=3)
        a, rep_a = closed(u_ref, x)
        b, rep_b = qp(u_ref, x)
        assert not rep_a.fallback.any() and not rep_b.fallback.any()
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-9)
        G = 0.1 * normal @ B
        ref = qpsolvers.solve_qp(np.eye(3), -u_ref, G, 0.3 * (offset - normal @ x), solver="daqp")
        np.testing.assert_allclose(a, ref, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("case", ["bounded", "three barriers"])
def test_cbf_qp_projects_far_actions_rather_than_falling_back(case):
    # DAQP meets constraints to a tolerance relative to the correction it is asked for: for an action far outside
    # (1e6 against bounds of 1) that left the solution a visible step outside, and the filter sent its fallback,
    # which breaks the barrier, although in-bounds actions meet it
    pytest.importorskip("qpsolvers")
    if case == "bounded":
        params = dict(normals=[[-1.145, -1.821]], offsets=[0.378], low=[-1, -1], high=[1, 1])
        state, direction = np.array([-0.158, -0.25]), np.array([-1.2847799, -0.440673])
    else:
        params = dict(normals=[[240.0, 3273.0], [-1433.0, 86.0], [-328.0, -2410.0]], offsets=[-0.26, -0.167, -0.397])
        state, direction = np.array([-0.079, 0.161]), np.array([-2.841623, 12.806362])
    f = CBFFilter(2, state_index=[0, 1], dt=0.05, gamma=0.5, obs_dim=2, **params)
    g = f.gamma * f.barrier(state[None])[0]
    outs = []
    for scale in (1.0, 1e3, 1e6):
        out, report = f(direction * scale, state)
        assert not report.fallback.any(), report.reasons
        assert (f.G @ out <= g + 1e-12).all()
        outs.append(out)
    # the closest safe action is the same whichever multiple of the direction it starts from
    np.testing.assert_allclose(outs[1], outs[2], atol=1e-6)


def test_cbf_infeasible_reports_fallback_and_checks_the_fallback_itself():
    # x <= 1 and x >= 2 at once: infeasible; the zero fallback violates the first barrier's recovery condition
    f = CBFFilter(1, state_index=[0], normals=[[1.0], [-1.0]], offsets=[1.0, -2.0], dt=0.1, gamma=0.5, obs_dim=1)
    out, report = f(np.array([0.3]), np.array([3.0]))
    assert out.tolist() == [0.0] and report.fallback.tolist() == [True]
    assert any("infeasible" in r for r in report.reasons) and any("violates" in r for r in report.reasons)
    out, report = f(np.array([0.3]), np.array([np.nan]))
    assert out.tolist() == [0.0] and report.fallback.tolist() == [True] and "unchecked" in report.reasons[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cbf_fallback_stays_inside_the_action_bounds_in_the_callers_float_width(dtype):
    # float32(0.1) > 0.1: the fallback at the bound must be rounded inward like every other output
    f = CBFFilter(1, state_index=[0], normals=[[1.0]], offsets=[1.0], dt=0.1, low=[-0.1], high=[0.1],
                  fallback=[0.1], obs_dim=1)
    for action, state in ((np.array([np.nan], dtype), np.array([0.0])), (np.array([0.0], dtype), np.array([np.nan]))):
        out, report = f(action, state)
        assert report.fallback[0] and out.dtype == dtype
        assert -0.1 <= float(out[0]) <= 0.1 and float(out[0]) == pytest.approx(0.1)


# ------------------------------------------------------------------------------------- energy tank
def tank_bound(mode: str, scale: np.ndarray, damping: np.ndarray, dt: float, a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The work bound of commands a [B, k] from velocities v [B, k], from the filter's definition."""
    tau = scale * a
    with np.errstate(all="ignore"):
        if mode == "velocity":
            return (tau * v).sum(axis=1) * dt
        return np.maximum(tau * v, tau * tau / damping).sum(axis=1) * dt


@SETTINGS
@given(data=st.data(), k=st.integers(1, 3), batch=st.integers(1, 8), steps=st.integers(1, 5), dtype=dtypes,
       mode=st.sampled_from(["damped", "velocity"]), measured=st.booleans())
def test_energy_tank_pays_only_what_the_tank_holds_and_scales_only_as_much_as_needed(data, k, batch, steps, dtype,
                                                                                     mode, measured):
    """Arbitrary commands and observations, with or without measured work: the bound of what is sent fits.

    The tank is tracked here from the filter's definition: each call settles the previous step (work
    measured from the position change, or the bound it was sent under; viscous credit damping dq^2 / dt
    and dry-friction credit from the position change, none without positions; cap), then a command whose bound fits is passed, and any other is scaled by a factor in
    [0, 1) whose bound fits, up to the resolution of the returned numbers.
    """
    obs_dim = 2 * k + 1
    t_min = data.draw(st.one_of(st.floats(0, 10), st.just(0.0)))
    t_max = t_min + data.draw(st.one_of(st.floats(1e-6, 100), st.just(1e-9)))
    t0 = data.draw(st.floats(t_min, t_max))
    order = data.draw(st.permutations(range(obs_dim)))
    low_damping = 1e-3 if mode == "damped" else 0.0
    params = {
        "velocity_index": order[:k], "dt": data.draw(st.one_of(st.floats(1e-6, 10.0), st.sampled_from([1e-9, 1e3]))),
        "initial_energy": t0, "min_energy": t_min, "max_energy": t_max, "work_bound": mode,
        "torque_scale": draw_array(data, 1, k, st.floats(1e-3, 1e3))[0].tolist(),
        "damping": draw_array(data, 1, k, st.one_of(st.floats(low_damping, 1e3), st.just(low_damping)))[0].tolist(),
    }
    if measured:
        params["position_index"] = order[k:2 * k]
        params["friction"] = draw_array(data, 1, k, st.one_of(st.floats(0, 1e3), st.just(0.0)))[0].tolist()
    friction = np.array(params.get("friction", [0.0] * k))
    f = EnergyTankFilter(k, obs_dim=obs_dim, **params)
    scale, damping, dt = np.array(params["torque_scale"]), np.array(params["damping"]), params["dt"]
    level, pending = np.full(batch, t0), np.zeros(batch)
    torque, position = np.zeros((batch, k)), np.full((batch, k), np.nan)
    assert (f.energy == t0).all()
    for step in range(steps):
        action = draw_array(data, batch, k).astype(dtype)
        obs = draw_array(data, batch, obs_dim).astype(dtype)
        out, report = f(action, obs)
        a, o = action.astype(np.float64), obs.astype(np.float64)
        v = o[:, params["velocity_index"]]
        q = o[:, params["position_index"]] if measured else None
        with np.errstate(all="ignore"):  # settle the step that ended (none before the first call)
            if step > 0:
                work = pending.copy()
                if measured:
                    m = np.where(torque == 0, 0.0, torque * (q - position)).sum(axis=1)
                    work = np.where(np.isfinite(q).all(axis=1) & np.isfinite(m), m, work)
                credit = np.zeros(batch)
                if measured:
                    viscous = (damping * (q - position) ** 2).sum(axis=1) / dt
                    rubbed = (friction * np.abs(q - position)).sum(axis=1)
                    credit = np.where(np.isfinite(viscous), viscous, 0.0) + np.where(np.isfinite(rubbed), rubbed, 0.0)
                level = np.minimum(t_max, level + credit - work)
            full = tank_bound(mode, scale, damping, dt, a, v)
        np.testing.assert_allclose(f.deficit, np.maximum(0.0, t_min - level), rtol=1e-9, atol=1e-300)
        q_ok = np.isfinite(q).all(axis=1) if measured else True
        valid = np.isfinite(a).all(axis=1) & np.isfinite(v).all(axis=1) & q_ok & np.isfinite(full)
        assert out.dtype == dtype and np.isfinite(out).all()
        assert (report.fallback == ~valid).all() and (out[~valid] == 0).all()
        budget = level - t_min
        with np.errstate(invalid="ignore"):
            room = valid & (level - full >= t_min)
        assert (out[room] == action[room]).all() and not report.intervened[room].any()  # no needless intervention
        o_sent = out.astype(np.float64)
        sent = np.where(valid, tank_bound(mode, scale, damping, dt, o_sent, np.where(valid[:, None], v, 0.0)), 0.0)
        fits = np.where(budget >= 0, level - sent >= t_min, sent <= 0)  # what is sent fits (deficit: nothing)
        assert fits[valid].all()
        scaled = valid & ~room
        assert ((f.last_alpha[scaled] >= 0) & (f.last_alpha[scaled] < 1)).all()
        # the command is scaled, not turned: out = r * a with one r in [0, 1] per row
        assert (np.abs(o_sent[scaled]) <= np.abs(a[scaled])).all() and (o_sent[scaled] * a[scaled] >= 0).all()
        info = np.finfo(dtype)
        with np.errstate(all="ignore"):
            o_dir = o_sent / np.abs(o_sent).max(axis=1, keepdims=True)
            a_dir = a / np.abs(a).max(axis=1, keepdims=True)
        moved = scaled & (np.abs(o_sent).max(axis=1) > 1e4 * float(info.smallest_normal))
        np.testing.assert_allclose(o_dir[moved], a_dir[moved], rtol=16 * float(info.eps), atol=4 * float(info.eps))
        # maximal: the scaled command uses the tank down to T_min, up to the resolution of the returned numbers
        with np.errstate(all="ignore"):
            ulp = np.maximum(float(info.eps) * np.abs(o_sent), float(info.smallest_subnormal))
            slope = np.abs(v) + (2 * scale * np.abs(a) / np.where(damping > 0, damping, 1.0) if mode == "damped" else 0)
            resolution = (scale * ulp * slope).sum(axis=1) * dt
            slack = 2e-3 * np.abs(budget) + 1e4 * resolution + 1e-9 * np.abs(level) + 1e-300
            unused = np.maximum(budget, 0.0) - sent
        assert (unused[scaled & (budget > 0)] <= slack[scaled & (budget > 0)]).all()
        pending = sent
        torque = scale * np.where(valid[:, None], o_sent, 0.0)
        position = q if measured else position
        if not measured:  # the tank then only ever debits bounds that fit: never below its minimum
            assert (f.energy >= t_min).all() and (f.energy <= t_max).all() and (f.deficit == 0).all()


def test_energy_tank_scales_to_a_tiny_budget_without_underflow():
    # hypothesis found it: a torque of 4e-158 at a velocity of 2e-16 against a tank holding 2.5e-228 J. The root
    # of A alpha^2 + B alpha = room squared B (~1e-174), which underflowed to 0 and gave twice the root; the check
    # of what is sent then halved it, and about half of what the tank held went unused
    f = EnergyTankFilter(1, obs_dim=3, velocity_index=[0], position_index=[1], dt=1.0, initial_energy=2.5e-228,
                         min_energy=0.0, max_energy=1.0, torque_scale=[1.0], damping=[1.0], friction=[0.0])
    action, obs = np.array([[-3.77e-158]]), np.full((1, 3), -2.22e-16)
    out, report = f(action, obs)
    sent = tank_bound("damped", np.ones(1), np.ones(1), 1.0, out, obs[:, :1])
    assert report.intervened.all() and 0 <= f.last_alpha[0] < 1
    assert 0.998 * 2.5e-228 <= sent[0] <= 2.5e-228  # the budget used, and no more


def damped_plant(rng: np.random.Generator, k: int) -> dict:
    """Joints as MuJoCo integrates them: mass, viscous damping (implicit) and Coulomb friction, substeps."""
    return {"mass": rng.uniform(0.05, 5.0, k), "damping": rng.uniform(0.5, 20.0, k),
            "friction": rng.uniform(0.0, 2.0, k), "substeps": int(rng.integers(1, 20))}


def plant_step(p: dict, q: np.ndarray, v: np.ndarray, tau: np.ndarray,
               dt: float) -> tuple[np.ndarray, np.ndarray, float]:
    """One control step: the new positions, velocities and the energy damping and friction dissipated in it."""
    h = dt / p["substeps"]
    q, v, lost = q.copy(), v.copy(), 0.0
    for _ in range(p["substeps"]):
        free = (p["mass"] * v + h * tau) / (p["mass"] + h * p["damping"])
        v = np.sign(free) * np.maximum(np.abs(free) - h * p["friction"] / (p["mass"] + h * p["damping"]), 0.0)
        q = q + h * v
        # implicit damping force -b v and friction -f sign(v) (while it slides) act against v over h
        lost += float((p["damping"] * v * v + p["friction"] * np.abs(v)).sum()) * h
    return q, v, lost


@SETTINGS
@given(data=st.data(), k=st.integers(1, 3), seed=st.integers(0, 2**31 - 1), dtype=dtypes)
def test_energy_tank_keeps_the_measured_tank_of_a_damped_plant_above_its_minimum(data, k, seed, dtype):
    """The physical guarantee: on joints with at least the declared damping and dissipative friction, the
    tank computed from the work the commands really did never drops below the minimum, for any commands,
    slow or fast dynamics (time constant m / b from 2.5 ms to 10 s against dt), tank sizes and caps."""
    rng = np.random.default_rng(seed)
    p = damped_plant(rng, k)
    dt = float(rng.choice([0.001, 0.01, 0.04, 0.2]))
    t_max = float(rng.uniform(0.01, 5.0))
    t_min = float(rng.choice([0.0, 0.3 * t_max]))
    declared = p["damping"] * rng.uniform(0.2, 1.0, k)  # never above the real damping (nor friction below)
    rubbing = p["friction"] * rng.uniform(0.0, 1.0, k)
    f = EnergyTankFilter(k, velocity_index=list(range(k, 2 * k)), position_index=list(range(k)), dt=dt,
                         initial_energy=t_max, min_energy=t_min, max_energy=t_max, torque_scale=10.0,
                         damping=declared.tolist(), friction=rubbing.tolist(), obs_dim=2 * k)
    q, v = np.zeros(k), np.zeros(k)
    tank, lowest, lost = t_max, np.inf, 0.0
    actions = data.draw(hnp.arrays(np.float64, (60, k), elements=anything))
    for a in actions:
        out, _ = f(a.astype(dtype), np.concatenate([q, v]).astype(np.float64))
        assert f._level[0] == pytest.approx(tank, rel=1e-9, abs=1e-12)  # the filter's tank is the measured one
        # ... and credits no more than the plant really dissipated (declared damping and friction below the real)
        assert f.dissipated_energy[0] <= lost * (1 + 1e-9) + 1e-12, (f.dissipated_energy[0], lost)
        tau = 10.0 * out.astype(np.float64)
        q_next, v, step_lost = plant_step(p, q, v, tau, dt)
        lost += step_lost
        credit = (declared * (q_next - q) ** 2).sum() / dt + (rubbing * np.abs(q_next - q)).sum()
        tank = min(t_max, tank + credit - float(tau @ (q_next - q)))
        q = q_next
        lowest = min(lowest, tank)
    assert lowest >= t_min - 1e-9 * t_max, (lowest, t_min)


def test_energy_tank_scales_by_the_damped_bound_and_settles_the_measured_work():
    f = EnergyTankFilter(1, velocity_index=[1], position_index=[0], dt=0.1, initial_energy=1.0, min_energy=0.0,
                         max_energy=2.0, damping=2.0, obs_dim=2)
    # from v = 1 a force of 5 N could reach 5 / 2 = 2.5 m/s: bound 0.1 * max(5 * 1, 25 / 2) = 1.25 J > 1 J, so
    # alpha solves 0.1 * 12.5 alpha^2 = 1: alpha = sqrt(0.8)
    out, report = f(np.array([5.0]), np.array([0.0, 1.0]))
    assert out[0] == pytest.approx(5.0 * np.sqrt(0.8)) and report.reasons[0].startswith("energy_tank: scaled action by 0.894")
    assert f.energy[0] == pytest.approx(0.0, abs=1e-9)  # the bound of the command in flight is reserved
    # the finger moved 5 cm and ends at 0.5 m/s: work 4.47 * 0.05, viscous credit 2 * 0.25 * 0.1
    out, report = f(np.array([0.0]), np.array([0.05, 0.5]))
    assert f.injected_energy[0] == pytest.approx(5.0 * np.sqrt(0.8) * 0.05)
    assert f.dissipated_energy[0] == pytest.approx(0.05)
    assert f.energy[0] == pytest.approx(1.0 + 0.05 - 5.0 * np.sqrt(0.8) * 0.05) and not report.any
    # no plant can overdraw a damped bound measured this way: a step's work minus its viscous credit,
    # tau dq - b dq^2 / dt, peaks at tau^2 dt / (4 b) (0.05 J for 2 N at dq = 5 cm), under the bound 0.2 J
    level = f.energy[0]
    f(np.array([2.0]), np.array([0.10, 0.0]))  # 5 cm more under 0 N: credit 2 * 0.05^2 / 0.1 = 0.05 J
    out, report = f(np.array([0.0]), np.array([0.15, 0.0]))  # 5 cm under 2 N: work 0.1 J, credit 0.05 J
    assert f.dissipated_energy[0] == pytest.approx(0.15) and f.energy[0] == pytest.approx(level)
    assert f.deficit[0] == 0 and not report.any
    f.reset()
    assert f.energy.tolist() == [1.0] and f.injected_energy.tolist() == [0.0] and f.deficit.tolist() == [0.0]


def test_energy_tank_credits_the_least_viscous_loss_of_the_position_change():
    # from rest to 0.2 m/s over 0.1 s, moving 1 cm (mean velocity 0.1 m/s): the damping dissipated at least
    # b dq^2 / dt = 2 * 0.01^2 / 0.1 = 0.002 J (exact at constant velocity), not b v_end^2 dt = 0.008 J, which
    # the plant never dissipated if it accelerated steadily (2 * integral of (2t)^2 over 0.1 s = 0.00267 J)
    f = EnergyTankFilter(1, velocity_index=[1], position_index=[0], dt=0.1, initial_energy=1.0, min_energy=0.0,
                         max_energy=2.0, damping=2.0, obs_dim=2)
    f(np.array([1.0]), np.array([0.0, 0.0]))
    f(np.array([0.0]), np.array([0.01, 0.2]))
    assert f.dissipated_energy[0] == pytest.approx(0.002, rel=1e-12)
    assert f.injected_energy[0] == pytest.approx(0.01, rel=1e-12)  # 1 N over 1 cm
    assert f.energy[0] == pytest.approx(1.0 + 0.002 - 0.01, rel=1e-12)
    # without positions, velocities at the ends of a step bound no loss within it: nothing is credited
    g = EnergyTankFilter(1, velocity_index=[0], dt=0.1, initial_energy=1.0, min_energy=0.0, max_energy=2.0,
                         damping=2.0, obs_dim=1)
    g(np.array([0.0]), np.array([0.0]))
    g(np.array([0.0]), np.array([0.2]))
    assert g.dissipated_energy.tolist() == [0.0] and g.energy.tolist() == [1.0]


def test_energy_tank_never_credits_more_than_mujoco_dissipates_under_bang_bang_commands():
    """ContactMaze's finger in MuJoCo, full-force commands reversed every 5 steps (it accelerates within each
    step): the tank's viscous credit never exceeds the damping's exact loss over the substeps, step by step."""
    import mujoco

    from envs.tasks import contact_maze as maze

    model = mujoco.MjModel.from_xml_path(maze.XML_PATH)
    data = mujoco.MjData(model)
    data.qpos[:] = maze.START
    mujoco.mj_forward(model, data)
    f = EnergyTankFilter(2, velocity_index=[2, 3], position_index=[0, 1], dt=maze.CONTROL_DT, initial_energy=10.0,
                         max_energy=20.0, torque_scale=maze.GEAR, damping=maze.DAMPING, obs_dim=4)
    rng = np.random.default_rng(0)
    h, exact, end_velocity, step_loss = model.opt.timestep, 0.0, 0.0, 0.0
    for t in range(201):  # call t settles step t - 1
        before = f.dissipated_energy[0]
        sign = 1.0 if t % 10 < 5 else -1.0
        out, _ = f(np.array([sign, sign * rng.choice([0.0, 1.0])]), np.concatenate([data.qpos, data.qvel]))
        assert f.dissipated_energy[0] - before <= step_loss * (1 + 1e-9), (t, f.dissipated_energy[0] - before, step_loss)
        data.ctrl[:] = out
        step_loss = 0.0
        for _ in range(maze.FRAME_SKIP):
            mujoco.mj_step(model, data)
            step_loss += maze.DAMPING * float(data.qvel @ data.qvel) * h
        exact += step_loss if t < 200 else 0.0
        end_velocity += maze.DAMPING * float(data.qvel @ data.qvel) * maze.CONTROL_DT if t < 200 else 0.0
    assert f.dissipated_energy[0] <= exact * (1 + 1e-9)
    assert f.dissipated_energy[0] > 0.8 * exact  # a tight bound, not a trivial one
    assert end_velocity > 1.05 * exact  # here the end-of-step estimate over-credits (what the filter did before)


def test_energy_tank_reports_a_deficit_when_the_plant_overdraws_the_velocity_bound():
    f = EnergyTankFilter(1, velocity_index=[1], position_index=[0], dt=0.1, initial_energy=0.01, min_energy=0.0,
                         max_energy=1.0, damping=2.0, work_bound="velocity", obs_dim=2)
    f(np.array([2.0]), np.array([0.0, 0.0]))  # predicted work 2 N * 0 m/s * 0.1 s = 0: passes
    out, report = f(np.array([2.0]), np.array([0.05, 1.0]))  # did 0.1 J, credit 2 * 0.05^2 / 0.1 = 0.05 J
    assert f.deficit[0] == pytest.approx(0.04) and out.tolist() == [0.0]
    assert "below its minimum by 0.04 J" in report.reasons[0]


def test_energy_tank_velocity_bound_is_the_one_step_prediction():
    f = EnergyTankFilter(1, velocity_index=[0], dt=0.1, initial_energy=1.0, min_energy=0.0, max_energy=2.0,
                         work_bound="velocity", obs_dim=1)
    out, report = f(np.array([5.0]), np.array([1.0]))  # draws 0.5 J of 1 J: passes
    assert out.tolist() == [5.0] and not report.intervened.any() and f.energy[0] == pytest.approx(0.5)
    out, report = f(np.array([10.0]), np.array([1.0]))  # would draw 1 J of 0.5 J: half of it
    assert out[0] == pytest.approx(5.0) and f.energy[0] == pytest.approx(0.0, abs=1e-12)
    assert report.reasons == ["energy_tank: scaled action by 0.5 (tank at minimum)"]
    out, report = f(np.array([-4.0]), np.array([1.0]))  # braking refills the tank
    assert out.tolist() == [-4.0] and f.energy[0] == pytest.approx(0.4)
    assert f.injected_energy[0] == pytest.approx(0.5 + 0.5)  # settled steps only; the braking one is in flight


def test_energy_tank_on_contact_maze_never_lets_the_measured_tank_go_below_its_minimum():
    """Real MuJoCo physics with walls, friction and contacts: random, bang-bang and wall-pressing commands
    through configs/safety/passivity's chain; the tank computed from the env's own energy terms (the
    motors' exact work, the viscous loss) never drops below the minimum, and the filter's tank equals it."""
    import gymnasium as gym

    import envs.tasks  # noqa: F401
    from envs.tasks.contact_maze import energy_filter_spec

    tank = energy_filter_spec(initial_energy=0.1, max_energy=0.2)
    chain = build_chain([{"type": "box", "low": -1.0, "high": 1.0, "fallback": "zero"}, tank], 2, 10)
    env = gym.make("robo_rl/ContactMaze-v0")
    rng = np.random.default_rng(0)
    lowest, interventions, steps = np.inf, 0, 0
    for episode in range(8):
        obs, _ = env.reset(seed=episode)
        chain.reset(1)
        level, done, hold = tank["initial_energy"], False, np.ones(2)
        while not done:
            if episode % 3 == 0:
                action = rng.uniform(-1.5, 1.5, 2)
            elif episode % 3 == 1:
                hold = np.sign(rng.normal(size=2)) if steps % 10 == 0 else hold
                action = hold
            else:  # straight at the sub-goal: presses into walls and slides along them
                action = np.clip(20 * obs[6:8] - 2 * obs[2:4], -1, 1) + rng.normal(scale=0.3, size=2)
            out, report = chain(action, obs)
            assert chain.filters[-1]._level[0] == pytest.approx(level, abs=1e-9)
            interventions += int(report.intervened.any())
            position = obs[0:2].copy()
            obs, _, terminated, truncated, info = env.step(out)
            rubbed = float(np.abs(obs[0:2] - position).sum()) * tank["friction"][0]
            level = min(tank["max_energy"], level + info["dissipated_energy"] + rubbed - info["injected_energy"])
            lowest = min(lowest, level)
            steps += 1
            done = terminated or truncated
    env.close()
    assert lowest >= -1e-9 and interventions > steps // 2, (lowest, interventions, steps)


# ------------------------------------------------------------------------------------------- chain
FULL_SPEC = [
    {"type": "box", "low": [-1, -2, -1], "high": [1, 2, 3], "fallback": "zero"},
    {"type": "rate", "max_delta": 0.5},
    {"type": "workspace", "ee_index": [4, 5], "low": -1, "high": 1, "mode": "delta", "action_scale": 0.1},
    {"type": "cbf", "state_index": [0, 1], "normals": [[1, 0], [0, 1]], "offsets": [1, 1], "dt": 0.05,
     "gamma": 0.2, "input_matrix": [[1, 0, 0], [0, 1, 0]], "low": -5, "high": 5},
    {"type": "energy_tank", "velocity_index": [2, 3, 6], "dt": 0.02, "initial_energy": 1, "max_energy": 3,
     "torque_scale": [2, 2, 1], "damping": 0.5},
]


def test_describe_round_trips_through_build_chain_and_json():
    chain = build_chain(FULL_SPEC, action_dim=3, obs_dim=7)
    described = chain.describe()
    again = build_chain(json.loads(json.dumps(described)), action_dim=3, obs_dim=7)
    assert again.describe() == described
    assert [f.name for f in again.filters] == ["box", "rate", "workspace", "cbf", "energy_tank"]
    rng = np.random.default_rng(0)
    for _ in range(5):  # and the rebuilt chain behaves the same
        action, obs = 3 * rng.normal(size=(2, 3)), rng.normal(size=(2, 7))
        np.testing.assert_array_equal(chain(action, obs)[0], again(action, obs)[0])
    assert build_chain(None, 3).describe() == {"filters": []} == build_chain({"filters": []}, 3).describe()


def test_a_chain_s_state_round_trips_through_json_and_carries_on_as_unbroken():
    # what a training checkpoint keeps of each env copy's filters (the previous command, the tank's level and
    # the command in flight, NaN positions before the first step), so a resumed run filters as an unbroken one
    spec = [*FULL_SPEC[:4], {**FULL_SPEC[4], "position_index": [0, 1, 5]}]
    chain = build_chain(spec, action_dim=3, obs_dim=7)
    rng = np.random.default_rng(0)
    steps = [(3 * rng.normal(size=(2, 3)), rng.normal(size=(2, 7))) for _ in range(10)]
    chain.reset(2)
    saved = json.dumps(chain.state_dict())  # before the first step: the tank's positions are NaN
    assert "NaN" not in saved
    for action, obs in steps[:5]:
        chain(action, obs)
    saved = json.loads(json.dumps(chain.state_dict()))
    resumed, fresh = build_chain(spec, action_dim=3, obs_dim=7), build_chain(spec, action_dim=3, obs_dim=7)
    resumed.load_state_dict(saved)
    fresh.reset(2)
    outputs = [(chain(a, o)[0], resumed(a, o)[0], fresh(a, o)[0]) for a, o in steps[5:]]
    for ours, theirs, _ in outputs:
        np.testing.assert_array_equal(ours, theirs)
    assert any(not np.array_equal(ours, new) for ours, _, new in outputs)  # the state mattered
    assert json.dumps(resumed.state_dict()) == json.dumps(chain.state_dict())
    with pytest.raises(ValueError, match="filters' state"):
        build_chain(spec[:2], action_dim=3, obs_dim=7).load_state_dict(saved)


def test_reset_rows_restarts_those_rows_as_a_filter_of_their_own_would():
    # training filters N env copies' rows in one call and restarts a row when its copy's episode ends: each row must
    # come out as from a chain of its own reset then (a per-copy chain cost a Python call chain per copy and step)
    spec = [{"type": "box", "low": -1, "high": [1, 2, 3], "fallback": "hold"}, {"type": "rate", "max_delta": 0.5},
            {"type": "workspace", "ee_index": [4, 5], "low": -1, "high": 1, "mode": "absolute"},
            {**FULL_SPEC[4], "position_index": [0, 1, 5]}]
    rows, rng = 4, np.random.default_rng(1)
    batched, alone = build_chain(spec, 3, 7), [build_chain(spec, 3, 7) for _ in range(rows)]
    batched.reset(rows)
    for chain in alone:
        chain.reset(1)
    for step in range(40):
        action, obs = 3 * rng.normal(size=(rows, 3)), rng.normal(size=(rows, 7))
        action[rng.random(rows) < 0.15, 0] = np.nan  # held rows: the previous output, or the midpoint after a restart
        obs[rng.random(rows) < 0.1, 4] = np.nan  # blind rows: the workspace holds the previous target
        out, report = batched(action.astype(np.float32), obs)
        for i, chain in enumerate(alone):
            own, own_report = chain(action[i].astype(np.float32), obs[i])
            np.testing.assert_array_equal(out[i], own, err_msg=f"row {i} at step {step}")
            assert (report.intervened[i], report.fallback[i]) == (own_report.intervened[0], own_report.fallback[0])
        ended = (rng.random(rows) < 0.25) | (step == 20) * (np.arange(rows) == 0)  # row 0 restarts at the save
        batched.reset_rows(ended)
        for i in np.flatnonzero(ended):
            alone[i].reset(1)
        if step == 20:  # a checkpoint with restarted rows (no previous output: NaN) resumes as it was
            saved = json.loads(json.dumps(batched.state_dict()))
            assert saved["filters"][1]["prev"]["data"][:3] == [None] * 3  # (NaN: JSON's null)
            batched = build_chain(spec, 3, 7)
            batched.load_state_dict(saved)
    assert batched.filters[0].prev is not None and batched.filters[3].injected_energy.shape == (rows,)


def test_reset_rows_of_a_stateful_filter_that_cannot_restart_a_row_is_refused_by_name():
    from sim2real.filters.base import SafetyFilter

    class Mine(BoxFilter):  # a filter of one's own with per-episode state and no _reset_rows
        episode_state = ("prev", "count")
        _reset_rows = SafetyFilter._reset_rows

    f = Mine(3, low=-1, high=1)
    f.reset(2)
    with pytest.raises(TypeError, match="Mine keeps per-episode state .* define _reset_rows"):
        f.reset_rows([True, False])


@pytest.mark.parametrize("rows", [True, [-1], [3], [True, False], [[0]], 1.5, None, "0", [0.0]])
def test_reset_rows_refuses_what_names_no_rows_of_the_batch(rows):
    # True reset every row (lifting the rate limit of all of them), [-1] the last one; the rest were numpy errors
    chain = build_chain([{"type": "box", "low": -1, "high": 1}, {"type": "rate", "max_delta": 0.1}], action_dim=1)
    chain(np.full((3, 1), 0.5))
    with pytest.raises(ValueError, match=r"chain: reset_rows takes row indices in \[0, 3\) or a mask of 3 true/false "
                                         r"values, got "):
        chain.reset_rows(rows)
    assert chain(np.full((3, 1), -0.5))[0].tolist() == [[0.4]] * 3  # no row was restarted
    chain.reset_rows(2)  # one index, indices and a mask name rows
    chain.reset_rows(np.array([0, 2]))
    chain.reset_rows([False, True, False])
    chain.reset_rows([])
    assert chain(np.full((3, 1), -0.5))[0].tolist() == [[-0.5], [-0.5], [-0.5]]


def test_chain_merges_reports_in_order():
    chain = build_chain([{"type": "box", "low": -1, "high": 1}, {"type": "rate", "max_delta": 0.1}], action_dim=1)
    chain.reset(batch=3)
    chain(np.zeros((3, 1)))
    out, report = chain(np.array([[5.0], [np.nan], [0.05]], dtype=np.float32))
    assert out.dtype == np.float32 and out.shape == (3, 1)
    assert report.intervened.tolist() == [True, True, False]
    assert report.fallback.tolist() == [False, True, False]
    assert [r.split(":")[0] for r in report.reasons] == ["box", "box", "rate"]
    with pytest.raises(ValueError, match="reset"):
        chain(np.zeros((2, 1)))  # a different batch without reset
    empty = FilterChain([], action_dim=2)
    out, report = empty(np.array([np.nan, 1.0]))
    assert np.isnan(out[0]) and not report.any


@pytest.mark.parametrize("spec, message", [
    ([{"type": "boxx"}], r"safety.filters\[0\]: type: unknown filter type 'boxx'"),
    ([{"low": 0}], r"unknown filter type None"),
    ([{"type": "box", "low": -1, "hgh": 1}], r"\[0\] \(box\): unknown key 'hgh'"),
    ([{"type": "box", "low": -1}], r"missing key 'high'"),
    ([{"type": "box", "low": 1, "high": -1}], r"low > high in dimension 0"),
    ([{"type": "box", "low": [-1, -1], "high": 1}], r"low: expected a number or a list of 3 numbers"),
    ([{"type": "box", "low": -np.inf, "high": 1}], r"low: every entry must be finite"),
    ([{"type": "box", "low": "a", "high": 1}], r"low: expected numbers"),
    ([{"type": "box", "low": -1, "high": 1, "fallback": "stop"}], r"fallback: expected one of hold, zero, midpoint"),
    ([{"type": "rate", "max_delta": 0}], r"max_delta: every entry must be > 0"),
    ([{"type": "rate", "max_delta": 1}, {"type": "workspace", "ee_index": [9], "low": 0, "high": 1}],
     r"safety.filters\[1\] \(workspace\): ee_index: index 9 is out of range of obs_dim=8"),
    ([{"type": "workspace", "ee_index": [0], "low": 0, "high": 1, "mode": "relative"}], r"mode: expected one of"),
    ([{"type": "cbf", "state_index": [0, 1, 2], "normals": [[1, 0, 0]], "offsets": [1], "dt": 0.1, "gamma": 1.5}],
     r"\(cbf\): gamma: must be <= 1.0"),
    ([{"type": "cbf", "state_index": [0, 1, 2], "normals": [[1, 0, 0]], "offsets": [1], "dt": 0.1, "gamma": 0}],
     r"gamma: must be > 0.0"),
    ([{"type": "cbf", "state_index": [0, 1, 2], "normals": [[1, 0]], "offsets": [1], "dt": 0.1}], r"normals: expected"),
    ([{"type": "cbf", "state_index": [0, 1], "normals": [[1, 0]], "offsets": [1], "dt": 0.1}], r"input_matrix: required"),
    ([{"type": "cbf", "state_index": [0, 1, 2], "normals": [[1, 0, 0]], "offsets": [1], "dt": 0.1, "low": -1}],
     r"low/high: give both"),
    ([{"type": "cbf", "state_index": [0, 1, 2], "normals": [[1, 0, 0]], "offsets": [1], "dt": 0.1, "low": -1,
       "high": 1, "fallback": 2}], r"fallback: .* is outside \[low, high\]"),
    ([{"type": "energy_tank", "velocity_index": [0, 1, 2], "dt": 0.1, "initial_energy": 1, "min_energy": 3,
       "max_energy": 2}], r"min_energy >= max_energy"),
    ([{"type": "energy_tank", "velocity_index": [0, 1, 2], "dt": 0.1, "initial_energy": 5, "max_energy": 2}],
     r"initial_energy: 5.0 is outside"),
    ([{"type": "energy_tank", "velocity_index": [0, 1], "dt": 0.1, "initial_energy": 1, "max_energy": 2}],
     r"velocity_index: 2 velocities for 3 action dimensions"),
    ([{"type": "energy_tank", "velocity_index": [0, 1, 1], "dt": 0.1, "initial_energy": 1, "max_energy": 2}],
     r"velocity_index: indices repeat"),
    ([{"type": "energy_tank", "velocity_index": [0, 1, 2], "dt": -0.1, "initial_energy": 1, "max_energy": 2}],
     r"dt: must be > 0.0"),
    ([{"type": "energy_tank", "velocity_index": [0, 1, 2], "dt": 0.1, "initial_energy": 1, "max_energy": 2,
       "damping": -1}], r"damping: every entry must be >= 0.0"),
    ([{"type": "energy_tank", "velocity_index": [0, 1, 2], "dt": 0.1, "initial_energy": 1, "max_energy": 2}],
     r"damping: work_bound 'damped' needs damping > 0"),
    ([{"type": "energy_tank", "velocity_index": [0, 1, 2], "position_index": [3, 4], "dt": 0.1, "initial_energy": 1,
       "max_energy": 2, "damping": 1}], r"position_index: 2 entries, but velocity_index has 3"),
    ([{"type": "energy_tank", "velocity_index": [0, 1, 2], "dt": 0.1, "initial_energy": 1, "max_energy": 2,
       "damping": 1, "work_bound": "exact"}], r"work_bound: expected one of damped, velocity"),
    ([{"type": "energy_tank", "velocity_index": [0, 1, 2], "dt": 0.1, "initial_energy": 1, "max_energy": 2,
       "damping": 1, "friction": 0.5}], r"friction: crediting dry friction needs the joint positions"),
    ({"filter": []}, r"safety: unknown key 'filter'"),
    # a mapping without its list was read as no filters (every export writes {filters: []} for none)
    ({}, r"safety: a safety spec is \{filters: \[\.\.\.\]\} \(\{filters: \[\]\} for no filters\), got \{\}"),
    ({"filters": None}, r"a safety spec is \{filters: \[\.\.\.\]\}.*got \{'filters': None\}"),
])
def test_build_chain_rejects_bad_specs_naming_the_key(spec, message):
    with pytest.raises(ValueError, match=message):
        build_chain(spec, action_dim=3, obs_dim=8)


def test_filters_import_without_torch_and_load_qpsolvers_only_for_a_qp():
    code = ("import sys; from sim2real.filters import build_chain; "
            "build_chain([{'type': 'box', 'low': -1, 'high': 1}, {'type': 'cbf', 'state_index': [0], "
            "'normals': [[1.0]], 'offsets': [1.0], 'dt': 0.1}], 1, 1); "
            "assert 'torch' not in sys.modules and 'qpsolvers' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).resolve().parents[2])


def test_configs_safety_files_build():
    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parents[2] / "configs" / "safety"
    names = sorted(p.stem for p in root.glob("*.yaml"))
    assert {"none", "box", "passivity"} <= set(names)
    for name in names:
        chain = build_chain(yaml.safe_load((root / f"{name}.yaml").read_text()), action_dim=2, obs_dim=10)
        chain(np.zeros(2), np.zeros(10))
    assert len(build_chain(yaml.safe_load((root / "none.yaml").read_text()), 2)) == 0


@SETTINGS
@given(data=st.data(), dim=st.integers(1, 3), batch=st.integers(1, 4), steps=st.integers(1, 4), dtype=dtypes)
def test_box_then_rate_stays_in_the_box_even_from_a_reset_command_outside_it(data, dim, batch, steps, dtype):
    # configs/safety/box.yaml's order; the robot may hold a command outside the box (a fallback, another controller)
    low, high = draw_bounds(data, dim, moderate)
    assume(holds_a_float32(low, high))
    chain = build_chain([{"type": "box", "low": low.tolist(), "high": high.tolist()},
                         {"type": "rate", "max_delta": data.draw(st.floats(1e-3, 10.0))}], action_dim=dim)
    chain.reset(batch, initial=draw_array(data, batch, dim, wide))
    for _ in range(steps):
        out, _ = chain(draw_array(data, batch, dim).astype(dtype))
        assert np.isfinite(out).all() and (out >= low).all() and (out <= high).all()


@pytest.mark.parametrize("make", [
    lambda: WorkspaceFilter(3, ee_index=[0, 1], low=[-1, -1], high=[1, 1]),
    lambda: WorkspaceFilter(3, ee_index=[0, 1], low=[-1, -1], high=[1, 1], mode="absolute"),
    lambda: EnergyTankFilter(3, velocity_index=[0, 1], action_index=[0, 1], dt=0.01, initial_energy=1.0,
                             max_energy=2.0, damping=1.0),
])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_filters_governing_some_dimensions_pass_no_non_finite_entry_in_the_others(make, bad):
    f = make()
    out, report = f(np.array([0.1, 0.1, bad]), np.array([0.2, 0.3, 0.0, 0.0]))
    assert np.isfinite(out).all() and out[2] == 0.0
    assert report.fallback[0] and report.intervened[0] and "non-finite" in " ".join(report.reasons)
    f = make()
    out, report = f(np.array([[0.1, 0.1, 0.5], [0.1, 0.1, bad]]), np.zeros((2, 4)))  # a batch: only the bad row
    assert np.isfinite(out).all() and out[0, 2] == 0.5 and report.fallback.tolist() == [False, True]


@pytest.mark.parametrize("action", [np.array([0.5 + 3j, 0.5]), np.array([True, False]), np.array(["0.5", "2"]),
                                    np.array(["a", "b"])])
def test_a_filter_refuses_actions_that_are_not_real_numbers(action):
    # a complex action lost its imaginary part with only a numpy warning; bools and text were read as numbers
    with pytest.raises(TypeError, match="box: action must be real numbers, got an array of"):
        BoxFilter(2, -1, 1)(action)
    workspace = WorkspaceFilter(2, ee_index=[0, 1], low=[-1, -1], high=[1, 1])
    with pytest.raises(TypeError, match="workspace: obs must be real numbers"):
        workspace(np.zeros(2), np.array([0.1 + 1j, 0.0]))


# ------------------------------------------------------------------------- float32 edges, damaged state
def test_float32_callers_get_finite_numbers_from_bounds_and_reset_commands_beyond_float32s_range():
    # a rate limit seeded with a float64 command past 3.4e38 returned inf to a float32 caller, and so did a box
    # whose bounds lie beyond float32's range: the nearest finite float32 is returned instead
    rate = RateFilter(3, 0.1)
    rate.reset(2, initial=[1e300, -1e300, 3.5e38])
    out, report = rate(np.zeros((2, 3), np.float32))
    assert out.dtype == np.float32 and np.isfinite(out).all() and not report.fallback.any()
    big = np.finfo(np.float32).max
    assert (out == np.array([big, -big, big], np.float32)).all()
    for low, high in ((1e39, 2e39), (-2e39, -1e39)):
        out, _ = BoxFilter(1, low, high)(np.array([0.0], np.float32))
        assert np.isfinite(out).all() and out[0] == np.float32(np.sign(low) * big)


@pytest.mark.parametrize("low, max_delta", [(0.7, 1e-9), (0.7, 1e-12), (1e22, 1e6), (-0.3, 1e-10)])
def test_box_then_rate_stays_in_the_box_when_the_rate_window_holds_no_float32(low, max_delta):
    # reset with a command below the box: the rate filter starts from low (float64). A window of +-max_delta around
    # it holds no float32, and the nearest float32 to low - max_delta (0.69999999 for 0.7) left the box
    chain = build_chain([{"type": "box", "low": low, "high": abs(low) * 2 + 1}, {"type": "rate", "max_delta": max_delta}], 1)
    chain.reset(1, initial=[low - 10 * abs(low) - 1])
    for _ in range(3):
        out, _ = chain(np.array([abs(low) * 1.5 + 0.5], np.float32))
        assert low <= float(out[0]) <= abs(low) * 2 + 1
        step = float(out[0])
    assert abs(step - low) <= max_delta + 3 * np.spacing(np.float32(abs(low)))  # within one float32 step past low


def _stepped(make, batch=2, obs_dim=4):
    f = make()
    f.reset(batch)
    rng = np.random.default_rng(1)
    for _ in range(3):
        f(rng.normal(size=(batch, f.action_dim)), rng.normal(size=(batch, obs_dim)))
    return f


TANK = lambda: EnergyTankFilter(2, velocity_index=[0, 1], position_index=[2, 3], dt=0.01, initial_energy=1.0,  # noqa: E731
                                max_energy=2.0, damping=1.0)


@pytest.mark.parametrize("make, damage, message", [
    (lambda: RateFilter(2, 0.1), lambda s: s["prev"]["data"].__setitem__(0, None), "'prev' is float64 [2, 2] with NaN/inf"),
    (lambda: BoxFilter(2, -1, 1), lambda s: s.update(prev={"ndarray": "<f8", "shape": [2, 3], "data": [0.0] * 6}),
     "'prev' is float64 [2, 3], expected [2, 2]"),
    (lambda: RateFilter(2, 0.1), lambda s: s.update(batch=1), "'prev' is float64 [2, 2], expected [1, 2]"),
    (lambda: WorkspaceFilter(2, ee_index=[0, 1], low=-1, high=1, mode="absolute"),
     lambda s: s["prev_target"]["data"].__setitem__(1, None), "'prev_target' is float64 [2, 2] with NaN/inf"),
    (TANK, lambda s: s["_level"]["data"].__setitem__(0, 1e300), "'_level' [1e+300, "),
    (TANK, lambda s: s["_level"]["data"].__setitem__(1, None), "'_level' holds NaN"),
    (TANK, lambda s: s["_torque"]["data"].__setitem__(0, None), "'_torque' is float64 [2, 2] with NaN/inf"),
    # a target outside the box was held, in absolute mode, on a blind step; a negative work bound refilled the tank
    (lambda: WorkspaceFilter(2, ee_index=[0, 1], low=-1, high=1, mode="absolute"),
     lambda s: s["prev_target"]["data"].__setitem__(1, 3.0), "'prev_target' holds a target outside the box"),
    (TANK, lambda s: s["_pending"]["data"].__setitem__(0, -1e9), "'_pending' [-1000000000.0, "),
    (TANK, lambda s: s.update(_fresh={"ndarray": "<f8", "shape": [2], "data": [0.0, 0.0]}), "'_fresh' is float64 [2]"),
    (lambda: BoxFilter(2, -1, 1), lambda s: s.update(prev="abc"), "'prev' is 'abc'"),
    (lambda: BoxFilter(2, -1, 1), lambda s: s.update(prev={"ndarray": "<f8", "shape": [2, 2], "data": ["a"] * 4}),
     "'prev' is not a valid array"),
    (lambda: BoxFilter(2, -1, 1), lambda s: s.update(batch="x"), "'batch' is 'x'"),
])
def test_a_damaged_or_mismatched_state_is_refused_and_leaves_the_filter_as_it_was(make, damage, message):
    # load_state_dict set whatever it was given: a NaN previous command made the rate filter return NaN, a tank
    # loaded above max_energy paid out energy it never had, another action size crashed inside numpy later
    f = _stepped(make)
    twin = _stepped(make)
    state = json.loads(json.dumps(f.state_dict()))
    damage(state)
    with pytest.raises(ValueError, match="saved filter state") as info:
        f.load_state_dict(state)
    assert message in str(info.value) and f.name in str(info.value)
    action, obs = np.array([[5.0, -5.0], [np.nan, 0.3]]), np.array([[0.1, 0.2, 0.3, 0.4]] * 2)
    ours, theirs = f(action, obs), twin(action, obs)
    np.testing.assert_array_equal(ours[0], theirs[0])  # nothing of the damaged state was taken
    assert np.isfinite(ours[0]).all()


def test_a_chain_checks_every_filter_s_state_before_it_loads_any():
    spec = [{"type": "box", "low": -1, "high": 1}, {"type": "rate", "max_delta": 0.1}]
    chain, twin = build_chain(spec, 2), build_chain(spec, 2)
    for c in (chain, twin):
        c(np.full((2, 2), 0.5))
    other = build_chain(spec, 2)
    other(np.full((2, 2), -0.5))
    state = json.loads(json.dumps(other.state_dict()))
    state["filters"][1]["prev"]["data"][0] = None  # the box's state is fine, the rate's is not
    with pytest.raises(ValueError, match="filter 1: rate: saved filter state 'prev'"):
        chain.load_state_dict(state)
    np.testing.assert_array_equal(chain(np.full((2, 2), np.nan))[0], twin(np.full((2, 2), np.nan))[0])
    state = json.loads(json.dumps(other.state_dict()))
    state["filters"][0] = build_chain(spec[:1], 2).filters[0].state_dict()  # a never-reset box: no batch
    with pytest.raises(ValueError, match=r"filter 0 \(box\): saved filter state holds a batch of None rows, the chain's 2"):
        chain.load_state_dict(state)
    # each held command was one the filters before sent: a rate limit resumed from 5 outside a [-1, 1] box stepped
    # to 4.9; the reset's command it starts from is held to the box too
    for name in ("prev", "_initial"):
        state = json.loads(json.dumps(other.state_dict()))
        state["filters"][1][name] = {"ndarray": "<f8", "shape": [2, 2], "data": [0.5, 0.5, 5.0, 0.5]}
        with pytest.raises(ValueError, match=rf"filter 1 \(rate\): saved filter state '{name}' holds a command filter 0 "
                                             r"\(box\) does not allow"):
            chain.load_state_dict(state)
    np.testing.assert_array_equal(chain(np.full((2, 2), 9.0))[0], twin(np.full((2, 2), 9.0))[0])


def test_a_call_whose_batch_does_not_fit_the_reset_s_commands_says_so():
    chain = build_chain([{"type": "rate", "max_delta": 0.1}], 2)
    chain.reset(3, initial=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"chain: got a batch of 2 rows but reset\(batch=3, initial=...\) gave a "
                                         r"command for each of 3 rows; call reset\(batch=2, initial=...\)"):
        chain(np.zeros((2, 2)))
    chain.reset(3, initial=np.zeros(2))  # one command for every row: any batch may follow
    assert chain(np.ones((2, 2)))[0].tolist() == [[0.1, 0.1]] * 2
    with pytest.raises(ValueError, match=r"rate: action has no rows \(shape \[0, 2\]\)"):
        RateFilter(2, 0.1)(np.zeros((0, 2)))


def test_a_chain_with_an_energy_tank_loads_its_own_state_before_its_first_reset():
    # the tank starts at batch 1 while a chain never reset has none: the batch check refused the chain's own state
    spec = [{"type": "energy_tank", "velocity_index": [0], "dt": 0.01, "initial_energy": 1.0, "max_energy": 2.0,
             "damping": 0.5}]
    saved = json.loads(json.dumps(build_chain(spec, 1, obs_dim=2, control_dt=0.01).state_dict()))
    chain = build_chain(spec, 1, obs_dim=2, control_dt=0.01)
    chain.load_state_dict(saved)
    out, _ = chain(np.array([0.5]), np.array([0.0, 0.0]))  # the first call still filters
    assert np.isfinite(out).all()
