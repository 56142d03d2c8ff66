"""Generative processes around a denoiser ``net(x, level, cond)``: what it learns, how it samples.

Every process has ``loss(net, x0, cond, generator) -> scalar`` and
``sample(net, cond, shape, generator, noise, known) -> x0`` over normalised action chunks, and
registers by name in :mod:`.base` (the contract and the registry).
"""
from .known_actions import KnownActions
from .ddpm import DDPMProcess, cosine_alphas_cumprod
from .rectified_flow import RectifiedFlowProcess, euler_integrate
from .regression import RegressionProcess

__all__ = ["DDPMProcess", "KnownActions", "RectifiedFlowProcess", "RegressionProcess", "cosine_alphas_cumprod", "euler_integrate"]
