"""The `robo-rl` command: dispatches to robo_rl/commands/ (train, eval, export, deploy, compare)."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Sequence

from robo_rl.commands.common import EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE, error

# command -> (module under robo_rl/commands, its entry point); imported when run, so `robo-rl --help` stays quick
COMMANDS = {
    "train": ("train", "train_main"),
    "eval": ("evaluate", "eval_main"),
    "export": ("export", "export_main"),
    "deploy": ("export", "deploy_main"),
    "compare": ("compare", "compare_main"),
}
# the commands that build or step MuJoCo models (compare reads run files)
SIMULATE = ("train", "eval", "export", "deploy")

TOP_HELP = """\
usage: robo-rl <command> [key=value ...]

robo-rl: continuous-control reinforcement learning (SAC, TD3, PPO) on batched MuJoCo, with
expressive policy heads (policy=diffusion|flow|mixture|latent) trained online (algo=gorl|expo|parl).
Simulator backends: env.backend=mujoco (batched, bit-identical to gymnasium), gymnasium (any id),
mjwarp (MuJoCo Warp, GPU), isaac (Isaac Lab / rsl_rl-style envs); auto picks mujoco where it can.

commands:
  train   train a policy; every option is a Hydra override
            robo-rl train                          PPO on Hopper-v5, 1M steps (minutes on 2 cores)
            robo-rl train algo=ppo env=halfcheetah steps=1000000 seed=3 run_dir=runs/hc
            robo-rl train env.id=Walker2d-v5       any gymnasium task id
            robo-rl train -m seed=0,1,2            several seeds (Hydra multirun)
            robo-rl train algo=expo policy=flow    a flow-matching head with EXPO's edit policy
            robo-rl train resume=runs/hc           continue from the newest complete checkpoint
  eval    evaluate a trained run and write <run_dir>/eval.json
            robo-rl eval run_dir=runs/hc [episodes=10] [deterministic=true] [video=true]
  export  write the run's policy as ONNX (or TorchScript) + a JSON sidecar, checked against torch
            robo-rl export run_dir=runs/hc [format=onnx] [out_dir=runs/hc/export] [safety=box]
  deploy  run an export with onnxruntime (no torch) in a fixed-rate loop with safety filters and a
          watchdog, on the MuJoCo sim2sim robot (other timestep, latency, noise, physics)
            robo-rl deploy export=runs/hc/export [episodes=5] [sim2sim.action_latency=1]
  compare finished runs side by side (seeds grouped): final/best eval return mean ± std, a plot
            robo-rl compare runs=runs/sweep-ppo-Hopper-v5-<time>   (a -m sweep; or runs=a,b,c)

Run `robo-rl <command> --help` for every option.
"""


def main(argv: Sequence[str] | None = None) -> int:
    from robo_rl.runners.stopping import StopOnSignal, Terminated, raise_terminated

    args = list(sys.argv[1:] if argv is None else argv)
    StopOnSignal.received = None  # an earlier run in this process (a notebook's, a test's) got one: not this command's
    previous = None
    if args[:1] == ["train"]:  # a SIGTERM while it starts (torch's import, Hydra) ended it silently, -15; the
        try:  # training job installs its own handlers (which save), and puts this one back
            previous = signal.signal(signal.SIGTERM, raise_terminated)
        except ValueError:  # not the main thread: signals stay as they are
            pass
    try:
        return _main(args)
    except Terminated:
        return error("stopped by SIGTERM outside the training loop; nothing was training", EXIT_SIGTERM)
    except KeyboardInterrupt:  # a Ctrl-C in the seconds before a command handles its own (torch's import): nothing
        # of the command was done; it printed a traceback of whichever import it landed in
        return error("aborted by Ctrl-C", EXIT_SIGINT)
    except BrokenPipeError:
        if not _stdout_reader_gone():  # a pipe of the task's or the robot's: an error like any other
            raise
        # output piped into a reader that stopped early (`robo-rl train --help | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return 128 + signal.SIGPIPE
    finally:
        if argv is None:  # the robo-rl process, which only exits now: a Ctrl-C or SIGTERM from here on (a repeated one,
            # a terminal's to the whole process group) killed it in the interpreter's shutdown, exit -2/-15 instead of
            # the command's code, after a run that had saved its checkpoint or completed
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
        elif previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stdout_reader_gone() -> bool:
    """True when stdout is a pipe whose reading end is closed (poll reports an error on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), stdout closed or replaced
        return False


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # a command is required: one line, exit 2 (as `robo-rl train --nosuchflag`)
        return error("no command given: robo-rl train|eval|export|deploy|compare [key=value ...] "
                     "(see robo-rl --help)", EXIT_USAGE)
    if argv[0] in ("-h", "--help", "help"):
        print(TOP_HELP)
        return 0
    command, rest = argv[0], argv[1:]
    from robo_rl.perf import tune_malloc

    if command in SIMULATE and not any(a in ("-h", "--help") for a in rest):  # a help text, compare: no MuJoCo
        code = _setup_mujoco(command)
        if code is not None:
            return code
    tune_malloc()
    if command in COMMANDS:
        import logging

        from robo_rl.metrics import setup_console_logging

        # every command's warnings on stderr as "robo-rl: warning: ..." (train also shows its progress: INFO); eval's
        # and export's ("skipping step_X: ...") went to Python's last-resort handler, bare
        setup_console_logging(logging.WARNING)
        module, entry = COMMANDS[command]
        return getattr(importlib.import_module(f"robo_rl.commands.{module}"), entry)(rest)
    if command in ("--version", "version"):
        from importlib.metadata import version

        print(f"robo-rl {version('robo-rl')}")
        return 0
    return error(f"unknown command {command!r} (expected train, eval, export, deploy or compare; see robo-rl --help)",
                 EXIT_USAGE)


def _setup_mujoco(command: str) -> int | None:
    """Headless rendering and MuJoCo's warnings routed to the log, before anything imports MuJoCo (~0.5 s with
    gymnasium, which the envs package registers tasks with); an exit code if MuJoCo refuses to import."""
    try:
        from envs.mujoco_log import route_mujoco_warnings  # (importing the envs package does not import torch)
        from envs.rendering import headless_gl_default
    except ImportError:
        if command != "deploy":
            raise
        # a robot computer without torch (README: set up): deploy needs numpy and onnxruntime only; MuJoCo's
        # warnings then go where MuJoCo sends them
    else:
        headless_gl_default()  # before anything imports MuJoCo
        try:
            route_mujoco_warnings()  # the first import of MuJoCo
        except RuntimeError as exc:  # MuJoCo refuses to import with an unknown MUJOCO_GL
            if "MUJOCO_GL" not in str(exc):
                raise
            return error(f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}: MuJoCo does not know this platform ({exc}); set egl "
                         "or osmesa (headless), glfw or glx (with a display), or unset it", EXIT_USAGE)
    return None


if __name__ == "__main__":
    # (SIGPIPE keeps Python's default, ignored: a pipe to a dead env worker is then a BrokenPipeError the run handles,
    # not a silent death; main() handles a closed stdout as the robo-rl script does)
    sys.exit(main())
