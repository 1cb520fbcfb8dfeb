"""Bad input to `robo-rl export` / `robo-rl deploy` (and their Python API): refused up front, with one line
naming the key or file and what to change; no traceback, no partial output, nothing silently accepted.

The commands run in-process (``export_main`` / ``deploy_main``, exit code + stderr as the user sees them) on
real files: tiny exports from ``make_export`` and one tiny trained run, onnxruntime for real.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from robo_rl.commands.export import deploy_main, export_main
from sim2real.deploy import deploy
from sim2real.export import sha256_of
from sim2real.loop import ControlLoop
from sim2real.robots import CallbackRobot, MujocoSim2SimRobot
from sim2real.runtime import ExportError, PolicyRuntime
from tests.sim2real.conftest import make_export

BROKEN_YAML = "filters:\n  - {type: rate, max_delta: [0.5]\n"  # the flow mapping is never closed


def run_cli(main, args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("robo-rl: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real (tiny) SAC run on Pendulum to export from."""
    from robo_rl.train import compose_config, train
    from tests.test_cli import TINY

    run = tmp_path_factory.mktemp("run") / "run"
    train(compose_config([*TINY, "steps=200", f"run_dir={run}"]), run)
    return run


@pytest.fixture
def pendulum_export(tmp_path: Path) -> Path:
    return make_export(tmp_path / "export", obs_dim=4, act_dim=1, low=-3.0, high=3.0, task="InvertedPendulum-v5")


# --- 1. a safety= file with a YAML syntax error -------------------------------------------------------------------

def test_yaml_syntax_error_in_a_safety_file_names_the_file_and_line(tmp_path, trained_run, pendulum_export, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN_YAML)

    code, out, err = run_cli(deploy_main, [f"export={pendulum_export}", f"safety={bad}", "steps=5"], capsys)
    line = one_line_error(err)
    assert code == 2 and f"safety={bad} is not valid YAML at line 3, column 1" in line and "fix the file's syntax" in line
    assert "flow mapping at line 2" in line  # where the unclosed mapping starts
    assert out == "" and not (pendulum_export / "deploy.json").exists()  # nothing ran, nothing written

    code, out, err = run_cli(export_main, [f"run_dir={trained_run}", f"safety={bad}", f"out_dir={tmp_path / 'x'}"], capsys)
    line = one_line_error(err)
    assert code == 2 and f"safety={bad} is not valid YAML at line 3" in line
    assert not (tmp_path / "x").exists()


# --- 2. export out_dir that is an existing regular file -----------------------------------------------------------

def test_export_out_dir_that_is_a_file_is_refused_before_the_run_is_read(tmp_path, trained_run, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    # refused before the run is even read: a missing run would otherwise be the error
    code, _, err = run_cli(export_main, ["run_dir=nowhere", f"out_dir={afile}"], capsys)
    assert code == 2 and f"out_dir={afile}: {afile} exists and is not a directory; choose another out_dir" in one_line_error(err)
    code, _, err = run_cli(export_main, ["run_dir=nowhere", f"out_dir={afile / 'sub'}"], capsys)
    assert code == 2 and f"{afile} is a file, so no directory can be made under it" in one_line_error(err)
    assert afile.read_text() == "keep me"

    # the default out_dir (<run_dir>/export) is checked too, before the model is written
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    shutil.rmtree(run / "export", ignore_errors=True)
    (run / "export").write_text("keep me")
    code, _, err = run_cli(export_main, [f"run_dir={run}"], capsys)
    assert code == 2 and f"{run / 'export'} exists and is not a directory" in one_line_error(err)
    assert (run / "export").read_text() == "keep me" and not list(run.glob(".policy*"))


# --- 3. a corrupt model whose sha256 in the sidecar was rewritten to match ----------------------------------------

def _rewrite_model(export: Path, data: bytes) -> None:
    (export / "policy.onnx").write_bytes(data)
    sidecar = json.loads((export / "policy.json").read_text())
    sidecar["sha256"] = sha256_of(export / "policy.onnx")  # someone rewrote both: the checksum cannot tell
    (export / "policy.json").write_text(json.dumps(sidecar))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_model_with_matching_checksum_is_not_a_valid_onnx_model(pendulum_export, capsys, damage):
    data = (pendulum_export / "policy.onnx").read_bytes()
    _rewrite_model(pendulum_export, {"truncated": data[: len(data) // 2], "garbage": b"not onnx at all" * 50,
                                     "empty": b""}[damage])
    model = pendulum_export / "policy.onnx"
    with pytest.raises(ExportError, match=rf"^{re.escape(str(model))} is not a valid ONNX model: ") as info:
        PolicyRuntime(pendulum_export)
    assert "\n" not in str(info.value) and "ONNXRuntimeError" not in str(info.value)
    code, out, err = run_cli(deploy_main, [f"export={pendulum_export}", "steps=5"], capsys)
    assert code == 2 and f"{model} is not a valid ONNX model" in one_line_error(err) and out == ""
    assert not (pendulum_export / "deploy.json").exists()


def test_model_whose_graph_does_not_fit_together_is_not_a_valid_onnx_model(pendulum_export):
    from onnx import TensorProto, helper, numpy_helper

    # a well-formed protobuf whose MatMul cannot work: obs [batch, 4] @ W [3, 1]
    graph = helper.make_graph([helper.make_node("MatMul", ["obs", "W"], ["action"])], "g",
                              [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", 1])],
                              [numpy_helper.from_array(np.ones((3, 1), np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    _rewrite_model(pendulum_export, model.SerializeToString())
    with pytest.raises(ExportError, match="is not a valid ONNX model: .*matrix multiplication"):
        PolicyRuntime(pendulum_export)


# --- 4. deploy out= whose location cannot be written --------------------------------------------------------------

def test_deploy_report_location_is_checked_before_the_run(tmp_path, pendulum_export, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    cases = {
        afile / "deploy.json": f"{afile} is a file, not a directory; choose another report path",
        afile / "sub" / "deploy.json": f"{afile} is a file, not a directory",
        tmp_path: f"out={tmp_path}: is a directory; give a file path such as {tmp_path / 'deploy.json'}",
        tmp_path / "missing" / "deploy.json": f"directory {tmp_path / 'missing'} does not exist; create it",
        # a name too long was a traceback; the permission bits pass /proc (and anything, as root), where the report
        # was then lost after the run
        tmp_path / ("a" * 300 + ".json"): "a report cannot be written there (File name too long); choose another",
    }
    if Path("/proc").is_dir():
        cases[Path("/proc/deploy.json")] = "out=/proc/deploy.json: a report cannot be written there ("
    for out, message in cases.items():
        code, stdout, err = run_cli(deploy_main, [f"export={pendulum_export}", "steps=5", f"out={out}"], capsys)
        assert code == 2 and message in one_line_error(err), (out, err)
        assert stdout == ""  # refused before the run: not even its first log line
    assert afile.read_text() == "keep me" and not (tmp_path / "missing").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "export"]  # the check left no file behind

    lines: list[str] = []  # the Python API checks the same way before running
    with pytest.raises(ValueError, match="is a file, not a directory"):
        deploy(str(pendulum_export), steps=5, out=afile / "r.json", log=lines.append)
    assert lines == []
    report = deploy(str(pendulum_export), steps=5, out=tmp_path / "r.json", log=lines.append)  # and writes it
    assert json.loads((tmp_path / "r.json").read_text())["loop"]["steps"] == report["loop"]["steps"] == 5


def test_a_report_write_that_fails_after_the_run_keeps_the_report_there_before(tmp_path, pendulum_export, capsys,
                                                                                 monkeypatch):
    # the report was written in place: a full disk cut the good report there to invalid JSON (exit 2, no file named)
    import errno

    out = tmp_path / "deploy.json"
    assert run_cli(deploy_main, [f"export={pendulum_export}", "steps=5", f"out={out}"], capsys)[0] == 0
    before = out.read_text()

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("sim2real.deploy.os.replace", full)
    code, stdout, err = run_cli(deploy_main, [f"export={pendulum_export}", "steps=7", f"out={out}"], capsys)
    assert code == 1 and one_line_error(err) == (f"robo-rl: error: out={out}: the report could not be written (No space "
                                                 "left on device); a report there before is kept")
    assert "5 steps" not in stdout and "7 steps" in stdout  # the run's result was printed
    assert out.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["deploy.json", "export"]


def test_an_export_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    # a full disk under the export printed three chained tracebacks (the export there before was kept)
    import errno

    from robo_rl.commands.export import export_main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / ".policy.onnx.tmp"))

    monkeypatch.setattr("robo_rl.exporting.export_run", full)
    code, _, err = run_cli(export_main, [f"run_dir={tmp_path}"], capsys)
    assert code == 1 and one_line_error(err) == (f"robo-rl: error: could not write the export "
                                                 f"({tmp_path / 'out' / '.policy.onnx.tmp'}): No space left on device; "
                                                 "an export already there is kept")


# --- 5. rate_hz, steps and episodes -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["rate_hz=0", "steps=5"], "rate_hz=0.0: must be a number of Hz between 0.001 and 1e+06, or null for the export's own rate"),
    (["rate_hz=-5", "steps=5"], "rate_hz=-5.0: must be a number of Hz between 0.001 and 1e+06"),
    (["rate_hz=nan", "steps=5"], "rate_hz=nan: must be a number of Hz between 0.001 and 1e+06"),
    (["rate_hz=inf", "steps=5"], "rate_hz=inf: must be a number of Hz between 0.001 and 1e+06"),
    (["rate_hz=1e-300", "steps=5"], "rate_hz=1e-300: must be a number of Hz between 0.001"),  # a 1e300 s period
    (["rate_hz=2e6", "steps=5"], "rate_hz=2000000.0: must be a number of Hz between 0.001 and 1e+06"),
    (["steps=0"], "steps=0: must be a whole number >= 1"),
    (["steps=-3"], "steps=-3: must be a whole number >= 1"),
    (["episodes=0"], "episodes=0: must be a whole number >= 1"),
    (["episodes=-1", "steps=5"], "episodes=-1: must be a whole number >= 1"),
    (["steps=abc"], "steps: Value 'abc' of type 'str' could not be converted to Integer"),
])
def test_deploy_refuses_bad_rate_steps_and_episodes(pendulum_export, capsys, args, message):
    code, out, err = run_cli(deploy_main, [f"export={pendulum_export}", *args], capsys)
    assert code == 2 and message in one_line_error(err) and out == ""
    assert not (pendulum_export / "deploy.json").exists()  # no report full of nan, no exit 0


def test_control_loop_refuses_a_zero_rate_and_zero_steps(pendulum_export):
    runtime = PolicyRuntime(pendulum_export)
    robot = CallbackRobot(get=lambda: np.zeros(4), send=lambda a: None, action_dim=1)
    for rate in (0, -5.0, math.nan, math.inf, True, 1e-300, 1e7):
        with pytest.raises(ValueError, match=r"^rate_hz=.*must be a number of Hz between 0.001 and 1e\+06, or None"):
            ControlLoop(runtime, robot, rate_hz=rate)  # 0 used to fall back to the sidecar's 25 Hz
    assert ControlLoop(runtime, robot).rate_hz == pytest.approx(25.0)  # None: the sidecar's
    loop = ControlLoop(runtime, robot, realtime=False)
    for steps in (0, -1, 2.5):
        with pytest.raises(ValueError, match=r"^steps=.*must be a whole number >= 1"):
            loop.run(steps=steps)


# --- 6. sim2sim options -------------------------------------------------------------------------------------------

ACCEPTED_PHYSICS = "mass_scale, friction_scale, damping_scale, actuator_gain_scale"


@pytest.mark.parametrize("arg, message", [
    ("sim2sim.seed=-1", "sim2sim.seed=-1: expected a whole number >= 0"),
    ("sim2sim.seed=abc", "sim2sim.seed: Value 'abc'"),
    ("sim2sim.physics=3", f"sim2sim.physics=3: expected a mapping of [low, high] scale-factor ranges, e.g. "
                          f"\"{{mass_scale:[0.8,1.2],friction_scale:[0.7,1.3]}}\" (keys: {ACCEPTED_PHYSICS})"),
    ("sim2sim.physics=[0.8,1.2]", "sim2sim.physics=[0.8, 1.2]: expected a mapping of [low, high] scale-factor ranges"),
    ("sim2sim.physics=heavy", "sim2sim.physics='heavy': expected a mapping"),
    ("sim2sim.physics={mass_scale:2}", "sim2sim.physics.mass_scale: got '2', expected a [low, high] range of scale "
                                       "factors, e.g. {mass_scale:[0.8,1.2]}"),
    ("sim2sim.physics={mass:[0.8,1.2]}", f"sim2sim.physics.mass: unknown; known keys: {ACCEPTED_PHYSICS}"),
    ("sim2sim.physics={mass_scale:[true,2]}", "sim2sim.physics.mass_scale=[True, 2]: expected [low, high] scale factors"),
    ("sim2sim.physics={mass_scale:[1,2,3]}", "sim2sim.physics.mass_scale=[1, 2, 3]: expected [low, high] scale factors"),
    ("sim2sim.physics={mass_scale:[0,1]}", "sim2sim.physics.mass_scale=[0.0, 1.0]: needs finite > 0.0 factors"),
    ("sim2sim.physics={damping_scale:[1,1e30]}", "sim2sim.physics.damping_scale=[1.0, 1e+30]: needs factors between "
                                                 "0 and 1000 (it scales damping of every joint; beyond that it is not the same robot)"),
    ("sim2sim.physics={mass_scale:[1e-300,1]}", "sim2sim.physics.mass_scale=[1e-300, 1.0]: needs factors between 0.001"),
    ("sim2sim.physics={mass_scale:[nan,1]}", "sim2sim.physics.mass_scale=['nan', 1]: expected [low, high] scale factors"),
    ("sim2sim.timestep=nan", "sim2sim.timestep=nan: expected a finite number of seconds > 0"),
    ("sim2sim.timestep=inf", "sim2sim.timestep=inf: expected a finite number of seconds > 0"),
    ("sim2sim.observation_noise=nan", "sim2sim.observation_noise=nan: expected a finite std >= 0"),
    ("sim2sim.max_episode_steps=0", "sim2sim.max_episode_steps=0: expected a whole number of steps >= 1"),
    ("watchdog.max_observation_age=nan", "watchdog.max_observation_age=nan: expected seconds > 0"),
    ("safety=run", "safety=run: deploy has no run to take filters from; leave safety unset for the sidecar's chain"),
])
def test_deploy_option_errors_name_the_key_and_what_is_accepted(pendulum_export, capsys, arg, message):
    code, out, err = run_cli(deploy_main, [f"export={pendulum_export}", "steps=5", arg], capsys)
    assert code == 2 and message in one_line_error(err) and out == ""
    assert not (pendulum_export / "deploy.json").exists()


def test_deploy_refuses_a_bad_filter_chain_before_the_simulator_is_built(tmp_path, pendulum_export, monkeypatch):
    # ControlLoop built (and so checked) the chain only after the simulator had been built and connected
    import sim2real.deploy as deploy_module

    def no_simulator(*args, **kwargs):
        raise AssertionError("the simulator was built before the filter chain was checked")

    monkeypatch.setattr(deploy_module, "MujocoSim2SimRobot", no_simulator)
    tank = {"type": "energy_tank", "velocity_index": [1], "dt": 0.02, "initial_energy": 1.0, "max_energy": 2.0,
            "damping": 1.0}
    for export, safety, message in (
            (pendulum_export, [{"type": "box", "low": 1.0, "high": -1.0}],
             r"^safety.filters\[0\] \(box\): low > high in dimension 0: 1.0 > -1.0$"),
            (pendulum_export, {"filters": [{"type": "rate", "max_delta": 0.0}]},
             r"^safety.filters\[0\] \(rate\): max_delta: every entry must be > 0.0"),
            # the sidecar's own chain (a hand-edited sidecar: export checks the chain it writes)
            (make_export(tmp_path / "e", obs_dim=4, act_dim=1, low=-3.0, high=3.0, safety={"filters": [tank]}), None,
             r"^safety.filters\[0\] \(energy_tank\): dt=0.02 is not the control period 0.04 s")):
        with pytest.raises(ValueError, match=message):
            deploy(str(export), steps=5, safety=safety, log=lambda _: None)
    # an observation-noise std per dimension, of another length than the export's observations (the task must match
    # them): refused once the task was built
    with pytest.raises(ValueError, match=r"^sim2sim.observation_noise has 2 values; the export's observations have 4 "
                                         r"\(give one std, or one per observation dimension\)$"):
        deploy(str(pendulum_export), steps=5, sim2sim={"observation_noise": [0.1, 0.2]}, log=lambda _: None)


def test_sim2sim_robot_refuses_bad_values_from_python():
    for kwargs, key in [({"seed": -1}, "sim2sim.seed=-1"), ({"seed": 1.5}, "sim2sim.seed=1.5"),
                        ({"max_episode_steps": 0}, "sim2sim.max_episode_steps=0"),
                        ({"action_latency": True}, "sim2sim.action_latency=True"),
                        ({"physics": {"mass_scale": "12"}}, "sim2sim.physics.mass_scale='12'"),  # not read as 1, 2
                        ({"control_dt": math.nan}, "control_dt=nan")]:
        with pytest.raises(ValueError, match=rf"^{key}"):
            MujocoSim2SimRobot("InvertedPendulum-v5", **kwargs)
    robot = MujocoSim2SimRobot("InvertedPendulum-v5", seed=3.0, max_episode_steps=20.0)  # whole floats are whole numbers
    assert robot.seed == 3 and robot.max_episode_steps == 20


def test_sim2sim_takes_any_whole_seed_and_refuses_a_timestep_no_command_finishes():
    robot = MujocoSim2SimRobot("InvertedPendulum-v5", seed=10**30)  # was np.isfinite's TypeError (deploy: a traceback)
    robot.connect()
    robot.disconnect()
    # 1e-12 s made 4e10 physics steps per 0.04 s command: the first step never finished
    robot = MujocoSim2SimRobot("InvertedPendulum-v5", timestep=1e-12)
    with pytest.raises(ValueError, match=r"^sim2sim.timestep=1e-12: 40,000,000,000 physics steps per command of 0.04 s, "
                                         r"more than 1,000,000; give a sim2sim.timestep >= 4e-08 s"):
        robot.connect()
    robot.disconnect()


class _Timeless(gym.Env):
    """A user's task without a ``dt``: nothing says how long one of its steps lasts."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Box(-3.0, 3.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.float32), {}

    def step(self, action):
        return np.zeros(4, np.float32), 0.0, False, False, {}


gym.register("robo_rl_test/Timeless-v0", entry_point=_Timeless, max_episode_steps=5)


def test_deploying_a_task_without_dt_needs_a_control_rate_and_runs_with_one(tmp_path):
    # deploy's loop ran at 1 / robot.dt, 0.0 for it: a ZeroDivisionError traceback. A sim robot driven directly
    # (robo-rl's own TwoGoals has no dt either) needs no rate: only the loop does
    export = make_export(tmp_path / "export", obs_dim=4, act_dim=1, task="robo_rl_test/Timeless-v0", low=-3.0, high=3.0)
    sidecar = json.loads((export / "policy.json").read_text())
    sidecar["control"] = {"dt": None, "rate_hz": None}  # what an export of a task without dt records
    (export / "policy.json").write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match=r"^robo_rl_test/Timeless-v0 does not say how long one of its steps lasts \(its "
                                         r"env has no dt, and the export no control rate\): give the rate it runs at, "
                                         r"rate_hz=<Hz>$"):
        deploy(str(export), steps=5, log=lambda _: None)
    report = deploy(str(export), steps=5, rate_hz=50.0, log=lambda _: None)
    assert report["loop"]["steps"] == 5


def _needs_an_older_simulator(**_):  # as gymnasium's Hopper-v3 (mujoco-py) and Pusher-v4 (mujoco<3)
    raise ImportError("`OldSim-v0` is only supported on `foosim<3`")


gym.register("robo_rl_test/DeploysOldSim-v0", entry_point=_needs_an_older_simulator)


def test_deploy_on_a_task_whose_own_import_fails_is_one_line(pendulum_export, capsys):
    # the ImportError was re-raised as it was: `robo-rl deploy task=Hopper-v3` ended in a traceback, exit 1
    code, _, err = run_cli(deploy_main, [f"export={pendulum_export}", "steps=5", "task=robo_rl_test/DeploysOldSim-v0"], capsys)
    assert code == 2 and err.strip() == ("robo-rl: error: task='robo_rl_test/DeploysOldSim-v0' cannot be built here, it needs a "
                                         "package that is not installed (or another version of one): ImportError: "
                                         "`OldSim-v0` is only supported on `foosim<3`")


def test_deploy_refuses_an_empty_task_instead_of_dropping_the_task_kwargs(pendulum_export):
    with pytest.raises(ValueError, match=r"^task='': give a gymnasium id, or null for the export's own task"):
        deploy(str(pendulum_export), task="", steps=5, log=lambda _: None)


@pytest.mark.parametrize("text, words", [
    ("filter:\n  - type: box\n", ["found keys filter", "filters: []"]),  # mistyped: was read as "no filters"
    ("", ["found an empty file"]),
    ("- type: box\n", ["found a list"]),
    ("filters: []\nfilterz: 1\n", ["unknown key(s) filterz"]),
])
def test_a_safety_file_without_its_filters_list_is_refused_not_read_as_no_filters(tmp_path, text, words):
    from robo_rl.exporting import load_safety_spec

    path = tmp_path / "safety.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as exc:
        load_safety_spec(str(path))
    assert f"safety={path}" in str(exc.value) and all(w in str(exc.value) for w in words)
    assert load_safety_spec("none") == {"filters": []}  # the way to say no filters


@pytest.mark.parametrize("torch_installed", [False, True])
def test_the_deploy_command_runs_without_torch(pendulum_export, torch_installed):
    # a robot computer without torch: `robo-rl deploy` imported torch at start-up (through the envs package), and
    # with torch installed it still did, which cost a second of start-up and the memory of torch's libraries
    import os
    import subprocess
    import sys

    code = ("import sys\n"
            + ("" if torch_installed else "sys.modules['torch'] = None\n")  # any import of torch fails, as where it is not installed
            + "from robo_rl.cli import main\n"
            f"code = main(['deploy', 'export={pendulum_export}', 'steps=20', 'out={pendulum_export / 'deploy.json'}'])\n"
            "stack = sorted(m for m in ('torch', 'envs.base', 'policies', 'robo_rl.learners') if sys.modules.get(m))\n"
            "assert not stack, f'the training stack was imported: {stack}'\n"
            "sys.exit(code)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (pendulum_export / "deploy.json").exists()


def test_deploy_given_a_run_directory_points_to_its_export(tmp_path, capsys):
    # export= names the run (whose export/ holds policy.json, robo-rl export's default out_dir): say where it is
    run = tmp_path / "run"
    make_export(run / "export", obs_dim=4, act_dim=1, low=-3.0, high=3.0, task="InvertedPendulum-v5")
    code, out, err = run_cli(deploy_main, [f"export={run}", "steps=5"], capsys)
    line = one_line_error(err)
    assert code == 2 and f"{run / 'policy.json'} not found" in line and f"(its export/ holds one: export={run / 'export'})" in line
    code, out, err = run_cli(deploy_main, [f"export={tmp_path / 'nothing'}", "steps=5"], capsys)
    assert code == 2 and "export=" not in one_line_error(err).split("`robo-rl export`")[1]
