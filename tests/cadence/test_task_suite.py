"""Multitask suites: members with one-hot task ids, their observations, one policy trained and
evaluated over all of them (real default-task simulation and stores)."""
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from cadence.config import TaskConfig
from cadence.datasets.episode_store import EpisodeStore
from cadence.calibration_data import calibration_observations
from cadence.envs.demonstrations import expert_episodes
from cadence.envs.task_env import make_env
from cadence.task_suite import is_suite, member_tasks
from cadence.train import train
from tests.conftest import tiny_train_config

SUITE = {"name": "bimodal_reach_multitask",
         "members": ["bimodal_reach", "bimodal_reach_left", "bimodal_reach_right"]}


def _suite(**extra):
    return OmegaConf.merge(OmegaConf.structured(TaskConfig), {**SUITE, **extra})


def test_members_get_one_hot_task_ids_and_the_task_id_observation():
    members = member_tasks(_suite())
    assert [m.name for m in members] == SUITE["members"] and is_suite(_suite())
    assert [list(m.task_id) for m in members] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert all(list(m.obs_keys) == ["state", "task_id"] for m in members)
    assert [m.env_kwargs.get("side", "either") for m in members] == ["either", "left", "right"]
    plain = OmegaConf.structured(TaskConfig)
    assert member_tasks(plain) == [plain] and not is_suite(plain)


def test_bad_members_are_named():
    with pytest.raises(ValueError, match="'nope'"):
        member_tasks(_suite(members=["bimodal_reach", "nope"]))
    with pytest.raises(ValueError, match="twice"):
        member_tasks(_suite(members=["bimodal_reach", "bimodal_reach"]))
    with pytest.raises(ValueError, match="itself a suite"):
        member_tasks(_suite(members=["bimodal_reach", "bimodal_reach_multitask"]))


def test_a_member_s_environment_adds_its_task_id():
    member = member_tasks(_suite())[2]
    env = make_env(member)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["task_id"].tolist() == [0, 0, 1] and obs["task_id"].dtype == np.float32
        assert env.observation_space["task_id"].shape == (3,) and obs["state"].shape == (6,)
        obs, *_ = env.step(obs["state"][:2])
        assert obs["task_id"].tolist() == [0, 0, 1]
    finally:
        env.close()


def _collect_members(episodes: int = 4) -> None:
    """Each member's store (in the working directory), from its scripted expert."""
    for member in member_tasks(_suite()):
        store = EpisodeStore.create(member.dataset, fps=10)
        for episode, _ in expert_episodes("bimodal_reach", member.env_id, episodes, seed=0,
                                          env_kwargs=dict(member.env_kwargs)):
            store.append_episode(episode)


def test_one_policy_trains_on_every_member_and_is_evaluated_on_each(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _collect_members()
    cfg = tiny_train_config(tmp_path / "unused", tmp_path / "run", steps=4)
    cfg.task = _suite()
    train(cfg, tmp_path / "run", progress=False)
    meta = json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())
    assert meta["obs_shapes"] == {"state": [6], "task_id": [3]}
    summary = json.loads((tmp_path / "run" / "eval-step4" / "eval.json").read_text())
    assert set(summary["per_task"]) == set(SUITE["members"]) and summary["n_episodes"] == 6
    assert summary["success_rate"] == pytest.approx(np.mean([m["success_rate"] for m in summary["per_task"].values()]))
    assert (tmp_path / "run" / "eval-step4" / "bimodal_reach_left" / "eval.json").is_file()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/success_rate/bimodal_reach_right" in r for r in records)
    calibration = calibration_observations(cfg, 2)          # latency budgets calibrate on the first member
    assert calibration[0]["task_id"].tolist() == [[[1, 0, 0]] * 2] and calibration[0]["state"].shape == (1, 2, 6)


def test_anchor_policy_fits_anchors_per_member(tmp_path, monkeypatch):
    from tests.conftest import tiny_anchor_config

    monkeypatch.chdir(tmp_path)
    _collect_members()
    cfg = tiny_anchor_config(tmp_path / "unused", tmp_path / "run", steps=2)
    cfg.task = _suite()
    cfg.eval.episodes = 1
    train(cfg, tmp_path / "run", progress=False)
    from cadence.checkpoint import load_policy
    policy, _, _ = load_policy(tmp_path / "run")
    anchors = policy.process.anchors       # normalised per dimension: the order of x is kept
    assert anchors.shape[:2] == (3, 4)
    # members: either side, left only, right only -- the one-sided members' anchors lie on their side
    mean_x = anchors[..., 0].mean(dim=(1, 2))
    assert mean_x[1] < mean_x[0] < mean_x[2]
    summary = json.loads((tmp_path / "run" / "eval-step2" / "eval.json").read_text())
    assert set(summary["per_task"]) == set(SUITE["members"])
