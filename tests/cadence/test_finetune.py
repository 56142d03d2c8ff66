import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from cadence.checkpoint import CheckpointError, load_policy
from cadence.config import FinetuneApp
from cadence.finetune import Finetuner, finetune
from cadence.train import train
from tests.conftest import tiny_train_config


@pytest.fixture(scope="module")
def pretrained(tiny_store, tmp_path_factory):
    """Tiny MLP flow, shortcut and DDPM policies of the default task (a few training steps each)."""
    runs = {}
    for process in ("flow", "shortcut", "ddpm"):
        run = tmp_path_factory.mktemp(f"pre-{process}")
        cfg = tiny_train_config(tiny_store, run, process=process, steps=4)
        cfg = OmegaConf.merge(cfg, {"policy": {"network": "mlp", "mlp": {"width": 32, "n_layers": 1},
                                               "sample_steps": 2, "shortcut": {"max_steps": 8}},
                                    "eval": {"episodes": 0}})
        train(cfg, run, progress=False)
        runs[process] = run
    return runs


def finetune_config(checkpoint, run_dir, video_episodes=0, **finetune):
    cfg = OmegaConf.structured(FinetuneApp)
    return OmegaConf.merge(cfg, {
        "checkpoint": str(checkpoint), "run_dir": str(run_dir),
        "finetune": {"envs": 3, "rollout_steps": 2, "env_steps": 40, "epochs": 2, "minibatch": 4, "critic_warmup": 0,
                     "eval_every": 1, "checkpoint_every": 1, **finetune},
        "eval": {"episodes": 2, "video_episodes": video_episodes, "plot": False, "latency_calls": 0}})


@pytest.mark.parametrize("process,method", [("flow", "reinflow"), ("shortcut", "reinflow"), ("ddpm", "dppo")])
def test_finetune_runs_evaluates_and_saves_an_ordinary_checkpoint(pretrained, tmp_path, process, method):
    run = tmp_path / "ft"
    video = int(process == "flow")
    ckpt = finetune(finetune_config(pretrained[process], run, video_episodes=video,
                                    sample_steps=1 if process == "flow" else None), run, progress=False)
    curve = json.loads((run / "curve.json").read_text())
    # 3 envs x 2 decisions x 4 actions: at most 24 env steps per iteration (fewer when episodes end mid-chunk)
    n = len(curve) - 1
    assert n >= 2 and [r["iteration"] for r in curve] == list(range(n + 1)) and curve[0]["env_steps"] == 0
    assert curve[-2]["env_steps"] < 40 <= curve[-1]["env_steps"] and (run / "curve.png").stat().st_size > 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    updates = [m for m in metrics if "pg_loss" in m]
    assert len(updates) == n and all(m["ratio_max_dev"] < 1 for m in updates)
    evals = [m for m in metrics if "eval/success_rate" in m]                  # every evaluation, as train logs it
    assert [(m["step"], m["eval/env_steps"]) for m in evals] == [(r["iteration"], r["env_steps"]) for r in curve]
    assert sum("eval/rollouts" in m for m in metrics) == video * len(curve) and all("eval/latency" not in m for m in metrics)
    policy, cfg, meta = load_policy(ckpt)
    assert meta["finetune"]["method"] == method and meta["finetune"]["iterations"] == n
    assert cfg.policy.sample_steps == (1 if process == "flow" else 2)
    before = load_file(str(pretrained[process] / "checkpoint" / "model.safetensors"))
    after = load_file(str(ckpt / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)           # the policy was updated
    with pytest.raises(CheckpointError, match="resume=true"):
        finetune(finetune_config(pretrained[process], run), run, progress=False)


def test_resume_restores_every_piece_of_state_and_continues_the_count(pretrained, tmp_path):
    run = tmp_path / "ft"
    cfg = finetune_config(pretrained["flow"], run, env_steps=20)
    finetune(cfg, run, progress=False)
    state = json.loads((run / "checkpoint" / "train_state.json").read_text())
    saved = load_file(str(run / "checkpoint" / "train_state.safetensors"))
    weights = load_file(str(run / "checkpoint" / "model.safetensors"))
    cfg.finetune.env_steps, cfg.resume = 60, True
    resumed = Finetuner(cfg, run, progress=False)
    assert resumed.restore()
    first = state["iteration"]
    assert resumed.iteration == first >= 1 and resumed.env_steps == state["env_steps"] >= 20
    assert len(resumed.curve) == first + 1
    for k, v in resumed.policy.weights().items():
        assert torch.equal(v, weights[k]), k
    for k, v in resumed.critic.state_dict().items():
        assert torch.equal(v, saved[f"critic.{k}"]), k
    for k, v in resumed.actor.noise.state_dict().items():
        assert torch.equal(v, saved[f"noise.{k}"]), k
    moments = resumed.actor_opt.state_dict()["state"]
    assert moments and all(torch.equal(s["exp_avg"], saved[f"actor_opt.optim.{i}.exp_avg"]) for i, s in moments.items())
    finetune(cfg, run, progress=False)
    curve = json.loads((run / "curve.json").read_text())
    n = len(curve) - 1
    assert [r["iteration"] for r in curve] == list(range(n + 1)) and n > first and curve[-1]["env_steps"] >= 60
    assert json.loads((run / "checkpoint" / "meta.json").read_text())["finetune"]["iterations"] == n
    assert not (run / "checkpoint.tmp").exists() and not (run / "checkpoint.old").exists()


def test_a_rescoring_mismatch_is_caught_on_the_first_minibatch(pretrained, tmp_path, monkeypatch):
    from cadence.policies.rl.reinflow import ReinFlowActor
    original = ReinFlowActor.log_prob
    monkeypatch.setattr(ReinFlowActor, "log_prob", lambda self, obs, chain, progress=0.0:
                        tuple(x + 1e-2 if i == 0 else x for i, x in enumerate(original(self, obs, chain, progress))))
    with pytest.raises(RuntimeError, match="ratio on the first minibatch"):
        finetune(finetune_config(pretrained["flow"], tmp_path / "ft"), tmp_path / "ft", progress=False)


def test_policies_without_a_chain_are_refused(tiny_store, tmp_path):
    run = tmp_path / "reg"
    cfg = tiny_train_config(tiny_store, run, process="regression", steps=2)
    cfg.eval.episodes = 0
    train(cfg, run, progress=False)
    with pytest.raises(CheckpointError, match="flow or shortcut"):
        finetune(finetune_config(run, tmp_path / "ft"), tmp_path / "ft", progress=False)


def test_reinflow_on_robosuite_lift_low_dim(tmp_path):
    """Pretrain a tiny flow policy on two scripted Lift demonstrations, then one ReinFlow iteration in robosuite."""
    from cadence.collect import collect
    from cadence.config import CollectConfig, TaskConfig

    task = OmegaConf.merge(OmegaConf.structured(TaskConfig), OmegaConf.load("configs/task/lift.yaml"),
                           {"dataset": str(tmp_path / "lift.zarr")})
    collect(task, OmegaConf.structured(CollectConfig(episodes=2)), progress=False)
    run = tmp_path / "pre"
    cfg = tiny_train_config(tmp_path / "lift.zarr", run, process="flow", steps=4)
    cfg = OmegaConf.merge(cfg, {"task": task, "policy": {"network": "mlp", "mlp": {"width": 32, "n_layers": 1}},
                                "eval": {"episodes": 0}})
    train(cfg, run, progress=False)
    ft = tmp_path / "ft"
    ftcfg = finetune_config(run, ft, envs=2, rollout_steps=2, env_steps=16, eval_every=0)
    ftcfg.eval.episodes = 1
    ckpt = finetune(ftcfg, ft, progress=False)
    curve = json.loads((ft / "curve.json").read_text())
    assert curve[-1]["env_steps"] >= 16 and load_policy(ckpt)[1].task.name == "lift"


def test_w2_regulariser_starts_at_zero_and_pulls_toward_the_pretrained_flow(pretrained, tmp_path):
    run = tmp_path / "ft"
    ft = Finetuner(finetune_config(pretrained["flow"], run, w2_weight=1.0, actor_lr=1e-2), run, progress=False)
    obs = {"state": torch.rand(4, 2, 6)}
    start = torch.randn(4, ft.policy.pred_horizon, ft.policy.action_dim)
    assert torch.equal(ft.actor.ode(obs, start), ft.pretrained.ode(obs, start))     # same flow before fine-tuning
    ft.run()
    updates = [m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "w2" in m]
    assert updates and all(m["w2"] > 0 for m in updates)
    assert not torch.allclose(ft.actor.ode(obs, start), ft.pretrained.ode(obs, start))
    assert not any(p.requires_grad for p in ft.pretrained.parameters())
    with pytest.raises(ValueError, match="w2_weight"):
        finetune(finetune_config(pretrained["ddpm"], tmp_path / "d", w2_weight=1.0), tmp_path / "d", progress=False)
