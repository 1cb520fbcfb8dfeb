"""MuJoCo's warnings routed to Python logging (what `robo-rl` installs at start-up)."""

import logging
from pathlib import Path

import gymnasium
import mujoco
import pytest

from envs import mujoco_log

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
