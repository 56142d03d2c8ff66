"""The config schema's closed choices, as enums: a value outside them fails when the config is
composed (``policy.network=unet2`` names the key and the allowed values), not somewhere inside a
run.

Each enum is made from the tuple the code that acts on the value keeps, so the two cannot drift.
A member is its own name and compares, hashes, formats and serialises as that string
(``cfg.policy.blend == "freeze"``, ``f"{cfg.policy.network}"``, ``json.dumps``), so code reading
a config needs no conversion. Open choices stay strings, checked against their registries when a
command starts (``cadence.open_choices``): ``policy.process`` (a process of your own through
``--plugin``) and ``robot.driver`` / ``teleop.source`` (``module:Class``).
"""
from __future__ import annotations

from enum import Enum

from cadence.datasets.lerobot_import import MISSING_VIDEOS
from cadence.datasets.normalizer import MODES as NORMALIZERS
from cadence.datasets.rosbag_import import ALIGNS
from cadence.deploy.control_loop import BLENDS
from cadence.envs.video import VIDEO_FORMATS
from cadence.policies.caching.calibration import METRICS
from cadence.policies.caching.schedule import METHODS as SCHEDULE_METHODS
from cadence.policies.factory import NETWORKS
from cadence.policies.networks.transformer import ATTENTION
from cadence.policies.obs_encoder import IMAGE_ENCODERS
from cadence.policies.processes.edm import SAMPLERS
from cadence.policies.processes.truncated_anchor import SELECT
from cadence.policies.rl.exploration_noise import SCHEDULES
from cadence.policies.rl.reinflow import REDUCTIONS
from cadence.policies.search import METHODS as SEARCH_METHODS
from cadence.policies.search import VERIFIERS
from cadence.tracking import MODES as TRACKING_MODES


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
