"""`robo-rl export` and `robo-rl deploy` end to end, as a user runs them: train, export, deploy, tamper."""

import json

import numpy as np
import pytest

from tests.test_cli import TINY, robo_rl


def test_train_export_deploy_and_refuse_a_tampered_file(tmp_path):
    robo_rl("train", *TINY, "steps=300", "env.kwargs.g=9.5", "env.max_episode_steps=150", "run_dir=run", cwd=tmp_path)
    out = robo_rl("export", "run_dir=run", cwd=tmp_path).stdout
    export = tmp_path / "run" / "export"
    sidecar = json.loads((export / "policy.json").read_text())
    assert "max |onnx - torch|" in out and sidecar["task"] == "Pendulum-v1" and sidecar["algo"] == "sac"
    assert sidecar["checked"]["real_observations"] > 0 and sidecar["checked"]["max_abs_error"] <= 1e-5
    assert sidecar["control"]["dt"] > 0 and sidecar["observation"]["dim"] == 3 and sidecar["action"]["dim"] == 1
    assert sidecar["task_kwargs"] == {"g": 9.5}  # deploy builds the task as it was trained
    assert sidecar["max_episode_steps"] == 150  # and ends its episodes where the run's did
    assert sidecar["cost_key"] == "cost"  # and sums the task's cost where the run read it (safety.cost_key)

    # the exported policy, on a differently configured simulation, with a rate limit added at deploy time
    (tmp_path / "rate.yaml").write_text("filters:\n  - {type: rate, max_delta: [0.5]}\n")
    robo_rl("deploy", "export=run/export", "episodes=1", "sim2sim.action_latency=1", "sim2sim.observation_noise=0.01",
            "safety=rate.yaml", cwd=tmp_path)
    report = json.loads((export / "deploy.json").read_text())
    assert len(report["episode_returns"]) == 1 and np.isfinite(report["episode_returns"]).all()
    assert report["loop"]["steps"] == 150  # episodes=1: one whole episode of the run's 150 steps, and no more
    assert report["task_kwargs"] == {"g": 9.5}
    assert report["loop"]["latency"]["inference_ms"]["p99"] > 0
    # steps= alone runs that many control steps (episodes= used to default to 5 and stop it first)
    robo_rl("deploy", "export=run/export", "steps=450", cwd=tmp_path)
    report = json.loads((export / "deploy.json").read_text())
    assert report["loop"]["steps"] == 450 and len(report["episode_returns"]) == 3  # the run's 150-step episodes
    # export= may name the sidecar itself, as PolicyRuntime takes it: the report still goes beside it
    (export / "deploy.json").unlink()
    robo_rl("deploy", "export=run/export/policy.json", "steps=5", cwd=tmp_path)
    assert json.loads((export / "deploy.json").read_text())["loop"]["steps"] == 5

    # a model file that no longer matches its sidecar is refused, and nothing runs
    data = bytearray((export / "policy.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (export / "policy.onnx").write_bytes(bytes(data))
    proc = robo_rl("deploy", "export=run/export", "episodes=1", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "checksum" in proc.stderr

    # TorchScript: checked against torch the same way, said as such; the torch-free runtime points back to ONNX
    out = robo_rl("export", "run_dir=run", "format=torchscript", "out_dir=ts", cwd=tmp_path).stdout
    assert "max |torchscript - torch|" in out and (tmp_path / "ts" / "policy.pt").is_file()
    proc = robo_rl("deploy", "export=ts", "episodes=1", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "re-export with format=onnx" in proc.stderr

    # a checkpoint of another run (here a copy outside the run) is refused as eval refuses it: its weights would be
    # exported with this run's config (task, head, filters) as this run's policy
    import shutil

    own = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1]
    shutil.copytree(own, tmp_path / "other" / own.name)
    proc = robo_rl("export", "run_dir=run", f"checkpoint=other/{own.name}", "out_dir=x", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "is not one of run's checkpoints" in proc.stderr and not (tmp_path / "x").exists()
    robo_rl("export", "run_dir=run", f"checkpoint={own.name}", "out_dir=x", cwd=tmp_path)  # its own, by name
    # the sidecar names its checkpoint by absolute path, as its run_dir: it was relative to where export ran
    source = json.loads((tmp_path / "x" / "policy.json").read_text())["source"]
    assert source["checkpoint"] == str(own.resolve()) and source["run_dir"] == str((tmp_path / "run").resolve())


def test_export_of_a_policy_that_acts_nan_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    # a damaged checkpoint whose weights are NaN (save_checkpoint refuses to write one; here the loaded learner is
    # poisoned): export's check rollout ended in a 20-line traceback, where eval says it in one line
    import torch

    from robo_rl import runs as run_files  # (import robo_rl.runs would shadow the robo_rl() helper)
    from robo_rl.commands.export import export_main

    robo_rl("train", *TINY, "steps=150", "run_dir=run", cwd=tmp_path)
    load = run_files.load_run_learner

    def poisoned(*args, **kwargs):
        learner, ckpt, manifest = load(*args, **kwargs)
        with torch.no_grad():
            for p in learner.policy.parameters():
                p.fill_(float("nan"))
        return learner, ckpt, manifest

    monkeypatch.setattr(run_files, "load_run_learner", poisoned)
    assert export_main([f"run_dir={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "robo-rl: error: the gaussian head produced non-finite actions" in err
    assert "step 0 of the rollout that collects export's check observations, with checkpoint" in err
    assert not (tmp_path / "run" / "export" / "policy.json").exists()


def test_export_refuses_bad_arguments(tmp_path):
    proc = robo_rl("export", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "run_dir" in proc.stderr
    proc = robo_rl("export", "run_dir=nowhere", "fromat=onnx", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "fromat" in proc.stderr
    proc = robo_rl("export", "run_dir=nowhere", "format=tflite", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "onnx, torchscript" in proc.stderr  # refused before the run is read
    proc = robo_rl("export", "run_dir=nowhere", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "nowhere does not exist; give a run's directory" in proc.stderr
    proc = robo_rl("deploy", "export=nowhere", cwd=tmp_path, check=False)
    assert proc.returncode == 2


def test_export_of_a_task_whose_package_is_missing_names_it(monkeypatch, capsys):
    # export builds the run's task; a package it needs that is gone (e.g. Box2D) is a usage error, not a traceback
    import robo_rl.exporting
    from envs.base import MissingDependency
    from robo_rl.commands.export import export_main

    def missing(*args, **kwargs):
        raise MissingDependency("LunarLanderContinuous-v3 needs a package that is not installed: Box2D")

    monkeypatch.setattr(robo_rl.exporting, "export_run", missing)
    assert export_main(["run_dir=somewhere"]) == 2
    assert "Box2D" in capsys.readouterr().err


def test_eval_reports_the_energy_cost_with_the_runs_filters(tmp_path):
    """`robo-rl eval` on a ContactMaze run trained behind the passivity filter: the run's filters act in the
    evaluation too, and each episode's energy-injection cost is reported next to its return."""
    tiny = [a for a in TINY if not a.startswith("env=")]
    robo_rl("train", *tiny, "env=contact_maze", "env.num_envs=2", "safety=passivity", "steps=200", "run_dir=run",
            cwd=tmp_path)
    out = robo_rl("eval", "run_dir=run", "episodes=2", "num_envs=2", cwd=tmp_path).stdout
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert len(result["costs"]) == 2 and all(c >= 0 for c in result["costs"]) and result["cost_key"] == "cost"
    assert result["cost_mean"] == sum(result["costs"]) / 2 and f"cost {result['cost_mean']:.3g} per episode" in out
    assert result["safety_filters"] == ["box", "energy_tank"]  # eval.json names the filters that acted


@pytest.mark.parametrize("arg, group", [("sim2sim=bogus", "sim2sim"), ("sim2sim=1", "sim2sim"), ("watchdog=[1]", "watchdog")])
def test_deploy_names_a_group_key_given_one_value(arg, group, capsys):
    # was "Merge error: str is not a subclass of Sim2SimOptions", naming neither the key nor what it takes
    from robo_rl.commands.export import deploy_main

    assert deploy_main(["export=nowhere", arg]) == 2
    err = capsys.readouterr().err
    assert f"{arg.split('=')[0]}=" in err and f"{group} is a group of keys" in err and f"{group}.max_" in err
