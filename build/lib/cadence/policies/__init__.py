"""Observation encoders, denoiser networks, generative processes and the policy that joins them."""
