"""Run an exported policy on a robot: onnxruntime + numpy only, in a fixed-rate, watched loop.

This module is what a robot computer installs, so it never imports torch (nor ``robo_rl``,
``policies`` or ``envs``). Three pieces:

* ``PolicyRuntime`` loads an export directory (``policy.onnx`` + ``policy.json``), refuses a model
  whose checksum or input/output signature does not match its sidecar, and maps observations to
  actions with strict shape / dtype / finiteness checks on both sides;
* ``Robot`` is the adapter a robot implements (LeRobot-style: connect, get_observation,
  send_action, disconnect) plus the command it falls back to when something is wrong;
* ``ControlLoop`` runs policy -> safety filters -> robot at a fixed rate with absolute deadlines
  and a watchdog. A fault (stale, non-finite or malformed observation, slow inference, non-finite
  action) never stops the robot silently: the robot's fallback command is sent instead, still
  through the safety filters, and the fault is logged as an event.
"""

from __future__ import annotations

import abc
import json
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sim2real.export import FORMAT, FORMAT_VERSION, sha256_of

SIDECAR = "policy.json"


class ExportError(ValueError):
    """The export directory is unusable: bad sidecar, wrong checksum, or a model that does not match."""


class NonFiniteObservation(ValueError):
    """The observation holds NaN or inf; the control loop answers with the fallback command."""


class BadAction(ValueError):
    """The policy produced an action that must not be sent."""


class NonFiniteAction(BadAction):
    pass


class ActionOutOfBounds(BadAction):
    pass


def onnx_session(path: str | Path, threads: int = 1):  # -> onnxruntime.InferenceSession
    """A CPU session with a fixed thread count and sequential execution.

    One thread is the default on purpose: a control loop wants the same latency every tick, and a
    thread pool competing with the robot's other processes adds jitter for tiny MLPs.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = int(threads)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _sidecar_path(export: str | Path) -> Path:
    path = Path(export)
    return path / SIDECAR if path.is_dir() else path


def load_sidecar(export: str | Path) -> dict[str, Any]:
    """Read and validate the JSON sidecar of an export (a directory or the .json file itself)."""
    path = _sidecar_path(export)
    if not path.is_file():
        raise ExportError(f"{path} not found: pass an export directory holding {SIDECAR} (from `robo-rl export`)")
    try:
        sidecar = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path} is not valid JSON ({exc})") from exc

    def bad(message: str) -> ExportError:
        return ExportError(f"{path}: {message}")

    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise bad(f"format is {sidecar.get('format') if isinstance(sidecar, dict) else None!r}, expected {FORMAT!r}")
    if sidecar.get("version") != FORMAT_VERSION:
        raise bad(f"version {sidecar.get('version')!r} is not supported (this runtime reads version {FORMAT_VERSION}); "
                  "re-export with this robo-rl version")
    for key in ("model_file", "model_format", "sha256", "observation", "action", "inputs", "outputs", "control"):
        if key not in sidecar:
            raise bad(f"missing key {key!r}")
    obs, act = sidecar["observation"], sidecar["action"]
    if not isinstance(obs.get("dim"), int) or obs["dim"] < 1:
        raise bad(f"observation.dim={obs.get('dim')!r}: expected a positive integer")
    if not isinstance(act.get("dim"), int) or act["dim"] < 1:
        raise bad(f"action.dim={act.get('dim')!r}: expected a positive integer")
    low, high = np.asarray(act.get("low"), float), np.asarray(act.get("high"), float)
    if low.shape != (act["dim"],) or high.shape != (act["dim"],):
        raise bad(f"action.low/high must each list action.dim={act['dim']} numbers")
    if not (np.isfinite(low).all() and np.isfinite(high).all() and (low <= high).all()):
        raise bad("action.low/high must be finite with low <= high")
    noise = sidecar.get("noise")
    k = int(noise["dim"]) if noise else 0
    if noise and noise.get("default", "zeros") != "zeros" and np.shape(noise["default"]) != (k,):
        raise bad(f"noise.default must be 'zeros' or {k} numbers")
    expected_in = [("obs", obs["dim"])] + ([("noise", k)] if k else [])
    for what, entries, expected in (("inputs", sidecar["inputs"], expected_in),
                                    ("outputs", sidecar["outputs"], [("action", act["dim"])])):
        got = [(e.get("name"), e.get("shape", [None, None])[-1]) for e in entries]
        if got != expected:
            raise bad(f"{what} {got} (name, size) do not match observation/action/noise dims {expected}")
    dt = sidecar["control"].get("dt")
    if dt is not None and not (isinstance(dt, (int, float)) and dt > 0):
        raise bad(f"control.dt={dt!r}: expected a positive number of seconds or null")
    if not isinstance(sidecar.get("safety", {}), dict):
        raise bad("safety must be a mapping like {'filters': [...]}")
    return sidecar


class PolicyRuntime:
    """An exported policy, checked against its sidecar, as a numpy function obs -> action."""

    def __init__(self, export: str | Path, threads: int = 1, verify: bool = True) -> None:
        self.sidecar_path = _sidecar_path(export)
        self.sidecar = load_sidecar(self.sidecar_path)
        self.model_path = self.sidecar_path.parent / self.sidecar["model_file"]
        if self.sidecar["model_format"] != "onnx":
            raise ExportError(f"{self.model_path.name} is a {self.sidecar['model_format']} export; this runtime "
                              "runs ONNX only (no torch): load it with torch.jit.load, or re-export with format=onnx")
        if not self.model_path.is_file():
            raise ExportError(f"{self.model_path} not found (named by {self.sidecar_path})")
        if verify and sha256_of(self.model_path) != self.sidecar["sha256"]:
            raise ExportError(f"{self.model_path.name} does not match the checksum in {self.sidecar_path.name} "
                              f"(file changed or wrong sidecar): {self.model_path}")
        self.obs_dim = int(self.sidecar["observation"]["dim"])
        self.act_dim = int(self.sidecar["action"]["dim"])
        self.action_low = np.asarray(self.sidecar["action"]["low"], np.float32)
        self.action_high = np.asarray(self.sidecar["action"]["high"], np.float32)
        # the export clips in float32; allow that rounding, refuse anything a real bug would produce
        self._bound_tol = 1e-5 * (self.action_high - self.action_low) + 1e-6
        control = self.sidecar["control"]
        self.dt: float | None = control.get("dt")
        self.rate_hz: float | None = control.get("rate_hz") or (1.0 / self.dt if self.dt else None)
        self.task: str | None = self.sidecar.get("task")
        noise = self.sidecar.get("noise")
        self.noise_dim = int(noise["dim"]) if noise else 0
        default = noise.get("default", "zeros") if noise else "zeros"
        self.default_noise = np.zeros(self.noise_dim, np.float32) if default == "zeros" else np.asarray(default, np.float32)
        self.session = onnx_session(self.model_path, threads)
        self._fixed_batch = self._check_signature()
        self._warm_up()

    def _warm_up(self) -> None:
        """One inference at load: onnxruntime allocates on its first run, which would otherwise land
        on the robot's first control tick (and trip the inference-time watchdog)."""
        batch = self._fixed_batch or 1
        feeds = {"obs": np.zeros((batch, self.obs_dim), np.float32)}
        if self.noise_dim:
            feeds["noise"] = self._noise(None, batch)
        self.session.run(["action"], feeds)

    def _check_signature(self) -> int | None:
        """The graph's inputs/outputs must be the sidecar's: names, rank, feature sizes, float32."""
        fixed: set[int] = set()
        for what, declared, actual in (("inputs", self.sidecar["inputs"], self.session.get_inputs()),
                                       ("outputs", self.sidecar["outputs"], self.session.get_outputs())):
            want = {e["name"]: int(e["shape"][-1]) for e in declared}
            got = {a.name: a for a in actual}
            if set(want) != set(got):
                raise ExportError(f"{self.model_path.name} has {what} {sorted(got)} but {self.sidecar_path.name} "
                                  f"declares {sorted(want)}")
            for name, size in want.items():
                shape, dtype = list(got[name].shape), got[name].type
                if len(shape) != 2 or shape[1] != size or dtype != "tensor(float)":
                    raise ExportError(f"{self.model_path.name}: {what[:-1]} {name!r} is {dtype} {shape}, but "
                                      f"{self.sidecar_path.name} declares float32 ['batch', {size}]")
                if isinstance(shape[0], int):
                    fixed.add(shape[0])
        return fixed.pop() if len(fixed) == 1 else None

    def check_observation(self, obs: Any) -> np.ndarray:
        """obs [O] or [B, O], any float dtype -> float32, same shape; raises on wrong shape/dtype/NaN."""
        obs = np.asarray(obs)
        if obs.dtype.kind != "f":
            raise ValueError(f"observation dtype {obs.dtype}: expected float32 (float64 is cast)")
        if obs.ndim not in (1, 2) or obs.shape[-1] != self.obs_dim or (obs.ndim == 2 and obs.shape[0] < 1):
            raise ValueError(f"observation shape {tuple(obs.shape)}: expected ({self.obs_dim},) or (batch, {self.obs_dim})")
        obs = obs.astype(np.float32, copy=False)
        if not np.isfinite(obs).all():
            where = np.flatnonzero(~np.isfinite(obs.reshape(-1, self.obs_dim)).any(axis=0)).tolist()
            raise NonFiniteObservation(f"observation has NaN/inf at indices {where}")
        return obs

    def __call__(self, obs: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """Action [A] for obs [O], or [B, A] for [B, O], in env units within the action bounds."""
        obs = self.check_observation(obs)
        single = obs.ndim == 1
        batch = obs.reshape(-1, self.obs_dim)
        if self._fixed_batch is not None and batch.shape[0] != self._fixed_batch:
            raise ValueError(f"{self.model_path.name} was exported for batch size {self._fixed_batch}, got {batch.shape[0]}")
        feeds = {"obs": batch}
        if self.noise_dim:
            feeds["noise"] = self._noise(noise, batch.shape[0])
        elif noise is not None:
            raise ValueError("this policy takes no noise input (sidecar noise is null)")
        action = self.session.run(["action"], feeds)[0]
        if action.shape != (batch.shape[0], self.act_dim):
            raise ExportError(f"{self.model_path.name} returned an action of shape {action.shape}, "
                              f"expected ({batch.shape[0]}, {self.act_dim})")
        if not np.isfinite(action).all():
            raise NonFiniteAction("the policy returned a NaN/inf action")
        over = np.maximum(self.action_low - action, action - self.action_high)
        if (over > self._bound_tol).any():
            raise ActionOutOfBounds(f"the policy returned an action {float(over.max()):.3g} outside the sidecar's "
                                    "action bounds (the model and its sidecar disagree)")
        action = np.clip(action, self.action_low, self.action_high)
        return action[0] if single else action

    def _noise(self, noise: np.ndarray | None, batch: int) -> np.ndarray:
        if noise is None:
            return np.broadcast_to(self.default_noise, (batch, self.noise_dim)).astype(np.float32)
        noise = np.asarray(noise, np.float32)
        if noise.shape not in ((self.noise_dim,), (batch, self.noise_dim)):
            raise ValueError(f"noise shape {tuple(noise.shape)}: expected ({self.noise_dim},) or ({batch}, {self.noise_dim})")
        if not np.isfinite(noise).all():
            raise ValueError("noise has NaN/inf values")
        return np.ascontiguousarray(np.broadcast_to(noise, (batch, self.noise_dim)))


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

    def __enter__(self) -> "Robot":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disconnect()


ON_FAULT = ("fallback", "stop")


@dataclass
class WatchdogConfig:
    """Limits that turn into a fallback command. None picks a default from the control period:
    observations older than 2 periods, inference longer than half a period, and a tick may start
    up to 10% of a period late (OS sleep jitter) before it counts as a deadline miss.
    Use math.inf to switch a check off."""

    max_observation_age: float | None = None
    max_inference_time: float | None = None
    late_tolerance: float | None = None
    on_fault: str = "fallback"  # "fallback": send the fallback and go on; "stop": send it, then end the run

    def __post_init__(self) -> None:
        if self.on_fault not in ON_FAULT:
            raise ValueError(f"watchdog.on_fault={self.on_fault!r}: choose one of {', '.join(ON_FAULT)}")
        for name in ("max_observation_age", "max_inference_time", "late_tolerance"):
            value = getattr(self, name)
            if value is not None and not float(value) > 0:
                raise ValueError(f"watchdog.{name}={value!r}: expected seconds > 0 (or null for the default)")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "WatchdogConfig":
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown watchdog key(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


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
        self.runtime, self.robot = runtime, robot
        rate = rate_hz or runtime.rate_hz
        if not rate or not rate > 0:
            raise ValueError(f"rate_hz={rate_hz!r}: give a positive control rate (the sidecar has none)")
        self.rate_hz, self.period = float(rate), 1.0 / float(rate)
        wd = watchdog or WatchdogConfig()
        self.watchdog = wd
        self.max_age = wd.max_observation_age if wd.max_observation_age is not None else 2 * self.period
        self.max_inference = wd.max_inference_time if wd.max_inference_time is not None else 0.5 * self.period
        self.late_tolerance = wd.late_tolerance if wd.late_tolerance is not None else 0.1 * self.period
        self.realtime, self.clock, self.sleep, self.max_events = realtime, clock, sleep, max_events
        self.filters = self._build_filters(filters)
        self.events: list[dict[str, Any]] = []

    def _build_filters(self, filters: Any) -> Any:
        if filters is not None and not isinstance(filters, (list, tuple)):
            return filters  # an already-built chain: chain(action[B, A], obs[B, O]) -> (action, report)
        spec = list(filters) if filters is not None else self.runtime.sidecar.get("safety", {}).get("filters")
        try:
            from sim2real.filters import build_chain
        except ImportError:
            if spec:
                raise
            return None  # nothing asked for, nothing to build
        return build_chain(spec, self.runtime.act_dim, self.runtime.obs_dim)

    def _event(self, kind: str, detail: str) -> None:
        self.counts[kind] += 1
        if len(self.events) < self.max_events:
            self.events.append({"step": self.step, "time": self.clock() - self.t0, "kind": kind, "detail": detail})

    def _fallback(self) -> np.ndarray:
        action = np.asarray(self.robot.fallback_action(), np.float64)
        if action.shape != (self.runtime.act_dim,) or not np.isfinite(action).all():
            raise RuntimeError(f"{type(self.robot).__name__}.fallback_action() returned {action!r}: "
                               f"needs {self.runtime.act_dim} finite numbers")
        return action

    def run(self, steps: int | None = None, until: Callable[[], bool] | None = None) -> LoopReport:
        """Run ``steps`` ticks, or until ``until()`` is true, or forever (Ctrl+C stops after a fallback)."""
        self.events, self.counts = [], Counter()
        self.inference, self.loop = _Latency(), _Latency()
        self.step, self.misses, self.skipped, self.fallbacks = 0, 0, 0, 0
        connected_here = not self.robot.is_connected
        if connected_here:
            self.robot.connect()
        interrupted, stop = False, False
        wall0 = time.perf_counter()
        self.t0 = self.clock()
        slot = 0
        try:
            if self.filters is not None:
                self.filters.reset(1)
            self._fallback()  # a robot whose fallback is unusable must fail before the first tick
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

    def _safe_stop(self) -> None:
        """On Ctrl+C or an error: one last fallback command, so the robot is not left on the policy's."""
        try:
            if self.robot.is_connected:
                self.robot.send_action(self._fallback())
        except Exception:  # the original error matters more than a failed last command
            pass

    def _tick(self) -> bool:
        """One control step; returns whether the watchdog had to send the fallback."""
        start = time.perf_counter()
        obs = self.robot.get_observation()
        values = np.asarray(obs.values)
        if (obs.info or {}).get("episode_start") and self.filters is not None:
            self.filters.reset(1)
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
            fresh = values.astype(np.float64)  # the filters get the observation at full precision
            age = self.clock() - obs.timestamp
            if age > self.max_age:
                fault = ("stale_observation", f"observation is {age * 1e3:.1f} ms old (limit {self.max_age * 1e3:.1f} ms)")
            else:
                t = time.perf_counter()
                try:
                    action = self.runtime(checked).astype(np.float64)
                except BadAction as exc:
                    kind = "non_finite_action" if isinstance(exc, NonFiniteAction) else "action_out_of_bounds"
                    fault = (kind, str(exc))
                took = time.perf_counter() - t
                self.inference.add(took)
                if fault is None and took > self.max_inference:
                    fault = ("inference_overrun", f"inference took {took * 1e3:.2f} ms (limit {self.max_inference * 1e3:.2f} ms)")
        if fault is not None:
            self._event(*fault)
            self.fallbacks += 1
            action = self._fallback()
        state = fresh if fault is None or fault[0] in ("inference_overrun", "non_finite_action", "action_out_of_bounds") else None
        self.robot.send_action(self._filter(action, self._filter_obs(state)))
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
        """Safety filters (also on the fallback), then the action bounds as a last guarantee."""
        if self.filters is not None:
            filtered, report = self.filters(action[None], obs[None])
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
            action = filtered
        return np.clip(action, self.runtime.action_low, self.runtime.action_high)
