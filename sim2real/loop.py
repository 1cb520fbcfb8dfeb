"""The control loop: policy -> safety filters -> robot at a fixed rate, watched.

Numpy only next to ``sim2real.runtime`` (no torch). Two pieces:

* ``Robot`` is the adapter a robot implements (LeRobot-style: connect, get_observation,
  send_action, disconnect) plus the command it falls back to when something is wrong;
* ``ControlLoop`` runs policy -> safety filters -> robot at a fixed rate with absolute deadlines
  and a watchdog. A fault (stale, non-finite or malformed observation, an unusable timestamp, slow
  inference, non-finite action) never stops the robot silently: the robot's fallback command is
  sent instead, still through the safety filters, and the fault is logged as an event.

An export of a chunk head runs ``execute`` actions of each chunk per query (``runtime.ChunkExecutor``),
each through the filters; a new episode or a fallback command starts a new chunk.
"""

from __future__ import annotations

import abc
import inspect
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import numpy as np

from sim2real.runtime import BadAction, ChunkExecutor, NonFiniteAction, NonFiniteObservation, PolicyRuntime


@dataclass
class Observation:
    """One reading from a robot.

    values: [O] observation in the policy's units; timestamp: when it was measured, on the same
    clock the control loop uses (``time.monotonic()`` by default); info: anything else, e.g.
    ``reward``, ``done``, or ``episode_start=True`` (the loop then resets stateful filters).
    """

    values: np.ndarray
    timestamp: float
    info: dict[str, Any] = field(default_factory=dict)


class Robot(abc.ABC):
    """What the control loop talks to. Subclass it for hardware; see ``sim2real.robots`` for examples."""

    action_dim: int
    #: the float type the robot applies commands in (float32 for a MuJoCo task or a float32 driver message): the
    #: loop filters and bounds each command at it, so the numbers the actuators get are inside the filters'
    #: limits (float32(0.1) is above 0.1); read when the loop starts, after ``connect()``
    action_dtype: Any = np.float64

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def disconnect(self) -> None: ...

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    @abc.abstractmethod
    def get_observation(self) -> Observation: ...

    @abc.abstractmethod
    def send_action(self, action: np.ndarray) -> None: ...

    def fallback_action(self) -> np.ndarray:
        """The command sent when the policy's action cannot be trusted. Zeros by default; a robot
        with position control should hold its last position, a torque robot should damp."""
        return np.zeros(self.action_dim, np.float32)

    def current_action(self) -> np.ndarray | None:
        """The command the actuators hold now ([action_dim], finite), or None if the robot cannot tell.

        The loop starts its safety filters from it at the start of a run and of an episode, so a
        rate limit holds from the first command on; with None it uses the last command it sent in
        this run, or ``fallback_action()`` before the first one.
        """
        return None

    def __enter__(self) -> "Robot":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disconnect()


ON_FAULT = ("fallback", "stop")


@dataclass
class WatchdogConfig:
    """Limits that turn into a fallback command. None picks a default from the control period:
    observations older than 2 periods, inference longer than half a period, an observation
    timestamped up to 10% of a period in the future (clocks that disagree a little) and a tick
    that starts up to 10% of a period late (OS sleep jitter) before it counts as a deadline miss.
    Use math.inf to switch a check off (a NaN timestamp is always a fault)."""

    max_observation_age: float | None = None
    max_inference_time: float | None = None
    late_tolerance: float | None = None
    max_clock_skew: float | None = None  # how far in the future an observation's timestamp may be
    on_fault: str = "fallback"  # "fallback": send the fallback and go on; "stop": send it, then end the run

    def __post_init__(self) -> None:
        if self.on_fault not in ON_FAULT:
            raise ValueError(f"watchdog.on_fault={self.on_fault!r}: choose one of {', '.join(ON_FAULT)}")
        for name in ("max_observation_age", "max_inference_time", "late_tolerance", "max_clock_skew"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, (bool, np.bool_)) or not isinstance(
                    value, (int, float, np.integer, np.floating)) or not value > 0):  # NaN is not > 0; inf switches it off
                raise ValueError(f"watchdog.{name}={value!r}: expected seconds > 0 (or null for the default)")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "WatchdogConfig":
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown watchdog key(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def _positive_number(value: Any) -> bool:
    """A finite real number > 0 (not a bool, not NaN or inf)."""
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and bool(np.isfinite(value)) and value > 0)


# A control loop's rate: a tick at least every ~17 minutes and at most every microsecond (below what an OS
# timer can keep). Outside it the period over- or underflows (rate_hz=1e-300 made the period 1e300 s).
MIN_RATE_HZ, MAX_RATE_HZ = 1e-3, 1e6


def check_rate_hz(rate_hz: Any, unset: str) -> None:
    """Refuse a control rate that is not a real number of Hz in [MIN_RATE_HZ, MAX_RATE_HZ]; ``unset`` says
    what None means to the caller."""
    if rate_hz is not None and not (_positive_number(rate_hz) and MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ):
        raise ValueError(f"rate_hz={rate_hz!r}: must be a number of Hz between {MIN_RATE_HZ:g} and {MAX_RATE_HZ:g}, "
                         f"or {unset}")


class _Latency:
    """Running count/mean/max over all samples and percentiles over the last ``window``."""

    def __init__(self, window: int = 100_000) -> None:
        self.recent: deque[float] = deque(maxlen=window)
        self.count, self.total, self.max = 0, 0.0, 0.0

    def add(self, seconds: float) -> None:
        ms = seconds * 1e3
        self.recent.append(ms)
        self.count, self.total, self.max = self.count + 1, self.total + ms, max(self.max, ms)

    def summary(self) -> dict[str, float | None]:
        if not self.count:
            return {"p50": None, "p99": None, "max": None, "mean": None, "count": 0}
        p50, p99 = np.percentile(np.fromiter(self.recent, float), [50, 99])
        return {"p50": float(p50), "p99": float(p99), "max": self.max, "mean": self.total / self.count, "count": self.count}


@dataclass
class LoopReport:
    steps: int
    events: dict[str, int]
    latency: dict[str, dict[str, float | None]]
    deadline_misses: int
    skipped_ticks: int
    filter_interventions: int
    filter_fallbacks: int
    fallbacks: int
    wall_time: float
    rate_hz: float
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ControlLoop:
    """policy -> safety filters -> robot at ``rate_hz``, with a watchdog; see the module docstring.

    Deadlines are absolute: tick k is due at t0 + k * period, so a slow tick never shifts the ones
    after it. A tick that starts late runs at once and counts a deadline miss; slots that passed
    entirely are skipped (never run as a burst of catch-up ticks: a robot wants the newest
    observation, not a queue of old ones). ``realtime=False`` (simulation) never sleeps but keeps
    every check; pass the simulator's ``SimulatedClock`` as ``clock`` so ages and deadlines are in
    simulated time. Inference and loop latencies are always measured with the wall clock.
    """

    def __init__(self, runtime: PolicyRuntime, robot: Robot, filters: Any = None, rate_hz: float | None = None,
                 watchdog: WatchdogConfig | None = None, realtime: bool = True,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 max_events: int = 10_000) -> None:
        for what, value, needs in (("runtime", runtime, ("__call__", "check_observation", "act_dim", "obs_dim")),
                                   ("robot", robot, ("get_observation", "send_action", "fallback_action"))):
            missing = [name for name in needs if not hasattr(value, name)]
            if missing:
                raise TypeError(f"ControlLoop: {what} has no {', '.join(missing)}: pass a "
                                + ("PolicyRuntime(export_dir)" if what == "runtime" else "Robot (sim2real.loop.Robot)")
                                + f", got {type(value).__name__}")
        if watchdog is not None and not isinstance(watchdog, WatchdogConfig):
            raise TypeError(f"ControlLoop: watchdog takes a WatchdogConfig(...), got {type(watchdog).__name__}")
        self.runtime, self.robot = runtime, robot
        self.chunks = ChunkExecutor(runtime)  # one query per `execute` ticks for a chunk export, else every tick
        check_rate_hz(rate_hz, "None for the sidecar's rate")  # 0 is refused, not read as "the sidecar's"
        rate = rate_hz if rate_hz is not None else runtime.rate_hz
        if not rate or not rate > 0:
            raise ValueError(f"rate_hz={rate_hz!r}: give a positive control rate (the sidecar has none)")
        check_rate_hz(rate, "None for the sidecar's rate")
        self.rate_hz, self.period = float(rate), 1.0 / float(rate)
        wd = watchdog or WatchdogConfig()
        self.watchdog = wd
        self.max_age = wd.max_observation_age if wd.max_observation_age is not None else 2 * self.period
        self.max_inference = wd.max_inference_time if wd.max_inference_time is not None else 0.5 * self.period
        self.late_tolerance = wd.late_tolerance if wd.late_tolerance is not None else 0.1 * self.period
        self.max_skew = wd.max_clock_skew if wd.max_clock_skew is not None else 0.1 * self.period
        self.realtime, self.clock, self.sleep, self.max_events = realtime, clock, sleep, max_events
        self.filters = self._build_filters(filters)
        self._set_action_dtype()  # (again when a run starts: a robot may know it only once connected)
        self.events: list[dict[str, Any]] = []

    def _build_filters(self, filters: Any) -> Any:
        # Mapping: {filters: [...]}; Sequence: a list of specs, OmegaConf's ListConfig (a run's cfg.safety.filters) too
        if filters is not None and (not isinstance(filters, (Sequence, Mapping)) or isinstance(filters, (str, bytes))):
            if not (callable(filters) and callable(getattr(filters, "reset", None))):
                raise TypeError(f"ControlLoop: filters takes a list of filter specs, {{filters: [...]}} or a built "
                                f"chain (sim2real.filters.build_chain), got {type(filters).__name__}")
            dim = getattr(filters, "action_dim", None)
            if dim is not None and dim != self.runtime.act_dim:
                raise ValueError(f"ControlLoop: the filter chain was built for action_dim={dim}, the policy acts in "
                                 f"{self.runtime.act_dim} dimensions; build it with action_dim={self.runtime.act_dim}")
            from sim2real.filters.chain import check_control_dt, check_obs_dim

            built = getattr(filters, "filters", [filters])
            check_control_dt(built, self.period)  # as build_chain checks a spec's
            check_obs_dim(built, self.runtime.obs_dim)
            return filters  # an already-built chain: chain(action[B, A], obs[B, O]) -> (action, report)
        spec = (list(filters) if isinstance(filters, Sequence) else filters) if filters is not None else \
            self.runtime.sidecar.get("safety", {}).get("filters")
        try:
            from sim2real.filters import build_chain
        except ImportError:
            if spec:
                raise
            return None  # nothing asked for, nothing to build
        return build_chain(spec, self.runtime.act_dim, self.runtime.obs_dim, control_dt=self.period)

    def _event(self, kind: str, detail: str) -> None:
        self.counts[kind] += 1
        if len(self.events) < self.max_events:
            self.events.append({"step": self.step, "time": self.clock() - self.t0, "kind": kind, "detail": detail})

    def _reset_filters(self) -> None:
        """Start the filters' episode from the command the robot holds now, so a rate limit also holds
        on the first command after the reset: ``Robot.current_action()`` if the robot reports it, else
        the last command this run sent, else (at the start of a run) the robot's fallback command."""
        if self.filters is None:
            return
        current = getattr(self.robot, "current_action", None)
        command = current() if callable(current) else None
        if command is not None:
            reported = command
            try:
                command = np.asarray(command, np.float64)
            except (TypeError, ValueError):  # text, a ragged list: as unusable as a NaN
                command = np.full(1, np.nan)
            if command.shape != (self.runtime.act_dim,) or not np.isfinite(command).all():
                instead = "the last command sent" if self._last_sent is not None else "the fallback command"
                self._event("bad_current_action", f"{type(self.robot).__name__}.current_action() returned {reported!r}; "
                                                  f"the filters start from {instead} instead")
                command = None
        if command is None:
            command = self._last_sent if self._last_sent is not None else self._fallback()
        try:
            takes_initial = "initial" in inspect.signature(self.filters.reset).parameters
        except (TypeError, ValueError):
            takes_initial = False
        if takes_initial:
            self.filters.reset(1, initial=command)
        else:  # a user chain without the argument: it starts as it always did
            self.filters.reset(1)

    def _fallback(self) -> np.ndarray:
        action = np.asarray(self.robot.fallback_action(), np.float64)
        if action.shape != (self.runtime.act_dim,) or not np.isfinite(action).all():
            raise RuntimeError(f"{type(self.robot).__name__}.fallback_action() returned {action!r}: "
                               f"needs {self.runtime.act_dim} finite numbers")
        return action

    def run(self, steps: int | None = None, until: Callable[[], bool] | None = None) -> LoopReport:
        """Run ``steps`` ticks, or until ``until()`` is true, or forever (Ctrl+C stops after a fallback)."""
        if steps is not None and (isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer))
                                  or steps < 1):
            raise ValueError(f"steps={steps!r}: must be a whole number >= 1, or None to run until until() or Ctrl+C")
        if until is not None and not callable(until):
            raise TypeError(f"until={until!r}: a function returning True when the run should end (steps= counts ticks)")
        self.events, self.counts = [], Counter()
        self.inference, self.loop = _Latency(), _Latency()
        self.step, self.misses, self.skipped, self.fallbacks = 0, 0, 0, 0
        self._last_sent: np.ndarray | None = None
        self.chunks.reset()
        connected_here = not self.robot.is_connected
        if connected_here:
            self.robot.connect()
        interrupted, stop = False, False
        wall0 = time.perf_counter()
        self.t0 = self.clock()
        slot = 0
        try:
            self._set_action_dtype()
            self._fallback()  # a robot whose fallback is unusable must fail before the first tick
            self._reset_filters()
            self.t0 = self.clock()  # tick 0 is due once the loop is ready: at 1 kHz the set-up alone made it late
            while not stop and (steps is None or self.step < steps) and not (until is not None and until()):
                due = self.t0 + slot * self.period
                now = self.clock()
                if now < due:
                    if self.realtime:
                        self.sleep(due - now)
                elif now - due > self.late_tolerance:
                    missed = int((now - due) // self.period)  # slots whose whole period has passed
                    self.misses += 1
                    self.skipped += missed
                    slot += missed
                    self._event("deadline_miss", f"tick started {(now - due) * 1e3:.2f} ms late; skipped {missed} tick(s)")
                fault = self._tick()
                stop = fault and self.watchdog.on_fault == "stop"
                self.step += 1
                slot += 1
        except KeyboardInterrupt:
            interrupted = True
            self._safe_stop()
        except BaseException:
            self._safe_stop()
            raise
        finally:
            if connected_here and self.robot.is_connected:
                self.robot.disconnect()
        return LoopReport(steps=self.step, events=dict(self.counts),
                          latency={"inference_ms": self.inference.summary(), "loop_ms": self.loop.summary()},
                          deadline_misses=self.misses, skipped_ticks=self.skipped,
                          filter_interventions=self.counts["filter_intervention"],
                          filter_fallbacks=self.counts["filter_fallback"], fallbacks=self.fallbacks,
                          wall_time=time.perf_counter() - wall0, rate_hz=self.rate_hz, interrupted=interrupted)

    def _set_action_dtype(self) -> None:
        """The robot's ``action_dtype``, and the export's action bounds rounded inward to it."""
        from sim2real.filters.base import representable_bounds

        dtype = np.dtype(getattr(self.robot, "action_dtype", np.float64))
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"{type(self.robot).__name__}.action_dtype is {dtype}: float32 or float64")
        self._dtype = dtype
        self._low, self._high = representable_bounds(self.runtime.action_low, self.runtime.action_high, dtype)

    def _safe_stop(self) -> None:
        """On Ctrl+C or an error: one last fallback command, so the robot is not left on the policy's.

        It goes to the robot in one step (no rate limit: there is no next tick to finish the ramp), but within
        the filters' stateless limits (a box) and the action bounds, as every command the loop sends."""
        try:
            if self.robot.is_connected:
                command = fallback = self._fallback().astype(self._dtype)
                try:
                    # a chain's filters, or a single filter handed to the loop as its chain (a BoxFilter)
                    for f in getattr(self.filters, "filters", () if self.filters is None else (self.filters,)):
                        command = np.asarray(f.admissible(command[None]), self._dtype).reshape(-1)
                except Exception:  # a filter's own failure: the action bounds still hold
                    command = fallback
                if command.shape != fallback.shape or not np.isfinite(command).all():
                    command = fallback
                self.robot.send_action(np.clip(command, self._low, self._high).astype(self._dtype))
        except Exception:  # the original error matters more than a failed last command
            pass

    def _tick(self) -> bool:
        """One control step; returns whether the watchdog had to send the fallback."""
        start = time.perf_counter()
        obs = self.robot.get_observation()
        try:
            values = np.asarray(getattr(obs, "values", None))  # not an Observation: a shape fault below, not a crash
        except (TypeError, ValueError):  # ragged lists, objects numpy cannot hold as one array
            values = np.asarray(None)
        info = getattr(obs, "info", None) or {}
        if not isinstance(info, Mapping):
            self._event("bad_observation", f"observation info is a {type(info).__name__}, not a mapping; ignored")
            info = {}
        start_flag = info.get("episode_start", False)
        if not (isinstance(start_flag, (bool, np.bool_)) or (isinstance(start_flag, (int, np.integer))
                                                              and start_flag in (0, 1))):
            # (per-joint flags, text): not read as a start, so the filters keep their limits from the last command
            self._event("bad_observation", f"observation info episode_start={start_flag!r:.60} is not true/false; "
                                           "ignored")
            start_flag = False
        if start_flag:
            self._reset_filters()
            self.chunks.reset()  # a new episode starts a new chunk, as in robo-rl's evaluation
        action, fault, checked, fresh = None, None, None, None
        if values.shape != (self.runtime.obs_dim,):
            fault = ("bad_observation", f"observation shape {values.shape}, expected ({self.runtime.obs_dim},)")
        else:
            try:
                checked = self.runtime.check_observation(values)
            except NonFiniteObservation as exc:
                fault = ("non_finite_observation", str(exc))
            except ValueError as exc:
                fault = ("bad_observation", str(exc))
        if checked is not None:
            stamp = getattr(obs, "timestamp", None)  # a reading without one: its freshness is unknown
            try:
                age = float(self.clock() - stamp)
            except (TypeError, ValueError):
                age = float("nan")
            if not np.isfinite(age):
                fault = ("bad_timestamp", f"observation timestamp {stamp!r} gives no age "
                                          f"(NaN/inf or not a number); its freshness is unknown")
            elif age < -self.max_skew:
                fault = ("bad_timestamp", f"observation timestamp is {-age * 1e3:.1f} ms in the future (limit "
                                          f"{self.max_skew * 1e3:.1f} ms): the robot stamps with another clock than the loop")
            elif age > self.max_age:
                fault = ("stale_observation", f"observation is {age * 1e3:.1f} ms old (limit {self.max_age * 1e3:.1f} ms)")
            else:
                fresh = values.astype(np.float64)  # usable and current: the filters get it at full precision
                queried = self.chunks.due  # else the next action of the current chunk: no inference this tick
                t = time.perf_counter()
                try:
                    action = self.chunks(checked).astype(np.float64)
                except BadAction as exc:
                    kind = "non_finite_action" if isinstance(exc, NonFiniteAction) else "action_out_of_bounds"
                    fault = (kind, str(exc))
                took = time.perf_counter() - t
                if queried:
                    self.inference.add(took)
                    if fault is None and took > self.max_inference:
                        fault = ("inference_overrun", f"inference took {took * 1e3:.2f} ms (limit {self.max_inference * 1e3:.2f} ms)")
        if fault is not None:
            self._event(*fault)
            self.fallbacks += 1
            action = self._fallback()
            self.chunks.reset()  # the rest of the chunk was planned for a robot that followed it
        command = self._filter(action, self._filter_obs(fresh))
        self.robot.send_action(command)
        self._last_sent = command
        self.loop.add(time.perf_counter() - start)
        return fault is not None

    def _filter_obs(self, state: np.ndarray | None) -> np.ndarray:
        """What the filters see: this tick's observation, or NaN when it is stale or unusable.

        State-dependent filters must not act on an old state as if it were current (an energy tank
        settling the robot's work from a repeated position would miss the work done meanwhile), so
        without a fresh observation they get "state unknown" and take their own reported fallback.
        """
        return state if state is not None else np.full(self.runtime.obs_dim, np.nan)

    def _filter(self, action: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """Safety filters (also on the fallback), then the action bounds as a last guarantee, at the robot's
        ``action_dtype``: the filters keep their limits on the numbers of that type they return."""
        if self.filters is not None:
            filtered, report = self.filters(action[None].astype(self._dtype), obs[None])
            filtered = np.asarray(filtered, np.float64).reshape(-1)
            if report.fallback[0]:
                self._event("filter_fallback", "; ".join(report.reasons) or "filter chain fell back")
            elif report.intervened[0]:
                self._event("filter_intervention", "; ".join(report.reasons) or "filter chain changed the action")
            if filtered.shape != action.shape or not np.isfinite(filtered).all():
                self._event("non_finite_action", "the filter chain returned a NaN/inf or misshaped action; "
                                                 "sending the unfiltered fallback")
                self.fallbacks += 1
                filtered = self._fallback()
                self.chunks.reset()  # a fallback command starts a new chunk, as the watchdog's does
            action = filtered
        return np.clip(action, self._low, self._high).astype(self._dtype)
