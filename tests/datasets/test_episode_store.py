"""Tests for cadence.datasets.episode_store (EpisodeStore).

Expectations are derived independently of the code under test: appended data is kept in the
test and compared back, statistics are recomputed with numpy, the real PushT store is read a
second time with plain ``zarr``, and crash safety is checked by SIGKILLing a real child process
in the middle of an append.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from cadence.datasets.episode_store import EpisodeStore, FeatureSpec, StoreError

REPO_ROOT = Path(__file__).resolve().parents[2]
PUSHT = REPO_ROOT.parent / "shared" / "datasets" / "pusht_cchi_v7_replay.zarr"

KEYS = ("action", "image", "state")


# --- helpers -------------------------------------------------------------------------------
def make_episode(rng: np.random.Generator, length: int) -> dict[str, np.ndarray]:
    return {
        "state": rng.normal(size=(length, 6)).astype(np.float32),
        # non-zero mean and unequal spread per dimension, so the statistics are not trivial
        "action": (rng.normal(loc=[3.0, -2.0], scale=[0.5, 4.0], size=(length, 2))).astype(np.float32),
        "image": rng.integers(0, 256, size=(length, 8, 8, 3), dtype=np.uint8),
    }


def build_store(path: Path, lengths, seed: int = 0, fps: float = 10.0):
    """Create a store at ``path`` holding episodes of ``lengths``; return the episodes appended."""
    rng = np.random.default_rng(seed)
    store = EpisodeStore.create(path, fps=fps)
    episodes = []
    for length in lengths:
        episode = make_episode(rng, length)
        store.append_episode(episode)
        episodes.append(episode)
    return episodes


def assert_holds(path: Path, episodes, mode: str = "r") -> EpisodeStore:
    """The store at ``path`` opens and holds exactly ``episodes`` (in order, bit for bit)."""
    store = EpisodeStore.open(path, mode=mode)
    lengths = [len(ep["action"]) for ep in episodes]
    assert store.n_episodes == len(episodes)
    np.testing.assert_array_equal(store.episode_ends, np.cumsum(lengths, dtype=np.int64))
    assert store.n_steps == sum(lengths)
    for i, expected in enumerate(episodes):
        got = store.episode(i)
        assert sorted(got) == sorted(expected)
        for key in expected:
            assert got[key].dtype == expected[key].dtype
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"episode {i} key {key}")
    if episodes:
        loaded = store.load()
        for key in episodes[0]:
            np.testing.assert_array_equal(loaded[key], np.concatenate([ep[key] for ep in episodes]))
    return store


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes: equal snapshots mean nothing was written."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --- create, append, reopen ----------------------------------------------------------------
def test_append_then_reopen_read_only(tmp_path):
    path = tmp_path / "demo.zarr"
    lengths = [7, 11, 1, 9]
    episodes = build_store(path, lengths, fps=15.0)

    store = assert_holds(path, episodes, mode="r")
    assert not store.writable
    assert store.keys == sorted(KEYS)
    np.testing.assert_array_equal(store.episode_lengths(), lengths)
    assert store.fps == 15.0
    assert store.features == {
        "action": FeatureSpec((2,), "float32"),
        "image": FeatureSpec((8, 8, 3), "uint8"),
        "state": FeatureSpec((6,), "float32"),
    }
    # negative episode index counts from the end; out of range is an IndexError
    np.testing.assert_array_equal(store.episode(-1)["state"], episodes[-1]["state"])
    with pytest.raises(IndexError):
        store.episode(len(lengths))

    # the on-disk layout is the Diffusion Policy ReplayBuffer one, read here with plain zarr
    raw = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(raw["meta/episode_ends"][:], np.cumsum(lengths))
    for key in KEYS:
        np.testing.assert_array_equal(raw[f"data/{key}"][:], np.concatenate([ep[key] for ep in episodes]))
    assert raw.attrs["fps"] == 15.0
    assert raw.attrs["features"] == {
        "action": {"shape": [2], "dtype": "float32"},
        "image": {"shape": [8, 8, 3], "dtype": "uint8"},
        "state": {"shape": [6], "dtype": "float32"},
    }


def test_stats_match_numpy(tmp_path):
    path = tmp_path / "demo.zarr"
    episodes = build_store(path, [7, 11, 5], seed=3)

    def numpy_stats(key, eps):
        x = np.concatenate([ep[key] for ep in eps]).astype(np.float64)
        return {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}

    def check(stats, expected):
        assert set(stats) == {"min", "max", "mean", "std"}
        for name in expected:
            assert stats[name].shape == expected[name].shape, name
            np.testing.assert_allclose(stats[name], expected[name], rtol=1e-9, atol=1e-9, err_msg=name)

    # computed from the data (read-only: nothing cached)
    ro = EpisodeStore.open(path, mode="r")
    check(ro.stats("action"), numpy_stats("action", episodes))
    check(ro.stats("image"), numpy_stats("image", episodes))    # per element, shape (8, 8, 3)
    assert "stats" not in zarr.open_group(str(path), mode="r").attrs

    # a writable store caches them; the cache is read back after reopening ...
    rw = EpisodeStore.open(path, mode="a")
    check(rw.stats("action"), numpy_stats("action", episodes))
    assert "action" in zarr.open_group(str(path), mode="r").attrs["stats"]
    check(EpisodeStore.open(path, mode="r").stats("action"), numpy_stats("action", episodes))

    # ... and is not served stale once another episode is appended
    extra = make_episode(np.random.default_rng(99), 6)
    extra["action"] += 50.0     # moves max and mean far from the cached values
    rw.append_episode(extra)
    check(rw.stats("action"), numpy_stats("action", episodes + [extra]))
    check(EpisodeStore.open(path, mode="r").stats("action"), numpy_stats("action", episodes + [extra]))


def test_load_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "s.zarr"
    build_store(path, [3])
    store = EpisodeStore.open(path)
    with pytest.raises(StoreError, match="reward"):
        store.load(["action", "reward"])
    empty = EpisodeStore.create(tmp_path / "empty.zarr", fps=10)
    assert empty.n_episodes == 0 and empty.n_steps == 0 and empty.keys == []
    with pytest.raises(StoreError, match="action"):
        empty.load(["action"])


# --- the real PushT store, read in place ----------------------------------------------------
def _file_stamps(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in path.rglob("*")}


def test_read_shared_pusht_store_in_place():
    if not PUSHT.is_dir():
        pytest.skip(f"shared PushT store not found at {PUSHT} (expected next to the repository, "
                    "in ../shared/datasets/)")
    before = _file_stamps(PUSHT)

    store = EpisodeStore.open(PUSHT, mode="r")
    assert not store.writable
    assert store.n_episodes == 206
    assert store.n_steps == 25650
    assert {"action", "state", "keypoint", "img", "n_contacts"} <= set(store.keys)
    lengths = store.episode_lengths()
    assert len(lengths) == 206 and lengths.sum() == 25650
    assert lengths.min() >= 49 and lengths.max() <= 246
    assert lengths.min() == 49 and lengths.max() == 246      # the shared PushT store's shortest and longest episodes

    # independent read with plain zarr
    raw = zarr.open(str(PUSHT), mode="r")
    raw_ends = raw["meta/episode_ends"][:]
    np.testing.assert_array_equal(store.episode_ends, raw_ends)
    first = store.episode(0)
    np.testing.assert_array_equal(first["action"], raw["data/action"][: raw_ends[0]])
    np.testing.assert_array_equal(first["state"], raw["data/state"][: raw_ends[0]])
    assert first["action"].shape == (raw_ends[0], 2)
    last = store.episode(205)
    np.testing.assert_array_equal(last["keypoint"], raw["data/keypoint"][raw_ends[-2]: raw_ends[-1]])
    assert store.features["img"] == FeatureSpec((96, 96, 3), "float32")

    action = raw["data/action"][:].astype(np.float64)
    stats = store.stats("action")
    np.testing.assert_allclose(stats["min"], action.min(0))
    np.testing.assert_allclose(stats["max"], action.max(0))
    np.testing.assert_allclose(stats["mean"], action.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], action.std(0), rtol=1e-9)

    with pytest.raises(StoreError):
        store.append_episode({k: v[:2] for k, v in first.items()})

    # nothing under the shared store was written, created or touched
    assert _file_stamps(PUSHT) == before


# --- malformed stores are refused with a message that names the problem --------------------
def test_missing_episode_ends(tmp_path):
    original = tmp_path / "orig.zarr"
    build_store(original, [4, 6])
    copy = tmp_path / "copy.zarr"
    shutil.copytree(original, copy)
    shutil.rmtree(copy / "meta" / "episode_ends")
    for mode in ("r", "a"):
        with pytest.raises(StoreError, match="episode_ends"):
            EpisodeStore.open(copy, mode=mode)
    # the original is untouched and still fine
    assert EpisodeStore.open(original).n_episodes == 2


def test_missing_data_group_and_not_a_store(tmp_path):
    path = tmp_path / "s.zarr"
    build_store(path, [4])
    shutil.rmtree(path / "data")
    with pytest.raises(StoreError, match="data"):
        EpisodeStore.open(path)
    with pytest.raises(StoreError):
        EpisodeStore.open(tmp_path / "nothing-here.zarr")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "file.txt").write_text("not a zarr group")
    with pytest.raises(StoreError):
        EpisodeStore.open(plain)
    with pytest.raises(ValueError):
        EpisodeStore.open(path.parent, mode="w")


def test_episode_ends_claim_more_steps_than_data(tmp_path):
    path = tmp_path / "s.zarr"
    build_store(path, [4, 6, 5])
    ends = zarr.open_group(str(path), mode="r+")["meta/episode_ends"]
    ends[-1] = 15 + 3                          # the data arrays hold 15 steps
    with pytest.raises(StoreError, match=r"data/(action|image|state)") as info:
        EpisodeStore.open(path)
    assert "15" in str(info.value) and "18" in str(info.value)


def test_one_data_array_shorter_than_episode_ends(tmp_path):
    path = tmp_path / "s.zarr"
    build_store(path, [4, 6, 5])
    raw = zarr.open_group(str(path), mode="r+")
    raw["data/state"].resize(12, 6)            # only this key loses steps
    with pytest.raises(StoreError) as info:
        EpisodeStore.open(path)
    message = str(info.value)
    assert "data/state" in message
    assert "data/action" not in message and "data/image" not in message


@pytest.mark.parametrize("bad_ends, bad_episode", [
    ([4, 4, 15], 1),       # repeated end: an empty episode
    ([4, 10, 7], 2),       # decreasing
    ([0, 10, 15], 0),      # first episode empty
])
def test_non_increasing_episode_ends(tmp_path, bad_ends, bad_episode):
    path = tmp_path / "s.zarr"
    build_store(path, [4, 6, 5])
    zarr.open_group(str(path), mode="r+")["meta/episode_ends"][:] = bad_ends
    with pytest.raises(StoreError, match="episode_ends") as info:
        EpisodeStore.open(path)
    assert "increasing" in str(info.value)
    assert f"episode {bad_episode}" in str(info.value)


# --- bad episodes are refused before anything is written -------------------------------------
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_append_non_finite_action_is_refused(tmp_path, bad_value):
    path = tmp_path / "s.zarr"
    episodes = build_store(path, [5, 8])
    before = snapshot(path)
    store = EpisodeStore.open(path, mode="a")

    bad = make_episode(np.random.default_rng(7), 6)
    bad["action"][3, 1] = bad_value
    bad = {"state": bad["state"], "image": bad["image"], "action": bad["action"]}   # action last
    with pytest.raises(StoreError, match="action") as info:
        store.append_episode(bad)
    assert "step 3" in str(info.value)

    assert store.n_episodes == 2
    assert snapshot(path) == before               # not a byte written
    assert_holds(path, episodes)
    # the store still accepts a good episode afterwards
    good = make_episode(np.random.default_rng(8), 3)
    store.append_episode(good)
    assert_holds(path, episodes + [good])


def _drop(key):
    def edit(ep):
        del ep[key]
    return edit


def _reshape(key, shape):
    def edit(ep):
        ep[key] = np.zeros((len(ep[key]), *shape), dtype=ep[key].dtype)
    return edit


def _extra_key(ep):
    ep["reward"] = np.zeros(len(ep["action"]), np.float32)


def _short_key(ep):
    ep["state"] = ep["state"][:-1]


@pytest.mark.parametrize("edit, must_mention", [
    (_drop("state"), "state"),
    (_drop("action"), "action"),
    (_extra_key, "reward"),
    (_reshape("state", (7,)), "state"),
    (_reshape("image", (8, 8, 4)), "image"),
    (_reshape("action", ()), "action"),
    (_short_key, "state"),
])
def test_append_wrong_keys_or_shapes_is_refused(tmp_path, edit, must_mention):
    path = tmp_path / "s.zarr"
    episodes = build_store(path, [5, 8])
    before = snapshot(path)
    store = EpisodeStore.open(path, mode="a")
    bad = make_episode(np.random.default_rng(11), 4)
    edit(bad)
    with pytest.raises(StoreError, match=must_mention):
        store.append_episode(bad)
    assert snapshot(path) == before
    assert store.n_episodes == 2
    assert_holds(path, episodes)


def test_append_to_read_only_store_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    episodes = build_store(path, [5, 8])
    before = snapshot(path)
    store = EpisodeStore.open(path)            # default mode is read-only
    with pytest.raises(StoreError, match="read-only"):
        store.append_episode(make_episode(np.random.default_rng(1), 4))
    assert snapshot(path) == before
    assert_holds(path, episodes)


def test_create_over_existing_store_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    episodes = build_store(path, [5, 8])
    before = snapshot(path)
    with pytest.raises(StoreError, match="exists"):
        EpisodeStore.create(path, fps=30)
    assert snapshot(path) == before
    assert_holds(path, episodes)
    # with overwrite=True it really starts over
    fresh = EpisodeStore.create(path, fps=30, overwrite=True)
    assert fresh.n_episodes == 0 and fresh.keys == []
    assert EpisodeStore.open(path).fps == 30.0


# --- atomic append: SIGKILL a child process at every single write ----------------------------
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import numpy as np
    import zarr.storage

    store_path, episode_path, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    writes = []
    original_setitem = zarr.storage.DirectoryStore.__setitem__

    def counting_setitem(self, key, value):
        writes.append(key)
        if len(writes) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original_setitem(self, key, value)

    zarr.storage.DirectoryStore.__setitem__ = counting_setitem   # this process only

    from cadence.datasets.episode_store import EpisodeStore
    with np.load(episode_path) as npz:
        episode = {k: npz[k] for k in npz.files}
    store = EpisodeStore.open(store_path, mode="a")
    store.append_episode(episode)
    print(json.dumps(writes))
""")


def _run_child(tmp_path: Path, store: Path, episode_file: Path, kill_at: int) -> subprocess.CompletedProcess:
    script = tmp_path / "append_child.py"
    if not script.exists():
        script.write_text(CHILD)
    return subprocess.run([sys.executable, str(script), str(store), str(episode_file), str(kill_at)],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))


@pytest.mark.parametrize("n_base", [2, 0], ids=["after-2-episodes", "first-episode"])
def test_append_is_atomic_under_sigkill(tmp_path, n_base):
    t0 = time.monotonic()
    base = tmp_path / "base.zarr"
    base_lengths = [7, 11][:n_base]
    episodes = build_store(base, base_lengths, seed=5)     # n_base == 0: created, empty
    # the interrupted episode is long enough to span two chunks of every data array (chunks
    # hold 1024 steps here), and longer than the episode appended after the crash, so its
    # leftovers reach past what the recovery append overwrites
    crashed = make_episode(np.random.default_rng(123), 1100)
    episode_file = tmp_path / "crashed_episode.npz"
    np.savez(episode_file, **crashed)

    # 1. an uninterrupted append in a child: count (and list) the writes it makes
    clean = tmp_path / "clean.zarr"
    shutil.copytree(base, clean)
    result = _run_child(tmp_path, clean, episode_file, kill_at=0)
    assert result.returncode == 0, result.stderr
    writes = json.loads(result.stdout.strip().splitlines()[-1])
    assert_holds(clean, episodes + [crashed])
    # the patch saw the writes: at least one chunk per data key, the ends chunk, the ends shape
    assert sum(w.startswith("data/") for w in writes) >= len(KEYS)
    assert "meta/episode_ends/.zarray" in writes
    # the commit protocol: every data write, then the episode_ends chunk, then its shape
    commit = writes.index("meta/episode_ends/.zarray")
    ends_chunks = [i for i, w in enumerate(writes) if w.startswith("meta/episode_ends/") and i != commit]
    assert ends_chunks and max(ends_chunks) < commit
    assert max(i for i, w in enumerate(writes) if w.startswith("data/")) < min(ends_chunks)
    n_writes = len(writes)

    # 2. kill a child on write k, for every k; the store must come back with the old episodes
    saw_leftovers = False
    recovery_rng = np.random.default_rng(77)
    for k in range(1, n_writes + 1):
        store_k = tmp_path / f"killed_{k}.zarr"
        shutil.copytree(base, store_k)
        result = _run_child(tmp_path, store_k, episode_file, kill_at=k)
        assert result.returncode == -signal.SIGKILL, (k, result.returncode, result.stderr)
        assert result.stdout == ""                    # it died before finishing the append

        # killed before the commit write (the episode_ends shape) completed: the old episodes
        # only; killed on a later write (the .zattrs feature table of a first append): the
        # episode is in, whole
        committed = episodes + [crashed] if k - 1 > commit else episodes
        assert_holds(store_k, committed, mode="r")   # opens, exactly the committed episodes
        raw = zarr.open_group(str(store_k), mode="r")
        if "data/action" in raw and raw["data/action"].shape[0] > sum(base_lengths) and k - 1 <= commit:
            saw_leftovers = True

        store = assert_holds(store_k, committed, mode="a")
        recovered = make_episode(recovery_rng, 9)
        store.append_episode(recovered)
        assert_holds(store_k, committed + [recovered], mode="r")
        # and appending goes on working
        another = make_episode(recovery_rng, 4)
        store.append_episode(another)
        assert_holds(store_k, committed + [recovered, another], mode="r")
        shutil.rmtree(store_k)

    # the kills did land in the middle of the append (uncommitted steps were on disk)
    assert saw_leftovers
    elapsed = time.monotonic() - t0
    print(f"{n_writes} writes per append, {n_writes + 1} child processes, {elapsed:.1f} s")


def test_append_with_a_lossy_dtype_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    store = EpisodeStore.create(path, fps=10)
    first = make_episode(np.random.default_rng(0), 5)
    store.append_episode(first)
    bad = make_episode(np.random.default_rng(1), 4)
    bad["image"] = bad["image"].astype(np.float32) + 0.7     # float pixels into a uint8 array
    with pytest.raises(StoreError, match="image.*uint8.*float32"):
        store.append_episode(bad)
    reopened = EpisodeStore.open(path)
    assert reopened.n_episodes == 1
    np.testing.assert_array_equal(reopened.episode(0)["image"], first["image"])


def test_values_that_the_store_dtype_cannot_hold_are_refused_and_the_source_is_named(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", fps=10)
    first = make_episode(np.random.default_rng(0), 5)
    store.append_episode({**first, "count": np.zeros(5, np.int8)})          # the store's action: float32
    wide = make_episode(np.random.default_rng(1), 4)
    with pytest.raises(StoreError, match="theirs.h5: demo_1: data/count holds int8, and the episode's int64 values "
                                         "do not fit it \\(from 0 to 300\\)"):
        store.append_episode({**wide, "count": np.array([0, 1, 2, 300])}, source="theirs.h5: demo_1")  # would wrap
    huge = {**wide, "count": np.zeros(4, np.int8), "action": wide["action"].astype(np.float64)}
    huge["action"][2, 0] = 1e39                                              # finite in float64, inf in float32
    with pytest.raises(StoreError, match="'action' holds NaN or infinite values, or beyond \\+-1e\\+30 as float32 "
                                         "\\(first at step 2\\)"):
        store.append_episode(huge)
    assert EpisodeStore.open(tmp_path / "s.zarr").n_episodes == 1
