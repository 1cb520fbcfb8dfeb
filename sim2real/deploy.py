"""``robo-rl deploy``: an export, a robot adapter and the control loop, run and reported as JSON.

The robot today is the MuJoCo sim2sim adapter (``sim2real.robots.MujocoSim2SimRobot``); hardware
plugs in by subclassing ``sim2real.loop.Robot`` and handing it to ``ControlLoop`` directly.
No torch is imported here.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sim2real.loop import ControlLoop, WatchdogConfig, check_rate_hz
from sim2real.robots import MujocoSim2SimRobot, SimulatedClock
from sim2real.runtime import PolicyRuntime

ROBOTS = ("sim2sim",)
SIM2SIM_KEYS = ("timestep", "action_latency", "observation_noise", "physics", "seed", "max_episode_steps")
REPORTED_EVENTS = 200  # the first events in full; the report always has every count


def _fmt(mean: float, std: float | None = None) -> str:
    """A return to 3 significant digits (at least one decimal), as robo-rl's training logs show it: returns of ~1
    (TwoGoals, ContactMaze) read "-0.0" at a fixed decimal. Here without robo_rl: the robot side copies sim2real/ alone."""
    scale = max(abs(float(mean)), abs(float(std or 0.0)))
    digits = 1 if scale == 0.0 or not math.isfinite(scale) else max(1, min(6, 2 - math.floor(math.log10(scale))))
    return f"{mean:.{digits}f}" + (f" +- {std:.{digits}f}" if std is not None else "")


def deploy(export: str, robot: str = "sim2sim", task: str | None = None, episodes: int | None = 5,
           steps: int | None = None, realtime: bool = False, rate_hz: float | None = None,
           safety: list[dict[str, Any]] | None = None, sim2sim: dict[str, Any] | None = None,
           watchdog: dict[str, Any] | None = None, threads: int = 1,
           log: Callable[[str], None] = print, out: str | Path | None = None) -> dict[str, Any]:
    """Run ``export`` on a robot until ``episodes`` episodes finished or ``steps`` ticks ran.

    safety: a filter-chain spec replacing the sidecar's (None keeps the sidecar's). sim2sim: the
    sim robot's settings (see ``SIM2SIM_KEYS``). realtime=False runs as fast as the simulator
    allows on a ``SimulatedClock``, so deadlines and observation ages are judged in simulated time
    and inference time is reported but not enforced (unless ``watchdog`` sets max_inference_time).
    Returns a JSON-able report: episode returns, the loop report and the first events; with ``out``
    it is also written there as JSON (the location is checked before anything runs).
    Every argument is checked before the simulator is built or anything runs: a bad value is a
    ValueError naming the key, never a run that silently does something else.
    """
    if robot not in ROBOTS:
        raise ValueError(f"robot={robot!r}: choose one of {', '.join(ROBOTS)} (for hardware, subclass "
                         "sim2real.loop.Robot and run sim2real.loop.ControlLoop)")
    for key, value in (("episodes", episodes), ("steps", steps)):
        if value is not None and (not _is_int(value) or value < 1):
            raise ValueError(f"{key}={value!r}: must be a whole number >= 1 (or null: "
                             f"{'run steps= control steps instead' if key == 'episodes' else 'run until episodes= finish'})")
    if episodes is None and steps is None:
        raise ValueError("give episodes >= 1 or steps >= 1 (otherwise the run never ends)")
    check_rate_hz(rate_hz, "null for the export's own rate")
    if task is not None and (not isinstance(task, str) or not task.strip()):
        raise ValueError(f"task={task!r}: give a gymnasium id, or null for the export's own task")
    options = {k: v for k, v in dict(sim2sim or {}).items() if v is not None}
    unknown = sorted(set(options) - set(SIM2SIM_KEYS))
    if unknown:
        raise ValueError(f"unknown sim2sim key(s) {unknown}; known: {', '.join(SIM2SIM_KEYS)}")
    dog = {k: v for k, v in dict(watchdog or {}).items() if v is not None}
    if not realtime:
        # In simulated time the simulation waits for the policy: a slow inference delays nothing,
        # so its time is measured and reported but does not trigger the fallback unless asked.
        dog.setdefault("max_inference_time", math.inf)
    watchdog_config = WatchdogConfig.from_dict(dog)  # its values checked now, not after the simulator is built
    runtime = PolicyRuntime(export, threads=threads)
    report_path = check_report_path(out) if out is not None else None  # after the export's own checks
    kwargs = runtime.task_kwargs if task in (None, runtime.task) else {}  # another task: its own defaults
    limit = runtime.sidecar.get("max_episode_steps")  # checked by load_sidecar: a positive int or absent
    if task in (None, runtime.task) and "max_episode_steps" not in options and limit is not None:
        options["max_episode_steps"] = limit  # the time limit the run trained and evaluated with
    task = task or runtime.task
    if not task:
        raise ValueError(f"{runtime.sidecar_path} names no task: pass task=<gymnasium id>")
    control_dt = 1.0 / rate_hz if rate_hz is not None else runtime.dt
    clock: Callable[[], float] = time.monotonic if realtime else SimulatedClock()
    sim = MujocoSim2SimRobot(task, control_dt=control_dt, clock=clock, env_kwargs=kwargs, **options)
    sim.connect()
    try:
        if sim.observation_dim != runtime.obs_dim or sim.action_dim != runtime.act_dim:
            raise ValueError(f"task {task} has observation/action dims {sim.observation_dim}/{sim.action_dim}, the export "
                             f"{runtime.obs_dim}/{runtime.act_dim}: pass the task the policy was trained on")
        loop = ControlLoop(runtime, sim, filters=safety, rate_hz=1.0 / sim.dt, watchdog=watchdog_config,
                           realtime=realtime, clock=clock)
        on = task + (f" {kwargs}" if kwargs else "")
        log(f"deploy {runtime.model_path} on {on} (sim2sim: {options or 'as trained'}) at {loop.rate_hz:.1f} Hz, "
            f"{'real time' if realtime else 'simulated time'}, "
            f"{'until ' + str(episodes) + ' episodes' if episodes else str(steps) + ' steps'}")
        seen = 0

        def done() -> bool:  # also reports each finished episode as it lands
            nonlocal seen
            while seen < len(sim.episode_returns):
                log(f"episode {seen + 1}: return {_fmt(sim.episode_returns[seen])}, length {sim.episode_lengths[seen]}")
                seen += 1
            return bool(episodes) and seen >= episodes

        report = loop.run(steps=steps, until=done)
        done()
    finally:
        sim.disconnect()
    returns = np.asarray(sim.episode_returns, np.float64)
    summary = report.to_dict()
    lat = summary["latency"]["inference_ms"]
    finished = (f"return {_fmt(returns.mean(), returns.std())}" if returns.size
                else "no episode finished (report return_mean: null)")
    log(f"{report.steps} steps, {len(returns)} episode{'s' if len(returns) != 1 else ''}, {finished}; inference p50 {lat['p50'] or 0:.3f} ms, "
        f"p99 {lat['p99'] or 0:.3f} ms; fallbacks {report.fallbacks}, filter interventions "
        f"{report.filter_interventions}, deadline misses {report.deadline_misses}")
    result = {
        "export": str(runtime.sidecar_path.parent), "task": task, "task_kwargs": kwargs, "robot": robot, "sim2sim": options,
        "realtime": realtime, "rate_hz": loop.rate_hz,
        "episodes": len(returns), "episode_returns": returns.tolist(), "episode_lengths": list(sim.episode_lengths),
        "return_mean": float(returns.mean()) if returns.size else None,
        "return_std": float(returns.std()) if returns.size else None,
        "loop": summary, "events": loop.events[:REPORTED_EVENTS],
    }
    if report_path is not None:
        report_path.write_text(json.dumps(result, indent=2, default=float))
    return result


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_report_path(out: str | Path, key: str = "out") -> Path:
    """``out`` as a Path if a report file can be written there, else a ValueError naming ``key``.

    Checked before a run, so that a run is never lost to an unwritable report location: the path
    must not be a directory, its directory must exist (nothing is created) and be writable, and an
    existing file must be writable.
    """
    path = Path(out)
    if not str(out).strip():
        raise ValueError(f"{key}={out!r}: give a file path for the report, or null for <export>/deploy.json")
    if path.is_dir():
        raise ValueError(f"{key}={out}: is a directory; give a file path such as {path / 'deploy.json'}")
    parent = path.parent
    if not parent.exists():
        above = next((p for p in parent.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise ValueError(f"{key}={out}: {above} is a file, not a directory; choose another report path")
        raise ValueError(f"{key}={out}: directory {parent} does not exist; create it or choose another report path")
    if not parent.is_dir():
        raise ValueError(f"{key}={out}: {parent} is a file, not a directory; choose another report path")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{key}={out}: {path} is not writable; choose another report path")
    if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{key}={out}: directory {parent} is not writable; choose another report path")
    return path
