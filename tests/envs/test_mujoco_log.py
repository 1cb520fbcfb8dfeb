"""MuJoCo's warnings routed to Python logging (what `robo-rl` installs at start-up)."""

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium
import mujoco
import numpy as np
import pytest
import torch

from envs import make_env, mujoco_log
from tests.helpers import robo_rl_records

UNSTABLE = """<mujoco><option timestep="0.01"/><worldbody><body><joint name="j" type="hinge"/>
<geom type="capsule" size=".1" fromto="0 0 0 1 0 0" mass="1"/></body></worldbody>
<actuator><motor joint="j"/></actuator></mujoco>"""


@pytest.fixture
def routed(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mujoco_log, "counts", type(mujoco_log.counts)())
    mujoco_log.route_mujoco_warnings()
    yield tmp_path
    mujoco.set_mju_user_warning(None)  # MuJoCo's own handler again


def test_warnings_go_to_logging_once_and_nothing_is_written(routed, caplog):
    caplog.set_level(logging.DEBUG, logger="robo_rl.mujoco")
    # gymnasium's HalfCheetah asset uses the compiler attribute MuJoCo 4 deprecates: debug level, not a warning
    xml = Path(gymnasium.__file__).parent / "envs" / "mujoco" / "assets" / "half_cheetah.xml"
    for _ in range(3):
        mujoco.MjModel.from_xml_path(str(xml))
    deprecation = [r for r in caplog.records if "settotalmass" in r.getMessage()]
    assert len(deprecation) == 3 and all(r.levelno == logging.DEBUG for r in deprecation)
    # diverging simulations (MuJoCo warns once per MjData): the first warning of its kind at WARNING level,
    # the others (at other simulated times) counted at debug
    model = mujoco.MjModel.from_xml_string(UNSTABLE)
    for steps in (1, 2, 3):
        data = mujoco.MjData(model)
        for _ in range(steps):
            mujoco.mj_step(model, data)
        data.ctrl[:] = float("nan")
        mujoco.mj_step(model, data)
    unstable = [r for r in caplog.records if "CTRL" in r.getMessage()]
    assert [r.levelno for r in unstable] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert unstable[-1].getMessage().endswith("(x3)")
    assert not (routed / "MUJOCO_LOG.TXT").exists()


def test_each_run_logs_the_first_warning_of_each_kind(routed):
    # train() routes the warnings at the start of each run: a -m sweep's later jobs (one process) logged a kind their
    # earlier jobs had met at debug level only, in neither their train.log nor on the console
    model = mujoco.MjModel.from_xml_string(UNSTABLE)
    with robo_rl_records() as records:
        for run in range(2):
            mujoco_log.route_mujoco_warnings()  # as train() does
            for _ in range(2):
                data = mujoco.MjData(model)
                data.ctrl[:] = float("nan")
                mujoco.mj_step(model, data)
    assert [r.levelno for r in records] == [logging.WARNING, logging.DEBUG] * 2

class Unstable(gymnasium.Env):
    """UNSTABLE, given a NaN control at its 3rd step: MuJoCo warns (and resets the simulation)."""

    observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float64)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self):
        self.model = mujoco.MjModel.from_xml_string(UNSTABLE)
        self.data = mujoco.MjData(self.model)
        self.t = 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.t = 0
        return np.zeros(1), {}

    def step(self, action):
        self.t += 1
        self.data.ctrl[:] = float("nan") if self.t == 3 else action
        mujoco.mj_step(self.model, self.data)
        return np.zeros(1), 0.0, False, False, {}


gymnasium.register("robo_rl_test/MujocoLogUnstable-v0", entry_point=Unstable, max_episode_steps=20)


def test_the_warnings_of_async_workers_are_logged_by_the_main_process(routed):
    # logged in each worker process (its own copy of this module and of the run's handlers), a warning came once
    # per worker on the console, and never in train.log
    env = make_env("robo_rl_test/MujocoLogUnstable-v0", num_envs=2, vectorization="async")
    try:
        with robo_rl_records() as records:  # (in this process)
            env.reset(seed=0)
            for _ in range(3):
                env.step(torch.zeros(2, 1))
        warning = "MuJoCo: Nan, Inf or huge value in CTRL at ACTUATOR 0. The simulation is unstable. Time = 0.0200."
        # by the step that warned (train.log is the run's until it ends), once per kind as in one process
        assert [(r.levelno, r.getMessage()) for r in records] == [
            (logging.WARNING, warning), (logging.DEBUG, f"{warning} (x2)")]
    finally:
        env.close()
    assert not (routed / "MUJOCO_LOG.TXT").exists()


def test_envs_built_from_python_leave_no_mujoco_log_and_keep_a_handler_of_the_callers(tmp_path):
    # make_env from Python (outside train(), which routes the warnings for its run) printed HalfCheetah's settotalmass
    # deprecation once per env copy and appended it to MUJOCO_LOG.TXT in the working directory
    code = textwrap.dedent("""
        import mujoco
        from envs import make_env
        for backend in ("gymnasium", "mujoco"):
            make_env("HalfCheetah-v5", num_envs=2, backend=backend).close()
        assert mujoco.get_mju_user_warning() is None  # MuJoCo's own handler again afterwards
        mine = []
        mujoco.set_mju_user_warning(mine.append)  # a handler of the caller's own is left to get them
        make_env("HalfCheetah-v5", num_envs=1, backend="gymnasium").close()
        assert any("settotalmass" in m for m in mine), mine
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.returncode == 0, proc.stderr
    assert "settotalmass" not in proc.stderr and not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_make_env_knows_which_gymnasium_tasks_compile_mujoco_models():
    from envs import _builds_mujoco

    # (an entry point names "module:Class": robo-rl's ContactMaze was missed when the class part was read as module)
    assert [_builds_mujoco(t) for t in ("HalfCheetah-v5", "robo_rl/ContactMaze-v0", "robo_rl/TwoGoals-v0",
                                        "Pendulum-v1", "Unknown-v0")] == [True, True, False, False, False]


def test_the_workers_pipe_closes_with_an_env_dropped_without_close():
    # every async env dropped without close() kept its warning pipe's 2 fds open for the rest of the process
    import gc

    from envs.mujoco_log import WorkerWarnings

    pipe = WorkerWarnings()
    fds = (pipe._read, pipe._write)
    os.fstat(fds[0]), os.fstat(fds[1])  # open
    del pipe
    gc.collect()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    closed = WorkerWarnings()
    closed.close()
    closed.close()  # a second close (and the collection after it) closes nothing twice
    del closed
    gc.collect()
