"""task=store: training on your own recordings without a simulator, keys and fps read from the store."""
import json
import logging

import numpy as np
import pytest
from omegaconf import OmegaConf

from cadence.config import TaskConfig
from cadence.datasets.episode_store import EpisodeStore, StoreError
from cadence.store_task import check_simulator, observation_keys, resolve_task
from cadence.task_suite import load_task_config

from ..conftest import tiny_train_config


def own_store(path, episodes=12, fps=30, state_dim=4, extra=None):
    """A store as `cadence import format=lerobot` writes it: LeRobot key names, bookkeeping keys."""
    store = EpisodeStore.create(path, fps=fps)
    rng = np.random.default_rng(0)
    for e in range(episodes):
        n = int(rng.integers(18, 30))
        t = np.linspace(0, 1, n)[:, None]
        state = np.concatenate([np.sin(3 * t + e), np.cos(2 * t + e), t, np.full_like(t, e / episodes)],
                               1)[:, :state_dim].astype(np.float32)
        store.append_episode({"observation.state": state, "action": (0.5 * state[:, :2]).astype(np.float32),
                              "timestamp": (np.arange(n) / fps).astype(np.float32)[:, None],
                              "frame_index": np.arange(n)[:, None], **(extra(n) if extra else {})})
    return path


def store_task(store, **overrides):
    task = load_task_config("store")
    assert task.dataset is None                 # the user must name the store
    task.dataset = str(store)
    return OmegaConf.merge(task, overrides)


def test_keys_and_fps_come_from_the_store(tmp_path):
    task = resolve_task(store_task(own_store(tmp_path / "own.zarr")))
    assert task.env_id is None and list(task.obs_keys) == ["observation.state"]
    assert task.action_key == "action" and task.fps == 30.0


def test_observation_keys_skip_actions_and_bookkeeping(tmp_path):
    store = EpisodeStore.create(tmp_path / "rm.zarr", fps=20)
    n = 4
    store.append_episode({k: np.zeros((n, 2), np.float32) for k in
                          ("actions", "robot0_eef_pos", "object", "reward", "done", "sim_state", "next.reward",
                           "states.articulation.robot.joint_position", "agentview_image", "actions.velocity",
                           "action_dict.abs_pos", "datagen_info.target_pose")})
    keys = observation_keys(store, "actions")
    assert keys == ["agentview_image", "object", "robot0_eef_pos"]
    task = resolve_task(store_task(store.path))
    assert task.action_key == "actions" and list(task.obs_keys) == keys


def test_what_the_user_sets_wins_and_a_differing_fps_is_said(tmp_path, caplog):
    dataset = own_store(tmp_path / "own.zarr")
    with caplog.at_level(logging.WARNING):
        task = resolve_task(store_task(dataset, obs_keys=["observation.state", "timestamp"], fps=10))
    assert list(task.obs_keys) == ["observation.state", "timestamp"] and task.fps == 10
    assert "recorded at 30.0 fps" in caplog.text


@pytest.mark.parametrize("overrides, match", [
    ({"obs_keys": ["observation.wrist"]}, r"lacks.*observation.wrist"),
    ({"action_key": "joint_cmd"}, "no action key 'joint_cmd'"),
    ({"dataset": "nowhere.zarr"}, "cadence import"),
    ({"dataset": None}, r"task.dataset=PATH"),
])
def test_keys_the_store_lacks_are_refused_before_training(tmp_path, overrides, match):
    with pytest.raises(StoreError, match=match):
        resolve_task(store_task(own_store(tmp_path / "own.zarr"), **overrides))


def test_a_simulator_that_observes_something_else_is_refused(tmp_path):
    task = OmegaConf.structured(TaskConfig)            # the default task: state (6,), 2-D actions
    check_simulator(task, {"state": (6,)}, 2)
    with pytest.raises(StoreError, match="shape"):
        check_simulator(task, {"state": (4,)}, 2)
    with pytest.raises(StoreError, match="actions have 2"):
        check_simulator(task, {"state": (6,)}, 3)
    with pytest.raises(StoreError, match="observation.state"):
        check_simulator(task, {"observation.state": (6,)}, 2)


def test_training_a_simulator_task_on_a_store_that_does_not_fit_stops_before_the_first_step(tmp_path):
    from cadence.train import train

    dataset = own_store(tmp_path / "own.zarr", state_dim=3)
    cfg = tiny_train_config(dataset, tmp_path / "run")
    cfg.task.obs_keys = ["observation.state"]
    with pytest.raises(StoreError, match="observation.state"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_train_without_a_simulator_validates_offline_then_eval_and_task_init_work(tmp_path, monkeypatch):
    """The whole path a user with their own recordings takes, through the command line."""
    from cadence.cli import main

    dataset = own_store(tmp_path / "own.zarr")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["cadence"])
    small = ["train.steps=4", "train.batch_size=8", "train.eval_every=2", "train.warmup_steps=1",
             "train.log_every=2", "policy.pred_horizon=8", "policy.exec_horizon=4", "policy.down_dims=[16,32]",
             "policy.obs_feature_dim=16", "policy.level_embed_dim=16", "policy.sample_steps=2", "tracking=none"]
    assert main(["task", "init", f"store={dataset}", f"out={tmp_path}/cfg/task/my_arm.yaml"]) == 0
    run_dir = tmp_path / "run"
    assert main(["train", "--config-dir", str(tmp_path / "cfg"), "task=my_arm", *small, f"run_dir={run_dir}"]) == 0
    cfg = OmegaConf.load(run_dir / "checkpoint" / "config.yaml")
    meta = json.loads((run_dir / "checkpoint" / "meta.json").read_text())
    assert cfg.task.env_id is None and cfg.task.fps == 30.0 and cfg.task.name == "my_arm"
    assert len(meta["val_episodes"]) == 1 == cfg.train.val_episodes          # 10% of 12
    for step in (2, 4):
        offline = json.loads((run_dir / f"eval-step{step}" / "eval.json").read_text())["offline"]
        assert offline["episodes"] == meta["val_episodes"] and np.isfinite(offline["l1"])
        assert (run_dir / f"eval-step{step}" / "offline_actions.png").exists()
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "offline/l1" in r] == [2, 4]
    assert main(["eval", f"checkpoint={run_dir}", f"out_dir={tmp_path}/ev"]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["offline"]["l1"] == pytest.approx(offline["l1"])
    with pytest.raises(SystemExit):            # a task file is not overwritten
        main(["task", "init", f"store={dataset}", f"out={tmp_path}/cfg/task/my_arm.yaml"])


def test_a_resumed_run_keeps_its_held_out_episodes_when_the_store_grows(tmp_path):
    from cadence.train import train

    dataset = own_store(tmp_path / "own.zarr", episodes=20)
    cfg = tiny_train_config(dataset, tmp_path / "run", steps=2)
    cfg.task = store_task(dataset)
    cfg.eval.offline_plot_episodes = 0
    train(cfg, tmp_path / "run", progress=False)
    first = json.loads((tmp_path / "run/checkpoint/meta.json").read_text())["val_episodes"]
    assert len(first) == 2
    store = EpisodeStore.open(dataset, mode="a")            # ten more recordings
    for e in range(10):
        store.append_episode(EpisodeStore.open(dataset).episode(e))
    resumed = OmegaConf.merge(cfg, {"train": {"steps": 4, "val_episodes": 5}, "resume": True})
    train(resumed, tmp_path / "run", progress=False)
    meta = json.loads((tmp_path / "run/checkpoint/meta.json").read_text())
    assert meta["step"] == 4 and meta["val_episodes"] == first
    offline = json.loads((tmp_path / "run/eval-step4/eval.json").read_text())["offline"]
    assert offline["episodes"] == first


def test_task_init_gives_a_rate_to_a_store_that_records_none(tmp_path, monkeypatch, capsys):
    """Diffusion Policy's and UMI's stores (here zipped, with JPEG XL images) record no fps."""
    from cadence.cli import main

    from ..datasets.image_stores import image_store

    image_store(tmp_path / "umi.zarr.zip", "jpegxl")
    monkeypatch.setattr("sys.argv", ["cadence"])
    out = tmp_path / "cfg" / "task" / "umi.yaml"
    with pytest.raises(SystemExit):
        main(["task", "init", f"store={tmp_path}/umi.zarr.zip", f"out={out}"])
    assert "umi.zarr.zip: records no fps" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):
        main(["task", "init", f"store={tmp_path}/umi.zarr.zip", f"out={out}", "fps=-1"])
    assert main(["task", "init", f"store={tmp_path}/umi.zarr.zip", f"out={out}", "fps=10"]) == 0
    task = OmegaConf.load(out)
    assert task.fps == 10.0 and task.dataset == f"{tmp_path}/umi.zarr.zip"
    assert task.action_key == "action" and list(task.obs_keys) == ["img", "state"]
