"""cadence bench finetune: pretrains on a few demonstrations, fine-tunes each row with one budget, one table."""
import json

import pytest

from cadence.bench.finetune import summarize, verdict
from cadence.bench.config import FinetuneMethod

from .test_anchor import _list
from ..test_cli import cadence

pytestmark = pytest.mark.timeout(600)

PRETRAIN = ["policy.network=mlp", "policy.mlp.width=32", "policy.mlp.n_layers=1", "policy.pred_horizon=8",
            "policy.exec_horizon=4", "policy.obs_feature_dim=16", "train.batch_size=16", "train.warmup_steps=2",
            "train.checkpoint_every=0", "policy.shortcut.max_steps=8"]
METHODS = ("[{name: reinflow-flow, policy: flow, pretrain_steps: 4, sample_steps: 2},"
           " {name: dppo, policy: diffusion, pretrain_steps: 4, sample_steps: 2, overrides: ['finetune.dppo.ft_steps=1']},"
           " {name: no fine-tuning, policy: flow, pretrain_steps: 4, sample_steps: 2, finetune: false}]")


def test_rows_share_pretraining_budget_and_seeds_and_rerun_resumes(tmp_path):
    args = ["bench", "finetune", "demos=4", f"pretrain_overrides={_list(PRETRAIN)}", f"methods={METHODS}",
            "finetune.envs=2", "finetune.rollout_steps=2", "finetune.env_steps=30", "finetune.epochs=1",
            "finetune.minibatch=4", "finetune.critic_warmup=0", "finetune.eval_every=1", "eval.episodes=2", "out_dir=b"]
    proc = cadence(*args, cwd=tmp_path)
    result = json.loads((tmp_path / "b" / "results.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["reinflow-flow", "dppo", "no fine-tuning"]
    assert (tmp_path / "data" / "bimodal_reach-4demos.zarr").is_dir() and (tmp_path / "b" / "curves.png").is_file()
    flow, dppo, none = rows.values()
    assert none["iterations"] == 0 and none["pretrained"] == flow["pretrained"]     # same pretrained flow policy
    for r in (flow, dppo):
        assert r["iterations"] >= 2 and r["env_steps"] >= 30 and r["curve"][0]["env_steps"] == 0
        assert r["wall_s"] > 0 and r["s_per_iteration"] == pytest.approx(r["wall_s"] / r["iterations"], abs=0.01)
    assert json.loads((tmp_path / "b" / "dppo" / "checkpoint" / "meta.json").read_text())["finetune"]["method"] == "dppo"
    assert result["target_met"] in (True, False) and "| reinflow-flow" in proc.stdout and "Target" in proc.stdout
    again = json.loads((cadence(*args, cwd=tmp_path), tmp_path / "b" / "results.json")[1].read_text())
    assert [r["iterations"] for r in again["rows"]] == [r["iterations"] for r in result["rows"]]   # nothing redone


def _row(name, policy, curve):
    return summarize(FinetuneMethod(name, policy), curve, 0.9)


def test_target_needs_a_low_start_the_target_and_less_wall_time_than_dppo():
    curve = lambda *points: [{"iteration": i, "env_steps": 100 * i, "wall_s": 10.0 * i, "success_rate": s}  # noqa: E731
                             for i, s in enumerate(points)]
    flow = _row("reinflow-flow", "flow", curve(0.5, 0.8, 0.92, 0.95))
    assert flow["env_steps_to_target"] == 200 and flow["wall_s_to_target"] == 20.0 and flow["best"] == 0.95
    assert verdict([flow, _row("dppo", "diffusion", curve(0.5, 0.6, 0.7, 0.91))], 0.9)[0] is True
    assert verdict([flow, _row("dppo", "diffusion", curve(0.5, 0.95))], 0.9)[0] is False       # DPPO got there first
    assert verdict([_row("reinflow-flow", "flow", curve(0.7, 0.95)), _row("dppo", "diffusion", curve(0.5, 0.6))],
                   0.9)[0] is False                                                                # start too good
    assert verdict([flow], 0.9)[0] is None
