"""Online RL fine-tuning of pretrained policies: ReinFlow (flow / shortcut) and a DPPO-style baseline (DDPM).

An *actor* wraps a pretrained :class:`~cadence.policies.policy.Policy` and turns its sampler into
a stochastic chain with an exact log-likelihood:

- ``explore(obs, generator) -> Rollout`` samples a chain (normalised units) and its chunk;
- ``log_prob(obs, chain, progress) -> (log_prob, entropy)`` rescores stored chains under the
  current weights (what PPO's ratio needs);
- ``act(obs)`` the deterministic sampler used for evaluation (the pretrained ODE / DDIM).

:mod:`.ppo` holds GAE and the clipped surrogate; ``cadence finetune`` drives them.
"""
