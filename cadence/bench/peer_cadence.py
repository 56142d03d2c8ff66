"""cadence's side of ``cadence bench peer``: one case timed in every requested runtime, in its own
process (the bench alternates it with the peer's). Prints one JSON object on its last line."""
from __future__ import annotations

import json
import sys
import time
from importlib import metadata

import numpy as np
import torch

from cadence.bench.peer_cases import cadence_policy, chunks_for, observation
from cadence.deploy.budget import action_range
from cadence.deploy.export_spec import read_spec
from cadence.deploy.loop_graph import exported_loop_steps
from cadence.deploy.runtimes import LOOP_KINDS, build_runtime


def chunk_ms(runtime, obs, noise, chunks: int) -> list[float]:
    """Ms per batch-1 chunk, ``chunks`` times, after one warm-up call (and a compiled kind's compilation)."""
    runtime.predict(obs, noise)
    times = []
    for _ in range(chunks):
        started = time.perf_counter()
        runtime.predict(obs, noise)
        times.append(1000 * (time.perf_counter() - started))
    return times


def _train_samples_per_s(policy, case: dict, batches: int, batch_size: int, seed: int) -> list[float]:
    policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, weight_decay=1e-6)
    generator = torch.Generator().manual_seed(seed)
    batch = {k: torch.from_numpy(np.repeat(v, batch_size, axis=0)) for k, v in observation(case, seed).items()}
    batch["action"] = torch.rand(batch_size, case["pred_horizon"], case["action_dim"], generator=generator) * 2 - 1
    rates = []
    for i in range(batches + 1):
        started = time.perf_counter()
        loss = policy.compute_loss(batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i:                                           # the first step warms up
            rates.append(batch_size / (time.perf_counter() - started))
    return rates


def main(args: dict) -> dict:
    torch.set_num_threads(args["threads"])
    case = args["case"]
    policy = cadence_policy(case, args["seed"])
    obs = observation(case, args["seed"])
    noise = np.random.default_rng(args["seed"]).standard_normal(
        (1, case["pred_horizon"], case["action_dim"])).astype(np.float32)
    result = {"cadence": metadata.version("cadence"), "torch": torch.__version__,
              "params": sum(p.numel() for p in policy.parameters()), "rows": []}
    scale = action_range(policy)
    loops = exported_loop_steps(read_spec(args["export_dir"])) if args.get("export_dir") else []
    for steps in args["steps"]:
        reference = build_runtime("torch-eager", policy, sample_steps=steps, device="cpu").predict(obs, noise)
        for kind in args["runtimes"]:
            if kind in LOOP_KINDS and steps not in loops:
                continue                                # a loop graph is per step count, and not past 32 steps
            runtime = build_runtime(kind, policy, args.get("export_dir"), steps, "cpu", threads=args["threads"])
            times = chunk_ms(runtime, obs, noise, chunks_for(steps, args["chunks"]))
            error = np.abs(runtime.predict(obs, noise) - reference) / scale
            result["rows"].append({"runtime": kind, "steps": steps, "ms_per_chunk": times,
                                   "max_error": float(error.max()), "mean_error": float(error.mean())})
    if args.get("train_batches"):
        result["train_samples_per_s"] = _train_samples_per_s(policy, case, args["train_batches"],
                                                             args["batch_size"], args["seed"])
    return result


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
