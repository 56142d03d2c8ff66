"""Typed configuration schema of the ``cadence bench ...`` commands (Hydra structured configs);
the shared pieces (task, evaluation, budget, ...) are in :mod:`cadence.config`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from cadence.choices import Blend, CacheMetric, Precision
from cadence.config import CollectConfig, EvalConfig, FinetuneConfig, TaskConfig
from cadence.robot_schema import BudgetConfig


@dataclass
class BenchLatencyApp:
    checkpoints: list = field(default_factory=list)   # run directories (or checkpoint folders)
    runtimes: list = field(default_factory=lambda: ["auto"])   # kinds, or auto: all this machine runs
    steps: Optional[list] = None            # sampling steps per policy; default per process
    calls: int = 30
    warmup: int = 5
    calibration: int = 8
    threads: int = 0                        # torch / ONNX Runtime CPU threads; 0: library default
    device: str = "auto"
    out_dir: str = "runs/bench-latency-${now:%Y%m%d-%H%M%S}"


@dataclass
class BenchSuccessEntry:
    task: str = "bimodal_reach"              # a config in configs/task/
    policy: str = "diffusion"                # a config in configs/policy/
    steps: int = 1500                        # training steps (ignored with checkpoint)
    checkpoint: Optional[str] = None         # evaluate this trained run instead of training
    overrides: list = field(default_factory=list)   # more `cadence train` overrides, e.g. policy.down_dims=[64,128,256]
    sample_steps: Optional[int] = None       # evaluation sampling steps; default the policy's


@dataclass
class BenchSuccessApp:
    entries: list = field(default_factory=list)      # BenchSuccessEntry fields per row
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(video_episodes=2, latency_calls=0))
    collect: CollectConfig = field(default_factory=CollectConfig)   # for tasks whose store is missing
    threads: int = 0                                 # torch CPU threads for training; 0: default
    device: str = "auto"
    out_dir: str = "runs/bench-success-${now:%Y%m%d-%H%M%S}"


@dataclass
class BenchRecordApp:
    task: str = "bimodal_reach"              # a config in configs/task/ with a scripted expert
    episodes: int = 50                       # recorded, and collected for the side-by-side
    policy: str = "diffusion"
    steps: int = 1500                        # training steps of each policy
    overrides: list = field(default_factory=list)   # more `cadence train` overrides for both
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(video_episodes=0, latency_calls=0))
    collect: CollectConfig = field(default_factory=CollectConfig)   # the lockstep side (its episodes: `episodes`)
    threads: int = 0
    device: str = "auto"
    out_dir: str = "runs/bench-record-${now:%Y%m%d-%H%M%S}"


@dataclass
class TrainingBenchApp:
    """Fields shared by the benchmarks that train their policies (or reuse trained runs), evaluate
    them and time them."""
    task: TaskConfig = field(default_factory=TaskConfig)   # task=<a config in configs/task/>
    steps: int = 1500                        # training steps of each policy
    batch_size: int = 256
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(episodes=100, video_episodes=0, latency_calls=0))
    timing_calls: int = 30                   # batch-1 chunks timed per row (median), rows interleaved
    collect: CollectConfig = field(default_factory=CollectConfig)   # if the task's store is missing
    threads: int = 0                         # torch CPU threads for training; 0: default
    device: str = "auto"


@dataclass
class BenchModeApp(TrainingBenchApp):
    steps: int = 1000
    batch_size: int = 128
    experts: int = 8                         # MoDE experts; the dense twin's feed-forward is this many times wider
    top_k: int = 2
    overrides: list = field(default_factory=list)   # `cadence train` overrides for both, e.g. policy.transformer.d_model=64
    dense_checkpoint: Optional[str] = None   # reuse trained runs instead of training
    mode_checkpoint: Optional[str] = None
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(video_episodes=0, latency_calls=0))
    out_dir: str = "runs/bench-mode-${now:%Y%m%d-%H%M%S}"


@dataclass
class BenchCacheApp(TrainingBenchApp):
    batch_size: int = 128                    # steps: of the transformer DDPM policy
    overrides: list = field(default_factory=list)   # more `cadence train` overrides
    checkpoint: Optional[str] = None         # reuse a trained transformer run instead of training
    samplers: list = field(default_factory=lambda: [100, 10])            # sampling steps (100 = the DDPM chain)
    budgets: list = field(default_factory=lambda: [[5, 10, 20], [3, 5]])  # M per branch, one list per sampler
    calibration: int = 64                    # BAC calibration windows from the training data
    batch_size_calibration: int = 16
    error_observations: int = 32             # other windows for the action error against uncached
    metric: CacheMetric = CacheMetric.cosine
    bubbling_blocks: int = 3
    seed: int = 0
    timing_calls: int = 20
    out_dir: str = "runs/bench-cache-${now:%Y%m%d-%H%M%S}"


@dataclass
class PairBenchApp(TrainingBenchApp):
    """Fields shared by the benchmarks that put a technique's policy beside the diffusion policy."""
    diffusion_overrides: list = field(default_factory=list)  # more `cadence train` overrides for the diffusion policy
    diffusion_checkpoint: Optional[str] = None   # reuse a trained run instead of training


@dataclass
class BenchAnchorApp(PairBenchApp):
    anchor_overrides: list = field(default_factory=list)     # more `cadence train` overrides for the anchor policy
    anchor_checkpoint: Optional[str] = None  # reuse a trained anchor run instead of training
    anchor_steps: list = field(default_factory=lambda: [1, 2, 4])   # most confident mode
    sampled_steps: list = field(default_factory=lambda: [2])        # mode drawn by confidence
    ddim_steps: list = field(default_factory=lambda: [10, 20])      # the most steps is the reference row
    accuracy_windows: int = 512              # training windows for the anchor top-1 accuracy
    out_dir: str = "runs/bench-anchor-${now:%Y%m%d-%H%M%S}"


@dataclass
class BenchStreamingApp(PairBenchApp):
    streaming_overrides: list = field(default_factory=list)  # more `cadence train` overrides for the streaming policy
    streaming_checkpoint: Optional[str] = None   # reuse a trained streaming run instead of training
    streaming_steps: list = field(default_factory=lambda: [1, 2, 5, 50])   # denoiser calls per replan
    ddim_steps: list = field(default_factory=lambda: [100, 10])             # 100: the DDPM chain
    reference_steps: int = 10                # the diffusion row the others are compared with
    out_dir: str = "runs/bench-streaming-${now:%Y%m%d-%H%M%S}"


@dataclass
class BenchLoopApp:
    checkpoint: str = "???"
    episodes: int = 50
    seed: int = 100_000
    inject_delay_ms: list = field(default_factory=lambda: [50.0, 150.0])
    blend: Blend = Blend.freeze
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    out_dir: str = "runs/bench-loop-${now:%Y%m%d-%H%M%S}"


@dataclass
class BenchServerApp:
    task: str = "bimodal_reach"              # served by `cadence robot serve task=...`
    requests: int = 300                      # valid round trips per scenario at least (observe / act in turn)
    period_ms: float = 10.0                  # between the valid client's requests
    timeout_ms: float = 30.0                 # the valid client's timeout per request
    big_messages: int = 25                   # large-message scenario: one unauthenticated act per socket
    big_mb: float = 60.0                     # the size of each
    flood: int = 5000                        # flood scenario: wrong-token requests
    flood_sockets: int = 5                   # sending them
    out_dir: str = "runs/bench-server-${now:%Y%m%d-%H%M%S}"


@dataclass
class FinetuneMethod:
    """One row of `cadence bench finetune`."""
    name: str = "reinflow-flow"
    policy: str = "flow"                     # a config in configs/policy/ (flow | shortcut: ReinFlow; diffusion: DPPO)
    pretrain_steps: int = 100                # imitation steps (few: a deliberately imperfect start)
    sample_steps: int = 4                    # denoising steps of the chain and of evaluation
    checkpoint: Optional[str] = None         # reuse a pretrained run instead of pretraining
    finetune: bool = True                    # false: evaluate the pretrained policy only (the no-fine-tuning row)
    overrides: list = field(default_factory=list)   # finetune.* overrides for this row, e.g. finetune.actor_lr=3e-5


def _default_methods() -> list:
    return [FinetuneMethod("reinflow-flow", "flow", 100, 4), FinetuneMethod("reinflow-shortcut", "shortcut", 100, 4),
            FinetuneMethod("dppo", "diffusion", 600, 10), FinetuneMethod("no fine-tuning", "flow", 100, 4, finetune=False)]


@dataclass
class BenchFinetuneApp:
    task: TaskConfig = field(default_factory=TaskConfig)   # task=<a config in configs/task/>
    demos: int = 10                          # demonstrations for pretraining, in data/<task>-<demos>demos.zarr
    pretrain_overrides: list = field(default_factory=lambda: ["policy.network=mlp"])   # for every pretraining
    methods: list = field(default_factory=_default_methods)   # FinetuneMethod fields per row
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)   # shared: budget, PPO settings
    target: float = 0.9                      # success to reach; wall time and env steps to it are compared
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(episodes=50, video_episodes=0, latency_calls=0))
    collect: CollectConfig = field(default_factory=CollectConfig)
    out_dir: str = "runs/bench-finetune-${now:%Y%m%d-%H%M%S}"


@dataclass
class BenchScaleApp:
    task: TaskConfig = field(default_factory=TaskConfig)   # task=<a config in configs/task/>
    policy_name: str = "diffusion"           # a config in configs/policy/ (not `policy`: that is a config group)
    processes: list = field(default_factory=lambda: [1, 2])   # torchrun processes per row (1: plain)
    precisions: List[Precision] = field(default_factory=lambda: [Precision.fp32])   # train.precision per row (bf16: autocast)
    threads: int = 0                         # torch threads per process; 0: this machine's cores / processes
    steps: int = 60                          # training steps per row (the first log window is warm-up)
    batch_size: int = 256                    # the global batch, the same in every row
    log_every: int = 10
    device: str = "auto"
    overrides: list = field(default_factory=list)   # more `cadence train` overrides
    collect: CollectConfig = field(default_factory=CollectConfig)   # if the task's store is missing
    out_dir: str = "runs/bench-scale-${now:%Y%m%d-%H%M%S}"


@dataclass
class EvalSetup:
    """One row of `cadence bench eval`: where the episodes run."""
    name: str = "one process"
    processes: int = 1                       # torchrun processes (1: plain)
    async_envs: bool = False
    batch_size: Optional[int] = None         # episodes per wave; None: the bench's batch_size; 0: all at once


def _default_eval_setups() -> list:
    return [{"name": "1 process, all at once", "processes": 1, "batch_size": 0},
            {"name": "1 process, waves", "processes": 1},
            {"name": "1 process, waves, async envs", "processes": 1, "async_envs": True},
            {"name": "2 ranks, waves", "processes": 2},
            {"name": "2 ranks, waves, async envs", "processes": 2, "async_envs": True}]


@dataclass
class BenchEvalApp:
    checkpoint: str = "???"                  # the run to evaluate
    episodes: int = 20                       # seeds eval.seed, eval.seed + 1, ...
    batch_size: int = 10                     # episodes per wave in the rows that run waves
    seed: int = 100_000
    setups: list = field(default_factory=_default_eval_setups)   # EvalSetup fields per row
    threads: int = 0                         # torch threads per process; 0: this machine's cores / processes
    device: str = "cpu"
    out_dir: str = "runs/bench-eval-${now:%Y%m%d-%H%M%S}"


@dataclass
class BenchOfflineApp:
    """``cadence bench offline``: offline validation against rollouts, and import throughput."""
    task_name: str = "pusht"                # a config in configs/task/ with a simulator
    policy_name: str = "diffusion"          # a config in configs/policy/
    steps: int = 2500                       # training steps of the one run
    checkpoints: int = 5                    # evaluations, evenly spaced (the last at `steps`)
    val_episodes: int = 20                  # held out for offline validation (never trained on)
    overrides: list = field(default_factory=list)   # more `cadence train` overrides
    run: Optional[str] = None               # read a finished run's evaluations instead of training
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(episodes=20, video_episodes=0, latency_calls=0,
                                                                plot=False, offline_plot_episodes=0))
    throughput: bool = True                 # also time the importers
    import_episodes: int = 8                # synthetic datasets written for the throughput rows
    import_frames: int = 100                # frames per episode
    video_size: list = field(default_factory=lambda: [480, 640])   # recorded camera frames (H, W)
    image_size: list = field(default_factory=lambda: [96, 96])     # resized to at import
    threads: int = 0
    out_dir: str = "runs/bench-offline-${now:%Y%m%d-%H%M%S}"


@dataclass
class BenchPeerApp:
    peer_python: str = ".venv-peer/bin/python"   # LeRobot's own virtual environment (`make peer-env`)
    cases: list = field(default_factory=lambda: ["lowdim", "image"])   # cadence.bench.peer_cases.CASES
    down_dims: Optional[list] = None         # UNet widths of every case; default Diffusion Policy's [256, 512, 1024]
    steps: list = field(default_factory=lambda: [10, 100])   # DDIM sampling steps (100: every training level)
    runtimes: list = field(default_factory=lambda: ["auto"])   # cadence's kinds timed; auto: all this machine runs
    rounds: int = 3                          # peer and cadence processes alternate this many times
    chunks: int = 5                          # batch-1 chunks timed per round (a fifth beyond 10 steps)
    threads: int = 2                         # torch / ONNX Runtime threads on both sides
    int8_max_error: float = 0.005            # onnx-cpu-int8: the export's fit bound (max action error / range)
    train_cases: list = field(default_factory=lambda: ["image"])   # cases whose training samples/s are measured
    train_batches: int = 3                   # optimizer steps timed per round
    batch_size: int = 64
    seed: int = 0
    out_dir: str = "runs/bench-peer-${now:%Y%m%d-%H%M%S}"


@dataclass
class BenchSearchApp:
    """``cadence bench search``: success against K candidates per verifier and method, beside more steps."""
    checkpoint: str = "???"                  # a trained run (or its checkpoint folder)
    candidates: list = field(default_factory=lambda: [1, 2, 4, 8, 16])   # K per row (1: the plain policy)
    verifiers: list = field(default_factory=lambda: ["oracle", "consensus", "coherence"])   # and value
    value: Optional[str] = None              # the value verifier's folder; default <run>/verifier
    methods: list = field(default_factory=lambda: ["best_of"])            # and/or zero_order
    rounds: int = 2                          # zero_order: rounds after the first
    radius: float = 0.5                      # zero_order: neighbour noise scale
    trust: list = field(default_factory=lambda: [1.0])   # search.trust per row (1: the verifier picks among all)
    lookahead_chunks: list = field(default_factory=lambda: [0])   # oracle rows: the policy's chunks run after each candidate
    steps: list = field(default_factory=lambda: [20, 50, 100])   # K=1 rows sampling with more denoiser calls
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(episodes=50, video_episodes=0, latency_calls=0,
                                                                plot=False, offline_plot_episodes=0))
    timing_calls: int = 20                   # batch-1 chunks timed per row (median), rows interleaved
    device: str = "auto"
    out_dir: str = "runs/bench-search-${now:%Y%m%d-%H%M%S}"
