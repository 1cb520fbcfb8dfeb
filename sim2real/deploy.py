"""``robo-rl deploy``: an export, a robot adapter and the control loop, run and reported as JSON.

The robot today is the MuJoCo sim2sim adapter (``sim2real.robots.MujocoSim2SimRobot``); hardware
plugs in by subclassing ``sim2real.loop.Robot`` and handing it to ``ControlLoop`` directly.
No torch is imported here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
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
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def deploy(export: str, robot: str = "sim2sim", task: str | None = None, episodes: int | None = None,
           steps: int | None = None, realtime: bool = False, rate_hz: float | None = None,
           safety: list[dict[str, Any]] | None = None, sim2sim: dict[str, Any] | None = None,
           watchdog: dict[str, Any] | None = None, threads: int = 1,
           log: Callable[[str], None] = print, out: str | Path | None = None) -> dict[str, Any]:
    """Run ``export`` on a robot until ``episodes`` episodes finished or ``steps`` ticks ran (whichever comes
    first when both are given; neither: 5 episodes, as `robo-rl deploy`).

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
        episodes = 5  # as `robo-rl deploy`: steps= alone runs that many steps, not at most 5 episodes of them
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
    noise = options.get("observation_noise")
    if isinstance(noise, (list, tuple, np.ndarray)) and len(noise) != runtime.obs_dim:  # the task has the export's dims
        raise ValueError(f"sim2sim.observation_noise has {len(noise)} values; the export's observations have "
                         f"{runtime.obs_dim} (give one std, or one per observation dimension)")
    if report_path is not None:  # the report written over policy.json or the model would destroy the export it ran
        for own in (runtime.sidecar_path, runtime.model_path):
            if report_path.resolve() == own.resolve():
                raise ValueError(f"out={out}: that is the export's own {own.name}, which the report would replace; "
                                 f"choose another report path, e.g. {own.parent / 'deploy.json'}")
    if safety is not None:
        from sim2real.filters.spec import plain

        # an OmegaConf container (a run's cfg.safety.filters), as plain lists and dicts, as build_chain reads it: a
        # DictConfig {filters: [...]} was reported as filters ['filters'], a ListConfig's report failed after the run
        safety = plain(safety)
    chain = safety.get("filters") if isinstance(safety, dict) else safety  # ControlLoop also takes {filters: [...]}
    filters_run = chain if safety is not None else runtime.sidecar.get("safety", {}).get("filters")
    kwargs = runtime.task_kwargs if task in (None, runtime.task) else {}  # another task: its own defaults
    limit = runtime.sidecar.get("max_episode_steps")  # checked by load_sidecar: a positive int or absent
    if task in (None, runtime.task) and "max_episode_steps" not in options and limit is not None:
        options["max_episode_steps"] = limit  # the time limit the run trained and evaluated with
    task = task or runtime.task
    if not task:
        raise ValueError(f"{runtime.sidecar_path} names no task: pass task=<gymnasium id>")
    control_dt = 1.0 / rate_hz if rate_hz is not None else runtime.dt
    spec = safety if safety is not None else filters_run
    built = None
    if spec or safety is not None:  # built (its dt checked against the control period too) before the simulator,
        # as every other option ({} is refused there: a spec without its filters list)
        from sim2real.filters import build_chain

        built = build_chain(spec, runtime.act_dim, runtime.obs_dim, control_dt)
    clock: Callable[[], float] = time.monotonic if realtime else SimulatedClock()

    def check_task(env: Any) -> None:  # the policy fits the task: judged before the task's timing or latency
        obs_dim, act_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
        if obs_dim != runtime.obs_dim or act_dim != runtime.act_dim:
            raise ValueError(f"task {task} has observation/action dims {obs_dim}/{act_dim}, the export "
                             f"{runtime.obs_dim}/{runtime.act_dim}: pass the task the policy was trained on")
        check_action_bounds(runtime, env.action_space, task)

    # the run's safety.cost_key on its own task (exports before 2026-12-08 hold none: "cost", the default)
    cost_key = runtime.sidecar.get("cost_key", "cost") if task == runtime.task else "cost"
    sim = MujocoSim2SimRobot(task, control_dt=control_dt, clock=clock, env_kwargs=kwargs, check_task=check_task,
                             cost_key=cost_key, **options)
    from sim2real.filters.energy_tank import guarantee_void

    ranges = sim.physics_ranges  # as training warns of a randomized plant (the settings checked by now)
    for line in guarantee_void(spec, "sim2sim plant", latency=("sim2sim.action_latency", sim.action_latency),
                               damping=("sim2sim.physics.damping_scale", ranges["damping_scale"])
                               if "damping_scale" in ranges else None,
                               gain=("sim2sim.physics.actuator_gain_scale", ranges["actuator_gain_scale"])
                               if "actuator_gain_scale" in ranges else None,
                               obs_noise=("sim2sim.observation_noise", sim.observation_noise)):
        logging.getLogger("robo_rl").warning(line)
    sim.connect()
    try:
        if not sim.dt:  # the loop runs at 1 / dt
            raise ValueError(f"{task} does not say how long one of its steps lasts (its env has no dt, and the export "
                             "no control rate): give the rate it runs at, rate_hz=<Hz>")
        loop = ControlLoop(runtime, sim, filters=built if built is not None else safety, rate_hz=1.0 / sim.dt,
                           watchdog=watchdog_config, realtime=realtime, clock=clock)
        on = task + (f" {kwargs}" if kwargs else "")
        export_rate = runtime.rate_hz
        other_rate = (f" (the export's rate is {export_rate:g} Hz: each command lasts {1e3 * sim.dt:g} ms instead of "
                      f"{1e3 / export_rate:g} ms)") if export_rate and not math.isclose(loop.rate_hz, export_rate, rel_tol=1e-6) else ""
        settings = ", ".join(f"{key}={value}" for key, value in options.items()) or "as trained"
        until = (f"until {episodes} episode{'s' if episodes != 1 else ''}" if episodes else
                 f"{steps} step{'s' if steps != 1 else ''}")
        log(f"deploy {runtime.model_path} on {on} (sim2sim: {settings}) at {loop.rate_hz:.1f} Hz{other_rate}, "
            f"{'real time' if realtime else 'simulated time'}, {until}")
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
    # a task reporting a cost (info[cost_key]: ContactMaze's energy injection), as robo-rl eval reports it
    costs = list(sim.episode_costs) if any(c is not None for c in sim.episode_costs) else None
    reported = [c for c in costs or [] if c is not None]
    if reported:
        finished += f", cost {np.mean(reported):.3g} per episode"
    log(f"{report.steps} steps, {len(returns)} episode{'s' if len(returns) != 1 else ''}, {finished}; inference p50 {lat['p50'] or 0:.3f} ms, "
        f"p99 {lat['p99'] or 0:.3f} ms; fallbacks {report.fallbacks}, filter interventions "
        f"{report.filter_interventions}, deadline misses {report.deadline_misses}")
    result = {
        "export": str(runtime.sidecar_path.parent), "task": task, "task_kwargs": kwargs, "robot": robot, "sim2sim": options,
        "realtime": realtime, "rate_hz": loop.rate_hz, "export_rate_hz": runtime.rate_hz,
        # what guarded the commands: the filter chain that ran (the sidecar's unless safety= replaced it) and the
        # watchdog's limits in seconds, so a report says which run it describes
        "safety": {"source": "sidecar" if safety is None else "safety=", "filters": list(filters_run or [])},
        "watchdog": {**{key: (float(value) if math.isfinite(value) else None)  # null: that check was off (inf)
                        for key, value in (("max_observation_age", loop.max_age), ("max_inference_time", loop.max_inference),
                                           ("late_tolerance", loop.late_tolerance), ("max_clock_skew", loop.max_skew))},
                     "on_fault": loop.watchdog.on_fault},
        "episodes": len(returns), "episode_returns": returns.tolist(), "episode_lengths": list(sim.episode_lengths),
        "return_mean": float(returns.mean()) if returns.size else None,
        "return_std": float(returns.std()) if returns.size else None,
        **({"costs": costs, "cost_mean": float(np.mean(reported)) if reported else None} if costs is not None else {}),
        "loop": summary, "events": loop.events[:REPORTED_EVENTS],
    }
    if report_path is not None:
        write_report(report_path, json.dumps(result, indent=2, default=float))
    return result


def check_action_bounds(runtime: PolicyRuntime, space: Any, task: str) -> None:
    """Refuse a task whose action bounds are not the export's: the policy scales its output to the export's bounds
    (and the loop clips to them), so on other bounds every command would mean another force or position."""
    low = np.asarray(space.low, np.float64).reshape(-1)
    high = np.asarray(space.high, np.float64).reshape(-1)
    want_low, want_high = runtime.action_low.astype(np.float64), runtime.action_high.astype(np.float64)
    # float32 rounding only (the sidecar holds the bounds the policy was built with, as float32)
    same = (low.shape == want_low.shape and np.allclose(low, want_low, rtol=1e-6, atol=1e-6)
            and np.allclose(high, want_high, rtol=1e-6, atol=1e-6))
    if not same:
        bad = np.flatnonzero(~(np.isclose(low, want_low, rtol=1e-6, atol=1e-6) & np.isclose(high, want_high, rtol=1e-6,
                                                                                              atol=1e-6)))
        i = int(bad[0]) if bad.size else 0
        raise ValueError(f"task {task} acts within [{low[i]:g}, {high[i]:g}] in action dimension {i} (of {bad.size} that "
                         f"differ), the export within [{want_low[i]:g}, {want_high[i]:g}] ({runtime.sidecar_path} action.low/"
                         "high): the policy's commands are scaled to its own bounds; pass the task the policy was trained on")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


class ReportWriteError(RuntimeError):
    """The deploy report could not be written after the run (a full disk); the run's result was logged."""


def write_report(path: Path, text: str) -> None:
    """Write the report through a hidden file renamed over ``path``: a write that fails (a full disk) keeps the
    report there before, where writing in place cut it to invalid JSON."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".deploy-", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as a file written in place (mkstemp's is the owner's alone)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ReportWriteError(f"out={path}: the report could not be written ({exc.strerror or exc}); a report there "
                               "before is kept") from None


def check_report_path(out: str | Path, key: str = "out") -> Path:
    """``out`` as a Path if a report file can be written there, else a ValueError naming ``key``.

    Checked before a run, so that a run is never lost to an unwritable report location: the path
    must not be a directory, its directory must exist (nothing is created) and be writable, and an
    existing file must be writable.
    """
    path = Path(out)
    if not str(out).strip():
        raise ValueError(f"{key}={out!r}: give a file path for the report, or null for <export>/deploy.json")
    try:
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
        # opened as the report will be (permission bits say nothing to root, nor of /proc or a read-only mount);
        # appending truncates nothing, and a file made here is removed again
        existed = path.exists()
        with open(path, "a"):
            pass
        if not existed:
            path.unlink()
        with tempfile.TemporaryFile(dir=parent):  # the hidden file the report is written through
            pass
    except OSError as exc:  # a name too long, a read-only or virtual file system, permissions
        raise ValueError(f"{key}={out}: a report cannot be written there ({exc.strerror or exc}); choose another "
                         "report path") from None
    return path
