"""The checkpoint half of a runner: what a checkpoint holds (learner, counters, RNGs, env and filter state, the
config as trained), saving it, and resuming from the newest checkpoint that fits this run.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import OmegaConf

from envs.base import WorkerDied
from robo_rl.checkpoint import (CheckpointError, NonFiniteStateError, checkpoint_step, latest_checkpoint,
                                list_checkpoints, load_checkpoint, save_checkpoint)

log = logging.getLogger("robo_rl")


class RunnerCheckpoints:
    """Mixed into ``Runner`` (runners/base.py), whose attributes it reads and sets: ``state``/``save`` write a
    checkpoint of the run, ``restore`` continues one."""

    def state(self, segment_seconds: float) -> dict[str, Any]:
        try:
            env_state = self.env.state_dict()
        except WorkerDied as exc:  # e.g. a SIGTERM to the whole job reached the async env's worker processes too
            log.warning(f"{exc}; the checkpoint keeps the learner, replay and counters without the simulator state "
                        "(a resume starts new episodes)")
            env_state = None
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
                "eval_pending": self.eval_pending,  # the evaluation at this step gave way to a signal: do it first
                # the next metrics row's running sums, so that a resumed run logs that row as an unbroken one
                # would (plain floats: float32 sums survive JSON exactly)
                "row": {"start_step": self._row_start_step, "interventions": self._row_interventions,
                        "metric_sums": [{"keys": list(keys), "total": total.tolist(), "n": n}
                                        for keys, (total, n) in self._acc.items()],
                        # an update whose work (a GoRL refit) gave way to the signal: its metrics, and whether its
                        # row is due, wait for the resumed run to do that work (Runner.deferred_work)
                        "held_update": None if self.held_update is None else
                        {k: float(v.detach().to("cpu", torch.float32)) for k, v in self.held_update.items()},
                        "due": self.row_due},
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
            "env": env_state,
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
                self._check_config(candidate, state, candidates[i + 1:])  # an edited config.yaml: no fallback
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

    def _check_config(self, path: Path, state: dict[str, Any], older: list[Path]) -> None:
        """Refuse a resume whose config.yaml was edited since ``path`` was saved (keys a resume may not change): a
        ConfigError, no fallback. Unless an ``older`` checkpoint records config.yaml's config: then ``path`` is the odd
        one, another run's copied in, and is a CheckpointError (the resume falls back past it)."""
        from robo_rl.runs import config_edits, describe_config_edits
        from robo_rl.train import RESUME_OVERRIDABLE
        from robo_rl.validation import ConfigError

        edits = config_edits(self.cfg, state.get("config"), RESUME_OVERRIDABLE)
        if edits and any(self._records_this_config(p) for p in older):
            raise CheckpointError(f"checkpoint {path} is another run's: {describe_config_edits(edits)}, and older "
                                  "checkpoints here record config.yaml's config; remove it")
        if edits:
            raise ConfigError(f"{self.run_dir / 'config.yaml'} was edited since checkpoint {path} was saved: "
                              f"{describe_config_edits(edits)}; a resume may change only "
                              f"{', '.join(sorted(RESUME_OVERRIDABLE - {'resume', 'run_dir'}))}. "
                              "Put the file back as it was, or start a new run to change them.")

    def _records_this_config(self, path: Path) -> bool:
        """Whether checkpoint ``path`` loads and records this run's config (as config.yaml holds it)."""
        from robo_rl.runs import config_edits
        from robo_rl.train import RESUME_OVERRIDABLE

        try:
            state, _ = load_checkpoint(path, load_replay=False)
        except CheckpointError:
            return False
        saved = state.get("config") if isinstance(state, dict) else None
        return isinstance(saved, dict) and not config_edits(self.cfg, saved, RESUME_OVERRIDABLE)

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
            for keys, (total, n) in self._acc.items():  # a sum per key: the next update's metrics add to it
                if not all(isinstance(k, str) for k in keys) or total.shape != (len(keys),) or n < 1:
                    raise ValueError(f"row.metric_sums holds {total.tolist()!r:.80} over {n} update(s) for the "
                                     f"{len(keys)} metric(s) {list(keys)!r:.80}")
            held = row.get("held_update")  # (not in checkpoints before 2026-12-07: none was held then)
            if held is not None and not (isinstance(held, dict) and all(
                    isinstance(k, str) and isinstance(v, (int, float)) for k, v in held.items())):
                raise ValueError(f"row.held_update is {held!r:.80}, expected metric names with numbers")
            self.held_update = None if held is None else {
                k: torch.tensor(v, dtype=torch.float32, device=self.device) for k, v in held.items()}
            self.row_due = bool(row.get("due", False))
            history = r["eval_history"]
            if not isinstance(history, list) or not all(
                    isinstance(e, dict) and all(isinstance(e.get(k), (int, float)) for k in ("step", "return_mean", "return_std"))
                    for e in history):
                raise TypeError(f"eval_history is {history!r:.80}, expected a list of evaluations")
            self.eval_history = list(history)
            self._last_eval_step = self.eval_history[-1]["step"] if self.eval_history else -1
            self.eval_pending = r.get("eval_pending", False)  # (not in checkpoints before 2026-12-06)
            if not isinstance(self.eval_pending, bool):
                raise TypeError(f"eval_pending is {self.eval_pending!r:.80}, expected true or false")
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
                log.warning(f"{self.env.task_id}: simulator state was not saved (this env cannot capture it, "
                            "or its worker processes were gone when the checkpoint was written); environments start "
                            "new episodes on resume")
                self.obs = self.env.reset(seed=int(self.cfg.seed) + self.step)
                self.episodes_restarted()
            part = "its replay buffer (replay.npz)"
            if replay is not None:
                self.load_replay_state(replay)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError, OverflowError) as exc:
            raise CheckpointError(f"checkpoint {path} cannot be resumed: {part} does not fit this run "
                                  f"({type(exc).__name__}: {str(exc):.300})") from None

    def restore(self, path: Path, check: Callable[[], None] | None = None) -> None:
        """Continue from checkpoint ``path`` (or the newest older one that loads, see ``_load_resumable``). ``check``:
        called once the checkpoint is loaded (``self.step``, ``self._last_checkpoint`` set), before the restore is
        announced; what it raises stops the resume (train's refusal of a ``steps`` below the checkpoint's)."""
        state, replay, path = self._load_resumable(path)
        self._restored = True
        self._last_checkpoint = Path(path)
        if check is not None:
            check()
        if replay is None and self.learner.kind == "off_policy":
            log.warning("the checkpoint holds no replay buffer (checkpoint.save_replay=false): the resumed run "
                        f"acts with its policy without updating until replay holds algo.learning_starts "
                        f"({int(self.cfg.algo.learning_starts):,}) transitions again")
        self._last_ckpt_step = self.step
        self._last_ckpt_evals = len(self.eval_history)
        log.info(f"resumed from {path} at step {self.step:,}")


def find_resume_checkpoint(run_dir: Path) -> Path:
    path = latest_checkpoint(run_dir / "checkpoints", warn=log.warning)
    if path is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint to resume from; start a new run instead")
    return path


