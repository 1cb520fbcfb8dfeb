"""`robo-rl eval run_dir=...`: a trained run's policy on its task, written to <run_dir>/eval.json."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

from robo_rl.commands.common import EXIT_FAILED, EXIT_USAGE, error, override_key, parse_options
from robo_rl.metrics import format_return, write_text_atomic

log = logging.getLogger("robo_rl")

EVAL_HELP = """\
usage: robo-rl eval run_dir=<dir> [key=value ...]

Evaluate a trained run's policy on its task and write <run_dir>/eval.json: every episode's return
and length, and their mean and population std (divided by the number of episodes, as SB3's
evaluate_policy). The run's safety filters act as in training; a task reporting a cost
(info["cost"]) gets per-episode costs too.

keys:
  run_dir=<dir>          the run directory (required)
  episodes=10            number of complete episodes
  deterministic=true     act with the policy's deterministic action (false: sample)
  num_envs=10            env copies stepped together (at most episodes: one episode each)
  seed=12345             seed of the evaluation envs
  checkpoint=<dir>       one of the run's checkpoint directories, or its name (step_0000024000);
                         default: the newest complete one
  device=cpu             cpu, cuda or cuda:N
  video=false            also write <run_dir>/videos/eval-step<N>.mp4 (headless: EGL or OSMesa)
  video_episodes=1       episodes of env copy 0 in the video
  demos_out=<file.npz>   also save the evaluated episodes' transitions as demonstrations, to
                         warm-start another run with `robo-rl train demos.path=<file.npz>`
                         (e.g. a generative head)
"""


def eval_main(args: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(EVAL_HELP)
        return 0
    from robo_rl.config import EvalCommandConfig

    try:
        opts = parse_options(args, EvalCommandConfig, "eval")
    except ValueError as exc:
        return error(str(exc), EXIT_USAGE)
    run_dir = Path(opts.run_dir)
    for key in ("episodes", "num_envs", "video_episodes"):
        if opts[key] < 1:
            return error(f"{key}={opts[key]}: must be >= 1 (see robo-rl eval --help)", EXIT_USAGE)
    from robo_rl.validation import COUNT_RANGES, MAX_EVAL_SEED

    least, most, what = COUNT_RANGES["eval.episodes"]  # as train's eval.episodes: 1e12 ran until killed
    for key in ("episodes", "video_episodes"):  # video_episodes=1e12 filmed until killed, leaving a broken mp4
        if opts[key] > most:
            return error(f"{key}={opts[key]}: must be between {least} and {most:,} ({what})", EXIT_USAGE)
    if not 0 <= opts.seed <= MAX_EVAL_SEED:  # after loading the run: torch's "Overflow when unpacking long long"
        return error(f"seed={opts.seed}: must be between 0 and 2**64 - 1 (see robo-rl eval --help)", EXIT_USAGE)
    if not opts.video and any(override_key(a) == "video_episodes" for a in args):
        return error(f"video_episodes={opts.video_episodes} has no effect without a video: add video=true to film "
                     "the episodes, or drop video_episodes", EXIT_USAGE)
    if any(override_key(a) == "num_envs" for a in args) and opts.num_envs > opts.episodes:
        log.warning(f"num_envs={opts.num_envs}: an evaluation steps at most one copy per episode, so "
                    f"episodes={opts.episodes} builds {opts.episodes}")
    try:
        result = evaluate_run(run_dir, opts)
    except Exception as exc:
        from envs.base import MissingDependency
        from robo_rl.checkpoint import CheckpointError

        from envs.rendering import RenderingUnavailable

        if isinstance(exc, (CheckpointError, FileNotFoundError, ValueError, MissingDependency)):
            return error(str(exc), EXIT_USAGE)
        if isinstance(exc, RenderingUnavailable):  # video=true on a machine without a usable OpenGL platform
            return error(f"video=true: {exc}", EXIT_FAILED)
        from robo_rl.evaluation import EvaluationNotFinished

        if isinstance(exc, (FloatingPointError, EvalNotSaved, EvaluationNotFinished)):  # NaN obs/action; full disk
            return error(str(exc), EXIT_FAILED)
        raise
    print(
        f"{result['algo']} on {result['env']} (checkpoint step {result['checkpoint_step']:,}): "
        f"return {format_return(result['return_mean'], result['return_std'])} over {result['episodes']} episode{'s' if result['episodes'] != 1 else ''} "
        f"({'deterministic' if result['deterministic'] else 'stochastic'})"
        + (f", {result['cost_key']} {result['cost_mean']:.3g} per episode" if "cost_mean" in result else "")
        + f"; wrote {run_dir / 'eval.json'}"
        + (f" and {result['video']} ({result['video_frames']} frames)" if "video" in result else "")
        + (f"; demonstrations: {result['demos_transitions']:,} transitions in {result['demos_out']}"
           if "demos_out" in result else "")
    )
    return 0


def evaluate_run(run_dir: Path, opts) -> dict:  # type: ignore[no-untyped-def]
    from omegaconf import OmegaConf, open_dict

    from robo_rl.build import build_env
    from robo_rl.checkpoint import verify_checkpoint
    from robo_rl.evaluation import evaluate
    from robo_rl.runners.safety import safety_settings
    from robo_rl.validation import check_device
    from robo_rl.runs import foreign_checkpoint, load_run_config, load_run_policy, resolve_checkpoint

    check_device(opts.device)  # before anything loads: train's validation does the same
    if opts.demos_out is not None:  # not after the whole evaluation
        from robo_rl.demos import check_demos_out

        check_demos_out(opts.demos_out)
    cfg = load_run_config(run_dir)
    _check_writable(run_dir / "eval.json")  # not after the episodes have run
    with open_dict(cfg):
        cfg.device = opts.device
    if opts.video:
        from envs.rendering import require_pyav

        require_pyav()  # before the episodes run, not after
    ckpt = resolve_checkpoint(run_dir, opts.checkpoint)
    if foreign_checkpoint(run_dir, ckpt):  # compare reads eval.json as this run's (refused before it is loaded, which
        # compares its config with run_dir's and would blame the other run's config.yaml for the difference)
        raise ValueError(f"checkpoint={opts.checkpoint} is not one of {run_dir}'s checkpoints "
                         f"({run_dir / 'checkpoints'}/step_...), and its result would go to {run_dir / 'eval.json'} "
                         "as this run's; evaluate it with run_dir=<the run it belongs to>")
    if opts.checkpoint is not None:  # a broken one named before the env is built (the newest was checked in choosing)
        verify_checkpoint(ckpt, replay=False)
    # the run's own filters act here as in its training-time evaluations
    env = build_env(cfg, num_envs=min(int(opts.num_envs), int(opts.episodes)), vectorization="sync", randomize=False,
                    render=bool(opts.video), safety=True)
    safety = safety_settings(cfg)
    video = None
    try:
        # (names a checkpoint whose networks do not fit; a run still training may have pruned ckpt meanwhile: the newest)
        policy, ckpt, manifest = load_run_policy(cfg, env, run_dir, opts.checkpoint, opts.device, ckpt)
        if not opts.deterministic and not getattr(policy, "stochastic", True):  # as training warns of it
            log.warning(f"deterministic=false: {getattr(policy, 'described', 'the policy')} has no distribution to "
                        "sample, so the episodes act deterministically")
        video_path = (run_dir / "videos" / f"eval-step{int(manifest['step'])}.mp4").resolve()
        if opts.video:  # frames are encoded as they are drawn (a long video never sits in memory); a path that
            # cannot take the file is refused here, before the episodes run
            from envs.rendering import Mp4Writer

            video = Mp4Writer(video_path, fps=1.0 / env.dt if env.dt else 30.0)
        result = evaluate(policy, env, int(opts.episodes), bool(opts.deterministic), seed=int(opts.seed),
                          record_episodes=int(opts.video_episodes) if opts.video else 0,
                          record_transitions=opts.demos_out is not None,
                          frame_sink=video.add if video is not None else None)
        if video is not None:
            video.close()
            result["video"], result["video_frames"] = str(video_path), video.count
            video = None
        costs = env.counted_costs(result["env_index"])
        if costs is not None:  # the task reports a cost (info[safety.cost_key]): per-episode sums
            result["costs"], result["cost_mean"] = costs, sum(costs) / len(costs)
            result["cost_key"] = str(safety.cost_key)
    finally:
        if video is not None:  # the evaluation failed: no half-written video
            video.close(keep=False)
        env.close()
    if opts.demos_out is not None:
        from robo_rl.demos import save_demos

        transitions = result.pop("transitions")
        result["demos_out"] = str(save_demos(opts.demos_out, **transitions))
        result["demos_transitions"] = int(transitions["obs"].shape[0])
    # what acted, so that the numbers can be reproduced: the episodes' seeds follow the env copies, and a run's
    # filters change the actions the env received
    result.update(
        # absolute, as summary.json's: a relative path read elsewhere names another run (or none)
        algo=cfg.algo.name, env=env.task_id, run_dir=str(run_dir.resolve()), checkpoint=str(Path(ckpt).resolve()),
        checkpoint_step=int(manifest["step"]), seed=int(opts.seed), num_envs=int(env.num_envs),
        device=str(cfg.device), policy=str(policy.name),
        safety_filters=[str(f["type"]) for f in OmegaConf.to_container(safety.filters, resolve=True)],
    )
    try:
        write_text_atomic(run_dir / "eval.json", json.dumps(result, indent=2))  # a cut file would lose the earlier one
    except OSError as exc:  # e.g. a full disk: the evaluation's numbers are still said
        raise EvalNotSaved(f"return {format_return(result['return_mean'], result['return_std'])} over "
                           f"{result['episodes']} episodes, but {run_dir / 'eval.json'} could not be written "
                           f"({exc.strerror or exc})") from None
    return result


class EvalNotSaved(OSError):
    """The evaluation ran; its eval.json could not be written."""


def _check_writable(path: Path) -> None:
    """``path`` can be (re)written: its directory takes new files and nothing but a file is in the way."""
    if path.is_dir() or (path.exists() and not path.is_file()):
        raise ValueError(f"{path} is not a file, so the result cannot be written there; move it away")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{path} cannot be written (the run directory is read-only); copy the run somewhere writable")
