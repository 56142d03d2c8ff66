"""``cadence collect`` into an existing store: it appends episodes drawn from new seeds, refuses an
incompatible store in one line without writing, and ``overwrite=true`` swaps in a new store only
when it is complete -- a real ``cadence collect`` SIGKILLed mid-way leaves the old store intact."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from cadence.collect import collect
from cadence.config import CollectConfig, TaskConfig
from cadence.datasets.episode_store import EpisodeStore, StoreError
from cadence.envs.demonstrations import expert_episodes
from tests.datasets.test_episode_store import snapshot

CADENCE = Path(sys.executable).with_name("cadence")


def task(path: Path):
    return OmegaConf.merge(OmegaConf.structured(TaskConfig), {"dataset": str(path)})


def settings(**values):
    return OmegaConf.merge(OmegaConf.structured(CollectConfig), values)


def expert(n: int, seed: int) -> list[dict]:
    """The successful episodes of the default task's expert, as collect draws them."""
    return [ep for ep, info in expert_episodes("bimodal_reach", TaskConfig.env_id, n, seed) if info["is_success"]]


def assert_episodes(path: Path, expected: list[dict]) -> None:
    store = EpisodeStore.open(path)
    assert store.n_episodes == len(expected)
    for i, episode in enumerate(expected):
        got = store.episode(i)
        assert sorted(got) == sorted(episode)
        for key in episode:
            np.testing.assert_array_equal(got[key], episode[key], err_msg=f"episode {i} key {key}")


def test_collect_appends_and_its_seeds_continue(tmp_path):
    path = tmp_path / "reach.zarr"
    first = collect(task(path), settings(episodes=4, seed=3), progress=False)
    assert (first["seed"], first["episodes"], first["total_episodes"]) == (3, 4, 4)
    again = collect(task(path), settings(episodes=4, seed=3), progress=False)
    assert (again["seed"], again["episodes"], again["total_episodes"]) == (7, 4, 8)   # seed + 4 already there
    assert again["steps"] == EpisodeStore.open(path).n_steps
    assert_episodes(path, expert(4, 3) + expert(4, 7))
    # new episodes, not the first ones again: the expert's pairs share a start, so 8 episodes hold 4 starts
    starts = {tuple(EpisodeStore.open(path).episode(i)["state"][0]) for i in range(8)}
    assert len(starts) == 4


def test_an_incompatible_store_is_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "other.zarr"
    store = EpisodeStore.create(path, fps=10)
    store.append_episode({"state": np.zeros((3, 4), np.float32), "action": np.zeros((3, 2), np.float32)})
    before = snapshot(path)
    with pytest.raises(StoreError, match=r"data/state has per-step shape \(4,\), episode gives \(6,\)"):
        collect(task(path), settings(episodes=2), progress=False)
    assert snapshot(path) == before

    slow = tmp_path / "slow.zarr"
    EpisodeStore.create(slow, fps=30)
    proc = subprocess.run([str(CADENCE), "collect", f"task.dataset={slow}", "collect.episodes=2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"cadence collect: error: {slow}: holds episodes recorded at "
                                                    "30.0 fps, task bimodal_reach records at 10.0 (collect.overwrite="
                                                    "true replaces the store)")


def committed_episodes(store: Path) -> int:
    try:
        return json.loads((store / "meta/episode_ends/.zarray").read_text())["shape"][0]
    except (OSError, ValueError, KeyError):
        return 0


def test_a_killed_overwrite_leaves_the_old_store_and_a_finished_one_replaces_it(tmp_path):
    path = tmp_path / "reach.zarr"
    collect(task(path), settings(episodes=4), progress=False)
    old_episodes, before = expert(4, 0), snapshot(path)
    tmp = path.with_name("reach.zarr.tmp")

    log = open(tmp_path / "collect.log", "w")
    proc = subprocess.Popen([str(CADENCE), "collect", f"task.dataset={path}", "collect.overwrite=true",
                             "collect.episodes=100000"], cwd=tmp_path, stdout=log, stderr=log)
    deadline = time.monotonic() + 240
    while committed_episodes(tmp) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, (tmp_path / "collect.log").read_text()
    log.close()
    assert committed_episodes(tmp) >= 3                       # killed mid-way through the new store
    assert snapshot(path) == before                           # the old one untouched ...
    assert_episodes(path, old_episodes)                       # ... and readable

    # the next collect clears the leftover and appends to the old store
    summary = collect(task(path), settings(episodes=2), progress=False)
    assert (summary["seed"], summary["total_episodes"]) == (4, 6) and not tmp.exists()
    assert_episodes(path, old_episodes + expert(2, 4))

    # an overwrite that finishes: the new store alone, nothing left beside it
    summary = collect(task(path), settings(episodes=2, seed=5, overwrite=True), progress=False)
    assert (summary["seed"], summary["total_episodes"]) == (5, 2)
    assert_episodes(path, expert(2, 5))
    assert sorted(os.listdir(tmp_path)) == ["collect.log", "reach.zarr"]


@pytest.mark.parametrize("change, message", [({"env_id": None}, "no simulator"), ({"expert": "none"}, "no scripted expert")])
def test_a_task_without_simulator_or_expert_points_to_import(tmp_path, change, message):
    with pytest.raises(StoreError, match=f"{message} to collect with.*cadence import"):
        collect(OmegaConf.merge(task(tmp_path / "x.zarr"), change), settings(episodes=1), progress=False)
    assert not (tmp_path / "x.zarr").exists()
