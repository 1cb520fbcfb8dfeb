"""Whole runs in-process: outputs, determinism, exact resume, NaN handling, signals."""

import csv
import json
import logging
import math
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch

from robo_rl.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint
from robo_rl.runners.stopping import Interrupted, NonFiniteError
from robo_rl.validation import ConfigError
from robo_rl.runs import RunDirBusy, run_dir_lock
from robo_rl.train import compose_config, train
from tests.helpers import FAST, compose, rewrite_consistently

SMALL_SAC = (
    "algo=sac", "env=pendulum", "algo.learning_starts=200", "algo.batch_size=64", "algo.critic_hidden=[32,32]",
    "policy.hidden_sizes=[32,32]", "eval.episodes=2", "eval.num_envs=2", *FAST,
)
SMALL_PPO = (
    "algo=ppo", "env=pendulum", "env.num_envs=4", "algo.rollout_steps=32", "algo.minibatch_size=32",
    "algo.epochs=2", "eval.episodes=2", "eval.num_envs=2", *FAST,
)


def final_weights(run_dir):
    state, _ = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"), load_replay=False)
    return state["learner"]["modules"], state["learner"]["optimizers"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_run_writes_every_output(tmp_path):
    # seed 2: the first evaluation (step 300) scores higher than the last, so "best" is not just the final one
    cfg = compose(*SMALL_SAC, "steps=600", "eval.every=300", "checkpoint.every=300", "seed=2",
                  "log.tensorboard=true", "log.plot=true")
    summary = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "summary.json", "learning_curve.png", "train.log"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    saved = json.loads((run / "summary.json").read_text())
    assert saved["steps"] == 600 and saved["status"] == "completed" and saved["steps_per_s"] > 0
    assert saved["final_eval_return_mean"] == summary["final_eval_return_mean"]
    with open(run / "metrics.csv", newline="") as f:
        evals = [(float(r["eval/return_mean"]), float(r["eval/return_std"]), int(float(r["step"])))
                 for r in csv.DictReader(f) if r["eval/return_mean"]]
    assert [step for *_, step in evals] == [300, 600]
    best = max(evals)  # the best evaluation's mean, std and step, as logged
    assert (saved["best_eval_return_mean"], saved["best_eval_return_std"], saved["best_eval_step"]) == best
    assert (saved["final_eval_return_mean"], saved["final_eval_return_std"], saved["final_eval_step"]) == evals[-1]
    assert 0 < saved["eval_time_s"] < saved["wall_time_s"]  # two evaluations, timed apart from training
    took = re.search(r"2 evaluations took (\d+\.\d) s\b", (run / "train.log").read_text())  # not "0:00" for 0.74 s
    assert took and float(took[1]) == pytest.approx(saved["eval_time_s"], abs=0.051)
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "eval/return_mean" in header and "train/critic_loss" in header and "rollout/ep_return_mean" in header
    assert len(list_checkpoints(run / "checkpoints")) == 2


def test_the_last_interval_gets_its_row(tmp_path):
    # 350 steps logged every 100: rows at 100, 200, 300 and a closing one at 350 with the last 50 steps' updates
    cfg = compose(*SMALL_SAC, "steps=350", "log.every=100", "eval.every=350", "checkpoint.every=350")
    train(cfg, tmp_path / "run")
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["time/updates"]]
    assert [float(r["step"]) for r in rows] == [100, 200, 300, 350]
    assert rows[-1]["train/critic_loss"] and float(rows[-1]["time/updates"]) > float(rows[-2]["time/updates"])
    # the final checkpoint holds the closed row: resuming the finished run writes it again nowhere
    before = logged_metrics(tmp_path / "run")
    run = tmp_path / "run"
    train(compose(f"resume={run}"), tmp_path / "unused", [f"resume={run}"])
    assert logged_metrics(run) == before


def test_same_seed_same_updates_other_seed_different(tmp_path):
    overrides = (*SMALL_SAC, "steps=400", "checkpoint.every=400", "eval.every=400")
    train(compose(*overrides, "seed=1"), tmp_path / "a")
    train(compose(*overrides, "seed=1"), tmp_path / "b")
    train(compose(*overrides, "seed=2"), tmp_path / "c")
    wa, _ = final_weights(tmp_path / "a")
    wb, _ = final_weights(tmp_path / "b")
    wc, _ = final_weights(tmp_path / "c")
    assert_same_weights(wa, wb)
    assert not torch.equal(wa["policy.net.0.weight"], wc["policy.net.0.weight"])


def test_the_final_evaluation_does_not_depend_on_how_often_the_run_evaluated(tmp_path):
    # the evaluation episodes were seeded by the number of evaluations before: the same training (bit-identical
    # weights) reported another final return when eval.every changed. They are seeded by the step now.
    overrides = (*SMALL_SAC, "steps=400", "checkpoint.every=400", "eval.episodes=3", "eval.num_envs=3")
    often = train(compose(*overrides, "eval.every=100"), tmp_path / "often")
    once = train(compose(*overrides, "eval.every=400"), tmp_path / "once")
    assert_same_weights(final_weights(tmp_path / "often")[0], final_weights(tmp_path / "once")[0])
    assert often["final_eval_step"] == once["final_eval_step"] == 400
    assert often["final_eval_return_mean"] == once["final_eval_return_mean"]


def resumed_at(run_dir):
    """The step train.log's last "resumed from <checkpoint> at step N" line names."""
    line = [ln for ln in (run_dir / "train.log").read_text().splitlines() if "resumed from" in ln][-1]
    return int(line.rsplit("at step ", 1)[1].replace(",", ""))


def interrupt_at_update(monkeypatch, learner_cls, n):
    """Deliver SIGINT to this process from inside the n-th learner update."""
    original = learner_cls.update
    calls = {"n": 0}

    def update(self, batch):
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(signal.SIGINT)
        return original(self, batch)

    monkeypatch.setattr(learner_cls, "update", update)
    return lambda: monkeypatch.setattr(learner_cls, "update", original)


@pytest.mark.parametrize("algo", ["sac", "sac-filtered", "sac-compiled", "ppo", "ppo-randomized"])
def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, monkeypatch, algo):
    if algo.startswith("sac"):
        from robo_rl.learners.sac import SAC as cls

        overrides, steps, stop_at = SMALL_SAC, 800, 237
        if algo == "sac-filtered":  # a rate limit remembers each copy's previous command across the resume
            overrides = (*SMALL_SAC, "safety=box")
        elif algo == "sac-compiled":  # the fused step's compiled C++ graphs: the same in every process
            overrides = (*SMALL_SAC, "compile=true")
    elif algo == "ppo-randomized":  # batched MuJoCo backend with domain randomization, noise and delay
        from robo_rl.learners.ppo import PPO as cls

        overrides = (*SMALL_PPO, "env=inverted_pendulum", "randomize=strong", "env.backend=mujoco")
        steps, stop_at = 1024, 3
    else:
        from robo_rl.learners.ppo import PPO as cls

        overrides, steps, stop_at = (*SMALL_PPO, "env.normalize_reward=true", "policy.normalize_obs=true"), 1024, 3
    common = (*overrides, f"steps={steps}", "eval.every=256", "checkpoint.every=256", "log.every=64")
    train(compose(*common), tmp_path / "full")

    restore = interrupt_at_update(monkeypatch, cls, stop_at)
    with pytest.raises(Interrupted) as exc:
        train(compose(*common), tmp_path / "cut")
    restore()
    assert exc.value.signum == signal.SIGINT and "resume=" in str(exc.value)
    assert "interrupted by SIGINT at step" in (tmp_path / "cut" / "train.log").read_text()  # not only on the console
    cut_at = json.loads((tmp_path / "cut" / "summary.json").read_text())["steps"]
    assert 0 < cut_at < steps
    if algo == "ppo-randomized":  # the start-up log says the training envs are randomized, and how
        assert "domain randomization of the training envs: body_mass_scale=[0.7, 1.3]" in (
            tmp_path / "cut" / "train.log").read_text()
    train(compose(f"resume={tmp_path / 'cut'}"), tmp_path / "unused", [f"resume={tmp_path / 'cut'}"])
    # it continued from the checkpoint (a run restarted from step 0 with the same seed would end equal too)
    assert resumed_at(tmp_path / "cut") == cut_at

    full_w, full_opt = final_weights(tmp_path / "full")
    cut_w, cut_opt = final_weights(tmp_path / "cut")
    assert_same_weights(full_w, cut_w)  # bit-identical: RNGs, replay, env state, normalizers restored
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["steps"] == steps
    # and so is the log: the row after the resume too (its running sums are in the checkpoint), timings aside
    assert logged_metrics(tmp_path / "cut") == logged_metrics(tmp_path / "full")


def logged_metrics(run_dir):
    """metrics.csv without its timing columns."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "wall_time" and not k.startswith("time/steps_per_s")}
                for row in csv.DictReader(f)]


@pytest.mark.parametrize("utd, num_envs", [(0.3, 2), (0.1, 1), (0.7, 3), (1 / 3, 3), (0.05, 4)])
def test_fractional_update_credit_makes_exactly_utd_updates_per_step(utd, num_envs):
    from robo_rl.runners.off_policy import add_update_credit
    credit, updates = 0.0, 0
    for iteration in range(1, 1001):
        credit = add_update_credit(credit, utd * num_envs)
        while credit >= 1.0:
            updates, credit = updates + 1, credit - 1.0
        exact = utd * num_envs * iteration
        assert updates == math.floor(exact + 1e-9), iteration  # a plain float sum falls one short (0.3 x 2: at 5)
    assert add_update_credit(0.25, 0.5) == 0.75  # not near a whole number: left as it is


def test_resume_without_replay_refills_before_updating(tmp_path, monkeypatch):
    from robo_rl.storage.replay import ReplayBuffer

    common = (*SMALL_SAC, "checkpoint.every=300", "checkpoint.save_replay=false")  # learning_starts=200
    train(compose(*common, "steps=300"), tmp_path / "run")
    sizes = []
    sample = ReplayBuffer.sample
    monkeypatch.setattr(ReplayBuffer, "sample", lambda self, n: sizes.append(len(self)) or sample(self, n))
    resume = [f"resume={tmp_path / 'run'}", "steps=500"]
    train(compose(*resume), tmp_path / "unused", resume)
    assert "acts with its policy without updating until replay holds" in (tmp_path / "run" / "train.log").read_text()
    # updates resume once replay again holds learning_starts rows (before the fix: from its first row)
    assert sizes and min(sizes) == 200 and len(sizes) == 500 - 300 - 200 + 1


def test_the_final_evaluation_is_kept_in_the_last_checkpoint(tmp_path):
    # the final evaluation (step 500, not a multiple of eval.every) follows the checkpoint at step 500
    run = tmp_path / "run"
    train(compose(*SMALL_SAC, "steps=500", "eval.every=300", "checkpoint.every=250"), run)
    state, _ = load_checkpoint(latest_checkpoint(run / "checkpoints"), load_replay=False)
    assert [e["step"] for e in state["runner"]["eval_history"]] == [300, 500]
    rows = (run / "metrics.csv").read_text().count("\n")
    train(compose(f"resume={run}"), tmp_path / "unused", [f"resume={run}"])  # already complete: no second final eval
    assert (run / "metrics.csv").read_text().count("\n") == rows


def test_a_longer_steps_on_resume_is_kept_by_the_next_resume_and_reaches_python(tmp_path):
    from robo_rl.train import compose_config

    run = tmp_path / "run"
    train(compose(*SMALL_SAC, "steps=300", "checkpoint.every=100"), run)
    # from Python: compose_config's steps is the one a resume takes (no command line to read it from)
    train(compose_config([f"resume={run}", "steps=400"]), run)
    assert json.loads((run / "summary.json").read_text())["steps"] == 400
    # the config on disk says 400 now: a plain resume (e.g. after an interrupt) does not end the run early
    assert "steps: 400" in (run / "config.yaml").read_text() and "resume: null" in (run / "config.yaml").read_text()
    resume = [f"resume={run}", "steps=500"]
    train(compose(*resume), tmp_path / "unused", resume)
    train(compose(f"resume={run}"), tmp_path / "unused", [f"resume={run}"])
    assert json.loads((run / "summary.json").read_text())["steps"] == 500
    # a shorter steps "completed" the run at once and wrote steps: 300 to config.yaml beside a 500-step summary
    shorter = [f"resume={run}", "steps=300"]
    from tests.helpers import robo_rl_records

    with robo_rl_records(logging.INFO) as records, pytest.raises(
            ConfigError, match=r"^steps=300: resume=.* has trained 500 steps \(the checkpoint it continues from, "
                               r"step_0000000500\), and a resume cannot shorten a run; give steps >= 500"):
        train(compose(*shorter), tmp_path / "unused", shorter)
    lines = [r.getMessage() for r in records]
    assert lines and not any(line.startswith("resumed from") for line in lines)  # refused before it is announced
    assert "steps: 500" in (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="continues the run in its own directory"):
        train(compose(f"resume={run}", f"run_dir={tmp_path / 'elsewhere'}"), tmp_path / "elsewhere",
              [f"resume={run}", f"run_dir={tmp_path / 'elsewhere'}"])


def test_a_resume_on_a_machine_without_the_runs_device_does_not_advise_changing_it(tmp_path):
    # a run trained on cuda, resumed where there is none (or fewer GPUs): the error said "use device=cpu", which the
    # resume then refused ("device cannot change on resume")
    from omegaconf import OmegaConf

    from robo_rl.defaults import resolve_defaults
    from robo_rl.train import prepare

    run = tmp_path / "run"
    run.mkdir()
    OmegaConf.save(resolve_defaults(compose("algo=sac", "env=pendulum", "device=cuda:99")), run / "config.yaml")
    with pytest.raises(ConfigError) as caught:
        prepare(compose(f"resume={run}"), run, [f"resume={run}"])
    assert str(caught.value).startswith("device=cuda:99: ") and "use device=cpu" not in str(caught.value)
    assert str(caught.value).endswith(f"; resume={run} continues the run on the device it trained on: resume it on a "
                                      f"machine that has it (robo-rl eval run_dir={run} device=cpu and robo-rl export "
                                      "read it on this one)")
    with pytest.raises(ConfigError, match="device cannot change on resume"):  # (why the advice had to change)
        prepare(compose(f"resume={run}", "device=cpu"), run, [f"resume={run}", "device=cpu"])


def test_a_resume_removes_the_summary_of_the_segment_it_continues(tmp_path, monkeypatch):
    # the summary said "completed" at step 300 while the extended run trained on: a resume killed on the way (SIGKILL,
    # a power loss) left it so, and robo-rl compare reported a completed 300-step run with the old final return
    from robo_rl.runners.base import Runner

    run = tmp_path / "run"
    train(compose(*SMALL_SAC, "steps=300", "eval.every=300", "checkpoint.every=300"), run)
    with pytest.raises(ConfigError):  # a refused resume changes nothing
        train(compose(f"resume={run}", "algo.batch_size=128"), tmp_path / "unused", [f"resume={run}", "algo.batch_size=128"])
    assert json.loads((run / "summary.json").read_text())["steps"] == 300
    seen = []
    evaluate = Runner._evaluate

    def spy(self, wall, **kwargs):
        seen.append((self.step, (run / "summary.json").exists()))
        return evaluate(self, wall, **kwargs)

    monkeypatch.setattr(Runner, "_evaluate", spy)
    resume = [f"resume={run}", "steps=400"]
    train(compose(*resume), tmp_path / "unused", resume)
    assert seen == [(400, False)]  # while the resumed segment ran, no summary claimed the run
    saved = json.loads((run / "summary.json").read_text())
    assert (saved["status"], saved["steps"], saved["final_eval_step"]) == ("completed", 400, 400)


def test_the_closing_row_of_a_resume_that_trains_nothing_has_no_steps_per_second(tmp_path, monkeypatch):
    # interrupted at step 250 (its last row at 200), then resumed with steps=250: the run is complete and its
    # closing row (200-250) is written by a segment that trained no step; its time/steps_per_s read 0.0
    from robo_rl.learners.sac import SAC

    run = tmp_path / "run"
    restore = interrupt_at_update(monkeypatch, SAC, 51)  # updates start at step 200: the 51st is at step 250
    with pytest.raises(Interrupted):
        train(compose(*SMALL_SAC, "steps=400", "log.every=100", "eval.every=400", "checkpoint.every=400"), run)
    restore()
    summary = train(compose(f"resume={run}", "steps=250"), run, [f"resume={run}", "steps=250"])
    assert summary["status"] == "completed" and summary["steps"] == 250
    rows = [r for r in logged_rows(run) if r["eval/return_mean"] == ""]  # the training rows
    assert [r["step"] for r in rows] == ["100", "200", "250"]  # whole numbers, also in the rows a resume kept
    assert all(float(r["time/steps_per_s"]) > 0 for r in rows[:2])  # trained in the first segment
    assert rows[2]["time/steps_per_s"] == "" and rows[2]["time/updates"] == "51.0"


def logged_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_resume_falls_back_past_a_checkpoint_that_verifies_but_cannot_be_loaded(tmp_path):
    run = tmp_path / "run"
    train(compose(*SMALL_SAC, "steps=300", "checkpoint.every=100", "checkpoint.keep=5"), run)
    newest, older = list_checkpoints(run / "checkpoints")[-1], list_checkpoints(run / "checkpoints")[-2]
    # the newest's state.json names a tensor its state.safetensors lacks; the one before has a weight of the wrong shape
    text = (newest / "state.json").read_text()
    rewrite_consistently(newest, "state.json", text.replace('"__tensor__": "', '"__tensor__": "gone.', 1))
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(older / "state.safetensors"))
    weight = next(k for k, v in tensors.items() if k.startswith("learner.modules.") and v.dim() == 2)
    tensors[weight] = torch.zeros(3, 3)
    save_file(tensors, str(older / "state.safetensors"))
    rewrite_consistently(older, "state.safetensors", (older / "state.safetensors").read_bytes())
    config = (run / "config.yaml").read_text()
    summary = train(compose(f"resume={run}", "steps=400"), run, [f"resume={run}", "steps=400"])
    assert summary["steps"] == 400
    warned = (run / "train.log").read_text()  # the console says the same
    assert f"cannot resume from {newest.name}" in warned and "inconsistent" in warned
    assert f"cannot resume from {older.name}" in warned and "does not fit this run's sac learner" in warned
    assert "in the checkpoint, [32, 3] here" in warned  # the first weight of another shape, named
    assert f"resumed from {older.parent / 'step_0000000100'}" in warned
    # when none can be loaded, the resume fails naming each, and config.yaml keeps its steps
    for ckpt in list_checkpoints(run / "checkpoints"):
        rewrite_consistently(ckpt, "state.json", b'{"learner": {"__tensor__": "gone"}}')
    config = (run / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match="no checkpoint under .* can be resumed from"):
        train(compose(f"resume={run}", "steps=900"), run, [f"resume={run}", "steps=900"])
    assert (run / "config.yaml").read_text() == config


def test_nan_observation_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = compose(*SMALL_SAC, "env.id=robo_rl_test/NaNAfter-v0", "env.kwargs={after: 450}",
                  "steps=2000", "checkpoint.every=200", "eval.every=10000")
    with pytest.raises(NonFiniteError, match=r"non-finite observation from the environment at step 4[45]\d") as exc:
        train(cfg, tmp_path / "run")
    assert "step_0000000400" in str(exc.value) and "resume=" in str(exc.value)
    assert "start a new run in a new run_dir" in str(exc.value)  # a resume replays the same updates into the NaN
    assert "robo-rl: error: stopped: NonFiniteError: non-finite observation" in (tmp_path / "run" / "train.log").read_text()
    good = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert good.name == "step_0000000400"
    load_checkpoint(good)  # intact
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"].startswith("failed: non-finite observation")


@pytest.mark.parametrize("algo", ["sac", "ppo"])
def test_nan_final_observation_is_caught(tmp_path, algo):
    # the NaN is only in info["final_obs"] (the episode ends on it; the next observation is a clean reset):
    # replay would store it as s' and PPO bootstraps from it, so it must stop training like any other
    small = SMALL_SAC if algo == "sac" else ("algo=ppo", "env.num_envs=2", "algo.rollout_steps=64",
                                               "algo.minibatch_size=64", "algo.epochs=1", *FAST)
    cfg = compose(*small, "env.id=robo_rl_test/NaNAfter-v0", "env.kwargs={after: 30, where: final}", "steps=500")
    with pytest.raises(NonFiniteError, match="non-finite final observation from the environment at step"):
        train(cfg, tmp_path / "run")



@pytest.mark.parametrize("algo", ["sac", "ppo"])
def test_nan_reset_observation_is_caught(tmp_path, algo):
    # a reset's observation (the run's first, one after a shared evaluation or a resume without simulator state) is
    # no step's: SAC stored it in replay, wrote it into two checkpoints and stopped on a NaN critic loss from them;
    # PPO blamed diverged weights for the NaN actions it gave
    small = (("algo=sac", "algo.learning_starts=150", "algo.batch_size=32", "algo.critic_hidden=[16]") if algo == "sac"
             else ("algo=ppo", "env.num_envs=2", "algo.rollout_steps=32", "algo.minibatch_size=32", "algo.epochs=1"))
    cfg = compose(*small, "policy.hidden_sizes=[16]", "env.id=robo_rl_test/NaNAfter-v0", "env.kwargs={where: reset}",
                  "eval.episodes=1", "eval.num_envs=1", *FAST, "steps=300", "checkpoint.every=64", "eval.every=1000")
    with pytest.raises(NonFiniteError, match=r"^non-finite observation from the environment's reset\(\) at step 0; "
                                             "training stopped and no checkpoint was written yet"):
        train(cfg, tmp_path / "run")
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == []
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"].startswith("failed: non-finite observation from the environment's reset()")


def test_nan_reward_is_caught(tmp_path):
    cfg = compose(*SMALL_SAC, "env.id=robo_rl_test/NaNAfter-v0", "env.kwargs={after: 30, where: reward}", "steps=500")
    with pytest.raises(NonFiniteError, match="non-finite reward"):
        train(cfg, tmp_path / "run")


@pytest.mark.parametrize("fused", ["on", "off"])
def test_nan_loss_stops_training(tmp_path, monkeypatch, fused):
    from robo_rl.learners.offpolicy_fused import FusedSACStep
    from robo_rl.learners.sac import SAC

    # the loss each path computes (offpolicy_fused.py's hand-derived step, or the autograd one) turns NaN at update 51
    owner, name = (FusedSACStep, "critic_gradients") if fused == "on" else (SAC, "critic_loss")
    original = getattr(owner, name)

    def poisoned(self, batch, alpha):
        loss, *rest = original(self, batch, alpha)
        learner = self.sac if fused == "on" else self
        return (loss * float("nan") if int(learner.num_updates) >= 50 else loss, *rest)

    monkeypatch.setattr(owner, name, poisoned)
    with pytest.raises(NonFiniteError, match=r"non-finite critic_loss \(nan\) in update 51"):
        train(compose(*SMALL_SAC, "steps=600", "checkpoint.every=100", f"algo.fused={fused}"), tmp_path / "run")
    # the checkpoint written before the NaN is still complete and finite
    state, _ = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert all(torch.isfinite(v).all() for v in state["learner"]["modules"].values() if v.is_floating_point())


def test_progress_eta_follows_a_change_of_pace(monkeypatch, caplog):
    # an off-policy run's random-action warm-up runs ~10x faster than training: the ETA printed once
    # training has started must come from the training pace, not be pulled down by the warm-up's
    import logging

    from robo_rl import metrics

    clock = iter([0.0, 100.0, 200.0, 300.0])
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    progress = metrics.Progress("sac Hopper-v5", total_steps=10_000, every_seconds=60)
    with caplog.at_level(logging.INFO, logger=metrics.log.name):
        progress.maybe_print(5_000, None, None)  # warm-up: 50 steps/s
        progress.maybe_print(5_500, None, None)  # training: 5 steps/s, 4,500 steps left -> 15 min
        progress.maybe_print(6_000, None, None)  # same pace, 4,000 steps left
    etas = [line.rsplit("ETA ", 1)[1] for line in caplog.messages]
    assert etas == ["1:40", "15:00", "13:20"]


def test_progress_eta_is_not_thrown_by_an_evaluation(monkeypatch, caplog):
    # 100 steps/s of training; the second interval holds a 60 s evaluation (the runner passes the time spent in
    # evaluations and checkpoints): that line's ETA stays with the training pace plus the pauses' share so far,
    # where counting the interval whole restarted the ETA at 40 steps/s (2.5x too long)
    import logging

    from robo_rl import metrics

    clock = iter([0.0, 100.0, 200.0, 300.0])
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    progress = metrics.Progress("ppo Hopper-v5", total_steps=100_000, every_seconds=60)
    with caplog.at_level(logging.INFO, logger=metrics.log.name):
        progress.maybe_print(10_000, None, None)  # 100 steps/s: 90,000 steps left -> 15:00
        progress.maybe_print(14_000, None, None, paused=60.0)  # 40 s training + 60 s evaluation: 86,000 left
        progress.maybe_print(24_000, None, None, paused=60.0)  # 100 steps/s again: 76,000 left
    etas = [line.rsplit("ETA ", 1)[1] for line in caplog.messages]
    # 86,000 / 100 x (1 + 60 / 140) = 1228.6 s; 76,000 / 100 x (1 + 60 / 240) = 950 s
    assert etas == ["15:00", "20:28", "15:50"]  # counting the evaluation as training pace: 35:50 on the second
    assert "40 steps/s" in caplog.messages[1]  # the line itself shows the interval's pace


def test_the_closing_progress_line_is_not_repeated(monkeypatch, caplog):
    # a periodic line at the final step, then a slow final evaluation: the forced closing line would
    # repeat it with "0 steps/s | ETA ?"
    import logging

    from robo_rl import metrics

    clock = iter([0.0, 100.0, 200.0, 300.0, 400.0])
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    progress = metrics.Progress("ppo Hopper-v5", total_steps=1_000, every_seconds=60)
    with caplog.at_level(logging.INFO, logger=metrics.log.name):
        progress.maybe_print(1_000, 12.0, None)
        progress.maybe_print(1_000, 12.0, (20.0, 1.0), force=True)
    assert len(caplog.messages) == 1 and "10 steps/s" in caplog.messages[0]
    caplog.clear()
    resumed_complete = metrics.Progress("ppo Hopper-v5", total_steps=1_000, every_seconds=60, start_step=1_000)
    with caplog.at_level(logging.INFO, logger=metrics.log.name):
        resumed_complete.maybe_print(1_000, 12.0, (20.0, 1.0), force=True)
    assert caplog.messages == []


def progress_lines(monkeypatch, caplog, total: int, *calls: dict) -> list[str]:
    """The lines a Progress of ``total`` steps logs for ``calls`` (maybe_print's keyword arguments), 100 s apart."""
    import logging

    from robo_rl import metrics

    clock = iter(100.0 * i for i in range(len(calls) + 1))
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    progress = metrics.Progress("sac Hopper-v5", total_steps=total, every_seconds=60)
    with caplog.at_level(logging.INFO, logger=metrics.log.name):
        for call in calls:
            progress.maybe_print(**{"recent_return": None, "eval_return": None, **call})
    return caplog.messages


def test_the_progress_percentage_reads_100_only_at_the_end(monkeypatch, caplog):
    # rounded, 1,998 of 2,000 steps read "(100%)" before the run was done
    lines = progress_lines(monkeypatch, caplog, 2_000, {"step": 1_998}, {"step": 2_000})
    assert "step 1,998/2,000 (99%)" in lines[0] and "step 2,000/2,000 (100%)" in lines[1]


def test_the_closing_progress_line_shows_the_training_pace(monkeypatch, caplog):
    # its interval is mostly the final evaluation and save: the interval's pace read "1 steps/s" just before
    # "done: ... (N steps/s)"; the closing line shows the training pace, pauses left out
    lines = progress_lines(monkeypatch, caplog, 1_000, {"step": 900},  # then 100 steps in 10 s and 90 s of pauses:
                           {"step": 1_000, "eval_return": (20.0, 1.0), "force": True, "paused": 90.0})
    assert "| 9 steps/s |" in lines[0] and "| 10 steps/s |" in lines[1]


def test_on_policy_steps_round_up_to_whole_updates_and_say_so(tmp_path):
    summary = train(compose(*SMALL_PPO, "steps=200"), tmp_path / "run")  # 128 samples per update
    assert summary["steps"] == 256
    log = (tmp_path / "run" / "train.log").read_text()
    assert "steps=200 rounds up to whole updates: 2 x 128 samples (4 envs x 32 steps) = 256 env steps" in log
    assert "step 256/256 (100%)" in log
    assert ", 256 steps -> " in log and ", 200 steps -> " not in log  # the opening line said 200, after the 256 above


def test_a_rounding_that_more_than_doubles_the_run_is_a_warning(tmp_path):
    # read from train.log, as users do: caplog (the root logger's) saw nothing when this test ran first in its
    # process, train() having turned the robo_rl logger's propagation off (no line twice under logging.basicConfig())
    train(compose(*SMALL_PPO, "steps=50", "eval.every=128"), tmp_path / "run")  # one update: 128 samples
    said = [line.split(" ", 2)[2] for line in (tmp_path / "run" / "train.log").read_text().splitlines()
            if "rounds up" in line]  # after its time stamp
    assert said == ["robo-rl: warning: steps=50 rounds up to whole updates: 1 x 128 samples (4 envs x 32 steps) = "
                    "128 env steps"]


def test_a_second_sigint_aborts_and_the_summary_says_so(tmp_path, monkeypatch):
    from robo_rl.learners.sac import SAC

    original = SAC.update
    calls = {"n": 0}

    def update(self, batch):
        calls["n"] += 1
        if calls["n"] == 150:  # the second arrives while the first one's checkpoint is still pending
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return original(self, batch)

    monkeypatch.setattr(SAC, "update", update)
    with pytest.raises(KeyboardInterrupt):
        train(compose(*SMALL_SAC, "steps=800", "checkpoint.every=300"), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # before: the summary said "completed" (a KeyboardInterrupt is no Exception) and formatting it crashed
    assert summary["status"].startswith("aborted by a second SIGINT at step 349")
    assert "the last checkpoint is" in summary["status"] and summary["last_checkpoint"].endswith("step_0000000300")
    assert "stopped: KeyboardInterrupt" in (tmp_path / "run" / "train.log").read_text()


def test_one_training_process_per_run_dir(tmp_path):
    run = tmp_path / "run"
    with run_dir_lock(run):  # another process training a new run there (flock: per open file, so also in-process)
        with pytest.raises(RunDirBusy, match="in use by another robo-rl training process"):
            train(compose(*SMALL_SAC, "steps=300"), run)
    assert not (run / "config.yaml").exists()
    train(compose(*SMALL_SAC, "steps=300", "checkpoint.every=300"), run)
    resume = [f"resume={run}", "steps=400"]
    with run_dir_lock(run):  # resuming a run that is still training (named by resume=, not a run_dir= not given)
        with pytest.raises(RunDirBusy, match=rf"^resume={run} is in use by another robo-rl training process \(pid \d+ on "
                                             r".*\): that run is still training; resume it once it has stopped$"):
            train(compose(*resume), run, resume)
    assert json.loads((run / "summary.json").read_text())["steps"] == 300
    # a run still starting (config written, no checkpoint yet) is in use too, not "nothing to resume" or
    # "already holds a run; continue it with resume=" (which pointed back to the refused command)
    starting = tmp_path / "starting"
    starting.mkdir()
    (starting / "config.yaml").write_text((run / "config.yaml").read_text())
    with run_dir_lock(starting):
        with pytest.raises(RunDirBusy, match="in use by another robo-rl training process"):
            train(compose(f"resume={starting}"), starting, [f"resume={starting}"])
        with pytest.raises(RunDirBusy, match="in use by another robo-rl training process"):
            train(compose(*SMALL_SAC, "steps=300"), starting)
    # the Python API: run_dir may come from the config; the start-up's resume notice reaches train.log
    train(compose_config(["resume=" + str(run), "steps=400"]))
    assert json.loads((run / "summary.json").read_text())["steps"] == 400
    assert "resume with steps=400 (was 300)" in (run / "train.log").read_text()


def test_a_filesystem_without_locks_warns_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    from robo_rl.runs import refuse_busy_run_dir

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level("WARNING", logger="robo_rl"):
        with run_dir_lock(tmp_path / "run"):
            refuse_busy_run_dir(tmp_path / "run")  # the probe does not refuse either
    assert "cannot lock" in caplog.text and "nothing stops a second process" in caplog.text


@pytest.mark.parametrize("case", ["fifo", "directory"])
def test_a_lock_file_that_is_no_file_is_named_not_waited_on(tmp_path, case):
    # a named pipe as run_dir/.lock: the busy-run probe's open for reading waited for a writer (a resume hung);
    # a directory there: a traceback from os.open under Hydra
    from robo_rl.runs import refuse_busy_run_dir
    from tests.helpers import without_waiting_on

    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / ".lock") if case == "fifo" else (run / ".lock").mkdir()
    what = "a directory" if case == "directory" else r"not a regular file \(a device, pipe or socket\)"
    for call in (lambda: refuse_busy_run_dir(run), lambda: train(compose(*SMALL_SAC, "steps=100"), run)):
        with pytest.raises(ConfigError, match=rf"run_dir={run}: {run / '.lock'} is {what}, not the lock file "):
            without_waiting_on(run / ".lock", call)
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # refused before anything was written


def test_reads_of_a_run_s_files_for_a_hint_do_not_wait_on_a_named_pipe(tmp_path):
    # a sweep continuing its job read the job's summary.json for an earlier failure, and a checkpoint that does not
    # fit read its run's config.yaml for the algorithm that saved it: a named pipe in their place hung the command
    from robo_rl.commands.train import earlier_failure
    from robo_rl.runs import _saved_by
    from tests.helpers import without_waiting_on

    run = tmp_path / "run"
    (run / "checkpoints" / "step_0000000100").mkdir(parents=True)
    os.mkfifo(run / "summary.json")
    os.mkfifo(run / "config.yaml")
    assert without_waiting_on(run / "summary.json", lambda: earlier_failure(run)) is None  # no failed run's summary
    checkpoint = run / "checkpoints" / "step_0000000100"
    assert without_waiting_on(run / "config.yaml", lambda: _saved_by(checkpoint, "sac")) == ""


def test_a_signal_during_the_final_evaluation_waits_for_it_and_the_final_save(tmp_path, monkeypatch):
    from robo_rl.runners.base import Runner

    def killed(signum, frame):  # what the default handler did: the run ended there, unsaved
        raise RuntimeError(f"signal {signum} reached the default handler")

    previous = signal.signal(signal.SIGTERM, killed)
    original = Runner._evaluate

    def evaluate(self, wall, **kwargs):
        if self.step >= self.total_steps:  # the final evaluation, after the loop (300 is no eval.every step)
            signal.raise_signal(signal.SIGTERM)
        return original(self, wall, **kwargs)

    monkeypatch.setattr(Runner, "_evaluate", evaluate)
    try:
        summary = train(compose(*SMALL_SAC, "steps=300", "eval.every=200", "checkpoint.every=200"), tmp_path / "run")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert summary["status"] == "completed" and summary["steps"] == 300
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")][-1] == "step_0000000300"
    assert "SIGTERM arrived after the last training step: the run is complete" in (tmp_path / "run" / "train.log").read_text()


def test_a_signal_during_a_periodic_evaluation_stops_it_and_the_resumed_run_does_it_first(tmp_path, monkeypatch):
    # the signal waited for the whole evaluation (eval.episodes x the time limit: minutes on a long task) before the
    # checkpoint; stopped, the episodes that ended first must not be recorded as the evaluation at that step
    from robo_rl.runners import base

    common = (*SMALL_SAC, "steps=400", "eval.every=200", "eval.episodes=4", "eval.num_envs=1", "checkpoint.every=400")
    full = train(compose(*common), tmp_path / "full")
    original, stepped = base.evaluate, []

    def evaluate(policy, env, *args, **kwargs):
        step = env.step

        def counted(actions):
            stepped.append(1)
            if len(stepped) == 250:  # in the evaluation's 2nd episode of 200 steps
                signal.raise_signal(signal.SIGTERM)
            return step(actions)

        env.step = counted
        try:
            return original(policy, env, *args, **kwargs)
        finally:
            del env.step

    monkeypatch.setattr(base, "evaluate", evaluate)
    run = tmp_path / "run"
    with pytest.raises(Interrupted, match=r"at step 200 \(the evaluation at step 200 was cut short and not recorded"):
        train(compose(*common), run)
    assert len(stepped) == 250  # not 4 x 200: it stopped before its next step
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted by SIGTERM" and summary["eval_cut_short_step"] == 200
    assert summary["final_eval_step"] is None and summary["last_checkpoint"].endswith("step_0000000200")
    assert not any(row["eval/return_mean"] for row in logged_metrics(run) if "eval/return_mean" in row)
    logged = (run / "train.log").read_text()
    assert "eval at step 200 cut short by SIGTERM after 1 of 4 episodes: not recorded" in logged
    monkeypatch.setattr(base, "evaluate", original)
    resumed = train(compose(f"resume={run}"), run, [f"resume={run}"])
    assert "eval_cut_short_step" not in resumed
    assert logged_metrics(run) == logged_metrics(tmp_path / "full")  # the evaluation at 200 included, in its place
    for key in ("final_eval_return_mean", "best_eval_return_mean", "best_eval_step", "steps", "updates"):
        assert resumed[key] == full[key], key
    assert_same_weights(final_weights(run)[0], final_weights(tmp_path / "full")[0])


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_again(tmp_path):
    common = (*SMALL_SAC, "steps=300", "checkpoint.every=300", "log.every=50")
    train(compose(*common), tmp_path / "full")
    run = tmp_path / "run"
    train(compose(*common), run)
    for ckpt in list_checkpoints(run / "checkpoints"):  # as if killed before the first save: config, rows, events
        shutil.rmtree(ckpt)
    (run / "summary.json").unlink()
    # it used to be a dead end: resume= said "no complete checkpoint; start a new run", run_dir= "already holds a run"
    summary = train(compose(f"resume={run}"), tmp_path / "unused", [f"resume={run}"])
    assert summary["steps"] == 300 and summary["status"] == "completed"
    assert "stopped before its first checkpoint" in (run / "train.log").read_text()
    assert logged_metrics(run) == logged_metrics(tmp_path / "full")  # the first attempt's rows are gone, not doubled
    assert_same_weights(final_weights(run)[0], final_weights(tmp_path / "full")[0])
    # a run whose checkpoints are all damaged is not started again: that is reported (the files are named)
    for ckpt in list_checkpoints(run / "checkpoints"):
        (ckpt / "state.safetensors").write_bytes(b"0")
    with pytest.raises((CheckpointError, FileNotFoundError)):
        train(compose(f"resume={run}"), tmp_path / "unused", [f"resume={run}"])


def test_a_resume_puts_back_the_only_checkpoint_a_killed_resave_left_aside(tmp_path, monkeypatch):
    # checkpoint.keep=1 and a final evaluation after the step-300 checkpoint: it is saved again, and the run is
    # killed between moving the old one aside and moving the new one in; the resume used to see no step_X,
    # said "stopped before its first checkpoint" and trained again from step 0 (the complete one then went too)
    import robo_rl.checkpoint as ckpt

    real = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".tmp-") and any(p.name.startswith(".old-") for p in Path(dst).parent.iterdir()):
            raise KeyboardInterrupt("killed between the two renames")
        return real(src, dst)

    run = tmp_path / "run"
    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        train(compose(*SMALL_SAC, "steps=300", "checkpoint.every=100", "checkpoint.keep=1", "eval.every=1000"), run)
    monkeypatch.setattr(ckpt.os, "replace", real)
    assert list_checkpoints(run / "checkpoints") == []  # the window: step_300 only as .old-/.tmp-
    train(compose(f"resume={run}", "steps=400"), run, [f"resume={run}", "steps=400"])
    log = (run / "train.log").read_text()
    assert "stopped before its first checkpoint" not in log
    assert f"resumed from {run / 'checkpoints' / 'step_0000000300'} at step 300" in log


def test_resuming_a_finished_run_prunes_what_a_killed_prune_left(tmp_path):
    run = tmp_path / "run"
    train(compose(*SMALL_SAC, "steps=300", "checkpoint.every=100", "checkpoint.keep=2"), run)
    kept = [p.name for p in list_checkpoints(run / "checkpoints")]
    assert kept == ["step_0000000200", "step_0000000300"]
    # a save killed while deleting the oldest: a half-deleted older checkpoint is left behind
    shutil.copytree(run / "checkpoints" / kept[0], run / "checkpoints" / "step_0000000100")
    (run / "checkpoints" / "step_0000000100" / "state.safetensors").unlink()
    train(compose(f"resume={run}"), tmp_path / "unused", [f"resume={run}"])  # already complete: saves nothing
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == kept


def test_evaluation_is_deterministic_only_when_asked():
    from envs import make_env
    from policies import build_head
    from robo_rl.evaluation import evaluate

    env = make_env("Pendulum-v1", num_envs=2, backend="gymnasium")
    head = build_head("gaussian", env.obs_dim, env.action_space.low, env.action_space.high, hidden_sizes=(16,),
                      state_dependent_std=False)
    mean = evaluate(head, env, 2, True, seed=7)["returns"]
    sampled = evaluate(head, env, 2, False, seed=7)["returns"]
    assert evaluate(head, env, 2, False, seed=7)["returns"] == sampled  # evaluate seeds the sampling too
    assert sampled != mean
    with torch.no_grad():  # the deterministic returns are the mean action's: a zero-std head samples them
        head.log_std.fill_(-30.0)
    assert evaluate(head, env, 2, False, seed=7)["returns"] == pytest.approx(mean, rel=1e-4)


def test_evaluation_of_a_head_that_does_not_sample_says_it_was_deterministic():
    # TD3's head acts alike with deterministic=False: the evaluation was recorded (eval.json) and printed as
    # stochastic, and robo-rl compare warned that a group of such runs mixed stochastic with deterministic ones
    from envs import make_env
    from policies import build_head
    from robo_rl.evaluation import evaluate

    env = make_env("Pendulum-v1", num_envs=1, backend="gymnasium")
    head = build_head("deterministic", env.obs_dim, env.action_space.low, env.action_space.high, hidden_sizes=(16,))
    asked_to_sample = evaluate(head, env, 1, False, seed=7)
    assert asked_to_sample["returns"] == evaluate(head, env, 1, True, seed=7)["returns"]
    assert asked_to_sample["deterministic"] is True
    sampler = build_head("gaussian", env.obs_dim, env.action_space.low, env.action_space.high, hidden_sizes=(16,))
    assert evaluate(sampler, env, 1, False, seed=7)["deterministic"] is False


def test_evaluation_runs_a_chunked_head_k_actions_per_query():
    # a head trained on chunks of 4 executing 2 plans every 2 steps in evaluation, and afresh at each new
    # episode (Pendulum's 200-step episodes, 2 envs: 100 queries per episode, 2 episodes each)
    from envs import make_env
    from policies import build_head
    from robo_rl.evaluation import evaluate

    env = make_env("Pendulum-v1", num_envs=2, backend="gymnasium")
    head = build_head("flow", env.obs_dim, env.action_space.low, env.action_space.high, hidden_sizes=(16,),
                      steps=1, chunk=4, execute=2)
    queries = []
    plan = head.act_chunk
    head.act_chunk = lambda obs, deterministic=False, noise=None: queries.append(len(obs)) or plan(obs, deterministic)
    result = evaluate(head, env, 4, True, seed=3)
    assert result["lengths"] == [200] * 4 and queries == [2] * 200


def test_an_evaluation_that_cannot_finish_is_one_line(tmp_path, monkeypatch, capsys):
    # a task whose episodes outlast the evaluation's step budget (no time limit, or a huge one) stops the run with
    # one line naming what to change, not a traceback hours in (the budget is cut to 300 steps here)
    import functools
    import logging

    import robo_rl.runners.base as runner_base
    from robo_rl.commands.train import run_training
    from robo_rl.evaluation import evaluate

    monkeypatch.setattr(runner_base, "evaluate", functools.partial(evaluate, max_steps=300))
    logger = logging.getLogger("robo_rl")
    monkeypatch.setattr(logger, "handlers", [h for h in logger.handlers if not getattr(h, "_robo_rl", False)])
    code = run_training(compose(*SMALL_SAC, "steps=250", "eval.every=250"), tmp_path / "run", [])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("robo-rl: error: evaluation on Pendulum-v1 did not finish 2 episodes within "
                                         "300 env steps (episodes finished: 0)"), last
    assert "env.max_episode_steps" in last


def _full_disk_after(monkeypatch, saves):
    """np.savez (the replay file of a checkpoint) writes part of its bytes, then finds the disk full, from the
    ``saves``+1-th checkpoint on."""
    import errno

    import numpy as np

    real, count = np.savez, [0]

    def savez(f, **arrays):
        count[0] += 1
        if count[0] <= saves:
            return real(f, **arrays)
        f.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("robo_rl.checkpoint.np.savez", savez)


def test_a_full_disk_at_a_checkpoint_stops_the_run_in_one_line_keeping_the_last_one(tmp_path, monkeypatch, capsys):
    from robo_rl.checkpoint import verify_checkpoint
    from robo_rl.commands.train import run_training

    run = tmp_path / "run"
    _full_disk_after(monkeypatch, saves=1)
    cfg = compose(*SMALL_SAC, "steps=600", "checkpoint.every=300", "eval.every=300", f"run_dir={run}")
    assert run_training(cfg, run, []) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    first = run / "checkpoints" / "step_0000000300"
    assert err == (f"robo-rl: error: could not write checkpoint step 600 in {run / 'checkpoints'} (No space left on "
                   f"device); the last complete checkpoint is "
                   f"{first}: free space (or restore access) and continue with: robo-rl train resume={run}")
    assert [p.name for p in (run / "checkpoints").iterdir()] == [first.name]  # the partial one's space given back
    verify_checkpoint(first)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"].startswith("failed: could not write checkpoint step 600") and summary["steps"] == 600
    monkeypatch.undo()  # space freed: the resume the message gives continues from step 300
    summary = train(compose(f"resume={run}"), run, [f"resume={run}"])
    assert summary["status"] == "completed" and summary["steps"] == 600


def test_a_broken_pipe_is_not_reported_as_a_full_disk():
    import errno

    from robo_rl.runners.stopping import is_write_failure

    assert is_write_failure(OSError(errno.ENOSPC, "No space left on device"))
    assert is_write_failure(OSError(errno.EROFS, "Read-only file system"))
    assert not is_write_failure(BrokenPipeError(errno.EPIPE, "Broken pipe"))  # an async env worker died
    assert is_write_failure(OSError(errno.ENAMETOOLONG, "File name too long"))  # a run_dir near PATH_MAX


def test_a_failed_metrics_row_or_event_write_names_its_file(tmp_path, monkeypatch):
    # an append's failed flush (a full disk) carries no file name: the run's one-line error said "a run file"
    import csv
    import errno

    from robo_rl.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.write(1, 0.0, {"x": 1.0})

    def full(self, row):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerow", full)
    with pytest.raises(OSError) as info:
        writer.write(2, 0.0, {"x": 2.0})
    assert info.value.filename == str(tmp_path / "metrics.csv") and info.value.errno == errno.ENOSPC


def test_a_tensorboard_writer_that_fails_at_the_end_still_leaves_the_failed_summary(tmp_path, monkeypatch, capsys):
    # the event writer's error at close came before summary.json was written, and again when the failed run's summary
    # was: the run had none ("could not write the run's summary either")
    import errno

    from torch.utils.tensorboard import SummaryWriter

    from robo_rl.commands.train import run_training

    def too_large(self):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(SummaryWriter, "close", too_large)
    run = tmp_path / "run"
    assert run_training(compose(*SMALL_SAC, "steps=100", "log.tensorboard=true", f"run_dir={run}"), run, []) == 1
    said = (f"training completed, but writing {run / 'tb'} failed (File too large); the final checkpoint is "
            f"{run / 'checkpoints' / 'step_0000000100'}")
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"robo-rl: error: {said}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == f"failed: {said}" and summary["steps"] == 100


@pytest.mark.parametrize("failure, said", [
    (RuntimeError("engine error: Could not allocate memory"),
     "robo-rl: error: out of memory: env.id=Pendulum-v1 could not be built: RuntimeError: engine error: Could not "
     "allocate memory; lower what the config sizes"),
    (OSError(24, "Too many open files"),
     "robo-rl: error: too many open files: lower env.num_envs, or raise the limit (ulimit -n, now "),
])
def test_an_env_the_machine_has_no_room_for_is_not_blamed_on_the_config(tmp_path, monkeypatch, capsys, failure, said):
    # under ulimit -v / ulimit -n, "env.id=Pendulum-v1 could not be built: ..." came as bad configuration (exit 2)
    from robo_rl.commands.train import run_training

    def no_room(*args, **kwargs):
        raise failure

    monkeypatch.setattr("robo_rl.build.build_env", no_room)
    run = tmp_path / "run"
    assert run_training(compose(*SMALL_SAC, "steps=100", f"run_dir={run}"), run, []) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(said)


def test_a_train_log_that_cannot_be_written_warns_once_and_never_raises(tmp_path, capsys):
    # a full disk under train.log printed logging's traceback for every line after it (thousands, the run's one-line
    # error lost among them), and closing the file raised over the error that ended the run
    import errno
    import logging

    from robo_rl.metrics import RunLogFile

    handler = RunLogFile(tmp_path / "train.log")

    class Full:
        def write(self, text=""):
            raise OSError(errno.ENOSPC, "No space left on device")

        flush = write

        def close(self):
            pass

    handler.stream = Full()
    records: list[logging.LogRecord] = []
    catcher = logging.Handler()
    catcher.emit = records.append
    robo_rl_log = logging.getLogger("robo_rl")
    saved, level = robo_rl_log.handlers[:], robo_rl_log.level  # (a console handler of an earlier test's stderr aside)
    robo_rl_log.handlers = [handler, catcher]
    robo_rl_log.setLevel(logging.INFO)
    try:
        for i in range(5):
            robo_rl_log.info(f"line {i}")
    finally:
        robo_rl_log.handlers = saved
        robo_rl_log.setLevel(level)
        handler.close()  # flushing the full stream: no error
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert warnings == [f"{tmp_path / 'train.log'} could not be written (No space left on device): the run's lines from "
                        "here on are on the console only"]
    assert "Logging error" not in capsys.readouterr().err


def test_a_write_that_fails_before_the_loop_is_one_line(tmp_path, monkeypatch, capsys):
    # the lock, config.yaml or train.log on a full disk: a traceback through Hydra
    import errno

    from robo_rl.commands.train import run_training

    def full(cfg, run_dir):
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "config.yaml"))

    monkeypatch.setattr("robo_rl.train.save_run_config", full)
    run = tmp_path / "run"
    assert run_training(compose(*SMALL_SAC, "steps=100", f"run_dir={run}"), run, []) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"robo-rl: error: could not write the run in {run} ({run / 'config.yaml'}): No space left on "
                       "device") and "Traceback" not in "\n".join(err)


def test_a_full_disk_at_a_metrics_row_names_the_file_and_the_resume(tmp_path, monkeypatch, capsys):
    import errno

    from robo_rl.commands.train import run_training
    from robo_rl.metrics import MetricsWriter

    run = tmp_path / "run"
    real = MetricsWriter.write

    def write(self, step, wall, scalars):
        if step > 300:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        real(self, step, wall, scalars)

    monkeypatch.setattr(MetricsWriter, "write", write)
    cfg = compose(*SMALL_SAC, "steps=600", "checkpoint.every=300", "log.every=200", f"run_dir={run}")
    assert run_training(cfg, run, []) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"robo-rl: error: writing {run / 'metrics.csv'} failed at step 400 (No space left on device); the "
                   f"last complete checkpoint is {run / 'checkpoints' / 'step_0000000300'}: free space (or restore "
                   f"access) and continue with: robo-rl train resume={run}")


@pytest.mark.parametrize("envs, utd, starts, steps", [(1, 1, 50, 237), (3, 0.5, 10, 200), (3, 1.5, 7, 100), (4, 0.3, 0, 97)])
def test_off_policy_runner_announces_the_updates_it_makes(tmp_path, envs, utd, starts, steps):
    # what learner.plan hears (GoRL-SAC skips a refit after the final update) is the count the run makes
    from robo_rl.build import build_env, build_learner, build_policy, build_runner
    from robo_rl.train import prepare

    cfg, _ = prepare(compose("algo=sac", "env=pendulum", f"env.num_envs={envs}", f"algo.utd={utd}",
                             f"algo.learning_starts={starts}", f"steps={steps}", "algo.batch_size=8",
                             "algo.critic_hidden=[8]", "policy.hidden_sizes=[8]"), tmp_path / "run")
    env = build_env(cfg)
    runner = build_runner(cfg, build_learner(cfg, build_policy(cfg, env)), env, env, tmp_path / "run")
    announced = []
    runner.learner.plan = announced.append
    runner.obs = env.reset(seed=0)
    while runner.step < runner.total_steps:
        runner.iterate()
    assert announced == [int(runner.learner.num_updates)] and announced[0] > 0


def test_resume_falls_back_past_a_checkpoint_whose_runner_env_or_replay_state_does_not_fit(tmp_path):
    # every file matches its manifest, the learner loads: what does not fit is the rest of the state, which
    # used to escape as a bare KeyError / torch RuntimeError (a traceback, the checkpoint unnamed, no fallback)
    import io

    import numpy as np

    run = tmp_path / "run"
    train(compose(*SMALL_SAC, "steps=400", "checkpoint.every=100", "checkpoint.keep=5"), run)
    c400, c300, c200 = list_checkpoints(run / "checkpoints")[::-1][:3]
    state = json.loads((c400 / "state.json").read_text())
    del state["runner"]["step"]
    rewrite_consistently(c400, "state.json", json.dumps(state))
    replay = dict(np.load(c300 / "replay.npz"))
    replay["obs"] = replay["obs"][:, :2]
    data = io.BytesIO()
    np.savez(data, **replay)
    rewrite_consistently(c300, "replay.npz", data.getvalue())
    state = json.loads((c200 / "state.json").read_text())
    state["env"] = {"unknown": 1}
    rewrite_consistently(c200, "state.json", json.dumps(state))
    summary = train(compose(f"resume={run}", "steps=500"), run, [f"resume={run}", "steps=500"])
    assert summary["steps"] == 500
    log = (run / "train.log").read_text()
    assert f"cannot resume from {c400.name}: checkpoint {c400} cannot be resumed: its runner state" in log
    assert f"cannot resume from {c300.name}: checkpoint {c300} cannot be resumed: its replay buffer (replay.npz)" in log
    assert f"cannot resume from {c200.name}: checkpoint {c200} cannot be resumed: its environment state" in log
    assert f"resumed from {run / 'checkpoints' / 'step_0000000100'} at step 100" in log


def test_resume_falls_back_past_runner_state_that_would_fail_only_later(tmp_path):
    # every file matches its manifest: a counter JSON reads as infinity escaped as a bare OverflowError (a traceback,
    # no fallback), and running metric sums of another length were taken and failed at the next update
    run = tmp_path / "run"
    train(compose(*SMALL_SAC, "steps=300", "checkpoint.every=100", "checkpoint.keep=5"), run)
    c300, c200 = list_checkpoints(run / "checkpoints")[::-1][:2]
    state = json.loads((c300 / "state.json").read_text())
    state["runner"]["step"] = math.inf
    rewrite_consistently(c300, "state.json", json.dumps(state))
    state = json.loads((c200 / "state.json").read_text())
    state["runner"]["row"]["metric_sums"] = [{"keys": ["critic_loss", "actor_loss", "q_mean", "entropy", "alpha",
                                                       "alpha_loss"], "total": [1.0, 2.0], "n": 1}]
    rewrite_consistently(c200, "state.json", json.dumps(state))
    summary = train(compose(f"resume={run}", "steps=400"), run, [f"resume={run}", "steps=400"])
    assert summary["steps"] == 400
    log = (run / "train.log").read_text()
    assert f"cannot resume from {c300.name}: checkpoint {c300} cannot be resumed: its runner state" in log
    assert "OverflowError" in log
    assert f"cannot resume from {c200.name}: checkpoint {c200} cannot be resumed: its runner state" in log
    assert "row.metric_sums" in log
    assert f"resumed from {run / 'checkpoints' / 'step_0000000100'} at step 100" in log


def test_non_finite_weights_after_an_update_with_a_finite_loss_stop_as_a_nan(tmp_path):
    # a huge learning rate: the loss of the update that blows up is finite, its Adam moments are not; the save
    # that follows refused them as a CheckpointError (CLI exit 2, "bad input", no word of the last good one)
    run = tmp_path / "run"
    cfg = compose(*SMALL_SAC, "algo.actor_lr=1e8", "algo.critic_lr=1e8", "steps=400", "checkpoint.every=100",
                  "eval.every=1000")
    with pytest.raises(NonFiniteError, match=r"non-finite learner\.\S+ in the training state at step 200") as exc:
        train(cfg, run)
    assert "step_0000000100" in str(exc.value)
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_0000000100"]
    load_checkpoint(run / "checkpoints" / "step_0000000100")  # intact
    assert json.loads((run / "summary.json").read_text())["status"].startswith("failed: non-finite")


SMALL_GORL = ("algo=gorl", "env=pendulum", "env.num_envs=2", "algo.rollout_steps=32", "algo.minibatch_size=32",
              "algo.epochs=1", "eval.every=100000", "eval.episodes=1", "eval.num_envs=1", "threads=1", *FAST)


@pytest.mark.parametrize("algo", ["gorl", "expo", "parl"])
def test_a_nan_a_head_meets_inside_an_update_stops_as_a_nan(tmp_path, algo):
    # a head's checked actions inside an update (GoRL's refit measuring its shift, EXPO's and PA-RL's candidates after
    # a diverged base step) raised a bare FloatingPointError: no step, no word of the last good checkpoint
    if algo == "gorl":  # refits after updates 4 and 8; the first diverges
        cfg = compose(*SMALL_GORL, "algo.stages=3", "algo.decoder_lr=1e8", "algo.refit_epochs=2",
                      "algo.refit_batch_size=32", "algo.refit_threads=1", "steps=640", "checkpoint.every=64")
        where, good = "in update 4 at step 256", "step_0000000192"
    else:  # the base diverges in the first update, the second's TD target samples it
        cfg = compose(f"algo={algo}", "env=pendulum", "policy.hidden_sizes=[16]", "algo.critic_hidden=[16]",
                      "algo.batch_size=32", "algo.learning_starts=100", "eval.episodes=1", "eval.num_envs=1", *FAST,
                      "algo.utd=4", "steps=300", "checkpoint.every=50", "eval.every=1000",
                      *(("algo.base_lr=1e8", "algo.edit_hidden=[16]") if algo == "expo"
                        else ("algo.policy_lr=1e8", "algo.policy_update_every=1")))
        where, good = "in update 2 at step 100", "step_0000000050"
    with pytest.raises(NonFiniteError, match=f"head produced non-finite actions .*{where}") as exc:
        train(cfg, tmp_path / "run")
    assert good in str(exc.value)
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")][-1] == good
    # the opening line names the head's sampling steps (the flow head's are the learner's: EXPO 3, PA-RL 4)
    opening = next(line for line in (tmp_path / "run" / "train.log").read_text().splitlines()
                   if f"robo-rl: {algo} on " in line)
    named = {"gorl": "latent head (flow decoder, 4 steps)", "expo": "flow head (3 steps)", "parl": "flow head (4 steps)"}
    assert f", {named[algo]}, " in opening, opening


def test_a_nan_gorl_decodes_for_the_env_stops_as_a_nan(tmp_path, monkeypatch):
    # GoRL's policy acts with latents (checked by the runner), the env receives their decoding: a NaN there raised a
    # bare FloatingPointError from the head, naming no step and no checkpoint
    from robo_rl.learners.gorl import GoRL

    original = GoRL.update

    def poisoned(self, rollout):
        metrics = original(self, rollout)
        if int(self.num_updates) == 3:
            with torch.no_grad():
                next(self.policy.decoder.parameters()).fill_(float("nan"))
        return metrics

    monkeypatch.setattr(GoRL, "update", poisoned)
    with pytest.raises(NonFiniteError, match=r"latent head produced non-finite actions .* at step 192; .*step_0000000128"):
        train(compose(*SMALL_GORL, "algo.stages=1", "steps=640", "checkpoint.every=128"), tmp_path / "run")



def test_a_nan_in_a_refit_deferred_to_the_resumed_run_stops_as_a_nan(tmp_path, monkeypatch):
    # a GoRL refit a signal interrupted runs first in the resumed run (Learner.before_iteration), outside the update
    # the runner guards: its diverged decoder raised a bare FloatingPointError, naming no step and no checkpoint
    from robo_rl.learners.gorl import GoRL

    run = tmp_path / "run"
    cfg = compose(*SMALL_GORL, "algo.stages=3", "algo.decoder_lr=1e8", "algo.refit_epochs=2", "algo.refit_batch_size=32",
                  "algo.refit_threads=1", "steps=640", "checkpoint.every=64")
    restore = interrupt_at_update(monkeypatch, GoRL, 4)  # the refit after update 4 gives way to the signal
    with pytest.raises(Interrupted):
        train(cfg, run)
    restore()
    with pytest.raises(NonFiniteError, match=r"latent head produced non-finite actions \(diverged weights\?\) in the work "
                                             r"deferred from update 4 at step 256; training stopped and the last good "
                                             r"checkpoint is \S+step_0000000256\."):
        train(compose(f"resume={run}"), run, [f"resume={run}"])
    assert json.loads((run / "summary.json").read_text())["status"].startswith("failed: the latent head produced")
    assert [p.name for p in list_checkpoints(run / "checkpoints")][-1] == "step_0000000256"



def test_an_update_held_for_its_deferred_work_is_checked_for_nan_all_the_same():
    # an update whose refit gave way to a signal is held, not accumulated, until the resumed run's refit (so that its
    # row matches an unbroken run's); a NaN in it must still stop the run before the signal's checkpoint keeps it
    from types import SimpleNamespace

    from robo_rl.runners.base import Runner

    def fail(message):
        raise FloatingPointError(message)

    runner = SimpleNamespace(num_updates=0, step=5, device=torch.device("cpu"), _acc={}, held_update=None, _fail=fail,
                             learner=SimpleNamespace(work_deferred=lambda: True))
    runner.record_metrics = lambda metrics, hold=False: Runner.record_metrics(runner, metrics, hold)
    Runner.record_update(runner, {"loss": torch.tensor(1.5)})
    assert runner.held_update == {"loss": torch.tensor(1.5)} and runner._acc == {} and runner.num_updates == 1
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) in update 2 at step 5"):
        Runner.record_update(runner, {"loss": torch.tensor(float("nan"))})


def test_a_nan_latent_std_at_a_gorl_refit_stops_as_a_nan(tmp_path, monkeypatch):
    # the PPO update before a refit leaves a NaN latent log-std (its loss finite); with refit_on=executed nothing samples
    # the policy before the reset keeps its std, which refused it as a bad argument: a ValueError (CLI exit 2, "bad
    # input") saying "latent scale must be 1 positive finite numbers, got [nan]", no step, no checkpoint named
    from robo_rl.learners.gorl import GoRL

    original = GoRL.update

    def poisoned(self, rollout):
        if int(self.num_updates) == 3:  # the 4th update, which the first refit follows
            monkeypatch.setattr(self.ppo, "update", lambda batch, real=self.ppo.update: (
                real(batch), self.policy.latent.log_std.data.fill_(float("nan")))[0])
        return original(self, rollout)

    monkeypatch.setattr(GoRL, "update", poisoned)
    cfg = compose(*SMALL_GORL, "algo.stages=3", "algo.refit_on=executed", "algo.refit_epochs=2",
                  "algo.refit_batch_size=32", "algo.refit_threads=1", "steps=640", "checkpoint.every=64")
    with pytest.raises(NonFiniteError, match=r"^the latent policy's std is \[nan\] at the refit \(diverged weights\?\) in "
                                             r"update 4 at step 256; training stopped and the last good checkpoint is "
                                             r"\S+step_0000000192\."):
        train(cfg, tmp_path / "run")
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")][-1] == "step_0000000192"


def test_resume_refuses_a_config_yaml_edited_since_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(compose(*SMALL_SAC, "steps=300", "checkpoint.every=300"), run)
    original = (run / "config.yaml").read_text()
    assert "critic_lr: 0.0003" in original
    (run / "config.yaml").write_text(original.replace("critic_lr: 0.0003", "critic_lr: 0.5"))
    edited = (run / "config.yaml").read_text()
    # it used to train on with the edited rate: a change the command line is refused (algo.critic_lr=0.5)
    with pytest.raises(ConfigError, match=r"config.yaml was edited since checkpoint .*step_0000000300 was saved: "
                                          r"algo.critic_lr is 0.5 in config.yaml, 0.0003 in the checkpoint"):
        train(compose(f"resume={run}", "steps=400"), run, [f"resume={run}", "steps=400"])
    assert (run / "config.yaml").read_text() == edited  # left as it was
    # a task keyword argument added by hand: env.kwargs is compared as one mapping (a key the checkpoint's
    # config lacks was taken for a schema key added since, and passed)
    assert "kwargs: {}" in original
    (run / "config.yaml").write_text(original.replace("kwargs: {}", "kwargs: {g: 5.0}"))
    with pytest.raises(ConfigError, match=r"env.kwargs is \{'g': 5.0\} in config.yaml, \{\} in the checkpoint"):
        train(compose(f"resume={run}", "steps=400"), run, [f"resume={run}", "steps=400"])
    (run / "config.yaml").write_text(original)
    assert train(compose(f"resume={run}", "steps=400"), run, [f"resume={run}", "steps=400"])["steps"] == 400


def test_resume_falls_back_past_another_runs_checkpoint_copied_in(tmp_path):
    # another run's checkpoint in place of this run's newest was taken for an edit of config.yaml: the resume stopped,
    # telling the user to put config.yaml "back as it was" (to the other run's values). Older checkpoints that record
    # config.yaml's config tell which one is odd: it is skipped, named, as a checkpoint that does not fit
    run, other = tmp_path / "run", tmp_path / "other"
    train(compose(*SMALL_SAC, "steps=300", "checkpoint.every=150"), run)
    train(compose(*SMALL_SAC, "steps=300", "checkpoint.every=150", "seed=1"), other)  # the same networks: weights fit
    newest = run / "checkpoints" / "step_0000000300"
    shutil.rmtree(newest)
    shutil.copytree(other / "checkpoints" / "step_0000000300", newest)
    summary = train(compose(f"resume={run}", "steps=400"), run, [f"resume={run}", "steps=400"])
    assert summary["steps"] == 400
    log = (run / "train.log").read_text()
    assert (f"cannot resume from step_0000000300: checkpoint {newest} is another run's: seed is 0 in config.yaml, 1 in "
            "the checkpoint, and older checkpoints here record config.yaml's config; remove it") in log
    assert f"resumed from {run / 'checkpoints' / 'step_0000000150'} at step 150" in log


def test_a_longer_steps_resumes_past_another_runs_newer_checkpoint(tmp_path):
    # the "a resume cannot shorten a run" check read the newest checkpoint that verifies, before the resume skipped it
    # as another run's: steps=400 on a run at step 300 was refused as "has trained 600 steps"
    run, other = tmp_path / "run", tmp_path / "other"
    train(compose(*SMALL_SAC, "steps=300", "checkpoint.every=150"), run)
    train(compose(*SMALL_SAC, "steps=600", "checkpoint.every=300", "seed=1"), other)
    shutil.copytree(other / "checkpoints" / "step_0000000600", run / "checkpoints" / "step_0000000600")
    summary = train(compose(f"resume={run}", "steps=400"), run, [f"resume={run}", "steps=400"])
    assert summary["steps"] == 400 and summary["status"] == "completed"
    assert f"resumed from {run / 'checkpoints' / 'step_0000000300'} at step 300" in (run / "train.log").read_text()
    assert "steps: 400" in (run / "config.yaml").read_text()


def test_a_signal_in_an_iteration_that_checkpointed_saves_once(tmp_path, monkeypatch):
    import robo_rl.runners.checkpoints as checkpoints
    from robo_rl.runners.base import Runner

    saved, real = [], checkpoints.save_checkpoint
    monkeypatch.setattr(checkpoints, "save_checkpoint", lambda d, step, *a, **k: saved.append(step) or real(d, step, *a, **k))
    original = Runner._evaluate

    def evaluate(self, wall, **kwargs):  # the signal arrives during the evaluation at step 200, which also checkpoints
        if self.step == 200:
            signal.raise_signal(signal.SIGTERM)
        return original(self, wall, **kwargs)

    monkeypatch.setattr(Runner, "_evaluate", evaluate)
    with pytest.raises(Interrupted):
        train(compose(*SMALL_SAC, "steps=400", "eval.every=200", "checkpoint.every=200"), tmp_path / "run")
    assert saved == [200]  # the same state was written twice (twice the wait with a large replay buffer)


@pytest.mark.parametrize("where", ["summary", "plot"])
def test_a_repeated_sigterm_while_an_interrupted_run_writes_its_summary_waits_for_it(tmp_path, monkeypatch, where):
    # `kill` twice (a stream of SIGTERMs): the repeat reached the CLI's handler (or the default one) after the loop had
    # saved its checkpoint, cut summary.json short and reported the run as stopped outside the loop (or killed it, -15)
    import robo_rl.runners.base as base
    from robo_rl.runners.base import Runner
    from robo_rl.runners.stopping import StopOnSignal, raise_terminated

    original_evaluate, original_write = Runner._evaluate, getattr(base, "write_text_atomic")

    def evaluate(self, wall, **kwargs):
        if self.step == 200:
            signal.raise_signal(signal.SIGTERM)
        return original_evaluate(self, wall, **kwargs)

    def write(path, text):
        if where == "summary":
            signal.raise_signal(signal.SIGTERM)
        return original_write(path, text)

    def plot(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(Runner, "_evaluate", evaluate)
    monkeypatch.setattr(base, "write_text_atomic", write)
    monkeypatch.setattr(base, "plot_learning_curve", plot)
    monkeypatch.setattr(StopOnSignal, "received", None)
    previous = signal.signal(signal.SIGTERM, raise_terminated)  # as `robo-rl train` runs a job
    try:
        with pytest.raises(Interrupted, match="interrupted by SIGTERM at step 200"):
            train(compose(*[o for o in SMALL_SAC if o != "log.plot=false"], "steps=400", "eval.every=200",
                          "checkpoint.every=400"), tmp_path / "run")
        signal.raise_signal(signal.SIGTERM)  # the run has stopped for a SIGTERM: a late repeat is no new stop
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted by SIGTERM" and summary["last_checkpoint"].endswith("step_0000000200")
    assert "Continue with: robo-rl train resume=" in (tmp_path / "run" / "train.log").read_text()


def test_ppo_observation_statistics_count_each_observation_once(tmp_path):
    # the reset observations were counted at the start and again as the first rollout's first row
    train(compose(*SMALL_PPO, "policy.normalize_obs=true", "steps=256", "checkpoint.every=256"), tmp_path / "run")
    modules, _ = final_weights(tmp_path / "run")
    counts = [v for k, v in modules.items() if k.endswith("obs_norm.stats.count")]
    assert counts and all(float(c) == 256 for c in counts)  # 2 rollouts of 4 envs x 32 steps


def test_ppo_learning_rate_anneals_linearly_to_lr_over_k_at_the_last_update(tmp_path):
    # README: update k of K runs at lr x (1 - k/K), so the last one at lr/K (CleanRL's schedule); one log row per update
    train(compose(*SMALL_PPO, "steps=384", "log.every=128", "eval.every=384", "algo.lr=0.001"), tmp_path / "run")
    rates = [float(row["train/lr"]) for row in logged_metrics(tmp_path / "run") if row["train/lr"]]
    assert rates == pytest.approx([0.001 * (1 - k / 3) for k in range(3)], rel=1e-6)  # 3 rollouts of 4 envs x 32 steps


def test_the_continue_command_is_quoted_for_a_run_directory_with_a_space(tmp_path, monkeypatch):
    from robo_rl.learners.sac import SAC

    restore = interrupt_at_update(monkeypatch, SAC, 5)
    with pytest.raises(Interrupted) as exc:
        train(compose(*SMALL_SAC, "steps=600", "checkpoint.every=100"), tmp_path / "my runs" / "a")
    restore()
    assert f"Continue with: robo-rl train 'resume={tmp_path / 'my runs' / 'a'}'" in str(exc.value)


def test_a_resume_after_a_metrics_row_cut_off_mid_write_continues_the_log_exactly(tmp_path):
    # a run killed (or stopped by a full disk) while appending a row leaves it without its line end: that row came
    # after the last checkpoint, so the resume drops it unread (it used to parse it: "-13" of "-1373.4" failed the
    # resume with "could not convert string to float: '-'", or a step cut to "2" kept a bogus row)
    common = (*SMALL_SAC, "steps=400", "log.every=50", "eval.every=100", "checkpoint.every=200", "checkpoint.keep=5")
    train(compose(*common), tmp_path / "full")
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "full", cut)
    shutil.rmtree(cut / "checkpoints" / "step_0000000400")
    (cut / "summary.json").unlink()
    text = (cut / "metrics.csv").read_text()
    last_full_row = text.rstrip("\r\n").rsplit("\n", 1)[0] + "\n"
    for tail in ("3", "300.0,1.2,", "350.0,0.5,12.0,-"):  # the last row written after step 200, cut at three places
        (cut / "metrics.csv").write_text(last_full_row + tail)
        train(compose(f"resume={cut}"), tmp_path / "unused", [f"resume={cut}"])
        assert logged_metrics(cut) == logged_metrics(tmp_path / "full")
        shutil.rmtree(cut / "checkpoints" / "step_0000000400")


def test_a_damaged_metrics_row_before_the_checkpoint_is_named_on_resume(tmp_path):
    from robo_rl.metrics import MetricsWriter

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,wall_time,eval/return_mean\n100.0,1.0,-5.0\n200.0,2.0,x\n300.0,3.0,-1\n")
    with pytest.raises(ValueError, match=r"metrics.csv: line 3 \(step 200.0\): eval/return_mean is 'x', not a number"):
        MetricsWriter(run, tensorboard=False, resume_step=200)
    # rows after the checkpoint are not read, damaged or not
    writer = MetricsWriter(run, tensorboard=False, resume_step=100)
    assert writer.rows == [{"step": 100.0, "wall_time": 1.0, "eval/return_mean": -5.0}]
    # (a file written before steps were whole numbers is rewritten with them)
    assert (run / "metrics.csv").read_text().splitlines() == ["step,wall_time,eval/return_mean", "100,1.0,-5.0"]
    # the tail after the checkpoint is not read, whatever damage it holds (zero-filled lines after a power loss,
    # a garbled step): steps only grow, so the first row past the checkpoint ends the kept part
    (run / "metrics.csv").write_text("step,wall_time\n100.0,1.0\n200.0,2.0\n\x00\x00\x00,\x00\n3.0,4.0,5.0,6.0\n")
    writer = MetricsWriter(run, tensorboard=False, resume_step=100)
    assert writer.rows == [{"step": 100.0, "wall_time": 1.0}]



def test_the_metrics_writer_keeps_its_rows_in_the_file_not_in_memory(tmp_path):
    # a run of millions of steps at a small log.every writes tens of thousands of rows: the writer held every one as a
    # dict (~1 KB each) for the whole run
    from robo_rl.metrics import MetricsWriter

    def held(writer):  # entries in the writer's own containers
        return sum(len(v) for v in vars(writer).values() if isinstance(v, (list, dict, set, tuple)))

    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.write(10, 0.5, {"train/loss": 1.25})
    after_one = held(writer)
    for step in range(20, 1010, 10):
        writer.write(step, step / 20, {"train/loss": 1.25})
    assert held(writer) == after_one
    # a new column rewrites the file with the earlier rows as they were; ``rows`` reads them back
    writer.write(1010, 50.5, {"eval/return_mean": -3.0})
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[:3] == ["step,wall_time,train/loss,eval/return_mean", "10,0.5,1.25,", "20,1.0,1.25,"]
    assert len(lines) == 1 + 101 and lines[-1] == "1010,50.5,,-3.0"
    assert len(writer.rows) == 101
    assert writer.rows[0] == {"step": 10, "wall_time": 0.5, "train/loss": 1.25}
    assert writer.rows[-1] == {"step": 1010, "wall_time": 50.5, "eval/return_mean": -3.0}


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null (a device)")
def test_a_device_in_place_of_metrics_csv_is_named_on_resume_not_read(tmp_path):
    # a link to /dev/zero there was read until memory ran out (the resume then blamed the config's sizes); /dev/null,
    # which ends at once, stands for it: it was read as an empty file, and the resumed run's rows went into it
    from robo_rl.metrics import MetricsWriter

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").symlink_to("/dev/null")
    with pytest.raises(ValueError, match=r"metrics.csv: cannot be read to continue the run's metrics \(not a regular "
                                         r"file \(a device, pipe or socket\)\); move it aside"):
        MetricsWriter(run, tensorboard=False, resume_step=100)


def test_two_writes_of_one_run_file_at_once_leave_it_whole(tmp_path, monkeypatch):
    """write_text_atomic's hidden file is each write's own: two `robo-rl eval` of one run at once shared
    .eval.json.tmp, so one renamed the other's half-written file into place (eval.json then not JSON: the second
    writer's text with the first's tail) and the other failed, its hidden file renamed away."""
    import pathlib

    from robo_rl.metrics import write_text_atomic

    path = tmp_path / "eval.json"
    first, second = json.dumps({"returns": [1.5] * 100}), json.dumps({"returns": [2.5]})
    real = pathlib.Path.write_text

    def write_text(self, text, *args, **kwargs):  # the second write runs while the first is half written
        if text != first:
            return real(self, text, *args, **kwargs)
        with open(self, "w", encoding="utf-8", newline="") as f:
            f.write(text[: len(text) // 2])
            f.flush()
            write_text_atomic(path, second)
            f.write(text[len(text) // 2:])
        return len(text)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    write_text_atomic(path, first)
    assert path.read_text() == first  # the write that ended last, whole
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]  # no hidden file left


def test_every_warning_on_the_console_and_in_train_log_is_marked_as_one(tmp_path):
    """The robo_rl logger's warnings start with "robo-rl: warning:" as README's do; "skipping step_X: ..." (checkpoint
    reading, eval and resume), "could not draw the learning curve" and others came bare. Said once, not twice."""
    import logging

    from robo_rl.metrics import LogFormatter, log, setup_console_logging

    setup_console_logging()
    console = next(h for h in log.handlers if getattr(h, "_robo_rl", False))
    train_log = LogFormatter("%(asctime)s %(message)s")

    def record(level, msg, *args):
        return log.makeRecord(log.name, level, __file__, 0, msg, args, None)

    skipping = record(logging.WARNING, "skipping %s: checkpoint file x is truncated or altered", "step_0000000500")
    assert console.format(skipping) == "robo-rl: warning: skipping step_0000000500: checkpoint file x is truncated or altered"
    assert train_log.format(skipping).endswith(" robo-rl: warning: skipping step_0000000500: checkpoint file x is "
                                               "truncated or altered")
    assert skipping.getMessage().startswith("skipping")  # the record itself is left as it was
    assert console.format(record(logging.WARNING, "robo-rl: warning: cannot lock r")) == "robo-rl: warning: cannot lock r"
    assert console.format(record(logging.INFO, "resumed from step_0000000300")) == "resumed from step_0000000300"
    # errors (train.log's "stopped: ...", a sweep's "N of M job(s) failed") read as the CLI's errors do
    stopped = record(logging.ERROR, "stopped: %s", "NonFiniteError: non-finite observation")
    assert train_log.format(stopped).endswith(" robo-rl: error: stopped: NonFiniteError: non-finite observation")
    assert console.format(record(logging.ERROR, "robo-rl: error: x")) == "robo-rl: error: x"


@pytest.fixture
def console_err(monkeypatch, capsys):
    """capsys for the console handler train() adds (bound to this test's stderr, dropped afterwards), and a handler on
    the root logger, as a user's program's logging.basicConfig() adds: what robo-rl logs must not go through it too."""
    import logging

    logger = logging.getLogger("robo_rl")
    monkeypatch.setattr(logger, "handlers", [h for h in logger.handlers if not getattr(h, "_robo_rl", False)])
    monkeypatch.setattr(logger, "propagate", logger.propagate)  # train() turns it off: as it was, afterwards

    class Records(logging.Handler):
        def __init__(self):
            super().__init__()
            self.records = []

        def emit(self, record):
            self.records.append(record)

    user = Records()
    logging.getLogger().addHandler(user)
    yield lambda: (capsys.readouterr().err.splitlines(), [r.getMessage() for r in user.records])
    logging.getLogger().removeHandler(user)


def test_a_warning_of_the_envs_is_on_the_console_once_and_in_train_log(tmp_path, monkeypatch, console_err):
    # envs log to loggers of their own; named outside "robo_rl" ("envs.gymnasium_backend"), their warnings came bare
    # on stderr (Python's last-resort handler) or through a user's logging.basicConfig() ("WARNING:envs.gymnasium_...")
    # and were missing from train.log
    monkeypatch.setattr("envs.gymnasium_backend.usable_cpus", lambda: 1)
    train(compose(*SMALL_SAC, "env.backend=gymnasium", "env.vectorization=async", "env.num_envs=2", "steps=20"),
          tmp_path / "run")
    note = ("robo-rl: warning: Pendulum-v1: env.vectorization=async starts one worker process per env, 2 on 1 CPU(s); "
            "workers beyond the CPU count only add switching. Fewer envs, env.vectorization=sync, or env.backend=mujoco "
            "(threads, for the MuJoCo tasks it covers) step faster")
    err, through_root = console_err()
    assert [line for line in err if "vectorization=async" in line] == [note]
    assert [line.split(" ", 2)[2] for line in (tmp_path / "run" / "train.log").read_text().splitlines()
            if "vectorization=async" in line] == [note]  # after its time stamp
    assert through_root == []


def test_keys_the_run_ignores_are_named_at_start_up(tmp_path, console_err):
    # accepted and silently ignored: Pendulum runs on the gymnasium backend (no physics threads), PPO keeps no replay,
    # and an evaluation of 2 episodes builds 2 copies
    train(compose(*SMALL_PPO, "steps=128", "env.threads=2", "checkpoint.save_replay=false", "eval.num_envs=5"),
          tmp_path / "run")
    said = [
        "robo-rl: warning: env.threads=2: only the batched MuJoCo backend reads it (physics threads), and Pendulum-v1 "
        "runs on the gymnasium backend, so it changes nothing",
        "robo-rl: warning: checkpoint.save_replay=False: algo=ppo is on-policy and keeps no replay buffer, so it "
        "changes nothing",
        "robo-rl: warning: eval.num_envs=5: an evaluation steps at most one copy per episode, so eval.episodes=2 builds 2",
    ]
    err, _ = console_err()
    assert [line for line in err if line.startswith(("robo-rl: warning: env.", "robo-rl: warning: checkpoint.",
                                                     "robo-rl: warning: eval."))] == said
    log = [line.split(" ", 2)[2] for line in (tmp_path / "run" / "train.log").read_text().splitlines()]
    assert all(line in log for line in said)


def test_a_warning_the_evaluation_envs_build_repeats_is_given_once(tmp_path, console_err):
    # the evaluation envs are built from the training envs' config: their build's notes (HumanoidStandup's
    # uph_cost_weight, MuJoCo Warp's solver) came twice, on the console and in train.log
    train(compose(*SMALL_SAC, "env=humanoidstandup", "env.kwargs.uph_cost_weight=2.0", "env.num_envs=1",
                  "env.max_episode_steps=10", "eval.episodes=1", "eval.num_envs=1", "steps=10"), tmp_path / "run")
    note = ("robo-rl: warning: HumanoidStandup-v5: uph_cost_weight=2.0 has no effect (gymnasium v5's reward never "
            "reads it; robo-rl's batched task matches gymnasium)")
    err, through_root = console_err()
    assert [line for line in err if "uph_cost_weight" in line] == [note]
    assert [line.split(" ", 2)[2] for line in (tmp_path / "run" / "train.log").read_text().splitlines()
            if "uph_cost_weight" in line] == [note]
    assert through_root == []


def test_the_once_each_filter_remembers_a_bounded_number_of_warnings():
    # a warning that names its step (a diverged simulation's) never repeats: the filter kept every one for the run
    import logging

    from robo_rl.metrics import OnceEach

    def warning(message):
        return logging.LogRecord("robo_rl", logging.WARNING, __file__, 0, message, None, None)

    once = OnceEach(remember=100)
    assert once.filter(warning("a note the evaluation envs' build repeats"))
    assert not once.filter(warning("a note the evaluation envs' build repeats"))
    passed = [once.filter(warning(f"1 simulation(s) diverged at step {step:,} and were reset")) for step in range(5000)]
    assert all(passed) and len(once.seen) == 100
    assert not once.filter(warning("1 simulation(s) diverged at step 4,999 and were reset"))  # a recent one: still once


def test_diverged_simulations_are_warned_of_the_first_time_and_then_at_each_power_of_ten():
    # a model that diverged at every step printed a warning line at every step (150 lines in a 600-step run)
    import logging
    from types import SimpleNamespace

    import torch

    from robo_rl.runners.base import Runner
    from tests.helpers import robo_rl_records

    runner = SimpleNamespace(interventions=0, _row_interventions=0, diverged=0, step=0, record_episodes=lambda e: None)
    info = {"safety": {"interventions": 0}, "diverged": torch.tensor([True, True, False]), "episode": {}}
    with robo_rl_records(logging.DEBUG) as records:
        for step in range(1, 61):
            runner.step = step
            Runner.record_info(runner, info)
    assert runner.diverged == 120
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith("2 simulation(s) diverged at step 1 and were reset; their episodes count as truncated")
    assert warnings[1:] == ["10 simulations have diverged and been reset so far (the latest 2 at step 5)",
                            "100 simulations have diverged and been reset so far (the latest 2 at step 50)"]
    assert sum(r.levelno == logging.DEBUG for r in records) == 57  # every other one, at debug level

# -- loop audit (session 28): NaN/Inf met in an evaluation ---------------------------------------------------------


@pytest.mark.parametrize("where, what", [("reward", "reward"), ("final", "final observation")])
def test_an_evaluation_stops_on_a_non_finite_reward_or_final_observation(where, what):
    # a NaN reward made every return NaN: the evaluation reported "nan ± nan" and the run went on as completed
    from envs import make_env
    from policies import build_head
    from robo_rl.evaluation import evaluate

    env = make_env("robo_rl_test/NaNAfter-v0", num_envs=1, backend="gymnasium", kwargs={"after": 30, "where": where})
    head = build_head("gaussian", env.obs_dim, env.action_space.low, env.action_space.high, hidden_sizes=(8,))
    with pytest.raises(FloatingPointError, match=f"returned a non-finite {what} "):
        evaluate(head, env, 1, seed=0)
    env.close()


def test_a_nan_reward_in_the_final_evaluation_fails_the_run_keeping_its_checkpoint(tmp_path):
    # the training env never reaches the NaN (120 steps); the evaluation env's copies do (200 steps each)
    cfg = compose(*SMALL_SAC, "env.id=robo_rl_test/NaNAfter-v0", "env.kwargs={after: 150, where: reward}",
                  "steps=120", "algo.learning_starts=100", "eval.episodes=4", "eval.every=1000", "checkpoint.every=60")
    with pytest.raises(NonFiniteError, match="non-finite reward .* in the evaluation at step 120"):
        train(cfg, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"].startswith("failed: evaluation env") and summary["final_eval_return_mean"] is None
    good = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert good.name == "step_0000000120"
    load_checkpoint(good)  # intact


def test_a_resume_without_tensorboard_still_drops_the_events_after_its_checkpoint(tmp_path):
    # the events of steps 300-400 belong to the stopped segment, which the resume trains again without writing events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(compose(*SMALL_SAC, "steps=400", "log.every=100", "eval.every=100", "checkpoint.every=200",
                  "log.tensorboard=true"), run)
    shutil.rmtree(run / "checkpoints" / "step_0000000400")
    resume = [f"resume={run}", "log.tensorboard=false"]
    train(compose(*resume), tmp_path / "unused", resume)
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/return_mean")] == [100, 200]
    assert [float(r["step"]) for r in csv.DictReader(open(run / "metrics.csv")) if r["eval/return_mean"]] == \
        [100.0, 200.0, 300.0, 400.0]


# -- loop audit (session 28): evaluation episodes spread over env copies ----------------------------------------------
import gymnasium as gym  # noqa: E402 (this block is appended; the imports above are shared)
import numpy as np  # noqa: E402


class _TwoLengths(gym.Env):
    """Each episode ends (terminated) after 2 or 40 steps, drawn at its reset; reward 1 per step."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.left = 2 if self.np_random.random() < 0.5 else 40
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.left -= 1
        return np.zeros(1, np.float32), 1.0, self.left == 0, False, {}


def test_an_evaluation_over_many_env_copies_is_not_biased_toward_short_episodes():
    # counting the first episodes to finish over 8 copies would count mostly 2-step ones; each copy's own first
    # episodes are a fair draw (half of them 40 steps long)
    from envs import make_env
    from policies import build_head
    from robo_rl.evaluation import evaluate

    gym.register("robo_rl_test/TwoLengths-v0", entry_point=_TwoLengths)
    env = make_env("robo_rl_test/TwoLengths-v0", num_envs=8, backend="gymnasium")
    head = build_head("gaussian", env.obs_dim, env.action_space.low, env.action_space.high, hidden_sizes=(8,))
    result = evaluate(head, env, 20, seed=0)
    env.close()
    assert result["episodes"] == len(result["lengths"]) == 20
    assert sorted(result["env_index"]) == sorted([i for i in range(8) for _ in range(3 if i < 4 else 2)])
    assert result["returns"] == [float(n) for n in result["lengths"]]
    assert 0.25 < result["lengths"].count(40) / 20 < 0.75


def test_a_base_exception_inside_the_loop_is_not_summarised_as_completed(tmp_path, monkeypatch):
    # a SIGTERM outside the loop's own handler raises Terminated (a BaseException, past `except Exception`): the run
    # was summarised as "completed" and the summary step then tripped over the missing evaluation, hiding the cause
    from robo_rl.runners.off_policy import OffPolicyRunner
    from robo_rl.runners.stopping import Terminated

    def terminated(self):
        raise Terminated(signal.SIGTERM)

    monkeypatch.setattr(OffPolicyRunner, "iterate", terminated)
    with pytest.raises(Terminated):
        train(compose(*FAST, "algo=sac", "env=pendulum", "steps=200"), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "stopped: Terminated"


def test_a_runs_closing_progress_line_leaves_out_the_final_evaluation(monkeypatch, tmp_path):
    # eval.every dividing steps (the default) puts the final evaluation and save inside the loop: a periodic line
    # after them, at the last step, showed their time as the pace ("0 steps/s" before "done: ... N steps/s") and
    # took the closing line's place. A fake clock: 1 ms per reading, 100 s per evaluation.
    import time

    import robo_rl.runners.base as runner_base

    now = [0.0]

    def clock() -> float:
        now[0] += 1e-3
        return now[0]

    def slow_evaluate(*args, **kwargs):
        now[0] += 100.0
        return evaluate(*args, **kwargs)

    evaluate = runner_base.evaluate
    monkeypatch.setattr(time, "perf_counter", clock)
    monkeypatch.setattr(runner_base, "evaluate", slow_evaluate)
    train(compose(*SMALL_SAC, "steps=300", "eval.every=150", "log.progress_seconds=1e-6"), tmp_path / "run")
    lines = [line for line in (tmp_path / "run" / "train.log").read_text().splitlines() if "[sac " in line]
    closing = lines[-1]
    assert "step 300/300 (100%)" in closing and "eval " in closing
    assert float(closing.split(" steps/s")[0].rsplit("| ", 1)[1].replace(",", "")) >= 10  # ms per step: ~100s/s
    assert sum("step 300/300" in line for line in lines) == 1


def test_only_a_sigint_is_told_that_a_second_one_aborts(monkeypatch, caplog):
    # a SIGTERM said "(Ctrl-C again to abort)"; a second SIGTERM is waited out like the first, only SIGINT aborts
    import signal

    from robo_rl.runners.stopping import StopOnSignal

    monkeypatch.setattr(StopOnSignal, "received", None)
    for signum, hint in ((signal.SIGTERM, False), (signal.SIGINT, True)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="robo_rl"):
            StopOnSignal()._handle(signum, None)
        assert "saving a checkpoint after this iteration" in caplog.text
        assert ("(Ctrl-C again to abort)" in caplog.text) == hint


# -- normalization audit (session 57): observations float32 cannot resolve ------------------------------------------
class _FarFromZero(gym.Env):
    """A 2-D point task whose first coordinate is reported at 1e8 + x (a map coordinate's offset): float32 steps
    by 8 there, so the motion, within [-1, 1], is lost; the second coordinate is plain x."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-1, 1))
        return self._obs(), {}

    def _obs(self):
        return np.array([1e8 + self.x, self.x], np.float32)

    def step(self, action):
        self.x = float(np.clip(self.x + 0.1 * float(action[0]), -1, 1))
        return self._obs(), -abs(self.x), False, False, {}


def test_coarse_dimensions_names_the_ones_float32_cannot_resolve():
    from policies.normalizers import RunningMeanStd, coarse_dimensions

    stats = RunningMeanStd((4,))
    assert coarse_dimensions(stats) == []  # no observations yet
    stats.mean.copy_(torch.tensor([1e8, 1e5, 5.0, -2e3], dtype=torch.float64))
    stats.var.copy_(torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    stats.count.fill_(100)
    # 1e8 steps by 8 (a std of 1 is within one step); 1e5 by 2**-7 (128 steps per std: enough); 5 is near 0; the
    # constant -2e3 is reported (it cannot be told from a variation below float32's step there, 2**-13)
    assert coarse_dimensions(stats) == [(0, 1e8, 1.0, 8.0), (3, -2e3, 0.0, 2.0 ** -13)]


def test_observations_too_far_from_zero_for_float32_are_warned_of(tmp_path, console_err):
    # normalization subtracts the mean after the float32 cast of the env contract: at an offset of 1e8 the position's
    # motion was gone (one distinct value in 804 observations) without a word
    gym.register("robo_rl_test/FarFromZero-v0", entry_point=_FarFromZero, max_episode_steps=20)
    train(compose(*SMALL_PPO, "env.id=robo_rl_test/FarFromZero-v0", "steps=256"), tmp_path / "run")
    err, _ = console_err()
    warned = [line for line in err if "far from 0" in line]
    assert len(warned) == 1
    assert warned[0].startswith("robo-rl: warning: robo_rl_test/FarFromZero-v0's observation dimension 0 sits far "
                                "from 0 for its spread: about 1e+08 with std 0, where float32 (the observations' type) "
                                "steps by 8,")
    assert "Subtract the offset in the task" in warned[0]


# -- own-task audit (session 57): a task's own error mid-run, a task without a time limit ----------------------------
def test_an_error_the_task_raises_mid_run_stops_it_with_the_checkpoint_to_continue_from(tmp_path, console_err):
    # a ValueError of the task's was exit 2, "bad configuration", in one line naming nothing; any other error a
    # traceback (Hydra's "Error executing job"); neither said which checkpoint was kept or how to continue
    import robo_rl.commands.train as cli

    cfg = compose(*SMALL_SAC, "env.id=robo_rl_test/NaNAfter-v0", "env.kwargs={after: 450, where: raise}",
                  "steps=600", "checkpoint.every=200", "eval.every=600")
    run = tmp_path / "run"
    assert cli.run_training(cfg, run, []) == 1
    err = console_err()[0][-1]
    assert err == (f"robo-rl: error: robo_rl_test/NaNAfter-v0: env.step() raised ValueError: encoder 3 returned garbage "
                   f"at step 451 (at step 450); training stopped and the last checkpoint is {run}/checkpoints/"
                   f"step_0000000400; once the cause is fixed, `robo-rl train resume={run}` continues from it (the "
                   f"error's traceback is in {run}/train.log)")
    log = (run / "train.log").read_text()
    assert "Traceback (most recent call last)" in log and "ValueError: encoder 3 returned garbage at step 451" in log
    assert json.loads((run / "summary.json").read_text())["status"].startswith("failed: robo_rl_test/NaNAfter-v0: ")
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_0000000200", "step_0000000400"]


def test_an_error_the_task_raises_in_an_evaluation_stops_the_run_the_same_way(tmp_path):
    # the evaluation copies step 100 per evaluation (one 100-step episode each), the training env 50 between them:
    # an evaluation copy reaches its 151st step first, in the evaluation at step 100
    from robo_rl.runners.stopping import EnvError

    cfg = compose(*SMALL_SAC, "env.id=robo_rl_test/NaNAfter-v0", "env.kwargs={after: 150, where: raise}",
                  "steps=300", "eval.every=50", "eval.episodes=1", "eval.num_envs=1")
    with pytest.raises(EnvError, match=r"^robo_rl_test/NaNAfter-v0: the evaluation at step 100 raised ValueError: encoder 3 returned garbage at "
                                       r"step 151; training stopped and the last checkpoint is .*step_0000000090; once the "
                                       r"cause is fixed, .* continues from it \(the error's traceback is in .*train.log\)$"):
        train(cfg, tmp_path / "run")


class _Endless(gym.Env):
    """A task registered without a time limit whose episodes end when its position leaves [-3, 3], or (so that a
    policy that holds it inside cannot stall the test's evaluations) after 60 steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = 0.0, 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.x += float(action[0])
        self.t += 1
        return np.array([self.x], np.float32), 0.0, abs(self.x) > 3 or self.t >= 60, False, {}


def test_a_task_without_a_time_limit_is_warned_of_at_start_up(tmp_path, console_err):
    # an evaluation of a task whose episodes never end ran silently until 10M steps
    gym.register("robo_rl_test/Endless-v0", entry_point=_Endless)
    train(compose(*SMALL_PPO, "env.id=robo_rl_test/Endless-v0", "steps=128"), tmp_path / "run")
    err, _ = console_err()
    assert [line for line in err if "time limit" in line] == [
        "robo-rl: warning: robo_rl_test/Endless-v0 has no time limit (its registration sets no max_episode_steps, nor "
        "does env.max_episode_steps): an episode ends only when the task ends it, so an evaluation waits for 2 to end "
        "and stops the run after 10,000,000 steps without them; set env.max_episode_steps"]
    train(compose(*SMALL_PPO, "env.id=robo_rl_test/Endless-v0", "steps=128", "env.max_episode_steps=50"),
          tmp_path / "limited")
    assert not [line for line in console_err()[0] if "time limit" in line]


# -- concurrency audit (session 57): a train refused by the lock -----------------------------------------------------
def test_a_train_refused_by_the_lock_leaves_the_directory_of_the_run_holding_it(tmp_path, monkeypatch, console_err):
    # two `robo-rl train run_dir=X` (or two default run_dirs of one second): the second found the directory empty as
    # it started, was refused by the first one's lock, and removed the directory (lock file and all) as a run that
    # had left nothing; the first then failed writing its config.yaml
    import contextlib
    import fcntl

    import robo_rl.commands.train as cli
    import robo_rl.train as T

    run = tmp_path / "run"
    run.mkdir()  # (as Hydra makes it, empty when the command starts)
    holder = []
    real_lock = T.run_dir_lock

    @contextlib.contextmanager
    def first_process_locked_it_meanwhile(run_dir):
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (flock locks per open file: this one conflicts with ours)
        os.pwrite(fd, b"pid 1 on elsewhere\n", 0)
        holder.append(fd)
        with real_lock(run_dir):
            yield

    monkeypatch.setattr(T, "run_dir_lock", first_process_locked_it_meanwhile)
    try:
        assert cli.run_training(compose(*SMALL_SAC, "steps=100"), run, []) == 2
        assert console_err()[0][-1].startswith(f"robo-rl: error: run_dir={run} is in use by another robo-rl training "
                                               "process (pid 1 on elsewhere)")
        assert (run / ".lock").is_file()  # the first run's directory and lock are its own
    finally:
        os.close(holder[0])
    # with the lock free, a run that failed before writing anything still leaves nothing
    monkeypatch.setattr(T, "run_dir_lock", real_lock)
    other = tmp_path / "other"
    other.mkdir()
    assert cli.run_training(compose(*SMALL_SAC, "steps=100", "algo.learning_starts=-1"), other, []) == 2
    assert not other.exists()


def test_only_the_envs_own_errors_are_reported_as_the_task_s(tmp_path, monkeypatch):
    # out of memory and of open files keep their own messages (what to lower), and an error of the evaluation's own
    # code (the policy's, robo-rl's) is raised as it is, not blamed on the task
    import errno as errno_

    import robo_rl.runners.base as B

    assert B.not_the_envs_own(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried to "
                                           "allocate 10 bytes"))
    assert B.not_the_envs_own(OSError(errno_.EMFILE, "Too many open files"))
    assert not B.not_the_envs_own(ValueError("encoder 3 returned garbage"))

    def a_bug(*args, **kwargs):
        raise RuntimeError("a bug in the evaluation's own code")

    monkeypatch.setattr(B, "evaluate", a_bug)
    with pytest.raises(RuntimeError, match="^a bug in the evaluation's own code$"):
        train(compose(*SMALL_SAC, "steps=300", "eval.every=100"), tmp_path / "run")
