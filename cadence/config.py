"""Typed configuration schema (Hydra structured configs).

The YAML files in ``configs/`` fill these dataclasses; a key that is not declared here fails
at start-up with its name, and no config value is ever executed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from cadence.choices import (
    Align,
    AnchorSelect,
    Attention,
    CacheMethod,
    CacheMetric,
    EDMSampler,
    ExportFormat,
    ImageEncoder,
    ImportFormat,
    LogProbReduce,
    MissingVideos,
    Network,
    NoiseSchedule,
    Normalization,
    Precision,
    SearchMethod,
    SearchVerifier,
    TrackingMode,
    VideoFormat,
)

@dataclass
class TaskConfig:
    name: str = "bimodal_reach"
    env_id: Optional[str] = "cadence/BimodalReach-v0"  # null: no simulator (task=store): offline validation only
    env_kwargs: dict = field(default_factory=dict)   # passed to gymnasium.make
    obs_keys: list = field(default_factory=lambda: ["state"])   # [] without a simulator: derived from the store
    action_key: str = "action"
    dataset: Optional[str] = "data/bimodal_reach.zarr"   # episode store, relative to the working dir
    fps: Optional[float] = 10.0                       # control rate; null: the store's
    expert: str = "bimodal_reach"                     # scripted expert used by `cadence collect`
    obs_slices: dict = field(default_factory=dict)    # {name: [stored_key, start, stop]} derived keys
    info_metrics: list = field(default_factory=list)  # info keys reported at each episode's end
    members: list = field(default_factory=list)       # a multitask suite: names of task configs (task_suite.py)
    task_id: Optional[list] = None                    # set on suite members: their one-hot task_id observation


@dataclass
class TransformerConfig:
    """policy.network=transformer: the DiT-style denoiser (dense, or MoDE with num_experts > 0)."""
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    cond_tokens: int = 2             # observation tokens made from the encoded observation
    attention: Attention = Attention.full   # full | causal
    cross_attention: bool = False    # observation tokens as cross-attention memory instead of in the sequence
    ffn_mult: int = 4                # feed-forward (and each expert's) hidden size = ffn_mult * d_model
    dropout: float = 0.0
    num_experts: int = 0             # 0: dense feed-forward; E > 0: MoDE, E experts routed by the noise level
    top_k: int = 2                   # experts per noise level
    balance_weight: float = 0.01     # load-balancing loss weight
    expert_cache: bool = True        # fuse the routed experts per sampling step at inference


@dataclass
class EDMConfig:
    """policy.process=edm: Karras / BESO score-based diffusion."""
    sigma_min: float = 1e-3
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    sampler: EDMSampler = EDMSampler.ddim   # ddim (DPM-Solver-1) | euler


@dataclass
class AnchorConfig:
    """policy.process=anchor: truncated anchor diffusion (DiffusionDrive) with its cascade decoder."""
    num_anchors: int = 20            # K-means anchors per task, fitted on the training chunks
    train_steps: int = 1000          # timesteps of the cosine schedule the truncation is taken from
    trunc_steps: int = 50            # training timesteps drawn from [0, trunc_steps) of train_steps (noise std <= 0.09)
    start_step: Optional[int] = None # timestep the anchors are noised to for sampling; default trunc_steps - 1
    select: AnchorSelect = AnchorSelect.argmax   # argmax: most confident mode | sample: drawn from softmax(logits / temperature)
    temperature: float = 1.0
    cls_weight: float = 10.0         # focal loss on the nearest anchor's confidence
    reg_weight: float = 8.0          # L1 on the nearest anchor's refined chunk
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    kmeans_iters: int = 100
    d_model: int = 128               # decoder width
    n_layers: int = 2                # cascade layers (a loss on each)
    n_heads: int = 4
    cond_tokens: int = 4             # observation tokens the mode queries attend to
    ffn_mult: int = 4


@dataclass
class StreamingConfig:
    """policy.process=streaming: Streaming Diffusion Policy's rolling buffer (sample_steps = calls per replan)."""
    start_steps: int = 10            # DDIM calls of an episode's first replan (from pure noise)
    constant_prob: float = 0.2       # training: share of samples with one level for the whole chunk


@dataclass
class MLPConfig:
    """policy.network=mlp: the flattened-chunk residual MLP (ReinFlow / DPPO's state-task network)."""
    width: int = 512
    n_layers: int = 3                # residual blocks


@dataclass
class ShortcutConfig:
    """policy.process=shortcut: a flow told its step size; sample_steps a power of 2 up to max_steps."""
    max_steps: int = 128             # finest step 1/max_steps (the flow-matching target)
    bootstrap_fraction: float = 0.25 # share of each batch trained for self-consistency


@dataclass
class PolicyConfig:
    name: str = "diffusion"
    process: str = "ddpm"            # ddpm | flow | shortcut | edm | regression | anchor | streaming
    network: Network = Network.unet  # unet | transformer | mlp | anchor_decoder (process=anchor)
    obs_horizon: int = 2             # To
    pred_horizon: int = 16           # Tp
    exec_horizon: int = 8            # Ta
    diffusion_steps: int = 100       # DDPM training steps (cosine schedule)
    sample_steps: int = 10           # DDIM or Euler steps at inference
    clip_sample: bool = True
    normalizer: Normalization = Normalization.limits   # limits | gaussian
    down_dims: list = field(default_factory=lambda: [32, 64, 128])
    kernel_size: int = 5
    n_groups: int = 8
    level_embed_dim: int = 64
    obs_feature_dim: int = 128
    image_feature_dim: int = 64
    image_encoder: ImageEncoder = ImageEncoder.conv   # conv (small, fast) | resnet18 (GroupNorm, spatial softmax)
    crop: float = 1.0                # resnet18: side fraction kept (random crop in training, centre at inference)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    shortcut: ShortcutConfig = field(default_factory=ShortcutConfig)
    edm: EDMConfig = field(default_factory=EDMConfig)
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)


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
    val_episodes: Optional[int] = None   # held out (seeded split) for offline validation; null: 10% without a simulator
    checkpoint_every: int = 500
    seed: int = 0
    threads: int = 0                 # torch CPU threads; 0 leaves torch's default
    device: str = "auto"             # auto | cpu | cuda
    precision: Precision = Precision.fp32   # fp32 | bf16: autocast forward and loss (weights, optimizer, EMA stay fp32)


@dataclass
class SearchConfig:
    """Inference-time search over start noises (cadence.policies.search)."""
    candidates: int = 1                      # K chunks per prediction, one kept; 1: no search
    method: SearchMethod = SearchMethod.best_of        # best_of | zero_order (rounds around the best noise)
    verifier: SearchVerifier = SearchVerifier.consensus   # consensus | coherence | confidence | oracle | value (docs/search.md)
    rounds: int = 2                          # zero_order: rounds after the first
    radius: float = 0.5                      # zero_order: neighbour noise scale
    trust: float = 1.0                       # the verifier picks among this fraction of the candidates closest
                                             # to the others (consensus's top); 1: among all
    lookahead_chunks: int = 0                # oracle: also run this many of the policy's own chunks after each candidate
    value: Optional[str] = None              # the value verifier's folder; default <run>/verifier (cadence verifier train)


@dataclass
class EvalConfig:
    episodes: int = 50
    seed: int = 100_000              # evaluation seeds are seed, seed + 1, ...
    sample_steps: Optional[int] = None   # override the policy's sampling steps
    video_episodes: int = 4          # 0: no video
    video_format: VideoFormat = VideoFormat.gif   # gif | mp4
    plot: bool = True
    latency_calls: int = 20          # batch-1 predict_chunk calls timed for ms per chunk
    batch_size: int = 0              # episodes run together (one policy batch); 0: all (under torchrun: split over ranks)
    async_envs: bool = False         # step each episode's simulator in its own worker process (AsyncVectorEnv)
    offline_samples: int = 4         # offline validation: K chunks per window for the min-of-K error
    offline_plot_episodes: int = 3   # offline validation: held-out episodes plotted, predicted vs demonstrated
    search: SearchConfig = field(default_factory=SearchConfig)   # eval.search.candidates=8: best of 8 chunks


@dataclass
class TrackingConfig:
    mode: TrackingMode = TrackingMode.offline   # offline | online | none (Weights & Biases; the `tracking` config group)
    project: str = "cadence"


@dataclass
class CollectConfig:
    episodes: int = 150
    seed: int = 0             # the expert's seed is seed + the episodes already in the store (appends continue)
    overwrite: bool = False   # replace the store (built beside it, swapped in when complete) instead of appending


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
    block_cache: bool = True           # use the checkpoint's cache schedules (cadence cache), if any
    env_id: Optional[str] = None       # your own env (any id, module:id too) instead of the checkpoint's
    dataset: Optional[str] = None      # offline validation on this store instead of the checkpoint's task.dataset


@dataclass
class VerifierTrainApp:
    """``cadence verifier train``: the value verifier of a trained policy (cadence.verifier_train)."""
    checkpoint: str = "???"                  # a run directory or its checkpoint/ folder
    episodes: int = 100                      # training episodes: seeds seed .. seed + episodes - 1
    val_episodes: int = 10                   # the next seeds, held out for the ranking numbers
    seed: int = 0
    eval_seed: int = 100_000                 # evaluations start here: training seeds must stay below
    candidates: int = 8                      # K candidates scored per prediction
    continue_chunks: int = 0                 # label: the candidate's executed actions, then this many of the policy's chunks
    batch_envs: int = 50                     # episodes rolled out side by side
    async_envs: bool = False                 # simulators in worker processes
    features: str = "auto"                   # the MLP's input: denoiser (the policy's UNet run on each candidate) |
                                             # plan (conditioning + actions) | auto (denoiser where the policy allows)
    noise: list = field(default_factory=lambda: [0.05, 0.2, 0.5])   # denoiser: where along the process it runs
    hidden: Optional[int] = None             # the MLP's width (default: 64 on denoiser features, 256 on plans)
    dropout: Optional[float] = None          # denoiser: before each hidden layer (default 0.3)
    weight_decay: Optional[float] = None     # default: 0.1 on denoiser features, 1e-4 on plans
    centered: bool = False                   # plan: also give each candidate minus the mean of the K
    steps: Optional[int] = None              # optimizer steps (default: 1500 on denoiser features, 3000 on plans)
    members: Optional[int] = None            # an ensemble of this many MLPs, their scores averaged (default 1)
    batch_size: int = 256                    # observations per step (each with its K candidates)
    lr: float = 1e-3
    device: str = "auto"
    out_dir: Optional[str] = None            # default <run>/verifier
    refit: bool = False                      # fit again on the candidates collected there before (no rollouts)
    merge: list = field(default_factory=list)  # more collections (verifier folders) to fit on: same policy, K and continue_chunks
    cv_folds: int = 0                        # >= 2: also score each of this many folds of the training data by a
                                             # verifier fitted on the others (cross_validation in verifier.json)


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


@dataclass
class ExportApp:
    checkpoint: str = "???"
    format: ExportFormat = ExportFormat.onnx
    out_dir: Optional[str] = None           # default: <checkpoint run>/export-onnx
    opset: int = 18
    precond: bool = True                    # a UNet's precomputed-conditioning graphs too (onnx-cpu-precond)
    int8: bool = False                      # also an 8-bit denoiser for the last sampling steps (onnx-cpu-int8)
    int8_steps: Optional[list] = None       # step counts to fit it for; default the policy's own
    int8_max_error: float = 0.005           # fit bound: max action error / action range on calibration windows
    fp16: bool = False                      # also a float16 denoiser for the last sampling steps (onnx-cuda-fp16,
                                            # onnx-tensorrt-fp16), fitted like int8 on ONNX Runtime's CPU provider
    fp16_steps: Optional[list] = None
    fp16_max_error: float = 0.005
    int8_qdq: bool = False                  # also int8 convolutions in QDQ form for the last steps (onnx-tensorrt-int8)
    int8_qdq_steps: Optional[list] = None
    int8_qdq_max_error: float = 0.005
    calibration: int = 32                   # observation windows the reduced-precision fits run on (training data)
    loop_steps: list = field(default_factory=list)   # the whole sampling loop as one graph at these step counts
                                                     # (onnx-cpu-loop / onnx-cuda-loop); none by default


@dataclass
class CacheApp:
    checkpoint: str = "???"                  # a run directory or its checkpoint/ folder
    method: CacheMethod = CacheMethod.shared # shared (calibrated, one set of steps for all branches) | bac (per
                                             # branch + Bubbling Union, as published) | uniform (evenly spaced steps)
    sample_steps: Optional[list] = None      # samplers to schedule (steps each); default the policy's
    updates: list = field(default_factory=lambda: [10])   # M per entry of sample_steps (one value: for all)
    calibration: int = 64                    # observation windows drawn from the training data
    batch_size: int = 16                     # calibration chunks sampled at once
    metric: CacheMetric = CacheMetric.cosine # cosine | l1 | mse: how alike a branch's outputs at two steps are
    bubbling_blocks: int = 3                 # most volatile branches given the Bubbling Union (0: none)
    seed: int = 0
    device: str = "auto"


@dataclass
class NoiseConfig:
    """ReinFlow's exploration noise sigma(s, t_k), in normalised action units."""
    schedule: NoiseSchedule = NoiseSchedule.learn   # fixed | decay | learn | learn_decay
    sigma_min: float = 0.10
    sigma_max: float = 0.20
    hidden: int = 64
    hold: float = 0.35               # decay schedules: share of fine-tuning at sigma_max
    floor: float = 0.7               # ... then cosine to sigma_min + floor * (sigma_max - sigma_min)


@dataclass
class DPPOConfig:
    """The DPPO-style baseline (DDPM policies): DDIM steps as Gaussian policies."""
    ft_steps: Optional[int] = None   # fine-tuned (last) denoising steps; default all
    min_std: float = 0.1             # std floor of every step, sampling and likelihood
    eta: float = 1.0                 # DDIM stochasticity
    gamma_denoise: float = 0.99      # advantage discount over the denoising steps


@dataclass
class FinetuneConfig:
    sample_steps: Optional[int] = None   # denoising steps K of the chain (and of evaluation); default the policy's
    envs: int = 50                   # parallel environments
    rollout_steps: int = 8           # decisions (chunks) per environment per iteration
    env_steps: int = 200_000         # budget: actions executed in all environments
    epochs: int = 10                 # PPO epochs per iteration
    minibatch: int = 400             # decisions per gradient step (default: the whole batch of 50 x 8)
    gamma: float = 0.99              # discount per decision
    lam: float = 0.95                # GAE lambda
    clip: float = 0.01               # PPO ratio clip
    entropy: float = 0.0             # entropy bonus weight
    actor_lr: float = 3e-5           # policy (and noise network) learning rate
    critic_lr: float = 1e-3
    grad_clip: float = 1.0
    w2_weight: float = 0.0           # ReinFlow: ||ODE_pretrained(z) - ODE_current(z)||^2 regulariser toward the pretrained flow
    logprob_reduce: LogProbReduce = LogProbReduce.mean   # ReinFlow: chain log-likelihood per element (mean) or total (sum) in the ratio
    critic_warmup: int = 2           # first iterations train the critic only
    ratio_tolerance: float = 1e-4    # the first minibatch's ratios must be 1 within this (a rescoring bug otherwise)
    eval_every: int = 3              # iterations between evaluations (0: only before and after)
    checkpoint_every: int = 5        # iterations between checkpoints
    seed: int = 0
    threads: int = 0                 # torch CPU threads; 0: library default
    device: str = "auto"
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    dppo: DPPOConfig = field(default_factory=DPPOConfig)


@dataclass
class FinetuneApp:
    checkpoint: str = "???"                  # the pretrained run (flow or shortcut: ReinFlow; ddpm: DPPO)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(episodes=50, video_episodes=0, latency_calls=0))
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run_dir: str = "runs/finetune-${now:%Y%m%d-%H%M%S}"
    resume: bool = False


@dataclass
class ImportApp:
    format: ImportFormat = ImportFormat.robomimic   # robomimic | robosuite | lerobot | rosbag (import_data.FORMATS)
    source: str = "???"                     # an HDF5 file, a LeRobot dataset directory, or a bag / folder of bags
    out: str = "???"                        # the episode store to write
    fps: Optional[float] = None             # default: the format's (robomimic / robosuite: 20; lerobot: info.json's)
    overwrite: bool = False
    episodes: Optional[list] = None         # import only these episodes (LeRobot episode_index, demo_<N>, bag order)
    image_size: Optional[list] = None       # [H, W]: resize images while importing (default: as recorded)
    # lerobot
    videos: bool = True                     # decode the video features (false: skip them)
    missing_videos: MissingVideos = MissingVideos.error   # error | skip (drop the episodes whose video is missing, listed)
    # robosuite (raw demo.hdf5)
    replay: bool = False                    # regenerate observations by replaying the states in robosuite
    cameras: list = field(default_factory=list)   # with replay: camera images to render (e.g. [agentview])
    # rosbag
    topics: Any = None   # {store key: topic}, e.g. {action: /cmd, state: /joint_states} (Any: a typed dict refuses new keys)
    split: str = "bag"                      # bag: one bag per episode; or a topic whose messages mark episode starts
    align: Align = Align.last               # last | nearest: how each topic is sampled on the task-rate clock


@dataclass
class TaskInitApp:
    store: str = "???"                      # an episode store (e.g. written by `cadence import`)
    out: str = "???"                        # the task YAML to write, e.g. my_tasks/task/my_arm.yaml
    overwrite: bool = False
    fps: Optional[float] = None             # the store's rate where it records none (Diffusion Policy's, UMI's stores)
