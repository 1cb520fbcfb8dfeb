"""What every runner shares: the loop's cadence (log, evaluate, checkpoint), the NaN guard and the run's
final outputs; checkpoint save/restore is its other half (runners/checkpoints.py), signals and the
errors that stop a run are in runners/stopping.py. The off- and on-policy runners only implement how
one iteration collects experience and updates the learner.
"""

from __future__ import annotations

import abc
import errno
import json
import logging
import math
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
from envs.base import ContractError, WorkerDied, all_finite
from policies.normalizers import coarse_dimensions
from robo_rl.checkpoint import CheckpointWriteError, list_checkpoints, prune_checkpoints
from robo_rl.evaluation import MAX_STEPS as EVAL_MAX_STEPS
from robo_rl.evaluation import (EvaluationNotFinished, EvaluationStopped, device_mismatch, evaluate,
                                policy_env_mismatch)
from robo_rl.learners.base import Learner
from robo_rl.metrics import (MetricsWriter, Progress, format_duration, format_return, mean_of, plot_learning_curve,
                             run_logging, write_text_atomic)
from robo_rl.runners.checkpoints import RunnerCheckpoints
from robo_rl.runners.safety import SafetyLayer, safety_settings
from robo_rl.runners.stopping import (EnvError, Interrupted, NonFiniteError, RunWriteError, StopOnSignal,
                                      is_write_failure, out_of_memory)
from robo_rl.validation import ConfigError

log = logging.getLogger("robo_rl")


def not_the_envs_own(exc: BaseException) -> bool:
    """Whether an error out of an env call is reported as what it is rather than as the task's own error: a worker
    process that died, an env breaking its API or outputs not fitting the config (bad input, as at start-up), and
    running out of memory or of open files (their own messages say what to lower)."""
    return (isinstance(exc, (WorkerDied, MemoryError, ContractError, ConfigError)) or out_of_memory(exc) is not None
            or (isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)))


def raised_in_step_or_reset(exc: BaseException, env: Any) -> bool:
    """Whether ``exc`` came out of ``env``'s step() or reset() (or those of the env it wraps), not out of the code
    around them (an evaluation's policy)."""
    owners = {id(env), id(getattr(env, "env", None))}
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name in ("step", "reset") and id(frame.f_locals.get("self")) in owners:
            return True
        tb = tb.tb_next
    return False

# The evaluation at env step s seeds its envs (copy i: + i) and the policy's sampling with seed + EVAL_SEED_OFFSET + s:
# a function of the step, not of how many evaluations came before, so the same training reports the same evaluation at
# a step whatever eval.every is (or was before a resume). The offset keeps them apart from the training envs' seeds
# (seed + i, and seed + step where the training envs restart episodes) in runs of up to a million steps.
EVAL_SEED_OFFSET = 1_000_003


def _first_bad(values: dict[str, torch.Tensor]) -> str | None:
    for name, v in values.items():
        if not bool(torch.isfinite(v).all()):
            return name
    return None


class Runner(RunnerCheckpoints, abc.ABC):
    def __init__(self, cfg: DictConfig, learner: Learner, env: BatchedEnv, eval_env: BatchedEnv, run_dir: Path) -> None:
        for which, built in (("training env", env), ("evaluation env", eval_env)):  # before the replay is allocated
            if (mismatch := device_mismatch(learner, built.device, f"{built.task_id}'s tensors")) is not None:
                raise ValueError(f"the learner is not on the {which}'s device: {mismatch}; move it "
                                 "(learner.to(env.device)) or make the env on the learner's device")
            if (mismatch := policy_env_mismatch(learner.policy, built)) is not None:
                raise ValueError(f"the learner does not fit the {which}: {mismatch}; build its head for that env "
                                 "(obs_dim=env.obs_dim, action_low=env.action_space.low, "
                                 "action_high=env.action_space.high)")
        if (mismatch := device_mismatch(learner, cfg.device, "cfg.device (the replay or rollout storage)")) is not None:
            raise ValueError(f"the learner is not on the run's device: {mismatch}; compose the config with "
                             "device=<the learner's device>, or move the learner")
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
        self._resolution_checked = False  # whether the observation statistics were checked for float32 resolution
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
        self.held_update: dict[str, torch.Tensor] | None = None  # an update's metrics, held for its deferred work
        self.row_due = False  # a log row held back with it (written after the work, at the same step)
        self._last_checkpoint: Path | None = None
        self._last_eval_step = -1
        self._last_ckpt_step = -1
        self._last_ckpt_evals = 0  # evaluations the last checkpoint holds (the final one may follow it)
        # the periodic evaluation at self.step gave way to a SIGINT/SIGTERM: not recorded; the resumed run does it first
        self.eval_pending = False
        self._stop: StopOnSignal | None = None  # while train() runs: the signal that asks it to stop

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
        if not all_finite(value):
            self._fail(f"non-finite {what} from the environment at step {self.step:,}")

    def check_reset_obs_finite(self) -> None:
        """Stop on a NaN/Inf in ``self.obs`` where it comes from a reset (each step's are checked as they come): replay
        would store it, the policy act on it."""
        if not all_finite(self.obs):
            self._fail(f"non-finite observation from the environment's reset() at step {self.step:,}")

    def step_env(self, actions: torch.Tensor) -> Any:
        """``self.env.step``; a non-finite cost it reports (``SafetyLayer.checked_cost``) stops the run as any NaN does."""
        try:
            return self.env.step(actions)
        except FloatingPointError as exc:
            self._fail(f"{exc} (at step {self.step:,})")
        except Exception as exc:  # the task's own error (a ValueError read as bad configuration, exit 2; others as a
            # traceback without the checkpoint to continue from)
            if not_the_envs_own(exc):
                raise
            raise self._env_failed(f"{self.env.task_id}: env.step() raised {type(exc).__name__}: {exc} (at step "
                                   f"{self.step:,})") from exc

    def _env_failed(self, message: str) -> EnvError:
        """The error that stops the run after the envs raised ``message``'s error (the caller chains it)."""
        where = (f"the last checkpoint is {self._last_checkpoint}; once the cause is fixed, `robo-rl train "
                 f"{shlex.quote(f'resume={self.run_dir}')}` continues from it" if self._last_checkpoint
                 else "no checkpoint was written yet")
        return EnvError(f"{message}; training stopped and {where} (the error's traceback is in "
                        f"{self.run_dir / 'train.log'})")

    def policy_actions(self, select: Any, obs: torch.Tensor) -> Any:
        """Run an action-selection call; non-finite actions stop training before reaching the env."""
        try:
            out = select(obs)
        except FloatingPointError as exc:
            self._fail(f"{exc} at step {self.step:,}")
        actions = out[0] if isinstance(out, tuple) else out
        if not all_finite(actions):
            self._fail(f"non-finite actions from the policy at step {self.step:,} (diverged weights?)")
        return out

    def env_actions(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``learner.env_action``, what the env receives: a NaN it makes (GoRL's decoder) stops training as one from the
        policy does."""
        return self.policy_actions(lambda o: self.learner.env_action(o, actions), obs)

    def update_learner(self, batch: Any) -> None:
        """``learner.update(batch)``, its metrics recorded; a NaN the update meets in a head's checked actions (GoRL's
        refit, EXPO's and PA-RL's candidates) stops training as one in its metrics does, naming the update."""
        try:
            metrics = self.learner.update(batch)
        except FloatingPointError as exc:
            self._fail(f"{exc} in update {self.num_updates + 1:,} at step {self.step:,}")
        self.record_update(metrics)

    def deferred_work(self) -> None:
        """``learner.before_iteration()`` (a GoRL refit a signal interrupted, which the resumed run does first), its
        metrics recorded; a NaN it meets in a head's checked actions stops training as one inside an update does."""
        try:
            metrics = self.learner.before_iteration()
        except FloatingPointError as exc:
            self._fail(f"{exc} in the work deferred from update {self.num_updates:,} at step {self.step:,}")
        if self.learner.work_deferred():  # it gave way to a signal again: the update's metrics stay held
            return
        if self.held_update is not None:  # the update the work belongs to: its metrics and the work's, as one record
            metrics, self.held_update = {**self.held_update, **metrics}, None
        if metrics:
            self.record_metrics(metrics)
        if self.row_due:  # the row of the step the work was deferred at, which an unbroken run wrote with them
            self.row_due = False
            self._write_row(self.wall_time, time.perf_counter())

    def record_update(self, metrics: dict[str, torch.Tensor]) -> None:
        """Accumulate one update's metrics for the next log row; stop on NaN/Inf. An update whose work gave way to a
        signal (a GoRL refit) is held, with its metrics, until the resumed run has done that work (``deferred_work``),
        so that its row averages what an unbroken run's did."""
        self.num_updates += 1
        self.record_metrics(metrics, hold=self.learner.work_deferred())

    def record_metrics(self, metrics: dict[str, torch.Tensor], hold: bool = False) -> None:
        """Accumulate learner metrics for the next log row (each key averaged over the times it was reported);
        stop on NaN/Inf. ``hold``: checked, then kept as ``held_update`` instead (see ``record_update``)."""
        keys = tuple(metrics)
        # one device for the stack: a metric a learner made on the host (a learning rate) next to CUDA losses
        values = torch.stack([v.detach().to(self.device, torch.float32).reshape(()) for v in metrics.values()])
        if not math.isfinite(float(values.sum())):  # one reduction; find the culprit only on failure
            bad = _first_bad(metrics)
            if bad is not None:
                self._fail(f"non-finite {bad} ({float(metrics[bad])}) in update {self.num_updates:,} at step {self.step:,}")
        if hold:  # (checked all the same: a NaN stops the run before the signal's checkpoint would keep it)
            self.held_update = metrics
            return
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
                before, self.diverged = self.diverged, self.diverged + n
                # a warning the first time, then as the total passes 10, 100, 1,000, ... (a console line at every
                # step of a model that keeps diverging buried the progress lines); each one at debug level
                if before == 0:
                    log.warning(f"{n} simulation(s) diverged at step {self.step:,} and were reset; their episodes count "
                                "as truncated (the count is rollout/diverged_resets; warned again at 10, 100, 1,000, "
                                "... in all)")
                elif len(str(self.diverged)) > len(str(before)):
                    log.warning(f"{self.diverged:,} simulations have diverged and been reset so far (the latest {n} at "
                                f"step {self.step:,})")
                else:
                    log.debug(f"{n} simulation(s) diverged at step {self.step:,} and were reset ({self.diverged} so far)")
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
                    f"{shlex.quote(f'resume={self.run_dir}')}` continues from that checkpoint")
        else:
            where = "no checkpoint was written yet"
        raise NonFiniteError(f"{message}; training stopped and {where}. {fix}.")

    def _interrupted(self, signum: int, t_start: float) -> tuple[str, Interrupted]:
        """Checkpoint the run for a SIGINT/SIGTERM (unless this step's is saved) and return the run's status and
        the exception that stops it."""
        if self._last_ckpt_step != self.step or self._last_ckpt_evals != len(self.eval_history):
            self.save(time.perf_counter() - t_start)  # (not twice: a large replay doubles the wait)
        status = f"interrupted by {signal.Signals(signum).name}"
        cut = (f" (the evaluation at step {self.step:,} was cut short and not recorded: the resumed run does it first)"
               if self.eval_pending else "")
        return status, Interrupted(signum, f"{status} at step {self.step:,}{cut}; checkpoint {self._last_checkpoint} "
                                           "saved. "
                                           f"Continue with: robo-rl train {shlex.quote(f'resume={self.run_dir}')}")

    def may_defer(self) -> bool:
        """Whether the learner's long work under way (a GoRL refit) may give way to a signal now, to be done first
        by the resumed run (``Learner.before_iteration``): only when no update of this iteration follows it."""
        return True

    def episodes_restarted(self) -> None:
        """The training envs started new episodes outside ``env.step`` (a reset after a shared evaluation, or on
        resume when the simulator state could not be saved): per-episode running state restarts too."""

    # -- the loop ----------------------------------------------------------------------------------
    def update_obs_norm(self, obs: torch.Tensor) -> None:
        if not self.frozen_obs_norm:
            self.policy.obs_norm.update(obs)

    def train(self, resume_from: Path | None = None) -> dict[str, Any]:
        """Run the loop to ``steps`` (from the checkpoint ``resume_from``, or from the start); returns the summary.
        Called by itself (``build_runner(...).train()``), it prints and logs to train.log as ``train()`` does."""
        if resume_from is None and (held := list_checkpoints(self.ckpt_dir)):  # (train() refuses such a directory
            # before writing config.yaml)
            raise ValueError(f"run_dir={self.run_dir} already holds a run (checkpoints up to {held[-1].name}), whose "
                             "checkpoints and metrics a new run would replace: choose another run_dir, or continue "
                             f"it with runner.train(resume_from={held[-1]})")
        with run_logging(self.run_dir):
            return self._train(resume_from)

    def _train(self, resume_from: Path | None) -> dict[str, Any]:
        cfg = self.cfg
        if any(hasattr(e, "max_episode_steps") and not e.max_episode_steps for e in (self.env, self.eval_env)):
            log.warning(f"{self.env.task_id} has no time limit (its registration sets no max_episode_steps, nor does "
                        "env.max_episode_steps): an episode ends only when the task ends it, so an evaluation waits "
                        f"for {cfg.eval.episodes} to end and stops the run after {EVAL_MAX_STEPS:,} steps without them; "
                        "set env.max_episode_steps")
        if resume_from is not None:
            if not getattr(self, "_restored", False):  # train.py restores before it rewrites config.yaml
                self.restore(resume_from)
            if self.step >= self.total_steps:
                log.info(f"the run is already complete ({self.step:,} of {self.total_steps:,} steps): nothing to train; "
                         + ("its summary and learning curve are written again" if cfg.log.plot else
                            "its summary is written again"))
                prune_checkpoints(self.ckpt_dir, self.step, int(cfg.checkpoint.keep))  # no save will do it
        else:
            self.obs = self.env.reset(seed=int(cfg.seed))
            self.update_obs_norm(self.obs)
            largest = float(self.obs.abs().max())
            if not self.policy.obs_norm.enabled and largest > 1e3:
                log.warning(f"{self.env.task_id}'s observations reach {largest:.3g} in magnitude and "
                            "policy.normalize_obs=false, so the networks see them raw (inputs of 1e6 overflowed EXPO's "
                            "and PA-RL's optimizer moments within 300 steps); set policy.normalize_obs=true")
            self.reset_obs_counted = True  # the on-policy runner's first rollout holds them again
        # a resume keeps the rows up to its checkpoint; a restart (resume= of a run with no checkpoint) none
        resume_step = self.step if resume_from else (0 if cfg.get("resume") else None)
        self.metrics = MetricsWriter(self.run_dir, cfg.log.tensorboard, resume_step=resume_step)
        if resume_step is not None:  # the summary of the segment that ended ("completed" at the old steps, or
            # "interrupted"): not this one's, which writes its own when it ends; a resume killed on the way (SIGKILL,
            # a power loss) leaves none, as a run in progress has none (robo-rl compare reads it so)
            (self.run_dir / "summary.json").unlink(missing_ok=True)
        label = f"{cfg.algo.name} {self.env.task_id}"
        progress = Progress(label, self.planned_steps, cfg.log.progress_seconds, self.step)
        next_log = (self.step // cfg.log.every + 1) * cfg.log.every
        next_eval = (self.step // cfg.eval.every + 1) * cfg.eval.every
        next_ckpt = (self.step // cfg.checkpoint.every + 1) * cfg.checkpoint.every
        t_start = time.perf_counter()
        paused = 0.0  # seconds of this segment spent in evaluations and checkpoints
        self._segment_start_step = self.step
        status = "completed"
        try:
            with StopOnSignal() as stop:
                self._stop = stop
                self.learner.stop_requested = (  # type: ignore[method-assign]
                    lambda: stop.signum is not None and self.may_defer())
                if self.step < self.total_steps:
                    self.check_reset_obs_finite()  # the run's first, or a resume's without simulator state
                while self.step < self.total_steps:
                    self.deferred_work()  # e.g. a GoRL refit a signal interrupted
                    if self.eval_pending and stop.signum is None:  # the evaluation a signal cut short, at this step
                        t_pause = time.perf_counter()
                        self._evaluate(self.wall_time + t_pause - t_start, may_stop=True)
                        paused += time.perf_counter() - t_pause
                    if stop.signum is not None:  # (the deferred work or the evaluation gave way to a signal again)
                        status, stopped = self._interrupted(stop.signum, t_start)
                        raise stopped
                    start_step = self.step
                    try:
                        self.iterate()
                    except WorkerDied:
                        if stop.signum is None:
                            raise
                        # the signal reached the env's worker processes too (a job scheduler signals every process
                        # of the job) and they died under this iteration: it is dropped, and the checkpoint keeps
                        # the rest without the simulator state (the resume starts new episodes)
                        self.step = start_step
                        status, stopped = self._interrupted(stop.signum, t_start)
                        raise stopped from None
                    self.iteration += 1
                    now_wall = self.wall_time + time.perf_counter() - t_start
                    if self.step >= next_log or self.step >= self.total_steps:  # (the last interval gets its row)
                        if self.held_update is None:
                            self._write_row(now_wall, t_start)
                        else:  # its update's work gave way to a signal: the row waits for it (deferred_work)
                            self.row_due = True
                        next_log = (self.step // cfg.log.every + 1) * cfg.log.every
                    t_pause = time.perf_counter()
                    if self.step >= next_eval:
                        self._evaluate(now_wall, may_stop=True)  # (gives way to a signal: the resume does it)
                        next_eval = (self.step // cfg.eval.every + 1) * cfg.eval.every
                    if self.step >= next_ckpt:
                        self.save(time.perf_counter() - t_start)
                        next_ckpt = (self.step // cfg.checkpoint.every + 1) * cfg.checkpoint.every
                    paused += time.perf_counter() - t_pause  # the ETA leaves evaluations and checkpoints out of the pace
                    last_eval = self.eval_history[-1] if self.eval_history else None
                    if self.step < self.total_steps:  # the last step's line is the closing one, after the loop: a
                        # periodic line here came after the final evaluation and save (eval.every dividing steps, the
                        # default) and showed their time as the pace ("3 steps/s" just before "done: ... 118 steps/s")
                        progress.maybe_print(
                            self.step, mean_of(self.recent_returns),
                            (last_eval["return_mean"], last_eval["return_std"]) if last_eval else None,
                            recent_cost=mean_of(self.recent_costs) if self.recent_costs else None, paused=paused,
                        )
                    if stop.signum is not None:
                        status, stopped = self._interrupted(stop.signum, t_start)
                        raise stopped
                # still under the handler: a signal during the final evaluation or save waits for them, as one
                # in the loop waits for its iteration (it used to kill the run, losing the steps since the
                # last checkpoint, or read as a second Ctrl-C)
                elapsed = self.wall_time + time.perf_counter() - t_start
                # a finished run resumed from a checkpoint saved before closing rows were written gets its row
                closing = self._row_start_step != self.step
                if closing:
                    self._write_row(elapsed, t_start)
                t_pause = time.perf_counter()
                if self._last_eval_step != self.step:
                    self._evaluate(elapsed)
                # the final evaluation may come after a checkpoint at the same step: save again so it is kept
                # (a resume would otherwise drop it from eval_history and the best-eval summary, or repeat it)
                if closing or self._last_ckpt_step != self.step or self._last_ckpt_evals != len(self.eval_history):
                    self.save(time.perf_counter() - t_start)
                paused += time.perf_counter() - t_pause
                if stop.signum is not None:
                    log.info(f"{signal.Signals(stop.signum).name} arrived after the last training step: the run is "
                             f"complete and its final checkpoint {self._last_checkpoint} is saved")
            progress.maybe_print(self.step, mean_of(self.recent_returns),
                                 (self.eval_history[-1]["return_mean"], self.eval_history[-1]["return_std"]), force=True,
                                 recent_cost=mean_of(self.recent_costs) if self.recent_costs else None, paused=paused)
        except Interrupted:
            raise
        except KeyboardInterrupt:  # a second Ctrl-C while the first one's checkpoint was pending: no new one
            where = f"the last checkpoint is {self._last_checkpoint}" if self._last_checkpoint else "no checkpoint was written"
            status = f"aborted by a second SIGINT at step {self.step:,} ({where})"
            log.info(f"{status}" + (f"; continue with: robo-rl train {shlex.quote(f'resume={self.run_dir}')}"
                                    if self._last_checkpoint else ""))
            raise
        except (OSError, CheckpointWriteError) as exc:  # a full disk, a permission lost mid-run
            if isinstance(exc, OSError) and not is_write_failure(exc):  # e.g. a worker process's broken pipe
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
        except BaseException as exc:  # e.g. Terminated (a SIGTERM outside the loop's own handler): not "completed"
            status = f"stopped: {type(exc).__name__}"
            raise
        finally:
            self.learner.__dict__.pop("stop_requested", None)  # back to the default: this run's signals are done
            self._stop = None
            elapsed = self.wall_time + time.perf_counter() - t_start
            try:
                # a signal now (often a repeat of the one that stopped the run: `kill` twice, a scheduler's second
                # SIGTERM) waits for the summary: outside the loop's handler it cut the write short or killed the run
                with StopOnSignal("writing the run's summary, then stopping"):
                    summary = self._finish(elapsed, status, t_start)
            except OSError as exc:  # the disk that stopped the run may refuse the summary too
                if status == "completed":
                    error = RunWriteError(f"training completed, but writing {exc.filename or 'summary.json'} failed "
                                          f"({exc.strerror or exc}); the final checkpoint is {self._last_checkpoint}")
                    try:  # a summary that says so, where it can still be written (TensorBoard's events failed)
                        self._finish(elapsed, f"failed: {error}", t_start)
                    except OSError:
                        pass
                    raise error from exc
                log.warning(f"could not write the run's summary either ({exc.strerror or exc})")
        return summary

    def _write_row(self, wall: float, t_start: float) -> None:
        if not self._resolution_checked:  # once, on the statistics of the first log interval
            self._resolution_checked = True
            self.warn_coarse_observations()
        segment = time.perf_counter() - t_start
        trained = self.step - self._segment_start_step
        scalars: dict[str, float] = {
            # left empty in the closing row a resume of a complete run writes: it trained no step, and 0 read as a
            # rate (the interval's steps were trained before the resume, at a pace the checkpoint does not hold)
            **({"time/steps_per_s": trained / max(segment, 1e-9)} if trained else {}),
            "time/updates": float(self.num_updates),
            "rollout/episodes": float(self.episodes),
            "rollout/diverged_resets": float(self.diverged),
        }
        if self.recent_returns:
            scalars["rollout/ep_return_mean"] = mean_of(self.recent_returns)  # type: ignore[assignment]
            scalars["rollout/ep_length_mean"] = mean_of(self.recent_lengths)  # type: ignore[assignment]
        if self.recent_costs:
            scalars["rollout/ep_cost_mean"] = mean_of(self.recent_costs)  # type: ignore[assignment]
        if self.env.chain is not None:
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

    def warn_coarse_observations(self) -> None:
        """A warning naming the observation dimensions that sit so far from 0 for their spread that float32 loses
        their variation (``coarse_dimensions``): normalization, in the policy, comes after that cast."""
        obs_norm = self.policy.obs_norm
        coarse = coarse_dimensions(obs_norm.stats) if obs_norm.enabled else []
        if not coarse:
            return
        dim, mean, std, step = coarse[0]
        more = f" (and {len(coarse) - 1} more: {', '.join(str(c[0]) for c in coarse[1:6])}{', ...' if len(coarse) > 6 else ''})"
        log.warning(f"{self.env.task_id}'s observation dimension {dim}{more if len(coarse) > 1 else ''} sits far from 0 "
                    f"for its spread: about {mean:.4g} with std {std:.3g}, where float32 (the observations' type) steps "
                    f"by {step:.3g}, so the networks see its variation in a few float32 steps or not at all, and "
                    "normalizing cannot bring the lost digits back. Subtract the offset in the task (relative "
                    "coordinates, e.g. with gymnasium.wrappers.TransformObservation) so its values lie near 0; a "
                    "dimension that is truly constant can be ignored")

    def _evaluate(self, wall: float, may_stop: bool = False) -> None:
        """The evaluation at this step, recorded in eval_history and the metrics. ``may_stop``: a periodic one, which
        gives way to a SIGINT/SIGTERM between env steps (eval.episodes x a long time limit can take minutes): it is
        then not recorded, and ``eval_pending`` makes the resumed run do it first (as this run would have). The final
        evaluation does not give way (the run then ends complete)."""
        cfg = self.cfg.eval
        seed = int(self.cfg.seed) + EVAL_SEED_OFFSET + self.step
        stop = self._stop if may_stop else None
        t0 = time.perf_counter()
        stopped = None
        try:
            result = evaluate(self.policy, self.eval_env, int(cfg.episodes), bool(cfg.deterministic), seed=seed,
                              stop=(lambda: stop.signum is not None) if stop is not None else None)
        except FloatingPointError as exc:  # a NaN from the evaluation env or the policy: stop like any other
            self._fail(f"{exc} in the evaluation at step {self.step:,}")
        except EvaluationNotFinished as exc:
            raise EvaluationNotFinished(f"{exc} (eval.episodes={cfg.episodes}; the evaluation at step {self.step:,})") from None
        except EvaluationStopped as exc:
            stopped = exc
        except Exception as exc:  # the evaluation env's own error (the task's code), as one in a training step; the
            # policy's and the evaluation's own errors are raised as they are
            if not_the_envs_own(exc) or not raised_in_step_or_reset(exc, self.eval_env):
                raise
            raise self._env_failed(f"{self.env.task_id}: the evaluation at step {self.step:,} raised "
                                   f"{type(exc).__name__}: {exc}") from exc
        self.eval_seconds += time.perf_counter() - t0
        if self.shared_eval:  # the evaluation stepped (and reset) the training envs: they start new episodes
            self.obs = self.env.reset(seed=int(self.cfg.seed) + self.step)
            self.check_reset_obs_finite()
            self.episodes_restarted()
        self.eval_pending = stopped is not None
        if stopped is not None:  # no mean of the episodes that ended first (the short ones) recorded as an evaluation
            name = signal.Signals(stop.signum).name  # type: ignore[union-attr]
            log.info(f"  eval at step {self.step:,} cut short by {name} after {stopped.finished} of {stopped.episodes} "
                     "episodes: not recorded (the resumed run evaluates at this step first)")
            return
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
                 f"over {result['episodes']} episode{'' if result['episodes'] == 1 else 's'} "
                 f"(length {result['length_mean']:.0f}){cost_text}")

    def _finish(self, elapsed: float, status: str, t_start: float) -> dict[str, Any]:
        metrics = getattr(self, "metrics", None)
        if metrics is not None:
            try:
                metrics.close()
            except OSError:  # TensorBoard's writer failed (a full disk): a completed run reports it (and the failed
                if status == "completed":  # summary follows); one that failed already still writes its summary
                    raise
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
            **({"filter_interventions": self.interventions} if self.env.chain is not None else {}),
            "best_eval_return_mean": best["return_mean"] if best else None,
            "best_eval_return_std": best["return_std"] if best else None,
            "best_eval_step": best["step"] if best else None,
            # absolute, however the run directory was named (run_dir=, or resume= with a relative path)
            "last_checkpoint": str(Path(self._last_checkpoint).absolute()) if self._last_checkpoint else None,
            # the evaluation at this step gave way to the signal that stopped the run (final_eval_* are the one before)
            **({"eval_cut_short_step": self.step} if self.eval_pending else {}),
        }
        write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        if self.cfg.log.plot and metrics is not None:
            try:
                plot_learning_curve(metrics.rows, self.run_dir / "learning_curve.png",
                                    f"{self.cfg.algo.name} on {self.env.task_id} (seed {self.cfg.seed})")
            except Exception as exc:  # a plotting problem must not hide the run's result
                log.warning(f"could not draw the learning curve: {exc}")
        if status == "completed":
            log.info(f"done: {self.step:,} steps in {format_duration(elapsed)} ({self.step / max(elapsed, 1e-9):,.0f} steps/s; "
                     f"{len(self.eval_history)} evaluation{'s' if len(self.eval_history) != 1 else ''} took "
                     # under a minute to the tenth of a second: "took 0:00" read as nothing, summary.json said 0.74 s
                     + (f"{self.eval_seconds:.1f} s" if self.eval_seconds < 60 else format_duration(self.eval_seconds))
                     + (f", after {format_duration(self.pretrain_seconds)} of pretraining on demonstrations"
                        if self.pretrain_seconds else "") + "); "
                     f"final eval return {format_return(summary['final_eval_return_mean'], summary['final_eval_return_std'])}; "
                     f"outputs in {self.run_dir}")
        return summary
