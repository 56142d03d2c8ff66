"""The conformance run against working drivers (the simulated robot, the docs' example driver)
and drivers that each break one item of the contract: every fault is named, nothing else fails."""
import pytest

from cadence.hardware.conformance import CheckSettings, check_robot
from cadence.hardware.sim_robot import SimRobot

from .faulty_drivers import BlockingRobot, DriftingRobot, PointRobot, WallClockRobot

# Short windows; latency bounded by a whole period, so only a blocking driver fails it on a loaded machine.
FAST = dict(seconds=1.0, settle_s=0.3, hold_s=0.6, latency_fraction=1.0)


def _results(items):
    return {i.name: i.result for i in items}


def _failed(items):
    return [i.name for i in items if i.failed]


def test_the_simulated_robot_passes_with_moves():
    robot = SimRobot("cadence/BimodalReach-v0", rate_hz=20.0, obs_keys=["state"])
    items = check_robot(robot, CheckSettings(move=True, position=("state", 0, 2), **FAST))
    assert _failed(items) == [], items
    results = _results(items)
    assert results["hold"] == results["send_action"] == results["non-finite"] == "pass"


def test_read_only_never_commands_and_skips_what_needs_motion():
    class Counting(PointRobot):
        sent = 0

        def send_action(self, action):
            if self._thread is not None:
                Counting.sent += 1
            return super().send_action(action)

    items = check_robot(Counting(rate_hz=50.0), CheckSettings(**FAST))
    assert _failed(items) == []
    assert Counting.sent == 0                                   # the only send is after disconnect, refused
    assert {n: r for n, r in _results(items).items() if r == "skip"} == {
        "send_action": "skip", "non-finite": "skip", "clipping": "skip"}


def test_clipping_is_checked_where_a_limit_is_within_one_step():
    items = check_robot(PointRobot(rate_hz=50.0, limit=0.01), CheckSettings(move=True, step=0.6, **FAST))
    assert _failed(items) == [] and _results(items)["clipping"] == "pass"


def test_a_driver_that_returns_the_command_unclipped_fails_clipping():
    class Unclipped(PointRobot):
        def send_action(self, action):
            super().send_action(action)
            return action

    items = check_robot(Unclipped(rate_hz=50.0, limit=0.01), CheckSettings(move=True, step=0.6, **FAST))
    assert "clipping" in _failed(items)
    assert "return the clipped action" in next(i.detail for i in items if i.name == "clipping")


@pytest.mark.parametrize("driver, item, words", [
    (BlockingRobot, "latency", "it must not block"),
    (DriftingRobot, "hold", "kept moving while held"),
    (WallClockRobot, "clock", "time.monotonic()"),
])
def test_a_faulty_driver_fails_the_item_it_breaks_and_only_that(driver, item, words):
    items = check_robot(driver(rate_hz=30.0), CheckSettings(move=True, **FAST))
    failed = _failed(items)
    # A blocking observation read also starves the stream of fresh observations; nothing else fails.
    assert item in failed and set(failed) <= {item, "stream"}, items
    assert words in next(i.detail for i in items if i.name == item)


def test_a_driver_without_a_spec_fails_spec_and_still_disconnects():
    class NoSpec(PointRobot):
        def __init__(self):
            super().__init__()
            self.spec = None

        def connect(self):
            pass

        def disconnect(self):
            self.disconnects += 1

    robot = NoSpec()
    robot.disconnects = 0
    items = check_robot(robot, CheckSettings(**FAST))
    assert _failed(items) == ["spec"] and _results(items)["disconnect"] == "pass"
    assert robot.disconnects == 2                                # twice: it must be idempotent
