"""Robots from the ``robot`` config group: built-in kinds and drivers given by import path, with
one-line errors naming what is wrong."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cadence.config import TaskConfig
from cadence.robot_schema import RobotConfig
from cadence.hardware.robot import RobotError
from cadence.hardware.robot_factory import make_robot

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def _make(**robot):
    cfg = OmegaConf.merge(OmegaConf.structured(RobotConfig), robot)
    return make_robot(cfg, OmegaConf.structured(TaskConfig), 10.0)


def test_a_driver_by_import_path_gets_its_options(monkeypatch):
    monkeypatch.chdir(EXAMPLES)                      # the current directory is importable, as with python -m
    robot = _make(driver="point_robot:PointRobot", options={"rate_hz": 25.0, "limit": 0.5})
    assert type(robot).__name__ == "PointRobot"
    assert robot.spec.rate_hz == 25.0 and robot.spec.action.high == (0.5, 0.5)


@pytest.mark.parametrize("driver, options, words", [
    ("nowhere", {}, "expected one of"),
    ("no_such_module_xyz:Robot", {}, "cannot import 'no_such_module_xyz'"),
    ("point_robot:Nope", {}, "has no class 'Nope'"),
    ("point_robot:PointRobot", {"speed": 3}, "unexpected keyword argument 'speed'"),
    ("collections:OrderedDict", {}, "lacks connect, reset"),
])
def test_a_bad_driver_is_one_line_naming_it(monkeypatch, driver, options, words):
    monkeypatch.chdir(EXAMPLES)
    with pytest.raises(RobotError, match="robot.driver") as info:
        _make(driver=driver, options=options)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_built_in_kinds_take_no_options():
    with pytest.raises(RobotError, match="robot.options is for drivers given by import path"):
        _make(driver="sim", options={"port": "/dev/ttyACM0"})


def test_the_simulated_robot_goes_through_the_same_factory():
    robot = _make(driver="sim")
    assert type(robot).__name__ == "SimRobot" and robot.spec.rate_hz == 10.0
