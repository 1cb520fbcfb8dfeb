"""`robo-rl export` (a run's policy as ONNX/TorchScript + sidecar) and `robo-rl deploy` (an export in the
torch-free runtime on the sim2sim robot)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from robo_rl.commands.common import EXIT_FAILED, EXIT_USAGE, error, parse_options

EXPORT_HELP = """\
usage: robo-rl export run_dir=<dir> [key=value ...]

Export a trained run's acting policy (any head; EXPO/PA-RL export the critic's choice among their
candidates) as one self-contained file plus <out_dir>/policy.json (spaces, bounds, control rate,
normalizer, safety filters, sha256). The graph includes observation normalization and, for
diffusion/flow heads, the configured sampling steps unrolled with the initial noise as an input.
Before anything is written the file is checked (onnx.checker) and compared with the torch policy
on real and random observations, in one batch and at batch 1 (max abs difference <= 1e-5 per action
dimension, times its half-range where that exceeds 1). An export in out_dir is replaced (with its
model file, if it was in the other format).

keys:
  run_dir=<dir>          the run directory (required)
  format=onnx            onnx or torchscript
  out_dir=<dir>          where to write (default <run_dir>/export)
  checkpoint=<dir>       a specific checkpoint directory, or its name in the run's checkpoints/
                         (step_0000024000); default: the newest complete one
  safety=<name|path>     filter chain stored in the sidecar: configs/safety/<name>.yaml or a YAML
                         file with a 'filters:' list (default: the run's own safety.filters)
"""


DEPLOY_HELP = """\
usage: robo-rl deploy export=<dir> [key=value ...]

Run an exported ONNX policy with onnxruntime (one CPU thread, no torch) in a fixed-rate control loop
with absolute deadlines, the sidecar's safety filters and a watchdog (stale observation, inference
overrun, non-finite values -> fallback command and a logged event). The robot is the MuJoCo
sim2sim adapter: the task simulated with another timestep, action latency, sensor noise and
randomized physics. Writes <export>/deploy.json (returns, events, latency percentiles).

keys:
  export=<dir>                     the export directory (policy.onnx + policy.json; required)
  episodes=null                    finished episodes to run (5 when steps= is not given)
  steps=null                       a fixed number of control steps (with episodes=: whichever
                                   comes first)
  realtime=false                   true: sleep to the control rate (a real robot); false: as fast
                                   as possible
  rate_hz=null                     control rate in Hz, 0.001 to 1e6 (default: the sidecar's)
  safety=null                      filter chain: configs/safety/<name>.yaml or a YAML path
                                   (default: the sidecar's)
  task=null                        the gymnasium id to simulate (default: the sidecar's task)
  sim2sim.timestep=null            physics timestep (the control period is kept: frame_skip adapts)
  sim2sim.action_latency=0         control steps between computing and applying a command
  sim2sim.observation_noise=0.0    std of Gaussian noise added to observations
  sim2sim.physics=null             [low, high] scale ranges drawn at every reset: mass_scale,
                                   friction_scale, damping_scale, actuator_gain_scale, e.g.
                                   "{mass_scale:[0.8,1.2],friction_scale:[0.7,1.3]}"
  sim2sim.max_episode_steps=null   episode time limit (default: the run's env.max_episode_steps,
                                   else the task's)
  sim2sim.seed=0                   seed of the sim2sim robot (resets, noise, randomized physics)
  watchdog.max_observation_age=null
                                   seconds before an observation counts as stale (default 2 periods)
  watchdog.max_inference_time=null
                                   seconds of inference before the fallback is sent instead (null:
                                   half a period with realtime=true, no limit in simulated time; a
                                   value given is enforced in both)
  out=null                         report path (default <export>/deploy.json); its directory must
                                   exist
"""



@dataclass
class ExportCommandConfig:
    run_dir: str = "???"
    format: str = "onnx"
    out_dir: Optional[str] = None
    checkpoint: Optional[str] = None
    safety: Optional[str] = None



@dataclass
class Sim2SimOptions:
    timestep: Optional[float] = None
    action_latency: int = 0
    observation_noise: float = 0.0
    physics: Any = None  # checked by sim2real.robots (the message names the key and the accepted form)
    seed: int = 0
    max_episode_steps: Optional[int] = None  # default: the run's (sidecar), else the task's registration



@dataclass
class WatchdogOptions:
    max_observation_age: Optional[float] = None
    max_inference_time: Optional[float] = None



@dataclass
class DeployCommandConfig:
    export: str = "???"
    episodes: Optional[int] = None  # 5 unless steps= is given
    steps: Optional[int] = None
    realtime: bool = False
    rate_hz: Optional[float] = None
    safety: Optional[str] = None
    task: Optional[str] = None
    sim2sim: Sim2SimOptions = field(default_factory=Sim2SimOptions)
    watchdog: WatchdogOptions = field(default_factory=WatchdogOptions)
    out: Optional[str] = None


def export_main(args: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(EXPORT_HELP)
        return 0
    from envs.base import MissingDependency
    from robo_rl.checkpoint import CheckpointError

    try:
        opts = parse_options(args, ExportCommandConfig, "export")
        from robo_rl.exporting import export_run
        from sim2real.export import check_out_dir

        if opts.out_dir is not None:
            check_out_dir(opts.out_dir)  # before the run is loaded (export_policy checks the default too)
        sidecar = export_run(opts.run_dir, opts.out_dir, opts.format, opts.checkpoint, opts.safety)
    except (CheckpointError, FileNotFoundError, ValueError, RuntimeError, MissingDependency) as exc:
        return error(str(exc), EXIT_USAGE)
    except OSError as exc:  # writing the export failed (a full disk): the export there before is kept
        where = f" ({exc.filename})" if exc.filename else ""
        return error(f"could not write the export{where}: {exc.strerror or exc}; an export already there is kept",
                     EXIT_FAILED)
    except FloatingPointError as exc:  # a NaN policy (a damaged checkpoint) or env: no traceback, as in eval
        return error(str(exc), EXIT_FAILED)
    out = Path(opts.out_dir) if opts.out_dir else Path(opts.run_dir) / "export"
    noise = sidecar["noise"]
    checked = "onnx" if str(sidecar["model_file"]).endswith(".onnx") else "torchscript"
    print(f"exported {sidecar['policy']} policy of {sidecar['algo']} on {sidecar['task']} (step {sidecar['source']['step']:,}) "
          f"to {out / sidecar['model_file']} [{sidecar['exporter']}]; "
          f"inputs obs[{sidecar['observation']['dim']}]" + (f" + noise[{noise['dim']}]" if noise else "")
          + f"; max |{checked} - torch| = {sidecar['checked']['max_abs_error']:.1e} on {sidecar['checked']['observations']} "
          f"observations; {len(sidecar['safety']['filters'])} safety filter(s); sidecar {out / 'policy.json'}")
    return 0


def deploy_main(args: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(DEPLOY_HELP)
        return 0
    from omegaconf import OmegaConf

    from sim2real.deploy import ReportWriteError, deploy

    try:
        opts = parse_options(args, DeployCommandConfig, "deploy")
        safety = None
        if opts.safety is not None:
            from robo_rl.exporting import load_safety_spec

            if opts.safety in ("", "run"):  # export's "the run's own filters" would be none here, not the sidecar's
                raise ValueError(f"safety={opts.safety}: deploy has no run to take filters from; leave safety unset "
                                 "for the sidecar's chain, or give a configs/safety name or a YAML path")
            safety = load_safety_spec(opts.safety)["filters"]
        sim2sim = OmegaConf.to_container(opts.sim2sim, resolve=True)
        export_dir = Path(opts.export).parent if Path(opts.export).is_file() else Path(opts.export)  # (or policy.json)
        out = Path(opts.out) if opts.out else export_dir / "deploy.json"
        deploy(opts.export, episodes=opts.episodes, steps=opts.steps, realtime=bool(opts.realtime),
               rate_hz=opts.rate_hz, safety=safety, task=opts.task, sim2sim=sim2sim,
               watchdog=OmegaConf.to_container(opts.watchdog, resolve=True), out=out)  # out: checked before the run
    except ReportWriteError as exc:  # after the run, whose result was printed
        return error(str(exc), EXIT_FAILED)
    except (OSError, ValueError) as exc:  # ExportError is a ValueError
        return error(str(exc), EXIT_USAGE)
    print(f"wrote {out}")
    return 0
