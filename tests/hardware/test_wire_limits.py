"""What one message or a hello's spec may claim, checked before anything is built from it."""
import json

import pytest
from cadence.hardware.robot import Feature, RobotSpec
from cadence.hardware.wire import (MAX_ARRAY_BYTES, MAX_ARRAYS, Message, WireError, check_spec, decode, decode_header,
                                   encode, observation_from)

GOOD = RobotSpec("arm", {"state": Feature((6,)), "image": Feature((96, 96, 3), "uint8")},
                 Feature((2,), "float32", (-1.0, -1.0), (1.0, 1.0)), 30.0)


def test_a_message_of_more_frames_than_a_header_and_its_arrays_is_refused_first():
    frames = encode("observe", msg_id=3)
    assert len(decode_header(frames + [b""] * MAX_ARRAYS).frames) == MAX_ARRAYS      # as many as arrays may be
    with pytest.raises(WireError, match=f"{MAX_ARRAYS + 2:,} frames: more than a header and {MAX_ARRAYS} arrays"):
        decode_header(frames + [b""] * (MAX_ARRAYS + 1))
    with pytest.raises(WireError, match="100,001 frames"):
        decode_header(frames + [b""] * 100_000)


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1" + "0" * 400 + ".0"])
def test_json_numbers_that_overflow_to_infinity_are_refused(number):
    head = json.dumps({"v": 1, "kind": "observe", "id": 1, "ok": True, "arrays": {}})[:-1] + f', "t": {number}}}'
    with pytest.raises(WireError, match="header not JSON"):
        decode([head.encode()])


@pytest.mark.parametrize("t_capture", [10 ** 400, True, "1.0", None])
def test_an_observation_time_that_is_not_a_finite_number_is_refused(t_capture):
    message = Message("observe", 1, {"ok": True, "obs": {"t_capture": t_capture, "seq": 1, "info": {}}})
    with pytest.raises(WireError, match="obs: bad t_capture"):
        observation_from(message)


def test_an_observation_time_the_clock_offset_makes_infinite_is_refused():
    message = Message("observe", 1, {"ok": True, "obs": {"t_capture": 1e308, "seq": 1, "info": {}}})
    with pytest.raises(WireError, match="obs: bad t_capture"):
        observation_from(message, clock_offset_s=-1e308)
    assert observation_from(message).t_capture == 1e308


def test_a_plausible_spec_passes():
    assert check_spec(GOOD) is GOOD


@pytest.mark.parametrize("change, message", [
    ({"rate_hz": 0.0}, r"rate_hz 0.0 not in \(0, 10000\]"),
    ({"rate_hz": -50.0}, "rate_hz -50.0"),
    ({"rate_hz": float("nan")}, "rate_hz nan"),
    ({"action": Feature((2,), "U400000000")}, "action: dtype 'U400000000' not allowed"),
    ({"action": Feature((10 ** 10,))}, f"action: more than {MAX_ARRAY_BYTES:,} bytes"),
    ({"action": Feature((2, 0))}, r"action: bad shape \[2, 0\]"),
    ({"action": Feature((2,), "float32", (-1.0,), (1.0, 1.0))}, "action bounds must be 2 finite numbers"),
    ({"action": Feature((2,), "float32", (-1.0, float("inf")), (1.0, 1.0))}, "action bounds must be 2 finite"),
    ({"action": Feature((2,), "float32", (1.0, -1.0), (-1.0, 1.0))}, "low > high"),
    ({"observation": {"image": Feature((8192, 8192, 3), "uint8")}}, "image: more than"),
    ({"observation": {f"k{i}": Feature((1,)) for i in range(MAX_ARRAYS + 1)}}, "65 observation keys"),
    ({"observation": {"a": Feature((1,) * 9)}}, "a: bad shape"),
])
def test_a_spec_no_robot_could_serve_is_refused_naming_what(change, message):
    spec = RobotSpec(**{**{"name": GOOD.name, "observation": GOOD.observation, "action": GOOD.action,
                           "rate_hz": GOOD.rate_hz}, **change})
    with pytest.raises(WireError, match=message):
        check_spec(spec)
