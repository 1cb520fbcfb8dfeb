"""The `robo-rl` command: `robo-rl train ...` (Hydra) and `robo-rl eval ...`."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Sequence

TOP_HELP = """\
usage: robo-rl <command> [key=value ...]

robo-rl: continuous-control reinforcement learning (SAC, TD3, PPO) on batched MuJoCo.
Simulator backends: env.backend=mujoco (batched, bit-identical to gymnasium), gymnasium (any id),
mjwarp (MuJoCo Warp, GPU), isaac (Isaac Lab / rsl_rl-style envs); auto picks mujoco where it can.

commands:
  train   train a policy; every option is a Hydra override
            robo-rl train                                   PPO on Hopper-v5, 1M steps (a few minutes on 2 cores)
            robo-rl train algo=ppo env=halfcheetah steps=1000000 seed=3 run_dir=runs/hc
            robo-rl train env.id=Walker2d-v5                any gymnasium task id
            robo-rl train -m seed=0,1,2                     several seeds (Hydra multirun)
            robo-rl train resume=runs/hc                    continue from the newest complete checkpoint
  eval    evaluate a trained run and write <run_dir>/eval.json
            robo-rl eval run_dir=runs/hc [episodes=10] [deterministic=true] [video=true]

Run `robo-rl train --help` or `robo-rl eval --help` for every option.
"""

EVAL_HELP = """\
usage: robo-rl eval run_dir=<dir> [key=value ...]

Evaluate a trained run's policy on its task and write <run_dir>/eval.json.

keys:
  run_dir=<dir>          the run directory (required)
  episodes=10            number of complete episodes
  deterministic=true     act with the policy's deterministic action (false: sample)
  num_envs=5             env copies stepped together
  seed=12345             seed of the evaluation envs
  checkpoint=<dir>       a specific checkpoint directory (default: the newest complete one)
  device=cpu             cpu or cuda
  video=false            also write <run_dir>/videos/eval-step<N>.mp4 (headless: EGL or OSMesa)
  video_episodes=1       episodes of env copy 0 in the video
"""

log = logging.getLogger("robo_rl")

# exit codes: 1 training failed (NaN), 2 bad configuration or input, 128+signal interrupted
EXIT_FAILED, EXIT_USAGE = 1, 2


def _error(message: str, code: int) -> int:
    print(f"robo-rl: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(TOP_HELP)
        return 0
    command, rest = argv[0], argv[1:]
    from envs.rendering import headless_gl_default
    from robo_rl.perf import tune_malloc

    headless_gl_default()  # before anything imports MuJoCo
    tune_malloc()
    if command == "train":
        return train_main(rest)
    if command == "eval":
        return eval_main(rest)
    if command in ("--version", "version"):
        from importlib.metadata import version

        print(f"robo-rl {version('robo-rl')}")
        return 0
    print(TOP_HELP, file=sys.stderr)
    return _error(f"unknown command {command!r} (expected train or eval)", EXIT_USAGE)


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    def run_dir(given, resume, algo, env_id, seed, now):  # type: ignore[no-untyped-def]
        if given not in (None, "", "None"):
            return str(given)
        if resume not in (None, "", "None"):
            return str(resume)
        return f"runs/{algo}-{env_id}-s{seed}-{now}"

    def sweep_dir(given, algo, env_id, now):  # type: ignore[no-untyped-def]
        return str(given) if given not in (None, "", "None") else f"runs/sweep-{algo}-{env_id}-{now}"

    def sweep_subdir(task_overrides, job_num):  # type: ignore[no-untyped-def]
        # name a multirun job by the keys that are swept (seed=0,1,2 -> "seed=1"), not by every override
        swept = {a.split("=", 1)[0] for a in sys.argv[1:] if "=" in a and _is_sweep(a.split("=", 1)[1])}
        parts = [o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") in swept]
        return ",".join(parts) if parts else f"job{job_num}"

    OmegaConf.register_new_resolver("robo_rl_run_dir", run_dir, replace=True)
    OmegaConf.register_new_resolver("robo_rl_sweep_dir", sweep_dir, replace=True)
    OmegaConf.register_new_resolver("robo_rl_sweep_subdir", sweep_subdir, replace=True)


def _is_sweep(value: str) -> bool:
    """Whether a command-line value is a Hydra sweep (a,b / range(...) / choice(...) / glob(...))."""
    if value.startswith(("range(", "choice(", "glob(", "interval(")):
        return True
    depth = 0
    for ch in value:
        depth += ch in "[{(" and 1 or 0
        depth -= ch in "]})" and 1 or 0
        if ch == "," and depth == 0:
            return True
    return False


def train_main(args: Sequence[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from robo_rl.config import register_schemas

    register_schemas()
    _register_resolvers()
    config_dir = str(Path(__file__).resolve().parent / "configs")
    exit_code = 0

    @hydra.main(version_base=None, config_path=config_dir, config_name="config")
    def _run(cfg: DictConfig) -> None:
        nonlocal exit_code
        hc = HydraConfig.get()
        run_dir = Path(hc.runtime.output_dir)
        exit_code = run_training(cfg, run_dir, list(hc.overrides.task))
        if exit_code and hc.mode.name == "RUN":
            raise SystemExit(exit_code)

    sys.argv = ["robo-rl train", *args]
    _run()
    return exit_code


def run_training(cfg, run_dir: Path, overrides: list[str]) -> int:  # type: ignore[no-untyped-def]
    """Run one training job, turning known failures into a message and an exit code."""
    from robo_rl.checkpoint import CheckpointError
    from robo_rl.config import ConfigError
    from robo_rl.runners.base import Interrupted, NonFiniteError
    from robo_rl.train import train

    existed = run_dir.exists() and any(run_dir.iterdir())
    try:
        train(cfg, run_dir, overrides)
        return 0
    except Interrupted as exc:
        log.info(str(exc))
        return 128 + exc.signum
    except NonFiniteError as exc:
        return _error(str(exc), EXIT_FAILED)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        if not existed and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # Hydra made it before the config was checked; leave nothing behind
        return _error(str(exc), EXIT_USAGE)


def eval_main(args: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(EVAL_HELP)
        return 0
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from robo_rl.config import EvalCommandConfig

    bad = [a for a in args if "=" not in a]
    if bad:
        return _error(f"expected key=value arguments, got {' '.join(bad)} (see robo-rl eval --help)", EXIT_USAGE)
    try:
        opts = OmegaConf.merge(OmegaConf.structured(EvalCommandConfig), OmegaConf.from_dotlist(list(args)))
        run_dir = Path(opts.run_dir)
    except OmegaConfBaseException as exc:
        return _error(f"{str(exc).splitlines()[0]} (see robo-rl eval --help)", EXIT_USAGE)
    if opts.episodes < 1 or opts.num_envs < 1 or opts.video_episodes < 1:
        return _error("episodes, num_envs and video_episodes must be >= 1", EXIT_USAGE)
    try:
        result = evaluate_run(run_dir, opts)
    except Exception as exc:
        from robo_rl.checkpoint import CheckpointError

        if isinstance(exc, (CheckpointError, FileNotFoundError, ValueError)):
            return _error(str(exc), EXIT_USAGE)
        raise
    print(
        f"{result['algo']} on {result['env']} (checkpoint step {result['checkpoint_step']:,}): "
        f"return {result['return_mean']:.1f} ± {result['return_std']:.1f} over {result['episodes']} episodes "
        f"({'deterministic' if result['deterministic'] else 'stochastic'}); wrote {run_dir / 'eval.json'}"
        + (f" and {result['video']} ({result['video_frames']} frames)" if "video" in result else "")
    )
    return 0


def evaluate_run(run_dir: Path, opts) -> dict:  # type: ignore[no-untyped-def]
    from omegaconf import open_dict

    from robo_rl.build import build_env
    from robo_rl.checkpoint import verify_checkpoint
    from robo_rl.evaluation import evaluate
    from robo_rl.runs import load_policy, load_run_config, resolve_checkpoint

    cfg = load_run_config(run_dir)
    with open_dict(cfg):
        cfg.device = opts.device
    ckpt = resolve_checkpoint(run_dir, opts.checkpoint)
    manifest = verify_checkpoint(ckpt)
    env = build_env(cfg, num_envs=min(int(opts.num_envs), int(opts.episodes)), vectorization="sync", randomize=False,
                    render=bool(opts.video))
    try:
        policy = load_policy(cfg, env, ckpt, opts.device)
        result = evaluate(policy, env, int(opts.episodes), bool(opts.deterministic), seed=int(opts.seed),
                          record_episodes=int(opts.video_episodes) if opts.video else 0)
    finally:
        env.close()
    if opts.video:
        from envs.rendering import write_mp4

        path = (run_dir / "videos" / f"eval-step{int(manifest['step'])}.mp4").resolve()
        frames = result.pop("frames")
        result["video"] = str(path)
        result["video_frames"] = write_mp4(path, frames, fps=1.0 / env.dt if env.dt else 30.0)
    result.update(
        algo=cfg.algo.name, env=env.task_id, run_dir=str(run_dir), checkpoint=str(ckpt),
        checkpoint_step=int(manifest["step"]), seed=int(opts.seed),
    )
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
