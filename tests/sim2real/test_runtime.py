"""The deployment runtime: export checks, strict inputs, the watched fixed-rate loop, the sim2sim robot."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from sim2real.deploy import deploy
from sim2real.loop import ControlLoop, Observation, WatchdogConfig
from sim2real.robots import CallbackRobot, MujocoSim2SimRobot, SimulatedClock
from sim2real.runtime import (ActionOutOfBounds, ChunkExecutor, ExportError, NonFiniteAction, NonFiniteObservation,
                              PolicyRuntime, load_sidecar)
from tests.sim2real.conftest import make_export

REPO = Path(__file__).resolve().parents[2]
NO_INFERENCE_LIMIT = WatchdogConfig(max_inference_time=math.inf)  # timing-independent tests on a busy machine


def reference(export: Path, obs: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
    """The tiny policy's formula in numpy, from the ONNX file's own weights."""
    import onnx
    from onnx import numpy_helper

    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(export / "policy.onnx")).graph.initializer}
    h = obs @ w["W"] + w["b"] + (noise @ w["Wn"] if noise is not None else 0.0)
    return w["mid"] + w["half"] * np.tanh(h)


# --- PolicyRuntime -------------------------------------------------------------------------------

def test_runtime_matches_the_graph_for_single_and_batched_observations(tmp_path: Path) -> None:
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=2, noise_dim=3, default_noise=[0.5, -0.5, 1.0])
    rt = PolicyRuntime(export)
    assert (rt.obs_dim, rt.act_dim, rt.noise_dim, rt.dt) == (4, 2, 3, 0.04)
    obs = np.random.default_rng(0).normal(size=(5, 4))  # float64 in: cast to float32
    default = np.array([0.5, -0.5, 1.0], np.float32)
    np.testing.assert_allclose(rt(obs), reference(export, obs.astype(np.float32), default), atol=1e-5)
    single = rt(obs[0])
    assert single.shape == (2,) and single.dtype == np.float32
    noise = np.ones((5, 3), np.float32)
    np.testing.assert_allclose(rt(obs, noise), reference(export, obs.astype(np.float32), noise), atol=1e-5)
    assert ((rt(obs * 100) >= -1) & (rt(obs * 100) <= 1)).all()


def test_tampered_model_is_refused_with_the_checksum_message(export_dir: Path) -> None:
    model = export_dir / "policy.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte changed
    model.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"policy\.onnx does not match the checksum in policy\.json "
                                          r"\(file changed or wrong sidecar\): .*policy\.onnx; export it again from "
                                          r"its run \(robo-rl export run_dir=<run>\)"):
        PolicyRuntime(export_dir)


def test_sidecar_that_disagrees_with_the_model_is_refused(export_dir: Path) -> None:
    path = export_dir / "policy.json"
    sidecar = json.loads(path.read_text())
    sidecar["observation"]["dim"] = 5
    sidecar["inputs"][0]["shape"] = ["batch", 5]
    path.write_text(json.dumps(sidecar))
    with pytest.raises(ExportError, match=r"input 'obs' is tensor\(float\) \['batch', 4\].*declares float32 \['batch', 5\]"):
        PolicyRuntime(export_dir)
    sidecar["inputs"][0]["shape"] = ["batch", 4]  # now inconsistent inside the sidecar itself
    path.write_text(json.dumps(sidecar))
    with pytest.raises(ExportError, match=r"policy\.json: inputs .* do not match"):
        load_sidecar(export_dir)


def test_bad_sidecars_name_the_file_and_the_problem(export_dir: Path) -> None:
    path = export_dir / "policy.json"
    good = json.loads(path.read_text())
    for change, message in ((("format", "other"), "expected 'robo-rl-export'"), (("version", 2), "version 2 is not supported"),
                            (("model_format", "torchscript"), "load it with torch.jit.load")):
        path.write_text(json.dumps({**good, change[0]: change[1]}))
        with pytest.raises(ExportError, match=message):
            PolicyRuntime(export_dir)
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "sha256"}))
    with pytest.raises(ExportError, match=r"policy\.json: missing key 'sha256'"):
        load_sidecar(path)
    with pytest.raises(ExportError, match="not found"):
        load_sidecar(export_dir / "nowhere")
    # the model file given for the export: said so, not "not valid JSON (utf-8 codec can't decode byte ...)"
    path.write_text(json.dumps(good))
    with pytest.raises(ExportError, match=r"policy\.onnx is not an export's sidecar \(policy\.json\): pass the export "
                                          r"directory"):
        PolicyRuntime(export_dir / "policy.onnx")
    assert PolicyRuntime(path).obs_dim == 4  # the sidecar file itself still works
    # a file with no sidecar beside it is not pointed at its own directory ("pass the export directory (.)")
    (export_dir.parent / "afile").write_text("x")
    with pytest.raises(ExportError, match=r"afile is not an export's sidecar \(policy\.json\): pass an export directory, "
                                          r"which holds the model file and policy\.json \(from `robo-rl export`\)"):
        PolicyRuntime(export_dir.parent / "afile")


@pytest.mark.parametrize("change, key", [
    (lambda s: s.__setitem__("observation", [4]), "observation"),
    (lambda s: s["observation"].__setitem__("dim", True), "observation.dim"),
    (lambda s: s.__setitem__("inputs", ["obs"]), r"inputs\[0\]"),
    (lambda s: s.__setitem__("outputs", {"name": "action"}), "outputs"),
    (lambda s: s.__setitem__("noise", {"dim": "x"}), "noise.dim"),
    (lambda s: s.__setitem__("noise", [2]), "noise"),
    (lambda s: s.__setitem__("control", None), "control"),
    (lambda s: s["control"].__setitem__("dt", "0.04"), "control.dt"),
    (lambda s: s.__setitem__("max_episode_steps", "40"), "max_episode_steps"),
    (lambda s: s.__setitem__("safety", {"filters": 5}), "safety.filters"),
    (lambda s: s.__setitem__("safety", None), "safety"),
    # a sidecar that lost its chain deployed the policy without the filters it was exported with, nothing said
    (lambda s: s.pop("safety"), r"missing key 'safety' \(the export's safety-filter chain, \{\"filters\": \[\]\} for none\): "
                                r"the policy would run without the filters it was exported with; re-export"),
    (lambda s: s.__setitem__("safety", {}), r"safety is \{\} \(the export's safety-filter chain"),
    # null was read as no filters: an edited or damaged sidecar deployed the policy unfiltered (the export writes [])
    (lambda s: s["safety"].__setitem__("filters", None), r"safety\.filters=None: expected a list of filter entries "
                                                         r"\(\[\] for none\): the policy would run without the filters"),
    (lambda s: s["action"].__setitem__("low", ["a", "b"]), "action.low"),
    (lambda s: s["action"].__setitem__("high", 1.0), "action.high"),
    (lambda s: s.__setitem__("sha256", 5), "sha256"),
    (lambda s: s.__setitem__("task_kwargs", [1]), "task_kwargs"),
    # the model is read from the export directory only (a path up or out would load another directory's file)
    (lambda s: s.__setitem__("model_file", "../other/policy.onnx"), r"model_file='\.\./other/policy\.onnx': expected "
                                                                     "the model's file name"),
    (lambda s: s.__setitem__("model_file", "/tmp/policy.onnx"), "model_file='/tmp/policy.onnx'"),
    (lambda s: s.__setitem__("model_file", ".."), "model_file='..'"),
    # a loop at rate_hz and a simulator stepping dt per command must be one period, not 25 Hz next to 0.05 s
    (lambda s: s["control"].__setitem__("rate_hz", 20.0), r"control\.dt=0\.04 s and control\.rate_hz=20\.0 Hz"),
])
def test_malformed_sidecar_is_an_export_error_naming_the_key(export_dir: Path, change, key) -> None:
    path = export_dir / "policy.json"
    sidecar = json.loads(path.read_text())
    change(sidecar)
    path.write_text(json.dumps(sidecar))
    with pytest.raises(ExportError, match=rf"policy\.json: {key}"):
        load_sidecar(export_dir)


def test_wrong_observation_shape_or_dtype_is_an_error_naming_expected_and_got(export_dir: Path) -> None:
    rt = PolicyRuntime(export_dir)
    with pytest.raises(ValueError, match=r"observation shape \(5,\): expected \(4,\) or \(batch, 4\)"):
        rt(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"observation shape \(2, 3, 4\)"):
        rt(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="observation dtype int64"):
        rt(np.zeros(4, np.int64))
    with pytest.raises(NonFiniteObservation, match=r"indices \[2\]"):
        rt(np.array([0.0, 0.0, np.nan, 0.0]))
    batch = np.zeros((2, 4))
    batch[0, 1], batch[1, 3] = np.nan, np.inf  # NaN in different columns of different rows: both are named
    with pytest.raises(NonFiniteObservation, match=r"observation has NaN/inf at indices \[1, 3\]"):
        rt(batch)
    with pytest.raises(NonFiniteObservation, match=r"indices \[0\] is beyond float32's range"):
        rt(np.array([1e300, 0.0, 0.0, 0.0]))  # finite in float64, but not as the float32 the policy takes
    with pytest.raises(ValueError, match="takes no noise input"):
        rt(np.zeros(4), noise=np.zeros(3))
    for threads in (0, -1, 1.5, "a", True):
        with pytest.raises(ValueError, match=r"threads=.*: the inference threads, an integer >= 1"):
            PolicyRuntime(export_dir, threads=threads)


def test_non_finite_or_out_of_bounds_policy_output_is_refused(tmp_path: Path) -> None:
    rt = PolicyRuntime(make_export(tmp_path / "lin", kind="linear", weight_scale=1e38))
    with pytest.raises(NonFiniteAction):
        rt(np.full(4, 1e3, np.float32))  # overflows to inf
    rt = PolicyRuntime(make_export(tmp_path / "lin2", kind="linear", weight_scale=1.0))
    with pytest.raises(ActionOutOfBounds, match="outside the sidecar's action bounds"):
        rt(np.full(4, 100.0, np.float32))


# --- ControlLoop -----------------------------------------------------------------------------------

class FakeClock:
    """Manual time: sleep() moves it forward, so deadlines are checked exactly."""

    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.t += seconds


@dataclass
class ClampReport:
    intervened: np.ndarray
    fallback: np.ndarray
    reasons: list[str] = field(default_factory=list)


class Clamp:
    """A user-supplied filter chain (the FilterChain call contract): clamp every entry to +-limit."""

    def __init__(self, limit: float) -> None:
        self.limit, self.resets = limit, 0

    def reset(self, batch: int) -> None:
        self.resets += 1

    def __call__(self, action: np.ndarray, obs: np.ndarray):
        out = np.clip(action, -self.limit, self.limit)
        changed = (out != action).any(axis=1)
        return out, ClampReport(changed, np.zeros(len(action), bool), ["clamp"] if changed.any() else [])


def scripted_robot(clock: FakeClock, script: dict[int, object], sent: list, fallback=(0.8, -0.8),
                   default=(0.1, -0.2, 0.3, 0.0)) -> CallbackRobot:
    """Reads a fixed observation, except at the ticks in ``script`` (an array, or a callable making an Observation)."""
    tick = {"n": 0}

    def get():
        item = script.get(tick["n"])
        tick["n"] += 1
        if callable(item):
            return item()
        return np.asarray(item if item is not None else default, np.float64)

    return CallbackRobot(get, lambda a: sent.append((clock(), np.array(a))), action_dim=2,
                         fallback=np.array(fallback), clock=clock)


def test_nan_observation_sends_the_filtered_fallback_and_logs_it(export_dir: Path) -> None:
    clock, sent = FakeClock(), []
    robot = scripted_robot(clock, {2: [0.0, np.nan, 0.0, 0.0]}, sent)
    chain = Clamp(0.5)
    loop = ControlLoop(PolicyRuntime(export_dir), robot, filters=chain, watchdog=NO_INFERENCE_LIMIT,
                       clock=clock, sleep=clock.sleep)
    report = loop.run(steps=5)
    assert report.steps == 5 and report.fallbacks == 1 and chain.resets == 1
    assert [e["kind"] for e in loop.events if e["step"] == 2] == ["non_finite_observation", "filter_intervention"]
    np.testing.assert_array_equal(sent[2][1], [0.5, -0.5])  # the fallback (0.8, -0.8) went through the filter
    assert all(np.abs(a).max() <= 0.5 for _, a in sent)
    assert not robot.is_connected  # the loop connected it, so it disconnects it


def test_real_filter_chain_from_the_sidecar_filters_the_fallback(tmp_path: Path) -> None:
    filters = pytest.importorskip("sim2real.filters")
    assert hasattr(filters, "build_chain")
    export = make_export(tmp_path / "e", safety={"filters": [{"type": "box", "low": -0.3, "high": 0.3}]})
    clock, sent = FakeClock(), []
    robot = scripted_robot(clock, {1: [np.inf, 0.0, 0.0, 0.0]}, sent)
    loop = ControlLoop(PolicyRuntime(export), robot, watchdog=NO_INFERENCE_LIMIT, clock=clock, sleep=clock.sleep)
    report = loop.run(steps=3)
    assert report.events["non_finite_observation"] == 1
    np.testing.assert_allclose(sent[1][1], [0.3, -0.3], atol=1e-6)
    assert all(np.abs(a).max() <= 0.3 + 1e-6 for _, a in sent)


def test_stale_observation_is_replaced_by_the_fallback(export_dir: Path) -> None:
    clock, sent = FakeClock(), []
    old = lambda: Observation(np.array([0.1, -0.2, 0.3, 0.0]), timestamp=clock() - 0.2)  # noqa: E731  5 periods old
    robot = scripted_robot(clock, {1: old, 3: old}, sent)
    loop = ControlLoop(PolicyRuntime(export_dir), robot, filters=[], watchdog=NO_INFERENCE_LIMIT, clock=clock,
                       sleep=clock.sleep)
    report = loop.run(steps=4)
    assert report.events == {"stale_observation": 2} and report.fallbacks == 2
    assert "200.0 ms old (limit 80.0 ms)" in loop.events[0]["detail"]
    for i in (1, 3):
        np.testing.assert_allclose(sent[i][1], [0.8, -0.8])
    assert not np.allclose(sent[0][1], [0.8, -0.8])


def test_state_filters_get_no_stale_state(tmp_path: Path) -> None:
    """An energy tank behind the loop: on a stale tick it gets "state unknown" (NaN), not the last position
    again (from which it would settle zero work for a step in which the robot moved), and sends no torque."""
    tank = {"type": "energy_tank", "velocity_index": [2, 3], "position_index": [0, 1], "dt": 0.04,
            "initial_energy": 1.0, "max_energy": 2.0, "damping": 1.0}
    export = make_export(tmp_path / "e", safety={"filters": [tank]})
    clock, sent = FakeClock(), []
    old = lambda: Observation(np.array([0.1, -0.2, 0.3, 0.0]), timestamp=clock() - 0.2)  # noqa: E731
    robot = scripted_robot(clock, {1: old}, sent, fallback=(0.5, 0.5))
    loop = ControlLoop(PolicyRuntime(export), robot, watchdog=NO_INFERENCE_LIMIT, clock=clock, sleep=clock.sleep)
    report = loop.run(steps=3)
    assert report.events["stale_observation"] == 1 and report.events["filter_fallback"] == 1
    assert sent[1][1].tolist() == [0.0, 0.0]  # the robot's fallback (0.5, 0.5) is a force too: the tank zeroes it
    assert "non-finite action, velocity or position" in next(e["detail"] for e in loop.events if e["kind"] == "filter_fallback")


@pytest.mark.parametrize("timestamp, cause", [
    (lambda now: float("nan"), "gives no age"),
    (lambda now: float("inf"), "gives no age"),
    (lambda now: now + 3600.0, "3600000.0 ms in the future"),  # the robot stamps with another clock
    (lambda now: now + 0.01, "10.0 ms in the future (limit 4.0 ms)"),
])
def test_nan_and_future_timestamps_are_faults_not_fresh_observations(export_dir: Path, timestamp, cause) -> None:
    clock, sent = FakeClock(), []
    odd = lambda: Observation(np.array([0.1, -0.2, 0.3, 0.0]), timestamp=timestamp(clock()))  # noqa: E731
    robot = scripted_robot(clock, {1: odd}, sent)
    loop = ControlLoop(PolicyRuntime(export_dir), robot, filters=[], watchdog=NO_INFERENCE_LIMIT, clock=clock,
                       sleep=clock.sleep)
    report = loop.run(steps=3)
    assert report.events == {"bad_timestamp": 1} and report.fallbacks == 1
    assert cause in loop.events[0]["detail"]
    np.testing.assert_allclose(sent[1][1], [0.8, -0.8])


def test_a_timestamp_slightly_ahead_within_the_clock_skew_is_fresh(export_dir: Path) -> None:
    clock, sent = FakeClock(), []
    ahead = lambda: Observation(np.array([0.1, -0.2, 0.3, 0.0]), timestamp=clock() + 0.003)  # noqa: E731  < 4 ms
    loop = ControlLoop(PolicyRuntime(export_dir), scripted_robot(clock, {1: ahead}, sent), filters=[],
                       watchdog=NO_INFERENCE_LIMIT, clock=clock, sleep=clock.sleep)
    assert loop.run(steps=3).fallbacks == 0


@pytest.mark.parametrize("reports_current", [True, False])
def test_rate_limit_holds_across_the_start_of_a_run_and_of_an_episode(tmp_path: Path, reports_current: bool) -> None:
    """The loop resets its filters when a run or an episode starts; the first command after a reset must
    still be within max_delta of the command the robot holds, not a full-range jump."""
    # action = (obs[0], obs[0]): the robot's observation makes the policy ask for -1 in the first episode
    # and +1 from the start of the second, a full-range flip
    weights = (np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), np.zeros(2))
    export = make_export(tmp_path / "e", kind="linear", weights=weights,
                         safety={"filters": [{"type": "box", "low": -1, "high": 1}, {"type": "rate", "max_delta": 0.2}]})
    runtime = PolicyRuntime(export)
    clock, sent, tick = FakeClock(), [], {"n": 0}
    holding = np.array([0.6, 0.6])  # what the actuators hold when the run starts

    def get():
        tick["n"] += 1
        return Observation(np.array([-1.0 if tick["n"] <= 5 else 1.0, 0.0, 0.0, 0.0]), clock(),
                           {"episode_start": tick["n"] in (1, 6)})

    robot = CallbackRobot(get, lambda a: sent.append(np.array(a)), action_dim=2, fallback=np.array([0.8, -0.8]),
                          clock=clock, current=(lambda: holding if tick["n"] <= 1 else None) if reports_current else None)
    ControlLoop(runtime, robot, watchdog=NO_INFERENCE_LIMIT, clock=clock, sleep=clock.sleep).run(steps=10)
    start = holding if reports_current else np.array([0.8, -0.8])  # else the robot's fallback command
    steps = np.abs(np.diff(np.vstack([start, *sent]), axis=0))
    assert steps.max() <= 0.2 + 1e-6, steps.max(axis=1)
    np.testing.assert_allclose(sent[4], [-0.4, -0.4] if reports_current else [-0.2, -1.0], atol=1e-6)
    np.testing.assert_allclose(sent[5], [-0.2, -0.2] if reports_current else [0.0, -0.8], atol=1e-6)  # new episode


def test_inference_overrun_sends_the_fallback(export_dir: Path) -> None:
    clock, sent = FakeClock(), []
    loop = ControlLoop(PolicyRuntime(export_dir), scripted_robot(clock, {}, sent), filters=[],
                       watchdog=WatchdogConfig(max_inference_time=1e-12), clock=clock, sleep=clock.sleep)
    report = loop.run(steps=3)
    assert report.events == {"inference_overrun": 3} and report.fallbacks == 3
    assert all(np.allclose(a, [0.8, -0.8]) for _, a in sent)
    assert report.latency["inference_ms"]["count"] == 3  # overrun inferences are still measured


def test_non_finite_policy_action_sends_the_fallback_and_stop_ends_the_run(tmp_path: Path) -> None:
    export = make_export(tmp_path / "lin", kind="linear", weight_scale=1e38)
    clock, sent = FakeClock(), []
    robot = scripted_robot(clock, {2: [1e3, 1e3, 1e3, 1e3]}, sent, default=(0.0, 0.0, 0.0, 0.0))  # action = b
    loop = ControlLoop(PolicyRuntime(export), robot, filters=[],
                       watchdog=WatchdogConfig(max_inference_time=math.inf, on_fault="stop"), clock=clock, sleep=clock.sleep)
    report = loop.run(steps=10)
    assert report.steps == 3 and report.events == {"non_finite_action": 1}
    np.testing.assert_allclose(sent[2][1], [0.8, -0.8])


def test_absolute_deadlines_a_slow_tick_does_not_shift_later_ticks(export_dir: Path) -> None:
    clock, sent = FakeClock(), []
    period = 0.04

    def slow():  # this tick's sensor read takes 2.5 periods
        clock.t += 2.5 * period
        return np.array([0.1, -0.2, 0.3, 0.0])

    robot = scripted_robot(clock, {3: slow}, sent)
    loop = ControlLoop(PolicyRuntime(export_dir), robot, filters=[], watchdog=NO_INFERENCE_LIMIT,
                       clock=clock, sleep=clock.sleep)
    report = loop.run(steps=8)
    t0 = 100.0
    times = [round((t - t0) / period, 6) for t, _ in sent]
    # ticks 0-3 on the grid; tick 3 ends at 5.5 periods; the next runs at once (slot 4 is skipped: its whole
    # period passed), then back on the grid at 6, 7, 8, 9 (a drifting loop would go 6.5, 7.5, ...)
    assert times == [0, 1, 2, 5.5, 5.5, 6, 7, 8]
    assert report.deadline_misses == 1 and report.skipped_ticks == 1
    miss = [e for e in loop.events if e["kind"] == "deadline_miss"]
    assert len(miss) == 1 and miss[0]["step"] == 4 and "skipped 1 tick" in miss[0]["detail"]
    assert report.fallbacks == 0 and report.steps == 8


def test_tick_zero_is_due_when_the_loop_is_ready_not_before_its_set_up(export_dir: Path) -> None:
    # the deadline grid started before the filters were reset from the robot's command: at 1 kHz that set-up alone
    # made every run's first tick a deadline miss
    clock, sent = FakeClock(), []
    robot = scripted_robot(clock, {}, sent)

    def slow_current_action():  # the robot takes half a period to report the command it holds
        clock.t += 0.02
        return np.zeros(2)

    robot.current_action = slow_current_action
    loop = ControlLoop(PolicyRuntime(export_dir), robot, filters=[{"type": "box", "low": -1, "high": 1}],
                       watchdog=NO_INFERENCE_LIMIT, clock=clock, sleep=clock.sleep)
    report = loop.run(steps=3)
    assert report.deadline_misses == 0 and report.skipped_ticks == 0
    assert [round(t - sent[0][0], 9) for t, _ in sent] == [0.0, 0.04, 0.08]  # on the grid from the first tick


def test_non_realtime_loop_never_sleeps_and_keeps_stats(export_dir: Path) -> None:
    clock, sent = FakeClock(), []
    loop = ControlLoop(PolicyRuntime(export_dir), scripted_robot(clock, {}, sent), filters=[], realtime=False,
                       watchdog=WatchdogConfig(max_observation_age=math.inf, max_inference_time=math.inf),
                       clock=clock, sleep=clock.sleep)
    report = loop.run(steps=20)
    assert clock.sleeps == [] and report.steps == 20 and report.deadline_misses == 0
    for kind in ("inference_ms", "loop_ms"):
        stats = report.latency[kind]
        assert stats["count"] == 20 and 0 < stats["p50"] <= stats["p99"] <= stats["max"] and stats["mean"] > 0
    json.dumps(report.to_dict())


def test_ctrl_c_sends_the_fallback_and_returns_a_report(export_dir: Path) -> None:
    clock, sent = FakeClock(), []

    def interrupt():
        raise KeyboardInterrupt

    loop = ControlLoop(PolicyRuntime(export_dir), scripted_robot(clock, {2: interrupt}, sent), filters=[],
                       watchdog=NO_INFERENCE_LIMIT, clock=clock, sleep=clock.sleep)
    report = loop.run()
    assert report.interrupted and report.steps == 2 and len(sent) == 3
    np.testing.assert_allclose(sent[-1][1], [0.8, -0.8])


def test_the_last_command_after_ctrl_c_or_an_error_stays_in_the_filters_box_and_the_action_bounds(tmp_path: Path) -> None:
    # the stop command was sent raw: a fallback outside the box (or the export's bounds) reached the robot
    def interrupt():
        raise KeyboardInterrupt

    def fail():
        raise RuntimeError("driver lost")

    box_filter = pytest.importorskip("sim2real.filters").BoxFilter
    box = [{"type": "box", "low": -0.5, "high": 0.5}, {"type": "rate", "max_delta": 0.1}]
    cases = (([], (2.0, -3.0), interrupt, [1.0, -1.0]),  # no filters: the export's bounds [-1, 1]
             (box, (0.8, -0.8), interrupt, [0.5, -0.5]),  # the box, in one step (no ramp: there is no next tick)
             (None, (0.8, -0.8), fail, [0.3, -0.3]),  # the sidecar's box
             # a single filter handed to the loop as its chain: its box was skipped (only a chain's filters were read)
             (box_filter(2, low=-0.5, high=0.5), (0.8, -0.8), interrupt, [0.5, -0.5]))
    for i, (filters, fallback, stop, expected) in enumerate(cases):
        export = make_export(tmp_path / f"e{i}", safety={"filters": [{"type": "box", "low": -0.3, "high": 0.3}]})
        clock, sent = FakeClock(), []
        loop = ControlLoop(PolicyRuntime(export), scripted_robot(clock, {2: stop}, sent, fallback=fallback),
                           filters=filters, watchdog=NO_INFERENCE_LIMIT, clock=clock, sleep=clock.sleep)
        if stop is fail:
            with pytest.raises(RuntimeError, match="driver lost"):
                loop.run()
        else:
            assert loop.run().interrupted
        np.testing.assert_allclose(sent[-1][1], expected)


def test_a_float32_robot_gets_every_command_inside_the_filters_limits(tmp_path: Path) -> None:
    # the loop filtered and clipped in float64 and the robot applied float32: float32(0.1) is 0.10000000149, outside
    # the box the filter had just enforced (on every saturated tick, and on the last command after Ctrl+C)
    def interrupt():
        raise KeyboardInterrupt

    export = make_export(tmp_path / "e", weight_scale=50.0, safety={"filters": [{"type": "box", "low": -0.1, "high": 0.1},
                                                                                {"type": "rate", "max_delta": 0.3}]})
    clock, sent = FakeClock(), []
    robot = scripted_robot(clock, {n: [0.3 * n, -0.2, 0.1 * n, 0.5] for n in range(8)} | {8: interrupt}, sent)
    robot.action_dtype = np.float32
    assert ControlLoop(PolicyRuntime(export), robot, watchdog=NO_INFERENCE_LIMIT, clock=clock,
                       sleep=clock.sleep).run().interrupted
    commands = np.array([a for _, a in sent])
    assert len(sent) == 9 and {a.dtype for _, a in sent} == {np.dtype(np.float32)}
    assert np.abs(commands.astype(np.float64)).max() <= 0.1  # in float64: not one float32 step past the box
    assert (np.abs(commands) == np.nextafter(np.float32(0.1), np.float32(0))).any()  # and the box did bind


def test_the_sim2sim_robot_s_float32_task_gets_commands_inside_the_box(tmp_path: Path, monkeypatch) -> None:
    # what env.step receives, after the robot's cast to the task's float32 action space
    import gymnasium as gym

    import sim2real.robots as robots

    applied, make = [], robots._make

    class Record(gym.Wrapper):
        def step(self, action):
            applied.append(np.array(action))
            return self.env.step(action)

    monkeypatch.setattr(robots, "_make", lambda *args: Record(make(*args)))
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=1, low=-3.0, high=3.0, weight_scale=50.0)
    deploy(str(export), steps=20, safety=[{"type": "box", "low": -0.1, "high": 0.1}], log=lambda line: None)
    assert applied[0].tolist() == [0.0]  # connect's check that the task runs a step: the fallback command
    applied = np.concatenate(applied[1:])
    assert applied.dtype == np.float32 and applied.size == 20
    assert np.abs(applied.astype(np.float64)).max() <= 0.1 and (np.abs(applied) > 0.0999).any()


def test_deploy_and_the_loop_take_a_runs_filters_as_omegaconf_gives_them(tmp_path: Path) -> None:
    # a run's cfg.safety.filters is a ListConfig: deploy ran it, then failed writing its report ("float() argument must
    # be ... not 'DictConfig'"); {filters: [...]} as a DictConfig was reported as filters ['filters']; ControlLoop
    # refused the ListConfig though it is a list of filter specs
    omegaconf = pytest.importorskip("omegaconf")
    spec = [{"type": "box", "low": -0.1, "high": 0.1}]
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=1, low=-3.0, high=3.0, weight_scale=50.0)
    for i, safety in enumerate((omegaconf.OmegaConf.create(spec), omegaconf.OmegaConf.create({"filters": spec}))):
        report = deploy(str(export), steps=5, safety=safety, out=tmp_path / f"r{i}.json", log=lambda line: None)
        assert report["safety"]["filters"] == spec
        assert json.loads((tmp_path / f"r{i}.json").read_text())["safety"] == {"source": "safety=", "filters": spec}
    clock, sent = FakeClock(), []
    loop = ControlLoop(PolicyRuntime(make_export(tmp_path / "e2")), scripted_robot(clock, {}, sent),
                       filters=omegaconf.OmegaConf.create(spec), watchdog=NO_INFERENCE_LIMIT, clock=clock, sleep=clock.sleep)
    assert loop.run(steps=5).steps == 5 and max(np.abs(a).max() for _, a in sent) <= 0.1


# --- chunk exports: H actions per query, `execute` of them run (as robo-rl's evaluation runs them) ------------


def chunk_reference(export: Path, obs: np.ndarray, horizon: int) -> np.ndarray:
    """The tiny chunk policy's formula in numpy: [..., H, A]."""
    flat = reference(export, obs)
    return flat.reshape(*flat.shape[:-1], horizon, -1)


def test_a_chunk_export_returns_its_chunk_and_its_first_action(tmp_path: Path) -> None:
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=2, noise_dim=6, chunk=(3, 2))
    rt = PolicyRuntime(export)
    assert (rt.chunk, rt.execute) == (3, 2)
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    want = chunk_reference(export, obs, 3)  # zero noise: the default
    np.testing.assert_allclose(rt.act_chunk(obs), want, atol=1e-6)
    np.testing.assert_allclose(rt.act_chunk(obs[0]), want[0], atol=1e-6)
    np.testing.assert_allclose(rt(obs[0]), want[0, 0], atol=1e-6)  # a single call: the chunk's first action
    with pytest.raises(ValueError, match=r"ChunkExecutor runs one robot: obs \[4\], got shape \(5, 4\)"):
        ChunkExecutor(rt)(obs)


def chunk_robot(clock: FakeClock, sent: list, starts: tuple[int, ...] = (), stale: tuple[int, ...] = ()) -> CallbackRobot:
    """Observation (t + 1) / 10 * (1, -1, 2, 0.5) at tick t, a new episode at the ticks in ``starts``, a stale one in
    ``stale``."""
    tick = {"n": 0}

    def get() -> Observation:
        t = tick["n"]
        tick["n"] += 1
        return Observation((t + 1) / 10 * np.array([1.0, -1.0, 2.0, 0.5]), clock() - (0.2 if t in stale else 0.0),
                           {"episode_start": t in starts})

    return CallbackRobot(get, lambda a: sent.append(np.array(a)), action_dim=2, fallback=np.array([0.8, -0.8]), clock=clock)


def test_the_loop_runs_execute_actions_of_each_chunk_and_starts_a_new_one_per_episode_and_after_a_fallback(
        tmp_path: Path) -> None:
    """chunk=3, execute=2: tick t sends the chunk planned at the last query; a query every 2 ticks, and at once after
    a new episode (tick 5) or a fallback (the stale tick 8): what robo-rl's evaluation (ChunkExecutor) runs."""
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=2, chunk=(3, 2))
    clock, sent = FakeClock(), []
    loop = ControlLoop(PolicyRuntime(export), chunk_robot(clock, sent, starts=(5,), stale=(8,)), filters=[],
                       watchdog=NO_INFERENCE_LIMIT, clock=clock, sleep=clock.sleep)
    report = loop.run(steps=11)
    obs = np.arange(1, 12)[:, None] / 10 * np.array([1.0, -1.0, 2.0, 0.5])
    chunks = chunk_reference(export, obs.astype(np.float32), 3)
    # (tick, query tick, position in its chunk); tick 8 is the fallback
    plan = [(0, 0, 0), (1, 0, 1), (2, 2, 0), (3, 2, 1), (4, 4, 0), (5, 5, 0), (6, 5, 1), (7, 7, 0), (9, 9, 0), (10, 9, 1)]
    for tick, query, position in plan:
        np.testing.assert_allclose(sent[tick], chunks[query, position], atol=1e-6, err_msg=f"tick {tick}")
    np.testing.assert_array_equal(sent[8], [0.8, -0.8])
    assert report.events == {"stale_observation": 1}
    assert report.latency["inference_ms"]["count"] == 6  # the queries, at ticks 0, 2, 4, 5, 7 and 9


def test_a_nan_in_a_later_action_of_a_chunk_sends_the_fallback_at_the_query(tmp_path: Path) -> None:
    """The whole chunk is checked when it arrives (as robo-rl's evaluation checks it): a NaN/inf in its second
    action is a fault at the query, and the next tick queries again rather than running the rest."""
    w = np.zeros((4, 6))
    w[0, 2] = 1e38  # the chunk's second action, first dimension: inf once obs[0] > 3.4
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=2, kind="linear", weights=(w, np.zeros(6)), chunk=(3, 3))
    with pytest.raises(NonFiniteAction):
        PolicyRuntime(export).act_chunk(np.array([1e3, 0.0, 0.0, 0.0], np.float32))
    clock, sent = FakeClock(), []
    robot = scripted_robot(clock, {0: [1e3, 0.0, 0.0, 0.0]}, sent, default=(0.0, 0.0, 0.0, 0.0))
    loop = ControlLoop(PolicyRuntime(export), robot, filters=[], watchdog=NO_INFERENCE_LIMIT, clock=clock,
                       sleep=clock.sleep)
    report = loop.run(steps=3)
    assert report.events == {"non_finite_action": 1} and report.fallbacks == 1
    np.testing.assert_array_equal(sent[0][1], [0.8, -0.8])
    assert [a.tolist() for _, a in sent[1:]] == [[0.0, 0.0], [0.0, 0.0]]  # queried again at tick 1: obs 0, action 0
    assert report.latency["inference_ms"]["count"] == 2  # ticks 0 and 1; tick 2 runs the chunk's second action


def test_a_fallback_for_a_non_finite_filter_output_starts_a_new_chunk(tmp_path: Path) -> None:
    """chunk=3, execute=3, a filter of one's own that returns NaN at tick 4: the fallback goes out, and tick 5
    queries again (it ran the old chunk's last action): a fallback starts a new chunk, as the watchdog's does."""
    from sim2real.filters.base import FilterReport

    export = make_export(tmp_path / "e", obs_dim=4, act_dim=2, chunk=(3, 3))
    calls = {"n": 0}

    class NaNOnce:  # a built chain: chain(action [1, A], obs [1, O]) -> (action, report), with reset
        action_dim = 2

        def reset(self, batch=1, initial=None):
            pass

        def __call__(self, action, obs):
            calls["n"] += 1
            out = np.full_like(action, np.nan) if calls["n"] == 5 else action
            return out, FilterReport.clean(1)

    clock, sent = FakeClock(), []
    loop = ControlLoop(PolicyRuntime(export), chunk_robot(clock, sent), filters=NaNOnce(), watchdog=NO_INFERENCE_LIMIT,
                       clock=clock, sleep=clock.sleep)
    report = loop.run(steps=9)
    assert report.events == {"non_finite_action": 1} and report.fallbacks == 1
    np.testing.assert_array_equal(sent[4], [0.8, -0.8])
    obs = np.arange(1, 10)[:, None] / 10 * np.array([1.0, -1.0, 2.0, 0.5])
    chunks = chunk_reference(export, obs.astype(np.float32), 3)
    for tick, query, position in [(3, 3, 0), (5, 5, 0), (6, 5, 1), (7, 5, 2), (8, 8, 0)]:
        np.testing.assert_allclose(sent[tick], chunks[query, position], atol=1e-6, err_msg=f"tick {tick}")
    assert report.latency["inference_ms"]["count"] == 4  # queries at ticks 0, 3, 5 and 8


def test_every_executed_action_of_a_chunk_goes_through_the_filters(tmp_path: Path) -> None:
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=2, weight_scale=50.0, chunk=(4, 4),
                         safety={"filters": [{"type": "box", "low": -0.3, "high": 0.3}]})
    clock, sent = FakeClock(), []
    loop = ControlLoop(PolicyRuntime(export), chunk_robot(clock, sent), watchdog=NO_INFERENCE_LIMIT, clock=clock,
                       sleep=clock.sleep)
    obs = np.arange(1, 9)[:, None] / 10 * np.array([1.0, -1.0, 2.0, 0.5])
    raw = chunk_reference(export, obs.astype(np.float32), 4)[[0, 0, 0, 0, 4, 4, 4, 4], [0, 1, 2, 3, 0, 1, 2, 3]]
    assert (np.abs(raw) > 0.3).any(axis=1).all()  # every executed action leaves the box
    report = loop.run(steps=8)  # the chunks of ticks 0 and 4
    assert report.latency["inference_ms"]["count"] == 2
    assert report.filter_interventions == 8
    np.testing.assert_allclose(sent, np.clip(raw, -0.3, 0.3), atol=1e-6)


@pytest.mark.parametrize("change, message", [
    (lambda s: s["chunk"].__setitem__("execute", 4), r"chunk\.execute=4: expected a whole number between 1 and chunk\.length=3"),
    (lambda s: s["chunk"].__setitem__("execute", 0), r"chunk\.execute=0"),
    (lambda s: s["chunk"].__setitem__("length", "3"), r"chunk\.length='3': expected a positive integer"),
    (lambda s: s.__setitem__("chunk", [3, 2]), r"chunk is \[3, 2\], expected a mapping"),
    (lambda s: s["outputs"][0].__setitem__("shape", ["batch", 2]), r"outputs\[0\] shape \['batch', 2\] does not match chunk\.length=3"),
])
def test_a_chunk_sidecar_that_does_not_describe_its_chunk_is_refused(tmp_path: Path, change, message) -> None:
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=2, chunk=(3, 2))
    sidecar = json.loads((export / "policy.json").read_text())
    change(sidecar)
    (export / "policy.json").write_text(json.dumps(sidecar))
    with pytest.raises(ExportError, match=rf"policy\.json: {message}"):
        load_sidecar(export)


def test_a_chunk_model_without_its_chunk_in_the_sidecar_is_refused(tmp_path: Path) -> None:
    """A sidecar without ``chunk`` next to a model that returns chunks (e.g. the sidecar of an export from before
    chunks were exported whole): refused, not run as if its [batch, H, A] output were one action."""
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=2, chunk=(3, 2))
    sidecar = json.loads((export / "policy.json").read_text())
    del sidecar["chunk"]
    sidecar["outputs"][0]["shape"] = ["batch", 2]
    (export / "policy.json").write_text(json.dumps(sidecar))
    with pytest.raises(ExportError, match=r"output 'action' is tensor\(float\) \['batch', 3, 2\], but policy\.json "
                                          r"declares float32 \['batch', 2\]"):
        PolicyRuntime(export)


# --- sim2sim robot and deploy ----------------------------------------------------------------------

def test_sim2sim_robot_latency_timestep_noise_and_physics() -> None:
    robot = MujocoSim2SimRobot("InvertedPendulum-v5", timestep=0.01, action_latency=1, observation_noise=0.05,
                               physics={"mass_scale": [0.5, 0.6], "damping_scale": [2.0, 2.0]}, seed=3,
                               clock=SimulatedClock())
    robot.connect()
    base = robot.env.unwrapped
    assert base.model.opt.timestep == 0.01 and base.frame_skip == 4 and robot.dt == pytest.approx(0.04)
    nominal_mass = robot._nominal["body_mass"]
    obs = robot.get_observation()
    assert obs.info["episode_start"] and obs.values.shape == (4,)
    assert robot.current_action().tolist() == [0.0]  # a new episode starts from the fallback
    robot.send_action(np.array([0.7]))
    assert base.data.ctrl[0] == 0.0  # one step of latency: the queued fallback is applied first
    assert robot.current_action().tolist() == [0.7]  # the loop seeds its rate limit from this
    robot.send_action(np.array([-0.4]))
    assert base.data.ctrl[0] == pytest.approx(0.7)
    assert robot.clock() == pytest.approx(0.08)
    draws = [base.model.body_mass[1:] / nominal_mass[1:]]
    for _ in range(300):  # episodes end (random-ish commands topple the pole) and resets redraw the physics
        robot.send_action(np.array([0.0]))
        if len(robot.episode_returns) == len(draws):  # an episode ended: the next one runs on a new draw
            draws.append(base.model.body_mass[1:] / nominal_mass[1:])
    assert len(robot.episode_returns) >= 3 and all(n > 0 for n in robot.episode_lengths)
    # InvertedPendulum pays 1 per step the pole stays up, 0 on the toppling step
    assert robot.episode_returns == [n - 1.0 for n in robot.episode_lengths]
    assert len({ratio.tobytes() for ratio in draws}) == len(draws)  # one draw per episode, none repeated
    for ratio in draws:
        assert ((ratio >= 0.5) & (ratio <= 0.6)).all()  # rescaled from the nominal copy, never compounded
    np.testing.assert_allclose(base.model.dof_damping, robot._nominal["damping"] * 2.0)
    robot.disconnect()
    # seeded observation noise: same seed, same readings; std close to the asked one
    readings = []
    for _ in range(2):
        r = MujocoSim2SimRobot("InvertedPendulum-v5", observation_noise=0.05, seed=7)
        r.connect()
        readings.append(np.stack([r.get_observation().values for _ in range(400)]))
        r.disconnect()
    np.testing.assert_array_equal(readings[0], readings[1])
    assert 0.04 < readings[0].std(axis=0).mean() < 0.06


def test_sim2sim_friction_is_one_factor_and_muscles_refuse_a_gain_factor(tmp_path: Path) -> None:
    # one friction factor for all geoms scales every contact's friction (the larger of its two geoms') by it
    robot = MujocoSim2SimRobot("Hopper-v5", physics={"friction_scale": [0.5, 1.5]}, seed=1)
    robot.connect()
    factor = robot.env.unwrapped.model.geom_friction[:, 0] / robot._nominal["friction"]
    assert np.allclose(factor, factor[0]) and 0.5 <= factor[0] <= 1.5
    robot.disconnect()
    # a muscle's gainprm[0] is its length range: a gain factor would make nonsense forces
    import gymnasium

    xml = (Path(gymnasium.__file__).parent / "envs/mujoco/assets/hopper.xml").read_text()
    motor = '<motor ctrllimited="true" ctrlrange="-1.0 1.0" gear="200.0" joint="thigh_joint"/>'
    assert motor in xml
    path = tmp_path / "hopper_muscle.xml"
    path.write_text(xml.replace(motor, '<muscle name="thigh_muscle" joint="thigh_joint" lengthrange="-2.62 0"/>'))
    robot = MujocoSim2SimRobot("Hopper-v5", physics={"actuator_gain_scale": [0.9, 1.1]}, env_kwargs={"xml_file": str(path)})
    with pytest.raises(ValueError, match="actuator_gain_scale: actuator.s. thigh_muscle of Hopper-v5 have no fixed gain"):
        robot.connect()
    assert not robot.is_connected


def test_deploy_at_another_rate_than_a_non_mujoco_task_s_own_names_rate_hz(tmp_path: Path) -> None:
    # Pendulum cannot change its period: the refusal said only "control period 0.04 s differs", not which key set it
    export = make_export(tmp_path / "e", obs_dim=3, act_dim=1, low=-2.0, high=2.0, task="Pendulum-v1", dt=0.05)
    with pytest.raises(ValueError, match=r"Pendulum-v1 steps 0.05 s per action \(20 Hz\) .*control period of 0.04 s "
                                         r"\(25 Hz\): give rate_hz=20$"):
        deploy(str(export), steps=5, rate_hz=25.0, log=lambda _: None)
    assert deploy(str(export), steps=5, rate_hz=20.0, log=lambda _: None)["loop"]["steps"] == 5


def _pendulum_at_0_0123_s(**kwargs):  # a non-MuJoCo task whose rate has no short decimal (81.30081... Hz)
    from gymnasium.envs.classic_control.pendulum import PendulumEnv

    env = PendulumEnv(**kwargs)
    env.dt = 0.0123
    return env


def test_the_rate_hz_a_non_mujoco_task_is_told_to_deploy_at_is_accepted(tmp_path: Path) -> None:
    # "give rate_hz=81.3008" (six digits) is a period 2e-9 s off the task's 0.0123 s: refused again, as told
    import gymnasium as gym

    if "RoboRlTest/PendulumOddPeriod-v0" not in gym.registry:
        gym.register("RoboRlTest/PendulumOddPeriod-v0", entry_point=_pendulum_at_0_0123_s, max_episode_steps=50)
    export = make_export(tmp_path / "e", obs_dim=3, act_dim=1, low=-2.0, high=2.0, task="RoboRlTest/PendulumOddPeriod-v0",
                         dt=0.05)
    with pytest.raises(ValueError, match=r"steps 0.0123 s per action .*: give rate_hz=\S+$") as refused:
        deploy(str(export), steps=5, log=lambda _: None)
    told = float(re.search(r"give rate_hz=(\S+)$", str(refused.value))[1])
    assert deploy(str(export), steps=5, rate_hz=told, log=lambda _: None)["loop"]["steps"] == 5


APPLIED_2X1: list[np.ndarray] = []  # what the task below received


def _pendulum_with_a_2x1_action_box(**kwargs):
    import gymnasium as gym
    from gymnasium.envs.classic_control.pendulum import PendulumEnv
    from gymnasium.wrappers import TransformAction

    def apply(action):
        APPLIED_2X1.append(np.array(action))
        return np.asarray(action).reshape(2)[:1]  # the first entry drives the pendulum
    return TransformAction(PendulumEnv(), apply, gym.spaces.Box(-2.0, 2.0, (2, 1), np.float32))


def test_sim2sim_robot_steps_a_task_whose_action_box_is_not_flat_in_its_own_shape(tmp_path: Path) -> None:
    # training flattens a (2, 1) action Box for the policy and reshapes each action back; the sim robot stepped the
    # task with the flat command, and its fallback (zeros clipped to the (2, 1) bounds) broadcast to (2, 2)
    import gymnasium as gym

    if "RoboRlTest/Pendulum2x1-v0" not in gym.registry:
        gym.register("RoboRlTest/Pendulum2x1-v0", entry_point=_pendulum_with_a_2x1_action_box, max_episode_steps=50)
    export = make_export(tmp_path / "e", obs_dim=3, act_dim=2, low=-2.0, high=2.0, task="RoboRlTest/Pendulum2x1-v0",
                         dt=0.05)
    APPLIED_2X1.clear()
    report = deploy(str(export), steps=5, log=lambda _: None)
    assert report["loop"]["steps"] == 5 and report["loop"]["fallbacks"] == 0
    assert [a.shape for a in APPLIED_2X1] == [(2, 1)] * 6  # connect's check that a step runs, then the 5 commands
    assert APPLIED_2X1[0].tolist() == [[0.0], [0.0]] and np.abs(np.stack(APPLIED_2X1[1:])).max() > 0


def test_sim2sim_refuses_an_action_latency_no_command_outlasts(tmp_path: Path) -> None:
    # a reset drops the commands in flight: with a latency of at least the episode length the task only ever got the
    # fallback, and deploy reported those episodes' returns as the policy's (training refuses the same action_delay)
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=1, low=-3.0, high=3.0, task="InvertedPendulum-v5")
    lines: list[str] = []
    with pytest.raises(ValueError, match=r"sim2sim.action_latency=20: not shorter than InvertedPendulum-v5's episodes "
                                         r"\(20 steps\): .*the policy would never act"):
        deploy(str(export), steps=5, sim2sim={"action_latency": 20, "max_episode_steps": 20}, out=tmp_path / "r.json",
               log=lines.append)
    assert not lines and not (tmp_path / "r.json").exists()
    robot = MujocoSim2SimRobot("InvertedPendulum-v5", action_latency=1000)  # the task's own limit, known once built
    with pytest.raises(ValueError, match=r"action_latency=1000: not shorter than InvertedPendulum-v5's episodes \(1000 steps\)"):
        robot.connect()
    assert not robot.is_connected
    report = deploy(str(export), steps=5, sim2sim={"action_latency": 19, "max_episode_steps": 20}, log=lines.append)
    assert report["loop"]["steps"] == 5  # one step shorter than the episodes: the last command of each arrives


def test_sim2sim_rejects_a_timestep_that_does_not_divide_the_control_period() -> None:
    robot = MujocoSim2SimRobot("InvertedPendulum-v5", timestep=0.03)
    with pytest.raises(ValueError, match=r"sim2sim.timestep=0.03: .*not a whole number of physics steps"):
        robot.connect()
    # a control period the task's own timestep does not divide names that timestep, not an option never set
    robot = MujocoSim2SimRobot("InvertedPendulum-v5", control_dt=0.05)
    with pytest.raises(ValueError, match=r"InvertedPendulum-v5's physics timestep 0.02 s: the control period 0.05 s is "
                                         r"not a whole number of physics steps \(2.5000\); give a sim2sim.timestep"):
        robot.connect()
    with pytest.raises(ValueError, match="sim2sim.physics.mass: unknown"):
        MujocoSim2SimRobot("InvertedPendulum-v5", physics={"mass": [1, 2]})


def test_deploy_on_inverted_pendulum_with_latency_and_halved_timestep(tmp_path: Path) -> None:
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=1, low=-3.0, high=3.0, task="InvertedPendulum-v5", dt=0.04)
    lines: list[str] = []
    report = deploy(str(export), episodes=3, sim2sim={"timestep": 0.01, "action_latency": 1, "seed": 1,
                                                      "max_episode_steps": 200}, log=lines.append)
    assert report["episodes"] == 3 and len(report["episode_returns"]) == 3
    assert all(0 < n <= 200 for n in report["episode_lengths"])
    # InvertedPendulum pays 1 per step the pole stays up (0 on the toppling step)
    for ret, n in zip(report["episode_returns"], report["episode_lengths"]):
        assert n - 1 <= ret <= n
    loop = report["loop"]
    assert loop["steps"] == sum(report["episode_lengths"])
    assert loop["latency"]["inference_ms"]["p99"] is not None and loop["latency"]["loop_ms"]["count"] == loop["steps"]
    assert loop["deadline_misses"] == 0 and "stale_observation" not in loop["events"]  # simulated time: on schedule
    assert report["rate_hz"] == pytest.approx(25.0)
    assert sum(line.startswith("episode ") for line in lines) == 3
    json.dumps(report)
    with pytest.raises(ValueError, match="unknown sim2sim key"):
        deploy(str(export), sim2sim={"latency": 1}, log=lines.append)
    with pytest.raises(ValueError, match="observation/action dims"):
        deploy(str(export), task="Hopper-v5", episodes=1, log=lines.append)


def test_deploy_refuses_a_task_whose_action_bounds_are_not_the_exports(tmp_path: Path) -> None:
    # InvertedPendulum-v5 pushes within [-3, 3]; a policy exported for [-1, 1] (another task's, or an edited
    # sidecar) would send a third of every force it means, after the loop's clip to the export's bounds
    lines: list[str] = []
    narrow = make_export(tmp_path / "narrow", obs_dim=4, act_dim=1, low=-1.0, high=1.0, task="InvertedPendulum-v5")
    with pytest.raises(ValueError, match=r"task InvertedPendulum-v5 acts within \[-3, 3\] in action dimension 0 .*the export "
                                         r"within \[-1, 1\] .*policy\.json action\.low/high"):
        deploy(str(narrow), steps=5, out=tmp_path / "narrow.json", log=lines.append)
    assert not lines and not (tmp_path / "narrow.json").exists()  # refused before anything ran
    wide = make_export(tmp_path / "wide", obs_dim=4, act_dim=1, low=-6.0, high=6.0, task="InvertedPendulum-v5")
    with pytest.raises(ValueError, match=r"acts within \[-3, 3\].*the export within \[-6, 6\]"):
        deploy(str(wide), steps=5, log=lines.append)
    exact = make_export(tmp_path / "exact", obs_dim=4, act_dim=1, low=-3.0, high=3.0, task="InvertedPendulum-v5")
    assert deploy(str(exact), steps=5, log=lines.append)["loop"]["steps"] == 5


def test_deploy_reports_the_episode_cost_of_a_task_that_reports_one(tmp_path: Path) -> None:
    # robo-rl eval printed ContactMaze's energy cost per episode; deploy, the passivity deployment, did not
    import gymnasium as gym

    import envs  # noqa: F401 (registers robo_rl/ContactMaze-v0)

    probe = gym.make("robo_rl/ContactMaze-v0")
    obs_dim, act_dim, dt = probe.observation_space.shape[0], probe.action_space.shape[0], probe.unwrapped.dt
    probe.close()
    export = make_export(tmp_path / "maze", obs_dim=obs_dim, act_dim=act_dim, task="robo_rl/ContactMaze-v0", dt=dt)
    lines: list[str] = []
    report = deploy(str(export), episodes=2, log=lines.append, sim2sim={"max_episode_steps": 30})
    assert report["episodes"] == 2 and len(report["costs"]) == 2 and all(c >= 0 for c in report["costs"])
    assert report["cost_mean"] == pytest.approx(sum(report["costs"]) / 2)
    assert f"cost {report['cost_mean']:.3g} per episode" in lines[-1]
    pendulum = make_export(tmp_path / "pend", obs_dim=4, act_dim=1, low=-3.0, high=3.0, task="InvertedPendulum-v5")
    assert "costs" not in deploy(str(pendulum), episodes=1, log=lambda _: None)  # a task without a cost


def test_deploy_sums_the_cost_under_the_run_s_cost_key(tmp_path: Path) -> None:
    # the run's safety.cost_key travels in the sidecar: deploy read info["cost"] whatever key the run had used
    import gymnasium as gym

    probe = gym.make("robo_rl/ContactMaze-v0")
    obs_dim, act_dim, dt = probe.observation_space.shape[0], probe.action_space.shape[0], probe.unwrapped.dt
    probe.close()
    export = make_export(tmp_path / "maze", obs_dim=obs_dim, act_dim=act_dim, task="robo_rl/ContactMaze-v0", dt=dt)
    sidecar_path = export / "policy.json"
    plain = json.loads(sidecar_path.read_text())
    runs = {}
    for key in ("cost", "dissipated_energy", "no_such_key"):
        sidecar_path.write_text(json.dumps({**plain, "cost_key": key}))
        runs[key] = deploy(str(export), episodes=2, log=lambda _: None, sim2sim={"max_episode_steps": 30})
    assert "costs" not in runs["no_such_key"]
    dissipated, injected = runs["dissipated_energy"]["costs"], runs["cost"]["costs"]
    assert len(dissipated) == 2 and all(c > 0 for c in dissipated) and dissipated != injected
    # (the same episodes: one seed, one policy; the returns agree)
    assert runs["dissipated_energy"]["episode_returns"] == runs["cost"]["episode_returns"]
    sidecar_path.write_text(json.dumps({**plain, "cost_key": 3}))
    with pytest.raises(ExportError, match="cost_key=3: expected the step info key of the task's cost"):
        deploy(str(export), episodes=1, log=lambda _: None)


def test_deploy_warns_when_the_sim2sim_plant_voids_the_energy_tank_s_guarantee(tmp_path: Path, caplog) -> None:
    # training warned of a randomized plant the tank does not cover; deploy ran the same plant without a word
    import logging

    tank = {"type": "energy_tank", "velocity_index": [1], "dt": 0.04, "initial_energy": 1.0, "max_energy": 2.0,
            "damping": 1.0}
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=1, low=-3.0, high=3.0, task="InvertedPendulum-v5",
                         safety={"filters": [tank]})
    with caplog.at_level(logging.WARNING, logger="robo_rl"):
        deploy(str(export), steps=3, log=lambda _: None,
               sim2sim={"action_latency": 1, "physics": {"damping_scale": [0.5, 1.0], "mass_scale": [0.8, 1.2]}})
    (line,) = [r.getMessage() for r in caplog.records if "passivity guarantee" in r.getMessage()]
    assert line.startswith("safety: the energy_tank filter's passivity guarantee does not hold on this sim2sim plant: "
                           "sim2sim.action_latency=1 (the tank settles")
    assert "sim2sim.physics.damping_scale=[0.5, 1.0]" in line and "mass_scale" not in line
    caplog.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robo_rl"):  # noisy positions: the credit grows with the noise
        deploy(str(export), steps=3, log=lambda _: None, sim2sim={"observation_noise": [0.0, 0.01, 0.0, 0.0]})
    (line,) = [r.getMessage() for r in caplog.records if "passivity guarantee" in r.getMessage()]
    assert ("sim2sim.observation_noise=[0.0, 0.01, 0.0, 0.0] (the tank bounds each command's work from noisy "
            "velocities" in line)  # (this tank reads velocities only: obs[1])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robo_rl"):  # noise only where the tank does not read
        deploy(str(export), steps=3, log=lambda _: None, sim2sim={"observation_noise": [0.01, 0.0, 0.01, 0.01]})
    assert not [r for r in caplog.records if "passivity guarantee" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robo_rl"):  # more damping than credited, no latency: it holds
        deploy(str(export), steps=3, log=lambda _: None, sim2sim={"physics": {"damping_scale": [1.0, 1.5]},
                                                                  "observation_noise": 0.0})
        deploy(str(export), steps=3, log=lambda _: None, safety=[], sim2sim={"action_latency": 1})  # no tank
    assert not [r for r in caplog.records if "passivity guarantee" in r.getMessage()]


def test_deploy_report_says_which_filters_and_watchdog_ran_and_the_exports_rate(tmp_path: Path) -> None:
    chain = {"filters": [{"type": "box", "low": -0.5, "high": 0.5}]}
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=1, low=-3.0, high=3.0, task="InvertedPendulum-v5",
                         dt=0.04, safety=chain)
    lines: list[str] = []
    report = deploy(str(export), steps=20, log=lines.append, out=tmp_path / "r.json")
    assert report["safety"] == {"source": "sidecar", "filters": chain["filters"]}
    assert report["rate_hz"] == pytest.approx(25.0) and report["export_rate_hz"] == pytest.approx(25.0)
    assert "export's rate" not in lines[0]
    # simulated time: the inference limit is off, which a strict JSON reader must be able to read (no Infinity)
    written = json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the report"))
    assert written["watchdog"] == {"max_observation_age": pytest.approx(0.08), "max_inference_time": None,
                                   "late_tolerance": pytest.approx(0.004), "max_clock_skew": pytest.approx(0.004),
                                   "on_fault": "fallback"}
    # safety= replaces the sidecar's chain, and another rate than the export's is said, in the log and the report
    lines.clear()
    report = deploy(str(export), steps=20, safety=[], rate_hz=50.0, log=lines.append)
    assert report["safety"] == {"source": "safety=", "filters": []} and report["loop"]["filter_interventions"] == 0
    assert report["rate_hz"] == pytest.approx(50.0) and report["export_rate_hz"] == pytest.approx(25.0)
    assert "at 50.0 Hz (the export's rate is 25 Hz: each command lasts 20 ms instead of 40 ms)" in lines[0]
    # a mapping without its filters list is no chain: it replaced the sidecar's with none, before the simulator ran
    for empty in ({}, {"filters": None}):
        with pytest.raises(ValueError, match=r"a safety spec is \{filters: \[\.\.\.\]\} \(\{filters: \[\]\} for no filters\)"):
            deploy(str(export), steps=20, safety=empty, log=lines.append)


def test_deploy_on_another_task_is_refused_for_the_policy_not_the_tasks_timing(tmp_path: Path) -> None:
    # a Hopper export (8 ms per command) on InvertedPendulum-v5 (20 ms physics steps): what is wrong is the task, not
    # the rate, so the message is the dims', not "the control period is not a whole number of physics steps"
    export = make_export(tmp_path / "e", obs_dim=11, act_dim=3, task="Hopper-v5", dt=0.008)
    with pytest.raises(ValueError, match=r"task InvertedPendulum-v5 has observation/action dims 4/1, the export 11/3"):
        deploy(str(export), task="InvertedPendulum-v5", steps=5, log=lambda _: None)
    # the same for the action bounds, and before a latency the other task's time limit could not hold
    narrow = make_export(tmp_path / "n", obs_dim=4, act_dim=1, low=-1.0, high=1.0, task="Hopper-v5", dt=0.008)
    with pytest.raises(ValueError, match=r"task InvertedPendulum-v5 acts within \[-3, 3\]"):
        deploy(str(narrow), task="InvertedPendulum-v5", sim2sim={"action_latency": 5000}, steps=5, log=lambda _: None)
    with pytest.raises(ValueError, match=r"task='Hoper-v5': .*; did you mean Hopper-v5"):  # a typo: the close ids
        deploy(str(export), task="Hoper-v5", steps=5, log=lambda _: None)


def test_deploy_builds_the_task_with_its_training_keyword_arguments(tmp_path: Path) -> None:
    # Hopper with its x position kept in the observation: 12 values instead of 11
    export = make_export(tmp_path / "e", obs_dim=12, act_dim=3, task="Hopper-v5", dt=0.008)
    sidecar_path = export / "policy.json"
    sidecar = json.loads(sidecar_path.read_text())
    with pytest.raises(ValueError, match="observation/action dims 11/3, the export 12/3"):
        deploy(str(export), episodes=1, log=lambda _: None)  # an export without the training kwargs: refused, named
    sidecar["task_kwargs"] = {"exclude_current_positions_from_observation": False}
    sidecar_path.write_text(json.dumps(sidecar))
    lines: list[str] = []
    report = deploy(str(export), episodes=1, log=lines.append)
    assert report["episodes"] == 1 and report["task_kwargs"] == sidecar["task_kwargs"]
    assert "exclude_current_positions_from_observation" in lines[0]


@pytest.mark.parametrize("kwargs, failure", [
    ({"xml_file": "missing.xml"}, "could not be built: OSError"),  # exported where the file was, deployed elsewhere
    ({"reset_noise_scale": "abc"}, "builds but cannot run a step: TypeError"),  # read only at a reset
])
def test_deploy_names_the_task_kwargs_a_task_cannot_be_built_or_run_with(tmp_path: Path, kwargs, failure) -> None:
    # the sidecar's task_kwargs reach gym.make: a task that fails on them was a traceback (exit 1), and one that fails
    # only at a reset or a step failed on the first control tick
    kwargs = {k: str(tmp_path / v) if k == "xml_file" else v for k, v in kwargs.items()}
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=1, low=-3.0, high=3.0, task="InvertedPendulum-v5")
    sidecar = json.loads((export / "policy.json").read_text())
    (export / "policy.json").write_text(json.dumps({**sidecar, "task_kwargs": kwargs}))
    lines: list[str] = []
    with pytest.raises(ValueError, match=re.escape(f"task='InvertedPendulum-v5' with keyword arguments {kwargs} {failure}")):
        deploy(str(export), steps=5, out=tmp_path / "r.json", log=lines.append)
    assert not lines and not (tmp_path / "r.json").exists()  # refused before any step
    robot = MujocoSim2SimRobot("InvertedPendulum-v5", env_kwargs=kwargs)
    with pytest.raises(ValueError, match=failure):
        robot.connect()
    assert not robot.is_connected


def test_runtime_robots_and_deploy_import_without_torch() -> None:
    code = "import sim2real.runtime, sim2real.loop, sim2real.robots, sim2real.deploy; import sys; assert 'torch' not in sys.modules"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_robo_rls_own_tasks_run_as_sim_robots_without_torch() -> None:
    # registering them imports the envs package, which imported torch until 2026-12-05
    code = ("import sys; sys.modules['torch'] = None\n"  # any import of torch fails, as where it is not installed
            "import numpy as np\n"
            "from sim2real.robots import MujocoSim2SimRobot\n"
            "for task in ('robo_rl/TwoGoals-v0', 'robo_rl/ContactMaze-v0'):\n"
            "    robot = MujocoSim2SimRobot(task)\n"
            "    robot.connect()\n"
            "    for _ in range(5):\n"
            "        robot.send_action(robot.fallback_action())\n"
            "    assert np.isfinite(robot.get_observation().values).all()\n"
            "    robot.disconnect()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_control_loop_arguments_are_checked_when_it_is_built(export_dir: Path) -> None:
    clock, sent = FakeClock(), []
    runtime, robot = PolicyRuntime(export_dir), scripted_robot(clock, {}, sent)
    with pytest.raises(TypeError, match="robot has no get_observation, send_action, fallback_action: pass a Robot"):
        ControlLoop(runtime, None)
    with pytest.raises(TypeError, match=r"runtime has no .*: pass a PolicyRuntime\(export_dir\), got str"):
        ControlLoop(str(export_dir), robot)
    with pytest.raises(TypeError, match=r"watchdog takes a WatchdogConfig\(...\), got dict"):
        ControlLoop(runtime, robot, watchdog={"max_observation_age": 0.1})
    with pytest.raises(TypeError, match="filters takes a list of filter specs"):
        ControlLoop(runtime, robot, filters="configs/safety/box.yaml")
    # a configs/safety file's mapping works as it is
    loop = ControlLoop(runtime, robot, filters={"filters": [{"type": "box", "low": -0.3, "high": 0.3}]},
                       watchdog=NO_INFERENCE_LIMIT, clock=clock, sleep=clock.sleep)
    with pytest.raises(TypeError, match="until=5: a function returning True"):
        loop.run(until=5)
    loop.run(steps=2)
    assert all(np.abs(a).max() <= 0.3 + 1e-6 for _, a in sent)


def test_a_robot_that_reports_garbage_gets_events_and_the_fallback_not_a_crash(export_dir: Path) -> None:
    from sim2real.filters import build_chain

    clock, sent = FakeClock(), []
    odd_info = lambda: Observation(np.array([0.1, -0.2, 0.3, 0.0]), timestamp=clock(), info=[1])  # noqa: E731
    robot = scripted_robot(clock, {1: odd_info, 2: lambda: None}, sent)  # 2: not an Observation at all
    robot.current_action = lambda: "ab"  # text where the held command should be
    chain = build_chain([{"type": "box", "low": -0.5, "high": 0.5}], action_dim=2)
    loop = ControlLoop(PolicyRuntime(export_dir), robot, filters=chain, watchdog=NO_INFERENCE_LIMIT,
                       clock=clock, sleep=clock.sleep)
    report = loop.run(steps=4)
    assert report.steps == 4 and len(sent) == 4
    kinds = [e["kind"] for e in loop.events]
    assert "bad_current_action" in kinds and kinds.count("bad_observation") == 2  # the info, then the non-observation
    assert "current_action() returned 'ab'" in next(e["detail"] for e in loop.events if e["kind"] == "bad_current_action")
    assert all(np.abs(a).max() <= 0.5 for _, a in sent)
    with pytest.raises(ValueError, match="the filter chain was built for action_dim=3, the policy acts in 2 dimensions"):
        ControlLoop(PolicyRuntime(export_dir), robot, filters=build_chain([], action_dim=3))


def test_a_built_chain_whose_dt_is_not_the_loop_s_period_is_refused_as_a_spec_is(export_dir: Path) -> None:
    # a tank told 0.02 s on the 0.04 s loop bounds a command's work over half the period it really acts:
    # a spec list was refused, the same chain built by hand was run
    from sim2real.filters import build_chain

    tank = {"type": "energy_tank", "velocity_index": [2, 3], "position_index": [0, 1], "dt": 0.02, "damping": 4.0,
            "initial_energy": 1.0, "max_energy": 2.0}
    robot = CallbackRobot(lambda: np.zeros(4), lambda a: None, action_dim=2)
    for filters in ([tank], build_chain([tank], 2, 4)):
        with pytest.raises(ValueError, match=r"\(energy_tank\): dt=0.02 is not the control period 0.04 s"):
            ControlLoop(PolicyRuntime(export_dir), robot, filters=filters, watchdog=NO_INFERENCE_LIMIT)
    with pytest.raises(ValueError, match=r"\(energy_tank\): dt=0.0199.* is not the control period 0.04 s"):
        build_chain([{**tank, "dt": np.float32(0.02)}], 2, 4, control_dt=0.04)  # a numpy number is checked too
    ControlLoop(PolicyRuntime(export_dir), robot, filters=build_chain([{**tank, "dt": 0.04}], 2, 4),
                watchdog=NO_INFERENCE_LIMIT)


def test_a_built_chain_reading_past_the_observation_is_refused_when_the_loop_is_built(export_dir: Path) -> None:
    # a spec list was refused at construction; the same chain built without obs_dim failed at the loop's first tick
    from sim2real.filters import build_chain

    robot = CallbackRobot(lambda: np.zeros(4), lambda a: None, action_dim=2)
    for spec, key in (({"type": "workspace", "ee_index": [3, 7], "low": -1, "high": 1}, "ee_index"),
                      ({"type": "energy_tank", "velocity_index": [2, 9], "dt": 0.04, "damping": 4.0,
                        "initial_energy": 1.0, "max_energy": 2.0}, "velocity_index")):
        with pytest.raises(ValueError, match=rf"safety\.filters\[1\]: {spec['type']}: {key} \[\d, \d\] out of range "
                                             r"of an observation with 4 entries"):
            ControlLoop(PolicyRuntime(export_dir), robot, filters=build_chain([{"type": "box", "low": -1, "high": 1}, spec], 2),
                        watchdog=NO_INFERENCE_LIMIT)


def test_the_dt_a_refused_filter_is_told_to_set_is_accepted_at_a_rate_whose_period_is_not_short(export_dir: Path) -> None:
    # at 30 Hz the refusal said "set dt: 0.0333333" (six digits), which is 3e-8 s off the 1/30 s period the check
    # compares with, so the tank set as told was refused again with the same message
    tank = {"type": "energy_tank", "velocity_index": [2, 3], "position_index": [0, 1], "dt": 0.04, "damping": 4.0,
            "initial_energy": 1.0, "max_energy": 2.0}
    robot = CallbackRobot(lambda: np.zeros(4), lambda a: None, action_dim=2)
    with pytest.raises(ValueError, match=r"\(energy_tank\): dt=0.04 is not the control period") as refused:
        ControlLoop(PolicyRuntime(export_dir), robot, filters=[tank], rate_hz=30.0, watchdog=NO_INFERENCE_LIMIT)
    told = re.search(r"set dt: (\S+)", str(refused.value))[1]
    ControlLoop(PolicyRuntime(export_dir), robot, filters=[{**tank, "dt": float(told)}], rate_hz=30.0,
                watchdog=NO_INFERENCE_LIMIT)


def test_an_unusable_current_action_or_info_is_logged_and_the_policy_still_acts(export_dir: Path) -> None:
    from sim2real.filters import build_chain

    # neither is a fault of the observation: the policy's action is sent (no fallback), and the event says which
    # command the filters started from (the fallback at the start of the run, the last command sent after that)
    clock, sent = FakeClock(), []
    start = lambda: Observation(np.array([0.1, -0.2, 0.3, 0.0]), timestamp=clock(),  # noqa: E731
                                info={"episode_start": True})
    odd_info = lambda: Observation(np.array([0.1, -0.2, 0.3, 0.0]), timestamp=clock(), info=[1])  # noqa: E731
    robot = scripted_robot(clock, {1: odd_info, 2: start}, sent)
    robot.current_action = lambda: "ab"
    chain = build_chain([{"type": "box", "low": -0.5, "high": 0.5}], action_dim=2)
    loop = ControlLoop(PolicyRuntime(export_dir), robot, filters=chain, watchdog=NO_INFERENCE_LIMIT,
                       clock=clock, sleep=clock.sleep)
    report = loop.run(steps=3)
    assert report.fallbacks == 0 and report.steps == 3
    details = [e["detail"] for e in loop.events if e["kind"] == "bad_current_action"]
    assert len(details) == 2
    assert details[0].endswith("the filters start from the fallback command instead")
    assert details[1].endswith("the filters start from the last command sent instead")
    assert [e["kind"] for e in loop.events].count("bad_observation") == 1  # the info, ignored


def test_an_episode_start_flag_that_is_not_true_or_false_is_logged_and_ignored(export_dir: Path) -> None:
    # per-joint flags (an array) ended the run with numpy's "truth value of an array ... is ambiguous"
    from sim2real.filters import build_chain

    clock, sent = FakeClock(), []
    flags = lambda: Observation(np.array([0.1, -0.2, 0.3, 0.0]), timestamp=clock(),  # noqa: E731
                                info={"episode_start": np.array([True, False])})
    robot = scripted_robot(clock, {1: flags, 2: flags}, sent)
    chain = build_chain([{"type": "box", "low": -0.5, "high": 0.5}, {"type": "rate", "max_delta": 0.01}], action_dim=2)
    loop = ControlLoop(PolicyRuntime(export_dir), robot, filters=chain, watchdog=NO_INFERENCE_LIMIT,
                       clock=clock, sleep=clock.sleep)
    report = loop.run(steps=3)
    assert report.fallbacks == 0 and report.steps == 3
    details = [e["detail"] for e in loop.events if e["kind"] == "bad_observation"]
    assert details == ["observation info episode_start=array([ True, False]) is not true/false; ignored"] * 2
    # not read as a start: the rate limit held from one command to the next
    commands = np.array([command for _, command in sent])
    assert (np.abs(np.diff(commands, axis=0)) <= 0.01 + 1e-12).all()


def test_a_reading_without_a_timestamp_or_with_ragged_values_gets_the_fallback_not_a_crash(export_dir: Path) -> None:
    # a reading with values but no timestamp raised AttributeError out of the run, and ragged values (a tuple of
    # an array and a dict from a callback) raised numpy's "inhomogeneous shape" ValueError: both ended the run
    from sim2real.loop import Robot

    class Reading:  # values, but no timestamp
        values = np.array([0.1, -0.2, 0.3, 0.0])
        info: dict = {}

    class Sensor(Robot):
        action_dim, is_connected = 2, True

        def __init__(self) -> None:
            self.sent: list[np.ndarray] = []

        def connect(self) -> None: ...

        def disconnect(self) -> None: ...

        def get_observation(self):
            return Reading() if len(self.sent) == 1 else Observation(np.array([0.1, -0.2, 0.3, 0.0]), clock())

        def send_action(self, action) -> None:
            self.sent.append(np.array(action))

    clock = FakeClock()
    robot = Sensor()
    loop = ControlLoop(PolicyRuntime(export_dir), robot, filters=[], watchdog=NO_INFERENCE_LIMIT, clock=clock,
                       sleep=clock.sleep)
    report = loop.run(steps=3)
    assert report.steps == 3 and report.events == {"bad_timestamp": 1} and report.fallbacks == 1
    assert "observation timestamp None gives no age" in loop.events[0]["detail"]
    np.testing.assert_array_equal(robot.sent[1], [0.0, 0.0])  # Robot's default fallback

    sent: list = []
    callback = scripted_robot(clock, {1: lambda: (np.zeros(4), {"t": 0.0})}, sent)
    loop = ControlLoop(PolicyRuntime(export_dir), callback, filters=[], watchdog=NO_INFERENCE_LIMIT, clock=clock,
                       sleep=clock.sleep)
    report = loop.run(steps=3)
    assert report.steps == 3 and report.events == {"bad_observation": 1} and len(sent) == 3
    np.testing.assert_array_equal(sent[1][1], [0.8, -0.8])


def test_deploy_from_python_runs_steps_alone_as_many_steps_as_the_cli_does(tmp_path: Path) -> None:
    # deploy(export, steps=N) stopped after 5 episodes (the default episodes=5 applied beside steps=), where
    # `robo-rl deploy steps=N` runs N steps; neither given: 5 episodes, as the CLI
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=1, low=-3.0, high=3.0, task="InvertedPendulum-v5", dt=0.04)
    short = {"max_episode_steps": 4, "seed": 0}  # 4-step episodes: 5 of them end after 20 steps
    report = deploy(str(export), steps=30, sim2sim=short, log=lambda _: None)
    assert report["loop"]["steps"] == 30 and report["episodes"] == 7
    report = deploy(str(export), sim2sim=short, log=lambda _: None)
    assert report["episodes"] == 5 and report["loop"]["steps"] == 20


@pytest.mark.parametrize("name", ["policy.json", "policy.onnx"])
def test_deploy_refuses_a_report_path_that_is_the_export_s_own_file(tmp_path: Path, name: str) -> None:
    # out=<export>/policy.json wrote the report over the sidecar: the export could never be deployed again
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=1, low=-3.0, high=3.0, task="InvertedPendulum-v5")
    before = (export / name).read_bytes()
    lines: list[str] = []
    with pytest.raises(ValueError, match=rf"out=.*{name}: that is the export's own {name}"):
        deploy(str(export), steps=5, out=export / name, log=lines.append)
    assert not lines and (export / name).read_bytes() == before  # refused before anything ran


def test_deploy_on_a_task_with_discrete_actions_names_the_task(tmp_path: Path) -> None:
    # task=CartPole-v1 was an AttributeError ('Discrete' object has no attribute 'low') from the sim2sim robot
    export = make_export(tmp_path / "e", obs_dim=4, act_dim=1, low=-3.0, high=3.0, task="InvertedPendulum-v5")
    with pytest.raises(ValueError, match=r"task=CartPole-v1: its action space is Discrete, not a Box"):
        deploy(str(export), task="CartPole-v1", steps=5, log=lambda _: None)
