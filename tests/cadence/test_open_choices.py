"""Open choices (a process of your own, a driver or teleop by import path) are checked when a
command starts: an unknown name ends it in one line before anything is read or written."""
from pathlib import Path

import pytest

from cadence.errors import CadenceError
from cadence.open_choices import check_open_choices
from tests.cadence.test_choices import composed
from tests.cadence.test_cli import cadence


@pytest.mark.parametrize("command, overrides, words", [
    ("train", ["policy.process=ddpx"], "policy.process must be one of ['anchor', "),   # plugins may join the list
    ("demo", ["policies.flow.process=ddpx"], "got 'ddpx'"),
    ("run", ["checkpoint=x", "robot.driver=nowhere"], "robot.driver='nowhere': expected one of ['remote'"),
    ("run", ["checkpoint=x", "robot.driver=pkg.mod:"], "robot.driver='pkg.mod:'"),
    ("record", ["teleop.source=joystick"], "teleop.source='joystick': expected one of ['gamepad'"),
])
def test_an_unknown_open_choice_is_refused_in_one_line(command, overrides, words):
    with pytest.raises(CadenceError) as info:
        check_open_choices(composed(command, overrides))
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("command, overrides", [
    ("train", ["policy=flow"]),
    ("demo", []),
    ("run", ["checkpoint=x", "robot.driver=my_pkg.arm:Arm"]),   # spelled right; imported only when run
    ("run", ["checkpoint=x", "robot=so101"]),
    ("record", ["teleop=keyboard"]),
    ("robot_check", ["robot.driver=replay"]),
])
def test_known_names_and_import_paths_pass(command, overrides):
    check_open_choices(composed(command, overrides))


def test_a_plugin_process_is_known_once_its_module_is_loaded(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[2] / "docs" / "examples"))
    monkeypatch.setenv("CADENCE_PLUGINS", "clean_flow")
    check_open_choices(composed("train", ["policy.process=clean_flow"]))


def test_the_command_line_stops_before_reading_or_writing(tmp_path):
    proc = cadence("train", "policy.process=ddpx", "run_dir=runs/x", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "cadence train: error: policy.process must be one of ['anchor', 'ddpm', 'edm', 'flow', 'regression', "
        "'shortcut', 'streaming'], got 'ddpx' (a process of your own: `cadence --plugin MODULE ...` imports the "
        "module that registers it)"]
    written = {p.relative_to(tmp_path).parts[:3] for p in tmp_path.rglob("*") if p.is_file()}
    assert written <= {("runs", "x", ".hydra"), ("runs", "x", "train.log")}   # only Hydra's own record and log
