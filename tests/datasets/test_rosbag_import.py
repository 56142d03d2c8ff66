"""ROS 2 bags -> episode store, on real rosbag2 bags (SQLite3 and MCAP) written with rosbags.

The expected values are computed here from the bag as the rosbags Reader returns it, with the
clock written out plainly (a loop over ticks, a search over messages), not with the importer's
code.
"""
import io
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from rosbags.rosbag2 import CompressionFormat, CompressionMode, Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from cadence.datasets.episode_store import EpisodeStore, StoreError
from cadence.datasets.image_resize import resize_frames
from cadence.datasets.rosbag_import import import_rosbag
from cadence.errors import CadenceError
from cadence.untrusted import LIMITS

TS = get_typestore(Stores.ROS2_HUMBLE)
NAMES = ["shoulder", "elbow", "wrist"]
S = 1_000_000_000                       # one second in ns
H, W = 6, 8
TOPICS = {"action": "/cmd", "state": "/joint_states", "ee": "/ee_pose",
          "camera": "/cam/raw", "wrist": "/cam/png"}


# --- messages ------------------------------------------------------------------------------
def _header(t):
    return TS.types["std_msgs/msg/Header"](stamp=TS.types["builtin_interfaces/msg/Time"](sec=t // S, nanosec=t % S),
                                           frame_id="base")


def multiarray(values, kind="Float64"):
    layout = TS.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    dtype = np.float64 if kind == "Float64" else np.float32
    return TS.types[f"std_msgs/msg/{kind}MultiArray"](layout=layout, data=np.asarray(values, dtype=dtype))


def joint_state(t, position, velocity=(), effort=(), names=NAMES):
    return TS.types["sensor_msgs/msg/JointState"](
        header=_header(t), name=list(names), position=np.asarray(position, np.float64),
        velocity=np.asarray(velocity, np.float64), effort=np.asarray(effort, np.float64))


def pose_stamped(t, v):
    g = TS.types
    pose = g["geometry_msgs/msg/Pose"](position=g["geometry_msgs/msg/Point"](x=v[0], y=v[1], z=v[2]),
                                       orientation=g["geometry_msgs/msg/Quaternion"](x=v[3], y=v[4], z=v[5], w=v[6]))
    return g["geometry_msgs/msg/PoseStamped"](header=_header(t), pose=pose)


def twist(v):
    g = TS.types
    return g["geometry_msgs/msg/Twist"](linear=g["geometry_msgs/msg/Vector3"](x=v[0], y=v[1], z=v[2]),
                                        angular=g["geometry_msgs/msg/Vector3"](x=v[3], y=v[4], z=v[5]))


def raw_image(t, rgb, encoding="bgr8", pad=0):
    """``rgb`` (H, W, 3) in ``encoding``, each row padded with ``pad`` bytes."""
    pixels = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1], "mono8": rgb[:, :, :1],
              "rgba8": np.concatenate([rgb, np.full_like(rgb[:, :, :1], 7)], axis=2),
              "bgra8": np.concatenate([rgb[:, :, ::-1], np.full_like(rgb[:, :, :1], 7)], axis=2)}[encoding]
    h, w, c = pixels.shape
    rows = np.concatenate([pixels.reshape(h, w * c), np.zeros((h, pad), np.uint8)], axis=1)
    return TS.types["sensor_msgs/msg/Image"](header=_header(t), height=h, width=w, encoding=encoding,
                                             is_bigendian=0, step=w * c + pad, data=rows.reshape(-1).copy())


def compressed_image(t, rgb, fmt="png"):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG" if fmt == "png" else "JPEG", quality=95)
    return TS.types["sensor_msgs/msg/CompressedImage"](header=_header(t), format=fmt,
                                                       data=np.frombuffer(buf.getvalue(), np.uint8).copy())


def smooth_rgb(rng):
    """An image JPEG keeps within a few levels (a smooth gradient plus an offset)."""
    y, x = np.mgrid[0:H, 0:W]
    base = rng.integers(40, 200, 3)
    return np.clip(base + 4 * y[..., None] + 3 * x[..., None], 0, 255).astype(np.uint8)


# --- bags --------------------------------------------------------------------------------
def jittered(rate, t0, t1, rng):
    """Log times at about ``rate`` Hz in [t0, t1), each moved by up to +-30% of a period."""
    period = S / rate
    times = {int(t0 + k * period + rng.uniform(-0.3, 0.3) * period) for k in range(int((t1 - t0) / period))}
    return sorted(t for t in times if t0 <= t < t1)


def scene(rng, t0=1 * S, t1=3 * S, joint_names=NAMES):
    """Streams ``{topic: (msgtype, [(log time, message)])}`` at different rates with jitter."""
    cam = [(t, raw_image(t, rng.integers(0, 256, (H, W, 3), dtype=np.uint8))) for t in jittered(15, t0, t1, rng)]
    png = [(t, compressed_image(t, rng.integers(0, 256, (H, W, 3), dtype=np.uint8))) for t in jittered(12, t0, t1, rng)]
    return {
        "/cmd": ("std_msgs/msg/Float64MultiArray",
                 [(t, multiarray(rng.normal(size=4))) for t in jittered(20, t0, t1, rng)]),
        "/joint_states": ("sensor_msgs/msg/JointState",
                          [(t, joint_state(t, rng.normal(size=3), rng.normal(size=3), names=joint_names))
                           for t in jittered(50, t0, t1, rng)]),
        "/ee_pose": ("geometry_msgs/msg/PoseStamped",
                     [(t, pose_stamped(t, rng.normal(size=7))) for t in jittered(30, t0, t1, rng)]),
        "/cam/raw": ("sensor_msgs/msg/Image", cam),
        "/cam/png": ("sensor_msgs/msg/CompressedImage", png),
    }


def write_bag(path, streams, storage="sqlite3", compression=None):
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
    writer = Writer(path, version=9, storage_plugin=plugin)
    if compression is not None:
        writer.set_compression(compression, CompressionFormat.ZSTD)
    with writer:
        conns = {topic: writer.add_connection(topic, msgtype, typestore=TS)
                 for topic, (msgtype, _) in streams.items()}
        stream = sorted((t, topic, msg) for topic, (_, msgs) in streams.items() for t, msg in msgs)
        for t, topic, msg in stream:
            writer.write(conns[topic], t, TS.serialize_cdr(msg, streams[topic][0]))
    return path


# --- the expected store, computed plainly from the bag as rosbags reads it -------------------
def flatten(msgtype, msg):
    """``{suffix: value}`` written out per type, independently of the importer."""
    if msgtype == "sensor_msgs/msg/JointState":
        out = {"": np.array(msg.position)}
        if len(msg.velocity):
            out[".velocity"] = np.array(msg.velocity)
        if len(msg.effort):
            out[".effort"] = np.array(msg.effort)
        return out
    if msgtype == "geometry_msgs/msg/PoseStamped":
        p, q = msg.pose.position, msg.pose.orientation
        return {"": np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w])}
    if msgtype == "std_msgs/msg/Float64MultiArray":
        return {"": np.array(msg.data)}
    if msgtype == "sensor_msgs/msg/Image":
        assert msg.encoding == "bgr8"
        return {"": np.array(msg.data).reshape(msg.height, msg.width, 3)[:, :, ::-1]}
    if msgtype == "sensor_msgs/msg/CompressedImage":
        return {"": np.array(Image.open(io.BytesIO(bytes(msg.data))).convert("RGB"))}
    raise AssertionError(msgtype)


def read_streams(bag, topics):
    """``{topic: [(log time, {suffix: value})]}`` of the bag, via the rosbags Reader."""
    out = {topic: [] for topic in topics}
    with Reader(bag) as reader:
        for conn, t, raw in reader.messages():
            if conn.topic in out:
                out[conn.topic].append((t, flatten(conn.msgtype, TS.deserialize_cdr(raw, conn.msgtype))))
    return out


def expected_episode(streams, topics, fps, align, lo=-math.inf, hi=math.inf):
    """The clock and the picked values, for messages with log times in [lo, hi)."""
    msgs = {t: [m for m in streams[t] if lo <= m[0] < hi] for t in set(topics.values())}
    start = max(m[0][0] for m in msgs.values())
    end = min(m[-1][0] for m in msgs.values())
    ticks, k = [], 0
    while start + round(k * 1e9 / fps) <= end:
        ticks.append(start + round(k * 1e9 / fps))
        k += 1
    episode = {}
    for key, topic in topics.items():
        picked = []
        for tick in ticks:
            if align == "last":
                best = None
                for time, value in msgs[topic]:
                    if time <= tick:
                        best = value
            else:
                best, best_distance = None, None
                for time, value in msgs[topic]:          # in time order: a tie keeps the earlier
                    if best_distance is None or abs(time - tick) < best_distance:
                        best, best_distance = value, abs(time - tick)
            picked.append(best)
        for suffix in picked[0]:
            episode[key + suffix] = np.stack([p[suffix] for p in picked])
    return ticks, episode


def assert_episode(actual, expected):
    assert sorted(actual) == sorted(expected)
    for key, values in expected.items():
        np.testing.assert_array_equal(actual[key], values, err_msg=key)
        assert actual[key].dtype == values.dtype, key


# --- tests ---------------------------------------------------------------------------------
@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_every_topic_is_sampled_on_the_task_clock_value_by_value(tmp_path, storage):
    bag = write_bag(tmp_path / "run", scene(np.random.default_rng(0)), storage)
    store = import_rosbag(bag, tmp_path / "out.zarr", TOPICS, fps=10, progress=False)
    ticks, expected = expected_episode(read_streams(bag, TOPICS.values()), TOPICS, 10, "last")
    assert store.n_episodes == 1 and store.fps == 10.0 and len(ticks) >= 15
    assert_episode(store.episode(0), expected)
    assert store.features["camera"].shape == (H, W, 3) and store.features["camera"].dtype == "uint8"
    assert "state.velocity" in store.keys and "state.effort" not in store.keys      # effort is empty
    source = store.source
    assert source["format"] == "rosbag" and source["joint_names"] == {"state": NAMES}
    assert source["types"]["state"] == "sensor_msgs/msg/JointState" and source["clock"] == "log_time"
    assert source["episodes"] == [{"index": 0, "bag": "run", "start_ns": ticks[0], "end_ns": ticks[-1],
                                   "steps": len(ticks)}]
    assert source["storage"] == [storage] and source["typestores"] == {"run": "ros2_humble"}


def test_align_nearest_differs_from_last_where_a_later_message_is_closer(tmp_path):
    bag = write_bag(tmp_path / "run", scene(np.random.default_rng(1)))
    streams = read_streams(bag, TOPICS.values())
    stores = {}
    for align in ("last", "nearest"):
        stores[align] = import_rosbag(bag, tmp_path / f"{align}.zarr", TOPICS, fps=10, align=align, progress=False)
        assert_episode(stores[align].episode(0), expected_episode(streams, TOPICS, 10, align)[1])
    last, nearest = stores["last"].episode(0)["action"], stores["nearest"].episode(0)["action"]
    differ = np.any(last != nearest, axis=1)
    assert 0 < differ.sum() < len(differ)
    assert stores["nearest"].source["align"] == "nearest"


def test_last_and_nearest_by_hand_with_a_tie_going_to_the_earlier_message(tmp_path):
    times = [1_000_000_000, 1_140_000_000, 1_260_000_000]      # ticks at 1.0, 1.1, 1.2 s; 1.2 is 0.06 s from both
    streams = {"/cmd": ("std_msgs/msg/Float64MultiArray", [(t, multiarray([k])) for k, t in enumerate(times)])}
    bag = write_bag(tmp_path / "run", streams, "mcap")
    for align, want in (("last", [0, 0, 1]), ("nearest", [0, 1, 1])):
        store = import_rosbag(bag, tmp_path / f"{align}.zarr", {"action": "/cmd"}, fps=10, align=align, progress=False)
        np.testing.assert_array_equal(store.episode(0)["action"][:, 0], want)


def test_split_bag_folder_in_name_order_mixed_storage_and_an_episode_subset(tmp_path):
    folder = tmp_path / "bags"
    folder.mkdir()
    for i, (name, storage) in enumerate([("b_run", "mcap"), ("a_run", "sqlite3"), ("c_run", "sqlite3")]):
        write_bag(folder / name, scene(np.random.default_rng(10 + i), t1=(2 + i) * S), storage)
    store = import_rosbag(folder, tmp_path / "all.zarr", TOPICS, fps=10, progress=False)
    assert store.n_episodes == 3
    assert [e["bag"] for e in store.source["episodes"]] == ["a_run", "b_run", "c_run"]
    for i, name in enumerate(["a_run", "b_run", "c_run"]):
        ticks, expected = expected_episode(read_streams(folder / name, TOPICS.values()), TOPICS, 10, "last")
        assert_episode(store.episode(i), expected)
    subset = import_rosbag(folder, tmp_path / "subset.zarr", TOPICS, fps=10, episodes=[2, 0], progress=False)
    assert [e["bag"] for e in subset.source["episodes"]] == ["a_run", "c_run"]
    np.testing.assert_array_equal(subset.episode(1)["action"], store.episode(2)["action"])


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_split_on_a_marker_topic_starts_an_episode_at_each_message(tmp_path, storage):
    streams = scene(np.random.default_rng(2), t0=1 * S, t1=4 * S)
    marks = [int(1.5 * S), int(2.5 * S), int(3.2 * S)]
    streams["/episode"] = ("std_msgs/msg/Empty", [(t, TS.types["std_msgs/msg/Empty"]()) for t in marks])
    bag = write_bag(tmp_path / "run", streams, storage)
    store = import_rosbag(bag, tmp_path / "out.zarr", TOPICS, fps=10, split="/episode", progress=False)
    assert store.n_episodes == 3
    read = read_streams(bag, TOPICS.values())
    for i, (lo, hi) in enumerate(zip(marks, marks[1:] + [math.inf])):
        ticks, expected = expected_episode(read, TOPICS, 10, "last", lo, hi)
        assert_episode(store.episode(i), expected)
        assert store.source["episodes"][i]["start_ns"] == ticks[0] >= lo
    assert store.source["split"] == "/episode"


def test_a_bool_marker_starts_on_true_and_ends_on_false_and_an_empty_span_is_skipped(tmp_path):
    streams = scene(np.random.default_rng(3), t0=1 * S, t1=4 * S)
    Bool = TS.types["std_msgs/msg/Bool"]
    marks = [(1.2, True), (1.9, False), (2.4, True), (2.401, False), (2.6, True), (3.5, True)]
    streams["/recording"] = ("std_msgs/msg/Bool", [(int(t * S), Bool(data=v)) for t, v in marks])
    bag = write_bag(tmp_path / "run", streams)
    spans = {0: (1.2, 1.9), 2: (2.6, 3.5), 3: (3.5, math.inf)}       # 1: 2.4..2.401 s holds no /cmd message
    assert not [t for t, _ in streams["/cmd"][1] if 2.4 * S <= t < 2.401 * S]
    topics = {"action": "/cmd", "state": "/joint_states"}
    store = import_rosbag(bag, tmp_path / "out.zarr", topics, fps=10, split="/recording", progress=False)
    assert store.n_episodes == 3 and [e["index"] for e in store.source["episodes"]] == [0, 2, 3]
    read = read_streams(bag, topics.values())
    for i, (lo, hi) in enumerate(spans.values()):
        _, expected = expected_episode(read, topics, 10, "last", int(lo * S), hi if hi == math.inf else int(hi * S))
        assert_episode(store.episode(i), expected)
    assert store.source["skipped"] == [{"index": 1, "bag": "run", "reason": "no message on /cmd (key 'action'), "
                                                                           "/joint_states (key 'state')"}]
    with pytest.raises(StoreError, match=r"run\.db3: episode 1 has no step: no message on /cmd"):
        import_rosbag(bag, tmp_path / "one.zarr", topics, fps=10, split="/recording", episodes=[1], progress=False)
    only = import_rosbag(bag, tmp_path / "two.zarr", topics, fps=10, split="/recording", episodes=[3, 0],
                         progress=False)
    assert [e["index"] for e in only.source["episodes"]] == [0, 3]
    np.testing.assert_array_equal(only.episode(1)["state"], store.episode(2)["state"])


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "rgba8", "bgra8"])
def test_raw_image_encodings_become_rgb(tmp_path, encoding):
    rng = np.random.default_rng(4)
    frames = [(int((1 + k / 10) * S), rng.integers(0, 256, (H, W, 3), dtype=np.uint8)) for k in range(5)]
    streams = {"/cmd": ("std_msgs/msg/Float64MultiArray", [(t, multiarray([k])) for k, (t, _) in enumerate(frames)]),
               "/cam": ("sensor_msgs/msg/Image", [(t, raw_image(t, rgb, encoding, pad=3)) for t, rgb in frames])}
    store = import_rosbag(write_bag(tmp_path / "run", streams), tmp_path / "out.zarr",
                          {"action": "/cmd", "camera": "/cam"}, fps=10, progress=False)
    want = np.stack([rgb for _, rgb in frames])
    if encoding == "mono8":
        want = np.repeat(want[:, :, :, :1], 3, axis=3)
    np.testing.assert_array_equal(store.episode(0)["camera"], want)
    np.testing.assert_array_equal(store.episode(0)["action"][:, 0], np.arange(5.0))


def test_jpeg_within_tolerance_and_image_size_resizes(tmp_path):
    rng = np.random.default_rng(5)
    frames = [(int((1 + k / 10) * S), smooth_rgb(rng)) for k in range(4)]
    streams = {"/cmd": ("std_msgs/msg/Float64MultiArray",
                        [(t, multiarray([k, -k])) for k, (t, _) in enumerate(frames)]),
               "/jpg": ("sensor_msgs/msg/CompressedImage",
                        [(t, compressed_image(t, rgb, "jpeg")) for t, rgb in frames]),
               "/raw": ("sensor_msgs/msg/Image", [(t, raw_image(t, rgb, "rgb8")) for t, rgb in frames])}
    bag = write_bag(tmp_path / "run", streams, "mcap")
    store = import_rosbag(bag, tmp_path / "out.zarr", {"action": "/cmd", "jpg": "/jpg"}, fps=10, progress=False)
    want = np.stack([rgb for _, rgb in frames]).astype(int)
    error = np.abs(store.episode(0)["jpg"].astype(int) - want)
    assert error.mean() < 3 and error.max() < 20
    small = import_rosbag(bag, tmp_path / "small.zarr", {"action": "/cmd", "raw": "/raw"}, fps=10,
                          image_size=[3, 4], progress=False)
    np.testing.assert_array_equal(small.episode(0)["raw"], resize_frames(want.astype(np.uint8), (3, 4)))
    assert small.source["image_size"] == [3, 4]


def test_twist_float32_and_scalar_types_flatten(tmp_path):
    times = [int((1 + k / 10) * S) for k in range(4)]
    g = TS.types
    streams = {"/cmd": ("geometry_msgs/msg/Twist", [(t, twist([k, 1, 2, 3, 4, 5 + k])) for k, t in enumerate(times)]),
               "/grip": ("std_msgs/msg/Float32",
                         [(t, g["std_msgs/msg/Float32"](data=0.5 * k)) for k, t in enumerate(times)]),
               "/f32": ("std_msgs/msg/Float32MultiArray",
                        [(t, multiarray([k, k], "Float32")) for k, t in enumerate(times)])}
    store = import_rosbag(write_bag(tmp_path / "run", streams), tmp_path / "out.zarr",
                          {"action": "/cmd", "gripper": "/grip", "f": "/f32"}, fps=10, progress=False)
    ep = store.episode(0)
    np.testing.assert_array_equal(ep["action"], [[k, 1, 2, 3, 4, 5 + k] for k in range(4)])
    np.testing.assert_array_equal(ep["gripper"], [[0.5 * k] for k in range(4)])
    assert ep["gripper"].dtype == np.float32 and ep["f"].dtype == np.float32


def test_mcap_with_zstd_chunks_reads_and_a_chunk_over_the_limit_is_refused(tmp_path, monkeypatch):
    bag = write_bag(tmp_path / "run", scene(np.random.default_rng(6), t1=2 * S), "mcap", CompressionMode.STORAGE)
    store = import_rosbag(bag, tmp_path / "out.zarr", TOPICS, fps=10, progress=False)
    assert_episode(store.episode(0), expected_episode(read_streams(bag, TOPICS.values()), TOPICS, 10, "last")[1])
    monkeypatch.setitem(LIMITS, "chunk_bytes", 1000)
    with pytest.raises(StoreError, match=r"run\.mcap: not a readable rosbag2 bag \(ValueError: an MCAP chunk of "):
        import_rosbag(bag, tmp_path / "again.zarr", TOPICS, fps=10, progress=False)


# --- refusals: one line, naming the bag and the topic --------------------------------------
def _small(rng=None, **extra):
    rng = rng or np.random.default_rng(7)
    times = [int((1 + k / 20) * S) for k in range(10)]
    streams = {"/cmd": ("std_msgs/msg/Float64MultiArray", [(t, multiarray(rng.normal(size=2))) for t in times]),
               "/joint_states": ("sensor_msgs/msg/JointState",
                                 [(t, joint_state(t, rng.normal(size=3))) for t in times])}
    streams.update(extra)
    return streams


def test_refusals_of_the_arguments(tmp_path):
    bag = write_bag(tmp_path / "run", _small())
    out = tmp_path / "out.zarr"
    cases = [
        (dict(topics={"state": "/joint_states"}, fps=10), r"under the key 'action'"),
        (dict(topics={"action": "/cmd"}, fps=None), r"format=rosbag needs fps="),
        (dict(topics={"action": "/cmd"}, fps=10, align="closest"), r"align must be one of \['last', 'nearest'\]"),
        (dict(topics={"action": "/cmd", "state": "/nope"}, fps=10), r"run\.db3: no topic /nope \(key 'state'\); "
                                                                   r"the bag has \['/cmd', '/joint_states'\]"),
        (dict(topics={"action": "/cmd"}, fps=10, split="/marker"), r"run\.db3: no marker topic /marker"),
        (dict(topics={"action": "/cmd"}, fps=10, episodes=[1]), r"'\[0\]' is 1, outside \[0, 0\]"),
        (dict(topics={"action": "/cmd", "state": "/joint_states", "state.velocity": "/cmd"}, fps=10),
         r"key 'state\.velocity' collides"),
        (dict(topics={"action": "/cmd"}, fps=1e5), r"makes [0-9,]+ steps from at most 10 messages"),
    ]
    for kwargs, message in cases:
        with pytest.raises(CadenceError, match=message):
            import_rosbag(bag, out, progress=False, **kwargs)
        assert not out.exists()


def test_refuses_an_unsupported_type_naming_topic_type_and_the_supported_ones(tmp_path):
    strings = [(int(1.1 * S), TS.types["std_msgs/msg/String"](data="hello"))]
    bag = write_bag(tmp_path / "run", _small(**{"/say": ("std_msgs/msg/String", strings)}))
    with pytest.raises(StoreError, match=r"run\.db3: topic /say has message type std_msgs/msg/String, which "
                                         r"cadence does not import \(supported: sensor_msgs/msg/JointState, "
                                         r".*CompressedImage\)"):
        import_rosbag(bag, tmp_path / "out.zarr", {"action": "/cmd", "say": "/say"}, fps=10, progress=False)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_refuses_nan_naming_bag_topic_and_message_time(tmp_path, storage):
    streams = _small()
    for t, msg in streams["/cmd"][1][5:]:
        msg.data[1] = np.nan
    bag = write_bag(tmp_path / "run", streams, storage)
    first_nan = streams["/cmd"][1][5][0]
    with pytest.raises(StoreError, match=rf"run\.{'db3' if storage == 'sqlite3' else 'mcap'}: topic /cmd, message at "
                                         rf"{first_nan} ns: 'data' holds NaN or infinite values"):
        import_rosbag(bag, tmp_path / "out.zarr", {"action": "/cmd"}, fps=20, progress=False)
    assert not (tmp_path / "out.zarr").exists()


def test_refuses_bad_messages(tmp_path):
    t = int(1.2 * S)
    rgb = np.zeros((H, W, 3), np.uint8)
    bad_step = raw_image(t, rgb, "rgb8")
    bad_step.step = W * 3 + 5
    odd = raw_image(t, rgb, "rgb8")
    odd.encoding = "32FC1"
    garbage = TS.types["sensor_msgs/msg/CompressedImage"](header=_header(t), format="jpeg",
                                                          data=np.frombuffer(b"not a jpeg", np.uint8).copy())
    renamed = _small()["/joint_states"][1]
    renamed[4][1].name = ["a", "b", "c"]
    cases = [
        ({"/cam": ("sensor_msgs/msg/Image", [(t, bad_step)])}, {"cam": "/cam"},
         r"topic /cam, message at \d+ ns: a 8x6 rgb8 image needs step >= 24 and step x height bytes; has step 29"),
        ({"/cam": ("sensor_msgs/msg/Image", [(t, odd)])}, {"cam": "/cam"},
         r"topic /cam, message at \d+ ns: image encoding '32FC1' is not one cadence imports \(rgb8, bgr8, "),
        ({"/cam": ("sensor_msgs/msg/CompressedImage", [(t, garbage)])}, {"cam": "/cam"},
         r"topic /cam, message at \d+ ns: not a decodable PNG / JPEG / WEBP image \(format 'jpeg'\)"),
        ({"/joint_states": ("sensor_msgs/msg/JointState", renamed)}, {"state": "/joint_states"},
         r"topic /joint_states, message at \d+ ns: joint names \['a', 'b', 'c'\] differ"),
    ]
    for i, (extra, topics, message) in enumerate(cases):
        bag = write_bag(tmp_path / f"run{i}", _small(**extra))
        with pytest.raises(StoreError, match=rf"run{i}\.db3: " + message):
            import_rosbag(bag, tmp_path / "out.zarr", {"action": "/cmd", **topics}, fps=20, progress=False)


def test_refuses_bags_it_would_read_without_bound_or_with_foreign_definitions(tmp_path):
    compressed = write_bag(tmp_path / "zipped", _small(), compression=CompressionMode.FILE)
    with pytest.raises(StoreError, match=r"zipped/metadata\.yaml: compression_mode 'file': zstd-compressed bags"):
        import_rosbag(compressed, tmp_path / "out.zarr", {"action": "/cmd"}, fps=10, progress=False)

    foreign = tmp_path / "foreign"
    with Writer(foreign, version=9) as writer:        # a type of the same name with another definition
        conn = writer.add_connection("/cmd", "std_msgs/msg/Float64MultiArray", msgdef="float64[] data\nint32 x",
                                     rihs01="RIHS01_" + "0" * 64)
        writer.write(conn, S, TS.serialize_cdr(multiarray([1.0]), "std_msgs/msg/Float64MultiArray"))
    with pytest.raises(StoreError, match=r"foreign\.db3: topic /cmd records a std_msgs/msg/Float64MultiArray "
                                         r"definition \(hash RIHS01_0000"):
        import_rosbag(foreign, tmp_path / "out.zarr", {"action": "/cmd"}, fps=10, progress=False)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_a_corrupt_bag_is_one_line(tmp_path, storage):
    bag = write_bag(tmp_path / "run", _small(), storage)
    data = bag / f"run.{'db3' if storage == 'sqlite3' else 'mcap'}"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 3:] = bytes(len(raw) - len(raw) // 3)          # zero the last two thirds
    data.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"run(\.db3|\.mcap)?: not a readable rosbag2 bag \("):
        import_rosbag(bag, tmp_path / "out.zarr", {"action": "/cmd"}, fps=10, progress=False)
    (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: [1, 2]\n")
    with pytest.raises(StoreError, match=r"metadata\.yaml: no 'rosbag2_bagfile_information' mapping"):
        import_rosbag(bag, tmp_path / "out.zarr", {"action": "/cmd"}, fps=10, progress=False)


def test_cadence_import_command(tmp_path):
    write_bag(tmp_path / "bags" / "demo_0", scene(np.random.default_rng(8), t1=2 * S), "mcap")
    write_bag(tmp_path / "bags" / "demo_1", scene(np.random.default_rng(9), t1=2 * S))
    proc = subprocess.run([sys.executable, "-m", "cadence.cli", "import", "format=rosbag", "source=bags",
                           "out=data/bags.zarr", "fps=10", "align=nearest", "image_size=[4,4]",
                           "topics={action: /cmd, state: /joint_states, image: /cam/png}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "imported 2 episodes" in proc.stdout
    store = EpisodeStore.open(tmp_path / "data" / "bags.zarr")
    assert store.features["image"].shape == (4, 4, 3) and store.source["topics"]["state"] == "/joint_states"
    again = subprocess.run([sys.executable, "-m", "cadence.cli", "import", "format=rosbag", "source=bags",
                            "out=data/other.zarr", "fps=10", "topics={action: /nope}"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines()[-1].startswith("cadence import: error: ")
    assert "demo_0.mcap: no topic /nope (key 'action')" in again.stderr


def test_a_slow_topic_of_large_messages_is_not_copied_into_every_tick_without_bound(tmp_path):
    """50 tiny messages set the tick count; two 128x128 images would fill 5,000 ticks (246 MB from a 30 kB bag)."""
    image = np.full((128, 128, 3), 128, np.uint8)
    streams = {"/cmd": ("std_msgs/msg/Float64MultiArray", [(S + k * S // 49, multiarray([0.0])) for k in range(50)]),
               "/cam": ("sensor_msgs/msg/CompressedImage", [(t, compressed_image(t, image)) for t in (S, 2 * S)])}
    bag = write_bag(tmp_path / "bag", streams)
    with pytest.raises(StoreError, match="topic /cam: 4,999 steps from 2 messages of 49,152 bytes make 245,710,848 "
                                         "bytes \\(more than 100 steps per message"):
        import_rosbag(bag, tmp_path / "out.zarr", topics={"action": "/cmd", "image": "/cam"}, fps=4998, progress=False)
    small = import_rosbag(bag, tmp_path / "out.zarr", topics={"action": "/cmd", "image": "/cam"}, fps=50,
                          progress=False)              # 51 steps over the 1 s: each image about 25 times, 2.5 MB
    assert small.n_steps == 51
