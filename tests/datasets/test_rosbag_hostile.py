"""ROS 2 bags tampered the ways a review found (bags written with rosbags, then edited): each refused
in one line naming the bag, before the memory the tampering asks for is allocated."""
import sqlite3

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

from cadence.errors import CadenceError
from cadence.datasets.rosbag_import import import_rosbag
from cadence.untrusted import LIMITS

from .test_rosbag_import import TS, S, multiarray, write_bag

CMD = "std_msgs/msg/Float64MultiArray"


def cmd_stream(n=10):
    return CMD, [(S + k * S // 20, multiarray([0.25 * k, 1.0])) for k in range(n)]


def refused(bag, tmp_path, match, topics=None, **options):
    out = tmp_path / "out.zarr"
    with pytest.raises(CadenceError, match=match):
        import_rosbag(bag, out, topics or {"action": "/cmd"}, fps=options.pop("fps", 10), progress=False, **options)
    assert not out.exists()


def mcap_chunks(path, overlapping, n=4, values=200_000):
    """n chunks (the writer closes one past 1 MB), each a small /cmd message then a large /big one;
    ``overlapping``: chunk k spans S+k .. 10S+k, so every chunk's time range overlaps every other's."""
    small = TS.serialize_cdr(multiarray([0.0]), CMD)
    big = TS.serialize_cdr(multiarray(np.zeros(values)), CMD)
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer:
        cmd = writer.add_connection("/cmd", CMD, typestore=TS)
        large = writer.add_connection("/big", CMD, typestore=TS)
        order = ([(S + k, cmd, small), (10 * S + k, large, big)] for k in range(n)) if overlapping else \
            ([(S + k, cmd, small) for k in range(n)], [(10 * S + k, large, big) for k in range(n)])
        for group in order:
            for t, conn, data in group:
                writer.write(conn, t, data)
    return path


def test_mcap_chunks_overlapping_in_time_are_refused_for_what_they_hold_together(tmp_path, monkeypatch):
    """rosbags inflates chunks whose times overlap together: four 1.6 MB chunks held at once."""
    monkeypatch.setitem(LIMITS, "chunk_bytes", 4 * 2 ** 20)
    topics = {"action": "/cmd", "big": "/big"}
    refused(mcap_chunks(tmp_path / "overlap", True), tmp_path, r"overlap.mcap: MCAP chunks overlapping in time "
            r"hold [0-9,]+ bytes uncompressed at once, more than 4,194,304", topics)
    # the same messages in chunks that follow one another: read (and refused later for another reason)
    refused(mcap_chunks(tmp_path / "ordered", False), tmp_path, "its topics do not overlap in time", topics)


def test_metadata_yaml_is_bounded_below_what_yaml_parses_quickly(tmp_path):
    bag = write_bag(tmp_path / "bag", {"/cmd": cmd_stream()})
    with open(bag / "metadata.yaml", "a") as f:
        f.write("# " + "x" * 2 ** 18 + "\n")
    refused(bag, tmp_path, r"metadata.yaml: [0-9,]+ bytes, more than the 262,144 this file may have")


@pytest.mark.parametrize("field, value", [("name", 42), ("type", None)])
def test_a_topic_name_or_type_that_is_not_a_string_is_one_line(tmp_path, field, value):
    bag = write_bag(tmp_path / "bag", {"/cmd": cmd_stream(), "/other": cmd_stream()})
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())
    topics = meta["rosbag2_bagfile_information"]["topics_with_message_count"]
    other = next(t for t in topics if t["topic_metadata"]["name"] == "/other")
    other["topic_metadata"][field] = value
    (bag / "metadata.yaml").write_text(yaml.safe_dump(meta))
    refused(bag, tmp_path, r"bag.db3: a topic whose name or type is not a string")


def test_a_message_stored_as_text_is_one_line(tmp_path):
    zeros = CMD, [(S + k * S // 20, multiarray([0.0, 0.0])) for k in range(10)]   # valid UTF-8 as text
    bag = write_bag(tmp_path / "bag", {"/cmd": zeros})
    with sqlite3.connect(next(bag.glob("*.db3"))) as con:
        con.execute("UPDATE messages SET data = CAST(data AS TEXT)")
    refused(bag, tmp_path, r"bag.db3: topic /cmd: a message stored as str at int [0-9]+, not bytes")


def test_an_episode_past_the_budget_is_refused_naming_bag_and_episode(tmp_path, monkeypatch):
    bag = write_bag(tmp_path / "bag", {"/cmd": cmd_stream()})
    monkeypatch.setitem(LIMITS, "episode_bytes", 300)
    refused(bag, tmp_path, r"bag.db3: episode 0: .* brings the episode to [0-9,]+ bytes as decoded, more than the 300")
    monkeypatch.setitem(LIMITS, "episode_bytes", 2 ** 32)
    assert import_rosbag(bag, tmp_path / "ok.zarr", {"action": "/cmd"}, fps=10, progress=False).n_episodes == 1
