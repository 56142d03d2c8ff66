"""Typed configuration of the robot side (Hydra structured configs): ``cadence run``, ``cadence robot
serve``, ``cadence record``, ``cadence robot calibrate`` and ``cadence robot check``, and the robot,
safety filter, control loop and latency budget they share."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from cadence.choices import Blend, SearchVerifier
from cadence.config import TaskConfig


@dataclass
class RobotConfig:
    # sim: the task simulated in this process | remote: a `cadence robot serve` process | replay: recorded
    # episodes | so101 (so100): a Feetech arm | package.module:ClassName: your own driver, called with options
    driver: str = "sim"
    options: Dict[str, Any] = field(default_factory=dict)   # keyword arguments of the driver class
    cameras: Dict[str, Any] = field(default_factory=dict)   # name -> {source, shape: [H, W], fps, max_age_ms}
    endpoint: str = "tcp://127.0.0.1:5555"
    token: Optional[str] = None             # shared secret; default $CADENCE_ROBOT_TOKEN
    allow_remote: bool = False              # serve: bind beyond loopback
    rate_hz: Optional[float] = None         # robot step rate; default task.fps
    sensor_latency_ms: float = 0.0          # simulated robot: observation delay
    actuation_latency_ms: float = 0.0       # simulated robot: command delay
    timeout_ms: float = 30.0                # remote: per request
    dataset: Optional[str] = None           # replay: the episode store (default task.dataset)
    episodes: Optional[list] = None         # replay: its episodes (default: the checkpoint's held-out ones, else all)


@dataclass
class SafetyConfig:
    max_delta: Optional[float] = None       # largest change of an action element per tick
    workspace_low: Optional[list] = None    # box on the action (position targets)
    workspace_high: Optional[list] = None
    position_obs: Optional[list] = None     # [key, start, stop]: measured position, action coordinates
    watchdog_ms: Optional[float] = 500.0    # hold when observations or ticks stop this long


@dataclass
class ControlConfig:
    rate_hz: Optional[float] = None         # default task.fps
    blend: Blend = Blend.freeze             # replace | ensemble | freeze (prefix inpainting)
    ensemble_decay: float = 0.01
    exec_horizon: Optional[int] = None      # default: the policy's
    action_lead_ms: float = 0.0
    inject_delay_ms: list = field(default_factory=lambda: [0.0, 0.0])   # uniform extra inference delay
    episodes: int = 10
    seed: int = 100_000                     # episode seeds seed, seed + 1, ...
    max_ticks: int = 300                    # per episode
    threads: int = 1                        # torch threads of the inference worker
    max_robot_errors: int = 3               # ticks in a row with failed robot calls before the run stops


@dataclass
class BudgetConfig:
    inference_ms: Optional[float] = None    # p99 budget per inference; default one control period
    runtimes: list = field(default_factory=lambda: ["torch-eager", "onnx-cpu"])
    steps: Optional[list] = None            # sampling steps to try; default per process
    reference_steps: Optional[int] = None   # full quality; default: ddpm its training steps, flow 100
    calibration: int = 8                    # observations from the training data (or env resets)
    calls: int = 20
    warmup: int = 3
    max_action_error: float = 0.25          # refuse candidates whose mean action error against the reference
                                            # exceeds this fraction of the action range (NaN/inf: always refused)
    candidates: list = field(default_factory=lambda: [1])   # K chunks per inference to try, e.g. [1,4,16]: the
                                            # largest K that fits is taken (inference-time search, docs/search.md)
    verifier: SearchVerifier = SearchVerifier.consensus    # the search's verifier when K > 1 (never oracle)
    value: Optional[str] = None             # the value verifier's folder; default <run>/verifier


@dataclass
class RunApp:
    checkpoint: str = "???"
    robot: RobotConfig = field(default_factory=RobotConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    out_dir: Optional[str] = None           # default: <run>/deploy-<timestamp>
    device: str = "cpu"
    env_id: Optional[str] = None            # your own env (any id, module:id too) instead of the checkpoint's


@dataclass
class RobotServeApp:
    task: TaskConfig = field(default_factory=TaskConfig)
    robot: RobotConfig = field(default_factory=RobotConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)   # the server's own filter and watchdog
    max_seconds: Optional[float] = None     # stop after this long (default: until interrupted)


@dataclass
class TeleopConfig:
    source: str = "scripted"                # scripted (simulation) | leader | keyboard | gamepad | package.module:Class
    options: Dict[str, Any] = field(default_factory=dict)   # keyword arguments of the teleop class


@dataclass
class RecordConfig:
    episodes: int = 10                      # episodes to keep
    episode_s: Optional[float] = None       # longest episode (default: until the robot reports done)
    keep_failures: bool = False             # keep episodes the robot reports as failed (is_success false)
    seed: int = 0                           # reset seeds seed + n (n: episodes already in the store)


@dataclass
class RecordApp:
    task: TaskConfig = field(default_factory=TaskConfig)          # its dataset is written; robot=sim simulates it
    robot: RobotConfig = field(default_factory=RobotConfig)
    teleop: TeleopConfig = field(default_factory=TeleopConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    record: RecordConfig = field(default_factory=RecordConfig)


@dataclass
class RobotCalibrateApp:
    port: str = "???"                       # the arm's serial port, e.g. /dev/ttyACM0
    out: str = "???"                        # the calibration JSON to write (LeRobot's format)
    seconds: Optional[float] = None         # record ranges this long (default: until Enter)
    full_turn: list = field(default_factory=lambda: ["wrist_roll"])   # joints given the whole turn
    timeout_ms: float = 50.0                # per bus request


@dataclass
class CheckConfig:
    move: bool = False                      # allow small motions (--move): steps, a NaN command, a limit
    latency_fraction: float = 0.2           # latest_observation p99 bound, fraction of the control period
    seconds: float = 2.0                    # observation stream sampled this long
    settle_s: float = 0.5                   # after hold(), before stillness is measured
    hold_s: float = 1.0                     # stillness window
    hold_tolerance: float = 0.01            # motion allowed while held, fraction of the action range
    step: float = 0.02                      # --move step, fraction of the action range


@dataclass
class RobotCheckApp:
    task: TaskConfig = field(default_factory=TaskConfig)          # robot=sim simulates it
    robot: RobotConfig = field(default_factory=RobotConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)    # position_obs: where the measured position is
    check: CheckConfig = field(default_factory=CheckConfig)
    out: str = "robot-check.json"
