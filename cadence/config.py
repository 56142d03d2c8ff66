"""Typed configuration schema (Hydra structured configs).

The YAML files in ``configs/`` fill these dataclasses; a key that is not declared here fails
at start-up with its name, and no config value is ever executed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class TaskConfig:
    name: str = "bimodal_reach"
    env_id: str = "cadence/BimodalReach-v0"
    env_kwargs: dict = field(default_factory=dict)   # passed to gymnasium.make
    obs_keys: list = field(default_factory=lambda: ["state"])
    action_key: str = "action"
    dataset: str = "data/bimodal_reach.zarr"          # episode store, relative to the working dir
    fps: float = 10.0
    expert: str = "bimodal_reach"                     # scripted expert used by `cadence collect`


@dataclass
class PolicyConfig:
    name: str = "diffusion"
    process: str = "ddpm"            # ddpm | flow | regression
    obs_horizon: int = 2             # To
    pred_horizon: int = 16           # Tp
    exec_horizon: int = 8            # Ta
    diffusion_steps: int = 100       # DDPM training steps (cosine schedule)
    sample_steps: int = 10           # DDIM or Euler steps at inference
    clip_sample: bool = True
    normalizer: str = "limits"       # limits | gaussian
    down_dims: list = field(default_factory=lambda: [32, 64, 128])
    kernel_size: int = 5
    n_groups: int = 8
    level_embed_dim: int = 64
    obs_feature_dim: int = 128
    image_feature_dim: int = 64


@dataclass
class TrainConfig:
    steps: int = 1500
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    warmup_steps: int = 100
    grad_clip: float = 10.0
    ema_decay: float = 0.999         # upper bound; warms up as 1 - (1 + step / 10) ** -0.75
    log_every: int = 50
    eval_every: int = 500            # evaluation rollouts every N steps (0: only at the end)
    checkpoint_every: int = 500
    seed: int = 0
    threads: int = 0                 # torch CPU threads; 0 leaves torch's default
    device: str = "auto"             # auto | cpu | cuda


@dataclass
class EvalConfig:
    episodes: int = 50
    seed: int = 100_000              # evaluation seeds are seed, seed + 1, ...
    sample_steps: Optional[int] = None   # override the policy's sampling steps
    video_episodes: int = 4          # 0: no video
    video_format: str = "gif"        # gif | mp4
    plot: bool = True
    latency_calls: int = 20          # batch-1 predict_chunk calls timed for ms per chunk


@dataclass
class TrackingConfig:
    mode: str = "none"               # none | offline | online (Weights & Biases)
    project: str = "cadence"


@dataclass
class CollectConfig:
    episodes: int = 150
    seed: int = 0
    overwrite: bool = False


@dataclass
class CollectApp:
    task: TaskConfig = field(default_factory=TaskConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)


@dataclass
class TrainApp:
    task: TaskConfig = field(default_factory=TaskConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run_dir: str = "runs/${task.name}-${policy.name}-${now:%Y%m%d-%H%M%S}"
    resume: bool = False


@dataclass
class EvalApp:
    checkpoint: str = "???"            # a run directory or its checkpoint/ folder
    eval: EvalConfig = field(default_factory=EvalConfig)
    out_dir: Optional[str] = None      # default: <run>/eval-<timestamp>
    device: str = "auto"


@dataclass
class DemoConfig:
    steps: Dict[str, int] = field(default_factory=dict)   # training steps per policy name
    out_dir: str = "runs/demo-${now:%Y%m%d-%H%M%S}"


@dataclass
class DemoApp:
    task: TaskConfig = field(default_factory=TaskConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    policies: Dict[str, PolicyConfig] = field(default_factory=dict)
    demo: DemoConfig = field(default_factory=DemoConfig)


def register() -> None:
    cs = ConfigStore.instance()
    for name, node in {"collect_schema": CollectApp, "train_schema": TrainApp, "eval_schema": EvalApp,
                       "demo_schema": DemoApp}.items():
        cs.store(name=name, node=node)

