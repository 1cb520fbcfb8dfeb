"""Buffers that cannot fit are refused before any run file is written; a failed allocation is one line."""

import pytest
import torch

from robo_rl import memory
from robo_rl.commands.train import run_training
from robo_rl.runners.stopping import out_of_memory
from robo_rl.validation import ConfigError
from robo_rl.train import train
from tests.helpers import FAST, compose


def test_buffer_sizes_are_counted_from_the_config():
    # SAC on Pendulum (obs 3, act 1): obs + next_obs + action + reward + terminated = 9 float32 per row
    needs = memory.buffers_needed(compose("algo=sac", "env=pendulum", "algo.buffer_size=1000"), 3, 1)
    assert needs == {"replay (algo.buffer_size=1,000 rows)": 4 * 1000 * 9}
    # passivity-aware replay keeps a cost per row
    cfg = compose("algo=sac", "env=pendulum", "algo.buffer_size=1000", "safety.passivity_aware=true")
    assert list(memory.buffers_needed(cfg, 3, 1).values()) == [4 * 1000 * 10]
    # PPO: the storage (obs, action, log-prob, value, reward, done) and the update's flattened batch of it
    cfg = compose("algo=ppo", "env=pendulum", "env.num_envs=8", "algo.rollout_steps=16")
    assert memory.buffers_needed(cfg, 3, 1) == {"rollout (algo.rollout_steps=16 x env.num_envs=8)": 2 * 4 * 16 * 8 * 8}
    # GoRL adds the decoder's refit data
    cfg = compose("algo=gorl", "policy=latent", "env=pendulum", "env.num_envs=8", "algo.rollout_steps=16",
                  "algo.dataset_size=500", "algo.refit_on=executed")
    needs = memory.buffers_needed(cfg, 3, 1)
    assert needs["refit data (algo.dataset_size=500)"] == 4 * 500 * 4 and len(needs) == 2  # executed: its own actions
    # refit_on=policy (the default) draws each epoch's targets and their paired prior latents at every state
    for cfg in (compose("algo=gorl", "env=pendulum", "env.num_envs=8", "algo.rollout_steps=16", "algo.dataset_size=500"),
                compose("algo=gorl_sac", "env=pendulum", "algo.buffer_size=1000", "algo.dataset_size=500")):
        assert memory.buffers_needed(cfg, 3, 1)["refit targets (algo.dataset_size=500, refit_on=policy)"] == 4 * 500 * 2
    # EXPO's and PA-RL's candidate actions: batch_size x count rows, as wide as the critic's and the head's layers
    cfg = compose("algo=parl", "env=pendulum", "algo.buffer_size=1000", "algo.batch_size=32", "algo.num_candidates=8",
                  "algo.target_candidates=4", "algo.critic_hidden=[16,16]", "policy.hidden_sizes=[8]")
    needs = memory.buffers_needed(cfg, 3, 1)
    assert needs["candidate actions (algo.batch_size=32 x algo.num_candidates=8)"] == 4 * 32 * 8 * 40
    assert needs["candidate actions (algo.batch_size=32 x algo.target_candidates=4)"] == 4 * 32 * 4 * 40


def test_buffers_beyond_free_memory_are_refused_with_the_keys_named(monkeypatch):
    needs = {"replay (algo.buffer_size=2,000,000 rows)": 3 * memory.GIB}
    monkeypatch.setattr(memory, "device_memory", lambda device: (8 * memory.GIB, 2 * memory.GIB))
    with pytest.raises(ConfigError, match=r"need 3\.0 GiB \(replay \(algo\.buffer_size=2,000,000 rows\) 3\.0 GiB\), "
                                          r"more than the 2\.0 GiB of cpu memory free now \(of 8\.0 GiB\)"):
        memory.check_fits(needs, torch.device("cpu"))
    monkeypatch.setattr(memory, "device_memory", lambda device: (8 * memory.GIB, 4 * memory.GIB))
    memory.check_fits(needs, torch.device("cpu"))  # fits: nothing said
    monkeypatch.setattr(memory, "device_memory", lambda device: (None, None))
    memory.check_fits(needs, torch.device("cpu"))  # unknown: not refused on a guess


def test_this_machine_reports_its_memory():
    total, available = memory.host_memory()
    assert total is not None and available is not None and 0 < available <= total


def test_a_replay_buffer_no_machine_holds_is_refused_before_the_run_exists(tmp_path, capsys):
    cfg = compose("algo=sac", "env=pendulum", "algo.buffer_size=100000000000000", f"run_dir={tmp_path / 'run'}",
                  "eval.episodes=1", "eval.num_envs=1")
    assert run_training(cfg, tmp_path / "run", []) == 2
    err = capsys.readouterr().err
    assert err.startswith("robo-rl: error: the run's buffers need 3,352,761.3 GiB (replay (algo.buffer_size="
                          "100,000,000,000,000 rows) 3,352,761.3 GiB), more than the ") and "lower the keys named" in err
    assert not (tmp_path / "run").exists()


def test_a_buffer_the_task_holds_is_not_refused_on_the_stand_in_dimensions(tmp_path, monkeypatch):
    # train() checked the head and learner on a stand-in 2-D action first, its buffers included: Pendulum's replay
    # rows (9 float32, one action) were sized as 10, and a buffer that fit was refused with the stand-in's sizes
    monkeypatch.setattr(memory, "device_memory", lambda device: (memory.GIB, 4 * 1000 * 9))  # room for it, exactly
    summary = train(compose("algo=sac", "env=pendulum", "algo.buffer_size=1000", "steps=20", "eval.episodes=1",
                            "eval.num_envs=1", *FAST), tmp_path / "run")
    assert summary["status"] == "completed"


def test_refit_data_no_machine_holds_is_refused_with_the_task_s_sizes(tmp_path, capsys):
    # GoRL on Pendulum: 4 float32 of refit data a row (obs 3 + act 1) and 2 of drawn targets; the stand-in check
    # said 5 and 4 (33,527.6 GiB), and the check built on the stand-in must not allocate the 1e12 rows itself
    cfg = compose("algo=gorl", "env=pendulum", "algo.dataset_size=1000000000000", f"run_dir={tmp_path / 'run'}",
                  "eval.episodes=1", "eval.num_envs=1")
    assert run_training(cfg, tmp_path / "run", []) == 2
    err = capsys.readouterr().err
    assert err.startswith("robo-rl: error: the run's buffers need 22,351.7 GiB ("), err
    assert ("refit data (algo.dataset_size=1,000,000,000,000) 14,901.2 GiB, refit targets (algo.dataset_size="
            "1,000,000,000,000, refit_on=policy) 7,450.6 GiB), more than the ") in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("algo, key", [("expo", "num_samples"), ("parl", "num_candidates")])
def test_candidate_counts_no_machine_holds_are_refused_before_the_run_exists(tmp_path, capsys, algo, key):
    # they trained up to the first update and ended in the allocator's generic message (exit 1)
    cfg = compose(f"algo={algo}", "env=pendulum", f"algo.{key}=1000000000000", f"run_dir={tmp_path / 'run'}",
                  "eval.episodes=1", "eval.num_envs=1")
    assert run_training(cfg, tmp_path / "run", []) == 2
    err = capsys.readouterr().err
    assert f"candidate actions (algo.batch_size=256 x algo.{key}=1,000,000,000,000)" in err, err
    assert not (tmp_path / "run").exists()


def test_a_sweep_check_refuses_refit_data_no_machine_holds_before_building_the_learner():
    # -m algo.dataset_size=1000,1e12: the check of every job built GoRL with 1e12 rows, the allocator's traceback (exit 1)
    from robo_rl.build import check_head_and_learner
    from robo_rl.defaults import resolve_defaults

    cfg = resolve_defaults(compose("algo=gorl", "env=pendulum", "algo.dataset_size=1000000000000"))
    with pytest.raises(ConfigError, match=r"^the run's buffers need .*refit data \(algo.dataset_size=1,000,000,000,000\)"):
        check_head_and_learner(cfg)


def test_a_failed_allocation_is_one_line_naming_what_to_lower(tmp_path, capsys, monkeypatch):
    # past the check (as if the machine said it had room), torch's allocator really refuses the buffer
    monkeypatch.setattr("robo_rl.train.check_fits", lambda needs, device: None)
    cfg = compose("algo=sac", "env=pendulum", "algo.buffer_size=100000000000000", f"run_dir={tmp_path / 'run'}",
                  "eval.episodes=1", "eval.num_envs=1")
    assert run_training(cfg, tmp_path / "run", []) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("robo-rl: error: out of memory: you tried to allocate 1200000000000000 bytes; lower what "
                          "the config sizes: env.num_envs, algo.batch_size, the buffers (algo.buffer_size"), err
    assert "the networks (*_hidden" in err and "the samples per state (algo.num_samples" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_only_allocation_failures_read_as_out_of_memory():
    assert out_of_memory(MemoryError("Unable to allocate 488. MiB for an array")) == "Unable to allocate 488. MiB for an array"
    assert out_of_memory(MemoryError()) == "an allocation failed"
    cuda = "CUDA out of memory. Tried to allocate 2.00 GiB"
    assert out_of_memory(RuntimeError(cuda + "\nmore lines of the allocator")) == cuda  # its first line
    assert out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
