"""What every runner shares: the loop's cadence (log, evaluate, checkpoint), signals, the NaN
guard, checkpoint save/restore and the run's final outputs. The off- and on-policy runners only
implement how one iteration collects experience and updates the learner.
"""

from __future__ import annotations

import abc
import errno
import json
import logging
import math
import random
import shlex
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from envs import BatchedEnv
from robo_rl.checkpoint import (CheckpointError, CheckpointWriteError, NonFiniteStateError, checkpoint_step,
                                latest_checkpoint, list_checkpoints, load_checkpoint, prune_checkpoints, save_checkpoint)
from robo_rl.config import flatten_config
from robo_rl.evaluation import EvaluationNotFinished, evaluate
from robo_rl.learners.base import Learner
from robo_rl.metrics import MetricsWriter, Progress, format_duration, format_return, mean_of, plot_learning_curve
from robo_rl.runners.safety import SafetyLayer, safety_settings

log = logging.getLogger("robo_rl")

EVAL_SEED_OFFSET = 1_000_003  # evaluation envs never share seeds with training envs


class NonFiniteError(FloatingPointError):
    """NaN/Inf in observations, rewards or losses; training stopped, last good checkpoint kept."""


class RunWriteError(RuntimeError):
    """A run file (checkpoint, metrics, summary) could not be written mid-run, e.g. on a full disk; training
    stopped, the checkpoints before it kept. The message says how to continue."""


def _is_write_failure(exc: OSError) -> bool:
    """A file could not be written: no space or quota, a read-only or failing disk, access lost."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM)


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved. ``signum`` says which."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class Terminated(BaseException):
    """SIGTERM outside the training loop (while the run starts, or writes its summary); not an Exception, so
    that no broad handler on the way mistakes it for a failure."""


def raise_terminated(signum: int, _frame: Any) -> None:
    """A SIGTERM handler for the time around the loop (the loop's own handler saves a checkpoint instead)."""
    raise Terminated(signum)


class _StopOnSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks between iterations (a second SIGINT aborts)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopOnSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.info(f"received {signal.Signals(signum).name}: saving a checkpoint after this iteration (Ctrl-C again to abort)")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _first_bad(values: dict[str, torch.Tensor]) -> str | None:
    for name, v in values.items():
        if not bool(torch.isfinite(v).all()):
            return name
    return None


class Runner(abc.ABC):
    def __init__(self, cfg: DictConfig, learner: Learner, env: BatchedEnv, eval_env: BatchedEnv, run_dir: Path) -> None:
        self.cfg = cfg
        self.learner = learner
        self.policy = learner.policy
        # A head pretrained on demonstrations keeps their observation statistics (demos.freeze_obs_norm):
        # moving them shifts every input under the pretrained weights. Without pretraining there is nothing
        # to keep, and the statistics follow the run as usual.
        demos = OmegaConf.select(cfg, "demos", default=None)
        self.frozen_obs_norm = bool(demos is not None and demos.path and demos.pretrain_steps > 0
                                    and demos.freeze_obs_norm)
        self.reset_obs_counted = False  # set by train() once the run's first observations are in the statistics
        # filters (if any) act in both; costs are read wherever the task reports them, required when learned from
        self.safety = safety_settings(cfg)
        self.env = SafetyLayer(env, self.safety.filters, self.safety.cost_key, require_cost=bool(self.safety.passivity_aware))
        self.eval_env = SafetyLayer(eval_env, self.safety.filters, self.safety.cost_key, keep_episode_costs=True)
        self.shared_eval = eval_env is env  # one simulator per process (env.one_per_process)
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.total_steps = int(cfg.steps)
        # the run stops at the first whole iteration past total_steps (N env steps at a time; the
        # on-policy runner: whole rollouts); the progress line counts toward that
        self.planned_steps = -(-self.total_steps // env.num_envs) * env.num_envs
        self.device = torch.device(cfg.device)
        self.step = 0
        self.iteration = 0
        self.num_updates = 0
        self.episodes = 0
        self.diverged = 0  # simulations the env reset because the physics diverged
        self.wall_time = 0.0  # seconds of training in earlier segments of a resumed run
        self.eval_seconds = 0.0  # of the wall time, spent in periodic evaluations (all segments)
        self.pretrain_seconds = 0.0  # pretraining on demonstrations (demos.path), before the first env step
        self.recent_returns: deque[float] = deque(maxlen=20)
        self.recent_lengths: deque[int] = deque(maxlen=20)
        self.recent_costs: deque[float] = deque(maxlen=20)  # summed safety cost of recent episodes (if reported)
        self.interventions = 0  # env steps whose action a safety filter changed
        self._row_interventions = 0  # ... since the last metrics row
        self._row_start_step = 0
        self.eval_history: list[dict[str, Any]] = []
        self.obs: torch.Tensor | None = None
        self._acc: dict[tuple[str, ...], tuple[torch.Tensor, int]] = {}  # metric sums per key set
        self._last_checkpoint: Path | None = None
        self._last_eval_step = -1
        self._last_ckpt_step = -1
        self._last_ckpt_evals = 0  # evaluations the last checkpoint holds (the final one may follow it)

    # -- to implement ------------------------------------------------------------------------------
    @abc.abstractmethod
    def iterate(self) -> None:
        """Collect experience (advancing self.step) and update the learner."""

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def replay_state(self) -> dict[str, np.ndarray] | None:
        return None

    def load_replay_state(self, replay: dict[str, np.ndarray]) -> None:
        pass

    # -- shared helpers for subclasses --------------------------------------------------------------
    def check_finite(self, what: str, value: torch.Tensor) -> None:
        # a sum is finite unless an element is NaN/Inf (or the sum overflows; the exact test decides)
        if not math.isfinite(float(value.sum())) and not bool(torch.isfinite(value).all()):
            self._fail(f"non-finite {what} from the environment at step {self.step:,}")

    def policy_actions(self, select: Any, obs: torch.Tensor) -> Any:
        """Run an action-selection call; non-finite actions stop training before reaching the env."""
        try:
            out = select(obs)
        except FloatingPointError as exc:
            self._fail(f"{exc} at step {self.step:,}")
        actions = out[0] if isinstance(out, tuple) else out
        if not math.isfinite(float(actions.sum())) and not bool(torch.isfinite(actions).all()):
            self._fail(f"non-finite actions from the policy at step {self.step:,} (diverged weights?)")
        return out

    def record_update(self, metrics: dict[str, torch.Tensor]) -> None:
        """Accumulate one update's metrics for the next log row; stop on NaN/Inf."""
        self.num_updates += 1
        keys = tuple(metrics)
        # one device for the stack: a metric a learner made on the host (a learning rate) next to CUDA losses
        values = torch.stack([v.detach().to(self.device, torch.float32).reshape(()) for v in metrics.values()])
        if not math.isfinite(float(values.sum())):  # one reduction; find the culprit only on failure
            bad = _first_bad(metrics)
            if bad is not None:
                self._fail(f"non-finite {bad} ({float(metrics[bad])}) in update {self.num_updates:,} at step {self.step:,}")
        acc = self._acc.get(keys)
        self._acc[keys] = (values, 1) if acc is None else (acc[0] + values, acc[1] + 1)

    def record_info(self, info: dict[str, Any]) -> None:
        """Finished episodes (raw returns, costs), filter interventions and diverged simulations, from a step's info."""
        n = info["safety"]["interventions"]
        if n:
            self.interventions += n
            self._row_interventions += n
        if "diverged" in info and bool(info["diverged"].any()):
            n = int(info["diverged"].sum())
            if n:
                self.diverged += n
                log.warning(f"{n} simulation(s) diverged at step {self.step:,} and were reset "
                            f"({self.diverged} so far); their episodes count as truncated")
        self.record_episodes(info["episode"])

    def record_episodes(self, episode: dict[str, torch.Tensor]) -> None:
        mask = episode["mask"]
        if bool(mask.any()):
            self.recent_returns.extend(episode["return"][mask].tolist())
            self.recent_lengths.extend(episode["length"][mask].tolist())
            if "cost" in episode:
                self.recent_costs.extend(episode["cost"][mask].tolist())
            self.episodes += int(mask.sum())

    def _fail(self, message: str) -> None:
        fix = ("Fix the cause and start a new run in a new run_dir (e.g. with a lower learning rate or reward scale; "
               "a resume replays the same updates into the same NaN)")
        if self._last_checkpoint:
            where = f"the last good checkpoint is {self._last_checkpoint}"
            fix += (f"; if the cause was outside the config (e.g. an env since fixed), `robo-rl train "
                    f"resume={self.run_dir}` continues from that checkpoint")
        else:
            where = "no checkpoint was written yet"
        raise NonFiniteError(f"{message}; training stopped and {where}. {fix}.")

    def episodes_restarted(self) -> None:
        """The training envs started new episodes outside ``env.step`` (a reset after a shared evaluation, or on
        resume when the simulator state could not be saved): per-episode running state restarts too."""

    # -- the loop ----------------------------------------------------------------------------------
    def update_obs_norm(self, obs: torch.Tensor) -> None:
        if not self.frozen_obs_norm:
            self.policy.obs_norm.update(obs)

    def train(self, resume_from: Path | None = None) -> dict[str, Any]:
        cfg = self.cfg
        if resume_from is not None:
            if not getattr(self, "_restored", False):  # train.py restores before it rewrites config.yaml
                self.restore(resume_from)
            if self.step >= self.total_steps:
                log.info(f"the run is already complete ({self.step:,} of {self.total_steps:,} steps): nothing to train; "
                         "its summary and learning curve are written again")
                prune_checkpoints(self.ckpt_dir, self.step, int(cfg.checkpoint.keep))  # no save will do it
        else:
            self.obs = self.env.reset(seed=int(cfg.seed))
            self.update_obs_norm(self.obs)
            self.reset_obs_counted = True  # the on-policy runner's first rollout holds them again
        # a resume keeps the rows up to its checkpoint; a restart (resume= of a run with no checkpoint) none
        resume_step = self.step if resume_from else (0 if cfg.get("resume") else None)
        self.metrics = MetricsWriter(self.run_dir, cfg.log.tensorboard, resume_step=resume_step)
        label = f"{cfg.algo.name} {self.env.task_id}"
        progress = Progress(label, self.planned_steps, cfg.log.progress_seconds, self.step)
        next_log = (self.step // cfg.log.every + 1) * cfg.log.every
        next_eval = (self.step // cfg.eval.every + 1) * cfg.eval.every
        next_ckpt = (self.step // cfg.checkpoint.every + 1) * cfg.checkpoint.every
        t_start = time.perf_counter()
        self._segment_start_step = self.step
        status = "completed"
        try:
            with _StopOnSignal() as stop:
                while self.step < self.total_steps:
                    self.iterate()
                    self.iteration += 1
                    now_wall = self.wall_time + time.perf_counter() - t_start
                    if self.step >= next_log or self.step >= self.total_steps:  # (the last interval gets its row)
                        self._write_row(now_wall, t_start)
                        next_log = (self.step // cfg.log.every + 1) * cfg.log.every
                    if self.step >= next_eval:
                        self._evaluate(now_wall)
                        next_eval = (self.step // cfg.eval.every + 1) * cfg.eval.every
                    if self.step >= next_ckpt:
                        self.save(time.perf_counter() - t_start)
                        next_ckpt = (self.step // cfg.checkpoint.every + 1) * cfg.checkpoint.every
                    last_eval = self.eval_history[-1] if self.eval_history else None
                    progress.maybe_print(
                        self.step, mean_of(self.recent_returns),
                        (last_eval["return_mean"], last_eval["return_std"]) if last_eval else None,
                        recent_cost=mean_of(self.recent_costs) if self.recent_costs else None,
                    )
                    if stop.signum is not None:
                        if self._last_ckpt_step != self.step or self._last_ckpt_evals != len(self.eval_history):
                            self.save(time.perf_counter() - t_start)  # (not twice: a large replay doubles the wait)
                        status = f"interrupted by {signal.Signals(stop.signum).name}"
                        raise Interrupted(
                            stop.signum,
                            f"{status} at step {self.step:,}; checkpoint {self._last_checkpoint} saved. "
                            f"Continue with: robo-rl train {shlex.quote(f'resume={self.run_dir}')}",  # pasted as printed
                        )
                # still under the handler: a signal during the final evaluation or save waits for them, as one
                # in the loop waits for its iteration (it used to kill the run, losing the steps since the
                # last checkpoint, or read as a second Ctrl-C)
                elapsed = self.wall_time + time.perf_counter() - t_start
                # a finished run resumed from a checkpoint saved before closing rows were written gets its row
                closing = self._row_start_step != self.step
                if closing:
                    self._write_row(elapsed, t_start)
                if self._last_eval_step != self.step:
                    self._evaluate(elapsed)
                # the final evaluation may come after a checkpoint at the same step: save again so it is kept
                # (a resume would otherwise drop it from eval_history and the best-eval summary, or repeat it)
                if closing or self._last_ckpt_step != self.step or self._last_ckpt_evals != len(self.eval_history):
                    self.save(time.perf_counter() - t_start)
                if stop.signum is not None:
                    log.info(f"{signal.Signals(stop.signum).name} arrived after the last training step: the run is "
                             f"complete and its final checkpoint {self._last_checkpoint} is saved")
            progress.maybe_print(self.step, mean_of(self.recent_returns),
                                 (self.eval_history[-1]["return_mean"], self.eval_history[-1]["return_std"]), force=True,
                                 recent_cost=mean_of(self.recent_costs) if self.recent_costs else None)
        except Interrupted:
            raise
        except KeyboardInterrupt:  # a second Ctrl-C while the first one's checkpoint was pending: no new one
            where = f"the last checkpoint is {self._last_checkpoint}" if self._last_checkpoint else "no checkpoint was written"
            status = f"aborted by a second SIGINT at step {self.step:,} ({where})"
            log.info(f"{status}" + (f"; continue with: robo-rl train {shlex.quote(f'resume={self.run_dir}')}"
                                    if self._last_checkpoint else ""))
            raise
        except (OSError, CheckpointWriteError) as exc:  # a full disk, a permission lost mid-run
            if isinstance(exc, OSError) and not _is_write_failure(exc):  # e.g. a worker process's broken pipe
                status = f"failed: {exc}"
                raise
            why = str(exc) if isinstance(exc, CheckpointWriteError) else \
                f"writing {exc.filename or 'a run file'} failed at step {self.step:,} ({exc.strerror or exc})"
            status = f"failed: {why}"
            raise RunWriteError(f"{why}; " + (
                f"the last complete checkpoint is {self._last_checkpoint}: free space (or restore access) and continue "
                f"with: robo-rl train {shlex.quote(f'resume={self.run_dir}')}" if self._last_checkpoint
                else "no checkpoint was written yet"))
        except Exception as exc:  # NaN guard, a task without the configured cost, ...: the summary says so
            status = f"failed: {exc}"
            raise
        finally:
            elapsed = self.wall_time + time.perf_counter() - t_start
            try:
                summary = self._finish(elapsed, status, t_start)
            except OSError as exc:  # the disk that stopped the run may refuse the summary too
                if status == "completed":
                    raise RunWriteError(f"training completed, but writing {exc.filename or 'summary.json'} failed "
                                        f"({exc.strerror or exc}); the final checkpoint is {self._last_checkpoint}") from exc
                log.warning(f"robo-rl: warning: could not write the run's summary either ({exc.strerror or exc})")
        return summary

    def _write_row(self, wall: float, t_start: float) -> None:
        segment = time.perf_counter() - t_start
        scalars: dict[str, float] = {
            "time/steps_per_s": (self.step - self._segment_start_step) / max(segment, 1e-9),
            "time/updates": float(self.num_updates),
            "rollout/episodes": float(self.episodes),
            "rollout/diverged_resets": float(self.diverged),
        }
        if self.recent_returns:
            scalars["rollout/ep_return_mean"] = mean_of(self.recent_returns)  # type: ignore[assignment]
            scalars["rollout/ep_length_mean"] = mean_of(self.recent_lengths)  # type: ignore[assignment]
        if self.recent_costs:
            scalars["rollout/ep_cost_mean"] = mean_of(self.recent_costs)  # type: ignore[assignment]
        if self.env.chains:
            scalars["safety/interventions"] = float(self.interventions)
            scalars["safety/intervention_rate"] = self._row_interventions / max(self.step - self._row_start_step, 1)
        self._row_interventions, self._row_start_step = 0, self.step
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for keys, (total, n) in self._acc.items():  # e.g. TD3 reports actor_loss every other update
            for k, v in zip(keys, total.tolist()):
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + n
        for k, total in sums.items():
            scalars[f"train/{k}"] = total / counts[k]
        self._acc.clear()
        self.metrics.write(self.step, wall, scalars)

    def _evaluate(self, wall: float) -> None:
        cfg = self.cfg.eval
        seed = int(self.cfg.seed) + EVAL_SEED_OFFSET + len(self.eval_history)
        t0 = time.perf_counter()
        try:
            result = evaluate(self.policy, self.eval_env, int(cfg.episodes), bool(cfg.deterministic), seed=seed)
        except FloatingPointError as exc:  # a NaN from the evaluation env or the policy: stop like any other
            self._fail(f"{exc} in the evaluation at step {self.step:,}")
        except EvaluationNotFinished as exc:
            raise EvaluationNotFinished(f"{exc} (eval.episodes={cfg.episodes}; the evaluation at step {self.step:,})") from None
        self.eval_seconds += time.perf_counter() - t0
        if self.shared_eval:  # the evaluation stepped (and reset) the training envs: they start new episodes
            self.obs = self.env.reset(seed=int(self.cfg.seed) + self.step)
            self.episodes_restarted()
        result["step"] = self.step
        costs = self.eval_env.counted_costs(result["env_index"])
        scalars = {
            "eval/return_mean": result["return_mean"],
            "eval/return_std": result["return_std"],
            "eval/length_mean": result["length_mean"],
        }
        cost_text = ""
        if costs is not None:
            result["costs"] = costs
            result["cost_mean"] = scalars["eval/cost_mean"] = sum(costs) / len(costs)
            cost_text = f", cost {result['cost_mean']:.3g} per episode"
        self.eval_history.append(result)
        self._last_eval_step = self.step
        self.metrics.write(self.step, wall, scalars)
        log.info(f"  eval at step {self.step:,}: return {format_return(result['return_mean'], result['return_std'])} "
                 f"over {result['episodes']} episodes (length {result['length_mean']:.0f}){cost_text}")

    # -- checkpoints -------------------------------------------------------------------------------
    def state(self, segment_seconds: float) -> dict[str, Any]:
        return {
            "learner": self.learner.training_state(),
            "runner": {
                "step": self.step,
                "iteration": self.iteration,
                "num_updates": self.num_updates,
                "episodes": self.episodes,
                "diverged": self.diverged,
                "wall_time": self.wall_time + segment_seconds,
                "eval_seconds": self.eval_seconds,
                "pretrain_seconds": self.pretrain_seconds,
                "recent_returns": list(self.recent_returns),
                "recent_lengths": list(self.recent_lengths),
                "recent_costs": list(self.recent_costs),
                "interventions": self.interventions,
                "eval_history": [{k: v for k, v in e.items()} for e in self.eval_history],
                # the next metrics row's running sums, so that a resumed run logs that row as an unbroken one
                # would (plain floats: float32 sums survive JSON exactly)
                "row": {"start_step": self._row_start_step, "interventions": self._row_interventions,
                        "metric_sums": [{"keys": list(keys), "total": total.tolist(), "n": n}
                                        for keys, (total, n) in self._acc.items()]},
                "obs": self.obs,
                **self.extra_state(),
            },
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                # sampling on a GPU draws from the device's generator, not the CPU one (untested: no GPU here)
                **({"cuda": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
            },
            "env": self.env.state_dict(),
            # the run's config as trained: a resume refuses a config.yaml edited since (see _check_config)
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def save(self, segment_seconds: float) -> Path:
        replay = self.replay_state() if self.cfg.checkpoint.save_replay else None
        try:
            path = save_checkpoint(self.ckpt_dir, self.step, self.state(segment_seconds), replay,
                                   keep=int(self.cfg.checkpoint.keep))
        except NonFiniteStateError as exc:  # an update left NaN/Inf in weights or optimizer moments, its loss finite
            self._fail(f"non-finite {exc.name} in the training state at step {self.step:,} (diverged weights or "
                       "optimizer moments; not checkpointed)")
        self._last_checkpoint = path
        self._last_ckpt_step = self.step
        self._last_ckpt_evals = len(self.eval_history)
        return path

    def _load_resumable(self, path: Path) -> tuple[dict[str, Any], Any, Path]:
        """Load ``path`` into the learner and this runner, or, if it cannot be (its state.json disagrees with its
        tensors, its tensors do not fit this run's networks, its runner, RNG, env or replay state is not what
        this run saves), the newest older checkpoint that can: (state, replay, path)."""
        path = Path(path)
        candidates = [path, *(p for p in reversed(list_checkpoints(path.parent)) if checkpoint_step(p) < checkpoint_step(path))]
        problems = []
        for i, candidate in enumerate(candidates):
            try:
                state, replay = load_checkpoint(candidate, load_replay=True)
                if not isinstance(state, dict):
                    raise CheckpointError(f"checkpoint file {candidate / 'state.json'} holds a "
                                          f"{type(state).__name__}, not a training state")
                self._check_config(candidate, state)  # an edited config.yaml: a ConfigError, no fallback
                try:
                    self.learner.load_training_state(state["learner"])
                except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as exc:
                    from robo_rl.runs import state_mismatch

                    modules = state["learner"].get("modules") if isinstance(state.get("learner"), dict) else None
                    why = state_mismatch(self.learner.state_dict(), modules) if isinstance(modules, dict) else None
                    if why is None:  # not a key or shape of the modules: torch's own words (its first line is a heading)
                        why = f"{type(exc).__name__}: {' '.join(line.strip() for line in str(exc).splitlines()[:2]):.300}"
                    raise CheckpointError(f"checkpoint {candidate} does not fit this run's {self.cfg.algo.name} "
                                          f"learner ({why})") from None
                self._apply_state(candidate, state, replay)
                return state, replay, candidate
            except CheckpointError as exc:
                problems.append(str(exc))
                if i + 1 < len(candidates):
                    log.warning(f"cannot resume from {candidate.name}: {exc}; trying {candidates[i + 1].name}")
        raise CheckpointError(f"no checkpoint under {path.parent} can be resumed from: {'; '.join(problems)}")

    def _check_config(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse a resume whose config.yaml was edited since ``path`` was saved (keys a resume may not change)."""
        saved = state.get("config")
        if not isinstance(saved, dict):  # checkpoints before 2026-12-04 hold no config
            return
        from robo_rl.train import RESUME_OVERRIDABLE
        from robo_rl.validation import ConfigError

        current = json.loads(json.dumps(OmegaConf.to_container(self.cfg, resolve=True)))
        now, then = flatten_config(current), flatten_config(saved)
        # keys only one side has are schema keys added since the checkpoint, except under env.kwargs (the task's
        # keyword arguments, free-form): those are compared as one mapping, so an added or removed one counts
        now = {k: v for k, v in now.items() if not k.startswith("env.kwargs.")}
        then = {k: v for k, v in then.items() if not k.startswith("env.kwargs.")}
        now["env.kwargs"] = (current.get("env") or {}).get("kwargs")
        then["env.kwargs"] = (saved.get("env") or {}).get("kwargs", now["env.kwargs"])
        changed = [k for k in now if k in then and now[k] != then[k] and k not in RESUME_OVERRIDABLE]
        if changed:
            shown = "; ".join(f"{k} is {now[k]!r} in config.yaml, {then[k]!r} in the checkpoint" for k in changed[:3])
            more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
            raise ConfigError(f"{self.run_dir / 'config.yaml'} was edited since checkpoint {path} was saved: {shown}{more}; "
                              f"a resume may change only {', '.join(sorted(RESUME_OVERRIDABLE - {'resume', 'run_dir'}))}. "
                              "Put the file back as it was, or start a new run to change them.")

    def _apply_state(self, path: Path, state: dict[str, Any], replay: Any) -> None:
        """Set this runner's counters, RNGs, envs and replay from a loaded checkpoint; what does not fit is a
        CheckpointError naming the checkpoint and the part (everything is set again by the next candidate)."""
        part = "its runner state (state.json: runner)"
        try:
            r = state["runner"]
            self.step, self.iteration = int(r["step"]), int(r["iteration"])
            self.num_updates, self.episodes = int(r["num_updates"]), int(r["episodes"])
            if min(self.step, self.iteration, self.num_updates, self.episodes) < 0:
                raise ValueError("a negative counter")
            self.diverged = int(r.get("diverged", 0))
            self.wall_time = float(r["wall_time"])
            self.eval_seconds = float(r.get("eval_seconds", 0.0))  # not in checkpoints before 2026-12-03
            self.pretrain_seconds = float(r.get("pretrain_seconds", 0.0))  # nor this before 2026-12-04
            for queue, key in ((self.recent_returns, "recent_returns"), (self.recent_lengths, "recent_lengths"),
                               (self.recent_costs, "recent_costs")):
                values = r.get(key, [])
                if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
                    raise TypeError(f"{key} is {values!r:.80}, expected a list of numbers")
                queue.clear()
                queue.extend(values)
            self.interventions = int(r.get("interventions", 0))
            row = r.get("row") or {}  # not in checkpoints before 2026-12-04: the first row then starts here
            self._row_start_step = int(row.get("start_step", self.step))
            self._row_interventions = int(row.get("interventions", 0))
            self._acc = {tuple(m["keys"]): (torch.tensor(m["total"], dtype=torch.float32, device=self.device), int(m["n"]))
                         for m in row.get("metric_sums", [])}
            history = r["eval_history"]
            if not isinstance(history, list) or not all(
                    isinstance(e, dict) and all(isinstance(e.get(k), (int, float)) for k in ("step", "return_mean", "return_std"))
                    for e in history):
                raise TypeError(f"eval_history is {history!r:.80}, expected a list of evaluations")
            self.eval_history = list(history)
            self._last_eval_step = self.eval_history[-1]["step"] if self.eval_history else -1
            self.load_extra_state(r)
            part = "its RNG state (rng)"
            torch.set_rng_state(state["rng"]["torch"])
            np.random.set_state(state["rng"]["numpy"])
            random.setstate(state["rng"]["python"])
            if "cuda" in state["rng"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
            part = "its environment state (env, runner.obs)"
            if state.get("env") is not None:
                fresh = self.env.reset(seed=int(self.cfg.seed))
                self.env.load_state_dict(state["env"])
                obs = r["obs"]
                if not isinstance(obs, torch.Tensor) or obs.shape != fresh.shape or not obs.is_floating_point():
                    raise ValueError(f"runner.obs is {getattr(obs, 'dtype', type(obs).__name__)} "
                                     f"{list(getattr(obs, 'shape', []))}, expected observations of shape {list(fresh.shape)}")
                self.obs = obs.to(self.device)
                self.env.obs = self.obs  # the filters see the restored observation, not the reset one
            else:
                log.warning(f"{self.env.task_id}: simulator state was not saved (this env cannot capture it); "
                            "environments start new episodes on resume")
                self.obs = self.env.reset(seed=int(self.cfg.seed) + self.step)
                self.episodes_restarted()
            part = "its replay buffer (replay.npz)"
            if replay is not None:
                self.load_replay_state(replay)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            raise CheckpointError(f"checkpoint {path} cannot be resumed: {part} does not fit this run "
                                  f"({type(exc).__name__}: {str(exc):.300})") from None

    def restore(self, path: Path) -> None:
        """Continue from checkpoint ``path`` (or the newest older one that loads, see ``_load_resumable``)."""
        state, replay, path = self._load_resumable(path)
        self._restored = True
        if replay is None and self.learner.kind == "off_policy":
            log.warning("the checkpoint holds no replay buffer (checkpoint.save_replay=false): the resumed run "
                        f"acts with its policy without updating until replay holds algo.learning_starts "
                        f"({int(self.cfg.algo.learning_starts):,}) transitions again")
        self._last_checkpoint = Path(path)
        self._last_ckpt_step = self.step
        self._last_ckpt_evals = len(self.eval_history)
        log.info(f"resumed from {path} at step {self.step:,}")

    def _finish(self, elapsed: float, status: str, t_start: float) -> dict[str, Any]:
        metrics = getattr(self, "metrics", None)
        if metrics is not None:
            metrics.close()
        last = self.eval_history[-1] if self.eval_history else None
        best = max(self.eval_history, key=lambda e: e["return_mean"]) if self.eval_history else None
        summary = {
            "status": status,
            "algo": self.cfg.algo.name,
            "env": self.env.task_id,
            "seed": int(self.cfg.seed),
            "steps": self.step,
            "updates": self.num_updates,
            "episodes": self.episodes,
            "diverged_resets": self.diverged,
            "wall_time_s": round(elapsed, 2),
            "steps_per_s": round(self.step / elapsed, 2) if elapsed > 0 else None,
            "eval_time_s": round(self.eval_seconds, 2),  # part of wall_time_s
            **({"pretrain_time_s": round(self.pretrain_seconds, 2)} if self.pretrain_seconds else {}),  # not part of it
            "final_eval_return_mean": last["return_mean"] if last else None,
            "final_eval_return_std": last["return_std"] if last else None,
            "final_eval_step": last["step"] if last else None,
            **({"final_eval_cost_mean": last["cost_mean"]} if last and "cost_mean" in last else {}),
            **({"passivity_aware": True} if self.safety.passivity_aware else {}),
            **({"filter_interventions": self.interventions} if self.env.chains else {}),
            "best_eval_return_mean": best["return_mean"] if best else None,
            "best_eval_return_std": best["return_std"] if best else None,
            "best_eval_step": best["step"] if best else None,
            # absolute, however the run directory was named (run_dir=, or resume= with a relative path)
            "last_checkpoint": str(Path(self._last_checkpoint).absolute()) if self._last_checkpoint else None,
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if self.cfg.log.plot and metrics is not None:
            try:
                plot_learning_curve(metrics.rows, self.run_dir / "learning_curve.png",
                                    f"{self.cfg.algo.name} on {self.env.task_id} (seed {self.cfg.seed})")
            except Exception as exc:  # a plotting problem must not hide the run's result
                log.warning(f"could not draw the learning curve: {exc}")
        if status == "completed":
            log.info(f"done: {self.step:,} steps in {format_duration(elapsed)} ({summary['steps_per_s']} steps/s; "
                     f"{len(self.eval_history)} evaluation{'s' if len(self.eval_history) != 1 else ''} took "
                     f"{format_duration(self.eval_seconds)}"
                     + (f", after {format_duration(self.pretrain_seconds)} of pretraining on demonstrations"
                        if self.pretrain_seconds else "") + "); "
                     f"final eval return {format_return(summary['final_eval_return_mean'], summary['final_eval_return_std'])}; "
                     f"outputs in {self.run_dir}")
        return summary


def find_resume_checkpoint(run_dir: Path) -> Path:
    path = latest_checkpoint(run_dir / "checkpoints", warn=log.warning)
    if path is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint to resume from; start a new run instead")
    return path


