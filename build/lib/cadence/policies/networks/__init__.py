"""Denoiser networks: net(x, level, cond) -> y."""
