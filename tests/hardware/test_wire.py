"""The robot wire format: round trips, every rejection reason, header-first decoding, the token
rule, and a seeded fuzz run."""
import json
import random

import numpy as np
import pytest
from cadence.hardware.robot import Feature, Observation, RobotError
from cadence.hardware.wire import (
    DTYPES,
    KINDS,
    MAX_ARRAY_BYTES,
    MAX_HEADER_BYTES,
    MIN_TOKEN_BYTES,
    Message,
    WireError,
    check_against,
    check_token,
    decode,
    decode_header,
    decode_payload,
    encode,
    observation_from,
    observation_payload,
)


def _header(frames):
    return json.loads(frames[0])


def _with_header(frames, **changes):
    head = _header(frames)
    head.update(changes)
    return [json.dumps(head).encode(), *frames[1:]]


def _reason(frames) -> str:
    with pytest.raises(WireError) as info:
        decode(frames)
    return info.value.reason


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_round_trips(kind):
    arrays = {"action": np.array([0.5, -1.25], np.float32)} if kind == "act" else {}
    fields = {"seed": 3} if kind == "reset" else {"reason": "x"} if kind == "error" else {}
    token = None if kind == "error" else "s3cret"
    m = decode(encode(kind, fields, arrays, msg_id=41, token=token))
    assert (m.kind, m.id, m.token, dict(m.fields)) == (kind, 41, token, fields)
    assert m.arrays.keys() == arrays.keys()
    for k, a in arrays.items():
        np.testing.assert_array_equal(m.arrays[k], a)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_every_dtype_round_trips_exactly(dtype):
    rng = np.random.default_rng(0)
    a = (rng.random((3, 4, 2)) * 200 - 100).astype(dtype)
    if dtype == "bool":
        a = rng.random((3, 4, 2)) > 0.5
    big_endian = a.astype(a.dtype.newbyteorder(">"))          # sent as little-endian whatever the input
    strided = np.asfortranarray(a)[:, ::-1]                    # not C-contiguous
    m = decode(encode("observe", {}, {"a": big_endian, "b": strided, "empty": a[:0]}, 1, "t"))
    assert m.arrays["a"].dtype.name == dtype and m.arrays["a"].dtype.isnative
    np.testing.assert_array_equal(m.arrays["a"], a)
    np.testing.assert_array_equal(m.arrays["b"], strided)
    assert m.arrays["empty"].shape == (0, 4, 2)
    m.arrays["a"][...] = 0                                      # decoded arrays are writable copies


def test_frame_layout_is_json_header_then_raw_little_endian_buffers():
    frames = encode("act", {"x": 1}, {"action": np.array([1.0, 2.0], np.float32)}, 7, "tok")
    assert _header(frames) == {"v": 1, "kind": "act", "id": 7, "token": "tok", "x": 1,
                               "arrays": {"action": {"dtype": "float32", "shape": [2]}}}
    assert frames[1] == np.array([1.0, 2.0], "<f4").tobytes()


def test_decode_accepts_bytearray_and_memoryview_frames():
    frames = encode("act", {}, {"action": np.ones(2, np.float32)}, 2, "t")
    assert decode([bytearray(frames[0]), memoryview(frames[1])]).arrays["action"].tolist() == [1.0, 1.0]


def test_observation_payload_round_trip_and_clock_offset():
    obs = Observation({"state": np.arange(6, dtype=np.float32)}, t_capture=100.0, seq=4,
                      info={"is_success": np.bool_(True), "distance": np.float64(0.5)})
    fields, arrays = observation_payload(obs)
    m = decode(encode("observe", {"ok": True, **fields}, arrays, 3))
    back = observation_from(m, {"state": Feature((6,))}, clock_offset_s=2.5)
    assert (back.t_capture, back.seq, dict(back.info)) == (97.5, 4, {"is_success": True, "distance": 0.5})
    np.testing.assert_array_equal(back.values["state"], obs.values["state"])
    assert observation_from(decode(encode("observe", observation_payload(None)[0], {}, 4))) is None
    with pytest.raises(WireError, match="shape"):
        observation_from(m, {"state": Feature((7,))})


@pytest.mark.parametrize("frames, reason", [
    ([b"{not json"], "header not JSON"),
    ([b"\xff\xfe"], "header not UTF-8"),
    ([b"[1, 2]"], "header not an object"),
    ([b'"hello"'], "header not an object"),
    ([b"[" * 50_000 + b"]" * 10_000], "header not JSON"),              # deep nesting, < 64 KiB
    ([b'{"v":1,"kind":"act","id":1,"x":NaN}'], "header not JSON"),    # not strict JSON
    ([b" " * (MAX_HEADER_BYTES + 1)], "header too large"),
    ([], "empty message"),
    ([b'{"v":2,"kind":"hello","id":1}'], "unsupported version"),
    ([b'{"v":true,"kind":"hello","id":1}'], "unsupported version"),
    ([b'{"v":1,"kind":"explode","id":1}'], "unknown kind"),
    ([b'{"v":1,"kind":7,"id":1}'], "unknown kind"),
    ([b'{"v":1,"kind":"hello","id":"1"}'], "bad id"),
    ([b'{"v":1,"kind":"hello","id":1.0}'], "bad id"),
    ([b'{"v":1,"kind":"hello","id":false}'], "bad id"),
    ([b'{"v":1,"kind":"hello","id":99999999999999999999999}'], "bad id"),
    ([b'{"v":1,"kind":"hello","id":1,"token":5}'], "bad token field"),
    ([b'{"v":1,"kind":"hello","id":1,"arrays":[]}'], "bad arrays field"),
    ([b'{"v":1,"kind":"act","id":1,"arrays":{"a":{"dtype":"float32"}}}', b""], "bad spec"),
    ([b'{"v":1,"kind":"act","id":1,"arrays":{"a":{"dtype":"object","shape":[1]}}}', b"x" * 8], "bad dtype"),
    ([b'{"v":1,"kind":"act","id":1,"arrays":{"a":{"dtype":"<f4","shape":[1]}}}', b"x" * 4], "bad dtype"),
    ([b'{"v":1,"kind":"act","id":1,"arrays":{"a":{"dtype":"float32","shape":[-1]}}}', b""], "bad shape"),
    ([b'{"v":1,"kind":"act","id":1,"arrays":{"a":{"dtype":"float32","shape":[1.5]}}}', b""], "bad shape"),
    ([b'{"v":1,"kind":"act","id":1,"arrays":{"a":{"dtype":"float32","shape":3}}}', b""], "bad shape"),
    ([b'{"v":1,"kind":"act","id":1,"arrays":{"a":{"dtype":"uint8","shape":[' + b"1," * 9 + b"1]}}}", b"x"],
     "bad shape"),
    ([b'{"v":1,"kind":"act","id":1,"arrays":{"a":{"dtype":"float64","shape":[4096,4096,4096]}}}', b""],
     "arrays too large"),
    ([b'{"v":1,"kind":"act","id":1,"arrays":{"a":{"dtype":"uint8","shape":[2]}}}'], "frame count mismatch"),
    ([b'{"v":1,"kind":"act","id":1}', b"extra"], "frame count mismatch"),
    ([b'{"v":1,"kind":"act","id":1,"arrays":{"a":{"dtype":"float32","shape":[2]}}}', b"x" * 7],
     "wrong byte length"),
    ([b'{"v":1,"kind":"act","id":1,"arrays":{"a":{"dtype":"bool","shape":[2]}}}', b"\x01\x02"],
     "bool bytes not 0/1"),
    ("not a list", "frames must be a list"),
    ([b'{"v":1,"kind":"hello","id":1}', 42], "frames must be bytes"),
])
def test_each_rejection_has_a_specific_reason(frames, reason):
    assert reason in _reason(frames)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_finite_floats_are_rejected_on_both_sides(bad, dtype):
    a = np.array([0.0, bad], dtype)
    with pytest.raises(WireError, match="non-finite"):
        encode("act", {}, {"action": a}, 1, "t")
    valid = encode("act", {}, {"action": np.zeros(2, dtype)}, 1, "t")
    assert "non-finite" in _reason([valid[0], a.astype(np.dtype(dtype).newbyteorder("<")).tobytes()])


def test_total_array_size_is_limited_across_arrays():
    n = MAX_ARRAY_BYTES // 2 + 8
    specs = {f"a{i}": {"dtype": "uint8", "shape": [n]} for i in range(2)}
    head = json.dumps({"v": 1, "kind": "observe", "id": 1, "arrays": specs}).encode()
    assert _reason([head, b"", b""]) == "arrays too large"          # refused before reading frames


def test_rejection_keeps_the_id_for_the_error_reply():
    with pytest.raises(WireError) as info:
        decode([b'{"v":1,"kind":"act","id":9,"arrays":{"a":{"dtype":"float32","shape":[2]}}}', b"1234"])
    assert info.value.msg_id == 9
    with pytest.raises(WireError) as info:
        decode([b"{oops"])
    assert info.value.msg_id is None


def test_encode_refuses_what_decode_would_refuse():
    for kwargs, reason in [({"kind": "nope"}, "unknown kind"),
                           ({"kind": "act", "arrays": {"a": np.array(["x"], object)}}, "dtype object"),
                           ({"kind": "act", "arrays": {"a": np.zeros(2, np.float16)}}, "dtype float16"),
                           ({"kind": "act", "fields": {"id": 3}}, "reserved"),
                           ({"kind": "act", "fields": {"x": float("nan")}}, "fields not JSON"),
                           ({"kind": "act", "fields": {"x": object()}}, "fields not JSON"),
                           ({"kind": "act", "fields": {"x": "y" * MAX_HEADER_BYTES}}, "header too large"),
                           ({"kind": "act", "msg_id": True}, "id")]:
        with pytest.raises(WireError, match=reason):
            encode(**{"fields": None, "arrays": None, "msg_id": 1, "token": "t", **kwargs})


def test_decode_header_reads_frame_zero_only_and_decode_payload_the_rest():
    good = encode("act", {"expires": 1.5}, {"action": np.array([1.0, 2.0], np.float32)}, 7, "tok")
    junk = [good[0], b"\xff" * 8]                         # NaN bytes: only decode_payload looks
    head = decode_header(junk)
    assert (head.kind, head.id, head.token, head.payload_bytes) == ("act", 7, "tok", 8)
    assert head.header["expires"] == 1.5 and bytes(head.frames[0]) == b"\xff" * 8
    with pytest.raises(WireError, match="non-finite"):
        decode_payload(head)
    assert decode_payload(decode_header(good)).arrays["action"].tolist() == [1.0, 2.0]
    with pytest.raises(WireError, match="header too large"):
        decode_header(good, max_header_bytes=len(good[0]) - 1)
    for frames in ([b"{oops"], "not a list", [b'{"v":1,"kind":"hello","id":1,"token":5}']):
        with pytest.raises(WireError):
            decode_header(frames)


@pytest.mark.parametrize("token", ["Q", "Q" * (MIN_TOKEN_BYTES - 1), "é" * 7, "", None, 1234567890123456789])
def test_check_token_refuses_short_or_non_string_tokens_in_one_line_without_showing_them(token):
    with pytest.raises(RobotError) as info:
        check_token(token)
    message = str(info.value)
    assert "\n" not in message and (not isinstance(token, str) or not token or token not in message)


def test_check_token_accepts_sixteen_bytes_and_more():
    assert check_token("a" * MIN_TOKEN_BYTES) == b"a" * MIN_TOKEN_BYTES
    assert check_token("é" * 8) == "é".encode() * 8          # bytes, not characters


def test_check_against_spec_shapes_dtypes_and_keys():
    features = {"state": Feature((6,)), "image": Feature((4, 4, 3), "uint8")}
    good = {"state": np.zeros(6, np.float32), "image": np.zeros((4, 4, 3), np.uint8)}
    check_against(good, features)
    for arrays, reason in [({**good, "state": np.zeros(5, np.float32)}, "shape"),
                           ({**good, "state": np.zeros((6, 1), np.float32)}, "shape"),
                           ({**good, "state": np.zeros(6, np.float64)}, "dtype"),
                           ({"state": good["state"]}, "keys"),
                           ({**good, "extra": np.zeros(1, np.uint8)}, "keys")]:
        with pytest.raises(WireError, match=reason):
            check_against(arrays, features)


def _random_frames(rng: random.Random) -> list:
    choice = rng.randrange(5)
    if choice == 0:                                                # random bytes
        return [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(0, 4))]
    if choice == 1:                                                # random JSON-ish header
        atoms = [None, True, 1, -1, 2 ** 70, 1.5, "act", "float32", [], {}, [3], [-2], "obs.state"]
        head = {rng.choice(["v", "kind", "id", "token", "arrays", "x"]): rng.choice(atoms)
                for _ in range(rng.randrange(0, 6))}
        if rng.random() < 0.5:
            head["arrays"] = {"a": {"dtype": rng.choice([*DTYPES, "object", "<U1", 3]),
                                    "shape": rng.choice([[2], [0], [-1], [2, 2], "2", [True], [2 ** 40]])}}
        return [json.dumps(head).encode(), *[rng.randbytes(rng.choice([0, 1, 4, 8, 16, 32]))
                                             for _ in range(rng.randrange(0, 3))]]
    # a valid message (choice 4: unchanged), or one mutated
    arrays = {"action": np.array([rng.uniform(-2, 2), rng.uniform(-2, 2)], np.float32),
              "img": np.zeros((2, 2, 3), np.uint8), "flag": np.array([True])}
    frames = encode(rng.choice(sorted(KINDS)), {"seed": rng.randrange(10)}, arrays, rng.randrange(100), "tok")
    for _ in range(rng.randrange(1, 4) if choice == 3 else 0):
        i = rng.randrange(len(frames))
        b = bytearray(frames[i])
        op = rng.randrange(5)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            del b[rng.randrange(len(b)):]
        elif op == 2:
            b += rng.randbytes(rng.randrange(1, 8))
        elif op == 3:
            frames = frames[:-1] if rng.random() < 0.5 else [*frames, b"\x00" * 8]
            continue
        else:
            b = bytearray(json.dumps(rng.choice([None, 1, "x", [1], {"v": 1}])).encode())
        frames[i] = bytes(b)
    return frames


def test_fuzz_decode_returns_a_message_or_raises_wire_error():
    rng = random.Random(1234)
    outcomes = {"ok": 0, "rejected": 0}
    for _ in range(4000):
        frames = _random_frames(rng)
        try:
            m = decode(frames)
        except WireError as e:
            assert isinstance(e.reason, str) and e.reason and len(e.reason) <= 200
            assert not e.reason.startswith("malformed message"), e.reason   # the catch-all guard
            outcomes["rejected"] += 1
            continue
        assert isinstance(m, Message) and m.kind in KINDS and type(m.id) is int
        for a in m.arrays.values():
            assert a.dtype.name in DTYPES
            assert a.dtype.kind != "f" or np.isfinite(a).all()
        outcomes["ok"] += 1
    assert outcomes["ok"] > 500 and outcomes["rejected"] > 2000, outcomes
