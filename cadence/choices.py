"""The config schema's closed choices, as enums: a value outside them fails when the config is
composed (``policy.network=unet2`` names the key and the allowed values), not somewhere inside a
run.

Each enum is made from a tuple written here, checked by a test to be the one the code that
acts on the value keeps.
A member is its own name and compares, hashes, formats and serialises as that string
(``cfg.policy.blend == "freeze"``, ``f"{cfg.policy.network}"``, ``json.dumps``), so code reading
a config needs no conversion. Open choices stay strings, checked against their registries when a
command starts (``cadence.open_choices``): ``policy.process`` (a process of your own through
``--plugin``) and ``robot.driver`` / ``teleop.source`` (``module:Class``).
"""
from __future__ import annotations

from enum import Enum

# The values, written out here: importing them from the code that acts on them would import
# torch, zarr and the simulators into every command, `cadence robot serve` included (its own
# process is kept light for a robot's onboard computer). tests/cadence/test_choices.py checks
# that each tuple is the one of the code it names, so the two cannot drift.
NETWORKS = ("unet", "transformer", "mlp", "anchor_decoder")         # cadence.policies.factory.NETWORKS
NORMALIZERS = ("limits", "gaussian")                               # cadence.datasets.normalizer.MODES
IMAGE_ENCODERS = ("conv", "resnet18")                              # cadence.policies.obs_encoder.IMAGE_ENCODERS
ATTENTION = ("full", "causal")                                     # cadence.policies.networks.transformer.ATTENTION
SAMPLERS = ("ddim", "euler")                                       # cadence.policies.processes.edm.SAMPLERS
SELECT = ("argmax", "sample")                                      # cadence.policies.processes.truncated_anchor.SELECT
VIDEO_FORMATS = ("gif", "mp4")                                     # cadence.envs.video.VIDEO_FORMATS
TRACKING_MODES = ("none", "offline", "online")                     # cadence.tracking.MODES
BLENDS = ("replace", "ensemble", "freeze")                         # cadence.deploy.control_loop.BLENDS
SCHEDULE_METHODS = ("bac", "shared", "uniform", "none")            # cadence.policies.caching.schedule.METHODS
METRICS = ("cosine", "l1", "mse")                                  # cadence.policies.caching.calibration.METRICS
SCHEDULES = ("fixed", "decay", "learn", "learn_decay")             # cadence.policies.rl.exploration_noise.SCHEDULES
REDUCTIONS = ("mean", "sum")                                       # cadence.policies.rl.reinflow.REDUCTIONS
MISSING_VIDEOS = ("error", "skip")                                 # cadence.datasets.lerobot_import.MISSING_VIDEOS
ALIGNS = ("last", "nearest")                                       # cadence.datasets.rosbag_import.ALIGNS
SEARCH_METHODS = ("best_of", "zero_order")                         # cadence.policies.search.METHODS
VERIFIERS = ("consensus", "coherence", "oracle", "confidence")     # cadence.policies.search.VERIFIERS (its keys)
# where each tuple comes from: module, name (the test imports them)
SOURCES = {"NETWORKS": ("cadence.policies.factory", "NETWORKS"),
           "NORMALIZERS": ("cadence.datasets.normalizer", "MODES"),
           "IMAGE_ENCODERS": ("cadence.policies.obs_encoder", "IMAGE_ENCODERS"),
           "ATTENTION": ("cadence.policies.networks.transformer", "ATTENTION"),
           "SAMPLERS": ("cadence.policies.processes.edm", "SAMPLERS"),
           "SELECT": ("cadence.policies.processes.truncated_anchor", "SELECT"),
           "VIDEO_FORMATS": ("cadence.envs.video", "VIDEO_FORMATS"),
           "TRACKING_MODES": ("cadence.tracking", "MODES"),
           "BLENDS": ("cadence.deploy.control_loop", "BLENDS"),
           "SCHEDULE_METHODS": ("cadence.policies.caching.schedule", "METHODS"),
           "METRICS": ("cadence.policies.caching.calibration", "METRICS"),
           "SCHEDULES": ("cadence.policies.rl.exploration_noise", "SCHEDULES"),
           "REDUCTIONS": ("cadence.policies.rl.reinflow", "REDUCTIONS"),
           "MISSING_VIDEOS": ("cadence.datasets.lerobot_import", "MISSING_VIDEOS"),
           "ALIGNS": ("cadence.datasets.rosbag_import", "ALIGNS"),
           "SEARCH_METHODS": ("cadence.policies.search", "METHODS"),
           "VERIFIERS": ("cadence.policies.search", "VERIFIERS")}


class Choice(str, Enum):
    """A closed config choice: behaves as the string it names."""

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return repr(self.value)

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def _choice(name: str, values) -> type[Choice]:
    return Choice(name, [(v, v) for v in values])


Network = _choice("Network", NETWORKS)
Normalization = _choice("Normalization", NORMALIZERS)
ImageEncoder = _choice("ImageEncoder", IMAGE_ENCODERS)
Attention = _choice("Attention", ATTENTION)
EDMSampler = _choice("EDMSampler", SAMPLERS)
AnchorSelect = _choice("AnchorSelect", SELECT)
Precision = _choice("Precision", ("fp32", "bf16"))
VideoFormat = _choice("VideoFormat", VIDEO_FORMATS)
TrackingMode = _choice("TrackingMode", TRACKING_MODES)
Blend = _choice("Blend", BLENDS)
ExportFormat = _choice("ExportFormat", ("onnx",))
CacheMethod = _choice("CacheMethod", [m for m in SCHEDULE_METHODS if m != "none"])   # "none": no cache
CacheMetric = _choice("CacheMetric", METRICS)
NoiseSchedule = _choice("NoiseSchedule", SCHEDULES)
LogProbReduce = _choice("LogProbReduce", REDUCTIONS)
ImportFormat = _choice("ImportFormat", ("robomimic", "robosuite", "lerobot", "rosbag"))
MissingVideos = _choice("MissingVideos", MISSING_VIDEOS)
Align = _choice("Align", ALIGNS)
SearchMethod = _choice("SearchMethod", SEARCH_METHODS)
SearchVerifier = _choice("SearchVerifier", (*VERIFIERS, "value"))   # value: a trained network (cadence verifier train)
